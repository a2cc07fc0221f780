"""Weights & Biases tracking: a logger that never waits for a login, and a callback for what it records.

``configs/wandb.yaml`` turns it on next to the CSV logs. With an API key (``WANDB_API_KEY`` or ``wandb login``)
the run streams to W&B and its checkpoints are uploaded as artifacts at the end of training; without one it
is recorded offline under ``logs/wandb/`` for ``wandb sync`` to upload later.
"""

import importlib
import netrc
import os
import socket
import threading
from pathlib import Path
from typing import Literal, Optional, Union
from urllib.parse import urlsplit

import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only

from mobilenet.errors import UsageError
from mobilenet.files import shown
from mobilenet.training.runs import is_launching_process

# Key under which a checkpoint keeps its W&B run id, so that `fit --ckpt_path` continues the same run.
RUN_ID_KEY = "wandb_run_id"
OFFLINE_MODES = ("offline", "dryrun", "disabled")
# How long to wait for the W&B server before recording offline.
PROBE_SECONDS = 5.0


def has_api_key() -> bool:
    """Whether wandb would find credentials without asking: WANDB_API_KEY or a ~/.netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger`` that picks offline mode by itself instead of prompting for a login.

    Args:
        name: Display name of the run; the CLI sets it to the run name.
        save_dir: Folder for W&B's local files (``<save_dir>/wandb/``).
        project: W&B project.
        log_model: Upload checkpoints as artifacts at the end of training (``all``: every time one is saved).
            Needs a connection: offline, checkpoints stay only in the run's checkpoint folder.
        offline: ``None`` (default): offline when there is no API key, ``WANDB_MODE`` says so, or the server cannot
            be reached within 5 s; ``false`` insists on online (a run that cannot reach the server stops at once).
        id: Run id to continue; the CLI takes it from the checkpoint when resuming.
        images_per_epoch: Validation images logged as a table (image, label, prediction, confidence) after
            each validation epoch; 0 turns the table off.
    """

    def __init__(
        self,
        name: Optional[str] = None,
        save_dir: str = "logs",
        project: str = "mobilenet",
        log_model: Union[Literal["all"], bool] = True,
        offline: Optional[bool] = None,
        id: Optional[str] = None,
        images_per_epoch: int = 16,
        **kwargs,
    ) -> None:
        self.offline_reason = "offline=true in the config"
        if offline is None:
            mode = os.environ.get("WANDB_MODE", "").lower()
            offline = mode in OFFLINE_MODES or not has_api_key()
            self.offline_reason = (
                f"WANDB_MODE={mode}" if mode in OFFLINE_MODES else "no API key in WANDB_API_KEY or ~/.netrc"
            )
            if not offline and (unreachable := server_unreachable()):
                offline, self.offline_reason = True, unreachable
        elif not offline and (unreachable := server_unreachable()):
            raise UsageError(
                f"W&B is set to record online (offline: false), but {unreachable}. Check the network connection, "
                f"or leave `offline` unset: the run is then recorded offline and can be uploaded later."
            )
        # Lightning refuses log_model together with offline; rather than fail, the checkpoints stay local and
        # the offline notice says so (WandbRunCallback.announce).
        self.kept_checkpoints_local = bool(log_model) and offline
        self.images_per_epoch = images_per_epoch
        # The CLI passes every wandb.init argument, unset ones as None; a None `resume` would override
        # Lightning's resume="allow", which continuing a run by its id needs.
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        if offline and "settings" not in kwargs:
            import wandb

            # One notice (WandbRunCallback.announce) instead of wandb's five lines around the progress bar.
            kwargs["settings"] = wandb.Settings(silent=True)
        super().__init__(
            name=name,
            save_dir=save_dir,
            project=project,
            log_model=False if offline else log_model,
            offline=offline,
            id=id,
            **kwargs,
        )
        self.offline = offline
        # The one private attribute used here: Lightning 2.6's WandbLogger passes anonymous=None to wandb.init
        # when unset, and wandb 0.2x warns about the setting even then; the logger has no public way to leave it out.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous")


