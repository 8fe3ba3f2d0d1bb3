"""``retinopathy report RUN_OR_EXPERIMENT_DIR... --out DIR``: one page that compares trained runs.

Writes ``DIR/index.html`` (self-contained: inline CSS, figures as base64 data URIs, no scripts; opens offline)
and ``DIR/report.md`` with the figures as PNGs beside it: the results table (one row per model, one column per
variant such as pretrained/from scratch) beside the majority-class baseline, learning curves, confusion
matrices, per-grade recall and precision, and each run's configuration, data, selection rule, time, hardware
and versions. Accepts experiment folders, run folders, or folders of them (runs/). A run without
``eval/metrics.json`` is shown as "not evaluated" with the command that evaluates it (the report does not
evaluate by itself); skipped, failed and unfinished cells are shown with their reason.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import errno
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from ..atomic import write_text
from ..cli.common import show_defaults
from ..data.formats import GRADES
from ..data.prepare import prepared_from
from ..data.synth import is_synthetic
from ..evaluation.metrics import no_better_than_majority, seen_images
from ..models.restore import display_name
from ..outputs import check_writable, refuse_photograph_folder, refuse_run_folder
from ..training.config import PRESETS, option_value
from . import figures
from .html import GENERATOR, LEGEND, render_html
from .runs import ReportError, Run, collect, read_record
from .text import (RECIPES, REFERABLE_HEAD, REFERABLE_NOTE, baselines, baselines_text, cell_notes, ci_text, epochs_text,
                   first_line, grade_parts, md_cell, md_text, number, referable_text, training_text)

# Options that never tell two variants apart:
IGNORED = {"config", "out", "resume", "data", "quiet", "workers", "device", "amp", "eval_amp", "channels_last",
           "compile", "deterministic", "cache_images", "stop_after", "split_file", "weights", "model", "pretrained",
           "labels", "images"}
MAX_LABEL_OPTIONS = 3  # runs that differ in more options are labelled by their names


# ------------------------------------------------------------------------------------------- numbers
def assign_variants(runs: list[Run]) -> None:
    """Label each run by where its weights started (:attr:`Run.start`), plus its name in its experiment or else
    the options that differ between runs of the same model and start (e.g. 'from scratch, seed 1'; the runs'
    names where more than three differ among them); colour the labels consistently."""
    groups = defaultdict(list)
    for r in runs:
        groups[(r.model, r.start)].append(r)
    differing = {}
    for group in groups.values():
        named = set.union(*(set(r.train) for r in group)) - IGNORED if len(group) > 1 else set()  # absent: default
        keys = {k for k in named if len({json.dumps(option_value(r.train, k), default=str) for r in group}) > 1}
        differing.update({id(r): keys for r in group})
    several = len({r.experiment for r in runs if r.experiment}) > 1  # a variant's name is its experiment's own
    for r in runs:
        keys = differing[id(r)]
        shown = {k: r.train[k] if r.train.get(k) is not None else option_value(r.train, k) for k in keys}
        shown = {k: int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 1e15 else v
                 for k, v in shown.items()}  # 0, not 0.0; 1e+30, not its 31 digits
        named = f"{r.experiment}: {r.named}" if several and r.named and r.experiment not in (None, r.named) \
            else r.named  # a one-run experiment's run is named after it already
        r.differs = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(shown.items()))
        extra = named or (r.name if len(keys) > MAX_LABEL_OPTIONS else r.differs)
        r.variant = r.start + (f", {extra}" if extra else "")
    twice = Counter((r.model, r.variant) for r in runs)
    for r in runs:
        if twice[(r.model, r.variant)] > 1:
            r.variant += f" ({r.name})"
    colours = figures.variant_colours(list(dict.fromkeys((r.variant, r.pretrained) for r in runs)))
    for r in runs:
        r.colour = colours[r.variant]


def _best(rows: list[dict], column: str) -> tuple[float, int] | None:
    """(highest value, its 1-based epoch) of a metrics.csv column; the first epoch wins ties."""
    values = [(r[column], r["epoch"] + 1) for r in rows if r.get(column) is not None]
    return max(values, key=lambda v: (v[0], -v[1])) if values else None


def run_numbers(run: Run) -> dict:
    """Everything the tables show for one run (1-based epochs)."""
    n: dict = {}
    selection = (run.config or {}).get("selection", {})
    n["selection_split"], n["selection_metric"] = selection.get("split"), selection.get("metric")
    if run.rows:
        n["epochs_done"] = len(run.rows)
        n["seconds"] = sum(r.get("epoch_seconds") or 0 for r in run.rows)
        if n["selection_split"] and (best := _best(run.rows, f"{n['selection_split']}_accuracy")):
            n["best_selection_accuracy"], n["best_selection_epoch"] = best
        if best := _best(run.rows, "test_accuracy"):
            n["max_test_accuracy"], n["max_test_epoch"] = best
            train = (run.config or {}).get("train") or {}
            notes = [("on the run's own test split" if (run.eval or {}).get("split_file") else
                      "on the training data's test split")] if other_data(run) else []
            if train.get("threshold_data") == "train+selection" and option_value(train, "decision") == "thresholds":
                notes.append("at each epoch's thresholds, before the shipped ones were retuned")
            if notes:
                n["max_test_note"] = "; ".join(notes)
    ev = run.eval
    if ev is not None:
        n.update(test_accuracy=ev["accuracy"], kappa=ev["kappa"], macro_f1=ev["macro_f1"],
                 majority_accuracy=ev["majority_accuracy"], referable_auc=ev.get("referable_auc"),
                 selected_epoch=ev["epoch"] + 1, test_count=ev["count"],
                 majority_grade=max(GRADES, key=lambda g: ev["true_counts"][g]),
                 ci_accuracy=(ev.get("ci95") or {}).get("accuracy"), ci_kappa=(ev.get("ci95") or {}).get("kappa"))
        n["warning"] = no_better_than_majority(ev)
        n["evaluation_note"] = evaluation_note(run)
        if seen := seen_images(ev):
            n["trained_on"] = f"of its {ev['count']} images, {seen}: the numbers overstate"
    return n


def other_data(run: Run) -> bool:
    """Whether the run's evaluation graded other data than it trained on (not a ``prepare``d copy of it, nor the
    originals of the copy it trained on), or another split of it (a --split-file): so not the test split of its
    curves."""
    ev, trained = run.eval or {}, run.data
    return bool(ev.get("data") and trained and Path(ev["data"]) != Path(trained) and not copy_of(ev["data"], trained)
                or ev.get("split_file"))


def copy_of(evaluated: str, trained: str) -> str:
    """How the evaluated folder is the training data when one of the two is a ``prepare``d copy of the other
    (the same photographs, decoded otherwise); '' when neither is."""
    if prepared_from(trained) == str(Path(evaluated).resolve()):
        return "the originals of the prepared copy it trained on"
    if prepared_from(evaluated) == str(Path(trained).resolve()):
        return "a prepared copy of its training data"
    return ""


def curve_baseline(run: Run) -> float | None:
    """The majority-class rate of the test split its curves follow (its grade counts in config.yaml, so evaluated
    or not), or None."""
    counts = (((run.config or {}).get("data") or {}).get("eval_counts") or {}).get("test")
    return max(counts) / sum(counts) if counts and sum(counts) else None


def evaluation_note(run: Run) -> str:
    """How the evaluation differs from the run's own setting (other data, another --blend-eyes), or ''."""
    ev = run.eval or {}
    notes = []
    if ev.get("split_file"):
        notes.append(f"evaluated on the split of {ev['split_file']}, not the run's own")
    elif ev.get("data") and run.data and Path(ev["data"]) != Path(run.data):  # other data, or a prepared copy's
        notes.append(f"evaluated on {ev['data']}, {copy_of(ev['data'], run.data) or 'not the training data'}")
    if ev.get("blend_eyes") is not None and ev["blend_eyes"] != (run.train.get("blend_eyes") or 0.0):
        notes.append(f"graded with --blend-eyes {ev['blend_eyes']} (trained with {run.train.get('blend_eyes') or 0})")
    if ev.get("skipped"):
        notes.append(f"{ev['skipped']} image(s) left out by --skip-bad (its skipped.csv): the numbers are of the rest")
    return "; ".join(notes)


