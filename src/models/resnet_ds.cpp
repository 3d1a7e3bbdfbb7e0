// ResNet-DS: CIFAR-style ResNet with side-tap auxiliary heads.

#include <liondg/models/batch_norm.h>
#include <liondg/models/observe.h>
#include <liondg/models/resnet_ds.h>

namespace liondg {
namespace {
constexpr int64_t kConv3x3Padding = 1;

torch::nn::Conv2dOptions conv3x3(int64_t in, int64_t out, int64_t stride) {
  return torch::nn::Conv2dOptions(in, out, /*kernel_size=*/3).stride(stride).padding(kConv3x3Padding).bias(false);
}

// bn(conv(x)) in evaluation as one convolution (fold_batch_norm); `padding` is the
// convolution's own (conv3x3's, or 0 for the 1x1 projection).
// x: (N,C_in,H,W) -> (N,C_out,H/stride,W/stride)
torch::Tensor conv_batch_norm_folded(const torch::nn::Conv2d& conv, const torch::nn::BatchNorm2d& bn,
                                     const torch::Tensor& x, int64_t padding) {
  const auto folded = fold_batch_norm(conv->weight, conv->bias, bn);
  return torch::conv2d(x, folded.first, folded.second, conv->options.stride(), /*padding=*/padding,
                       conv->options.dilation(), conv->options.groups());
}
}  // namespace

BasicBlockImpl::BasicBlockImpl(int64_t in_channels, int64_t out_channels, int64_t stride, BlockKind kind,
                               bool batch_norm)
    : kind_(kind) {
  conv1_ = register_module("conv1", torch::nn::Conv2d(conv3x3(in_channels, out_channels, stride)));
  if (batch_norm) bn1_ = register_module("bn1", torch::nn::BatchNorm2d(out_channels));
  conv2_ = register_module("conv2", torch::nn::Conv2d(conv3x3(out_channels, out_channels, 1)));
  if (batch_norm) bn2_ = register_module("bn2", torch::nn::BatchNorm2d(out_channels));
  if (stride != 1 || in_channels != out_channels) {
    shortcut_conv_ = register_module(
        "shortcut_conv",
        torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, out_channels, /*kernel_size=*/1).stride(stride).bias(false)));
    if (batch_norm) shortcut_bn_ = register_module("shortcut_bn", torch::nn::BatchNorm2d(out_channels));
  }
  if (kind_ == BlockKind::kFixup) {
    fixup_bias1a = register_parameter("fixup_bias1a", torch::zeros({1}));
    fixup_bias1b = register_parameter("fixup_bias1b", torch::zeros({1}));
    fixup_bias2a = register_parameter("fixup_bias2a", torch::zeros({1}));
    fixup_scale = register_parameter("fixup_scale", torch::ones({1}));
    fixup_bias2b = register_parameter("fixup_bias2b", torch::zeros({1}));
  } else if (kind_ == BlockKind::kReZero) {
    rezero_gate = register_parameter("rezero_gate", torch::zeros({1}));
  }
}

torch::Tensor BasicBlockImpl::shortcut(const torch::Tensor& x) {
  if (!shortcut_conv_) return x;
  torch::Tensor s = observe(*shortcut_conv_, shortcut_conv_->forward(x));
  return shortcut_bn_ ? batch_norm(shortcut_bn_, s) : s;
}

