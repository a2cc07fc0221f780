"""What the benchmarks that time `fit` share: in-memory training data and a Trainer that only trains.

Imported lazily by ``benchmarks/training.py`` so that the reference contestant's process never loads
Lightning (its peak memory is part of what is measured).
"""

import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from mobilenet.data.base import BatchedDataModule
from mobilenet.data.sampling import TensorBatches


class InMemoryData(BatchedDataModule):
    """Training batches gathered from tensors already in memory, with the ``seed`` augmentation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, pinned: bool = True) -> None:
        super().__init__(batch_size=batch_size, augment="seed")
        self.images, self.labels, self.pinned = images, labels, pinned

    def setup(self, stage: str) -> None:
        self.splits["train"] = TensorBatches(self.images, self.labels)

    def loader(self, split: str, shuffle: bool) -> DataLoader:
        loader = super().loader(split, shuffle)
        if not self.pinned:  # the ablation: the same loader with page-locked copies turned off
            loader = DataLoader(loader.dataset, sampler=loader.sampler, batch_size=None, pin_memory=False)
        return loader


def training_only_trainer(accelerator: str, max_steps: int, callbacks: list[Callback], precision: str = "32-true"):
    """A Trainer that runs ``max_steps`` training steps and nothing else: no validation, logging or checkpoints."""
    return Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_steps=max_steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
