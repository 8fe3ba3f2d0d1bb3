"""Presets end to end: ``--preset lab``'s recipe; ``--preprocess graham`` recorded in the checkpoint and applied by
``predict`` and ``evaluate``; ``evaluate`` adding its numbers to the model card; what a tiny run's options reach."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from retinopathy.cli.main import main
from retinopathy.data import Normalize, Preprocessing, build_transform, open_image
from retinopathy.evaluation.metrics import GRADES
from retinopathy.models.restore import restore
from retinopathy.training import train as train_module
from retinopathy.training.config import parse_args

PROBS = [f"prob_{g}" for g in GRADES]
SIZE, LR, SMOOTHING = 32, 0.003, 0.1


def read_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -------------------------------------------------------------------------------------------- --preset lab
def test_lab_preset_is_the_course_labs_recipe(tmp_path):
    base = ["--data", str(tmp_path), "--out", str(tmp_path / "run")]
    a = parse_args(["--preset", "lab", *base])
    assert a.preset == "lab"
    assert a.optimizer == "sgd" and a.momentum == 0.9 and a.weight_decay == 5e-4 and a.lr == 1e-3
    assert a.scheduler == "none" and a.warmup_epochs == 0
    assert a.objective == "classification" and a.label_smoothing == 0.0 and a.class_weights == "none"
    assert a.epochs == 20 and a.freeze_epochs == 5
    assert a.model == "resnet18" and a.batch_size == 12
    assert a.image_size == 512 and a.head == "lab" and a.preprocess == "lab" and a.augment == "flips"
    assert a.sampler == "random" and a.val_fraction == 0.0
    assert a.select_on == "test" and a.select_metric == "accuracy"
    assert parse_args(["--preset", "lab", "--model", "resnet50", *base]).batch_size == 6
    assert parse_args(["--preset", "lab", "--model", "resnet34", *base]).batch_size == 12


def test_without_the_preset_the_defaults_differ(tmp_path):
    a = parse_args(["--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert (a.optimizer, a.weight_decay, a.scheduler, a.batch_size, a.head, a.augment, a.select_on,
            a.select_metric, a.freeze_epochs, a.val_fraction) == ("adamw", 0.01, "cosine", 32, "linear", "fundus",
                                                                  "auto", "kappa", 1, None)
    assert parse_args(["--model", "resnet50", "--data", str(tmp_path), "--out", str(tmp_path / "r")]).batch_size == 32


def test_lab_preset_from_a_config_file_and_overridden_on_the_command_line(tmp_path):
    cfg = tmp_path / "lab.yaml"
    cfg.write_text("preset: lab\nmodel: resnet50\n")
    a = parse_args(["-c", str(cfg), "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert (a.preset, a.optimizer, a.weight_decay, a.select_on, a.batch_size, a.epochs) == \
        ("lab", "sgd", 5e-4, "test", 6, 20)
    a = parse_args(["--preset", "lab", "--epochs", "8", "--batch-size", "4", "--lr", "0.01", "--select-on", "val",
                    "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert (a.epochs, a.batch_size, a.lr, a.select_on, a.optimizer, a.freeze_epochs) == (8, 4, 0.01, "val", "sgd", 5)


# ------------------------------------------------------------------------------ a tiny run with --preprocess graham
@pytest.fixture(scope="module")
def graham_run(tmp_path_factory):
    """ResNet18 from scratch, 1 epoch at 32 px on 40 synthetic images, graham preprocessing, constant lr, label
    smoothing: (data folder, run folder, the label smoothing the training objective was built with)."""
    from retinopathy.data.synth import generate

    data = tmp_path_factory.mktemp("graham_data")
    generate(data, n=40, size=64, seed=3, balanced=True, progress=False)
    run = tmp_path_factory.mktemp("graham_runs") / "graham"
    made = []
    make_objective = train_module.make_objective

    def recording(name, **kwargs):
        objective = make_objective(name, **kwargs)
        made.append(objective.label_smoothing)
        return objective

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "make_objective", recording)
        assert main(["train", "--data", str(data), "--model", "resnet18", "--no-pretrained", "--epochs", "1",
                     "--freeze-epochs", "0", "--image-size", str(SIZE), "--batch-size", "8", "--workers", "0",
                     "--preprocess", "graham", "--augment", "none", "--scheduler", "none", "--lr", str(LR),
                     "--label-smoothing", str(SMOOTHING), "--amp", "none", "--out", str(run), "--quiet"]) == 0
    return data, run, made


def by_hand(model, objective, prep: Preprocessing, paths) -> dict:
    """Grade probabilities of the photographs, computed with ``prep``'s transform and the model itself."""
    transform = build_transform(prep, train=False, uint8=True)
    x = Normalize(prep.mean, prep.std)(torch.stack([transform(open_image(p, prep.size)) for p in paths]))
    with torch.no_grad():
        probs = objective.probabilities(model(x)).numpy()
    return {p.stem: row for p, row in zip(paths, probs)}


