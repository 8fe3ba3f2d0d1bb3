"""``retinopathy train``: fit a DR grader, frozen backbone first, then fine-tuning; resumable; DDP-ready.

Read top to bottom: ``main(args)`` locks the run folder, ``_train`` joins the process group, ``_run`` continues a
run (``resume_state``, resume.py), reads the data (``load_data``, run_data.py), builds the model and its ``Engine``
(``build_grader``) and the training loader (``make_train_loader``), records ``config.yaml``, then runs epochs
(``start_phase`` for each phase, ``train_one_epoch`` from engine.py, ``grade_epoch``), writing ``metrics.csv`` and
checkpoints on rank 0 only; ``retune_thresholds`` ends a ``--threshold-data train+selection`` run.
"""
from __future__ import annotations

import csv
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DistributedSampler

from ..atomic import naming, replacing, write_text
from ..data import FundusDataset, Normalize
from ..data.dataset import PairedEyes
from ..data.formats import GRADE_NAMES, GRADES
from ..data.problems import skipped_note, write_skipped
from ..data.synth import is_synthetic
from ..errors import Interrupted, NotWritten, RetinopathyError
from ..evaluation.metrics import majority_accuracy, summary
from ..launch import launched_as, resume_command, sigterm_as_ctrl_c
from ..models import build_model, make_objective
from ..models.objectives import class_weights, tune_thresholds
from ..outputs import check_writable, exclusive
from ..reporting.model_card import write_model_card
from ..reporting.text import epochs_text
from ..workers import usable_cores
from .checkpoint import CheckpointError, interrupts_after, load_checkpoint, metrics_rows, save_checkpoint
from .config import WHERE_STARTED, environment, parse_args, plain_options
from .distributed import (DistInfo, PeerFailed, barrier, broadcast_buffers, cleanup, init_distributed, local_first,
                          peer_failed)
from .engine import (Diverged, Engine, cpu_amp_note, engine_settings, freeze_backbone, make_loader, pick_device,
                     to_engine, train_one_epoch)
from .optim import build_optimizer, build_scheduler
from .resume import FIXED_WHILE_TRAINING, resume_state
from .run_data import RunData, load_data, weights_run_overlap
from .samplers import BalancedSampler


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of an epoch's randomness in one process (augmentation, mixup, dropout): its own in each process."""
    return seed * 100003 + epoch + 7919 * rank


def outranks(value: float, eligible: bool, best: dict) -> bool:
    """Model selection: the higher value wins, except that under ``--threshold-rule kappa-above-majority`` an
    epoch whose thresholds beat the majority grade on the selection split outranks any epoch whose could not."""
    return (eligible, value) > (best.get("eligible", True), best["value"])


def eligible_epoch(objective, rule: str, accuracy: float, labels, margin: float) -> bool:
    """Whether an epoch may outrank under ``kappa-above-majority``: its accuracy on the selection split beats
    always answering the majority grade by more than ``margin`` (the margin its thresholds were tuned with).
    Every epoch is eligible under argmax decisions or the plain ``kappa`` rule."""
    return objective.decision == "argmax" or rule == "kappa" or accuracy > majority_accuracy(labels) + margin


def metrics_columns(eval_splits) -> list[str]:
    cols = ["epoch", "phase", "lr", "train_loss", "train_accuracy"]
    for sp in eval_splits:
        cols += [f"{sp}_loss", f"{sp}_accuracy", f"{sp}_kappa", f"{sp}_macro_f1",
                 *[f"{sp}_recall_{g}" for g in GRADES]]
    return cols + ["epoch_seconds", "images_per_s"]


def main(args) -> dict:
    """Train a run into ``args.out``, which stays locked while it trains (by rank 0 under torchrun or srun)."""
    for key in WHERE_STARTED:  # absolute: config.yaml and checkpoints name the files wherever a resume runs
        if getattr(args, key, None):
            setattr(args, key, os.path.abspath(getattr(args, key)))
    if launched_as()[0] != 0:
        return _train(args)
    check_writable(Path(args.out), "--out", f"copy the run where you can write (cp -r {shlex.quote(args.out)} NEW) "
                   "and resume the copy: a run's folder moves with its files" if args.resume else "choose another")
    with exclusive(args.out, "trained"):
        return _train(args)


