"""Data layer: dataset layouts, the embedded synthetic default, splits, statistics and augmentation.

    spec = load_dataset("../shared/data/magnetic-tile")          # DatasetSpec: samples + class names
    split = make_split(spec.samples, seed=0)                      # or load_split(".../split.json")
    ds = SegmentationDataset(select(spec, split["train"]), size=(256, 256), num_classes=spec.num_classes)
    aug = Augmenter("light", seed=0)                              # on-device, image and mask together
"""
from .dataset import (SegmentationDataset, WithReference, group_references, infer_channels, load_pair,
                      resize_pair, validate)
from .formats import (BINARY_CLASSES, FORMATS, NEU_CLASSES, DatasetSpec, Sample, detect_format,
                      load_dataset)
from .io import read_image, read_mask
from .splits import load_split, make_split, save_split, select
from .stats import class_pixel_counts, dataset_stats, median_frequency_weights
from .transforms import PRESETS, Augmenter, crop_to, normalize, pad_to_multiple

__all__ = [
    "Augmenter", "BINARY_CLASSES", "DatasetSpec", "FORMATS", "NEU_CLASSES", "PRESETS", "Sample",
    "SegmentationDataset", "WithReference", "group_references", "class_pixel_counts", "crop_to", "dataset_stats", "detect_format",
    "infer_channels", "load_dataset", "load_pair", "load_split", "make_split", "median_frequency_weights",
    "normalize", "pad_to_multiple", "read_image", "read_mask", "resize_pair", "save_split", "select",
    "validate",
]
