// Download of the official data set files: libcurl transfers with resume,
// redirects and a progress bar; OpenSSL EVP digests verify the result.
// Self-contained (POSIX + libcurl + libcrypto): no torch, no other liondg code.

#include <liondg/data/fetch.h>
#include <liondg/errors.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>

namespace liondg {
namespace {

constexpr size_t kDigestChunkBytes = size_t{1} << 20;  // file_digest reads 1 MiB at a time
constexpr long kMaxRedirects = 10;
constexpr long kHttpRangeNotSatisfiable = 416;
constexpr mode_t kDirMode = 0755;
constexpr mode_t kFileMode = 0644;
constexpr long kCurlBufferBytes = 256L * 1024;        // receive buffer handed to the write callback
constexpr long kStallMinBytesPerSecond = 1;           // below this for stall_timeout_s = stalled
constexpr double kBytesPerMB = 1e6;
constexpr double kTtyRefreshSeconds = 0.1;            // redraw rate of the terminal progress line
constexpr int kBarWidth = 24;                         // characters inside [...] of the terminal bar
constexpr int kPlainSteps = 4;                        // plain progress lines at 25 %, 50 %, 75 %
constexpr const char* kUserAgent = "liondg-fetch/1 (libcurl)";
constexpr const char* kAllowedProtocols = "http,https,ftp,file";
constexpr const char* kAllowedRedirectProtocols = "http,https,ftp";

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

std::string errno_text(int err) { return std::strerror(err); }

std::string format_mb(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", static_cast<double>(bytes) / kBytesPerMB);
  return buf;
}

// ------------------------------------------------------------------ digests

const EVP_MD* digest_method(const std::string& algorithm) {
  const std::string a = lower(algorithm);
  if (a == "md5") return EVP_md5();
  if (a == "sha1") return EVP_sha1();
  if (a == "sha256") return EVP_sha256();
  if (a == "sha512") return EVP_sha512();
  throw UsageError("unknown digest algorithm '" + algorithm + "'; expected one of: " + joined(digest_algorithms()));
}

struct EvpContextDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};

/// An incremental digest; `what` names the data in error messages.
class Digest {
 public:
  Digest(const std::string& algorithm, const std::string& what) : ctx_(EVP_MD_CTX_new()), what_(what) {
    const EVP_MD* md = digest_method(algorithm);
    if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), md, /*impl=*/nullptr) != 1) {
      throw DataError("cannot compute the " + algorithm + " digest of " + what_ + ": OpenSSL digest init failed");
    }
  }
  void update(const void* data, size_t size) {
    if (size > 0 && EVP_DigestUpdate(ctx_.get(), data, size) != 1) {
      throw DataError("cannot compute the digest of " + what_ + ": OpenSSL digest update failed");
    }
  }
  std::string hex() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(ctx_.get(), md, &len) != 1) {
      throw DataError("cannot compute the digest of " + what_ + ": OpenSSL digest final failed");
    }
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out(2 * static_cast<size_t>(len), '0');
    for (unsigned int i = 0; i < len; ++i) {
      out[2 * i] = kHex[md[i] >> 4];
      out[2 * i + 1] = kHex[md[i] & 0x0f];
    }
    return out;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, EvpContextDeleter> ctx_;
  std::string what_;
};

// Digest of everything readable from `fd` (from the current offset).
std::string fd_digest(int fd, const std::string& path, const std::string& algorithm) {
  Digest digest(algorithm, "'" + path + "'");
  std::vector<unsigned char> chunk(kDigestChunkBytes);
  while (true) {
    const ssize_t n = ::read(fd, chunk.data(), chunk.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw DataError("cannot read '" + path + "' to compute its " + algorithm + " digest: " + errno_text(errno));
    }
    if (n == 0) break;
    digest.update(chunk.data(), static_cast<size_t>(n));
  }
  return digest.hex();
}

// ------------------------------------------------------------- file system

int64_t file_size_or(const std::string& path, int64_t missing) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return missing;
  return static_cast<int64_t>(st.st_size);
}

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// `mkdir -p`; on failure returns false with errno set.
bool make_dirs(const std::string& path) {
  if (path.empty() || is_dir(path)) return !path.empty();
  for (size_t pos = path.find('/', /*pos=*/1);; pos = path.find('/', pos + 1)) {
    const std::string prefix = path.substr(0, pos);
    if (!prefix.empty() && ::mkdir(prefix.c_str(), kDirMode) != 0 && errno != EEXIST) return false;
    if (pos == std::string::npos) break;
  }
  if (!is_dir(path)) {
    errno = ENOTDIR;
    return false;
  }
  return true;
}

