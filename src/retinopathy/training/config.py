"""Options of ``retinopathy train``: built-in defaults < ``--preset`` < ``--config FILE`` < command line.

The resolved configuration is saved with each run (``config.yaml``), as timm does.
"""
from __future__ import annotations

import argparse
import difflib
import functools
import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from ..cli.common import (add_amp_argument, add_blend_argument, add_data_arguments, add_device_argument, at_least,
                          show_defaults)
from ..errors import RetinopathyError
from ..launch import others_say_it
from ..outputs import busy, others_work
from ..data.splits import SPLIT_DEFAULTS, SplitError, check_fractions, split_option
from ..data.transforms import AUGMENT, PREPROCESS
from ..models.factory import CLASSIFIERS, HEADS, POOLS, list_models, size_problem
from ..models.objectives import DECISIONS, OBJECTIVES, THRESHOLD_RULES, default_decision
from .checkpoint import new_run_from

THRESHOLD_DATA = ("selection", "train+selection")

PRESETS: dict[str, dict] = {
    # The course lab's recipe: SGD 1e-3, momentum 0.9, wd 5e-4, CE, 20 epochs of which 5 frozen,
    # batch 12 (ResNet18) / 6 (ResNet50), 512 px, Resize+CenterCrop+flips, lab head, selection on test.
    "lab": dict(optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4, epochs=20, freeze_epochs=5,
                image_size=512, head="lab", augment="flips", preprocess="lab", scheduler="none",
                warmup_epochs=0, label_smoothing=0.0, class_weights="none", sampler="random",
                objective="classification", select_on="test", select_metric="accuracy", val_fraction=0.0),
}
LAB_BATCH = {"resnet50": 6}
SEED_LIMIT = (2**63 - 2**40) // 100003  # --seed: an epoch's seed (seed * 100003 + epoch + ...) stays within 64 bits
WHERE_STARTED = ("weights", "split_file", "labels", "images")  # paths config.yaml records absolute


class _OnceLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser where PyYAML has it: 10x faster
    """PyYAML's safe loader, refusing a key written twice in one mapping (PyYAML keeps the last one silently)."""


def _mapping_once(loader: _OnceLoader, node, deep: bool = False) -> dict:
    lines: dict[str, int] = {}
    for key_node, _ in node.value:
        if key_node.tag != "tag:yaml.org,2002:str":  # merge keys (<<), numbers, lists: PyYAML's own rules
            continue
        key = loader.construct_object(key_node)
        if key in lines:
            raise yaml.constructor.ConstructorError(None, None, f"{key!r} is written twice (first on line "
                                                    f"{lines[key]}); keep one", key_node.start_mark)
        lines[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep)


_OnceLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_once)


def load_yaml(stream):
    """A config or experiment file (a stream or text) as ``yaml.safe_load`` reads it, less its silent last-wins."""
    return yaml.load(stream, Loader=_OnceLoader)  # noqa: S506 (a SafeLoader)


def yaml_problem(e: Exception, path: Path) -> str:
    """What PyYAML says is wrong in the file ``path``, with the fix where its words do not give it: a tab where it
    stopped reading."""
    mark = getattr(e, "problem_mark", None)
    try:
        line = path.read_text(encoding="utf-8").splitlines()[mark.line] if mark is not None else ""
    except (OSError, UnicodeError, IndexError):
        line = ""
    tab = "\t" in line[:mark.column + 1] if mark is not None else False
    return str(e) + ("\n  (a tab there: YAML indents with spaces only)" if tab else "")


