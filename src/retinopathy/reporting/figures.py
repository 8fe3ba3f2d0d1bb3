"""The report's figures (matplotlib, Agg): learning curves per model and the confusion matrices side by side.

Colours are Okabe-Ito (colour-blind safe) and mean the same in every figure and table: pretrained runs are
blue, runs from scratch orange (further variants take the palette's other colours); train is dashed, val
(validation, when the run recorded it) dash-dotted, test solid.
"""
from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from ..data.formats import GRADES  # noqa: E402
from ..models.objectives import loss_name  # noqa: E402

BLUE, ORANGE = "#0072B2", "#E69F00"
OTHERS = ["#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
DPI = 110
CURVE_SIZE = (7.0, 4.4)  # inches, one panel, without the legend below
CONFUSION_CELL = (3.5, 3.3)  # inches per matrix
LABEL_WIDTH, TITLE_WIDTH = 52, 40  # characters per line of a legend label, of a confusion-matrix title
SPLITS = {"train": "--", "val": "-.", "test": "-"}  # line style per split
BASELINE = {"color": "#777777", "linestyle": (0, (1, 2)), "linewidth": 1.5}
PANEL_HEIGHT = 2.6  # inches for each further loss panel


def confusion_size_px(rows: int, cols: int) -> tuple[int, int]:
    return round(CONFUSION_CELL[0] * cols * DPI), round(CONFUSION_CELL[1] * rows * DPI)


def variant_colours(variants: list[tuple[str, bool]]) -> dict[str, str]:
    """{variant label: colour} for (label, pretrained) pairs: first pretrained blue, first scratch orange."""
    colours, others = {}, itertools.cycle(OTHERS)
    for label, pretrained in variants:
        base = BLUE if pretrained else ORANGE
        colours[label] = base if base not in colours.values() else next(others)
    return colours


def curves_figure(title: str, series: list[dict], metric: str, path: Path, baseline: float | None = None) -> None:
    """Train (dashed), val (dash-dotted, where metrics.csv has it) and test (solid) ``metric`` per epoch for each
    series, the legend below the axes. Losses of different objectives get a panel each: they differ in kind and
    scale, so one cannot be read against another.

    ``series``: dicts with ``label``, ``colour``, ``rows`` (metrics.csv rows as dicts of floats),
    ``freeze_epochs``, ``objective`` and ``train_loss_terms`` (what training's loss adds: class weights...);
    ``baseline``: majority-class test accuracy, drawn as a grey dotted line. The saved image grows downwards to
    fit the legend.
    """
    panels = _panels(series, metric)
    fig, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False, dpi=DPI, layout="constrained",
                             figsize=(CURVE_SIZE[0], CURVE_SIZE[1] + PANEL_HEIGHT * (len(panels) - 1)))
    markers = dict(zip((s["label"] for s in series), itertools.cycle("os^Dv")))  # tell overlapping lines apart
    splits = [sp for sp in SPLITS if any(r.get(f"{sp}_{metric}") is not None for s in series for r in s["rows"])]
    for ax, (objective, members) in zip(axes[:, 0], panels):
        _plot_runs(ax, members, metric, markers, splits)
        ax.set_ylabel(f"loss ({loss_name(objective)})" if objective else
                      "accuracy (fraction correct)" if metric == "accuracy" else metric)
        if len(panels) > 1:
            ax.set_title(f"{objective} objective", fontsize=10)
    if metric == "accuracy":
        axes[0, 0].set_ylim(0, 1.02)
    if baseline is not None:
        axes[0, 0].axhline(baseline, **BASELINE)
    axes[-1, 0].set_xlabel("epoch")
    terms = sorted({t for s in series for t in s.get("train_loss_terms", [])}) if metric == "loss" else []
    fig.suptitle(title + ("\none panel per objective: their losses are not comparable" if len(panels) > 1 else "")
                 + (f"\ntraining's loss includes {', '.join(terms)}; val and test losses are plain" if terms else ""),
                 fontsize=12)
    _legend(fig, series, markers, splits, baseline)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _panels(series: list[dict], metric: str) -> list[tuple[str | None, list[dict]]]:
    """(objective, its series) per panel: one per objective for losses, else one panel (objective None)."""
    if metric != "loss":
        return [(None, series)]
    objectives = dict.fromkeys(s["objective"] for s in series)
    return [(o, [s for s in series if s["objective"] == o]) for o in objectives]


