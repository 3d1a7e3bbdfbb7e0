// Writes valid decoded-data cache files (liondg::write_cache) for the seed corpus
// of fuzz_cache: make_cache_seed OUT_DIR. The key must match fuzz_cache.cpp's.

#include <liondg/data/cache.h>

#include <torch/torch.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>

namespace {

constexpr char kKey[] = "liondg-fuzz-cache-key";

liondg::Dataset split(int64_t n, int64_t channels, int64_t side, bool coarse) {
  liondg::Dataset d;
  d.images = torch::arange(n * channels * side * side, torch::kInt64)
                 .remainder(256)
                 .to(torch::kUInt8)
                 .reshape({n, channels, side, side});
  d.labels = torch::arange(n, torch::kInt64).remainder(3);
  if (coarse) d.coarse_labels = torch::arange(n, torch::kInt64).remainder(2);
  return d;
}

liondg::DataSource source(const std::string& name, int64_t channels, int64_t side, bool coarse) {
  liondg::DataSource s;
  s.name = name;
  s.format = coarse ? "cifar100-binary" : "idx";
  s.root = coarse ? "cifar-100-binary" : "";
  s.class_names = {"a", "b", "c"};
  if (coarse) s.coarse_class_names = {"x", "y"};
  s.train = split(3, channels, side, coarse);
  s.test = split(2, channels, side, coarse);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  try {
    liondg::write_cache(dir + "/grey.ldgcache", kKey, source("fashion-mnist", 1, 2, false));
    liondg::write_cache(dir + "/rgb-coarse.ldgcache", kKey, source("cifar100", 3, 2, true));
    liondg::DataSource empty_test = source("cifar10", 3, 1, false);
    empty_test.test = split(0, 3, 1, false);
    liondg::write_cache(dir + "/empty-test.ldgcache", kKey, empty_test);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_cache_seed: %s\n", e.what());
    return 1;
  }
  return 0;
}
