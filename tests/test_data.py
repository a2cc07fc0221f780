import pickle
import shutil
import urllib.error

import pytest
import torch
from lightning.pytorch import Trainer
from torchvision.transforms.v2 import functional as TF

from fake_cifar import CIFAR10_NAMES, write_archive, write_cifar10
from mobilenet.data import CIFARDataModule, cifar_files
from mobilenet.data.augment import CIFAR10_MEAN, CIFAR10_STD
from mobilenet.data.sampling import EpochBatchSampler
from mobilenet.errors import UsageError

LOCAL = {"verify": False, "download": False}


def datamodule(data_dir, **kwargs) -> CIFARDataModule:
    return CIFARDataModule(data_dir=str(data_dir), **{**LOCAL, "val_size": 20, "batch_size": 16, **kwargs})


def attach(dm: CIFARDataModule, stage: str = "fit") -> CIFARDataModule:
    """Give the DataModule a CPU trainer (rank 0 of 1), as Lightning does, then set it up."""
    dm.trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    dm.prepare_data()
    dm.setup(stage)
    return dm


def test_reads_the_python_format_pixel_for_pixel(cifar10_dir):
    folder = cifar_files.ensure_available("cifar10", cifar10_dir, download=False, verify=False)
    images, labels = cifar_files.read_split(folder, "cifar10", train=True)
    assert images.shape == (100, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    with open(folder / "data_batch_2", "rb") as file:
        batch = pickle.load(file)
    row = torch.from_numpy(batch["data"][3])  # 1024 red, then 1024 green, then 1024 blue values
    assert torch.equal(images[20 + 3].flatten(), row)
    assert labels[20 + 3].item() == batch["labels"][3]
    assert cifar_files.read_class_names(folder, "cifar10") == CIFAR10_NAMES
    test_images, _ = cifar_files.read_split(folder, "cifar10", train=False)
    assert len(test_images) == 30


def test_cifar100_uses_fine_labels_and_100_classes(cifar100_dir):
    dm = attach(datamodule(cifar100_dir, dataset="cifar100"), "test")
    assert dm.num_classes == 100 and len(dm.class_names) == 100
    assert dm.splits["test"].labels.max() < 100 and len(dm.splits["test"]) == 100


def test_validation_split_is_fixed_disjoint_and_complete(cifar10_dir):
    first = datamodule(cifar10_dir, seed=1)
    second = datamodule(cifar10_dir, seed=2)  # another training seed: the same validation images
    train_idx, val_idx = first.split_indices(100)
    assert len(train_idx) == 80 and len(val_idx) == 20
    assert set(train_idx.tolist()).isdisjoint(val_idx.tolist())
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(100))
    assert torch.equal(val_idx, second.split_indices(100)[1])
    assert not torch.equal(val_idx, datamodule(cifar10_dir, split_seed=1).split_indices(100)[1])


def test_default_split_is_49000_train_and_1000_validation(cifar10_dir):
    train_idx, val_idx = CIFARDataModule(data_dir=str(cifar10_dir)).split_indices(50_000)
    assert (len(train_idx), len(val_idx)) == (49_000, 1_000)


def test_test_images_never_reach_training_or_validation(cifar10_dir):
    dm = attach(datamodule(cifar10_dir))
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 100
    assert "test" not in dm.splits


@pytest.mark.parametrize("kwargs, message", [({"batch_size": 0}, "batch_size"), ({"val_size": 0}, "val_size")])
def test_bad_sizes_are_refused_at_once(cifar10_dir, kwargs, message):
    with pytest.raises(UsageError, match=message):
        datamodule(cifar10_dir, **kwargs)


def test_val_size_as_large_as_the_training_set_is_refused(cifar10_dir):
    with pytest.raises(UsageError, match="val_size=100 leaves no training images"):
        attach(datamodule(cifar10_dir, val_size=100))


def test_checksums_catch_files_that_are_not_the_official_ones(cifar10_dir):
    with pytest.raises(UsageError, match="data_batch_1.*--data.verify false"):
        cifar_files.ensure_available("cifar10", cifar10_dir, download=False, verify=True)


def test_offline_without_data_names_files_url_and_option(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar_files, "download_url", no_network)
    with pytest.raises(UsageError) as caught:
        cifar_files.ensure_available("cifar10", tmp_path, download=True)
    message = str(caught.value)
    for expected in (
        "could not be downloaded",
        "URLError",
        "data_batch_1",
        "test_batch",
        "batches.meta",
        "cifar-10-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "--data.data_dir",
    ):
        assert expected in message


