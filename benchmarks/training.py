"""Training speed of one network three ways, each in its own process: the reference loop, `fit`, and a raw loop.

    python -m benchmarks.training --contestant lightning     # one contestant, one JSON line on stdout

``python -m benchmarks`` runs all three side by side; this module is what each of its subprocesses runs, so
that every contestant starts from a fresh process and its peak memory is its own.

Contestants, all on the same synthetic CIFAR-shaped uint8 images, the same MobileNetV1 (same initial weights),
Adam (lr 1e-3), cross-entropy and the reference tutorial's ``seed`` augmentation:
    reference  the tutorial's plain-PyTorch loop: a torchvision ``VisionDataset`` of PIL images with per-image
               transforms, batched by a ``DataLoader`` with worker processes.
    lightning  this project's ``fit`` path: Trainer + ``MobileNetClassifier`` + a ``BatchedDataModule``, with
               the augmentation applied to whole batches on the training device.
    raw        the project's own tensors, sampler and batched augmentation in a hand-written loop with the same
               per-step work as the LightningModule (channels-last network, loss and on-device accuracy),
               without Lightning.
The reference keeps PyTorch's default memory order, as the tutorial does; the project's channels-last
default is one of the things ``b/a`` measures.
"""

import argparse
import json
import os
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import VisionDataset

from mobilenet import MobileNetV1
from mobilenet.data.augment import CIFAR10_MEAN, CIFAR10_STD, BatchTransform
from mobilenet.data.sampling import EpochBatchSampler, TensorBatches

CONTESTANTS = ("reference", "lightning", "raw")
NUM_CLASSES = 10
LEARNING_RATE = 1e-3  # the reference recipe's Adam


