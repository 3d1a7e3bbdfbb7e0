#pragma once
// DenseNet-DS: the paper's compact DenseNet with deep supervision.
//
//   stem Conv3x3 -> [dense block 1] -> transition -> [dense block 2] -> transition
//   -> [dense block 3] -> BN-ReLU -> GAP -> Linear (main head)
//   dense layer: BN-ReLU-Conv3x3(growth), its output concatenated to its input
//   transition:  BN-ReLU-Conv1x1(floor(C * compression)) -> AvgPool 2x2
//   auxiliary heads (GAP -> Linear) read the outputs of blocks 1 and 2.
//
// Variants for the Fixup and ReZero baselines (see docs/init.md for the rules):
//   fixup:  new = scale * Conv(relu(BN(x)) + bias_a) + bias_b   (scalars per dense layer)
//   rezero: new = gate * Conv(relu(BN(x)))                      (gate initialized to 0)
//   batch_norm(false) removes every BatchNorm (the normalization-free variant).

#include <liondg/models/ds_model.h>

#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>

namespace liondg {

struct DenseNetDSOptions {
  explicit DenseNetDSOptions(int64_t num_classes) : num_classes_(num_classes) {}
  TORCH_ARG(int64_t, num_classes);
  TORCH_ARG(int64_t, in_channels) = 3;
  TORCH_ARG(int64_t, growth_rate) = 12;
  /// Output channels of the stem convolution (the paper: 24 = 2 x growth rate).
  TORCH_ARG(int64_t, stem_channels) = 24;
  /// Dense layers per block; the number of entries is the number of blocks.
  TORCH_ARG(std::vector<int64_t>, block_layers) = std::vector<int64_t>{6, 6, 6};
  /// Channel compression of each transition layer (0 < c <= 1).
  TORCH_ARG(double, compression) = 0.5;
  /// 1-based indices of the blocks whose output an auxiliary head reads
  /// (the last block feeds the main head and cannot carry an auxiliary head).
  TORCH_ARG(std::vector<int64_t>, aux_after_blocks) = std::vector<int64_t>{1, 2};
  /// Hidden width of the auxiliary heads (0 = GAP -> Linear, as in the paper).
  TORCH_ARG(int64_t, aux_hidden) = 0;
  /// Dense-layer variant (standard, fixup, rezero).
  TORCH_ARG(BlockKind, block) = BlockKind::kStandard;
  /// false: no BatchNorm anywhere (for Fixup's normalization-free variant).
  TORCH_ARG(bool, batch_norm) = true;
};

/// One dense layer: BN-ReLU-Conv3x3 producing `growth` new channels.
class DenseLayerImpl : public torch::nn::Module {
 public:
  DenseLayerImpl(int64_t in_channels, int64_t growth, BlockKind kind = BlockKind::kStandard,
                 bool batch_norm = true);
  // x: (N,C_in,H,W) -> new features (N,growth,H,W)
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Conv2d conv() const { return conv_; }
  torch::nn::BatchNorm2d norm() const { return norm_; }
  BlockKind kind() const { return kind_; }
  /// Fixup scalars (undefined for other kinds): bias before the conv, multiplier and bias after it.
  torch::Tensor fixup_bias_a, fixup_scale, fixup_bias_b;
  /// ReZero gate (undefined for other kinds).
  torch::Tensor rezero_gate;

 private:
  BlockKind kind_;
  torch::nn::BatchNorm2d norm_{nullptr};
  torch::nn::Conv2d conv_{nullptr};
};
TORCH_MODULE(DenseLayer);

/// Transition: BN-ReLU-Conv1x1 then 2x2 average pooling.
class TransitionImpl : public torch::nn::Module {
 public:
  TransitionImpl(int64_t in_channels, int64_t out_channels, bool batch_norm = true);
  // x: (N,C_in,H,W) -> (N,C_out,H/2,W/2)
  torch::Tensor forward(const torch::Tensor& x);
  /// The convolution alone, applied after the pooling: a 1x1 convolution without bias
  /// commutes with average pooling, so conv(pool(relu(norm(x)))) equals forward(x) at a
  /// quarter of the convolution's cost. Used by the fused blocks, which compute
  /// pool(relu(norm(x))) themselves (see BlockTail).
  // pooled: (N,C_in,H/2,W/2) -> (N,C_out,H/2,W/2)
  torch::Tensor forward_pooled(const torch::Tensor& pooled);
  torch::nn::BatchNorm2d norm() const { return norm_; }
  torch::nn::Conv2d conv() const { return conv_; }

