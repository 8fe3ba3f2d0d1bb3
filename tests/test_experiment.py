"""``retinopathy experiment``: a pretrained cell without weights is skipped with its reason (fast, offline), an
interrupted cell resumes where it stopped, and a re-run leaves finished cells alone."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from retinopathy.cli.main import main
from retinopathy.experiments.runner import ExperimentError, cell_name, load_experiment, prepare_cell
from retinopathy.training.checkpoint import load_checkpoint, save_checkpoint

SCRATCH, PRETRAINED = "resnet18-scratch", "resnet18-pretrained"


def write_config(root: Path, **changes) -> Path:
    cfg = {"name": "grid", "out": str(root / "runs"), "data": str(root / "data"),
           "synth": {"n": 60, "size": 64, "seed": 4, "balanced": True},
           "train": {"epochs": 2, "freeze_epochs": 1, "image_size": 64, "batch_size": 16, "workers": 0},
           "grid": {"model": ["resnet18"], "pretrained": [True, False]},
           "evaluate": {"bootstrap": 20}, "report": {"out": str(root / "report")}, **changes}
    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snapshot(folder: Path) -> dict:
    """{relative path: (mtime_ns, bytes)} of every file under ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """An offline experiment (empty TORCH_HOME) whose scratch cell was stopped after 1 of its 2 epochs, and
    killed, as it were, after writing epoch 2's metrics row but before its checkpoint (a row whose loss is 999)."""
    root = tmp_path_factory.mktemp("experiment")
    config = write_config(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root / "empty-torch-home"))
        exp = load_experiment(config)
        from retinopathy.data.synth import generate

        generate(root / "data", **exp.synth, progress=False)
        cell = next(c for c in exp.cells if c.name == SCRATCH)
        prepare_cell(cell, exp)
        assert main(["train", "--config", str(cell.dir / "cell.yaml"), "--out", str(cell.dir), "--stop-after", "1",
                     "--quiet"]) == 0
        first_epoch = rows(cell.dir)
        assert len(first_epoch) == 1
        with open(cell.dir / "metrics.csv", "a", newline="") as f:
            csv.DictWriter(f, list(first_epoch[0])).writerow({**first_epoch[0], "epoch": "1", "train_loss": "999"})
        assert main(["experiment", str(config), "--quiet"]) == 0
        yield {"root": root, "config": config, "exp": root / "runs" / "grid", "first_epoch": first_epoch}


def test_interrupted_cell_resumes(interrupted):
    run = interrupted["exp"] / SCRATCH
    after = rows(run)
    assert [r["epoch"] for r in after] == ["0", "1"]
    assert after[0] == interrupted["first_epoch"][0], "the finished epoch was trained again"
    assert after[1]["train_loss"] != "999", "the row without a checkpoint was taken for a trained epoch"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert (run / "eval" / "metrics.json").exists() and (run / "eval" / "confusion_matrix.png").exists()
    status = json.loads((interrupted["exp"] / "experiment.json").read_text())
    assert status["cells"][SCRATCH]["status"] == "done"


