"""MobileNetV1 (Howard et al., 2017) on CIFAR-10/100 with PyTorch Lightning.

``from mobilenet import MobileNetV1`` gives the plain network without importing Lightning. The rest, by purpose:
``mobilenet.data`` (datasets, augmentation), ``mobilenet.training`` (LightningModule, callbacks, run folders),
``mobilenet.deploy`` (reading checkpoints and exports, the classifier interface, export) and
``mobilenet.commands`` (the ``mobilenet`` command).
"""

from mobilenet.model import MobileNetV1

__all__ = ["MobileNetV1"]
__version__ = "0.1.0"
