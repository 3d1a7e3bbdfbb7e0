// Proposition 2 (gradient awakening) and Theorem 1 (architecture dependence), measured.

#include <liondg/data/batcher.h>
#include <liondg/experiment/theory.h>
#include <liondg/init/methods.h>
#include <liondg/init/plan.h>
#include <liondg/models/buffers.h>
#include <liondg/train/trainer.h>
#include <liondg/util/fs.h>

#include <torch/autograd.h>

#include <sstream>

namespace liondg {
namespace {

struct Recorder : RecordSink {
  std::vector<StepRecord> steps;
  void on_step(const StepRecord& r) override { steps.push_back(r); }
};

double norm_of(const std::vector<torch::Tensor>& grads) {
  double sq = 0;
  for (const auto& g : grads) {
    if (g.defined()) sq += g.to(torch::kFloat64).pow(2).sum().item<double>();
  }
  return std::sqrt(sq);
}

std::vector<torch::Tensor> grads_or_zero(const torch::Tensor& loss, const std::vector<torch::Tensor>& params) {
  return torch::autograd::grad({loss}, params, {}, /*retain_graph=*/true, false, /*allow_unused=*/true);
}

std::shared_ptr<DSModelImpl> lion_dg_model(ModelSpec spec, const DataSource& data, uint64_t seed) {
  spec.num_classes = data.num_classes();
  spec.in_channels = data.channels();
  torch::manual_seed(seed);
  auto model = make_model(spec);
  apply_init_plan_(*model, init_plan_from_preset("lion-dg"));
  return model;
}

TrainOptions diagnostic_options(const TheoryConfig& c) {
  return TrainOptions()
      .steps(c.steps)
      .batch_size(c.batch_size)
      .aux_weight(c.aux_weight)
      .grad_every(1)
      .eval_every(0)
      .final_eval(false)
      .seed(c.seed);
}

// The first training batch the trainer will see (same batcher, same seed).
std::pair<torch::Tensor, torch::Tensor> first_batch(const DataSource& data, const TheoryConfig& c) {
  TrainBatcher batcher(data.train, channel_stats(data.train.images), BatcherOptions{c.batch_size, true, c.seed});
  return batcher.next();
}

}  // namespace

LineFit fit_line(const std::vector<double>& x, const std::vector<double>& y) {
  TORCH_CHECK_VALUE(x.size() == y.size() && x.size() >= 2, "fit_line needs >= 2 points of equal length");
  const double n = static_cast<double>(x.size());
  double mx = 0, my = 0;
  for (size_t i = 0; i < x.size(); ++i) mx += x[i] / n, my += y[i] / n;
  double sxx = 0, sxy = 0, syy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sxx += (x[i] - mx) * (x[i] - mx);
    sxy += (x[i] - mx) * (y[i] - my);
    syy += (y[i] - my) * (y[i] - my);
  }
  LineFit f;
  f.slope = sxx > 0 ? sxy / sxx : 0.0;
  f.intercept = my - f.slope * mx;
  // R^2 = 1 - SS_res / SS_tot; a constant y is fitted exactly (R^2 = 1 by convention).
  f.r2 = syy > 0 ? (sxy * sxy) / (sxx * syy) : 1.0;
  return f;
}

