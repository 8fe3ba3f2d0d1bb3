"""Worker processes of prepare and synth: results in order, and Ctrl-C for the command alone."""
from __future__ import annotations

import signal

from retinopathy.workers import mapped, worker_count


def _ignores_ctrl_c(i: int) -> tuple[int, bool]:
    return i, signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_workers_leave_ctrl_c_to_the_command():
    """A terminal's Ctrl-C reaches every process of the group: a worker that died of it holding the pool's queue
    lock left prepare and synth hanging after 'interrupted'. The workers ignore it; this process does not."""
    with mapped(_ignores_ctrl_c, list(range(20)), workers=2, most_per_chunk=4) as results:
        got = list(results)
    assert [i for i, _ in got] == list(range(20)) and all(ignored for _, ignored in got)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with mapped(_ignores_ctrl_c, [0, 1], workers=1, most_per_chunk=4) as results:  # in this process: as it was
        assert [ignored for _, ignored in results] == [False, False]


class _Hooked:
    """Each item: whether the loader worker that reads it has the project's excepthook."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        import sys

        from retinopathy.training.engine import parent_left_quietly

        return sys.excepthook is parent_left_quietly


def test_a_loader_worker_does_not_print_the_handshake_an_interrupted_main_process_broke_off(capsys):
    """An interrupted training (SIGTERM, Ctrl-C) while a worker handed over a batch: the worker's fd-sharing thread
    printed a traceback (EOFError or ConnectionResetError in multiprocessing's answer_challenge); other errors
    are still printed."""
    import sys

    import torch

    from retinopathy.training.engine import make_loader, parent_left_quietly

    loader = make_loader(_Hooked(), 2, 1, torch.device("cpu"), None, True, 0)
    assert next(iter(loader)).tolist() == [True, True]
    for error in (EOFError(), ConnectionResetError(104, "Connection reset by peer")):
        parent_left_quietly(type(error), error, None)
    assert capsys.readouterr().err == ""
    parent_left_quietly(ValueError, ValueError("kept"), None)
    assert "ValueError: kept" in capsys.readouterr().err
    assert sys.excepthook is not parent_left_quietly  # the main process keeps Python's


def test_default_workers_are_the_cores_this_process_may_use(monkeypatch):
    """os.cpu_count() is the machine's: 8 cores of a 128-core node (taskset, cgroups, SLURM) started 128 workers."""
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    assert worker_count(None, 1000) == 2 and worker_count(None, 1) == 1 and worker_count(6, 1000) == 6
