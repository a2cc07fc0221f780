"""The pictures: training curves, a confusion matrix and a grid of labelled images, as matplotlib Figures.

Figures are built without pyplot, so they render the same in a terminal session (no display) and inline in a
notebook; ``save`` writes one to a PNG.
"""

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from mobilenet.files import atomic_write, printable

CORRECT, WRONG = "tab:green", "tab:red"
# Numbers in the confusion matrix's cells stay readable up to about 20 classes; above that only colours.
ANNOTATE_MAX_CLASSES = 20


def save(figure: Figure, path: str | Path) -> Path:
    """The figure as a PNG file, written atomically."""
    with atomic_write(path) as file:
        figure.savefig(file, format="png", dpi=100, bbox_inches="tight")
    return Path(path)


def training_curves(epochs: dict[str, list[float]], title: str = "Training curves") -> Figure:
    """Loss (train and validation) and validation accuracy against epoch.

    ``epochs`` has the columns ``epoch``, ``train_loss``, ``val_loss``, ``val_acc``; missing values are NaN.
    """
    figure = Figure(figsize=(10, 4))
    loss_axes, acc_axes = figure.subplots(1, 2)
    x = np.asarray(epochs["epoch"])
    for column, label in (("train_loss", "training loss"), ("val_loss", "validation loss")):
        y = np.asarray(epochs[column], dtype=float)
        loss_axes.plot(x[~np.isnan(y)], y[~np.isnan(y)], marker="o", label=label)
    loss_axes.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    loss_axes.legend()
    acc = np.asarray(epochs["val_acc"], dtype=float)
    acc_axes.plot(x[~np.isnan(acc)], 100 * acc[~np.isnan(acc)], marker="o", color="tab:green")
    acc_axes.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100))
    for axes in (loss_axes, acc_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(title)
    return figure


def confusion_matrix(matrix: torch.Tensor, class_names: Sequence[str], title: str = "Confusion matrix") -> Figure:
    """Rows are true classes, columns predictions; colour is the share of each true class, cells show counts."""
    counts = matrix.cpu().numpy()
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = len(class_names)
    side = min(max(6, 0.6 * size), 24)
    figure = Figure(figsize=(side, side * 0.85))
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="share of the true class", fraction=0.046)
    axes.set_xticks(range(size), class_names, rotation=90 if size > ANNOTATE_MAX_CLASSES else 45, ha="right")
    axes.set_yticks(range(size), class_names)
    axes.tick_params(labelsize=10 if size <= ANNOTATE_MAX_CLASSES else 6)
    axes.set(title=printable(title), xlabel="predicted class", ylabel="true class")
    if size <= ANNOTATE_MAX_CLASSES:
        for row in range(size):
            for col in range(size):
                if counts[row, col]:
                    colour = "white" if shares[row, col] > 0.5 else "black"
                    axes.text(col, row, int(counts[row, col]), ha="center", va="center", color=colour, fontsize=9)
    return figure


def image_grid(
    images: Sequence[torch.Tensor],
    titles: Sequence[str],
    correct: Optional[Sequence[bool]] = None,
    columns: int = 4,
    title: str = "",
) -> Figure:
    """uint8 images (3, H, W) in a grid, each with its title; green/red titles when ``correct`` is given."""
    rows = max(1, -(-len(images) // columns))
    figure = Figure(figsize=(2.6 * columns, 2.9 * rows))
    grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for index, axes in enumerate(grid):
        axes.axis("off")
        if index >= len(images):
            continue
        # Nearest-neighbour keeps 32×32 pixels sharp instead of blurring them into a smudge.
        axes.imshow(images[index].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        colour = "black" if correct is None else (CORRECT if correct[index] else WRONG)
        axes.set_title(printable(titles[index]), color=colour, fontsize=10)
    if title:
        figure.suptitle(title)
    return figure


def calibration(counts: torch.Tensor, accuracy: torch.Tensor, ece: float) -> Figure:
    """Reliability diagram from equal-width confidence bins (images and accuracy per bin, as
    ``mobilenet.commands.report.calibration_bins`` counts them): a calibrated model's bars follow the dashed
    diagonal; the orange line shows the share of images in each bin."""
    bins = len(counts)
    edges = np.linspace(0, 1, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    counts, accuracy = counts.numpy(), accuracy.numpy()
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    used = counts > 0
    axes.bar(centres[used], accuracy[used], width=1 / bins, edgecolor="black", alpha=0.8, label="accuracy")
    axes.plot([0, 1], [0, 1], linestyle="--", color="tab:gray", label="calibrated")
    axes.plot(centres, counts / max(counts.sum(), 1), color="tab:orange", marker=".", label="share of images")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top softmax probability)", ylabel="accuracy")
    axes.set_title(f"Expected calibration error {ece:.2%} ({bins} bins)")
    axes.legend(loc="upper left")
    axes.grid(alpha=0.3)
    return figure
