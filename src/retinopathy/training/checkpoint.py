"""Checkpoints: written atomically (:func:`retinopathy.atomic.replacing`), read with ``weights_only=True``.

A checkpoint is a dict of tensors and plain values: ``format``, ``version``, ``model`` (state dict), ``model_ema``
and ``ema_updates`` (the averaged weights under ``--model-ema``, else None and 0), ``optimizer``, ``scheduler``,
``scaler``, ``epoch`` (last finished), ``steps_per_epoch`` and ``world_size`` (a resume with epochs left that
changes either is refused: the schedule counts steps, each process draws its own images), ``phase``, ``best``,
``config`` and ``model_info`` (architecture, head, objective, thresholds, preprocessing, class names), and
``save_id``, new at every save: evaluations record it, so a report or model card can tell the checkpoint they
evaluated from one saved since in its place (a new best, retuned thresholds, another run trained into the folder).
"""
from __future__ import annotations

import contextlib
import csv
import os
import pickle
import shlex
import signal
import threading
import uuid
import warnings
import zipfile
from pathlib import Path

import torch
import yaml

from ..atomic import replacing
from ..errors import RetinopathyError
from ..outputs import refuse_replacing

FORMAT = "retinopathy-checkpoint"
VERSION = 1


class CheckpointError(RetinopathyError, RuntimeError):
    """A file that is not a usable retinopathy checkpoint."""


