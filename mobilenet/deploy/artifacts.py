"""The one door for every file this project reads back: checkpoints, imported and shipped weights, exports.

``load(path)`` turns any of them into an ``Artifact``: the network (or, for ONNX, an ONNX Runtime session) and
one ``Metadata`` record, the same for every kind of file:

    network      the ``MobileNetV1`` arguments                       (num_classes, width_mult, ...)
    class_names  one name per output                                 ["airplane", ...]
    resolution   input side in pixels; mean, std: the normalisation  32, (0.4914, ...), (0.2470, ...)
    data         the DataModule it was trained on, as a config gives it ({"class_path", "init_args"})
    run          the run it comes from: name, epoch, step, metrics, resolved config
    export       for exports: format, dtype, whether BatchNorm was folded
    temperature  the softmax temperature that calibrates the probabilities (1: none)

Files understood:
    .ckpt          a Lightning checkpoint of ``mobilenet fit`` or ``mobilenet import-tutorial``; the record
                   sits under the key ``"mobilenet"`` (checkpoints of earlier versions are converted on reading)
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
import math
import pickle
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from mobilenet.data.augment import CIFAR10_MEAN, CIFAR10_STD, MAX_RESOLUTION
from mobilenet.errors import UsageError
from mobilenet.model import NETWORK_ARGUMENTS, MobileNetV1

# Where a Lightning checkpoint keeps the record, and the record's format version.
METADATA_KEY = "mobilenet"
SCHEMA_VERSION = 1
# The DataModules a record may name for evaluation from the checkpoint alone; another class path in a file is
# never imported (the user can name it with --data, which is their own choice of code to run).
DATA_CLASSES = ("mobilenet.data.CIFARDataModule", "mobilenet.data.ImageFolderDataModule")
SIDECAR_SUFFIX = ".json"
TORCHSCRIPT_METADATA = "mobilenet.json"
KINDS = {
    ".ckpt": "checkpoint",
    ".safetensors": "safetensors",
    ".onnx": "onnx",
    ".pt": "torchscript",
    ".pth": "state_dict",
}
# How torch's weights_only loader names an object it refuses ("Unsupported global: GLOBAL os.system").
UNSAFE_OBJECT = "Unsupported global:"
EXPORT_EXTRA = 'pip install -e ".[export]"'


@dataclass
class Metadata:
    """What a consumer needs to build, feed and read the network, and where it comes from."""

    network: dict[str, Any]
    class_names: list[str]
    resolution: int = 32
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    data: Optional[dict[str, Any]] = None
    run: Optional[dict[str, Any]] = None
    export: Optional[dict[str, Any]] = None  # how an export was written: format, dtype, BatchNorm folded
    temperature: float = 1.0  # probabilities are softmax(logits / temperature) (calibration, see report)
    schema: int = SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return int(self.network.get("num_classes", 10))

    def to_dict(self) -> dict[str, Any]:
        """Plain data, the same in a checkpoint (``weights_only``-safe) as in JSON: tuples become lists."""
        return json.loads(json.dumps(asdict(self), default=str))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, record: Any, where: str) -> "Metadata":
        """A checked ``Metadata``; ``UsageError`` naming ``where`` and the first problem otherwise."""

        def bad(problem: str) -> UsageError:
            return UsageError(
                f"'{where}' carries a model record that is not valid ({problem}). It was not written by this "
                f"project, or was edited since; use a file written by `mobilenet fit`, `export` or `import-tutorial`."
            )

        if not isinstance(record, dict):
            raise bad(f"a {type(record).__name__} instead of a dict")
        unknown = sorted(set(record) - {f.name for f in cls.__dataclass_fields__.values()})
        if unknown:
            raise bad(f"unknown keys {unknown}")
        network = record.get("network")
        if not isinstance(network, dict) or not set(network) <= set(NETWORK_ARGUMENTS):
            raise bad(f"'network' must be a dict of MobileNetV1 arguments ({', '.join(NETWORK_ARGUMENTS)})")
        try:
            with torch.device("meta"):  # the network's own argument checks, without allocating its weights
                MobileNetV1(**network)
        except (UsageError, TypeError) as err:
            raise bad(f"network: {err}") from err
        names = record.get("class_names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise bad("'class_names' must be a list of strings")
        if len(names) != network.get("num_classes", 10):
            raise bad(f"{len(names)} class names for a network with {network.get('num_classes', 10)} outputs")
        resolution = record.get("resolution", 32)
        if not isinstance(resolution, int) or isinstance(resolution, bool) or not 1 <= resolution <= MAX_RESOLUTION:
            raise bad(f"'resolution' must be a whole number of pixels from 1 to {MAX_RESOLUTION}, got {resolution!r}")
        for key in ("mean", "std"):
            values = record.get(key, CIFAR10_MEAN if key == "mean" else CIFAR10_STD)
            if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(finite(v) for v in values):
                raise bad(f"'{key}' must be three finite numbers, got {values!r}")
        if min(record.get("std", CIFAR10_STD)) <= 0:
            raise bad("'std' must be positive")
        data = record.get("data")
        if data is not None and not (
            isinstance(data, dict)
            and isinstance(data.get("class_path"), str)
            and isinstance(data.get("init_args"), dict)
        ):
            raise bad("'data' must be a dict with a 'class_path' string and an 'init_args' dict")
        for key in ("run", "export"):
            if record.get(key) is not None and not isinstance(record[key], dict):
                raise bad(f"'{key}' must be a dict")
        if not isinstance((record.get("run") or {}).get("name") or "", str):
            raise bad("'run.name' must be a string")
        temperature = record.get("temperature", 1.0)
        if not finite(temperature) or temperature <= 0:
            raise bad(f"'temperature' must be a positive number, got {temperature!r}")
        schema = record.get("schema", SCHEMA_VERSION)
        if not isinstance(schema, int) or schema > SCHEMA_VERSION:
            raise bad(f"record format {schema!r}, newer than this version of mobilenet reads ({SCHEMA_VERSION})")
        if data is not None and not all(isinstance(key, str) for key in data["init_args"]):
            raise bad("'data.init_args' must have string keys")
        return cls(
            network=dict(network),
            class_names=list(names),
            resolution=resolution,
            mean=tuple(float(v) for v in record.get("mean", CIFAR10_MEAN)),
            std=tuple(float(v) for v in record.get("std", CIFAR10_STD)),
            data=data,
            run=record.get("run"),
            export=record.get("export"),
            temperature=float(temperature),
            schema=record.get("schema", SCHEMA_VERSION),
        )


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Artifact:
    """A file read through ``load``: its record, and what runs it."""

    path: Path
    kind: str  # one of KINDS' values
    metadata: Metadata
    network: Optional[nn.Module] = None  # float32, eval mode, on the CPU (every kind but ONNX)
    session: Any = None  # an onnxruntime.InferenceSession (ONNX)
    checkpoint: dict = field(default_factory=dict, repr=False)  # a Lightning checkpoint's contents


def first_line(err: BaseException) -> str:
    """``TypeName: first line`` of an exception: torch.load's messages run to a dozen lines of advice."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def torch_load(path: Path, mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``, its failures turned into one sentence of this project's.

    (torch's own messages advise loading again with ``weights_only=False``, which would let the file run code:
    advice this project never passes on.)
    """
    if not path.exists():
        raise UsageError(f"'{path}' does not exist.")
    if path.is_dir():
        raise UsageError(f"'{path}' is a folder, not a file.")
    if not zipfile.is_zipfile(path):  # every file torch.save writes is a zip archive
        raise UsageError(
            f"'{path}' is not a file saved by PyTorch, or it is truncated (an interrupted copy or download). Pick "
            f"another file, or copy it again."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        refused = (
            str(err).split(UNSAFE_OBJECT)[1].split(" was not an allowed global")[0].strip()
            if (UNSAFE_OBJECT in str(err))
            else "objects that are not tensors or plain data"
        )
        raise UsageError(
            f"'{path}' holds Python objects other than tensors and plain data ({refused}); it is not loaded, "
            f"because unpickling such objects can run arbitrary code. Files written by this project never "
            f"contain them: use one of those."
        ) from err
    except Exception as err:  # a damaged archive
        raise UsageError(
            f"'{path}' could not be read ({first_line(err)}). It is probably truncated by an interrupted copy; pick "
            f"another file, or copy it again."
        ) from err


def read_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint's contents as plain data, for code that needs the file as a checkpoint only
    (``load`` reads a ``.ckpt`` itself, since the same file may be a state_dict export instead).

    The tensors are memory-mapped: only what is read comes off the disk.
    """
    path = Path(path)
    checkpoint = torch_load(path, mmap=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UsageError(
            f"'{path}' holds no model weights ('state_dict'): it is not a checkpoint of `mobilenet fit` or "
            f"`mobilenet import-tutorial`."
        )
    return checkpoint


def checkpoint_metadata(checkpoint: dict, where: str) -> Metadata:
    """The record of a Lightning checkpoint, converted from the layout of earlier versions where needed."""
    if METADATA_KEY in checkpoint:
        return Metadata.from_dict(checkpoint[METADATA_KEY], where)
    try:
        record = legacy_record(checkpoint, where)
    except (TypeError, AttributeError, ValueError) as err:  # a hand-made file in the earlier layout
        raise UsageError(
            f"'{where}' carries settings in an earlier layout that cannot be read ({first_line(err)})."
        ) from err
    return Metadata.from_dict(record, where)


def legacy_record(checkpoint: dict, where: str) -> dict:
    """The record of a checkpoint written before it had one: network arguments in ``hyper_parameters``, the
    DataModule's state under its class name, its arguments in ``datamodule_hyper_parameters``."""
    hparams = checkpoint.get("hyper_parameters")
    state = checkpoint.get("CIFARDataModule") or checkpoint.get("ImageFolderDataModule")
    if not isinstance(hparams, dict) or not isinstance(state, dict):
        raise UsageError(
            f"'{where}' lacks the model record this project writes into every checkpoint (network arguments, class "
            f"names, preprocessing). It was not written by `mobilenet fit` or `mobilenet import-tutorial`."
        )
    data_args = checkpoint.get("datamodule_hyper_parameters") or {}
    data_class = "ImageFolderDataModule" if "root" in data_args else "CIFARDataModule"
    data_args = {key: value for key, value in data_args.items() if not key.startswith("_")}
    return {
        "network": {key: hparams[key] for key in NETWORK_ARGUMENTS if key in hparams},
        "class_names": state.get("class_names"),
        "resolution": state.get("resolution", 32),
        "mean": list(state.get("mean", CIFAR10_MEAN)),
        "std": list(state.get("std", CIFAR10_STD)),
        "data": {"class_path": f"mobilenet.data.{data_class}", "init_args": data_args},
        "run": {"epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step")},
    }


