"""Training end to end through the CLI: it learns, a broken pipeline does not, resume is exact, DDP works,
and `evaluate` agrees with scikit-learn."""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, recall_score, roc_auc_score

from retinopathy import __version__
from retinopathy.cli.main import main
from retinopathy.data import DataError
from retinopathy.errors import DataWarning, RetinopathyError
from retinopathy.training.checkpoint import load_checkpoint, save_checkpoint
from retinopathy.training.config import ConfigError, parse_args

FAST = ["--model", "resnet18", "--no-pretrained", "--image-size", "64", "--batch-size", "16", "--workers", "0",
        "--quiet"]


def rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def learn_data(tmp_path_factory):
    from retinopathy.data.synth import generate

    out = tmp_path_factory.mktemp("learn")
    generate(out, n=400, size=96, seed=5, balanced=True, progress=False)
    return out


def _train(data, run, *extra):
    assert main(["train", "--data", str(data), *FAST, "--epochs", "6", "--freeze-epochs", "1",
                 "--out", str(run), *extra]) == 0
    assert main(["evaluate", str(run / "checkpoints" / "best.pt"), "--data", str(data), "--split", "test",
                 "--out", str(run / "eval"), "--quiet", "--bootstrap", "200", *extra[:2]]) == 0
    return json.loads((run / "eval" / "metrics.json").read_text())


KAPPA_BOUND = 0.4


@pytest.fixture(scope="module")
def learned(learn_data, tmp_path_factory):
    return _train(learn_data, tmp_path_factory.mktemp("runs") / "learned")


def test_training_learns(learned):
    assert learned["accuracy"] > learned["majority_accuracy"] + 0.1
    assert learned["kappa"] > KAPPA_BOUND


def test_shuffled_labels_do_not_learn(learn_data, tmp_path):
    """The same pipeline with labels shuffled across images must fail the bound above."""
    lines = (learn_data / "trainLabels.csv").read_text().split()
    names, labels = zip(*(line.split(",") for line in lines[1:]))
    labels = list(labels)
    random.Random(0).shuffle(labels)
    data = tmp_path / "shuffled"
    data.mkdir()
    (data / "trainLabels.csv").write_text("image,level\n" + "".join(f"{n},{g}\n" for n, g in zip(names, labels)))
    broken = _train(data, tmp_path / "run", "--images", str(learn_data))
    assert broken["kappa"] < KAPPA_BOUND


def test_run_folder_contents(learned, learn_data):
    run = __import__("pathlib").Path(learned["checkpoint"]).parents[1]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 6 and cfg["selection"]["split"] == "val"
    assert cfg["environment"]["torch"] == torch.__version__ and cfg["data"]["format"] == "kaggle"
    r = rows(run)
    assert [x["phase"] for x in r] == ["frozen"] + ["finetune"] * 5
    for col in ("lr", "train_loss", "train_accuracy", "val_loss", "val_kappa", "val_macro_f1", "test_accuracy",
                "val_recall_4", "epoch_seconds", "images_per_s"):
        assert all(x[col] != "" for x in r), col
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["best"]["value"] == max(float(x["val_kappa"]) for x in r)
    assert set(best) >= {"model", "optimizer", "scheduler", "scaler", "epoch", "phase", "config"}


def test_evaluate_matches_scikit_learn(learned):
    out = __import__("pathlib").Path(learned["checkpoint"]).parents[1] / "eval"
    with open(out / "predictions.csv", newline="") as f:
        pred = list(csv.DictReader(f))
    y = np.array([int(p["true_grade"]) for p in pred])
    yhat = np.array([int(p["predicted_grade"]) for p in pred])
    probs = np.array([[float(p[f"prob_{g}"]) for g in range(5)] for p in pred])
    assert len(pred) == learned["count"] and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert learned["accuracy"] == pytest.approx(accuracy_score(y, yhat))
    assert learned["kappa"] == pytest.approx(cohen_kappa_score(y, yhat, weights="quadratic"))
    assert learned["macro_f1"] == pytest.approx(f1_score(y, yhat, average="macro"))
    assert learned["referable_auc"] == pytest.approx(roc_auc_score(y >= 2, probs[:, 2:].sum(1)), abs=1e-5)
    assert learned["referable_sensitivity"] == pytest.approx(recall_score(y >= 2, yhat >= 2))
    assert learned["referable_specificity"] == pytest.approx(recall_score(y < 2, yhat < 2))
    assert learned["majority_accuracy"] == pytest.approx(np.bincount(y).max() / len(y))
    cm = np.loadtxt(out / "confusion_matrix.csv", delimiter=",")
    assert cm.tolist() == [np.bincount(yhat[y == t], minlength=5).tolist() for t in range(5)]  # rows: true grades
    assert not np.array_equal(cm, cm.T)  # so that a transposed file would show
    lo, hi = learned["ci95"]["kappa"]
    assert lo <= learned["kappa"] <= hi
    from PIL import Image

    assert Image.open(out / "confusion_matrix.png").size[0] > 300


def test_resume_is_exact(synth_small, tmp_path, capsys):
    """A run cut after 2 epochs and resumed equals the straight run; the cut run also caches its images
    (--cache-images, carried into the resume by its config), which must not change a number either."""
    args = ["train", "--data", str(synth_small), *FAST, "--epochs", "3", "--freeze-epochs", "1",
            "--deterministic", "--augment", "fundus"]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    assert main([*args, "--out", str(tmp_path / "cut"), "--stop-after", "2", "--cache-images"]) == 0
    assert f"stopped after 2 epochs (--stop-after): continue with `retinopathy train --resume {tmp_path / 'cut'}`" \
        in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "cut" / "config.yaml").read_text())["train"]["cache_images"] is True
    assert len(rows(tmp_path / "cut")) == 2
    first_leg = yaml.safe_load((tmp_path / "cut" / "config.yaml").read_text())
    idle = {**first_leg, "engine": {**first_leg["engine"], "workers": 7},  # as a resume killed in its first epoch
            "earlier": [{"epochs": 2, "engine": first_leg["engine"], "environment": first_leg["environment"]}]}
    (tmp_path / "cut" / "config.yaml").write_text(yaml.safe_dump(idle, sort_keys=False))  # leaves it: it trained
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0  # nothing, so it is no leg of its own
    record = (tmp_path / "cut" / "config.yaml").read_bytes()
    earlier = yaml.safe_load(record)["earlier"]  # the first leg's engine and machine stay on record
    assert earlier == [{"epochs": 2, "engine": first_leg["engine"], "environment": first_leg["environment"]}]
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet", "--amp", "none", "--workers", "0",
                 "--epochs", "1"]) == 0
    said = capsys.readouterr().out  # that alone: no "training resnet18 ..." line, as if it started
    assert said == f"nothing to train: {tmp_path / 'cut'} has trained 3 epochs, all it was asked for: --epochs N on " \
        "--resume trains on\n"
    assert (tmp_path / "cut" / "config.yaml").read_bytes() == record  # what trained it, not the idle resume
    assert b"\r" not in (tmp_path / "cut" / "metrics.csv").read_bytes() + (tmp_path / "cut" / "split.csv").read_bytes()
    timing = {"epoch_seconds", "images_per_s"}
    a, b = rows(tmp_path / "straight"), rows(tmp_path / "cut")
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k not in timing} == {k: v for k, v in rb.items() if k not in timing}
    sa = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    sb = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_on_a_cpu_without_bf16_says_so(synth_small, tmp_path, capsys, monkeypatch):
    """Without native bf16, --amp auto trains in fp32 (still channels_last, faster in fp32 too) and tells the
    user why it is slower; an explicit --amp none gets no note, an emulated --amp bf16 or fp16 one."""
    from retinopathy.training import engine

    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: False)
    args = ["train", "--data", str(synth_small), *FAST, "--epochs", "1", "--freeze-epochs", "0",
            "--eval-splits", "val", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "auto")]) == 0
    out, err = capsys.readouterr()
    assert "amp none (evaluation none), channels_last True" in out and "note: this CPU has no native bf16" in err
    assert main([*args, "--out", str(tmp_path / "chosen"), "--amp", "none"]) == 0
    assert "no native bf16" not in "".join(capsys.readouterr())
    cpu = torch.device("cpu")  # bf16 or fp16 asked for where it is emulated: several times slower, said so
    assert "--amp bf16 is emulated" in engine.cpu_amp_note(cpu, "bf16", "bf16", 128)
    assert "--amp fp16 is emulated" in engine.cpu_amp_note(cpu, "fp16", "fp16", 128)
    assert engine.cpu_amp_note(torch.device("cuda"), "bf16", "bf16", 128) == ""
    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: True)
    assert engine.cpu_amp_note(cpu, "bf16", "bf16", 128) == engine.cpu_amp_note(cpu, "auto", "bf16", 128) == ""
    monkeypatch.setattr(engine, "cpu_flags", lambda: frozenset({"avx512_bf16"}))  # bf16, but no fp16 instructions
    assert "--amp fp16 is emulated" in engine.cpu_amp_note(cpu, "fp16", "fp16", 128)


def test_tiny_training_inputs_train_in_fp32_on_the_cpu(monkeypatch):
    """PyTorch's CPU bf16 convolutions give non-finite gradients now and then on the 1 x 1 maps that inputs of 16 px
    or less leave a ResNet's last stage: --amp auto trains those in fp32; grading (no gradients) keeps bf16."""
    from retinopathy.training import engine

    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: True)
    from torchvision.models import resnet18

    model, cpu = resnet18(num_classes=5), torch.device("cpu")
    assert [engine.engine_settings(cpu, model, "auto", None, size)[0] for size in (8, 16, 17, 32, None)] == [
        "none", "none", "bf16", "bf16", "bf16"]
    assert engine.engine_settings(cpu, model, "bf16", None, 16)[0] == "bf16"  # asked for: as asked