def test_a_resumed_cell_keeps_the_loader_workers_it_started_with(interrupted, tmp_path):
    """A cell whose file sets no workers resumes with those its run recorded (another machine's core count), as
    ``train --resume`` does, so that the workers' augmentation draws continue; a cell that sets them keeps its own."""
    from retinopathy.experiments.runner import train_argv
    from retinopathy.training.config import parse_args

    run = tmp_path / "cell"
    shutil.copytree(interrupted["exp"] / SCRATCH, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["workers"], config["engine"]["workers"] = None, 3
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    cell = yaml.safe_load((run / "cell.yaml").read_text())
    (run / "cell.yaml").write_text(yaml.safe_dump({k: v for k, v in cell.items() if k != "workers"}))
    unset = parse_args(["--config", str(run / "cell.yaml"), "--out", str(run), "--resume", str(run)],
                       run_options=False)  # as the experiment parses a started cell
    assert unset.workers is None
    assert parse_args(train_argv(run, unset, 1), run_options=False).workers == 3
    assert "--resume" not in train_argv(run, unset, 0)  # a new run: this machine's
    unset.workers = 0  # a cell that sets them: its file's
    assert "--workers" not in train_argv(run, unset, 1)


def test_cells_are_evaluated_as_evaluate_grades(interrupted, tmp_path):
    """The runner's evaluation is evaluate's with its defaults (fp32), not the training's bf16."""
    run = interrupted["exp"] / SCRATCH
    assert main(["evaluate", str(run / "checkpoints" / "best.pt"), "--data", str(interrupted["root"] / "data"),
                 "--split", "test", "--out", str(tmp_path), "--quiet", "--bootstrap", "0"]) == 0
    scores = {}
    for folder in (run / "eval", tmp_path):
        with open(folder / "predictions.csv", newline="") as f:
            scores[folder] = [r["score"] for r in csv.DictReader(f)]
    assert scores[run / "eval"] == scores[tmp_path]
    entry = json.loads((interrupted["exp"] / "experiment.json").read_text())["cells"][SCRATCH]
    m = json.loads((run / "eval" / "metrics.json").read_text())  # experiment.json records the evaluation's numbers
    assert [entry[k] for k in ("test_accuracy", "kappa", "macro_f1", "majority_accuracy")] == \
        [m[k] for k in ("accuracy", "kappa", "macro_f1", "majority_accuracy")]
    assert m["accuracy"] != m["majority_accuracy"]  # so that one taken for the other would show


@pytest.mark.timeout(120)
def test_pretrained_cell_without_weights_is_skipped_with_reason(interrupted):
    exp = interrupted["exp"]
    skipped = json.loads((exp / PRETRAINED / "SKIPPED.json").read_text())
    assert "not cached" in skipped["reason"] and "resnet18-f37072fd.pth" in skipped["reason"]
    assert not (exp / PRETRAINED / "metrics.csv").exists()
    status = json.loads((exp / "experiment.json").read_text())["cells"][PRETRAINED]
    assert status["status"] == "skipped" and status["seconds"] < 60, "the offline weights check must fail fast"
    md = (interrupted["root"] / "report" / "report.md").read_text()
    line = next(line for line in md.splitlines() if line.startswith(f"- Missing: {PRETRAINED}"))
    assert "skipped" in line and "not cached" in line
    page = (interrupted["root"] / "report" / "index.html").read_text()
    assert f'data-run="{PRETRAINED}"' in page and 'data-status="skipped"' in page


@pytest.mark.timeout(120)
def test_an_experiment_whose_every_cell_is_skipped_exits_1(interrupted, tmp_path, monkeypatch, capsys):
    """Nothing trained is no success for a script or CI (it exited 0)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    cfg = yaml.safe_load(interrupted["config"].read_text())
    only = tmp_path / "only-pretrained.yaml"
    only.write_text(yaml.safe_dump({**cfg, "out": str(tmp_path / "runs"), "synth": None, "report": None,
                                    "data": str(interrupted["root"] / "data"), "grid": {"pretrained": [True]}}))
    assert main(["experiment", str(only), "--quiet", "--no-report"]) == 1
    assert ": 1 skipped in " in capsys.readouterr().out


def test_rerun_leaves_finished_cells_alone(interrupted, capsys):
    exp, config = interrupted["exp"], str(interrupted["config"])
    run = exp / SCRATCH
    before = snapshot(run)
    capsys.readouterr()
    took = json.loads((exp / "experiment.json").read_text())["cells"][SCRATCH]["seconds"]
    assert main(["experiment", config, "--quiet", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert f"{SCRATCH}: finished earlier" in out and f"{PRETRAINED}: skipped" in out
    assert snapshot(run) == before
    assert json.loads((exp / "experiment.json").read_text())["cells"][SCRATCH]["seconds"] == took  # not ~0 s
    # A lost evaluation is redone without training again.
    (run / "eval" / "metrics.json").unlink()
    assert main(["experiment", config, "--quiet", "--no-report"]) == 0
    after = snapshot(run)
    assert "eval/metrics.json" in after
    training = ("cell.yaml", "config.yaml", "metrics.csv", "split.csv", "checkpoints/last.pt", "checkpoints/best.pt")
    assert [after[k] for k in training] == [before[k] for k in training]
    # So is an evaluation of another split of the data (evaluate --split-file) left in the cell's eval/.
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    (run / "eval" / "metrics.json").write_text(json.dumps({**metrics, "split_file": str(run / "other.csv")}))
    assert main(["experiment", config, "--quiet", "--no-report"]) == 0
    assert json.loads((run / "eval" / "metrics.json").read_text())["split_file"] is None
    # So is the evaluation of a best.pt saved again since (thresholds retuned by hand, say).
    best = run / "checkpoints" / "best.pt"
    save_checkpoint(load_checkpoint(best), best)
    assert main(["experiment", config, "--quiet", "--no-report"]) == 0
    assert json.loads((run / "eval" / "metrics.json").read_text())["checkpoint_id"] == load_checkpoint(best)["save_id"]
    # And an evaluation with other bootstrap resamples than the file now asks for.
    cfg = yaml.safe_load(interrupted["config"].read_text())
    other = interrupted["config"].with_name("more-resamples.yaml")
    other.write_text(yaml.safe_dump({**cfg, "evaluate": {"bootstrap": 30}}))
    assert main(["experiment", str(other), "--quiet", "--no-report"]) == 0
    assert json.loads((run / "eval" / "metrics.json").read_text())["ci95"]["resamples"] == 30
    # And one of another split, written there by hand: not the cell's test result.
    assert main(["evaluate", str(best), "--data", str(interrupted["root"] / "data"), "--split", "val", "--out",
                 str(run / "eval"), "--bootstrap", "30", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["experiment", str(other), "--quiet", "--no-report"]) == 0
    assert f"{SCRATCH}: finished earlier" not in capsys.readouterr().out
    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert m["split"] == "test" and json.loads((exp / "experiment.json").read_text())["cells"][SCRATCH]["kappa"] == \
        m["kappa"]
    assert main(["experiment", config, "--quiet", "--no-report"]) == 0  # back to the fixture's 20


def test_a_cell_that_ran_with_other_options_is_refused_after_the_values_are_checked(interrupted, capsys):
    """A mistyped value for a cell that has run is named as one (it was called a change of options, with the
    advice to delete the finished cell); a real change is refused naming each cell it concerns, nothing touched."""
    cfg = {**yaml.safe_load(interrupted["config"].read_text()), "grid": {"model": ["resnet18"], "pretrained": [False]}}
    run = interrupted["exp"] / SCRATCH
    before = snapshot(run)
    other = interrupted["config"].with_name("changed.yaml")
    for change, said in (({"lr": "fast"}, f"{other}: cell {SCRATCH}: lr: 'fast': could not convert"),
                         ({"lr": 0.05, "optimizer": "sgd"}, f"1 cell(s) were run with other options than {other} gives "
                                                            f"now: {run} (lr: 0.001 -> 0.05, optimizer: ")):
        other.write_text(yaml.safe_dump({**cfg, "train": {**cfg["train"], **change}}))
        assert main(["experiment", str(other), "--quiet", "--no-report"]) == 2
        err = capsys.readouterr().err
        assert said in err and ("run with other options" in err) == ("optimizer" in change), err
    assert snapshot(run) == before


def test_a_dry_run_checks_and_lists_the_cells_and_writes_nothing(interrupted, tmp_path, capsys):
    before = snapshot(interrupted["exp"])
    assert main(["experiment", str(interrupted["config"]), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"experiment grid: 2 cell(s) -> {interrupted['exp']} (data {interrupted['root'] / 'data'})"
    assert out[1].startswith(f"[1/2] {PRETRAINED} (skipped before (no ImageNet weights)): epochs: 2, freeze_epochs: 1")
    assert out[2].startswith(f"[2/2] {SCRATCH} (finished, evaluated): ") and out[2].endswith("pretrained: False")
    cfg = yaml.safe_load(interrupted["config"].read_text())
    other = tmp_path / "other.yaml"  # the same experiment asked for more: what a run would do, or refuse
    for change, rc, said in (({"train": {**cfg["train"], "epochs": 3}}, 0, f"{SCRATCH} (2 of 3 epochs trained)"),
                             ({"evaluate": {"bootstrap": 30}}, 0, f"{SCRATCH} (finished, to be evaluated)"),
                             ({"train": {**cfg["train"], "lr": 0.01}}, 2, "1 cell(s) were run with other options"),
                             ({"synth": {**cfg["synth"], "seed": 9}}, 2, "holds a synthetic set made with seed: 4")):
        other.write_text(yaml.safe_dump({**cfg, **change}))
        assert main(["experiment", str(other), "--dry-run"]) == rc
        assert said in "".join(capsys.readouterr())
    assert snapshot(interrupted["exp"]) == before
    last = interrupted["exp"] / SCRATCH / "checkpoints" / "last.pt"  # deleted once finished, as docs/training.md
    # advises
    last.rename(tmp_path / "last.pt")
    try:
        assert main(["experiment", str(interrupted["config"]), "--dry-run"]) == 0
        assert f"{SCRATCH} (finished, evaluated)" in capsys.readouterr().out
    finally:
        (tmp_path / "last.pt").rename(last)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**cfg, "out": str(tmp_path / "runs"), "train": {**cfg["train"], "lr": -1}}))
    assert main(["experiment", str(bad), "--dry-run"]) == 2
    assert f"{bad}: cell {PRETRAINED}: lr: -1.0: a learning rate above 0" in capsys.readouterr().err
    moved = tmp_path / "moved"  # the data moved (another RETINOPATHY_SHARED_DATA): its finished cells are no change
    shutil.copytree(interrupted["root"] / "data", moved)
    assert main(["experiment", str(interrupted["config"]), "--data", str(moved), "--dry-run"]) == 0
    assert f"{SCRATCH} (finished" in capsys.readouterr().out
    labels = moved / "trainLabels.csv"  # regraded: other photographs, as far as the run can tell: a change
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join([lines[0], *(f"{r.split(',')[0]},{(int(r.split(',')[1]) + 1) % 5}" for r in lines[1:])])
                      + "\n")
    assert main(["experiment", str(interrupted["config"]), "--data", str(moved), "--dry-run"]) == 2
    assert "were run with other options" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    broken = tmp_path / "broken"  # a truncated photograph: every cell would stop at it, so the dry run does
    shutil.copytree(interrupted["root"] / "data", broken)
    photo = sorted(broken.glob("*.jpeg"))[0]
    photo.write_bytes(photo.read_bytes()[:200])
    bad.write_text(yaml.safe_dump({**cfg, "out": str(tmp_path / "runs"), "synth": None, "data": str(broken)}))
    assert main(["experiment", str(bad), "--dry-run"]) == 2
    assert str(photo) in capsys.readouterr().err
    bad.write_text(yaml.safe_dump({**cfg, "out": str(tmp_path / "runs"), "synth": None, "data": str(broken),
                                   "train": {**cfg["train"], "skip_bad": True}}))
    assert main(["experiment", str(bad), "--dry-run"]) == 0  # what --skip-bad would drop is no refusal
    bad.write_text(yaml.safe_dump({**cfg, "out": str(tmp_path / "runs"), "synth": None, "data": str(broken),
                                   "train": {**cfg["train"], "skip_bad": True, "val_fraction": 0,
                                             "select_on": "val"}}))
    assert main(["experiment", str(bad), "--dry-run"]) == 2  # no val images to select on: every cell would stop
    assert "no image is in the val split, which --select-on val selects on" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_synthetic_set_made_otherwise_than_the_file_asks_is_refused(interrupted, capsys):
    """synth: edited after its set was made (more images, another seed) was ignored: the cells kept reporting
    on the old set as if it were the new one."""
    cfg = yaml.safe_load(interrupted["config"].read_text())
    other = interrupted["config"].with_name("more-images.yaml")
    other.write_text(yaml.safe_dump({**cfg, "synth": {**cfg["synth"], "n": 90, "seed": 5}}))
    assert main(["experiment", str(other), "--quiet", "--no-report"]) == 2
    assert (f"{other}: synth: {interrupted['root'] / 'data'} holds a synthetic set made with n: 60, seed: 4, where "
            "the file asks for n: 90, seed: 5; delete") in capsys.readouterr().err


def test_a_refused_continuation_keeps_the_evaluation(interrupted, monkeypatch, capsys):
    """More epochs for a finished cell whose training then fails (say, its resume is refused): the evaluation of
    the best.pt that is still there stays. Fewer epochs than it trained: it stays as it is, with a warning."""
    from retinopathy.errors import RetinopathyError
    from retinopathy.training import train

    def refuse(args):
        raise RetinopathyError("resume refused")

    run = interrupted["exp"] / SCRATCH
    before = snapshot(run / "eval")
    cfg = yaml.safe_load(interrupted["config"].read_text())
    longer = interrupted["config"].with_name("longer.yaml")
    longer.write_text(yaml.safe_dump({**cfg, "train": {**cfg["train"], "epochs": 3}}))
    monkeypatch.setattr(train, "main", refuse)
    assert main(["experiment", str(longer), "--quiet", "--no-report"]) == 1
    assert "resume refused" in capsys.readouterr().err
    assert snapshot(run / "eval") == before
    monkeypatch.undo()
    shorter = interrupted["config"].with_name("shorter.yaml")
    shorter.write_text(yaml.safe_dump({**cfg, "train": {**cfg["train"], "epochs": 1}}))
    assert main(["experiment", str(shorter), "--quiet", "--no-report"]) == 0
    assert "trained 2 epochs, more than the 1 now asked for" in capsys.readouterr().err
    assert main(["experiment", str(interrupted["config"]), "--quiet", "--no-report"]) == 0
    assert snapshot(run / "eval") == before  # finished earlier again


def test_an_unfinished_cell_the_file_then_asks_fewer_epochs_of_is_said_to_stay_unfinished(interrupted, tmp_path,
                                                                                         capsys):
    """A cell resumed for 4 epochs and stopped after 3, then the file lowered to 3: the experiment has nothing
    to train, says the run stays unfinished, and the report does not offer a re-run of the experiment as the way
    on (it would do nothing)."""
    cfg = yaml.safe_load(interrupted["config"].read_text())
    shutil.copytree(interrupted["exp"], tmp_path / "runs" / "grid")
    run = tmp_path / "runs" / "grid" / SCRATCH
    assert main(["train", "--resume", str(run), "--epochs", "4", "--stop-after", "1", "--quiet"]) == 0
    lowered = tmp_path / "lowered.yaml"
    lowered.write_text(yaml.safe_dump({**cfg, "out": str(tmp_path / "runs"), "train": {**cfg["train"], "epochs": 3},
                                       "report": {"out": str(tmp_path / "report")}}))
    assert main(["experiment", str(lowered), "--quiet"]) == 0
    assert (f"warning: {run} has trained 3 of the 4 epochs it was started with, and the file asks for 3 now; it "
            "stays unfinished") in capsys.readouterr().err
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"trained 3 of 4 epochs; continue with `retinopathy train --resume {run}`" in md
    assert "or by re-running the experiment" not in md


def test_more_epochs_that_leave_best_pt_keep_its_evaluation(interrupted, monkeypatch, capsys):
    """Training on that does not change best.pt (here: a stand-in that trains nothing) keeps the evaluation."""
    from retinopathy.training import train

    run = interrupted["exp"] / SCRATCH
    before = snapshot(run / "eval")
    cfg = yaml.safe_load(interrupted["config"].read_text())
    longer = interrupted["config"].with_name("longer.yaml")
    longer.write_text(yaml.safe_dump({**cfg, "train": {**cfg["train"], "epochs": 3}}))
    monkeypatch.setattr(train, "main", lambda args: None)
    assert main(["experiment", str(longer), "--quiet", "--no-report"]) == 0
    assert f"{SCRATCH}: best.pt is the one evaluated before; its evaluation stands" in capsys.readouterr().out
    assert snapshot(run / "eval") == before
    monkeypatch.undo()
    assert main(["experiment", str(interrupted["config"]), "--quiet", "--no-report"]) == 0  # cell.yaml back


def test_an_interrupted_threshold_retune_is_redone(tmp_path, capsys):
    """train+selection retunes best.pt after the last epoch; a kill during it leaves last.pt finished, and the
    runner must not evaluate the per-epoch thresholds as if it had happened."""
    config = write_config(tmp_path, train={"epochs": 1, "freeze_epochs": 0, "image_size": 32, "batch_size": 16,
                                           "workers": 0, "objective": "regression",
                                           "threshold_data": "train+selection"}, grid={"pretrained": [False]})
    exp = load_experiment(config)
    from retinopathy.data.synth import generate

    generate(tmp_path / "data", **exp.synth, progress=False)
    cell = exp.cells[0]
    prepare_cell(cell, exp)
    assert main(["train", "--config", str(cell.dir / "cell.yaml"), "--out", str(cell.dir), "--quiet"]) == 0
    best = cell.dir / "checkpoints" / "best.pt"
    ckpt = load_checkpoint(best)
    assert ckpt["model_info"]["threshold_data"] == "train+val"
    ckpt["model_info"]["threshold_data"] = "val"  # as the kill leaves it
    save_checkpoint(ckpt, best)
    capsys.readouterr()
    assert main(["experiment", str(config), "--quiet", "--no-report"]) == 0
    assert "retuning best.pt's thresholds" in capsys.readouterr().out
    assert load_checkpoint(best)["model_info"]["threshold_data"] == "train+val"
    assert json.loads((cell.dir / "eval" / "metrics.json").read_text())["epoch"] == 0


def test_a_runtime_option_taken_out_of_the_file_is_back_at_its_default(tmp_path):
    """An option a re-run may change (amp, device, epochs...), no longer in the file, is its default when the cell
    goes on, not what the cell ran with: the file is the whole cell (as --dry-run lists it)."""
    train = {"epochs": 1, "freeze_epochs": 0, "image_size": 32, "batch_size": 16, "workers": 0}
    grid = {"model": ["resnet18"], "pretrained": [False]}
    config = write_config(tmp_path, train={**train, "amp": "none"}, grid=grid)
    assert main(["experiment", str(config), "--quiet", "--no-report"]) == 0
    run = tmp_path / "runs" / "grid" / SCRATCH
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["amp"] == "none"
    config = write_config(tmp_path, train={**train, "epochs": 2}, grid=grid)
    assert main(["experiment", str(config), "--quiet", "--no-report"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["amp"] == "auto"


def test_the_demo_fails_when_a_cell_fails(tmp_path, monkeypatch, capsys):
    """``make demo`` exits 1 and says so when a cell failed (it said "demo finished" and exited 0)."""
    from retinopathy import demo
    from retinopathy.errors import RetinopathyError
    from retinopathy.experiments import runner

    config = write_config(tmp_path, train={"epochs": 1, "freeze_epochs": 0, "image_size": 32, "batch_size": 16,
                                           "workers": 0}, grid={"model": ["resnet18"], "pretrained": [False]})

    def fails(*args, **kwargs):
        raise RetinopathyError("a cell that fails")
    monkeypatch.setattr(runner, "run_cell", fails)
    assert demo.main(["--config", str(config), "--quiet"]) == 1
    assert "demo finished in" in (out := capsys.readouterr().out) and "1 cell(s) failed (named above)" in out


def test_sigterm_stops_an_experiment_as_ctrl_c_does(tmp_path):
    """``timeout``, SLURM and ``docker stop`` send SIGTERM: the experiment stops with the way to continue (it was
    killed at once, exit 143, loader workers left behind), and running it again finishes the cell."""
    import signal
    import subprocess
    import sys
    import time

    config = write_config(tmp_path, train={"epochs": 4, "freeze_epochs": 1, "image_size": 32, "batch_size": 16,
                                           "workers": 2}, grid={"model": ["resnet18"], "pretrained": [False]})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "retinopathy", "experiment", str(config), "--no-report"],
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    last = tmp_path / "runs" / "grid" / SCRATCH / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "interrupted; run the same command again: finished cells are skipped, the interrupted one resumes" in err
    assert main(["experiment", str(config), "--quiet", "--no-report"]) == 0
    assert [r["epoch"] for r in rows(last.parents[1])] == [str(e) for e in range(4)]


def test_changed_options_are_refused(interrupted):
    config = write_config(interrupted["root"], train={"epochs": 2, "freeze_epochs": 1, "image_size": 80,
                                                      "batch_size": 16, "workers": 0})
    with pytest.raises(ExperimentError, match=r"image_size: 64 -> 80"):
        exp = load_experiment(config)
        prepare_cell(next(c for c in exp.cells if c.name == SCRATCH), exp)
    # an option written out at its default value is no change
    config = write_config(interrupted["root"], train={"epochs": 2, "freeze_epochs": 1, "image_size": 64,
                                                      "batch_size": 16, "workers": 0, "lr": 0.001, "seed": 0})
    exp = load_experiment(config)
    prepare_cell(next(c for c in exp.cells if c.name == SCRATCH), exp)
    # engine options that leave the numbers as they are, and the objective's own decision, are no change either
    config = write_config(interrupted["root"], train={"epochs": 2, "freeze_epochs": 1, "image_size": 64,
                                                      "batch_size": 16, "workers": 0, "cache_images": True,
                                                      "deterministic": True, "decision": "argmax"})
    exp = load_experiment(config)
    prepare_cell(next(c for c in exp.cells if c.name == SCRATCH), exp)
    exp = load_experiment(write_config(interrupted["root"]))  # the fixture's file and cell.yaml back, as the
    prepare_cell(next(c for c in exp.cells if c.name == SCRATCH), exp)  # later tests expect


def test_an_option_at_its_resolved_default_is_that_value():
    from retinopathy.training.config import option_value

    assert option_value({}, "batch_size") == 32 and option_value({"batch_size": 32}, "batch_size") == 32
    assert option_value({"preset": "lab", "model": "resnet50"}, "batch_size") == 6  # the lab's, as parse_args
    assert option_value({}, "decision") == "argmax" and option_value({"objective": "ordinal"}, "decision") == \
        "thresholds"
    # text as train reads it: YAML leaves 1e-3 (no dot) as text; a cell written so is no change from 0.001
    assert option_value({"lr": "1e-3"}, "lr") == option_value({"lr": 0.001}, "lr") == 0.001
    assert option_value({"image_size": "32"}, "image_size") == 32.0
    assert option_value({"eval_splits": "val, test"}, "eval_splits") == option_value({}, "eval_splits") == "val,test"


def test_a_cell_that_saved_nothing_takes_new_options(tmp_path):
    """A cell that failed before its first epoch (a diverging learning rate, say) left cell.yaml and a header-only
    metrics.csv: once the option is fixed it starts over, instead of every cell being refused."""
    exp = load_experiment(write_config(tmp_path, grid={"model": ["resnet18"]}, variants={"fast": {"lr": 1e12}}))
    cell = exp.cells[0]
    prepare_cell(cell, exp)
    (cell.dir / "metrics.csv").write_text("epoch,phase,lr\n")
    exp = load_experiment(write_config(tmp_path, grid={"model": ["resnet18"]}, variants={"fast": {"lr": 0.05}}))
    assert prepare_cell(exp.cells[0], exp).lr == 0.05


def test_config_errors_name_the_file(tmp_path, capsys):
    config = write_config(tmp_path, train={"epochs": 1, "image_sise": 64})
    assert main(["experiment", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "image_sise" in err
    config = write_config(tmp_path, train={"out": "elsewhere"})
    with pytest.raises(ExperimentError, match="may not set out"):
        load_experiment(config)
    config = write_config(tmp_path, train={"image_size": 64, "image-size": 32})
    with pytest.raises(ExperimentError, match=re.escape(f"{config}: 'train:': image_size is written twice")):
        load_experiment(config)
    # a cell that train would refuse stops the grid before any cell runs, not halfway with a traceback
    for grid, named in (({"model": ["resnet19", "resnet18"]}, "'resnet19' is not a torchvision classification model"),
                        ({"objective": ["classification", "regression"]}, "not to regression")):
        config = write_config(tmp_path, train={"epochs": 1, "label_smoothing": 0.1}, grid=grid)
        assert main(["experiment", str(config)]) == 2
        err = capsys.readouterr().err
        assert named in err and str(config) in err
        assert not (tmp_path / "runs" / "grid").exists()  # no cell.yaml left behind, which report would refuse
    for changes, named in (({"name": ".."}, "name '..' must be letters"),
                           ({"variants": {".hidden": {}}}, "variant name '.hidden' must be letters"),
                           ({"variants": {"experiment.json": {}}}, "variant name 'experiment.json' must be"),
                           ({"variants": {1: {}, "1": {"seed": 2}}}, "variant 1 is written twice")):
        with pytest.raises(ExperimentError, match=re.escape(named)):
            load_experiment(write_config(tmp_path, **changes))
    config = write_config(tmp_path, variants={"w": {"weights": str(tmp_path / "nope.pt")}},
                          grid={"model": ["resnet18"]})
    for argv in (["--dry-run"], []):  # a missing file, found before any cell trains
        assert main(["experiment", str(config), *argv]) == 2
        assert f"cell w-resnet18: weights: {tmp_path / 'nope.pt'} not found" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    config = write_config(tmp_path, data=str(tmp_path / "unmade"), train={"epochs": "two"})
    assert main(["experiment", str(config)]) == 2  # said before the set is generated, not after
    assert "epochs: 'two'" in capsys.readouterr().err and not (tmp_path / "unmade").exists()
    # a value train refuses names the cell and the option, without train's usage text
    config = write_config(tmp_path, grid={"model": ["resnet18"]}, variants={"ok": {}, "bad": {"optimizer": "adam"}})
    assert main(["experiment", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: cell bad-resnet18: optimizer: 'adam' is not one of sgd, adamw" in err and "usage:" not in err
    assert "cell.yaml" not in err  # the cell's file, removed with the others
    assert not (tmp_path / "runs").exists()  # nor an empty folder of the experiment's
    for ev, named in (({"bootstrap": -5}, "bootstrap: -5 is not a whole number >= 0"),
                      ({"bootstrap": "lots"}, "bootstrap: 'lots' is not a whole number >= 0"),
                      ({"batch_size": 0}, "batch_size: 0 is not a whole number >= 1"),
                      ({"bootstrp": 100}, r"evaluate: takes batch_size, bootstrap; not bootstrp \(did you mean "
                                          r"bootstrap\?\)"),
                      ({5: 1, "bootstrp": 1}, r"evaluate: takes batch_size, bootstrap; not 5, bootstrp")):
        with pytest.raises(ExperimentError, match=named):  # with the file, not after the first cell has trained
            load_experiment(write_config(tmp_path, evaluate=ev))
    for change, named in (({"train": {"image_sise": 64}}, r"unknown train option\(s\) in 'train:': image_sise "
                                                           r"\(did you mean image_size\?\)"),  # a misspelling
                          ({"grid": {"lrr": [0.1]}}, r"in 'grid:': lrr \(did you mean lr\?\)"),
                          ({"synth": {"sise": 64}}, r"synth: takes .*; not sise \(did you mean size\?\)"),
                          ({"synth": {5: 1}}, r"synth: takes .*; not 5$")):
        with pytest.raises(ExperimentError, match=named):
            load_experiment(write_config(tmp_path, **change))
    config = write_config(tmp_path, name="nodata", synth=None, data=str(tmp_path / "nowhere"))  # stops once, first
    assert main(["experiment", str(config)]) == 2
    assert f"{config}: data: {tmp_path / 'nowhere'} not found; set data:" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "nodata").exists()
    config = write_config(tmp_path, name="nodata", synth=None, data="nowhere")
    assert main(["experiment", str(config)]) == 2
    assert (f"{config}: data: nowhere not found (a relative path: looked for in the current folder, {os.getcwd()}); "
            "set data:") in capsys.readouterr().err
    # the other sections' values too, with the file, not a traceback from where they are used
    for change, named in (({"synth": {"n": "many"}}, r"synth: need whole numbers .*\(got n='many'"),
                          ({"synth": {"n": 0}}, "synth: need whole numbers n >= 1"),
                          ({"synth": {"format": "x"}}, "synth: format must be one of"),
                          ({"out": 5}, "out: 5 is not a folder"),
                          ({"report": "reports/x"}, "report: takes out: FOLDER"),
                          ({"report": {"output": "x"}}, "report: takes out: FOLDER"),
                          ({"report": {"out": ""}}, "report: takes out: FOLDER")):
        config = write_config(tmp_path, **change)
        with pytest.raises(ExperimentError, match=named):
            load_experiment(config)
        assert main(["experiment", str(config)]) == 2 and str(config) in capsys.readouterr().err
    from retinopathy.data.synth import check_options

    check_options(n=np.int64(10), size=np.int32(64), seed=np.int64(0), test_fraction=np.float32(0.2))  # from Python


def test_cell_names():
    assert cell_name({"model": "resnet50", "pretrained": False}) == "resnet50-scratch"
    assert cell_name({"model": "resnet18", "pretrained": True, "lr": 0.01, "amp": "bf16"}) == \
        "resnet18-pretrained-lr-0.01-amp-bf16"
    assert cell_name({"deterministic": False, "image_size": 96}) == "no-deterministic-image-size-96"


def test_a_grid_is_every_combination_of_its_values(tmp_path):
    exp = load_experiment(write_config(tmp_path, grid={"model": ["resnet18", "resnet50"], "pretrained": [True, False],
                                                       "lr": [0.01]}))
    assert [c.name for c in exp.cells] == ["resnet18-pretrained-lr-0.01", "resnet18-scratch-lr-0.01",
                                           "resnet50-pretrained-lr-0.01", "resnet50-scratch-lr-0.01"]
    assert exp.cells[3].options == {"epochs": 2, "freeze_epochs": 1, "image_size": 64, "batch_size": 16, "workers": 0,
                                     "model": "resnet50", "pretrained": False, "lr": 0.01}
    with pytest.raises(ExperimentError, match="the same cell name twice"):  # names that would share a folder
        load_experiment(write_config(tmp_path, grid={"optimizer": ["a b", "a_b"]}))
    with pytest.raises(ExperimentError, match="cells lr-0.001 and lr-1e-3 train with the same options"):
        load_experiment(write_config(tmp_path, grid={"lr": [0.001, "1e-3"]}))  # YAML reads 1e-3 as text


def test_variants_are_one_change_each(tmp_path):
    config = write_config(tmp_path, grid={"model": ["resnet18"]},
                          variants={"recipe": {}, "small": {"image_size": 32}, "flips": {"augment": "flips"}})
    exp = load_experiment(config)
    assert [c.name for c in exp.cells] == ["recipe-resnet18", "small-resnet18", "flips-resnet18"]
    recipe, small, flips = exp.cells
    assert recipe.options["image_size"] == 64 and small.options["image_size"] == 32
    assert flips.options["augment"] == "flips" and "augment" not in recipe.options
    assert small.values == {"variant": "small", "model": "resnet18"}
    clash = write_config(tmp_path, variants={"big": {"model": "resnet50"}})
    with pytest.raises(ExperimentError, match="variant big sets model, which grid: varies"):
        load_experiment(clash)
    typo = write_config(tmp_path, variants={"x": {"augmnet": "flips"}})
    with pytest.raises(ExperimentError, match="augmnet"):
        load_experiment(typo)
    twice = tmp_path / "twice.yaml"  # PyYAML keeps the last of a key written twice, silently
    twice.write_text("name: twice\ngrid: {model: [resnet18]}\ntrain: {epochs: 1, image_size: 32, epochs: 3}\n")
    with pytest.raises(ExperimentError, match=r"(?s)twice.yaml: not valid YAML \('epochs' is written twice \(first on "
                                              r"line 3\); keep one.*line 3, column 36"):
        load_experiment(twice)


def test_base_file_gives_train_options(tmp_path):
    recipe = write_config(tmp_path, train={"epochs": 2, "image_size": 64, "split_seed": 0, "lr": 0.01})
    recipe.rename(tmp_path / "recipe.yaml")  # its grid: model [resnet18], pretrained [true, false]
    with pytest.raises(ExperimentError, match=r"grid.yaml: base: recipe.yaml has several values of pretrained in its "
                                              "grid:, which base: does not take"):  # they were dropped silently
        load_experiment(write_config(tmp_path, base="recipe.yaml", grid={"split_seed": [1, 2]}))
    for given in ({"train": {"pretrained": False}}, {"variants": {"scratch": {"pretrained": False}}}):  # given here
        assert load_experiment(write_config(tmp_path, base="recipe.yaml", grid={"split_seed": [1]}, **given)).cells
    splits = write_config(tmp_path, base="recipe.yaml", train={"lr": 0.02},
                          grid={"split_seed": [1, 2], "pretrained": [False]})
    exp = load_experiment(splits)
    assert [c.name for c in exp.cells] == ["split-seed-1-scratch", "split-seed-2-scratch"]
    for cell, seed in zip(exp.cells, (1, 2)):  # inherited (one model in its grid too), overridden, varied by grid:
        assert cell.options == {"epochs": 2, "image_size": 64, "lr": 0.02, "model": "resnet18", "split_seed": seed,
                                "pretrained": False}
    (tmp_path / "splits.yaml").write_text(splits.read_text())
    chained = write_config(tmp_path, base="splits.yaml", train={"epochs": 3}, grid={"model": ["resnet18"],
                                                                                     "split_seed": [3]})
    cell = load_experiment(chained).cells[0]  # a base of a base: each file's train: over the one it names
    assert cell.options == {"epochs": 3, "image_size": 64, "lr": 0.02, "split_seed": 3, "model": "resnet18",
                            "pretrained": False}
    loop = write_config(tmp_path, base="grid.yaml")
    with pytest.raises(ExperimentError, match="leads back to itself"):
        load_experiment(loop)
    missing = write_config(tmp_path, base="nowhere.yaml")  # the file that names it is named, and where it looked
    with pytest.raises(ExperimentError, match=r"grid.yaml: base: 'nowhere.yaml' not found \(looked for .*nowhere.yaml: "
                                              r"a path relative to grid.yaml's folder\)"):
        load_experiment(missing)
    with pytest.raises(ExperimentError, match="grid.yaml: base: '' is a folder"):
        load_experiment(write_config(tmp_path, base=""))
    (tmp_path / "plain.yaml").write_text("base: recipe.yaml\nlr: 0.2\n")  # timm-style: options at the top level
    with pytest.raises(ExperimentError, match=r"unknown key\(s\) lr; .* \(lr: training options go under train:\)"):
        load_experiment(tmp_path / "plain.yaml")
    (tmp_path / "typo.yaml").write_text("base: recipe.yaml\ntrian: {lr: 0.2}\n")
    with pytest.raises(ExperimentError, match=r"unknown key\(s\) trian \(did you mean train\?\)"):
        load_experiment(tmp_path / "typo.yaml")


@pytest.mark.parametrize("config", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_load(config, tmp_path):
    """Every file in configs/ reads, and each cell's options parse as `retinopathy train` reads its cell.yaml."""
    from retinopathy.training.config import parse_args

    exp = load_experiment(config)
    assert exp.cells
    for cell in exp.cells:
        (tmp_path / "cell.yaml").write_text(yaml.safe_dump(cell.options))
        args = parse_args(["--config", str(tmp_path / "cell.yaml"), "--data", "somewhere", "--out", "runs/x"])
        assert {k: getattr(args, k) for k in cell.options} == cell.options


def test_a_failing_cell_does_not_stop_the_others(tmp_path, capsys, monkeypatch):
    """Weights that do not fit, or cannot be read, fail their cell (not 'skipped': nothing to download) with the
    reason; the next cell still runs and the command exits 1."""
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "misfit.pth")
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04 not a whole file")
    config = write_config(tmp_path, grid={"model": ["resnet18"]},
                          variants={"misfit": {"weights": str(tmp_path / "misfit.pth")},
                                    "cut": {"weights": str(tmp_path / "cut.pth")}})
    assert main(["experiment", str(config), "--quiet", "--no-report"]) == 1
    status = json.loads((tmp_path / "runs" / "grid" / "experiment.json").read_text())["cells"]
    assert [c["status"] for c in status.values()] == ["failed", "failed"]
    assert "misfit.pth: the weights do not fit resnet18" in status["misfit-resnet18"]["reason"]
    assert "cut.pth cannot be read" in status["cut-resnet18"]["reason"]
    assert "misfit-resnet18: failed - " in capsys.readouterr().err
    # a new run interrupted before a cell's turn keeps that cell's last status and reason
    from retinopathy.experiments import runner

    def interrupted_run(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_cell", interrupted_run)
    assert main(["experiment", str(config), "--quiet", "--no-report"]) == 130
    status = json.loads((tmp_path / "runs" / "grid" / "experiment.json").read_text())["cells"]
    assert status["cut-resnet18"]["status"] == "failed" and "cut.pth cannot be read" in status["cut-resnet18"]["reason"]
    assert status["misfit-resnet18"]["status"] == "incomplete"  # interrupted in its turn: not its old failure
    other = write_config(tmp_path, grid={"model": ["resnet34"]},
                         variants={"cut": {"weights": str(tmp_path / "cut.pth")}})
    assert main(["experiment", str(other), "--quiet", "--no-report"]) == 130  # the same name: and out:, another grid
    status = json.loads((tmp_path / "runs" / "grid" / "experiment.json").read_text())["cells"]
    assert list(status) == ["cut-resnet34"]  # the earlier cells saved no run: nothing of theirs to keep on record


def test_a_finished_cell_whose_last_pt_was_deleted_stays_finished(interrupted, tmp_path, capsys):
    """The README suggests deleting last.pt of finished runs: the experiment still sees the cell as finished, and
    neither it nor `train` trains over it; a continuation is refused with what to do."""
    import shutil

    shutil.copytree(interrupted["exp"], tmp_path / "runs" / "grid")
    config = write_config(tmp_path, data=str(interrupted["root"] / "data"))
    run = tmp_path / "runs" / "grid" / SCRATCH
    (run / "checkpoints" / "last.pt").unlink()
    before = snapshot(run)
    assert main(["experiment", str(config), "--quiet", "--no-report"]) == 0
    assert f"{SCRATCH}: finished earlier" in capsys.readouterr().out
    assert snapshot(run) == before
    cfg = yaml.safe_load(config.read_text())
    longer = config.with_name("longer.yaml")
    longer.write_text(yaml.safe_dump({**cfg, "train": {**cfg["train"], "epochs": 3}}))
    assert main(["experiment", str(longer), "--quiet", "--no-report"]) == 1
    assert "checkpoints/last.pt is gone, so its 2 of 3 epochs cannot continue" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet"]) == 2
    assert "its checkpoints/last.pt is gone (deleted once the run finished?)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", str(interrupted["root"] / "data"), "--out", str(run), "--no-pretrained", "--quiet"])
    assert "already holds a finished run (checkpoints/best.pt; its last.pt is gone" in capsys.readouterr().err
    after = snapshot(run)
    assert {k: v for k, v in after.items() if k != "cell.yaml"} == {k: v for k, v in before.items() if k != "cell.yaml"}


