"""``MODEL_CARD.md`` beside a run's checkpoints: what the model is, what it was trained on, how well it does
against the majority-class baseline, what it is for and what it cannot do.

``train`` writes it after each new ``best.pt``; ``evaluate`` adds its results. Evaluations accumulate in
``model_card.json`` next to the card (one entry per checkpoint file, split, dataset and ``--blend-eyes`` other
than the trained one; a re-evaluation replaces its entry), so the card always lists every split evaluated so
far. The card describes ``best.pt`` when the folder has one (else the checkpoint given); an evaluation of an
earlier ``best.pt`` (another epoch, or thresholds retuned since) is kept but marked.
"""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import yaml

from .. import __version__
from ..atomic import write_json, write_text
from ..data.splits import split_option
from ..data.synth import is_synthetic
from ..evaluation.metrics import GRADES, no_better_than_majority
from ..models.objectives import DEFAULT_THRESHOLDS, default_decision, unreachable_note
from ..models.restore import display_name
from ..training.checkpoint import checkpoint_file, load_checkpoint, metrics_rows, run_folder, same_checkpoint
from .text import REFERABLE_HEAD, REFERABLE_NOTE, bracket_ci, number, referable_text, training_text

CARD, STORE = "MODEL_CARD.md", "model_card.json"
EVAL_KEYS = ("split", "data", "split_file", "epoch", "checkpoint_id", "blend_eyes", "count", "accuracy",
             "majority_accuracy", "kappa", "macro_f1", "referable_auc", "referable_sensitivity",
             "referable_specificity", "ci95", "recall", "true_counts", "predicted_counts", "training_images",
             "selection_images", "skipped")


def _read_store(path: Path) -> dict:
    if not path.exists():
        return {"evaluations": {}}
    try:
        store = json.loads(path.read_text(encoding="utf-8"))
        evaluations = store.setdefault("evaluations", {})
        if not isinstance(evaluations, dict) or not all(isinstance(e, dict) for e in evaluations.values()):
            raise ValueError("its 'evaluations' is not a mapping of evaluations")
        return store
    except (ValueError, AttributeError) as e:  # not JSON, not UTF-8 (both ValueErrors), or not the card's JSON
        print(f"warning: {path} is not readable ({e}); earlier evaluations are dropped from the model card",
              file=sys.stderr)
        return {"evaluations": {}}


def _fmt(v, digits: int = 3) -> str:
    return number(v, digits, none="n/a")


def _recalls(record: dict) -> str:
    """Recall of grades 0-4, 'n/a (0 images)' for a grade the split has no images of."""
    counts = record.get("true_counts") or [None] * len(GRADES)
    return " / ".join("n/a (0 images)" if n == 0 else _fmt(r, 2) for r, n in zip(record.get("recall") or [], counts))


def _majority(counts) -> float | None:
    return max(counts) / sum(counts) if counts and sum(counts) else None


