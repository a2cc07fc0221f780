"""The one parser of every command: ``--config`` files, dotted overrides with ``fit``'s names, ``--run_name`` and
``--ckpt_path last|best|FILE``.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's (``lightning.py``), which adds the Trainer's
options; the other commands get theirs from ``command_parser``. Both put the model, the data and the run's
options on the parser through the same functions here. A command's ``--help`` shows the groups it uses; the
sections of a training config that it does not use are accepted as a mapping and ignored, so one config file
serves every command. What a checkpoint then decides is ``checkpoint_policy``'s.
"""

import argparse
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any, Optional, Union

from jsonargparse import ActionConfigFile, Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser

from mobilenet.errors import UsageError
from mobilenet.record import DATA_CLASSES

DEFAULT_DATA = "mobilenet.data.CIFARDataModule"
NETWORK_CLASS = "mobilenet.model.MobileNetV1"
CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/acc",
    "checkpoint.mode": "max",
    "checkpoint.save_last": False,  # last.ckpt has its own callback, see runs.last_checkpoint()
    "checkpoint.save_top_k": 1,
    "checkpoint.filename": "best-epoch={epoch:03d}-val_acc={val/acc:.4f}",
    "checkpoint.auto_insert_metric_name": False,
}
RUN_NAME_HELP = (
    "Experiment name: checkpoints go to checkpoints/<run_name>/, logs to logs/<run_name>/. Default: the first "
    "--config file's name, else the name recorded in --ckpt_path's checkpoint, else 'default'."
)
CKPT_HELP = (
    "'last' (the run's checkpoints/<run_name>/last.ckpt), 'best' (the file the run's checkpoint callback recorded "
    "as best by val/acc) or a checkpoint file; a file alone is enough, the run name, data and network come from it. "
    "fit resumes from it ('last' starts fresh when there is none yet, so a job script can always pass it); the "
    "other commands use it, 'best' by default."
)
# The groups a command may use (``run``: --run_name, --ckpt_path, --checkpoint.dirpath); every command accepts
# all of them from config files.
SECTIONS = ("model", "data", "run")


# A config is a few hundred lines; one that expands to more values than this is a YAML alias bomb, not a recipe.
MAX_CONFIG_VALUES = 100_000


