"""Helpers shared by the benchmarks: where the data is, the machine, timing, tables and JSON results.

Every benchmark compares against the lab's way *in the same run* and reports the ratio: absolute times on a
shared machine are noise, ratios measured side by side (interleaved, best of several rounds) much less so.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
if "PYTHONPATH" not in os.environ:  # run from a checkout without installing (gpu.sh sets PYTHONPATH=src)
    sys.path.insert(0, str(REPO / "src"))

from retinopathy import atomic  # noqa: E402


def shared_root() -> Path:
    return Path(os.environ.get("RETINOPATHY_SHARED_DATA", REPO.parent / "shared" / "data"))


def real_photos() -> Path:
    """The 35 full-size EyePACS photographs (``fundus-real``), or exit naming where they were looked for."""
    folder = shared_root() / "fundus-real"
    if not (folder / "labels.csv").exists():
        sys.exit(f"error: real photographs not found in {folder}; set RETINOPATHY_SHARED_DATA to the folder "
                 "that holds fundus-real/")
    return folder


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    found = set(re.findall(r"\b(avx512_bf16|amx_bf16|amx_tile|avx512f|avx2)\b", text))
    return sorted(found)


def machine() -> dict:
    import PIL
    import torch

    model = ""
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(),
            "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "pillow": PIL.__version__,
            "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", help="write the results here (default benchmarks/results/<name>.json)")
    p.add_argument("--quick", action="store_true", help="fewer rounds and images (a smoke run, noisier)")
    return p


def best_rate(fns: dict, items: int, rounds: int) -> dict[str, float]:
    """Items per second of each function, best of ``rounds``, the functions interleaved within each round."""
    best = {name: 0.0 for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = max(best[name], items / (time.perf_counter() - t))
    return best


def table(rows: list[dict], columns: list[str], title: str = "") -> str:
    """A plain-text table of ``rows`` (dicts); floats get 1-3 significant decimals."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:,.1f}"
        return str(v)
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths)))
              for row in cells]
    return "\n".join(lines)


def write_json(data: dict, path: str | Path | None, name: str) -> Path:
    """Write ``data`` to ``path`` (default ``benchmarks/results/<name>.json``) atomically; return the path."""
    path = Path(path) if path else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, data)
    return path
