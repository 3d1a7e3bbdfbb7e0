// Initialization policies: He, Xavier, LION-DG.

#include <liondg/errors.h>
#include <liondg/init/init.h>

#include <torch/nn/init.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

namespace liondg {
namespace {

// Calls `weight_rule(weight)` on every Conv/Linear weight, zeroes their biases,
// and resets every BatchNorm to weight 1, bias 0.
template <typename WeightRule>
void init_layers_(torch::nn::Module& model, WeightRule weight_rule) {
  torch::NoGradGuard no_grad;
  for (auto& module : model.modules(/*include_self=*/true)) {
    torch::Tensor weight, bias;
    if (auto* conv = module->as<torch::nn::Conv2d>()) {
      weight = conv->weight;
      bias = conv->bias;
    } else if (auto* conv1 = module->as<torch::nn::Conv1d>()) {
      weight = conv1->weight;
      bias = conv1->bias;
    } else if (auto* linear = module->as<torch::nn::Linear>()) {
      weight = linear->weight;
      bias = linear->bias;
    } else if (auto* bn = module->as<torch::nn::BatchNorm2d>()) {
      if (bn->weight.defined()) bn->weight.fill_(1.0);
      if (bn->bias.defined()) bn->bias.zero_();
      continue;
    } else if (auto* bn1 = module->as<torch::nn::BatchNorm1d>()) {
      if (bn1->weight.defined()) bn1->weight.fill_(1.0);
      if (bn1->bias.defined()) bn1->bias.zero_();
      continue;
    } else {
      continue;
    }
    weight_rule(weight);
    if (bias.defined()) bias.zero_();
  }
}

}  // namespace

void he_init_(torch::nn::Module& model) {
  init_layers_(model, [](torch::Tensor& w) {
    torch::nn::init::kaiming_normal_(w, /*a=*/0.0, torch::kFanIn, torch::kReLU);
  });
}

void xavier_init_(torch::nn::Module& model) {
  init_layers_(model, [](torch::Tensor& w) { torch::nn::init::xavier_uniform_(w, /*gain=*/1.0); });
}

void zero_aux_heads_(DSModelImpl& model) {
  torch::NoGradGuard no_grad;
  for (int64_t k = 0; k < model.num_aux_heads(); ++k) {
    auto last = model.aux_head(k)->last_layer();
    last->weight.zero_();
    if (last->bias.defined()) last->bias.zero_();
  }
}

void lion_dg_init_(DSModelImpl& model) {
  he_init_(model);
  zero_aux_heads_(model);
}

const std::vector<std::string>& init_policy_names() {
  static const std::vector<std::string> kNames{"he", "xavier", "lion-dg"};
  return kNames;
}

InitPolicy init_policy_from_string(const std::string& name) {
  if (name == "he") return InitPolicy::kHe;
  if (name == "xavier") return InitPolicy::kXavier;
  if (name == "lion-dg") return InitPolicy::kLionDG;
  std::string known;
  for (const auto& n : init_policy_names()) known += (known.empty() ? "" : ", ") + n;
  throw UsageError("unknown init policy '" + name + "'; expected one of: " + known);
}

std::string to_string(InitPolicy policy) {
  switch (policy) {
    case InitPolicy::kHe: return "he";
    case InitPolicy::kXavier: return "xavier";
    case InitPolicy::kLionDG: return "lion-dg";
  }
  return "he";
}

void init_model_(DSModelImpl& model, InitPolicy policy) {
  switch (policy) {
    case InitPolicy::kHe: he_init_(model); return;
    case InitPolicy::kXavier: xavier_init_(model); return;
    case InitPolicy::kLionDG: lion_dg_init_(model); return;
  }
}

void init_model_(DSModelImpl& model, const std::string& policy) {
  init_model_(model, init_policy_from_string(policy));
}

}  // namespace liondg