def test_model_ema_is_evaluated_shipped_and_resumed_exactly(synth_small, tmp_path):
    """--model-ema: the averaged weights are what each epoch evaluates, what best.pt restores, and they resume
    to the same bits."""
    from retinopathy.models.restore import restore

    args = ["train", "--data", str(synth_small), *FAST, "--epochs", "3", "--freeze-epochs", "0",
            "--deterministic", "--model-ema", "--model-ema-decay", "0.9", "--eval-splits", "val"]
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert main([*args, "--out", str(straight)]) == 0
    assert main([*args, "--out", str(cut), "--stop-after", "2"]) == 0
    assert main(["train", "--resume", str(cut), "--quiet"]) == 0
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(cut / "checkpoints" / "last.pt")
    assert a["ema_updates"] == b["ema_updates"] > 0
    assert all(torch.equal(a["model_ema"][k], b["model_ema"][k]) for k in a["model_ema"])
    assert not torch.equal(a["model_ema"]["net.fc.weight"], a["model"]["net.fc.weight"])

    best = load_checkpoint(straight / "checkpoints" / "best.pt")
    model = restore(best)[0]
    assert all(torch.equal(v, best["model_ema"][k]) for k, v in model.state_dict().items())
    assert best["model_info"]["model_ema"] == 0.9
    assert "moving average" in (straight / "checkpoints" / "MODEL_CARD.md").read_text()
    assert main(["evaluate", str(straight / "checkpoints" / "best.pt"), "--data", str(synth_small), "--split", "val",
                 "--split-file", str(straight / "split.csv"), "--out", str(tmp_path / "eval"), "--bootstrap", "0",
                 "--workers", "0", "--quiet"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    row = rows(straight)[best["epoch"]]
    assert metrics["kappa"] == pytest.approx(float(row["val_kappa"]))
    assert metrics["loss"] == pytest.approx(float(row["val_loss"]), rel=1e-3)


def test_the_numbers_logged_in_training_are_evaluates(synth_small, tmp_path):
    """Each epoch's evaluation (which selects best.pt and tunes an ordinal model's thresholds) grades in fp32 by
    default, as evaluate, predict and the exported model do, whatever precision training uses: the selected
    epoch's val kappa in metrics.csv is what evaluate reports (under training's bf16 they differed)."""
    run = tmp_path / "ordinal"
    assert main(["train", "--data", str(synth_small), *FAST, "--epochs", "2", "--freeze-epochs", "0",
                 "--objective", "ordinal", "--amp", "auto", "--eval-splits", "val", "--out", str(run)]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["engine"]["eval_amp"] == "none"
    assert main(["evaluate", str(run / "checkpoints" / "best.pt"), "--data", str(synth_small), "--split", "val",
                 "--out", str(tmp_path / "eval"), "--bootstrap", "0", "--workers", "0", "--quiet"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    row = rows(run)[load_checkpoint(run / "checkpoints" / "best.pt")["epoch"]]
    assert metrics["kappa"] == pytest.approx(float(row["val_kappa"]), abs=1e-9)
    assert metrics["accuracy"] == pytest.approx(float(row["val_accuracy"]), abs=1e-9)


def test_a_run_from_before_eval_amp_resumes_in_its_own_precision(tmp_path):
    """Its epochs were evaluated in its training precision: a resume keeps evaluating so, not in fp32."""
    from retinopathy.training.config import file_options

    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"train": {"model": "resnet18", "amp": "auto"},
                                                          "engine": {"amp": "bf16"}}))
    assert file_options(tmp_path / "config.yaml")[0]["eval_amp"] == "bf16"


def test_mixup_trains_and_resumes_exactly(synth_small, tmp_path, capsys):
    """--mixup changes training (other weights than without it) and, drawn from the seeded RNG, resumes to the
    same bits; a negative alpha is refused."""
    args = ["train", "--data", str(synth_small), *FAST, "--epochs", "2", "--freeze-epochs", "0", "--deterministic",
            "--objective", "ordinal", "--eval-splits", "val"]
    runs = [("plain", []), ("straight", ["--mixup", "0.4"]), ("cut", ["--mixup", "0.4", "--stop-after", "1"])]
    for name, extra in runs:
        assert main([*args, *extra, "--out", str(tmp_path / name)]) == 0
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    assert yaml.safe_load((tmp_path / "cut" / "config.yaml").read_text())["train"]["mixup"] == 0.4
    assert "mixup alpha 0.4" in (tmp_path / "cut" / "checkpoints" / "MODEL_CARD.md").read_text()
    plain, a, b = (load_checkpoint(tmp_path / n / "checkpoints" / "last.pt")["model"]
                   for n in ("plain", "straight", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["net.fc.weight"], plain["net.fc.weight"])
    with pytest.raises(SystemExit):
        main([*args, "--mixup", "-1", "--out", str(tmp_path / "bad")])
    assert "--mixup -1.0" in capsys.readouterr().err


def test_a_run_stopped_early_resumes_to_its_last_epoch(tiny_run, tmp_path, capsys):
    """--stop-after belongs to the command that gave it: a plain --resume trains every epoch that is left; fewer
    --epochs while epochs remain end the run sooner, with a note (its schedule is cut short)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["train", "--resume", str(run), "--epochs", "6", "--stop-after", "1", "--quiet"]) == 0
    assert len(rows(run)) == 3
    assert main(["train", "--resume", str(run), "--epochs", "4", "--quiet"]) == 0
    assert len(rows(run)) == 4 and ("note: --epochs 4 is fewer than the 6 the run was set to train: it ends after "
                                    "epoch 4, its schedule cut to 4 epochs") in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "5", "--quiet"]) == 0
    assert len(rows(run)) == 5
    (run / "metrics.csv").unlink()  # lost: the epochs trained from here on are written under their header
    assert main(["train", "--resume", str(run), "--epochs", "6", "--quiet"]) == 0
    assert [r["epoch"] for r in rows(run)] == ["5"]


def test_training_without_some_grades_says_so(synth_small, tmp_path, capsys):
    """A train split missing grades (a subset, a filter gone wrong) is named before the hours of training."""
    labels = list(csv.DictReader(open(synth_small / "trainLabels.csv")))
    for kept, said in [({"0", "2"}, "the train split holds no image of grade 1, 3, 4: the model learns nothing "
                        "of them and may never answer them"),
                       ({"0"}, "every train image is grade 0: the model cannot learn to tell grades apart")]:
        data = tmp_path / "-".join(sorted(kept))
        data.mkdir()
        (data / "labels.csv").write_text("image,level\n" + "".join([
            f"{r['image']},{r['level']}\n" for r in labels if r["level"] in kept][:40]))
        assert main(["train", "--data", str(data), "--images", str(synth_small), *FAST,
                     "--image-size", "32", "--epochs", "1", "--freeze-epochs", "0", "--eval-splits", "val",
                     "--out", str(data / "run")]) == 0
        assert f"warning: {said}" in capsys.readouterr().err


def test_the_process_group_is_left_however_training_ends(synth_small, tmp_path, monkeypatch):
    """A failure after joining the process group (bad data, a wrong checkpoint, Ctrl-C) leaves it too, as a
    finished run does: only a finished run and a diverged one did."""
    from retinopathy.training import train as train_module
    from retinopathy.training.distributed import DistInfo

    left = []
    monkeypatch.setattr(train_module, "init_distributed", lambda device_type, run=None: DistInfo(enabled=True))
    monkeypatch.setattr(train_module, "cleanup", left.append)
    assert main(["train", "--data", str(tmp_path / "nowhere"), *FAST, "--out", str(tmp_path / "run")]) == 2
    assert left == [DistInfo(enabled=True)]


def test_an_option_newer_than_the_run_is_kept_at_its_default_on_resume(tiny_run, tmp_path, capsys):
    """A run from before --norm-weight-decay existed trained with one optimizer group: asking for the option on
    its resume is refused as a change (it was a traceback from the optimizer's load_state_dict)."""
    run = tmp_path / "old"
    shutil.copytree(tiny_run, run)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    del last["config"]["norm_weight_decay"]
    save_checkpoint(last, run / "checkpoints" / "last.pt")
    assert main(["train", "--resume", str(run), "--epochs", "3", "--norm-weight-decay", "0", "--quiet"]) == 2
    assert "the run trained with --norm-weight-decay not set (not 0.0)" in capsys.readouterr().err


def test_a_run_that_predates_an_option_with_a_default_resumes_with_it(tiny_run, tmp_path, capsys):
    """--momentum (default 0.9) missing from an old run's checkpoint is the default it ran with, not 'not set'."""
    run = tmp_path / "old"
    shutil.copytree(tiny_run, run)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    del last["config"]["momentum"]
    save_checkpoint(last, run / "checkpoints" / "last.pt")
    assert main(["train", "--resume", str(run), "--epochs", "3", "--stop-after", "1", "--quiet"]) == 0, \
        capsys.readouterr().err


def test_a_resume_in_another_number_of_processes_is_refused(tiny_run, tmp_path, capsys):
    """Each process draws its own images and augmentations: a run continues only in as many processes as it ran
    in, and the refusal gives the command that does (even where the steps per epoch would happen to match)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["world_size"] == 1
    last["world_size"] = 2  # as if trained under torchrun --nproc_per_node=2
    save_checkpoint(last, run / "checkpoints" / "last.pt")
    assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the run trained in 2 process(es), this resume has 1" in err
    assert f"torchrun --nproc_per_node=2 -m retinopathy train --resume {run} --epochs 3" in err


def test_files_a_resume_does_not_read_keep_the_runs_record(tiny_run, tmp_path, monkeypatch, capsys):
    """--weights given again by another path (an experiment's relative weights: run from another folder) neither
    stops the resume nor replaces what config.yaml and the checkpoints say the run started from."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", str(run), "--weights", "w.pt", "--epochs", "3", "--quiet"]) == 0
    assert "note: --weights" in capsys.readouterr().err
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["weights"] is None
    assert load_checkpoint(run / "checkpoints" / "last.pt")["config"]["weights"] is None


def test_resume_keeps_what_shapes_the_run(tiny_run, synth_small, tmp_path, capsys):
    """The network, the metrics.csv columns and the selection rule cannot change on resume (a clean error, the
    run untouched), nor can --out point elsewhere; the suggested way, a new run from its weights, works."""
    import shutil

    from retinopathy.training.resume import (FIXED_ON_RESUME, FIXED_WHILE_STEPPING, FIXED_WHILE_TRAINING,
                                             MEANS_NOTHING_WITHOUT)

    from .test_formats import disc

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before, tried = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}, set()
    for change, named in ((["--objective", "ordinal"], "--objective classification (not ordinal)"),
                          (["--eval-splits", "val"], "--eval-splits val,test (not val)"),
                          (["--threshold-margin", "0.1"], "--threshold-margin 0.0 (not 0.1)"),
                          (["--optimizer", "sgd"], "--optimizer adamw (not sgd)"),  # its state would not load
                          (["--batch-size", "8"], "--batch-size 16 (not 8)"),
                          (["--model-ema"], "--no-model-ema (not --model-ema)"),
                          (["--val-fraction", "0.3"], "--val-fraction 0.1 (not 0.3)"),  # its split.csv decides
                          (["--split-seed", "5"], "--split-seed 0 (not 5)"),
                          (["--pretrained"], "--no-pretrained (not --pretrained)"),  # last.pt holds the weights
                          (["--blend-eyes", "0.3"], "--blend-eyes 0.0 (not 0.3)"),
                          (["--decision", "thresholds"], "--decision argmax (not thresholds)"),
                          (["--image-size", "32"], "--image-size 64 (not 32)"),  # what the model sees
                          (["--preprocess", "graham"], "--preprocess lab (not graham)"),
                          (["--augment", "none"], "--augment fundus (not none)"),  # how the next epochs learn
                          (["--seed", "5"], "--seed 0 (not 5)"),
                          (["--select-metric", "accuracy"], "--select-metric kappa (not accuracy)"),  # what best is
                          (["--head", "lab"], "--head linear (not lab)"),
                          (["--lr", "0.01"], "--lr 0.001 (not 0.01)"),
                          (["--sampler", "balanced"], "--sampler random (not balanced)"),
                          (["--model", "resnet50"], "--model resnet18 (not resnet50)"),
                          (["--pair-eyes"], "--no-pair-eyes (not --pair-eyes)"),
                          (["--space-to-depth", "2"], "--space-to-depth 1 (not 2)"),
                          (["--global-pool", "gem"], "--global-pool avg (not gem)"),
                          (["--select-on", "test"], "--select-on auto (not test)"),
                          (["--train-crop-size", "32"], "--train-crop-size 0 (not 32)"),
                          (["--test-fraction", "0.3"], "--test-fraction 0.2 (not 0.3)"),
                          (["--momentum", "0.5"], "--momentum 0.9 (not 0.5)"),
                          (["--weight-decay", "0.05"], "--weight-decay 0.01 (not 0.05)"),
                          (["--norm-weight-decay", "0"], "--norm-weight-decay not set (not 0.0)"),
                          (["--scheduler", "none"], "--scheduler cosine (not none)"),
                          (["--warmup-epochs", "0"], "--warmup-epochs 1.0 (not 0.0)"),
                          (["--freeze-epochs", "0"], "--freeze-epochs 1 (not 0)"),
                          (["--class-weights", "inverse"], "--class-weights none (not inverse)"),
                          (["--label-smoothing", "0.1"], "--label-smoothing 0.0 (not 0.1)"),
                          (["--mixup", "0.2"], "--mixup 0.0 (not 0.2)"),
                          (["--threshold-rule", "kappa-above-majority"], "--threshold-rule kappa (not kappa-above-"),
                          (["--threshold-data", "train+selection"], "it has none to tune")):
        assert main(["train", "--resume", str(run), "--epochs", "3", *change]) == 2
        assert named in capsys.readouterr().err
        tried.add(change[0][2:].replace("-", "_"))
    fixed = {*FIXED_ON_RESUME, *FIXED_WHILE_STEPPING, *FIXED_WHILE_TRAINING} - set(MEANS_NOTHING_WITHOUT)
    assert fixed <= tried, f"options a resume keeps that this test does not try: {fixed - tried}"
    assert main(["train", "--resume", str(run), "--weights-tag", "X", "--model-ema-decay", "0.9"]) == 0
    said = capsys.readouterr()  # no ImageNet weights and no EMA here: a tag and a decay change nothing
    assert "--weights-tag" not in said.err and "--model-ema-decay" not in said.err and "nothing to train" in said.out
    regraded = tmp_path / "regraded"  # the same names, mostly with other grades: other photographs
    shutil.copytree(synth_small, regraded)
    labels = (regraded / "trainLabels.csv").read_text().splitlines()
    (regraded / "trainLabels.csv").write_text("\n".join(
        [labels[0], *(f"{r.split(',')[0]},{(int(r.split(',')[1]) + 1) % 5}" for r in labels[1:])]) + "\n")
    assert main(["train", "--resume", str(run), "--epochs", "3", "--data", str(regraded)]) == 2
    assert f"{len(labels) - 1} of its images have other grades than in the run's" in capsys.readouterr().err
    disc(regraded / "extra_left.jpeg")  # an image the run's split.csv does not list
    with open(regraded / "trainLabels.csv", "a") as f:
        f.write("extra_left,0\n")
    assert main(["train", "--resume", str(run), "--epochs", "3", "--data", str(regraded)]) == 2
    err = capsys.readouterr().err
    assert "image extra_left is not in the split file" in err and "they are not the photographs it trained on" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    corrected = tmp_path / "corrected"  # one grade corrected since: the same photographs, said out loud
    shutil.copytree(synth_small, corrected)
    first = labels[1].split(",")
    (corrected / "trainLabels.csv").write_text("\n".join(
        [labels[0], f"{first[0]},{(int(first[1]) + 1) % 5}", *labels[2:]]) + "\n")
    assert main(["train", "--resume", str(run), "--epochs", "3", "--data", str(corrected), "--quiet"]) == 0
    assert "warning: 1 image(s) have other grades than when the run started" in capsys.readouterr().err
    # what it already used, said out loud, is no change (the decay of an EMA it does not keep either)
    assert main(["train", "--resume", str(run), "--decision", "argmax", "--model-ema-decay", "0.9", "--val-fraction",
                 "0.1", "--quiet"]) == 0
    assert "nothing to train" in capsys.readouterr().out
    # a file a resume does not read, given again (as an experiment run from another folder does): noted, unused
    assert main(["train", "--resume", str(run), "--weights", "w.pt", "--quiet"]) == 0
    assert f"note: --weights {os.path.abspath('w.pt')} is not read on resume" in capsys.readouterr().err
    # a finished argmax run has no thresholds to retune
    assert main(["train", "--resume", str(run), "--threshold-data", "train+selection", "--quiet"]) == 2
    assert "this run grades by the most probable grade (--decision argmax): it has none to tune" in \
        capsys.readouterr().err
    # a finished run with thresholds may be resumed to retune them (docs/eyepacs256.md does), and later extended
    ordinal = tmp_path / "ordinal"
    assert main(["train", "--data", str(synth_small), *FAST, "--image-size", "32", "--epochs", "1",
                 "--freeze-epochs", "0", "--objective", "ordinal", "--out", str(ordinal)]) == 0
    assert main(["train", "--resume", str(ordinal), "--threshold-data", "train+selection", "--threshold-margin",
                 "0.02", "--quiet"]) == 0
    assert load_checkpoint(ordinal / "checkpoints" / "best.pt")["model_info"]["threshold_data"] == "train+val"
    assert main(["train", "--resume", str(ordinal), "--epochs", "2", "--quiet"]) == 0
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(run), "--out", str(tmp_path / "fork")])
    assert "leave out --out" in capsys.readouterr().err
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit):  # a new run into a run's folder would replace it
        main(["train", "--data", str(synth_small), *FAST, "--epochs", "1", "--out", str(run)])
    err = capsys.readouterr().err
    assert f"--out {run} already holds a run (checkpoints/last.pt): continue it with --resume" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    for bad, named in ((["--model", "resnet19"], "'resnet19' is not a torchvision classification model"),
                       (["--model", "fcn_resnet50"], "not a torchvision classification model (it detects, segments"),
                       (["--model", "vit_b_16"], "--image-size 64: vit_b_16 takes 224 px images only"),
                       (["--model", "maxvit_t", "--image-size", "448"], "maxvit_t takes 224 px images only"),
                       (["--model", "vit_b_16", "--image-size", "224", "--space-to-depth", "2"],
                        "(the network sees 112 px after --space-to-depth 2): vit_b_16 takes 224 px images only"),
                       (["--model", "inception_v3"], "--image-size 64: inception_v3 cannot take 64 px inputs "
                                                     "(PyTorch: Calculated padded input size per channel"),
                       (["--model", "alexnet", "--image-size", "96", "--train-crop-size", "48"],
                        "--train-crop-size 48: alexnet cannot take 48 px inputs (PyTorch: Given input size"),
                       (["--objective", "regression", "--label-smoothing", "0.1"], "not to regression")):
        with pytest.raises(SystemExit):
            main(["train", "--data", str(synth_small), *FAST, *bad, "--out", str(tmp_path / "bad")])
        assert named in capsys.readouterr().err
    assert main(["train", "--data", str(synth_small), *FAST, "--epochs", "1", "--freeze-epochs", "0",
                 "--objective", "ordinal", "--weights", str(run / "checkpoints" / "best.pt"),
                 "--out", str(tmp_path / "new")]) == 0
    assert main(["train", "--data", str(synth_small), *FAST, "--epochs", "1", "--freeze-epochs", "0", "--quiet",
                 "--weights", str(run), "--out", str(tmp_path / "from-folder")]) == 0  # a run folder: its best.pt
    origin = load_checkpoint(tmp_path / "from-folder" / "checkpoints" / "best.pt")["model_info"]["weights_origin"]
    assert origin == f"file {run / 'checkpoints' / 'best.pt'}"


def test_weights_from_a_run_with_another_split_warn_of_its_training_images(tiny_run, synth_small, tmp_path,
                                                                           capsys):
    """Fine-tuning a run's weights on a new split of its photographs puts some of its training images into val
    and test: the count is said, kept with the run (config.yaml, model card, also after a resume), and the same
    split is quiet."""
    opts = ["train", "--data", str(synth_small), *FAST, "--image-size", "32", "--epochs", "1", "--freeze-epochs",
            "0", "--weights", str(tiny_run)]
    assert main([*opts, "--split-seed", "1", "--epochs", "2", "--stop-after", "1",
                 "--out", str(tmp_path / "other")]) == 0
    assert main(["train", "--resume", str(tmp_path / "other"), "--quiet"]) == 0
    err = capsys.readouterr().err
    split = {}
    with open(tiny_run / "split.csv", newline="") as f:
        old = {r["image"]: r["split"] for r in csv.DictReader(f)}
    with open(tmp_path / "other" / "split.csv", newline="") as f:
        for r in csv.DictReader(f):
            split.setdefault(r["split"], []).append(old[r["image"]] == "train")
    said = (f"{sum(split['val'])} of the {len(split['val'])} val images and {sum(split['test'])} of the "
            f"{len(split['test'])} test images were training images of the run the --weights come from "
            f"({tiny_run / 'split.csv'})")
    assert sum(split["test"]) > 0 and f"warning: {said}" in err and f"--split-file {tiny_run / 'split.csv'}" in err
    config = yaml.safe_load((tmp_path / "other" / "config.yaml").read_text())
    assert any(said in w for w in config["data"]["leakage_warnings"])
    assert said in (tmp_path / "other" / "checkpoints" / "MODEL_CARD.md").read_text()
    assert main([*opts, "--out", str(tmp_path / "same")]) == 0  # the run's own split: nothing to say
    assert "training images of the run the --weights" not in capsys.readouterr().err


