"""``retinopathy prepare DATA OUT --size 512``: decode every photograph once into a small, fast JPEG copy.

Each labelled image is decoded at reduced scale (``Image.draft``, :func:`~retinopathy.data.images.open_image`),
optionally cropped to its round field of view (``--crop fov``), resized so that its short side is ``--size``
(the same torchvision ``Resize`` the training transforms use), and written as a quality-95 JPEG with full
colour resolution (4:4:4), then re-opened and checked. The label files are copied unchanged, so OUT is a
dataset in the same format: images ``OUT/<name>.jpeg`` (lab, kaggle, csv; in ``OUT/train/`` etc. when the
images were in such a folder) or ``OUT/<grade>/<name>.jpeg`` (folders, where they were:
``OUT/train/<grade>/``...); a name that already ends in ``.jpeg``/``.jpg`` is kept as it is, any other
(``x.png``) gets ``.jpeg`` appended, so the labels still find it. A name holding a path keeps it under OUT (``/`` for
``\\``); one that would lead out of OUT is reported as a problem and not written. Splits are made from the
labels, so they do not change.

Work runs on all cores (one ``prepare`` per OUT at a time: it is locked); a killed run leaves no half-written
image (each is written to a hidden temporary file, ``.NAME.tmpPID``, renamed into place) and a re-run skips the
finished files (a copy cut or emptied since, or whose photograph has another size or modification time than when
it was copied, is written again). Bad inputs are reported as the dataset reports them (file and line) and not
written; an earlier copy of a photograph now missing or unreadable, and in grade folders one whose photograph has
moved to another grade or gone, and an earlier run's labels file that this run does not copy, is renamed
``<name>.stale`` (and reported), so that the copy never reads an image or grade its source no longer has; the exit
status is then 1. Labels none of whose images is found (a forgotten ``--images``) stop it first, with nothing written.
``OUT/prepare_manifest.json`` records the source, settings, each photograph's size and modification time,
counts, problems and time; a re-run with other settings into the same OUT is refused.

Which copy for which training (S = ``--size`` = ``--image-size``; "equal" = up to the JPEG coding at quality 95,
about 1 level of 255 on average, about 2.5 after ``graham``, whose gain of 4 magnifies it):

* ``--crop none``: ``--preprocess lab`` on the copy equals ``lab`` on the originals (the short side is already S,
  so ``Resize(S)`` does nothing and ``CenterCrop(S)`` cuts the same square). ``fov`` and ``graham`` work on it
  too, but the retina in the copy is a little narrower than S (EyePACS: about 0.95 S), so their crop is
  upscaled slightly: for those presets prepare with ``--crop fov``.
* ``--crop fov``: the copy is the S x S square that ``--preprocess fov`` cuts from the originals, so
  ``--preprocess lab`` on it equals ``fov`` on the originals. Train it with ``--preprocess fov`` all the same
  (it finds the same circle again) or ``graham`` (Graham's normalisation on top): the checkpoint then records
  ``fov``, so prediction on original photographs crops them the same way; with ``lab`` it would record ``lab``
  and prediction on originals would centre-crop them instead.
* Train at S or below: at a smaller size the presets resize the copy down (same geometry, other resampling);
  a larger size would upscale the copy and lose detail.

The dataset reads the manifest and warns when the copy is read at a larger size than S, when ``fov`` crops are
read with ``lab``, and when the copy is unfinished (:func:`copy_warnings`).
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from PIL import Image

from .. import __version__
from ..atomic import encoded, remove_leftovers, replacing, write_json
from ..cli.common import READ_KEYS, add_format_arguments, at_least, show_defaults
from ..errors import NotWritten, RetinopathyError
from ..outputs import exclusive
from ..progress import progress_bar
from ..workers import mapped, worker_count
from .dataset import listed_here
from .formats import GRADES, IMAGE_SUBDIRS, Catalog, Sample, read_catalog
from .images import FOV_SLACK, ImageError, check_image, image_files, open_image
from .problems import DataError, Problem
from .transforms import Preprocessing, geometry, short_side_resize

MANIFEST = "prepare_manifest.json"
CROPS = ("none", "fov")
QUALITY = 95
STALE = ".stale"


class PrepareError(RetinopathyError, ValueError):
    """OUT cannot be used for this copy (not empty, prepared with other settings, or the source itself)."""


def output_name(sample: Sample, catalog: Catalog) -> str:
    """Path of ``sample``'s copy relative to OUT, under a name that the copied labels still resolve (a name that
    holds a path keeps it, with ``/``; the others go where the images were, e.g. ``train/``, as do grade folders,
    e.g. ``train/2/``)."""
    if catalog.format == "folders":
        below = Path(sample.path).relative_to(sample.source).with_suffix(".jpeg")  # its place in its grade folder
        return (Path(sample.source).relative_to(catalog.root) / below).as_posix()
    name = sample.image.replace("\\", "/")
    name = name if name.lower().endswith((".jpeg", ".jpg")) else f"{name}.jpeg"
    images = catalog.image_root and Path(os.path.abspath(catalog.image_root))  # absolute, links kept: DATA "." is
    if "/" not in name and images and images.parent == Path(os.path.abspath(catalog.root)) \
            and images.name in IMAGE_SUBDIRS:  # its own image folder, not a sub-folder named ""; where reading the
        # copy looks (--images DATA/photos: not)
        return f"{catalog.image_root.name}/{name}"  # beside the names that hold that folder (train/1_left.jpeg)
    return name


def _outside(name: str) -> bool:
    """A copy name that would lead out of OUT."""
    return PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts


def resize_steps(size: int, crop: str) -> list:
    """The geometry applied before writing: the training presets' own steps, so the copy matches them."""
    if crop == "fov":
        return geometry(Preprocessing("fov", size))  # FovCrop, then Resize((S, S))
    return [short_side_resize(size)]  # as the lab preset's, before its crop


