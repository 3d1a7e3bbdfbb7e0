// Init plans: presets, stage order, and the audit of what each stage wrote.

#include <liondg/errors.h>
#include <liondg/init/init.h>
#include <liondg/init/plan.h>

#include <nlohmann/json.hpp>
#include <torch/nn/init.h>

#include <chrono>
#include <set>

namespace liondg {
namespace {

using Json = nlohmann::json;

template <typename Enum>
Enum parse_name(const std::string& name, const std::vector<std::string>& names, const std::vector<Enum>& values,
                const std::string& what) {
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == name) return values[i];
  }
  std::string known;
  for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
  throw UsageError("unknown " + what + " '" + name + "'; expected one of: " + known);
}

// Names of every Conv/Linear weight and bias and BatchNorm affine parameter:
// what the base stage (he / xavier) writes.
std::vector<std::string> layer_parameter_names(const DSModelImpl& model) {
  std::vector<std::string> names;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    const auto& m = *item.value();
    const bool layer = m.as<torch::nn::Conv2d>() || m.as<torch::nn::Linear>() || m.as<torch::nn::BatchNorm2d>() ||
                       m.as<torch::nn::Conv1d>() || m.as<torch::nn::BatchNorm1d>();
    if (!layer) continue;
    for (const auto& p : m.named_parameters(/*recurse=*/false)) names.push_back(item.key() + "." + p.key());
  }
  return names;
}

std::vector<std::string> names_with_prefix(const DSModelImpl& model, const std::string& prefix) {
  std::vector<std::string> names;
  for (const auto& item : model.named_parameters()) {
    if (item.key().rfind(prefix, 0) == 0) names.push_back(item.key());
  }
  return names;
}

// The auxiliary-head stage: returns the parameter names it wrote.
std::vector<std::string> apply_aux_policy_(DSModelImpl& model, AuxPolicy policy) {
  torch::NoGradGuard no_grad;
  std::vector<std::string> written;
  for (int64_t k = 0; k < model.num_aux_heads(); ++k) {
    const std::string prefix = "aux_heads." + std::to_string(k) + ".";
    auto fc = model.aux_head(k)->last_layer();
    switch (policy) {
      case AuxPolicy::kInherit:
        return written;
      case AuxPolicy::kZero:
        fc->weight.zero_();
        fc->bias.zero_();
        written.push_back(prefix + "fc.weight");
        written.push_back(prefix + "fc.bias");
        break;
      case AuxPolicy::kSmall:
        fc->weight.normal_(0.0, 0.001);
        fc->bias.zero_();
        written.push_back(prefix + "fc.weight");
        written.push_back(prefix + "fc.bias");
        break;
      case AuxPolicy::kXavier:
        for (const auto& item : model.aux_head(k)->named_modules("", /*include_self=*/false)) {
          if (auto* linear = item.value()->as<torch::nn::Linear>()) {
            torch::nn::init::xavier_uniform_(linear->weight, /*gain=*/1.0);
            linear->bias.zero_();
            written.push_back(prefix + item.key() + ".weight");
            written.push_back(prefix + item.key() + ".bias");
          }
        }
        break;
    }
  }
  return written;
}

std::vector<std::string> aux_claims(const DSModelImpl& model, AuxPolicy policy) {
  std::vector<std::string> claimed;
  for (int64_t k = 0; k < model.num_aux_heads(); ++k) {
    const std::string prefix = "aux_heads." + std::to_string(k) + ".";
    if (policy == AuxPolicy::kXavier) {
      for (const auto& n : names_with_prefix(model, prefix)) claimed.push_back(n);
    } else if (policy != AuxPolicy::kInherit) {
      claimed.push_back(prefix + "fc.weight");
      claimed.push_back(prefix + "fc.bias");
    }
  }
  return claimed;
}

}  // namespace

// ------------------------------------------------------------------ names and presets

