"""`data check` says what reading the labels alone would not: rows out of step with a labels file beside them,
images the labels leave out, and names that give every image a patient of its own."""
from __future__ import annotations

import shutil

from .test_bad_input import check
from .test_formats import disc, make_kaggle


def test_lab_pairs_out_of_step_with_the_kaggle_labels_beside_them_are_warned_of(tmp_path):
    """The lab's folder holds trainLabels.csv too; a sorted train_img.csv (its grades no longer on its images'
    lines) read with 0 problems. Each row that the other file grades otherwise is a warning, with both lines."""
    rows = make_kaggle(tmp_path, n_patients=4)  # 0_left,0 0_right,1 1_left,1 ...
    names, grades = zip(*(r.split(",") for r in rows))
    (tmp_path / "train_img.csv").write_text("\n".join(names) + "\n")
    (tmp_path / "train_label.csv").write_text("\n".join(grades) + "\n")
    rc, report = check(tmp_path, tmp_path, "--format", "lab")
    assert rc == 0 and report["format"] == "lab" and report["warnings"] == []
    (tmp_path / "train_img.csv").write_text("\n".join(reversed(names)) + "\n")
    rc, report = check(tmp_path, tmp_path, "--format", "lab")
    wrong = [w for w in report["warnings"] if w["kind"] == "grade-disagrees"]
    assert [(w["image"], w["line"]) for w in wrong] == [(n, i) for i, n in enumerate(reversed(names), start=1)
                                                        if dict(r.split(",") for r in rows)[n] != grades[i - 1]]
    first = wrong[0]
    assert first["message"].startswith(f"{first['image']}: grade {grades[first['line'] - 1]} here, ")
    assert f"in {tmp_path / 'trainLabels.csv'} line " in first["message"]
    rc, report = check(tmp_path, tmp_path, "--format", "kaggle")  # the lab's pair is the file beside
    assert len([w for w in report["warnings"] if w["kind"] == "grade-disagrees"]) == len(wrong)


def test_images_that_the_labels_leave_out_are_listed(tmp_path, capsys):
    make_kaggle(tmp_path, n_patients=4)
    rc, report = check(tmp_path, tmp_path)
    assert rc == 0 and report["unlisted_images"] == []
    lines = (tmp_path / "trainLabels.csv").read_text().splitlines()
    (tmp_path / "trainLabels.csv").write_text("\n".join(lines[:-2]) + "\n")  # cut short
    disc(tmp_path / "._3_left.jpeg")  # macOS's resource file: not an image of the set
    rc, report = check(tmp_path, tmp_path)
    assert rc == 0 and report["problems"] == [] and report["unlisted_images"] == ["3_left.jpeg", "3_right.jpeg"]
    assert "2 image(s) in" in capsys.readouterr().out


def test_names_that_give_every_image_a_patient_of_its_own_are_warned_of(tmp_path):
    make_kaggle(tmp_path, n_patients=3)
    rc, report = check(tmp_path, tmp_path)
    assert rc == 0 and report["patients"] == 3 and report["warnings"] == []
    other = tmp_path / "other"
    other.mkdir()
    rows = []
    for i, image in enumerate(sorted(tmp_path.glob("*.jpeg"))):  # 0_L, 0_R ...: no eye the reader knows
        shutil.copy(image, other / image.name.replace("_left", "_L").replace("_right", "_R"))
        rows.append(f"{image.stem.replace('_left', '_L').replace('_right', '_R')},{i % 5}")
    (other / "trainLabels.csv").write_text("image,level\n" + "\n".join(rows) + "\n")
    rc, report = check(tmp_path, other)
    assert rc == 0 and report["patients"] == 6
    [warning] = report["warnings"]
    assert warning["kind"] == "own-patients" and "pass --patient-col NAME" in warning["message"]
    (other / "trainLabels.csv").write_text("image,level,patient\n" + "\n".join(
        f"{r},{r.split('_')[0]}" for r in rows) + "\n")
    rc, report = check(tmp_path, other, "--patient-col", "patient")
    assert report["patients"] == 3 and report["warnings"] == []


def test_the_current_folder_is_checked_as_data(tmp_path, monkeypatch, capsys):
    """`data check .` stopped at "error: : No such file or directory" (the folder of a relative image path)."""
    make_kaggle(tmp_path, n_patients=2)
    (tmp_path / "trainLabels.csv").write_text((tmp_path / "trainLabels.csv").read_text().replace("image,level",
                                                                                                 "Image,Level"))
    monkeypatch.chdir(tmp_path)
    rc, report = check(tmp_path, ".")  # and Kaggle's columns, capitalised, are Kaggle's columns
    assert rc == 0 and report["rows"] == 4 and report["problems"] == [] and report["warnings"] == []

