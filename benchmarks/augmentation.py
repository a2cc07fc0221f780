"""Speed of the ``seed`` augmentation alone on one thread: per-image PIL transforms versus batched tensors.

Both turn uint8 CIFAR images into augmented, normalised float32 tensors: the reference tutorial's
torchvision transforms one PIL image at a time, and this project's ``BatchTransform`` a whole batch at once.
"""

import time

import numpy as np
import torch
from PIL import Image

from benchmarks.training import reference_transform, synthetic_cifar
from mobilenet.data.augment import CIFAR10_MEAN, CIFAR10_STD, BatchTransform


def per_image_pil(images: torch.Tensor) -> None:
    transform = reference_transform()
    for image in images.permute(0, 2, 3, 1).numpy():
        transform(Image.fromarray(image))


def batched(images: torch.Tensor, batch_size: int) -> None:
    transform = BatchTransform("seed", images.shape[-1], CIFAR10_MEAN, CIFAR10_STD)
    generator = torch.Generator().manual_seed(0)
    for start in range(0, len(images), batch_size):
        transform(images[start : start + batch_size], generator)


def augmentation_speeds(num_images: int, batch_size: int, repeats: int) -> dict[str, dict]:
    """{"pil_per_image" | "batched_tensors": {"images_per_second": median, "repetitions": [...]}} on one thread."""
    images, _ = synthetic_cifar(num_images, seed=1)
    contestants = {"pil_per_image": per_image_pil, "batched_tensors": lambda x: batched(x, batch_size)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = {}
        for name, run in contestants.items():
            run(images[:batch_size])  # warm-up: first calls allocate and pick kernels
            speeds = []
            for _ in range(repeats):
                start = time.perf_counter()
                run(images)
                speeds.append(num_images / (time.perf_counter() - start))
            results[name] = {"images_per_second": float(np.median(speeds)), "repetitions": speeds}
        return results
    finally:
        torch.set_num_threads(threads)