def prepare_file(job: tuple) -> str | None:
    """Decode, crop, resize, write ``dst`` atomically and check it; return the reason when the input is bad."""
    src, dst, size, crop = job
    try:
        img = open_image(src, size, fov=crop == "fov")
        for step in resize_steps(size, crop):
            img = step(img)
    except ImageError as e:
        return str(e)
    with replacing(dst, "wb") as f:
        f.write(encoded(img, "JPEG", quality=QUALITY, subsampling=0))
        f.flush()
        with Image.open(f.name) as check:
            check.load()
            if check.format != "JPEG" or check.size != img.size:
                raise OSError(f"{f.name}: wrote {check.format} {check.size}, expected JPEG {img.size}")
    return None


def _source_stat(source: str) -> list[int] | None:
    """A photograph's [size, modification time in ns], as the manifest records it; None when it has gone since
    the catalog was read (its job then reports it)."""
    try:
        st = os.stat(source)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _up_to_date(copy: Path, source: list[int] | None, recorded: list | None, since: int | None = None) -> bool:
    """A copy already there is kept when its photograph (``source``: :func:`_source_stat`) has the size and
    modification time recorded when the copy was written (a copy from before that record: when it is newer than
    its photograph, as ``make`` decides) and its header and end marker are whole (as the dataset checks them); one
    cut or emptied since (a full disk, a copy that failed), or a photograph replaced since (a corrected export,
    even one unpacked with its old timestamp), is written again. ``since``: the copy was still to be written by an
    interrupted run that started then (ns), which recorded its photograph as it was: a copy older than that run
    is one it did not get to."""
    if source is None or recorded is not None and recorded != source:
        return False
    try:
        mtime = copy.stat().st_mtime_ns
        if recorded is None and mtime < source[1] or since is not None and mtime < since:
            return False
        check_image(copy)
        return True
    except (OSError, ImageError):
        return False


