#pragma once
// Experiment grids: the cross product of data sets, models, init presets, seeds and
// swept options, run as independent worker processes with resumable, append-only
// results (`DIR/results.jsonl`, one JSON line per finished cell).

#include <liondg/experiment/run.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace liondg {

/// A grid specification. Its JSON form (and the equivalent TOML file) is:
///   name, datasets[], models[], inits[], seeds[],
///   data {dataset: path}, train {option: value}, model {option: value},
///   synthetic {option: value}, sweep {train option: [values]}.
struct GridSpec {
  std::string name = "custom";
  std::vector<std::string> datasets;
  std::vector<std::string> models;
  std::vector<std::string> inits;
  std::vector<uint64_t> seeds;
  std::string json;  // the whole specification, normalized (what grid.json stores)
};

/// One cell of the grid and the run configuration it resolves to.
struct GridCell {
  std::string key;  // dataset__model__init__s<seed>[__option=value...]
  std::string dataset, model, init;
  uint64_t seed = 0;
  std::map<std::string, double> sweep;  // swept option -> value
  RunConfig config;                      // out_dir is relative to the grid directory
};

/// Names of the built-in presets: paper, quick, smoke.
const std::vector<std::string>& grid_preset_names();
/// A built-in preset; throws UsageError for an unknown name.
GridSpec grid_preset(const std::string& name);
/// Parses a grid from its JSON text; `origin` names the source in error messages.
GridSpec grid_from_json(const std::string& text, const std::string& origin);
/// Reads a TOML grid file; errors name the file and the line.
GridSpec grid_from_toml_file(const std::string& path);
/// Sets `data.<dataset> = path` in the spec (command-line --data dataset=PATH).
void set_grid_data_path(GridSpec& spec, const std::string& dataset, const std::string& path);

/// Every cell, in a fixed order (datasets x models x inits x sweep x seeds).
std::vector<GridCell> expand_grid(const GridSpec& spec);
/// The cells of shard `index` of `count`: every count-th cell starting at `index`
/// (0-based) of the fixed order. Shards are disjoint and cover the grid.
std::vector<GridCell> shard_cells(const std::vector<GridCell>& cells, int64_t index, int64_t count);
/// Parses "I/N" (1-based I, as in Slurm array indices); throws UsageError.
std::pair<int64_t, int64_t> parse_shard(const std::string& text);

/// One line of results.jsonl, parsed.
struct CellResult {
  std::string key;
  std::string status;  // completed | diverged | failed
  std::string json;    // the whole line
};
/// Reads results.jsonl; a missing file is empty, and a torn last line (from a kill
/// while appending) is ignored. Later lines for the same key win.
std::vector<CellResult> read_results(const std::string& path);
/// Appends one JSON line atomically (single O_APPEND write + fsync).
void append_result(const std::string& path, const std::string& json_line);

struct GridOptions {
  std::string out_dir;
  int jobs = 1;                 // parallel worker processes
  int64_t shard_index = 0;      // 0-based
  int64_t shard_count = 1;
  bool dry_run = false;
  bool estimate = true;         // dry run: time probe steps for an estimate
  bool quiet = false;
  std::string worker_binary;    // the liondg executable (default: /proc/self/exe)
  /// Where every cell trains ("cpu", "cuda", "cuda:N"). With a GPU, `jobs` workers
  /// share it: independent runs execute concurrently on one device.
  std::string device = "cpu";
};

/// Runs every unfinished cell of the shard in worker processes (`liondg grid-worker`),
/// each with threads = cores / jobs. Finished cells (completed or diverged) are
/// skipped; failed cells are retried. Returns the number of cells that failed now.
int64_t run_grid(const GridSpec& spec, const GridOptions& options);

/// What `merge_grids` did.
struct MergeSummary {
  int64_t cells = 0;       // cells of the grid
  int64_t finished = 0;    // completed or diverged, in the merged results
  int64_t failed = 0;      // only failed attempts found
  int64_t missing = 0;     // in no input directory
  int64_t duplicates = 0;  // finished in more than one input (the first input's result is kept)
};

/// Merges grid directories of one grid (shards run on several machines, or partial
/// runs) into `out_dir`: every input must hold a grid.json describing the same grid
/// (else UsageError naming the first that differs); per cell a finished result
/// (completed or diverged) beats a failed one, and among finished ones the first
/// input in argument order wins. Writes out_dir/grid.json, results.jsonl (in grid
/// order) and copies each kept cell's run directory. `out_dir` must not exist or be
/// empty, and must not be one of the inputs.
MergeSummary merge_grids(const std::vector<std::string>& dirs, const std::string& out_dir);

/// Runs one cell in this process and appends its result line (the worker side).
CellResult run_grid_cell(const std::string& grid_dir, const std::string& key, int threads,
                         const std::string& device = "cpu");

/// Measured cost of a cell's model on this machine: seconds per training step and
/// per evaluated image, from a few timed steps on synthetic data of the data set's shape.
struct StepProbe {
  double step_seconds = 0;
  double image_eval_seconds = 0;
};
StepProbe probe_cell_step(const GridCell& cell, int threads);
/// Estimated seconds of a cell from a probe: steps (with diagnostics), evaluations,
/// and the data-dependent init (LSUV, GradInit). Data loading is not included.
double estimate_cell_seconds(const GridCell& cell, const StepProbe& probe);

}  // namespace liondg
