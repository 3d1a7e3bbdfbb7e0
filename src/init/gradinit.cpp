// GradInit: learned per-tensor scales of the initialization.

#include <liondg/init/methods.h>
#include <liondg/models/buffers.h>

#include <torch/autograd.h>

#include <chrono>

namespace liondg {
namespace {

// Adam on one scalar scale, with separate first moments for constraint and
// objective steps and a shared second moment (as in the reference optimizer).
struct ScaleState {
  double alpha = 1.0;
  double min_scale = 0.0;
  double m_objective = 0.0, m_constraint = 0.0, v = 0.0;
  int64_t objective_steps = 0, constraint_steps = 0;
  bool active = true;  // false for zero-norm tensors (never rescaled)
};

void adam_step(ScaleState& s, double grad, bool constraint, const GradInitOptions& o) {
  constexpr double kBeta1 = 0.9, kBeta2 = 0.999, kEps = 1e-8;
  if (o.grad_clip() > 0) grad = std::max(-o.grad_clip(), std::min(o.grad_clip(), grad));
  double& m = constraint ? s.m_constraint : s.m_objective;
  int64_t& steps = constraint ? s.constraint_steps : s.objective_steps;
  ++steps;
  m = kBeta1 * m + (1 - kBeta1) * grad;
  s.v = kBeta2 * s.v + (1 - kBeta2) * grad * grad;
  const double bc1 = 1 - std::pow(kBeta1, static_cast<double>(steps));
  const double bc2 = 1 - std::pow(kBeta2, static_cast<double>(s.objective_steps + s.constraint_steps));
  s.alpha -= (o.lr() / bc1) * m / (std::sqrt(s.v / bc2) + kEps);
  s.alpha = std::max(s.alpha, s.min_scale);
}

double frobenius_inner(const torch::Tensor& a, const torch::Tensor& b) {
  if (!a.defined()) return 0.0;
  return (a.to(torch::kFloat64) * b.to(torch::kFloat64)).sum().item<double>();
}

bool is_bias(const std::string& name) {
  return name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0;
}

// The training loop's speed for calibration: convolution weights channels-last and the
// model's fused first-order path, both undone when the scope ends (also by an exception).
class CalibrationLayout {
 public:
  CalibrationLayout(DSModelImpl& model, const std::vector<torch::Tensor>& params, bool channels_last)
      : model_(model), fused_before_(model.fused_training()), channels_last_(channels_last) {
    if (!channels_last_) return;
    torch::NoGradGuard no_grad;
    for (const auto& p : params) {
      if (p.dim() != 4 || p.is_contiguous(torch::MemoryFormat::ChannelsLast)) continue;
      torch::Tensor handle = p;  // the same variable: set_data changes the parameter itself
      handle.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
      converted_.push_back(handle);
    }
  }
  ~CalibrationLayout() {
    model_.set_fused_training(fused_before_);
    torch::NoGradGuard no_grad;
    for (auto& p : converted_) p.set_data(p.contiguous());
  }
  CalibrationLayout(const CalibrationLayout&) = delete;
  CalibrationLayout& operator=(const CalibrationLayout&) = delete;

  // x: (N,C,H,W) in the calibration layout
  torch::Tensor input(const torch::Tensor& x) const {
    return channels_last_ && x.dim() == 4 ? x.contiguous(torch::MemoryFormat::ChannelsLast) : x;
  }

