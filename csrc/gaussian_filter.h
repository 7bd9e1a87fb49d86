// What the CPU and the CUDA Gaussian filters share: the 5-tap binomial stencil b = [1, 4, 6, 4, 1]
// (sum 16; the 5x5 filter is outer(b, b)/256), its reflect border (no edge repeat, torch's "reflect"),
// both as host and device functions, and the checks, entry points and registration of the two ops.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

namespace cdism_fast::gaussian {

constexpr int kRadius = 2;  // reflect padding of 2

// Index i of an axis of n samples reflected into [0, n); valid for -n < i < 2n - 1.
template <typename I>
C10_HOST_DEVICE inline I reflect(I i, I n) {
  i = i < 0 ? -i : i;
  return i >= n ? 2 * (n - 1) - i : i;
}

// b[t], t = 0..4.
template <typename T>
C10_HOST_DEVICE inline T binomial(int t) {
  return t == 2 ? T(6) : (t == 1 || t == 3 ? T(4) : T(1));
}

inline void check_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4, name, ": expected an NCHW tensor, got ", x.dim(), " dimensions");
  TORCH_CHECK(x.size(2) >= 3 && x.size(3) >= 3, name, ": reflect padding of 2 needs at least 3x3, got ",
              x.size(2), "x", x.size(3));
}

// One device's filter: HF or blur of x, forward or adjoint; `name` is the op's, for its errors.
using Filter = at::Tensor (*)(const at::Tensor& x, bool highpass, bool adjoint, const char* name);

template <Filter kFilter>
at::Tensor forward(const at::Tensor& x, bool highpass) {
  return kFilter(x, highpass, /*adjoint=*/false, "gaussian_filter");
}

template <Filter kFilter>
at::Tensor backward(const at::Tensor& grad, bool highpass) {
  return kFilter(grad, highpass, /*adjoint=*/true, "gaussian_filter_backward");
}

// The device's kernels of gaussian_filter and gaussian_filter_backward, inside its TORCH_LIBRARY_IMPL block.
template <Filter kFilter>
void register_kernels(torch::Library& m) {
  m.impl("gaussian_filter", &forward<kFilter>);
  m.impl("gaussian_filter_backward", &backward<kFilter>);
}

}  // namespace cdism_fast::gaussian