def test_resume_keeps_the_schedule_and_the_saves_consistent(synth_small, tmp_path, capsys, monkeypatch):
    """More epochs on resume: the learning rate is the longer schedule's from the first resumed epoch (not the
    finished schedule's last value); other steps per epoch (another number of processes) are refused; a save
    killed half-way leaves no temporary file for good; Ctrl-C during best.pt's save waits for last.pt too."""
    import signal

    import retinopathy.training.checkpoint as checkpoint_module
    import retinopathy.training.train as train_module

    opts = [*FAST, "--image-size", "32", "--freeze-epochs", "0", "--eval-splits", "val"]
    longer, extended = tmp_path / "longer", tmp_path / "extended"
    assert main(["train", "--data", str(synth_small), *opts, "--epochs", "4", "--stop-after", "3",
                 "--out", str(longer)]) == 0
    assert main(["train", "--data", str(synth_small), *opts, "--epochs", "2", "--out", str(extended)]) == 0
    (extended / "checkpoints" / ".last.pt.tmp99999").write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(extended), "--epochs", "4", "--stop-after", "1"]) == 0
    assert rows(extended)[2]["lr"] == rows(longer)[2]["lr"] != rows(extended)[1]["lr"]
    assert not list((extended / "checkpoints").glob(".*tmp*"))
    last = load_checkpoint(extended / "checkpoints" / "last.pt")
    last["steps_per_epoch"] += 1
    torch.save(last, extended / "checkpoints" / "last.pt")
    split = (extended / "split.csv").read_bytes()
    assert main(["train", "--resume", str(extended), "--epochs", "4"]) == 2
    assert (extended / "split.csv").read_bytes() == split
    steps = last["steps_per_epoch"]
    assert f"took {steps} steps per epoch, this resume would take {steps - 1}" in capsys.readouterr().err

    save = checkpoint_module.save_checkpoint

    def interrupted_save(state, path):
        if Path(path).name == "best.pt":
            signal.raise_signal(signal.SIGINT)
        save(state, path)

    monkeypatch.setattr(train_module, "save_checkpoint", interrupted_save)
    run = tmp_path / "interrupted"
    assert main(["train", "--data", str(synth_small), *opts, "--epochs", "2", "--out", str(run)]) == 130
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 0 == \
        load_checkpoint(run / "checkpoints" / "best.pt")["epoch"]


def test_each_epoch_trains_with_its_class_weights_sampling_and_phase(tmp_path, monkeypatch):
    """What each epoch is given: the loss weights of the training split's counts, the decaying sampler's weights
    for that epoch (not epoch 0's again), only the head's parameters while frozen and every one after."""
    from retinopathy.data.synth import generate
    from retinopathy.models.objectives import class_weights
    from retinopathy.training import train as training

    data = tmp_path / "data"
    generate(data, n=60, size=32, seed=0, workers=1, progress=False)  # EyePACS's mix: the weights differ from 1
    seen, real = [], training.train_one_epoch

    def spy(model, objective, optimizer, loader, *rest, grader, frozen, **kw):
        sampler, names = loader.sampler, {id(p): n for n, p in grader.named_parameters()}
        seen.append({"frozen": frozen, "weights": objective.class_weights, "drawn": sampler.weights.clone(),
                     "due": [torch.as_tensor(sampler.class_weights(e)[sampler.labels]) for e in range(3)],
                     "trainable": {n for n, p in grader.named_parameters() if p.requires_grad},
                     "optimized": {names[id(p)] for g in optimizer.param_groups for p in g["params"]
                                   if p.requires_grad}, "all": set(names.values())})
        return real(model, objective, optimizer, loader, *rest, grader=grader, frozen=frozen, **kw)
    monkeypatch.setattr(training, "train_one_epoch", spy)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--no-pretrained", "--image-size", "32", "--epochs", "3",
                 "--freeze-epochs", "1", "--class-weights", "inverse", "--sampler", "decay", "--workers", "0",
                 "--batch-size", "16", "--eval-splits", "val", "--out", str(run), "--quiet"]) == 0
    counts = yaml.safe_load((run / "config.yaml").read_text())["data"]["train_counts"]
    assert [e["frozen"] for e in seen] == [True, False, False]
    for epoch, e in enumerate(seen):
        assert torch.allclose(e["weights"], class_weights(counts, "inverse")) and e["weights"].std() > 0.1
        assert torch.allclose(e["drawn"], e["due"][epoch].double())
    assert not torch.allclose(seen[0]["drawn"], seen[2]["drawn"])
    head = seen[0]["trainable"]
    assert head and all(n.startswith("net.fc.") for n in head) and seen[1]["trainable"] == seen[1]["all"]
    assert seen[0]["optimized"] == head and seen[1]["optimized"] == seen[1]["all"]


def test_evaluation_losses_are_without_class_weights_or_smoothing(synth_small, tmp_path):
    """metrics.csv's val loss is the plain one, the loss evaluate reports for the same weights."""
    run = tmp_path / "run"
    assert main(["train", "--data", str(synth_small), *FAST, "--image-size", "32", "--epochs", "1",
                 "--freeze-epochs", "0", "--eval-splits", "val", "--amp", "none", "--class-weights", "inverse",
                 "--label-smoothing", "0.2", "--sampler", "balanced", "--out", str(run)]) == 0
    assert main(["evaluate", str(run / "checkpoints" / "last.pt"), "--data", str(synth_small), "--split", "val",
                 "--out", str(tmp_path / "e"), "--quiet", "--bootstrap", "0"]) == 0
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert float(rows(run)[0]["val_loss"]) == pytest.approx(m["loss"], rel=1e-5)


def test_resume_refuses_a_bad_checkpoint(synth_small, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": 1}, "engine": {}}))
    rc = main(["train", "--data", str(synth_small), *FAST, "--epochs", "1", "--resume", str(run)])
    err = capsys.readouterr().err
    assert rc == 2 and "last.pt: cannot be read as a checkpoint" in err
    assert "A broken last.pt cannot be resumed, and the run has no best.pt: start the run again" in err
    (run / "checkpoints" / "best.pt").write_bytes(b"the selected epoch")  # with one: it is a whole run's checkpoint
    assert main(["train", "--data", str(synth_small), *FAST, "--epochs", "1", "--resume", str(run)]) == 2
    best, last = run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt"
    assert f"copy the run's best.pt over it (`cp {best} {last}`) to resume" in capsys.readouterr().err
    from retinopathy.training.checkpoint import CheckpointError, load_checkpoint

    with pytest.raises(CheckpointError, match=f"best.pt: cannot be read as a checkpoint .*Put the run's best.pt "
                                              f"back from a backup, or pass its last.pt .*: {last}"):  # not "pass a
        load_checkpoint(run)  # run's checkpoints/best.pt", as given
    with pytest.raises(SystemExit):  # a mistyped folder is not a new run
        main(["train", "--data", str(synth_small), *FAST, "--resume", str(tmp_path / "rnu")])
    assert "--resume " + str(tmp_path / "rnu") + ": not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a checkpoint, as timm's --resume takes: its run folder is named
        main(["train", "--resume", str(run / "checkpoints" / "last.pt")])
    assert f"last.pt: inside a run; --resume takes the run folder, {run}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(synth_small)])
    assert f"--resume {synth_small}: not a run folder (no config.yaml there)" in capsys.readouterr().err
    (tmp_path / "gone" / "checkpoints").mkdir(parents=True)  # a run whose record was deleted
    (tmp_path / "gone" / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(tmp_path / "gone")])
    assert (f"--resume {tmp_path / 'gone'}: its config.yaml, the run's record of its options and data, is gone "
            f"(deleted?): put it back from a backup, or start a new run from its weights (--weights "
            f"{tmp_path / 'gone' / 'checkpoints' / 'last.pt'} --out NEW)") in capsys.readouterr().err
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "experiment.json").write_text("{}")
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(tmp_path / "exp")])
    assert f"--resume {tmp_path / 'exp'}: an experiment's folder: `retinopathy experiment CONFIG` again continues " \
        "its cells" in capsys.readouterr().err


def test_a_run_stopped_in_its_first_epoch_starts_over_without_a_half_written_save(synth_small, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / ".last.pt.tmp4242").write_bytes(b"half of its first save")
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": 1}, "engine": {}}))
    assert main(["train", "--data", str(synth_small), *FAST, "--image-size", "32", "--epochs", "1",
                 "--freeze-epochs", "0", "--eval-splits", "val", "--resume", str(run), "--quiet"]) == 0
    assert "has no checkpoints/last.pt yet (stopped during its first epoch): starting over" in capsys.readouterr().out
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.suffix == ".pt" or "tmp" in p.name) == \
        ["best.pt", "last.pt"]


