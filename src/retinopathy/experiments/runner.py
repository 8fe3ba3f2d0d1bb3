"""``retinopathy experiment CONFIG.yaml``: train and evaluate every cell of a grid; re-running resumes.

The YAML file::

    name: demo                  # experiment folder = <out>/<name>
    out: runs
    data: data/synthetic        # relative to the current directory (``--data`` overrides it)
    description: ...            # optional, shown in the report
    base: recipe.yaml           # optional: start train: from that experiment file's train: (relative to this one)
    synth: {n: 360, size: 128}  # optional: generate synthetic data there first when the folder is missing/empty
    train: {epochs: 3, image_size: 96}                         # ``retinopathy train`` options shared by all cells
    grid: {model: [resnet18, resnet50], pretrained: [true, false]}   # cartesian product, one cell each
    variants: {recipe: {}, no-graham: {preprocess: lab}}       # optional: named changes to train:, one row
                                                               # each (an ablation); {} changes nothing
    evaluate: {bootstrap: 1000}                                # optional: bootstrap, batch_size
    report: {out: reports/demo}                                # optional: build the report afterwards

Each cell (``resnet18-pretrained``, ``resnet50-scratch``, ``lr-0.01``...) is a ``retinopathy train`` run in
``<out>/<name>/<cell>/`` (its options in ``cell.yaml``), then ``retinopathy evaluate`` of ``best.pt`` on the test
split into ``<cell>/eval/``. A cell whose ImageNet weights cannot be had is skipped (``SKIPPED.json`` with the
reason) and the others still run; a cell that fails (weights that do not fit, a non-finite loss or gradient...)
is marked failed with its reason, the others still run, and the command exits 1 (a full disk stops the command:
every next cell would fail alike). Finished cells are left alone on
a re-run; interrupted ones resume from ``checkpoints/last.pt``. The state of every cell goes to
``<out>/<name>/experiment.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import inspect
import itertools
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..atomic import write_json, write_text
from ..cli.common import READ_KEYS, show_defaults
from ..errors import NotWritten, RetinopathyError
from ..launch import resume_command, sigterm_as_ctrl_c
from ..models.weights import WeightsUnavailable, load_pretrained_state
from ..outputs import check_folder, check_writable, exclusive
from ..reporting.text import epochs_text
from ..training import config as train_config
from ..training.checkpoint import epochs_saved, load_checkpoint, same_checkpoint

TOP_KEYS = ("name", "out", "data", "description", "base", "synth", "train", "grid", "variants", "evaluate",
            "report")
RESERVED = {"data", "out", "resume", "config", "stop_after", "help"}  # the runner sets these itself
RUNTIME = {"workers", "device", "amp", "eval_amp", "quiet", "channels_last", "compile",  # may change on a re-run
           "epochs", "cache_images", "deterministic"}
EVAL_KEYS = {"bootstrap", "batch_size"}
WEIGHTS_TIMEOUT = 30  # seconds a stalled weights download may wait on the network before the cell is skipped


class ExperimentError(RetinopathyError, ValueError):
    """The experiment file or folder cannot be used as it is."""


@dataclass
class Cell:
    name: str
    values: dict  # this cell's grid values
    options: dict  # train options: shared ones, then the grid values
    dir: Path


@dataclass
class Experiment:
    name: str
    file: Path
    dir: Path
    data: str
    cells: list[Cell]
    grid: dict
    description: str = ""
    synth: dict | None = None
    evaluate: dict = field(default_factory=dict)
    report_out: Path | None = None


# ------------------------------------------------------------------------------------------ the YAML file
def _options(section, file: Path, what: str) -> dict:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ExperimentError(f"{file}: '{what}:' must be a mapping of option: value")
    try:
        opts = train_config.option_names(section, f"{file}: '{what}:'")
    except train_config.ConfigError as e:
        raise ExperimentError(str(e)) from None
    known = {a.dest for a in train_config.get_args_parser()._actions}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise ExperimentError(f"{file}: unknown train option(s) in '{what}:': "
                              f"{train_config.with_nearest(unknown, known)} (keys are `retinopathy train` option names "
                              "with _, e.g. image_size)")
    reserved = sorted(set(opts) & RESERVED)
    if reserved:
        raise ExperimentError(f"{file}: '{what}:' may not set {', '.join(reserved)}; the experiment sets it "
                              "(data: at the top level; run folders are <out>/<name>/<cell>)")
    return opts


def cell_name(values: dict) -> str:
    """``{model: resnet18, pretrained: false, lr: 0.01}`` -> ``resnet18-scratch-lr-0.01``."""
    parts = []
    for key, v in values.items():
        label = key.replace("_", "-")
        if key == "model":
            parts.append(str(v))
        elif key == "pretrained":
            parts.append("pretrained" if v else "scratch")
        elif isinstance(v, bool):
            parts.append(label if v else f"no-{label}")
        else:
            parts.append(f"{label}-{v}")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts))


NAME = r"[A-Za-z0-9_-][A-Za-z0-9._-]*"  # an experiment's or variant's: a folder name, not '.', '..' or hidden


def _variants(section, file: Path, grid: dict) -> dict:
    """``variants:`` -> {name: train options it changes}; without it, one unnamed variant that changes nothing."""
    if section is None:
        return {"": {}}
    if not isinstance(section, dict) or not section:
        raise ExperimentError(f"{file}: 'variants:' must map a row name to the train options it changes")
    out = {}
    for vname, change in section.items():
        if not re.fullmatch(NAME, str(vname)) or str(vname) == "experiment.json":
            raise ExperimentError(f"{file}: variant name {vname!r} must be letters, digits, '.', '_' or '-', not "
                                  "starting with '.' (it names a folder beside experiment.json)")
        if str(vname) in out:
            raise ExperimentError(f"{file}: variant {vname} is written twice (as a number and as text)")
        out[str(vname)] = _options(change, file, f"variants: {vname}")
        clash = sorted(set(out[str(vname)]) & set(grid))
        if clash:
            raise ExperimentError(f"{file}: variant {vname} sets {', '.join(clash)}, which grid: varies; keep one")
    return out


def _read(file: Path) -> dict:
    """An experiment file as a mapping, with only known top-level keys."""
    try:
        with file.open(encoding="utf-8") as f:  # a file, not its text: YAML's errors then name it
            cfg = train_config.load_yaml(f)
    except OSError as e:
        raise ExperimentError(f"{file}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ExperimentError(f"{file}: {train_config.NOT_UTF8_TEXT}") from None
    except (ValueError, yaml.YAMLError) as e:  # ValueError: not text (a checkpoint, say)
        raise ExperimentError(f"{file}: not valid YAML ({train_config.yaml_problem(e, file)})") from None
    if not isinstance(cfg, dict):
        raise ExperimentError(f"{file}: expected a mapping with name, data, train and grid")
    unknown = sorted(set(cfg) - set(TOP_KEYS))
    if unknown:
        options = [k for k in unknown if k.replace("-", "_") in train_config.defaults()]
        raise ExperimentError(f"{file}: unknown key(s) {train_config.with_nearest(unknown, TOP_KEYS)}; expected some "
                              f"of {', '.join(TOP_KEYS)}"
                              + (f" ({', '.join(options)}: training options go under train:)" if options else ""))
    return cfg


def _base_train(cfg: dict, file: Path, seen: tuple = (), given: frozenset = frozenset()) -> dict:
    """The ``train:`` options that ``base:`` inherits: the named file's (after its own base), with its ``grid:``
    entries of one value (the recipe's ``model: [resnet18]``: as ``train -c`` reads that file), else none; a base
    whose grid has several values of an option that the files below it do not set (``given``: the options of their
    ``train:``, ``grid:`` and variants), or
    variants, is refused (they were dropped without a word)."""
    if cfg.get("base") is None:
        return {}
    base = file.parent / os.path.expanduser(str(cfg["base"]))
    if base.resolve() in seen + (file.resolve(),):
        raise ExperimentError(f"{file}: base: {cfg['base']} leads back to itself")
    if not base.is_file():
        raise ExperimentError(f"{file}: base: {cfg['base']!r} " + ("is a folder" if base.exists() else "not found")
                              + f" (looked for {base}: a path relative to {file.name}'s folder); name the experiment "
                              "file whose train: options this one starts from")
    parent = _read(base)
    grid = _options(parent.get("grid"), base, "grid")
    several = sorted(k for k, v in grid.items() if isinstance(v, list) and len(v) != 1 and k not in given)
    if several or parent.get("variants"):
        raise ExperimentError(f"{file}: base: {cfg['base']} has " + (f"several values of {', '.join(several)} in its "
                              "grid:" if several else "variants:") + ", which base: does not take (it takes train: "
                              "options and grid: entries of one value); give them in this file")
    one = {k: v[0] if isinstance(v, list) else v for k, v in grid.items()}
    train = _options(parent.get("train"), base, "train")
    return {**_base_train(parent, base, seen + (file.resolve(),), given | frozenset(grid) | frozenset(train)), **one,
            **train}


def load_experiment(path: str | Path, data: str | None = None) -> Experiment:
    """Read and check an experiment file; ``data`` overrides its ``data:``."""
    file = Path(path)
    cfg = _read(file)
    name = str(cfg.get("name") or file.stem)
    if not re.fullmatch(NAME, name):
        raise ExperimentError(f"{file}: name {name!r} must be letters, digits, '.', '_' or '-', not starting with '.' "
                              "(it names a folder)")
    data = data or cfg.get("data")
    if not data:
        raise ExperimentError(f"{file}: set data: to the dataset folder (or pass --data)")
    data = os.path.expanduser(str(data))
    own = _options(cfg.get("train"), file, "train")
    grid = _options(cfg.get("grid"), file, "grid")
    grid = {k: v if isinstance(v, list) else [v] for k, v in grid.items()}
    both = sorted(set(grid) & set(own))
    if both:
        raise ExperimentError(f"{file}: {', '.join(both)} is set in both train: and grid:; keep one")
    if any(not v for v in grid.values()):
        raise ExperimentError(f"{file}: every grid: entry needs at least one value")
    variants = _variants(cfg.get("variants"), file, grid)
    given = frozenset(grid) | frozenset(own) | frozenset(k for change in variants.values() for k in change)
    shared = {k: v for k, v in {**_base_train(cfg, file, given=given), **own}.items() if k not in grid}
    out = cfg.get("out") or "runs"
    if not isinstance(out, str):
        raise ExperimentError(f"{file}: out: {out!r} is not a folder (e.g. out: runs)")
    root = Path(out).expanduser() / name
    cells = []
    for vname, change in variants.items():
        for combo in itertools.product(*grid.values()):
            values = dict(zip(grid, combo))
            cname = "-".join(filter(None, [vname, cell_name(values)])) or str(shared.get("model", "run"))
            named = {"variant": vname, **values} if vname else values
            cells.append(Cell(cname, named, {**shared, **change, **values}, root / cname))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ExperimentError(f"{file}: grid values give the same cell name twice ({names})")
    runs: dict[tuple, str] = {}  # the options as train reads them: lr 1e-3 (text to YAML) is lr 0.001
    for c in cells:
        key = tuple(sorted((k, repr(train_config.option_value(c.options, k))) for k in c.options))
        if key in runs:
            raise ExperimentError(f"{file}: cells {runs[key]} and {c.name} train with the same options (grid values "
                                  "written two ways, e.g. 0.001 and 1e-3); keep one of the values")
        runs[key] = c.name
    ev = cfg.get("evaluate") or {}
    if not isinstance(ev, dict) or set(ev) - EVAL_KEYS:
        unknown = sorted(set(ev) - EVAL_KEYS, key=str) if isinstance(ev, dict) else []
        raise ExperimentError(f"{file}: evaluate: takes {', '.join(sorted(EVAL_KEYS))}"
                              + (f"; not {train_config.with_nearest(unknown, EVAL_KEYS)}" if unknown else ""))
    for key, least in (("bootstrap", 0), ("batch_size", 1)):
        if key in ev and not (isinstance(ev[key], int) and not isinstance(ev[key], bool) and ev[key] >= least):
            raise ExperimentError(f"{file}: evaluate: {key}: {ev[key]!r} is not a whole number >= {least}")
    synth = cfg.get("synth")
    if synth is not None:
        from ..data.synth import check_options, generate

        allowed = set(inspect.signature(generate).parameters) - {"out", "progress"}
        if not isinstance(synth, dict) or set(synth) - allowed:
            unknown = sorted(set(synth) - allowed, key=str) if isinstance(synth, dict) else []
            raise ExperimentError(f"{file}: synth: takes {', '.join(sorted(allowed))}"
                                  + (f"; not {train_config.with_nearest(unknown, allowed)}" if unknown else ""))
        try:
            check_options(**synth)
        except ValueError as e:
            raise ExperimentError(f"{file}: synth: {e}") from None
    report = cfg.get("report")
    if report is not None and not (isinstance(report, dict) and set(report) == {"out"}
                                   and isinstance(report["out"], str) and report["out"].strip()):
        raise ExperimentError(f"{file}: report: takes out: FOLDER (e.g. report: {{out: reports/{name}}})")
    report_out = Path(report["out"]).expanduser() if report else None
    return Experiment(name, file, root, str(data), cells, grid, str(cfg.get("description") or ""), synth, ev,
                      report_out)


# ---------------------------------------------------------------------------------------------- cells
def retune_pending(run: Path, args: argparse.Namespace) -> bool:
    """Whether ``--threshold-data train+selection``'s retune of best.pt, after the last epoch, did not happen
    (interrupted): ``train --resume`` of the finished run does it."""
    best = run / "checkpoints" / "best.pt"
    if args.threshold_data != "train+selection" or not best.exists():
        return False
    info = load_checkpoint(best, mmap=True)["model_info"]
    return info["decision"] == "thresholds" and not info["threshold_data"].startswith("train+")


def is_evaluated(run: Path, exp: Experiment) -> bool:
    """evaluate writes metrics.json first and confusion_matrix.png last: both present = complete; and it must be
    what the experiment's evaluation is (best.pt on the test split of the experiment's data, with the weight of the
    eyes that the checkpoint was trained with and the experiment's bootstrap), of the best.pt there now, not of one
    saved before it (a retune of its thresholds, say); an evaluation of another split or other data in ``run/eval``
    is done again."""
    metrics, best = run / "eval" / "metrics.json", run / "checkpoints" / "best.pt"
    if not (metrics.exists() and (run / "eval" / "confusion_matrix.png").exists()):
        return False
    try:
        evaluation = json.loads(metrics.read_text())
    except ValueError:
        return False
    if (evaluation.get("ci95") or {}).get("resamples", 0) != bootstrap(exp) or evaluation.get("split") != "test" \
            or evaluation.get("data") != str(Path(exp.data).resolve()) or evaluation.get("split_file"):
        return False
    if not best.exists():
        return True
    ckpt = load_checkpoint(best, mmap=True)
    trained_blend = ckpt["model_info"].get("blend_eyes", 0.0)  # evaluate's default weight of the other eye
    return same_checkpoint(evaluation, ckpt) and evaluation.get("blend_eyes") == trained_blend


class ChangedCell(ExperimentError):
    """A cell that has run (saved a checkpoint) with options other than the file's now: ``what`` changed."""

    def __init__(self, cell: Cell, what: str):
        super().__init__(f"{cell.dir} ({what})")
        self.cell, self.what = cell, what


def holds_its_photographs(cell: Cell, options: dict) -> bool:
    """Whether the data ``options`` name holds the photographs the cell's run trained on (its ``split.csv``: the
    same names with the same grades), as ``train --resume --data`` requires: data that moved, or a prepared copy,
    is no change of the cell's options; other photographs are."""
    from ..data.formats import read_catalog
    from ..data.problems import DataError
    from ..data.splits import run_photographs

    try:
        catalog = read_catalog(options["data"], resolve=False, **{k: options.get(k) for k in READ_KEYS})
    except DataError:
        return False
    return bool(run_photographs(cell.dir / "split.csv", [(s.image, s.label) for s in catalog.samples]))


def prepare_cell(cell: Cell, exp: Experiment, dry: bool = False) -> argparse.Namespace:
    """Write ``cell.yaml`` and parse it as train would (``dry``: in a scratch folder, writing nothing); a cell run
    with other options raises :class:`ChangedCell` (once the new options have passed train's checks: a mistyped
    value is named as one, not as a change)."""
    options = {**cell.options, "data": str(Path(exp.data).resolve())}
    saved_file = cell.dir / "cell.yaml"
    started = any((cell.dir / "checkpoints" / n).exists() for n in ("last.pt", "best.pt"))  # no new run there
    saved, changed = {}, []
    if saved_file.exists() and started:  # a cell that saved nothing may start over
        saved = yaml.safe_load(saved_file.read_text()) or {}
        changed = sorted(k for k in set(saved) | set(options)  # an option written as its default is no change
                         if train_config.option_value(saved, k) != train_config.option_value(options, k)
                         and k not in RUNTIME and not (k == "data" and holds_its_photographs(cell, options)))
    if dry or changed:  # checked in a scratch folder: nothing written, and a mistyped value named as one
        with tempfile.TemporaryDirectory() as scratch:
            args = _parse_cell(cell, exp, options, Path(scratch) / "cell.yaml", Path(scratch) / "run", resume=False)
        if changed:
            default = train_config.defaults()  # a value as written; one left unset: its default
            shown = [[d[k] if d.get(k) is not None else default.get(k) if default.get(k) is not None else
                      train_config.option_value(d, k) for d in (saved, options)] for k in changed]
            raise ChangedCell(cell, ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in zip(changed, shown)))
        return args
    cell.dir.mkdir(parents=True, exist_ok=True)
    return _parse_cell(cell, exp, options, saved_file, cell.dir, resume=started)


