"""``retinopathy export CHECKPOINT --format onnx|pt2|torchscript --out FILE``: a standalone grader.

The exported model takes a normalised float32 batch ``(N, 3, S, S)`` (RGB, any N) named ``input`` and
returns the raw model outputs ``(N, K)`` named ``logits`` (5 class logits; 1 score for ``regression``;
4 cumulative logits for ``ordinal``, then 5 class logits for ``ordinal+ce``). What it expects is written
beside it in ``FILE.json`` (e.g. ``grader.onnx.json``): the preprocessing (preset, size, mean, std;
geometry of the photograph and ``(x / 255 - mean) / std`` happen outside the model), objective, thresholds
(and the eye blending they were tuned with), class names and the parity result.

ONNX uses the ``torch.export`` (dynamo) exporter with a dynamic batch dimension, falling back to the
TorchScript-based exporter if that fails; ``pt2`` is PyTorch's own ``torch.export`` program with a dynamic batch
(``torch.export.save``; ``torch.export.load(FILE).module()`` runs it, what PyTorch now recommends in place of
TorchScript); TorchScript uses ``torch.jit.trace`` (deprecated by PyTorch but still the format LibTorch/C++
loads). Before anything is written, ONNX Runtime (or the reloaded program or TorchScript module) is compared with
PyTorch on ``--check-images`` (default: up to 8 photographs found under
the folder the model was trained on, its ``--images`` if it had one; four synthetic renders when it is gone or
holds none) at batch sizes 1 and 3; a largest absolute logit difference above ``--tolerance`` (1e-3) fails the
export (exit status 1, nothing written).
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch

from ..atomic import naming, out_of_room, write_json
from ..cli.common import at_least, non_negative, show_defaults
from ..data import DataError, ImageError, Normalize, Problem, build_transform
from ..data.synth import render_fundus
from ..data.images import FOV_SLACK, image_files
from ..data.transforms import geometry
from ..errors import RetinopathyError
from ..models.restore import restore
from ..outputs import check_output_file
from ..reporting.model_card import CARD, INTENDED_USE, learnt_from_drawings
from ..training.checkpoint import checkpoint_file, refuse_replacing_run
from .predict import SAME_OUTPUTS, collect_items, single_eye

FORMATS = {"onnx": (".onnx",), "pt2": (".pt2",), "torchscript": (".pt", ".pth")}  # and the file suffixes they take
RUNTIMES = {"onnx": "ONNX Runtime", "pt2": "torch.export", "torchscript": "TorchScript"}
EXPORT_FORMAT, EXPORT_VERSION = "retinopathy-export", 2  # 2: thresholds only for their decision
MAX_CHECK_IMAGES = 8
DECODE = ("RGB; a JPEG at reduced scale (Pillow's Image.draft) keeping both sides at or above size, and for the "
          "fov and graham presets decoded again at a finer scale when the round field of view is narrower than "
          f"{FOV_SLACK} x size at that one, as retinopathy.data.Preprocessing.open does; then the steps "
          "(retinopathy.data.transforms.geometry) on that 8-bit PIL image, before it becomes a tensor (resizing a "
          "float tensor instead moves outputs by up to ~1e-3)")


class ExportError(RetinopathyError, RuntimeError):
    """The model could not be exported, or the export does not reproduce PyTorch."""

    exit_code = 1


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("retinopathy export", add_help=add_help,
                                description="Export a checkpoint to ONNX, a torch.export program (pt2) or TorchScript, "
                                            "checked against PyTorch.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="best.pt / last.pt, or a run folder")
    p.add_argument("--format", choices=list(FORMATS), default="onnx",
                   help="onnx (ONNX Runtime and others), pt2 (torch.export.load(FILE).module() in PyTorch) or "
                        "torchscript (LibTorch; deprecated by PyTorch)")
    p.add_argument("--out", required=True, help="model file to write (e.g. grader.onnx, grader.pt2, grader.ts.pt); "
                                                "its metadata goes to FILE.json")
    p.add_argument("--check-images", nargs="+", metavar="PATH",
                   help=f"images, folders or datasets for the parity check (the first {MAX_CHECK_IMAGES} "
                        "readable ones; default: photographs found under the folder the model was trained on, its "
                        "--images if any, or synthetic renders when it is gone or holds none)")
    p.add_argument("--tolerance", type=non_negative, default=1e-3, help="largest allowed |logit difference|")
    p.add_argument("--opset", type=at_least(7), default=None,
                   help="ONNX opset, 7 or more (what ONNX Runtime runs; default: the exporter's); --format onnx only")
    return show_defaults(p)


def metadata_path(model_file: str | Path) -> Path:
    """``grader.onnx`` -> ``grader.onnx.json``."""
    model_file = Path(model_file)
    return model_file.with_name(model_file.name + ".json")


# ---------------------------------------------------------------------------------------------- inputs
def training_photographs(ckpt) -> list[Path]:
    """A few image files of the folder the checkpoint was trained on (its ``--images``, when it had one), when it is
    still here (none otherwise, or when a folder there cannot be listed, such as a drive's lost+found: the check
    then renders its own)."""
    config = ckpt.get("config") or {}
    data = config.get("images") or config.get("data")
    if not data or not Path(data).is_dir():
        return []
    try:
        return image_files(Path(data))[:2 * MAX_CHECK_IMAGES]  # room for a few unreadable ones
    except ImageError:
        return []


def check_batch(prep, paths=None, or_renders: bool = False) -> tuple[torch.Tensor, str]:
    """Normalised float images for the parity check, and what they are: synthetic renders without ``paths``, or
    (``or_renders``: paths not chosen by the user) when none of them is readable."""
    transform = build_transform(prep, train=False, uint8=True)
    images: list = []
    if paths:
        used = []
        for item in collect_items(paths):
            if item.error:
                continue
            try:
                images.append(transform(prep.open(item.path)))
            except ImageError as e:
                print(f"warning: parity check skips {e}", file=sys.stderr)
                continue
            used.append(item.path)
            if len(images) == MAX_CHECK_IMAGES:
                break
        if not images and not or_renders:
            raise DataError([Problem("empty", " ".join(map(str, paths)), None,
                                     "no readable image for the parity check")])
        where = sorted({str(Path(u).parent) for u in used})
        what = f"{len(images)} image(s) from {', '.join(where)}"
    if not images:
        rng = np.random.default_rng(0)
        images = [transform(render_fundus(rng, prep.size, g, eye)) for g, eye in
                  ((0, "left"), (2, "right"), (3, "left"), (4, "right"))]
        what = ("4 synthetic renders (retinopathy.data.synth.render_fundus; no readable photographs found where the "
                "model was trained)")
    return Normalize(prep.mean, prep.std)(torch.stack(images)), what


def parity_batches(x: torch.Tensor) -> list[torch.Tensor]:
    """Batches of 1 and of 3 (cycling the images when there are fewer) covering every image."""
    cycled = x[torch.arange(max(3, len(x))) % len(x)]
    return [x[:1]] + [cycled[i:i + 3] for i in range(0, len(cycled) - 2, 3)] + (
        [cycled[-3:]] if len(cycled) % 3 else [])


# ---------------------------------------------------------------------------------------------- export
def export_onnx(model, example: torch.Tensor, path: Path, opset: int | None = None) -> tuple[str, int]:
    """Write ``model`` as one ONNX file with a dynamic batch, in ``opset`` when given; returns the exporter that
    worked and the opset the file declares. The dynamo exporter writes opset 18 or later (asked for less, it
    tries to convert, prints the failure and keeps 18): then the TorchScript-based exporter writes it."""
    common = dict(input_names=["input"], output_names=["logits"], opset_version=opset)
    large = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.8e9  # ONNX protobuf limit
    before = set(path.parent.iterdir())
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # a failed opset conversion's traceback; the result says it
            torch.onnx.export(model, (example,), path, dynamo=True, external_data=large, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), **common)
        written = onnx_opset(path)
        if opset is None or written == opset:
            return "torch.export (dynamo)", written
        print(f"note: the dynamo ONNX exporter writes opset {written}, not {opset}; the TorchScript-based exporter "
              "writes it", file=sys.stderr)
        first = f"it wrote opset {written}"
    except Exception as e:  # noqa: BLE001 - any exporter failure: try the other exporter
        if out_of_room(e):  # the other exporter would fail alike
            _remove_new(path, before)
            raise
        first = f"{type(e).__name__}: {str(e)[:200]}"
        print(f"warning: the dynamo ONNX exporter failed ({first}); trying the TorchScript-based exporter",
              file=sys.stderr)
    _remove_new(path, before)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (example,), path, dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **common)
    except Exception as second:  # noqa: BLE001
        raise ExportError(f"ONNX export failed with both exporters: {first}; {second}") from None
    written = onnx_opset(path)
    if opset is not None and written != opset:
        raise ExportError(f"--opset {opset}: neither exporter wrote it (the TorchScript-based one wrote "
                          f"{written}); leave --opset out, or choose another")
    return "TorchScript-based (dynamo=False)", written


def _remove_new(path: Path, before: set) -> None:
    """What an exporter wrote for ``path`` (the file, its external data) that was not in its folder ``before``."""
    for f in set(path.parent.iterdir()) - before:
        if f.name.startswith(path.name):
            shutil.rmtree(f) if f.is_dir() and not f.is_symlink() else f.unlink()


def onnx_opset(path: Path) -> int:
    """The default-domain opset an ONNX file declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def export_pt2(model, example: torch.Tensor, path: Path) -> str:
    """Write ``model`` as a ``torch.export`` program whose batch size is free."""
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    with open(path, "wb") as f:  # a Python file: a failed write is an OSError (:func:`naming` names it)
        torch.export.save(program, f)
    return "torch.export"


