"""Images in class folders (``<split>/<class>/*.jpg``) decoded once into a uint8 tensor, cached on disk.

The cache file is named by a hash of the folder's content (each file's path, size and modification time)
and the resolution, so a second run loads one tensor file in seconds and any change to the folder (a file
added, removed, replaced or touched) makes a new one (docs/performance.md has the time it saves).
"""

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import torch

from mobilenet.data.images import DECODE_ERRORS, EXTENSIONS, decode
from mobilenet.errors import UsageError
from mobilenet.files import atomic_write
from mobilenet.progress import progress

# Bump when the decoded pixels would change for the same files (resampling, colour handling, orientation).
CACHE_FORMAT = 2


def class_folders(split_dir: Path) -> list[str]:
    """Class names: the split folder's sub-folders, sorted (torchvision's ``ImageFolder`` convention)."""
    return sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def list_images(split_dir: Path, class_names: list[str]) -> tuple[list[Path], list[int]]:
    """Image files (by suffix, any case) and their class indices, in a fixed order."""
    files, labels = [], []
    for label, name in enumerate(class_names):
        folder = split_dir / name
        if not folder.is_dir():
            continue
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
        files += found
        labels += [label] * len(found)
    return files, labels


def content_key(split_dir: Path, files: list[Path], resolution: int) -> str:
    """A hash of what the decoded tensor depends on: every file's relative path, size and mtime, the resolution."""
    digest = hashlib.blake2b(f"format={CACHE_FORMAT} resolution={resolution}".encode(), digest_size=16)
    for path in files:
        stat = path.stat()
        digest.update(f"\n{path.relative_to(split_dir).as_posix()} {stat.st_size} {stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def try_load(path: Path, resolution: int) -> tuple[Optional[torch.Tensor], str]:
    """The decoded image, or None and the reason it could not be read (truncated, not an image, ...)."""
    try:
        return decode(path, resolution), ""
    except DECODE_ERRORS as err:
        return None, f"{type(err).__name__}: {err}"


def decode_images(
    files: list[Path], labels: list[int], resolution: int, description: str
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[Path, str]]]:
    """(images uint8 (N, 3, R, R), labels int64 (N,), [(unreadable file, reason)]) with a progress bar.

    Pillow releases the GIL while decoding, so threads use every core without copying images between processes.
    """
    images = torch.empty(len(files), 3, resolution, resolution, dtype=torch.uint8)
    kept, skipped = [], []
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        results = pool.map(lambda path: try_load(path, resolution), files, chunksize=64)
        for i, (image, reason) in enumerate(progress(results, total=len(files), desc=description, unit="images")):
            if image is None:
                skipped.append((files[i], reason))
            else:
                images[len(kept)] = image
                kept.append(labels[i])
    return images[: len(kept)].clone(), torch.tensor(kept, dtype=torch.int64), skipped


def warn_skipped(split_dir: Path, skipped: list[tuple[str, str]], total: int) -> None:
    if not skipped:
        return
    shown = "; ".join(f"{name} ({reason})" for name, reason in skipped[:10])
    more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    warnings.warn(
        f"Skipped {len(skipped)} of {total} files in '{split_dir}' that could not be read as images: {shown}{more}. "
        f"Training uses the other {total - len(skipped)}; fix or remove these files to include or silence them.",
        stacklevel=2,
    )


def read_image_split(
    split_dir: Path, class_names: list[str], resolution: int, cache_dir: Optional[Path]
) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of one split as (uint8 images, labels), from the cache when the folder is unchanged."""
    files, labels = list_images(split_dir, class_names)
    if not files:
        raise UsageError(
            f"'{split_dir}' has no images ({', '.join(EXTENSIONS)}) in its class folders. Put each class's "
            f"images in {split_dir}/<class name>/."
        )
    key = content_key(split_dir, files, resolution)
    cache_file = cache_dir / f"{split_dir.name}-{resolution}px-{key}.pt" if cache_dir else None
    cached = read_cache(cache_file) if cache_file and cache_file.is_file() else None
    if cached is not None:
        warn_skipped(split_dir, cached["skipped"], len(files))
        return cached["images"], cached["labels"]
    images, kept_labels, skipped = decode_images(files, labels, resolution, f"Decoding {split_dir}")
    named = [(path.relative_to(split_dir).as_posix(), reason) for path, reason in skipped]
    warn_skipped(split_dir, named, len(files))
    if not len(kept_labels):
        raise UsageError(f"None of the {len(files)} files in '{split_dir}' could be read as an image.")
    if cache_file:
        write_cache(cache_file, {"images": images, "labels": kept_labels, "skipped": named})
    return images, kept_labels


def read_cache(cache_file: Path) -> Optional[dict]:
    """The cached split, or None (with a warning) when the file is damaged: it is then decoded and written anew."""
    try:
        cached = torch.load(cache_file, weights_only=True)
        if not isinstance(cached, dict) or len(cached["images"]) != len(cached["labels"]):
            raise ValueError("images and labels do not match")
        return cached
    except Exception as err:  # truncated by a full disk or a killed copy, or garbled: decode again
        warnings.warn(
            f"The image cache '{cache_file}' is damaged ({type(err).__name__}); decoding the images again.",
            stacklevel=2,
        )
        return None


def write_cache(cache_file: Path, content: dict) -> None:
    """Write atomically (a partial file is never read back) and drop this split's caches of older content."""
    try:
        with atomic_write(cache_file) as file:
            torch.save(content, file)
    except OSError as err:
        warnings.warn(
            f"Could not cache the decoded images in '{cache_file.parent}' ({err}); the next run decodes "
            f"them again. Point --data.cache_dir at a writable folder to keep them.",
            stacklevel=2,
        )
        return
    prefix = cache_file.name.rsplit("-", 1)[0]
    for stale in cache_file.parent.glob(f"{prefix}-*.pt"):
        if stale != cache_file:
            stale.unlink(missing_ok=True)
