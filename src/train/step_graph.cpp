// CUDA graph capture and replay behind a build switch (LIONDG_WITH_CUDA).

#include <liondg/train/step_graph.h>

#include <c10/core/Device.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>

#ifdef LIONDG_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <optional>
#endif

namespace liondg {

#ifdef LIONDG_WITH_CUDA

bool cuda_graphs_compiled() { return true; }

void cuda_synchronize() {
  if (torch::cuda::is_available()) torch::cuda::synchronize();
}

struct SideStreamScope::Impl {
  std::optional<c10::cuda::CUDAStreamGuard> guard;
};

SideStreamScope::SideStreamScope(const std::string& device) : impl_(std::make_unique<Impl>()) {
  const c10::Device d(device);
  if (!d.is_cuda()) return;
  const c10::DeviceIndex index = d.has_index() ? d.index() : c10::cuda::current_device();
  c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index);
  c10::cuda::getCurrentCUDAStream(index).synchronize();  // after everything queued so far
  impl_->guard.emplace(side);
}

SideStreamScope::~SideStreamScope() {
  if (!impl_->guard) return;
  c10::cuda::getCurrentCUDAStream().synchronize();  // later default-stream work sees our results
  impl_->guard.reset();
}

struct StepGraph::Impl {
  at::cuda::CUDAGraph graph;
  bool captured = false;
};

StepGraph::StepGraph() : impl_(std::make_unique<Impl>()) {}
StepGraph::~StepGraph() = default;

void StepGraph::capture(const std::function<void()>& fn, StepGraph* share_pool_with) {
  TORCH_CHECK(!impl_->captured, "StepGraph::capture: already captured");
  TORCH_CHECK(torch::cuda::is_available(), "StepGraph::capture: no CUDA device is available");
  TORCH_CHECK(c10::cuda::getCurrentCUDAStream() != c10::cuda::getDefaultCUDAStream(),
              "StepGraph::capture: cannot capture on the default stream (use a SideStreamScope)");
  if (share_pool_with != nullptr && share_pool_with->captured()) {
    impl_->graph.capture_begin(share_pool_with->impl_->graph.pool());
  } else {
    impl_->graph.capture_begin();
  }
  try {
    fn();
  } catch (...) {
    try {
      impl_->graph.capture_end();
    } catch (...) {
    }
    throw;
  }
  impl_->graph.capture_end();
  impl_->captured = true;
}

void StepGraph::replay() {
  TORCH_CHECK(impl_->captured, "StepGraph::replay: nothing captured");
  impl_->graph.replay();
}

bool StepGraph::captured() const { return impl_->captured; }

#else  // CPU-only build: the same interface; capturing is refused with a message.

bool cuda_graphs_compiled() { return false; }

void cuda_synchronize() {}

struct SideStreamScope::Impl {};
SideStreamScope::SideStreamScope(const std::string& /*device*/) : impl_(std::make_unique<Impl>()) {}
SideStreamScope::~SideStreamScope() = default;

struct StepGraph::Impl {};

StepGraph::StepGraph() : impl_(std::make_unique<Impl>()) {}
StepGraph::~StepGraph() = default;

void StepGraph::capture(const std::function<void()>& /*fn*/, StepGraph* /*share_pool_with*/) {
  TORCH_CHECK(false, "CUDA graphs are not available: this liondg was built against a libtorch without CUDA "
                     "(rebuild against a CUDA-enabled libtorch, see docs/gpu.md)");
}

void StepGraph::replay() { TORCH_CHECK(false, "StepGraph::replay: nothing captured"); }

bool StepGraph::captured() const { return false; }

#endif

}  // namespace liondg
