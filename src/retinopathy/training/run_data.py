"""A run's data: the catalog and its split (a resumed run's from its split.csv), the datasets of each split, and
the selection split."""
from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from ..cli.common import catalog_options
from ..data import DataError, FundusDataset, Problem, load_catalog
from ..data.dataset import PairedEyes
from ..data.formats import Catalog
from ..data.splits import run_overlap, same_photographs, split_option, trained_names
from .checkpoint import new_run_from, run_folder
from .distributed import DistInfo


def selection_split(args, splits_present: set, split_file) -> tuple[str, str]:
    """(the split the checkpoint is selected on, why a split may have no image), or a DataError when the data's
    ``splits_present`` lack it (--select-on auto: val when there is one, else test)."""
    select_on = args.select_on if args.select_on != "auto" else ("val" if "val" in splits_present else "test")
    why = (f"{split_file} puts none there" if split_file else "each grade's patients are split by "
           "--val-fraction and --test-fraction, rounded: a grade with few patients may give none")
    if select_on not in splits_present:
        wanted = "the val or the test split" if args.select_on == "auto" else f"the {select_on} split"
        raise DataError([Problem("no-split", str(args.data), None, f"no image is in {wanted}, which --select-on "
                                 f"{args.select_on} selects on ({why})")],
                        hint=("Give some of the split file's rows that split" if split_file else
                              "Raise the fraction, add images") + ", or pass --select-on with a split the data has")
    return select_on, why


@dataclass
class RunData:
    """What a run trains and evaluates on: the catalog and its split, the datasets, and the options they were
    made with (``common``: again for the clean training images of a threshold retune)."""
    catalog: Catalog
    split_options: dict
    split_file: Path | None
    train_set: FundusDataset | PairedEyes
    eval_sets: dict
    eval_splits: list[str]
    select_on: str
    common: dict
    warnings: list[str]  # of the split: config.yaml, the model card and the report show them
    skipped: list[Problem]  # what --skip-bad dropped, of every split


