"""Work file by file over worker processes (``prepare``, ``synth``), stoppable with Ctrl-C."""
from __future__ import annotations

import contextlib
import multiprocessing
import signal


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
    with multiprocessing.get_context().Pool(workers, initializer=signal.signal,
                                            initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:  # exit: terminate()
        yield pool.imap(function, jobs, chunksize=max(1, min(most_per_chunk, len(jobs) // (workers * 8))))
