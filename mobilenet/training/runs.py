"""Run folders: a run's name, where its files live, and what ``--ckpt_path last`` and ``best`` mean.

A run named NAME keeps
    checkpoints/NAME/            last.ckpt (rewritten after every epoch) and the best checkpoint by val/acc
    logs/NAME/version_<n>/       one folder per `fit` session: metrics.csv, config.yaml
    logs/NAME/eval/<checkpoint>/ what evaluating one checkpoint wrote: validate/, test/, predict/, report/
"""

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

from lightning.pytorch.callbacks import ModelCheckpoint

from mobilenet.errors import UsageError
from mobilenet.record import read_checkpoint

CHECKPOINT_ROOT = Path("checkpoints")
LOG_ROOT = Path("logs")
EVALUATION_FOLDER = "eval"
DEFAULT_RUN_NAME = "default"
LAST_NAME = "last.ckpt"
ALIASES = ("last", "best")
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
# What a run leaves in its log folder before it has recorded anything.
UNRECORDED_LOG_FILES = {"config.yaml", "hparams.yaml"}


def check_run_name(name: str) -> str:
    """A run name is a folder name under checkpoints/ and logs/, never a path that leads elsewhere."""
    if not RUN_NAME.fullmatch(name):
        raise UsageError(
            f"--run_name {name!r} is not a run name: use letters, digits, '.', '_', '+' and '-' (starting with a "
            f"letter or digit, at most 100 characters). It names the folders checkpoints/NAME and logs/NAME; "
            f"to keep runs elsewhere, run the command from another folder."
        )
    return name


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


def recorded_best(checkpoint: dict) -> Optional[str]:
    """The best checkpoint's file name as the val/acc checkpoint callback recorded it when ``checkpoint`` was saved."""
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("monitor") and state.get("best_model_path"):
            return Path(str(state["best_model_path"])).name
    return None


def best_checkpoint(run_dir: Path, run_name: str) -> Path:
    """The run's best checkpoint, as its checkpoint callback recorded it (any file name pattern works).

    Each checkpoint keeps the callback's record of the best file at the time it was saved; the newest one
    (highest step; ``last.ckpt`` among equals) knows the latest best.
    """
    records = []
    for path in checkpoint_files(run_dir):
        checkpoint = read_checkpoint(path)
        records.append((int(checkpoint.get("global_step") or 0), path.name == LAST_NAME, recorded_best(checkpoint)))
    named = [name for *_, name in sorted(records, key=lambda record: record[:2], reverse=True) if name]
    if named and (run_dir / named[0]).is_file():
        return run_dir / named[0]
    if named:
        raise UsageError(
            f"--ckpt_path best: run '{run_name}' recorded '{named[0]}' as its best checkpoint, but that file is no "
            f"longer in '{run_dir}'. Pass a checkpoint file, or --ckpt_path last."
        )
    if records:
        raise UsageError(
            f"--ckpt_path best: run '{run_name}' has checkpoints in '{run_dir}' but none was chosen as the best, "
            f"because no validation has run yet (e.g. --trainer.limit_val_batches 0, or stopped before the first "
            f"epoch ended). Use --ckpt_path last."
        )
    raise UsageError(f"--ckpt_path best: no checkpoint in '{run_dir}' (run '{run_name}'). {what_to_do(run_dir)}")


