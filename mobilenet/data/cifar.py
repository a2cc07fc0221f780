"""CIFAR-10/100 as a LightningDataModule: uint8 tensors in memory, batched augmentation on the device.

Data flow: archive on disk → ``read_split`` once → uint8 tensor (N, 3, 32, 32) → ``EpochBatchSampler``
gathers a batch by index → Lightning moves it to the device → ``on_after_batch_transfer`` augments (training
only), resizes to ``resolution`` and normalises.
"""

from typing import Literal

from mobilenet.data.base import BatchedDataModule
from mobilenet.data.cifar_files import SPECS, ensure_available, read_class_names, read_split
from mobilenet.data.sampling import TensorBatches
from mobilenet.errors import UsageError

# CIFAR-100 is normalised with CIFAR-10's mean and std (the defaults): its own statistics differ by at most
# 0.03, and one set keeps the recipes comparable.
NUM_CLASSES = {name: spec.num_classes for name, spec in SPECS.items()}


class CIFARDataModule(BatchedDataModule):
    """CIFAR-10 or CIFAR-100 from the official python archives, with a validation split carved out of the
    training images. The other arguments are those of every DataModule here (``BatchedDataModule``).

    Args:
        dataset: ``cifar10`` or ``cifar100``.
        data_dir: Folder that holds (or will receive) the official python archive or its extracted folder.
        download: Download the archive from the dataset's home page when it is not in ``data_dir``.
        verify: Check the files against the official md5 checksums; turn off for a copy you made yourself.
    """

    def __init__(
        self,
        dataset: Literal["cifar10", "cifar100"] = "cifar10",
        data_dir: str = "data",
        download: bool = True,
        verify: bool = True,
        **kwargs,
    ) -> None:
        if dataset not in SPECS:
            raise UsageError(f"dataset must be one of {sorted(SPECS)}, got {dataset!r}.")
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.dataset = dataset
        self.data_dir = data_dir
        self.download = download
        self.verify = verify

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES[self.dataset]

    def prepare_data(self) -> None:
        ensure_available(self.dataset, self.data_dir, self.download, self.verify)

    def setup(self, stage: str) -> None:
        # prepare_data runs on one process per node; this check is cheap and makes every rank fail alike.
        folder = ensure_available(self.dataset, self.data_dir, download=False, verify=False)
        self.class_names = read_class_names(folder, self.dataset)
        if stage in ("fit", "validate") and "train" not in self.splits:
            self.hold_out_validation(*read_split(folder, self.dataset, train=True))
        if stage in ("test", "predict") and "test" not in self.splits:
            self.splits["test"] = TensorBatches(*read_split(folder, self.dataset, train=False))
