// Gaussian blur (5x5 binomial / 256, reflect padding of 2) and high-pass
// x - blur(x) on CUDA, forward and adjoint (the backward of these linear
// filters), for NCHW tensors of any strides, fp32 math for fp16/bf16/fp32
// (fp64 for fp64).
//
// One block filters a kTile x kTile tile of one image plane: it loads the tile
// and a halo of 2 into shared memory once, filters along rows into a second
// shared array and then along columns, writing each output once.
// Forward: the halo is read with reflected indices, so every output uses the
// plain 5-tap stencil. Adjoint: the halo outside the image is zero and each
// output j of an axis takes input i = j - 2 + o (o = 0..4) with the weight
// sum_t b[t]/16 [reflect(i + t - 2) = j], i.e. the forward matrix transposed;
// away from the borders that is the stencil itself (the filter is symmetric).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>

#include "gaussian_filter.h"

namespace cdism_fast::cuda {
namespace {

constexpr int kTile = 32;                 // outputs per tile edge
constexpr int kHalo = gaussian::kRadius;
constexpr int kSpan = kTile + 2 * kHalo;  // tile plus halo
constexpr int kThreadsX = 32, kThreadsY = 8;

using gaussian::binomial;
using gaussian::reflect;

// Weight of input j - 2 + o in output j along an axis of n samples (see the header).
template <typename T, bool kAdjoint>
__device__ __forceinline__ T axis_weight(int j, int o, int n) {
  const int i = j - kHalo + o;
  if (!kAdjoint) return binomial<T>(o) / T(16);
  if (i < 0 || i >= n) return T(0);
  if (j >= kHalo + 1 && j < n - kHalo - 1) return binomial<T>(o) / T(16);  // no reflection reaches j
  T w = 0;
  for (int t = 0; t < 5; ++t) {
    if (reflect(i + t - kHalo, n) == j) w += binomial<T>(t);
  }
  return w / T(16);
}

struct Plane {
  int64_t stride_n, stride_c, stride_h, stride_w;
};

template <typename scalar_t, typename T, bool kAdjoint>
__global__ void __launch_bounds__(kThreadsX * kThreadsY)
    gaussian_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, Plane in_plane, Plane out_plane,
                    int channels, int height, int width, int tiles_x, int tiles_y, bool highpass) {
  __shared__ T loaded[kSpan][kSpan + 1];  // +1: rows start in different banks
  __shared__ T across[kSpan][kTile];
  const int tiles = tiles_x * tiles_y;
  const int64_t plane = blockIdx.x / tiles;
  const int tile = blockIdx.x % tiles;
  const int y0 = (tile / tiles_x) * kTile, x0 = (tile % tiles_x) * kTile;
  const int64_t n = plane / channels, c = plane % channels;
  const scalar_t* src = x + n * in_plane.stride_n + c * in_plane.stride_c;
  const int thread = threadIdx.y * kThreadsX + threadIdx.x;

  for (int e = thread; e < kSpan * kSpan; e += kThreadsX * kThreadsY) {
    const int r = e / kSpan, s = e % kSpan;
    const int y = y0 - kHalo + r, xx = x0 - kHalo + s;
    T value;
    if (kAdjoint) {
      const bool inside = y >= 0 && y < height && xx >= 0 && xx < width;
      value = inside ? static_cast<T>(src[y * in_plane.stride_h + xx * in_plane.stride_w]) : T(0);
    } else {
      // Reflected; positions only a partial tile's unused outputs read are clamped into the image.
      const int ry = min(max(reflect(y, height), 0), height - 1);
      const int rx = min(max(reflect(xx, width), 0), width - 1);
      value = static_cast<T>(src[ry * in_plane.stride_h + rx * in_plane.stride_w]);
    }
    loaded[r][s] = value;
  }
  __syncthreads();

  const int col = threadIdx.x;  // each thread keeps one column: its weights are computed once
  T w_across[5];
#pragma unroll
  for (int o = 0; o < 5; ++o) w_across[o] = axis_weight<T, kAdjoint>(x0 + col, o, width);
  for (int r = threadIdx.y; r < kSpan; r += kThreadsY) {
    T acc = 0;
#pragma unroll
    for (int o = 0; o < 5; ++o) acc += w_across[o] * loaded[r][col + o];
    across[r][col] = acc;
  }
  __syncthreads();

  const int xx = x0 + col;
  scalar_t* dst = out + n * out_plane.stride_n + c * out_plane.stride_c;
  for (int r = threadIdx.y; r < kTile; r += kThreadsY) {
    const int y = y0 + r;
    if (y >= height || xx >= width) continue;
    T acc = 0;
#pragma unroll
    for (int o = 0; o < 5; ++o) acc += axis_weight<T, kAdjoint>(y, o, height) * across[r + o][col];
    // High-pass (I - B) and its adjoint (I - B^T): subtract from the sample itself.
    const T value = highpass ? loaded[r + kHalo][col + kHalo] - acc : acc;
    dst[y * out_plane.stride_h + xx * out_plane.stride_w] = static_cast<scalar_t>(value);
  }
}

Plane plane_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

at::Tensor filter(const at::Tensor& x, bool highpass, bool adjoint, const char* name) {
  TORCH_CHECK(x.is_cuda(), name, ": expected a CUDA tensor, got ", x.device());
  gaussian::check_input(x, name);
  TORCH_CHECK(x.size(2) < (int64_t{1} << 31) && x.size(3) < (int64_t{1} << 31) && x.size(1) < (int64_t{1} << 31),
              name, ": image too large");
  at::Tensor out = at::empty_like(x);
  if (out.numel() == 0) return out;
  const c10::cuda::CUDAGuard guard(x.device());
  const int height = static_cast<int>(x.size(2)), width = static_cast<int>(x.size(3));
  const int tiles_x = (width + kTile - 1) / kTile, tiles_y = (height + kTile - 1) / kTile;
  const int64_t blocks = x.size(0) * x.size(1) * tiles_x * tiles_y;
  TORCH_CHECK(blocks < (int64_t{1} << 31), name, ": too many tiles for one launch");
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 threads(kThreadsX, kThreadsY);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gaussian_filter", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto kernel = adjoint ? gaussian_kernel<scalar_t, T, true> : gaussian_kernel<scalar_t, T, false>;
    kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), plane_of(x), plane_of(out),
        static_cast<int>(x.size(1)), height, width, tiles_x, tiles_y, highpass);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cdism_fast, CUDA, m) {
  gaussian::register_kernels<filter>(m);
}

}  // namespace cdism_fast::cuda