def _tested_images(run: Run) -> frozenset | None:
    """The images of a run's predictions.csv, or None when it has none to read."""
    try:
        with open(run.dir / "eval" / "predictions.csv", newline="", encoding="utf-8") as f:
            return frozenset(row["image"] for row in csv.DictReader(f)) or None
    except (OSError, KeyError, UnicodeDecodeError, csv.Error):
        return None


def splits_differ(runs: list[Run]) -> bool:
    """Whether the evaluated ``runs`` were tested on different photographs: by their predictions.csv's images when
    every run has them, else by data, number of test images and grade mix."""
    images = [_tested_images(r) for r in runs]
    if all(images):
        return len(set(images)) > 1
    return len({(str(r.eval.get("data") or r.data), r.eval["count"], tuple(r.eval["true_counts"])) for r in runs}) > 1


def at_a_glance(runs: list[Run]) -> list[str]:
    """A few plain sentences that sum the comparison up."""
    done = [r for r in runs if r.eval is not None]
    lines = []
    datas = {str(r.eval.get("split_file") or r.eval.get("data") or r.data) for r in done}  # a split file: its split
    counts = {r.numbers["test_count"] for r in done}
    differ = splits_differ(done)
    lines.append(f"{len(done)} of {len(runs)} runs are evaluated on " + ("test splits" if differ else "the test split")
                 + (f" of {next(iter(datas))}" if len(datas) == 1 else "")
                 + (f" ({counts.pop()} images{' each' if differ else ''})." if len(counts) == 1 else
                    f" ({min(counts)} to {max(counts)} images)." if counts else "."))
    if differ:
        lines.append("Their test splits differ (other data, split seeds or split files): compare each run with its "
                     "own split's baseline, and expect kappas to differ also by the photographs drawn, as the "
                     "intervals say.")
    unskilled = [r for r in done if r.numbers["kappa"] <= 0]
    graders = [r for r in done if r.numbers["kappa"] > 0]
    if graders:
        best = max(graders, key=lambda r: (not r.numbers.get("trained_on"), r.numbers["kappa"],
                                           r.numbers["test_accuracy"]))  # an evaluation on seen images: last
        b = best.numbers
        close = [r for r in done if r is not best and b.get("ci_kappa") and r.numbers.get("ci_kappa")
                 and r.numbers["ci_kappa"][1] >= b["ci_kappa"][0]]  # intervals that overlap the best's
        lines.append(f"Highest quadratic kappa: {best.title}, {best.variant} - kappa {b['kappa']:.3f}"
                     f"{ci_text(b.get('ci_kappa'))}, test accuracy {b['test_accuracy']:.3f} (always answering grade "
                     f"{b['majority_grade']} scores {b['majority_accuracy']:.3f})."
                     + (f" Its interval overlaps those of {len(close)} other run(s): not a clear winner." if close
                        else ""))
    if unskilled and not graders:
        lines.append("Warning: no evaluated run is better than always answering the most common grade (kappa <= 0): "
                     "none of them has learnt to grade. More data, epochs, resolution or pretrained weights are "
                     "needed.")
    elif unskilled:
        lines.append(f"Warning: {len(unskilled)} of {len(done)} evaluated runs are no better than always answering "
                     "the most common grade (kappa <= 0): " + ", ".join(r.name for r in unskilled) + ".")
    trained_on = [r for r in done if r.numbers.get("trained_on")]
    if trained_on:
        lines.append(f"Warning: the evaluations of {', '.join(r.name for r in trained_on)} include images the run "
                     "trained on or chose its checkpoint on (its val split; another split file, or other data that "
                     "holds them): their numbers overstate.")
    below = [r for r in graders if r.numbers["warning"]]
    if below:
        lines.append(f"Warning: {len(below)} of {len(done)} evaluated runs grade (kappa > 0) but are right less often "
                     "than always answering the most common grade (test accuracy at or below it): "
                     + ", ".join(r.name for r in below) + ".")
    for r in runs:
        if r.eval is None:
            lines.append(f"Missing: {r.name} - {r.status}: {first_line(r.reason)}")
        elif r.status != "done":  # failed or stopped short since; its earlier evaluation still applies to its best.pt
            lines.append(f"{'Failed on its last run' if r.status == 'failed' else 'Unfinished'}: {r.name} (its "
                         f"evaluation of the best checkpoint so far is shown): {first_line(r.reason)}")
    if any(r.status == "skipped" for r in runs):
        lines.append("Skipped cells run when the experiment is run again with their ImageNet weights available (each "
                     "cell's reason says how to get them); finished cells are not run again.")
    if any(r.numbers.get("selection_split") == "test" for r in runs):
        lines.append("Some runs pick their checkpoint on the test split (the lab's rule), so their test numbers are "
                     "optimistic; a validation split gives honest ones.")
    learnt = [r for r in runs if is_synthetic(str(r.data))]
    tested = [r for r in done if is_synthetic(str(r.eval.get("data") or r.data))]
    if done and len(tested) == len(done) or not done and learnt:
        lines.append("The data are synthetic drawings (retinopathy.data.synth), not photographs of patients: these "
                     "numbers show the pipeline works, not how well a model grades real eyes.")
        return lines
    if tested:
        lines.append(f"{', '.join(r.name for r in tested)} {'is' if len(tested) == 1 else 'are'} tested on synthetic "
                     "drawings (retinopathy.data.synth), not photographs of patients: "
                     f"{'its' if len(tested) == 1 else 'their'} numbers show the pipeline works, not how well a model "
                     "grades real eyes.")
    if any(r.eval is not None and r not in tested for r in learnt):
        lines.append("Some runs learnt from synthetic drawings (retinopathy.data.synth), not from photographs of "
                     "patients; their evaluations here are on photographs.")
    return lines


