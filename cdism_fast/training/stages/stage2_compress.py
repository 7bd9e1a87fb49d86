"""Stage 2: the compact student's structure from the density (the paper's eqs. 5-7)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from torch import nn

from ...models import FAMILIES, model_record
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
    student_family: Optional[str] = setting(
        None, choices=tuple(FAMILIES),
        help="family of the compressed student (unset: the teacher's; required for a teacher of no family here, "
             "e.g. a spandrel file); another family than the teacher's gets the structure whose weights are closest "
             "to d times the teacher's")
    params: Optional[int] = setting(None, help="the student's size: the structure whose parameter count is closest "
                                               "to this (unset: from the density)", unit="parameters")

    def __post_init__(self):
        if self.student_family is not None and self.student_family not in FAMILIES:
            raise ValueError(f"--student-family must be one of {', '.join(FAMILIES)}, got {self.student_family!r}")
        if self.params is not None and (isinstance(self.params, bool) or not isinstance(self.params, int)
                                        or self.params < 1):
            raise ValueError(f"--params must be a positive number of parameters, got {self.params!r}")

    def given(self) -> dict:
        """The keywords that were set."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    def rule(self) -> dict:
        """The keywords of the structure rule (:func:`~cdism_fast.compress.compress_config`'s) that were set."""
        return {key: value for key, value in self.given().items() if key not in ("student_family", "params")}


def check_student_family(teacher: nn.Module, options: CompressOptions, option: str = "--teacher") -> None:
    """A teacher of no family here (an external model) needs the student's family named, before any work."""
    from ...models import FAMILIES, SRModel, model_record

    if options.student_family is None and not isinstance(teacher, SRModel):
        arch = model_record(teacher).get("architecture", {}).get("name") or type(teacher).__name__
        raise ValueError(f"the {option} model ({arch}) is of no cdism_fast family, so stage 2 cannot shrink its own "
                         f"structure: pass --student-family with one of {', '.join(FAMILIES)} (nothing was written)")


def student_for(teacher: nn.Module, density: float, options: CompressOptions) -> tuple[nn.Module, dict]:
    """(the untrained student, how its size was chosen): the density rule on the teacher's own structure for a
    student of the teacher's family, else (another family, or ``params``) the structure whose size is closest
    to the target (:func:`~cdism_fast.compress.student_of_size`)."""
    from ...compress import achieved_density, compact_model, parameter_count, student_of_size, weight_count
    from ...models import SRModel

    check_student_family(teacher, options)
    own = isinstance(teacher, SRModel) and options.student_family in (None, teacher.family)
    overrides = options.rule()
    if own and options.params is None:
        student = compact_model(teacher, density, **overrides)
        return student, {"rule": "density rule on the teacher's structure (eqs. 5-7)",
                         "achieved_density": achieved_density(teacher, student)}
    if options.params is not None:
        target, measure = options.params, "params"
    else:
        target, measure = density * weight_count(teacher), "weights"
    student = student_of_size(teacher if own else options.student_family, target, measure, scale=teacher.scale,
                              **overrides)
    size = parameter_count if measure == "params" else weight_count
    return student, {"rule": f"the {student.family} structure whose {measure} are closest to the target",
                     "measure": measure, "target": target, "student_size": size(student),
                     "achieved_density": weight_count(student) / weight_count(teacher)}


