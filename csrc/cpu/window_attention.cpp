// Swin/SwinIR window attention, forward and backward, one (window, head) tile at a time.
//
// out = softmax(scale·q·kᵀ + bias + mask)·v for each of the B·nW windows and each head, with
// bias[h][n][m] = table[rel(n, m)][h] (Swin's relative position index) and, when shift > 0,
// mask = −100 between tokens of different shifted-window regions of the (H, W) token grid
// (SwinIR). The mask is computed from each window's coordinates. Nothing of size
// (B·nW, heads, N, N) is allocated: the forward keeps each score row's logsumexp and the
// backward recomputes the probabilities from it (flash-attention style), one row at a time.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "elementwise.h"

namespace cdism_fast::cpu {
namespace {

// The fp32 tile loops are also compiled for AVX2+FMA and AVX-512; the loader picks the
// best one for the running CPU (GCC function multiversioning). Everything they call is
// force-inlined so that it is compiled for the same instruction set.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CDISM_ISA_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define CDISM_ISA_CLONES
#endif
#define CDISM_INLINE inline __attribute__((always_inline))

constexpr double kMaskValue = -100.0;  // SwinIR's additive mask between regions

// The tile arithmetic below may assume that floating-point operations do not trap (no
// code here reads the FP exception flags): GCC then turns the selects of exp_softmax and
// the mask into blends and vectorises their loops for AVX2 and SSE, not only with AVX-512
// masking. Results are unchanged: nothing is reassociated and NaN still propagates.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif

// e^x for softmax arguments (x <= 0 in use) that vectorises, unlike std::exp without
// -ffast-math: 2^k·p(r) with k = round(x·log2 e), r = x − k·ln 2 (ln 2 split in two
// constants so that k·ln2_hi is exact) and p Cephes' degree-6 minimax polynomial,
// relative error about 1e-7. Returns 0 below ln(FLT_MIN), inf above 88; NaN stays NaN.
CDISM_INLINE float exp_softmax(float x) {
  constexpr float kLow = -87.33654f, kHigh = 88.0f;
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRoundingShift = 12582912.0f;  // 1.5·2^23: the sum keeps round(t) in its low mantissa bits
  constexpr int32_t kRoundingShiftBits = 0x4B400000;
  float clamped = x < kLow ? kLow : x;  // NaN compares false: kept
  clamped = clamped > kHigh ? kHigh : clamped;
  const float shifted = clamped * kLog2e + kRoundingShift;
  const float k = shifted - kRoundingShift;
  int32_t k_bits;
  std::memcpy(&k_bits, &shifted, sizeof(float));
  const int32_t power_bits = (k_bits - kRoundingShiftBits + 127) << 23;
  float power;
  std::memcpy(&power, &power_bits, sizeof(float));
  float r = clamped - k * kLn2Hi;
  r = r - k * kLn2Lo;
  const float p = (((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
                    1.6666665459e-1f) * r + 5.0000001201e-1f) * (r * r) + r + 1.0f;
  return x < kLow ? 0.0f : (x > kHigh ? std::numeric_limits<float>::infinity() : p * power);
}

CDISM_INLINE double exp_softmax(double x) { return std::exp(x); }

// Tiles are processed in blocks of kLanes consecutive tokens: one AVX-512 register of fp32
// (two of AVX2, four of SSE). Tile buffers are padded to a multiple of kLanes tokens so that
// every inner loop has this constant length: fully vectorised, no remainder loop.
constexpr int64_t kLanes = 16;

inline int64_t padded(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// Sum of the kLanes partial sums, pairwise. (`omp simd reduction` would add the lanes one
// after the other, in order, without -ffast-math: that serial tail dominated the time.)
template <typename T>
CDISM_INLINE T pairwise_sum(T* part) {
  for (int64_t width = kLanes / 2; width > 0; width /= 2)
#pragma omp simd
    for (int64_t l = 0; l < width; ++l) part[l] += part[l + width];
  return part[0];
}

// Σ_m a[m]·b[m] over m < n, n a multiple of kLanes.
template <typename T>
CDISM_INLINE T dot(const T* a, const T* b, int64_t n) {
  T part[kLanes] = {};
  for (int64_t m = 0; m < n; m += kLanes)
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) part[l] += a[m + l] * b[m + l];
  return pairwise_sum(part);
}

// out[l] = Σ_i a[i·a_stride]·rows[i·stride + l] for l < kLanes: a combination of `count`
// rows of kLanes values, the building block of every matrix product here. (The sum is
// local so that the compiler need not assume that out aliases the rows.)
template <typename T>
CDISM_INLINE void lane_combination(const T* a, int64_t a_stride, const T* rows, int64_t stride, int64_t count,
                                   T* out) {
  T acc[kLanes] = {};
  for (int64_t i = 0; i < count; ++i) {
    const T ai = a[i * a_stride];
    const T* row = rows + i * stride;
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += ai * row[l];
  }
#pragma omp simd
  for (int64_t l = 0; l < kLanes; ++l) out[l] = acc[l];
}

// One block of scores, tokens of the other side in the lanes: for l < kLanes,
// out[l] = Σ_c a[c]·cols[c·stride + l] + bias[l] (+ mask where region[l] differs from own).
// The same function (same order of operations) serves the forward, whose lanes are
// queries, and the backward, whose lanes are keys, so both see the same scores.
template <typename T>
CDISM_INLINE void score_block(const T* a, const T* cols, int64_t stride, int64_t D, const T* bias,
                              const int32_t* region, int32_t own, T* out) {
  T acc[kLanes];
  lane_combination(a, 1, cols, stride, D, acc);
  if (region == nullptr) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) out[l] = acc[l] + bias[l];
  } else {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) out[l] = (acc[l] + bias[l]) + (region[l] != own ? T(kMaskValue) : T(0));
  }
}

