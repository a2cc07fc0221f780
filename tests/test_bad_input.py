"""The bad-input matrix: each mistake gets a short message saying what is wrong and what to do, no traceback,
and the checkpoints and logs already on disk stay exactly as they were."""

import errno
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import mobilenet.training.checkpoint_io
from conftest import small_run_args
from fake_cifar import write_archive, write_cifar100
from fake_images import write_image_folder
from mobilenet.commands import main
from mobilenet.files import PARTIAL_MARK

SHORT_EPOCH = 3  # training batches per epoch where a test needs only a few (--trainer.limit_train_batches)
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SET_UP: dict[str, list[str]] = {}  # case → the files it wrote before the failing command (listed as it wrote them)


def run(*args: str) -> None:
    main([args[0], *QUIET, *args[1:]])


def fails(*args: str, capsys) -> str:
    """Run the command as the console script would and return what it printed for the user."""
    with pytest.raises(SystemExit) as exit_info:
        run(*args)
    captured = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, str) else "") + captured.err


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under checkpoints/ and logs/."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in ("checkpoints", "logs")
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, cifar10_dir) -> Path:
    """A folder with run 'cifar10' trained for one epoch: the files no mistake may touch."""
    folder = tmp_path_factory.mktemp("bad-input")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(sys, "argv", ["mobilenet"])
        run("fit", *small_run_args(cifar10_dir), "--trainer.max_epochs", "1")
    return folder


def copy_data(cifar10_dir: Path, target: Path) -> Path:
    shutil.copytree(cifar10_dir, target)
    return target / "cifar-10-batches-py"


def missing_file(cifar10_dir, tmp):
    (copy_data(cifar10_dir, tmp / "data") / "data_batch_3").unlink()
    return ["fit", *small_run_args(tmp / "data"), "--ckpt_path", "last", "--trainer.max_epochs", "2"]


def truncated_file(cifar10_dir, tmp):
    batch = copy_data(cifar10_dir, tmp / "data") / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:5000])
    return ["fit", *small_run_args(tmp / "data"), "--ckpt_path", "last", "--trainer.max_epochs", "2"]


def corrupt_file(cifar10_dir, tmp):
    (copy_data(cifar10_dir, tmp / "data") / "test_batch").write_bytes(os.urandom(4000))
    return ["test", *small_run_args(tmp / "data")]


def checksum_mismatch(cifar10_dir, tmp):
    return ["test", *small_run_args(cifar10_dir), "--data.verify", "true"]


def data_dir_is_a_file(cifar10_dir, tmp):
    (tmp / "data.txt").write_text("not a folder")
    return ["fit", *small_run_args(tmp / "data.txt"), "--ckpt_path", "last", "--trainer.max_epochs", "2"]


def data_dir_not_writable(cifar10_dir, tmp):
    readonly = tmp / "readonly"
    readonly.mkdir()
    write_archive(cifar10_dir, "cifar-10-batches-py", readonly / "cifar-10-python.tar.gz")
    readonly.chmod(0o555)
    return ["fit", *small_run_args(readonly), "--ckpt_path", "last", "--trainer.max_epochs", "2"]


def plain_checkpoint(edit):
    """A copy of the run's last.ckpt changed by ``edit``, as a checkpoint saved outside the CLI would be."""

    def make(cifar10_dir, tmp):
        checkpoint = torch.load("checkpoints/cifar10/last.ckpt", weights_only=True, map_location="cpu")
        path = tmp / "other.ckpt"
        torch.save(edit(checkpoint), path)
        return path

    return make


def without_data_settings(checkpoint):
    checkpoint["mobilenet"]["data"] = None
    return checkpoint


def record_of_another_width(checkpoint):
    checkpoint["mobilenet"]["network"]["width_mult"] = 0.5
    return checkpoint


def other_classes(cifar10_dir, tmp):
    path = plain_checkpoint(without_data_settings)(cifar10_dir, tmp)
    cifar100 = write_cifar100(tmp / "cifar100")
    return ["test", *small_run_args(cifar100, "cifar100.yaml"), "--ckpt_path", str(path)]


