"""``retinopathy predict``: the numbers of ``evaluate``, TTA, unreadable images, any kind of input, bad checkpoints."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retinopathy.cli.main import main
from retinopathy.data import Normalize, build_transform, open_image
from retinopathy.evaluation import evaluate
from retinopathy.data.formats import GRADE_NAMES
from retinopathy.evaluation.metrics import GRADES
from retinopathy.inference import explain
from retinopathy.models.restore import restore
from retinopathy.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.shared_data
PROBS = [f"prob_{g}" for g in GRADES]


def read_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def probs_of(row) -> np.ndarray:
    return np.array([float(row[c]) for c in PROBS])


@pytest.fixture(scope="module")
def checkpoint(tiny_run):
    return tiny_run / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def real(shared_data):
    return shared_data / "fundus-real"


@pytest.fixture(scope="module")
def predicted(checkpoint, real, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "predictions.csv"
    # fp32 here: exact agreement with evaluate and with a hand computation (bf16 results vary with batching)
    assert main(["predict", str(checkpoint), str(real), "--out", str(out), "--workers", "0", "--quiet",
                 "--amp", "none"]) == 0
    return read_rows(out)


def test_grades_the_real_photographs(predicted, real):
    with open(real / "labels.csv", newline="") as f:
        labels = {r["image"]: r["level"] for r in csv.DictReader(f)}
    assert len(predicted) == 35 == len(labels)
    for r in predicted:
        p = probs_of(r)
        assert abs(p.sum() - 1) < 1e-5 and (p >= 0).all()
        grade = int(r["predicted_grade"])
        assert grade in GRADES and grade == int(np.argmax(p))
        assert r["true_grade"] == labels[r["image"]]
        assert int(r["referable"]) == int(grade >= 2)
        assert float(r["p_referable"]) == pytest.approx(p[2:].sum(), abs=2e-6)
        assert r["error"] == "" and r["path"].endswith(".jpeg")


def test_same_probabilities_as_evaluate(predicted, checkpoint, real, tmp_path):
    assert main(["evaluate", str(checkpoint), "--data", str(real), "--split", "all", "--out", str(tmp_path),
                 "--workers", "0", "--bootstrap", "0", "--quiet", "--amp", "none"]) == 0
    evaluated = {r["image"]: r for r in read_rows(tmp_path / "predictions.csv")}
    assert sorted(evaluated) == sorted(r["image"] for r in predicted)
    for r in predicted:
        e = evaluated[r["image"]]
        assert np.abs(probs_of(r) - probs_of(e)).max() <= 1e-5, r["image"]
        assert (r["predicted_grade"], r["true_grade"]) == (e["predicted_grade"], e["true_grade"])


def test_a_thresholded_grade_is_cut_from_the_score_not_the_most_probable(checkpoint, real, tmp_path, monkeypatch):
    """A checkpoint that grades by thresholds (regression, ordinal, or ``--decision thresholds``) is graded by them,
    with or without eye blending, as evaluate grades it: the most probable grade is not the grade."""
    from retinopathy.training.checkpoint import save_checkpoint

    ckpt = load_checkpoint(checkpoint)
    cuts = [0.2, 0.4, 0.6, 0.8]
    ckpt["model_info"] = {**ckpt["model_info"], "decision": "thresholds", "thresholds": cuts}
    save_checkpoint(ckpt, tmp_path / "cut.pt")
    assert main(["predict", str(tmp_path / "cut.pt"), str(real), "--out", str(tmp_path / "p.csv"), "--workers", "0",
                 "--quiet", "--amp", "none", "--blend-eyes", "0"]) == 0
    rows = read_rows(tmp_path / "p.csv")
    scores, grades = np.array([float(r["score"]) for r in rows]), [int(r["predicted_grade"]) for r in rows]
    assert grades == np.digitize(scores, cuts).tolist()
    assert grades != [int(probs_of(r).argmax()) for r in rows]  # the cuts matter for these photographs
    titles, captions = [], []
    monkeypatch.setattr(evaluate, "confusion_figure", lambda counts, title, path: titles.append(title))
    assert main(["evaluate", str(tmp_path / "cut.pt"), "--data", str(real), "--split", "all", "--blend-eyes", "0",
                 "--out", str(tmp_path / "e"), "--workers", "0", "--bootstrap", "0", "--quiet", "--amp", "none"]) == 0
    evaluated = {r["image"]: int(r["predicted_grade"]) for r in read_rows(tmp_path / "e" / "predictions.csv")}
    assert {r["image"]: int(r["predicted_grade"]) for r in rows} == evaluated
    assert titles[0].startswith("cut.pt: ResNet18, every image of fundus-real, 35 images\n")  # a file, not a run
    monkeypatch.setattr(explain, "save_heatmap", lambda image, heat, caption, path: captions.append(caption) or path)
    photo = sorted((real / "images").glob("*.jpeg"))[0]
    assert main(["predict", str(tmp_path / "cut.pt"), str(photo), "--cam", str(tmp_path / "cams"), "--out",
                 str(tmp_path / "one.csv"), "--workers", "0", "--quiet", "--amp", "none", "--blend-eyes", "0"]) == 0
    [row] = read_rows(tmp_path / "one.csv")  # its grade cut from the expected grade: both in the caption
    assert captions[0][0].startswith(f"{photo}: predicted grade {row['predicted_grade']} ("
                              f"{GRADE_NAMES[int(row['predicted_grade'])]}), expected grade "
                              f"{float(row['score']):.2f} (grades cut at 0.20, 0.40, 0.60, 0.80)")
    assert main(["predict", str(tmp_path / "cut.pt"), str(real), "--out", str(tmp_path / "tta.csv"), "--workers", "0",
                 "--quiet", "--amp", "none", "--blend-eyes", "0", "--tta"]) == 0
    tta = read_rows(tmp_path / "tta.csv")  # the score of the averaged views: the expected grade of their mean
    scores = np.array([float(r["score"]) for r in tta])
    assert np.allclose(scores, [probs_of(r) @ np.arange(5) for r in tta], atol=1e-4)
    assert [int(r["predicted_grade"]) for r in tta] == np.digitize(scores, cuts).tolist()


def test_evaluate_normalises_with_the_checkpoints_statistics(predicted, checkpoint, real, tmp_path):
    """The mean and std recorded in the checkpoint, not the preset's of this version, as predict does."""
    ckpt = load_checkpoint(checkpoint)
    prep = ckpt["model_info"]["preprocessing"]
    prep["mean"], prep["std"] = [m + 0.1 for m in prep["mean"]], [2 * s for s in prep["std"]]
    torch.save(ckpt, tmp_path / "other-stats.pt")
    args = ["--workers", "0", "--quiet"]
    assert main(["predict", str(tmp_path / "other-stats.pt"), str(real), "--out", str(tmp_path / "p.csv"), *args,
                 "--amp", "none"]) == 0
    assert main(["evaluate", str(tmp_path / "other-stats.pt"), "--data", str(real), "--split", "all",
                 "--out", str(tmp_path / "e"), "--bootstrap", "0", *args]) == 0  # fp32 by default
    evaluated = {r["image"]: probs_of(r) for r in read_rows(tmp_path / "e" / "predictions.csv")}
    before = {r["image"]: probs_of(r) for r in predicted}
    for r in read_rows(tmp_path / "p.csv"):
        assert np.abs(probs_of(r) - evaluated[r["image"]]).max() <= 1e-5, r["image"]
    assert max(np.abs(evaluated[k] - before[k]).max() for k in before) > 1e-3


