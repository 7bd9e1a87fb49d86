"""What the stages leave on disk: model files and run folders.

A model file (``model.pt``) holds the weights under ``params`` (the layout
BasicSR and KAIR use, so :func:`cdism_fast.models.load_pretrained` and other
tools read it too) plus the family and the exact constructor arguments, so
:func:`load_model` rebuilds the same architecture without guessing.

A run folder holds ``stage.json`` (which stage, the command line, the
settings, the status). A folder that holds another run is refused unless the
caller resumes it or asks to overwrite it.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from torch import nn

from ..models import MODEL_FORMAT, build_from_spec, model_spec
from ..models.presets import json_plain as _plain
from .checkpoint import atomic_save

__all__ = ["MODEL_FORMAT", "STAGE_FILE", "save_model", "load_model", "model_spec", "build_from_spec", "command_line",
           "prepare_run_folder", "write_json", "read_stage", "mark_stage"]

STAGE_FILE = "stage.json"


def save_model(path, model: nn.Module, **info) -> Path:
    """Write ``model``'s weights and architecture (and any JSON-able ``info``) atomically to ``path``."""
    state = {key: tensor.detach().cpu() for key, tensor in model.state_dict().items()}
    return atomic_save({"format": MODEL_FORMAT, **model_spec(model), "params": state, "info": _plain(info)}, path)


def load_model(path, name: str | None = None, scale: int | None = None) -> nn.Module:
    """The model in ``path``, in eval mode on the CPU, by :func:`cdism_fast.models.load_pretrained`
    (the one loader of every command): files written by :func:`save_model` are rebuilt exactly,
    options included; other files (EDSR-PyTorch, BasicSR, SwinIR, IMDN, PAN) have their
    architecture inferred, or use preset ``name`` and ``scale``.
    """
    from ..models import load_pretrained

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    return load_pretrained(path, name=name, scale=scale)


def write_json(path, data) -> Path:
    """JSON, written atomically (a report or config is never seen half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(_plain(data), indent=2) + "\n", encoding="utf-8")
    partial.replace(path)
    return path


def command_line() -> list[str]:
    """This process's command line, with the console script's name when it was ``cdism-fast`` or ``-m cdism_fast``."""
    program = Path(sys.argv[0])
    if program.name == "cdism-fast" or program.parts[-2:] == ("cdism_fast", "__main__.py"):
        return ["cdism-fast", *sys.argv[1:]]
    return list(sys.argv)


def read_stage(folder) -> dict | None:
    path = Path(folder) / STAGE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def prepare_run_folder(folder, stage: str, settings: dict, resume: bool = False, overwrite: bool = False) -> dict:
    """Make ``folder`` ready for ``stage``, refusing to mix two runs; returns the stage record.

    * empty or missing: a fresh run;
    * holds a run of this stage: continued with ``resume``, deleted and
      restarted with ``overwrite``, refused otherwise;
    * holds a run of another stage: deleted with ``overwrite``, refused otherwise;
    * holds files that are not a run: always refused (nothing of the user's is deleted).
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: resume continues the run in the folder, "
                         "overwrite deletes it")
    folder = Path(folder)
    record = read_stage(folder) if folder.is_dir() else None
    if folder.is_dir() and any(folder.iterdir()):
        if record is None:
            raise FileExistsError(f"output folder {folder} holds files that are not a cdism-fast run; choose an "
                                  "empty or new folder (nothing was changed)")
        if overwrite:
            shutil.rmtree(folder)
            record = None
        elif not resume:
            raise FileExistsError(f"output folder {folder} holds a {record['stage']!r} run "
                                  f"({record.get('status', 'unknown status')}); pass --resume to continue it or "
                                  "--overwrite to replace it, or choose another --out")
        elif record["stage"] != stage:
            raise FileExistsError(f"output folder {folder} holds a {record['stage']!r} run, not a {stage!r} run; "
                                  "it cannot be resumed as this stage (choose another --out or pass --overwrite)")
    if record is None:
        record = {"stage": stage, "command": command_line(), "settings": settings, "status": "running",
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    else:
        record = {**record, "status": "running", "resumed_with": command_line()}
    write_json(folder / STAGE_FILE, record)
    return record


def mark_stage(folder, **updates) -> dict:
    """Update the stage record (status, outputs, results)."""
    record = {**(read_stage(folder) or {}), **updates}
    write_json(Path(folder) / STAGE_FILE, record)
    return record
