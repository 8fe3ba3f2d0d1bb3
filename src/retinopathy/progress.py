"""Progress bars: tqdm's live bar on a terminal; in a log file (nohup, SLURM), a plain line now and then."""
from __future__ import annotations

import sys

from tqdm import tqdm

LOG_EVERY = 60.0  # seconds between progress lines when stderr is not a terminal


class _Lines:
    """A stream that writes each of tqdm's carriage-return redraws as a line of its own (for log files)."""

    def __init__(self, stream):
        self.stream, self.last = stream, None

    def write(self, text: str) -> None:
        for line in map(str.strip, text.split("\r")):
            done = line.split("[")[0]  # "desc: 45% 5863/13000": the closing redraw repeats it with a new rate
            if line and done != self.last:
                self.last = done
                self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, shown only when ``enabled``. On a terminal, the live bar; when stderr is a
    file or a pipe, work that lasts more than ``LOG_EVERY`` seconds prints one line every ``LOG_EVERY`` seconds
    and shorter work prints nothing."""
    if enabled and not sys.stderr.isatty():
        kwargs.pop("dynamic_ncols", None)
        kwargs.update(file=_Lines(sys.stderr), mininterval=LOG_EVERY, maxinterval=LOG_EVERY, delay=LOG_EVERY,
                      ncols=0)  # stats, no bar; maxinterval: tqdm's monitor thread would add a line in between
    return tqdm(iterable, disable=not enabled, **kwargs)
