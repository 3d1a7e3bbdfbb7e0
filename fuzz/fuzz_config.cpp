// Fuzzes the experiment-grid config parsers on every input: liondg::grid_from_json
// (nlohmann_json) on the input as text, liondg::grid_from_toml_file (toml++) on the
// input as a file, and liondg::read_results (the grid's results.jsonl) on the input
// as a file. An accepted grid is re-parsed from its normalized JSON and, if it has
// few cells, expanded with liondg::expand_grid. Exceptions are the parsers' way of
// rejecting input; anything else is a bug. With LIONDG_FUZZ_STRICT=1 in the
// environment, a grid that is accepted but then fails to re-parse from its
// normalized JSON or to expand is reported as a finding too.

#include <liondg/experiment/grid.h>

#include <nlohmann/json.hpp>
#include <ATen/Parallel.h>
#include <torch/types.h>

#include <cstddef>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include "fuzz_input_file.h"

namespace {

constexpr char kOrigin[] = "fuzz.json";
// Cells expanded per input at most (a grid is a cross product: small text, many cells).
constexpr uint64_t kMaxCells = 1024;
constexpr char kStrictEnv[] = "LIONDG_FUZZ_STRICT";

bool strict = false;

// Number of cells of an accepted grid, saturated at kMaxCells + 1.
uint64_t cell_count(const liondg::GridSpec& spec) {
  uint64_t n = spec.datasets.size() * spec.models.size() * spec.inits.size();
  n = n > kMaxCells ? kMaxCells + 1 : n * spec.seeds.size();
  const nlohmann::json j = nlohmann::json::parse(spec.json);
  if (j.contains("sweep")) {
    for (const auto& [key, values] : j["sweep"].items()) {
      if (n > kMaxCells) break;
      n *= values.size();
    }
  }
  return n > kMaxCells ? kMaxCells + 1 : n;
}

// What an accepted grid goes through next (grid.json written and read back by the
// workers, the cells expanded).
void exercise(const liondg::GridSpec& spec) {
  try {
    const liondg::GridSpec again = liondg::grid_from_json(spec.json, "normalized");
    if (again.json != spec.json || again.seeds != spec.seeds) std::abort();
    const uint64_t n = cell_count(spec);
    if (n > kMaxCells) return;
    if (liondg::expand_grid(spec).size() != n) std::abort();
  } catch (const std::exception& e) {
    if (!strict) return;
    std::fprintf(stderr, "an accepted grid failed afterwards: %s\nnormalized grid: %s\n", e.what(), spec.json.c_str());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);  // small tensors; no intra-op threads
  strict = liondg_fuzz::env_flag(kStrictEnv);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static liondg_fuzz::InputFile file;
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::string& path = file.write(data, size);
  try {
    exercise(liondg::grid_from_json(text, kOrigin));
  } catch (const std::exception&) {
  }
  try {
    exercise(liondg::grid_from_toml_file(path));
  } catch (const std::exception&) {
  }
  try {
    for (const liondg::CellResult& r : liondg::read_results(path)) {
      if (r.json.empty()) std::abort();
    }
  } catch (const std::exception&) {
  }
  return 0;
}
