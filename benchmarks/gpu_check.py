"""GPU check: `fit` on synthetic data in 32-true, bf16-mixed and 16-mixed, each with and without torch.compile.

    bash benchmarks/gpu_check.sh                     # on a CUDA machine; about a minute on a recent GPU
    python -m benchmarks.gpu_check --accelerator cpu --precisions 32-true --steps 6 --no_compile   # smoke test

Every configuration trains the same network from the same weights on the same batches for ``--steps`` steps.
Prints images/s (median over the steps after ``--warmup``), the mean loss of the last ``--tail`` steps, and
how far that is from 32-true's; exits with status 1 when a loss differs by more than ``--loss_tolerance`` or
when the batched augmentation takes more than ``--max_input_share`` of a step.
The images are learnable (one mean colour per class plus noise), so that the losses fall and can disagree.
"""

import argparse
import sys
import time

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer

from mobilenet.data.augment import BatchTransform
from mobilenet.data.batched import CIFAR10_MEAN, CIFAR10_STD, BatchedDataModule
from mobilenet.data.sampling import TensorBatches
from mobilenet.module import MobileNetClassifier

NUM_CLASSES = 10


def learnable_images(num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, 32, 32): each class its own mean colour plus Gaussian noise (σ = 40 of 255)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, NUM_CLASSES, (num_images,), generator=generator)
    colours = torch.randint(40, 216, (NUM_CLASSES, 3, 1, 1), generator=generator).float()
    noise = torch.randn(num_images, 3, 32, 32, generator=generator) * 40
    return (colours[labels] + noise).clamp(0, 255).to(torch.uint8), labels


class InMemoryData(BatchedDataModule):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
        super().__init__(batch_size=batch_size, augment="seed")
        self.images, self.labels = images, labels

    def setup(self, stage: str) -> None:
        self.splits["train"] = TensorBatches(self.images, self.labels)


class StepRecorder(Callback):
    """Loss and end time of every training step (synchronising the device: this run is a check, not a race)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        self.ends.append(time.perf_counter())


def train(precision: str, compiled: bool, args: argparse.Namespace) -> dict:
    images, labels = learnable_images(args.steps * args.batch_size)
    torch.manual_seed(0)
    model = MobileNetClassifier(NUM_CLASSES, width_mult=1.0, stem_stride=1)
    if compiled:
        model.net = torch.compile(model.net)
    recorder = StepRecorder()
    trainer = Trainer(
        accelerator=args.accelerator,
        devices=1,
        precision=precision,
        max_steps=args.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    trainer.fit(model, datamodule=InMemoryData(images, labels, args.batch_size))
    step_seconds = np.diff(recorder.ends[args.warmup - 1 :])
    return {
        "images_per_second": args.batch_size / float(np.median(step_seconds)),
        "step_seconds": float(np.median(step_seconds)),
        "final_loss": float(np.mean(recorder.losses[-args.tail :])),
    }


def augmentation_seconds(args: argparse.Namespace) -> float:
    """Median time of the batched ``seed`` augmentation + normalisation of one batch on the device."""
    device = torch.device("cuda" if args.accelerator in ("gpu", "cuda") else args.accelerator)
    images, _ = learnable_images(args.batch_size)
    images = images.to(device)
    transform = BatchTransform("seed", 32, CIFAR10_MEAN, CIFAR10_STD)
    times = []
    for seed in range(args.warmup + 10):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        transform(images, torch.Generator(device=device).manual_seed(seed))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times[args.warmup :]))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--no_compile", action="store_true", help="skip the torch.compile runs")
    parser.add_argument("--steps", type=int, default=150, help="training steps per configuration")
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of images/s (compilation, autotune)")
    parser.add_argument("--tail", type=int, default=20, help="final loss: the mean over this many last steps")
    parser.add_argument("--batch_size", type=int, default=128)
    # Mixed precision changes rounding, not the optimisation: after 150 steps the runs' mean losses should sit
    # well within 0.1 of each other; a broken autocast or loss scaler shows up as a far larger gap or NaN.
    parser.add_argument("--loss_tolerance", type=float, default=0.1, help="largest |loss - 32-true loss|")
    parser.add_argument("--max_input_share", type=float, default=0.10, help="largest augmentation share of a step")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = []
    for precision in args.precisions:
        for compiled in (False,) if args.no_compile else (False, True):
            rows.append({"precision": precision, "compile": compiled, **train(precision, compiled, args)})
    reference = next(r["final_loss"] for r in rows if r["precision"] == args.precisions[0] and not r["compile"])
    augment = augmentation_seconds(args)
    print(f"\n{'precision':<12}{'compile':<9}{'images/s':>10}{'final loss':>12}{f'Δ vs {args.precisions[0]}':>16}")
    failures = []
    for row in rows:
        gap = abs(row["final_loss"] - reference)
        print(f"{row['precision']:<12}{str(row['compile']):<9}{row['images_per_second']:>10.0f}"
              f"{row['final_loss']:>12.4f}{gap:>16.4f}")  # fmt: skip
        if not gap <= args.loss_tolerance:  # also catches NaN
            failures.append(f"{row['precision']} compile={row['compile']}: loss off by {gap:.4f}")
    share = augment / min(r["step_seconds"] for r in rows)
    print(f"Batched augmentation: {1000 * augment:.2f} ms per batch of {args.batch_size}, "
          f"{100 * share:.1f}% of the fastest step")  # fmt: skip
    if share > args.max_input_share:
        failures.append(f"augmentation takes {100 * share:.1f}% of a step (limit {100 * args.max_input_share:.0f}%)")
    for failure in failures:
        print(f"FAILED: {failure}")
    print("All checks passed." if not failures else f"{len(failures)} check(s) failed.")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
