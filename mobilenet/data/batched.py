"""What every dataset here shares: a seeded validation split, whole-batch loaders, and on-device augmentation.

A subclass reads its images once into uint8 tensors (N, 3, H, W) in ``setup`` and stores them in
``self.splits`` (``train``, ``val`` and, when there is one, ``test``); this class turns them into batches and
augments, resizes and normalises them after they reach the training device.
"""

import warnings

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from mobilenet.data.augment import PRESETS, BatchTransform, Preset
from mobilenet.data.sampling import EpochBatchSampler, TensorBatches
from mobilenet.errors import UsageError

# Per-channel mean and standard deviation of the CIFAR-10 training images (RGB, [0, 1] scale).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# The batches are gathered from memory in microseconds; worker processes would only add copies between
# processes, so Lightning's advice to add workers does not apply here.
warnings.filterwarnings("ignore", ".*does not have many workers.*")


class BatchedDataModule(LightningDataModule):
    """Base of the DataModules (``--data CIFARDataModule`` or ``--data ImageFolderDataModule``).

    Args:
        batch_size: Images per training batch (evaluation uses the same).
        val_size: Training images held out for validation and checkpoint selection; the test split is never
            used for either.
        split_seed: Seed of the validation split, kept apart from ``seed`` so that runs with different
            seeds are validated on the same images.
        augment: Training augmentation preset: ``seed`` (the reference tutorial's flip, rotate, shear,
            scale and colour jitter), ``standard`` (padded crop and flip) or ``none``.
        resolution: Side in pixels of the images the network sees (the paper's ρ).
        seed: Seed of the shuffle order and of the augmentation draws.
        mean: Per-channel (RGB) mean used to normalise the images.
        std: Per-channel (RGB) standard deviation used to normalise the images.
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
        if resolution < 1:
            raise UsageError(f"resolution must be a positive number of pixels, got {resolution}.")
        if min(std) <= 0:
            raise UsageError(f"std must be positive in every channel, got {std}.")
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
        sampler = EpochBatchSampler(
            len(self.splits[split]),
            self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
        )
        on_gpu = bool(trainer) and trainer.strategy.root_device.type == "cuda"
        # batch_size=None: the sampler already yields whole batches, the dataset answers each with one gather.
        return DataLoader(self.splits[split], sampler=sampler, batch_size=None, pin_memory=on_gpu)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images, labels, augment_seed) on the device → (normalised float images, labels)."""
        images, labels, augment_seed = batch
        generator = None
        if augment_seed is not None:
            generator = torch.Generator().manual_seed(augment_seed)  # on the host: see augment.seed_augment
        return self.transform(images, generator), labels

    def state_dict(self) -> dict:
        """Stored in checkpoints so that a consumer can label and preprocess images like training did."""
        return {"class_names": self.class_names, "resolution": self.resolution, "mean": self.mean, "std": self.std}