def test_archive_placed_in_data_dir_is_extracted(tmp_path, cifar10_dir):
    write_archive(cifar10_dir, "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    folder = cifar_files.ensure_available("cifar10", tmp_path, download=False, verify=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted(n for n, _ in cifar_files.SPECS["cifar10"].checksums)


def test_archive_with_the_wrong_checksum_is_refused(tmp_path, cifar10_dir):
    write_archive(cifar10_dir, "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(UsageError, match="does not match the official CIFAR-10 checksum"):
        cifar_files.ensure_available("cifar10", tmp_path, download=False, verify=True)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_partial_folder_names_the_missing_files(tmp_path, cifar10_dir):
    shutil.copytree(cifar10_dir / "cifar-10-batches-py", tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(UsageError, match="missing: test_batch"):
        cifar_files.ensure_available("cifar10", tmp_path, download=False)


def test_a_file_in_another_format_is_named(tmp_path):
    write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as file:
        pickle.dump({"pixels": [1, 2, 3]}, file)
    folder = tmp_path / "cifar-10-batches-py"
    with pytest.raises(UsageError, match="data_batch_3' is not a CIFAR-10 batch"):
        cifar_files.read_split(folder, "cifar10", train=True)


def test_each_epoch_visits_every_image_once_in_a_new_order():
    sampler = EpochBatchSampler(50, 8, shuffle=True, seed=3)
    orders = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 7
        order = torch.cat([b.indices for b in batches])
        assert sorted(order.tolist()) == list(range(50))
        orders.append(order)
    assert not torch.equal(orders[0], orders[1])
    seeds = [b.augment_seed for b in batches]
    assert len(set(seeds)) == len(seeds)


def test_order_and_augmentation_seeds_follow_from_seed_and_epoch_alone():
    def epoch_batches(sampler, epoch):
        sampler.set_epoch(epoch)
        return [(b.indices.tolist(), b.augment_seed) for b in sampler]

    running = EpochBatchSampler(50, 8, shuffle=True, seed=3)
    epoch_batches(running, 0)
    resumed = EpochBatchSampler(50, 8, shuffle=True, seed=3)  # a new process after a restart
    assert epoch_batches(running, 1) == epoch_batches(resumed, 1)
    assert epoch_batches(EpochBatchSampler(50, 8, shuffle=True, seed=4), 1) != epoch_batches(resumed, 1)


@pytest.mark.parametrize("shuffle", (True, False))
def test_ranks_read_disjoint_shards_that_cover_the_data(shuffle):
    shards = [EpochBatchSampler(50, 8, shuffle=shuffle, seed=0, rank=r, world_size=3).shard() for r in range(3)]
    covered = torch.cat(shards).tolist()
    assert set(covered) == set(range(50))
    if shuffle:  # padded with one repeated image so that every rank runs the same number of steps
        assert {len(s) for s in shards} == {17} and len(covered) == 51 and len(set(covered)) == 50
        assert len({len(EpochBatchSampler(50, 8, True, 0, r, 3)) for r in range(3)}) == 1
    else:  # evaluation: every image exactly once
        assert len(covered) == 50


def test_training_batches_are_augmented_and_evaluation_batches_are_not(cifar10_dir):
    dm = attach(datamodule(cifar10_dir, resolution=48))
    raw_train = next(iter(dm.train_dataloader()))
    images, labels = dm.on_after_batch_transfer(raw_train, 0)
    assert images.shape == (16, 3, 48, 48) and images.dtype == torch.float32 and labels.shape == (16,)
    unaugmented = TF.normalize(
        torch.nn.functional.interpolate(raw_train[0].float() / 255, size=48, mode="bilinear", antialias=True),
        CIFAR10_MEAN,
        CIFAR10_STD,
    )
    assert not torch.allclose(images, unaugmented, atol=1e-3)

    raw_val = next(iter(dm.val_dataloader()))
    assert raw_val[2] is None
    val_images, _ = dm.on_after_batch_transfer(raw_val, 0)
    expected = TF.normalize(
        torch.nn.functional.interpolate(raw_val[0].float() / 255, size=48, mode="bilinear", antialias=True),
        CIFAR10_MEAN,
        CIFAR10_STD,
    )
    assert torch.allclose(val_images, expected, atol=1e-5)


def test_an_epoch_replays_identically_in_a_fresh_datamodule(cifar10_dir):
    def epoch_one():
        dm = attach(datamodule(cifar10_dir, seed=5))
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(1)
        return [dm.on_after_batch_transfer(batch, 0) for batch in loader]

    first, second = epoch_one(), epoch_one()
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second, strict=True))
