"""Every supported dataset format, read from small files the tests write, plus the real lab CSVs."""
from __future__ import annotations

import os
import shutil
import unicodedata
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinopathy.data import DataError, FundusDataset, load_catalog, read_catalog
from retinopathy.data.images import ImageError, check_image, open_image
from retinopathy.data.splits import SplitError, leakage_warnings, shared_patients, write_split
from retinopathy.errors import DataWarning


def disc(path, size=48, color=(180, 80, 40), mode="RGB", fmt=None):
    img = Image.new("RGB", (size, size))
    from PIL import ImageDraw

    ImageDraw.Draw(img).ellipse((2, 2, size - 2, size - 2), fill=color)
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def make_kaggle(root, n_patients=10, ext=".jpeg", labels_name="trainLabels.csv", sub=""):
    rows = []
    for p in range(n_patients):
        for eye in ("left", "right"):
            grade = (p + (eye == "right")) % 5
            disc(root / sub / f"{p}_{eye}{ext}")
            rows.append(f"{p}_{eye},{grade}")
    (root / labels_name).write_text("image,level\n" + "\n".join(rows) + "\n")
    return rows


def test_kaggle_format_detected_and_images_in_subfolder(tmp_path):
    make_kaggle(tmp_path, sub="images")
    cat = read_catalog(tmp_path)
    assert cat.format == "kaggle" and not cat.problems
    assert cat.image_root == tmp_path / "images"
    assert len(cat.samples) == 20 and all(s.path for s in cat.samples)
    assert cat.samples[0].patient == "0"


@pytest.mark.parametrize("ext", [".jpeg", ".jpg", ".png", ".tif", ".tiff"])
def test_every_extension_is_found(tmp_path, ext):
    make_kaggle(tmp_path, n_patients=2, ext=ext, labels_name="labels.csv", sub="train")
    cat = read_catalog(tmp_path)
    assert not cat.problems and all(s.path.endswith(ext) for s in cat.samples)


def test_jfif_and_jpe_files_are_jpegs(tmp_path):
    """JPEGs saved as .jfif or .jpe (as Chrome on Windows saves them) are read in grade folders and found by a listed
    name, with or without that extension; they are JPEGs to the reduced-scale decode and the end-marker check."""
    for g in range(5):
        disc(tmp_path / "d" / str(g) / f"{g}_left.jpeg")
    jfif = disc(tmp_path / "d" / "1" / "7_left.jfif", size=256)
    disc(tmp_path / "d" / "2" / "7_right.JPE")
    cat = read_catalog(tmp_path / "d")
    assert not cat.problems and {(s.image, s.label) for s in cat.samples} >= {("7_left", 1), ("7_right", 2)}
    (tmp_path / "d" / "labels.csv").write_text("image,level\n1/7_left.jfif,1\n7_right,2\n")
    cat = read_catalog(tmp_path / "d", images=tmp_path / "d" / "2")
    assert not cat.problems and [s.path for s in cat.samples] == [str(jfif), str(tmp_path / "d" / "2" / "7_right.JPE")]
    assert open_image(jfif, 64).size == (64, 64)  # decoded at 1/4 scale
    jfif.write_bytes(jfif.read_bytes()[:-200])
    with pytest.raises(ImageError, match="truncated JPEG \\(no end marker\\)"):
        check_image(jfif)


def test_lab_format_reads_every_line_without_header(tmp_path):
    names = [f"{p}_{e}" for p in range(6) for e in ("left", "right")]
    for n in names:
        disc(tmp_path / f"{n}.jpeg")
    (tmp_path / "train_img.csv").write_text("\n".join(names[:8]) + "\n")
    (tmp_path / "train_label.csv").write_text("\n".join(str(i % 5) for i in range(8)) + "\n")
    (tmp_path / "test_img.csv").write_text("\n".join(names[8:]) + "\n")
    (tmp_path / "test_label.csv").write_text("\n".join("0" for _ in names[8:]))
    cat = load_catalog(tmp_path, val_fraction=0.0)
    assert cat.format == "lab" and not cat.problems
    assert Counter(s.split for s in cat.samples) == {"train": 8, "test": 4}
    assert cat.samples[0].image == names[0]  # the first line is data, not a header


def test_header_csv_with_named_columns(tmp_path):
    for i in range(10):
        disc(tmp_path / "train_images" / f"id{i:03d}.png", fmt="PNG")
    (tmp_path / "train.csv").write_text("id_code,diagnosis\n" + "".join(f"id{i:03d},{i % 5}\n" for i in range(10)))
    cat = read_catalog(tmp_path)
    assert cat.format == "csv" and not cat.problems and len(cat.samples) == 10
    cat = read_catalog(tmp_path, labels=tmp_path / "train.csv")  # the file named (as `predict` does): its header
    assert cat.format == "csv" and not cat.problems and len(cat.samples) == 10
    # other column names through options
    (tmp_path / "other.csv").write_text("file,grade\n" + "".join(f"id{i:03d}.png,{i % 5}\n" for i in range(10)))
    cat = read_catalog(tmp_path, labels=tmp_path / "other.csv", image_col="file", label_col="grade")
    assert not cat.problems and cat.samples[3].label == 3


