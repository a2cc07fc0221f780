"""`mobilenet report`: curves from every fit session of a run, test-set confusion matrix, per-class accuracy, grid."""

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_pretrained import sample

from fake_cifar import CIFAR10_NAMES
from mobilenet.commands import main
from mobilenet.commands.report import epoch_table
from mobilenet.data.cifar import CIFARDataModule
from mobilenet.data.cifar_files import read_split
from mobilenet.data.images import read_image
from mobilenet.deploy.artifacts import load
from mobilenet.deploy.classifier import open_classifier
from mobilenet.shipped import shipped_path
from mobilenet.training.module import MobileNetClassifier

MOBILENET = str(Path(sys.executable).parent / "mobilenet")


def rows(path: Path) -> list[dict]:
    with open(path) as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def report(finished_run) -> subprocess.CompletedProcess:
    command = [MOBILENET, "report", "--run_name", "cifar10", "--data.verify", "false"]  # generated, unofficial files
    return subprocess.run(command, cwd=finished_run, capture_output=True, text=True, timeout=300)


def report_dir(finished_run: Path) -> Path:
    """logs/<run>/eval/<best checkpoint>/report: the default ``--ckpt_path best`` is the run's best checkpoint."""
    best = next((finished_run / "checkpoints" / "cifar10").glob("best-*.ckpt"))
    return finished_run / "logs" / "cifar10" / "eval" / best.stem / "report"


