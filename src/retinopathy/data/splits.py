"""Patient-level train/val/test splits, stratified by grade, deterministic, written out for reuse."""
from __future__ import annotations

import csv
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..atomic import replacing
from ..errors import DataWarning, RetinopathyError
from .formats import Sample
from .problems import DataError, Problem

SPLITS = ("train", "val", "test", "all")
SPLIT_DEFAULTS = {"val_fraction": 0.1, "test_fraction": 0.2, "split_seed": 0}  # when a run sets none


def split_option(get, key: str):
    """The split option ``key`` as a run set it (``get(key)``: None when it did not), else its default."""
    value = get(key)
    return SPLIT_DEFAULTS[key] if value is None else value


class SplitError(RetinopathyError, ValueError):
    """Split fractions that leave no room for training."""


def _strata(samples: list[Sample]) -> dict[int, list[str]]:
    """Patients grouped by their worse eye's grade, each group sorted."""
    worst: dict[str, int] = {}
    for s in samples:
        worst[s.patient] = max(worst.get(s.patient, 0), s.label)
    strata: dict[int, list[str]] = defaultdict(list)
    for patient, grade in worst.items():
        strata[grade].append(patient)
    return {g: sorted(p, key=lambda x: (len(x), x)) for g, p in sorted(strata.items())}


