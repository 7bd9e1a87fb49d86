// The 5-tap binomial filter b = [1, 4, 6, 4, 1] along one image axis, with
// reflect borders (no edge repeat), in the three forms the Gaussian and
// Laplacian-pyramid kernels need, and the adjoint (transpose) of each:
//   kBlur      n -> n    out[i] = sum_t b[t]/16 in[reflect(i + t - 2)]
//   kBlurPool  n -> n/2  mean of kBlur's outputs 2i and 2i + 1 (n even):
//                        sum_t [1, 5, 10, 10, 5, 1][t]/32 in[reflect(2i + t - 2)]
//   kExpand    n -> 2n   zeros inserted after every sample, then
//                        sum_t b[t]/8 up[reflect(i + t - 2)] over the 2n long signal
// The 2-D operators of the ops are products of one such operator per axis.
//
// An AxisOp holds, for every output index, the operator's matrix row as a
// short (index, weight) list, so that borders and reflections are derived from
// the definitions above in one place (adjoints by transposing these rows).
// Rows (vertical direction) are combined with these lists; within a row
// (horizontal direction) a fixed stencil, a vectorisable loop, serves every
// output whose row it reproduces exactly (checked against the lists when the
// AxisOp is built), and only the few outputs near the ends use the lists.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>

#include "gaussian_filter.h"

// The extension is built for the baseline x86-64 (no -march), so the hot loops
// are also compiled for AVX2 (x86-64-v3) and AVX-512 (x86-64-v4), the best
// version being picked once at load time (GCC function multiversioning).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CDISM_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
// Helpers of those loops are inlined into each version, so they are vectorised for it too.
#define CDISM_INLINE inline __attribute__((always_inline))
#else
#define CDISM_VECTOR_CLONES
#define CDISM_INLINE inline
#endif

namespace cdism_fast::cpu::binomial {

enum class Kind { kBlur, kBlurPool, kExpand };

constexpr int kMaxTaps = 8;

using gaussian::reflect;

inline int64_t forward_out_size(Kind kind, int64_t n) {
  return kind == Kind::kBlur ? n : (kind == Kind::kBlurPool ? n / 2 : 2 * n);
}

// One row of an operator's matrix: out = sum_k weight[k] * in[index[k]].
template <typename T>
struct Taps {
  int count = 0;
  int64_t index[kMaxTaps];
  T weight[kMaxTaps];

  void add(int64_t i, T w) {
    for (int k = 0; k < count; ++k) {
      if (index[k] == i) {
        weight[k] += w;
        return;
      }
    }
    TORCH_INTERNAL_ASSERT(count < kMaxTaps, "binomial: too many taps");
    index[count] = i;
    weight[count++] = w;
  }
};

// Row i of the forward operator of `kind` on an input of length n.
template <typename T>
Taps<T> forward_taps(Kind kind, int64_t i, int64_t n) {
  static constexpr double kPooled[6] = {1, 5, 10, 10, 5, 1};
  Taps<T> taps;
  switch (kind) {
    case Kind::kBlur:
      for (int t = 0; t < 5; ++t) taps.add(reflect(i + t - 2, n), gaussian::binomial<T>(t) / T(16));
      break;
    case Kind::kBlurPool:
      for (int t = 0; t < 6; ++t) taps.add(reflect(2 * i + t - 2, n), static_cast<T>(kPooled[t] / 32));
      break;
    case Kind::kExpand:
      for (int t = 0; t < 5; ++t) {
        const int64_t p = reflect(i + t - 2, 2 * n);
        if (p % 2 == 0) taps.add(p / 2, gaussian::binomial<T>(t) / T(8));
      }
      break;
  }
  return taps;
}

// out[x] = sum_k w[k] * rows[k][x] over a row of `width`, for a fixed tap count.
template <typename T, int K>
CDISM_INLINE void combine_fixed(const Taps<T>& taps, const T* base, int64_t first, int64_t row_stride, T* out,
                          int64_t width) {
  const T* rows[K];
  T w[K];
  for (int k = 0; k < K; ++k) {
    rows[k] = base + (taps.index[k] - first) * row_stride;
    w[k] = taps.weight[k];
  }
#pragma omp simd
  for (int64_t x = 0; x < width; ++x) {
    T acc = w[0] * rows[0][x];
    for (int k = 1; k < K; ++k) acc += w[k] * rows[k][x];
    out[x] = acc;
  }
}

// out = sum_k taps.weight[k] * (row taps.index[k]); `base` holds rows first, first + 1, ...
// row_stride apart.
template <typename T>
CDISM_VECTOR_CLONES void combine_rows(const Taps<T>& taps, const T* base, int64_t first, int64_t row_stride, T* out,
                         int64_t width) {
  switch (taps.count) {
    case 1: return combine_fixed<T, 1>(taps, base, first, row_stride, out, width);
    case 2: return combine_fixed<T, 2>(taps, base, first, row_stride, out, width);
    case 3: return combine_fixed<T, 3>(taps, base, first, row_stride, out, width);
    case 4: return combine_fixed<T, 4>(taps, base, first, row_stride, out, width);
    case 5: return combine_fixed<T, 5>(taps, base, first, row_stride, out, width);
    case 6: return combine_fixed<T, 6>(taps, base, first, row_stride, out, width);
    case 7: return combine_fixed<T, 7>(taps, base, first, row_stride, out, width);
    case 8: return combine_fixed<T, 8>(taps, base, first, row_stride, out, width);
    default: TORCH_INTERNAL_ASSERT(false, "binomial: tap count out of range");
  }
}

// Element-wise row steps around the filters, compiled like them (out may alias an input).
template <typename T>
CDISM_VECTOR_CLONES void difference(const T* a, const T* b, T* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] - b[i];
}

