"""The reference tutorial's MobileNet, rebuilt here from its description to produce weights in its layout.

Stride-1 3×3 stem (``conv1``, ``bn1``) with ReLU; 13 blocks ``layers.{i}`` of ``depthConv`` and ``pointConv``
(convolution, BatchNorm, ReLU6); a 2×2 average pool over the final 2×2 map of a 32×32 image; ``linear``.
Written independently of ``mobilenet.model`` so that a conversion bug cannot hide in shared code.
"""

import torch
import torch.nn.functional as F
from torch import nn

# (output channels, stride) of the 13 blocks, as the tutorial lists them.
TUTORIAL_CFG = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


class TutorialBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, bias: bool) -> None:
        super().__init__()
        self.depthConv = nn.Sequential(
            nn.Conv2d(in_planes, in_planes, 3, stride, 1, groups=in_planes, bias=bias),
            nn.BatchNorm2d(in_planes),
            nn.ReLU6(),
        )
        self.pointConv = nn.Sequential(
            nn.Conv2d(in_planes, out_planes, 1, bias=bias), nn.BatchNorm2d(out_planes), nn.ReLU6()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointConv(self.depthConv(x))


class TutorialMobileNet(nn.Module):
    def __init__(self, num_classes: int = 10, bias: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, 1, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(32)
        blocks, in_planes = [], 32
        for out_planes, stride in TUTORIAL_CFG:
            blocks.append(TutorialBlock(in_planes, out_planes, stride, bias))
            in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.avg_pool2d(out, 2).flatten(1))


def randomise_batchnorm(net: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm as after training (fresh ones are the identity): random scales (up to 3, so that activations
    pass 6 and ReLU6 clips) and shifts, then running statistics measured on random images with them in place,
    so that every layer sees inputs of the size it normalises for."""
    generator = torch.Generator().manual_seed(seed)
    batchnorms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in batchnorms:
            bn.weight.copy_(torch.rand(bn.num_features, generator=generator) * 2.5 + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=generator) * 0.5)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batch
        net.train()(torch.randn(32, 3, 32, 32, generator=generator))
    for bn in batchnorms:
        bn.momentum = 0.1
    return net.eval()