def split_patients(samples: list[Sample], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Assign each patient to a split. ``fractions`` maps split name to its share of each grade stratum
    (stratified by the patient's worse eye, rounded half to even); the remaining patients go to train. Returns
    patient -> split."""
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for _, patients in _strata(samples).items():
        order = [patients[i] for i in rng.permutation(len(patients))]
        start = 0
        for name, frac in fractions.items():
            n = int(round(frac * len(order)))
            for p in order[start:start + n]:
                assignment[p] = name
            start += n
        for p in order[start:]:
            assignment[p] = "train"
    return assignment


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Raise a SplitError unless both fractions lie in [0, 1) and leave some patients for training."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise SplitError(f"--val-fraction {val_fraction} and --test-fraction {test_fraction}: each in [0, 1), "
                         "and together less than 1")


def assign_splits(samples: list[Sample], val_fraction: float, test_fraction: float, seed: int) -> None:
    """Set ``sample.split`` for every sample, by patient.

    Samples that already carry a split (the lab format's train/test, ImageFolder's train/val/test folders) keep
    it; the val and test parts that are not given are then carved from their train side by patient. Others get a
    stratified train/val/test split.
    """
    check_fractions(val_fraction, test_fraction)
    given = [s for s in samples if s.split]
    if given:
        train, present = [s for s in given if s.split == "train"], {s.split for s in given}
        carve = {sp: f for sp, f in (("test", test_fraction), ("val", val_fraction)) if f and sp not in present}
        patients = split_patients(train, carve, seed) if carve else {}
        for s in train:
            s.split = patients.get(s.patient, "train")
    else:
        patients = split_patients(samples, {"test": test_fraction, "val": val_fraction}, seed)
        for s in samples:
            s.split = patients[s.patient]


def select(samples: list[Sample], split: str) -> list[Sample]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return list(samples) if split == "all" else [s for s in samples if s.split == split]


def shared_patients(samples: list[Sample], a: str = "train", b: str = "test") -> tuple[int, int]:
    """(patients of split ``b`` that also have an image in split ``a``, patients of ``b``)."""
    pa = {s.patient for s in samples if s.split == a}
    pb = {s.patient for s in samples if s.split == b}
    return len(pa & pb), len(pb)


def split_overlaps(samples: list[Sample]) -> list[tuple[str, str, int, int]]:
    """(a, b, shared, patients of b) for train-val, train-test and val-test, where both have patients."""
    present = {s.split for s in samples}
    out = []
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        n, total = shared_patients(samples, a, b)
        if total and a in present:
            out.append((a, b, n, total))
    return out


def leakage_warnings(samples: list[Sample]) -> list[str]:
    return [f"{n:,} of {total:,} {b} patients also have an eye in {a} "
            "(patient leakage: scores on that split are optimistic)"
            for a, b, n, total in split_overlaps(samples) if n]


def write_split(samples: list[Sample], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image", "patient", "label", "split"])
        for s in samples:
            w.writerow([s.image, s.patient, s.label, s.split])


def read_split_table(path: str | Path) -> dict[str, str]:
    """``{image: split}`` of a split file written by :func:`write_split`; a DataError says what is wrong."""
    return {row["image"]: row["split"] for row in _split_rows(path)}


def _split_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a split file, stripped and checked (an image and a split each; an image listed again must
    repeat its row)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError([Problem("missing-file", str(path), None, f"cannot read the split file ({e})")],
                        hint="Pass the split.csv that a training run wrote (or the run's folder), or drop --split-file."
                        ) from None
    rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in rows]
    bad, first = [], {}
    for i, row in enumerate(rows, start=2):
        if not row.get("image") or row.get("split") not in ("train", "val", "test"):
            bad.append(Problem("bad-row", str(path), i, "expected image and split columns, split one of train, "
                               f"val, test; got {row}"))
        elif row["image"] in first and rows[first[row["image"]] - 2] != row:
            bad.append(Problem("duplicate", str(path), i, f"image {row['image']} is listed again, differently "
                               f"(first at line {first[row['image']]}); keep one of the rows"))
        first.setdefault(row.get("image"), i)
    if bad:
        raise DataError(bad, hint="Pass the split.csv that a training run wrote, or drop --split-file.")
    return rows


def run_overlap(split_csv: str | Path, labelled) -> tuple[dict[str, str], int, int]:
    """How labelled images, ``(name, grade)`` pairs, meet a run's ``split_csv``: ``({name: split} of those listed
    with the grade the run saw, how many other listed names come only with other grades, how many images are not
    listed)``; nothing listed when the file is missing or unusable (then, for a file that is there, a warning: the
    run's training images cannot be told apart)."""
    labelled = list(labelled)
    try:
        rows = _split_rows(split_csv)  # read once for both columns
    except DataError as e:
        if Path(split_csv).is_file():
            warnings.warn(DataWarning(f"the run's {split_csv} cannot be used ({e.problems[0].message}): which images "
                                      "it trained on is unknown, so none are counted or kept apart; restore the "
                                      "file from a copy"), stacklevel=2)
        return {}, 0, len(labelled)
    split, grade = ({row["image"]: row.get(column) for row in rows} for column in ("split", "label"))
    same = {name: split[name] for name, label in labelled if grade.get(name) == str(label)}
    listed = {name for name, _ in labelled if grade.get(name)}  # names: a dataset given twice is not regraded
    return same, len(listed - set(same)), sum(name not in grade for name, _ in labelled)


def same_photographs(same: int, regraded: int, unlisted: int = 0) -> bool:
    """Whether the names a run's split lists are its photographs: at least 90 % of them with the grades it lists
    (a name alone is not enough: EyePACS and synthetic sets share names, and most of their grades are 0), and at
    least 5 of them when other images are not listed (a name or two of another set can meet a name of the run's,
    with the same grade, by chance: about one time in two for grade 0)."""
    return same > 0 and same >= 0.9 * (same + regraded) and (same >= 5 or not unlisted)


def run_photographs(split_csv: str | Path, labelled, among=None) -> dict[str, str]:
    """``{name: split in the run}`` of the labelled images, ``(name, grade)`` pairs, when they are the photographs of
    the run of ``split_csv`` (:func:`same_photographs`, decided on all of ``labelled``, a whole dataset); empty
    otherwise. ``among``: only those of these pairs (a split of that dataset)."""
    same, regraded, unlisted = run_overlap(split_csv, labelled)
    if not same_photographs(len(same), regraded, unlisted):
        return {}
    return same if among is None else {name: same[name] for name in {name for name, _ in among} if name in same}


def trained_names(split_csv: str | Path, labelled, among=None) -> set[str]:
    """The names of the labelled images (of ``among``) that a run trained on (:func:`run_photographs`)."""
    return {name for name, split in run_photographs(split_csv, labelled, among).items() if split == "train"}


def trained_on(split_csv: str | Path, labelled, among=None) -> int:
    """How many labelled images (of ``among``) a run trained on (:func:`trained_names`)."""
    return len(trained_names(split_csv, labelled, among))


def seen_counts(split_csv: str | Path, ckpt: dict, labelled, among=None) -> dict:
    """How many labelled images (of ``among``) the run of ``ckpt`` trained on, and had in the val split it chose its
    checkpoint on (:func:`run_photographs`; a run that selected on test says so in its own notes: its own test split
    is what the lab's recipe reports), as ``training_images`` and ``selection_images``."""
    splits = Counter(run_photographs(split_csv, labelled, among).values())
    selected_on_test = (ckpt.get("config") or {}).get("select_on") == "test"
    return {"training_images": splits["train"], "selection_images": 0 if selected_on_test else splits["val"]}


def read_split(samples: list[Sample], path: str | Path) -> None:
    """Apply a split written by :func:`write_split`; every sample must be listed."""
    table = read_split_table(path)
    missing = [s for s in samples if s.image not in table]
    if missing:
        raise DataError([Problem("split-mismatch", str(path), None,
                                 f"image {s.image} is not in the split file") for s in missing],
                        hint="The split file was written for another dataset; drop --split-file to make a new split.")
    for s in samples:
        s.split = table[s.image]
