// `liondg bench`: the training step and evaluation timed alone.

#include <liondg/experiment/bench.h>
#include <liondg/experiment/run.h>
#include <liondg/init/init.h>
#include <liondg/train/trainer.h>

#include <algorithm>
#include <chrono>

namespace liondg {
namespace {

using Clock = std::chrono::steady_clock;

BenchResult summarize(std::vector<double> seconds) {
  BenchResult r;
  r.seconds = seconds;
  std::sort(seconds.begin(), seconds.end());
  const size_t n = seconds.size();
  r.median_s = n == 0 ? 0.0 : (n % 2 ? seconds[n / 2] : 0.5 * (seconds[n / 2 - 1] + seconds[n / 2]));
  r.min_s = n == 0 ? 0.0 : seconds.front();
  r.threads = torch::get_num_threads();
  return r;
}

// The model as train() runs it (LION-DG init, channels-last when TrainOptions says so).
std::shared_ptr<DSModelImpl> bench_model(ModelSpec spec, const BenchOptions& o, const TrainOptions& train) {
  TORCH_CHECK_VALUE(o.batch_size() > 0, "--batch-size must be > 0, got ", o.batch_size());
  TORCH_CHECK_VALUE(o.steps() > 0, "--steps must be > 0, got ", o.steps());
  TORCH_CHECK_VALUE(o.warmup() >= 0, "--warmup must be >= 0, got ", o.warmup());
  set_threads(o.threads());
  spec.num_classes = o.num_classes();
  spec.in_channels = o.channels();
  torch::manual_seed(o.seed());
  std::shared_ptr<DSModelImpl> model = make_model(spec);
  lion_dg_init_(*model);
  if (train.channels_last()) to_channels_last_(*model);
  return model;
}

// Random normalized inputs in the layout train() feeds: (B,C,S,S).
torch::Tensor bench_images(const BenchOptions& o, const TrainOptions& train) {
  torch::Tensor images = torch::randn({o.batch_size(), o.channels(), o.image_size(), o.image_size()});
  return train.channels_last() ? images.contiguous(torch::MemoryFormat::ChannelsLast) : images;
}

// On a device: train() itself (the resident loop) on random images, one record
// read-back per step. The eager steps before the CUDA graph capture and the
// capturing step come on top of --warmup and are never timed.
BenchResult bench_device_step(const ModelSpec& spec, const BenchOptions& o) {
  std::shared_ptr<DSModelImpl> model = bench_model(spec, o, TrainOptions().channels_last(false));
  SyntheticOptions so;
  so.num_classes = o.num_classes();
  so.channels = o.channels();
  so.height = so.width = o.image_size();
  so.train_size = 4 * o.batch_size();
  so.test_size = o.batch_size();
  so.seed = o.seed();
  const DataSource data = make_synthetic(so);
  struct Timer final : RecordSink {
    std::vector<double> seconds;
    void on_step(const StepRecord& r) override { seconds.push_back(r.seconds); }
  } timer;
  const int64_t untimed = kGraphWarmupSteps + 1 + o.warmup();
  const TrainOptions t = TrainOptions()
                             .device(o.device())
                             .batch_size(o.batch_size())
                             .steps(untimed + o.steps())
                             .grad_every(0)
                             .eval_every(0)
                             .final_eval(false)
                             .sync_every(1);
  train(*model, data, t, {&timer});
  TORCH_CHECK(static_cast<int64_t>(timer.seconds.size()) == untimed + o.steps(), "bench: the run stopped early");
  return summarize(std::vector<double>(timer.seconds.begin() + untimed, timer.seconds.end()));
}

}  // namespace

BenchResult bench_train_step(const ModelSpec& spec, const BenchOptions& o) {
  TORCH_CHECK_VALUE(!o.bf16() || torch::Device(o.device()).is_cpu(), "bench step --bf16 is a CPU mode, got device '",
                    o.device(), "'");
  if (!torch::Device(o.device()).is_cpu()) return bench_device_step(spec, o);
  const TrainOptions train = TrainOptions().bf16(o.bf16());  // the paper's AdamW and train()'s defaults
  std::shared_ptr<DSModelImpl> model = bench_model(spec, o, train);
  std::unique_ptr<torch::optim::Optimizer> optimizer = make_optimizer(*model, train);
  model->set_fused_training(train.fused());
  model->set_bf16_training(train.bf16());
  const torch::Tensor images = bench_images(o, train);
  const torch::Tensor labels = torch::randint(o.num_classes(), {o.batch_size()}, torch::kInt64);
  model->train();
  std::vector<double> seconds;
  for (int64_t i = 0; i < o.warmup() + o.steps(); ++i) {
    const auto t0 = Clock::now();
    DSOutput out = model->forward(images);
    Losses l = compute_losses(out, labels, train.aux_weight());
    optimizer->zero_grad();
    l.total.backward();
    optimizer->step();
    volatile double loss = l.total.item<double>();
    (void)loss;
    if (i >= o.warmup()) seconds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return summarize(seconds);
}

BenchResult bench_eval(const ModelSpec& spec, const BenchOptions& o) {
  const torch::Device device(o.device());
  const TrainOptions train = TrainOptions().channels_last(device.is_cpu());
  std::shared_ptr<DSModelImpl> model = bench_model(spec, o, train);
  model->to(device);
  const torch::Tensor images = bench_images(o, train).to(device);
  model->eval();
  std::vector<double> seconds;
  torch::InferenceMode inference;
  for (int64_t i = 0; i < o.warmup() + o.steps(); ++i) {
    const auto t0 = Clock::now();
    DSOutput out = model->forward(images);
    volatile int64_t first = out.logits.argmax(/*dim=*/1)[0].item<int64_t>();
    (void)first;
    if (i >= o.warmup()) seconds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return summarize(seconds);
}

}  // namespace liondg
