"""Image folders: every format and colour mode decoded, broken files skipped and named, the cache keyed by content."""

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fake_images import CLASSES, COLOURS, add_broken_files, write_image_folder
from mobilenet.data import ImageFolderDataModule, image_files
from mobilenet.data.image_files import decode_images
from mobilenet.data.images import decode
from mobilenet.errors import UsageError

TRAIN_IMAGES = 3 * 30 + 3  # 30 per class plus the greyscale, RGBA and palette images in cat/


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "images")


def datamodule(root, stage="fit", **kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(str(root), **{"val_size": 10, "batch_size": 8, **kwargs})
    dm.setup(stage)
    return dm


def all_labels(dm, *splits) -> list[int]:
    return sorted(sum((dm.splits[s].labels.tolist() for s in splits), []))


def test_classes_come_from_folder_names_and_every_image_is_read(folder):
    dm = datamodule(folder)
    assert dm.class_names == CLASSES and dm.num_classes == 3
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == TRAIN_IMAGES
    assert len(dm.splits["val"]) == 10
    assert all_labels(dm, "train", "val").count(CLASSES.index("cat")) == 33


def test_formats_and_colour_modes_decode_to_the_right_rgb(tmp_path):
    colour = COLOURS["dog"]
    for suffix in ("png", "bmp", "webp"):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"solid.{suffix}", lossless=True)  # webp: exact
        assert decode(tmp_path / f"solid.{suffix}", 32).view(3, -1).unique(dim=1).flatten().tolist() == list(colour)
    Image.new("RGB", (32, 32), colour).save(tmp_path / "solid.jpg", quality=95)
    assert (decode(tmp_path / "solid.jpg", 32).float() - torch.tensor(colour).view(3, 1, 1)).abs().max() <= 3
    Image.new("L", (32, 32), 77).save(tmp_path / "grey.png")
    assert decode(tmp_path / "grey.png", 32).unique().tolist() == [77]
    Image.new("RGBA", (32, 32), (10, 20, 30, 0)).save(tmp_path / "clear.png")  # fully transparent: white
    assert decode(tmp_path / "clear.png", 32).unique().tolist() == [255]
    Image.new("RGB", (32, 32), colour).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    assert decode(tmp_path / "palette.png", 32)[:, 0, 0].tolist() == list(colour)


def test_other_sizes_are_centre_cropped_and_resized(tmp_path):
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, :10] = 255  # white only at the left edge, which a centre crop to 40×40 (columns 20-59) removes
    Image.fromarray(wide).save(tmp_path / "wide.png")
    image = decode(tmp_path / "wide.png", 16)
    assert image.shape == (3, 16, 16) and image.max() == 0


def test_broken_files_are_skipped_with_one_warning_that_names_and_counts_them(folder):
    broken = add_broken_files(folder / "train")
    with pytest.warns(UserWarning) as caught:
        dm = datamodule(folder)
    messages = [str(w.message) for w in caught if "Skipped" in str(w.message)]
    assert len(messages) == 1
    assert f"Skipped 2 of {TRAIN_IMAGES + 2} files" in messages[0]
    assert all(name in messages[0] for name in broken)
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == TRAIN_IMAGES
    with pytest.warns(UserWarning, match="Skipped 2 of"):  # from the cache too: never a silent loss
        datamodule(folder)


def test_second_run_loads_the_cache_without_decoding(folder, monkeypatch):
    first = datamodule(folder)
    monkeypatch.setattr(image_files, "decode_images", lambda *a, **k: pytest.fail("decoded again"))
    second = datamodule(folder)
    assert torch.equal(first.splits["train"].images, second.splits["train"].images)
    assert torch.equal(first.splits["val"].labels, second.splits["val"].labels)


@pytest.mark.parametrize("change", ["add", "remove", "modify"])
def test_a_changed_folder_rebuilds_the_cache(folder, change):
    datamodule(folder)
    dog = folder / "train" / "dog"
    if change == "add":
        shutil.copy(dog / "0001.png", dog / "extra.png")
    elif change == "remove":
        (dog / "0001.png").unlink()
    else:  # same name, new content and modification time
        Image.new("RGB", (32, 32), (0, 0, 0)).save(dog / "0001.png")
        os.utime(dog / "0001.png", ns=(1, 1))
    dm = datamodule(folder)
    expected = TRAIN_IMAGES + {"add": 1, "remove": -1, "modify": 0}[change]
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == expected
    if change == "modify":
        images = torch.cat([dm.splits["train"].images, dm.splits["val"].images])
        assert (images.flatten(1).amax(1) == 0).sum() == 1  # the new all-black content, not the cached image
    assert len(list((folder / ".mobilenet-cache").glob("train-32px-*.pt"))) == 1  # the stale cache is gone


