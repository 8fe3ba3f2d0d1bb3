"""Tests of the synthetic fundus generator (small sizes, a few seconds)."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinopathy.data import synth
from retinopathy.errors import RetinopathyError


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_deterministic_whatever_the_workers(tmp_path, monkeypatch):
    import retinopathy.workers

    with monkeypatch.context() as m:  # workers=0: no process started, as for a DataLoader
        m.setattr(retinopathy.workers.multiprocessing, "get_context", lambda *a: pytest.fail("a pool was started"))
        a = synth.generate(tmp_path / "a", n=9, size=48, seed=3, workers=0, progress=False)
    synth.generate(tmp_path / "b", n=9, size=48, seed=3, workers=2, progress=False)
    synth.generate(tmp_path / "c", n=9, size=48, seed=4, workers=2, progress=False)
    da, db, dc = (_digests(tmp_path / k) for k in "abc")
    assert da == db
    assert len(da) == 9 + 2  # images, trainLabels.csv, README.txt
    assert da.keys() == dc.keys()
    assert sum(da[k] != dc[k] for k in da if k.endswith(".jpeg")) >= 8
    assert a["n"] == 9 and sum(a["counts"]) == 9 and a["images_per_s"] > 0
    assert not list((tmp_path / "a").glob(".*"))  # no temporary files left


def test_default_mix_follows_eyepacs():
    grades = synth.assign_grades(1000, seed=0)
    share = np.bincount(grades, minlength=5) / 1000
    assert np.abs(share - synth.GRADE_MIX).max() < 0.03
    pairs = np.array(grades).reshape(-1, 2)
    same = (pairs[:, 0] == pairs[:, 1]).mean()
    assert 0.8 < same < 0.97
    assert np.abs(pairs[:, 0] - pairs[:, 1]).max() <= 1
    assert synth.assign_grades(1000, seed=0) == grades
    assert synth.assign_grades(1000, seed=1) != grades


def test_balanced_and_generate_counts(tmp_path):
    counts = np.bincount(synth.assign_grades(1001, seed=5, balanced=True), minlength=5)
    assert np.abs(counts / 1001 - 0.2).max() < 0.02
    summary = synth.generate(tmp_path, n=1000, size=32, seed=1, balanced=True, workers=2, progress=False)
    assert np.abs(np.array(summary["counts"]) / 1000 - 0.2).max() < 0.02
    rows = list(csv.reader((tmp_path / "trainLabels.csv").read_text().splitlines()))
    assert np.bincount([int(r[1]) for r in rows[1:]]).tolist() == summary["counts"]


def _check_image(path: Path, size: int) -> None:
    im = Image.open(path)
    assert im.format == "JPEG" and im.mode == "RGB" and im.size == (size, size)
    a = np.asarray(im, dtype=float).mean(axis=2)
    k, c = size // 10, size // 2
    corners = [a[:k, :k], a[:k, -k:], a[-k:, :k], a[-k:, -k:]]
    assert max(x.mean() for x in corners) < 8
    assert a[c - 2 * k: c + 2 * k, c - 2 * k: c + 2 * k].mean() > 40


def _pairs(names: list[str]) -> None:
    assert len(set(names)) == len(names)
    patients = {}
    for name in names:
        patient, eye = name.rsplit("_", 1)
        assert eye in ("left", "right") and patient.isdigit()
        patients.setdefault(patient, set()).add(eye)
    assert sum(eyes == {"left", "right"} for eyes in patients.values()) == len(names) // 2


def test_kaggle_layout(tmp_path):
    synth.generate(tmp_path, n=7, size=64, seed=2, workers=1, progress=False)
    rows = list(csv.reader((tmp_path / "trainLabels.csv").read_text().splitlines()))
    assert rows[0] == ["image", "level"] and len(rows) == 8
    _pairs([r[0] for r in rows[1:]])
    for name, level in rows[1:]:
        assert level in "01234"
        _check_image(tmp_path / f"{name}.jpeg", 64)
    readme = (tmp_path / "README.txt").read_text()
    assert "ynthetic" in readme and "seed: 2" in readme and "size: 64" in readme


def test_lab_layout(tmp_path):
    synth.generate(tmp_path, n=20, size=64, seed=2, format="lab", workers=2, progress=False, test_fraction=0.3)
    names = {}
    for split in ("train", "test"):
        imgs = (tmp_path / f"{split}_img.csv").read_text().splitlines()
        labels = (tmp_path / f"{split}_label.csv").read_text().splitlines()
        assert len(imgs) == len(labels) > 0
        assert all(label in "01234" and len(label) == 1 for label in labels)
        names[split] = imgs
        for name in imgs:
            _check_image(tmp_path / f"{name}.jpeg", 64)
    _pairs(names["train"] + names["test"])
    patients = {split: {n.rsplit("_", 1)[0] for n in imgs} for split, imgs in names.items()}
    assert not patients["train"] & patients["test"]
    # stratified by the patient's worse eye, as every other split: 30 % of each grade's patients (rounded)
    grade = {}
    for split in ("train", "test"):
        for name, g in zip(names[split], (tmp_path / f"{split}_label.csv").read_text().splitlines()):
            patient = name.rsplit("_", 1)[0]
            grade[patient] = max(grade.get(patient, 0), int(g))
    for g in set(grade.values()):
        of_grade = {p for p, w in grade.items() if w == g}
        assert len(of_grade & patients["test"]) == round(0.3 * len(of_grade))
    assert not (tmp_path / "trainLabels.csv").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        synth.generate(tmp_path, n=2, format="csv", progress=False)
    with pytest.raises(ValueError):
        synth.render_fundus(np.random.default_rng(0), 64, 5, "left")


def test_the_command_does_not_write_over_a_dataset(tmp_path, capsys):
    """A second `synth` into a dataset folder would regrade the images that runs trained on; it is refused."""
    from retinopathy.cli.main import main

    out = tmp_path / "d"
    assert main(["synth", str(out), "--n", "4", "--size", "32", "--quiet"]) == 0
    before = _digests(out)
    assert main(["synth", str(out), "--n", "2", "--size", "32", "--seed", "3", "--quiet"]) == 2
    assert "already holds a dataset" in capsys.readouterr().err and _digests(out) == before
    (tmp_path / "afile.txt").write_text("mine")
    assert main(["synth", str(tmp_path / "afile.txt"), "--n", "2", "--size", "32", "--quiet"]) == 2
    assert "afile.txt is a file, not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["synth", str(tmp_path / "empty"), "--n", "2", "--size", "32", "--quiet"]) == 0
    with pytest.raises(RetinopathyError, match="already holds a dataset"):  # the Python function too
        synth.generate(out, n=2, size=32, progress=False)
    assert _digests(out) == before
    partial = tmp_path / "partial"  # an interrupted generation: images, but no labels or README.txt yet
    synth.generate(partial, n=4, size=32, progress=False)
    (partial / "trainLabels.csv").unlink()
    (partial / "README.txt").unlink()
    (partial / ".3_left.jpeg.tmp4242").write_bytes(b"half")  # a worker stopped mid-write (the pool's terminate)
    synth.generate(partial, n=4, size=32, progress=False)  # finished, not refused
    assert len((partial / "trainLabels.csv").read_text().splitlines()) == 1 + 4
    assert not list(partial.glob(".*"))


def test_eyes_mirror_each_other():
    right = np.asarray(synth.render_fundus(np.random.default_rng(1), 128, 0, "right"))
    left = np.asarray(synth.render_fundus(np.random.default_rng(1), 128, 0, "left"))
    assert np.array_equal(left, right[:, ::-1])
    # the optic disc (brightest part) of a right eye is on the viewer's right
    lum = right.astype(float).mean(axis=2)
    assert np.unravel_index(np.argmax(lum), lum.shape)[1] > 64


def test_lesions_grow_with_grade():
    """Same eye (same rng state) at each grade: the share of pixels changed by lesions rises with grade."""
    changed = np.zeros((5, 8))
    for i in range(8):
        renders = [np.asarray(synth.render_fundus(np.random.default_rng([11, i]), 256, g, "right"), dtype=np.int16)
                   for g in range(5)]
        for g in range(5):
            changed[g, i] = (np.abs(renders[g] - renders[0]).max(axis=2) > 24).mean()
    mean = changed.mean(axis=1)
    assert mean[0] == 0
    assert all(mean[g] < mean[g + 1] for g in range(4)), mean
    assert (changed[1:] > 0).mean() > 0.9  # nearly every diseased eye shows its lesions
    assert mean[4] > 0.01


def test_every_image_is_its_own_eye(tmp_path):
    """Two photographs of one grade are two eyes, not one image repeated."""
    synth.generate(tmp_path, n=20, size=32, seed=0, balanced=True, workers=1, progress=False)
    files = sorted(tmp_path.rglob("*.jpeg"))
    assert len(files) == 20 and len({hashlib.sha256(f.read_bytes()).hexdigest() for f in files}) == 20


def test_a_set_is_compared_with_the_settings_it_was_made_with(tmp_path):
    """What README.txt records reads back as generate's options (a tiny test fraction, balanced given as 1); a
    folder that is no synthetic set is never called different."""
    from retinopathy.data.synth import made_otherwise

    synth.generate(tmp_path / "lab", n=8, size=32, format="lab", test_fraction=0.00001, balanced=1, progress=False)
    assert made_otherwise(tmp_path / "lab", n=8, size=32, format="lab", test_fraction=0.00001, balanced=True) == {}
    assert made_otherwise(tmp_path / "lab", n=9, size=32, format="lab", test_fraction=0.00001, balanced=False) == {
        "n": (8, 9), "balanced": (True, False)}
    assert made_otherwise(tmp_path, n=9) == {}
    synth.generate(tmp_path / "mix", n=8, size=32, balanced=False, progress=False)  # README.txt: balanced: False
    assert made_otherwise(tmp_path / "mix", n=8, size=32, balanced=False) == {}
    assert made_otherwise(tmp_path / "mix", n=8, size=32, balanced=True) == {"balanced": (False, True)}
