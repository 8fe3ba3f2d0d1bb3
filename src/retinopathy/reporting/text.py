"""Words and numbers that the report (HTML and Markdown) and the model card share: how a number, an interval, a
run's training and its standing against the constant answer are written."""
from __future__ import annotations

import re

from ..data.formats import GRADES

RECIPES = "Variants, by the options in which their runs differ from the other runs of the same model:"


def md_cell(name: str) -> str:
    """A name as a Markdown table cell shows it: its '|' not a column break, its '<' not a tag."""
    return name.replace("|", "\\|").replace("<", "&lt;")


def md_text(text: str) -> str:
    """Free text (a name, a path, a description) as Markdown shows it: a '<' that would open a tag (``<b>``) is
    escaped, except in code spans, which show every character as it is; ``kappa <= 0`` stays as it is."""
    return re.sub(r"(`[^`]*`)|<(?=[A-Za-z/!?])", lambda m: m[1] or "&lt;", text)


def number(v, digits: int = 3, none: str = "-") -> str:
    """``v`` with ``digits`` decimals, or ``none`` where there is no number (None, or NaN)."""
    return none if v is None or v != v else f"{v:.{digits}f}"


REFERABLE_HEAD = "Referable DR: AUC [95% CI] / sensitivity / specificity"
REFERABLE_NOTE = ("Referable DR = grade 2 or worse; its AUC ranks the images by the predicted probability of grades "
                  "2-4 (0.5 = chance); sensitivity and specificity count a predicted grade 2 or worse as a referral.")


def bracket_ci(evaluation: dict, key: str) -> str:
    """' [lo, hi]', the 95 % interval of ``key`` in an evaluation's ``ci95``, or nothing when it has none."""
    ci = (evaluation.get("ci95") or {}).get(key)
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def referable_text(evaluation: dict) -> str:
    """'AUC [its 95 % CI] / sensitivity / specificity' of an evaluation, '-' for one it lacks (an earlier
    version's)."""
    return " / ".join([number(evaluation.get("referable_auc")) + bracket_ci(evaluation, "referable_auc"),
                       *(number(evaluation.get(f"referable_{k}")) for k in ("sensitivity", "specificity"))])


def grade_parts(evaluation: dict) -> list[tuple[str, str]]:
    """('recall / precision', 'n') of each grade of an evaluation: 'n/a' for the recall of a grade the split has
    no images of ('0 images'; just 'n/a' when it was never predicted either) and for the precision of a grade never
    predicted (also in evaluations written before undefined values were null)."""
    parts = []
    for g in GRADES:
        pg = evaluation["per_grade"][str(g)]
        never = (evaluation.get("predicted_counts") or [None] * len(GRADES))[g] == 0
        precision = "n/a" if never else number(pg["precision"], 2, "n/a")
        if not pg["support"]:
            parts.append(("n/a" if precision == "n/a" else f"n/a / {precision}", "0 images"))
        else:
            parts.append((f"{number(pg['recall'], 2, 'n/a')} / {precision}", str(pg["support"])))
    return parts


def ci_text(ci) -> str:
    """' (95% CI lo to hi)', or nothing when there is no interval."""
    return f" (95% CI {number(ci[0])} to {number(ci[1])})" if ci else ""


