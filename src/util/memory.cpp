// glibc malloc settings for training workloads.

#include <liondg/util/memory.h>

#include <malloc.h>

#include <cstdlib>
#include <cstring>

namespace liondg {

std::string configure_cpu_allocator() {
  const char* opt_out = std::getenv("LIONDG_DEFAULT_MALLOC");
  if (opt_out != nullptr && std::strcmp(opt_out, "1") == 0) return "glibc malloc defaults (LIONDG_DEFAULT_MALLOC=1)";
#if defined(__GLIBC__)
  constexpr int kNeverTrim = 1 << 30;  // bytes of free heap top kept before trimming
  const bool ok = mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, kNeverTrim) == 1;
  return ok ? "glibc malloc: no mmap for large blocks, no trimming" : "glibc malloc: mallopt failed; defaults kept";
#else
  return "not glibc: allocator defaults kept";
#endif
}

}  // namespace liondg
