"""Batched image augmentation on the training device, one random draw per image.

Each op takes float images (N, C, H, W) in [0, 1] plus per-image parameters (N,) and reproduces the
matching ``torchvision.transforms.v2.functional`` op applied image by image (``tests/test_augment.py`` holds
them side by side). A whole batch costs a few kernel launches instead of N × (PIL decode + transform) in
worker processes. The per-image parameters are drawn on the host (a CPU ``torch.Generator``), where a few
hundred numbers cost microseconds, and reach the images' device in one asynchronous copy.

Presets (``PRESETS``):
    seed      the reference tutorial: horizontal flip, rotation ±10°, affine shear ±10° and scale 0.8-1.2,
              colour jitter (brightness, contrast, saturation 0.2). Nearest-neighbour resampling and zero
              fill, torchvision's defaults, as the tutorial used them.
    standard  random 32×32 crop of the image padded by 4 pixels, then horizontal flip.
    cutout    ``standard``, then one 16×16 square (half the side) at a uniformly random centre, clipped at the
              border, set to the mean colour the images are normalised with (CIFAR-10's by default), so zero
              after normalisation (DeVries & Taylor, 2017).
    none      nothing.
"""

from functools import partial
from typing import Callable, Literal

import torch
import torch.nn.functional as F

Preset = Literal["seed", "standard", "cutout", "none"]
PRESETS: tuple[str, ...] = ("seed", "standard", "cutout", "none")

# Per-channel mean and standard deviation of the CIFAR-10 training images (RGB, [0, 1] scale): the default
# normalisation of every DataModule here.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# Largest input side accepted: MobileNetV1 at α = 1 needs about 4 MB of activations per 32×32 image in training,
# growing with the square of the side, so 1024×1024 batches of 128 would need terabytes.
MAX_RESOLUTION = 1024

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale uses them.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """n draws from U(low, high) on the generator's device."""
    return torch.rand(n, generator=generator, device=generator.device) * (high - low) + low


def per_image(values: torch.Tensor) -> torch.Tensor:
    """Shape (N,) parameters as (N, 1, 1, 1) so that they broadcast over images."""
    return values.view(-1, 1, 1, 1)