def set_aside(copy: Path) -> Path | None:
    """Rename an earlier copy that the source no longer backs to ``<name>.stale`` (not an image name, so the
    dataset does not read it, and nothing is lost); None when there is none."""
    if not copy.is_file():
        return None
    aside = copy.with_name(copy.name + STALE)
    os.replace(copy, aside)
    return aside


def _stale_copies(out: Path, targets: dict) -> list[Problem]:
    """Images in OUT's grade folders that no photograph of the source writes (moved to another grade folder, or
    removed): read with the grade of their folder, they would train on an old grade or a removed photograph, so
    they are set aside (:func:`set_aside`) and reported."""
    problems = []
    for p in image_files(out):
        name = p.relative_to(out)
        grade = next((d for d in name.parts[:-1] if d in map(str, GRADES)), None)
        if grade is not None and name.as_posix() not in targets:
            aside = set_aside(p)
            problems.append(Problem("stale-copy", str(p), None, f"no photograph of the source has this copy any more "
                                    f"(moved to another grade folder, or removed, since {out} was prepared), so it "
                                    f"would be read as grade {grade}: renamed to {aside.name}"))
    return problems


def _copy_labels(catalog: Catalog, out: Path, earlier: list[str]) -> tuple[list[str], list[Problem]]:
    """Copy the labels files into OUT; set aside those of an ``earlier`` run that this one does not copy (read in
    place of the new ones, they would give the old grades)."""
    if catalog.format == "folders":  # the grade folders are the labels; all five make the format detectable
        for folder in catalog.labels:
            for g in GRADES:
                (out / folder.relative_to(catalog.root) / str(g)).mkdir(parents=True, exist_ok=True)
        return [], []
    names = []
    for src in catalog.labels:
        dst = out / src.name
        if dst.resolve() == src.resolve():
            raise PrepareError(f"{out}: would overwrite its own labels {src}; choose another OUT")
        with replacing(dst, "wb") as f, open(src, "rb") as labels:
            shutil.copyfileobj(labels, f)
        names.append(src.name)
    problems = [Problem("stale-labels", str(aside), None, f"{name}, the labels an earlier run copied, is not among "
                        f"this run's ({', '.join(names)}), so it would give the copy its old grades: renamed to "
                        f"{aside.name}") for name in earlier if name not in names and (aside := set_aside(out / name))]
    return names, problems


def _settings(src: str | Path, catalog: Catalog, size: int, crop: str) -> dict:
    """What makes the copy what it is: a re-run with other settings into the same OUT is refused."""
    return {"source": str(Path(src).resolve()), "format": catalog.format, "size": size, "crop": crop,
            "quality": QUALITY, "subsampling": "4:4:4", "resize": "bilinear, antialiased (torchvision)",
            "decode": "Pillow draft (reduced-scale JPEG decode)" + (
                f"; a field of view narrower than {FOV_SLACK} x size at that scale decoded at a finer one"
                if crop == "fov" else "")}


def _check_source(out: Path, catalog: Catalog) -> None:
    for folder in (catalog.root, catalog.image_root):
        if folder is not None and out.resolve() == Path(folder).resolve():
            raise PrepareError(f"{out} is the source folder; choose another OUT")
    if catalog.format == "folders" and out.resolve().is_relative_to(Path(catalog.root).resolve()):
        raise PrepareError(f"{out} lies inside the grade-folder dataset {catalog.root}, whose next read would find "
                           f"the copy's photographs and grade folders among its own; choose an OUT outside it")


def _check_out(out: Path, settings: dict) -> dict:
    """Refuse an OUT that cannot take this copy; return the earlier run's manifest (empty for a new OUT), whose
    ``sources`` record its photographs ({copy name: [size, modification time in ns]})."""
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            earlier = json.loads(manifest.read_text())
            old = earlier.get("settings")
            earlier.update(sources=dict(earlier.get("sources", {})), pending=list(earlier.get("pending", [])),
                           labels=list(earlier.get("labels", [])))
        except (ValueError, AttributeError, TypeError):
            raise PrepareError(f"{manifest} is unreadable (a run killed while writing it, or edited): the copy in "
                               f"{out} cannot be trusted; delete {out} and prepare again") from None
        if old != settings:
            diff = {k: (old or {}).get(k) for k in settings if (old or {}).get(k) != settings[k]}
            raise PrepareError(f"{out} holds a copy prepared with other settings {diff} (now "
                               f"{ {k: settings[k] for k in diff} }); choose another OUT or delete it")
        return earlier
    if out.exists() and any(p.name != ".lock" for p in out.iterdir()):
        raise PrepareError(f"{out} is not empty and has no {MANIFEST}; choose a new or empty folder")
    return {}


