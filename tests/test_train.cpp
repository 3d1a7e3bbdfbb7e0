// Training: learning on synthetic data, determinism, steps-to-target,
// gradient diagnostics, divergence, and the run directory.

#include "expect.h"
#include "fixtures.h"

#include <liondg/errors.h>
#include <liondg/experiment/decoupling.h>
#include <liondg/experiment/run.h>
#include <liondg/init/init.h>
#include <liondg/models/batch_norm.h>
#include <liondg/models/observe.h>
#include <liondg/models/registry.h>
#include <liondg/train/distributed.h>
#include <liondg/train/trainer.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <functional>
#include <limits>

namespace liondg {
namespace {

using Collector = testing::RecordCollector;

TrainOptions fast_options() {
  return TrainOptions().steps(40).batch_size(32).grad_every(5).eval_every(20).target_window(10).target_acc(0.6);
}

struct Trained {
  TrainSummary summary;
  Collector records;
};

Trained train_tiny(const std::string& policy, uint64_t seed, TrainOptions options = fast_options(),
                   bool resnet = false) {
  DataSource data = testing::tiny_data(/*seed=*/11);
  torch::manual_seed(seed);
  std::shared_ptr<DSModelImpl> model;
  if (resnet) model = std::make_shared<ResNetDSImpl>(testing::tiny_resnet());
  else model = std::make_shared<DenseNetDSImpl>(testing::tiny_densenet());
  init_model_(*model, policy);
  Trained t;
  t.summary = train(*model, data, options.seed(seed), {&t.records});
  return t;
}

TEST(Train, ShortRunLowersTheLossAndBeatsChance) {
  for (bool resnet : {false, true}) {
    Trained t = train_tiny("lion-dg", 42, fast_options(), resnet);
    ASSERT_EQ(t.summary.status, "completed");
    ASSERT_EQ(t.records.steps.size(), 40u);
    double first = 0, last = 0;
    for (int i = 0; i < 5; ++i) first += t.records.steps[i].main_loss / 5;
    for (int i = 35; i < 40; ++i) last += t.records.steps[i].main_loss / 5;
    EXPECT_LT(last, 0.7 * first) << (resnet ? "resnet" : "densenet");
    EXPECT_GT(t.summary.final_eval.main_acc, 0.5) << "chance is 0.25";  // 4 classes
    ASSERT_EQ(t.summary.final_eval.aux_accs.size(), 2u);
    ASSERT_EQ(t.records.evals.size(), 2u);  // step 20 and the final one
    EXPECT_EQ(t.records.evals[0].step, 20);
    EXPECT_EQ(t.records.evals[1].step, 40);
  }
}

TEST(Train, SameSeedGivesIdenticalMetrics) {
  Trained a = train_tiny("he", 5), b = train_tiny("he", 5), c = train_tiny("he", 6);
  ASSERT_EQ(a.records.steps.size(), b.records.steps.size());
  bool differs_from_c = false;
  for (size_t i = 0; i < a.records.steps.size(); ++i) {
    const auto &x = a.records.steps[i], &y = b.records.steps[i];
    EXPECT_EQ(x.loss, y.loss) << "step " << x.step;
    EXPECT_EQ(x.main_acc, y.main_acc);
    EXPECT_EQ(x.aux_losses, y.aux_losses);
    EXPECT_TRUE(std::isnan(x.grad_main_norm) ? std::isnan(y.grad_main_norm) : x.grad_main_norm == y.grad_main_norm);
    differs_from_c |= x.loss != c.records.steps[i].loss;
  }
  EXPECT_EQ(a.summary.final_eval.main_acc, b.summary.final_eval.main_acc);
  EXPECT_EQ(a.summary.final_eval.aux_accs, b.summary.final_eval.aux_accs);
  EXPECT_EQ(a.summary.steps_to_target, b.summary.steps_to_target);
  EXPECT_TRUE(differs_from_c);
}

// The fast path (fused dense blocks, channels-last activations and weights, in-place
// ReLU on BatchNorm outputs, prefetched batches) against the straightforward one
// (layer by layer, NCHW, no prefetch).
// Stated tolerances: gradients of one step from the same parameters agree to 1e-4
// relative (norm of the difference / norm); losses over 10 AdamW steps to 1e-4
// relative. (Parameters after several AdamW steps are not compared element-wise:
// AdamW's normalized update lr * m / sqrt(v) turns rounding-level gradient differences
// on near-zero coordinates into differences of up to 2 * lr.)
TEST(Train, FastPathMatchesTheStraightforwardPath) {
  // The fused kernels split pixels over threads (per-thread partial sums): one and two.
  const int threads_before = torch::get_num_threads();
  for (int threads : {1, 2})
  for (bool resnet : {false, true}) {
    torch::set_num_threads(threads);
    const std::string name = std::string(resnet ? "resnet" : "densenet") + " threads " + std::to_string(threads);
    auto make = [&] {
      torch::manual_seed(3);
      std::shared_ptr<DSModelImpl> model;
      if (resnet) model = std::make_shared<ResNetDSImpl>(testing::tiny_resnet());
      else model = std::make_shared<DenseNetDSImpl>(testing::tiny_densenet());
      init_model_(*model, "he");  // nonzero aux heads: every gradient path is exercised
      return model;
    };
    // One step's gradients. 16x16 inputs: both DenseNet transitions are computed by
    // the blocks before them (BlockTail); 14x14: the second transition's 7x7 input is
    // not tiled by its 2x2 pooling, so that one runs on its own.
    DataSource data = testing::tiny_data(/*seed=*/11);
    const torch::Tensor y = data.train.labels.narrow(0, 0, 32);
    for (int64_t size : {16, 14}) {
      const torch::Tensor x = size == 16
                                  ? normalize(data.train.images.narrow(0, 0, 32), channel_stats(data.train.images))
                                  : torch::randn({32, 3, size, size});
      const std::string case_name = name + " size " + std::to_string(size);
      std::shared_ptr<DSModelImpl> plain = make(), fast = make();
      to_channels_last_(*fast);
      fast->set_fused_training(true);
      compute_losses(plain->forward(x), y, 0.3).total.backward();
      compute_losses(fast->forward(x.contiguous(torch::MemoryFormat::ChannelsLast)), y, 0.3).total.backward();
      const auto pp = plain->named_parameters(), fp = fast->named_parameters();
      for (const auto& item : pp) {
        const torch::Tensor& g0 = item.value().grad();
        const torch::Tensor& g1 = fp[item.key()].grad();
        ASSERT_TRUE(g0.defined() && g1.defined()) << case_name << " " << item.key();
        EXPECT_LE((g0 - g1).norm().item<double>(), 1e-4 * g0.norm().item<double>() + 1e-12)
            << case_name << " " << item.key();
        if (item.value().dim() == 4) {
          EXPECT_TRUE(fp[item.key()].is_contiguous(torch::MemoryFormat::ChannelsLast));
        }
      }
      // The fused block updates BatchNorm's running statistics like BatchNorm2d.
      const auto pb = plain->named_buffers(), fb = fast->named_buffers();
      for (const auto& item : pb) {
        const torch::Tensor d = (item.value().to(torch::kFloat64) - fb[item.key()].to(torch::kFloat64)).abs();
        EXPECT_LE(d.max().item<double>(), 1e-5 * (1 + item.value().abs().max().item<double>()))
            << case_name << " " << item.key();
      }
    }
    // Whole training runs.
    std::vector<Collector> records(2);
    for (int f = 0; f < 2; ++f) {
      std::shared_ptr<DSModelImpl> model = make();
      TrainOptions o = fast_options().steps(10).eval_every(0).channels_last(f == 1).prefetch(f == 1).fused(f == 1);
      train(*model, data, o.seed(3), {&records[f]});
    }
    for (size_t i = 0; i < records[0].steps.size(); ++i) {
      const double a = records[0].steps[i].loss, b = records[1].steps[i].loss;
      EXPECT_NEAR(a, b, 1e-4 * std::abs(a)) << name << " step " << i + 1;
    }
  }
  torch::set_num_threads(threads_before);
}

// Running statistics away from (0, 1) (three training-mode batches of shifted, scaled
// inputs) and BatchNorm affine parameters (those whose name contains `key`) away from
// (1, 0); the model is left in eval mode. x: (16,3,12,12) batches.
void give_batch_norms_non_trivial_state(DSModelImpl& model, const std::string& key) {
  torch::NoGradGuard no_grad;
  model.train();
  for (int i = 0; i < 3; ++i) model.forward(torch::randn({16, 3, 12, 12}) * 2 + 0.5);
  for (auto& p : model.named_parameters()) {
    if (p.key().find(key) != std::string::npos) p.value().add_(torch::randn_like(p.value()) * 0.3);
  }
  model.eval();
}

// Evaluation through the fused inference block (one feature buffer) against the
// layer-by-layer concatenation: logits of every head agree to 1e-5 relative, with
// trained (non-trivial) running statistics, channels-last and NCHW inputs, one and two
// threads. Stated tolerance: BatchNorm as x * a + b instead of (x - mean) / std * gamma
// + beta rounds differently.
TEST(Train, FusedInferenceMatchesTheStraightforwardPath) {
  const int threads_before = torch::get_num_threads();
  torch::manual_seed(5);
  DenseNetDS model(testing::tiny_densenet());
  init_model_(*model, "he");
  give_batch_norms_non_trivial_state(*model, /*key=*/"norm");
  const torch::Tensor x = torch::randn({9, 3, 12, 12});
  for (int threads : {1, 2}) {
    torch::set_num_threads(threads);
    for (bool cl : {false, true}) {
      const torch::Tensor input = cl ? x.contiguous(torch::MemoryFormat::ChannelsLast) : x;
      torch::InferenceMode inference;
      model->set_fused_inference(false);
      const DSOutput plain = model->forward(input);
      model->set_fused_inference(true);
      const DSOutput fused = model->forward(input);
      auto close = [](const torch::Tensor& a, const torch::Tensor& b) {
        return (a - b).abs().max().item<double>() <= 1e-5 * (1 + a.abs().max().item<double>());
      };
      EXPECT_TRUE(close(plain.logits, fused.logits)) << "threads " << threads << " channels-last " << cl;
      ASSERT_EQ(plain.aux_logits.size(), fused.aux_logits.size());
      for (size_t k = 0; k < plain.aux_logits.size(); ++k) {
        EXPECT_TRUE(close(plain.aux_logits[k], fused.aux_logits[k])) << "aux " << k << " threads " << threads;
      }
      // Not the same computation: the fused path really ran (a bit-identical result
      // would mean the switch did nothing).
      EXPECT_FALSE(torch::equal(plain.logits, fused.logits)) << "threads " << threads << " channels-last " << cl;
    }
  }
  // The block alone: the same buffer layout as the concatenation.
  torch::InferenceMode inference;
  const torch::Tensor h = torch::randn({4, 12, 6, 6});
  const torch::Tensor block = dense_block_inference(h, model->blocks()[0]).features;
  std::vector<torch::Tensor> maps{h};
  for (DenseLayer layer : model->blocks()[0]) maps.push_back(layer->forward(torch::cat(maps, /*dim=*/1)));
  const torch::Tensor expected = torch::cat(maps, /*dim=*/1);
  EXPECT_TRUE(block.is_contiguous(torch::MemoryFormat::ChannelsLast));
  EXPECT_LE((block - expected).abs().max().item<double>(), 1e-5 * (1 + expected.abs().max().item<double>()));
  torch::set_num_threads(threads_before);
}

// ResNet-DS evaluation with every BatchNorm folded into the convolution before it
// against the layer-by-layer composition: logits of every head agree to 1e-5 relative
// with non-trivial running statistics and affine parameters, channels-last and NCHW,
// one and two threads, under InferenceMode and under NoGradGuard. The folded path is
// not taken with gradients on, in training mode or with a layer observer (LSUV): then
// the result is the composition's, bit for bit; a block with one BatchNorm alone in
// training mode is not folded. Stated tolerance: W * s and
// b' = beta - mean * s round differently from normalizing the convolution's output.
TEST(Train, FoldedInferenceMatchesTheComposition) {
  const int threads_before = torch::get_num_threads();
  torch::manual_seed(6);
  ResNetDS model(testing::tiny_resnet());
  init_model_(*model, "he");
  give_batch_norms_non_trivial_state(*model, /*key=*/"bn");
  auto close = [](const torch::Tensor& a, const torch::Tensor& b) {
    return (a - b).abs().max().item<double>() <= 1e-5 * (1 + a.abs().max().item<double>());
  };
  const torch::Tensor x = torch::randn({9, 3, 12, 12});
  for (int threads : {1, 2}) {
    torch::set_num_threads(threads);
    for (bool cl : {false, true}) {
      for (bool inference_mode : {false, true}) {
        const torch::Tensor input = cl ? x.contiguous(torch::MemoryFormat::ChannelsLast) : x;
        const auto evaluate = [&](bool fold) {
          model->set_fused_inference(fold);
          if (inference_mode) {
            torch::InferenceMode guard;
            return model->forward(input);
          }
          torch::NoGradGuard guard;
          return model->forward(input);
        };
        const DSOutput plain = evaluate(/*fold=*/false);
        const DSOutput folded = evaluate(/*fold=*/true);
        const std::string where = "threads " + std::to_string(threads) + " channels-last " + std::to_string(cl) +
                                  " inference mode " + std::to_string(inference_mode);
        EXPECT_TRUE(close(plain.logits, folded.logits)) << where;
        ASSERT_EQ(plain.aux_logits.size(), folded.aux_logits.size());
        for (size_t k = 0; k < plain.aux_logits.size(); ++k) {
          EXPECT_TRUE(close(plain.aux_logits[k], folded.aux_logits[k])) << "aux " << k << " " << where;
        }
        // A different computation ran (bit-identical would mean the switch did nothing).
        EXPECT_FALSE(torch::equal(plain.logits, folded.logits)) << where;
      }
    }
  }
  torch::set_num_threads(threads_before);
  // Where folding does not apply, the switch changes nothing.
  const auto plain_logits = [&](auto&& run) {
    model->set_fused_inference(false);
    const torch::Tensor a = run().logits.detach();
    model->set_fused_inference(true);
    const torch::Tensor b = run().logits.detach();
    return torch::equal(a, b);
  };
  EXPECT_TRUE(plain_logits([&] { return model->forward(x); })) << "gradients on";
  struct Silent : LayerObserver {
    void on_output(torch::nn::Module& /*layer*/, const torch::Tensor& /*output*/) override {}
  } observer;
  EXPECT_TRUE(plain_logits([&] {
    torch::NoGradGuard no_grad;
    ObserverGuard guard(&observer);
    return model->forward(x);
  })) << "observer";
  // One BatchNorm of a block alone in training mode: that block is not folded (it
  // normalizes with the batch's statistics, as the composition does), the others are.
  model->named_modules()["stage2_block1.shortcut_bn"]->train();
  {
    torch::NoGradGuard no_grad;
    model->set_fused_inference(false);
    const torch::Tensor plain = model->forward(x).logits;
    model->set_fused_inference(true);
    EXPECT_TRUE(close(plain, model->forward(x).logits)) << "one BatchNorm in training mode";
  }
  // Training mode normalizes with the batch's statistics (the running ones it updates
  // do not enter the output).
  torch::NoGradGuard no_grad;
  model->train();
  EXPECT_TRUE(plain_logits([&] { return model->forward(x); })) << "training mode";
}

// fold_batch_norm on its own: a convolution with a bias and a BatchNorm without affine
// parameters, W' in W's memory format; a BatchNorm without running statistics is refused.
TEST(Train, FoldBatchNormMatchesTheComposition) {
  torch::manual_seed(7);
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(4, 6, /*kernel_size=*/3).padding(1).bias(true));
  torch::nn::BatchNorm2d bn(torch::nn::BatchNorm2dOptions(6).affine(false));
  torch::NoGradGuard no_grad;
  bn->running_mean.uniform_(-1, 1);
  bn->running_var.uniform_(0.5, 2);
  bn->eval();
  conv->weight.set_data(conv->weight.contiguous(torch::MemoryFormat::ChannelsLast));
  const torch::Tensor x = torch::randn({3, 4, 7, 7});
  const auto folded = fold_batch_norm(conv->weight, conv->bias, bn);
  EXPECT_TRUE(folded.first.is_contiguous(torch::MemoryFormat::ChannelsLast));
  const torch::Tensor expected = bn->forward(conv->forward(x));
  const torch::Tensor got = torch::conv2d(x, folded.first, folded.second, /*stride=*/1, /*padding=*/1);
  EXPECT_LE((got - expected).abs().max().item<double>(), 1e-5 * (1 + expected.abs().max().item<double>()));
  EXPECT_TRUE(batch_norm_foldable(bn, x));
  torch::nn::BatchNorm2d batch_stats(torch::nn::BatchNorm2dOptions(6).track_running_stats(false));
  batch_stats->eval();
  EXPECT_FALSE(batch_norm_foldable(batch_stats, x));
  testing::expect_throws<c10::ValueError>([&] { fold_batch_norm(conv->weight, conv->bias, batch_stats); },
                                          {"without running statistics"});
}

// A fused block's tail (BatchNorm+ReLU+average pooling of the block output, computed
// from the block's own statistics) against the same layers applied one by one: values,
// every gradient (block input, dense layers, the tail's BatchNorm) and running
// statistics, for the transition's 2x2 tiles, 3x3 tiles and one 6x6 tile (the final
// global pool), training and evaluation, with gradients reaching the block output
// directly as well as through the tail.
// Tolerances as in FastPathMatchesTheStraightforwardPath.
TEST(Train, FusedBlockTailMatchesTheStraightforwardPath) {
  const int threads_before = torch::get_num_threads();
  for (int threads : {1, 2})
  for (int64_t window : {2, 3, 6}) {  // 6: one tile, the global pool
    torch::set_num_threads(threads);
    const std::string name = "threads " + std::to_string(threads) + " window " + std::to_string(window);
    auto make = [&] {
      torch::manual_seed(21);
      DenseNetDS model(testing::tiny_densenet());
      init_model_(*model, "he");
      torch::nn::BatchNorm2d norm(model->block_channels()[0]);
      torch::NoGradGuard no_grad;
      norm->weight.uniform_(0.5, 1.5);  // away from the (1, 0) init, so the affine map matters
      norm->bias.uniform_(-0.5, 0.5);
      return std::make_pair(model, norm);
    };
    auto [plain_model, plain_norm] = make();
    auto [fast_model, fast_norm] = make();
    torch::manual_seed(22);
    const torch::Tensor x0 = torch::randn({5, 12, 6, 6});
    const torch::Tensor weight_tail = torch::randn({5, 24, 6 / window, 6 / window});
    const torch::Tensor weight_features = torch::randn({5, 24, 6, 6});
    // The layer-by-layer block, its output normalized, rectified and pooled.
    const torch::Tensor xp = x0.clone().requires_grad_(true);
    std::vector<torch::Tensor> maps{xp};
    for (DenseLayer layer : plain_model->blocks()[0]) maps.push_back(layer->forward(torch::cat(maps, /*dim=*/1)));
    const torch::Tensor features = torch::cat(maps, /*dim=*/1);
    const torch::Tensor tail = torch::avg_pool2d(plain_norm->forward(features).relu(), /*kernel_size=*/{window, window});
    ((tail * weight_tail).sum() + (features * weight_features).sum()).backward();
    // The fused block with the tail.
    const torch::Tensor xf = x0.clone().requires_grad_(true);
    const FusedBlockOutput out =
        dense_block_fused(xf, fast_model->blocks()[0], /*pool=*/false, BlockTail{fast_norm, window});
    ASSERT_TRUE(out.tail.defined()) << name;
    ASSERT_EQ(out.tail.sizes(), tail.sizes()) << name;
    const auto close = [](const torch::Tensor& a, const torch::Tensor& b, double tol) {
      return (a - b).norm().item<double>() <= tol * a.norm().item<double>() + 1e-12;
    };
    EXPECT_TRUE(close(tail, out.tail, 1e-5)) << name;
    ((out.tail * weight_tail).sum() + (out.features * weight_features).sum()).backward();
    EXPECT_TRUE(close(xp.grad(), xf.grad(), 1e-4)) << name;
    const auto pp = plain_model->named_parameters(), fp = fast_model->named_parameters();
    for (const auto& item : pp) {
      if (item.key().rfind("block1_", 0) != 0) continue;
      ASSERT_TRUE(fp[item.key()].grad().defined()) << name << " " << item.key();
      EXPECT_TRUE(close(item.value().grad(), fp[item.key()].grad(), 1e-4)) << name << " " << item.key();
    }
    EXPECT_TRUE(close(plain_norm->weight.grad(), fast_norm->weight.grad(), 1e-4)) << name;
    EXPECT_TRUE(close(plain_norm->bias.grad(), fast_norm->bias.grad(), 1e-4)) << name;
    EXPECT_TRUE(close(plain_norm->running_mean, fast_norm->running_mean, 1e-5)) << name;
    EXPECT_TRUE(close(plain_norm->running_var, fast_norm->running_var, 1e-5)) << name;
    EXPECT_EQ(fast_norm->num_batches_tracked.item<int64_t>(), 1) << name;
    // Evaluation: running statistics (the ones just updated).
    {
      torch::InferenceMode inference;
      plain_model->eval();
      plain_norm->eval();
      std::vector<torch::Tensor> eval_maps{x0};
      for (DenseLayer layer : plain_model->blocks()[0]) {
        eval_maps.push_back(layer->forward(torch::cat(eval_maps, /*dim=*/1)));
      }
      const torch::Tensor expected =
          torch::avg_pool2d(plain_norm->forward(torch::cat(eval_maps, /*dim=*/1)).relu(), {window, window});
      fast_model->eval();
      fast_norm->eval();
      const FusedBlockOutput eval_out = dense_block_inference(x0, fast_model->blocks()[0], BlockTail{fast_norm, window});
      EXPECT_TRUE(close(expected, eval_out.tail, 1e-5)) << name;
    }
  }
  torch::set_num_threads(threads_before);
  // A window that does not tile the map is refused, naming the sizes.
  DenseNetDS model(testing::tiny_densenet());
  torch::nn::BatchNorm2d norm(model->block_channels()[0]);
  testing::expect_throws<c10::Error>(
      [&] { dense_block_fused(torch::randn({2, 12, 5, 5}), model->blocks()[0], /*pool=*/false, BlockTail{norm, 2}); },
      {"window 2", "must tile the 5x5 map"});
}

// DenseNet-DS's fused blocks take only the BatchNorms they implement; for any other the
// block runs layer by layer, or its tail is left to the transition or the final
// BatchNorm: one BatchNorm switched alone to the other mode, momentum None (cumulative
// average) or a momentum that differs between a block's layers. For each, a training
// step with the fused blocks on agrees with the layer-by-layer one (gradients 1e-4
// relative, running statistics 1e-5, as in FastPathMatchesTheStraightforwardPath) and
// so does evaluation (logits 1e-5); the fused functions refuse such layers, naming the
// layer and why.
TEST(Train, FusedDenseNetTakesOnlyTheBatchNormsItImplements) {
  using Change = std::function<void(DenseNetDSImpl&)>;
  const auto norm_of = [](DenseNetDSImpl& m, const std::string& name) {
    return m.named_modules()[name]->as<torch::nn::BatchNorm2d>();
  };
  const std::vector<std::pair<std::string, Change>> training_cases{
      {"a layer's BatchNorm in eval mode", [](DenseNetDSImpl& m) { m.blocks()[0][1]->norm()->eval(); }},
      {"a transition's BatchNorm in eval mode", [&](DenseNetDSImpl& m) { norm_of(m, "transition1.norm")->eval(); }},
      {"the final BatchNorm in eval mode", [&](DenseNetDSImpl& m) { norm_of(m, "final_norm")->eval(); }},
      {"a layer with momentum None",
       [](DenseNetDSImpl& m) { m.blocks()[1][0]->norm()->options.momentum(c10::nullopt); }},
      {"the final BatchNorm with momentum None",
       [&](DenseNetDSImpl& m) { norm_of(m, "final_norm")->options.momentum(c10::nullopt); }},
      {"momenta differing within a block", [](DenseNetDSImpl& m) { m.blocks()[2][1]->norm()->options.momentum(0.5); }},
      {"eps differing within a block", [](DenseNetDSImpl& m) { m.blocks()[0][0]->norm()->options.eps(0.5); }},
      // Taken by the fused path: the tail has its own eps and momentum.
      {"a transition's own eps and momentum",
       [&](DenseNetDSImpl& m) { norm_of(m, "transition1.norm")->options.eps(0.5).momentum(0.7); }},
  };
  DataSource data = testing::tiny_data(/*seed=*/11);
  const torch::Tensor x = normalize(data.train.images.narrow(0, 0, 32), channel_stats(data.train.images));
  const torch::Tensor y = data.train.labels.narrow(0, 0, 32);
  const auto make = [](const Change& change) {
    torch::manual_seed(3);
    DenseNetDS model(testing::tiny_densenet());
    init_model_(*model, "he");
    change(*model);
    return model;
  };
  for (const auto& [name, change] : training_cases) {
    DenseNetDS plain = make(change), fast = make(change);
    fast->set_fused_training(true);
    compute_losses(plain->forward(x), y, 0.3).total.backward();
    compute_losses(fast->forward(x), y, 0.3).total.backward();
    const auto pp = plain->named_parameters(), fp = fast->named_parameters();
    for (const auto& item : pp) {
      const torch::Tensor& g0 = item.value().grad();
      const torch::Tensor& g1 = fp[item.key()].grad();
      ASSERT_TRUE(g0.defined() && g1.defined()) << name << " " << item.key();
      EXPECT_LE((g0 - g1).norm().item<double>(), 1e-4 * g0.norm().item<double>() + 1e-12) << name << " " << item.key();
    }
    const auto pb = plain->named_buffers(), fb = fast->named_buffers();
    for (const auto& item : pb) {
      const torch::Tensor d = (item.value().to(torch::kFloat64) - fb[item.key()].to(torch::kFloat64)).abs();
      EXPECT_LE(d.max().item<double>(), 1e-5 * (1 + item.value().abs().max().item<double>())) << name << " " << item.key();
    }
  }
  // Evaluation with one BatchNorm alone in training mode (it normalizes with the batch's
  // statistics, as the composition does).
  const std::vector<std::pair<std::string, Change>> eval_cases{
      {"a layer's BatchNorm in training mode", [](DenseNetDSImpl& m) { m.blocks()[0][0]->norm()->train(); }},
      {"a transition's BatchNorm in training mode", [&](DenseNetDSImpl& m) { norm_of(m, "transition2.norm")->train(); }},
      {"the final BatchNorm in training mode", [&](DenseNetDSImpl& m) { norm_of(m, "final_norm")->train(); }},
  };
  for (const auto& [name, change] : eval_cases) {
    const auto make_trained = [&] {
      DenseNetDS model = make([](DenseNetDSImpl&) {});
      give_batch_norms_non_trivial_state(*model, /*key=*/"norm");  // draws from the seeded generator
      change(*model);
      return model;
    };
    DenseNetDS plain = make_trained(), fast = make_trained();
    plain->set_fused_inference(false);
    fast->set_fused_inference(true);
    torch::NoGradGuard no_grad;
    const torch::Tensor expected = plain->forward(x).logits;
    const torch::Tensor got = fast->forward(x).logits;
    EXPECT_LE((got - expected).abs().max().item<double>(), 1e-5 * (1 + expected.abs().max().item<double>())) << name;
  }
  // The fused functions refuse such layers.
  DenseNetDS model(testing::tiny_densenet());
  const torch::Tensor h = torch::randn({2, 12, 4, 4});
  model->blocks()[0][1]->norm()->eval();
  EXPECT_FALSE(dense_block_fusable(model->blocks()[0], /*training=*/true));
  testing::expect_throws<c10::Error>([&] { dense_block_fused(h, model->blocks()[0]); },
                                     {"dense_block_fused", "layer 2", "eval mode"});
  model->eval();
  model->blocks()[0][0]->norm()->train();
  EXPECT_FALSE(dense_block_fusable(model->blocks()[0], /*training=*/false));
  testing::expect_throws<c10::Error>([&] { dense_block_inference(h, model->blocks()[0]); },
                                     {"dense_block_inference", "layer 1", "training mode"});
  model->train();
  EXPECT_TRUE(dense_block_fusable(model->blocks()[0], /*training=*/true));
  model->blocks()[0][0]->norm()->options.momentum(c10::nullopt);
  testing::expect_throws<c10::Error>([&] { dense_block_fused(h, model->blocks()[0]); }, {"layer 1", "momentum None"});
  model->blocks()[0][0]->norm()->options.momentum(0.2);
  testing::expect_throws<c10::Error>([&] { dense_block_fused(h, model->blocks()[0]); },
                                     {"layer 2", "differ from layer 1"});
  torch::nn::BatchNorm2d tail_norm(torch::nn::BatchNorm2dOptions(24).affine(false));
  model->blocks()[0][0]->norm()->options.momentum(0.1);
  EXPECT_FALSE(block_tail_fusable(BlockTail{tail_norm, 2}, /*training=*/true));
  testing::expect_throws<c10::Error>([&] { dense_block_fused(h, model->blocks()[0], /*pool=*/false, BlockTail{tail_norm, 2}); },
                                     {"the tail", "without affine parameters"});
}

// Edge cases of the fused kernels, each as the composition behaves: a NaN input gives
// NaN outputs where the composition's are NaN (the fused ReLU keeps NaN, as torch::relu
// does, instead of rectifying it to 0), in DenseNet-DS's training and inference blocks
// and ResNet-DS's BatchNorm+ReLU node; a training batch with one value per channel is
// refused (libtorch's BatchNorm refuses it too); a channel with a large mean keeps its
// variance; a BatchNorm weight that is a strided view gives the gradients a contiguous
// one gives.
TEST(Train, FusedKernelsMatchTheCompositionOnEdgeCases) {
  const auto make = [] {
    torch::manual_seed(4);
    DenseNetDS model(testing::tiny_densenet());
    init_model_(*model, "he");
    return model;
  };
  torch::manual_seed(5);
  torch::Tensor x = torch::randn({6, 3, 16, 16});
  x[2][1][5][7] = std::numeric_limits<float>::quiet_NaN();
  const auto nan_pattern = [](const torch::Tensor& t) { return torch::isnan(t); };
  {
    DenseNetDS plain = make(), fast = make();
    plain->eval();
    fast->eval();
    plain->set_fused_inference(false);
    torch::NoGradGuard no_grad;
    const torch::Tensor expected = plain->forward(x).logits, got = fast->forward(x).logits;
    ASSERT_TRUE(nan_pattern(expected).any().item<bool>());
    EXPECT_TRUE(torch::equal(nan_pattern(expected), nan_pattern(got))) << "inference";
    const torch::Tensor finite = ~nan_pattern(expected);
    EXPECT_TRUE(torch::allclose(expected.masked_select(finite), got.masked_select(finite), 1e-5, 1e-5));
  }
  {
    DenseNetDS plain = make(), fast = make();
    fast->set_fused_training(true);
    const torch::Tensor expected = plain->forward(x).logits, got = fast->forward(x).logits;
    ASSERT_TRUE(nan_pattern(expected).any().item<bool>());
    EXPECT_TRUE(torch::equal(nan_pattern(expected), nan_pattern(got))) << "training";
  }
  {
    torch::nn::BatchNorm2d norm(4);
    const torch::Tensor h = torch::randn({3, 4, 5, 5});
    h[1][2][3][3] = std::numeric_limits<float>::quiet_NaN();
    const torch::Tensor expected = torch::relu(norm->forward(h));
    const torch::Tensor got = batch_norm_relu_fused(norm, h.clone().requires_grad_(true));
    ASSERT_TRUE(nan_pattern(expected).any().item<bool>());
    EXPECT_TRUE(torch::equal(nan_pattern(expected), nan_pattern(got))) << "BatchNorm+ReLU node";
  }
  // A channel whose mean is 1000 standard deviations from 0 (float sums of squares lose
  // the variance to cancellation; shifted sums keep it), in the BatchNorm+ReLU node and a
  // dense block's input chunk: outputs and running variances as the composition's.
  {
    torch::nn::BatchNorm2d plain_norm(4), fast_norm(4);
    const torch::Tensor h = torch::randn({8, 4, 6, 6}) + torch::tensor({1000.0f, -3000.0f, 0.0f, 1e4f}).view({1, 4, 1, 1});
    const torch::Tensor expected = torch::relu(plain_norm->forward(h));
    const torch::Tensor got = batch_norm_relu_fused(fast_norm, h.clone().requires_grad_(true));
    EXPECT_LE((got - expected).abs().max().item<double>(), 1e-3) << "large mean";
    EXPECT_TRUE(torch::allclose(fast_norm->running_var, plain_norm->running_var, /*rtol=*/1e-4, /*atol=*/1e-4))
        << fast_norm->running_var << plain_norm->running_var;
    DenseNetDS plain = make(), fast = make();
    const torch::Tensor x0 = torch::randn({8, 12, 6, 6}) + 500;
    std::vector<torch::Tensor> maps{x0};
    for (DenseLayer layer : plain->blocks()[0]) maps.push_back(layer->forward(torch::cat(maps, /*dim=*/1)));
    const torch::Tensor block_expected = torch::cat(maps, /*dim=*/1);
    const torch::Tensor block_got = dense_block_fused(x0, fast->blocks()[0]).features;
    EXPECT_LE((block_got - block_expected).abs().max().item<double>(),
              1e-4 * (1 + block_expected.abs().max().item<double>())) << "dense block, large mean";
  }
  // One value per channel.
  {
    torch::nn::BatchNorm2d norm(4);
    testing::expect_throws<c10::Error>([&] { batch_norm_relu_fused(norm, torch::randn({1, 4, 1, 1})); },
                                       {"more than 1 value per channel", "[1, 4, 1, 1]"});
    DenseNetDS model = make();
    testing::expect_throws<c10::Error>([&] { dense_block_fused(torch::randn({1, 12, 1, 1}), model->blocks()[0]); },
                                       {"dense_block_fused", "more than 1 value per channel"});
  }
  // Strided BatchNorm weights: a dense layer's and a transition's (the block's tail).
  {
    DenseNetDS plain = make(), fast = make();
    fast->set_fused_training(true);
    for (const std::string name : {"block1_layer1.norm.weight", "transition1.norm.weight"}) {
      torch::NoGradGuard no_grad;
      const torch::Tensor w = plain->named_parameters()[name];
      const torch::Tensor values = torch::rand_like(w) + 0.5;
      w.copy_(values);
      const torch::Tensor strided = torch::empty({2 * w.numel()}).slice(/*dim=*/0, /*start=*/0, /*end=*/c10::nullopt,
                                                                        /*step=*/2);
      strided.copy_(values);
      ASSERT_FALSE(strided.is_contiguous());
      fast->named_parameters()[name].set_data(strided);
    }
    const torch::Tensor xs = torch::randn({6, 3, 16, 16});
    const torch::Tensor y = torch::randint(/*high=*/4, {6});
    compute_losses(plain->forward(xs), y, 0.3).total.backward();
    compute_losses(fast->forward(xs), y, 0.3).total.backward();
    const auto fp = fast->named_parameters();
    for (const auto& item : plain->named_parameters()) {
      const torch::Tensor& g0 = item.value().grad();
      const torch::Tensor& g1 = fp[item.key()].grad();
      ASSERT_TRUE(g1.defined()) << item.key();
      EXPECT_LE((g0 - g1).norm().item<double>(), 1e-4 * g0.norm().item<double>() + 1e-12) << item.key();
    }
  }
}

// A training forward with gradients on and no backward (an exception between the two,
// or accuracy computed without NoGradGuard) leaves nothing behind once its outputs are
// dropped: the fused blocks' reusable buffers do not keep that forward's graph, and with
// it the input batch, alive. Checked with a weak reference to the input, for DenseNet-DS
// and ResNet-DS, before and after a normal step.
TEST(Train, FusedForwardWithoutBackwardKeepsNoGraphAlive) {
  for (bool resnet : {false, true}) {
    torch::manual_seed(8);
    std::shared_ptr<DSModelImpl> model;
    if (resnet) model = std::make_shared<ResNetDSImpl>(testing::tiny_resnet());
    else model = std::make_shared<DenseNetDSImpl>(testing::tiny_densenet());
    model->set_fused_training(true);
    const torch::Tensor y = torch::randint(/*high=*/4, {8});
    for (int round = 0; round < 3; ++round) {
      torch::Tensor x = torch::randn({8, 3, 16, 16});
      const c10::weak_intrusive_ptr<c10::TensorImpl> weak(x.getIntrusivePtr());
      {
        const DSOutput out = model->forward(x);
        if (round == 1) compute_losses(out, y, 0.3).total.backward();  // a normal step in between
      }
      x.reset();
      EXPECT_TRUE(weak.expired()) << (resnet ? "resnet" : "densenet") << " round " << round;
    }
  }
}

// A layer observer sees the same layers in the same order whether ResNet-DS's blocks
// run their fused BatchNorm+ReLU nodes or the composition (training, gradients on):
// conv2 before the shortcut's convolution.
TEST(Train, ObserverSeesTheSameLayersWithTheFusedResNetBlocks) {
  torch::manual_seed(9);
  ResNetDS model(testing::tiny_resnet());
  struct Recorder : LayerObserver {
    std::vector<const torch::nn::Module*> seen;
    void on_output(torch::nn::Module& layer, const torch::Tensor& /*output*/) override { seen.push_back(&layer); }
  };
  const torch::Tensor x = torch::randn({4, 3, 16, 16});
  const auto record = [&](bool fused) {
    model->set_fused_training(fused);
    Recorder recorder;
    ObserverGuard guard(&recorder);
    model->forward(x);
    return recorder.seen;
  };
  const auto plain = record(/*fused=*/false), fused = record(/*fused=*/true);
  EXPECT_GT(plain.size(), 6u);
  EXPECT_EQ(plain, fused);
}

// ResNet-DS's fused BatchNorm(+residual)+ReLU node against BatchNorm2d, the add and
// the ReLU composed: the output, the gradients of the input, the residual and the affine
// parameters, and the running statistics, with and without a residual, channels-last
// and NCHW inputs, one and two threads. Tolerances as in FastPathMatchesTheStraightforwardPath.
TEST(Train, FusedBatchNormReLUMatchesTheComposition) {
  const int threads_before = torch::get_num_threads();
  const auto close = [](const torch::Tensor& a, const torch::Tensor& b, double tol) {
    return (a - b).norm().item<double>() <= tol * a.norm().item<double>() + 1e-12;
  };
  for (int threads : {1, 2})
  for (bool with_residual : {false, true})
  for (bool nhwc : {false, true}) {
    torch::set_num_threads(threads);
    const std::string name = "threads " + std::to_string(threads) + (with_residual ? " residual" : "") +
                             (nhwc ? " channels-last" : " nchw");
    torch::manual_seed(31);
    const auto format = nhwc ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous;
    const torch::Tensor x0 = (torch::randn({6, 10, 7, 5}) * 2 + 0.5).contiguous(format);
    const torch::Tensor r0 = torch::randn({6, 10, 7, 5}).contiguous(format);
    const torch::Tensor weight = torch::randn({6, 10, 7, 5});
    auto make_norm = [] {
      torch::nn::BatchNorm2d norm(10);
      torch::NoGradGuard no_grad;
      norm->weight.uniform_(0.5, 1.5);
      norm->bias.uniform_(-0.5, 0.5);
      norm->running_var.fill_(2.0);
      return norm;
    };
    torch::manual_seed(32);
    torch::nn::BatchNorm2d plain = make_norm();
    torch::manual_seed(32);
    torch::nn::BatchNorm2d fast = make_norm();
    const torch::Tensor xp = x0.clone().requires_grad_(true), rp = r0.clone().requires_grad_(true);
    const torch::Tensor xf = x0.clone().requires_grad_(true), rf = r0.clone().requires_grad_(true);
    const torch::Tensor expected = torch::relu(plain->forward(xp) + (with_residual ? rp : torch::zeros_like(rp)));
    const torch::Tensor got = batch_norm_relu_fused(fast, xf, with_residual ? rf : torch::Tensor());
    EXPECT_TRUE(close(expected, got, 1e-5)) << name;
    EXPECT_TRUE(got.is_contiguous(torch::MemoryFormat::ChannelsLast)) << name;
    (expected * weight).sum().backward();
    (got * weight).sum().backward();
    EXPECT_TRUE(close(xp.grad(), xf.grad(), 1e-4)) << name;
    EXPECT_EQ(xf.grad().is_contiguous(torch::MemoryFormat::ChannelsLast), nhwc) << name;
    if (with_residual) {
      ASSERT_TRUE(rf.grad().defined()) << name;
      EXPECT_TRUE(close(rp.grad(), rf.grad(), 1e-5)) << name;
    } else {
      EXPECT_FALSE(rf.grad().defined()) << name;
    }
    EXPECT_TRUE(close(plain->weight.grad(), fast->weight.grad(), 1e-4)) << name;
    EXPECT_TRUE(close(plain->bias.grad(), fast->bias.grad(), 1e-4)) << name;
    EXPECT_TRUE(close(plain->running_mean, fast->running_mean, 1e-5)) << name;
    EXPECT_TRUE(close(plain->running_var, fast->running_var, 1e-5)) << name;
    EXPECT_EQ(fast->num_batches_tracked.item<int64_t>(), 1) << name;
  }
  torch::set_num_threads(threads_before);
  // Where it does not apply, the model composes instead: a stage wider than the kernels'
  // 512 channels trains (forward and backward) with the switch on.
  torch::nn::BatchNorm2d wide_norm(600);
  EXPECT_FALSE(batch_norm_relu_fusable(wide_norm, torch::randn({1, 600, 2, 2})));
  EXPECT_TRUE(batch_norm_relu_fusable(wide_norm, torch::randn({1, 512, 2, 2})));
  {
    torch::NoGradGuard no_grad;
    EXPECT_FALSE(batch_norm_relu_fusable(wide_norm, torch::randn({1, 512, 2, 2})));
  }
  ResNetDS wide(ResNetDSOptions(4).widths({600, 8, 8}).blocks_per_stage({1, 1, 1}));
  wide->train();
  wide->set_fused_training(true);
  const DSOutput out = wide->forward(torch::randn({2, 3, 8, 8}));
  deep_supervision_loss(out, torch::tensor({0, 1}), 0.3).backward();
  EXPECT_TRUE(wide->stages()[0][0]->conv1()->weight.grad().defined());
  // A block with one BatchNorm alone in eval mode is not fused: that BatchNorm uses its
  // running statistics, as in the composition.
  {
    torch::manual_seed(9);
    ResNetDS mixed(testing::tiny_resnet());
    mixed->train();
    mixed->named_modules()["stage1_block1.bn2"]->eval();
    const torch::Tensor xm = torch::randn({4, 3, 8, 8});
    mixed->set_fused_training(false);
    const torch::Tensor plain_logits = mixed->forward(xm).logits;
    mixed->set_fused_training(true);
    EXPECT_TRUE(close(plain_logits, mixed->forward(xm).logits, 1e-5)) << "one BatchNorm in eval mode";
  }
  // Refused: a residual of another shape, a BatchNorm in eval mode or with what the node
  // does not implement (momentum None, no affine parameters), and a gradient-of-gradient.
  torch::nn::BatchNorm2d norm(4);
  testing::expect_throws<c10::Error>(
      [&] { batch_norm_relu_fused(norm, torch::randn({2, 4, 3, 3}), torch::randn({2, 4, 3, 2})); },
      {"residual", "does not match"});
  const torch::Tensor x4 = torch::randn({2, 4, 3, 3}, torch::requires_grad());
  torch::nn::BatchNorm2d evaluating(4);
  evaluating->eval();
  EXPECT_FALSE(batch_norm_relu_fusable(evaluating, x4));
  testing::expect_throws<c10::Error>([&] { batch_norm_relu_fused(evaluating, x4); }, {"eval mode"});
  torch::nn::BatchNorm2d cumulative(torch::nn::BatchNorm2dOptions(4).momentum(c10::nullopt));
  EXPECT_FALSE(batch_norm_relu_fusable(cumulative, x4));
  testing::expect_throws<c10::Error>([&] { batch_norm_relu_fused(cumulative, x4); }, {"momentum None"});
  torch::nn::BatchNorm2d plain_norm(torch::nn::BatchNorm2dOptions(4).affine(false));
  EXPECT_FALSE(batch_norm_relu_fusable(plain_norm, x4));
  testing::expect_throws<c10::Error>([&] { batch_norm_relu_fused(plain_norm, x4); }, {"affine=0"});
  EXPECT_TRUE(batch_norm_relu_fusable(norm, x4));
  const torch::Tensor x = torch::randn({2, 4, 3, 3}, torch::requires_grad());
  const torch::Tensor y = batch_norm_relu_fused(norm, x);
  testing::expect_throws<c10::Error>(
      [&] { torch::autograd::grad({(y * y).sum()}, {x}, {}, /*retain_graph=*/true, /*create_graph=*/true); },
      {"fused BatchNorm+ReLU is first-order only"});
}

// The fused block's backward is hand-written, so a gradient built through it with
// create_graph would miss most of its second-order terms. Before this check it did so
// silently (an L1 gradient-norm's gradient about a tenth of the true one); now it is
// refused, and the layer-by-layer path gives the double backward.
TEST(Train, FusedBlockRefusesDoubleBackward) {
  const DataSource data = testing::tiny_data(9);
  const torch::Tensor x = normalize(data.train.images.narrow(0, 0, 16), channel_stats(data.train.images));
  const torch::Tensor y = data.train.labels.narrow(0, 0, 16);
  for (const bool fused : {true, false}) {
    torch::manual_seed(4);
    DenseNetDS model(testing::tiny_densenet());
    init_model_(*model, "he");
    model->train();
    model->set_fused_training(fused);
    const std::vector<torch::Tensor> params = model->parameters();
    const auto hessian_vector = [&] {
      const torch::Tensor loss = deep_supervision_loss(model->forward(x), y, 0.3);
      const auto g = torch::autograd::grad({loss}, params, {}, /*retain_graph=*/true, /*create_graph=*/true,
                                           /*allow_unused=*/true);
      torch::Tensor norm = torch::zeros({});
      for (const auto& gj : g) norm = norm + gj.abs().sum();
      return torch::autograd::grad({norm}, params, {}, false, false, /*allow_unused=*/true);
    };
    if (fused) {
      testing::expect_throws<c10::Error>(hessian_vector, {"fused dense block is first-order only", "set_fused_training(false)"});
      // First-order gradients through the same path still work.
      deep_supervision_loss(model->forward(x), y, 0.3).backward();
      EXPECT_TRUE(model->blocks()[0][0]->conv()->weight.grad().defined());
    } else {
      const auto hv = hessian_vector();
      for (size_t j = 0; j < params.size(); ++j) EXPECT_TRUE(hv[j].defined()) << j;
    }
  }
}

// ConvPrecision::kBFloat16 against a layer-by-layer reference that rounds exactly the
// same tensors: each layer computes conv(relu(bn(x)).to(bf16), W.to(bf16)).to(float),
// so autograd rounds the output gradient to bfloat16 and widens dA and dW back, as the
// fused block does. Stated tolerance 2e-4 relative (measured: about 1e-7): the two
// compute BatchNorm's affine map in a different order, so an element next to a bfloat16
// rounding boundary may round to the other neighbour (2^-8 relative, about 1e-4 of a
// small tensor's norm). The float32 fused block is at least 10x further from the
// reference (the mode is not a no-op; measured: about 2e-3), and the bf16 results stay
// within 5e-2 of float32's.
TEST(Train, FusedBf16BlockMatchesItsReference) {
  const int threads_before = torch::get_num_threads();
  for (int threads : {1, 2}) {
    torch::set_num_threads(threads);
    const std::string name = "threads " + std::to_string(threads);
    auto make = [&] {
      torch::manual_seed(31);
      DenseNetDS model(testing::tiny_densenet());
      init_model_(*model, "he");
      torch::nn::BatchNorm2d norm(model->block_channels()[0]);
      return std::make_pair(model, norm);
    };
    torch::manual_seed(32);
    const torch::Tensor x0 = torch::randn({8, 12, 8, 8});
    const torch::Tensor weight_tail = torch::randn({8, 24, 4, 4});
    const torch::Tensor weight_features = torch::randn({8, 24, 8, 8});
    // Every value and gradient of one forward and backward: the block output, its tail,
    // the input's gradient, then the block's parameters' gradients by name.
    struct Result {
      std::vector<torch::Tensor> values;
      std::vector<std::string> names;
    };
    const auto run_reference = [&] {
      auto [model, norm] = make();
      const torch::Tensor x = x0.clone().requires_grad_(true);
      std::vector<torch::Tensor> maps{x};
      for (DenseLayer layer : model->blocks()[0]) {
        const torch::Tensor a = torch::relu(layer->norm()->forward(torch::cat(maps, /*dim=*/1)));
        maps.push_back(torch::conv2d(a.to(torch::kBFloat16), layer->conv()->weight.to(torch::kBFloat16), /*bias=*/{},
                                     /*stride=*/1, /*padding=*/1)
                           .to(torch::kFloat32));
      }
      const torch::Tensor features = torch::cat(maps, /*dim=*/1);
      const torch::Tensor tail = torch::avg_pool2d(norm->forward(features).relu(), /*kernel_size=*/{2, 2});
      ((tail * weight_tail).sum() + (features * weight_features).sum()).backward();
      Result r{{features.detach(), tail.detach(), x.grad()}, {"features", "tail", "input grad"}};
      for (const auto& item : model->named_parameters()) {
        if (item.key().rfind("block1_", 0) != 0) continue;
        r.values.push_back(item.value().grad());
        r.names.push_back(item.key());
      }
      return r;
    };
    const auto run_fused = [&](ConvPrecision precision) {
      auto [model, norm] = make();
      to_channels_last_(*model);
      const torch::Tensor x = x0.clone().requires_grad_(true);
      const FusedBlockOutput out = dense_block_fused(x, model->blocks()[0], /*pool=*/false, BlockTail{norm, 2}, precision);
      ((out.tail * weight_tail).sum() + (out.features * weight_features).sum()).backward();
      Result r{{out.features.detach(), out.tail.detach(), x.grad()}, {"features", "tail", "input grad"}};
      for (const auto& item : model->named_parameters()) {
        if (item.key().rfind("block1_", 0) != 0) continue;
        EXPECT_EQ(item.value().grad().scalar_type(), torch::kFloat32) << name << " " << item.key();
        r.values.push_back(item.value().grad());
        r.names.push_back(item.key());
      }
      return r;
    };
    const Result reference = run_reference();
    const Result bf16 = run_fused(ConvPrecision::kBFloat16);
    const Result fp32 = run_fused(ConvPrecision::kFloat32);
    ASSERT_EQ(reference.names, bf16.names) << name;
    ASSERT_EQ(reference.names, fp32.names) << name;
    const auto relative = [](const torch::Tensor& a, const torch::Tensor& b) {
      return (a - b).norm().item<double>() / (a.norm().item<double>() + 1e-12);
    };
    double furthest = 0, fp32_nearest = 1e9;
    for (size_t i = 0; i < reference.values.size(); ++i) {
      const std::string what = name + " " + reference.names[i];
      ASSERT_TRUE(bf16.values[i].defined() && fp32.values[i].defined()) << what;
      const double d_bf16 = relative(reference.values[i], bf16.values[i]);
      EXPECT_LE(d_bf16, 2e-4) << what;
      EXPECT_LE(relative(fp32.values[i], bf16.values[i]), 5e-2) << what;
      furthest = std::max(furthest, d_bf16);
      // The block input's first channels are copied, not computed: equal in both modes.
      if (reference.names[i] != "features") fp32_nearest = std::min(fp32_nearest, relative(reference.values[i], fp32.values[i]));
    }
    EXPECT_GE(fp32_nearest, 10 * furthest) << name << ": float32 is as close to the bfloat16 reference as bf16 is";
  }
  torch::set_num_threads(threads_before);
}

// The bf16 option in whole runs: it changes the losses by bfloat16 rounding (not
// nothing, not more than 5% over 10 steps), is scoped to the run, and is refused where it
// would not apply, naming the setting.
TEST(Train, Bf16RunsAreCloseToFloat32AndRefusedWhereTheyDoNotApply) {
  DataSource data = testing::tiny_data(/*seed=*/11);
  std::vector<Collector> records(2);
  for (int b = 0; b < 2; ++b) {
    torch::manual_seed(5);
    auto model = std::make_shared<DenseNetDSImpl>(testing::tiny_densenet());
    init_model_(*model, "lion-dg");
    const TrainSummary s = train(*model, data, fast_options().steps(10).eval_every(0).bf16(b == 1).seed(5),
                                 {&records[static_cast<size_t>(b)]});
    ASSERT_EQ(s.status, "completed") << s.diverged_reason;
    EXPECT_FALSE(model->bf16_training());  // the model's own setting again
  }
  ASSERT_EQ(records[0].steps.size(), records[1].steps.size());
  double differs = 0;
  for (size_t i = 0; i < records[0].steps.size(); ++i) {
    const double a = records[0].steps[i].loss, b = records[1].steps[i].loss;
    EXPECT_NEAR(a, b, 5e-2 * std::abs(a)) << "step " << i + 1;
    differs = std::max(differs, std::abs(a - b));
  }
  EXPECT_GT(differs, 0.0) << "bf16 gave float32's losses bit for bit: the option did nothing";

  auto densenet = std::make_shared<DenseNetDSImpl>(testing::tiny_densenet());
  testing::expect_throws<c10::Error>(
      [&] { train(*densenet, data, fast_options().steps(2).bf16(true).fused(false)); }, {"bf16", "fused blocks off"});
  testing::expect_throws<c10::Error>(
      [&] { train(*densenet, data, fast_options().steps(2).bf16(true).resident(true)); }, {"bf16", "resident loop on"});
  // Synchronized BatchNorm across ranks computes its statistics outside the fused blocks.
  // train() refuses before it communicates, so two ranks in name only are enough here.
  class TwoRanksInName : public Communicator {
   public:
    int64_t rank() const override { return 0; }
    int64_t world_size() const override { return 2; }
    std::unique_ptr<Pending> all_reduce_sum_async(torch::Tensor) override { throw std::logic_error("no peers"); }
    void broadcast_(torch::Tensor, int64_t) override { throw std::logic_error("no peers"); }
    void barrier() override { throw std::logic_error("no peers"); }
  };
  const auto two_ranks = std::make_shared<TwoRanksInName>();
  testing::expect_throws<c10::Error>(
      [&] { train(*densenet, data, fast_options().steps(2).bf16(true).communicator(two_ranks).sync_batch_norm(true)); },
      {"bf16", "synchronized BatchNorm on"});
  EXPECT_FALSE(densenet->bf16_training());
  auto resnet = std::make_shared<ResNetDSImpl>(testing::tiny_resnet());
  testing::expect_throws<c10::Error>([&] { train(*resnet, data, fast_options().steps(2).bf16(true)); },
                                     {"bf16", "no bfloat16 path"});
  EXPECT_FALSE(resnet->bf16_training());
  // DenseNet-DS configurations whose blocks the fused path does not take would train in
  // float32 while claiming bf16: refused, naming what is in the way.
  DenseNetDS fixup(testing::tiny_densenet().block(BlockKind::kFixup));
  testing::expect_throws<c10::Error>([&] { fixup->set_bf16_training(true); }, {"bf16", "fixup blocks"});
  DenseNetDS no_norm(testing::tiny_densenet().batch_norm(false));
  testing::expect_throws<c10::Error>([&] { no_norm->set_bf16_training(true); }, {"bf16", "batch_norm off"});
  DenseNetDS wide(testing::tiny_densenet().growth_rate(kMaxFusedChannels));
  testing::expect_throws<c10::Error>([&] { wide->set_bf16_training(true); }, {"bf16", "widest block"});
  EXPECT_FALSE(fixup->bf16_training() || no_norm->bf16_training() || wide->bf16_training());
  // The rule the grid checks without building a model is the one the built model enforces,
  // and the channels it computes are the built model's.
  DenseNetDS standard(testing::tiny_densenet());
  for (DenseNetDS m : {standard, fixup, no_norm, wide}) {
    EXPECT_EQ(dense_block_channels(m->options), m->block_channels());
    bool refused = false;
    try {
      m->set_bf16_training(true);
    } catch (const c10::Error&) {
      refused = true;
    }
    EXPECT_EQ(bf16_refusal(m->options).empty(), !refused) << bf16_refusal(m->options);
  }
  EXPECT_TRUE(standard->bf16_training());
  ModelSpec resnet_spec;
  resnet_spec.name = "resnet-ds";
  EXPECT_NE(bf16_refusal(resnet_spec).find("no bfloat16 path"), std::string::npos);
  EXPECT_EQ(bf16_refusal(ModelSpec{}), "");  // the paper's DenseNet-DS
  fixup->set_bf16_training(false);  // turning it off is always allowed
}

TEST(Train, StepsToTargetIsTheFirstFullWindowAtTarget) {
  Trained t = train_tiny("he", 3);
  // Recompute from the per-step accuracies.
  std::optional<int64_t> expected;
  for (size_t i = 9; i < t.records.steps.size() && !expected; ++i) {
    double mean = 0;
    for (size_t j = i - 9; j <= i; ++j) mean += t.records.steps[j].main_acc / 10;
    if (mean >= 0.6 - 1e-12) expected = t.records.steps[i].step;
  }
  ASSERT_TRUE(expected.has_value()) << "the tiny problem should reach 60% within 40 steps";
  EXPECT_EQ(t.summary.steps_to_target, expected);
  EXPECT_GE(*t.summary.steps_to_target, 10);
  // An unreachable target reports no step and not converged.
  Trained never = train_tiny("he", 3, fast_options().target_acc(1.0).steps(12));
  EXPECT_FALSE(never.summary.converged());
  // stop_at_target stops there.
  Trained stop = train_tiny("he", 3, fast_options().stop_at_target(true));
  EXPECT_EQ(stop.summary.steps_run, *t.summary.steps_to_target);
}

TEST(Train, GradientDiagnosticsAndAwakening) {
  Trained t = train_tiny("lion-dg", 8);
  for (const auto& r : t.records.steps) {
    const bool diag = r.step == 1 || r.step % 5 == 0;
    EXPECT_EQ(std::isfinite(r.grad_main_norm), diag) << "step " << r.step;
    ASSERT_EQ(r.aux_weight_norms.size(), 2u);
  }
  // Proposition 1 at step 1 (the initialization): exactly zero aux gradient, zero head norm.
  EXPECT_EQ(t.records.steps[0].grad_aux_norm, 0.0);
  EXPECT_EQ(t.records.steps[0].grad_ratio, 0.0);
  EXPECT_EQ(t.records.steps[0].aux_weight_norms[0], 0.0);
  // Proposition 2: the heads grow from zero and the aux gradient phases in.
  EXPECT_GT(t.records.steps[1].aux_weight_norms[0], 0.0);
  EXPECT_GT(t.records.steps[4].grad_aux_norm, 0.0);
  EXPECT_GT(t.records.steps[9].grad_ratio, t.records.steps[0].grad_ratio);
  // Under He the ratio is non-zero from the start.
  Trained he = train_tiny("he", 8);
  EXPECT_GT(he.records.steps[0].grad_ratio, 0.0);
}

// train() runs with its options' fused setting and gives the model back its own.
TEST(Train, FusedOptionIsScopedToTheRun) {
  struct Observe : RecordSink {
    DSModelImpl& model;
    bool training = false, inference = false;
    explicit Observe(DSModelImpl& m) : model(m) {}
    void on_step(const StepRecord& /*record*/) override {
      training = model.fused_training();
      inference = model.fused_inference();
    }
  };
  DataSource data = testing::tiny_data(/*seed=*/2);
  const std::vector<std::shared_ptr<DSModelImpl>> models{std::make_shared<DenseNetDSImpl>(testing::tiny_densenet()),
                                                         std::make_shared<ResNetDSImpl>(testing::tiny_resnet())};
  for (const auto& model : models) {
    he_init_(*model);
    for (bool own_training : {false, true}) {
      for (bool own_inference : {false, true}) {
        for (bool run_fused : {false, true}) {
          model->set_fused_training(own_training);
          model->set_fused_inference(own_inference);
          Observe seen(*model);
          const TrainSummary s =
              train(*model, data, fast_options().steps(2).eval_every(0).fused(run_fused), {&seen});
          ASSERT_EQ(s.status, "completed") << s.diverged_reason;
          EXPECT_EQ(seen.training, run_fused);
          EXPECT_EQ(seen.inference, run_fused);
          EXPECT_EQ(model->fused_training(), own_training) << own_training << own_inference << run_fused;
          EXPECT_EQ(model->fused_inference(), own_inference) << own_training << own_inference << run_fused;
        }
      }
    }
  }
}

TEST(Train, NonFiniteLossStopsWithStatusDiverged) {
  DataSource data = testing::tiny_data(2);
  auto model = std::make_shared<DenseNetDSImpl>(testing::tiny_densenet());
  he_init_(*model);
  {
    torch::NoGradGuard no_grad;
    model->main_head()->last_layer()->bias.fill_(std::numeric_limits<float>::quiet_NaN());
  }
  TrainSummary s = train(*model, data, fast_options());
  EXPECT_EQ(s.status, "diverged");
  EXPECT_EQ(s.steps_run, 0);
  EXPECT_NE(s.diverged_reason.find("step 1"), std::string::npos) << s.diverged_reason;
  EXPECT_NE(s.diverged_reason.find("L_main = nan"), std::string::npos) << s.diverged_reason;
  // Which loss: an auxiliary head gone bad is named as such.
  he_init_(*model);
  {
    torch::NoGradGuard no_grad;
    model->aux_head(1)->last_layer()->bias.fill_(std::numeric_limits<float>::infinity());
  }
  s = train(*model, data, fast_options());
  EXPECT_EQ(s.status, "diverged");
  EXPECT_NE(s.diverged_reason.find("L_aux_1 = "), std::string::npos) << s.diverged_reason;
}

// Stops the run (as SIGINT would) once `at` steps are done.
struct StopAt : RecordSink {
  int64_t at;
  explicit StopAt(int64_t step) : at(step) {}
  void on_step(const StepRecord& r) override {
    if (r.step == at) request_stop();
  }
};

TEST(Train, InterruptedRunResumesBitForBit) {
  testing::TempDir dir;
  DataSource data = testing::tiny_data(/*seed=*/4);
  auto make = [] {
    torch::manual_seed(8);
    auto model = std::make_shared<DenseNetDSImpl>(testing::tiny_densenet());
    init_model_(*model, "lion-dg");
    return model;
  };
  // The default fast path (prefetch, channels-last, fused block), flips, crops, a
  // partial target window and an epoch boundary (256 images / 32 = 8 steps) inside.
  const TrainOptions o = fast_options().steps(30).eval_every(10).grad_every(3).crop_padding(2);
  Collector whole;
  train(*make(), data, o, {&whole});

  const std::string ckpt = dir.file("checkpoint.pt");
  Collector first, second;
  StopAt stop(13);
  auto model = make();
  TrainSummary a = train(*model, data, TrainOptions(o).checkpoint_path(ckpt).checkpoint_every(5), {&first, &stop});
  clear_stop_request();
  EXPECT_EQ(a.status, "interrupted");
  EXPECT_EQ(a.steps_run, 13);
  EXPECT_EQ(checkpoint_step(ckpt), 13);
  // A fresh process: a freshly initialized model, then the checkpoint.
  TrainSummary b = train(*make(), data, TrainOptions(o).resume_from(ckpt), {&second});
  EXPECT_EQ(b.status, "completed");
  EXPECT_EQ(b.resumed_from_step, 13);
  ASSERT_EQ(first.steps.size() + second.steps.size(), whole.steps.size());
  std::vector<StepRecord> joined = first.steps;
  joined.insert(joined.end(), second.steps.begin(), second.steps.end());
  auto same = [](double x, double y) { return (std::isnan(x) && std::isnan(y)) || x == y; };
  for (size_t i = 0; i < joined.size(); ++i) {
    const StepRecord &x = whole.steps[i], &y = joined[i];
    EXPECT_EQ(x.step, y.step);
    EXPECT_TRUE(same(x.loss, y.loss) && same(x.main_acc, y.main_acc) && same(x.window_acc, y.window_acc) &&
                same(x.grad_main_norm, y.grad_main_norm) && same(x.grad_aux_norm, y.grad_aux_norm) &&
                x.aux_losses == y.aux_losses && x.aux_weight_norms == y.aux_weight_norms)
        << "step " << x.step << ": " << x.loss << " vs " << y.loss;
  }
  ASSERT_FALSE(whole.evals.empty());
  EXPECT_EQ(whole.evals.back().main_acc, second.evals.back().main_acc);
  EXPECT_EQ(whole.evals.back().main_loss, second.evals.back().main_loss);

  // A checkpoint of another run, a truncated one, a missing one: clear errors.
  EXPECT_THROW(train(*make(), data, TrainOptions(o).batch_size(16).resume_from(ckpt)), UsageError);
  std::ifstream in(ckpt, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  testing::write_bytes(dir.file("cut.pt"), std::vector<uint8_t>(bytes.begin(), bytes.begin() + bytes.size() / 2));
  testing::expect_data_error([&] { train(*make(), data, TrainOptions(o).resume_from(dir.file("cut.pt"))); },
                             {"cut.pt", "not a readable liondg checkpoint"});
  testing::expect_data_error([&] { checkpoint_step(dir.file("none.pt")); }, {"none.pt' does not exist"});
}

// ------------------------------------------------------------------ run directory

RunConfig tiny_run(const std::string& out) {
  RunConfig c;
  c.dataset = "synthetic";
  c.synthetic.num_classes = 4;
  c.synthetic.height = c.synthetic.width = 16;
  c.synthetic.train_size = 128;
  c.synthetic.test_size = 64;
  c.model.growth_rate = 4;
  c.model.block_layers = {1, 1, 1};
  c.train = TrainOptions().steps(6).batch_size(16).grad_every(3).eval_every(3).target_window(2);
  c.out_dir = out;
  c.threads = 1;
  return c;
}

TEST(Run, WritesConfigMetricsSummaryAndLoadableModel) {
  testing::TempDir dir;
  RunConfig c = tiny_run(dir.file("run"));
  RunResult r = run_experiment(c);
  ASSERT_EQ(r.summary.status, "completed");
  std::ifstream cfg(dir.file("run/config.json"));
  nlohmann::json config = nlohmann::json::parse(cfg);
  EXPECT_EQ(config["init"], "lion-dg");
  EXPECT_EQ(config["train"]["lr"], 1e-3);
  EXPECT_EQ(config["train"]["weight_decay"], 0.05);
  EXPECT_EQ(config["train"]["aux_weight"], 0.3);
  EXPECT_EQ(config["seed"], 42);
  EXPECT_TRUE(config["versions"].contains("libtorch"));
  EXPECT_EQ(config["data"]["normalization_mean"].size(), 3u);

  std::ifstream csv(dir.file("run/metrics.csv"));
  std::vector<std::string> lines;
  for (std::string line; std::getline(csv, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 7u);  // header + 6 steps
  EXPECT_EQ(lines[0].rfind("step,loss,aux_weight,main_loss,aux_loss_0,aux_loss_1,main_acc", 0), 0u);
  const auto columns = std::count(lines[0].begin(), lines[0].end(), ',');
  for (const auto& l : lines) EXPECT_EQ(std::count(l.begin(), l.end(), ','), columns) << l;

  std::ifstream sj(dir.file("run/summary.json"));
  nlohmann::json summary = nlohmann::json::parse(sj);
  EXPECT_EQ(summary["status"], "completed");
  EXPECT_EQ(summary["steps_run"], 6);
  EXPECT_DOUBLE_EQ(summary["val_acc"].get<double>(), r.summary.final_eval.main_acc);
  EXPECT_EQ(summary["parameter_counts"]["total"], r.parameter_counts.at("total"));

  DenseNetDS loaded(DenseNetDSOptions(4).growth_rate(4).stem_channels(8).block_layers({1, 1, 1}));
  torch::load(loaded, dir.file("run/model.pt"));
  EXPECT_EQ(loaded->aux_head(0)->last_layer()->weight.sizes(), torch::IntArrayRef({4, 12}));  // stem 8 + 1 layer x growth 4
}

TEST(Run, RefusesToOverwriteAFinishedRunAndChecksTheOutputDirectory) {
  testing::TempDir dir;
  RunConfig c = tiny_run(dir.file("run"));
  run_experiment(c);
  std::ifstream before(dir.file("run/summary.json"));
  const std::string text((std::istreambuf_iterator<char>(before)), std::istreambuf_iterator<char>());
  EXPECT_THROW(run_experiment(c), UsageError);
  std::ifstream after(dir.file("run/summary.json"));
  EXPECT_EQ(text, std::string((std::istreambuf_iterator<char>(after)), std::istreambuf_iterator<char>()));
  c.overwrite = true;
  EXPECT_NO_THROW(run_experiment(c));

  testing::write_bytes(dir.file("file"), {1});
  c.out_dir = dir.file("file/run");  // a path below a regular file
  EXPECT_THROW(run_experiment(c), DataError);
}

TEST(Decoupling, VerifyReportsExactZeroForLionDGOnly) {
  DecouplingConfig c;
  c.dataset = "synthetic";
  c.synthetic.train_size = 64;
  c.synthetic.test_size = 16;
  c.batch_size = 32;
  c.model.name = "resnet-ds";
  EXPECT_TRUE(verify_decoupling(c).decoupled());
  c.init = "he";
  DecouplingResult he = verify_decoupling(c);
  EXPECT_FALSE(he.decoupled());
  EXPECT_GT(he.backbone_max_abs_grad, 0.0);
}

}  // namespace
}  // namespace liondg