@pytest.mark.filterwarnings("ignore::retinopathy.errors.DataWarning")  # old/place/1_right.jpeg, each time read
def test_image_names_holding_paths(tmp_path):
    """A name with a folder (``/`` or Windows' ``\\``) is found relative to DATA, else by its file name under the
    image root (warned of); its patient and eye come from the file name."""
    files = ["train_images/0_left.jpeg", "train_images/0_right.jpeg", "extra/1_left.png", "train_images/1_right.jpeg"]
    for name in files:
        disc(tmp_path / name)
    rows = ["train_images/0_left.jpeg,0", "train_images\\0_right.jpeg,1", "extra/1_left,2", "old/place/1_right.jpeg,3"]
    (tmp_path / "train.csv").write_text("id_code,diagnosis\n" + "".join(f"{r}\n" for r in rows))
    with pytest.warns(DataWarning, match="^1 listed image"):
        cat = load_catalog(tmp_path, val_fraction=0.5, test_fraction=0.0)
    assert not cat.problems and [s.path for s in cat.samples] == [str(tmp_path / f) for f in files]
    assert [s.patient for s in cat.samples] == ["0", "0", "1", "1"]
    write_split(cat.samples, tmp_path / "split.csv")
    again = load_catalog(tmp_path, split_file=tmp_path / "split.csv")
    assert [(s.image, s.split) for s in again.samples] == [(s.image, s.split) for s in cat.samples]
    with open(tmp_path / "train.csv", "a") as f:
        f.write("train_images/0_left.jpeg,0\nnowhere/9_left.jpeg,0\n")
    labels = tmp_path / "train.csv"
    assert [str(p) for p in read_catalog(tmp_path).problems] == [
        f"{labels}:6: image train_images/0_left.jpeg is listed again (first at train.csv:2); remove one of the rows",
        f"{labels}:7: image nowhere/9_left.jpeg not found: the name holds a path, and neither "
        f"{tmp_path / 'train_images' / 'nowhere' / '9_left.jpeg'} nor {tmp_path / 'nowhere' / '9_left.jpeg'} nor "
        f"9_left.jpeg in {tmp_path / 'train_images'} exists (looked for that exact name); fix the path (relative to "
        f"{tmp_path / 'train_images'} or {tmp_path}), add the file, pass --images, or use --skip-bad to drop it"]
    with open(tmp_path / "train.csv", "a") as f:  # an extension that is not the file's: the file is named
        f.write("0_right.jpg,0\n")
    assert "image 0_right.jpg not found in" in str(read_catalog(tmp_path).problems[-1])
    assert "(0_right.jpeg is there: fix the extension in the name)" in str(read_catalog(tmp_path).problems[-1])
    linux = tmp_path / "linux"  # on Linux a backslash may be part of a file name: that file is found first
    disc(linux / "images" / "site\\2_left.jpeg")
    (linux / "labels.csv").write_text("image,level\nsite\\2_left,2\n")
    assert [s.path for s in read_catalog(linux).samples] == [str(linux / "images" / "site\\2_left.jpeg")]


