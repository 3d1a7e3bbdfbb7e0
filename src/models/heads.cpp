// Classifier heads, tap points, the deeply-supervised model base and parameter roles.

#include <liondg/errors.h>
#include <liondg/models/ds_model.h>
#include <liondg/models/observe.h>

#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/pooling.h>

namespace liondg {

// ------------------------------------------------------------------ BlockKind

std::string to_string(BlockKind kind) {
  switch (kind) {
    case BlockKind::kStandard: return "standard";
    case BlockKind::kFixup: return "fixup";
    case BlockKind::kReZero: return "rezero";
  }
  return "standard";
}

BlockKind block_kind_from_string(const std::string& name) {
  if (name == "standard") return BlockKind::kStandard;
  if (name == "fixup") return BlockKind::kFixup;
  if (name == "rezero") return BlockKind::kReZero;
  throw UsageError("unknown block kind '" + name + "'; expected one of: standard, fixup, rezero");
}

// ------------------------------------------------------------------ ClassifierHead

ClassifierHeadImpl::ClassifierHeadImpl(const HeadOptions& options_) : options(options_) {
  TORCH_CHECK_VALUE(options.in_channels() > 0, "head in_channels must be > 0, got ", options.in_channels());
  TORCH_CHECK_VALUE(options.num_classes() > 1, "num_classes must be > 1, got ", options.num_classes());
  TORCH_CHECK_VALUE(options.hidden() >= 0, "head hidden width must be >= 0, got ", options.hidden());
  int64_t fc_in = options.in_channels();
  if (options.hidden() > 0) {
    hidden_ = register_module("hidden", torch::nn::Linear(options.in_channels(), options.hidden()));
    fc_in = options.hidden();
  }
  fc_ = register_module("fc", torch::nn::Linear(fc_in, options.num_classes()));
  if (options.feedback_channels() > 0) {
    feedback_ = register_module("feedback", torch::nn::Linear(options.num_classes(), options.feedback_channels()));
  }
}

torch::Tensor ClassifierHeadImpl::feedback(const torch::Tensor& logits) {
  TORCH_CHECK(feedback_, "this head has no feedback layer (feedback_channels = 0)");
  return observe(*feedback_, feedback_->forward(logits));
}

torch::Tensor ClassifierHeadImpl::forward(const torch::Tensor& x) {
  // Global average pooling over the spatial dimensions: (N,C,H,W) -> (N,C).
  torch::Tensor h = x.dim() == 4 ? x.mean(/*dim=*/{2, 3}) : x;
  if (hidden_) h = torch::relu(observe(*hidden_, hidden_->forward(h)));
  return observe(*fc_, fc_->forward(h));
}

// ------------------------------------------------------------------ Taps

Taps::Taps(std::vector<std::string> wanted) : wanted_(std::move(wanted)) {}

bool Taps::wants(const std::string& name) const {
  return std::find(wanted_.begin(), wanted_.end(), name) != wanted_.end();
}

const torch::Tensor& Taps::tap(const std::string& name, const torch::Tensor& x) {
  if (wants(name)) recorded_[name] = x;
  return x;
}

const torch::Tensor& Taps::tap(const std::string& name, const torch::Tensor& x, const torch::Tensor& pooled) {
  if (wants(name)) {
    TORCH_CHECK(pooled.dim() == 2 && x.dim() == 4 && pooled.size(0) == x.size(0) && pooled.size(1) == x.size(1),
                "tap '", name, "': pooled ", pooled.sizes(), " does not match ", x.sizes());
    recorded_[name] = x;
    pooled_[name] = pooled;
  }
  return x;
}

torch::Tensor Taps::pooled(const std::string& name) const {
  auto it = pooled_.find(name);
  return it == pooled_.end() ? torch::Tensor() : it->second;
}

const torch::Tensor& Taps::at(const std::string& name) const {
  auto it = recorded_.find(name);
  if (it == recorded_.end()) {
    throw UsageError("tap point '" + name +
                     "' was requested by an auxiliary head but the backbone's forward never "
                     "called taps.tap(\"" + name + "\", ...)");
  }
  return it->second;
}

// ------------------------------------------------------------------ DSModel

std::vector<std::string> DSModelImpl::aux_taps() const {
  std::vector<std::string> names;
  for (const auto& spec : aux_specs_) names.push_back(spec.tap);
  return names;
}

ClassifierHead DSModelImpl::aux_head(int64_t k) const {
  TORCH_CHECK_INDEX(k >= 0 && k < num_aux_heads(), "auxiliary head index ", k, " out of range [0, ",
                    num_aux_heads(), ")");
  return ClassifierHead(aux_heads_->ptr<ClassifierHeadImpl>(k));
}

void DSModelImpl::register_heads(int64_t num_classes, int64_t main_in_channels,
                                 const std::vector<AuxHeadSpec>& aux, int64_t aux_hidden, bool feedback) {
  main_head_ = register_module("main_head", ClassifierHead(HeadOptions(main_in_channels, num_classes)));
  aux_heads_ = register_module("aux_heads", torch::nn::ModuleList());
  for (const auto& spec : aux) {
    for (const auto& other : aux_specs_) {
      TORCH_CHECK_VALUE(other.tap != spec.tap, "two auxiliary heads read the same tap '", spec.tap, "'");
    }
    aux_heads_->push_back(ClassifierHead(HeadOptions(spec.in_channels, num_classes)
                                             .hidden(aux_hidden)
                                             .feedback_channels(feedback ? spec.in_channels : 0)));
    aux_specs_.push_back(spec);
  }
}

Taps DSModelImpl::make_taps() const { return Taps(aux_taps()); }

DSOutput DSModelImpl::apply_heads(const torch::Tensor& features, const Taps& taps) {
  DSOutput out;
  out.logits = main_head_->forward(features);
  out.aux_logits.reserve(aux_specs_.size());
  for (size_t k = 0; k < aux_specs_.size(); ++k) {
    // A head starts with global average pooling: it reads the pooled tap if the
    // backbone recorded one.
    const torch::Tensor pooled = taps.pooled(aux_specs_[k].tap);
    out.aux_logits.push_back(
        aux_heads_->ptr<ClassifierHeadImpl>(k)->forward(pooled.defined() ? pooled : taps.at(aux_specs_[k].tap)));
  }
  return out;
}

// ------------------------------------------------------------------ roles

std::string ParamRole::str() const {
  switch (kind) {
    case Kind::kBackbone: return "backbone";
    case Kind::kMainHead: return "main_head";
    case Kind::kAuxHead: return "aux_head_" + std::to_string(aux_index);
  }
  return "backbone";
}

ParamRole role_of(const std::string& name) {
  static const std::string kMain = "main_head.";
  static const std::string kAux = "aux_heads.";
  if (name.compare(0, kMain.size(), kMain) == 0) return ParamRole::main_head();
  if (name.compare(0, kAux.size(), kAux) == 0) {
    const size_t dot = name.find('.', kAux.size());
    return ParamRole::aux_head(std::stoll(name.substr(kAux.size(), dot - kAux.size())));
  }
  return ParamRole::backbone();
}

std::vector<std::pair<std::string, ParamRole>> parameter_roles(const DSModelImpl& model) {
  std::vector<std::pair<std::string, ParamRole>> roles;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    roles.emplace_back(item.key(), role_of(item.key()));
  }
  return roles;
}

