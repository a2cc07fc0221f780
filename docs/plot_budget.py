"""Validation accuracy against training time: what a budget buys (the picture in docs/results.md).

    python docs/plot_budget.py --out docs/results_budget.png --seconds_per_epoch 96 \
        "10 epochs=10:83.46" "40 epochs=40:87.90" "100 epochs=100:91.0=logs/L100_fast_s0"

Each run is LABEL=EPOCHS:ACCURACY[=LOG_DIR]: its schedule length and final validation accuracy (%), and, with a
logs/<run> folder, its accuracy after every epoch as a faint curve. Minutes are epochs × --seconds_per_epoch,
one machine's measured time per epoch (training and validation), so the runs compare on one clock.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from plot_val_acc import save, val_acc_by_epoch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=EPOCHS:ACCURACY[=LOG_DIR]")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds_per_epoch", type=float, required=True)
    parser.add_argument("--clock", default="2 AMD EPYC cores, bf16-mixed", help="the machine the minutes are on")
    parser.add_argument("--target", type=float, help="a dashed line at this accuracy (%%), e.g. a goal")
    parser.add_argument("--val_images", type=int, default=5000)
    parser.add_argument("--floor", type=float, default=60, help="the lowest accuracy shown (%%)")
    args = parser.parse_args()
    minutes = args.seconds_per_epoch / 60
    figure, axes = plt.subplots(figsize=(7.5, 4.4), dpi=110)
    ends = []
    for run in args.runs:
        label, _, rest = run.partition("=")
        schedule, _, folder = rest.partition("=")
        epochs, accuracy = (float(part) for part in schedule.split(":"))
        if folder:
            done, curve = val_acc_by_epoch(Path(folder))
            axes.plot([e * minutes for e in done], curve, color="grey", alpha=0.35, linewidth=1)
        ends.append((epochs * minutes, accuracy, f"{label}: {accuracy:.1f}% in {epochs * minutes:.0f} min"))
    for x, y, text in sorted(ends):
        axes.plot(x, y, marker="o", markersize=8, linestyle="none", label=text)
    axes.plot([x for x, _, _ in sorted(ends)], [y for _, y, _ in sorted(ends)], color="black", linewidth=1)
    if args.target:
        axes.axhline(args.target, color="grey", linestyle="--", linewidth=1, label=f"{args.target:g}% target")
    axes.set(
        xlabel=f"training minutes ({args.clock}, {args.seconds_per_epoch:.0f} s per epoch)",
        ylabel=f"validation accuracy (%), {args.val_images:,} images",
        title="The tuned recipe (configs/cifar10_fast.yaml) by schedule length",
    )
    axes.set_ylim(bottom=args.floor)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=9)
    save(figure, args.out)


if __name__ == "__main__":
    main()
