"""CPU inference speed of MobileNetV1 in one run: eager PyTorch (two memory orders), BatchNorm-folded,
torch.compile, TorchScript and ONNX Runtime.

    python -m benchmarks.inference                                   # α = 1, 32×32, batches of 1 and 256
    python -m benchmarks.inference --width_mult 1 0.75 0.5 0.25      # the README's table

Each runtime gets the same random, already normalised float32 batches (preprocessing is not timed) and the
same number of threads. A measurement is warm-up calls followed by as many timed calls as fit in
``--seconds`` (at least ``--min_iterations``); images/s is images processed over the time they took.
Prints a table and writes every figure with the machine's description to ``--json``.
"""

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from mobilenet import MobileNetV1
from mobilenet.commands.summary import count_costs
from mobilenet.deploy.artifacts import torchscript_deprecation_silenced
from mobilenet.deploy.folding import fold_batchnorm

RUNTIMES = (
    "eager", "channels_last", "channels_last_bf16", "bn_folded", "compiled", "torchscript", "onnxruntime",
    "onnxruntime_int8",
)  # fmt: skip


def prepare(width_mult: float, resolution: int, num_classes: int, threads: int, workdir: Path) -> dict[str, Callable]:
    """{runtime: function of a float32 batch} for one network, every runtime computing the same function."""
    net = MobileNetV1(num_classes=num_classes, width_mult=width_mult).eval()
    folded = fold_batchnorm(net)
    example = torch.zeros(2, 3, resolution, resolution)
    with torchscript_deprecation_silenced(), torch.no_grad():
        scripted = torch.jit.freeze(torch.jit.trace(folded, example))

    import onnxruntime as ort

    path = workdir / f"mobilenet-{width_mult:g}.onnx"
    torch.onnx.export(
        folded,
        (example,),
        str(path),
        dynamo=True,  # as mobilenet export does
        input_names=["images"],
        dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    int8 = quantized(path, resolution)
    session_int8 = ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])

    def on_torch(
        module: Callable, memory_format: torch.memory_format = torch.contiguous_format, bf16: bool = False
    ) -> Callable:
        def run(batch: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return module(batch.contiguous(memory_format=memory_format))  # the reorder is part of the cost

        return run

    channels_last = copy.deepcopy(net).to(memory_format=torch.channels_last)
    # One compiled graph per batch size (dynamic=False), made during the warm-up calls; needs a C++ compiler.
    compiled = torch.compile(copy.deepcopy(channels_last), dynamic=False)
    return {
        "eager": on_torch(net),
        "channels_last": on_torch(channels_last, torch.channels_last),
        # bf16 autocast, as `--trainer.precision bf16-mixed` runs validate/test (emulated on CPUs without bf16)
        "channels_last_bf16": on_torch(channels_last, torch.channels_last, bf16=True),
        "bn_folded": on_torch(folded),
        "compiled": on_torch(compiled, torch.channels_last),
        "torchscript": on_torch(scripted),
        "onnxruntime": lambda batch: session.run(None, {"images": batch.numpy()})[0],
        "onnxruntime_int8": lambda batch: session_int8.run(None, {"images": batch.numpy()})[0],
    }


def quantized(path: Path, resolution: int) -> Path:
    """``path`` quantised to int8 as ``mobilenet export --quantize int8`` does it (QDQ, per-channel weights),
    calibrated on random inputs: the speed does not depend on the ranges it measures."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Random(CalibrationDataReader):
        def __init__(self) -> None:
            generator = torch.Generator().manual_seed(0)
            self.batches = iter(
                [{"images": torch.randn(8, 3, resolution, resolution, generator=generator).numpy()} for _ in range(4)]
            )

        def get_next(self):
            return next(self.batches, None)

    prepared, output = path.with_suffix(".prepared.onnx"), path.with_suffix(".int8.onnx")
    quant_pre_process(str(path), str(prepared))
    quantize_static(
        str(prepared), str(output), Random(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    return output


def images_per_second(run: Callable, batch: torch.Tensor, seconds: float, min_iterations: int, warmup: int) -> float:
    for _ in range(warmup):
        run(batch)
    iterations, start = 0, time.perf_counter()
    while iterations < min_iterations or time.perf_counter() - start < seconds:
        run(batch)
        iterations += 1
    return iterations * len(batch) / (time.perf_counter() - start)


def measure(runtime: str, run: Callable, batch: torch.Tensor, args: argparse.Namespace, unavailable: dict):
    """images/s, or None (with the reason in ``unavailable``) where torch.compile cannot build on this platform."""
    try:
        return images_per_second(run, batch, args.seconds, args.min_iterations, args.warmup)
    except Exception as error:  # torch.compile needs a C++ compiler on the CPU; every other runtime must work
        if runtime != "compiled":
            raise
        unavailable[runtime] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
        return None


def format_speed(images_per_second: float | None) -> str:
    return "n/a" if images_per_second is None else f"{images_per_second:,.0f}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference", description=__doc__.splitlines()[0])
    parser.add_argument("--width_mult", type=float, nargs="+", default=[1.0], help="α values (default 1)")
    parser.add_argument("--resolution", type=int, default=32, help="input side (default 32, CIFAR)")
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement (default 3)")
    parser.add_argument("--min_iterations", type=int, default=3)
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed calls first (TorchScript optimises, torch.compile builds)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="for every runtime")
    parser.add_argument("--json", default="benchmarks/results/inference.json", help="where to write the figures")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    batches = {n: torch.randn(n, 3, args.resolution, args.resolution, generator=generator) for n in args.batch_sizes}
    rows, unavailable = [], {}
    progress = tqdm(total=len(args.width_mult) * len(RUNTIMES) * len(batches), desc="measuring", unit="run")
    with tempfile.TemporaryDirectory() as workdir:
        for width_mult in args.width_mult:
            runtimes = prepare(width_mult, args.resolution, args.num_classes, args.threads, Path(workdir))
            costs = count_costs(MobileNetV1(num_classes=args.num_classes, width_mult=width_mult), args.resolution)
            for runtime, run in runtimes.items():
                for size, batch in batches.items():
                    speed = measure(runtime, run, batch, args, unavailable)
                    rows.append(
                        {
                            "width_mult": width_mult,
                            "mult_adds_millions": sum(c.mult_adds for c in costs) / 1e6,
                            "weights_millions": sum(c.weights for c in costs) / 1e6,
                            "runtime": runtime,
                            "batch_size": size,
                            "images_per_second": speed,
                        }
                    )
                    progress.update()
    progress.close()

    sizes = args.batch_sizes
    header = f"{'α':>5} {'M mult-adds':>12} {'M params':>9} {'runtime':<12}" + "".join(
        f"{f'batch {n} img/s':>17}" for n in sizes
    )
    load = os.getloadavg()[0]  # other processes' work skews every figure; threads > free cores most of all
    print(
        f"\nCPU inference, {args.resolution}×{args.resolution} input, {args.num_classes} classes, "
        f"{args.threads} threads ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load:.1f} at the end)"
    )
    print(header)
    for width_mult in args.width_mult:
        for runtime in RUNTIMES:
            row = {r["batch_size"]: r for r in rows if r["width_mult"] == width_mult and r["runtime"] == runtime}
            speeds = "".join(f"{format_speed(row[n]['images_per_second']):>17}" for n in sizes)
            first = row[sizes[0]]
            print(
                f"{width_mult:>5g} {first['mult_adds_millions']:>12.2f} {first['weights_millions']:>9.3f} "
                f"{runtime:<12}{speeds}"
            )
    for runtime, reason in unavailable.items():
        print(f"{runtime} did not run here: {reason}")
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1min": load,
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "results": rows,
        "unavailable": unavailable,
    }
    write_json(result, args.json)
    return result


def write_json(result: dict, path: str) -> None:
    """The benchmark's figures as JSON, creating the folder (the benchmarks' shared way to save them)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {path}.")


if __name__ == "__main__":
    main()
