#pragma once
// Torch-free download of the official data set releases (`liondg data fetch`):
// libcurl transfers that resume, follow redirects and show progress, and
// OpenSSL digests that verify every file against its published checksum.
// Links libcurl and libcrypto only.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace liondg {

// ------------------------------------------------------------------ digests

/// Names accepted as `algorithm` by the digest functions ("md5", "sha1",
/// "sha256", "sha512"; case-insensitive).
const std::vector<std::string>& digest_algorithms();

/// Lower-case hex digest of a file's content, read in 1 MiB chunks.
/// Throws DataError naming the file if it cannot be opened or read, and
/// UsageError for an unknown algorithm.
std::string file_digest(const std::string& path, const std::string& algorithm);

/// Lower-case hex digest of `size` bytes at `data`. UsageError for an unknown algorithm.
std::string bytes_digest(const uint8_t* data, size_t size, const std::string& algorithm);

/// Convenience overload for the bytes of a string.
std::string bytes_digest(const std::string& data, const std::string& algorithm);

// ------------------------------------------------------------ remote files

/// One file of an official release.
struct RemoteFile {
  std::string url;        // official location
  std::string file_name;  // name on disk
  std::string algorithm;  // "md5" or "sha256"
  std::string digest;     // published hex digest
  int64_t size = -1;      // size in bytes if known (-1: unknown); a progress hint only
};

/// Names accepted by `official_files`: cifar10, cifar100, fashion-mnist, mnist.
const std::vector<std::string>& fetchable_datasets();

/// The official files of data set `dataset` with their published checksums.
/// `format` picks the CIFAR archive: "binary" (default; what `load_dataset`
/// reads once extracted) or "python". MNIST and Fashion-MNIST have one format
/// ("binary", alias "idx"): their four gzip-compressed IDX files.
/// Throws UsageError for an unknown data set or format, listing the known ones.
std::vector<RemoteFile> official_files(const std::string& dataset, const std::string& format = "binary");

/// The URL `fetch_file` downloads `file` from: `file.url` when `mirror` is empty,
/// else `mirror` + the last path segment of `file.url` (a '/' is added to
/// `mirror` when missing; a bare absolute path "/dir" is taken as "file:///dir/").
std::string mirror_url(const RemoteFile& file, const std::string& mirror);

// ------------------------------------------------------------------- fetch

/// What one `fetch_file` call did (for tests and for the command's summary).
struct FetchStats {
  bool reused = false;         // the final file existed with the right checksum: nothing downloaded
  int64_t resumed_from = 0;    // bytes of an earlier `.part` that the successful transfer continued
  int64_t bytes_received = 0;  // body bytes received by this call, over all transfers
  int transfers = 0;           // transfers started (more than 1 when a resume had to restart)
  bool restarted = false;      // a resume was abandoned and the file downloaded from zero
};

/// How `fetch_file` downloads.
struct FetchOptions {
  /// Replaces the directory part of the official URL, e.g. "file:///srv/mirror/"
  /// or "http://127.0.0.1:8000/"; "" = the official location. (The CLI also
  /// reads it from the environment variable LIONDG_MIRROR.)
  std::string mirror;
  long connect_timeout_s = 15;
  /// A transfer that receives less than 1 byte/s for this long is abandoned.
  long stall_timeout_s = 60;
  /// Progress bar: one updating line when `progress_out` is a terminal, a few
  /// plain lines otherwise.
  bool progress = true;
  std::FILE* progress_out = stderr;
  /// Filled in when not null.
  FetchStats* stats = nullptr;
};

/// Downloads `file` into directory `dir` (created if needed) and returns the
/// final path `dir/file_name`.
///
/// - An existing `dir/file_name` whose checksum matches is kept as is.
/// - The transfer streams into `dir/file_name.part`; an existing `.part` is
///   continued with a range request. A server that cannot resume (ignores or
///   rejects the range) and a resumed file whose checksum does not match both
///   lead to one fresh download from zero.
/// - Redirects are followed; HTTP errors (404, ...) fail.
/// - The checksum is verified before the `.part` is renamed (atomically) to the
///   final name. On a mismatch nothing is kept: DataError with the expected and
///   the found digest.
/// - Network failures (DNS, connection refused, timeout, HTTP error) throw a
///   DataError naming the URL and curl's error and saying how to supply the
///   file by hand. A non-empty `.part` is kept so that the next call resumes.
///   Another process downloading the same file at the same time is an error.
std::string fetch_file(const RemoteFile& file, const std::string& dir, const FetchOptions& options = {});

}  // namespace liondg
