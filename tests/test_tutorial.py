"""`mobilenet import-tutorial`: the reference tutorial's weights become a checkpoint with the same function."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mobilenet import MobileNetV1
from mobilenet.commands.lightning import build_cli
from mobilenet.deploy import export
from mobilenet.deploy.artifacts import load
from mobilenet.deploy.classifier import open_classifier
from mobilenet.deploy.tutorial import convert_state_dict
from mobilenet.errors import UsageError
from tutorial_net import TutorialMobileNet, randomise_batchnorm

MOBILENET = str(Path(sys.executable).parent / "mobilenet")


def tutorial_net(bias: bool = False, seed: int = 0) -> TutorialMobileNet:
    torch.manual_seed(seed)
    return randomise_batchnorm(TutorialMobileNet(num_classes=10, bias=bias), seed)


def converted(state_dict: dict) -> MobileNetV1:
    weights, model = convert_state_dict(state_dict)
    net = MobileNetV1(**model)
    net.load_state_dict(weights)
    return net.eval()


@pytest.mark.parametrize("bias", (False, True), ids=("bias-free convs", "convs with bias"))
def test_converted_network_computes_the_tutorials_logits(bias):
    theirs = tutorial_net(bias)
    ours = converted(theirs.state_dict())
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        expected = theirs(images)
        assert expected.std(dim=0).mean() > 0.05, "logits that ignore the image would make this test empty"
        # Folding a bias into the running mean reorders float additions over 27 layers: measured 3e-5.
        assert (ours(images) - expected).abs().max() < (1e-4 if bias else 1e-5)


def test_the_comparison_would_notice_relu_in_place_of_relu6():
    # Guards the test above: with these weights ReLU6's clipping changes the logits, so a conversion that
    # lost the tutorial's activations could not pass it.
    theirs = tutorial_net()
    weights, model = convert_state_dict(theirs.state_dict())
    wrong = MobileNetV1(**{**model, "activation": "relu", "stem_activation": "relu"})
    wrong.load_state_dict(weights)
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        assert (wrong.eval()(images) - theirs(images)).abs().max() > 1e-3


def test_wrong_and_missing_keys_are_listed():
    state = tutorial_net().state_dict()
    del state["layers.3.pointConv.1.running_var"]
    del state["linear.bias"]
    state["fc.weight"] = torch.zeros(10, 1024)
    with pytest.raises(UsageError) as error:
        convert_state_dict(state)
    message = str(error.value)
    assert "missing 2: layers.3.pointConv.1.running_var, linear.bias" in message
    assert "unexpected 1: fc.weight" in message


def test_a_wholly_different_state_dict_gets_a_short_message():
    with pytest.raises(UsageError) as error:
        convert_state_dict({"fc.weight": torch.zeros(10, 1024)})  # none of the tutorial's 137 tensors
    message = str(error.value)
    assert "missing 137: bn1.bias, bn1.running_mean" in message and "(131 more)" in message
    assert len(message) < 500


def test_wrongly_shaped_tensors_are_listed():
    state = tutorial_net().state_dict()
    state["layers.5.depthConv.0.weight"] = torch.zeros(100, 1, 3, 3)
    with pytest.raises(
        UsageError, match=r"layers\.5\.depthConv\.0\.weight \(100, 1, 3, 3\) \(expected \(256, 1, 3, 3\)\)"
    ):
        convert_state_dict(state)


@pytest.mark.slow
def test_imported_checkpoint_works_with_test_predict_and_export(tmp_path, cifar10_dir, in_tmp):
    theirs = tutorial_net()
    # Saved the way kuangliu-style training scripts do: wrapped, with DataParallel's prefix.
    torch.save({"net": {f"module.{k}": v for k, v in theirs.state_dict().items()}, "acc": 85.46}, "tutorial.pth")
    result = subprocess.run(
        [MOBILENET, "import-tutorial", "tutorial.pth", "--output", "imported.ckpt",
         "--data.data_dir", str(cifar10_dir)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Wrote imported.ckpt: MobileNetV1 α = 1, 10 classes (cifar10)" in result.stdout

    imported = load("imported.ckpt")
    net, metadata = imported.network, imported.metadata
    assert metadata.class_names[:2] == ["airplane", "automobile"] and metadata.resolution == 32
    images = 4 * torch.randn(3, 3, 32, 32)  # bright enough that ReLU6 would clip the stem's outputs
    classifier = open_classifier("imported.ckpt")  # what `classify` and `report` run
    relu6_stem = MobileNetV1(**{**metadata.network, "stem_activation": None})
    relu6_stem.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert (net(images) - theirs(images)).abs().max() < 1e-5
        # Channels-last convolutions sum in another order: measured 1.1e-5 on these logits.
        assert (classifier.network(images) - theirs(images)).abs().max() < 1e-4
        assert (relu6_stem.eval()(images) - theirs(images)).abs().max() > 1e-3, "the check above would be empty"

    # The checkpoint alone is enough: the data it names (its data_dir) is found without a config.
    data = ["--data.verify", "false", "--ckpt_path", "imported.ckpt", "--trainer.enable_progress_bar", "false"]
    tested = build_cli(["test", *data])
    assert 0 <= tested.trainer.callback_metrics["test/acc"] <= 1
    build_cli(["predict", *data])
    assert len(list(Path("logs").rglob("predictions.csv"))) == 1
    report = export.export(load("imported.ckpt"), "state_dict", Path("imported.pth"))
    assert any("state_dict reloaded vs PyTorch: max |Δlogit| = 0.00e+00" in line for line in report)

    again = subprocess.run(
        [MOBILENET, "import-tutorial", "tutorial.pth", "--output", "imported.ckpt",
         "--data.data_dir", str(cifar10_dir)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode != 0 and "'imported.ckpt' already exists and is kept" in again.stderr
