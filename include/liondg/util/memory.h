#pragma once
// Process-wide CPU memory settings for training workloads.

#include <cstddef>
#include <string>

namespace liondg {

/// Blocks of at least this size are kept for reuse by the caching CPU allocator:
/// glibc's largest mmap threshold, above which every allocation is a fresh mmap().
constexpr size_t kMinCachedBlockBytes = size_t{32} << 20;
/// At most this many bytes of freed blocks are kept; beyond, blocks are freed.
constexpr size_t kMaxCachedBytes = size_t{1} << 30;

/// Makes freed CPU tensor memory reusable instead of returning it to the kernel, so
/// that a training step does not map and zero-fill its activations anew every time
/// (page faults took about 40% of a DenseNet-DS step on the 2-core benchmark machine
/// with glibc's defaults; see bench/README.md):
/// - glibc's malloc serves blocks up to 32 MiB from its heap (M_MMAP_THRESHOLD) and
///   trims the heap top only above 1 GiB (M_TRIM_THRESHOLD);
/// - larger blocks go through a caching allocator installed as libtorch's CPU
///   allocator (c10::SetCPUAllocator): a freed block is kept, by exact size, and
///   handed out again for the next request of that size; at most kMaxCachedBytes are
///   kept. Training repeats the same sizes every step, so after the first step they
///   come from the cache.
/// Does nothing if the environment variable LIONDG_DEFAULT_MALLOC is set to 1.
/// Idempotent. Returns a one-line description of what was done.
std::string configure_cpu_allocator();

/// Counters of the caching CPU allocator (all zero before configure_cpu_allocator()).
struct CpuCacheStats {
  size_t cached_bytes = 0;  // freed large blocks currently kept
  size_t hits = 0;          // large requests served from the cache
  size_t misses = 0;        // large requests passed to the default allocator
};
CpuCacheStats cpu_cache_stats();

}  // namespace liondg