def first_line(text: str) -> str:
    """A reason's first line; with the next when it only announces it ("1 problem(s) in the dataset:")."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")


def epochs_text(n) -> str:
    """``1 epoch``, ``20 epochs``."""
    return f"{n} epoch" + ("" if n == 1 else "s")


def standing_text(run) -> str:
    """What an evaluated run that is not ``done`` says beside its numbers: its last run failed, or it trained on
    after that evaluation and stopped short; the evaluation shown is of the best.pt it still has."""
    said = "its last run failed" if run.status == "failed" else "unfinished"
    return f"{said}: {first_line(run.reason)}"


def training_text(t: dict) -> str:
    """A run's training options in one line, for the report and the model card: ``20 epochs (5 with the backbone
    frozen), sgd lr 0.001 momentum 0.9 ...``; without pretrained weights the frozen backbone is a random one."""
    backbone = "backbone" if t.get("pretrained", True) or t.get("weights") else "random (not pretrained) backbone"
    frozen = f" ({t['freeze_epochs']} with the {backbone} frozen)" if t.get("freeze_epochs") else ""
    return (f"{epochs_text(t.get('epochs'))}{frozen}, {t.get('optimizer')} lr {t.get('lr')}"
            + (f" momentum {t.get('momentum')}" if t.get("optimizer") == "sgd" else "")
            + f" weight decay {t.get('weight_decay')}"
            + (f" ({t['norm_weight_decay']} on normalisation layers)" if t.get("norm_weight_decay") is not None else "")
            + f", scheduler {t.get('scheduler')}, batch {t.get('batch_size')}, "
            f"class weights {t.get('class_weights')}, sampler {t.get('sampler')}, label smoothing "
            f"{t.get('label_smoothing')}, mixup alpha {t.get('mixup', 0.0)}, seed {t.get('seed')}")


def majority_text(n: dict) -> str:
    """A run's own baseline, for a cell beside runs tested on other test splits."""
    return f"its test split: always answering grade {n['majority_grade']} scores {number(n['majority_accuracy'])}"


def warning_text(n: dict) -> str:
    """Why a run is flagged: it has not learnt to grade (kappa <= 0), or it grades but is right less often
    than always answering the most common grade."""
    if n["kappa"] <= 0:
        return f"no better than always answering grade {n['majority_grade']}"
    return (f"accuracy not above always answering grade {n['majority_grade']} "
            f"({number(n['majority_accuracy'])}), although kappa > 0")


def cell_notes(run) -> list[tuple[str, str]]:
    """What a results cell says below its numbers and selected epoch, in both renderings: (kind, text), kind
    ``note`` (about the evaluation), ``small`` (small print), ``lab`` (the lab's number) or ``warn`` (marked)."""
    n, sel = run.numbers, run.numbers.get("selection_split") or "?"
    notes = [("note", n["evaluation_note"])] if n.get("evaluation_note") else []
    if n.get("trained_on"):
        notes.append(("warn", n["trained_on"]))
    if n.get("own_majority"):
        notes.append(("small", majority_text(n)))
    if run.status != "done":
        notes.append(("warn", standing_text(run)))
    if "best_selection_accuracy" in n:
        notes.append(("small", f"best {sel} accuracy {number(n['best_selection_accuracy'])} "
                               f"(epoch {n['best_selection_epoch']})"))
    if "max_test_accuracy" in n:
        notes.append(("lab", f"highest test accuracy over epochs {number(n['max_test_accuracy'])} (epoch "
                             f"{n['max_test_epoch']}) - the lab's number, optimistic"
                      + (f"; {n['max_test_note']}" if "max_test_note" in n else "")))
    if n.get("warning"):
        notes.append(("warn", warning_text(n)))
    return notes


def baselines(runs, model: str) -> list[tuple[float, int]]:
    """(accuracy, grade) of always answering the most common grade, for each test split of a model's evaluated
    runs."""
    return sorted({(r.numbers["majority_accuracy"], r.numbers["majority_grade"]) for r in runs
                   if r.model == model and r.eval is not None})


def baselines_text(majors: list[tuple[float, int]]) -> tuple[str, str]:
    """The baseline accuracies and the grade(s) they answer: '0.800 / 0.875', 'always answering grade 0' where
    one grade serves every split, each accuracy with its grade where they differ."""
    if len({g for _, g in majors}) > 1:
        return (" / ".join(f"{number(a)} (grade {g})" for a, g in majors),
                "always answering the split's most common grade")
    return " / ".join(number(a) for a, _ in majors) or "-", f"always answering grade {majors[0][1]}" if majors else ""
