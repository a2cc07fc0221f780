import pytest
import torch
from torch import nn

from mobilenet import MobileNetV1
from mobilenet.model import BLOCKS, DepthwiseSeparable, scaled_channels

PAPER_ALPHAS = (1.0, 0.75, 0.5, 0.25)


@pytest.mark.parametrize("width_mult", PAPER_ALPHAS)
@pytest.mark.parametrize("stem_stride", (1, 2))
def test_output_is_one_row_of_logits_per_image(width_mult, stem_stride):
    model = MobileNetV1(num_classes=10, width_mult=width_mult, stem_stride=stem_stride).eval()
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)


@pytest.mark.parametrize("size", (32, 40, 64, 97))
@pytest.mark.parametrize("stem_stride", (1, 2))
def test_any_input_size_from_32_up_works(size, stem_stride):
    model = MobileNetV1(num_classes=7, width_mult=0.25, stem_stride=stem_stride).eval()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_forward_returns_logits_not_probabilities():
    model = MobileNetV1(num_classes=10).eval()
    out = model(torch.randn(4, 3, 32, 32))
    assert not any(isinstance(m, (nn.Softmax, nn.LogSoftmax)) for m in model.modules())
    assert (out < 0).any(), "probabilities are never negative: a softmax has crept in"
    assert not torch.allclose(out.sum(dim=1), torch.ones(4))


@pytest.mark.parametrize("width_mult, millions", list(zip(PAPER_ALPHAS, (4.2, 2.6, 1.3, 0.5), strict=True)))
def test_imagenet_layout_has_the_papers_parameter_counts(width_mult, millions):
    # Table 6 of the paper: 1.0 / 0.75 / 0.5 / 0.25 MobileNet-224 → 4.2 / 2.6 / 1.3 / 0.5 million parameters.
    model = MobileNetV1(num_classes=1000, width_mult=width_mult, stem_stride=2)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == millions


def test_layout_is_the_papers_table_1():
    model = MobileNetV1(num_classes=10, stem_stride=2)
    blocks = [m for m in model.modules() if isinstance(m, DepthwiseSeparable)]
    assert len(blocks) == 13
    stem = model.features[0][0]
    assert (stem.kernel_size, stem.stride, stem.out_channels) == ((3, 3), (2, 2), 32)
    for block, (channels, stride) in zip(blocks, BLOCKS, strict=True):
        depthwise, pointwise = block.depthwise[0], block.pointwise[0]
        assert depthwise.groups == depthwise.in_channels == depthwise.out_channels
        assert depthwise.kernel_size == (3, 3) and depthwise.stride == (stride, stride)
        assert pointwise.kernel_size == (1, 1) and pointwise.out_channels == channels
    assert model.classifier.in_features == 1024
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("width_mult", (0.75, 0.33, 1.4, 2.0))
def test_width_multiplier_scales_every_layer(width_mult):
    model = MobileNetV1(num_classes=10, width_mult=width_mult)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    expected = [scaled_channels(32, width_mult)] + [
        c for channels, _ in BLOCKS for c in (None, scaled_channels(channels, width_mult))
    ]
    for conv, channels in zip(convs, expected, strict=True):
        if channels is not None:
            assert conv.out_channels == channels
        assert conv.out_channels % 8 == 0
    assert model.classifier.in_features == scaled_channels(1024, width_mult)


def test_rounding_rule_keeps_the_papers_widths_exact():
    for width_mult in PAPER_ALPHAS:
        for channels in (32, 64, 128, 256, 512, 1024):
            assert scaled_channels(channels, width_mult) == channels * width_mult


def test_initialisation():
    model = MobileNetV1(num_classes=100, activation="relu6", dropout=0.2)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(bn.weight == 1) and torch.all(bn.bias == 0) for bn in bns)
    assert torch.all(model.classifier.bias == 0)
    assert 0.005 < model.classifier.weight.std().item() < 0.015
    # Kaiming (fan_out) keeps the pointwise convolutions' weights at std sqrt(2 / fan_out).
    pointwise = model.features[-1].pointwise[0]
    expected = (2 / pointwise.out_channels) ** 0.5
    assert abs(pointwise.weight.std().item() - expected) / expected < 0.05

    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model.train()  # dropout 0.2 before the classifier: two passes differ in training, never in evaluation
        assert not torch.equal(model(images), model(images))
        model.eval()
        assert torch.equal(model(images), model(images))


@pytest.mark.parametrize("kwargs", [{}, {"width_mult": 0.33, "num_classes": 7}, {"stem_stride": 2, "dropout": 0.1},
                                    {"activation": "relu6", "stem_activation": "relu"}])  # fmt: skip
def test_the_recorded_arguments_rebuild_the_same_network(kwargs):
    """Checkpoints and exports store ``net.arguments``; ``MobileNetV1(**arguments)`` must take the weights back."""
    net = MobileNetV1(**kwargs)
    rebuilt = MobileNetV1(**net.arguments)
    rebuilt.load_state_dict(net.state_dict())  # same layers, same shapes
    assert repr(rebuilt) == repr(net)  # every layer with its settings: strides, activations, dropout rate
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(images), net.eval()(images))


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"width_mult": 0.0}, "0.0"),
        ({"width_mult": 2.5}, "2.5"),
        ({"stem_stride": 3}, "3"),
        ({"activation": "gelu"}, "gelu"),
        ({"num_classes": 0}, "0"),
        ({"dropout": 1.0}, "1.0"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(kwargs, named):
    with pytest.raises(ValueError, match=named):
        MobileNetV1(**kwargs)


def test_a_few_adam_steps_fit_a_small_batch():
    torch.manual_seed(0)
    model = MobileNetV1(num_classes=4, width_mult=0.25)
    images, labels = torch.randn(16, 3, 32, 32), torch.arange(16) % 4
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(model(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_stem_activation_can_differ_from_the_blocks():
    # The reference tutorial's layout: ReLU after the stem, ReLU6 in the 13 blocks.
    model = MobileNetV1(num_classes=10, activation="relu6", stem_activation="relu")
    assert type(model.features[0][2]) is nn.ReLU
    assert all(
        type(block.depthwise[2]) is nn.ReLU6 and type(block.pointwise[2]) is nn.ReLU6 for block in model.features[1:]
    )
    assert type(MobileNetV1(activation="relu6").features[0][2]) is nn.ReLU6  # None follows `activation`
