// Fetch: digests, the official file tables, and fetch_file against a file://
// mirror and a small HTTP/1.1 server on loopback (Range, 404, redirects,
// interrupted transfers). No torch and no internet.

#include <liondg/data/fetch.h>
#include <liondg/errors.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace liondg {
namespace {

constexpr size_t kPayloadBytes = (size_t{3} << 20) / 2 + 12345;  // 1.5 MiB + a bit: several curl buffers
constexpr int kPollMillis = 50;                                  // test server's stop-flag check interval
constexpr double kFailFastSeconds = 5.0;

// ------------------------------------------------------------------ helpers

/// A fresh directory under $TMPDIR (default /tmp), removed with its content.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/liondg-fetch-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed: " + std::string(std::strerror(errno)));
    path_ = tmpl;
  }
  ~TempDir() {
    ::nftw(
        path_.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); },
        /*nopenfd=*/16, FTW_DEPTH | FTW_PHYS);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string payload(size_t size, uint32_t seed = 1) {
  std::string out(size, '\0');
  uint32_t x = seed;
  for (auto& c : out) {
    x = x * 1664525u + 1013904223u;  // LCG: deterministic, not compressible by accident
    c = static_cast<char>(x >> 24);
  }
  return out;
}

void write_file(const std::string& path, const std::string& content) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(content.data(), static_cast<std::streamsize>(content.size()));
  ASSERT_TRUE(f.good()) << path;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

RemoteFile remote(const std::string& name, const std::string& content, int64_t size = -1) {
  return RemoteFile{"https://example.invalid/data/" + name, name, "md5", bytes_digest(content, "md5"), size};
}

FetchOptions quiet(const std::string& mirror, FetchStats* stats) {
  FetchOptions o;
  o.mirror = mirror;
  o.progress = false;
  o.stats = stats;
  return o;
}

// Runs `fn`, expecting DataError with every one of `needles` in its message.
template <typename Fn>
std::string expect_data_error(Fn fn, const std::vector<std::string>& needles) {
  try {
    fn();
  } catch (const DataError& e) {
    const std::string what = e.what();
    for (const auto& n : needles) EXPECT_NE(what.find(n), std::string::npos) << "missing '" << n << "' in: " << what;
    return what;
  }
  ADD_FAILURE() << "expected a DataError";
  return {};
}

/// Loopback servers must be reached directly, whatever proxy the environment sets.
class FetchEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    ::setenv("no_proxy", "127.0.0.1,localhost", /*overwrite=*/1);
    ::setenv("NO_PROXY", "127.0.0.1,localhost", /*overwrite=*/1);
  }
};
const auto* const kFetchEnvironment = ::testing::AddGlobalTestEnvironment(new FetchEnvironment);

// --------------------------------------------------------- tiny HTTP server

/// A single-threaded HTTP/1.1 server on 127.0.0.1 (port chosen by the kernel)
/// serving in-memory files with "Range: bytes=N-" support, one request per
/// connection. "/moved/NAME" redirects to "/NAME"; unknown paths get 404.
class TinyHttpServer {
 public:
  struct Request {
    std::string path;
    std::string range;  // value of the Range header ("" if none)
    int status = 0;
    int64_t body_bytes = 0;  // body bytes sent
  };

