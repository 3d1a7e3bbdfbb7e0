// Init plans and methods: each method's defining property, the audit, presets,
// the auxiliary warmup schedule, and the theory helpers.

#include "fixtures.h"

#include <liondg/data/batcher.h>
#include <liondg/errors.h>
#include <liondg/experiment/theory.h>
#include <liondg/init/init.h>
#include <liondg/init/plan.h>
#include <liondg/models/observe.h>
#include <liondg/train/trainer.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cmath>
#include <limits>

namespace liondg {
namespace {

// Records the output variance of every observed layer (by module name).
struct VarianceRecorder : LayerObserver {
  std::map<const torch::nn::Module*, double> variance;
  void on_output(torch::nn::Module& layer, const torch::Tensor& y) override {
    variance[&layer] = y.to(torch::kFloat64).var(/*unbiased=*/false).item<double>();
  }
};

torch::Tensor calibration_batch(const DataSource& data, int64_t n) {
  return normalize(data.train.images.narrow(0, 0, n), channel_stats(data.train.images));
}

TEST(LSUV, LayerOutputVariancesWithinToleranceAndAuxHeadsUntouched) {
  DataSource data = testing::tiny_data(/*seed=*/1, /*classes=*/4, /*size=*/16, /*train=*/256);
  torch::Tensor x = calibration_batch(data, 128);
  auto model = std::make_shared<DenseNetDSImpl>(testing::tiny_densenet());
  torch::manual_seed(0);
  he_init_(*model);
  std::vector<torch::Tensor> aux_before;
  for (auto& p : parameters_of_kind(*model, ParamRole::Kind::kAuxHead)) aux_before.push_back(p.clone());
  std::vector<torch::Tensor> buffers_before;
  for (auto& b : model->buffers()) buffers_before.push_back(b.clone());

  const LSUVReport report = lsuv_(*model, x, LSUVOptions().tolerance(0.01));
  // stem + 6 dense-layer convs + 2 transitions + main head fc
  ASSERT_EQ(report.layers.size(), 10u);
  EXPECT_TRUE(report.unobserved.empty());
  for (const auto& l : report.layers) {
    EXPECT_TRUE(l.converged) << l.layer;
    EXPECT_NEAR(l.final_variance, 1.0, 0.01) << l.layer;
    EXPECT_EQ(l.layer.rfind("aux_heads", 0), std::string::npos);
  }
  // Auxiliary heads untouched; BatchNorm running statistics restored.
  auto aux_after = parameters_of_kind(*model, ParamRole::Kind::kAuxHead);
  for (size_t i = 0; i < aux_before.size(); ++i) EXPECT_TRUE(torch::equal(aux_before[i], aux_after[i]));
  auto buffers_after = model->buffers();
  for (size_t i = 0; i < buffers_before.size(); ++i) EXPECT_TRUE(torch::equal(buffers_before[i], buffers_after[i]));
  // Independent re-measurement on the calibration batch, BatchNorm in training mode.
  VarianceRecorder rec;
  {
    torch::NoGradGuard no_grad;
    model->train();
    ObserverGuard guard(&rec);
    model->forward(x);
  }
  int checked = 0;
  for (const auto& item : model->named_modules("", false)) {
    if (item.key().rfind("aux_heads", 0) == 0 || !rec.variance.count(item.value().get())) continue;
    EXPECT_NEAR(rec.variance.at(item.value().get()), 1.0, 0.01) << item.key();
    ++checked;
  }
  EXPECT_EQ(checked, 10);
}

TEST(LSUV, HybridZeroesAuxHeadsAfterLSUV) {
  DataSource data = testing::tiny_data(2);
  CalibrationSampler sampler(data.train, channel_stats(data.train.images), 3);
  auto model = std::make_shared<ResNetDSImpl>(testing::tiny_resnet());
  InitPlan plan = init_plan_from_preset("lion-lsuv");
  plan.lsuv.samples(64);
  InitResult r = apply_init_plan_(*model, plan, [&](int64_t n) { return sampler.next(n); });
  for (int64_t k = 0; k < model->num_aux_heads(); ++k) {
    auto fc = model->aux_head(k)->last_layer();
    EXPECT_TRUE(torch::equal(fc->weight, torch::zeros_like(fc->weight)));
    EXPECT_TRUE(torch::equal(fc->bias, torch::zeros_like(fc->bias)));
  }
  auto audit = nlohmann::json::parse(r.audit_json);
  ASSERT_EQ(audit["stages"].size(), 3u);
  EXPECT_EQ(audit["stages"][1]["name"], "lsuv");
  for (const auto& name : audit["stages"][1]["written"]) {
    EXPECT_EQ(name.get<std::string>().rfind("aux_heads", 0), std::string::npos) << name;
  }
  EXPECT_EQ(audit["stages"][2]["name"], "aux:zero");
  // The audit's per-tensor stats: aux fc weight unchanged by lsuv, zero after aux:zero.
  for (const auto& t : audit["tensors"]) {
    if (t["name"] != "aux_heads.0.fc.weight") continue;
    EXPECT_EQ(t["last_written_by"], "aux:zero");
    EXPECT_EQ(t["stages"][1]["before"]["norm"], t["stages"][1]["after"]["norm"]);
    EXPECT_EQ(t["stages"][2]["after"]["norm"].get<double>(), 0.0);
  }
  EXPECT_TRUE(r.warnings.empty()) << r.warnings.front();
}

TEST(Fixup, ZeroBranchEndsScalingAndIdentityAtInit) {
  auto model = std::make_shared<ResNetDSImpl>(ResNetDSOptions(10).block(BlockKind::kFixup));  // 3x3 blocks: L = 9
  torch::manual_seed(0);
  InitResult r = apply_init_plan_(*model, init_plan_from_preset("fixup"));
  EXPECT_EQ(r.fixup.num_branches, 9);
  EXPECT_DOUBLE_EQ(r.fixup.scale, 1.0 / 3.0);  // 9^(-1/(2*2-2))
  for (const auto& stage : model->stages()) {
    for (const auto& block : stage) {
      EXPECT_TRUE(torch::equal(block->conv2()->weight, torch::zeros_like(block->conv2()->weight)));
      EXPECT_EQ(block->fixup_scale.item<float>(), 1.0f);
      EXPECT_EQ(block->fixup_bias1a.item<float>(), 0.0f);
      const auto& w = block->conv1()->weight;
      const double expected = std::sqrt(2.0 / (w.size(0) * 9.0)) / 3.0;
      if (w.numel() >= 4000) {
        EXPECT_NEAR(w.std().item<double>() / expected, 1.0, 0.08);
      }
    }
  }
  auto fc = model->main_head()->last_layer();
  EXPECT_TRUE(torch::equal(fc->weight, torch::zeros_like(fc->weight)));
  EXPECT_GT(model->aux_head(0)->last_layer()->weight.abs().sum().item<float>(), 0.0f);  // aux heads: inherit

  // A residual block at init is its identity path: relu(x + 0) = x for x >= 0.
  model->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::rand({2, 16, 8, 8});
  BasicBlock second = model->stages()[0][1];
  EXPECT_TRUE(torch::allclose(second->forward(x), x));
  // The network's output does not depend on the branches: perturbing every branch's
  // first conv leaves the features unchanged (the zero last conv blocks it).
  torch::Tensor input = torch::randn({2, 3, 16, 16});
  Taps taps1 = Taps({});
  torch::Tensor before = model->features(input, taps1);
  for (const auto& stage : model->stages()) {
    for (const auto& block : stage) block->conv1()->weight.add_(torch::randn_like(block->conv1()->weight));
  }
  Taps taps2 = Taps({});
  EXPECT_TRUE(torch::equal(before, model->features(input, taps2)));
}

TEST(Fixup, NormalizationFreeAndDenseNetAdaptation) {
  auto resnet = std::make_shared<ResNetDSImpl>(ResNetDSOptions(10).block(BlockKind::kFixup).batch_norm(false));
  apply_init_plan_(*resnet, init_plan_from_preset("fixup"));
  for (const auto& item : resnet->named_modules()) EXPECT_EQ(item.value()->as<torch::nn::BatchNorm2d>(), nullptr);
  resnet->train();
  auto out = resnet->forward(torch::randn({4, 3, 16, 16}));
  EXPECT_TRUE(torch::isfinite(out.logits).all().item<bool>());

  auto dense = std::make_shared<DenseNetDSImpl>(testing::tiny_densenet().block(BlockKind::kFixup));
  InitResult r = apply_init_plan_(*dense, init_plan_from_preset("fixup"));
  EXPECT_EQ(r.fixup.num_branches, 6);
  for (const auto& block : dense->blocks()) {
    for (const auto& layer : block) EXPECT_EQ(layer->conv()->weight.abs().max().item<float>(), 0.0f);
  }
  // A model without Fixup scalars is refused with a message.
  auto plain = std::make_shared<ResNetDSImpl>(testing::tiny_resnet());
  EXPECT_THROW(apply_init_plan_(*plain, init_plan_from_preset("fixup")), c10::ValueError);
}

TEST(ReZero, GatesZeroAndNetworkEqualsItsSkipPath) {
  auto model = std::make_shared<ResNetDSImpl>(testing::tiny_resnet().block(BlockKind::kReZero));
  apply_init_plan_(*model, init_plan_from_preset("rezero"));
  model->eval();
  torch::NoGradGuard no_grad;
  for (const auto& stage : model->stages()) {
    for (BasicBlock block : stage) {
      EXPECT_EQ(block->rezero_gate.item<float>(), 0.0f);
      torch::Tensor x = torch::randn({2, block->conv1()->weight.size(1), 8, 8});
      EXPECT_TRUE(torch::equal(block->forward(x), block->shortcut(x)));
    }
  }
  auto dense = std::make_shared<DenseNetDSImpl>(testing::tiny_densenet().block(BlockKind::kReZero));
  apply_init_plan_(*dense, init_plan_from_preset("rezero"));
  dense->eval();
  torch::Tensor x = torch::randn({2, 12, 8, 8});
  DenseLayer first = dense->blocks()[0][0];
  EXPECT_EQ(first->forward(x).abs().max().item<float>(), 0.0f);  // new features start at zero
}

// Fixed calibration batches so that the GradInit objective is comparable before and after.
BatchSource fixed_batches(const DataSource& data) {
  auto stats = std::make_shared<ChannelStats>(channel_stats(data.train.images));
  auto counter = std::make_shared<int64_t>(0);
  return [&data, stats, counter](int64_t n) {
    const int64_t start = ((*counter)++ % 3) * n;
    return std::make_pair(normalize(data.train.images.narrow(0, start, n), *stats), data.train.labels.narrow(0, start, n));
  };
}

double post_step_loss(DSModelImpl& model, const DataSource& data, double eta) {
  // L(S; theta - eta sign(g(S~))) with S~ = batches 0,1 and S = batches 0,2 of 32.
  BatchSource b = fixed_batches(data);
  auto [x0, y0] = b(32);
  auto [x1, y1] = b(32);
  auto [x2, y2] = b(32);
  std::vector<torch::Tensor> buffers;
  for (auto& buf : model.buffers()) buffers.push_back(buf.clone());
  model.train();
  auto params = model.parameters();
  torch::Tensor loss0 = deep_supervision_loss(model.forward(torch::cat({x0, x1})), torch::cat({y0, y1}), 0.3);
  auto g = torch::autograd::grad({loss0}, params, {}, false, false, true);
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> saved;
  for (size_t j = 0; j < params.size(); ++j) {
    saved.push_back(params[j].clone());
    if (g[j].defined()) params[j].sub_(eta * g[j].sign());
  }
  const double loss = deep_supervision_loss(model.forward(torch::cat({x0, x2})), torch::cat({y0, y2}), 0.3).item<double>();
  for (size_t j = 0; j < params.size(); ++j) params[j].copy_(saved[j]);
  auto now = model.buffers();
  for (size_t i = 0; i < buffers.size(); ++i) now[i].copy_(buffers[i]);
  return loss;
}

TEST(GradInit, LowersThePostStepLossAndRespectsMinScale) {
  DataSource data = testing::tiny_data(4, 4, 16, 256);
  auto model = std::make_shared<DenseNetDSImpl>(testing::tiny_densenet());
  torch::manual_seed(1);
  he_init_(*model);
  const double eta = 0.05;
  const double before = post_step_loss(*model, data, eta);
  GradInitOptions o = GradInitOptions().iterations(40).eta(eta).lr(0.02).batch_size(64).min_scale(0.5);
  GradInitReport r = gradinit_(*model, fixed_batches(data), o, 0.3);
  const double after = post_step_loss(*model, data, eta);
  EXPECT_LT(after, before);
  EXPECT_EQ(r.objective_steps, 40);
  bool any_moved = false;
  for (const auto& [name, alpha] : r.scales) {
    EXPECT_GE(alpha, name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0 ? 0.0 : 0.5) << name;
    any_moved |= std::abs(alpha - 1.0) > 1e-3;
  }
  EXPECT_TRUE(any_moved);
}

TEST(GradInit, ViolatedConstraintTakesConstraintSteps) {
  DataSource data = testing::tiny_data(5, 4, 16, 256);
  auto model = std::make_shared<ResNetDSImpl>(testing::tiny_resnet());
  he_init_(*model);
  GradInitReport r = gradinit_(*model, fixed_batches(data),
                               GradInitOptions().iterations(3).gamma(1e-6).batch_size(32).min_scale(0.9), 0.3);
  EXPECT_EQ(r.constraint_steps, 3);
  for (const auto& [name, alpha] : r.scales) {
    if (name.find("bias") == std::string::npos) {
      EXPECT_GE(alpha, 0.9) << name;
    }
  }
}

// GradInit's fast path (DenseNet-DS's fused blocks, ResNet-DS's fused BatchNorm+ReLU,
// channels-last) against the layer-by-layer path: equal within float rounding, provably
// engaged, and undone afterwards. With the constraint on, the first pass of an iteration
// is differentiated twice, which the fused nodes' first-order backward cannot do (they
// refuse), so that pass must not use them: a constrained run must match too.
TEST(GradInit, FastPathMatchesTheStraightforwardPath) {
  DataSource data = testing::tiny_data(8, 4, 16, 256);
  for (const bool resnet : {false, true})
  for (const double gamma : {std::numeric_limits<double>::infinity(), 1e-6}) {
    SCOPED_TRACE(std::string(resnet ? "resnet" : "densenet") + " gamma " + std::to_string(gamma));
    auto make = [resnet]() -> std::shared_ptr<DSModelImpl> {
      std::shared_ptr<DSModelImpl> model;
      if (resnet) model = std::make_shared<ResNetDSImpl>(testing::tiny_resnet());
      else model = std::make_shared<DenseNetDSImpl>(testing::tiny_densenet());
      torch::manual_seed(3);
      he_init_(*model);
      return model;
    };
    auto fast = make();
    auto plain = make();
    const GradInitOptions o = GradInitOptions().iterations(6).lr(0.02).batch_size(64).gamma(gamma);
    // Which path the model is on whenever the calibration draws a batch after the first.
    std::vector<bool> fused_at_draw;
    BatchSource fixed = fixed_batches(data);
    BatchSource spying = [&](int64_t n) {
      fused_at_draw.push_back(fast->fused_training());
      return fixed(n);
    };
    std::vector<torch::Tensor> running_before;
    for (const auto& b : fast->buffers()) running_before.push_back(b.clone());

    const GradInitReport a = gradinit_(*fast, spying, o, 0.3);
    const GradInitReport b = gradinit_(*plain, fixed_batches(data), GradInitOptions(o).fused(false).channels_last(false), 0.3);

    ASSERT_GT(fused_at_draw.size(), 3u);
    // The switch is set after an iteration's first two draws. Unconstrained: fused from
    // then on. Constrained: only constraint passes ran, never fused.
    const bool expect_fused = std::isinf(gamma);
    for (size_t i = 2; i < fused_at_draw.size(); ++i) EXPECT_EQ(fused_at_draw[i], expect_fused) << "draw " << i;
    EXPECT_EQ(a.objective_steps, b.objective_steps);
    EXPECT_EQ(a.constraint_steps, b.constraint_steps);
    EXPECT_NEAR(a.initial_objective, b.initial_objective, 1e-4 * std::abs(b.initial_objective));
    EXPECT_NEAR(a.final_objective, b.final_objective, 1e-4 * std::abs(b.final_objective));
    ASSERT_EQ(a.scales.size(), b.scales.size());
    for (size_t j = 0; j < a.scales.size(); ++j) {
      EXPECT_NEAR(a.scales[j].second, b.scales[j].second, 1e-4) << a.scales[j].first;
    }
    // Undone: the model's switch, the weights' layout, the running statistics.
    EXPECT_FALSE(fast->fused_training());
    for (const auto& p : fast->parameters()) EXPECT_TRUE(p.is_contiguous());
    const auto running_after = fast->buffers();
    for (size_t i = 0; i < running_before.size(); ++i) EXPECT_TRUE(running_after[i].equal(running_before[i]));
  }
}

TEST(InitAudit, FlagsAnOverwriteAndAnUnobservedLayer) {
  DataSource data = testing::tiny_data(6);
  CalibrationSampler sampler(data.train, channel_stats(data.train.images), 1);
  auto model = std::make_shared<DenseNetDSImpl>(testing::tiny_densenet());
  InitPlan plan = resolve_init_plan("gradinit", "", "zero");
  plan.gradinit.iterations(2).batch_size(16);
  InitResult r = apply_init_plan_(*model, plan, [&](int64_t n) { return sampler.next(n); });
  bool flagged = false;
  for (const auto& w : r.warnings) flagged |= w.find("overwrote aux_heads.0.fc.weight") != std::string::npos;
  EXPECT_TRUE(flagged);

  // A user backbone that does not call observe(): LSUV cannot see its layers.
  struct Silent : TapBackboneImpl {
    Silent() { conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3).padding(1))); }
    torch::Tensor forward(const torch::Tensor& x, Taps& taps) override { return taps.tap("c", conv->forward(x)); }
    torch::nn::Conv2d conv{nullptr};
  };
  DeeplySupervised net(std::make_shared<Silent>(), DeeplySupervisedOptions(4, 4).tap("c", 4));
  InitPlan lsuv = init_plan_from_preset("lsuv");
  lsuv.lsuv.samples(16);
  InitResult r2 = apply_init_plan_(*net, lsuv, [&](int64_t n) { return sampler.next(n); });
  bool unobserved = false;
  for (const auto& w : r2.warnings) unobserved |= w.find("backbone.conv never reported") != std::string::npos;
  EXPECT_TRUE(unobserved);
}

