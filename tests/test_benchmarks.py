"""The inference benchmark runs end to end and reports every runtime; its timings are never asserted."""

import json
import subprocess
import sys

import pytest

from conftest import REPO
from mobilenet import MobileNetV1
from mobilenet.commands.summary import count_costs

# Every inference runtime the performance issue asks for, in the benchmark's order.
ISSUE_RUNTIMES = (
    "eager", "channels_last", "channels_last_bf16", "bn_folded", "compiled", "torchscript", "onnxruntime",
    "onnxruntime_int8",
)  # fmt: skip


@pytest.mark.slow
def test_inference_benchmark_prints_and_writes_every_runtime_and_batch_size(tmp_path):
    output = tmp_path / "inference.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.inference", "--width_mult", "0.25", "--batch_sizes", "1", "3",
         "--seconds", "0", "--min_iterations", "1", "--warmup", "0", "--json", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads(output.read_text())["results"]
    assert {(r["runtime"], r["batch_size"]) for r in rows} == {
        (runtime, size) for runtime in ISSUE_RUNTIMES for size in (1, 3)
    }
    assert all(r["images_per_second"] > 0 for r in rows)
    expected = sum(c.mult_adds for c in count_costs(MobileNetV1(num_classes=10, width_mult=0.25), 32)) / 1e6
    assert all(r["mult_adds_millions"] == pytest.approx(expected) for r in rows)
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "batch 1 img/s" in line and "batch 3 img/s" in line)
    printed = [line.split()[3] for line in lines[header + 1 : header + 1 + len(ISSUE_RUNTIMES)]]
    assert printed == list(ISSUE_RUNTIMES)


@pytest.mark.slow
def test_speed_benchmark_reports_every_contestant_ratio_and_the_machine(tmp_path):
    output = tmp_path / "speed.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--batch_size", "4", "--width_mult", "0.25", "--warmup", "1",
         "--repeats", "2", "--steps", "1", "--workers", "1", "--augment_images", "8",
         "--inference_batch_sizes", "1", "2", "--inference_seconds", "0", "--json", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(output.read_text())
    training = {row["contestant"]: row for row in figures["training"]}
    assert set(training) == {"reference", "lightning", "raw", "lightning_bf16"}
    for row in training.values():
        assert len(row["repetitions"]) == 2 and min(row["repetitions"]) <= row["images_per_second"]
        assert row["images_per_second"] <= max(row["repetitions"]) and row["peak_memory_mb"] > 0
    ratios = figures["ratios"]
    speed = {name: row["images_per_second"] for name, row in training.items()}
    assert ratios["lightning_over_reference"] == pytest.approx(speed["lightning"] / speed["reference"])
    assert ratios["lightning_over_raw"] == pytest.approx(speed["lightning"] / speed["raw"])
    assert ratios["bf16_over_32_fit"] == pytest.approx(speed["lightning_bf16"] / speed["lightning"])
    assert set(figures["augmentation"]) == {"pil_per_image", "batched_tensors"}
    assert {(r["runtime"], r["batch_size"]) for r in figures["inference"]} == {
        (runtime, size) for runtime in ISSUE_RUNTIMES for size in (1, 2)
    }
    assert {"cpu", "cpu_bf16", "cpus", "torch", "device"} <= set(figures["machine"])
    labels = (
        "(a) reference",
        "(b) this project",
        "(c) raw loop",
        "(d) = (b) in bf16-mixed",
        "d/b (bf16-mixed",
        "bf16:",
    )
    for label in (*labels, "b/a =", "per-image PIL", "onnxruntime", "bf16 / fp32 channels-last", "int8 / float32"):
        assert label in result.stdout


@pytest.mark.slow
def test_gpu_check_runs_every_precision_and_ablation_and_reports_them(tmp_path):
    # The CPU stands in for the GPU here: the run proves the script works, not that any check passes.
    output = tmp_path / "gpu_check.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--accelerator", "cpu", "--precisions", "32-true",
         "bf16-mixed", "--no_compile", "--steps", "5", "--warmup", "2", "--tail", "2", "--batch_size", "8",
         "--json", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr
    figures = json.loads(output.read_text())
    rows = [(row["precision"], row["variant"]) for row in figures["training"]]
    ablations = ["contiguous memory order", "loss.item() every step", "unpinned host memory"]
    assert rows == [("32-true", "default"), ("bf16-mixed", "default")] + [("bf16-mixed", a) for a in ablations]
    for row in figures["training"]:
        assert row["images_per_second"] > 0 and row["final_loss"] == row["final_loss"]  # a number, not NaN
    assert 0 < figures["augmentation_share_of_fastest_step"]
    assert ("All checks passed." in result.stdout) == (result.returncode == 0) == (not figures["failures"])
    for variant in ablations:
        assert variant in result.stdout


def test_step_profile_puts_every_layer_kind_in_its_row_in_both_precisions():
    """The 1×1 layers are a matrix multiply under bf16 autocast and a convolution in float32: the profile must
    count both as the same pointwise rows, or its before/after tables would compare nothing."""
    from benchmarks.step_profile import profile_step

    for precision in ("32-true", "bf16-mixed"):
        result = profile_step(precision, width_mult=0.25, batch_size=4, warmup=1, steps=1)
        groups, rows = result["groups"], result["rows"]
        for kind in ("pointwise 1×1", "depthwise 3×3", "BatchNorm"):
            assert groups.get(f"{kind} forward", 0) > 0 and groups.get(f"{kind} backward", 0) > 0, (precision, kind)
        for pass_ in ("forward", "backward"):  # a layer whose matrix multiplies have the same shapes both ways
            assert f"pointwise 1×1 128→128 in 128×4×4, stride 1 ({pass_})" in rows, precision
