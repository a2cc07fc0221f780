"""Files that try to run code or to touch a user's files: planted pickles in every CIFAR file, and checkpoint
records that name data folders, turn verification off or point the image cache elsewhere. None of it runs,
and nothing outside the run's own folders changes."""

import builtins
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from fake_cifar import write_cifar10
from fake_images import write_image_folder
from mobilenet.commands import main
from mobilenet.data.cifar_files import SPECS, read_class_names, read_split

CIFAR10_FILES = [*SPECS["cifar10"].split_files(True), *SPECS["cifar10"].split_files(False), "batches.meta"]


class Payload:
    """Unpickling this creates ``marker``: proof that a file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


def plant(path: Path, marker: Path) -> None:
    with open(path, "wb") as file:
        pickle.dump({"data": Payload(marker), "labels": [0], "label_names": Payload(marker)}, file)


@pytest.mark.parametrize("name", CIFAR10_FILES)
def test_a_payload_in_any_cifar_file_is_refused_without_running(tmp_path, name):
    folder = write_cifar10(tmp_path / "data") / "cifar-10-batches-py"
    marker = tmp_path / "ran"
    plant(folder / name, marker)
    with pytest.raises(Exception, match="not loaded, because unpickling such objects can run code") as refused:
        if name == "batches.meta":
            read_class_names(folder, "cifar10")
        else:
            read_split(folder, "cifar10", train=name != "test_batch")
    assert "builtins.exec" in str(refused.value) and not marker.exists()


def test_training_with_verification_off_reads_payloads_as_data_only(in_tmp, tmp_path):
    data_dir = write_cifar10(tmp_path / "planted")
    marker = tmp_path / "ran"
    for name in CIFAR10_FILES:
        plant(data_dir / "cifar-10-batches-py" / name, marker)
    with pytest.raises(SystemExit, match="mobilenet: error: .* can run code"):
        main(["fit", "--data.data_dir", str(data_dir), "--data.verify", "false", "--data.download", "false",
              "--trainer.max_epochs", "1", "--model.net.width_mult", "0.25"])  # fmt: skip
    assert not marker.exists()


def with_record_data(checkpoint: Path, output: Path, class_path: str, init_args: dict) -> Path:
    saved = torch.load(checkpoint, weights_only=True)
    saved["mobilenet"]["data"] = {"class_path": class_path, "init_args": init_args}
    torch.save(saved, output)
    return output


def test_a_record_cannot_turn_verification_off_for_a_folder_it_names(in_tmp, tmp_path, checkpoint):
    data_dir = write_cifar10(tmp_path / "planted")
    marker = tmp_path / "ran"
    for name in CIFAR10_FILES:
        plant(data_dir / "cifar-10-batches-py" / name, marker)
    crafted = with_record_data(checkpoint, tmp_path / "crafted.ckpt", "mobilenet.data.CIFARDataModule",
                               {"dataset": "cifar10", "data_dir": str(data_dir), "verify": False, "download": False,
                                "val_size": 20, "batch_size": 16})  # fmt: skip
    for command in ("test", "validate"):
        with pytest.raises(SystemExit, match="md5|checksum"):  # verified, as the user's default says
            main([command, "--ckpt_path", str(crafted), "--trainer.enable_progress_bar", "false"])
    assert not marker.exists()


def test_a_record_cannot_choose_where_the_image_cache_is_written_or_cleaned(in_tmp, tmp_path, checkpoint):
    root = write_image_folder(tmp_path / "images", per_class=4, test_per_class=2)
    victim = tmp_path / "victim"
    victim.mkdir()
    keep = victim / "val-32px-0123456789abcdef.pt"  # the name pattern the stale-cache clean-up removes
    keep.write_bytes(b"a user's file")
    crafted = with_record_data(checkpoint, tmp_path / "crafted.ckpt", "mobilenet.data.ImageFolderDataModule",
                               {"root": str(root), "cache_dir": str(victim), "val_size": 3})  # fmt: skip
    saved = torch.load(crafted, weights_only=True)
    # the fixture's network has 10 outputs: the record's classes must match the folder's 3 to be evaluated
    saved["mobilenet"]["class_names"] = ["bird", "cat", "dog"]
    saved["mobilenet"]["network"]["num_classes"] = 3
    net_keys = [key for key in saved["state_dict"] if key.startswith("net.classifier.")]
    for key in net_keys:
        saved["state_dict"][key] = saved["state_dict"][key][:3]
    torch.save(saved, crafted)
    main(["validate", "--ckpt_path", str(crafted), "--trainer.enable_progress_bar", "false"])
    assert sorted(p.name for p in victim.iterdir()) == [keep.name] and keep.read_bytes() == b"a user's file"
    assert any((root / ".mobilenet-cache").iterdir()), "the cache went to the folder's own default place"
    shutil.rmtree(root / ".mobilenet-cache")
