"""Options shared by the commands that read a dataset folder or grade photographs."""
from __future__ import annotations

import argparse
import os
import re

from ..data.formats import FORMATS
from ..data.splits import split_option
from ..models.objectives import check_blend_weight


def at_least(minimum: int, maximum: int | None = None):
    """An argparse ``type``: an integer of at least ``minimum`` and at most ``maximum`` (argparse then names the
    option in its error)."""
    def integer(text) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small (at least {minimum})")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is too large (at most {maximum})")
        return value
    return integer


def non_negative(text) -> float:
    """An argparse ``type``: a finite number of 0 or more (``nan`` would fail every ``<`` check, ``inf`` pass it)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: a finite number, 0 or more")
    return value


def device_name(text) -> str:
    """An argparse ``type``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (torch's other device types, such as
    ``meta``, cannot grade or train here)."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", str(text)):
        raise argparse.ArgumentTypeError(f"{text!r} is not one of auto, cpu, cuda, cuda:N, mps")
    return str(text)


def add_device_argument(parser) -> None:
    parser.add_argument("--device", type=device_name, default="auto",
                        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")


def show_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``(default: X)`` to the help of every option whose help does not give its default already; ``--x/--no-x``
    switches say on or off (a plain flag is off unless given)."""
    for a in parser._actions:
        if not a.option_strings or a.default in (None, argparse.SUPPRESS) or "default" in (a.help or ""):
            continue
        if isinstance(a, argparse.BooleanOptionalAction):
            a.help = f"{a.help or ''} (default: {'on' if a.default else 'off'})".strip()
        elif not isinstance(a.default, bool):
            a.help = f"{a.help} (default: %(default)s)" if a.help else "default: %(default)s"
    return parser


def add_format_arguments(parser: argparse.ArgumentParser, name: str = "DATA") -> argparse._ArgumentGroup:
    """How to read the dataset folder ``name``: its format, labels, images and columns."""
    g = parser.add_argument_group(f"data (the format is detected from what is in {name}; these override it)")
    g.add_argument("--format", choices=FORMATS, help="dataset format")
    g.add_argument("--labels", help="labels CSV (or, for the lab format, the folder with its four CSVs)")
    g.add_argument("--images", help=f"folder that holds the images (default: {name}, {name}/images, {name}/train, "
                                    f"{name}/train_images, whichever holds the most of the listed names)")
    g.add_argument("--image-col", help="image column of a CSV with a header (e.g. id_code)")
    g.add_argument("--label-col", help="label column of a CSV with a header (e.g. diagnosis)")
    g.add_argument("--patient-col", help="patient column, if the CSV has one (default: from <patient>_left/right)")
    return g


def split_file(value: str) -> str:
    """``--split-file``: a split.csv, or a run's folder for the split.csv in it (as a checkpoint may be a run's
    folder)."""
    inside = os.path.join(os.path.expanduser(value), "split.csv")  # ~: a config file's value is expanded after this
    return inside if os.path.isfile(inside) else value


def add_data_arguments(parser: argparse.ArgumentParser, split_default: str | None = None,
                       skip_bad: bool = False, name: str = "DATA") -> None:
    """:func:`add_format_arguments`, the patient split and (for commands that stop on bad input) ``--skip-bad``."""
    g = add_format_arguments(parser, name)
    run = "the checkpoint's run's, else " if split_default is not None else ""  # evaluate, predict: a run's split
    g.add_argument("--val-fraction", type=float, default=None,
                   help=f"share of patients for validation, per grade (default: {run}0.1)")
    g.add_argument("--test-fraction", type=float, default=None,
                   help=f"share of patients for test, per grade, when the data has no split (default: {run}0.2)")
    g.add_argument("--split-seed", type=at_least(0), default=None, help=f"seed of the patient split (default: {run}0)")
    g.add_argument("--split-file", type=split_file, help="reuse a split written by an earlier run (its split.csv, "
                   "or the run's folder)" + (
        "; default: the run's own, on the photographs it trained on" if run else ""))
    if skip_bad:
        g.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=None,
                       help="drop bad rows and images instead of stopping (listed in " + (
                           "--out's skipped.csv; default: as the run did)" if run else "the run's skipped.csv)"))
    if split_default is not None:
        g.add_argument("--split", default=split_default, choices=("train", "val", "test", "all"),
                       help=f"which split to use (default {split_default}; 'all' = every image)")


def add_amp_argument(parser, flag: str = "--amp", grading: str = "grading") -> None:
    """``--amp`` for grading (training's ``--eval-amp``): fp32 unless asked (as timm's validate.py), so that the
    numbers are the exported model's."""
    parser.add_argument(flag, choices=("none", "auto", "bf16", "fp16"), default="none",
                        help=f"autocast while {grading} (default none: fp32, the numbers an exported model, "
                             "evaluate and predict give; auto: bf16 on CUDA and on CPUs with native bf16, faster, "
                             "a few grades may differ)")


def blend_weight(value) -> float:
    """``--blend-eyes`` as a number between 0 and 0.5 (argparse type; also checks values from config files)."""
    try:
        return check_blend_weight(float(value))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None  # argparse, or the config file's check, names the option


def add_blend_argument(group, default: float | None) -> None:
    """``--blend-eyes W``: training chooses it; evaluate and predict follow the checkpoint unless told."""
    group.add_argument("--blend-eyes", type=blend_weight, default=default, metavar="W",
                       help="mix each eye's probabilities and score with the other eye's of the same patient, "
                            "(1-W)*own + W*other, W in 0-0.5 (patients: <patient>_left/right or --patient-col); "
                            + ("used for selection and threshold tuning, and stored for evaluate and predict"
                               if default is not None else "default: the checkpoint's, for which its thresholds "
                                                           "were tuned"))


def blend_setting(args, ckpt: dict) -> float:
    """``--blend-eyes`` when given, else the weight the checkpoint was trained (and its thresholds tuned) with."""
    return ckpt["model_info"].get("blend_eyes", 0.0) if args.blend_eyes is None else args.blend_eyes


READ_KEYS = ("format", "labels", "images", "image_col", "label_col", "patient_col")


def catalog_options(ns) -> dict:
    """Keyword arguments for :func:`retinopathy.data.load_catalog` from parsed options (or a config dict)."""
    get = ns.get if isinstance(ns, dict) else lambda k, d=None: getattr(ns, k, d)
    opts = {k: get(k) for k in READ_KEYS if get(k) is not None}
    opts.update(val_fraction=split_option(get, "val_fraction"), test_fraction=split_option(get, "test_fraction"),
                seed=split_option(get, "split_seed"))
    if get("split_file"):
        opts["split_file"] = get("split_file")
    return opts
