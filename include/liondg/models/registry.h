#pragma once
// The model registry: the one place a model name becomes a model.

#include <liondg/models/ds_model.h>

#include <memory>
#include <string>
#include <vector>

namespace liondg {

/// Everything needed to build a registered model; unset sizes keep each model's defaults.
struct ModelSpec {
  std::string name = "densenet-ds";  // densenet-ds | resnet-ds
  int64_t num_classes = 10;
  int64_t in_channels = 3;
  int64_t growth_rate = 12;                 // densenet-ds
  std::vector<int64_t> block_layers = {6, 6, 6};  // densenet-ds
  double compression = 0.5;                 // densenet-ds
  std::vector<int64_t> widths = {16, 32, 64};     // resnet-ds
  std::vector<int64_t> blocks_per_stage = {3, 3, 3};  // resnet-ds
  std::vector<int64_t> aux_after = {1, 2};  // blocks (densenet) or stages (resnet)
  int64_t aux_hidden = 0;
  BlockKind block = BlockKind::kStandard;   // set from the init plan (fixup / rezero need their scalars)
  bool batch_norm = true;                   // false: normalization-free (Fixup's variant)
  bool aux_in_branch = false;               // resnet-ds: Theorem 1 counter-example
};

/// Names accepted by `make_model`.
const std::vector<std::string>& model_names();

/// Builds the model `spec.name`; throws UsageError for an unknown name.
std::shared_ptr<DSModelImpl> make_model(const ModelSpec& spec);

/// Why `make_model(spec)->set_bf16_training(true)` would be refused ("" when it would
/// not), without building the model; throws as make_model does for a spec it cannot
/// build. A grid config with train.bf16 checks every (model, init) pair with it.
std::string bf16_refusal(const ModelSpec& spec);

}  // namespace liondg
