"""The ``mobilenet`` command: nine subcommands, one grammar (``parser.py``), each imported only when asked for.

Each command module has ``main(argv: list[str]) -> int | None``; ``fit``, ``validate``, ``test`` and
``predict`` are LightningCLI's (``lightning.py``). A mistake a user can fix (``UsageError``) is printed as one
paragraph without a traceback, and the command exits with status 1.
"""

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
import warnings
from typing import Optional

from mobilenet import __version__
from mobilenet.errors import Interrupted, UsageError
from mobilenet.files import DISK_FULL

# name: (module, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("mobilenet.commands.lightning", "train a run (--ckpt_path last resumes it)"),
    "validate": ("mobilenet.commands.lightning", "accuracy of a checkpoint on its validation split"),
    "test": ("mobilenet.commands.lightning", "accuracy of a checkpoint on the test split"),
    "predict": ("mobilenet.commands.lightning", "a checkpoint's predictions for the test split, as a CSV file"),
    "classify": ("mobilenet.commands.classify", "top classes of image files (the shipped model by default)"),
    "report": ("mobilenet.commands.report", "curves, confusion matrix, per-class accuracy and labelled images"),
    "summary": ("mobilenet.commands.summary", "parameters and mult-adds by layer type (the paper's Table 2)"),
    "export": ("mobilenet.commands.export", "a checkpoint as ONNX, TorchScript, state_dict or safetensors"),
    "import-tutorial": ("mobilenet.commands.import_tutorial", "the reference tutorial's .pth weights as a checkpoint"),
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def top_level_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mobilenet",
        description="Train, evaluate and use MobileNetV1 on CIFAR-10/100 and image folders. Every command takes "
        "--config files, dotted overrides (--model.net.width_mult 0.5, --data.data_dir DIR), --run_name and "
        "--ckpt_path last|best|FILE.",
        epilog="Run `mobilenet COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"mobilenet {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command")
    for name, (_, summary) in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


# What Lightning and torch say at every run that says nothing about this one: (message pattern, why it is silenced).
KNOWN_WARNINGS = (
    (r".*isinstance\(treespec, LeafSpec\)` is deprecated.*", "Lightning 2.6 on torch 2.14, about its own use of torch"),
    (r"Checkpoint directory .* exists and is not empty", "a run folder is resumed or refused first (training/runs.py)"),
    (r"Experiment logs directory .* exists and is not empty", "evaluating again rewrites its evaluation folder"),
    (
        r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint",
        "evaluation restores no checkpoint callbacks on purpose: it writes no checkpoints",
    ),
    (r".*does not have many workers.*", "batches are gathered from memory: worker processes would only add copies"),
    (r".*Couldn't infer the batch indices.*", "predictions are numbered in the loader's own order (PredictionWriter)"),
)
# Lightning's log lines that say nothing about this run: its tips, and that the project's own model summary
# (training/callbacks.py) replaces the default one.
KNOWN_LOG_LINES = ("💡 Tip", "Skipping setting a default `ModelSummary` callback")


def known_log_line(record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in KNOWN_LOG_LINES)


def quiet_known_warnings() -> None:
    """Silence ``KNOWN_WARNINGS`` and ``KNOWN_LOG_LINES`` (the command line calls this first; so do the tests)."""
    for pattern, _ in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", pattern)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if known_log_line not in logger.filters:
        logger.addFilter(known_log_line)


def usage_error_in(err: Optional[BaseException]) -> Optional[UsageError]:
    """The UsageError behind ``err``: jsonargparse wraps errors raised while it instantiates ``--data``'s class
    (a subclass type) in a ValueError of its own, raised ``from`` the original."""
    while err is not None and not isinstance(err, UsageError):
        err = err.__cause__
    return err


def run(argv: list[str], command_line: bool = False) -> Optional[int]:
    """Run the command ``argv`` names; ``command_line``: ``argv`` is ``sys.argv[1:]`` (LightningCLI reads it itself)."""
    if not argv or argv[0].startswith("-"):
        parser = top_level_parser()
        parser.parse_args(argv or ["--help"])
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        top_level_parser().error(f"'{command}' is not a command; choose one of {', '.join(COMMANDS)}.")
    from mobilenet.commands.parser import check_config_files, check_data_choice

    check_config_files(rest)
    check_data_choice(rest)
    module = importlib.import_module(COMMANDS[command][0])
    if command in LIGHTNING_COMMANDS:
        module.build_cli(None if command_line else [command, *rest])
        return 0
    return module.main(rest)


def raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


def stop_on_signals() -> None:
    """SIGTERM and SIGINT raise ``Interrupted`` wherever the command is (Lightning calls this handler after its
    own during evaluation; ``fit``'s ``Preemption`` callback replaces it while training, to save first)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, raise_interrupted)


def main(args: Optional[list[str]] = None) -> None:
    quiet_known_warnings()
    argv = sys.argv[1:] if args is None else list(args)
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    stop_on_signals()
    try:
        code = run(argv, command_line=args is None)
        sys.stdout.flush()  # inside the try: a reader that closed the pipe is seen here, not at exit
    except BrokenPipeError:  # `mobilenet classify ... | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to write at exit
        sys.exit(128 + signal.SIGPIPE)
    except Interrupted as stop:
        name, command = signal.Signals(stop.signum).name, argv[0] if argv else "mobilenet"
        print(
            f"mobilenet {command}: stopped by {name} before it finished, so it gives no result; every file it had "
            f"written is complete, and nothing is half-written.",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(128 + stop.signum)
    except ValueError as err:  # UsageError is a ValueError
        usage_error = usage_error_in(err)
        if usage_error is None:
            raise
        sys.exit(f"mobilenet: error: {usage_error}")
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        where = f" '{err.filename}'" if err.filename else ""
        sys.exit(
            f"mobilenet: error: could not write{where}: the disk is full. Every file is written whole or not at "
            f"all, so nothing is half-written and earlier files are unchanged; free some space and run the "
            f"command again."
        )
    except Exception as err:
        if type(err).__name__ != "MisconfigurationException":  # Lightning's sentence about a Trainer setting
            raise
        sys.exit(f"mobilenet: error: {str(err).strip()}")
    finally:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if code:
        sys.exit(code)
