#pragma once
// The paper's training protocol: AdamW on L = L_main + alpha * sum_k L_aux_k,
// with per-step records, periodic gradient diagnostics and validation.

#include <liondg/data/batcher.h>
#include <liondg/data/dataset.h>
#include <liondg/models/ds_model.h>

#include <torch/arg.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace liondg {

class Communicator;

/// Eager training steps before the step is captured as a CUDA graph.
constexpr int64_t kGraphWarmupSteps = 3;

struct TrainOptions {
  TORCH_ARG(int64_t, steps) = 3000;
  TORCH_ARG(int64_t, batch_size) = 128;
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(double, beta1) = 0.9;
  TORCH_ARG(double, beta2) = 0.999;
  TORCH_ARG(double, eps) = 1e-8;
  TORCH_ARG(double, weight_decay) = 0.05;
  /// alpha in L = L_main + alpha * sum_k L_aux_k.
  TORCH_ARG(double, aux_weight) = 0.3;
  /// Explicit auxiliary warmup (Lee et al. 2015 style): alpha(t) = alpha * min(1, t / T)
  /// with t = completed steps (0 at the first step); 0 = constant alpha.
  TORCH_ARG(int64_t, aux_warmup_steps) = 0;
  /// "adamw" (the paper) or "sgd" (used by `verify growth`).
  TORCH_ARG(std::string, optimizer) = "adamw";
  /// SGD momentum (ignored by AdamW).
  TORCH_ARG(double, momentum) = 0.0;
  /// Per-group options used by the Fixup / ReZero reference recipes: no weight decay on
  /// scalar (one-element) parameters, or on parameters that are exactly zero at the start.
  TORCH_ARG(bool, no_decay_scalars) = false;
  TORCH_ARG(bool, no_decay_zero_init) = false;
  /// Learning-rate multiplier of scalar parameters (Fixup's reference: 0.1).
  TORCH_ARG(double, scalar_lr_mult) = 1.0;
  /// Steps to target: first step whose mean main-head training accuracy over the
  /// last `target_window` batches reaches `target_acc` (window must be full).
  TORCH_ARG(double, target_acc) = 0.70;
  TORCH_ARG(int64_t, target_window) = 50;
  /// Gradient diagnostics every K steps (0 = never).
  TORCH_ARG(int64_t, grad_every) = 10;
  /// Validation of every head every E steps (0 = only at the end).
  TORCH_ARG(int64_t, eval_every) = 500;
  TORCH_ARG(int64_t, eval_batch_size) = 256;
  /// Validate on the first N images of the evaluation split only (0 = all).
  TORCH_ARG(int64_t, eval_limit) = 0;
  TORCH_ARG(bool, hflip) = true;
  /// Random crop with this much zero padding (0 = off, the paper's protocol).
  TORCH_ARG(int64_t, crop_padding) = 0;
  /// Prepare the next batch while the current one trains (same batches either way).
  TORCH_ARG(bool, prefetch) = true;
  /// Channels-last (NHWC) activations and convolution weights: the same model, about
  /// 10% faster on oneDNN CPUs; results equal the NCHW path within float rounding.
  TORCH_ARG(bool, channels_last) = true;
  /// Fused fast paths of the model (DenseNet-DS: `dense_block_fused` for the steps,
  /// `dense_block_inference` for the evaluations) inside the training loop; equal to
  /// the layer-by-layer path within float rounding. After the loop, evaluation's fast
  /// path is on again and training's off (the model's defaults).
  TORCH_ARG(bool, fused) = true;
  /// Reduced precision, off by default: the fused DenseNet-DS blocks' 3x3 convolutions
  /// on bfloat16 operands with float accumulation (ConvPrecision::kBFloat16), everything
  /// else float. CPU loop with `fused` only. Faster where the CPU multiplies bfloat16
  /// natively (AVX512_BF16); results differ from float32 by bfloat16 rounding, not
  /// within float rounding (accuracy effect: bench/README.md).
  TORCH_ARG(bool, bf16) = false;
  /// Seed of the data order and augmentation (model init is seeded by the caller).
  TORCH_ARG(uint64_t, seed) = 42;
  /// Stop as soon as the target is reached (the paper trains the full budget).
  TORCH_ARG(bool, stop_at_target) = false;
  /// Validate once at the end (diagnostic runs may skip it).
  TORCH_ARG(bool, final_eval) = true;
  /// Data parallelism (include/liondg/train/distributed.h): null = one process. With
  /// W ranks each trains on batch_size / W images of every global batch.
  TORCH_ARG(std::shared_ptr<Communicator>, communicator) = nullptr;
  /// Synchronized BatchNorm across ranks (default: per-rank batch statistics, as DDP).
  TORCH_ARG(bool, sync_batch_norm) = false;
  /// Gradient all-reduce bucket size in bytes.
  TORCH_ARG(int64_t, bucket_bytes) = 256 * 1024;
  /// Checkpoint file: written every `checkpoint_every` steps (0 = never) and when a
  /// stop is requested (request_stop()). "" = no checkpoints. Written atomically
  /// (temporary file, fsync, rename); with data parallelism by rank 0 only.
  TORCH_ARG(std::string, checkpoint_path) = "";
  TORCH_ARG(int64_t, checkpoint_every) = 0;
  /// Where the model trains: "cpu", "cuda" or "cuda:N". On a non-CPU device the
  /// resident loop runs (see `resident`); the model is moved there for training and
  /// back to the CPU afterwards.
  TORCH_ARG(std::string, device) = "cpu";
  /// The resident loop (always on for non-CPU devices; on the CPU for tests and
  /// comparisons): the training split stays on the device as uint8 and is augmented
  /// there from the batcher's decisions (same batches as the CPU loop); parameters
  /// live in one flat buffer updated by a FlatOptimizer; step records stay on the
  /// device and are read every `sync_every` steps. Equal to the CPU loop within
  /// float rounding (tests/test_resident.cpp).
  TORCH_ARG(bool, resident) = false;
  /// Resident loop on CUDA: record the training step (and the diagnostic step) as
  /// CUDA graphs after `kGraphWarmupSteps` eager steps and replay them.
  TORCH_ARG(bool, cuda_graph) = true;
  /// Resident loop: step records are read back (one host synchronization) every N
  /// steps, and at every validation, checkpoint and the end.
  TORCH_ARG(int64_t, sync_every) = 100;
  /// Continue from this checkpoint ("" = start at step 1): model, optimizer, data
  /// order and augmentation generator, target window and timings are restored, so the
  /// remaining steps record exactly what an uninterrupted run records.
  TORCH_ARG(std::string, resume_from) = "";
};