def test_evaluate_refuses_a_foreign_checkpoint(synth_small, tmp_path, capsys):
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    rc = main(["evaluate", str(tmp_path / "foreign.pt"), "--data", str(synth_small), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 2 and "not a retinopathy checkpoint" in err
    assert f"can start a training: `retinopathy train --weights {tmp_path / 'foreign.pt'} ...`" in err  # evaluate


def test_a_checkpoint_typed_inside_its_folder_belongs_to_its_run(tmp_path, monkeypatch):
    """`evaluate best.pt` run in RUN/checkpoints took checkpoints/ for the run: no config.yaml or split.csv there
    (the run's own split unused), and its RUN/eval refused as another run's."""
    from retinopathy.training.checkpoint import run_folder

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "best.pt").touch()
    monkeypatch.chdir(tmp_path / "run" / "checkpoints")
    assert {run_folder(p).resolve() for p in ("best.pt", "gone.pt", ".", "../checkpoints/best.pt")} == {
        (tmp_path / "run").resolve()}
    monkeypatch.chdir(tmp_path / "run")
    assert run_folder(".").resolve() == run_folder("checkpoints/best.pt").resolve() == (tmp_path / "run").resolve()
    assert run_folder("checkpoints/best.pt") == Path("")  # relative stays relative (messages show it as typed)


def test_a_run_folder_without_best_pt_says_what_to_pass(tiny_run, synth_small, tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.write_bytes((tiny_run / "checkpoints" / "last.pt").read_bytes())
    rc = main(["evaluate", str(tmp_path / "run"), "--data", str(synth_small), "--out", str(tmp_path / "e")])
    assert rc == 2 and f"a folder without checkpoints/best.pt; pass {last} to use its last epoch" in \
        capsys.readouterr().err


def test_outputs_that_cannot_be_written_and_interrupts_are_clean(tiny_run, synth_small, tmp_path, capsys,
                                                                 monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for argv in (["evaluate", str(tiny_run), "--data", str(synth_small), "--out", str(blocker)],
                 ["predict", str(tiny_run), str(synth_small), "--out", str(blocker / "p.csv")],
                 ["data", "check", str(synth_small), "--json", str(blocker / "d.json")],
                 ["train", "--data", str(synth_small), *FAST, "--out", str(blocker / "run")]):
        assert main(argv) == 2
        assert capsys.readouterr().err.startswith(f"error: {blocker}")  # at once, before any work
    before = sorted(p.name for p in tiny_run.iterdir())
    for given in (tiny_run, tiny_run / "checkpoints" / "best.pt"):  # its skipped.csv, split.csv are training's
        assert main(["evaluate", str(given), "--data", str(synth_small), "--out", str(tiny_run)]) == 2
        assert f"error: --out {tiny_run} is the run's own folder" in capsys.readouterr().err
    assert sorted(p.name for p in tiny_run.iterdir()) == before
    other = tmp_path / "other-run"  # another run's folder: its skipped.csv would be replaced or removed
    shutil.copytree(tiny_run, other)
    assert main(["evaluate", str(tiny_run), "--data", str(synth_small), "--out", str(other)]) == 2
    assert f"error: --out {other} is a run's folder" in capsys.readouterr().err
    (other / "eval").mkdir()  # or its eval/, where the report reads that run's own evaluation
    (other / "eval" / "metrics.json").write_text("{}")
    assert main(["evaluate", str(tiny_run), "--data", str(synth_small), "--out", str(other / "eval")]) == 2
    assert f"error: --out {other / 'eval'} is inside the run in {other}, and {tiny_run} is not that run's: its " \
           f"evaluation there would replace that run's own; write into {tiny_run / 'eval'}" in capsys.readouterr().err
    assert (other / "eval" / "metrics.json").read_text() == "{}"
    shutil.rmtree(other / "eval")
    photos = tmp_path / "photos"  # or a folder of photographs (the data's own, say): its figure would be graded
    photos.mkdir()
    shutil.copy(next(synth_small.glob("*.jpeg")), photos / "a.jpeg")
    for out, said in ((photos, "a folder of photographs (a.jpeg)"), (synth_small, "a folder of photographs (")):
        assert main(["evaluate", str(tiny_run), "--data", str(synth_small), "--out", str(out)]) == 2
        assert f"error: --out {out} is {said}" in capsys.readouterr().err
    assert sorted(p.name for p in photos.iterdir()) == ["a.jpeg"]
    (tmp_path / "d" / "images").mkdir(parents=True)  # the data's folder, its photographs in images/
    assert main(["evaluate", str(tiny_run), "--data", str(tmp_path / "d"), "--out", str(tmp_path / "d")]) == 2
    assert f"error: --out {tmp_path / 'd'} is the data's own folder: write the evaluation into a folder of its " \
        "own" in capsys.readouterr().err
    assert main(["evaluate", str(tiny_run), "--data", str(synth_small), "--out", str(tiny_run / "checkpoints")]) == 2
    assert f"is the checkpoints folder of the run in {tiny_run}: write into a folder of its own, e.g. " \
           f"{tiny_run / 'eval'}" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == before
    assert main(["evaluate", str(tmp_path / "nothere.pt"), "--data", str(synth_small), "--out",
                 str(tmp_path / "new" / "eval")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err and not (tmp_path / "new").exists()  # nothing left
    (tmp_path / "e" / "metrics.json").mkdir(parents=True)  # a folder where a file goes: os.replace's target named
    assert main(["evaluate", str(tiny_run), "--data", str(synth_small), "--out", str(tmp_path / "e"), "--quiet",
                 "--workers", "0", "--bootstrap", "0"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'e' / 'metrics.json'}: Is a directory")
    import retinopathy.training.train as train_module

    def interrupted(args):  # after the first epoch (its last.pt written), or (run0) before it
        if not args.out.endswith("run0"):
            (Path(args.out) / "checkpoints").mkdir(parents=True)
            (Path(args.out) / "checkpoints" / "last.pt").touch()
        raise KeyboardInterrupt
    monkeypatch.setattr(train_module, "main", interrupted)
    assert main(["train", "--data", str(synth_small), *FAST, "--out", str(tmp_path / "run0")]) == 130
    assert f"no epoch of {tmp_path / 'run0'} had finished: run the same command again" in capsys.readouterr().err
    assert main(["train", "--data", str(synth_small), *FAST, "--out", str(tmp_path / "run")]) == 130
    assert f"continue it with `retinopathy train --resume {tmp_path / 'run'}`" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "4")  # as torchrun started it
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert main(["train", "--data", str(synth_small), *FAST, "--out", str(tmp_path / "ddp")]) == 130
    assert (f"`torchrun --nproc_per_node=2 --nnodes=2 -m retinopathy train --resume {tmp_path / 'ddp'}`"
            in capsys.readouterr().err)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("SLURM_PROCID", "0")  # as srun started it, without torchrun
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert main(["train", "--data", str(synth_small), *FAST, "--out", str(tmp_path / "srun")]) == 130
    assert f"`srun --ntasks=4 retinopathy train --resume {tmp_path / 'srun'}`" in capsys.readouterr().err
    monkeypatch.delenv("SLURM_NTASKS")
    assert main(["train", "--data", str(synth_small), *FAST, f"--out={tmp_path / 'run2'}"]) == 130
    assert f"{tmp_path / 'run2'}/checkpoints/last.pt" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text(f"data: {synth_small}\nout: {tmp_path / 'run3'}\n")  # the folder from a file
    assert main(["train", "-c", str(tmp_path / "c.yaml"), *FAST]) == 130
    assert f"`retinopathy train --resume {tmp_path / 'run3'}`" in capsys.readouterr().err

    def before_the_options(argv):  # Ctrl-C while torch is imported: the options not read yet
        raise KeyboardInterrupt
    monkeypatch.setattr(train_module, "parse_args", before_the_options)
    assert main(["train", "--resume", str(tmp_path / "run")]) == 130
    assert f"continue it with `retinopathy train --resume {tmp_path / 'run'}`" in capsys.readouterr().err
    assert main(["train", "--data", str(synth_small), f"--out={tmp_path / 'run4'}"]) == 130
    assert f"no epoch of {tmp_path / 'run4'} had finished: run the same command again" in capsys.readouterr().err


def test_evaluate_refuses_weights_of_another_model(tiny_run, synth_small, tmp_path, capsys):
    ckpt = load_checkpoint(tiny_run / "checkpoints" / "best.pt")
    ckpt["model_info"]["arch"] = "resnet34"
    torch.save(ckpt, tmp_path / "mislabelled.pt")
    rc = main(["evaluate", str(tmp_path / "mislabelled.pt"), "--data", str(synth_small), "--out", str(tmp_path / "e")])
    assert rc == 2 and "do not fit resnet34" in capsys.readouterr().err
    ckpt = load_checkpoint(tiny_run / "checkpoints" / "best.pt")  # weights of 3 outputs, said so, classification
    head = [k for k in ckpt["model"] if k.startswith("net.fc")]
    ckpt["model"].update({k: ckpt["model"][k][:3] for k in head if ckpt["model"][k].shape[0] == 5})
    ckpt["model_info"]["num_outputs"] = 3
    torch.save(ckpt, tmp_path / "three.pt")
    rc = main(["evaluate", str(tmp_path / "three.pt"), "--data", str(synth_small), "--out", str(tmp_path / "e")])
    assert rc == 2 and "three.pt: 3 outputs, where its objective classification has 5" in capsys.readouterr().err


@pytest.mark.parametrize("change,named", [(("preprocessing", None), "incomplete model information ('preprocessing'"),
                                          (("arch", "resnet999"), "'resnet999' is not a torchvision classification"),
                                          (("objective", "poisson"), "unknown objective 'poisson'")])
def test_evaluate_refuses_checkpoints_it_cannot_rebuild(tiny_run, synth_small, tmp_path, capsys, change, named):
    ckpt = load_checkpoint(tiny_run / "checkpoints" / "best.pt")
    key, value = change
    if value is None:
        del ckpt["model_info"][key]
    else:
        ckpt["model_info"][key] = value
    torch.save(ckpt, tmp_path / "odd.pt")
    rc = main(["evaluate", str(tmp_path / "odd.pt"), "--data", str(synth_small), "--out", str(tmp_path / "e")])
    assert rc == 2 and named in capsys.readouterr().err


def test_evaluate_refuses_non_finite_outputs(tiny_run, synth_small, tmp_path, capsys):
    ckpt = load_checkpoint(tiny_run / "checkpoints" / "best.pt")
    ckpt["model"]["net.fc.bias"][0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.pt")
    assert main(["evaluate", str(tmp_path / "nan.pt"), "--data", str(synth_small), "--out", str(tmp_path / "e"),
                 "--workers", "0", "--quiet"]) == 2
    assert "images got non-finite outputs (NaN or inf)" in capsys.readouterr().err
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_a_machines_first_process_builds_the_model_before_its_others(monkeypatch):
    """ImageNet weights were downloaded by every process at once (each with its bar): the first process of each
    machine builds the model (fetching them into the shared cache) while the others wait at a barrier."""
    from retinopathy.training import distributed

    events = []
    monkeypatch.setattr(distributed, "barrier", lambda info: events.append(("barrier", info.local_rank)))
    for local in (0, 1):
        with distributed.local_first(distributed.DistInfo(enabled=True, rank=local, world_size=2, local_rank=local)):
            events.append(("build", local))
    assert events == [("build", 0), ("barrier", 0), ("barrier", 1), ("build", 1)]
    with distributed.local_first(distributed.DistInfo()):  # one process: no barrier
        pass
    assert len(events) == 4


def test_ddp_two_processes_on_cpu(synth_small, tmp_path):
    """torchrun --nproc_per_node=2 (gloo): one frozen and one fine-tuning epoch; same files as one process;
    evaluation inside training sees every test image exactly once, with the model rank 0 saves (fp32, so that
    the two processes' batching cannot move the loss: each process used to keep its own BatchNorm statistics);
    a DDP run cut after its first epoch and resumed under torchrun equals the straight DDP run."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    common = ["train", "--data", str(synth_small), *FAST, "--epochs", "2", "--freeze-epochs", "1", "--amp", "none",
              "--deterministic"]
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path / "tmp")}  # torchrun's folders go with it

    def ddp(*args):
        subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "retinopathy", *args],
                       check=True, env=env, timeout=300)

    ddp(*common, "--out", str(tmp_path / "ddp"))
    ddp(*common, "--out", str(tmp_path / "cut"), "--stop-after", "1")
    ddp("train", "--resume", str(tmp_path / "cut"), "--quiet")
    timing = {"epoch_seconds", "images_per_s"}
    assert [{k: v for k, v in row.items() if k not in timing} for row in rows(tmp_path / "cut")] == \
        [{k: v for k, v in row.items() if k not in timing} for row in rows(tmp_path / "ddp")]
    sa = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["model"]
    sb = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert main([*common, "--out", str(tmp_path / "single")]) == 0
    files = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(tmp_path / "ddp") == files(tmp_path / "single")
    r = rows(tmp_path / "ddp")
    assert [x["phase"] for x in r] == ["frozen", "finetune"]
    assert yaml.safe_load((tmp_path / "ddp" / "config.yaml").read_text())["engine"]["world_size"] == 2
    assert main(["evaluate", str(tmp_path / "ddp" / "checkpoints" / "last.pt"), "--data", str(synth_small),
                 "--split", "test", "--out", str(tmp_path / "eval"), "--quiet", "--bootstrap", "0",
                 "--amp", "none"]) == 0
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert float(r[-1]["test_accuracy"]) == pytest.approx(m["accuracy"], abs=1e-9)
    assert float(r[-1]["test_loss"]) == pytest.approx(m["loss"], rel=1e-5)


def _loss_check(rank: int, port: int, out: str) -> None:
    import torch.distributed as td

    from retinopathy.training.distributed import DistInfo, finite_everywhere

    td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        loss = float("nan") if rank == 1 else 0.7
        Path(out, str(rank)).write_text(str(finite_everywhere([loss], DistInfo(True, rank, 2, 0), "cpu")))
    finally:
        td.destroy_process_group()


def _buffers_check(rank: int, port: int, out: str) -> None:
    import torch.distributed as td

    from retinopathy.training.distributed import DistInfo, broadcast_buffers

    td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        bn = torch.nn.BatchNorm2d(3)
        bn.running_mean.fill_(rank + 1.0)
        bn.num_batches_tracked.fill_(rank + 5)
        broadcast_buffers(bn, DistInfo(True, rank, 2, 0))
        Path(out, str(rank)).write_text(f"{bn.running_mean.tolist()} {bn.num_batches_tracked.item()}")
    finally:
        td.destroy_process_group()


def _epoch_totals_check(rank: int, port: int, out: str) -> None:
    import torch.distributed as td

    from retinopathy.data import Normalize
    from retinopathy.models import make_objective
    from retinopathy.training.distributed import DistInfo
    from retinopathy.training.engine import train_one_epoch

    td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        n = 2 if rank == 0 else 6  # one batch each; rank 0's eyes are grade 0 (answered), rank 1's grade 1
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
        torch.nn.init.zeros_(model[1].weight)
        with torch.no_grad():
            model[1].bias.copy_(torch.tensor([1.0, 0, 0, 0, 0]))
        data = torch.utils.data.TensorDataset(torch.zeros(n, 3, 2, 2, dtype=torch.uint8), torch.full((n,), rank))
        tr = train_one_epoch(model, make_objective("classification"), torch.optim.SGD(model.parameters(), lr=0.0),
                             torch.utils.data.DataLoader(data, batch_size=n), torch.device("cpu"),
                             Normalize((0.5,) * 3, (0.25,) * 3), grader=model, frozen=False, progress=False,
                             dist=DistInfo(True, rank, 2, 0))
        Path(out, str(rank)).write_text(json.dumps([tr["images"], tr["accuracy"], tr["loss"]]))
    finally:
        td.destroy_process_group()


def test_under_ddp_the_training_loss_and_accuracy_are_over_every_process(tmp_path):
    """metrics.csv's train loss and accuracy are means over all processes' images, not rank 0's share."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_epoch_totals_check, args=(port, str(tmp_path)), nprocs=2)
    logp = torch.log_softmax(torch.tensor([1.0, 0, 0, 0, 0]), 0)
    loss = (2 * -logp[0] - 6 * logp[1]).item() / 8
    for r in (0, 1):
        images, accuracy, mean_loss = json.loads((tmp_path / str(r)).read_text())
        assert images == 8 and accuracy == pytest.approx(2 / 8) and mean_loss == pytest.approx(loss, rel=1e-6)


def _sharded_evaluation_check(rank: int, port: int, out: str) -> None:
    import torch.distributed as td

    from retinopathy.data import Normalize
    from retinopathy.models import make_objective
    from retinopathy.training.distributed import DistInfo
    from retinopathy.training.engine import ShardSampler, evaluate

    td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=3)
    try:
        n = 7  # 3/2/2 across three processes: a padding sampler would count two images twice
        images = torch.arange(n * 12, dtype=torch.uint8).reshape(n, 3, 2, 2)
        data = torch.utils.data.TensorDataset(images, torch.tensor([0, 1, 2, 3, 4, 0, 1]))
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
        results = {}
        for name, info, sampler in (("ddp", DistInfo(True, rank, 3, 0), ShardSampler(n, rank, 3)),
                                    ("one", DistInfo(), ShardSampler(n))):
            loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=sampler)
            r = evaluate(model, make_objective("classification"), loader, torch.device("cpu"),
                         Normalize((0.5,) * 3, (0.25,) * 3), dist=info, progress=False)
            results[name] = [r["labels"].tolist(), r["outputs"].tolist(), r["loss"]]
        Path(out, str(rank)).write_text(json.dumps(results))
    finally:
        td.destroy_process_group()


def test_sharded_evaluation_counts_each_image_once_in_dataset_order(tmp_path):
    """Evaluation under three processes, of 7 images (shards of 3, 2 and 2), gives every process what one process
    gives: each image once (no padding duplicates), the outputs back in dataset order beside their labels."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sharded_evaluation_check, args=(port, str(tmp_path)), nprocs=3)
    for r in range(3):
        results = json.loads((tmp_path / str(r)).read_text())
        assert results["ddp"][0] == [0, 1, 2, 3, 4, 0, 1] == results["one"][0]
        assert torch.allclose(torch.tensor(results["ddp"][1]), torch.tensor(results["one"][1]), atol=1e-6)
        assert results["ddp"][2] == pytest.approx(results["one"][2], rel=1e-6)


def _peer_failure_check(rank: int, port: int, out: str) -> None:
    import torch.distributed as td

    from retinopathy.training.distributed import peer_failed

    td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    if rank == 1:  # fails alone (a photograph it could not decode, say), before the collective
        os._exit(0)
    try:
        td.all_reduce(torch.ones(1))
        Path(out).write_text("the collective returned")
    except RuntimeError as e:
        Path(out).write_text(json.dumps([peer_failed(e), peer_failed(RuntimeError("size mismatch"))]))
    os._exit(0)  # not through the broken group's teardown, whose gloo threads can abort the process (SIGABRT)


def test_a_collective_broken_by_another_process_is_told_apart(tmp_path):
    """A process whose collective fails because another process stopped says so in one line (PeerFailed), rather
    than with a traceback of gloo's; any other RuntimeError is still one."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_peer_failure_check, args=(port, str(tmp_path / "out")), nprocs=2)
    assert json.loads((tmp_path / "out").read_text()) == [True, False]


def test_under_torchrun_rank_0_alone_reports_what_every_process_meets(tmp_path, monkeypatch, capsys):
    """Every process on a machine parses the same options and reads the same files: only its first process prints
    the error. An image that one process could not decode is its own: that process prints it, naming its rank."""
    import retinopathy.training.train as train_module
    from retinopathy.data.images import ImageError

    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, shown in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", rank)
        with pytest.raises(SystemExit):
            main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--epochs", "-2"])
        assert ("--epochs: -2 is too small" in capsys.readouterr().err) is shown
        assert main(["train", "-c", str(tmp_path / "missing.yaml")]) == 2
        assert ("missing.yaml" in capsys.readouterr().err) is shown

    def undecodable(args):
        raise ImageError(tmp_path / "1_left.jpeg", "cannot decode")
    monkeypatch.setattr(train_module, "main", undecodable)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--no-pretrained"]) == 2
    assert f"error: rank 1: {tmp_path / '1_left.jpeg'}: cannot decode" in capsys.readouterr().err

    def doubtful(args):
        warnings.warn("a data warning", DataWarning)
    monkeypatch.setattr(train_module, "main", doubtful)
    for rank, shown in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", rank)
        assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--no-pretrained"]) == 0
        assert ("warning: a data warning" in capsys.readouterr().err) is shown
    # another machine's files may differ: its first process says what it met; a launcher without local ranks
    monkeypatch.setenv("WORLD_SIZE", "4")  # (RANK and WORLD_SIZE by hand under srun): every process
    for rank, local, shown in (("2", "0", True), ("3", "1", False), ("3", None, True)):
        monkeypatch.setenv("RANK", rank)
        if local is None:
            monkeypatch.delenv("LOCAL_RANK")
        else:
            monkeypatch.setenv("LOCAL_RANK", local)
        assert main(["train", "-c", str(tmp_path / "missing.yaml")]) == 2
        assert ("missing.yaml" in capsys.readouterr().err) is shown


def test_a_collective_broken_by_this_processs_own_failure_is_not_blamed_on_another(tmp_path, monkeypatch):
    """Only the texts of a lost peer make PeerFailed (one line); another RuntimeError, NCCL's own failures
    included, is raised as it is."""
    import torch.distributed as td

    import retinopathy.training.train as train_module
    from retinopathy.training.distributed import DistInfo, PeerFailed, peer_failed

    assert not peer_failed(td.DistBackendError("NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda error"))
    assert peer_failed(td.DistBackendError("ncclRemoteError: A call failed possibly due to a network error or a "
                                           "remote process exiting prematurely."))
    monkeypatch.setattr(train_module, "init_distributed", lambda *a: DistInfo(True, 1, 2, 1))
    monkeypatch.setattr(train_module, "cleanup", lambda dist: None)
    args = argparse.Namespace(device="cpu", out=str(tmp_path / "run"))
    for error, raised in ((RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:1"), PeerFailed),
                          (RuntimeError("size mismatch"), RuntimeError)):
        def run(*a, error=error):
            raise error
        monkeypatch.setattr(train_module, "_run", run)
        with pytest.raises(raised) as e:
            train_module._train(args)
        assert type(e.value) is raised


def test_a_child_forked_after_the_import_watches_its_own_parent():
    """The launcher is the parent recorded at import; a process forked later (torch.multiprocessing with fork) has
    its own parent, alive, and must not stop at once as if its launcher were gone."""
    import retinopathy.launch as launch

    pid = os.fork()
    if pid == 0:
        os._exit(0 if launch.PARENT == os.getppid() else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


@pytest.mark.parametrize("killed", ["watching", "importing"])
def test_a_rank_stops_when_its_launcher_is_killed(tmp_path, killed):
    """torchrun starts its ranks in sessions of their own: a SIGKILL of the launcher reaches none of them, and they
    trained on unattended, holding the run's lock. A rank now stops, saying why, once its launcher is gone: killed
    while the rank watches, or while the rank was still importing torch (its watch starts after the launcher died)."""
    import signal
    import time

    ready = tmp_path / killed  # the launcher is killed once the rank has written it
    importing, mark = killed == "importing", f"open({str(ready)!r}, 'w')"
    rank = "\n".join(["import os, time", "import retinopathy.launch as launch",  # the package first, as the CLI does
                      mark if importing else "",
                      "while os.getppid() == launch.PARENT: time.sleep(0.05)" if importing else "",  # torch's import
                      "from retinopathy.training.distributed import watch_launcher",  # outlasts the launcher
                      "watch_launcher(0, '/runs/x', interval=0.1)", "" if importing else mark, "time.sleep(60)"])
    launcher = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {rank!r}], "
                f"start_new_session=True, stderr=open({str(tmp_path / 'err')!r}, 'w')); "
                f"open({str(tmp_path / 'pid')!r}, 'w').write(str(p.pid)); time.sleep(60)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", launcher], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "pid").exists() or not (tmp_path / "pid").read_text():
            assert time.monotonic() < deadline, "the launcher never started its rank"
            time.sleep(0.1)
        pid = int((tmp_path / "pid").read_text())
        while not ready.exists():  # its imports done (seconds on a busy machine): it watches, or is importing
            assert time.monotonic() < deadline, f"the rank never got to {killed}"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def alive() -> bool:  # an exited orphan may stay a zombie where nothing reaps it
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 20
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(), "the rank trained on without its launcher"
    err = (tmp_path / "err").read_text()
    assert f"the launcher that started the run's processes (pid {proc.pid}) is gone; stopping" in err
    assert "continue the run from its last saved epoch: retinopathy train --resume /runs/x" in err.lower()


def test_every_process_evaluates_rank_0s_batchnorm_statistics(tmp_path):
    """DDP syncs buffers at the start of a forward pass only: after an epoch each process has its own BatchNorm
    statistics, and evaluation must score the model rank 0 saves."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_buffers_check, args=(port, str(tmp_path)), nprocs=2)
    assert [(tmp_path / str(r)).read_text() for r in (0, 1)] == ["[1.0, 1.0, 1.0] 5"] * 2


def test_skip_bad_records_the_images_of_every_split(synth_small, tmp_path, capsys):
    """What --skip-bad drops is said (train and evaluate: how many, of which kinds, where they are listed) and
    recorded; a resume says where it continues."""
    import shutil

    from retinopathy.data import FundusDataset

    data = tmp_path / "data"
    shutil.copytree(synth_small, data)
    bad = [FundusDataset(data, split, check=False).samples[0].path for split in ("train", "test")]
    for path in bad:
        Path(path).write_bytes(Path(path).read_bytes()[:300])
    with open(data / "trainLabels.csv", "a") as f:
        f.write("77_left,9\n")  # a bad row belongs to no split
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), *FAST, "--image-size", "32", "--epochs", "2", "--freeze-epochs", "0",
                 "--skip-bad", "--stop-after", "1", "--out", str(run)]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["skipped"] == 3
    with open(run / "skipped.csv", newline="") as f:
        skipped = list(csv.DictReader(f))
    assert sorted((r["kind"], r["image"]) for r in skipped) == sorted(
        [("bad-image", Path(p).stem) for p in bad] + [("bad-label", "77_left")])
    assert [r["line"] for r in skipped if r["kind"] == "bad-label"] == ["242"]
    assert set(skipped[0]) == {"kind", "file", "line", "message", "image"} and all(r["message"] for r in skipped)
    assert (f"warning: --skip-bad dropped 3 labelled row(s) or image(s) (bad-image 2, bad-label 1); each is listed "
            f"in {run / 'skipped.csv'}") in capsys.readouterr().err
    assert "3 unusable image(s) were skipped with --skip-bad" in (run / "checkpoints" / "MODEL_CARD.md").read_text()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    out = capsys.readouterr()
    assert f"resuming {run} after its epoch 1 (checkpoints/last.pt)" in out.out and "dropped 3" in out.err
    assert main(["evaluate", str(run), "--data", str(data), "--split", "test", "--skip-bad", "--bootstrap", "50",
                 "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    out = capsys.readouterr()
    assert (f"warning: --skip-bad dropped 2 labelled row(s) or image(s) (bad-label 1, bad-image 1); each is listed in "
            f"{tmp_path / 'eval' / 'skipped.csv'}") in out.err
    assert len((tmp_path / "eval" / "skipped.csv").read_text().splitlines()) == 3
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["skipped"] == 2
    assert main(["evaluate", str(run), "--data", str(synth_small), "--split", "test", "--out", str(tmp_path / "eval"),
                 "--quiet"]) == 0
    assert not (tmp_path / "eval" / "skipped.csv").exists(), "a list of another evaluation's dropped images stays"
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["skipped"] == 0
    assert re.search(r"accuracy [0-9.]+ \[95% CI [0-9.]+, [0-9.]+\] \(majority class [0-9.]+\) \| kappa", out.out)


def test_a_last_training_batch_of_one_image_is_dropped(synth_small, tmp_path):
    """At 32 px ResNet's last feature maps are 1 x 1: BatchNorm cannot train on a batch of one."""
    from retinopathy.data import FundusDataset

    from retinopathy.training.engine import make_loader

    n = len(FundusDataset(synth_small, "train", check=False))
    assert len(make_loader(list(range(1)), 16, 0, torch.device("cpu"), range(1), True, 0, train=True)) == 1
    assert main(["train", "--data", str(synth_small), *FAST, "--image-size", "32", "--batch-size", str(n - 1),
                 "--epochs", "1", "--freeze-epochs", "0", "--out", str(tmp_path / "run")]) == 0


def test_a_non_finite_loss_in_one_process_stops_them_all(tmp_path):
    """Under DDP the process whose loss is NaN must not stop alone (the others would wait in the gradient
    all-reduce until the timeout): every process learns of it and raises at the same step."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_loss_check, args=(port, str(tmp_path)), nprocs=2)
    assert [(tmp_path / str(r)).read_text() for r in (0, 1)] == ["False", "False"]


def test_a_diverged_run_says_what_it_kept_and_resumes(synth_small, tmp_path, monkeypatch, capsys):
    """A non-finite gradient in epoch 2 is a clean error (no traceback) that names the kept epoch and the way on;
    the kept run then continues in fp32 to the end."""
    from retinopathy.training import engine

    run, args = tmp_path / "run", ["train", "--data", str(synth_small), *FAST, "--epochs", "2", "--amp", "bf16"]
    assert main([*args, "--out", str(run), "--stop-after", "1"]) == 0
    monkeypatch.setattr(engine, "gradient_norm", lambda optimizer: torch.tensor(float("nan")))
    assert main([*args, "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "epoch 2/2 [finetune]: non-finite gradient norm nan at image 0; stopped before" in err
    assert f"{run / 'checkpoints' / 'last.pt'} keeps epoch 1, the last finished: continue with --resume {run}" in err
    assert len(rows(run)) == 1 and load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 0
    monkeypatch.undo()
    assert main([*args, "--resume", str(run), "--amp", "none"]) == 0
    assert [r["epoch"] for r in rows(run)] == ["0", "1"]
    assert yaml.safe_load((run / "config.yaml").read_text())["engine"]["amp"] == "none"
    assert main(["train", "--data", str(synth_small), *FAST, "--epochs", "1", "--lr", "1e30",
                 "--out", str(tmp_path / "wild")]) == 2
    assert "No epoch finished; nothing was saved." in capsys.readouterr().err


def test_space_to_depth_and_training_window_must_fit_the_image_size(capsys):
    base = ["--data", "d", "--out", "runs/x", "--image-size", "64"]
    for bad, named in ((["--space-to-depth", "3"], "--space-to-depth 3"), (["--train-crop-size", "96"], "96"),
                       (["--space-to-depth", "2", "--train-crop-size", "33"], "33")):
        with pytest.raises(SystemExit):
            parse_args(base + bad)
        assert named in capsys.readouterr().err
    args = parse_args(base + ["--space-to-depth", "2", "--train-crop-size", "32"])
    assert (args.space_to_depth, args.train_crop_size) == (2, 32)


def test_config_file_can_be_an_experiment_or_a_run_config(tmp_path, capsys):
    """``-c`` takes an experiment file of one run (its train: options and data:) and a run's config.yaml (its
    options, never its run folder), the command line still overriding; anything else gets a clear error."""
    recipe = Path(__file__).parents[1] / "configs"
    args = parse_args(["-c", str(recipe / "eyepacs256.yaml"), "--out", "runs/x", "--epochs", "3"])
    assert (args.objective, args.image_size, args.blend_eyes, args.epochs) == ("ordinal", 128, 0.4, 3)
    assert args.cache_images and not parse_args(["-c", str(recipe / "eyepacs256.yaml"), "--out", "runs/x",
                                                 "--no-cache-images"]).cache_images
    assert args.data == "../shared/data/eyepacs-256"
    assert parse_args(["-c", str(recipe / "eyepacs256.yaml"), "--data", "d", "--out", "x"]).data == "d"
    with pytest.raises(ConfigError, match="describes 2 runs .*retinopathy experiment"):
        parse_args(["-c", str(recipe / "eyepacs256-splits.yaml"), "--out", "runs/x"])

    run = tmp_path / "config.yaml"
    run.write_text(yaml.safe_dump({"train": {"data": "d", "out": "runs/old", "lr": 0.01, "config": None,
                                             "resume": None, "stop_after": None, "skip_bad": True, "quiet": True},
                                   "engine": {"world_size": 1}}))
    args = parse_args(["-c", str(run), "--out", "runs/new"])
    assert (args.lr, args.data, args.out, args.skip_bad, args.quiet) == (0.01, "d", "runs/new", True, True)
    args = parse_args(["-c", str(run), "--out", "runs/new", "--no-skip-bad", "--no-quiet"])
    assert (args.skip_bad, args.quiet) == (False, False)
    with pytest.raises(SystemExit):
        parse_args(["-c", str(run)])
    assert "--out runs/NAME is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["-c", str(run), "--out", "runs/new", "--preset", "lab"])
    assert "--preset cannot change a run's saved options" in capsys.readouterr().err
    assert parse_args(["--resume", str(tmp_path)]).out == str(tmp_path)  # the folder given, not the saved out
    home = Path(os.path.expanduser("~"))  # "~" in a config file or after "=" (the shell leaves both alone)
    (tmp_path / "home.yaml").write_text("data: ~/d\n")
    args = parse_args(["-c", str(tmp_path / "home.yaml"), "--out=~/runs/t"])
    assert (args.data, args.out) == (str(home / "d"), str(home / "runs" / "t"))
    with pytest.raises(SystemExit):  # expanded before the check that it is a run folder
        parse_args(["--resume=~/no-such-run-here"])
    assert f"--resume {home / 'no-such-run-here'}: not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--resume", str(tmp_path), "--preset", "lab"])

    bad = tmp_path / "list.yaml"
    bad.write_text("- lr\n- 0.1\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        parse_args(["-c", str(bad), "--data", "d", "--out", "x"])
    with pytest.raises(ConfigError, match="missing.yaml: not found"):
        parse_args(["-c", str(tmp_path / "missing.yaml"), "--data", "d", "--out", "x"])
    typo = tmp_path / "typo.yaml"
    typo.write_text("optimizer: SGD\n")  # argparse checks choices on the command line only
    with pytest.raises(SystemExit):
        parse_args(["-c", str(typo), "--data", "d", "--out", "x"])
    assert "optimizer: 'SGD' (from " + str(typo) + ") is not one of sgd, adamw" in capsys.readouterr().err
    assert parse_args(["-c", str(typo), "--data", "d", "--out", "x", "--optimizer", "sgd"]).optimizer == "sgd"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is a folder; give a YAML file of options"):  # no run's file to name
        parse_args(["-c", str(tmp_path / "empty"), "--data", "d", "--out", "x"])
    with pytest.raises(ConfigError, match=re.escape(f"is a folder; for the run's options pass {tmp_path}/config")):
        parse_args(["-c", str(tmp_path), "--data", "d", "--out", "x"])
    (tmp_path / "best.pt").write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match="best.pt: not valid YAML"):
        parse_args(["-c", str(tmp_path / "best.pt"), "--data", "d", "--out", "x"])
    (tmp_path / "utf16.yaml").write_text("epochs: 3\n", encoding="utf-16")
    with pytest.raises(ConfigError, match="utf16.yaml: not UTF-8 text .*save it again as UTF-8"):
        parse_args(["-c", str(tmp_path / "utf16.yaml"), "--data", "d", "--out", "x"])
    (tmp_path / "dashes.yaml").write_text("image-size: 96\n")
    assert parse_args(["-c", str(tmp_path / "dashes.yaml"), "--data", "d", "--out", "x"]).image_size == 96
    bad.write_text("lr: [0.1\n")
    with pytest.raises(ConfigError, match=r"(?s)list.yaml: not valid YAML .*in \".*list.yaml\", line 1"):
        parse_args(["-c", str(bad), "--data", "d", "--out", "x"])
    bad.write_text("epochs: 1\n\tlr: 0.1\n")  # PyYAML's words for a tab do not name it
    with pytest.raises(ConfigError, match=r"(?s)list.yaml: not valid YAML .*line 2.*\(a tab there: YAML indents "
                                          r"with spaces only\)"):
        parse_args(["-c", str(bad), "--data", "d", "--out", "x"])
    bad.write_text("epochs: 1\nlr: 0.1\nepochs: 2\n")  # PyYAML keeps the last silently
    with pytest.raises(ConfigError, match=r"(?s)list.yaml: not valid YAML \('epochs' is written twice \(first "
                                          r"on line 1\); keep one.*line 3"):
        parse_args(["-c", str(bad), "--data", "d", "--out", "x"])
    bad.write_text("common: &c {epochs: 3, lr: 0.1}\n<<: *c\nlr: 0.2\n")  # merge keys stay YAML's own
    with pytest.raises(ConfigError, match="unknown option"):  # 'common' is no option, but it was read
        parse_args(["-c", str(bad), "--data", "d", "--out", "x"])
    bad.write_text("? [a, b]\n: 1\n")  # a key that is a list: a YAML error, not a traceback
    with pytest.raises(ConfigError, match="(?s)list.yaml: not valid YAML .*unhashable"):
        parse_args(["-c", str(bad), "--data", "d", "--out", "x"])
    bad.write_text("image_sise: 96\nhelp: true\n")  # misspelt, and not an option (argparse's own -h)
    with pytest.raises(ConfigError, match=r"list.yaml: unknown option\(s\) help, image_sise \(did you mean "
                                          r"image_size\?\); the options are train's"):
        parse_args(["-c", str(bad), "--data", "d", "--out", "x"])
    assert main(["train", "-c", str(bad), "--data", "d", "--out", "x"]) == 2  # a usage error, as a flag's
    assert "error: " + str(bad) in capsys.readouterr().err


def test_a_usage_error_is_two_lines_not_every_option(tmp_path, capsys):
    """train has some 65 options: its usage line names the required ones, so an error is not lost below them."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(SystemExit):
        parse_args(["--data", "d", "--out", str(run)])
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "usage: retinopathy train --data DATA --out runs/NAME [options]  (or -c FILE, --resume RUN)"
    assert len(err) == 2 and err[1].startswith(f"retinopathy train: error: --out {run} already holds a run")


@pytest.mark.parametrize("text, message", [
    ("epochs: 1.5", "epochs: 1.5 (from {f}): '1.5' is not a whole number"),
    ("epochs: 0", "epochs: 0 (from {f}): 0 is too small (at least 1)"),
    ("epochs: true", "epochs: True (from {f}) is not a number; e.g. epochs: 20"),
    ("eval_splits: [val, test]", "eval_splits: ['val', 'test'] (from {f}) is not a single value; write it as on the "
                                 "command line; e.g. eval_splits: val,test"),
    ("eval_splits: vall,test", "eval_splits: 'vall,test' (from {f}): 'vall' is not val or test\n"),
    ("eval_splits: train", "eval_splits: 'train' (from {f}): 'train' is not val or test (training's"),
    ("batch_size: true", "batch_size: True (from {f}) is not a number\n"),
    ("eval_splits: true", "eval_splits: True (from {f}) is not a text value; e.g. eval_splits: val,test"),
    ("blend_eyes: 0.8", "blend_eyes: 0.8 (from {f}): blend weight 0.8 must lie between 0"),
    ("lr:", "lr: no value (from {f}); give one; e.g. lr: 0.001"),
    ("pretrained: 'false'", "pretrained: 'false' (from {f}) is not true or false"),
    ("lr: -0.1", "lr: -0.1 (from {f}): a learning rate above 0"),
    ("epochs: two", "epochs: 'two' (from {f}): 'two' is not a whole number"),  # text: not blamed on --epochs
    ("lr: .nan", "lr: nan (from {f}): not a finite number"),
    ("weight_decay: .inf", "weight_decay: inf (from {f}): not a finite number"),
    ("warmup_epochs: -2", "warmup_epochs: -2.0 (from {f}): 0 or more"),
    ("label_smoothing: 1.5", "label_smoothing: 1.5 (from {f}): from 0 up to, not including, 1"),
    ("freeze_epochs: 4\nepochs: 3", "freeze_epochs: 4 (from {f}): must be between 0 and the epochs (epochs: 3 (from"),
    ("val_fraction: 0.9", "val_fraction: 0.9 (from {f}) and --test-fraction 0.2 (the default): each in [0, 1)"),
    ("image_size: 100\nspace_to_depth: 3", "space_to_depth: 3 (from {f}): needs a block size of 1 or more that "
                                            "divides the image size (image_size: 100 (from {f}))"),
])
def test_config_file_values_are_checked_as_the_command_line_checks_them(tmp_path, capsys, text, message):
    """argparse converts and checks text only; a YAML number, list or bool gets the same checks, named by the file
    and key (not the flag)."""
    f = tmp_path / "c.yaml"
    f.write_text(text + "\n")
    with pytest.raises(SystemExit):
        parse_args(["-c", str(f), "--data", "d", "--out", str(tmp_path / "x")])
    assert message.format(f=f) in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_config_files_data_not_found_says_where_it_was_looked_for(tmp_path, monkeypatch, capsys):
    """A relative data: is read from the folder the command runs in (as timm's and torchvision's scripts read
    theirs), not the config file's; not found, the error says which folder that was."""
    (tmp_path / "cfg").mkdir()
    f = tmp_path / "cfg" / "c.yaml"
    f.write_text("data: eyes\nepochs: 1\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-c", str(f), "--out", "x"]) == 2
    assert (f"eyes: dataset folder not found (a relative path: looked for in the current folder, {tmp_path})"
            in capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


def test_config_file_numbers_are_converted_like_command_line_text(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 3\nlr: 1e-3\nwarmup_epochs: 0\nworkers: 0\nblend_eyes: 0.25\n")
    args = parse_args(["-c", str(f), "--data", "d", "--out", "x"])
    assert (args.epochs, args.lr, args.warmup_epochs, args.workers, args.blend_eyes) == (3, 0.001, 0.0, 0, 0.25)
    assert isinstance(args.lr, float) and isinstance(args.warmup_epochs, float)
    f.write_text("eval_splits: ' val, test'\nchannels_last: null\n")
    assert parse_args(["-c", str(f), "--data", "d", "--out", "x"]).eval_splits == "val,test"
    with pytest.raises(SystemExit):
        parse_args(["--data", "d", "--out", "x", "--image-size", "4"])


def test_a_run_is_evaluated_on_its_data_as_it_read_it(synth_small, tmp_path, capsys):
    """A run trained with --labels FILE and --skip-bad is evaluated on its data with the command the report gives
    (--data, --split, --out alone): its labels file and --skip-bad come from its config.yaml, as --images did."""
    images = tmp_path / "images"
    shutil.copytree(synth_small, images, ignore=shutil.ignore_patterns("*.csv"))
    labels = tmp_path / "elsewhere" / "ext.csv"
    labels.parent.mkdir()
    labels.write_text((synth_small / "trainLabels.csv").read_text() + "gone_left,2\n")  # a row without its image
    run = tmp_path / "run"
    assert main(["train", "--data", str(images), "--labels", str(labels), "--skip-bad", "--no-pretrained",
                 "--image-size", "32", "--epochs", "1", "--freeze-epochs", "0", "--workers", "0", "--out", str(run),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run / "checkpoints" / "best.pt"), "--data", str(images), "--split", "test",
                 "--out", str(tmp_path / "eval"), "--bootstrap", "0", "--quiet"]) == 0
    with open(run / "split.csv", newline="") as f:
        test = [r["image"] for r in csv.DictReader(f) if r["split"] == "test" and r["image"] != "gone_left"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["count"] == len(test)
    capsys.readouterr()
    assert main(["evaluate", str(run / "checkpoints" / "best.pt"), "--data", str(images), "--split", "all",
                 "--out", str(tmp_path / "strict"), "--bootstrap", "0", "--quiet", "--no-skip-bad"]) == 2
    assert "gone_left" in capsys.readouterr().err  # --no-skip-bad is the user's word against the run's


def test_a_split_file_of_other_photographs_is_told(tiny_run, tmp_path, capsys):
    """--split-file of a run on other photographs with the same names (synthetic and EyePACS sets share them): the
    grades it lists mostly differ, which is said; a split of the same photographs is used without a word."""
    from retinopathy.data.synth import generate

    other = tmp_path / "other"
    generate(other, n=40, size=32, seed=9, progress=False)
    argv = ["train", "--no-pretrained", "--image-size", "32", "--epochs", "1", "--freeze-epochs", "0",
            "--workers", "0", "--stop-after", "1", "--split-file", str(tiny_run / "split.csv"), "--quiet"]
    assert main([*argv, "--data", str(other), "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert re.search(rf"warning: \d+ of the 40 images that {re.escape(str(tiny_run / 'split.csv'))} lists have other "
                     r"grades there: it looks like the split of other photographs", err), err
    data = yaml.safe_load((tiny_run / "config.yaml").read_text())["data"]["path"]
    assert main([*argv, "--data", data, "--out", str(tmp_path / "b")]) == 0
    assert "other grades there" not in capsys.readouterr().err
    with open(tiny_run / "split.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for name, label in (("regraded", lambda g: str((int(g) + 1) % 5)), ("ungraded", lambda g: "")):
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:  # every grade other; or no grades at all
            w = csv.DictWriter(f, ["image", "patient", "label", "split"])
            w.writeheader()
            w.writerows({**r, "label": label(r["label"])} for r in rows)
        argv[argv.index("--split-file") + 1] = str(tmp_path / f"{name}.csv")
        assert main([*argv, "--data", data, "--out", str(tmp_path / name)]) == 0
        assert ("other grades there" in capsys.readouterr().err) == (name == "regraded")


def test_a_runs_checkpoint_is_evaluated_on_its_own_split(tmp_path):
    """evaluate / predict take the run's split.csv wherever it lists every image (the training data, a copy);
    on other data they split with the run's seed and fractions (not the defaults; the command line overrides);
    the run's photographs with others added are refused, since a fresh split would leak; names that recur with
    other grades are other photographs."""
    from argparse import Namespace

    from retinopathy.evaluation.evaluate import run_catalog_options

    from .test_formats import make_kaggle

    best = tmp_path / "run" / "checkpoints" / "best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"")
    rows = make_kaggle(tmp_path / "copy", n_patients=10)
    listed = "".join(f"{r.split(',')[0]},{r.split('_')[0]},{r.split(',')[1]},train\n" for r in rows)
    (tmp_path / "run" / "split.csv").write_text("image,patient,label,split\n" + listed)
    make_kaggle(tmp_path / "more", n_patients=11)  # 10_left, 10_right are not in the run's split
    others = make_kaggle(tmp_path / "other", n_patients=13)[20:]  # patients 10-12: none of them are
    (tmp_path / "other" / "trainLabels.csv").write_text("image,level\n" + "\n".join(others) + "\n")
    ckpt = {"config": {"split_seed": 3, "val_fraction": 0.15, "test_fraction": None}}
    args = Namespace(split_file=None, split_seed=None, val_fraction=None, test_fraction=None, split="test")
    copy = run_catalog_options(args, best, ckpt, str(tmp_path / "copy"))
    assert copy["split_file"] == tmp_path / "run" / "split.csv"
    other = run_catalog_options(args, best, ckpt, str(tmp_path / "other"))
    assert "split_file" not in other
    assert (other["seed"], other["val_fraction"], other["test_fraction"]) == (3, 0.15, 0.2)
    with pytest.raises(DataError, match="20 of its images are in the run's split .*, with the same grades, and 2 "):
        run_catalog_options(args, best, ckpt, str(tmp_path / "more"))
    new = "10_left,0\n10_right,1\n"
    corrected = "\n".join(["0_left,4", *rows[1:]]) + "\n"
    (tmp_path / "more" / "trainLabels.csv").write_text("image,level\n" + corrected + new)  # one grade corrected
    with pytest.raises(DataError, match="19 of its images are in the run's split"):
        run_catalog_options(args, best, ckpt, str(tmp_path / "more"))
    regraded = "".join(f"{r.split(',')[0]},{(int(r.split(',')[1]) + 1) % 5}\n" for r in rows)
    (tmp_path / "more" / "trainLabels.csv").write_text("image,level\n" + regraded + new)
    assert "split_file" not in run_catalog_options(args, best, ckpt, str(tmp_path / "more"))  # other photographs
    (tmp_path / "more" / "trainLabels.csv").write_text("image,level\n" + regraded)  # every name listed, yet others
    assert "split_file" not in run_catalog_options(args, best, ckpt, str(tmp_path / "more"))
    (tmp_path / "more" / "trainLabels.csv").write_text("image,level\n" + corrected)  # a grade corrected: the run's
    assert run_catalog_options(args, best, ckpt, str(tmp_path / "more"))["split_file"] == tmp_path / "run" / "split.csv"
    args.split_seed = 5
    assert run_catalog_options(args, best, ckpt, str(tmp_path / "other"))["seed"] == 5
    with pytest.raises(RetinopathyError, match=r"--split-seed 5: .* graded on the run's own split"):
        run_catalog_options(args, best, ckpt, str(tmp_path / "copy"))  # the run's photographs: not split afresh
    args.split_seed, args.test_fraction = 3, 0.2  # the run's own values (its test fraction by default): its split
    assert run_catalog_options(args, best, ckpt, str(tmp_path / "copy"))["split_file"] == tmp_path / "run" / "split.csv"


def _slurm_check(rank: int, port: int, out: str) -> None:
    import torch.distributed as td

    from retinopathy.training.distributed import init_distributed

    os.environ.update(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(key, None)
    info = init_distributed("cpu")
    try:
        x = torch.tensor([rank + 1.0])
        td.all_reduce(x)
        Path(out, str(rank)).write_text(f"{info.enabled} {info.rank} {info.world_size} {info.local_rank} {x.item()}")
    finally:
        td.destroy_process_group()


def test_slurm_tasks_join_one_process_group(tmp_path, monkeypatch):
    """srun without torchrun: SLURM_PROCID/SLURM_NTASKS name rank and world; MASTER_ADDR must be set."""
    import socket

    import torch.multiprocessing as mp

    from retinopathy.training.distributed import init_distributed

    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not init_distributed("cpu").enabled  # one task: a single process
    monkeypatch.setenv("SLURM_NTASKS", "2")
    with pytest.raises(RetinopathyError, match="under SLURM set MASTER_ADDR"):  # a message, not a traceback
        init_distributed("cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_slurm_check, args=(port, str(tmp_path)), nprocs=2)
    assert [(tmp_path / str(r)).read_text() for r in (0, 1)] == ["True 0 2 0 3.0", "True 1 2 1 3.0"]


def test_only_the_first_process_locks_the_run(tmp_path, monkeypatch):
    """Under torchrun or srun every process trains the run, and only rank 0 holds its folder's lock: with
    SLURM_PROCID alone (no RANK), every task took it for rank 0, and the others stopped as if a second command."""
    import argparse

    import retinopathy.training.train as train_module
    from retinopathy.outputs import exclusive

    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(train_module, "_train", lambda args: "trained")
    args = argparse.Namespace(out=str(tmp_path / "run"), resume=None)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    with exclusive(tmp_path / "run", "trained"):  # held by the task of rank 0
        monkeypatch.setenv("SLURM_PROCID", "1")
        assert train_module.main(args) == "trained"
        monkeypatch.setenv("SLURM_PROCID", "0")
        with pytest.raises(RetinopathyError, match="is being trained by another process"):
            train_module.main(args)


@pytest.mark.slow
def test_compiled_training_saves_a_plain_model(synth_small, tmp_path):
    """--compile (torch.compile: about a minute of compiling on a CPU) trains, and its checkpoint holds the plain
    model's keys (no ``_orig_mod.``), which evaluate rebuilds."""
    run = tmp_path / "compiled"
    assert main(["train", "--data", str(synth_small), *FAST, "--epochs", "1", "--freeze-epochs", "0",
                 "--compile", "--out", str(run)]) == 0
    state = load_checkpoint(run / "checkpoints" / "best.pt")["model"]
    assert not any(k.startswith("_orig_mod") for k in state) and "net.fc.weight" in state
    assert main(["evaluate", str(run), "--data", str(synth_small), "--split", "test", "--out", str(tmp_path / "e"),
                 "--workers", "0", "--bootstrap", "0", "--quiet"]) == 0


def test_each_process_draws_its_own_augmentation():
    """Under DDP every process augments its share of the images with a stream of its own (one stream repeated the
    same flips and rotations in every process); one process keeps the stream it always had."""
    from retinopathy.training.train import epoch_seed

    assert epoch_seed(3, 5, 0) == 3 * 100003 + 5
    assert len({epoch_seed(s, e, r) for s in range(3) for e in range(100) for r in range(8)}) == 3 * 100 * 8


def test_resume_reads_the_resolved_data_path(tiny_run, tmp_path, monkeypatch):
    """A run started with a relative --data resumes from any folder: config.yaml's resolved data.path is used."""
    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    cfg["train"]["data"] = "relative/synth"  # as typed in another working directory
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    assert parse_args(["--resume", str(tmp_path)]).data == cfg["data"]["path"]
    assert parse_args(["-c", str(tmp_path / "config.yaml"), "--out", "new"]).data == cfg["data"]["path"]
    cfg["train"]["data"] = str(tmp_path / "link")  # an absolute path stays as typed (a link may move with the data)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert parse_args(["--resume", str(tmp_path)]).data == str(tmp_path / "link")


def test_a_run_with_relative_file_options_resumes_from_any_folder(synth_small, tmp_path, monkeypatch):
    """--labels (and --images, --split-file, --weights) typed relative to where the run started are saved absolute
    in config.yaml, as data.path is: the run resumes, and -c its config.yaml starts a run, from another folder."""
    monkeypatch.chdir(synth_small.parent)
    run = tmp_path / "run"
    assert main(["train", "--data", synth_small.name, "--labels", f"{synth_small.name}/trainLabels.csv", *FAST,
                 "--image-size", "32", "--epochs", "2", "--freeze-epochs", "0", "--stop-after", "1",
                 "--out", str(run)]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    saved, found = config["train"], config["data"]
    assert saved["labels"] == str(synth_small / "trainLabels.csv") and saved["data"] == synth_small.name
    assert found["labels"] == [str(synth_small / "trainLabels.csv")] and found["images"] == str(synth_small)
    assert found["path"] == str(synth_small) and found["split_file"] == str(run / "split.csv")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", str(run)]) == 0
    assert [r["epoch"] for r in rows(run)] == ["0", "1"]
    assert parse_args(["-c", str(run / "config.yaml"), "--out", "new"]).labels == str(synth_small / "trainLabels.csv")


def test_a_run_whose_data_moved_says_how_to_resume(synth_small, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth_small, data)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), *FAST, "--image-size", "32", "--epochs", "2", "--freeze-epochs", "0",
                 "--stop-after", "1", "--out", str(run)]) == 0
    data.rename(tmp_path / "moved")
    assert main(["train", "--resume", str(run)]) == 2
    assert "If the data moved, resume with --data NEW_FOLDER" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--data", str(tmp_path / "moved")]) == 0


def test_resume_keeps_the_loader_workers_the_run_had(tiny_run, tmp_path):
    """Each loader worker draws its own augmentations, so a resume with another worker count (the default: one per
    core of the machine) would not continue the same run; the run's count is kept unless -j is given, and so does
    a new run from its config.yaml."""
    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    cfg["train"]["workers"], cfg["engine"]["workers"] = None, 3  # the default, on a 3-core machine
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert parse_args(["--resume", str(tmp_path)]).workers == 3
    assert parse_args(["--resume", str(tmp_path), "-j", "1"]).workers == 1
    assert parse_args(["-c", str(tmp_path / "config.yaml"), "--out", "new"]).workers == 3  # its rerun: the same


def test_a_resume_with_a_config_file_keeps_the_runs_other_options(tiny_run, tmp_path):
    """-c FILE with --resume changes what the file gives; the rest is the run's, not train's defaults (which the
    resume then refused as changes the user never made)."""
    (tmp_path / "t.yaml").write_text("eval_amp: none\n")
    args = parse_args(["--resume", str(tiny_run), "-c", str(tmp_path / "t.yaml")])
    assert (args.eval_amp, args.image_size, args.pretrained, args.workers, args.batch_size) == \
        ("none", 64, False, 0, 16)
    assert parse_args(["--resume", str(tiny_run), "-c", str(tmp_path / "t.yaml"), "-j", "2"]).workers == 2


def test_a_resume_refused_for_what_a_config_file_gives_names_the_file(tiny_run, tmp_path, capsys):
    """The refusal listed --lr as a change the user never typed: it came from the -c file, which it now names."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (tmp_path / "t.yaml").write_text("lr: 0.5\n")
    assert main(["train", "--resume", str(run), "-c", str(tmp_path / "t.yaml"), "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "--lr" in err and f"Resume without them (the options of -c {tmp_path / 't.yaml'} are given too)" in err


def test_a_preset_an_empty_config_path_or_split_fractions_out_of_range_are_refused(tiny_run, tmp_path, capsys):
    """``preset:`` in a -c file cannot change a resumed run, as --preset cannot (the run recorded a preset it never
    trained with); ``-c ""`` (an unset shell variable) is no file; split fractions out of range stop the parse,
    so that an experiment refuses such a cell before its first cell trains."""
    (tmp_path / "p.yaml").write_text("preset: lab\n")
    for argv, message in ((["--resume", str(tiny_run), "-c", str(tmp_path / "p.yaml")],
                           f"--preset (preset: in {tmp_path / 'p.yaml'}) cannot change a run's saved options"),
                          (["-c", "", "--data", "d", "--out", "o"], "-c/--config: an empty path"),
                          (["--data", "d", "--out", "o", "--val-fraction", "2"],
                           "--val-fraction 2.0 and --test-fraction 0.2 (the default): each in [0, 1)"),
                          (["--data", "d", "--out", "o", "--val-fraction", "0.5", "--test-fraction", "0.5"],
                           "together less than 1")):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert message in capsys.readouterr().err, argv
    assert parse_args(["-c", str(tmp_path / "p.yaml"), "--data", "d", "--out", "o"]).preset == "lab"  # a new run
    run = tmp_path / "lab-run"  # an experiment's cell resumed: its cell.yaml names the preset the run recorded
    shutil.copytree(tiny_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["preset"] = "lab"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    args = parse_args(["-c", str(tmp_path / "p.yaml"), "--data", "d", "--out", str(run), "--resume", str(run)],
                      run_options=False)
    assert args.preset == "lab"


def test_a_finished_run_resumed_with_options_it_no_longer_uses_keeps_its_record(synth_small, tmp_path, capsys):
    """A finished run learns no more: --lr or --seed given to its threshold retune are told to change nothing, and
    config.yaml keeps what it trained with (it recorded them, and a later resume refused the run's own values); a
    run stopped early and given fewer --epochs than planned is told how to go on."""
    run = tmp_path / "run"
    assert main(["train", "--data", str(synth_small), *FAST, "--image-size", "32", "--epochs", "3", "--freeze-epochs",
                 "0", "--objective", "ordinal", "--stop-after", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "1", "--quiet"]) == 0
    assert capsys.readouterr().out == (f"nothing to train: {run} has trained 1 epoch, of the 3 it was started with: "
                                       "resume it without --epochs to train them\n")
    assert main(["train", "--resume", str(run), "--epochs", "1", "--threshold-data", "train+selection", "--lr", "0.5",
                 "--seed", "7", "--quiet"]) == 0
    assert ("note: the run has trained its 1 epoch, so --lr 0.5, --seed 7 change nothing now; its record keeps "
            "--lr 0.001, --seed 0") in capsys.readouterr().err
    train = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert (train["lr"], train["seed"], train["epochs"], train["threshold_data"]) == (0.001, 0, 1, "train+selection")
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0  # its own values: no refusal


def test_a_finished_run_given_fewer_epochs_than_it_froze_trains_nothing(synth_small, tmp_path, capsys):
    """docs/training.md: to a finished run a lower --epochs changes nothing, and a note says so (it was refused as
    ending inside the frozen phase, which only a run that trains on could)."""
    run = tmp_path / "run"
    assert main(["train", "--data", str(synth_small), *FAST, "--image-size", "32", "--epochs", "2",
                 "--freeze-epochs", "2", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "1", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"nothing to train: {run} has trained 2 epochs")


@pytest.mark.parametrize("text, error", [
    ("resume: runs/x\n", "resume: is not an option a file can give; pass --resume on the command line"),
    ("image_size: 64\nimage-size: 32\n", "image_size is written twice (as image_size and image-size); keep one"),
])
def test_a_config_file_cannot_give_what_only_the_command_line_may(tmp_path, text, error):
    (tmp_path / "c.yaml").write_text("data: d\n" + text)
    with pytest.raises(ConfigError, match=re.escape(error)):
        parse_args(["-c", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("argv, text, error", [
    ([], "preset: [lab]\n", "preset: ['lab'] (from"),
    (["--split-seed", "-1"], "", "--split-seed: -1 is too small (at least 0)"),
    ([], "split_seed: -1\n", "split_seed: -1 (from"),
    (["--seed", str(10**14)], "", f"--seed: {10**14} is too large (at most 92230942445158)"),  # overflowed mid-run
    ([], f"seed: {10**20}\n", f"seed: {10**20} (from"),
    (["--seed", str(3 * 10**9), "--epochs", "0"], "", "--epochs: 0 is too small"),  # a seed past 32 bits is fine
])
def test_values_train_cannot_use_are_usage_errors(tmp_path, capsys, argv, text, error):
    """They were tracebacks (TypeError: unhashable list; numpy's 'expected non-negative integer')."""
    (tmp_path / "c.yaml").write_text("data: d\n" + text)
    with pytest.raises(SystemExit) as e:
        main(["train", "-c", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o"), *argv])
    assert e.value.code == 2 and error in capsys.readouterr().err


@pytest.mark.parametrize("name, content, reason", [
    ("hello.pt", b"hello\n", "not a PyTorch file"),
    ("abc.pt", b"abc", "not a PyTorch file"),
    ("readme.pt", b"garbage text that is long enough", "not a PyTorch file"),
    ("empty.pt", b"", "truncated, empty or not a PyTorch file"),
    ("cut.pt", b"PK\x03\x04 not a whole zip", "truncated, empty or not a PyTorch file"),
    ("lfs.pt", b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n", "run `git lfs pull`"),
    ("config.yaml", b"train:\n  lr: 0.1\n", "a .yaml file, not a PyTorch checkpoint"),
])
def test_a_file_that_is_not_a_checkpoint_gets_a_reason_not_a_traceback(tmp_path, name, content, reason):
    from retinopathy.training.checkpoint import CheckpointError

    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(f"{path}: cannot be read as a checkpoint (") and reason in str(e.value)
    assert "weights_only` set to `False" not in str(e.value)  # torch's advice to load unsafely


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_an_exported_model_given_for_a_checkpoint_or_weights_is_named_as_one(tmp_path):
    import warnings

    from retinopathy.models.weights import WeightsError, load_pretrained_state
    from retinopathy.training.checkpoint import CheckpointError

    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "grader.ts.pt")
    (tmp_path / "grader.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")
    linear = torch.nn.Linear(2, 2)
    torch.export.save(torch.export.export(linear, (torch.zeros(1, 2),)), tmp_path / "grader.pt2")
    shutil.copy(tmp_path / "grader.pt2", tmp_path / "renamed.pt")  # any name: the archive says what it is
    for name, kind in (("grader.ts.pt", "a TorchScript model"), ("grader.onnx", "an ONNX model"),
                       ("grader.pt2", "a torch.export program"), ("renamed.pt", "a torch.export program")):
        path = tmp_path / name
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch.load's "looks like a TorchScript archive" warning
            with pytest.raises(CheckpointError) as e:
                load_checkpoint(path)
            assert str(e.value) == (f"{path}: {kind} (`retinopathy export` writes these), not a checkpoint: pass "
                                    "the run's checkpoints/best.pt")
            with pytest.raises(WeightsError, match=f"weights file {re.escape(str(path))} is {kind} "):
                load_pretrained_state("resnet18", file=str(path))


def test_a_pickled_object_is_refused_by_the_safe_load(tmp_path):
    import argparse

    from retinopathy.training.checkpoint import CheckpointError

    torch.save({"model": argparse.Namespace(x=1)}, tmp_path / "obj.pt")
    with pytest.raises(CheckpointError, match="Python objects that a safe load"):
        load_checkpoint(tmp_path / "obj.pt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_that_is_not_there_is_a_clear_error(tiny_run, synth_small, tmp_path, capsys):
    assert main(["evaluate", str(tiny_run), "--data", str(synth_small), "--device", "cuda", "--bootstrap", "0",
                 "--out", str(tmp_path / "e"), "--quiet"]) == 2
    assert "--device cuda: no such device here (torch finds no CUDA device); use --device auto or cpu" \
        in capsys.readouterr().err


def test_a_split_that_rounds_to_nothing_is_named(tmp_path, capsys):
    """Two patients per grade: 10 % of them rounds to none, so there is nothing to select on; the error says so."""
    from retinopathy.data.synth import generate

    generate(tmp_path / "d", n=20, size=32, seed=0, balanced=True, progress=False)
    assert main(["train", "--data", str(tmp_path / "d"), *FAST, "--epochs", "1", "--test-fraction", "0",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no image is in the val or the test split, which --select-on auto selects on (each grade's" in err
    assert "0 problem(s)" not in err
    split = tmp_path / "split.csv"  # a split file of training rows only: the fractions are not why
    split.write_text("image,split\n" + "".join(f"{p.stem},train\n" for p in (tmp_path / "d").glob("*.jpeg")))
    assert main(["train", "--data", str(tmp_path / "d"), *FAST, "--epochs", "1", "--split-file", str(split),
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"selects on ({split} puts none there)" in err and "Give some of the split file's rows that split" in err
    assert "--val-fraction" not in err


def test_a_kill_between_the_two_saves_is_mended_on_resume(synth_small, tmp_path, monkeypatch, capsys):
    """last.pt is saved before best.pt: killed between them, best.pt is never of an epoch the resume trains again
    (nor alone, which left a run that could neither resume nor start over); the resume writes best.pt from last.pt."""
    import retinopathy.training.train as train_module
    from retinopathy.training.checkpoint import load_checkpoint

    saved = []
    real_save = train_module.save_checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint", lambda state, path: (saved.append(Path(path).name),
                                                                               real_save(state, path)))
    run = tmp_path / "run"
    assert main(["train", "--data", str(synth_small), *FAST, "--image-size", "32", "--epochs", "1",
                 "--freeze-epochs", "0", "--out", str(run)]) == 0
    assert saved == ["last.pt", "best.pt"]  # the first epoch is always the best so far
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    (run / "checkpoints" / "best.pt").unlink()  # as if killed after last.pt
    (run / "checkpoints" / "MODEL_CARD.md").unlink()
    assert main(["train", "--resume", str(run)]) == 0
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == last["epoch"] == 0 and best["save_id"] != last["save_id"]
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    assert (run / "checkpoints" / "MODEL_CARD.md").exists()
    (run / "checkpoints" / "best.pt").write_bytes(b"")  # emptied since (a full disk): last.pt holds the same state
    assert main(["train", "--resume", str(run)]) == 0
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == 0
    # A best.pt of an earlier selected epoch cannot be written again from last.pt: refused before any training.
    real_save({**{k: v for k, v in last.items() if k not in ("format", "version", "save_id")}, "epoch": 1},
              run / "checkpoints" / "last.pt")  # as if a second epoch had been saved, not better than the first
    (run / "checkpoints" / "best.pt").write_bytes(b"cut")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 2
    assert (f"{run / 'checkpoints' / 'best.pt'} cannot be read, and the run selected its epoch 1, whose weights only "
            "best.pt held (last.pt holds epoch 2)") in capsys.readouterr().err
    assert (run / "checkpoints" / "best.pt").read_bytes() == b"cut"


def test_ctrl_c_during_a_save_still_prints_the_saved_epochs_line(synth_small, tmp_path, monkeypatch, capsys):
    """Ctrl-C waits for the epoch's saves; the epoch's line is printed before it stops the run (it was lost)."""
    import signal

    import retinopathy.training.train as train_module

    real_save = train_module.save_checkpoint

    def save_then_ctrl_c(state, path):
        real_save(state, path)
        if Path(path).name == "last.pt":
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(train_module, "save_checkpoint", save_then_ctrl_c)
    run = tmp_path / "run"
    assert main(["train", "--data", str(synth_small), *FAST, "--image-size", "32", "--epochs", "2",
                 "--freeze-epochs", "0", "--out", str(run)]) == 130
    assert "epoch 1/2 [finetune] train loss" in capsys.readouterr().out


def test_selecting_on_test_for_want_of_val_images_is_warned_about(tmp_path, capsys):
    """Forty photographs give no grade enough patients for a val share: the default selection falls back to test,
    which the run now says in a warning, not only in its start line."""
    from retinopathy.data.synth import generate

    generate(tmp_path / "data", n=40, size=48, seed=0, balanced=True, progress=False)
    assert main(["train", "--data", str(tmp_path / "data"), *FAST, "--image-size", "32", "--epochs", "1",
                 "--freeze-epochs", "0", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "warning: no image is in the val split (each grade's patients are split by --val-fraction" in err
    assert "selected (and any thresholds tuned) on test, and the test numbers are optimistic" in err
    assert main(["train", "--data", str(tmp_path / "data"), *FAST, "--test-fraction", "0",
                 "--out", str(tmp_path / "none")]) == 2  # no test split either: the error alone says so
    err = capsys.readouterr().err
    assert "no image is in the val or the test split" in err and "warning" not in err
    one = ["--data", str(tmp_path / "data"), *FAST, "--image-size", "32", "--epochs", "1", "--freeze-epochs", "0"]
    assert main(["train", *one, "--val-fraction", "0", "--out", str(tmp_path / "typed")]) == 0  # none, as typed:
    assert "warning: --val-fraction 0 leaves no val split, so the checkpoint is selected (and any thresholds tuned) " \
           "on test, and the test numbers are optimistic; pass --val-fraction 0.1" in capsys.readouterr().err
    config = yaml.safe_load((tmp_path / "typed" / "config.yaml").read_text())  # not the lab's recipe
    assert config["selection"]["note"] == "selected on the test split (no validation split; optimistic)"
    assert main(["train", "--preset", "lab", *one, "--out", str(tmp_path / "lab")]) == 0  # the lab's: on purpose
    assert "warning" not in capsys.readouterr().err
    config = yaml.safe_load((tmp_path / "lab" / "config.yaml").read_text())
    assert config["selection"]["note"] == "selected on the test split (reproduces the lab; optimistic)"
    assert main(["train", *one, "--val-fraction", "0.3", "--select-on", "test", "--out", str(tmp_path / "chosen")]) == 0
    config = yaml.safe_load((tmp_path / "chosen" / "config.yaml").read_text())  # a val split there, not chosen
    assert config["data"]["eval_counts"]["val"] and "warning" not in capsys.readouterr().err
    assert config["selection"]["note"] == "selected on the test split (--select-on test; optimistic)"


def test_a_run_being_trained_is_not_trained_by_a_second_command(synth_small, tmp_path, capsys):
    """Two trainings in one folder, or a resume of a run still training, mixed their metrics.csv rows and
    checkpoints, both exiting 0. The folder is locked while a run trains; a run that fails first leaves no folder."""
    from retinopathy.outputs import exclusive

    run = tmp_path / "run"
    args = ["train", "--data", str(synth_small), *FAST, "--image-size", "32", "--epochs", "1", "--out", str(run)]
    with exclusive(run, "trained"):  # as another process training it holds it
        assert main(args) == 2
        assert f"error: {run} is being trained by another process right now; wait for it" in capsys.readouterr().err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
        (run / "checkpoints").mkdir()  # after its first epoch: not "continue it with --resume", which would fail
        (run / "checkpoints" / "last.pt").touch()
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2 and f"error: --out {run} is being trained by another process right now; give " \
            "another --out to start a new run" in capsys.readouterr().err
        shutil.rmtree(run / "checkpoints")
    assert not run.exists()
    assert main(["train", "--data", str(tmp_path / "nowhere"), *FAST, "--out", str(run)]) == 2
    assert not run.exists()


def test_config_names_the_files_given_not_where_their_links_lead(synth_small, tmp_path):
    link = tmp_path / "grades.csv"
    link.symlink_to(synth_small / "trainLabels.csv")
    run = tmp_path / "run"
    assert main(["train", "--data", str(synth_small), "--labels", str(link), *FAST, "--image-size", "32",
                 "--epochs", "1", "--freeze-epochs", "0", "--out", str(run)]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["labels"] == [str(link)]


def test_a_resume_without_the_runs_split_says_to_restore_it(synth_small, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(synth_small), *FAST, "--image-size", "32", "--epochs", "2",
                 "--freeze-epochs", "0", "--stop-after", "1", "--out", str(run)]) == 0
    (run / "split.csv").unlink()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'split.csv'}" in err and "restore it (a new split would train on some of them)" in err
    assert "drop --split-file" not in err
    (run / "split.csv").write_text("nonsense\n1_left\n")  # damaged: evaluating cannot tell its training images
    assert main(["evaluate", str(run), "--data", str(synth_small), "--split", "all", "--out", str(tmp_path / "ev"),
                 "--bootstrap", "0", "--workers", "0", "--quiet"]) == 0
    assert f"warning: the run's {run / 'split.csv'} cannot be used (" in capsys.readouterr().err


def test_data_warnings_are_printed_once_as_warnings(tiny_run, tmp_path, capsys):
    """The lab split's patients on both sides come from each split's dataset: the CLI prints each once, as its
    other warnings (`warning: ...`), not as a Python UserWarning with a source line; evaluating another run on
    that data, they are not its leakage and are not printed; evaluating the run itself, they are."""
    from .test_formats import disc

    data = tmp_path / "lab"
    for p in range(20):
        for eye in ("left", "right"):
            disc(data / f"{p}_{eye}.jpeg")
    for split, eye in (("train", "left"), ("test", "right")):
        (data / f"{split}_img.csv").write_text("".join(f"{p}_{eye}\n" for p in range(20)))
        (data / f"{split}_label.csv").write_text("".join(f"{p % 5}\n" for p in range(20)))
    for run in ("run", "again"):  # a second command in the same process (a notebook, these tests) says them again
        assert main(["train", "--data", str(data), *FAST, "--image-size", "32", "--epochs", "1", "--freeze-epochs",
                     "0", "--val-fraction", "0.25", "--out", str(tmp_path / run)]) == 0
        err = capsys.readouterr().err
        assert err.count("warning: 15 of 20 test patients also have an eye in train (patient leakage") == 1
        assert err.count("warning: 5 of 20 test patients also have an eye in val") == 1 and "UserWarning" not in err
    (data / "prepare_manifest.json").write_text('{"complete": true, "size": 32, "crop": "none"}')  # as if prepared
    assert main(["evaluate", str(tiny_run), "--data", str(data), "--split", "test", "--out", str(tmp_path / "e"),
                 "--workers", "0", "--bootstrap", "0", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "leakage" not in err  # the data's other warnings are still shown
    assert err.count(f"warning: {data} was prepared at 32 px and is read at 64 px: the copy is upscaled") == 1
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(data), "--split", "test", "--out",
                 str(tmp_path / "own"), "--workers", "0", "--bootstrap", "0", "--quiet"]) == 0
    err = capsys.readouterr().err  # the run's own split: its leakage is this model's, and said
    assert err.count("warning: 15 of 20 test patients also have an eye in train (patient leakage") == 1


@pytest.mark.parametrize("argv, shown", [(["train"], ["(default: 20)", "default: 0.001", "default: adamw",
                                                     "loaded by evaluate/predict/export (default: off)",
                                                     "torchvision weights file name (default: on)"]),
                                         (["synth"], ["(default: 1000)", "default: kaggle"]),
                                         (["evaluate"], ["(default: 1000)", "(default test;",
                                                         "--device DEVICE auto (cuda, then mps, then cpu), cpu, "
                                                         "cuda, cuda:1, mps (default: auto)"])])
def test_help_gives_every_option_default(argv, shown, capsys):
    """Defaults in --help, as timm's and torchvision's reference scripts show them."""
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert e.value.code == 0 and all(s in out for s in shown), out


def test_sigterm_stops_training_as_ctrl_c_does(synth_small, tmp_path):
    """``docker stop``, SLURM and ``timeout`` send SIGTERM to the whole process group: the run stops with the
    resume hint and no traceback (the loader workers had died of it, and PyTorch reported them as killed), and
    resumes to the end."""
    import signal
    import time

    run = tmp_path / "run"
    argv = ["train", "--data", str(synth_small), *FAST, "--image-size", "32", "--epochs", "3", "--freeze-epochs", "1",
            "--workers", "2", "--out", str(run)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "retinopathy", *argv], stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)  # into the second epoch: its loader workers are busy
    os.killpg(proc.pid, signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and "Traceback" not in err and "killed by signal" not in err, err
    assert f"continue it with `retinopathy train --resume {run}`" in err
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert [int(r["epoch"]) for r in rows(run)] == [0, 1, 2]


@pytest.mark.parametrize("full, hint", [
    ("last.pt", "the run keeps its last finished epoch in {last}: continue it with `retinopathy train --resume {run}`"),
    ("metrics.csv", "no epoch of {run} had finished: run the same command again")], ids=["last.pt", "metrics.csv"])
def test_a_full_disk_stops_training_with_the_file_named_and_the_run_resumable(synth_small, tmp_path, capsys,
                                                                              monkeypatch, full_disk, full, hint):
    """A disk that fills while a checkpoint or the metrics are written (the project's CI once ran out of space)
    stops training with the file and the cause named, not the zip writer's "unexpected pos" or a traceback: the
    checkpoint saved before is kept and the run goes on to the end."""
    full_disk(full, nth=2)  # the second epoch's last.pt; the first epoch's row (after the header)
    run = tmp_path / "run"
    argv = ["train", "--data", str(synth_small), *FAST, "--image-size", "32", "--epochs", "2", "--freeze-epochs", "1",
            "--out", str(run)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    last = run / "checkpoints" / "last.pt"
    assert f"error: {run / full if full != 'last.pt' else last}: cannot be written (No space left on device); " \
           + hint.format(last=last, run=run) in err, err
    assert [p.name for p in (run / "checkpoints").glob(".*")] == []
    assert load_checkpoint(last)["epoch"] == 0 if full == "last.pt" else not last.exists()
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet"] if full == "last.pt" else argv) == 0
    assert [int(r["epoch"]) for r in rows(run)] == [0, 1]


def test_a_model_card_a_full_disk_stopped_is_written_on_resume(synth_small, tmp_path, full_disk, monkeypatch):
    """The card is written after best.pt: a resume of a run whose last save was a new best writes it when it did
    not follow best.pt (the hint to resume had left the run without a card: nothing was left to train)."""
    run = tmp_path / "run"
    full_disk("MODEL_CARD.md")
    assert main(["train", "--data", str(synth_small), *FAST, "--image-size", "32", "--epochs", "1",
                 "--freeze-epochs", "1", "--out", str(run)]) == 2
    card = run / "checkpoints" / "MODEL_CARD.md"
    assert not card.exists()
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert card.exists() and "epoch 1 of 1" in card.read_text()


def test_version_and_command_list_answer_without_importing_torch():
    """``retinopathy --version`` and ``--help`` (and a mistyped command) import no command: torch takes seconds."""
    code = ("import sys\nfrom retinopathy.cli.main import main\n"
            "for argv in (['--version'], ['--help'], ['trian']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        print('exit', e.code)\n"
            "print('torch imported:', 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert run.stdout.count("exit 0") == 2 and "exit 2" in run.stdout, run.stdout + run.stderr
    assert f"retinopathy {__version__}" in run.stdout and "evaluate a checkpoint" in run.stdout
    assert "invalid choice: 'trian'" in run.stderr and "torch imported: False" in run.stdout


def test_evaluate_and_predict_find_the_images_where_the_run_did(synth_small, tmp_path, capsys):
    """A run given --images (labels in one folder, photographs in another, as the lab's CSVs are kept): evaluate
    and predict of its data look there too, without --images again."""
    import shutil

    labels = tmp_path / "labels"
    labels.mkdir()
    shutil.copy(synth_small / "trainLabels.csv", labels)
    run = tmp_path / "run"
    assert main(["train", "--data", str(labels), "--images", str(synth_small), *FAST, "--image-size", "32",
                 "--epochs", "1", "--freeze-epochs", "0", "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--data", str(labels), "--bootstrap", "0", "--out", str(tmp_path / "e"),
                 "--quiet"]) == 0
    test_images = sum(r.split(",")[3] == "test" for r in (run / "split.csv").read_text().splitlines()[1:])
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["count"] == test_images > 0
    assert main(["predict", str(run), str(labels), "--split", "test", "--out", str(tmp_path / "p.csv"),
                 "--quiet"]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == test_images + 1
    assert main(["predict", str(run), str(labels / "trainLabels.csv"), "--out", str(tmp_path / "all.csv"),
                 "--quiet"]) == 0  # --split all, the default: every image (none was found)
    with open(tmp_path / "all.csv", newline="") as f:
        assert [r["error"] for r in csv.DictReader(f)] == [""] * (len((run / "split.csv").read_text().splitlines()) - 1)
    elsewhere = tmp_path / "elsewhere"  # other data: the run's folder is not assumed
    shutil.copytree(labels, elsewhere)
    assert main(["evaluate", str(run), "--data", str(elsewhere), "--bootstrap", "0", "--out", str(tmp_path / "e2"),
                 "--quiet"]) == 2
    assert "not found" in capsys.readouterr().err


def test_a_last_pt_from_another_run_is_named_as_such(tiny_run, synth_small, tmp_path, capsys):
    """A run's record and its last.pt that disagree on what the model is: the checkpoint was copied from another
    run, and the refusal says so (it blamed options the user had not given)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["objective"] = "regression"  # what the run's own last.pt would have said
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = (run / "checkpoints" / "last.pt").read_bytes()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (f"{run / 'checkpoints' / 'last.pt'} is not this run's checkpoint: it trained with --objective "
            "classification (the run's config.yaml: regression); put the run's own last.pt back") in err
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    config["train"]["objective"] = "classification"
    config["train"]["seed"] = 12345  # a sibling run's last.pt (another seed): it said "the run trained with --seed
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # 0 (not 12345)", never typed
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert (f"{run / 'checkpoints' / 'last.pt'} is not this run's checkpoint: it trained with --seed 0 (the run's "
            "config.yaml: 12345)") in capsys.readouterr().err
    card = (run / "checkpoints" / "MODEL_CARD.md").read_text()  # nor is its best.pt: evaluate graded it (and
    for argv in (["evaluate", str(run), "--data", str(synth_small), "--out", str(tmp_path / "e")],  # wrote the
                 ["predict", str(run / "checkpoints" / "best.pt"), str(synth_small), "--out", str(tmp_path / "p.csv")],
                 ["export", str(run), "--out", str(tmp_path / "m.onnx")]):  # run's model card of it)
        assert main([*argv, "--quiet"] if argv[0] != "export" else argv) == 2
        assert (f"{run / 'checkpoints' / 'best.pt'} is not the checkpoint of the run in {run}: it trained with --seed "
                "0 (the run's config.yaml: 12345); put the run's own best.pt back") in capsys.readouterr().err
    assert (run / "checkpoints" / "MODEL_CARD.md").read_text() == card and not (tmp_path / "e").exists()
    config["earlier"] = [{"epochs": 2}]  # a run resumed by a version that recorded the options a resume was given
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # (--lr 0.5 to retune, say): its own
    assert main(["predict", str(run), str(synth_small), "--out", str(tmp_path / "p.csv"), "--quiet"]) == 0
    config["train"]["objective"] = "regression"  # what shapes the model is compared still
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["predict", str(run), str(synth_small), "--out", str(tmp_path / "p.csv"), "--quiet"]) == 2
    assert "it trained with --objective classification (the run's config.yaml: regression)" in capsys.readouterr().err
    config["train"]["objective"] = "classification"
    del config["earlier"]
    config["train"]["seed"] = 0  # a decay recorded for a run without EMA, as a resume that
    config["train"]["model_ema_decay"] = 0.5  # gave --model-ema-decay records it: the run's own, resumed
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "nothing to train" in capsys.readouterr().out


def test_a_run_in_a_read_only_folder_is_resumed_from_a_copy(tiny_run, monkeypatch, capsys):
    """--resume of a run on a read-only disk said "choose another" folder; the run's own cannot be chosen again."""
    import tempfile

    def refused(*args, **kwargs):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    assert main(["train", "--resume", str(tiny_run), "--epochs", "3", "--quiet"]) == 2
    assert (f"cannot write files in this folder (Read-only file system); copy the run where you can write (cp -r "
            f"{tiny_run} NEW) and resume the copy") in capsys.readouterr().err


def test_a_data_worker_killed_by_the_system_is_named_with_what_to_do(synth_small, tmp_path, capsys, monkeypatch):
    """A DataLoader worker killed (as the out-of-memory killer does) ended the run with PyTorch's 30-line traceback;
    it is now one error line saying what likely happened, what to change, and how to continue."""
    import signal

    from torch.utils.data import get_worker_info

    from retinopathy.data import FundusDataset

    item = FundusDataset.__getitem__

    def killed_in_a_worker(self, i):
        if get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return item(self, i)

    monkeypatch.setattr(FundusDataset, "__getitem__", killed_in_a_worker)
    args = ["train", "--data", str(synth_small), *FAST, "--workers", "1", "--epochs", "1", "--freeze-epochs", "0",
            "--out", str(tmp_path / "run")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert re.search(r"^error: DataLoader worker \(pid(\(s\))? \d+\) (is killed by signal: Killed|exited "
                     r"unexpectedly): the system stops a process this way when memory runs out; use fewer --workers",
                     err, re.M), err
    assert "Traceback" not in err and f"no epoch of {tmp_path / 'run'} had finished: run the same command again" in err
    from retinopathy.training.train import worker_stopped

    said = {m: worker_stopped(f"DataLoader worker (pid 7) {m}. More") for m in (
        "is killed by signal: Bus error", "is killed by signal: Segmentation fault", "exited unexpectedly with exit "
        "code 1")}
    assert "out of shared memory" in said["is killed by signal: Bus error"]
    assert [v.endswith("a worker crashed; run with --workers 0 to see where") for v in said.values()] == [
        False, True, True]  # a crash: not memory's advice
    assert worker_stopped("CUDA out of memory") == ""


def test_a_new_run_is_refused_a_folder_that_holds_others_work(tiny_run, synth_small, tmp_path, capsys):
    """train --out into a folder of runs, an experiment or a dataset wrote its files among them, and report then
    read the folder as that one run, hiding the others."""
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run, runs / "old")
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "experiment.json").write_text("{}")
    for out, said in ((runs, "holds runs (old)"), (tmp_path / "exp", "is an experiment's folder"),
                      (synth_small, "holds a dataset (")):
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(SystemExit):
            main(["train", "--data", str(synth_small), *FAST, "--epochs", "1", "--out", str(out)])
        assert f"--out {out} {said}" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == before


def test_options_a_run_would_not_use_are_warned_of(synth_small, tmp_path, capsys):
    """--threshold-rule with argmax decisions, --model-ema-decay without --model-ema, --momentum with AdamW were
    taken without a word, as if they mattered."""
    common = ["--data", str(synth_small), "--out", str(tmp_path / "run")]
    parse_args([*common, "--threshold-rule", "kappa-above-majority", "--model-ema-decay", "0.9", "--momentum", "0.5"])
    assert capsys.readouterr().err == (
        "warning: set, but this run does not use it: --threshold-rule kappa-above-majority (the most probable grade "
        "is answered: no thresholds); --model-ema-decay 0.9 (without --model-ema); --momentum 0.5 (--optimizer "
        "adamw)\n")
    parse_args([*common, "--objective", "ordinal", "--threshold-rule", "kappa-above-majority", "--model-ema",
                "--model-ema-decay", "0.9", "--optimizer", "sgd", "--momentum", "0.5"])
    assert "warning" not in capsys.readouterr().err

