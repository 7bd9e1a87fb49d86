"""Stage 1: OBProx-SG pruning of the teacher and the density of its deep-feature weights."""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from torch import nn

from ...ops import CHARBONNIER_EPS
from .. import distributed
from ..artifacts import model_spec, records_failure, write_json
from ..distributed import on_main
from .common import (
    DENSITY_FILE,
    TRAINING_FILES,
    StageResult,
    StageSettings,
    finish_stage,
    open_stage,
    patch_loss,
    setting,
    train_stage,
)

#: Whose parameters the l1 penalty covers.
PENALTIES = ("all", "deep")


@dataclass(frozen=True)
class PruneOptions:
    """The pruning schedule of stage 1 (OBProx-SG): λ and the phases.

    ``n_p`` is the Prox-SG phase in phase epochs (None: a tenth of the
    iterations, as the authors' EDSR schedule, 60 epochs of 160 iterations out
    of 100k), ``n_o`` the orthant phase per cycle (None: orthant to the end),
    ``steps_per_epoch`` the optimizer steps of a phase epoch. ``penalty``:
    ``"all"`` parameters (the paper) or only the ``"deep"`` feature module
    (the rest gets plain SGD steps).
    """
    lam: float = setting(1e-4, help="l1 weight lambda (paper presets: 1e-4)")
    n_p: Optional[int] = setting(None, help="Prox-SG phase length (unset: a tenth of the iterations)",
                                 unit="phase epochs")
    n_o: Optional[int] = setting(None, help="orthant phase length per cycle (unset: orthant to the end)",
                                 unit="phase epochs")
    steps_per_epoch: int = setting(1, help="optimizer steps per phase epoch")
    eps: float = setting(0.0, help="orthant projection threshold")
    penalty: str = setting("all", help="penalise all parameters (the paper) or only the deep-feature module",
                           choices=PENALTIES)

    def __post_init__(self):
        if self.penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got {self.penalty!r}")

    def schedule(self, iterations: int) -> dict:
        """The optimizer's keywords, ``n_p`` resolved for ``iterations``."""
        n_p = self.n_p if self.n_p is not None else max(1, math.ceil(iterations / (10 * self.steps_per_epoch)))
        return {**asdict(self), "n_p": n_p}


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
def prune(teacher: nn.Module, out_dir, settings: StageSettings, options: PruneOptions = PruneOptions(), data=None,
          val=None, *, resume: bool = False, overwrite: bool = False,
          context: distributed.DistributedContext | None = None, inputs: dict | None = None) -> StageResult:
    """Stage 1: fine-tune a copy of ``teacher`` on charbonnier(eps=1e-3) with OBProx-SG's λ‖θ‖₁ under the
    schedule of ``options``. Writes ``density.json``."""
    from ...ops import charbonnier
    from ...optim import OBProxSG
    from ..teacher_cache import teacher_fingerprint

    if settings.ema_decay is not None:
        raise ValueError("ema_decay must be None for pruning: an average of sparse weights is not sparse")
    context = context or distributed.setup()
    schedule = options.schedule(settings.iterations)
    model = copy.deepcopy(teacher).train().requires_grad_(True)
    if options.penalty == "all":
        groups = [{"params": list(model.parameters())}]
    else:
        deep = {id(p) for p in model.deep_feature_parameters()}
        groups = [{"params": [p for p in model.parameters() if id(p) in deep]},
                  {"params": [p for p in model.parameters() if id(p) not in deep], "l1": False}]
    optimizer = OBProxSG(groups, lr=settings.lr, **{k: v for k, v in schedule.items() if k != "penalty"})
    depends = {"teacher": model_spec(teacher), "teacher_weights": teacher_fingerprint(teacher)}
    _, patches = open_stage(out_dir, "prune", settings, {**schedule, **depends}, scale=model.scale, data=data,
                            val=val, resume=resume, overwrite=overwrite, inputs=inputs, device=context.device,
                            files=(*TRAINING_FILES, DENSITY_FILE))
    trainer, result = train_stage(model, patch_loss(functools.partial(charbonnier, eps=CHARBONNIER_EPS)), optimizer,
                                  patches, settings, out_dir, resume=resume, description="stage 1: prune",
                                  kind="prune", data=data, val=val, context=context,
                                  metadata={"model": model_spec(model), **schedule}, ema=False)
    report = density_report(trainer.model)
    report.update(iteration=result.iteration, **schedule)
    if result.status == "completed":
        on_main(write_json, Path(out_dir) / DENSITY_FILE, report)
    stage = finish_stage(result, trainer, out_dir, extra_info={"density": report["density"]},
                         extra_outputs={"density": DENSITY_FILE if result.status == "completed" else None})
    stage.extra["density"] = report
    return stage