# ------------------------------------------------------------------------------------------- building
OWN_PAGES = {"index.html": re.compile(re.escape(GENERATOR) + '|<section id="runs"><h2>Runs: configuration').search,
             "report.md": re.compile(r"# .*?\n\nGenerated \d{4}-\d\d-\d\d \d\d:\d\d from ", re.S).match}  # a
# report's pages, an earlier version's too


FIGURE = re.compile(r"(accuracy|loss)-.+\.png|confusion\.png")  # the figures a report writes


def check_report_out(out: Path, option: str = "--out") -> None:
    """Refuse an ``out`` (given as ``option``) that is a file, a run's folder or a folder of photographs, or that
    holds an index.html or report.md the report did not write."""
    check_writable(out, option)
    refuse_run_folder(out, option, "report")
    refuse_photograph_folder(out, option, FIGURE.fullmatch, out.absolute().parent / f"{out.absolute().name}-report")
    # (beside it, not inside: a folder given to predict is searched recursively)
    for name, own in OWN_PAGES.items():
        try:
            text = (out / name).read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, NotADirectoryError):
            continue
        if not own(text):
            raise FileExistsError(errno.EEXIST, f"{option} {out} holds {name}, not a report's: the report would "
                                  f"replace it; choose another folder (or remove that file)", str(out / name))