def structure_table(models: dict[str, nn.Module]) -> list[dict]:
    """Rows of structure, parameters and FLOPs (MACs at 1280×720 output, see :func:`flops_size` at ×3) for each
    named model; a model of no family (an external teacher) has no structure, and None FLOPs where they cannot
    be counted on meta tensors."""
    from ...models import SRModel, count_flops, count_params

    rows = []
    for name, model in models.items():
        structure = model.structure() if isinstance(model, SRModel) else None
        try:
            flops = count_flops(model, out_hw=flops_size(model.scale))
        except Exception:  # an external architecture that does not run on meta tensors
            if isinstance(model, SRModel):
                raise
            flops = {"total": None, "total_without_attention": None}
        rows.append({"model": name, "n_b": structure and structure.n_b, "n_l": structure and structure.n_l,
                     "n_c": structure and structure.n_c, "params": count_params(model), "flops": flops["total"],
                     "flops_without_attention": flops["total_without_attention"]})
    return rows


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of :func:`structure_table` rows (params in K, FLOPs in G)."""
    def shown(value) -> str:
        return "-" if value is None else str(value)

    lines = [f"{'model':<14} {'N_b':>4} {'N_l':>4} {'N_c':>5} {'params':>11} {'FLOPs@720p':>12}"]
    for row in rows:
        flops = "-" if row["flops"] is None else f"{row['flops'] / 1e9:.2f}G"
        lines.append(f"{row['model']:<14} {shown(row['n_b']):>4} {shown(row['n_l']):>4} {shown(row['n_c']):>5} "
                     f"{row['params'] / 1e3:>10.1f}K {flops:>12}")
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


def _shown_model(record) -> str:
    if not isinstance(record, dict):
        return repr(record)
    if "family" in record:
        return f"{record['family']} {record.get('config')}"
    arch = record.get("architecture") or {}
    return f"{record.get('external', 'external')} {arch.get('name', record.get('module', '?'))} ×{record.get('scale')}"


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
    if record.get("model") is not None and record["model"] != model_record(teacher):
        raise ValueError(f"density file {path} was measured on another model ({_shown_model(record['model'])}), "
                         f"not on this teacher ({_shown_model(model_record(teacher))}); pass the density.json of "
                         "this teacher's pruning run")
    return value, record


@records_failure
def compress(teacher: nn.Module, density, out_dir, options: CompressOptions = CompressOptions(), *,
             resume: bool = False, overwrite: bool = False, inputs: dict | None = None) -> StageResult:
    """Stage 2: the compact student's structure from ``density`` (a number or a density.json; None when
    ``options.params`` names the size) by the rule of ``options``: eqs. 5-7 on the teacher's structure for a
    student of its family, else the structure of ``options.student_family`` (required for a teacher of no
    family, e.g. a spandrel file) whose weights are closest to d times the teacher's, or whose parameters are
    closest to ``options.params``.

    Writes ``student.json`` (the student's architecture, usable by :func:`distill`)
    and returns the before/after table in ``extra["table"]`` and the deep-feature
    weight ratio the student realises in ``extra["achieved_density"]``.
    """
    from ...models import SRModel

    check_student_family(teacher, options)
    if density is None and options.params is None:
        raise ValueError("stage 2 needs the density (--density: the density.json of `cdism-fast prune`, or a number) "
                         "or the student's size (--params N)")
    value, record = _read_density(density, teacher) if density is not None else (None, None)
    if value == 0 and record is not None and options.params is None:
        raise ValueError(f"the pruning run of {density} zeroed every deep-feature weight (d = 0), so no structure "
                         "follows from it; prune again with a smaller --lam (or fewer Prox-SG epochs --n-p)")
    overrides = options.given()
    student, chosen = student_for(teacher, value, options)
    structure = student.structure()
    rows = structure_table({"teacher": teacher, "student": student})
    spec = model_spec(student)
    result = {"density": value, "achieved_density": chosen.pop("achieved_density"), "overrides": overrides,
              "structure": structure._asdict(), "size_rule": chosen,
              "teacher_structure": teacher.structure()._asdict() if isinstance(teacher, SRModel) else None,
              "student": spec, "teacher": model_record(teacher),
              "table": rows, "density_source": str(density) if record is not None else None}

    def write():
        given = {**(inputs or {}), "--density": density if record is not None else None}
        prepare_run_folder(out_dir, "compress", {"density": value, **overrides, "teacher": model_record(teacher)},
                           resume=resume, overwrite=overwrite,
                           files=(STUDENT_FILE,), inputs=given)
        write_json(Path(out_dir) / STUDENT_FILE, result)
        mark_stage(out_dir, status="completed", outputs={"student": STUDENT_FILE}, structure=structure._asdict())

    on_main(write)
    return StageResult("completed", Path(out_dir), student, None, extra=result)
