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

from conftest import REPO, small_run_args
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
        assert "has trained 1 epoch already" in capsys.readouterr().out
    assert sorted(p.name for p in (in_tmp / "logs" / "cifar10").iterdir()) == before, "no empty version folder"


PLANTED = """
from pathlib import Path
Path(__file__).with_name("planted-module-ran").touch()
class Thing:
    pass
"""


@pytest.mark.slow
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
        command = [MOBILENET, "test", "--ckpt_path", name, "--data.verify", "false", *QUIET]
        result = subprocess.run(command, cwd=in_tmp, env=env, capture_output=True, text=True, timeout=300)
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


@pytest.mark.slow
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


def test_a_signal_during_validation_lets_the_epoch_end_and_stops_before_the_next(in_tmp, cifar10_dir, capsys):
    args = [*small_run_args(cifar10_dir), *QUIET, "--trainer.max_epochs", "3"]
    with pytest.raises(SystemExit) as stopped:
        main(["fit", *args, "--trainer.callbacks+=signal_sender.SignalDuringValidation"])
    assert stopped.value.code == 128 + signal.SIGTERM
    printed = capsys.readouterr().err
    assert (
        "Stopped by SIGTERM after epoch 1 (step 5), whose checkpoint checkpoints/cifar10/last.ckpt holds it" in printed
    )
    last = torch.load(in_tmp / "checkpoints/cifar10/last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == 5, "epoch 0 saved whole, nothing of epoch 1"
    logged = csv_rows(in_tmp / "logs/cifar10/version_0/metrics.csv")
    assert any(row["train/loss"] and row["epoch"] == "0" for row in logged), "epoch 0's figures were logged"
    main(["fit", *args, "--ckpt_path", "last"])
    assert {row["epoch"] for row in csv_rows(in_tmp / "logs/cifar10/version_1/metrics.csv")} == {"1", "2"}


def test_evaluation_takes_exported_weights_and_fit_refuses_them(checkpoint, in_tmp, cifar10_dir, capsys):
    from mobilenet.deploy.artifacts import load
    from mobilenet.deploy.export import export

    export(load(checkpoint), "safetensors", in_tmp / "weights.safetensors")
    # The generated files are not the official ones: verification is the user's to turn off, never the record's.
    data = ["--data.data_dir", str(cifar10_dir), "--data.verify", "false", *QUIET]
    main(["test", "--ckpt_path", "weights.safetensors", *data])
    assert (in_tmp / "logs/cifar10/eval/weights/test/metrics.csv").is_file()
    with pytest.raises(SystemExit) as refused:
        main(["fit", "--ckpt_path", "weights.safetensors", *data])
    assert "holds a network's weights only (safetensors): fit resumes a training checkpoint" in str(refused.value.code)


def test_the_resume_command_names_the_run_and_a_resume_with_another_batch_layout_is_refused():
    from mobilenet.commands.lightning import resume_command
    from mobilenet.data.sampling import EpochBatchSampler, ResumableLoader, TensorBatches
    from mobilenet.errors import UsageError

    hint = resume_command(
        ["fit", "--ckpt_path", "checkpoints/cifar10/last.ckpt", "--trainer.max_epochs", "9"], "cifar10"
    )
    assert hint == "mobilenet fit --trainer.max_epochs 9 --run_name cifar10 --ckpt_path last"

    def loader(batch_size: int) -> ResumableLoader:
        sampler = EpochBatchSampler(100, batch_size, shuffle=True)
        return ResumableLoader(
            TensorBatches(torch.zeros(100, 3, 2, 2), torch.zeros(100)), sampler=sampler, batch_size=None
        )

    state = {**loader(16).state_dict(), "epoch": 3, "consumed": 4}  # stopped after 4 batches of epoch 3
    resumed = loader(16)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(3)  # as Lightning does when the resumed epoch starts
    uninterrupted = loader(16).sampler
    uninterrupted.set_epoch(3)
    expected = [(request.indices.tolist(), request.augment_seed) for request in uninterrupted][4:]
    assert [(request.indices.tolist(), request.augment_seed) for request in resumed.sampler] == expected
    with pytest.raises(UsageError, match="batch_size 16.*now .*batch_size 32"):
        loader(32).load_state_dict(state)


def test_only_the_first_process_of_a_launch_takes_the_run_lock(monkeypatch):
    from mobilenet.training.runs import is_launching_process

    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(variable, raising=False)
    assert is_launching_process()
    for variable, value, first in (("SLURM_PROCID", "3", False), ("SLURM_PROCID", "0", True), ("RANK", "1", False)):
        monkeypatch.setenv(variable, value)
        assert is_launching_process() is first
        monkeypatch.delenv(variable)


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_an_evaluation_stopped_by_a_signal_says_so_exits_143_and_writes_no_result(
    command, finished_run, in_tmp, capsys
):
    checkpoint = finished_run / "checkpoints" / "cifar10" / "last.ckpt"
    with pytest.raises(SystemExit) as stopped:
        main([command, "--ckpt_path", str(checkpoint), "--data.verify", "false", *QUIET,
              "--trainer.callbacks+=signal_sender.SignalDuringEvaluation"])  # fmt: skip
    assert stopped.value.code == 128 + signal.SIGTERM
    assert f"mobilenet {command}: stopped by SIGTERM before it finished" in capsys.readouterr().err
    written = [path.name for path in (in_tmp / "logs").rglob("*") if path.is_file()]
    assert "metrics.csv" not in written and "predictions.csv" not in written


def test_classify_stopped_by_a_signal_says_so_instead_of_a_traceback(in_tmp, monkeypatch, capsys):
    import os

    from mobilenet.commands import classify

    monkeypatch.setattr(classify, "read_image", lambda *_: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(SystemExit) as stopped:
        main(["classify", str(REPO / "tests" / "assets" / "cifar10_sample")])
    assert stopped.value.code == 128 + signal.SIGINT
    assert "mobilenet classify: stopped by SIGINT before it finished" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back as it was
