#pragma once
// Timing of this project's training step and evaluation, alone, after warm-up:
// what `liondg bench step|eval` prints and bench/run_bench.py compares with
// PyTorch eager.

#include <liondg/models/registry.h>

#include <torch/arg.h>

#include <cstdint>
#include <string>
#include <vector>

namespace liondg {

struct BenchOptions {
  TORCH_ARG(int64_t, batch_size) = 128;
  /// Timed steps (or evaluation batches) after the warm-up.
  TORCH_ARG(int64_t, steps) = 20;
  TORCH_ARG(int64_t, warmup) = 3;
  /// Intra-op threads (0 = all cores).
  TORCH_ARG(int, threads) = 0;
  TORCH_ARG(int64_t, image_size) = 32;
  TORCH_ARG(int64_t, channels) = 3;
  TORCH_ARG(int64_t, num_classes) = 10;
  TORCH_ARG(uint64_t, seed) = 0;
  /// "cpu", or "cuda[:N]": then the step is the resident loop's (device-resident
  /// data and augmentation, CUDA-graph replay), timed per step with a host
  /// synchronization after each, as a loop that reads its loss every step.
  TORCH_ARG(std::string, device) = "cpu";
  /// Training step with TrainOptions::bf16 (CPU, DenseNet-DS only).
  TORCH_ARG(bool, bf16) = false;
};

struct BenchResult {
  std::vector<double> seconds;  // per timed step / batch
  double median_s = 0;
  double min_s = 0;
  int threads = 0;
};

/// The full training step of `train()` without diagnostics: forward of every head,
/// L = L_main + 0.3 * sum L_aux, zero_grad, backward, AdamW step (the paper's
/// hyper-parameters), and reading the loss back. Random normalized inputs.
BenchResult bench_train_step(const ModelSpec& spec, const BenchOptions& options);

/// Evaluation of every head in inference mode on batches of `batch_size`.
BenchResult bench_eval(const ModelSpec& spec, const BenchOptions& options);

}  // namespace liondg
