"""Stage 1: OBProx-SG pruning of the teacher and the density of its deep-feature weights."""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Optional

from torch import nn

from ...ops import CHARBONNIER_EPS
from .. import distributed
from ..artifacts import (
    data_source,
    model_spec,
    records_failure,
    stage_inputs,
    write_json,
)
from ..distributed import on_main
from ..engine import (
    Trainer,
)
from .common import (
    DENSITY_FILE,
    TRAINING_FILES,
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


def density_report(model: nn.Module) -> dict:
    """d of the deep-feature module's weight tensors (the paper's d), of all weights, and per layer."""
    from ...optim import density

    deep = list(model.deep_feature_parameters())
    return {
        "density": density(deep, weights_only=True),
        "all_weights": density(model, weights_only=True),
        "layers": {name: density(p, weights_only=True) for name, p in model.named_parameters() if p.dim() >= 2},
        "model": model_spec(model),
    }


@records_failure
def prune(teacher: nn.Module, out_dir, settings: StageSettings, data=None, val=None, *, lam: float = 1e-4,
          n_p: Optional[int] = None, n_o: Optional[int] = None, steps_per_epoch: int = 1, eps: float = 0.0,
          penalty: str = "all", resume: bool = False, overwrite: bool = False,
          context: distributed.DistributedContext | None = None, inputs: dict | None = None) -> StageResult:
    """Stage 1: fine-tune a copy of ``teacher`` on charbonnier(eps=1e-3) with OBProx-SG's λ‖θ‖₁.

    ``n_p`` (phase epochs of Prox-SG; default: a tenth of the iterations, as
    the authors' EDSR schedule, 60 epochs of 160 iterations out of 100k),
    ``n_o`` (orthant epochs per cycle; None: orthant to the end) and
    ``steps_per_epoch`` (optimizer steps per phase epoch) set the phases.
    ``penalty``: ``"all"`` parameters (the paper) or only the ``"deep"``
    feature module (the rest gets plain SGD steps). Writes ``density.json``.
    """
    from ...ops import charbonnier
    from ...optim import OBProxSG

    if penalty not in ("all", "deep"):
        raise ValueError(f"penalty must be 'all' or 'deep', got {penalty!r}")
    if settings.ema_decay is not None:
        raise ValueError("ema_decay must be None for pruning: an average of sparse weights is not sparse")
    context = context or distributed.setup()
    if n_p is None:
        n_p = max(1, math.ceil(settings.iterations / (10 * steps_per_epoch)))
    schedule = dict(lam=lam, n_p=n_p, n_o=n_o, steps_per_epoch=steps_per_epoch, eps=eps, penalty=penalty)
    start_stage(out_dir, "prune",
           settings_record(settings, **schedule, teacher=model_spec(teacher), data=data_source(data)),
           resume, overwrite, stage_inputs(data, val, inputs), files=(*TRAINING_FILES, DENSITY_FILE))
    model = copy.deepcopy(teacher).train().requires_grad_(True)
    if penalty == "all":
        groups = [{"params": list(model.parameters())}]
    else:
        deep = {id(p) for p in model.deep_feature_parameters()}
        groups = [{"params": [p for p in model.parameters() if id(p) in deep]},
                  {"params": [p for p in model.parameters() if id(p) not in deep], "l1": False}]
    optimizer = OBProxSG(groups, lr=settings.lr, lam=lam, n_p=n_p, n_o=n_o, steps_per_epoch=steps_per_epoch, eps=eps)
    patches = stage_patches(training_pairs(data, model.scale), settings)

    def step_loss(net, batch):
        lr, hr = to_unit(batch)
        return charbonnier(net(lr).float(), hr, eps=CHARBONNIER_EPS)

    trainer = Trainer(model, step_loss, optimizer, patches, settings.train_config("stage 1: prune", ema=False),
                      out_dir, scheduler=step_scheduler(optimizer, settings), context=context, kind="prune",
                      validate=make_validator(validation_sets(val, data, model.scale), model.scale),
                      metadata={"model": model_spec(model), **schedule})
    result = fit_stage(trainer, out_dir, resume)
    report = density_report(trainer.model)
    report.update(iteration=result.iteration, **schedule)
    if result.status == "completed":
        on_main(write_json, Path(out_dir) / DENSITY_FILE, report)
    stage = finish_stage(result, trainer, out_dir, extra_info={"density": report["density"]},
                    extra_outputs={"density": DENSITY_FILE if result.status == "completed" else None})
    stage.extra["density"] = report
    return stage
