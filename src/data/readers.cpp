// File readers: IDX (MNIST, Fashion-MNIST), CIFAR-10/100 binary, synthetic data.

#include <liondg/data/dataset.h>
#include <liondg/errors.h>
#include <liondg/util/fs.h>

#include "names.h"

#include <ATen/CPUGeneratorImpl.h>
#include <zlib.h>

#include <cstring>
#include <fstream>
#include <sstream>

namespace liondg {
namespace {

constexpr int64_t kCifarImageBytes = 3 * 32 * 32;
constexpr uint8_t kIdxUnsignedByte = 0x08;

bool file_exists(const std::string& path) { return is_regular_file(path); }

// Whole file contents; gzip-compressed files are decompressed transparently
// (zlib's gz* functions read plain files as they are).
std::vector<uint8_t> read_all(const std::string& path) {
  if (!file_exists(path)) throw DataError("cannot open '" + path + "': no such file");
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) throw DataError("cannot open '" + path + "': " + std::strerror(errno));
  std::vector<uint8_t> out;
  std::vector<uint8_t> chunk(1 << 20);
  while (true) {
    const int n = gzread(f, chunk.data(), static_cast<unsigned>(chunk.size()));
    if (n < 0) {
      int code = 0;
      std::string msg = gzerror(f, &code);
      gzclose(f);
      throw DataError("cannot read '" + path + "': corrupt or truncated compressed data (" + msg + ")");
    }
    if (n == 0) break;
    out.insert(out.end(), chunk.begin(), chunk.begin() + n);
  }
  // A gzip stream that ends early is reported by gzclose as Z_BUF_ERROR.
  const int rc = gzclose(f);
  if (rc != Z_OK) throw DataError("cannot read '" + path + "': truncated compressed data (gzip stream ends early)");
  return out;
}

}  // namespace

std::vector<uint8_t> maybe_gunzip(std::vector<uint8_t> bytes, const std::string& what) {
  if (bytes.size() < 2 || bytes[0] != 0x1f || bytes[1] != 0x8b) return bytes;
  z_stream z{};
  if (inflateInit2(&z, /*windowBits=*/15 + 32) != Z_OK) throw DataError("'" + what + "': cannot initialize zlib");
  std::vector<uint8_t> out;
  std::vector<uint8_t> chunk(1 << 20);
  z.next_in = bytes.data();
  z.avail_in = static_cast<uInt>(bytes.size());
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    z.next_out = chunk.data();
    z.avail_out = static_cast<uInt>(chunk.size());
    rc = inflate(&z, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      inflateEnd(&z);
      throw DataError("'" + what + "': " + (rc == Z_BUF_ERROR ? "truncated compressed data (gzip stream ends early)"
                                                              : "corrupt compressed data"));
    }
    out.insert(out.end(), chunk.begin(), chunk.begin() + (chunk.size() - z.avail_out));
    if (out.size() > (size_t{1} << 36)) {
      inflateEnd(&z);
      throw DataError("'" + what + "': decompressed data exceeds 64 GiB");
    }
  }
  inflateEnd(&z);
  return out;
}

namespace {

torch::Tensor bytes_to_tensor(const uint8_t* data, std::vector<int64_t> shape) {
  return torch::from_blob(const_cast<uint8_t*>(data), shape, torch::kUInt8).clone();
}

void check_labels(const torch::Tensor& labels, int64_t num_classes, const std::string& path) {
  if (labels.numel() == 0) return;
  const int64_t max_label = labels.max().item<int64_t>();
  if (max_label >= num_classes) {
    throw DataError("'" + path + "': label " + std::to_string(max_label) + " out of range; expected labels in [0, " +
                    std::to_string(num_classes) + ")");
  }
}

}  // namespace

std::vector<std::string> numbered_names(int64_t n) {
  std::vector<std::string> names;
  for (int64_t i = 0; i < n; ++i) names.push_back(std::to_string(i));
  return names;
}

// ------------------------------------------------------------------ IDX

torch::Tensor read_idx(const std::string& path) { return parse_idx(read_all(path), path); }