def test_tta_averages_over_flips(predicted, checkpoint, real, tmp_path):
    out = tmp_path / "tta.csv"
    assert main(["predict", str(checkpoint), str(real), "--tta", "--out", str(out), "--workers", "0",
                 "--quiet", "--amp", "none"]) == 0
    tta = {r["image"]: probs_of(r) for r in read_rows(out)}
    plain = {r["image"]: probs_of(r) for r in predicted}
    assert sorted(tta) == sorted(plain)
    for p in tta.values():
        assert abs(p.sum() - 1) < 1e-5 and p.min() >= 0 and p.max() <= 1
    assert max(np.abs(tta[k] - plain[k]).max() for k in tta) > 1e-4
    # one image by hand: the mean of the four flipped views' probabilities
    model, objective, prep, _ = restore(checkpoint)
    image = sorted(tta)[0]
    x = build_transform(prep, train=False, uint8=True)(open_image(real / "images" / f"{image}.jpeg", prep.size))
    x = Normalize(prep.mean, prep.std)(x[None])
    with torch.no_grad():
        views = [x, x.flip(3), x.flip(2), x.flip(2, 3)]
        expected = torch.stack([objective.probabilities(model(v))[0] for v in views]).mean(0).numpy()
    assert np.abs(tta[image] - expected).max() < 1e-5


