// OBProx-SG step (Chen et al., ECML-PKDD 2020) over a whole parameter list, in
// place: one read of each parameter and gradient and one write of the parameter.
// The definitions and the NaN rule are in cdism_fast/ops/obproxsg.py.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include "flat_pair.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace cdism_fast::cpu {
namespace {

// Elements per parallel work item: large enough to amortise scheduling, small
// enough that every thread gets an equal share of a model's bytes.
constexpr int64_t kGrain = 1 << 15;
// fp16/bf16 parameters are widened to fp32 through stack buffers of this many elements.
constexpr int64_t kBlock = 1024;

// The update loops are compiled for AVX-512, AVX2 and baseline x86-64, picked
// at load time (GCC function multi-versioning), since the build cannot assume
// the instruction set of the machine that runs it.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CDISM_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CDISM_MULTIVERSION
#endif

template <typename T>
inline __attribute__((always_inline)) void prox_sg_loop(T* __restrict p, const T* __restrict g, int64_t n,
                                                        T lr, T shrink) {
  for (int64_t i = 0; i < n; ++i) {
    const T z = p[i] - lr * g[i];
    const T excess = std::abs(z) - shrink;
    // sign(z) * max(|z| - lr*lam, 0); a NaN excess fails the test and passes through.
    p[i] = std::copysign(excess < T(0) ? T(0) : excess, z);
  }
}

template <typename T>
inline __attribute__((always_inline)) void orthant_loop(T* __restrict p, const T* __restrict g, int64_t n,
                                                        T lr, T lam, T eps) {
  for (int64_t i = 0; i < n; ++i) {
    const T x = p[i];
    const T zeta = static_cast<T>(x > T(0)) - static_cast<T>(x < T(0));
    // g * |zeta| is g off the zeros and 0 on them, but NaN for a NaN/inf gradient.
    const T x_hat = x - lr * (g[i] * std::abs(zeta) + lam * zeta);
    // Keep x_hat where x_hat * zeta > eps; written negated so that NaN is kept too.
    p[i] = !(x_hat * zeta <= eps) ? x_hat : T(0);
  }
}

CDISM_MULTIVERSION void prox_sg_f32(float* p, const float* g, int64_t n, float lr, float shrink) {
  prox_sg_loop(p, g, n, lr, shrink);
}
CDISM_MULTIVERSION void orthant_f32(float* p, const float* g, int64_t n, float lr, float lam, float eps) {
  orthant_loop(p, g, n, lr, lam, eps);
}
void prox_sg_f64(double* p, const double* g, int64_t n, double lr, double shrink) {
  prox_sg_loop(p, g, n, lr, shrink);
}
void orthant_f64(double* p, const double* g, int64_t n, double lr, double lam, double eps) {
  orthant_loop(p, g, n, lr, lam, eps);
}

// fp16/bf16 <-> fp32 through c10's conversions (rounding to nearest even,
// NaN kept), which vectorise once inlined into the multi-versioned loops.
template <typename scalar_t>
inline __attribute__((always_inline)) void widen_loop(const scalar_t* __restrict in, float* __restrict out,
                                                      int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(in[i]);
}
template <typename scalar_t>
inline __attribute__((always_inline)) void narrow_loop(const float* __restrict in, scalar_t* __restrict out,
                                                       int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(in[i]);
}
CDISM_MULTIVERSION void widen(const at::BFloat16* in, float* out, int64_t n) { widen_loop(in, out, n); }
CDISM_MULTIVERSION void widen(const at::Half* in, float* out, int64_t n) { widen_loop(in, out, n); }
CDISM_MULTIVERSION void narrow(const float* in, at::BFloat16* out, int64_t n) { narrow_loop(in, out, n); }
CDISM_MULTIVERSION void narrow(const float* in, at::Half* out, int64_t n) { narrow_loop(in, out, n); }

struct StepArgs {
  double lr, lam, eps;
  bool orthant;
};

void update(float* p, const float* g, int64_t n, const StepArgs& a) {
  const float lr = static_cast<float>(a.lr);
  if (a.orthant) {
    orthant_f32(p, g, n, lr, static_cast<float>(a.lam), static_cast<float>(a.eps));
  } else {
    prox_sg_f32(p, g, n, lr, static_cast<float>(a.lr * a.lam));
  }
}

void update(double* p, const double* g, int64_t n, const StepArgs& a) {
  if (a.orthant) {
    orthant_f64(p, g, n, a.lr, a.lam, a.eps);
  } else {
    prox_sg_f64(p, g, n, a.lr, a.lr * a.lam);
  }
}

// fp16/bf16: widen a block to fp32, update it, round it back once.
template <typename scalar_t>
void update(scalar_t* p, const scalar_t* g, int64_t n, const StepArgs& a) {
  float p_block[kBlock], g_block[kBlock];
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    widen(p + start, p_block, len);
    widen(g + start, g_block, len);
    update(p_block, g_block, len, a);
    narrow(p_block, p + start, len);
  }
}

