// A dense block in training mode on one channels-last feature buffer, with a
// hand-written backward: no re-concatenation, per-chunk BatchNorm statistics
// computed once, gradients accumulated in place.
//
// Notation: P = N*H*W pixels; the buffer F is (P, Ct) row-major (channels-last),
// Ct = C0 + L*k. Layer l reads channels [0, C_l), C_l = C0 + l*k, and writes its
// k new channels at [C_l, C_l + k).
//   forward:  z = F[:, :C] * a + b, a = gamma * invstd, b = beta - mean * a;
//             A_l = relu(z); out = conv3x3(A_l, W_l); F[:, C:C+k] = out
//   backward: dA_l, dW_l = conv backward; dZ = dA_l * (A_l > 0);
//             dgamma = sum_p dZ * xhat, dbeta = sum_p dZ;
//             dF[:, :C] += gamma * invstd * (dZ - dbeta / P - xhat * dgamma / P)

#include <liondg/models/densenet_ds.h>

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <vector>

namespace liondg {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kGrain = 256;  // pixels per parallel chunk
constexpr int64_t kBlock = 64;   // pixels summed in float before adding to double

// The hot loops are compiled for AVX-512, AVX2 and baseline x86-64 and picked at
// run time (GCC function multi-versioning); each handles a range of pixels.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define LIONDG_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LIONDG_MULTIVERSION
#endif

// s[j] += sum_p F[p, c0 + j], q[j] += sum_p F[p, c0 + j]^2 over pixels [begin, end).
LIONDG_MULTIVERSION
void stats_range(const float* __restrict f, int64_t begin, int64_t end, int64_t ct, int64_t c0, int64_t c,
                 double* __restrict s, double* __restrict q) {
  float bs[kMaxFusedChannels], bq[kMaxFusedChannels];
  for (int64_t start = begin; start < end; start += kBlock) {
    const int64_t stop = std::min(end, start + kBlock);
    for (int64_t j = 0; j < c; ++j) bs[j] = bq[j] = 0.0f;
    for (int64_t p = start; p < stop; ++p) {
      const float* __restrict row = f + p * ct + c0;
      for (int64_t j = 0; j < c; ++j) {
        bs[j] += row[j];
        bq[j] += row[j] * row[j];
      }
    }
    for (int64_t j = 0; j < c; ++j) {
      s[j] += bs[j];
      q[j] += bq[j];
    }
  }
}

// out[p, :c] = relu(F[p, :c] * a + b).
LIONDG_MULTIVERSION
void bn_relu_forward_range(const float* __restrict f, int64_t begin, int64_t end, int64_t ct, int64_t c,
                           const float* __restrict a, const float* __restrict b, float* __restrict out) {
  for (int64_t p = begin; p < end; ++p) {
    const float* __restrict row = f + p * ct;
    float* __restrict o = out + p * c;
    for (int64_t j = 0; j < c; ++j) {
      const float z = row[j] * a[j] + b[j];
      o[j] = z > 0.0f ? z : 0.0f;
    }
  }
}

// s1[j] += sum dZ, s2[j] += sum dZ * xhat; dZ = act > 0 ? da : 0, xhat = (F - mean) * invstd.
LIONDG_MULTIVERSION
void backward_sums_range(const float* __restrict f, const float* __restrict act, const float* __restrict da,
                         int64_t begin, int64_t end, int64_t ct, int64_t c, const float* __restrict mean,
                         const float* __restrict invstd, double* __restrict s1, double* __restrict s2) {
  float b1[kMaxFusedChannels], b2[kMaxFusedChannels];
  for (int64_t start = begin; start < end; start += kBlock) {
    const int64_t stop = std::min(end, start + kBlock);
    for (int64_t j = 0; j < c; ++j) b1[j] = b2[j] = 0.0f;
    for (int64_t p = start; p < stop; ++p) {
      const float* __restrict row = f + p * ct;
      const float* __restrict ar = act + p * c;
      const float* __restrict dr = da + p * c;
      for (int64_t j = 0; j < c; ++j) {
        const float dz = ar[j] > 0.0f ? dr[j] : 0.0f;
        b1[j] += dz;
        b2[j] += dz * ((row[j] - mean[j]) * invstd[j]);
      }
    }
    for (int64_t j = 0; j < c; ++j) {
      s1[j] += b1[j];
      s2[j] += b2[j];
    }
  }
}

// G[p, :c] += scale * (dZ - mdz - xhat * mdzx).
LIONDG_MULTIVERSION
void backward_input_range(const float* __restrict f, const float* __restrict act, const float* __restrict da,
                          int64_t begin, int64_t end, int64_t ct, int64_t c, const float* __restrict mean,
                          const float* __restrict invstd, const float* __restrict scale,
                          const float* __restrict mdz, const float* __restrict mdzx, float* __restrict g) {
  for (int64_t p = begin; p < end; ++p) {
    const float* __restrict row = f + p * ct;
    const float* __restrict ar = act + p * c;
    const float* __restrict dr = da + p * c;
    float* __restrict gr = g + p * ct;
    for (int64_t j = 0; j < c; ++j) {
      const float dz = ar[j] > 0.0f ? dr[j] : 0.0f;
      const float xhat = (row[j] - mean[j]) * invstd[j];
      gr[j] += scale[j] * (dz - mdz[j] - xhat * mdzx[j]);
    }
  }
}

// Per-channel biased mean and 1/sqrt(var + eps) of channels [c0, c1) of F (P, Ct).
void channel_stats(const float* f, int64_t pixels, int64_t ct, int64_t c0, int64_t c1, double eps, float* mean,
                   float* invstd, float* var_unbiased) {
  const int64_t c = c1 - c0;
  const int threads = at::get_num_threads();
  std::vector<double> sum(static_cast<size_t>(threads * c), 0.0), sq(static_cast<size_t>(threads * c), 0.0);
  at::parallel_for(0, pixels, kGrain, [&](int64_t begin, int64_t end) {
    const int64_t t = at::get_thread_num();
    stats_range(f, begin, end, ct, c0, c, sum.data() + t * c, sq.data() + t * c);
  });
  for (int64_t j = 0; j < c; ++j) {
    double s = 0, q = 0;
    for (int t = 0; t < threads; ++t) {
      s += sum[static_cast<size_t>(t * c + j)];
      q += sq[static_cast<size_t>(t * c + j)];
    }
    const double m = s / static_cast<double>(pixels);
    const double v = std::max(0.0, q / static_cast<double>(pixels) - m * m);
    mean[c0 + j] = static_cast<float>(m);
    invstd[c0 + j] = static_cast<float>(1.0 / std::sqrt(v + eps));
    var_unbiased[c0 + j] = static_cast<float>(pixels > 1 ? v * static_cast<double>(pixels) / (pixels - 1) : v);
  }
}

void bn_relu_forward(const float* f, int64_t pixels, int64_t ct, int64_t c, const float* a, const float* b, float* out) {
  at::parallel_for(0, pixels, kGrain,
                   [&](int64_t begin, int64_t end) { bn_relu_forward_range(f, begin, end, ct, c, a, b, out); });
}

void bn_relu_backward_sums(const float* f, const float* act, const float* da, int64_t pixels, int64_t ct, int64_t c,
                           const float* mean, const float* invstd, double* sdz, double* sdzx) {
  const int threads = at::get_num_threads();
  std::vector<double> s1(static_cast<size_t>(threads * c), 0.0), s2(static_cast<size_t>(threads * c), 0.0);
  at::parallel_for(0, pixels, kGrain, [&](int64_t begin, int64_t end) {
    const int64_t t = at::get_thread_num();
    backward_sums_range(f, act, da, begin, end, ct, c, mean, invstd, s1.data() + t * c, s2.data() + t * c);
  });
  for (int64_t j = 0; j < c; ++j) {
    sdz[j] = 0;
    sdzx[j] = 0;
    for (int t = 0; t < threads; ++t) {
      sdz[j] += s1[static_cast<size_t>(t * c + j)];
      sdzx[j] += s2[static_cast<size_t>(t * c + j)];
    }
  }
}

void bn_relu_backward_input(const float* f, const float* act, const float* da, int64_t pixels, int64_t ct, int64_t c,
                            const float* mean, const float* invstd, const float* scale, const float* mdz,
                            const float* mdzx, float* g) {
  at::parallel_for(0, pixels, kGrain, [&](int64_t begin, int64_t end) {
    backward_input_range(f, act, da, begin, end, ct, c, mean, invstd, scale, mdz, mdzx, g);
  });
}

torch::Tensor channels_last(const torch::Tensor& t) { return t.contiguous(torch::MemoryFormat::ChannelsLast); }

// Large per-step buffers (the feature buffer, its gradient, the BN-ReLU outputs) are
// reused from step to step instead of being allocated anew: a buffer is handed out
// again only when nothing else references its storage any more (the previous step's
// graph is gone). Per thread; at most kPoolSize buffers are kept.
constexpr size_t kPoolSize = 64;
torch::Tensor pooled_empty_channels_last(int64_t n, int64_t c, int64_t h, int64_t w, const torch::TensorOptions& o) {
  thread_local std::vector<torch::Tensor> pool;
  for (auto& t : pool) {
    if (t.size(0) == n && t.size(1) == c && t.size(2) == h && t.size(3) == w && t.dtype() == o.dtype() &&
        t.use_count() == 1 && t.storage().use_count() == 1) {
      return t;
    }
  }
  torch::Tensor t = torch::empty({n, c, h, w}, o.memory_format(torch::MemoryFormat::ChannelsLast));
  if (pool.size() < kPoolSize) pool.push_back(t);
  return t;
}

struct DenseBlockFunction : public torch::autograd::Function<DenseBlockFunction> {
  // params: per layer {gamma, beta, conv weight}; buffers: per layer {running_mean, running_var}.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, at::TensorList params,
                               std::vector<torch::Tensor> buffers, double eps, double momentum) {
    const int64_t layers = static_cast<int64_t>(params.size()) / 3;
    const int64_t n = x.size(0), c0 = x.size(1), h = x.size(2), w = x.size(3);
    const int64_t k = params[2].size(0);
    const int64_t ct = c0 + layers * k, pixels = n * h * w;
    torch::Tensor f = pooled_empty_channels_last(n, ct, h, w, x.options());
    f.narrow(1, 0, c0).copy_(x);
    torch::Tensor mean = torch::empty({ct}, x.options()), invstd = torch::empty({ct}, x.options());
    torch::Tensor var = torch::empty({ct}, x.options());
    float* fp = f.data_ptr<float>();
    channel_stats(fp, pixels, ct, 0, c0, eps, mean.data_ptr<float>(), invstd.data_ptr<float>(), var.data_ptr<float>());
    std::vector<torch::Tensor> saved{f, mean, invstd};
    for (int64_t l = 0; l < layers; ++l) {
      const int64_t c = c0 + l * k;
      const torch::Tensor& gamma = params[3 * l];
      const torch::Tensor& beta = params[3 * l + 1];
      const torch::Tensor& weight = params[3 * l + 2];
      const torch::Tensor a = (gamma * invstd.narrow(0, 0, c)).contiguous();
      const torch::Tensor b = (beta - mean.narrow(0, 0, c) * a).contiguous();
      torch::Tensor act = pooled_empty_channels_last(n, c, h, w, f.options());
      bn_relu_forward(fp, pixels, ct, c, a.data_ptr<float>(), b.data_ptr<float>(), act.data_ptr<float>());
      const torch::Tensor out = at::convolution(act, weight, /*bias=*/{}, /*stride=*/{1, 1}, /*padding=*/{1, 1},
                                                /*dilation=*/{1, 1}, /*transposed=*/false,
                                                /*output_padding=*/{0, 0}, /*groups=*/1);
      f.narrow(1, c, k).copy_(out);
      channel_stats(fp, pixels, ct, c, c + k, eps, mean.data_ptr<float>(), invstd.data_ptr<float>(),
                    var.data_ptr<float>());
      // Running statistics, as BatchNorm2d updates them from its batch.
      buffers[2 * l].mul_(1.0 - momentum).add_(mean.narrow(0, 0, c), /*alpha=*/momentum);
      buffers[2 * l + 1].mul_(1.0 - momentum).add_(var.narrow(0, 0, c), /*alpha=*/momentum);
      saved.push_back(act);
    }
    for (const auto& p : params) saved.push_back(p);
    ctx->save_for_backward(saved);
    ctx->saved_data["layers"] = layers;
    ctx->saved_data["c0"] = c0;
    ctx->saved_data["x_channels_last"] = x.is_contiguous(torch::MemoryFormat::ChannelsLast);
    return f;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const int64_t layers = ctx->saved_data["layers"].toInt();
    const int64_t c0 = ctx->saved_data["c0"].toInt();
    const torch::Tensor& f = saved[0];
    const torch::Tensor& mean = saved[1];
    const torch::Tensor& invstd = saved[2];
    const int64_t n = f.size(0), ct = f.size(1), h = f.size(2), w = f.size(3), pixels = n * h * w;
    const int64_t k = (ct - c0) / std::max<int64_t>(layers, 1);
    // The gradient of the whole buffer, accumulated in place layer by layer (backwards).
    torch::Tensor g = pooled_empty_channels_last(n, ct, h, w, f.options());
    if (grad_outputs[0].defined()) {
      g.copy_(grad_outputs[0]);
    } else {
      g.zero_();
    }
    variable_list param_grads(static_cast<size_t>(3 * layers));
    for (int64_t l = layers - 1; l >= 0; --l) {
      const int64_t c = c0 + l * k;
      const torch::Tensor& act = saved[3 + l];
      const torch::Tensor& gamma = saved[3 + layers + 3 * l];
      const torch::Tensor& weight = saved[3 + layers + 3 * l + 2];
      const torch::Tensor gout = channels_last(g.narrow(1, c, k));
      auto grads = at::convolution_backward(gout, act, weight, /*bias_sizes=*/c10::nullopt, /*stride=*/{1, 1},
                                            /*padding=*/{1, 1}, /*dilation=*/{1, 1}, /*transposed=*/false,
                                            /*output_padding=*/{0, 0}, /*groups=*/1, /*output_mask=*/{true, true, false});
      const torch::Tensor da = channels_last(std::get<0>(grads));
      std::vector<double> sdz(static_cast<size_t>(c)), sdzx(static_cast<size_t>(c));
      const float* mp = mean.data_ptr<float>();
      const float* ip = invstd.data_ptr<float>();
      bn_relu_backward_sums(f.data_ptr<float>(), act.data_ptr<float>(), da.data_ptr<float>(), pixels, ct, c, mp, ip,
                            sdz.data(), sdzx.data());
      torch::Tensor dgamma = torch::empty({c}, f.options()), dbeta = torch::empty({c}, f.options());
      std::vector<float> scale(static_cast<size_t>(c)), mdz(static_cast<size_t>(c)), mdzx(static_cast<size_t>(c));
      const float* gp = gamma.data_ptr<float>();
      float* dgp = dgamma.data_ptr<float>();
      float* dbp = dbeta.data_ptr<float>();
      for (int64_t j = 0; j < c; ++j) {
        scale[j] = gp[j] * ip[j];
        mdz[j] = static_cast<float>(sdz[j] / static_cast<double>(pixels));
        mdzx[j] = static_cast<float>(sdzx[j] / static_cast<double>(pixels));
        dgp[j] = static_cast<float>(sdzx[j]);
        dbp[j] = static_cast<float>(sdz[j]);
      }
      bn_relu_backward_input(f.data_ptr<float>(), act.data_ptr<float>(), da.data_ptr<float>(), pixels, ct, c, mp, ip,
                             scale.data(), mdz.data(), mdzx.data(), g.data_ptr<float>());
      param_grads[3 * l] = dgamma;
      param_grads[3 * l + 1] = dbeta;
      param_grads[3 * l + 2] = std::get<1>(grads);
    }
    variable_list out;
    torch::Tensor dx = g.narrow(1, 0, c0);
    out.push_back(ctx->saved_data["x_channels_last"].toBool() ? channels_last(dx) : dx.contiguous());
    for (auto& pg : param_grads) out.push_back(pg);
    // Running-statistics buffers (two per layer), eps and momentum get no gradient.
    for (int64_t i = 0; i < 2 * layers + 2; ++i) out.emplace_back();
    return out;
  }
};

}  // namespace