torch::Tensor BasicBlockImpl::forward(const torch::Tensor& x) {
  auto norm = [](torch::nn::BatchNorm2d& bn, const torch::Tensor& t) { return bn ? batch_norm(bn, t) : t; };
  switch (kind_) {
    case BlockKind::kFixup: {
      const torch::Tensor xb = x + fixup_bias1a;
      torch::Tensor b = norm(bn1_, observe(*conv1_, conv1_->forward(xb)));
      b = torch::relu(b + fixup_bias1b);
      b = norm(bn2_, observe(*conv2_, conv2_->forward(b + fixup_bias2a)));
      return torch::relu(b * fixup_scale + fixup_bias2b + shortcut(xb));
    }
    case BlockKind::kReZero: {
      torch::Tensor b = torch::relu(norm(bn1_, observe(*conv1_, conv1_->forward(x))));
      b = torch::relu(norm(bn2_, observe(*conv2_, conv2_->forward(b))));
      return rezero_gate * b + shortcut(x);
    }
    case BlockKind::kStandard:
      break;
  }
  // Every BatchNorm of the block must be foldable (a caller may have put one alone in training mode).
  const bool foldable = batch_norm_foldable(bn1_, x) && batch_norm_foldable(bn2_, x) &&
                        (!shortcut_conv_ || batch_norm_foldable(shortcut_bn_, x));
  if (fused_inference_ && foldable && !observing()) {
    // Evaluation: each convolution with its BatchNorm folded in; in place throughout.
    torch::Tensor b = conv_batch_norm_folded(conv1_, bn1_, x, kConv3x3Padding).relu_();
    b = conv_batch_norm_folded(conv2_, bn2_, b, kConv3x3Padding);
    return b.add_(shortcut_conv_ ? conv_batch_norm_folded(shortcut_conv_, shortcut_bn_, x, /*padding=*/0) : x).relu_();
  }
  // In place on BatchNorm outputs and on the sum, which no backward needs.
  torch::Tensor b = observe(*conv1_, conv1_->forward(x));
  // Both BatchNorms must be fusable (a caller may have put one alone in eval mode).
  if (fused_ && batch_norm_relu_fusable(bn1_, b) && batch_norm_relu_fusable(bn2_, b)) {
    b = observe(*conv2_, conv2_->forward(batch_norm_relu_fused(bn1_, b)));
    return batch_norm_relu_fused(bn2_, b, shortcut(x));  // conv2 observed before the shortcut, as below
  }
  b = bn1_ ? batch_norm(bn1_, b).relu_() : torch::relu(b);
  b = norm(bn2_, observe(*conv2_, conv2_->forward(b)));
  return (b + shortcut(x)).relu_();
}

ResNetDSImpl::ResNetDSImpl(const ResNetDSOptions& options_) : DSModelImpl("ResNetDS"), options(options_) {
  const auto& o = options;
  TORCH_CHECK_VALUE(o.in_channels() > 0, "ResNetDS: in_channels must be > 0, got ", o.in_channels());
  TORCH_CHECK_VALUE(!o.widths().empty() && o.widths().size() == o.blocks_per_stage().size(),
                    "ResNetDS: widths and blocks_per_stage must be non-empty and of equal length, got ",
                    o.widths().size(), " and ", o.blocks_per_stage().size());
  const int64_t num_stages = static_cast<int64_t>(o.widths().size());
  stem_conv_ = register_module("stem_conv", torch::nn::Conv2d(conv3x3(o.in_channels(), o.widths()[0], 1)));
  if (o.batch_norm()) stem_bn_ = register_module("stem_bn", torch::nn::BatchNorm2d(o.widths()[0]));
  int64_t channels = o.widths()[0];
  for (int64_t s = 0; s < num_stages; ++s) {
    TORCH_CHECK_VALUE(o.widths()[s] > 0, "ResNetDS: width of stage ", s + 1, " must be > 0, got ", o.widths()[s]);
    TORCH_CHECK_VALUE(o.blocks_per_stage()[s] > 0, "ResNetDS: stage ", s + 1, " must have > 0 blocks, got ",
                      o.blocks_per_stage()[s]);
    std::vector<BasicBlock> stage;
    for (int64_t i = 0; i < o.blocks_per_stage()[s]; ++i) {
      const int64_t stride = (s > 0 && i == 0) ? 2 : 1;
      stage.push_back(register_module("stage" + std::to_string(s + 1) + "_block" + std::to_string(i + 1),
                                      BasicBlock(channels, o.widths()[s], stride, o.block(), o.batch_norm())));
      stage.back()->set_fused_inference(fused_inference_);
      channels = o.widths()[s];
    }
    stages_.push_back(std::move(stage));
  }
  std::vector<AuxHeadSpec> aux;
  for (int64_t stage : o.aux_after_stages()) {
    TORCH_CHECK_VALUE(stage >= 1 && stage < num_stages, "ResNetDS: aux head after stage ", stage,
                      " is invalid; expected a stage in [1, ", num_stages - 1, "]");
    aux.push_back({"stage" + std::to_string(stage), o.widths()[stage - 1]});
  }
  register_heads(o.num_classes(), channels, aux, o.aux_hidden(), /*feedback=*/o.aux_in_branch());
}

