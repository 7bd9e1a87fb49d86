"""What the stages leave on disk: model files and run folders.

A model file (``model.pt``) holds the weights under ``params`` (the layout
BasicSR and KAIR use, so :func:`cdism_fast.models.load_pretrained` and other
tools read it too) plus the family and the exact constructor arguments, so
:func:`read_model_file` rebuilds the same architecture without guessing.

A run folder holds ``stage.json`` (which stage, the command line, the
settings, the status). A folder that holds another run is refused unless the
caller resumes it or asks to overwrite it.
"""
from __future__ import annotations

import atexit
import fnmatch
import functools
import json
import os
import sys
import time
from pathlib import Path

from torch import nn

from ..models import MODEL_FORMAT, ExternalModel, build_from_spec, model_spec
from ..models.presets import json_plain as _plain
from ..safe_io import atomic_write, process_alive, temporary_target
from .checkpoint import atomic_save

__all__ = ["MODEL_FORMAT", "STAGE_FILE", "save_model", "read_model_file", "model_spec", "build_from_spec",
           "command_line", "prepare_run_folder", "write_json", "read_json", "read_stage", "mark_stage",
           "release_run_folder", "records_failure", "one_line", "LOCK_FILE", "RESUMABLE_SETTINGS", "RunFolderLocked",
           "stage_inputs", "data_source"]

STAGE_FILE = "stage.json"


def save_model(path, model: nn.Module, **info) -> Path:
    """Write ``model``'s weights and architecture (and any JSON-able ``info``) atomically to ``path``.

    An :class:`~cdism_fast.models.ExternalModel` (a pruned spandrel teacher) keeps what was detected under
    ``external`` and its network's tensors in the network's own names under ``params``, so the loader that
    detected it detects it again."""
    if isinstance(model, ExternalModel):
        state = {key: tensor.detach().cpu() for key, tensor in model.model.state_dict().items()}
        return atomic_save({"format": MODEL_FORMAT, "external": _plain(model.record()), "params": state,
                            "info": _plain(info)}, path)
    state = {key: tensor.detach().cpu() for key, tensor in model.state_dict().items()}
    return atomic_save({"format": MODEL_FORMAT, **model_spec(model), "params": state, "info": _plain(info)}, path)


def read_model_file(path, name: str | None = None, scale: int | None = None) -> nn.Module:
    """The model in the file ``path``, in eval mode on the CPU, by :func:`cdism_fast.models.load_pretrained`
    (the one loader of every command): files written by :func:`save_model` are rebuilt exactly,
    options included; other files (EDSR-PyTorch, BasicSR, SwinIR, IMDN, PAN, CARN) have their
    architecture inferred, or use preset ``name`` and ``scale``. A model named on the command line
    (a file, a shipped model or a preset) is :func:`cdism_fast.evaluation.load_model`'s.
    """
    from ..models import load_pretrained

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    return load_pretrained(path, name=name, scale=scale)


def write_json(path, data) -> Path:
    """JSON, written atomically (a report or config is never seen half-written, a planted link never followed)."""
    return atomic_write(path, (json.dumps(_plain(data), indent=2) + "\n").encode("utf-8"))


