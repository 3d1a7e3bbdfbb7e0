#pragma once
// Helper for fuzz targets whose parser only takes a path: the input is written to
// an anonymous in-memory file (memfd) that is reopened through /proc/self/fd/N,
// so no disk I/O happens and no file is left behind. Falls back to a temporary
// file under $TMPDIR (or /tmp) where memfd_create is unavailable.

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace liondg_fuzz {

/// True when environment variable `name` is "1" (e.g. LIONDG_FUZZ_STRICT).
inline bool env_flag(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && std::string(value) == "1";
}

class InputFile {
 public:
  InputFile() {
    fd_ = memfd_create("liondg-fuzz-input", MFD_CLOEXEC);
    if (fd_ >= 0) {
      path_ = "/proc/self/fd/" + std::to_string(fd_);
      return;
    }
    const char* dir = std::getenv("TMPDIR");
    std::string pattern = std::string(dir != nullptr && *dir != '\0' ? dir : "/tmp") + "/liondg-fuzz-XXXXXX";
    fd_ = mkstemp(pattern.data());
    if (fd_ < 0) {
      std::perror("liondg fuzz: cannot create an input file");
      std::abort();
    }
    path_ = pattern;
    unlink_at_exit_ = true;
  }
  ~InputFile() {
    ::close(fd_);
    if (unlink_at_exit_) ::unlink(path_.c_str());
  }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  /// Replaces the file's contents with `data[0, size)`; returns its path.
  const std::string& write(const uint8_t* data, size_t size) {
    if (::ftruncate(fd_, 0) != 0) fail("ftruncate");
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      if (n <= 0) fail("pwrite");
      done += static_cast<size_t>(n);
    }
    return path_;
  }

  const std::string& path() const { return path_; }

 private:
  [[noreturn]] static void fail(const char* call) {
    std::perror(call);
    std::abort();
  }

  int fd_ = -1;
  std::string path_;
  bool unlink_at_exit_ = false;
};

}  // namespace liondg_fuzz
