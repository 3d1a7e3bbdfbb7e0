// The caching CPU allocator behind configure_cpu_allocator().

#include <liondg/util/memory.h>

#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>

namespace liondg {
namespace {

constexpr int64_t kLargeFloats = static_cast<int64_t>(kMinCachedBlockBytes / sizeof(float)) + 1024;

TEST(CpuAllocator, LargeBlocksAreReusedAndSmallOnesAreNot) {
  if (const char* v = std::getenv("LIONDG_DEFAULT_MALLOC"); v != nullptr && std::string(v) == "1") {
    GTEST_SKIP() << "LIONDG_DEFAULT_MALLOC=1 turns the caching allocator off";
  }
  configure_cpu_allocator();
  configure_cpu_allocator();  // idempotent
  const CpuCacheStats before = cpu_cache_stats();

  void* first = nullptr;
  {
    torch::Tensor t = torch::empty({kLargeFloats});
    first = t.data_ptr();
    t.fill_(2.0f);
    EXPECT_EQ(t.sum().item<double>(), 2.0 * static_cast<double>(kLargeFloats));
  }
  const CpuCacheStats kept = cpu_cache_stats();
  EXPECT_EQ(kept.misses, before.misses + 1);
  EXPECT_GE(kept.cached_bytes, before.cached_bytes + kLargeFloats * sizeof(float));
  {
    // The same size again: the kept block, and it is a working tensor.
    torch::Tensor t = torch::empty({kLargeFloats});
    EXPECT_EQ(t.data_ptr(), first);
    t.fill_(1.0f);
    EXPECT_EQ(t.sum().item<double>(), static_cast<double>(kLargeFloats));
    const CpuCacheStats hit = cpu_cache_stats();
    EXPECT_EQ(hit.hits, kept.hits + 1);
    EXPECT_EQ(hit.cached_bytes, kept.cached_bytes - kLargeFloats * sizeof(float));
  }
  // A small tensor bypasses the cache.
  const CpuCacheStats small_before = cpu_cache_stats();
  { torch::Tensor s = torch::ones({1024}); }
  const CpuCacheStats small_after = cpu_cache_stats();
  EXPECT_EQ(small_after.hits, small_before.hits);
  EXPECT_EQ(small_after.misses, small_before.misses);
  EXPECT_EQ(small_after.cached_bytes, small_before.cached_bytes);
}

TEST(CpuAllocator, RawAllocationsOfBothSizesRoundTrip) {
  configure_cpu_allocator();
  // raw_allocate()/raw_deallocate(), as oneDNN's buffers use them.
  c10::Allocator* a = c10::GetCPUAllocator();
  for (size_t bytes : {size_t{256}, kMinCachedBlockBytes + 64}) {
    void* p = a->raw_allocate(bytes);
    ASSERT_NE(p, nullptr);
    static_cast<char*>(p)[bytes - 1] = 1;
    a->raw_deallocate(p);
  }
  // A convolution big enough for oneDNN scratch buffers runs and is right.
  torch::Tensor x = torch::randn({2, 3, 8, 8}), w = torch::randn({4, 3, 3, 3});
  torch::Tensor y = torch::conv2d(x, w, {}, /*stride=*/1, /*padding=*/1);
  torch::Tensor expect = torch::conv2d(x.to(torch::kFloat64), w.to(torch::kFloat64), {}, 1, 1);
  EXPECT_LE((y.to(torch::kFloat64) - expect).abs().max().item<double>(), 1e-4);
}

TEST(CpuAllocator, KeptBytesStayWithinTheLimit) {
  configure_cpu_allocator();
  // Distinct large sizes, each freed at once: kept until the limit, freed beyond it.
  // torch::empty touches no pages, so this maps address space but uses little memory.
  const int64_t blocks = static_cast<int64_t>(kMaxCachedBytes / kMinCachedBlockBytes) + 4;
  for (int64_t i = 0; i < blocks; ++i) {
    torch::Tensor t = torch::empty({kLargeFloats + 16 * i});
    EXPECT_LE(cpu_cache_stats().cached_bytes, kMaxCachedBytes);
  }
  EXPECT_LE(cpu_cache_stats().cached_bytes, kMaxCachedBytes);
  EXPECT_GT(cpu_cache_stats().cached_bytes, kMaxCachedBytes / 2);
}

}  // namespace
}  // namespace liondg
