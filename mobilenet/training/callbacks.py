"""The callbacks the CLI adds: a stop at the first non-finite loss, a resumable stop at SIGTERM or SIGINT, the
predictions CSV, progress as plain lines where output goes to a file, and a model summary without empty rows."""

import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.utilities import rank_zero_info

from mobilenet.errors import UsageError
from mobilenet.files import shown, write_csv
from mobilenet.training.runs import checkpoint_files


def saved_checkpoints(trainer: Trainer) -> list[str]:
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    folders = {Path(cb.dirpath) for cb in callbacks}
    return sorted(shown(path) for folder in folders for path in checkpoint_files(folder))


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


COLUMNS = ("index", "label", "label_name", "prediction", "prediction_name", "confidence")


def gather_on_rank_zero(columns: dict[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """All ranks' rows in dataset order.

    Under DDP rank r predicts images r, r + world_size, ... (the evaluation sampler's shard), so its i-th row
    is image r + i · world_size.
    """
    position = torch.arange(len(columns["label"])) * world_size + rank
    gathered: list = [None] * world_size
    torch.distributed.all_gather_object(gathered, {**columns, "position": position})
    merged = {key: torch.cat([part[key] for part in gathered]) for key in gathered[0]}
    order = merged.pop("position").argsort()
    return {key: value[order] for key, value in merged.items()}


def name_of(index: int, names: list[str]) -> str:
    return names[index] if index < len(names) else ""


class PredictionWriter(BasePredictionWriter):
    """After `predict`, one row per image: index, true label, predicted class, softmax confidence."""

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")
        self.summary = ""

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: list, batch_indices: list
    ) -> None:
        columns = {key: torch.cat([batch[key] for batch in predictions]).cpu() for key in predictions[0]}
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if trainer.world_size > 1:
            columns = gather_on_rank_zero(columns, trainer.global_rank, trainer.world_size)
            if not trainer.is_global_zero:
                return
        names = getattr(trainer.datamodule, "class_names", None) or []
        path = Path(log_dir or ".") / "predictions.csv"
        rows = zip(*(columns[key].tolist() for key in ("label", "prediction", "confidence")), strict=True)
        write_csv(
            path,
            COLUMNS,
            (
                (index, label, name_of(label, names), prediction, name_of(prediction, names), f"{confidence:.4f}")
                for index, (label, prediction, confidence) in enumerate(rows)
            ),
        )
        accuracy = (columns["label"] == columns["prediction"]).float().mean().item()
        self.summary = f"Wrote {len(columns['label'])} predictions to {path} (accuracy {accuracy:.2%})."

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Printed here, after the progress bar has finished its line.
        if self.summary:
            print(self.summary)
            self.summary = ""


class PlainProgressBar(ProgressBar):
    """Progress as whole lines, for output that goes to a file (nohup, SLURM, CI) instead of a terminal.

    A progress bar redraws itself with carriage returns, which fill a log file with hundreds of partial lines.
    This prints about ``lines_per_epoch`` lines per training epoch (step, loss, images/s) and one line per
    validation or test with its results.
    """

    def __init__(self, lines_per_epoch: int = 10, stream=None) -> None:
        super().__init__()
        self.lines_per_epoch = lines_per_epoch
        self.stream = stream
        self.enabled = True
        self.epoch_start = 0.0
        self.images = 0

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def write(self, text: str) -> None:
        if self.enabled and self.trainer.is_global_zero:
            print(text, file=self.stream or sys.stdout, flush=True)

    def values(self, trainer: Trainer, pl_module: LightningModule) -> str:
        shown = {
            key: value
            for key, value in self.get_metrics(trainer, pl_module).items()
            if key != "v_num" and not key.startswith("val/")  # validation has its own line
        }
        return "  ".join(
            f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in shown.items()
        )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.epoch_start, self.images = time.perf_counter(), 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # An epoch resumed in the middle gets no on_train_epoch_start from Lightning: its images/s counts from here.
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self.images += len(batch[1])
        total = self.total_train_batches
        every = (
            max(1, int(total // self.lines_per_epoch))
            if isinstance(total, (int, float)) and total != float("inf")
            else 50
        )
        if (batch_idx + 1) % every == 0 or batch_idx + 1 == total:
            rate = self.images / max(time.perf_counter() - self.epoch_start, 1e-9)
            self.write(
                f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  step {batch_idx + 1}/{total}  "
                f"{self.values(trainer, pl_module)}  {rate:.0f} images/s"
            )

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            where = f"epoch {trainer.current_epoch + 1} " if trainer.training or trainer.state.fn == "fit" else ""
            self.write(f"{where}validation: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        self.write("test: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))


class CompactModelSummary(ModelSummary):
    """Lightning's model summary without the rows of modules that hold no parameters (loss, metrics), and with
    the network's multiply-adds per image, the paper's measure of cost (half the floating-point operations)."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        columns = dict(summary_data)
        keep = [i for i, count in enumerate(columns.get("Params", [])) if count.strip() != "0"]
        summary_data = [(name, [values[i] for i in keep]) for name, values in summary_data]
        ModelSummary.summarize(
            summary_data, total_parameters, trainable_parameters, model_size, total_training_modes, total_flops
        )
        if total_flops:
            rank_zero_info(f"{total_flops / 2 / 1e6:.1f} M multiply-adds per image (the paper's measure of cost)")


class Preempted(SystemExit):
    """Training stopped by a signal after saving a resumable checkpoint; exits with 128 + the signal's number."""


class Preemption(Callback):
    """SIGTERM (a scheduler preempting the job, ``kill``) and SIGINT (Ctrl+C) during ``fit`` finish the current
    training batch, save a resumable ``last.ckpt`` there (mid-epoch: the sampler's state goes with it), say how
    to resume, and exit with 128 + the signal number, so that ``fit && test`` or a requeue script knows the run
    did not finish. A second Ctrl+C stops at once, as usual.

    The stop waits for a batch that is not an epoch's last (the epoch then ends as usual: validation, its
    checkpoints, its logged figures) and that completes a gradient accumulation; a signal during validation
    stops after the next training batch. ``--ckpt_path last`` then continues with the next batch; on the CPU
    the result is bit-identical to a run that was never interrupted.

    The handlers replace Lightning's own SIGTERM handling for the time of training (Lightning would end the run
    with status 0 and no checkpoint); Lightning restores the handlers it found when ``fit`` ends, however it ends.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, last_path: str | Path, resume_hint: str) -> None:
        self.last_path = Path(last_path)
        self.resume_hint = resume_hint
        self.received: int | None = None

    def install(self) -> None:
        # After Lightning registers its handlers (right before the sanity check and the training loop).
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for signum in self.SIGNALS:
                signal.signal(signum, self.notice)

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.install()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.install()

    def notice(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # pressed twice: do not wait for the batch to finish
        self.received = signum

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if batch_idx + 1 >= trainer.num_training_batches or (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # the epoch's last batch, or gradients still accumulating: stop later
        if trainer.world_size > 1 and trainer.global_step % max(1, trainer.log_every_n_steps):
            # Every rank must stop at the same batch (saving is collective), and asking the others is a
            # collective too: once per log_every_n_steps steps, as the loss check reads the device.
            return
        if self.requested(trainer):
            trainer.save_checkpoint(self.last_path, weights_only=False)
            where = (
                f"in epoch {trainer.current_epoch + 1} after batch {batch_idx + 1} of {trainer.num_training_batches}"
            )
            self.stop(trainer, f"{where} (step {trainer.global_step}); saved {shown(self.last_path)}")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A signal during an epoch's last batch or its validation: that epoch ended as usual and its last.ckpt
        # is written; stop before the next one begins.
        if trainer.current_epoch > 0 and self.requested(trainer):
            self.stop(trainer, f"after epoch {trainer.current_epoch} (step {trainer.global_step}), whose checkpoint "
                               f"{shown(self.last_path)} holds it")  # fmt: skip

    def requested(self, trainer: Trainer) -> bool:
        stop = self.received is not None
        return trainer.strategy.reduce_boolean_decision(stop, all=False) if trainer.world_size > 1 else stop

    def stop(self, trainer: Trainer, where: str) -> None:
        signum = self.received or signal.SIGTERM
        if trainer.is_global_zero:
            name = signal.Signals(signum).name
            print(f"Stopped by {name} {where}. Resume with: {self.resume_hint}", file=sys.stderr, flush=True)
        raise Preempted(128 + signum)
