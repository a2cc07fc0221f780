"""CIFAR-10/100 as a LightningDataModule: uint8 tensors in memory, batched augmentation on the device.

Data flow: archive on disk → ``read_split`` once → uint8 tensor (N, 3, 32, 32) → ``EpochBatchSampler``
gathers a batch by index → Lightning moves it to the device → ``on_after_batch_transfer`` augments (training
only), resizes to ``resolution`` and normalises.
"""

import warnings
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from mobilenet.data.augment import PRESETS, BatchTransform, Preset
from mobilenet.data.cifar_files import SPECS, ensure_available, read_class_names, read_split
from mobilenet.data.sampling import EpochBatchSampler, TensorBatches
from mobilenet.errors import UsageError

# Per-channel mean and standard deviation of the CIFAR-10 training images (RGB, [0, 1] scale). CIFAR-100
# uses them too: its own statistics differ by at most 0.03, and one set keeps the recipes comparable.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}

# The batches are gathered from memory in microseconds; worker processes would only add copies between
# processes, so Lightning's advice to add workers does not apply here.
warnings.filterwarnings("ignore", ".*does not have many workers.*")


class CIFARDataModule(LightningDataModule):
    """CIFAR-10 or CIFAR-100 with a fixed validation split carved out of the training images.

    Args:
        dataset: ``cifar10`` or ``cifar100``.
        data_dir: Folder that holds (or will receive) the official python archive or its extracted folder.
        batch_size: Images per training batch (evaluation uses the same).
        val_size: Training images held out for validation and checkpoint selection; the test split is never
            used for either.
        split_seed: Seed of the validation split, kept apart from ``seed`` so that runs with different
            seeds are validated on the same images.
        augment: Training augmentation preset: ``seed`` (the reference tutorial's flip, rotate, shear,
            scale and colour jitter), ``standard`` (padded crop and flip) or ``none``.
        resolution: Side in pixels the images are resized to on the device (the paper's ρ); 32 keeps
            CIFAR's own size.
        seed: Seed of the shuffle order and of the augmentation draws.
        download: Download the archive from the dataset's home page when it is not in ``data_dir``.
        verify: Check the files against the official md5 checksums; turn off for a copy you made yourself.
    """

    def __init__(
        self,
        dataset: Literal["cifar10", "cifar100"] = "cifar10",
        data_dir: str = "data",
        batch_size: int = 128,
        val_size: int = 1000,
        split_seed: int = 0,
        augment: Preset = "seed",
        resolution: int = 32,
        seed: int = 0,
        download: bool = True,
        verify: bool = True,
    ) -> None:
        super().__init__()
        if dataset not in SPECS:
            raise UsageError(f"dataset must be one of {sorted(SPECS)}, got {dataset!r}.")
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}; the reference recipe uses 128.")
        if val_size < 1:
            raise UsageError(f"val_size must be at least 1, got {val_size}: checkpoints are chosen on it.")
        if augment not in PRESETS:
            raise UsageError(f"augment must be one of {list(PRESETS)}, got {augment!r}.")
        if resolution < 1:
            raise UsageError(f"resolution must be a positive number of pixels, got {resolution}.")
        self.save_hyperparameters()
        self.dataset = dataset
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.resolution = resolution
        self.seed = seed
        self.download = download
        self.verify = verify
        self.mean, self.std = CIFAR10_MEAN, CIFAR10_STD
        self.transform = BatchTransform(augment, resolution, self.mean, self.std)
        self.class_names: list[str] = []
        self.splits: dict[str, TensorBatches] = {}

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES[self.dataset]

    def prepare_data(self) -> None:
        ensure_available(self.dataset, self.data_dir, self.download, self.verify)

    def setup(self, stage: str) -> None:
        # prepare_data runs on one process per node; this check is cheap and makes every rank fail alike.
        folder = ensure_available(self.dataset, self.data_dir, download=False, verify=False)
        self.class_names = read_class_names(folder, self.dataset)
        if stage in ("fit", "validate") and "train" not in self.splits:
            images, labels = read_split(folder, self.dataset, train=True)
            train_idx, val_idx = self.split_indices(len(labels))
            self.splits["train"] = TensorBatches(images[train_idx], labels[train_idx])
            self.splits["val"] = TensorBatches(images[val_idx], labels[val_idx])
        if stage in ("test", "predict") and "test" not in self.splits:
            self.splits["test"] = TensorBatches(*read_split(folder, self.dataset, train=False))

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
            generator = torch.Generator(device=images.device).manual_seed(augment_seed)
        return self.transform(images, generator), labels

    def state_dict(self) -> dict:
        """Stored in checkpoints so that a consumer can label and preprocess images like training did."""
        return {"class_names": self.class_names, "resolution": self.resolution, "mean": self.mean, "std": self.std}
