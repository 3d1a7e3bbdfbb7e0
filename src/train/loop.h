#pragma once
// What the two training loops share (trainer.cpp: one step at a time on the CPU;
// resident.cpp: data, step and records resident on the device). Internal header.

#include <liondg/train/trainer.h>

#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <chrono>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace liondg::detail {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// What the training loop carries from step to step besides model, optimizer and batcher.
struct LoopState {
  int64_t step = 0;  // steps completed
  std::deque<double> window;
  double window_sum = 0;
  std::optional<int64_t> steps_to_target;
  double final_train_window_acc = 0;
  double train_seconds = 0;
  double eval_seconds = 0;
};

/// The schedule of both loops at 1-based `step`: gradient diagnostics (step 1, then
/// every grad_every), validation and checkpoints (every N steps, not at the last
/// step, which has its own final validation and needs no checkpoint).
inline bool diagnoses_at(const TrainOptions& o, int64_t step) {
  return o.grad_every() > 0 && (step == 1 || step % o.grad_every() == 0);
}
inline bool evaluates_at(const TrainOptions& o, int64_t step) {
  return o.eval_every() > 0 && step % o.eval_every() == 0 && step != o.steps();
}
inline bool checkpoints_at(const TrainOptions& o, int64_t step) {
  return o.checkpoint_every() > 0 && step % o.checkpoint_every() == 0 && step != o.steps();
}

/// The batcher settings of a run (one shard of one process unless set afterwards).
BatcherOptions batcher_options(const TrainOptions& o);

/// Adds a step's main-head accuracy to the target window; sets r.window_acc and,
/// the first time the full window reaches the target, loop.steps_to_target.
void update_window(LoopState& loop, StepRecord& r, const TrainOptions& o);

/// How the optimizer state is stored in a checkpoint: torch::optim's own format
/// ("torch", the step-by-step loop) or FlatOptimizer's ("flat", the resident loop).
using SaveOptimizer = std::function<void(torch::serialize::OutputArchive&)>;
using LoadOptimizer = std::function<void(torch::serialize::InputArchive&)>;

/// One file: model, optimizer, batcher and loop state, plus what must match on resume.
void save_checkpoint(const std::string& path, DSModelImpl& model, const SaveOptimizer& save_optimizer,
                     const std::string& layout, const BatcherState& batcher, const LoopState& loop,
                     const TrainOptions& o);
/// Restores model, then optimizer (load_optimizer runs after the model is loaded),
/// batcher and loop state. A checkpoint of the other layout is a UsageError.
void load_checkpoint(const std::string& path, DSModelImpl& model, const LoadOptimizer& load_optimizer,
                     const std::string& layout, TrainBatcher& batcher, LoopState& loop, const TrainOptions& o);

/// "L_aux_1 = nan" for the first non-finite of the step's losses.
std::string first_non_finite(const StepRecord& r);

/// Gradients of `loss` w.r.t. `params`, keeping the graph; unused parameters get
/// an undefined tensor (treated as zero).
std::vector<torch::Tensor> grads_of(const torch::Tensor& loss, const std::vector<torch::Tensor>& params);

/// The validation split of a run (data.eval_split(), cut to o.eval_limit()).
Dataset eval_split_of(const DataSource& data, const TrainOptions& o);

/// The resident loop (resident.cpp): used for non-CPU devices and when o.resident().
TrainSummary train_resident(DSModelImpl& model, const DataSource& data, const TrainOptions& o,
                            const std::vector<RecordSink*>& sinks);

}  // namespace liondg::detail
