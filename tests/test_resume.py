"""Checkpoints a run can be resumed and evaluated from: kept current, exact on resume, read safely."""

import csv
from pathlib import Path

import pytest
import torch

from conftest import small_run_args
from mobilenet.commands.lightning import build_cli
from mobilenet.errors import UsageError

STEPS_PER_EPOCH = 5  # 80 training images in batches of 16


def run(subcommand: str, data_dir: Path, *extra: str):
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    return build_cli([subcommand, *small_run_args(data_dir), *quiet, *extra])


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


def test_last_checkpoint_is_rewritten_after_every_epoch_even_without_improvement(in_tmp, cifar10_dir):
    # Monitoring the epoch number with mode=min makes epoch 0 the best forever: no later epoch improves.
    run("fit", cifar10_dir, "--trainer.max_epochs", "3", "--checkpoint.monitor", "epoch", "--checkpoint.mode", "min")
    run_dir = in_tmp / "checkpoints" / "cifar10"
    assert load(run_dir / "last.ckpt")["global_step"] == 3 * STEPS_PER_EPOCH
    assert [p.name.split("-val_acc")[0] for p in run_dir.glob("best-*.ckpt")] == ["best-epoch=000"]


def test_a_resumed_run_still_knows_its_best_checkpoint(in_tmp, cifar10_dir):
    never_improves = ("--checkpoint.monitor", "epoch", "--checkpoint.mode", "min")
    run("fit", cifar10_dir, "--trainer.max_epochs", "1", *never_improves)
    run("fit", cifar10_dir, "--trainer.max_epochs", "3", "--ckpt_path", "last", *never_improves)
    run_dir = in_tmp / "checkpoints" / "cifar10"
    assert [p.name.split("-val_acc")[0] for p in run_dir.glob("best-*.ckpt")] == ["best-epoch=000"]
    assert load(run_dir / "last.ckpt")["global_step"] == 3 * STEPS_PER_EPOCH


def metric_rows(path: Path) -> list[dict]:
    with open(path) as file:
        return list(csv.DictReader(file))


def test_resuming_gives_the_weights_and_metrics_of_an_uninterrupted_run(in_tmp, cifar10_dir):
    exact = ("--trainer.deterministic", "true", "--trainer.log_every_n_steps", "1")
    straight = run("fit", cifar10_dir, "--trainer.max_epochs", "2", "--run_name", "straight", *exact)
    run("fit", cifar10_dir, "--trainer.max_epochs", "1", "--run_name", "interrupted", *exact)
    resumed = run(
        "fit", cifar10_dir, "--trainer.max_epochs", "2", "--run_name", "interrupted", "--ckpt_path", "last", *exact
    )
    a = load(in_tmp / "checkpoints" / "straight" / "last.ckpt")["state_dict"]
    b = load(in_tmp / "checkpoints" / "interrupted" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a), "resumed weights differ from the uninterrupted run's"
    assert resumed.trainer.callback_metrics["val/acc"] == straight.trainer.callback_metrics["val/acc"]
    # Every logged value, step by step: epoch 0 from the first part, epoch 1 from the resumed part.
    logs = in_tmp / "logs"
    uninterrupted = metric_rows(logs / "straight" / "version_0" / "metrics.csv")
    in_two_parts = [*metric_rows(logs / "interrupted" / "version_0" / "metrics.csv"),
                    *metric_rows(logs / "interrupted" / "version_1" / "metrics.csv")]  # fmt: skip
    assert len(uninterrupted) > 2 * STEPS_PER_EPOCH
    assert in_two_parts == uninterrupted


def test_evaluation_uses_the_data_settings_the_checkpoint_was_trained_with(in_tmp, cifar10_dir, capsys):
    run("fit", cifar10_dir, "--trainer.max_epochs", "1", "--data.resolution", "40", "--data.split_seed", "7")
    capsys.readouterr()
    # The config says split_seed 0, the command line resolution 36 and width 0.5.
    tested = run("validate", cifar10_dir, "--model.net.width_mult", "0.5", "--data.resolution", "36")
    assert tested.datamodule.resolution == 40 and tested.datamodule.split_seed == 7
    assert tested.model.net.arguments["width_mult"] == 0.25, "the network's shape comes from the checkpoint"
    printed = capsys.readouterr().out
    assert "model.net.width_mult=0.25 (given: 0.5)" in printed and "data.resolution=40 (given: 36)" in printed