 private:
  torch::nn::BatchNorm2d norm_{nullptr};
  torch::nn::Conv2d conv_{nullptr};
};
TORCH_MODULE(Transition);

class DenseNetDSImpl : public DSModelImpl {
 public:
  explicit DenseNetDSImpl(const DenseNetDSOptions& options);
  // x: (N,C,H,W) -> main logits (N,K), aux logits [(N,K)] (one per aux head)
  DSOutput forward(const torch::Tensor& x) override;
  /// Backbone only: the final BN-ReLU features (N,C_final,H',W'); records taps "block<i>".
  torch::Tensor features(const torch::Tensor& x, Taps& taps);
  /// Channels at the output of each dense block.
  const std::vector<int64_t>& block_channels() const { return block_channels_; }

  /// Every dense layer, block by block.
  const std::vector<std::vector<DenseLayer>>& blocks() const { return blocks_; }

  /// Training forward of standard BatchNorm dense blocks through `dense_block_fused`
  /// (used when training, gradients enabled and no layer observer installed).
  void set_fused_training(bool enabled) override { fused_ = enabled; }
  /// Evaluation forward (no gradients) through `dense_block_inference`; on by default.
  void set_fused_inference(bool enabled) override { fused_inference_ = enabled; }
  bool fused_training() const override { return fused_; }
  bool fused_inference() const override { return fused_inference_; }
  /// The fused training blocks' 3x3 convolutions on bfloat16 operands (see
  /// ConvPrecision); off by default. Refused (ValueError naming the setting) for a
  /// configuration whose blocks the fused path does not take: Fixup/ReZero blocks, no
  /// BatchNorm, or a block wider than kMaxFusedChannels.
  void set_bf16_training(bool enabled) override;
  bool bf16_training() const override { return bf16_; }

  DenseNetDSOptions options;

 private:
  // features(); with `pool_final`, the fused paths may return the final map's global
  // average pool (N,C_final,1,1) instead (computed by the last block, see BlockTail).
  torch::Tensor backbone(const torch::Tensor& x, Taps& taps, bool pool_final);

