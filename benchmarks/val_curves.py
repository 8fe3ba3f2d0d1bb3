"""Val kappa of finished or partial runs, from their ``metrics.csv``: best epoch, and the mean of the last 10 and
20 epochs (the score the probes in docs/eyepacs256.md are judged by; the best epoch, 1-based as in the report, is
inflated by selection).

    .venv/bin/python benchmarks/val_curves.py RUN [RUN ...] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from retinopathy.reporting.report import _best
from retinopathy.reporting.runs import ReportError, read_rows


def summary(run: Path) -> dict:
    if not (run / "metrics.csv").is_file():
        raise SystemExit(f"error: {run / 'metrics.csv'} not found: pass a run folder (retinopathy train --out)")
    try:
        rows = read_rows(run / "metrics.csv")
    except ReportError as e:
        raise SystemExit(f"error: {e}") from None
    kappa = [r["val_kappa"] for r in rows if r.get("val_kappa") is not None]
    if not kappa:
        return {"run": str(run), "epochs": 0}
    best, epoch = _best(rows, "val_kappa")
    return {"run": str(run), "epochs": len(kappa), "best": best, "best_epoch": epoch,
            "last10": sum(kappa[-10:]) / len(kappa[-10:]), "last20": sum(kappa[-20:]) / len(kappa[-20:]),
            "seconds": sum(r["epoch_seconds"] for r in rows), "val_kappa": kappa}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--json", type=Path, help="also write every run's summary and curve here")
    args = p.parse_args(argv)
    results = [summary(r) for r in args.runs]
    for s in results:
        print(f"{s['run']:40s} no epochs" if not s["epochs"] else
              f"{s['run']:40s} epochs {s['epochs']:4d}  best {s['best']:.3f} ({s['best_epoch']})  "
              f"last-10 {s['last10']:.3f}  last-20 {s['last20']:.3f}  {s['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
