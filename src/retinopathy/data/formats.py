"""Reading the label formats that DR datasets come in, and finding their images.

Formats (``format=``):

``lab``      the course lab's header-less pairs ``train_img.csv``/``train_label.csv`` and
             ``test_img.csv``/``test_label.csv`` (one value per line, labels on the matching line);
``kaggle``   ``trainLabels.csv`` or ``labels.csv`` with columns ``image,level``;
``csv``      any CSV with a header, given the image and label columns (APTOS: ``train.csv``, ``id_code,diagnosis``);
``folders``  one folder per grade, ``0/`` ... ``4/`` (searched recursively); in ``train/``, with ``val/`` and/or
             ``test/`` beside it, those are the splits (torchvision's ``ImageFolder`` layout).

:func:`read_catalog` detects the format from what is in the folder, reads every row, checks labels,
and finds each image by name under the image root (trying ``.jpeg .jpg .png .tif .tiff .bmp .webp .jfif .jpe``); a
name holding a path (``train_images/1_left.jpeg``) is looked up as written under the image root, then relative to the
dataset folder, then by its file name under the image root (a :class:`~retinopathy.errors.DataWarning` when that
finds it in a folder named otherwise). It never raises for bad rows: it returns them as
:class:`~retinopathy.data.problems.Problem` records.
"""
from __future__ import annotations

import csv
import io
import os
import re
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataWarning
from .images import IMAGE_EXTENSIONS, NOT_UTF8, hidden, image_files, index_images, indexed, not_utf8
from .problems import DataError, Problem

GRADES = (0, 1, 2, 3, 4)
GRADE_NAMES = ["none", "mild", "moderate", "severe", "proliferative"]  # the international clinical scale
FORMATS = ("lab", "kaggle", "csv", "folders")
LAB_FILES = {"train": ("train_img.csv", "train_label.csv"), "test": ("test_img.csv", "test_label.csv")}
KAGGLE_LABELS = ("trainLabels.csv", "labels.csv")
IMAGE_SUBDIRS = ("", "images", "train", "train_images")
GRADE_ROOTS = ("", "train", "images")  # where grade folders 0/ ... 4/ are looked for, in this order
_EYE = re.compile(r"^(?P<patient>.+)_(?P<eye>left|right)$", re.IGNORECASE)
_GRADE = re.compile(r"([0-9]+)(?:\.0+)?")  # ASCII digits only: not '²', which str.isdigit() accepts
_GRADE_LIKE = re.compile(r"\s*(?:(?:grade|level|class)[\s_-]*)?(?P<number>[+-]?[0-9]+(?:\.[0-9]*)?)\s*",
                         re.IGNORECASE)  # a folder named as a number: 5/, -1/, 2.0/, " 3", grade_2/, "Grade 2"/


@dataclass
class Sample:
    """One labelled photograph."""

    image: str  # the name as written in the labels (e.g. "10_left")
    label: int
    patient: str
    source: str  # labels file (the lab's *_img.csv; or grade folder) that names it
    line: int | None  # 1-based line in ``source``
    split: str | None = None  # split given by the source (lab: train/test)
    path: str | None = None  # the image file, once found


@dataclass
class Catalog:
    """Everything read from a dataset folder: samples, where they came from, and problems."""

    format: str
    root: Path
    labels: list[Path]
    image_root: Path | None
    samples: list[Sample]
    problems: list[Problem] = field(default_factory=list)


def base_name(image: str) -> str:
    """The file name in a name that holds a path: ``train_images/1_left.jpeg`` (or ``\\``) -> ``1_left.jpeg``."""
    return re.split(r"[\\/]", image)[-1]


def without_extension(image: str) -> str:
    """``1_left.jpeg`` -> ``1_left``; a name without an image extension (``1_left``, ``1.5_left``) stays as it is."""
    suffix = Path(base_name(image)).suffix
    return image[:-len(suffix)] if suffix.lower() in IMAGE_EXTENSIONS else image


def _patient_and_eye(image: str) -> tuple[str, str | None]:
    """(patient, 'left' / 'right' or None) as a name says them: ``10_left`` (or ``train_images/10_left.jpeg``),
    ``p7/left.jpeg`` (a folder per patient), ``left/7.jpeg`` (a folder per eye); any other name is its own
    patient, its path included (``train/1`` and ``val/1`` are two)."""
    name = unicodedata.normalize("NFC", without_extension(image).replace("\\", "/"))  # one patient in NFC and NFD
    if m := _EYE.match(base_name(name)):
        return m.group("patient"), m.group("eye").lower()
    *folders, stem = name.split("/")
    if folders and stem.lower() in ("left", "right"):
        return "/".join(folders), stem.lower()
    if folders and folders[-1].lower() in ("left", "right"):
        return "/".join(folders[:-1] + [stem]), folders[-1].lower()
    return name, None


