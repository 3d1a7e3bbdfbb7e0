// AdamW / SGD on one flat parameter buffer (see include/liondg/train/flat_optimizer.h).

#include <liondg/train/flat_optimizer.h>

#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <iterator>

namespace liondg {

FlatOptimizer::FlatOptimizer(torch::optim::Optimizer& optimizer) {
  torch::NoGradGuard no_grad;
  std::vector<double> lr, keep, decay;
  std::vector<torch::Tensor> flat_params, flat_grads;
  bool first = true;
  for (auto& group : optimizer.param_groups()) {
    double group_lr = 0, wd = 0;
    if (auto* a = dynamic_cast<torch::optim::AdamWOptions*>(&group.options())) {
      TORCH_CHECK_VALUE(!a->amsgrad(), "FlatOptimizer: amsgrad is not supported");
      const double b1 = std::get<0>(a->betas()), b2 = std::get<1>(a->betas());
      TORCH_CHECK_VALUE(first || (adamw_ && b1 == beta1_ && b2 == beta2_ && a->eps() == eps_),
                        "FlatOptimizer: every group needs the same betas and eps");
      adamw_ = true;
      beta1_ = b1;
      beta2_ = b2;
      eps_ = a->eps();
      group_lr = a->lr();
      wd = a->weight_decay();
    } else if (auto* s = dynamic_cast<torch::optim::SGDOptions*>(&group.options())) {
      TORCH_CHECK_VALUE(s->dampening() == 0 && !s->nesterov(), "FlatOptimizer: SGD dampening / Nesterov unsupported");
      TORCH_CHECK_VALUE(first || (!adamw_ && s->momentum() == momentum_),
                        "FlatOptimizer: every group needs the same momentum");
      adamw_ = false;
      momentum_ = s->momentum();
      group_lr = s->lr();
      wd = s->weight_decay();
    } else {
      TORCH_CHECK_VALUE(false, "FlatOptimizer: only AdamW and SGD are supported");
    }
    first = false;
    for (auto& p : group.params()) {
      TORCH_CHECK_VALUE(tensors_.empty() || (p.dtype() == tensors_.front().dtype() &&
                                             p.device() == tensors_.front().device()),
                        "FlatOptimizer: parameters must share one dtype and device");
      tensors_.push_back(p);
      lr.insert(lr.end(), static_cast<size_t>(p.numel()), group_lr);
      keep.insert(keep.end(), static_cast<size_t>(p.numel()), 1.0 - group_lr * wd);
      decay.insert(decay.end(), static_cast<size_t>(p.numel()), wd);
    }
  }
  TORCH_CHECK_VALUE(!tensors_.empty(), "FlatOptimizer: no parameters");
  const auto options = tensors_.front().options();
  // Per-element constants rounded once, as the scalar arguments of torch's optimizers are.
  lr64_ = torch::tensor(lr, torch::kFloat64).to(options.device());
  lr_ = lr64_.to(options.dtype());
  keep_ = torch::tensor(keep, torch::kFloat64).to(options);
  decay_ = torch::tensor(decay, torch::kFloat64).to(options);
  int64_t total = 0;
  for (const auto& p : tensors_) total += p.numel();
  params_ = torch::empty({total}, options);
  grads_ = torch::zeros({total}, options);
  int64_t offset = 0;
  for (auto& p : tensors_) {
    const int64_t n = p.numel();
    // Views with the parameter's own strides (contiguous or channels-last).
    TORCH_CHECK_VALUE(p.is_non_overlapping_and_dense(), "FlatOptimizer: parameter of shape ", p.sizes(),
                      " is not dense");
    torch::Tensor pv = params_.narrow(0, offset, n).as_strided(p.sizes(), p.strides());
    torch::Tensor gv = grads_.narrow(0, offset, n).as_strided(p.sizes(), p.strides());
    pv.copy_(p);
    if (p.grad().defined()) gv.copy_(p.grad());
    p.set_data(pv);
    p.mutable_grad() = gv;
    offsets_.push_back(offset);
    offset += n;
  }
  if (adamw_) {
    exp_avg_ = torch::zeros_like(params_);
    exp_avg_sq_ = torch::zeros_like(params_);
  } else {
    momentum_buffer_ = torch::zeros_like(params_);
  }
  step_ = torch::zeros({}, options.dtype(torch::kFloat64));
}

FlatOptimizer::~FlatOptimizer() {
  torch::NoGradGuard no_grad;
  for (auto& p : tensors_) {
    p.set_data(p.detach().clone(torch::MemoryFormat::Preserve));
    if (p.grad().defined()) p.mutable_grad() = p.grad().clone(torch::MemoryFormat::Preserve);
  }
}

void FlatOptimizer::zero_grad() { grads_.zero_(); }

torch::Tensor FlatOptimizer::grads_finite() const { return torch::isfinite(grads_).all(); }

torch::Tensor FlatOptimizer::first_non_finite_grad() const {
  // argmax returns the first maximal element: the first 1 of the mask, or 0 when none is.
  const torch::Tensor bad = torch::isfinite(grads_).logical_not_();
  const torch::Tensor first = bad.to(torch::kUInt8).argmax();
  return torch::where(bad.any(), first, torch::full({}, -1, first.options()));
}

const torch::Tensor& FlatOptimizer::parameter_at(int64_t index) const {
  TORCH_CHECK_INDEX(index >= 0 && index < params_.numel(), "FlatOptimizer: element ", index,
                    " is outside the packed parameters (", params_.numel(), " elements)");
  // The last parameter starting at or before `index`.
  const auto it = std::upper_bound(offsets_.begin(), offsets_.end(), index);
  return tensors_[static_cast<size_t>(std::distance(offsets_.begin(), it) - 1)];
}

void FlatOptimizer::step(const torch::Tensor& apply) {
  torch::NoGradGuard no_grad;
  step_.add_(apply.to(torch::kFloat64));
  const torch::Tensor& g = grads_;
  torch::Tensor p_new;
  if (adamw_) {
    // torch::optim::AdamW: p *= 1 - lr wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    // p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    const torch::Tensor bc1 = 1.0 - torch::pow(beta1_, step_);
    const torch::Tensor bc2 = 1.0 - torch::pow(beta2_, step_);
    torch::Tensor m = exp_avg_.mul(beta1_).add_(g, 1.0 - beta1_);
    torch::Tensor v = exp_avg_sq_.mul(beta2_).addcmul_(g, g, 1.0 - beta2_);
    torch::Tensor denom = (v.sqrt() / bc2.sqrt()).add_(eps_);
    torch::Tensor step_size = (lr64_ / bc1).to(params_.scalar_type());
    p_new = params_.mul(keep_).sub_(step_size.mul_(m).div_(denom));
    exp_avg_.copy_(torch::where(apply, m, exp_avg_));
    exp_avg_sq_.copy_(torch::where(apply, v, exp_avg_sq_));
  } else {
    // torch::optim::SGD: d = g + wd p; buf = momentum buf + d (buf = d at first); p -= lr d'.
    torch::Tensor d = g.add(decay_ * params_);
    if (momentum_ != 0) {
      torch::Tensor buf = momentum_buffer_.mul(momentum_).add_(d);
      momentum_buffer_.copy_(torch::where(apply, buf, momentum_buffer_));
      d = buf;
    }
    p_new = params_.sub(lr_ * d);
  }
  params_.copy_(torch::where(apply, p_new, params_));
}

int64_t FlatOptimizer::steps() const { return static_cast<int64_t>(step_.item<double>()); }

void FlatOptimizer::save(torch::serialize::OutputArchive& archive) const {
  archive.write("kind", c10::IValue(std::string(adamw_ ? "adamw" : "sgd")));
  archive.write("step", step_.cpu());
  if (adamw_) {
    archive.write("exp_avg", exp_avg_.cpu());
    archive.write("exp_avg_sq", exp_avg_sq_.cpu());
  } else {
    archive.write("momentum_buffer", momentum_buffer_.cpu());
  }
}

void FlatOptimizer::load(torch::serialize::InputArchive& archive) {
  torch::NoGradGuard no_grad;
  c10::IValue kind;
  TORCH_CHECK(archive.try_read("kind", kind) && kind.isString() &&
                  kind.toStringRef() == std::string(adamw_ ? "adamw" : "sgd"),
              "optimizer state of another kind (expected ", adamw_ ? "adamw" : "sgd", ")");
  auto read = [&](const char* key, torch::Tensor& into) {
    torch::Tensor t;
    archive.read(key, t);
    TORCH_CHECK(t.sizes() == into.sizes(), "optimizer state '", key, "' has shape ", t.sizes(), ", expected ",
                into.sizes());
    into.copy_(t);
  };
  read("step", step_);
  if (adamw_) {
    read("exp_avg", exp_avg_);
    read("exp_avg_sq", exp_avg_sq_);
  } else {
    read("momentum_buffer", momentum_buffer_);
  }
}

}  // namespace liondg
