// The training loop of the paper's protocol.

#include <liondg/errors.h>
#include <liondg/models/batch_norm.h>
#include <liondg/models/buffers.h>
#include <liondg/train/distributed.h>
#include <liondg/train/trainer.h>
#include <liondg/util/fs.h>

#include "loop.h"

#include <torch/autograd.h>
#include <torch/nn/functional/loss.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <numeric>
#include <sstream>

namespace liondg {
namespace {

// logits (N,K), labels (N) -> fraction of correct argmax predictions
double accuracy(const torch::Tensor& logits, const torch::Tensor& labels) {
  return logits.argmax(/*dim=*/1).eq(labels).to(torch::kFloat64).mean().item<double>();
}

double l2_norm(const std::vector<torch::Tensor>& grads) {
  double sq = 0.0;
  for (const auto& g : grads) {
    if (g.defined()) sq += g.to(torch::kFloat64).pow(2).sum().item<double>();
  }
  return std::sqrt(sq);
}

double max_abs(const std::vector<torch::Tensor>& grads) {
  double m = 0.0;
  for (const auto& g : grads) {
    if (g.defined() && g.numel() > 0) m = std::max(m, g.abs().max().item<double>());
  }
  return m;
}

// Replaces `grads` by their mean over ranks (undefined = zero), one all-reduce.
void average_gradients_(Communicator* comm, std::vector<torch::Tensor>& grads,
                        const std::vector<torch::Tensor>& params) {
  if (comm == nullptr || comm->world_size() == 1 || grads.empty()) return;
  std::vector<torch::Tensor> parts;
  for (size_t i = 0; i < grads.size(); ++i) {
    parts.push_back(grads[i].defined() ? grads[i].reshape(-1) : torch::zeros({params[i].numel()}, params[i].options()));
  }
  torch::Tensor flat = torch::cat(parts).to(torch::kFloat64);
  comm->all_reduce_sum_(flat);
  flat.div_(static_cast<double>(comm->world_size()));
  int64_t offset = 0;
  for (size_t i = 0; i < grads.size(); ++i) {
    const int64_t n = params[i].numel();
    grads[i] = flat.narrow(/*dim=*/0, offset, n).view(params[i].sizes());
    offset += n;
  }
}

std::atomic<bool> g_stop_requested{false};

constexpr int64_t kCheckpointVersion = 1;

c10::IValue read_value(torch::serialize::InputArchive& archive, const std::string& key, const std::string& path) {
  c10::IValue v;
  if (!archive.try_read(key, v)) throw DataError("checkpoint '" + path + "' lacks '" + key + "'");
  return v;
}

torch::serialize::InputArchive open_checkpoint(const std::string& path) {
  if (!is_regular_file(path)) throw DataError("checkpoint '" + path + "' does not exist");
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    throw DataError("checkpoint '" + path + "' is not a readable liondg checkpoint (truncated or corrupt?): " +
                    e.what_without_backtrace());
  }
  const c10::IValue version = read_value(archive, "liondg/version", path);
  if (!version.isInt() || version.toInt() != kCheckpointVersion) {
    throw DataError("checkpoint '" + path + "' has an unsupported format version (expected " +
                    std::to_string(kCheckpointVersion) + ")");
  }
  return archive;
}

}  // namespace

