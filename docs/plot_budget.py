"""Validation accuracy against training time: what a budget buys (the picture in docs/results.md).

    python docs/plot_budget.py --out docs/results_budget.png --seconds_per_epoch 86 \
        --recipe "tuned recipe" "10 epochs=10:83.46" "100 epochs=100:88.82=logs/L100_fast_s0" \
        --recipe "tuned recipe + Cutout" "90 epochs=90:89.26=logs/L90_cutout_s0"

Each --recipe is a NAME and its runs, LABEL=EPOCHS:ACCURACY[=LOG_DIR]: a schedule length and its final validation
accuracy (%), and, with a logs/<run> folder, its accuracy after every epoch as a faint curve. The final points of
one recipe share a colour and a line; different recipes are not joined. Minutes are epochs × --seconds_per_epoch,
one machine's measured time per epoch (training and validation), so the runs compare on one clock.
"""

import argparse
from itertools import cycle
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from plot_val_acc import save, val_acc_by_epoch  # noqa: E402


def parse_run(run: str) -> tuple[str, float, float, str]:
    """LABEL=EPOCHS:ACCURACY[=LOG_DIR] → (label, epochs, accuracy, log_dir or "")."""
    label, _, rest = run.partition("=")
    schedule, _, folder = rest.partition("=")
    epochs, accuracy = (float(part) for part in schedule.split(":"))
    return label, epochs, accuracy, folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipe", nargs="+", action="append", required=True, metavar="NAME RUN",
        help="a recipe's name, then its runs as LABEL=EPOCHS:ACCURACY[=LOG_DIR]; give one --recipe per recipe",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds_per_epoch", type=float, required=True)
    parser.add_argument("--clock", default="2 AMD EPYC cores, bf16-mixed", help="the machine the minutes are on")
    parser.add_argument("--target", type=float, help="a dashed line at this accuracy (%%), e.g. a goal")
    parser.add_argument("--val_images", type=int, default=5000)
    parser.add_argument("--floor", type=float, default=60, help="the lowest accuracy shown (%%)")
    args = parser.parse_args()
    minutes = args.seconds_per_epoch / 60
    figure, axes = plt.subplots(figsize=(8, 4.8), dpi=110)
    colours = cycle(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for (name, *runs), colour in zip(args.recipe, colours, strict=False):
        if not runs:
            parser.error(f"--recipe {name!r} lists no runs; give LABEL=EPOCHS:ACCURACY[=LOG_DIR] after its name")
        ends = []
        for label, epochs, accuracy, folder in map(parse_run, runs):
            if folder:
                done, curve = val_acc_by_epoch(Path(folder))
                axes.plot([e * minutes for e in done], curve, color=colour, alpha=0.25, linewidth=1)
            ends.append((epochs * minutes, accuracy, f"{label}: {accuracy:.1f}%"))
        ends.sort()
        axes.plot([x for x, _, _ in ends], [y for _, y, _ in ends], color=colour, linewidth=1, marker="o",
                  markersize=7, label=f"{name}: " + ", ".join(text for _, _, text in ends))  # fmt: skip
    if args.target:
        axes.axhline(args.target, color="grey", linestyle="--", linewidth=1, label=f"{args.target:g}% target")
    axes.set(
        xlabel=f"training minutes ({args.clock}, {args.seconds_per_epoch:.0f} s per epoch)",
        ylabel=f"validation accuracy (%), {args.val_images:,} images",
        title="What a training budget buys: MobileNetV1 (α = 1) on CIFAR-10, by recipe",
    )
    axes.set_ylim(bottom=args.floor)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    save(figure, args.out)


if __name__ == "__main__":
    main()