def test_graham_is_recorded_in_the_checkpoint(graham_run):
    _, run, _ = graham_run
    for name in ("best.pt", "last.pt"):
        _, _, prep, ckpt = restore(run / "checkpoints" / name)
        assert (prep.preset, prep.size, prep.mean, prep.std) == ("graham", SIZE, (0.5,) * 3, (0.1,) * 3)
        assert ckpt["model_info"]["preprocessing"]["preset"] == "graham"
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["preprocess"] == "graham"


@pytest.fixture(scope="module")
def hand_probs(graham_run):
    """Every image's probabilities by hand: with the checkpoint's graham preprocessing, and with ``lab`` instead."""
    data, run, _ = graham_run
    model, objective, prep, _ = restore(run / "checkpoints" / "best.pt")
    assert prep.preset == "graham"
    lab = Preprocessing("lab", prep.size)
    paths = sorted(data.glob("*.jpeg"))
    assert len(paths) == 40
    return by_hand(model, objective, prep, paths), by_hand(model, objective, lab, paths)


def assert_graham_not_lab(probs: dict, hand_probs):
    graham, lab = hand_probs
    assert sorted(probs) == sorted(graham)
    assert max(np.abs(probs[k] - graham[k]).max() for k in probs) <= 2e-5
    assert max(np.abs(probs[k] - lab[k]).max() for k in probs) > 0.05  # the lab transform gives others


def test_predict_applies_the_checkpoints_graham_preprocessing(graham_run, hand_probs, tmp_path):
    data, run, _ = graham_run
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(run / "checkpoints" / "best.pt"), str(data), "--out", str(out), "--workers", "0",
                 "--amp", "none", "--quiet"]) == 0
    rows = read_rows(out)
    assert all(r["error"] == "" for r in rows)
    assert_graham_not_lab({r["image"]: np.array([float(r[c]) for c in PROBS]) for r in rows}, hand_probs)


def test_evaluate_applies_the_checkpoints_graham_preprocessing(graham_run, hand_probs, tmp_path):
    data, run, _ = graham_run
    best = run / "checkpoints" / "best.pt"
    copy = tmp_path / "run" / "checkpoints"  # evaluate updates the card beside the checkpoint: leave the run alone
    copy.mkdir(parents=True)
    shutil.copy(best, copy / "best.pt")
    shutil.copy(run / "split.csv", copy.parent / "split.csv")
    assert main(["evaluate", str(copy / "best.pt"), "--data", str(data), "--split", "all", "--out",
                 str(tmp_path / "eval"), "--workers", "0", "--bootstrap", "0", "--amp", "none", "--quiet"]) == 0
    rows = read_rows(tmp_path / "eval" / "predictions.csv")
    assert_graham_not_lab({r["image"]: np.array([float(r[c]) for c in PROBS]) for r in rows}, hand_probs)


