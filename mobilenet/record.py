"""The model record: what every checkpoint and export of this project carries besides its weights, checked
before anything uses it, and the one weights-only reader of checkpoints.

The record (``Metadata``), the same for every kind of file:

    network      the ``MobileNetV1`` arguments                       (num_classes, width_mult, ...)
    class_names  one name per output                                 ["airplane", ...]
    resolution   input side in pixels; mean, std: the normalisation  32, (0.4914, ...), (0.2470, ...)
    data         the DataModule it was trained on, as a config gives it ({"class_path", "init_args"})
    run          the run it comes from: name, epoch, step, metrics, resolved config
    export       for exports: format, dtype, whether BatchNorm was folded
    temperature  the softmax temperature that calibrates the probabilities (1: none)

A Lightning checkpoint keeps it under the key ``"mobilenet"``. ``build_network`` is the one way a network is
built from a record and its weights. Training writes and reads checkpoints through this module;
``mobilenet.deploy.artifacts`` reads the export formats with it.
"""

import json
import math
import pickle
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from mobilenet.data.augment import CIFAR10_MEAN, CIFAR10_STD, MAX_RESOLUTION
from mobilenet.errors import UsageError
from mobilenet.model import NETWORK_ARGUMENTS, MobileNetV1

# Where a Lightning checkpoint keeps the record, and the record's format version.
METADATA_KEY = "mobilenet"
SCHEMA_VERSION = 1
# The DataModules a record may name for evaluation from the checkpoint alone; another class path in a file is
# never imported (the user can name it with --data, which is their own choice of code to run).
DATA_CLASSES = ("mobilenet.data.CIFARDataModule", "mobilenet.data.ImageFolderDataModule")
# The smallest normalisation std a record may give (pixels in [0, 1] divided by it stay finite and meaningful).
MIN_STD = 1e-3
# How torch's weights_only loader names an object it refuses ("Unsupported global: GLOBAL os.system").
UNSAFE_OBJECT = "Unsupported global:"


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
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise bad(f"class names repeat ({', '.join(map(repr, repeated[:3]))}): each output needs its own name")
        if any(not name.isprintable() for name in names):
            raise bad(
                "class names hold control characters or bytes that are not UTF-8 (escape sequences would reach the "
                "terminal)"
            )
        resolution = record.get("resolution", 32)
        if not isinstance(resolution, int) or isinstance(resolution, bool) or not 1 <= resolution <= MAX_RESOLUTION:
            raise bad(f"'resolution' must be a whole number of pixels from 1 to {MAX_RESOLUTION}, got {resolution!r}")
        for key in ("mean", "std"):
            values = record.get(key, CIFAR10_MEAN if key == "mean" else CIFAR10_STD)
            if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(finite(v) for v in values):
                raise bad(f"'{key}' must be three finite numbers, got {values!r}")
        if min(record.get("std", CIFAR10_STD)) < MIN_STD:
            raise bad(f"'std' must be at least {MIN_STD:g}: a smaller one turns every pixel into infinity")
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
    """The record of a Lightning checkpoint of this project."""
    if not isinstance(checkpoint.get(METADATA_KEY), dict):
        raise UsageError(
            f"'{where}' lacks the model record this project writes into every checkpoint (network arguments, class "
            f"names, preprocessing). It was not written by `mobilenet fit` or `mobilenet import-tutorial`."
        )
    return Metadata.from_dict(checkpoint[METADATA_KEY], where)


def build_network(metadata: Metadata, weights: dict[str, torch.Tensor], where: str) -> MobileNetV1:
    """``MobileNetV1(**metadata.network)`` holding ``weights`` (float32, eval mode), or why they do not fit."""
    strange = [
        str(key) for key, value in weights.items() if not isinstance(key, str) or not isinstance(value, torch.Tensor)
    ]
    if strange:
        raise UsageError(
            f"'{where}' holds entries that are not named tensors where weights belong: {', '.join(strange[:5])}."
        )
    not_finite = [
        key for key, value in weights.items() if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if not_finite:
        raise UsageError(
            f"'{where}' holds weights that are not finite numbers (NaN or infinity in {', '.join(not_finite[:3])}"
            f"{' ...' if len(not_finite) > 3 else ''}): its answers would be meaningless. The training that wrote "
            f"it diverged, or the file was damaged; use an earlier checkpoint."
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
