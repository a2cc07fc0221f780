"""MobileNetV1 (Howard et al., 2017) on CIFAR-10/100 with PyTorch Lightning.

``from mobilenet import MobileNetV1`` gives the plain network without importing Lightning; the training
pieces live in ``mobilenet.module`` (LightningModule), ``mobilenet.data`` (DataModule) and ``mobilenet.cli``.
"""

from mobilenet.model import MobileNetV1

__all__ = ["MobileNetV1"]
__version__ = "0.1.0"
