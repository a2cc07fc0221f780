"""Int8 ONNX: static quantisation with per-channel weights, calibrated on real images through the record's own
preprocessing, and checked against float32 on images the calibration did not see.

ONNX Runtime's ``quantize_static`` in the QDQ format: int8 weights quantised per output channel (per-tensor
scales collapse MobileNet's accuracy: its depthwise filters' ranges differ widely from channel to channel) and
uint8 activations whose ranges are measured on the calibration images. The file carries the record, with
``export.quantization`` saying how it was made and what it agreed with float32.
"""

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mobilenet.deploy.artifacts import Artifact, load, require, sidecar_path
from mobilenet.deploy.export import check_output, check_suffix, export
from mobilenet.errors import UsageError
from mobilenet.files import atomic_write, write_text
from mobilenet.record import METADATA_KEY, Metadata

MIN_CALIBRATION_IMAGES = 32
BATCH = 32


def split_calibration(images: torch.Tensor, count: int, check: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images to calibrate on and up to ``check`` others to check with, drawn without overlap."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images[order[:count]], images[order[count : count + check]]


def quantize_int8(
    source: Artifact, output: Path, images: torch.Tensor, described: str, count: int, check: int = 1000,
    overwrite: bool = False,
) -> list[str]:  # fmt: skip
    """Write ``source`` as an int8 ONNX file calibrated on ``count`` of ``images`` (uint8, N × 3 × H × W); the
    rest (up to ``check``) measure top-1 agreement with float32. ``described`` names the images in the record."""
    check_output(output, source.path, overwrite, ".onnx")
    check_suffix(output, "onnx")
    if count < MIN_CALIBRATION_IMAGES:
        raise UsageError(
            f"--calibration_images {count} is too few: int8 calibration needs at least {MIN_CALIBRATION_IMAGES} "
            f"images (1,000 is the default). Nothing was written."
        )
    if len(images) < count + 1:
        raise UsageError(
            f"{described} holds {len(images)} images: {count} are needed to calibrate and at least one more to "
            f"check the result. Give more images, or fewer with --calibration_images. Nothing was written."
        )
    require("onnx"), require("onnxruntime")
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from mobilenet.deploy.classifier import Classifier

    preprocess = Classifier(source.metadata).preprocess
    calibration, checking = split_calibration(images, count, check)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = (
                {"images": preprocess(calibration[i : i + BATCH]).numpy()} for i in range(0, len(calibration), BATCH)
            )

        def get_next(self):
            return next(self.batches, None)

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".quantize-", dir=output.parent))
    try:
        float_file, prepared, quantized = staging / "float.onnx", staging / "prepared.onnx", staging / "int8.onnx"
        lines = export(source, "onnx", float_file)[:-1]  # the float32 export, checked against PyTorch
        quant_pre_process(str(float_file), str(prepared))
        quantize_static(
            str(prepared), str(quantized), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip
        agreement = top1_agreement(ort, float_file, quantized, preprocess, checking)
        float_bytes = float_file.stat().st_size
        record = {
            "dtype": "int8",
            "method": "onnxruntime quantize_static, QDQ, per-channel int8 weights, uint8 activations",
            "calibration": described,
            "calibration_images": len(calibration),
            "top1_agreement_with_float32": round(agreement, 4),
            "checked_on_images": len(checking),
        }
        exported = load(float_file, with_network=False).metadata  # the float32 export's record: folded, source
        metadata: Metadata = replace(exported, export={**exported.export, "dtype": "int8", "quantization": record})
        model = onnx.load(str(quantized))
        del model.metadata_props[:]
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, metadata.to_json()
        with atomic_write(output, replace=overwrite) as file:
            file.write(model.SerializeToString())
        write_text(sidecar_path(output), metadata.to_json() + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = output.stat().st_size
    return [
        *lines,
        f"Calibrated on {len(calibration)} images from {described}; top-1 agreement with float32 on "
        f"{len(checking)} other images: {agreement:.2%}.",
        f"Wrote {output} ({size / 1e6:.1f} MB, int8: {size / float_bytes:.0%} of the float32 file) and its record "
        f"{sidecar_path(output)}.",
    ]


def top1_agreement(ort, float_file: Path, quantized: Path, preprocess, images: torch.Tensor) -> float:
    """The share of ``images`` on which the two ONNX models give the same top class."""

    def top1(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate(
            [
                session.run(None, {"images": preprocess(images[i : i + 256]).numpy()})[0].argmax(1)
                for i in range(0, len(images), 256)
            ]
        )

    return float((top1(float_file) == top1(quantized)).mean())
