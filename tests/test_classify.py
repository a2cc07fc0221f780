"""`mobilenet classify` through the console script: every image format and mode, broken files, JSON, the grid."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fake_cifar import CIFAR10_NAMES
from mobilenet.commands import main
from mobilenet.data.cifar import CIFARDataModule
from mobilenet.data.cifar_files import read_split
from mobilenet.data.images import fit_to, read_image
from mobilenet.training.module import MobileNetClassifier

MOBILENET = str(Path(sys.executable).parent / "mobilenet")


def classify(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([MOBILENET, "classify", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def checkpoint(finished_run, cifar10_dir, tmp_path_factory) -> Path:
    """The run's last checkpoint with batch-norm statistics recomputed over the training images.

    After two epochs on 80 images the stored running statistics leave every image with the same answer;
    exact statistics make the answers depend on the pixels, so a wrong preprocessing step shows.
    """
    path = finished_run / "checkpoints" / "cifar10" / "last.ckpt"
    model = MobileNetClassifier.load_from_checkpoint(path, map_location="cpu")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the one pass below
    images, _ = read_split(cifar10_dir / "cifar-10-batches-py", "cifar10", train=True)
    model.train()
    with torch.no_grad():
        model(CIFARDataModule().transform(images))
    saved = torch.load(path, map_location="cpu", weights_only=True)
    saved["state_dict"] = model.state_dict()
    target = tmp_path_factory.mktemp("calibrated") / "calibrated.ckpt"
    torch.save(saved, target)
    return target


def training_probabilities(checkpoint: Path, images: torch.Tensor) -> torch.Tensor:
    """What the training code's own evaluation path (DataModule transform, LightningModule) says."""
    model = MobileNetClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    with torch.no_grad():
        return model(CIFARDataModule().transform(images)).softmax(dim=1)


def save(array: np.ndarray, path: Path, mode: str | None = None, **options) -> Path:
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path, **options)
    return path


@pytest.mark.slow
def test_every_format_and_mode_is_classified_as_training_would(checkpoint, cifar10_dir, tmp_path):
    images, _ = read_split(cifar10_dir / "cifar-10-batches-py", "cifar10", train=False)
    rgb = images[:6].permute(0, 2, 3, 1).numpy()  # (6, 32, 32, 3)
    grey = np.asarray(Image.fromarray(rgb[4]).convert("L"))
    opaque = np.where(np.arange(32)[:, None] < 16, 255, 0).astype(np.uint8).repeat(32, 1)  # top half opaque
    palette = Image.fromarray(rgb[5]).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.save(tmp_path / "palette.png")
    files = {
        "rgb.png": (save(rgb[0], tmp_path / "rgb.png"), rgb[0]),
        "lossless.webp": (save(rgb[1], tmp_path / "lossless.webp", lossless=True), rgb[1]),
        "picture.bmp": (save(rgb[2], tmp_path / "picture.bmp"), rgb[2]),
        "alpha.png": (save(np.dstack([rgb[3], opaque]), tmp_path / "alpha.png"),
                      np.where(opaque[..., None] == 255, rgb[3], 255).astype(np.uint8)),  # transparent = white
        "grey.png": (save(grey, tmp_path / "grey.png"), np.repeat(grey[..., None], 3, axis=2)),
        "palette.png": (tmp_path / "palette.png", np.asarray(palette.convert("RGB"))),
    }  # fmt: skip
    photo = save(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8), tmp_path / "big.jpg")
    assert fit_to(read_image(photo), 32).shape == (3, 32, 32)  # any size and shape is squeezed to 32 × 32
    result = classify(*(str(path) for path, _ in files.values()), str(photo), "--ckpt_path", str(checkpoint),
                      "--json", "--topk", "10", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    answers = {Path(entry["file"]).name: entry["top"] for entry in json.loads(result.stdout)["results"]}
    assert list(answers) == [*files, "big.jpg"], "one answer per file, in the order given"
    big = answers.pop("big.jpg")
    assert [entry["probability"] for entry in big] == sorted((entry["probability"] for entry in big), reverse=True)
    assert sum(entry["probability"] for entry in big) == pytest.approx(1, abs=1e-3)
    expected = training_probabilities(
        checkpoint, torch.from_numpy(np.stack([pixels for _, pixels in files.values()])).permute(0, 3, 1, 2)
    )
    assert len(set(expected.argmax(1).tolist())) > 1 or expected.std(0).max() > 1e-3, "answers must differ by image"
    for (name, top), probabilities in zip(answers.items(), expected, strict=True):
        got = torch.zeros(10)
        for entry in top:
            got[entry["index"]] = entry["probability"]
            assert entry["class"] == CIFAR10_NAMES[entry["index"]]
        assert torch.allclose(got, probabilities, atol=1e-4), f"{name}: {got} != {probabilities}"


@pytest.mark.slow
def test_a_folder_and_broken_files_each_broken_file_gets_one_line_and_the_others_still_run(checkpoint, tmp_path):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for i, name in enumerate(("a.png", "b.jpeg", "nested/c.webp")):
        save(np.full((40, 40, 3), 40 * i, np.uint8), folder / name)
    (folder / "readme.txt").write_text("not a picture, and not an image extension: skipped inside a folder")
    truncated = tmp_path / "truncated.png"
    save(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8), truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("shopping list")
    missing = tmp_path / "missing.png"
    result = classify(str(truncated), str(folder), str(not_an_image), str(missing), "--ckpt_path", str(checkpoint),
                      "--grid", "grid.png", "--topk", "1", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, "the exit status must say that some files failed"
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("mobilenet: error:")]
    assert len(errors) == 3
    for bad, error in zip((truncated, not_an_image, missing), errors, strict=True):
        assert f"'{bad}' could not be read as an image" in error
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [
        str(folder / "a.png"), str(folder / "b.jpeg"), str(folder / "nested" / "c.webp")]  # fmt: skip
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.format == "PNG" and grid.width > grid.height  # three images side by side


def test_a_missing_checkpoint_is_one_clear_error(in_tmp):
    save(np.zeros((8, 8, 3), np.uint8), in_tmp / "x.png")
    with pytest.raises(SystemExit) as stopped:
        main(["classify", "x.png", "--ckpt_path", "nowhere.ckpt"])
    assert str(stopped.value.code).startswith("mobilenet: error: --ckpt_path 'nowhere.ckpt' is not a file.")


def test_sixteen_bit_greyscale_is_scaled_to_eight_bits(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1040).astype(np.uint16)  # 0 … 65520
    Image.fromarray(ramp).save(tmp_path / "depth.png")
    with Image.open(tmp_path / "depth.png") as saved:
        assert saved.mode.startswith("I")  # PIL keeps it as 16-bit, not 8-bit greyscale
    pixels = read_image(tmp_path / "depth.png")
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 8, 8)
    assert torch.equal(pixels[0], pixels[2]) and int(pixels.min()) == 0
    assert int(pixels.max()) == 255  # 65520 of 65535 is 254.94 of 255, rounded
    dark = np.full((8, 8), 200, dtype=np.uint16)  # a dark 16-bit image: 200 of 65535, nearly black
    Image.fromarray(dark).save(tmp_path / "dark.png")
    assert int(read_image(tmp_path / "dark.png").max()) == 1  # 200 / 65535 * 255 = 0.78, not 200


