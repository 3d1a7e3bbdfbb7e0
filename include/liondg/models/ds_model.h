#pragma once
// The common interface of deeply-supervised models: a backbone with named tap
// points, a main classifier head and auxiliary classifier heads that read (never
// write) the backbone's activations at the taps. Every parameter has a role.

#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/ordered_dict.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace liondg {

// ------------------------------------------------------------------ block variants

/// How a residual branch (ResNet-DS) or a dense layer (DenseNet-DS) is built.
/// kFixup and kReZero add the scalar parameters those initializations need.
enum class BlockKind {
  kStandard,  // the plain block
  kFixup,     // Fixup (Zhang et al. 2019): scalar biases before each layer and a scalar multiplier
  kReZero,    // ReZero (Bachlechner et al. 2020): a scalar gate on the branch output
};
/// "standard" | "fixup" | "rezero"
std::string to_string(BlockKind kind);
BlockKind block_kind_from_string(const std::string& name);

// ------------------------------------------------------------------ heads

/// Options of a classifier head: global average pooling, an optional hidden
/// layer, then a linear layer to the classes.
struct HeadOptions {
  HeadOptions(int64_t in_channels, int64_t num_classes)
      : in_channels_(in_channels), num_classes_(num_classes) {}
  /// Channels of the feature map the head reads.
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, num_classes);
  /// 0: GAP -> Linear (the paper's head). > 0: GAP -> Linear(hidden) -> ReLU -> Linear.
  TORCH_ARG(int64_t, hidden) = 0;
  /// > 0: a Linear(num_classes -> feedback_channels) that maps the logits back into the
  /// backbone's stream (only for the in-branch counter-example of Theorem 1).
  TORCH_ARG(int64_t, feedback_channels) = 0;
};

/// A classifier head. It only reads its input: no parameter or buffer of the
/// backbone is touched, and its output is never fed back into the backbone.
class ClassifierHeadImpl : public torch::nn::Module {
 public:
  explicit ClassifierHeadImpl(const HeadOptions& options);
  // x: (N,C,H,W) or (N,C) -> logits (N,K)
  torch::Tensor forward(const torch::Tensor& x);
  /// The layer producing the logits; LION-DG sets its weight and bias to zero.
  torch::nn::Linear last_layer() const { return fc_; }
  // logits (N,K) -> (N,C) projection back into the stream (feedback_channels > 0 only)
  torch::Tensor feedback(const torch::Tensor& logits);

  HeadOptions options;

 private:
  torch::nn::Linear hidden_{nullptr};
  torch::nn::Linear fc_{nullptr};
  torch::nn::Linear feedback_{nullptr};
};
TORCH_MODULE(ClassifierHead);

// ------------------------------------------------------------------ taps

/// Collects the activations a backbone exposes at named tap points during one
/// forward pass. libtorch has no forward hooks, so a backbone calls
/// `taps.tap("name", x)` at each tap point; only requested names are kept and
/// the tensor is returned unchanged, so a tap can never alter the forward path.
class Taps {
 public:
  explicit Taps(std::vector<std::string> wanted);
  /// Records `x` under `name` if it was requested; returns `x` unchanged.
  const torch::Tensor& tap(const std::string& name, const torch::Tensor& x);
  /// Same, with x's global average pool over (H,W), (N,C), computed by the backbone
  /// (a fused block whose backward takes the pool's gradient directly). A head that
  /// starts with global average pooling then reads `pooled` instead of `x`.
  const torch::Tensor& tap(const std::string& name, const torch::Tensor& x, const torch::Tensor& pooled);
  /// Whether a head reads `name`.
  bool wants(const std::string& name) const;
  /// The tensor recorded under `name`; throws naming the missing tap.
  const torch::Tensor& at(const std::string& name) const;
  bool has(const std::string& name) const { return recorded_.count(name) > 0; }
  /// The pooled tensor recorded with `name`; undefined if none was.
  torch::Tensor pooled(const std::string& name) const;
  const std::vector<std::string>& wanted() const { return wanted_; }

 private:
  std::vector<std::string> wanted_;
  std::map<std::string, torch::Tensor> recorded_;
  std::map<std::string, torch::Tensor> pooled_;
};

// ------------------------------------------------------------------ model base

/// What a deeply-supervised forward pass returns.
struct DSOutput {
  torch::Tensor logits;                   // (N,K) main head
  std::vector<torch::Tensor> aux_logits;  // one (N,K) per auxiliary head, in head order
};

/// An auxiliary head attached at a named tap point.
struct AuxHeadSpec {
  std::string tap;       // tap point name, e.g. "block1"
  int64_t in_channels;   // channels of the tapped activation
};

/// The reason a model without a bfloat16 path gives for refusing bf16 training (one
/// wording for the model's own check and the registry's check without building it).
inline std::string no_bf16_path(const std::string& model_name) {
  return model_name + " has no bfloat16 path (DenseNet-DS's fused blocks have)";
}

