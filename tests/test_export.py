"""`mobilenet export`: ONNX, TorchScript and state_dict files that compute the checkpoint's function."""

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from mobilenet import MobileNetV1
from mobilenet.commands import main
from mobilenet.deploy import export
from mobilenet.deploy.artifacts import load, sidecar_path
from mobilenet.deploy.classifier import open_classifier
from mobilenet.deploy.folding import fold_batchnorm
from mobilenet.errors import UsageError

MOBILENET = str(Path(sys.executable).parent / "mobilenet")


def reference_logits(checkpoint: Path, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load(checkpoint).network(batch)


def test_folding_batchnorm_keeps_the_function_and_removes_every_batchnorm(checkpoint):
    net = load(checkpoint).network
    folded = fold_batchnorm(net)
    batch = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (folded(batch) - net(batch)).abs().max() <= export.PARITY_LIMIT  # measured: 9e-6
        assert net(batch).std(dim=0).mean() > 0.01, "the logits must depend on the image for this to mean anything"
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules()), "the checkpoint's network is left alone"


def test_onnx_export_passes_the_checker_has_a_dynamic_batch_and_carries_preprocessing(checkpoint, onnx_export):
    ort = pytest.importorskip("onnxruntime")
    output, report = onnx_export
    model = onnx.load(str(output))
    onnx.checker.check_model(model, full_check=True)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value, "the batch axis must be dynamic"
    stored = json.loads({p.key: p.value for p in model.metadata_props}["mobilenet"])
    expected = load(checkpoint).metadata.to_dict()
    for key in ("class_names", "resolution", "mean", "std", "network", "data"):
        assert stored[key] == expected[key]
    assert stored["export"]["batchnorm_folded"] and load(output).metadata.class_names == expected["class_names"]
    assert json.loads(sidecar_path(output).read_text())["class_names"][0] == "airplane"
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for size in (1, 5):
        batch = torch.randn(size, 3, 32, 32)
        (logits,) = session.run(None, {"images": batch.numpy()})
        assert abs(torch.from_numpy(logits) - reference_logits(checkpoint, batch)).max() <= 1e-4
    assert any("ONNX Runtime vs PyTorch: max |Δlogit| =" in line for line in report)


def test_torchscript_export_computes_the_same_logits_and_stores_the_metadata(checkpoint, tmp_path):
    output = tmp_path / "model.pt"
    export.export(load(checkpoint), "torchscript", output)
    extra = {"mobilenet.json": ""}
    scripted = torch.jit.load(str(output), _extra_files=extra)
    assert json.loads(extra["mobilenet.json"])["resolution"] == 32
    batch = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (scripted(batch) - reference_logits(checkpoint, batch)).abs().max() <= 1e-4
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert (open_classifier(output).logits(images) - open_classifier(checkpoint).logits(images)).abs().max() <= 1e-4


def test_state_dict_export_loads_into_mobilenetv1_with_the_documented_snippet(checkpoint, tmp_path):
    output = tmp_path / "model.pth"
    export.export(load(checkpoint), "state_dict", output)
    # The snippet of docs/deployment.md:
    meta = json.loads(Path(str(output) + ".json").read_text())
    net = MobileNetV1(**meta["network"])
    net.load_state_dict(torch.load(output, weights_only=True))
    batch = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net.eval()(batch), reference_logits(checkpoint, batch))


def test_an_export_that_fails_its_parity_check_leaves_the_earlier_file(checkpoint, tmp_path, monkeypatch):
    output = tmp_path / "model.pth"
    export.export(load(checkpoint), "state_dict", output)
    before = output.read_bytes()
    monkeypatch.setattr(export, "PARITY_LIMIT", -1.0)  # no export can pass
    with pytest.raises(UsageError, match="does not compute the checkpoint's function"):
        export.export(load(checkpoint), "state_dict", output, overwrite=True)
    assert output.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth", "model.pth.json"]