bool is_supported(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16;
}

void update_range(const FlatPair& pair, int64_t begin, int64_t end, const StepArgs& args) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pair.work.scalar_type(), "obproxsg_step_", [&] {
    scalar_t* p = pair.work.mutable_data_ptr<scalar_t>() + begin;
    const scalar_t* g = pair.grad.const_data_ptr<scalar_t>() + begin;
    update(p, g, end - begin, args);
  });
}

// Bad input raises ValueError (TORCH_CHECK_VALUE) naming the argument: the
// Python layer leaves the per-tensor checks to this loop, which is far cheaper
// than a Python one over a model's hundreds of tensors.
void obproxsg_step_(at::TensorList params, at::TensorList grads, double lr, double lam, bool orthant, double eps) {
  TORCH_CHECK_VALUE(params.size() == grads.size(), "obproxsg_step: params and grads must have the same length, got ",
                    params.size(), " and ", grads.size());
  TORCH_CHECK_VALUE(lr >= 0, "obproxsg_step: lr must be >= 0, got ", lr);
  TORCH_CHECK_VALUE(lam >= 0, "obproxsg_step: lam must be >= 0, got ", lam);
  TORCH_CHECK_VALUE(eps >= 0, "obproxsg_step: eps must be >= 0, got ", eps);
  std::vector<FlatPair> pairs;
  // offsets[i] is where pairs[i] starts in the concatenation of all parameters.
  std::vector<int64_t> offsets{0};
  pairs.reserve(params.size());
  offsets.reserve(params.size() + 1);
  for (const auto i : c10::irange(params.size())) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    TORCH_CHECK_VALUE(p.device().is_cpu() && g.device().is_cpu(), "obproxsg_step: params[", i, "] and grads[", i,
                      "] must be CPU tensors, got ", p.device(), " and ", g.device());
    TORCH_CHECK_VALUE(p.layout() == at::kStrided && g.layout() == at::kStrided, "obproxsg_step: params[", i,
                      "] and grads[", i, "] must be dense (strided) tensors, got layouts ", p.layout(), " and ",
                      g.layout());
    TORCH_CHECK_VALUE(is_supported(p.scalar_type()), "obproxsg_step: params[", i,
                      "] must be a float32, float64, float16 or bfloat16 tensor, got ", p.scalar_type());
    TORCH_CHECK_VALUE(p.scalar_type() == g.scalar_type(), "obproxsg_step: params[", i, "] and grads[", i,
                      "] must have the same dtype, got ", p.scalar_type(), " and ", g.scalar_type());
    TORCH_CHECK_VALUE(p.sizes() == g.sizes(), "obproxsg_step: params[", i, "] and grads[", i,
                      "] must have the same shape, got ", p.sizes(), " and ", g.sizes());
    if (p.numel() == 0) continue;
    pairs.push_back(flatten(p, g));
    offsets.push_back(offsets.back() + p.numel());
  }
  const StepArgs args{lr, lam, eps, orthant};
  // One parallel loop over the concatenated elements: each thread gets an equal
  // share of bytes and walks the (pieces of) parameters inside it, so a model of
  // many small tensors costs one parallel region, not one per tensor.
  at::parallel_for(0, offsets.back(), kGrain, [&](int64_t begin, int64_t end) {
    auto first = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
    for (auto t = static_cast<size_t>(first); t < pairs.size() && offsets[t] < end; ++t) {
      update_range(pairs[t], std::max(begin, offsets[t]) - offsets[t], std::min(end, offsets[t + 1]) - offsets[t],
                   args);
    }
  });
  for (const auto& pair : pairs) {
    if (!pair.work.is_same(pair.param)) pair.param.copy_(pair.work);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(cdism_fast, CPU, m) {
  m.impl("obproxsg_step_", &obproxsg_step_);
}

}  // namespace cdism_fast::cpu