def eye_of(image: str) -> str | None:
    """'left' or 'right' as :func:`patient_of` reads the name (``10_left``, ``p7/left``, ``left/7``), else None."""
    return _patient_and_eye(image)[1]


def patient_of(image: str) -> str:
    """``10_left`` (or ``train_images/10_left.jpeg``) -> ``10``; ``p7/left.jpeg`` -> ``p7`` (a folder per
    patient); ``left/7.jpeg`` -> ``7`` (a folder per eye); any other name is its own patient, its path included
    (``train/1`` and ``val/1`` are two)."""
    return _patient_and_eye(image)[0]


def parse_label(text: str) -> int | None:
    """The grade 0-4 written as an integer or a whole-number float (pandas writes ``2.0`` in a column that held
    NaN), else None."""
    m = _GRADE.fullmatch(text.strip())
    return int(m[1]) if m and int(m[1]) in GRADES else None


def detect_format(data: Path) -> tuple[str, Path]:
    """Return (format, labels path) for a dataset folder, or raise a DataError that says what was looked for."""
    if (data / "train_img.csv").exists() or (data / "test_img.csv").exists():
        return "lab", data
    for name in KAGGLE_LABELS:
        if (data / name).exists():
            return "kaggle", data / name
    if (data / "train.csv").exists():
        return "csv", data / "train.csv"
    folders = grade_folders(data, every_grade=True)
    if folders is not None:
        return "folders", folders
    some = grade_folders(data, every_grade=False)  # a folder per grade, not every grade: said, not guessed
    found = f"; {some} holds {', '.join(f'{g}/' for g in GRADES if (some / str(g)).is_dir())} only" if some else ""
    raise DataError([Problem("unknown-format", str(data), None,
                             "no known dataset layout here: expected the lab's train_img.csv/train_label.csv "
                             "(+ test_*), trainLabels.csv or labels.csv (image,level), train.csv "
                             f"(id_code,diagnosis), or folders 0/ ... 4/ (all five){found}")],
                    hint=("Pass --format folders to read the grade folders there are (in Python: format='folders')."
                          if some else "Pass --format, --labels, --image-col/--label-col or --images to say what it "
                          "is (in Python: format=, labels=, image_col=, label_col=, images=)."))


def _columns(format: str, image_col: str | None, label_col: str | None, header=frozenset()) -> tuple[str, str]:
    """The image and label columns a header CSV of ``format`` is read by, unless named: Kaggle's image,level,
    APTOS' id_code,diagnosis (the format's own first); a column left unnamed beside a named one is the first of
    these the ``header`` has (``--image-col image`` on Kaggle's file reads its ``level``)."""
    pairs = [("image", "level"), ("id_code", "diagnosis")][::1 if format == "kaggle" else -1]
    image = next((i for i, _ in pairs if i in header), pairs[0][0])
    label = next((g for _, g in pairs if g in header), pairs[0][1])
    return image_col or image, label_col or label


def _labels_file(format: str, data: Path, columns: tuple = ()) -> Path:
    """The labels CSV of ``format`` in ``data`` (the course lab's folder also holds Kaggle's trainLabels.csv), in
    detection's order, the first whose header has ``columns`` where one has; else the one detection finds."""
    names = {"kaggle": KAGGLE_LABELS, "csv": (*KAGGLE_LABELS, "train.csv")}.get(format, ())
    files = [data / n for n in names if (data / n).is_file()]
    fitting = [f for f in files if set(columns) <= _header(f)]
    return (fitting or files or [detect_format(data)[1]])[0]


def grade_folders(data: Path, every_grade: bool) -> Path | None:
    """The first of ``data``, ``data/train``, ``data/images`` holding grade folders ``0/`` ... ``4/`` (all five
    with ``every_grade``, else any), or None."""
    for folder in (data / sub for sub in GRADE_ROOTS):
        if (all if every_grade else any)((folder / str(g)).is_dir() for g in GRADES):
            return folder
    return None


def _header(path: Path) -> set[str]:
    """The column names on a CSV's first line; none where it cannot be read (it is read again, and reported)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # blank lines above the header are no header
            return {h.strip() for h in next((r for r in csv.reader(f) if any(c.strip() for c in r)), [])}
    except (OSError, UnicodeDecodeError, csv.Error):
        return set()


def _csv_format(path: Path) -> str:
    """The format of a labels file named without columns: 'csv' for APTOS' id_code,diagnosis, else 'kaggle'."""
    return "csv" if {"id_code", "diagnosis"} <= _header(path) else "kaggle"