  explicit TinyHttpServer(std::map<std::string, std::string> files) : files_(std::move(files)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, /*protocol=*/0);
    if (listen_fd_ < 0) throw std::runtime_error("socket failed");
    const int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;  // the kernel picks a free port
    socklen_t len = sizeof addr;
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listen_fd_, /*backlog=*/8) != 0 ||
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ::close(listen_fd_);
      throw std::runtime_error("bind/listen failed: " + std::string(std::strerror(errno)));
    }
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~TinyHttpServer() {
    stop_ = true;
    thread_.join();
    ::close(listen_fd_);
  }

  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/"; }
  std::vector<Request> requests() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_;
  }

  std::atomic<bool> ignore_range{false};    // answer 200 with the whole file to a Range request
  std::atomic<int64_t> cut_after{-1};       // close the connection after this many body bytes (-1: never)

 private:
  void serve() {
    while (!stop_) {
      pollfd pfd{listen_fd_, POLLIN, /*revents=*/0};
      if (::poll(&pfd, /*nfds=*/1, kPollMillis) <= 0) continue;
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      handle(fd);
      ::close(fd);
    }
  }

  static bool send_all(int fd, const char* data, size_t size) {
    while (size > 0) {
      const ssize_t n = ::send(fd, data, size, MSG_NOSIGNAL);
      if (n <= 0) return false;
      data += n;
      size -= static_cast<size_t>(n);
    }
    return true;
  }

  void handle(int fd) {
    std::string head;
    char buf[4096];
    while (head.find("\r\n\r\n") == std::string::npos && head.size() < sizeof buf * 4) {
      const ssize_t n = ::recv(fd, buf, sizeof buf, /*flags=*/0);
      if (n <= 0) return;
      head.append(buf, static_cast<size_t>(n));
    }
    Request req;
    std::istringstream lines(head);
    std::string method, target, line;
    lines >> method >> target;
    std::getline(lines, line);
    while (std::getline(lines, line) && line != "\r") {
      std::string lowered = line;
      for (auto& c : lowered) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (lowered.rfind("range:", 0) == 0) {
        req.range = line.substr(line.find(':') + 1);
        req.range.erase(0, req.range.find_first_not_of(' '));
        if (!req.range.empty() && req.range.back() == '\r') req.range.pop_back();
      }
    }
    req.path = target;

    std::string header;
    std::string body;
    size_t body_begin = 0;
    const std::string name = target.substr(1);
    if (target.rfind("/moved/", 0) == 0) {
      req.status = 302;
      header = "HTTP/1.1 302 Found\r\nLocation: /" + target.substr(std::strlen("/moved/")) +
               "\r\nContent-Length: 0\r\n";
    } else if (files_.count(name) == 0) {
      req.status = 404;
      body = "not found\n";
      header = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: " +
               std::to_string(body.size()) + "\r\n";
    } else {
      const std::string& content = files_.at(name);
      int64_t from = -1;
      if (!req.range.empty() && !ignore_range && req.range.rfind("bytes=", 0) == 0) {
        from = std::stoll(req.range.substr(std::strlen("bytes=")));
      }
      const auto size = static_cast<int64_t>(content.size());
      if (from >= size) {
        req.status = 416;
        header = "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */" + std::to_string(size) +
                 "\r\nContent-Length: 0\r\n";
      } else if (from >= 0) {
        req.status = 206;
        body = content;
        body_begin = static_cast<size_t>(from);
        header = "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes " + std::to_string(from) + "-" +
                 std::to_string(size - 1) + "/" + std::to_string(size) +
                 "\r\nContent-Length: " + std::to_string(size - from) + "\r\n";
      } else {
        req.status = 200;
        body = content;
        header = "HTTP/1.1 200 OK\r\nAccept-Ranges: bytes\r\nContent-Length: " + std::to_string(size) + "\r\n";
      }
    }
    header += "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n";
    size_t to_send = body.size() - body_begin;
    if (cut_after >= 0 && req.status / 100 == 2) to_send = std::min(to_send, static_cast<size_t>(cut_after.load()));
    if (send_all(fd, header.data(), header.size()) && send_all(fd, body.data() + body_begin, to_send)) {
      req.body_bytes = static_cast<int64_t>(to_send);
    }
    ::shutdown(fd, SHUT_WR);
    std::lock_guard<std::mutex> lock(mutex_);
    requests_.push_back(req);
  }

  std::map<std::string, std::string> files_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable std::mutex mutex_;
  std::vector<Request> requests_;
};

// ------------------------------------------------------------------ digests

