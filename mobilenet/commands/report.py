"""``mobilenet report``: the pictures and tables of a trained model and of the run that trained it.

Writes into ``logs/<run>/eval/<checkpoint>/report/`` (or ``--out``):
    curves.png, curves.csv         train loss, validation loss and accuracy per epoch (all of the run's
                                   fit sessions, a resumed one included), when the run's logs are here
    confusion_matrix.png           on the evaluated split (--split test or val), rows true classes
    calibration.png                accuracy against confidence, and the expected calibration error
    per_class_accuracy.csv         on that split, one row per class
    <split>_predictions.png        8 of its images titled "label / prediction (confidence)"

``--calibrate`` also writes the model with a fitted temperature in its record: a new safetensors file beside
the model (``<name>.calibrated.safetensors``, or ``--calibrated_output``), never over it. Every command then
gives softmax(logits / T) as that model's probabilities.
"""

import csv
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from mobilenet import plots
from mobilenet.commands.checkpoint_policy import settle_model
from mobilenet.commands.parser import command_parser, import_class, parse
from mobilenet.deploy.artifacts import Artifact, with_network
from mobilenet.deploy.classifier import Classifier, open_classifier
from mobilenet.deploy.export import check_output, export
from mobilenet.errors import UsageError
from mobilenet.files import check_writable, write_csv
from mobilenet.training.runs import LOG_ROOT, evaluation_dir

CURVE_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc")
# metrics.csv column → curves.csv column; train/loss is the epoch mean (train/loss_step the per-batch value).
LOGGED = {"train/loss": "train_loss", "val/loss": "val_loss", "val/acc": "val_acc"}
VERSION = re.compile(r"version_(\d+)$")
SPLITS = ("test", "val")
CALIBRATION_BINS = 15
MIN_CALIBRATION_IMAGES = 20


def version_number(folder: Path) -> int:
    match = VERSION.search(folder.name)
    return int(match.group(1)) if match else -1


def epoch_table(logs: Path) -> dict[str, list[float]]:
    """One row per epoch from every fit session's metrics.csv; a later session wins for the same epoch.

    Sessions of validate/test/predict (no train/loss column) are left out. Rows that cannot be read (a
    half-written last row after a power loss, NUL bytes, a value that is not a number) are skipped, and one
    line says how many, from which file.
    """
    by_epoch: dict[int, dict[str, float]] = {}
    for version in sorted(logs.glob("version_*"), key=version_number):
        metrics = version / "metrics.csv"
        if not metrics.is_file():
            continue
        skipped = 0
        try:
            with open(metrics, newline="", errors="replace") as file:
                reader = csv.DictReader(file)
                if "train/loss" not in (reader.fieldnames or ()):
                    continue
                for row in reader:
                    try:
                        values = metric_row(row)
                    except (TypeError, ValueError):
                        skipped += 1
                        continue
                    if values is not None:
                        epoch, logged = values
                        by_epoch.setdefault(epoch, {}).update(logged)
        except (OSError, csv.Error) as err:
            print(f"Could not read {metrics} ({type(err).__name__}: {err}); its epochs are left out of the curves.")
            continue
        if skipped:
            print(
                f"Skipped {skipped} unreadable row{'s' if skipped > 1 else ''} of {metrics} (half-written or edited)."
            )
    table: dict[str, list[float]] = {column: [] for column in CURVE_COLUMNS}
    for epoch in sorted(by_epoch):
        table["epoch"].append(epoch)
        for column in CURVE_COLUMNS[1:]:
            table[column].append(by_epoch[epoch].get(column, math.nan))
    return table


def metric_row(row: dict) -> Optional[tuple[int, dict[str, float]]]:
    """(epoch, {curve column: value}) of one metrics.csv row, None for a row without an epoch; ValueError or
    TypeError for a row that is not whole (missing cells come back as None, extra ones under the key None)."""
    if None in row or None in row.values():
        raise ValueError("a row with too few or too many cells")
    if not row.get("epoch"):
        return None
    epoch = int(row["epoch"])
    logged = {column: float(row[name]) for name, column in LOGGED.items() if row.get(name)}
    if epoch < 0:
        raise ValueError("an epoch below 0")
    return epoch, logged


def write_curves(table: dict[str, list[float]], out: Path, title: str) -> list[Path]:
    rows = (
        [row[0], *("" if math.isnan(value) else f"{value:.6g}" for value in row[1:])]
        for row in zip(*(table[column] for column in CURVE_COLUMNS), strict=True)
    )
    csv_path = write_csv(out / "curves.csv", CURVE_COLUMNS, rows)
    return [csv_path, plots.save(plots.training_curves(table, title), out / "curves.png")]


