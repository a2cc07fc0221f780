"""Every file this project writes goes through ``atomic_write``: whole or not at all, never half.

The content is written to a hidden ``.<name>.partial-<pid>`` file in the destination folder, flushed to the
disk, then renamed over the destination (a rename within one file system is atomic). A process killed while
writing, or a disk that fills up, leaves the earlier file (if any) untouched; the partial file does not end
in the destination's suffix, so it is never taken for a checkpoint, an export or a cache.
"""

import contextlib
import csv
import errno
import io
import os
import shutil
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Sequence

from mobilenet.errors import UsageError

PARTIAL_MARK = ".partial-"
# Errors that mean the disk (or the user's quota) is full, and free space below which a failed write is taken
# for one.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_BYTES = 64 * 2**20


def shown(path: str | Path) -> str:
    """A path as the user would write it: relative to the working folder when it lies inside it (Lightning
    and the run folders make paths absolute)."""
    path = Path(path)
    return os.path.relpath(path) if path.is_absolute() and path.is_relative_to(Path.cwd()) else str(path)


def printable(text: str) -> str:
    """``text`` with the bytes of a file name that are not UTF-8 (kept by Python as lone surrogates, which a
    UTF-8 terminal cannot be sent and no font can draw) shown as the replacement character '\ufffd'."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL_MARK}{os.getpid()}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, replace: bool = True) -> Iterator[BinaryIO]:
    """Open a binary file that takes the name ``path`` only when the ``with`` block ends without an exception:
    replacing a file of that name, or with ``replace=False`` only if none appeared meanwhile (``publish``).

    Leftovers of a process killed while writing the same file are removed first (not those of a process still
    writing it: several processes of one DDP run may write the same cache).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}{PARTIAL_MARK}*"):
        if not process_alive(stale.name.rsplit(PARTIAL_MARK, 1)[1]):
            stale.unlink(missing_ok=True)
    partial = partial_path(path)
    try:
        with open(partial, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        publish(partial, path, replace)
    except RuntimeError as err:
        partial.unlink(missing_ok=True)
        if "file write failed" not in str(err) and "PytorchStreamWriter" not in str(err):
            raise
        # torch.save's zip writer reports a failed write as a RuntimeError: the OSError it stands for.
        full = shutil.disk_usage(path.parent).free < DISK_FULL_BYTES
        code = errno.ENOSPC if full else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from err
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def publish(finished: Path, path: Path, replace: bool) -> None:
    """Give the finished file ``finished`` the name ``path``. Without ``replace``, a file that took that name since
    the command checked it (another command writing the same output at the same time) is kept, and this one is
    refused with a sentence instead of silently overwriting it."""
    if not replace:
        try:
            os.link(finished, path)  # fails if the name is taken, atomically
            os.unlink(finished)
            return
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: check, then rename
            if not path.exists():
                os.replace(finished, path)
                return
        raise UsageError(
            f"'{path}' appeared while this command was writing it (another command writing the same file at the "
            f"same time?). That file is kept and this result was not written; choose another --output, or add "
            f"--overwrite."
        )
    os.replace(finished, path)


def process_alive(pid: str) -> bool:
    """Whether the process numbered ``pid`` (as written in a partial file's name) still runs on this machine."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, under another user
        return True
    return True


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``path`` holding ``text`` (UTF-8), written atomically."""
    with atomic_write(path) as file:
        file.write(text.encode())
    return Path(path)


def write_csv(path: str | os.PathLike, header: Sequence, rows: Iterable[Sequence]) -> Path:
    """A CSV file with ``header`` and ``rows``, written atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, text.getvalue())


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (the same path, or links to one file)."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_writable(folder: Path) -> None:
    """Refuse at once, before any training, a folder the run could not write its checkpoints or logs to."""
    existing = next((path for path in (folder, *folder.parents) if path.exists()), Path("."))
    if not existing.is_dir():
        raise UsageError(f"'{folder}' cannot be created: '{existing}' is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(
            f"'{existing}' is not writable, so this run could not save '{folder}'. Make it writable, or run the "
            f"command from a folder you can write to (checkpoints/ and logs/ are made there)."
        )