def _read_text(path: Path) -> str:
    """A labels file's text with its lines ended by ``\\n`` (from ``\\r\\n``, ``\\r`` alone, or the ``\\r\\r\\n`` of a
    CSV written in text mode on Windows), or a DataError naming the file that cannot be read or the line with a
    byte that is not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as e:  # a folder, no permission, an I/O error (read() names no file)
        raise DataError([Problem("unreadable", str(path), None, f"cannot be read: {e.strerror or e}")]) from None
    try:
        return re.sub(r"\r*\n|\r", "\n", data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        line = e.object.count(b"\n", 0, e.start) + 1
        raise DataError([Problem("not-utf8", str(path), line,
                                 f"byte {e.object[e.start]:#04x} is not UTF-8 (the file is in another "
                                 "encoding, e.g. Excel's cp1252/Latin-1 or UTF-16)")],
                        hint="Re-save the labels file as UTF-8 (in Excel: Save As > CSV UTF-8).") from None


def _read_lines(path: Path) -> list[str]:
    lines = _read_text(path).split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _checked_label(name: str, text: str, name_file: Path, label_file: Path, line: int,
                   problems: list[Problem]) -> int | None:
    """The grade of one row, or None after recording why the row is unusable."""
    if not name:
        problems.append(Problem("bad-row", str(name_file), line, "empty image name"))
        return None
    label = parse_label(text)
    if label is None:
        row_index = re.fullmatch(r"\s*[0-9]+\s*,.*", text) and parse_label(text.split(",", 1)[1]) is not None
        problems.append(Problem("bad-label", str(label_file), line,
                                f"label {text.strip()!r} for {name} is not an integer 0-4" + (
                                    " (pandas' row index before the grade? write the lab's CSVs with "
                                    "to_csv(..., header=False, index=False))" if row_index else ""), name))
    return label


def _lab_header_advice(img_file: Path, names: list[str], label_file: Path, labels: list[str]) -> tuple[str, bool]:
    """What to say of header lines in the lab's CSVs (pandas' ``to_csv`` writes ``image`` and ``level``), which have
    none, and whether both files have one (their line 1 is then no row). A line 1 of letters counts as a header when
    the other file has one too, or one line fewer; a label's, only when it is no grade."""
    word = [bool(lines) and bool(re.fullmatch(r"[A-Za-z_ -]+", lines[0].strip())) for lines in (names, labels)]
    word[1] = word[1] and parse_label(labels[0]) is None  # "abc_left" with its grade is a row
    one_more = (len(names) == len(labels) + 1, len(labels) == len(names) + 1)
    headers = [f"{f.name}'s line 1, {lines[0].strip()!r}," for k, (f, lines) in enumerate(
        ((img_file, names), (label_file, labels))) if word[k] and (word[1 - k] or one_more[k])]
    if not headers:
        return "", False
    return (f"{' and '.join(headers)} look{'s' if len(headers) == 1 else ''} like a header: the lab's CSVs have "
            "none; remove it (pandas: to_csv(..., header=False, index=False))",
            len(headers) == 2 and len(names) == len(labels))


def _unquoted(line: str) -> str:
    """A line of the lab's one-column CSVs as its value: stripped, and without the quotes a CSV writer may put
    around it (R's ``write.csv``: ``"1_left"``)."""
    line = line.strip()
    return line[1:-1].replace('""', '"').strip() if len(line) > 1 and line[0] == line[-1] == '"' else line


def _read_lab(folder: Path, problems: list[Problem]) -> list[Sample]:
    samples = []
    for split, (img_name, label_name) in LAB_FILES.items():
        img_file, label_file = folder / img_name, folder / label_name
        if not img_file.exists() and not label_file.exists():
            continue
        if not img_file.exists() or not label_file.exists():
            missing = img_file if not img_file.exists() else label_file
            problems.append(Problem("missing-file", str(missing), None,
                                    f"{missing.name} is missing; the lab format needs both "
                                    f"{img_name} and {label_name}"))
            continue
        names, labels = ([_unquoted(line) for line in _read_lines(f)] for f in (img_file, label_file))
        if not names and not labels:
            problems.append(Problem("empty", str(img_file), None, f"{img_name} and {label_name} are empty: the "
                                    f"{split} split has no images; write an image name a line in {img_name} and its "
                                    f"grade on the same line of {label_name}" + (
                                        ", or remove both (a test split is then carved from train)"
                                        if split == "test" else "")))
            continue
        advice, both = _lab_header_advice(img_file, names, label_file, labels)
        if len(names) != len(labels):
            problems.append(Problem("length-mismatch", str(label_file), None,
                                    f"{img_name} has {len(names)} lines but {label_name} has {len(labels)}; "
                                    "each image needs its label on the same line" + (f"; {advice}" if advice else "")))
        for i, (name, text) in enumerate(zip(names, labels), start=1):
            if i == 1 and both:
                problems.append(Problem("bad-row", str(label_file), 1, advice, name))
                continue
            label = _checked_label(name, text, img_file, label_file, i, problems)
            if label is not None:
                samples.append(Sample(name, label, patient_of(name), str(img_file), i, split))
    return samples


