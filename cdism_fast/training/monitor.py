"""What a run records: JSON Lines (always), TensorBoard (when installed), a progress bar."""
from __future__ import annotations

import errno
import json
import math
import os
import stat
import time
from pathlib import Path

from ..safe_io import WriteError, check_target

__all__ = ["RunLog", "read_log", "drop_repeated_records"]


def _json_value(value):
    """Tensors and numpy scalars as plain numbers; NaN/Inf as strings (JSON has no such numbers)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLog:
    """Appends one JSON object per line to ``path``, and mirrors scalars to TensorBoard.

    Each record has ``event`` (``"train"``, ``"validation"``, ...), the
    ``iteration`` and the wall-clock ``time``. TensorBoard event files go to
    ``<folder>/tensorboard`` when ``torch.utils.tensorboard`` can be imported
    (it needs the ``tensorboard`` package); otherwise only the JSON lines are
    written. Lines are flushed at once, so a killed run keeps its log.
    """

    def __init__(self, path, tensorboard: bool = True):
        self.path = check_target(Path(path))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_NONBLOCK: a FIFO put there after the check fails to open instead of waiting for a reader.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
        try:
            descriptor = os.open(self.path, flags, 0o666)
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise WriteError(self.path, error, "nothing was written") from error
            raise FileExistsError(f"{self.path} is a symbolic link; cdism-fast never writes through links: "
                                  "remove it, then resume") from None
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            check_target(self.path)  # raises: it is no regular file
        self._stream = open(descriptor, "a", encoding="utf-8")
        self._board = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self._board = SummaryWriter(str(self.path.parent / "tensorboard"))

    def write(self, event: str, iteration: int, **values) -> dict:
        record = {"event": event, "iteration": iteration, "time": round(time.time(), 3)}
        record.update({key: _json_value(value) for key, value in values.items()})
        try:
            self._stream.write(json.dumps(record) + "\n")
            self._stream.flush()
        except OSError as error:
            raise WriteError(self.path, error, "the records before this one are kept") from error
        if self._board is not None:
            for key, value in record.items():
                if key not in ("event", "iteration", "time") and isinstance(value, (int, float)):
                    self._board.add_scalar(f"{event}/{key}", value, iteration)
        return record

    def close(self) -> None:
        self._stream.close()
        if self._board is not None:
            self._board.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_log(path, event: str | None = None) -> list[dict]:
    """The records of a JSON Lines log, optionally only those of one ``event``.

    A last line cut short by a killed process is ignored.
    """
    records = []
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event is None or record.get("event") == event:
                records.append(record)
    return records


#: Records that describe training progress, which a resumed run writes again.
PROGRESS_EVENTS = ("train", "validation")


def drop_repeated_records(path, iteration: int) -> int:
    """Remove the progress records after ``iteration`` (a resume from there writes them again); returns how many.

    Markers (``start``, ``end``, ``non_finite_loss``) stay: they are the run's
    history. A line cut short by a killed process goes too.
    """
    from ..safe_io import atomic_write

    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if (isinstance(record, dict) and record.get("event") in PROGRESS_EVENTS
                and isinstance(record.get("iteration"), int) and record["iteration"] > iteration):
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        atomic_write(path, "".join(line + "\n" for line in kept).encode("utf-8"))
    return dropped
