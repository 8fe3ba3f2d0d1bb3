"""The report's figures: learning curves per model and the confusion matrices side by side, and an evaluation's
confusion matrix. Drawn on matplotlib ``Figure`` objects, not pyplot, so that importing the package leaves the
user's matplotlib backend (a notebook's, say) as it was.

Colours are Okabe-Ito (colour-blind safe) and mean the same in every figure and table: pretrained runs are
blue, runs from scratch orange (further variants take the palette's other colours); train is dashed, val
(validation, when the run recorded it) dash-dotted, test solid.
"""
from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter, MaxNLocator
from sklearn.metrics import ConfusionMatrixDisplay

from ..atomic import replacing
from ..data.formats import GRADES
from ..models.objectives import loss_name
from .text import epochs_text

BLUE, ORANGE = "#0072B2", "#E69F00"
OTHERS = ["#009E73", "#CC79A7", "#D55E00", "#000000", "#56B4E9", "#F0E442"]  # sky blue and yellow (faint) last
DPI = 110
CURVE_SIZE = (7.0, 4.4)  # inches, one panel, without the legend below
CONFUSION_CELL = (3.5, 3.3)  # inches per matrix
CONFUSION_PER_LINE = 3  # matrices side by side in the report's grid
LABEL_WIDTH, TITLE_WIDTH = 52, 34  # characters per line of a legend label, of a confusion-matrix title
SPLITS = {"train": "--", "val": "-.", "test": "-"}  # line style per split
BASELINE = {"color": "#777777", "linestyle": (0, (1, 2)), "linewidth": 1.5}
MARK = {"markersize": 6, "markerfacecolor": "none", "markeredgewidth": 1.5}  # hollow: runs with equal values
# (a repeat, a run copied) show both shapes at each point instead of one hiding the other
HEADROOM = 0.12  # of a panel's height, above the curves, for the note where fine-tuning starts
PANEL_HEIGHT = 2.6  # inches for each further loss panel
# Run and variant names are text, not TeX: a name with two '$' (a$^$b) stopped the report with a mathtext error.
AS_WRITTEN = matplotlib.rc_context({"text.parse_math": False})


def variant_colours(variants: list[tuple[str, bool]]) -> dict[str, str]:
    """{variant label: colour} for (label, pretrained) pairs: first pretrained blue, first scratch orange."""
    colours, others = {}, itertools.cycle(OTHERS)
    for label, pretrained in variants:
        base = BLUE if pretrained else ORANGE
        colours[label] = base if base not in colours.values() else next(others)
    return colours


@AS_WRITTEN
def curves_figure(title: str, series: list[dict], metric: str, path: Path) -> None:
    """Train (dashed), val (dash-dotted, where metrics.csv has it) and test (solid) ``metric`` per epoch for each
    series, the legend below the axes. Losses of different objectives get a panel each: they differ in kind and
    scale, so one cannot be read against another.

    ``series``: dicts with ``label``, ``colour``, ``rows`` (metrics.csv rows as dicts of floats),
    ``freeze_epochs``, ``objective``, ``train_loss_terms`` (what training's loss adds: class weights...) and
    ``baseline`` (majority-class test accuracy, or None): drawn on accuracy as a grey dotted line, or one per run in
    its colour when the runs' test splits differ. A loss panel whose values span more than a factor of 100 (a run
    that diverged) is drawn on a log scale, so that the other runs do not flatten into one line. The saved image
    grows downwards to fit the legend.
    """
    panels = _panels(series, metric)
    fig = Figure(dpi=DPI, layout="constrained",
                 figsize=(CURVE_SIZE[0], CURVE_SIZE[1] + PANEL_HEIGHT * (len(panels) - 1)))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)
    markers = dict(zip((s["label"] for s in series), itertools.cycle("os^Dv")))  # tell overlapping lines apart
    splits = [sp for sp in SPLITS if any(r.get(f"{sp}_{metric}") is not None for s in series for r in s["rows"])]
    for ax, (objective, members) in zip(axes[:, 0], panels):
        _plot_runs(ax, members, metric, markers, splits)
        values = [v for s in members for r in s["rows"] for sp in splits if (v := r.get(f"{sp}_{metric}")) is not None]
        log = metric == "loss" and values and min(values) > 0 and max(values) > 100 * min(values)
        if log:  # its ticks as numbers: the default ones are TeX, shown as written here (AS_WRITTEN)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(LogFormatter())
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
        if metric == "accuracy":
            ax.set_ylim(0, 1.02)
        if any(_fine_tuned_from(s) for s in members):  # room above the curves for the note "fine-tuning starts"
            lo, hi = ax.get_ylim()
            ax.set_ylim(lo, hi * (hi / lo) ** HEADROOM if log else hi + HEADROOM * (hi - lo))
        ax.set_ylabel((f"loss ({loss_name(objective)})" if objective else metric) + (", log scale" if log else "")
                      if metric != "accuracy" else "accuracy (fraction correct)")
        if len(panels) > 1:
            ax.set_title(f"{objective} objective", fontsize=10)
    baselines = {s["baseline"] for s in series if s.get("baseline") is not None} if metric == "accuracy" else set()
    for s in series if len(baselines) > 1 else []:
        if s.get("baseline") is not None:
            axes[0, 0].axhline(s["baseline"], **{**BASELINE, "color": s["colour"]})
    if len(baselines) == 1:
        axes[0, 0].axhline(*baselines, **BASELINE)
    axes[-1, 0].set_xlabel("epoch")
    axes[-1, 0].set_xlim(0.5, max((r["epoch"] + 1 for s in series for r in s["rows"]), default=1) + 0.5)  # shared
    terms = sorted({t for s in series for t in s.get("train_loss_terms", [])}) if metric == "loss" else []
    fig.suptitle(title + ("\none panel per objective: their losses are not comparable" if len(panels) > 1 else "")
                 + (f"\ntraining's loss includes {', '.join(terms)}; val and test losses are plain" if terms else ""),
                 fontsize=12)
    _legend(fig, series, markers, splits, baselines)
    save_figure(fig, path, dpi=DPI, bbox_inches="tight")