def check_config_files(argv: list[str]) -> None:
    """Each ``--config`` file is a readable YAML mapping of a sane size, checked before jsonargparse reads it
    (which would show a UnicodeDecodeError traceback for a binary file or a checkpoint, an empty message for an
    empty file, and expand a YAML alias bomb until memory runs out)."""
    import yaml

    for i, arg in enumerate(argv):
        name = arg.split("=", 1)[1] if arg.startswith(("--config=", "-c=")) else None
        if arg in ("--config", "-c") and i + 1 < len(argv):
            name = argv[i + 1]
        if name is None or name.lstrip().startswith("{") or not Path(name).is_file():
            continue  # an inline config, or a missing file (jsonargparse names it)
        path = Path(name)
        try:
            text = path.read_text(encoding="utf-8")
            content = yaml.safe_load(text)
        except UnicodeDecodeError as err:
            raise UsageError(
                f"--config '{path}' is not a text file (byte {err.start} is not UTF-8): a config is YAML. A checkpoint "
                f"or model file goes to --ckpt_path instead."
            ) from err
        except yaml.YAMLError as err:
            raise UsageError(f"--config '{path}' is not valid YAML ({str(err).splitlines()[0]}).") from err
        if content is None:
            raise UsageError(f"--config '{path}' is empty: give a YAML mapping such as configs/cifar10.yaml holds.")
        if not isinstance(content, dict):
            raise UsageError(
                f"--config '{path}' holds a {type(content).__name__}, not a mapping of settings such as "
                f"configs/cifar10.yaml holds."
            )
        if count_values(content, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
            raise UsageError(
                f"--config '{path}' expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases repeated inside "
                f"each other): it is not a recipe, and it was not read further."
            )


def count_values(value: Any, limit: int) -> int:
    """The number of values ``value`` holds once YAML aliases are expanded, counting no further than ``limit``."""
    count, stack = 0, [value]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def check_optimiser_classes(model: Namespace) -> None:
    """``model.optimizer`` and ``model.lr_scheduler`` name classes of those kinds. A config names classes to
    build, as a script would (docs/reliability.md): this keeps a slip, or ``os.system``, from being called."""
    import torch

    kinds = {
        "optimizer": (
            torch.optim.Optimizer,
            "an optimiser (a subclass of torch.optim.Optimizer, e.g. torch.optim.SGD)",
        ),
        "lr_scheduler": (
            torch.optim.lr_scheduler.LRScheduler,
            "a learning-rate scheduler (a subclass of torch.optim.lr_scheduler.LRScheduler, e.g. "
            "torch.optim.lr_scheduler.OneCycleLR)",
        ),
    }
    for key, (base, wanted) in kinds.items():
        chosen = model.get(key) if model is not None else None
        class_path = chosen.get("class_path") if isinstance(chosen, Namespace) else None
        if not class_path:
            continue
        try:
            found = import_class(class_path)
        except (ImportError, AttributeError, ValueError):
            found = None
        if not (isinstance(found, type) and issubclass(found, base)):
            raise UsageError(
                f"model.{key} names {class_path}, which is not {wanted}; nothing was built or called. A config "
                f"names classes to build, like a script: read one from elsewhere before you use it."
            )


def check_data_choice(argv: list[str]) -> None:
    """``--data NAME`` must name one of the DataModules (jsonargparse's own message does not list them), and an
    image-folder option needs ``--data ImageFolderDataModule`` (CIFAR is the default and has no such option)."""
    chosen = any(arg == "--data" or arg.startswith("--data=") for arg in argv)
    folder_options = sorted(
        {arg.split("=")[0] for arg in argv if arg.split("=")[0] in ("--data.root", "--data.cache_dir")}
    )
    if folder_options and not chosen:
        verb = "belong" if len(folder_options) > 1 else "belongs"
        raise UsageError(
            f"{' and '.join(folder_options)} {verb} to image folders: add --data ImageFolderDataModule (CIFAR, the "
            f"default data, has no such option)."
        )
    for i, arg in enumerate(argv):
        following = argv[i + 1] if arg == "--data" and i + 1 < len(argv) else None
        value = arg.split("=", 1)[1] if arg.startswith("--data=") else following
        if value is None or "." in value or value.lstrip().startswith("{") or Path(value).exists():
            continue  # a class path, an inline config or a config file: jsonargparse checks those
        names = [short(path) for path in DATA_CLASSES]
        if value not in names:
            raise UsageError(
                f"--data {value} is not a dataset class here; choose {' or '.join(names)} (or give the full class path "
                f"of your own BatchedDataModule subclass)."
            )


def add_model_and_data(parser: LightningArgumentParser, model: bool = True, data: bool = True) -> None:
    """The LightningModule's options under ``--model`` and the DataModule's under ``--data`` (any subclass of
    BatchedDataModule, CIFAR by default), each DataModule's options listed in ``--data``'s help."""
    from mobilenet.data.base import BatchedDataModule
    from mobilenet.training.module import MobileNetClassifier

    if model:
        parser.add_lightning_class_args(MobileNetClassifier, "model")
        # The network is MobileNetV1, configured as --model.net.width_mult and the like.
        parser.set_defaults({"model.net": {"class_path": NETWORK_CLASS}})
    if data:
        parser.add_subclass_arguments(
            BatchedDataModule, "data", fail_untyped=False, required=True, help=data_options_help()
        )
        # --data picks the dataset class; configs that give only its arguments mean CIFAR.
        parser.set_defaults({"data": {"class_path": DEFAULT_DATA}})
    if model and data:
        parser.link_arguments("data.num_classes", "model.net.init_args.num_classes", apply_on="instantiate")


def add_run_arguments(parser: LightningArgumentParser, shown: bool = True, callback: bool = True) -> None:
    """``--run_name`` and ``--ckpt_path``, and ``--checkpoint``: the checkpoint callback's options (``callback``,
    for ``fit`` and the commands it shares a parser with) or a mapping of which only ``dirpath``, the folder of the
    run's ``last`` and ``best``, is read. ``shown=False`` accepts all three from configs without listing them."""
    hidden = {} if shown else {"help": argparse.SUPPRESS}
    parser.add_argument("--run_name", type=Optional[str], default=None, **({"help": RUN_NAME_HELP} | hidden))
    parser.add_argument("--ckpt_path", type=Optional[str], default=None, **({"help": CKPT_HELP} | hidden))
    if callback:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        return
    parser.add_argument(
        "--checkpoint",
        type=Optional[dict],
        default=None,
        **(
            {"help": "--checkpoint.dirpath: the folder of the run's checkpoints (default checkpoints/<run_name>)."}
            | hidden
        ),
    )


def data_options_help() -> str:
    """The --data help: each DataModule's options with their defaults (``--data.help CLASS`` explains them)."""
    from mobilenet.data.base import BatchedDataModule

    def options(cls: type) -> str:
        parameters = inspect.signature(cls.__init__).parameters.values()
        return ", ".join(
            f"--data.{p.name} ({'required' if p.default is p.empty else p.default})"
            for p in parameters
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        )

    classes = [import_class(path) for path in DATA_CLASSES]
    kinds = "; ".join(
        f"{cls.__name__}{' (default)' if i == 0 else ''}: {options(cls)}" for i, cls in enumerate(classes)
    )
    return (
        f"The dataset: --data CIFARDataModule or --data ImageFolderDataModule. {kinds}. Both take "
        f"{options(BatchedDataModule)}. `--data.help CLASS` explains each option."
    )


def command_parser(command: str, description: str, uses: tuple[str, ...] = SECTIONS) -> LightningArgumentParser:
    """The parser of a command that is not a Trainer method (classify, report, summary, export, import-tutorial):
    the same config files and overrides as ``fit``, with the groups in ``uses`` (of ``SECTIONS``). The Trainer's
    options, and the groups the command does not use, are accepted from config files as mappings."""
    parser = LightningArgumentParser(prog=f"mobilenet {command}", description=description)
    parser.add_argument(
        "-c", "--config", action=ActionConfigFile, help="A config file (YAML); repeat to merge several."
    )
    unused = f"Accepted from training configs; {command} does not use it."
    parser.add_argument("--seed_everything", type=Union[bool, int], default=0, help=unused)
    for section in ("trainer", *(name for name in ("model", "data") if name not in uses)):
        parser.add_argument(f"--{section}", type=Optional[dict], default=None, help=unused)
    add_model_and_data(parser, model="model" in uses, data="data" in uses)
    add_run_arguments(parser, shown="run" in uses, callback=False)
    return parser


def parse(parser: LightningArgumentParser, argv: list[str]) -> tuple[Namespace, Namespace]:
    """The full config of a command, and what its config files and command line set (see ``given_values``)."""
    return parser.parse_args(argv), given_values(parser, argv)


def given_values(
    parser: LightningArgumentParser, args: Optional[list[str]], command: Optional[str] = None
) -> Namespace:
    """What the config files and the command line set, without the defaults (``command``: a subcommand's part).

    The one private argument this project passes: jsonargparse 4.53 validates a parse without defaults, which
    then asks for the required groups that the defaults fill in (``--data``), and offers no public switch.
    """
    given = parser.parse_args(sys.argv[1:] if args is None else args, defaults=False, _skip_validation=True)
    return (given.get(command) or Namespace()) if command else given


def import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def short(class_path: str) -> str:
    return class_path.rpartition(".")[2]