def checkpoint_file(ckpt_path: str) -> Path:
    """``--ckpt_path`` given as a path: it must be a file."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise UsageError(
            f"--ckpt_path '{ckpt_path}' is not a file. Pass a checkpoint file, or 'last' / 'best' for the checkpoints "
            f"of the run named by --config or --run_name."
        )
    return path


def what_to_do(run_dir: Path) -> str:
    """Advice for a run folder without checkpoints: the runs that do have some, or how to make one."""
    runs = sorted(p.name for p in run_dir.parent.glob("*") if p.is_dir() and p != run_dir and checkpoint_files(p))
    if runs:
        return (
            f"Runs with checkpoints here: {', '.join(runs)}; name one with --run_name (or the --config it was "
            f"trained with), or pass a checkpoint file."
        )
    return "Train the run first with `mobilenet fit` and the same --config / --run_name, or pass a checkpoint file."


def resolve_checkpoint(ckpt_path: str, run_dir: Path, run_name: str, command: str) -> Optional[Path]:
    """A checkpoint file for ``ckpt_path``: a path as given, ``last`` or ``best`` looked up in ``run_dir``.

    ``fit --ckpt_path last`` with no checkpoint yet starts the run from scratch (returns None), so that a
    job script can always pass it; every other missing checkpoint is an error.
    """
    if ckpt_path not in ALIASES:
        return checkpoint_file(ckpt_path)
    if ckpt_path == "best":
        return best_checkpoint(run_dir, run_name)
    if (run_dir / LAST_NAME).is_file():
        return run_dir / LAST_NAME
    if command == "fit":
        print(f"No checkpoint in '{run_dir}' yet: run '{run_name}' starts from scratch.")
        return None
    raise UsageError(f"--ckpt_path last: no {LAST_NAME} in '{run_dir}' (run '{run_name}'). {what_to_do(run_dir)}")


def evaluation_dir(run_name: str, checkpoint: Path, run_dir: Optional[Path] = None) -> Path:
    """Where evaluating ``checkpoint`` writes: logs/<run>/eval/<checkpoint file name without .ckpt>/.

    A file from outside the run's checkpoint folder ``run_dir`` whose name the run's own files use (another run's
    last.ckpt) gets eval/<its folder's name>-<file name>/ instead, so that it does not overwrite what evaluating
    the run's own file wrote.
    """
    name = checkpoint.stem
    if run_dir is not None and checkpoint.resolve().parent != run_dir.resolve():
        if checkpoint.name == LAST_NAME or (run_dir / checkpoint.name).exists():
            name = f"{checkpoint.resolve().parent.name}-{checkpoint.stem}"
    return LOG_ROOT / run_name / EVALUATION_FOLDER / name


def refuse_to_rewind(run_dir: Path, run_name: str, checkpoint: Path, step: int) -> None:
    """``fit`` from one of the run's older checkpoints (its best file) would replace the newer last.ckpt with a
    continuation of the older epoch: refused, with the two ways to do what was meant."""
    last = run_dir / LAST_NAME
    if checkpoint.resolve().parent != run_dir.resolve() or checkpoint.name == LAST_NAME or not last.is_file():
        return
    newest = int(read_checkpoint(last).get("global_step") or 0)
    if newest <= step:
        return
    raise UsageError(
        f"--ckpt_path '{checkpoint}' is at step {step} of run '{run_name}', but the run's {LAST_NAME} is at step "
        f"{newest}: resuming from the older file would replace {LAST_NAME} with a continuation of it, and the newer "
        f"steps would be lost. Resume the run with --ckpt_path last, or continue from this checkpoint as a new run: "
        f"--run_name NEW_NAME --ckpt_path {checkpoint}."
    )


def check_checkpoint_filename(filename: Optional[str]) -> None:
    """``--checkpoint.filename`` names a file in the run's folder; a folder in it would put the best checkpoint
    where ``--ckpt_path best`` and the run's other checks do not look."""
    literal = re.sub(r"\{[^}]*\}", "", filename or "")  # metric names inside {...} (val/acc) are not folders
    if "/" in literal or "\\" in literal:
        raise UsageError(
            f"--checkpoint.filename {filename!r} holds a folder: it names the best checkpoint's file inside the "
            f"run's folder. Give a file name pattern such as 'best-{{epoch}}', and choose the folder with "
            f"--checkpoint.dirpath (or --run_name)."
        )