def test_another_files_runs_stay_on_record_and_do_not_decide_the_exit(tmp_path, monkeypatch, capsys):
    """The folder's record keeps cells another file with the same name and out ran (their folders hold runs), not
    cells whose folders are gone, and says so at the start; the counts and the exit status are this file's cells'."""
    from retinopathy.experiments import runner

    config = write_config(tmp_path, grid={"model": ["resnet18"]}, synth=None)
    exp = load_experiment(config)
    (exp.dir / "old").mkdir(parents=True)
    (exp.dir / "old" / "config.yaml").write_text("train: {}\n")
    (exp.dir / "experiment.json").write_text(json.dumps({"cells": {
        "old": {"status": "failed", "reason": "an earlier file's", "dir": "old"},
        "gone": {"status": "done", "dir": "gone"}}}))
    monkeypatch.setattr(runner, "run_cell", lambda *a: {"status": "done", "test_accuracy": 0.5, "kappa": 0.1,
                                                        "macro_f1": 0.2, "majority_accuracy": 0.4})
    (tmp_path / "data").mkdir()
    assert main(["experiment", str(config), "--quiet", "--no-report"]) == 0
    cells = json.loads((exp.dir / "experiment.json").read_text())["cells"]
    assert list(cells) == ["resnet18", "old"] and cells["old"]["status"] == "failed"
    assert capsys.readouterr().out.startswith(
        f"experiment grid: 1 cell(s) -> {exp.dir.resolve()} (data {(tmp_path / 'data').resolve()}); 1 cell(s) the "
        "file no longer has stay in its record and report: old\n")