template <typename T>
CDISM_VECTOR_CLONES void sum(const T* a, const T* b, T* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

// acc += a - b.
template <typename T>
CDISM_VECTOR_CLONES void add_difference(T* acc, const T* a, const T* b, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) acc[i] += a[i] - b[i];
}

// Mirrors torch.sign: 0 for 0 and for NaN.
template <typename T>
CDISM_INLINE T sign(T v) {
  return static_cast<T>((v > 0) - (v < 0));
}

// sum |a - b| (b may be null: sum |a|); with sign_out, also sign_out = weight * sign(a - b).
template <typename T>
CDISM_VECTOR_CLONES T abs_sum(const T* a, const T* b, T* sign_out, T weight, int64_t n) {
  T acc = 0;
  if (b == nullptr) {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += std::abs(a[i]);
  } else if (sign_out == nullptr) {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += std::abs(a[i] - b[i]);
  } else {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) {
      const T d = a[i] - b[i];
      acc += std::abs(d);
      sign_out[i] = weight * sign(d);
    }
  }
  return acc;
}

// One of the operators (or its adjoint) along an axis whose forward input has
// length n; `taps[o]` is the matrix row of output o.
template <typename T>
struct AxisOp {
  Kind kind;
  bool adjoint;
  int64_t n_in, n_out;
  std::vector<Taps<T>> taps;

  AxisOp(Kind kind_, bool adjoint_, int64_t n) : kind(kind_), adjoint(adjoint_) {
    const int64_t forward_out = forward_out_size(kind, n);
    n_in = adjoint ? forward_out : n;
    n_out = adjoint ? n : forward_out;
    if (!adjoint) {
      taps.reserve(n_out);
      for (int64_t o = 0; o < n_out; ++o) taps.push_back(forward_taps<T>(kind, o, n));
    } else {
      // The transpose: forward row i reading input j with weight w is row j reading i.
      taps.resize(n_out);
      for (int64_t i = 0; i < forward_out; ++i) {
        const Taps<T> row = forward_taps<T>(kind, i, n);
        for (int k = 0; k < row.count; ++k) taps[row.index[k]].add(i, row.weight[k]);
      }
    }
    // The stencil serves [stencil_lo, stencil_hi): the widest run of outputs whose
    // rows it reproduces (trimmed to even ends where its loop writes output pairs).
    int64_t lo = 0, hi = n_out;
    while (lo < hi && !stencil_matches(lo)) ++lo;
    while (hi > lo && !stencil_matches(hi - 1)) --hi;
    if ((kind == Kind::kBlurPool && adjoint) || (kind == Kind::kExpand && !adjoint)) {  // loops writing pairs
      lo += lo % 2;
      hi -= hi % 2;
    }
    for (int64_t o = lo; o < hi; ++o) {
      if (!stencil_matches(o)) lo = hi;  // never expected: then every output uses its list
    }
    stencil_lo = std::min(lo, hi);
    stencil_hi = hi;
  }

  // Horizontal use: out[0:n_out] from in[0:n_in], both unit stride.
  CDISM_VECTOR_CLONES void apply(const T* __restrict__ in, T* __restrict__ out) const {
    for (int64_t o = 0; o < stencil_lo; ++o) out[o] = gather(o, in);
    for (int64_t o = stencil_hi; o < n_out; ++o) out[o] = gather(o, in);
    if (stencil_lo < stencil_hi) interior(in, out, stencil_lo, stencil_hi);
  }

 private:
  CDISM_INLINE T gather(int64_t o, const T* in) const {
    const Taps<T>& t = taps[o];
    T acc = 0;
    for (int k = 0; k < t.count; ++k) acc += t.weight[k] * in[t.index[k]];
    return acc;
  }

  int64_t stencil_lo = 0, stencil_hi = 0;