def _out_read_options(read_options: dict, catalog: Catalog, out: Path) -> dict:
    """Options that read OUT as the same dataset: the labels path moves into OUT, the images are in OUT."""
    opts = {k: v for k, v in read_options.items() if v is not None and k != "images"}
    opts["format"] = catalog.format
    if opts.get("labels") is not None:
        opts["labels"] = str(out if catalog.format == "lab" else out / Path(opts["labels"]).name)
    return opts


def prepare(src: str | Path, out: str | Path, *, size: int = 512, crop: str = "none", workers: int | None = None,
            progress: bool = True, **read_options) -> dict:
    """Write the reduced copy of dataset ``src`` into ``out``; return the manifest (also written to OUT)."""
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    if size < 8:
        raise ValueError(f"size must be at least 8 px, got {size}")
    start, started_at = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    catalog = read_catalog(src, **read_options)
    if catalog.samples and not any(s.path for s in catalog.samples):  # a copy of labels alone: train reads nothing
        raise DataError(catalog.problems, hint=listed_here(catalog, 0).strip())
    out = Path(out)
    _check_source(out, catalog)
    settings = _settings(src, catalog, size, crop)
    _check_out(out, settings)  # before the lock: nothing is written into a refused OUT
    with exclusive(out, "prepared"):  # two prepares into one OUT would remove each other's temporary files
        return _prepare(catalog, out, settings, workers, progress, read_options, start, started_at)