torch::Tensor parse_idx(const std::vector<uint8_t>& raw, const std::string& path) {
  const std::vector<uint8_t> bytes = maybe_gunzip(raw, path);
  if (bytes.size() < 4) throw DataError("'" + path + "' is not an IDX file: shorter than its 4-byte header");
  if (bytes[0] != 0 || bytes[1] != 0) {
    std::ostringstream msg;
    msg << "'" << path << "' is not an IDX file: bad magic number (first bytes 0x" << std::hex << int(bytes[0])
        << " 0x" << int(bytes[1]) << ", expected 0x0 0x0)";
    throw DataError(msg.str());
  }
  if (bytes[2] != kIdxUnsignedByte) {
    throw DataError("'" + path + "': unsupported IDX data type 0x" + std::to_string(bytes[2]) +
                    "; expected 0x08 (unsigned byte)");
  }
  const int ndims = bytes[3];
  if (ndims < 1 || ndims > 4) {
    throw DataError("'" + path + "': IDX header declares " + std::to_string(ndims) + " dimensions; expected 1 to 4");
  }
  const size_t header = 4 + 4 * static_cast<size_t>(ndims);
  if (bytes.size() < header) throw DataError("'" + path + "': truncated IDX header");
  std::vector<int64_t> shape;
  constexpr int64_t kMaxElements = int64_t{1} << 36;
  int64_t item = 1;  // elements per item: product of dims 1..n-1, each bounded before it grows
  for (int d = 0; d < ndims; ++d) {
    const uint8_t* p = bytes.data() + 4 + 4 * d;
    const int64_t dim = (int64_t(p[0]) << 24) | (int64_t(p[1]) << 16) | (int64_t(p[2]) << 8) | int64_t(p[3]);
    if (dim == 0 && d > 0) {
      throw DataError("'" + path + "': IDX dimension " + std::to_string(d) + " is 0; every item must hold data");
    }
    shape.push_back(dim);
    if (d > 0) {
      if (item > kMaxElements / dim) throw DataError("'" + path + "': IDX dimensions are implausibly large");
      item *= dim;
    }
  }
  if (shape[0] > kMaxElements / item) throw DataError("'" + path + "': IDX dimensions are implausibly large");
  const int64_t count = shape[0] * item;
  const int64_t payload = static_cast<int64_t>(bytes.size() - header);
  if (payload != count) {
    throw DataError("'" + path + "': " + (payload < count ? "truncated" : "oversized") + " IDX file: header declares " +
                    std::to_string(count) + " data bytes, file holds " + std::to_string(payload));
  }
  return bytes_to_tensor(bytes.data() + header, shape);
}

Dataset read_idx_split(const std::string& images_path, const std::string& labels_path, int64_t num_classes) {
  torch::Tensor images = read_idx(images_path);
  torch::Tensor labels = read_idx(labels_path);
  if (images.dim() != 3) {
    throw DataError("'" + images_path + "': expected an IDX image file with 3 dimensions (N,H,W), found " +
                    std::to_string(images.dim()));
  }
  if (labels.dim() != 1) {
    throw DataError("'" + labels_path + "': expected an IDX label file with 1 dimension, found " +
                    std::to_string(labels.dim()));
  }
  if (images.size(0) != labels.size(0)) {
    throw DataError("'" + images_path + "' holds " + std::to_string(images.size(0)) + " images but '" + labels_path +
                    "' holds " + std::to_string(labels.size(0)) + " labels");
  }
  Dataset d;
  d.images = images.unsqueeze(1).contiguous();
  d.labels = labels.to(torch::kInt64);
  check_labels(d.labels, num_classes, labels_path);
  return d;
}

// ------------------------------------------------------------------ CIFAR

