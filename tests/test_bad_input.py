"""Each kind of bad input gives its clear error at construction, and `data check` reports it."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageOps
from torch.utils.data import DataLoader

from retinopathy.cli.main import main
from retinopathy.data import DataError, FundusDataset, load_catalog, open_image
from retinopathy.data.images import ImageError, check_image
from retinopathy.errors import RetinopathyError

from .test_formats import disc, make_kaggle


def check(tmp_path, data, *extra):
    out = tmp_path / "report.json"
    rc = main(["data", "check", str(data), "--json", str(out), "--quiet", *extra])
    return rc, json.loads(out.read_text())


def kinds(report):
    return sorted({p["kind"] for p in report["problems"]})


@pytest.fixture
def kaggle(tmp_path):
    data = tmp_path / "data"
    make_kaggle(data, n_patients=6)
    return data


def test_clean_dataset_checks_ok(tmp_path, kaggle):
    rc, report = check(tmp_path, kaggle, "--stats")
    assert rc == 0 and report["problems"] == []
    assert report["per_grade"]["total"] == 12 and report["image_sizes"]["max"]["width"] == 48
    assert len(report["stats"]["mean"]) == 3 and report["stats"]["mean"][0] > report["stats"]["mean"][2]
    (tmp_path / "nothing").mkdir()  # a folder that cannot be read at all: exit 2, and the report says so
    rc, report = check(tmp_path, tmp_path / "nothing")
    assert rc == 2 and report["readable"] is False and report["problems"][0]["kind"] == "unknown-format"
    for other in ('{"mine": 1}', '{"problems": [], "complete": true}'):  # no report (a prepare manifest): left
        (tmp_path / "notes.json").write_text(other)
        assert main(["data", "check", str(tmp_path / "nothing"), "--json", str(tmp_path / "notes.json")]) == 2
        assert (tmp_path / "notes.json").read_text() == other
        assert main(["data", "check", str(kaggle), "--json", str(tmp_path / "notes.json"), "--quiet"]) == 2  # nor
        assert (tmp_path / "notes.json").read_text() == other  # replaced by a check that succeeds
    (tmp_path / "notes.json").write_text("")  # an empty file (mktemp's) is free
    assert main(["data", "check", str(kaggle), "--json", str(tmp_path / "notes.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "notes.json").read_text())["problems"] == []
    # --json /dev/stdout into a pipe, on data that cannot be read: reading it to see whether it is a report blocked
    done = subprocess.run([sys.executable, "-m", "retinopathy", "data", "check", str(tmp_path / "nothing"), "--json",
                           "/dev/stdout"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 2 and json.loads(done.stdout)["readable"] is False


def test_data_check_stats_and_split_counts_are_those_of_the_images(tmp_path):
    """--stats: mean and standard deviation per channel over every pixel (two flat colours, one per half of the
    patients); per_split: each split's own rows."""
    rows = []
    for p in range(40):
        colour = (200, 100, 50) if p % 2 else (100, 50, 150)
        for eye in ("left", "right"):
            Image.new("RGB", (40, 30), colour).save(tmp_path / f"{p}_{eye}.png")
            rows.append(f"{p}_{eye},{p % 5}")
    (tmp_path / "trainLabels.csv").write_text("image,level\n" + "\n".join(rows) + "\n")
    rc, report = check(tmp_path, tmp_path, "--stats")
    assert rc == 0
    assert report["stats"]["mean"] == pytest.approx([150 / 255, 75 / 255, 100 / 255], abs=1e-3)
    assert report["stats"]["std"] == pytest.approx([50 / 255, 25 / 255, 50 / 255], abs=1e-3)
    splits = [s.split for s in load_catalog(tmp_path).samples]
    assert {sp: c["total"] for sp, c in report["per_split"].items()} == {sp: splits.count(sp) for sp in set(splits)}
    assert len(report["per_split"]) == 3


def test_a_missing_image_concerns_only_its_own_split(tmp_path):
    """Training is not refused for a test photograph that is missing; the test split names it."""
    make_kaggle(tmp_path, n_patients=30)
    gone = next(s for s in load_catalog(tmp_path).samples if s.split == "test")
    (tmp_path / f"{gone.image}.jpeg").unlink()
    train = FundusDataset(tmp_path, "train", image_size=32)
    assert train.skipped == [] and len(train) == sum(s.split == "train" for s in load_catalog(tmp_path).samples)
    with pytest.raises(DataError, match=f"trainLabels.csv:{gone.line}: .*{gone.image}"):
        FundusDataset(tmp_path, "test", image_size=32)


def test_missing_image(tmp_path, kaggle):
    (kaggle / "3_left.jpeg").unlink()
    with pytest.raises(DataError, match=r"trainLabels.csv:8: image 3_left not found") as e:
        FundusDataset(kaggle, "all", image_size=32)
    assert e.value.hint.startswith(f"11 of the 12 listed images are in {kaggle}. Fix the files, or pass --skip-bad")
    ds = FundusDataset(kaggle, "all", image_size=32, skip_bad=True)
    assert len(ds) == 11 and "3_left" in str(ds.skipped[0])
    rc, report = check(tmp_path, kaggle)
    assert rc == 1 and kinds(report) == ["missing-image"] and report["problems"][0]["line"] == 8


def test_images_one_folder_down_from_images_are_pointed_to(tmp_path, kaggle):
    """--images one level above the photographs finds none: the error says so first, also when --skip-bad dropped
    every row (the empty split was the last of the problems), and names the folder below that holds them."""
    labels = tmp_path / "labels"
    labels.mkdir()
    (kaggle / "trainLabels.csv").rename(labels / "trainLabels.csv")
    (tmp_path / "pics").mkdir()
    kaggle.rename(tmp_path / "pics" / "images")
    hint = (f"None of the 12 listed images is in {tmp_path / 'pics'}; {tmp_path / 'pics' / 'images'} holds images: "
            "pass the folder that holds them as --images (in Python: images=).")
    with pytest.raises(DataError) as e:
        FundusDataset(labels, "all", image_size=32, images=tmp_path / "pics")
    assert e.value.hint.startswith(hint) and "--skip-bad" not in e.value.hint  # it would drop every row
    with pytest.raises(DataError) as e:
        FundusDataset(labels, "all", image_size=32, images=tmp_path / "pics", skip_bad=True)
    assert str(e.value).splitlines()[1] == (f"  {labels}: no images in split 'all': --skip-bad (skip_bad=True) "
                                            "dropped all 12 of its rows")
    assert e.value.hint.startswith(hint)
    assert len(FundusDataset(labels, "all", image_size=32, images=tmp_path / "pics" / "images")) == 12
    (tmp_path / "pics" / "train").write_text("")  # a file named like a folder looked into
    with pytest.raises(DataError):
        FundusDataset(labels, "all", image_size=32, images=tmp_path / "pics")


@pytest.mark.parametrize("damage", ["zero-byte", "truncated", "garbage"])
def test_unreadable_images(tmp_path, kaggle, damage):
    path = kaggle / "2_right.jpeg"
    if damage == "zero-byte":
        path.write_bytes(b"")
    elif damage == "truncated":
        disc(path, size=300)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(b"this is not an image" * 20)
    with pytest.raises(DataError, match="2_right"):
        FundusDataset(kaggle, "all", image_size=32)
    with pytest.raises(ImageError, match=r"empty file \(0 bytes\)" if damage == "zero-byte" else None):
        open_image(path)  # an empty file (a copy that failed) is not called a format problem
    rc, report = check(tmp_path, kaggle)
    assert rc == 1 and kinds(report) == ["bad-image"] and "2_right" in report["problems"][0]["message"]


def test_truncated_image_is_not_loaded_silently(tmp_path):
    from PIL import ImageFile

    path = disc(tmp_path / "a.jpeg", size=400)
    path.write_bytes(path.read_bytes()[:-600])
    with pytest.raises(ImageError, match="truncated|cannot decode"):
        open_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_truncated_png_and_tiff_fail_at_construction(tmp_path, ext):
    """Not only JPEGs: a half-copied PNG or TIFF stops the Dataset before training, not mid-epoch."""
    make_kaggle(tmp_path, n_patients=3, ext=ext)
    path = tmp_path / f"1_left{ext}"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    FundusDataset(tmp_path, "all", image_size=32)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=f"1_left{ext}: .*(truncated|corrupt)"):
        FundusDataset(tmp_path, "all", image_size=32)
    error = ImageError(f"{path}: truncated")  # how a DataLoader worker re-raises it: one argument
    assert isinstance(error, RetinopathyError) and str(error) == f"{path}: truncated"