namespace detail {

void save_checkpoint(const std::string& path, DSModelImpl& model, const SaveOptimizer& save_optimizer,
                     const std::string& layout, const BatcherState& batcher, const LoopState& loop,
                     const TrainOptions& o) {
  torch::serialize::OutputArchive archive, model_archive, optimizer_archive;
  model.save(model_archive);
  save_optimizer(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optimizer_archive);
  archive.write("liondg/version", c10::IValue(kCheckpointVersion));
  archive.write("liondg/optimizer_layout", c10::IValue(layout));
  archive.write("liondg/step", c10::IValue(loop.step));
  archive.write("liondg/batch_size", c10::IValue(o.batch_size()));
  archive.write("liondg/seed", c10::IValue(static_cast<int64_t>(o.seed())));
  archive.write("liondg/window", torch::tensor(std::vector<double>(loop.window.begin(), loop.window.end()),
                                               torch::kFloat64));
  archive.write("liondg/window_sum", c10::IValue(loop.window_sum));
  archive.write("liondg/steps_to_target", c10::IValue(loop.steps_to_target.value_or(-1)));
  archive.write("liondg/final_train_window_acc", c10::IValue(loop.final_train_window_acc));
  archive.write("liondg/train_seconds", c10::IValue(loop.train_seconds));
  archive.write("liondg/eval_seconds", c10::IValue(loop.eval_seconds));
  archive.write("batcher/rng", c10::IValue(batcher.rng));
  archive.write("batcher/order", torch::tensor(batcher.order, torch::kInt64));
  archive.write("batcher/cursor", c10::IValue(batcher.cursor));
  archive.write("batcher/epoch", c10::IValue(batcher.epoch));
  std::ostringstream bytes;
  archive.save_to(bytes);
  write_file_atomic(path, bytes.str());  // temporary file, fsync, rename
}

void load_checkpoint(const std::string& path, DSModelImpl& model, const LoadOptimizer& load_optimizer,
                     const std::string& layout, TrainBatcher& batcher, LoopState& loop, const TrainOptions& o) {
  torch::serialize::InputArchive archive = open_checkpoint(path);
  c10::IValue stored_layout;
  const std::string found = archive.try_read("liondg/optimizer_layout", stored_layout) && stored_layout.isString()
                                ? stored_layout.toStringRef()
                                : std::string("torch");
  if (found != layout) {
    throw UsageError("checkpoint '" + path + "' was written by the " +
                     (found == "flat" ? std::string("device-resident") : std::string("step-by-step CPU")) +
                     " training loop; resume it with the same --device (and --resident) setting");
  }
  const int64_t batch = read_value(archive, "liondg/batch_size", path).toInt();
  const int64_t seed = read_value(archive, "liondg/seed", path).toInt();
  if (batch != o.batch_size() || seed != static_cast<int64_t>(o.seed())) {
    throw UsageError("checkpoint '" + path + "' belongs to a run with batch size " + std::to_string(batch) +
                     " and seed " + std::to_string(seed) + "; this run has batch size " +
                     std::to_string(o.batch_size()) + " and seed " + std::to_string(o.seed()));
  }
  try {
    torch::serialize::InputArchive model_archive, optimizer_archive;
    archive.read("model", model_archive);
    archive.read("optimizer", optimizer_archive);
    model.load(model_archive);
    load_optimizer(optimizer_archive);
  } catch (const c10::Error& e) {
    throw DataError("checkpoint '" + path + "' does not fit this model or optimizer: " + e.what_without_backtrace());
  }
  loop.step = read_value(archive, "liondg/step", path).toInt();
  if (loop.step < 0 || loop.step > o.steps()) {
    throw UsageError("checkpoint '" + path + "' is at step " + std::to_string(loop.step) + ", beyond this run's " +
                     std::to_string(o.steps()) + " steps");
  }
  torch::Tensor window;
  archive.read("liondg/window", window);
  for (int64_t i = 0; i < window.numel(); ++i) loop.window.push_back(window[i].item<double>());
  loop.window_sum = read_value(archive, "liondg/window_sum", path).toDouble();
  const int64_t target = read_value(archive, "liondg/steps_to_target", path).toInt();
  if (target >= 0) loop.steps_to_target = target;
  loop.final_train_window_acc = read_value(archive, "liondg/final_train_window_acc", path).toDouble();
  loop.train_seconds = read_value(archive, "liondg/train_seconds", path).toDouble();
  loop.eval_seconds = read_value(archive, "liondg/eval_seconds", path).toDouble();
  BatcherState b;
  b.rng = read_value(archive, "batcher/rng", path).toStringRef();
  torch::Tensor order;
  archive.read("batcher/order", order);
  b.order.assign(order.data_ptr<int64_t>(), order.data_ptr<int64_t>() + order.numel());
  b.cursor = read_value(archive, "batcher/cursor", path).toInt();
  b.epoch = read_value(archive, "batcher/epoch", path).toInt();
  batcher.restore(b);
}

std::string first_non_finite(const StepRecord& r) {
  std::ostringstream s;
  if (!std::isfinite(r.main_loss)) {
    s << "L_main = " << r.main_loss;
  } else {
    for (size_t k = 0; k < r.aux_losses.size(); ++k) {
      if (!std::isfinite(r.aux_losses[k])) {
        s << "L_aux_" << k << " = " << r.aux_losses[k];
        break;
      }
    }
  }
  if (s.str().empty()) s << "total = " << r.loss;
  return s.str();
}

std::vector<torch::Tensor> grads_of(const torch::Tensor& loss, const std::vector<torch::Tensor>& params) {
  if (params.empty() || !loss.requires_grad()) return std::vector<torch::Tensor>(params.size());
  return torch::autograd::grad({loss}, params, /*grad_outputs=*/{}, /*retain_graph=*/true,
                               /*create_graph=*/false, /*allow_unused=*/true);
}

BatcherOptions batcher_options(const TrainOptions& o) {
  BatcherOptions bo;
  bo.batch_size = o.batch_size();
  bo.hflip = o.hflip();
  bo.seed = o.seed();
  bo.crop_padding = o.crop_padding();
  bo.prefetch = o.prefetch();
  bo.channels_last = o.channels_last();
  return bo;
}

void update_window(LoopState& loop, StepRecord& r, const TrainOptions& o) {
  loop.window.push_back(r.main_acc);
  loop.window_sum += r.main_acc;
  if (static_cast<int64_t>(loop.window.size()) > o.target_window()) {
    loop.window_sum -= loop.window.front();
    loop.window.pop_front();
  }
  r.window_acc = loop.window_sum / static_cast<double>(loop.window.size());
  if (!loop.steps_to_target && static_cast<int64_t>(loop.window.size()) == o.target_window() &&
      r.window_acc >= o.target_acc()) {
    loop.steps_to_target = r.step;
  }
}

Dataset eval_split_of(const DataSource& data, const TrainOptions& o) {
  TORCH_CHECK_VALUE(o.eval_limit() >= 0, "eval limit must be >= 0, got ", o.eval_limit());
  Dataset eval_split = data.eval_split();
  if (o.eval_limit() > 0 && o.eval_limit() < eval_split.size()) {
    eval_split.images = eval_split.images.narrow(0, 0, o.eval_limit());
    eval_split.labels = eval_split.labels.narrow(0, 0, o.eval_limit());
    if (eval_split.coarse_labels.defined()) eval_split.coarse_labels = eval_split.coarse_labels.narrow(0, 0, o.eval_limit());
  }
  return eval_split;
}

}  // namespace detail

