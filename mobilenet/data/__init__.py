"""Datasets read into uint8 tensors, their splits, and the batched on-device augmentations."""

from mobilenet.data.datamodule import CIFARDataModule

__all__ = ["CIFARDataModule"]
