"""A trained checkpoint as one callable: uint8 images (N, 3, H, W) → logits, plus what it takes to label them.

Everything that answers "what does the model say about these pixels" (``classify``, ``report``, the notebook)
goes through ``Classifier``, so that another backend only has to offer the same five things: ``class_names``,
``resolution``, ``mean``, ``std`` and ``__call__``.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from mobilenet.backends import MODEL_DEFAULTS
from mobilenet.data import CIFARDataModule, ImageFolderDataModule
from mobilenet.data.augment import BatchTransform
from mobilenet.data.batched import CIFAR10_MEAN, CIFAR10_STD
from mobilenet.errors import UsageError
from mobilenet.model import MobileNetV1
from mobilenet.runs import read_checkpoint

# Images per forward pass: α = 1 at 32×32 needs about 4 MB of activations per image in float32.
BATCH_SIZE = 256


@dataclass
class Classifier:
    net: MobileNetV1
    class_names: list[str]
    resolution: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> "Classifier":
        """The network, class names and preprocessing a ``mobilenet fit`` checkpoint was trained with."""
        checkpoint = read_checkpoint(str(path))
        hparams = checkpoint.get("hyper_parameters") or {}
        # Every MobileNetV1 argument the checkpoint saved (stem_activation too: `import-tutorial` sets it).
        net = MobileNetV1(**{key: hparams[key] for key in MODEL_DEFAULTS if key in hparams})
        weights = {
            key[len("net.") :]: value for key, value in checkpoint["state_dict"].items() if key.startswith("net.")
        }
        try:
            net.load_state_dict(weights)
        except RuntimeError as err:
            raise UsageError(
                f"'{path}' does not hold MobileNetV1 weights that match its own hyper-parameters: {err}"
            ) from err
        # Saved by the DataModule's state_dict() under its class name; a checkpoint written without one falls
        # back to CIFAR's 32×32 and statistics, with the classes numbered.
        data = checkpoint.get(CIFARDataModule.__qualname__) or checkpoint.get(ImageFolderDataModule.__qualname__) or {}
        num_classes = net.classifier.out_features
        names = list(data.get("class_names") or [f"class {i}" for i in range(num_classes)])
        device = torch.device(device)
        return cls(
            # Channels-last: 1.4-1.5 × the images/s of the default memory order on the CPU (`python -m benchmarks`).
            net=net.to(device, memory_format=torch.channels_last).eval(),
            class_names=names,
            resolution=int(data.get("resolution", 32)),
            mean=tuple(data.get("mean", CIFAR10_MEAN)),
            std=tuple(data.get("std", CIFAR10_STD)),
            device=device,
        )

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """uint8 images (N, 3, H, W), any H and W → logits (N, num_classes) float32 on the CPU.

        Resizing to ``resolution`` and normalising are the evaluation transform of training. ``progress``
        shows a progress bar: at α = 1 on 2 CPU cores this measured 880-910 images/s (550-570 before the
        network went channels-last), so CIFAR's 10,000 test images take about 11 s; on a busy machine, minutes.
        """
        transform = BatchTransform("none", self.resolution, self.mean, self.std)
        starts = range(0, len(images), BATCH_SIZE)
        if progress:
            starts = tqdm(starts, desc="Classifying", unit="batch", file=sys.stderr)
        chunks = []
        for start in starts:
            batch = transform(images[start : start + BATCH_SIZE].to(self.device))
            chunks.append(self.net(batch.contiguous(memory_format=torch.channels_last)).float().cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, len(self.class_names))

    def probabilities(self, images: torch.Tensor, progress: bool = False) -> torch.Tensor:
        return self(images, progress).softmax(dim=1)