std::string join(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

// Flushes a directory entry change (the rename) to disk; best effort.
void sync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

/// The locked `.part` file of one download (O_APPEND: writes always go to its end,
/// also after a truncation to restart from zero).
class PartFile {
 public:
  explicit PartFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, kFileMode);
    if (fd_ < 0) throw DataError("cannot write '" + path + "': " + errno_text(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      ::close(fd_);
      if (err == EWOULDBLOCK) {
        throw DataError("'" + path + "' is being downloaded by another process; wait for it to finish or remove it");
      }
      throw DataError("cannot lock '" + path + "': " + errno_text(err));
    }
  }
  ~PartFile() { ::close(fd_); }
  PartFile(const PartFile&) = delete;
  PartFile& operator=(const PartFile&) = delete;

  int64_t size() const {
    struct stat st {};
    if (::fstat(fd_, &st) != 0) throw DataError("cannot stat '" + path_ + "': " + errno_text(errno));
    return static_cast<int64_t>(st.st_size);
  }
  void truncate() {
    if (::ftruncate(fd_, /*length=*/0) != 0) throw DataError("cannot truncate '" + path_ + "': " + errno_text(errno));
  }
  /// Writes all of `data`; returns 0 or the errno of the failure.
  int write_all(const char* data, size_t size) {
    while (size > 0) {
      const ssize_t n = ::write(fd_, data, size);
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno;
      }
      data += n;
      size -= static_cast<size_t>(n);
    }
    return 0;
  }
  void sync() {
    if (::fsync(fd_) != 0) throw DataError("cannot write '" + path_ + "': fsync failed: " + errno_text(errno));
  }

 private:
  std::string path_;
  int fd_ = -1;
};

// ---------------------------------------------------------------- progress

/// Progress of one transfer: an updating line on a terminal, a few plain lines
/// (25 %, 50 %, 75 %, done) otherwise.
class ProgressBar {
 public:
  ProgressBar(std::FILE* out, bool enabled, std::string label)
      : out_(enabled ? out : nullptr), label_(std::move(label)) {
    if (out_ != nullptr) tty_ = ::isatty(::fileno(out_)) == 1;
  }

  void message(const std::string& line) {
    if (out_ == nullptr) return;
    std::fprintf(out_, "%s\n", line.c_str());
    std::fflush(out_);
  }

  /// A transfer starts at byte `offset` of a file of `total_hint` bytes (-1: unknown).
  void begin(int64_t offset, int64_t total_hint) {
    offset_ = offset;
    total_ = total_hint;
    now_ = 0;
    start_ = last_draw_ = std::chrono::steady_clock::now();
    drawn_ = false;
    next_step_ = 1;
    while (total_ > 0 && next_step_ < kPlainSteps && offset_ * kPlainSteps >= total_ * next_step_) ++next_step_;
  }

  /// `now` bytes received by this transfer, of `transfer_total` (0: unknown yet).
  void update(int64_t now, int64_t transfer_total) {
    now_ = now;
    if (transfer_total > 0) total_ = offset_ + transfer_total;
    if (out_ == nullptr) return;
    if (tty_) {
      const auto t = std::chrono::steady_clock::now();
      if (std::chrono::duration<double>(t - last_draw_).count() < kTtyRefreshSeconds && drawn_) return;
      last_draw_ = t;
      draw_tty();
    } else if (total_ > 0 && next_step_ < kPlainSteps && (offset_ + now_) * kPlainSteps >= total_ * next_step_) {
      while (next_step_ < kPlainSteps && (offset_ + now_) * kPlainSteps >= total_ * next_step_) ++next_step_;
      std::fprintf(out_, "  %s\n", status().c_str());
      std::fflush(out_);
    }
  }

  /// The transfer ended; a failed one that received nothing leaves no line.
  void end(bool ok) {
    if (out_ == nullptr) return;
    if (!ok && now_ == 0) {
      if (tty_ && drawn_) std::fputs("\r\033[K", out_);
    } else if (tty_) {
      draw_tty();
      std::fputc('\n', out_);
    } else {
      std::fprintf(out_, "  %s\n", status().c_str());
    }
    std::fflush(out_);
  }