# ---------------------------------------------------------------------------------------------- sections
def _model_section(ckpt: dict, name: str, config: dict, epochs: int | None) -> list[str]:
    info, best, train = ckpt.get("model_info", {}), ckpt.get("best") or {}, config.get("train", {})
    lines = ["## Model", "",
             f"- Architecture: {display_name(info.get('arch', '?'))} (torchvision `{info.get('arch', '?')}`) "
             f"with a `{info.get('head', '?')}` head, {info.get('num_outputs', '?')} output(s), "
             f"objective `{info.get('objective', '?')}`"
             + (f", grade thresholds {info.get('thresholds')}{unreachable_note(info.get('thresholds') or [])} "
                f"(tuned for {train.get('threshold_rule', 'kappa')}"
                + (f" on {info['threshold_data']}" if info.get("threshold_data") else "")
                + (f", accuracy margin {info['threshold_margin']}" if info.get("threshold_margin") else "")
                + ("; the search kept its starting values" if list(info.get("thresholds") or []) ==
                   list(DEFAULT_THRESHOLDS) else "") + ")"
                if info.get("decision", default_decision(info.get("objective"))) == "thresholds" else "")
             + ("; grades both eyes of a patient together (features concatenated)" if info.get("pair_eyes")
                else "")
             + (f"; space-to-depth stem: each {info['space_to_depth']}x{info['space_to_depth']} block of pixels enters "
                "as channels" if info.get("space_to_depth", 1) > 1 else "")
             + (f"; `{info['global_pool']}` global pooling" if info.get("global_pool", "avg") != "avg" else "")
             + (f"; each eye's score mixed with the patient's other eye's, weight {info['blend_eyes']} "
                "(evaluate and predict do the same)" if info.get("blend_eyes") else ""),
             f"- Weights origin: {info.get('weights_origin', 'not recorded')}"
             + (f"; these are an exponential moving average of the training weights (decay {info['model_ema']} "
                "per step)" if info.get("model_ema") else ""),
             f"- Grades: {', '.join(info.get('class_names') or [])} (international clinical DR scale 0-4)",
             f"- Checkpoint: `{name}`, epoch {ckpt.get('epoch', -1) + 1}"
             + (f" of {train.get('epochs')}" if train.get("epochs") else "")
             + (f" ({epochs} run so far)" if epochs is not None else "") + f", phase {ckpt.get('phase', '?')}"]
    if best.get("epoch") is not None:
        note = (config.get("selection") or {}).get("note", "") if best.get("split") == "test" else ""
        counts = ((config.get("data") or {}).get("eval_counts") or {}).get(best.get("split")) or []
        n = sum(v for v in counts if isinstance(v, int))  # images per grade: what the number rests on (no interval)
        lines.append(f"- Selected on the {best.get('split')} split by {best.get('metric')} = "
                     f"{_fmt(best.get('value'))}" + (f" on {n:,} images" if n else "") + (f" ({note})" if note else ""))
    return lines + [""]


def _split_rule(config: dict) -> str:
    data, train = config.get("data", {}), config.get("train", {})
    get = partial(split_option, train.get)
    if train.get("split_file"):
        return f"read from `{train['split_file']}`"
    fmt, labels = data.get("format"), [Path(f).name for f in data.get("labels") or []]
    given = ([sp for sp in ("train", "test") if f"{sp}_img.csv" in labels] if fmt == "lab" else
             labels if fmt == "folders" else [])  # the splits the data brought: its files, or its folders
    if fmt == "lab" or len(given) > 1:
        carved = [f"{'validation' if sp == 'val' else sp} = {get(f'{sp}_fraction'):.0%}" for sp in ("test", "val")
                  if sp not in given and get(f"{sp}_fraction")]
        return (f"the dataset's own {'/'.join(given)} " + ("files" if fmt == "lab" else "folders")
                + (f"; {' and '.join(carved)} of the train patients (seed {get('split_seed')}), by patient"
                   if carved else ""))
    return (f"by patient (both eyes in the same split), stratified by the worse eye's grade: "
            f"{get('test_fraction'):.0%} test, {get('val_fraction'):.0%} validation, the rest train "
            f"(seed {get('split_seed')}); written to `split.csv`")


def _data_section(config: dict) -> list[str]:
    data = config.get("data")
    if not data:
        return ["## Training data", "", "Not recorded (no `config.yaml` beside the checkpoints).", ""]
    counts = {"train": data.get("train_counts"), **(data.get("eval_counts") or {})}
    lines = ["## Training data", "",
             f"- Dataset: `{data.get('path')}`, format `{data.get('format')}`"
             + (f", labels {', '.join(f'`{Path(p).name}`' for p in data.get('labels', []))}" if data.get("labels")
                else ""),
             f"- Split: {_split_rule(config)}", "",
             "| split | " + " | ".join(f"grade {g}" for g in GRADES) + " | total |",
             "|---|" + "---:|" * (len(GRADES) + 1)]
    for split, c in counts.items():
        if c:
            lines.append(f"| {split} | " + " | ".join(str(v) for v in c) + f" | {sum(c)} |")
    if data.get("skipped"):  # a count, listed in skipped.csv (earlier versions listed them here)
        counted = isinstance(data["skipped"], int)
        n, where = (data["skipped"], "`skipped.csv`") if counted else (len(data["skipped"]), "`config.yaml`")
        lines += ["", f"- {n:,} unusable image(s) were skipped with --skip-bad (listed in the run's {where})"]
    for w in data.get("leakage_warnings") or []:
        lines += ["", f"- Warning: {w}"]
    return lines + [""]


