"""Where a training step's time goes, by layer kind and shape, in 32-bit floats and with bf16 autocast.

    python -m benchmarks.step_profile                     # α = 1, batch 128, channels-last, SGD (about 1 minute)
    python -m benchmarks.step_profile --precisions 32-true

The bare step (forward, loss, backward, optimiser step; no data loading) of MobileNetV1 on random CIFAR-sized
images, profiled with ``torch.profiler`` after warm-up steps. Each ATen kernel's own time is put in a row:
the 3×3 depthwise convolutions (by stride and input shape), the 1×1 pointwise convolutions (by input shape),
the stem convolution, BatchNorm, ReLU, the optimiser, the dtype casts of autocast, and the rest. Forward and
backward are separate rows. Times are milliseconds per step, summed over the layers of that kind. A 1×1
convolution that runs as a matrix multiply (``mobilenet.model.PointwiseConv2d`` under bf16 autocast) is
recognised by its operands' shapes and counted in the same rows as one that runs as a convolution.
"""

import argparse
import json
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from mobilenet import MobileNetV1
from mobilenet.training.precision import cpu_bf16, cpu_model

CONV = {"aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution", "aten::thnn_conv2d"}
NORM = {"aten::native_batch_norm", "aten::native_batch_norm_backward", "aten::_batch_norm_with_update"}
RELU = {"aten::clamp_min_", "aten::relu_", "aten::threshold_backward", "aten::relu"}
CASTS = {"aten::copy_", "aten::_to_copy", "aten::to"}


def conv_strides(net: torch.nn.Module, images: torch.Tensor) -> dict[tuple, int]:
    """{(input C, H, W, weight shape): stride} of every convolution, to name the rows."""
    strides, hooks = {}, []

    def record(module: torch.nn.Conv2d, inputs: tuple, _) -> None:
        strides[(*inputs[0].shape[1:], *module.weight.shape)] = module.stride[0]

    hooks = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        net(images[:2])
    for hook in hooks:
        hook.remove()
    return strides


def matmul_rows(strides: dict, batch_size: int) -> dict[tuple, tuple[str, str]]:
    """{(pass, shape of A, shape of B): (group, row)} for the matrix multiplies of 1×1 convolutions computed as one:
    forward (N·H·W, C_in) @ (C_in, C_out); backward (N·H·W, C_out) @ (C_out, C_in) and (C_out, N·H·W) @ (N·H·W, C_in).
    """
    rows = {}
    for (channels, height, width, c_out, c_in, kh, kw), stride in strides.items():
        if (kh, kw) != (1, 1) or height * width == 1:
            continue
        m = batch_size * height * width
        where = f"pointwise 1×1 {c_in}→{c_out} in {channels}×{height}×{width}, stride {stride}"
        rows[("forward", (m, c_in), (c_in, c_out))] = ("pointwise 1×1 forward", f"{where} (forward)")
        for shapes in (((m, c_out), (c_out, c_in)), ((c_out, m), (m, c_in))):
            rows[("backward", *shapes)] = ("pointwise 1×1 backward", f"{where} (backward)")
    return rows


def conv_kind(shapes: list, strides: dict) -> tuple[str, str]:
    """(kind, kind with shape) of a convolution kernel whose inputs start (image, weight, ...)."""
    image, weight = (shapes + [None, None])[:2]
    if not (isinstance(image, list) and len(image) == 4 and isinstance(weight, list) and len(weight) == 4):
        return "convolution", "convolution"
    stride = strides.get((*image[1:], *weight), "?")
    where = f"in {image[1]}×{image[2]}×{image[3]}, stride {stride}"
    if weight[1] == 1 and weight[2] == 3:
        return "depthwise 3×3", f"depthwise 3×3 {where}"
    if weight[2] == 1:
        return "pointwise 1×1", f"pointwise 1×1 {weight[1]}→{weight[0]} {where}"
    return "stem 3×3", f"stem 3×3 {where}"