def test_resolution_is_applied_when_decoding(folder):
    dm = datamodule(folder, resolution=20)
    assert dm.splits["train"].images.shape[1:] == (3, 20, 20)


def test_test_split_comes_from_the_test_folder(folder):
    dm = datamodule(folder, stage="test")
    assert len(dm.splits["test"]) == 15 and "train" not in dm.splits


def test_missing_folders_and_unknown_test_classes_are_explained(tmp_path, folder):
    with pytest.raises(UsageError, match="must hold train/<class name>/"):
        ImageFolderDataModule(str(tmp_path / "nowhere"))
    shutil.rmtree(folder / "test")
    with pytest.raises(UsageError, match="no test split.*mobilenet validate"):
        datamodule(folder, stage="test")
    (folder / "test" / "horse").mkdir(parents=True)
    with pytest.raises(UsageError, match="class folders that train/ lacks: horse"):
        datamodule(folder, stage="test")


def test_a_read_only_cache_folder_only_costs_a_warning(folder, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would go")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = datamodule(folder, cache_dir=str(blocked / "cache"))
    assert any("Could not cache" in str(w.message) for w in caught)
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == TRAIN_IMAGES


def test_a_phone_photo_is_read_upright_by_its_exif_orientation(tmp_path):
    """A portrait photo is stored sideways with EXIF orientation 6 ("rotate 90° clockwise to show it")."""
    shown = np.zeros((40, 20, 3), np.uint8)  # 20 wide, 40 high: left half red, right half blue
    shown[:, :10] = (220, 20, 20)
    shown[:, 10:] = (20, 20, 220)
    stored = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)  # as the camera wrote it: 40 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    path = tmp_path / "portrait.jpg"
    stored.save(path, exif=exif, quality=95)

    from mobilenet.data.images import fit_to, read_image

    for pixels in (read_image(path), decode(path, 40)):  # as read, and as prepared for the network
        assert pixels.shape[-2:] == ((40, 20) if pixels.shape[-1] == 20 else (40, 40))
        square = fit_to(pixels, 20)
        assert square[0, :, :5].float().mean() > 150 and square[2, :, -5:].float().mean() > 150, "read sideways"


def test_a_large_photo_is_prepared_for_classify_exactly_as_for_training(tmp_path):
    """classify (and int8 calibration) read an image through the same decoder as training on image folders: a
    large JPEG, which training decodes at a reduced scale, gives the network the same pixels in both."""
    from mobilenet.data.images import read_image

    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    path = tmp_path / "photo.jpg"
    Image.fromarray(noise).save(path, quality=90)
    trained_on, _, skipped = decode_images([path], [0], 32, "Decoding")
    assert not skipped
    assert torch.equal(read_image(path, 32), trained_on[0])


def test_a_class_folder_named_in_another_encoding_is_refused_before_anything_is_read(folder):
    """Every file a run writes records the class names: a folder name of Latin-1 bytes is refused at once with
    its bytes shown, instead of failing at the first checkpoint after an epoch of training."""
    os.rename(folder / "train" / CLASSES[0], os.path.join(os.fsencode(folder / "train"), b"caf\xe9"))
    with pytest.raises(UsageError, match=r"b'caf\\xe9'.*not printable UTF-8 text.*Rename the folders"):
        ImageFolderDataModule(str(folder))


def test_a_class_folder_that_cannot_be_read_is_named_as_such_not_as_empty(folder, monkeypatch):
    locked = folder / "train" / CLASSES[0]
    real_access, real_rglob = os.access, Path.rglob
    # As a user without the permission sees it (root reads every folder whatever its mode): empty, and locked.
    monkeypatch.setattr(
        os, "access", lambda path, mode: False if Path(path).resolve() == locked else real_access(path, mode)
    )
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: iter(()) if self == locked else real_rglob(self, pattern))
    with pytest.raises(UsageError, match=f"{CLASSES[0]} in .* cannot be read .permission denied.*chmod"):
        datamodule(folder, stage="fit")