def test_report_writes_every_file_into_the_checkpoints_evaluation_folder(report, finished_run):
    assert report.returncode == 0, report.stderr
    out = report_dir(finished_run)
    for name in ("curves.png", "curves.csv", "confusion_matrix.png", "calibration.png", "per_class_accuracy.csv",
                 "test_predictions.png"):  # fmt: skip
        assert f"Wrote {out.relative_to(finished_run)}/{name}" in report.stdout
    for name in ("curves.png", "confusion_matrix.png", "test_predictions.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) >= 300, f"{name} is too small to read"
    with Image.open(out / "test_predictions.png") as grid:
        assert grid.width > grid.height  # 8 images as 2 rows of 4


def test_curves_csv_holds_the_logged_epoch_values(report, finished_run):
    logged = rows(finished_run / "logs" / "cifar10" / "version_0" / "metrics.csv")
    curves = rows(report_dir(finished_run) / "curves.csv")
    assert list(curves[0]) == ["epoch", "train_loss", "val_loss", "val_acc"]
    assert [row["epoch"] for row in curves] == ["0", "1"]
    for row in curves:
        for column, name in (("train_loss", "train/loss"), ("val_loss", "val/loss"), ("val_acc", "val/acc")):
            values = [float(r[name]) for r in logged if r["epoch"] == row["epoch"] and r[name]]
            assert float(row[column]) == pytest.approx(values[-1], rel=1e-5)


def test_per_class_accuracy_matches_the_training_codes_evaluation(report, finished_run, cifar10_dir):
    images, labels = read_split(cifar10_dir / "cifar-10-batches-py", "cifar10", train=False)
    best = next((finished_run / "checkpoints" / "cifar10").glob("best-*.ckpt"))
    assert f"Test accuracy of checkpoints/cifar10/{best.name}" in report.stdout, "the best checkpoint by default"
    model = MobileNetClassifier.load_from_checkpoint(best, map_location="cpu").eval()
    with torch.no_grad():
        predictions = model(CIFARDataModule().transform(images)).argmax(dim=1)
    table = rows(report_dir(finished_run) / "per_class_accuracy.csv")
    assert [row["class"] for row in table] == CIFAR10_NAMES
    for index, row in enumerate(table):
        mine = labels == index
        assert int(row["images"]) == int(mine.sum())
        assert int(row["correct"]) == int((predictions[mine] == index).sum())


def test_curves_join_a_resumed_runs_sessions_and_skip_evaluations(tmp_path):
    header = "epoch,step,train/acc,train/loss,train/loss_step,train/lr,val/acc,val/acc_best,val/loss\n"
    sessions = {
        "version_0": header + "0,4,,,2.3,,,,\n0,4,0.1,2.30,,0.001,,,\n0,4,,,,,0.20,0.20,2.20\n"
        "1,9,0.2,2.10,,0.001,,,\n1,9,,,,,0.30,0.30,2.00\n",
        "version_1": header + "2,14,0.3,1.90,,0.001,,,\n2,14,,,,,0.40,0.40,1.80\n",  # resumed at epoch 2
        "version_2": "epoch,step,test/acc,test/loss\n2,14,0.9,0.5\n",  # a `mobilenet test` session
    }
    for name, text in sessions.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.csv").write_text(text)
    table = epoch_table(tmp_path)
    assert table == {"epoch": [0, 1, 2], "train_loss": [2.30, 2.10, 1.90], "val_loss": [2.20, 2.00, 1.80],
                     "val_acc": [0.20, 0.30, 0.40]}  # fmt: skip


def test_report_of_a_checkpoint_file_on_its_validation_split_and_mistakes(in_tmp, finished_run, capsys):
    checkpoint = finished_run / "checkpoints" / "cifar10" / "last.ckpt"
    main(["report", "--ckpt_path", str(checkpoint), "--out", "from-checkpoint", "--num_images", "4", "--split", "val",
          "--data.verify", "false"])  # fmt: skip
    written = sorted(p.name for p in (in_tmp / "from-checkpoint").iterdir())
    # No logs/cifar10 where this runs: the split's files are written and the missing curves are said to be.
    assert written == ["calibration.png", "confusion_matrix.png", "per_class_accuracy.csv", "val_predictions.png"]
    printed = capsys.readouterr().out
    assert "No training metrics of run 'cifar10' in logs/cifar10" in printed
    assert "Validation accuracy of" in printed and "on 20 images" in printed  # the run's 20 held-out images
    with pytest.raises(SystemExit) as refused:
        main(["report", "--run_name", "no_such_run"])
    message = refused.value.code
    assert message.startswith("mobilenet: error: --ckpt_path best: no checkpoint in 'checkpoints/no_such_run'")


def test_expected_calibration_error_is_the_gap_between_confidence_and_accuracy():
    from mobilenet.commands.report import expected_calibration_error

    confident = torch.full((10,), 0.8)
    assert expected_calibration_error(confident, torch.arange(10) < 8) == pytest.approx(0.0, abs=1e-6)  # 80% right
    assert expected_calibration_error(torch.ones(4), torch.zeros(4, dtype=torch.bool)) == pytest.approx(1.0)
    # Half the images at 0.95 (all right), half at 0.55 (a fifth right): |1 - 0.95| / 2 + |0.2 - 0.55| / 2
    mixed = torch.tensor([0.95] * 10 + [0.55] * 10)
    correct = torch.tensor([True] * 10 + [True] * 2 + [False] * 8)
    assert expected_calibration_error(mixed, correct) == pytest.approx(0.025 + 0.175, abs=1e-6)


def test_temperature_scaling_finds_the_temperature_that_made_the_labels():
    from mobilenet.commands.report import fit_temperature

    generator = torch.Generator().manual_seed(0)
    true_logits = 3 * torch.randn(4000, 10, generator=generator)
    labels = torch.multinomial(true_logits.softmax(dim=1), 1, generator=generator).squeeze(1)
    # A model twice as confident as the truth: dividing its logits by about 2 calibrates it.
    assert fit_temperature(2 * true_logits, labels) == pytest.approx(2.0, rel=0.1)
    # A barely trained one, twenty times too unsure: its loss is nearly flat in T, and T is still found.
    assert fit_temperature(true_logits / 20, labels) == pytest.approx(1 / 20, rel=0.1)


def test_calibrate_writes_a_new_model_with_the_fitted_temperature_and_keeps_the_original(in_tmp, capsys):
    source = in_tmp / "shipped.safetensors"
    shutil.copy(shipped_path("cifar10"), source)
    before = source.read_bytes()
    root = in_tmp / "images"
    files, truth = sample()
    for split in ("train", "val_pool"):
        for path, label in zip(files, truth, strict=True):
            (root / "test" / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / "test" / label / f"{split}_{path.name}")  # 40 test images
            (root / "train" / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / "train" / label / path.name)
    args = ["report", "--ckpt_path", str(source), "--data", "ImageFolderDataModule", "--data.root", str(root),
            "--out", "report", "--calibrate"]  # fmt: skip
    main(args)
    printed = capsys.readouterr().out
    fitted = float(re.search(r"Temperature scaling: T = ([\d.]+) fitted on 20 of the images", printed).group(1))
    calibrated = in_tmp / "shipped.calibrated.safetensors"
    assert source.read_bytes() == before, "the model itself is never rewritten"
    record = load(calibrated).metadata
    assert record.temperature == pytest.approx(fitted, abs=5e-4) and record.temperature != 1.0
    assert record.class_names == load(source).metadata.class_names
    assert f"softmax(logits / {fitted:.3f})" in printed
    # The new model's probabilities are the old logits divided by the fitted temperature.
    images = torch.stack([read_image(path) for path in files])
    logits = open_classifier(source).logits(images)
    expected = (logits / record.temperature).softmax(dim=1)
    assert torch.allclose(open_classifier(calibrated).probabilities(images), expected, atol=2e-3)
    with pytest.raises(SystemExit, match="already exists and is kept"):  # a second run never overwrites it
        main(args)


@pytest.mark.parametrize(
    "damage",
    ["1,9,0.2,2.1", "1,9,0.2,abc,,0.001,,,", "\0\0\0\0\0\0\0\0\0\0\0\0", "1,9,0.2,2.10,,0.001,,,,,,,"],
    ids=["half-written last row", "a value that is not a number", "NUL bytes after a power loss", "extra cells"],
)
def test_curves_skip_rows_that_cannot_be_read_and_say_so(tmp_path, capsys, damage):
    header = "epoch,step,train/acc,train/loss,train/loss_step,train/lr,val/acc,val/acc_best,val/loss\n"
    (tmp_path / "version_0").mkdir()
    (tmp_path / "version_0" / "metrics.csv").write_text(header + "0,4,0.1,2.30,,0.001,,,\n0,4,,,,,0.20,0.20,2.20\n"
                                                        + damage)  # fmt: skip
    table = epoch_table(tmp_path)
    assert table["epoch"] == [0] and table["train_loss"] == [2.30] and table["val_acc"] == [0.20]
    assert "Skipped 1 unreadable row of" in capsys.readouterr().out
