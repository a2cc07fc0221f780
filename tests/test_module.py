"""The LightningModule through the real CLI wiring, in-process (the console script is in test_cli.py)."""

import csv
from pathlib import Path

import pytest
import torch

from conftest import small_run_args
from mobilenet import MobileNetV1
from mobilenet.commands.lightning import build_cli
from mobilenet.training.module import MobileNetClassifier


def small_run(data_dir: Path, config: str = "cifar10.yaml", *extra: str) -> list[str]:
    return [
        *small_run_args(data_dir, config),
        "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        *extra,
    ]  # fmt: skip


def metric_rows(log_dir: Path) -> list[dict]:
    with open(log_dir / "metrics.csv") as file:
        return list(csv.DictReader(file))


def logged_names(rows: list[dict]) -> set[str]:
    return {key for row in rows for key, value in row.items() if value != ""}


def test_fit_and_test_log_the_namespaced_metrics(in_tmp, cifar10_dir):
    cli = build_cli(["fit", *small_run(cifar10_dir)])
    names = logged_names(metric_rows(Path(cli.trainer.log_dir)))
    assert {"train/loss", "train/loss_step", "train/acc", "val/loss", "val/acc", "val/acc_best"} <= names
    assert not any("top5" in name for name in names)  # ten classes: top-5 says little

    cli = build_cli(["test", *small_run(cifar10_dir), "--ckpt_path", "best"])
    assert {"test/loss", "test/acc"} <= logged_names(metric_rows(Path(cli.trainer.log_dir)))


def test_train_loss_is_the_epoch_mean_over_images_and_the_bar_shows_the_latest_step(in_tmp, cifar10_dir):
    cli = build_cli(["fit", *small_run(cifar10_dir), "--data.batch_size", "24"])  # 80 images: 24, 24, 24, 8
    rows = metric_rows(Path(cli.trainer.log_dir))
    steps = [float(row["train/loss_step"]) for row in rows if row["train/loss_step"]]
    epoch_loss = next(float(row["train/loss"]) for row in rows if row["train/loss"])
    assert len(steps) == 4
    assert epoch_loss == pytest.approx((24 * sum(steps[:3]) + 8 * steps[3]) / 80, rel=1e-5)
    assert cli.trainer.progress_bar_metrics["loss"] == pytest.approx(steps[-1])


def test_cifar100_links_100_classes_and_adds_top5(in_tmp, cifar100_dir):
    cli = build_cli(["fit", *small_run(cifar100_dir, "cifar100.yaml")])
    assert cli.model.net.classifier.out_features == 100
    names = logged_names(metric_rows(Path(cli.trainer.log_dir)))
    assert {"train/acc_top5", "val/acc_top5"} <= names


def test_val_acc_best_is_the_best_validation_accuracy_so_far(in_tmp, cifar10_dir):
    cli = build_cli(["fit", *small_run(cifar10_dir, "cifar10.yaml", "--trainer.max_epochs", "3",
                                       "--model.optimizer.lr", "0.01")])  # fmt: skip
    rows = [r for r in metric_rows(Path(cli.trainer.log_dir)) if r["val/acc"]]
    accs = [float(r["val/acc"]) for r in rows]
    assert [float(r["val/acc_best"]) for r in rows] == pytest.approx([max(accs[: i + 1]) for i in range(len(accs))])


def test_optimiser_and_one_cycle_schedule_come_from_the_config(in_tmp, cifar10_dir):
    cli = build_cli([
        "fit", *small_run(cifar10_dir, "cifar10.yaml", "--trainer.max_epochs", "2"),
        "--model.optimizer", "torch.optim.SGD", "--model.optimizer.lr", "0.05",
        "--model.optimizer.momentum", "0.9", "--model.optimizer.nesterov", "true",
        "--model.lr_scheduler", "torch.optim.lr_scheduler.OneCycleLR", "--model.lr_scheduler.max_lr", "0.1",
        "--model.lr_scheduler_interval", "step",
    ])  # fmt: skip
    optimiser = cli.trainer.optimizers[0]
    assert isinstance(optimiser, torch.optim.SGD) and optimiser.defaults["nesterov"]
    scheduler_config = cli.trainer.lr_scheduler_configs[0]
    assert isinstance(scheduler_config.scheduler, torch.optim.lr_scheduler.OneCycleLR)
    assert scheduler_config.interval == "step"
    steps = cli.trainer.global_step
    assert steps == 2 * 5  # 80 training images in batches of 16, two epochs
    assert scheduler_config.scheduler.total_steps == steps  # filled in from the run's length
    lrs = [float(r["train/lr"]) for r in metric_rows(Path(cli.trainer.log_dir)) if r["train/lr"]]
    assert len(lrs) == 2 and lrs[1] > lrs[0]  # warming up towards max_lr