def noise(size, fmt="JPEG", **options):
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(size).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
        out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_end_marker_past_a_trailer_and_not_in_the_thumbnail(tmp_path, progressive):
    """Bytes after the image (phones append trailers) are fine; a cut file is refused although the EOI of its
    EXIF thumbnail is near its end."""
    thumbnail = b"Exif\0\0" + noise(8)
    jpeg = noise(64, progressive=progressive)
    jpeg = jpeg[:2] + b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail + jpeg[2:]
    path = tmp_path / "a.jpeg"
    path.write_bytes(jpeg + bytes(8192))
    assert check_image(path) == (64, 64) and open_image(path).size == (64, 64)
    path.write_bytes(jpeg[: len(jpeg) // 2])  # in the scan data
    with pytest.raises(ImageError, match="truncated JPEG"):
        check_image(path)


def corrupt_png(path):
    png = bytearray(noise(64, "PNG"))
    png[png.index(b"IDAT") + 100] ^= 0xFF  # the IEND stays
    path.write_bytes(png)
    return path


def test_png_with_corrupt_data_fails_at_construction(tmp_path):
    """... with Pillow's reason, and `data check` reports what training refuses."""
    make_kaggle(tmp_path, n_patients=3, ext=".png")
    corrupt_png(tmp_path / "1_left.png")
    with pytest.raises(DataError, match="1_left.png: corrupt or truncated \\(.*checksum"):
        FundusDataset(tmp_path, "all", image_size=32)
    rc, report = check(tmp_path, tmp_path)
    assert rc == 1 and [p["image"] for p in report["problems"]] == ["1_left"]


@pytest.mark.parametrize("error, says", [
    (PermissionError(13, "Permission denied"), "cannot read it: permission denied; let the user running"),
    (OSError(5, "Input/output error"), "cannot read it: Input/output error (the file system's error, not the"),
    (IsADirectoryError(21, "Is a directory"), "a folder, not an image file; name an image in it"),
])
def test_an_unreadable_file_is_not_called_corrupt(tmp_path, kaggle, monkeypatch, error, says):
    """A file the system will not read (permission denied as another user, an I/O error) says so: it is neither
    corrupt nor to be re-exported (root reads any file, so the refusal is simulated)."""
    path, real_open = kaggle / "2_right.jpeg", Image.open

    def refusing(fp, *a, **kw):
        if str(fp) == str(path):
            raise type(error)(error.errno, error.strerror, str(path))
        return real_open(fp, *a, **kw)
    monkeypatch.setattr(Image, "open", refusing)
    for read in (check_image, open_image):
        with pytest.raises(ImageError, match="2_right.jpeg: " + says.replace("(", r"\(")) as e:
            read(path)
        assert "corrupt" not in str(e.value) and "decode" not in str(e.value)
    with pytest.raises(DataError, match=says.replace("(", r"\(")):
        FundusDataset(kaggle, "all", image_size=32)
    rc, report = check(tmp_path, kaggle)
    assert rc == 1 and [p["image"] for p in report["problems"]] == ["2_right"]
    assert says in report["problems"][0]["message"]


def test_a_labels_file_that_cannot_be_read_is_named(tmp_path, kaggle, monkeypatch, capsys):
    """An I/O error reading the labels (read() names no file) was a traceback in data check, and prepare called
    it "cannot write OUT"; both name the labels file, and prepare leaves OUT alone."""
    from pathlib import Path

    labels, real_read = kaggle / "trainLabels.csv", Path.read_bytes

    def failing(self):
        if self == labels:
            raise OSError(5, "Input/output error")
        return real_read(self)
    monkeypatch.setattr(Path, "read_bytes", failing)
    for command in (["data", "check", str(kaggle), "--json", str(tmp_path / "check.json")],
                    ["prepare", str(kaggle), str(tmp_path / "out"), "--size", "32"]):
        assert main([*command, "--quiet"]) == 2
        assert f"error: 1 problem(s) in the dataset:\n  {labels}: cannot be read: Input/output error" \
            in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    from retinopathy.data import prepare

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(kaggle / "images"))
    monkeypatch.setattr(prepare, "prepare", refused)  # a read of the source refused: not called a write of OUT
    assert main(["prepare", str(kaggle), str(tmp_path / "out"), "--quiet"]) == 2
    assert capsys.readouterr().err == f"error: {kaggle / 'images'}: Permission denied\n"


def test_corrupt_scan_data_is_dropped_by_the_cache_and_named_while_training(tmp_path):
    """End marker intact, scan data broken: the start-up check cannot see it (no decode); the cache's decode at
    construction reports it like any bad image, and without the cache the item's error names the row and the way
    out."""
    make_kaggle(tmp_path, n_patients=3)
    jpeg = bytearray((tmp_path / "1_left.jpeg").read_bytes())
    mid = (jpeg.index(b"\xff\xda") + len(jpeg)) // 2
    jpeg[mid:mid + 10] = b"\xff\xc0" * 5
    (tmp_path / "1_left.jpeg").write_bytes(jpeg)
    with pytest.raises(DataError, match="trainLabels.csv:.*1_left: .*cannot decode: .*damaged: copy or export it"):
        FundusDataset(tmp_path, "all", image_size=32, cache=True)
    ds = FundusDataset(tmp_path, "all", image_size=32, cache=True, skip_bad=True)
    assert [p.image for p in ds.skipped] == ["1_left"] and len(ds) == 5 and len(ds.cache) == 5
    ds = FundusDataset(tmp_path, "all", image_size=32)
    index = next(i for i in range(len(ds)) if ds.image_id(i) == "1_left")
    with pytest.raises(ImageError, match=r"cannot decode: .*\(.*trainLabels.csv:\d+\)\. `retinopathy data check`"):
        ds[index]


def test_float_images_in_zero_to_one_are_not_black(tmp_path):
    arr = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray(arr, mode="F").save(tmp_path / "f.tiff")
    a = np.asarray(open_image(tmp_path / "f.tiff"))
    assert a[0, 0].max() == 0 and a[-1, -1].min() == 255
    arr[0, 0] = np.nan  # one missing value must not turn the picture black
    Image.fromarray(arr, mode="F").save(tmp_path / "nan.tiff")
    assert np.array_equal(np.asarray(open_image(tmp_path / "nan.tiff"))[1:], a[1:])


def test_one_name_in_two_formats_takes_the_first_listed_extension(tmp_path):
    from retinopathy.data.images import index_images

    for name in ("1_left.PNG", "1_left.jpeg", "2_left.tif", "2_left.png"):
        (tmp_path / name).write_bytes(b"x")
    index = index_images(tmp_path)
    assert (index["1_left"], index["2_left"]) == ("1_left.jpeg", "2_left.png")
    assert index["1_left.PNG"] == "1_left.PNG"


def open_all(paths):
    return [open_image(p) for p in paths]


def test_image_error_from_a_loader_worker_is_its_own_message(tmp_path):
    """A DataLoader worker re-raises ImageError with its traceback as the one argument: only the message stays."""
    path = corrupt_png(tmp_path / "a.png")
    with pytest.raises(ImageError) as direct:
        open_image(path)
    with pytest.raises(ImageError) as from_worker:
        next(iter(DataLoader([str(path)], num_workers=1, collate_fn=open_all)))
    assert str(from_worker.value) == str(direct.value)


@pytest.mark.parametrize("label", ["7", "-1", "two", "2.5", "", "²", "5.0", "nan", "inf", "1e0", "2.", "-0.0"])
def test_bad_label(tmp_path, kaggle, label):
    text = (kaggle / "trainLabels.csv").read_text().splitlines()
    text[4] = text[4].split(",")[0] + "," + label
    (kaggle / "trainLabels.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"trainLabels.csv:5: label .* is not an integer 0-4"):
        FundusDataset(kaggle, "all", image_size=32)
    rc, report = check(tmp_path, kaggle)
    assert rc == 1 and kinds(report) == ["bad-label"]


def test_rows_with_too_few_or_too_many_fields_are_named(tmp_path, kaggle):
    text = (kaggle / "trainLabels.csv").read_text().splitlines()
    text[2], text[5] = text[2].split(",")[0], text[5] + ",x"  # a row cut short, one with a stray field
    (kaggle / "trainLabels.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"(?s)trainLabels.csv:3: 1 fields where the header has 2.*"
                                        r"trainLabels.csv:6: 3 fields where the header has 2"):
        FundusDataset(kaggle, "all", image_size=32)
    rc, report = check(tmp_path, kaggle)
    assert rc == 1 and kinds(report) == ["bad-row"] and [p["line"] for p in report["problems"]] == [3, 6]


def test_a_stray_quote_names_every_line_it_swallows(tmp_path, kaggle):
    """A quote that opens a field and never closes makes the CSV reader take the rest of the file as one field:
    the rows after it were lost without a word, and later line numbers were off. Now the row says which lines it
    ran over, and a quoted field that closes on a later line shifts no line number."""
    text = (kaggle / "trainLabels.csv").read_text().splitlines()
    n = len(text)
    text[3] = '"' + text[3]  # line 4
    (kaggle / "trainLabels.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=rf"trainLabels.csv:4: a quoted field runs from here to line {n}, so lines "
                                        rf"4-{n} read as one row: remove the stray '\"'"):
        FundusDataset(kaggle, "all", image_size=32, val_fraction=0, test_fraction=0)
    rc, report = check(tmp_path, kaggle)  # 12 rows: 2 read, 10 in the one bad row; it says so
    assert rc == 1 and report["per_grade"]["total"] == 2 and [p["line"] for p in report["problems"]] == [4]
    text[3] = text[3][1:]
    text[2] = text[2].replace(",", ',"', 1) + '\n"'  # a label quoted across two lines (line 3-4), then a bad one
    text[5] = text[5].split(",")[0] + ",9"
    (kaggle / "trainLabels.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"(?s)trainLabels.csv:3: a quoted field runs from here to line 4.*"
                                        r"trainLabels.csv:7: label '9'"):
        FundusDataset(kaggle, "all", image_size=32)
    notes = kaggle / "notes.csv"  # a closed quote around a note over two lines: a row as any other
    notes.write_text('image,level,note\n1_left,2,"seen twice,\nsecond visit"\n1_right,3,\n')
    rc, report = check(tmp_path, kaggle, "--labels", str(notes))
    assert report["problems"] == [] and report["per_grade"]["2"] == report["per_grade"]["3"] == 1


def test_eyes_are_named_in_any_case(tmp_path):
    """``10_Left`` and ``10_RIGHT`` are one patient's two eyes: they stay on one side of every split."""
    from retinopathy.data.formats import patient_of

    assert patient_of("10_Left") == patient_of("10_RIGHT") == patient_of("10_left.jpeg") == "10"
    rows = [f"{p}_{eye},{p % 5}" for p in range(40) for eye in ("LEFT", "Right")]
    for row in rows:
        disc(tmp_path / f"{row.split(',')[0]}.jpeg", size=32)
    (tmp_path / "trainLabels.csv").write_text("image,level\n" + "\n".join(rows) + "\n")
    rc, report = check(tmp_path, tmp_path)
    assert rc == 0 and report["patients"] == 40
    assert report["shared_patients"] and all(v["shared"] == 0 for v in report["shared_patients"].values())


def test_names_without_an_eye_suffix_keep_their_folder_as_part_of_the_patient(tmp_path):
    """``p7/left`` and ``p7/right`` are patient p7's eyes; ImageFolder's ``train/0/1.png`` and ``val/0/1.png`` are
    two patients (not one patient leaking from train into val), as are ``a/x.png`` and ``b/x.png``."""
    from retinopathy.data import read_catalog
    from retinopathy.data.formats import patient_of
    from retinopathy.data.splits import leakage_warnings

    assert patient_of("p7/left.jpeg") == patient_of("p7\\RIGHT") == "p7"
    assert patient_of("left/7.jpeg") == patient_of("Right/7") == "7"  # a folder per eye
    assert patient_of("site/left/7") == "site/7" != patient_of("other/right/7")
    assert len({patient_of("a/x.png"), patient_of("b/x.png"), patient_of("x")}) == 3
    rows = [f"p{p}/{eye}.jpeg,{p % 5}" for p in range(20) for eye in ("left", "right")]
    for row in rows:
        disc(tmp_path / "perpatient" / row.split(",")[0], size=32)
    (tmp_path / "perpatient" / "trainLabels.csv").write_text("image,level\n" + "\n".join(rows) + "\n")
    rc, report = check(tmp_path, tmp_path / "perpatient")
    assert rc == 0 and report["patients"] == 20
    assert all(v["shared"] == 0 for v in report["shared_patients"].values())

    for split, n in (("train", 15), ("val", 5)):
        for i in range(n):
            disc(tmp_path / "folders" / split / str(i % 5) / f"{i}.png", size=32)
    samples = read_catalog(tmp_path / "folders").samples
    assert len({s.patient for s in samples}) == 20 and leakage_warnings(samples) == []
    for split, eye in (("train", "left"), ("val", "right")):  # a folder per patient: p7's eyes in train and val
        for p in range(10):
            disc(tmp_path / "perfolder" / split / str(p % 5) / f"p{p}" / f"{eye}.png", size=32)
    samples = read_catalog(tmp_path / "perfolder").samples
    assert len({s.patient for s in samples}) == 10  # one patient each, whichever split folder an eye is in
    [warning] = leakage_warnings(samples)
    assert warning.startswith("10 of 10 val patients also have an eye in train (patient leakage")


@pytest.mark.parametrize("end", [b"\r\n", b"\r\r\n", b"\r"])
def test_any_line_ending_gives_the_rows_and_line_numbers_an_editor_shows(tmp_path, end):
    """Windows (\\r\\n), text-mode csv.writer on Windows (\\r\\r\\n, no blank rows in between) and old Mac (\\r) line
    ends: one row per line, and a bad label reported on its own line."""
    from retinopathy.data import read_catalog

    for name in ("1_left", "1_right", "2_left"):
        disc(tmp_path / "lab" / "images" / f"{name}.jpeg", size=32)
        disc(tmp_path / "kaggle" / f"{name}.jpeg", size=32)
    (tmp_path / "lab" / "train_img.csv").write_bytes(end.join([b"1_left", b"1_right", b"2_left", b""]))
    (tmp_path / "lab" / "train_label.csv").write_bytes(end.join([b"0", b"7", b"2", b""]))
    (tmp_path / "kaggle" / "trainLabels.csv").write_bytes(end.join([b"image,level", b"1_left,0", b"1_right,7",
                                                                     b"2_left,2", b""]))
    for folder, file, line in (("lab", "train_label.csv", 2), ("kaggle", "trainLabels.csv", 3)):
        catalog = read_catalog(tmp_path / folder)
        assert [(Path(p.file).name, p.line, p.image) for p in catalog.problems] == [(file, line, "1_right")]
        assert sorted(s.image for s in catalog.samples) == ["1_left", "2_left"]


def test_blank_lines_above_the_header_are_skipped(tmp_path):
    from retinopathy.data import read_catalog

    make_kaggle(tmp_path, n_patients=2)
    labels = tmp_path / "trainLabels.csv"
    labels.write_text("\n  \n" + labels.read_text() + "3_left,9\n")
    catalog = read_catalog(tmp_path)
    assert len(catalog.samples) == 4 and [(p.line, p.image) for p in catalog.problems] == [(8, "3_left")]


def test_whole_number_float_labels(tmp_path, kaggle):
    """pandas writes an integer column that once held NaN as 2.0: such grades are read, in every format."""
    text = (kaggle / "trainLabels.csv").read_text().splitlines()
    (kaggle / "trainLabels.csv").write_text("\n".join(text[:1] + [f"{r}.0" if i % 2 else f"{r}.00"
                                                                   for i, r in enumerate(text[1:])]) + "\n")
    cat = load_catalog(kaggle, val_fraction=0)
    assert not cat.problems and [f"{s.image},{s.label}" for s in cat.samples] == text[1:]
    (kaggle / "train_img.csv").write_text("0_left\n0_right\n")
    (kaggle / "train_label.csv").write_text("3.0\n4.00\n")
    assert [s.label for s in load_catalog(kaggle, val_fraction=0).samples] == [3, 4]


def test_lab_files_of_different_lengths(tmp_path):
    for i in range(4):
        disc(tmp_path / f"{i}_left.jpeg")
    (tmp_path / "train_img.csv").write_text("0_left\n1_left\n2_left\n3_left\n")
    (tmp_path / "train_label.csv").write_text("0\n1\n2\n")
    with pytest.raises(DataError, match="train_img.csv has 4 lines but train_label.csv has 3"):
        FundusDataset(tmp_path, "train", image_size=32, val_fraction=0)
    with pytest.raises(DataError, match="not files out of step"):  # the pairs after the gap cannot be trusted
        FundusDataset(tmp_path, "train", image_size=32, val_fraction=0, skip_bad=True)
    rc, report = check(tmp_path, tmp_path)
    assert rc == 1 and "length-mismatch" in kinds(report)


def test_lab_files_with_a_header_line_say_so(tmp_path):
    """pandas' to_csv writes a header by default; the lab's CSVs have none."""
    for i in range(3):
        disc(tmp_path / f"{i}_left.jpeg")
    (tmp_path / "train_img.csv").write_text("image\n0_left\n1_left\n2_left\n")
    (tmp_path / "train_label.csv").write_text("level\n0\n1\n2\n")
    with pytest.raises(DataError, match=r"train_label.csv:1: train_img.csv's line 1, 'image', and train_label.csv's "
                                        r"line 1, 'level', look like a header: the lab's CSVs have none; remove it"):
        FundusDataset(tmp_path, "train", image_size=32, val_fraction=0)
    (tmp_path / "train_label.csv").write_text("0\n1\n2\n")  # the header in one file only: out of step
    with pytest.raises(DataError, match=r"has 4 lines but train_label.csv has 3; .*train_img.csv's line 1, 'image', "
                                        r"looks like a header"):
        FundusDataset(tmp_path, "train", image_size=32, val_fraction=0)
    disc(tmp_path / "abc_left.jpeg")  # a first image named without digits, with its grade: a row, not a header
    (tmp_path / "train_img.csv").write_text("abc_left\n0_left\n1_left\n2_left\n")
    (tmp_path / "train_label.csv").write_text("3\n0\n1\n2\n")
    assert len(FundusDataset(tmp_path, "train", image_size=32, val_fraction=0)) == 4
    (tmp_path / "train_label.csv").write_text("0,3\n1,0\n2,1\n3,2\n")  # to_csv's default index=True
    with pytest.raises(DataError, match=r"train_label.csv:1: label '0,3' for abc_left is not an integer 0-4 \(pandas' "
                                        r"row index before the grade\? write the lab's CSVs with to_csv\(\.\.\., "
                                        r"header=False, index=False\)\)"):
        FundusDataset(tmp_path, "train", image_size=32, val_fraction=0)
    (tmp_path / "train_label.csv").write_text("3,x\n0\n1\n2\n")  # not an index and a grade: no such guess
    with pytest.raises(DataError, match=r"label '3,x' for abc_left is not an integer 0-4\n"):
        FundusDataset(tmp_path, "train", image_size=32, val_fraction=0)


@pytest.mark.parametrize("encoding, line", [("cp1252", 4), ("utf-16", 1)])
def test_labels_not_in_utf8(tmp_path, kaggle, encoding, line):
    labels = kaggle / "trainLabels.csv"
    labels.write_bytes(labels.read_text().replace("1_left", "1_léft").encode(encoding))
    with pytest.raises(DataError, match=f"trainLabels.csv:{line}: byte .* is not UTF-8.*\n.*Re-save"):
        FundusDataset(kaggle, "all", image_size=32)
    (kaggle / "train_img.csv").write_bytes("0_left\n0_right\n1_right\n1_léft\n".encode(encoding))  # the lab format
    (kaggle / "train_label.csv").write_text("0\n1\n2\n1\n")
    with pytest.raises(DataError, match=f"train_img.csv:{line}: byte .* is not UTF-8"):
        load_catalog(kaggle)
    assert main(["data", "check", str(kaggle), "--json", str(tmp_path / "r.json"), "--quiet"]) == 2


def test_unreadable_csv(tmp_path, kaggle):
    with open(kaggle / "trainLabels.csv", "a") as f:
        f.write(f'"{"x" * 200_000}",1\n')  # over the csv module's field size limit
    with pytest.raises(DataError, match=r"trainLabels.csv:14: not a readable CSV file \(field larger"):
        FundusDataset(kaggle, "all", image_size=32)


@pytest.mark.parametrize("layout", ["lab", "folders", "--labels DIR"])
@pytest.mark.parametrize("fmt", ["kaggle", "csv"])
def test_csv_format_on_a_folder_without_labels_file(tmp_path, fmt, layout):
    if layout == "lab":
        disc(tmp_path / "0_left.jpeg")
        (tmp_path / "train_img.csv").write_text("0_left\n")
        (tmp_path / "train_label.csv").write_text("0\n")
    elif layout == "folders":
        for g in range(5):
            disc(tmp_path / str(g) / f"{g}_left.jpeg")
    else:
        make_kaggle(tmp_path, n_patients=2)
    labels = tmp_path / "images" if layout == "--labels DIR" else None
    if labels:
        labels.mkdir()
    found = "" if labels else f" in the {layout} format"
    with pytest.raises(DataError, match=f"--format {fmt} reads a labels CSV file, but this is a folder{found}\n"
                                        "Pass --labels FILE"):
        load_catalog(tmp_path, format=fmt, labels=labels)
    args = ["--labels", str(labels)] if labels else []
    assert main(["data", "check", str(tmp_path), "--format", fmt, *args, "--quiet",
                 "--json", str(tmp_path / "r.json")]) == 2


def test_labels_file_given_as_the_dataset_folder(tmp_path, kaggle, capsys):
    labels = kaggle / "trainLabels.csv"
    with pytest.raises(DataError, match=f"{labels}: a file, not a dataset folder: pass its folder {kaggle} as DATA"
                                        f"\nOr pass --labels {labels} with the folder"):
        load_catalog(labels)
    assert main(["data", "check", str(labels), "--quiet", "--json", str(tmp_path / "r.json")]) == 2
    assert "a file, not a dataset folder" in capsys.readouterr().err


def test_duplicate_names(tmp_path, kaggle):
    with open(kaggle / "trainLabels.csv", "a") as f:
        f.write("1_left,1\n")
    for split in ("all", "train", "val", "test"):  # a row that is no sample concerns every split
        with pytest.raises(DataError, match=r"trainLabels.csv:14: image 1_left is listed again \(first at "
                                            r"trainLabels.csv:4\)"):
            FundusDataset(kaggle, split, image_size=32, val_fraction=0.2)
    rc, report = check(tmp_path, kaggle)
    assert rc == 1 and kinds(report) == ["duplicate"]


def test_one_image_under_two_names_is_a_duplicate(tmp_path, kaggle):
    """With and without its extension, through ./, a symbolic or a hard link to the same file: one image listed
    twice. Two files that only share a stem are two images."""
    (kaggle / "sub").mkdir()
    (kaggle / "sub" / "x.jpeg").symlink_to(kaggle / "2_left.jpeg")
    (kaggle / "sub" / "y.jpeg").hardlink_to(kaggle / "3_left.jpeg")
    disc(kaggle / "9_left.png")
    disc(kaggle / "9_left.JPG")
    with open(kaggle / "trainLabels.csv", "a") as f:  # each with its first row's grade
        f.write("1_right.jpeg,2\n./2_left.jpeg,2\nsub/x.jpeg,2\nsub/y.jpeg,3\n9_left.png,0\n9_left.JPG,0\n")
    catalog = load_catalog(kaggle)
    assert [(p.kind, p.line) for p in catalog.problems] == [("duplicate", line) for line in (14, 15, 16, 17)]
    assert "first at trainLabels.csv:5, as 1_right" in catalog.problems[0].message
    assert "first at trainLabels.csv:8, as 3_left" in catalog.problems[3].message
    assert len(catalog.samples) == 14


def test_rows_of_one_image_with_two_grades_are_both_refused(tmp_path, kaggle):
    """Which grade is right is unknown: keeping the first row (as --skip-bad did) kept the wrong one as often as
    not. Both rows are problems, each naming the other, and --skip-bad drops both."""
    with open(kaggle / "trainLabels.csv", "a") as f:
        f.write("1_right,4\n./1_right.jpeg,0\n")  # 1_right is grade 2 at line 5
    catalog = load_catalog(kaggle)
    assert [str(p).split(": ", 1)[1] for p in catalog.problems] == [
        "image 1_right is listed again with grade 4 (grade 2 there) (first at trainLabels.csv:5); remove one of the "
        "rows, keeping the right grade",
        "image ./1_right.jpeg is listed again with grade 0 (grade 2 there) (first at trainLabels.csv:5, as 1_right); "
        "remove one of the rows, keeping the right grade",
        "image 1_right has grade 2 here and 4 at trainLabels.csv:14: neither is used until one is removed"]
    assert [p.line for p in catalog.problems] == [14, 15, 5]
    assert "1_right" not in {s.image for s in catalog.samples} and len(catalog.samples) == 11
    dataset = FundusDataset(kaggle, "all", image_size=32, skip_bad=True)
    assert len(dataset) == 11 and len(dataset.skipped) == 3


def test_a_duplicate_across_the_lab_splits_is_reported_in_both(tmp_path):
    """A test row naming a training image: the test split must not lose it silently."""
    from retinopathy.data.synth import generate

    generate(tmp_path, n=20, size=32, seed=0, format="lab", progress=False)
    train_name = (tmp_path / "train_img.csv").read_text().splitlines()[0]
    n_test = len((tmp_path / "test_img.csv").read_text().splitlines())
    with open(tmp_path / "test_img.csv", "a") as f, open(tmp_path / "test_label.csv", "a") as g:
        f.write(f"{train_name}\n")
        g.write((tmp_path / "train_label.csv").read_text().splitlines()[0] + "\n")  # the same grade: one row too many
    for split in ("train", "test"):
        with pytest.raises(DataError, match=rf"test_img.csv:{n_test + 1}: image {train_name} is listed again "
                                            r"\(first at train_img.csv:1\)"):
            FundusDataset(tmp_path, split, image_size=32)
    assert len(FundusDataset(tmp_path, "test", image_size=32, skip_bad=True).skipped) == 1


def test_lab_image_problems_name_the_file_that_names_the_image(tmp_path):
    from retinopathy.data.synth import generate

    generate(tmp_path, n=20, size=32, seed=0, format="lab", progress=False)
    first = (tmp_path / "train_img.csv").read_text().splitlines()[0]
    next(tmp_path.glob(f"{first}.*")).unlink()
    assert [str(p).split(": ")[0] for p in load_catalog(tmp_path).problems] == [f"{tmp_path / 'train_img.csv'}:1"]


def test_data_check_of_grade_folders_says_where_the_images_are(tmp_path, capsys):
    for grade in range(5):
        disc(tmp_path / str(grade) / f"{grade}_left.jpeg")
    rc, report = check(tmp_path, tmp_path)
    assert rc == 0 and "(format: folders; images in the grade folders)" in capsys.readouterr().out


def test_a_stray_picture_does_not_hide_the_images_folder(tmp_path):
    make_kaggle(tmp_path, n_patients=3, sub="images")
    disc(tmp_path / "preview.png")
    catalog = load_catalog(tmp_path)
    assert catalog.image_root == tmp_path / "images" and not catalog.problems


def test_an_image_folder_that_does_not_exist_is_one_error(tmp_path, kaggle):
    with pytest.raises(DataError, match=r"^1 problem.*\n.*nowhere: image folder \(--images\) not found"):
        load_catalog(kaggle, images=tmp_path / "nowhere")
    assert len(load_catalog(kaggle, images=tmp_path / "nowhere", resolve=False).samples) == 12  # labels only


def test_an_empty_patient_id_is_a_bad_row(tmp_path, kaggle):
    rows = (kaggle / "trainLabels.csv").read_text().splitlines()
    (kaggle / "trainLabels.csv").write_text("\n".join([rows[0] + ",patient"] + [
        f"{r},{'' if i == 3 else r.split('_')[0]}" for i, r in enumerate(rows[1:], start=2)]) + "\n")
    catalog = load_catalog(kaggle, patient_col="patient")
    assert [(p.kind, p.line) for p in catalog.problems] == [("bad-row", 3)]
    assert "empty 'patient'" in catalog.problems[0].message and len(catalog.samples) == 11


def test_a_nearly_black_photograph_is_a_warning_of_data_check(tmp_path, kaggle):
    Image.new("RGB", (48, 48), (3, 2, 1)).save(kaggle / "4_left.jpeg")
    rc, report = check(tmp_path, kaggle)
    assert rc == 0 and report["problems"] == []
    assert [(w["kind"], w["image"], w["line"]) for w in report["warnings"]] == [("blank-image", "4_left", 10)]
    Image.new("RGB", (48, 48), (30, 30, 30)).save(kaggle / "4_left.jpeg")  # 12-bit values in a 16-bit file, say
    Image.new("RGB", (150, 48), (200, 100, 50)).save(kaggle / "5_left.jpeg")  # two photographs side by side
    Image.open(kaggle / "3_left.jpeg").convert("L").save(kaggle / "3_left.jpeg")  # a red-free photograph
    rc, report = check(tmp_path, kaggle)
    assert rc == 0 and report["problems"] == []
    assert [(w["kind"], w["image"]) for w in report["warnings"]] == [("grey-image", "3_left"),
                                                                      ("dark-image", "4_left"),
                                                                      ("narrow-image", "5_left")]
    assert "reaches 30 of 255" in report["warnings"][1]["message"]
    assert "150x48 px, sides 3.1:1, far from a photograph of the eye's" in report["warnings"][2]["message"]


def test_two_files_of_a_listed_name_are_a_warning_of_data_check(tmp_path, kaggle):
    """1_left.jpeg and 1_left.png beside it (another photograph, say): the labels' 1_left read one of them silently
    (grade folders report such a pair as a duplicate)."""
    Image.new("RGB", (48, 48), (200, 100, 50)).save(kaggle / "1_left.png")
    rc, report = check(tmp_path, kaggle)
    assert rc == 0 and report["problems"] == []
    [warning] = report["warnings"]
    assert (warning["kind"], warning["image"]) == ("namesake", "1_left")
    assert warning["message"] == ("1_left: 1_left.png beside 1_left.jpeg, which is read; if it is another "
                                  "photograph, rename it (or write the extension in the labels)")


def test_empty_dataset(tmp_path):
    (tmp_path / "trainLabels.csv").write_text("image,level\n")
    with pytest.raises(DataError, match="the dataset has no images: trainLabels.csv lists none"):
        FundusDataset(tmp_path, "all", image_size=32)
    (tmp_path / "lab").mkdir()  # the lab format asked of a folder without its CSVs: which files it looked for
    with pytest.raises(DataError, match="no train_img.csv \\+ train_label.csv or test_img.csv \\+ test_label.csv "
                                        "here \\(the lab format's files\\)\n"):
        load_catalog(tmp_path / "lab", format="lab")
    with pytest.raises(DataError, match="here \\(the lab format's files\\); it holds the kaggle format: leave out "
                                        "--labels/--format to read it"):  # --labels given its folder: not the lab's
        load_catalog(tmp_path, labels=tmp_path)
    (tmp_path / "lab" / "train_img.csv").write_text("")
    (tmp_path / "lab" / "train_label.csv").write_text("")
    [problem] = load_catalog(tmp_path / "lab").problems
    assert (problem.kind, problem.file) == ("empty", str(tmp_path / "lab" / "train_img.csv"))
    assert problem.message == ("train_img.csv and train_label.csv are empty: the train split has no images; write an "
                               "image name a line in train_img.csv and its grade on the same line of train_label.csv")
    (tmp_path / "lab" / "test_img.csv").write_text("1_left\n")  # the other pair's rows: the empty pair still said
    (tmp_path / "lab" / "test_label.csv").write_text("0\n")
    disc(tmp_path / "lab" / "1_left.jpeg")
    assert [(p.kind, p.file) for p in load_catalog(tmp_path / "lab").problems] == [
        ("empty", str(tmp_path / "lab" / "train_img.csv"))]
    for name in ("train_img.csv", "train_label.csv"):
        (tmp_path / "lab" / name).rename(tmp_path / "lab" / name.replace("train", "test"))
    (tmp_path / "lab" / "train_img.csv").write_text("1_left\n")
    (tmp_path / "lab" / "train_label.csv").write_text("0\n")
    [problem] = load_catalog(tmp_path / "lab").problems
    assert problem.message.endswith("test_label.csv, or remove both (a test split is then carved from train)")
    (tmp_path / "grades" / "0").mkdir(parents=True)
    [problem] = load_catalog(tmp_path / "grades", format="folders").problems
    assert "no image files in its grade folders 0/ ... 4/" in problem.message
    with pytest.raises(DataError, match="image folder \\(--images\\) is a file, not a folder"):
        load_catalog(tmp_path, images=tmp_path / "trainLabels.csv")


@pytest.mark.parametrize("first,rows,said", [
    ("image;level", "0_left;0\n", "separated by ';', not commas"),
    ("0_left,0", "0_right,1\n", "the first line, 0_left,0, looks like a row, not a header: add a header line"),
    ("", "", "the file is empty: write a header line (image,level)"),
])
def test_a_labels_file_no_row_of_which_is_usable_is_named_with_what_to_do(tmp_path, kaggle, capsys, first, rows,
                                                                          said):
    """Every row refused: the error is the file's, with advice that fits it; training says so too (it used to
    report the consequence instead, an empty val split)."""
    (kaggle / "trainLabels.csv").write_text(f"{first}\n{rows}" if first else "")
    rc, report = check(tmp_path, kaggle)
    assert rc == 1 and [p["kind"] for p in report["problems"]] == ["bad-header"] and said in report["problems"][0][
        "message"]
    assert main(["train", "--data", str(kaggle), "--model", "resnet18", "--no-pretrained", "--image-size", "32",
                 "--workers", "0", "--quiet", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{kaggle / 'trainLabels.csv'}:1:" in err and said in err and "no image is in" not in err


def test_lab_images_kept_in_two_folders_are_pointed_at(tmp_path):
    """One image folder serves the lab's four CSVs: test images kept apart in DATA/test/ are 'not found' in
    DATA/train/, and the message says where they are."""
    for split, patients in (("train", range(4)), ("test", range(4, 6))):
        names = [f"{p}_left" for p in patients]
        for n in names:
            disc(tmp_path / split / f"{n}.jpeg")
        (tmp_path / f"{split}_img.csv").write_text("\n".join(names) + "\n")
        (tmp_path / f"{split}_label.csv").write_text("\n".join("0" for _ in names) + "\n")
    problems = load_catalog(tmp_path).problems
    assert [(p.kind, p.line) for p in problems] == [("missing-image", 1), ("missing-image", 2)]
    assert f"it is in {tmp_path / 'test'}: keep the images in one folder" in problems[0].message


def test_one_of_the_lab_csvs_given_as_labels_names_their_folder(tmp_path, tiny_run, capsys):
    names = [f"{p}_{eye}" for p in range(3) for eye in ("left", "right")]
    for n in names:
        disc(tmp_path / f"{n}.jpeg")
    (tmp_path / "train_img.csv").write_text("\n".join(names) + "\n")
    (tmp_path / "train_label.csv").write_text("\n".join("0" for _ in names) + "\n")
    for labels in ("train_img.csv", "train_label.csv"):
        with pytest.raises(DataError, match=f"course lab's paired CSVs .*: pass their folder, {tmp_path}"):
            load_catalog(tmp_path, labels=tmp_path / labels)
    assert main(["predict", str(tiny_run), str(tmp_path / "train_img.csv"), "--out", str(tmp_path / "p.csv"),
                 "--quiet"]) == 2
    assert f"pass their folder, {tmp_path}" in capsys.readouterr().err


def test_the_dataset_api_refuses_bad_arguments_at_construction(tmp_path, kaggle):
    """Not in __getitem__, inside a DataLoader worker: a size, crop or augmentation that cannot work, or a
    Catalog without splits; a DataError survives pickling (from a worker) with its problems."""
    import pickle

    from retinopathy.data import read_catalog

    for bad, match in (({"image_size": -5}, "image size must be at least 1 px"),
                       ({"image_size": 48, "crop": 100}, "crop 100 must be between 1 and the image size, 48 px"),
                       ({"augment": "foo"}, "unknown augmentation 'foo'")):
        with pytest.raises(ValueError, match=match):
            FundusDataset(kaggle, "all", **bad)
    with pytest.raises(ValueError, match="this Catalog's samples have no splits"):
        FundusDataset(read_catalog(kaggle), "train", image_size=32)
    assert len(FundusDataset(read_catalog(kaggle), "all", image_size=32)) == 12
    with pytest.raises(ValueError, match="val_fraction, split_file, images: options of reading a folder, and this "
                                         "Catalog was read already"):  # they were ignored
        FundusDataset(load_catalog(kaggle), "train", val_fraction=0.5, split_file="s.csv", images=kaggle)
    with pytest.raises(ValueError, match="this Catalog holds labels only"):  # not "none of the images is there"
        FundusDataset(load_catalog(kaggle, resolve=False), "train")
    (kaggle / "0_left.jpeg").write_bytes(b"")
    with pytest.raises(DataError) as e:
        FundusDataset(kaggle, "all", image_size=32)
    again = pickle.loads(pickle.dumps(e.value))
    assert str(again) == str(e.value) and again.problems == e.value.problems


def test_unknown_format_exit_status(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    assert main(["data", "check", str(tmp_path), "--json", str(tmp_path / "r.json"), "--quiet"]) == 2


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16", "LA"])
def test_other_modes_become_rgb(tmp_path, mode):
    path = tmp_path / f"img.{'tif' if mode in ('CMYK', 'I;16') else 'png'}"
    if mode == "I;16":
        arr = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
        Image.fromarray(arr).save(path)
    else:
        disc(path, size=64, mode=mode)
    img = open_image(path)
    assert img.mode == "RGB" and img.size == (64, 64)
    a = np.asarray(img)
    assert a[0, 0].max() < 30 and a[32, 32].max() > 50  # dark corner, bright centre survive conversion


def test_conversions_keep_the_values(tmp_path):
    """16-bit images are scaled from 0-65535 (32768 is mid-grey, not white); a transparent border is black, whatever
    colour its pixels hold under the alpha (a fundus PNG exported with a transparent background)."""
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "grey16.tif")
    assert np.abs(np.asarray(open_image(tmp_path / "grey16.tif")).astype(int) - 128).max() <= 1
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # white under the alpha everywhere
    rgba[2:6, 2:6, 3] = 255  # opaque only in the middle
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    a = np.asarray(open_image(tmp_path / "alpha.png"))
    assert (a[0, 0] == 0).all() and (a[4, 4] == 255).all()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_photograph_is_turned_as_its_exif_says(tmp_path, orientation):
    """A JPEG tagged as turned (a phone's, or one turned in a photo app) is read as a viewer shows it, at full and
    at reduced scale, and its size is the upright one: training, predict and the heatmaps see it upright."""
    arr = np.zeros((200, 320, 3), dtype=np.uint8)
    arr[:100, :160, 0] = 255  # a red top-left corner as stored
    stored = Image.fromarray(arr)
    exif = stored.getexif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "turned.jpeg", exif=exif, quality=95)
    stored.save(tmp_path / "turned.png", exif=exif)
    with Image.open(tmp_path / "turned.png") as raw:
        upright = np.asarray(ImageOps.exif_transpose(raw).convert("RGB")).astype(int)
    assert upright.shape[:2] == ((320, 200) if orientation != 3 else (200, 320))
    for path, min_size in ((tmp_path / "turned.png", None), (tmp_path / "turned.jpeg", None),
                           (tmp_path / "turned.jpeg", 50)):  # 50: decoded at 1/4 scale (draft)
        img = open_image(path, min_size)
        scale = 1 if min_size is None else 4
        assert img.size == (upright.shape[1] // scale, upright.shape[0] // scale)
        small = np.asarray(Image.fromarray(upright.astype(np.uint8)).resize(img.size, Image.BILINEAR)).astype(int)
        assert np.abs(np.asarray(img).astype(int) - small).mean() < 8  # not the stored (sideways) pixels
        assert check_image(path) == upright.shape[1::-1]


def test_a_damaged_exif_is_read_without_pillows_warning(tmp_path):
    """Pillow's "Corrupt EXIF data" names no file and would come from every read of the orientation: the EXIF is
    not the photograph, which is read as stored."""
    disc(tmp_path / "x.jpeg", size=64)
    data = (tmp_path / "x.jpeg").read_bytes()
    exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + b"\xff" * 20  # an entry cut short
    (tmp_path / "x.jpeg").write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + data[2:])
    read = ("from retinopathy.data.images import check_image, open_image; import sys; "
            "print(check_image(sys.argv[1]), open_image(sys.argv[1]).size)")  # a process of its own: pytest resets
    done = subprocess.run([sys.executable, "-c", read, str(tmp_path / "x.jpeg")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
                          check=True)  # the filters that importing set
    assert done.stdout == "(64, 64) (64, 64)\n" and "EXIF" not in done.stderr


def test_an_exif_that_pillow_cannot_rewrite_turns_the_photograph_all_the_same(tmp_path):
    """An orientation beside a malformed entry (a resolution written as text): Pillow's exif_transpose, which
    rewrites the EXIF, raised TypeError, so predict, data check and training stopped on a photograph that decodes."""
    data = disc(tmp_path / "x.jpeg", size=64).read_bytes()
    tiff = b"II*\x00" + struct.pack("<IH", 8, 2) + struct.pack("<HHIHH", 0x112, 3, 1, 6, 0) \
        + bytes.fromhex("1a0102000400000041414141") + b"\x00" * 4  # orientation 6; XResolution as ASCII
    exif = b"Exif\x00\x00" + tiff
    (tmp_path / "x.jpeg").write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + data[2:])
    upright = np.asarray(Image.open(tmp_path / "x.jpeg").convert("RGB").transpose(Image.Transpose.ROTATE_270))
    assert check_image(tmp_path / "x.jpeg") == (64, 64)
    assert np.abs(np.asarray(open_image(tmp_path / "x.jpeg")).astype(int) - upright).max() == 0


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = disc(tmp_path / "big.png", size=200, fmt="PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100 // 2)  # 40,000 px > 2 x 5,000: a "bomb"
    for read in (open_image, check_image):  # the dataset's check at construction gives the same advice
        with pytest.raises(ImageError, match="decompression bomb .*raise PIL.Image.MAX_IMAGE_PIXELS knowingly"):
            read(path)


@pytest.mark.parametrize("argv,named", [(["synth", "OUT", "--n", "0"], "argument --n: 0 is too small (at least 1)"),
                                        (["synth", "OUT", "--size", "100000"],  # ran out of memory, silently
                                         "--size: 100000 is too large (at most 8192)"),
                                        (["prepare", "D", "OUT", "--size", "4"], "--size: 4 is too small (at least 8)"),
                                        (["predict", "C", "I", "-b", "0"], "--batch-size: 0 is too small"),
                                        (["evaluate", "C", "--data", "D", "--bootstrap", "-1"],
                                         "--bootstrap: -1 is too small (at least 0)"),
                                        (["evaluate", "C", "--data", "D", "--out", "O", "-j", "x"],
                                         "--workers: 'x' is not a whole number"),
                                        (["train", "--data", "D", "--out", "O", "--stop-after", "0"],
                                         "--stop-after: 0 is too small (at least 1)"),
                                        (["train", "--data", "D", "--out", "O", "--epochs", "2", "--freeze-epochs",
                                          "3"], "--freeze-epochs 3: must be between 0 and the epochs (--epochs 2)"),
                                        (["train", "--data", "D", "--out", "O", "--model-ema-decay", "1"],
                                         "--model-ema-decay 1.0: must lie between 0 and 1")])
def test_numbers_out_of_range_are_usage_errors(argv, named, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and named in capsys.readouterr().err


def test_a_resume_for_fewer_epochs_than_the_run_freezes_says_so(tmp_path, capsys):
    """The run's --freeze-epochs comes from its config.yaml, not the command line: a resume that would train on
    says it is the run's (to a finished run a lower --epochs changes nothing: test_train)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"data": str(tmp_path), "out": str(run), "epochs": 4,
                                                               "freeze_epochs": 2}, "engine": {}}))
    assert main(["train", "--resume", str(run), "--epochs", "1"]) == 2
    assert (f"{run}: --epochs 1: the run freezes its first 2, so --epochs must be at least that"
            in capsys.readouterr().err)
    (tmp_path / "tweak.yaml").write_text("freeze_epochs: 5\n")
    for given in (["--freeze-epochs", "5"], ["--freeze=5"], ["-c", str(tmp_path / "tweak.yaml")]):
        with pytest.raises(SystemExit):  # a value given now is not the run's
            main(["train", "--resume", str(run), *given, "--epochs", "3"])
        err = capsys.readouterr().err
        assert "must be between 0 and the epochs (--epochs 3)" in err and "the run freezes" not in err
        named = "--freeze-epochs 5" if given[0] != "-c" else f"freeze_epochs: 5 (from {tmp_path / 'tweak.yaml'})"
        assert named in err


def test_labels_files_beside_the_one_read_are_named(tmp_path, kaggle, capsys):
    """Format detection reads the first known labels file; data check says which, and which others it left."""
    (kaggle / "labels.csv").write_text("image,level\n1_left,4\n")
    (kaggle / "train.csv").write_text("id_code,diagnosis\n")
    rc, report = check(tmp_path, kaggle)
    assert rc == 0 and report["labels"] == [str(kaggle / "trainLabels.csv")]
    assert report["labels_not_read"] == [str(kaggle / "labels.csv"), str(kaggle / "train.csv")]
    assert ("labels read from trainLabels.csv; also here, not read: labels.csv, train.csv (read another with --labels "
            "or --format)") in capsys.readouterr().out
    (kaggle / "labels.csv").unlink()
    (kaggle / "train.csv").unlink()
    rc, report = check(tmp_path, kaggle)
    assert report["labels_not_read"] == [] and "labels read from trainLabels.csv\n" in capsys.readouterr().out


def test_a_folder_where_an_image_should_be_is_named(kaggle):
    (kaggle / "2_left.jpeg").unlink()
    (kaggle / "2_left.jpeg").mkdir()
    with pytest.raises(DataError, match=r"image 2_left not found in .* \(2_left.jpeg there is a folder, not an image "
                                        r"file\); add the file"):
        FundusDataset(kaggle, "all", image_size=32)


def test_a_symbolic_link_loop_is_one_bad_image(tmp_path, kaggle):
    """A link that leads to itself stopped every command at the folder's index ('Too many levels of symbolic
    links'), and with an output file already there, predict crashed in Path.resolve(). Now it is one bad image."""
    loop = kaggle / "2_left.jpeg"
    loop.unlink()
    loop.symlink_to(loop.name)
    rc, report = check(tmp_path, kaggle)
    [problem] = report["problems"]
    assert rc == 1 and problem["kind"] == "bad-image" and problem["image"] == "2_left"
    assert "a symbolic link that leads back to itself (a loop)" in problem["message"]
    assert len(FundusDataset(kaggle, "all", image_size=32, skip_bad=True)) == 11
    from retinopathy.outputs import refuse_replacing

    (tmp_path / "p.csv").write_text("")
    refuse_replacing(tmp_path / "p.csv", "--out", [loop])  # not an input it would replace; no RuntimeError


@pytest.mark.parametrize("argv", [["train", "--data", "D", "--out", "O"], ["evaluate", "C", "--data", "D"],
                                  ["predict", "C", "I"]])
@pytest.mark.parametrize("device", ["banana", "cuda:x", "meta", "xla"])
def test_a_device_that_is_not_one_is_a_usage_error(argv, device, capsys):
    """torch.device() accepts meta and xla and raises on the rest: tracebacks, or a failure deep in grading."""
    with pytest.raises(SystemExit) as e:
        main([*argv, "--device", device])
    assert e.value.code == 2
    assert f"argument --device: {device!r} is not one of auto, cpu, cuda, cuda:N, mps" in capsys.readouterr().err


def test_a_cuda_device_this_machine_lacks_is_named(monkeypatch):
    from retinopathy.errors import RetinopathyError
    from retinopathy.training.engine import pick_device

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    assert str(pick_device("cuda:0")) == "cuda:0"
    with pytest.raises(RetinopathyError, match=r"--device cuda:5: this machine has 1 CUDA device\(s\), cuda:0 to "
                                               r"cuda:0"):
        pick_device("cuda:5")


def test_an_output_that_is_a_folder_is_refused_before_the_work(tiny_run, kaggle, tmp_path, capsys):
    assert main(["data", "check", str(kaggle), "--json", str(tmp_path), "--quiet"]) == 2
    assert f"error: {tmp_path}: --json is a folder; give the file to write, e.g. {tmp_path / 'data_check.json'}" \
        in capsys.readouterr().err
    assert main(["export", str(tiny_run), "--format", "torchscript", "--out", str(tmp_path)]) == 2
    assert f"error: {tmp_path}: --out is a folder; give the file to write" in capsys.readouterr().err
    new = tmp_path / "new"  # not there yet, but a folder by its slash (it used to be written as a file "new")
    for argv, example in ((["export", str(tiny_run), "--format", "onnx"], "grader.onnx"),
                          (["predict", str(tiny_run), str(kaggle)], "predictions.csv"),
                          (["data", "check", str(kaggle), "--json"], "data_check.json")):
        assert main([*argv, *([] if argv[-1] == "--json" else ["--out"]), f"{new}/"]) == 2
        assert (f"error: {new}: {argv[-1] if argv[-1] == '--json' else '--out'} is a folder (it ends with /); give "
                f"the file to write, e.g. {new / example}") in capsys.readouterr().err
        assert not new.exists()


@pytest.mark.parametrize("written", ["metrics.json", "confusion_matrix.csv", "confusion_matrix.png", "model.pt",
                                     "model.pt.json"])
def test_a_full_disk_is_named_not_a_traceback(tiny_run, synth_small, tmp_path, capsys, full_disk, written):
    """Each kind of write (atomic JSON, numpy's table, matplotlib's figure, torch.jit's model, export's metadata)
    that finds the disk full names its file: the OSError of a failed write names none (the command ended in a
    traceback), and export wrote its metadata in a work folder (it named that)."""
    full_disk(written)
    argv = (["export", str(tiny_run), "--format", "torchscript", "--out", str(tmp_path / "model.pt")]
            if written.startswith("model") else
            ["evaluate", str(tiny_run), "--data", str(synth_small), "--out", str(tmp_path), "--quiet"])
    assert main(argv) == 2
    assert f"error: {tmp_path / written}: cannot be written (No space left on device)" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["synth", "prepare"])
def test_images_cut_off_by_a_file_size_limit_are_an_error_not_written(tmp_path, command):
    """A real limit (RLIMIT_FSIZE: the kernel cuts a write short, then fails the next with EFBIG, as a filling disk
    does): Pillow wrote JPEGs past Python and lost the short write, so synth exited 0 with every image cut off at
    the limit. Now the command names the image, and no cut-off image is left."""
    import resource
    import subprocess
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))  # a 96 px JPEG is larger

    from retinopathy.data.synth import generate

    out = tmp_path / "out"
    if command == "prepare":
        generate(tmp_path / "photos", n=4, size=96, progress=False)  # a labels file under the limit
    argv = (["synth", str(out), "--n", "4", "--size", "96"] if command == "synth" else
            ["prepare", str(tmp_path / "photos"), str(out), "--size", "96"])
    run = subprocess.run([sys.executable, "-m", "retinopathy", *argv, "--workers", "0", "--quiet"], text=True,
                         capture_output=True, preexec_fn=limit, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert re.search(rf"error: {re.escape(str(out))}/\S+\.jpeg: cannot be written \(File too large\)", run.stderr)
    assert not list(out.glob("*.jpeg")), "no image, whole or cut off, is left"


def test_a_reader_that_leaves_early_stops_the_command_quietly(kaggle, tmp_path):
    """`retinopathy ... | head -1`: the pipe closes under the command, which stops with the shell's status for
    SIGPIPE and no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "retinopathy", "data", "check", str(kaggle), "--json",
                             str(tmp_path / "r.json"), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command writes a line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_train_names_the_problems_of_every_split_at_once(tmp_path, synth_small, capsys):
    """A bad image in val and one in train: both in the first error, not the train split's alone, then the
    other's after the user fixed the first."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_small, data)
    catalog = load_catalog(data)
    for split in ("train", "val"):
        (data / f"{next(s.image for s in catalog.samples if s.split == split)}.jpeg").write_bytes(b"")
    assert main(["train", "--data", str(data), "--model", "resnet18", "--no-pretrained", "--image-size", "32",
                 "--epochs", "1", "--workers", "0", "--quiet", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s) in the dataset" in err and err.count("empty file (0 bytes)") == 2


def test_a_file_name_that_is_not_utf8_is_a_problem_not_a_traceback(tmp_path, tiny_run, capsys):
    """A Latin-1 name (Python lists it with surrogate escapes) could not be written to split.csv or
    predictions.csv: train, evaluate and predict stopped with a UnicodeEncodeError. It is a named problem that
    --skip-bad drops, and predict refuses it by name."""
    data = tmp_path / "folders"
    for grade in range(5):
        (data / str(grade)).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (grade * 40, 60, 90)).save(data / str(grade) / f"{grade}{i}_left.png")
    latin1 = os.path.join(os.fsencode(data / "0"), b"caf\xe9_left.png")
    with open(latin1, "wb") as f:
        Image.new("RGB", (32, 32)).save(f, format="PNG")
    shown = f"{data / '0'}/caf\\xe9_left.png"
    catalog = load_catalog(data)
    assert [(p.kind, p.file) for p in catalog.problems] == [("bad-name", shown)]
    assert len(catalog.samples) == 10
    with pytest.raises(DataError, match=re.escape(shown) + ": the name is not valid UTF-8"):
        FundusDataset(data, "all")
    assert len(FundusDataset(data, "all", skip_bad=True)) == 10
    assert main(["predict", str(tiny_run), str(data / "0"), "--out", str(tmp_path / "p.csv"), "--workers", "0",
                 "--quiet"]) == 2
    assert f"{shown}: the name is not valid UTF-8" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
    folder = os.path.join(os.fsencode(tmp_path), b"caf\xe9")  # the dataset's own folder: one error, said once
    os.rename(data, folder)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}/caf\\xe9: the dataset folder's path: the name is "
                                                  "not valid UTF-8")) as e:
        load_catalog(os.fsdecode(folder))
    assert len(e.value.problems) == 1


