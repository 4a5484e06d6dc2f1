"""Data layer: dataset layouts, the embedded synthetic default, splits, statistics and augmentation.

In short (every name below is re-exported here)::

    spec = load_dataset("../shared/data/magnetic-tile")          # DatasetSpec: samples + class names
    split = make_split(spec.samples, seed=0)                      # or load_split(".../split.json")
    ds = SegmentationDataset(select(spec, split["train"]), size=(256, 256), num_classes=spec.num_classes)
    aug = Augmenter("light", seed=0)                              # on-device, image and mask together
    images, skipped = find_images(["photos/"])                    # files and folders -> images to predict

See docs/formats.md for the layouts.
"""

from .dataset import SegmentationDataset, WithReference, group_references, infer_channels, load_pair, resize_pair
from .formats import (
    BINARY_CLASSES,
    FORMATS,
    NEU_CLASSES,
    DatasetSpec,
    Sample,
    detect_format,
    load_dataset,
    register_format,
)
from .io import IGNORE_INDEX, IMAGE_SUFFIXES, MASK_SUFFIXES, find_images, read_image, read_mask
from .splits import load_split, make_split, save_split, select
from .stats import class_pixel_counts, dataset_stats, median_frequency_weights
from .transforms import PRESETS, Augmenter

__all__ = [
    "Augmenter",
    "BINARY_CLASSES",
    "DatasetSpec",
    "FORMATS",
    "IGNORE_INDEX",
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "NEU_CLASSES",
    "PRESETS",
    "Sample",
    "SegmentationDataset",
    "WithReference",
    "class_pixel_counts",
    "dataset_stats",
    "detect_format",
    "find_images",
    "group_references",
    "infer_channels",
    "load_dataset",
    "load_pair",
    "load_split",
    "make_split",
    "median_frequency_weights",
    "read_image",
    "read_mask",
    "register_format",
    "resize_pair",
    "save_split",
    "select",
]
