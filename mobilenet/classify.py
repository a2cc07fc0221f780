"""``mobilenet classify``: the top classes of image files under a trained checkpoint, as text, JSON or a picture."""

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from mobilenet.errors import UsageError
from mobilenet.images import find_images, fit_to, read_image
from mobilenet.inference import Classifier

# Files read and classified together; bounds memory for a folder of any size.
CHUNK = 64
# The --grid picture shows at most this many images (8 × 8); a larger folder would make illegible tiles.
GRID_MAX = 64
THUMBNAIL = 96  # pixels per side of each image in the --grid picture


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mobilenet classify",
        description="Classify image files (PNG, JPEG, BMP, WebP; RGB, RGBA, greyscale or palette; any size) with a "
        "trained checkpoint. Each image is resized to the checkpoint's resolution and normalised as in training.",
    )
    parser.add_argument("images", nargs="+", help="image files, or folders searched for image files")
    parser.add_argument(
        "--ckpt_path", required=True, help="checkpoint written by `mobilenet fit`, or a file `mobilenet export` wrote"
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "onnxruntime"),
        default="auto",
        help="auto (default): ONNX Runtime for an exported .onnx file, PyTorch for everything else",
    )
    parser.add_argument("--topk", type=int, default=3, help="classes to show per image (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--grid", metavar="OUT.png", help="also write a picture of the images with their top class")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: cuda if any")
    args = parser.parse_args(argv)
    if args.topk < 1:
        raise UsageError(f"--topk must be at least 1, got {args.topk}.")
    if args.grid and Path(args.grid).suffix.lower() != ".png":
        raise UsageError(f"--grid writes a PNG picture; give a file name ending in .png, not '{args.grid}'.")
    return args


def top_classes(probabilities: torch.Tensor, class_names: list[str], k: int) -> list[list[dict]]:
    values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [
        [{"class": class_names[i], "index": i, "probability": round(p, 4)} for p, i in zip(row_p, row_i, strict=True)]
        for row_p, row_i in zip(values.tolist(), indices.tolist(), strict=True)
    ]


def as_text(path: Path, top: list[dict]) -> str:
    return f"{path}: " + ", ".join(f"{entry['class']} {entry['probability']:.1%}" for entry in top)


def open_classifier(path: str, backend: str, device: str) -> tuple[list[str], int, Callable]:
    """(class names, resolution, uint8 images → probabilities) of a checkpoint, or of an export (backends.py)."""
    if Path(path).suffix.lower() == ".ckpt" and backend != "onnxruntime":
        classifier = Classifier.from_checkpoint(path, device)
        return classifier.class_names, classifier.resolution, classifier.probabilities
    from mobilenet.backends import load_classifier  # onnxruntime is imported only when asked for

    exported = load_classifier(path, backend)
    return exported.class_names, exported.resolution, lambda images: exported.logits(images).softmax(dim=1)


def main(argv: list[str]) -> int:
    args = parse(argv)
    class_names, resolution, probabilities_of = open_classifier(args.ckpt_path, args.backend, args.device)
    files = find_images(args.images)
    results: list[dict] = []
    thumbnails: list[tuple[torch.Tensor, str]] = []
    failed = 0
    progress = tqdm(total=len(files), desc="Classifying", unit="image", disable=len(files) <= CHUNK, file=sys.stderr)
    for start in range(0, len(files), CHUNK):
        readable: list[tuple[Path, torch.Tensor]] = []
        for path in files[start : start + CHUNK]:
            try:
                readable.append((path, read_image(path)))
            except UsageError as err:  # one bad file must not cost the answers for the others
                failed += 1
                tqdm.write(f"mobilenet: error: {err}", file=sys.stderr)
                results.append({"file": str(path), "error": str(err)})
        if readable:
            batch = torch.stack([fit_to(image, resolution) for _, image in readable])
            for (path, image), top in zip(
                readable, top_classes(probabilities_of(batch), class_names, args.topk), strict=True
            ):
                results.append({"file": str(path), "top": top})
                if not args.json:
                    # Above the progress bar when there is one, and in order with the error lines on stderr.
                    tqdm.write(as_text(path, top), file=sys.stdout)
                    sys.stdout.flush()
                if args.grid and len(thumbnails) < GRID_MAX:
                    title = f"{path.name[:18]}\n{top[0]['class']} {top[0]['probability']:.0%}"
                    thumbnails.append((fit_to(image, THUMBNAIL), title))
        progress.update(len(files[start : start + CHUNK]))
    progress.close()
    if args.json:
        print(json.dumps({"checkpoint": str(args.ckpt_path), "results": results}, indent=2))
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
