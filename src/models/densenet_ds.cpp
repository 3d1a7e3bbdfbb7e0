// DenseNet-DS: compact DenseNet with auxiliary heads after dense blocks.

#include <liondg/models/densenet_ds.h>
#include <liondg/models/batch_norm.h>
#include <liondg/models/observe.h>

#include <torch/nn/functional/pooling.h>

#include <algorithm>
#include <cmath>
#include <sstream>

namespace liondg {
namespace {
torch::nn::Conv2dOptions conv_options(int64_t in, int64_t out, int64_t kernel) {
  return torch::nn::Conv2dOptions(in, out, kernel).padding(kernel / 2).bias(false);
}

// relu(norm(x)); in place on the BatchNorm output, which nothing else reads (its
// backward needs the input, not the output), saving one activation-sized buffer.
torch::Tensor norm_relu(torch::nn::BatchNorm2d& norm, const torch::Tensor& x) {
  return norm ? batch_norm(norm, x).relu_() : torch::relu(x);
}

// Output channels of a transition reading `channels`.
int64_t transition_channels(int64_t channels, double compression) {
  return std::max<int64_t>(1, static_cast<int64_t>(std::floor(static_cast<double>(channels) * compression)));
}
}  // namespace

std::vector<int64_t> dense_block_channels(const DenseNetDSOptions& o) {
  // Every count is checked against kMaxDenseNetChannels before it enters a product or a
  // sum, so no size, however absurd, overflows int64.
  const auto check_size = [](const char* name, int64_t value) {
    TORCH_CHECK_VALUE(value > 0 && value <= kMaxDenseNetChannels, "DenseNetDS: ", name, " must be in [1, ",
                      kMaxDenseNetChannels, "], got ", value);
  };
  check_size("in_channels", o.in_channels());
  check_size("growth_rate", o.growth_rate());
  check_size("stem_channels", o.stem_channels());
  TORCH_CHECK_VALUE(!o.block_layers().empty(), "DenseNetDS: block_layers must not be empty");
  TORCH_CHECK_VALUE(o.compression() > 0.0 && o.compression() <= 1.0,
                    "DenseNetDS: compression must be in (0, 1], got ", o.compression());
  std::vector<int64_t> out;
  int64_t channels = o.stem_channels();
  for (size_t b = 0; b < o.block_layers().size(); ++b) {
    const int64_t layers = o.block_layers()[b];
    TORCH_CHECK_VALUE(layers > 0, "DenseNetDS: block ", b + 1, " must have > 0 layers, got ", layers);
    // channels + layers * growth <= kMax, written so that nothing overflows.
    TORCH_CHECK_VALUE(layers <= (kMaxDenseNetChannels - channels) / o.growth_rate(), "DenseNetDS: block ", b + 1,
                      " would be wider than ", kMaxDenseNetChannels, " channels (", channels, " in + ", layers,
                      " layers x growth_rate ", o.growth_rate(), ")");
    channels += layers * o.growth_rate();
    out.push_back(channels);
    channels = transition_channels(channels, o.compression());
  }
  return out;
}

std::string bf16_refusal(const DenseNetDSOptions& o) {
  const std::vector<int64_t> channels = dense_block_channels(o);
  const int64_t widest = *std::max_element(channels.begin(), channels.end());
  if (o.block() == BlockKind::kStandard && o.batch_norm() && widest <= kMaxFusedChannels) return "";
  std::ostringstream why;
  why << "DenseNet-DS's bfloat16 path is its fused blocks, which need standard blocks with BatchNorm of at most "
      << kMaxFusedChannels << " channels; this model has " << to_string(o.block()) << " blocks, batch_norm "
      << (o.batch_norm() ? "on" : "off") << ", widest block " << widest << " channels";
  return why.str();
}

DenseLayerImpl::DenseLayerImpl(int64_t in_channels, int64_t growth, BlockKind kind, bool batch_norm) : kind_(kind) {
  if (batch_norm) norm_ = register_module("norm", torch::nn::BatchNorm2d(in_channels));
  conv_ = register_module("conv", torch::nn::Conv2d(conv_options(in_channels, growth, /*kernel=*/3)));
  if (kind_ == BlockKind::kFixup) {
    fixup_bias_a = register_parameter("fixup_bias_a", torch::zeros({1}));
    fixup_scale = register_parameter("fixup_scale", torch::ones({1}));
    fixup_bias_b = register_parameter("fixup_bias_b", torch::zeros({1}));
  } else if (kind_ == BlockKind::kReZero) {
    rezero_gate = register_parameter("rezero_gate", torch::zeros({1}));
  }
}

torch::Tensor DenseLayerImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = norm_relu(norm_, x);
  switch (kind_) {
    case BlockKind::kFixup:
      return observe(*conv_, conv_->forward(h + fixup_bias_a)) * fixup_scale + fixup_bias_b;
    case BlockKind::kReZero:
      return observe(*conv_, conv_->forward(h)) * rezero_gate;
    case BlockKind::kStandard:
      break;
  }
  return observe(*conv_, conv_->forward(h));
}

