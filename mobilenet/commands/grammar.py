"""One grammar for every command: the arguments all nine share, and what a checkpoint settles before a command runs.

Every command takes one or more ``--config`` files (merged in order) and dotted overrides with the names
``fit`` uses (``--model.net.width_mult``, ``--data.data_dir``, ``--trainer.max_epochs`` ...), ``--run_name``
and ``--ckpt_path last|best|FILE``. Then ``settle`` works out, the same way for every command:

- the run's name: ``--run_name`` (or a config's ``run_name``), else the first config file's name, else the
  name recorded in the checkpoint, else ``default``;
- the checkpoint: ``last`` is ``checkpoints/<run>/last.ckpt``, ``best`` the file the run's checkpoint callback
  recorded as best, anything else a file path;
- what the checkpoint was trained with: the network's arguments always come from it; the DataModule class
  and its arguments come from it unless given, and the settings that define the task (dataset, resolution,
  validation split) are kept as trained, saying so when a config said otherwise.
"""

import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from jsonargparse import ActionConfigFile, Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser

from mobilenet.deploy.artifacts import Artifact, load
from mobilenet.errors import UsageError
from mobilenet.record import DATA_CLASSES
from mobilenet.shipped import shipped_path
from mobilenet.training.runs import (
    ALIASES,
    CHECKPOINT_ROOT,
    check_run_name,
    checkpoint_file,
    evaluation_dir,
    refuse_to_mix,
    resolve_checkpoint,
    run_name_from,
)

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
# Data settings that define what a checkpoint was trained and validated on: evaluating or resuming it with
# other values would measure something else, or validate on training images.
TASK_DATA = ("resolution", "val_size", "split_seed")
# Data settings a file's record never decides, whatever it says: integrity checks, downloads and the folders
# written or cleaned up. They come from the user's command and configs (or the defaults) only.
USER_ONLY_DATA = ("verify", "download", "cache_dir")
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


def add_config_arguments(parser: LightningArgumentParser) -> None:
    """What every command's parser shares; ``fit``'s parser gets the rest (trainer, model, data) from LightningCLI."""
    parser.add_argument("--run_name", type=Optional[str], default=None, help=RUN_NAME_HELP)
    parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
    parser.set_defaults(CHECKPOINT_DEFAULTS)
    # --data picks the dataset class; configs that give only its arguments mean CIFAR. The network is
    # MobileNetV1, configured as --model.net.width_mult and the like.
    parser.set_defaults({"data": {"class_path": DEFAULT_DATA}, "model.net": {"class_path": NETWORK_CLASS}})
    parser.link_arguments("data.num_classes", "model.net.init_args.num_classes", apply_on="instantiate")
    data = next((action for action in parser._actions if action.dest == "data"), None)
    if data is not None:  # a class choice shows no options of its own in --help: list them there
        data.help = data_options_help()


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


def add_checkpoint_argument(parser: LightningArgumentParser) -> None:
    parser.add_argument("--ckpt_path", type=Optional[str], default=None, help=CKPT_HELP)


def command_parser(command: str, description: str) -> LightningArgumentParser:
    """The parser of a command that is not a Trainer method (classify, report, summary, export, import-tutorial):
    the same config files and overrides as ``fit``. The Trainer's options are accepted from config files as
    one ``--trainer`` mapping (they do not apply outside training)."""
    from mobilenet.data.base import BatchedDataModule
    from mobilenet.training.module import MobileNetClassifier

    parser = LightningArgumentParser(prog=f"mobilenet {command}", description=description)
    parser.add_argument(
        "-c", "--config", action=ActionConfigFile, help="A config file (YAML); repeat to merge several."
    )
    parser.add_argument("--seed_everything", type=Union[bool, int], default=0, help="Accepted from training configs.")
    parser.add_argument("--trainer", type=Optional[dict], default=None, help="Accepted from training configs.")
    parser.add_lightning_class_args(MobileNetClassifier, "model")
    parser.add_lightning_class_args(BatchedDataModule, "data", subclass_mode=True)
    add_config_arguments(parser)
    add_checkpoint_argument(parser)
    return parser


def class_defaults(cls: type) -> dict[str, Any]:
    """Default argument values of ``cls``, following ``**kwargs`` passed on to its base classes."""
    defaults: dict[str, Any] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        for parameter in parameters:
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY) and parameter.name != "self":
                defaults.setdefault(parameter.name, parameter.default)
        if not any(parameter.kind == parameter.VAR_KEYWORD for parameter in parameters):
            break
    return defaults