def horizontal_flip(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the images where ``flip`` (bool, (N,)) is true."""
    return torch.where(per_image(flip), images.flip(-1), images)


def inverse_affine(
    angle: torch.Tensor, scale: torch.Tensor, shear_x: torch.Tensor, shear_y: torch.Tensor
) -> torch.Tensor:
    """(N, 2, 2) maps from output to input pixel offsets about the image centre (angles in degrees).

    Same matrix as torchvision's ``_get_inverse_affine_matrix`` without translation: the inverse of
    rotation · scale · shear_y · shear_x.
    """
    rot, sx, sy = torch.deg2rad(angle), torch.deg2rad(shear_x), torch.deg2rad(shear_y)
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    # det([[a, b], [c, d]]) == 1, so the inverse is the adjugate divided by the scale.
    return torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) / scale.view(-1, 1, 1)


def warp(images: torch.Tensor, inverse: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """Resample each image through its (2, 2) inverse map about the centre; outside pixels become 0.

    Mirrors torchvision's ``_affine_grid`` + ``grid_sample(align_corners=False)`` so that the sampled
    positions, and hence nearest-neighbour picks, are the same.
    """
    n, _, height, width = images.shape
    device, dtype = images.device, images.dtype
    xs = torch.linspace((1 - width) / 2, (width - 1) / 2, width, device=device, dtype=dtype)
    ys = torch.linspace((1 - height) / 2, (height - 1) / 2, height, device=device, dtype=dtype)
    offsets = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).view(1, height * width, 2)
    # Pixel offsets → grid_sample's [-1, 1] coordinates, folded into the (N, 2, 2) map as torchvision does.
    # (Python numbers, not a new tensor: copying one to a GPU would make the host wait for the device.)
    to_unit = inverse.to(dtype).transpose(1, 2)
    to_unit = torch.stack([to_unit[..., 0] / (width / 2), to_unit[..., 1] / (height / 2)], -1)
    grid = offsets @ to_unit  # (N, H*W, 2) input positions
    return F.grid_sample(images, grid.view(n, height, width, 2), mode=mode, padding_mode="zeros", align_corners=False)


def rotation_inverse(angle: torch.Tensor) -> torch.Tensor:
    """Inverse map of ``v2.functional.rotate(angle)`` (counter-clockwise degrees, so affine's angle is -angle)."""
    zeros = torch.zeros_like(angle)
    return inverse_affine(-angle, torch.ones_like(angle), zeros, zeros)


def rgb_to_gray(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma, torchvision's formula (weights as Python numbers: no tensor to copy to the device)."""
    red, green, blue = images.unbind(1)
    return (GRAY_WEIGHTS[0] * red + GRAY_WEIGHTS[1] * green + GRAY_WEIGHTS[2] * blue).unsqueeze(1)


def blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor · images + (1 - factor) · other, clamped to [0, 1], as torchvision's ``_blend``."""
    factor = per_image(factor)
    return torch.addcmul((1 - factor) * other, factor, images).clamp_(0, 1)  # one pass over the full images


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(images, torch.zeros_like(images), factor)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(images, rgb_to_gray(images).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(images, rgb_to_gray(images), factor)


# ColorJitter's ops by index, as ``colour_jitter``'s factors and orders number them.
BRIGHTNESS, CONTRAST, SATURATION = range(3)


def jitter_weights(factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """(N, 3 slots, 3) blend weights of ``colour_jitter``, computed where the random draws are (the host).

    Slot k of image i applies op ``order[i, k]`` with factor f. All three ops are the blend
    ``f · image + (1 - f) · other`` and differ only in ``other``: black (brightness), the image's mean grey
    (contrast) or its per-pixel grey (saturation). So each slot is ``a · image + b · mean grey + c · grey``
    with (a, b, c) = (f, 0, 0), (f, 1 - f, 0) or (f, 0, 1 - f).
    """
    op = order.unsqueeze(-1)  # (N, 3, 1)
    factor = factors.gather(1, order).unsqueeze(-1)
    return torch.cat([factor, (1 - factor) * (op == CONTRAST), (1 - factor) * (op == SATURATION)], -1)


def apply_jitter(images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The three slots of ``jitter_weights`` on the device: a few whole-batch kernels per slot, each image's
    chosen op weighted in (cheaper than running all three ops in every slot; docs/performance.md)."""
    for slot in range(weights.shape[1]):
        own, mean_part, gray_part = (per_image(w) for w in weights[:, slot].unbind(-1))
        gray = rgb_to_gray(images)
        other = torch.addcmul(mean_part * gray.mean(dim=(1, 2, 3), keepdim=True), gray_part, gray)
        images = torch.addcmul(other, own, images).clamp_(0, 1)
    return images


def colour_jitter(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation with factors (N, 3), applied in a per-image order (N, 3), as
    torchvision's ColorJitter, which shuffles its ops for every image."""
    return apply_jitter(images, to_device(jitter_weights(factors, order), images.device))


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host → device without making the host wait: through page-locked memory, asynchronously.

    (A plain copy from ordinary memory to a GPU waits for the work queued before it.)
    """
    if values.device == device:
        return values
    if device.type == "cuda":
        values = values.pin_memory()
    return values.to(device, non_blocking=True)


def crop_with_padding(images: torch.Tensor, padding: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Zero-pad by ``padding`` on every side, then cut an H×W window at (top, left) of the padded image.

    ``top`` and ``left`` (N,) lie in [0, 2 · padding]; this is RandomCrop(size, padding) with given offsets.
    """
    n, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = top.view(n, 1) + torch.arange(height, device=images.device)  # (N, H)
    cols = left.view(n, 1) + torch.arange(width, device=images.device)  # (N, W)
    batch = torch.arange(n, device=images.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows.view(n, height, 1), cols.view(n, 1, width)].permute(0, 3, 1, 2)


def seed_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The reference tutorial's augmentation; rotation and shear/scale resample once, in the tutorial's order.

    The per-image parameters are drawn and turned into matrices and blend weights on the generator's device
    (the host; a few hundred numbers), then reach the images' device in one copy. The images' device then runs
    about 45 operations per batch instead of about 140; on a GPU each costs the host a kernel launch.
    """
    n = images.shape[0]
    flip = uniform(n, 0, 1, generator) < 0.5
    zeros = torch.zeros(n, device=generator.device)
    rotation = rotation_inverse(uniform(n, -10, 10, generator))
    shear_scale = inverse_affine(zeros, uniform(n, 0.8, 1.2, generator), uniform(n, -10, 10, generator), zeros)
    factors = uniform(3 * n, 0.8, 1.2, generator).view(n, 3)
    order = torch.rand(n, 3, generator=generator, device=generator.device).argsort(dim=1)
    # The tutorial rotates first, then shears: output(p) = input(R⁻¹ · A⁻¹ · p).
    packed = torch.cat(
        [flip.float().view(n, 1), (rotation @ shear_scale).view(n, 4), jitter_weights(factors, order).view(n, 9)], 1
    )
    packed = to_device(packed, images.device)
    images = horizontal_flip(images, packed[:, 0] > 0.5)
    images = warp(images, packed[:, 1:5].view(n, 2, 2), mode="nearest")
    return apply_jitter(images, packed[:, 5:].view(n, 3, 3))


def standard_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with padding (4 pixels at 32×32, the same fraction at other sizes), then horizontal flip."""
    n, _, height, _ = images.shape
    padding = max(1, round(height / 8))
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=generator.device)
    flip = uniform(n, 0, 1, generator) < 0.5
    packed = to_device(torch.cat([offsets, flip.long().view(1, n)]), images.device)
    images = crop_with_padding(images, padding, packed[0], packed[1])
    return horizontal_flip(images, packed[2].bool())


def cut_out(images: torch.Tensor, size: int, top: torch.Tensor, left: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Set the square of side ``size`` whose top-left corner is (top, left) (per image, (N,); may lie
    outside the image, the square is clipped) to ``fill`` ((1, C, 1, 1))."""
    height, width = images.shape[-2:]
    rows = torch.arange(height, device=images.device).view(1, height, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, width)
    top, left = top.view(-1, 1, 1), left.view(-1, 1, 1)
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return torch.where(inside.unsqueeze(1), fill, images)


def cutout_augment(
    images: torch.Tensor, generator: torch.Generator, mean: tuple[float, ...] = CIFAR10_MEAN
) -> torch.Tensor:
    """``standard``, then a square of half the image side centred anywhere in the image, set to ``mean``."""
    images = standard_augment(images, generator)
    n, _, height, width = images.shape
    size = max(1, height // 2)
    centres = torch.stack(
        [
            torch.randint(0, height, (n,), generator=generator, device=generator.device),
            torch.randint(0, width, (n,), generator=generator, device=generator.device),
        ]
    )
    corners = to_device(centres - size // 2, images.device)
    fill = per_channel(mean, images.device).to(images.dtype)
    return cut_out(images, size, corners[0], corners[1], fill)


def no_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return images


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "seed": seed_augment,
    "standard": standard_augment,
    "cutout": cutout_augment,
    "none": no_augment,
}


def resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear, antialiased resize to resolution × resolution (``v2.functional.resize`` on tensors)."""
    if images.shape[-2:] == (resolution, resolution):
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(images - mean) / std with per-channel (1, C, 1, 1) mean and std."""
    return (images - mean) / std


def per_channel(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """(1, C, 1, 1) float32 on ``device``, to broadcast over a batch."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1).to(device)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [0, 1]."""
    return images.float().div_(255)


class BatchTransform:
    """uint8 images on the device → (augmented when given a generator) → resized → normalised float32."""

    def __init__(self, augment: Preset, resolution: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.augment = AUGMENTATIONS[augment]
        if augment == "cutout":  # the square takes the colour that normalises to zero
            self.augment = partial(cutout_augment, mean=tuple(mean))
        self.resolution = resolution
        self.mean = mean
        self.std = std
        self._statistics: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def statistics(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as (1, C, 1, 1) float32 tensors on ``device``, made once per device, not per batch."""
        if device not in self._statistics:
            self._statistics[device] = per_channel(self.mean, device), per_channel(self.std, device)
        return self._statistics[device]

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        batch = to_unit_float(images)
        if generator is not None:
            batch = self.augment(batch, generator)
        return normalize(resize(batch, self.resolution), *self.statistics(batch.device))
