"""A trained network written for use outside this project, each file checked against PyTorch before it lands.

Formats (each file carries the checkpoint's record, ``mobilenet.record.Metadata``, and has it as JSON
in ``<file>.json`` beside it as well, for consumers outside Python):
    onnx          BatchNorm folded into the convolutions, dynamic batch axis, record in ``metadata_props``
    torchscript   BatchNorm folded, record as the extra file ``mobilenet.json``
    state_dict    ``MobileNetV1(**network).load_state_dict``-ready
    safetensors   the same weights as state_dict (optionally float16), record in the file's metadata

Every export is written into a hidden folder beside its destination, read back through
``mobilenet.deploy.artifacts.load`` (the door every consumer uses), compared with the source network on random
inputs (largest absolute logit difference printed), and only then renamed into place: a failed export never
replaces a good earlier file.
"""

import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from mobilenet.deploy.artifacts import (
    TORCHSCRIPT_METADATA,
    Artifact,
    load,
    require,
    sidecar_path,
    torchscript_deprecation_silenced,
)
from mobilenet.deploy.folding import fold_batchnorm
from mobilenet.errors import UsageError
from mobilenet.files import atomic_write, check_writable, process_alive, publish, same_file, write_text
from mobilenet.record import METADATA_KEY, Metadata

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "state_dict": ".pth", "safetensors": ".safetensors"}
# Largest absolute logit difference accepted: float32 rounding gives about 1e-5; float16 weights about 1e-2.
PARITY_LIMIT = 1e-4
PARITY_LIMIT_HALF = 0.1
PARITY_BATCHES = (1, 8)  # two batch sizes, so that the dynamic batch axis is exercised
ONNX_OPSET = 18
INPUT = "float32 images (N, 3, resolution, resolution), RGB scaled to [0, 1], then (x - mean) / std per channel"


