"""Run folders and checkpoint aliases."""

from pathlib import Path

import pytest
import torch

from mobilenet.errors import UsageError
from mobilenet.training.runs import check_run_name, resolve_checkpoint, run_name_from


def test_run_name_is_the_first_config_files_name():
    assert run_name_from([Path("configs/cifar10.yaml"), Path("configs/wandb.yaml")]) == "cifar10"
    assert run_name_from(None) == "default"


def save_checkpoint(path: Path, step: int, best: str = "") -> Path:
    """A checkpoint as `fit` writes one, reduced to what finding the best one reads: the step and the record of
    the val/acc checkpoint callback (and of the last.ckpt callback, which monitors nothing)."""
    callbacks = {
        "ModelCheckpoint{'monitor': None}": {"monitor": None, "best_model_path": str(path)},
        "ModelCheckpoint{'monitor': 'val/acc'}": {"monitor": "val/acc", "best_model_path": best},
    }
    torch.save({"state_dict": {}, "global_step": step, "callbacks": callbacks}, path)
    return path


def test_best_is_what_the_newest_checkpoint_recorded_whatever_the_file_names(tmp_path):
    # Trained elsewhere (the recorded paths point to another folder) with --checkpoint.filename 'ep{epoch}'.
    save_checkpoint(tmp_path / "ep1.ckpt", step=10, best="/elsewhere/run/ep1.ckpt")
    save_checkpoint(tmp_path / "ep3.ckpt", step=30, best="/elsewhere/run/ep3.ckpt")
    save_checkpoint(tmp_path / "last.ckpt", step=50, best="/elsewhere/run/ep3.ckpt")  # epoch 5 was no better
    assert resolve_checkpoint("best", tmp_path, "run", "test") == tmp_path / "ep3.ckpt"
    assert resolve_checkpoint("last", tmp_path, "run", "test") == tmp_path / "last.ckpt"


def test_best_without_a_validation_or_with_the_file_gone_says_so(tmp_path):
    save_checkpoint(tmp_path / "last.ckpt", step=5)  # killed before the first validation
    with pytest.raises(UsageError, match="none was chosen as the best.*--ckpt_path last"):
        resolve_checkpoint("best", tmp_path, "run", "test")
    save_checkpoint(tmp_path / "last.ckpt", step=10, best=str(tmp_path / "ep1.ckpt"))
    with pytest.raises(UsageError, match="recorded 'ep1.ckpt' as its best checkpoint, but that file is no longer"):
        resolve_checkpoint("best", tmp_path, "run", "test")


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", ".hidden", "", "x" * 101])
def test_a_run_name_is_a_folder_name_not_a_path(name):
    with pytest.raises(UsageError, match="is not a run name"):
        check_run_name(name)
    assert check_run_name("cifar10_fast-b256.v2") == "cifar10_fast-b256.v2"


def test_fit_from_last_without_checkpoints_starts_fresh_but_test_refuses(tmp_path):
    assert resolve_checkpoint("last", tmp_path / "new_run", "new_run", "fit") is None
    with pytest.raises(UsageError, match="no last.ckpt in"):
        resolve_checkpoint("last", tmp_path / "new_run", "new_run", "test")


def test_a_checkpoint_path_that_is_not_a_file_is_named(tmp_path):
    with pytest.raises(UsageError, match="missing.ckpt' is not a file"):
        resolve_checkpoint(str(tmp_path / "missing.ckpt"), tmp_path, "run", "fit")
