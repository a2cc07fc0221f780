"""``mobilenet classify``: the top classes of image files under a trained model, as text, JSON or a picture."""

import json
import sys
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from mobilenet.commands.checkpoint_policy import settle_model
from mobilenet.commands.parser import command_parser, parse
from mobilenet.data.images import find_images, read_image
from mobilenet.deploy.artifacts import with_network
from mobilenet.deploy.classifier import BACKENDS, open_classifier
from mobilenet.errors import UsageError
from mobilenet.files import check_writable, printable
from mobilenet.progress import progress

# Files read and classified together; bounds memory for a folder of any size.
CHUNK = 64
# The --grid picture shows at most this many images (8 × 8); a larger folder would make illegible tiles.
GRID_MAX = 64
THUMBNAIL = 96  # pixels per side of each image in the --grid picture


def parse_arguments(argv: list[str]):
    parser = command_parser(
        "classify",
        "Classify image files (PNG, JPEG, BMP, WebP; RGB, RGBA, greyscale or palette; any size) with a trained "
        "model: the shipped one when neither --ckpt_path nor a run (--config, --run_name) is given. Each image is "
        "turned upright (EXIF), centre-cropped, resized to the model's resolution and normalised as in training.",
        uses=("run",),
    )
    parser.add_argument("images", nargs="+", help="image files, or folders searched for image files")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto (default): ONNX Runtime for an exported .onnx file, PyTorch for everything else",
    )
    parser.add_argument("--topk", type=int, default=3, help="classes to show per image (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument(
        "--grid", type=Optional[str], default=None, help="also write a picture (OUT.png) of the images and top classes"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: cuda if any")
    args, given = parse(parser, argv)
    if args.topk < 1:
        raise UsageError(f"--topk must be at least 1, got {args.topk}.")
    if args.grid and Path(args.grid).suffix.lower() != ".png":
        raise UsageError(f"--grid writes a PNG picture; give a file name ending in .png, not '{args.grid}'.")
    if args.grid:
        check_writable(Path(args.grid).parent)
    return args, given


def top_classes(probabilities: torch.Tensor, class_names: list[str], k: int) -> list[list[dict]]:
    values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [
        [{"class": class_names[i], "index": i, "probability": round(p, 4)} for p, i in zip(row_p, row_i, strict=True)]
        for row_p, row_i in zip(values.tolist(), indices.tolist(), strict=True)
    ]


def as_text(path: Path, top: list[dict]) -> str:
    return f"{printable(str(path))}: " + ", ".join(f"{entry['class']} {entry['probability']:.1%}" for entry in top)


def main(argv: list[str]) -> int:
    args, given = parse_arguments(argv)
    source = settle_model(args, "classify", given)
    classifier = open_classifier(with_network(source.artifact), args.backend, args.device)
    class_names, resolution = classifier.class_names, classifier.resolution
    files = find_images(args.images)
    results: list[dict] = []
    thumbnails: list[tuple[torch.Tensor, str]] = []
    failed = 0
    bar = progress(total=len(files), desc="Classifying", unit="images", disable=len(files) <= CHUNK, file=sys.stderr)
    for start in range(0, len(files), CHUNK):
        readable: list[tuple[Path, torch.Tensor]] = []
        for path in files[start : start + CHUNK]:
            try:
                readable.append((path, read_image(path, resolution)))
            except UsageError as err:  # one bad file must not cost the answers for the others
                failed += 1
                tqdm.write(f"mobilenet: error: {err}", file=sys.stderr)
                results.append({"file": str(path), "error": str(err)})
        if readable:
            batch = torch.stack([image for _, image in readable])
            for (path, _), top in zip(
                readable, top_classes(classifier.probabilities(batch), class_names, args.topk), strict=True
            ):
                results.append({"file": str(path), "top": top})
                if not args.json:
                    # Above the progress bar when there is one, and in order with the error lines on stderr.
                    tqdm.write(as_text(path, top), file=sys.stdout)
                    sys.stdout.flush()
                if args.grid and len(thumbnails) < GRID_MAX:
                    title = f"{path.name[:18]}\n{top[0]['class']} {top[0]['probability']:.0%}"
                    thumbnails.append((read_image(path, THUMBNAIL), title))
        bar.update(len(files[start : start + CHUNK]))
    bar.close()
    if args.json:
        print(json.dumps({"checkpoint": str(source.checkpoint), "results": results}, indent=2))
    if args.grid and thumbnails:
        from mobilenet import plots  # matplotlib is only imported when a picture is asked for

        images, titles = zip(*thumbnails, strict=True)
        shown = f" (the first {GRID_MAX} of {len(files)})" if len(files) - failed > GRID_MAX else ""
        figure = plots.image_grid(images, titles, columns=min(8, len(images)), title=f"Top class{shown}")
        print(f"Wrote {plots.save(figure, args.grid)}", file=sys.stderr)
    if failed:
        print(
            f"mobilenet: {failed} of {len(files)} files could not be read; the others were classified.", file=sys.stderr
        )
    return 1 if failed else 0
