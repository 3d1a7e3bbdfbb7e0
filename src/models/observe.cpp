// Thread-local layer observer.

#include <liondg/models/observe.h>

namespace liondg {
namespace {
thread_local LayerObserver* g_observer = nullptr;
}  // namespace

const torch::Tensor& observe(torch::nn::Module& layer, const torch::Tensor& output) {
  if (g_observer != nullptr) g_observer->on_output(layer, output);
  return output;
}

bool observing() { return g_observer != nullptr; }

ObserverGuard::ObserverGuard(LayerObserver* observer) : previous_(g_observer) { g_observer = observer; }
ObserverGuard::~ObserverGuard() { g_observer = previous_; }

}  // namespace liondg
