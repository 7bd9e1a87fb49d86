"""Stage 2: the compact student's structure from the density (the paper's eqs. 5-7)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from torch import nn

from ..artifacts import mark_stage, model_spec, prepare_run_folder, read_json, records_failure, write_json
from ..distributed import on_main
from .common import STUDENT_FILE, StageResult, flops_size, setting


@dataclass(frozen=True)
class CompressOptions:
    """How stage 2 turns the density into the student's structure (:func:`~cdism_fast.compress.compress_config`'s
    keywords; unset: the paper's rule)."""
    n_b: Optional[int] = setting(None, help="the student's number of blocks (unset: eq. (6))")
    n_l: Optional[int] = setting(None, help="the student's layers per block (unset: eq. (6))")
    n_c: Optional[int] = setting(None, help="the student's channels (unset: from the density)")
    rounding: Optional[str] = setting(None, help="rounding of the three counts (unset: nearest)",
                                      choices=("nearest", "down", "up"))
    channel_multiple: Optional[int] = setting(None, help="N_c is rounded to a multiple of this (unset: the "
                                                         "family's)")
    channels: Optional[str] = setting(None, help="how N_c is chosen: exact weight count or the paper's eq. (7) "
                                                 "(unset: count)", choices=("count", "eq7"))

    def given(self) -> dict:
        """The keywords that were set."""
        return {key: value for key, value in asdict(self).items() if value is not None}


def structure_table(models: dict[str, nn.Module]) -> list[dict]:
    """Rows of structure, parameters and FLOPs (MACs at 1280×720 output, see :func:`flops_size` at ×3) for each named
    model."""
    from ...models import count_flops, count_params

    rows = []
    for name, model in models.items():
        structure = model.structure()
        flops = count_flops(model, out_hw=flops_size(model.scale))
        rows.append({"model": name, "n_b": structure.n_b, "n_l": structure.n_l, "n_c": structure.n_c,
                     "params": count_params(model), "flops": flops["total"],
                     "flops_without_attention": flops["total_without_attention"]})
    return rows


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of :func:`structure_table` rows (params in K, FLOPs in G)."""
    lines = [f"{'model':<14} {'N_b':>4} {'N_l':>4} {'N_c':>5} {'params':>11} {'FLOPs@720p':>12}"]
    for row in rows:
        lines.append(f"{row['model']:<14} {row['n_b']:>4} {row['n_l']:>4} {row['n_c']:>5} "
                     f"{row['params'] / 1e3:>10.1f}K {row['flops'] / 1e9:>11.2f}G")
    return "\n".join(lines)


def density_value(text: str) -> float | Path:
    """A ``--density`` as given: a number (its range is :func:`~cdism_fast.compress.compress_config`'s to
    check) or an existing density file; anything else is refused."""
    try:
        return float(text)
    except ValueError:
        if Path(text).is_file():
            return Path(text)
        raise ValueError(f"--density {text!r} is neither a number in (0, 1] nor an existing file; pass the "
                         "density.json that `cdism-fast prune` wrote, or a number such as 0.05") from None


def _read_density(density, teacher: nn.Module) -> tuple[float, dict | None]:
    """The density as a number, from a number or a density.json of this very architecture."""
    if isinstance(density, (int, float)) and not isinstance(density, bool):
        return float(density), None
    import reprlib

    path = Path(density)
    if not path.is_file():
        raise FileNotFoundError(f"density file {path} does not exist; pass the density.json that `cdism-fast "
                                "prune` wrote, or a number")
    fix = "pass the density.json that `cdism-fast prune` wrote, unedited, or a number"
    record = read_json(path, "density file", fix)
    try:
        value = record["density"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"'density' is {reprlib.repr(value)}, not a number")
        value = float(value)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a density file written by `cdism-fast prune` ({error!r}); {fix}") from None
    if record.get("model") is not None and record["model"] != model_spec(teacher):
        raise ValueError(f"density file {path} was measured on another model ({record['model']['family']} "
                         f"{record['model']['config']}), not on this teacher ({model_spec(teacher)['config']}); "
                         "pass the density.json of this teacher's pruning run")
    return value, record


@records_failure
def compress(teacher: nn.Module, density, out_dir, options: CompressOptions = CompressOptions(), *,
             resume: bool = False, overwrite: bool = False, inputs: dict | None = None) -> StageResult:
    """Stage 2: the compact student's structure from ``density`` (a number or a density.json) by the rule
    of ``options``.

    Writes ``student.json`` (the student's architecture, usable by :func:`distill`)
    and returns the before/after table in ``extra["table"]`` and the deep-feature
    weight ratio the student realises in ``extra["achieved_density"]``.
    """
    from ...compress import achieved_density, compact_model

    value, record = _read_density(density, teacher)
    if value == 0 and record is not None:
        raise ValueError(f"the pruning run of {density} zeroed every deep-feature weight (d = 0), so no structure "
                         "follows from it; prune again with a smaller --lam (or fewer Prox-SG epochs --n-p)")
    overrides = options.given()
    student = compact_model(teacher, value, **overrides)
    structure = student.structure()
    rows = structure_table({"teacher": teacher, "student": student})
    spec = model_spec(student)
    result = {"density": value, "achieved_density": achieved_density(teacher, student), "overrides": overrides,
              "structure": structure._asdict(),
              "teacher_structure": teacher.structure()._asdict(), "student": spec, "teacher": model_spec(teacher),
              "table": rows, "density_source": str(density) if record is not None else None}

    def write():
        given = {**(inputs or {}), "--density": density if record is not None else None}
        prepare_run_folder(out_dir, "compress", {"density": value, **overrides}, resume=resume, overwrite=overwrite,
                           files=(STUDENT_FILE,), inputs=given)
        write_json(Path(out_dir) / STUDENT_FILE, result)
        mark_stage(out_dir, status="completed", outputs={"student": STUDENT_FILE}, structure=structure._asdict())

    on_main(write)
    return StageResult("completed", Path(out_dir), student, None, extra=result)