@contextlib.contextmanager
def interrupts_after():
    """Ctrl-C during the block reaches the SIGINT handler after it: inside ``torch.save`` it would surface as a
    RuntimeError from the zip writer (a "failed" cell instead of an interrupted run). An ignored SIGINT stays so.
    SIGTERM too, where a Python handler takes it (train turns it into Ctrl-C); by default it still kills."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    held = {s: h for s, h in held.items() if callable(h) or (s == signal.SIGINT and h not in (signal.SIG_IGN, None))}
    caught = []
    for s in held:
        signal.signal(s, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        for s, h in held.items():
            signal.signal(s, h)
        if caught and callable(held[caught[0][0]]):
            held[caught[0][0]](*caught[0])  # Python's default SIGINT handler raises KeyboardInterrupt
        elif caught:
            raise KeyboardInterrupt


def save_checkpoint(state: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with interrupts_after(), replacing(path, "wb", durable=True) as f:
        torch.save({"format": FORMAT, "version": VERSION, **state, "save_id": uuid.uuid4().hex}, f)


def same_checkpoint(record: dict, ckpt: dict) -> bool:
    """Whether an evaluation ``record`` (evaluate's metrics.json) is of ``ckpt``: the same save where both carry
    a ``save_id``, else (checkpoints from before it) the same epoch."""
    if record.get("checkpoint_id") and ckpt.get("save_id"):
        return record["checkpoint_id"] == ckpt["save_id"]
    return record.get("epoch") == ckpt.get("epoch")


def run_folder(checkpoint: str | Path) -> Path:
    """The run a checkpoint belongs to: ``RUN/checkpoints/best.pt`` and ``RUN/best.pt`` -> ``RUN`` (also when the
    file is gone: a ``.pt`` path that is not a folder); a run folder is itself."""
    path = Path(checkpoint)
    folder = path.parent if path.is_file() or path.suffix == ".pt" and not path.is_dir() else path
    if folder.name in ("", ".."):  # `best.pt` typed in checkpoints/ (or `..`): only its full path names the folder
        folder = Path(os.path.abspath(folder))
    return folder.parent if folder.name == "checkpoints" else folder


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or for a run folder its ``checkpoints/best.pt`` (or ``best.pt``)."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.pt", path / "best.pt"):
            if candidate.exists():
                return candidate
        last = path / "checkpoints" / "last.pt"
        raise CheckpointError(f"{path}: a folder without checkpoints/best.pt; " + (
            f"pass {last} to use its last epoch" if last.exists() else
            "pass a checkpoint file (best.pt or last.pt)"))
    return path


def new_run_from(weights: str | Path) -> str:
    """The options that start a new run from ``weights`` (a checkpoint or a run folder), as a hint gives them."""
    return f"--weights {shlex.quote(str(weights))} --out NEW"


def refuse_replacing_run(out, path: str | Path, inputs: list) -> None:
    """Refuse an ``--out`` (the file, or the files, it writes) that names one of the command's ``inputs``, the
    checkpoint it reads for ``path`` (and, in a run's ``checkpoints/`` folder, its siblings) or a labels file the
    checkpoint's run trained from."""
    read = checkpoint_file(path)
    checkpoints = [read, *([read.parent / "last.pt", read.parent / "best.pt"]
                           if read.parent.name == "checkpoints" else [])]
    refuse_replacing(out, "--out", [*inputs, *checkpoints])
    try:
        config = yaml.safe_load((run_folder(read) / "config.yaml").read_text(encoding="utf-8"))
        labels = [Path(f) for f in config["data"]["labels"] if Path(f).is_file()]
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError):  # a config.yaml that cannot say
        labels = []
    refuse_replacing(out, "--out", labels, "a labels file the model's run trained from")


def safe_load(path: str | Path, **kwargs):
    """``torch.load(path, weights_only=True)``, without PyTorch's warning about the pickle protocol of a file that
    is not one of its own (the error that follows names the file)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
        return torch.load(path, weights_only=True, **kwargs)


def load_checkpoint(path: str | Path, map_location="cpu", mmap: bool = False) -> dict:
    """Load and validate a checkpoint (a file, or a run folder: its best.pt); failures say which file and why.
    ``mmap``: tensors stay on disk until used (cheap when only ``epoch`` or ``model_info`` is read)."""
    path = checkpoint_file(path)
    if not path.exists():
        there = sorted(p.name for p in path.parent.glob("[!.]*.pt*")) if path.parent.is_dir() else []
        raise CheckpointError(f"{path}: checkpoint not found" + (
            f" (in its folder: {', '.join(there[:5])}{', ...' if len(there) > 5 else ''})" if there else
            "" if path.parent.is_dir() else f" ({path.parent} does not exist)"))
    if kind := exported_model(path):
        raise CheckpointError(f"{path}: {kind} (`retinopathy export` writes these), not a checkpoint: pass the "
                              "run's checkpoints/best.pt")
    try:
        ckpt = safe_load(path, map_location=map_location, mmap=mmap)
    except Exception as e:  # on a file that is not one, the safe unpickler fails in many ways (KeyError, ...)
        best = path.with_name("best.pt")
        copy = f"cp {shlex.quote(str(best))} {shlex.quote(str(path))}"
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({unreadable(path, e)}). " + (
            f"A broken last.pt cannot be resumed as it is: copy the run's best.pt over it (`{copy}`) to resume from "
            "the selected epoch" if path.name == "last.pt" and best.is_file() else
            "A broken last.pt cannot be resumed, and the run has no best.pt: start the run again"
            if path.name == "last.pt" else f"Put the run's best.pt back from a backup, or pass its last.pt (the last "
            f"epoch, not the selected one): {path.with_name('last.pt')}" if path.name == "best.pt"
            and path.with_name("last.pt").is_file() else "Pass a run's checkpoints/best.pt (or last.pt)")) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a retinopathy checkpoint (no '{FORMAT}' marker); train one with "
                              "`retinopathy train` (other weights, such as ImageNet's, can start a training: "
                              f"`retinopathy train --weights {shlex.quote(str(path))} ...`)")
    if not isinstance(ckpt.get("version", 0), int):
        raise CheckpointError(f"{path}: not a retinopathy checkpoint (its format version is {ckpt['version']!r}, "
                              "not a number)")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: written by a newer retinopathy (checkpoint format {ckpt['version']}, "
                              f"this version reads up to {VERSION}); upgrade the package")
    return ckpt


def exported_model(path: Path) -> str | None:
    """What an exported model is ("a TorchScript model", "a torch.export program", "an ONNX model"), or None for
    any other file. A TorchScript archive is a zip whose records include ``constants.pkl`` and a torch.export one
    (``.pt2``) ``archive_format``, which a checkpoint's never do (torch.load would hand the first to torch.jit.load,
    with a warning, and fail)."""
    if path.suffix == ".onnx":
        return "an ONNX model"
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    return ("a TorchScript model" if any(n.endswith("/constants.pkl") for n in names) else
            "a torch.export program" if any(n.endswith("/archive_format") for n in names) else None)


def unreadable(path: Path, error: Exception) -> str:
    """Why ``path`` is not a checkpoint, in words (torch's own message advises an unsafe load)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the file itself: run `git lfs pull`"
    if path.suffix in (".json", ".md", ".yaml", ".csv"):
        return f"a {path.suffix} file, not a PyTorch checkpoint"
    if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error):
        return "it holds Python objects that a safe load (weights_only=True) refuses"
    if isinstance(error, (zipfile.BadZipFile, EOFError, RuntimeError)) or not head:
        return "truncated, empty or not a PyTorch file"
    return f"not a PyTorch file: {type(error).__name__}"


def epochs_saved(run: str | Path) -> int:
    """Epochs a run folder has checkpointed (its ``checkpoints/last.pt``; 0 when none). Not metrics.csv's rows:
    a row is written before its checkpoint, so a run killed between the two has one row more (dropped on resume).
    A run whose last.pt was deleted once it finished (it cannot continue) has its rows."""
    checkpoints = Path(run) / "checkpoints"
    if (checkpoints / "last.pt").exists():
        return load_checkpoint(checkpoints / "last.pt", mmap=True)["epoch"] + 1
    if (checkpoints / "best.pt").exists():
        return len(metrics_rows(Path(run) / "metrics.csv"))
    return 0


def metrics_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a run's ``metrics.csv`` as written (text cells); none when there is no such file."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