def test_evaluate_does_not_write_over_its_own_labels_file(tiny_run, synth_small, tmp_path, capsys):
    """A labels file named like one of evaluate's outputs, in the --out folder: refused before the work (it was
    replaced by the predictions, and the grades were lost)."""
    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(synth_small, data)
    out.mkdir()
    (data / "trainLabels.csv").rename(out / "predictions.csv")
    before = (out / "predictions.csv").read_bytes()
    assert main(["evaluate", str(tiny_run), "--data", str(data), "--labels", str(out / "predictions.csv"),
                 "--image-col", "image", "--label-col", "level", "--split", "all", "--out", str(out),
                 "--quiet"]) == 2
    assert f"--out would replace {out / 'predictions.csv'}, an input of this command" in capsys.readouterr().err
    assert (out / "predictions.csv").read_bytes() == before and not (out / "metrics.json").exists()


@pytest.mark.parametrize("argv, named", [(["evaluate", "C", "--data", "D", "--out", ""], "--out"),
                                         (["train", "--data", "D", "--out=", "--epochs", "1"], "--out"),
                                         (["train", "--data", "D", "--out", "o", "--weights", ""], "--weights"),
                                         (["predict", "C", "", "--out", "p.csv"], "the argument after 'predict C'")])
def test_an_empty_argument_is_refused_not_read_as_no_value(argv, named, tmp_path, monkeypatch, capsys):
    """An unset shell variable (``--out "$OUT"``) gave the current folder (evaluate wrote into it, predict graded
    every image below it) or no value at all (train started from random weights)."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"error: {named}: an empty value (an unset shell variable?)")
    assert list(tmp_path.iterdir()) == []


def test_a_resume_whose_config_yaml_is_no_runs_is_named(tmp_path, capsys):
    """An emptied config.yaml read as a file of no options: the error blamed a missing --data."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("")
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    assert f"{run / 'config.yaml'} is not a run's config.yaml (it has no train: and engine: sections" \
        in capsys.readouterr().err


