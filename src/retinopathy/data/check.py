"""``retinopathy data check``: read a dataset, decode every image, and report counts, sizes and problems."""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..progress import progress_bar
from ..workers import worker_count
from .formats import GRADES, KAGGLE_LABELS, LAB_FILES, Catalog, base_name, eye_of, read_catalog, without_extension
from .images import (IMAGE_EXTENSIONS, ImageError, brightest, check_image, colourless, doubt, doubt_note, hidden,
                     index_images, open_image)
from .problems import DataError, Problem
from .splits import SPLITS, split_overlaps
from .transforms import Preprocessing, geometry

STATS_SIZE = 256
SHOWN_PER_KIND = 20  # problems of one kind listed in the text report
KINDS = {"black": "blank-image", "dark": "dark-image", "narrow": "narrow-image", "grey": "grey-image"}  # a doubt's
# kind of warning (blank-image: the name it had before the others)


def _inspect(path: str, stats: bool):
    """Check one image as training does (headers, end markers, checksums), then decode it at reduced scale
    (enough to find broken data inside); return (size, brightness of its brightest 1 %, whether it has no colour,
    pixel sums or None)."""
    size = check_image(path)  # raises ImageError with the reason
    img = open_image(path, STATS_SIZE)
    bright, grey = brightest(img), colourless(img)
    if not stats:
        return size, bright, grey, None
    for step in geometry(Preprocessing("lab", STATS_SIZE)):
        img = step(img)
    a = np.asarray(img, dtype=np.float64).reshape(-1, 3) / 255.0
    return size, bright, grey, (a.sum(0), (a * a).sum(0), len(a))


def check_catalog(catalog: Catalog, stats: bool = False, workers: int | None = None,
                  progress: bool = True, images: bool = True) -> dict:
    """Decode every image of ``catalog`` and return a JSON-ready report (``report["problems"]`` lists all;
    ``report["warnings"]`` the images that decode but look nearly black, very dark, grey or not like a
    photograph's shape, as ``predict`` warns, and listed names with two files). ``images=False`` checks the labels only:
    nothing is decoded, and patients shared between splits are counted over every row."""
    problems: list[Problem] = list(catalog.problems)
    blank: list[Problem] = []
    present = [s for s in catalog.samples if s.path] if images else []
    sizes, sums, ok = [], [np.zeros(3), np.zeros(3), 0], []
    with ThreadPoolExecutor(worker_count(workers, len(present))) as pool:
        futures = [pool.submit(_inspect, s.path, stats) for s in present]
        for s, fut in progress_bar(zip(present, futures), enabled=progress, total=len(present),
                                   desc="checking images", unit="img"):
            try:
                size, bright, grey, acc = fut.result()
            except (ImageError, OSError, ValueError) as e:
                problems.append(Problem.bad_image(s, e))
                continue
            looks = doubt(bright, size, 0, grey)  # no model input here to be small against
            if looks:
                blank.append(Problem(KINDS[looks], s.source, s.line, f"{s.image}: {doubt_note(looks, bright, size)}; "
                                     "check the photograph" + (", or remove its row" if looks == "black" else ""),
                                     s.image))
            ok.append(s)
            sizes.append(size)
            if acc is not None:
                sums[0] += acc[0]
                sums[1] += acc[1]
                sums[2] += acc[2]
    if catalog.format != "folders":  # (grade folders report two files of one name as a duplicate problem)
        blank += _namesakes(ok)
    blank += _own_patients(catalog) + _disagreements(catalog)
    unlisted = unlisted_images(catalog) if images else []
    report: dict = {
        "data": str(catalog.root), "format": catalog.format,
        "labels": [str(p) for p in catalog.labels],
        "labels_not_read": _other_labels(catalog),
        "images_root": str(catalog.image_root) if catalog.image_root else None, "images_checked": images,
        "rows": len(catalog.samples), "images_ok": len(ok),
        "per_grade": _grades(catalog.samples),
        "per_split": {sp: _grades([s for s in catalog.samples if s.split == sp])
                      for sp in SPLITS if any(s.split == sp for s in catalog.samples)},
        "patients": len({s.patient for s in catalog.samples}),
        "shared_patients": {},
        "problems": [p.to_dict() for p in problems],
        "warnings": [p.to_dict() for p in blank],
        "unlisted_images": unlisted,
    }
    for a, b, n, total in split_overlaps(present if images else catalog.samples):
        report["shared_patients"][f"{a}-{b}"] = {"shared": n, "patients": total}
    if sizes:
        w, h = np.array(sizes).T
        report["image_sizes"] = {k: {"width": int(f(w)), "height": int(f(h))}
                                 for k, f in (("min", np.min), ("median", np.median), ("max", np.max))}
    if stats and sums[2]:
        mean = sums[0] / sums[2]
        std = np.sqrt(np.maximum(sums[1] / sums[2] - mean ** 2, 0))
        report["stats"] = {"mean": [round(float(v), 4) for v in mean], "std": [round(float(v), 4) for v in std],
                           "computed_at": f"lab geometry, {STATS_SIZE} px"}
    return report