const std::vector<std::string>& backbone_policy_names() {
  static const std::vector<std::string> kNames{"he", "xavier", "lsuv", "fixup", "rezero", "gradinit"};
  return kNames;
}
const std::vector<std::string>& aux_policy_names() {
  static const std::vector<std::string> kNames{"inherit", "zero", "small", "xavier"};
  return kNames;
}
const std::vector<std::string>& init_preset_names() {
  static const std::vector<std::string> kNames{"he",    "xavier", "lion-dg", "lsuv",
                                               "lion-lsuv", "fixup", "rezero", "gradinit"};
  return kNames;
}

BackbonePolicy backbone_policy_from_string(const std::string& name) {
  return parse_name<BackbonePolicy>(name, backbone_policy_names(),
                    {BackbonePolicy::kHe, BackbonePolicy::kXavier, BackbonePolicy::kLSUV, BackbonePolicy::kFixup,
                     BackbonePolicy::kReZero, BackbonePolicy::kGradInit},
                    "backbone init policy");
}
AuxPolicy aux_policy_from_string(const std::string& name) {
  return parse_name<AuxPolicy>(name, aux_policy_names(), {AuxPolicy::kInherit, AuxPolicy::kZero, AuxPolicy::kSmall, AuxPolicy::kXavier},
                    "auxiliary-head init policy");
}
std::string to_string(BackbonePolicy p) { return backbone_policy_names()[static_cast<size_t>(p)]; }
std::string to_string(AuxPolicy p) { return aux_policy_names()[static_cast<size_t>(p)]; }

BlockKind InitPlan::required_block() const {
  if (backbone == BackbonePolicy::kFixup) return BlockKind::kFixup;
  if (backbone == BackbonePolicy::kReZero) return BlockKind::kReZero;
  return BlockKind::kStandard;
}

bool InitPlan::needs_data() const {
  return backbone == BackbonePolicy::kLSUV || backbone == BackbonePolicy::kGradInit;
}

std::string InitPlan::describe() const { return to_string(backbone) + "+" + to_string(aux); }

InitPlan init_plan_from_preset(const std::string& preset) {
  InitPlan plan;
  plan.preset = preset;
  if (preset == "he") return plan;
  if (preset == "xavier") plan.backbone = BackbonePolicy::kXavier;
  else if (preset == "lion-dg") plan.aux = AuxPolicy::kZero;
  else if (preset == "lsuv") plan.backbone = BackbonePolicy::kLSUV;
  else if (preset == "lion-lsuv") plan.backbone = BackbonePolicy::kLSUV, plan.aux = AuxPolicy::kZero;
  else if (preset == "fixup") plan.backbone = BackbonePolicy::kFixup;
  else if (preset == "rezero") plan.backbone = BackbonePolicy::kReZero;
  else if (preset == "gradinit") plan.backbone = BackbonePolicy::kGradInit;
  else {
    std::string known;
    for (const auto& n : init_preset_names()) known += (known.empty() ? "" : ", ") + n;
    throw UsageError("unknown init preset '" + preset + "'; expected one of: " + known);
  }
  return plan;
}

InitPlan resolve_init_plan(const std::string& preset, const std::string& backbone_override,
                           const std::string& aux_override) {
  InitPlan plan = init_plan_from_preset(preset);
  if (!backbone_override.empty()) plan.backbone = backbone_policy_from_string(backbone_override);
  if (!aux_override.empty()) plan.aux = aux_policy_from_string(aux_override);
  if (!backbone_override.empty() || !aux_override.empty()) plan.preset = preset + " (" + plan.describe() + ")";
  return plan;
}

// ------------------------------------------------------------------ audit

InitAudit::InitAudit(const DSModelImpl& model) : model_(model) {
  for (const auto& item : model.named_parameters()) names_.push_back(item.key());
}

std::vector<InitAudit::Stats> InitAudit::snapshot() const {
  torch::NoGradGuard no_grad;
  std::vector<Stats> out;
  for (const auto& item : model_.named_parameters()) {
    torch::Tensor p = item.value().detach().to(torch::kFloat64);
    out.push_back({p.mean().item<double>(), p.numel() > 1 ? p.std().item<double>() : 0.0, p.norm().item<double>()});
  }
  return out;
}