def build_report(paths, out: str | Path, title: str | None = None) -> Path:
    """Write ``out/index.html``, ``out/report.md`` and the PNGs; return the path of index.html."""
    runs = collect(paths)
    if not runs:
        raise ReportError("no runs to report on")
    assign_variants(runs)
    for r in runs:
        r.numbers = run_numbers(r)
    for model in dict.fromkeys(r.model for r in runs):  # test splits of other grade mixes: each its own baseline
        mine = [r for r in runs if r.model == model and r.eval is not None]
        if len({round(r.numbers["majority_accuracy"], 6) for r in mine}) > 1:
            for r in mine:
                r.numbers["own_majority"] = True
    out = Path(out)
    check_report_out(out)
    out.mkdir(parents=True, exist_ok=True)
    models = list(dict.fromkeys(r.model for r in runs))
    variants = sorted(dict.fromkeys(r.variant for r in runs), key=lambda v: not v.startswith("ImageNet"))
    grid = {(r.model, r.variant): r for r in runs}
    figs = []
    for model in models:
        mine = [r for r in runs if r.model == model and r.rows]
        if not mine:
            continue
        series = [{"label": r.variant, "colour": r.colour, "rows": r.rows, "objective": r.objective,
                   "freeze_epochs": int(r.train.get("freeze_epochs") or 0), "train_loss_terms": loss_terms(r.train),
                   "baseline": curve_baseline(r)} for r in mine]
        for metric in ("accuracy", "loss"):
            name = f"{metric}-{model}.png"
            figures.curves_figure(f"{display_name(model)}: {metric} per epoch", series, metric, out / name)
            figs.append({"file": name, "kind": metric, "model": model,
                         "title": f"{display_name(model)}: {metric}"})
    cells = {(display_name(m), v): (grid[(m, v)].eval["confusion_matrix"] if grid[(m, v)].eval is not None
                                    else f"{grid[(m, v)].status}: {first_line(grid[(m, v)].reason)}")
             for m in models for v in variants if (m, v) in grid}
    figures.confusion_grid([display_name(m) for m in models], variants, cells, out / "confusion.png")
    figs.append({"file": "confusion.png", "kind": "confusion", "model": None,
                 "title": "Normalized confusion matrices (rows: true grade)"})
    experiments = [read_record(Path(p) / "experiment.json", json.loads) for p in paths
                   if (Path(p) / "experiment.json").exists()]
    named = list(dict.fromkeys(r.experiment for r in runs))  # the title names them when they are all it compares
    default_title = "Diabetic-retinopathy grader comparison" + (
        f": experiment{'s' * (len(named) > 1)} {', '.join(named)}" if None not in named else "")
    about = list(dict.fromkeys(e["description"] for e in experiments if e.get("description")))  # each once
    recipes: dict[str, dict[str, str]] = {}  # what a named variant changes (per model), which its label does not say
    for r in runs:
        if r.named and r.differs:
            recipes.setdefault(r.variant, {})[display_name(r.model)] = r.differs
    ctx = {"title": title or default_title, "about": about,
           "generated": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "inputs": [str(p) for p in paths],
           "runs": runs, "models": models, "variants": variants, "grid": grid, "figures": figs,
           "colours": {r.variant: r.colour for r in runs}, "glance": at_a_glance(runs),
           "recipes": {v: next(iter(d.values())) if len(set(d.values())) == 1 else  # one text, else each model's
                       "; ".join(f"{m}: {t}" for m, t in d.items()) for v, d in recipes.items()}}
    write_text(out / "report.md", render_markdown(ctx))
    write_text(out / "index.html", render_html(ctx, out))
    return out / "index.html"


