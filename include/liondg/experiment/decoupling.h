#pragma once
// Proposition 1, measured: at initialization, the gradient that the auxiliary
// losses send into the backbone.

#include <liondg/data/dataset.h>
#include <liondg/init/plan.h>
#include <liondg/models/registry.h>

#include <string>

namespace liondg {

struct DecouplingConfig {
  ModelSpec model;
  std::string init = "lion-dg";  // preset
  std::string backbone_init;     // optional overrides of the preset
  std::string aux_init;
  std::string dataset = "fashion-mnist";
  std::string data_path;
  SyntheticOptions synthetic;
  int64_t batch_size = 128;
  double aux_weight = 0.3;
  uint64_t seed = 42;
};

struct DecouplingResult {
  std::string model;
  std::string init;
  AuxPolicy aux_policy = AuxPolicy::kInherit;
  double backbone_max_abs_grad = 0;  // max |d(alpha sum L_aux)/d theta| over backbone parameters
  double aux_head_max_abs_grad = 0;  // same over auxiliary-head parameters
  double backbone_aux_grad_norm = 0;
  double backbone_main_grad_norm = 0;
  /// Exactly zero backbone gradient while the heads themselves receive gradient.
  bool decoupled() const { return backbone_max_abs_grad == 0.0 && aux_head_max_abs_grad > 0.0; }
};

/// Builds and initializes the model, takes the first training batch of the data
/// set (normalized, no augmentation) and measures the auxiliary gradients.
DecouplingResult verify_decoupling(const DecouplingConfig& config);

}  // namespace liondg
