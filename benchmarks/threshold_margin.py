"""Val-only: would thresholds that beat the majority-class rate by a margin on val beat it out of sample?

    .venv/bin/python benchmarks/threshold_margin.py runs/eyepacs256/resnet18 [RUN ...] --repeats 100

For each run folder (a regression or ordinal run; ``split.csv`` and ``checkpoints/best.pt``): the val scores,
mixed with the other eye's as the run does (its ``blend_eyes``), then for the rule ``kappa`` and for
``kappa-above-majority`` with each margin: thresholds tuned on half of the val patients and applied to the
other half, both ways (``eye_blending.halves``). ``--tune-on train+val`` adds the unaugmented training images'
scores to each tuning half (``--threshold-data train+selection``); ``train`` tunes on them alone (the half is
only measured). ``--prior`` adds the rule "prior": the half's scores cut where they give the training split's
grade mix (no search). Test images are never read.
"""
from __future__ import annotations

import csv
import json

import numpy as np
from eye_blending import halves, val_parser, val_scores

from retinopathy.models.objectives import blend_eyes


def main(argv=None) -> dict:
    p = val_parser(__doc__, 100, "benchmarks/results/threshold_margin.json")
    p.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.01, 0.02, 0.03, 0.05])
    p.add_argument("--tune-on", nargs="+", choices=("val", "train+val", "train"), default=["val"],
                   help="what thresholds are tuned on besides (or, for train, instead of) a half of val")
    p.add_argument("--prior", action="store_true", help="also the rule 'prior' (thresholds from the grade mix)")
    p.add_argument("--checkpoint", default="best.pt",
                   help="last.pt: the last epoch's weights, which val did not select (no selection bias on val)")
    args = p.parse_args(argv)
    if args.prior and "val" not in args.tune_on:
        p.error("--prior cuts val's own scores at the training grade mix: add val to --tune-on")
    results = []
    print("run | tuned on | rule | margin | half-val kappa | accuracy - majority | halves above majority")
    for run in args.runs:
        scores, labels, patients, config = val_scores(run, args.data, False, args.workers, "val", args.checkpoint)
        weight = float(config.get("blend_eyes", 0.0))
        mixed = blend_eyes(scores, patients, weight)
        if set(args.tune_on) - {"val"}:
            train, train_labels, train_patients, _ = val_scores(run, args.data, False, args.workers, "train",
                                                                args.checkpoint)
            train = (blend_eyes(train, train_patients, weight), train_labels)
        with open(run / "split.csv", newline="") as f:
            mix = np.bincount([int(r["label"]) for r in csv.DictReader(f) if r["split"] == "train"], minlength=5)
        rules = [("kappa", 0.0)] + [("kappa-above-majority", m) for m in args.margins]
        for source in args.tune_on:
            for rule, margin in rules + ([("prior", 0.0)] if args.prior and source == "val" else []):
                row = {"run": str(run), "checkpoint": args.checkpoint, "tuned_on": source, "blend_eyes": weight,
                       "rule": rule, "margin": margin,
                       **halves(mixed, labels, patients, rule, args.repeats, margin=margin,
                                extra=None if source == "val" else train, extra_only=source == "train",
                                mix=mix / mix.sum())}
                results.append(row)
                print(f"{run} | {source} | {rule} | {margin} | {row['kappa']:.3f} | "
                      f"{row['accuracy_minus_majority']:+.4f} | {row['share_above_majority']:.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return {"results": results}


if __name__ == "__main__":
    main()
