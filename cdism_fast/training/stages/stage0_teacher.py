"""Stage 0: a teacher trained from scratch (L1 loss and Adam), for runs without a published one."""
from __future__ import annotations

import torch
from torch import nn

from .. import distributed
from ..artifacts import model_spec, records_failure
from .common import StageResult, StageSettings, finish_stage, open_stage, patch_loss, train_stage


@records_failure
def train_teacher(model: nn.Module, out_dir, settings: StageSettings, data=None, val=None, *, resume: bool = False,
                  overwrite: bool = False, context: distributed.DistributedContext | None = None,
                  inputs: dict | None = None) -> StageResult:
    """Stage 0: train ``model`` from its current weights with L1 loss and Adam (betas 0.9, 0.999)."""
    context = context or distributed.setup()
    _, patches = open_stage(out_dir, "train", settings, {"model": model_spec(model)}, scale=model.scale, data=data,
                            val=val, resume=resume, overwrite=overwrite, inputs=inputs, device=context.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=(0.9, 0.999))
    trainer, result = train_stage(model, patch_loss(torch.nn.functional.l1_loss), optimizer, patches, settings,
                                  out_dir, resume=resume, description="stage 0: teacher", kind="train", data=data,
                                  val=val, context=context, metadata={"model": model_spec(model)})
    return finish_stage(result, trainer, out_dir)
