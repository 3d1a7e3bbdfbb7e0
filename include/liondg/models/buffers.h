#pragma once
// Saves a module's buffers (BatchNorm running statistics, ...) and writes them back
// when it goes out of scope, so calibration passes in training mode leave no trace.

#include <torch/nn/module.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <utility>
#include <vector>

namespace liondg {

class BufferSnapshot {
 public:
  explicit BufferSnapshot(const torch::nn::Module& module) {
    for (const auto& buffer : module.buffers()) saved_.emplace_back(buffer, buffer.clone());
  }
  ~BufferSnapshot() {
    torch::NoGradGuard no_grad;
    for (auto& [buffer, saved] : saved_) buffer.copy_(saved);
  }
  BufferSnapshot(const BufferSnapshot&) = delete;
  BufferSnapshot& operator=(const BufferSnapshot&) = delete;

 private:
  std::vector<std::pair<torch::Tensor, torch::Tensor>> saved_;
};

}  // namespace liondg