 private:
  DSModelImpl& model_;
  const bool fused_before_;
  const bool channels_last_;
  std::vector<torch::Tensor> converted_;
};

}  // namespace

GradInitReport gradinit_(DSModelImpl& model, const BatchSource& batches, const GradInitOptions& o,
                         double aux_weight) {
  TORCH_CHECK_VALUE(o.algorithm() == "adam" || o.algorithm() == "sgd", "GradInit algorithm must be adam or sgd, got '",
                    o.algorithm(), "'");
  TORCH_CHECK_VALUE(o.iterations() >= 0, "GradInit iterations must be >= 0, got ", o.iterations());
  TORCH_CHECK_VALUE(o.eta() > 0 && o.lr() > 0, "GradInit eta and lr must be > 0");
  TORCH_CHECK_VALUE(o.gamma() > 0, "GradInit gamma must be > 0, got ", o.gamma());
  TORCH_CHECK_VALUE(o.min_scale() >= 0, "GradInit min scale must be >= 0, got ", o.min_scale());
  TORCH_CHECK_VALUE(o.batch_size() >= 2, "GradInit batch size must be >= 2, got ", o.batch_size());
  TORCH_CHECK_VALUE(static_cast<bool>(batches), "GradInit needs calibration batches");
  const auto start = std::chrono::steady_clock::now();
  const bool adam = o.algorithm() == "adam";
  const bool constrained = std::isfinite(o.gamma());
  const int64_t half = o.batch_size() / 2;

  std::vector<std::string> names;
  std::vector<torch::Tensor> params, initial;
  std::vector<ScaleState> scales;
  for (const auto& item : model.named_parameters()) {
    names.push_back(item.key());
    params.push_back(item.value());
    initial.push_back(item.value().detach().clone());
    ScaleState s;
    s.min_scale = is_bias(item.key()) ? 0.0 : o.min_scale();
    s.active = item.value().norm().item<double>() > 0.0;
    scales.push_back(s);
  }
  BufferSnapshot buffers(model);  // restored when gradinit_ returns
  const bool was_training = model.is_training();
  model.train();
  CalibrationLayout layout(model, params, o.channels_last());

  auto apply_scales = [&]() {
    torch::NoGradGuard no_grad;
    for (size_t j = 0; j < params.size(); ++j) {
      if (scales[j].active) params[j].copy_(initial[j] * scales[j].alpha);
    }
  };

  GradInitReport report;
  bool first_objective = true;
  for (int64_t it = 0; it < o.iterations(); ++it) {
    auto [x0, y0] = batches(half);
    auto [x1, y1] = batches(half);
    // The constraint differentiates this pass twice: the fused path is first-order only.
    model.set_fused_training(o.fused() && !constrained);
    torch::Tensor loss0 =
        deep_supervision_loss(model.forward(layout.input(torch::cat({x0, x1}))), torch::cat({y0, y1}), aux_weight);
    std::vector<torch::Tensor> g = torch::autograd::grad({loss0}, params, {}, /*retain_graph=*/constrained,
                                                         /*create_graph=*/constrained, /*allow_unused=*/true);
    torch::Tensor gnorm = torch::zeros({}, torch::kFloat64);
    for (const auto& gj : g) {
      if (!gj.defined()) continue;
      gnorm = gnorm + (adam ? gj.abs().sum() : gj.pow(2).sum()).to(torch::kFloat64);
    }
    if (!adam) gnorm = gnorm.sqrt();

    if (constrained && gnorm.item<double>() > o.gamma()) {
      // Constraint step: reduce ||g|| (second order, through the graph of g).
      std::vector<torch::Tensor> hv = torch::autograd::grad({gnorm}, params, {}, false, false, /*allow_unused=*/true);
      for (size_t j = 0; j < params.size(); ++j) {
        if (scales[j].active) adam_step(scales[j], frobenius_inner(hv[j], initial[j]), /*constraint=*/true, o);
      }
      ++report.constraint_steps;
    } else {
      // Objective step: L(S; theta - eta A[g]) / eta with A[g] held constant; d/d alpha_j = <grad, theta0_j> / eta.
      std::vector<torch::Tensor> current;
      {
        torch::NoGradGuard no_grad;
        double g_l2 = 0.0;
        if (!adam && o.normalize_grad()) {
          for (const auto& gj : g) g_l2 += gj.defined() ? gj.pow(2).sum().item<double>() : 0.0;
          g_l2 = std::sqrt(g_l2) + 1e-12;
        }
        for (size_t j = 0; j < params.size(); ++j) {
          current.push_back(params[j].detach().clone());
          if (!g[j].defined()) continue;
          torch::Tensor step = adam ? g[j].detach().sign() : g[j].detach() / (o.normalize_grad() ? g_l2 : 1.0);
          params[j].sub_(o.eta() * step);
        }
      }
      auto [x2, y2] = batches(half);
      model.set_fused_training(o.fused());
      torch::Tensor loss1 =
          deep_supervision_loss(model.forward(layout.input(torch::cat({x0, x2}))), torch::cat({y0, y2}), aux_weight);
      std::vector<torch::Tensor> grads = torch::autograd::grad({loss1}, params, {}, false, false, /*allow_unused=*/true);
      {
        torch::NoGradGuard no_grad;
        for (size_t j = 0; j < params.size(); ++j) params[j].copy_(current[j]);
      }
      const double objective = loss1.item<double>();
      if (first_objective) report.initial_objective = objective;
      first_objective = false;
      report.final_objective = objective;
      for (size_t j = 0; j < params.size(); ++j) {
        if (scales[j].active) adam_step(scales[j], frobenius_inner(grads[j], initial[j]) / o.eta(), /*constraint=*/false, o);
      }
      ++report.objective_steps;
    }
    apply_scales();
    ++report.iterations;
  }

  model.train(was_training);
  for (size_t j = 0; j < params.size(); ++j) {
    report.scales.emplace_back(names[j], scales[j].alpha);
    if (scales[j].active && report.iterations > 0) report.written.push_back(names[j]);
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace liondg
