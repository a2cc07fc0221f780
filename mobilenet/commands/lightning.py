"""``fit``, ``validate``, ``test`` and ``predict``: LightningCLI over this project's run folders and checkpoints.

The options shared with the other commands come from ``parser``, what a checkpoint settles from
``checkpoint_policy``; this module adds what only training and evaluation need, through LightningCLI's hooks:
the Trainer's defaults, plug-in and callbacks, and where the loggers write.
"""

import shlex
import sys
from pathlib import Path
from typing import Optional

import torch
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mobilenet.commands.checkpoint_policy import Settled, evaluation_loggers, settle
from mobilenet.commands.parser import add_model_and_data, add_run_arguments, check_optimiser_classes, given_values
from mobilenet.data.base import BatchedDataModule
from mobilenet.deploy.artifacts import Artifact, with_network
from mobilenet.errors import UsageError
from mobilenet.files import check_writable
from mobilenet.progress import draws_bars
from mobilenet.record import first_line
from mobilenet.training.callbacks import (
    CompactModelSummary,
    PlainProgressBar,
    PredictionWriter,
    Preemption,
    StopOnNonFiniteLoss,
)
from mobilenet.training.module import MobileNetClassifier
from mobilenet.training.precision import choose_precision
from mobilenet.training.runs import (
    LAST_NAME,
    LOG_ROOT,
    RunLock,
    is_launching_process,
    last_checkpoint,
    remove_if_empty,
)
from mobilenet.training.tracking import (
    RUN_ID_KEY,
    SaveConfigEverywhere,
    WandbLogger,
    WandbRunCallback,
    is_wandb_logger,
)

TRAINER_DEFAULTS = {
    # The DataModule's sampler shards batches across ranks itself (mobilenet/data/sampling.py).
    "use_distributed_sampler": False,
    "logger": {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(LOG_ROOT), "name": None},
    },
    # Checkpoints are written whole or not at all. A user's own --trainer.plugins replaces this one.
    "plugins": {"class_path": "mobilenet.training.checkpoint_io.AtomicCheckpointIO"},
}
EXPORT_NAMES = {"onnx": "an ONNX", "torchscript": "a TorchScript"}


class MobileNetCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # --ckpt_path is this project's (last | best | FILE, see checkpoint_policy.py), not the Trainer method's, and a
        # checkpoint is always loaded as weights only (training/checkpoint_io.py).
        return {name: skip | {"ckpt_path", "weights_only"} for name, skip in LightningCLI.subcommands().items()}

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The Trainer as LightningCLI adds it; the model and the data as every command adds them (--data's help
        # lists each DataModule's options, which a class choice would otherwise hide).
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults(
            {f"trainer.{key}": value for key, value in self.trainer_defaults.items() if key != "callbacks"}
        )
        add_model_and_data(parser)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        add_run_arguments(parser)

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        command = self.config.get("subcommand")
        if not command:
            return
        config = self.config[command]
        check_optimiser_classes(config.get("model"))
        given = given_values(parser, args, command)
        self.settled = settle(config, command, default_ckpt=None if command == "fit" else "best", given=given)
        self.weights = check_trainer_source(self.settled, command)
        config.trainer.precision, why = choose_precision(config.trainer.precision, config.trainer.accelerator)
        loggers = config.trainer.logger if isinstance(config.trainer.logger, list) else [config.trainer.logger]
        for logger in loggers:
            if hasattr(logger, "init_args") and "name" in logger.init_args and logger.init_args.name is None:
                logger.init_args.name = config.run_name
        if command == "fit":
            self.continue_wandb_run(loggers)
            for folder in (self.settled.run_dir, LOG_ROOT / config.run_name):
                check_writable(folder)
            if is_launching_process():
                RunLock.acquire(self.settled.run_dir, config.run_name)
            stop_if_finished(config, self.settled)
            if is_launching_process():
                print(why)
            self.resume_hint = resume_command(sys.argv[1:] if args is None else args, config.run_name)
        else:
            check_writable(evaluation_loggers(config, self.settled, command))
        # LightningCLI would read the checkpoint's hyper_parameters itself and apply them (importing any class
        # they name); settle() has applied its checked record instead, so the path is held back until then.
        # Weights without Lightning's state (an export) are loaded into the network instead of restored.
        self.checkpoint_path, config.ckpt_path = (None if self.weights else config.ckpt_path), None

    def continue_wandb_run(self, loggers: list) -> None:
        """A resumed fit continues its W&B run: the id is kept in the checkpoints."""
        artifact = self.settled.artifact
        run_id = artifact.checkpoint.get(RUN_ID_KEY) if artifact and artifact.kind == "checkpoint" else None
        for logger in loggers:
            if run_id and isinstance(logger, Namespace) and is_wandb_logger(logger.get("class_path", "")):
                if logger.init_args.get("id") is None:
                    logger.init_args.id = run_id

    def before_instantiate_classes(self) -> None:
        if self.subcommand:
            self.config[self.subcommand].ckpt_path = self.checkpoint_path

    def after_instantiate_classes(self) -> None:
        self.model.run_record = {"name": self.settled.run_name, "config": self.config_record()}
        if self.weights is not None:
            self.model.net.load_state_dict(self.weights.network.state_dict())
        if self.settled.artifact is not None and isinstance(self.datamodule, BatchedDataModule):
            check_classes(self.datamodule, self.settled)
        if self.settled.artifact is not None and self.subcommand != "fit":  # the one rule for probabilities
            self.model.temperature = self.settled.artifact.metadata.temperature

    def config_record(self) -> dict:
        """The resolved config of this command, as plain data, for the checkpoints' record."""
        import yaml

        return yaml.safe_load(self.parser.dump(self.config, skip_unset=False))[self.subcommand]

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The Trainer, with this project's callbacks among the defaults LightningCLI adds after the config's."""
        trainer_config = self.config_init[self.subcommand].trainer
        callbacks = [PredictionWriter()]
        if trainer_config.enable_progress_bar is not False and not draws_bars(sys.stdout):
            callbacks.append(PlainProgressBar())  # output to a file: whole lines, not redrawn bars
        if trainer_config.enable_model_summary is not False:
            callbacks.append(CompactModelSummary())
        loggers = trainer_config.logger if isinstance(trainer_config.logger, list) else [trainer_config.logger]
        callbacks.extend(WandbRunCallback(logger) for logger in loggers if isinstance(logger, WandbLogger))
        callbacks.append(StopOnNonFiniteLoss())
        if self.subcommand == "fit":
            # After the best-checkpoint callback (the config's, which LightningCLI puts first), so that last.ckpt
            # stores the state it has just updated: a resume then still knows which file is the best so far.
            last = last_checkpoint(self.config.fit.checkpoint.dirpath)
            # After the loss check: it has seen the batch a stop would save.
            callbacks += [last, Preemption(Path(last.dirpath) / LAST_NAME, self.resume_hint)]
        self.trainer_defaults["callbacks"] = callbacks
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand != "fit":  # evaluation writes no checkpoints, and restores no checkpoint callback's state
            trainer.callbacks[:] = [
                callback for callback in trainer.callbacks if not isinstance(callback, ModelCheckpoint)
            ]
        return trainer

    def run(self, command: str) -> None:
        """The Trainer method, with this project's checkpoint; a failed run leaves no empty log folder behind."""
        # Loggers create their folder before the data is set up; a run that fails before it records anything
        # (a bad val_size, an unreadable file) should not leave an empty version_<n> behind. (W&B's logger has
        # no local folder of its own.)
        folders = [Path(folder) for logger in self.trainer.loggers if (folder := getattr(logger, "log_dir", None))]
        existing = {folder for folder in folders if folder.exists()}
        try:
            getattr(self.trainer, command)(self.model, datamodule=self.datamodule, ckpt_path=self.checkpoint_path)
        except BaseException as err:
            if self.trainer.is_global_zero:
                for folder in folders:
                    if folder not in existing:
                        remove_if_empty(folder)
            if out_of_memory(err):
                data = self.datamodule
                raise UsageError(
                    f"Out of memory during `{command}`: a batch of {data.batch_size} images of "
                    f"{data.resolution}×{data.resolution} pixels does not fit ({first_line(err)}). Lower "
                    f"--data.batch_size or --data.resolution; checkpoints already saved are kept."
                ) from err
            raise

    # LightningCLI runs a method of the CLI named like the command when there is one, else the Trainer's.
    def fit(self, **_) -> None:
        self.run("fit")

    def validate(self, **_) -> None:
        self.run("validate")

    def test(self, **_) -> None:
        self.run("test")

    def predict(self, **_) -> None:
        self.run("predict")


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is the CPU or GPU running out of memory."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and any(text in str(err) for text in ("out of memory", "can't allocate memory"))
    )


