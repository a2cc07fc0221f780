"""Your own images as a LightningDataModule: ``root/train/<class>/*`` and optionally ``root/test/<class>/*``.

The same pipeline as CIFAR from the tensor on: a seeded validation split, whole-batch loaders, batched
augmentation on the device. ``mobilenet fit --data ImageFolderDataModule --data.root DIR``.
"""

import os
from pathlib import Path
from typing import Optional

import torch

from mobilenet.data.base import BatchedDataModule
from mobilenet.data.image_files import class_folders, read_image_split
from mobilenet.data.images import readable_folder
from mobilenet.data.sampling import TensorBatches
from mobilenet.errors import UsageError

CACHE_FOLDER = ".mobilenet-cache"


class ImageFolderDataModule(BatchedDataModule):
    """Images in class folders (JPEG, PNG, BMP, WebP), decoded once at ``resolution`` and cached. The other
    arguments are those of every DataModule here (``BatchedDataModule``); ``resolution`` is applied when the
    images are decoded: each is centre-cropped to a square and resized.

    Args:
        root: Folder with ``train/<class name>/*`` (required) and ``test/<class name>/*`` (optional, used by
            ``test`` and ``predict``). Class names are the ``train`` sub-folder names, sorted.
        cache_dir: Where the decoded uint8 tensors are kept (default: ``<root>/.mobilenet-cache``). A cache is
            reused while the folder's files (names, sizes, modification times) are unchanged.
    """

    def __init__(self, root: Optional[str] = None, cache_dir: Optional[str] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if root is None:  # optional here so that a checkpoint's record can fill it in (commands/checkpoint_policy.py)
            raise UsageError(
                "--data ImageFolderDataModule needs --data.root DIR: the folder with train/<class name>/ images."
            )
        self.save_hyperparameters()
        self.root = Path(root)
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / CACHE_FOLDER
        train_dir = self.root / "train"
        if not train_dir.is_dir():
            raise UsageError(
                f"'{train_dir}' is not a folder. --data.root must hold train/<class name>/ folders of images "
                f"(and optionally test/<class name>/), e.g. train/cat/0001.jpg."
            )
        self.class_names = class_folders(train_dir)
        unprintable = [os.fsencode(name) for name in self.class_names if not name.isprintable()]
        if unprintable:  # every file the run writes records the class names, and every command prints them
            raise UsageError(
                f"The class folder name(s) {', '.join(map(repr, unprintable[:3]))} in '{train_dir}' are not printable "
                f"UTF-8 text (bytes of another encoding, or control characters). Rename the folders (for Latin-1 "
                f"names, e.g. `convmv -f latin1 -t utf8 -r --notest {train_dir}`); nothing was read or written."
            )
        if len(self.class_names) < 2:
            found = f"only '{self.class_names[0]}'" if self.class_names else "none"
            raise UsageError(
                f"'{train_dir}' needs a folder per class, at least two (found {found}): a classifier of one class "
                f"is right every time and learns nothing. Put each class's images in train/<class name>/."
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and "train" not in self.splits:
            images, labels = self.read("train")
            counts = torch.bincount(labels, minlength=len(self.class_names)).tolist()
            empty = [name for name, count in zip(self.class_names, counts, strict=True) if not count]
            locked = [name for name in empty if not readable_folder(self.root / "train" / name)]
            if locked:
                raise UsageError(
                    f"The class folder(s) {', '.join(locked)} in '{self.root / 'train'}' cannot be read (permission "
                    f"denied). Give this user read access to them (chmod -R u+rX), or remove them."
                )
            if empty:
                raise UsageError(
                    f"The class folder(s) {', '.join(empty)} in '{self.root / 'train'}' hold no readable image, so "
                    f"the network would learn classes it never sees. Add images to them, or remove the folders."
                )
            self.hold_out_validation(images, labels)
        if stage in ("test", "predict") and "test" not in self.splits:
            test_dir = self.root / "test"
            if not test_dir.is_dir():
                raise UsageError(
                    f"'{test_dir}' does not exist, so there is no test split. Add test/<class name>/ folders, or "
                    f"measure on the validation split with `mobilenet validate`."
                )
            unknown = sorted(set(class_folders(test_dir)) - set(self.class_names))
            if unknown:
                raise UsageError(
                    f"'{test_dir}' has class folders that train/ lacks: {', '.join(unknown)}. The network only "
                    f"knows the training classes; rename or remove those folders."
                )
            self.splits["test"] = TensorBatches(*self.read("test"))

    def read(self, split: str):
        return read_image_split(self.root / split, self.class_names, self.resolution, self.cache_dir)
