"""How this process was started: the rank, process count and command that torchrun (RANK, WORLD_SIZE) or srun
(SLURM_PROCID, SLURM_NTASKS) gave it, read from the environment without importing torch (the command line asks
when Ctrl-C comes, which can be while torch is still being imported)."""
from __future__ import annotations

import contextlib
import os
import shlex
import signal
import threading

# The process that started this one (torchrun, for a rank), recorded at import, before the seconds of importing torch:
# a launcher killed in those seconds is noticed too (``distributed.watch_launcher``). A child forked later has its own.
PARENT = os.getppid()


def _forked() -> None:
    global PARENT
    PARENT = os.getppid()


os.register_at_fork(after_in_child=_forked)


def resume_command(run, world: int | None = None) -> str:
    """The command that continues ``run`` as it was started: under torchrun with the same processes per node, under
    srun with the same tasks. ``world``: the run's process count, for a caller outside the run (the report), which
    cannot know the launcher: then torchrun on one node."""
    env, run = os.environ, shlex.quote(str(run))
    tasks = launched_as()[1] if world is None and "SLURM_PROCID" in env and "WORLD_SIZE" not in env else 1
    if tasks > 1:
        return f"srun --ntasks={tasks} retinopathy train --resume {run}"
    if world is None:
        world, local = int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_WORLD_SIZE", 0) or 0)
    else:
        local = world
    if world <= 1:
        return f"retinopathy train --resume {run}"
    nodes = f" --nnodes={world // local}" if local and local != world else ""
    return f"torchrun --nproc_per_node={local or world}{nodes} -m retinopathy train --resume {run}"


def launched_as() -> tuple[int, int, int]:
    """(rank, world size, local rank) that torchrun (RANK/WORLD_SIZE) or srun (SLURM_PROCID/SLURM_NTASKS) gave this
    process; (0, 1, 0) for a single one."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        rank = int(env["SLURM_PROCID"])
        if "SLURM_LOCALID" in env:
            return rank, int(env["SLURM_NTASKS"]), int(env["SLURM_LOCALID"])
        import torch  # here only: srun sets SLURM_LOCALID

        return rank, int(env["SLURM_NTASKS"]), rank % max(1, torch.cuda.device_count())
    return 0, 1, 0


def others_say_it() -> bool:
    """Whether this process may leave an error to another: it is not the first process on its machine, whose first
    process was started with the same command line in the same folder and meets what it meets (each machine's
    first process speaks: another machine's files may differ). A launcher that gives no local rank: every process
    speaks."""
    return launched_as()[2] != 0


def interrupt(signum, frame):
    """A signal handler that stops the program as Ctrl-C does."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """SIGTERM (``docker stop``, SLURM, ``timeout``; to the process or its group) stops a single process as Ctrl-C
    does within the block, so that it saves what it has finished and says how to continue. Under torchrun or srun
    the launcher tears the ranks down (a rank waiting in a collective could not run a Python handler)."""
    catch = threading.current_thread() is threading.main_thread() and launched_as()[1] == 1
    previous = signal.signal(signal.SIGTERM, interrupt) if catch else None
    try:
        yield
    finally:
        if catch:
            signal.signal(signal.SIGTERM, previous)
