"""`mobilenet report`: curves from every fit session of a run, test-set confusion matrix, per-class accuracy, grid."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from fake_cifar import CIFAR10_NAMES
from mobilenet.cli import main
from mobilenet.data.cifar_files import read_split
from mobilenet.data.datamodule import CIFARDataModule
from mobilenet.module import MobileNetClassifier
from mobilenet.report import epoch_table

MOBILENET = str(Path(sys.executable).parent / "mobilenet")


def rows(path: Path) -> list[dict]:
    with open(path) as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def report(finished_run) -> subprocess.CompletedProcess:
    return subprocess.run([MOBILENET, "report", "logs/cifar10"], cwd=finished_run, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_report_writes_every_file_into_the_runs_log_folder(report, finished_run):
    assert report.returncode == 0, report.stderr
    out = finished_run / "logs" / "cifar10" / "report"
    for name in ("curves.png", "curves.csv", "confusion_matrix.png", "per_class_accuracy.csv", "test_predictions.png"):
        assert f"Wrote logs/cifar10/report/{name}" in report.stdout
    for name in ("curves.png", "confusion_matrix.png", "test_predictions.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) >= 300, f"{name} is too small to read"
    with Image.open(out / "test_predictions.png") as grid:
        assert grid.width > grid.height  # 8 images as 2 rows of 4


def test_curves_csv_holds_the_logged_epoch_values(report, finished_run):
    logged = rows(finished_run / "logs" / "cifar10" / "version_0" / "metrics.csv")
    curves = rows(finished_run / "logs" / "cifar10" / "report" / "curves.csv")
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
    table = rows(finished_run / "logs" / "cifar10" / "report" / "per_class_accuracy.csv")
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


def test_report_of_a_checkpoint_file_and_mistakes(in_tmp, finished_run, capsys):
    checkpoint = finished_run / "checkpoints" / "cifar10" / "last.ckpt"
    with pytest.raises(SystemExit) as done:
        main(["report", str(checkpoint), "--out", "from-checkpoint", "--num_images", "4"])
    assert done.value.code == 0
    written = sorted(p.name for p in (in_tmp / "from-checkpoint").iterdir())
    # No logs/cifar10 where this runs: the test-set files are written and the missing curves are said to be.
    assert written == ["confusion_matrix.png", "per_class_accuracy.csv", "test_predictions.png"]
    assert "No training metrics found for 'cifar10'" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main(["report", "no/such/run"])
    assert refused.value.code == "mobilenet: error: 'no/such/run' is neither a log folder nor a checkpoint file."