/// Base class of every deeply-supervised model. Subclasses build the backbone,
/// then call `register_heads`; the heads are registered as `main_head` and
/// `aux_heads.<k>`, which is what parameter roles are derived from.
class DSModelImpl : public torch::nn::Module {
 public:
  explicit DSModelImpl(std::string name) : torch::nn::Module(std::move(name)) {}
  // x: (N,C,H,W) -> main logits (N,K) and one (N,K) per auxiliary head
  virtual DSOutput forward(const torch::Tensor& x) = 0;
  /// Lets a model use a fused training fast path that is first-order only (no double
  /// backward). The trainer turns it on for its loop and off afterwards; default: no-op.
  virtual void set_fused_training(bool /*enabled*/) {}
  /// Lets a model use a fused fast path when evaluating without gradients; default: no-op.
  virtual void set_fused_inference(bool /*enabled*/) {}
  /// The current settings of the two switches above (false for a model without them).
  virtual bool fused_training() const { return false; }
  virtual bool fused_inference() const { return false; }
  /// Reduced precision in the fused training path (see DenseNetDSImpl): the dense
  /// layers' convolutions on bfloat16 operands. A model without it refuses `true`.
  virtual void set_bf16_training(bool enabled) {
    TORCH_CHECK_VALUE(!enabled, "bf16 training: ", no_bf16_path(name()));
  }
  virtual bool bf16_training() const { return false; }

  int64_t num_aux_heads() const { return static_cast<int64_t>(aux_specs_.size()); }
  /// The tap point each auxiliary head reads, in head order.
  std::vector<std::string> aux_taps() const;
  ClassifierHead main_head() const { return main_head_; }
  /// Auxiliary head k (0-based).
  ClassifierHead aux_head(int64_t k) const;

 protected:
  void register_heads(int64_t num_classes, int64_t main_in_channels,
                      const std::vector<AuxHeadSpec>& aux, int64_t aux_hidden, bool feedback = false);
  /// Applies the main head to `features` and each auxiliary head to its tap.
  DSOutput apply_heads(const torch::Tensor& features, const Taps& taps);
  /// A Taps object requesting every auxiliary head's tap point.
  Taps make_taps() const;

 private:
  ClassifierHead main_head_{nullptr};
  torch::nn::ModuleList aux_heads_{nullptr};
  std::vector<AuxHeadSpec> aux_specs_;
};

// ------------------------------------------------------------------ roles

/// The role of a parameter: backbone, main head, or auxiliary head k.
struct ParamRole {
  enum class Kind { kBackbone, kMainHead, kAuxHead };
  Kind kind = Kind::kBackbone;
  int64_t aux_index = -1;  // >= 0 for kAuxHead only

  static ParamRole backbone() { return {Kind::kBackbone, -1}; }
  static ParamRole main_head() { return {Kind::kMainHead, -1}; }
  static ParamRole aux_head(int64_t k) { return {Kind::kAuxHead, k}; }
  /// "backbone", "main_head" or "aux_head_<k>".
  std::string str() const;
  bool operator==(const ParamRole& o) const { return kind == o.kind && aux_index == o.aux_index; }
  bool operator!=(const ParamRole& o) const { return !(*this == o); }
};

/// Role of a parameter from its fully qualified name inside a DSModel
/// ("main_head." prefix, "aux_heads.<k>." prefix, anything else = backbone).
ParamRole role_of(const std::string& parameter_name);

/// Every parameter of `model` with its role, in registration order.
std::vector<std::pair<std::string, ParamRole>> parameter_roles(const DSModelImpl& model);

/// The parameters of `model` whose role is exactly `role`.
torch::OrderedDict<std::string, torch::Tensor> named_parameters_by_role(const DSModelImpl& model,
                                                                      const ParamRole& role);

/// The parameters of every auxiliary head (all k) or of the backbone etc.
std::vector<torch::Tensor> parameters_of_kind(const DSModelImpl& model, ParamRole::Kind kind);

/// Number of scalar parameters per role name plus "total".
std::map<std::string, int64_t> parameter_counts(const DSModelImpl& model);

/// Stores every 4-d parameter (convolution weights) channels-last (NHWC strides), so
/// that oneDNN convolutions and BatchNorm run on channels-last activations without
/// layout reorders. Values are unchanged; call before creating the optimizer.
void to_channels_last_(torch::nn::Module& model);

// ------------------------------------------------------------------ user backbones

/// A user backbone that exposes tap points. Implement `forward(x, taps)`:
/// compute as usual and call `taps.tap("name", h)` wherever a head may read.
/// Return the final feature map (N,C,H,W) or features (N,C).
class TapBackboneImpl : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x, Taps& taps) = 0;
};

/// Options for wrapping a user backbone into a deeply-supervised model.
struct DeeplySupervisedOptions {
  DeeplySupervisedOptions(int64_t num_classes, int64_t feature_channels)
      : num_classes_(num_classes), feature_channels_(feature_channels) {}
  TORCH_ARG(int64_t, num_classes);
  /// Channels of the backbone's final features (input of the main head).
  TORCH_ARG(int64_t, feature_channels);
  /// Auxiliary heads in order: tap name and channel count of the tapped tensor.
  TORCH_ARG(std::vector<AuxHeadSpec>, aux_heads) = {};
  TORCH_ARG(int64_t, aux_hidden) = 0;

 public:
  /// Adds one auxiliary head reading tap `name` with `channels` channels.
  DeeplySupervisedOptions& tap(const std::string& name, int64_t channels) {
    aux_heads_.push_back({name, channels});
    return *this;
  }
};

/// Attaches a main head and side-tap auxiliary heads to a user's backbone.
/// The backbone is registered as `backbone` (role: backbone).
class DeeplySupervisedImpl : public DSModelImpl {
 public:
  DeeplySupervisedImpl(std::shared_ptr<TapBackboneImpl> backbone,
                       const DeeplySupervisedOptions& options);
  DSOutput forward(const torch::Tensor& x) override;
  std::shared_ptr<TapBackboneImpl> backbone() const { return backbone_; }

  DeeplySupervisedOptions options;

 private:
  std::shared_ptr<TapBackboneImpl> backbone_;
};
TORCH_MODULE(DeeplySupervised);

}  // namespace liondg