def test_a_name_found_by_its_file_name_in_a_folder_named_otherwise_is_warned_of(tmp_path):
    """A name whose folder is not there, found by its file name alone in a folder named otherwise
    (``siteB/1_left.jpeg`` as ``images/1_left.jpeg``), is read and warned of, counted, with the first row; another
    computer's path to a folder named as the one it is found in (any case) is read without a word."""
    for p in range(3):
        for eye in ("left", "right"):
            disc(tmp_path / "images" / f"{p}_{eye}.jpeg")
    rows = ["0_left.jpeg", "images/0_right.jpeg", "C:\\data\\Images\\1_left.jpeg", "/elsewhere/images/1_right",
            "siteB/2_left.jpeg", "siteB/sub/2_right.jpeg"]
    labels = tmp_path / "labels.csv"
    labels.write_text("image,level\n" + "".join(f"{r},0\n" for r in rows[:4]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(s.path for s in read_catalog(tmp_path).samples)
    labels.write_text("image,level\n" + "".join(f"{r},0\n" for r in rows))
    with pytest.warns(DataWarning) as caught:
        cat = read_catalog(tmp_path)
    assert [s.path for s in cat.samples] == [str(tmp_path / "images" / f"{p}_{eye}.jpeg")
                                             for p in range(3) for eye in ("left", "right")] and not cat.problems
    assert [str(w.message) for w in caught] == [
        "2 listed image(s) named with a folder that is not there were found by file name in another folder, "
        f"perhaps other photographs (first: {labels}:6, siteB/2_left.jpeg read as "
        f"{tmp_path / 'images' / '2_left.jpeg'}); if they are not the photographs meant, fix the paths in the "
        "labels (relative to DATA or --images)"]


def test_names_holding_a_path_below_the_image_folder(tmp_path):
    """A name holding a path is found below ``--images`` as written (``siteA/1_left.jpeg`` in ``DIR/siteA/``),
    before DATA's folder of that name; one found nowhere names every place looked in."""
    for site in ("siteA", "siteB"):
        disc(tmp_path / "photos" / site / "1_left.jpeg")
        disc(tmp_path / "data" / site / "1_right.jpeg")
    disc(tmp_path / "photos" / "siteB" / "1_right.jpeg")
    (tmp_path / "data" / "labels.csv").write_text("image,level\nsiteA/1_left.jpeg,0\nsiteB\\1_left,1\n"
                                                  "siteA/1_right.jpeg,2\nsiteB/1_right.jpeg,3\nsiteC/2_left.jpeg,0\n")
    cat = read_catalog(tmp_path / "data", images=tmp_path / "photos")
    assert [s.path for s in cat.samples] == [
        str(tmp_path / "photos" / "siteA" / "1_left.jpeg"), str(tmp_path / "photos" / "siteB" / "1_left.jpeg"),
        str(tmp_path / "data" / "siteA" / "1_right.jpeg"), str(tmp_path / "photos" / "siteB" / "1_right.jpeg"), None]
    assert [p.line for p in cat.problems] == [6] and (
        f"neither {tmp_path / 'photos' / 'siteC' / '2_left.jpeg'} nor {tmp_path / 'data' / 'siteC' / '2_left.jpeg'} "
        f"nor 2_left.jpeg in {tmp_path / 'photos'} exists") in cat.problems[0].message


def test_names_match_across_unicode_normal_forms(tmp_path):
    """A file named in NFD (as macOS writes "é": e + a combining accent) is found from a label written in NFC,
    and the other way round, as the two spell one visible name."""
    nfc, nfd = "caf\u00e9_left", "cafe\u0301_right"
    disc(tmp_path / "images" / (unicodedata.normalize("NFD", nfc) + ".jpeg"))
    disc(tmp_path / "images" / (unicodedata.normalize("NFC", nfd) + ".png"))
    (tmp_path / "labels.csv").write_text(f"image,level\n{nfc},1\n{nfd}.png,2\n", encoding="utf-8")
    cat = read_catalog(tmp_path)
    assert not cat.problems
    assert [os.path.basename(s.path) for s in cat.samples] == [
        unicodedata.normalize("NFD", nfc) + ".jpeg", unicodedata.normalize("NFC", nfd) + ".png"]
    disc(tmp_path / "images" / (nfc + ".jpeg"))  # both spellings there: each name finds its own file
    (tmp_path / "labels.csv").write_text(f"image,level\n{nfc},1\n{unicodedata.normalize('NFD', nfc)},2\n")
    assert [os.path.basename(s.path) for s in read_catalog(tmp_path).samples] == [
        nfc + ".jpeg", unicodedata.normalize("NFD", nfc) + ".jpeg"]
    (tmp_path / "labels.csv").write_text(f"image,level\n{unicodedata.normalize('NFD', nfd)}.jpg,1\n")
    assert "(caf\u00e9_right.png is there: fix the extension" in str(read_catalog(tmp_path).problems[0])


def test_folders_in_names_match_across_unicode_normal_forms(tmp_path):
    """A name that holds a path finds its folder named in the other normal form too, as file names do."""
    a, b = "clinique_\u00e9", "h\u00f4pital"  # NFC; on disk: a in NFD, b in NFC
    disc(tmp_path / unicodedata.normalize("NFD", a) / "1_left.jpeg")
    disc(tmp_path / b / "sub" / "2_left.jpeg")
    (tmp_path / "labels.csv").write_text(f"image,level\n{a}/1_left.jpeg,1\n"
                                         f"{unicodedata.normalize('NFD', b)}/sub/2_left.jpeg,2\n")
    cat = read_catalog(tmp_path)
    assert not cat.problems and [s.path for s in cat.samples] == [
        str(tmp_path / unicodedata.normalize("NFD", a) / "1_left.jpeg"), str(tmp_path / b / "sub" / "2_left.jpeg")]


def test_labels_may_name_images_by_absolute_path(tmp_path):
    """Images elsewhere, named by absolute path in the labels of a folder that holds no image."""
    make_kaggle(tmp_path / "photos", n_patients=2)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "labels.csv").write_text("image,level\n" + "".join(
        f"{tmp_path / 'photos' / f'{p}_{eye}.jpeg'},{p}\n" for p in range(2) for eye in ("left", "right")))
    cat = read_catalog(tmp_path / "data")
    assert not cat.problems and [Path(s.path).parent for s in cat.samples] == [tmp_path / "photos"] * 4
    assert [s.patient for s in cat.samples] == ["0", "0", "1", "1"]


def test_a_folder_of_several_labels_files_reads_the_one_that_fits(tmp_path):
    """Named columns pick the labels file whose header has them (trainLabels.csv before train.csv, as detection
    orders them); a format named beside the lab's CSVs reads its own file."""
    rows = make_kaggle(tmp_path, n_patients=2)
    (tmp_path / "train.csv").write_text("id_code,diagnosis\n" + "\n".join(rows) + "\n")
    (tmp_path / "train_img.csv").write_text("0_left\n")
    (tmp_path / "train_label.csv").write_text("0\n")
    assert read_catalog(tmp_path, image_col="image", label_col="level").labels == [tmp_path / "trainLabels.csv"]
    assert read_catalog(tmp_path, image_col="id_code", label_col="diagnosis").labels == [tmp_path / "train.csv"]
    for one in ({"image_col": "image"}, {"label_col": "level"}):  # the other column: the one that file has
        cat = read_catalog(tmp_path, **one)  # (it looked for APTOS' diagnosis, or id_code, in trainLabels.csv)
        assert cat.labels == [tmp_path / "trainLabels.csv"] and not cat.problems and len(cat.samples) == 4
    assert read_catalog(tmp_path, format="csv").labels == [tmp_path / "train.csv"]
    assert read_catalog(tmp_path, format="kaggle").labels == [tmp_path / "trainLabels.csv"]
    assert read_catalog(tmp_path).format == "lab"


def test_folder_per_grade(tmp_path):
    for g in range(5):
        for i in range(3):
            disc(tmp_path / str(g) / f"img{g}{i}.jpg")
    cat = read_catalog(tmp_path)
    assert cat.format == "folders"
    assert Counter(s.label for s in cat.samples) == {g: 3 for g in range(5)}
    # fewer than five grades under train/: detection needs all five, --format folders finds them there too
    for g in range(4):
        disc(tmp_path / "sub" / "train" / str(g) / f"t{g}.jpg")
    with pytest.raises(DataError, match=r"no known dataset layout.*or folders 0/ \.\.\. 4/ \(all five\); "
                                        r".*train holds 0/, 1/, 2/, 3/ only") as e:
        read_catalog(tmp_path / "sub")
    assert e.value.hint == ("Pass --format folders to read the grade folders there are (in Python: "
                            "format='folders').")
    with pytest.raises(DataError) as e:
        read_catalog(tmp_path / "sub" / "train" / "0")
    assert e.value.hint.endswith("(in Python: format=, labels=, image_col=, label_col=, images=).")
    cat = read_catalog(tmp_path / "sub", format="folders")
    assert Counter(s.label for s in cat.samples) == {g: 1 for g in range(4)}


def test_folders_are_read_as_imagefolder_reads_them(tmp_path):
    """Images in sub-folders of a grade folder count (recursively, .bmp and .webp too; a link back up is not
    followed); a folder named like another grade that holds images is a problem, not silently left out; train/
    beside val/ or test/ gives the splits, each naming its images, and the missing one is carved from train."""
    for g in range(5):
        disc(tmp_path / "d" / str(g) / f"{g}_left.jpeg")
    disc(tmp_path / "d" / "2" / "more" / "7_left.jpeg")
    disc(tmp_path / "d" / "2" / "7_right.bmp", fmt="BMP")
    disc(tmp_path / "d" / "3" / "8_left.webp", fmt="WEBP")
    (tmp_path / "d" / "0" / "up").symlink_to(tmp_path / "d")  # would bring grades 1-4 into grade 0
    disc(tmp_path / "d" / "5" / "9_left.jpeg")
    disc(tmp_path / "d" / "10" / "9_right.jpeg")  # two digits: no grade either
    disc(tmp_path / "d" / "01" / "8_right.jpeg")  # nor a grade written otherwise
    (tmp_path / "d" / "6").mkdir()  # empty: nothing is left out
    cat = read_catalog(tmp_path / "d")
    assert sorted((s.image, s.label) for s in cat.samples) == [
        ("0_left", 0), ("1_left", 1), ("2_left", 2), ("3_left", 3), ("4_left", 4), ("7_right", 2), ("8_left", 3),
        ("more/7_left", 2)]
    assert {s.patient for s in cat.samples if s.image.endswith("7_left") or s.image == "7_right"} == {"7"}
    assert [(p.kind, p.file) for p in cat.problems] == [("bad-label", str(tmp_path / "d" / n))
                                                         for n in ("01", "10", "5")]
    assert "its 1 image(s) are not used" in cat.problems[0].message

    layout = tmp_path / "split"  # each split numbers its images from 0, as such folders often do
    for part, n in (("train", 8), ("test", 2)):
        for g in range(5):
            for i in range(n):
                disc(layout / part / str(g) / f"{g}{i}_left.jpeg")
    cat = load_catalog(layout, val_fraction=0.25)
    assert cat.format == "folders" and len(cat.samples) == 50 and not cat.problems
    assert {s.image for s in cat.samples if s.split == "test"} == {f"test/{g}{i}_left" for g in range(5)
                                                                   for i in range(2)}
    assert Counter(s.split for s in cat.samples) == {"train": 30, "val": 10, "test": 10}  # val from train/
    for g in range(5):
        disc(layout / "val" / str(g) / f"{g}0_left.jpeg")
    cat = load_catalog(layout, val_fraction=0.25)
    assert Counter(s.split for s in cat.samples) == {"train": 40, "val": 5, "test": 10}  # val/ as given
    shutil.rmtree(layout / "test")
    cat = load_catalog(layout, test_fraction=0.25)  # train/ and val/: test is carved from train/
    assert Counter(s.split for s in cat.samples) == {"train": 30, "val": 5, "test": 10}
    assert {s.split for s in load_catalog(layout / "train").samples} == {"train", "val", "test"}  # train/ alone
    for g in range(5):  # valid/ (as some exports name it) beside train/ and val/ is not read: said, not dropped
        disc(layout / "valid" / str(g) / f"{g}9_left.jpeg")
    problems = load_catalog(layout, test_fraction=0.25).problems
    assert [(p.kind, p.file) for p in problems] == [("bad-label", str(layout / "valid"))]
    assert "5 image(s) are not used: only train/, val/ and test/ are read; rename it val/" in problems[0].message
    shutil.rmtree(layout / "val")  # train/ and valid/ alone: still said
    assert [p.file for p in load_catalog(layout).problems] == [str(layout / "valid")]


def test_a_grade_folder_inside_another_grade_folder_is_a_problem(tmp_path):
    """A folder named as another grade inside a grade folder (``0/2/``, all of ``4/`` moved into ``0/4/``) is a
    problem and its images are not read as the outer grade; one of the same grade, or any other name, is read as
    before, and so are numbered folders that are not all grades (patients' numbers: ``0/3/``, ``0/17/``)."""
    for g in range(5):
        disc(tmp_path / "d" / str(g) / f"{g}_left.jpeg")
    disc(tmp_path / "d" / "0" / "2" / "7_left.jpeg")
    disc(tmp_path / "d" / "0" / "2.0" / "7_right.jpeg")
    disc(tmp_path / "d" / "1" / "1" / "8_left.jpeg")
    disc(tmp_path / "d" / "1" / "more" / "8_right.jpeg")
    cat = read_catalog(tmp_path / "d")
    assert sorted((s.image, s.label) for s in cat.samples) == [
        ("0_left", 0), ("1/8_left", 1), ("1_left", 1), ("2_left", 2), ("3_left", 3), ("4_left", 4),
        ("more/8_right", 1)]
    assert [(p.kind, p.file) for p in cat.problems] == [("bad-label", str(tmp_path / "d" / "0" / n))
                                                         for n in ("2", "2.0")]
    assert cat.problems[0].message.startswith("folder 0/2/ is named as grade 2 but is in grade folder 0/: its 1 "
                                              "image(s) are not used (they would read as grade 0); move them into "
                                              f"{tmp_path / 'd' / '2'} if they are grade 2")
    shutil.rmtree(tmp_path / "d" / "0" / "2")
    shutil.rmtree(tmp_path / "d" / "0" / "2.0")
    shutil.move(tmp_path / "d" / "4", tmp_path / "d" / "0" / "4")
    cat = read_catalog(tmp_path / "d", format="folders")
    assert "4_left" not in {s.image for s in cat.samples}
    assert [p.file for p in cat.problems] == [str(tmp_path / "d" / "0" / "4")]
    for g, patient in ((0, "3"), (0, "17"), (1, "0"), (2, "4")):
        disc(tmp_path / "p" / str(g) / patient / "left.jpeg")
    cat = read_catalog(tmp_path / "p", format="folders")
    assert not cat.problems and sorted((s.patient, s.label) for s in cat.samples) == [
        ("0", 1), ("17", 0), ("3", 0), ("4", 2)]
    for g in range(5):  # visits 1/ and 2/ in each grade folder: numbered folders that are no grades
        for visit in ("1", "2"):
            disc(tmp_path / "v" / str(g) / visit / f"{g}_left.jpeg")
    cat = read_catalog(tmp_path / "v", format="folders")
    assert not cat.problems and len(cat.samples) == 10


def test_folders_named_grade_n_are_said_not_read(tmp_path):
    """A folder named as a grade with a word (``grade_2/``, ``Grade 3/``, ``level-1/``) beside the grade folders is
    said, as ``5/`` is, with what to do (rename it to the grade where that folder is not there); one inside a grade
    folder of another grade is said as ``0/2/`` is."""
    for g in (0, 1, 3, 4):
        disc(tmp_path / "d" / str(g) / f"{g}_left.jpeg")
    for name in ("grade_2", "Grade 3", "level-1", "grade_7"):
        disc(tmp_path / "d" / name / "9_left.jpeg")
    disc(tmp_path / "d" / "0" / "grade_4" / "8_left.jpeg")
    cat = read_catalog(tmp_path / "d", format="folders")
    assert sorted(s.image for s in cat.samples) == ["0_left", "1_left", "3_left", "4_left"]
    assert [(p.file, p.message.split("; ", 1)[1]) for p in cat.problems] == [
        (str(tmp_path / "d" / "0" / "grade_4"), f"move them into {tmp_path / 'd' / '4'} if they are grade 4, or "
         "rename the folder if grade_4 is no grade"),
        (str(tmp_path / "d" / "Grade 3"), "move them into 3/"), (str(tmp_path / "d" / "grade_2"), "rename it 2/"),
        (str(tmp_path / "d" / "grade_7"), "move them into the folder of their grade, or remove it"),
        (str(tmp_path / "d" / "level-1"), "move them into 1/")]
    assert cat.problems[2].message.startswith("folder 'grade_2' is not a grade folder 0/ ... 4/: its 1 image(s) are "
                                              "not used")


def test_unknown_format_says_what_was_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="trainLabels.csv"):
        read_catalog(tmp_path)


