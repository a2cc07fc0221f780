"""A trained classifier behind one interface, whichever runtime computes it: PyTorch or ONNX Runtime.

Every backend knows what a consumer needs to preprocess like training did (class names, input resolution,
normalisation mean and std) and maps uint8 images (N, 3, H, W) to logits (N, classes) with the very
preprocessing the DataModule applies (``mobilenet.data.augment``: scale to [0, 1], antialiased bilinear
resize to the resolution, normalise).

    classifier = load_classifier("checkpoints/cifar10/last.ckpt")           # PyTorch
    classifier = load_classifier("model.onnx", backend="onnxruntime")       # ONNX Runtime, CPU
    logits = classifier.logits(images_uint8)

Files understood: a ``.ckpt`` written by ``mobilenet fit`` (or ``import-tutorial``), and the ``.onnx``,
``.pt`` (TorchScript) and ``.pth`` (state_dict) files of ``mobilenet export`` with their ``.json`` sidecar.
"""

import contextlib
import inspect
import json
import warnings
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import torch

from mobilenet.data.augment import BatchTransform
from mobilenet.errors import UsageError
from mobilenet.model import MobileNetV1

Backend = Literal["auto", "torch", "onnxruntime"]
BACKENDS = ("auto", "torch", "onnxruntime")
# Where the DataModule's state (class names, resolution, mean, std) sits in a Lightning checkpoint.
DATA_STATE_KEY = "CIFARDataModule"
# The key under which the metadata JSON is stored in an ONNX model's metadata_props.
ONNX_METADATA_KEY = "mobilenet"
MODEL_DEFAULTS = {name: p.default for name, p in inspect.signature(MobileNetV1).parameters.items()}
EXPORT_EXTRA = 'pip install -e ".[export]"'


def require(module: str):
    """Import an optional export dependency (onnx, onnxruntime, onnxscript) or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UsageError(
            f"This needs the '{module}' package, which is not installed. Install the export extras with {EXPORT_EXTRA}."
        ) from err


@contextlib.contextmanager
def torchscript_deprecation_silenced():
    """torch 2.14 marks ``torch.jit`` deprecated in favour of ``torch.export``, warning at every call; TorchScript
    is still what libtorch (C++) and PyTorch Mobile consumers load, which is why this project writes it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        yield


def first_line(err: Exception) -> str:
    """``TypeName: first line`` of an exception: torch.load's messages run to a dozen lines of advice."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def sidecar_path(path: Union[str, Path]) -> Path:
    """``model.onnx`` → ``model.onnx.json``: the metadata file written next to every export (one per format,
    so that exports of one checkpoint in several formats keep their own)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_sidecar(path: Union[str, Path]) -> dict:
    sidecar = sidecar_path(path)
    try:
        return json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(
            f"'{path}' needs its metadata file '{sidecar}' (class names, resolution, normalisation), which could not "
            f"be read ({first_line(err)}). Export the checkpoint again with `mobilenet export`, which writes both."
        ) from err


def load_checkpoint_network(path: Union[str, Path]) -> tuple[MobileNetV1, dict]:
    """The trained ``MobileNetV1`` (eval mode) of a Lightning checkpoint and its metadata.

    Metadata: ``model`` (the ``MobileNetV1`` arguments), ``class_names``, ``resolution``, ``mean``, ``std``.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # missing, truncated, or not a torch file: one answer for all
        raise UsageError(
            f"'{path}' could not be read as a checkpoint ({first_line(err)}); pass a .ckpt file written by "
            f"`mobilenet fit` or `mobilenet import-tutorial`."
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or DATA_STATE_KEY not in checkpoint:
        raise UsageError(
            f"'{path}' is not a checkpoint of this project: it lacks the weights ('state_dict') or the data settings "
            f"('{DATA_STATE_KEY}'). Pass a .ckpt written by `mobilenet fit` or `mobilenet import-tutorial`."
        )
    hparams = checkpoint.get("hyper_parameters") or {}
    model = {key: hparams.get(key, default) for key, default in MODEL_DEFAULTS.items()}
    net = MobileNetV1(**model)
    weights = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(weights)
    data = checkpoint[DATA_STATE_KEY]
    metadata = {
        "architecture": "MobileNetV1",
        "model": model,
        "class_names": list(data["class_names"]),
        "resolution": int(data["resolution"]),
        "mean": list(data["mean"]),
        "std": list(data["std"]),
    }
    return net.eval(), metadata


class Classifier:
    """Base of the backends: metadata, preprocessing, and ``logits`` of uint8 images."""

    backend = ""

    def __init__(self, metadata: dict) -> None:
        self.metadata = metadata
        self.class_names: list[str] = list(metadata["class_names"])
        self.resolution = int(metadata["resolution"])
        self.mean = tuple(metadata["mean"])
        self.std = tuple(metadata["std"])
        self.transform = BatchTransform("none", self.resolution, self.mean, self.std)

    def preprocess(self, images: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
        """uint8 (N, 3, H, W) → float32 (N, 3, resolution, resolution), normalised as in training."""
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise UsageError(
                f"Expected uint8 RGB images shaped (N, 3, H, W), got {images.dtype} {tuple(images.shape)}."
            )
        return self.transform(images)

    def logits(self, images: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
        return self.forward(self.preprocess(images))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised float32 (N, 3, R, R) → logits (N, classes) as a CPU float32 tensor."""
        raise NotImplementedError


class TorchClassifier(Classifier):
    backend = "torch"

    def __init__(self, net: torch.nn.Module, metadata: dict) -> None:
        super().__init__(metadata)
        self.net = net.eval()

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch).float().cpu()


class OnnxRuntimeClassifier(Classifier):
    backend = "onnxruntime"

    def __init__(self, path: Union[str, Path], threads: Optional[int] = None) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        # As many threads as PyTorch uses, so that the two backends are compared on equal hardware.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        stored = self.session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
        super().__init__(json.loads(stored) if stored else read_sidecar(path))
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {self.input_name: batch.contiguous().numpy()})
        return torch.from_numpy(logits)


def load_classifier(path: Union[str, Path], backend: Backend = "auto") -> Classifier:
    """A ``Classifier`` for a checkpoint or an export; ``auto`` picks ONNX Runtime for ``.onnx``, else PyTorch."""
    path = Path(path)
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
    if not path.is_file():
        raise UsageError(f"'{path}' is not a file; pass a .ckpt checkpoint or an exported .onnx, .pt or .pth file.")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        if backend == "torch":
            raise UsageError(f"'{path}' is an ONNX model: run it with the onnxruntime backend.")
        return OnnxRuntimeClassifier(path)
    if backend == "onnxruntime":
        raise UsageError(
            f"The onnxruntime backend runs .onnx files; export '{path}' first with "
            f"`mobilenet export --ckpt_path {path} --format onnx` and pass the .onnx file."
        )
    if suffix == ".pt":
        with torchscript_deprecation_silenced():
            net = torch.jit.load(str(path), map_location="cpu")
        return TorchClassifier(net, read_sidecar(path))
    if suffix == ".pth":
        metadata = read_sidecar(path)
        net = MobileNetV1(**metadata["model"])
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return TorchClassifier(net, metadata)
    net, metadata = load_checkpoint_network(path)
    return TorchClassifier(net, metadata)