def _namesakes(samples) -> list[Problem]:
    """A warning for each row named without an extension whose image has namesakes beside it (``1_left.jpeg`` and
    ``1_left.png``): one of them is read (the first in ``IMAGE_EXTENSIONS``' order), silently."""
    found, stems = [], {}  # folder -> {stem: its image files}
    for s in samples:
        folder, name = os.path.split(s.path)
        folder = folder or os.curdir  # DATA given as "."
        if Path(s.image).suffix.lower() in IMAGE_EXTENSIONS:
            continue
        if folder not in stems:
            stems[folder] = {}
            for n in sorted(os.listdir(folder)):
                if Path(n).suffix.lower() in IMAGE_EXTENSIONS:
                    stems[folder].setdefault(Path(n).stem, []).append(n)
        others = [n for n in stems[folder].get(Path(name).stem, []) if n != name]
        if others:
            found.append(Problem("namesake", s.source, s.line, f"{s.image}: {', '.join(others)} beside {name}, "
                                 f"which is read; if it is another photograph, rename it (or write the extension "
                                 "in the labels)", s.image))
    return found


def unlisted_images(catalog: Catalog) -> list[str]:
    """The image files in the catalog's image folder that its labels do not list (nor name in a problem, nor
    hidden: ``._1_left.jpeg`` of macOS), sorted: a labels file cut short leaves them out silently."""
    if catalog.image_root is None or catalog.format == "folders":
        return []
    listed = {os.path.basename(s.path) for s in catalog.samples if s.path}
    flagged = {without_extension(base_name(p.image)) for p in catalog.problems if p.image}
    return sorted(f for f in set(index_images(catalog.image_root).values()) - listed
                  if without_extension(f) not in flagged and not hidden(f))


def _own_patients(catalog: Catalog) -> list[Problem]:
    """A warning when no name says its patient and eye, so that every image is a patient of its own."""
    samples = catalog.samples
    if len(samples) < 2 or any(eye_of(s.image) for s in samples) or len({s.patient for s in samples}) < len(samples):
        return []
    return [Problem("own-patients", samples[0].source, None, "no image name says its patient and eye "
                    "(<patient>_left / _right, a folder per patient or per eye), so each image is a patient of its "
                    "own and one patient's two eyes can fall on both sides of a split; if the labels have a patient "
                    "column, pass --patient-col NAME")]


def _disagreements(catalog: Catalog) -> list[Problem]:
    """A warning for each row whose grade another labels file beside it (:func:`_other_labels`) gives otherwise:
    the lab's two files out of step (sorted apart, a line lost), or another copy regraded."""
    others: dict[str, tuple[int, str]] = {}
    for path in map(Path, _other_labels(catalog)):
        lab = any(path.name in pair for pair in LAB_FILES.values())
        try:
            read = read_catalog(catalog.root, format="lab" if lab else None, labels=None if lab else path,
                                resolve=False)
        except DataError:  # not readable as labels: not compared
            continue
        for s in read.samples:
            others.setdefault(without_extension(s.image), (s.label, f"{s.source} line {s.line}"))
    found, lab_read = [], catalog.format == "lab"
    for s in catalog.samples:
        label, where = others.get(without_extension(s.image), (s.label, ""))
        if label != s.label:
            found.append(Problem("grade-disagrees", s.source, s.line, f"{s.image}: grade {s.label} here, {label} in "
                                 f"{where}; one of the two is out of step" + (
                                     " (the lab's two files pair image and grade by line)" if lab_read or
                                     "_img.csv" in where else ""), s.image))
    return found