def _panels(series: list[dict], metric: str) -> list[tuple[str | None, list[dict]]]:
    """(objective, its series) per panel: one per objective for losses, else one panel (objective None)."""
    if metric != "loss":
        return [(None, series)]
    objectives = dict.fromkeys(s["objective"] for s in series)
    return [(o, [s for s in series if s["objective"] == o]) for o in objectives]


def _plot_runs(ax, series: list[dict], metric: str, markers: dict, splits: list[str]) -> None:
    """One line per series and split (a series of one epoch, which has no line to tell its splits apart, lists
    their values beside its points), and a dotted line where fine-tuning starts."""
    for s in series:
        epochs = [r["epoch"] + 1 for r in s["rows"]]
        for split in splits:
            values = [r.get(f"{split}_{metric}") for r in s["rows"]]
            ax.plot(epochs, [np.nan if v is None else v for v in values], SPLITS[split], color=s["colour"],
                    marker=markers[s["label"]], **MARK, linewidth=2, alpha=0.85)
        points = sorted(((v, sp) for sp in splits if len(epochs) == 1 and (v := s["rows"][0].get(f"{sp}_{metric}"))
                         is not None), reverse=True)
        if points:
            text = "\n".join(f"{sp} {v:.3f}" if metric == "accuracy" else f"{sp} {v:.4g}" for v, sp in points)
            ax.annotate(text, (epochs[0], np.mean([v for v, _ in points])),
                        xytext=(8, 0), textcoords="offset points", va="center", fontsize=8, color=s["colour"])
    starts = sorted({fe for s in series if (fe := _fine_tuned_from(s))})
    for fe in starts:
        ax.axvline(fe + 0.5, color="#555555", linestyle=":", linewidth=1.2)
        ax.annotate("fine-tuning starts" + (f" ({epochs_text(fe)} frozen)" if len(starts) > 1 else ""),
                    (fe + 0.5, 1), xycoords=("data", "axes fraction"), xytext=(4, -4), textcoords="offset points",
                    va="top", fontsize=8.5, color="#333333")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # one epoch: one tick, not 0.945...1.05
    ax.grid(alpha=0.3)


def _fine_tuned_from(series: dict) -> int:
    """After how many frozen epochs the run's fine-tuning started; 0 when it did not (yet)."""
    fe = series["freeze_epochs"] or 0
    return fe if any(r["epoch"] + 1 > fe for r in series["rows"]) else 0


def _legend(fig, series: list[dict], markers: dict, splits: list[str], baselines: set[float]) -> None:
    """Below the axes: the runs (colour and marker) in the left column, the splits' line styles and the baseline
    in the right one; labels wrapped, so that any number of runs keeps the figure's width."""
    runs = [Line2D([], [], color=s["colour"], marker=markers[s["label"]], **MARK, linewidth=2,
                   label=textwrap.fill(s["label"], LABEL_WIDTH)) for s in series]
    keys = [Line2D([], [], color="#555555", linestyle=SPLITS[sp], linewidth=2, label=sp) for sp in splits]
    if baselines:
        keys.append(Line2D([], [], **BASELINE, label=textwrap.fill(
            "always the most common grade (test) " + (f"{next(iter(baselines)):.3f}" if len(baselines) == 1 else
                                                       "of each run's test split, in its colour"), 22)))
    blank, rows = Line2D([], [], linestyle="none", label=" "), max(len(runs), len(keys))
    fig.legend(handles=runs + [blank] * (rows - len(runs)) + keys + [blank] * (rows - len(keys)), ncol=2,
               loc="upper center", bbox_to_anchor=(0.5, 0), fontsize=9, frameon=False, handlelength=3.5)


