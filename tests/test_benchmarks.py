"""The inference benchmark runs end to end and reports every runtime; its timings are never asserted."""

import json
import subprocess
import sys

import pytest

from conftest import REPO
from mobilenet import MobileNetV1
from mobilenet.summary import count_costs


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
        (runtime, size) for runtime in ("eager", "bn_folded", "torchscript", "onnxruntime") for size in (1, 3)
    }
    assert all(r["images_per_second"] > 0 for r in rows)
    expected = sum(c.mult_adds for c in count_costs(MobileNetV1(num_classes=10, width_mult=0.25), 32)) / 1e6
    assert all(r["mult_adds_millions"] == pytest.approx(expected) for r in rows)
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "batch 1 img/s" in line and "batch 3 img/s" in line)
    printed = [line.split()[3] for line in lines[header + 1 : header + 5]]
    assert printed == ["eager", "bn_folded", "torchscript", "onnxruntime"]
