"""Objectives (classification, regression, ordinal), tuned thresholds, eye pairing and blending, bootstrap CIs."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from retinopathy.cli.main import main
from retinopathy.data import FundusDataset
from retinopathy.data.dataset import PairedEyes
from retinopathy.data.formats import patient_of
from retinopathy.evaluation.evaluate import predict_dataset
from retinopathy.evaluation.metrics import bootstrap_ci, majority_accuracy, quadratic_kappa, referable_auc
from retinopathy.models import Grader, make_objective
from retinopathy.models.objectives import (
    blend_eyes,
    class_weights,
    tune_thresholds,
)
from retinopathy.models.restore import restore
from retinopathy.training.config import parse_args
from retinopathy.training.train import eligible_epoch, outranks

from .test_formats import make_kaggle


@pytest.mark.parametrize("name", ["classification", "regression", "ordinal", "ordinal+ce"])
def test_objective_outputs(name):
    obj = make_objective(name)
    out = torch.randn(8, obj.outputs, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 4, 0, 2, 4])
    loss = obj.loss(out, target)
    loss.backward()
    assert loss.item() > 0 and out.grad.abs().sum() > 0
    p = obj.probabilities(out.detach())
    assert p.shape == (8, 5) and torch.allclose(p.sum(1), torch.ones(8), atol=1e-5) and (p >= 0).all()
    assert set(obj.predict(out.detach()).tolist()) <= set(range(5))


@pytest.mark.parametrize("name", ["ordinal", "regression"])
def test_probabilities_put_each_grade_in_its_place(name):
    """Outputs that say "grade 0", "grade 2" and "grade 4" give those grades the highest probability, and the
    score is the grade: prob_* and p_referable (grades 2-4) are read from these columns."""
    big = 12.0
    out = (torch.tensor([[-big] * 4, [big, big, -big, -big], [big] * 4]) if name == "ordinal"
           else torch.tensor([[0.0], [2.0], [4.0]]))
    obj = make_objective(name)
    p = obj.probabilities(out)
    assert p.argmax(1).tolist() == [0, 2, 4] and (p.max(1).values > 0.5).all()
    assert obj.score(out).tolist() == pytest.approx([0, 2, 4], abs=1e-4)
    referable = p[:, 2:].sum(1)
    assert referable[0] < 0.05 and referable[1] > 0.5 and referable[2] > 0.95


def test_ordinal_with_a_cross_entropy_head():
    """ordinal+ce: the loss is the ordinal loss of the first 4 outputs plus cross-entropy of the last 5; grades,
    probabilities and scores are the ordinal ones, whatever the class logits say."""
    both, ordinal, ce = make_objective("ordinal+ce"), make_objective("ordinal"), make_objective("classification")
    out, y = torch.randn(8, 9), torch.tensor([0, 1, 2, 3, 4, 0, 2, 4])
    assert both.outputs == 9 and both.decision == "thresholds"
    assert torch.allclose(both.loss(out, y), ordinal.loss(out[:, :4], y) + ce.loss(out[:, 4:], y))
    other = torch.cat([out[:, :4], torch.randn(8, 5)], 1)
    for f in ("probabilities", "score", "predict"):
        assert torch.equal(getattr(both, f)(other), getattr(ordinal, f)(out[:, :4]))


def test_decision_argmax_or_expected_grade_cut_at_thresholds():
    probs = torch.tensor([[0.4, 0.0, 0.0, 0.0, 0.6], [0.1, 0.5, 0.4, 0.0, 0.0]])
    logits = probs.clamp_min(1e-6).log()
    argmax, cut = make_objective("classification"), make_objective("classification", decision="thresholds")
    assert argmax.decision == "argmax" and make_objective("ordinal").decision == "thresholds"
    assert argmax.predict(logits).tolist() == [4, 1]
    assert cut.score(logits).tolist() == pytest.approx([2.4, 1.3], abs=1e-4)  # the expected grade
    assert cut.predict(logits).tolist() == [2, 1]
    cut.thresholds = [0.5, 1.2, 2.5, 3.5]
    assert cut.predict(logits).tolist() == [2, 2]
    assert make_objective("ordinal", decision="argmax").grades_of(probs, torch.tensor([2.4, 1.3])).tolist() == [4, 1]
    with pytest.raises(ValueError, match="decision"):
        make_objective("classification", decision="mean")


def test_mixup_mixes_images_and_ordinal_targets_alike():
    """mix_batch blends the batch with a shuffle of itself; mixing the ordinal losses of the two targets equals
    binary cross-entropy on the mixed cumulative targets (what the ordinal objective means by mixup)."""
    from retinopathy.training.engine import mix_batch

    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4)
    mixed, perm, lam = mix_batch(x, 0.4)
    assert 0 < lam < 1 and sorted(perm.tolist()) == list(range(8)) and perm.tolist() != list(range(8))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm])
    lams = [mix_batch(x, 0.2)[2] for _ in range(400)]
    assert np.mean([min(v, 1 - v) < 0.1 for v in lams]) > 0.5  # alpha 0.2: mostly near one image
    obj, out, y = make_objective("ordinal"), torch.randn(8, 4), torch.tensor([0, 1, 2, 3, 4, 0, 2, 4])
    soft = lam * (y[:, None] > torch.arange(4)).float() + (1 - lam) * (y[perm][:, None] > torch.arange(4)).float()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out, soft, reduction="none").sum(1).mean()
    assert torch.allclose(lam * obj.loss(out, y) + (1 - lam) * obj.loss(out, y[perm]), expected)


def test_a_score_on_a_threshold_gets_the_same_grade_from_tensors_and_arrays():
    obj = make_objective("regression")  # thresholds 0.5, 1.5, 2.5, 3.5
    on = [0.5, 1.5, 2.5, 3.5]
    assert obj.grades_of(None, torch.tensor(on)).tolist() == obj.grades_of(None, np.array(on)).tolist() == [1, 2, 3, 4]


def test_one_epoch_mixes_the_two_targets_losses_and_steps_the_scheduler_per_batch(monkeypatch):
    """What train_one_epoch back-propagates with mixup is lam x loss(first target) + (1 - lam) x loss(second), and
    the scheduler steps once per batch (its per-step schedule)."""
    import retinopathy.training.engine as engine
    from retinopathy.data import Normalize

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    data = torch.utils.data.TensorDataset(torch.randint(0, 256, (6, 3, 2, 2), dtype=torch.uint8),
                                          torch.tensor([0, 1, 2, 3, 4, 0]))
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    perm, lam = torch.tensor([1, 0]), 0.3
    monkeypatch.setattr(engine, "mix_batch", lambda images, alpha: (images, perm, lam))  # the images as they are
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the model stays as it is: the expected loss is known
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    normalize, obj = Normalize((0.5,) * 3, (0.25,) * 3), make_objective("classification")
    tr = engine.train_one_epoch(model, obj, optimizer, loader, torch.device("cpu"), normalize, grader=model,
                                frozen=False, scheduler=scheduler, mixup=0.4, progress=False)
    with torch.no_grad():
        losses = [lam * obj.loss(out, y) + (1 - lam) * obj.loss(out, y[perm])
                  for x, y in loader for out in [model(engine.to_device(x, torch.device("cpu"), normalize, False))]]
    assert tr["loss"] == pytest.approx(float(torch.stack(losses).mean()), rel=1e-5)
    assert scheduler.last_epoch == len(loader) == 3


def test_class_weights_favour_rare_grades():
    for kind in ("inverse", "effective"):
        w = class_weights([700, 70, 150, 25, 20], kind)
        assert w[4] > w[2] > w[0] and w.mean() == pytest.approx(1.0)
    counts = np.array([700, 70, 150, 25, 20])
    inverse = counts.sum() / (5 * counts)
    effective = (1 - 0.999) / (1 - 0.999 ** counts)  # Cui et al.: milder than inverse for the common grade
    assert class_weights(counts, "inverse").numpy() == pytest.approx(inverse / inverse.mean(), rel=1e-6)
    assert class_weights(counts, "effective").numpy() == pytest.approx(effective / effective.mean(), rel=1e-6)
    assert class_weights([1, 1, 1, 1, 1], "none") is None
    absent = class_weights([1000, 0, 200, 50, 30], "inverse").numpy()  # no grade-1 image: it weighs nothing
    assert absent[1] == 0 and absent[[0, 2, 3, 4]].mean() == pytest.approx(1.0) and absent[4] > absent[0]
    assert class_weights([0, 0, 0, 0, 0], "inverse") is None
    for name in ("classification", "regression", "ordinal", "ordinal+ce"):  # a val batch of only that grade
        obj = make_objective(name, class_weights=torch.tensor(absent))
        out = torch.randn(2, obj.outputs)
        assert torch.isfinite(obj.loss(out, torch.tensor([1, 1])))  # was 0/0: a NaN val loss


@pytest.mark.parametrize("counts", [[18077, 1702, 3704, 614, 493], [1000, 0, 200, 50, 30]])
def test_class_weights_with_label_smoothing_weigh_images_not_targets(counts):
    """Each image's smoothed cross-entropy is weighted by its own grade's weight: the best answer for a grade-0
    image stays grade 0. (cross_entropy's weight= also weighed the smoothed targets, and its best answer for a
    grade-0 image was grade 1, the grade with no image, or an expected grade of 2 on EyePACS's mix.)"""
    obj = make_objective("classification", class_weights=class_weights(counts, "inverse"), label_smoothing=0.1)
    logits = torch.zeros(1, 5, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        obj.loss(logits, torch.tensor([0])).backward()
        opt.step()
    probs = logits.softmax(1)[0].detach()
    assert probs.argmax() == 0 and probs[0] > 0.85
    out, y = torch.randn(6, 5), torch.tensor([0, 0, 1, 2, 4, 0])  # a batch: the weighted mean of per-image losses
    per = torch.nn.functional.cross_entropy(out, y, reduction="none", label_smoothing=0.1)
    w = class_weights(counts, "inverse")[y]
    assert torch.allclose(obj.loss(out, y), (per * w).sum() / w.sum())


def test_tuned_thresholds_beat_the_defaults():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 500)
    scores = labels * 0.5 + rng.normal(0, 0.2, 500)  # a model whose scale is off by half
    t = tune_thresholds(scores, labels)
    assert t == sorted(t)
    even = quadratic_kappa(labels, np.digitize(scores, [0.5, 1.5, 2.5, 3.5]))
    assert quadratic_kappa(labels, np.digitize(scores, t)) > even + 0.1


def test_kappa_is_scikit_learns():
    rng = np.random.default_rng(2)
    for labels, pred in [(rng.integers(0, 5, 300), rng.integers(0, 5, 300)),
                         (np.r_[np.zeros(90, int), np.full(10, 4)], rng.choice([0, 2, 4], 100)),  # grades absent
                         (np.zeros(50, int), rng.integers(0, 2, 50)),  # the truth one grade
                         (np.zeros(50, int), np.zeros(50, int))]:  # one grade only: no agreement beyond chance
        one = len({*labels, *pred}) == 1  # scikit-learn: 0 / 0, nan
        expected = 0.0 if one else cohen_kappa_score(labels, pred, labels=range(5), weights="quadratic")
        assert quadratic_kappa(labels, pred) == pytest.approx(expected, abs=1e-12)


def test_selection_prefers_epochs_that_beat_the_majority():
    assert outranks(0.2, True, {"value": 0.3, "eligible": False})
    assert not outranks(0.4, False, {"value": 0.3, "eligible": True})
    assert outranks(0.4, False, {"value": 0.3, "eligible": False})
    assert outranks(0.4, True, {"value": 0.3})  # checkpoints from before the rule: every epoch was eligible
    assert not outranks(0.3, True, {"value": 0.3, "eligible": True})
    labels = np.r_[np.zeros(6, int), np.ones(4, int)]  # always grade 0: accuracy 0.6
    thresholds, argmax = make_objective("ordinal"), make_objective("classification")
    assert eligible_epoch(thresholds, "kappa-above-majority", 0.7, labels, 0.0)
    assert not eligible_epoch(thresholds, "kappa-above-majority", 0.7, labels, 0.15)  # the tuning margin counts
    assert not eligible_epoch(thresholds, "kappa-above-majority", 0.6, labels, 0.0)  # a tie does not beat it
    assert eligible_epoch(thresholds, "kappa", 0.5, labels, 0.15) and eligible_epoch(argmax, "kappa-above-majority",
                                                                                        0.5, labels, 0.15)


def test_threshold_rule_kappa_above_majority():
    # 80 % grade 0 and a weak score: the kappa-optimal thresholds call many healthy eyes grade 1
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(400, int), rng.integers(1, 5, 100)]
    scores = labels * 0.6 + rng.normal(0, 0.9, 500)
    majority = 0.8

    def acc(t):
        return (np.digitize(scores, t) == labels).mean()

    free, bound = tune_thresholds(scores, labels), tune_thresholds(scores, labels, "kappa-above-majority")
    assert acc(free) <= majority < acc(bound)
    k_free, k_bound = (quadratic_kappa(labels, np.digitize(scores, t)) for t in (free, bound))
    assert 0 < k_bound <= k_free
    assert bound == sorted(bound)
    # a margin above the majority rate: more accurate thresholds, at some kappa
    wide = tune_thresholds(scores, labels, "kappa-above-majority", margin=0.02)
    assert acc(wide) > majority + 0.02 and acc(wide) >= acc(bound)
    assert quadratic_kappa(labels, np.digitize(scores, wide)) <= k_bound
    # no thresholds beat the majority on noise: the search returns the most accurate it finds
    noise = rng.normal(0, 1, 500)
    t = tune_thresholds(noise, labels, "kappa-above-majority")
    assert (np.digitize(noise, t) == labels).mean() >= (np.digitize(noise, [0.5, 1.5, 2.5, 3.5]) == labels).mean()
    with pytest.raises(ValueError, match="threshold rule"):
        tune_thresholds(scores, labels, "accuracy")


