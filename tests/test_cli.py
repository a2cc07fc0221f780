"""The `mobilenet` console script in a subprocess, as a user runs it: fit, resume, validate, test, predict."""

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CONFIGS, small_run_args
from fake_images import CLASSES, write_image_folder

MOBILENET = str(Path(sys.executable).parent / "mobilenet")
STEPS_PER_EPOCH = 5  # 100 training images - 20 for validation, in batches of 16


def mobilenet(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([MOBILENET, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def small_run(data_dir: Path) -> list[str]:
    return [*small_run_args(data_dir), "--trainer.log_every_n_steps", "1"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def csv_rows(path: Path) -> list[dict]:
    with open(path) as file:
        return list(csv.DictReader(file))


def test_help_lists_the_subcommands(tmp_path):
    result = mobilenet("--help", cwd=tmp_path)
    assert result.returncode == 0
    listed = {line.split()[0] for line in result.stdout.split("Available subcommands:")[1].splitlines() if line.strip()}
    assert {"fit", "validate", "test", "predict"} <= listed


def test_print_config_shows_the_reference_recipe(tmp_path):
    result = mobilenet("fit", "--config", str(CONFIGS / "cifar10.yaml"), "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["model"]["optimizer"]["class_path"] == "torch.optim.Adam"
    assert config["model"]["optimizer"]["init_args"]["lr"] == 0.001
    assert config["trainer"]["max_epochs"] == 100
    assert config["data"]["class_path"] == "mobilenet.data.CIFARDataModule"
    data = config["data"]["init_args"]
    assert data["batch_size"] == 128 and data["val_size"] == 1000
    assert data["augment"] == "seed" and data["dataset"] == "cifar10"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cifar10_dir) -> Path:
    """A working folder after `mobilenet fit` for one epoch."""
    workdir = tmp_path_factory.mktemp("workdir")
    result = mobilenet("fit", *small_run(cifar10_dir), "--trainer.max_epochs", "1", cwd=workdir)
    assert result.returncode == 0, result.stderr
    return workdir


def test_fit_writes_checkpoints_metrics_and_the_resolved_config(trained):
    run_dir = trained / "checkpoints" / "cifar10"
    assert (run_dir / "last.ckpt").is_file()
    assert len(list(run_dir.glob("best-epoch=000-val_acc=*.ckpt"))) == 1
    log_dir = trained / "logs" / "cifar10" / "version_0"
    rows = csv_rows(log_dir / "metrics.csv")
    assert any(row["val/acc"] != "" and row["epoch"] == "0" for row in rows)
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["data"]["init_args"]["val_size"] == 20 and saved["model"]["width_mult"] == 0.25
    assert not (trained / "logs" / "wandb").exists() and not (trained / "wandb").exists(), "W&B only when asked for"


def test_a_fresh_fit_refuses_to_mix_with_an_existing_run(trained, cifar10_dir):
    last = trained / "checkpoints" / "cifar10" / "last.ckpt"
    before = digest(last)
    result = mobilenet("fit", *small_run(cifar10_dir), "--trainer.max_epochs", "1", cwd=trained)
    assert result.returncode != 0
    assert "already holds checkpoints" in result.stderr and "--ckpt_path last" in result.stderr
    assert "Traceback" not in result.stderr
    assert digest(last) == before
    assert sorted(p.name for p in (trained / "logs" / "cifar10").iterdir()) == ["version_0"]


def test_resume_test_and_predict_from_checkpoints(trained, cifar10_dir):
    resumed = mobilenet("fit", *small_run(cifar10_dir), "--trainer.max_epochs", "2", "--ckpt_path", "last", cwd=trained)
    assert resumed.returncode == 0, resumed.stderr
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    rows = csv_rows(trained / "logs" / "cifar10" / "version_1" / "metrics.csv")
    assert {row["epoch"] for row in rows} == {"1"}, "the resumed run must continue at epoch 1, not redo epoch 0"
    last = torch.load(trained / "checkpoints" / "cifar10" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == 2 * STEPS_PER_EPOCH

    validated = mobilenet("validate", *small_run(cifar10_dir), "--ckpt_path", "last", cwd=trained)
    assert validated.returncode == 0, validated.stderr
    printed = next(line.split()[1] for line in validated.stdout.splitlines() if line.strip().startswith("val/acc "))
    logged = [row["val/acc"] for row in rows if row["val/acc"]][-1]
    assert float(printed) == pytest.approx(float(logged)), "validating the last checkpoint must reproduce epoch 1"

    tested = mobilenet("test", *small_run(cifar10_dir), cwd=trained)  # best is the default
    assert tested.returncode == 0, tested.stderr
    assert "test/acc" in tested.stdout and "best-epoch=" in tested.stdout + tested.stderr

    predicted = mobilenet("predict", *small_run(cifar10_dir), "--ckpt_path", "last", cwd=trained)
    assert predicted.returncode == 0, predicted.stderr
    assert "Wrote 30 predictions to" in predicted.stdout
    csv_path = Path(trained / predicted.stdout.split("Wrote 30 predictions to ")[1].split(" (accuracy")[0])
    predictions = csv_rows(csv_path)
    assert len(predictions) == 30
    assert {row["prediction_name"] for row in predictions} <= {
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}  # fmt: skip
    assert all(0 <= float(row["confidence"]) <= 1 for row in predictions)


def test_missing_dataset_stops_with_one_clear_message(tmp_path):
    result = mobilenet("fit", "--config", str(CONFIGS / "cifar10.yaml"), "--data.data_dir", str(tmp_path / "empty"),
                       "--data.download", "false", cwd=tmp_path)  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]  # one paragraph, last thing printed
    assert message.startswith("mobilenet: error: CIFAR-10 is not in")
    for expected in ("cifar-10-batches-py", "data_batch_1", "cifar-10-python.tar.gz",
                     "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "--data.data_dir"):  # fmt: skip
        assert expected in message
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "logs").exists()


def test_asking_for_a_checkpoint_a_run_does_not_have(tmp_path, cifar10_dir):
    result = mobilenet(
        "test", *small_run(cifar10_dir), "--run_name", "never_trained", "--ckpt_path", "best", cwd=tmp_path
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no best checkpoint in 'checkpoints/never_trained'" in result.stderr


def test_the_tuned_recipe_trains_and_predicts_on_image_folders(tmp_path):
    root = write_image_folder(tmp_path / "images")  # 93 training images in 3 classes, 15 test images
    recipe = [
        "--config", str(CONFIGS / "cifar10_fast.yaml"), "--data", "ImageFolderDataModule", "--data.root", str(root),
        "--data.val_size", "13", "--data.batch_size", "16", "--model.width_mult", "0.25", "--trainer.max_epochs", "1",
    ]  # fmt: skip
    fit = mobilenet("fit", *recipe, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    assert "Decoding" in fit.stderr and "93/93" in fit.stderr  # the progress bar of the one-time decode
    assert (tmp_path / "checkpoints" / "cifar10_fast" / "last.ckpt").is_file()

    predicted = mobilenet("predict", *recipe, cwd=tmp_path)  # the test/ folder, best checkpoint by default
    assert predicted.returncode == 0, predicted.stderr
    assert "15/15" in predicted.stderr and "93/93" not in predicted.stderr  # decodes test/ only, once
    csv_path = tmp_path / predicted.stdout.split("Wrote 15 predictions to ")[1].split(" (accuracy")[0]
    assert {row["label_name"] for row in csv_rows(csv_path)} == set(CLASSES)

    as_cifar = mobilenet("test", "--config", str(CONFIGS / "cifar10_fast.yaml"), cwd=tmp_path)
    assert as_cifar.returncode != 0 and "Traceback" not in as_cifar.stderr
    assert f"trained on the image folders in '{root}'" in as_cifar.stderr
