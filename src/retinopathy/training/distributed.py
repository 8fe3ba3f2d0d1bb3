"""Multi-process set-up from torchrun's (or SLURM's) environment, as torchvision's references do."""
from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .. import launch
from ..errors import RetinopathyError
from ..launch import launched_as, resume_command


class PeerFailed(RetinopathyError):
    """A collective that failed because another process of the run stopped (that process's error says why)."""

    rank_local = True
    exit_code = 1


def peer_failed(error: BaseException) -> bool:
    """Whether a collective's error says another process is gone (gloo: "Connection closed by peer"); a backend's
    own failure (NCCL's "unhandled cuda error") is not one."""
    return any(s in str(error) for s in ("closed by peer", "reset by peer", "remote worker", "Broken pipe",
                                         "remote process exit"))  # the last: NCCL's ncclRemoteError


@dataclass
class DistInfo:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str, run=None) -> DistInfo:
    """Join the process group named by RANK/WORLD_SIZE (torchrun) or SLURM_PROCID/SLURM_NTASKS.

    ``nccl`` on CUDA, ``gloo`` otherwise. A single process returns ``DistInfo(enabled=False)``. ``run``: the
    run's folder, for the command that continues it should the launcher die.
    """
    rank, world, local = launched_as()
    if world <= 1:
        return DistInfo()
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:  # srun without torchrun
        env.setdefault("MASTER_PORT", "29500")
        if "MASTER_ADDR" not in env:
            raise RetinopathyError("under SLURM set MASTER_ADDR (e.g. the first host of $SLURM_NODELIST), "
                                   "or launch with torchrun")
    if device_type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    watch_launcher(rank, run)
    return DistInfo(True, rank, world, local)


def watch_launcher(rank: int, run=None, interval: float = 2.0) -> threading.Thread:
    """Stop this process when the launcher that started it is gone (torchrun killed by SIGKILL or the OOM killer:
    it starts its ranks in sessions of their own, so nothing reaches them, and they would train on unattended,
    holding the run's lock). A hard exit, as a kill would be: saves are atomic, so the last saved epoch is kept.
    Rank 0 says so, with the command that continues ``run``. The launcher is the parent this process had when the
    package was imported, so that one killed before the watch starts (while torch was imported) is gone too."""
    parent = launch.PARENT
    resume = resume_command(run if run is not None else "RUN")  # now: the launcher's environment

    def watch():
        while os.getppid() == parent:
            time.sleep(interval)
        if rank == 0:  # every process stops, one says why
            print(f"error: the launcher that started the run's processes (pid {parent}) is gone; stopping. Continue "
                  f"the run from its last saved epoch: {resume}", file=sys.stderr, flush=True)
        os._exit(1)

    thread = threading.Thread(target=watch, name="launcher-watch", daemon=True)
    thread.start()
    return thread


def finite_everywhere(values: list[float], info: DistInfo, device) -> bool:
    """Whether all ``values`` are finite in every process (one collective): all of them stop together, instead
    of the others waiting for the one that stopped until the collective times out."""
    local = all(math.isfinite(v) for v in values)
    if not info.enabled:
        return local
    flag = torch.tensor([0.0 if local else 1.0], device=device)
    dist.all_reduce(flag)
    return flag.item() == 0


def sum_everywhere(values: list[float], info: DistInfo, device) -> list[float]:
    """``values`` summed over all processes (one collective); themselves in a single process."""
    if not info.enabled:
        return values
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals.tolist()


def broadcast_buffers(module, info: DistInfo) -> None:
    """Every process takes rank 0's buffers (BatchNorm statistics). DDP syncs them at the start of each forward
    pass, so after an epoch's last step each process holds its own, and evaluation would score a different
    model in each process instead of the one rank 0 saves."""
    if info.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def all_gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


@contextlib.contextmanager
def local_first(info: DistInfo):
    """The machine's first process runs the block first, then its others (ImageNet weights downloaded once into the
    shared cache, which the others then read)."""
    if info.enabled and info.local_rank != 0:
        barrier(info)
    yield
    if info.enabled and info.local_rank == 0:
        barrier(info)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