namespace {

using detail::Clock;
using detail::first_non_finite;
using detail::grads_of;
using detail::LoopState;
using detail::seconds_since;

// Name of the first parameter whose gradient holds NaN or Inf, or "".
std::string non_finite_gradient(DSModelImpl& model) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> peaks;  // max |g| propagates NaN and Inf: one check for all
  for (const auto& p : model.parameters()) {
    if (p.grad().defined() && p.grad().numel() > 0) peaks.push_back(p.grad().abs().max());
  }
  if (peaks.empty() || torch::stack(peaks).isfinite().all().item<bool>()) return "";
  for (const auto& item : model.named_parameters()) {
    const torch::Tensor& g = item.value().grad();
    if (g.defined() && g.numel() > 0 && !torch::isfinite(g.abs().max()).item<bool>()) return item.key();
  }
  return "";
}

// Synchronized BatchNorm's reductions through the run's communicator.
class CommunicatorBatchNormSync final : public BatchNormSync {
 public:
  explicit CommunicatorBatchNormSync(Communicator& comm) : comm_(comm) {}
  void all_reduce_sum_(const torch::Tensor& tensor) override { comm_.all_reduce_sum_(tensor); }

 private:
  Communicator& comm_;
};

}  // namespace

void request_stop() { g_stop_requested.store(true); }
bool stop_requested() { return g_stop_requested.load(); }
void clear_stop_request() { g_stop_requested.store(false); }

