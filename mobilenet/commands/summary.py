"""`mobilenet summary`: parameters and multiply-adds of a MobileNetV1 configuration, counted from its modules.

The counts come from forward hooks on a real forward pass, so they follow whatever the network computes at
the given resolution; nothing here knows the expected numbers. Conventions are the paper's (Howard et al.,
2017, Tables 2, 6 and 7):

- a convolution costs (output pixels) × (output channels) × (input channels per group) × k × k mult-adds;
  a fully connected layer in × out;
- parameters are the layers' weights (convolution kernels and the fully connected matrix). Biases and
  BatchNorm's scale and shift are left out, as the paper's shares only add up that way; they add 0.5% at
  α = 1 and are printed on a separate line.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from mobilenet.commands.checkpoint_policy import given_at, settle
from mobilenet.commands.parser import command_parser, parse
from mobilenet.model import MobileNetV1

# The paper's Table 2 rows, in its order.
LAYER_TYPES = ("standard 3×3 conv", "depthwise 3×3 conv", "pointwise 1×1 conv", "fully connected")


@dataclass
class LayerCost:
    name: str
    kind: str  # one of LAYER_TYPES
    output_shape: tuple[int, ...]  # one image's (C, H, W) or (features,)
    mult_adds: int
    weights: int


def layer_type(module: nn.Module) -> Optional[str]:
    if isinstance(module, nn.Linear):
        return LAYER_TYPES[3]
    if not isinstance(module, nn.Conv2d):
        return None
    if module.groups > 1 and module.groups == module.in_channels:
        return LAYER_TYPES[1]
    if module.kernel_size == (1, 1):
        return LAYER_TYPES[2]
    return LAYER_TYPES[0]


def count_costs(net: nn.Module, resolution: int) -> list[LayerCost]:
    """One ``LayerCost`` per convolution and linear layer of ``net``, in execution order, for one image."""
    costs: list[LayerCost] = []

    def record(name: str, kind: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                per_output = module.in_channels // module.groups * kh * kw
            else:
                per_output = module.in_features
            costs.append(
                LayerCost(name, kind, tuple(output.shape[1:]), output[0].numel() * per_output, module.weight.numel())
            )

        return hook

    handles = [
        module.register_forward_hook(record(name, kind))
        for name, module in net.named_modules()
        if (kind := layer_type(module)) is not None
    ]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, resolution, resolution))
    finally:
        for handle in handles:
            handle.remove()
    return costs


def totals_by_type(costs: list[LayerCost]) -> dict[str, tuple[int, int]]:
    """{layer type: (mult-adds, weights)} over ``LAYER_TYPES``, zeros included."""
    return {
        kind: (sum(c.mult_adds for c in costs if c.kind == kind), sum(c.weights for c in costs if c.kind == kind))
        for kind in LAYER_TYPES
    }


def describe(net: MobileNetV1, resolution: int, per_layer: bool = False) -> str:
    """The cost table (the layout of the paper's Table 2) with totals in millions, optionally every layer."""
    costs = count_costs(net, resolution)
    by_type = totals_by_type(costs)
    total_ma = sum(ma for ma, _ in by_type.values())
    total_w = sum(w for _, w in by_type.values())
    all_params = sum(p.numel() for p in net.parameters())
    lines = []
    if per_layer:
        lines.append(f"{'layer':<28}{'type':<21}{'output C×H×W':>16}{'mult-adds':>14}{'parameters':>12}")
        for c in costs:
            shape = "×".join(map(str, c.output_shape))
            lines.append(f"{c.name:<28}{c.kind:<21}{shape:>16}{c.mult_adds:>14,}{c.weights:>12,}")
        lines.append("")
    lines.append(f"{'type':<21}{'mult-adds':>12}{'share':>9}{'parameters':>13}{'share':>9}")
    for kind, (ma, w) in by_type.items():
        lines.append(f"{kind:<21}{ma / 1e6:>10.2f} M{ma / total_ma:>9.2%}{w / 1e6:>11.3f} M{w / total_w:>9.2%}")
    lines.append(f"{'total':<21}{total_ma / 1e6:>10.2f} M{'':>9}{total_w / 1e6:>11.3f} M")
    lines.append(
        f"Parameters count the layers' weights, as the paper does; with biases and BatchNorm the network has "
        f"{all_params / 1e6:.3f} M ({all_params:,})."
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = command_parser(
        "summary",
        "Parameters and multiply-adds of MobileNetV1, in total and by layer type (the paper's Table 2), for the "
        "network a config describes (--config, --model.net.width_mult, --data.resolution ...) or a checkpoint or "
        "export holds (--ckpt_path).",
    )
    parser.add_argument("--per_layer", action="store_true", help="also list every convolution and linear layer")
    config, given = parse(parser, argv)
    stored = None
    if config.ckpt_path:
        artifact = settle(config, "summary", given=given).artifact
        metadata = artifact.metadata
        net, resolution = MobileNetV1(**metadata.network), metadata.resolution
        stored = stored_as(artifact.path, metadata.export)
    else:
        # Built as fit builds it: the DataModule gives the class count (a CIFAR-100 config, a folder's classes).
        built = parser.instantiate(config)
        net, resolution = built.model.net, built.data.resolution
        given_classes = given_at(given, "model.net.init_args").get("num_classes")
        if given_classes is not None and given_classes != net.arguments["num_classes"]:  # the paper's 1000, say
            net = MobileNetV1(**{**net.arguments, "num_classes": given_classes})
    stem = "stride-2 stem" if net.features[0][0].stride == (2, 2) else "stride-1 stem"
    width = net.arguments["width_mult"]
    print(f"MobileNetV1 α={width:g}, {resolution}×{resolution} input, {stem}, {net.classifier.out_features} classes")
    print(describe(net, resolution, config.per_layer))
    if stored:
        print(stored)
    return 0


def stored_as(path, export: Optional[dict]) -> Optional[str]:
    """How an export stores the network (format, precision, size on disk); None for a checkpoint."""
    if not export:
        return None
    quantization = export.get("quantization") or {}
    dtype = export.get("dtype", "float32")
    detail = (
        f", calibrated on {quantization.get('calibration_images')} images, top-1 agreement with float32 "
        f"{quantization.get('top1_agreement_with_float32', 0):.2%}"
        if quantization
        else ""
    )
    return f"Stored as {export.get('format', '?')} in {dtype} ({path.stat().st_size / 1e6:.1f} MB on disk{detail})."
