"""Image files in and out: one loader, one writer, one float-to-uint8 rule.

Every image is handed to the rest of the package as an RGB uint8 tensor of
shape (3, H, W). Greyscale files are replicated to three channels (what
BasicSR's colour reads and the published evaluations do, e.g. Set14
``bridge.png``); 16-bit files keep their high byte and alpha channels are
dropped. Those last two conversions lose information, so each kind is reported
once per process with the first file it happened to. The EXIF orientation of a
photograph is applied, as image viewers do: a picture taken with the camera
turned is read upright (and :func:`image_size` gives its upright size).
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from ..safe_io import atomic_write

__all__ = ["IMAGE_EXTENSIONS", "list_images", "read_image", "image_size", "check_image", "image_text", "to_uint8",
           "write_image"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_reported_conversions: set[str] = set()
_ORIENTATION_TAG = 0x0112
#: EXIF orientation → the transposition that makes the image upright (orientation 1: none).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
_SIDEWAYS = {5, 6, 7, 8}  # width and height swap


def _report_once(kind: str, message: str) -> None:
    if kind not in _reported_conversions:
        _reported_conversions.add(kind)
        warnings.warn(message + " (said once; later files are converted the same way silently)", stacklevel=3)


def list_images(folder) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist or is not a folder; "
                                "pass the folder that holds the images")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise ValueError(f"folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                         "point it at a folder of image files")
    return paths


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        return Image.open(path)
    except Image.DecompressionBombError as error:
        raise ValueError(f"image {path} is refused: {str(error).rstrip('.')} (a file this large is likely a "
                         "decompression bomb); "
                         "use a smaller image, or split it") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}; replace the file or remove it from the folder") from error


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 when absent, unreadable or out of range: the pixels are then taken as stored)."""
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # Pillow raises several kinds for damaged EXIF blocks
        return 1
    return orientation if orientation in _UPRIGHT else 1


def image_size(path) -> tuple[int, int]:
    """(height, width) of an image file as it is read (upright), from its header without decoding."""
    with _open(Path(path)) as image:
        width, height = image.size
        if _orientation(image) in _SIDEWAYS:
            width, height = height, width
    return height, width


def check_image(path) -> None:
    """Refuse (``ValueError`` naming the file) an image file whose header or, where the format has them,
    checksums are broken, without decoding its pixels."""
    path = Path(path)
    with _open(path) as image:
        try:
            image.verify()
        except (OSError, SyntaxError, ValueError) as error:
            raise ValueError(f"cannot decode image {path} (truncated or corrupt: {error}); "
                             "replace the file or remove it from the folder") from error


def image_text(path) -> dict[str, str]:
    """The text entries of a PNG file (``{}`` for other files and formats)."""
    try:
        with Image.open(path) as image:
            return dict(getattr(image, "text", {}) or {})
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return {}


def _is_16_bit(image: Image.Image) -> bool:
    # Pillow opens 16-bit RGB as mode "RGB" (it keeps the high byte); only the
    # raw mode of the decoder tile tells that the file had 16 bits.
    return image.mode.startswith("I;16") or image.mode == "I" or any(
        ";16" in str(tile.args) for tile in getattr(image, "tile", []) or [])


def read_image(path) -> torch.Tensor:
    """Decode an image file into an RGB uint8 tensor of shape (3, H, W).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming
    the file when it is not an image, truncated or of an unsupported kind.
    """
    path = Path(path)
    with _open(path) as image:
        sixteen_bit = _is_16_bit(image)
        try:
            image.load()
        except Image.DecompressionBombError as error:
            raise ValueError(f"image {path} is refused: {str(error).rstrip('.')} (a file this large is likely "
                             "a decompression bomb); use a smaller image, or split it") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise ValueError(f"cannot decode image {path} (truncated or corrupt: {error}); "
                             "replace the file or remove it from the folder") from error
        orientation = _orientation(image)
        if orientation != 1:
            image = image.transpose(_UPRIGHT[orientation])
        mode = image.mode
        if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
            array = (np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8)
        elif mode in ("L", "RGB"):
            array = np.asarray(image)
        elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
            _report_once("alpha", f"{path} has an alpha channel: it is dropped and the colour kept")
            array = np.asarray(image.convert("RGBA" if mode != "LA" else "LA"))[..., :-1]
        elif mode in ("P", "1", "CMYK", "YCbCr", "LAB", "HSV"):
            array = np.asarray(image.convert("RGB"))
        else:
            raise ValueError(f"image {path} has pixel mode {mode!r}, which is not an 8- or 16-bit "
                             "greyscale or colour image; convert it to 8-bit RGB PNG")
    if sixteen_bit:
        _report_once("16-bit", f"{path} has 16 bits per channel: it is reduced to 8 bits (high byte)")
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """Quantise a float image in [0, 1] to uint8 as BasicSR's ``tensor2img``: clamp, ×255 in float32, round.

    uint8 input is returned unchanged. Rounding is half to even, as numpy's.
    """
    if img.dtype == torch.uint8:
        return img
    if not img.is_floating_point():
        raise ValueError(f"expected a uint8 image or a float image in [0, 1], got dtype {img.dtype}")
    return img.float().clamp(0, 1).mul(255.0).round().to(torch.uint8)


def write_image(path, img: torch.Tensor, text: dict[str, str] | None = None) -> Path:
    """Write a (3, H, W) or (1, H, W) image, uint8 or float in [0, 1], to ``path`` (format from its suffix).

    ``text``: entries stored in a PNG file (read back with :func:`image_text`); PNG only."""
    path = Path(path)
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"write_image: expected a (3, H, W) or (1, H, W) image for {path}, got {tuple(img.shape)}")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise ValueError(f"write_image: cannot tell the format of {path}; use one of {', '.join(IMAGE_EXTENSIONS)}")
    if text and suffix != ".png":
        raise ValueError(f"write_image: text entries need a PNG file, not {path.name}")
    array = to_uint8(img.detach()).cpu().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    image = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    options = {}
    if text:
        options["pnginfo"] = PngImagePlugin.PngInfo()
        for key, value in text.items():
            options["pnginfo"].add_text(key, value)
    image.save(buffer, format=Image.registered_extensions()[suffix], **options)
    return atomic_write(path, buffer.getvalue())  # never through a link planted at ``path``