  // The row of output o under the stencil of interior(), as (index, weight) pairs.
  Taps<T> stencil_taps(int64_t o) const {
    static constexpr double kPooled[6] = {1, 5, 10, 10, 5, 1};
    Taps<T> t;
    if (kind == Kind::kBlur) {
      for (int k = 0; k < 5; ++k) t.add(o + k - 2, gaussian::binomial<T>(k) / T(16));
    } else if (kind == Kind::kBlurPool && !adjoint) {
      for (int k = 0; k < 6; ++k) t.add(2 * o + k - 2, static_cast<T>(kPooled[k] / 32));
    } else if (kind == Kind::kBlurPool) {
      const int64_t q = o / 2;
      const double first = o % 2 ? 1 : 5, last = o % 2 ? 5 : 1;
      t.add(q - 1, static_cast<T>(first / 32));
      t.add(q, static_cast<T>(10.0 / 32));
      t.add(q + 1, static_cast<T>(last / 32));
    } else if (!adjoint) {
      const int64_t m = o / 2;
      if (o % 2 == 0) {
        t.add(m - 1, static_cast<T>(1.0 / 8));
        t.add(m, static_cast<T>(6.0 / 8));
        t.add(m + 1, static_cast<T>(1.0 / 8));
      } else {
        t.add(m, static_cast<T>(4.0 / 8));
        t.add(m + 1, static_cast<T>(4.0 / 8));
      }
    } else {
      for (int k = 0; k < 5; ++k) t.add(2 * o + k - 2, gaussian::binomial<T>(k) / T(8));
    }
    return t;
  }

  bool stencil_matches(int64_t o) const {
    const Taps<T> want = stencil_taps(o);
    const Taps<T>& have = taps[o];
    if (want.count != have.count) return false;
    for (int k = 0; k < want.count; ++k) {
      bool found = false;
      for (int j = 0; j < have.count; ++j) found |= have.index[j] == want.index[k] && have.weight[j] == want.weight[k];
      if (!found) return false;
    }
    return true;
  }

  // The stencils (outputs lo..hi-1); stencil_taps() spells out each.
  CDISM_INLINE void interior(const T* __restrict__ in, T* __restrict__ out, int64_t lo, int64_t hi) const {
    constexpr T b0 = T(1) / 16, b1 = T(4) / 16, b2 = T(6) / 16;  // kBlur, symmetric: its own adjoint
    constexpr T p0 = T(1) / 32, p1 = T(5) / 32, p2 = T(10) / 32;  // kBlurPool
    constexpr T e0 = T(1) / 8, e1 = T(4) / 8, e2 = T(6) / 8;      // kExpand
    if (kind == Kind::kBlur) {
      // b0 and b1 are powers of two, so scaling each input first rounds exactly as scaling their sum,
      // and two inputs near the largest float do not overflow to inf (the reference stays finite).
#pragma omp simd
      for (int64_t i = lo; i < hi; ++i)
        out[i] = (b0 * in[i - 2] + b0 * in[i + 2]) + (b1 * in[i - 1] + b1 * in[i + 1]) + b2 * in[i];
    } else if (kind == Kind::kBlurPool && !adjoint) {
#pragma omp simd
      for (int64_t i = lo; i < hi; ++i)
        out[i] = p0 * (in[2 * i - 2] + in[2 * i + 3]) + p1 * (in[2 * i - 1] + in[2 * i + 2]) +
                 p2 * (in[2 * i] + in[2 * i + 1]);
    } else if (kind == Kind::kBlurPool) {
      // Output 2q reads pooled q-1, q, q+1 with weights 5, 10, 1; output 2q+1 with 1, 10, 5 (/32).
#pragma omp simd
      for (int64_t q = lo / 2; q < hi / 2; ++q) {
        out[2 * q] = p1 * in[q - 1] + p2 * in[q] + p0 * in[q + 1];
        out[2 * q + 1] = p0 * in[q - 1] + p2 * in[q] + p1 * in[q + 1];
      }
    } else if (!adjoint) {
      // Even outputs 2m read m-1, m, m+1 (1, 6, 1)/8; odd outputs 2m+1 read m, m+1 (4, 4)/8.
#pragma omp simd
      for (int64_t m = lo / 2; m < hi / 2; ++m) {
        out[2 * m] = e0 * (in[m - 1] + in[m + 1]) + e2 * in[m];
        out[2 * m + 1] = e1 * (in[m] + in[m + 1]);
      }
    } else {
#pragma omp simd
      for (int64_t m = lo; m < hi; ++m)
        out[m] = e0 * (in[2 * m - 2] + in[2 * m + 2]) + e1 * (in[2 * m - 1] + in[2 * m + 1]) + e2 * in[2 * m];
    }
  }
};

// The AxisOp of (kind, adjoint, n), built once and shared: training calls the
// ops with a handful of shapes, and building the lists costs as much as
// filtering a small image. The cache is emptied when it reaches kAxisOpCacheSize.
constexpr size_t kAxisOpCacheSize = 256;