 private:
  std::string status() const {
    const int64_t done = offset_ + now_;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double rate = seconds > 0 ? static_cast<double>(now_) / kBytesPerMB / seconds : 0.0;
    char buf[160];
    if (total_ > 0) {
      const int percent = static_cast<int>(std::min<int64_t>(100, done * 100 / total_));
      std::snprintf(buf, sizeof buf, "%s %3d%%  %s/%s MB  %.1f MB/s", label_.c_str(), percent, format_mb(done).c_str(),
                    format_mb(total_).c_str(), rate);
    } else {
      std::snprintf(buf, sizeof buf, "%s  %s MB  %.1f MB/s", label_.c_str(), format_mb(done).c_str(), rate);
    }
    return buf;
  }

  void draw_tty() {
    std::string bar;
    if (total_ > 0) {
      const int64_t filled = std::min<int64_t>(kBarWidth, (offset_ + now_) * kBarWidth / total_);
      bar = " [" + std::string(static_cast<size_t>(filled), '#') +
            std::string(static_cast<size_t>(kBarWidth - filled), ' ') + "]";
    }
    // \r: back to the line start; \033[K: clear the rest of a longer earlier line.
    std::fprintf(out_, "\r  %s%s\033[K", status().c_str(), bar.c_str());
    std::fflush(out_);
    drawn_ = true;
  }

  std::FILE* out_;
  std::string label_;
  bool tty_ = false;
  int64_t offset_ = 0;
  int64_t total_ = -1;
  int64_t now_ = 0;
  std::chrono::steady_clock::time_point start_, last_draw_;
  bool drawn_ = false;
  int next_step_ = 1;
};

// ------------------------------------------------------------------- curl

void ensure_curl_initialized() {
  static std::once_flag once;
  static CURLcode init_result = CURLE_OK;
  std::call_once(once, [] { init_result = curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (init_result != CURLE_OK) {
    throw DataError(std::string("cannot initialize libcurl: ") + curl_easy_strerror(init_result));
  }
}

struct CurlDeleter {
  void operator()(CURL* curl) const { curl_easy_cleanup(curl); }
};

/// State shared with the curl callbacks during one transfer.
struct TransferState {
  PartFile* part = nullptr;
  ProgressBar* progress = nullptr;
  int64_t received = 0;
  int write_errno = 0;
};

size_t on_write(char* data, size_t size, size_t count, void* user) {
  auto* state = static_cast<TransferState*>(user);
  const size_t bytes = size * count;
  const int err = state->part->write_all(data, bytes);
  if (err != 0) {
    state->write_errno = err;
    return 0;  // makes curl fail with CURLE_WRITE_ERROR
  }
  state->received += static_cast<int64_t>(bytes);
  return bytes;
}

int on_progress(void* user, curl_off_t download_total, curl_off_t download_now, curl_off_t /*upload_total*/,
                curl_off_t /*upload_now*/) {
  auto* state = static_cast<TransferState*>(user);
  state->progress->update(static_cast<int64_t>(download_now), static_cast<int64_t>(download_total));
  return 0;
}

struct TransferResult {
  CURLcode code = CURLE_OK;
  std::string detail;  // curl's error buffer
  long http_status = 0;
};

/// One transfer of `url` appended to `part`, continuing at byte `offset`.
TransferResult transfer(const std::string& url, int64_t offset, PartFile& part, ProgressBar& progress,
                        const FetchOptions& options, int64_t& received) {
  std::unique_ptr<CURL, CurlDeleter> curl(curl_easy_init());
  if (!curl) throw DataError("cannot download " + url + ": curl_easy_init failed");
  TransferState state;
  state.part = &part;
  state.progress = &progress;
  char error_buffer[CURL_ERROR_SIZE] = {};
  CURL* c = curl.get();
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(c, CURLOPT_USERAGENT, kUserAgent);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, kAllowedProtocols);
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, kAllowedRedirectProtocols);
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, /*enable=*/1L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, kMaxRedirects);
  curl_easy_setopt(c, CURLOPT_FAILONERROR, /*enable=*/1L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, /*enable=*/1L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, options.connect_timeout_s);
  if (options.stall_timeout_s > 0) {
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, kStallMinBytesPerSecond);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, options.stall_timeout_s);
  }
  curl_easy_setopt(c, CURLOPT_BUFFERSIZE, kCurlBufferBytes);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &state);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, &state);
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, /*disable_progress=*/0L);
  // A resume: curl sends "Range: bytes=offset-" (HTTP) or seeks (file://, ftp).
  // A server that answers 200 with the whole file makes curl fail with
  // CURLE_RANGE_ERROR before writing anything; a 416 is taken as "nothing left".
  if (offset > 0) curl_easy_setopt(c, CURLOPT_RESUME_FROM_LARGE, static_cast<curl_off_t>(offset));

  TransferResult result;
  result.code = curl_easy_perform(c);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &result.http_status);
  result.detail = error_buffer;
  received += state.received;
  if (result.code == CURLE_WRITE_ERROR && state.write_errno != 0) {
    result.detail = "writing the download failed: " + errno_text(state.write_errno);
  }
  return result;
}

