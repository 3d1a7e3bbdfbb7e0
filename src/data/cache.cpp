// The decoded-data cache: atomic writes, validated reads.

#include <liondg/data/archive.h>
#include <liondg/data/cache.h>
#include <liondg/data/fetch.h>
#include <liondg/errors.h>
#include <liondg/util/fs.h>

#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>

namespace liondg {
namespace {

using json = nlohmann::json;

constexpr char kMagic[8] = {'L', 'I', 'O', 'N', 'D', 'G', 'D', 'C'};
constexpr size_t kAlign = 64;
constexpr uint32_t kMaxHeaderBytes = 64u << 20;
const char* const kSplits[] = {"train", "test"};

// CRC-32 of a large buffer (zlib's crc32_z takes a size_t length).
uint32_t crc32_of(const uint8_t* data, size_t size, uint32_t crc = 0) {
  // crc32_z(crc, NULL, 0) returns 0, not crc: an empty tensor (null data) adds nothing.
  if (size == 0) return crc;
  return static_cast<uint32_t>(crc32_z(crc, data, size));
}

// A non-negative integer header field no larger than `max` (nlohmann's get<> would cast
// a float or a negative number silently).
int64_t header_int(const json& j, const char* field, int64_t max) {
  const json& v = j.at(field);
  if (!v.is_number_integer()) throw std::out_of_range(std::string(field) + " is not an integer");
  const int64_t x = v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(max) ? -1 : v.get<int64_t>();
  if (x < 0 || x > max) throw std::out_of_range(std::string(field) + " is out of range");
  return x;
}

size_t padded(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Byte views of one split's tensors, in payload order.
std::vector<torch::Tensor> split_tensors(const Dataset& d) {
  std::vector<torch::Tensor> out{d.images.contiguous(), d.labels.to(torch::kInt64).contiguous()};
  if (d.coarse_labels.defined()) out.push_back(d.coarse_labels.to(torch::kInt64).contiguous());
  return out;
}

bool write_all(int fd, const void* data, size_t size) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

bool read_all_fd(int fd, void* data, size_t size) {
  auto* p = static_cast<uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = ::read(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

std::string tree_fingerprint(const SourceTree& tree) {
  if (tree.is_archive()) return file_digest(tree.path(), "sha256");
  std::string listing = "dir\n";
  for (const auto& f : tree.files()) {
    listing += f + "\t" + std::to_string(tree.file_size(f)) + "\t" + std::to_string(tree.file_mtime_ns(f)) + "\n";
  }
  return bytes_digest(reinterpret_cast<const uint8_t*>(listing.data()), listing.size(), "sha256");
}

std::string source_fingerprint(const std::string& path) {
  if (is_directory(path)) return tree_fingerprint(SourceTree::open(path));
  return file_digest(path, "sha256");
}

std::string cache_file_path(const std::string& dir, const std::string& name, const std::string& key) {
  return join_path(dir, name + "-" + key.substr(0, 16) + ".ldgcache");
}

std::optional<DataSource> read_cache(const std::string& file, const std::string& key, std::string* why) {
  auto fail = [&](const std::string& reason) -> std::optional<DataSource> {
    if (why != nullptr) *why = reason;
    return std::nullopt;
  };
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail("no cache file");
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (fstat(fd, &st) != 0) return fail("cannot stat");
  const auto file_size = static_cast<size_t>(st.st_size);

  char magic[8];
  uint32_t version = 0, header_len = 0;
  if (!read_all_fd(fd, magic, sizeof magic) || std::memcmp(magic, kMagic, sizeof magic) != 0) {
    return fail("not a liondg cache file (bad magic)");
  }
  if (!read_all_fd(fd, &version, sizeof version) || !read_all_fd(fd, &header_len, sizeof header_len)) {
    return fail("truncated header");
  }
  if (version != kCacheVersion) {
    return fail("written by cache format version " + std::to_string(version) + ", this build reads version " +
                std::to_string(kCacheVersion));
  }
  if (header_len > kMaxHeaderBytes || 16 + size_t{header_len} > file_size) return fail("truncated header");
  std::string header_text(header_len, '\0');
  if (!read_all_fd(fd, header_text.data(), header_len)) return fail("truncated header");
  json h = json::parse(header_text, nullptr, /*allow_exceptions=*/false);
  if (h.is_discarded() || !h.is_object()) return fail("corrupt header");
  try {
    if (h.at("key").get<std::string>() != key) return fail("cache is for another source or options");
    const size_t payload_offset = padded(16 + size_t{header_len});
    const auto payload_bytes = static_cast<size_t>(header_int(h, "payload_bytes", static_cast<int64_t>(file_size)));
    if (payload_offset + payload_bytes != file_size) {
      return fail("file size " + std::to_string(file_size) + " does not match the header (" +
                  std::to_string(payload_offset + payload_bytes) + ")");
    }
    if (lseek(fd, static_cast<off_t>(payload_offset), SEEK_SET) < 0) return fail("cannot seek");
    // One read of the whole payload into one buffer; the splits are views of it.
    torch::Tensor payload = torch::empty({static_cast<int64_t>(payload_bytes)}, torch::kUInt8);
    if (!read_all_fd(fd, payload.data_ptr<uint8_t>(), payload_bytes)) return fail("truncated payload");
    if (crc32_of(payload.data_ptr<uint8_t>(), payload_bytes) !=
        static_cast<uint32_t>(header_int(h, "payload_crc32", int64_t{0xFFFFFFFF}))) {
      return fail("payload checksum mismatch (corrupt file)");
    }
    DataSource src;
    src.name = h.at("name").get<std::string>();
    src.format = h.at("format").get<std::string>();
    src.root = h.at("root").get<std::string>();
    src.class_names = h.at("class_names").get<std::vector<std::string>>();
    src.coarse_class_names = h.at("coarse_class_names").get<std::vector<std::string>>();
    int64_t offset = 0;
    auto take = [&](int64_t bytes) {
      if (bytes < 0 || offset + bytes > static_cast<int64_t>(payload_bytes)) throw std::out_of_range("payload");
      torch::Tensor t = payload.narrow(0, offset, bytes);
      offset += bytes;
      return t;
    };
    for (const char* name : kSplits) {
      const json& s = h.at("splits").at(name);
      // Every size is bounded by the payload before any product: no overflow, no
      // tensor with absurd strides.
      const auto limit = static_cast<int64_t>(payload_bytes);
      const int64_t n = header_int(s, "count", limit);
      const json& shape_json = s.at("shape");
      if (!shape_json.is_array() || shape_json.size() != 3) return fail("corrupt split header");
      std::vector<int64_t> shape;
      int64_t item = 1;
      for (const auto& dim : shape_json) {
        if (!dim.is_number_integer() || dim.get<int64_t>() < 1 || dim.get<int64_t>() > limit / item) {
          return fail("corrupt split header (shape)");
        }
        shape.push_back(dim.get<int64_t>());
        item *= shape.back();
      }
      if (n > 0 && item > limit / n) return fail("corrupt split header (size)");
      Dataset d;
      d.images = take(n * item).view({n, shape[0], shape[1], shape[2]});
      d.labels = take(n * 8).clone().view(torch::kInt64);
      if (s.at("coarse").get<bool>()) d.coarse_labels = take(n * 8).clone().view(torch::kInt64);
      (std::string(name) == "train" ? src.train : src.test) = d;
    }
    if (offset != static_cast<int64_t>(payload_bytes)) return fail("payload size does not match its splits");
    return src;
  } catch (const std::exception& e) {
    return fail(std::string("corrupt header (") + e.what() + ")");
  }
}

void write_cache(const std::string& file, const std::string& key, const DataSource& source) {
  json h;
  h["key"] = key;
  h["name"] = source.name;
  h["format"] = source.format;
  h["root"] = source.root;
  h["path"] = source.path;
  h["class_names"] = source.class_names;
  h["coarse_class_names"] = source.coarse_class_names;
  std::vector<torch::Tensor> parts;
  size_t payload_bytes = 0;
  for (const char* name : kSplits) {
    const Dataset& d = std::string(name) == "train" ? source.train : source.test;
    h["splits"][name] = {{"count", d.size()},
                         {"shape", {d.images.size(1), d.images.size(2), d.images.size(3)}},
                         {"coarse", d.coarse_labels.defined()}};
    for (auto& t : split_tensors(d)) {
      payload_bytes += static_cast<size_t>(t.nbytes());
      parts.push_back(std::move(t));
    }
  }
  uint32_t crc = 0;
  for (const auto& t : parts) crc = crc32_of(static_cast<const uint8_t*>(t.data_ptr()), t.nbytes(), crc);
  h["payload_bytes"] = payload_bytes;
  h["payload_crc32"] = crc;
  const std::string header = h.dump();
  const auto header_len = static_cast<uint32_t>(header.size());

  const std::string tmp = file + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw DataError("cannot write cache file '" + tmp + "': " + std::strerror(errno));
  bool ok = write_all(fd, kMagic, sizeof kMagic) && write_all(fd, &kCacheVersion, sizeof kCacheVersion) &&
            write_all(fd, &header_len, sizeof header_len) && write_all(fd, header.data(), header.size());
  const std::string zeros(padded(16 + header.size()) - (16 + header.size()), '\0');
  ok = ok && write_all(fd, zeros.data(), zeros.size());
  for (const auto& t : parts) ok = ok && write_all(fd, t.data_ptr(), t.nbytes());
  const int err = errno;
  ok = ok && ::fsync(fd) == 0;
  ok = (::close(fd) == 0) && ok;
  if (!ok) {
    ::unlink(tmp.c_str());
    throw DataError("cannot write cache file '" + file + "': " + std::strerror(err != 0 ? err : errno));
  }
  if (::rename(tmp.c_str(), file.c_str()) != 0) {
    const int rename_err = errno;
    ::unlink(tmp.c_str());
    throw DataError("cannot write cache file '" + file + "': " + std::strerror(rename_err));
  }
}

}  // namespace liondg