# ------------------------------------------------------------------------------------------- markdown
def cell_lines(run: Run) -> list[str]:
    """The lines of one results-table cell in report.md."""
    n = run.numbers
    if run.eval is None:
        return [f"{run.status}: {first_line(run.reason)}" if run.reason.strip() else run.status]
    sel, metric = n.get("selection_split") or "?", n.get("selection_metric") or "?"
    return [f"test accuracy {number(n['test_accuracy'])}{ci_text(n.get('ci_accuracy'))}, {n['test_count']} images",
            f"kappa {number(n['kappa'])}{ci_text(n.get('ci_kappa'))}, macro-F1 {number(n['macro_f1'])}",
            f"selected checkpoint: epoch {n['selected_epoch']} (best {sel} {metric})",
            *(f"**⚠ {text}**" if kind == "warn" else text for kind, text in cell_notes(run))]


def render_markdown(ctx: dict) -> str:
    runs, grid = ctx["runs"], ctx["grid"]
    md = [f"# {md_text(ctx['title'])}", "", md_text(f"Generated {ctx['generated']} from {', '.join(ctx['inputs'])}."),
          ""]
    md += [line for about in ctx["about"] for line in (md_text(about), "")]
    md += ["## At a glance", ""] + [f"- {md_text(line)}" for line in ctx["glance"]] + ["", "## Results", ""]
    md.append("| Model | " + " | ".join(map(md_cell, ctx["variants"]))
              + " | Baseline: always the most common grade (test accuracy) |")
    md.append("|---" * (len(ctx["variants"]) + 2) + "|")
    for m in ctx["models"]:
        cells = []
        for v in ctx["variants"]:
            r = grid.get((m, v))
            if r is None:
                cells.append("not in this comparison")
                continue
            cells.append("<br>".join(map(md_cell, cell_lines(r))))
        majors = baselines_text(baselines(runs, m))[0]
        md.append(f"| {display_name(m)} | " + " | ".join(cells) + f" | {majors} |")
    md += ["", " ".join(re.sub(r"<[^>]+>", "", line).replace("&#9888;", "⚠") for line in LEGEND)]
    if ctx["recipes"]:
        md += ["", RECIPES, ""]
        md += [f"- **{v}**: {d}" for v, d in ctx["recipes"].items()]
    md += ["", "### All runs", "",
           ("| Run | Model | Variant | Status | Test images | Selected epoch | Test accuracy | Kappa | Macro-F1 "
            "| Majority accuracy | Referable AUC | Best selection accuracy (epoch) | Highest test accuracy (epoch) "
            "| Time (s) |"),
           "|---" * 14 + "|"]
    for r in runs:
        n = r.numbers
        best = (f"{number(n['best_selection_accuracy'], 4)} ({n['best_selection_epoch']}, {n['selection_split']})"
                if "best_selection_accuracy" in n else "-")
        top = f"{number(n['max_test_accuracy'], 4)} ({n['max_test_epoch']})" if "max_test_accuracy" in n else "-"
        md.append(f"| {md_cell(r.name)} | {r.title} | {md_cell(r.variant)} | {r.status} | "
                  f"{n.get('test_count', '-')} | {n.get('selected_epoch', '-')} | "
                  + " | ".join(number(n.get(k), 4) for k in ("test_accuracy", "kappa", "macro_f1", "majority_accuracy",
                                                              "referable_auc"))
                  + f" | {best} | {top} | {number(n.get('seconds'), 0)} |")
    md += ["", "## Figures", ""]
    for f in ctx["figures"]:
        md += [f"### {f['title']}", "", f"![{f['title']}]({f['file']})", ""]
    md += ["## Per-grade recall and precision (test split)", "",
           "| Run | " + " | ".join(f"grade {g} recall / precision (n)" for g in GRADES) + f" | {REFERABLE_HEAD} |",
           "|---" * 7 + "|"]
    for r in runs:
        if r.eval is not None:
            md.append(f"| {md_cell(r.name)} | " + " | ".join(f"{values} ({n})" for values, n in grade_parts(r.eval))
                      + f" | {referable_text(r.eval)} |")
    md += ["", "n/a: no recall for a grade with no test images, no precision for a grade never predicted. "
           + REFERABLE_NOTE, "",
           "## Runs", ""]
    for r in runs:
        md += [f"### {md_cell(r.name)}", ""] + [f"- **{k}**: {md_text(str(v))}" for k, v in run_details(r)] + [""]
    return "\n".join(md)


