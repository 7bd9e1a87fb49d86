"""Stage 0: a teacher trained from scratch (L1 loss and Adam), for runs without a published one."""
from __future__ import annotations

import torch
from torch import nn

from .. import distributed
from ..artifacts import (
    data_source,
    model_spec,
    records_failure,
    stage_inputs,
)
from ..engine import (
    Trainer,
)
from .common import (
    StageResult,
    StageSettings,
    finish_stage,
    fit_stage,
    make_validator,
    settings_record,
    stage_patches,
    start_stage,
    step_scheduler,
    to_unit,
    training_pairs,
    validation_sets,
)


@records_failure
def train_teacher(model: nn.Module, out_dir, settings: StageSettings, data=None, val=None, *, resume: bool = False,
                  overwrite: bool = False, context: distributed.DistributedContext | None = None,
                  inputs: dict | None = None) -> StageResult:
    """Stage 0: train ``model`` from its current weights with L1 loss and Adam (betas 0.9, 0.999)."""
    context = context or distributed.setup()
    scale = model.scale
    start_stage(out_dir, "train", settings_record(settings, model=model_spec(model), data=data_source(data)), resume,
           overwrite, stage_inputs(data, val, inputs))
    patches = stage_patches(training_pairs(data, scale), settings)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=(0.9, 0.999))

    def step_loss(net, batch):
        lr, hr = to_unit(batch)
        return torch.nn.functional.l1_loss(net(lr).float(), hr)

    trainer = Trainer(model, step_loss, optimizer, patches, settings.train_config("stage 0: teacher"), out_dir,
                      scheduler=step_scheduler(optimizer, settings), context=context, kind="train",
                      validate=make_validator(validation_sets(val, data, scale), scale),
                      metadata={"model": model_spec(model)})
    return finish_stage(fit_stage(trainer, out_dir, resume), trainer, out_dir)