TEST(FetchDigest, KnownVectors) {
  EXPECT_EQ(bytes_digest("", "md5"), "d41d8cd98f00b204e9800998ecf8427e");
  EXPECT_EQ(bytes_digest("abc", "md5"), "900150983cd24fb0d6963f7d28e17f72");
  EXPECT_EQ(bytes_digest("The quick brown fox jumps over the lazy dog", "md5"), "9e107d9d372bb6826bd81d3542a419d6");
  EXPECT_EQ(bytes_digest("", "sha256"), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(bytes_digest("abc", "sha256"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(bytes_digest("abc", "SHA256"), bytes_digest("abc", "sha256"));
  EXPECT_EQ(bytes_digest("abc", "sha1"), "a9993e364706816aba3e25717850c26c9cd0d89d");
  const std::string abc = "abc";
  EXPECT_EQ(bytes_digest(reinterpret_cast<const uint8_t*>(abc.data()), abc.size(), "md5"),
            "900150983cd24fb0d6963f7d28e17f72");
}

TEST(FetchDigest, FileDigestStreamsAcrossChunks) {
  TempDir dir;
  const std::string big = payload((size_t{5} << 20) / 2 + 3);  // 2.5 MiB + 3: three chunks, the last partial
  write_file(dir.file("big"), big);
  write_file(dir.file("empty"), "");
  write_file(dir.file("abc"), "abc");
  for (const std::string algorithm : {"md5", "sha256"}) {
    EXPECT_EQ(file_digest(dir.file("big"), algorithm), bytes_digest(big, algorithm)) << algorithm;
    EXPECT_EQ(file_digest(dir.file("empty"), algorithm), bytes_digest("", algorithm)) << algorithm;
  }
  EXPECT_EQ(file_digest(dir.file("abc"), "md5"), "900150983cd24fb0d6963f7d28e17f72");
}

TEST(FetchDigest, ErrorsNameTheFileOrTheAlgorithm) {
  TempDir dir;
  expect_data_error([&] { file_digest(dir.file("missing.bin"), "md5"); }, {dir.file("missing.bin")});
  expect_data_error([&] { file_digest(dir.path(), "md5"); }, {dir.path()});  // a directory cannot be read
  write_file(dir.file("x"), "x");
  try {
    file_digest(dir.file("x"), "crc7");
    ADD_FAILURE() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("crc7"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("sha256"), std::string::npos);
  }
  EXPECT_THROW(bytes_digest("x", "md4x"), UsageError);
}

// ------------------------------------------------------------- file tables

TEST(FetchOfficial, MnistAndFashionMnistHaveFourFiles) {
  const auto mnist = official_files("mnist");
  ASSERT_EQ(mnist.size(), 4u);
  const std::vector<std::string> names{"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"};
  const std::vector<std::string> mnist_md5{"f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                           "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"};
  for (size_t i = 0; i < mnist.size(); ++i) {
    EXPECT_EQ(mnist[i].file_name, names[i]);
    EXPECT_EQ(mnist[i].url, "https://ossci-datasets.s3.amazonaws.com/mnist/" + names[i]);
    EXPECT_EQ(mnist[i].algorithm, "md5");
    EXPECT_EQ(mnist[i].digest, mnist_md5[i]);
    EXPECT_GT(mnist[i].size, 0);
  }
  const auto fashion = official_files("fashion-mnist", "idx");
  ASSERT_EQ(fashion.size(), 4u);
  const std::vector<std::string> fashion_md5{"8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                             "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"};
  for (size_t i = 0; i < fashion.size(); ++i) {
    EXPECT_EQ(fashion[i].file_name, names[i]);
    EXPECT_EQ(fashion[i].url, "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/" + names[i]);
    EXPECT_EQ(fashion[i].digest, fashion_md5[i]);
  }
}

TEST(FetchOfficial, CifarBinaryByDefaultAndPythonOnRequest) {
  const auto c10 = official_files("cifar10");
  ASSERT_EQ(c10.size(), 1u);
  EXPECT_EQ(c10[0].url, "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz");
  EXPECT_EQ(c10[0].file_name, "cifar-10-binary.tar.gz");
  EXPECT_EQ(c10[0].digest, "c32a1d4ab5d03f1284b67883e8d87530");
  EXPECT_EQ(official_files("cifar100").at(0).digest, "03b5dce01913d631647c71ecec9e9cb8");
  EXPECT_EQ(official_files("cifar100").at(0).file_name, "cifar-100-binary.tar.gz");
  EXPECT_EQ(official_files("cifar10", "python").at(0).digest, "c58f30108f718f92721af3b95e74349a");
  EXPECT_EQ(official_files("cifar10", "python").at(0).file_name, "cifar-10-python.tar.gz");
  EXPECT_EQ(official_files("cifar100", "python").at(0).digest, "eb9058c3a382ffc7106e4002c42a8d85");
  for (const auto& name : fetchable_datasets()) {
    for (const auto& f : official_files(name)) {
      EXPECT_EQ(f.digest.size(), 32u) << f.file_name;
      EXPECT_EQ(f.digest.find_first_not_of("0123456789abcdef"), std::string::npos) << f.file_name;
    }
  }
}

TEST(FetchOfficial, UnknownNamesAndFormatsAreUsageErrors) {
  try {
    official_files("imagenet");
    ADD_FAILURE() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("imagenet"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("cifar10, cifar100, fashion-mnist, mnist"), std::string::npos) << e.what();
  }
  EXPECT_THROW(official_files("cifar10", "matlab"), UsageError);
  EXPECT_THROW(official_files("mnist", "python"), UsageError);
}

TEST(FetchOfficial, MirrorReplacesTheDirectory) {
  const RemoteFile f{"https://host/a/b/file.gz", "file.gz", "md5", "00", -1};
  EXPECT_EQ(mirror_url(f, ""), "https://host/a/b/file.gz");
  EXPECT_EQ(mirror_url(f, "http://127.0.0.1:8000/"), "http://127.0.0.1:8000/file.gz");
  EXPECT_EQ(mirror_url(f, "http://127.0.0.1:8000/x"), "http://127.0.0.1:8000/x/file.gz");
  EXPECT_EQ(mirror_url(f, "file:///tmp/mirror/"), "file:///tmp/mirror/file.gz");
  EXPECT_EQ(mirror_url(f, "/tmp/mirror"), "file:///tmp/mirror/file.gz");
}

// ------------------------------------------------------- file:// transfers

TEST(FetchFile, CopiesFromFileMirrorAndVerifies) {
  TempDir mirror, out;
  const std::string content = payload(kPayloadBytes);
  write_file(mirror.file("data.bin"), content);
  FetchStats stats;
  const std::string target = out.path() + "/new/sub";  // created on demand
  const std::string path = fetch_file(remote("data.bin", content), target, quiet("file://" + mirror.path(), &stats));
  EXPECT_EQ(path, target + "/data.bin");
  EXPECT_EQ(read_file(path), content);
  EXPECT_FALSE(exists(path + ".part"));
  EXPECT_FALSE(stats.reused);
  EXPECT_EQ(stats.transfers, 1);
  EXPECT_EQ(stats.resumed_from, 0);
  EXPECT_EQ(stats.bytes_received, static_cast<int64_t>(content.size()));
}

TEST(FetchFile, CompleteFileWithMatchingChecksumIsKept) {
  TempDir mirror, out;
  const std::string content = payload(kPayloadBytes);
  write_file(out.file("data.bin"), content);
  FetchStats stats;
  // The mirror does not even have the file: nothing may be downloaded.
  EXPECT_EQ(fetch_file(remote("data.bin", content), out.path(), quiet("file://" + mirror.path(), &stats)),
            out.file("data.bin"));
  EXPECT_TRUE(stats.reused);
  EXPECT_EQ(stats.transfers, 0);
  EXPECT_EQ(stats.bytes_received, 0);
}

TEST(FetchFile, CorruptExistingFileIsReplaced) {
  TempDir mirror, out;
  const std::string content = payload(kPayloadBytes);
  write_file(mirror.file("data.bin"), content);
  write_file(out.file("data.bin"), "not the data");
  FetchStats stats;
  fetch_file(remote("data.bin", content), out.path(), quiet("file://" + mirror.path(), &stats));
  EXPECT_FALSE(stats.reused);
  EXPECT_EQ(read_file(out.file("data.bin")), content);
}

TEST(FetchFile, ResumesAPartialPartFile) {
  TempDir mirror, out;
  const std::string content = payload(kPayloadBytes);
  const size_t half = content.size() / 2;
  write_file(mirror.file("data.bin"), content);
  write_file(out.file("data.bin.part"), content.substr(0, half));
  FetchStats stats;
  fetch_file(remote("data.bin", content), out.path(), quiet("file://" + mirror.path(), &stats));
  EXPECT_EQ(read_file(out.file("data.bin")), content);
  EXPECT_FALSE(exists(out.file("data.bin.part")));
  EXPECT_EQ(stats.resumed_from, static_cast<int64_t>(half));
  EXPECT_EQ(stats.bytes_received, static_cast<int64_t>(content.size() - half));  // only the rest was read
  EXPECT_FALSE(stats.restarted);
}

TEST(FetchFile, CorruptPartIsDownloadedAgainFromZero) {
  TempDir mirror, out;
  const std::string content = payload(kPayloadBytes);
  const size_t half = content.size() / 2;
  write_file(mirror.file("data.bin"), content);
  std::string bad = content.substr(0, half);
  bad[half / 2] ^= 0x5a;
  write_file(out.file("data.bin.part"), bad);
  FetchStats stats;
  fetch_file(remote("data.bin", content), out.path(), quiet("file://" + mirror.path(), &stats));
  EXPECT_EQ(read_file(out.file("data.bin")), content);
  EXPECT_TRUE(stats.restarted);
  EXPECT_EQ(stats.transfers, 2);
  EXPECT_EQ(stats.resumed_from, 0);
  EXPECT_EQ(stats.bytes_received, static_cast<int64_t>(content.size() - half + content.size()));
}

TEST(FetchFile, PartLongerThanTheKnownSizeStartsOver) {
  TempDir mirror, out;
  const std::string content = payload(kPayloadBytes);
  write_file(mirror.file("data.bin"), content);
  write_file(out.file("data.bin.part"), content + "trailing garbage");
  FetchStats stats;
  fetch_file(remote("data.bin", content, static_cast<int64_t>(content.size())), out.path(),
             quiet("file://" + mirror.path(), &stats));
  EXPECT_EQ(read_file(out.file("data.bin")), content);
  EXPECT_EQ(stats.transfers, 1);
  EXPECT_EQ(stats.resumed_from, 0);
}

TEST(FetchFile, WrongChecksumKeepsNothing) {
  TempDir mirror, out;
  const std::string content = payload(kPayloadBytes);
  write_file(mirror.file("data.bin"), content);
  RemoteFile file = remote("data.bin", content);
  const std::string found = file.digest;
  file.digest = bytes_digest("something else", "md5");
  expect_data_error([&] { fetch_file(file, out.path(), quiet("file://" + mirror.path(), nullptr)); },
                    {"checksum mismatch", "data.bin", "expected md5 " + file.digest, "found " + found});
  EXPECT_FALSE(exists(out.file("data.bin")));
  EXPECT_FALSE(exists(out.file("data.bin.part")));
}

TEST(FetchFile, WrongChecksumAfterResumeRetriesOnceThenKeepsNothing) {
  TempDir mirror, out;
  const std::string content = payload(kPayloadBytes);
  write_file(mirror.file("data.bin"), content);
  write_file(out.file("data.bin.part"), content.substr(0, /*n=*/1000));
  RemoteFile file = remote("data.bin", content);
  file.digest = bytes_digest("something else", "md5");
  FetchStats stats;
  expect_data_error([&] { fetch_file(file, out.path(), quiet("file://" + mirror.path(), &stats)); },
                    {"checksum mismatch"});
  EXPECT_EQ(stats.transfers, 2);
  EXPECT_FALSE(exists(out.file("data.bin")));
  EXPECT_FALSE(exists(out.file("data.bin.part")));
}

TEST(FetchFile, MissingFileOnMirrorNamesTheUrl) {
  TempDir mirror, out;
  const std::string content = payload(/*size=*/100);
  expect_data_error(
      [&] { fetch_file(remote("absent.bin", content), out.path(), quiet("file://" + mirror.path(), nullptr)); },
      {"file://" + mirror.path() + "/absent.bin", "copy it to " + out.file("absent.bin")});
  EXPECT_FALSE(exists(out.file("absent.bin")));
  EXPECT_FALSE(exists(out.file("absent.bin.part")));
}

TEST(FetchFile, UnreachableMirrorFailsFastWithManualInstructions) {
  TempDir out;
  const std::string content = payload(/*size=*/100);
  const RemoteFile file = remote("data.bin", content);
  const auto start = std::chrono::steady_clock::now();
  const std::string what = expect_data_error(
      [&] { fetch_file(file, out.path(), quiet("http://127.0.0.1:1/", nullptr)); },
      {"http://127.0.0.1:1/data.bin",
       "download " + file.url + " on a machine with internet and copy it to " + out.file("data.bin"),
       "or pass --data PATH pointing at the files", file.digest});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, kFailFastSeconds) << what;
  EXPECT_FALSE(exists(out.file("data.bin.part")));
}

TEST(FetchFile, UncreatableDirectoryIsADataError) {
  TempDir out;
  write_file(out.file("plain"), "x");
  const std::string content = payload(/*size=*/10);
  expect_data_error([&] { fetch_file(remote("d.bin", content), out.file("plain/sub"), quiet("", nullptr)); },
                    {out.file("plain/sub")});
}

TEST(FetchFile, ConcurrentDownloadOfTheSameFileIsRefused) {
  TempDir mirror, out;
  const std::string content = payload(/*size=*/1000);
  write_file(mirror.file("data.bin"), content);
  const int fd = ::open(out.file("data.bin.part").c_str(), O_WRONLY | O_CREAT, /*mode=*/0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX), 0);  // "another process" is downloading
  expect_data_error(
      [&] { fetch_file(remote("data.bin", content), out.path(), quiet("file://" + mirror.path(), nullptr)); },
      {"another process", out.file("data.bin.part")});
  ::close(fd);
  fetch_file(remote("data.bin", content), out.path(), quiet("file://" + mirror.path(), nullptr));
  EXPECT_EQ(read_file(out.file("data.bin")), content);
}

// ----------------------------------------------------------- HTTP transfers

TEST(FetchHttp, DownloadsOverHttp) {
  const std::string content = payload(kPayloadBytes, /*seed=*/7);
  TinyHttpServer server({{"data.bin", content}});
  TempDir out;
  FetchStats stats;
  fetch_file(remote("data.bin", content), out.path(), quiet(server.base_url(), &stats));
  EXPECT_EQ(read_file(out.file("data.bin")), content);
  const auto requests = server.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].path, "/data.bin");
  EXPECT_EQ(requests[0].range, "");
  EXPECT_EQ(requests[0].status, 200);
  EXPECT_EQ(stats.bytes_received, static_cast<int64_t>(content.size()));
}

TEST(FetchHttp, ResumesWithARangeRequest) {
  const std::string content = payload(kPayloadBytes, /*seed=*/8);
  TinyHttpServer server({{"data.bin", content}});
  TempDir out;
  const size_t half = content.size() / 2;
  write_file(out.file("data.bin.part"), content.substr(0, half));
  FetchStats stats;
  fetch_file(remote("data.bin", content), out.path(), quiet(server.base_url(), &stats));
  EXPECT_EQ(read_file(out.file("data.bin")), content);
  const auto requests = server.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].range, "bytes=" + std::to_string(half) + "-");
  EXPECT_EQ(requests[0].status, 206);
  EXPECT_EQ(requests[0].body_bytes, static_cast<int64_t>(content.size() - half));
  EXPECT_EQ(stats.resumed_from, static_cast<int64_t>(half));
  EXPECT_EQ(stats.bytes_received, static_cast<int64_t>(content.size() - half));
}