def loss_terms(t: dict) -> list[str]:
    """What a run's training loss adds to the plain loss its val and test losses are (``evaluate``'s)."""
    return [name for name, on in (("class weights", option_value(t, "class_weights") not in (None, "none")),
                                  ("label smoothing", bool(option_value(t, "label_smoothing"))),
                                  ("mixup", bool(option_value(t, "mixup")))) if on]


def _preset_text(t: dict) -> str:
    """``, preset lab`` and the preset's options the run changed (a run named after a recipe it does not follow)."""
    if not t.get("preset") or t["preset"] not in PRESETS:
        return f", preset {t['preset']}" if t.get("preset") else ""
    preset = {**PRESETS[t["preset"]], "preset": t["preset"], "model": t.get("model")}  # its batch size is the model's
    changed = [k for k in [*PRESETS[t["preset"]], "batch_size"] if option_value(t, k) != option_value(preset, k)]
    return f", preset {t['preset']}" + (f" with {', '.join(changed)} changed" if changed else "")


def _grading_text(t: dict) -> str:
    """How the run's outputs become grades: the most probable grade or the score at tuned thresholds, and what
    of the patient's other eye it uses (``--pair-eyes``, ``--blend-eyes``)."""
    if option_value(t, "decision") == "thresholds":
        on = "the training and selection images" if option_value(t, "threshold_data") == "train+selection" else \
            "the selection split"
        rule, margin = option_value(t, "threshold_rule"), option_value(t, "threshold_margin")
        text = (f"grades cut from the score at thresholds tuned for {rule} on {on}"
                + (f" (accuracy margin {margin:g})" if margin and rule == "kappa-above-majority" else ""))
    else:
        text = "grade: the most probable"
    if option_value(t, "pair_eyes"):
        text += "; sees both eyes of a patient (features concatenated)"
    if option_value(t, "blend_eyes"):
        text += f"; each eye's score mixed with the other eye's, weight {option_value(t, 'blend_eyes'):g}"
    return text


