"""``mobilenet import-tutorial``: weights trained with the reference tutorial's network as a checkpoint of ours
(``mobilenet.deploy.tutorial``), which the evaluation and deployment commands then accept (fit resumes
training checkpoints only)."""

from pathlib import Path

import torch

from mobilenet.commands.parser import command_parser
from mobilenet.data.cifar import NUM_CLASSES
from mobilenet.data.cifar_files import ensure_available, read_class_names
from mobilenet.deploy.export import check_output
from mobilenet.deploy.tutorial import CIFAR_BY_CLASSES, convert_state_dict, tutorial_checkpoint, unwrap
from mobilenet.errors import UsageError
from mobilenet.files import atomic_write
from mobilenet.record import torch_load


def main(argv: list[str]) -> int:
    parser = command_parser(
        "import-tutorial",
        "Convert a state_dict saved by the reference tutorial's MobileNet into a checkpoint that every command "
        "accepts. The class names are read from the dataset (--data.dataset, --data.data_dir).",
        uses=("data",),
    )
    parser.add_argument("weights", help="the tutorial's .pth file")
    parser.add_argument("--output", required=True, help="the .ckpt to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    config = parser.parse_args(argv)
    output, weights = Path(config.output), Path(config.weights)
    if output.suffix != ".ckpt":
        raise UsageError(f"--output '{output}' should end in .ckpt, the checkpoint suffix the other commands expect.")
    check_output(output, weights, config.overwrite, ".ckpt")
    net_state, model = convert_state_dict(unwrap(torch_load(weights), str(weights)))
    data = config.data.init_args
    # CIFAR-10 is the default dataset: unless another is named, the network's outputs say which it was.
    dataset = (
        CIFAR_BY_CLASSES.get(model["num_classes"]) if data.get("dataset", "cifar10") == "cifar10" else data.dataset
    )
    if dataset is None or NUM_CLASSES[dataset] != model["num_classes"]:
        raise UsageError(
            f"The tutorial's network has {model['num_classes']} outputs, which is neither CIFAR-10 (10) nor "
            f"--data.dataset {data.get('dataset')}; pass the dataset it was trained on."
        )
    data_dir = data.get("data_dir", "data")
    folder = ensure_available(dataset, data_dir, download=False, verify=False)
    checkpoint = tutorial_checkpoint(net_state, model, read_class_names(folder, dataset), dataset, data_dir)
    with atomic_write(output, replace=config.overwrite) as file:
        torch.save(checkpoint, file)
    print(
        f"Wrote {output}: MobileNetV1 α = {model['width_mult']:g}, {model['num_classes']} classes ({dataset}), "
        f"stride-1 stem with ReLU, ReLU6 in the blocks. Evaluate it with `mobilenet test --ckpt_path {output}`."
    )
    return 0
