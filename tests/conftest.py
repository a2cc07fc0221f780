import os
import sys
from pathlib import Path

import pytest
import torch

from fake_cifar import write_cifar10, write_cifar100
from mobilenet import MobileNetV1
from mobilenet.commands import KNOWN_WARNINGS, quiet_known_warnings
from mobilenet.commands.lightning import build_cli
from tutorial_net import randomise_batchnorm

# Tests never reach the network and never log to a W&B account.
os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def pytest_configure(config):
    """What the command line silences (one list: mobilenet.commands.KNOWN_WARNINGS), silenced in every test too."""
    for pattern, _ in KNOWN_WARNINGS:
        config.addinivalue_line("filterwarnings", f"ignore:{pattern}")
    quiet_known_warnings()  # and Lightning's known log lines


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory) -> Path:
    """100 training and 30 test images in the real CIFAR-10 python format (not the official checksums)."""
    return write_cifar10(tmp_path_factory.mktemp("cifar10-data"))


@pytest.fixture(scope="session")
def cifar100_dir(tmp_path_factory) -> Path:
    return write_cifar100(tmp_path_factory.mktemp("cifar100-data"))


def config_args(config: str) -> list[str]:
    """``--config`` for a recipe; cifar100.yaml is an overlay of cifar10.yaml and is given after it."""
    names = ["cifar10.yaml", config] if config == "cifar100.yaml" else [config]
    return [arg for name in names for arg in ("--config", str(CONFIGS / name))]


def small_run_args(data_dir: Path, config: str = "cifar10.yaml") -> list[str]:
    """A recipe config pointed at generated data: 80 training, 20 validation images, batches of 16, α = 0.25."""
    return [
        *config_args(config),
        "--data.data_dir", str(data_dir), "--data.verify", "false", "--data.download", "false",
        "--data.val_size", "20", "--data.batch_size", "16", "--model.net.width_mult", "0.25",
    ]  # fmt: skip


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run where checkpoints/ and logs/ are the test's own, with no pytest options on the command line."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mobilenet"])
    return tmp_path


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, cifar10_dir) -> Path:
    """A working folder after a two-epoch `fit`: checkpoints/cifar10/ and logs/cifar10/version_0/."""
    workdir = tmp_path_factory.mktemp("finished-run")
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    previous, argv = os.getcwd(), sys.argv
    os.chdir(workdir)
    sys.argv = ["mobilenet"]
    try:
        build_cli(["fit", *small_run_args(cifar10_dir), *quiet, "--trainer.max_epochs", "2",
                   "--trainer.log_every_n_steps", "1"])  # fmt: skip
    finally:
        os.chdir(previous)
        sys.argv = argv
    return workdir


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, cifar10_dir) -> Path:
    """A `mobilenet fit` checkpoint (α = 0.25, one batch) whose BatchNorm layers hold random trained-like
    statistics: after one step they are nearly the identity, which would let a wrong fold pass."""
    workdir = tmp_path_factory.mktemp("export")
    args = ["fit", *small_run_args(cifar10_dir), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
            "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setattr(sys, "argv", ["mobilenet"])
        build_cli(args)
    path = workdir / "checkpoints" / "cifar10" / "last.ckpt"
    saved = torch.load(path, weights_only=True)
    net = MobileNetV1(num_classes=10, width_mult=0.25)
    net.load_state_dict({k.removeprefix("net."): v for k, v in saved["state_dict"].items() if k.startswith("net.")})
    randomise_batchnorm(net)
    saved["state_dict"].update({f"net.{k}": v for k, v in net.state_dict().items()})
    torch.save(saved, path)
    return path


@pytest.fixture(scope="session")
def onnx_export(checkpoint) -> tuple[Path, list[str]]:
    """``checkpoint`` exported to ONNX once for the session: the file and what the export reported."""
    from mobilenet.deploy.artifacts import load
    from mobilenet.deploy.export import export

    output = checkpoint.parent / "exported" / "model.onnx"
    return output, export(load(checkpoint), "onnx", output)