def test_blend_eyes_mixes_each_eye_with_its_partner_only():
    scores = np.array([0.0, 2.0, 4.0, 1.0, 1.0, 3.0])
    patients = ["a", "a", "b", "c", "c", "c"]  # a: two eyes; b: one; c: three images
    blended = blend_eyes(scores, patients, 0.25)
    assert blended[:2].tolist() == [0.5, 1.5]  # 0.75 * own + 0.25 * other
    assert blended[2] == 4.0  # no partner: unchanged
    assert blended[5] == pytest.approx(0.75 * 3 + 0.25 * 1)  # the mean of the patient's other images
    assert blend_eyes(scores, patients, 0.5)[0] == blend_eyes(scores, patients, 0.5)[1] == 1.0
    assert (blend_eyes(scores, patients, 0) == scores).all()
    probs = np.random.default_rng(0).dirichlet(np.ones(5), 6)
    assert np.allclose(blend_eyes(probs, patients, 0.4).sum(1), 1)
    with pytest.raises(ValueError, match="between 0"):
        blend_eyes(scores, patients, 0.6)


@pytest.mark.parametrize("objective,extra", [("regression", ["--threshold-rule", "kappa-above-majority",
                                                             "--threshold-margin", "0.5",  # out of reach
                                                             "--blend-eyes", "0.4"]),
                                             ("ordinal", ["--pair-eyes", "--space-to-depth", "2",
                                                          "--train-crop-size", "32"]),  # 16 px: fp32 (auto)
                                             ("classification", ["--decision", "thresholds",
                                                                 "--global-pool", "gem"]),
                                             ("ordinal+ce", ["--mixup", "0.2", "--label-smoothing", "0.1"])])
