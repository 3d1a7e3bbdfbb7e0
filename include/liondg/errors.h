#pragma once
// Exception types of the library. The library never exits the process; the
// command-line tool maps these to exit codes (2 = usage, 1 = runtime).

#include <stdexcept>
#include <string>

namespace liondg {

/// Bad user input: an unknown name, an out-of-range option, a contradictory flag.
/// The CLI maps it to exit code 2. (`TORCH_CHECK_VALUE` failures, c10::ValueError,
/// are treated the same way.)
class UsageError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// A data or I/O problem: a missing, truncated or malformed file, an unwritable
/// directory. The message names the file and what was expected. CLI exit code 1.
class DataError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace liondg