def prepare_cells(exp: Experiment, dry: bool = False) -> dict[str, argparse.Namespace]:
    """:func:`prepare_cell` of every cell, before any runs; the cells run with other options are refused together."""
    parsed, changed = {}, []
    for c in exp.cells:
        try:
            parsed[c.name] = prepare_cell(c, exp, dry)
        except ChangedCell as e:
            changed.append(e)
            continue
        started = (c.dir / "checkpoints" / "last.pt").exists()  # a resume reads neither
        for key in () if started else ("weights", "split_file"):
            if (path := getattr(parsed[c.name], key)) and not os.path.exists(path):
                raise ExperimentError(f"{exp.file}: cell {c.name}: {key}: {path} not found (every cell is checked "
                                      "before any runs)")
    if changed:
        raise ExperimentError(f"{len(changed)} cell(s) were run with other options than {exp.file} gives now: "
                              + "; ".join(str(e) for e in changed) + ". Delete those folders to run them again, "
                              "or give the experiment another name (its cells then start afresh)")
    return parsed


def check_data(exp: Experiment) -> bool:
    """Refuse a ``synth:`` set made with other settings and a missing data folder that nothing would make; True
    when ``synth:`` is to make the set (a missing folder, or an interrupted generation's images)."""
    from ..data.formats import looked_in
    from ..data.synth import holds_data, made_otherwise

    data = Path(exp.data)
    if exp.synth is not None and not holds_data(data):
        return True
    if exp.synth is not None and (otherwise := made_otherwise(data, **exp.synth)):
        raise ExperimentError(f"{exp.file}: synth: {data} holds a synthetic set made with " + ", ".join(
            f"{k}: {made}" for k, (made, _) in otherwise.items()) + ", where the file asks for " + ", ".join(
            f"{k}: {asked}" for k, (_, asked) in otherwise.items()) + f"; delete {data} (and the runs trained on it, "
            f"{exp.dir}) to make it again, set data: (or --data) to another folder, or remove synth:")
    if not data.exists() and not any((c.dir / "checkpoints").exists() for c in exp.cells):  # once, not per cell
        raise ExperimentError(f"{exp.file}: data: {data} not found{looked_in(data)}; set data: to the dataset folder "
                              "(or pass --data), or add synth: to generate a synthetic one there")
    return False


