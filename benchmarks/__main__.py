"""Every speed figure in one run: training three ways, the augmentation alone, and inference; a table and JSON.

    python -m benchmarks                          # the README's table (about 5 minutes on 2 CPU cores)
    python -m benchmarks --json results.json      # elsewhere

Training (``benchmarks/training.py``, each contestant in a fresh process): the reference tutorial's PIL +
DataLoader-worker loop (a), this project's ``fit`` path (b), and a raw loop over the project's tensors and
batched augmentation (c); ``b/a`` is what the project gains over the reference, ``b/c`` what Lightning costs.
Augmentation (``benchmarks/augmentation.py``): the ``seed`` preset per PIL image versus batched, one thread.
Inference (``benchmarks/inference.py``): eager (two memory orders), BN-folded, torch.compile, TorchScript and
ONNX Runtime.
Every figure is the median of ``--repeats`` timed repetitions after untimed warm-up.
"""

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks import inference
from benchmarks.augmentation import augmentation_speeds
from benchmarks.training import CONTESTANTS, add_arguments
from mobilenet.training.precision import cpu_bf16, cpu_model

LABELS = {
    "reference": "(a) reference: PIL per image, DataLoader workers",
    "lightning": "(b) this project: Lightning fit, batched augmentation",
    "raw": "(c) raw loop over the project's tensors, no Lightning",
    "lightning_bf16": "(d) = (b) in bf16-mixed",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--augment_images", type=int, default=1024, help="images per augmentation repetition")
    parser.add_argument("--inference_batch_sizes", type=int, nargs=2, default=[1, 256], metavar=("LATENCY", "BULK"))
    parser.add_argument("--inference_seconds", type=float, default=3.0, help="timed seconds per inference figure")
    parser.add_argument("--json", default="benchmarks/results/speed.json", help="where to write the figures")
    return parser.parse_args(argv)


def machine(device: str) -> dict:
    return {
        "cpu": cpu_model(),
        "cpu_bf16": cpu_bf16(),  # the CPU's bfloat16 instructions: [] none (bf16 emulated), None unknown
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "platform": platform.platform(),
        "load_average_1min": os.getloadavg()[0],  # other processes' work skews every figure
    }


def train(contestant: str, args: argparse.Namespace, precision: str = "32-true") -> dict:
    names = ("batch_size", "width_mult", "warmup", "repeats", "steps", "workers", "device")
    shared = [str(part) for name in names for part in (f"--{name}", getattr(args, name))]
    shared += ["--precision", precision]
    shared += ["--contiguous"] if args.contiguous else []
    command = [sys.executable, "-m", "benchmarks.training", "--contestant", contestant, *shared]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"The {contestant} training benchmark failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "contestant": contestant if precision == "32-true" else f"{contestant}_bf16"}


def infer(args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
        result = inference.main(
            [
                "--width_mult",
                str(args.width_mult),
                "--batch_sizes",
                *map(str, args.inference_batch_sizes),
                "--seconds",
                str(args.inference_seconds),
                "--min_iterations",
                str(args.repeats),
                "--json",
                str(Path(workdir) / "inference.json"),
            ]  # fmt: skip
        )
    return result["results"]


def report(result: dict) -> None:
    """The table, as the README shows it."""
    m, s = result["machine"], result["settings"]
    bf16 = "unknown" if m["cpu_bf16"] is None else " and ".join(m["cpu_bf16"]) or "none, emulated"
    print(f"\n{m['cpu']} (bf16: {bf16}), {m['cpus']} CPUs, torch {m['torch']}, device {m['device']}, ", end="")
    print(f"load average {m['load_average_1min']:.1f}")
    print(f"Training: α = {s['width_mult']:g}, batch {s['batch_size']}, Adam, cross-entropy, `seed` augmentation, "
          f"median of {s['repeats']} × {s['steps']} steps")  # fmt: skip
    print(f"  {'':<56}{'images/s':>10}{'peak MB':>10}")
    for row in result["training"]:
        print(f"  {LABELS[row['contestant']]:<56}{row['images_per_second']:>10.1f}{row['peak_memory_mb']:>10.0f}")
    ratios = result["ratios"]
    print(f"  b/a = {ratios['lightning_over_reference']:.2f}   b/c = {ratios['lightning_over_raw']:.2f}   "
          f"d/b (bf16-mixed / 32-true) = {ratios['bf16_over_32_fit']:.2f}")  # fmt: skip
    aug = result["augmentation"]
    print("Input pipeline alone, `seed` augmentation, one thread (images/s)")
    print(f"  per-image PIL {aug['pil_per_image']['images_per_second']:>10.0f}")
    print(f"  batched       {aug['batched_tensors']['images_per_second']:>10.0f}"
          f"   ({ratios['batched_over_pil_augmentation']:.1f} ×)")  # fmt: skip
    latency, bulk = s["inference_batch_sizes"]
    print(f"Inference: {'runtime':<20}{f'batch {bulk} img/s':>14}{f'batch {latency} ms':>14}")
    for runtime in inference.RUNTIMES:
        rows = {r["batch_size"]: r["images_per_second"] for r in result["inference"] if r["runtime"] == runtime}
        if rows[bulk] is None:
            print(f"           {runtime:<20}{'n/a':>14}{'n/a':>14}")
            continue
        print(f"           {runtime:<20}{rows[bulk]:>14.0f}{1000 * latency / rows[latency]:>14.2f}")
    print(f"  onnxruntime / eager at batch {bulk} = {ratios['onnxruntime_over_eager_inference']:.2f}   "
          f"bf16 / fp32 channels-last = {ratios['bf16_over_32_inference']:.2f}   "
          f"int8 / float32 ONNX Runtime = {ratios['int8_over_float_onnxruntime']:.2f}")  # fmt: skip


def main(argv=None) -> dict:
    args = parse_args(argv)
    training = []
    for contestant in CONTESTANTS:
        print(f"Training: {LABELS[contestant]} ...", file=sys.stderr)
        training.append(train(contestant, args))
    print(f"Training: {LABELS['lightning_bf16']} ...", file=sys.stderr)
    training.append(train("lightning", args, precision="bf16-mixed"))
    print("Augmentation alone ...", file=sys.stderr)
    augmentation = augmentation_speeds(args.augment_images, args.batch_size, args.repeats)
    print("Inference ...", file=sys.stderr)
    inferred = infer(args)
    speed = {row["contestant"]: row["images_per_second"] for row in training}
    bulk = {r["runtime"]: r["images_per_second"] for r in inferred if r["batch_size"] == args.inference_batch_sizes[1]}
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": machine(args.device),
        "training": training,
        "augmentation": augmentation,
        "inference": inferred,
        "ratios": {
            "lightning_over_reference": speed["lightning"] / speed["reference"],
            "lightning_over_raw": speed["lightning"] / speed["raw"],
            "bf16_over_32_fit": speed["lightning_bf16"] / speed["lightning"],
            "bf16_over_32_inference": bulk["channels_last_bf16"] / bulk["channels_last"],
            "int8_over_float_onnxruntime": bulk["onnxruntime_int8"] / bulk["onnxruntime"],
            "batched_over_pil_augmentation": augmentation["batched_tensors"]["images_per_second"]
            / augmentation["pil_per_image"]["images_per_second"],
            "onnxruntime_over_eager_inference": bulk["onnxruntime"] / bulk["eager"],
        },
    }
    report(result)
    inference.write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
