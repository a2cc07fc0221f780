"""GPU check: `fit` on synthetic data in 32-true, bf16-mixed and 16-mixed, with and without torch.compile.

    bash benchmarks/gpu_check.sh                     # on a CUDA machine; a few minutes, mostly compilation
    python -m benchmarks.gpu_check --accelerator cpu --precisions 32-true --steps 6 --warmup 2 --no_compile
                                                     # a smoke test on the CPU (the tests run one)

Every configuration trains the same network from the same weights on the same batches for ``--steps`` steps
through the Trainer, the LightningModule and a BatchedDataModule, as ``mobilenet fit`` does. It prints:
- images/s over the steps after ``--warmup`` (the device is waited for only at both ends of that span), the
  mean loss of the last ``--tail`` steps, and how far that is from the first precision's loss;
- ablations at the second precision (bf16-mixed by default), each undoing one of the speed-ups: PyTorch's
  default memory order instead of channels-last, a loss read back (``.item()``) every step, unpinned memory;
- how many times the host waits for the device in ``--audit_steps`` steady-state training steps
  (``torch.cuda.set_sync_debug_mode``), and where;
- the batched augmentation's share of a step.
Exits with status 1 when a loss differs by more than ``--loss_tolerance``, when this project's code makes the
host wait for the device in steady-state steps (or anything does, every step), or when the augmentation takes
more than ``--max_input_share`` of a step.
The images are learnable (one mean colour per class plus noise), so that the losses fall and can disagree.
"""

import argparse
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer

from benchmarks.fit_path import InMemoryData, training_only_trainer
from benchmarks.inference import write_json
from mobilenet import MobileNetV1
from mobilenet.data.augment import CIFAR10_MEAN, CIFAR10_STD, BatchTransform
from mobilenet.training.callbacks import StopOnNonFiniteLoss
from mobilenet.training.module import MobileNetClassifier

NUM_CLASSES = 10
REPO = Path(__file__).resolve().parents[1]
PROJECT_CODE = ("mobilenet/", "benchmarks/")


def learnable_images(num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, 32, 32): each class its own mean colour plus Gaussian noise (σ = 40 of 255)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, NUM_CLASSES, (num_images,), generator=generator)
    colours = torch.randint(40, 216, (NUM_CLASSES, 3, 1, 1), generator=generator).float()
    noise = torch.randn(num_images, 3, 32, 32, generator=generator) * 40
    return (colours[labels] + noise).clamp(0, 255).to(torch.uint8), labels


