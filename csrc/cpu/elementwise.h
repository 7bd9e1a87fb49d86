// Helpers for CPU kernels that walk two same-shaped tensors element by element.
#pragma once
#include <ATen/ATen.h>

namespace cdism_fast::cpu {

// Returns (a, b) with one shared dense memory layout so that a kernel can walk
// both as flat arrays: same strides and non-overlapping and dense (contiguous
// or channels_last alike) are taken as they are; anything else is copied to a
// contiguous tensor first.
inline std::pair<at::Tensor, at::Tensor> same_dense_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.strides() == b.strides() && a.is_non_overlapping_and_dense()) return {a, b};
  return {a.contiguous(), b.contiguous()};
}

// Accumulation type: fp32 for fp32/fp16/bf16, fp64 for fp64.
template <typename scalar_t>
using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

}  // namespace cdism_fast::cpu
