#pragma once
// CUDA graphs for the training step: a callable recorded once and replayed with one
// launch. Compiled in when the build finds a CUDA-enabled libtorch (LIONDG_WITH_CUDA
// on src/train/step_graph.cpp); a CPU-only build has the same interface and refuses
// to capture, with a message.

#include <functional>
#include <memory>
#include <string>

namespace liondg {

/// True when this build has CUDA graph support (a CUDA-enabled libtorch).
bool cuda_graphs_compiled();

/// Waits for all work queued on the current CUDA device (no-op without CUDA).
void cuda_synchronize();

/// For its lifetime, CUDA work on `device` (when it is a CUDA device) goes to a fresh
/// stream of libtorch's pool rather than the default stream: graphs cannot be
/// captured on the default stream, and warm-up steps must run on the stream that
/// captures. A no-op for other devices.
class SideStreamScope {
 public:
  explicit SideStreamScope(const std::string& device);
  ~SideStreamScope();
  SideStreamScope(const SideStreamScope&) = delete;
  SideStreamScope& operator=(const SideStreamScope&) = delete;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// A recorded CUDA graph. The callable must only launch device work on tensors
/// whose addresses stay fixed (static inputs are refreshed by copying into them
/// before replay()), must not synchronize with the host, and must not allocate
/// memory it frees outside the capture: the usual CUDA-graph rules.
class StepGraph {
 public:
  StepGraph();
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  /// Records one call of `fn` on the current stream (inside a SideStreamScope) without
  /// running it: its effects happen at each replay(). Run `fn` eagerly on the same
  /// stream a few times first, so lazy initialization (handles, workspaces) happens
  /// outside the capture. Graphs captured with the same `share_pool_with` share one
  /// memory pool.
  void capture(const std::function<void()>& fn, StepGraph* share_pool_with = nullptr);
  /// Replays the recorded work on the current stream.
  void replay();
  bool captured() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace liondg