int64_t checkpoint_step(const std::string& path) {
  torch::serialize::InputArchive archive = open_checkpoint(path);
  return read_value(archive, "liondg/step", path).toInt();
}

Losses compute_losses(const DSOutput& out, const torch::Tensor& labels, double aux_weight) {
  Losses l;
  l.main = torch::nn::functional::cross_entropy(out.logits, labels);
  torch::Tensor aux_sum = torch::zeros({}, out.logits.options());
  for (const auto& logits : out.aux_logits) {
    l.aux.push_back(torch::nn::functional::cross_entropy(logits, labels));
    aux_sum = aux_sum + l.aux.back();
  }
  l.aux_term = aux_sum * aux_weight;
  l.total = l.main + l.aux_term;
  return l;
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(DSModelImpl& model, const TrainOptions& o) {
  std::map<std::pair<bool, bool>, std::vector<torch::Tensor>> groups;  // (scalar, decay off) -> params
  for (const auto& p : model.parameters()) {
    const bool scalar = p.numel() == 1;
    bool zero = false;
    if (o.no_decay_zero_init()) {
      torch::NoGradGuard no_grad;
      zero = p.eq(0).all().item<bool>();
    }
    const bool decay_off = (scalar && o.no_decay_scalars()) || (zero && o.no_decay_zero_init());
    groups[{scalar, decay_off}].push_back(p);
  }
  std::vector<torch::optim::OptimizerParamGroup> param_groups;
  for (auto& [key, params] : groups) {
    const double lr = o.lr() * (key.first ? o.scalar_lr_mult() : 1.0);
    const double wd = key.second ? 0.0 : o.weight_decay();
    if (o.optimizer() == "sgd") {
      param_groups.emplace_back(params, std::make_unique<torch::optim::SGDOptions>(
                                            torch::optim::SGDOptions(lr).momentum(o.momentum()).weight_decay(wd)));
    } else {
      param_groups.emplace_back(params, std::make_unique<torch::optim::AdamWOptions>(
                                            torch::optim::AdamWOptions(lr)
                                                .betas(std::make_tuple(o.beta1(), o.beta2()))
                                                .eps(o.eps())
                                                .weight_decay(wd)));
    }
  }
  if (o.optimizer() == "sgd") {
    return std::make_unique<torch::optim::SGD>(param_groups, torch::optim::SGDOptions(o.lr()));
  }
  return std::make_unique<torch::optim::AdamW>(param_groups, torch::optim::AdamWOptions(o.lr()));
}

bool uses_resident_loop(const TrainOptions& o) {
  return o.resident() || torch::Device(o.device()).type() != torch::kCPU;
}

double aux_weight_at(const TrainOptions& o, int64_t step) {
  if (o.aux_warmup_steps() <= 0) return o.aux_weight();
  const double t = static_cast<double>(step - 1);
  return o.aux_weight() * std::min(1.0, t / static_cast<double>(o.aux_warmup_steps()));
}

EvalRecord evaluate(DSModelImpl& model, const Dataset& split, const ChannelStats& stats, int64_t batch_size,
                    bool channels_last, Communicator* comm) {
  TORCH_CHECK_VALUE(batch_size > 0, "evaluation batch size must be > 0, got ", batch_size);
  const bool was_training = model.is_training();
  model.eval();
  // Data parallel: rank 0's running statistics everywhere, one shard of the split each.
  const int64_t world = comm != nullptr ? comm->world_size() : 1;
  int64_t begin = 0, end = split.size();
  if (world > 1) {
    broadcast_tensors_(*comm, model.buffers(), /*root=*/0);
    begin = split.size() * comm->rank() / world;
    end = split.size() * (comm->rank() + 1) / world;
  }
  EvalRecord rec;
  // Counts accumulate on the model's device: one synchronization per evaluation.
  const torch::Device device = model.parameters().front().device();
  torch::Tensor correct = torch::zeros({1 + model.num_aux_heads()}, torch::TensorOptions(device).dtype(torch::kInt64));
  torch::Tensor loss_sum = torch::zeros({}, torch::TensorOptions(device).dtype(torch::kFloat64));
  {
    torch::InferenceMode guard;
    const NormalizeTensors constants = normalize_tensors(stats, device);
    for (int64_t start = begin; start < end; start += batch_size) {
      const int64_t n = std::min(batch_size, end - start);
      torch::Tensor x = normalize(split.images.narrow(0, start, n).to(device), constants);
      if (channels_last) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
      torch::Tensor y = split.labels.narrow(0, start, n).to(device);
      DSOutput out = model.forward(x);
      std::vector<torch::Tensor> hits{out.logits.argmax(1).eq(y).sum()};
      for (const auto& a : out.aux_logits) hits.push_back(a.argmax(1).eq(y).sum());
      correct += torch::stack(hits);
      loss_sum += torch::nn::functional::cross_entropy(
                      out.logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                      .to(torch::kFloat64);
    }
  }
  const torch::Tensor counts = correct.cpu();
  int64_t main_correct = counts[0].item<int64_t>();
  double main_loss_sum = loss_sum.item<double>();
  std::vector<int64_t> aux_correct;
  for (int64_t k = 0; k < model.num_aux_heads(); ++k) aux_correct.push_back(counts[1 + k].item<int64_t>());
  if (world > 1) {
    std::vector<double> sums{static_cast<double>(main_correct), main_loss_sum};
    for (int64_t c : aux_correct) sums.push_back(static_cast<double>(c));
    sum_values_(*comm, sums);
    main_correct = std::llround(sums[0]);
    main_loss_sum = sums[1];
    for (size_t k = 0; k < aux_correct.size(); ++k) aux_correct[k] = std::llround(sums[2 + k]);
  }
  const double n = std::max<double>(1.0, static_cast<double>(split.size()));
  rec.main_acc = static_cast<double>(main_correct) / n;
  rec.main_loss = main_loss_sum / n;
  for (int64_t c : aux_correct) rec.aux_accs.push_back(static_cast<double>(c) / n);
  model.train(was_training);
  return rec;
}

GradientProbe probe_gradients(DSModelImpl& model, const torch::Tensor& images, const torch::Tensor& labels,
                              double aux_weight) {
  model.train();
  const std::vector<torch::Tensor> backbone = parameters_of_kind(model, ParamRole::Kind::kBackbone);
  const std::vector<torch::Tensor> heads = parameters_of_kind(model, ParamRole::Kind::kAuxHead);
  DSOutput out = model.forward(images);
  Losses l = compute_losses(out, labels, aux_weight);
  GradientProbe p;
  p.main_norm = l2_norm(grads_of(l.main, backbone));
  const std::vector<torch::Tensor> aux_backbone = grads_of(l.aux_term, backbone);
  p.aux_norm = l2_norm(aux_backbone);
  p.backbone_aux_max_abs = max_abs(aux_backbone);
  p.head_aux_max_abs = max_abs(grads_of(l.aux_term, heads));
  return p;
}

TrainSummary train(DSModelImpl& model, const DataSource& data, const TrainOptions& o,
                   const std::vector<RecordSink*>& sinks) {
  TORCH_CHECK_VALUE(o.steps() > 0, "steps must be > 0, got ", o.steps());
  TORCH_CHECK_VALUE(o.lr() > 0, "learning rate must be > 0, got ", o.lr());
  TORCH_CHECK_VALUE(o.aux_weight() >= 0, "aux weight must be >= 0, got ", o.aux_weight());
  TORCH_CHECK_VALUE(o.target_window() > 0, "target window must be > 0, got ", o.target_window());
  TORCH_CHECK_VALUE(o.grad_every() >= 0 && o.eval_every() >= 0, "grad_every and eval_every must be >= 0");
  TORCH_CHECK_VALUE(o.optimizer() == "adamw" || o.optimizer() == "sgd", "optimizer must be adamw or sgd, got '",
                    o.optimizer(), "'");
  TORCH_CHECK_VALUE(o.aux_warmup_steps() >= 0, "aux warmup steps must be >= 0, got ", o.aux_warmup_steps());
  TORCH_CHECK_VALUE(o.scalar_lr_mult() > 0, "scalar lr multiplier must be > 0, got ", o.scalar_lr_mult());
  TORCH_CHECK_VALUE(o.bucket_bytes() > 0, "gradient bucket size must be > 0 bytes, got ", o.bucket_bytes());
  // bfloat16 lives in the fused CPU blocks only; anywhere else it would silently not apply.
  const bool synced_norm = o.sync_batch_norm() && o.communicator() && o.communicator()->world_size() > 1;
  TORCH_CHECK_VALUE(!o.bf16() || (o.fused() && !uses_resident_loop(o) && !synced_norm),
                    "bf16 training needs the fused CPU loop (device cpu, fused blocks, not resident, no synchronized "
                    "BatchNorm across ranks); got device '", o.device(), "', fused blocks ", o.fused() ? "on" : "off",
                    ", resident loop ", o.resident() ? "on" : "off", ", synchronized BatchNorm ", synced_norm ? "on" : "off");
  if (uses_resident_loop(o)) {
    return detail::train_resident(model, data, o, sinks);
  }
  const auto start = Clock::now();
  Communicator* comm = o.communicator().get();
  const int64_t world = comm != nullptr ? comm->world_size() : 1;
  TORCH_CHECK_VALUE(o.batch_size() % world == 0, "batch size ", o.batch_size(), " must be divisible by WORLD_SIZE=",
                    world, " (each rank trains on batch_size / WORLD_SIZE images)");

  const ChannelStats stats = channel_stats(data.train.images);
  BatcherOptions bo = detail::batcher_options(o);
  bo.shard_rank = comm != nullptr ? comm->rank() : 0;
  bo.shard_count = world;
  TrainBatcher batcher(data.train, stats, bo);
  if (o.channels_last()) to_channels_last_(model);
  // One model on every rank, whatever the init policy did: rank 0's.
  std::unique_ptr<GradientReducer> reducer;
  std::unique_ptr<CommunicatorBatchNormSync> bn_sync;
  if (world > 1) {
    std::vector<torch::Tensor> state = model.parameters();
    for (const auto& b : model.buffers()) state.push_back(b);
    broadcast_tensors_(*comm, state, /*root=*/0);
    reducer = std::make_unique<GradientReducer>(model.parameters(), o.communicator(), o.bucket_bytes());
    if (o.sync_batch_norm()) bn_sync = std::make_unique<CommunicatorBatchNormSync>(*comm);
  }
  SyncBatchNormGuard sync_guard(bn_sync.get());
  const double comm_start = comm != nullptr ? comm->blocked_seconds() : 0.0;
  std::unique_ptr<torch::optim::Optimizer> optimizer = make_optimizer(model, o);
  // The fused fast paths (and bf16) for this loop only (training's is first-order;
  // callers may need more), the model's own settings again afterwards; --no-fused also
  // evaluates through the straightforward path.
  struct FusedScope {
    DSModelImpl& m;
    const bool training_before, inference_before, bf16_before;
    FusedScope(DSModelImpl& model, bool on, bool bf16)
        : m(model),
          training_before(model.fused_training()),
          inference_before(model.fused_inference()),
          bf16_before(model.bf16_training()) {
      m.set_bf16_training(bf16);  // first: a model without bf16 refuses it before anything changed
      m.set_fused_training(on);
      m.set_fused_inference(on);
    }
    ~FusedScope() {
      m.set_fused_training(training_before);
      m.set_fused_inference(inference_before);
      m.set_bf16_training(bf16_before);
    }
  } fused_scope(model, o.fused(), o.bf16());
  const std::vector<torch::Tensor> backbone = parameters_of_kind(model, ParamRole::Kind::kBackbone);
  const int64_t num_aux = model.num_aux_heads();

  LoopState loop;
  if (!o.resume_from().empty()) {
    detail::load_checkpoint(
        o.resume_from(), model, [&](torch::serialize::InputArchive& a) { optimizer->load(a); }, "torch", batcher,
        loop, o);
    if (o.channels_last()) to_channels_last_(model);  // the layout the run had
  }
  TrainSummary summary;
  summary.world_size = world;
  summary.resumed_from_step = loop.step;
  const bool writes_checkpoints = !o.checkpoint_path().empty() && (comm == nullptr || comm->rank() == 0);
  auto write_checkpoint = [&] {
    for (auto* s : sinks) s->on_checkpoint(loop.step);
    if (writes_checkpoints) {
      detail::save_checkpoint(
          o.checkpoint_path(), model, [&](torch::serialize::OutputArchive& a) { optimizer->save(a); }, "torch",
          batcher.state(), loop, o);
      summary.checkpoint = o.checkpoint_path();
    }
  };
  TORCH_CHECK_VALUE(o.checkpoint_every() >= 0, "checkpoint interval must be >= 0, got ", o.checkpoint_every());
  const Dataset eval_split = detail::eval_split_of(data, o);
  double eval_comm_seconds = 0.0;  // collectives of validation, not of training steps
  auto emit_eval = [&](int64_t step) {
    const auto t0 = Clock::now();
    const double comm_before = comm != nullptr ? comm->blocked_seconds() : 0.0;
    EvalRecord e = evaluate(model, eval_split, stats, o.eval_batch_size(), o.channels_last(), comm);
    if (comm != nullptr) eval_comm_seconds += comm->blocked_seconds() - comm_before;
    e.step = step;
    loop.eval_seconds += seconds_since(t0);
    for (auto* s : sinks) s->on_eval(e);
    return e;
  };
  // A diverging step's forward pass has updated the BatchNorm running statistics already:
  // diverge() puts them back, so the model is left as the last good step left it.
  BufferCopy buffers(model);
  auto diverge = [&](int64_t step, const std::string& reason) {
    buffers.restore();
    summary.status = "diverged";
    summary.diverged_reason = reason + " at step " + std::to_string(step);
  };

  model.train();
  const bool already_done = o.stop_at_target() && loop.steps_to_target.has_value();
  for (int64_t step = loop.step + 1; step <= o.steps() && !already_done; ++step) {
    const auto t0 = Clock::now();
    auto [images, labels] = batcher.next();
    buffers.save();
    DSOutput out = model.forward(images);
    const double alpha = aux_weight_at(o, step);
    Losses l = compute_losses(out, labels, alpha);

    StepRecord r;
    r.step = step;
    r.aux_weight = alpha;
    r.loss = l.total.item<double>();
    r.main_loss = l.main.item<double>();
    for (const auto& a : l.aux) r.aux_losses.push_back(a.item<double>());
    r.main_acc = accuracy(out.logits, labels);
    for (const auto& a : out.aux_logits) r.aux_accs.push_back(accuracy(a, labels));
    bool stop_now = stop_requested();
    if (world > 1) {
      // The global batch's values (equal shards: the mean of the ranks' means), the
      // same on every rank, so every rank takes the same decisions below; a stop
      // request seen by any rank stops all of them after this step.
      std::vector<double> v{r.loss, r.main_loss, r.main_acc, stop_now ? 1.0 : 0.0};
      v.insert(v.end(), r.aux_losses.begin(), r.aux_losses.end());
      v.insert(v.end(), r.aux_accs.begin(), r.aux_accs.end());
      average_values_(*comm, v);
      r.loss = v[0];
      r.main_loss = v[1];
      r.main_acc = v[2];
      stop_now = v[3] > 0;
      const auto aux_begin = v.begin() + 4;
      std::copy(aux_begin, aux_begin + static_cast<int64_t>(r.aux_losses.size()), r.aux_losses.begin());
      std::copy(aux_begin + static_cast<int64_t>(r.aux_losses.size()), v.end(), r.aux_accs.begin());
    }
    if (!std::isfinite(r.loss)) {
      diverge(step, "non-finite loss (" + first_non_finite(r) + ")");
      break;
    }

    // Diagnostics at the parameters *before* this step's update (step 1 = initialization).
    const bool diagnose = detail::diagnoses_at(o, step);
    if (diagnose) {
      // Norms of the global batch's gradients (averaged over ranks first).
      std::vector<torch::Tensor> g_main = grads_of(l.main, backbone);
      average_gradients_(comm, g_main, backbone);
      r.grad_main_norm = l2_norm(g_main);
      if (num_aux > 0 && alpha > 0) {
        std::vector<torch::Tensor> g_aux = grads_of(l.aux_term, backbone);
        average_gradients_(comm, g_aux, backbone);
        r.grad_aux_norm = l2_norm(g_aux);
      } else {
        r.grad_aux_norm = 0.0;
      }
      r.grad_ratio = r.grad_main_norm > 0 ? r.grad_aux_norm / r.grad_main_norm : NAN;
    }
    {
      torch::NoGradGuard no_grad;
      for (int64_t k = 0; k < num_aux; ++k) {
        r.aux_weight_norms.push_back(model.aux_head(k)->last_layer()->weight.norm().item<double>());
      }
    }

    optimizer->zero_grad();
    if (reducer) reducer->arm();
    l.total.backward();
    if (reducer) reducer->finish();
    // A finite loss can still have NaN/Inf gradients (overflow in backward): never
    // let them into the parameters.
    if (const std::string bad = non_finite_gradient(model); !bad.empty()) {
      diverge(step, "non-finite gradient of '" + bad + "' (loss " + std::to_string(r.loss) + ")");
      break;
    }
    optimizer->step();

    detail::update_window(loop, r, o);
    r.seconds = seconds_since(t0);
    loop.train_seconds += r.seconds;
    loop.step = step;
    loop.final_train_window_acc = r.window_acc;
    for (auto* s : sinks) s->on_step(r);

    if (detail::evaluates_at(o, step)) emit_eval(step);
    if (world == 1) stop_now = stop_requested();  // (ranks use the value they agreed on above)
    if (stop_now) {
      summary.status = "interrupted";
      if (!o.checkpoint_path().empty()) write_checkpoint();
      break;
    }
    if (detail::checkpoints_at(o, step)) write_checkpoint();
    if (o.stop_at_target() && loop.steps_to_target) break;
  }
  summary.steps_run = loop.step;
  summary.steps_to_target = loop.steps_to_target;
  summary.final_train_window_acc = loop.final_train_window_acc;
  if (comm != nullptr) summary.comm_seconds = comm->blocked_seconds() - comm_start - eval_comm_seconds;
  if (summary.status == "completed" && o.final_eval()) {
    summary.final_eval = emit_eval(summary.steps_run);
    if (data.val.size() > 0) {
      const auto t0 = Clock::now();
      summary.final_test = evaluate(model, data.test, stats, o.eval_batch_size(), o.channels_last(), comm);
      summary.final_test->step = summary.steps_run;
      loop.eval_seconds += seconds_since(t0);
    }
  }
  summary.train_seconds = loop.train_seconds;
  summary.eval_seconds = loop.eval_seconds;
  summary.wall_seconds = seconds_since(start);
  return summary;
}

}  // namespace liondg
