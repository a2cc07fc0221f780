"""`mobilenet export`: a checkpoint as ONNX, TorchScript or a plain state_dict, verified against PyTorch.

ONNX and TorchScript exports have BatchNorm folded into the convolutions (``mobilenet.folding``) and a
dynamic batch axis; each is run on random inputs and compared with the checkpoint's network in PyTorch
before it replaces any earlier file (largest absolute logit difference printed, at most ``PARITY_LIMIT``).
The state_dict is the unfolded ``MobileNetV1``'s, for ``MobileNetV1(**model).load_state_dict``. Every
export gets a sidecar ``<file>.json`` with the model arguments, class names, input resolution and normalisation;
ONNX files carry the same JSON in their metadata too.
"""

import argparse
import json
import os
from pathlib import Path
from typing import Callable

import torch

from mobilenet.backends import (
    ONNX_METADATA_KEY,
    OnnxRuntimeClassifier,
    load_checkpoint_network,
    require,
    sidecar_path,
    torchscript_deprecation_silenced,
)
from mobilenet.errors import UsageError
from mobilenet.folding import fold_batchnorm
from mobilenet.model import MobileNetV1

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "state_dict": ".pth"}
PARITY_LIMIT = 1e-4  # largest absolute logit difference accepted; float32 rounding gives about 1e-6
PARITY_BATCHES = (1, 8)  # two batch sizes, so that the dynamic batch axis is exercised
ONNX_OPSET = 18


def random_batches(resolution: int, seed: int = 0) -> list[torch.Tensor]:
    """Inputs in the normalised range the network sees (roughly N(0, 1) per pixel)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, resolution, resolution, generator=generator) for n in PARITY_BATCHES]


def max_logit_difference(reference: torch.nn.Module, candidate: Callable, resolution: int) -> float:
    with torch.inference_mode():
        return max((reference(batch) - candidate(batch)).abs().max().item() for batch in random_batches(resolution))


def export_onnx(net: torch.nn.Module, metadata: dict, path: Path) -> None:
    onnx = require("onnx")
    resolution = metadata["resolution"]
    example = torch.zeros(2, 3, resolution, resolution)
    # The torch.export-based ("dynamo") exporter, torch's default since 2.9: the TorchScript-based one is
    # deprecated and warns. MobileNetV1 has no data-dependent control flow, so torch.export captures it whole;
    # it takes about 8 s on 2 CPU cores against 2 s for the old exporter.
    program = torch.onnx.export(
        net,
        (example,),
        dynamo=True,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
        opset_version=ONNX_OPSET,
        verbose=False,
    )
    model = program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(metadata)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def export_torchscript(net: torch.nn.Module, metadata: dict, path: Path) -> None:
    example = torch.zeros(2, 3, metadata["resolution"], metadata["resolution"])
    with torchscript_deprecation_silenced(), torch.no_grad():
        traced = torch.jit.trace(net, example)
        torch.jit.save(traced, str(path), _extra_files={"mobilenet.json": json.dumps(metadata)})


def export(ckpt_path: str, fmt: str, output: Path, fold: bool = True) -> list[str]:
    """Write ``output`` (and its ``.json`` sidecar) from the checkpoint; returns the lines to report.

    The file is written under a temporary name and only renamed to ``output`` once it has passed the parity
    check, so a failed export never replaces a good earlier one.
    """
    if fmt == "onnx":  # before any work, so that a missing package is the first thing said
        require("onnx"), require("onnxscript"), require("onnxruntime")
    net, metadata = load_checkpoint_network(ckpt_path)
    metadata = {**metadata, "format": fmt, "batchnorm_folded": fold and fmt != "state_dict"}
    metadata["input"] = (
        "float32 images (N, 3, resolution, resolution), RGB scaled to [0, 1], then (x - mean) / std per channel"
    )
    resolution = metadata["resolution"]
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    report = []
    try:
        if fmt == "state_dict":
            torch.save(net.state_dict(), partial)
            reloaded = MobileNetV1(**metadata["model"]).eval()
            reloaded.load_state_dict(torch.load(partial, weights_only=True))
            candidate, label = reloaded, "state_dict reloaded into MobileNetV1"
        else:
            exported = fold_batchnorm(net) if fold else net
            if fold:
                folded_diff = max_logit_difference(net, exported, resolution)
                report.append(f"BatchNorm folded into the convolutions: max |Δlogit| = {folded_diff:.2e}")
            if fmt == "onnx":
                export_onnx(exported, metadata, partial)
                candidate, label = OnnxRuntimeClassifier(partial).forward, "ONNX Runtime vs PyTorch"
            else:
                export_torchscript(exported, metadata, partial)
                with torchscript_deprecation_silenced():
                    candidate, label = torch.jit.load(str(partial)), "TorchScript vs PyTorch"
        difference = max_logit_difference(net, candidate, resolution)
        sizes = " and ".join(map(str, PARITY_BATCHES))
        report.append(f"{label}: max |Δlogit| = {difference:.2e} on random batches of {sizes} (limit {PARITY_LIMIT:g})")
        if not difference <= PARITY_LIMIT:
            raise UsageError(
                f"The {fmt} export of '{ckpt_path}' does not compute the checkpoint's function: its logits differ "
                f"by up to {difference:.2e} (limit {PARITY_LIMIT:g}). Nothing was written; please report this."
            )
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    sidecar_path(output).write_text(json.dumps(metadata, indent=2) + "\n")
    report.append(f"Wrote {output} ({output.stat().st_size / 1e6:.1f} MB) and {sidecar_path(output)}.")
    return report


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mobilenet export",
        description="Export a checkpoint's network for inference outside this project, checked against PyTorch.",
    )
    parser.add_argument("--ckpt_path", required=True, help="a .ckpt written by `mobilenet fit` or `import-tutorial`")
    parser.add_argument("--format", required=True, choices=tuple(FORMATS), help="what to write")
    parser.add_argument(
        "--output",
        help="file to write (default: the checkpoint's path with .onnx / .pt / .pth); FILE.json goes next to it",
    )
    parser.add_argument(
        "--no_fold", action="store_true", help="keep BatchNorm layers separate (ONNX and TorchScript only)"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    output = Path(args.output) if args.output else Path(args.ckpt_path).with_suffix(FORMATS[args.format])
    for line in export(args.ckpt_path, args.format, output, fold=not args.no_fold):
        print(line)
    return 0
