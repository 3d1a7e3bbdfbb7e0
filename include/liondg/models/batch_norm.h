#pragma once
// BatchNorm of the models, with an optional synchronized mode for data-parallel
// training: batch statistics over the union of every rank's batch (PyTorch's
// SyncBatchNorm), so W ranks with B/W images each normalize like one process with B.

#include <torch/nn/modules/batchnorm.h>

#include <utility>

namespace liondg {

/// The cross-rank sum synchronized BatchNorm needs (implemented by the trainer on
/// top of its communicator; the models do not depend on c10d).
class BatchNormSync {
 public:
  virtual ~BatchNormSync() = default;
  /// In-place sum over ranks of a contiguous double tensor.
  virtual void all_reduce_sum_(const torch::Tensor& tensor) = 0;
};

/// While alive, training-mode batch_norm() calls on this thread use statistics over
/// all ranks of `sync` (nullptr: per-rank statistics). Every rank must run the same
/// BatchNorm layers in the same order.
class SyncBatchNormGuard {
 public:
  explicit SyncBatchNormGuard(BatchNormSync* sync);
  ~SyncBatchNormGuard();
  SyncBatchNormGuard(const SyncBatchNormGuard&) = delete;
  SyncBatchNormGuard& operator=(const SyncBatchNormGuard&) = delete;

 private:
  BatchNormSync* previous_;
};

/// The synchronization active on this thread, or nullptr.
BatchNormSync* active_batch_norm_sync();

/// `bn` applied to x: (N,C,H,W) -> (N,C,H,W). In training mode under a
/// SyncBatchNormGuard the batch statistics are reduced over ranks (two-pass mean and
/// variance in double precision) and the backward pass reduces the two per-channel
/// sums it needs; the running statistics are updated like BatchNorm2d's with the
/// global mean and unbiased variance. Weight and bias gradients are per-rank sums,
/// to be averaged with the other gradients. Otherwise this is bn->forward(x).
torch::Tensor batch_norm(torch::nn::BatchNorm2d& bn, const torch::Tensor& x);

/// relu(bn(x) + residual) in training mode (batch statistics; running statistics and
/// num_batches_tracked updated as BatchNorm2d does), on a float32 CPU tensor, as one
/// autograd node with a hand-written backward: the statistics pass and one pass that
/// normalizes, adds and rectifies; backward, one pass of per-channel sums and one that
/// writes the input's (and the residual's) gradient. Equal to the composition within
/// float rounding. First-order only (a create_graph backward is refused); no
/// cross-rank synchronization. `residual` may be undefined (no residual).
// x, residual: (N,C,H,W) -> (N,C,H,W) channels-last
torch::Tensor batch_norm_relu_fused(const torch::nn::BatchNorm2d& bn, const torch::Tensor& x,
                                    const torch::Tensor& residual = {});

/// Whether batch_norm_relu_fused applies to `bn` and x: bn defined and training, with
/// affine parameters, running statistics and a momentum (not None), gradients on, a
/// float32 CPU (N,C,H,W) tensor with at most kMaxFusedChannels (512) channels, no
/// cross-rank synchronization active. Callers use the composition otherwise;
/// batch_norm_relu_fused refuses a BatchNorm in eval mode or without those three.
bool batch_norm_relu_fusable(const torch::nn::BatchNorm2d& bn, const torch::Tensor& x);

/// The weight and bias of one convolution equal to bn(conv(x)) in evaluation (BatchNorm2d
/// in eval mode, running statistics): with s = gamma / sqrt(running_var + eps) per output
/// channel, W' = W * s and b' = beta + (b - running_mean) * s (gamma = 1 and beta = 0
/// without affine parameters; b = 0 for a convolution without bias, `conv_bias`
/// undefined). W' keeps W's memory format. Requires running statistics
/// (track_running_stats). Equal to the composition within float rounding.
// conv_weight: (C_out,C_in/groups,kh,kw), conv_bias: (C_out) or undefined -> {W', b' (C_out)}
std::pair<torch::Tensor, torch::Tensor> fold_batch_norm(const torch::Tensor& conv_weight, const torch::Tensor& conv_bias,
                                                        const torch::nn::BatchNorm2d& bn);

/// Whether a model evaluating x may fold `bn` into the convolution before it
/// (fold_batch_norm): bn defined, in eval mode, with running statistics, gradients off,
/// x a float32 CPU tensor. Callers check for an observer (LSUV) themselves.
bool batch_norm_foldable(const torch::nn::BatchNorm2d& bn, const torch::Tensor& x);

}  // namespace liondg
