// Directory and archive sources (libarchive), read without unpacking to disk.

#include <liondg/data/archive.h>
#include <liondg/errors.h>
#include <liondg/util/fs.h>

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

namespace liondg {
namespace {

constexpr size_t kReadBlock = size_t{1} << 20;

// RAII for a libarchive reader.
struct ArchiveReader {
  archive* a = archive_read_new();
  ~ArchiveReader() { archive_read_free(a); }
  std::string error() const {
    const char* msg = archive_error_string(a);
    return msg != nullptr ? msg : "unknown libarchive error";
  }
};

void open_archive(ArchiveReader& r, const std::string& path) {
  // Only the compressions the docs promise, all in-process (filter_all would also run
  // external programs such as lrzip for some inputs).
  archive_read_support_filter_gzip(r.a);
  archive_read_support_filter_bzip2(r.a);
  archive_read_support_filter_xz(r.a);
  archive_read_support_format_tar(r.a);
  archive_read_support_format_gnutar(r.a);
  archive_read_support_format_zip(r.a);
  if (archive_read_open_filename(r.a, path.c_str(), /*block_size=*/kReadBlock) != ARCHIVE_OK) {
    throw DataError("cannot open archive '" + path + "': " + r.error());
  }
}

void list_tree(const std::string& root, const std::string& relative, std::vector<std::string>& files,
                    std::vector<std::string>& dirs, std::map<std::string, int64_t>& sizes,
                    std::map<std::string, int64_t>& mtimes) {
  for (const auto& name : list_directory(relative.empty() ? root : join_path(root, relative))) {
    const std::string rel = relative.empty() ? name : relative + "/" + name;
    struct stat st {};
    if (stat(join_path(root, rel).c_str(), &st) != 0) {
      throw DataError("cannot read '" + join_path(root, rel) + "': " + std::strerror(errno));
    }
    if (S_ISDIR(st.st_mode)) {
      dirs.push_back(rel);
      list_tree(root, rel, files, dirs, sizes, mtimes);
    } else if (S_ISREG(st.st_mode)) {
      files.push_back(rel);
      sizes[rel] = static_cast<int64_t>(st.st_size);
      mtimes[rel] = static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
    }
  }
}

}  // namespace

std::string safe_member_path(const std::string& member, const std::string& archive) {
  if (!member.empty() && member.front() == '/') {
    throw DataError("archive '" + archive + "': member '" + member +
                    "' has an absolute path (it would escape the archive root); refusing to read it");
  }
  std::string out;
  size_t start = 0;
  while (start <= member.size()) {
    size_t end = member.find('/', start);
    if (end == std::string::npos) end = member.size();
    const std::string part = member.substr(start, end - start);
    if (part == "..") {
      throw DataError("archive '" + archive + "': member '" + member +
                      "' has a '..' component (it would escape the archive root); refusing to read it");
    }
    if (!part.empty() && part != ".") out += (out.empty() ? "" : "/") + part;
    start = end + 1;
  }
  return out;
}

bool SourceTree::is_archive_file(const std::string& path) {
  if (!is_regular_file(path)) return false;
  ArchiveReader r;
  // Only the compressions the docs promise, all in-process (filter_all would also run
  // external programs such as lrzip for some inputs).
  archive_read_support_filter_gzip(r.a);
  archive_read_support_filter_bzip2(r.a);
  archive_read_support_filter_xz(r.a);
  archive_read_support_format_tar(r.a);
  archive_read_support_format_gnutar(r.a);
  archive_read_support_format_zip(r.a);
  if (archive_read_open_filename(r.a, path.c_str(), /*block_size=*/kReadBlock) != ARCHIVE_OK) return false;
  archive_entry* entry = nullptr;
  return archive_read_next_header(r.a, &entry) == ARCHIVE_OK;
}

SourceTree SourceTree::open(const std::string& path, const ArchiveLimits& limits) {
  SourceTree tree;
  tree.path_ = path;
  if (is_directory(path)) {
    list_tree(path, "", tree.files_, tree.dirs_, tree.sizes_, tree.mtimes_);
    std::sort(tree.files_.begin(), tree.files_.end());
    std::sort(tree.dirs_.begin(), tree.dirs_.end());
    return tree;
  }
  if (!is_regular_file(path)) throw DataError("data path '" + path + "' does not exist");

  tree.archive_ = true;
  tree.contents_ = std::make_shared<std::map<std::string, std::vector<uint8_t>>>();
  ArchiveReader r;
  open_archive(r, path);
  std::set<std::string> dirs;
  int64_t total = 0;
  int64_t entries = 0;
  archive_entry* entry = nullptr;
  while (true) {
    const int rc = archive_read_next_header(r.a, &entry);
    if (rc == ARCHIVE_EOF) break;
    if (rc == ARCHIVE_FATAL || rc == ARCHIVE_RETRY) {
      throw DataError("cannot read archive '" + path + "'" + (entries == 0 ? " (not a tar or zip archive?)" : "") +
                      ": " + r.error());
    }
    if (++entries > limits.max_entries) {
      throw DataError("archive '" + path + "' has more than " + std::to_string(limits.max_entries) + " entries");
    }
    const char* raw_name = archive_entry_pathname(entry);
    const std::string name = safe_member_path(raw_name != nullptr ? raw_name : "", path);
    if (name.empty()) continue;
    // Every parent of a member is a directory of the tree, listed or not.
    for (size_t slash = name.find('/'); slash != std::string::npos; slash = name.find('/', slash + 1)) {
      dirs.insert(name.substr(0, slash));
    }
    const auto type = archive_entry_filetype(entry);
    if (type == AE_IFDIR) {
      dirs.insert(name);
      continue;
    }
    if (type != AE_IFREG) continue;  // links, devices: not data
    std::vector<uint8_t> bytes;
    if (archive_entry_size_is_set(entry)) {
      const int64_t declared = archive_entry_size(entry);
      if (declared < 0 || total + declared > limits.max_total_bytes) {
        throw DataError("archive '" + path + "': member '" + name + "' would exceed the " +
                        std::to_string(limits.max_total_bytes >> 20) + " MiB limit on uncompressed data");
      }
      // The declared size is untrusted: reserve at most 64 MiB up front, grow past it
      // only as data actually arrives.
      constexpr int64_t kMaxReserve = int64_t{64} << 20;
      bytes.reserve(static_cast<size_t>(std::min(declared, kMaxReserve)));
    }
    std::vector<uint8_t> block(kReadBlock);
    while (true) {
      const la_ssize_t n = archive_read_data(r.a, block.data(), block.size());
      if (n == 0) break;
      if (n < 0) {
        throw DataError("cannot read member '" + name + "' of archive '" + path +
                        "': truncated or corrupt archive (" + r.error() + ")");
      }
      total += n;
      if (total > limits.max_total_bytes) {
        throw DataError("archive '" + path + "' holds more than the " + std::to_string(limits.max_total_bytes >> 20) +
                        " MiB limit of uncompressed data");
      }
      bytes.insert(bytes.end(), block.begin(), block.begin() + n);
    }
    if (archive_entry_size_is_set(entry) && static_cast<int64_t>(bytes.size()) != archive_entry_size(entry)) {
      throw DataError("cannot read member '" + name + "' of archive '" + path + "': truncated archive (" +
                      std::to_string(bytes.size()) + " of " + std::to_string(archive_entry_size(entry)) + " bytes)");
    }
    tree.sizes_[name] = static_cast<int64_t>(bytes.size());
    (*tree.contents_)[name] = std::move(bytes);
  }
  for (const auto& [name, bytes] : *tree.contents_) {
    tree.files_.push_back(name);
    dirs.erase(name);
  }
  tree.dirs_.assign(dirs.begin(), dirs.end());
  return tree;
}

bool SourceTree::contains(const std::string& relative) const { return sizes_.count(relative) > 0; }

int64_t SourceTree::file_size(const std::string& relative) const {
  auto it = sizes_.find(relative);
  if (it == sizes_.end()) throw DataError("'" + describe(relative) + "': no such file");
  return it->second;
}

int64_t SourceTree::file_mtime_ns(const std::string& relative) const {
  auto it = mtimes_.find(relative);
  return it == mtimes_.end() ? 0 : it->second;
}

std::vector<uint8_t> SourceTree::read(const std::string& relative) const {
  if (archive_) {
    auto it = contents_->find(relative);
    if (it == contents_->end()) throw DataError("'" + describe(relative) + "': no such member");
    return it->second;
  }
  const std::string full = join_path(path_, relative);
  const int fd = ::open(full.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw DataError("cannot open '" + full + "': " + std::strerror(errno));
  std::vector<uint8_t> bytes;
  std::vector<uint8_t> block(64 * 1024);
  while (true) {
    const ssize_t n = ::read(fd, block.data(), block.size());
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      throw DataError("cannot read '" + full + "': " + std::strerror(err));
    }
    bytes.insert(bytes.end(), block.begin(), block.begin() + n);
  }
  ::close(fd);
  return bytes;
}

std::string SourceTree::describe(const std::string& relative) const {
  return archive_ ? path_ + ":" + relative : join_path(path_, relative);
}

}  // namespace liondg
