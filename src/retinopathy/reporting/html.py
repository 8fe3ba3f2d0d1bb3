"""The report as one self-contained HTML page: inline CSS, figures as base64 data URIs, no scripts.

The results table is ``<table id="results">``; each of its cells carries the numbers as data attributes
(``data-run``, ``data-status``, ``data-test-accuracy``, ``data-kappa``, ``data-macro-f1``, ...), full precision.
"""
from __future__ import annotations

import base64
from html import escape
from pathlib import Path

import yaml

from ..data.formats import GRADES
from .text import (RECIPES, REFERABLE_HEAD, REFERABLE_NOTE, baselines, baselines_text, cell_notes, ci_text, grade_parts,
                   number, referable_text)

GENERATOR = '<meta name="generator" content="retinopathy report">'  # what --out may replace: a report's page
CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Helvetica,Arial,sans-serif;margin:0;
 background:#f4f5f7;color:#1d232b;line-height:1.45;font-size:15px}
main{max-width:1200px;margin:0 auto;padding:22px 26px 60px}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:19px;margin:0 0 12px}
h3{font-size:16px;margin:14px 0 8px}
.sub{color:#5b6470;font-size:13px}
.about{margin:8px 0 0;max-width:950px}
section{background:#fff;border:1px solid #dfe3e8;border-radius:10px;padding:16px 22px;margin:16px 0}
.glance ul{margin:0;padding-left:20px}
.glance li{margin:4px 0}
.glance li.warn{color:#7a4a00;font-weight:600}
table{border-collapse:collapse;width:100%}
#results{table-layout:fixed}
#results col.model{width:130px}
#results col.baseline{width:170px}
th,td{border:1px solid #dfe3e8;padding:8px 10px;vertical-align:top;text-align:left}
thead th{background:#eef1f4;font-weight:650}
tbody th{background:#f8f9fb;font-size:17px;white-space:nowrap}
.swatch{display:inline-block;width:13px;height:13px;border-radius:3px;margin-right:7px;vertical-align:-1px}
.big{font-size:24px;font-weight:700;line-height:1.1}
.label{font-size:12.5px;color:#5b6470}
.pair{margin:5px 0 6px}
.pair b{font-size:16px}
.small{font-size:12.5px;color:#3d454f;margin-top:2px}
.lab{color:#6e5200}
.badge{display:inline-block;margin-top:7px;padding:3px 8px;border-radius:6px;background:#fff0d1;
 border:1px solid #c77c00;color:#6b3f00;font-weight:650;font-size:13px;overflow-wrap:anywhere}
td.missing{background:#f6f6f6;color:#444}
.status{display:inline-block;padding:2px 8px;border-radius:6px;background:#e4e6ea;font-weight:650;font-size:13px;
 text-transform:uppercase;letter-spacing:.03em}
.reason{font-size:13px;margin-top:6px;word-break:break-word}
.reason details{font-size:12px;color:#555;margin-top:4px;white-space:pre-wrap}
.baseline{font-size:20px;font-weight:650;color:#555}
.legend{font-size:13px;color:#3d454f;margin:10px 0 0;padding-left:20px}
.legend li{margin:2px 0}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(540px,1fr));gap:14px}
figure{margin:0}
figure img{width:100%;height:auto;border:1px solid #e6e8eb;border-radius:6px}
figcaption{font-size:13px;color:#3d454f;margin-top:4px}
img.wide{max-width:100%;width:auto}
table.grades td,table.grades th{font-size:13.5px;text-align:right}
table.grades td:first-child,table.grades th:first-child{text-align:left;white-space:nowrap}
details.run{border:1px solid #dfe3e8;border-radius:8px;padding:8px 12px;margin:8px 0}
details.run>summary{cursor:pointer;font-weight:650}
table.kv th{width:150px;background:#f8f9fb;font-size:13.5px;font-weight:600}
table.kv td{font-size:13.5px;word-break:break-word}
pre{background:#f6f8fa;padding:10px;font-size:12px;max-height:420px;overflow:auto;border-radius:6px}
code{background:#f0f2f4;padding:1px 4px;border-radius:4px;font-size:90%}
"""


def _attr(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return escape("" if v is None else str(v), quote=True)


def _img(path: Path, alt: str, cls: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img{f" class={cls!r}" if cls else ""} alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def results_cell(run) -> str:
    n = run.numbers
    keys = ("test_accuracy", "kappa", "macro_f1", "majority_accuracy", "selected_epoch", "selection_split",
            "selection_metric", "best_selection_accuracy", "best_selection_epoch", "max_test_accuracy",
            "max_test_epoch", "max_test_note", "warning", "ci_accuracy", "ci_kappa", "evaluation_note",
            "trained_on")
    attrs = {"run": run.name, "model": run.model, "variant": run.variant, "status": run.status,
             **{k: n.get(k) for k in keys if k in n}}
    if run.reason:
        attrs["reason"] = run.reason
    data = " ".join(f'data-{k.replace("_", "-")}="{_attr(v)}"' for k, v in attrs.items())
    if run.eval is None:
        first, _, rest = run.reason.partition("\n")
        more = f"<details><summary>more</summary>{escape(rest)}</details>" if rest.strip() else ""
        return (f'<td class="cell missing" {data}><span class="status">{escape(run.status)}</span>'
                f'<div class="reason">{escape(first)}{more}</div></td>')
    sel, metric = n.get("selection_split") or "?", n.get("selection_metric") or "?"
    parts = [f'<div class="big">{number(n["test_accuracy"])}</div><div class="label">test accuracy'
             f'{escape(ci_text(n.get("ci_accuracy")))}, {n["test_count"]} images</div>',
             f'<div class="pair">kappa <b>{number(n["kappa"])}</b>{escape(ci_text(n.get("ci_kappa")))} &nbsp; '
             f'macro-F1 <b>{number(n["macro_f1"])}</b></div>',
             f'<div class="small">selected checkpoint: epoch {n["selected_epoch"]} (best {sel} {metric})</div>']
    markup = {"note": '<div class="badge">{}</div>', "small": '<div class="small">{}</div>',
              "lab": '<div class="small lab">{}</div>', "warn": '<div class="badge">&#9888; {}</div>'}
    parts += [markup[kind].format(escape(text)) for kind, text in cell_notes(run)]
    return f'<td class="cell" {data}>{"".join(parts)}</td>'


def results_table(ctx: dict) -> str:
    from ..models.restore import display_name

    head = "".join(f'<th data-variant="{_attr(v)}"><span class="swatch" style="background:{ctx["colours"][v]}"></span>'
                   f"{escape(v)}</th>" for v in ctx["variants"])
    rows = []
    for m in ctx["models"]:
        cells = "".join(results_cell(ctx["grid"][(m, v)]) if (m, v) in ctx["grid"]
                        else '<td class="cell missing" data-status="absent">not in this comparison</td>'
                        for v in ctx["variants"])
        majors = baselines(ctx["runs"], m)
        base, label = baselines_text(majors)
        rows.append(f'<tr data-model="{_attr(m)}"><th>{escape(display_name(m))}</th>{cells}'
                    f'<td class="majority" data-majority-accuracy="{_attr(majors[0][0] if majors else None)}">'
                    f'<div class="baseline">{base}</div><div class="label">{label}</div></td></tr>')
    cols = '<col class="model">' + "<col>" * len(ctx["variants"]) + '<col class="baseline">'
    return (f'<table id="results"><colgroup>{cols}</colgroup><thead><tr><th>Model</th>{head}'
            f'<th>Baseline: always the most common grade (test accuracy)</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


LEGEND = [
    ("<b>Test accuracy</b>, <b>kappa</b> (quadratic weighted; 0 = chance, 1 = perfect) and <b>macro-F1</b> (mean F1 "
     "over the grades that are in the test split or predicted) are those of the <b>selected checkpoint</b> (best.pt) "
     "on the test split; the 95% interval resamples patients."),
    ("The selected epoch is the one with the best value of the metric named in brackets on the selection split "
     "(val, or test to reproduce the lab). Epochs count from 1."),
    ("<b>Highest test accuracy over epochs</b> is the number the course lab reported: it is picked by looking at the "
     "test set, so it is optimistic."),
    ("&#9888; marks a run whose kappa is 0 or less (it has learnt nothing useful), or whose test accuracy is not "
     "above the baseline column (it grades, but is right less often than the constant answer)."),
]


def recipes_list(recipes: dict[str, str]) -> str:
    """What each named variant changes (its runs' options that differ from the other runs of their model)."""
    if not recipes:
        return ""
    items = "".join(f"<li><b>{escape(v)}</b>: {escape(d)}</li>" for v, d in recipes.items())
    return f'<div id="variants"><p class="label">{RECIPES}</p><ul class="legend">{items}</ul></div>'


def grades_table(runs) -> str:
    head = "".join(f"<th>grade {g}<br><span class='label'>recall / precision (n)</span></th>" for g in GRADES)
    rows = []
    for r in runs:
        if r.eval is None:
            continue
        cells = "".join(f"<td>{values} <span class='label'>({n})</span></td>" for values, n in grade_parts(r.eval))
        rows.append(f'<tr data-run="{_attr(r.name)}"><td><span class="swatch" style="background:{r.colour}"></span>'
                    f"{escape(r.name)}</td>{cells}<td>{referable_text(r.eval)}</td></tr>")
    return (f'<table class="grades" id="per-grade"><thead><tr><th>Run</th>{head}<th>{REFERABLE_HEAD}</th></tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table>')


def run_section(run) -> str:
    from .report import run_details

    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in run_details(run))
    config = (f"<details><summary>config.yaml</summary><pre>{escape(yaml.safe_dump(run.config, sort_keys=False))}"
              "</pre></details>") if run.config else ""
    return (f'<details class="run" open><summary><span class="swatch" style="background:{run.colour}"></span>'
            f'{escape(run.name)} - {escape(run.status)}</summary><table class="kv">{rows}</table>{config}</details>')


def render_html(ctx: dict, out: Path) -> str:
    figs = ctx["figures"]
    curves = "".join(f'<figure>{_img(out / f["file"], f["title"])}<figcaption>{escape(f["title"])}. Colours as in '
                     "the results table; dashed: train, dash-dotted: val, solid: test.</figcaption></figure>"
                     for f in figs if f["kind"] in ("accuracy", "loss"))
    confusion = "".join(_img(out / f["file"], f["title"], "wide") for f in figs if f["kind"] == "confusion")
    warn = ("Warning", "Missing", "Unfinished", "Failed")
    glance = "".join(f'<li class="{"warn" if line.startswith(warn) else ""}">{escape(line)}</li>'
                     for line in ctx["glance"])
    body = f"""
<main>
<h1>{escape(ctx["title"])}</h1>
<div class="sub">Generated {escape(ctx["generated"])} from {escape(", ".join(ctx["inputs"]))}</div>
{"".join(f'<p class="about">{escape(a)}</p>' for a in ctx["about"])}
<section class="glance" id="glance"><h2>At a glance</h2><ul>{glance}</ul></section>
<section id="results-section"><h2>Results</h2>{results_table(ctx)}
<ul class="legend">{"".join(f"<li>{line}</li>" for line in LEGEND)}</ul>{recipes_list(ctx["recipes"])}</section>
<section id="curves"><h2>Learning curves</h2><div class="figs">{curves}</div>
<p class="label">The dotted vertical line is where fine-tuning of the whole network starts (before it, only the
head is trained); the dotted horizontal line is the test accuracy of always answering the most common grade (grey;
one per run, in its colour, when the runs' test splits differ).</p>
</section>
<section id="confusion"><h2>Confusion matrices (test split)</h2>{confusion}
<p class="label">Each row is a true grade and sums to 1: the diagonal is the recall of that grade. A row of dashes
is a grade with no test images.</p></section>
<section id="grades"><h2>Per-grade recall and precision (test split)</h2>{grades_table(ctx["runs"])}
<p class="label">n/a: no recall for a grade with no test images, no precision for a grade never predicted.
{REFERABLE_NOTE}</p></section>
<section id="runs"><h2>Runs: configuration, data, selection, time, hardware, versions</h2>
{"".join(run_section(r) for r in ctx["runs"])}</section>
</main>"""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">{GENERATOR}'
            f"<title>{escape(ctx['title'])}</title><style>{CSS}</style></head><body>{body}</body></html>\n")