bool is_resume_refusal(CURLcode code) { return code == CURLE_RANGE_ERROR || code == CURLE_BAD_DOWNLOAD_RESUME; }

std::string check_file_name(const RemoteFile& file) {
  if (file.file_name.empty() || file.file_name.find('/') != std::string::npos || file.file_name == "." ||
      file.file_name == "..") {
    throw UsageError("invalid file name '" + file.file_name + "' for " + file.url);
  }
  if (file.digest.empty()) throw UsageError("no checksum given for '" + file.file_name + "'");
  (void)digest_method(file.algorithm);
  return file.file_name;
}

}  // namespace

// ------------------------------------------------------------------ digests

const std::vector<std::string>& digest_algorithms() {
  static const std::vector<std::string> kNames{"md5", "sha1", "sha256", "sha512"};
  return kNames;
}

std::string file_digest(const std::string& path, const std::string& algorithm) {
  (void)digest_method(algorithm);  // an unknown algorithm is a UsageError before any I/O
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw DataError("cannot open '" + path + "' to compute its " + algorithm + " digest: " + errno_text(errno));
  try {
    std::string hex = fd_digest(fd, path, algorithm);
    ::close(fd);
    return hex;
  } catch (...) {
    ::close(fd);
    throw;
  }
}

std::string bytes_digest(const uint8_t* data, size_t size, const std::string& algorithm) {
  Digest digest(algorithm, std::to_string(size) + " bytes in memory");
  digest.update(data, size);
  return digest.hex();
}

std::string bytes_digest(const std::string& data, const std::string& algorithm) {
  return bytes_digest(reinterpret_cast<const uint8_t*>(data.data()), data.size(), algorithm);
}

// ------------------------------------------------------------ remote files

const std::vector<std::string>& fetchable_datasets() {
  static const std::vector<std::string> kNames{"cifar10", "cifar100", "fashion-mnist", "mnist"};
  return kNames;
}