void InitAudit::run(const std::string& name, const std::vector<std::string>& claimed,
                    const std::function<std::vector<std::string>()>& stage, bool base) {
  StageRecord rec;
  rec.name = name;
  rec.before = snapshot();
  rec.written = stage();
  rec.after = snapshot();
  const std::set<std::string> written(rec.written.begin(), rec.written.end());
  for (const auto& p : rec.written) {
    auto it = last_writer_.find(p);
    if (it != last_writer_.end() && !it->second.second) {
      warnings_.push_back("stage '" + name + "' overwrote " + p + ", last written by stage '" + it->second.first + "'");
    }
    last_writer_[p] = {name, base};
  }
  for (const auto& p : claimed) {
    if (!written.count(p)) warnings_.push_back("stage '" + name + "' left " + p + " untouched although it claims it");
  }
  stages_.push_back(std::move(rec));
}

void InitAudit::add_stage_details(const std::string& name, std::string details_json) {
  for (auto& s : stages_) {
    if (s.name == name) s.details_json = std::move(details_json);
  }
}

std::string InitAudit::last_writer(const std::string& param) const {
  auto it = last_writer_.find(param);
  return it == last_writer_.end() ? "" : it->second.first;
}

std::string InitAudit::json() const {
  auto stats = [](const Stats& s) { return Json::object({{"mean", s.mean}, {"std", s.std}, {"norm", s.norm}}); };
  Json j;
  j["stages"] = Json::array();
  for (const auto& s : stages_) {
    Json stage{{"name", s.name}, {"written", s.written}};
    if (!s.details_json.empty()) stage["details"] = Json::parse(s.details_json);
    j["stages"].push_back(stage);
  }
  j["tensors"] = Json::array();
  for (size_t i = 0; i < names_.size(); ++i) {
    Json t{{"name", names_[i]}, {"role", role_of(names_[i]).str()}, {"last_written_by", last_writer(names_[i])}};
    t["stages"] = Json::array();
    for (const auto& s : stages_) {
      t["stages"].push_back({{"stage", s.name}, {"before", stats(s.before[i])}, {"after", stats(s.after[i])}});
    }
    j["tensors"].push_back(t);
  }
  j["warnings"] = warnings_;
  return j.dump(2);
}

// ------------------------------------------------------------------ the plan

