// Fuzzes the CIFAR-10 and CIFAR-100 binary readers (records of label byte(s) and
// 3072 pixel bytes, optionally gzip-compressed): liondg::parse_cifar10_binary and
// liondg::parse_cifar100_binary on the same input. Exceptions are the parsers'
// way of rejecting input; anything else is a bug.

#include <liondg/data/dataset.h>

#include <ATen/Parallel.h>
#include <torch/types.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <vector>

namespace {

constexpr char kWhat[] = "fuzz.bin";
constexpr int64_t kChannels = 3;
constexpr int64_t kSide = 32;

// Checks the shapes and label ranges a returned split promises.
void check_split(const liondg::Dataset& d, int64_t num_classes) {
  const int64_t n = d.size();
  if (n <= 0 || d.images.scalar_type() != torch::kUInt8) std::abort();
  if (d.images.sizes() != torch::IntArrayRef({n, kChannels, kSide, kSide})) std::abort();
  if (d.labels.min().item<int64_t>() < 0 || d.labels.max().item<int64_t>() >= num_classes) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);  // small tensors; no intra-op threads
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> bytes(data, data + size);
  try {
    check_split(liondg::parse_cifar10_binary(bytes, kWhat), 10);
  } catch (const std::exception&) {
  }
  try {
    const liondg::Dataset d = liondg::parse_cifar100_binary(bytes, kWhat);
    check_split(d, 100);
    if (d.coarse_labels.size(0) != d.size() || d.coarse_labels.max().item<int64_t>() >= 20) std::abort();
  } catch (const std::exception&) {
  }
  return 0;
}
