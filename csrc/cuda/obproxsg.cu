// OBProx-SG step (Chen et al., ECML-PKDD 2020) over a whole parameter list on
// CUDA, in place: one launch per dtype for the whole list, in the manner of
// fused optimizers (multi-tensor chunking). The host splits every tensor into
// chunks of kChunk elements and sends one table of (tensor, chunk) pairs and the
// tensors' pointers to the device (one pinned, asynchronous copy); block b
// updates chunk b. Math is fp32 for fp32/fp16/bf16 (fp64 for fp64), with every
// product and sum rounded separately (no fused multiply-add), so results equal
// the reference's element for element. Definitions and the NaN rule: see
// cdism_fast/ops/obproxsg.py.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include "flat_pair.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace cdism_fast::cuda {
namespace {

constexpr int kThreads = 256;
// Elements per block: 16 per thread (four 4-wide vectors), enough work to hide
// the table lookup, small enough that a 1M-parameter model fills a GPU.
constexpr int64_t kChunk = 4096;
constexpr int kVector = 4;
static_assert(kChunk % (kThreads * kVector) == 0, "a chunk is whole vectors of every thread");

// Rounded arithmetic: the reference rounds each operation (PyTorch kernels).
__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub(double a, double b) { return __dsub_rn(a, b); }

template <typename T>
struct StepArgs {
  T lr, lam, eps, shrink;  // shrink = lr * lam, rounded once from double like the reference
  bool orthant;
};

template <typename T>
__device__ __forceinline__ T update(T x, T g, const StepArgs<T>& a) {
  if (a.orthant) {
    const T zeta = static_cast<T>(x > T(0)) - static_cast<T>(x < T(0));
    // g + lam * zeta off the zeros; g * 0 on them, so a NaN/inf gradient is not hidden.
    const T g_hat = zeta != T(0) ? add(g, mul(a.lam, zeta)) : mul(g, T(0));
    const T x_hat = sub(x, mul(a.lr, g_hat));
    // Keep x_hat where x_hat * zeta > eps; written negated so that NaN is kept too.
    return !(mul(x_hat, zeta) <= a.eps) ? x_hat : T(0);
  }
  const T z = sub(x, mul(a.lr, g));
  const T excess = sub(fabs(z), a.shrink);
  // sign(z) * max(|z| - lr*lam, 0); a NaN excess fails the test and passes through.
  return copysign(excess < T(0) ? T(0) : excess, z);
}

// Four consecutive elements, loaded and stored with one access when aligned.
template <typename scalar_t>
struct alignas(sizeof(scalar_t) * kVector) Vec {
  scalar_t v[kVector];
};

// The device table: for each tensor its parameter and gradient pointers,
// element count and whether both are 4-element aligned; for each block its
// tensor and first element.
struct Table {
  const int64_t* param_ptrs;
  const int64_t* grad_ptrs;
  const int64_t* numels;
  const int64_t* aligned;
  const int64_t* block_tensor;
  const int64_t* block_start;
};

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads) obproxsg_kernel(Table table, StepArgs<T> args) {
  const int64_t tensor = table.block_tensor[blockIdx.x];
  const int64_t start = table.block_start[blockIdx.x];
  scalar_t* p = reinterpret_cast<scalar_t*>(table.param_ptrs[tensor]);
  const scalar_t* g = reinterpret_cast<const scalar_t*>(table.grad_ptrs[tensor]);
  const int64_t end = min(start + kChunk, table.numels[tensor]);
  if (table.aligned[tensor] && end - start == kChunk) {
    for (int64_t i = start + threadIdx.x * kVector; i < end; i += kThreads * kVector) {
      Vec<scalar_t> pv = *reinterpret_cast<const Vec<scalar_t>*>(p + i);
      const Vec<scalar_t> gv = *reinterpret_cast<const Vec<scalar_t>*>(g + i);
#pragma unroll
      for (int k = 0; k < kVector; ++k) {
        pv.v[k] = static_cast<scalar_t>(update<T>(static_cast<T>(pv.v[k]), static_cast<T>(gv.v[k]), args));
      }
      *reinterpret_cast<Vec<scalar_t>*>(p + i) = pv;
    }
  } else {
    for (int64_t i = start + threadIdx.x; i < end; i += kThreads) {
      p[i] = static_cast<scalar_t>(update<T>(static_cast<T>(p[i]), static_cast<T>(g[i]), args));
    }
  }
}