def last_checkpoint(dirpath: str) -> ModelCheckpoint:
    """Rewrites ``<dirpath>/last.ckpt`` after every epoch.

    ``ModelCheckpoint(save_last=True)`` in Lightning 2.6 rewrites last.ckpt only in epochs that also saved a
    best file, so after an epoch without improvement ``--ckpt_path last`` would resume from an older one.
    """
    return ModelCheckpoint(
        dirpath=dirpath, filename=Path(LAST_NAME).stem, monitor=None, save_top_k=1, enable_version_counter=False
    )


def remove_if_empty(log_dir: Path) -> None:
    """Delete a log folder that holds nothing but the run's configuration (a run that failed before logging)."""
    if log_dir.is_dir() and {path.name for path in log_dir.iterdir()} <= UNRECORDED_LOG_FILES:
        shutil.rmtree(log_dir)
        root = LOG_ROOT.resolve()
        parent = log_dir.parent
        # logs/<run>/... of a run that never logged anything, up to logs/ itself (never outside it)
        while root in parent.resolve().parents and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def is_launching_process() -> bool:
    """Whether this is the process that started the run: not one of the ranks Lightning or torchrun starts."""
    for variable in ("RANK", "SLURM_PROCID"):  # torchrun; srun (one task per process)
        if variable in os.environ:
            return os.environ[variable] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


class RunLock:
    """One writer per run: ``checkpoints/<run>/.lock``, held (``flock``) by the ``fit`` that trains the run.

    The file says who holds it (process id, host, start time, command). The operating system releases the lock
    when that process ends in any way, ``kill -9`` included, so a lock left behind by a killed run is simply
    taken over by the next ``fit``; a fit that ends normally removes the file.
    """

    NAME = ".lock"
    held: list["RunLock"] = []  # the locks this process holds

    def __init__(self, run_dir: Path, run_name: str) -> None:
        self.run_dir, self.path = run_dir, run_dir / self.NAME
        # The folders this lock makes, removed again if the fit leaves them empty (it failed at once).
        self.created = [folder for folder in (run_dir, run_dir.parent) if not folder.exists()]
        run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            self.file = open(self.path, "a+")
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self.holder()
                self.file.close()
                raise UsageError(
                    f"Run '{run_name}' is being trained by another process ({self.describe(holder)}): two fits of "
                    f"one run would mix their checkpoints. Wait for it to finish, stop it, or train under another "
                    f"--run_name."
                ) from None
            # The holder removes the file when it finishes: a lock taken on a file already removed (or replaced)
            # is no lock; take the current file's.
            if self.path.exists() and os.stat(self.path).st_ino == os.fstat(self.file.fileno()).st_ino:
                break
            self.file.close()
        previous = self.holder()
        if previous.get("pid") and (previous.get("pid"), previous.get("host")) != (os.getpid(), socket.gethostname()):
            print(f"Taking over the lock of run '{run_name}' left by an ended process ({self.describe(previous)}).")
        self.file.seek(0)
        self.file.truncate()
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.file.write(json.dumps({**record, "command": " ".join(sys.argv)}))
        self.file.flush()

    @classmethod
    def acquire(cls, run_dir: Path, run_name: str) -> "RunLock":
        lock = cls(run_dir, run_name)
        cls.held.append(lock)
        return lock

    @classmethod
    @contextlib.contextmanager
    def released_at_exit(cls) -> Iterator[None]:
        """Release the locks acquired inside the ``with`` block when it ends, however it ends."""
        before = len(cls.held)
        try:
            yield
        finally:
            while len(cls.held) > before:
                cls.held.pop().release()

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    @staticmethod
    def describe(holder: dict) -> str:
        if not holder.get("pid"):
            return "unknown process"
        return f"process {holder['pid']} on {holder.get('host', '?')}, started {holder.get('started', '?')}"

    def release(self) -> None:
        """Remove the file and unlock; a run folder the lock alone created (a fit that failed at once) goes too."""
        if self.file.closed:
            return
        self.path.unlink(missing_ok=True)
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
        for folder in self.created:  # the run folder first, then checkpoints/ if this fit made that too
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
