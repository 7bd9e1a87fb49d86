"""Write a trained model for use outside cdism_fast: safetensors, ``.pth`` in the official layout, or ONNX.

* ``safetensors``: the state dict (shared tensors handled), with the model's
  class name and scale in the file's metadata.
* ``pth``: ``torch.save({"params": weights})``, the layout BasicSR, KAIR and
  Real-ESRGAN write and load, with the weights in the layout of the family's
  published files (:meth:`SRModel.official_state_dict
  <cdism_fast.models.SRModel.official_state_dict>`: SwinIR adds the index and
  mask buffers the official files hold). spandrel, the model loader of chaiNNer
  and ComfyUI, unwraps ``params`` and detects the families that declare a
  ``spandrel_architecture`` (Compact, SwinIR); :func:`spandrel_note` says what
  it makes of a model's file.
* ``pth-native`` (only by name, never from a suffix): ``{"params": state_dict}``,
  the model's own state dict, what ``pth`` wrote before (SwinIR: without the
  buffers, so spandrel cannot open it).
* ``onnx``: the model traced with torch's ONNX exporter, input ``lr`` and
  output ``sr`` (N, 3, H, W) with dynamic batch, height and width (height
  and width fixed to ``input_size`` with ``dynamic=False``). The package's fused ops run their
  reference formulation while exporting, so no custom kernel ends up in the
  graph.

Every file carries the mark :data:`WRITTEN_BY` (safetensors and ONNX metadata,
a top-level key of the ``.pth`` dict beside ``params``), which :func:`written_by_export` reads:
``cdism-fast export`` replaces a file without ``--force`` only when it has it.
The file is made in memory or in a private temporary folder and written with
:func:`cdism_fast.safe_io.atomic_write` (a link at ``path`` is replaced, the
mode follows the umask).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from .models import SRModel
from .safe_io import WriteError, atomic_write, read_torch_file

__all__ = ["EXPORT_FORMATS", "WRITTEN_BY", "export", "format_for", "spandrel_note", "written_by_export"]

#: Format -> the file suffixes that select it (``pth-native`` is chosen by name only).
EXPORT_FORMATS = {"safetensors": (".safetensors",), "pth": (".pth", ".pt"), "pth-native": (), "onnx": (".onnx",)}
#: The formats written with torch.save as ``{"params": ..., "written_by": ...}``.
PTH_FORMATS = ("pth", "pth-native")
#: (key, value) of the mark every exported file carries.
WRITTEN_BY = ("written_by", "cdism-fast export")
#: Torch-internal deprecation noise that torch.export prints on every ONNX export.
_TRACE_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


def format_for(path: Path, format: str | None, format_name: str = "format=") -> str:
    if format is None:
        for name, suffixes in EXPORT_FORMATS.items():
            if path.suffix.lower() in suffixes:
                return name
        raise ValueError(f"cannot tell the export format from {path.name}; name the file *.safetensors, *.pth "
                         f"or *.onnx, or pass {format_name} (one of {', '.join(EXPORT_FORMATS)})")
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; use one of {', '.join(EXPORT_FORMATS)}")
    return format


def onnx_opsets() -> range:
    """The ONNX opsets the installed torch exporter writes."""
    from torch.onnx import _constants

    return range(_constants.ONNX_MIN_OPSET, _constants.ONNX_MAX_OPSET + 1)


def check_onnx_settings(input_size, opset, dynamic: bool, names: tuple[str, str] = ("input_size", "opset")) -> None:
    """Refuse an example size or opset the exporter cannot use, naming them as ``names`` (size, opset)."""
    least = 2 if dynamic else 1  # torch.export fixes a dimension whose example size is 1
    if (len(input_size) != 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < least
                                    for n in input_size)):
        raise ValueError(f"{names[0]} must be a height and width of at least {least} pixels"
                         + ("" if least == 1 else " (1 only for a fixed size)")
                         + f", got {' '.join(map(str, input_size))}")
    opsets = onnx_opsets()
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in opsets:
        raise ValueError(f"{names[1]} must be an ONNX opset from {opsets.start} to {opsets.stop - 1} (what this "
                         f"torch exports), got {opset}")


@contextlib.contextmanager
def _reference_ops() -> Iterator[None]:
    # CDISM_BACKEND is the ops' global backend switch: while tracing, every
    # fused op runs its plain-PyTorch reference formulation, which ONNX can express.
    previous = os.environ.get("CDISM_BACKEND")
    os.environ["CDISM_BACKEND"] = "reference"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["CDISM_BACKEND"]
        else:
            os.environ["CDISM_BACKEND"] = previous


def _has_free_size(program: torch.export.ExportedProgram) -> bool:
    """Whether the traced image input kept symbolic height and width."""
    name = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
    return not any(is_concrete_int(size) for size in node.meta["val"].shape[2:])


def _written_in_private_folder(write: Callable[[Path], None], target: Path) -> bytes:
    """The bytes a library writes only to a named file (``write(path)``), made in a fresh private folder;
    a failure of that folder's file system is a :class:`WriteError` naming ``target``."""
    try:
        with tempfile.TemporaryDirectory(prefix="cdism-fast-export-") as folder:
            path = Path(folder) / target.name
            write(path)
            return path.read_bytes()
    except OSError as error:
        if error.errno is None:
            raise
        raise WriteError(target, error, f"nothing of it was written; it is made in {tempfile.gettempdir()} "
                                        "first: set TMPDIR to use another folder") from error