def plot_confusion(ax, counts, colorbar: bool = False, fontsize: float | None = None) -> None:
    """The row-normalised confusion matrix of ``counts`` (rows: true grade) on a fixed 0-1 Blues scale, as in the
    course lab. Each row names its number of images (a row of one image is as dark as a row of 500), and the row
    of a grade with no images is dashes: it has no recall."""
    counts = np.asarray(counts, dtype=float)
    rows = counts.sum(1)
    shares = counts / np.maximum(rows[:, None], 1)
    disp = ConfusionMatrixDisplay(shares, display_labels=GRADES).plot(
        ax=ax, cmap="Blues", values_format=".2f", colorbar=colorbar, im_kw={"vmin": 0, "vmax": 1},
        text_kw={"fontsize": fontsize} if fontsize else None)
    for text, share in zip(disp.text_.ravel(), shares.ravel()):  # by the fixed scale (scikit-learn's own choice
        text.set_color("white" if share > 0.72 else "black")  # follows the values' range): contrast 4.4:1 or more
    for text in disp.text_[rows == 0].ravel():
        text.set_text("–")
    ax.set_yticks(range(len(GRADES)), [f"{g} (n={int(n)})" for g, n in zip(GRADES, rows)])
    ax.set_xlabel("predicted grade", fontsize=fontsize and fontsize + 1)
    ax.set_ylabel("true grade", fontsize=fontsize and fontsize + 1)


@AS_WRITTEN
def confusion_grid(rows: list[str], cols: list[str], cells: dict, path: Path) -> None:
    """Row-normalised confusion matrices, one per (row, col) label pair; ``cells[(row, col)]`` is a 5x5 count
    matrix, or a string saying why that run has none (skipped, not evaluated...); see :func:`plot_confusion`.
    Each row's matrices are wrapped at :data:`CONFUSION_PER_LINE` a line, so that their numbers stay legible."""
    per_line = min(len(cols), CONFUSION_PER_LINE)
    lines = -(-len(cols) // per_line)  # per row
    fig = Figure(dpi=DPI, layout="constrained",
                 figsize=(CONFUSION_CELL[0] * per_line, CONFUSION_CELL[1] * len(rows) * lines))
    axes = fig.subplots(len(rows) * lines, per_line, squeeze=False)
    for i, row in enumerate(rows):
        for j in range(len(cols), lines * per_line):  # the unused places of the row's last line
            axes[i * lines + j // per_line][j % per_line].set_axis_off()
        for j, col in enumerate(cols):
            ax, cell = axes[i * lines + j // per_line][j % per_line], cells.get((row, col), "not in this comparison")
            ax.set_title(f"{row}\n{textwrap.fill(col, TITLE_WIDTH)}", fontsize=10)
            if isinstance(cell, str):
                ax.set_axis_off()
                ax.text(0.5, 0.5, textwrap.fill(textwrap.shorten(cell, 160), 34), ha="center", va="center",
                        fontsize=9, color="#333333", transform=ax.transAxes,
                        bbox={"boxstyle": "round", "fc": "#f3f3f3", "ec": "#bbbbbb"})
                continue
            plot_confusion(ax, cell, fontsize=8)
    save_figure(fig, path, dpi=DPI)


@AS_WRITTEN
def confusion_figure(counts, title: str, path: Path) -> None:
    """One evaluation's row-normalised confusion matrix (:func:`plot_confusion`) with its colour bar; each line of
    ``title`` wrapped to the figure's width."""
    fig = Figure(figsize=(5.6, 4.6), dpi=120, layout="tight")
    ax = fig.subplots()
    plot_confusion(ax, counts, colorbar=True)
    ax.set_title("\n".join(textwrap.fill(line, 60) for line in title.split("\n")), fontsize=10)
    save_figure(fig, path)


def save_figure(fig: Figure, path: Path, **kwargs) -> None:
    """``fig.savefig(path)`` written atomically (:func:`~retinopathy.atomic.replacing`: a full disk leaves the
    figure before it whole, and is named)."""
    with replacing(path, "wb") as f:
        fig.savefig(f, format=Path(path).suffix[1:], **kwargs)