def plain(value: Any) -> Any:
    """A config value as plain data (tuples as lists), for comparing a config with a checkpoint's record."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def import_class(class_path: str) -> type:
    import importlib

    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@dataclass
class Settled:
    """What ``settle`` worked out for a command."""

    run_name: str
    run_dir: Path
    checkpoint: Optional[Path]  # the resolved --ckpt_path, None when there is none
    artifact: Optional[Artifact]  # its record (and a checkpoint's contents), without the network built


def parse(parser: LightningArgumentParser, argv: list[str]) -> tuple[Namespace, Namespace]:
    """The full config of a command, and what its config files and command line set (see ``given_values``)."""
    return parser.parse_args(argv), given_values(parser, argv)


def given_values(
    parser: LightningArgumentParser, args: Optional[list[str]], command: Optional[str] = None
) -> Namespace:
    """What the config files and the command line set, without the defaults (``command``: a subcommand's part)."""
    # Validation would ask for the required groups that the defaults fill in (such as --data).
    given = parser.parse_args(sys.argv[1:] if args is None else args, defaults=False, _skip_validation=True)
    return (given.get(command) or Namespace()) if command else given


def given_at(given: Optional[Namespace], key: str) -> dict[str, Any]:
    """The values set under ``key`` (e.g. ``data.init_args``) as plain data; {} when none."""
    value = given.get(key) if given is not None else None
    return plain(value) if isinstance(value, Namespace) else {}


def settle(
    config: Namespace, command: str, default_ckpt: Optional[str] = "best", given: Optional[Namespace] = None
) -> Settled:
    """Settle the run, the checkpoint and what it was trained with into ``config`` (see the module docstring).

    ``default_ckpt``: what a missing ``--ckpt_path`` means (``fit``: nothing; evaluation: ``best``); ``given``:
    what the config files and the command line set (``given_values``), which wins over the checkpoint's record
    except for the settings that define the task.
    """
    explicit_name = config.get("run_name")
    if explicit_name:
        check_run_name(explicit_name)
    artifact = None
    ckpt_path = config.get("ckpt_path") or default_ckpt
    if ckpt_path and ckpt_path not in ALIASES:
        artifact = load(checkpoint_file(ckpt_path), with_network=False)
    recorded = ((artifact.metadata.run or {}).get("name") if artifact else None) or None
    config.run_name = explicit_name or (run_name_from(config.get("config")) if config.get("config") else None)
    config.run_name = check_run_name(config.run_name or recorded or run_name_from(None))
    if config.checkpoint.dirpath is None:
        config.checkpoint.dirpath = str(CHECKPOINT_ROOT / config.run_name)
    run_dir = Path(config.checkpoint.dirpath)
    checkpoint = resolve_checkpoint(ckpt_path, run_dir, config.run_name, command) if ckpt_path else None
    if checkpoint is not None and artifact is None:
        artifact = load(checkpoint, with_network=False)
    if command == "fit":
        if artifact is not None and not (artifact.kind == "checkpoint" and "optimizer_states" in artifact.checkpoint):
            raise UsageError(
                f"'{artifact.path}' holds a network's weights only ({artifact.kind}): fit resumes a training "
                f"checkpoint (last.ckpt or the best checkpoint of a run), which also holds the optimiser's and the "
                f"loop's state. Evaluate these weights with validate, test or predict, or start a new run without "
                f"--ckpt_path."
            )
        refuse_to_mix(run_dir, config.run_name, str(checkpoint) if checkpoint else None)
    config.ckpt_path = str(checkpoint) if checkpoint else None
    if artifact is not None:
        notes = adopt_network(config.model, artifact, given) + adopt_data(config, artifact, given)
        if notes:
            print(f"Using the settings '{artifact.path}' was trained with: " + ", ".join(notes) + ".")
    return Settled(config.run_name, run_dir, checkpoint, artifact)


def settle_model(config: Namespace, command: str, given: Optional[Namespace] = None) -> Settled:
    """``settle`` for the commands that use a trained model (classify, report, export): with no --ckpt_path and
    no run named (--config, --run_name), the model shipped in checkpoints/ when there is one."""
    if not (config.get("ckpt_path") or config.get("run_name") or config.get("config")):
        shipped = shipped_path()  # checked against its recorded sha256
        print(f"Using the shipped model {shipped} (pass --ckpt_path or a run for your own).", file=sys.stderr)
        config.ckpt_path = str(shipped)
    return settle(config, command, given=given)


def adopt_network(model: Namespace, artifact: Artifact, given: Optional[Namespace]) -> list[str]:
    """The network's arguments from the checkpoint (its weights have that shape); notes where a config differed."""
    set_here = given_at(given, "model.net.init_args")
    notes = []
    for key, value in artifact.metadata.network.items():
        if key in set_here and set_here[key] != value:
            notes.append(f"model.net.{key}={value} (given: {set_here[key]})")
        model.net.init_args[key] = value
    model.net.class_path = NETWORK_CLASS
    return notes


def adopt_data(config: Namespace, artifact: Artifact, given_config: Optional[Namespace]) -> list[str]:
    """The DataModule class and its arguments from the checkpoint where the config does not set them."""
    recorded = artifact.metadata.data
    if not recorded:
        return []
    data = config.data
    trained_class = recorded["class_path"]
    if data.class_path != DEFAULT_DATA and data.class_path != trained_class:
        raise UsageError(
            f"'{artifact.path}' was trained with {short(trained_class)} but --data says {short(data.class_path)}. "
            f"Leave --data out to use the data it was trained on, or pick a checkpoint trained on this data."
        )
    defaults = class_defaults(import_class(data.class_path))
    given = given_at(given_config, "data.init_args")
    switched = data.class_path == DEFAULT_DATA and trained_class != DEFAULT_DATA
    if switched:
        if trained_class not in DATA_CLASSES:
            raise UsageError(
                f"'{artifact.path}' was trained with the data class {trained_class}, which is not one of this "
                f"project's; it is not imported from a file. If you trust that code, name it: --data {trained_class}."
            )
        defaults = class_defaults(import_class(trained_class))
        foreign = {key: value for key, value in given.items() if key not in defaults}
        if foreign:  # CIFAR settings given for a checkpoint of another DataModule
            raise UsageError(
                f"'{artifact.path}' was trained with {short(trained_class)} ({describe_data(recorded)}), but the "
                f"config sets CIFAR data ({', '.join(f'{k}={v}' for k, v in foreign.items())}). Leave those "
                f"settings out to use what it was trained on, or pass --data {short(trained_class)}."
            )
        data.class_path = trained_class
    trained = recorded["init_args"]
    if "dataset" in given and "dataset" in trained and given["dataset"] != trained["dataset"]:
        raise UsageError(
            f"'{artifact.path}' was trained on {trained['dataset']} ({artifact.metadata.num_classes} classes), but the "
            f"config says --data.dataset {given['dataset']}. Use the dataset it was trained on, or another checkpoint."
        )
    merged = (
        plain(data.init_args)
        if not switched
        else {key: given.get(key, value) for key, value in defaults.items() if value is not inspect.Parameter.empty}
    )
    notes = []
    for key, value in trained.items():
        if key not in defaults or key in USER_ONLY_DATA or (key in given and key not in TASK_DATA):
            continue  # an argument this class does not take, one a record never sets, or one the config gives
        if not same_kind(value, defaults[key]):
            raise UsageError(
                f"'{artifact.path}' records the data setting {key}={value!r}, which is not a "
                f"{type(defaults[key]).__name__} as {short(data.class_path)} takes. The file was edited; give "
                f"--data.{key} yourself, or use a checkpoint written by `mobilenet fit`."
            )
        if key in given and plain(given[key]) != plain(value):
            notes.append(f"data.{key}={value} (given: {given[key]})")
        merged[key] = value
    if "data_dir" in trained and "data_dir" not in given and "download" not in given and "download" in merged:
        merged["download"] = False  # a folder a record names is read, never downloaded into unless asked
    data.init_args = Namespace(
        **{key: tuple(value) if key in ("mean", "std") else value for key, value in merged.items()}
    )
    return notes


def same_kind(value: Any, default: Any) -> bool:
    """Whether a value read from a file has the type of an argument's default (any, where there is none)."""
    if default is None or default is inspect.Parameter.empty:
        return value is None or isinstance(value, (str, int, float, bool, list))
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (isinstance(default, float) or isinstance(value, int))
        )
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list)) and all(same_kind(v, d) for v, d in zip(value, default, strict=False))
    return isinstance(value, type(default))


def short(class_path: str) -> str:
    return class_path.rpartition(".")[2]


def describe_data(record: dict) -> str:
    args = record.get("init_args") or {}
    return (
        ", ".join(f"{key}={value}" for key, value in args.items() if key in ("dataset", "root", "data_dir"))
        or "defaults"
    )


def evaluation_loggers(config: Namespace, settled: Settled, command: str) -> Path:
    """Point the CSV loggers of validate/test/predict at logs/<run>/eval/<checkpoint>/<command>/, away from the
    training sessions' version folders; returns that folder."""
    loggers = config.trainer.logger if isinstance(config.trainer.logger, list) else [config.trainer.logger]
    folder = evaluation_dir(settled.run_name, settled.checkpoint)
    for logger in loggers:
        if isinstance(logger, Namespace) and logger.get("class_path", "").endswith("CSVLogger"):
            logger.init_args.save_dir = str(folder)
            logger.init_args.name = ""
            logger.init_args.version = command
    return folder / command
