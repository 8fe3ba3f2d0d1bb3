"""``retinopathy evaluate CHECKPOINT --data DATA --split test --out DIR``: measure a trained grader honestly.

Writes ``metrics.json`` (accuracy beside the majority-class accuracy, quadratic kappa with patient-level
bootstrap CIs, macro-F1, per-grade precision/recall/F1, referable-DR AUC, counts), ``predictions.csv``
(every image, gathered over all batches), ``confusion_matrix.csv`` and ``confusion_matrix.png`` (and
``skipped.csv``, what ``--skip-bad`` dropped).
"""
from __future__ import annotations

import argparse
import csv
import filecmp
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import yaml

from ..atomic import replacing, write_json
from ..cli.common import (
    READ_KEYS,
    add_amp_argument,
    add_blend_argument,
    add_data_arguments,
    add_device_argument,
    at_least,
    blend_setting,
    catalog_options,
    show_defaults,
)
from ..data import DataError, FundusDataset, Normalize, Problem, load_catalog, read_catalog
from ..data.dataset import PairedEyes
from ..data.problems import skipped_note, write_skipped
from ..data.splits import run_overlap, same_photographs, seen_counts, split_option
from ..errors import DataWarning, RetinopathyError
from ..models.restore import display_name, restore
from ..outputs import check_writable, is_run_folder, refuse_photograph_folder, refuse_run_folder
from ..reporting.figures import confusion_figure
from ..reporting.model_card import write_model_card
from ..reporting.text import bracket_ci
from ..training.checkpoint import checkpoint_file, refuse_replacing_run, run_folder
from ..training.engine import ShardSampler, evaluate, make_loader, pick_device, to_engine
from ..workers import usable_cores
from .metrics import GRADES, bootstrap_ci, full_metrics, seen_images


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("retinopathy evaluate", add_help=add_help,
                                description="Evaluate a checkpoint on a split of a dataset.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="best.pt / last.pt, or a run folder")
    p.add_argument("--data", required=True, help="dataset folder (any supported format)")
    add_data_arguments(p, split_default="test", skip_bad=True)
    p.add_argument("--out", required=True, help="folder for metrics.json, predictions.csv and the figures")
    p.add_argument("-b", "--batch-size", type=at_least(1), default=32)
    p.add_argument("-j", "--workers", type=at_least(0), default=None, help="DataLoader workers (default: CPU cores)")
    add_device_argument(p)
    add_amp_argument(p)
    p.add_argument("--bootstrap", type=at_least(0), default=1000, help="patient-level bootstrap resamples (0: none)")
    add_blend_argument(p, None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return show_defaults(p)


def run_reading(checkpoint: Path, data: str) -> dict:
    """How a run read its data (``--labels``, ``--format``, ``--images``, the columns, ``--skip-bad``; from its
    config.yaml) when ``data`` is the folder it trained on; {} otherwise."""
    try:
        config = yaml.safe_load((run_folder(checkpoint) / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(config, dict) or (config.get("data") or {}).get("path") != str(Path(data).resolve()):
        return {}  # not a run's config.yaml, or other data
    train = config.get("train") or {}
    return {k: train[k] for k in (*READ_KEYS, "skip_bad") if train.get(k)}


def reads_as_run(opts: dict, reading: dict, keys=READ_KEYS) -> bool:
    """Whether catalog ``opts`` read the data as :func:`run_reading` says the run did, in ``keys``."""
    def value(options, key):
        v = options.get(key)
        return os.path.abspath(v) if v is not None and key in ("labels", "images") else v
    return all(value(opts, k) == value(reading, k) for k in keys)


def run_catalog_options(args, checkpoint: Path, ckpt: dict, data: str, labels: Path | None = None,
                        reading: dict | None = None) -> dict:
    """Catalog options for a trained run's checkpoint on ``data``: the run's own split unless told otherwise.

    Its split.csv when that lists every image of ``data``, at least 90 % with the grades it lists (the data it
    trained on, a copy or a ``prepare``d version of it); on other data the split is computed with the run's
    seed and fractions. The run's photographs with more added (names it lists, at least 90 % of them with the
    grades it lists, and images it does not list) are refused unless --split-file or --split all says what to
    grade: a fresh split would put training images into val or test. Names that mostly recur with other grades
    are other photographs (EyePACS and synthetic sets share names). The images are looked for where the run
    found them (its ``--images``), and read as the run read them (``reading``: :func:`run_reading`, read here when
    not given), unless told otherwise."""
    opts = catalog_options(args)
    opts["labels"] = opts.get("labels") or labels
    reading = run_reading(checkpoint, data) if reading is None else reading
    told = [k for k in READ_KEYS if k != "images" and opts.get(k) is not None]
    as_run = reads_as_run(opts, reading, told)
    for key in READ_KEYS:  # the run's data read as the run read it, unless told otherwise
        if opts.get(key) is None and key in reading and (as_run or key == "images"):
            opts[key] = reading[key]
    if args.split_file:
        return opts
    split_csv = run_folder(checkpoint) / "split.csv"
    samples = []
    if split_csv.exists():
        try:  # a folder of photographs, say, is not a dataset: nothing of it is listed
            samples = read_catalog(data, resolve=False, **{k: opts[k] for k in READ_KEYS if k in opts}).samples
        except DataError:
            pass
    listed_same, regraded, unlisted = run_overlap(split_csv, [(s.image, s.label) for s in samples])
    same = len(listed_same)
    if same_photographs(same, regraded) and not unlisted:
        trained = ckpt.get("config", {})
        other = [f"--{k.replace('_', '-')} {getattr(args, k)}" for k in ("val_fraction", "test_fraction", "split_seed")
                 if getattr(args, k, None) is not None and getattr(args, k) != split_option(trained.get, k)
                 and getattr(args, "split", "all") != "all"]  # every image: no split to put them in
        if other:
            raise RetinopathyError(f"{', '.join(other)}: {data} holds the photographs the run trained on, which are "
                                   f"graded on the run's own split ({split_csv}); another split of them would put "
                                   "training images into val or test. Leave the option out, or pass --split-file "
                                   "FILE to grade another split")
        opts["split_file"] = split_csv
    elif same_photographs(same, regraded, unlisted) and getattr(args, "split", "all") != "all":
        raise DataError([Problem("split-overlap", str(data), None,
                                 f"{same} of its images are in the run's split ({split_csv}), with the same grades, "
                                 f"and {unlisted} are not: a split computed afresh would put some of the run's "
                                 f"training images into {args.split}")],
                        hint="Use the data the run trained on, pass --split-file FILE assigning every image, or "
                             "grade every image with --split all")
    for key, opt in (("val_fraction", "val_fraction"), ("test_fraction", "test_fraction"), ("split_seed", "seed")):
        if getattr(args, key, None) is None and ckpt.get("config", {}).get(key) is not None:
            opts[opt] = ckpt["config"][key]
    return opts


def predict_dataset(model, objective, dataset, *, batch_size=32, workers=None, device="auto", amp="none",
                    progress=True) -> dict:
    """Run ``model`` over every image of ``dataset`` (uint8 tensors); see :func:`engine.evaluate`."""
    device = pick_device(device)
    amp, channels_last = to_engine(model, device, amp)
    loader = make_loader(dataset, batch_size, usable_cores() if workers is None else workers, device,
                         ShardSampler(len(dataset)), True, 0)
    normalize = Normalize(dataset.preprocessing.mean, dataset.preprocessing.std).to(device)
    return evaluate(model, objective, loader, device, normalize, amp=amp, channels_last=channels_last,
                    progress=progress, desc="predict")


OUTPUTS = ("metrics.json", "skipped.csv", "predictions.csv", "confusion_matrix.csv", "confusion_matrix.png")


def main(args) -> dict:
    out = Path(args.out)
    checkpoint = Path(args.checkpoint)
    own_run = run_folder(checkpoint).resolve()
    refuse_run_folder(out, "--out", "eval", own=(out / "config.yaml").exists() and out.resolve() == own_run)
    other = next((d for d in out.resolve().parents if is_run_folder(d)), own_run)
    if other != own_run:  # e.g. another run's eval/: the report reads that run's evaluation there
        raise RetinopathyError(f"--out {out} is inside the run in {other}, and {checkpoint} is not that run's: its "
                               f"evaluation there would replace that run's own; write into {own_run / 'eval'}, or a "
                               "folder of its own")
    refuse_photograph_folder(out, "--out", OUTPUTS.__contains__, own_run / "eval")  # its confusion_matrix.png
    if any(d and out.resolve() == Path(d).resolve() for d in (args.data, getattr(args, "images", None))):
        raise RetinopathyError(f"--out {out} is the data's own folder: write the evaluation into a folder of its own, "
                               f"e.g. {own_run / 'eval'}")
    check_writable(out, "--out")
    model, objective, prep, ckpt = restore(checkpoint)
    reading = run_reading(checkpoint, args.data)  # its --skip-bad too, where the data is read as the run read it
    opts = run_catalog_options(args, checkpoint, ckpt, args.data, reading=reading)
    skip_bad = args.skip_bad if args.skip_bad is not None else bool(reading.get("skip_bad") and
                                                                      reads_as_run(opts, reading))
    catalog = load_catalog(args.data, **opts)
    refuse_replacing_run([out / name for name in OUTPUTS], checkpoint,  # before the work: an output named as an
                         [*catalog.labels, *(s.path for s in catalog.samples), opts.get("split_file")])  # input
    with warnings.catch_warnings():
        if opts.get("split_file") is None:  # a fresh split of other data: its patients on both sides of it are not
            warnings.filterwarnings("ignore", r"[0-9,]+ of [0-9,]+ \w+ patients also have an eye in ",
                                    DataWarning)  # this model's leakage (the data's other warnings stay)
        dataset = FundusDataset(catalog, args.split, train=False, preprocess=prep, uint8=True, skip_bad=skip_bad)
    if ckpt["model_info"].get("pair_eyes"):
        dataset = PairedEyes(dataset)
    progress = not args.quiet
    res = predict_dataset(model, objective, dataset, batch_size=args.batch_size, workers=args.workers,
                          device=args.device, amp=args.amp, progress=progress)
    info, weight, patients = ckpt["model_info"], blend_setting(args, ckpt), dataset.patients
    if weight:
        res["probs"], res["scores"], res["preds"] = objective.blended(res["probs"], res["scores"], patients, weight)
    y, pred, probs = res["labels"], res["preds"], res["probs"]
    metrics = full_metrics(y, pred, probs)
    if args.bootstrap:
        metrics["ci95"] = bootstrap_ci(y, pred, patients, n=args.bootstrap, probs=probs)
    own_split = run_folder(checkpoint) / "split.csv"  # given as --split-file (or a copy of it): the run's own
    other_split = args.split_file and not (own_split.exists() and filecmp.cmp(args.split_file, own_split, False))
    metrics.update({"loss": res["loss"], "split": args.split, "blend_eyes": weight,
                    "data": str(Path(args.data).resolve()),
                    "split_file": str(Path(args.split_file).resolve()) if other_split else None,
                    "checkpoint": str(checkpoint), "arch": info["arch"], "objective": info["objective"],
                    "epoch": ckpt["epoch"], "checkpoint_id": ckpt.get("save_id"), "selected": ckpt.get("best"),
                    "skipped": len(dataset.skipped),  # each listed in skipped.csv
                    **seen_counts(own_run / "split.csv", ckpt, *([(s.image, s.label) for s in d.samples]
                                                                for d in (catalog, dataset)))})
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    write_skipped(out / "skipped.csv", dataset.skipped)
    with replacing(out / "predictions.csv", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image", "patient", "true_grade", "predicted_grade", *[f"prob_{g}" for g in GRADES], "score"])
        for s, t, p, pr, sc in zip(dataset.samples, y, pred, probs, res["scores"]):
            w.writerow([s.image, s.patient, int(t), int(p), *[f"{v:.9g}" for v in pr], f"{sc:.9g}"])
    with replacing(out / "confusion_matrix.csv") as f:
        np.savetxt(f, np.array(metrics["confusion_matrix"]), fmt="%d", delimiter=",",
                   header="rows: true grade 0-4; columns: predicted grade 0-4", comments="# ")
    try:  # before the figure, which marks the evaluation finished (an experiment checks it): a card that cannot
        write_model_card(checkpoint, evaluation=metrics, eval_dir=out)  # be written loses none of the files
    except OSError as e:  # e.g. a checkpoint in a read-only folder (named: not the temporary file's path)
        print(f"warning: model card in {checkpoint_file(checkpoint).parent} not updated ({e.strerror or e})",
              file=sys.stderr)
    except yaml.YAMLError as e:
        print(f"warning: model card not updated: {run_folder(checkpoint) / 'config.yaml'} is not a run's "
              f"config.yaml ({str(e).splitlines()[0]})", file=sys.stderr)
    run, data = run_folder(checkpoint).resolve(), Path(metrics["data"]).name
    graded = f"every image of {data}" if args.split == "all" else f"{args.split} split of {data}"
    confusion_figure(metrics["confusion_matrix"], f"{run.name if is_run_folder(run) else checkpoint.name}: "
                     f"{display_name(info['arch'])}, {graded}, {len(y)} images\n"
                     "row-normalised: the diagonal is each grade's recall", out / "confusion_matrix.png")
    ci = metrics.get("ci95")
    if dataset.skipped:
        print(f"warning: {skipped_note(dataset.skipped, str(out / 'skipped.csv'))}", file=sys.stderr)
    print(f"{args.split}: {metrics['count']} images | accuracy {metrics['accuracy']:.4f}"
          + (f" [95% CI {ci['accuracy'][0]:.3f}, {ci['accuracy'][1]:.3f}]" if ci and ci["accuracy"] else
             f" [no 95% CI: one {ci['unit']}]" if ci else "")
          + f" (majority class {metrics['majority_accuracy']:.4f}) | kappa {metrics['kappa']:.4f}"
          + bracket_ci(metrics, "kappa")
          + f" | macro-F1 {metrics['macro_f1']:.4f}"
          + (f" | referable AUC {metrics['referable_auc']:.4f}" if metrics["referable_auc"] is not None else "")
          + bracket_ci(metrics, "referable_auc")
          + "".join(f", {side} {metrics[f'referable_{side}']:.3f}" for side in ("sensitivity", "specificity")
                    if metrics[f"referable_{side}"] is not None)
          + f"\nwritten to {out}")
    if seen := seen_images(metrics):
        print(f"warning: of these images, {seen}: its accuracy and kappa on them overstate (the model card marks "
              f"this row); {own_numbers(args)}", file=sys.stderr)
    return metrics


def own_numbers(args) -> str:
    """Where a model's own numbers are, when the images graded include its training images."""
    if args.split != "test":
        return "grade --split test for the model's own numbers"
    return ("this test split is not the run's (other data, or another --split-file): grade the data it trained on "
            "with its own split for the model's own numbers")


def cli(argv: list[str] | None = None) -> int:
    main(get_args_parser().parse_args(argv))
    return 0