WORKER_KILLED = re.compile(r"DataLoader worker \(pid(?:\(s\))? [\d, ]+\) (?:is killed by signal: [\w ]+|exited "
                           r"unexpectedly(?: with exit code \d+)?)")  # PyTorch's words for a worker that stopped
# (killed by a signal, the system's SIGKILL when memory runs out among them, or exited with a code)


def worker_stopped(message: str) -> str:
    """PyTorch's words for a data-loading worker that stopped, with what to do; '' for any other error."""
    if not (found := WORKER_KILLED.search(message)):
        return ""
    said = found.group(0)
    return f"{said}: " + (
        "the workers ran out of shared memory (a container's /dev/shm: raise it, e.g. docker run --shm-size 8g, or "
        "use --workers 0)" if said.endswith("Bus error") else
        "the system stops a process this way when memory runs out; use fewer --workers or a smaller --batch-size (or "
        "leave out --cache-images)" if said.endswith(("Killed", "unexpectedly")) else
        "a worker crashed; run with --workers 0 to see where")


class WorkerKilled(RetinopathyError):
    """A data-loading worker that the system killed; ``run``: the run to continue (the CLI says how)."""

    rank_local = True
    exit_code = 1

    def __init__(self, message: str, run: str):
        super().__init__(message)
        self.run = run


def _train(args) -> dict:
    """Join the process group (under torchrun or srun), and leave it however the training ends."""
    device = pick_device(args.device)
    dist = init_distributed(device.type, args.out)
    try:
        return _run(args, dist, device)
    except RuntimeError as e:  # a collective that another process's error broke: that error says why
        if isinstance(e, RetinopathyError):
            raise
        if stopped := worker_stopped(str(e)):  # by the system (out of memory, most often): no traceback
            raise WorkerKilled(stopped, args.out) from None
        if not dist.enabled or not peer_failed(e):
            raise
        raise PeerFailed("stopped, because another process of the run failed (its error is above, or in torchrun's "
                         f"summary); once that is fixed, continue the run: {resume_command(args.out)}") from None
    finally:
        cleanup(dist)


