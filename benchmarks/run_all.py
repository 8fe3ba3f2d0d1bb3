"""``make bench``: run every CPU benchmark, each in its own process, and gather the results with their ratios
against the lab's way into ``benchmarks/results/latest.json``.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only decode,train]

Takes about 10 minutes on 2 cores (``--quick``: about half, noisier). The GPU benchmark is separate
(``benchmarks/gpu.sh``).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import common

BENCHES = {  # name: (script, time limit in seconds, keys gathered into latest.json)
    "decode": ("bench_decode.py", 240, ("decode_speedup_vs_lab", "cache_speedup_vs_lab",
                                          "memory_cache_speedup_vs_fov_originals")),
    "prepare": ("bench_prepare.py", 120, ("prepare_images_per_s", "prepare_scaling_1_to_2")),
    "train": ("bench_train.py", 480, ("train_speedup_vs_lab_cpu", "train_speedup_vs_lab_cpu_default_threads")),
    "infer": ("bench_infer.py", 300, ("infer_speedup_vs_lab_cpu", "infer_speedup_vs_lab_cpu_default_threads")),
    "memory": ("bench_memory.py", 420, ("memory_growth_2k_to_10k", "memory_bounded")),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds and smaller sets (noisier)")
    p.add_argument("--only", help="comma-separated benchmarks to run (default: all)")
    args = p.parse_args()
    names = args.only.split(",") if args.only else list(BENCHES)
    unknown = set(names) - set(BENCHES)
    if unknown:
        p.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(BENCHES)}")
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    latest = {"when": now, "machine": common.machine(), "quick": args.quick, "benches": {}, "failed": {},
              "targets": {}}
    if args.only:  # the benchmarks not run again keep their last results, each with its own "when"
        kept = previous_results()
        for name, res in kept.get("benches", {}).items():
            if name in BENCHES and name not in names:
                gather(latest, name, {"when": kept.get("when"), **res})
    for sig in (signal.SIGTERM, signal.SIGHUP):  # as exceptions, so that the running benchmark is stopped too
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    for name in names:
        script, limit, _ = BENCHES[name]
        path = common.RESULTS / f"{name}.json"
        path.unlink(missing_ok=True)
        cmd = [sys.executable, str(common.REPO / "benchmarks" / script), "--json", str(path)]
        cmd += ["--quick"] if args.quick else []
        print(f"== {name} ({script})", flush=True)
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, start_new_session=True)  # its own process group: a kill reaches its children
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            rc = f"killed after {limit} s"
        finally:  # the time limit, Ctrl-C, or run_all itself stopped (SIGTERM, SIGHUP): the benchmark and what it
            if proc.poll() is None:  # started (bench_memory's training) go too
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if rc != 0 or not path.exists():
            latest["failed"][name] = f"exit status {rc}"
            continue
        res = json.loads(path.read_text())
        res.update(seconds=round(time.perf_counter() - t, 1), when=now)
        gather(latest, name, res)
    latest["seconds"] = round(time.perf_counter() - start, 1)
    out = common.write_json(latest, common.RESULTS / "latest.json", "latest")
    rows = [{"ratio / figure": k, "value": latest[k]} for b in BENCHES for k in BENCHES[b][2] if k in latest]
    print()
    print(common.table(rows, ["ratio / figure", "value"], f"summary ({latest['seconds']:.0f} s)"))
    for target, met in latest["targets"].items():
        print(f"  target {target}: {'met' if met else 'NOT met'}")
    for name, why in latest["failed"].items():
        print(f"  {name} failed: {why}", file=sys.stderr)
    print(f"wrote {out}")
    return 1 if latest["failed"] else 0


def gather(latest: dict, name: str, res: dict) -> None:
    """One benchmark's results into ``latest``: the whole, its ratios and its targets."""
    latest["benches"][name] = res
    latest.update({k: res[k] for k in BENCHES[name][2] if k in res})
    latest["targets"].update(res.get("targets", {}))


def previous_results() -> dict:
    """The last latest.json, or {} when there is none to read."""
    try:
        return json.loads((common.RESULTS / "latest.json").read_text())
    except (OSError, ValueError):
        return {}


if __name__ == "__main__":
    sys.exit(main())