TEST(InitPlan, PresetsResolveToTheRightPlan) {
  EXPECT_EQ(init_plan_from_preset("lion-dg").describe(), "he+zero");
  EXPECT_EQ(init_plan_from_preset("lion-lsuv").describe(), "lsuv+zero");
  EXPECT_EQ(init_plan_from_preset("lsuv").describe(), "lsuv+inherit");
  EXPECT_EQ(init_plan_from_preset("fixup").required_block(), BlockKind::kFixup);
  EXPECT_EQ(init_plan_from_preset("rezero").required_block(), BlockKind::kReZero);
  EXPECT_TRUE(init_plan_from_preset("gradinit").needs_data());
  EXPECT_FALSE(init_plan_from_preset("he").needs_data());
  EXPECT_EQ(resolve_init_plan("he", "", "small").describe(), "he+small");
  EXPECT_EQ(resolve_init_plan("lion-dg", "xavier", "").describe(), "xavier+zero");
  EXPECT_THROW(init_plan_from_preset("kaiming"), UsageError);
  EXPECT_THROW(resolve_init_plan("he", "orthogonal", ""), UsageError);
  EXPECT_THROW(resolve_init_plan("he", "", "ones"), UsageError);
  // aux policy `small`: N(0, 0.001^2) on the logits layer.
  auto model = std::make_shared<DenseNetDSImpl>(DenseNetDSOptions(100));
  apply_init_plan_(*model, resolve_init_plan("he", "", "small"));
  EXPECT_NEAR(model->aux_head(1)->last_layer()->weight.std().item<double>(), 0.001, 0.0001);
}

