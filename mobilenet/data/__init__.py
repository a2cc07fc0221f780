"""Datasets read into uint8 tensors, their splits, and the batched on-device augmentations."""

from mobilenet.data.batched import BatchedDataModule
from mobilenet.data.datamodule import CIFARDataModule
from mobilenet.data.image_folder import ImageFolderDataModule

__all__ = ["BatchedDataModule", "CIFARDataModule", "ImageFolderDataModule"]
