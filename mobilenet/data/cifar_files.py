"""Find, check (md5), download and read the official CIFAR-10/100 python archives into uint8 tensors.

URLs, file names and checksums come from torchvision's own CIFAR classes, so there is one source of truth.
A full read of CIFAR-10 is 60,000 × 3 × 32 × 32 bytes = 184 MB and takes about a second.
"""

import os
import pickle
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import check_integrity, download_url

from mobilenet.errors import UsageError


@dataclass(frozen=True)
class CifarSpec:
    title: str
    source: type  # torchvision class that carries base_folder, url, filename, tgz_md5, train_list, test_list, meta
    label_key: str
    num_classes: int

    @property
    def checksums(self) -> list[tuple[str, str]]:
        """(file name, md5) of every file in the extracted folder."""
        meta = self.source.meta
        return [(name, md5) for name, md5 in self.source.train_list + self.source.test_list] + [
            (meta["filename"], meta["md5"])
        ]

    def split_files(self, train: bool) -> list[str]:
        return [name for name, _ in (self.source.train_list if train else self.source.test_list)]


SPECS = {
    "cifar10": CifarSpec("CIFAR-10", CIFAR10, "labels", 10),
    "cifar100": CifarSpec("CIFAR-100", CIFAR100, "fine_labels", 100),
}
IMAGE_SHAPE = (3, 32, 32)


def not_found_message(spec: CifarSpec, root: Path, missing: list[str], reason: str) -> str:
    folder = root / spec.source.base_folder
    where = "is incomplete in" if folder.is_dir() else "is not in"
    return (
        f"{spec.title} {where} '{root}' and {reason}. Expected either the extracted folder '{folder}' "
        f"(missing: {', '.join(missing)}) or the official archive '{root / spec.source.filename}', "
        f"which you can download from {spec.source.url} on a machine with internet access and copy there. "
        f"To use data stored elsewhere, point --data.data_dir at the folder that holds it."
    )


def ensure_available(dataset: str, root: str | Path, download: bool = True, verify: bool = True) -> Path:
    """Return the extracted dataset folder, extracting or downloading the archive first when needed.

    Raises ``UsageError`` naming the expected files, the URL and ``--data.data_dir`` when the data is absent
    and cannot be downloaded, and naming the bad file when a checksum does not match.
    """
    spec = SPECS[dataset]
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UsageError(
            f"--data.data_dir '{root}' is a file, not a folder. Point it at the folder that holds (or should "
            f"receive) {spec.title}: the extracted '{spec.source.base_folder}' or the archive '{spec.source.filename}'."
        )
    folder = root / spec.source.base_folder
    missing = [name for name, _ in spec.checksums if not (folder / name).is_file()]
    if missing and root.is_dir() and not os.access(root, os.W_OK):
        raise UsageError(
            f"--data.data_dir '{root}' is not writable, and {spec.title} must be downloaded or extracted there "
            f"(missing: {', '.join(missing)}). Extract '{spec.source.filename}' there with write access once, or "
            f"point --data.data_dir at a writable folder."
        )
    if missing:
        archive = root / spec.source.filename
        archive_md5 = spec.source.tgz_md5 if verify else None
        if download and not check_integrity(archive, archive_md5):
            try:
                download_url(spec.source.url, root, spec.source.filename, md5=archive_md5)
            except Exception as err:  # URLError, socket timeouts, md5 mismatch: all end the same way
                raise UsageError(
                    not_found_message(spec, root, missing, f"could not be downloaded ({type(err).__name__}: {err})")
                ) from err
        if not archive.is_file():
            raise UsageError(not_found_message(spec, root, missing, "downloading is off (--data.download false)"))
        if not check_integrity(archive, archive_md5):
            raise UsageError(
                f"The archive '{archive}' does not match the official {spec.title} checksum (md5 "
                f"{spec.source.tgz_md5}); it is probably incomplete. Delete it and download it again from "
                f"{spec.source.url}, or pass --data.verify false if it is a copy you made yourself in the same format."
            )
        extract(archive, root, spec)
        missing = [name for name, _ in spec.checksums if not (folder / name).is_file()]
        if missing:
            raise UsageError(
                f"The archive '{archive}' did not contain {spec.source.base_folder}/{', '.join(missing)}: it is not "
                f"the official {spec.title} python archive. Download that one from {spec.source.url}."
            )
    if verify:
        corrupt = [name for name, md5 in spec.checksums if not check_integrity(folder / name, md5)]
        if corrupt:
            raise UsageError(
                f"{spec.title} files in '{folder}' do not match the official checksums: {', '.join(corrupt)}. "
                f"Delete the folder and let the project extract or download it again, or pass --data.verify false "
                f"if these are files you made yourself in the same format."
            )
    return folder