def train_argv(run: Path, args: argparse.Namespace, done: int) -> list[str]:
    """``train``'s arguments for a cell with ``done`` epochs saved: its cell.yaml, and on resume the loader workers
    the run started with when the cell sets none (each worker draws its own augmentations: ``train --resume`` keeps
    them too), not this machine's core count."""
    argv = ["--config", str(run / "cell.yaml"), "--out", str(run)]
    if not done:
        return argv
    workers = train_config.recorded_option(run, "workers") if args.workers is None else None
    return argv + ["--resume", str(run)] + (["--workers", str(workers)] if workers is not None else [])


def _parse_cell(cell: Cell, exp: Experiment, options: dict, file: Path, out: Path, resume: bool) -> argparse.Namespace:
    """``options`` written to ``file`` (left as it is when it holds them: a finished cell's files stay untouched)
    and parsed as ``train -c file --out out [--resume out]``; an ExperimentError names the cell and the value."""
    text = yaml.safe_dump(options, sort_keys=False)
    if not file.exists() or file.read_text() != text:
        write_text(file, text)
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):  # argparse's usage text: the error line is what the cell needs
            args = train_config.parse_args(["--config", str(file), "--out", str(out)]
                                           + (["--resume", str(out)] if resume else []), run_options=False)
    except (SystemExit, train_config.ConfigError) as e:
        error = str(e) if isinstance(e, train_config.ConfigError) else next(
            (line.partition("error: ")[2] for line in reversed(said.getvalue().splitlines()) if "error: " in line),
            said.getvalue().strip() or str(e.code)).replace(f" (from {file})", "")  # that file goes (below)
        raise ExperimentError(f"{exp.file}: cell {cell.name}: {error} (every cell is checked before any runs)") \
            from None
    sys.stderr.write(said.getvalue())  # what parsing warned about
    return args


