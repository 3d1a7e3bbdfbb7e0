#pragma once
// ResNet-DS: a CIFAR-style ResNet with side-tap auxiliary heads.
//
//   stem Conv3x3-BN-ReLU -> stage 1 -> stage 2 -> stage 3 -> GAP -> Linear (main head)
//   stage s: blocks_per_stage[s] basic blocks of width widths[s]; the first block of
//   stages after the first halves the resolution (1x1 conv + BN projection shortcut).
//   Auxiliary heads (GAP -> Linear) are side-taps: they read a stage's output and
//   their result never enters the residual stream.
//
// Variants:
//   block fixup:  relu(scale * conv2(relu(conv1(x + b1a) + b1b) + b2a) + b2b + shortcut(x + b1a))
//   block rezero: gate * relu(BN(conv2(relu(BN(conv1(x)))))) + shortcut(x), gate initialized to 0
//   batch_norm(false): no BatchNorm anywhere (Fixup's normalization-free variant)
//   aux_in_branch(true): the Theorem 1 counter-example -- each auxiliary head's logits are
//     projected back (Linear K -> C) and added to the stream, so the auxiliary path sits inside
//     a residual branch instead of beside it.

#include <liondg/models/ds_model.h>

#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>

namespace liondg {

struct ResNetDSOptions {
  explicit ResNetDSOptions(int64_t num_classes) : num_classes_(num_classes) {}
  TORCH_ARG(int64_t, num_classes);
  TORCH_ARG(int64_t, in_channels) = 3;
  /// Width of each stage; the number of entries is the number of stages.
  TORCH_ARG(std::vector<int64_t>, widths) = std::vector<int64_t>{16, 32, 64};
  /// Basic blocks in each stage (same length as widths).
  TORCH_ARG(std::vector<int64_t>, blocks_per_stage) = std::vector<int64_t>{3, 3, 3};
  /// 1-based indices of the stages whose output an auxiliary head reads.
  TORCH_ARG(std::vector<int64_t>, aux_after_stages) = std::vector<int64_t>{1, 2};
  TORCH_ARG(int64_t, aux_hidden) = 0;
  /// Residual-branch variant (standard, fixup, rezero).
  TORCH_ARG(BlockKind, block) = BlockKind::kStandard;
  /// false: no BatchNorm anywhere.
  TORCH_ARG(bool, batch_norm) = true;
  /// true: auxiliary outputs are fed back into the stream (Theorem 1 counter-example).
  TORCH_ARG(bool, aux_in_branch) = false;
};

/// Basic residual block: relu(BN(conv(relu(BN(conv(x))))) + shortcut(x)) and its variants.
class BasicBlockImpl : public torch::nn::Module {
 public:
  BasicBlockImpl(int64_t in_channels, int64_t out_channels, int64_t stride,
                 BlockKind kind = BlockKind::kStandard, bool batch_norm = true);
  // x: (N,C_in,H,W) -> (N,C_out,H/stride,W/stride)
  torch::Tensor forward(const torch::Tensor& x);
  /// The shortcut path alone: x, or the 1x1 projection (+ BN) when the shape changes.
  torch::Tensor shortcut(const torch::Tensor& x);

  torch::nn::Conv2d conv1() const { return conv1_; }
  torch::nn::Conv2d conv2() const { return conv2_; }
  torch::nn::Conv2d shortcut_conv() const { return shortcut_conv_; }
  BlockKind kind() const { return kind_; }
  /// Training with first-order gradients on the CPU: BatchNorm+ReLU and
  /// BatchNorm+add+ReLU as fused nodes (batch_norm_relu_fused). Set by the model.
  void set_fused_training(bool enabled) { fused_ = enabled; }
  /// Evaluating without gradients on the CPU: each BatchNorm folded into the convolution
  /// before it (fold_batch_norm). Set by the model.
  void set_fused_inference(bool enabled) { fused_inference_ = enabled; }
  /// Fixup scalars (undefined for other kinds).
  torch::Tensor fixup_bias1a, fixup_bias1b, fixup_bias2a, fixup_bias2b, fixup_scale;
  /// ReZero gate (undefined for other kinds).
  torch::Tensor rezero_gate;

 private:
  BlockKind kind_;
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  torch::nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr};
  torch::nn::Conv2d shortcut_conv_{nullptr};
  torch::nn::BatchNorm2d shortcut_bn_{nullptr};
  bool fused_ = false;
  bool fused_inference_ = false;
};
TORCH_MODULE(BasicBlock);

class ResNetDSImpl : public DSModelImpl {
 public:
  explicit ResNetDSImpl(const ResNetDSOptions& options);
  // x: (N,C,H,W) -> main logits (N,K), aux logits [(N,K)]
  DSOutput forward(const torch::Tensor& x) override;
  /// Backbone only: final stage output (N,C_last,H',W'); records taps "stage<i>".
  torch::Tensor features(const torch::Tensor& x, Taps& taps);
  /// Every basic block, stage by stage.
  const std::vector<std::vector<BasicBlock>>& stages() const { return stages_; }
  /// Number of residual branches (L in Fixup's rule).
  int64_t num_blocks() const;
  /// The fused BatchNorm+ReLU nodes when training with first-order gradients on the
  /// CPU in float32 (standard blocks with BatchNorm, no cross-rank synchronization);
  /// the layer-by-layer composition otherwise. Off by default; the trainer turns it on.
  void set_fused_training(bool enabled) override;
  bool fused_training() const override { return fused_; }
  /// When evaluating without gradients on the CPU in float32 (standard blocks with
  /// BatchNorm in eval mode, no layer observer): every convolution followed by a
  /// BatchNorm runs as one convolution with the BatchNorm folded into its weight and
  /// bias (fold_batch_norm), so no separate normalization pass. On by default.
  void set_fused_inference(bool enabled) override;
  bool fused_inference() const override { return fused_inference_; }

  ResNetDSOptions options;

 private:
  bool fused_ = false;
  bool fused_inference_ = true;
  torch::nn::Conv2d stem_conv_{nullptr};
  torch::nn::BatchNorm2d stem_bn_{nullptr};
  std::vector<std::vector<BasicBlock>> stages_;
};
TORCH_MODULE(ResNetDS);

}  // namespace liondg