TEST(FetchHttp, ServerIgnoringTheRangeRestartsFromZero) {
  const std::string content = payload(kPayloadBytes, /*seed=*/9);
  TinyHttpServer server({{"data.bin", content}});
  server.ignore_range = true;
  TempDir out;
  write_file(out.file("data.bin.part"), content.substr(0, content.size() / 3));
  FetchStats stats;
  fetch_file(remote("data.bin", content), out.path(), quiet(server.base_url(), &stats));
  EXPECT_EQ(read_file(out.file("data.bin")), content);
  EXPECT_TRUE(stats.restarted);
  EXPECT_EQ(stats.resumed_from, 0);
  const auto requests = server.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_FALSE(requests[0].range.empty());
  EXPECT_TRUE(requests[1].range.empty());
}

TEST(FetchHttp, InterruptedTransferKeepsThePartAndTheNextCallResumes) {
  const std::string content = payload(kPayloadBytes, /*seed=*/10);
  TinyHttpServer server({{"data.bin", content}});
  const int64_t third = static_cast<int64_t>(content.size() / 3);
  server.cut_after = third;
  TempDir out;
  const RemoteFile file = remote("data.bin", content);
  expect_data_error([&] { fetch_file(file, out.path(), quiet(server.base_url(), nullptr)); },
                    {server.base_url() + "data.bin", "partial download is kept", "copy it to"});
  EXPECT_FALSE(exists(out.file("data.bin")));
  ASSERT_EQ(read_file(out.file("data.bin.part")), content.substr(0, static_cast<size_t>(third)));

  server.cut_after = -1;
  FetchStats stats;
  fetch_file(file, out.path(), quiet(server.base_url(), &stats));
  EXPECT_EQ(read_file(out.file("data.bin")), content);
  EXPECT_EQ(stats.resumed_from, third);
  EXPECT_EQ(stats.bytes_received, static_cast<int64_t>(content.size()) - third);
  EXPECT_FALSE(exists(out.file("data.bin.part")));
}

