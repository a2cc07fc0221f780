"""The bad-input matrix: each mistake gets a short message saying what is wrong and what to do, no traceback,
and the checkpoints and logs already on disk stay exactly as they were."""

import errno
import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

import mobilenet.training.checkpoint_io
from conftest import small_run_args
from fake_cifar import write_archive, write_cifar100
from mobilenet.commands import main
from mobilenet.files import PARTIAL_MARK

SHORT_EPOCH = 3  # training batches per epoch where a test needs only a few (--trainer.limit_train_batches)
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def run(*args: str) -> None:
    main([args[0], *QUIET, *args[1:]])


def fails(*args: str, capsys) -> str:
    """Run the command as the console script would and return what it printed for the user."""
    with pytest.raises(SystemExit) as exit_info:
        run(*args)
    captured = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, str) else "") + captured.err


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under checkpoints/ and logs/."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in ("checkpoints", "logs")
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, cifar10_dir) -> Path:
    """A folder with run 'cifar10' trained for one epoch: the files no mistake may touch."""
    folder = tmp_path_factory.mktemp("bad-input")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(sys, "argv", ["mobilenet"])
        run("fit", *small_run_args(cifar10_dir), "--trainer.max_epochs", "1")
    return folder


def copy_data(cifar10_dir: Path, target: Path) -> Path:
    shutil.copytree(cifar10_dir, target)
    return target / "cifar-10-batches-py"


def missing_file(cifar10_dir, tmp):
    (copy_data(cifar10_dir, tmp / "data") / "data_batch_3").unlink()
    return ["fit", *small_run_args(tmp / "data"), "--ckpt_path", "last", "--trainer.max_epochs", "2"]


def truncated_file(cifar10_dir, tmp):
    batch = copy_data(cifar10_dir, tmp / "data") / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:5000])
    return ["fit", *small_run_args(tmp / "data"), "--ckpt_path", "last", "--trainer.max_epochs", "2"]


def corrupt_file(cifar10_dir, tmp):
    (copy_data(cifar10_dir, tmp / "data") / "test_batch").write_bytes(os.urandom(4000))
    return ["test", *small_run_args(tmp / "data")]


def checksum_mismatch(cifar10_dir, tmp):
    return ["test", *small_run_args(cifar10_dir), "--data.verify", "true"]


def data_dir_is_a_file(cifar10_dir, tmp):
    (tmp / "data.txt").write_text("not a folder")
    return ["fit", *small_run_args(tmp / "data.txt"), "--ckpt_path", "last", "--trainer.max_epochs", "2"]


def data_dir_not_writable(cifar10_dir, tmp):
    readonly = tmp / "readonly"
    readonly.mkdir()
    write_archive(cifar10_dir, "cifar-10-batches-py", readonly / "cifar-10-python.tar.gz")
    readonly.chmod(0o555)
    return ["fit", *small_run_args(readonly), "--ckpt_path", "last", "--trainer.max_epochs", "2"]


def plain_checkpoint(edit):
    """A copy of the run's last.ckpt changed by ``edit``, as a checkpoint saved outside the CLI would be."""

    def make(cifar10_dir, tmp):
        checkpoint = torch.load("checkpoints/cifar10/last.ckpt", weights_only=True, map_location="cpu")
        path = tmp / "other.ckpt"
        torch.save(edit(checkpoint), path)
        return path

    return make


def without_data_settings(checkpoint):
    checkpoint["mobilenet"]["data"] = None
    return checkpoint


def record_of_another_width(checkpoint):
    checkpoint["mobilenet"]["network"]["width_mult"] = 0.5
    return checkpoint


def other_classes(cifar10_dir, tmp):
    path = plain_checkpoint(without_data_settings)(cifar10_dir, tmp)
    cifar100 = write_cifar100(tmp / "cifar100")
    return ["test", *small_run_args(cifar100, "cifar100.yaml"), "--ckpt_path", str(path)]


