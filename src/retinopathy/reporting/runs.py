"""Reading what the report compares: run folders (config.yaml, metrics.csv, eval/metrics.json, checkpoints) and
experiment folders (experiment.json and its cells), each as a :class:`Run` with its status and the reason for it."""
from __future__ import annotations

import json
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..data.formats import GRADES
from ..errors import RetinopathyError
from ..launch import resume_command
from ..models.restore import display_name
from ..training.checkpoint import (CheckpointError, epochs_saved, load_checkpoint, metrics_rows, run_folder,
                                   same_checkpoint)
from ..training.config import option_value

EVAL_NEEDS = ("split", "checkpoint", "epoch", "count", "accuracy", "kappa", "macro_f1", "majority_accuracy",
              "true_counts")  # what the report reads of an evaluation's metrics.json
NUMBERS = ("count", "accuracy", "kappa", "macro_f1", "majority_accuracy")  # of EVAL_NEEDS


class ReportError(RetinopathyError, ValueError):
    """A folder given to the report is not a run or an experiment, or its files cannot be read."""


def read_record(path: Path, parse) -> dict | None:
    """``parse(text)`` of a run's file (a mapping, or nothing for an empty YAML file), or a ReportError that names
    it."""
    try:
        content = parse(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:  # JSONDecodeError is a ValueError
        raise ReportError(f"{path}: cannot read it ({e})") from None
    cells = content.get("cells", {}) if isinstance(content, dict) and path.name == "experiment.json" else {}
    if content is not None and not isinstance(content, dict) or not (
            isinstance(cells, dict) and all(isinstance(entry, dict) for entry in cells.values())):
        raise ReportError(f"{path}: not as retinopathy writes it (edited by hand?); restore it, or run the command "
                          "that writes it again")
    return content


@dataclass
class Run:
    """One trained (or skipped, or unfinished) run and what the report says about it."""

    name: str
    dir: Path
    status: str  # done | not evaluated | incomplete | skipped | failed | pending
    reason: str = ""
    train: dict = field(default_factory=dict)
    config: dict | None = None
    rows: list[dict] = field(default_factory=list)
    eval: dict | None = None
    variant: str = ""
    named: str = ""  # its name in the experiment: the variant's (``variants:``) or a one-run experiment's
    experiment: str | None = None  # the name of the experiment it is a cell of
    colour: str = "#000000"
    numbers: dict = field(default_factory=dict)
    differs: str = ""  # the options in which it differs from the other runs of its model (a named variant's recipe)

    @property
    def model(self) -> str:
        """Its model; one a cell left at train's default (a pending or failed cell has only the options it set)
        is that default."""
        return str(option_value(self.train, "model")) if self.train else "unknown model"

    @property
    def title(self) -> str:
        return display_name(self.model)

    @property
    def objective(self) -> str:
        return str(option_value(self.train, "objective"))

    @property
    def pretrained(self) -> bool:
        return bool(option_value(self.train, "pretrained"))

    @property
    def start(self) -> str:
        """Where its weights started: 'from scratch', 'ImageNet-pretrained', or 'from W' for --weights W (a run's
        checkpoint is named by its run)."""
        weights = Path(self.train.get("weights") or "")
        if weights.name in ("best.pt", "last.pt"):  # a run's checkpoint, named by its run
            return f"from {run_folder(weights).name}"
        if weights.name:  # loaded with or without --pretrained
            return f"from {weights.name}"
        return "ImageNet-pretrained" if self.pretrained else "from scratch"

    @property
    def data(self) -> str | None:
        """The data it trained on: the resolved path its config.yaml records, else ``--data`` as typed."""
        return ((self.config or {}).get("data") or {}).get("path") or self.train.get("data")


def read_rows(path: Path) -> list[dict]:
    """metrics.csv as dicts, numbers as floats (epoch as int), empty cells as None."""
    rows = []
    try:
        for raw in metrics_rows(path):
            row = {}
            for k, v in raw.items():
                try:
                    row[k] = float(v) if v not in ("", None) else None
                except ValueError:
                    row[k] = v
            row["epoch"] = int(row["epoch"])
            rows.append(row)
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ReportError(f"{path}: not a metrics.csv written by retinopathy train ({type(e).__name__}: {e})") from None
    return rows


def _config(path: Path) -> dict:
    """A run's config.yaml, its sections and epochs checked (a hand-edited file is named, not a traceback)."""
    config = read_record(path, yaml.safe_load) or {}
    bad = [key for key in ("train", "data", "selection", "engine") if not isinstance(config.get(key) or {}, dict)]
    epochs = (config.get("train") or {}).get("epochs", 0) if not bad else 0
    if bad or not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ReportError(f"{path}: its {bad[0] if bad else 'train: epochs'} is not as retinopathy writes it (edited "
                          "by hand?); restore it, or train the run again")
    return config


def _evaluation(path: Path) -> dict:
    """An evaluation's metrics.json, with the numbers the report shows."""
    ev = read_record(path, json.loads) or {}
    missing = [k for k in EVAL_NEEDS if k not in ev]
    if missing or not (isinstance(ev["true_counts"], list) and len(ev["true_counts"]) == len(GRADES)):
        raise ReportError(f"{path}: not as retinopathy evaluate writes it (no {', '.join(missing) or 'true_counts'})")
    if text := [k for k in NUMBERS if not isinstance(ev[k], (int, float)) or isinstance(ev[k], bool)]:
        raise ReportError(f"{path}: not as retinopathy evaluate writes it ({', '.join(text)} not a number: edited by "
                          "hand?); evaluate the run again")
    return ev


def load_run(run: Path, name: str | None = None) -> Run:
    name = name or run.name
    if (run / "config.yaml").exists():
        config = _config(run / "config.yaml")
        train, rows = config.get("train") or {}, read_rows(run / "metrics.csv")
        metrics_file = run / "eval" / "metrics.json"
        try:  # an evaluation that cannot be read is said in its run's cell: the other runs are still reported
            ev, unreadable = (_evaluation(metrics_file) if metrics_file.exists() else None), ""
        except ReportError as e:
            ev, unreadable = None, f"{e}; delete it and "
        epochs = int(train.get("epochs") or len(rows))
        data = (config.get("data") or {}).get("path") or train.get("data")  # resolved, as the run saw it
        command = (f"run `retinopathy evaluate {shlex.quote(str(run / 'checkpoints' / 'best.pt'))} --data "
                   f"{shlex.quote(str(data))} --split test --out {shlex.quote(str(run / 'eval'))}`")
        evaluated = Path(str((ev or {}).get("checkpoint"))).name
        best = run / "checkpoints" / "best.pt"
        try:  # checkpoints, not metrics.csv, say how far a run got (a row is written before its checkpoint)
            saved = epochs_saved(run) if (run / "checkpoints").exists() else len(rows)
            best_ckpt = load_checkpoint(best, mmap=True) if ev is not None and best.exists() else None
        except CheckpointError as e:
            return Run(name, run, "incomplete", str(e), train, config, rows)
        rows = [r for r in rows if r["epoch"] < saved]
        if ev is not None and (ev.get("split") != "test" or evaluated == "last.pt"):
            status, reason, ev = "not evaluated", (f"{metrics_file} is {evaluated} on the {ev.get('split')} split, "
                                                   f"not best.pt on test; {command}"), None
        elif ev is not None and best_ckpt is not None and not same_checkpoint(ev, best_ckpt):
            since = ("training went on and best.pt is now epoch " if ev.get("epoch", -1) < best_ckpt["epoch"] else
                     "best.pt was replaced since by an earlier epoch's, " if ev.get("epoch", -1) > best_ckpt["epoch"]
                     else "best.pt was saved again since (retuned thresholds, or another run in this folder), epoch ")
            status, reason, ev = "not evaluated", (f"{metrics_file} evaluated the best.pt of epoch "
                                                   f"{ev.get('epoch', -1) + 1}; {since}{best_ckpt['epoch'] + 1}: "
                                                   f"{command}"), None
        elif saved < epochs:  # an evaluation here is of the best.pt so far, from before training went on
            world = int((config.get("engine") or {}).get("world_size") or 1)
            status, reason = "incomplete", (f"trained {saved} of {epochs} epochs; continue with "
                                            f"`{resume_command(run, world)}`" + (
                                                " or by re-running the experiment"
                                                if _cell_epochs(run) > saved else ""))
        elif ev is not None:
            status, reason = "done", ""
        elif not best.exists():
            status, reason = "not evaluated", (f"{best}, the checkpoint to evaluate, is missing: put it back from a "
                                               "backup, or train the run again")
        else:
            status, reason = "not evaluated", unreadable + command
        if not rows and saved:  # checkpoints without a metrics.csv: its curves and per-epoch numbers are lost
            reason = (f"{run / 'metrics.csv'} is missing or empty: no curves or per-epoch numbers"
                      + (f"; {reason}" if reason else ""))
        return Run(name, run, status, reason, train, config, rows, ev)
    if (run / "SKIPPED.json").exists():
        info = read_record(run / "SKIPPED.json", json.loads)
        return Run(name, run, "skipped", info.get("reason", ""), info.get("train", {}))
    raise ReportError(f"{run}: not a run folder (no config.yaml or SKIPPED.json)")


def load_experiment(exp: Path) -> list[Run]:
    """The cells of an experiment folder in grid order, with the status ``experiment.json`` records."""
    status = read_record(exp / "experiment.json", json.loads)
    runs = []
    for cname, entry in status.get("cells", {}).items():
        d = exp / entry.get("dir", cname)
        if (d / "config.yaml").exists() or (d / "SKIPPED.json").exists():
            run = load_run(d, cname)
        else:
            opts = read_record(d / "cell.yaml", yaml.safe_load) if (d / "cell.yaml").exists() else {}
            values = {k: v for k, v in entry.get("values", {}).items() if k != "variant"}  # a name, not an option
            run = Run(cname, d, "pending", "not run yet: the experiment stopped before this cell; run the "
                                          "experiment again to run it", {**values, **opts})
        _as_cell(run, status, entry, exp)
        runs.append(run)
    return runs


def _as_cell(run: Run, status: dict, entry: dict, exp: Path) -> None:
    """What ``experiment.json`` says of a cell: its names (its variant's, or a one-run experiment's, and its
    experiment's), and a failure of its last attempt (after an earlier evaluation, which the report keeps)."""
    if entry.get("status") == "failed":
        run.status, run.reason = "failed", entry.get("reason", "")
    single = len(status.get("cells", {})) == 1  # a one-run experiment is named after the experiment
    run.named = str(entry.get("values", {}).get("variant") or (status.get("name", exp.name) if single else ""))
    run.experiment = str(status.get("name", exp.name))


def load_cell_or_run(run: Path) -> Run:
    """A run folder; one that is a cell of the experiment in its parent folder keeps its names there."""
    loaded = load_run(run)
    try:
        status = read_record(run.parent / "experiment.json", json.loads) if (run.parent / "experiment.json").exists() \
            else {}
    except ReportError:  # that record is the experiment's report's to name; this run is shown without its names
        status = {}
    entry = next((e for name, e in (status or {}).get("cells", {}).items()
                  if (run.parent / str(e.get("dir", name))).resolve() == run.resolve()), None)
    if entry is not None:
        _as_cell(loaded, status, entry, run.parent)
    return loaded


def collect(paths) -> list[Run]:
    """Runs from experiment folders, run folders and folders of both (``runs/``), in the order given, each once."""
    runs: list[Run] = []
    for p in map(Path, paths):
        if (p / "experiment.json").exists():
            runs += load_experiment(p)
        elif (p / "config.yaml").exists() or (p / "SKIPPED.json").exists():
            runs.append(load_cell_or_run(p))
        else:
            subs = sorted(d for d in p.iterdir() if d.is_dir()) if p.is_dir() else []
            experiments = [d for d in subs if (d / "experiment.json").exists()]
            singles = [d for d in subs if (d / "config.yaml").exists() or (d / "SKIPPED.json").exists()]
            if not experiments and not singles:
                raise ReportError(f"{p}: not a run folder (config.yaml), an experiment folder (experiment.json) "
                                  "or a folder of runs or experiments")
            runs += [r for d in experiments for r in load_experiment(d)] + [load_run(d) for d in singles]
    once = {}
    for r in runs:  # a run given twice (itself and in its experiment, say) is one row
        once.setdefault(r.dir.resolve(), r)
    runs = list(once.values())
    names = Counter(r.name for r in runs)
    for r in runs:
        if names[r.name] > 1:
            r.name = f"{r.dir.parent.name}/{r.name}"
    return runs


def _cell_epochs(run: Path) -> int:
    """The epochs an experiment's file asks of this cell now (its cell.yaml), 0 when it is no experiment's cell: a
    re-run of the experiment continues the cell only up to these."""
    try:
        cell = yaml.safe_load((run / "cell.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return 0
    return int(option_value(cell, "epochs") or 0) if (run.parent / "experiment.json").exists() else 0
