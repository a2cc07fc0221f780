"""`mobilenet export --quantize int8`: static int8 ONNX calibrated on real images, read by every reader, checked
against float32 on images the calibration did not see, and each mistake refused before anything is written."""

import json

import pytest
import torch

from fake_images import write_image_folder
from mobilenet.commands import main
from mobilenet.deploy.artifacts import load
from mobilenet.deploy.classifier import open_classifier


def test_int8_export_from_the_recorded_data_is_read_by_every_reader(checkpoint, cifar10_dir, in_tmp, capsys):
    output = in_tmp / "model.int8.onnx"
    main(["export", "--ckpt_path", str(checkpoint), "--format", "onnx", "--quantize", "int8",
          "--calibration_images", "40", "--data.verify", "false", "--output", str(output)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "Calibrated on 40 images from the training split of CIFARDataModule" in printed
    record = load(output, with_network=False).metadata.export
    quantization = record["quantization"]
    assert record["dtype"] == "int8" and record["batchnorm_folded"] is True
    assert quantization["calibration_images"] == 40 and quantization["checked_on_images"] == 40
    assert 0 <= quantization["top1_agreement_with_float32"] <= 1
    assert json.loads((in_tmp / "model.int8.onnx.json").read_text())["export"]["dtype"] == "int8"
    float_file = in_tmp / "model.onnx"
    main(["export", "--ckpt_path", str(checkpoint), "--format", "onnx", "--output", str(float_file)])
    assert output.stat().st_size < 0.5 * float_file.stat().st_size  # int8 weights: about a quarter
    # Every reader: the classifier (ONNX Runtime) and the classify command.
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    int8, full = open_classifier(output), open_classifier(float_file)
    assert int8.class_names == full.class_names and int8.logits(images).shape == (8, 10)
    capsys.readouterr()
    main(["summary", "--ckpt_path", str(output)])
    assert "Stored as onnx in int8 (" in capsys.readouterr().out


def test_int8_export_calibrated_on_a_folder_and_classify_reads_it(checkpoint, in_tmp, capsys):
    root = write_image_folder(in_tmp / "photos", per_class=20, test_per_class=1)
    output = in_tmp / "folder.int8.onnx"
    main(["export", "--ckpt_path", str(checkpoint), "--format", "onnx", "--quantize", "int8",
          "--calibration", str(root), "--calibration_images", "32", "--output", str(output)])  # fmt: skip
    assert f"Calibrated on 32 images from {root}" in capsys.readouterr().out
    main(["classify", str(root / "test"), "--ckpt_path", str(output), "--json"])
    results = json.loads(capsys.readouterr().out)["results"]
    assert len(results) == 3 and all(result["top"] for result in results)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--format", "torchscript"], "--format torchscript cannot be quantised"),
        (["--format", "onnx", "--calibration", "no-such-folder"], "is not a folder of images"),
        (["--format", "onnx", "--calibration_images", "10", "--data.verify", "false"], "is too few"),
        (["--format", "onnx", "--calibration_images", "500", "--data.verify", "false"], "holds 80 images"),
        (["--format", "onnx", "--calibration", "empty"], "holds no image files"),
    ],
    ids=["not onnx", "missing folder", "too few", "more than the data holds", "empty folder"],
)
def test_int8_mistakes_are_one_sentence_and_write_nothing(checkpoint, in_tmp, extra, message):
    (in_tmp / "empty").mkdir()
    output = in_tmp / "out.int8.onnx"
    with pytest.raises(SystemExit) as refused:
        main(["export", "--ckpt_path", str(checkpoint), "--quantize", "int8", "--output", str(output), *extra])
    assert message in str(refused.value.code) and "\n" not in str(refused.value.code)
    assert not output.exists() and not list(in_tmp.glob(".quantize-*"))


def test_an_existing_int8_output_is_kept(checkpoint, in_tmp):
    taken = in_tmp / "taken.int8.onnx"
    taken.write_text("an earlier export")
    with pytest.raises(SystemExit) as refused:
        main(["export", "--ckpt_path", str(checkpoint), "--format", "onnx", "--quantize", "int8", "--output",
              str(taken), "--calibration_images", "40", "--data.verify", "false"])  # fmt: skip
    assert "already exists and is kept" in str(refused.value.code) and taken.read_text() == "an earlier export"
