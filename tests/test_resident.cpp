// The resident loop (device data, device augmentation, flat optimizer, records read
// back in blocks) against the step-by-step loop, on the CPU; and, when a CUDA device
// is present, CUDA-graph replay against eager steps and against the CPU.

#include "expect.h"
#include "fixtures.h"

#include <liondg/errors.h>
#include <liondg/init/init.h>
#include <liondg/train/flat_optimizer.h>
#include <liondg/train/step_graph.h>
#include <liondg/train/trainer.h>

#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

namespace liondg {
namespace {

using Collector = testing::RecordCollector;

std::shared_ptr<DSModelImpl> make_model(bool resnet, const std::string& policy = "lion-dg", uint64_t seed = 8) {
  torch::manual_seed(seed);
  std::shared_ptr<DSModelImpl> model;
  if (resnet) model = std::make_shared<ResNetDSImpl>(testing::tiny_resnet());
  else model = std::make_shared<DenseNetDSImpl>(testing::tiny_densenet());
  init_model_(*model, policy);
  return model;
}

// The step-by-step loop on its plainest path (NCHW, layer by layer, no prefetch).
TrainOptions reference_options() {
  return TrainOptions()
      .steps(14)
      .batch_size(32)
      .grad_every(3)
      .eval_every(7)
      .target_window(4)
      .target_acc(0.3)
      .crop_padding(2)
      .channels_last(false)
      .fused(false)
      .prefetch(false);
}

double rel(double a, double b) { return std::abs(a - b) / std::max(1e-12, std::max(std::abs(a), std::abs(b))); }

TEST(Resident, AugmentBatchEqualsTheBatcher) {
  DataSource data = testing::tiny_data(/*seed=*/5);
  const ChannelStats stats = channel_stats(data.train.images);
  const NormalizeTensors constants = normalize_tensors(stats, torch::kCPU);
  const torch::Tensor& mean = constants.mean;  // (1,C,1,1)
  const torch::Tensor& std = constants.std;
  for (int64_t padding : {0, 3}) {
    for (bool hflip : {false, true}) {
      BatcherOptions o;
      o.batch_size = 32;
      o.hflip = hflip;
      o.crop_padding = padding;
      o.prefetch = false;
      o.seed = 7;
      TrainBatcher images(data.train, stats, o), plans(data.train, stats, o);
      for (int i = 0; i < 10; ++i) {  // crosses an epoch boundary (256 / 32 = 8 batches)
        auto [x, y] = images.next();
        const BatchPlan p = plans.next_plan();
        torch::Tensor dy, dx, flip;
        if (!p.dy.empty()) {
          dy = torch::tensor(p.dy, torch::kInt64);
          dx = torch::tensor(p.dx, torch::kInt64);
        }
        if (!p.flip.empty()) flip = torch::tensor(std::vector<int64_t>(p.flip.begin(), p.flip.end())).to(torch::kBool);
        const torch::Tensor z = augment_batch(data.train.images, p.index, dy, dx, flip, padding, mean, std);
        EXPECT_TRUE(torch::equal(x, z)) << "padding " << padding << " flip " << hflip << " batch " << i;
        EXPECT_TRUE(torch::equal(y, data.train.labels.index_select(0, p.index)));
      }
      EXPECT_EQ(images.state().cursor, plans.state().cursor);
      EXPECT_EQ(images.state().rng, plans.state().rng);
    }
  }
}

TEST(Resident, FlatOptimizerMatchesTorchOptimizers) {
  for (const std::string kind : {"adamw", "sgd"}) {
    // Per-group rules too: no decay on scalars, a learning-rate multiplier for them.
    const TrainOptions o = TrainOptions()
                               .optimizer(kind)
                               .momentum(0.9)
                               .lr(kind == "sgd" ? 0.05 : 1e-2)
                               .no_decay_scalars(true)
                               .scalar_lr_mult(0.1);
    auto a = make_model(/*resnet=*/false, "he"), b = make_model(/*resnet=*/false, "he");
    auto ref = make_optimizer(*a, o);
    auto groups = make_optimizer(*b, o);
    FlatOptimizer flat(*groups);
    const auto pa = a->parameters(), pb = b->parameters();
    torch::manual_seed(1);
    for (int step = 0; step < 6; ++step) {
      ref->zero_grad();
      flat.zero_grad();
      for (size_t i = 0; i < pa.size(); ++i) {
        const torch::Tensor g = torch::randn_like(pa[i]);
        pa[i].mutable_grad() = g.clone();
        pb[i].grad().copy_(g);  // the flat buffer's view
      }
      ref->step();
      flat.step(torch::ones({}, torch::kBool));
    }
    EXPECT_EQ(flat.steps(), 6);
    for (size_t i = 0; i < pa.size(); ++i) {
      const double d = (pa[i] - pb[i]).abs().max().item<double>();
      EXPECT_LE(d, 1e-6 * (1 + pa[i].abs().max().item<double>())) << kind << " parameter " << i;
    }
    // A step that is not applied changes nothing, not even the step count.
    const torch::Tensor before = flat.params().clone();
    flat.grads().fill_(std::numeric_limits<float>::quiet_NaN());
    EXPECT_FALSE(flat.grads_finite().item<bool>());
    EXPECT_EQ(flat.first_non_finite_grad().item<int64_t>(), 0);
    flat.step(torch::zeros({}, torch::kBool));
    EXPECT_TRUE(torch::equal(before, flat.params()));
    EXPECT_EQ(flat.steps(), 6);
    // The first bad element, and the parameter whose gradient holds it.
    flat.grads().zero_();
    EXPECT_EQ(flat.first_non_finite_grad().item<int64_t>(), -1);
    const int64_t at = flat.grads().numel() / 2;
    flat.grads()[at] = std::numeric_limits<float>::infinity();
    flat.grads()[at + 1] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_EQ(flat.first_non_finite_grad().item<int64_t>(), at);
    EXPECT_FALSE(torch::isfinite(flat.parameter_at(at).grad()).all().item<bool>());
    EXPECT_TRUE(torch::isfinite(flat.parameter_at(0).grad()).all().item<bool>());
    EXPECT_THROW(flat.parameter_at(-1), c10::IndexError);
    EXPECT_THROW(flat.parameter_at(flat.grads().numel()), c10::IndexError);
  }
}

TEST(Resident, FlatOptimizerGivesParametersBackTheirOwnStorage) {
  auto model = make_model(/*resnet=*/true);
  auto groups = make_optimizer(*model, TrainOptions());
  const auto params = model->parameters();
  {
    FlatOptimizer flat(*groups);
    EXPECT_EQ(params.front().data_ptr(), flat.params().data_ptr());
  }
  for (size_t i = 1; i < params.size(); ++i) {
    EXPECT_NE(params[i].data_ptr(), params[0].data_ptr());
    EXPECT_EQ(params[i].storage().nbytes(), static_cast<size_t>(params[i].numel()) * sizeof(float));
  }
}

// The resident loop on the CPU records what the step-by-step loop records.
TEST(Resident, MatchesTheStepByStepLoop) {
  DataSource data = testing::tiny_data(/*seed=*/11);
  for (bool resnet : {false, true}) {
    for (const std::string policy : {"lion-dg", "he"}) {
      const std::string name = std::string(resnet ? "resnet " : "densenet ") + policy;
      const TrainOptions o = reference_options().aux_warmup_steps(5);
      Collector ref, res;
      auto a = make_model(resnet, policy), b = make_model(resnet, policy);
      const TrainSummary sa = train(*a, data, o, {&ref});
      // (channels-last on the resident side for one of the two policies)
      const TrainSummary sb =
          train(*b, data, TrainOptions(o).resident(true).sync_every(4).channels_last(policy == "he"), {&res});
      ASSERT_EQ(sa.status, "completed");
      ASSERT_EQ(sb.status, "completed") << sb.diverged_reason;
      ASSERT_EQ(ref.steps.size(), res.steps.size()) << name;
      for (size_t i = 0; i < ref.steps.size(); ++i) {
        const StepRecord &x = ref.steps[i], &y = res.steps[i];
        EXPECT_EQ(x.step, y.step);
        EXPECT_EQ(x.aux_weight, y.aux_weight);
        EXPECT_LE(rel(x.loss, y.loss), 1e-4) << name << " step " << x.step;
        EXPECT_LE(std::abs(x.main_acc - y.main_acc), 1.0 / 32 + 1e-12) << name << " step " << x.step;
        ASSERT_EQ(x.aux_losses.size(), y.aux_losses.size());
        for (size_t k = 0; k < x.aux_losses.size(); ++k) {
          EXPECT_LE(rel(x.aux_losses[k], y.aux_losses[k]), 1e-4) << name << " step " << x.step;
          EXPECT_NEAR(x.aux_weight_norms[k], y.aux_weight_norms[k], 1e-5 * (1 + x.aux_weight_norms[k]));
        }
        EXPECT_EQ(std::isnan(x.grad_main_norm), std::isnan(y.grad_main_norm)) << name << " step " << x.step;
        if (!std::isnan(x.grad_main_norm)) {
          EXPECT_LE(rel(x.grad_main_norm, y.grad_main_norm), 1e-3) << name << " step " << x.step;
          EXPECT_NEAR(x.grad_aux_norm, y.grad_aux_norm, 1e-3 * (x.grad_aux_norm + x.grad_main_norm))
              << name << " step " << x.step;
        }
      }
      // LION-DG's decoupling, seen by the resident loop too: zero aux gradient at step 1.
      if (policy == "lion-dg") {
        EXPECT_EQ(res.steps.front().grad_aux_norm, 0.0) << name;
      }
      ASSERT_EQ(ref.evals.size(), res.evals.size());
      EXPECT_NEAR(sa.final_eval.main_acc, sb.final_eval.main_acc, 2.0 / 128) << name;
      EXPECT_LE(rel(sa.final_eval.main_loss, sb.final_eval.main_loss), 1e-3) << name;
      // The model comes back on the CPU with its own storage, trained alike.
      const auto pa = a->named_parameters(), pb = b->named_parameters();
      for (const auto& item : pa) {
        const torch::Tensor& q = pb[item.key()];
        EXPECT_TRUE(q.device().is_cpu());
        // (norms: AdamW turns rounding-level gradient differences of near-zero elements
        // into differences of up to lr per step in those elements)
        const double tol = 1e-4 * item.value().norm().item<double>() + 2e-5 * std::sqrt(item.value().numel());
        EXPECT_LE((item.value() - q).norm().item<double>(), tol)
            << name << " " << item.key();
      }
    }
  }
}

TEST(Resident, SameSeedSameRecordsWhateverTheReadBackInterval) {
  DataSource data = testing::tiny_data(/*seed=*/3);
  Collector a, b;
  train(*make_model(false), data, reference_options().resident(true).sync_every(1), {&a});
  train(*make_model(false), data, reference_options().resident(true).sync_every(5), {&b});
  ASSERT_EQ(a.steps.size(), b.steps.size());
  for (size_t i = 0; i < a.steps.size(); ++i) {
    EXPECT_EQ(a.steps[i].loss, b.steps[i].loss);
    EXPECT_EQ(a.steps[i].window_acc, b.steps[i].window_acc);
  }
  ASSERT_EQ(a.evals.size(), b.evals.size());
  EXPECT_EQ(a.evals.back().main_loss, b.evals.back().main_loss);
}

TEST(Resident, InterruptedRunResumesBitForBit) {
  testing::TempDir dir;
  DataSource data = testing::tiny_data(/*seed=*/4);
  const TrainOptions o = reference_options().steps(20).resident(true).sync_every(3);
  Collector whole, first, second;
  train(*make_model(false), data, o, {&whole});
  const std::string ckpt = dir.file("checkpoint.pt");
  struct StopAt : RecordSink {
    void on_step(const StepRecord& r) override {
      if (r.step == 9) request_stop();
    }
  } stop;
  const TrainSummary a = train(*make_model(false), data, TrainOptions(o).checkpoint_path(ckpt).checkpoint_every(4),
                               {&first, &stop});
  clear_stop_request();
  EXPECT_EQ(a.status, "interrupted");
  // Records of steps 9-11 are read after step 11 (sync every 3, checkpoints at 4
  // and 8 read too): the stop asked for at step 9 takes effect there.
  EXPECT_EQ(a.steps_run, 11);
  EXPECT_EQ(checkpoint_step(ckpt), 11);
  const TrainSummary b = train(*make_model(false), data, TrainOptions(o).resume_from(ckpt), {&second});
  EXPECT_EQ(b.status, "completed");
  EXPECT_EQ(b.resumed_from_step, 11);
  std::vector<StepRecord> joined = first.steps;
  joined.insert(joined.end(), second.steps.begin(), second.steps.end());
  ASSERT_EQ(joined.size(), whole.steps.size());
  for (size_t i = 0; i < joined.size(); ++i) {
    EXPECT_EQ(whole.steps[i].loss, joined[i].loss) << "step " << i + 1;
    EXPECT_EQ(whole.steps[i].aux_weight_norms, joined[i].aux_weight_norms) << "step " << i + 1;
  }
  EXPECT_EQ(whole.evals.back().main_loss, second.evals.back().main_loss);
  // A checkpoint of the step-by-step loop is refused by name, and the reverse.
  testing::expect_throws<UsageError>(
      [&] {
        train(*make_model(false), data, TrainOptions(o).resident(false).resume_from(ckpt));
      },
      {"checkpoint.pt", "device-resident"});
}

TEST(Resident, NonFiniteLossStopsWithStatusDiverged) {
  DataSource data = testing::tiny_data(2);
  auto model = make_model(false, "he");
  {
    torch::NoGradGuard no_grad;
    model->aux_head(1)->last_layer()->bias.fill_(std::numeric_limits<float>::infinity());
  }
  const TrainSummary s = train(*model, data, reference_options().resident(true).sync_every(5));
  EXPECT_EQ(s.status, "diverged");
  EXPECT_EQ(s.steps_run, 0);
  EXPECT_NE(s.diverged_reason.find("L_aux_1 = "), std::string::npos) << s.diverged_reason;
  EXPECT_NE(s.diverged_reason.find("step 1"), std::string::npos) << s.diverged_reason;
}

// A finite loss with a NaN gradient (poisoned by a hook on one parameter) is named by
// the parameter, in both loops.
TEST(Resident, NonFiniteGradientNamesTheParameter) {
  DataSource data = testing::tiny_data(2);
  for (bool resident : {false, true}) {
    auto model = make_model(false, "he");
    const auto named = model->named_parameters();
    const auto& item = named[named.size() / 2];
    torch::Tensor param = item.value();
    param.register_hook([](const torch::Tensor& g) { return torch::full_like(g, NAN); });
    const TrainSummary s = train(*model, data, reference_options().resident(resident).sync_every(5));
    EXPECT_EQ(s.status, "diverged") << "resident " << resident;
    EXPECT_EQ(s.steps_run, 0);
    EXPECT_NE(s.diverged_reason.find("non-finite gradient of '" + item.key() + "' (loss "), std::string::npos)
        << "resident " << resident << ": " << s.diverged_reason;
    EXPECT_NE(s.diverged_reason.find("step 1"), std::string::npos) << s.diverged_reason;
  }
}

// A diverged run leaves the model as the last good step left it: the update of the bad step
// is skipped, and the BatchNorm running statistics its forward pass had already updated are put
// back (the resident loop also runs sync_every - 1 more steps before it reads the records).
TEST(Resident, DivergedRunKeepsTheLastGoodStep) {
  constexpr int kBadStep = 3;
  DataSource data = testing::tiny_data(2);
  for (bool resident : {false, true}) {
    const TrainOptions o = reference_options().resident(resident).grad_every(0).eval_every(0).sync_every(5);
    auto good = make_model(false, "he");
    ASSERT_EQ(train(*good, data, TrainOptions(o).steps(kBadStep - 1)).status, "completed");
    auto bad = make_model(false, "he");
    auto backward_passes = std::make_shared<int>(0);
    bad->named_parameters()[0].value().register_hook([backward_passes](const torch::Tensor& g) {
      return ++*backward_passes == kBadStep ? torch::full_like(g, NAN) : g;
    });
    const TrainSummary s = train(*bad, data, o);
    ASSERT_EQ(s.status, "diverged") << "resident " << resident;
    EXPECT_EQ(s.steps_run, kBadStep - 1);
    EXPECT_NE(s.diverged_reason.find("at step " + std::to_string(kBadStep)), std::string::npos) << s.diverged_reason;
    const auto good_params = good->named_parameters();
    for (const auto& p : bad->named_parameters()) {
      EXPECT_TRUE(torch::equal(p.value(), good_params[p.key()])) << "resident " << resident << ": " << p.key();
    }
    const auto good_buffers = good->named_buffers();
    int64_t checked = 0;
    for (const auto& b : bad->named_buffers()) {
      EXPECT_TRUE(torch::equal(b.value(), good_buffers[b.key()])) << "resident " << resident << ": " << b.key();
      ++checked;
    }
    EXPECT_GT(checked, 0);
  }
}

TEST(Resident, RefusesWhatItCannotDo) {
  DataSource data = testing::tiny_data(2);
  EXPECT_THROW(train(*make_model(false), data, reference_options().device("tpu")), c10::Error);
  EXPECT_THROW(train(*make_model(false), data, reference_options().resident(true).sync_every(0)), c10::Error);
  if (!torch::cuda::is_available()) {
    testing::expect_throws<c10::Error>([&] { train(*make_model(false), data, reference_options().device("cuda")); },
                                       {"--device cuda", "no CUDA device"});
  }
}

// ------------------------------------------------------------------ CUDA (skipped without a GPU)

TEST(ResidentCuda, GraphReplayMatchesEagerAndTheCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  DataSource data = testing::tiny_data(/*seed=*/11);
  for (bool resnet : {false, true}) {
    const TrainOptions o = reference_options().steps(24).aux_warmup_steps(5);
    Collector cpu, eager, graph, again;
    train(*make_model(resnet), data, o, {&cpu});
    const TrainOptions gpu = TrainOptions(o).device("cuda").channels_last(true);
    train(*make_model(resnet), data, TrainOptions(gpu).cuda_graph(false), {&eager});
    train(*make_model(resnet), data, TrainOptions(gpu).sync_every(5), {&graph});
    train(*make_model(resnet), data, TrainOptions(gpu).sync_every(5), {&again});
    ASSERT_EQ(graph.steps.size(), cpu.steps.size());
    ASSERT_EQ(eager.steps.size(), cpu.steps.size());
    for (size_t i = 0; i < cpu.steps.size(); ++i) {
      // Replay runs the very kernels of an eager step: equal records. The CPU differs
      // by float rounding (and TF32 convolutions on Ampere+ GPUs).
      EXPECT_EQ(graph.steps[i].loss, eager.steps[i].loss) << "step " << i + 1;
      EXPECT_EQ(graph.steps[i].loss, again.steps[i].loss) << "deterministic, step " << i + 1;
      EXPECT_LE(rel(cpu.steps[i].loss, graph.steps[i].loss), 2e-2) << "step " << i + 1;
      EXPECT_EQ(std::isnan(cpu.steps[i].grad_main_norm), std::isnan(graph.steps[i].grad_main_norm));
    }
    EXPECT_EQ(graph.steps.front().grad_aux_norm, 0.0);  // decoupling at init, on the GPU
    EXPECT_EQ(graph.evals.back().main_loss, eager.evals.back().main_loss);
  }
}

}  // namespace
}  // namespace liondg
