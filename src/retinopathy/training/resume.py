"""``--resume``: what a run may change when it continues, and mending what a save killed half-way left."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from ..atomic import remove_leftovers
from ..data.splits import SPLIT_DEFAULTS, split_option
from ..launch import resume_command
from ..models.objectives import default_decision
from ..reporting.model_card import CARD, write_model_card
from ..reporting.text import epochs_text
from .checkpoint import CheckpointError, load_checkpoint, new_run_from, save_checkpoint
from .config import defaults, file_options
from .distributed import DistInfo, barrier


# What shapes the network (its EMA too), the metrics.csv columns or the meaning of "best" (the decision rule, eye
# blending): a resumed run keeps them. The threshold options decide which epochs may be best, so they are kept
# too, except to retune a finished run's best.pt with --threshold-data train+selection (which then records them in
# last.pt as well). A run that trains on also keeps what its restored optimizer and schedule were built with (and
# its steps per epoch, checked below); --epochs may grow: the cosine then stretches over the longer schedule, from
# where that schedule would be.
FIXED_ON_RESUME = ("model", "objective", "head", "pair_eyes", "space_to_depth", "global_pool", "eval_splits",
                   "select_on", "select_metric", "blend_eyes", "model_ema", "model_ema_decay",  # and --decision
                   "image_size", "preprocess", "train_crop_size",  # what the model sees
                   "val_fraction", "test_fraction", "split_seed",  # the split (its split.csv decides)
                   "pretrained", "weights_tag")  # where the weights started (last.pt holds them now)
UNUSED_ON_RESUME = ("weights", "split_file")  # files a resume does not read: the record keeps the run's
FIXED_WHILE_STEPPING = ("optimizer", "lr", "momentum", "weight_decay", "norm_weight_decay", "scheduler",
                        "warmup_epochs", "freeze_epochs", "batch_size",
                        "augment", "sampler", "class_weights", "label_smoothing", "mixup", "seed")  # how it learns
FIXED_WHILE_TRAINING = ("threshold_rule", "threshold_margin", "threshold_data")
MEANS_NOTHING_WITHOUT = {"model_ema_decay": "model_ema", "weights_tag": "pretrained"}  # a decay without EMA, a tag
# without ImageNet weights: a record may hold either, and a resume may give either, to no effect


def matters(option: str, options: dict) -> bool:
    """Whether ``option`` means anything among ``options`` (:data:`MEANS_NOTHING_WITHOUT`)."""
    return option not in MEANS_NOTHING_WITHOUT or bool(options[MEANS_NOTHING_WITHOUT[option]])


def flag(option: str, value, bare: bool = False) -> str:
    """An option as a refusal names it: ``--lr 0.01``, ``--no-pretrained``, ``--split-file not set``; ``bare``:
    a value without its option's name (a switch keeps it; no value: ``left unset``)."""
    name = option.replace("_", "-")
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    if bare:
        return "left unset" if value is None else str(value)
    return f"--{name} {'not set' if value is None else value}"


def effective(option: str, value):
    """An option's value as the run used it: a split option left unset is its default (:func:`split_option`)."""
    return split_option({option: value}.get, option) if option in SPLIT_DEFAULTS else value


def comparable(option: str, value):
    """An option's value as resume compares it: --eval-splits as its list of names (``val,`` is ``val``)."""
    return [s.strip() for s in value.split(",") if s.strip()] if option == "eval_splits" else effective(option, value)


def disagreements(config: dict, record: Path) -> list[str]:
    """What a checkpoint's ``config`` (its options) and the run's ``record`` (its config.yaml) disagree on, among
    what shapes the model and (in a run never resumed) how it learns, as ``--seed 2 (the run's config.yaml: 1)``: a
    checkpoint copied from another run (or a record edited). An option newer than the checkpoint is its default;
    one a record does not hold, or that means nothing there (:func:`matters`), is not compared. A resume records
    what it kept now, but one by an earlier version could record the learning options it was given."""
    recorded = file_options(record, resume=True)[0]
    resumed = bool((yaml.safe_load(record.read_text(encoding="utf-8")) or {}).get("earlier"))
    initial = defaults()
    had = {k: config.get(k, initial[k]) for k in (*FIXED_ON_RESUME, *(() if resumed else FIXED_WHILE_STEPPING))}
    return [f"{flag(k, effective(k, had[k]))} (the run's config.yaml: {flag(k, effective(k, recorded[k]), bare=True)})"
            for k in had if k in recorded and matters(k, had) and comparable(k, recorded[k]) != comparable(k, had[k])]