def _prepare(catalog: Catalog, out: Path, settings: dict, workers: int | None, progress: bool, read_options: dict,
             start: float, started_at: str) -> dict:
    size, crop = settings["size"], settings["crop"]
    earlier = _check_out(out, settings)  # again, now that OUT is this command's
    recorded, pending = earlier.get("sources", {}), set(earlier.get("pending", []))
    remove_leftovers(out, deep=True)  # of a run that was killed
    manifest = {"source": settings["source"], "out": str(out.resolve()), "size": size, "crop": crop,
                "settings": settings, "read_options": _out_read_options(read_options, catalog, out),
                "complete": False, "started": started_at, "retinopathy": __version__,
                **{k: earlier[k] for k in ("sources", "pending", "started_ns", "labels") if k in earlier}}
    write_json(out / MANIFEST, manifest)  # OUT is this command's now; the earlier run's record is kept until ...
    labels, problems = _copy_labels(catalog, out, earlier.get("labels", []))
    problems = list(catalog.problems) + problems
    todo: list[tuple[Sample, str]] = []
    to_write: list[str] = []
    targets: dict[str, Sample] = {}
    sources: dict[str, list[int]] = {}
    skipped = 0
    for s in (s for s in catalog.samples if s.path):
        name = output_name(s, catalog)
        if _outside(name):
            problems.append(Problem("path-outside", s.source, s.line, f"{s.image}: the copy keeps the name as "
                                    "written, and this one leads out of OUT; write it relative to the dataset "
                                    "folder in the labels", s.image))
            continue
        if name in targets:
            problems.append(Problem("name-clash", s.source, s.line, f"{s.image}: its copy {name} would replace "
                                    f"that of {targets[name].image}; rename one of them", s.image))
            continue
        targets[name] = s
        dst = out / name
        stat = _source_stat(s.path)  # before it is read: a change during the run is seen by the next one
        if stat is not None:
            sources[name] = stat
        if _up_to_date(dst, stat, recorded.get(name), earlier.get("started_ns") if name in pending else None):
            skipped += 1
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            todo.append((s, str(dst)))
            to_write.append(name)

    manifest.update(sources=sources, pending=sorted(to_write), started_ns=time.time_ns(), labels=labels,
                    label_sources={p.name: os.path.abspath(p) for p in catalog.labels} if labels else {})
    write_json(out / MANIFEST, manifest)  # ... this run's replaces it: what it found, and what it has still to write
    set_aside_copies = [str(aside) for name in sorted({output_name(s, catalog) for s in catalog.samples if not s.path})
                        if name not in targets and not _outside(name) and (aside := set_aside(out / name))]
    # (an earlier copy of a photograph missing now must not be read in its place; one another row writes stays)
    jobs = [(s.path, dst, size, crop) for s, dst in todo]
    workers = worker_count(workers, len(jobs))
    bar = progress_bar(total=len(jobs), enabled=progress, unit="img", desc="prepare", dynamic_ncols=True)
    failed: set[str] = set()
    try:
        with mapped(prepare_file, jobs, workers, most_per_chunk=16) as results:
            for (s, dst), reason in zip(todo, results):
                bar.update()
                if reason is not None:
                    problems.append(Problem.bad_image(s, reason))
                    failed.add(dst)
                    if aside := set_aside(Path(dst)):  # an earlier copy of what is now unreadable
                        set_aside_copies.append(str(aside))
    finally:
        bar.close()

    if catalog.format == "folders":
        problems += _stale_copies(out, targets)
    # Check that the copy reads back as the same dataset, every written image found under its name.
    copy = read_catalog(out, **manifest["read_options"])
    found = {c.image: c.path for c in copy.samples if c.path}
    for name, s in targets.items():
        dst = str(out / name)
        if dst not in failed and found.get(s.image) != dst:
            problems.append(Problem("unresolved-copy", s.source, s.line,
                                    f"{s.image}: the copy {dst} is not found when reading {out}", s.image))
    seconds = time.perf_counter() - start
    written = len(jobs) - len(failed)
    manifest.update(
        complete=True, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"), labels=labels,
        counts={"samples": len(catalog.samples), "images": len(targets) - len(failed), "written": written,
                "already_there": skipped, "problems": len(problems)},
        problems=[p.to_dict() for p in problems], set_aside=set_aside_copies,
        sources={k: v for k, v in sources.items() if str(out / k) not in failed}, pending=[], seconds=round(seconds, 3),
        workers=workers,
        images_per_s=round(written / seconds, 2) if written else 0.0)
    write_json(out / MANIFEST, manifest)
    return manifest


