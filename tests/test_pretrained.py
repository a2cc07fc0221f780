"""The trained model shipped in checkpoints/: it classifies real CIFAR-10 images as its model card says, and every
way of reaching it (from_pretrained, torch.hub, the commands with no --ckpt_path) gives the same network."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from mobilenet import from_pretrained, shipped
from mobilenet.commands import main
from mobilenet.data.images import read_image
from mobilenet.deploy.artifacts import load
from mobilenet.deploy.classifier import open_classifier
from mobilenet.errors import UsageError
from mobilenet.shipped import shipped_path

MOBILENET = str(Path(sys.executable).parent / "mobilenet")
# 20 images of the shared CIFAR-10 JPEG copy, two per class, from the validation split the model was not
# trained on (file names: <class>_<number>.jpg).
SAMPLE = REPO / "tests" / "assets" / "cifar10_sample"
CARD = REPO / "docs" / "model_card.md"


def sample() -> tuple[list[Path], list[str]]:
    files = sorted(SAMPLE.glob("*.jpg"))
    return files, [path.name.rsplit("_", 1)[0] for path in files]


def stated_sample_accuracy() -> int:
    """How many of the sample images the model card says the shipped model gets right."""
    found = re.search(r"(\d+) of the 20 sample images", CARD.read_text())
    assert found, "docs/model_card.md states how many of the 20 sample images the model classifies correctly"
    return int(found.group(1))


def test_the_shipped_model_classifies_the_sample_as_its_card_states():
    artifact = load(shipped_path("cifar10"))
    assert artifact.kind == "safetensors" and shipped_path("cifar10").stat().st_size < 8_000_000
    files, truth = sample()
    assert len(files) == 20 and len(set(truth)) == 10
    classifier = open_classifier(artifact)
    predicted = classifier.probabilities(torch.stack([read_image(path) for path in files])).argmax(dim=1)
    right = sum(classifier.class_names[i] == label for i, label in zip(predicted.tolist(), truth, strict=True))
    assert right == stated_sample_accuracy()


def test_from_pretrained_and_torch_hub_give_the_shipped_network_ready_for_eval():
    net = from_pretrained("cifar10")
    assert not net.training and net.metadata.class_names[0] == "airplane" and net.metadata.resolution == 32
    hub = torch.hub.load(str(REPO), "mobilenet_v1", source="local", pretrained=True, trust_repo=True)
    batch = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(hub(batch), net(batch))
    fresh = torch.hub.load(str(REPO), "mobilenet_v1", source="local", width_mult=0.5, trust_repo=True)
    assert fresh.arguments["width_mult"] == 0.5 and fresh.training


@pytest.mark.slow
def test_the_commands_use_the_shipped_model_when_no_checkpoint_is_given(tmp_path):
    files, truth = sample()
    classified = subprocess.run([MOBILENET, "classify", str(SAMPLE), "--json"], cwd=tmp_path, capture_output=True,
                                text=True, timeout=300)  # fmt: skip
    assert classified.returncode == 0, classified.stderr
    assert "Using the shipped model" in classified.stderr and "mobilenet_v1_cifar10.safetensors" in classified.stderr
    results = {
        Path(result["file"]).name: result["top"][0]["class"] for result in json.loads(classified.stdout)["results"]
    }
    assert sorted(results) == [path.name for path in files]
    assert (
        sum(results[path.name] == label for path, label in zip(files, truth, strict=True)) == stated_sample_accuracy()
    )
    shipped = str(shipped_path("cifar10"))
    summary = subprocess.run([MOBILENET, "summary", "--ckpt_path", shipped], capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert summary.returncode == 0 and "α=1" in summary.stdout and "10 classes" in summary.stdout
    output = str(tmp_path / "shipped.onnx")
    export = [MOBILENET, "export", "--ckpt_path", shipped, "--format", "onnx", "--output", output]
    exported = subprocess.run(export, capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr
    assert open_classifier(tmp_path / "shipped.onnx").class_names == load(shipped).metadata.class_names


def test_a_damaged_or_replaced_shipped_file_is_refused_not_loaded(tmp_path, monkeypatch, capsys):
    copy = tmp_path / "checkpoints"
    copy.mkdir()
    original = shipped_path("cifar10")
    data = bytearray(original.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the weights: still a readable safetensors file
    (copy / original.name).write_bytes(bytes(data))
    monkeypatch.setattr(shipped, "LOCATIONS", (copy,))
    with pytest.raises(UsageError, match=r"is not the shipped model 'cifar10': its sha256 is .* not loaded"):
        from_pretrained("cifar10")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="mobilenet: error: .* is not the shipped model"):
        main(["classify", str(SAMPLE)])
    (copy / original.name).unlink()
    with pytest.raises(UsageError, match=r"is not installed: it was looked for in .*--ckpt_path"):
        from_pretrained("cifar10")


@pytest.mark.slow
def test_a_wheel_carries_the_shipped_model_outside_the_repository(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", str(REPO),
                            "-w", str(wheels)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("mobilenet-*.whl")
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
                               capture_output=True, text=True, timeout=600)  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # the installed wheel, not this checkout
    check = (
        "import mobilenet, torch; net = mobilenet.from_pretrained('cifar10'); "
        "print(mobilenet.__file__); print(net.metadata.class_names[0], net(torch.zeros(1, 3, 32, 32)).shape)"
    )
    loaded = subprocess.run([sys.executable, "-c", check], cwd=outside, env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.splitlines()[0].startswith(str(site)), "imported the checkout instead of the wheel"
    assert loaded.stdout.splitlines()[1] == "airplane torch.Size([1, 10])"
    image = SAMPLE / "cat_0003.jpg" if (SAMPLE / "cat_0003.jpg").exists() else sample()[0][0]
    classified = subprocess.run([sys.executable, "-m", "mobilenet", "classify", str(image), "--json"], cwd=outside,
                                env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert classified.returncode == 0, classified.stderr
    assert str(site) in classified.stderr  # "Using the shipped model <site>/mobilenet/checkpoints/..."
    (result,) = json.loads(classified.stdout)["results"]
    assert result["top"][0]["class"] in from_pretrained("cifar10").metadata.class_names
    hub = torch.hub.load(str(REPO), "mobilenet_v1", source="local", pretrained=True, trust_repo=True)
    assert not hub.training


def test_predict_and_classify_give_the_same_confidences_for_the_same_images(tmp_path, monkeypatch, capsys):
    files, truth = sample()
    root = tmp_path / "images"
    for split in ("train", "test"):  # the sample as a folder dataset: its test split is what predict reads
        for path, label in zip(files, truth, strict=True):
            (root / split / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / split / label / path.name)
    monkeypatch.chdir(tmp_path)
    main(["classify", str(root / "test"), "--json"])
    classified = json.loads(capsys.readouterr().out)["results"]
    by_classify = sorted((r["top"][0]["class"], round(r["top"][0]["probability"], 4)) for r in classified)
    main(["predict", "--ckpt_path", str(shipped_path("cifar10")), "--data", "ImageFolderDataModule",
          "--data.root", str(root), "--trainer.enable_progress_bar", "false"])  # fmt: skip
    (written,) = tmp_path.glob("logs/**/predictions.csv")
    with open(written) as file:
        rows = list(csv.DictReader(file))
    by_predict = sorted((row["prediction_name"], round(float(row["confidence"]), 4)) for row in rows)
    assert len(by_predict) == len(by_classify) == 20
    # The record's temperature (below 1) makes the probabilities differ from a plain softmax by up to 0.085.
    for (name_p, conf_p), (name_c, conf_c) in zip(by_predict, by_classify, strict=True):
        assert name_p == name_c and conf_p == pytest.approx(conf_c, abs=2e-4)
