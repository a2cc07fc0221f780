"""Lightning DDP with two processes on the CPU (gloo), started the way a user starts it: through the CLI."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_cli import MOBILENET, csv_rows

from conftest import small_run_args

TESTS = Path(__file__).resolve().parent
TRAIN_IMAGES = 80  # 100 generated training images - 20 for validation


def mobilenet(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([MOBILENET, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_ddp_trains_disjoint_shards_reduces_validation_and_writes_one_set_of_checkpoints(tmp_path, cifar10_dir):
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    # No augmentation, so that an image's pixels after the batch transform identify it on every rank.
    args = [*small_run_args(cifar10_dir), *quiet, "--data.augment", "none"]
    # (--trainer.sync_batchnorm true needs GPUs: torch's SyncBatchNorm refuses CPU modules.)
    ddp = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2",
           "--trainer.callbacks+=shard_recorder.ShardRecorder"]  # fmt: skip
    fit = mobilenet("fit", *args, *ddp, "--trainer.max_epochs", "2", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr

    ranks = [json.loads((tmp_path / "shards" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(rank["world_size"] == 2 for rank in ranks)
    for epoch in ("0", "1"):
        first, second = (rank["epochs"][epoch] for rank in ranks)
        assert len(first) == len(second) == TRAIN_IMAGES // 2, "each rank trains on half of the epoch"
        assert not set(first) & set(second), f"epoch {epoch}: the ranks trained on the same images"
        assert len(set(first) | set(second)) == TRAIN_IMAGES, f"epoch {epoch}: some training images were skipped"
    assert ranks[0]["epochs"]["0"] != ranks[0]["epochs"]["1"], "every epoch must be shuffled anew"

    run_dir = tmp_path / "checkpoints" / "cifar10"
    names = sorted(path.name for path in run_dir.iterdir())
    assert len(names) == 2 and names[0].startswith("best-epoch=") and names[1] == "last.ckpt", names
    assert sorted(path.name for path in (tmp_path / "logs" / "cifar10").iterdir()) == ["version_0"]

    # The logged val/loss and val/acc are over all 20 validation images, not rank 0's 10: one process
    # validating the same weights must find the same numbers.
    logged = [row for row in csv_rows(tmp_path / "logs/cifar10/version_0/metrics.csv") if row["val/acc"]][-1]
    single = mobilenet("validate", *args, "--ckpt_path", "last", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    printed = {line.split()[0]: float(line.split()[1]) for line in single.stdout.splitlines() if "val/" in line}
    assert float(logged["val/acc"]) == pytest.approx(printed["val/acc"], abs=1e-6)
    assert float(logged["val/loss"]) == pytest.approx(printed["val/loss"], rel=1e-4)

    # predict under DDP: one CSV with every test image once, in dataset order, as one process writes it.
    ddp_predict = mobilenet("predict", *args, *ddp[:-1], "--ckpt_path", "last", cwd=tmp_path)
    assert ddp_predict.returncode == 0, ddp_predict.stderr
    one_predict = mobilenet("predict", *args, "--ckpt_path", "last", cwd=tmp_path)
    assert one_predict.returncode == 0, one_predict.stderr
    ddp_csv, one_csv = (tmp_path / r.stdout.split("Wrote 30 predictions to ")[1].split(" (")[0]
                        for r in (ddp_predict, one_predict))  # fmt: skip
    ddp_rows, one_rows = csv_rows(ddp_csv), csv_rows(one_csv)
    assert [row["index"] for row in ddp_rows] == [str(i) for i in range(30)]
    assert [(r["label"], r["prediction"]) for r in ddp_rows] == [(r["label"], r["prediction"]) for r in one_rows]
    assert [path.name for path in ddp_csv.parent.iterdir() if path.name.startswith("predictions")] == [ddp_csv.name]
