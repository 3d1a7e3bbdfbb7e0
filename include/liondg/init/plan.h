#pragma once
// The init plan: a backbone policy x an auxiliary-head policy, applied in a fixed
// order with an audit of what every stage wrote.
//
//   stage 1  base      he (or xavier) on every Conv/Linear/BatchNorm of the model
//   stage 2  backbone  lsuv | fixup | rezero | gradinit (nothing for he / xavier)
//   stage 3  aux       zero | small | xavier on the auxiliary heads (nothing for inherit)
//
// Presets (the paper's names): he, xavier, lion-dg (he + zero), lsuv, lion-lsuv
// (lsuv + zero: the zeroing happens after LSUV), fixup, rezero, gradinit.

#include <liondg/init/methods.h>
#include <liondg/models/ds_model.h>

#include <string>
#include <vector>

namespace liondg {

enum class BackbonePolicy { kHe, kXavier, kLSUV, kFixup, kReZero, kGradInit };
enum class AuxPolicy {
  kInherit,  // whatever the earlier stages wrote (the base He init)
  kZero,     // LION-DG: last layer of every auxiliary head = 0 (weight and bias)
  kSmall,    // last layer ~ N(0, 0.001^2), bias 0 (torchvision's Inception auxiliary fc)
  kXavier,   // Xavier-uniform on every layer of the auxiliary heads, biases 0
};

const std::vector<std::string>& backbone_policy_names();
const std::vector<std::string>& aux_policy_names();
const std::vector<std::string>& init_preset_names();
BackbonePolicy backbone_policy_from_string(const std::string& name);
AuxPolicy aux_policy_from_string(const std::string& name);
std::string to_string(BackbonePolicy policy);
std::string to_string(AuxPolicy policy);

struct InitPlan {
  std::string preset = "custom";
  BackbonePolicy backbone = BackbonePolicy::kHe;
  AuxPolicy aux = AuxPolicy::kInherit;
  LSUVOptions lsuv;
  GradInitOptions gradinit;
  /// The block structure the backbone policy needs (fixup / rezero scalars).
  BlockKind required_block() const;
  /// True when a stage needs calibration data (lsuv, gradinit).
  bool needs_data() const;
  /// "lsuv+zero" style description.
  std::string describe() const;
};

/// The plan of a preset; throws UsageError listing the presets.
InitPlan init_plan_from_preset(const std::string& preset);

/// A preset with optional overrides of either policy ("" keeps the preset's).
InitPlan resolve_init_plan(const std::string& preset, const std::string& backbone_override,
                           const std::string& aux_override);

struct InitResult {
  std::string audit_json;  // the content of init.json
  std::vector<std::string> warnings;
  double seconds = 0;           // the whole plan
  double calibration_seconds = 0;  // LSUV + GradInit
  LSUVReport lsuv;
  GradInitReport gradinit;
  FixupReport fixup;
};

/// Applies `plan` to `model`. `batches` supplies calibration data (needed by lsuv and
/// gradinit, else may be empty); `aux_weight` is alpha of the training loss (GradInit's
/// objective). Throws UsageError when the model lacks the structure a policy needs.
InitResult apply_init_plan_(DSModelImpl& model, const InitPlan& plan, const BatchSource& batches = {},
                            double aux_weight = 0.3);

/// Records, stage by stage, what an initialization wrote: per tensor its role, the
/// stage that last wrote it and mean/std/norm before and after every stage, with
/// warnings when a stage overwrites a tensor an earlier (non-base) stage wrote or
/// leaves untouched a tensor it claims to handle.
class InitAudit {
 public:
  explicit InitAudit(const DSModelImpl& model);
  /// Runs `stage`; it returns the names of the parameters it wrote. `claimed` lists
  /// the parameters it is responsible for. A base stage's writes may be overwritten silently.
  void run(const std::string& name, const std::vector<std::string>& claimed,
           const std::function<std::vector<std::string>()>& stage, bool base = false);
  void add_stage_details(const std::string& name, std::string details_json);
  const std::vector<std::string>& warnings() const { return warnings_; }
  /// Name of the stage that last wrote `param` ("" if none).
  std::string last_writer(const std::string& param) const;
  std::string json() const;

 private:
  struct Stats {
    double mean, std, norm;
  };
  struct StageRecord {
    std::string name;
    std::vector<std::string> written;
    std::vector<Stats> before, after;  // per parameter, in model order
    std::string details_json;          // "" or a JSON object
  };
  std::vector<Stats> snapshot() const;

  const DSModelImpl& model_;
  std::vector<std::string> names_;
  std::vector<StageRecord> stages_;
  std::map<std::string, std::pair<std::string, bool>> last_writer_;  // param -> (stage, base)
  std::vector<std::string> warnings_;
};

}  // namespace liondg