// Forward tile: queries in the lanes, so that the softmax over keys and the product with v
// are sums across rows of st, never across lanes.
template <typename T>
struct ForwardTile {
  int64_t n, d, np;       // tokens N, head dim D, N padded to kLanes
  const T* qt;            // D×np, q·scale transposed, zero padding
  const T* k;             // N×D
  const T* v;             // N×D
  const T* bias;          // N×np: bias[m][n] of this head for key m and query n
  const int32_t* region;  // np shifted-window region labels, or nullptr when unshifted
};

// out (N×D) and the logsumexp of each query's scores (N). Scratch: st N×np, top, total np, ot D×np.
template <typename T>
CDISM_INLINE void forward_tile(const ForwardTile<T>& t, T* st, T* top, T* total, T* ot, T* out, T* lse) {
  const int64_t N = t.n, D = t.d, np = t.np;
  for (int64_t m = 0; m < N; ++m)
    for (int64_t n0 = 0; n0 < np; n0 += kLanes)
      score_block(t.k + m * D, t.qt + n0, np, D, t.bias + m * np + n0, t.region ? t.region + n0 : nullptr,
                  t.region ? t.region[m] : 0, st + m * np + n0);
  for (int64_t n0 = 0; n0 < np; n0 += kLanes) {
    T best[kLanes], sum[kLanes] = {};
    for (int64_t l = 0; l < kLanes; ++l) best[l] = -std::numeric_limits<T>::infinity();
    for (int64_t m = 0; m < N; ++m) {
      const T* s = st + m * np + n0;
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) best[l] = s[l] > best[l] ? s[l] : best[l];  // NaN propagates via exp
    }
    for (int64_t m = 0; m < N; ++m) {
      T* s = st + m * np + n0;
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) {
        s[l] = exp_softmax(s[l] - best[l]);
        sum[l] += s[l];
      }
    }
    for (int64_t c = 0; c < D; ++c) lane_combination(t.v + c, D, st + n0, np, N, ot + c * np + n0);
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) {
      top[n0 + l] = best[l];
      total[n0 + l] = sum[l];
    }
  }
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < D; ++c) out[n * D + c] = ot[c * np + n] / total[n];
    lse[n] = top[n] + std::log(total[n]);
  }
}

