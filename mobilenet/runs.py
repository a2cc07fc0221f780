"""Run folders: a run's name, where its checkpoints live, and what ``--ckpt_path last`` and ``best`` mean.

Each experiment keeps its checkpoints in ``checkpoints/<run name>/`` (``last.ckpt`` rewritten after every
epoch, plus the ``best-….ckpt`` with the highest ``val/acc``) and its CSV logs in
``logs/<run name>/version_<n>/``.
"""

import math
import re
import shutil
from pathlib import Path
from typing import Optional, Sequence

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from mobilenet.data.datamodule import NUM_CLASSES
from mobilenet.errors import UsageError

CHECKPOINT_ROOT = Path("checkpoints")
LOG_ROOT = Path("logs")
DEFAULT_RUN_NAME = "default"
BEST_PREFIX = "best-"
LAST_NAME = "last.ckpt"
ALIASES = ("last", "best")
# What the checkpoint was trained and validated on wins over the config when evaluating or resuming it:
# another resolution or split would measure something else (or validate on training images).
DATA_FROM_CHECKPOINT = ("dataset", "resolution", "val_size", "split_seed")
# The network's shape always comes from the checkpoint (LightningCLI reads its hyper-parameters); these are
# the settings a user may have changed on the command line expecting them to apply.
MODEL_FROM_CHECKPOINT = ("width_mult", "stem_stride", "activation", "dropout", "label_smoothing")
# How torch's weights_only loader names an object it refuses ("Unsupported global: GLOBAL os.system").
UNSAFE_OBJECT = "Unsupported global:"
# What a run leaves in its log folder before it has recorded anything.
UNRECORDED_LOG_FILES = {"config.yaml", "hparams.yaml"}
SCORE_IN_NAME = re.compile(r"val_acc=(\d+(?:\.\d+)?)")


def run_name_from(config_files: Optional[Sequence]) -> str:
    """The first ``--config`` file's name without extension (``configs/cifar10.yaml`` → ``cifar10``)."""
    for config in config_files or ():
        path = getattr(config, "relative", None) or getattr(config, "absolute", None) or config
        return Path(str(path)).stem
    return DEFAULT_RUN_NAME


def checkpoint_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("*.ckpt")) if run_dir.is_dir() else []


def refuse_to_mix(run_dir: Path, run_name: str, ckpt_path: Optional[str]) -> None:
    """A ``fit`` must not write into a run folder that holds another run's checkpoints.

    Resuming from one of the folder's own checkpoints is the one way to continue writing there.
    """
    existing = checkpoint_files(run_dir)
    if not existing or (ckpt_path and Path(ckpt_path).resolve().parent == run_dir.resolve()):
        return
    raise UsageError(
        f"'{run_dir}' already holds checkpoints of an earlier run '{run_name}' "
        f"({', '.join(p.name for p in existing)}); a fresh fit would mix two experiments' files. "
        f"Resume that run with --ckpt_path last, start a separate one with --run_name NEW_NAME, "
        f"or delete the folder to start over."
    )


def best_checkpoint(run_dir: Path) -> Optional[Path]:
    """The ``best-*.ckpt`` with the highest ``val_acc`` in its name; the newest among equals or unnamed scores."""

    def rank(path: Path) -> tuple[float, float]:
        score = SCORE_IN_NAME.search(path.name)
        return (float(score.group(1)) if score else -math.inf, path.stat().st_mtime)

    candidates = sorted(run_dir.glob(f"{BEST_PREFIX}*.ckpt"), key=rank)
    return candidates[-1] if candidates else None


def resolve_checkpoint(ckpt_path: str, run_dir: Path, run_name: str, subcommand: str) -> Optional[str]:
    """A checkpoint file for ``ckpt_path``: a path as given, ``last`` or ``best`` looked up in ``run_dir``.

    ``fit --ckpt_path last`` with no checkpoint yet starts the run from scratch (returns None), so that a
    job script can always pass it; every other missing checkpoint is an error.
    """
    if ckpt_path not in ALIASES:
        if not Path(ckpt_path).is_file():
            raise UsageError(
                f"--ckpt_path '{ckpt_path}' is not a file. Pass a checkpoint file, or 'last' / 'best' to use "
                f"the run's own checkpoints in '{run_dir}'."
            )
        return ckpt_path
    if ckpt_path == "last":
        found = run_dir / LAST_NAME if (run_dir / LAST_NAME).is_file() else None
    else:
        found = best_checkpoint(run_dir)
    if found:
        return str(found)
    if subcommand == "fit" and ckpt_path == "last":
        print(f"No checkpoint in '{run_dir}' yet: run '{run_name}' starts from scratch.")
        return None
    raise UsageError(
        f"--ckpt_path {ckpt_path}: no {ckpt_path} checkpoint in '{run_dir}' (run '{run_name}'). Train the run "
        f"first with `mobilenet fit` and the same --config / --run_name, or pass a checkpoint file path."
    )


