"""`mobilenet import-tutorial`: weights trained with the reference tutorial's network as a checkpoint of ours.

The tutorial's MobileNet stores ``conv1.weight``, ``bn1.*``, ``layers.{i}.depthConv.{0,1}.*`` and
``layers.{i}.pointConv.{0,1}.*`` for the 13 blocks (0 the convolution, 1 its BatchNorm) and ``linear.*``. It
has a stride-1 stem with ReLU, ReLU6 inside the blocks and a 2×2 average pool over the last 2×2 map (the same
as our global pool at 32×32). That is ``MobileNetV1(stem_stride=1, activation="relu6",
stem_activation="relu")``, so the weights carry over one to one; convolution biases, if a variant has them,
are folded into the following BatchNorm's running mean (exact: BN(conv(x) + b) uses x - (μ - b)).

The result is a ``.ckpt`` that ``mobilenet test``, ``predict`` and ``export`` accept like one from ``fit``.
"""

import argparse
import re
from pathlib import Path

import torch

from mobilenet.backends import first_line
from mobilenet.errors import UsageError
from mobilenet.model import BLOCKS, STEM_CHANNELS, MobileNetV1

TUTORIAL_LAYOUT = {"stem_stride": 1, "activation": "relu6", "stem_activation": "relu"}
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
            parts.append(f"missing {len(missing)}: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected)}")
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


def write_checkpoint(net_state: dict[str, torch.Tensor], model: dict, dataset: str, data_dir: str, path: Path) -> None:
    """A checkpoint laid out as ``mobilenet fit`` writes one: weights, hyper-parameters and data settings."""
    import lightning

    from mobilenet.backends import DATA_STATE_KEY
    from mobilenet.data.cifar_files import ensure_available, read_class_names
    from mobilenet.data.datamodule import CIFAR10_MEAN, CIFAR10_STD, NUM_CLASSES
    from mobilenet.module import MobileNetClassifier

    if NUM_CLASSES[dataset] != model["num_classes"]:
        raise UsageError(
            f"The tutorial's network has {model['num_classes']} outputs but --dataset {dataset} has "
            f"{NUM_CLASSES[dataset]} classes; pass the dataset it was trained on."
        )
    folder = ensure_available(dataset, data_dir, download=False, verify=False)  # explains itself when absent
    classifier = MobileNetClassifier(**model)
    classifier.net.load_state_dict(net_state)
    data_hparams = {"dataset": dataset, "resolution": 32}
    checkpoint = {
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
        "state_dict": classifier.state_dict(),
        "hparams_name": "kwargs",
        "hyper_parameters": dict(classifier.hparams),
        "datamodule_hparams_name": "kwargs",
        "datamodule_hyper_parameters": data_hparams,
        DATA_STATE_KEY: {
            "class_names": read_class_names(folder, dataset),
            "resolution": 32,
            "mean": CIFAR10_MEAN,
            "std": CIFAR10_STD,
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(checkpoint, partial)
    partial.replace(path)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mobilenet import-tutorial",
        description="Convert a state_dict saved by the reference tutorial's MobileNet into a checkpoint that "
        "`mobilenet test`, `predict` and `export` accept.",
    )
    parser.add_argument("weights", help="the tutorial's .pth file")
    parser.add_argument("--output", required=True, help="the .ckpt to write")
    parser.add_argument("--dataset", choices=("cifar10", "cifar100"), help="default: from the number of classes")
    parser.add_argument("--data_dir", default="data", help="folder holding the dataset, for its class names")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    output = Path(args.output)
    if output.suffix != ".ckpt":
        raise UsageError(f"--output '{output}' should end in .ckpt, the checkpoint suffix the other commands expect.")
    try:
        loaded = torch.load(args.weights, map_location="cpu", weights_only=True)
    except Exception as err:  # missing, truncated or a pickle of arbitrary objects
        raise UsageError(f"'{args.weights}' could not be read as a PyTorch state_dict ({first_line(err)}).") from err
    net_state, model = convert_state_dict(unwrap(loaded, args.weights))
    dataset = args.dataset or {10: "cifar10", 100: "cifar100"}.get(model["num_classes"])
    if dataset is None:
        raise UsageError(f"The tutorial's network has {model['num_classes']} outputs; CIFAR has 10 or 100.")
    write_checkpoint(net_state, model, dataset, args.data_dir, output)
    print(
        f"Wrote {output}: MobileNetV1 α = {model['width_mult']:g}, {model['num_classes']} classes ({dataset}), "
        f"stride-1 stem with ReLU, ReLU6 in the blocks. Evaluate it with "
        f"`mobilenet test --config configs/{dataset}.yaml --ckpt_path {output}`."
    )
    return 0