def extract(archive: Path, root: Path, spec: CifarSpec) -> None:
    """Unpack ``archive`` into a hidden folder next to the data first, and move its files into place only when
    the whole archive has been read: a damaged archive leaves no half-extracted dataset behind."""
    staging = root / f".extracting-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):  # refuse links and paths that lead outside the folder
                tar.extractall(staging, filter="data")
            else:
                tar.extractall(staging)
        unpacked = staging / spec.source.base_folder
        if unpacked.is_dir():
            target = root / spec.source.base_folder
            target.mkdir(exist_ok=True)
            for path in unpacked.iterdir():
                os.replace(path, target / path.name)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise UsageError(
            f"The archive '{archive}' could not be unpacked ({type(err).__name__}: {err}); it is damaged or "
            f"incomplete. Nothing was extracted. Download it again from {spec.source.url}."
        ) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# The only globals the official CIFAR pickles (and copies written the same way with numpy) refer to: numpy's
# array reconstruction and dtypes, and the codec that protocol-2 pickles use for bytes. Nothing else is loaded.
CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside ``CIFAR_GLOBALS``."""


class CifarUnpickler(pickle.Unpickler):
    """An unpickler of plain data: dicts, lists, strings, bytes, numbers and numpy arrays; any other global a file
    names (``os.system``, a class with a ``__reduce__``) is refused before it is imported, so no file runs code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in CIFAR_GLOBALS:
            raise RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def load_pickle(path: Path, spec: CifarSpec) -> dict:
    # latin1 reads the original Python 2 pickles with str keys, as torchvision does. CifarUnpickler reads data
    # only, so even an unverified file (--data.verify false) cannot run code.
    try:
        with open(path, "rb") as file:
            return CifarUnpickler(file, encoding="latin1").load()
    except RefusedGlobal as err:
        raise UsageError(
            f"'{path}' holds Python objects other than arrays, lists, dicts, strings and numbers ({err}); it is "
            f"not loaded, because unpickling such objects can run code. The official {spec.title} files never "
            f"contain them: replace it with the file from the official archive ({spec.source.url})."
        ) from err
    except Exception as err:  # EOFError when truncated, ValueError when garbled
        raise corrupt(path, spec, err) from err


def corrupt(path: Path, spec: CifarSpec, err: BaseException) -> UsageError:
    return UsageError(
        f"'{path}' could not be read ({type(err).__name__}: {err}): it is truncated or corrupt. Replace it with "
        f"the file from the official {spec.title} archive ({spec.source.url}), or delete '{path.parent}' so "
        f"that the archive is extracted again."
    )


def read_split(folder: Path, dataset: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of the training or the test split, checked: pixels are
    whole numbers in [0, 255], labels whole numbers in [0, classes), one label per image."""
    spec = SPECS[dataset]
    images, labels = [], []
    for name in spec.split_files(train):
        path = folder / name
        entry = load_pickle(path, spec)

        def bad(problem: str, path: Path = path) -> UsageError:
            return UsageError(
                f"'{path}' is not a {spec.title} batch: {problem}. Replace it with the file from the official archive "
                f"({spec.source.url}), or, for a copy you made yourself, write it in the same format."
            )

        if not isinstance(entry, dict) or "data" not in entry or spec.label_key not in entry:
            raise bad(f"expected a dict with 'data' and '{spec.label_key}'")
        data, label_list = np.asarray(entry["data"]), np.asarray(entry[spec.label_key])
        if data.dtype.kind not in "ui" or data.ndim != 2 or data.shape[1] != np.prod(IMAGE_SHAPE):
            raise bad(f"'data' must be whole numbers shaped (N, 3072), got {data.dtype} {data.shape}")
        if data.size and (data.min() < 0 or data.max() > 255):
            raise bad(f"pixel values must lie in [0, 255], found {data.min()} to {data.max()}")
        if label_list.dtype.kind not in "ui" or label_list.shape != (len(data),):
            raise bad(f"'{spec.label_key}' must be {len(data)} whole numbers, one per image, got {label_list.dtype} "
                      f"{label_list.shape}")  # fmt: skip
        if label_list.size and (label_list.min() < 0 or label_list.max() >= spec.num_classes):
            raise bad(f"labels must lie in [0, {spec.num_classes}), found {label_list.min()} to {label_list.max()}")
        images.append(torch.from_numpy(data.astype(np.uint8).reshape(-1, *IMAGE_SHAPE)))
        labels.append(torch.from_numpy(label_list.astype(np.int64)))
    return torch.cat(images), torch.cat(labels)


def read_class_names(folder: Path, dataset: str) -> list[str]:
    """The class names in the dataset's meta file, one per class."""
    spec = SPECS[dataset]
    meta = spec.source.meta
    path = folder / meta["filename"]
    entry = load_pickle(path, spec)
    names = entry.get(meta["key"]) if isinstance(entry, dict) else None
    if (
        not isinstance(names, (list, tuple))
        or len(names) != spec.num_classes
        or not all(isinstance(name, str) for name in names)
    ):
        raise UsageError(
            f"'{path}' does not hold the {spec.num_classes} class names of {spec.title} (a dict with '{meta['key']}': "
            f"a list of {spec.num_classes} strings). Replace it with the file from the official archive "
            f"({spec.source.url})."
        )
    return list(names)
