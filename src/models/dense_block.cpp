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
// Copies are folded into passes that read or write the same data anyway: the block
// input and each conv output are written into F by the pass that computes their
// channel statistics, and the pass that finishes dF[:, C_l - k : C_l) also writes it
// out contiguously as the next (earlier) layer's conv output gradient; layer 0's pass
// writes the block input's gradient straight into its own tensor.
// The optional tail (BlockTail) is one more BatchNorm+ReLU reading all Ct channels,
// followed by average pooling over w x w tiles; it reuses the block's statistics:
//   forward:  T[q, :] = mean over the tile's pixels p of relu(F[p, :] * aT + bT)
//   backward: dZ_p = (F[p] * aT + bT > 0) * dT[q] / w^2, summed and applied as above;
//             its input pass also starts dF (with F's and the pool's own gradients).
// With ConvPrecision::kBFloat16 the convolutions' side of each layer (A_l, the conv
// output, its gradient and dA_l) is bfloat16: the passes that write A_l and the conv
// output gradient round to it, those that read the conv output and dA_l widen from it;
// F, dF and all statistics stay float.
// The same kernels also make ResNet-DS's fused BatchNorm(+residual)+ReLU node
// (batch_norm_relu_fused, declared in batch_norm.h): y = relu(X * a + b + R) on one
// channels-last tensor X (P, C), the statistics pass and one output pass forward, a
// sums pass and one gradient pass (dX and dR) backward.

#include <liondg/models/batch_norm.h>
#include <liondg/models/densenet_ds.h>

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cstring>
#include <string>
#include <type_traits>
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

// The element types of the convolutions' side of a layer: float, or bfloat16 held as
// its raw bits (Bf16), read by widening and written by rounding to nearest even, bit
// for bit as c10::BFloat16's conversion for finite values and infinities (NaN -> the
// quiet NaN 0x7FC0).
using Bf16 = uint16_t;
inline float widen(float v) { return v; }
inline float widen(Bf16 v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}
inline void narrow_to(float& dst, float v) { dst = v; }
inline void narrow_to(Bf16& dst, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  dst = v != v ? Bf16{0x7FC0} : static_cast<Bf16>(rounded);
}
// ReLU and its gradient mask as torch::relu and threshold_backward compute them, NaN
// included: relu(NaN) = NaN and a NaN activation passes its gradient (so a diverged
// value reaches the loss instead of being rectified to 0). `0 > z ? 0 : z` is exactly
// x86's max(0, z) (NaN -> z): one instruction, where `z <= 0 ? 0 : z` needs a compare and
// a blend (it maps -0 to +0).
inline float relu_of(float z) { return 0.0f > z ? 0.0f : z; }
inline float relu_mask(float act, float d) { return act <= 0.0f ? 0.0f : d; }
template <typename T>
T* elements(const torch::Tensor& t);
template <>
float* elements<float>(const torch::Tensor& t) {
  return t.data_ptr<float>();
}
template <>
Bf16* elements<Bf16>(const torch::Tensor& t) {
  static_assert(sizeof(at::BFloat16) == sizeof(Bf16), "bfloat16 is 16 bits");
  return reinterpret_cast<Bf16*>(t.data_ptr<at::BFloat16>());
}
template <typename T>
constexpr torch::ScalarType kScalarType = std::is_same<T, float>::value ? torch::kFloat32 : torch::kBFloat16;

// Over pixels [begin, end): s[j] += sum_p d, q[j] += sum_p d^2 with d = src[p, j] - k[j]
// for the c channels of src (row stride `ss`); if dst is set, also dst[p * ds + j] =
// src[p, j]. The shift k (a value of the channel) keeps the sums of squares from
// cancelling when a channel's mean is large against its spread.
template <typename T>
LIONDG_MULTIVERSION void stats_range(const T* __restrict src, int64_t ss, int64_t begin, int64_t end, int64_t c,
                                     const float* __restrict k, float* __restrict dst, int64_t ds,
                                     double* __restrict s, double* __restrict q) {
  float bs[kMaxFusedChannels], bq[kMaxFusedChannels];
  for (int64_t start = begin; start < end; start += kBlock) {
    const int64_t stop = std::min(end, start + kBlock);
    for (int64_t j = 0; j < c; ++j) bs[j] = bq[j] = 0.0f;
    for (int64_t p = start; p < stop; ++p) {
      const T* __restrict row = src + p * ss;
      for (int64_t j = 0; j < c; ++j) {
        const float v = widen(row[j]) - k[j];
        bs[j] += v;
        bq[j] += v * v;
      }
      if (dst != nullptr) {
        float* __restrict out = dst + p * ds;
        for (int64_t j = 0; j < c; ++j) out[j] = widen(row[j]);
      }
    }
    for (int64_t j = 0; j < c; ++j) {
      s[j] += bs[j];
      q[j] += bq[j];
    }
  }
}

// out[p, :c] = relu(F[p, :c] * a + b).
template <typename T>
LIONDG_MULTIVERSION void bn_relu_forward_range(const float* __restrict f, int64_t begin, int64_t end, int64_t ct,
                                               int64_t c, const float* __restrict a, const float* __restrict b,
                                               T* __restrict out) {
  for (int64_t p = begin; p < end; ++p) {
    const float* __restrict row = f + p * ct;
    T* __restrict o = out + p * c;
    for (int64_t j = 0; j < c; ++j) {
      const float z = row[j] * a[j] + b[j];
      narrow_to(o[j], relu_of(z));
    }
  }
}

