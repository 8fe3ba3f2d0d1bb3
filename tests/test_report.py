"""``retinopathy report``: the numbers on the page are the runs' numbers, the figures are real images, and the
page renders offline in a real browser (headless Chromium)."""
from __future__ import annotations

import csv
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image
from sklearn.metrics import confusion_matrix

from retinopathy.cli.main import main
from retinopathy.reporting import figures
from retinopathy.reporting.runs import collect, load_experiment
from retinopathy.training.checkpoint import load_checkpoint, save_checkpoint

CELLS = ("resnet18-pretrained", "resnet18-scratch")
CURVE_PX = (figures.CURVE_SIZE[0] * figures.DPI, figures.CURVE_SIZE[1] * figures.DPI)
LONG_LABEL = "from scratch, blend eyes 0.{i}, objective ordinal, preprocess graham, augment fundus, seed {i}"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Two cells through ``retinopathy experiment`` (pretrained from a fake ImageNet file, and from scratch),
    one epoch each at 64 px on 60 synthetic images, with the report built at the end."""
    import torch
    import torchvision

    from retinopathy.data.synth import generate

    root = tmp_path_factory.mktemp("report")
    generate(root / "data", n=60, size=64, seed=5, balanced=True, progress=False)
    hub = root / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save({k: v for k, v in torchvision.models.resnet18().state_dict().items()  # as published: no
                if not k.endswith("num_batches_tracked")}, hub / "resnet18-f37072fd.pth")  # num_batches_tracked
    cfg = {"name": "tiny", "out": str(root / "runs"), "data": str(root / "data"),
           "train": {"epochs": 1, "freeze_epochs": 0, "image_size": 64, "batch_size": 16, "workers": 0,
                     "check_weights_hash": False},
           "grid": {"model": ["resnet18"], "pretrained": [True, False]},
           "evaluate": {"bootstrap": 20}, "report": {"out": str(root / "report")}}
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root / "torch"))
        assert main(["experiment", str(root / "tiny.yaml"), "--quiet"]) == 0
    return root


@pytest.fixture
def closed_figures(monkeypatch):
    """The matplotlib figures the code under test saves, kept to inspect their artists."""
    save, figs = figures.save_figure, []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path, **kw: (figs.append(fig), save(fig, path, **kw)))
    return figs


def confusion_size_px(rows: int, cols: int) -> tuple[int, int]:
    """The pixel size of a figure of rows x cols confusion matrices."""
    return round(figures.CONFUSION_CELL[0] * cols * figures.DPI), round(figures.CONFUSION_CELL[1] * rows * figures.DPI)


def cell_texts(ax) -> dict:
    """{(true grade, predicted grade): text} of a confusion-matrix axes."""
    return {(round(y), round(x)): t.get_text() for t in ax.texts for x, y in [t.get_position()]}


def run_numbers(run: Path) -> dict:
    """What the run's own files say: eval/metrics.json and metrics.csv."""
    m = json.loads((run / "eval" / "metrics.json").read_text())
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    top = max(rows, key=lambda r: float(r["test_accuracy"]))
    return {"test_accuracy": m["accuracy"], "kappa": m["kappa"], "macro_f1": m["macro_f1"],
            "majority_accuracy": m["majority_accuracy"], "referable_auc": m["referable_auc"],
            "selected_epoch": m["epoch"] + 1,
            "test_count": len((run / "eval" / "predictions.csv").read_text().splitlines()) - 1,  # a row per image
            "max_test_accuracy": float(top["test_accuracy"]), "max_test_epoch": int(top["epoch"]) + 1}


def md_table(md: str, heading: str) -> list[dict]:
    lines = md.split(heading, 1)[1].strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def test_table_values_are_the_runs_numbers(experiment):
    md = (experiment / "report" / "report.md").read_text()
    rows = {r["Run"]: r for r in md_table(md, "### All runs")}
    assert set(rows) == set(CELLS)
    for cell in CELLS:
        want, row = run_numbers(experiment / "runs" / "tiny" / cell), rows[cell]
        assert row["Status"] == "done"
        for col, key in [("Test accuracy", "test_accuracy"), ("Kappa", "kappa"), ("Macro-F1", "macro_f1"),
                         ("Majority accuracy", "majority_accuracy"), ("Referable AUC", "referable_auc")]:
            assert float(row[col]) == pytest.approx(want[key], abs=5e-5), (cell, col)
        assert int(row["Selected epoch"]) == want["selected_epoch"]
        assert int(row["Test images"]) == want["test_count"]
        value, epoch = re.fullmatch(r"([\d.]+) \((\d+)\)", row["Highest test accuracy (epoch)"]).groups()
        assert float(value) == pytest.approx(want["max_test_accuracy"], abs=5e-5)
        assert int(epoch) == want["max_test_epoch"]
        ci = json.loads((experiment / "runs" / "tiny" / cell / "eval" / "metrics.json").read_text())["ci95"]
        assert f"kappa {want['kappa']:.3f} (95% CI {ci['kappa'][0]:.3f} to {ci['kappa'][1]:.3f})" in md
        assert f"test accuracy {want['test_accuracy']:.3f} (95% CI {ci['accuracy'][0]:.3f} to " in md
        assert f"{ci['accuracy'][1]:.3f}), {want['test_count']} images<br>kappa {want['kappa']:.3f}" in md
    assert "ImageNet-pretrained" in md and "from scratch" in md
    assert "adamw lr 0.001 weight decay 0.01" in md  # AdamW has no momentum to show



def test_html_is_self_contained_with_every_figure(experiment):
    out = experiment / "report"
    page = (out / "index.html").read_text()
    assert "<script" not in page and not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    names = ["accuracy-resnet18.png", "loss-resnet18.png", "confusion.png"]
    assert page.count('src="data:image/png;base64,') == len(names)
    md = (out / "report.md").read_text()
    for name in names:
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.format == "PNG", name
            if name == "confusion.png":
                assert im.size == confusion_size_px(1, 2)
            else:  # the curves' width, and their height with the legend below
                assert abs(im.width - CURVE_PX[0]) < 0.05 * CURVE_PX[0] and im.height > CURVE_PX[1], name
            assert np.asarray(im.convert("L")).std() > 10, f"{name} looks blank"
        assert f"]({name})" in md


def test_report_of_a_single_run_dir(experiment, tmp_path, closed_figures):
    run = experiment / "runs" / "tiny" / "resnet18-scratch"
    assert main(["report", str(run), "--out", str(tmp_path / "one")]) == 0
    rows = md_table((tmp_path / "one" / "report.md").read_text(), "### All runs")
    assert [r["Run"] for r in rows] == ["resnet18-scratch"]
    (tmp_path / "alias").symlink_to(run)
    assert main(["report", str(run), str(tmp_path / "alias"), "--out", str(tmp_path / "twice")]) == 0
    rows = md_table((tmp_path / "twice" / "report.md").read_text(), "### All runs")
    assert [r["Run"] for r in rows] == ["resnet18-scratch"]  # the same run given twice is one row
    assert float(rows[0]["Test accuracy"]) == pytest.approx(run_numbers(run)["test_accuracy"], abs=5e-5)
    with Image.open(tmp_path / "one" / "confusion.png") as im:
        assert im.size == confusion_size_px(1, 1)
    moved = tmp_path / "moved"  # trained with a relative --data: the resolved path still marks synthetic data
    shutil.copytree(run, moved)
    config = yaml.safe_load((moved / "config.yaml").read_text())
    config["train"]["data"] = "data"
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["report", str(moved), "--out", str(tmp_path / "two")]) == 0
    assert "The data are synthetic drawings" in (tmp_path / "two" / "report.md").read_text()
    # an evaluation on other data, or with another --blend-eyes, says so where its numbers are shown
    ev = json.loads((moved / "eval" / "metrics.json").read_text())
    ev.update(data=str(tmp_path / "elsewhere"), blend_eyes=0.5)
    (moved / "eval" / "metrics.json").write_text(json.dumps(ev))
    assert main(["report", str(moved), "--out", str(tmp_path / "three")]) == 0
    note = f"evaluated on {tmp_path / 'elsewhere'}, not the training data; graded with --blend-eyes 0.5 (trained with 0"
    md, page = (tmp_path / "three" / "report.md").read_text(), (tmp_path / "three" / "index.html").read_text()
    assert note in md and note in page and f"evaluated on the test split of {tmp_path / 'elsewhere'}" in md
    assert "(epoch 1) - the lab's number, optimistic; on the training data's test split" in md  # not the evaluation's
    accuracy = [f for f in closed_figures if f._suptitle and "accuracy" in f._suptitle.get_text()][-1]
    counts = config["data"]["eval_counts"]["test"]  # the curves' test split is the training data's, graded or not
    [baseline] = [ln for ln in accuracy.axes[0].get_lines() if list(ln.get_xdata()) == [0, 1]]
    assert baseline.get_ydata()[0] == pytest.approx(max(counts) / sum(counts))
    assert "The data are synthetic drawings" not in md  # graded on other data: it learnt from drawings, that is all
    assert "Some runs learnt from synthetic drawings" in md
    ev.update(data=json.loads((run / "eval" / "metrics.json").read_text())["data"], blend_eyes=0.0,
              split_file=str(tmp_path / "other-split.csv"))  # the run's data, another split of it
    (moved / "eval" / "metrics.json").write_text(json.dumps(ev))
    assert main(["report", str(moved), "--out", str(tmp_path / "split")]) == 0
    md = (tmp_path / "split" / "report.md").read_text()
    assert f"evaluated on the split of {tmp_path / 'other-split.csv'}, not the run's own" in md
    assert "(epoch 1) - the lab's number, optimistic; on the run's own test split" in md
    assert f"1 of 1 runs are evaluated on the test split of {tmp_path / 'other-split.csv'}" in md  # not the data's
    ev.update(data=str(tmp_path / "elsewhere"), blend_eyes=0.5, split_file=None)
    (moved / "eval" / "metrics.json").write_text(json.dumps(ev))
    assert main(["report", str(run), str(moved), "--out", str(tmp_path / "four")]) == 0  # one of each: named
    md = (tmp_path / "four" / "report.md").read_text()
    assert "The data are synthetic drawings" not in md and "Some runs learnt from synthetic drawings" in md
    assert "resnet18-scratch is tested on synthetic drawings (retinopathy.data.synth), not photographs" in md


