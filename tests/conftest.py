import os
from pathlib import Path

import pytest

from fake_cifar import write_cifar10, write_cifar100

# Tests never reach the network and never log to a W&B account.
os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory) -> Path:
    """100 training and 30 test images in the real CIFAR-10 python format (not the official checksums)."""
    return write_cifar10(tmp_path_factory.mktemp("cifar10-data"))


@pytest.fixture(scope="session")
def cifar100_dir(tmp_path_factory) -> Path:
    return write_cifar100(tmp_path_factory.mktemp("cifar100-data"))
