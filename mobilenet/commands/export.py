"""``mobilenet export``: a checkpoint's network as ONNX, TorchScript, a state_dict or safetensors, each checked
against PyTorch before it is written (``mobilenet.deploy.export``); ``--quantize int8`` writes int8 ONNX
calibrated on real images (``mobilenet.deploy.quantize``)."""

from pathlib import Path
from typing import Optional

import torch

from mobilenet.commands.checkpoint_policy import settle_model
from mobilenet.commands.parser import command_parser, parse
from mobilenet.commands.report import split_images
from mobilenet.data.images import find_images, read_image
from mobilenet.deploy.artifacts import with_network
from mobilenet.deploy.export import FORMATS, export
from mobilenet.deploy.quantize import quantize_int8
from mobilenet.errors import UsageError

CHECK_IMAGES = 1000  # images beside the calibration ones on which int8 is compared with float32


def main(argv: list[str]) -> int:
    parser = command_parser(
        "export",
        "Export a checkpoint's network for inference outside this project (ONNX Runtime, libtorch, plain "
        "PyTorch), checked against PyTorch; every file carries the class names, resolution and normalisation.",
        uses=("data", "run"),
    )
    parser.add_argument("--format", required=True, choices=tuple(FORMATS), help="what to write")
    parser.add_argument(
        "--output",
        type=Optional[str],
        default=None,
        help="file to write (default: the checkpoint's path with .onnx / .pt / .pth / .safetensors)",
    )
    parser.add_argument("--no_fold", action="store_true", help="keep BatchNorm separate (ONNX and TorchScript)")
    parser.add_argument("--half", action="store_true", help="float16 weights (safetensors and state_dict)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.add_argument(
        "--quantize", type=Optional[str], default=None, choices=[None, "int8"],
        help="int8: static quantisation (ONNX only), calibrated on real images",
    )  # fmt: skip
    parser.add_argument(
        "--calibration", type=Optional[str], default=None,
        help="a folder of images to calibrate int8 on (any layout); default: the training images of the data the "
        "checkpoint records",
    )  # fmt: skip
    parser.add_argument("--calibration_images", type=int, default=1000, help="images to calibrate on (default 1000)")
    config, given = parse(parser, argv)
    if config.quantize and config.format != "onnx":
        raise UsageError(f"--quantize int8 writes ONNX for ONNX Runtime; --format {config.format} cannot be quantised.")
    source = settle_model(config, "export", given)
    default = source.checkpoint.with_suffix(".int8.onnx" if config.quantize else FORMATS[config.format])
    output = Path(config.output) if config.output else default
    if not output.suffix and not output.is_dir():  # `--output model`: the format's own suffix is added
        output = output.with_name(output.name + FORMATS[config.format])
    if config.quantize:
        images, described = calibration_images(config, source.artifact.metadata.resolution)
        lines = quantize_int8(
            with_network(source.artifact), output, images, described, config.calibration_images,
            overwrite=config.overwrite,
        )  # fmt: skip
    else:
        lines = export(
            with_network(source.artifact), config.format, output, fold=not config.no_fold, half=config.half,
            overwrite=config.overwrite,
        )  # fmt: skip
    for line in lines:
        print(line)
    return 0


def calibration_images(config, resolution: int) -> tuple[torch.Tensor, str]:
    """uint8 images (N, 3, resolution, resolution) to calibrate and check int8 on, and how the record names them:
    ``--calibration DIR``, else the training split of the data the checkpoint records."""
    wanted = config.calibration_images + CHECK_IMAGES
    if config.calibration:
        folder = Path(config.calibration)
        if not folder.is_dir():
            raise UsageError(f"--calibration '{folder}' is not a folder of images. Nothing was written.")
        files = [path for path in find_images([str(folder)]) if path.is_file()]
        if not files:
            raise UsageError(f"--calibration '{folder}' holds no image files. Nothing was written.")
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0)).tolist()
        images = []
        for index in order[:wanted]:
            try:
                images.append(read_image(files[index], resolution))
            except UsageError:
                continue  # a broken file is not calibrated on
        if not images:
            raise UsageError(f"--calibration '{folder}': none of its image files could be read. Nothing was written.")
        return torch.stack(images), str(folder)
    data = config.data
    if not data or not data.get("class_path"):
        raise UsageError(
            "--quantize int8 needs images to calibrate on: pass --calibration DIR (a folder of images like the "
            "ones the model will see). Nothing was written."
        )
    images, _ = split_images(data, "train")
    return images, f"the training split of {data.class_path.rsplit('.', 1)[-1]}"
