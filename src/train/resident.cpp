// The resident training loop: everything a step needs lives on the device, so the
// host only draws the batch decisions, copies them in (one small copy) and launches
// the step (one CUDA graph replay); records are read back every sync_every steps.
//
// Per step, on the device: rows of the uint8 training split are gathered, cropped,
// mirrored and normalized (augment_batch), the model runs forward and backward on
// L = L_main + alpha * sum_k L_aux_k, every gradient is checked for NaN/Inf, the
// FlatOptimizer updates all parameters (skipped, and the BatchNorm running statistics
// put back, from the first non-finite step on),
// and the step's record (losses, accuracies, aux-head weight norms, diagnostics)
// goes into row `slot` of a record buffer.

#include <liondg/errors.h>
#include <liondg/models/buffers.h>
#include <liondg/train/flat_optimizer.h>
#include <liondg/train/step_graph.h>
#include <liondg/train/trainer.h>

#include <ATen/Context.h>
#include <torch/autograd.h>
#include <torch/cuda.h>
#include <torch/nn/functional/loss.h>

#include <cmath>

#include "loop.h"

namespace liondg::detail {
namespace {

// Layout of the per-step input buffer: index, dy, dx, flip (B each), then the slot.
struct InputLayout {
  int64_t batch;
  int64_t size() const { return 4 * batch + 1; }
};

// Layout of one record row (float64).
struct RecordLayout {
  int64_t aux;  // auxiliary heads
  int64_t total() const { return 0; }
  int64_t main() const { return 1; }
  int64_t aux_loss(int64_t k) const { return 2 + k; }
  int64_t main_acc() const { return 2 + aux; }
  int64_t aux_acc(int64_t k) const { return 3 + aux + k; }
  int64_t aux_weight_norm(int64_t k) const { return 3 + 2 * aux + k; }
  int64_t grad_main() const { return 3 + 3 * aux; }
  int64_t grad_aux() const { return 4 + 3 * aux; }
  int64_t finite() const { return 5 + 3 * aux; }
  int64_t bad_grad() const { return 6 + 3 * aux; }  // first non-finite gradient element, or -1
  int64_t size() const { return 7 + 3 * aux; }
};

// sqrt(sum ||g||^2) in float64 on the device; undefined gradients count as zero.
torch::Tensor norm_of(const std::vector<torch::Tensor>& grads, const torch::TensorOptions& options) {
  torch::Tensor sq = torch::zeros({}, options);
  for (const auto& g : grads) {
    if (g.defined()) sq = sq + g.to(torch::kFloat64).pow(2).sum();
  }
  return sq.sqrt();
}

}  // namespace

TrainSummary train_resident(DSModelImpl& model, const DataSource& data, const TrainOptions& o,
                            const std::vector<RecordSink*>& sinks) {
  const auto start = Clock::now();
  const torch::Device device(o.device());
  TORCH_CHECK_VALUE(device.is_cpu() || device.is_cuda(), "device must be cpu, cuda or cuda:N, got '", o.device(),
                    "'");
  if (device.is_cuda()) {
    TORCH_CHECK_VALUE(torch::cuda::is_available(), "--device ", o.device(),
                      ": no CUDA device is available (this libtorch ",
                      cuda_graphs_compiled() ? "has CUDA but finds no GPU" : "was built without CUDA", ")");
    TORCH_CHECK_VALUE(!device.has_index() || device.index() < static_cast<int64_t>(torch::cuda::device_count()),
                      "--device ", o.device(), ": only ", torch::cuda::device_count(), " CUDA device(s)");
  }
  TORCH_CHECK_VALUE(o.communicator() == nullptr,
                    "data-parallel training uses the step-by-step CPU loop; --device/--resident cannot be combined "
                    "with WORLD_SIZE > 1");
  TORCH_CHECK_VALUE(o.sync_every() > 0, "sync_every must be > 0, got ", o.sync_every());
  TORCH_CHECK_VALUE(o.checkpoint_every() >= 0, "checkpoint interval must be >= 0, got ", o.checkpoint_every());
  const bool use_graph = device.is_cuda() && o.cuda_graph();
  TORCH_CHECK_VALUE(!use_graph || cuda_graphs_compiled(), "CUDA graphs are not compiled into this build");
  // Deterministic convolution algorithms: the same seed gives the same run.
  if (device.is_cuda()) {
    at::globalContext().setBenchmarkCuDNN(false);
    at::globalContext().setDeterministicCuDNN(true);
  }
  SideStreamScope stream_scope(o.device());

  const ChannelStats stats = channel_stats(data.train.images);
  BatcherOptions bo = batcher_options(o);
  bo.prefetch = false;  // the decisions only; images are made on the device
  bo.channels_last = false;
  TrainBatcher batcher(data.train, stats, bo);
  const int64_t batch = o.batch_size();
  const int64_t num_aux = model.num_aux_heads();
  const InputLayout in_layout{batch};
  const RecordLayout rec_layout{num_aux};

  // Device-resident data and constants.
  const auto f64 = torch::TensorOptions(device).dtype(torch::kFloat64);
  const torch::Tensor train_images = data.train.images.to(device);
  const torch::Tensor train_labels = data.train.labels.to(device);
  const NormalizeTensors constants = normalize_tensors(stats, device);
  const torch::Tensor& mean = constants.mean;  // (1,C,1,1)
  const torch::Tensor& std = constants.std;
  Dataset eval_split = eval_split_of(data, o);
  eval_split.images = eval_split.images.to(device);
  eval_split.labels = eval_split.labels.to(device);

  model.to(device);
  if (o.channels_last()) to_channels_last_(model);  // NHWC: faster on oneDNN and cuDNN alike
  model.train();
  model.set_fused_training(false);  // the fused block is a CPU fast path
  const std::vector<torch::Tensor> backbone = parameters_of_kind(model, ParamRole::Kind::kBackbone);

  // Optimizer: torch's groups (per-group lr / decay rules), flattened.
  std::unique_ptr<torch::optim::Optimizer> groups = make_optimizer(model, o);
  std::unique_ptr<FlatOptimizer> flat;
  LoopState loop;
  if (!o.resume_from().empty()) {
    load_checkpoint(
        o.resume_from(), model,
        [&](torch::serialize::InputArchive& a) {
          flat = std::make_unique<FlatOptimizer>(*groups);
          flat->load(a);
        },
        "flat", batcher, loop, o);
  }
  if (!flat) flat = std::make_unique<FlatOptimizer>(*groups);

  // Static step inputs and outputs (fixed addresses: the CUDA graphs read and write them).
  const int64_t slots = o.stop_at_target() ? 1 : o.sync_every();
  torch::Tensor staging = torch::zeros({slots, in_layout.size()}, torch::kInt64);
  if (device.is_cuda()) staging = staging.pin_memory();
  torch::Tensor input = torch::zeros({in_layout.size()}, torch::TensorOptions(device).dtype(torch::kInt64));
  torch::Tensor alpha = torch::full({}, aux_weight_at(o, loop.step + 1), torch::TensorOptions(device).dtype(torch::kFloat32));
  torch::Tensor records = torch::zeros({slots, rec_layout.size()}, f64);
  torch::Tensor healthy = torch::ones({}, torch::TensorOptions(device).dtype(torch::kBool));  // no non-finite step yet
  BufferCopy buffers(model);  // BatchNorm running statistics before the step (a bad step's update is undone)

  // One training step on the current `input`; `diagnose` adds the gradient probes.
  auto step_fn = [&](bool diagnose) {
    const torch::Tensor index = input.narrow(0, 0, batch);
    const torch::Tensor dy = o.crop_padding() > 0 ? input.narrow(0, batch, batch) : torch::Tensor();
    const torch::Tensor dx = o.crop_padding() > 0 ? input.narrow(0, 2 * batch, batch) : torch::Tensor();
    const torch::Tensor flip = o.hflip() ? input.narrow(0, 3 * batch, batch).to(torch::kBool) : torch::Tensor();
    const torch::Tensor slot = input.narrow(0, 4 * batch, 1);
    buffers.save();
    torch::Tensor x = augment_batch(train_images, index, dy, dx, flip, o.crop_padding(), mean, std);
    if (o.channels_last()) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
    torch::Tensor y = train_labels.index_select(0, index);
    DSOutput out = model.forward(x);
    torch::Tensor main = torch::nn::functional::cross_entropy(out.logits, y);
    std::vector<torch::Tensor> row(static_cast<size_t>(rec_layout.size()));
    torch::Tensor aux_sum = torch::zeros({}, out.logits.options());
    for (int64_t k = 0; k < num_aux; ++k) {
      torch::Tensor l = torch::nn::functional::cross_entropy(out.aux_logits[static_cast<size_t>(k)], y);
      aux_sum = aux_sum + l;
      row[static_cast<size_t>(rec_layout.aux_loss(k))] = l.detach().to(torch::kFloat64);
    }
    torch::Tensor aux_term = aux_sum * alpha;
    torch::Tensor total = main + aux_term;
    row[static_cast<size_t>(rec_layout.total())] = total.detach().to(torch::kFloat64);
    row[static_cast<size_t>(rec_layout.main())] = main.detach().to(torch::kFloat64);
    {
      torch::NoGradGuard no_grad;
      row[static_cast<size_t>(rec_layout.main_acc())] = out.logits.argmax(1).eq(y).to(torch::kFloat64).mean();
      for (int64_t k = 0; k < num_aux; ++k) {
        row[static_cast<size_t>(rec_layout.aux_acc(k))] =
            out.aux_logits[static_cast<size_t>(k)].argmax(1).eq(y).to(torch::kFloat64).mean();
        row[static_cast<size_t>(rec_layout.aux_weight_norm(k))] =
            model.aux_head(k)->last_layer()->weight.norm().to(torch::kFloat64);
      }
    }
    if (diagnose) {
      row[static_cast<size_t>(rec_layout.grad_main())] = norm_of(grads_of(main, backbone), f64);
      row[static_cast<size_t>(rec_layout.grad_aux())] =
          num_aux > 0 ? norm_of(grads_of(aux_term, backbone), f64) : torch::zeros({}, f64);
    } else {
      row[static_cast<size_t>(rec_layout.grad_main())] = torch::full({}, NAN, f64);
      row[static_cast<size_t>(rec_layout.grad_aux())] = torch::full({}, NAN, f64);
    }
    flat->zero_grad();
    total.backward();
    torch::NoGradGuard no_grad;
    const torch::Tensor bad_grad = flat->first_non_finite_grad();
    const torch::Tensor finite = torch::isfinite(total).logical_and(bad_grad.lt(0));
    healthy.logical_and_(finite);
    buffers.restore_unless(healthy);
    flat->step(healthy);
    row[static_cast<size_t>(rec_layout.finite())] = finite.to(torch::kFloat64);
    row[static_cast<size_t>(rec_layout.bad_grad())] = bad_grad.to(torch::kFloat64);
    records.index_copy_(/*dim=*/0, slot, torch::stack(row).view({1, rec_layout.size()}));
  };

  TrainSummary summary;
  summary.resumed_from_step = loop.step;
  auto write_checkpoint = [&] {
    for (auto* s : sinks) s->on_checkpoint(loop.step);
    if (!o.checkpoint_path().empty()) {
      save_checkpoint(
          o.checkpoint_path(), model, [&](torch::serialize::OutputArchive& a) { flat->save(a); }, "flat",
          batcher.state(), loop, o);
      summary.checkpoint = o.checkpoint_path();
    }
  };
  auto emit_eval = [&](int64_t step) {
    const auto t0 = Clock::now();
    EvalRecord e = evaluate(model, eval_split, stats, o.eval_batch_size(), o.channels_last());
    e.step = step;
    loop.eval_seconds += seconds_since(t0);
    for (auto* s : sinks) s->on_eval(e);
    return e;
  };

  // The name of the parameter holding flat gradient element `index` (as the CPU loop names it).
  auto parameter_name = [&](int64_t index) -> std::string {
    if (index < 0 || index >= flat->params().numel()) return "?";
    const torch::Tensor& p = flat->parameter_at(index);
    for (const auto& item : model.named_parameters()) {
      if (item.value().is_same(p)) return item.key();
    }
    return "?";
  };

  // Steps launched since the last read-back: their records are rows 0..pending-1.
  int64_t pending = 0;
  auto pending_start = Clock::now();
  // Reads the pending records back and hands them out; false when one was not finite
  // (summary.status is then "diverged" and loop.step the last good step).
  auto flush = [&]() -> bool {
    if (pending == 0) return true;
    const torch::Tensor rows = records.narrow(0, 0, pending).cpu();  // waits for the steps
    const double seconds = seconds_since(pending_start) / static_cast<double>(pending);
    const auto* v = rows.data_ptr<double>();
    const int64_t first = loop.step + 1;
    for (int64_t i = 0; i < pending; ++i, v += rec_layout.size()) {
      StepRecord r;
      r.step = first + i;
      r.aux_weight = aux_weight_at(o, r.step);
      r.loss = v[rec_layout.total()];
      r.main_loss = v[rec_layout.main()];
      r.main_acc = v[rec_layout.main_acc()];
      for (int64_t k = 0; k < num_aux; ++k) {
        r.aux_losses.push_back(v[rec_layout.aux_loss(k)]);
        r.aux_accs.push_back(v[rec_layout.aux_acc(k)]);
        r.aux_weight_norms.push_back(v[rec_layout.aux_weight_norm(k)]);
      }
      r.grad_main_norm = v[rec_layout.grad_main()];
      r.grad_aux_norm = v[rec_layout.grad_aux()];
      if (!std::isnan(r.grad_main_norm)) {
        r.grad_ratio = r.grad_main_norm > 0 ? r.grad_aux_norm / r.grad_main_norm : NAN;
      }
      if (v[rec_layout.finite()] == 0.0) {
        summary.status = "diverged";
        summary.diverged_reason =
            (std::isfinite(r.loss) ? "non-finite gradient of '" +
                                         parameter_name(static_cast<int64_t>(v[rec_layout.bad_grad()])) +
                                         "' (loss " + std::to_string(r.loss) + ")"
                                   : "non-finite loss (" + first_non_finite(r) + ")") +
            " at step " + std::to_string(r.step);
        pending = 0;
        return false;
      }
      update_window(loop, r, o);
      r.seconds = seconds;
      loop.train_seconds += seconds;
      loop.step = r.step;
      loop.final_train_window_acc = r.window_acc;
      for (auto* s : sinks) s->on_step(r);
    }
    pending = 0;
    return true;
  };

  StepGraph step_graph, diag_graph;
  const bool already_done = o.stop_at_target() && loop.steps_to_target.has_value();
  int64_t eager_steps = 0;
  for (int64_t step = loop.step + 1; step <= o.steps() && !already_done; ++step) {
    if (pending == 0) pending_start = Clock::now();
    // This step's decisions into the device's input buffer (asynchronous on CUDA).
    const BatchPlan plan = batcher.next_plan();
    torch::Tensor stage = staging[pending];
    auto* s = stage.data_ptr<int64_t>();
    std::copy_n(plan.index.data_ptr<int64_t>(), batch, s);
    if (!plan.dy.empty()) {
      std::copy(plan.dy.begin(), plan.dy.end(), s + batch);
      std::copy(plan.dx.begin(), plan.dx.end(), s + 2 * batch);
    }
    std::copy(plan.flip.begin(), plan.flip.end(), s + 3 * batch);
    s[4 * batch] = pending;
    input.copy_(stage, /*non_blocking=*/true);
    if (o.aux_warmup_steps() > 0) alpha.fill_(aux_weight_at(o, step));

    const bool diagnose = diagnoses_at(o, step);
    if (use_graph && eager_steps >= kGraphWarmupSteps) {
      StepGraph& g = diagnose ? diag_graph : step_graph;
      if (!g.captured()) {
        StepGraph* other = diagnose ? &step_graph : &diag_graph;
        g.capture([&] { step_fn(diagnose); }, other->captured() ? other : nullptr);
      }
      g.replay();
    } else {
      step_fn(diagnose);
      ++eager_steps;
    }
    ++pending;

    bool stop_now = stop_requested();
    const bool evaluates = evaluates_at(o, step);
    const bool checkpoints = checkpoints_at(o, step);
    if (pending == slots || step == o.steps() || evaluates || checkpoints || stop_now) {
      if (!flush()) break;
    }
    // A stop may also come from a sink that just saw its records (as a signal may).
    stop_now = stop_now || (pending == 0 && stop_requested());
    if (evaluates) emit_eval(step);
    if (stop_now) {
      summary.status = "interrupted";
      if (!o.checkpoint_path().empty()) write_checkpoint();
      break;
    }
    if (checkpoints) write_checkpoint();
    if (o.stop_at_target() && loop.steps_to_target) break;
  }
  summary.steps_run = loop.step;
  summary.steps_to_target = loop.steps_to_target;
  summary.final_train_window_acc = loop.final_train_window_acc;
  if (summary.status == "completed" && o.final_eval()) {
    summary.final_eval = emit_eval(summary.steps_run);
    if (data.val.size() > 0) {
      const auto t0 = Clock::now();
      Dataset test = data.test;
      test.images = test.images.to(device);
      test.labels = test.labels.to(device);
      summary.final_test = evaluate(model, test, stats, o.eval_batch_size(), o.channels_last());
      summary.final_test->step = summary.steps_run;
      loop.eval_seconds += seconds_since(t0);
    }
  }
  flat.reset();  // parameters get their own storage again
  cuda_synchronize();
  model.to(torch::kCPU);
  summary.train_seconds = loop.train_seconds;
  summary.eval_seconds = loop.eval_seconds;
  summary.wall_seconds = seconds_since(start);
  return summary;
}

}  // namespace liondg::detail