def _resumed_text(earlier: dict) -> str:
    """One entry of config.yaml's ``earlier``: ``after epoch 3, which ran on cpu (amp bf16, processes 1)``, of
    what it records."""
    eng = earlier.get("engine") if isinstance(earlier.get("engine"), dict) else {}
    how = ", ".join(f"{name} {eng[key]}" for key, name in (("amp", "amp"), ("world_size", "processes"))
                    if eng.get(key) is not None)
    return (f"after epoch {earlier.get('epochs', '?')}"
            + (f", which ran on {eng['device']}" if eng.get("device") else "") + (f" ({how})" if how else ""))


def run_details(run: Run) -> list[tuple[str, str]]:
    """(label, text) pairs that describe one run: configuration, data, split, selection, time, hardware, versions."""
    t, c = run.train, run.config or {}
    reason = " ".join(run.reason.split())
    out = [("Folder", str(run.dir)), ("Status", run.status + (f" - {reason}" if reason else ""))]
    if t:
        weights = c.get("weights") or ("ImageNet" if run.pretrained else "none (from scratch)")
        out.append(("Model", (f"{display_name(str(t.get('model')))}, {t.get('head', '?')} head, "
                              f"{t.get('objective', '?')} objective, {_grading_text(t)}; weights: {weights}")))
        out.append(("Training", training_text(t) + _preset_text(t)))
        out.append(("Images", (f"{t.get('image_size')} px, preprocessing {t.get('preprocess')}, augmentation "
                               f"{t.get('augment')}"
                               + (f", trained on {t['train_crop_size']} px windows" if t.get("train_crop_size")
                                  else ""))))
    data = c.get("data")
    if data:
        counts = "; ".join(f"{sp} {sum(v)} {v}" for sp, v in
                           [("train", data.get("train_counts") or [])] + list((data.get("eval_counts") or {}).items()))
        out.append(("Data", f"{data.get('path')} ({data.get('format')} format)"))
        out.append(("Split", f"{run.dir / 'split.csv'}; images per grade 0-4: {counts}"))  # where it is now
        if data.get("leakage_warnings"):
            out.append(("Split warnings", "; ".join(data["leakage_warnings"])))
    sel = c.get("selection")
    if sel:
        out.append(("Selection rule", f"best.pt = best {sel.get('split')} {sel.get('metric')}; {sel.get('note')}"))
    if run.rows:
        secs = run.numbers.get("seconds", 0)
        took = f"{secs / 60:.1f} min" if secs >= 60 else f"{secs:.1f} s"
        out.append(("Time", f"{took} over {epochs_text(len(run.rows))} (sum of epoch_seconds)"))
    earlier = [e for e in c.get("earlier") if isinstance(e, dict)] if isinstance(c.get("earlier"), list) else []
    if earlier:  # a resumed (or extended) run: the epochs before each resume ran as then set up
        out.append(("Resumed", "; ".join(_resumed_text(e) for e in earlier)
                    + "; the options shown are the last run's (config.yaml: earlier)"))
    eng, env = c.get("engine"), c.get("environment")
    if eng or env:
        eng, env = eng or {}, env or {}
        out.append(("Hardware", f"{eng.get('device')} (amp {eng.get('amp')}, {eng.get('workers')} loader workers, "
                                f"{eng.get('world_size')} process(es)); CPU {env.get('cpu')} x{env.get('cpu_count')}"
                                + (f"; GPU {env['cuda']}" if env.get("cuda") else "") + f"; {env.get('platform')}"))
        out.append(("Versions", ", ".join(f"{k} {v}" for k, v in env.items()
                                          if k not in ("platform", "cpu", "cpu_count", "cuda") and v)))
    return out


# ------------------------------------------------------------------------------------------- command
def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("retinopathy report", add_help=add_help,
                                description="Build an HTML page (self-contained) and a Markdown report comparing "
                                            "runs: experiment folders, run folders or folders of them (runs/).")
    p.add_argument("inputs", nargs="+", metavar="RUN_OR_EXPERIMENT_DIR")
    p.add_argument("--out", required=True, help="folder for index.html, report.md and the PNGs")
    p.add_argument("--title", help="page title")
    return show_defaults(p)


def main(args) -> Path:
    index = build_report(args.inputs, args.out, args.title)
    print(f"report: {index}")
    return index


def cli(argv: list[str] | None = None) -> int:
    main(get_args_parser().parse_args(argv))
    return 0