def write_run_config(args, data: RunData, out: Path, origin: str, engine: Engine, ckpt: dict | None) -> None:
    """config.yaml: the options (files as absolute paths, so that --resume and -c work from any folder), the data
    and its split, the selection, the engine and the environment; a resume adds what ran the epochs before it.
    What --skip-bad dropped is counted there and listed in skipped.csv."""
    catalog, train_set, eval_sets, opts = data.catalog, data.train_set, data.eval_sets, data.split_options
    config = {"train": dict(vars(args)),
              "data": {"path": str(Path(args.data).resolve()), "format": catalog.format,
                       "synthetic": is_synthetic(args.data),  # retinopathy.data.synth's drawings: said if it moves
                       "labels": [os.path.abspath(p) for p in catalog.labels],  # abspath: the names, not the
                       "images": os.path.abspath(catalog.image_root) if catalog.image_root else None,  # links' targets
                       "split_file": os.path.abspath(out / "split.csv"),
                       "split_options": {"val_fraction": opts["val_fraction"], "test_fraction": opts["test_fraction"],
                                         "split_seed": opts["seed"]},
                       "train_counts": train_set.class_counts(),
                       "eval_counts": {sp: ds.class_counts() for sp, ds in eval_sets.items()},
                       "leakage_warnings": data.warnings,
                       "skipped": len(data.skipped)},  # each listed in skipped.csv
              "selection": {"split": data.select_on, "metric": args.select_metric,
                            "note": "selected on the validation split" if data.select_on != "test" else
                            "selected on the test split (" + ("reproduces the lab" if args.preset == "lab" else
                                                              "--select-on test" if args.select_on == "test" else
                                                              "no validation split") + "; optimistic)"},
              "engine": {"device": str(engine.device), "amp": engine.amp, "eval_amp": engine.eval_amp,
                         "channels_last": engine.channels_last, "workers": engine.workers,
                         "world_size": engine.dist.world_size},
              "weights": origin, "environment": environment()}
    if ckpt is not None:  # what ran the epochs before this resume stays on record, and what was said of its split
        before = yaml.safe_load((out / "config.yaml").read_text()) or {}
        config["data"]["leakage_warnings"] = list(dict.fromkeys(
            [*((before.get("data") or {}).get("leakage_warnings") or []), *data.warnings]))
        earlier = before.get("earlier", [])
        if not earlier or earlier[-1].get("epochs") != ckpt["epoch"] + 1:  # else the last resume trained none
            earlier = earlier + [{"epochs": ckpt["epoch"] + 1, "engine": before.get("engine"),
                                  "environment": before.get("environment")}]
        config["earlier"] = earlier
    write_skipped(out / "skipped.csv", data.skipped)
    write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def start_phase(args, model, frozen: bool, steps_per_epoch: int, ckpt: dict | None, engine: Engine):
    """A phase (frozen backbone, then fine-tuning) trains its own parameters: a new optimizer, schedule, fp16
    gradient scaler and DDP wrapper, restored from ``ckpt`` when the run stopped in this phase. Returns
    (optimizer, scheduler, scaler, the module to train)."""
    phase = "frozen" if frozen else "finetune"
    freeze_backbone(model, frozen)
    optimizer = build_optimizer(args, model)
    phase_epochs = args.freeze_epochs if frozen else args.epochs - args.freeze_epochs
    scheduler = build_scheduler(args, optimizer, steps_per_epoch, phase_epochs)
    scaler = torch.amp.GradScaler(engine.device.type) if engine.amp == "fp16" else None
    if ckpt is not None and ckpt["phase"] == phase:
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler"):
            scheduler.load_state_dict(ckpt["scheduler"])
            for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base * factor(scheduler.last_epoch)  # the schedule's, at a new --epochs too
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
    device = engine.device
    runner = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if engine.dist.enabled else model
    return optimizer, scheduler, scaler, torch.compile(runner) if args.compile else runner


def grade_epoch(args, model, objective, eval_loaders: dict, data: RunData, engine: Engine, margin: float) -> dict:
    """Each evaluated split's results, with eye blending, graded by thresholds that are tuned on the selection
    split (``objective.thresholds`` then holds them)."""
    results = {sp: engine.grade(model, objective.plain(), loader, f"eval {sp}") for sp, loader in eval_loaders.items()}
    if args.blend_eyes:
        for sp, r in results.items():
            r["probs"], r["scores"], r["preds"] = objective.blended(
                r["probs"], r["scores"], data.eval_sets[sp].patients, args.blend_eyes)
    if objective.decision == "thresholds":
        sel = results[data.select_on]
        objective.thresholds = tune_thresholds(sel["scores"], sel["labels"], args.threshold_rule, margin)
        for r in results.values():
            r["preds"] = objective.grades_of(r["probs"], r["scores"])
    return results


