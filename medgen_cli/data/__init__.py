"""Torch datasets over medgen stores (whole items, patches, subject pairs), loaders and augmentation."""

from .augment import Augmentation, IntensityJitter, build_augmentation
from .datasets import ItemDataset, PatchDataset
from .paired import PairedDataset
from .stores import data_range, open_store
from .loader import ResumableSampler, make_loader, set_epoch

__all__ = [
    "Augmentation",
    "IntensityJitter",
    "ItemDataset",
    "PairedDataset",
    "PatchDataset",
    "ResumableSampler",
    "build_augmentation",
    "data_range",
    "make_loader",
    "open_store",
    "set_epoch",
]