def check_trainer_source(settled: Settled, command: str) -> Optional[Artifact]:
    """What the Trainer can start from: a Lightning checkpoint; for evaluation also exported weights (safetensors,
    state_dict), returned loaded so that they go into the network directly. ONNX and TorchScript files hold graphs
    for other runtimes, and ``fit`` resumes training state, which only a training checkpoint has."""
    artifact = settled.artifact
    if artifact is None or artifact.kind == "checkpoint":  # fit's weights-only files are refused by settle
        return None
    if artifact.kind in ("onnx", "torchscript"):
        raise UsageError(
            f"'{artifact.path}' is {EXPORT_NAMES[artifact.kind]} export: {command} runs the PyTorch network. "
            f"Pass the checkpoint it was exported from, or use `mobilenet classify` or `mobilenet report`, "
            f"which run exports as well."
        )
    return with_network(artifact)


def stop_if_finished(config, settled: Settled) -> None:
    """Resuming a run that has trained its epochs (or steps) already: say so and stop, instead of Lightning's error
    (fewer epochs asked for) or a silent run that trains nothing and leaves an empty log folder."""
    artifact = settled.artifact
    if artifact is None or artifact.kind != "checkpoint" or not config.ckpt_path:
        return
    progress = (artifact.checkpoint.get("loops") or {}).get("fit_loop", {}).get("epoch_progress", {})
    trained = int(progress.get("current", {}).get("processed", 0))
    steps = int(artifact.checkpoint.get("global_step") or 0)
    asked, asked_steps = config.trainer.max_epochs, config.trainer.max_steps
    if asked is not None and asked >= 0 and trained >= asked:
        done, limit, value = f"{trained} epoch{'' if trained == 1 else 's'}", "--trainer.max_epochs", asked
    elif asked_steps is not None and asked_steps >= 0 and steps >= asked_steps:
        done, limit, value = f"{steps} steps", "--trainer.max_steps", asked_steps
    else:
        return
    print(
        f"Run '{config.run_name}' has trained {done} already ('{artifact.path}'), and {limit} is {value}: there "
        f"is nothing left to train. Raise {limit} to train it longer, or evaluate it with `mobilenet test "
        f"--ckpt_path {artifact.path}`."
    )
    raise SystemExit(0)


def resume_command(argv: list[str], run_name: str) -> str:
    """The command line that continues this fit: the same one with --ckpt_path last (and the run's name, which
    a checkpoint file given as --ckpt_path may have supplied)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    named = any(arg == "--run_name" or arg.startswith("--run_name=") for arg in kept)
    return shlex.join(["mobilenet", *kept, *([] if named else ["--run_name", run_name]), "--ckpt_path", "last"])


def check_classes(data: BatchedDataModule, settled: Settled) -> None:
    """The data must have the classes the checkpoint was trained on, in the same order."""
    trained = settled.artifact.metadata.class_names
    now = list(data.class_names) if data.class_names else None
    if now is None:  # CIFAR reads its class names in setup(); its number of classes is known already
        if data.num_classes != len(trained):
            raise UsageError(
                f"'{settled.artifact.path}' was trained for {len(trained)} classes, but the data has "
                f"{data.num_classes}. Use the data it was trained on, or another checkpoint."
            )
        return
    if now != trained:
        added = [name for name in now if name not in trained]
        removed = [name for name in trained if name not in now]
        change = "; ".join(
            part
            for part in (
                f"new: {', '.join(added)}" if added else "",
                f"missing: {', '.join(removed)}" if removed else "",
                "same names in another order" if not added and not removed else "",
            )
            if part
        )
        raise UsageError(
            f"The class folders differ from the {len(trained)} classes '{settled.artifact.path}' was trained on "
            f"({change}). Its outputs would be read as the wrong classes; restore the folders as they were "
            f"({', '.join(trained)}), or train a new run on them."
        )


def build_cli(args: Optional[list[str]] = None, run: bool = True) -> MobileNetCLI:
    """Parse ``args`` (a command and its options), build model, data and trainer, and run the command.

    The run's lock (``RunLock``), taken by ``fit``, is released when the command ends, however it ends.
    """
    with RunLock.released_at_exit():
        return MobileNetCLI(
            MobileNetClassifier,
            BatchedDataModule,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_callback=SaveConfigEverywhere,
            # A fit writes a new version folder every time; evaluating a checkpoint again rewrites its evaluation.
            save_config_kwargs={"overwrite": True},
            trainer_defaults=dict(TRAINER_DEFAULTS),
            # The optimiser and scheduler are the model's own arguments (model.optimizer, model.lr_scheduler).
            auto_configure_optimizers=False,
            # Checkpoints keep their own record (mobilenet.deploy.artifacts), not the parsed config of the model.
            load_from_checkpoint_support=False,
            parser_kwargs={"prog": "mobilenet"},
            args=args,
            run=run,
        )
