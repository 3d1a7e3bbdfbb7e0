// Fuzzes the IDX reader (MNIST / Fashion-MNIST files): liondg::parse_idx on the
// bytes in memory (which runs maybe_gunzip first), liondg::maybe_gunzip on its
// own, and liondg::read_idx on the same bytes as a file (zlib's gz* path).
// Exceptions are the parsers' way of rejecting input; anything else is a bug.

#include <liondg/data/dataset.h>

#include <ATen/Parallel.h>
#include <torch/types.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <vector>

#include "fuzz_input_file.h"

namespace {

constexpr char kWhat[] = "fuzz.idx";
constexpr uint8_t kIdxUnsignedByte = 0x08;

// Checks what parse_idx promises for a tensor it returns.
void check_idx(const torch::Tensor& t, const std::vector<uint8_t>& plain) {
  if (t.scalar_type() != torch::kUInt8 || t.dim() < 1 || t.dim() > 4) std::abort();
  const size_t header = 4 + 4 * static_cast<size_t>(t.dim());
  if (plain.size() < header || static_cast<size_t>(t.numel()) != plain.size() - header) std::abort();
  if (plain[2] != kIdxUnsignedByte || plain[3] != t.dim()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);  // small tensors; no intra-op threads
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static liondg_fuzz::InputFile file;
  const std::vector<uint8_t> bytes(data, data + size);
  std::vector<uint8_t> plain;
  bool plain_ok = false;
  try {
    plain = liondg::maybe_gunzip(bytes, kWhat);
    plain_ok = true;
  } catch (const std::exception&) {
  }
  try {
    const torch::Tensor t = liondg::parse_idx(bytes, kWhat);
    if (!plain_ok) std::abort();  // parse_idx accepted what maybe_gunzip rejects
    check_idx(t, plain);
  } catch (const std::exception&) {
  }
  try {
    liondg::read_idx(file.write(data, size));
  } catch (const std::exception&) {
  }
  return 0;
}
