"""``retinopathy predict CHECKPOINT INPUT... --out predictions.csv``: grade photographs with a trained grader.

INPUT is any mix of image files, folders of images (searched recursively) and datasets (a folder in a
supported format, or its labels CSV); images from a dataset carry their true grade. Each image goes through
exactly the code path of training and ``evaluate`` (``open_image`` + ``build_transform(prep, train=False,
uint8=True)`` with the checkpoint's preprocessing, normalisation on the device), so a prediction here equals
``evaluate``'s for the same image.

The CSV has one row per image: ``path, image, true_grade`` (blank when unknown), ``predicted_grade``,
``prob_0..prob_4``, ``referable`` (1 when the predicted grade is 2 or more), ``p_referable`` (P(2)+P(3)+P(4)),
``score`` (expected grade, or the regression/ordinal score), ``heatmap`` (with ``--cam``) and ``error``: an
image that cannot be read keeps its row with the reason there and blank predictions; the others are graded.
With ``--tta`` the probabilities (and scores) are averaged over the identity, horizontal, vertical and both
flips; the grade then follows the checkpoint's decision: the most probable grade, or the mean score cut at the
thresholds.
With ``--blend-eyes W`` (by default the checkpoint's setting, for which its thresholds were tuned) each eye's
probabilities and score are mixed with those of the same patient's other eye among the graded images
(``<patient>_left``/``_right``, or the dataset's patient column; within one dataset or input folder, whose
sub-folders pair unless a name recurs in several: ``siteA/7_left``, ``siteB/7_left``; image files given one by
one pair within their folder) before grading,
as ``evaluate`` does. ``--split val|test`` takes each dataset's split from the run (as ``evaluate`` does).
``--cam DIR`` writes ``DIR/<image>.png`` (a repeated name gets ``-2``, ``-3`` ...; the ``heatmap`` column names
each file): the Grad-CAM of the predicted grade (see ``explain.py``) on the
unflipped preprocessed square, at the model's input size.
"""
from __future__ import annotations

import argparse
import csv
import errno
import os
import re
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..atomic import replacing
from ..cli.common import (add_amp_argument, add_blend_argument, add_data_arguments, add_device_argument, at_least,
                          blend_setting, catalog_options, show_defaults)
from ..data import DataError, ImageError, Normalize, Problem, build_transform, load_catalog
from ..data.check import unlisted_images
from ..data.dataset import listed_here
from ..data.formats import GRADE_NAMES, detect_format, eye_of, patient_of, without_extension
from ..data.images import (IMAGE_EXTENSIONS, NOT_UTF8, brightest, colourless, doubt, doubt_fields, doubt_note,
                           image_files, not_utf8)
from ..data.prepare import copy_warnings, prepared_from
from ..data.problems import refuse_misaligned
from ..data.splits import seen_counts, select
from ..data.synth import is_synthetic
from ..errors import DataWarning, RetinopathyError
from ..evaluation.metrics import GRADES, REFERABLE, majority_accuracy, one_grade, seen_images, summary
from ..models.restore import restore
from ..outputs import check_output_file, check_writable
from ..progress import progress_bar
from ..reporting.model_card import DRAWINGS, learnt_from_drawings
from ..training.checkpoint import CheckpointError, refuse_replacing_run, run_folder
from ..training.engine import NON_FINITE, autocast, make_loader, pick_device, to_device, to_engine
from ..workers import usable_cores

FLIPS = ((), (3,), (2,), (2, 3))  # identity, horizontal, vertical, both (dims of an NCHW batch)


