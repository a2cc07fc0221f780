"""What a checkpoint decides, and what the command line and configs decide, the same way for every command.

``settle`` works out, for the config a command parsed (``parser.py``):

- the run's name: ``--run_name`` (or a config's ``run_name``), else the first config file's name, else the
  name recorded in the checkpoint, else ``default``;
- the checkpoint: ``last`` is ``checkpoints/<run>/last.ckpt``, ``best`` the file the run's checkpoint callback
  recorded as best, anything else a file path;
- what the checkpoint was trained with: the network's arguments always come from it; the DataModule class
  and its arguments come from it unless given, and the settings that define the task (dataset, resolution,
  validation split) are kept as trained, saying so when a config said otherwise. A record never decides the
  settings in ``USER_ONLY_DATA``.
"""

import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from jsonargparse import Namespace

from mobilenet.commands.parser import DEFAULT_DATA, NETWORK_CLASS, import_class, short
from mobilenet.deploy.artifacts import Artifact, load
from mobilenet.errors import UsageError
from mobilenet.record import DATA_CLASSES
from mobilenet.shipped import shipped_path
from mobilenet.training.runs import (
    ALIASES,
    CHECKPOINT_ROOT,
    check_checkpoint_filename,
    check_run_name,
    checkpoint_file,
    evaluation_dir,
    refuse_to_mix,
    refuse_to_rewind,
    resolve_checkpoint,
    run_name_from,
)

# Data settings that define what a checkpoint was trained and validated on: evaluating or resuming it with
# other values would measure something else, or validate on training images.
TASK_DATA = ("resolution", "val_size", "split_seed")
# Data settings a file's record never decides, whatever it says: integrity checks, downloads and the folders
# written or cleaned up. They come from the user's command and configs (or the defaults) only.
USER_ONLY_DATA = ("verify", "download", "cache_dir")


@dataclass
class Settled:
    """What ``settle`` worked out for a command."""

    run_name: str
    run_dir: Path
    checkpoint: Optional[Path]  # the resolved --ckpt_path, None when there is none
    artifact: Optional[Artifact]  # its record (and a checkpoint's contents), without the network built


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
    # fit's checkpoint callback options, or the mapping the other commands read only dirpath from (parser.py)
    options = config.get("checkpoint") or {}
    run_dir = Path(options.get("dirpath") or CHECKPOINT_ROOT / config.run_name)
    if isinstance(options, Namespace):
        options.dirpath = str(run_dir)
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
        if checkpoint is not None:
            refuse_to_rewind(run_dir, config.run_name, checkpoint, int(artifact.checkpoint.get("global_step") or 0))
        check_checkpoint_filename(config.checkpoint.get("filename"))
    config.ckpt_path = str(checkpoint) if checkpoint else None
    if artifact is not None:
        # Only into the groups the command uses (parser.SECTIONS): the others are plain mappings it ignores.
        notes = adopt_network(config.model, artifact, given) if isinstance(config.get("model"), Namespace) else []
        notes += adopt_data(config, artifact, given) if isinstance(config.get("data"), Namespace) else []
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


def given_at(given: Optional[Namespace], key: str) -> dict[str, Any]:
    """The values set under ``key`` (e.g. ``data.init_args``) as plain data; {} when none."""
    value = given.get(key) if given is not None else None
    return plain(value) if isinstance(value, Namespace) else {}


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
    folder = evaluation_dir(settled.run_name, settled.checkpoint, settled.run_dir)
    for logger in loggers:
        if isinstance(logger, Namespace) and logger.get("class_path", "").endswith("CSVLogger"):
            logger.init_args.save_dir = str(folder)
            logger.init_args.name = ""
            logger.init_args.version = command
    return folder / command
