"""Image files read into uint8 RGB tensors the way a classifier expects them, whatever their format and mode."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from mobilenet.errors import UsageError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
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
            if (path.is_dir())
            else []
        )
        found.extend(inside or [path])
    return found


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


def read_image(path: Path) -> torch.Tensor:
    """uint8 (3, H, W), upright; a missing, truncated, oversized or non-image file raises ``UsageError`` naming it.

    Pillow's guard against decompression bombs stays on: an image of more than about 179 million pixels (twice
    ``Image.MAX_IMAGE_PIXELS``) is refused before it is decoded.
    """
    if path.is_dir():
        raise UsageError(f"The folder '{path}' holds no {', '.join(EXTENSIONS)} files.")
    if path.exists() and not path.is_file():  # a FIFO, a socket or a device would block or never end
        raise UsageError(f"'{path}' is not a regular file (a pipe, socket or device), so it is not read as an image.")
    try:
        with Image.open(path) as image:
            image.load()  # decodes now: a truncated file fails here, not later
            return TF.pil_to_tensor(to_rgb(upright(image)))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        reason = "no such file" if isinstance(err, FileNotFoundError) else f"{type(err).__name__}: {err}"
        raise UsageError(f"'{path}' could not be read as an image ({reason}).") from err


def fit_to(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """Centre-crop (3, H, W) to a square and resize it to resolution × resolution (antialiased bilinear).

    Training on image folders prepares every image this way (mobilenet/data/image_files.py), so a photo of
    another shape is classified as the network saw such photos: undistorted, its centre kept.
    """
    side = min(image.shape[-2:])
    if image.shape[-2:] != (side, side):
        image = TF.center_crop(image, [side, side])
    if side == resolution:
        return image
    return TF.resize(image, [resolution, resolution], antialias=True)