def check_weights(args: argparse.Namespace) -> None:
    """Get the cell's ImageNet weights now (cache or download) so that a cell without them is skipped up front."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(WEIGHTS_TIMEOUT)
    try:
        load_pretrained_state(args.model, args.weights_tag, args.weights, args.check_weights_hash)
    finally:
        socket.setdefaulttimeout(old)


def bootstrap(exp: Experiment) -> int:
    """The patient-bootstrap resamples the experiment's evaluations use (``evaluate: {bootstrap: N}``)."""
    return int(exp.evaluate.get("bootstrap", 1000))


def evaluate_cell(run: Path, args: argparse.Namespace, exp: Experiment, quiet: bool) -> dict:
    """``retinopathy evaluate best.pt --split test`` with the run's own split, into ``run/eval``."""
    from ..evaluation import evaluate

    argv = [str(run / "checkpoints" / "best.pt"), "--data", args.data, "--split", "test", "--out", str(run / "eval"),
            "--split-file", str(run / "split.csv"), "--bootstrap", str(bootstrap(exp)),
            "--batch-size", str(exp.evaluate.get("batch_size", args.batch_size)), "--device", args.device]
    for key in READ_KEYS:
        if getattr(args, key, None) is not None:
            argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    argv += (["--workers", str(args.workers)] if args.workers is not None else []) + \
        (["--skip-bad"] if args.skip_bad else []) + (["--quiet"] if quiet else [])
    return evaluate.main(evaluate.get_args_parser().parse_args(argv))