def _export_onnx(model: nn.Module, path: Path, input_size: tuple[int, int], opset: int, dynamic: bool) -> bytes:
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as error:
        raise RuntimeError(f"ONNX export needs the onnx and onnxscript packages ({error}); "
                           "run: pip install onnx onnxscript") from error
    device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    # Batch 2: torch.export fixes a dimension whose example size is 1.
    example = torch.rand(2, 3, *input_size, device=device)
    # AUTO lets torch.export keep a size free wherever the model allows it
    # (and infer its range) instead of failing on the first guard.
    free = {0: torch.export.Dim.AUTO}
    if dynamic:
        free.update({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO})
    was_training = model.training
    model.eval()
    # The exporter logs progress and irrelevant registry notes at WARNING level, and onnxscript a
    # failed opset conversion with its traceback (the opset check below reports that in one line).
    exporter_logs = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [log.level for log in exporter_logs]
    for log in exporter_logs:
        log.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), _reference_ops(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", _TRACE_WARNING, FutureWarning)
            # Tracing first, separately: the ONNX exporter would otherwise fall
            # back to other tracers that may fix the input size silently.
            hint = ("export a fixed input size instead (cdism-fast export --static --input-size H W) and run "
                    "it on tiles of that size")
            try:
                # Given by position, because the forward argument may have any name.
                program = torch.export.export(model, (example,), dynamic_shapes=(free,), strict=False)
            except Exception as error:
                raise RuntimeError(f"torch.export could not trace {type(model).__name__} on a "
                                   f"{tuple(example.shape)} input: {type(error).__name__}: "
                                   f"{str(error).splitlines()[0]}" + (f"; {hint}" if dynamic else "")) from error
            if dynamic and not _has_free_size(program):
                raise RuntimeError(f"{type(model).__name__} fixes the input height or width while tracing, so it "
                                   f"cannot be exported with a free size; {hint}")
            data = _written_in_private_folder(
                lambda file: torch.onnx.export(program, f=str(file), input_names=["lr"], output_names=["sr"],
                                               opset_version=opset, external_data=False, verbose=False),
                path)
    finally:
        for log, level in zip(exporter_logs, levels):
            log.setLevel(level)
        model.train(was_training)
    import onnx

    proto = onnx.load_from_string(data)
    written = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    if written != opset:
        raise ValueError(f"the ONNX converter cannot turn {type(model).__name__} into opset {opset} (torch "
                         f"exported opset {written}); ask for an opset from {written} to "
                         f"{onnx_opsets().stop - 1} (nothing was written)")
    mark = proto.metadata_props.add()
    mark.key, mark.value = WRITTEN_BY
    return proto.SerializeToString()


def written_by_export(path, format: str | None = None) -> bool:
    """Whether the regular file ``path`` is an export of ``format`` (default: from its suffix) with the mark."""
    path = Path(path)
    try:
        format = format_for(path, format)
        if format == "safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as opened:
                metadata = opened.metadata() or {}
            return metadata.get(WRITTEN_BY[0]) == WRITTEN_BY[1]
        if format in PTH_FORMATS:
            content = read_torch_file(path, "exported model")
            return isinstance(content, dict) and content.get(WRITTEN_BY[0]) == WRITTEN_BY[1]
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return any((entry.key, entry.value) == WRITTEN_BY for entry in proto.metadata_props)
    except Exception:  # any file that cannot be read as an export is not one
        return False


def spandrel_note(model: nn.Module, format: str) -> str | None:
    """What spandrel (the model loader of chaiNNer and ComfyUI) makes of ``model`` exported as ``format``:
    the architecture and scale it opens it as, or why it does not; None for ONNX and for a model of no family.
    What it says is checked against spandrel itself by ``tests/test_spandrel_export.py``."""
    if format not in EXPORT_FORMATS or format == "onnx" or not isinstance(model, SRModel):
        return None
    architecture = model.spandrel_architecture
    if architecture is None:
        return (f"spandrel does not know {type(model).__name__} models (chaiNNer and ComfyUI cannot open it); "
                "cdism_fast.models.load_pretrained can")
    written = model.official_state_dict() if format == "pth" else model.state_dict()
    if set(model.official_state_dict()) - set(written):
        return (f"spandrel cannot open it: it lacks the buffers of the official {architecture} files "
                "(--format pth writes them)")
    mismatch = model.spandrel_mismatch()
    if mismatch is not None:
        return f"spandrel detects it as {architecture} but would build another network: {mismatch}"
    return f"spandrel (chaiNNer, ComfyUI) opens it as {architecture} ×{model.scale}"


def export(model: nn.Module, path, format: str | None = None, scale: int | None = None,
           input_size: tuple[int, int] = (64, 64), opset: int = 18, dynamic: bool = True) -> Path:
    """Write ``model`` to ``path`` as ``format`` (default: from the file suffix) and return the path.

    ``scale`` is recorded in the safetensors metadata. ``pth`` holds the weights in the layout of the
    family's published files (see the module docs), ``pth-native`` the model's own state dict. For ONNX, ``input_size``
    is the (height, width) of the example input traced; the batch size is
    free, and so are height and width with ``dynamic``.
    """
    path = Path(path)
    format = format_for(path, format)
    if format == "onnx":
        check_onnx_settings(input_size, opset, dynamic)
    if format == "safetensors":
        from safetensors.torch import save_model

        metadata = {"format": "pt", "arch": type(model).__name__, WRITTEN_BY[0]: WRITTEN_BY[1]}
        if scale is not None:
            metadata["scale"] = str(scale)
        data = _written_in_private_folder(lambda file: save_model(model, str(file), metadata=metadata), path)
    elif format in PTH_FORMATS:
        weights = model.official_state_dict() if format == "pth" and isinstance(model, SRModel) else model.state_dict()
        state = {key: value.detach().cpu() for key, value in weights.items()}
        buffer = io.BytesIO()
        torch.save({"params": state, WRITTEN_BY[0]: WRITTEN_BY[1]}, buffer)
        data = buffer.getvalue()
    else:
        data = _export_onnx(model, path, input_size, opset, dynamic)
    return atomic_write(path, data)