std::vector<GrowthSeries> verify_growth(const TheoryConfig& c, const std::string& csv_path) {
  TORCH_CHECK_VALUE(c.steps >= 2 && c.fit_steps >= 2, "growth needs steps >= 2 and fit_steps >= 2");
  DataSource data = load_dataset(c.dataset, c.data_path, c.synthetic);
  std::vector<GrowthSeries> out;
  for (const std::string optimizer : {"sgd", "adamw"}) {
    auto model = lion_dg_model(c.model, data, c.seed);
    GrowthSeries s;
    s.optimizer = optimizer;
    s.lr = optimizer == "sgd" ? c.sgd_lr : c.adamw_lr;
    {
      // Gradient of the training loss w.r.t. each head's logits layer at initialization,
      // on the first training batch (BatchNorm statistics restored afterwards).
      BufferSnapshot buffers(*model);
      auto [x, y] = first_batch(data, c);
      model->train();
      torch::Tensor loss = deep_supervision_loss(model->forward(x), y, c.aux_weight);
      for (int64_t k = 0; k < model->num_aux_heads(); ++k) {
        torch::Tensor w = model->aux_head(k)->last_layer()->weight;
        s.gradient_prediction.push_back(s.lr * norm_of(grads_or_zero(loss, {w})));
        s.sign_prediction.push_back(s.lr * std::sqrt(static_cast<double>(w.numel())));
      }
    }
    Recorder rec;
    TrainOptions o = diagnostic_options(c).optimizer(optimizer).lr(s.lr);
    if (optimizer == "sgd") o.momentum(0.0).weight_decay(0.0);
    train(*model, data, o, {&rec});
    s.head_norms.assign(static_cast<size_t>(model->num_aux_heads()), {});
    for (const auto& r : rec.steps) {
      for (size_t k = 0; k < r.aux_weight_norms.size(); ++k) s.head_norms[k].push_back(r.aux_weight_norms[k]);
      s.grad_ratio.push_back(r.grad_ratio);
    }
    const size_t n = std::min<size_t>(static_cast<size_t>(c.fit_steps) + 1, rec.steps.size());
    std::vector<double> t;
    for (size_t i = 0; i < n; ++i) t.push_back(static_cast<double>(i));  // updates applied so far
    for (const auto& norms : s.head_norms) {
      s.fits.push_back(fit_line(t, std::vector<double>(norms.begin(), norms.begin() + static_cast<long>(n))));
    }
    out.push_back(std::move(s));
  }
  if (!csv_path.empty()) {
    std::ostringstream csv;
    csv.precision(9);
    csv << "step";
    for (const auto& s : out) {
      for (size_t k = 0; k < s.head_norms.size(); ++k) csv << ',' << s.optimizer << "_aux_weight_norm_" << k;
      csv << ',' << s.optimizer << "_grad_ratio";
    }
    csv << '\n';
    for (size_t i = 0; i < out[0].grad_ratio.size(); ++i) {
      csv << i + 1;
      for (const auto& s : out) {
        for (const auto& norms : s.head_norms) csv << ',' << (i < norms.size() ? norms[i] : NAN);
        csv << ',' << (i < s.grad_ratio.size() ? s.grad_ratio[i] : NAN);
      }
      csv << '\n';
    }
    write_file_atomic(csv_path, csv.str());
  }
  return out;
}

std::vector<ArchitectureSide> verify_architecture(const TheoryConfig& c, const std::string& csv_path) {
  TORCH_CHECK_VALUE(c.model.name == "resnet-ds", "verify architecture compares ResNet-DS designs; got model '",
                    c.model.name, "'");
  DataSource data = load_dataset(c.dataset, c.data_path, c.synthetic);
  std::vector<ArchitectureSide> out;
  for (const bool in_branch : {false, true}) {
    ModelSpec spec = c.model;
    spec.aux_in_branch = in_branch;
    auto model = lion_dg_model(spec, data, c.seed);
    ArchitectureSide side;
    side.design = in_branch ? "in-branch" : "side-tap";
    {
      BufferSnapshot buffers(*model);
      auto [x, y] = first_batch(data, c);
      model->train();
      DSOutput o = model->forward(x);
      torch::Tensor main = torch::nn::functional::cross_entropy(o.logits, y);
      torch::Tensor aux = deep_supervision_loss(o, y, c.aux_weight) - main;
      side.main_grad_to_aux_heads_at_init =
          norm_of(grads_or_zero(main, parameters_of_kind(*model, ParamRole::Kind::kAuxHead)));
      side.aux_grad_to_backbone_at_init =
          norm_of(grads_or_zero(aux, parameters_of_kind(*model, ParamRole::Kind::kBackbone)));
    }
    Recorder rec;
    train(*model, data, diagnostic_options(c).lr(c.adamw_lr), {&rec});
    for (const auto& r : rec.steps) {
      side.grad_ratio.push_back(r.grad_ratio);
      side.main_loss.push_back(r.main_loss);
    }
    {
      // How much the auxiliary heads now shape the main output: zero them and compare.
      model->eval();
      torch::NoGradGuard no_grad;
      auto [x, y] = first_batch(data, c);
      torch::Tensor before = model->forward(x).logits;
      for (auto& p : parameters_of_kind(*model, ParamRole::Kind::kAuxHead)) p.zero_();
      torch::Tensor after = model->forward(x).logits;
      side.main_logit_shift_after = ((before - after).norm() / before.norm()).item<double>();
    }
    out.push_back(std::move(side));
  }
  if (!csv_path.empty()) {
    std::ostringstream csv;
    csv.precision(9);
    csv << "step,side_tap_grad_ratio,side_tap_main_loss,in_branch_grad_ratio,in_branch_main_loss\n";
    for (size_t i = 0; i < out[0].grad_ratio.size(); ++i) {
      csv << i + 1 << ',' << out[0].grad_ratio[i] << ',' << out[0].main_loss[i] << ',' << out[1].grad_ratio[i] << ','
          << out[1].main_loss[i] << '\n';
    }
    write_file_atomic(csv_path, csv.str());
  }
  return out;
}

}  // namespace liondg
