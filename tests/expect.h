#pragma once
// Assertions shared by the test files (GoogleTest and the library's error types only).

#include <liondg/errors.h>

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace liondg::testing {

/// Expects `fn` to throw an E whose message contains every one of `needles`.
template <typename E, typename Fn>
void expect_throws(Fn fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "expected an exception containing '" << (needles.empty() ? "" : needles.front()) << "'";
  } catch (const E& e) {
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

/// Expects `fn` to throw DataError whose message contains every one of `needles`.
template <typename Fn>
void expect_data_error(Fn fn, const std::vector<std::string>& needles) {
  expect_throws<DataError>(fn, needles);
}

}  // namespace liondg::testing