def test_label_smoothing_mixes_the_uniform_distribution_into_the_targets():
    torch.manual_seed(0)
    model = MobileNetClassifier(MobileNetV1(width_mult=0.25), label_smoothing=0.1).eval()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    with torch.no_grad():
        loss = model.shared_step((images, labels), model.val_metrics)
        log_p = model(images).log_softmax(dim=1)
    # (1 - ε) · cross-entropy with the label + ε · cross-entropy with the uniform distribution over 10 classes
    expected = 0.9 * -log_p[torch.arange(4), labels].mean() + 0.1 * -log_p.mean(dim=1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_checkpoint_alone_rebuilds_the_model(in_tmp, cifar10_dir):
    cli = build_cli(["fit", *small_run(cifar10_dir, "cifar10.yaml", "--model.net.activation", "relu6")])
    checkpoint = Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    rebuilt = MobileNetClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    assert rebuilt.net.arguments["width_mult"] == 0.25 and rebuilt.net.arguments["activation"] == "relu6"
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rebuilt(images), cli.model.eval()(images), atol=1e-6)
    # One record of plain data (safe to read with weights_only=True), naming no class to import.
    saved = torch.load(checkpoint, weights_only=True, map_location="cpu")
    assert saved["mobilenet"]["network"]["num_classes"] == 10 and "hyper_parameters" not in saved
    assert saved["mobilenet"]["data"]["class_path"] == "mobilenet.data.CIFARDataModule"


def test_weight_decay_skips_exactly_the_chosen_parameter_kinds():
    model = MobileNetClassifier(MobileNetV1(width_mult=0.25), no_weight_decay=["norm", "depthwise", "bias"])
    model.optimizer = lambda params: torch.optim.SGD(params, lr=0.1, weight_decay=5e-4)
    decayed, exempt = model.configure_optimizers().param_groups
    assert decayed["weight_decay"] == 5e-4 and exempt["weight_decay"] == 0.0
    exempt_ids = {id(p) for p in exempt["params"]}
    for name, module in model.net.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert {id(module.weight), id(module.bias)} <= exempt_ids, name
        elif isinstance(module, torch.nn.Conv2d):
            is_depthwise = module.groups > 1
            assert (id(module.weight) in exempt_ids) == is_depthwise, name
    assert id(model.net.classifier.bias) in exempt_ids and id(model.net.classifier.weight) not in exempt_ids
    assert len(decayed["params"]) + len(exempt["params"]) == len(list(model.parameters()))


def test_test_time_flip_gives_mirror_images_the_same_prediction(in_tmp, cifar10_dir):
    model = MobileNetClassifier(MobileNetV1(width_mult=0.25), test_time_flip=True).eval()
    images = torch.randn(4, 3, 32, 32)
    labels = torch.zeros(4, dtype=torch.long)
    with torch.no_grad():
        plain = model.predict_step((images, labels), 0)
        mirrored = model.predict_step((images.flip(-1), labels), 0)
    assert torch.equal(plain["prediction"], mirrored["prediction"])
    assert torch.allclose(plain["confidence"], mirrored["confidence"], atol=1e-6)

    build_cli(["fit", *small_run(cifar10_dir)])  # trained without it: the option is the evaluation's own
    for stage, prefix in (("test", "test"), ("validate", "val")):
        cli = build_cli([stage, *small_run(cifar10_dir, "cifar10.yaml", "--model.test_time_flip", "true")])
        assert {f"{prefix}/acc", f"{prefix}/acc_flip"} <= logged_names(metric_rows(Path(cli.trainer.log_dir)))


@pytest.mark.slow
def test_compiled_training_writes_checkpoints_an_uncompiled_model_loads(in_tmp, cifar10_dir):
    # About 40 s on 2 CPU cores, nearly all of it torch.compile building the forward and backward graphs.
    cli = build_cli(["fit", *small_run(cifar10_dir), "--model.compile", "true",
                     "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"])  # fmt: skip
    assert cli.model.network_compiled
    checkpoint = torch.load(Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt", weights_only=True)
    plain = MobileNetClassifier(MobileNetV1(num_classes=10, width_mult=0.25))
    assert set(checkpoint["state_dict"]) == set(plain.state_dict())
    plain.load_state_dict(checkpoint["state_dict"])
    assert "compile" not in str(checkpoint["mobilenet"]["network"])


def test_channels_last_changes_the_memory_order_not_the_logits():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32)
    fast = MobileNetClassifier(MobileNetV1(num_classes=10, width_mult=0.25)).eval()
    plain = MobileNetClassifier(MobileNetV1(num_classes=10, width_mult=0.25), channels_last=False).eval()
    plain.load_state_dict(fast.state_dict())
    assert fast.net.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.net.features[0][0].weight.is_contiguous()
    with torch.no_grad():
        assert torch.allclose(fast(images), plain(images), atol=1e-5)
