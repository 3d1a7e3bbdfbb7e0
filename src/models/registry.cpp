// Model registry: name -> model.

#include <liondg/errors.h>
#include <liondg/models/densenet_ds.h>
#include <liondg/models/registry.h>
#include <liondg/models/resnet_ds.h>

namespace liondg {

const std::vector<std::string>& model_names() {
  static const std::vector<std::string> kNames{"densenet-ds", "resnet-ds"};
  return kNames;
}

namespace {
[[noreturn]] void unknown_model(const std::string& name) {
  std::string known;
  for (const auto& n : model_names()) known += (known.empty() ? "" : ", ") + n;
  throw UsageError("unknown model '" + name + "'; expected one of: " + known);
}

DenseNetDSOptions densenet_options(const ModelSpec& spec) {
  if (spec.aux_in_branch) throw UsageError("aux_in_branch is a ResNet-DS variant; densenet-ds has no residual stream");
  // The stem is twice the growth rate (the paper: 24 for 12). A growth rate the model
  // refuses is passed on as the stem too, so that doubling it cannot overflow and the
  // model's own check names it.
  const bool accepted_growth = spec.growth_rate > 0 && spec.growth_rate <= kMaxDenseNetChannels;
  return DenseNetDSOptions(spec.num_classes)
      .in_channels(spec.in_channels)
      .growth_rate(spec.growth_rate)
      .stem_channels(accepted_growth ? 2 * spec.growth_rate : spec.growth_rate)
      .block_layers(spec.block_layers)
      .compression(spec.compression)
      .aux_after_blocks(spec.aux_after)
      .aux_hidden(spec.aux_hidden)
      .block(spec.block)
      .batch_norm(spec.batch_norm);
}
}  // namespace

std::shared_ptr<DSModelImpl> make_model(const ModelSpec& spec) {
  if (spec.name == "densenet-ds") return std::make_shared<DenseNetDSImpl>(densenet_options(spec));
  if (spec.name == "resnet-ds") {
    return std::make_shared<ResNetDSImpl>(ResNetDSOptions(spec.num_classes)
                                              .in_channels(spec.in_channels)
                                              .widths(spec.widths)
                                              .blocks_per_stage(spec.blocks_per_stage)
                                              .aux_after_stages(spec.aux_after)
                                              .aux_hidden(spec.aux_hidden)
                                              .block(spec.block)
                                              .batch_norm(spec.batch_norm)
                                              .aux_in_branch(spec.aux_in_branch));
  }
  unknown_model(spec.name);
}

std::string bf16_refusal(const ModelSpec& spec) {
  if (spec.name == "densenet-ds") return bf16_refusal(densenet_options(spec));
  if (spec.name == "resnet-ds") return no_bf16_path(spec.name);
  unknown_model(spec.name);
}

}  // namespace liondg