def other_width(cifar10_dir, tmp):
    path = plain_checkpoint(record_of_another_width)(cifar10_dir, tmp)
    return ["test", *small_run_args(cifar10_dir), "--model.net.width_mult", "0.5", "--ckpt_path", str(path)]


def truncated_checkpoint(cifar10_dir, tmp):
    data = Path("checkpoints/cifar10/last.ckpt").read_bytes()
    (tmp / "cut.ckpt").write_bytes(data[: len(data) // 3])
    return ["fit", *small_run_args(cifar10_dir), "--ckpt_path", str(tmp / "cut.ckpt"), "--run_name", "from_cut"]


def foreign_checkpoint(cifar10_dir, tmp):
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp / "state_dict.pt")
    return ["test", *small_run_args(cifar10_dir), "--ckpt_path", str(tmp / "state_dict.pt")]


class RunsCode:
    """Unpickling this would create the file named in it: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def checkpoint_with_code(cifar10_dir, tmp):
    checkpoint = torch.load("checkpoints/cifar10/last.ckpt", weights_only=True, map_location="cpu")
    checkpoint["extra"] = RunsCode(tmp / "code-ran")
    torch.save(checkpoint, tmp / "evil.ckpt")
    return ["test", *small_run_args(cifar10_dir), "--ckpt_path", str(tmp / "evil.ckpt")]


def unknown_option(cifar10_dir, tmp):
    return ["fit", *small_run_args(cifar10_dir), "--model.widht_mult", "0.5", "--ckpt_path", "last"]


def unknown_config_key(cifar10_dir, tmp):
    (tmp / "typo.yaml").write_text("model:\n  widht_mult: 0.5\n")
    return ["fit", *small_run_args(cifar10_dir), "--config", str(tmp / "typo.yaml"), "--ckpt_path", "last"]


def wrong_type(cifar10_dir, tmp):
    return ["fit", *small_run_args(cifar10_dir), "--data.batch_size", "many", "--ckpt_path", "last"]


def zero_batch_size(cifar10_dir, tmp):
    return ["fit", *small_run_args(cifar10_dir), "--data.batch_size", "0", "--ckpt_path", "last"]


def val_size_too_large(cifar10_dir, tmp):
    return ["fit", *small_run_args(cifar10_dir), "--data.val_size", "100", "--run_name", "all_validation"]


def edited_batch(name: str, edit):
    """A copy of the data where the pickled batch ``name`` is changed by ``edit`` (a dict -> dict or any object)."""

    def make(cifar10_dir, tmp):
        folder = copy_data(cifar10_dir, tmp / "data")
        with open(folder / name, "rb") as file:
            entry = pickle.load(file, encoding="latin1")
        with open(folder / name, "wb") as file:
            pickle.dump(edit(entry), file)
        command = "test" if name in ("test_batch", "batches.meta") else "validate"
        return [command, *small_run_args(tmp / "data")]

    return make


def labels_out_of_range(entry):
    return {**entry, "labels": [12, *entry["labels"][1:]]}


def string_pixels(entry):
    return {**entry, "data": [["px"] * 3072 for _ in entry["labels"]]}


def float_labels(entry):
    return {**entry, "labels": [label + 0.5 for label in entry["labels"]]}


def pixels_above_255(entry):
    return {**entry, "data": entry["data"].astype("int64") + 300}


def meta_without_names(entry):
    return {key: value for key, value in entry.items() if key != "label_names"}


def meta_is_a_list(entry):
    return list(entry["label_names"])


def five_class_names(entry):
    return {**entry, "label_names": entry["label_names"][:5]}


def damaged_archive(cifar10_dir, tmp):
    folder = tmp / "archive"
    folder.mkdir()
    archive = write_archive(cifar10_dir, "cifar-10-batches-py", folder / "cifar-10-python.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    return ["test", *small_run_args(folder)]


def random_bytes_checkpoint(cifar10_dir, tmp):
    (tmp / "random.ckpt").write_bytes(os.urandom(5000))
    return ["test", "--ckpt_path", str(tmp / "random.ckpt")]


def record_naming_other_data_code(cifar10_dir, tmp):
    def edit(checkpoint):
        checkpoint["mobilenet"]["data"]["class_path"] = "antigravity.Fly"
        return checkpoint

    return ["test", "--ckpt_path", str(plain_checkpoint(edit)(cifar10_dir, tmp))]


def cifar10_checkpoint_with_the_cifar100_config(cifar10_dir, tmp):
    cifar100 = write_cifar100(tmp / "cifar100")
    return ["test", *small_run_args(cifar100, "cifar100.yaml"), "--ckpt_path", "checkpoints/cifar10/last.ckpt"]


def best_before_any_validation(cifar10_dir, tmp):
    folder = Path("checkpoints/never_validated")
    checkpoint = torch.load("checkpoints/cifar10/last.ckpt", weights_only=True, map_location="cpu")
    checkpoint["callbacks"] = {}
    folder.mkdir()
    torch.save(checkpoint, folder / "last.ckpt")
    return ["test", "--run_name", "never_validated", "--ckpt_path", "best"]


def best_of_a_run_that_does_not_exist(cifar10_dir, tmp):
    return ["validate", *small_run_args(cifar10_dir), "--run_name", "no_such_run"]


def nan_std(cifar10_dir, tmp):
    return ["fit", *small_run_args(cifar10_dir), "--data.std", "[0.2, .nan, 0.2]", "--run_name", "nan_std"]


def unknown_data_class(cifar10_dir, tmp):
    return ["fit", *small_run_args(cifar10_dir), "--data", "FooDataModule", "--run_name", "foo"]


def run_name_that_is_a_path(cifar10_dir, tmp):
    return ["fit", *small_run_args(cifar10_dir), "--run_name", "../../escaped"]


def huge_resolution(cifar10_dir, tmp):
    return ["fit", *small_run_args(cifar10_dir), "--data.resolution", "4096", "--run_name", "huge"]


def width_out_of_range(cifar10_dir, tmp):
    return ["fit", *small_run_args(cifar10_dir), "--model.net.width_mult", "3", "--run_name", "wide"]


def not_writable(folder: str):
    def make(cifar10_dir, tmp):
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o555)  # restored by the test after the run
        return ["fit", *small_run_args(cifar10_dir), "--run_name", "blocked"]

    return make


def export_over_its_checkpoint(cifar10_dir, tmp):
    last = "checkpoints/cifar10/last.ckpt"
    return ["export", "--ckpt_path", last, "--format", "state_dict", "--output", last, "--overwrite"]


def export_into_a_folder(cifar10_dir, tmp):
    return ["export", "--ckpt_path", "checkpoints/cifar10/last.ckpt", "--format", "onnx", "--output", str(tmp)]


def export_below_a_file(cifar10_dir, tmp):
    (tmp / "file").write_text("a file")
    output = str(tmp / "file" / "model.onnx")
    return ["export", "--ckpt_path", "checkpoints/cifar10/last.ckpt", "--format", "onnx", "--output", output]


def export_onnx_named_pth(cifar10_dir, tmp):
    output = str(tmp / "model.pth")
    return ["export", "--ckpt_path", "checkpoints/cifar10/last.ckpt", "--format", "onnx", "--output", output]


def export_onto_an_existing_file(cifar10_dir, tmp):
    (tmp / "model.onnx").write_text("an earlier export")
    output = str(tmp / "model.onnx")
    return ["export", "--ckpt_path", "checkpoints/cifar10/last.ckpt", "--format", "onnx", "--output", output]


def import_over_a_runs_checkpoint(cifar10_dir, tmp):
    from tutorial_net import TutorialMobileNet

    torch.save(TutorialMobileNet(num_classes=10).state_dict(), tmp / "tutorial.pth")
    return ["import-tutorial", str(tmp / "tutorial.pth"), "--output", "checkpoints/cifar10/last.ckpt",
            "--data.data_dir", str(cifar10_dir)]  # fmt: skip


def import_a_foreign_state_dict(cifar10_dir, tmp):
    torch.save({"fc.weight": torch.zeros(10, 4)}, tmp / "other.pth")
    return ["import-tutorial", str(tmp / "other.pth"), "--output", str(tmp / "imported.ckpt")]


def classify_on_a_missing_gpu(cifar10_dir, tmp):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here")
    return ["classify", str(image(tmp)), "--ckpt_path", "checkpoints/cifar10/last.ckpt", "--device", "cuda"]


def classify_with_a_damaged_export(suffix: str):
    def make(cifar10_dir, tmp):
        model = tmp / f"model{suffix}"
        model.write_bytes(os.urandom(3000))
        return ["classify", str(image(tmp)), "--ckpt_path", str(model)]

    return make


def classify_grid_that_is_no_png(cifar10_dir, tmp):
    grid = str(tmp / "grid.jpg")
    return ["classify", str(image(tmp)), "--ckpt_path", "checkpoints/cifar10/last.ckpt", "--grid", grid]


def classify_top_zero(cifar10_dir, tmp):
    return ["classify", str(image(tmp)), "--ckpt_path", "checkpoints/cifar10/last.ckpt", "--topk", "0"]


def report_without_images(cifar10_dir, tmp):
    return ["report", "--ckpt_path", "checkpoints/cifar10/last.ckpt", "--num_images", "0"]


def classify_on_device(device: str):
    def make(cifar10_dir, tmp):
        image = tmp / "x.png"
        Image.new("RGB", (32, 32)).save(image)
        return ["classify", str(image), "--ckpt_path", "checkpoints/cifar10/last.ckpt", "--device", device]

    return make


def summary_at_resolution_zero(cifar10_dir, tmp):
    return ["summary", "--data.resolution", "0"]


def config_file(text: str | bytes):
    def make(cifar10_dir, tmp):
        path = tmp / "config.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["summary", "--config", str(path)]

    return make


def checkpoint_as_config(cifar10_dir, tmp):
    return ["summary", "--config", "checkpoints/cifar10/last.ckpt"]


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdefg", "bcdefgh", strict=True)
)


def negative_epochs(cifar10_dir, tmp):
    return ["fit", *small_run_args(cifar10_dir), "--trainer.max_epochs", "-5", "--run_name", "negative"]


def optimiser_that_runs_a_command(cifar10_dir, tmp):
    config = tmp / "evil.yaml"
    config.write_text(
        f"model:\n  optimizer:\n    class_path: os.system\n    init_args:\n      command: touch {tmp / 'code-ran'}\n"
    )
    return ["fit", *small_run_args(cifar10_dir), "--config", str(config), "--run_name", "evil"]


def one_class_folder(cifar10_dir, tmp):
    root = write_image_folder(tmp / "images")
    for name in ("bird", "dog"):
        shutil.rmtree(root / "train" / name)
    return ["fit", "--data", "ImageFolderDataModule", "--data.root", str(root), "--run_name", "one_class"]


def empty_class_folder(cifar10_dir, tmp):
    root = write_image_folder(tmp / "images")
    for path in (root / "train" / "dog").iterdir():
        path.unlink()
    return ["fit", "--data", "ImageFolderDataModule", "--data.root", str(root), "--data.val_size", "10",
            "--run_name", "empty_class"]  # fmt: skip


def renamed_class_folder(cifar10_dir, tmp):
    root = write_image_folder(tmp / "images")
    fit = ["--data", "ImageFolderDataModule", "--data.root", str(root), "--data.val_size", "10",
           "--model.net.width_mult", "0.25", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
           "--run_name", "folders"]  # fmt: skip
    run("fit", *fit)
    SET_UP["renamed class folder"] = [str(p) for p in Path().glob("*/folders/**/*") if p.is_file()]
    (root / "train" / "cat").rename(root / "train" / "kitten")
    return ["validate", "--ckpt_path", "checkpoints/folders/last.ckpt"]


def exported(fmt: str, command: str):
    def make(cifar10_dir, tmp):
        from mobilenet.deploy.artifacts import load
        from mobilenet.deploy.export import FORMATS, export

        output = tmp / f"model{FORMATS[fmt]}"
        export(load("checkpoints/cifar10/last.ckpt"), fmt, output)
        return [command, "--ckpt_path", str(output)]

    return make


def folder_option_without_its_datamodule(cifar10_dir, tmp):
    return ["fit", *small_run_args(cifar10_dir), "--data.root", str(write_image_folder(tmp / "images"))]


def image_folders_without_a_root(cifar10_dir, tmp):
    return ["fit", "--data", "ImageFolderDataModule", "--run_name", "no_root"]


def record_with_temperature_zero(cifar10_dir, tmp):
    import json

    from mobilenet.deploy.artifacts import load
    from mobilenet.deploy.export import export

    output = tmp / "model.pth"  # a state_dict export, whose record is the JSON file beside it
    export(load("checkpoints/cifar10/last.ckpt"), "state_dict", output)
    record = Path(f"{output}.json")
    record.write_text(json.dumps({**json.loads(record.read_text()), "temperature": 0}))
    return ["classify", str(image(tmp)), "--ckpt_path", str(output)]


def image(tmp: Path) -> Path:
    path = tmp / "picture.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
    return path


# (case, command builder, what the message must say)
MATRIX = [
    # The dataset's files
    ("missing dataset file", missing_file, ["CIFAR-10 is incomplete in", "missing: data_batch_3", "--data.data_dir"]),
    ("truncated dataset file", truncated_file, ["data_batch_2' could not be read", "truncated or corrupt"]),
    ("corrupt dataset file", corrupt_file, ["test_batch' could not be read", "official CIFAR-10 archive"]),
    ("checksum mismatch", checksum_mismatch, ["do not match the official checksums", "--data.verify false"]),
    ("data_dir is a file", data_dir_is_a_file, ["data.txt' is a file, not a folder"]),
    ("data_dir not writable", data_dir_not_writable, ["readonly' is not writable", "writable folder"]),
    ("labels out of range", edited_batch("data_batch_1", labels_out_of_range), ["labels must lie in [0, 10), found"]),
    ("pixels given as strings", edited_batch("data_batch_1", string_pixels), ["'data' must be whole numbers"]),
    ("labels given as floats", edited_batch("data_batch_1", float_labels), ["'labels' must be 20 whole numbers"]),
    ("pixel values above 255", edited_batch("data_batch_1", pixels_above_255), ["pixel values must lie in [0, 255]"]),
    ("meta file without names", edited_batch("batches.meta", meta_without_names), ["does not hold the 10 class names"]),
    ("meta file that is a list", edited_batch("batches.meta", meta_is_a_list), ["does not hold the 10 class names"]),
    ("five class names for ten", edited_batch("batches.meta", five_class_names), ["does not hold the 10 class names"]),
    ("damaged archive", damaged_archive, ["could not be unpacked", "Nothing was extracted"]),
    # Checkpoints
    ("checkpoint for other classes", other_classes, ["trained for 10 classes, but the data has 100"]),
    ("checkpoint for other width", other_width, ["weights do not fit this network", "pick a checkpoint of this run"]),
    ("truncated checkpoint", truncated_checkpoint, ["cut.ckpt' is not a file saved by PyTorch, or it is truncated"]),
    ("foreign checkpoint", foreign_checkpoint, ["state_dict.pt' is a bare state_dict without the record"]),
    ("checkpoint with code", checkpoint_with_code, ["evil.ckpt' holds Python objects", "can run arbitrary code"]),
    ("random bytes as checkpoint", random_bytes_checkpoint, ["random.ckpt' is not a file saved by PyTorch"]),
    ("record naming other data code", record_naming_other_data_code, ["antigravity.Fly, which is not one of this"]),
    (
        "CIFAR-10 checkpoint, CIFAR-100 config",
        cifar10_checkpoint_with_the_cifar100_config,
        ["trained on cifar10 (10 classes), but the config says --data.dataset cifar100"],
    ),  # fmt: skip
    ("best before any validation", best_before_any_validation, ["none was chosen as the best", "--ckpt_path last"]),
    ("best of a run never trained", best_of_a_run_that_does_not_exist, ["no checkpoint in 'checkpoints/no_such_run'"]),
    ("renamed class folder", renamed_class_folder, ["new: kitten; missing: cat", "restore the folders"]),
    ("fit from exported weights", exported("safetensors", "fit"), ["holds a network's weights only (safetensors)"]),
    ("test an ONNX export", exported("onnx", "test"), ["is an ONNX export: test runs the PyTorch network"]),
    ("record with temperature 0", record_with_temperature_zero, ["'temperature' must be a positive number, got 0"]),
    # Options and configs
    ("unknown option", unknown_option, ["widht_mult"]),
    ("unknown config key", unknown_config_key, ["widht_mult"]),
    ("wrong type", wrong_type, ["batch_size", "many"]),
    ("batch size 0", zero_batch_size, ["batch_size must be at least 1, got 0"]),
    ("val_size too large", val_size_too_large, ["val_size=100 leaves no training images", "below 100"]),
    ("NaN in --data.std", nan_std, ["std must be three finite numbers"]),
    ("unknown --data class", unknown_data_class, ["choose CIFARDataModule or ImageFolderDataModule"]),
    (
        "folder option without its data",
        folder_option_without_its_datamodule,
        ["--data.root belongs to image folders", "add --data ImageFolderDataModule"],
    ),
    ("image folders without a root", image_folders_without_a_root, ["needs --data.root DIR"]),
    ("run name that is a path", run_name_that_is_a_path, ["'../../escaped' is not a run name"]),
    ("huge resolution", huge_resolution, ["resolution must be between 1 and 1024 pixels, got 4096"]),
    ("width out of range", width_out_of_range, ["width_mult (α) must lie in (0, 2], got 3"]),
    ("one class folder", one_class_folder, ["needs a folder per class, at least two (found only 'cat')"]),
    ("empty class folder", empty_class_folder, ["class folder(s) dog", "hold no readable image"]),
    # Where the results go
    ("logs not writable", not_writable("logs"), ["'logs' is not writable"]),
    ("checkpoints not writable", not_writable("checkpoints"), ["'checkpoints' is not writable"]),
    ("export over its checkpoint", export_over_its_checkpoint, ["is the file being exported"]),
    ("export into a folder", export_into_a_folder, ["is a folder; give a file name"]),
    (
        "export ONNX named .pth",
        export_onnx_named_pth,
        [
            "ends in '.pth', the suffix of state_dict exports, but --format onnx writes a .onnx file",
            "Name it model.onnx",
        ],
    ),
    ("export below a file", export_below_a_file, ["file' is a file, not a folder"]),
    ("export onto an existing file", export_onto_an_existing_file, ["already exists and is kept", "--overwrite"]),
    ("import over a run's checkpoint", import_over_a_runs_checkpoint, ["last.ckpt' already exists and is kept"]),
    ("import a foreign state_dict", import_a_foreign_state_dict, ["not a state_dict of the tutorial's MobileNet"]),
    # Using a model
    ("classify on a missing GPU", classify_on_a_missing_gpu, ["asks for a CUDA GPU, but PyTorch sees none"]),
    ("classify with a damaged .pt", classify_with_a_damaged_export(".pt"), ["model.pt' is not a file saved by"]),
    ("classify with a damaged .onnx", classify_with_a_damaged_export(".onnx"), ["could not be read as an ONNX"]),
    ("classify grid that is no PNG", classify_grid_that_is_no_png, ["--grid writes a PNG picture"]),
    ("classify top 0", classify_top_zero, ["--topk must be at least 1, got 0"]),
    ("report without images", report_without_images, ["--num_images must be at least 1, got 0"]),
    ("classify on mps", classify_on_device("mps"), ["--device mps: classification runs on cpu or cuda"]),
    ("classify on meta", classify_on_device("meta"), ["--device meta: classification runs on cpu or cuda"]),
    ("empty config", config_file(""), ["is empty: give a YAML mapping"]),
    ("binary config", config_file(bytes(range(256))), ["is not a text file (byte 128 is not UTF-8)"]),
    ("checkpoint as config", checkpoint_as_config, ["is not a text file", "goes to --ckpt_path instead"]),
    ("config that is a list", config_file("- 1\n- 2\n"), ["holds a list, not a mapping of settings"]),
    ("YAML alias bomb", config_file(ALIAS_BOMB), ["expands to more than 100,000 values"]),
    ("max_epochs -5", negative_epochs, ["`max_epochs` must be a non-negative integer or -1. You passed in -5."]),
    (
        "optimiser os.system",
        optimiser_that_runs_a_command,
        ["model.optimizer names os.system, which is not an optimiser"],
    ),
    ("summary at resolution 0", summary_at_resolution_zero, ["resolution must be between 1 and 1024 pixels, got 0"]),
]
# Cases about permissions run as a separate process without the capabilities that let root write anywhere
# (CAP_DAC_OVERRIDE and the rest), so that they test the same thing for root as for any other user.
UNPRIVILEGED = {"data_dir not writable", "logs not writable", "checkpoints not writable"}
MOBILENET = str(Path(sys.executable).parent / "mobilenet")


def fails_unprivileged(*args: str) -> str:
    """Run the console script as a user whom file permissions apply to; return what it printed on failure."""
    command = [MOBILENET, args[0], *QUIET, *args[1:]]
    if os.geteuid() == 0:
        command = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0, result.stdout
    return result.stderr


def test_the_matrix_covers_at_least_fifty_mistakes():
    assert len(MATRIX) >= 50 and len({case for case, *_ in MATRIX}) == len(MATRIX)


@pytest.mark.parametrize("case, make_args, expected", MATRIX, ids=[case for case, _, _ in MATRIX])
def test_bad_input_is_explained_and_nothing_is_lost(
    case, make_args, expected, workdir, cifar10_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", ["mobilenet"])
    before = snapshot(workdir)
    args = make_args(cifar10_dir, tmp_path)
    capsys.readouterr()  # what setting the case up printed
    try:
        message = fails_unprivileged(*args) if case in UNPRIVILEGED else fails(*args, capsys=capsys)
    finally:
        for folder in ("logs", "checkpoints"):
            (workdir / folder).chmod(0o755)
    assert "Traceback" not in message and "weights_only=False" not in message
    assert message.count("error:") == 1, f"{case}: not one message:\n{message}"
    for text in expected:
        assert text in message, f"{case}: {text!r} not in {message!r}"
    after = snapshot(workdir)
    assert all(after.get(path) == digest for path, digest in before.items()), "an existing file changed or went"
    assert set(after) - set(before) <= set(made_by_the_case(case)), f"{case} left files: {set(after) - set(before)}"
    assert not (tmp_path / "code-ran").exists(), "loading a checkpoint ran code stored in it"
    assert not list(workdir.rglob(f"*{PARTIAL_MARK}*")) and not list(tmp_path.rglob(".extracting-*"))


def made_by_the_case(case: str) -> list[str]:
    """Files a case sets up itself before the command it checks (a checkpoint to use, a run to break)."""
    if case == "best before any validation":
        return ["checkpoints/never_validated/last.ckpt"]
    return SET_UP.get(case, [])


@pytest.mark.slow
def test_a_non_finite_loss_stops_training_names_the_step_and_keeps_the_last_good_checkpoint(
    workdir, cifar10_dir, monkeypatch, capsys
):
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", ["mobilenet"])
    before = snapshot(workdir)
    # Epoch 0 trains at lr 1e-3; the scheduler then multiplies it by 1e30, which overflows within epoch 1.
    explode = ["--model.lr_scheduler", "torch.optim.lr_scheduler.ExponentialLR", "--model.lr_scheduler.gamma", "1e30"]
    short = ["--trainer.limit_train_batches", str(SHORT_EPOCH), "--trainer.limit_val_batches", "1"]
    message = fails("fit", *small_run_args(cifar10_dir), "--run_name", "diverges", "--trainer.max_epochs", "3",
                    *explode, *short, capsys=capsys)  # fmt: skip
    assert "Traceback" not in message
    assert "The training loss became nan at step" in message and "(epoch 1, batch" in message
    step = int(message.split("at step ")[1].split()[0])
    assert SHORT_EPOCH < step <= 2 * SHORT_EPOCH
    assert "checkpoints/diverges/last.ckpt" in message and "--ckpt_path last" in message
    last = torch.load(workdir / "checkpoints/diverges/last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == SHORT_EPOCH, "last.ckpt must still be the end of the last good epoch"
    assert all(torch.isfinite(value).all() for value in last["state_dict"].values())
    assert "val/acc" in (workdir / "logs/diverges/version_0/metrics.csv").read_text(), "epoch 0's metrics kept"
    assert all(snapshot(workdir)[path] == digest for path, digest in before.items())


@pytest.mark.slow
def test_a_full_disk_while_saving_keeps_the_previous_checkpoints(workdir, cifar10_dir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", ["mobilenet"])
    before = snapshot(workdir)

    def disk_fills_up(checkpoint, file):
        file.write(b"PK\x03\x04 the first bytes of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mobilenet.training.checkpoint_io.torch, "save", disk_fills_up)
    one_step = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    message = fails("fit", *small_run_args(cifar10_dir), "--ckpt_path", "last", "--trainer.max_epochs", "2",
                    *one_step, capsys=capsys)  # fmt: skip
    assert "Traceback" not in message
    assert "Could not save the checkpoint" in message and "the disk is full" in message
    assert "--ckpt_path last" in message
    after = snapshot(workdir)
    assert all(after[path] == digest for path, digest in before.items()), "a checkpoint was damaged"
    assert {p for p in after if p.startswith("checkpoints")} == {p for p in before if p.startswith("checkpoints")}
    assert not list(workdir.rglob(f"*{PARTIAL_MARK}*")), "a partly written file was left behind"


TORCH_WRITE_FAILED = (
    "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/0: file write failed"
)


def a_full_disk(monkeypatch) -> None:
    """torch.save fails the way it does when the disk fills up, and the disk reports almost no free space."""
    import mobilenet.files

    def fails_to_write(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 the first bytes")
        raise RuntimeError(TORCH_WRITE_FAILED)

    monkeypatch.setattr(torch, "save", fails_to_write)
    monkeypatch.setattr(mobilenet.files.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))


def test_a_full_disk_in_torchs_zip_writer_is_the_documented_sentence(workdir, cifar10_dir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", ["mobilenet"])
    before = snapshot(workdir)
    a_full_disk(monkeypatch)
    one_step = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    message = fails("fit", *small_run_args(cifar10_dir), "--ckpt_path", "last", "--trainer.max_epochs", "2",
                    *one_step, capsys=capsys)  # fmt: skip
    assert "Traceback" not in message and "inline_container" not in message
    assert "Could not save the checkpoint" in message and "the disk is full" in message
    output = workdir / "weights.pth"
    message = fails("export", "--ckpt_path", "checkpoints/cifar10/last.ckpt", "--format", "state_dict", "--output",
                    str(output), capsys=capsys)  # fmt: skip
    assert "could not write" in message and "the disk is full" in message and "Traceback" not in message
    after = snapshot(workdir)
    assert all(after[path] == digest for path, digest in before.items()) and not output.exists()
    assert not list(workdir.rglob(f"*{PARTIAL_MARK}*")), "a partly written file was left behind"
