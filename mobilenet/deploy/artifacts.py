"""The one door for every file this project reads back: checkpoints, imported and shipped weights, exports.

``load(path)`` turns any of them into an ``Artifact``: the network (or, for ONNX, an ONNX Runtime session) and
one record (``mobilenet.record.Metadata``), the same for every kind of file.

Files understood:
    .ckpt          a Lightning checkpoint of ``mobilenet fit`` or ``mobilenet import-tutorial``; the record
                   sits under the key ``"mobilenet"``
    .safetensors   weights with the record as JSON in the file's metadata (the shipped model, ``export``)
    .onnx          ONNX with the record as JSON in its ``metadata_props`` (``export``)
    .pt            TorchScript with the record as the extra file ``mobilenet.json`` (``export``)
    .pth           a state_dict with the record in the ``.pth.json`` file beside it (``export``)

Checkpoints, state_dicts and safetensors are read without unpickling code (``torch.load(weights_only=True)``,
safetensors, JSON); TorchScript and ONNX files hold graphs that their runtimes execute as written, so they are
only as safe as their source. The record is checked (types, ranges, known keys) before anything uses it, and
no class named in a file is imported.
"""

import contextlib
import json
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from mobilenet.errors import UsageError
from mobilenet.record import (
    METADATA_KEY,
    Metadata,
    build_network,
    checkpoint_metadata,
    first_line,
    network_weights,
    torch_load,
)

SIDECAR_SUFFIX = ".json"
TORCHSCRIPT_METADATA = "mobilenet.json"
KINDS = {
    ".ckpt": "checkpoint",
    ".safetensors": "safetensors",
    ".onnx": "onnx",
    ".pt": "torchscript",
    ".pth": "state_dict",
}
EXPORT_EXTRA = 'pip install -e ".[export]"'


@dataclass
class Artifact:
    """A file read through ``load``: its record, and what runs it."""

    path: Path
    kind: str  # one of KINDS' values
    metadata: Metadata
    network: Optional[nn.Module] = None  # float32, eval mode, on the CPU (every kind but ONNX)
    session: Any = None  # an onnxruntime.InferenceSession (ONNX)
    checkpoint: dict = field(default_factory=dict, repr=False)  # a Lightning checkpoint's contents


def sidecar_path(path: str | Path) -> Path:
    """``model.pth`` → ``model.pth.json``: the record written next to an export."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: Path) -> Metadata:
    sidecar = sidecar_path(path)
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(
            f"'{path}' needs its record '{sidecar}' (network, class names, resolution, normalisation), which could "
            f"not be read ({first_line(err)}). Export the checkpoint again with `mobilenet export`, which writes both."
        ) from err
    return Metadata.from_dict(record, str(sidecar))


def kind_of(path: Path) -> str:
    """What a file is, by its content where its name could mislead (a Lightning checkpoint named .pth)."""
    suffix = path.suffix.lower()
    if suffix in (".onnx", ".safetensors"):
        return KINDS[suffix]
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(name.endswith(f"extra/{TORCHSCRIPT_METADATA}") or "/code/" in name for name in names):
            return "torchscript"
    return "checkpoint"  # torch.load decides: a Lightning checkpoint, or a state_dict with its record beside it


def load(path: str | Path, with_network: bool = True) -> Artifact:
    """Any file this project writes or imports, read into an ``Artifact``.

    ``with_network=False`` reads only the record (and, for a checkpoint, its contents) without building the
    network or starting ONNX Runtime.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"'{path}' does not exist.")
    if path.is_dir():
        raise UsageError(f"'{path}' is a folder; pass a checkpoint or an exported model file.")
    kind = kind_of(path)
    if kind == "onnx":
        return load_onnx(path, with_network)
    if kind == "safetensors":
        return load_safetensors(path, with_network)
    if kind == "torchscript":
        return load_torchscript(path, with_network)
    contents = torch_load(path, mmap=True)
    if isinstance(contents, dict) and isinstance(contents.get("state_dict"), dict):
        metadata = checkpoint_metadata(contents, str(path))
        network = build_network(metadata, network_weights(contents["state_dict"]), str(path)) if with_network else None
        return Artifact(path, "checkpoint", metadata, network=network, checkpoint=contents)
    if isinstance(contents, dict) and contents and all(isinstance(v, torch.Tensor) for v in contents.values()):
        if not sidecar_path(path).is_file():
            raise UsageError(
                f"'{path}' is a bare state_dict without the record '{sidecar_path(path)}' that `mobilenet export` "
                f"writes beside one. If it holds the reference tutorial's weights, convert it with "
                f"`mobilenet import-tutorial {path} --output FILE.ckpt`."
            )
        metadata = read_sidecar(path)
        network = build_network(metadata, contents, str(path)) if with_network else None
        return Artifact(path, "state_dict", metadata, network=network)
    raise UsageError(
        f"'{path}' is neither a checkpoint nor an export of this project (it holds a {type(contents).__name__} "
        f"without model weights). Pass a .ckpt of `mobilenet fit` or a file `mobilenet export` wrote."
    )