def epoch_row(epoch: int, phase: str, lr: float, tr: dict, results: dict, seconds: float) -> dict:
    """One metrics.csv row (``metrics_columns``)."""
    row = {"epoch": epoch, "phase": phase, "lr": lr, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"]}
    for sp, r in results.items():
        m = summary(r["labels"], r["preds"])
        row.update({f"{sp}_loss": r["loss"], f"{sp}_accuracy": m["accuracy"], f"{sp}_kappa": m["kappa"],
                    f"{sp}_macro_f1": m["macro_f1"], **{f"{sp}_recall_{g}": m["recall"][g] for g in GRADES}})
    return {**row, "epoch_seconds": seconds, "images_per_s": tr["images_per_s"]}


def retune_thresholds(args, evaluated, objective, ema, data: RunData, eval_loader, engine: Engine, out: Path,
                      best: dict, margin: float) -> None:
    """``--threshold-data train+selection``, once training has finished: tune the selected epoch's thresholds on
    the (unaugmented) training images and the selection split together, and store them in best.pt."""
    barrier(engine.dist)
    best_path = out / "checkpoints" / "best.pt"
    chosen = load_checkpoint(best_path)
    evaluated.load_state_dict(chosen["model_ema"] if ema is not None else chosen["model"])
    clean = FundusDataset(data.catalog, "train", train=False, **{**data.common, "cache": False})
    if args.pair_eyes:
        clean = PairedEyes(clean)
    scores, labels = [], []
    for sp, ds, loader in (("train", clean, engine.eval_loader(clean, args)),
                           (data.select_on, data.eval_sets[data.select_on], eval_loader)):
        r = engine.grade(evaluated, objective, loader, f"thresholds: {sp}")
        scores.append(objective.blended(r["probs"], r["scores"], ds.patients, args.blend_eyes)[1])
        labels.append(r["labels"])
    thresholds = tune_thresholds(np.concatenate(scores), np.concatenate(labels), args.threshold_rule, margin)
    if not engine.dist.main:
        return
    info = chosen["model_info"]
    print(f"thresholds of the selected epoch ({best['epoch'] + 1}) tuned on {len(labels[0])} training and "
          f"{len(labels[1])} {data.select_on} images: {[round(t, 3) for t in thresholds]} "
          f"(before: {[round(t, 3) for t in info['thresholds']]}, on {info['threshold_data']})")
    before = info.get("epoch_thresholds", info["thresholds"])  # metrics.csv's
    info.update(thresholds=thresholds, threshold_data=f"train+{data.select_on}", threshold_margin=margin,
                epoch_thresholds=before)
    save_checkpoint(chosen, best_path)
    write_model_card(best_path)
    last = load_checkpoint(out / "checkpoints" / "last.pt")  # the options config.yaml now holds
    if any(last["config"].get(k) != getattr(args, k) for k in FIXED_WHILE_TRAINING):
        last["config"].update({k: getattr(args, k) for k in FIXED_WHILE_TRAINING})
        save_checkpoint(last, out / "checkpoints" / "last.pt")


def train_size(args) -> int:
    """The side of the inputs the network trains on: the training window (or the image), after --space-to-depth."""
    return (args.train_crop_size or args.image_size) // args.space_to_depth


def build_grader(args, ckpt: dict | None, data: RunData, dist: DistInfo, device: torch.device, progress: bool):
    """The network, its objective and moving average (a resumed run's, restored), on the device, and the
    ``Engine`` it runs on: ``(model, objective, ema or None, weights origin, engine)``."""
    train_set = data.train_set
    counts = train_set.class_counts()
    absent = [str(g) for g, n in enumerate(counts) if n == 0]
    if absent and dist.main and ckpt is None:
        print("warning: " + (f"every train image is grade {counts.index(max(counts))}: the model cannot learn to "
                             "tell grades apart" if len(absent) == len(counts) - 1 else
                             f"the train split holds no image of grade {', '.join(absent)}: the model learns "
                             f"nothing of {'them' if len(absent) > 1 else 'it'} and may never answer "
                             f"{'them' if len(absent) > 1 else 'it'}"), file=sys.stderr)
    objective = make_objective(args.objective, class_weights=class_weights(counts, args.class_weights),
                               label_smoothing=args.label_smoothing, decision=args.decision)
    with local_first(dist):  # one download of the ImageNet weights per machine
        model, origin = build_model(args.model, objective.outputs, args.head, args.pretrained and not ckpt,
                                    args.weights_tag, None if ckpt else args.weights, args.check_weights_hash,
                                    args.pair_eyes, args.space_to_depth, args.global_pool)
    if ckpt is None and args.weights and not args.split_file and (overlap := weights_run_overlap(args.weights, data)):
        data.warnings.append(overlap)
        if dist.main:
            print(f"warning: {overlap}", file=sys.stderr)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        origin = ckpt["model_info"]["weights_origin"]
        objective.thresholds = list(ckpt["model_info"]["thresholds"])
    amp, channels_last = to_engine(model, device, args.amp, args.channels_last, train_size(args))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.model_ema_decay), use_buffers=True) \
        if args.model_ema else None
    if ema is not None and ckpt is not None:
        if ckpt.get("model_ema") is None:
            raise CheckpointError(f"{args.resume}: the run was trained without --model-ema; resume it without")
        ema.module.load_state_dict(ckpt["model_ema"])
        ema.n_averaged.fill_(ckpt["ema_updates"])
    engine = Engine(device, amp, engine_settings(device, model, args.eval_amp)[0], channels_last,
                    args.workers if args.workers is not None else max(1, usable_cores() // dist.world_size),
                    dist, Normalize(train_set.preprocessing.mean, train_set.preprocessing.std).to(device), progress)
    return model, objective, ema, origin, engine


def make_train_loader(args, train_set, engine: Engine, ckpt: dict | None, stepping: bool):
    """The training sampler and loader; a resume with epochs left must have the run's steps per epoch.
    ``(sampler, loader)``."""
    dist, device = engine.dist, engine.device
    if args.sampler in ("balanced", "decay"):
        train_sampler = BalancedSampler(train_set.targets, args.seed, dist.rank, dist.world_size,
                                        decay=0.5 if args.sampler == "decay" else None)
    else:
        train_sampler = DistributedSampler(train_set, dist.world_size, dist.rank, shuffle=True, seed=args.seed)
    train_loader = make_loader(train_set, args.batch_size, engine.workers, device, train_sampler, args.deterministic,
                               args.seed, train=True)
    if stepping and ckpt.get("steps_per_epoch", len(train_loader)) != len(train_loader):
        raise CheckpointError(f"{args.resume}: the run took {ckpt['steps_per_epoch']} steps per epoch, this resume "
                              f"would take {len(train_loader)} ({dist.world_size} process(es)): its learning-rate "
                              "schedule counts steps. Resume with as many processes (and the same data)")
    return train_sampler, train_loader


def _run(args, dist: DistInfo, device: torch.device) -> dict:
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    progress = not args.quiet and dist.main
    out = Path(args.out)  # checked writable, and locked, by main()
    torch.manual_seed(args.seed)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # the accuracy margin of the thresholds tuned each epoch (train+selection: the final retune's, below)
    margin = args.threshold_margin if args.threshold_rule == "kappa-above-majority" else 0.0
    per_epoch_margin = margin if args.threshold_data == "selection" else 0.0

    ckpt, stepping, retune = resume_state(args, out, dist)
    # a resume that trains on cannot end inside the frozen phase (to a finished run, a lower --epochs changes nothing)
    if (ckpt is None or stepping) and args.freeze_epochs > args.epochs:
        raise CheckpointError(f"{args.resume}: --epochs {args.epochs}: the run freezes its first "
                              f"{args.freeze_epochs}, so --epochs must be at least that")
    data = load_data(args, ckpt, dist, progress)
    train_set, select_on = data.train_set, data.select_on

    # ---- model and loaders -----------------------------------------------------------------------------
    model, objective, ema, origin, engine = build_grader(args, ckpt, data, dist, device, progress)
    evaluated = ema.module if ema is not None else model  # what is evaluated, selected and shipped
    amp, channels_last = engine.amp, engine.channels_last
    train_sampler, train_loader = make_train_loader(args, train_set, engine, ckpt, stepping)
    if dist.main and ckpt is None:  # a resumed run's split.csv is what it read its split from: it stays
        out.mkdir(parents=True, exist_ok=True)
        train_set.write_split(out / "split.csv")
    eval_loaders = {sp: engine.eval_loader(ds, args) for sp, ds in data.eval_sets.items()}

    model_info = {"arch": args.model, "head": args.head, "objective": args.objective,
                  "decision": objective.decision, "num_outputs": objective.outputs, "num_classes": len(GRADES),
                  "class_names": GRADE_NAMES, "preprocessing": train_set.preprocessing.to_dict(),
                  "weights_origin": origin, "thresholds": objective.thresholds, "head_name": model.head_name,
                  "pair_eyes": args.pair_eyes, "space_to_depth": args.space_to_depth,
                  "global_pool": args.global_pool, "threshold_data": select_on,
                  "threshold_margin": per_epoch_margin,
                  "blend_eyes": args.blend_eyes, "model_ema": args.model_ema_decay if args.model_ema else None}
    if dist.main and (ckpt is None or stepping or retune):  # a resume with nothing to do leaves the record alone
        write_run_config(args, data, out, origin, engine, ckpt)

    # ---- epochs ----------------------------------------------------------------------------------------
    columns = metrics_columns(data.eval_splits)
    metrics_path = out / "metrics.csv"
    start_epoch, best = 0, {"value": -math.inf, "epoch": None, "eligible": False}
    if ckpt is not None:
        start_epoch, best = ckpt["epoch"] + 1, ckpt["best"]
        if dist.main and metrics_path.exists():  # drop rows of epochs that were not checkpointed
            _write_rows(metrics_path, columns, [r for r in metrics_rows(metrics_path) if int(r["epoch"]) < start_epoch])
        elif dist.main and stepping:  # the file is gone: the rows from here on, under their header
            _write_rows(metrics_path, columns, [])
    elif dist.main:
        _write_rows(metrics_path, columns, [])
    if dist.main and (ckpt is None or stepping or retune):  # a resume with nothing to do says only that, below
        if data.skipped:
            print(f"warning: {skipped_note(data.skipped, str(out / 'skipped.csv'))}", file=sys.stderr)
        if ckpt is not None:
            print(f"resuming {out} after its epoch {ckpt['epoch'] + 1} (checkpoints/last.pt)")
        print(f"training {args.model} ({origin}) on {len(train_set):,} images, evaluating "
              f"{' and '.join(data.eval_splits)}, selecting on {select_on} by {args.select_metric}; device {device}, "
              f"amp {amp} (evaluation {engine.eval_amp}), channels_last {channels_last}, {dist.world_size} "
              f"process(es) -> {out}")
        if note := cpu_amp_note(device, args.amp, amp, train_size(args)):
            print(f"note: {note}", file=sys.stderr)

    current_phase = None
    ran = 0
    last_result = {}
    for epoch in range(start_epoch, args.epochs):
        if args.stop_after is not None and ran >= args.stop_after:
            break
        frozen = epoch < args.freeze_epochs
        phase = "frozen" if frozen else "finetune"
        if current_phase != phase:
            optimizer, scheduler, scaler, runner = start_phase(args, model, frozen, len(train_loader), ckpt, engine)
            current_phase = phase
        # Each epoch's randomness is a function of (seed, epoch, rank): each process its own augmentation; with
        # --deterministic (fresh loader workers each epoch, which then draw their seeds from this generator)
        # resuming repeats it exactly.
        seed = epoch_seed(args.seed, epoch, dist.rank)
        torch.manual_seed(seed)
        train_loader.generator.manual_seed(seed)
        train_sampler.set_epoch(epoch)
        t0, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
        try:
            tr = train_one_epoch(runner, objective, optimizer, train_loader, device, engine.normalize, grader=model,
                                 frozen=frozen, scheduler=scheduler, scaler=scaler, ema=ema, amp=amp,
                                 channels_last=channels_last, mixup=args.mixup, progress=progress,
                                 desc=f"epoch {epoch + 1}/{args.epochs} [{phase}]", dist=dist)
        except Diverged as e:
            raise Diverged(f"{e}. " + (f"{out / 'checkpoints' / 'last.pt'} keeps epoch {epoch}, the last finished: "
                                       f"continue with --resume {out} (with --amp none if it trained in bf16)"
                                       if epoch else "No epoch finished; nothing was saved.")) from None
        broadcast_buffers(model, dist)
        if ema is not None:
            broadcast_buffers(ema.module, dist)
        results = grade_epoch(args, evaluated, objective, eval_loaders, data, engine, per_epoch_margin)
        model_info["thresholds"] = objective.thresholds
        row = epoch_row(epoch, phase, lr, tr, results, time.perf_counter() - t0)
        value = row[f"{select_on}_{args.select_metric}"]
        eligible = eligible_epoch(objective, args.threshold_rule, row[f"{select_on}_accuracy"],
                                  results[select_on]["labels"], per_epoch_margin)
        improved = outranks(value, eligible, best)
        if improved:
            best = {"value": value, "epoch": epoch, "metric": args.select_metric, "split": select_on,
                    "eligible": eligible}
        if dist.main:
            _write_rows(metrics_path, columns, [row], append=True)
            state = {"model": model.state_dict(), "model_ema": ema.module.state_dict() if ema else None,
                     "ema_updates": int(ema.n_averaged) if ema else 0, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict() if scheduler else None,
                     "scaler": scaler.state_dict() if scaler else None, "epoch": epoch, "phase": phase,
                     "best": best, "model_info": model_info,
                     "steps_per_epoch": len(train_loader), "world_size": dist.world_size,
                     "config": {**plain_options(vars(args)), "data": str(Path(args.data).resolve())}}
            with interrupts_after():  # Ctrl-C waits for both; a kill between them is mended on resume (restore_best)
                save_checkpoint(state, out / "checkpoints" / "last.pt")
                if improved:  # after last.pt: best.pt is never of an epoch that last.pt does not hold
                    save_checkpoint(state, out / "checkpoints" / "best.pt")
                    write_model_card(out / "checkpoints" / "best.pt")
                print(f"epoch {epoch + 1}/{args.epochs} [{phase}] train loss {tr['loss']:.4f} "
                      f"acc {tr['accuracy']:.3f}" + "".join(f" | {sp} acc {row[f'{sp}_accuracy']:.3f} kappa "
                                                           f"{row[f'{sp}_kappa']:.3f}" for sp in results)
                      + f" | {tr['images_per_s']:.1f} img/s" + (" *best" if improved else ""))  # (then Ctrl-C)
        barrier(dist)
        ran += 1
        last_result = row

    finished = start_epoch + ran >= args.epochs  # not at a --stop-after pause; again on --resume of a finished run
    retune = args.threshold_data == "train+selection" and objective.decision == "thresholds" and finished \
        and best["epoch"] is not None and (ran > 0 or retune)  # a finished run's: unless it was done already
    if retune:
        retune_thresholds(args, evaluated, objective, ema, data, eval_loaders[select_on], engine, out, best, margin)
    elif dist.main and ran and (out / "checkpoints" / "best.pt").exists():  # epochs since its best: the card says
        write_model_card(out / "checkpoints" / "best.pt")  # how far the run has got
    if dist.main and not finished:
        print(f"stopped after {epochs_text(ran)} (--stop-after): continue with `{resume_command(out)}`")
    elif dist.main and not ran and not retune:
        planned = int((ckpt or {}).get("config", {}).get("epochs") or 0)
        print(f"nothing to train: {out} has trained {epochs_text(start_epoch)}, " + (
            f"of the {planned} it was started with: resume it without --epochs"
            + (f" (nor -c {args.config}, if it sets epochs)" if getattr(args, "config", None) else "")
            + " to train them"
            if planned > start_epoch
            else "all it was asked for: --epochs N on --resume trains on"))
    return {"out": str(out), "best": best, "last": last_result}


def _write_rows(path: Path, columns, rows, append: bool = False) -> None:
    if append:
        with naming(path), open(path, "a", newline="") as f:
            csv.DictWriter(f, columns, lineterminator="\n").writerows(rows)
        return
    with replacing(path, newline="") as f:
        w = csv.DictWriter(f, columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def cli(argv: list[str] | None = None) -> int:
    """``retinopathy train``. SIGTERM stops a single-process run as Ctrl-C does (:func:`sigterm_as_ctrl_c`), saves
    finished first, and the run can be continued with ``--resume``."""
    args = parse_args(argv)
    try:
        with sigterm_as_ctrl_c():
            main(args)
    except KeyboardInterrupt:
        raise Interrupted(args.out) from None
    except NotWritten as e:  # a full disk: the run continues from its last saved epoch once there is room
        e.run = args.out
        raise
    return 0
