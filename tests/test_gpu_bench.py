"""The benchmarks cannot rot: ``benchmarks/gpu.sh --dry-run`` runs end to end on the CPU (tiny sizes), and
the summary of ``run_all.py`` prints whatever ran."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_defaults() -> tuple[str, bool]:
    """(amp, channels_last) that ``retinopathy train`` picks on the CPU for a ResNet."""
    import torch

    from retinopathy.models import build_model
    from retinopathy.training.engine import engine_settings

    model, _ = build_model("resnet18", 5)
    return engine_settings(torch.device("cpu"), model)


def test_gpu_bench_dry_run_keeps_every_part_that_ran(tmp_path):
    """End to end on the CPU; a part that cannot run (an unknown model between the two ResNets) is recorded with
    its error, the parts after it still run, the JSON is written and the exit status says it is incomplete.
    Relative paths are the current folder's, not the repository's."""
    out = tmp_path / "res" / "gpu_bench.json"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), "res/gpu_bench.json", "--dry-run", "--archs",
                           "resnet18,no_such_model,resnet50", "--workdir", "work"], check=False, cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert not res["complete"] and res["dry_run"] and res["settings"]["n"] == 40
    assert (tmp_path / "work").is_dir() and not (REPO / "res").exists() and not (REPO / "work").exists()
    parts = res["parts"]
    assert list(parts) == ["data", "loader", "resnet18", "no_such_model", "resnet50"]
    assert "not a torchvision classification model (unknown)" in parts.pop("no_such_model")["status"]
    assert all(p["status"] == "ok" for p in parts.values()), parts
    assert parts["data"]["prepare_problems"] == 0 and parts["data"]["prepare_images_per_s"] > 0
    assert parts["loader"]["lab_images_per_s"] > 0 and parts["loader"]["engine_images_per_s"] > 0
    for arch in ("resnet18", "resnet50"):
        p = parts[arch]
        assert p["lab_images_per_s"] > 0 and p["engine_images_per_s"] > 0 and p["speedup_vs_lab"] > 0
        assert (p["engine_amp"], p["engine_channels_last"]) == cpu_defaults()


def test_a_summary_with_every_benchmark_failed_is_still_printed():
    """run_all.py prints its summary table when no benchmark left a row (each failed), not a traceback."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("common", REPO / "benchmarks" / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    assert common.table([], ["ratio / figure", "value"], "summary (3 s)").splitlines() == [
        "summary (3 s)", "ratio / figure  value", "--------------  -----"]
    assert common.table([{"a": 1.5}], ["a"]).splitlines()[-1] == "1.5"
