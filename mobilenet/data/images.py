"""Image files read into uint8 RGB tensors the way a classifier expects them, whatever their format and mode."""

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from mobilenet.errors import UsageError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# What Pillow raises for a file it cannot decode (truncated, not an image, too large).
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
# Transparent pixels are shown on white, as an image viewer would show them.
BACKGROUND = (255, 255, 255)


def find_images(paths: list[str]) -> list[Path]:
    """Files named directly (whatever their extension), plus the image files inside named folders, in order.

    A path that does not exist, or a folder without image files, is kept, so that ``read_image`` reports it
    with the unreadable files rather than dropping it or stopping the others.
    """
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        inside = (
            sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
            if path.is_dir() and readable_folder(path)
            else []
        )
        found.extend(inside or [path])
    return found


def readable_folder(path: Path) -> bool:
    """Whether the folder's entries can be listed and opened: a folder without that permission looks empty to a
    directory walk, and would be reported as holding no images."""
    return os.access(path, os.R_OK | os.X_OK)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, RGBA, greyscale (8 or 16 bit), palette (with or without transparency), CMYK → 8-bit RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit greyscale: scale to 8 bits
        values = np.asarray(image, dtype=np.float32)
        # 16-bit modes are 16-bit data, however dark the image; for 32-bit "I"/"F" the values decide.
        full_scale = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        return Image.fromarray(np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8), "L").convert(
            "RGB"
        )
    if image.mode in ("RGBA", "LA", "PA") or (image.mode in ("P", "L", "RGB") and "transparency" in image.info):
        background = Image.new("RGBA", image.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def upright(image: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: a camera's EXIF orientation tag applied (a portrait photo is stored
    sideways with tag 6 or 8), as image viewers do."""
    return ImageOps.exif_transpose(image)


def read_image(path: Path, resolution: Optional[int] = None) -> torch.Tensor:
    """uint8 (3, H, W), upright, or (3, resolution, resolution) prepared as for the network (``decode``); a
    missing, truncated, oversized or non-image file raises ``UsageError`` naming it."""
    if path.is_dir() and not readable_folder(path):
        raise UsageError(f"The folder '{path}' cannot be read (permission denied), so its images were not found.")
    if path.is_dir():
        raise UsageError(f"The folder '{path}' holds no {', '.join(EXTENSIONS)} files.")
    if path.exists() and not path.is_file():  # a FIFO, a socket or a device would block or never end
        raise UsageError(f"'{path}' is not a regular file (a pipe, socket or device), so it is not read as an image.")
    try:
        return decode(path, resolution)
    except DECODE_ERRORS as err:
        reason = "no such file" if isinstance(err, FileNotFoundError) else f"{type(err).__name__}: {err}"
        raise UsageError(f"'{path}' could not be read as an image ({reason}).") from err


def decode(path: Path, resolution: Optional[int] = None) -> torch.Tensor:
    """The one image decoder, for training on folders, ``classify`` and calibration alike: uint8 RGB.

    A photo's EXIF orientation is applied (``upright``); greyscale, 16-bit, palette and CMYK images become 8-bit
    RGB and transparent pixels are composited onto white (``to_rgb``). With ``resolution``, a JPEG far larger
    than that is decoded at a reduced scale and the image is centre-cropped to a square and resized
    (``fit_to``), so an image is prepared the same way wherever it is read. Pillow's guard against
    decompression bombs stays on: an image of more than about 179 million pixels (twice
    ``Image.MAX_IMAGE_PIXELS``) is refused before it is decoded.
    """
    with Image.open(path) as image:
        if resolution:
            image.draft("RGB", (resolution, resolution))
        image.load()  # decodes now: a truncated file fails here, not later
        pixels = TF.pil_to_tensor(to_rgb(upright(image)))
    return fit_to(pixels, resolution).contiguous() if resolution else pixels


def fit_to(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """Centre-crop (3, H, W) to a square and resize it to resolution × resolution (antialiased bilinear).

    Every image is prepared this way (``decode``), so a photo of another shape is classified as the network saw
    such photos in training: undistorted, its centre kept.
    """
    side = min(image.shape[-2:])
    if image.shape[-2:] != (side, side):
        image = TF.center_crop(image, [side, side])
    if side == resolution:
        return image
    return TF.resize(image, [resolution, resolution], antialias=True)