def test_the_originals_of_a_prepared_copy_are_the_training_data(tmp_path):
    """A run trained on a `prepare`d copy and evaluated on its originals (or the other way round) was said to be
    evaluated on other data, with test splits that differ: they are the same photographs, decoded otherwise."""
    from retinopathy.data.prepare import MANIFEST
    from retinopathy.reporting.report import evaluation_note, other_data
    from retinopathy.reporting.runs import Run

    originals, copy, other = tmp_path / "originals", tmp_path / "copy", tmp_path / "other"
    for folder in (originals, copy, other):
        folder.mkdir()
    (copy / MANIFEST).write_text(json.dumps({"source": str(originals.resolve()), "size": 128}))

    def run(trained, evaluated):
        return Run("r", tmp_path, "done", config={"data": {"path": str(trained)}}, eval={"data": str(evaluated)})
    assert not other_data(run(copy, originals)) and not other_data(run(originals, copy))
    assert evaluation_note(run(copy, originals)) == f"evaluated on {originals}, the originals of the prepared copy " \
        "it trained on"
    assert evaluation_note(run(originals, copy)) == f"evaluated on {copy}, a prepared copy of its training data"
    assert other_data(run(copy, other)) and evaluation_note(run(copy, other)).endswith("not the training data")
    assert evaluation_note(run(originals, originals)) == ""


def test_a_folder_of_experiments_is_every_experiment_in_it(experiment, tmp_path):
    """`report runs/`: the experiment folders in it (and any run folders beside them)."""
    runs = tmp_path / "runs"
    shutil.copytree(experiment / "runs", runs)
    shutil.copytree(runs / "tiny" / "resnet18-scratch", runs / "alone")
    assert main(["report", str(runs), "--out", str(tmp_path / "r")]) == 0
    names = [r["Run"] for r in md_table((tmp_path / "r" / "report.md").read_text(), "### All runs")]
    assert sorted(names) == sorted([*CELLS, "alone"])
    # "alone" and the scratch cell share model and variant: both keep a cell of the results table
    cells = re.findall(r'<td class="cell[^"]*" data-run="([^"]*)"', (tmp_path / "r" / "index.html").read_text())
    assert sorted(cells) == sorted([*CELLS, "alone"])
    shutil.copytree(runs / "tiny", runs / "tiny2")  # a copy of the experiment: its runs are told apart by folder
    assert main(["report", str(runs), "--out", str(tmp_path / "r2")]) == 0
    names = [r["Run"] for r in md_table((tmp_path / "r2" / "report.md").read_text(), "### All runs")]
    assert sorted(names) == sorted(["alone", *(f"{e}/{c}" for e in ("tiny", "tiny2") for c in CELLS)])
    # the title names the experiments when they are all it compares
    (runs / "other" / "c").mkdir(parents=True)  # an experiment of one cell, not run yet
    (runs / "other" / "experiment.json").write_text(json.dumps({"name": "other", "cells": {"c": {"dir": "c"}}}))
    (tmp_path / "only").mkdir()  # a folder of experiments alone
    for name in ("tiny", "other"):
        (tmp_path / "only" / name).symlink_to(runs / name)
    for given, title in (([runs / "tiny"], ": experiment tiny"), ([runs / "tiny", runs / "other"], ": experiments "
                         "tiny, other"), ([runs / "tiny", runs / "alone"], ""), ([runs / "tiny", runs / "tiny2"],
                         ": experiment tiny"), ([runs], ""), ([runs / "tiny", runs / "tiny2", runs / "other"],
                         ": experiments tiny, other"), ([tmp_path / "only"], ": experiments other, tiny")):
        assert main(["report", *map(str, given), "--out", str(tmp_path / "t")]) == 0
        md = (tmp_path / "t" / "report.md").read_text()
        assert md.startswith(f"# Diabetic-retinopathy grader comparison{title}\n")


