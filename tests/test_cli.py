"""The `mobilenet` console script in a subprocess, as a user runs it: one grammar for the nine commands, a run
trained once and then evaluated, resumed, classified and exported from its checkpoints alone."""

import copy
import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from conftest import CONFIGS, small_run_args
from fake_images import CLASSES, write_image_folder
from mobilenet.commands import COMMANDS, main

MOBILENET = str(Path(sys.executable).parent / "mobilenet")
STEPS_PER_EPOCH = 5  # 100 training images - 20 for validation, in batches of 16


def mobilenet(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([MOBILENET, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def small_run(data_dir: Path) -> list[str]:
    return [*small_run_args(data_dir), "--trainer.log_every_n_steps", "1"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def csv_rows(path: Path) -> list[dict]:
    with open(path) as file:
        return list(csv.DictReader(file))


def help_of(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--help"])
    assert exit_.value.code in (0, None)
    return capsys.readouterr().out


def test_help_lists_all_nine_commands_in_its_usage_line(in_tmp, capsys):
    usage = help_of(capsys).split("\n\n")[0]
    assert all(name in usage for name in COMMANDS) and len(COMMANDS) == 9


# The option groups each command uses: its --help lists those (and no other command's options).
USES = {
    **dict.fromkeys(
        ("fit", "validate", "test", "predict", "summary"), ("--model.", "--data.", "--run_name", "--ckpt_path")
    ),
    "classify": ("--run_name", "--ckpt_path"),
    "report": ("--data.", "--run_name", "--ckpt_path"),
    "export": ("--data.", "--run_name", "--ckpt_path"),
    "import-tutorial": ("--data.",),
}
GROUPS = ("--model.", "--data.", "--run_name", "--ckpt_path")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_help_lists_the_options_it_uses_and_no_others(command, in_tmp, capsys):
    text = help_of(capsys, command)
    assert "--config" in text
    for option in GROUPS:
        assert (option in text) == (option in USES[command]), f"`mobilenet {command} --help` and {option}"
    if "--ckpt_path" in USES[command]:  # this project's meaning of --ckpt_path
        assert "'last' (the run's checkpoints/<run_name>/last.ckpt), 'best' (the file" in " ".join(text.split())
    if "--data." in USES[command]:  # the data options, which a --data class choice would hide
        assert "--data.val_size" in text and "--data.root" in text and "--data.data_dir" in text
    # Training-only options appear where training is: import-tutorial listed them all before.
    assert ("--checkpoint.every_n_train_steps" in text) == (command in ("fit", "validate", "test", "predict"))


def test_classify_takes_a_training_config_whole(in_tmp, capsys):
    """One config file serves every command: the groups classify does not use are accepted and ignored."""
    image = sorted((CONFIGS.parent / "tests" / "assets" / "cifar10_sample").glob("*.jpg"))[0]
    shipped = CONFIGS.parent / "checkpoints" / "mobilenet_v1_cifar10.safetensors"
    main(["classify", "--config", str(CONFIGS / "cifar10_fast.yaml"), "--checkpoint.dirpath", "elsewhere",
          "--ckpt_path", str(shipped), str(image)])  # fmt: skip
    assert capsys.readouterr().out.startswith(f"{image}: ")


@pytest.mark.slow
def test_print_config_shows_the_reference_recipe(tmp_path):
    result = mobilenet("fit", "--config", str(CONFIGS / "cifar10.yaml"), "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["model"]["optimizer"]["class_path"] == "torch.optim.Adam"
    assert config["model"]["optimizer"]["init_args"]["lr"] == 0.001
    assert config["model"]["net"]["init_args"]["width_mult"] == 1.0
    assert config["trainer"]["max_epochs"] == 100
    assert config["data"]["class_path"] == "mobilenet.data.CIFARDataModule"
    data = config["data"]["init_args"]
    assert data["batch_size"] == 128 and data["val_size"] == 1000
    assert data["augment"] == "seed" and data["dataset"] == "cifar10"


def print_config(cwd: Path, *files: str) -> dict:
    argv = [arg for name in files for arg in ("--config", str(CONFIGS / name))]
    result = mobilenet("fit", *argv, "--print_config", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def fast_config(tmp_path_factory) -> dict:
    """configs/cifar10_fast.yaml as the CLI resolves it, read once for every overlay."""
    return print_config(tmp_path_factory.mktemp("fast"), "cifar10_fast.yaml")


@pytest.mark.parametrize(
    ("overlay", "changes"),
    [
        # the one-hour recipe and the shipped model's: the tuned recipe stretched, in bf16, with Cutout on top of
        # crop and flip
        ("cifar10_hour.yaml", {("data", "augment"): ("cutout", "standard")}),
        ("cifar10_long.yaml", {("data", "augment"): ("cutout", "standard")}),
    ],
)
def test_recipe_overlays_change_only_what_they_say(tmp_path, fast_config, overlay, changes):
    """An overlay of configs/cifar10_fast.yaml changes the length, the precision, the name and what it lists."""
    fast = copy.deepcopy(fast_config)
    overlaid = print_config(tmp_path, "cifar10_fast.yaml", overlay)
    assert overlaid["trainer"].pop("max_epochs") > fast["trainer"].pop("max_epochs")
    assert (overlaid["trainer"].pop("precision"), fast["trainer"].pop("precision")) == ("bf16-mixed", None)
    assert (overlaid.pop("run_name"), fast.pop("run_name")) == (overlay.removesuffix(".yaml"), None)
    for (section, key), values in changes.items():
        assert (overlaid[section]["init_args"].pop(key), fast[section]["init_args"].pop(key)) == values
    assert overlaid == fast


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cifar10_dir) -> tuple[Path, subprocess.CompletedProcess]:
    """A working folder after `mobilenet fit` for one epoch, and what the fit printed (to a pipe, not a terminal)."""
    workdir = tmp_path_factory.mktemp("workdir")
    result = mobilenet("fit", *small_run(cifar10_dir), "--trainer.max_epochs", "1", cwd=workdir)
    assert result.returncode == 0, result.stderr
    return workdir, result


@pytest.mark.slow
def test_fit_writes_checkpoints_metrics_and_the_resolved_config(trained):
    workdir, _ = trained
    run_dir = workdir / "checkpoints" / "cifar10"
    assert (run_dir / "last.ckpt").is_file()
    assert len(list(run_dir.glob("best-epoch=000-val_acc=*.ckpt"))) == 1
    log_dir = workdir / "logs" / "cifar10" / "version_0"
    rows = csv_rows(log_dir / "metrics.csv")
    assert any(row["val/acc"] != "" and row["epoch"] == "0" for row in rows)
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["data"]["init_args"]["val_size"] == 20 and saved["model"]["net"]["init_args"]["width_mult"] == 0.25
    assert not (workdir / "logs" / "wandb").exists() and not (workdir / "wandb").exists(), "W&B only when asked for"


@pytest.mark.slow
def test_fit_prints_whole_lines_and_the_networks_cost_without_empty_rows(trained):
    _, result = trained
    assert "\r" not in result.stdout + result.stderr, "progress bars redraw with \\r; a log file wants lines"
    assert "epoch 1/1  step 5/5  loss " in result.stdout and "epoch 1 validation: val/acc " in result.stdout
    output = result.stdout + result.stderr  # the summary is logged (stderr), progress printed (stdout)
    banner = output.split("Total Flops")[0]
    assert "| net  | MobileNetV1" in banner and "MetricCollection" not in banner and "CrossEntropyLoss" not in banner
    assert " M multiply-adds per image" in output and "0         Total Flops" not in output


@pytest.mark.slow
def test_a_fresh_fit_refuses_to_mix_with_an_existing_run(trained, cifar10_dir):
    workdir, _ = trained
    last = workdir / "checkpoints" / "cifar10" / "last.ckpt"
    before = digest(last)
    result = mobilenet("fit", *small_run(cifar10_dir), "--trainer.max_epochs", "1", cwd=workdir)
    assert result.returncode != 0
    assert "already holds checkpoints" in result.stderr and "--ckpt_path last" in result.stderr
    assert "Traceback" not in result.stderr
    assert digest(last) == before
    assert sorted(p.name for p in (workdir / "logs" / "cifar10").iterdir()) == ["version_0"]


@pytest.mark.slow
def test_evaluating_from_the_checkpoint_alone(trained):
    """No --config: the run name, the data folder and the network come from the checkpoint, and each evaluation
    writes to its own folder, never into the training run's version folders. (Verification is never the
    checkpoint's to turn off: these generated files are not the official ones, so the user says so.)"""
    workdir, _ = trained
    last = "checkpoints/cifar10/last.ckpt"
    unofficial = ("--data.verify", "false")
    for command in ("test", "validate", "predict"):
        result = mobilenet(command, "--ckpt_path", last, *unofficial, cwd=workdir)
        assert result.returncode == 0, result.stderr
        output = result.stdout + result.stderr
        assert "the config said" not in output and "dirpath" not in output.lower() and "given:" not in output
        assert (workdir / "logs" / "cifar10" / "eval" / "last" / command).is_dir()
    assert sorted(p.name for p in (workdir / "logs" / "cifar10").iterdir()) == ["eval", "version_0"]
    validated = mobilenet("validate", "--ckpt_path", last, *unofficial, cwd=workdir)
    assert "val/acc_best" not in validated.stdout, "the best of the training run is not this evaluation's result"
    printed = next(line.split()[1] for line in validated.stdout.splitlines() if line.strip().startswith("val/acc "))
    trained_rows = csv_rows(workdir / "logs" / "cifar10" / "version_0" / "metrics.csv")
    logged = [row["val/acc"] for row in trained_rows if row["val/acc"]][-1]
    assert float(printed) == pytest.approx(float(logged)), "validating the last checkpoint must reproduce epoch 0"


@pytest.mark.slow
def test_classify_report_export_and_summary_take_the_same_checkpoint_grammar(trained, tmp_path):
    workdir, _ = trained
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (220, 30, 30)).save(image)
    classified = mobilenet("classify", str(image), "--run_name", "cifar10", "--ckpt_path", "last", cwd=workdir)
    assert classified.returncode == 0, classified.stderr
    assert classified.stdout.startswith(f"{image}: ")
    exported = mobilenet("export", "--run_name", "cifar10", "--ckpt_path", "best", "--format", "state_dict",
                         "--output", str(tmp_path / "best.pth"), cwd=workdir)  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    best = next((workdir / "checkpoints" / "cifar10").glob("best-*.ckpt"))
    trained_weights = torch.load(best, weights_only=True)["state_dict"]
    exported_weights = torch.load(tmp_path / "best.pth", weights_only=True)
    assert set(exported_weights) == {key.removeprefix("net.") for key in trained_weights if key.startswith("net.")}
    assert all(torch.equal(exported_weights[key], trained_weights[f"net.{key}"]) for key in exported_weights)
    summary = mobilenet("summary", "--ckpt_path", "checkpoints/cifar10/last.ckpt", cwd=workdir)
    assert summary.returncode == 0 and "α=0.25" in summary.stdout
    report = mobilenet("report", "--ckpt_path", "checkpoints/cifar10/last.ckpt", "--data.verify", "false", cwd=workdir)
    assert report.returncode == 0, report.stderr
    assert (workdir / "logs" / "cifar10" / "eval" / "last" / "report" / "confusion_matrix.png").is_file()


@pytest.mark.slow
def test_resume_continues_the_run_in_a_new_version(trained, cifar10_dir):
    workdir, _ = trained
    resumed = mobilenet("fit", *small_run(cifar10_dir), "--trainer.max_epochs", "2", "--ckpt_path", "last", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    rows = csv_rows(workdir / "logs" / "cifar10" / "version_1" / "metrics.csv")
    assert {row["epoch"] for row in rows} == {"1"}, "the resumed run must continue at epoch 1, not redo epoch 0"
    last = torch.load(workdir / "checkpoints" / "cifar10" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == 2 * STEPS_PER_EPOCH

    predicted = mobilenet("predict", *small_run(cifar10_dir), "--ckpt_path", "last", cwd=workdir)
    assert predicted.returncode == 0, predicted.stderr
    assert "Wrote 30 predictions to logs/cifar10/eval/last/predict/predictions.csv" in predicted.stdout
    predictions = csv_rows(workdir / "logs" / "cifar10" / "eval" / "last" / "predict" / "predictions.csv")
    assert len(predictions) == 30
    assert {row["prediction_name"] for row in predictions} <= {
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}  # fmt: skip
    assert all(0 <= float(row["confidence"]) <= 1 for row in predictions)


@pytest.mark.slow
def test_best_follows_the_checkpoint_callback_whatever_the_file_names(tmp_path, cifar10_dir):
    fit = mobilenet("fit", *small_run(cifar10_dir), "--trainer.max_epochs", "2", "--checkpoint.filename", "ep{epoch}",
                    cwd=tmp_path)  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    files = sorted(p.name for p in (tmp_path / "checkpoints" / "cifar10").glob("*.ckpt"))
    assert "last.ckpt" in files and any(name.startswith("ep") for name in files)
    tested = mobilenet("test", *small_run(cifar10_dir), cwd=tmp_path)  # --ckpt_path best is the default
    assert tested.returncode == 0, tested.stderr
    recorded = torch.load(tmp_path / "checkpoints" / "cifar10" / "last.ckpt", weights_only=True)["callbacks"]
    best = next(Path(s["best_model_path"]).stem for s in recorded.values() if s.get("monitor") == "val/acc")
    assert (tmp_path / "logs" / "cifar10" / "eval" / best / "test" / "metrics.csv").is_file()


@pytest.mark.slow
def test_missing_dataset_stops_with_one_clear_message(tmp_path):
    result = mobilenet("fit", "--config", str(CONFIGS / "cifar10.yaml"), "--data.data_dir", str(tmp_path / "empty"),
                       "--data.download", "false", cwd=tmp_path)  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]  # one paragraph, last thing printed
    assert message.startswith("mobilenet: error: CIFAR-10 is not in")
    for expected in ("cifar-10-batches-py", "data_batch_1", "cifar-10-python.tar.gz",
                     "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "--data.data_dir"):  # fmt: skip
        assert expected in message
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_asking_for_a_checkpoint_a_run_does_not_have(tmp_path, cifar10_dir):
    result = mobilenet(
        "test", *small_run(cifar10_dir), "--run_name", "never_trained", "--ckpt_path", "best", cwd=tmp_path
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no checkpoint in 'checkpoints/never_trained'" in result.stderr


@pytest.mark.slow
def test_an_image_folder_run_is_evaluated_exported_and_classified_from_its_checkpoint(tmp_path):
    root = write_image_folder(tmp_path / "images")  # 93 training images in 3 classes, 15 test images
    recipe = [
        "--config", str(CONFIGS / "cifar10_fast.yaml"), "--data", "ImageFolderDataModule", "--data.root", str(root),
        "--data.val_size", "13", "--data.batch_size", "16", "--model.net.width_mult", "0.25",
        "--trainer.max_epochs", "1",
    ]  # fmt: skip
    fit = mobilenet("fit", *recipe, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    assert "Decoding" in fit.stderr and "93/93" in fit.stderr  # the progress bar of the one-time decode
    best = "checkpoints/cifar10_fast/last.ckpt"

    predicted = mobilenet("predict", "--ckpt_path", best, cwd=tmp_path)  # the data comes from the checkpoint
    assert predicted.returncode == 0, predicted.stderr
    assert "15/15" in predicted.stderr and "93/93" not in predicted.stderr  # decodes test/ only, once
    csv_path = tmp_path / predicted.stdout.split("Wrote 15 predictions to ")[1].split(" (accuracy")[0]
    assert {row["label_name"] for row in csv_rows(csv_path)} == set(CLASSES)
    # A config that names only CIFAR recipe settings still means the checkpoint's image folders.
    tested = mobilenet("test", "--config", str(CONFIGS / "cifar10_fast.yaml"), cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr
    assert "test/acc" in tested.stdout + tested.stderr and "Decoding" not in tested.stderr  # the cached test/ images

    exported = mobilenet("export", "--ckpt_path", best, "--format", "onnx", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    classified = mobilenet("classify", str(root / "test" / "dog"), "--ckpt_path", best.replace(".ckpt", ".onnx"),
                           cwd=tmp_path)  # fmt: skip
    assert classified.returncode == 0, classified.stderr
    assert all(line.split(": ")[1].split()[0] in CLASSES for line in classified.stdout.splitlines())

    (root / "train" / "cat").rename(root / "train" / "kitten")  # a renamed class folder
    renamed = mobilenet("test", "--ckpt_path", best, cwd=tmp_path)
    assert renamed.returncode != 0 and "Traceback" not in renamed.stderr
    assert "new: kitten; missing: cat" in renamed.stderr
