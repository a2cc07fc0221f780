"""The ``mobilenet`` command: LightningCLI with fit, validate, test and predict, plus run folders."""

import importlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mobilenet.checkpoint_io import AtomicCheckpointIO
from mobilenet.data import BatchedDataModule
from mobilenet.divergence import StopOnNonFiniteLoss
from mobilenet.errors import UsageError
from mobilenet.module import MobileNetClassifier
from mobilenet.predictions import PredictionWriter
from mobilenet.runs import (
    BEST_PREFIX,
    CHECKPOINT_ROOT,
    LOG_ROOT,
    adopt_checkpoint_data,
    last_checkpoint,
    note_model_from_checkpoint,
    read_checkpoint,
    refuse_to_mix,
    remove_if_empty,
    resolve_checkpoint,
    run_name_from,
)
from mobilenet.tracking import RUN_ID_KEY, SaveConfigEverywhere, WandbRunCallback, is_wandb_logger, wandb_loggers

# Lightning 2.6 on torch 2.14 warns about its own use of a torch API at every run, and advertises a cloud
# logger at every start; neither says anything about this run. A run folder with checkpoints in it is
# either resumed or refused before Lightning looks (mobilenet/runs.py), so its warning about one is moot.
warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
warnings.filterwarnings("ignore", r"Checkpoint directory .* exists and is not empty")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda record: "💡 Tip" not in record.getMessage())

TRAINER_DEFAULTS = {
    # The DataModule's sampler shards batches across ranks itself (mobilenet/data/sampling.py).
    "use_distributed_sampler": False,
    "logger": {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(LOG_ROOT), "name": None},
    },
}
CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/acc",
    "checkpoint.mode": "max",
    "checkpoint.save_last": False,  # last.ckpt has its own callback, see last_checkpoint()
    "checkpoint.save_top_k": 1,
    "checkpoint.filename": BEST_PREFIX + "epoch={epoch:03d}-val_acc={val/acc:.4f}",
    "checkpoint.auto_insert_metric_name": False,
}


# Subcommands beyond LightningCLI's fit/validate/test/predict. Each lives in its own module with a
# ``main(argv: list[str]) -> int | None`` and is imported only when asked for, so that ``mobilenet fit`` never
# pays for what they import (onnx, matplotlib, ...). Add one line here per command.
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, one-line help)
    "classify": ("mobilenet.classify", "top classes of image files under a trained checkpoint"),
    "report": ("mobilenet.report", "curves, confusion matrix and labelled test images of a finished run"),
    "summary": ("mobilenet.summary", "parameters and mult-adds by layer type (the paper's Table 2)"),
    "export": ("mobilenet.export", "a checkpoint as ONNX, TorchScript or state_dict, checked against PyTorch"),
    "import-tutorial": ("mobilenet.tutorial", "convert the reference tutorial's .pth weights into a checkpoint"),
}


def extra_commands_help() -> str:
    # argparse reflows an epilog into one paragraph, so this is written as one.
    if not EXTRA_COMMANDS:
        return ""
    items = "; ".join(f"{name}: {summary}" for name, (_, summary) in EXTRA_COMMANDS.items())
    return f"Other commands (see mobilenet COMMAND --help): {items}."