/// What one training step records. Gradient fields are NaN on steps without diagnostics.
struct StepRecord {
  int64_t step = 0;  // 1-based
  double loss = 0;   // L_main + alpha(t) * sum L_aux
  double aux_weight = 0;  // alpha(t) used at this step
  double main_loss = 0;
  std::vector<double> aux_losses;
  double main_acc = 0;  // batch accuracy of the main head
  std::vector<double> aux_accs;
  double window_acc = 0;  // mean main accuracy over the last target_window steps (so far)
  double grad_main_norm = NAN;  // ||d L_main / d theta_backbone||_2
  double grad_aux_norm = NAN;   // ||d (alpha sum L_aux) / d theta_backbone||_2
  double grad_ratio = NAN;      // grad_aux_norm / grad_main_norm
  std::vector<double> aux_weight_norms;  // Frobenius norm of each aux head's last-layer weight (diag steps)
  double seconds = 0;  // wall time of this step
};

/// Validation of every head on the evaluation split.
struct EvalRecord {
  int64_t step = 0;
  double main_acc = 0;
  double main_loss = 0;
  std::vector<double> aux_accs;
};

struct TrainSummary {
  std::string status = "completed";  // completed | diverged | interrupted
  std::string diverged_reason;       // which loss / gradient was not finite, at which step
  int64_t resumed_from_step = 0;     // the checkpoint's step when resumed, else 0
  std::string checkpoint;            // the last checkpoint written ("" = none)
  int64_t steps_run = 0;
  std::optional<int64_t> steps_to_target;
  EvalRecord final_eval;  // on data.eval_split(): the held-out split if any, else test
  std::optional<EvalRecord> final_test;  // on the test split when a held-out split was used
  double final_train_window_acc = 0;
  double wall_seconds = 0;   // whole train() call
  double train_seconds = 0;  // training steps only
  double eval_seconds = 0;   // periodic and final validation
  int64_t world_size = 1;    // ranks of a data-parallel run
  double comm_seconds = 0;   // time blocked in collectives during the training steps
  bool converged() const { return steps_to_target.has_value(); }
};