def _header_advice(header: list[str], columns: list[str]) -> str:
    """What to do about a first line without the columns a header CSV needs."""
    if not header:
        return f"the file is empty: write a header line ({','.join(columns)}) and a row per image"
    separator = next((c for c in ";\t|" if len(header) == 1 and c in header[0]), None)
    if separator:
        return (f"the header is {header}: the file is separated by {separator!r}, not commas; re-save it "
                "comma-separated")
    if len(header) > 1 and _GRADE.fullmatch(header[-1].strip()):
        return (f"the first line, {','.join(header)}, looks like a row, not a header: add a header line "
                f"({','.join(columns)}) above it")
    return f"the header is {header}. Name the columns with --image-col and --label-col (and --patient-col)"


def _read_header_csv(path: Path, image_col: str, label_col: str, patient_col: str | None,
                     problems: list[Problem]) -> list[Sample]:
    samples = []
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    rows = []  # (the line a row starts on, the line it ends on, its fields)
    try:
        for row in reader:
            rows.append((rows[-1][1] + 1 if rows else 1, reader.line_num, row))
    except csv.Error as e:
        raise DataError([Problem("bad-csv", str(path), reader.line_num, f"not a readable CSV file ({e})")],
                        hint="Re-save it as a plain comma-separated UTF-8 file.") from None
    while rows and not any(cell.strip() for cell in rows[0][2]):
        rows.pop(0)  # blank lines above the header
    header = [h.strip() for h in rows[0][2]] if rows else []
    folded = Counter(h.casefold() for h in header)  # Image,Level: Kaggle's columns, capitalised (one of each)
    image_col, label_col, patient_col = (next((h for h in header if folded[h.casefold()] == 1 and h.casefold() ==
                                               c.casefold()), c) if c and c not in header else c
                                         for c in (image_col, label_col, patient_col))
    missing = [c for c in (image_col, label_col, patient_col) if c and c not in header]
    if missing:
        problems.append(Problem("bad-header", str(path), rows[0][0] if rows else 1,
                                f"column(s) {missing} not found; " + _header_advice(header, [image_col, label_col])))
        return samples
    twice = [c for c in (image_col, label_col, patient_col) if c and header.count(c) > 1]
    if twice:
        problems.append(Problem("bad-header", str(path), rows[0][0], f"column(s) {twice} appear more than once in "
                                f"the header {header}: which one is meant is unknown; rename or remove the others"))
        return samples
    ci, cl = header.index(image_col), header.index(label_col)
    cp = header.index(patient_col) if patient_col else None
    for line, last, row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue
        read = [row[c] for c in (ci, cl, cp) if c is not None and c < len(row)]
        if last > line and (len(row) != len(header) or any("\n" in cell or "\r" in cell for cell in read)):
            problems.append(Problem("bad-row", str(path), line, f"a quoted field runs from here to line {last}, "
                                    f"so lines {line}-{last} read as one row: remove the stray '\"' (or close it)"))
            continue  # (a closed quote around other text over several lines, a note say, is a row as any other)
        if len(row) != len(header):
            problems.append(Problem("bad-row", str(path), line,
                                    f"{len(row)} fields where the header has {len(header)}"))
            continue
        name = row[ci].strip()
        label = _checked_label(name, row[cl], path, path, line, problems)
        if label is None:
            continue
        patient = unicodedata.normalize("NFC", row[cp].strip()) if cp is not None else patient_of(name)
        if not patient:
            problems.append(Problem("bad-row", str(path), line, f"empty {patient_col!r} (patient) for {name}; fill "
                                    "it in, or leave out --patient-col to take patients from the image names",
                                    name))
            continue
        samples.append(Sample(name, label, patient, str(path), line))
    return samples