// Backward tile: keys in the lanes, one query row at a time.
template <typename T>
struct BackwardTile {
  int64_t n, d, np;       // tokens N, head dim D, N padded to kLanes
  const T* q;             // N×D, q·scale
  const T* kt;            // D×np, k transposed, zero padding
  const T* vt;            // D×np, v transposed, zero padding
  const T* bias;          // N×np: bias[n][m] of this head, −inf in the padding (probability 0)
  const int32_t* region;  // np shifted-window region labels, or nullptr when unshifted
};

// P = exp(S − lse), dP = dO·vᵀ, dS = P ⊙ (dP − rowsum(P ⊙ dP)). Writes dq (N×D, includes
// scale), accumulates dkt and dvt (D×np, start at zero) and the head's bias gradient
// dbias (N×np). Scratch: p, ds np each.
template <typename T>
CDISM_INLINE void backward_tile(const BackwardTile<T>& t, const T* dout, const T* lse, T scale, T* p, T* ds, T* dq,
                                T* dkt, T* dvt, T* dbias) {
  const int64_t N = t.n, D = t.d, np = t.np;
  for (int64_t row = 0; row < N; ++row) {
    const T* q_row = t.q + row * D;
    const T* dout_row = dout + row * D;
    const T row_lse = lse[row];
    T delta_part[kLanes] = {};
    for (int64_t m0 = 0; m0 < np; m0 += kLanes) {
      score_block(q_row, t.kt + m0, np, D, t.bias + row * np + m0, t.region ? t.region + m0 : nullptr,
                  t.region ? t.region[row] : 0, p + m0);
      T dp[kLanes];
      lane_combination(dout_row, 1, t.vt + m0, np, D, dp);
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) {
        p[m0 + l] = exp_softmax(p[m0 + l] - row_lse);
        ds[m0 + l] = dp[l];
        delta_part[l] += p[m0 + l] * dp[l];
      }
    }
    const T delta = pairwise_sum(delta_part);
    T* dbias_row = dbias + row * np;
#pragma omp simd
    for (int64_t m = 0; m < np; ++m) {
      ds[m] = p[m] * (ds[m] - delta);
      dbias_row[m] += ds[m];
    }
    for (int64_t c = 0; c < D; ++c) {
      dq[row * D + c] = dot(ds, t.kt + c * np, np) * scale;
      const T q_scaled = q_row[c], g = dout_row[c];
      T* dk_col = dkt + c * np;
      T* dv_col = dvt + c * np;
#pragma omp simd
      for (int64_t m = 0; m < np; ++m) {
        dk_col[m] += q_scaled * ds[m];
        dv_col[m] += g * p[m];
      }
    }
  }
}

// fp32 entry points, compiled once per instruction set.
CDISM_ISA_CLONES void forward_tile_fp32(const ForwardTile<float>& t, float* st, float* top, float* total, float* ot,
                                        float* out, float* lse) {
  forward_tile(t, st, top, total, ot, out, lse);
}

CDISM_ISA_CLONES void backward_tile_fp32(const BackwardTile<float>& t, const float* dout, const float* lse,
                                         float scale, float* p, float* ds, float* dq, float* dkt, float* dvt,
                                         float* dbias) {
  backward_tile(t, dout, lse, scale, p, ds, dq, dkt, dvt, dbias);
}

void run_forward_tile(const ForwardTile<float>& t, float* st, float* top, float* total, float* ot, float* out,
                      float* lse) {
  forward_tile_fp32(t, st, top, total, ot, out, lse);
}
void run_forward_tile(const ForwardTile<double>& t, double* st, double* top, double* total, double* ot, double* out,
                      double* lse) {
  forward_tile(t, st, top, total, ot, out, lse);
}