def synthetic_cifar(num_images: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images (N, 3, 32, 32) and labels (N,): CIFAR's shape and dtype, contents irrelevant to speed."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, NUM_CLASSES, (num_images,), generator=generator)


def reference_transform() -> transforms.Compose:
    """The reference tutorial's training transform, applied to one PIL image at a time."""
    return transforms.Compose(
        [
            transforms.RandomHorizontalFlip(),
            transforms.RandomRotation(10),
            transforms.RandomAffine(0, shear=10, scale=(0.8, 1.2)),
            transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )


class PILImages(VisionDataset):
    """Images held as (N, H, W, C) uint8 and handed out as PIL images through a transform, as torchvision's CIFAR10."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        super().__init__(root=None, transform=transform)
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = labels.tolist()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]

    def __len__(self) -> int:
        return len(self.data)


class RepetitionClock:
    """Times ``repeats`` runs of ``steps`` training steps after ``warmup`` untimed ones; call ``tick`` after each step.

    On a GPU it waits for the device at the start and end of each repetition only, so that steps stay
    asynchronous in between, as in training.
    """

    def __init__(self, warmup: int, repeats: int, steps: int, batch_size: int, device: torch.device) -> None:
        self.warmup, self.repeats, self.steps, self.batch_size = warmup, repeats, steps, batch_size
        self.device = device
        self.done = 0
        self.marks: list[float] = []

    @property
    def total_steps(self) -> int:
        return self.warmup + self.repeats * self.steps

    def tick(self) -> None:
        self.done += 1
        if self.done >= self.warmup and (self.done - self.warmup) % self.steps == 0:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.marks.append(time.perf_counter())

    def images_per_second(self) -> list[float]:
        """One figure per repetition."""
        spans = zip(self.marks[:-1], self.marks[1:], strict=True)
        return [self.steps * self.batch_size / (end - start) for start, end in spans]


def new_network(width_mult: float, device: torch.device) -> nn.Module:
    torch.manual_seed(0)  # the same initial weights for every contestant
    return MobileNetV1(NUM_CLASSES, width_mult, stem_stride=1).to(device)


def train_step(net: nn.Module, optimizer, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(net(images), labels)
    loss.backward()
    optimizer.step()
    return loss


def workers_peak_memory_mb() -> float | None:
    """Summed peak resident memory of this process's live children (the DataLoader workers); Linux only.

    Forked workers share the parent's pages until they write to them, so the sum overstates what they add.
    """
    try:
        children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
        peaks = [Path(f"/proc/{pid}/status").read_text() for pid in children]
    except OSError:
        return None
    return sum(int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) for status in peaks) / 1024


def run_reference(images, labels, args, clock: RepetitionClock, device: torch.device) -> dict:
    dataset = PILImages(images, labels, reference_transform())
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        pin_memory=device.type == "cuda",
    )
    net = new_network(args.width_mult, device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    while clock.done < clock.total_steps:
        for batch, targets in loader:
            train_step(net, optimizer, batch.to(device, non_blocking=True), targets.to(device, non_blocking=True))
            clock.tick()
            if clock.done == clock.total_steps:
                break
    return {"workers_peak_memory_mb": workers_peak_memory_mb()} if device.type == "cpu" else {}


def run_raw(images, labels, args, clock: RepetitionClock, device: torch.device) -> dict:
    from mobilenet.training.module import accuracy_metrics

    dataset = TensorBatches(images, labels)
    transform = BatchTransform("seed", 32, CIFAR10_MEAN, CIFAR10_STD)
    # The same memory order as MobileNetClassifier's default, so that b/c measures Lightning alone.
    memory_format = torch.contiguous_format if args.contiguous else torch.channels_last
    net = new_network(args.width_mult, device).to(memory_format=memory_format).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    metrics = accuracy_metrics(NUM_CLASSES, "train").to(device)
    sampler = EpochBatchSampler(len(dataset), args.batch_size, shuffle=True)
    epoch = 0
    while clock.done < clock.total_steps:
        sampler.set_epoch(epoch)
        loader = DataLoader(dataset, sampler=sampler, batch_size=None, pin_memory=device.type == "cuda")
        for batch, targets, augment_seed in loader:
            batch, targets = batch.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            batch = transform(batch, torch.Generator().manual_seed(augment_seed))
            batch = batch.contiguous(memory_format=memory_format)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed"):
                logits = net(batch)
                loss = nn.functional.cross_entropy(logits, targets)
            metrics.update(logits, targets)
            loss.backward()
            optimizer.step()
            clock.tick()
            if clock.done == clock.total_steps:
                break
        epoch += 1
    return {}


def run_lightning(images, labels, args, clock: RepetitionClock, device: torch.device) -> dict:
    from lightning.pytorch import Callback

    from benchmarks.fit_path import InMemoryData, training_only_trainer
    from mobilenet.training.module import MobileNetClassifier

    class Ticks(Callback):
        def on_train_batch_end(self, *_) -> None:
            clock.tick()

    data = InMemoryData(images, labels, args.batch_size)
    torch.manual_seed(0)
    # Adam, lr 1e-3 by default
    model = MobileNetClassifier(MobileNetV1(NUM_CLASSES, args.width_mult), channels_last=not args.contiguous)
    trainer = training_only_trainer(device.type, clock.total_steps, [Ticks()], precision=args.precision)
    trainer.fit(model, datamodule=data)
    return {}


RUNNERS = {"reference": run_reference, "lightning": run_lightning, "raw": run_raw}


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory allocated on a GPU; on the CPU the peak resident memory of this process (torch alone: ~0.4 GB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss counts bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Settings shared with ``python -m benchmarks``."""
    parser.add_argument("--batch_size", type=int, default=128, help="images per step (default 128, the recipe's)")
    parser.add_argument("--width_mult", type=float, default=1.0, help="α (default 1)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions; the median is reported")
    parser.add_argument("--steps", type=int, default=8, help="training steps per repetition (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference loop")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precision", choices=("32-true", "bf16-mixed"), default="32-true", help="(b) and (c): Lightning's precision"
    )
    parser.add_argument(
        "--contiguous", action="store_true", help="(b) and (c) in PyTorch's default memory order, not channels-last"
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.splitlines()[0])
    parser.add_argument("--contestant", choices=CONTESTANTS, required=True)
    add_arguments(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    clock = RepetitionClock(args.warmup, args.repeats, args.steps, args.batch_size, device)
    # One epoch holds every step, so that no contestant pays for an epoch boundary the others do not.
    images, labels = synthetic_cifar(clock.total_steps * args.batch_size)
    extra = RUNNERS[args.contestant](images, labels, args, clock, device)
    speeds = clock.images_per_second()
    result = {
        "contestant": args.contestant,
        "images_per_second": float(np.median(speeds)),
        "repetitions": speeds,
        "threads": torch.get_num_threads(),
        "peak_memory_mb": peak_memory_mb(device),
        **extra,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