def run_cell(cell: Cell, args: argparse.Namespace, exp: Experiment, quiet: bool, tag: str) -> dict:
    """Bring one cell to 'trained and evaluated', doing only what is missing; returns its status entry."""
    from ..training import train

    run = cell.dir
    done = epochs_saved(run)
    if done < args.epochs and not (run / "checkpoints" / "last.pt").exists() and done:
        raise ExperimentError(f"{run}: its checkpoints/last.pt is gone, so its {done} of {args.epochs} epochs cannot "
                              "continue; remove the folder to train the cell again (or ask for "
                              f"{epochs_text(done)})")
    trained = done >= args.epochs and not retune_pending(run, args)
    planned = int((load_checkpoint(run / "checkpoints" / "last.pt", mmap=True)["config"].get("epochs") or 0)
                  if done and (run / "checkpoints" / "last.pt").exists() else 0)
    if args.epochs <= done < planned:  # the file lowered since: the run's own record still plans more
        print(f"warning: {run} has trained {done} of the {planned} epochs it was started with, and the file asks for "
              f"{args.epochs} now; it stays unfinished (continue it with `{resume_command(run)}`, or ask the file "
              f"for {planned})", file=sys.stderr)
    elif done > args.epochs:
        print(f"warning: {run} trained {done} epochs, more than the {args.epochs} now asked for; it stays as it is "
              "(delete the folder to train it again)", file=sys.stderr)
    if trained and is_evaluated(run, exp):
        print(f"{tag} finished earlier ({epochs_text(done)}, evaluated); nothing to do")
        return {**_done_entry(run), "untouched": True}
    if not trained:
        if args.pretrained and not done:
            check_weights(args)
        (run / "SKIPPED.json").unlink(missing_ok=True)
        doing = ("retuning best.pt's thresholds (interrupted after the last epoch)" if done >= args.epochs else
                 f"resuming after epoch {done}/{args.epochs}" if done else
                 f"training {epochs_text(args.epochs)}")
        print(f"{tag} {doing} -> {run}", flush=True)
        train.main(train_config.parse_args(train_argv(run, args, done) + (["--quiet"] if quiet else []),
                                           run_options=False))
        if is_evaluated(run, exp):  # more epochs that did not change best.pt
            print(f"{tag} best.pt is the one evaluated before; its evaluation stands")
            return _done_entry(run)
    print(f"{tag} evaluating best.pt on the test split -> {run / 'eval'}", flush=True)
    shutil.rmtree(run / "eval", ignore_errors=True)  # stale or partial; kept until now in case training fails
    evaluate_cell(run, args, exp, quiet)
    return _done_entry(run)


