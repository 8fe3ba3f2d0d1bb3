"""Memory: peak resident set size of one ``retinopathy train`` epoch over 2,000 and over 10,000 synthetic files
(32 px, so that it is quick; 2 loader workers), each in a fresh process (``ru_maxrss`` of the training process
and of its loader workers). Nothing holds the dataset in memory, so the peak must not grow with the number of
files beyond the per-file bookkeeping (labels, paths, splits: well under 2 KB a file).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

RUNNER = r"""
import json, resource, sys
from retinopathy.cli.main import main
rc = main(sys.argv[1:])
kb = lambda who: resource.getrusage(who).ru_maxrss  # KiB on Linux
print(json.dumps({"rc": rc, "main_kib": kb(resource.RUSAGE_SELF), "workers_kib": kb(resource.RUSAGE_CHILDREN)}))
"""
PER_FILE_LIMIT = 2048  # bytes of peak memory per extra file allowed


def subset(src: Path, dst: Path, n: int) -> None:
    """The first ``n`` labelled images of ``src``, hard-linked (copied where links fail) into ``dst``."""
    dst.mkdir()
    lines = (src / "trainLabels.csv").read_text().splitlines()
    (dst / "trainLabels.csv").write_text("\n".join(lines[: n + 1]) + "\n")
    for line in lines[1: n + 1]:
        name = line.split(",")[0] + ".jpeg"
        try:
            os.link(src / name, dst / name)
        except OSError:
            (dst / name).write_bytes((src / name).read_bytes())


def run(sizes=(2000, 10000), workers: int = 2, timeout: float = 600) -> dict:
    from retinopathy.data.synth import generate
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        generate(tmp / "all", n=max(sizes), size=32, seed=0, progress=False)
        gen_s = time.perf_counter() - t
        for n in sizes:
            data = tmp / "all" if n == max(sizes) else tmp / f"n{n}"
            if n != max(sizes):
                subset(tmp / "all", data, n)
            cmd = [sys.executable, "-c", RUNNER, "train", "--data", str(data), "--model", "resnet18",
                   "--no-pretrained", "--epochs", "1", "--freeze-epochs", "1", "--image-size", "32",
                   "--batch-size", "64", "--workers", str(workers), "--augment", "none", "--val-fraction", "0.05",
                   "--test-fraction", "0", "--eval-splits", "val", "--out", str(tmp / f"run{n}"), "--quiet"]
            env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(common.REPO / "src")),
                   "OMP_NUM_THREADS": "1"}  # memory is the point here; one thread is quicker on a shared CPU
            t = time.perf_counter()
            out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)
            if out.returncode != 0:
                raise RuntimeError(f"training on {n} files failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"files": n, "peak_main_mib": r["main_kib"] / 1024, "peak_worker_mib": r["workers_kib"] / 1024,
                         "seconds": time.perf_counter() - t})
    small, big = rows[0], rows[-1]
    extra = big["files"] - small["files"]
    per_file = {k: (big[k] - small[k]) * 2**20 / extra for k in ("peak_main_mib", "peak_worker_mib")}
    bounded = all(v < PER_FILE_LIMIT for v in per_file.values())
    return {"rows": rows, "generate_seconds": round(gen_s, 1), "workers": workers,
            "bytes_per_extra_file": {k.replace("_mib", ""): round(v) for k, v in per_file.items()},
            "memory_growth_2k_to_10k": big["peak_main_mib"] / small["peak_main_mib"],
            "memory_bounded": bounded, "targets": {f"peak grows < {PER_FILE_LIMIT} B per file": bounded}}


def main() -> None:
    args = common.parser(__doc__.split("\n\n")[0]).parse_args()
    res = {"bench": "memory", "machine": common.machine(),
           **run(sizes=(400, 2000) if args.quick else (2000, 10000))}
    print(common.table(res["rows"], ["files", "peak_main_mib", "peak_worker_mib", "seconds"],
                       "peak RSS of one training epoch (32 px, 2 loader workers)"))
    print(f"growth per extra file: {res['bytes_per_extra_file']} bytes; targets: {res['targets']}")
    print("wrote", common.write_json(res, args.json, "memory"))


if __name__ == "__main__":
    main()