def auto_precision(accelerator: object) -> str:
    """bf16-mixed on GPUs that support it, 16-mixed on older GPUs, 32-true on the CPU."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


class MobileNetCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name",
            type=Optional[str],
            default=None,
            help="Experiment name: checkpoints go to checkpoints/<run_name>/, logs to logs/<run_name>/. "
            "Default: the first --config file's name.",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        # --data picks the dataset class (CIFARDataModule or ImageFolderDataModule); configs that give only
        # its arguments mean CIFAR.
        parser.set_defaults({"data": {"class_path": "mobilenet.data.CIFARDataModule"}})
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        # Run folders are settled right after parsing: LightningCLI reads the model's hyper-parameters from
        # --ckpt_path before before_instantiate_classes, so 'last'/'best' must already be a file by then.
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            self.settle_run(self.config[subcommand], subcommand)

    @staticmethod
    def settle_run(config, subcommand: str) -> None:
        config.run_name = config.run_name or run_name_from(config.get("config"))
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(CHECKPOINT_ROOT / config.run_name)
        loggers = config.trainer.logger if isinstance(config.trainer.logger, list) else [config.trainer.logger]
        loggers = [logger for logger in loggers if hasattr(logger, "init_args")]
        for logger in loggers:
            if "name" in logger.init_args and logger.init_args.name is None:
                logger.init_args.name = config.run_name
        if config.trainer.precision is None:
            config.trainer.precision = auto_precision(config.trainer.accelerator)
        run_dir = Path(config.checkpoint.dirpath)
        if subcommand != "fit" and not config.get("ckpt_path"):
            config.ckpt_path = "best"  # evaluating untrained weights is never what was meant
        if config.get("ckpt_path"):
            config.ckpt_path = resolve_checkpoint(config.ckpt_path, run_dir, config.run_name, subcommand)
        if subcommand == "fit":
            refuse_to_mix(run_dir, config.run_name, config.ckpt_path)
        if config.ckpt_path:
            checkpoint = read_checkpoint(config.ckpt_path)
            adopt_checkpoint_data(config.data.init_args, checkpoint)
            if subcommand == "fit" and checkpoint.get(RUN_ID_KEY):  # a resumed fit continues its W&B run
                for logger in loggers:
                    if is_wandb_logger(logger.class_path) and logger.init_args.get("id") is None:
                        logger.init_args.id = checkpoint[RUN_ID_KEY]
            note_model_from_checkpoint(config.model, checkpoint)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        # Last in the list, so that last.ckpt is written after the best-checkpoint callback has updated the
        # state it stores: a resume then still knows which file is the best so far.
        trainer.callbacks.append(last_checkpoint(self._get(self.config, "checkpoint").dirpath))
        trainer.callbacks.extend(WandbRunCallback(logger) for logger in wandb_loggers(trainer))
        trainer.callbacks.append(StopOnNonFiniteLoss())
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # a user's own plugin is left alone
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        # Loggers create their version folder before the data is set up; a run that fails before it records
        # anything (a bad val_size, an unreadable file) should not leave an empty version_<n> behind.
        # (W&B's logger has no local log_dir of its own: None.)
        log_dirs = [Path(folder) for logger in self.trainer.loggers if (folder := getattr(logger, "log_dir", None))]
        existing = {path for path in log_dirs if path.exists()}
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if self.trainer.is_global_zero:
                for path in log_dirs:
                    if path not in existing:
                        remove_if_empty(path)
            raise


def build_cli(args: Optional[list[str]] = None, run: bool = True) -> MobileNetCLI:
    """Parse ``args`` (default: the command line), build model, data and trainer, and run the subcommand."""
    return MobileNetCLI(
        MobileNetClassifier,
        BatchedDataModule,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_callback=SaveConfigEverywhere,
        trainer_defaults={**TRAINER_DEFAULTS, "callbacks": [PredictionWriter()]},
        # The optimiser and scheduler are the model's own arguments (model.optimizer, model.lr_scheduler).
        auto_configure_optimizers=False,
        parser_kwargs={
            "description": "Train, evaluate and use MobileNetV1 on CIFAR-10/100.",
            "epilog": extra_commands_help(),
        },
        args=args,
        run=run,
    )


def usage_error_in(err: BaseException) -> Optional[UsageError]:
    """The UsageError behind ``err``: jsonargparse wraps errors raised while it instantiates ``--data``'s class
    (a subclass type) in a ValueError of its own, raised ``from`` the original."""
    while err is not None and not isinstance(err, UsageError):
        err = err.__cause__
    return err


def main(args: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            module_name, _ = EXTRA_COMMANDS[argv[0]]
            sys.exit(importlib.import_module(module_name).main(argv[1:]))
        build_cli(args)
    except ValueError as err:  # UsageError is a ValueError
        usage_error = usage_error_in(err)
        if usage_error is None:
            raise
        sys.exit(f"mobilenet: error: {usage_error}")


if __name__ == "__main__":
    main()
