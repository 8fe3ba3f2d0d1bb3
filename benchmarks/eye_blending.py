"""Val-only analysis behind ``--blend-eyes`` (docs/eyepacs256.md): does mixing each eye's score with the same
patient's other eye's help a trained regression (or ordinal) grader, with and without flip test-time augmentation?

    .venv/bin/python benchmarks/eye_blending.py runs/eyepacs256-v2/resnet18 [RUN ...]

For each run folder: the val images of its ``split.csv`` and the scores of ``checkpoints/best.pt``. For each
blend weight W: the referable-DR AUC of the score on val, and an out-of-sample check of the thresholds: they
are tuned (``--threshold-rule`` of the run) on half of the val patients and applied to the other half, both
ways, over several random halvings; the mean kappa, the mean accuracy minus that half's majority-class rate,
and the share of halves where the accuracy beat it. Test images are never read.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from retinopathy.data import FundusDataset, load_catalog
from retinopathy.data.dataset import PairedEyes
from retinopathy.errors import RetinopathyError
from retinopathy.evaluation.evaluate import predict_dataset
from retinopathy.inference.predict import FLIPS
from retinopathy.evaluation.metrics import majority_accuracy
from retinopathy.models.objectives import blend_eyes, tune_thresholds
from retinopathy.models.restore import restore


class FlipAverage(torch.nn.Module):
    """The mean raw output over the four flips: for a regression, the mean score, as ``predict --tta``; for an
    ordinal model the mean logits, close to but not ``predict --tta``'s mean of probabilities and scores (the
    analysis in docs/eyepacs256.md ran it on regressions)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.stack([self.model(x.flip([k - 4 for k in d]) if d else x)  # the last two dims: H, W of
                            for d in FLIPS]).mean(0)  # an NCHW batch, or of each eye of a pair's (N, 2, C, H, W)


def val_scores(run: Path, data: str | None, tta: bool, workers: int, split: str = "val",
               checkpoint: str = "best.pt") -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """The val (or another split's, unaugmented) scores (no blending) of the run's best.pt (or ``checkpoint``),
    the labels, the patients and the run's config."""
    try:
        model, objective, prep, ckpt = restore(run / "checkpoints" / checkpoint)
        if objective.decision != "thresholds":
            raise SystemExit(f"{run}: a run graded at thresholds is needed (regression, ordinal, or --decision "
                             "thresholds; this one grades by argmax)")
        data = data or (ckpt.get("config") or {}).get("data")  # the folder it trained on, recorded absolute
        if not data:
            raise SystemExit(f"{run}: its checkpoint does not say what data it trained on; pass --data DATA")
        dataset = FundusDataset(load_catalog(data, split_file=run / "split.csv"), split, preprocess=prep,
                                uint8=True, train=False)
        if ckpt["model_info"].get("pair_eyes"):  # as evaluate grades such a model: each eye beside the other
            dataset = PairedEyes(dataset)
    except RetinopathyError as e:  # a checkpoint or dataset that cannot be used: said, not a traceback
        raise SystemExit(f"error: {e}") from None
    res = predict_dataset(FlipAverage(model) if tta else model, objective, dataset, workers=workers, progress=False)
    return res["scores"], res["labels"], [s.patient for s in dataset.samples], ckpt["config"]


def prior_thresholds(scores, mix) -> list[float]:
    """The cut points that give ``scores`` the grade mix ``mix`` (shares of grades 0-4): no search, no labels."""
    return [float(v) for v in np.quantile(scores, np.cumsum(mix)[:-1])]


def halves(scores, labels, patients, rule: str, repeats: int, seed: int = 0, margin: float = 0.0,
           extra=None, extra_only: bool = False, mix=None) -> dict:
    """Thresholds tuned on one half of the patients, measured on the other (both ways, ``repeats`` halvings);
    ``extra``: (scores, labels) tuned on together with each half (the training images), or alone; rule
    ``"prior"``: the half's scores cut at the grade mix ``mix`` instead."""
    patients = np.asarray(patients)
    unique = np.unique(patients)
    rng = np.random.default_rng(seed)
    kappa, gain = [], []
    for _ in range(repeats):
        first = np.isin(patients, rng.permutation(unique)[: len(unique) // 2])
        for tune, test in ((first, ~first), (~first, first)):
            s, y = scores[tune], labels[tune]
            if extra is not None:
                s, y = extra if extra_only else (np.concatenate([extra[0], s]), np.concatenate([extra[1], y]))
            th = prior_thresholds(s, mix) if rule == "prior" else tune_thresholds(s, y, rule, margin)
            pred = np.digitize(scores[test], th)
            kappa.append(cohen_kappa_score(labels[test], pred, weights="quadratic"))
            gain.append(float((pred == labels[test]).mean()) - majority_accuracy(labels[test]))
    return {"kappa": float(np.mean(kappa)), "accuracy_minus_majority": float(np.mean(gain)),
            "share_above_majority": float(np.mean(np.array(gain) > 0))}


def val_parser(doc: str, repeats: int, out: str) -> argparse.ArgumentParser:
    """The options the val analyses share: run folders, data, halvings, workers, the JSON to write."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders of regression or ordinal runs (split.csv, best.pt)")
    p.add_argument("--data", help="the dataset (default: the one each run trained on)")
    p.add_argument("--repeats", type=int, default=repeats, help="random halvings of the val patients")
    p.add_argument("-j", "--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(out))
    return p


def main(argv=None) -> dict:
    p = val_parser(__doc__, 5, "benchmarks/results/eye_blending.json")
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.2, 0.3, 0.4, 0.5])
    args = p.parse_args(argv)
    results = []
    print("run | flips | W | referable AUC | half-val kappa | accuracy - majority | halves above majority")
    for run in args.runs:
        for tta in (False, True):
            scores, labels, patients, config = val_scores(run, args.data, tta, args.workers)
            rule = config.get("threshold_rule", "kappa")
            for w in args.weights:
                mixed = blend_eyes(scores, patients, w)
                row = {"run": str(run), "tta": tta, "weight": w, "rule": rule,
                       "referable_auc": float(roc_auc_score(labels >= 2, mixed)),
                       **halves(mixed, labels, patients, rule, args.repeats)}
                results.append(row)
                print(f"{run} | {'4' if tta else '-'} | {w} | {row['referable_auc']:.3f} | {row['kappa']:.3f} | "
                      f"{row['accuracy_minus_majority']:+.3f} | {row['share_above_majority']:.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return {"results": results}


if __name__ == "__main__":
    main()
