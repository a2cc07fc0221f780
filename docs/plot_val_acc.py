"""Validation-accuracy curves of several runs in one PNG (the picture in docs/results.md).

    python docs/plot_val_acc.py --out docs/recipes_val_acc.png \
        "tuned=logs/fast_10ep" "reference=logs/ref_10ep"
"""

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402


def val_acc_by_epoch(log_dir: Path) -> tuple[list[int], list[float]]:
    """(epochs counted from 1, val/acc) from a CSV logger's metrics.csv, or from every version_N/metrics.csv of a
    run folder (a resumed run writes a new version; a later version's row for an epoch wins)."""
    files = (
        [log_dir / "metrics.csv"]
        if (log_dir / "metrics.csv").is_file()
        else sorted(log_dir.glob("version_*/metrics.csv"), key=lambda path: int(path.parent.name.split("_")[1]))
    )
    by_epoch: dict[int, float] = {}
    for path in files:
        with open(path) as file:
            by_epoch.update({int(row["epoch"]) + 1: 100 * float(row["val/acc"]) for row in csv.DictReader(file)
                             if row.get("val/acc")})  # fmt: skip
    epochs = sorted(by_epoch)
    return epochs, [by_epoch[epoch] for epoch in epochs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=LOG_DIR: a logs/<run> folder, or one of its version_<n>")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="MobileNetV1 (α = 1) on the CIFAR-10 JPEG images: validation accuracy")
    parser.add_argument("--target", type=float, help="a dashed line at this accuracy (%%), e.g. a goal")
    parser.add_argument("--val_images", type=int, default=5000, help="size of the validation split, for the axis")
    args = parser.parse_args()
    many = len(args.runs) > 4  # then the legend goes beside the axes, where it hides no curve
    figure, axes = plt.subplots(figsize=(9.5 if many else 7, 4.6 if many else 4.2), dpi=110)
    for run in args.runs:
        label, _, folder = run.partition("=")
        epochs, accuracy = val_acc_by_epoch(Path(folder))
        axes.plot(epochs, accuracy, marker="o", label=f"{label}: {accuracy[-1]:.1f}%")
    if args.target:
        axes.axhline(args.target, color="grey", linestyle="--", linewidth=1, label=f"{args.target:g}% target")
    axes.set(xlabel="epoch", ylabel=f"validation accuracy (%), {args.val_images:,} images", title=args.title)
    axes.grid(alpha=0.3)
    if many:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    else:
        axes.legend(loc="lower right")
    save(figure, args.out)


def save(figure, out: Path) -> None:
    """Lay out ``figure`` and write it to ``out`` (its folder made if needed)."""
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
