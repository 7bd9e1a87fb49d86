"""cdism_fast: fast compression of super-resolution models.

Prune with OBProx-SG, compress by the density rule, distill with a
Laplacian-pyramid loss, as in "Compressing Deep Image Super-resolution
Models" (Jiang, Nawala, Zhang, Bull), with fused CPU/CUDA/Triton kernels.
"""
__version__ = "0.1.0"

from . import ops  # noqa: E402
from .evaluation import evaluate, upscale  # noqa: E402

__all__ = ["ops", "evaluate", "upscale", "__version__"]