TEST(FetchHttp, CompletePartIsAcceptedWhenTheServerAnswers416) {
  const std::string content = payload(kPayloadBytes, /*seed=*/11);
  TinyHttpServer server({{"data.bin", content}});
  TempDir out;
  write_file(out.file("data.bin.part"), content);  // size unknown (-1): curl asks for the rest
  FetchStats stats;
  fetch_file(remote("data.bin", content), out.path(), quiet(server.base_url(), &stats));
  EXPECT_EQ(read_file(out.file("data.bin")), content);
  const auto requests = server.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].status, 416);
  EXPECT_EQ(stats.bytes_received, 0);
}

TEST(FetchHttp, OverlongPartWithUnknownSizeGets416AndStartsOver) {
  const std::string content = payload(kPayloadBytes, /*seed=*/14);
  TinyHttpServer server({{"data.bin", content}});
  TempDir out;
  write_file(out.file("data.bin.part"), content + "trailing garbage");
  FetchStats stats;
  fetch_file(remote("data.bin", content), out.path(), quiet(server.base_url(), &stats));
  EXPECT_EQ(read_file(out.file("data.bin")), content);
  EXPECT_TRUE(stats.restarted);
  const auto requests = server.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].status, 416);
  EXPECT_EQ(requests[1].status, 200);
}

