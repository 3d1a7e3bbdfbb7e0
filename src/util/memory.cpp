// CPU memory settings for training workloads: glibc malloc tuning and a caching
// allocator for large tensor blocks.

#include <liondg/util/memory.h>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace liondg {
namespace {

// A block taken from the default allocator, owned by the cache while handed out
// and while kept.
struct CachedBlock {
  c10::DataPtr data;
  size_t bytes;
};

// libtorch's CPU allocator with large freed blocks kept for reuse by exact size.
// Small requests go straight to the default allocator. Thread-safe.
class CachingCpuAllocator final : public c10::Allocator {
 public:
  explicit CachingCpuAllocator(c10::Allocator* base) : base_(base) {}

  // libtorch 1.13 declares allocate() const and newer versions drop the const: both
  // are defined, so that either overrides the base's pure virtual.
  c10::DataPtr allocate(size_t bytes) const { return const_cast<CachingCpuAllocator*>(this)->take(bytes); }
  c10::DataPtr allocate(size_t bytes) { return take(bytes); }
  // Pure virtual in newer libtorch, absent in 1.13.
  void copy_data(void* dest, const void* src, std::size_t count) const { std::memcpy(dest, src, count); }
  // raw_allocate()/raw_deallocate() (oneDNN's buffers) need a deleter taking the pointer.
  c10::DeleterFnPtr raw_deleter() const override { return &CachingCpuAllocator::release; }

  CpuCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

 private:
  c10::DataPtr take(size_t bytes) {
    if (bytes < kMinCachedBlockBytes) return base_->allocate(bytes);
    std::unique_ptr<CachedBlock> block;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.find(bytes);
    if (it != free_.end() && !it->second.empty()) {
      block.reset(it->second.back());
      it->second.pop_back();
      stats_.cached_bytes -= bytes;
      ++stats_.hits;
    } else {
      block.reset(new CachedBlock{base_->allocate(bytes), bytes});
      ++stats_.misses;
    }
    void* ptr = block->data.get();
    live_[ptr] = block.release();
    // Context == pointer, as raw_deallocate() requires.
    return {ptr, ptr, &CachingCpuAllocator::release, c10::Device(c10::DeviceType::CPU)};
  }

  static void release(void* ptr);

  void give_back(void* ptr) {
    std::unique_ptr<CachedBlock> block;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = live_.find(ptr);
      if (it == live_.end()) {
        // A small block that raw_allocate() took from the default allocator.
        base_->raw_deleter()(ptr);
        return;
      }
      block.reset(it->second);
      live_.erase(it);
      if (stats_.cached_bytes + block->bytes <= kMaxCachedBytes) {
        stats_.cached_bytes += block->bytes;
        free_[block->bytes].push_back(block.release());
        return;
      }
    }
    // Over the limit: freed outside the lock.
  }

  c10::Allocator* base_;
  std::mutex mutex_;
  std::map<size_t, std::vector<CachedBlock*>> free_;  // bytes -> kept blocks
  std::unordered_map<void*, CachedBlock*> live_;      // handed-out large blocks
  CpuCacheStats stats_;
};

// Never destroyed: tensors may be freed after static destructors have run.
CachingCpuAllocator* g_caching = nullptr;
std::mutex g_install_mutex;

void CachingCpuAllocator::release(void* ptr) { g_caching->give_back(ptr); }

}  // namespace

std::string configure_cpu_allocator() {
  const char* opt_out = std::getenv("LIONDG_DEFAULT_MALLOC");
  if (opt_out != nullptr && std::strcmp(opt_out, "1") == 0) return "glibc malloc defaults (LIONDG_DEFAULT_MALLOC=1)";
  std::string what;
#if defined(__GLIBC__)
  constexpr int kMmapThreshold = 32 << 20;  // glibc's largest allowed value
  constexpr int kTrimThreshold = 1 << 30;   // bytes of free heap top kept before trimming
  const bool ok = mallopt(M_MMAP_THRESHOLD, kMmapThreshold) == 1 && mallopt(M_TRIM_THRESHOLD, kTrimThreshold) == 1;
  what = ok ? "glibc malloc: heap blocks up to 32 MiB, trim above 1 GiB" : "glibc malloc: mallopt failed; defaults kept";
#else
  what = "not glibc: malloc defaults kept";
#endif
  std::lock_guard<std::mutex> lock(g_install_mutex);
  if (g_caching == nullptr) {
    g_caching = new CachingCpuAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(g_caching, /*priority=*/1);
  }
  // SetCPUAllocator keeps an allocator registered with a higher priority.
  if (c10::GetCPUAllocator() != g_caching) {
    return what + "; caching allocator not installed (another CPU allocator has a higher priority)";
  }
  return what + "; blocks of 32 MiB and more cached for reuse (up to 1 GiB)";
}

CpuCacheStats cpu_cache_stats() { return g_caching == nullptr ? CpuCacheStats{} : g_caching->stats(); }

}  // namespace liondg
