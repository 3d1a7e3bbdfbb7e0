#pragma once
// Small file-system helpers: atomic writes and output-directory checks.

#include <string>
#include <vector>

namespace liondg {

/// Writes `content` to `path` atomically: a temporary file in the same directory,
/// flushed and fsync'ed, then renamed over `path`. Throws DataError naming `path`.
void write_file_atomic(const std::string& path, const std::string& content);

/// Creates `dir` (and parents) and checks that a file can be written in it.
/// Throws DataError naming the directory if it cannot.
void ensure_writable_dir(const std::string& dir);

/// Renames `from` to `to` (same file system), throwing DataError on failure.
void rename_file(const std::string& from, const std::string& to);

// POSIX-only helpers (no std::filesystem: its ABI differs between toolchains that
// libtorch builds are made with).
bool is_regular_file(const std::string& path);
bool is_directory(const std::string& path);
/// `mkdir -p`; returns false (errno set) on failure.
bool make_directories(const std::string& path);
/// `rm -rf`; ignores errors.
void remove_tree(const std::string& path);
/// Names of the entries of `dir` (without "." and ".."), unsorted. Throws DataError
/// naming the directory if it cannot be listed.
std::vector<std::string> list_directory(const std::string& dir);
/// Copies a directory tree (regular files and folders) to `to`, creating it.
/// Throws DataError naming the file that could not be read or written.
void copy_tree(const std::string& from, const std::string& to);
/// `dir + "/" + name` without doubling a trailing slash.
std::string join_path(const std::string& dir, const std::string& name);

}  // namespace liondg