def test_splits_are_stratified_by_the_worse_eye(tmp_path):
    """A patient with one healthy eye and one proliferative eye counts as grade 4: half of such patients go to a
    half-sized test split, whatever the seed (by the better eye they would be mixed in with the healthy ones)."""
    rows = [f"{p}_{eye},{4 if p < 10 and eye == 'right' else 0}" for p in range(20) for eye in ("left", "right")]
    (tmp_path / "trainLabels.csv").write_text("image,level\n" + "\n".join(rows) + "\n")
    for seed in range(5):
        cat = load_catalog(tmp_path, resolve=False, val_fraction=0, test_fraction=0.5, seed=seed)
        test = {s.patient for s in cat.samples if s.split == "test"}
        assert len(test) == 10 and len({p for p in test if int(p) < 10}) == 5, (seed, sorted(test))


def test_a_runs_photographs_are_nine_in_ten_listed_with_their_grades():
    from retinopathy.data.splits import same_photographs

    assert same_photographs(9, 1) and same_photographs(90, 10) and not same_photographs(17, 3)
    assert not same_photographs(0, 0) and not same_photographs(1, 1)
    assert same_photographs(1, 0) and not same_photographs(1, 0, 34)  # one name among 35 others: chance
    assert not same_photographs(4, 0, 1) and same_photographs(5, 0, 100)