def _done_entry(run: Path) -> dict:
    m = json.loads((run / "eval" / "metrics.json").read_text())
    return {"status": "done", "test_accuracy": m["accuracy"], "kappa": m["kappa"], "macro_f1": m["macro_f1"],
            "majority_accuracy": m["majority_accuracy"]}


# ---------------------------------------------------------------------------------------------- the grid
def _recorded_cells(status_file: Path) -> dict[str, dict]:
    """The cells an earlier ``experiment.json`` records (of this file, or of another with the same name and out)."""
    try:
        cells = json.loads(status_file.read_text())["cells"]
        return {name: entry for name, entry in cells.items() if isinstance(entry, dict)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def heading(exp: Experiment, data_note: str = "") -> str:
    """``experiment NAME: N cell(s) -> FOLDER (data FOLDER)``, absolute: relative paths are the current folder's."""
    return (f"experiment {exp.name}: {len(exp.cells)} cell(s) -> {exp.dir.resolve()} "
            f"(data {Path(exp.data).resolve()}{data_note})")


def run_experiment(exp: Experiment, quiet: bool = False, report: bool = True) -> dict:
    """Run every cell that is not finished; write ``experiment.json``; build the report if the file asks."""
    data = Path(exp.data)
    from ..data.synth import generate

    if check_data(exp):
        prepare_cells(exp, dry=True)  # a mistyped option is said before minutes of generating
        print(f"generating a synthetic dataset in {data} ({exp.synth})", flush=True)
        generate(data, **exp.synth, progress=not quiet)
    exp.dir.mkdir(parents=True, exist_ok=True)
    fresh = [c.dir for c in exp.cells if not c.dir.exists()]
    try:
        parsed = prepare_cells(exp)  # every cell checked before any runs
    except BaseException:  # the cell.yaml files written so far go: a refused file leaves no cells behind
        for folder in fresh:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    status_file = exp.dir / "experiment.json"
    recorded = _recorded_cells(status_file)
    last = {name: {k: entry[k] for k in ("status", "reason", "seconds") if k in entry}
            for name, entry in recorded.items()}
    status = {"name": exp.name, "config": str(exp.file.resolve()), "data": str(data.resolve()),
              "description": exp.description, "grid": exp.grid,
              "cells": {c.name: {"status": "pending", **last.get(c.name, {}), "dir": c.name, "values": c.values}
                        for c in exp.cells}}
    for name, entry in recorded.items():  # another file's runs in this folder stay on record (and in the report)
        d = exp.dir / str(entry.get("dir", name))
        if name not in status["cells"] and ((d / "config.yaml").exists() or (d / "SKIPPED.json").exists()):
            status["cells"][name] = entry
    write_json(status_file, status)
    kept = [name for name in status["cells"] if name not in {c.name for c in exp.cells}]
    print(heading(exp) + (f"; {len(kept)} cell(s) the file no longer has stay in its record and report: "
                          f"{', '.join(kept[:5])}" + (", ..." if len(kept) > 5 else "") if kept else ""), flush=True)
    start = time.perf_counter()
    for i, cell in enumerate(exp.cells, 1):
        tag = f"[{i}/{len(exp.cells)}] {cell.name}:"
        entry = status["cells"][cell.name]
        t0, kept, untouched = time.perf_counter(), entry.get("seconds"), False  # kept: the time its work took
        entry.update(status="incomplete", reason="its turn began and has not ended (interrupted?): run the "
                     "experiment again to finish it")  # not an earlier run's status, if this one is cut short
        write_json(status_file, status)
        try:
            result = run_cell(cell, parsed[cell.name], exp, quiet, tag)
            untouched = result.pop("untouched", False)
            entry.update(result)
            entry.pop("reason", None)
        except WeightsUnavailable as e:
            reason = str(e)
            entry.update(status="skipped", reason=reason)
            write_json(cell.dir / "SKIPPED.json", {"cell": cell.name, "status": "skipped", "reason": reason,
                                                    "train": train_config.plain_options(vars(parsed[cell.name]))})
            print(f"{tag} skipped - {str(e).splitlines()[0]}", flush=True)
        except NotWritten:  # a full disk: every next cell would fail as this one; it stays "incomplete"
            raise
        except (RetinopathyError, RuntimeError) as e:  # this cell's (data, weights, divergence, memory)
            entry.update(status="failed", reason=str(e))
            print(f"{tag} failed - {e}", file=sys.stderr, flush=True)
        entry["seconds"] = kept if untouched and kept is not None else round(time.perf_counter() - t0, 1)
        write_json(status_file, status)
        if entry["status"] == "done":
            print(f"{tag} test accuracy {entry['test_accuracy']:.3f} (majority class {entry['majority_accuracy']:.3f})"
                  f", kappa {entry['kappa']:.3f}, macro-F1 {entry['macro_f1']:.3f}", flush=True)
    counts = {s: sum(status["cells"][c.name]["status"] == s for c in exp.cells) for s in ("done", "skipped", "failed")}
    status["failed"] = counts["failed"]  # of this file's cells (another file's recorded cells are not re-run)
    status["none_done"] = not counts["done"]  # every cell skipped (or failed): nothing trained to compare
    print(f"experiment {exp.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
          + f" in {time.perf_counter() - start:.0f} s -> {exp.dir}")
    if report and exp.report_out is not None:
        from ..reporting.report import build_report

        index = build_report([exp.dir], exp.report_out)
        status["report"] = str(index)
        print(f"report: {index}")
    return status


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("retinopathy experiment", add_help=add_help,
                                description="Train and evaluate every cell of a grid described by a YAML file; "
                                            "re-running skips finished cells and resumes interrupted ones.")
    p.add_argument("config", metavar="CONFIG.yaml", help="experiment file (see configs/demo.yaml, configs/lab.yaml)")
    p.add_argument("--data", help="dataset folder (overrides data: in the file)")
    p.add_argument("--no-report", dest="report", action="store_false", help="do not build the report afterwards")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--dry-run", action="store_true",
                   help="check what a run would refuse (the data, cells run with other options, values train "
                        "refuses) and list the cells (how far each has got, its options), writing nothing")
    return show_defaults(p)


