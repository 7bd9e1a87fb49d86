"""imresize against MATLAB's own LR files and an independent float64 formulation."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from cdism_fast.data import imresize, resized_length

SETS = ("Set5", "Set14", "B100")
SCALES = (2, 3, 4)


def _keys_cubic(x):
    # The Keys kernel (a = -0.5) in its textbook polynomial form, not MATLAB's.
    a = -0.5
    x = np.abs(x)
    inner = (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
    outer = a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
    return np.where(x <= 1, inner, np.where(x < 2, outer, 0.0))


def _reference_matrix(n_in, scale):
    """Dense (n_out, n_in) float64 resampling matrix built from a symmetrically padded signal."""
    n_out = math.ceil(n_in * scale - 1e-9)
    stretch = min(scale, 1.0)  # widen the kernel only when shrinking
    half_support = 2 / stretch
    pad = int(math.ceil(half_support)) + 2
    # Positions of the padded samples in 1-based source coordinates.
    positions = np.arange(1 - pad, n_in + pad + 1, dtype=np.float64)
    centres = (np.arange(n_out) + 1) / scale + 0.5 * (1 - 1 / scale)
    weights = stretch * _keys_cubic((centres[:, None] - positions[None, :]) * stretch)
    weights /= weights.sum(axis=1, keepdims=True)
    # Fold padded samples back onto the source with numpy's symmetric padding.
    source_of_padded = np.pad(np.arange(n_in), pad, mode="symmetric")[: len(positions)]
    matrix = np.zeros((n_out, n_in))
    for column, source in enumerate(source_of_padded):
        matrix[:, source] += weights[:, column]
    return matrix


def _reference_resize(img, scale):
    """float64 numpy (C, H, W) resize: rows first, then columns, no rounding."""
    rows = _reference_matrix(img.shape[1], scale)
    cols = _reference_matrix(img.shape[2], scale)
    return np.einsum("oh,chw->cow", rows, img) @ cols.T


def _load(path):
    array = np.asarray(Image.open(path))
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def test_uint8_matches_every_matlab_lr_file(shared_data, one_thread):
    counts = {}
    for name in SETS:
        for scale in SCALES:
            hr_paths = sorted((shared_data / "benchmarks" / name / "HR").glob("*.png"))
            differing = total = 0
            for hr_path in hr_paths:
                hr = _load(hr_path)
                hr = hr[:, : hr.shape[1] - hr.shape[1] % scale, : hr.shape[2] - hr.shape[2] % scale]
                lr = _load(shared_data / "benchmarks" / name / "LR_bicubic" / f"X{scale}" / hr_path.name)
                out = imresize(hr, 1 / scale)
                assert out.dtype == torch.uint8 and out.shape == lr.shape, hr_path
                differing += int((out != lr).sum())
                total += lr.numel()
            counts[(name, scale)] = (len(hr_paths), differing, total)
    report = "\n".join(f"{n} x{s}: {c[0]} images, {c[1]} of {c[2]} values differ" for (n, s), c in counts.items())
    print("\n" + report)
    assert len(counts) == len(SETS) * len(SCALES)
    assert sum(c[0] for c in counts.values()) == 3 * (5 + 14 + 100)
    assert all(c[1] == 0 for c in counts.values()), report


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 0.37, 2, 3, 4, 1.5])
@pytest.mark.parametrize("size", [(37, 52), (5, 3)])
def test_float64_path_equals_independent_formulation(scale, size):
    img = torch.rand(3, *size, dtype=torch.float64)
    out = imresize(img, scale)
    expected = _reference_resize(img.numpy(), scale)
    assert out.dtype == torch.float64 and out.shape == expected.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-12)


def test_float32_path_is_unrounded_and_close_to_float64():
    img = torch.rand(2, 3, 40, 33)
    out = imresize(img, 0.5)
    assert out.dtype == torch.float32
    expected = imresize(img.double(), 0.5)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)
    # The float path does not round between passes: it differs from the uint8 path.
    uint8_img = (img * 255).round().to(torch.uint8)
    float_of_uint8 = imresize(uint8_img.float() / 255, 0.5) * 255
    assert not torch.equal(float_of_uint8.round(), imresize(uint8_img, 0.5).float())
    assert (float_of_uint8 - imresize(uint8_img, 0.5).float()).abs().max() < 2.5


def test_uint8_rounds_after_each_pass_halves_away_from_zero():
    img = torch.randint(0, 256, (3, 30, 42), dtype=torch.uint8)
    rows = _reference_matrix(30, 0.5)
    cols = _reference_matrix(42, 0.5)
    half_away = lambda v: np.clip(np.floor(v + 0.5), 0, 255)  # noqa: E731 (values are >= 0 after the clip)
    first = half_away(np.einsum("oh,chw->cow", rows, img.numpy().astype(np.float64)))
    expected = half_away(first @ cols.T)
    np.testing.assert_array_equal(imresize(img, 0.5).numpy(), expected.astype(np.uint8))


def test_shapes_dtypes_and_batches():
    img = torch.randint(0, 256, (4, 3, 21, 30), dtype=torch.uint8)
    out = imresize(img, 1 / 3)
    assert out.shape == (4, 3, 7, 10) and out.dtype == torch.uint8
    assert torch.equal(out[2], imresize(img[2], 1 / 3))
    assert imresize(img.half(), 2).dtype == torch.float16
    assert imresize(img[0], 0.5).shape == (3, 11, 15)  # ceil, as MATLAB
    assert resized_length(345, 1 / 3) == 115 and resized_length(11, 0.5) == 6
    noncontiguous = img.permute(0, 1, 3, 2)
    assert torch.equal(imresize(noncontiguous, 0.5), imresize(noncontiguous.contiguous(), 0.5))


def test_bad_input():
    with pytest.raises(ValueError, match="CHW or NCHW"):
        imresize(torch.rand(8, 8), 0.5)
    with pytest.raises(ValueError, match="uint8 or floating"):
        imresize(torch.zeros(3, 8, 8, dtype=torch.int32), 0.5)
    with pytest.raises(ValueError, match="positive number"):
        imresize(torch.rand(3, 8, 8), 0)
    with pytest.raises(ValueError, match="torch.Tensor"):
        imresize(np.zeros((3, 8, 8)), 0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu():
    img = torch.randint(0, 256, (2, 3, 64, 48), dtype=torch.uint8)
    assert torch.equal(imresize(img.cuda(), 0.5).cpu(), imresize(img, 0.5))
    floats = torch.rand(3, 50, 50)
    torch.testing.assert_close(imresize(floats.cuda(), 0.25).cpu(), imresize(floats, 0.25))