def test_split_by_patient_is_deterministic_stratified_and_written(tmp_path):
    make_kaggle(tmp_path, n_patients=60)
    a = load_catalog(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=3)
    b = load_catalog(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=3)
    c = load_catalog(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=4)
    assert [s.split for s in a.samples] == [s.split for s in b.samples]
    assert [s.split for s in a.samples] != [s.split for s in c.samples]
    for sp in ("val", "test"):
        assert shared_patients(a.samples, "train", sp)[0] == 0
    # strata by worse eye: grades 1, 2, 3 with 12 patients each, grade 4 with 24 -> round(0.2 n) = 2+2+2+5
    # patients in test, both eyes each
    assert Counter(s.split for s in a.samples)["test"] == 22
    ds = FundusDataset(a, "train", image_size=32)
    assert ds.patients == [ds.patient_id(i) for i in range(len(ds))] and len(set(ds.patients)) == len(ds) // 2
    assert ds.classes[ds.targets[0]] == list(ds.class_to_idx)[ds.targets[0]]  # as ImageFolder's
    assert ds.class_to_idx == {"none": 0, "mild": 1, "moderate": 2, "severe": 3, "proliferative": 4}
    ds.classes.append("ungradable")  # a user's own list: the package's grade names (predict's output) unchanged
    from retinopathy.data import GRADE_NAMES, __all__ as exported
    assert "GRADE_NAMES" in exported and GRADE_NAMES == list(ds.class_to_idx) == ds.classes
    ds.write_split(tmp_path / "split.csv")
    d = load_catalog(tmp_path, split_file=tmp_path / "split.csv")
    assert [s.split for s in d.samples] == [s.split for s in a.samples]
    lines = (tmp_path / "split.csv").read_text().splitlines()
    (tmp_path / "edited.csv").write_text("\n".join(lines[:3] + [lines[3].rsplit(",", 1)[0] + ",trian"] + lines[4:]))
    with pytest.raises(DataError, match="edited.csv:4: .*split one of train, val, test"):
        load_catalog(tmp_path, split_file=tmp_path / "edited.csv")
    with pytest.raises(DataError, match="nowhere.csv: cannot read the split file"):
        load_catalog(tmp_path, split_file=tmp_path / "nowhere.csv")
    image, patient, label, split = lines[3].split(",")
    other = "val" if split != "val" else "test"
    (tmp_path / "spaced.csv").write_text("\n".join(lines[:3] + [f"{image}, {patient}, {label}, {split} "] + lines[4:]))
    assert [s.split for s in load_catalog(tmp_path, split_file=tmp_path / "spaced.csv").samples] == \
        [s.split for s in a.samples]
    (tmp_path / "twice.csv").write_text("\n".join(lines + [lines[3], f"{image},{patient},{label},{other}"]))
    with pytest.raises(DataError, match=rf"^1 problem.*\n.*twice.csv:{len(lines) + 2}: image {image} is listed "
                                        r"again, differently \(first at line 4\)"):
        load_catalog(tmp_path, split_file=tmp_path / "twice.csv")
    with pytest.raises(SplitError, match="--val-fraction 0.6 and --test-fraction 0.4"):
        load_catalog(tmp_path, val_fraction=0.6, test_fraction=0.4)


def test_leakage_counts_only_rows_whose_image_is_there(tmp_path):
    """Rows dropped for a missing image (--skip-bad) are in no split: they do not count as patients on both sides,
    and a split that holds no one (val here) is not compared."""
    for p in range(5):
        disc(tmp_path / f"{p}_left.jpeg")
    for p in range(2):
        disc(tmp_path / f"{p}_right.jpeg")
    (tmp_path / "train_img.csv").write_text("".join(f"{p}_left\n" for p in range(5)))
    (tmp_path / "train_label.csv").write_text("".join(f"{p}\n" for p in range(5)))
    (tmp_path / "test_img.csv").write_text("".join(f"{p}_right\n" for p in range(5)))
    (tmp_path / "test_label.csv").write_text("".join(f"{p}\n" for p in range(5)))
    with pytest.warns(UserWarning) as caught:
        test = FundusDataset(tmp_path, "test", image_size=32, skip_bad=True, val_fraction=0.0)
    assert len(test) == 2 and test.warnings == [
        "2 of 2 test patients also have an eye in train (patient leakage: scores on that split are optimistic)"]
    assert [str(w.message) for w in caught] == test.warnings


