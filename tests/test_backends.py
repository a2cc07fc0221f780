"""One classifier interface over PyTorch and ONNX Runtime: same metadata, same preprocessing, same logits."""

import pytest
import torch

from fake_cifar import fake_images
from mobilenet.data.augment import BatchTransform
from mobilenet.deploy.artifacts import load
from mobilenet.deploy.classifier import open_classifier
from mobilenet.deploy.export import export
from mobilenet.errors import UsageError


def cifar_like_images(count: int, side: int = 32) -> torch.Tensor:
    import numpy as np

    rows, _ = fake_images(count, 10, np.random.default_rng(1))
    images = torch.from_numpy(rows).view(count, 3, 32, 32)
    return images if side == 32 else torch.nn.functional.interpolate(images.float(), size=side).to(torch.uint8)


def test_torch_and_onnxruntime_backends_agree_on_the_same_images(checkpoint, onnx_export):
    pytest.importorskip("onnxruntime")
    torch_backend = open_classifier(checkpoint)
    onnx_backend = open_classifier(onnx_export[0])  # auto: .onnx runs on ONNX Runtime
    assert (torch_backend.backend, onnx_backend.backend) == ("torch", "onnxruntime")
    for attribute in ("class_names", "resolution", "mean", "std"):
        assert getattr(onnx_backend, attribute) == getattr(torch_backend, attribute)
    for images in (cifar_like_images(7), cifar_like_images(3, side=40)):  # 40×40 is resized to 32 by both
        expected = torch_backend.logits(images)
        assert expected.shape == (len(images), 10)
        assert (onnx_backend.logits(images.numpy()) - expected).abs().max() <= 1e-4


def test_backends_preprocess_exactly_as_the_datamodule_does(checkpoint):
    classifier = open_classifier(checkpoint, backend="torch")
    artifact = load(checkpoint)
    metadata = artifact.metadata
    images = cifar_like_images(5)
    transform = BatchTransform("none", metadata.resolution, metadata.mean, metadata.std)
    with torch.no_grad():
        assert torch.allclose(classifier.logits(images), artifact.network(transform(images)), atol=1e-5)


def test_a_state_dict_export_loads_behind_the_same_interface(checkpoint, tmp_path):
    # (TorchScript files are loaded this way in test_export.py.)
    images = cifar_like_images(4)
    export(load(checkpoint), "state_dict", tmp_path / "model.pth")
    classifier = open_classifier(tmp_path / "model.pth")
    assert classifier.class_names[0] == "airplane"
    assert torch.equal(classifier.logits(images), open_classifier(checkpoint).logits(images))


def test_backend_mistakes_are_explained(checkpoint, tmp_path):
    with pytest.raises(UsageError, match="--format onnx"):
        open_classifier(checkpoint, backend="onnxruntime")
    with pytest.raises(UsageError, match="uint8 RGB images"):
        open_classifier(checkpoint).logits(torch.rand(2, 3, 32, 32))
    torch.save(load(checkpoint).network.state_dict(), tmp_path / "model.pth")  # without the record beside it
    with pytest.raises(UsageError, match=r"model\.pth\.json"):
        open_classifier(tmp_path / "model.pth")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="asks for a CUDA GPU, but PyTorch sees none"):
            open_classifier(checkpoint, device="cuda")


@pytest.mark.slow
def test_classify_gives_the_same_answers_from_the_checkpoint_and_its_onnx_export(checkpoint, onnx_export, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    pytest.importorskip("onnxruntime")
    files = []
    for i, image in enumerate(cifar_like_images(4)):
        files.append(str(tmp_path / f"image{i}.png"))
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(files[-1])
    mobilenet = str(Path(sys.executable).parent / "mobilenet")

    def classify(model: Path, *backend: str) -> list[dict]:
        result = subprocess.run([mobilenet, "classify", *files, "--ckpt_path", str(model), "--json", *backend],
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["results"]

    from_checkpoint = classify(checkpoint)
    from_onnx = classify(onnx_export[0], "--backend", "onnxruntime")
    for a, b in zip(from_checkpoint, from_onnx, strict=True):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=2e-4)
    refused = subprocess.run([mobilenet, "classify", files[0], "--ckpt_path", str(checkpoint), "--backend",
                              "onnxruntime"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert refused.returncode != 0 and "mobilenet export" in refused.stderr and "Traceback" not in refused.stderr
