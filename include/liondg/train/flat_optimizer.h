#pragma once
// AdamW / SGD over all parameters packed into one buffer, with the step counter on
// the device: a handful of kernels per step whatever the number of parameters, no
// host synchronization, so the whole training step can be captured in a CUDA graph.
// Updates equal torch::optim::AdamW / SGD (as configured by make_optimizer) within
// float rounding; tests/test_resident.cpp compares both.

#include <torch/optim/optimizer.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <cstdint>
#include <string>
#include <vector>

namespace liondg {

class FlatOptimizer {
 public:
  /// Packs every parameter of `optimizer`'s groups (one dtype and device) into one
  /// buffer and their gradients into another: each parameter's data and .grad become
  /// views of them (existing gradients are copied in). Per-group learning rate and
  /// weight decay become per-element vectors; betas, eps and momentum must be the
  /// same in every group. `optimizer` must be a torch::optim::AdamW or SGD (no
  /// amsgrad, dampening or Nesterov) that has not stepped yet.
  explicit FlatOptimizer(torch::optim::Optimizer& optimizer);
  /// Gives every parameter and gradient its own storage again (copies of the views).
  ~FlatOptimizer();
  FlatOptimizer(const FlatOptimizer&) = delete;
  FlatOptimizer& operator=(const FlatOptimizer&) = delete;

  void zero_grad();
  /// One update of every parameter; where `apply` (bool 0-dim tensor on the
  /// parameters' device) is false, nothing changes (parameters, moments, step).
  // apply: () bool -> parameters updated in place
  void step(const torch::Tensor& apply);
  /// () bool: every gradient element finite.
  torch::Tensor grads_finite() const;
  /// () int64 on the device: flat index of the first NaN/Inf gradient element, -1 when
  /// every element is finite (no host synchronization).
  torch::Tensor first_non_finite_grad() const;
  /// The packed parameter (in packing order, as the optimizer's groups list them) that
  /// holds flat element `index`; throws c10::IndexError outside [0, numel).
  const torch::Tensor& parameter_at(int64_t index) const;

  const torch::Tensor& params() const { return params_; }
  const torch::Tensor& grads() const { return grads_; }
  /// Updates applied so far (reads the device counter).
  int64_t steps() const;
  bool adamw() const { return adamw_; }

  /// The optimizer state under `archive` ("kind", "step", moments).
  void save(torch::serialize::OutputArchive& archive) const;
  /// Restores what save() wrote; throws c10::Error when it does not fit.
  void load(torch::serialize::InputArchive& archive);

 private:
  std::vector<torch::Tensor> tensors_;  // the parameters, in packing order
  std::vector<int64_t> offsets_;        // tensors_[i] starts at offsets_[i] in the buffers
  torch::Tensor params_, grads_;        // (P) each
  torch::Tensor lr_;                    // (P) learning rate per element
  torch::Tensor lr64_;                  // (P) the same in float64 (AdamW's step size)
  torch::Tensor keep_;                  // (P) AdamW: 1 - lr * weight_decay
  torch::Tensor decay_;                 // (P) SGD: weight decay
  torch::Tensor exp_avg_, exp_avg_sq_;  // AdamW moments (P)
  torch::Tensor momentum_buffer_;       // SGD (P)
  torch::Tensor step_;                  // () float64: updates applied
  bool adamw_ = true;
  double beta1_ = 0.9, beta2_ = 0.999, eps_ = 1e-8, momentum_ = 0.0;
};

}  // namespace liondg
