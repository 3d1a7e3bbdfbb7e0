// LSUV: layer-sequential unit-variance initialization.

#include <liondg/init/methods.h>
#include <liondg/models/buffers.h>
#include <liondg/models/observe.h>

#include <torch/nn/init.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include <chrono>
#include <map>

namespace liondg {
namespace {

// Thrown by StopAt to end a forward pass once the layer of interest has run.
struct StopForward {};

// Records the order in which layers first report their output.
class OrderRecorder : public LayerObserver {
 public:
  void on_output(torch::nn::Module& layer, const torch::Tensor& /*output*/) override {
    if (seen_.insert(&layer).second) order.push_back(&layer);
  }
  std::vector<torch::nn::Module*> order;

 private:
  std::set<torch::nn::Module*> seen_;
};

// Measures the output variance of one layer and stops the forward pass there.
class StopAt : public LayerObserver {
 public:
  explicit StopAt(torch::nn::Module* target) : target_(target) {}
  void on_output(torch::nn::Module& layer, const torch::Tensor& output) override {
    if (&layer != target_) return;
    variance = output.to(torch::kFloat64).var(/*unbiased=*/false).item<double>();
    throw StopForward{};
  }
  double variance = 0;

 private:
  torch::nn::Module* target_;
};

// Weight and bias of a Conv2d / Linear module (undefined for other modules).
std::pair<torch::Tensor, torch::Tensor> weight_and_bias(torch::nn::Module& m) {
  if (auto* conv = m.as<torch::nn::Conv2d>()) return {conv->weight, conv->bias};
  if (auto* linear = m.as<torch::nn::Linear>()) return {linear->weight, linear->bias};
  return {};
}

}  // namespace

LSUVReport lsuv_(DSModelImpl& model, const torch::Tensor& x, const LSUVOptions& o) {
  TORCH_CHECK_VALUE(o.target_variance() > 0, "LSUV target variance must be > 0, got ", o.target_variance());
  TORCH_CHECK_VALUE(o.tolerance() > 0, "LSUV tolerance must be > 0, got ", o.tolerance());
  TORCH_CHECK_VALUE(o.max_iterations() >= 0, "LSUV max iterations must be >= 0, got ", o.max_iterations());
  const auto start = std::chrono::steady_clock::now();
  torch::NoGradGuard no_grad;
  LSUVReport report;

  // In scope: every Conv2d / Linear outside the auxiliary heads.
  std::map<torch::nn::Module*, std::string> scope;
  for (const auto& item : model.named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
    if (item.key().rfind("aux_heads", 0) == 0) continue;
    if (weight_and_bias(*item.value()).first.defined()) scope[item.value().get()] = item.key();
  }

  // 1. Orthonormal pre-initialization (Saxe et al.), gain 1, biases 0.
  for (const auto& [module, name] : scope) {
    auto [w, b] = weight_and_bias(*module);
    torch::nn::init::orthogonal_(w, /*gain=*/1.0);
    report.written.push_back(name + ".weight");
    if (b.defined()) {
      b.zero_();
      report.written.push_back(name + ".bias");
    }
  }

  // Save BatchNorm running statistics: the calibration passes run in training mode.
  BufferSnapshot buffers(model);
  const bool was_training = model.is_training();
  model.train();

  // 2. Execution order of the in-scope layers.
  OrderRecorder recorder;
  {
    ObserverGuard guard(&recorder);
    model.forward(x);
  }
  std::set<torch::nn::Module*> observed;
  for (torch::nn::Module* layer : recorder.order) {
    if (!scope.count(layer)) continue;
    observed.insert(layer);
    LSUVLayerReport r;
    r.layer = scope.at(layer);
    torch::Tensor w = weight_and_bias(*layer).first;
    auto measure = [&]() {
      StopAt stop(layer);
      ObserverGuard guard(&stop);
      try {
        model.forward(x);
      } catch (const StopForward&) {
      }
      return stop.variance;
    };
    for (int64_t it = 0;; ++it) {
      const double var = measure();
      if (it == 0) r.initial_variance = var;
      r.final_variance = var;
      if (std::abs(var - o.target_variance()) < o.tolerance()) {
        r.converged = true;
        break;
      }
      if (it == o.max_iterations() || !(var > 0) || !std::isfinite(var)) break;  // dead or exploded layer
      w.div_(std::sqrt(var / o.target_variance()));
      r.iterations = it + 1;
    }
    report.layers.push_back(r);
  }
  for (const auto& [module, name] : scope) {
    if (!observed.count(module)) report.unobserved.push_back(name);
  }

  model.train(was_training);
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace liondg