def prepared_from(root: str | Path) -> str | None:
    """The folder that ``root`` is a ``prepare``d copy of (resolved, as its manifest records it); None otherwise."""
    try:
        source = json.loads((Path(root) / MANIFEST).read_text())["source"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return source if isinstance(source, str) else None


def copy_warnings(root: str | Path, prep: Preprocessing) -> list[str]:
    """What the manifest of a copy in ``root`` says against reading it with ``prep``: an unfinished copy, one made
    smaller than it is read (upscaled, its detail lost), labels changed at the source since (regraded), field-of-view
    crops read with the ``lab`` preset."""
    try:
        m = json.loads((Path(root) / MANIFEST).read_text())
        complete, size, crop = m["complete"], int(m["size"]), m["crop"]
    except (OSError, ValueError, TypeError, KeyError, OverflowError):
        return []
    found = []
    if not complete:
        found.append(f"{root} is a copy that `retinopathy prepare` has not finished ({MANIFEST}): the images it "
                     "has not written yet are missing; run the same prepare command again to finish it")
    if size < prep.size:
        found.append(f"{root} was prepared at {size} px and is read at {prep.size} px: the copy is upscaled, "
                     f"without the originals' detail; prepare it again with --size {prep.size} (or train at "
                     f"--image-size {size})")
    changed = [src for name, src in (m.get("label_sources") or {}).items()
               if os.path.isfile(src) and (Path(root) / name).is_file()
               and not filecmp.cmp(src, Path(root) / name, shallow=False)]
    if changed:
        found.append(f"{root} was prepared from labels that have changed since ({', '.join(changed)}): the copy "
                     "still grades its images as they were; run the same prepare command again (it rewrites only "
                     "what changed)")
    if crop == "fov" and prep.preset == "lab":
        found.append(f"{root} holds field-of-view crops (prepare --crop fov) read with the lab preset, which "
                     "centre-crops the original photographs: a model trained so grades photographs framed otherwise "
                     "than it learnt them; train with --preprocess fov (or graham), or read a copy prepared without "
                     "--crop fov")
    return found


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("retinopathy prepare", add_help=add_help, description=__doc__.split("\n\n")[0],
                                epilog="A copy for --preprocess fov or graham is best made with --crop fov (the "
                                       "crop is then cut from the originals: a retina smaller than the frame keeps "
                                       "its detail); see docs/data.md (A decoded copy).")
    p.add_argument("src", metavar="DATA", help="dataset folder (any supported format)")
    p.add_argument("out", metavar="OUT", help="folder to write (new, empty, or an earlier run's to resume it)")
    p.add_argument("--size", type=at_least(8), default=512,
                   help="short side in pixels (default 512; train at this size)")
    p.add_argument("--crop", choices=CROPS, default="none",
                   help="fov: crop the square around the round field of view (= --preprocess fov)")
    p.add_argument("-j", "--workers", type=at_least(0), default=None,
                   help="processes (default: all cores; 0 or 1: none, all in this process)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_format_arguments(p)
    return show_defaults(p)


def main(args) -> dict:
    options = {k: getattr(args, k) for k in READ_KEYS if getattr(args, k) is not None}
    m = prepare(args.src, args.out, size=args.size, crop=args.crop, workers=args.workers,
                progress=not args.quiet, **options)
    c = m["counts"]
    speed = (f"{m['seconds']:.1f} s ({m['images_per_s']:.1f} images/s, {m['workers']} workers)" if c["written"]
             else "nothing to write")
    print(f"{c['images']:,} images at {m['size']} px (crop {m['crop']}) in {args.out}: {c['written']:,} written, "
          f"{c['already_there']:,} already there, {speed}; {c['problems']} problem(s); manifest "
          f"{Path(args.out) / MANIFEST}")
    for p in m["problems"][:20]:
        print(Problem(**p).listed(), file=sys.stderr)
    if len(m["problems"]) > 20:
        print(f"  ... and {len(m['problems']) - 20:,} more (all in the manifest)", file=sys.stderr)
    if uncopied := sum(p["kind"] in ("missing-image", "bad-image") for p in m["problems"]):
        listed = ("the copy's grade folders leave them out: fix the images and run prepare again to have them"
                  if m["settings"]["format"] == "folders" else
                  f"its labels, copied as they are, still list them: train from {args.out} with --skip-bad, or fix "
                  "the images and run prepare again")
        print(f"note: {uncopied:,} listed image(s) are not in the copy (missing or unreadable), and {listed}"
              + (f"; {len(m['set_aside']):,} earlier copies of them were renamed *{STALE}, so that they are not "
                 "read in their place" if m["set_aside"] else ""), file=sys.stderr)
    return m


def cli(argv: list[str] | None = None) -> int:
    """Exit status 0, or 1 when some inputs were bad (listed, and in the manifest); errors go to the dispatcher."""
    args = get_args_parser().parse_args(argv)
    try:
        m = main(args)
    except NotWritten:  # a full disk, with the file named
        raise
    except OSError as e:  # no permission...: not a bad input, but something to act on
        if e.filename and not Path(os.path.abspath(e.filename)).is_relative_to(os.path.abspath(args.out)):
            raise  # a file read, not written: the dispatcher names it
        raise PrepareError(f"cannot write {args.out}: {e}") from None
    return 1 if m["problems"] else 0