TransitionImpl::TransitionImpl(int64_t in_channels, int64_t out_channels, bool batch_norm) {
  if (batch_norm) norm_ = register_module("norm", torch::nn::BatchNorm2d(in_channels));
  conv_ = register_module("conv", torch::nn::Conv2d(conv_options(in_channels, out_channels, /*kernel=*/1)));
}

torch::Tensor TransitionImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = norm_relu(norm_, x);
  return torch::avg_pool2d(observe(*conv_, conv_->forward(h)), /*kernel_size=*/{2, 2});
}

torch::Tensor TransitionImpl::forward_pooled(const torch::Tensor& pooled) {
  return observe(*conv_, conv_->forward(pooled));
}

DenseNetDSImpl::DenseNetDSImpl(const DenseNetDSOptions& options_)
    : DSModelImpl("DenseNetDS"), options(options_) {
  const auto& o = options;
  block_channels_ = dense_block_channels(o);  // checks the sizes
  const int64_t num_blocks = static_cast<int64_t>(o.block_layers().size());

  stem_ = register_module("stem", torch::nn::Conv2d(conv_options(o.in_channels(), o.stem_channels(), 3)));
  int64_t channels = o.stem_channels();
  for (int64_t b = 0; b < num_blocks; ++b) {
    std::vector<DenseLayer> block;
    for (int64_t l = 0; l < o.block_layers()[b]; ++l) {
      block.push_back(register_module("block" + std::to_string(b + 1) + "_layer" + std::to_string(l + 1),
                                      DenseLayer(channels, o.growth_rate(), o.block(), o.batch_norm())));
      channels += o.growth_rate();
    }
    blocks_.push_back(std::move(block));
    if (b + 1 < num_blocks) {
      const int64_t out = transition_channels(channels, o.compression());
      transitions_.push_back(register_module("transition" + std::to_string(b + 1), Transition(channels, out, o.batch_norm())));
      channels = out;
    }
  }
  if (o.batch_norm()) final_norm_ = register_module("final_norm", torch::nn::BatchNorm2d(channels));

  std::vector<AuxHeadSpec> aux;
  for (int64_t block : o.aux_after_blocks()) {
    TORCH_CHECK_VALUE(block >= 1 && block < num_blocks, "DenseNetDS: aux head after block ", block,
                      " is invalid; expected a block in [1, ", num_blocks - 1,
                      "] (the last block feeds the main head)");
    aux.push_back({"block" + std::to_string(block), block_channels_[block - 1]});
  }
  register_heads(o.num_classes(), channels, aux, o.aux_hidden());
}

torch::Tensor DenseNetDSImpl::features(const torch::Tensor& x, Taps& taps) {
  return backbone(x, taps, /*pool_final=*/false);
}

