"""Run folders: a run's name, where its checkpoints live, and what ``--ckpt_path last`` and ``best`` mean.

Each experiment keeps its checkpoints in ``checkpoints/<run name>/`` (``last.ckpt`` plus one
``best-….ckpt`` chosen on ``val/acc``) and its CSV logs in ``logs/<run name>/version_<n>/``.
"""

from pathlib import Path
from typing import Optional, Sequence

from mobilenet.errors import UsageError

CHECKPOINT_ROOT = Path("checkpoints")
LOG_ROOT = Path("logs")
DEFAULT_RUN_NAME = "default"
BEST_PREFIX = "best-"
LAST_NAME = "last.ckpt"
ALIASES = ("last", "best")


def run_name_from(config_files: Optional[Sequence]) -> str:
    """The first ``--config`` file's name without extension (``configs/cifar10.yaml`` → ``cifar10``)."""
    for config in config_files or ():
        path = getattr(config, "relative", None) or getattr(config, "absolute", None) or config
        return Path(str(path)).stem
    return DEFAULT_RUN_NAME


def checkpoint_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("*.ckpt")) if run_dir.is_dir() else []


def refuse_to_mix(run_dir: Path, run_name: str) -> None:
    """A fresh ``fit`` must not write into a run folder that already holds another run's checkpoints."""
    existing = checkpoint_files(run_dir)
    if existing:
        raise UsageError(
            f"'{run_dir}' already holds checkpoints of an earlier run '{run_name}' "
            f"({', '.join(p.name for p in existing)}); a fresh fit would mix two experiments' files. "
            f"Resume that run with --ckpt_path last, start a separate one with --run_name NEW_NAME, "
            f"or delete the folder to start over."
        )


def resolve_checkpoint(ckpt_path: str, run_dir: Path, run_name: str, subcommand: str) -> Optional[str]:
    """A checkpoint file for ``ckpt_path``: a path as given, ``last`` or ``best`` looked up in ``run_dir``.

    ``fit --ckpt_path last`` with no checkpoint yet starts the run from scratch (returns None), so that a
    job script can always pass it; every other missing checkpoint is an error.
    """
    if ckpt_path not in ALIASES:
        if not Path(ckpt_path).is_file():
            raise UsageError(
                f"--ckpt_path '{ckpt_path}' is not a file. Pass a checkpoint file, or 'last' / 'best' to use "
                f"the run's own checkpoints in '{run_dir}'."
            )
        return ckpt_path
    if ckpt_path == "last":
        found = run_dir / LAST_NAME
        candidates = [found] if found.is_file() else []
    else:
        # save_top_k=1 keeps one best file; if a config keeps more, the newest is the best so far.
        candidates = sorted(run_dir.glob(f"{BEST_PREFIX}*.ckpt"), key=lambda p: p.stat().st_mtime)
    if candidates:
        return str(candidates[-1])
    if subcommand == "fit" and ckpt_path == "last":
        print(f"No checkpoint in '{run_dir}' yet: run '{run_name}' starts from scratch.")
        return None
    raise UsageError(
        f"--ckpt_path {ckpt_path}: no {ckpt_path} checkpoint in '{run_dir}' (run '{run_name}'). Train the run "
        f"first with `mobilenet fit` and the same --config / --run_name, or pass a checkpoint file path."
    )
