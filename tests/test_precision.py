"""Precision: the default per device, bfloat16 refused on a CPU that would emulate it, and bf16 runs that agree
with 32-bit ones (logits, checkpoints in both directions, exact resume)."""

import pytest
import torch
from test_pretrained import sample

from conftest import small_run_args
from mobilenet import MobileNetV1
from mobilenet.commands.lightning import build_cli
from mobilenet.data.images import read_image
from mobilenet.deploy.classifier import open_classifier
from mobilenet.errors import UsageError
from mobilenet.model import PointwiseConv2d
from mobilenet.shipped import shipped_path
from mobilenet.training import precision
from mobilenet.training.precision import choose_precision, cpu_bf16, default_precision

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
EXACT = ["--trainer.deterministic", "true", "--trainer.log_every_n_steps", "1"]


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU that reports AVX512-BF16, whatever this machine has: the bf16 path runs (emulated where it must)."""
    monkeypatch.setattr(precision, "cpu_bf16", lambda flags=None: ["AVX512-BF16"])


def fit(data_dir, *extra: str):
    return build_cli(["fit", *small_run_args(data_dir), *QUIET, *extra])


def weights(path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")["state_dict"]


@pytest.mark.parametrize(
    "cuda, bf16, accelerator, expected",
    [
        (False, False, "auto", "32-true"),
        (True, True, "auto", "bf16-mixed"),
        (True, False, "gpu", "16-mixed"),
        (True, True, "cpu", "32-true"),  # asked for the CPU on a GPU machine
    ],
)
def test_the_default_precision_is_mixed_on_gpus_and_full_on_the_cpu(monkeypatch, cuda, bf16, accelerator, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert default_precision(accelerator) == expected
    assert choose_precision(None, accelerator)[0] == expected


def test_the_cpus_bf16_instructions_are_read_from_its_flags():
    assert cpu_bf16({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}) == ["AMX-BF16", "AVX512-BF16"]
    assert cpu_bf16({"avx512f", "avx512_bf16"}) == ["AVX512-BF16"]
    assert cpu_bf16({"avx2", "fma"}) == []


def test_the_cpu_default_suggests_bf16_only_where_it_was_measured_to_pay():
    """Each kind of bfloat16 CPU gets the speed-up measured on it; a CPU without bfloat16 gets no suggestion."""
    cases = {
        ("AVX512-BF16",): "bf16-mixed trains about 1.3x faster to the same accuracy",
        ("AMX-BF16", "AVX512-BF16"): "bf16-mixed trains about 1.5x faster to the same accuracy",
    }
    for bf16, advice in cases.items():
        chosen, why = choose_precision(None, "cpu", bf16=list(bf16))
        assert chosen == "32-true" and advice in why
    chosen, why = choose_precision(None, "cpu", bf16=[])
    assert chosen == "32-true" and "bf16" not in why


def test_bf16_on_a_cpu_without_bf16_instructions_is_refused_before_anything_is_written(
    in_tmp, cifar10_dir, monkeypatch
):
    monkeypatch.setattr(precision, "cpu_bf16", lambda flags=None: [])
    with pytest.raises(UsageError, match=r"without bfloat16 instructions.*--trainer.precision 32-true"):
        fit(cifar10_dir, "--trainer.precision", "bf16-mixed", "--trainer.accelerator", "cpu")
    assert not (in_tmp / "checkpoints").exists() and not (in_tmp / "logs").exists()


def test_the_fit_banner_says_which_precision_runs_and_why(in_tmp, cifar10_dir, capsys, bf16_cpu):
    fit(cifar10_dir, "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--run_name", "default")
    assert "Precision: 32-true (the default on a CPU; this CPU has AVX512-BF16: --trainer.precision bf16-mixed" in (
        capsys.readouterr().out
    )
    fit(cifar10_dir, "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.precision", "bf16-mixed")
    assert "Precision: bf16-mixed (as asked; this CPU has AVX512-BF16" in capsys.readouterr().out


def test_bf16_logits_of_the_shipped_model_are_close_to_fp32_with_the_same_top1():
    files, _ = sample()
    classifier = open_classifier(shipped_path("cifar10"))
    images = classifier.preprocess(torch.stack([read_image(path) for path in files]))
    net = classifier.network.to(memory_format=torch.channels_last)
    with torch.no_grad():
        full = net(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = net(images).float()
    # bfloat16 keeps 8 bits of mantissa: logits of size ~10 move by a few hundredths.
    assert (half - full).abs().max() < 0.25
    assert torch.equal(half.argmax(dim=1), full.argmax(dim=1))


def test_checkpoints_cross_precisions_both_ways(in_tmp, cifar10_dir, bf16_cpu):
    fit(cifar10_dir, "--trainer.max_epochs", "1", "--run_name", "b", "--trainer.precision", "bf16-mixed")
    b = weights(in_tmp / "checkpoints" / "b" / "last.ckpt")
    assert all(value.dtype != torch.bfloat16 for value in b.values()), "bf16-mixed keeps 32-bit weights"
    # A bf16 run resumed in 32-true, and a 32-true run resumed in bf16-mixed: each trains on from where it was.
    fit(cifar10_dir, "--trainer.max_epochs", "2", "--run_name", "b", "--ckpt_path", "last")
    fit(cifar10_dir, "--trainer.max_epochs", "1", "--run_name", "f")
    fit(cifar10_dir, "--trainer.max_epochs", "2", "--run_name", "f", "--ckpt_path", "last",
        "--trainer.precision", "bf16-mixed")  # fmt: skip
    for run in ("b", "f"):
        checkpoint = torch.load(in_tmp / "checkpoints" / run / "last.ckpt", weights_only=True, map_location="cpu")
        assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 10
    last = str(in_tmp / "checkpoints" / "b" / "last.ckpt")
    validated = build_cli(["validate", "--ckpt_path", last, "--data.verify", "false", *QUIET])
    assert 0 <= float(validated.trainer.callback_metrics["val/acc"]) <= 1


def test_resuming_a_bf16_run_on_the_cpu_is_exact(in_tmp, cifar10_dir, bf16_cpu):
    bf16 = ["--trainer.precision", "bf16-mixed", *EXACT]
    fit(cifar10_dir, "--trainer.max_epochs", "2", "--run_name", "straight", *bf16)
    fit(cifar10_dir, "--trainer.max_epochs", "1", "--run_name", "halted", *bf16)
    fit(cifar10_dir, "--trainer.max_epochs", "2", "--run_name", "halted", "--ckpt_path", "last", *bf16)
    a = weights(in_tmp / "checkpoints" / "straight" / "last.ckpt")
    b = weights(in_tmp / "checkpoints" / "halted" / "last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    # and bf16 really trained differently from 32-bit (else this test would not be about bf16)
    fit(cifar10_dir, "--trainer.max_epochs", "2", "--run_name", "fp32", *EXACT)
    c = weights(in_tmp / "checkpoints" / "fp32" / "last.ckpt")
    assert not all(torch.equal(a[key], c[key]) for key in a)


def test_under_cpu_bf16_autocast_slow_depthwise_layers_compute_in_float32_and_the_others_in_bf16():
    net = MobileNetV1(width_mult=0.25).to(memory_format=torch.channels_last)
    # features[2]: stride 2, whose bf16 backward is slowest; features[1]: stride 1 at 32×32, faster in bf16;
    # features[-1]: stride 1 at 2×2, slow in bf16 again.
    blocks = {"stride 2": net.features[2], "stride 1": net.features[1], "2×2": net.features[-1]}
    outputs = {}
    for label, block in blocks.items():
        for name in ("depthwise", "pointwise"):
            layer = getattr(block, name)[0]
            layer.register_forward_hook(lambda m, i, out, key=(label, name): outputs.__setitem__(key, out.dtype))
    images = torch.randn(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(images).float().sum().backward()
    assert outputs == {
        ("stride 2", "depthwise"): torch.float32, ("stride 2", "pointwise"): torch.bfloat16,
        ("stride 1", "depthwise"): torch.bfloat16, ("stride 1", "pointwise"): torch.bfloat16,
        ("2×2", "depthwise"): torch.float32, ("2×2", "pointwise"): torch.bfloat16,
    }  # fmt: skip
    assert blocks["stride 2"].depthwise[0].weight.grad.dtype == torch.float32
    # Outside autocast it is an ordinary convolution, with nn.Conv2d's parameter names
    assert MobileNetV1(width_mult=0.25)(images).dtype == torch.float32
    assert "features.2.depthwise.0.weight" in net.state_dict()


def test_under_cpu_bf16_autocast_pointwise_layers_give_the_numbers_of_a_convolution():
    """The 1×1 layers compute as a matrix multiply under CPU autocast (faster on AMX); values and gradients are
    those of nn.Conv2d with the same weights, to bfloat16's rounding, and its memory order is kept."""
    torch.manual_seed(0)
    layer = PointwiseConv2d(64, 128, 1, bias=False)
    conv = torch.nn.Conv2d(64, 128, 1, bias=False)
    conv.load_state_dict(layer.state_dict())  # the same parameter names, so every checkpoint loads as before
    images = torch.randn(8, 64, 8, 8).contiguous(memory_format=torch.channels_last)
    results = []
    for module in (layer, conv):
        inputs = images.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(inputs)
        (out.float() * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        results.append((out, inputs.grad, module.weight.grad))
    (out, grad_in, grad_w), (ref, ref_in, ref_w) = results
    assert out.dtype == ref.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    for a, b in ((out, ref), (grad_in, ref_in), (grad_w, ref_w)):
        assert (a.float() - b.float()).abs().max() <= 0.02 * b.float().abs().max()
    # Outside autocast, or in PyTorch's default memory order, it is nn.Conv2d itself.
    assert torch.equal(layer(images), conv(images))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(layer(images.contiguous()), conv(images.contiguous()))
