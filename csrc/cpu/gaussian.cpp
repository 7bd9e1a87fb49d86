// Gaussian blur (5x5 binomial, reflect padding of 2) and high-pass x - blur(x),
// forward and adjoint (the backward of a linear filter), separable, one pass
// over the image: each task filters a band of rows of one plane, reading the
// band and its 2-row halo once, in any strides, with fp32 math for fp16/bf16.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "binomial.h"
#include "elementwise.h"
#include "gaussian_filter.h"

namespace cdism_fast::cpu {
namespace {

using binomial::AxisOp;
using binomial::Kind;
using binomial::PlaneRows;

// Rows per task: a band's filtered rows stay in L1/L2, and bands of many planes
// keep every thread busy.
constexpr int64_t kBandRows = 32;

template <typename scalar_t>
void filter_planes(const at::Tensor& x, at::Tensor& out, bool highpass, bool adjoint) {
  using T = acc_t<scalar_t>;
  const int64_t planes = x.size(0) * x.size(1), height = x.size(2), width = x.size(3);
  const int64_t bands = (height + kBandRows - 1) / kBandRows;
  const auto across = binomial::axis_op<T>(Kind::kBlur, adjoint, width);
  const auto down = binomial::axis_op<T>(Kind::kBlur, adjoint, height);
  at::parallel_for(0, planes * bands, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch, own(width), result(width);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t plane = task / bands, r0 = (task % bands) * kBandRows;
      const auto in = PlaneRows<scalar_t>::reader(x, plane);
      const auto dst = PlaneRows<scalar_t>::writer(out, plane);
      binomial::separable_rows(
          *across, *down, r0, std::min(height, r0 + kBandRows),
          [&](int64_t r, T* buffer) { return in.load(r, buffer); },
          [&](int64_t r, const T* filtered) {
            if (!highpass) return dst.store(r, filtered);
            // (I - B) and its adjoint (I - B^T): subtract from the row itself.
            const T* row = in.load(r, own.data());
            T* target = dst.destination(r, result.data());
            binomial::difference(row, filtered, target, width);
            dst.store(r, target);
          },
          scratch);
    }
  });
}

at::Tensor filter(const at::Tensor& x, bool highpass, bool adjoint, const char* name) {
  gaussian::check_input(x, name);
  at::Tensor out = at::empty_like(x);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gaussian_filter",
                                  [&] { filter_planes<scalar_t>(x, out, highpass, adjoint); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cdism_fast, CPU, m) {
  gaussian::register_kernels<filter>(m);
}

}  // namespace cdism_fast::cpu
