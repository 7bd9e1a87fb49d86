"""Data: MATLAB-exact resizing, image files, paired datasets, training patches, built-in images."""
from .builtin import BUILTIN_SPLITS, builtin_dataset, builtin_image_paths
from .datasets import (
    CombinedPairs,
    HRFolderDataset,
    ImagePair,
    ImageSubset,
    ImageTooSmall,
    LRFolderDataset,
    PairedFolderDataset,
    folder_dataset,
    hold_back,
    mod_crop,
    resolve_layout,
    unlabelled_dataset,
)
from .imresize import imresize, resized_length
from .io import (
    IMAGE_EXTENSIONS,
    check_image,
    image_size,
    image_text,
    list_images,
    read_image,
    to_uint8,
    write_image,
)
from .patches import TrainingPatches, collate_patch_pairs, training_loader

__all__ = [
    "BUILTIN_SPLITS", "builtin_dataset", "builtin_image_paths",
    "CombinedPairs", "HRFolderDataset", "ImagePair", "ImageSubset", "ImageTooSmall", "LRFolderDataset",
    "PairedFolderDataset", "folder_dataset", "hold_back", "mod_crop", "resolve_layout", "unlabelled_dataset",
    "imresize", "resized_length",
    "IMAGE_EXTENSIONS", "check_image", "image_size", "image_text", "list_images", "read_image", "to_uint8",
    "write_image",
    "TrainingPatches", "collate_patch_pairs", "training_loader",
]