def restore_best(folder: Path, last: dict) -> None:
    """When last.pt's epoch was its best, write ``best.pt`` from ``last`` if best.pt did not follow it (the process
    was killed between the two saves: the two hold the same state, and a best.pt cut or replaced since is mended
    so), and its model card if that did not follow best.pt (a full disk stopped it). A best.pt of an earlier
    selected epoch that is missing or broken cannot be mended: refused before any training."""
    best, card = folder / "best.pt", folder / CARD
    try:
        held = load_checkpoint(best, mmap=True)["epoch"] if best.exists() else None
        broken = ""
    except CheckpointError:
        held, broken = None, "cannot be read"  # cut, emptied, or not a checkpoint
    selected = last["best"].get("epoch")
    if selected is None:  # no epoch selected yet: no best.pt
        return
    if selected != last["epoch"]:
        if held != selected:  # the selected epoch's weights were only in best.pt: nothing here can write them again
            what = broken or ("is missing" if held is None else f"holds epoch {held + 1}")
            raise CheckpointError(f"{best} {what}, and the run selected its epoch {selected + 1}, whose weights "
                                  f"only best.pt held (last.pt holds epoch {last['epoch'] + 1}): put the run's "
                                  f"best.pt back from a backup, or start a new run from last.pt's weights "
                                  f"({new_run_from(folder / 'last.pt')})")
        return
    if held != last["epoch"]:
        save_checkpoint({k: v for k, v in last.items() if k not in ("format", "version", "save_id")}, best)
    if not card.exists() or card.stat().st_mtime_ns <= best.stat().st_mtime_ns:  # <=: coarse clocks
        write_model_card(best)


def retuned(best_pt: Path, same_options: bool) -> bool:
    """Whether a finished run's best.pt holds thresholds retuned on train+selection, with threshold options the
    same as its record's (``same_options``), so that a plain resume has nothing to do."""
    try:
        info = load_checkpoint(best_pt, mmap=True)["model_info"]
    except (CheckpointError, OSError):
        return False
    return same_options and str(info.get("threshold_data")).startswith("train+")