def _preprocessing_section(ckpt: dict, config: dict) -> list[str]:
    prep = ckpt.get("model_info", {}).get("preprocessing", {})
    train = config.get("train", {})
    return ["## Preprocessing", "",
            f"- Preset `{prep.get('preset')}` at {prep.get('size')} x {prep.get('size')} px; normalised with "
            f"mean {prep.get('mean')} and std {prep.get('std')} (per RGB channel, on [0, 1] pixels)",
            "- `retinopathy predict` and `evaluate` apply exactly this (recorded in the checkpoint); "
            "`retinopathy export` writes it beside the exported model",
            f"- Training augmentation: `{train.get('augment', 'not recorded')}` (none at prediction time)"
            + (f", on random {train['train_crop_size']} px windows of the photograph (whole at prediction time)"
               if train.get("train_crop_size") else ""), ""]


def _training_section(config: dict) -> list[str]:
    t, engine = config.get("train"), config.get("engine", {})
    if not t:
        return []
    return ["## Training", "",
            f"- {training_text(t)}",
            f"- Device {engine.get('device')}, mixed precision {engine.get('amp')}, "
            f"{engine.get('world_size', 1)} process(es)", ""]


def _history_rows(history: list[dict], config: dict, epoch: int | None, selected_on: str | None,
                  info: dict) -> list[str]:
    row = next((r for r in history if r.get("epoch") == str(epoch)), None)
    if row is None:
        return []
    counts = (config.get("data") or {}).get("eval_counts") or {}
    lines = ["### During training (the selected epoch)", "",
             "| split | images | accuracy | majority-class baseline | quadratic kappa | macro-F1 |",
             "|---|---:|---:|---:|---:|---:|"]
    for split, c in counts.items():
        if f"{split}_accuracy" in row:
            lines.append(f"| {split} | {sum(c)} | {_fmt(float(row[f'{split}_accuracy']))} | "
                         f"{_fmt(_majority(c))} | {_fmt(float(row[f'{split}_kappa']))} | "
                         f"{_fmt(float(row[f'{split}_macro_f1']))} |")
    if selected_on:
        lines += ["", f"The {selected_on} numbers are optimistic: this epoch was chosen on that split."]
    before = info.get("epoch_thresholds")
    if before is not None and before != info.get("thresholds"):
        lines += ["", f"These rows graded with the thresholds tuned at that epoch ({_cuts(before)}); the model ships "
                  f"thresholds retuned afterwards on {info.get('threshold_data')} ({_cuts(info['thresholds'])}), so "
                  "its own numbers, below, differ."]
    return lines + [""]


def _cuts(thresholds) -> str:
    return ", ".join(f"{t:.3g}" for t in thresholds)


def _code(name: str) -> str:
    """``name`` as a code span in a table cell: its '|' escaped (the only character a code span must escape)."""
    return "`" + name.replace("|", "\\|") + "`"


