"""The training loop in plain PyTorch: ``train_one_epoch`` and ``evaluate`` (torchvision-references style), and
what they run on: the device, precision and memory format (``pick_device``, ``engine_settings``, ``to_engine``),
the loader (``make_loader``), shared by ``train``, ``evaluate`` and ``predict``, and a run's :class:`Engine`.

Batches arrive as uint8 and are normalised on the device (:class:`~retinopathy.data.transforms.Normalize`).
"""
from __future__ import annotations

import contextlib
import math
import functools
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from ..data.transforms import Normalize
from ..errors import RetinopathyError
from ..models.factory import is_convolutional
from ..progress import progress_bar
from .distributed import DistInfo, all_gather_objects, finite_everywhere, sum_everywhere

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Diverged(RetinopathyError, FloatingPointError):
    """A non-finite loss or gradient: training stops before the optimizer step would spoil the weights."""


def gradient_norm(optimizer) -> torch.Tensor:
    """The 2-norm of every gradient the optimizer would apply (non-finite if any of them is)."""
    return torch.nn.utils.get_total_norm(
        [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None])


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def freeze_backbone(grader: nn.Module, frozen: bool) -> None:
    """Only the head trains while ``frozen`` (also parameters held by the network itself, as ViT's class token);
    every parameter trains otherwise."""
    head = set(grader.head.parameters())
    for p in grader.parameters():
        p.requires_grad = not frozen or p in head


def set_train_mode(model: nn.Module, frozen: bool) -> None:
    """Train mode, except that a frozen backbone stays in eval mode (BatchNorm statistics do not move)."""
    model.train()
    if frozen:
        for m in model.backbone_modules():
            m.eval()


def to_device(images: torch.Tensor, device: torch.device, normalize: nn.Module, channels_last: bool):
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return normalize(images)