// s1[j] += sum dZ, s2[j] += sum dZ * xhat; dZ = act > 0 ? da : 0, xhat = (F - mean) * invstd.
template <typename T>
LIONDG_MULTIVERSION void backward_sums_range(const float* __restrict f, const T* __restrict act,
                                             const T* __restrict da, int64_t begin, int64_t end, int64_t ct,
                                             int64_t c, const float* __restrict mean,
                                             const float* __restrict invstd, double* __restrict s1,
                                             double* __restrict s2) {
  float b1[kMaxFusedChannels], b2[kMaxFusedChannels];
  for (int64_t start = begin; start < end; start += kBlock) {
    const int64_t stop = std::min(end, start + kBlock);
    for (int64_t j = 0; j < c; ++j) b1[j] = b2[j] = 0.0f;
    for (int64_t p = start; p < stop; ++p) {
      const float* __restrict row = f + p * ct;
      const T* __restrict ar = act + p * c;
      const T* __restrict dr = da + p * c;
      for (int64_t j = 0; j < c; ++j) {
        const float av = widen(ar[j]), dv = widen(dr[j]);  // both loaded: no branch, vectorized
        const float dz = relu_mask(av, dv);
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

// Over pixels [begin, end): v = G[p, j] + scale * (dZ - mdz - xhat * mdzx) for j < c,
// stored back into G (row stride ct) or, if out is set, into out (P, c) instead. If
// tail is set, the last k values of each row are also written to tail (P, k).
template <typename T>
LIONDG_MULTIVERSION void backward_input_range(const float* __restrict f, const T* __restrict act,
                                              const T* __restrict da, int64_t begin, int64_t end, int64_t ct,
                                              int64_t c, const float* __restrict mean,
                                              const float* __restrict invstd, const float* __restrict scale,
                                              const float* __restrict mdz, const float* __restrict mdzx, float* g,
                                              float* out, T* __restrict tail, int64_t k) {
  for (int64_t p = begin; p < end; ++p) {
    const float* __restrict row = f + p * ct;
    const T* __restrict ar = act + p * c;
    const T* __restrict dr = da + p * c;
    // gr and dst are the same row when writing back into G: not __restrict.
    const float* gr = g + p * ct;
    float* dst = out != nullptr ? out + p * c : g + p * ct;
    for (int64_t j = 0; j < c; ++j) {
      const float av = widen(ar[j]), dv = widen(dr[j]);
      const float dz = relu_mask(av, dv);
      const float xhat = (row[j] - mean[j]) * invstd[j];
      dst[j] = gr[j] + scale[j] * (dz - mdz[j] - xhat * mdzx[j]);
    }
    if (tail != nullptr) {
      T* __restrict t = tail + p * k;
      for (int64_t j = 0; j < k; ++j) narrow_to(t[j], dst[c - k + j]);
    }
  }
}

// G[p, :ct] = src[p, :ct] (if set) + pool[p / hw, :ct] / hw (if set) over pixels
// [begin, end): the block output's gradient plus that of its global average pool.
LIONDG_MULTIVERSION
void grad_init_range(const float* __restrict src, const float* __restrict pool, int64_t hw, int64_t begin,
                     int64_t end, int64_t ct, float* __restrict g) {
  const float area = static_cast<float>(hw);
  for (int64_t p = begin; p < end; ++p) {
    float* __restrict gr = g + p * ct;
    const float* __restrict sr = src != nullptr ? src + p * ct : nullptr;
    const float* __restrict pr = pool != nullptr ? pool + (p / hw) * ct : nullptr;
    if (sr != nullptr && pr != nullptr) {
      for (int64_t j = 0; j < ct; ++j) gr[j] = sr[j] + pr[j] / area;
    } else if (sr != nullptr) {
      for (int64_t j = 0; j < ct; ++j) gr[j] = sr[j];
    } else if (pr != nullptr) {
      for (int64_t j = 0; j < ct; ++j) gr[j] = pr[j] / area;
    } else {
      for (int64_t j = 0; j < ct; ++j) gr[j] = 0.0f;
    }
  }
}

// The tail's tiles: output pixel q of the (N, H/w, W/w) grid covers the w x w input
// pixels first(q) + dy * W + dx.
struct Tiles {
  int64_t h, w, window;
  int64_t first(int64_t q) const {
    const int64_t ho = h / window, wo = w / window;
    const int64_t n = q / (ho * wo), r = q % (ho * wo);
    return (n * h + (r / wo) * window) * w + (r % wo) * window;
  }
  int64_t outputs(int64_t n) const { return n * (h / window) * (w / window); }
  int64_t area() const { return window * window; }
  // Output pixels per parallel chunk: about kGrain input pixels.
  int64_t grain() const { return std::max<int64_t>(1, kGrain / area()); }
};

// Over output pixels [begin, end): out[q, j] = mean over q's tile of relu(F[p, j] * a[j] + b[j]).
LIONDG_MULTIVERSION
void tail_forward_range(const float* __restrict f, Tiles tiles, int64_t begin, int64_t end, int64_t ct,
                        const float* __restrict a, const float* __restrict b, float* __restrict out) {
  float acc[kMaxFusedChannels];
  const float inv_area = 1.0f / static_cast<float>(tiles.area());
  for (int64_t q = begin; q < end; ++q) {
    for (int64_t j = 0; j < ct; ++j) acc[j] = 0.0f;
    const int64_t p0 = tiles.first(q);
    for (int64_t dy = 0; dy < tiles.window; ++dy) {
      for (int64_t dx = 0; dx < tiles.window; ++dx) {
        const float* __restrict row = f + (p0 + dy * tiles.w + dx) * ct;
        for (int64_t j = 0; j < ct; ++j) {
          const float z = row[j] * a[j] + b[j];
          acc[j] += relu_of(z);
        }
      }
    }
    float* __restrict o = out + q * ct;
    for (int64_t j = 0; j < ct; ++j) o[j] = acc[j] * inv_area;
  }
}

// Over output pixels [begin, end): s1[j] += sum dZ, s2[j] += sum dZ * xhat over each
// tile's pixels, dZ = (F * a + b > 0) * dT[q, j] / w^2, xhat = (F - mean) * invstd.
LIONDG_MULTIVERSION
void tail_sums_range(const float* __restrict f, const float* __restrict dt, Tiles tiles, int64_t begin,
                     int64_t end, int64_t ct, const float* __restrict a, const float* __restrict b,
                     const float* __restrict mean, const float* __restrict invstd, double* __restrict s1,
                     double* __restrict s2) {
  float b1[kMaxFusedChannels], b2[kMaxFusedChannels], d[kMaxFusedChannels];
  const float inv_area = 1.0f / static_cast<float>(tiles.area());
  const int64_t per_block = std::max<int64_t>(1, kBlock / tiles.area());
  for (int64_t start = begin; start < end; start += per_block) {
    const int64_t stop = std::min(end, start + per_block);
    for (int64_t j = 0; j < ct; ++j) b1[j] = b2[j] = 0.0f;
    for (int64_t q = start; q < stop; ++q) {
      for (int64_t j = 0; j < ct; ++j) d[j] = dt[q * ct + j] * inv_area;
      const int64_t p0 = tiles.first(q);
      for (int64_t dy = 0; dy < tiles.window; ++dy) {
        for (int64_t dx = 0; dx < tiles.window; ++dx) {
          const float* __restrict row = f + (p0 + dy * tiles.w + dx) * ct;
          for (int64_t j = 0; j < ct; ++j) {
            const float dz = relu_mask(row[j] * a[j] + b[j], d[j]);
            b1[j] += dz;
            b2[j] += dz * ((row[j] - mean[j]) * invstd[j]);
          }
        }
      }
    }
    for (int64_t j = 0; j < ct; ++j) {
      s1[j] += b1[j];
      s2[j] += b2[j];
    }
  }
}

// Over output pixels [begin, end), for each pixel p of q's tile:
// G[p, j] = src[p, j] (if set) + pool[n, j] / HW (if set) + scale[j] * (dZ - mdz[j] - xhat * mdzx[j]),
// dZ and xhat as in tail_sums_range: the block output's first gradient with the tail's.
LIONDG_MULTIVERSION
void tail_grad_init_range(const float* __restrict src, const float* __restrict pool, const float* __restrict f,
                          const float* __restrict dt, Tiles tiles, int64_t begin, int64_t end, int64_t ct,
                          const float* __restrict a, const float* __restrict b, const float* __restrict mean,
                          const float* __restrict invstd, const float* __restrict scale,
                          const float* __restrict mdz, const float* __restrict mdzx, float* __restrict g) {
  float base[kMaxFusedChannels], d[kMaxFusedChannels];
  const float inv_area = 1.0f / static_cast<float>(tiles.area());
  const int64_t hw = tiles.h * tiles.w;
  for (int64_t q = begin; q < end; ++q) {
    const int64_t p0 = tiles.first(q);
    const float* __restrict pr = pool != nullptr ? pool + (p0 / hw) * ct : nullptr;
    for (int64_t j = 0; j < ct; ++j) {
      d[j] = dt[q * ct + j] * inv_area;
      base[j] = pr != nullptr ? pr[j] / static_cast<float>(hw) : 0.0f;
    }
    for (int64_t dy = 0; dy < tiles.window; ++dy) {
      for (int64_t dx = 0; dx < tiles.window; ++dx) {
        const int64_t p = p0 + dy * tiles.w + dx;
        const float* __restrict row = f + p * ct;
        float* __restrict gr = g + p * ct;
        for (int64_t j = 0; j < ct; ++j) {
          const float dz = relu_mask(row[j] * a[j] + b[j], d[j]);
          const float xhat = (row[j] - mean[j]) * invstd[j];
          gr[j] = base[j] + scale[j] * (dz - mdz[j] - xhat * mdzx[j]);
        }
        if (src != nullptr) {
          const float* __restrict sr = src + p * ct;
          for (int64_t j = 0; j < ct; ++j) gr[j] += sr[j];
        }
      }
    }
  }
}

// dst[p * ds : p * ds + c) = src[p * ss : p * ss + c) over pixels [begin, end).
template <typename T>
LIONDG_MULTIVERSION void copy_rows_range(const float* __restrict src, int64_t ss, int64_t begin, int64_t end,
                                         int64_t c, T* __restrict dst, int64_t ds) {
  for (int64_t p = begin; p < end; ++p) {
    const float* __restrict r = src + p * ss;
    T* __restrict d = dst + p * ds;
    for (int64_t j = 0; j < c; ++j) narrow_to(d[j], r[j]);
  }
}

// Two per-channel sums over [0, range) in parallel: kernel(begin, end, s1, s2) adds its
// range's sums of the c channels into s1[0, c) and s2[0, c), one row per thread; the rows
// are then added up in thread order into out1/out2 (double precision throughout).
template <typename Kernel>
void parallel_channel_sums(int64_t range, int64_t grain, int64_t c, double* out1, double* out2, const Kernel& kernel) {
  const int threads = at::get_num_threads();
  std::vector<double> s1(static_cast<size_t>(threads * c), 0.0), s2(static_cast<size_t>(threads * c), 0.0);
  at::parallel_for(0, range, grain, [&](int64_t begin, int64_t end) {
    const int64_t t = at::get_thread_num();
    kernel(begin, end, s1.data() + t * c, s2.data() + t * c);
  });
  for (int64_t j = 0; j < c; ++j) {
    double a = 0, b = 0;
    for (int t = 0; t < threads; ++t) {
      a += s1[static_cast<size_t>(t * c + j)];
      b += s2[static_cast<size_t>(t * c + j)];
    }
    out1[j] = a;
    out2[j] = b;
  }
}

// Per-channel biased mean, 1/sqrt(var + eps) and unbiased variance of the c channels
// of src (P rows of stride ss), stored at [c0, c0 + c) of mean/invstd/var_unbiased.
// If dst is set, src is also copied into it (row stride ds).
template <typename T>
void channel_stats(const T* src, int64_t ss, int64_t pixels, int64_t c, float* dst, int64_t ds, double eps,
                   int64_t c0, float* mean, float* invstd, float* var_unbiased) {
  std::vector<double> sum(static_cast<size_t>(c)), sq(static_cast<size_t>(c));
  std::vector<float> shift(static_cast<size_t>(c));  // the first pixel's values
  for (int64_t j = 0; pixels > 0 && j < c; ++j) shift[static_cast<size_t>(j)] = widen(src[j]);
  parallel_channel_sums(pixels, kGrain, c, sum.data(), sq.data(),
                        [&](int64_t begin, int64_t end, double* s1, double* s2) {
                          stats_range(src, ss, begin, end, c, shift.data(), dst, ds, s1, s2);
                        });
  for (int64_t j = 0; j < c; ++j) {
    const double d = sum[static_cast<size_t>(j)] / static_cast<double>(pixels);  // mean - shift
    const double raw = sq[static_cast<size_t>(j)] / static_cast<double>(pixels) - d * d;
    const double v = raw < 0.0 ? 0.0 : raw;  // rounding below 0 clamped; NaN kept
    const double m = static_cast<double>(shift[static_cast<size_t>(j)]) + d;
    mean[c0 + j] = static_cast<float>(m);
    invstd[c0 + j] = static_cast<float>(1.0 / std::sqrt(v + eps));
    var_unbiased[c0 + j] = static_cast<float>(pixels > 1 ? v * static_cast<double>(pixels) / (pixels - 1) : v);
  }
}

void grad_init(const float* src, const float* pool, int64_t hw, int64_t pixels, int64_t ct, float* g) {
  at::parallel_for(0, pixels, kGrain, [&](int64_t begin, int64_t end) { grad_init_range(src, pool, hw, begin, end, ct, g); });
}

// The c channels of src (P rows of stride ss) into dst (P rows of stride ds).
template <typename T>
void copy_rows(const float* src, int64_t ss, int64_t pixels, int64_t c, T* dst, int64_t ds) {
  at::parallel_for(0, pixels, kGrain,
                   [&](int64_t begin, int64_t end) { copy_rows_range(src, ss, begin, end, c, dst, ds); });
}

template <typename T>
void bn_relu_forward(const float* f, int64_t pixels, int64_t ct, int64_t c, const float* a, const float* b, T* out) {
  at::parallel_for(0, pixels, kGrain,
                   [&](int64_t begin, int64_t end) { bn_relu_forward_range(f, begin, end, ct, c, a, b, out); });
}

template <typename T>
void bn_relu_backward_sums(const float* f, const T* act, const T* da, int64_t pixels, int64_t ct, int64_t c,
                           const float* mean, const float* invstd, double* sdz, double* sdzx) {
  parallel_channel_sums(pixels, kGrain, c, sdz, sdzx, [&](int64_t begin, int64_t end, double* s1, double* s2) {
    backward_sums_range(f, act, da, begin, end, ct, c, mean, invstd, s1, s2);
  });
}

template <typename T>
void bn_relu_backward_input(const float* f, const T* act, const T* da, int64_t pixels, int64_t ct, int64_t c,
                            const float* mean, const float* invstd, const float* scale, const float* mdz,
                            const float* mdzx, float* g, float* out, T* tail, int64_t k) {
  at::parallel_for(0, pixels, kGrain, [&](int64_t begin, int64_t end) {
    backward_input_range(f, act, da, begin, end, ct, c, mean, invstd, scale, mdz, mdzx, g, out, tail, k);
  });
}

void tail_forward(const float* f, Tiles tiles, int64_t n, int64_t ct, const float* a, const float* b, float* out) {
  at::parallel_for(0, tiles.outputs(n), tiles.grain(),
                   [&](int64_t begin, int64_t end) { tail_forward_range(f, tiles, begin, end, ct, a, b, out); });
}

void tail_sums(const float* f, const float* dt, Tiles tiles, int64_t n, int64_t ct, const float* a, const float* b,
               const float* mean, const float* invstd, double* sdz, double* sdzx) {
  parallel_channel_sums(tiles.outputs(n), tiles.grain(), ct, sdz, sdzx,
                        [&](int64_t begin, int64_t end, double* s1, double* s2) {
                          tail_sums_range(f, dt, tiles, begin, end, ct, a, b, mean, invstd, s1, s2);
                        });
}

void tail_grad_init(const float* src, const float* pool, const float* f, const float* dt, Tiles tiles, int64_t n,
                    int64_t ct, const float* a, const float* b, const float* mean, const float* invstd,
                    const float* scale, const float* mdz, const float* mdzx, float* g) {
  at::parallel_for(0, tiles.outputs(n), tiles.grain(), [&](int64_t begin, int64_t end) {
    tail_grad_init_range(src, pool, f, dt, tiles, begin, end, ct, a, b, mean, invstd, scale, mdz, mdzx, g);
  });
}

// BatchNorm's affine map y = x * a + b for given statistics: a = gamma * invstd,
// b = beta - mean * a. The same expression in a fused block's forward and backward,
// so both see the same ReLU mask.
std::pair<torch::Tensor, torch::Tensor> affine_of(const torch::Tensor& gamma, const torch::Tensor& beta,
                                                  const torch::Tensor& mean, const torch::Tensor& invstd) {
  torch::Tensor a = (gamma * invstd).contiguous();
  torch::Tensor b = (beta - mean * a).contiguous();
  return {a, b};
}

// BatchNorm2d's running-statistics update from one batch: r = (1 - m) r + m s, with the
// unbiased variance. Callers hold no autograd graph (buffers only).
void update_running_stats(torch::Tensor& running_mean, torch::Tensor& running_var, const torch::Tensor& mean,
                          const torch::Tensor& var_unbiased, double momentum) {
  running_mean.mul_(1.0 - momentum).add_(mean, /*alpha=*/momentum);
  running_var.mul_(1.0 - momentum).add_(var_unbiased, /*alpha=*/momentum);
}

// From a BatchNorm's backward sums over P pixels (sdz = sum dZ, sdzx = sum dZ * xhat):
// the input pass's per-channel scalars and the affine parameters' gradients.
void bn_scalars(const std::vector<double>& sdz, const std::vector<double>& sdzx, int64_t pixels, const float* gamma,
                const float* invstd, std::vector<float>& scale, std::vector<float>& mdz, std::vector<float>& mdzx,
                float* dgamma, float* dbeta) {
  const size_t c = sdz.size();
  scale.resize(c);
  mdz.resize(c);
  mdzx.resize(c);
  for (size_t j = 0; j < c; ++j) {
    scale[j] = gamma[j] * invstd[j];
    mdz[j] = static_cast<float>(sdz[j] / static_cast<double>(pixels));
    mdzx[j] = static_cast<float>(sdzx[j] / static_cast<double>(pixels));
    dgamma[j] = static_cast<float>(sdzx[j]);
    dbeta[j] = static_cast<float>(sdz[j]);
  }
}

torch::Tensor channels_last(const torch::Tensor& t) { return t.contiguous(torch::MemoryFormat::ChannelsLast); }

// Large per-step buffers (the feature buffer, its gradient, the BN-ReLU outputs) are
// reused from step to step instead of being allocated anew: a buffer is handed out
// again only when nothing else references its storage any more (the previous step's
// graph is gone). Per thread; at most kPoolSize buffers are kept. The pool keeps the
// storage only: each call returns a new tensor on it, so the autograd history an
// output gets (its grad_fn, and through it the whole forward graph) lives and dies
// with the caller's tensor, also when no backward ever runs.
constexpr size_t kPoolSize = 64;
torch::Tensor pooled_empty_channels_last(int64_t n, int64_t c, int64_t h, int64_t w, const torch::TensorOptions& o) {
  thread_local std::vector<torch::Tensor> pool;
  const auto handle = [](const torch::Tensor& t) {
    return torch::empty({0}, t.options()).set_(t.storage(), t.storage_offset(), t.sizes(), t.strides());
  };
  for (auto& t : pool) {
    if (t.size(0) == n && t.size(1) == c && t.size(2) == h && t.size(3) == w && t.dtype() == o.dtype() &&
        t.storage().use_count() == 1) {
      return handle(t);
    }
  }
  torch::Tensor t = torch::empty({n, c, h, w}, o.memory_format(torch::MemoryFormat::ChannelsLast));
  if (pool.size() < kPoolSize) pool.push_back(t);
  return handle(t);
}

// Layer l's forward in a block of F (P, ct): A = relu(F[:, :c] * a + b), the
// convolution, and its output's statistics pass, which writes it into F[:, c : c + k)
// and the statistics into mean/invstd/var at [c, c + k). T: the convolution's operand
// type. Returns A (N,c,H,W), channels-last, of T, for the backward pass.
template <typename T>
torch::Tensor layer_forward(float* fp, int64_t n, int64_t h, int64_t w, int64_t ct, int64_t c,
                            const std::pair<torch::Tensor, torch::Tensor>& ab, const torch::Tensor& weight,
                            double eps, float* mp, float* ip, float* vp) {
  const int64_t pixels = n * h * w, k = weight.size(0);
  torch::Tensor act =
      pooled_empty_channels_last(n, c, h, w, weight.options().dtype(kScalarType<T>));
  bn_relu_forward(fp, pixels, ct, c, ab.first.data_ptr<float>(), ab.second.data_ptr<float>(), elements<T>(act));
  // out: (P, k) of T
  const torch::Tensor out =
      channels_last(at::convolution(act, weight.to(kScalarType<T>), /*bias=*/{}, /*stride=*/{1, 1},
                                    /*padding=*/{1, 1}, /*dilation=*/{1, 1}, /*transposed=*/false,
                                    /*output_padding=*/{0, 0}, /*groups=*/1));
  channel_stats(elements<T>(out), /*ss=*/k, pixels, /*c=*/k, fp + c, /*ds=*/ct, eps, /*c0=*/c, mp, ip, vp);
  return act;
}

// The layers' backward, last to first, with dF (g) started: each layer's convolution
// backward, its BatchNorm+ReLU backward sums and the pass that adds its input gradient
// into dF[:, :c) (layer 0: into dx instead). T as in layer_forward. Fills param_grads
// (per layer {dgamma, dbeta, dW}, float) and returns dx (N,c0,H,W), channels-last.
template <typename T>
torch::Tensor layers_backward(const variable_list& saved, int64_t layers, int64_t c0, const torch::Tensor& g,
                              variable_list& param_grads) {
  const torch::Tensor& f = saved[0];
  const torch::Tensor& mean = saved[1];
  const torch::Tensor& invstd = saved[2];
  const auto param = [&](int64_t i) -> const torch::Tensor& { return saved[4 + layers + i]; };
  const int64_t n = f.size(0), ct = f.size(1), h = f.size(2), w = f.size(3), pixels = n * h * w;
  const int64_t k = (ct - c0) / std::max<int64_t>(layers, 1);
  const torch::TensorOptions conv_options = f.options().dtype(kScalarType<T>);
  // The last layer's conv output gradient, (P, k): the last k channels of dF.
  torch::Tensor gout = pooled_empty_channels_last(n, k, h, w, conv_options);
  copy_rows(g.data_ptr<float>() + (ct - k), /*ss=*/ct, pixels, k, elements<T>(gout), /*ds=*/k);
  torch::Tensor dx;  // (P, c0): written by layer 0's pass
  const float* mp = mean.data_ptr<float>();
  const float* ip = invstd.data_ptr<float>();
  for (int64_t l = layers - 1; l >= 0; --l) {
    const int64_t c = c0 + l * k;
    const torch::Tensor& act = saved[3 + l];
    const torch::Tensor& weight = param(3 * l + 2);
    auto grads = at::convolution_backward(gout, act, weight.to(kScalarType<T>), /*bias_sizes=*/c10::nullopt,
                                          /*stride=*/{1, 1}, /*padding=*/{1, 1}, /*dilation=*/{1, 1},
                                          /*transposed=*/false, /*output_padding=*/{0, 0}, /*groups=*/1,
                                          /*output_mask=*/{true, true, false});
    const torch::Tensor da = channels_last(std::get<0>(grads));
    std::vector<double> sdz(static_cast<size_t>(c)), sdzx(static_cast<size_t>(c));
    bn_relu_backward_sums(f.data_ptr<float>(), elements<T>(act), elements<T>(da), pixels, ct, c, mp, ip, sdz.data(),
                          sdzx.data());
    torch::Tensor dgamma = torch::empty({c}, f.options()), dbeta = torch::empty({c}, f.options());
    std::vector<float> scale, mdz, mdzx;
    const torch::Tensor gamma = param(3 * l).contiguous();  // a parameter may be a strided view
    bn_scalars(sdz, sdzx, pixels, gamma.data_ptr<float>(), ip, scale, mdz, mdzx, dgamma.data_ptr<float>(),
               dbeta.data_ptr<float>());
    // dF[:, c - k : c) is final after this pass: it is layer l - 1's conv output gradient.
    torch::Tensor next_gout;
    if (l > 0) {
      next_gout = pooled_empty_channels_last(n, k, h, w, conv_options);
    } else {
      dx = torch::empty({n, c0, h, w}, f.options().memory_format(torch::MemoryFormat::ChannelsLast));
    }
    bn_relu_backward_input(f.data_ptr<float>(), elements<T>(act), elements<T>(da), pixels, ct, c, mp, ip,
                           scale.data(), mdz.data(), mdzx.data(), g.data_ptr<float>(),
                           /*out=*/l == 0 ? dx.data_ptr<float>() : nullptr,
                           /*tail=*/l > 0 ? elements<T>(next_gout) : nullptr, k);
    gout = next_gout;
    param_grads[3 * l] = dgamma;
    param_grads[3 * l + 1] = dbeta;
    // The weight's gradient in the weight's type (float), widened from T.
    param_grads[3 * l + 2] = std::get<1>(grads).to(weight.scalar_type());
  }
  return dx;
}

// Autograd runs a backward in grad mode only for create_graph (a gradient that will itself
// be differentiated). The fused nodes' backward passes are hand-written kernels autograd
// cannot see through, so such a gradient would silently lack most of its second-order
// terms: refused instead.
void refuse_graph_building_backward(const char* what) {
  TORCH_CHECK(!torch::GradMode::is_enabled(), what,
              " is first-order only: its backward cannot build a graph (create_graph / double backward); "
              "run the model with set_fused_training(false) for higher-order gradients");
}

// ---- BatchNorm + (residual) + ReLU of one channels-last tensor X (P, C): y = relu(X * a + b + R)

// Over pixels [begin, end): y[p, j] = relu(x[p, j] * a[j] + b[j] + r[p, j]).
LIONDG_MULTIVERSION void bn_add_relu_forward_range(const float* __restrict x, const float* __restrict r, int64_t begin,
                                                   int64_t end, int64_t c, const float* __restrict a,
                                                   const float* __restrict b, float* __restrict y) {
  for (int64_t p = begin * c; p < end * c; p += c) {
    for (int64_t j = 0; j < c; ++j) {
      const float z = x[p + j] * a[j] + b[j] + r[p + j];
      y[p + j] = relu_of(z);
    }
  }
}

// Over pixels [begin, end): dZ = y > 0 ? dy : 0, dx = scale * (dZ - mdz - xhat * mdzx), and
// if dr is set, dr = dZ (the residual's gradient).
LIONDG_MULTIVERSION void bn_relu_input_grad_range(const float* __restrict x, const float* __restrict y,
                                                  const float* __restrict dy, int64_t begin, int64_t end, int64_t c,
                                                  const float* __restrict mean, const float* __restrict invstd,
                                                  const float* __restrict scale, const float* __restrict mdz,
                                                  const float* __restrict mdzx, float* __restrict dx,
                                                  float* __restrict dr) {
  for (int64_t p = begin * c; p < end * c; p += c) {
    for (int64_t j = 0; j < c; ++j) {
      const float dz = relu_mask(y[p + j], dy[p + j]);
      dx[p + j] = scale[j] * (dz - mdz[j] - (x[p + j] - mean[j]) * invstd[j] * mdzx[j]);
    }
    if (dr != nullptr) {
      for (int64_t j = 0; j < c; ++j) dr[p + j] = relu_mask(y[p + j], dy[p + j]);
    }
  }
}

// relu(BatchNorm(x) + residual) in training mode with batch statistics, x (N,C,H,W) on the
// CPU; the residual is optional (an empty tensor). Output and gradients channels-last.
struct BatchNormReLUFunction : public torch::autograd::Function<BatchNormReLUFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& gamma,
                               const torch::Tensor& beta, const torch::Tensor& residual, torch::Tensor running_mean,
                               torch::Tensor running_var, double eps, double momentum) {
    const torch::Tensor xc = channels_last(x);
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), pixels = n * h * w;
    const torch::Tensor mean = torch::empty({c}, x.options()), invstd = torch::empty_like(mean);
    const torch::Tensor var = torch::empty_like(mean);
    const float* xp = xc.data_ptr<float>();
    channel_stats(xp, /*ss=*/c, pixels, c, /*dst=*/nullptr, /*ds=*/0, eps, /*c0=*/0, mean.data_ptr<float>(),
                  invstd.data_ptr<float>(), var.data_ptr<float>());
    {
      torch::NoGradGuard no_grad;
      update_running_stats(running_mean, running_var, mean, var, momentum);
    }
    const auto ab = affine_of(gamma.detach(), beta.detach(), mean, invstd);
    const float* a = ab.first.data_ptr<float>();
    const float* b = ab.second.data_ptr<float>();
    torch::Tensor y = torch::empty({n, c, h, w}, x.options().memory_format(torch::MemoryFormat::ChannelsLast));
    float* yp = y.data_ptr<float>();
    if (residual.numel() > 0) {
      const torch::Tensor rc = channels_last(residual);
      const float* rp = rc.data_ptr<float>();
      at::parallel_for(0, pixels, kGrain,
                       [&](int64_t begin, int64_t end) { bn_add_relu_forward_range(xp, rp, begin, end, c, a, b, yp); });
      ctx->saved_data["residual"] = true;
    } else {
      bn_relu_forward(xp, pixels, /*ct=*/c, c, a, b, yp);
      ctx->saved_data["residual"] = false;
    }
    ctx->save_for_backward({xc, y, mean, invstd, gamma});
    ctx->saved_data["x_channels_last"] = x.is_contiguous(torch::MemoryFormat::ChannelsLast);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    refuse_graph_building_backward("the fused BatchNorm+ReLU");
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& x = saved[0];
    const torch::Tensor& y = saved[1];
    const torch::Tensor& mean = saved[2];
    const torch::Tensor& invstd = saved[3];
    const torch::Tensor gamma = saved[4].contiguous();
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), pixels = n * h * w;
    const torch::Tensor dy = channels_last(grad_outputs[0]);
    const float* xp = x.data_ptr<float>();
    const float* yp = y.data_ptr<float>();
    const float* dyp = dy.data_ptr<float>();
    std::vector<double> sdz(static_cast<size_t>(c)), sdzx(static_cast<size_t>(c));
    bn_relu_backward_sums(xp, yp, dyp, pixels, /*ct=*/c, c, mean.data_ptr<float>(), invstd.data_ptr<float>(),
                          sdz.data(), sdzx.data());
    std::vector<float> scale, mdz, mdzx;
    torch::Tensor dgamma = torch::empty({c}, x.options()), dbeta = torch::empty({c}, x.options());
    bn_scalars(sdz, sdzx, pixels, gamma.data_ptr<float>(), invstd.data_ptr<float>(), scale, mdz, mdzx,
               dgamma.data_ptr<float>(), dbeta.data_ptr<float>());
    const auto format = torch::MemoryFormat::ChannelsLast;
    torch::Tensor dx = torch::empty({n, c, h, w}, x.options().memory_format(format));
    const bool residual = ctx->saved_data["residual"].toBool();
    torch::Tensor dr = residual ? torch::empty({n, c, h, w}, x.options().memory_format(format)) : torch::Tensor();
    float* dxp = dx.data_ptr<float>();
    float* drp = residual ? dr.data_ptr<float>() : nullptr;
    const float* mp = mean.data_ptr<float>();
    const float* ip = invstd.data_ptr<float>();
    at::parallel_for(0, pixels, kGrain, [&](int64_t begin, int64_t end) {
      bn_relu_input_grad_range(xp, yp, dyp, begin, end, c, mp, ip, scale.data(), mdz.data(), mdzx.data(), dxp, drp);
    });
    if (!ctx->saved_data["x_channels_last"].toBool()) dx = dx.contiguous();
    return {dx, dgamma, dbeta, dr, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

struct DenseBlockFunction : public torch::autograd::Function<DenseBlockFunction> {
  // params: per layer {gamma, beta, conv weight}, then the tail's {gamma, beta};
  // buffers: per layer {running_mean, running_var}, then the tail's. tail_window = 0: no tail.
  // bf16: the layers' convolutions on bfloat16 operands (ConvPrecision::kBFloat16).
  // Returns {F, pooled, tail}: pooled = F's mean over (H,W), (N, Ct), if `pool`, else
  // (N, 0); tail = BlockTail's output (N, Ct, H/w, W/w) if tail_window > 0, else (N, 0).
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x, at::TensorList params,
                               std::vector<torch::Tensor> buffers, double eps, double momentum, bool pool,
                               int64_t tail_window, double tail_eps, double tail_momentum, bool bf16) {
    const bool has_tail = tail_window > 0;
    const int64_t layers = (static_cast<int64_t>(params.size()) - (has_tail ? 2 : 0)) / 3;
    const int64_t n = x.size(0), c0 = x.size(1), h = x.size(2), w = x.size(3);
    const int64_t k = params[2].size(0);
    const int64_t ct = c0 + layers * k, pixels = n * h * w;
    torch::Tensor f = pooled_empty_channels_last(n, ct, h, w, x.options());
    // Statistics of every channel of F; the tail's BatchNorm uses those with tail_eps.
    torch::Tensor mean = torch::empty({ct}, x.options()), invstd = torch::empty({ct}, x.options());
    torch::Tensor var = torch::empty({ct}, x.options());
    float* fp = f.data_ptr<float>();
    float* mp = mean.data_ptr<float>();
    float* ip = invstd.data_ptr<float>();
    float* vp = var.data_ptr<float>();
    // The block input, (P, c0), goes into F[:, :c0] in the pass that computes its statistics.
    const torch::Tensor xin = channels_last(x);
    channel_stats(xin.data_ptr<float>(), /*ss=*/c0, pixels, /*c=*/c0, fp, /*ds=*/ct, eps, /*c0=*/0, mp, ip, vp);
    std::vector<torch::Tensor> saved{f, mean, invstd};
    for (int64_t l = 0; l < layers; ++l) {
      const int64_t c = c0 + l * k;
      const torch::Tensor& weight = params[3 * l + 2];
      const auto ab = affine_of(params[3 * l], params[3 * l + 1], mean.narrow(0, 0, c), invstd.narrow(0, 0, c));
      const torch::Tensor act = bf16 ? layer_forward<Bf16>(fp, n, h, w, ct, c, ab, weight, eps, mp, ip, vp)
                                     : layer_forward<float>(fp, n, h, w, ct, c, ab, weight, eps, mp, ip, vp);
      // Running statistics, as BatchNorm2d updates them from its batch.
      update_running_stats(buffers[2 * l], buffers[2 * l + 1], mean.narrow(0, 0, c), var.narrow(0, 0, c), momentum);
      saved.push_back(act);
    }
    torch::Tensor tail = torch::empty({n, 0}, f.options());
    torch::Tensor tail_invstd;
    if (has_tail) {
      // The block's statistics; with a different eps, invstd from the biased variance
      // (the unbiased one times (P - 1) / P).
      if (tail_eps == eps) {
        tail_invstd = invstd;
      } else {
        const torch::Tensor biased = pixels > 1 ? var * (static_cast<double>(pixels - 1) / pixels) : var;
        tail_invstd = (biased + tail_eps).rsqrt();
      }
      const auto ab = affine_of(params[3 * layers], params[3 * layers + 1], mean, tail_invstd);
      const Tiles tiles{h, w, tail_window};
      tail = pooled_empty_channels_last(n, ct, h / tail_window, w / tail_window, f.options());
      tail_forward(fp, tiles, n, ct, ab.first.data_ptr<float>(), ab.second.data_ptr<float>(), tail.data_ptr<float>());
      update_running_stats(buffers[2 * layers], buffers[2 * layers + 1], mean, var, tail_momentum);
    } else {
      tail_invstd = torch::empty({0}, f.options());
    }
    saved.push_back(tail_invstd);
    for (const auto& p : params) saved.push_back(p);
    ctx->save_for_backward(saved);
    ctx->saved_data["layers"] = layers;
    ctx->saved_data["c0"] = c0;
    ctx->saved_data["tail_window"] = tail_window;
    ctx->saved_data["bf16"] = bf16;
    ctx->saved_data["x_channels_last"] = x.is_contiguous(torch::MemoryFormat::ChannelsLast);
    // An output nothing used (F when its head reads the pool and the tail feeds the
    // transition) arrives as an undefined gradient, not as a materialized zero tensor.
    ctx->set_materialize_grads(false);
    torch::Tensor pooled = pool ? f.mean(/*dim=*/{2, 3}) : torch::empty({n, 0}, f.options());
    if (!pool) ctx->mark_non_differentiable({pooled});
    if (!has_tail) ctx->mark_non_differentiable({tail});
    return {f, pooled, tail};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    refuse_graph_building_backward("the fused dense block");
    const variable_list saved = ctx->get_saved_variables();
    const int64_t layers = ctx->saved_data["layers"].toInt();
    const int64_t c0 = ctx->saved_data["c0"].toInt();
    const int64_t tail_window = ctx->saved_data["tail_window"].toInt();
    const torch::Tensor& f = saved[0];
    const torch::Tensor& mean = saved[1];
    const torch::Tensor& tail_invstd = saved[3 + layers];
    const auto param = [&](int64_t i) -> const torch::Tensor& { return saved[4 + layers + i]; };
    const int64_t n = f.size(0), ct = f.size(1), h = f.size(2), w = f.size(3), pixels = n * h * w;
    // The gradient of the whole buffer, accumulated in place layer by layer (backwards).
    // Its initial value: F's gradient plus that of the pooled output, in one pass, and
    // with a tail, plus the tail's BatchNorm+ReLU+pooling backward in the same pass.
    torch::Tensor g = pooled_empty_channels_last(n, ct, h, w, f.options());
    const torch::Tensor gf = grad_outputs[0].defined() ? channels_last(grad_outputs[0]) : torch::Tensor();
    const torch::Tensor gpool =
        grad_outputs[1].defined() && grad_outputs[1].numel() > 0 ? grad_outputs[1].contiguous() : torch::Tensor();
    const float* gfp = gf.defined() ? gf.data_ptr<float>() : nullptr;
    const float* gpp = gpool.defined() ? gpool.data_ptr<float>() : nullptr;
    torch::Tensor tail_dgamma, tail_dbeta;
    if (tail_window > 0 && grad_outputs[2].defined()) {
      const torch::Tensor gt = channels_last(grad_outputs[2]);
      const auto ab = affine_of(param(3 * layers), param(3 * layers + 1), mean, tail_invstd);
      const float* ap = ab.first.data_ptr<float>();
      const float* bp = ab.second.data_ptr<float>();
      const Tiles tiles{h, w, tail_window};
      std::vector<double> sdz(static_cast<size_t>(ct)), sdzx(static_cast<size_t>(ct));
      tail_sums(f.data_ptr<float>(), gt.data_ptr<float>(), tiles, n, ct, ap, bp, mean.data_ptr<float>(),
                tail_invstd.data_ptr<float>(), sdz.data(), sdzx.data());
      std::vector<float> scale, mdz, mdzx;
      tail_dgamma = torch::empty({ct}, f.options());
      tail_dbeta = torch::empty({ct}, f.options());
      const torch::Tensor tail_gamma = param(3 * layers).contiguous();
      bn_scalars(sdz, sdzx, pixels, tail_gamma.data_ptr<float>(), tail_invstd.data_ptr<float>(), scale, mdz, mdzx,
                 tail_dgamma.data_ptr<float>(), tail_dbeta.data_ptr<float>());
      tail_grad_init(gfp, gpp, f.data_ptr<float>(), gt.data_ptr<float>(), tiles, n, ct, ap, bp,
                     mean.data_ptr<float>(), tail_invstd.data_ptr<float>(), scale.data(), mdz.data(), mdzx.data(),
                     g.data_ptr<float>());
    } else {
      grad_init(gfp, gpp, h * w, pixels, ct, g.data_ptr<float>());
    }
    variable_list param_grads(static_cast<size_t>(3 * layers));
    const torch::Tensor dx = ctx->saved_data["bf16"].toBool()
                                 ? layers_backward<Bf16>(saved, layers, c0, g, param_grads)
                                 : layers_backward<float>(saved, layers, c0, g, param_grads);
    variable_list out;
    out.push_back(ctx->saved_data["x_channels_last"].toBool() ? dx : dx.contiguous());
    for (auto& pg : param_grads) out.push_back(pg);
    if (tail_window > 0) {
      out.push_back(tail_dgamma);
      out.push_back(tail_dbeta);
    }
    // The buffers and the non-tensor arguments get no gradient (trailing undefined
    // gradients are dropped by autograd).
    for (int64_t i = 0; i < 2 * layers + 9; ++i) out.emplace_back();
    return out;
  }
};

// Why the fused paths do not implement `norm`, "" when they do: training
// (dense_block_fused) normalizes with batch statistics and updates running statistics
// with a fixed momentum; evaluation (dense_block_inference) normalizes with the running
// statistics. Both apply the affine parameters.
std::string batch_norm_refusal(const torch::nn::BatchNorm2d& norm, bool training) {
  if (!norm) return "no BatchNorm";
  const auto& o = norm->options;
  if (norm->is_training() != training) {
    return std::string("a BatchNorm in ") + (norm->is_training() ? "training" : "eval") + " mode";
  }
  if (!o.affine()) return "a BatchNorm without affine parameters";
  if (!o.track_running_stats()) return "a BatchNorm without running statistics";
  if (training && !o.momentum().has_value()) return "a BatchNorm with momentum None (cumulative average)";
  return "";
}

// Why the fused paths do not implement these layers, "" when they do (see
// dense_block_fusable). Training: one eps and one momentum for every layer (the shared
// per-chunk statistics are normalized and accumulated once).
std::string layers_refusal(const std::vector<DenseLayer>& layers, bool training) {
  if (layers.empty()) return "no layers";
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto& layer = layers[l];
    if (!layer->norm() || layer->kind() != BlockKind::kStandard) return "standard BatchNorm layers only";
    const std::string why = batch_norm_refusal(layer->norm(), training);
    if (!why.empty()) return "layer " + std::to_string(l + 1) + ": " + why;
    // Layer 1 passed the checks above before any later layer reaches this line.
    const auto& o = layer->norm()->options;
    const auto& first = layers.front()->norm()->options;
    if (training && (o.eps() != first.eps() || *o.momentum() != *first.momentum())) {
      return "layer " + std::to_string(l + 1) + ": eps " + std::to_string(o.eps()) + " momentum " +
             std::to_string(*o.momentum()) + " differ from layer 1's eps " + std::to_string(first.eps()) +
             " momentum " + std::to_string(*first.momentum());
    }
  }
  return "";
}

// Batch statistics need more than one value per channel (as BatchNorm2d in training mode).
void check_values_per_channel(const char* what, const torch::Tensor& x) {
  TORCH_CHECK(x.size(0) * x.size(2) * x.size(3) > 1, what,
              ": expected more than 1 value per channel when training, got input size ", x.sizes());
}

// The fused block's preconditions; returns the block's total channels.
int64_t check_fusable(const char* what, const torch::Tensor& x, const std::vector<DenseLayer>& layers,
                      const BlockTail& tail, bool training) {
  const std::string why = layers_refusal(layers, training);
  TORCH_CHECK(why.empty(), what, ": ", why);
  TORCH_CHECK(x.dim() == 4, what, ": (N,C,H,W) input expected, got ", x.sizes());
  const int64_t total = x.size(1) + static_cast<int64_t>(layers.size()) * layers.front()->conv()->weight.size(0);
  TORCH_CHECK(total <= kMaxFusedChannels, what, ": ", total, " channels exceed ", kMaxFusedChannels);
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.device().is_cpu(), what, ": float32 CPU input expected");
  if (training) check_values_per_channel(what, x);
  for (const auto& layer : layers) {
    const auto& weight = layer->conv()->weight;
    TORCH_CHECK(weight.size(2) == 3 && weight.size(3) == 3, what, ": 3x3 convolutions expected");
  }
  if (tail.norm) {
    const std::string tail_why = batch_norm_refusal(tail.norm, training);
    TORCH_CHECK(tail_why.empty(), what, ": the tail: ", tail_why);
    TORCH_CHECK(tail.window > 0 && x.size(2) % tail.window == 0 && x.size(3) % tail.window == 0, what,
                ": the tail's pooling window ", tail.window, " must tile the ", x.size(2), "x", x.size(3), " map");
    TORCH_CHECK(tail.norm->options.num_features() == total, what, ": the tail's BatchNorm has ",
                tail.norm->options.num_features(), " channels, the block outputs ", total);
  }
  return total;
}

}  // namespace

