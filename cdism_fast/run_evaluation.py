"""The evaluation stage of a run: every model of the run (and bicubic) scored on every set, with its costs.

:func:`evaluate_models` writes ``evaluation.json`` (PSNR/SSIM per set and
image, params, FLOPs, structure, density per model) and ``crops/<model>.png``
(the Fig. 3-style crops); :func:`cdism_fast.report.build_report` reads them.
It sits in the report layer: it describes trained models with the training
stages' helpers (:func:`~cdism_fast.training.stages.density_report`,
:func:`~cdism_fast.training.stages.structure_table`).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

__all__ = ["evaluate_models", "EVALUATION_FILE", "CROP_SIZE"]

EVALUATION_FILE = "evaluation.json"
#: Side (HR pixels) of the Fig. 3-style crops.
CROP_SIZE = 96


def _pick_crop(hr: torch.Tensor, size: int) -> tuple[int, int]:
    """Top-left corner of the most detailed ``size``² window (largest luminance variance on a coarse grid)."""
    grey = hr.float().mean(0)
    height, width = grey.shape
    size = min(size, height, width)
    best, corner = -1.0, (0, 0)
    step = max(1, size // 2)
    for top in range(0, height - size + 1, step):
        for left in range(0, width - size + 1, step):
            variance = float(grey[top: top + size, left: left + size].var())
            if variance > best:
                best, corner = variance, (top, left)
    return corner


def _mean(images: list[dict], key: str) -> float:
    return math.fsum(i[key] for i in images) / len(images)


def evaluate_models(models: dict[str, nn.Module], eval_sets: list, scale: int, out_dir, progress: bool = True,
                    reference=None) -> dict:
    """PSNR/SSIM of each model (and bicubic) on every set, sizes and costs, and the crops of one image.

    Writes ``evaluation.json`` and ``crops/<model>.png`` (the same crop of the
    first image of the first set for HR, bicubic and every model).

    ``reference``: held-back images paired with the teacher's outputs
    (:class:`~cdism_fast.training.stages.TeacherOutputs`, a run with
    ``--targets teacher``): every model but the teacher is also scored against
    the teacher's output on them, under ``vs_teacher`` (not against a ground
    truth). Without ground-truth sets (``eval_sets`` empty) ``psnr`` and
    ``ssim`` are None and the crops come from the first held-back image, with
    the teacher's output in place of HR.
    """
    from .data import write_image
    from .evaluation import Bicubic, evaluate, upscale
    from .models import SRModel
    from .training.artifacts import write_json
    from .training.stages import density_report, structure_table

    out_dir = Path(out_dir)
    entries = {}
    lr, hr, image_name = (eval_sets or [reference])[0][0]
    top, left = _pick_crop(hr, CROP_SIZE)
    crop = (slice(top, top + CROP_SIZE), slice(left, left + CROP_SIZE))
    if eval_sets:
        write_image(out_dir / "crops" / "hr.png", hr[:, crop[0], crop[1]])
    for name, model in {**models, "bicubic": Bicubic(scale)}.items():
        model = model.eval()
        per_set = {}
        for dataset in eval_sets:
            scores = evaluate(model, dataset, scale, progress=progress)
            per_set[scores["name"]] = {"psnr": scores["psnr"], "ssim": scores["ssim"], "images": scores["images"]}
        images = [image for scores in per_set.values() for image in scores["images"]]
        entry = {
            "psnr": _mean(images, "psnr") if images else None,
            "ssim": _mean(images, "ssim") if images else None,
            "sets": per_set,
        }
        if reference is not None and name != "teacher":
            scores = evaluate(model, reference, scale, progress=progress)
            entry["vs_teacher"] = {"psnr": scores["psnr"], "ssim": scores["ssim"], "images": scores["images"]}
        if name != "bicubic":
            row = structure_table({name: model})[0]  # an external teacher: no structure, FLOPs where countable
            entry.update(params=row["params"], flops=row["flops"],
                         flops_without_attention=row["flops_without_attention"],
                         structure=model.structure()._asdict() if isinstance(model, SRModel) else None,
                         density=density_report(model)["density"])
        else:
            entry.update(params=0, flops=0, structure=None, density=None)
        with torch.no_grad():
            sr = upscale(model, lr, scale)
        write_image(out_dir / "crops" / f"{name}.png", sr[:, crop[0], crop[1]])
        entries[name] = entry
    evaluation = {"scale": scale, "crop": {"image": image_name, "top": top, "left": left, "size": CROP_SIZE},
                  "models": entries, "table": structure_table(models)}
    if reference is not None:
        evaluation["vs_teacher"] = {"set": reference.name, "images": reference.names(),
                                    "about": "PSNR/SSIM (Y, border = scale) against the teacher's output on images "
                                             "held back from --data, not against a ground truth"}
    write_json(out_dir / EVALUATION_FILE, evaluation)
    return evaluation