def load_data(args, ckpt: dict | None, dist: DistInfo, progress: bool) -> RunData:
    """Read the catalog (a resumed run: from its split.csv, checked to be its photographs) and make the datasets
    of the train split and of each evaluated split (the selection split always among them)."""
    split_file = Path(args.resume) / "split.csv" if ckpt is not None else args.split_file
    opts = catalog_options(args)
    opts["split_file"] = split_file
    elsewhere = (f"Resume with the data the run trained on ({ckpt['config'].get('data')}), or start a new run from "
                 f"its weights ({new_run_from(args.resume)})") if ckpt is not None else ""
    try:
        catalog = load_catalog(args.data, **opts)
    except DataError as e:
        if ckpt is not None and any(p.kind == "missing-folder" and p.file == str(args.data) for p in e.problems):
            raise DataError(e.problems, hint=f"If the data moved, resume with --data NEW_FOLDER (its images must "
                            f"be those of {split_file}).") from None
        if ckpt is not None and any(p.kind == "missing-file" and p.file == str(split_file) for p in e.problems):
            raise DataError(e.problems, hint="The run's split.csv says which photographs it trains on and which it "
                            "keeps for val and test; restore it (a new split would train on some of them), or start "
                            f"a new run from its weights ({new_run_from(args.resume)}).") from None
        if ckpt is None or not any(p.kind == "split-mismatch" for p in e.problems):
            raise
        raise DataError(e.problems, hint="The run's split.csv does not list these images: they are not the "
                        "photographs it trained on (or a folder of which this version reads more: sub-folders, .bmp "
                        f"and .webp, val/ or test/ beside train/). {elsewhere}") from None
    if split_file is not None:  # the names match the split file; the grades say whether it lists these photographs
        same, regraded, _ = run_overlap(split_file, [(s.image, s.label) for s in catalog.samples])
        photographs = same_photographs(len(same), regraded)  # (a split file without grades lists none: no word)
        if ckpt is not None and not photographs:
            raise DataError([Problem("split-mismatch", str(args.data), None,
                                     f"{regraded} of its images have other grades than in the run's {split_file}: "
                                     "these are not the photographs the run trained on")], hint=elsewhere)
        if ckpt is not None and regraded and dist.main:
            print(f"warning: {regraded} image(s) have other grades than when the run started (in {split_file}); "
                  "the remaining epochs learn the new grades", file=sys.stderr)
        elif ckpt is None and regraded and not photographs and dist.main:
            print(f"warning: {regraded} of the {len(same) + regraded} images that {split_file} lists have other "
                  "grades there: it looks like the split of other photographs (EyePACS and synthetic sets share "
                  "names), used here as it is", file=sys.stderr)
    if not catalog.samples:  # every row refused (a semicolon CSV, labels that are not grades...) or none at all
        raise DataError(catalog.problems, hint="Fix the labels files: no row of them lists a usable image.")
    splits_present = {s.split for s in catalog.samples}
    eval_splits = [sp for sp in args.eval_splits.split(",") if sp and sp in splits_present]
    select_on, why = selection_split(args, splits_present, split_file)
    wants_val = split_file or split_option(vars(args).get, "val_fraction")
    if args.select_on == "auto" and select_on == "test" and "test" in splits_present and ckpt is None \
            and dist.main and (wants_val or args.preset != "lab"):  # (the lab's recipe: none, on purpose; without
        print("warning: " + (f"no image is in the val split ({why})" if wants_val else  # test, the error below)
                             "--val-fraction 0 leaves no val split") + ", so the checkpoint is selected (and any "
              "thresholds tuned) on test, and the test numbers are optimistic; " + (
                  "give some of its rows the val split" if split_file else "add images or raise --val-fraction"
                  if wants_val else "pass --val-fraction 0.1 for one")
              + ", or pass --select-on test to choose this knowingly", file=sys.stderr)
    if select_on not in eval_splits:
        eval_splits.append(select_on)
    common = dict(image_size=args.image_size, preprocess=args.preprocess, uint8=True, skip_bad=bool(args.skip_bad),
                  cache=args.cache_images, progress=progress)
    made, failed = {}, []  # every split's problems at once, not the train split's first (the smaller first)
    for sp, extra in [*((sp, {"train": False}) for sp in eval_splits),
                      ("train", {"augment": args.augment, "crop": args.train_crop_size})]:
        try:
            made[sp] = FundusDataset(catalog, sp, **extra, **common)
        except DataError as e:
            if any(p.kind == "length-mismatch" for p in e.problems):
                raise
            failed.append(e)
    if failed:  # a bad labels row concerns every split: named once
        raise DataError(list(dict.fromkeys(p for e in failed for p in e.problems)), hint=failed[0].hint)
    train_set, eval_sets = made.pop("train"), made
    if args.pair_eyes:
        train_set, eval_sets = PairedEyes(train_set), {sp: PairedEyes(ds) for sp, ds in eval_sets.items()}
    return RunData(catalog, opts, split_file, train_set, eval_sets, eval_splits, select_on, common,
                   list(train_set.warnings),
                   list(dict.fromkeys(p for ds in (train_set, *eval_sets.values()) for p in ds.skipped)))


def weights_run_overlap(weights: str, data: RunData) -> str | None:
    """``--weights`` from a run on the same photographs with another split: how many of its training images this
    run keeps for val and test (their numbers would overstate), and how to keep them apart; None when none."""
    folder = Path(os.path.abspath(run_folder(weights)))
    split_csv = folder / "split.csv"
    if not split_csv.is_file() or not (folder / "config.yaml").is_file():  # a run's folder, not any split.csv
        return None
    trained = trained_names(split_csv, [(s.image, s.label) for s in data.catalog.samples])
    held = {sp: [s for s in data.catalog.samples if s.split == sp] for sp in ("val", "test")}
    seen = {sp: sum(s.image in trained for s in samples) for sp, samples in held.items()}
    if not any(seen.values()):
        return None
    return (f"{' and '.join(f'{n} of the {len(held[sp])} {sp} images' for sp, n in seen.items() if n)} were "
            f"training images of the run the --weights come from ({split_csv}): scores on them are optimistic; to "
            f"keep them apart, train on that run's split (--split-file {shlex.quote(str(split_csv))})")
