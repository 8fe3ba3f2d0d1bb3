"""Work file by file over worker processes (``prepare``, ``synth``), stoppable with Ctrl-C."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a cgroup, taskset or a SLURM allocation), not the
    machine's: 8 of a 128-core node must not start 128 workers."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_count(requested: int | None, jobs: int) -> int:
    """How many workers to use for ``jobs`` jobs: ``requested`` (None: every usable core), at most one per job; 0 or
    1 is one, working in this process."""
    return max(1, min(usable_cores() if requested is None else requested, jobs))


@contextlib.contextmanager
def mapped(function, jobs: list, workers: int, most_per_chunk: int):
    """``function`` over ``jobs``, results in order: in this process for one worker, else over a process pool.
    The pool's workers ignore Ctrl-C (a terminal sends it to the whole process group), and leaving the block stops
    them at once: a ProcessPoolExecutor, interrupted, could hang for good after "interrupted", its queue's lock
    held by a worker. Each job writes its file atomically: a stopped one leaves no half-written file under the
    file's name, at most its temporary file beside it."""
    if workers == 1:
        yield map(function, jobs)
        return
    with multiprocessing.get_context().Pool(workers, initializer=_worker_signals) as pool:  # exit: terminate()
        yield pool.imap(function, jobs, chunksize=max(1, min(most_per_chunk, len(jobs) // (workers * 8))))


def _worker_signals() -> None:
    """A pool worker ignores Ctrl-C and stops on SIGTERM (how ``terminate()`` stops it), whatever handler it
    inherited (``experiment`` turns SIGTERM into Ctrl-C, which printed each worker's traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
