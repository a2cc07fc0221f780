"""Tiny CIFAR-10/100 datasets written in the official python on-disk format (pickled dicts + meta file).

Each class gets its own mean colour plus noise, so that a few training steps can tell classes apart.
"""

import pickle
import tarfile
from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def fake_images(num_images: int, num_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """(N, 3072) uint8 rows in CIFAR's channel-planar layout, and their labels."""
    labels = np.arange(num_images) % num_classes
    rng.shuffle(labels)
    colours = np.random.default_rng(1234).integers(30, 225, size=(num_classes, 3, 1, 1))
    noise = rng.normal(0, 25, size=(num_images, 3, 32, 32))
    images = np.clip(colours[labels] + noise, 0, 255).astype(np.uint8)
    return images.reshape(num_images, 3072), labels.tolist()


def dump(path: Path, entry: dict) -> None:
    with open(path, "wb") as file:
        pickle.dump(entry, file)


def write_cifar10(data_dir: Path, per_batch: int = 20, test_images: int = 30, seed: int = 0) -> Path:
    """data_dir/cifar-10-batches-py/ with data_batch_1..5, test_batch and batches.meta; returns data_dir."""
    rng = np.random.default_rng(seed)
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        data, labels = fake_images(per_batch, 10, rng)
        dump(
            folder / f"data_batch_{i}",
            {
                "batch_label": f"training batch {i} of 5",
                "labels": labels,
                "data": data,
                "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)],
            },
        )
    data, labels = fake_images(test_images, 10, rng)
    dump(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": labels,
            "data": data,
            "filenames": [f"test_{j}.png" for j in range(test_images)],
        },
    )
    dump(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072})
    return data_dir


def write_cifar100(data_dir: Path, train_images: int = 200, test_images: int = 100, seed: int = 0) -> Path:
    """data_dir/cifar-100-python/ with train, test and meta; returns data_dir."""
    rng = np.random.default_rng(seed)
    folder = data_dir / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", train_images), ("test", test_images)):
        data, labels = fake_images(count, 100, rng)
        dump(
            folder / name,
            {
                "data": data,
                "fine_labels": labels,
                "coarse_labels": [x // 5 for x in labels],
                "filenames": [f"{name}_{j}.png" for j in range(count)],
            },
        )
    dump(
        folder / "meta",
        {
            "fine_label_names": [f"class_{i:02d}" for i in range(100)],
            "coarse_label_names": [f"super_{i:02d}" for i in range(20)],
        },
    )
    return data_dir


def write_archive(extracted_dir: Path, folder_name: str, archive: Path) -> Path:
    """Pack data_dir/<folder_name>/ into a .tar.gz the way the official archive is laid out."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(extracted_dir / folder_name, arcname=folder_name)
    return archive


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-data")
    write_cifar10(target)
    print(f"Wrote a 100 + 30 image CIFAR-10 look-alike to {target}/cifar-10-batches-py (use --data.verify false)")