def test_a_full_disk_stops_the_experiment_at_its_cell(tmp_path, capsys, monkeypatch, full_disk):
    """Every next cell would fail as the first did: the experiment stops there (the cell "incomplete"), says how to
    go on, and the same command then finishes it."""
    config = write_config(tmp_path, grid={"model": ["resnet18"], "pretrained": [False], "seed": [0, 1]},
                          train={"epochs": 1, "freeze_epochs": 1, "image_size": 32, "batch_size": 16, "workers": 0})
    full_disk("last.pt")
    assert main(["experiment", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "last.pt: cannot be written (No space left on device); run the same command again: finished cells are " \
           "skipped, the interrupted one resumes" in err, err
    status = json.loads((tmp_path / "runs" / "grid" / "experiment.json").read_text())
    assert [c["status"] for c in status["cells"].values()] == ["incomplete", "pending"]
    monkeypatch.undo()
    full_disk("experiment.json", nth=2)  # the status file itself, at the first cell's turn: the same hint
    assert main(["experiment", str(config), "--quiet"]) == 2
    assert "experiment.json: cannot be written (No space left on device); run the same command again" in \
        capsys.readouterr().err
    monkeypatch.undo()
    assert main(["experiment", str(config), "--quiet"]) == 0
    status = json.loads((tmp_path / "runs" / "grid" / "experiment.json").read_text())
    assert [c["status"] for c in status["cells"].values()] == ["done", "done"]


def _grid_file(tmp_path: Path, **changes) -> Path:
    """A two-cell experiment file (nothing run) in tmp_path; ``changes`` replace its top-level keys."""
    (tmp_path / "data").mkdir(exist_ok=True)
    cfg = {"name": "g", "out": str(tmp_path / "runs"), "data": str(tmp_path / "data"),
           "train": {"epochs": 1, "image_size": 32, "workers": 0, "pretrained": False},
           "grid": {"model": ["resnet18", "mobilenet_v3_small"]}, **changes}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "g.yaml"


def test_every_cell_run_with_other_options_is_named(tmp_path):
    from retinopathy.experiments.runner import prepare_cells

    exp = load_experiment(_grid_file(tmp_path))
    for c in exp.cells:  # as if each had saved an epoch with lr 0.5
        (c.dir / "checkpoints").mkdir(parents=True)
        (c.dir / "checkpoints" / "last.pt").write_bytes(b"")
        (c.dir / "cell.yaml").write_text(yaml.safe_dump({**c.options, "lr": 0.5}))
    with pytest.raises(ExperimentError, match="2 cell") as e:
        prepare_cells(exp)
    assert all(str(c.dir) in str(e.value) for c in exp.cells)


def test_a_dry_run_names_absolute_folders_and_the_data_synth_would_make(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = _grid_file(tmp_path, out="runs", data="data")
    assert main(["experiment", str(config), "--dry-run"]) == 2  # an empty folder: each cell would refuse it
    assert f"{tmp_path / 'data'}: no known dataset layout here" in capsys.readouterr().err
    assert main(["synth", "data", "--n", "10", "--size", "32", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["experiment", str(config), "--dry-run"]) == 0
    assert f"-> {tmp_path / 'runs' / 'g'} (data {tmp_path / 'data'})" in capsys.readouterr().out
    config = _grid_file(tmp_path, data=str(tmp_path / "new"), synth={"n": 20, "size": 32})
    assert main(["experiment", str(config), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(", which synth: would make)")
    assert not (tmp_path / "new").exists() and not (tmp_path / "runs").exists()


def test_a_report_folder_holding_someone_elses_page_stops_the_experiment_before_it_trains(tmp_path, capsys):
    """report: out: a folder with the user's own index.html: said before any cell trains (and by --dry-run), not
    after the whole grid has run; with --no-report the grid runs."""
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "index.html").write_text("<h1>my site</h1>\n")
    config = write_config(tmp_path)
    for extra in (["--dry-run"], ["--quiet"]):
        assert main(["experiment", str(config), *extra]) == 2
        assert (f"{config}: report: out: {tmp_path / 'report'} holds index.html, not a report's"
                in capsys.readouterr().err)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_an_out_that_is_a_file_is_named_by_the_dry_run_too(tmp_path, capsys):
    """out: a file: the dry run says so as the run does (it listed the cells as if they could be written)."""
    (tmp_path / "runs").write_text("notes")
    config = _grid_file(tmp_path, out=str(tmp_path / "runs"), data=str(tmp_path / "new"), synth={"n": 20, "size": 32})
    for extra in (["--dry-run"], ["--quiet"]):
        assert main(["experiment", str(config), *extra]) == 2
        assert f"{tmp_path / 'runs'}: a file, not a folder ({config}: out: takes a folder)" in capsys.readouterr().err
    assert (tmp_path / "runs").read_text() == "notes" and not (tmp_path / "new").exists()


def test_a_dry_run_lists_an_experiment_it_could_not_write(tmp_path, monkeypatch, capsys):
    """A dry run writes nothing: a folder it cannot write in (shared read-only storage) is listed, not refused; the
    run itself is refused before anything."""
    import retinopathy.experiments.runner as runner

    def read_only(folder, option=None):
        raise PermissionError(13, "cannot write files in this folder (Read-only file system)", str(folder))
    monkeypatch.setattr(runner, "check_writable", read_only)
    config = _grid_file(tmp_path, out=str(tmp_path / "runs"), data=str(tmp_path / "new"), synth={"n": 20, "size": 32})
    assert main(["experiment", str(config), "--dry-run"]) == 0
    assert main(["experiment", str(config), "--quiet"]) == 2
    assert "Read-only file system" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_an_experiment_file_in_another_encoding_says_so(tmp_path):
    config = tmp_path / "grid.yaml"
    config.write_text("name: grid\n", encoding="utf-16")
    with pytest.raises(ExperimentError, match="grid.yaml: not UTF-8 text .*save it again as UTF-8"):
        load_experiment(config)


@pytest.mark.parametrize("local_rank", ["0", "1"])
def test_commands_other_than_train_refuse_to_run_as_several_processes(tmp_path, capsys, monkeypatch, local_rank):
    """`torchrun -m retinopathy experiment` ran the whole experiment in each process, racing for its lock, and
    usually said nothing but torchrun's traceback: every command but train now stops at once, said once a machine."""
    monkeypatch.setenv("RANK", local_rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert main(["experiment", str(tmp_path / "grid.yaml")]) == 2
    err = capsys.readouterr().err
    if local_rank == "0":
        assert err.startswith("error: experiment runs in one process, not as torchrun's 2: run `retinopathy "
                              "experiment ...` alone; its cells train in one process each")
    else:
        assert err == ""
    assert not (tmp_path / "grid.yaml").exists() and list(tmp_path.iterdir()) == []
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert ("evaluate runs in one process" in capsys.readouterr().err) == (local_rank == "0")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # an sbatch script's own step: SLURM's variables, one process
        monkeypatch.delenv(key)
    for key, value in (("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4"), ("SLURM_LOCALID", "0")):
        monkeypatch.setenv(key, value)
    assert main(["synth", str(tmp_path / "s"), "--n", "4", "--size", "32", "--quiet"]) == 0