def _read_folders(folder: Path, problems: list[Problem], split: str | None = None) -> list[Sample]:
    """The images under ``folder/0`` ... ``folder/4``, searched recursively as torchvision's ``ImageFolder`` does,
    named by their path below the grade folder without extension (after ``split/`` when the split has a folder
    of its own, so that ``train/0/1.png`` and ``val/0/1.png`` stay two images); a folder named like another grade
    (``5/``, ``-1/``, ``grade_2/``) that holds images is a problem, since they would be left out silently, and so
    is one of another grade in a grade folder (:func:`_nested_grades`), since they would read as the outer grade."""
    samples, files = [], {grade: image_files(folder / str(grade)) for grade in GRADES}
    nested = _nested_grades(folder, files)
    for grade in GRADES:
        sub = folder / str(grade)
        for f in files[grade]:
            if (grade, f.relative_to(sub).parts[0]) in nested:
                continue
            if not_utf8(f.relative_to(sub)):  # the dataset's own folder was checked
                problems.append(Problem("bad-name", not_utf8(f), None, NOT_UTF8 + ", or use --skip-bad to drop it"))
                continue
            name = f.relative_to(sub).with_suffix("").as_posix()
            image = f"{split}/{name}" if split else name
            patient, eye = _patient_and_eye(name)  # an eye's name or folder (train/p7/left, val/p7/right: p7)
            samples.append(Sample(image, grade, patient if eye else patient_of(image), str(sub), None, split,
                                  path=str(f)))
    for (grade, inner), count in sorted(nested.items()):
        named = parse_label(_number(inner))
        problems.append(Problem("bad-label", str(folder / str(grade) / inner), None,
                                f"folder {grade}/{inner}/ is named as grade {named} but is in grade folder {grade}/: "
                                f"its {count} image(s) are not used (they would read as grade {grade}); move them "
                                f"into {folder / str(named)} if they are grade {named}, or rename the folder if "
                                f"{inner} is no grade"))
    for other in sorted(folder.iterdir()) if folder.is_dir() else []:
        number = _number(other.name) if other.is_dir() and other.name not in map(str, GRADES) else None
        if number is not None and (count := len(image_files(other))):
            grade = parse_label(number)
            advice = (f"rename it {grade}/" if grade is not None and not (folder / str(grade)).exists() else
                      f"move them into {grade}/" if grade is not None else
                      "move them into the folder of their grade, or remove it")
            problems.append(Problem("bad-label", str(other), None, f"folder {other.name!r} is not a grade folder "
                                    f"0/ ... 4/: its {count} image(s) are not used; {advice}"))
    return samples


def _nested_grades(folder: Path, files: dict[int, list[Path]]) -> dict[tuple[int, str], int]:
    """{(grade, folder in it): its image count} for the folders directly in a grade folder that are named as
    another grade (``0/2/``, all of ``4/`` moved into ``0/4/``); none where the numbered folders there are something
    else: not all grades (``0/3/``, ``0/17/``: patients' numbers), or a name in several grade folders (visits ``1/``
    and ``2/`` in each)."""
    inner = Counter((grade, f.relative_to(folder / str(grade)).parts[0]) for grade in GRADES for f in files[grade]
                    if len(f.relative_to(folder / str(grade)).parts) > 1)
    numbered = {key: parse_label(number) for key in inner if (number := _number(key[1])) is not None}
    names = Counter(name for _, name in numbered)
    if None in numbered.values() or any(n > 1 for n in names.values()):
        return {}
    return {key: inner[key] for key, named in numbered.items() if named != key[0]}


def _number(name: str) -> str | None:
    """The number a folder is named as (``5``, ``-1``, ``2.0``, `` 3``, ``grade_2``, ``Grade 2``), else None."""
    m = _GRADE_LIKE.fullmatch(name)
    return m["number"] if m else None


def _unread_grade_trees(data: Path, read: list[Path]) -> list[Problem]:
    """A problem for each folder beside the ``read`` ones (``DATA`` or one of its folders) that holds grade folders
    with images, which would be left out silently: ``DATA/test/0/`` beside ``DATA/0/``, ``valid/`` beside ``train/``."""
    problems, real = [], [folder.resolve() for folder in read]  # DATA relative, --labels absolute: one folder
    for other in [data, *sorted(p for p in data.iterdir() if p.is_dir() and not hidden(p.name))]:
        if other.resolve() in real or (other.parent.resolve() in real and other.name in map(str, GRADES)):
            continue
        count = sum(len(image_files(other / str(g))) for g in GRADES if (other / str(g)).is_dir())
        if not count:
            continue
        advice = ("only train/, val/ and test/ are read; rename it val/ or test/, or remove it"
                  if real[0] == (data / "train").resolve() else
                  f"the grade folders read are {read[0]}'s; move them there, pass {other} as the dataset, or "
                  "remove it")
        problems.append(Problem("bad-label", str(other), None, f"folder {other.name}/ holds grade folders whose "
                                f"{count} image(s) are not used: {advice}"))
    return problems


def split_folders(data: Path, grades: Path) -> dict[str, Path]:
    """ImageFolder's split layout: grade folders in ``DATA/train`` and in ``DATA/val`` and/or ``DATA/test``:
    {split: folder}; else {} (one folder, split by patient)."""
    if grades.resolve() != (data / "train").resolve():
        return {}
    given = {sp: data / sp for sp in ("val", "test") if any((data / sp / str(g)).is_dir() for g in GRADES)}
    return {"train": grades, **given} if given else {}


