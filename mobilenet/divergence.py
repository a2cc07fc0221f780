"""Stops training at the first non-finite loss, before weights that hold nan or inf can reach a checkpoint."""

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
    """Raises a ``UsageError`` naming the step whose loss was nan or inf.

    Checkpoints are written at epoch ends only, so stopping here keeps the last good ones as they are. The
    check reads one scalar back from the device per step (a sync of a few microseconds on a GPU).
    """

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or bool(torch.isfinite(loss).all()):
            return
        kept = saved_checkpoints(trainer)
        raise UsageError(
            f"The training loss became {loss.item()} at step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {batch_idx + 1} of {trainer.num_training_batches}). Training stopped without saving these "
            f"weights; "
            + (f"the last good checkpoints are kept: {', '.join(kept)}. " if kept else "no checkpoint was written. ")
            + "Lower the learning rate (--model.optimizer.lr) or clip gradients (--trainer.gradient_clip_val 1.0), "
            "then resume with --ckpt_path last or start over."
        )
