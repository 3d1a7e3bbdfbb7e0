#pragma once
// The files of a data source, whether it is a directory or an archive
// (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz, .zip) read with libarchive without
// unpacking it to disk.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace liondg {

/// Limits that protect against hostile archives.
struct ArchiveLimits {
  /// Total uncompressed bytes of the regular files kept in memory.
  int64_t max_total_bytes = int64_t{8} << 30;
  /// Number of entries.
  int64_t max_entries = 10'000'000;
};

/// A read-only tree of files: relative '/'-separated paths -> bytes.
///
/// Archive members are read once, at `open`, into memory; a member whose path is
/// absolute or contains a `..` component is rejected (it would escape the archive
/// root), as are truncated or corrupt archives. Directory sources are listed at
/// `open` and read on demand. All errors are DataError naming the file.
class SourceTree {
 public:
  /// Opens a directory or an archive file.
  static SourceTree open(const std::string& path, const ArchiveLimits& limits = {});

  /// Whether `path` names a file libarchive can read as an archive (by content).
  static bool is_archive_file(const std::string& path);

  const std::string& path() const { return path_; }
  bool is_archive() const { return archive_; }
  /// Regular files, sorted by relative path.
  const std::vector<std::string>& files() const { return files_; }
  /// Directories (including empty ones), sorted.
  const std::vector<std::string>& directories() const { return dirs_; }
  bool contains(const std::string& relative) const;
  /// Size in bytes of a file of the tree.
  int64_t file_size(const std::string& relative) const;
  /// Modification time (ns since the epoch) of a directory source's file; 0 in archives.
  int64_t file_mtime_ns(const std::string& relative) const;
  /// Contents of a file of the tree. Thread-safe.
  std::vector<uint8_t> read(const std::string& relative) const;
  /// How a file is named in messages: "ARCHIVE:member" or "DIR/member".
  std::string describe(const std::string& relative) const;

 private:
  std::string path_;
  bool archive_ = false;
  std::vector<std::string> files_;
  std::vector<std::string> dirs_;
  std::map<std::string, int64_t> sizes_;
  std::map<std::string, int64_t> mtimes_;
  // Archive members' contents (shared so copies of a tree stay cheap).
  std::shared_ptr<std::map<std::string, std::vector<uint8_t>>> contents_;
};

/// Normalizes an archive member path ("./a//b/" -> "a/b"). Throws DataError naming
/// `archive` if it is absolute or has a ".." component.
std::string safe_member_path(const std::string& member, const std::string& archive);

}  // namespace liondg
