"""GPU benchmark, unattended: training images/s of ResNet18 and ResNet50 at 512 px, the lab's way against the
engine's defaults, and data-loader images/s alone. Run it through ``benchmarks/gpu.sh`` (the machine's own
Python and PyTorch, nothing installed, ``PYTHONPATH=src``).

Parts, each in its own process with its own time limit, the JSON rewritten after every part (and every
measurement inside a part), so a crash, a hang or a kill keeps what was measured:

``data``      a synthetic set (``--n`` images at ``--src-size`` px: the "originals") and ``retinopathy prepare``
              of it at ``--size`` px (all cores)
``loader``    loader alone, to the device: the lab's (originals, full decode, float tensors normalised in the
              workers) vs the engine's (prepared cache, uint8, pinned memory)
``<arch>``    training: the lab's loop (fp32, NCHW, originals, the lab's loader) vs ``train_one_epoch`` with
              the defaults ``retinopathy train`` picks on this device (bf16, channels_last, cudnn.benchmark,
              prepared cache, uint8, pinned memory), same batch size, both with ``--workers`` loader workers

``--dry-run``: tiny sizes (40 images at 64 px, 1 timed step each, CPU if no GPU) so that a test keeps it working.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import common

PARTS = {"data": 200.0, "loader": 90.0}  # part: time limit (s); each model's part gets --part-timeout


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_bench.json"),
                   help="results JSON (default $OUT/gpu_bench.json)")
    p.add_argument("--workdir", help="where the synthetic set and its copy go (default: a folder beside --out)")
    p.add_argument("--n", type=int, default=5000, help="synthetic images")
    p.add_argument("--src-size", type=int, default=1024, help="size of the synthetic 'originals'")
    p.add_argument("--size", type=int, default=512, help="training size and prepare --size")
    p.add_argument("--batch", type=int, default=32, help="batch size, both ways")
    p.add_argument("--archs", default="resnet18,resnet50")
    p.add_argument("--workers", type=int, default=None, help="loader workers, both ways (default: all cores)")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps first (cuDNN autotuning, start-up)")
    p.add_argument("--steps", type=int, default=200, help="timed steps at most")
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds at most, per measurement")
    p.add_argument("--part-timeout", type=float, default=110.0, help="seconds before a model's part is killed")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, to check that it runs (any device)")
    p.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    args = p.parse_args(argv)
    if args.dry_run:
        args.n, args.src_size, args.size, args.batch = 40, 64, 64, 4
        args.warmup, args.steps, args.seconds, args.workers = 1, 1, 5.0, 1 if args.workers is None else args.workers
        args.part_timeout = 120.0
    args.workers = os.cpu_count() if args.workers is None else args.workers
    args.workdir = args.workdir or str(Path(args.out).resolve().parent / "gpu_bench_data")
    return args


# ------------------------------------------------------------------------------------------- the parts
def part_data(args, save) -> None:
    from retinopathy.data.prepare import prepare

    from retinopathy.data.synth import generate
    work = Path(args.workdir)
    t = time.perf_counter()
    s = generate(work / "originals", n=args.n, size=args.src_size, seed=0, progress=False)
    save(generate_images_per_s=s["images_per_s"], generate_seconds=round(time.perf_counter() - t, 1))
    m = prepare(work / "originals", work / "cache", size=args.size, progress=False)
    save(prepare_images_per_s=m["images_per_s"], prepare_seconds=m["seconds"], prepare_workers=m["workers"],
         prepare_problems=len(m["problems"]))


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sets(args):
    import harness

    from retinopathy.data import load_catalog

    work = Path(args.workdir)
    originals = load_catalog(work / "originals", val_fraction=0.0, test_fraction=0.0)
    cache = harness.engine_dataset(load_catalog(work / "cache", val_fraction=0.0, test_fraction=0.0), args.size)
    return originals, cache


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def part_loader(args, save) -> None:
    import harness

    device = _device()
    originals, cache = _sets(args)
    for name, loader in (("lab", harness.lab_loader(originals.samples, args.size, args.batch, args.workers)),
                         ("engine", harness.engine_loader(cache, args.batch, args.workers, device))):
        timed = harness.Timed(loader, args.warmup + args.steps, args.seconds, skip=args.warmup)
        for x, _ in timed:
            x.to(device, non_blocking=True)
            _sync(device)
        save(**{f"{name}_images_per_s": round(timed.rate(), 1)})


def part_train(args, save, arch: str) -> None:
    import harness
    import torch

    device = _device()
    originals, cache = _sets(args)
    steps = args.warmup + args.steps
    # the lab's way: default cuDNN settings, fp32, NCHW
    torch.backends.cudnn.benchmark = False
    model = harness.new_model(arch, device)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    timed = harness.Timed(harness.lab_loader(originals.samples, args.size, args.batch, args.workers), steps,
                          args.seconds, skip=args.warmup)
    harness.lab_train(model, timed, device)
    save(lab_images_per_s=round(timed.rate(), 2), lab_steps=len(timed.sizes), **_memory(device, "lab"))
    del model
    # the engine's defaults on this device, as `retinopathy train` sets them up
    torch.backends.cudnn.benchmark = device.type == "cuda"
    model = harness.new_model(arch, device, state=state)
    amp, cl = harness.defaults(device, model)
    timed = harness.Timed(harness.engine_loader(cache, args.batch, args.workers, device), steps, args.seconds,
                          skip=args.warmup)
    harness.engine_train(model, timed, device, amp, cl)
    save(engine_images_per_s=round(timed.rate(), 2), engine_steps=len(timed.sizes), engine_amp=amp,
         engine_channels_last=cl, **_memory(device, "engine"))


def _memory(device, name: str) -> dict:
    import torch

    if device.type != "cuda":
        return {}
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return {f"{name}_peak_gib": round(peak, 2)}


def run_part(args) -> None:
    """In the child: run one part, rewriting its JSON after every measurement."""
    path = Path(args.workdir) / f"part_{args.part}.json"
    found: dict = {}

    def save(**kv):
        found.update(kv)
        common.write_json(found, path, args.part)

    if args.dry_run:  # one intra-op thread: a dry run checks the code paths, and shares a small CPU
        import torch

        torch.set_num_threads(1)
    t = time.perf_counter()
    if args.part == "data":
        part_data(args, save)
    elif args.part == "loader":
        part_loader(args, save)
    else:
        part_train(args, save, args.part)
    save(seconds=round(time.perf_counter() - t, 1))


# ------------------------------------------------------------------------------------------- the driver
class Stopped(Exception):
    """SIGTERM reached the driver: the overall limit of gpu.sh (``timeout``) ran out."""


def _stop(signum, frame):
    raise Stopped


def main(argv=None) -> int:
    args = get_args(argv)
    if args.part:
        run_part(args)
        return 0
    work, stamp = Path(args.workdir), Path(args.workdir) / ".gpu_bench"  # the stamp: a folder this wrote
    files = list(work.iterdir()) if work.is_dir() else []  # an earlier version's folder has no stamp: its own
    earlier = any(f.match("part_*.json") for f in files) and all(  # files only, part files among them
        f.name in ("originals", "cache") or f.match("part_*.json") for f in files)
    if files and not stamp.exists() and not earlier:
        print(f"error: --workdir {work} holds files this benchmark did not write (it replaces its originals/ and "
              "cache/); give a new or empty folder", file=sys.stderr)
        return 2
    started = time.perf_counter()
    results = {"bench": "gpu", "dry_run": args.dry_run, "complete": False,
               "settings": {k: v for k, v in vars(args).items() if k not in ("part",)}, "parts": {}}
    try:
        results["machine"] = common.machine()
    except Exception as e:  # noqa: BLE001 - unattended: note it and go on
        results["machine"] = {"error": repr(e)}
    if not args.dry_run and not results["machine"].get("cuda"):
        print("error: no CUDA device: this benchmark measures a GPU (--dry-run checks its code paths on the CPU)",
              file=sys.stderr)
        return 2
    for old in (work / "originals", work / "cache"):  # a fresh set, so that no earlier run's files count
        shutil.rmtree(old, ignore_errors=True)
    for old in work.glob("part_*.json"):
        old.unlink()
    work.mkdir(parents=True, exist_ok=True)
    stamp.touch()
    common.write_json(results, args.out, "gpu")
    archs = [a for a in args.archs.split(",") if a]
    child = [sys.executable, os.path.abspath(__file__)] + [a for a in (argv or sys.argv[1:])]
    signal.signal(signal.SIGTERM, _stop)  # gpu.sh's overall limit: keep what the running part measured
    stopped = False
    for part in [*PARTS, *archs]:
        t = time.perf_counter()
        status = "ok"
        limit = args.part_timeout if args.dry_run else PARTS.get(part, args.part_timeout)
        try:
            out = subprocess.run([*child, "--part", part], check=False, capture_output=True, text=True,
                                 timeout=limit)
            if out.returncode != 0:
                status = f"exit {out.returncode}: {(out.stderr or out.stdout)[-1500:]}"
        except subprocess.TimeoutExpired:
            status = f"killed after {limit:.0f} s (the part's time limit)"
        except Stopped:  # subprocess.run has killed the part
            status, stopped = "stopped by the overall time limit (GPU_BENCH_LIMIT) while running", True
        except Exception:  # noqa: BLE001
            status = traceback.format_exc()[-1500:]
        part_file = Path(args.workdir) / f"part_{part}.json"
        found = json.loads(part_file.read_text()) if part_file.exists() else {}
        found.update(status=status, wall_seconds=round(time.perf_counter() - t, 1))
        if found.get("lab_images_per_s") and found.get("engine_images_per_s"):
            found["speedup_vs_lab"] = round(found["engine_images_per_s"] / found["lab_images_per_s"], 2)
        results["parts"][part] = found
        results["seconds"] = round(time.perf_counter() - started, 1)
        common.write_json(results, args.out, "gpu")
        print(f"{part}: {json.dumps(found)}", flush=True)
        if part == "data" and status != "ok" or stopped:
            print("stopped: the overall time limit" if stopped else "no data: skipping the other parts",
                  file=sys.stderr)
            break
    results["complete"] = all(p.get("status") == "ok" for p in results["parts"].values()) and \
        len(results["parts"]) == len(PARTS) + len(archs)
    common.write_json(results, args.out, "gpu")
    print(f"wrote {args.out}")
    return 0 if results["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
