"""ImageNet weights through torchvision's weight enums and cache, checked, offline-aware.

torchvision keeps downloaded weights in ``$TORCH_HOME/hub/checkpoints/<name>-<sha256 prefix>.pth`` and
checks the hash only when it downloads. Here a cached (or given) file is checked against the prefix in
its name (eight or more hex digits, one a letter) before it is loaded, and a file that is neither cached
nor downloadable stops the run with a message that says what to do.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.error import URLError

import torch
from torchvision.models import get_model_weights

from ..errors import RetinopathyError
from ..training.checkpoint import checkpoint_file, exported_model, safe_load, unreadable


class WeightsError(RetinopathyError, RuntimeError):
    """Pretrained weights that cannot be had or do not match."""


class WeightsUnavailable(WeightsError):
    """ImageNet weights neither cached nor downloadable here (an experiment skips such a cell)."""


def weights_enum(model: str, tag: str = "IMAGENET1K_V1"):
    try:
        enum = get_model_weights(model)
    except (ValueError, KeyError) as e:
        raise WeightsError(f"torchvision has no weights for model {model!r}: {e}") from None
    try:
        return enum[tag]
    except KeyError:
        raise WeightsError(f"{enum.__name__} has no {tag!r}; available: "
                           f"{', '.join(w.name for w in enum)}") from None


def cache_path(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


# torch.hub's naming rule, ``name-<first eight or more hex digits of the SHA-256>.ext``; its own HASH_REGEX also
# takes ``-2.`` (fine for the URLs it checks, not for a user's ``mine-2.pth``). A letter among them, so that a date
# (``-20240105.``) is not taken for a hash (a real prefix without a letter, 2 % of them, goes unchecked).
HASH_IN_NAME = re.compile(r"-((?=[0-9]*[a-f])[a-f0-9]{8,})\.")


def check_hash(path: Path) -> None:
    """Compare the file's SHA-256 with the prefix torchvision puts in its name (``resnet18-f37072fd.pth``)."""
    m = HASH_IN_NAME.search(path.name)
    if not m:
        return
    expected = m.group(1)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    actual = h.hexdigest()[: len(expected)]
    if actual != expected:
        raise WeightsError(f"{path}: SHA-256 starts with {actual} but the file name says {expected}; the "
                           "file is corrupt or not the published weights. Delete it to download again, "
                           "or pass --no-check-weights-hash if you made it yourself.")


def load_pretrained_state(model: str, tag: str = "IMAGENET1K_V1", file: str | None = None,
                          verify: bool = True) -> tuple[dict, str]:
    """State dict of ImageNet weights for ``model`` and a description of where it came from."""
    if file:
        path = checkpoint_file(file)  # a run folder: its best.pt
        if not path.exists():
            raise WeightsError(f"weights file {path} not found")
        if verify:
            check_hash(path)
        if kind := exported_model(path):
            raise WeightsError(f"weights file {path} is {kind} (`retinopathy export` writes these), not weights: "
                               "pass the run's checkpoints/best.pt, or a state dict saved by torch.save")
        try:
            state = safe_load(path, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - torch.load raises many kinds on a file that is not weights
            raise WeightsError(f"weights file {path} cannot be read ({unreadable(path, e)}); pass a state dict or "
                               "a training checkpoint saved by torch.save") from None
        if not isinstance(state, dict):
            raise WeightsError(f"weights file {path} holds a {type(state).__name__}, not a state dict or checkpoint")
        # a training checkpoint (retinopathy's, torchvision references'): the averaged weights when it kept
        # them (--model-ema; the references' AveragedModel adds "module." and n_averaged), as it evaluated them;
        # timm's and Lightning's keep theirs in "state_dict", and a DDP-wrapped model's keys start "module."
        ema = {k: v for k, v in (state.get("model_ema") or {}).items() if k != "n_averaged"}
        state = ema or next((state[k] for k in ("model", "state_dict") if isinstance(state.get(k), dict)), state)
        return (_current_names(model, {k.removeprefix("module.").removeprefix("net."): v  # -> torchvision's
                                       for k, v in state.items()}), f"file {path}")
    weights = weights_enum(model, tag)
    path = cache_path(weights)
    if path.exists() and verify:
        check_hash(path)
    try:
        state = weights.get_state_dict(progress=True, check_hash=verify, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a download error, or torch.load's many kinds on a damaged file
        if path.exists():
            raise WeightsError(f"cached ImageNet weights {path} cannot be read ({type(e).__name__}: "
                               f"{str(e)[:200]}); delete the file and fetch it again") from None
        if not isinstance(e, (URLError, OSError, RuntimeError)):
            raise
        raise WeightsUnavailable(
            f"ImageNet weights {type(weights).__name__}.{weights.name} are not cached and could not be "
            f"downloaded ({type(e).__name__}: {e}).\n  expected file: {path.name}\n  cache folder: {path.parent}"
            f" (set TORCH_HOME to move it)\n  download address: {weights.url}\n"
            "Either copy the file there from a machine with network access, pass --weights FILE, "
            "or train from scratch with --no-pretrained (in Python: build_model(..., weights_file=FILE) or "
            "pretrained=False).") from None
    return _current_names(model, state), f"torchvision {type(weights).__name__}.{weights.name} ({path.name})"


_DENSENET_OLD = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
                           r"running_var))$")


def _current_names(model: str, state: dict) -> dict:
    """DenseNet's published ImageNet files name their layers ``norm.1`` where the model has ``norm1``: renamed as
    torchvision's own loader (``densenet._load_state_dict``) renames them."""
    if not model.startswith("densenet"):
        return state
    return {_DENSENET_OLD.sub(r"\1\2", k): v for k, v in state.items()}