bool dense_block_fusable(const std::vector<DenseLayer>& layers, bool training) {
  return layers_refusal(layers, training).empty();
}

bool block_tail_fusable(const BlockTail& tail, bool training) {
  return tail.norm && batch_norm_refusal(tail.norm, training).empty();
}

bool cpu_has_native_bf16() {
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
  return __builtin_cpu_supports("avx512bf16") != 0;
#else
  return false;
#endif
}

FusedBlockOutput dense_block_fused(const torch::Tensor& x, const std::vector<DenseLayer>& layers, bool pool,
                                   const BlockTail& tail, ConvPrecision precision) {
  check_fusable("dense_block_fused", x, layers, tail, /*training=*/true);
  std::vector<torch::Tensor> params, buffers;
  double eps = 0, momentum = 0;
  for (const auto& layer : layers) {
    auto norm = layer->norm();
    params.push_back(norm->weight);
    params.push_back(norm->bias);
    params.push_back(layer->conv()->weight);
    buffers.push_back(norm->running_mean);
    buffers.push_back(norm->running_var);
    norm->num_batches_tracked.add_(1);
    eps = norm->options.eps();
    momentum = *norm->options.momentum();
  }
  double tail_eps = 0, tail_momentum = 0;
  if (tail.norm) {
    params.push_back(tail.norm->weight);
    params.push_back(tail.norm->bias);
    buffers.push_back(tail.norm->running_mean);
    buffers.push_back(tail.norm->running_var);
    tail.norm->num_batches_tracked.add_(1);
    tail_eps = tail.norm->options.eps();
    tail_momentum = *tail.norm->options.momentum();
  }
  variable_list out = DenseBlockFunction::apply(x, at::TensorList(params), buffers, eps, momentum, pool,
                                                /*tail_window=*/tail.norm ? tail.window : 0, tail_eps, tail_momentum,
                                                /*bf16=*/precision == ConvPrecision::kBFloat16);
  return {out[0], pool ? out[1] : torch::Tensor(), tail.norm ? out[2] : torch::Tensor()};
}

