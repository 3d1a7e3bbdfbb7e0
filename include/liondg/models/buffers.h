#pragma once
// Copies of a module's buffers (BatchNorm running statistics, ...): BufferCopy keeps one
// that can be refreshed and written back any number of times (the training loops use it to
// undo a diverged step's update); BufferSnapshot writes its copy back when it goes out of
// scope, so calibration passes in training mode leave no trace.

#include <torch/nn/module.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <vector>

namespace liondg {

class BufferCopy {
 public:
  /// Allocates the copy (on the buffers' devices) and fills it with the current values.
  explicit BufferCopy(const torch::nn::Module& module) : buffers_(module.buffers()) {
    saved_.reserve(buffers_.size());
    for (const auto& b : buffers_) saved_.push_back(torch::empty_like(b));
    save();
  }
  /// Refreshes the copy from the buffers.
  void save() {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < buffers_.size(); ++i) saved_[i].copy_(buffers_[i]);
  }
  /// Writes the copy back into the buffers.
  void restore() {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < buffers_.size(); ++i) buffers_[i].copy_(saved_[i]);
  }
  /// Without reading anything back to the host: keeps the buffers' values where `keep`
  /// (a () bool tensor on their device) is true and writes the copy back where it is false.
  void restore_unless(const torch::Tensor& keep) {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < buffers_.size(); ++i) buffers_[i].copy_(torch::where(keep, buffers_[i], saved_[i]));
  }

 private:
  std::vector<torch::Tensor> buffers_;
  std::vector<torch::Tensor> saved_;
};

class BufferSnapshot {
 public:
  explicit BufferSnapshot(const torch::nn::Module& module) : copy_(module) {}
  ~BufferSnapshot() { copy_.restore(); }
  BufferSnapshot(const BufferSnapshot&) = delete;
  BufferSnapshot& operator=(const BufferSnapshot&) = delete;

 private:
  BufferCopy copy_;
};

}  // namespace liondg