def _evaluation_rows(store: dict, card_name: str, card_ckpt: dict) -> list[str]:
    evaluations = list(store["evaluations"].values())
    lines = ["### Evaluations (`retinopathy evaluate`)", ""]
    if not evaluations:
        return lines + ["None yet: run `retinopathy evaluate CHECKPOINT --data DATA --split test --out DIR`.", ""]
    lines += ["| split | data | checkpoint | images | accuracy [95% CI] | majority-class baseline | "
              f"quadratic kappa [95% CI] | macro-F1 | {REFERABLE_HEAD} | recall grade 0-4 |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    stale, seen, flagged, skipped, chance = False, False, False, False, False
    trained_blend = card_ckpt.get("model_info", {}).get("blend_eyes", 0.0)
    for e in evaluations:
        mark = ""
        if all(e.get(k) is not None for k in ("accuracy", "majority_accuracy", "kappa")) and no_better_than_majority(e):
            mark, flagged = " ⚠", True
        elif ((e.get("ci95") or {}).get("kappa") or [1])[0] <= 0:  # its point estimate above 0, its interval not
            mark, chance = " ≈", True
        if e.get("checkpoint") == card_name and not same_checkpoint(e, card_ckpt):
            mark, stale = mark + " *", True
        if e.get("training_images") or e.get("selection_images"):
            counts = [f"{e[key]} {what}" for key, what in (("training_images", "trained on"),
                                                           ("selection_images", "chose the checkpoint"))
                      if e.get(key)]
            mark, seen = mark + f" † ({', '.join(counts)})", True
        images = f"{e.get('count')}" + (f" ({e['skipped']} skipped)" if e.get("skipped") else "")
        skipped = skipped or bool(e.get("skipped"))
        epoch, blend = e.get("epoch"), e.get("blend_eyes", trained_blend)
        split = f"{e.get('split')} of {_code(Path(e['split_file']).name)}" if e.get("split_file") else e.get("split")
        lines.append(f"| {split} | {_code(Path(e.get('data') or '?').name)} | {e.get('checkpoint')} (epoch "
                     f"{epoch + 1 if isinstance(epoch, int) else '?'}"
                     f"{'' if blend == trained_blend else f'; --blend-eyes {blend:g}'}){mark} | {images} | "
                     f"{_fmt(e.get('accuracy'))}{bracket_ci(e, 'accuracy')} | {_fmt(e.get('majority_accuracy'))} | "
                     f"{_fmt(e.get('kappa'))}{bracket_ci(e, 'kappa')} | {_fmt(e.get('macro_f1'))} | "
                     f"{referable_text(e)} | {_recalls(e)} |")
    lines += ["", "The majority-class baseline is the accuracy of always answering the most common grade of that "
                  "split; quadratic kappa is 0 for such a model. Macro-F1 is the mean F1 over the grades that are in "
                  "the split or predicted. " + REFERABLE_NOTE]
    if flagged:
        lines.append("\n⚠ no better than always answering the most common grade there (kappa <= 0, or accuracy not "
                     "above the majority-class baseline): the model has not learnt to grade those photographs.")
    if chance:
        lines.append("\n≈ kappa's 95% interval reaches 0: on those images the model is not shown to grade better "
                     "than chance (more images narrow the interval).")
    if seen:
        lines.append("\n† includes images the run trained on, or chose its checkpoint (and any thresholds) on: its "
                     "accuracy and kappa there overstate.")
    if skipped:
        lines.append("\nskipped: images `--skip-bad` left out of that evaluation (unreadable or badly labelled; "
                     "listed in its skipped.csv): the numbers are of the rest.")
    if stale:
        lines.append("\n\\* evaluated an earlier best.pt (another epoch, or thresholds retuned since); run "
                     "`retinopathy evaluate` again.")
    return lines + [""]


INTENDED_USE = """## Intended use

Research and teaching: comparing training recipes and architectures for grading diabetic retinopathy
(0 none, 1 mild, 2 moderate, 3 severe non-proliferative, 4 proliferative) from colour fundus photographs,
and studying what such models attend to. Not for decisions about any person's care.
"""


def synthetic_training(config: dict) -> bool:
    """Whether a run (its config.yaml's ``config``) learnt from synthetic drawings (retinopathy.data.synth)."""
    data = config.get("data") or {}
    synthetic = data.get("synthetic")  # recorded when it trained; a run from before the record: its folder says
    if synthetic is None:
        synthetic = bool(data.get("path")) and is_synthetic(data["path"])
    return bool(synthetic)


def learnt_from_drawings(checkpoint, ckpt: dict) -> bool | None:
    """Whether the run of ``checkpoint`` (loaded: ``ckpt``) learnt from synthetic drawings, as its config.yaml
    records, or else (a checkpoint copied out of its run) as the folder its options name says; None when neither
    can tell."""
    try:
        config = yaml.safe_load((run_folder(checkpoint_file(checkpoint)) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        config = None
    if isinstance(config, dict):
        return synthetic_training(config)
    data = (ckpt.get("config") or {}).get("data")
    return is_synthetic(data) if isinstance(data, str) and Path(data).is_dir() else None


DRAWINGS = ("learnt from synthetic drawings (retinopathy.data.synth), not photographs of patients: its grades show "
            "that the pipeline works, not how it grades real eyes")


def _limitations(info: dict, config: dict) -> list[str]:
    """The limits of this model: what it sees (one eye, or both), and the labels it learnt from (EyePACS's, or
    synthetic drawings)."""
    blend = info.get("blend_eyes") or 0.0
    sees = ("- **Both eyes, one grade each.** The model sees a patient's two photographs together; clinical grading "
            "also uses" if info.get("pair_eyes") else
            f"- **One photograph per eye, mixed with the other eye's.** Each eye's grade comes from its photograph, "
            f"its outputs mixed with the other eye's (weight {blend:g}); clinical grading also uses" if blend else
            "- **One photograph, one grade.** The grade comes from a single photograph of one eye. Clinical grading "
            "uses both eyes,")
    lines = ["## Limitations", "",
             "- **A research tool, not a medical device.** It has not been clinically validated or cleared by any "
             "regulator. Do not use it to diagnose, screen, triage or reassure patients.",
             f"{sees} several fields, image-quality checks and the patient's history; macular oedema is not "
             "assessed. The model gives a grade 0-4 to anything it is shown, including ungradable or non-fundus "
             "images."]
    if synthetic_training(config):
        lines.append(f"- **Synthetic training data.** It {DRAWINGS}.")
    else:
        lines.append("- **Label noise.** Grades are given by clinicians, one grade per image, and graders disagree, "
                     "most often between neighbouring grades (0 and 1 especially; EyePACS's own description warns of "
                     "noise in images and labels), so the labels, and the accuracies above, are noisy, and no model "
                     "can agree with them perfectly.")
    lines.append("- **Imbalance and small numbers.** The severe grades are rare (in EyePACS grades 3 and 4 are about "
                 "2% of images each): their recall rests on few images (see the counts above); read the confidence "
                 "intervals, not only the point estimates.")
    return lines + ["- **Domain shift.** Performance on other cameras, populations or image quality than the training "
                    "data's is unknown; the preprocessing above must be applied exactly (the export's JSON records "
                    "it).", ""]


def render(ckpt: dict, name: str, config: dict, history: list[dict], store: dict, run: Path) -> str:
    arch = display_name(ckpt.get("model_info", {}).get("arch", "?"))
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Model card: {arch} diabetic-retinopathy grader (`{run.name}`)", "",
             f"_Written by retinopathy {__version__} on {today} from `{name}`; `retinopathy train` rewrites it "
             "with each new best checkpoint and `retinopathy evaluate` adds its results._", ""]
    lines += _model_section(ckpt, name, config, len(history) if history else None)
    lines += _data_section(config)
    lines += _preprocessing_section(ckpt, config)
    lines += _training_section(config)
    lines += ["## Metrics", ""]
    best_epoch = (ckpt.get("best") or {}).get("epoch")
    lines += _history_rows(history, config, best_epoch if best_epoch is not None else ckpt.get("epoch"),
                           (ckpt.get("best") or {}).get("split"), ckpt.get("model_info", {}))
    lines += _evaluation_rows(store, name, ckpt)
    lines += [INTENDED_USE, *_limitations(ckpt.get("model_info", {}), config)]
    return "\n".join(lines)


def write_model_card(checkpoint_path: Path, evaluation: dict | None = None, eval_dir: Path | None = None) -> Path:
    """Write (or update) ``MODEL_CARD.md`` beside the checkpoint; ``evaluation`` is ``evaluate``'s metrics.json
    content, kept in ``model_card.json`` with the earlier ones. Returns the card's path."""
    file = checkpoint_file(checkpoint_path)
    ckpt = load_checkpoint(file)
    folder = file.parent
    run = run_folder(file)
    described = folder / "best.pt" if file.name != "best.pt" and (folder / "best.pt").exists() else file
    card_ckpt = ckpt if described == file else load_checkpoint(described)
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
    if not isinstance(config, dict | None):
        raise yaml.YAMLError(f"it holds a {type(config).__name__}, not a mapping of options")
    history = metrics_rows(run / "metrics.csv")
    store = _read_store(folder / STORE)
    if evaluation is not None:
        record = {k: evaluation.get(k) for k in EVAL_KEYS}
        record.update(checkpoint=file.name, epoch=ckpt.get("epoch"),
                      eval_dir=str(Path(eval_dir).resolve()) if eval_dir else None,
                      written=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        other_blend = record["blend_eyes"] != ckpt["model_info"].get("blend_eyes", 0.0)
        key = f"{file.name}|{record['split']}|{record['data']}" + (
            f"|blend {record['blend_eyes']:g}" if other_blend else "") + (
            f"|split file {record['split_file']}" if record["split_file"] else "")  # not the run's own split
        store["evaluations"][key] = record
        write_json(folder / STORE, store)
    card = folder / CARD
    write_text(card, render(card_ckpt, described.name, config or {}, history, store, run))
    return card
