"""MobileNetV1 (Howard et al., 2017) as a plain ``nn.Module``: depthwise separable convolutions, width multiplier α.

The network knows nothing of Lightning or of the data pipeline; it maps normalised images (N, 3, H, W) to
logits (N, num_classes). The resolution multiplier ρ is a property of the input, not of the network: the
global average pool accepts any H, W.
"""

import inspect
from numbers import Real
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mobilenet.errors import UsageError

STEM_CHANNELS = 32

# c, s: output channels and stride of the 13 depthwise separable blocks (the paper's Table 1).
BLOCKS: list[tuple[int, int]] = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    *[(512, 1)] * 5,
    (1024, 2),
    (1024, 1),
]

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}


def scaled_channels(channels: int, width_mult: float, divisor: int = 8) -> int:
    """Round ``channels * width_mult`` to the nearest multiple of ``divisor``, never below it or 10% under.

    Multiples of 8 keep vectorised kernels efficient; the paper's α ∈ {1, 0.75, 0.5, 0.25} give exact
    multiples already, so the paper's layer widths (and cost tables) are unchanged. Same rule as
    torchvision's ``_make_divisible``.
    """
    scaled = channels * width_mult
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return rounded


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise convolution (``groups == in_channels``) that computes in float32 under CPU bfloat16 autocast
    where oneDNN's bfloat16 kernel is slow: at stride 2, and on inputs of 2×2 pixels or fewer.

    A per-layer precision policy chosen by measurement (docs/performance.md): with ``bf16-mixed`` on the CPU,
    oneDNN's bfloat16 depthwise backward leaves its fast path at those layers (up to 10× slower than float32),
    while the stride-1 depthwise layers and the 1×1 convolutions gain from bfloat16. The weights, their names and
    every other precision are those of ``nn.Conv2d``.
    """

    # Inputs this small (the 1024-channel layer at 2×2) run their bfloat16 backward slowly even at stride 1.
    SLOW_BF16_SIDE = 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if (
            images.device.type == "cpu"
            and torch.is_autocast_enabled("cpu")
            and (self.stride[0] > 1 or images.shape[-1] <= self.SLOW_BF16_SIDE)
        ):
            with torch.autocast("cpu", enabled=False):
                return super().forward(images.float())
        return super().forward(images)


class PointwiseConv2d(nn.Conv2d):
    """A 1×1 convolution that, under CPU bfloat16 autocast on a channels-last input, computes as one matrix
    multiply over the (N, H, W, C) view of its input.

    A precision policy chosen by measurement (docs/performance.md): on CPUs with AMX-BF16, oneDNN's bfloat16
    1×1 convolution backward leaves its fast path at small inputs (the 512-channel layers at 4×4, the
    1024-channel ones at 2×2: up to 15× slower than float32), while a bfloat16 matrix multiply of the same
    numbers keeps it at every shape. The weights, their names and every other precision are those of
    ``nn.Conv2d``.
    """

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if (
            images.device.type == "cpu"
            and self.stride == (1, 1)
            and self.groups == 1
            and torch.is_autocast_enabled("cpu")
            and images.is_contiguous(memory_format=torch.channels_last)
        ):
            weight = self.weight.view(self.out_channels, self.in_channels)
            return F.linear(images.permute(0, 2, 3, 1), weight, self.bias).permute(0, 3, 1, 2)
        return super().forward(images)


def conv_bn_act(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int, activation: type[nn.Module]
) -> nn.Sequential:
    """Convolution without bias (the BatchNorm after it has one), BatchNorm, activation."""
    conv = DepthwiseConv2d if groups == in_channels > 1 else PointwiseConv2d if kernel_size == 1 else nn.Conv2d
    return nn.Sequential(
        conv(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        activation(inplace=True),
    )


class DepthwiseSeparable(nn.Sequential):
    """A 3×3 depthwise convolution (one filter per channel) followed by a 1×1 pointwise convolution."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: type[nn.Module]) -> None:
        super().__init__()
        self.depthwise = conv_bn_act(in_channels, in_channels, 3, stride, in_channels, activation)
        self.pointwise = conv_bn_act(in_channels, out_channels, 1, 1, 1, activation)


class MobileNetV1(nn.Module):
    """MobileNetV1 returning logits (no softmax: ``CrossEntropyLoss`` applies log-softmax itself).

    Args:
        num_classes: Number of output classes (10 for CIFAR-10, 100 for CIFAR-100, 1000 for ImageNet).
        width_mult: The paper's width multiplier α in (0, 2]; scales every layer's channels.
        stem_stride: Stride of the first 3×3 convolution: 1 keeps 32×32 CIFAR images at 2×2 before the pool,
            2 is the paper's ImageNet layout (224×224 → 7×7).
        activation: ``"relu"`` (the paper) or ``"relu6"``.
        stem_activation: Activation after the first convolution; None uses ``activation``. The reference
            tutorial's network has ReLU here and ReLU6 in the 13 blocks (``mobilenet import-tutorial``).
        dropout: Dropout probability before the classifier; 0 disables it.
    """

    def __init__(
        self,
        num_classes: int = 10,
        width_mult: float = 1.0,
        stem_stride: Literal[1, 2] = 1,
        activation: Literal["relu", "relu6"] = "relu",
        dropout: float = 0.0,
        stem_activation: Optional[Literal["relu", "relu6"]] = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}.")
        if not isinstance(width_mult, Real) or isinstance(width_mult, bool) or not 0 < width_mult <= 2:
            raise UsageError(
                f"width_mult (α) must lie in (0, 2], got {width_mult!r}; the paper uses 1, 0.75, 0.5, 0.25."
            )
        if type(stem_stride) is not int or stem_stride not in (1, 2):
            raise UsageError(f"stem_stride must be 1 (CIFAR, 32×32) or 2 (ImageNet layout), got {stem_stride!r}.")
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise UsageError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}.")
        if stem_activation is not None and (not isinstance(stem_activation, str) or stem_activation not in ACTIVATIONS):
            raise UsageError(f"stem_activation must be one of {sorted(ACTIVATIONS)} or None, got {stem_activation!r}.")
        if not isinstance(dropout, Real) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise UsageError(f"dropout must lie in [0, 1), got {dropout!r}.")
        # What this network was built with: checkpoints and exports record it, and MobileNetV1(**arguments)
        # builds the same network again.
        self.arguments = {name: value for name, value in locals().items() if name in NETWORK_ARGUMENTS}
        act = ACTIVATIONS[activation]

        in_channels = scaled_channels(STEM_CHANNELS, width_mult)
        stem_act = ACTIVATIONS[stem_activation or activation]
        layers: list[nn.Module] = [conv_bn_act(3, in_channels, 3, stem_stride, 1, stem_act)]
        for channels, stride in BLOCKS:
            out_channels = scaled_channels(channels, width_mult)
            layers.append(DepthwiseSeparable(in_channels, out_channels, stride, act))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_channels, num_classes)
        self.num_features = in_channels

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.features(images)).flatten(1)
        return self.classifier(self.dropout(features))


# The network's arguments, in the order of its signature: the one place they are declared.
NETWORK_ARGUMENTS: tuple[str, ...] = tuple(inspect.signature(MobileNetV1).parameters)