def other_width(cifar10_dir, tmp):
    path = plain_checkpoint(record_of_another_width)(cifar10_dir, tmp)
    return ["test", *small_run_args(cifar10_dir), "--model.net.width_mult", "0.5", "--ckpt_path", str(path)]


def truncated_checkpoint(cifar10_dir, tmp):
    data = Path("checkpoints/cifar10/last.ckpt").read_bytes()
    (tmp / "cut.ckpt").write_bytes(data[: len(data) // 3])
    return ["fit", *small_run_args(cifar10_dir), "--ckpt_path", str(tmp / "cut.ckpt"), "--run_name", "from_cut"]


def foreign_checkpoint(cifar10_dir, tmp):
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp / "state_dict.pt")
    return ["test", *small_run_args(cifar10_dir), "--ckpt_path", str(tmp / "state_dict.pt")]


class RunsCode:
    """Unpickling this would create the file named in it: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def checkpoint_with_code(cifar10_dir, tmp):
    checkpoint = torch.load("checkpoints/cifar10/last.ckpt", weights_only=True, map_location="cpu")
    checkpoint["extra"] = RunsCode(tmp / "code-ran")
    torch.save(checkpoint, tmp / "evil.ckpt")
    return ["test", *small_run_args(cifar10_dir), "--ckpt_path", str(tmp / "evil.ckpt")]


def unknown_option(cifar10_dir, tmp):
    return ["fit", *small_run_args(cifar10_dir), "--model.widht_mult", "0.5", "--ckpt_path", "last"]


def unknown_config_key(cifar10_dir, tmp):
    (tmp / "typo.yaml").write_text("model:\n  widht_mult: 0.5\n")
    return ["fit", *small_run_args(cifar10_dir), "--config", str(tmp / "typo.yaml"), "--ckpt_path", "last"]


def wrong_type(cifar10_dir, tmp):
    return ["fit", *small_run_args(cifar10_dir), "--data.batch_size", "many", "--ckpt_path", "last"]


def zero_batch_size(cifar10_dir, tmp):
    return ["fit", *small_run_args(cifar10_dir), "--data.batch_size", "0", "--ckpt_path", "last"]


def val_size_too_large(cifar10_dir, tmp):
    return ["fit", *small_run_args(cifar10_dir), "--data.val_size", "100", "--run_name", "all_validation"]


# (case, command builder, what the message must say)
MATRIX = [
    ("missing dataset file", missing_file, ["CIFAR-10 is incomplete in", "missing: data_batch_3", "--data.data_dir"]),
    ("truncated dataset file", truncated_file, ["data_batch_2' could not be read", "truncated or corrupt"]),
    ("corrupt dataset file", corrupt_file, ["test_batch' could not be read", "official CIFAR-10 archive"]),
    ("checksum mismatch", checksum_mismatch, ["do not match the official checksums", "--data.verify false"]),
    ("data_dir is a file", data_dir_is_a_file, ["data.txt' is a file, not a folder"]),
    ("data_dir not writable", data_dir_not_writable, ["readonly' is not writable", "writable folder"]),
    ("checkpoint for other classes", other_classes, ["trained for 10 classes, but the data has 100"]),
    ("checkpoint for other width", other_width, ["weights do not fit this network", "pick a checkpoint of this run"]),
    ("truncated checkpoint", truncated_checkpoint, ["cut.ckpt' could not be read", "truncated"]),
    ("foreign checkpoint", foreign_checkpoint, ["state_dict.pt' is a bare state_dict without the record"]),
    ("checkpoint with code", checkpoint_with_code, ["evil.ckpt' holds Python objects", "can run arbitrary code"]),
    ("unknown option", unknown_option, ["widht_mult"]),
    ("unknown config key", unknown_config_key, ["widht_mult"]),
    ("wrong type", wrong_type, ["batch_size", "many"]),
    ("batch size 0", zero_batch_size, ["batch_size must be at least 1, got 0"]),
    ("val_size too large", val_size_too_large, ["val_size=100 leaves no training images", "below 100"]),
]


def writes_into_read_only_folders(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o555)
    return os.access(probe, os.W_OK)


@pytest.mark.parametrize("case, make_args, expected", MATRIX, ids=[case for case, _, _ in MATRIX])
def test_bad_input_is_explained_and_nothing_is_lost(
    case, make_args, expected, workdir, cifar10_dir, tmp_path, monkeypatch, capsys
):
    if case == "data_dir not writable" and writes_into_read_only_folders(tmp_path):
        pytest.skip("this user (root) may write into read-only folders")
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", ["mobilenet"])
    args = make_args(cifar10_dir, tmp_path)
    before = snapshot(workdir)
    message = fails(*args, capsys=capsys)
    assert "Traceback" not in message
    for text in expected:
        assert text in message, f"{case}: {text!r} not in {message!r}"
    assert snapshot(workdir) == before, "existing checkpoints or logs changed, or a failed run left files"
    assert not (tmp_path / "code-ran").exists(), "loading a checkpoint ran code stored in it"


@pytest.mark.slow
def test_a_non_finite_loss_stops_training_names_the_step_and_keeps_the_last_good_checkpoint(
    workdir, cifar10_dir, monkeypatch, capsys
):
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", ["mobilenet"])
    before = snapshot(workdir)
    # Epoch 0 trains at lr 1e-3; the scheduler then multiplies it by 1e30, which overflows within epoch 1.
    explode = ["--model.lr_scheduler", "torch.optim.lr_scheduler.ExponentialLR", "--model.lr_scheduler.gamma", "1e30"]
    short = ["--trainer.limit_train_batches", str(SHORT_EPOCH), "--trainer.limit_val_batches", "1"]
    message = fails("fit", *small_run_args(cifar10_dir), "--run_name", "diverges", "--trainer.max_epochs", "3",
                    *explode, *short, capsys=capsys)  # fmt: skip
    assert "Traceback" not in message
    assert "The training loss became nan at step" in message and "(epoch 1, batch" in message
    step = int(message.split("at step ")[1].split()[0])
    assert SHORT_EPOCH < step <= 2 * SHORT_EPOCH
    assert "checkpoints/diverges/last.ckpt" in message and "--ckpt_path last" in message
    last = torch.load(workdir / "checkpoints/diverges/last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == SHORT_EPOCH, "last.ckpt must still be the end of the last good epoch"
    assert all(torch.isfinite(value).all() for value in last["state_dict"].values())
    assert "val/acc" in (workdir / "logs/diverges/version_0/metrics.csv").read_text(), "epoch 0's metrics kept"
    assert all(snapshot(workdir)[path] == digest for path, digest in before.items())


@pytest.mark.slow
def test_a_full_disk_while_saving_keeps_the_previous_checkpoints(workdir, cifar10_dir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", ["mobilenet"])
    before = snapshot(workdir)

    def disk_fills_up(checkpoint, file):
        file.write(b"PK\x03\x04 the first bytes of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mobilenet.training.checkpoint_io.torch, "save", disk_fills_up)
    one_step = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    message = fails("fit", *small_run_args(cifar10_dir), "--ckpt_path", "last", "--trainer.max_epochs", "2",
                    *one_step, capsys=capsys)  # fmt: skip
    assert "Traceback" not in message
    assert "Could not save the checkpoint" in message and "the disk is full" in message
    assert "--ckpt_path last" in message
    after = snapshot(workdir)
    assert all(after[path] == digest for path, digest in before.items()), "a checkpoint was damaged"
    assert {p for p in after if p.startswith("checkpoints")} == {p for p in before if p.startswith("checkpoints")}
    assert not list(workdir.rglob(f"*{PARTIAL_MARK}*")), "a partly written file was left behind"
