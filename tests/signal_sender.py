"""A callback for tests (``--trainer.callbacks+=signal_sender.SignalDuringValidation``): sends this process a
SIGTERM while the first epoch is being validated, as a scheduler might at any moment."""

import os
import signal

from lightning.pytorch import Callback


class SignalDuringValidation(Callback):
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == 0 and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


class SignalDuringEvaluation(Callback):
    """Sends this process a SIGTERM at the first batch of ``validate``, ``test`` or ``predict``."""

    def send(self, batch_idx: int) -> None:
        if batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.send(batch_idx)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.send(batch_idx)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.send(batch_idx)
