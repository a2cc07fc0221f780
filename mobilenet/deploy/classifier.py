"""A trained network behind one interface, whichever runtime computes it: PyTorch or ONNX Runtime.

    classifier = open_classifier("checkpoints/cifar10/last.ckpt")          # PyTorch
    classifier = open_classifier("model.onnx")                             # ONNX Runtime, CPU
    probabilities = classifier.probabilities(images_uint8)                 # (N, classes)

Every classifier maps uint8 RGB images (N, 3, H, W) of any size to logits (N, classes) with the very
preprocessing the DataModules apply in evaluation (``mobilenet.data.augment.BatchTransform``: scale to
[0, 1], antialiased bilinear resize to the resolution, normalise), and knows the class names.
"""

import sys
from pathlib import Path
from typing import Literal, Union, get_args

import numpy as np
import torch

from mobilenet.data.augment import BatchTransform
from mobilenet.deploy.artifacts import Artifact, load
from mobilenet.errors import UsageError
from mobilenet.progress import progress as progress_bar
from mobilenet.record import Metadata

Backend = Literal["auto", "torch", "onnxruntime"]
BACKENDS = get_args(Backend)
# Images per forward pass: α = 1 at 32×32 needs about 4 MB of activations per image in float32.
BATCH_SIZE = 256


class Classifier:
    """Base of the runtimes: the record, the preprocessing, and batching with an optional progress bar."""

    backend = ""

    def __init__(self, metadata: Metadata) -> None:
        self.metadata = metadata
        self.class_names: list[str] = list(metadata.class_names)
        self.resolution = metadata.resolution
        self.mean, self.std = metadata.mean, metadata.std
        self.transform = BatchTransform("none", self.resolution, self.mean, self.std)

    def preprocess(self, images: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
        """uint8 (N, 3, H, W) → float32 (N, 3, resolution, resolution), normalised as in training."""
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise UsageError(
                f"Expected uint8 RGB images shaped (N, 3, H, W), got {images.dtype} {tuple(images.shape)}."
            )
        return self.transform(images)

    def logits(self, images: Union[torch.Tensor, np.ndarray], progress: bool = False) -> torch.Tensor:
        """uint8 images (N, 3, H, W) → logits (N, classes), float32 on the CPU, ``BATCH_SIZE`` images at a time.

        ``progress`` shows a bar on stderr (CIFAR's 10,000 test images take seconds on a CPU).
        """
        images = torch.as_tensor(images)
        starts = range(0, len(images), BATCH_SIZE)
        if progress:
            starts = progress_bar(starts, desc="Classifying", unit="batches", file=sys.stderr)
        chunks = [self.forward(self.preprocess(images[start : start + BATCH_SIZE])) for start in starts]
        return torch.cat(chunks) if chunks else torch.empty(0, len(self.class_names))

    def probabilities(self, images: Union[torch.Tensor, np.ndarray], progress: bool = False) -> torch.Tensor:
        """Class probabilities, softmax(logits / temperature) with the model's calibrated temperature."""
        return (self.logits(images, progress) / self.metadata.temperature).softmax(dim=1)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised float32 (N, 3, R, R) → logits (N, classes) as a CPU float32 tensor."""
        raise NotImplementedError


class TorchClassifier(Classifier):
    backend = "torch"

    def __init__(self, network: torch.nn.Module, metadata: Metadata, device: str | torch.device = "cpu") -> None:
        super().__init__(metadata)
        self.device = torch.device(device)
        # Channels-last: 1.4-1.5× the images/s of the default memory order on the CPU (`python -m benchmarks`).
        self.network = network.eval().to(self.device, memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        return self.network(batch).float().cpu()


class OnnxRuntimeClassifier(Classifier):
    backend = "onnxruntime"

    def __init__(self, session, metadata: Metadata) -> None:
        super().__init__(metadata)
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {self.input_name: batch.contiguous().numpy()})
        return torch.from_numpy(logits)


def check_device(device: str | torch.device) -> torch.device:
    """The device, or a sentence saying why it cannot be used here."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UsageError(f"--device '{device}' is not a device name; use cpu, cuda or cuda:N.") from err
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: classification runs on cpu or cuda (cuda:N); use one of those.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device} asks for a CUDA GPU, but PyTorch sees none here; use --device cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices here.")
    return device


def open_classifier(
    source: Union[str, Path, Artifact], backend: Backend = "auto", device: str | torch.device = "cpu"
) -> Classifier:
    """A ``Classifier`` for a file (or an already loaded ``Artifact``); ``auto`` runs ONNX files in ONNX
    Runtime and everything else in PyTorch."""
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
    artifact = source if isinstance(source, Artifact) else load(source)
    if artifact.kind == "onnx":
        if backend == "torch":
            raise UsageError(f"'{artifact.path}' is an ONNX model: run it with the onnxruntime backend.")
        return OnnxRuntimeClassifier(artifact.session, artifact.metadata)
    if backend == "onnxruntime":
        raise UsageError(
            f"The onnxruntime backend runs .onnx files; export '{artifact.path}' first with "
            f"`mobilenet export --ckpt_path {artifact.path} --format onnx` and pass the .onnx file."
        )
    return TorchClassifier(artifact.network, artifact.metadata, check_device(device))
