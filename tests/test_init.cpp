// Initialization policies: He statistics, LION-DG's exact zeros, Proposition 1.

#include "fixtures.h"

#include <liondg/data/batcher.h>
#include <liondg/errors.h>
#include <liondg/init/init.h>
#include <liondg/train/trainer.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace liondg {
namespace {

std::vector<std::shared_ptr<DSModelImpl>> models_under_test(int64_t aux_hidden = 0) {
  return {std::make_shared<DenseNetDSImpl>(DenseNetDSOptions(10).aux_hidden(aux_hidden)),
          std::make_shared<ResNetDSImpl>(ResNetDSOptions(10).aux_hidden(aux_hidden))};
}

bool is_weight_or_bias_of_layer(const std::string& name) {
  return name.size() > 6 && (name.compare(name.size() - 6, 6, "weight") == 0 || name.compare(name.size() - 4, 4, "bias") == 0);
}

TEST(LionDG, ZeroesExactlyTheAuxLastLayersAndNothingElse) {
  for (int64_t hidden : {0, 16}) {
    for (auto& model : models_under_test(hidden)) {
      torch::manual_seed(0);
      lion_dg_init_(*model);
      std::set<std::string> zeroed;
      for (int64_t k = 0; k < model->num_aux_heads(); ++k) {
        zeroed.insert("aux_heads." + std::to_string(k) + ".fc.weight");
        zeroed.insert("aux_heads." + std::to_string(k) + ".fc.bias");
      }
      for (const auto& item : model->named_parameters()) {
        const std::string& name = item.key();
        const torch::Tensor& p = item.value();
        ASSERT_TRUE(is_weight_or_bias_of_layer(name)) << name;
        if (zeroed.count(name)) {
          EXPECT_TRUE(torch::equal(p, torch::zeros_like(p))) << name << " must be exactly zero";
        } else if (name.find("bias") == std::string::npos && name.find("norm") == std::string::npos &&
                   name.find("bn") == std::string::npos) {
          // Conv / linear weights (and hidden aux layers) stay He-initialized: no zeros.
          EXPECT_GT(p.abs().min().item<float>(), 0.0f) << name << " must not be zeroed";
        }
      }
      EXPECT_GT(model->main_head()->last_layer()->weight.abs().sum().item<float>(), 0.0f);
    }
  }
}

TEST(He, WeightsHaveTheKaimingStandardDeviation) {
  for (auto& model : models_under_test()) {
    torch::manual_seed(1);
    he_init_(*model);
    int checked = 0;
    for (auto& module : model->modules()) {
      torch::Tensor w;
      if (auto* conv = module->as<torch::nn::Conv2d>()) w = conv->weight;
      else if (auto* lin = module->as<torch::nn::Linear>()) w = lin->weight;
      else if (auto* bn = module->as<torch::nn::BatchNorm2d>()) {
        EXPECT_TRUE(torch::equal(bn->weight, torch::ones_like(bn->weight)));
        EXPECT_TRUE(torch::equal(bn->bias, torch::zeros_like(bn->bias)));
        continue;
      } else continue;
      if (w.numel() < 2000) continue;  // too few samples for a tight check
      const double fan_in = static_cast<double>(w.numel() / w.size(0));
      const double expected = std::sqrt(2.0 / fan_in);
      const double measured = w.std().item<double>();
      // Relative standard error of a sample std is ~1/sqrt(2n) <= 1.6% here; allow 8%.
      EXPECT_NEAR(measured / expected, 1.0, 0.08) << "fan_in " << fan_in;
      EXPECT_NEAR(w.mean().item<double>(), 0.0, 4.0 * expected / std::sqrt(static_cast<double>(w.numel())));
      ++checked;
    }
    EXPECT_GT(checked, 5);
  }
}

TEST(Xavier, WeightsWithinTheGlorotBound) {
  auto model = std::make_shared<ResNetDSImpl>(ResNetDSOptions(10));
  xavier_init_(*model);
  for (auto& module : model->modules()) {
    if (auto* conv = module->as<torch::nn::Conv2d>()) {
      const auto& w = conv->weight;
      const double receptive = static_cast<double>(w.size(2) * w.size(3));
      const double bound = std::sqrt(6.0 / (w.size(1) * receptive + w.size(0) * receptive));
      EXPECT_LE(w.abs().max().item<double>(), bound * (1 + 1e-6));
      EXPECT_GT(w.abs().max().item<double>(), 0.9 * bound);
    }
  }
}

TEST(InitPolicy, NamesRoundTripAndUnknownNamesAreRejected) {
  for (const auto& name : init_policy_names()) EXPECT_EQ(to_string(init_policy_from_string(name)), name);
  try {
    init_policy_from_string("kaiming");
    FAIL();
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("'kaiming'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("lion-dg"), std::string::npos);
  }
}

// Proposition 1: at a LION-DG initialization the auxiliary losses send exactly
// zero gradient into the backbone (bitwise), while the heads themselves get gradient.
// Under He, both are non-zero.
TEST(Proposition1, ExactDecouplingForLionDGAndCouplingForHe) {
  DataSource data = testing::tiny_data(/*seed=*/3, /*classes=*/10, /*size=*/32, /*train=*/64, /*test=*/10);
  torch::Tensor x = normalize(data.train.images, channel_stats(data.train.images));
  torch::Tensor y = data.train.labels;
  for (const std::string policy : {"lion-dg", "he"}) {
    for (auto& model : models_under_test()) {
      torch::manual_seed(7);
      init_model_(*model, policy);
      model->train();
      DSOutput out = model->forward(x);
      torch::Tensor aux = torch::zeros({});
      for (const auto& a : out.aux_logits) aux = aux + torch::nn::functional::cross_entropy(a, y);
      aux = 0.3 * aux;
      auto backbone = parameters_of_kind(*model, ParamRole::Kind::kBackbone);
      auto grads = torch::autograd::grad({aux}, backbone, {}, /*retain_graph=*/true, false, /*allow_unused=*/true);
      int64_t nonzero = 0;
      for (const auto& g : grads) {
        if (g.defined()) nonzero += g.ne(0).sum().item<int64_t>();
      }
      const GradientProbe probe = probe_gradients(*model, x, y, /*aux_weight=*/0.3);
      if (policy == "lion-dg") {
        EXPECT_EQ(nonzero, 0) << model->name() << ": backbone gradient must be bitwise zero";
        EXPECT_EQ(probe.backbone_aux_max_abs, 0.0);
        EXPECT_EQ(probe.aux_norm, 0.0);
      } else {
        EXPECT_GT(nonzero, 1000) << model->name();
        EXPECT_GT(probe.backbone_aux_max_abs, 0.0);
      }
      EXPECT_GT(probe.head_aux_max_abs, 0.0) << model->name() << " " << policy;
      EXPECT_GT(probe.main_norm, 0.0);
    }
  }
}

}  // namespace
}  // namespace liondg