def mix_batch(images: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """mixup (Zhang et al. 2018): ``lam * images + (1 - lam) * images[perm]`` with ``lam ~ Beta(alpha, alpha)``
    and ``perm`` a shuffle of the batch; returns the mixed images, ``perm`` and ``lam`` (torch's global RNG)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(images.shape[0], device=images.device)
    return lam * images + (1 - lam) * images[perm], perm, lam


def train_one_epoch(model, objective, optimizer, loader, device, normalize, *, grader, frozen: bool,
                    scheduler=None, scaler=None, ema=None, amp="none", channels_last=False, mixup=0.0,
                    progress=True, desc="train", dist: DistInfo | None = None) -> dict:
    """One pass over ``loader``; returns mean loss per image, accuracy, images and images/s (over all processes).

    ``ema`` (a ``torch.optim.swa_utils.AveragedModel``) follows ``grader`` after every optimizer step.
    ``mixup`` > 0: each batch is mixed (:func:`mix_batch`) and the loss is the same mix of the two targets'
    losses (for the ordinal objective, exactly binary cross-entropy on the mixed cumulative targets); accuracy
    counts the first target."""
    set_train_mode(grader, frozen)
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    bar = progress_bar(loader, enabled=progress, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
    for images, target in bar:
        images = to_device(images, device, normalize, channels_last)
        target = target.to(device, non_blocking=True)
        if mixup:
            images, perm, lam = mix_batch(images, mixup)
        with autocast(device, amp):
            out = model(images)
        loss = objective.loss(out, target)
        if mixup:
            loss = lam * loss + (1 - lam) * objective.loss(out, target[perm])
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:  # fp16: the scaler itself skips steps whose scaled gradients overflow
            scaler.scale(loss).backward()
            checked = loss.detach().float().reshape(1)
        else:  # fp32/bf16: a non-finite gradient with a finite loss would otherwise poison the weights silently
            loss.backward()
            checked = torch.stack([loss.detach().float(), gradient_norm(optimizer).float()])
        values = checked.tolist()
        if not finite_everywhere(values, dist or DistInfo(), device):
            bad = [f"{name} {v:.4g}" for name, v in zip(("loss", "gradient norm"), values) if not math.isfinite(v)]
            raise Diverged(f"{desc}: non-finite {' and '.join(bad) or 'loss or gradient in another process'} at "
                           f"image {seen}; stopped before the optimizer step, so the weights stay finite: lower "
                           "--lr" + (", or train with --amp none (bf16 has no loss scaling)" if amp == "bf16" else ""))
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(grader)
        n = target.shape[0]
        total_loss += values[0] * n
        correct += (objective.predict(out.detach()) == target).sum().item()
        seen += n
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}",
                        img_s=f"{seen / max(elapsed, 1e-9):.1f}", refresh=False)  # shown at the bar's own pace
    elapsed = time.perf_counter() - start
    total_loss, correct, seen = sum_everywhere([total_loss, correct, seen], dist or DistInfo(), device)
    seen = int(seen)
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1), "images": seen,
            "seconds": elapsed, "images_per_s": seen / max(elapsed, 1e-9)}


class ShardSampler(Sampler):
    """Every ``world``-th index from ``rank``: each sample is evaluated exactly once across processes."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


NON_FINITE = ("the weights are broken (a diverged run) or the precision overflowed (fp16); grade in fp32 (--amp "
              "none) or use another checkpoint")  # why a model's outputs are NaN or inf, and what to do


@torch.no_grad()
def evaluate(model, objective, loader, device, normalize, *, amp="none", channels_last=False,
             dist: DistInfo = DistInfo(), progress=True, desc="eval") -> dict:
    """Predict every sample of ``loader.dataset`` once (also across processes) and gather the results.

    Returns arrays in dataset order: ``labels``, ``outputs`` (raw), ``probs``, ``scores``, ``preds`` (grades by the
    objective's decision), and mean ``loss``.
    """
    model.eval()
    outputs, labels, loss_sum = [], [], 0.0
    for images, target in progress_bar(loader, enabled=progress, desc=desc, unit="batch", leave=False):
        images = to_device(images, device, normalize, channels_last)
        target = target.to(device, non_blocking=True)
        with autocast(device, amp):
            out = model(images)
        out = out.float()
        loss_sum += objective.loss(out, target).item() * target.shape[0]
        outputs.append(out.cpu())
        labels.append(target.cpu())
    local = {"indices": list(loader.sampler) if isinstance(loader.sampler, ShardSampler)
             else list(range(len(loader.dataset))),
             "outputs": torch.cat(outputs) if outputs else torch.empty(0, objective.outputs),
             "labels": torch.cat(labels) if labels else torch.empty(0, dtype=torch.long), "loss_sum": loss_sum}
    parts = all_gather_objects(local, dist)
    order = np.argsort(np.concatenate([p["indices"] for p in parts]), kind="stable")
    out = torch.cat([p["outputs"] for p in parts])[order]
    y = torch.cat([p["labels"] for p in parts])[order]
    broken = int((~torch.isfinite(out)).any(1).sum())
    if broken:
        raise RetinopathyError(f"{broken} of {len(out)} images got non-finite outputs (NaN or inf): {NON_FINITE}")
    return {"labels": y.numpy(), "outputs": out, "probs": objective.probabilities(out).numpy(),
            "scores": objective.score(out).numpy(), "preds": objective.predict(out).numpy(),
            "loss": sum(p["loss_sum"] for p in parts) / max(len(y), 1)}


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA, then MPS, then the CPU; a named device must be there."""
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available() or device.type == "mps" and not (
                getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise RetinopathyError(f"--device {name}: no such device here (torch finds no "
                                   f"{device.type.upper()} device); use --device auto or cpu")
        if device.type == "cuda" and (device.index or 0) >= (count := torch.cuda.device_count()):
            raise RetinopathyError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to "
                                   f"cuda:{count - 1}")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@functools.cache
def cpu_flags() -> frozenset:
    """The CPU's feature flags, from /proc/cpuinfo (none where it is not there)."""
    try:
        return frozenset(re.findall(r"\w+", Path("/proc/cpuinfo").read_text()))
    except OSError:
        return frozenset()


def cpu_has_bf16() -> bool:
    """Native bf16 matrix instructions (AVX512-BF16 or AMX): there bf16 autocast trains a ResNet about twice as
    fast as fp32 (benchmarks/README.md); without them it is emulated."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


TINY_FOR_CPU_BF16 = 16  # px: a training input this small or smaller trains in fp32 on the CPU under --amp auto
# (PyTorch's CPU bf16 convolutions give non-finite weight gradients now and then on the 1 x 1 maps it leaves a
# ResNet's last stage: measured with torch 2.14.1, a ResNet18 at 16 px had them in 1 to 18 of 20 batches, none at 32)


def cpu_amp_note(device: torch.device, asked: str, amp: str, size: int) -> str:
    """Why training on the CPU runs slower than it could: ``--amp auto`` chose fp32 (inputs of ``size`` px too small
    for bf16, or no native bf16), or ``--amp bf16``/``fp16`` asked for an emulated precision; '' otherwise."""
    if device.type != "cpu":
        return ""
    if asked == "auto" and amp == "none":
        return (f"the network trains on {size} px inputs, where bf16 on the CPU gives non-finite gradients now and "
                f"then (at {TINY_FOR_CPU_BF16} px or less), so training runs in fp32" if size <= TINY_FOR_CPU_BF16 else
                "this CPU has no native bf16 (AVX512-BF16 or AMX), so training runs in fp32, about half as fast as "
                "on a CPU that has it (--amp bf16 would be emulated here, and slower still)")
    native = {"bf16": cpu_has_bf16, "fp16": lambda: bool({"avx512_fp16", "amx_fp16"} & cpu_flags())}
    if amp in native and not native[amp]():
        return (f"this CPU has no native {amp} (AVX512 or AMX {amp.upper()}), so --amp {amp} is emulated: several "
                "times slower than fp32 here (--amp auto trains in fp32)")
    return ""


def engine_settings(device: torch.device, model, amp: str = "auto", channels_last: bool | None = None,
                    train_size: int | None = None) -> tuple[str, bool]:
    """(amp, channels_last) after 'auto' / None: bf16 on CUDA and on CPUs with native bf16 (unless the network
    trains on inputs of ``train_size`` <= :data:`TINY_FOR_CPU_BF16` px), fp32 elsewhere; channels_last for
    convolutional models on CUDA and CPUs (on CPUs it also speeds up fp32, 1.13-1.15x)."""
    fast = device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()
                                     and (train_size is None or train_size > TINY_FOR_CPU_BF16))
    amp = ("bf16" if fast else "none") if amp == "auto" else amp
    cl = channels_last if channels_last is not None else device.type in ("cuda", "cpu")
    return amp, bool(cl and is_convolutional(model))


def to_engine(model, device: torch.device, amp: str = "auto", channels_last: bool | None = None,
              train_size: int | None = None) -> tuple[str, bool]:
    """Move ``model`` to ``device``, in channels_last where :func:`engine_settings` picks it (for grading too: 1.23x
    faster fp32 inference on an AVX2 CPU); returns its (amp, channels_last)."""
    amp, channels_last = engine_settings(device, model, amp, channels_last, train_size)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return amp, channels_last


def _init_worker(worker_id: int) -> None:
    """A loader worker leaves its parent's process group: a SIGTERM (or Ctrl-C) sent to the group reaches the main
    process alone, which stops the workers itself (PyTorch's worker handler exits at once on a SIGTERM from its
    parent; one from elsewhere killed the worker, and the main process then failed on it). A worker whose parent
    is gone stops by itself (PyTorch's watchdog). And it does not print the handshake its parent broke off when
    stopped while taking a batch (:func:`parent_left_quietly`)."""
    os.setpgrp()
    sys.excepthook = parent_left_quietly


def parent_left_quietly(kind, value, traceback) -> None:
    """A loader worker's ``sys.excepthook``: the thread that hands its batches' shared memory to the main process
    (``multiprocessing.resource_sharer``) printed a traceback when the main process, interrupted, broke off the
    handshake (EOFError, ConnectionError); those are dropped, anything else is printed as Python prints it."""
    if not issubclass(kind, (EOFError, ConnectionError)):
        sys.__excepthook__(kind, value, traceback)


def make_loader(dataset, batch_size: int, workers: int, device, sampler, deterministic: bool, seed: int,
                train: bool = False, collate_fn=None):
    """``train``: a last batch of a single image is dropped (BatchNorm cannot train on one value per channel,
    which a small input's 1 x 1 feature maps leave); every other batch is kept."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                      pin_memory=device.type == "cuda", worker_init_fn=_init_worker,
                      drop_last=train and len(sampler) > batch_size and len(sampler) % batch_size == 1,
                      persistent_workers=workers > 0 and not deterministic,
                      prefetch_factor=4 if workers > 0 else None,
                      generator=torch.Generator().manual_seed(seed))


@dataclass
class Engine:
    """Where and how a run computes: device, precision (training's and evaluation's), memory format, loader
    workers, processes, the input normalisation (on the device), and whether rank 0 shows progress bars."""
    device: torch.device
    amp: str
    eval_amp: str
    channels_last: bool
    workers: int
    dist: DistInfo
    normalize: Normalize
    progress: bool

    def eval_loader(self, dataset, args) -> DataLoader:
        """Every image once, sharded across processes."""
        return make_loader(dataset, args.batch_size, self.workers, self.device,
                           ShardSampler(len(dataset), self.dist.rank, self.dist.world_size), args.deterministic, 0)

    def grade(self, model, objective, loader, desc: str) -> dict:
        return evaluate(model, objective, loader, self.device, self.normalize, amp=self.eval_amp,
                        channels_last=self.channels_last, dist=self.dist, progress=self.progress, desc=desc)
