"""``make demo`` (``python -m retinopathy.demo``): the lab's four-cell comparison, scaled to a CPU, end to end.

Generates the synthetic set (data/synthetic) when it is missing, runs configs/demo.yaml (runs/demo; ResNet18
and ResNet50, with and without ImageNet weights; about 1.6-1.8 minutes on 2 idle CPU cores, up to 17 when
heavily shared), builds the report (reports/demo) and prints the path of its index.html. Offline, the
pretrained cells are skipped and the report says why. Running it again reuses finished cells.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import RetinopathyError
from .experiments.runner import ExperimentError, load_experiment, run_experiment

SOURCE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"  # in a source checkout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("python -m retinopathy.demo", description=__doc__.splitlines()[0])
    default = Path("configs/demo.yaml") if Path("configs/demo.yaml").exists() else SOURCE_CONFIG
    p.add_argument("--config", default=str(default), help=f"experiment file (default {default})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        exp = load_experiment(args.config)
        if exp.report_out is None:
            raise ExperimentError(f"{args.config}: the demo needs report: {{out: DIR}}")
        status = run_experiment(exp, quiet=args.quiet)
    except RetinopathyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    index = Path(status["report"]).resolve()
    secs = time.perf_counter() - start
    took = f"{secs / 60:.1f} min" if secs >= 60 else f"{secs:.0f} s"
    failed = int(status.get("failed") or 0)
    print(f"\ndemo finished in {took}" + (f", {failed} cell(s) failed (named above)" if failed else "")
          + f". Open the report:\n  {index}\n  ({index.as_uri()})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