def read_checkpoint(path: str) -> dict:
    """Load a checkpoint's contents as plain data, or explain why the file is not a usable checkpoint."""
    try:
        # mmap: only the parts read here (hyper-parameters) come off the disk; the Trainer loads the weights.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, not a torch file at all: one answer for all
        if UNSAFE_OBJECT in str(err):  # weights_only refused an object: say so instead of torch's long advice
            refused = str(err).split(UNSAFE_OBJECT)[1].split(" was not an allowed global")[0].strip()
            raise UsageError(
                f"'{path}' holds Python objects other than tensors and plain data ({refused}); it is not loaded, "
                f"because unpickling such objects can run arbitrary code. Checkpoints written by `mobilenet fit` "
                f"never contain them: use one of those."
            ) from err
        raise UsageError(
            f"'{path}' could not be read as a checkpoint ({type(err).__name__}: {err}). It may be truncated by an "
            f"interrupted copy or not be a checkpoint written by `mobilenet fit`; pick another file, or 'last' / "
            f"'best' of a run."
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UsageError(f"'{path}' holds no model weights (no 'state_dict'): it is not a Lightning checkpoint.")
    return checkpoint


def last_checkpoint(dirpath: str) -> ModelCheckpoint:
    """Rewrites ``<dirpath>/last.ckpt`` after every epoch.

    ``ModelCheckpoint(save_last=True)`` in Lightning 2.6 rewrites last.ckpt only in epochs that also saved a
    best file, so after an epoch without improvement ``--ckpt_path last`` would resume from an older one.
    """
    return ModelCheckpoint(
        dirpath=dirpath, filename=Path(LAST_NAME).stem, monitor=None, save_top_k=1, enable_version_counter=False
    )


def adopt_checkpoint_data(data, checkpoint: dict) -> None:
    """Take the data settings that define the checkpoint's task from it, saying so when they differ."""
    saved = checkpoint.get("datamodule_hyper_parameters") or {}
    if "root" in saved and "root" not in data:
        raise UsageError(
            f"The checkpoint was trained on the image folders in '{saved['root']}', not on CIFAR. Evaluate it on "
            f"them with --data ImageFolderDataModule --data.root {saved['root']}."
        )
    if "dataset" in saved and "dataset" not in data:
        raise UsageError(
            f"The checkpoint was trained on {saved['dataset']}, not on image folders. Evaluate it with "
            f"--data CIFARDataModule --data.dataset {saved['dataset']} (the default data of the configs)."
        )
    changed = []
    for key in DATA_FROM_CHECKPOINT:
        if key in saved and key in data and data[key] != saved[key]:
            changed.append(f"{key}={saved[key]} (the config said {data[key]})")
            data[key] = saved[key]
    if changed:
        print("Using the checkpoint's data settings: " + ", ".join(changed) + ".")
    trained_for = (checkpoint.get("hyper_parameters") or {}).get("num_classes")
    if "dataset" in data and trained_for and trained_for != NUM_CLASSES.get(data.dataset, trained_for):
        raise UsageError(
            f"The checkpoint was trained for {trained_for} classes but --data.dataset {data.dataset} has "
            f"{NUM_CLASSES[data.dataset]}. Use the dataset it was trained on, or another checkpoint."
        )


def note_model_from_checkpoint(model, checkpoint: dict) -> None:
    """Say which network settings of the config give way to the checkpoint's (LightningCLI applies them)."""
    saved = checkpoint.get("hyper_parameters") or {}
    changed = [
        f"{key}={saved[key]} (the config said {model[key]})"
        for key in MODEL_FROM_CHECKPOINT
        if key in saved and key in model and model[key] != saved[key]
    ]
    if changed:
        print("Using the checkpoint's model settings: " + ", ".join(changed) + ".")


def remove_if_empty(log_dir: Path) -> None:
    """Delete a log folder that holds nothing but the run's configuration (a run that failed before logging)."""
    if log_dir.is_dir() and {path.name for path in log_dir.iterdir()} <= UNRECORDED_LOG_FILES:
        shutil.rmtree(log_dir)
        if not any(log_dir.parent.iterdir()):  # logs/<run>/ of a run that never logged anything
            log_dir.parent.rmdir()
