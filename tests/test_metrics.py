"""PSNR/SSIM against independent float64 numpy formulations (and scikit-image's SSIM)."""
import math

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from cdism_fast.metrics import psnr, rgb_to_y, ssim


def _y_numpy(rgb_hwc):
    """BT.601 luma of an (H, W, 3) array on [0, 255], via a matrix product."""
    return rgb_hwc.astype(np.float64) @ (np.array([65.481, 128.553, 24.966]) / 255.0) + 16.0


def _psnr_numpy(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 20 * math.log10(255.0) - 10 * math.log10(mse)


def _ssim_numpy(a, b):
    """One-channel SSIM from explicit 11x11 windows (no separable filtering)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / 4.5)
    window = np.outer(g, g) / np.outer(g, g).sum()
    wa, wb = sliding_window_view(a, (11, 11)), sliding_window_view(b, (11, 11))
    mean = lambda w: np.einsum("ijkl,kl->ij", w, window)  # noqa: E731
    mu_a, mu_b = mean(wa), mean(wb)
    var_a = mean((wa - mu_a[..., None, None]) ** 2)
    var_b = mean((wb - mu_b[..., None, None]) ** 2)
    cov = mean((wa - mu_a[..., None, None]) * (wb - mu_b[..., None, None]))
    c1, c2 = 6.5025, 58.5225
    return np.mean((2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))


@pytest.fixture
def pair():
    generator = torch.Generator().manual_seed(1)
    hr = torch.randint(0, 256, (3, 47, 61), dtype=torch.uint8, generator=generator)
    noise = torch.randint(-20, 21, hr.shape, generator=generator)
    sr = (hr.int() + noise).clamp(0, 255).to(torch.uint8)
    return sr, hr


def _hwc(t):
    return t.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("crop", [0, 2, 4])
def test_psnr_y_and_rgb_match_numpy(pair, crop):
    sr, hr = pair
    cut = (slice(crop, -crop or None), slice(crop, -crop or None))
    np.testing.assert_allclose(psnr(sr, hr, crop), _psnr_numpy(_y_numpy(_hwc(sr))[cut], _y_numpy(_hwc(hr))[cut]),
                               rtol=1e-12)
    np.testing.assert_allclose(psnr(sr, hr, crop, y_channel=False), _psnr_numpy(_hwc(sr)[cut], _hwc(hr)[cut]),
                               rtol=1e-12)


@pytest.mark.parametrize("crop", [0, 3])
def test_ssim_y_and_rgb_match_numpy(pair, crop):
    sr, hr = pair
    cut = (slice(crop, -crop or None), slice(crop, -crop or None))
    expected_y = _ssim_numpy(_y_numpy(_hwc(sr))[cut], _y_numpy(_hwc(hr))[cut])
    np.testing.assert_allclose(ssim(sr, hr, crop), expected_y, rtol=1e-10)
    expected_rgb = np.mean([_ssim_numpy(_hwc(sr)[cut][..., c], _hwc(hr)[cut][..., c]) for c in range(3)])
    np.testing.assert_allclose(ssim(sr, hr, crop, y_channel=False), expected_rgb, rtol=1e-10)


def test_ssim_matches_scikit_image(pair):
    metrics = pytest.importorskip("skimage.metrics")
    sr, hr = pair
    y_sr, y_hr = _y_numpy(_hwc(sr)), _y_numpy(_hwc(hr))
    # Gaussian weights with σ = 1.5 truncated at 3.5σ give the same 11x11 window.
    expected = metrics.structural_similarity(y_sr, y_hr, gaussian_weights=True, sigma=1.5,
                                             use_sample_covariance=False, data_range=255)
    np.testing.assert_allclose(ssim(sr, hr, 0), expected, rtol=1e-9)


def test_float_inputs_are_quantised_like_tensor2img(pair):
    sr, hr = pair
    # Values that round to the same uint8 give the same numbers ...
    sr_float = sr.float() / 255 + (torch.rand(sr.shape) - 0.5) * 0.9 / 255
    assert psnr(sr_float, hr, 2) == psnr(sr, hr, 2)
    assert ssim(sr_float, hr, 2) == ssim(sr, hr, 2)
    # ... and out-of-range values are clamped first.
    assert psnr(sr.float() / 255 * 1.5 - 0.25, hr, 2) == psnr(((sr.float() / 255 * 1.5 - 0.25).clamp(0, 1) * 255)
                                                             .round().to(torch.uint8), hr, 2)


def test_layouts_and_greyscale(pair):
    sr, hr = pair
    assert psnr(_hwc(sr), _hwc(hr), 2) == psnr(sr, hr, 2) == psnr(sr[None], hr[None], 2)
    grey_sr, grey_hr = sr[:1], hr[:1]
    # A grey image counts as RGB with equal channels, in every combination.
    rgb_sr, rgb_hr = grey_sr.expand(3, -1, -1), grey_hr.expand(3, -1, -1)
    for y_channel in (True, False):
        expected = psnr(rgb_sr, rgb_hr, 2, y_channel), ssim(rgb_sr, rgb_hr, 2, y_channel)
        assert (psnr(grey_sr, grey_hr, 2, y_channel), ssim(grey_sr, grey_hr, 2, y_channel)) == pytest.approx(expected)
        assert (psnr(rgb_sr, grey_hr, 2, y_channel), ssim(rgb_sr, grey_hr, 2, y_channel)) == pytest.approx(expected)
        assert psnr(_hwc(grey_sr)[..., 0], _hwc(grey_hr)[..., 0], 2, y_channel) == pytest.approx(expected[0])
    # Y of a grey value v is 16 + 219 v / 255.
    v = torch.tensor(200.0, dtype=torch.float64)
    torch.testing.assert_close(rgb_to_y(v.expand(3, 1, 1)), (16 + 219 * v / 255).view(1, 1, 1))


def test_identical_images(pair):
    _, hr = pair
    assert psnr(hr, hr, 4) == math.inf
    assert ssim(hr, hr, 4) == pytest.approx(1.0, abs=1e-12)


def test_bad_input(pair):
    sr, hr = pair
    with pytest.raises(ValueError, match="mod-crop"):
        psnr(sr[:, :-1], hr, 2)
    with pytest.raises(ValueError, match="channels"):
        psnr(torch.zeros(4, 20, 20, dtype=torch.uint8), torch.zeros(4, 20, 20, dtype=torch.uint8), 0)
    with pytest.raises(ValueError, match="per image"):
        psnr(torch.stack([sr, sr]), torch.stack([hr, hr]), 2)
    with pytest.raises(ValueError, match="crop_border"):
        ssim(sr, hr, -1)
    with pytest.raises(ValueError, match="leaves nothing"):
        psnr(sr, hr, 30)
    with pytest.raises(ValueError, match="11x11"):
        ssim(sr[:, :20, :20], hr[:, :20, :20], 5)
    with pytest.raises(ValueError, match="uint8 image or a float"):
        psnr(sr.int(), hr, 0)
