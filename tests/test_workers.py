"""Worker processes of prepare and synth: results in order, and Ctrl-C for the command alone."""
from __future__ import annotations

import signal

from retinopathy.workers import mapped


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
