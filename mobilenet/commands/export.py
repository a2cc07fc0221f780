"""``mobilenet export``: a checkpoint's network as ONNX, TorchScript, a state_dict or safetensors, each checked
against PyTorch before it is written (``mobilenet.deploy.export``)."""

from pathlib import Path
from typing import Optional

from mobilenet.commands.grammar import command_parser, parse, settle_model
from mobilenet.deploy.artifacts import with_network
from mobilenet.deploy.export import FORMATS, export


def main(argv: list[str]) -> int:
    parser = command_parser(
        "export",
        "Export a checkpoint's network for inference outside this project (ONNX Runtime, libtorch, plain "
        "PyTorch), checked against PyTorch; every file carries the class names, resolution and normalisation.",
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
    config, given = parse(parser, argv)
    source = settle_model(config, "export", given)
    output = Path(config.output) if config.output else source.checkpoint.with_suffix(FORMATS[config.format])
    if not output.suffix and not output.is_dir():  # `--output model`: the format's own suffix is added
        output = output.with_name(output.name + FORMATS[config.format])
    lines = export(
        with_network(source.artifact), config.format, output, fold=not config.no_fold, half=config.half,
        overwrite=config.overwrite,
    )  # fmt: skip
    for line in lines:
        print(line)
    return 0
