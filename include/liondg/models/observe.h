#pragma once
// Layer-output observation without forward hooks. libtorch has no hooks, so
// every conv/linear layer of the library's models reports its output through
// `observe(layer, y)`. With no observer installed this is a single pointer
// check. Data-dependent initializations (LSUV) install an observer to see the
// layers in execution order and to measure their outputs; a user backbone
// opts in by calling `observe` after its own conv/linear layers.

#include <torch/nn/module.h>
#include <torch/types.h>

namespace liondg {

class LayerObserver {
 public:
  virtual ~LayerObserver() = default;
  /// Called with each observed layer and its output, in execution order.
  virtual void on_output(torch::nn::Module& layer, const torch::Tensor& output) = 0;
};

/// Reports `output` of `layer` to the active observer of this thread (if any) and returns it.
const torch::Tensor& observe(torch::nn::Module& layer, const torch::Tensor& output);

/// Whether an observer is installed on this thread (fused fast paths that skip
/// per-layer outputs must then take the layer-by-layer path).
bool observing();

/// Installs `observer` for the current thread for the guard's lifetime.
class ObserverGuard {
 public:
  explicit ObserverGuard(LayerObserver* observer);
  ~ObserverGuard();
  ObserverGuard(const ObserverGuard&) = delete;
  ObserverGuard& operator=(const ObserverGuard&) = delete;

 private:
  LayerObserver* previous_;
};

}  // namespace liondg