Dataset parse_cifar10_binary(const std::vector<uint8_t>& raw_bytes, const std::string& path) {
  constexpr int64_t kRecord = 1 + kCifarImageBytes;
  const std::vector<uint8_t> bytes = maybe_gunzip(raw_bytes, path);
  if (bytes.empty() || bytes.size() % kRecord != 0) {
    throw DataError("'" + path + "': not a CIFAR-10 binary batch: size " + std::to_string(bytes.size()) +
                    " bytes is not a positive multiple of the " + std::to_string(kRecord) + "-byte record");
  }
  const int64_t n = static_cast<int64_t>(bytes.size()) / kRecord;
  torch::Tensor raw = bytes_to_tensor(bytes.data(), {n, kRecord});
  Dataset d;
  d.labels = raw.select(1, 0).to(torch::kInt64);
  d.images = raw.narrow(1, 1, kCifarImageBytes).reshape({n, 3, 32, 32}).contiguous();
  check_labels(d.labels, 10, path);
  return d;
}

Dataset read_cifar10_binary(const std::vector<std::string>& files) {
  std::vector<torch::Tensor> images, labels;
  for (const auto& path : files) {
    Dataset part = parse_cifar10_binary(read_all(path), path);
    images.push_back(part.images);
    labels.push_back(part.labels);
  }
  Dataset d;
  d.images = torch::cat(images, 0).contiguous();
  d.labels = torch::cat(labels, 0);
  return d;
}

Dataset read_cifar100_binary(const std::string& path) { return parse_cifar100_binary(read_all(path), path); }

Dataset parse_cifar100_binary(const std::vector<uint8_t>& raw_bytes, const std::string& path) {
  constexpr int64_t kRecord = 2 + kCifarImageBytes;
  const std::vector<uint8_t> bytes = maybe_gunzip(raw_bytes, path);
  if (bytes.empty() || bytes.size() % kRecord != 0) {
    throw DataError("'" + path + "': not a CIFAR-100 binary file: size " + std::to_string(bytes.size()) +
                    " bytes is not a positive multiple of the " + std::to_string(kRecord) + "-byte record");
  }
  const int64_t n = static_cast<int64_t>(bytes.size()) / kRecord;
  torch::Tensor raw = bytes_to_tensor(bytes.data(), {n, kRecord});
  Dataset d;
  d.coarse_labels = raw.select(1, 0).to(torch::kInt64);
  d.labels = raw.select(1, 1).to(torch::kInt64);
  d.images = raw.narrow(1, 2, kCifarImageBytes).reshape({n, 3, 32, 32}).contiguous();
  check_labels(d.coarse_labels, 20, path);
  check_labels(d.labels, 100, path);
  return d;
}

// ------------------------------------------------------------------ synthetic

DataSource make_synthetic(const SyntheticOptions& o) {
  TORCH_CHECK_VALUE(o.num_classes >= 2, "synthetic: num_classes must be >= 2, got ", o.num_classes);
  TORCH_CHECK_VALUE(o.channels > 0 && o.height >= 4 && o.width >= 4, "synthetic: bad image shape (", o.channels, ",",
                    o.height, ",", o.width, ")");
  TORCH_CHECK_VALUE(o.train_size >= o.num_classes && o.test_size >= o.num_classes,
                    "synthetic: train_size and test_size must be >= num_classes");
  auto gen = at::detail::createCPUGenerator(o.seed);
  // One smooth pattern per class: coarse 4x4 noise upsampled to (H,W).
  torch::Tensor coarse = at::randn({o.num_classes, o.channels, 4, 4}, gen);
  torch::Tensor templates = torch::upsample_bilinear2d(coarse, {o.height, o.width}, /*align_corners=*/false);
  templates = 128.0 + 50.0 * templates;  // (K,C,H,W) in pixel units
  auto make_split = [&](int64_t n) {
    Dataset d;
    d.labels = torch::arange(n, torch::kInt64).remainder(o.num_classes);
    torch::Tensor noise = at::randn({n, o.channels, o.height, o.width}, gen) * o.noise;
    d.images = (templates.index_select(0, d.labels) + noise).round().clamp(0, 255).to(torch::kUInt8).contiguous();
    return d;
  };
  DataSource src;
  src.name = "synthetic";
  src.format = "synthetic";
  src.class_names = numbered_names(o.num_classes);
  src.train = make_split(o.train_size);
  src.test = make_split(o.test_size);
  return src;
}

}  // namespace liondg