def in_backward(event) -> bool:
    """Whether a profiled kernel ran inside autograd's backward pass (a kernel's name does not always say)."""
    while event is not None:
        if event.name.startswith("autograd::engine::evaluate_function"):
            return True
        event = event.cpu_parent
    return False


def row_of(name: str, shapes: list, strides: dict, matmuls: dict, backward: bool) -> tuple[str, str]:
    """(group, row) of one kernel: group is the layer kind, row adds the shape."""
    pass_ = "backward" if backward or "backward" in name else "forward"
    if name == "aten::mm" and len(shapes) == 2:
        found = matmuls.get((pass_, *(tuple(shape) for shape in shapes)))
        if found:
            return found
    if name in CONV:
        kind, detail = conv_kind(shapes if pass_ == "forward" else shapes[1:], strides)
        return f"{kind} {pass_}", f"{detail} ({pass_})"
    if name in NORM:
        return f"BatchNorm {pass_}", f"BatchNorm {pass_}"
    if name in RELU:
        return f"ReLU {pass_}", f"ReLU {pass_}"
    if name in CASTS:
        return "dtype casts and copies", "dtype casts and copies"
    if name.startswith("aten::_foreach") or name in ("aten::add_", "aten::mul_", "aten::addcmul_", "aten::lerp_"):
        return "optimiser", "optimiser"
    return "other", f"other: {name}"


def profile_step(precision: str, width_mult: float, batch_size: int, warmup: int, steps: int) -> dict:
    torch.manual_seed(0)
    net = MobileNetV1(10, width_mult).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    images = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch_size,))
    bf16 = precision == "bf16-mixed"
    strides = conv_strides(net, images)
    matmuls = matmul_rows(strides, batch_size)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(images), labels)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    groups: dict[str, float] = defaultdict(float)
    rows: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.self_cpu_time_total <= 0 or not event.name.startswith("aten::"):
            continue
        group, row = row_of(event.name, list(event.input_shapes or []), strides, matmuls, in_backward(event))
        milliseconds = event.self_cpu_time_total / 1000 / steps
        groups[group] += milliseconds
        rows[row] += milliseconds
    total = sum(groups.values())
    return {"precision": precision, "total_ms": total, "groups": dict(groups), "rows": dict(rows)}


def report(results: list[dict], top: int) -> None:
    names = [r["precision"] for r in results]
    print(f"{cpu_model()} (bf16: {' and '.join(cpu_bf16() or []) or 'none'}), {torch.get_num_threads()} threads")
    print(f"ms per step (profiled, own time of each kernel){'':<6}" + "".join(f"{n:>12}" for n in names), end="")
    print(f"{'ratio':>8}" if len(results) == 2 else "")

    def line(label: str, values: list[float]) -> None:
        ratio = f"{values[1] / values[0]:>8.2f}" if len(values) == 2 and values[0] > 0 else ""
        print(f"  {label:<58}" + "".join(f"{v:>12.1f}" for v in values) + ratio)

    for group in sorted({g for r in results for g in r["groups"]}, key=lambda g: -results[0]["groups"].get(g, 0)):
        line(group, [r["groups"].get(group, 0.0) for r in results])
    line("total", [r["total_ms"] for r in results])
    print(f"The {top} largest rows by layer and shape:")
    keys = sorted({k for r in results for k in r["rows"]}, key=lambda k: -max(r["rows"].get(k, 0) for r in results))
    for key in keys[:top]:
        line(key, [r["rows"].get(key, 0.0) for r in results])


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"], choices=["32-true", "bf16-mixed"])
    parser.add_argument("--width_mult", type=float, default=1.0)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=20, help="rows by layer and shape to print")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    results = [profile_step(p, args.width_mult, args.batch_size, args.warmup, args.steps) for p in args.precisions]
    report(results, args.top)
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"cpu": cpu_model(), "cpu_bf16": cpu_bf16(), "results": results}, file, indent=2)
    return results


if __name__ == "__main__":
    main()