def resume_state(args, out: Path, dist: DistInfo) -> tuple[dict | None, bool, bool]:
    """``--resume``: (last.pt, whether the run trains on, whether it only retunes a finished run's thresholds);
    ``(None, False, False)`` for a new run. Refuses options the run cannot change; rank 0 mends what a save
    killed half-way left."""
    last_pt = Path(args.resume or "") / "checkpoints" / "last.pt"
    if args.resume and last_pt.exists():
        ckpt = load_checkpoint(last_pt)
        retune = (ckpt["epoch"] + 1 >= args.epochs and args.threshold_data == "train+selection"
                  and ckpt["model_info"].get("decision") == "thresholds")
        stepping = ckpt["epoch"] + 1 < args.epochs
        fixed = (FIXED_ON_RESUME + (() if retune else FIXED_WHILE_TRAINING)
                 + (FIXED_WHILE_STEPPING if stepping else ()))
        initial = defaults()  # what a run that predates an option ran with (an option's default is the old way)
        had = {k: ckpt["config"].get(k, initial[k])  # an option newer than the run: its default
               for k in (*FIXED_ON_RESUME, *FIXED_WHILE_TRAINING, *FIXED_WHILE_STEPPING)}
        foreign = disagreements(ckpt["config"], Path(args.resume) / "config.yaml")
        if foreign:
            raise CheckpointError(f"{last_pt} is not this run's checkpoint: it trained with {', '.join(foreign)}; put "
                                  "the run's own last.pt back (or its config.yaml, if that was edited), or train a "
                                  f"new run from this checkpoint's weights ({new_run_from(last_pt)})")
        differs = [k for k in had if comparable(k, had[k]) != comparable(k, getattr(args, k))]
        changed = [f"{flag(k, effective(k, had[k]))} (not {flag(k, effective(k, getattr(args, k)), bare=True)})"
                   for k in fixed if k in differs and matters(k, vars(args))]
        decision = args.decision or default_decision(args.objective)  # None: the objective's own
        trained = ckpt["model_info"].get("decision") or default_decision(ckpt["config"]["objective"])
        if decision != trained:
            changed.append(f"--decision {trained} (not {decision})")
        if trained == "argmax" and args.threshold_data == "train+selection" \
                and ckpt["config"].get("threshold_data") != "train+selection":
            raise CheckpointError(f"{args.resume}: --threshold-data train+selection tunes the thresholds that cut a "
                                  "score into grades, and this run grades by the most probable grade (--decision "
                                  "argmax): it has none to tune")
        if changed:
            given = f" (the options of -c {args.config} are given too)" if getattr(args, "config", None) else ""
            raise CheckpointError(f"{args.resume}: the run trained with {', '.join(changed)}; these cannot change "
                                  f"on resume. Resume without them{given}, or start a new run from its weights "
                                  f"({new_run_from(Path(args.resume) / 'checkpoints' / 'best.pt')})")
        if not stepping:  # a finished run learns no more: what it learnt with stays in its record
            kept = {k: had[k] for k in FIXED_WHILE_STEPPING if k in differs}
            if kept and dist.main:
                print(f"note: the run has trained its {epochs_text(ckpt['epoch'] + 1)}, so "
                      f"{', '.join(flag(k, getattr(args, k)) for k in kept)} "
                      f"{'change' if len(kept) > 1 else 'changes'} nothing now; its record keeps "
                      f"{', '.join(flag(k, v) for k, v in kept.items())}", file=sys.stderr)
            for k, v in kept.items():
                setattr(args, k, v)
            args.epochs = max(args.epochs, ckpt["epoch"] + 1)  # not fewer than it has trained
        for k in UNUSED_ON_RESUME:  # given again, perhaps by another path (an experiment run from elsewhere)
            ran_with = ckpt["config"].get(k)
            if getattr(args, k) != ran_with and (ran_with is None or os.path.isabs(ran_with)):
                if getattr(args, k) and dist.main:
                    print(f"note: --{k.replace('_', '-')} {getattr(args, k)} is not read on resume (the run's "
                          f"{'last.pt' if k == 'weights' else 'split.csv'} holds what it gave); its record keeps "
                          f"{ran_with or 'none'}", file=sys.stderr)
                setattr(args, k, ran_with)
        planned = ckpt["config"].get("epochs")
        if stepping and isinstance(planned, int) and args.epochs < planned and dist.main:
            print(f"note: --epochs {args.epochs} is fewer than the {planned} the run was set to train: it ends "
                  f"after epoch {args.epochs}, its schedule cut to {args.epochs} epochs (the learning rate now where "
                  f"that schedule is at epoch {ckpt['epoch'] + 2})", file=sys.stderr)
        if stepping and ckpt.get("world_size", dist.world_size) != dist.world_size:  # before the data is read
            raise CheckpointError(f"{args.resume}: the run trained in {ckpt['world_size']} process(es), this resume "
                                  f"has {dist.world_size}: each process draws its own share of the images and its own "
                                  "augmentations, so another count would not continue the run as it was going (and "
                                  "changes its steps per epoch). Resume it as it ran: "
                                  f"{resume_command(args.resume, ckpt['world_size'])}"
                                  + (f" --epochs {args.epochs}" if args.epochs != ckpt["config"].get("epochs") else ""))
        if dist.main:
            remove_leftovers(out / "checkpoints")  # of a save killed half-way
            restore_best(out / "checkpoints", ckpt)
        if retune and not stepping:  # a finished run: retuned again only if it was not, or by other options
            barrier(dist)  # best.pt mended first
            retune = not retuned(out / "checkpoints" / "best.pt", not set(differs) & set(FIXED_WHILE_TRAINING))
        return ckpt, stepping, retune
    if args.resume and (Path(args.resume) / "checkpoints" / "best.pt").exists():
        raise CheckpointError(f"{args.resume}: its checkpoints/last.pt is gone (deleted once the run finished?), so "
                              "the run cannot continue; start a new one from its weights "
                              f"({new_run_from(Path(args.resume) / 'checkpoints' / 'best.pt')}), or remove the "
                              "folder to train it again")
    if args.resume and dist.main:
        print(f"note: {args.resume} has no checkpoints/last.pt yet (stopped during its first epoch): starting over")
        remove_leftovers(Path(args.resume) / "checkpoints")  # its first save, killed half-way
    return None, False, False