def wait_for(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Throughput(Callback):
    """Keeps each step's loss on the device and times the steps after ``warmup``, waiting only at both ends."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.losses: list[torch.Tensor] = []
        self.marks: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach())
        if len(self.losses) in (self.warmup, trainer.max_steps):
            wait_for(module.device)
            self.marks.append(time.perf_counter())


class ReadLossEveryStep(Callback):
    """The ablation for host-device waits: what a per-step ``loss.item()`` (or a progress bar refreshed every
    step, which reads its metrics back) costs."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        outputs["loss"].item()


def short_path(filename: str) -> str:
    """A file as ``mobilenet/...`` or ``benchmarks/...`` for this project's code, ``package/...`` for installed code."""
    path = Path(filename).resolve()
    if path.is_relative_to(REPO):
        return str(path.relative_to(REPO))
    return filename.split("site-packages/")[-1]


class SyncAudit(Callback):
    """Counts host-device synchronisations in ``count`` training steps after the first ``start`` steps.

    Steps here are whole: from the end of the previous step, so that fetching, copying and augmenting the
    batch count too. Every synchronising CUDA call warns while ``set_sync_debug_mode`` is "warn"; the
    warnings are recorded with the Python line that made the call.
    """

    def __init__(self, start: int, count: int) -> None:
        self.start, self.count = start, count
        self.places: Counter = Counter()
        self._recording = None
        self._records: list = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.start:
            self._recording = warnings.catch_warnings(record=True)
            self._records = self._recording.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        elif step == self.start + self.count and self._recording is not None:
            torch.cuda.set_sync_debug_mode("default")
            self._recording.__exit__(None, None, None)
            self._recording = None
            for record in self._records:
                if "synchroniz" in str(record.message):
                    self.places[short_path(record.filename) + f":{record.lineno}"] += 1


def trainer_for(args: argparse.Namespace, precision: str, steps: int, callbacks: list[Callback]) -> Trainer:
    # StopOnNonFiniteLoss as `mobilenet fit` adds it: its per-step work is part of what is checked.
    return training_only_trainer(args.accelerator, steps, [StopOnNonFiniteLoss(), *callbacks], precision)


def train(args: argparse.Namespace, precision: str, compiled: bool = False, channels_last: bool = True,
          read_loss_every_step: bool = False, pinned: bool = True) -> dict:  # fmt: skip
    images, labels = learnable_images(args.steps * args.batch_size)
    torch.manual_seed(0)
    model = MobileNetClassifier(MobileNetV1(NUM_CLASSES), channels_last=channels_last, compile=compiled)
    clock = Throughput(args.warmup)
    extra = [ReadLossEveryStep()] if read_loss_every_step else []
    trainer = trainer_for(args, precision, args.steps, [clock, *extra])
    trainer.fit(model, datamodule=InMemoryData(images, labels, args.batch_size, pinned))
    step_seconds = (clock.marks[1] - clock.marks[0]) / (args.steps - args.warmup)
    return {
        "images_per_second": args.batch_size / step_seconds,
        "step_seconds": step_seconds,
        "final_loss": float(torch.stack(clock.losses[-args.tail :]).float().mean()),
    }


def audit_syncs(args: argparse.Namespace, precision: str) -> Counter:
    """Where the host waited for the device in ``--audit_steps`` steady-state steps of the default setup."""
    start = args.warmup
    images, labels = learnable_images((start + args.audit_steps + 1) * args.batch_size)
    torch.manual_seed(0)
    audit = SyncAudit(start, args.audit_steps)
    trainer = trainer_for(args, precision, start + args.audit_steps + 1, [audit])
    model = MobileNetClassifier(MobileNetV1(NUM_CLASSES))
    trainer.fit(model, datamodule=InMemoryData(images, labels, args.batch_size))
    return audit.places


def augmentation_seconds(args: argparse.Namespace) -> float:
    """Median time of the batched ``seed`` augmentation + normalisation of one batch on the device."""
    device = torch.device("cuda" if args.accelerator in ("gpu", "cuda") else args.accelerator)
    images, _ = learnable_images(args.batch_size)
    images = images.to(device)
    transform = BatchTransform("seed", 32, CIFAR10_MEAN, CIFAR10_STD)
    times = []
    for seed in range(args.warmup + 10):
        wait_for(device)
        start = time.perf_counter()
        transform(images, torch.Generator().manual_seed(seed))
        wait_for(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times[args.warmup :]))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--no_compile", action="store_true", help="skip the torch.compile runs")
    parser.add_argument("--no_ablations", action="store_true", help="skip the runs that undo one speed-up each")
    parser.add_argument("--steps", type=int, default=150, help="training steps per configuration")
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of images/s (compilation, autotune)")
    parser.add_argument("--tail", type=int, default=20, help="final loss: the mean over this many last steps")
    parser.add_argument("--audit_steps", type=int, default=10, help="steady-state steps searched for device waits")
    parser.add_argument("--batch_size", type=int, default=128)
    # Mixed precision changes rounding, not the optimisation: after 150 steps the runs' mean losses should sit
    # well within 0.1 of each other; a broken autocast or loss scaler shows up as a far larger gap or NaN.
    parser.add_argument("--loss_tolerance", type=float, default=0.1, help="largest |loss - first precision's|")
    parser.add_argument("--max_input_share", type=float, default=0.10, help="largest augmentation share of a step")
    parser.add_argument("--json", default="benchmarks/results/gpu_check.json", help="where to write the figures")
    return parser.parse_args(argv)


