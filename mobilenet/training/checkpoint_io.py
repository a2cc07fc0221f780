"""Lightning's checkpoint I/O with atomic saves (``mobilenet.files.atomic_write``), weights-only loads, and
errors a user can act on."""

from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from mobilenet.errors import UsageError
from mobilenet.files import DISK_FULL, atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """A process killed during a save, or a disk that fills up, leaves the previous ``last.ckpt`` whole; loading
    uses ``weights_only=True``, so a checkpoint from elsewhere cannot run code when it is opened."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's fsspec path
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        try:
            with atomic_write(path) as file:
                torch.save(checkpoint, file)
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
