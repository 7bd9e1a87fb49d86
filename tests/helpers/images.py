"""Image folders and data sets written for a test."""
import numpy as np
import torch
from PIL import Image

from cdism_fast.data import folder_dataset, write_image


def write_noise_images(folder, count, seed=0, size=(40, 48)):
    """``count`` uniform-noise RGB PNGs ``img{i}.png`` of ``size`` (height, width): inputs, nothing to learn."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def write_smooth_images(folder, count, seed, size=(40, 48)):
    """Smooth random colour images (bicubic can be beaten, and the models can learn them)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        coarse = rng.integers(0, 256, size=(size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size[1], size[0]), Image.BICUBIC)
        image.save(folder / f"img{i}.png")
    return folder


def random_image(height, width, seed=0):
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def nearest_pairs(root, sizes, scale=2):
    """HR = nearest-neighbour upscale of LR (so a nearest-upsampling "teacher" outputs exactly HR, and every
    aligned HR patch subsampled equals its LR patch)."""
    for i, (height, width) in enumerate(sizes):
        lr = random_image(height, width, seed=i)
        write_image(root / "HR" / f"{i:04d}.png", lr.repeat_interleave(scale, 1).repeat_interleave(scale, 2))
        write_image(root / "LR_bicubic" / f"X{scale}" / f"{i:04d}.png", lr)
    return folder_dataset(root, scale)
