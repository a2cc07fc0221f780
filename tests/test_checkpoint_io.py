"""Checkpoint files: a save killed halfway leaves the previous file whole; loading never runs pickled code."""

import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mobilenet.files import PARTIAL_MARK
from mobilenet.training.checkpoint_io import AtomicCheckpointIO

KILLED_WHILE_SAVING = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import torch
    from mobilenet.training.checkpoint_io import AtomicCheckpointIO

    def write_half_then_die(checkpoint, file):
        file.write(b"PK" + bytes(100_000))
        file.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = write_half_then_die
    AtomicCheckpointIO().save_checkpoint({"step": 2}, Path(sys.argv[1]))
    """
)


def save_atomically(checkpoint: dict, path: Path) -> None:
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)


def test_a_save_killed_halfway_leaves_the_previous_checkpoint_whole(tmp_path):
    last = tmp_path / "last.ckpt"
    save_atomically({"step": 1}, last)
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING, str(last)], capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert torch.load(last, weights_only=True) == {"step": 1}, "the kill damaged the previous last.ckpt"
    leftovers = [path.name for path in tmp_path.iterdir() if PARTIAL_MARK in path.name]
    assert len(leftovers) == 1 and not leftovers[0].endswith(".ckpt"), "a partial file must not look like a checkpoint"

    save_atomically({"step": 3}, last)  # the next save clears what the killed one left
    assert torch.load(last, weights_only=True) == {"step": 3}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.ckpt"]


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_the_trainers_checkpoint_loader_does_not_run_pickled_code(tmp_path):
    torch.save({"state_dict": {}, "payload": RunsCode(tmp_path / "code-ran")}, tmp_path / "evil.ckpt")
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "evil.ckpt")
    assert not (tmp_path / "code-ran").exists()