def _plot_runs(ax, series: list[dict], metric: str, markers: dict, splits: list[str]) -> None:
    """One line per series and split, and a dotted line where fine-tuning starts."""
    for s in series:
        epochs = [r["epoch"] + 1 for r in s["rows"]]
        for split in splits:
            values = [r.get(f"{split}_{metric}") for r in s["rows"]]
            ax.plot(epochs, [np.nan if v is None else v for v in values], SPLITS[split], color=s["colour"],
                    marker=markers[s["label"]], markersize=5, linewidth=2, alpha=0.85)
    for fe in sorted({s["freeze_epochs"] for s in series if s["freeze_epochs"]}):
        ax.axvline(fe + 0.5, color="#555555", linestyle=":", linewidth=1.2)
        ax.annotate("fine-tuning starts", (fe + 0.5, 1), xycoords=("data", "axes fraction"), xytext=(4, -4),
                    textcoords="offset points", va="top", fontsize=8.5, color="#333333")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _legend(fig, series: list[dict], markers: dict, splits: list[str], baseline: float | None) -> None:
    """Below the axes: the runs (colour and marker) in the left column, the splits' line styles and the baseline
    in the right one; labels wrapped, so that any number of runs keeps the figure's width."""
    runs = [Line2D([], [], color=s["colour"], marker=markers[s["label"]], linewidth=2,
                   label=textwrap.fill(s["label"], LABEL_WIDTH)) for s in series]
    keys = [Line2D([], [], color="#555555", linestyle=SPLITS[sp], linewidth=2, label=sp) for sp in splits]
    if baseline is not None:
        keys.append(Line2D([], [], **BASELINE, label=textwrap.fill(f"always the most common grade (test) "
                                                                   f"{baseline:.3f}", 22)))
    blank, rows = Line2D([], [], linestyle="none", label=" "), max(len(runs), len(keys))
    fig.legend(handles=runs + [blank] * (rows - len(runs)) + keys + [blank] * (rows - len(keys)), ncol=2,
               loc="upper center", bbox_to_anchor=(0.5, 0), fontsize=9, frameon=False, handlelength=3.5)


def dash_rows_without_images(disp: ConfusionMatrixDisplay, row_counts) -> None:
    """A grade with no images has no recall: its row of a row-normalised matrix shows dashes, not zeros."""
    for text in disp.text_[np.asarray(row_counts) == 0].ravel():
        text.set_text("–")


def confusion_grid(rows: list[str], cols: list[str], cells: dict, path: Path) -> None:
    """Row-normalised confusion matrices, one per (row, col) label pair; ``cells[(row, col)]`` is a 5x5 count
    matrix, or a string saying why that run has none (skipped, not evaluated...). The row of a grade with no
    images is dashes: it has no recall."""
    fig, axes = plt.subplots(len(rows), len(cols), dpi=DPI, squeeze=False, layout="constrained",
                             figsize=(CONFUSION_CELL[0] * len(cols), CONFUSION_CELL[1] * len(rows)))
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            ax, cell = axes[i][j], cells.get((row, col), "not in this comparison")
            ax.set_title(f"{row}\n{textwrap.fill(col, TITLE_WIDTH)}", fontsize=10)
            if isinstance(cell, str):
                ax.set_axis_off()
                ax.text(0.5, 0.5, textwrap.fill(textwrap.shorten(cell, 160), 34), ha="center", va="center",
                        fontsize=9, color="#333333", transform=ax.transAxes,
                        bbox={"boxstyle": "round", "fc": "#f3f3f3", "ec": "#bbbbbb"})
                continue
            counts = np.asarray(cell, dtype=float)
            norm = counts / np.maximum(counts.sum(1, keepdims=True), 1)
            disp = ConfusionMatrixDisplay(norm, display_labels=GRADES).plot(
                ax=ax, cmap="Blues", values_format=".2f", colorbar=False, im_kw={"vmin": 0, "vmax": 1},
                text_kw={"fontsize": 8})
            dash_rows_without_images(disp, counts.sum(1))
            ax.set_xlabel("predicted grade", fontsize=9)
            ax.set_ylabel("true grade", fontsize=9)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