class ConfigError(RetinopathyError, ValueError):
    """A config file that cannot be used: unreadable, not a mapping, unknown options."""


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("retinopathy train", add_help=add_help,  # a short usage: errors stay readable
                                usage="%(prog)s --data DATA --out runs/NAME [options]  (or -c FILE, --resume RUN)",
                                description="Train a DR grader (frozen backbone first, then fine-tuning).")
    p.add_argument("-c", "--config", help="YAML file of option defaults: option: value (names with _), a run's "
                   "config.yaml, or an experiment file of one run (e.g. configs/eyepacs256.yaml)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe; 'lab' reproduces the course lab")
    p.add_argument("--data", required=False, help="dataset folder (any supported format)")
    add_data_arguments(p, skip_bad=True)

    g = p.add_argument_group("model")
    g.add_argument("--model", default="resnet18", help="torchvision model name (resnet18, resnet50, ...)")
    g.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help="ImageNet weights for the backbone (default: on, as torchvision users expect)")
    g.add_argument("--weights-tag", default="IMAGENET1K_V1", help="which torchvision weights (e.g. IMAGENET1K_V2)")
    g.add_argument("--weights", help="load backbone weights from this file instead of torchvision's cache: a "
                   "state dict, or a run's checkpoint (e.g. pretrained on the synthetic set)")
    g.add_argument("--check-weights-hash", action=argparse.BooleanOptionalAction, default=True,
                   help="check the SHA-256 prefix in a torchvision weights file name")
    g.add_argument("--head", choices=HEADS, default="linear", help="'lab': fc->50->ReLU->Dropout(0.25)->5")
    g.add_argument("--objective", choices=OBJECTIVES, default="classification",
                   help="classification (CE), regression (smooth L1 + thresholds tuned for kappa), ordinal (CORAL), "
                        "ordinal+ce (ordinal outputs graded, a cross-entropy head trained beside them)")
    g.add_argument("--decision", choices=DECISIONS, default=None,
                   help="how outputs become grades: the most probable grade (classification's default) or the "
                        "score (expected grade for classification) cut at thresholds tuned on the selection split "
                        "(regression's and ordinal's default)")
    g.add_argument("--threshold-rule", choices=THRESHOLD_RULES, default="kappa",
                   help="how thresholds are tuned on the selection split: highest kappa, or "
                        "highest kappa with accuracy above always answering the most common grade")
    g.add_argument("--threshold-margin", type=float, default=0.0, metavar="M",
                   help="with kappa-above-majority: the accuracy must beat the most common grade's share by M "
                        "(on the images the shipped thresholds are tuned on)")
    g.add_argument("--threshold-data", choices=THRESHOLD_DATA, default="selection",
                   help="what the shipped thresholds are tuned on: the selection split (each epoch), or, once "
                        "training ends, the selected checkpoint's outputs on the unaugmented training images "
                        "and the selection split together (about 8 times val's images with the default split; "
                        "epochs are still selected with thresholds tuned on the selection split)")
    g.add_argument("--pair-eyes", action=argparse.BooleanOptionalAction, default=False,
                   help="the head also sees the other eye of the same patient (features concatenated)")
    g.add_argument("--space-to-depth", type=at_least(1), default=1, metavar="B",
                   help="feed each BxB block of pixels as B*B*3 channels (TResNet's stem): the network costs "
                        "about what it costs at image-size/B px but sees every pixel (default 1: off)")
    g.add_argument("--global-pool", choices=POOLS, default="avg",
                   help="the backbone's global pooling (timm's names): avg, max, avgmax (their mean), or gem "
                        "(generalised mean, learnt exponent; between avg and max)")
    add_blend_argument(g, 0.0)

    g = p.add_argument_group("schedule and optimisation")
    g.add_argument("--epochs", type=at_least(1), default=20, help="total epochs, frozen ones included")
    g.add_argument("--freeze-epochs", type=at_least(0), default=1, help="epochs that train only the head (lab: 5)")
    g.add_argument("-b", "--batch-size", type=at_least(1), default=None,
                   help="images per process (default 32; lab 12/6)")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of each phase")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default="adamw", help="a new one for each phase")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD's momentum (AdamW does not use it)")
    g.add_argument("--weight-decay", type=float, default=0.01,
                   help="on every parameter, unless --norm-weight-decay (lab: 5e-4)")
    g.add_argument("--norm-weight-decay", type=float, default=None, metavar="WD",
                   help="weight decay of the normalisation layers' parameters (BatchNorm...), e.g. 0 as timm does "
                        "and torchvision's reference scripts offer; default: --weight-decay's")
    g.add_argument("--scheduler", choices=("none", "cosine"), default="cosine",
                   help="per step within each phase: cosine to zero after the warm-up, or constant (lab)")
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up at the start of each phase")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy's (classification, ordinal+ce)")
    g.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="mixup (timm's --mixup): blend each batch with a shuffled copy, weight ~ Beta(ALPHA, "
                        "ALPHA), and the two targets' losses alike (default 0: off)")
    g.add_argument("--model-ema", action=argparse.BooleanOptionalAction, default=False,
                   help="keep an exponential moving average of the weights (timm's --model-ema); it is what is "
                        "evaluated each epoch, selected, and loaded by evaluate/predict/export")
    g.add_argument("--model-ema-decay", type=float, default=0.998,
                   help="EMA decay per optimizer step (0.998 averages roughly the last 500 steps)")
    g.add_argument("--class-weights", choices=("none", "inverse", "effective"), default="none",
                   help="weigh each grade's loss by 1/count (inverse) or by Cui et al.'s effective number of "
                        "images (milder); mean weight 1")
    g.add_argument("--sampler", choices=("random", "balanced", "decay"), default="random",
                   help="balanced: every grade equally often; decay: balanced at first, then halving each "
                        "epoch towards grade 0 x1, others x2 (o_O, Kaggle 2015)")
    g.add_argument("--seed", type=at_least(-SEED_LIMIT, SEED_LIMIT), default=0,  # each epoch's seed fits 64 bits
                   help="model initialisation, order and augmentation (the split has --split-seed)")
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=False,
                   help="deterministic algorithms, exact resume (with the run's --workers: a resume keeps them "
                        "unless -j is given, since each worker draws its own augmentations)")

    g = p.add_argument_group("images")
    g.add_argument("--image-size", type=at_least(8), default=512, help="side of the square the network sees")
    g.add_argument("--preprocess", choices=PREPROCESS, default="lab",
                   help="lab: resize and centre crop; fov: crop around the round field of view first; graham: "
                        "fov, then Ben Graham's subtraction of the local average colour")
    g.add_argument("--augment", choices=AUGMENT, default="fundus",
                   help="fundus: any rotation, small scale and shift, brightness/contrast/colour jitter, flips; "
                        "flips: the lab's; none")
    g.add_argument("--train-crop-size", type=at_least(0), default=0, metavar="N",
                   help="train on random N x N windows of the --image-size image, unresized, and evaluate on "
                        "the whole image (lesions keep their size in pixels); 0: the whole image")
    g.add_argument("--cache-images", action=argparse.BooleanOptionalAction, default=False,
                   help="decode and preprocess each image once and keep it in memory (image-size^2 x 3 bytes "
                        "an image: 49 KB at 128 px, 786 KB at 512 px); epochs then only augment")
    g.add_argument("-j", "--workers", type=at_least(0), default=None, help="DataLoader workers (default: CPU cores)")

    g = p.add_argument_group("model selection")
    g.add_argument("--select-on", choices=("auto", "val", "test"), default="auto",
                   help="split that picks best.pt (auto: val when there is one; test only to reproduce the lab)")
    g.add_argument("--select-metric", choices=("accuracy", "kappa"), default="kappa",
                   help="what picks best.pt on the selection split (lab: accuracy)")
    g.add_argument("--eval-splits", default="val,test",
                   help="splits evaluated after every epoch: val, test or both (comma-separated; one the data "
                        "lacks is left out)")

    g = p.add_argument_group("engine")
    add_device_argument(g)
    g.add_argument("--amp", choices=("auto", "none", "bf16", "fp16"), default="auto",
                   help="mixed precision in training (auto: bf16 on CUDA and on CPUs with AVX512-BF16/AMX, "
                        "except, on the CPU, for inputs of 16 px or less; else none)")
    add_amp_argument(g, "--eval-amp", "evaluating each epoch, which selects best.pt, tunes the thresholds and "
                                      "fills metrics.csv")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on for conv models on CUDA and CPU)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the model")

    g = p.add_argument_group("output")
    g.add_argument("--out", help="run folder (e.g. runs/NAME)")
    g.add_argument("--resume", help="continue the run in this folder where it stopped")
    g.add_argument("--stop-after", type=at_least(1), default=None,
                   help="run at most this many epochs now, then stop cleanly (continue with --resume)")
    g.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=False, help="no progress bars")
    return show_defaults(p)


