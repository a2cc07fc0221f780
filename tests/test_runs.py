"""Run folders, checkpoint aliases and the automatic precision choice."""

import os
from pathlib import Path

import pytest
import torch

from mobilenet.cli import auto_precision
from mobilenet.errors import UsageError
from mobilenet.runs import resolve_checkpoint, run_name_from


def test_run_name_is_the_first_config_files_name():
    assert run_name_from([Path("configs/cifar10.yaml"), Path("configs/wandb.yaml")]) == "cifar10"
    assert run_name_from(None) == "default"


def test_best_is_the_newest_best_file_and_last_is_last_ckpt(tmp_path):
    older, newer = tmp_path / "best-epoch=001-val_acc=0.5000.ckpt", tmp_path / "best-epoch=004-val_acc=0.6000.ckpt"
    for i, path in enumerate((older, newer, tmp_path / "last.ckpt")):
        path.write_bytes(b"")
        os.utime(path, (1_000 + i, 1_000 + i))
    assert resolve_checkpoint("best", tmp_path, "run", "test") == str(newer)
    assert resolve_checkpoint("last", tmp_path, "run", "test") == str(tmp_path / "last.ckpt")


def test_fit_from_last_without_checkpoints_starts_fresh_but_test_refuses(tmp_path):
    assert resolve_checkpoint("last", tmp_path / "new_run", "new_run", "fit") is None
    with pytest.raises(UsageError, match="no last checkpoint"):
        resolve_checkpoint("last", tmp_path / "new_run", "new_run", "test")


def test_a_checkpoint_path_that_is_not_a_file_is_named(tmp_path):
    with pytest.raises(UsageError, match="missing.ckpt' is not a file"):
        resolve_checkpoint(str(tmp_path / "missing.ckpt"), tmp_path, "run", "fit")


@pytest.mark.parametrize(
    "cuda, bf16, accelerator, expected",
    [
        (False, False, "auto", "32-true"),
        (True, True, "auto", "bf16-mixed"),
        (True, False, "gpu", "16-mixed"),
        (True, True, "cpu", "32-true"),  # asked for the CPU on a GPU machine
    ],
)
def test_precision_is_mixed_on_gpus_and_full_on_the_cpu(monkeypatch, cuda, bf16, accelerator, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert auto_precision(accelerator) == expected
