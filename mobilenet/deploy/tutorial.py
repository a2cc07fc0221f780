"""`mobilenet import-tutorial`: weights trained with the reference tutorial's network as a checkpoint of ours.

The tutorial's MobileNet stores ``conv1.weight``, ``bn1.*``, ``layers.{i}.depthConv.{0,1}.*`` and
``layers.{i}.pointConv.{0,1}.*`` for the 13 blocks (0 the convolution, 1 its BatchNorm) and ``linear.*``. It
has a stride-1 stem with ReLU, ReLU6 inside the blocks and a 2×2 average pool over the last 2×2 map (the same
as our global pool at 32×32). That is ``MobileNetV1(stem_stride=1, activation="relu6",
stem_activation="relu")``, so the weights carry over one to one; convolution biases, if a variant has them,
are folded into the following BatchNorm's running mean (exact: BN(conv(x) + b) uses x - (μ - b)).

The result is a ``.ckpt`` that every command accepts like one from ``fit`` (``mobilenet import-tutorial``).
"""

import re

import torch

from mobilenet.errors import UsageError
from mobilenet.model import BLOCKS, STEM_CHANNELS, MobileNetV1
from mobilenet.record import METADATA_KEY, Metadata

TUTORIAL_LAYOUT = {"stem_stride": 1, "activation": "relu6", "stem_activation": "relu"}
CIFAR_BY_CLASSES = {10: "cifar10", 100: "cifar100"}
BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# Containers other training scripts wrap a state_dict in (kuangliu's pytorch-cifar saves {"net": ...}).
WRAPPERS = ("state_dict", "net", "model", "model_state_dict")


def key_map() -> dict[str, str]:
    """Tutorial key → our ``MobileNetV1`` key, for every tensor (BatchNorm's counter included)."""
    pairs = {"conv1.weight": "features.0.0.weight", "linear.weight": "classifier.weight"}
    pairs["linear.bias"] = "classifier.bias"
    pairs.update({f"bn1.{t}": f"features.0.1.{t}" for t in BN_TENSORS})
    for i in range(len(BLOCKS)):
        for theirs, ours in (("depthConv", "depthwise"), ("pointConv", "pointwise")):
            pairs[f"layers.{i}.{theirs}.0.weight"] = f"features.{i + 1}.{ours}.0.weight"
            pairs.update({f"layers.{i}.{theirs}.1.{t}": f"features.{i + 1}.{ours}.1.{t}" for t in BN_TENSORS})
    return pairs


def conv_bias_keys() -> dict[str, str]:
    """Optional convolution bias in the tutorial's keys → the BatchNorm prefix (ours) that absorbs it."""
    biases = {"conv1.bias": "features.0.1."}
    for i in range(len(BLOCKS)):
        for theirs, ours in (("depthConv", "depthwise"), ("pointConv", "pointwise")):
            biases[f"layers.{i}.{theirs}.0.bias"] = f"features.{i + 1}.{ours}.1."
    return biases


def unwrap(loaded: object, path: str) -> dict[str, torch.Tensor]:
    """The state_dict itself, out of a training script's wrapper dict and DataParallel's ``module.`` prefix."""
    if isinstance(loaded, dict):
        for key in WRAPPERS:
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UsageError(f"'{path}' does not hold a state_dict (a dict of tensors), so it is not the tutorial's .pth.")
    return {re.sub(r"^module\.", "", key): value for key, value in loaded.items()}


def first_few(keys: list[str], shown: int = 6) -> str:
    """The first keys of a list, and how many more, so that a wrong file gets a short message."""
    more = f", ... ({len(keys) - shown} more)" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def convert_state_dict(theirs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Our ``MobileNetV1`` state_dict and constructor arguments for the tutorial's state_dict.

    Raises ``UsageError`` listing every missing, unexpected or wrongly shaped tensor.
    """
    mapping, biases = key_map(), conv_bias_keys()
    optional = {k for k in mapping if k.endswith("num_batches_tracked")}  # absent in pre-0.4.1 PyTorch files
    missing = sorted(k for k in mapping if k not in theirs and k not in optional)
    unexpected = sorted(k for k in theirs if k not in mapping and k not in biases)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {first_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {first_few(unexpected)}")
        raise UsageError(
            "The file is not a state_dict of the tutorial's MobileNet (keys conv1.weight, bn1.*, "
            "layers.{0..12}.depthConv/pointConv.{0,1}.*, linear.*); " + "; ".join(parts) + "."
        )
    model = {
        "num_classes": int(theirs["linear.weight"].shape[0]),
        "width_mult": theirs["conv1.weight"].shape[0] / STEM_CHANNELS,
        **TUTORIAL_LAYOUT,
    }
    try:
        reference = MobileNetV1(**model).state_dict()
    except UsageError as err:
        raise UsageError(f"The tutorial's weights describe no MobileNetV1 this project can build: {err}") from err
    ours = {mapping[k]: v for k, v in theirs.items() if k in mapping}
    for key, bn_prefix in biases.items():
        if key in theirs:
            ours[bn_prefix + "running_mean"] = ours[bn_prefix + "running_mean"] - theirs[key]
    for key, tensor in reference.items():
        ours.setdefault(key, tensor)  # num_batches_tracked, where the file predates it
    wrong = [
        f"{theirs_key} {tuple(theirs[theirs_key].shape)} (expected {tuple(reference[ours_key].shape)})"
        for theirs_key, ours_key in mapping.items()
        if theirs_key in theirs and theirs[theirs_key].shape != reference[ours_key].shape
    ]
    if wrong:
        raise UsageError(
            f"The tutorial's tensors do not fit a MobileNetV1 with α = {model['width_mult']:g} and "
            f"{model['num_classes']} classes (read from conv1.weight and linear.weight): " + "; ".join(wrong) + "."
        )
    return ours, model


def tutorial_checkpoint(
    net_state: dict[str, torch.Tensor], model: dict, class_names: list[str], dataset: str, data_dir: str
) -> dict:
    """A checkpoint laid out as ``mobilenet fit`` writes one: the weights under ``net.``, the record under
    ``mobilenet.record.METADATA_KEY``, and what Lightning needs to evaluate it."""
    import lightning

    metadata = Metadata(
        network=model,
        class_names=class_names,
        data={"class_path": "mobilenet.data.CIFARDataModule", "init_args": {"dataset": dataset, "data_dir": data_dir}},
        run={"name": None, "epoch": 0, "global_step": 0, "source": "the reference tutorial's weights"},
    )
    return {
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
        "state_dict": {f"net.{key}": value for key, value in net_state.items()},
        METADATA_KEY: metadata.to_dict(),
    }