torch::OrderedDict<std::string, torch::Tensor> named_parameters_by_role(const DSModelImpl& model,
                                                                      const ParamRole& role) {
  torch::OrderedDict<std::string, torch::Tensor> out;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (role_of(item.key()) == role) out.insert(item.key(), item.value());
  }
  return out;
}

std::vector<torch::Tensor> parameters_of_kind(const DSModelImpl& model, ParamRole::Kind kind) {
  std::vector<torch::Tensor> out;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (role_of(item.key()).kind == kind) out.push_back(item.value());
  }
  return out;
}

std::map<std::string, int64_t> parameter_counts(const DSModelImpl& model) {
  std::map<std::string, int64_t> counts{{"total", 0}, {"backbone", 0}, {"main_head", 0}, {"aux_heads", 0}};
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    const ParamRole role = role_of(item.key());
    const int64_t n = item.value().numel();
    counts["total"] += n;
    counts[role.kind == ParamRole::Kind::kAuxHead ? "aux_heads" : role.str()] += n;
    if (role.kind == ParamRole::Kind::kAuxHead) counts[role.str()] += n;
  }
  return counts;
}

// ------------------------------------------------------------------ DeeplySupervised

DeeplySupervisedImpl::DeeplySupervisedImpl(std::shared_ptr<TapBackboneImpl> backbone,
                                           const DeeplySupervisedOptions& options_)
    : DSModelImpl("DeeplySupervised"), options(options_) {
  TORCH_CHECK_VALUE(backbone != nullptr, "DeeplySupervised: backbone is null");
  backbone_ = register_module("backbone", std::move(backbone));
  register_heads(options.num_classes(), options.feature_channels(), options.aux_heads(), options.aux_hidden());
}

DSOutput DeeplySupervisedImpl::forward(const torch::Tensor& x) {
  Taps taps = make_taps();
  torch::Tensor features = backbone_->forward(x, taps);
  return apply_heads(features, taps);
}

void to_channels_last_(torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  for (auto& p : model.parameters()) {
    if (p.dim() == 4) p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
  }
}

}  // namespace liondg