torch::Tensor DenseNetDSImpl::backbone(const torch::Tensor& x, Taps& taps, bool pool_final) {
  TORCH_CHECK_VALUE(x.dim() == 4 && x.size(1) == options.in_channels(), "DenseNetDS expects input (N,",
                    options.in_channels(), ",H,W), got ", x.sizes());
  torch::Tensor h = observe(*stem_, stem_->forward(x));
  // The fused block (one feature buffer, hand-written backward) when training with
  // first-order gradients, the inference block when evaluating without gradients; the
  // layer-by-layer path otherwise (LSUV's observer, GradInit's second-order objective,
  // synchronized BatchNorm, Fixup/ReZero layers, no BatchNorm, not float32 on the CPU).
  const bool fusable = !observing() && options.block() == BlockKind::kStandard && options.batch_norm() &&
                       h.device().is_cpu() && h.scalar_type() == torch::kFloat32;
  const bool grad = torch::GradMode::is_enabled();
  const bool fused = fusable && fused_ && is_training() && grad && active_batch_norm_sync() == nullptr;
  const bool inference = fusable && fused_inference_ && !is_training() && !grad;
  for (size_t b = 0; b < blocks_.size(); ++b) {
    const std::string tap = "block" + std::to_string(b + 1);
    const bool has_transition = b < transitions_.size();
    if ((fused || inference) && block_channels_[b] <= kMaxFusedChannels &&
        dense_block_fusable(blocks_[b], /*training=*/fused)) {
      // The block also computes what follows it up to a convolution (BlockTail) when
      // the pooling tiles the map exactly: a transition's BatchNorm+ReLU+2x2 pooling
      // (the transition then only convolves), or for the last block, with
      // `pool_final`, the final BatchNorm+ReLU and the main head's global pooling.
      BlockTail tail;
      if (has_transition && h.size(2) % tail.window == 0 && h.size(3) % tail.window == 0) {
        tail.norm = transitions_[b]->norm();
      } else if (!has_transition && pool_final && h.size(2) == h.size(3)) {
        tail.norm = final_norm_;
        tail.window = h.size(2);
      }
      if (tail.norm && !block_tail_fusable(tail, /*training=*/fused)) tail = BlockTail{};
      // A head reading this block gets the pool the fused block computes.
      const FusedBlockOutput out =
          fused ? dense_block_fused(h, blocks_[b], /*pool=*/taps.wants(tap), tail,
                                    bf16_ ? ConvPrecision::kBFloat16 : ConvPrecision::kFloat32)
                : dense_block_inference(h, blocks_[b], tail);
      const torch::Tensor& block_out =
          out.pooled.defined() ? taps.tap(tap, out.features, out.pooled) : taps.tap(tap, out.features);
      if (out.tail.defined() && has_transition) {
        h = transitions_[b]->forward_pooled(out.tail);
        continue;
      }
      if (out.tail.defined()) return out.tail;  // (N, C_final, 1, 1)
      h = block_out;
    } else {
      // Straightforward dense connectivity: each layer reads the concatenation of all
      // earlier feature maps of the block.
      std::vector<torch::Tensor> maps{h};
      for (auto& layer : blocks_[b]) maps.push_back(layer->forward(torch::cat(maps, /*dim=*/1)));
      h = taps.tap(tap, torch::cat(maps, /*dim=*/1));
    }
    if (has_transition) h = transitions_[b]->forward(h);
  }
  return norm_relu(final_norm_, h);
}

void DenseNetDSImpl::set_bf16_training(bool enabled) {
  if (enabled) {
    const std::string refusal = bf16_refusal(options);
    TORCH_CHECK_VALUE(refusal.empty(), "bf16 training: ", refusal);
  }
  bf16_ = enabled;
}

DSOutput DenseNetDSImpl::forward(const torch::Tensor& x) {
  Taps taps = make_taps();
  // The main head starts with global average pooling: the fused paths may hand it the
  // pooled (N, C, 1, 1) map directly.
  torch::Tensor f = backbone(x, taps, /*pool_final=*/true);
  return apply_heads(f, taps);
}

}  // namespace liondg