def read_json(path, what: str = "file", fix: str = "it was edited or damaged: restore it or remove the folder"):
    """The JSON in ``path`` (None when absent); damaged or odd content is one short line naming the file, then
    ``fix``."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:
        if isinstance(error, RecursionError):
            reason = "it is nested too deeply"
        elif isinstance(error, UnicodeDecodeError):  # its str() holds no content, its repr() the whole file
            reason = f"it is not UTF-8 text: {error.reason} at byte {error.start}"
        else:
            reason = str(error).splitlines()[0]
        raise ValueError(f"{what} {path} is not valid JSON ({reason}); {fix}") from None


def command_line() -> list[str]:
    """This process's command line, with the console script's name when it was ``cdism-fast`` or ``-m cdism_fast``."""
    program = Path(sys.argv[0])
    if program.name == "cdism-fast" or program.parts[-2:] == ("cdism_fast", "__main__.py"):
        return ["cdism-fast", *sys.argv[1:]]
    return list(sys.argv)


def read_stage(folder) -> dict | None:
    """The stage record of a run folder (None when it has none); a damaged one raises a ValueError naming it."""
    path = Path(folder) / STAGE_FILE
    record = read_json(path, "stage record")
    if record is None:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("stage"), str):
        raise ValueError(f"stage record {path} does not describe a cdism-fast stage (no 'stage' name); it was "
                         "edited or damaged: restore it or remove the folder")
    return record


# ------------------------------------------------------------------------------------------ run folders
def stage_inputs(data, val, given: dict | None) -> dict:
    """``{option: path}`` of what a stage reads (``--overwrite`` never deletes them)."""
    vals = [val] if isinstance(val, (str, Path)) else list(val or ())
    folders = list(data) if isinstance(data, (list, tuple)) else [data]
    folders = {"--data": folders[0]} if len(folders) == 1 else {f"--data {d}": d for d in folders}
    return {**folders, **{f"--val {v}": v for v in vals}, **(given or {})}


def data_source(path) -> str | list[str] | None:
    """A data folder (or list of folders) as recorded in ``stage.json`` (absolute, so that a resume from
    elsewhere compares equal)."""
    if isinstance(path, (list, tuple)):
        return [str(Path(p).resolve()) for p in path] if len(path) > 1 else data_source(path[0])
    return str(Path(path).resolve()) if path is not None else None


#: Written while a process writes a run folder: its PID (see :func:`prepare_run_folder`).
LOCK_FILE = ".cdism-fast.lock"
#: Settings that a resumed run may change; any other change is refused (it would change what the run means).
RESUMABLE_SETTINGS = frozenset({"iterations", "lr", "milestones", "gamma", "num_workers", "checkpoint_every",
                                "validate_every", "log_every", "progress", "amp", "channels_last", "compile", "val"})
#: The setting of a ``run`` that holds the options given to it (None: the preset's): a resume compares them one
#: by one, like the stages' own settings, and keeps them as first recorded (allowed changes go under ``resumes``).
OPTIONS_SETTING = "overrides"
_FINAL_STATUSES = ("completed", "interrupted", "failed", "stopped")
#: Run folders this process holds the lock of.
_locked: set[Path] = set()


class RunFolderLocked(FileExistsError):
    """Another live process writes this run folder."""


def _lock_owner(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _lock(folder: Path) -> bool:
    """Take the lock of ``folder``; False when this process holds it already."""
    path = folder / LOCK_FILE
    if folder.resolve() in _locked:
        return False
    for _ in range(3):
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except FileExistsError:
            owner = _lock_owner(path)
            if owner is not None and owner != os.getpid() and process_alive(owner):
                raise RunFolderLocked(f"output folder {folder} is being written by process {owner} (lock file "
                                      f"{path}); wait for it to finish or stop it, or choose another --out") from None
            path.unlink(missing_ok=True)  # its process is gone: a stale lock
            continue
        with open(descriptor, "w", encoding="utf-8") as stream:
            stream.write(f"{os.getpid()}\n")
        _locked.add(folder.resolve())
        return True
    raise RunFolderLocked(f"could not take the lock {path}; another process keeps taking it: choose another --out")


def release_run_folder(folder) -> None:
    """Remove this process's lock of ``folder`` (nothing when it holds none)."""
    folder = Path(folder)
    key = folder.resolve()
    if key not in _locked:
        return
    _locked.discard(key)
    path = folder / LOCK_FILE
    if _lock_owner(path) == os.getpid():
        path.unlink(missing_ok=True)


@atexit.register
def _release_all() -> None:
    for folder in list(_locked):
        release_run_folder(folder)


def _owned(relative: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(relative, pattern) for pattern in patterns)


def _removal_plan(folder: Path, record: dict, files) -> tuple[list[Path], list[Path]]:
    """(the files of the run in ``folder``, anything else in it), sub-runs included."""
    patterns = (STAGE_FILE, LOCK_FILE, *(record.get("files") or files))
    runs = set(record.get("runs") or ())
    ours, foreign = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name in runs and entry.is_dir() and not entry.is_symlink():
            sub_record = read_stage(entry)
            if sub_record is None:
                (foreign.extend(entry.iterdir()) if any(entry.iterdir()) else ours.append(entry))
                continue
            owner = _lock_owner(entry / LOCK_FILE)
            if owner is not None and owner != os.getpid() and process_alive(owner):
                raise RunFolderLocked(f"{entry} is being written by process {owner}; wait for it to finish or "
                                      "stop it (nothing was changed)")
            sub_ours, sub_foreign = _removal_plan(entry, sub_record, ())
            ours += sub_ours + ([] if sub_foreign else [entry])
            foreign += sub_foreign
            continue
        if entry.is_dir() and not entry.is_symlink():
            files = [c for c in entry.rglob("*") if c.is_symlink() or not c.is_dir()]  # links are files here
            mine = [c for c in files if _owned(c.relative_to(folder).as_posix(), patterns)]
            other = [c for c in files if c not in mine]
            ours += mine
            foreign += other
            if not other:
                ours.append(entry)
            continue
        relative = entry.name
        temporary = temporary_target(relative)
        if _owned(relative, patterns) or (temporary is not None and _owned(temporary, patterns)):
            ours.append(entry)
        else:
            foreign.append(entry)
    return ours, foreign


