#pragma once
// One training run end to end: data -> model -> init -> trainer -> run directory.
//
// The run directory holds config.json (every resolved option and versions),
// metrics.csv (one row per step, written as training goes), summary.json and
// model.pt (loadable with torch::load into the same model), and checkpoint.pt when
// checkpoints were asked for or the run was interrupted (SIGINT / SIGTERM).

#include <liondg/data/dataset.h>
#include <liondg/init/plan.h>
#include <liondg/models/registry.h>
#include <liondg/train/trainer.h>

#include <cstdio>
#include <map>
#include <string>

namespace liondg {

struct RunConfig {
  ModelSpec model;                   // num_classes / in_channels are taken from the data
  std::string init = "lion-dg";      // a preset (init_preset_names())
  std::string backbone_init;         // "" = the preset's backbone policy
  std::string aux_init;              // "" = the preset's auxiliary-head policy
  LSUVOptions lsuv;
  GradInitOptions gradinit;
  std::string dataset = "fashion-mnist";
  std::string data_path;             // "" = the data set's default location
  SyntheticOptions synthetic;        // for dataset "synthetic"
  std::string resize;                // "" or "HxW": resize image-folder images
  bool use_cache = true;             // the decoded-data cache (default_cache_dir())
  int64_t val_split = 0;             // images held out of training for validation (0 = validate on test)
  TrainOptions train;
  uint64_t seed = 42;                // model initialization and data order
  std::string out_dir = "runs/run";
  int threads = 0;                   // intra-op threads; 0 = all cores
  bool save_model = true;
  bool overwrite = false;            // allow reusing a directory that holds a finished run
  int64_t checkpoint_every = 0;      // OUT/checkpoint.pt every N steps (0 = only when interrupted)
  bool resume = false;               // continue the unfinished run in out_dir from its checkpoint
  std::FILE* progress = nullptr;     // progress output (nullptr = silent)
  bool progress_interactive = false;
};

struct RunResult {
  TrainSummary summary;
  std::map<std::string, int64_t> parameter_counts;
  double init_seconds = 0;         // the whole init plan
  double calibration_seconds = 0;  // its data-dependent part (LSUV, GradInit)
  std::vector<std::string> init_warnings;
  InitResult init;                 // the plan's reports (LSUV layers, GradInit cost, ...)
  InitPlan init_plan;
  std::string out_dir;
};

/// Runs one configuration and writes its run directory. Throws UsageError for
/// bad options and DataError for data or output problems; files written before
/// a failure stay valid (summary.json then records status "failed").
RunResult run_experiment(const RunConfig& config);

/// How a configuration loads its data (threads, resize, cache, progress).
LoadOptions data_load_options(const RunConfig& config);

/// The init plan a configuration resolves to.
InitPlan run_init_plan(const RunConfig& config);

/// Sets libtorch's intra-op thread count (0 = hardware concurrency).
void set_threads(int threads);

/// Library, libtorch and git versions as "key: value" pairs.
std::map<std::string, std::string> version_info();

}  // namespace liondg