FusedBlockOutput dense_block_inference(const torch::Tensor& x, const std::vector<DenseLayer>& layers,
                                       const BlockTail& tail) {
  const int64_t ct = check_fusable("dense_block_inference", x, layers, tail, /*training=*/false);
  torch::NoGradGuard no_grad;
  const int64_t n = x.size(0), c0 = x.size(1), h = x.size(2), w = x.size(3), pixels = n * h * w;
  torch::Tensor f = torch::empty({n, ct, h, w}, x.options().memory_format(torch::MemoryFormat::ChannelsLast));
  float* fp = f.data_ptr<float>();
  const torch::Tensor xin = channels_last(x);
  copy_rows(xin.data_ptr<float>(), /*ss=*/c0, pixels, c0, fp, /*ds=*/ct);
  // One BatchNorm+ReLU output buffer for every layer, sized for the widest input.
  const int64_t widest = ct - layers.back()->conv()->weight.size(0);
  const torch::Tensor scratch = torch::empty({pixels * widest}, f.options());
  // BatchNorm with running statistics as y = x * a + b.
  const auto running_affine = [](const torch::nn::BatchNorm2d& norm) {
    return affine_of(norm->weight, norm->bias, norm->running_mean,
                     (norm->running_var + norm->options.eps()).rsqrt());
  };
  int64_t c = c0;
  for (const auto& layer : layers) {
    const auto ab = running_affine(layer->norm());
    // act: (N,c,H,W) channels-last view of the buffer's first P * c floats
    const torch::Tensor act = scratch.narrow(/*dim=*/0, /*start=*/0, pixels * c).view({n, h, w, c}).permute({0, 3, 1, 2});
    bn_relu_forward(fp, pixels, ct, c, ab.first.data_ptr<float>(), ab.second.data_ptr<float>(), act.data_ptr<float>());
    // out: (P, k) into F[:, c : c + k)
    const torch::Tensor out = channels_last(at::convolution(act, layer->conv()->weight, /*bias=*/{}, /*stride=*/{1, 1},
                                                            /*padding=*/{1, 1}, /*dilation=*/{1, 1},
                                                            /*transposed=*/false, /*output_padding=*/{0, 0},
                                                            /*groups=*/1));
    const int64_t k = out.size(1);
    copy_rows(out.data_ptr<float>(), /*ss=*/k, pixels, k, fp + c, /*ds=*/ct);
    c += k;
  }
  torch::Tensor tail_out;
  if (tail.norm) {
    const auto ab = running_affine(tail.norm);
    tail_out = torch::empty({n, ct, h / tail.window, w / tail.window},
                            f.options().memory_format(torch::MemoryFormat::ChannelsLast));
    tail_forward(fp, Tiles{h, w, tail.window}, n, ct, ab.first.data_ptr<float>(), ab.second.data_ptr<float>(),
                 tail_out.data_ptr<float>());
  }
  return {f, torch::Tensor(), tail_out};
}

