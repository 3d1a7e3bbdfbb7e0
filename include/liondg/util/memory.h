#pragma once
// Process-wide CPU memory settings for training workloads.

#include <string>

namespace liondg {

/// Makes glibc's malloc keep freed memory for reuse instead of returning it to the
/// kernel: blocks up to 32 MiB come from the heap rather than fresh mmap()s
/// (M_MMAP_THRESHOLD) and the heap top is trimmed only above 1 GiB (M_TRIM_THRESHOLD).
/// With the defaults, every training step maps and zero-fills its activations anew
/// (page faults took about 40% of a DenseNet-DS step on the 2-core benchmark machine;
/// see bench/README.md). Peak memory stays at or below the defaults'.
/// Does nothing if the environment variable LIONDG_DEFAULT_MALLOC is set to 1.
/// Returns a one-line description of what was done.
std::string configure_cpu_allocator();

}  // namespace liondg
