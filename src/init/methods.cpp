// Fixup and ReZero initializations, and the deeply-supervised loss.

#include <liondg/errors.h>
#include <liondg/init/methods.h>
#include <liondg/models/densenet_ds.h>
#include <liondg/models/resnet_ds.h>

#include <torch/nn/functional/loss.h>
#include <torch/nn/init.h>

namespace liondg {
namespace {

// Fan-out He normal: std = sqrt(2 / (C_out * k_h * k_w)), times `scale`.
void he_fan_out_(torch::Tensor& w, double scale) {
  const double fan_out = static_cast<double>(w.size(0) * (w.numel() / (w.size(0) * w.size(1))));
  w.normal_(0.0, std::sqrt(2.0 / fan_out) * scale);
}

std::string module_name(const torch::nn::Module& root, const torch::nn::Module* target) {
  for (const auto& item : root.named_modules("", /*include_self=*/false)) {
    if (item.value().get() == target) return item.key();
  }
  return "?";
}

}  // namespace

torch::Tensor deep_supervision_loss(const DSOutput& out, const torch::Tensor& labels, double aux_weight) {
  torch::Tensor loss = torch::nn::functional::cross_entropy(out.logits, labels);
  for (const auto& logits : out.aux_logits) {
    loss = loss + aux_weight * torch::nn::functional::cross_entropy(logits, labels);
  }
  return loss;
}

FixupReport fixup_init_(DSModelImpl& model) {
  torch::NoGradGuard no_grad;
  FixupReport report;
  auto zero_main_head = [&]() {
    auto fc = model.main_head()->last_layer();
    fc->weight.zero_();
    fc->bias.zero_();
    report.written.push_back("main_head.fc.weight");
    report.written.push_back("main_head.fc.bias");
  };
  if (auto* resnet = dynamic_cast<ResNetDSImpl*>(&model)) {
    TORCH_CHECK_VALUE(resnet->options.block() == BlockKind::kFixup,
                      "fixup needs ResNet-DS built with block kind 'fixup' (got '",
                      to_string(resnet->options.block()), "')");
    report.num_branches = resnet->num_blocks();
    report.branch_layers = 2;
    report.scale = std::pow(static_cast<double>(report.num_branches), -1.0 / (2.0 * report.branch_layers - 2.0));
    for (const auto& stage : resnet->stages()) {
      for (const auto& block : stage) {
        const std::string name = module_name(model, block.get());
        torch::Tensor w1 = block->conv1()->weight;
        he_fan_out_(w1, report.scale);
        block->conv2()->weight.zero_();
        if (block->shortcut_conv()) {
          torch::Tensor ws = block->shortcut_conv()->weight;
          he_fan_out_(ws, 1.0);
          report.written.push_back(name + ".shortcut_conv.weight");
        }
        for (auto* p : {&block->fixup_bias1a, &block->fixup_bias1b, &block->fixup_bias2a, &block->fixup_bias2b}) {
          p->zero_();
        }
        block->fixup_scale.fill_(1.0);
        for (const char* suffix : {".conv1.weight", ".conv2.weight", ".fixup_bias1a", ".fixup_bias1b",
                                   ".fixup_bias2a", ".fixup_bias2b", ".fixup_scale"}) {
          report.written.push_back(name + suffix);
        }
      }
    }
    zero_main_head();
    return report;
  }
  if (auto* densenet = dynamic_cast<DenseNetDSImpl*>(&model)) {
    TORCH_CHECK_VALUE(densenet->options.block() == BlockKind::kFixup,
                      "fixup needs DenseNet-DS built with block kind 'fixup' (got '",
                      to_string(densenet->options.block()), "')");
    report.branch_layers = 1;
    report.scale = 1.0;  // L^(-1/(2m-2)) is undefined for m = 1; the single layer is the zeroed one
    for (const auto& block : densenet->blocks()) {
      for (const auto& layer : block) {
        const std::string name = module_name(model, layer.get());
        layer->conv()->weight.zero_();
        layer->fixup_bias_a.zero_();
        layer->fixup_bias_b.zero_();
        layer->fixup_scale.fill_(1.0);
        for (const char* suffix : {".conv.weight", ".fixup_bias_a", ".fixup_bias_b", ".fixup_scale"}) {
          report.written.push_back(name + suffix);
        }
        ++report.num_branches;
      }
    }
    zero_main_head();
    return report;
  }
  throw UsageError("fixup is defined for resnet-ds and densenet-ds only");
}

std::vector<std::string> rezero_init_(DSModelImpl& model) {
  torch::NoGradGuard no_grad;
  std::vector<std::string> written;
  if (auto* resnet = dynamic_cast<ResNetDSImpl*>(&model)) {
    TORCH_CHECK_VALUE(resnet->options.block() == BlockKind::kReZero,
                      "rezero needs ResNet-DS built with block kind 'rezero' (got '",
                      to_string(resnet->options.block()), "')");
    for (const auto& stage : resnet->stages()) {
      for (const auto& block : stage) {
        block->rezero_gate.zero_();
        written.push_back(module_name(model, block.get()) + ".rezero_gate");
      }
    }
    return written;
  }
  if (auto* densenet = dynamic_cast<DenseNetDSImpl*>(&model)) {
    TORCH_CHECK_VALUE(densenet->options.block() == BlockKind::kReZero,
                      "rezero needs DenseNet-DS built with block kind 'rezero' (got '",
                      to_string(densenet->options.block()), "')");
    for (const auto& block : densenet->blocks()) {
      for (const auto& layer : block) {
        layer->rezero_gate.zero_();
        written.push_back(module_name(model, layer.get()) + ".rezero_gate");
      }
    }
    return written;
  }
  throw UsageError("rezero is defined for resnet-ds and densenet-ds only");
}

}  // namespace liondg