def test_commands_in_messages_are_quoted_for_the_shell(tmp_path, capsys):
    """A command a message gives is pasted into a shell: a path with a space is quoted."""
    from retinopathy.training.checkpoint import CheckpointError, load_checkpoint

    folder = tmp_path / "my runs" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "best.pt").write_bytes(b"")
    (folder / "last.pt").write_bytes(b"half")
    with pytest.raises(CheckpointError, match=re.escape(f"(`cp '{folder / 'best.pt'}' '{folder / 'last.pt'}'`)")):
        load_checkpoint(folder / "last.pt")


@pytest.mark.parametrize("info", [["a", "list"], {"preprocessing": "graham"}])
def test_a_checkpoint_whose_model_information_was_edited_is_named(tiny_run, tmp_path, info):
    """Model information of another shape (a list, a preprocessing given as text) gave AttributeError and
    TypeError tracebacks."""
    from retinopathy.models.restore import restore
    from retinopathy.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_run / "checkpoints" / "best.pt")
    ckpt["model_info"] = info if isinstance(info, list) else {**ckpt["model_info"], **info}
    save_checkpoint(ckpt, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="its model information is not as retinopathy train writes it"):
        restore(tmp_path / "odd.pt")


def test_a_plain_pickle_given_as_a_checkpoint_or_weights_is_named_without_torchs_warning(tmp_path, recwarn):
    """PyTorch warned (with its own source line) about the pickle protocol before the error that names the file."""
    import pickle

    from retinopathy.models.weights import WeightsError, load_pretrained_state
    from retinopathy.training.checkpoint import CheckpointError, load_checkpoint

    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(CheckpointError, match="p.pkl: cannot be read as a checkpoint"):
        load_checkpoint(path)
    with pytest.raises(WeightsError, match="p.pkl cannot be read"):
        load_pretrained_state("resnet18", file=str(path), verify=False)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


