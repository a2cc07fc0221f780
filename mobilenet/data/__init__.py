"""Datasets read into uint8 tensors, their splits, and the batched on-device augmentations.

The DataModules (``CIFARDataModule``, ``ImageFolderDataModule`` and their base ``BatchedDataModule``) are
imported on first use, so that the image and augmentation helpers here load without Lightning (``mobilenet
classify`` reads images and preprocesses them, and never trains).
"""

import importlib

_DATAMODULES = {
    "BatchedDataModule": "mobilenet.data.base",
    "CIFARDataModule": "mobilenet.data.cifar",
    "ImageFolderDataModule": "mobilenet.data.image_folder",
}
__all__ = list(_DATAMODULES)


def __getattr__(name: str):
    if name in _DATAMODULES:
        return getattr(importlib.import_module(_DATAMODULES[name]), name)
    raise AttributeError(f"module 'mobilenet.data' has no attribute {name!r}")
