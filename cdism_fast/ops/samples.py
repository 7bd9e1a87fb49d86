"""Sample inputs of the ops with Triton kernels, declared once for every place that launches them.

tests/test_window_attention.py, tests/test_laplacian.py and tests/test_distillation.py
run their assertions on these samples for each backend that takes them: the
small ones on CPU tensors for the reference, the C++ kernels and the Triton
kernels in Triton's interpreter, the training-sized ones on a CUDA device for
the GPU backends. The Triton compile report (ops/triton/compile_report.py)
compiles for sm_86 and sm_90 the kernel specialisations that these samples
launch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

#: The dtypes the fast backends accept; the GPU samples run in each.
GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class AttentionSample:
    """Window attention on ``windows`` windows of ``window``² tokens, ``heads`` heads of ``head_dim``."""

    windows: int
    heads: int
    window: int
    head_dim: int
    shift: int
    grid: Optional[tuple[int, int]]      # the padded token grid (H, W); needed when shift > 0
    dtype: torch.dtype = torch.float32
    layout: str = "contiguous"           # "transposed": (B·nW, N, heads, D) storage seen as (B·nW, heads, N, D)

    def inputs(self, device="cpu", dtype: Optional[torch.dtype] = None) -> list[torch.Tensor]:
        """Random q, k, v and bias table (leaves requiring gradients) in ``dtype`` (default the sample's)."""
        dtype = dtype or self.dtype
        tokens = self.window * self.window
        if self.layout == "transposed":
            q, k, v = (torch.randn(self.windows, tokens, self.heads, self.head_dim, device=device).to(dtype)
                       .transpose(1, 2) for _ in range(3))
        else:
            q, k, v = (torch.randn(self.windows, self.heads, tokens, self.head_dim, device=device).to(dtype)
                       for _ in range(3))
        table = torch.randn((2 * self.window - 1) ** 2, self.heads, device=device).to(dtype)
        return [t.requires_grad_() for t in (q, k, v, table)]


@dataclass(frozen=True)
class PyramidSample:
    """A Laplacian-pyramid loss call: NCHW ``shape``, ``levels`` levels."""

    shape: tuple[int, int, int, int]
    levels: int
    reduction: str = "mean"
    dtype: torch.dtype = torch.float32
    layout: Optional[str] = None         # None (contiguous), "channels_last" or "strided"


def _gpu_attention(images: int, grid: int, head_dim: int, shift: int) -> AttentionSample:
    # 8x8 windows and 6 heads, as SwinIR_LW and SwinIRmini.
    return AttentionSample(images * (grid // 8) ** 2, 6, 8, head_dim, shift, (grid, grid))


#: Small cases, for every backend on CPU tensors (Triton in its interpreter).
WINDOW_ATTENTION = {
    "unshifted-odd-dim": AttentionSample(4, 2, 4, 5, 0, None),
    "shifted-nonsquare-batch2": AttentionSample(12, 3, 4, 10, 2, (8, 12)),
    "shifted-fp16": AttentionSample(4, 2, 8, 4, 4, (16, 16), torch.float16),
    "transposed-strides": AttentionSample(6, 2, 4, 6, 2, (8, 12), layout="transposed"),
    "window12-several-blocks": AttentionSample(2, 1, 12, 7, 5, (12, 24)),
    "head-dim-64": AttentionSample(2, 1, 8, 64, 3, (8, 16)),
    "head-dim-24-half-blocks": AttentionSample(2, 1, 8, 24, 3, (8, 16)),
}

#: Training shapes for the GPU backends: a batch of 16 64x64 LR patches of SwinIR_LW (head dim 10)
#: and SwinIRmini (4), shifted and not, in every dtype of GPU_DTYPES.
WINDOW_ATTENTION_GPU = {
    f"{model}-shift{shift}": _gpu_attention(16, 64, head_dim, shift)
    for model, head_dim in (("SwinIR_LW", 10), ("SwinIRmini", 4)) for shift in (0, 4)
}

#: Head dims up to the kernel's 64 (non-powers of two; 64 takes half the token block: several
#: blocks, atomic backward), on two 16x16 token grids, fp32.
WINDOW_ATTENTION_HEAD_DIMS_GPU = {f"head-dim-{dim}": _gpu_attention(2, 16, dim, 4) for dim in (5, 24, 33, 64)}

#: Small cases, for every backend on CPU tensors (Triton in its interpreter).
LAPLACIAN_LOSS = {
    "one-level": PyramidSample((2, 1, 9, 7), 1),
    "two-levels-batch2-rgb": PyramidSample((2, 3, 16, 16), 2),
    "padded-odd-size-sum": PyramidSample((2, 1, 35, 37), 3, "sum"),
    "five-levels-two-tiles": PyramidSample((1, 1, 80, 48), 5),
    "fp16": PyramidSample((1, 2, 32, 32), 4, dtype=torch.float16),
    "channels-last": PyramidSample((1, 3, 16, 24), 3, layout="channels_last"),
    "strided-view": PyramidSample((2, 1, 16, 16), 3, "sum", layout="strided"),
}

#: For the GPU backends: a training batch (16 256x256 RGB patches) in every dtype of GPU_DTYPES,
#: and an odd size in channels_last (fp32).
LAPLACIAN_LOSS_GPU = {
    "training-batch": PyramidSample((16, 3, 256, 256), 5),
    "odd-size-channels-last": PyramidSample((4, 3, 90, 77), 4, "sum", layout="channels_last"),
}

#: The distillation loss's training batch on the GPU backends (16 128x128 RGB patches, 5 levels).
DISTILLATION_LOSS_GPU = PyramidSample((16, 3, 128, 128), 5)