def test_a_hint_to_start_from_a_runs_weights_can_be_pasted_when_its_path_has_a_space(tmp_path, capsys):
    """The hints that say how to start a new run from a finished run's weights quote its path."""
    run = tmp_path / "my runs" / "first"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"")
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path), "--out", str(run), "--no-pretrained"])
    assert f"(--weights '{run}/checkpoints/best.pt' --out NEW)" in capsys.readouterr().err


@pytest.mark.parametrize("argv,command", [(["synth", "OUT", "--blah"], "synth"),
                                          (["data", "check", "D", "--imgaes", "X"], "data check")])
def test_a_misspelt_option_is_named_by_its_commands_own_parser(argv, command, capsys):
    """synth and data check, parsed under the top-level parser, gave its usage (``retinopathy [-h] [--version]
    COMMAND ...``) and name; every other command gives its own, and so do these now."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"usage: retinopathy {command} [-h]")
    assert f"retinopathy {command}: error: unrecognized arguments: {' '.join(argv[len(command.split()) + 1:])}" in err


def test_a_run_folder_as_split_file_means_its_split_csv(tmp_path, monkeypatch):
    """--split-file RUN takes the run's split.csv, as a checkpoint argument takes a run's folder for its best.pt
    (it was 'Is a directory'); any other folder or file is passed on as given."""
    from retinopathy.evaluation.evaluate import get_args_parser

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "split.csv").write_text("image,label,patient,split\n")
    parse = lambda value: get_args_parser().parse_args(  # noqa: E731
        ["ckpt.pt", "--data", "d", "--out", "e", "--split-file", value]).split_file
    assert parse(str(tmp_path / "run")) == str(tmp_path / "run" / "split.csv")
    assert parse(str(tmp_path)) == str(tmp_path) and parse("s.csv") == "s.csv"
    monkeypatch.setenv("HOME", str(tmp_path))  # a config file's ~/run: typed before the home folder is expanded
    assert parse("~/run") == str(tmp_path / "run" / "split.csv")


def test_a_report_is_not_written_among_a_runs_files(tmp_path, monkeypatch):
    from retinopathy.reporting.report import check_report_out

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("train: {}\n")
    with pytest.raises(RetinopathyError, match=f"--out {run} is a run's folder.*e.g. {run / 'report'}"):
        check_report_out(run)
    with pytest.raises(RetinopathyError, match=f"checkpoints folder of the run in {run}.*e.g. {run / 'report'}"):
        check_report_out(run / "checkpoints")  # beside best.pt, which predict and evaluate read
    check_report_out(run / "report")
    check_report_out(tmp_path / "checkpoints")  # a folder named so, not a run's
    monkeypatch.chdir(run / "checkpoints")
    with pytest.raises(RetinopathyError, match=f"--out . is the checkpoints folder of the run in {run}"):
        check_report_out(Path("."))  # named from inside it


def test_a_checkpoint_not_found_names_what_its_folder_holds(tmp_path):
    from retinopathy.training.checkpoint import CheckpointError, load_checkpoint

    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("last.pt", "best.pt", "MODEL_CARD.md", ".best.pt.tmp7"):  # not a save's temporary
        (folder / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"bst.pt: checkpoint not found \(in its folder: best.pt, last.pt\)$"):
        load_checkpoint(folder / "bst.pt")
    with pytest.raises(CheckpointError, match=f"checkpoint not found \\({tmp_path / 'rn'} does not exist\\)$"):
        load_checkpoint(tmp_path / "rn" / "best.pt")