def server_unreachable(timeout: float = PROBE_SECONDS) -> str:
    """Why the W&B server cannot be reached (empty when it can): one connection attempt, bounded in time.

    Without this, wandb waits about 100 s for a server it cannot reach and then stops the run with a traceback.
    """
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return ""  # through a proxy: a direct connection says nothing; wandb uses the proxy
    if not is_launching_process():
        return ""  # the processes DDP starts log nothing themselves
    url = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host, port = url.hostname or "api.wandb.ai", url.port or (443 if url.scheme == "https" else 80)
    outcome: list[str] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append("")
        except OSError as err:
            outcome.append(f"the server {host}:{port} cannot be reached ({type(err).__name__}: {err})")

    probe = threading.Thread(target=connect, daemon=True)  # name lookups ignore the socket's timeout
    probe.start()
    probe.join(timeout + 1)
    return outcome[0] if outcome else f"the server {host}:{port} did not answer within {timeout:g} s"


def is_wandb_logger(class_path: str) -> bool:
    """Whether a config's ``class_path`` names Lightning's WandbLogger or a subclass (such as the one here)."""
    module, _, name = class_path.rpartition(".")
    try:
        return issubclass(getattr(importlib.import_module(module), name), LightningWandbLogger)
    except (ImportError, AttributeError, TypeError, ValueError):
        return False


def wandb_loggers(trainer: Trainer) -> list[WandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


class WandbRunCallback(Callback):
    """Says where an offline run went, keeps the run id in checkpoints, logs labelled validation images."""

    def __init__(self, logger: WandbLogger) -> None:
        self.logger = logger

    @rank_zero_only
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.logger.offline:
            self.announce(trainer)

    def announce(self, trainer: Trainer) -> None:
        run_dir = Path(self.logger.experiment.dir).parent  # .../offline-run-<time>-<id>/files → the run folder
        message = f"W&B runs offline ({self.logger.offline_reason}): this run is recorded in {run_dir}."
        if self.logger.kept_checkpoints_local:
            where = getattr(trainer.checkpoint_callback, "dirpath", None) or "the checkpoint folder"
            where = shown(where)  # Lightning made it absolute; say it as the user did
            message += f" Checkpoints are not uploaded as artifacts offline; they stay in {where}."
        print(f"{message} Upload the run later with: wandb sync {run_dir}")

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        if self.logger.version:
            checkpoint[RUN_ID_KEY] = self.logger.version

    @torch.no_grad()
    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        count = self.logger.images_per_epoch
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking or count < 1 or not trainer.is_global_zero:
            return
        import wandb

        images, labels = batch[0][:count], batch[1][:count]  # normalised, as the model saw them
        confidence, prediction = pl_module(images).float().softmax(dim=1).max(dim=1)
        data = trainer.datamodule
        names = getattr(data, "class_names", None) or [str(i) for i in range(int(prediction.max()) + 1)]
        mean = torch.tensor(data.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(data.std, device=images.device).view(1, -1, 1, 1)
        pixels = ((images.float() * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        rows = [
            [wandb.Image(pixels[i]), names[labels[i]], names[prediction[i]], round(float(confidence[i]), 4)]
            for i in range(len(labels))
        ]
        step = trainer.global_step
        self.logger.log_table(
            "val/samples", columns=["image", "label", "prediction", "confidence"], data=rows, step=step
        )
        # Offline runs keep a table's images only as the word "Image" (wandb/wandb#4611), so the same images
        # are logged once more as captioned pictures, which survive `wandb sync`.
        captions = [f"{label} / {prediction} ({confidence:.0%})" for _, label, prediction, confidence in rows]
        self.logger.log_image("val/images", images=list(pixels), caption=captions, step=step)


class SaveConfigEverywhere(SaveConfigCallback):
    """Writes config.yaml to the log folder (Lightning's behaviour) and records it in every W&B run too."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        loggers = wandb_loggers(trainer)
        if loggers:
            config = yaml.safe_load(self.parser.dump(self.config, skip_unset=False))
            for logger in loggers:
                logger.log_hyperparams({"config": config})