def _find_image_root(data: Path, images: Path | None, samples: list[Sample],
                     indexes: dict[Path, dict[str, str]]) -> Path | None:
    """``images``, else the folder of IMAGE_SUBDIRS that holds the most of the listed images (the first on a tie:
    a stray picture in ``data`` does not hide ``data/images/``); ``indexes`` keeps the folders' indexes."""
    if images is not None:
        if not images.is_dir():
            raise DataError([Problem("missing-folder", str(images), None, "image folder (--images) " + (
                "is a file, not a folder" if images.exists() else "not found"))],
                            hint="Pass the folder that holds the image files.")
        return images
    best, most = None, -1
    for sub in IMAGE_SUBDIRS:
        folder = data / sub
        index = _index(folder, indexes)
        if index:
            found = sum(indexed(index, base_name(s.image)) is not None for s in samples)
            if found > most:
                best, most = folder, found
    return best


def _relative(image: str, data: Path) -> Path:
    """The path of a name that holds one, under ``data``; a folder in it written in another Unicode normal form
    than the one on disk (macOS writes NFD) is the one on disk, as file names are (:func:`index_images`)."""
    written = image.replace("\\", "/")
    *folders, name = written.split("/")
    path = data / "/" if written.startswith("/") else data  # an absolute name is itself
    for part in folders:
        if part and not part.isascii() and not (path / part).is_dir():  # ASCII reads the same in every form
            want = unicodedata.normalize("NFC", part)
            try:
                part = next((e.name for e in os.scandir(path) if unicodedata.normalize("NFC", e.name) == want), part)
            except OSError:  # not there, or not readable: the name as written, reported missing
                pass
        path = path / part
    return path / name


def _find_image(image: str, data: Path, image_root: Path | None,
                indexes: dict[Path, dict[str, str]]) -> tuple[Path | None, bool]:
    """The file of ``image``: its name as written under ``image_root`` (on Linux ``\\`` may be part of a file
    name; a path, below it), then a name holding a path relative to ``data``, then its file name under
    ``image_root``; and whether that last found it in a folder named otherwise than the name's last
    (:func:`_same_folder`). ``indexes`` keeps each folder's :func:`index_images`."""
    name = base_name(image)
    tries = [(image_root, image, False)] if image_root else []
    if name != image:
        tries += [(path.parent, name, False) for path in _paths(image, data, image_root)]
        tries += [(image_root, name, True)] if image_root else []
    for folder, key, by_name in tries:
        found = indexed(_index(folder, indexes), key)
        if found:
            return folder / found, by_name and not _same_folder(image, folder)
    return None, False


def _same_folder(image: str, folder: Path) -> bool:
    """Whether the last folder in a name that holds a path is named as ``folder``, in any case or Unicode form
    (``C:\\data\\images\\1_left.jpeg``, another computer's path, and ``images/``; not ``siteB/1_left.jpeg``)."""
    listed = [f for f in re.split(r"[\\/]", image)[:-1] if f not in ("", ".")]
    if not listed:
        return True
    named, there = (unicodedata.normalize("NFC", n).casefold() for n in (listed[-1], os.path.basename(
        os.path.abspath(folder))))
    return named == there


def _paths(image: str, data: Path, image_root: Path | None) -> list[Path]:
    """Where a name holding a path may be: below ``image_root``, then below ``data`` (one place if they are one, or
    the name is absolute)."""
    return list(dict.fromkeys(_relative(image, root) for root in (image_root, data) if root))


def _index(folder: Path, indexes: dict[Path, dict[str, str]]) -> dict[str, str]:
    """:func:`index_images` of ``folder``, read once into ``indexes``."""
    if folder not in indexes:
        indexes[folder] = index_images(folder) if folder.is_dir() else {}
    return indexes[folder]


def looked_in(path: Path) -> str:
    """Where a relative ``path`` was looked for, to say beside 'not found': a relative path in a config file is
    read from the folder the command runs in, not the file's."""
    return "" if path.is_absolute() else f" (a relative path: looked for in the current folder, {Path.cwd()})"


