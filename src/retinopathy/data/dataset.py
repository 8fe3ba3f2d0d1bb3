"""``FundusDataset``: a ``torch.utils.data.Dataset`` over any supported DR dataset folder."""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..errors import DataWarning
from ..progress import progress_bar
from .formats import GRADE_NAMES, GRADES, IMAGE_SUBDIRS, Catalog, Sample, read_catalog
from .images import ImageError, check_image, index_images
from .problems import DataError, Problem, refuse_misaligned
from .splits import SPLIT_DEFAULTS, SPLITS, assign_splits, leakage_warnings, read_split, select, write_split
from .transforms import Preprocessing, build_transform, geometry, to_tensor


def load_catalog(data: str | Path, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                 split_file: str | Path | None = None, resolve: bool = True, **read_options) -> Catalog:
    """Read a dataset folder and give every sample its split (by patient, deterministic)."""
    catalog = read_catalog(data, resolve=resolve, **read_options)
    if split_file:
        read_split(catalog.samples, split_file)
    else:
        assign_splits(catalog.samples, val_fraction, test_fraction, seed)
    return catalog


class FundusDataset(Dataset):
    """Labelled fundus photographs from a dataset folder, as ``(image_tensor, grade)`` pairs.

    >>> ds = FundusDataset("../shared/data/fundus-real", split="all", image_size=512)
    >>> image, grade = ds[0]; ds.image_id(0), ds.patient_id(0)

    ``data`` is any folder :func:`~retinopathy.data.formats.read_catalog` reads (or a ``Catalog``).
    ``split`` is ``train``, ``val``, ``test`` or ``all``. Problems (missing, empty, unreadable or
    truncated images, bad labels, mismatched CSVs, duplicates; found from headers and end markers) raise a
    :class:`DataError` here, at construction, naming the first few and the count; ``skip_bad=True`` drops them
    and keeps the list in ``self.skipped``. A file broken inside its compressed data fails when first read
    (naming its labels row), or here with ``cache=True``. ``transform`` defaults to the preset named by
    ``preprocess``/``augment``; ``crop`` makes training items random ``crop x crop`` windows of the
    ``image_size`` px image. ``preprocess`` may be a checkpoint's :class:`Preprocessing` (its size and
    normalisation statistics then replace ``image_size`` and the preset's).

    ``cache=True`` (with the preset transform) decodes each photograph and applies the deterministic
    steps (field-of-view crop, resize, Graham's normalisation) once, here, keeping ``size x size x 3``
    bytes per image in memory; items then run only the random augmentation, as MONAI's ``CacheDataset``
    does. Items are the same as without the cache; its full decode also reports (and with ``skip_bad`` drops)
    files that decode only partly; ``progress`` shows a progress bar meanwhile.
    """

    def __init__(self, data: str | Path | Catalog, split: str = "train", *, image_size: int = 512,
                 preprocess: str | Preprocessing = "lab", augment: str = "flips", crop: int | None = None,
                 train: bool | None = None,
                 transform: Callable | None = None, uint8: bool = False, skip_bad: bool = False,
                 check: bool = True, cache: bool = False, progress: bool = True,
                 val_fraction: float = SPLIT_DEFAULTS["val_fraction"],
                 test_fraction: float = SPLIT_DEFAULTS["test_fraction"],
                 seed: int = SPLIT_DEFAULTS["split_seed"], split_file: str | Path | None = None, **read_options):
        given = {"val_fraction": val_fraction != SPLIT_DEFAULTS["val_fraction"],
                 "test_fraction": test_fraction != SPLIT_DEFAULTS["test_fraction"],
                 "seed": seed != SPLIT_DEFAULTS["split_seed"], "split_file": split_file is not None,
                 **{k: True for k in read_options}}
        if isinstance(data, Catalog) and any(given.values()):
            raise ValueError(f"{', '.join(k for k, v in given.items() if v)}: options of reading a folder, and this "
                             "Catalog was read already; pass them to load_catalog, or pass the folder here")
        catalog = data if isinstance(data, Catalog) else load_catalog(
            data, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, split_file=split_file,
            **read_options)
        if split != "all" and any(s.split is None for s in catalog.samples):
            raise ValueError(f"split {split!r}: this Catalog's samples have no splits (read_catalog reads labels "
                             "only); pass the folder, or a Catalog from load_catalog, or split='all'")
        if catalog.samples and not any(s.path for s in catalog.samples) \
                and not any(p.kind == "missing-image" for p in catalog.problems):
            raise ValueError("this Catalog holds labels only (read with resolve=False: no image was looked for); "
                             "read it with resolve=True, or pass the folder")
        self.catalog = catalog
        self.split = split
        found = [s for s in catalog.samples if s.path]  # rows whose image is missing are in no split's images
        self.warnings = leakage_warnings(found) if split != "all" else []
        for w in self.warnings:
            warnings.warn(w, DataWarning, stacklevel=2)
        samples = select(catalog.samples, split)
        # Problems of rows in other splits belong to those splits; rows that never became samples
        # (bad labels, duplicates, mismatched files) concern every split.
        mine = {id(s) for s in samples}
        others = {(s.source, s.line) for s in catalog.samples if id(s) not in mine}
        problems = [p for p in catalog.problems if (p.file, p.line) not in others]
        samples = [s for s in samples if s.path]
        if check:
            samples, bad = _check_files(samples)
            problems += bad
        refuse_misaligned(problems)
        self.preprocessing = (preprocess if isinstance(preprocess, Preprocessing)
                              else Preprocessing(preprocess, image_size))
        from .prepare import copy_warnings  # here: prepare's module imports the command line's options

        for w in copy_warnings(catalog.root, self.preprocessing):
            warnings.warn(w, DataWarning, stacklevel=2)
        self.cache = None
        if cache and transform is None and (skip_bad or not problems):
            samples, self.cache, bad = _decode_all(samples, self.preprocessing, split, progress)
            problems += bad
        here = listed_here(catalog, len(found))
        if problems and not skip_bad:
            raise DataError(problems, hint=here + (
                "Fix the files, or pass --skip-bad (in Python: skip_bad=True) to drop them." if found else ""))
        if not samples:  # said first: with --skip-bad, the cause of what it dropped
            present = sorted({s.split for s in found}, key=SPLITS.index)
            raise DataError([Problem("empty", str(catalog.root), None, f"no images in split {split!r}" + (
                f": --skip-bad (skip_bad=True) dropped all {len(problems):,} of its rows" if problems else
                f" (the splits here: {', '.join(present)})" if present else ""))] + problems, hint=here.strip())
        self.skipped = problems
        self.samples: list[Sample] = samples
        self.train = split == "train" if train is None else train
        if self.cache is not None:
            transform = v2.Compose(to_tensor(self.preprocessing, self.train, augment, uint8, crop))
        self.transform = transform or build_transform(self.preprocessing, self.train, augment, uint8, crop)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        s = self.samples[index]
        if self.cache is not None:
            return self.transform(Image.fromarray(self.cache[index])), s.label
        try:
            image = self.preprocessing.open(s.path)
        except ImageError as e:  # corrupt scan data: the start-up check reads headers and end markers only
            where = f"{s.source}:{s.line}" if s.line else s.source
            raise ImageError(s.path, f"{e.reason} ({where}). `retinopathy data check` decodes every "
                                     "image and lists the bad ones: fix or remove them (in training, "
                                     "--cache-images --skip-bad also decodes every image at start-up and drops "
                                     "the bad ones)") from None
        return self.transform(image), s.label

    def image_id(self, index: int) -> str:
        return self.samples[index].image

    def patient_id(self, index: int) -> str:
        return self.samples[index].patient

    @property
    def classes(self) -> list[str]:
        """The name of each class index (grade), as torchvision's ImageFolder has them."""
        return list(GRADE_NAMES)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: grade for grade, name in enumerate(GRADE_NAMES)}

    @property
    def targets(self) -> list[int]:
        return [s.label for s in self.samples]

    @property
    def patients(self) -> list[str]:
        """Each item's patient (the groups that :func:`~retinopathy.evaluation.bootstrap_ci` resamples)."""
        return [s.patient for s in self.samples]

    def class_counts(self) -> list[int]:
        counts = Counter(self.targets)
        return [counts.get(g, 0) for g in GRADES]

    def write_split(self, path: str | Path) -> None:
        write_split(self.catalog.samples, path)