// The fused node implements what the fused dense block does of a BatchNorm in training
// mode (batch_norm_refusal): the one rule for both models.
bool batch_norm_relu_fusable(const torch::nn::BatchNorm2d& norm, const torch::Tensor& x) {
  return batch_norm_refusal(norm, /*training=*/true).empty() && torch::GradMode::is_enabled() &&
         x.dim() == 4 && x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.size(1) <= kMaxFusedChannels &&
         active_batch_norm_sync() == nullptr;
}

torch::Tensor batch_norm_relu_fused(const torch::nn::BatchNorm2d& norm, const torch::Tensor& x,
                                    const torch::Tensor& residual) {
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu() && x.scalar_type() == torch::kFloat32,
              "batch_norm_relu_fused: (N,C,H,W) float32 CPU input expected, got ", x.sizes(), " ", x.scalar_type(),
              " on ", x.device());
  TORCH_CHECK(x.size(1) == norm->options.num_features(), "batch_norm_relu_fused: ", x.size(1),
              " channels for a BatchNorm of ", norm->options.num_features());
  TORCH_CHECK(x.size(1) <= kMaxFusedChannels, "batch_norm_relu_fused: ", x.size(1), " channels exceed ",
              kMaxFusedChannels);
  TORCH_CHECK(!residual.defined() || residual.sizes() == x.sizes(), "batch_norm_relu_fused: residual ",
              residual.sizes(), " does not match the input ", x.sizes());
  check_values_per_channel("batch_norm_relu_fused", x);
  TORCH_CHECK(norm->is_training(), "batch_norm_relu_fused: the BatchNorm is in eval mode; the fused node "
              "normalizes with batch statistics (training mode) only");
  TORCH_CHECK(batch_norm_refusal(norm, /*training=*/true).empty(), "batch_norm_relu_fused: a BatchNorm with "
              "affine parameters, running statistics and a momentum expected, got affine=", norm->options.affine(),
              " track_running_stats=", norm->options.track_running_stats(), " momentum ",
              norm->options.momentum().has_value() ? "set" : "None (cumulative average)");
  norm->num_batches_tracked.add_(1);
  // Function::apply takes defined tensors only: no residual is an empty one.
  return BatchNormReLUFunction::apply(x, norm->weight, norm->bias, residual.defined() ? residual : torch::empty({0}),
                                      norm->running_mean, norm->running_var, norm->options.eps(),
                                      *norm->options.momentum());
}

}  // namespace liondg