def test_not_evaluated_run_and_bad_folder(experiment, tmp_path, capsys):
    run = tmp_path / "unevaluated"
    shutil.copytree(experiment / "runs" / "tiny" / "resnet18-scratch", run, ignore=shutil.ignore_patterns("eval"))
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "index.html").read_text()
    assert 'data-status="not evaluated"' in page and "retinopathy evaluate" in page
    assert "The data are synthetic drawings" in page and "their evaluations here" not in page  # none to speak of
    assert main(["report", str(tmp_path / "r"), "--out", str(tmp_path / "r2")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    on_val = tmp_path / "on-val"  # eval/ holds `evaluate --split val`: not shown as the test result
    shutil.copytree(experiment / "runs" / "tiny" / "resnet18-scratch", on_val)
    metrics = json.loads((on_val / "eval" / "metrics.json").read_text())
    (on_val / "eval" / "metrics.json").write_text(json.dumps({**metrics, "split": "val"}))
    assert main(["report", str(on_val), "--out", str(tmp_path / "r3")]) == 0
    page = (tmp_path / "r3" / "index.html").read_text()
    assert 'data-status="not evaluated"' in page and "best.pt on the val split, not best.pt on test" in page
    stale = tmp_path / "stale"  # eval/ holds an earlier best.pt (an evaluation from before save ids): training went on
    shutil.copytree(experiment / "runs" / "tiny" / "resnet18-scratch", stale)
    metrics = json.loads((stale / "eval" / "metrics.json").read_text())
    (stale / "eval" / "metrics.json").write_text(json.dumps({**metrics, "epoch": metrics["epoch"] - 1,
                                                             "checkpoint_id": None}))
    assert main(["report", str(stale), "--out", str(tmp_path / "r4")]) == 0
    page = (tmp_path / "r4" / "index.html").read_text()
    assert 'data-status="not evaluated"' in page and f"best.pt is now epoch {metrics['epoch'] + 1}" in page
    (stale / "eval" / "metrics.json").write_text(json.dumps({**metrics, "epoch": metrics["epoch"] + 1,
                                                             "checkpoint_id": None}))  # best.pt put back by hand
    assert main(["report", str(stale), "--out", str(tmp_path / "r4")]) == 0
    assert "best.pt was replaced since by an earlier epoch's, " in (tmp_path / "r4" / "report.md").read_text()
    resaved = tmp_path / "resaved"  # the same epoch's best.pt saved again (thresholds retuned, or another run)
    shutil.copytree(experiment / "runs" / "tiny" / "resnet18-scratch", resaved)
    best = resaved / "checkpoints" / "best.pt"
    save_checkpoint(load_checkpoint(best), best)
    assert main(["report", str(resaved), "--out", str(tmp_path / "r6")]) == 0
    page = (tmp_path / "r6" / "index.html").read_text()
    assert 'data-status="not evaluated"' in page and "best.pt was saved again since" in page
    killed = tmp_path / "killed"  # one more epoch's row was written, then the run was killed before its checkpoint
    shutil.copytree(experiment / "runs" / "tiny" / "resnet18-scratch", killed, ignore=shutil.ignore_patterns("eval"))
    config = yaml.safe_load((killed / "config.yaml").read_text())
    epochs = config["train"]["epochs"]
    config["train"]["epochs"] = epochs + 1
    config["engine"]["world_size"] = 2  # trained by two processes: resumed by two, whatever the shell reporting
    config["earlier"] = [{"epochs": 1, "engine": {**config["engine"], "amp": "bf16"}}, {"epochs": 2, "engine": None}]
    (killed / "config.yaml").write_text(yaml.safe_dump(config))
    lines = (killed / "metrics.csv").read_text().splitlines()
    (killed / "metrics.csv").write_text("\n".join(lines + [str(epochs) + lines[-1][1:]]) + "\n")
    broken = tmp_path / "broken"  # an unreadable best.pt marks that run, not the whole report
    shutil.copytree(experiment / "runs" / "tiny" / "resnet18-scratch", broken)
    (broken / "checkpoints" / "best.pt").write_bytes(b"PK\x03\x04 truncated")
    assert main(["report", str(killed), str(broken), "--out", str(tmp_path / "r5")]) == 0
    md = (tmp_path / "r5" / "report.md").read_text()
    assert f"killed - incomplete: trained {epochs} of {epochs + 1} epochs" in md and "broken - incomplete: " in md
    assert f"`torchrun --nproc_per_node=2 -m retinopathy train --resume {killed}`" in md
    killed_details = md.split("### killed")[1].split("###")[0]  # the row without its checkpoint is not counted
    assert re.search(rf"\*\*Time\*\*: [0-9.]+ s over {epochs} epochs? \(sum of epoch_seconds\)", killed_details)
    assert ("**Resumed**: after epoch 1, which ran on cpu (amp bf16, processes 2); after epoch 2; the options shown "
            "are the last run's") in killed_details  # resumed twice, in bf16 first; what a record lacks is left out
    assert "best.pt: cannot be read as a checkpoint" in md


# ------------------------------------------------------------------------------------------------ browser
def _browser(profile: Path):
    """Headless Chromium with its profile in ``profile`` (a test's tmp_path: removed with it)."""
    chromium, driver = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
    if not (chromium.exists() and driver.exists()):
        msg = "headless Chromium not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(msg + " and REQUIRE_BROWSER=1")
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
              f"--user-data-dir={profile}", "--window-size=1280,1000"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(str(driver)), options=opts)


@pytest.mark.timeout(120)
def test_page_in_a_real_browser(experiment, tmp_path):
    from selenium.webdriver.common.by import By

    driver = _browser(tmp_path / "chromium")
    try:
        driver.get((experiment / "report" / "index.html").as_uri())
        shot = tmp_path / "page.png"
        driver.save_screenshot(str(shot))
        images_ok = driver.execute_script(
            "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        cells = {td.get_attribute("data-run"): td for td in driver.find_elements(By.CSS_SELECTOR, "#results td.cell")}
        assert set(cells) == set(CELLS)
        for cell, td in cells.items():
            want = run_numbers(experiment / "runs" / "tiny" / cell)
            assert td.get_attribute("data-status") == "done"
            for key in ("test_accuracy", "kappa", "macro_f1", "majority_accuracy", "max_test_accuracy"):
                assert float(td.get_attribute(f"data-{key.replace('_', '-')}")) == pytest.approx(want[key], abs=1e-12)
            assert int(td.get_attribute("data-selected-epoch")) == want["selected_epoch"]
            assert f"{want['test_accuracy']:.3f}" in td.text
            flagged = want["test_accuracy"] <= want["majority_accuracy"] or want["kappa"] <= 0
            assert (td.get_attribute("data-warning") == "true") == flagged
            assert ("no better than always answering grade" in td.text) == (want["kappa"] <= 0)
            assert ("accuracy not above always answering grade" in td.text) == (flagged and want["kappa"] > 0)
    finally:
        driver.quit()
    assert len(images_ok) == 3 and all(images_ok)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[1] >= 1000 and pixels.std() > 15
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "the screenshot is (nearly) blank"


def test_named_variants_label_the_rows(tmp_path):
    from retinopathy.reporting.report import assign_variants
    from retinopathy.reporting.runs import Run
    from retinopathy.training.config import PRESETS

    runs = [Run("recipe-resnet18", tmp_path, "done", train={"model": "resnet18", "pretrained": False, "lr": 1},
                named="recipe"),
            Run("no-graham-resnet18", tmp_path, "done", train={"model": "resnet18", "pretrained": False, "lr": 2},
                named="no-graham"),
            Run("a", tmp_path, "done", train={"model": "resnet50", "pretrained": False, "seed": 1}),
            Run("b", tmp_path, "done", train={"model": "resnet50", "pretrained": False, "seed": 2})]
    assign_variants(runs)
    assert [r.variant for r in runs] == ["from scratch, recipe", "from scratch, no-graham",
                                         "from scratch, seed 1", "from scratch, seed 2"]
    # two experiments' variants of one name are their own recipes: each label says whose
    cells = [Run(f"{e}/lab-resnet50", tmp_path, "done", train={"model": "resnet50", "pretrained": False, "epochs": n},
                 named="lab", experiment=e) for e, n in (("cmp", 3), ("cmp2", 4))]
    assign_variants(cells + runs[2:3])
    assert [r.variant for r in cells + runs[2:3]] == ["from scratch, cmp: lab", "from scratch, cmp2: lab",
                                                      "from scratch, epochs 20, seed 1"]
    assign_variants(cells[:1])
    assert cells[0].variant == "from scratch, lab"
    solo = Run("solo", tmp_path, "done", train={"model": "resnet50", "pretrained": False}, named="solo",
               experiment="solo")  # a one-run experiment's run is named after it
    assign_variants(cells + [solo])
    assert solo.variant == "from scratch, solo"
    # an option left at its default (None on the command line, the value in a config file) is the same option;
    # runs that differ in many options are told apart by their names
    base = {"model": "resnet18", "pretrained": False, "epochs": 6}
    runs = [Run("cli", tmp_path, "done", train={**base, "split_seed": None, "warmup_epochs": 1.0, "lr": 0.001}),
            Run("file", tmp_path, "done", train={**base, "split_seed": 0, "warmup_epochs": 1, "lr": 0.003}),
            Run("many", tmp_path, "done", train={**base, "split_seed": 1, "warmup_epochs": 2, "lr": 0.01,
                                                   "seed": 3, "epochs": 9})]
    assign_variants(runs[:2])
    assert [r.variant for r in runs[:2]] == ["from scratch, lr 0.001", "from scratch, lr 0.003"]
    huge = [Run(f"h{i}", tmp_path, "done", train={**base, "lr": lr}) for i, lr in enumerate((2.0, 1e30))]
    assign_variants(huge)  # a whole float: as an int while it is short, in its own notation past that
    assert [r.variant for r in huge] == ["from scratch, lr 2", "from scratch, lr 1e+30"]
    assign_variants(runs)
    assert [r.variant for r in runs] == ["from scratch, cli", "from scratch, file", "from scratch, many"]
    other = [Run(f"e{i}", tmp_path, "done", train={"model": "efficientnet_b0", "pretrained": False, "lr": i,
                                                  "epochs": i, "seed": i, "batch_size": i}) for i in (1, 2)]
    assign_variants(runs[:2] + other)  # one model's many differences do not rename another model's runs
    assert [r.variant for r in runs[:2] + other] == ["from scratch, lr 0.001", "from scratch, lr 0.003",
                                                     "from scratch, e1", "from scratch, e2"]
    # an option one run names and another leaves out (a cell that never started has only its cell.yaml) differs
    # when the named value is not the default
    sparse = [Run("pending", tmp_path, "pending", train={"model": "resnet18", "pretrained": False, "epochs": 2}),
              Run("ordinal", tmp_path, "done", train={**base, "epochs": 2, "objective": "ordinal", "lr": 0.001})]
    assign_variants(sparse)
    assert [r.variant for r in sparse] == ["from scratch, objective classification", "from scratch, objective ordinal"]
    lab = [Run("pending", tmp_path, "pending", train={"model": "resnet18", "pretrained": False, "preset": "lab",
                                                      "lr": 0.003}),  # only what its cell.yaml says
           Run("done", tmp_path, "done", train={"model": "resnet18", "pretrained": False, "preset": "lab",
                                                **PRESETS["lab"], "lr": 0.001, "workers": 0})]
    assign_variants(lab)  # the preset's options, left out of one, are not differences
    assert [r.variant for r in lab] == ["from scratch, lr 0.003", "from scratch, lr 0.001"]
    # a run started from --weights is not labelled ImageNet-pretrained
    seeded = [Run("imagenet", tmp_path, "done", train={"model": "resnet18", "pretrained": True, "weights": None}),
              Run("seeded", tmp_path, "done", train={"model": "resnet18", "pretrained": True,
                                                     "weights": "runs/synth-r18/checkpoints/best.pt"}),
              Run("file", tmp_path, "done", train={"model": "resnet18", "pretrained": True, "weights": "w/r18.pth"}),
              Run("flat", tmp_path, "done", train={"model": "resnet18", "pretrained": False, "weights": "old/best.pt"})]
    assign_variants(seeded)
    assert [r.variant for r in seeded] == ["ImageNet-pretrained", "from synth-r18", "from r18.pth", "from old"]


def test_a_named_variants_options_are_listed_under_the_results(experiment, tmp_path):
    """A variant's name says nothing of its recipe: the report lists, under the results, the options in which each
    named variant's runs differ from the other runs of their model."""
    exp = tmp_path / "ablation"
    for variant, lr in (("recipe", 0.001), ("fast", 0.01)):
        shutil.copytree(experiment / "runs" / "tiny" / "resnet18-scratch", exp / variant)
        config = yaml.safe_load((exp / variant / "config.yaml").read_text())
        config["train"]["lr"] = lr
        (exp / variant / "config.yaml").write_text(yaml.safe_dump(config))
    (exp / "experiment.json").write_text(json.dumps({"name": "ablation", "cells": {
        v: {"dir": v, "status": "done", "values": {"variant": v}} for v in ("recipe", "fast")}}))
    assert main(["report", str(exp), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "- **from scratch, recipe**: lr 0.001\n- **from scratch, fast**: lr 0.01\n" in md
    page = (tmp_path / "r" / "index.html").read_text()
    assert '<div id="variants">' in page and "<li><b>from scratch, fast</b>: lr 0.01</li>" in page
    assert main(["report", str(experiment / "runs" / "tiny"), "--out", str(tmp_path / "r2")]) == 0  # none named
    assert "Variants, by the options" not in (tmp_path / "r2" / "report.md").read_text()
    assert main(["report", str(exp / "fast"), "--out", str(tmp_path / "one")]) == 0  # a cell alone keeps its name
    assert "| fast | ResNet18 | from scratch, fast |" in (tmp_path / "one" / "report.md").read_text()
    (exp / "experiment.json").write_text("{")  # a broken record: the run is still shown, without its names
    assert main(["report", str(exp / "fast"), "--out", str(tmp_path / "one")]) == 0
    assert "| fast | ResNet18 | from scratch |" in (tmp_path / "one" / "report.md").read_text()
    shutil.copytree(exp / "fast", exp / "fast50")  # the same variant on another model, there with another batch
    config = yaml.safe_load((exp / "fast50" / "config.yaml").read_text())
    config["train"].update(model="resnet50", batch_size=8)
    (exp / "fast50" / "config.yaml").write_text(yaml.safe_dump(config))
    shutil.copytree(exp / "recipe", exp / "recipe50")
    config = yaml.safe_load((exp / "recipe50" / "config.yaml").read_text())
    config["train"].update(model="resnet50")
    (exp / "recipe50" / "config.yaml").write_text(yaml.safe_dump(config))
    cells = {v: {"dir": v, "status": "done", "values": {"variant": v.removesuffix("50")}}
             for v in ("recipe", "fast", "recipe50", "fast50")}
    (exp / "experiment.json").write_text(json.dumps({"name": "ablation", "cells": cells}))
    assert main(["report", str(exp), "--out", str(tmp_path / "r3")]) == 0
    assert ("- **from scratch, fast**: ResNet18: lr 0.01; ResNet50: batch size 8, lr 0.01\n"
            in (tmp_path / "r3" / "report.md").read_text())


def test_one_run_experiment_is_named_after_the_experiment(tmp_path):
    exp = tmp_path / "solo"
    (exp / "resnet18").mkdir(parents=True)
    (exp / "resnet18" / "cell.yaml").write_text("model: resnet18\npretrained: false\n")
    (exp / "experiment.json").write_text(json.dumps(
        {"name": "solo", "cells": {"resnet18": {"status": "pending", "dir": "resnet18",
                                                 "values": {"model": "resnet18"}}}}))
    [run] = load_experiment(exp)
    assert run.status == "pending" and run.named == "solo"


def test_a_cell_that_failed_without_a_reason_is_reported(tmp_path):
    exp = tmp_path / "grid"
    (exp / "resnet18").mkdir(parents=True)
    (exp / "experiment.json").write_text(json.dumps(
        {"name": "grid", "cells": {"resnet18": {"status": "failed", "reason": "", "dir": "resnet18",
                                                "values": {"model": "resnet18"}}}}))
    assert main(["report", str(exp), "--out", str(tmp_path / "r")]) == 0
    assert "Missing: resnet18 - failed" in (tmp_path / "r" / "report.md").read_text()


def test_a_cell_that_did_not_run_has_the_model_it_would_have_run(tmp_path):
    """A failed or pending cell that leaves the model at train's default (``grid: {seed: ...}``) is of that model,
    not of an 'unknown model' of its own."""
    exp = tmp_path / "grid"
    for seed in (1, 2):
        (exp / f"seed-{seed}").mkdir(parents=True)
        (exp / f"seed-{seed}" / "cell.yaml").write_text(f"seed: {seed}\nepochs: 3\n")
    (exp / "experiment.json").write_text(json.dumps(
        {"name": "grid", "cells": {"seed-1": {"status": "failed", "reason": "x", "dir": "seed-1",
                                              "values": {"seed": 1}},
                                   "seed-2": {"status": "pending", "dir": "seed-2", "values": {"seed": 2}}}}))
    runs = load_experiment(exp)
    assert [(r.status, r.model, r.objective, r.pretrained) for r in runs] == \
        [("failed", "resnet18", "classification", True), ("pending", "resnet18", "classification", True)]


def test_grades_without_test_images_show_no_recall(experiment, tmp_path, closed_figures):
    run = tmp_path / "no-grade-4"  # a test split without grade 4, as scikit-learn's zero_division=0 recorded it
    shutil.copytree(experiment / "runs" / "tiny" / "resnet18-scratch", run)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    metrics["confusion_matrix"][4], metrics["true_counts"][4] = [0] * 5, 0
    metrics["per_grade"]["4"] = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    metrics["predicted_counts"][3] = metrics["predicted_counts"][4] = 0  # never predicted: no precision either
    metrics["per_grade"]["3"]["precision"] = 0.0
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 0
    [row] = md_table((tmp_path / "r" / "report.md").read_text(), "## Per-grade recall and precision (test split)")
    assert row["grade 4 recall / precision (n)"] == "n/a (0 images)"
    assert row["grade 3 recall / precision (n)"].endswith(f" / n/a ({metrics['per_grade']['3']['support']})")
    auc_ci = metrics["ci95"].get("referable_auc")
    assert row["Referable DR: AUC [95% CI] / sensitivity / specificity"] == " / ".join(
        (f"{metrics[k]:.3f}" if metrics[k] is not None else "-")
        + (f" [{auc_ci[0]:.3f}, {auc_ci[1]:.3f}]" if k == "referable_auc" and auc_ci else "")
        for k in ("referable_auc", "referable_sensitivity", "referable_specificity"))
    assert "<td>n/a <span class='label'>(0 images)</span></td>" in (tmp_path / "r" / "index.html").read_text()
    texts = cell_texts(closed_figures[-1].axes[0])  # confusion.png
    assert [texts[(4, p)] for p in range(5)] == ["–"] * 5
    assert all(texts[(t, p)] != "–" for t in range(4) for p in range(5))


def test_each_number_is_read_from_its_own_place(experiment, tmp_path, closed_figures):
    """A run whose numbers all differ (test accuracy, the majority rate and grade, the two intervals, val against
    test accuracy, a leakage warning) beside a weaker one and one with kappa 0: each lands where the page says."""
    import matplotlib.lines

    runs = {name: tmp_path / name for name in ("good", "flat", "weak")}
    for run in runs.values():
        shutil.copytree(experiment / "runs" / "tiny" / "resnet18-scratch", run)
    weak = json.loads((runs["weak"] / "eval" / "metrics.json").read_text())
    (runs["weak"] / "eval" / "metrics.json").write_text(json.dumps({**weak, "kappa": 0.2}))
    good = runs["good"]
    m = json.loads((good / "eval" / "metrics.json").read_text())
    m.update(accuracy=0.7, kappa=0.45, majority_accuracy=0.3, true_counts=[2, 3, 2, 1, 2],
             confusion_matrix=[[1, 1, 0, 0, 0], [0, 3, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]])
    m["ci95"].update(accuracy=[0.5, 0.85], kappa=[0.2, 0.7])
    (good / "eval" / "metrics.json").write_text(json.dumps(m))
    with open(good / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0].update(val_accuracy="0.375", test_accuracy="0.7")
    with open(good / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = yaml.safe_load((good / "config.yaml").read_text())
    config["data"]["leakage_warnings"] = ["3 of 5 test patients also have an eye in train"]
    config["data"]["eval_counts"]["test"] = m["true_counts"]  # the test split its curves follow
    (good / "config.yaml").write_text(yaml.safe_dump(config))
    flat = json.loads((runs["flat"] / "eval" / "metrics.json").read_text())
    flat_majority, flat_grade = flat["majority_accuracy"], max(range(5), key=flat["true_counts"].__getitem__)
    pairs = sorted({(0.3, 1), (flat_majority, flat_grade)})  # the baselines: each split's accuracy and grade
    expected = (" / ".join(f"{a:.3f} (grade {g})" for a, g in pairs) if len({g for _, g in pairs}) > 1
                else " / ".join(f"{a:.3f}" for a, _ in pairs))

    assert main(["report", str(runs["weak"]), str(good), str(runs["flat"]), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert ("Highest quadratic kappa: ResNet18, from scratch (good) - kappa 0.450 (95% CI 0.200 to 0.700), test "
            "accuracy 0.700 (always answering grade 1 scores 0.300).") in md
    assert "(kappa <= 0): flat." in md  # kappa exactly 0 has not learnt to grade
    table = {r["Run"]: r for r in md_table(md, "### All runs")}
    assert table["good"]["Best selection accuracy (epoch)"] == "0.3750 (1, val)"
    assert table["good"]["Majority accuracy"] == "0.3000"
    [results] = md_table(md, "## Results")
    baseline = results["Baseline: always the most common grade (test accuracy)"]
    assert baseline == expected
    assert "- **Split warnings**: 3 of 5 test patients also have an eye in train" in md
    assert "- **Training**: 1 epoch, adamw lr 0.001" in md  # one epoch, not "1 epochs"
    assert "classification objective, grade: the most probable; weights:" in md  # how outputs become grades
    config["train"].update(objective="ordinal", threshold_rule="kappa-above-majority", threshold_margin=0.02,
                           threshold_data="train+selection", blend_eyes=0.4)
    (good / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["report", str(good), "--out", str(tmp_path / "r2")]) == 0
    assert ("ordinal objective, grades cut from the score at thresholds tuned for kappa-above-majority on the training "
            "and selection images (accuracy margin 0.02); each eye's score mixed with the other eye's, weight 0.4; "
            "weights:") in (tmp_path / "r2" / "report.md").read_text()
    config["train"].update(threshold_rule="kappa", threshold_data="selection")  # a margin only that rule applies
    (good / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["report", str(good), "--out", str(tmp_path / "r3")]) == 0
    assert ("thresholds tuned for kappa on the selection split; each eye's"
            in (tmp_path / "r3" / "report.md").read_text())
    split = next(line for line in md.splitlines() if line.startswith("- **Split**") and "good" in line)
    counts = config["data"]["eval_counts"]
    for sp in ("val", "test"):
        assert f"{sp} {sum(counts[sp])} {counts[sp]}" in split
    page = (tmp_path / "r" / "index.html").read_text()
    assert f'<div class="baseline">{expected}</div>' in page
    accuracy = next(f for f in closed_figures if "accuracy" in f._suptitle.get_text())
    lines = [ln for ln in accuracy.axes[0].get_lines() if isinstance(ln, matplotlib.lines.Line2D)]
    dash_dotted = [list(ln.get_ydata()) for ln in lines if ln.get_linestyle() == "-."]
    assert [0.375] in dash_dotted  # the val curve plots val accuracy
    coinciding = {}  # flat and weak are copies of one run: their curves lie on each other and both stay visible
    for ln in lines:
        if ln.get_marker() not in (None, "", "None"):
            coinciding.setdefault((ln.get_linestyle(), tuple(ln.get_ydata())), []).append(ln)
    groups = [g for g in coinciding.values() if len(g) > 1]
    assert groups and all(len({ln.get_marker() for ln in g}) == len(g) for g in groups)
    assert all(ln.get_markerfacecolor() == "none" for g in groups for ln in g)  # hollow: one shape inside another
    ticks = [t for t in accuracy.axes[0].get_xticks() if 0.5 <= t <= 1.5]
    assert ticks == [1]  # one epoch: one tick, not 0.945 ... 1.05
    assert any(list(ln.get_ydata()) == [0.3, 0.3] for ln in lines)  # the majority baseline (an axhline)
    assert "Their test splits differ" not in md and "its test split:" not in md  # copies of one run's test split
    weak["true_counts"] = [5, 1, 2, 1, 1]  # another test split (one photograph fewer, another grade mix)
    weak["ci95"] = {**weak["ci95"], "kappa": [0.05, 0.35]}  # overlaps good's [0.2, 0.7]
    (runs["weak"] / "eval" / "metrics.json").write_text(json.dumps({**weak, "kappa": 0.2, "majority_accuracy": 0.5}))
    weak_config = yaml.safe_load((runs["weak"] / "config.yaml").read_text())
    weak_config["data"]["eval_counts"]["test"] = weak["true_counts"]
    (runs["weak"] / "config.yaml").write_text(yaml.safe_dump(weak_config))
    predictions = (runs["weak"] / "eval" / "predictions.csv").read_text().splitlines()
    (runs["weak"] / "eval" / "predictions.csv").write_text("\n".join(predictions[:-1]) + "\n")
    assert main(["report", str(runs["weak"]), str(good), "--out", str(tmp_path / "r2")]) == 0
    md = (tmp_path / "r2" / "report.md").read_text()
    assert "Their test splits differ (other data, split seeds or split files)" in md
    fewer = tmp_path / "fewer"  # test splits of different sizes: the range here, each run's count in its cell
    shutil.copytree(runs["weak"], fewer)
    count = json.loads((good / "eval" / "metrics.json").read_text())["count"]
    (fewer / "eval" / "metrics.json").write_text(json.dumps({**weak, "count": count - 1}))
    assert main(["report", str(fewer), str(good), "--out", str(tmp_path / "r5")]) == 0
    assert f"evaluated on test splits of {experiment / 'data'} ({count - 1} to {count} images)." in \
        (tmp_path / "r5" / "report.md").read_text()
    assert "Its interval overlaps those of 1 other run(s): not a clear winner." in md
    assert "its test split: always answering grade 0 scores 0.500" in md  # each cell names its own baseline
    assert "its test split: always answering grade 1 scores 0.300" in md
    page = (tmp_path / "r2" / "index.html").read_text()  # two baselines of two grades: each named
    assert ('<div class="baseline">0.300 (grade 1) / 0.500 (grade 0)</div>'
            '<div class="label">always answering the split\'s most common grade</div>') in page
    assert "| 0.300 (grade 1) / 0.500 (grade 0) |" in md
    accuracy = [f for f in closed_figures if f._suptitle and "accuracy" in f._suptitle.get_text()][-1]
    lines = accuracy.axes[0].get_lines()
    curves = {ln.get_color() for ln in lines if list(ln.get_xdata()) != [0, 1]}
    baselines = {ln.get_ydata()[0]: ln.get_color() for ln in lines if list(ln.get_xdata()) == [0, 1]}
    assert baselines.keys() == {0.3, 0.5} and set(baselines.values()) <= curves  # each in its run's colour
    assert len(set(baselines.values())) == 2
    unevaluated = tmp_path / "unevaluated"  # its test split's rate all the same: not good's line for both runs
    shutil.copytree(runs["weak"], unevaluated)
    shutil.rmtree(unevaluated / "eval")
    assert main(["report", str(unevaluated), str(good), "--out", str(tmp_path / "r4")]) == 0
    accuracy = [f for f in closed_figures if f._suptitle and "accuracy" in f._suptitle.get_text()][-1]
    assert {ln.get_ydata()[0] for ln in accuracy.axes[0].get_lines() if list(ln.get_xdata()) == [0, 1]} == {0.3, 0.5}
    twin = tmp_path / "twin"  # a copy without predictions.csv: compared by data, count and grade mix instead
    shutil.copytree(runs["weak"], twin)
    (twin / "eval" / "predictions.csv").unlink()
    assert main(["report", str(runs["weak"]), str(twin), "--out", str(tmp_path / "r3")]) == 0
    assert "Their test splits differ" not in (tmp_path / "r3" / "report.md").read_text()
    confusion = next(f for f in closed_figures if f.axes and f.axes[0].images)  # (one-epoch curves have texts too)
    texts = cell_texts(next(ax for ax in confusion.axes if "(good)" in ax.get_title()))
    assert (texts[(0, 0)], texts[(0, 1)], texts[(1, 1)]) == ("0.50", "0.50", "1.00")  # each row sums to 1


def test_a_record_without_grade_counts_is_reported(experiment, tmp_path, closed_figures):
    """A config.yaml whose data section has null counts (written by hand, or an older version): no baseline line to
    draw, and the page is written all the same."""
    run = tmp_path / "run"
    shutil.copytree(experiment / "runs" / "tiny" / "resnet18-scratch", run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"].update(eval_counts=None, train_counts=None)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 0
    accuracy = next(f for f in closed_figures if "accuracy" in f._suptitle.get_text())
    assert not [ln for ln in accuracy.axes[0].get_lines() if list(ln.get_xdata()) == [0, 1]]


def test_the_first_epoch_wins_a_tie():
    """"Highest test accuracy (epoch)" names the first epoch that reached it, as documented."""
    from retinopathy.reporting.report import _best

    rows = [{"epoch": 0, "test_accuracy": 0.4}, {"epoch": 1, "test_accuracy": 0.5}, {"epoch": 2, "test_accuracy": 0.5},
            {"epoch": 3, "test_accuracy": None}]
    assert _best(rows, "test_accuracy") == (0.5, 2)


def test_importing_the_package_leaves_the_users_matplotlib_backend_alone():
    """A notebook's backend stays its own: the figures are drawn without pyplot (``matplotlib.use("Agg")`` at
    import switched a notebook's plots off)."""
    code = ("import matplotlib; import retinopathy.cli.main, retinopathy.evaluation.evaluate, "
            "retinopathy.reporting.report; print(matplotlib.get_backend())")
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "svg"


def test_evaluate_confusion_figure_dashes_grades_without_images(tmp_path, closed_figures):
    counts = confusion_matrix([0, 0, 1, 2, 2], [0, 1, 1, 2, 4], labels=range(5))
    figures.confusion_figure(counts, "no grades 3 and 4", tmp_path / "cm.png")
    texts = cell_texts(closed_figures[0].axes[0])
    assert [texts[(t, p)] for t in (3, 4) for p in range(5)] == ["–"] * 10
    assert texts[(0, 0)] == "0.50" and texts[(2, 4)] == "0.50"
    assert closed_figures[0].axes[0].images[0].get_clim() == (0, 1)  # 0.50 is half-dark, not the darkest cell
    assert [t.get_text() for t in closed_figures[0].axes[0].get_yticklabels()] == [  # how many images each row is
        "0 (n=2)", "1 (n=1)", "2 (n=2)", "3 (n=0)", "4 (n=0)"]


def test_confusion_numbers_contrast_with_their_cells(tmp_path, closed_figures):
    """Each number is dark on a light cell and white on a dark one, by the fixed 0-1 scale: scikit-learn's own
    choice, from the values' range, wrote 0.20-0.40 in white on pale blue when no cell reached 1."""
    figures.confusion_figure([[4, 3, 2, 1, 0], [2, 4, 3, 1, 0], [1, 3, 4, 2, 0], [0, 1, 3, 4, 2], [0, 0, 0, 1, 9]],
                             "a weak model", tmp_path / "cm.png")
    colours = {(round(y), round(x)): t.get_color() for t in closed_figures[0].axes[0].texts
               for x, y in [t.get_position()]}
    assert colours[(0, 0)] == colours[(1, 2)] == colours[(0, 4)] == "black"  # 0.40, 0.30, 0.00
    assert colours[(4, 4)] == "white"  # 0.90


def test_a_row_of_many_confusion_matrices_wraps(tmp_path, closed_figures):
    """Five runs of one model: three matrices a line, not five (their numbers shrank with each run added)."""
    cols = [f"variant {i}" for i in range(5)]
    cells = {("ResNet18", c): np.eye(5, dtype=int).tolist() for c in cols[:4]} | {("ResNet18", cols[4]): "failed"}
    figures.confusion_grid(["ResNet18"], cols, cells, tmp_path / "c.png")
    with Image.open(tmp_path / "c.png") as im:
        assert im.size == confusion_size_px(2, 3)
    shown = [ax for ax in closed_figures[0].axes if ax.axison]
    assert len(shown) == 4 and [ax.get_title().split("\n")[1] for ax in shown] == cols[:4]


def test_a_run_of_one_epoch_names_its_splits_and_has_not_fine_tuned(tmp_path, closed_figures):
    """One epoch has no line to tell train, val and test apart: their values are written beside the points; a
    run still frozen has no "fine-tuning starts" line."""
    series = [{**fake_series(1, ("train", "val", "test"))[0], "freeze_epochs": 1}]
    series[0]["rows"] = series[0]["rows"][:1]
    figures.curves_figure("ResNet18: accuracy per epoch", series, "accuracy", tmp_path / "a.png")
    ax = closed_figures[0].axes[0]
    assert [t.get_text() for t in ax.texts] == ["test 0.240\nval 0.220\ntrain 0.200"]
    assert not [line for line in ax.lines if line.get_linestyle() == ":"]
    series[0]["rows"] = fake_series(1)[0]["rows"]  # four epochs: fine-tuned from the second, no values written
    figures.curves_figure("ResNet18: accuracy per epoch", series, "accuracy", tmp_path / "b.png")
    assert [t.get_text() for t in closed_figures[1].axes[0].texts] == ["fine-tuning starts"]


def test_fine_tuning_starts_are_told_apart(tmp_path, closed_figures):
    series = [{**s, "freeze_epochs": fe} for s, fe in zip(fake_series(3), (1, 2, 2))]
    figures.curves_figure("ResNet18: accuracy per epoch", series, "accuracy", tmp_path / "a.png")
    notes = sorted(t.get_text() for t in closed_figures[0].axes[0].texts)
    assert notes == ["fine-tuning starts (1 epoch frozen)", "fine-tuning starts (2 epochs frozen)"]


@pytest.mark.parametrize("metric", ["accuracy", "loss"])
def test_the_fine_tuning_note_sits_above_the_curves(tmp_path, closed_figures, metric):
    series = fake_series(3)
    series[0]["rows"][1][f"train_{metric}"] = 1.0 if metric == "accuracy" else 2.0  # the top of the curves
    figures.curves_figure(f"ResNet18: {metric} per epoch", series, metric, tmp_path / "a.png")
    ax = closed_figures[0].axes[0]
    renderer = FigureCanvasAgg(closed_figures[0]).get_renderer()
    [note] = ax.texts
    top = max(ax.transData.transform(np.column_stack(ln.get_data()))[:, 1].max() + ln.get_markersize()
              for ln in ax.get_lines() if ln.get_marker() not in (None, "", "None"))  # points to pixels: dpi 100+
    assert note.get_window_extent(renderer).y0 > top


def test_a_diverged_run_does_not_flatten_the_others_losses(tmp_path, closed_figures):
    series = fake_series(3)
    series[0]["rows"][2]["test_loss"] = 930.0  # one run's loss exploded at one epoch
    figures.curves_figure("ResNet18: loss per epoch", series, "loss", tmp_path / "l.png")
    ax = closed_figures[0].axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylabel().endswith(", log scale")
    FigureCanvasAgg(closed_figures[0]).draw()  # its ticks as numbers, not TeX shown as written ($\mathdefault...)
    shown = [t.get_text() for minor in (False, True) for t in ax.get_yticklabels(minor=minor) if t.get_text()]
    assert "100" in shown and not any("$" in t or "\\" in t for t in shown), shown
    figures.curves_figure("ResNet18: loss per epoch", fake_series(3), "loss", tmp_path / "l2.png")
    assert closed_figures[1].axes[0].get_yscale() == "linear"
    series[1]["rows"][3]["train_loss"] = 0.0  # a loss of 0 cannot be drawn on a log scale: linear, with it shown
    figures.curves_figure("ResNet18: loss per epoch", series, "loss", tmp_path / "l3.png")
    assert closed_figures[2].axes[0].get_yscale() == "linear"


# ------------------------------------------------------------------------------------------------ figures
def fake_series(n: int, splits=("train", "test")) -> list[dict]:
    """``n`` runs with long labels, four epochs of metrics.csv rows each (``splits``' columns), as report.py
    passes them."""
    return [{"label": LONG_LABEL.format(i=i), "colour": figures.OTHERS[i % len(figures.OTHERS)], "freeze_epochs": 1,
             "objective": "classification",
             "rows": [{"epoch": e, **{f"{sp}_{metric}": start + sign * (0.1 * e + 0.02 * (i + k))
                                      for k, sp in enumerate(splits)
                                      for metric, start, sign in (("accuracy", 0.2, 1), ("loss", 1.6, -1))}}
                      for e in range(4)]}
            for i in range(n)]


@pytest.mark.parametrize("n", [1, 3, 8])
def test_curve_legends_fit_long_labels(tmp_path, closed_figures, n):
    series = [{**s, "baseline": 0.4} for s in fake_series(n)]
    figures.curves_figure("ResNet18: accuracy per epoch", series, "accuracy", tmp_path / "a.png")
    pixels = np.asarray(Image.open(tmp_path / "a.png").convert("L"))
    edges = np.concatenate([pixels[:, :3], pixels[:, -3:], pixels[:3].T, pixels[-3:].T], axis=None)
    assert edges.min() > 250, "ink at the image's edge: something is clipped"
    assert abs(pixels.shape[1] - CURVE_PX[0]) < 0.05 * CURVE_PX[0] and pixels.shape[0] > CURVE_PX[1]
    legend = " ".join(" ".join(t.get_text().split()) for t in closed_figures[0].legends[0].get_texts())
    assert all(s["label"] in legend for s in series)  # whole labels, wrapped


def test_confusion_titles_do_not_overlap(tmp_path, closed_figures):
    cols = [LONG_LABEL.format(i=i) for i in range(3)]
    figures.confusion_grid(["ResNet18"], cols, {("ResNet18", c): np.eye(5, dtype=int).tolist() for c in cols},
                           tmp_path / "c.png")
    fig = closed_figures[0]
    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    assert all(fig.bbox.x0 <= b.x0 and b.x1 <= fig.bbox.x1 and b.y1 <= fig.bbox.y1 for b in boxes)


@pytest.mark.parametrize("splits", [("train", "val", "test"), ("train", "test")])
def test_curves_show_val_when_recorded(tmp_path, closed_figures, splits):
    figures.curves_figure("ResNet18: loss per epoch", fake_series(3, splits), "loss", tmp_path / "l.png")
    fig = closed_figures[0]
    styles = Counter(line.get_linestyle() for ax in fig.axes for line in ax.lines)
    styles.pop(":")  # where fine-tuning starts
    assert styles == {{"train": "--", "val": "-.", "test": "-"}[sp]: 3 for sp in splits}  # one line per run
    keys = [t.get_text() for t in fig.legends[0].get_texts()]
    assert ("val" in keys) == ("val" in splits)


def test_losses_of_different_objectives_get_a_panel_each(tmp_path, closed_figures):
    objectives = ("classification", "regression", "classification")
    series = [{**s, "objective": o} for s, o in zip(fake_series(3), objectives)]
    series[1]["rows"] = series[1]["rows"][:2]  # a shorter run alone in the last panel: no panel cut to its length
    figures.curves_figure("ResNet18: loss per epoch", series, "loss", tmp_path / "mixed.png")
    figures.curves_figure("ResNet18: loss per epoch", [{**s, "objective": "ordinal"} for s in series], "loss",
                          tmp_path / "one.png")
    mixed, one = closed_figures
    assert [ax.get_ylabel() for ax in mixed.axes] == ["loss (cross-entropy)", "loss (smooth L1)"]
    assert [{line.get_color() for line in ax.lines if line.get_linestyle() != ":"} for ax in mixed.axes] == [
        {series[0]["colour"], series[2]["colour"]}, {series[1]["colour"]}]
    assert "not comparable" in mixed.get_suptitle()
    assert [ax.get_xlim() for ax in mixed.axes] == [(0.5, 4.5)] * 2
    assert [ax.get_ylabel() for ax in one.axes] == ["loss (ordinal binary cross-entropy)"]
    assert "training's loss" not in one.get_suptitle()


def test_a_training_loss_with_more_terms_than_the_evaluation_losses_says_so(tmp_path, closed_figures):
    """Class weights, label smoothing and mixup weigh on training's loss, not on val's and test's (plain, as
    evaluate reports them): the curves, drawn on one axis, say so."""
    from retinopathy.reporting.report import loss_terms

    terms = loss_terms({"class_weights": "inverse", "label_smoothing": 0.1, "mixup": 0.0})
    assert terms == ["class weights", "label smoothing"] and loss_terms({}) == []
    series = [{**s, "train_loss_terms": t} for s, t in zip(fake_series(2), (terms, []))]
    figures.curves_figure("ResNet18: loss per epoch", series, "loss", tmp_path / "loss.png")
    figures.curves_figure("ResNet18: accuracy per epoch", series, "accuracy", tmp_path / "accuracy.png")
    loss, accuracy = closed_figures
    assert "training's loss includes class weights, label smoothing; val and test losses are plain" in \
        loss.get_suptitle()
    assert "training's loss" not in accuracy.get_suptitle()


def test_a_grade_predicted_without_images_keeps_its_precision():
    """No images of grade 4 but answered for some: recall n/a, precision 0.00 (every such answer was wrong)."""
    from retinopathy.reporting.text import grade_parts

    per_grade = {str(g): {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2} for g in range(4)}
    per_grade["4"] = {"precision": 0.0, "recall": None, "f1": 0.0, "support": 0}
    assert grade_parts({"per_grade": per_grade, "predicted_counts": [2, 2, 2, 1, 1]})[4] == ("n/a / 0.00", "0 images")
    assert grade_parts({"per_grade": per_grade, "predicted_counts": [2, 2, 2, 2, 0]})[4] == ("n/a", "0 images")



def test_a_cell_whose_last_run_failed_is_marked_beside_its_earlier_evaluation(experiment, tmp_path):
    """A finished cell run again with more epochs that then failed keeps its earlier evaluation: the numbers are
    shown, and so is the failure, with the line that says why (not only "1 problem(s) in the dataset:")."""
    exp = tmp_path / "tiny"
    shutil.copytree(experiment / "runs" / "tiny", exp)
    status = json.loads((exp / "experiment.json").read_text())
    status["cells"]["resnet18-scratch"].update(status="failed",
                                               reason="1 problem(s) in the dataset:\n  x.csv:3: bad grade\nFix it")
    (exp / "experiment.json").write_text(json.dumps(status))
    assert main(["report", str(exp), "--out", str(tmp_path / "r")]) == 0
    md, page = (tmp_path / "r" / "report.md").read_text(), (tmp_path / "r" / "index.html").read_text()
    assert ("Failed on its last run: resnet18-scratch (its evaluation of the best checkpoint so far is shown): "
            "1 problem(s) in the dataset: x.csv:3: bad grade") in md
    assert "its last run failed: 1 problem(s) in the dataset: x.csv:3: bad grade" in page
    # given as a run folder, the cell is marked all the same, whichever comes first
    for paths in ([exp / "resnet18-scratch"], [exp / "resnet18-scratch", exp]):
        assert [(r.name, r.status) for r in collect(paths) if r.name == "resnet18-scratch"] == \
            [("resnet18-scratch", "failed")]


def test_run_names_are_shown_as_written(experiment, tmp_path):
    """Names with '$' (matplotlib's TeX), '|' (a Markdown column) or '<' (a tag): the report is built and shows them
    as written (it stopped with a mathtext error; report.md's tables gained columns)."""
    odd = tmp_path / "odd"
    names = ["a$^$b", "b|c", "<i>x&q"]
    for name in names:
        shutil.copytree(experiment / "runs" / "tiny" / "resnet18-scratch", odd / name)
    assert main(["report", str(odd), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    lines = md.splitlines()
    columns = [len(re.split(r"(?<!\\)\|", line)) for line in lines]  # '|' not escaped as '\|'
    for i in (i for i, line in enumerate(lines) if line.startswith("|---")):  # every row of a table as wide as its
        rows = itertools.takewhile(lambda j: lines[j].startswith("|"), range(i + 1, len(lines)))  # header
        assert {columns[j] for j in rows} <= {columns[i - 1]} and columns[i] == columns[i - 1], lines[i - 1]
    assert "a$^$b" in md and "b\\|c" in md and "&lt;i>x&q" in md
    assert not [line for line in lines if line.startswith(("|", "#")) and "<i>" in line]
    page = (tmp_path / "r" / "index.html").read_text()
    assert "a$^$b" in page and "&lt;i&gt;x&amp;q" in page


@pytest.mark.parametrize("file, content", [("experiment.json", {"cells": 5}),
                                           ("experiment.json", {"cells": {"resnet18-scratch": "done"}}),
                                           ("resnet18-scratch/config.yaml", [1, 2])])
def test_a_record_edited_out_of_shape_is_named(experiment, tmp_path, file, content, capsys):
    """Files of the wrong shape (valid JSON or YAML, but not a mapping) gave tracebacks (TypeError, AttributeError)."""
    exp = tmp_path / "tiny"
    shutil.copytree(experiment / "runs" / "tiny", exp)
    (exp / file).write_text(json.dumps(content))
    assert main(["report", str(exp), "--out", str(tmp_path / "r")]) == 2
    assert f"error: {exp / file}: not as retinopathy writes it (edited by hand?)" in capsys.readouterr().err


def test_a_run_whose_files_were_edited_or_lost_is_said_and_the_others_reported(experiment, tmp_path, capsys):
    """An evaluation's metrics.json cut short or of another shape, a lost best.pt or metrics.csv: that run's cell
    says so (the other runs are still reported); a config.yaml section of the wrong shape is named (they gave
    KeyError, AttributeError, ValueError tracebacks)."""
    exp = tmp_path / "tiny"
    shutil.copytree(experiment / "runs" / "tiny", exp)
    run, other = exp / "resnet18-scratch", exp / "resnet18-pretrained"
    metrics = run / "eval" / "metrics.json"
    text = metrics.read_text()
    for content in (text[:100], "[]", json.dumps({"split": "test", "checkpoint": "x/best.pt", "epoch": 0}),
                    json.dumps({**json.loads(text), "accuracy": "high"})):  # a TypeError traceback
        metrics.write_text(content)
        assert main(["report", str(exp), "--out", str(tmp_path / "r")]) == 0
        md = (tmp_path / "r" / "report.md").read_text()
        assert f"Missing: resnet18-scratch - not evaluated: {metrics}: " in md
        assert "; delete it and run `retinopathy evaluate" in md
        assert md_table(md, "### All runs")[0]["Test accuracy"] != "-"  # the other run is still there
    metrics.write_text(text)
    (run / "checkpoints" / "best.pt").rename(run / "best.pt.moved")
    (run / "eval" / "metrics.json").unlink()
    (other / "metrics.csv").unlink()
    assert main(["report", str(exp), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"{run / 'checkpoints' / 'best.pt'}, the checkpoint to evaluate, is missing: put it back" in md
    assert f"{other / 'metrics.csv'} is missing or empty: no curves or per-epoch numbers" in md
    for section in ("train: 5", "data: 5", "train: {epochs: x}"):
        config = yaml.safe_load((other / "config.yaml").read_text())
        key, value = section.split(": ", 1)
        (run / "config.yaml").write_text(yaml.safe_dump({**config, key: yaml.safe_load(value)}))
        assert main(["report", str(exp), "--out", str(tmp_path / "r")]) == 2
        assert f"error: {run / 'config.yaml'}: its {key}" in capsys.readouterr().err


def test_evaluations_on_training_images_or_with_images_skipped_are_marked(experiment, tmp_path):
    """An evaluation that graded images the run trained on (another split file) is marked as overstating, in its
    cell and at a glance; one that ``--skip-bad`` left images out of says how many."""
    exp = tmp_path / "tiny"
    shutil.copytree(experiment / "runs" / "tiny", exp)
    metrics = exp / "resnet18-scratch" / "eval" / "metrics.json"
    m = json.loads(metrics.read_text())
    metrics.write_text(json.dumps({**m, "training_images": 3, "selection_images": 1, "skipped": 2}))
    assert main(["report", str(exp), "--out", str(tmp_path / "r"), "--title", "<b>mine</b> `a<b`"]) == 0
    md, page = (tmp_path / "r" / "report.md").read_text(), (tmp_path / "r" / "index.html").read_text()
    assert (f"**⚠ of its {m['count']} images, 3 are in the run's training split and 1 in its val split, which chose "
            "its checkpoint (and any thresholds): the numbers overstate**") in md
    assert "Warning: the evaluations of resnet18-scratch include images the run trained on or chose its" in md
    other = exp / "resnet18-pretrained" / "eval" / "metrics.json"  # a lower kappa, on unseen images, comes first
    other.write_text(json.dumps({**json.loads(other.read_text()), "kappa": 0.2, "ci95": None}))
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "kappa": 0.9, "ci95": None}))
    assert main(["report", str(exp), "--out", str(tmp_path / "r2")]) == 0
    glance = (tmp_path / "r2" / "report.md").read_text().split("Highest quadratic kappa: ")[1].split("\n")[0]
    assert glance.startswith("ResNet18, ImageNet-pretrained - kappa 0.200")
    assert "2 image(s) left out by --skip-bad (its skipped.csv)" in md and "2 image(s) left out by --skip" in page
    assert md.startswith("# &lt;b>mine&lt;/b> `a<b`\n")  # a tag escaped; a code span shown as it is


def test_a_cell_stopped_short_after_its_evaluation_is_marked_unfinished(experiment, tmp_path):
    """A finished, evaluated cell run again with more epochs and interrupted before a better checkpoint: its
    evaluation still applies to best.pt and is shown, and the report says the run is unfinished, not done."""
    exp = tmp_path / "tiny"
    shutil.copytree(experiment / "runs" / "tiny", exp)
    config_file = exp / "resnet18-scratch" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["train"]["epochs"] = 3  # one epoch saved of three
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["report", str(exp), "--out", str(tmp_path / "r")]) == 0
    md, page = (tmp_path / "r" / "report.md").read_text(), (tmp_path / "r" / "index.html").read_text()
    rows = {r["Run"]: r for r in md_table(md, "### All runs")}
    assert '<li class="warn">Unfinished: resnet18-scratch' in page  # shown as a warning
    assert rows["resnet18-scratch"]["Status"] == "incomplete" and rows["resnet18-scratch"]["Test accuracy"] != "-"
    assert "Unfinished: resnet18-scratch (its evaluation of the best checkpoint so far is shown): trained 1 of 3 " \
        "epochs; continue with" in md
    assert "unfinished: trained 1 of 3 epochs" in page
    assert rows["resnet18-pretrained"]["Status"] == "done"


def test_a_run_that_changes_its_preset_says_what_it_changed():
    """'preset lab' only for the lab's recipe as it is; a run that changed some of its options names them."""
    from retinopathy.reporting.report import _preset_text
    from retinopathy.training.config import PRESETS

    lab = {"preset": "lab", **PRESETS["lab"]}
    assert _preset_text(lab) == ", preset lab" and _preset_text({}) == ""
    assert _preset_text({**lab, "lr": 0.01, "class_weights": "inverse", "freeze_epochs": 0}) == \
        ", preset lab with lr, freeze_epochs, class_weights changed"
    assert _preset_text({**lab, "model": "resnet50", "batch_size": 6}) == ", preset lab"  # the lab's for resnet50
    assert _preset_text({**lab, "model": "resnet50", "batch_size": 12}) == ", preset lab with batch_size changed"
    assert _preset_text({**lab, "model": "resnet18", "batch_size": 32}) == ", preset lab with batch_size changed"


def test_missing_numbers_read_alike_everywhere():
    """None and NaN (an undefined kappa, a metrics.json edited by hand) print as the same mark, never 'nan'."""
    from retinopathy.reporting.text import number

    assert [number(v) for v in (None, float("nan"), 0.25)] == ["-", "-", "0.250"]
    assert number(float("nan"), none="n/a") == "n/a"


def _pending_experiment(root: Path, name: str, cells: dict, description: str | None = None) -> Path:
    """An experiment folder of cells that have not started (cell.yaml only), as the runner leaves it before its
    first cell trains: enough for the report's text."""
    exp = root / name
    for cell, (train, values) in cells.items():
        (exp / cell).mkdir(parents=True)
        (exp / cell / "cell.yaml").write_text(yaml.safe_dump(train))
    (exp / "experiment.json").write_text(json.dumps({"name": name, "description": description, "cells": {
        cell: {"status": "pending", "dir": cell, "values": values} for cell, (train, values) in cells.items()}}))
    return exp


def test_recipes_are_listed_for_named_variants_once_each(tmp_path):
    """A recipe that every model shares is given once (not per model), without the variant's own name as an
    option; a grid without named variants lists none; a description two experiments share is said once."""
    from retinopathy.reporting.report import build_report

    cells = {f"{v}-{m}": ({"model": m, "pretrained": False, "lr": lr}, {"variant": v, "model": m})
             for v, lr in (("base", 0.001), ("fast", 0.01)) for m in ("resnet18", "resnet50")}
    build_report([_pending_experiment(tmp_path, "abl", cells)], tmp_path / "r1")
    lines = (tmp_path / "r1" / "report.md").read_text().splitlines()
    fast = next(line for line in lines if line.startswith("- **from scratch, fast**: "))
    assert "lr 0.01" in fast and "ResNet18" not in fast and "variant" not in fast
    grid = {f"lr{lr}": ({"model": "resnet18", "pretrained": False, "lr": lr}, {"lr": lr}) for lr in (0.1, 0.2)}
    build_report([_pending_experiment(tmp_path, "grid", grid)], tmp_path / "r2")
    assert "Variants, by the options" not in (tmp_path / "r2" / "report.md").read_text()
    one = {"m": ({"model": "resnet18", "pretrained": False}, {"model": "resnet18"}),
           "n": ({"model": "resnet18", "pretrained": False, "lr": 0.5}, {"model": "resnet18"})}
    halves = [_pending_experiment(tmp_path, name, one, description="Both halves of one comparison") for name in "ab"]
    build_report(halves, tmp_path / "r3")
    assert (tmp_path / "r3" / "report.md").read_text().count("Both halves of one comparison") == 1


def test_the_models_and_training_lines_say_what_each_option_did(tmp_path):
    """Eye pairing on the Model line, --norm-weight-decay on the Training line, minutes from a minute on."""
    from retinopathy.reporting.text import training_text
    from retinopathy.reporting.report import _grading_text, run_details
    from retinopathy.reporting.runs import Run

    assert _grading_text({"objective": "classification", "pair_eyes": True}).endswith(
        "; sees both eyes of a patient (features concatenated)")
    assert "weight decay 0.05 (0.0 on normalisation layers)," in training_text(
        {"optimizer": "adamw", "weight_decay": 0.05, "norm_weight_decay": 0.0})
    assert "normalisation" not in training_text({"optimizer": "adamw", "weight_decay": 0.05})
    for secs, shown in ((59.5, "59.5 s"), (90, "1.5 min"), (900, "15.0 min")):
        run = Run("r", tmp_path, "done", rows=[{"epoch": 0, "epoch_seconds": secs}], numbers={"seconds": secs})
        assert dict(run_details(run))["Time"].startswith(f"{shown} over 1 epoch")


def test_report_does_not_replace_pages_it_did_not_write(experiment, tmp_path, capsys):
    """--out a folder that holds someone's index.html or report.md: refused (they were replaced); a report's own
    pages, and a file given as --out, are named."""
    site = tmp_path / "site"
    site.mkdir()
    for name, text in (("index.html", "<h1>my site</h1>\n"), ("report.md", "# my notes\n"),
                       ("report.md", "# Notes\n\nGenerated by hand.\n")):
        (site / name).write_text(text)
        assert main(["report", str(experiment / "runs" / "tiny"), "--out", str(site)]) == 2
        assert (f"--out {site} holds {name}, not a report's: the report would replace it"
                in capsys.readouterr().err)
        assert (site / name).read_text() == text and len(list(site.iterdir())) == 1
        (site / name).unlink()
    assert main(["report", str(experiment / "runs" / "tiny"), "--out", str(site)]) == 0
    assert main(["report", str(experiment / "runs" / "tiny"), "--out", str(site)]) == 0  # its own: replaced
    figures = sorted(p.name for p in site.glob("*.png"))
    assert "confusion.png" in figures and len(figures) == 3
    (site / "photo.jpeg").write_bytes(b"")  # a folder of photographs: predict would grade the figures there
    assert main(["report", str(experiment / "runs" / "tiny"), "--out", str(site)]) == 2
    assert (f"--out {site} is a folder of photographs (photo.jpeg): write into a folder of its own, e.g. "
            f"{tmp_path / 'site-report'}") in capsys.readouterr().err
    assert sorted(p.name for p in site.glob("*.png")) == figures
    (tmp_path / "afile").write_text("x")
    assert main(["report", str(experiment / "runs" / "tiny"), "--out", str(tmp_path / "afile")]) == 2
    assert "afile: a file, not a folder (--out takes a folder)" in capsys.readouterr().err
