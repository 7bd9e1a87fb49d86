// Charbonnier loss, forward and backward, one pass over x and y.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "elementwise.h"

namespace cdism_fast::cpu {
namespace {

// Chunks large enough to amortise thread start-up, small enough to balance.
constexpr int64_t kGrain = 32768;
constexpr int64_t kBlock = 256;

at::Tensor charbonnier_loss(const at::Tensor& x_in, const at::Tensor& y_in, double eps, bool mean) {
  TORCH_CHECK(x_in.sizes() == y_in.sizes(), "charbonnier_loss: x and y differ in shape");
  TORCH_CHECK(x_in.scalar_type() == y_in.scalar_type(), "charbonnier_loss: x and y differ in dtype");
  auto [x, y] = same_dense_layout(x_in, y_in);
  const int64_t n = x.numel();
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty({}, x.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "charbonnier_loss", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const acc eps2 = static_cast<acc>(eps) * static_cast<acc>(eps);
    // Short blocks summed in the accumulation type (vectorisable), blocks summed in
    // double: the rounding error stays that of a 256-term sum at any size.
    double total = at::parallel_reduce(0, n, kGrain, 0.0, [&](int64_t begin, int64_t end, double partial) {
      for (int64_t block = begin; block < end; block += kBlock) {
        const int64_t stop = std::min(end, block + kBlock);
        acc sum = 0;
        for (int64_t i = block; i < stop; ++i) {
          const acc d = static_cast<acc>(xp[i]) - static_cast<acc>(yp[i]);
          sum += std::sqrt(d * d + eps2);
        }
        partial += static_cast<double>(sum);
      }
      return partial;
    }, std::plus<double>());
    if (mean) total /= static_cast<double>(n);
    out.fill_(total);
  });
  return out;
}

at::Tensor charbonnier_loss_backward(const at::Tensor& grad, const at::Tensor& x_in, const at::Tensor& y_in,
                                     double eps, bool mean) {
  TORCH_CHECK(grad.numel() == 1, "charbonnier_loss_backward: grad must hold one element");
  auto [x, y] = same_dense_layout(x_in, y_in);
  const int64_t n = x.numel();
  at::Tensor grad_x = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "charbonnier_loss_backward", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* gp = grad_x.mutable_data_ptr<scalar_t>();
    const acc eps2 = static_cast<acc>(eps) * static_cast<acc>(eps);
    const acc g = static_cast<acc>(grad.item<double>() / (mean ? static_cast<double>(n) : 1.0));
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc d = static_cast<acc>(xp[i]) - static_cast<acc>(yp[i]);
        gp[i] = static_cast<scalar_t>(g * d / std::sqrt(d * d + eps2));
      }
    });
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(cdism_fast, CPU, m) {
  m.impl("charbonnier_loss", &charbonnier_loss);
  m.impl("charbonnier_loss_backward", &charbonnier_loss_backward);
}

}  // namespace cdism_fast::cpu