void run_backward_tile(const BackwardTile<float>& t, const float* dout, const float* lse, float scale, float* p,
                       float* ds, float* dq, float* dkt, float* dvt, float* dbias) {
  backward_tile_fp32(t, dout, lse, scale, p, ds, dq, dkt, dvt, dbias);
}
void run_backward_tile(const BackwardTile<double>& t, const double* dout, const double* lse, double scale, double* p,
                       double* ds, double* dq, double* dkt, double* dvt, double* dbias) {
  backward_tile(t, dout, lse, scale, p, ds, dq, dkt, dvt, dbias);
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

// Shape of the problem, shared by forward and backward.
struct Geometry {
  int64_t windows, heads, n, d, window_size, shift, height, width;

  // Tiles per parallel chunk: about 2^18 multiply-adds (tens of microseconds), so that small
  // calls run on the calling thread instead of paying for waking the others.
  int64_t grain() const { return std::max<int64_t>(1, (int64_t{1} << 18) / (n * n * d)); }

  // Region label (row region · 3 + column region) of every token of window `w`, as
  // SwinIR's mask cuts the (H, W) grid at H − ws and H − shift (W likewise).
  void regions(int64_t w, int32_t* out) const {
    const int64_t per_row = width / window_size;
    const int64_t in_image = w % ((height / window_size) * per_row);
    const int64_t top = (in_image / per_row) * window_size, left = (in_image % per_row) * window_size;
    auto region = [&](int64_t coordinate, int64_t extent) {
      return static_cast<int32_t>(coordinate >= extent - window_size) + static_cast<int32_t>(coordinate >= extent - shift);
    };
    for (int64_t i = 0; i < window_size; ++i)
      for (int64_t j = 0; j < window_size; ++j)
        out[i * window_size + j] = region(top + i, height) * 3 + region(left + j, width);
  }
};

// Copies tile (w, h) of a (B·nW, heads, N, D) tensor of any strides into dst, converted to T
// and multiplied by `factor`: N×D, or D×ld (tokens along rows of length ld) when `transpose`.
template <typename T, typename scalar_t>
void gather_tile(const at::Tensor& x, int64_t w, int64_t h, T factor, bool transpose, int64_t ld, T* dst) {
  const scalar_t* base = x.const_data_ptr<scalar_t>() + w * x.stride(0) + h * x.stride(1);
  const int64_t N = x.size(2), D = x.size(3), sn = x.stride(2), sd = x.stride(3);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < D; ++c) dst[transpose ? c * ld + n : n * D + c] = static_cast<T>(base[n * sn + c * sd]) * factor;
}

// Writes an N×D tile (or a D×ld one when `transposed`) into tile (w, h) of a contiguous output.
template <typename T, typename scalar_t>
void scatter_tile(const T* src, bool transposed, int64_t ld, const Geometry& g, int64_t w, int64_t h, scalar_t* out) {
  scalar_t* base = out + (w * g.heads + h) * g.n * g.d;
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t c = 0; c < g.d; ++c) base[n * g.d + c] = static_cast<scalar_t>(src[transposed ? c * ld + n : n * g.d + c]);
}

// Relative position of query n to key m as a row of the ((2·ws − 1)², heads) table.
inline int64_t relative_index(int64_t n, int64_t m, int64_t ws) {
  return (n / ws - m / ws + ws - 1) * (2 * ws - 1) + (n % ws - m % ws + ws - 1);
}

// The bias of every head, gathered once per call and shared by all windows: (heads, N, np),
// keys along the rows and queries in the lanes (`queries_in_lanes`, the forward's layout) or
// the other way round (the backward's); lanes past N hold `padding`.
template <typename T>
std::vector<T> gather_bias(const at::Tensor& table, const Geometry& g, bool queries_in_lanes, T padding) {
  const at::Tensor dense = table.to(c10::CppTypeToScalarType<T>::value).contiguous();
  const T* tp = dense.const_data_ptr<T>();
  const int64_t np = padded(g.n);
  std::vector<T> bias(g.heads * g.n * np, padding);
  for (int64_t h = 0; h < g.heads; ++h)
    for (int64_t row = 0; row < g.n; ++row)
      for (int64_t lane = 0; lane < g.n; ++lane) {
        const int64_t index = queries_in_lanes ? relative_index(lane, row, g.window_size)
                                               : relative_index(row, lane, g.window_size);
        bias[(h * g.n + row) * np + lane] = tp[index * g.heads + h];
      }
  return bias;
}

