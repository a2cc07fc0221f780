"""Stops training at the first non-finite loss, before weights that hold nan or inf can reach a checkpoint."""

import math
import os
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from mobilenet.errors import UsageError


def saved_checkpoints(trainer: Trainer) -> list[str]:
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    folders = {Path(cb.dirpath) for cb in callbacks}
    # Shown relative to the working folder when inside it: the way the user named the run folder.
    return sorted(
        os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
        for folder in folders
        for path in folder.glob("*.ckpt")
    )


class StopOnNonFiniteLoss(Callback):
    """Raises a ``UsageError`` naming the first step whose loss was nan or inf.

    Reading a loss back from a GPU every step would make the host wait for the device every step. Instead,
    each step's loss is copied into a small buffer on the device, and the buffer is read back (one wait)
    every ``trainer.log_every_n_steps`` steps, when the loggers read the device anyway, and always before
    validation, before any checkpoint is saved, and when training ends. A diverged run therefore stops at
    most that many steps late, and its weights never reach a checkpoint: checkpoints already written are
    kept as they were.
    """

    def __init__(self) -> None:
        self.losses: torch.Tensor | None = None  # this window's losses, on the device
        self.steps: list[tuple[int, int, int]] = []  # (global step, epoch, batch index) of each, on the host

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        window = max(1, trainer.log_every_n_steps)
        if self.losses is None or len(self.losses) != window or self.losses.device != loss.device:
            self.check(trainer)
            self.losses = torch.empty(window, device=loss.device)
        self.losses[len(self.steps)] = loss.detach().float()
        self.steps.append((trainer.global_step, trainer.current_epoch, batch_idx))
        if len(self.steps) == window:
            self.check(trainer)

    def check(self, trainer: Trainer) -> None:
        """Read the window's losses back; raise at the first non-finite one."""
        if not self.steps:
            return
        losses, steps = self.losses[: len(self.steps)].tolist(), self.steps
        self.steps = []
        for loss, (step, epoch, batch_idx) in zip(losses, steps, strict=True):
            if not math.isfinite(loss):
                raise self.diverged(trainer, loss, step, epoch, batch_idx)

    @staticmethod
    def diverged(trainer: Trainer, loss: float, step: int, epoch: int, batch_idx: int) -> UsageError:
        kept = saved_checkpoints(trainer)
        return UsageError(
            f"The training loss became {loss} at step {step} (epoch {epoch}, batch {batch_idx + 1} of "
            f"{trainer.num_training_batches}). Training stopped without saving these weights; "
            + (f"the last good checkpoints are kept: {', '.join(kept)}. " if kept else "no checkpoint was written. ")
            + "Lower the learning rate (--model.optimizer.lr) or clip gradients (--trainer.gradient_clip_val 1.0), "
            "then resume with --ckpt_path last or start over."
        )

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check(trainer)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        self.check(trainer)  # runs before the file is written: raising here keeps diverged weights out of it

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check(trainer)