def test_a_pipe_named_like_an_image_is_refused_without_hanging(in_tmp, capsys):
    import os

    fifo = in_tmp / "x.png"
    os.mkfifo(fifo)
    with pytest.raises(SystemExit):
        main(["classify", str(fifo)])
    assert "x.png' is not a regular file (a pipe, socket or device)" in capsys.readouterr().err


def test_classify_into_a_closed_pipe_ends_quietly(tmp_path):
    sample = Path(__file__).parent / "assets" / "cifar10_sample"
    command = f"'{sys.executable}' -m mobilenet classify '{sample}' | head -1"
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert len(done.stdout.splitlines()) == 1 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_weights_that_are_not_finite_are_refused_with_a_sentence(checkpoint, tmp_path, capsys):
    saved = torch.load(checkpoint, weights_only=True)
    key = next(k for k in saved["state_dict"] if k.startswith("net.classifier.weight"))
    saved["state_dict"][key][0, 0] = float("nan")
    torch.save(saved, tmp_path / "diverged.ckpt")
    with pytest.raises(SystemExit) as refused:
        main(["classify", str(Path(__file__).parent / "assets" / "cifar10_sample"), "--ckpt_path",
              str(tmp_path / "diverged.ckpt")])  # fmt: skip
    assert "holds weights that are not finite numbers (NaN or infinity in classifier.weight)" in str(refused.value.code)


def test_a_record_whose_std_would_make_every_pixel_infinite_is_refused(checkpoint):
    from mobilenet.errors import UsageError
    from mobilenet.record import Metadata

    record = torch.load(checkpoint, weights_only=True)["mobilenet"]
    with pytest.raises(UsageError, match="'std' must be at least 0.001"):
        Metadata.from_dict({**record, "std": [1e-40, 0.2, 0.2]}, "crafted.ckpt")


@pytest.mark.parametrize(
    "names, problem",
    [
        (["cat"] * 10, "class names repeat ('cat')"),
        (["\x1b[2J\x1b[31mairplane", *map(str, range(9))], "class names hold control characters"),
    ],
    ids=["ten of one name", "escape sequences"],
)
def test_a_record_with_unusable_class_names_is_refused(checkpoint, names, problem):
    from mobilenet.errors import UsageError
    from mobilenet.record import Metadata

    record = torch.load(checkpoint, weights_only=True)["mobilenet"]
    with pytest.raises(UsageError, match=re.escape(problem)):
        Metadata.from_dict({**record, "class_names": names}, "crafted.ckpt")


def test_a_file_name_that_is_not_utf8_is_classified_and_drawn_in_the_grid(in_tmp, capsys):
    """A name written in another encoding (Latin-1 bytes on a UTF-8 system) is shown as a terminal shows it, in
    the text and in the --grid picture, instead of stopping the command with a font error."""
    save(np.full((32, 32, 3), 200, np.uint8), in_tmp / "x.png")
    name = os.fsdecode(b"caf\xe9.png")  # "café" in Latin-1
    (in_tmp / "x.png").rename(in_tmp / name)
    main(["classify", name, "--grid", "grid.png", "--topk", "1"])
    assert capsys.readouterr().out.startswith("caf\ufffd.png: ")
    with Image.open(in_tmp / "grid.png") as grid:
        assert grid.format == "PNG"


def test_a_folder_that_cannot_be_read_is_named_as_such_not_as_empty(in_tmp, monkeypatch, capsys):
    """A folder this user may not list looks empty to a directory walk; classify says it cannot be read. (Root
    reads every folder whatever its mode, so the denial is simulated where the permission is asked.)"""
    locked = in_tmp / "locked"
    locked.mkdir()
    save(np.full((32, 32, 3), 200, np.uint8), locked / "x.png")
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: False if Path(path).resolve() == locked else real_access(path, mode)
    )
    with pytest.raises(SystemExit):
        main(["classify", "locked"])
    assert "The folder 'locked' cannot be read (permission denied)" in capsys.readouterr().err
