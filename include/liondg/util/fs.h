#pragma once
// Small file-system helpers: atomic writes and output-directory checks.

#include <string>

namespace liondg {

/// Writes `content` to `path` atomically: a temporary file in the same directory,
/// flushed and fsync'ed, then renamed over `path`. Throws DataError naming `path`.
void write_file_atomic(const std::string& path, const std::string& content);

/// Creates `dir` (and parents) and checks that a file can be written in it.
/// Throws DataError naming the directory if it cannot.
void ensure_writable_dir(const std::string& dir);

/// Renames `from` to `to` (same file system), throwing DataError on failure.
void rename_file(const std::string& from, const std::string& to);

}  // namespace liondg