def test_a_checkpoint_for_another_number_of_classes_is_refused(in_tmp, cifar10_dir, cifar100_dir):
    run("fit", cifar10_dir, "--trainer.max_epochs", "1")
    checkpoint = load(in_tmp / "checkpoints" / "cifar10" / "last.ckpt")
    trained = str(in_tmp / "checkpoints/cifar10/last.ckpt")
    with pytest.raises(UsageError, match="on cifar10 .10 classes., but the config says --data.dataset cifar100"):
        run("test", cifar100_dir, "--data.dataset", "cifar100", "--ckpt_path", trained)
    checkpoint["mobilenet"]["data"] = None  # as saved by a model trained outside the CLI
    torch.save(checkpoint, in_tmp / "plain.ckpt")
    with pytest.raises(UsageError, match="was trained for 10 classes, but the data has 100"):
        run("test", cifar100_dir, "--data.dataset", "cifar100", "--ckpt_path", str(in_tmp / "plain.ckpt"))


@pytest.mark.parametrize("content", ("truncated", "not a checkpoint"))
def test_unreadable_checkpoint_files_are_named(in_tmp, cifar10_dir, content):
    run("fit", cifar10_dir, "--trainer.max_epochs", "1")
    good = (in_tmp / "checkpoints" / "cifar10" / "last.ckpt").read_bytes()
    bad = in_tmp / "bad.ckpt"
    bad.write_bytes(good[: len(good) // 2] if content == "truncated" else b"hello")
    with pytest.raises(UsageError, match="bad.ckpt' is not a file saved by PyTorch, or it is truncated"):
        run("test", cifar10_dir, "--ckpt_path", str(bad))


def test_fit_from_another_runs_checkpoint_does_not_write_into_a_used_folder(in_tmp, cifar10_dir):
    run("fit", cifar10_dir, "--trainer.max_epochs", "1", "--run_name", "first")
    run("fit", cifar10_dir, "--trainer.max_epochs", "1", "--run_name", "second")
    with pytest.raises(UsageError, match="already holds checkpoints"):
        run("fit", cifar10_dir, "--run_name", "second", "--ckpt_path", "checkpoints/first/last.ckpt")


def test_fit_from_an_older_best_checkpoint_does_not_replace_the_newer_last(in_tmp, cifar10_dir):
    never_improves = ("--checkpoint.monitor", "epoch", "--checkpoint.mode", "min")
    run("fit", cifar10_dir, "--trainer.max_epochs", "2", *never_improves)
    run_dir = in_tmp / "checkpoints" / "cifar10"
    best = next(run_dir.glob("best-*.ckpt"))
    before = (run_dir / "last.ckpt").read_bytes()
    with pytest.raises(
        UsageError, match=r"at step 5 of run 'cifar10', but the run's last.ckpt is at step 10.*--run_name"
    ):
        run("fit", cifar10_dir, "--trainer.max_epochs", "3", "--ckpt_path", str(best), *never_improves)
    assert (run_dir / "last.ckpt").read_bytes() == before
    # Continuing from it as a new run is the way to branch, and leaves the first run as it was.
    run("fit", cifar10_dir, "--trainer.max_epochs", "2", "--run_name", "branch", "--ckpt_path", str(best))
    assert load(in_tmp / "checkpoints" / "branch" / "last.ckpt")["global_step"] == 2 * STEPS_PER_EPOCH
    assert (run_dir / "last.ckpt").read_bytes() == before


def test_a_run_that_reached_max_steps_says_so_on_resume_and_leaves_no_empty_log_folder(in_tmp, cifar10_dir, capsys):
    run("fit", cifar10_dir, "--trainer.max_steps", "3")
    with pytest.raises(SystemExit) as stopped:
        run("fit", cifar10_dir, "--trainer.max_steps", "3", "--ckpt_path", "last")
    assert stopped.value.code == 0
    assert "has trained 3 steps already" in capsys.readouterr().out
    assert sorted(path.name for path in (in_tmp / "logs" / "cifar10").iterdir()) == ["version_0"]


def test_evaluating_another_folders_last_checkpoint_keeps_this_runs_evaluation(in_tmp, cifar10_dir):
    run("fit", cifar10_dir, "--trainer.max_epochs", "1")
    run("fit", cifar10_dir, "--trainer.max_epochs", "1", "--run_name", "other")
    run("test", cifar10_dir, "--ckpt_path", "last")
    ours = in_tmp / "logs" / "cifar10" / "eval" / "last" / "test" / "metrics.csv"
    written = ours.read_bytes()
    run("test", cifar10_dir, "--ckpt_path", "checkpoints/other/last.ckpt")
    assert ours.read_bytes() == written
    assert (in_tmp / "logs" / "cifar10" / "eval" / "other-last" / "test" / "metrics.csv").is_file()


def test_a_checkpoint_filename_with_a_folder_is_refused_before_training(in_tmp, cifar10_dir):
    with pytest.raises(UsageError, match="--checkpoint.filename 'sub/best-{epoch}' holds a folder"):
        run("fit", cifar10_dir, "--checkpoint.filename", "sub/best-{epoch}")
    assert not (in_tmp / "checkpoints" / "cifar10").exists()