@dataclass
class Item:
    """One photograph to grade: its file (None when a labelled image is missing), name and known grade."""

    path: str | None
    image: str
    label: int | None = None
    error: str = ""
    patient: str | None = None  # "<dataset or folder>|<patient>": eyes pair within one, not across them
    labels: tuple = ()  # its dataset's labels files


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("retinopathy predict", add_help=add_help,
                                description="Grade fundus photographs with a trained checkpoint; --cam explains "
                                            "each grade with a Grad-CAM heatmap.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="best.pt / last.pt, or a run folder")
    p.add_argument("inputs", metavar="INPUT", nargs="+",
                   help="image files, folders of images (recursive), or datasets (folder or labels CSV)")
    p.add_argument("--out", default="predictions.csv", help="CSV to write (default predictions.csv)")
    p.add_argument("--tta", action="store_true", help="average probabilities over the four flips")
    add_blend_argument(p, None)
    p.add_argument("--cam", metavar="DIR", help="write a Grad-CAM overlay PNG per image into DIR")
    add_data_arguments(p, split_default="all", name="INPUT")
    p.add_argument("-b", "--batch-size", type=at_least(1), default=32)
    p.add_argument("-j", "--workers", type=at_least(0), default=None,
                   help="DataLoader workers (default: CPU cores, at most 8)")
    add_device_argument(p)
    add_amp_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return show_defaults(p)


# ---------------------------------------------------------------------------------------------- inputs
def warn(message: str, depth: int = 0) -> None:
    """What to know about the inputs or the results, as a :class:`DataWarning` (the CLI prints ``warning: ...``;
    a program calling these functions can filter or record it), attributed to the caller of the public function,
    ``depth`` calls above the one that warns."""
    warnings.warn(message, DataWarning, stacklevel=3 + depth)


def _dataset_items(data: Path, opts: dict, split: str, alone: bool = True) -> list[Item]:
    """The items of one dataset; ``alone``: the only input, so that a dataset with no usable row is the error (else
    a warning, and the other inputs are graded)."""
    catalog = load_catalog(data, **opts)
    refuse_misaligned(catalog.problems)
    if not catalog.samples:  # every row refused (a --label-col the header lacks...): said as train says it
        unusable = DataError(catalog.problems, hint="Fix the labels file, or the options that read it: no row of it "
                             "lists a usable image. (Photographs without grades are graded as files: pass them, or "
                             "their folder, rather than a list of them.)")
        if alone:
            raise unusable
        warn(f"{unusable} (not graded)", depth=1)
        return []
    if not any(s.path for s in catalog.samples):
        warn(listed_here(catalog, 0).strip(), depth=1)
    for p in catalog.problems:
        if p.kind != "missing-image":  # missing images get a row of their own below
            warn(str(p), depth=1)
    # rows refused, and images whose rows disagree on the grade (1_left and 1_left.jpeg: one photograph)
    kept = {without_extension(s.image) for s in catalog.samples}
    dropped = {without_extension(p.image) if p.image else (p.file, p.line) for p in catalog.problems
               if p.kind in ("bad-label", "bad-row", "duplicate") and p.line is not None} - kept
    if dropped:
        warn(f"{len(dropped)} photograph(s) listed in {', '.join(map(str, catalog.labels))} are left out (their "
             "rows are named above); fix those rows to grade them here, or pass the photographs as files", depth=1)
    if split == "all" and (unlisted := unlisted_images(catalog)):
        warn(f"{len(unlisted)} image(s) in {catalog.image_root} are not in {', '.join(map(str, catalog.labels))} "
             f"and are not graded (e.g. {unlisted[0]}); pass them as files to grade them", depth=1)
    labels = tuple(map(str, catalog.labels))
    missing = f"image not found in {catalog.image_root or catalog.root}"
    return [Item(s.path, s.image, s.label, "" if s.path else missing, f"{os.path.realpath(data)}|{s.patient}", labels)
            for s in select(catalog.samples, split)]


def _is_dataset(folder: Path, opts: dict) -> bool:
    if opts.get("format") or opts.get("labels"):
        return True
    try:
        detect_format(folder)
        return True
    except DataError:
        return False


def collect_items(inputs, split: str = "all", options_for=None, **opts) -> list[Item]:
    """Items for every input: image files, folders (recursive) and datasets; ``opts`` as for ``load_catalog``,
    or ``options_for(folder, labels file or None)`` giving each dataset's. A ``split`` other than all needs
    datasets."""
    inputs, items = list(inputs), []
    for raw in inputs:
        path = Path(raw)
        dataset = path.is_file() and path.suffix.lower() == ".csv" or path.is_dir() and _is_dataset(path, opts)
        if not dataset and split != "all" and path.exists():
            raise DataError([Problem("no-split", str(path), None, f"--split {split} needs a dataset (labels CSV or "
                                     "a labelled folder); this input has no splits. Pass --split all to grade it")])
        if dataset:
            folder, labels = (path.parent, path) if path.is_file() else (path, None)
            data_opts = options_for(folder, labels) if options_for else {**opts, "labels": opts.get("labels") or labels}
            items += _dataset_items(folder, data_opts, split, alone=len(inputs) == 1)
        elif path.is_file():
            patient = patient_of(f"{path.parent.name}/{path.stem}")  # p7/left.jpeg: p7
            items.append(Item(str(path), path.stem, patient=f"{os.path.realpath(path.parent)}|{patient}"))
        elif path.is_dir():
            files = image_files(path)
            if not files:
                raise DataError([Problem("empty", str(path), None, "no images here (searched recursively for "
                                         f"{', '.join(IMAGE_EXTENSIONS)})")])
            names = {f: f.relative_to(path).with_suffix("").as_posix() for f in files}
            patients = {f: patient_of(names[f]) for f in files}
            by_patient: dict[str, list[Path]] = {}
            for f in files:
                by_patient.setdefault(patients[f], []).append(f)
            for f in files:  # eyes pair across sub-folders (left/7_left, right/7_right; left/7, right/7) unless
                group = by_patient[patients[f]]  # an eye recurs (siteA/7_left, siteB/7_left): then within each
                clash = len({eye_of(names[g]) for g in group}) < len(group)  # folder
                folder = os.path.realpath(f.parent if clash else path)  # however the folder was written
                items.append(Item(str(f), f.stem, patient=f"{folder}|{patients[f]}"))
        else:
            raise DataError([Problem("missing-file", str(path), None, "no such file or folder")])
    if unnamed := [Problem("bad-name", shown, None, NOT_UTF8) for i in items if i.path and (shown := not_utf8(i.path))]:
        raise DataError(unnamed)
    return _once(items)


def _once(items: list[Item]) -> list[Item]:
    """Each photograph once, whatever path led to it (a file given twice, or also inside a folder given): a copy
    would count as a third eye of its patient in the eye blending. It is graded as a dataset lists it (its grade,
    name and patient), else under the first path that is no link (its own name, for its eye and heatmap), in the
    place of the first path that led to it."""
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        if item.path:  # a link that leads nowhere is its own entry (each gets its error row)
            key = os.path.realpath(item.path) if os.path.exists(item.path) else os.path.abspath(item.path)
            groups.setdefault(key, []).append(i)
    kept, again = list(items), []
    for paths in groups.values():
        listed = [i for i in paths if items[i].labels]
        own = [i for i in paths if os.path.realpath(items[i].path) == os.path.abspath(items[i].path)]
        chosen = (listed or own or paths)[0]
        kept[paths[0]] = items[chosen]
        for i in paths[1:]:
            kept[i] = None
        again += [_listed_again(items[i], items[chosen]) for i in paths if i != chosen]
    if again:
        warn(f"{len(again)} path(s) lead to a photograph already listed; each is graded once: "
             f"{', '.join(again[:3])}{' ...' if len(again) > 3 else ''}", depth=1)
    return [item for item in kept if item is not None]


def _listed_again(item: Item, kept: Item) -> str:
    """How the warning names a path left out for ``kept``: the path graded instead, and a grade it loses."""
    where = f" in {', '.join(map(str, item.labels))}" if item.labels else ""
    said = f"{item.path} (graded as {kept.path})" if item.path != kept.path else f"{item.path} (listed again{where})"
    if None not in (item.label, kept.label) and item.label != kept.label:
        said += f" [its grade there, {item.label}, differs from the {kept.label} kept]"
    return said


class ImageItems(Dataset):
    """``(uint8 tensor or None, index, error, doubt)`` per item, ``doubt`` being ``(kind, (width, height), level)``
    (:func:`~retinopathy.data.images.doubt`) or None: an unreadable image is reported, not raised."""

    def __init__(self, items: list[Item], prep):
        self.items, self.prep = items, prep
        self.transform = build_transform(prep, train=False, uint8=True)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        if item.error:
            return None, index, item.error, None
        try:
            image = self.prep.open(item.path)
        except ImageError as e:
            return None, index, e.reason, None
        level = brightest(image)
        kind = doubt(level, image.size, self.prep.size, colourless(image))
        return self.transform(image), index, "", (kind, image.size, level) if kind else None


def collate(batch):
    """(stacked good images or None, their indices, [(index, reason)] of the failed ones, [(index, doubt)] of
    those whose grades are doubtful)."""
    good = [(x, i) for x, i, err, _ in batch if not err]
    images = torch.stack([x for x, _ in good]) if good else None
    return (images, [i for _, i in good], [(i, err) for _, i, err, _ in batch if err],
            [(i, why) for _, i, _, why in batch if why])


DOUBTS = {"black": "are nearly black (e.g. {name}): no retina to grade, so their grades mean nothing; check those "
                   "photographs (a 10-bit image stored in a 16-bit file is read on the 16-bit scale, so nearly black)",
          "dark": "are very dark (e.g. {name}: its brightest 1 % reaches {level} of 255; photographs reach 87 and up): "
                  "under-exposed, or 12-bit values stored in a 16-bit file, read on the 16-bit scale; their "
                  "grades are doubtful",
          "small": "are smaller than half the model's input (e.g. {name}: {size} px, enlarged to {input} px): too "
                   "little detail for their grades to mean much",
          "narrow": "are far from the shape of a photograph of the eye (e.g. {name}: its sides {ratio}): {seen}",
          "grey": "have no colour (e.g. {name}): grey photographs (as red-free ones often are), which a model of "
                  "colour photographs has not seen; their grades are doubtful"}
SEEN = {"lab": "the preprocessing keeps a square of them, so much of each is not seen",  # by preset
        "fov": "the field-of-view crop fits one circle around all of each, so each part is seen smaller"}


# ---------------------------------------------------------------------------------------------- running
@torch.no_grad()
def predict_batch(model, objective, x: torch.Tensor, tta: bool = False, amp: str = "none"):
    """(probabilities (N,5), scores (N,), grades (N,)) for a normalised batch ``x``."""
    probs, scores = 0, 0
    flips = FLIPS if tta else FLIPS[:1]
    for dims in flips:
        with autocast(x.device, amp):
            out = model(x.flip(dims) if dims else x).float()
        probs = probs + objective.probabilities(out)
        scores = scores + objective.score(out)
    probs, scores = probs / len(flips), scores / len(flips)
    return probs, scores, objective.grades_of(probs, scores)


def _heatmap_names(items: list[Item]) -> list[str]:
    """A unique, file-system-safe PNG name per item (``<image>.png``, then ``<image>-2.png`` ... whichever is
    free: an image may itself be called ``x-2``)."""
    used: set[str] = set()
    names = []
    for item in items:
        stem = re.sub(r"[^\w.-]+", "_", without_extension(Path(item.image).name)) or "image"
        stem = stem.encode()[:200].decode(errors="ignore")  # room for "-2.png" and a temporary suffix in 255 bytes
        name, k = f"{stem}.png", 1
        while name.lower() in used:  # lower: case-insensitive file systems
            k += 1
            name = f"{stem}-{k}.png"
        used.add(name.lower())
        names.append(name)
    return names


SAME_OUTPUTS = 1e-6  # log-probabilities and scores that vary less than this over the images: a model blind to them


def run(model, objective, prep, items: list[Item], *, batch_size=32, workers=0, device="auto", amp="none",
        tta=False, blend=0.0, tuned_blend=0.0, cam_dir: Path | None = None, progress=True) -> dict:
    """Grade ``items``; returns arrays ``probs`` (N,5, NaN for failures), ``scores``, ``grades`` (-1 for
    failures), ``errors`` (reason or ""), ``warnings`` (why a grade is doubtful, or "": ``doubt_note``), and
    ``heatmaps`` (PNG paths) when ``cam_dir`` is given.
    ``blend``: the other eye's share (:func:`~retinopathy.models.objectives.blend_eyes`; ``tuned_blend``, the
    share the model was tuned with: an eye graded alone is warned about only when it is not 0); the heatmaps
    explain the final grade (classification: the photograph's own logit of it) or the photograph's own score."""
    device = pick_device(device)
    amp, channels_last = to_engine(model, device, amp)
    normalize = Normalize(prep.mean, prep.std).to(device)
    loader = make_loader(ImageItems(items, prep), batch_size, workers, device, sampler=None, deterministic=True,
                         seed=0, collate_fn=collate)
    cam = grad_cam(model, objective, prep) if cam_dir is not None else None
    n = len(items)
    res = {"probs": np.full((n, len(GRADES)), np.nan), "scores": np.full(n, np.nan), "grades": np.full(n, -1),
           "errors": [item.error for item in items], "heatmaps": [""] * n, "warnings": [""] * n}
    doubtful: dict[str, list] = {kind: [] for kind in DOUBTS}
    for images, idx, failed, doubts in progress_bar(loader, enabled=progress, desc="predict", unit="batch",
                                                    leave=False):
        for i, (kind, (w, h), level) in doubts:
            doubtful[kind].append({"name": items[i].path or items[i].image, **doubt_fields(level, (w, h), prep.size),
                                   "seen": SEEN["lab" if prep.preset == "lab" else "fov"]})
            res["warnings"][i] = doubt_note(kind, level, (w, h), prep.size)
        for i, reason in failed:
            res["errors"][i] = reason
        if images is None:
            continue
        probs, scores, grades = predict_batch(model, objective, to_device(images, device, normalize, channels_last),
                                              tta, amp)
        probs, scores, grades = probs.float().cpu().numpy(), scores.float().cpu().numpy(), grades.cpu().numpy()
        broken = ~(np.isfinite(probs).all(1) & np.isfinite(scores))  # not a grade: NaN compares as no DR
        grades[broken] = -1
        for i in np.asarray(idx)[broken]:
            res["errors"][i] = f"the model's outputs are not finite (NaN or inf): {NON_FINITE}"
        res["probs"][idx], res["scores"][idx], res["grades"][idx] = probs, scores, grades
    for kind, found in doubtful.items():
        if found:
            warn(f"{len(found)} image(s) " + DOUBTS[kind].format(**found[0]))
    graded = np.flatnonzero(res["grades"] >= 0)
    log_probs = np.log(np.maximum(res["probs"][graded], np.finfo(np.float32).tiny))  # a confident model's probs
    spread = max(np.ptp(log_probs, axis=0).max(), np.ptp(res["scores"][graded])) if len(graded) else 0.0  # saturate
    ignores_input = len(graded) > 1 and spread < SAME_OUTPUTS
    if ignores_input:
        warn(f"the model gives the same outputs for all {len(graded)} images (spread {spread:.1e}): it does not "
             "respond to its input, so its grades say nothing of these photographs"
             + (" and its heatmaps are left blank" if cam is not None else "") + "; check the training run")
    if blend and len(graded):
        patients = [items[i].patient or patient_of(items[i].image) for i in graded]
        res["probs"][graded], res["scores"][graded], res["grades"][graded] = objective.blended(
            res["probs"][graded], res["scores"][graded], patients, blend)
        eyes = Counter(patients)
        alone = [items[i].image for i, p in zip(graded, patients) if eyes[p] == 1]
        if alone and tuned_blend:
            tuned = ("against thresholds tuned on scores mixed with the other eye" if objective.decision ==
                     "thresholds" else "by a model selected on probabilities mixed with the other eye")
            warn(f"{len(alone)} image(s) without the patient's other eye (e.g. {alone[0]}) are graded "
                 f"alone, {tuned} (--blend-eyes {tuned_blend:g}); give both eyes (<patient>_left/_right) for the "
                 "grades the model was tuned for")
    if cam is not None and len(graded):
        write_heatmaps(cam, items, res, loader, cam_dir, device, normalize, channels_last, progress, ignores_input,
                       cuts=objective.thresholds if objective.decision == "thresholds" else None, tta=tta)
    return res


def grad_cam(model, objective, prep):
    """The Grad-CAM of :mod:`.explain` for ``model`` (before any work: captum is an optional dependency)."""
    try:
        from .explain import GradCam
    except ImportError as e:
        raise RetinopathyError(f"--cam needs captum ({e}): pip install 'retinopathy[explain]'") from None
    return GradCam(model, objective, image_size=prep.size)


def write_heatmaps(cam, items, res, loader, cam_dir: Path, device, normalize, channels_last, progress,
                   ignores_input: bool = False, cuts: list[float] | None = None, tta: bool = False) -> None:
    """A second pass, once the grades are final (after eye blending): a Grad-CAM overlay PNG per graded image,
    of the grade in its row (classification) or of the score (regression, ordinal); blank for a model that
    ``ignores_input`` (the same outputs for every image), whose Grad-CAM would still paint its padding. The
    caption names the predicted grade, the known one, the thresholds (``cuts``) that cut a score into grades, the
    row's warning, and (``tta``) that the grade averages flips while the heatmap explains the image as given."""
    from .explain import coarse_note, save_heatmap

    names = _heatmap_names(items)
    cam_dir.mkdir(parents=True, exist_ok=True)
    empty, size = [], None
    for images, idx, *_ in progress_bar(loader, enabled=progress, desc="heatmaps", unit="batch", leave=False):
        if images is None:
            continue
        size = images.shape[-1]
        x = to_device(images, device, normalize, channels_last)
        targets = torch.as_tensor(np.maximum(res["grades"][idx], 0), device=x.device)  # -1: outputs not finite
        heats = torch.zeros(images.shape[0], *images.shape[-2:]) if ignores_input else cam(x, targets)
        for i, image, heat in zip(idx, images, heats):
            if res["grades"][i] < 0:
                continue
            grade = int(res["grades"][i])
            explained = f"grade {grade}'s output" if cam.by_grade else "the severity score"
            label = items[i].label
            said = [f"{items[i].path or items[i].image}: predicted grade {grade} ({GRADE_NAMES[grade]})"
                    + ("" if cam.by_grade and not cuts else  # a classifier cut at thresholds: its expected grade
                       f", {'expected grade' if cam.by_grade else 'severity score'} {res['scores'][i]:.2f}"
                       + (f" (grades cut at {', '.join(f'{t:.2f}' for t in cuts)})" if cuts else ""))
                    + ("" if label is None else f"; true grade {label} ({GRADE_NAMES[label]})"),
                    f"left: the image the model saw; right: where it raises {explained} (Grad-CAM)"]
            if tta:
                said.append("the grade averages flipped views (--tta); the heatmap is of the image as given")
            if res["warnings"][i]:
                said.append(f"warning: {res['warnings'][i]}")
            if not heat.any():
                said.append("blank: no region raises it (or every region alike)")
                empty.append(names[i])
            res["heatmaps"][i] = str(save_heatmap(image, heat, said, cam_dir / names[i]))
    if empty:
        warn(f"{len(empty)} heatmap(s) show no region (e.g. {empty[0]}): nothing in those photographs "
             "raises what is explained (Grad-CAM keeps positive evidence only), or it is raised alike "
             "everywhere (a model that ignores the image)", depth=1)
    coarse = coarse_note(cam.grid, size)
    if coarse:
        warn(coarse, depth=1)


def write_csv(path: Path, items: list[Item], res: dict, with_heatmaps: bool = False) -> None:
    """The predictions table, written atomically."""
    columns = ["path", "image", "true_grade", "predicted_grade", *[f"prob_{g}" for g in GRADES], "referable",
               "p_referable", "score", *(["heatmap"] if with_heatmaps else []), "warning", "error"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        for i, item in enumerate(items):
            known = "" if item.label is None else item.label
            row = [item.path or "", item.image, known]
            if res["grades"][i] < 0:
                row += [""] * (len(columns) - len(row) - 1) + [res["errors"][i]]
            else:
                probs, grade = res["probs"][i], int(res["grades"][i])
                row += [grade, *[f"{v:.9g}" for v in probs], int(grade >= REFERABLE),
                        f"{probs[REFERABLE:].sum():.9g}", f"{res['scores'][i]:.9g}",
                        *([res["heatmaps"][i]] if with_heatmaps else []), res["warnings"][i], ""]
            w.writerow(row)


SHOWN_ERRORS = 3


def _report(items: list[Item], res: dict, out: Path) -> str:
    """The summary printed at the end: how many were graded (and the first images that were not, with why)."""
    graded = res["grades"] >= 0
    failed = np.flatnonzero(~graded)
    counts = np.bincount(res["grades"][graded], minlength=len(GRADES)).tolist()
    text = (f"graded {int(graded.sum())} of {len(items)} images"
            + (f" ({len(failed)} not graded: see the error column)" if len(failed) else "")
            + f"; predicted grades 0-4: {counts}")
    for i in failed[:SHOWN_ERRORS]:
        text += f"\nnot graded: {items[i].path or items[i].image}: {res['errors'][i]}"
    if len(failed) > SHOWN_ERRORS:
        text += f"\n... and {len(failed) - SHOWN_ERRORS} more"
    labelled = np.array([graded[i] and item.label is not None for i, item in enumerate(items)], dtype=bool)
    if labelled.any():
        y = np.array([items[i].label for i in np.flatnonzero(labelled)])
        answers = res["grades"][labelled]
        m = summary(y, answers)
        kappa = "undefined (one grade in truth and answers)" if one_grade(y, answers) else f"{m['kappa']:.4f}"
        text += (f"\n{int(labelled.sum())} with known grades: accuracy {m['accuracy']:.4f} "
                 f"(majority class {majority_accuracy(y):.4f}) | quadratic kappa {kappa}")
    return text + f"\nwritten to {out}"


def refuse_cam_among_photographs(cam: Path, items: list[Item], folders: list[Path]) -> None:
    """A heatmap folder that is a folder of the photographs graded (a heatmap ``x.png`` would replace a photograph
    ``x.png``; in a dataset, heatmaps beside the photographs would be read with them), or that is inside a folder or
    dataset given as input (searched recursively: the heatmaps would be graded, in grade folders trained on, with
    the photographs next time)."""
    here = {Path(os.path.abspath(cam)), cam.resolve()}
    parents = {Path(f(i.path)).parent for i in items if i.path for f in (os.path.abspath, os.path.realpath)}
    where = next((f for f in parents if f in here), None) or next(
        (f for f in folders if f.resolve() in here or f.resolve() in cam.resolve().parents), None)
    if where is not None:
        raise FileExistsError(errno.EEXIST, f"--cam would write heatmaps among the photographs being graded (in "
                              f"{where}); choose a folder outside them", str(cam))


def single_eye(ckpt: dict, where) -> None:
    """Refuse a model that grades both eyes of a patient at once (``--pair-eyes``): it needs pairs."""
    if ckpt.get("model_info", {}).get("pair_eyes"):
        raise CheckpointError(f"{where}: this model grades both eyes of a patient together (trained with "
                              "--pair-eyes); predict and export take single photographs. Use `retinopathy "
                              "evaluate` on a dataset, or a model trained without --pair-eyes")


def main(args) -> dict:
    check_output_file(args.out, "--out", "predictions.csv")  # before the work, not after it
    if args.cam:
        if os.path.abspath(args.cam) == os.path.abspath(args.out):
            raise FileExistsError(errno.EEXIST, "--cam is the --out file; give the heatmaps a folder of their own, "
                                  f"e.g. --cam {Path(args.out).with_suffix('')}-heatmaps", args.cam)
        check_writable(args.cam, "--cam")
    model, objective, prep, ckpt = restore(Path(args.checkpoint))
    single_eye(ckpt, args.checkpoint)
    from ..evaluation.evaluate import own_numbers, run_catalog_options

    items = collect_items(args.inputs, args.split, lambda folder, labels: run_catalog_options(  # each dataset's
        args, Path(args.checkpoint), ckpt, str(folder), labels), **catalog_options(args))  # split; the run's, as read
    if not items:
        raise DataError([Problem("empty", " ".join(args.inputs), None, f"no images in split {args.split!r}")])
    folders = (Path(p) if Path(p).is_dir() else Path(p).parent for p in args.inputs)  # a labels CSV's, too
    for warning in dict.fromkeys(w for folder in folders for w in copy_warnings(folder, prep)):  # as train's
        print(f"warning: {warning}", file=sys.stderr)
    if learnt_from_drawings(args.checkpoint, ckpt) and not all(map(drawings, args.inputs)):  # as its model card
        print(f"warning: the model {DRAWINGS}", file=sys.stderr)  # says
    refuse_replacing_run(args.out, args.checkpoint,
                         [i.path for i in items] + list({f for i in items for f in i.labels}) + [args.split_file])
    if args.cam:
        refuse_cam_among_photographs(Path(args.cam), items, [Path(p) for p in args.inputs if Path(p).is_dir()])
    progress = not args.quiet
    workers = min(usable_cores(), 8) if args.workers is None else args.workers
    res = run(model, objective, prep, items, batch_size=args.batch_size, workers=workers, device=args.device,
              amp=args.amp, tta=args.tta,
              blend=blend_setting(args, ckpt), tuned_blend=ckpt["model_info"].get("blend_eyes", 0.0),
              cam_dir=Path(args.cam) if args.cam else None, progress=progress)
    out = Path(args.out)
    write_csv(out, items, res, with_heatmaps=bool(args.cam))
    print(_report(items, res, out) + (f"; heatmaps in {args.cam}" if args.cam and any(res["heatmaps"]) else ""))
    seen = seen_images(seen_counts(run_folder(Path(args.checkpoint)) / "split.csv", ckpt,
                                   [(i.image, i.label) for i, g in zip(items, res["grades"])
                                    if i.label is not None and g >= 0]))
    if seen:
        print(f"warning: of the images with known grades, {seen}: its accuracy and kappa on them overstate; "
              f"{own_numbers(args)}", file=sys.stderr)
    return res


def drawings(path: str) -> bool:
    """Whether an input is synthetic drawings: in a set of them (or a folder inside one), or a prepared copy of one."""
    folder = Path(path).resolve() if Path(path).is_dir() else Path(path).resolve().parent
    source = prepared_from(folder)
    return any(is_synthetic(f) for f in (folder, *folder.parents[:2])) or source is not None and is_synthetic(source)


def cli(argv: list[str] | None = None) -> int:
    """Exit status 0 when some image was graded, 1 when none could be (each row's error says why)."""
    res = main(get_args_parser().parse_args(argv))
    return 0 if (res["grades"] >= 0).any() else 1