def _grades(samples) -> dict:
    c = Counter(s.label for s in samples)
    return {"total": len(samples), **{str(g): c.get(g, 0) for g in GRADES}}


def _other_labels(catalog: Catalog) -> list[str]:
    """Labels files of a known name beside the ones read (a folder with the lab's CSVs and trainLabels.csv)."""
    read = {os.path.realpath(p) for p in catalog.labels}
    names = [*(n for pair in LAB_FILES.values() for n in pair), *KAGGLE_LABELS, "train.csv"]
    return [str(catalog.root / n) for n in names
            if (catalog.root / n).is_file() and os.path.realpath(catalog.root / n) not in read]


def format_report(report: dict) -> str:
    """The report as text for a person."""
    where = ("images not checked (--no-images)" if not report["images_checked"] else
             f"images in {report['images_root']}" if report["images_root"] else
             "images in the grade folders" if report["format"] == "folders" else "no image folder found")
    lines = [f"dataset {report['data']}  (format: {report['format']}; {where})"]
    if report["labels"] and report["format"] != "folders":
        lines.append("labels read from " + ", ".join(os.path.basename(p) for p in report["labels"]) + (
            f"; also here, not read: {', '.join(os.path.basename(p) for p in report['labels_not_read'])} (read "
            "another with --labels or --format)" if report["labels_not_read"] else ""))
    lines += [f"{report['rows']:,} labelled rows, {report['images_ok']:,} images decoded, "
              f"{report['patients']:,} patients",
              "", f"{'split':<8}" + "".join(f"{'grade ' + str(g):>10}" for g in GRADES) + f"{'total':>10}"]
    for name, counts in [("all", report["per_grade"]), *report["per_split"].items()]:
        lines.append(f"{name:<8}" + "".join(f"{counts[str(g)]:>10,}" for g in GRADES) + f"{counts['total']:>10,}")
    if "image_sizes" in report:
        s = report["image_sizes"]
        lines.append("")
        lines.append("image sizes (WxH): " + ", ".join(f"{k} {v['width']}x{v['height']}" for k, v in s.items()))
    for key, v in report["shared_patients"].items():
        a, b = key.split("-")
        lines.append(f"patients on both sides: {v['shared']:,} of {v['patients']:,} {b} patients "
                     f"also have an eye in {a}" + ("  (warning: leakage)" if v["shared"] else ""))
    if "stats" in report:
        lines.append(f"per-channel mean {report['stats']['mean']}, std {report['stats']['std']} "
                     f"({report['stats']['computed_at']})")
    problems = report["problems"]
    lines.append("")
    lines.append(f"{len(problems)} problem(s)" + (":" if problems else ""))
    missing = sum(p["kind"] == "missing-image" for p in problems)
    none_found = report["images_checked"] and missing and missing == report["rows"]
    if none_found:
        lines.append(f"  none of the {missing:,} listed images was found: pass --images DIR (the folder that holds "
                     "them), or --no-images to check the labels only")
    lines += _listed(problems, {"missing-image": 3} if none_found else {})  # a few: the line above says it all
    if report.get("unlisted_images"):
        unlisted = report["unlisted_images"]
        lines += ["", f"{len(unlisted):,} image(s) in {report['images_root']} are not listed (e.g. {unlisted[0]}): "
                  "not read; if they should be, the labels file may be cut short (every one is in the JSON report)"]
    if report["warnings"]:
        lines += ["", f"{len(report['warnings'])} warning(s):", *_listed(report["warnings"])]
    return "\n".join(lines)


def _listed(problems: list[dict], shown: dict[str, int] | None = None) -> list[str]:
    """Problems (or warnings) as lines, ``SHOWN_PER_KIND`` of each kind (or ``shown[kind]``); the JSON report holds
    every one."""
    lines, seen, shown = [], Counter(), shown or {}
    for p in problems:
        seen[p["kind"]] += 1
        if seen[p["kind"]] <= shown.get(p["kind"], SHOWN_PER_KIND):
            lines.append(Problem(**p).listed())
    return lines + [f"  ... and {n - shown.get(kind, SHOWN_PER_KIND):,} more [{kind}] (every one is in the JSON "
                    "report)" for kind, n in seen.items() if n > shown.get(kind, SHOWN_PER_KIND)]
