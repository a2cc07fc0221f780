"""Tiny image-folder datasets (``train/<class>/*``, ``test/<class>/*``) in every format and mode users have.

Each class has its own colour plus noise, so a few training steps can tell the classes apart.
"""

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["bird", "cat", "dog"]
COLOURS = {"bird": (200, 40, 40), "cat": (40, 200, 40), "dog": (40, 40, 200)}
FORMATS = ("jpg", "png", "bmp", "webp")


def noisy(colour: tuple[int, int, int], rng: np.random.Generator, size: int = 32) -> Image.Image:
    pixels = np.clip(np.array(colour) + rng.normal(0, 20, size=(size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def write_split(split_dir: Path, per_class: int, seed: int) -> int:
    """``per_class`` RGB images per class, cycling through JPEG, PNG, BMP and WebP; returns the count."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (split_dir / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noisy(COLOURS[name], rng).save(split_dir / name / f"{i:04d}.{FORMATS[i % len(FORMATS)]}")
    return per_class * len(CLASSES)


def write_image_folder(root: Path, per_class: int = 30, test_per_class: int = 5) -> Path:
    """``root/train`` with ``per_class`` images per class plus one greyscale, one RGBA and one palette image
    in ``cat/``; ``root/test`` with ``test_per_class`` per class. Returns ``root``."""
    write_split(root / "train", per_class, seed=0)
    cat = root / "train" / "cat"
    Image.new("L", (32, 32), 128).save(cat / "grey.png")
    Image.new("RGBA", (32, 32), (40, 200, 40, 255)).save(cat / "rgba.png")
    noisy(COLOURS["cat"], np.random.default_rng(1)).convert("P").save(cat / "palette.gif.png")
    write_split(root / "test", test_per_class, seed=1)
    return root


def add_broken_files(split_dir: Path) -> list[str]:
    """A truncated JPEG and a text file named .png in ``dog/``; returns their names relative to the split."""
    source = split_dir / "dog" / "0000.jpg"
    (split_dir / "dog" / "truncated.jpg").write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    (split_dir / "dog" / "notes.png").write_text("not an image")
    return ["dog/truncated.jpg", "dog/notes.png"]


if __name__ == "__main__":  # python tests/fake_images.py DIR: a folder to try the commands on
    import sys

    print(write_image_folder(Path(sys.argv[1])))