bool vector_aligned(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % (t.element_size() * kVector) == 0;
}

// One launch for the tensors of one dtype.
void launch(const std::vector<FlatPair>& pairs, double lr, double lam, bool orthant, double eps) {
  const at::Tensor& first = pairs.front().work;
  const int64_t tensors = static_cast<int64_t>(pairs.size());
  std::vector<int64_t> block_tensor, block_start;
  for (const auto t : c10::irange(tensors)) {
    for (int64_t s = 0; s < pairs[t].work.numel(); s += kChunk) {
      block_tensor.push_back(t);
      block_start.push_back(s);
    }
  }
  const int64_t blocks = static_cast<int64_t>(block_tensor.size());
  TORCH_CHECK(blocks < (int64_t{1} << 31), "obproxsg_step_: too many elements for one launch");
  // Layout: params, grads, numels, aligned (tensors each), block tensors, block starts (blocks each).
  at::Tensor host = at::empty({4 * tensors + 2 * blocks}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* h = host.mutable_data_ptr<int64_t>();
  for (const auto t : c10::irange(tensors)) {
    h[t] = reinterpret_cast<int64_t>(pairs[t].work.data_ptr());
    h[tensors + t] = reinterpret_cast<int64_t>(pairs[t].grad.data_ptr());
    h[2 * tensors + t] = pairs[t].work.numel();
    h[3 * tensors + t] = vector_aligned(pairs[t].work) && vector_aligned(pairs[t].grad);
  }
  std::copy(block_tensor.begin(), block_tensor.end(), h + 4 * tensors);
  std::copy(block_start.begin(), block_start.end(), h + 4 * tensors + blocks);
  const at::Tensor device = host.to(at::TensorOptions().device(first.device()), /*non_blocking=*/true);
  const int64_t* d = device.const_data_ptr<int64_t>();
  const Table table{d, d + tensors, d + 2 * tensors, d + 3 * tensors, d + 4 * tensors, d + 4 * tensors + blocks};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "obproxsg_step_", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const StepArgs<T> args{static_cast<T>(lr), static_cast<T>(lam), static_cast<T>(eps),
                           static_cast<T>(lr * lam), orthant};
    obproxsg_kernel<scalar_t, T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(table, args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void obproxsg_step_(at::TensorList params, at::TensorList grads, double lr, double lam, bool orthant, double eps) {
  TORCH_CHECK_VALUE(params.size() == grads.size(), "obproxsg_step_: ", params.size(), " params but ", grads.size(),
              " grads");
  TORCH_CHECK_VALUE(lr >= 0 && lam >= 0 && eps >= 0, "obproxsg_step_: lr, lam and eps must be >= 0, got ", lr, ", ",
              lam, ", ", eps);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  // One group (and one launch) per dtype, in first-seen order.
  std::vector<std::vector<FlatPair>> groups;
  std::vector<at::ScalarType> group_dtypes;
  for (const auto i : c10::irange(params.size())) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    TORCH_CHECK_VALUE(p.is_cuda() && g.is_cuda() && p.device() == params[0].device() && g.device() == p.device(),
                "obproxsg_step_: params[", i, "] and grads[", i, "] must be on ", params[0].device());
    TORCH_CHECK_VALUE(p.sizes() == g.sizes(), "obproxsg_step_: params[", i, "] has shape ", p.sizes(), " but grads[", i,
                "] has shape ", g.sizes());
    TORCH_CHECK_VALUE(p.scalar_type() == g.scalar_type(), "obproxsg_step_: params[", i, "] and grads[", i,
                "] differ in dtype");
    if (p.numel() == 0) continue;
    const auto group = std::find(group_dtypes.begin(), group_dtypes.end(), p.scalar_type()) - group_dtypes.begin();
    if (group == static_cast<int64_t>(group_dtypes.size())) {
      group_dtypes.push_back(p.scalar_type());
      groups.emplace_back();
    }
    groups[group].push_back(flatten(p, g));
  }
  for (const auto& group : groups) {
    launch(group, lr, lam, orthant, eps);
    for (const auto& pair : group) {
      if (!pair.work.is_same(pair.param)) pair.param.copy_(pair.work);
    }
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(cdism_fast, CUDA, m) {
  m.impl("obproxsg_step_", &obproxsg_step_);
}

}  // namespace cdism_fast::cuda