def print_rows(rows: list[dict], reference: float, first_precision: str) -> None:
    print(f"\n{'precision':<12}{'compile':<9}{'variant':<26}{'images/s':>10}{'final loss':>12}"
          f"{f'Δ vs {first_precision}':>16}")  # fmt: skip
    for row in rows:
        print(f"{row['precision']:<12}{str(row['compile']):<9}{row['variant']:<26}{row['images_per_second']:>10.0f}"
              f"{row['final_loss']:>12.4f}{abs(row['final_loss'] - reference):>16.4f}")  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"{device_name}, torch {torch.__version__}, batch {args.batch_size}, {args.steps} steps per run", flush=True)
    rows = []
    for precision in args.precisions:
        for compiled in (False,) if args.no_compile else (False, True):
            result = train(args, precision, compiled=compiled)
            rows.append({"precision": precision, "compile": compiled, "variant": "default", **result})
            print(f"  {precision} compile={compiled}: {result['images_per_second']:.0f} images/s", flush=True)
    if not args.no_ablations:
        precision = args.precisions[min(1, len(args.precisions) - 1)]
        ablations = {
            "contiguous memory order": {"channels_last": False},
            "loss.item() every step": {"read_loss_every_step": True},
            "unpinned host memory": {"pinned": False},
        }
        for variant, change in ablations.items():
            result = train(args, precision, **change)
            rows.append({"precision": precision, "compile": False, "variant": variant, **result})
            print(f"  {precision} {variant}: {result['images_per_second']:.0f} images/s", flush=True)

    reference = rows[0]["final_loss"]
    print_rows(rows, reference, args.precisions[0])
    failures = [
        f"{row['precision']} compile={row['compile']} {row['variant']}: loss off by "
        f"{abs(row['final_loss'] - reference):.4f}"
        for row in rows
        if not abs(row["final_loss"] - reference) <= args.loss_tolerance  # also catches NaN
    ]

    syncs: Counter = Counter()
    if torch.cuda.is_available() and args.accelerator in ("gpu", "cuda"):
        syncs = audit_syncs(args, args.precisions[min(1, len(args.precisions) - 1)])
        where = ", ".join(f"{place} × {n}" for place, n in syncs.most_common()) or "none"
        print(f"Host waits for the device in {args.audit_steps} steady-state steps: {sum(syncs.values())} ({where})")
        # Ours must never wait; installed code (PyTorch, Lightning) may, once in a while, but not every step.
        ours = sum(n for place, n in syncs.items() if place.startswith(PROJECT_CODE))
        if ours or sum(syncs.values()) >= args.audit_steps:
            failures.append(f"host-device waits in steady-state steps: {ours} in this project's code, "
                            f"{sum(syncs.values())} in all (limit: none of ours, fewer than one a step)")  # fmt: skip

    augment = augmentation_seconds(args)
    share = augment / min(r["step_seconds"] for r in rows)
    print(f"Batched augmentation: {1000 * augment:.2f} ms per batch of {args.batch_size}, "
          f"{100 * share:.1f}% of the fastest step")  # fmt: skip
    if share > args.max_input_share:
        failures.append(f"augmentation takes {100 * share:.1f}% of a step (limit {100 * args.max_input_share:.0f}%)")
    for failure in failures:
        print(f"FAILED: {failure}")
    print("All checks passed." if not failures else f"{len(failures)} check(s) failed.")

    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": {"device": device_name, "torch": torch.__version__},
        "training": rows,
        "syncs_in_audited_steps": dict(syncs),
        "augmentation_seconds_per_batch": augment,
        "augmentation_share_of_fastest_step": share,
        "failures": failures,
    }
    write_json(result, args.json)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
