"""The benchmarks cannot rot: ``benchmarks/gpu.sh --dry-run`` runs end to end on the CPU (tiny sizes), and
the summary of ``run_all.py`` prints whatever ran."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cpu_defaults() -> tuple[str, bool]:
    """(amp, channels_last) that ``retinopathy train`` picks on the CPU for a ResNet."""
    import torch

    from retinopathy.models import build_model
    from retinopathy.training.engine import engine_settings

    model, _ = build_model("resnet18", 5)
    return engine_settings(torch.device("cpu"), model)


def test_gpu_bench_dry_run_keeps_every_part_that_ran(tmp_path):
    """End to end on the CPU; a part that cannot run (an unknown model, given before the ResNet) is recorded with
    its error, the parts after it still run, the JSON is written and the exit status says it is incomplete.
    Relative paths are the current folder's, not the repository's."""
    out = tmp_path / "res" / "gpu_bench.json"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), "res/gpu_bench.json", "--dry-run", "--archs",
                           "no_such_model,resnet18", "--workdir", "work"], check=False, cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert not res["complete"] and res["dry_run"] and res["settings"]["n"] == 40
    assert (tmp_path / "work").is_dir() and not (REPO / "res").exists() and not (REPO / "work").exists()
    parts = res["parts"]
    assert list(parts) == ["data", "loader", "no_such_model", "resnet18"]
    assert "not a torchvision classification model (unknown)" in parts.pop("no_such_model")["status"]
    assert all(p["status"] == "ok" for p in parts.values()), parts
    assert parts["data"]["prepare_problems"] == 0 and parts["data"]["prepare_images_per_s"] > 0
    assert parts["loader"]["lab_images_per_s"] > 0 and parts["loader"]["engine_images_per_s"] > 0
    p = parts["resnet18"]
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


def test_gpu_bench_refuses_a_cpu_run_and_a_workdir_it_did_not_write(tmp_path):
    """Without --dry-run, a machine with no CUDA device is refused (a CPU run reported as the GPU benchmark); a
    --workdir holding someone's files is refused, not emptied (it replaces its originals/ and cache/)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO / "src")}
    script = [sys.executable, str(REPO / "benchmarks" / "gpu_bench.py"), "--out", str(tmp_path / "r.json")]
    proc = subprocess.run([*script, "--workdir", str(tmp_path / "w")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2 and "error: no CUDA device" in proc.stderr, proc.stderr[-2000:]
    mine = tmp_path / "mine" / "originals" / "my_photo.jpeg"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"a photograph of someone's")
    proc = subprocess.run([*script, "--dry-run", "--archs", "", "--workdir", str(tmp_path / "mine")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "holds files this benchmark did not write" in proc.stderr, proc.stderr[-2000:]
    assert mine.read_bytes() == b"a photograph of someone's"


@pytest.mark.slow
def test_gpu_bench_stopped_by_the_overall_limit_keeps_the_running_parts_numbers(tmp_path):
    """gpu.sh's `timeout` sends SIGTERM to the driver: what the running part measured so far is merged into the
    results (it was left in the part's own file)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO / "src")}
    out, work = tmp_path / "r.json", tmp_path / "w"
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "gpu_bench.py"), "--out", str(out),
                             "--dry-run", "--archs", "resnet18", "--workdir", str(work)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (work / "part_resnet18.json").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before the part measured anything"
    measured = json.loads((work / "part_resnet18.json").read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 1 and "stopped: the overall time limit" in proc.stderr.read()
    part = json.loads(out.read_text())["parts"]["resnet18"]
    assert part["status"].startswith("stopped by the overall time limit") and measured.items() <= part.items()