def export_torchscript(model, example: torch.Tensor, path: Path) -> str:
    with warnings.catch_warnings():  # torch.jit is deprecated upstream; it is still what LibTorch loads
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example)
        with open(path, "wb") as f:  # a Python file: a failed write is an OSError (:func:`naming` names it)
            torch.jit.save(traced, f)
    return "torch.jit.trace"


def load_runner(path: Path, fmt: str):
    """A function float batch -> numpy outputs, backed by the exported file."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(["logits"], {"input": x.numpy()})[0]
    if fmt == "pt2":
        program = torch.export.load(str(path)).module()
        return lambda x: program(x).detach().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()
    return lambda x: module(x).detach().numpy()


def parity(model, runner, x: torch.Tensor) -> tuple[float, float]:
    """(largest absolute difference between PyTorch and the export over :func:`parity_batches`, largest spread
    of one PyTorch output across the images: near 0, the model ignores its input and the check proves little)."""
    worst, outputs = 0.0, []
    with torch.no_grad():
        for batch in parity_batches(x):
            ref = model(batch).float().numpy()
            got = runner(batch)
            if got.shape != ref.shape:
                raise ExportError(f"the export returned shape {got.shape} for a batch of {len(batch)}; "
                                  f"PyTorch gives {ref.shape}")
            if not np.isfinite(ref).all():
                raise ExportError("the model's outputs on the check images are not finite (NaN or inf): its weights "
                                  "are broken (a diverged run); use another checkpoint. Nothing was exported")
            diff = np.abs(got - ref)
            worst = max(worst, float(diff.max()) if np.isfinite(diff).all() else math.inf)  # NaN: max() said 0
            outputs.append(ref)
    outputs = np.concatenate(outputs)
    return worst, float((outputs.max(0) - outputs.min(0)).max())


def main(args) -> dict:
    example = f"grader{FORMATS[args.format][0]}"
    check_output_file(args.out, "--out", example)  # before the work
    other = next((f for f, suffixes in FORMATS.items() if Path(args.out).suffix.lower() in suffixes), args.format)
    if other != args.format:
        raise RetinopathyError(f"--out {args.out}: its name says {other}, and this exports {args.format}; name it "
                               f"like {example}, or pass --format {other}")
    model, objective, prep, ckpt = restore(Path(args.checkpoint))
    single_eye(ckpt, args.checkpoint)
    refuse_replacing_run(args.out, args.checkpoint, args.check_images or [])
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if args.format == "onnx" and not find_spec(m)]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}: pip install 'retinopathy[export]'")
    model = model.cpu().float().eval()
    x, what = check_batch(prep, args.check_images or training_photographs(ckpt), or_renders=not args.check_images)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        target = work / out.name
        example = x[:2] if len(x) >= 2 else x.repeat(2, 1, 1, 1)  # batch > 1: the batch must not specialise
        with naming(out):
            if args.format == "onnx":
                exporter, opset = export_onnx(model, example, target, args.opset)
            else:
                writer = export_pt2 if args.format == "pt2" else export_torchscript
                exporter, opset = writer(model, example, target), None
        diff, spread = parity(model, load_runner(target, args.format), x)
        print(f"parity ({RUNTIMES[args.format]} vs PyTorch) on {what}, "
              f"batch sizes 1 and 3: max |logit difference| = {diff:.2e} (tolerance {args.tolerance:g})")
        if len(x) > 1 and spread < SAME_OUTPUTS:
            print(f"warning: the model gives the same outputs for all {len(x)} check images (spread {spread:.1e}): "
                  "it does not respond to its input, and the parity check proves little; check the training run",
                  file=sys.stderr)
        if not diff <= args.tolerance:  # NaN fails too
            raise ExportError(f"parity check failed: max |logit difference| {diff:.3g} > {args.tolerance:g}; "
                              f"{out} was not written")
        info, steps = ckpt["model_info"], geometry(prep)
        own_steps = {type(t).__name__: re.sub(r":\w+:`([^`]+)`", r"\1", " ".join(inspect.getdoc(t).split()))
                     for t in steps if type(t).__module__.startswith("retinopathy.")}  # not torchvision's
        meta = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "model_file": out.name,
                "model_format": args.format, "exporter": exporter,
                **({"opset": opset} if opset is not None else {}),
                "input": {"name": "input", "shape": ["batch", 3, prep.size, prep.size], "dtype": "float32",
                          "layout": "NCHW, RGB", "normalisation": "(pixel / 255 - mean) / std"},
                "output": {"name": "logits", "shape": ["batch", objective.outputs], **objective.describe()},
                "preprocessing": {**prep.to_dict(), "decode": DECODE, "steps": [repr(t) for t in steps],
                                  "definitions": own_steps},
                "objective": objective.name,
                "decision": objective.decision,
                **({"thresholds": list(objective.thresholds)} if objective.decision == "thresholds" else {}),
                "class_names": list(info.get("class_names", [])),
                "blend_eyes": {"weight": info.get("blend_eyes", 0.0),
                               "meaning": f"before the {objective.decision}, each eye's score (and probabilities) "
                                          "= (1 - weight) * its own + weight * the same patient's other eye's"},
                "arch": info["arch"], "head": info["head"], "weights_origin": info.get("weights_origin"),
                "checkpoint": str(Path(args.checkpoint).resolve()), "epoch": ckpt.get("epoch"),
                "intended_use": " ".join(INTENDED_USE.split("\n\n", 1)[1].split()),  # the model card's
                "trained_on_synthetic_drawings": learnt_from_drawings(args.checkpoint, ckpt),
                "model_card": str(card) if (card := checkpoint_file(args.checkpoint).parent / CARD).is_file() else None,
                "parity": {"max_abs_diff": diff, "tolerance": args.tolerance, "images": what,
                           "batch_sizes": [1, 3]}}
        card = metadata_path(work / out.name)  # NAME.json: never the model's own name (--out meta.json)
        with naming(metadata_path(out)):  # not the work folder's copy
            write_json(card, meta)
        for f in work.iterdir():  # the model (and any external data), then its metadata
            if f != card:
                os.replace(f, out.parent / f.name)
        os.replace(card, metadata_path(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"exported {info['arch']} ({objective.name}, {exporter}) to {out}; preprocessing in {metadata_path(out)}")
    return meta


def cli(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.opset is not None and args.format != "onnx":
        parser.error(f"--opset is for --format onnx; leave it out for --format {args.format}")
    main(args)
    return 0
