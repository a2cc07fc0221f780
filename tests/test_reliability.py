"""Faults a run must survive: signals, a second writer, a finished run resumed, planted code, broken inputs
among good ones. Each says one sentence and loses nothing."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import small_run_args
from fake_cifar import write_cifar10
from fake_images import write_image_folder
from mobilenet.commands import main
from mobilenet.data.image_folder import ImageFolderDataModule
from mobilenet.training.module import MobileNetClassifier
from mobilenet.training.runs import RunLock

MOBILENET = str(Path(sys.executable).parent / "mobilenet")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
BATCHES_PER_EPOCH = 30  # 500 training images - 20 for validation, in batches of 16


def csv_rows(path: Path) -> list[dict]:
    try:
        with open(path) as file:
            return list(csv.DictReader(file))
    except (FileNotFoundError, csv.Error):
        return []


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True, map_location="cpu")["state_dict"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """500 + 30 CIFAR-format images: epochs of 30 batches, long enough to interrupt in the middle."""
    return write_cifar10(tmp_path_factory.mktemp("interruptible"), per_batch=100)


def fit_args(data: Path, epochs: int) -> list[str]:
    return [*small_run_args(data), *QUIET, "--trainer.max_epochs", str(epochs), "--trainer.deterministic", "true",
            "--trainer.log_every_n_steps", "1", "--trainer.logger.init_args.flush_logs_every_n_steps", "1"]  # fmt: skip


def interrupt_in_epoch_1(workdir: Path, args: list[str], signum: int) -> subprocess.CompletedProcess:
    """Start `fit`, send ``signum`` once it has trained two steps of epoch 1, return how it ended."""
    fit = subprocess.Popen([MOBILENET, "fit", *args], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)  # fmt: skip
    metrics = workdir / "logs" / "cifar10" / "version_0" / "metrics.csv"
    try:
        deadline = time.monotonic() + 600
        while not [row for row in csv_rows(metrics) if row.get("epoch") == "1" and row.get("train/loss_step")][1:]:
            assert fit.poll() is None, f"fit ended before the signal:\n{fit.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "epoch 1 never started"
            time.sleep(0.05)
        fit.send_signal(signum)
        stdout, stderr = fit.communicate(timeout=300)
    finally:
        fit.kill()
    return subprocess.CompletedProcess(fit.args, fit.returncode, stdout, stderr)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_epoch_saves_where_it_stopped_and_resuming_matches_an_uninterrupted_run(
    signum, data, tmp_path_factory
):
    straight, stopped = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("stopped")
    done = subprocess.run([MOBILENET, "fit", *fit_args(data, 2)], cwd=straight, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr

    interrupted = interrupt_in_epoch_1(stopped, fit_args(data, 2), signum)
    assert interrupted.returncode == 128 + signum, interrupted.stderr[-2000:]
    line = next(line for line in interrupted.stderr.splitlines() if line.startswith("Stopped by"))
    assert f"Stopped by {signal.Signals(signum).name} in epoch 2 after batch" in line
    assert "saved checkpoints/cifar10/last.ckpt. Resume with: mobilenet fit" in line and "--ckpt_path last" in line
    assert "Traceback" not in interrupted.stderr
    saved = torch.load(stopped / "checkpoints/cifar10/last.ckpt", weights_only=True, map_location="cpu")
    assert BATCHES_PER_EPOCH < saved["global_step"] < 2 * BATCHES_PER_EPOCH, "saved in the middle of epoch 1"

    resumed = subprocess.run([MOBILENET, "fit", *fit_args(data, 2), "--ckpt_path", "last"], cwd=stopped,
                             capture_output=True, text=True, timeout=900)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(straight / "checkpoints/cifar10/last.ckpt"), weights(stopped / "checkpoints/cifar10/last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), "not bit-identical"
    # The epoch's training loss and accuracy add up the batches from before and after the interruption.
    logged = [row for row in csv_rows(stopped / "logs/cifar10/version_1/metrics.csv") if row.get("train/loss")]
    expected = [row for row in csv_rows(straight / "logs/cifar10/version_0/metrics.csv") if row.get("train/loss")]
    assert [row["train/loss"] for row in logged] == [row["train/loss"] for row in expected[1:]]


@pytest.mark.slow
def test_a_second_fit_of_a_run_refuses_and_a_lock_left_by_a_killed_fit_is_taken_over(data, tmp_path):
    first = subprocess.Popen([MOBILENET, "fit", *fit_args(data, 50)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    lock = tmp_path / "checkpoints" / "cifar10" / RunLock.NAME
    try:
        deadline = time.monotonic() + 300
        while not (lock.is_file() and lock.read_text()):
            assert first.poll() is None and time.monotonic() < deadline, "the first fit never took the lock"
            time.sleep(0.05)
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid
        second = subprocess.run([MOBILENET, "fit", *fit_args(data, 1), "--ckpt_path", "last"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert second.returncode != 0 and "Traceback" not in second.stderr
        assert f"Run 'cifar10' is being trained by another process (process {first.pid} on" in second.stderr
    finally:
        first.kill()  # SIGKILL: no chance to remove the lock file
        first.wait()
    assert lock.is_file(), "a killed fit leaves its lock file behind"
    # (However far the first fit got, this one finds the run trained and stops: it only needs the lock.)
    third = subprocess.run([MOBILENET, "fit", *fit_args(data, 1), "--ckpt_path", "last"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=900)  # fmt: skip
    assert third.returncode == 0, third.stderr
    assert f"Taking over the lock of run 'cifar10' left by an ended process (process {first.pid} on" in third.stdout
    assert not lock.exists(), "a fit that ends removes its lock"


def test_resuming_a_finished_run_says_so_and_trains_nothing(in_tmp, cifar10_dir, capsys):
    main(["fit", *small_run_args(cifar10_dir), *QUIET, "--trainer.max_epochs", "1"])
    before = sorted(p.name for p in (in_tmp / "logs" / "cifar10").iterdir())
    for epochs in ("1", "0"):  # as many epochs as trained, or fewer
        with pytest.raises(SystemExit) as stopped:
            main(["fit", *small_run_args(cifar10_dir), *QUIET, "--trainer.max_epochs", epochs, "--ckpt_path", "last"])
        assert stopped.value.code == 0
        assert "has trained 1 epochs already" in capsys.readouterr().out
    assert sorted(p.name for p in (in_tmp / "logs" / "cifar10").iterdir()) == before, "no empty version folder"


PLANTED = """
from pathlib import Path
Path(__file__).with_name("planted-module-ran").touch()
class Thing:
    pass