std::vector<RemoteFile> official_files(const std::string& dataset, const std::string& format) {
  // Checksums: the md5 sums published on https://www.cs.toronto.edu/~kriz/cifar.html
  // and the ones torchvision verifies (torchvision/datasets/mnist.py, cifar.py).
  static const std::string kCifarBase = "https://www.cs.toronto.edu/~kriz/";
  static const std::string kMnistBase = "https://ossci-datasets.s3.amazonaws.com/mnist/";
  static const std::string kFashionBase = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/";
  const auto remote = [](const std::string& base, const std::string& name, const std::string& md5, int64_t size) {
    return RemoteFile{base + name, name, "md5", md5, size};
  };
  const std::string fmt = lower(format);
  const bool is_idx = dataset == "mnist" || dataset == "fashion-mnist";
  if (std::find(fetchable_datasets().begin(), fetchable_datasets().end(), dataset) == fetchable_datasets().end()) {
    throw UsageError("cannot fetch unknown dataset '" + dataset + "'; expected one of: " + joined(fetchable_datasets()));
  }
  if (is_idx ? (fmt != "binary" && fmt != "idx") : (fmt != "binary" && fmt != "python")) {
    throw UsageError("unknown format '" + format + "' for dataset '" + dataset + "'; expected one of: " +
                     (is_idx ? "binary (idx)" : "binary, python"));
  }
  if (dataset == "cifar10") {
    if (fmt == "python") return {remote(kCifarBase, "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", 170498071)};
    return {remote(kCifarBase, "cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", 170052171)};
  }
  if (dataset == "cifar100") {
    if (fmt == "python") return {remote(kCifarBase, "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", 169001437)};
    return {remote(kCifarBase, "cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8", 168513733)};
  }
  if (dataset == "mnist") {
    return {remote(kMnistBase, "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422),
            remote(kMnistBase, "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", 28881),
            remote(kMnistBase, "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", 1648877),
            remote(kMnistBase, "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", 4542)};
  }
  return {remote(kFashionBase, "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880),
          remote(kFashionBase, "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", 29515),
          remote(kFashionBase, "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", 4422102),
          remote(kFashionBase, "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", 5148)};
}

std::string mirror_url(const RemoteFile& file, const std::string& mirror) {
  if (mirror.empty()) return file.url;
  std::string base = mirror.front() == '/' ? "file://" + mirror : mirror;
  if (base.back() != '/') base += '/';
  const size_t slash = file.url.rfind('/');
  const std::string name = slash == std::string::npos ? file.url : file.url.substr(slash + 1);
  return base + (name.empty() ? file.file_name : name);
}

// ------------------------------------------------------------------- fetch

std::string fetch_file(const RemoteFile& file, const std::string& dir, const FetchOptions& options) {
  const std::string name = check_file_name(file);
  FetchStats local_stats;
  FetchStats& stats = options.stats != nullptr ? *options.stats : local_stats;
  stats = FetchStats{};
  const std::string expected = lower(file.digest);
  const std::string final_path = join(dir, name);
  const std::string part_path = final_path + ".part";
  ProgressBar progress(options.progress_out, options.progress, name);

  if (!make_dirs(dir)) throw DataError("cannot create directory '" + dir + "': " + errno_text(errno));

  if (file_size_or(final_path, /*missing=*/-1) >= 0) {
    const std::string found = file_digest(final_path, file.algorithm);
    if (found == expected) {
      stats.reused = true;
      progress.message(name + ": already present, " + file.algorithm + " ok (" + final_path + ")");
      return final_path;
    }
    progress.message(name + ": existing " + final_path + " has the wrong " + file.algorithm + " (" + found +
                     "); downloading it again");
  }

  ensure_curl_initialized();
  const std::string url = mirror_url(file, options.mirror);
  PartFile part(part_path);
  bool fresh_start_done = false;  // a download from zero happened (no more restarts)
  while (true) {
    int64_t offset = part.size();
    if (file.size >= 0 && offset > file.size) {  // longer than the real file: cannot be a prefix of it
      part.truncate();
      offset = 0;
      stats.restarted = true;
    }
    if (offset == 0) fresh_start_done = true;
    stats.resumed_from = offset;

    // Nothing to transfer when the .part already has the published size.
    if (file.size < 0 || offset < file.size) {
      progress.message("fetching " + url + (offset > 0 ? " (resuming at " + format_mb(offset) + " MB)" : ""));
      progress.begin(offset, file.size);
      ++stats.transfers;
      const TransferResult result = transfer(url, offset, part, progress, options, stats.bytes_received);
      progress.end(result.code == CURLE_OK);
      // 416 Range Not Satisfiable to a resume: the .part is already complete (or
      // longer than the file); the checksum below decides.
      const bool nothing_left = offset > 0 && result.code == CURLE_HTTP_RETURNED_ERROR &&
                                result.http_status == kHttpRangeNotSatisfiable;
      if (result.code != CURLE_OK && !nothing_left) {
        if (offset > 0 && is_resume_refusal(result.code) && !fresh_start_done) {
          progress.message(name + ": the server cannot resume (" + result.detail + "); downloading from zero");
          part.truncate();
          stats.restarted = true;
          continue;
        }
        if (result.code == CURLE_WRITE_ERROR) throw DataError("cannot write '" + part_path + "': " + result.detail);
        const int64_t kept = part.size();
        if (kept == 0) ::unlink(part_path.c_str());
        std::string message = "cannot download " + url + ": " + curl_easy_strerror(result.code);
        if (!result.detail.empty()) message += " (" + result.detail + ")";
        message += ".";
        if (kept > 0) {
          message += " The partial download is kept in " + part_path + " (" + std::to_string(kept) +
                     " bytes); running the command again resumes it.";
        }
        message += " To supply the file by hand: download " + file.url +
                   " on a machine with internet and copy it to " + final_path + " (" + file.algorithm + " " +
                   expected + "), or pass --data PATH pointing at the files";
        throw DataError(message);
      }
    }

    const std::string found = file_digest(part_path, file.algorithm);
    if (found == expected) {
      part.sync();
      if (std::rename(part_path.c_str(), final_path.c_str()) != 0) {
        throw DataError("cannot rename '" + part_path + "' to '" + final_path + "': " + errno_text(errno));
      }
      sync_dir(dir);
      progress.message(name + ": " + file.algorithm + " ok -> " + final_path);
      return final_path;
    }
    if (!fresh_start_done) {
      // The kept prefix may be what is wrong (a changed or corrupt earlier download).
      progress.message(name + ": " + file.algorithm + " mismatch after resuming; downloading from zero");
      part.truncate();
      stats.restarted = true;
      continue;
    }
    ::unlink(part_path.c_str());
    throw DataError("checksum mismatch for '" + name + "' downloaded from " + url + ": expected " + file.algorithm +
                    " " + expected + ", found " + found + "; the download was discarded (a corrupt transfer, or " +
                    "the server does not serve the official file)");
  }
}

}  // namespace liondg
