"""Reading images as image viewers show them: the EXIF orientation applied."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from cdism_fast.data import image_size, read_image


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    stored = Image.fromarray(rng.integers(0, 256, size=(6, 10, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"
    stored.save(path, exif=exif)
    with Image.open(path) as opened:
        upright = np.asarray(ImageOps.exif_transpose(opened))
    assert read_image(path).permute(1, 2, 0).numpy().tolist() == upright.tolist()
    assert image_size(path) == upright.shape[:2] == ((6, 10) if orientation < 5 else (10, 6))
