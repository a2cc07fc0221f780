"""A `mobilenet fit` killed with SIGKILL in the middle of an epoch resumes from its last epoch-end checkpoint."""

import csv
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_cli import MOBILENET, csv_rows

from conftest import small_run_args
from fake_cifar import write_cifar10

# 5 × 40 training images - 20 for validation = 180, in batches of 16: 12 steps, an epoch to be killed in.
STEPS_PER_EPOCH = 12


def steps_logged_in_epoch_1(metrics: Path) -> list[int]:
    """Steps of epoch 1 the running fit has logged (it writes metrics.csv after every step)."""
    try:
        rows = csv_rows(metrics)
    except (FileNotFoundError, csv.Error):
        return []
    return [int(row["step"]) for row in rows if row.get("epoch") == "1" and row.get("train/loss_step")]


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_from_the_last_epoch_end_checkpoint(tmp_path):
    data = write_cifar10(tmp_path / "data", per_batch=40)
    args = [
        *small_run_args(data),
        "--trainer.enable_model_summary",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.logger.init_args.flush_logs_every_n_steps",
        "1",
        "--trainer.deterministic",
        "true",
    ]
    stderr = tmp_path / "fit.err"
    metrics = tmp_path / "logs/cifar10/version_0/metrics.csv"
    with open(stderr, "w") as err:
        fit = subprocess.Popen([MOBILENET, "fit", *args, "--trainer.max_epochs", "3"], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    try:
        deadline = time.monotonic() + 600  # generous: a shared 2-core machine has taken over 5 minutes here
        while not steps_logged_in_epoch_1(metrics):
            assert fit.poll() is None, f"fit ended before it could be killed:\n{stderr.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "epoch 1 never started"
            time.sleep(0.02)
    finally:  # never leave the training process behind, whatever happened
        fit.kill()
    fit.wait()
    assert fit.returncode == -signal.SIGKILL
    assert max(steps_logged_in_epoch_1(metrics)) < 2 * STEPS_PER_EPOCH - 1, "not killed in the middle of epoch 1"

    run_dir = tmp_path / "checkpoints" / "cifar10"
    last = torch.load(run_dir / "last.ckpt", weights_only=True, map_location="cpu")  # whole, and readable
    assert (last["epoch"], last["global_step"]) == (0, STEPS_PER_EPOCH)
    # Only checkpoints, and the lock file the killed process could not remove (the next fit takes it over).
    assert not [path.name for path in run_dir.iterdir() if not path.name.endswith(".ckpt") and path.name != ".lock"]
    assert any(row["val/acc"] for row in csv_rows(tmp_path / "logs/cifar10/version_0/metrics.csv")), "epoch 0 lost"

    resumed = subprocess.run(
        [MOBILENET, "fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", "last"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    rows = csv_rows(tmp_path / "logs/cifar10/version_1/metrics.csv")
    assert {row["epoch"] for row in rows} == {"1"}, "the resumed run must redo epoch 1, not epoch 0"
    final = torch.load(run_dir / "last.ckpt", weights_only=True, map_location="cpu")
    assert final["global_step"] == 2 * STEPS_PER_EPOCH
    assert sorted(p.name for p in (tmp_path / "logs/cifar10").iterdir()) == ["version_0", "version_1"]

    straight = tmp_path / "straight"
    straight.mkdir()
    done = subprocess.run([MOBILENET, "fit", *args, "--trainer.max_epochs", "2"], cwd=straight, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = torch.load(straight / "checkpoints/cifar10/last.ckpt", weights_only=True, map_location="cpu")
    assert all(torch.equal(final["state_dict"][key], value) for key, value in expected["state_dict"].items()), (
        "resuming from the last epoch end must give the weights of an uninterrupted run"
    )