def build_network(metadata: Metadata, weights: dict[str, torch.Tensor], where: str) -> MobileNetV1:
    """``MobileNetV1(**metadata.network)`` holding ``weights`` (float32, eval mode), or why they do not fit."""
    strange = [
        str(key) for key, value in weights.items() if not isinstance(key, str) or not isinstance(value, torch.Tensor)
    ]
    if strange:
        raise UsageError(
            f"'{where}' holds entries that are not named tensors where weights belong: {', '.join(strange[:5])}."
        )
    net = MobileNetV1(**metadata.network)
    own = net.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = [
        f"{key} {tuple(weights[key].shape)} (expected {tuple(own[key].shape)})"
        for key in own
        if key in weights and weights[key].shape != own[key].shape
    ]
    if missing or unexpected or wrong:
        details = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}" if missing else "",
                f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}" if unexpected else "",
                f"wrong shapes {'; '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}" if wrong else "",
            )
            if part
        )
        raise UsageError(
            f"The weights in '{where}' do not fit the network its record describes ({describe(metadata)}): "
            f"{details}. The file was edited or assembled from parts; use one written by this project."
        )
    net.load_state_dict({key: value.float() if value.is_floating_point() else value for key, value in weights.items()})
    return net.eval()


def describe(metadata: Metadata) -> str:
    network = metadata.network
    return f"MobileNetV1 α = {network.get('width_mult', 1.0):g}, {metadata.num_classes} classes"


def network_weights(state_dict: dict) -> dict:
    """The ``MobileNetV1`` weights inside a LightningModule's state_dict (its ``net.`` entries)."""
    return {key[len("net.") :]: value for key, value in state_dict.items() if str(key).startswith("net.")}


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