def read_catalog(data: str | Path, *, format: str | None = None, labels: str | Path | None = None,
                 images: str | Path | None = None, image_col: str | None = None,
                 label_col: str | None = None, patient_col: str | None = None,
                 resolve: bool = True) -> Catalog:
    """Read a dataset folder in any supported format. ``resolve=False`` reads only the labels."""
    data = Path(data)
    if not data.exists():
        raise DataError([Problem("missing-folder", str(data), None, "dataset folder not found" + looked_in(data))])
    if shown := not_utf8(os.path.abspath(data)):
        raise DataError([Problem("bad-name", shown, None, "the dataset folder's path: " + NOT_UTF8)])
    if data.is_file():
        raise DataError([Problem("not-a-folder", str(data), None,
                                 f"a file, not a dataset folder: pass its folder {data.parent} as DATA")],
                        hint=f"Or pass --labels {data} with the folder that holds the dataset.")
    problems: list[Problem] = []
    labels = Path(labels) if labels else None
    chosen = labels is not None  # grade folders named by --labels elsewhere than detection looks: the user's choice
    partner = next((a if labels.name == b else b for a, b in LAB_FILES.values() if labels.name in (a, b)), None) \
        if labels is not None and labels.is_file() else None
    if partner and (labels.parent / partner).exists():
        raise DataError([Problem("lab-file", str(labels), None, "one of the course lab's paired CSVs (names in "
                                 f"*_img.csv, grades in *_label.csv): pass their folder, {labels.parent}")])
    if format is None:
        if labels is not None:
            format = "lab" if labels.is_dir() else ("csv" if image_col or label_col else _csv_format(labels))
        elif image_col or label_col:
            format, labels = "csv", _labels_file("csv", data, [c for c in (image_col, label_col) if c])
        else:
            format, labels = detect_format(data)
    elif format not in FORMATS:
        raise DataError([Problem("unknown-format", str(data), None,
                                 f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")])
    if labels is None and format == "folders":
        labels = grade_folders(data, every_grade=False) or data
    elif labels is None:
        labels = data if format == "lab" else _labels_file(format, data, _columns(format, image_col, label_col))

    label_files = [labels / f for pair in LAB_FILES.values() for f in pair if (labels / f).exists()] \
        if format == "lab" else []
    if format == "lab" and not label_files:
        try:  # a folder given as --labels, or --format lab, where the lab's CSVs are not: nothing to read row by row
            there = f"; it holds the {detect_format(labels)[0]} format: leave out --labels/--format to read it"
        except DataError:
            there = ""
        raise DataError([Problem("missing-file", str(labels), None, "no train_img.csv + train_label.csv or "
                                 f"test_img.csv + test_label.csv here (the lab format's files){there}")],
                        hint="--labels takes a labels CSV file, or the folder of the lab's CSVs")
    if format == "lab":
        samples = _read_lab(labels, problems)
    elif format == "folders":
        parts = split_folders(data, labels) or {None: labels}
        samples = [s for sp, folder in parts.items() for s in _read_folders(folder, problems, sp)]
        if labels.is_dir() and (not chosen or labels.resolve() in {(data / sub).resolve() for sub in GRADE_ROOTS}):
            problems += _unread_grade_trees(data, list(parts.values()))
        label_files = list(parts.values())
    else:
        if not labels.exists():
            raise DataError([Problem("missing-file", str(labels), None, "labels file not found")])
        if labels.is_dir():
            try:
                found = f"a folder in the {detect_format(labels)[0]} format"
            except DataError:
                found = "a folder"
            raise DataError([Problem("labels-not-file", str(labels), None,
                                     f"--format {format} reads a labels CSV file, but this is {found}")],
                            hint="Pass --labels FILE (the CSV of image names and grades), or the --format "
                                 "that fits the folder.")
        image_col, label_col = _columns(format, image_col, label_col, _header(labels))
        samples = _read_header_csv(labels, image_col, label_col, patient_col, problems)
        label_files = [labels]

    image_root = None
    if format != "folders" and resolve:
        indexes: dict[Path, dict[str, str]] = {}
        image_root = _find_image_root(data, Path(images) if images else None, samples, indexes)
        moved = []  # (sample, file) of a name found by its file name in a folder named otherwise
        for s in samples:
            path, elsewhere = _find_image(s.image, data, image_root, indexes)
            s.path = str(path) if path is not None else None
            if elsewhere:
                moved.append((s, path))
        if moved:
            warnings.warn(DataWarning(
                f"{len(moved)} listed image(s) named with a folder that is not there were found by file name in "
                f"another folder, perhaps other photographs (first: {moved[0][0].source}:{moved[0][0].line}, "
                f"{moved[0][0].image} read as {moved[0][1]}); if they are not the photographs meant, fix the paths "
                "in the labels (relative to DATA or --images)"), stacklevel=2)
    samples = _without_duplicates(samples, problems, resolved=format == "folders" or resolve)
    if format != "folders" and resolve:  # a sample whose image is missing stays, with path None, to keep its split
        problems += [_missing_image(s, data, image_root, indexes) for s in samples if s.path is None]
    if not samples and not problems:
        listed = " and ".join(f.name for f in label_files)
        problems.append(Problem("empty", str(labels), None, "the dataset has no images: " + (
            f"{listed} list{'s' if len(label_files) == 1 else ''} none" if label_files and format != "folders" else
            f"no image files in its grade folders 0/ ... 4/ ({', '.join(IMAGE_EXTENSIONS)})")))
    return Catalog(format, data, label_files, image_root, samples, problems)


def _missing_image(s: Sample, data: Path, image_root: Path | None, indexes: dict) -> Problem:
    """The problem of a listed image that is not there: where it was looked for, and what is there instead (a
    folder of that name, the name with another extension, the image in another of the usual folders)."""
    name, where = base_name(s.image), image_root or f"{data} (or its images/, train/, train_images/)"
    stem, index = without_extension(name), indexes.get(image_root) or {}
    other = indexed(index, stem)  # the same name with another extension
    candidates = [name] if stem != name else [name + e for e in IMAGE_EXTENSIONS]
    folder = next((f for f in candidates if image_root and (image_root / f).is_dir()), None)
    link = next((f for f in candidates if image_root and (image_root / f).is_symlink()), None)
    tried = (f"({folder} there is a folder, not an image file)" if folder else
             f"({link} there is a link to {os.readlink(image_root / link)}, which does not exist)" if link else
             f"(tried {', '.join(IMAGE_EXTENSIONS)})" if stem == name else
             f"({other} is there: fix the extension in the name)" if other else
             "(looked for that exact name)")
    elsewhere = next((data / sub for sub in (*IMAGE_SUBDIRS, "test", "test_images")
                      if data / sub != image_root and indexed(_index(data / sub, indexes), name)), None)
    if elsewhere is not None:  # e.g. the lab's test images kept apart in DATA/test/
        tried += (f"; it is in {elsewhere}: keep the images in one folder (or link them into one), as "
                  "one image folder serves every labels file")
    paths, roots = _paths(s.image, data, image_root), dict.fromkeys(filter(None, (image_root, data)))
    found = (f"not found in {where} {tried}; add the file" if name == s.image else
             f"not found: the name holds a path, and neither {' nor '.join(map(str, paths))} nor {name} in {where} "
             f"exists {tried}; fix the path (relative to {' or '.join(map(str, roots))}), add the file")
    return Problem("missing-image", s.source, s.line, f"image {s.image} {found}, pass --images, or use "
                   "--skip-bad to drop it", s.image)


def _without_duplicates(samples: list[Sample], problems: list[Problem], resolved: bool) -> list[Sample]:
    """The samples without rows that list an image again: the same name, or a name that leads to the same file
    (``1_left`` and ``1_left.jpeg``, a symbolic or hard link, ``./``; with no files ``resolved``, ``1_left`` and
    ``1_left.jpeg`` by their names); each dropped row becomes a problem naming the first one. Rows of one image that
    disagree on its grade are all dropped: which grade is right is unknown."""
    by_name: dict[str, Sample] = {}
    by_file: dict[tuple, Sample] = {}
    by_stem: dict[str, Sample] = {}  # a name without its extension -> its first row with one, found no file
    disputed: dict[int, tuple[Sample, Sample]] = {}  # id(first row) -> (first row, a row with another grade)
    unique = []
    for s in samples:
        same = _file_identity(s.path) if s.path else None
        bare = without_extension(s.image)  # with no files to compare (--no-images), 1_left is 1_left.jpeg's row
        first = by_name.get(s.image) or (by_file.get(same) if same else None) or (
            None if resolved else by_name.get(bare) if bare != s.image else by_stem.get(bare))
        if first is not None:
            other = f" with grade {s.label} (grade {first.label} there)" if s.label != first.label else ""
            problems.append(Problem("duplicate", _listed_in(s), s.line,
                                    f"image {s.image} is listed again{other} (first at {_place(first)}"
                                    + (f", as {first.image}" if first.image != s.image else "")
                                    + f"); remove one of the {'rows' if s.line else 'files'}"
                                    + (", keeping the right grade" if other else ""), s.image))
            if other:
                disputed.setdefault(id(first), (first, s))
            continue
        by_name[s.image] = s
        if same:
            by_file[same] = s
        elif bare != s.image and not resolved:
            by_stem.setdefault(bare, s)
        unique.append(s)
    for first, other in disputed.values():
        problems.append(Problem("duplicate", _listed_in(first), first.line,
                                f"image {first.image} has grade {first.label} here and {other.label} at "
                                f"{_place(other)}: neither is used until one is removed", first.image))
    return [s for s in unique if id(s) not in disputed]


def _place(sample: Sample) -> str:
    """Where a row is, for a message: ``labels.csv:12``, or the file of a grade folder's image."""
    return f"{Path(sample.source).name}:{sample.line}" if sample.line else sample.path


def _listed_in(sample: Sample) -> str:
    """The file a problem with ``sample`` names: its labels file, or (grade folders) the image itself."""
    return sample.source if sample.line else sample.path or sample.source


def _file_identity(path: str) -> tuple:
    """What makes two paths one file: its device and inode (through symbolic and hard links alike)."""
    try:
        st = os.stat(path)
    except OSError:
        st = None
    return (st.st_dev, st.st_ino) if st is not None and st.st_ino else (os.path.realpath(path),)  # 0: no inodes