TEST(FetchHttp, NotFoundIsAnError) {
  TinyHttpServer server({});
  TempDir out;
  const std::string content = payload(/*size=*/100);
  expect_data_error([&] { fetch_file(remote("data.bin", content), out.path(), quiet(server.base_url(), nullptr)); },
                    {server.base_url() + "data.bin", "404", "--data PATH"});
  EXPECT_FALSE(exists(out.file("data.bin")));
  EXPECT_FALSE(exists(out.file("data.bin.part")));
}

TEST(FetchHttp, FollowsRedirects) {
  const std::string content = payload(kPayloadBytes, /*seed=*/12);
  TinyHttpServer server({{"data.bin", content}});
  TempDir out;
  fetch_file(remote("data.bin", content), out.path(), quiet(server.base_url() + "moved/", nullptr));
  EXPECT_EQ(read_file(out.file("data.bin")), content);
  const auto requests = server.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].status, 302);
  EXPECT_EQ(requests[1].path, "/data.bin");
}

TEST(FetchHttp, ProgressIsAFewPlainLinesWhenNotATerminal) {
  const std::string content = payload(kPayloadBytes, /*seed=*/13);
  TinyHttpServer server({{"data.bin", content}});
  TempDir out;
  std::FILE* log = std::tmpfile();
  ASSERT_NE(log, nullptr);
  FetchOptions options = quiet(server.base_url(), nullptr);
  options.progress = true;
  options.progress_out = log;
  fetch_file(remote("data.bin", content, static_cast<int64_t>(content.size())), out.path(), options);
  std::rewind(log);
  std::string text;
  char buf[512];
  while (std::fgets(buf, sizeof buf, log) != nullptr) text += buf;
  std::fclose(log);
  EXPECT_EQ(text.find('\r'), std::string::npos) << text;
  EXPECT_NE(text.find("fetching " + server.base_url() + "data.bin"), std::string::npos) << text;
  EXPECT_NE(text.find("100%"), std::string::npos) << text;
  EXPECT_NE(text.find("/1.6 MB"), std::string::npos) << text;
  EXPECT_NE(text.find("MB/s"), std::string::npos) << text;
  EXPECT_NE(text.find("md5 ok"), std::string::npos) << text;
  EXPECT_LE(std::count(text.begin(), text.end(), '\n'), 8) << text;
}

}  // namespace
}  // namespace liondg
