// Fuzzes the decoded-data cache reader: liondg::read_cache on the input as a cache
// file (magic, version, JSON header, payload with CRC-32), with a fixed key that
// the seed corpus uses. Inputs come in two forms:
//  - a whole cache file (it starts with the magic "LIONDGDC"): read as it is;
//  - a template "HEADER\0PAYLOAD": the target writes the file around it (magic,
//    version, header length, padding) and replaces "@SIZE@" and "@CRC@" in the
//    header by the payload's size and CRC-32, so that mutations get past the
//    size and checksum checks to the split parsing behind them.
// read_cache reports rejected files through nullopt and `why`. Like every target,
// an exception counts as a rejection; but read_cache promises nullopt for anything
// that does not validate (the loader then rebuilds the cache), so with
// LIONDG_FUZZ_STRICT=1 in the environment an exception escaping it is reported as
// a finding too. Anything else is a bug.

#include <liondg/data/cache.h>

#include <ATen/Parallel.h>
#include <torch/types.h>
#include <zlib.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "fuzz_input_file.h"

namespace {

// The key of the seed cache file written by make_cache_seed.
constexpr char kKey[] = "liondg-fuzz-cache-key";
constexpr char kStrictEnv[] = "LIONDG_FUZZ_STRICT";
constexpr char kMagic[] = "LIONDGDC";
constexpr size_t kMagicBytes = 8;
constexpr uint32_t kVersion = 1;  // liondg::kCacheVersion
constexpr size_t kAlign = 64;
constexpr char kSizePlaceholder[] = "@SIZE@";
constexpr char kCrcPlaceholder[] = "@CRC@";

bool strict = false;

// Checks a split read_cache returned, and uses its tensors as the loader's callers
// would (a copy is enough to touch their sizes and strides).
void check_split(const liondg::Dataset& d) {
  if (!d.labels.defined()) std::abort();
  const int64_t n = d.size();
  if (d.images.dim() != 4 || d.images.size(0) != n || d.images.scalar_type() != torch::kUInt8) std::abort();
  if (d.labels.scalar_type() != torch::kInt64) std::abort();
  if (d.coarse_labels.defined() && d.coarse_labels.size(0) != n) std::abort();
  if (d.images.clone().numel() != d.images.numel() || d.labels.clone().numel() != n) std::abort();
}

void replace_all(std::string& text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
}

void append_u32(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));  // little-endian
}

// The cache file a template input stands for (see the top of this file).
std::vector<uint8_t> file_from_template(const uint8_t* data, size_t size) {
  const auto* end = data + size;
  const auto* nul = std::find(data, end, uint8_t{0});
  std::string header(reinterpret_cast<const char*>(data), static_cast<size_t>(nul - data));
  const uint8_t* payload = nul == end ? end : nul + 1;
  const auto payload_size = static_cast<size_t>(end - payload);
  const uLong crc = crc32_z(crc32_z(0L, Z_NULL, 0), payload, payload_size);
  replace_all(header, kSizePlaceholder, std::to_string(payload_size));
  replace_all(header, kCrcPlaceholder, std::to_string(crc));
  std::vector<uint8_t> file(kMagic, kMagic + kMagicBytes);
  append_u32(file, kVersion);
  append_u32(file, static_cast<uint32_t>(header.size()));
  file.insert(file.end(), header.begin(), header.end());
  file.resize((file.size() + kAlign - 1) / kAlign * kAlign, 0);
  file.insert(file.end(), payload, end);
  return file;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);  // small tensors; no intra-op threads
  strict = liondg_fuzz::env_flag(kStrictEnv);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static liondg_fuzz::InputFile file;
  std::string why;
  const bool whole_file = size >= kMagicBytes && std::memcmp(data, kMagic, kMagicBytes) == 0;
  const std::vector<uint8_t> built = whole_file ? std::vector<uint8_t>() : file_from_template(data, size);
  const std::string& path = whole_file ? file.write(data, size) : file.write(built.data(), built.size());
  std::optional<liondg::DataSource> source;
  try {
    source = liondg::read_cache(path, kKey, &why);
  } catch (const std::exception& e) {
    if (!strict) return 0;
    std::fprintf(stderr, "read_cache threw instead of returning nullopt: %s\n", e.what());
    std::abort();
  }
  if (!source) {
    if (why.empty()) std::abort();  // a rejection always says why
    return 0;
  }
  check_split(source->train);
  check_split(source->test);
  return 0;
}