def listed_here(catalog: Catalog, found: int) -> str:
    """How much of the listing (every split's) the image folder holds, when not all of it; when none, where to
    look: a folder of :data:`IMAGE_SUBDIRS` below it that holds images (an ``--images`` one level up)."""
    listed, root = len(catalog.samples), Path(catalog.image_root or catalog.root)
    if found == listed:
        return ""
    if found:
        return f"{found:,} of the {listed:,} listed images are in {root}. "
    below = [root / sub for sub in IMAGE_SUBDIRS if sub and (root / sub).is_dir() and index_images(root / sub)]
    return (f"None of the {listed:,} listed images is in {root}" + (f"; {below[0]} holds images" if below else "")
            + ": pass the folder that holds them as --images (in Python: images=). ")


def _check_files(samples: list[Sample]) -> tuple[list[Sample], list[Problem]]:
    good, bad = [], []
    for s in samples:
        try:
            check_image(s.path)
            good.append(s)
        except ImageError as e:
            bad.append(Problem.bad_image(s, e))
    return good, bad


def _decode_all(samples: list[Sample], prep: Preprocessing, split: str, progress: bool):
    """(samples that decode, their deterministic steps' output as one uint8 array, problems of the rest).

    The array is allocated once and filled image by image, so building it needs its own size in memory, not twice.
    """
    fixed, good, cache, bad = v2.Compose(geometry(prep)), [], None, []
    for s in progress_bar(samples, enabled=progress, desc=f"caching {split}", unit="img", leave=False):
        try:
            array = np.asarray(fixed(prep.open(s.path)))
        except ImageError as e:
            bad.append(Problem.bad_image(s, e))
            continue
        if cache is None:
            cache = np.empty((len(samples), *array.shape), np.uint8)
        cache[len(good)] = array
        good.append(s)
    return good, None if cache is None else cache[:len(good)], bad


class PairedEyes(Dataset):
    """Each item of ``dataset`` with the other eye of the same patient: ``(stack([eye, other]), grade)``.

    The grade is the first eye's. A patient with one eye in the split pairs that eye with itself.
    Everything else (``samples``, ``preprocessing``, ``class_counts`` ...) is the wrapped dataset's.
    """

    def __init__(self, dataset: FundusDataset):
        self.dataset = dataset
        by_patient: dict[str, list[int]] = {}
        for i, s in enumerate(dataset.samples):
            by_patient.setdefault(s.patient, []).append(i)
        self.partner = []
        for i, s in enumerate(dataset.samples):
            others = [j for j in by_patient[s.patient] if j != i]
            self.partner.append(others[0] if others else i)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        import torch

        image, grade = self.dataset[index]
        other, _ = self.dataset[self.partner[index]]
        return torch.stack([image, other]), grade

    def __getattr__(self, name):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