template <typename T>
std::shared_ptr<const AxisOp<T>> axis_op(Kind kind, bool adjoint, int64_t n) {
  static std::mutex mutex;
  static std::map<std::tuple<Kind, bool, int64_t>, std::shared_ptr<const AxisOp<T>>> cache;
  const auto key = std::make_tuple(kind, adjoint, n);
  std::lock_guard<std::mutex> lock(mutex);
  const auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  if (cache.size() >= kAxisOpCacheSize) cache.clear();
  return cache[key] = std::make_shared<const AxisOp<T>>(kind, adjoint, n);
}

// Rows of one image plane (n, c) of an NCHW tensor of any strides, read and
// written in the accumulation type T.
template <typename scalar_t>
struct PlaneRows {
  scalar_t* data;
  int64_t stride_h, stride_w, width;

  // Inputs are read through const_data_ptr (never materialising a lazy copy);
  // outputs are written through mutable_data_ptr.
  static PlaneRows reader(const at::Tensor& t, int64_t plane) {
    return make(const_cast<scalar_t*>(t.const_data_ptr<scalar_t>()), t, plane);
  }
  static PlaneRows writer(at::Tensor& t, int64_t plane) { return make(t.mutable_data_ptr<scalar_t>(), t, plane); }

  // Row r in T: the row itself when it already is a unit-stride T row, else
  // converted into `buffer` (width values).
  template <typename T>
  const T* load(int64_t r, T* buffer) const {
    const scalar_t* src = data + r * stride_h;
    if constexpr (std::is_same_v<scalar_t, T>) {
      if (stride_w == 1) return src;
    }
    if (stride_w == 1) {
#pragma omp simd
      for (int64_t x = 0; x < width; ++x) buffer[x] = static_cast<T>(src[x]);
    } else {
      for (int64_t x = 0; x < width; ++x) buffer[x] = static_cast<T>(src[x * stride_w]);
    }
    return buffer;
  }

  // Where to write row r in T: the row itself when it is a unit-stride T row,
  // else `buffer`, to be passed to store() afterwards.
  template <typename T>
  T* destination(int64_t r, T* buffer) const {
    if constexpr (std::is_same_v<scalar_t, T>) {
      if (stride_w == 1) return data + r * stride_h;
    }
    return buffer;
  }

  // Writes row r from `src` (a no-op when src is the row itself).
  template <typename T>
  void store(int64_t r, const T* src) const {
    scalar_t* dst = data + r * stride_h;
    if (static_cast<const void*>(src) == static_cast<const void*>(dst)) return;
    if (stride_w == 1) {
#pragma omp simd
      for (int64_t x = 0; x < width; ++x) dst[x] = static_cast<scalar_t>(src[x]);
    } else {
      for (int64_t x = 0; x < width; ++x) dst[x * stride_w] = static_cast<scalar_t>(src[x]);
    }
  }

 private:
  static PlaneRows make(scalar_t* base, const at::Tensor& t, int64_t plane) {
    const int64_t channels = t.size(1);
    return {base + (plane / channels) * t.stride(0) + (plane % channels) * t.stride(1), t.stride(2), t.stride(3),
            t.size(3)};
  }
};

// Output rows [r0, r1) of the 2-D operator v_op (across rows) x h_op (within
// rows): the input rows they need are read once with load(s, buffer), which
// returns input row s (h_op.n_in wide, either in `buffer` or where it lies),
// filtered within the row, kept in `scratch`, and combined across rows;
// store(r, row) receives each output row (h_op.n_out wide).
template <typename T, typename Load, typename Store>
void separable_rows(const AxisOp<T>& h_op, const AxisOp<T>& v_op, int64_t r0, int64_t r1, Load&& load,
                    Store&& store, std::vector<T>& scratch) {
  int64_t lo = v_op.n_in, hi = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const Taps<T>& t = v_op.taps[r];
    for (int k = 0; k < t.count; ++k) {
      lo = std::min(lo, t.index[k]);
      hi = std::max(hi, t.index[k] + 1);
    }
  }
  const int64_t width = h_op.n_out;
  scratch.resize((hi - lo) * width + h_op.n_in + width);
  T* filtered = scratch.data();
  T* in_row = filtered + (hi - lo) * width;
  T* out_row = in_row + h_op.n_in;
  for (int64_t s = lo; s < hi; ++s) {
    h_op.apply(load(s, in_row), filtered + (s - lo) * width);
  }
  for (int64_t r = r0; r < r1; ++r) {
    combine_rows(v_op.taps[r], filtered, lo, width, out_row, width);
    store(r, static_cast<const T*>(out_row));
  }
}

}  // namespace cdism_fast::cpu::binomial