def test_objective_trains_and_thresholds_round_trip(synth_small, tmp_path, monkeypatch, objective, extra):
    run = tmp_path / "run"
    assert main(["train", "--data", str(synth_small), "--no-pretrained", "--image-size", "64", "--batch-size", "16",
                 "--workers", "0", "--epochs", "1", "--freeze-epochs", "0", "--objective", objective, *extra,
                 "--out", str(run), "--quiet"]) == 0
    model, obj, _, ckpt = restore(run / "checkpoints" / "best.pt")
    assert obj.name == objective and obj.thresholds == ckpt["model_info"]["thresholds"]
    assert obj.decision == ckpt["model_info"]["decision"] == "thresholds"
    assert obj.thresholds == sorted(obj.thresholds)
    assert model.pair_eyes == ("--pair-eyes" in extra)
    assert model.space_to_depth == (2 if "--space-to-depth" in extra else 1)
    assert ckpt["config"]["train_crop_size"] == (32 if "--train-crop-size" in extra else 0)
    assert model.global_pool == ("gem" if "--global-pool" in extra else "avg")
    rule = "kappa-above-majority" if "--threshold-rule" in extra else "kappa"
    card = (run / "checkpoints" / "MODEL_CARD.md").read_text()
    kept = "; the search kept its starting values" if list(obj.thresholds) == [0.5, 1.5, 2.5, 3.5] else ""
    assert (f"(tuned for {rule} on val" + (", accuracy margin 0.5" if "--threshold-margin" in extra else "")
            + kept + ")") in card
    assert ("on random 32 px windows of the photograph" in card) == ("--train-crop-size" in extra)
    with open(run / "metrics.csv", newline="") as f:
        row = list(csv.DictReader(f))[ckpt["best"]["epoch"]]
    split = ckpt["best"]["split"]
    labels = FundusDataset(synth_small, split, check=False, split_file=run / "split.csv").targets
    beats = float(row[f"{split}_accuracy"]) > majority_accuracy(labels) + ckpt["config"]["threshold_margin"]
    assert ckpt["best"]["eligible"] == (beats if rule != "kappa" else True)
    assert main(["evaluate", str(run / "checkpoints" / "best.pt"), "--data", str(synth_small),
                 "--out", str(tmp_path / "eval"), "--quiet", "--bootstrap", "50"]) == 0
    with open(tmp_path / "eval" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    scores = np.array([float(r["score"]) for r in rows])
    preds = np.array([int(r["predicted_grade"]) for r in rows])
    assert (np.digitize(scores, obj.thresholds) == preds).all()  # evaluate cuts with the stored thresholds
    probs = np.array([[float(r[f"prob_{g}"]) for g in range(5)] for r in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "kappa" in metrics
    truth, patients = [int(r["true_grade"]) for r in rows], [r["patient"] for r in rows]
    assert len(set(patients)) < len(rows)  # both eyes of some patients: resampling eyes would differ
    assert metrics["ci95"] == json.loads(json.dumps(bootstrap_ci(truth, preds, patients, n=50, probs=probs)))
    weight = 0.4 if "--blend-eyes" in extra else 0.0
    assert ckpt["model_info"]["blend_eyes"] == metrics["blend_eyes"] == weight
    if weight:  # evaluate blends as the thresholds were tuned; predict grades the same images alike
        assert "weight 0.4" in (run / "checkpoints" / "MODEL_CARD.md").read_text()
        assert main(["evaluate", str(run / "checkpoints" / "best.pt"), "--data", str(synth_small), "--blend-eyes",
                     "0", "--out", str(tmp_path / "raw"), "--quiet", "--bootstrap", "0"]) == 0
        with open(tmp_path / "raw" / "predictions.csv", newline="") as f:
            raw = list(csv.DictReader(f))
        own = np.array([float(r["score"]) for r in raw])
        assert np.abs(own - scores).max() > 1e-3
        assert np.allclose(blend_eyes(own, [r["patient"] for r in raw], weight), scores, atol=2e-6)
        predicted = {}
        for w in ("0", "default"):  # fp32: one's blend is the other's scores mixed exactly
            blend = ["--blend-eyes", w] if w != "default" else []
            assert main(["predict", str(run / "checkpoints" / "best.pt"), str(synth_small), "--split", "test", *blend,
                         "--out", str(tmp_path / f"predict-{w}.csv"), "--quiet", "--workers", "0",
                         "--amp", "none"]) == 0
            with open(tmp_path / f"predict-{w}.csv", newline="") as f:
                predicted[w] = list(csv.DictReader(f))
        assert sorted(r["image"] for r in predicted["default"]) == sorted(r["image"] for r in rows)
        own = np.array([float(r["score"]) for r in predicted["0"]])
        mixed = blend_eyes(own, [patient_of(r["image"]) for r in predicted["0"]], weight)
        assert np.allclose([float(r["score"]) for r in predicted["default"]], mixed, atol=2e-6)
        assert [int(r["predicted_grade"]) for r in predicted["default"]] == np.digitize(mixed, obj.thresholds).tolist()
        # benchmarks/eye_blending.py measures the same val scores, mixed the same way
        bench = _load_benchmark("eye_blending")
        assert main(["evaluate", str(run / "checkpoints" / "best.pt"), "--data", str(synth_small), "--split", "val",
                     "--blend-eyes", "0", "--out", str(tmp_path / "val"), "--quiet", "--bootstrap", "0"]) == 0
        with open(tmp_path / "val" / "predictions.csv", newline="") as f:
            val = list(csv.DictReader(f))
        own, labels = np.array([float(r["score"]) for r in val]), np.array([int(r["true_grade"]) for r in val])
        rows = bench.main([str(run), "--data", str(synth_small), "--weights", "0", "0.4", "--repeats", "1",
                           "--workers", "0", "--out", str(tmp_path / "bench.json")])["results"]
        assert [(r["tta"], r["weight"]) for r in rows] == [(False, 0.0), (False, 0.4), (True, 0.0), (True, 0.4)]
        for r, w in zip(rows[:2], (0, 0.4)):
            expected = roc_auc_score(labels >= 2, blend_eyes(own, [v["patient"] for v in val], w))
            assert r["referable_auc"] == pytest.approx(expected, abs=1e-9)
            assert 0 <= r["share_above_majority"] <= 1 and -1 <= r["kappa"] <= 1
        # benchmarks/threshold_margin.py: the run's blend weight, each margin passed through to the halvings
        monkeypatch.syspath_prepend(str(Path(bench.__file__).parent))
        rows = _load_benchmark("threshold_margin").main([str(run), "--data", str(synth_small), "--margins", "0", "0.02",
                                                         "--repeats", "2", "--workers", "0",
                                                         "--out", str(tmp_path / "margin.json")])["results"]
        assert [(r["rule"], r["margin"], r["blend_eyes"]) for r in rows] == [
            ("kappa", 0.0, 0.4), ("kappa-above-majority", 0.0, 0.4), ("kappa-above-majority", 0.02, 0.4)]
        scores, labels, patients, _ = bench.val_scores(run, str(synth_small), False, 0)
        expected = bench.halves(blend_eyes(scores, patients, 0.4), labels, patients, "kappa-above-majority", 2,
                                margin=0.02)
        assert {k: rows[2][k] for k in expected} == pytest.approx(expected, abs=1e-9)
    if "--pair-eyes" in extra:  # the benchmarks grade a model of eye pairs as evaluate does (it raised)
        assert main(["evaluate", str(run / "checkpoints" / "best.pt"), "--data", str(synth_small), "--split", "val",
                     "--out", str(tmp_path / "val"), "--quiet", "--bootstrap", "0", "--amp", "none"]) == 0
        with open(tmp_path / "val" / "predictions.csv", newline="") as f:
            val = [float(r["score"]) for r in csv.DictReader(f)]
        scores = _load_benchmark("eye_blending").val_scores(run, str(synth_small), False, 0)[0]
        assert scores == pytest.approx(val, abs=1e-5)


def test_the_benchmarks_test_time_flips_mirror_each_eye_of_a_pair():
    """eye_blending.py's flips act on the image's height and width, for an NCHW batch and for the (N, 2, C, H, W)
    batches of a --pair-eyes model (they flipped the eye and colour axes there)."""
    seen = []
    flip = _load_benchmark("eye_blending").FlipAverage(lambda x: seen.append(x) or x.sum().reshape(1))
    for shape in ((1, 3, 4, 4), (1, 2, 3, 4, 4)):
        seen.clear()
        x = torch.arange(float(np.prod(shape))).reshape(shape)
        flip(x)
        assert [torch.equal(v, x.flip(dims)) for v, dims in zip(seen, ([], [-1], [-2], [-2, -1]))] == [True] * 4


def test_thresholds_tuned_on_training_and_val_images(synth_small, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(synth_small), "--no-pretrained", "--image-size", "48", "--batch-size", "16",
                 "--workers", "0", "--epochs", "2", "--freeze-epochs", "0", "--objective", "ordinal", "--amp", "none",
                 "--threshold-rule", "kappa-above-majority", "--threshold-margin", "0.02", "--blend-eyes", "0.4",
                 "--threshold-data", "train+selection", "--out", str(run), "--quiet", "--stop-after", "1"]) == 0
    assert restore(run / "checkpoints" / "best.pt")[3]["model_info"]["threshold_data"] == "val"  # not at a pause
    assert main(["train", "--resume", str(run)]) == 0
    model, obj, prep, ckpt = restore(run / "checkpoints" / "best.pt")
    info = ckpt["model_info"]
    assert info["threshold_data"] == "train+val" and info["threshold_margin"] == 0.02
    scores, labels = {}, {}
    for split in ("train", "val"):  # the selected checkpoint on the unaugmented training images and on val
        ds = FundusDataset(synth_small, split, image_size=prep.size, preprocess=prep.preset, uint8=True, train=False,
                           split_file=run / "split.csv")
        r = predict_dataset(model, obj, ds, batch_size=16, workers=0, amp="none", progress=False)
        scores[split], labels[split] = blend_eyes(r["scores"], [x.patient for x in ds.samples], 0.4), r["labels"]
    both = tune_thresholds(np.concatenate(list(scores.values())), np.concatenate(list(labels.values())),
                           "kappa-above-majority", 0.02)
    assert obj.thresholds == pytest.approx(both)
    on_val = tune_thresholds(scores["val"], labels["val"], "kappa-above-majority", 0.02)
    assert both != pytest.approx(on_val) and info["epoch_thresholds"] == pytest.approx(on_val)  # metrics.csv's
    card = (run / "checkpoints" / "MODEL_CARD.md").read_text()
    assert "on train+val, accuracy margin 0.02)" in card
    assert "These rows graded with the thresholds tuned at that epoch" in card  # not the shipped model's numbers
    capsys.readouterr()
    saved = (run / "checkpoints" / "best.pt").read_bytes()
    assert main(["train", "--resume", str(run)]) == 0  # retuned already: nothing to do, its evaluation stays current
    out = capsys.readouterr().out
    assert "nothing to train" in out and "thresholds of the selected epoch" not in out
    assert (run / "checkpoints" / "best.pt").read_bytes() == saved
    assert main(["train", "--resume", str(run), "--threshold-margin", "0.05"]) == 0  # another margin: retuned
    assert "thresholds of the selected epoch" in capsys.readouterr().out
    again = restore(run / "checkpoints" / "best.pt")[3]["model_info"]
    assert again["threshold_margin"] == 0.05 and again["epoch_thresholds"] == pytest.approx(on_val)
    assert main(["evaluate", str(run), "--data", str(synth_small), "--out", str(run / "eval"), "--workers", "0",
                 "--bootstrap", "0", "--quiet"]) == 0
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert "at each epoch's thresholds, before the shipped ones were retuned" in \
        (tmp_path / "report" / "report.md").read_text()


def test_run_from_before_a_threshold_option_is_not_retuned_again(synth_small, tmp_path, capsys):
    """A finished, retuned run whose record predates an option (it ran with that option's default) does nothing on
    a plain resume, as one that records it does."""
    run = tmp_path / "run"
    assert main(["train", "--data", str(synth_small), "--no-pretrained", "--image-size", "48", "--batch-size", "16",
                 "--workers", "0", "--epochs", "1", "--freeze-epochs", "0", "--objective", "ordinal", "--amp", "none",
                 "--threshold-data", "train+selection", "--out", str(run), "--quiet"]) == 0
    last = run / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    del ckpt["config"]["threshold_margin"]  # as a run saved before --threshold-margin existed
    torch.save(ckpt, last)
    config = yaml.safe_load((run / "config.yaml").read_text())
    del config["train"]["threshold_margin"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    saved = (run / "checkpoints" / "best.pt").read_bytes()
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "nothing to train" in out and "thresholds of the selected epoch" not in out
    assert (run / "checkpoints" / "best.pt").read_bytes() == saved


def test_threshold_margin_must_be_a_fraction(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--data", "d", "--out", "runs/x", "--threshold-margin", "2"])
    assert "--threshold-margin 2" in capsys.readouterr().err


def _load_benchmark(name: str):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eye_pairs_including_single_eye_patients(tmp_path):
    make_kaggle(tmp_path, n_patients=4)
    lines = (tmp_path / "trainLabels.csv").read_text().splitlines()
    (tmp_path / "trainLabels.csv").write_text("\n".join(l for l in lines if l.split(",")[0] != "2_right") + "\n")
    Image.new("RGB", (64, 64), (200, 40, 20)).save(tmp_path / "1_right.jpeg")  # unlike its partner
    ds = PairedEyes(FundusDataset(tmp_path, "all", image_size=32, uint8=True))
    names = [s.image for s in ds.samples]
    pairs = {names[i]: names[ds.partner[i]] for i in range(len(ds))}
    assert pairs["0_left"] == "0_right" and pairs["0_right"] == "0_left" and pairs["3_right"] == "3_left"
    assert pairs["2_left"] == "2_left"  # one eye only: paired with itself
    x, y = ds[names.index("1_left")]
    assert x.shape == (2, 3, 32, 32) and y == ds.samples[names.index("1_left")].label
    assert torch.equal(x[0], ds.dataset[names.index("1_left")][0])  # the eye graded first, its partner second
    assert torch.equal(x[1], ds.dataset[names.index("1_right")][0]) and not torch.equal(x[0], x[1])
    model = Grader("resnet18", 5, pair_eyes=True)
    assert model(torch.stack([x, x]).float()).shape == (2, 5)


def test_bootstrap_ci_contains_estimate_and_shrinks():
    rng = np.random.default_rng(1)

    def fake(n_patients):
        y = rng.integers(0, 5, n_patients * 2)
        pred = np.where(rng.random(len(y)) < 0.7, y, rng.integers(0, 5, len(y)))
        probs = np.eye(5)[pred] * 0.6 + rng.dirichlet(np.ones(5), len(y)) * 0.4  # mostly on the answer
        return y, pred, np.repeat(np.arange(n_patients), 2), probs

    small, large = fake(50), fake(2000)
    ci_s, ci_l = (bootstrap_ci(y, p, g, n=300, probs=pr) for y, p, g, pr in (small, large))
    for (y, p, _, probs), ci in ((small, ci_s), (large, ci_l)):
        assert ci["kappa"][0] <= quadratic_kappa(y, p) <= ci["kappa"][1]
        assert ci["accuracy"][0] <= (y == p).mean() <= ci["accuracy"][1]
        assert ci["referable_auc"][0] <= referable_auc(y, probs) <= ci["referable_auc"][1]
    width = lambda ci, k: ci[k][1] - ci[k][0]  # noqa: E731
    for k in ("kappa", "accuracy", "referable_auc"):
        assert width(ci_l, k) < width(ci_s, k) / 3, k
    assert "referable_auc" not in bootstrap_ci(*small[:3], n=10)  # no probabilities: no AUC interval


def test_kappa_above_majority_finds_the_floor_from_a_second_start():
    """Mostly grade 0 and noisy scores: from 0.5..3.5 the coordinate search stayed below the majority rate (6 of
    200 such simulated val sets); a second start at the cuts matching the grade mix reaches above it (all 200)."""
    for seed in (16, 24, 98):
        rng = np.random.default_rng(seed)
        y = rng.choice(5, 200, p=[0.7, 0.07, 0.15, 0.04, 0.04])
        scores = y + rng.normal(0, 1.0, 200) * rng.uniform(0.6, 1.4)
        th = tune_thresholds(scores, y, "kappa-above-majority")
        assert (np.digitize(scores, th) == y).mean() > majority_accuracy(y), seed


def test_bootstrap_leaves_out_resamples_without_a_kappa():
    """Perfect answers for two patients of different grades: a resample of one patient is all one grade, right
    everywhere, and has no kappa (it used to count as 0, stretching the interval down to 0)."""
    ci = bootstrap_ci([0, 0, 3, 3], [0, 0, 3, 3], ["a", "a", "b", "b"], n=200)
    assert ci["kappa"] == [1.0, 1.0] and 50 < ci["kappa_undefined"] < 150 and ci["accuracy"] == [1.0, 1.0]
    assert bootstrap_ci([2, 2], [2, 2], ["a", "a"], n=10)["kappa"] is None
    one = bootstrap_ci([2, 3], [1, 3], ["a", "a"], n=10, probs=np.full((2, 5), 0.2))  # one patient: every resample
    assert one["accuracy"] is None and one["kappa"] is None and one["referable_auc"] is None  # is him: no interval
    none_referable = bootstrap_ci([0, 1, 0, 1], [0, 1, 0, 1], list("abcd"), n=20, probs=np.full((4, 5), 0.2))
    assert none_referable["referable_auc"] is None  # no resample has both sides


@pytest.mark.parametrize("name", ["regression", "ordinal", "ordinal+ce"])
def test_described_grade_rule_is_the_one_applied(name):
    """The export JSON's words for a thresholded grade: the number of thresholds at or below the score."""
    obj = make_objective(name, thresholds=[0.4, 1.3, 2.2, 3.1])
    assert obj.describe()["grade"] == "the number of thresholds at or below the score"
    scores = np.array([0.0, 0.4, 0.39, 1.3, 2.5, 3.1, 4.0])
    assert obj.grades_of(None, scores).tolist() == [sum(t <= x for t in obj.thresholds) for x in scores]
    as_float32 = scores.astype(np.float32)  # a model's outputs: 1.3 is 1.2999999523, below the threshold 1.3
    assert obj.grades_of(None, torch.tensor(as_float32)).tolist() == obj.grades_of(None, as_float32).tolist() == \
        [sum(t <= float(x) for t in obj.thresholds) for x in as_float32] == [0, 1, 0, 1, 3, 3, 4]
    for bad in ([3.5, 2.5, 1.5, 0.5], [1.5]):  # torch's bucketize and numpy's digitize disagreed on the first
        with pytest.raises(ValueError, match="expected 4 cuts in non-decreasing order"):
            make_objective(name, thresholds=bad)
    merged = make_objective(name, thresholds=[0.5, 2.0, 2.0, 3.5])  # no score is at or above 2.0 and below 2.0
    assert merged.describe()["grade"].endswith("(never grade 2: its thresholds coincide)")
    assert 2 not in merged.grades_of(None, np.linspace(-1, 5, 601)).tolist()



def test_tuned_thresholds_grade_as_the_search_found_them():
    """Thresholds are rounded to 4 decimals only where that grades the tuning scores alike: here the search's cut
    beats always answering grade 0 (0.828 against 0.759) and the rounded one did not (0.759)."""
    labels = np.array([0, 0, 0, 4, 0, 0, 0, 0, 1, 0, 0, 0, 0, 3, 1, 1, 0, 0, 2, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0])
    scores = np.array([0.0243038, -0.0072148, -0.0262737, 0.0208699, -0.0046552, 0.0079613, -0.0022218, -0.0204046,
                       0.0311497, 0.0030824, 0.0225471, 0.019019, 0.0032288, 0.0490359, 0.0073687, 0.0246122,
                       -0.0253303, -0.0282169, 0.0026122, 0.0068182, 0.0011722, -0.011813, -0.0098413, 0.0306374,
                       0.0010521, 0.0152968, 0.0138783, -0.0036939, -0.0010978], dtype=np.float32)
    t = tune_thresholds(scores, labels, "kappa-above-majority")
    assert (np.digitize(scores, t) == labels).mean() > majority_accuracy(labels)


def test_a_score_on_a_threshold_gets_one_grade_on_every_path():
    """predict's torch path compared in float32 (1.3 as 1.2999999523), numpy's in float64: one score, two grades."""
    obj = make_objective("regression", thresholds=[0.5, 1.3, 2.5, 3.5])
    score = np.float32(1.3)
    assert int(obj.grades_of(None, torch.tensor([score]))[0]) == int(obj.grades_of(None, np.array([score]))[0])