def option_names(options: dict, where) -> dict:
    """``options`` keyed by option names with ``_`` (``image-size`` is ``image_size``); one written both ways is
    refused, as one written twice is."""
    named: dict = {}
    for key, value in options.items():
        name = str(key).replace("-", "_")
        if name in named:
            raise ConfigError(f"{where}: {name} is written twice (as {name} and {str(name).replace('_', '-')}); "
                              "keep one")
        named[name] = value
    return named


NOT_UTF8_TEXT = "not UTF-8 text (saved in another encoding, UTF-16 or Latin-1 say); save it again as UTF-8"


def with_nearest(names, known) -> str:
    """Unknown ``names`` joined, each with the ``known`` name it is likely a misspelling of: ``image_sise (did you
    mean image_size?)``."""
    return ", ".join(f"{k}" + (f" (did you mean {near[0]}?)" if (near := difflib.get_close_matches(
        str(k), [str(n) for n in known], 1)) else "") for k in names)


def file_options(path: Path, data: str | None = None, resume: bool = False) -> tuple[dict, str]:
    """Option defaults from a YAML file and what it was: ``"options"`` (option: value), ``"run"`` (a run's
    ``config.yaml``: its options, not its folder) or ``"experiment"`` (one cell: ``train:``, ``base:``, ``data:``)."""
    if path.is_dir():
        run = path / "config.yaml"
        raise ConfigError(f"config {path} is a folder; " + (f"for the run's options pass {run}" if run.is_file() else
                                                              "give a YAML file of options"))
    try:
        with path.open(encoding="utf-8") as f:  # a file, not its text: YAML's errors then name it
            cfg = load_yaml(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config {path}: not found") from None
    except (OSError, ValueError, yaml.YAMLError) as e:  # ValueError: not text (a checkpoint, say)
        if isinstance(e, UnicodeDecodeError) and path.suffix.lower() not in (".pt", ".pth", ".ckpt", ".onnx"):
            raise ConfigError(f"config {path}: {NOT_UTF8_TEXT}") from None
        raise ConfigError(f"config {path}: " + (f"cannot read it ({e.strerror or e})" if isinstance(e, OSError) else
                                                f"not valid YAML ({yaml_problem(e, path)})")) from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value (keys are option names with _)")
    if "engine" in cfg and isinstance(cfg.get("train"), dict):
        options = {k: v for k, v in cfg["train"].items() if k not in ("config", "out", "resume", "stop_after")}
        if "eval_amp" not in options:  # a run from before --eval-amp evaluated in its training precision
            options["eval_amp"] = (cfg.get("engine") or {}).get("amp", "none")
        if options.get("workers") is None:  # the loader workers it ran with (by default one per core of that
            options["workers"] = (cfg.get("engine") or {}).get("workers")  # machine) draw its augmentations: kept
        typed, resolved = options.get("data"), (cfg.get("data") or {}).get("path")
        if isinstance(resolved, str) and not (isinstance(typed, str) and Path(typed).expanduser().is_absolute()):
            options["data"] = resolved  # a relative --data was relative to where the run started
        return options, "run"
    if resume:
        raise ConfigError(f"{path} is not a run's config.yaml (it has no train: and engine: sections: emptied or "
                          "edited?); restore it, or start a new run (--weights RUN/checkpoints/best.pt to start from "
                          "its weights)")
    if not {"name", "train", "grid", "base", "variants"} & set(cfg):
        options = option_names(cfg, path)
        if "resume" in options or "config" in options:
            key = "resume" if "resume" in options else "config"
            raise ConfigError(f"{path}: {key}: is not an option a file can give; pass --{key} on the command line")
        return options, "options"
    from ..experiments.runner import ExperimentError, load_experiment

    try:
        exp = load_experiment(path, data)
    except ExperimentError as e:
        raise ConfigError(str(e)) from None
    if len(exp.cells) != 1:
        raise ConfigError(f"{path} describes {len(exp.cells)} runs ({', '.join(c.name for c in exp.cells)}); "
                          f"run them all with `retinopathy experiment {shlex.quote(str(path))}`")
    return {"data": exp.data, **exp.cells[0].options}, "experiment"


PATH_OPTIONS = ("config", "data", "out", "resume", "weights", "split_file", "labels", "images")


def expand_home(args: argparse.Namespace) -> None:
    """``~`` in path options: from a config file, or ``--out=~/x``, which the shell leaves as it is."""
    for key in PATH_OPTIONS:
        if isinstance(getattr(args, key), str):
            setattr(args, key, os.path.expanduser(getattr(args, key)))


def parse_args(argv: list[str] | None = None, run_options: bool = True) -> argparse.Namespace:
    """Parse with the precedence defaults < preset < (with --resume) the run's saved options < config file <
    command line; ``run_options=False`` leaves the run's out (an experiment's cell.yaml is the whole cell: an
    option it no longer sets is back at its default)."""
    parser = get_args_parser()
    if others_say_it():  # under torchrun every process parses the same line: each machine's first one says it
        parser.error = lambda message: parser.exit(2)
    pre, _ = parser.parse_known_args(argv)
    expand_home(pre)
    layered, origin = _layered_defaults(parser, pre, run_options)
    parser.set_defaults(**layered)
    args = parser.parse_args(argv)
    expand_home(args)
    _retype_file_values(args, parser, origin)
    _check_values(args, parser, _naming(args, origin, _command_line_options(argv)))
    return args


def _command_line_options(argv: list[str] | None) -> set[str]:
    """The options the command line itself gives (not a file, a preset or a default)."""
    parser = get_args_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    parser.error = lambda message: parser.exit(2)  # the real parse has said it already
    return set(vars(parser.parse_known_args(argv)[0]))


def _naming(args: argparse.Namespace, origin: dict, given: set[str]):
    """``said(dest)``: an option and its value as the user wrote it, ``--lr 0.0`` on the command line or
    ``lr: 0.0 (from FILE)`` in a config file (or a preset), for messages."""
    def said(dest: str) -> str:
        value = getattr(args, dest)
        if dest in given or dest not in origin:
            return f"--{dest.replace('_', '-')} {value}"
        return f"{dest}: {value!r} (from {origin[dest]})"
    return said


def _layered_defaults(parser: argparse.ArgumentParser, pre: argparse.Namespace,
                      run_options: bool = True) -> tuple[dict, dict]:
    """The defaults that a run's config.yaml (--resume), a preset and a config file give (a later one wins),
    checked and typed, and where each came from (for messages)."""
    layered: dict = {}
    origin: dict = {}
    if pre.resume and not (Path(pre.resume) / "config.yaml").exists():
        from .checkpoint import new_run_from

        resume = Path(pre.resume)
        run = resume.parent.parent if resume.parent.name == "checkpoints" else resume.parent
        parser.error(f"--resume {pre.resume}: " + (
            "not found" if not resume.exists() else
            f"inside a run; --resume takes the run folder, {run}" if (run / "config.yaml").exists() else
            "an experiment's folder: `retinopathy experiment CONFIG` again continues its cells (or --resume one "
            "of its run folders)" if (resume / "experiment.json").exists() else
            "its config.yaml, the run's record of its options and data, is gone (deleted?): put it back from a "
            f"backup, or start a new run from its weights ({new_run_from(resume / 'checkpoints' / 'last.pt')})"
            if (resume / "checkpoints" / "last.pt").is_file() else
            "not a run folder (no config.yaml there); pass the folder that `retinopathy train --out` wrote, "
            "e.g. runs/NAME"))
    if pre.config == "":  # an unset shell variable (-c "$CFG"): not "no file"
        parser.error("-c/--config: an empty path; give the config file, or leave out -c")
    file_cfg, kind = file_options(Path(pre.config), pre.data) if pre.config else ({}, "options")
    if pre.preset and (pre.resume or kind == "run") or pre.resume and kind != "run" and file_cfg.get("preset") \
            not in (None, recorded_option(pre.resume, "preset")):  # an experiment's cell.yaml names the run's own
        parser.error(f"--preset{'' if pre.preset else f' (preset: in {pre.config})'} cannot change a run's saved "
                     "options (--resume, or -c a run's config.yaml); pass the options to change instead")
    preset = file_cfg.get("preset", pre.preset) if pre.preset is None else pre.preset
    if preset is not None and (not isinstance(preset, str) or preset not in PRESETS):
        parser.error(f"preset: {preset!r} (from {pre.config}) is not one of {', '.join(sorted(PRESETS))}")
    if preset:
        layered.update(PRESETS[preset])
        origin.update(dict.fromkeys(PRESETS[preset], f"preset {preset}"))
    if pre.resume and run_options:  # the run's options, which a file (-c) and the command line may then change
        run_config = Path(pre.resume) / "config.yaml"
        layered.update(recorded := file_options(run_config, resume=True)[0])
        origin.update(dict.fromkeys(recorded, run_config))
    layered.update(file_cfg)
    origin.update(dict.fromkeys(file_cfg, pre.config))
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    unknown = sorted(set(layered) - set(actions))
    if unknown:
        raise ConfigError(f"{', '.join(sorted({str(origin[k]) for k in unknown}))}: unknown option(s) "
                          f"{with_nearest(unknown, actions)}; the options are train's, with _ for - (`retinopathy "
                          "train --help`)")
    for key, value in layered.items():  # text the file gives a number option: checked here, naming the file
        if isinstance(value, str) and actions[key].type is not None:  # (argparse would blame the flag)
            try:
                layered[key] = actions[key].type(value)
            except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
                parser.error(f"{key}: {value!r} (from {origin[key]}): {e}")
    return layered, origin


def _retype_file_values(args: argparse.Namespace, parser: argparse.ArgumentParser, origin: dict) -> None:
    """Give a config file's values argparse's types and checks: YAML numbers, booleans, lists and empty values
    skip them."""
    for action in parser._actions:  # a config file's values that are not text skip argparse's type and choices
        value, default = getattr(args, action.dest, None), defaults().get(action.dest)
        source = origin.get(action.dest)
        example = f"; e.g. {action.dest}: {default}" if default is not None else ""
        if value is None and default is None:
            continue
        if value is None:
            parser.error(f"{action.dest}: no value (from {source}); give one{example}")
        if isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                parser.error(f"{action.dest}: {value!r} (from {source}) is not true or false")
            continue
        if isinstance(value, (list, dict)):
            parser.error(f"{action.dest}: {value!r} (from {source}) is not a single value; write it as on the "
                         f"command line{example}")
        if isinstance(value, bool) and isinstance(action, argparse._StoreAction):
            parser.error(f"{action.dest}: {value!r} (from {source}) is not " + (
                f"a number{example}" if action.type is not None else f"a text value{example}"))
        if action.type is None and isinstance(action, argparse._StoreAction) and not isinstance(value, str):
            setattr(args, action.dest, value := str(value))  # a text option given a number: its text
        if action.type is not None and not isinstance(value, str):
            try:
                setattr(args, action.dest, value := action.type(str(value)))
            except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
                parser.error(f"{action.dest}: {value!r} (from {source}): {e}")
        if action.choices is not None and value not in action.choices:
            parser.error(f"{action.dest}: {value!r} (from {source}) is not one of "
                         f"{', '.join(map(str, action.choices))}")


def recorded_option(run: str, key: str):
    """The value of option ``key`` that the run folder ``run`` recorded (None when it recorded none)."""
    return file_options(Path(run) / "config.yaml", resume=True)[0].get(key)


def _check_values(args: argparse.Namespace, parser: argparse.ArgumentParser, said) -> None:
    """What one option's value or two options together cannot be, each named as ``said`` names it (the flag or
    the file and key); fills in --batch-size and --out."""
    if args.batch_size is None:
        args.batch_size = default_batch_size(args.model, args.preset)
    if not args.data:
        parser.error("--data is required (or set data: in the config file)")
    if not args.out and not args.resume:
        parser.error("--out runs/NAME is required")
    if args.out and args.resume and Path(args.out).resolve() != Path(args.resume).resolve():
        parser.error(f"--resume {args.resume} continues that run in its own folder; leave out --out {args.out} "
                     "(to start a new run from its weights: --weights RUN/checkpoints/best.pt --out NEW)")
    args.out = args.out or args.resume
    checkpoints = Path(args.out) / "checkpoints"
    if not args.resume and (checkpoints / "last.pt").exists() and busy(args.out):
        parser.error(f"--out {args.out} is being trained by another process right now; give another --out to start "
                     "a new run")
    if not args.resume and (checkpoints / "last.pt").exists():
        parser.error(f"--out {args.out} already holds a run (checkpoints/last.pt): continue it with --resume "
                     f"{args.out}, or give another --out (or remove that folder) to start a new run")
    if not args.resume and (checkpoints / "best.pt").exists():
        parser.error(f"--out {args.out} already holds a finished run (checkpoints/best.pt; its last.pt is gone, so "
                     f"it cannot continue): start a new run from its weights "
                     f"({new_run_from(checkpoints / 'best.pt')}), or remove that folder")
    if not args.resume and (held := others_work(args.out)):
        parser.error(f"--out {args.out} {held}: a run written there would mix with it (and a report would read the "
                     "folder as that one run); give the run a folder of its own, e.g. runs/NAME")
    if args.model not in CLASSIFIERS:
        parser.error(f"{said('model')}: {args.model!r} is not a torchvision classification model" + (
            " (it detects, segments, or reads video or motion)" if args.model in list_models() else "") +
            "; any classification model works, e.g. resnet18, resnet50, efficientnet_b0, convnext_tiny")
    if args.label_smoothing and args.objective not in ("classification", "ordinal+ce"):
        parser.error(f"{said('label_smoothing')}: label smoothing applies to cross-entropy (objectives "
                     f"classification, ordinal+ce), not to {args.objective}")
    if args.sampler == "balanced" and args.class_weights != "none" and not others_say_it():
        print(f"warning: --sampler balanced already shows every grade equally often; --class-weights "
              f"{args.class_weights} weights the rare grades up a second time", file=sys.stderr)
    if not args.resume and (unused := unused_options(args)) and not others_say_it():
        print("warning: set, but this run does not use it: " + "; ".join(f"{said(k)} {why}" for k, why in unused),
              file=sys.stderr)
    kept = args.resume and recorded_option(args.resume, "freeze_epochs") == args.freeze_epochs  # the run's own:
    if not 0 <= args.freeze_epochs <= args.epochs and not kept:  # checked once the run's epochs are known (train)
        parser.error(f"{said('freeze_epochs')}: must be between 0 and the epochs ({said('epochs')})")
    if not 0 < args.model_ema_decay < 1:
        parser.error(f"{said('model_ema_decay')}: must lie between 0 and 1")
    if args.mixup < 0:
        parser.error(f"{said('mixup')}: a Beta distribution's alpha, above 0 (or 0 for off)")
    if not 0 <= args.threshold_margin < 1:
        parser.error(f"{said('threshold_margin')}: an accuracy margin between 0 and 1")
    if args.space_to_depth < 1 or args.image_size % args.space_to_depth:
        parser.error(f"{said('space_to_depth')}: needs a block size of 1 or more that divides the image size "
                     f"({said('image_size')})")
    if not 0 <= args.train_crop_size <= args.image_size or args.train_crop_size % args.space_to_depth:
        parser.error(f"{said('train_crop_size')}: a window of at most the image size ({said('image_size')}; 0: "
                     f"off), divisible by the space-to-depth block ({said('space_to_depth')})")
    for option in ("image_size", "train_crop_size"):
        size = getattr(args, option)
        seen = size // args.space_to_depth  # what the network's first layer takes
        if size and (why := size_problem(args.model, seen)):
            parser.error(said(option) + (f" (the network sees {seen} px after {said('space_to_depth')})"
                                         if seen != size else "")
                         + f": {why}; give another size, or another model")
    splits = [sp.strip() for sp in args.eval_splits.split(",") if sp.strip()]
    allowed = {"val", "test", *(["train"] if args.resume else [])}  # a run from before this check may hold train
    for sp in splits:
        if sp not in allowed:
            parser.error(f"{said('eval_splits')}: {sp!r} is not val or test" + (
                " (training's own loss and accuracy are in metrics.csv already; grade the training images after "
                "training with `retinopathy evaluate RUN --split train`)" if sp == "train" else ""))
    args.eval_splits = ",".join(splits)
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if isinstance(value, float) and not math.isfinite(value):
            parser.error(f"{said(action.dest)}: not a finite number")
    if args.lr <= 0:
        parser.error(f"{said('lr')}: a learning rate above 0")
    fractions = {k: split_option(vars(args).get, k) for k in ("val_fraction", "test_fraction")}
    try:
        check_fractions(*fractions.values())
    except SplitError as e:  # named as given (a fraction left unset is at its default)
        parser.error(" and ".join(said(k) if getattr(args, k) is not None else f"--{k.replace('_', '-')} {v} "
                                  "(the default)" for k, v in fractions.items()) + ": " + str(e).partition(": ")[2])
    for name in ("weight_decay", "norm_weight_decay", "warmup_epochs"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            parser.error(f"{said(name)}: 0 or more")
    for name in ("momentum", "label_smoothing"):
        if not 0 <= getattr(args, name) < 1:
            parser.error(f"{said(name)}: from 0 up to, not including, 1")


def default_batch_size(model: str, preset: str | None) -> int:
    """The batch size of a run that sets none: 32, or under ``--preset lab`` the lab's for the model."""
    return LAB_BATCH.get(model, 12) if preset == "lab" else 32


def unused_options(args) -> list[tuple[str, str]]:
    """``(option, why it is unused)`` for each option set otherwise than its default that the run would not use."""
    argmax = (args.decision or default_decision(args.objective)) == "argmax"
    no_thresholds = (argmax, "(the most probable grade is answered: no thresholds)")
    unused = {"threshold_rule": no_thresholds, "threshold_data": no_thresholds,
              "threshold_margin": (argmax or args.threshold_rule != "kappa-above-majority",
                                   "(only --threshold-rule kappa-above-majority uses it)"),
              "model_ema_decay": (not args.model_ema, "(without --model-ema)"),
              "momentum": (args.optimizer != "sgd", f"(--optimizer {args.optimizer})")}
    default = defaults()
    return [(k, why) for k, (idle, why) in unused.items() if idle and getattr(args, k) != default[k]]


@functools.cache
def defaults() -> dict:
    """Every option's built-in default (``{dest: default}``), before presets, files and the command line."""
    return {a.dest: a.default for a in get_args_parser(add_help=False)._actions}


@functools.cache
def option_types() -> dict:
    """``{dest: type}`` of the options that argparse converts from text (numbers, sizes...)."""
    return {a.dest: a.type for a in get_args_parser(add_help=False)._actions if a.type is not None}


def option_value(options: dict, key: str):
    """An option as a run used it: one left unset (None, or absent) is its default, text as train reads it
    (``'1e-3'``, which YAML leaves as text, is 0.001; ``val, test`` is ``val,test``), and 1 == 1.0."""
    value = options.get(key)
    if isinstance(value, str) and key in option_types():
        try:
            value = option_types()[key](value)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            pass  # train names it
    if isinstance(value, str) and key == "eval_splits":
        value = ",".join(s.strip() for s in value.split(",") if s.strip())
    if value is None and key == "batch_size":  # as parse_args resolves it
        value = default_batch_size(options.get("model") or defaults()["model"], options.get("preset"))
    elif value is None and key == "decision":  # the objective's own
        value = default_decision(options.get("objective") or defaults()["objective"])
    elif value is None and key in PRESETS.get(options.get("preset"), {}):  # a cell's preset, as parse_args applies it
        value = PRESETS[options["preset"]][key]
    elif value is None:
        value = SPLIT_DEFAULTS.get(key, defaults().get(key))
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def plain_options(options: dict) -> dict:
    """The options that a checkpoint and a run's YAML can hold as they are (no Path objects, no functions)."""
    return {k: v for k, v in options.items() if v is None or isinstance(v, (str, int, float, bool))}


def environment() -> dict:
    """Package and library versions, hardware, and the git commit if any."""
    import numpy
    import PIL
    import sklearn
    import torch
    import torchvision

    from .. import __version__

    env = {"retinopathy": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
           "torchvision": str(torchvision.__version__), "numpy": numpy.__version__, "pillow": PIL.__version__,
           "scikit_learn": sklearn.__version__, "platform": platform.platform(),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        root = Path(__file__).resolve().parents[3]
        env["git_commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                           text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env
