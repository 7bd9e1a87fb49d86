"""PSNR and SSIM exactly as BasicSR (and the published SR tables) compute them.

* Inputs are uint8 images, or float images in [0, 1] that are first quantised
  like BasicSR's ``tensor2img`` (clamp, ×255, round): the numbers are those of
  the saved PNG files.
* ``crop_border`` pixels are removed on every side.
* With ``y_channel`` the luma of ITU-R BT.601 on [0, 255] is compared,
  Y = 16 + (65.481·R + 128.553·G + 24.966·B)/255, not rounded.
* Everything is float64. SSIM uses an 11×11 Gaussian window with σ = 1.5
  over the valid region only, C1 = (0.01·255)², C2 = (0.03·255)², the mean of
  the map, and the mean over channels when there are several.

Images are torch tensors (3, H, W) / (1, H, W) or with a batch of one, or
numpy arrays (H, W, 3) / (H, W). Greyscale images count as RGB with three
equal channels, as when BasicSR reads them in colour (Set14 ``bridge.png``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ._checks import check_int
from .data import to_uint8

__all__ = ["psnr", "ssim", "rgb_to_y"]

_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB (..., 3, H, W) on [0, 255] → (..., 1, H, W) on [16, 235], unrounded."""
    weights = torch.tensor(_Y_WEIGHTS, dtype=img.dtype, device=img.device).view(3, 1, 1)
    return (img * weights).sum(dim=-3, keepdim=True) / 255.0 + 16.0


def _as_chw(img, argument: str) -> torch.Tensor:
    """uint8 or quantised float image as a float64 (C, H, W) tensor on [0, 255]."""
    if isinstance(img, np.ndarray):
        if img.ndim not in (2, 3):
            raise ValueError(f"{argument}: a numpy image must be (H, W) or (H, W, C), got shape {img.shape}")
        img = torch.from_numpy(np.array(img if img.ndim == 3 else img[..., None])).permute(2, 0, 1)
    elif isinstance(img, torch.Tensor):
        if img.dim() == 4 and img.shape[0] == 1:
            img = img[0]
        if img.dim() != 3:
            raise ValueError(f"{argument}: a tensor image must be (C, H, W) or (1, C, H, W), got shape "
                             f"{tuple(img.shape)}; compute the metric per image")
    else:
        raise ValueError(f"{argument}: expected a torch.Tensor or numpy.ndarray image, got {type(img).__name__}")
    if img.shape[0] not in (1, 3):
        raise ValueError(f"{argument}: expected 1 (grey) or 3 (RGB) channels, got {img.shape[0]}")
    return to_uint8(img).to(torch.float64)


def _prepare(sr, hr, crop_border: int, y_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    check_int("crop_border (usually the scale)", crop_border, minimum=0)
    sr, hr = _as_chw(sr, "sr"), _as_chw(hr, "hr")
    if sr.shape[-2:] != hr.shape[-2:]:
        raise ValueError(f"sr is {tuple(sr.shape[-2:])} (H, W) but hr is {tuple(hr.shape[-2:])}; "
                         "mod-crop the HR image to the SR size first (cdism_fast.data.mod_crop)")
    hr = hr.to(sr.device)
    if sr.shape[0] != hr.shape[0]:  # one grey, one RGB: compare both as RGB
        sr, hr = sr.expand(3, -1, -1), hr.expand(3, -1, -1)
    if crop_border:
        if min(sr.shape[-2:]) <= 2 * crop_border:
            raise ValueError(f"a crop_border of {crop_border} leaves nothing of a {tuple(sr.shape[-2:])} image")
        sr = sr[:, crop_border:-crop_border, crop_border:-crop_border]
        hr = hr[:, crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        sr, hr = (rgb_to_y(x.expand(3, -1, -1)) for x in (sr, hr))
    return sr, hr


def psnr(sr, hr, crop_border: int, y_channel: bool = True) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` for identical images); see the module doc."""
    sr, hr = _prepare(sr, hr, crop_border, y_channel)
    mse = torch.mean((sr - hr) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def _gaussian_window(device) -> torch.Tensor:
    # OpenCV's getGaussianKernel(11, 1.5), which BasicSR uses.
    offsets = torch.arange(11, dtype=torch.float64, device=device) - 5
    kernel = torch.exp(-offsets ** 2 / (2 * 1.5 ** 2))
    return kernel / kernel.sum()


def ssim(sr, hr, crop_border: int, y_channel: bool = True) -> float:
    """Structural similarity (mean of the SSIM map over the valid region and the channels)."""
    sr, hr = _prepare(sr, hr, crop_border, y_channel)
    if min(sr.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after the border crop, got {tuple(sr.shape[-2:])}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    kernel = _gaussian_window(sr.device)
    # All five local moments of all channels in one separable 'valid' filtering.
    maps = torch.cat([sr, hr, sr * sr, hr * hr, sr * hr])[:, None]
    maps = F.conv2d(maps, kernel.view(1, 1, 11, 1))
    maps = F.conv2d(maps, kernel.view(1, 1, 1, 11))
    mu_sr, mu_hr, sr_sq, hr_sq, sr_hr = maps.view(5, sr.shape[0], *maps.shape[-2:])
    var_sr, var_hr, covariance = sr_sq - mu_sr ** 2, hr_sq - mu_hr ** 2, sr_hr - mu_sr * mu_hr
    ssim_map = ((2 * mu_sr * mu_hr + c1) * (2 * covariance + c2)) / (
        (mu_sr ** 2 + mu_hr ** 2 + c1) * (var_sr + var_hr + c2))
    return ssim_map.mean(dim=(-2, -1)).mean().item()
