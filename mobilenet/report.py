"""``mobilenet report``: the pictures and tables of a finished run, from its log folder or a checkpoint.

Writes into ``<log folder>/report/`` (or ``--out``):
    curves.png, curves.csv         train loss, validation loss and accuracy per epoch (all of the run's
                                   fit sessions, a resumed one included)
    confusion_matrix.png           on the test set, rows true classes, columns predictions
    per_class_accuracy.csv         on the test set, one row per class
    test_predictions.png           8 test images titled "label / prediction"
"""

import argparse
import csv
import math
import re
from pathlib import Path
from typing import Optional

import torch
import yaml

from mobilenet import plots
from mobilenet.data import BatchedDataModule, CIFARDataModule, ImageFolderDataModule
from mobilenet.errors import UsageError
from mobilenet.inference import Classifier
from mobilenet.runs import CHECKPOINT_ROOT, LOG_ROOT, read_checkpoint, resolve_checkpoint

CURVE_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc")
# metrics.csv column → curves.csv column; train/loss is the epoch mean (train/loss_step the per-batch value).
LOGGED = {"train/loss": "train_loss", "val/loss": "val_loss", "val/acc": "val_acc"}
VERSION = re.compile(r"version_(\d+)$")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mobilenet report",
        description="Training curves, a confusion matrix, per-class accuracy and labelled test images for a run.",
    )
    parser.add_argument("run", help="the run's log folder (logs/NAME or logs/NAME/version_N) or a checkpoint file")
    parser.add_argument(
        "--ckpt_path", default="best", help="checkpoint for the test-set parts: best (default), last or a file"
    )
    parser.add_argument("--out", help="folder for the report files (default: <log folder>/report)")
    parser.add_argument("--data_dir", help="where the dataset is, when not where the run was trained from")
    parser.add_argument("--num_images", type=int, default=8, help="test images in the picture grid (default 8)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def version_number(folder: Path) -> int:
    match = VERSION.search(folder.name)
    return int(match.group(1)) if match else -1


def locate(run: Path, ckpt_path: str) -> tuple[Optional[Path], Path]:
    """(the run's log folder holding version_* folders, or None; the checkpoint to evaluate)."""
    if run.is_file():
        name = run.resolve().parent.name
        logs = LOG_ROOT / name
        return (logs if logs.is_dir() else None), run
    if not run.is_dir():
        raise UsageError(f"'{run}' is neither a log folder nor a checkpoint file.")
    logs = run.parent if VERSION.search(run.name) else run
    versions = sorted((p for p in logs.glob("version_*") if p.is_dir()), key=version_number)
    if not versions:
        raise UsageError(
            f"'{run}' holds no version_* folders: pass a run's log folder (logs/NAME) or a checkpoint file."
        )
    checkpoint_dir = CHECKPOINT_ROOT / logs.name
    for version in reversed(versions):  # the newest config says where this run's checkpoints went
        config_file = version / "config.yaml"
        if config_file.is_file():
            config = yaml.safe_load(config_file.read_text()) or {}
            checkpoint_dir = Path((config.get("checkpoint") or {}).get("dirpath") or checkpoint_dir)
            break
    return logs, Path(resolve_checkpoint(ckpt_path, checkpoint_dir, logs.name, "report"))


def epoch_table(logs: Path) -> dict[str, list[float]]:
    """One row per epoch from every fit session's metrics.csv; a later session wins for the same epoch.

    Sessions of validate/test/predict (no train/loss column) are left out.
    """
    by_epoch: dict[int, dict[str, float]] = {}
    for version in sorted(logs.glob("version_*"), key=version_number):
        metrics = version / "metrics.csv"
        if not metrics.is_file():
            continue
        with open(metrics) as file:
            reader = csv.DictReader(file)
            if "train/loss" not in (reader.fieldnames or ()):
                continue
            for row in reader:
                if not row.get("epoch"):
                    continue
                epoch = by_epoch.setdefault(int(row["epoch"]), {})
                for logged, column in LOGGED.items():
                    if row.get(logged):
                        epoch[column] = float(row[logged])
    table: dict[str, list[float]] = {column: [] for column in CURVE_COLUMNS}
    for epoch in sorted(by_epoch):
        table["epoch"].append(epoch)
        for column in CURVE_COLUMNS[1:]:
            table[column].append(by_epoch[epoch].get(column, math.nan))
    return table


def write_curves(table: dict[str, list[float]], out: Path, title: str) -> list[Path]:
    csv_path = out / "curves.csv"
    with open(csv_path, "w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(CURVE_COLUMNS)
        for row in zip(*(table[column] for column in CURVE_COLUMNS), strict=True):
            writer.writerow([row[0], *("" if math.isnan(value) else f"{value:.6g}" for value in row[1:])])
    return [csv_path, plots.save(plots.training_curves(table, title), out / "curves.png")]


def test_split(checkpoint_path: Path, data_dir: Optional[str]) -> tuple[BatchedDataModule, torch.Tensor, torch.Tensor]:
    """The test images (N, 3, H, W) uint8 and labels of the dataset the checkpoint was trained on.

    ``data_dir`` overrides where the data is: CIFAR's ``data_dir``, or an image folder's ``root``.
    """
    saved = read_checkpoint(str(checkpoint_path)).get("datamodule_hyper_parameters") or {}
    if "root" in saved:
        data = ImageFolderDataModule(
            root=data_dir or saved["root"], cache_dir=saved.get("cache_dir"), resolution=saved.get("resolution", 32)
        )
    else:
        data = CIFARDataModule(
            dataset=saved.get("dataset", "cifar10"),
            data_dir=data_dir or saved.get("data_dir", "data"),
            download=False,
            verify=saved.get("verify", True),
        )
    try:
        data.prepare_data()
        data.setup("test")
    except UsageError as err:  # the data module names --data.data_dir, the training option
        raise UsageError(f"{err} For `mobilenet report`, that option is --data_dir.") from err
    split = data.splits["test"]
    return data, split.images, split.labels


def confusion(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(true class, predicted class) counts."""
    return torch.bincount(labels * num_classes + predictions, minlength=num_classes**2).view(num_classes, num_classes)


def write_test_results(
    classifier: Classifier, images: torch.Tensor, labels: torch.Tensor, out: Path, num_images: int, title: str
) -> tuple[list[Path], float]:
    probabilities = classifier.probabilities(images, progress=True)
    predictions = probabilities.argmax(dim=1)
    names = classifier.class_names
    matrix = confusion(labels, predictions, len(names))
    accuracy = (predictions == labels).float().mean().item()
    per_class_path = out / "per_class_accuracy.csv"
    with open(per_class_path, "w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(("class", "images", "correct", "accuracy"))
        for index, name in enumerate(names):
            total, correct = int(matrix[index].sum()), int(matrix[index, index])
            writer.writerow((name, total, correct, f"{correct / total:.4f}" if total else ""))
    figure = plots.confusion_matrix(matrix, names, f"{title}: test accuracy {accuracy:.2%} on {len(labels)} images")
    shown = range(min(num_images, len(labels)))
    grid = plots.image_grid(
        [images[i] for i in shown],
        [f"{names[labels[i]]} / {names[predictions[i]]}\n({probabilities[i, predictions[i]]:.0%})" for i in shown],
        correct=[bool(labels[i] == predictions[i]) for i in shown],
        title=f"{title}: test images, label / prediction (confidence)",
    )
    written = [
        plots.save(figure, out / "confusion_matrix.png"),
        per_class_path,
        plots.save(grid, out / "test_predictions.png"),
    ]
    return written, accuracy


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.num_images < 1:
        raise UsageError(f"--num_images must be at least 1, got {args.num_images}.")
    logs, checkpoint = locate(Path(args.run), args.ckpt_path)
    out = Path(args.out) if args.out else (logs or checkpoint.parent) / "report"
    out.mkdir(parents=True, exist_ok=True)
    title = logs.name if logs else checkpoint.parent.name
    written: list[Path] = []
    table = epoch_table(logs) if logs else None
    if table and table["epoch"]:
        written += write_curves(table, out, f"{title}: training curves")
    else:
        print(f"No training metrics found for '{title}' (looked in {logs or LOG_ROOT / title}): no curves drawn.")
    classifier = Classifier.from_checkpoint(checkpoint, args.device)
    _, images, labels = test_split(checkpoint, args.data_dir)
    test_files, accuracy = write_test_results(classifier, images, labels, out, args.num_images, title)
    written += test_files
    print(f"Test accuracy of {checkpoint}: {accuracy:.2%} on {len(labels)} images.")
    for path in written:
        print(f"Wrote {path}")
    return 0