def split_images(data_config, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (N, 3, H, W) uint8 and labels of ``split`` of the DataModule ``data_config`` describes."""
    data = import_class(data_config.class_path)(**data_config.init_args)
    data.prepare_data()
    data.setup("test" if split == "test" else "validate")
    chosen = data.splits[split]
    return chosen.images, chosen.labels


def confusion(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(true class, predicted class) counts."""
    return torch.bincount(labels * num_classes + predictions, minlength=num_classes**2).view(num_classes, num_classes)


def calibration_bins(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = CALIBRATION_BINS
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(images per bin, accuracy per bin, expected calibration error) over ``bins`` equal-width confidence bins.

    The expected calibration error is Σ over bins of (share of images in the bin) × |accuracy - mean confidence|.
    """
    index = (confidence * bins).long().clamp(max=bins - 1)
    counts = torch.zeros(bins).index_add_(0, index, torch.ones_like(confidence))
    right = torch.zeros(bins).index_add_(0, index, correct.float())
    gap = (right - torch.zeros(bins).index_add_(0, index, confidence)).abs()
    return counts, right / counts.clamp(min=1), float(gap.sum() / counts.sum().clamp(min=1))


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = CALIBRATION_BINS) -> float:
    return calibration_bins(confidence, correct, bins)[2]


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T that minimises the cross-entropy of softmax(logits / T) (Guo et al., 2017).

    The cross-entropy is convex in 1 / T, so a golden-section search over 1 / T in [0.02, 50] finds its minimum
    however flat it is (a gradient method stalls on the nearly flat loss of a barely trained network).
    """
    logits, labels = logits.double(), labels.long()

    def loss(inverse: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits * inverse, labels))

    ratio = (5**0.5 - 1) / 2
    low, high = 0.02, 50.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(80):  # the bracket shrinks by 0.618 each time: 80 steps leave it under 1e-15 wide
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return 1 / ((low + high) / 2)


def temperature_check(logits: torch.Tensor, labels: torch.Tensor) -> tuple[Optional[float], str]:
    """Temperature scaling measured without fitting and scoring on the same images: T is fitted on the images at
    even positions, the calibration error compared on those at odd positions. Returns T (None with too few
    images) and a line that reports it."""
    if len(labels) < MIN_CALIBRATION_IMAGES:
        return None, (
            f"Temperature scaling: too few images to fit and check a temperature ({MIN_CALIBRATION_IMAGES} or "
            f"more needed)."
        )
    fit, held = slice(0, None, 2), slice(1, None, 2)
    temperature = fit_temperature(logits[fit], labels[fit])

    def ece(scale: float) -> float:
        confidence, predictions = (logits[held] / scale).softmax(dim=1).max(dim=1)
        return expected_calibration_error(confidence, predictions == labels[held])

    return temperature, (
        f"Temperature scaling: T = {temperature:.3f} fitted on {len(labels[fit])} of the images; on the other "
        f"{len(labels[held])}, expected calibration error {ece(1.0):.2%} at T = 1 and {ece(temperature):.2%} at "
        f"T = {temperature:.3f}."
    )


def write_split_results(
    classifier: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    out: Path,
    num_images: int,
    title: str,
    split: str,
) -> tuple[list[Path], float, float, tuple[Optional[float], str]]:
    """The split's figures and tables; returns (files written, accuracy, expected calibration error, and the
    fitted temperature with a line on it)."""
    logits = classifier.logits(images, progress=True)
    probabilities = (logits / classifier.metadata.temperature).softmax(dim=1)
    confidence, predictions = probabilities.max(dim=1)
    names = classifier.class_names
    matrix = confusion(labels, predictions, len(names))
    accuracy = (predictions == labels).float().mean().item()
    totals, correct = matrix.sum(dim=1).tolist(), matrix.diagonal().tolist()
    per_class_path = write_csv(
        out / "per_class_accuracy.csv",
        ("class", "images", "correct", "accuracy"),
        ((name, n, c, f"{c / n:.4f}" if n else "") for name, n, c in zip(names, totals, correct, strict=True)),
    )
    name = {"test": "test", "val": "validation"}[split]
    figure = plots.confusion_matrix(matrix, names, f"{title}: {name} accuracy {accuracy:.2%} on {len(labels)} images")
    shown = range(min(num_images, len(labels)))
    grid = plots.image_grid(
        [images[i] for i in shown],
        [f"{names[labels[i]]} / {names[predictions[i]]}\n({probabilities[i, predictions[i]]:.0%})" for i in shown],
        correct=[bool(labels[i] == predictions[i]) for i in shown],
        title=f"{title}: {name} images, label / prediction (confidence)",
    )
    counts, bin_accuracy, ece = calibration_bins(confidence, predictions == labels)
    written = [
        plots.save(figure, out / "confusion_matrix.png"),
        plots.save(plots.calibration(counts, bin_accuracy, ece), out / "calibration.png"),
        per_class_path,
        plots.save(grid, out / f"{split}_predictions.png"),
    ]
    return written, accuracy, ece, temperature_check(logits, labels)


def main(argv: list[str]) -> int:
    parser = command_parser(
        "report",
        "Training curves of a run, and a confusion matrix, per-class accuracy and labelled images of one of its "
        "checkpoints on the test split (or the validation split, --split val).",
        uses=("data", "run"),
    )
    parser.add_argument("--split", choices=SPLITS, default="test", help="the split to evaluate (default test)")
    parser.add_argument("--out", type=Optional[str], default=None, help="folder for the report files")
    parser.add_argument("--num_images", type=int, default=8, help="images in the picture grid (default 8)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="also write the model with the temperature fitted on the split (<name>.calibrated.safetensors)",
    )
    parser.add_argument("--calibrated_output", type=Optional[str], default=None, help="where --calibrate writes")
    config, given = parse(parser, argv)
    if config.num_images < 1:
        raise UsageError(f"--num_images must be at least 1, got {config.num_images}.")
    source = settle_model(config, "report", given)
    calibrated = calibrated_path(source.checkpoint, config.calibrated_output) if config.calibrate else None
    if calibrated is not None:  # before any work: a refused output costs nothing
        check_output(calibrated, source.checkpoint, overwrite=False, suffix=".safetensors")
    out = (
        Path(config.out)
        if config.out
        else evaluation_dir(source.run_name, source.checkpoint, source.run_dir) / "report"
    )
    check_writable(out)
    logs = LOG_ROOT / source.run_name
    written: list[Path] = []
    table = epoch_table(logs) if logs.is_dir() else None
    if table and table["epoch"]:
        written += write_curves(table, out, f"{source.run_name}: training curves")
    else:
        print(f"No training metrics of run '{source.run_name}' in {logs}: no curves drawn.")
    classifier = open_classifier(with_network(source.artifact), device=config.device)
    images, labels = split_images(config.data, config.split)
    files, accuracy, ece, (temperature, calibration_note) = write_split_results(
        classifier, images, labels, out, config.num_images, source.run_name, config.split
    )
    written += files
    name = {"test": "Test", "val": "Validation"}[config.split]
    print(
        f"{name} accuracy of {source.checkpoint}: {accuracy:.2%} on {len(labels)} images; expected calibration "
        f"error {ece:.2%} ({CALIBRATION_BINS} bins, temperature {source.artifact.metadata.temperature:g})."
    )
    print(calibration_note)
    for path in written:
        print(f"Wrote {path}")
    if calibrated is not None:
        write_calibrated(source.artifact, temperature, len(labels), config.split, calibrated)
    return 0


def calibrated_path(model: Path, output: Optional[str]) -> Path:
    """Where ``--calibrate`` writes: ``--calibrated_output``, else ``<model name>.calibrated.safetensors`` beside it."""
    return Path(output) if output else model.with_name(f"{model.name.split('.')[0]}.calibrated.safetensors")


def write_calibrated(artifact: Artifact, temperature: Optional[float], images: int, split: str, output: Path) -> None:
    """The model again, as safetensors, with ``temperature`` in its record (float16 weights if the source had)."""
    if temperature is None:
        raise UsageError(
            f"--calibrate needs {MIN_CALIBRATION_IMAGES} or more images to fit a temperature; the {split} split has "
            f"{images}. Nothing was written: calibrate on a larger split (--split val with a larger --data.val_size)."
        )
    half = (artifact.metadata.export or {}).get("dtype") == "float16"
    built = with_network(artifact)
    recalibrated = replace(built, metadata=replace(built.metadata, temperature=temperature))
    for line in export(recalibrated, "safetensors", output, half=half):
        print(line)
    print(f"The model in {output} gives softmax(logits / {temperature:.3f}) as its probabilities in every command.")