Geometry check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& table, int64_t window_size, int64_t shift, int64_t height, int64_t width) {
  TORCH_CHECK(q.dim() == 4, op, ": q must be (B·nW, heads, N, D)");
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), op, ": q, k and v differ in shape");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op, ": q, k and v differ in dtype");
  TORCH_CHECK(window_size >= 1 && q.size(2) == window_size * window_size, op, ": N must be window_size²");
  TORCH_CHECK(table.dim() == 2 && table.size(0) == (2 * window_size - 1) * (2 * window_size - 1) &&
                  table.size(1) == q.size(1), op, ": bias_table must be ((2·window_size−1)², heads)");
  TORCH_CHECK(shift >= 0 && shift < window_size, op, ": shift_size must be in [0, window_size)");
  if (shift > 0) {
    TORCH_CHECK(height >= window_size && width >= window_size && height % window_size == 0 && width % window_size == 0,
                op, ": height and width must be multiples of window_size");
    TORCH_CHECK(q.size(0) % ((height / window_size) * (width / window_size)) == 0, op,
                ": B·nW must be a multiple of the number of windows per image");
  }
  return Geometry{q.size(0), q.size(1), q.size(2), q.size(3), window_size, shift, height, width};
}

std::tuple<at::Tensor, at::Tensor> window_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                    const at::Tensor& table, int64_t window_size, int64_t shift,
                                                    int64_t height, int64_t width, double scale) {
  const Geometry g = check_inputs("window_attention", q, k, v, table, window_size, shift, height, width);
  const auto acc_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({g.windows, g.heads, g.n}, q.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "window_attention", [&] {
    using T = acc_t<scalar_t>;
    const int64_t np = padded(g.n);
    const std::vector<T> bias = gather_bias<T>(table, g, /*queries_in_lanes=*/true, T(0));
    scalar_t* out_p = out.mutable_data_ptr<scalar_t>();
    T* lse_p = lse.mutable_data_ptr<T>();
    at::parallel_for(0, g.windows * g.heads, g.grain(), [&](int64_t begin, int64_t end) {
      // Zero-initialised once: the padding lanes of qt and region are never written.
      std::vector<T> qt(g.d * np, T(0)), kr(g.n * g.d), vr(g.n * g.d), st(g.n * np), top(np), total(np), ot(g.d * np),
          o(g.n * g.d);
      std::vector<int32_t> region(np, 0);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t w = task / g.heads, h = task % g.heads;
        if (g.shift > 0 && (task == begin || h == 0)) g.regions(w, region.data());
        gather_tile<T, scalar_t>(q, w, h, static_cast<T>(scale), true, np, qt.data());
        gather_tile<T, scalar_t>(k, w, h, T(1), false, 0, kr.data());
        gather_tile<T, scalar_t>(v, w, h, T(1), false, 0, vr.data());
        const ForwardTile<T> t{g.n, g.d, np, qt.data(), kr.data(), vr.data(), bias.data() + h * g.n * np,
                               g.shift > 0 ? region.data() : nullptr};
        run_forward_tile(t, st.data(), top.data(), total.data(), ot.data(), o.data(), lse_p + task * g.n);
        scatter_tile(o.data(), false, 0, g, w, h, out_p);
      }
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& table,
    const at::Tensor& lse_in, int64_t window_size, int64_t shift, int64_t height, int64_t width, double scale) {
  const Geometry g = check_inputs("window_attention_backward", q, k, v, table, window_size, shift, height, width);
  TORCH_CHECK(grad_out.sizes() == q.sizes(), "window_attention_backward: grad_out must have q's shape");
  const auto acc_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(lse_in.sizes() == at::IntArrayRef({g.windows, g.heads, g.n}) && lse_in.scalar_type() == acc_type,
              "window_attention_backward: logsumexp must be the forward's (B·nW, heads, N) second output");
  const at::Tensor lse = lse_in.contiguous();
  const at::Tensor dout = grad_out.to(q.scalar_type());
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(q.sizes(), q.options());
  at::Tensor dv = at::empty(q.sizes(), q.options());
  at::Tensor dtable;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "window_attention_backward", [&] {
    using T = acc_t<scalar_t>;
    const int64_t np = padded(g.n);
    const std::vector<T> bias = gather_bias<T>(table, g, /*queries_in_lanes=*/false, -std::numeric_limits<T>::infinity());
    const T* lse_p = lse.const_data_ptr<T>();
    scalar_t* dq_p = dq.mutable_data_ptr<scalar_t>();
    scalar_t* dk_p = dk.mutable_data_ptr<scalar_t>();
    scalar_t* dv_p = dv.mutable_data_ptr<scalar_t>();
    // Each chunk of tiles sums its bias gradient privately; the chunks are added in order
    // afterwards, so the result does not depend on thread timing.
    const int64_t tasks = g.windows * g.heads;
    const int64_t chunks = std::min<int64_t>(at::get_num_threads(), (tasks + g.grain() - 1) / g.grain());
    const int64_t bias_size = g.heads * g.n * np;
    std::vector<T> dbias(chunks * bias_size, T(0));
    at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      // Zero-initialised once: the padding lanes of kt, vt and region are never written.
      std::vector<T> qs(g.n * g.d), kt(g.d * np, T(0)), vt(g.d * np, T(0)), go(g.n * g.d), dqs(g.n * g.d),
          dkt(g.d * np), dvt(g.d * np), p(np), ds(np);
      std::vector<int32_t> region(np, 0);
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        const int64_t begin = chunk * tasks / chunks, end = (chunk + 1) * tasks / chunks;
        for (int64_t task = begin; task < end; ++task) {
          const int64_t w = task / g.heads, h = task % g.heads;
          if (g.shift > 0 && (task == begin || h == 0)) g.regions(w, region.data());
          gather_tile<T, scalar_t>(q, w, h, static_cast<T>(scale), false, 0, qs.data());
          gather_tile<T, scalar_t>(k, w, h, T(1), true, np, kt.data());
          gather_tile<T, scalar_t>(v, w, h, T(1), true, np, vt.data());
          gather_tile<T, scalar_t>(dout, w, h, T(1), false, 0, go.data());
          std::fill(dkt.begin(), dkt.end(), T(0));
          std::fill(dvt.begin(), dvt.end(), T(0));
          const BackwardTile<T> t{g.n, g.d, np, qs.data(), kt.data(), vt.data(), bias.data() + h * g.n * np,
                                  g.shift > 0 ? region.data() : nullptr};
          run_backward_tile(t, go.data(), lse_p + task * g.n, static_cast<T>(scale), p.data(), ds.data(), dqs.data(),
                            dkt.data(), dvt.data(), dbias.data() + chunk * bias_size + h * g.n * np);
          scatter_tile(dqs.data(), false, 0, g, w, h, dq_p);
          scatter_tile(dkt.data(), true, np, g, w, h, dk_p);
          scatter_tile(dvt.data(), true, np, g, w, h, dv_p);
        }
      }
    });
    // Bias gradient: sum the chunks, then add each (n, m) into the table row it was gathered
    // from; in double, as up to N entries of every head land on one row.
    at::Tensor dtable_acc = at::zeros(table.sizes(), table.options().dtype(at::kDouble));
    double* dt = dtable_acc.mutable_data_ptr<double>();
    for (int64_t h = 0; h < g.heads; ++h)
      for (int64_t n = 0; n < g.n; ++n)
        for (int64_t m = 0; m < g.n; ++m) {
          double sum = 0;
          for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += dbias[chunk * bias_size + (h * g.n + n) * np + m];
          dt[relative_index(n, m, g.window_size) * g.heads + h] += sum;
        }
    dtable = dtable_acc.to(table.scalar_type());
  });
  return {dq, dk, dv, dtable};
}

}  // namespace

TORCH_LIBRARY_IMPL(cdism_fast, CPU, m) {
  m.impl("window_attention", &window_attention);
  m.impl("window_attention_backward", &window_attention_backward);
}

}  // namespace cdism_fast::cpu