  torch::nn::Conv2d stem_{nullptr};
  std::vector<std::vector<DenseLayer>> blocks_;
  std::vector<Transition> transitions_;
  torch::nn::BatchNorm2d final_norm_{nullptr};
  std::vector<int64_t> block_channels_;
  bool fused_ = false;
  bool fused_inference_ = true;
  bool bf16_ = false;
};
TORCH_MODULE(DenseNetDS);

/// Widest block (input plus all new channels) the fused blocks handle.
constexpr int64_t kMaxFusedChannels = 512;

/// Largest channel count a DenseNet-DS accepts anywhere (input, stem, growth, block
/// width): 2^20, far beyond any model that fits in memory, and small enough that the
/// width arithmetic cannot overflow int64.
constexpr int64_t kMaxDenseNetChannels = int64_t{1} << 20;

/// Output channels of each dense block of a DenseNet-DS built with `o` (what
/// DenseNetDSImpl builds, computed without building it); throws ValueError for sizes the
/// model refuses, including any channel count above kMaxDenseNetChannels.
std::vector<int64_t> dense_block_channels(const DenseNetDSOptions& o);

/// Why a DenseNet-DS built with `o` refuses bf16 training, "" when it takes it: the
/// bfloat16 path is the fused blocks, which need standard blocks with BatchNorm of at
/// most kMaxFusedChannels channels. The one rule: DenseNetDSImpl::set_bf16_training
/// enforces it and a grid config checks it when it is loaded.
std::string bf16_refusal(const DenseNetDSOptions& o);

/// What follows a fused block, computed by the block itself: BatchNorm (batch
/// statistics when training, running statistics when evaluating) + ReLU + average
/// pooling over non-overlapping `window` x `window` tiles of the block output, i.e. a
/// transition's layers up to its 1x1 convolution, pooled first (the convolution
/// commutes with the pooling; see TransitionImpl::forward_pooled). The block already
/// has the batch statistics of every output channel, so this costs one pass forward
/// and two backward, and the full-resolution activation is never stored. H and W must
/// be multiples of `window`. No tail when `norm` is empty.
struct BlockTail {
  torch::nn::BatchNorm2d norm{nullptr};
  int64_t window = 2;
};

/// Whether the fused block paths implement these layers' BatchNorms in the given mode:
/// `training` (dense_block_fused): every BatchNorm in training mode with affine
/// parameters, running statistics and a momentum (not None), all with the same eps and
/// momentum; evaluation (dense_block_inference): every BatchNorm in eval mode with affine
/// parameters and running statistics. DenseNetDSImpl runs a block layer by layer where
/// this is false (a BatchNorm switched alone to the other mode, options changed after
/// construction), and the fused functions refuse such layers, naming the layer and why.
bool dense_block_fusable(const std::vector<DenseLayer>& layers, bool training);

/// The same for a BlockTail's BatchNorm (false without one); where it is false
/// DenseNetDSImpl leaves the tail's layers to the transition or the final BatchNorm.
bool block_tail_fusable(const BlockTail& tail, bool training);

/// Arithmetic of a fused training block's 3x3 convolutions. kBFloat16: each layer's
/// BatchNorm+ReLU output A_l, its convolution weight and its output gradient are rounded
/// to bfloat16 (round to nearest even, as c10::BFloat16's conversion) and oneDNN
/// multiplies them with float accumulation; the convolution's output, input gradient
/// and weight gradient arrive in bfloat16 (oneDNN rounds its float sums) and are widened
/// to float: the first two by the passes that read them, the weight gradient before
/// AdamW sees it. Everything else stays float: the feature buffer and its gradient, the
/// BatchNorm statistics and parameters, the heads, the transitions and AdamW. A_l is
/// kept for the backward pass in bfloat16.
enum class ConvPrecision { kFloat32, kBFloat16 };

/// Whether this CPU multiplies bfloat16 natively (x86 AVX512_BF16). Without it oneDNN
/// emulates ConvPrecision::kBFloat16 (or libtorch falls back to a reference kernel):
/// correct, but slower than float32. False where the build cannot tell (compilers other
/// than GCC, other architectures).
bool cpu_has_native_bf16();

struct FusedBlockOutput {
  torch::Tensor features;  // (N, C0 + layers * growth, H, W), channels-last
  torch::Tensor pooled;    // (N, C0 + layers * growth) mean over (H, W); undefined without `pool`
  torch::Tensor tail;      // (N, C0 + layers * growth, H/window, W/window) channels-last; undefined without a tail
};

/// One dense block in training mode with one pre-allocated, channels-last feature
/// buffer: each layer's BatchNorm+ReLU reads its input channels straight from the
/// buffer (no re-concatenation), per-chunk batch statistics are computed once and
/// reused by every later layer (the statistics of a chunk are the same for every
/// layer that reads it), and the backward pass accumulates each chunk's gradient in
/// place. Updates the layers' running statistics like BatchNorm2d. First-order
/// gradients only. Standard layers with BatchNorm only.
/// With `pool`, also returns the output's global average pool, whose gradient the
/// block's backward adds in the same pass that starts the output's gradient (instead
/// of autograd materializing the pool's (N,C,H,W) gradient and adding it).
/// With a `tail`, also returns pool(relu(tail.norm(output))) (see BlockTail); the
/// tail's BatchNorm running statistics are updated too.
/// `precision`: the layers' convolutions in float or on bfloat16 operands (ConvPrecision).
// x: (N,C0,H,W) -> block output and, with `pool` / `tail`, its pool / tail
FusedBlockOutput dense_block_fused(const torch::Tensor& x, const std::vector<DenseLayer>& layers, bool pool = false,
                                   const BlockTail& tail = {},
                                   ConvPrecision precision = ConvPrecision::kFloat32);

/// One dense block in evaluation mode (BatchNorm with running statistics), without
/// autograd: one channels-last feature buffer that each layer's BatchNorm+ReLU reads
/// its input channels from and its convolution's output is written into, instead of
/// re-concatenating all earlier maps for every layer. With a `tail`, also returns
/// pool(relu(tail.norm(output))) with the tail's running statistics.
// x: (N,C0,H,W) -> block output (N, C0 + layers * growth, H, W), channels-last, and the tail
FusedBlockOutput dense_block_inference(const torch::Tensor& x, const std::vector<DenseLayer>& layers,
                                       const BlockTail& tail = {});

}  // namespace liondg