def test_grades_in_channels_last_on_the_cpu(predicted, checkpoint, real):
    """Convolutional graders run channels_last on the CPU (faster in fp32 too), with evaluate's numbers."""
    from retinopathy.inference.predict import collect_items, run

    model, objective, prep, _ = restore(checkpoint)
    items = collect_items([real / "images" / f"{r['image']}.jpeg" for r in predicted[:4]])
    res = run(model, objective, prep, items, device="cpu", amp="none", progress=False)
    assert next(p for p in model.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    assert np.abs(res["probs"] - np.array([probs_of(r) for r in predicted[:4]])).max() <= 1e-5


def test_nearly_black_photographs_are_graded_with_a_warning(checkpoint, real, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(sorted((real / "images").glob("*.jpeg"))[0], folder / "real.jpeg")
    Image.new("RGB", (300, 200), (4, 3, 2)).save(folder / "dark.jpeg")
    assert main(["predict", str(checkpoint), str(folder), "--out", str(tmp_path / "p.csv"), "--workers", "0",
                 "--quiet"]) == 0
    assert f"warning: 1 image(s) are nearly black (e.g. {folder / 'dark.jpeg'})" in capsys.readouterr().err
    rows = {Path(r["path"]).name: r for r in read_rows(tmp_path / "p.csv")}  # each row says it too: a table kept
    assert rows["dark.jpeg"]["warning"] == ("nearly black (its brightest pixels reach 3 of 255): no retina to "  # alone
                                            "grade, so its grade means nothing")
    assert rows["real.jpeg"]["warning"] == "" and rows["dark.jpeg"]["predicted_grade"] != ""
    photo = np.asarray(Image.open(folder / "real.jpeg"))
    Image.fromarray((photo // 4).astype(np.uint8)).save(folder / "dim.png")  # as 10-bit values read on 12 bits
    Image.fromarray(photo).resize((16, 12)).save(folder / "tiny.png")
    Image.fromarray(np.concatenate([photo] * 4, axis=1)).save(folder / "strip.jpeg")  # four photographs side by side
    Image.fromarray(photo).convert("L").convert("RGB").save(folder / "grey.jpeg")  # red-free, stored as RGB
    assert main(["predict", str(checkpoint), str(folder), "--out", str(tmp_path / "p.csv"), "--workers", "0",
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"warning: 1 image(s) are very dark (e.g. {folder / 'dim.png'}: its brightest 1 % reaches " in err
    assert (f"warning: 1 image(s) are smaller than half the model's input (e.g. {folder / 'tiny.png'}: 16x12 px, "
            "enlarged to ") in err
    assert f"warning: 1 image(s) are far from the shape of a photograph of the eye (e.g. {folder / 'strip.jpeg'}: " \
        "its sides" in err
    assert f"warning: 1 image(s) have no colour (e.g. {folder / 'grey.jpeg'}): grey photographs" in err
    assert len(read_rows(tmp_path / "p.csv")) == 6 and "real.jpeg" not in err  # graded all the same; the photo
    assert "warning: the model learnt from synthetic drawings (retinopathy.data.synth), not photographs of " \
        "patients: its grades show that the pipeline works, not how it grades real eyes" in err  # is fine
    rows = {Path(r["path"]).name: r["warning"] for r in read_rows(tmp_path / "p.csv")}
    assert rows["dim.png"].startswith("very dark (its brightest 1 % reaches ")
    assert rows["tiny.png"].startswith("small (16x12 px, enlarged to ")
    assert rows["grey.jpeg"].startswith("no colour (a grey photograph, as red-free ones often are)")
    assert ", sides 6.0:1, far from a photograph of the eye's" in rows["strip.jpeg"]


def test_unreadable_images_are_listed_and_the_rest_graded(checkpoint, real, tmp_path):
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    good = sorted((real / "images").glob("*.jpeg"))[:3]
    shutil.copy(good[0], folder / good[0].name)
    shutil.copy(good[1], folder / good[1].name)
    shutil.copy(good[2], folder / "more" / good[2].name)  # folders are searched recursively
    (folder / "empty.jpeg").write_bytes(b"")
    data = good[0].read_bytes()
    (folder / "cut.jpeg").write_bytes(data[: len(data) // 3])
    (folder / "notes.txt").write_text("not an image")  # ignored: not an image extension
    out = tmp_path / "pred.csv"
    assert main(["predict", str(checkpoint), str(folder), "--out", str(out), "--workers", "0", "--quiet",
                 "--batch-size", "2"]) == 0
    rows = {r["image"]: r for r in read_rows(out)}
    assert sorted(rows) == sorted(["cut", "empty", *(p.stem for p in good)])
    assert "empty" in rows["empty"]["error"] and rows["empty"]["predicted_grade"] == ""
    assert "truncated" in rows["cut"]["error"] and rows["cut"]["prob_0"] == ""
    for p in good:
        r = rows[p.stem]
        assert r["error"] == "" and int(r["predicted_grade"]) in GRADES and r["true_grade"] == ""


def test_a_labels_csv_and_single_files_as_inputs(checkpoint, real, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    good = sorted((real / "images").glob("*.jpeg"))[:2]
    for p in good:
        shutil.copy(p, data / p.name)
    (data / "trainLabels.csv").write_text(f"image,level\n{good[0].stem},3\n{good[1].stem},1\nabsent_left,2\n")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(checkpoint), str(data / "trainLabels.csv"), str(good[0]), "--out", str(out),
                 "--workers", "0", "--quiet"]) == 0
    rows = read_rows(out)
    assert [(r["image"], r["true_grade"]) for r in rows] == [(good[0].stem, "3"), (good[1].stem, "1"),
                                                             ("absent_left", "2"), (good[0].stem, "")]
    assert rows[2]["error"] == f"image not found in {data}" and rows[2]["predicted_grade"] == ""
    assert rows[0]["prob_0"] == rows[3]["prob_0"] != ""


def _bad_checkpoints(checkpoint, tmp_path):
    truncated = tmp_path / "truncated.pt"
    data = checkpoint.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    newer = tmp_path / "newer.pt"
    ckpt = torch.load(checkpoint, weights_only=True)
    torch.save({**ckpt, "version": 99}, newer)
    return {truncated: "cannot be read", foreign: "not a retinopathy checkpoint", newer: "newer retinopathy"}


def test_bad_checkpoints_exit_2_with_the_reason(checkpoint, real, tmp_path, capsys):
    for path, reason in _bad_checkpoints(checkpoint, tmp_path).items():
        rc = main(["predict", str(path), str(real), "--out", str(tmp_path / "p.csv"), "--workers", "0", "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error:") and str(path) in err and reason in err
    assert not (tmp_path / "p.csv").exists()


def test_missing_input_is_a_clear_error(checkpoint, tmp_path, capsys):
    assert main(["predict", str(checkpoint), str(tmp_path / "nowhere"), "--out", str(tmp_path / "p.csv")]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err
    assert main(["predict", str(checkpoint), str(tmp_path), "--out", str(tmp_path)]) == 2  # a folder, before the work
    err = capsys.readouterr().err
    assert f"error: {tmp_path}: --out is a folder; give the file to write, e.g. {tmp_path / 'predictions.csv'}" in err
    assert "problem(s) in the dataset" not in err
