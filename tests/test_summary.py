"""`mobilenet summary` reproduces the paper's cost tables (Howard et al., 2017, Tables 2, 6 and 7)."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import CONFIGS
from fake_images import CLASSES, write_image_folder
from mobilenet import MobileNetV1
from mobilenet.commands import main
from mobilenet.commands.summary import LAYER_TYPES, count_costs, totals_by_type
from mobilenet.commands.summary import main as summary_main

MOBILENET = str(Path(sys.executable).parent / "mobilenet")


def imagenet_net(width_mult: float = 1.0) -> MobileNetV1:
    return MobileNetV1(num_classes=1000, width_mult=width_mult, stem_stride=2)


def totals(net: MobileNetV1, resolution: int) -> tuple[int, int]:
    costs = count_costs(net, resolution)
    return sum(c.mult_adds for c in costs), sum(c.weights for c in costs)


# Table 6: α → (million mult-adds, million parameters) at 224×224.
TABLE_6 = {1.0: (569, 4.2), 0.75: (325, 2.6), 0.5: (149, 1.3), 0.25: (41, 0.5)}
# Table 7: α = 1, resolution → million mult-adds.
TABLE_7 = {224: 569, 192: 418, 160: 290, 128: 186}
# Table 2: layer type → (% of mult-adds, % of parameters). The paper prints 1.19% of mult-adds for the
# first 3×3 convolution, but the four rows only sum to 100% with 1.91% (a transposed digit).
TABLE_2 = {
    LAYER_TYPES[0]: (1.91, 0.02),
    LAYER_TYPES[1]: (3.06, 1.06),
    LAYER_TYPES[2]: (94.86, 74.59),
    LAYER_TYPES[3]: (0.18, 24.33),
}


@pytest.mark.parametrize("width_mult", TABLE_6)
def test_width_multiplier_costs_are_the_papers_table_6(width_mult):
    mult_adds, weights = totals(imagenet_net(width_mult), 224)
    assert (round(mult_adds / 1e6), round(weights / 1e6, 1)) == TABLE_6[width_mult]


@pytest.mark.parametrize("resolution", TABLE_7)
def test_resolution_multiplier_costs_are_the_papers_table_7(resolution):
    millions = totals(imagenet_net(), resolution)[0] / 1e6
    # The paper rounds, except at 160×160 where it prints 290 for 290.68 million (truncated): either reading
    # of its last digit is accepted, nothing looser.
    assert TABLE_7[resolution] in (round(millions), math.floor(millions))


def test_shares_by_layer_type_are_the_papers_table_2():
    by_type = totals_by_type(count_costs(imagenet_net(), 224))
    total_ma = sum(ma for ma, _ in by_type.values())
    total_w = sum(w for _, w in by_type.values())
    shares = {kind: (round(100 * ma / total_ma, 2), round(100 * w / total_w, 2)) for kind, (ma, w) in by_type.items()}
    assert shares == TABLE_2


def test_mult_adds_agree_with_torchs_own_flop_counter():
    # An independent count: torch counts 2 FLOPs per multiply-add for convolutions and matrix products.
    net = MobileNetV1(num_classes=100, width_mult=0.5, stem_stride=1).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(1, 3, 48, 48))
    assert totals(net, 48)[0] * 2 == counter.get_total_flops()


def test_every_layer_is_listed_once_with_the_papers_28_layers():
    costs = count_costs(imagenet_net(), 224)
    kinds = [c.kind for c in costs]
    assert kinds == [LAYER_TYPES[0]] + [LAYER_TYPES[1], LAYER_TYPES[2]] * 13 + [LAYER_TYPES[3]]
    assert costs[-2].output_shape == (1024, 7, 7)  # the paper's Table 1: 7×7×1024 before the pool


def summary(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MOBILENET, "summary", *args], capture_output=True, text=True, timeout=120)


def total_line(stdout: str) -> list[str]:
    return next(line for line in stdout.splitlines() if line.startswith("total")).split()


@pytest.mark.slow
def test_summary_command_prints_the_papers_totals_in_millions():
    result = summary(
        "--model.net.width_mult", "0.75", "--data.resolution", "224", "--model.net.stem_stride", "2",
        "--model.net.num_classes", "1000",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    _, mult_adds, _, params, _ = total_line(result.stdout)
    assert round(float(mult_adds)) == 325 and round(float(params), 1) == 2.6
    assert "pointwise 1×1 conv" in result.stdout and "%" in result.stdout


def test_summary_describes_a_training_configs_model_and_lists_layers_on_request(capsys):
    # cifar100.yaml is an overlay of cifar10.yaml: the two merge in order, the way `fit` reads them.
    assert summary_main(["--config", str(CONFIGS / "cifar10.yaml"), "--config", str(CONFIGS / "cifar100.yaml"),
                         "--per_layer"]) == 0  # fmt: skip
    stdout = capsys.readouterr().out
    assert "32×32 input" in stdout and "100 classes" in stdout
    mult_adds, weights = totals(MobileNetV1(num_classes=100), 32)
    _, printed_ma, _, printed_w, _ = total_line(stdout)
    assert float(printed_ma) == round(mult_adds / 1e6, 2) and float(printed_w) == round(weights / 1e6, 3)
    assert stdout.count("depthwise 3×3 conv") == 13 + 1  # 13 layer rows and the type row


def test_summary_takes_the_same_overrides_as_fit_after_a_config(capsys):
    assert summary_main(["--config", str(CONFIGS / "cifar10.yaml"), "--model.net.width_mult", "0.25"]) == 0
    stdout = capsys.readouterr().out
    assert "α=0.25" in stdout
    assert float(total_line(stdout)[1]) == round(totals(MobileNetV1(width_mult=0.25), 32)[0] / 1e6, 2)


def test_summary_of_a_checkpoint_describes_the_trained_network(checkpoint, capsys):
    assert summary_main(["--ckpt_path", str(checkpoint)]) == 0  # α = 0.25, as the fixture trained it
    stdout = capsys.readouterr().out
    assert "α=0.25" in stdout and "10 classes" in stdout


def test_summary_refuses_a_bad_resolution_in_one_line():
    with pytest.raises(SystemExit) as exit_:
        main(["summary", "--data.resolution", "0"])
    # the DataModule's own check, the message fit gives for the same setting
    expected = "resolution must be between 1 and 1024 pixels, got 0; CIFAR's images are 32"
    assert exit_.value.code.startswith(f"mobilenet: error: {expected}") and "\n" not in exit_.value.code


def test_summary_of_an_image_folder_config_has_that_folders_classes(tmp_path, capsys):
    root = write_image_folder(tmp_path / "pets", per_class=2, test_per_class=1)
    assert summary_main(["--config", str(CONFIGS / "cifar10.yaml"), "--data", "ImageFolderDataModule",
                         "--data.root", str(root)]) == 0  # fmt: skip
    stdout = capsys.readouterr().out
    assert f"{len(CLASSES)} classes" in stdout and len(CLASSES) != 10
    _, printed_ma, _, printed_w, _ = total_line(stdout)
    assert float(printed_w) == round(totals(MobileNetV1(num_classes=len(CLASSES)), 32)[1] / 1e6, 3)
