// Proposition 1 (gradient decoupling), measured on a real batch.

#include <liondg/data/batcher.h>
#include <liondg/experiment/decoupling.h>
#include <liondg/init/plan.h>
#include <liondg/train/trainer.h>

namespace liondg {

DecouplingResult verify_decoupling(const DecouplingConfig& c) {
  TORCH_CHECK_VALUE(c.batch_size > 0, "batch size must be > 0, got ", c.batch_size);
  const InitPlan plan = resolve_init_plan(c.init, c.backbone_init, c.aux_init);
  DataSource data = load_dataset(c.dataset, c.data_path, c.synthetic);
  ModelSpec spec = c.model;
  spec.num_classes = data.num_classes();
  spec.in_channels = data.channels();
  spec.block = plan.required_block();
  const ChannelStats stats = channel_stats(data.train.images);
  torch::manual_seed(c.seed);
  std::shared_ptr<DSModelImpl> model = make_model(spec);
  CalibrationSampler calibration(data.train, stats, /*seed=*/c.seed ^ 0x9E3779B97F4A7C15ull);
  apply_init_plan_(*model, plan, [&](int64_t n) { return calibration.next(n); }, c.aux_weight);

  const int64_t n = std::min(c.batch_size, data.train.size());
  torch::Tensor images = normalize(data.train.images.narrow(0, 0, n), stats);
  torch::Tensor labels = data.train.labels.narrow(0, 0, n);
  const GradientProbe p = probe_gradients(*model, images, labels, c.aux_weight);

  DecouplingResult r;
  r.model = spec.name;
  r.init = plan.preset;
  r.aux_policy = plan.aux;
  r.backbone_max_abs_grad = p.backbone_aux_max_abs;
  r.aux_head_max_abs_grad = p.head_aux_max_abs;
  r.backbone_aux_grad_norm = p.aux_norm;
  r.backbone_main_grad_norm = p.main_norm;
  return r;
}

}  // namespace liondg
