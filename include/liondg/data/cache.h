#pragma once
// The decoded-data cache: one file per source holding uint8 images, int64 labels
// and metadata, keyed by a checksum of the source and the load options.
//
// File layout (little-endian):
//   8 bytes  magic "LIONDGDC"
//   u32      format version (kCacheVersion)
//   u32      header length L
//   L bytes  JSON header: key, name, format, root, class names, per-split counts
//            and shapes, payload size and its CRC-32
//   padding  to a multiple of 64 bytes
//   payload  per split (train, test): images (N*C*H*W bytes), labels (N int64),
//            coarse labels (N int64, if present)
// Files are written atomically (temporary file, fsync, rename) and validated on
// read (magic, version, key, sizes, CRC-32); anything that does not validate is
// reported and rebuilt, never trusted.

#include <liondg/data/dataset.h>

#include <cstdint>
#include <optional>
#include <string>

namespace liondg {

constexpr uint32_t kCacheVersion = 1;

/// SHA-256 fingerprint of a source: of the file's bytes for an archive or file;
/// of every file's relative path, size and modification time for a directory.
std::string source_fingerprint(const std::string& path);
class SourceTree;
/// The fingerprint of a directory tree already listed (same as source_fingerprint).
std::string tree_fingerprint(const SourceTree& tree);

/// The cache file for `key` in `dir`: "<source file or folder name>-<key prefix>.ldgcache".
std::string cache_file_path(const std::string& dir, const std::string& name, const std::string& key);

/// Reads a cache file. Returns nullopt (with the reason in `why`) if it is missing,
/// from another version, for another key, truncated or corrupt.
std::optional<DataSource> read_cache(const std::string& file, const std::string& key, std::string* why = nullptr);

/// Writes `source` (train and test splits; not a held-out split) atomically.
/// Throws DataError naming the file; no partial file is left behind.
void write_cache(const std::string& file, const std::string& key, const DataSource& source);

}  // namespace liondg