def test_missing_onnx_packages_name_the_extra_to_install(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    with pytest.raises(UsageError, match=r'pip install -e "\.\[export\]"'):
        export.export(load(checkpoint), "onnx", tmp_path / "model.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_export_command_prints_the_parity_check(checkpoint, tmp_path):
    output = tmp_path / "exported.onnx"
    result = subprocess.run(
        [MOBILENET, "export", "--ckpt_path", str(checkpoint), "--format", "onnx", "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("ONNX Runtime vs PyTorch"))
    assert float(line.split("= ")[1].split()[0]) <= 1e-4
    assert output.is_file() and sidecar_path(output).is_file()


def test_export_of_a_file_that_is_no_checkpoint_is_refused_in_one_line(tmp_path):
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--ckpt_path", str(tmp_path / "notes.ckpt"), "--format", "onnx"])
    message = str(exit_.value.code)
    assert message.startswith("mobilenet: error: ") and "notes.ckpt" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == [tmp_path / "notes.ckpt"]


def test_float16_safetensors_hold_the_record_and_load_as_the_network(checkpoint, tmp_path):
    output = tmp_path / "model.safetensors"
    report = export.export(load(checkpoint), "safetensors", output, half=True)
    shipped = load(output)
    assert shipped.kind == "safetensors" and shipped.metadata.network == load(checkpoint).metadata.network
    assert shipped.metadata.export["dtype"] == "float16"
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(output).values()} <= {torch.float16, torch.int64}
    batch = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        difference = (shipped.network(batch) - reference_logits(checkpoint, batch)).abs().max().item()
    assert difference <= export.PARITY_LIMIT_HALF
    assert any(line.startswith("safetensors reloaded vs PyTorch") for line in report)


def test_exports_never_replace_the_checkpoint_or_an_existing_file(checkpoint, tmp_path):
    copy = tmp_path / "model.pth"  # a Lightning checkpoint with a state_dict's suffix
    copy.write_bytes(checkpoint.read_bytes())
    before = copy.read_bytes()
    for output in (copy, tmp_path / "." / "model.pth"):
        with pytest.raises(SystemExit) as exit_:
            main(["export", "--ckpt_path", str(copy), "--format", "state_dict", "--output", str(output), "--overwrite"])
        assert "is the file being exported" in str(exit_.value.code)
    with pytest.raises(SystemExit) as exit_:  # the default output is the checkpoint's path with .pth: itself
        main(["export", "--ckpt_path", str(copy), "--format", "state_dict"])
    assert "is the file being exported" in str(exit_.value.code)
    assert copy.read_bytes() == before
    existing = tmp_path / "existing.onnx"
    existing.write_text("keep me")
    for output, problem in ((existing, "already exists and is kept"), (tmp_path, "is a folder"),
                            (existing / "x.onnx", "is a file, not a folder")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main(["export", "--ckpt_path", str(checkpoint), "--format", "onnx", "--output", str(output)])
        assert problem in str(exit_.value.code) and "\n" not in str(exit_.value.code)
    assert existing.read_text() == "keep me"


def test_an_output_without_a_suffix_gets_its_formats_and_reads_back(checkpoint, in_tmp, capsys):
    main(["export", "--ckpt_path", str(checkpoint), "--format", "onnx", "--output", "model"])
    assert "Wrote model.onnx" in capsys.readouterr().out
    assert load(in_tmp / "model.onnx").kind == "onnx" and not (in_tmp / "model").exists()


def test_two_exports_to_one_output_at_once_the_second_is_refused_and_the_first_kept(checkpoint, tmp_path, monkeypatch):
    """Both pass the 'output exists' check before either has written; the one that finishes second must not
    silently replace the other's file (both used to say "Wrote")."""
    output = tmp_path / "model.pth"
    write = export.write_state_dict

    def another_export_finishes_meanwhile(net, metadata, path, half=False):
        write(net, metadata, path, half)
        output.write_bytes(b"the other export's file")

    monkeypatch.setattr(export, "write_state_dict", another_export_finishes_meanwhile)
    with pytest.raises(UsageError, match="appeared while this command was writing it.*kept.*--overwrite"):
        export.export(load(checkpoint), "state_dict", output)
    assert output.read_bytes() == b"the other export's file"
    assert not sidecar_path(output).exists() and [path.name for path in tmp_path.iterdir()] == ["model.pth"]
