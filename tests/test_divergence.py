"""StopOnNonFiniteLoss reads losses back once per logging window, yet names the first bad step exactly."""

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from mobilenet.errors import UsageError
from mobilenet.training.callbacks import StopOnNonFiniteLoss


class DivergesAt(LightningModule):
    """A linear model whose loss is nan from training step ``bad_step`` (1-based) on; counts the steps run."""

    def __init__(self, bad_step: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.bad_step = bad_step
        self.steps_run = 0

    def training_step(self, batch, batch_idx):
        self.steps_run += 1
        loss = self.layer(batch[0]).pow(2).mean()
        return loss * float("nan") if self.steps_run >= self.bad_step else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(module: LightningModule, log_every_n_steps: int, max_steps: int, checkpoints_in=None):
    data = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=4)  # 16 batches per epoch
    trainer = Trainer(
        max_steps=max_steps,
        log_every_n_steps=log_every_n_steps,
        callbacks=[StopOnNonFiniteLoss()],
        logger=False,
        enable_checkpointing=checkpoints_in is not None,
        default_root_dir=checkpoints_in,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, data)
    return trainer


@pytest.mark.parametrize("bad_step", [1, 7, 10, 11])
def test_the_first_non_finite_step_is_named_and_training_stops_within_one_window(bad_step):
    module = DivergesAt(bad_step)
    with pytest.raises(UsageError, match=rf"became nan at step {bad_step} \(epoch 0, batch {bad_step} of 16\)"):
        fit(module, log_every_n_steps=5, max_steps=40)
    window_end = -(-bad_step // 5) * 5
    assert bad_step <= module.steps_run == window_end


def test_a_run_that_ends_inside_a_window_is_still_checked():
    # The loss turns nan at step 12 of 13; the window of 5 is not full when training ends.
    with pytest.raises(UsageError, match="became nan at step 12"):
        fit(DivergesAt(12), log_every_n_steps=5, max_steps=13)


def test_diverged_weights_are_never_saved(tmp_path):
    # One epoch of 16 steps, windows of 50: the epoch-end checkpoint comes before any window is full.
    module = DivergesAt(15)
    with pytest.raises(UsageError, match="became nan at step 15"):
        fit(module, log_every_n_steps=50, max_steps=16, checkpoints_in=tmp_path)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_healthy_epoch_is_still_saved(tmp_path):
    fit(DivergesAt(bad_step=10**9), log_every_n_steps=50, max_steps=16, checkpoints_in=tmp_path)
    assert len(list(tmp_path.rglob("*.ckpt"))) == 1


def test_finite_training_runs_to_the_end():
    module = DivergesAt(bad_step=10**9)
    fit(module, log_every_n_steps=5, max_steps=23)
    assert module.steps_run == 23