torch::Tensor dense_block_fused(const torch::Tensor& x, const std::vector<DenseLayer>& layers) {
  TORCH_CHECK(!layers.empty(), "dense_block_fused: no layers");
  const int64_t total = x.size(1) + static_cast<int64_t>(layers.size()) * layers.front()->conv()->weight.size(0);
  TORCH_CHECK(total <= kMaxFusedChannels, "dense_block_fused: ", total, " channels exceed ", kMaxFusedChannels);
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.device().is_cpu(), "dense_block_fused: float32 CPU input expected");
  std::vector<torch::Tensor> params, buffers;
  double eps = 0, momentum = 0;
  for (const auto& layer : layers) {
    auto norm = layer->norm();
    TORCH_CHECK(norm && layer->kind() == BlockKind::kStandard, "dense_block_fused: standard BatchNorm layers only");
    const auto conv = layer->conv();
    TORCH_CHECK(conv->weight.size(2) == 3 && conv->weight.size(3) == 3, "dense_block_fused: 3x3 convolutions expected");
    params.push_back(norm->weight);
    params.push_back(norm->bias);
    params.push_back(conv->weight);
    buffers.push_back(norm->running_mean);
    buffers.push_back(norm->running_var);
    norm->num_batches_tracked.add_(1);
    eps = norm->options.eps();
    momentum = norm->options.momentum().value_or(0.1);
  }
  return DenseBlockFunction::apply(x, at::TensorList(params), buffers, eps, momentum);
}

}  // namespace liondg