def with_network(artifact: Artifact) -> Artifact:
    """``artifact`` with what runs it (the network, or the ONNX Runtime session): a checkpoint read with
    ``with_network=False`` is built from the contents already in memory, any other file is read again."""
    if artifact.network is not None or artifact.session is not None:
        return artifact
    if artifact.kind == "checkpoint":
        weights = network_weights(artifact.checkpoint["state_dict"])
        return replace(artifact, network=build_network(artifact.metadata, weights, str(artifact.path)))
    return load(artifact.path)


def load_safetensors(path: Path, with_network: bool) -> Artifact:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            stored = (file.metadata() or {}).get(METADATA_KEY)
            weights = {key: file.get_tensor(key) for key in file.keys()} if with_network else {}
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"'{path}' could not be read as a safetensors file ({first_line(err)}).") from err
    if stored is None:
        raise UsageError(f"'{path}' holds weights without this project's record (metadata key '{METADATA_KEY}').")
    metadata = Metadata.from_dict(parse_json(stored, path), str(path))
    network = build_network(metadata, weights, str(path)) if with_network else None
    return Artifact(path, "safetensors", metadata, network=network)


@contextlib.contextmanager
def torchscript_deprecation_silenced():
    """torch 2.14 marks ``torch.jit`` deprecated in favour of ``torch.export``, warning at every call; TorchScript
    is still what libtorch (C++) and PyTorch Mobile consumers load, which is why this project writes it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        yield


def load_torchscript(path: Path, with_network: bool) -> Artifact:
    extra = {TORCHSCRIPT_METADATA: ""}
    try:
        with torchscript_deprecation_silenced():
            network = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as err:  # a damaged archive
        raise UsageError(f"'{path}' could not be read as TorchScript ({first_line(err)}).") from err
    stored = extra[TORCHSCRIPT_METADATA]
    metadata = Metadata.from_dict(parse_json(stored, path), str(path)) if stored else read_sidecar(path)
    return Artifact(path, "torchscript", metadata, network=network.eval() if with_network else None)


def load_onnx(path: Path, with_network: bool) -> Artifact:
    if not with_network:  # the record alone: read it without starting ONNX Runtime
        try:
            import onnx

            model = onnx.load(str(path), load_external_data=False)
            stored = {prop.key: prop.value for prop in model.metadata_props}.get(METADATA_KEY)
        except ImportError:
            stored = None
        except Exception as err:  # onnx raises protobuf's DecodeError for damaged files
            raise UsageError(f"'{path}' could not be read as an ONNX model ({first_line(err)}).") from err
        if stored or sidecar_path(path).is_file():
            metadata = Metadata.from_dict(parse_json(stored, path), str(path)) if stored else read_sidecar(path)
            return Artifact(path, "onnx", metadata)
    ort = require("onnxruntime")
    try:
        options = ort.SessionOptions()
        # As many threads as PyTorch uses, so that the two runtimes are compared on equal hardware.
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for damaged models
        raise UsageError(f"'{path}' could not be read as an ONNX model ({first_line(err)}).") from err
    stored = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    metadata = Metadata.from_dict(parse_json(stored, path), str(path)) if stored else read_sidecar(path)
    return Artifact(path, "onnx", metadata, session=session)


def parse_json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"The record stored in '{path}' is not valid JSON ({err}).") from err


def require(module: str):
    """Import an optional export dependency (onnx, onnxruntime, onnxscript) or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UsageError(
            f"This needs the '{module}' package, which is not installed. Install the export extras with {EXPORT_EXTRA}."
        ) from err