void ResNetDSImpl::set_fused_training(bool enabled) {
  fused_ = enabled;
  for (auto& stage : stages_) {
    for (auto& block : stage) block->set_fused_training(enabled);
  }
}

void ResNetDSImpl::set_fused_inference(bool enabled) {
  fused_inference_ = enabled;
  for (auto& stage : stages_) {
    for (auto& block : stage) block->set_fused_inference(enabled);
  }
}

int64_t ResNetDSImpl::num_blocks() const {
  int64_t n = 0;
  for (const auto& stage : stages_) n += static_cast<int64_t>(stage.size());
  return n;
}

torch::Tensor ResNetDSImpl::features(const torch::Tensor& x, Taps& taps) {
  TORCH_CHECK_VALUE(x.dim() == 4 && x.size(1) == options.in_channels(), "ResNetDS expects input (N,",
                    options.in_channels(), ",H,W), got ", x.sizes());
  torch::Tensor h;
  if (fused_inference_ && batch_norm_foldable(stem_bn_, x) && !observing()) {
    h = conv_batch_norm_folded(stem_conv_, stem_bn_, x, kConv3x3Padding).relu_();
  } else {
    h = observe(*stem_conv_, stem_conv_->forward(x));
    if (fused_ && batch_norm_relu_fusable(stem_bn_, h)) h = batch_norm_relu_fused(stem_bn_, h);
    else h = stem_bn_ ? batch_norm(stem_bn_, h).relu_() : torch::relu(h);
  }
  for (size_t s = 0; s < stages_.size(); ++s) {
    for (auto& block : stages_[s]) h = block->forward(h);
    // Side-tap: the head reads h; the stream continues with the very same h.
    taps.tap("stage" + std::to_string(s + 1), h);
  }
  return h;
}

DSOutput ResNetDSImpl::forward(const torch::Tensor& x) {
  if (!options.aux_in_branch()) {
    Taps taps = make_taps();
    torch::Tensor f = features(x, taps);
    return apply_heads(f, taps);
  }
  // Theorem 1 counter-example: each auxiliary head sits inside a residual branch,
  // stream <- stream + feedback(head(stream)), so auxiliary parameters shape the main path.
  TORCH_CHECK_VALUE(x.dim() == 4 && x.size(1) == options.in_channels(), "ResNetDS expects input (N,",
                    options.in_channels(), ",H,W), got ", x.sizes());
  DSOutput out;
  out.aux_logits.resize(static_cast<size_t>(num_aux_heads()));
  const std::vector<std::string> taps = aux_taps();
  torch::Tensor h = observe(*stem_conv_, stem_conv_->forward(x));
  h = torch::relu(stem_bn_ ? batch_norm(stem_bn_, h) : h);
  for (size_t s = 0; s < stages_.size(); ++s) {
    for (auto& block : stages_[s]) h = block->forward(h);
    const std::string name = "stage" + std::to_string(s + 1);
    for (size_t k = 0; k < taps.size(); ++k) {
      if (taps[k] != name) continue;
      ClassifierHead head = aux_head(static_cast<int64_t>(k));
      out.aux_logits[k] = head->forward(h);
      h = h + head->feedback(out.aux_logits[k]).unsqueeze(-1).unsqueeze(-1);
    }
  }
  out.logits = main_head()->forward(h);
  return out;
}

}  // namespace liondg