/// Receives records as they are produced (e.g. a CSV writer, a progress line).
class RecordSink {
 public:
  virtual ~RecordSink() = default;
  virtual void on_step(const StepRecord& /*record*/) {}
  virtual void on_eval(const EvalRecord& /*record*/) {}
  /// A checkpoint after `step` is about to be written: everything recorded up to it
  /// must be durable (a resumed run continues from there).
  virtual void on_checkpoint(int64_t /*step*/) {}
};

/// Asks a running train() to stop at the next step boundary, write a checkpoint (if
/// it has a checkpoint path) and return with status "interrupted". Async-signal-safe:
/// meant for SIGINT / SIGTERM handlers.
void request_stop();
bool stop_requested();
void clear_stop_request();

/// The step a checkpoint file was written after. Throws DataError naming the file
/// when it is missing or not a liondg checkpoint.
int64_t checkpoint_step(const std::string& path);

/// The paper's objective on one batch: cross-entropy of every head.
struct Losses {
  torch::Tensor main;
  std::vector<torch::Tensor> aux;
  torch::Tensor aux_term;  // alpha * sum_k L_aux_k (a zero scalar without heads)
  torch::Tensor total;     // main + aux_term
};
// out: logits (N,K) per head, labels (N) -> losses
Losses compute_losses(const DSOutput& out, const torch::Tensor& labels, double aux_weight);

/// The optimizer of `options` (AdamW or SGD) over `model`'s parameters, grouped by
/// (learning-rate multiplier, weight decay on/off) per the per-group options.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(DSModelImpl& model, const TrainOptions& options);

/// Whether train() runs the resident loop: a non-CPU device, or `resident` set.
bool uses_resident_loop(const TrainOptions& options);

/// alpha(t) of the auxiliary schedule at 1-based `step`.
double aux_weight_at(const TrainOptions& options, int64_t step);

/// Evaluates every head on `split` in inference mode (batch statistics frozen).
/// With a communicator the ranks take rank 0's buffers (BatchNorm running
/// statistics), evaluate one shard each and sum the counts: every rank returns the
/// record of the whole split.
EvalRecord evaluate(DSModelImpl& model, const Dataset& split, const ChannelStats& stats, int64_t batch_size,
                    bool channels_last = false, Communicator* comm = nullptr);

/// Trains `model` (already initialized) on `data.train`, validating on
/// `data.eval_split()` (the held-out split if there is one, else the test split; with
/// a held-out split the final model is also evaluated on the test split).
/// Normalization uses the training split's per-channel statistics.
TrainSummary train(DSModelImpl& model, const DataSource& data, const TrainOptions& options,
                   const std::vector<RecordSink*>& sinks = {});

/// Gradient diagnostics at the model's current parameters on one batch:
/// backbone gradient norms of L_main and alpha * sum L_aux, as separate
/// torch::autograd::grad calls. Leaves parameter .grad untouched.
struct GradientProbe {
  double main_norm = 0;
  double aux_norm = 0;
  double backbone_aux_max_abs = 0;  // max |d(alpha sum L_aux)/d theta| over backbone parameters
  double head_aux_max_abs = 0;      // same over auxiliary-head parameters
};
GradientProbe probe_gradients(DSModelImpl& model, const torch::Tensor& images, const torch::Tensor& labels,
                              double aux_weight);

}  // namespace liondg
