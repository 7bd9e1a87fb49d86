// A parameter and its gradient as flat arrays of one memory layout, for the
// in-place optimizer kernels (CPU and CUDA share this rule).
#pragma once
#include <ATen/ATen.h>

namespace cdism_fast {

// The tensor updated in place (the parameter itself, or a contiguous copy that
// the caller writes back afterwards) and a gradient in the same memory layout.
struct FlatPair {
  at::Tensor param, work, grad;
};

inline FlatPair flatten(const at::Tensor& param, const at::Tensor& grad) {
  at::Tensor work = param.is_non_overlapping_and_dense() ? param : param.contiguous();
  at::Tensor flat_grad = grad;
  if (grad.strides() != work.strides() || !grad.is_non_overlapping_and_dense()) {
    // empty_like keeps the strides of a dense tensor: the copy matches work element by element.
    flat_grad = at::empty_like(work);
    flat_grad.copy_(grad);
  }
  return {param, work, flat_grad};
}

}  // namespace cdism_fast