TEST(AuxSchedule, LinearWarmupValues) {
  TrainOptions constant;
  EXPECT_EQ(aux_weight_at(constant, 1), 0.3);
  EXPECT_EQ(aux_weight_at(constant, 1000), 0.3);
  TrainOptions warm = TrainOptions().aux_warmup_steps(10);
  EXPECT_EQ(aux_weight_at(warm, 1), 0.0);
  EXPECT_NEAR(aux_weight_at(warm, 6), 0.15, 1e-12);
  EXPECT_NEAR(aux_weight_at(warm, 11), 0.3, 1e-12);
  EXPECT_NEAR(aux_weight_at(warm, 500), 0.3, 1e-12);
}

TEST(Theory, LineFitAndGrowthFromZero) {
  LineFit f = fit_line({0, 1, 2, 3}, {1, 3, 5, 7});
  EXPECT_NEAR(f.slope, 2.0, 1e-12);
  EXPECT_NEAR(f.intercept, 1.0, 1e-12);
  EXPECT_NEAR(f.r2, 1.0, 1e-12);
  EXPECT_LT(fit_line({0, 1, 2, 3}, {0, 3, 0, 3}).r2, 0.5);

  TheoryConfig c;
  c.dataset = "synthetic";
  c.synthetic.num_classes = 4;
  c.synthetic.height = c.synthetic.width = 16;
  c.synthetic.train_size = 256;
  c.model.growth_rate = 4;
  c.model.block_layers = {2, 2, 2};
  c.steps = 25;
  c.fit_steps = 10;
  c.batch_size = 32;
  auto series = verify_growth(c, "");
  ASSERT_EQ(series.size(), 2u);
  for (const auto& s : series) {
    EXPECT_EQ(s.head_norms[0][0], 0.0);  // starts at exactly zero
    EXPECT_GT(s.head_norms[0].back(), 0.0);
    EXPECT_GT(s.fits[0].r2, 0.9) << s.optimizer;
  }
  // AdamW's first update moves every weight by ~lr: ||W_1|| ~ lr * sqrt(n).
  const auto& adamw = series[1];
  EXPECT_NEAR(adamw.head_norms[0][1] / adamw.sign_prediction[0], 1.0, 0.2);
}

}  // namespace
}  // namespace liondg
