// ResNet-DS: CIFAR-style ResNet with side-tap auxiliary heads.

#include <liondg/models/resnet_ds.h>

namespace liondg {
namespace {
torch::nn::Conv2dOptions conv3x3(int64_t in, int64_t out, int64_t stride) {
  return torch::nn::Conv2dOptions(in, out, /*kernel_size=*/3).stride(stride).padding(1).bias(false);
}
}  // namespace

BasicBlockImpl::BasicBlockImpl(int64_t in_channels, int64_t out_channels, int64_t stride) {
  conv1_ = register_module("conv1", torch::nn::Conv2d(conv3x3(in_channels, out_channels, stride)));
  bn1_ = register_module("bn1", torch::nn::BatchNorm2d(out_channels));
  conv2_ = register_module("conv2", torch::nn::Conv2d(conv3x3(out_channels, out_channels, 1)));
  bn2_ = register_module("bn2", torch::nn::BatchNorm2d(out_channels));
  if (stride != 1 || in_channels != out_channels) {
    shortcut_conv_ = register_module(
        "shortcut_conv",
        torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, out_channels, /*kernel_size=*/1).stride(stride).bias(false)));
    shortcut_bn_ = register_module("shortcut_bn", torch::nn::BatchNorm2d(out_channels));
  }
}

torch::Tensor BasicBlockImpl::forward(const torch::Tensor& x) {
  torch::Tensor branch = bn2_->forward(conv2_->forward(torch::relu(bn1_->forward(conv1_->forward(x)))));
  torch::Tensor identity = shortcut_conv_ ? shortcut_bn_->forward(shortcut_conv_->forward(x)) : x;
  return torch::relu(branch + identity);
}

ResNetDSImpl::ResNetDSImpl(const ResNetDSOptions& options_) : DSModelImpl("ResNetDS"), options(options_) {
  const auto& o = options;
  TORCH_CHECK_VALUE(o.in_channels() > 0, "ResNetDS: in_channels must be > 0, got ", o.in_channels());
  TORCH_CHECK_VALUE(!o.widths().empty() && o.widths().size() == o.blocks_per_stage().size(),
                    "ResNetDS: widths and blocks_per_stage must be non-empty and of equal length, got ",
                    o.widths().size(), " and ", o.blocks_per_stage().size());
  const int64_t num_stages = static_cast<int64_t>(o.widths().size());
  stem_conv_ = register_module("stem_conv", torch::nn::Conv2d(conv3x3(o.in_channels(), o.widths()[0], 1)));
  stem_bn_ = register_module("stem_bn", torch::nn::BatchNorm2d(o.widths()[0]));
  int64_t channels = o.widths()[0];
  for (int64_t s = 0; s < num_stages; ++s) {
    TORCH_CHECK_VALUE(o.widths()[s] > 0, "ResNetDS: width of stage ", s + 1, " must be > 0, got ", o.widths()[s]);
    TORCH_CHECK_VALUE(o.blocks_per_stage()[s] > 0, "ResNetDS: stage ", s + 1, " must have > 0 blocks, got ",
                      o.blocks_per_stage()[s]);
    std::vector<BasicBlock> stage;
    for (int64_t i = 0; i < o.blocks_per_stage()[s]; ++i) {
      const int64_t stride = (s > 0 && i == 0) ? 2 : 1;
      stage.push_back(register_module("stage" + std::to_string(s + 1) + "_block" + std::to_string(i + 1),
                                      BasicBlock(channels, o.widths()[s], stride)));
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
  register_heads(o.num_classes(), channels, aux, o.aux_hidden());
}

torch::Tensor ResNetDSImpl::features(const torch::Tensor& x, Taps& taps) {
  TORCH_CHECK_VALUE(x.dim() == 4 && x.size(1) == options.in_channels(), "ResNetDS expects input (N,",
                    options.in_channels(), ",H,W), got ", x.sizes());
  torch::Tensor h = torch::relu(stem_bn_->forward(stem_conv_->forward(x)));
  for (size_t s = 0; s < stages_.size(); ++s) {
    for (auto& block : stages_[s]) h = block->forward(h);
    // Side-tap: the head reads h; the stream continues with the very same h.
    taps.tap("stage" + std::to_string(s + 1), h);
  }
  return h;
}

DSOutput ResNetDSImpl::forward(const torch::Tensor& x) {
  Taps taps = make_taps();
  torch::Tensor f = features(x, taps);
  return apply_heads(f, taps);
}

}  // namespace liondg
