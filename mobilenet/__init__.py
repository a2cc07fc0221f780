"""MobileNetV1 (Howard et al., 2017) on CIFAR-10/100 with PyTorch Lightning.

``from mobilenet import MobileNetV1`` gives the plain network, ``mobilenet.from_pretrained("cifar10")`` the trained
one, without importing Lightning. The rest, by purpose:
``mobilenet.data`` (datasets, augmentation), ``mobilenet.training`` (LightningModule, callbacks, run folders),
``mobilenet.deploy`` (reading checkpoints and exports, the classifier interface, export) and
``mobilenet.commands`` (the ``mobilenet`` command).
"""

from mobilenet.model import MobileNetV1
from mobilenet.shipped import from_pretrained

__all__ = ["MobileNetV1", "from_pretrained"]
__version__ = "0.1.0"
