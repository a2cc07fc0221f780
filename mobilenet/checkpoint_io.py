"""Checkpoint files written atomically and read without running pickled code.

A checkpoint is first written in full to a hidden ``.<name>.partial-<pid>`` file in the same folder, flushed
to the disk, then renamed over ``<name>`` (a rename within one file system is atomic). A process killed
during a save, or a disk that fills up, therefore leaves the previous ``last.ckpt`` whole; the partial file
does not end in ``.ckpt``, so it is never taken for a checkpoint. Loading uses ``weights_only=True``:
tensors and plain data only, so a checkpoint from elsewhere cannot run code when it is opened.
"""

import errno
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from mobilenet.errors import UsageError

PARTIAL_MARK = ".partial-"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL_MARK}{os.getpid()}")


def save_atomically(checkpoint: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a partial file next to ``path``, fsync, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}{PARTIAL_MARK}*"):  # left by a process killed mid-save
        stale.unlink(missing_ok=True)
    partial = partial_path(path)
    try:
        with open(partial, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic local saves, weights-only loads and errors a user can act on."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's fsspec path
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        try:
            save_atomically(checkpoint, path)
        except OSError as err:
            problem = "the disk is full" if err.errno in DISK_FULL else f"{type(err).__name__}: {err.strerror or err}"
            kept = sorted(p.name for p in path.parent.glob("*.ckpt"))
            raise UsageError(
                f"Could not save the checkpoint '{path}' ({problem}). Training stopped there; the checkpoints "
                f"already in '{path.parent}' are unchanged ({', '.join(kept) or 'none yet'}). Free some space or "
                f"make the folder writable, then resume with --ckpt_path last."
            ) from err

    def load_checkpoint(
        self, path, map_location: Optional[Callable] = lambda storage, loc: storage, weights_only: Optional[bool] = None
    ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location, weights_only=weights_only is not False)
