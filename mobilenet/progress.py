"""Progress of long work: a bar on a terminal, whole lines in a file (nohup, SLURM, CI logs).

A bar redraws itself with carriage returns, which leave a log file full of partial lines; when the stream is
not a terminal, ``progress`` writes one line when the work is done instead (``Decoding train: 93/93 images in
0.4 s``; the ``unit`` is given in the plural, and made singular for one).
"""

import sys
import time
from typing import Iterable, Optional, TextIO

from tqdm import tqdm

SINGULAR = {"batches": "batch", "images": "image", "files": "file"}


class LineProgress:
    """The part of tqdm's interface this project uses (iterate, ``update``, ``close``), printing one line at the end."""

    def __init__(
        self, iterable: Optional[Iterable] = None, *, file: TextIO, total: Optional[float] = None, desc: str = "",
        unit: str = "it", **_,
    ) -> None:  # fmt: skip
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.stream, self.total, self.desc, self.unit = iterable, file, total, desc, unit
        self.started, self.count, self.reported = time.perf_counter(), 0, False

    def __iter__(self):
        for item in self.iterable:
            self.count += 1
            yield item
        self.close()

    def update(self, n: float = 1) -> None:
        self.count += n

    def close(self) -> None:
        if not self.reported and self.count:
            total = f"/{self.total:g}" if self.total else ""
            seconds = time.perf_counter() - self.started
            one = max(self.count, self.total or 0) == 1
            unit = SINGULAR.get(self.unit, self.unit) if one else self.unit  # "1/1 batch", "2/2 batches"
            print(f"{self.desc}: {self.count:g}{total} {unit} in {seconds:.1f} s", file=self.stream, flush=True)
            self.reported = True


def draws_bars(stream: TextIO) -> bool:
    """Whether progress on ``stream`` is drawn as a bar (a terminal) or written as whole lines (a file, a pipe):
    the one rule for this function and for training's progress (``training.callbacks.PlainProgressBar``)."""
    return stream.isatty()


def progress(iterable: Optional[Iterable] = None, *, file: TextIO = None, disable: bool = False, **kwargs):
    """``tqdm(iterable, **kwargs)`` on a terminal, ``LineProgress`` otherwise (``disable`` silences both)."""
    file = file or sys.stderr
    if disable or draws_bars(file):
        return tqdm(iterable, file=file, disable=disable, **kwargs)
    return LineProgress(iterable, file=file, **kwargs)