def check_images(cells) -> None:
    """The data read as each cell's training reads it (labels, format, columns, split, ``--skip-bad``), every
    image's header checked, and the split each cell selects on: a DataError for what a run would stop at, before
    any cell trains."""
    from ..cli.common import catalog_options
    from ..data import FundusDataset, load_catalog
    from ..training.run_data import selection_split

    seen = {}
    for args in cells:
        opts = catalog_options(args)
        key = json.dumps([opts, bool(args.skip_bad)], sort_keys=True, default=str)
        if key not in seen:
            seen[key] = load_catalog(args.data, **opts)
            FundusDataset(seen[key], "all", skip_bad=bool(args.skip_bad))
        selection_split(args, {s.split for s in seen[key].samples}, args.split_file)  # as training reads them


def list_cells(exp: Experiment) -> None:
    """``--dry-run``: what the experiment would refuse (its data and images, cells run with other options, values
    train refuses), checked as a run checks it but writing nothing; then each cell, what is in its folder, its
    options."""
    make = check_data(exp)
    parsed = prepare_cells(exp, dry=True)
    if not make and Path(exp.data).exists():
        check_images(parsed.values())
    print(heading(exp, ", which synth: would make" if make else ""))
    for i, cell in enumerate(exp.cells, 1):
        done = epochs_saved(cell.dir)
        there = ("skipped before (no ImageNet weights)" if (cell.dir / "SKIPPED.json").exists() else
                 "not started" if not done else
                 f"{done} of {parsed[cell.name].epochs} epochs trained" if done < parsed[cell.name].epochs else
                 "finished, evaluated" if is_evaluated(cell.dir, exp) else "finished, to be evaluated")
        print(f"[{i}/{len(exp.cells)}] {cell.name} ({there}): "
              + ", ".join(f"{k}: {v}" for k, v in cell.options.items()))


def main(args) -> dict:
    exp = load_experiment(args.config, args.data)
    (check_folder if args.dry_run else check_writable)(exp.dir, f"{exp.file}: out:")  # a dry run writes nothing
    if args.report and exp.report_out is not None:  # before any cell trains, and in the dry run
        from ..reporting.report import check_report_out

        check_report_out(exp.report_out, f"{exp.file}: report: out:")
    if args.dry_run:
        list_cells(exp)
        return {}
    with exclusive(exp.dir, "run as an experiment"):
        return run_experiment(exp, quiet=args.quiet, report=args.report)


def cli(argv: list[str] | None = None) -> int:
    """``retinopathy experiment``; SIGTERM stops it as Ctrl-C does (:func:`~retinopathy.launch.sigterm_as_ctrl_c`):
    the running cell saves what it has finished, and running the command again goes on from there."""
    args = get_args_parser().parse_args(argv)
    with sigterm_as_ctrl_c():
        status = main(args)
    return 1 if status.get("failed") or status.get("none_done") else 0
