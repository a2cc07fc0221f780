"""A callback for the DDP test: which training images each rank saw in each epoch, written to a JSON file.

Images are named by a hash of their pixels after the (augmentation-free) batch transform, which is the same
on every rank, so the files of two ranks can be compared.
"""

import hashlib
import json
from collections import defaultdict
from pathlib import Path

from lightning.pytorch import Callback
from torch import nn


class ShardRecorder(Callback):
    def __init__(self, folder: str = "shards") -> None:
        self.folder = Path(folder)
        self.seen: dict[int, list[str]] = defaultdict(list)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        images = batch[0].detach().cpu().contiguous()
        self.seen[trainer.current_epoch] += [hashlib.sha256(image.numpy().tobytes()).hexdigest() for image in images]

    def on_fit_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(exist_ok=True)
        record = {
            "world_size": trainer.world_size,
            "sync_batchnorm": any(isinstance(m, nn.SyncBatchNorm) for m in pl_module.modules()),
            "epochs": {str(epoch): images for epoch, images in self.seen.items()},
        }
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