def test_data_check_of_labels_only_counts_patients_on_both_sides(tmp_path, capsys):
    """``data check --no-images`` (no image files needed) still reports leakage: it only needs the labels."""
    import json

    from retinopathy.cli.main import main

    (tmp_path / "train_img.csv").write_text("".join(f"{p}_left\n" for p in range(5)))
    (tmp_path / "train_label.csv").write_text("".join(f"{p % 5}\n" for p in range(5)))
    (tmp_path / "test_img.csv").write_text("".join(f"{p}_right\n" for p in range(3)))
    (tmp_path / "test_label.csv").write_text("".join(f"{p}\n" for p in range(3)))
    out = tmp_path / "r.json"
    assert main(["data", "check", str(tmp_path), "--no-images", "--val-fraction", "0", "--json", str(out),
                 "--quiet"]) == 0
    assert json.loads(out.read_text())["shared_patients"] == {"train-test": {"shared": 3, "patients": 3}}
    text = capsys.readouterr().out
    assert "patients on both sides: 3 of 3 test patients also have an eye in train" in text
    assert f"dataset {tmp_path}  (format: lab; images not checked (--no-images))" in text


def test_data_check_without_the_images_says_so_once_and_lists_a_few(tmp_path, capsys):
    """Labels whose images are all missing (the lab's CSVs without their JPEGs): one line says what to do, the
    text lists 3 of them (20 problems of another kind), and the JSON report holds every one."""
    import json

    from retinopathy.cli.main import main

    (tmp_path / "trainLabels.csv").write_text("image,level\n" + "".join(f"{p}_left,{p % 5}\n" for p in range(30)))
    out = tmp_path / "r.json"
    assert main(["data", "check", str(tmp_path), "--json", str(out), "--quiet"]) == 1
    text = capsys.readouterr().out
    assert ("none of the 30 listed images was found: pass --images DIR (the folder that holds them), or "
            "--no-images to check the labels only") in text
    assert text.count("[missing-image]") == 4 and "trainLabels.csv:4: image 2_left not found" in text
    assert "trainLabels.csv:5:" not in text and "  ... and 27 more [missing-image] (every one is in the JSON" in text
    assert len(json.loads(out.read_text())["problems"]) == 30
    for p in range(30):  # the images, all black: 30 warnings, listed alike
        Image.new("RGB", (32, 32)).save(tmp_path / f"{p}_left.jpeg")
    assert main(["data", "check", str(tmp_path), "--json", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "30 warning(s):" in text and text.count("[blank-image]") == 21 and "10 more [blank-image]" in text
    assert len(json.loads(out.read_text())["warnings"]) == 30


def test_real_lab_csvs(shared_data):
    cat = load_catalog(shared_data / "eyepacs-labels", resolve=False, val_fraction=0.0)
    assert cat.format == "lab" and not cat.problems
    by_split = {sp: Counter(s.label for s in cat.samples if s.split == sp) for sp in ("train", "test")}
    assert sum(by_split["train"].values()) == 28_100 and sum(by_split["test"].values()) == 7_026
    assert [by_split["train"][g] for g in range(5)] == [20_656, 1_955, 4_210, 698, 581]
    assert [by_split["test"][g] for g in range(5)] == [5_154, 488, 1_082, 175, 127]
    assert shared_patients(cat.samples, "train", "test") == (5_618, 6_322)
    # the default val part is carved from the lab's train side: test patients whose other eye went to val
    # are warned about too (the three warnings count 5,618 of the 6,322 test patients between them)
    default = load_catalog(shared_data / "eyepacs-labels", resolve=False)
    warnings = leakage_warnings(default.samples)
    test_counts = [int(w.split(" of ")[0].replace(",", "")) for w in warnings if " test patients " in w]
    assert len(test_counts) == 2 and sum(test_counts) == 5_618
    assert any(w.endswith("have an eye in val (patient leakage: scores on that split are optimistic)")
               for w in warnings)


def test_real_kaggle_labels(shared_data):
    """Beside the lab's CSVs (which detection reads), format kaggle finds trainLabels.csv by itself, as the hint of
    `data check` ("read another with --labels or --format") says."""
    for labels in (shared_data / "eyepacs-labels" / "trainLabels.csv", None):
        cat = read_catalog(shared_data / "eyepacs-labels", format="kaggle", labels=labels, resolve=False)
        assert len(cat.samples) == 35_126 and cat.labels == [shared_data / "eyepacs-labels" / "trainLabels.csv"]
        assert [Counter(s.label for s in cat.samples)[g] for g in range(5)] == [25_810, 2_443, 5_292, 873, 708]


@pytest.mark.parametrize("preprocess", ["lab", "graham"])
@pytest.mark.parametrize("train", [False, True])
def test_cached_items_equal_uncached_and_need_no_file(synth_small, monkeypatch, preprocess, train):
    import torch

    from retinopathy.data import transforms

    opts = dict(image_size=64, preprocess=preprocess, augment="fundus", train=train, uint8=True)
    plain = FundusDataset(synth_small, "val", **opts)
    cached = FundusDataset(synth_small, "val", cache=True, **opts)
    assert cached.cache.shape == (len(plain), 64, 64, 3)

    def item(ds, i):
        torch.manual_seed(i)  # the same random augmentation for both
        return ds[i]

    expected = [item(plain, i) for i in (0, len(plain) - 1)]
    monkeypatch.setattr(transforms, "open_image", lambda *a, **k: pytest.fail("a cached item opened its file"))
    for i, (x, y) in zip((0, len(plain) - 1), expected):
        xc, yc = item(cached, i)
        assert torch.equal(xc, x) and yc == y


def test_building_the_cache_needs_its_own_size_in_memory_not_twice(synth_small):
    import tracemalloc

    catalog = load_catalog(synth_small)  # read first: only the cache's building is measured
    tracemalloc.start()
    try:
        ds = FundusDataset(catalog, "all", image_size=96, cache=True, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ds.cache.nbytes == 240 * 96 * 96 * 3
    assert peak < 1.3 * ds.cache.nbytes  # a list of arrays stacked at the end needed 2x


def test_training_windows_keep_the_evaluation_scale(synth_small):
    """``crop``: training items are unresized windows of the image that evaluation sees whole."""
    import torch

    opts = dict(image_size=64, preprocess="graham", augment="none", uint8=True, cache=True, crop=32)
    train, whole = FundusDataset(synth_small, "val", train=True, **opts), FundusDataset(synth_small, "val", **opts)
    image = torch.from_numpy(train.cache[3]).permute(2, 0, 1)
    assert whole[3][0].shape == (3, 64, 64) and torch.equal(whole[3][0], image)
    x = train[3][0]
    assert x.shape == (3, 32, 32)
    assert any(torch.equal(x, image[:, i:i + 32, j:j + 32]) for i in range(33) for j in range(33))  # unresized
    torch.manual_seed(0)
    assert len({train[3][0].numpy().tobytes() for _ in range(8)}) > 1  # a random one


def test_real_photographs_load_with_true_labels_at_512(shared_data):
    ds = FundusDataset(shared_data / "fundus-real", split="all", image_size=512)
    truth = dict(line.split(",") for line in (shared_data / "fundus-real" / "labels.csv").read_text().split()[1:])
    assert len(ds) == 35 and ds.class_counts() == [7] * 5
    for i in (0, 17, 34):
        x, y = ds[i]
        assert x.shape == (3, 512, 512) and x.dtype.is_floating_point
        assert y == int(truth[ds.image_id(i)])


def test_reduced_scale_decode_matches_full_decode(shared_data):
    """draft() decoding at reduced scale gives the same 512 px picture as a full decode, within tolerance."""
    from retinopathy.data.transforms import Preprocessing, build_transform

    t = build_transform(Preprocessing("lab", 512), train=False, uint8=True)
    for name in ("10_left", "15_left", "204_right"):  # 4752x3168, 4928x3264, 1792x1184
        path = shared_data / "fundus-real" / "images" / f"{name}.jpeg"
        fast = t(open_image(path, 512)).float()
        full = t(open_image(path)).float()
        assert fast.shape == full.shape == (3, 512, 512)
        assert (fast - full).abs().mean() < 2.0  # mean absolute difference under 2 of 255 levels
        assert np.corrcoef(fast.flatten(), full.flatten())[0, 1] > 0.995


def test_a_runs_photographs_are_counted_by_name_and_grade(tmp_path):
    """run_overlap/trained_on: a name listed with the run's grade is the run's photograph, counted once however
    often it is given; a name listed with another grade is another photograph; 90 % must agree."""
    from retinopathy.data.splits import run_overlap, trained_on

    split = tmp_path / "split.csv"
    split.write_text("image,patient,label,split\na,a,0,train\nb,b,1,train\nc,c,2,test\n")
    assert run_overlap(split, [("a", 0), ("a", 0), ("x", 1)]) == ({"a": "train"}, 0, 1)
    assert run_overlap(split, [("a", 0), ("b", 2), ("c", 2)]) == ({"a": "train", "c": "test"}, 1, 0)
    assert trained_on(split, [("a", 0), ("b", 1), ("c", 2)] * 2) == 2  # the dataset given twice: still 2
    assert trained_on(split, [("a", 0), ("b", 3), ("c", 4)]) == 0  # mostly other grades: other photographs
    assert trained_on(split, [("a", 0), *((f"other{i}", 0) for i in range(30))]) == 0  # a name of another set
    many = tmp_path / "many.csv"  # a run's 200 photographs with 200 others: its own, also in a split of them
    many.write_text("image,patient,label,split\n" + "".join(f"r{i},r{i},0,train\n" for i in range(200)))
    dataset = [(f"r{i}", 0) for i in range(200)] + [(f"new{i}", 0) for i in range(200)]
    graded = dataset[:4] + dataset[-60:]  # 4 of the run's among 60 others: decided on the whole dataset
    assert trained_on(many, dataset, graded) == 4 and trained_on(many, graded) == 0
    assert run_overlap(tmp_path / "none.csv", [("a", 0)]) == ({}, 0, 1)


def test_grade_folders_nobody_reads_are_said_and_hidden_folders_left_out(tmp_path, monkeypatch):
    """Grade folders beside the ones read (``test/0/`` beside ``0/``; ``0/`` beside ``train/0/``) are a problem, not
    dropped; folders named as a number but no grade (``2.0/``) too; hidden, NAS and archiver folders (Synology's
    ``@eaDir`` thumbnails, ``__MACOSX``, macOS' ``._x.jpeg``) are no photographs."""
    for g in range(5):
        disc(tmp_path / str(g) / f"{g}_left.jpeg")
        disc(tmp_path / str(g) / "@eaDir" / f"{g}_left.jpeg" / "SYNOFILE_THUMB_M.jpg")
        disc(tmp_path / str(g) / ".thumbs" / f"{g}_left.jpeg")
        disc(tmp_path / str(g) / "__MACOSX" / f"{g}_left.jpeg")
        disc(tmp_path / str(g) / f"._{g}_right.jpeg")
    cat = read_catalog(tmp_path)
    assert sorted(s.image for s in cat.samples) == [f"{g}_left" for g in range(5)] and not cat.problems
    for g in range(5):
        disc(tmp_path / "test" / str(g) / f"1{g}_left.jpeg")
    disc(tmp_path / "2.0" / "30_left.jpeg")
    cat = read_catalog(tmp_path)
    assert len(cat.samples) == 5
    assert [(p.kind, Path(p.file).name) for p in cat.problems] == [("bad-label", "2.0"), ("bad-label", "test")]
    assert "whose 5 image(s) are not used" in cat.problems[1].message
    named = read_catalog(tmp_path, format="folders", labels=tmp_path)  # named where detection looks: said alike
    assert [(p.kind, Path(p.file).name) for p in named.problems] == [("bad-label", "2.0"), ("bad-label", "test")]
    shutil.rmtree(tmp_path / "2.0")
    for g in range(4):  # every grade in train/, some in DATA itself: train/ is read, DATA's own are said
        shutil.move(tmp_path / str(g), tmp_path / "train" / str(g))
    disc(tmp_path / "train" / "4" / "4_right.jpeg")
    cat = read_catalog(tmp_path)
    assert {s.split for s in cat.samples} == {"train", "test"}
    assert [(p.kind, p.file) for p in cat.problems] == [("bad-label", str(tmp_path))]
    assert "whose 1 image(s) are not used" in cat.problems[0].message
    monkeypatch.chdir(tmp_path.parent)  # a relative DATA, the grade folders named absolutely: train/ is read
    cat = read_catalog(tmp_path.name, format="folders", labels=tmp_path / "train")
    assert {s.split for s in cat.samples} == {"train", "test"}
    assert [(p.kind, p.file) for p in cat.problems] == [("bad-label", tmp_path.name)]  # DATA's own 4/ only
    assert not read_catalog(tmp_path, format="folders", labels=tmp_path / "test").problems  # named: as asked


def test_lab_values_in_quotes_blank_line_above_header_and_a_column_named_twice(tmp_path):
    """R's ``write.csv`` quotes the lab's values; a blank line above a header does not change how it is read; a
    header that names the grade column twice is refused (which one holds the grades is unknown)."""
    (tmp_path / "train_img.csv").write_text('"1_left"\n"1_right"\n')
    (tmp_path / "train_label.csv").write_text('"0"\n2\n')
    for eye in ("left", "right"):
        disc(tmp_path / f"1_{eye}.jpeg")
    cat = read_catalog(tmp_path)
    assert [(s.image, s.label) for s in cat.samples] == [("1_left", 0), ("1_right", 2)] and not cat.problems
    (tmp_path / "train_img.csv").write_text('"x"\n"1_left"\n"1_right"\n')  # R's header line, quoted too
    (tmp_path / "train_label.csv").write_text('"x"\n"0"\n"2"\n')
    cat = read_catalog(tmp_path)
    assert [(p.kind, p.line) for p in cat.problems] == [("bad-row", 1)] and "look like a header" in \
        cat.problems[0].message and [s.label for s in cat.samples] == [0, 2]
    other = tmp_path / "aptos"
    other.mkdir()
    (other / "my.csv").write_text("\nid_code,diagnosis\n1_left,3\n")
    disc(other / "1_left.jpeg")
    cat = read_catalog(other, labels=other / "my.csv")
    assert [(s.image, s.label, s.line) for s in cat.samples] == [("1_left", 3, 3)] and not cat.problems
    (other / "my.csv").write_text("image,level,level\n1_left,0,4\n")
    cat = read_catalog(other, labels=other / "my.csv")
    assert not cat.samples and [(p.kind, p.line) for p in cat.problems] == [("bad-header", 1)]
    assert "['level'] appear more than once" in cat.problems[0].message and "which one is meant" in \
        cat.problems[0].message


def test_labels_only_check_finds_a_row_listed_again_without_its_extension(tmp_path):
    """With no files to compare (``resolve=False``, ``data check --no-images``), ``1_left`` and ``1_left.jpeg``
    are one image's rows, as they are when the files are read; ``1_left.png`` is another file."""
    (tmp_path / "trainLabels.csv").write_text("image,level\n1_left.jpeg,0\n1_right,1\n1_left,3\n1_left.png,1\n")
    cat = read_catalog(tmp_path, resolve=False)
    assert sorted((p.kind, p.line) for p in cat.problems) == [("duplicate", 2), ("duplicate", 4)]
    assert [s.image for s in cat.samples] == ["1_right", "1_left.png"]
    disc(tmp_path / "1_left.jpeg")  # with the files read, 1_left.png is no file: missing, not 1_left's duplicate
    (tmp_path / "trainLabels.csv").write_text("image,level\n1_left,0\n1_left.png,2\n")
    cat = read_catalog(tmp_path)
    assert [s.image for s in cat.samples] == ["1_left", "1_left.png"]
    assert [(p.kind, p.line) for p in cat.problems] == [("missing-image", 3)]


def test_a_patient_named_in_two_unicode_normal_forms_is_one_patient(tmp_path):
    """macOS writes "é" decomposed (NFD): a patient's two eyes named in different forms stay on one side."""
    rows = [f"{unicodedata.normalize(form, f'José{p}_{eye}')},{p % 5}" for p in range(40)
            for eye, form in (("left", "NFC"), ("right", "NFD"))]
    (tmp_path / "trainLabels.csv").write_text("image,level\n" + "\n".join(rows) + "\n")
    cat = load_catalog(tmp_path, resolve=False, val_fraction=0.25, test_fraction=0.25)
    assert len({s.patient for s in cat.samples}) == 40
    assert all(a.split == b.split for a, b in zip(cat.samples[::2], cat.samples[1::2]))


def test_a_folder_that_cannot_be_listed_stops_the_read(tmp_path, monkeypatch):
    """os.walk leaves out a folder it cannot list, and with it a grade's photographs: an error names it."""

    for g in range(5):
        disc(tmp_path / "d" / str(g) / f"{g}_left.jpeg")
    listing = os.scandir

    def scandir(path="."):
        if Path(path) == tmp_path / "d" / "3":
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ImageError, match=f"{tmp_path / 'd' / '3'}: cannot list this folder \\(Permission denied\\), "
                                         "so its photographs would be left out"):
        read_catalog(tmp_path / "d")


def test_a_listed_image_that_is_a_broken_link_is_said_to_be_one(tmp_path):
    make_kaggle(tmp_path, n_patients=2)
    (tmp_path / "1_left.jpeg").unlink()
    (tmp_path / "1_left.jpeg").symlink_to(tmp_path / "gone" / "1_left.jpeg")
    [problem] = read_catalog(tmp_path).problems
    assert problem.kind == "missing-image"
    assert f"(1_left.jpeg there is a link to {tmp_path / 'gone' / '1_left.jpeg'}, which does not exist)" \
        in problem.message
    with pytest.raises(ImageError, match=f"a symbolic link to {tmp_path / 'gone' / '1_left.jpeg'}, which is not "
                                         "there; point it at the photograph"):  # as predict reads a file given
        open_image(tmp_path / "1_left.jpeg")


def test_a_split_without_images_names_the_splits_there(tmp_path):
    """evaluate --split val of a run trained without one (the lab's recipe, --val-fraction 0) said only "no images
    in split 'val'", as if the data were wrong."""
    make_kaggle(tmp_path, n_patients=10)
    with pytest.raises(DataError, match=r"no images in split 'val' \(the splits here: train, test\)"):
        FundusDataset(tmp_path, "val", val_fraction=0, image_size=32)
