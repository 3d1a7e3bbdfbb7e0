#pragma once
// Data-dependent and architecture-specific initializations: LSUV, Fixup, ReZero,
// GradInit. Each is a free function ending in `_` that writes parameters in
// place (under torch::NoGradGuard where it does not itself need autograd) and
// returns a report. The InitPlan (plan.h) composes them with the auxiliary-head
// policies and audits what each stage wrote.

#include <liondg/models/ds_model.h>

#include <torch/arg.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace liondg {

/// Calibration data for data-dependent stages: `batches(n)` returns n normalized
/// training images (n,C,H,W) and their labels (n); successive calls give new images.
using BatchSource = std::function<std::pair<torch::Tensor, torch::Tensor>(int64_t n)>;

// ------------------------------------------------------------------ LSUV

struct LSUVOptions {
  /// Calibration batch size (the paper's appendix: 256).
  TORCH_ARG(int64_t, samples) = 256;
  TORCH_ARG(double, target_variance) = 1.0;
  /// |Var - target| below this ends a layer's loop.
  TORCH_ARG(double, tolerance) = 0.01;
  /// Rescalings per layer at most.
  TORCH_ARG(int64_t, max_iterations) = 10;
};

struct LSUVLayerReport {
  std::string layer;       // module name, e.g. "block1_layer3.conv"
  int64_t iterations = 0;  // rescalings applied
  double initial_variance = 0;
  double final_variance = 0;
  bool converged = false;
};

struct LSUVReport {
  std::vector<LSUVLayerReport> layers;  // in execution order
  std::vector<std::string> unobserved;  // in-scope layers the forward pass never reported
  std::vector<std::string> written;     // parameter names written
  double seconds = 0;
};

/// Layer-sequential unit-variance initialization (Mishkin & Matas, "All you need is a
/// good init", ICLR 2016): orthonormal pre-initialization (gain 1, biases 0) of every
/// Conv/Linear weight of the backbone and the main head, then, for each of those layers
/// in *execution* order, W <- W / sqrt(Var(y) / target) until |Var(y) - target| <
/// tolerance or max_iterations rescalings, where y is the layer's output (before
/// BatchNorm) on the calibration batch `x` with BatchNorm in training mode (batch
/// statistics). Auxiliary heads are not touched. BatchNorm running statistics are
/// restored afterwards. Layers are seen through `observe` (observe.h); layers that
/// never report are listed in `unobserved` and left orthonormal.
LSUVReport lsuv_(DSModelImpl& model, const torch::Tensor& x, const LSUVOptions& options = {});

// ------------------------------------------------------------------ Fixup

struct FixupReport {
  int64_t num_branches = 0;  // L
  int64_t branch_layers = 0; // m
  double scale = 1.0;        // L^(-1/(2m-2)), or 1 where m = 1
  std::vector<std::string> written;
};

/// Fixup (Zhang, Dauphin & Ma, "Fixup Initialization", ICLR 2019). ResNet-DS built
/// with BlockKind::kFixup: each branch's first conv ~ N(0, 2 / (C_out k^2)) scaled by
/// L^(-1/(2m-2)) (L = residual branches, m = 2 weight layers per branch; fan-out He as
/// in the reference code), the branch's last conv = 0, scalar biases 0 and multiplier
/// 1, projection shortcuts He (fan-out, not scaled), the main classifier weight and
/// bias = 0. DenseNet-DS built with kFixup (this project's adaptation, docs/init.md):
/// each dense layer is a branch with m = 1 weight layer, which Fixup's rule zeroes; its
/// scalar biases 0 and multiplier 1; the main classifier 0; stem and transitions keep
/// the base initialization. Auxiliary heads are not touched (the reference zeroes
/// every linear layer; here that is the separate auxiliary policy `zero`).
FixupReport fixup_init_(DSModelImpl& model);

/// ReZero (Bachlechner et al., "ReZero is All You Need", 2020): every residual gate
/// (ResNet-DS) or dense-layer gate (DenseNet-DS adaptation) set to 0, so each block
/// starts as its skip path. Requires a model built with BlockKind::kReZero.
std::vector<std::string> rezero_init_(DSModelImpl& model);

// ------------------------------------------------------------------ GradInit

struct GradInitOptions {
  /// Iterations (reference default 390: one epoch of CIFAR at batch 128).
  TORCH_ARG(int64_t, iterations) = 390;
  /// "adam": the first Adam step is eta * sign(g) and the constraint uses ||g||_1;
  /// "sgd": the step is eta * g and the constraint uses ||g||_2.
  TORCH_ARG(std::string, algorithm) = "adam";
  /// Step size of the simulated first update (the training learning rate, 1e-3).
  TORCH_ARG(double, eta) = 1e-3;
  /// Gradient-norm bound; iterations that violate it minimize ||g|| instead
  /// (reference default: infinity, i.e. unconstrained).
  TORCH_ARG(double, gamma) = std::numeric_limits<double>::infinity();
  /// Learning rate of the scales' own Adam.
  TORCH_ARG(double, lr) = 1e-3;
  /// Lower bound of each weight scale (biases: 0).
  TORCH_ARG(double, min_scale) = 0.01;
  /// Per-scale gradient clip (0 = off).
  TORCH_ARG(double, grad_clip) = 1.0;
  /// Examples per iteration: two half-batches S~ = (b0, b1) and S = (b0, b2).
  TORCH_ARG(int64_t, batch_size) = 128;
  /// sgd only: use g / ||g||_2 as the step direction.
  TORCH_ARG(bool, normalize_grad) = false;
  /// The first-order passes (every forward/backward unless the constraint is on, whose
  /// first pass is differentiated twice) use the model's fused training fast path, as the
  /// training loop does (`DSModelImpl::set_fused_training`); the model's setting is
  /// restored afterwards. The results equal the layer-by-layer path within float rounding.
  TORCH_ARG(bool, fused) = true;
  /// Convolution weights and calibration batches channels-last during calibration (the
  /// parameters' layouts are restored afterwards; values are unaffected).
  TORCH_ARG(bool, channels_last) = true;
};

struct GradInitReport {
  int64_t iterations = 0;
  int64_t constraint_steps = 0;
  int64_t objective_steps = 0;
  double initial_objective = 0;  // L(S; theta - eta A[g]) at the first objective step
  double final_objective = 0;    // at the last objective step
  std::vector<std::pair<std::string, double>> scales;  // final scale per parameter tensor
  std::vector<std::string> written;
  double seconds = 0;
};

/// GradInit (Zhu et al., "GradInit: Learning to Initialize Neural Networks for Stable
/// and Efficient Training", NeurIPS 2021): learns one positive scale alpha_j per
/// parameter tensor, theta_j = alpha_j theta_j^0, minimizing L(S; theta - eta A[g]) / eta
/// with g = grad L(S~; theta) and A[g] held constant (sign(g) for Adam), subject to
/// ||g|| <= gamma (an iteration that violates it takes a step on ||g|| instead) and
/// alpha_j >= min_scale (0 for biases). The scales follow their own Adam with per-scale
/// gradient clipping; zero-norm tensors are skipped. L is the deeply-supervised loss
/// L_main + aux_weight * sum_k L_aux_k. BatchNorm uses batch statistics and its
/// running statistics are restored afterwards.
GradInitReport gradinit_(DSModelImpl& model, const BatchSource& batches, const GradInitOptions& options,
                         double aux_weight);

/// The deeply-supervised loss on one batch: L_main + aux_weight * sum_k L_aux_k.
torch::Tensor deep_supervision_loss(const DSOutput& out, const torch::Tensor& labels, double aux_weight);

}  // namespace liondg
