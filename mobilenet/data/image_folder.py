"""Your own images as a LightningDataModule: ``root/train/<class>/*`` and optionally ``root/test/<class>/*``.

The same pipeline as CIFAR from the tensor on: a seeded validation split, whole-batch loaders, batched
augmentation on the device. ``mobilenet fit --data ImageFolderDataModule --data.root DIR``.
"""

from pathlib import Path
from typing import Optional

from mobilenet.data.base import BatchedDataModule
from mobilenet.data.image_files import class_folders, read_image_split
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

    def __init__(self, root: str, cache_dir: Optional[str] = None, **kwargs) -> None:
        super().__init__(**kwargs)
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
        if not self.class_names:
            raise UsageError(f"'{train_dir}' has no class folders: put each class's images in train/<class name>/.")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and "train" not in self.splits:
            self.hold_out_validation(*self.read("train"))
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
