// Synchronized BatchNorm: statistics over every rank's batch.

#include <liondg/models/batch_norm.h>

#include <torch/autograd.h>

namespace liondg {
namespace {

thread_local BatchNormSync* tls_sync = nullptr;

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Per-channel sums over (N,H,W) of x: (N,C,H,W) -> (C) in double.
torch::Tensor channel_sums(const torch::Tensor& x) {
  return x.sum(/*dim=*/{0, 2, 3}, /*keepdim=*/false, /*dtype=*/torch::kFloat64);
}

torch::Tensor as_channels(const torch::Tensor& v) { return v.view({1, -1, 1, 1}); }

BatchNormSync* sync_from(AutogradContext* ctx) {
  return reinterpret_cast<BatchNormSync*>(static_cast<intptr_t>(ctx->saved_data["sync"].toInt()));
}

struct SyncBatchNormFunction : torch::autograd::Function<SyncBatchNormFunction> {
  // x: (N,C,H,W), weight/bias: (C) -> (N,C,H,W)
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight,
                               const torch::Tensor& bias, torch::Tensor running_mean, torch::Tensor running_var,
                               double momentum, double eps, int64_t sync_handle) {
    auto* sync = reinterpret_cast<BatchNormSync*>(static_cast<intptr_t>(sync_handle));
    const int64_t channels = x.size(1);
    const double local_count = static_cast<double>(x.numel() / channels);
    // Pass 1: global mean.
    torch::Tensor sums = torch::cat({channel_sums(x), torch::full({1}, local_count, torch::kFloat64)});
    sync->all_reduce_sum_(sums);
    const double count = sums[channels].item<double>();
    torch::Tensor mean = sums.narrow(/*dim=*/0, /*start=*/0, channels) / count;
    // Pass 2: global variance about that mean.
    const torch::Tensor mean_f = as_channels(mean.to(x.scalar_type()));
    torch::Tensor centered = x - mean_f;
    torch::Tensor sq = channel_sums(centered * centered);
    sync->all_reduce_sum_(sq);
    torch::Tensor var = sq / count;
    torch::Tensor invstd = (var + eps).rsqrt();
    {
      torch::NoGradGuard no_grad;
      if (running_mean.defined()) {
        running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.scalar_type()), momentum);
        const double unbias = count > 1 ? count / (count - 1) : 1.0;
        running_var.mul_(1.0 - momentum).add_((var * unbias).to(running_var.scalar_type()), momentum);
      }
    }
    const torch::Tensor invstd_f = as_channels(invstd.to(x.scalar_type()));
    const torch::Tensor scale = weight.defined() ? invstd_f * as_channels(weight) : invstd_f;
    torch::Tensor y = centered.mul_(scale);
    if (bias.defined()) y.add_(as_channels(bias));
    ctx->save_for_backward({x, mean_f, invstd_f, weight});
    ctx->saved_data["sync"] = sync_handle;
    ctx->saved_data["count"] = count;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& x = saved[0];
    const torch::Tensor& mean = saved[1];
    const torch::Tensor& invstd = saved[2];
    const torch::Tensor& weight = saved[3];
    const torch::Tensor dy = grad_outputs[0];
    const double count = ctx->saved_data["count"].toDouble();
    const int64_t channels = x.size(1);
    const torch::Tensor xmu = x - mean;
    const torch::Tensor sum_dy = channel_sums(dy);
    const torch::Tensor sum_dy_xmu = channel_sums(dy * xmu);
    // Per-rank parameter gradients (averaged over ranks with the others).
    torch::Tensor grad_weight, grad_bias;
    if (weight.defined()) grad_weight = (sum_dy_xmu.to(x.scalar_type()) * invstd.view(-1));
    grad_bias = sum_dy.to(x.scalar_type());
    torch::Tensor global = torch::cat({sum_dy, sum_dy_xmu});
    sync_from(ctx)->all_reduce_sum_(global);
    const torch::Tensor mean_dy = as_channels((global.narrow(0, 0, channels) / count).to(x.scalar_type()));
    const torch::Tensor mean_dy_xmu = as_channels((global.narrow(0, channels, channels) / count).to(x.scalar_type()));
    const torch::Tensor scale = weight.defined() ? invstd * as_channels(weight) : invstd;
    torch::Tensor dx = (dy - mean_dy - xmu * (invstd * invstd) * mean_dy_xmu) * scale;
    return {dx, grad_weight, grad_bias, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

SyncBatchNormGuard::SyncBatchNormGuard(BatchNormSync* sync) : previous_(tls_sync) { tls_sync = sync; }
SyncBatchNormGuard::~SyncBatchNormGuard() { tls_sync = previous_; }

BatchNormSync* active_batch_norm_sync() { return tls_sync; }

torch::Tensor batch_norm(torch::nn::BatchNorm2d& bn, const torch::Tensor& x) {
  BatchNormSync* sync = tls_sync;
  if (sync == nullptr || !bn->is_training()) return bn->forward(x);
  TORCH_CHECK_VALUE(x.dim() == 4, "batch_norm expects (N,C,H,W), got ", x.sizes());
  const auto& o = bn->options;
  TORCH_CHECK_VALUE(o.momentum().has_value(), "synchronized BatchNorm needs a momentum (cumulative averaging is not supported)");
  if (o.track_running_stats()) {
    torch::NoGradGuard no_grad;
    bn->num_batches_tracked.add_(1);
  }
  return SyncBatchNormFunction::apply(x, o.affine() ? bn->weight : torch::Tensor(),
                                      o.affine() ? bn->bias : torch::Tensor(),
                                      o.track_running_stats() ? bn->running_mean : torch::Tensor(),
                                      o.track_running_stats() ? bn->running_var : torch::Tensor(), *o.momentum(),
                                      o.eps(), static_cast<int64_t>(reinterpret_cast<intptr_t>(sync)));
}

std::pair<torch::Tensor, torch::Tensor> fold_batch_norm(const torch::Tensor& conv_weight, const torch::Tensor& conv_bias,
                                                        const torch::nn::BatchNorm2d& bn) {
  const auto& o = bn->options;
  TORCH_CHECK_VALUE(o.track_running_stats(), "fold_batch_norm: a BatchNorm without running statistics normalizes ",
                    "with its batch's and cannot be folded");
  TORCH_CHECK_VALUE(conv_weight.dim() == 4 && conv_weight.size(0) == o.num_features(),
                    "fold_batch_norm: a convolution weight (", o.num_features(), ",C,kh,kw) expected, got ",
                    conv_weight.sizes());
  torch::NoGradGuard no_grad;
  torch::Tensor s = (bn->running_var + o.eps()).rsqrt();
  if (o.affine()) s = s * bn->weight;
  torch::Tensor shift = conv_bias.defined() ? conv_bias - bn->running_mean : -bn->running_mean;
  shift = shift * s;
  if (o.affine()) shift = shift + bn->bias;
  return {conv_weight * s.view({-1, 1, 1, 1}), shift};
}

bool batch_norm_foldable(const torch::nn::BatchNorm2d& bn, const torch::Tensor& x) {
  return bn && !bn->is_training() && bn->options.track_running_stats() && !torch::GradMode::is_enabled() &&
         x.device().is_cpu() && x.scalar_type() == torch::kFloat32;
}

}  // namespace liondg
