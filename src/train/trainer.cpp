// The training loop of the paper's protocol.

#include <liondg/train/trainer.h>

#include <torch/autograd.h>
#include <torch/nn/functional/loss.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <chrono>
#include <deque>
#include <map>
#include <numeric>

namespace liondg {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

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

// Gradients of `loss` w.r.t. `params`, keeping the graph; unused parameters get
// an undefined tensor (treated as zero).
std::vector<torch::Tensor> grads_of(const torch::Tensor& loss, const std::vector<torch::Tensor>& params) {
  if (params.empty() || !loss.requires_grad()) return std::vector<torch::Tensor>(params.size());
  return torch::autograd::grad({loss}, params, /*grad_outputs=*/{}, /*retain_graph=*/true,
                               /*create_graph=*/false, /*allow_unused=*/true);
}

}  // namespace

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

double aux_weight_at(const TrainOptions& o, int64_t step) {
  if (o.aux_warmup_steps() <= 0) return o.aux_weight();
  const double t = static_cast<double>(step - 1);
  return o.aux_weight() * std::min(1.0, t / static_cast<double>(o.aux_warmup_steps()));
}

EvalRecord evaluate(DSModelImpl& model, const Dataset& split, const ChannelStats& stats, int64_t batch_size,
                    bool channels_last) {
  TORCH_CHECK_VALUE(batch_size > 0, "evaluation batch size must be > 0, got ", batch_size);
  const bool was_training = model.is_training();
  model.eval();
  EvalRecord rec;
  int64_t main_correct = 0;
  double main_loss_sum = 0.0;
  std::vector<int64_t> aux_correct(static_cast<size_t>(model.num_aux_heads()), 0);
  {
    torch::InferenceMode guard;
    for (int64_t start = 0; start < split.size(); start += batch_size) {
      const int64_t n = std::min(batch_size, split.size() - start);
      torch::Tensor x = normalize(split.images.narrow(0, start, n), stats);
      if (channels_last) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
      torch::Tensor y = split.labels.narrow(0, start, n);
      DSOutput out = model.forward(x);
      main_correct += out.logits.argmax(1).eq(y).sum().item<int64_t>();
      main_loss_sum += torch::nn::functional::cross_entropy(
                           out.logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                           .item<double>();
      for (size_t k = 0; k < out.aux_logits.size(); ++k) {
        aux_correct[k] += out.aux_logits[k].argmax(1).eq(y).sum().item<int64_t>();
      }
    }
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
  const auto start = Clock::now();

  const ChannelStats stats = channel_stats(data.train.images);
  BatcherOptions bo;
  bo.batch_size = o.batch_size();
  bo.hflip = o.hflip();
  bo.seed = o.seed();
  bo.crop_padding = o.crop_padding();
  bo.prefetch = o.prefetch();
  bo.channels_last = o.channels_last();
  TrainBatcher batcher(data.train, stats, bo);
  if (o.channels_last()) to_channels_last_(model);
  std::unique_ptr<torch::optim::Optimizer> optimizer = make_optimizer(model, o);
  // The fused fast path for this loop only (it is first-order; callers may need more).
  struct FusedScope {
    DSModelImpl& m;
    FusedScope(DSModelImpl& model, bool on) : m(model) { m.set_fused_training(on); }
    ~FusedScope() { m.set_fused_training(false); }
  } fused_scope(model, o.fused());
  const std::vector<torch::Tensor> backbone = parameters_of_kind(model, ParamRole::Kind::kBackbone);
  const int64_t num_aux = model.num_aux_heads();

  TrainSummary summary;
  std::deque<double> window;
  double window_sum = 0.0;
  TORCH_CHECK_VALUE(o.eval_limit() >= 0, "eval limit must be >= 0, got ", o.eval_limit());
  Dataset eval_split = data.eval_split();
  if (o.eval_limit() > 0 && o.eval_limit() < eval_split.size()) {
    eval_split.images = eval_split.images.narrow(0, 0, o.eval_limit());
    eval_split.labels = eval_split.labels.narrow(0, 0, o.eval_limit());
    if (eval_split.coarse_labels.defined()) eval_split.coarse_labels = eval_split.coarse_labels.narrow(0, 0, o.eval_limit());
  }
  auto emit_eval = [&](int64_t step) {
    const auto t0 = Clock::now();
    EvalRecord e = evaluate(model, eval_split, stats, o.eval_batch_size(), o.channels_last());
    e.step = step;
    summary.eval_seconds += seconds_since(t0);
    for (auto* s : sinks) s->on_eval(e);
    return e;
  };

  model.train();
  for (int64_t step = 1; step <= o.steps(); ++step) {
    const auto t0 = Clock::now();
    auto [images, labels] = batcher.next();
    DSOutput out = model.forward(images);
    const double alpha = aux_weight_at(o, step);
    Losses l = compute_losses(out, labels, alpha);

    StepRecord r;
    r.step = step;
    r.aux_weight = alpha;
    r.loss = l.total.item<double>();
    r.main_loss = l.main.item<double>();
    for (const auto& a : l.aux) r.aux_losses.push_back(a.item<double>());
    if (!std::isfinite(r.loss)) {
      summary.status = "diverged";
      summary.diverged_reason = "non-finite loss at step " + std::to_string(step) + " (L_main = " +
                                std::to_string(r.main_loss) + ", total = " + std::to_string(r.loss) + ")";
      summary.steps_run = step - 1;
      break;
    }
    r.main_acc = accuracy(out.logits, labels);
    for (const auto& a : out.aux_logits) r.aux_accs.push_back(accuracy(a, labels));

    // Diagnostics at the parameters *before* this step's update (step 1 = initialization).
    const bool diagnose = o.grad_every() > 0 && (step == 1 || step % o.grad_every() == 0);
    if (diagnose) {
      r.grad_main_norm = l2_norm(grads_of(l.main, backbone));
      r.grad_aux_norm = num_aux > 0 && alpha > 0 ? l2_norm(grads_of(l.aux_term, backbone)) : 0.0;
      r.grad_ratio = r.grad_main_norm > 0 ? r.grad_aux_norm / r.grad_main_norm : NAN;
      if (!std::isfinite(r.grad_main_norm) || !std::isfinite(r.grad_aux_norm)) {
        summary.status = "diverged";
        summary.diverged_reason = "non-finite backbone gradient at step " + std::to_string(step);
        summary.steps_run = step - 1;
        break;
      }
    }
    {
      torch::NoGradGuard no_grad;
      for (int64_t k = 0; k < num_aux; ++k) {
        r.aux_weight_norms.push_back(model.aux_head(k)->last_layer()->weight.norm().item<double>());
      }
    }

    optimizer->zero_grad();
    l.total.backward();
    optimizer->step();

    window.push_back(r.main_acc);
    window_sum += r.main_acc;
    if (static_cast<int64_t>(window.size()) > o.target_window()) {
      window_sum -= window.front();
      window.pop_front();
    }
    r.window_acc = window_sum / static_cast<double>(window.size());
    if (!summary.steps_to_target && static_cast<int64_t>(window.size()) == o.target_window() &&
        r.window_acc >= o.target_acc()) {
      summary.steps_to_target = step;
    }
    r.seconds = seconds_since(t0);
    summary.train_seconds += r.seconds;
    summary.steps_run = step;
    summary.final_train_window_acc = r.window_acc;
    for (auto* s : sinks) s->on_step(r);

    if (o.eval_every() > 0 && step % o.eval_every() == 0 && step != o.steps()) emit_eval(step);
    if (o.stop_at_target() && summary.steps_to_target) break;
  }
  if (summary.status == "completed" && o.final_eval()) {
    summary.final_eval = emit_eval(summary.steps_run);
    if (data.val.size() > 0) {
      const auto t0 = Clock::now();
      summary.final_test = evaluate(model, data.test, stats, o.eval_batch_size(), o.channels_last());
      summary.final_test->step = summary.steps_run;
      summary.eval_seconds += seconds_since(t0);
    }
  }
  summary.wall_seconds = seconds_since(start);
  return summary;
}

}  // namespace liondg
