"""Whole batches gathered by index from in-memory tensors, in an order that follows from (seed, epoch) alone.

The sampler yields one ``BatchRequest`` per batch and the dataset answers it with one tensor gather, so a
DataLoader needs neither worker processes nor a collate step. Because the shuffle order and every batch's
augmentation seed are functions of (seed, epoch, rank, batch index), the sampler's whole state is (epoch,
batches trained so far in it): a run resumed from a checkpoint saved in the middle of an epoch
(``ResumableLoader``) sees exactly the batches the uninterrupted run would have seen.
"""

import hashlib
from typing import Iterator, NamedTuple, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mobilenet.errors import UsageError


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, the same on every machine and Python version (unlike ``hash``)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class BatchRequest(NamedTuple):
    indices: torch.Tensor  # (B,) int64 positions in the dataset tensors
    augment_seed: Optional[int]  # seeds this batch's augmentation; None for evaluation batches


class EpochBatchSampler(Sampler[BatchRequest]):
    """Batches of indices for one rank.

    Training (``shuffle=True``): a fresh permutation each epoch, padded like ``DistributedSampler`` so that
    every rank runs the same number of steps, then rank r takes positions r, r + world_size, ...
    Evaluation: the natural order, split the same way without padding, so that no image counts twice.
    Lightning calls ``set_epoch`` at the start of every epoch; ``consumed`` counts the batches of the current
    epoch that reached training (the DataModule counts them), and ``resume`` starts an epoch after that many.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.num_items = num_items
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0  # the batch the next iteration begins with: 0, or where an interrupted epoch stopped
        self.consumed = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # (Lightning sets the resumed epoch again after ``resume``: keep its start)
            self.epoch, self.start = epoch, 0

    def resume(self, epoch: int, consumed: int) -> None:
        """Continue ``epoch`` after its first ``consumed`` batches."""
        self.epoch, self.start = epoch, consumed

    def shard(self) -> torch.Tensor:
        """This rank's dataset positions for the current epoch, in visiting order."""
        if not self.shuffle:
            return torch.arange(self.rank, self.num_items, self.world_size)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        order = torch.randperm(self.num_items, generator=generator)
        padding = -self.num_items % self.world_size
        order = torch.cat([order, order[:padding]])
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[BatchRequest]:
        positions = self.shard()
        first, self.start = self.start, 0
        self.consumed = first
        for batch_index, start in enumerate(range(first * self.batch_size, len(positions), self.batch_size), first):
            seed = derive_seed(self.seed, self.epoch, self.rank, batch_index) if self.shuffle else None
            yield BatchRequest(positions[start : start + self.batch_size], seed)

    def __len__(self) -> int:
        shard_size = len(range(self.rank, self.num_items, self.world_size))
        if self.shuffle:
            shard_size = -(-self.num_items // self.world_size)
        return -(-shard_size // self.batch_size)


class ResumableLoader(DataLoader):
    """A DataLoader over an ``EpochBatchSampler`` whose state Lightning saves in checkpoints and restores: a run
    resumed from a checkpoint saved mid-epoch continues with the next batch, not from the epoch's start."""

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "consumed": self.sampler.consumed, **self.layout()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        now = self.layout()
        saved = {key: state[key] for key in now if key in state}
        if any(saved[key] != now[key] for key in saved):
            raise UsageError(
                f"The checkpoint stopped in the middle of an epoch whose batches were laid out differently "
                f"({', '.join(f'{key} {value}' for key, value in saved.items())}; now "
                f"{', '.join(f'{key} {now[key]}' for key in saved)}): resuming "
                f"would skip or repeat images. Resume with the same --data.batch_size, --data.seed, data and number "
                f"of processes."
            )
        self.sampler.resume(int(state["epoch"]), int(state["consumed"]))

    def layout(self) -> dict[str, int]:
        """What decides which images the epoch's batches hold."""
        sampler = self.sampler
        return {
            "images": sampler.num_items,
            "batch_size": sampler.batch_size,
            "seed": sampler.seed,
            "world_size": sampler.world_size,
        }


class TensorBatches(Dataset):
    """Images (N, C, H, W) uint8 and labels (N,) answered a batch at a time: (images, labels, augment_seed)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __getitem__(self, request: BatchRequest) -> tuple[torch.Tensor, torch.Tensor, Optional[int]]:
        return self.images[request.indices], self.labels[request.indices], request.augment_seed

    def __len__(self) -> int:
        return len(self.labels)