def test_evaluate_adds_its_test_metrics_to_the_model_card(graham_run, tmp_path):
    data, run, _ = graham_run
    copy = tmp_path / "run"
    (copy / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "metrics.csv", "split.csv"):
        shutil.copy(run / name, copy / name)
    shutil.copy(run / "checkpoints" / "best.pt", copy / "checkpoints" / "best.pt")
    shutil.copy(run / "checkpoints" / "MODEL_CARD.md", copy / "checkpoints" / "MODEL_CARD.md")
    card_path = copy / "checkpoints" / "MODEL_CARD.md"
    before = card_path.read_text().split("### Evaluations")[1]
    assert "None yet" in before and "| test |" not in before
    out = tmp_path / "eval-test"
    assert main(["evaluate", str(copy / "checkpoints" / "best.pt"), "--data", str(data), "--split", "test", "--out",
                 str(out), "--workers", "0", "--bootstrap", "20", "--amp", "none", "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    split_rows = [r for r in read_rows(copy / "split.csv") if r["split"] == "test"]
    assert m["split"] == "test" and m["count"] == len(split_rows) > 0
    evaluations = card_path.read_text().split("### Evaluations")[1].split("## Intended use")[0]
    assert "None yet" not in evaluations
    rows = [line for line in evaluations.splitlines() if line.startswith("| test |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == f"`{data.name}`" and cells[2].startswith("best.pt (epoch ")
    assert cells[3] == str(m["count"])
    lo, hi = m["ci95"]["accuracy"]
    assert cells[4] == f"{m['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]" and cells[5] == f"{m['majority_accuracy']:.3f}"
    kappa_ci = f" [{m['ci95']['kappa'][0]:.3f}, {m['ci95']['kappa'][1]:.3f}]" if m["ci95"]["kappa"] else ""
    assert cells[6] == f"{m['kappa']:.3f}{kappa_ci}" and cells[7] == f"{m['macro_f1']:.3f}"
    store = json.loads((copy / "checkpoints" / "model_card.json").read_text())
    (record,) = store["evaluations"].values()
    assert record["split"] == "test" and record["count"] == m["count"] and record["accuracy"] == m["accuracy"]
    assert record["eval_dir"] == str(out.resolve())


def test_the_run_trained_with_its_label_smoothing_and_a_constant_rate(graham_run):
    _, run, made = graham_run
    assert made == [SMOOTHING]  # the training objective was built with --label-smoothing
    rows = read_rows(run / "metrics.csv")
    assert [float(r["lr"]) for r in rows] == [LR]  # --scheduler none: no warm-up (cosine starts lower) ...
    last = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert last["scheduler"] is None  # ... and no decay (cosine: 0 after the phase's last step)
    assert [g["lr"] for g in last["optimizer"]["param_groups"]] == [LR] * len(last["optimizer"]["param_groups"])


def test_balanced_sampling_with_class_weights_is_told(tmp_path, capsys):
    """Both correct for the rare grades; together they correct twice."""
    parse_args(["--data", str(tmp_path), "--out", str(tmp_path / "r"), "--sampler", "balanced"])
    assert "warning" not in capsys.readouterr().err
    parse_args(["--data", str(tmp_path), "--out", str(tmp_path / "r"), "--sampler", "balanced",
                "--class-weights", "inverse"])
    assert "--class-weights inverse weights the rare grades up a second time" in capsys.readouterr().err



def test_normalize_takes_uint8_images_and_batches_of_any_rank():
    """One image (C x H x W), a batch (N x C x H x W) and eye pairs (N x 2 x C x H x W): torchvision's Normalize of
    the image scaled to 0-1, the shape kept; float input passes through."""
    from torchvision.transforms import v2

    mean, std = (0.4, 0.3, 0.2), (0.25, 0.2, 0.15)
    reference = v2.Normalize(mean, std)
    for shape in ((3, 8, 8), (4, 3, 8, 8), (4, 2, 3, 8, 8)):
        x = torch.randint(0, 256, shape, dtype=torch.uint8)
        y = Normalize(mean, std)(x)
        assert y.shape == shape and torch.allclose(y, reference(x.float() / 255), atol=1e-5)
    x = torch.rand(2, 3, 8, 8)
    assert Normalize(mean, std)(x) is x