def random_batches(resolution: int, seed: int = 0) -> list[torch.Tensor]:
    """Inputs in the normalised range the network sees (roughly N(0, 1) per pixel)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, resolution, resolution, generator=generator) for n in PARITY_BATCHES]


def max_logit_difference(reference: torch.nn.Module, candidate: Callable, resolution: int) -> float:
    with torch.inference_mode():
        return max((reference(batch) - candidate(batch)).abs().max().item() for batch in random_batches(resolution))


def write_onnx(net: torch.nn.Module, metadata: Metadata, path: Path) -> None:
    onnx = require("onnx")
    example = torch.zeros(2, 3, metadata.resolution, metadata.resolution)
    # The torch.export-based ("dynamo") exporter, torch's default since 2.9: MobileNetV1 has no data-dependent
    # control flow, so torch.export captures it whole (seconds on a CPU).
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
    entry.key, entry.value = METADATA_KEY, metadata.to_json()
    onnx.checker.check_model(model, full_check=True)
    with atomic_write(path) as file:
        file.write(model.SerializeToString())


def write_torchscript(net: torch.nn.Module, metadata: Metadata, path: Path) -> None:
    example = torch.zeros(2, 3, metadata.resolution, metadata.resolution)
    with torchscript_deprecation_silenced(), torch.no_grad():
        traced = torch.jit.trace(net, example)
        with atomic_write(path) as file:
            torch.jit.save(traced, file, _extra_files={TORCHSCRIPT_METADATA: metadata.to_json()})


def write_state_dict(net: torch.nn.Module, metadata: Metadata, path: Path, half: bool = False) -> None:
    with atomic_write(path) as file:
        torch.save(weights_of(net, half), file)


def write_safetensors(net: torch.nn.Module, metadata: Metadata, path: Path, half: bool = False) -> None:
    from safetensors.torch import save

    data = save(weights_of(net, half), metadata={METADATA_KEY: json.dumps(metadata.to_dict())})
    with atomic_write(path) as file:
        file.write(data)


def weights_of(net: torch.nn.Module, half: bool) -> dict[str, torch.Tensor]:
    """The network's state_dict as contiguous CPU tensors; floating-point ones in float16 when ``half``."""
    return {
        key: (value.half() if half and value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in net.state_dict().items()
    }


def export(
    source: Artifact, fmt: str, output: Path, fold: bool = True, half: bool = False, overwrite: bool = False
) -> list[str]:
    """Write ``source``'s network as ``fmt`` to ``output``; returns the lines to report.

    Refuses an ``output`` that is the source file, and an existing ``output`` unless ``overwrite``.
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    if half and fmt not in ("safetensors", "state_dict"):
        raise UsageError("--half stores float16 weights; it applies to --format safetensors or state_dict only.")
    check_output(output, source.path, overwrite, FORMATS[fmt])
    check_suffix(output, fmt)
    if fmt == "onnx":  # before any work, so that a missing package is the first thing said
        require("onnx"), require("onnxscript"), require("onnxruntime")
    net = source.network
    if net is None or source.kind in ("onnx", "torchscript"):
        raise UsageError(
            f"'{source.path}' is an export ({source.kind}); export from the checkpoint or weights it was made from."
        )
    folded = fold and fmt in ("onnx", "torchscript")
    export_record = {
        "format": fmt,
        "batchnorm_folded": folded,
        "dtype": "float16" if half else "float32",
        "input": INPUT,
        "source": source.path.name,
    }
    metadata = replace(source.metadata, export=export_record)  # the source's record, checked when it was read
    report = []
    exported = fold_batchnorm(net) if folded else net
    if folded:
        folded_diff = max_logit_difference(net, exported, metadata.resolution)
        report.append(f"BatchNorm folded into the convolutions: max |Δlogit| = {folded_diff:.2e}")
    # Written into a hidden folder beside the output first: the parity check reads it back from there, and only
    # then do the file and its record take their names (a killed export's folder is removed by the next one).
    output.parent.mkdir(parents=True, exist_ok=True)
    for stale in output.parent.glob(".export-*"):
        if stale.is_dir() and not process_alive(stale.name.split("-")[1]):
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".export-{os.getpid()}-", dir=output.parent))
    staged = staging / output.name
    try:
        write_text(sidecar_path(staged), metadata.to_json() + "\n")
        if fmt == "onnx":
            write_onnx(exported, metadata, staged)
        elif fmt == "torchscript":
            write_torchscript(exported, metadata, staged)
        elif fmt == "state_dict":
            write_state_dict(exported, metadata, staged, half)
        else:
            write_safetensors(exported, metadata, staged, half)
        reloaded = load(staged)
        if reloaded.kind == "onnx":
            from mobilenet.deploy.classifier import OnnxRuntimeClassifier

            candidate, label = OnnxRuntimeClassifier(reloaded.session, reloaded.metadata).forward, "ONNX Runtime"
        else:
            candidate, label = reloaded.network, {"torchscript": "TorchScript"}.get(fmt, f"{fmt} reloaded")
        difference = max_logit_difference(net, candidate, metadata.resolution)
        limit = PARITY_LIMIT_HALF if half else PARITY_LIMIT
        sizes = " and ".join(map(str, PARITY_BATCHES))
        report.append(
            f"{label} vs PyTorch: max |Δlogit| = {difference:.2e} on random batches of {sizes} (limit {limit:g})"
        )
        if not difference <= limit:
            raise UsageError(
                f"The {fmt} export of '{source.path}' does not compute the checkpoint's function: its logits differ "
                f"by up to {difference:.2e} (limit {limit:g}). Nothing was written; please report this."
            )
        publish(staged, output, replace=overwrite)  # the file first: a second export to it is refused here
        os.replace(sidecar_path(staged), sidecar_path(output))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.append(f"Wrote {output} ({output.stat().st_size / 1e6:.1f} MB) and its record {sidecar_path(output)}.")
    return report


def check_suffix(output: Path, fmt: str) -> None:
    """Every reader tells a file's kind by its suffix first: an export must carry its format's own."""
    suffix = FORMATS[fmt]
    if output.suffix.lower() != suffix:
        others = {ending: name for name, ending in FORMATS.items()}
        said = f", the suffix of {others[output.suffix.lower()]} exports" if output.suffix.lower() in others else ""
        raise UsageError(
            f"--output '{output}' ends in '{output.suffix}'{said}, but --format {fmt} writes a {suffix} file, and "
            f"every reader tells a file's kind by its suffix. Name it {output.with_suffix(suffix).name}, or choose the "
            f"--format that suffix means. Nothing was written."
        )


def check_output(output: Path, source: Path, overwrite: bool, suffix: str = "") -> None:
    """Refuse to write over the source, over a folder, into a path whose parent is a file, or over an existing
    file without ``overwrite``."""
    if same_file(output, source):
        raise UsageError(
            f"--output '{output}' is the file being exported; exporting over it would destroy it. Choose another "
            f"--output."
        )
    if output.is_dir():
        raise UsageError(f"--output '{output}' is a folder; give a file name, e.g. {output / 'model'}{suffix}.")
    blocking = next((parent for parent in output.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise UsageError(f"--output '{output}' cannot be written: '{blocking}' is a file, not a folder.")
    if output.exists() and not overwrite:
        raise UsageError(f"'{output}' already exists and is kept. Choose another --output, or add --overwrite.")
    check_writable(output.parent)
