"""What every dataset here shares: one signature, a seeded validation split, whole-batch loaders and
on-device augmentation.

A subclass reads its images once into uint8 tensors (N, 3, H, W) in ``setup`` and stores them in
``self.splits`` (``train``, ``val`` and, when there is one, ``test``); this class turns them into batches and
augments, resizes and normalises them after they reach the training device. Subclasses add only their own
arguments and pass the rest on (``**kwargs``), so the shared arguments and their documentation live here once.
"""

import math
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from mobilenet.data.augment import CIFAR10_MEAN, CIFAR10_STD, MAX_RESOLUTION, PRESETS, BatchTransform, Preset
from mobilenet.data.sampling import EpochBatchSampler, ResumableLoader, TensorBatches
from mobilenet.errors import UsageError


class BatchedDataModule(LightningDataModule):
    """Base of the DataModules (``--data CIFARDataModule``, the default, or ``--data ImageFolderDataModule``).

    Args:
        batch_size: Images per training batch (evaluation uses the same).
        val_size: Training images held out for validation and checkpoint selection; the test split is never
            used for either.
        split_seed: Seed of the validation split, kept apart from ``seed`` so that runs with different
            seeds are validated on the same images.
        augment: Training augmentation preset: ``seed`` (the reference tutorial's flip, rotate, shear,
            scale and colour jitter), ``standard`` (padded crop and flip), ``cutout`` (``standard`` and a 16×16
            square of the mean colour) or ``none``.
        resolution: Side in pixels of the images the network sees (the paper's ρ; 32 is CIFAR's own size).
        seed: Seed of the shuffle order and of the augmentation draws.
        mean: Per-channel (RGB) mean used to normalise the images; CIFAR-10's by default.
        std: Per-channel (RGB) standard deviation used to normalise the images; CIFAR-10's by default.
    """

    def __init__(
        self,
        batch_size: int = 128,
        val_size: int = 1000,
        split_seed: int = 0,
        augment: Preset = "seed",
        resolution: int = 32,
        seed: int = 0,
        mean: tuple[float, float, float] = CIFAR10_MEAN,
        std: tuple[float, float, float] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}; the reference recipe uses 128.")
        if val_size < 1:
            raise UsageError(f"val_size must be at least 1, got {val_size}: checkpoints are chosen on it.")
        if augment not in PRESETS:
            raise UsageError(f"augment must be one of {list(PRESETS)}, got {augment!r}.")
        if not 1 <= resolution <= MAX_RESOLUTION:
            raise UsageError(
                f"resolution must be between 1 and {MAX_RESOLUTION} pixels, got {resolution}; CIFAR's images are 32, "
                f"the paper's ImageNet inputs 128 to 224."
            )
        for name, values in (("mean", mean), ("std", std)):
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise UsageError(f"{name} must be three finite numbers (red, green, blue), got {tuple(values)}.")
        if min(std) <= 0:
            raise UsageError(f"std must be positive in every channel, got {tuple(std)}.")
        self.batch_size = batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.resolution = resolution
        self.seed = seed
        self.mean, self.std = tuple(mean), tuple(std)
        self.transform = BatchTransform(augment, resolution, self.mean, self.std)
        self.class_names: list[str] = []
        self.splits: dict[str, TensorBatches] = {}

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def hold_out_validation(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Split the training images into ``splits['train']`` and ``splits['val']`` (``val_size`` images)."""
        train_idx, val_idx = self.split_indices(len(labels))
        self.splits["train"] = TensorBatches(images[train_idx], labels[train_idx])
        self.splits["val"] = TensorBatches(images[val_idx], labels[val_idx])

    def split_indices(self, num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, validation) positions: a permutation fixed by ``split_seed``, its last ``val_size`` held out."""
        if self.val_size >= num_images:
            raise UsageError(
                f"val_size={self.val_size} leaves no training images: the training split has only "
                f"{num_images}. Choose --data.val_size below {num_images} (the reference recipe uses 1000)."
            )
        order = torch.randperm(num_images, generator=torch.Generator().manual_seed(self.split_seed))
        return order[: num_images - self.val_size].sort().values, order[num_images - self.val_size :].sort().values

    def loader(self, split: str, shuffle: bool) -> DataLoader:
        trainer = self.trainer
        world_size = trainer.world_size if trainer else 1
        if not shuffle and len(self.splits[split]) < world_size:
            raise UsageError(
                f"The {split} split has {len(self.splits[split])} images for {world_size} processes: each process "
                f"evaluates its own share, and some would have none. Use at least {world_size} images "
                f"(--data.val_size) or fewer processes (--trainer.devices)."
            )
        sampler = EpochBatchSampler(
            len(self.splits[split]),
            self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=trainer.global_rank if trainer else 0,
            world_size=world_size,
        )
        on_gpu = bool(trainer) and trainer.strategy.root_device.type == "cuda"
        # batch_size=None: the sampler already yields whole batches, the dataset answers each with one gather.
        kind = ResumableLoader if shuffle else DataLoader
        return kind(self.splits[split], sampler=sampler, batch_size=None, pin_memory=on_gpu)

    def train_dataloader(self) -> DataLoader:
        loader = self.loader("train", shuffle=True)
        self.train_sampler = loader.sampler  # counts the batches that reach training (on_after_batch_transfer)
        return loader

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images, labels, augment_seed) on the device → (normalised float images, labels)."""
        if isinstance(batch, torch.Tensor):  # the model summary's example input, a float batch already
            return batch
        images, labels, augment_seed = batch
        generator = None
        if augment_seed is not None:  # a training batch
            generator = torch.Generator().manual_seed(augment_seed)  # on the host: see augment.seed_augment
            self.train_sampler.consumed += 1
        return self.transform(images, generator), labels

    def config(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": ...}``: how to build this DataModule again, as a config gives it."""
        cls = type(self)
        public = f"mobilenet.data.{cls.__name__}"
        class_path = public if cls.__module__.startswith("mobilenet.data") else f"{cls.__module__}.{cls.__qualname__}"
        return {"class_path": class_path, "init_args": dict(self.hparams)}
