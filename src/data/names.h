#pragma once
// Internal to src/data: class names for data sets without a names file.

#include <cstdint>
#include <string>
#include <vector>

namespace liondg {

/// "0", "1", ..., n-1.
std::vector<std::string> numbered_names(int64_t n);

}  // namespace liondg