InitResult apply_init_plan_(DSModelImpl& model, const InitPlan& plan, const BatchSource& batches, double aux_weight) {
  const auto start = std::chrono::steady_clock::now();
  TORCH_CHECK_VALUE(!plan.needs_data() || static_cast<bool>(batches), "init policy '", to_string(plan.backbone),
                    "' needs calibration data");
  InitResult result;
  InitAudit audit(model);
  Json plan_json{{"preset", plan.preset}, {"backbone", to_string(plan.backbone)}, {"aux", to_string(plan.aux)}};

  // Stage 1: base initialization of every layer.
  const std::vector<std::string> layers = layer_parameter_names(model);
  const bool xavier = plan.backbone == BackbonePolicy::kXavier;
  audit.run(
      xavier ? "base:xavier" : "base:he", layers,
      [&]() {
        if (xavier) xavier_init_(model);
        else he_init_(model);
        return layers;
      },
      /*base=*/true);

  // Stage 2: the backbone policy.
  switch (plan.backbone) {
    case BackbonePolicy::kHe:
    case BackbonePolicy::kXavier:
      break;
    case BackbonePolicy::kLSUV: {
      std::vector<std::string> claimed;
      for (const auto& n : layers) {
        const bool bn = n.find("norm.") != std::string::npos || n.find("bn") != std::string::npos;
        if (n.rfind("aux_heads", 0) != 0 && !bn) claimed.push_back(n);
      }
      audit.run("lsuv", claimed, [&]() {
        torch::Tensor x = batches(plan.lsuv.samples()).first;
        result.lsuv = lsuv_(model, x, plan.lsuv);
        return result.lsuv.written;
      });
      Json layers_json = Json::array();
      for (const auto& l : result.lsuv.layers) {
        layers_json.push_back({{"layer", l.layer},
                               {"iterations", l.iterations},
                               {"initial_variance", l.initial_variance},
                               {"final_variance", l.final_variance},
                               {"converged", l.converged}});
      }
      audit.add_stage_details("lsuv", Json{{"samples", plan.lsuv.samples()},
                                           {"target_variance", plan.lsuv.target_variance()},
                                           {"tolerance", plan.lsuv.tolerance()},
                                           {"max_iterations", plan.lsuv.max_iterations()},
                                           {"seconds", result.lsuv.seconds},
                                           {"layers", layers_json},
                                           {"unobserved", result.lsuv.unobserved}}
                                          .dump());
      for (const auto& l : result.lsuv.unobserved) {
        result.warnings.push_back("lsuv: layer " + l + " never reported its output (see observe.h); left orthonormal");
      }
      result.calibration_seconds += result.lsuv.seconds;
      break;
    }
    case BackbonePolicy::kFixup: {
      // Claimed: every Fixup scalar and the main classifier (branch convs are reported as written).
      std::vector<std::string> claimed{"main_head.fc.weight", "main_head.fc.bias"};
      for (const auto& item : model.named_parameters()) {
        if (item.key().find("fixup_") != std::string::npos) claimed.push_back(item.key());
      }
      audit.run("fixup", claimed, [&]() {
        result.fixup = fixup_init_(model);
        return result.fixup.written;
      });
      audit.add_stage_details("fixup", Json{{"num_branches", result.fixup.num_branches},
                                            {"branch_layers", result.fixup.branch_layers},
                                            {"scale", result.fixup.scale}}
                                           .dump());
      break;
    }
    case BackbonePolicy::kReZero: {
      std::vector<std::string> gates;
      for (const auto& item : model.named_parameters()) {
        if (item.key().find("rezero_gate") != std::string::npos) gates.push_back(item.key());
      }
      audit.run("rezero", gates, [&]() { return rezero_init_(model); });
      break;
    }
    case BackbonePolicy::kGradInit: {
      std::vector<std::string> claimed;
      for (const auto& item : model.named_parameters()) {
        if (item.value().norm().item<double>() > 0) claimed.push_back(item.key());
      }
      if (plan.gradinit.iterations() == 0) claimed.clear();
      audit.run("gradinit", claimed, [&]() {
        result.gradinit = gradinit_(model, batches, plan.gradinit, aux_weight);
        return result.gradinit.written;
      });
      Json scales = Json::object();
      for (const auto& [name, alpha] : result.gradinit.scales) scales[name] = alpha;
      const auto& g = plan.gradinit;
      audit.add_stage_details("gradinit", Json{{"iterations", result.gradinit.iterations},
                                               {"constraint_steps", result.gradinit.constraint_steps},
                                               {"objective_steps", result.gradinit.objective_steps},
                                               {"initial_objective", result.gradinit.initial_objective},
                                               {"final_objective", result.gradinit.final_objective},
                                               {"seconds", result.gradinit.seconds},
                                               {"algorithm", g.algorithm()},
                                               {"eta", g.eta()},
                                               {"gamma", std::isfinite(g.gamma()) ? Json(g.gamma()) : Json("inf")},
                                               {"lr", g.lr()},
                                               {"min_scale", g.min_scale()},
                                               {"grad_clip", g.grad_clip()},
                                               {"batch_size", g.batch_size()},
                                               {"scales", scales}}
                                              .dump());
      result.calibration_seconds += result.gradinit.seconds;
      break;
    }
  }

  // Stage 3: the auxiliary-head policy.
  if (plan.aux != AuxPolicy::kInherit) {
    audit.run("aux:" + to_string(plan.aux), aux_claims(model, plan.aux), [&]() { return apply_aux_policy_(model, plan.aux); });
  }

  for (const auto& w : audit.warnings()) result.warnings.push_back(w);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  Json j = Json::parse(audit.json());
  j["plan"] = plan_json;
  j["warnings"] = result.warnings;
  j["seconds"] = result.seconds;
  j["calibration_seconds"] = result.calibration_seconds;
  result.audit_json = j.dump(2);
  return result;
}

}  // namespace liondg
