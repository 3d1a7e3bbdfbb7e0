// Atomic file writes and output-directory checks.

#include <liondg/errors.h>
#include <liondg/util/fs.h>

#include <dirent.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

namespace liondg {

void write_file_atomic(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw DataError("cannot write '" + path + "': " + std::strerror(errno));
  size_t written = 0;
  while (written < content.size()) {
    const ssize_t n = ::write(fd, content.data() + written, content.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      const std::string err = std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      throw DataError("cannot write '" + path + "': " + err);
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const std::string err = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw DataError("cannot write '" + path + "': " + err);
  }
  rename_file(tmp, path);
}

void rename_file(const std::string& from, const std::string& to) {
  if (std::rename(from.c_str(), to.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    ::unlink(from.c_str());
    throw DataError("cannot write '" + to + "': rename failed: " + err);
  }
}

bool is_regular_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool make_directories(const std::string& path) {
  if (path.empty()) return false;
  for (size_t pos = path.find('/', 1);; pos = path.find('/', pos + 1)) {
    const std::string prefix = path.substr(0, pos);
    if (!prefix.empty() && ::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) return false;
    if (pos == std::string::npos) break;
  }
  if (!is_directory(path)) {
    errno = ENOTDIR;
    return false;
  }
  return true;
}

void remove_tree(const std::string& path) {
  ::nftw(
      path.c_str(),
      [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p) == 0 ? 0 : 0; },
      /*nopenfd=*/16, FTW_DEPTH | FTW_PHYS);
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

void ensure_writable_dir(const std::string& dir) {
  if (!make_directories(dir)) {
    throw DataError("output directory '" + dir + "' cannot be created: " + std::strerror(errno));
  }
  const std::string probe = dir + "/.liondg-write-test." + std::to_string(::getpid());
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw DataError("output directory '" + dir + "' is not writable: " + std::strerror(errno));
  ::close(fd);
  ::unlink(probe.c_str());
}

std::vector<std::string> list_directory(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) throw DataError("cannot list directory '" + dir + "': " + std::strerror(errno));
  std::vector<std::string> names;
  while (dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  closedir(d);
  return names;
}

void copy_tree(const std::string& from, const std::string& to) {
  if (!make_directories(to)) throw DataError("cannot create directory '" + to + "': " + std::strerror(errno));
  for (const auto& name : list_directory(from)) {
    const std::string src = join_path(from, name), dst = join_path(to, name);
    if (is_directory(src)) {
      copy_tree(src, dst);
      continue;
    }
    if (!is_regular_file(src)) continue;
    const int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
    if (in < 0) throw DataError("cannot read '" + src + "': " + std::strerror(errno));
    const int out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
      const int err = errno;
      ::close(in);
      throw DataError("cannot write '" + dst + "': " + std::strerror(err));
    }
    std::vector<char> buf(1 << 20);
    bool ok = true;
    while (ok) {
      const ssize_t n = ::read(in, buf.data(), buf.size());
      if (n == 0) break;
      if (n < 0) {
        if (errno == EINTR) continue;
        ok = false;
        break;
      }
      for (ssize_t done = 0; done < n;) {
        const ssize_t w = ::write(out, buf.data() + done, static_cast<size_t>(n - done));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
          ok = false;
          break;
        }
        done += w;
      }
    }
    const int err = errno;
    ::close(in);
    ok = (::close(out) == 0) && ok;
    if (!ok) throw DataError("cannot copy '" + src + "' to '" + dst + "': " + std::strerror(err));
  }
}

}  // namespace liondg