def _remove(paths: list[Path]) -> None:
    """Files (and links) first, then the folders they leave empty, deepest first."""
    for path in paths:
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
    for path in sorted((p for p in paths if p.is_dir() and not p.is_symlink()), key=lambda p: -len(p.parts)):
        for child in sorted(path.rglob("*"), key=lambda p: -len(p.parts)):
            if child.is_dir() and not child.is_symlink():
                child.rmdir()  # only folders emptied above; a foreign file left in one was refused before
        path.rmdir()


def _listing(paths: list[Path], folder: Path, limit: int = 5) -> str:
    names = [p.relative_to(folder).as_posix() for p in paths[:limit]]
    return ", ".join(names) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _inside(path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


#: The recorded fingerprints, and what changed when one differs (their values mean nothing to a reader).
_FINGERPRINTS = {"teacher_weights": "another --teacher, or its weights changed",
                 "data_fingerprint": "images added to, removed from or replaced in the --data folders"}


def _shown_change(key: str, old, new) -> str:
    if key in _FINGERPRINTS:
        return f"{key} changed: {_FINGERPRINTS[key]}"
    old, new = ("the preset's" if value is None else repr(value) for value in (old, new))
    return f"{key} was {old}, now {new}"


def _resume_changes(folder: Path, record: dict, settings: dict) -> dict:
    """{setting: [old, new]} of the settings that changed (a run's options one by one); refuses those a resume
    may not change."""
    saved, settings = record.get("settings") or {}, _plain(settings)
    changed = {key: [saved[key], value] for key, value in settings.items()
               if key in saved and key != OPTIONS_SETTING and saved[key] != value}
    if isinstance(saved.get(OPTIONS_SETTING), dict) and isinstance(settings.get(OPTIONS_SETTING), dict):
        old, new = saved[OPTIONS_SETTING], settings[OPTIONS_SETTING]
        changed.update({key: [old.get(key), new.get(key)] for key in sorted({*old, *new})
                        if old.get(key) != new.get(key)})
    refused = sorted(key for key in changed if key not in RESUMABLE_SETTINGS)
    if refused:
        details = "; ".join(_shown_change(key, *changed[key]) for key in refused)
        raise ValueError(f"cannot resume the run in {folder} with other settings ({details}): that would change what "
                         "it trains; resume with the original values, or pass --overwrite to start over")
    return changed


def prepare_run_folder(folder, stage: str, settings: dict, resume: bool = False, overwrite: bool = False,
                       files=(), runs=(), inputs: dict | None = None) -> dict:
    """Make ``folder`` ready for ``stage``, refusing to mix two runs; returns the stage record.

    ``files``: the names (glob patterns, relative to ``folder``) that the stage
    writes; ``runs``: its sub-folders that hold runs of their own; both are kept
    in ``stage.json``, and ``overwrite`` removes exactly those (and refuses,
    naming them, when anything else is there). ``inputs``: ``{option: path}``
    of the files the run reads, which ``overwrite`` refuses to delete.

    * empty or missing: a fresh run;
    * holds a run of this stage: continued with ``resume`` (settings outside
      :data:`RESUMABLE_SETTINGS` must be unchanged; those inside are recorded
      under ``resumes``), replaced with ``overwrite``, refused otherwise;
    * holds a run of another stage: replaced with ``overwrite``, refused otherwise;
    * holds files that are not a run: always refused (nothing of the user's is deleted).

    The folder is locked (:data:`LOCK_FILE`) until the stage is marked
    finished: a second process is refused, naming the first one's PID; the lock
    of a process that no longer runs is taken over. Temporary files left by a
    killed process are removed.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: resume continues the run in the folder, "
                         "overwrite deletes it")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"--out {folder} is a file, not a folder; choose a folder (nothing was changed)")
    record = read_stage(folder) if folder.is_dir() else None
    contents = [p for p in folder.iterdir() if p.name != LOCK_FILE] if folder.is_dir() else []
    if contents and record is None:
        raise FileExistsError(f"output folder {folder} holds files that are not a cdism-fast run; choose an "
                              "empty or new folder (nothing was changed)")
    if record is not None:
        if overwrite:
            inside = {option: path for option, path in (inputs or {}).items()
                      if path is not None and _inside(path, folder)}
            if inside:
                option, path = next(iter(inside.items()))
                raise FileExistsError(f"--overwrite would delete {path} ({option}), an input of this run that lies "
                                      f"inside the output folder {folder}; move it out or choose another --out "
                                      "(nothing was changed)")
        elif not resume:
            state = record.get("status", "unknown status")
            if state == "failed" and record.get("error"):
                state = f"failed: {record['error']}"
            raise FileExistsError(f"output folder {folder} holds a {record['stage']!r} run ({state}); pass --resume "
                                  "to continue it or --overwrite to replace it, or choose another --out")
        elif record["stage"] != stage:
            raise FileExistsError(f"output folder {folder} holds a {record['stage']!r} run, not a {stage!r} run; "
                                  "it cannot be resumed as this stage (choose another --out or pass --overwrite)")
    folder.mkdir(parents=True, exist_ok=True)
    acquired = _lock(folder)
    try:
        if record is not None and overwrite:
            ours, foreign = _removal_plan(folder, record, files)
            if foreign:
                raise FileExistsError(f"--overwrite refused: output folder {folder} also holds "
                                      f"{_listing(foreign, folder)}, which cdism-fast did not write; move "
                                      "them out or choose another --out (nothing was changed)")
            _remove([p for p in ours if p != folder / LOCK_FILE])
            record = None
        elif record is not None:
            ours, _ = _removal_plan(folder, record, files)
            _remove([p for p in ours if temporary_target(p.name) is not None and not p.is_dir()])  # a killed run's
        if record is None:
            record = {"stage": stage, "command": command_line(), "settings": _plain(settings), "status": "running",
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": list(files), "runs": list(runs)}
        else:
            changed = _resume_changes(folder, record, settings)
            resumes = [*record.get("resumes", []), {"command": command_line(), "changed": changed}]
            kept = {key: value for key, value in record.get("settings", {}).items() if key == OPTIONS_SETTING}
            record = {**record, "settings": {**record.get("settings", {}), **_plain(settings), **kept},
                      "status": "running", "resumed_with": command_line(), "resumes": resumes,
                      "files": record.get("files") or list(files), "runs": record.get("runs") or list(runs)}
            record.pop("error", None)
        write_json(folder / STAGE_FILE, record)
    except BaseException:
        if acquired:
            release_run_folder(folder)
        raise
    return record


def mark_stage(folder, **updates) -> dict:
    """Update the stage record (status, outputs, results); a finished status releases the folder's lock."""
    record = {**(read_stage(folder) or {}), **updates}
    write_json(Path(folder) / STAGE_FILE, record)
    if updates.get("status") in _FINAL_STATUSES:
        release_run_folder(folder)
    return record


def one_line(error: BaseException) -> str:
    """An error as the one line the command line prints."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines) if lines else type(error).__name__


def records_failure(function):
    """Decorate a stage function: every run folder it prepared is marked ``failed`` (with the message) when it
    stops on an error, and its lock released on every exit."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        before = set(_locked)
        try:
            return function(*args, **kwargs)
        except BaseException as error:  # Ctrl-C outside the training loop's handler: "interrupted"
            failed = isinstance(error, Exception)
            for folder in set(_locked) - before:
                try:
                    record = read_stage(folder)
                    if record is not None and record.get("status") == "running":
                        mark_stage(folder, **({"status": "failed", "error": one_line(error)} if failed
                                              else {"status": "interrupted"}))
                except (OSError, ValueError):  # the folder cannot even be written: the message says why
                    pass
            raise
        finally:
            for folder in set(_locked) - before:
                release_run_folder(folder)

    return wrapper