"""


def test_nothing_a_checkpoint_names_is_imported_and_no_code_in_it_runs(in_tmp, cifar10_dir):
    main(["fit", *small_run_args(cifar10_dir), *QUIET, "--trainer.max_epochs", "1"])
    (in_tmp / "planted.py").write_text(PLANTED)  # importable from here: the command runs in this folder
    checkpoint = torch.load(in_tmp / "checkpoints/cifar10/last.ckpt", weights_only=True, map_location="cpu")
    checkpoint["hyper_parameters"] = {
        "optimizer": {"class_path": "planted.Thing"},
        "net": {"class_path": "planted.Thing"},
    }
    checkpoint["datamodule_hyper_parameters"] = {"_class_path": "planted.Thing"}
    torch.save(checkpoint, in_tmp / "names-code.ckpt")
    checkpoint["mobilenet"]["data"]["class_path"] = "planted.Thing"
    torch.save(checkpoint, in_tmp / "names-data-code.ckpt")

    class RunsCode:
        def __reduce__(self):
            return (Path.touch, (in_tmp / "pickled-code-ran",))

    torch.save({**checkpoint, "extra": RunsCode()}, in_tmp / "runs-code.ckpt")
    env = {**os.environ, "PYTHONPATH": str(in_tmp)}
    for name in ("names-code.ckpt", "names-data-code.ckpt", "runs-code.ckpt"):
        result = subprocess.run([MOBILENET, "test", "--ckpt_path", name, *QUIET], cwd=in_tmp, env=env,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert "Traceback" not in result.stderr, result.stderr
        assert not (in_tmp / "planted-module-ran").exists(), f"{name}: a module it names was imported"
        assert not (in_tmp / "pickled-code-ran").exists(), f"{name}: code pickled in it ran"
        if name == "names-code.ckpt":  # Lightning's hyper_parameters are not read at all: it evaluates
            assert result.returncode == 0, result.stderr
        else:
            assert result.returncode != 0 and "mobilenet: error:" in result.stderr


def bomb(path: Path, side: int = 30_000) -> Path:
    """A PNG header claiming side × side pixels (900 million at 30,000): what Pillow refuses to decode."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def test_classify_names_an_oversized_image_and_an_empty_folder_and_still_classifies_the_rest(checkpoint, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(folder / "good.png")
    bomb(folder / "huge.png")
    (tmp_path / "empty").mkdir()
    result = subprocess.run([MOBILENET, "classify", str(folder), str(tmp_path / "empty"), "--ckpt_path",
                             str(checkpoint)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stdout.startswith(f"{folder / 'good.png'}: ")
    assert "huge.png' could not be read as an image (DecompressionBombError" in result.stderr
    assert "The folder" in result.stderr and "empty' holds no" in result.stderr
    assert "2 of 3 files could not be read; the others were classified." in result.stderr


def test_a_damaged_image_cache_is_decoded_again(tmp_path):
    root = write_image_folder(tmp_path / "images")
    ImageFolderDataModule(str(root), val_size=10).setup("fit")
    (cache,) = (root / ".mobilenet-cache").glob("train-*.pt")
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])  # a full disk, a killed copy
    with pytest.warns(UserWarning, match="is damaged .* decoding the images again"):
        data = ImageFolderDataModule(str(root), val_size=10)
        data.setup("fit")
    assert len(data.splits["train"]) + len(data.splits["val"]) == 3 * 30 + 3
    assert torch.load(cache, weights_only=True)["labels"].numel() == 93, "the cache is whole again"


def test_running_out_of_memory_is_explained(in_tmp, cifar10_dir, monkeypatch):
    def exhausted(self, batch, batch_idx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(MobileNetClassifier, "training_step", exhausted)
    with pytest.raises(SystemExit) as stopped:
        main(["fit", *small_run_args(cifar10_dir), *QUIET, "--trainer.max_epochs", "1"])
    message = str(stopped.value.code)
    assert message.startswith("mobilenet: error: Out of memory during `fit`: a batch of 16 images of 32×32 pixels")
    assert "Lower --data.batch_size or --data.resolution" in message
