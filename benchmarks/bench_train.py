"""Training throughput on the CPU, images/s: ResNet18 at 224 px, batch 16, on a synthetic set (512 px JPEGs),
the lab's loop (fp32, default memory format, float tensors normalised in the loader workers, torchvision
``ToTensor`` + ``Normalize``) against ``retinopathy train``'s engine with the settings it picks on this device
(``engine_settings``; ``make_loader``; ``train_one_epoch``), same batch size, optimiser and augmentation (flips).

The headline ratio is per core: one loader worker and one intra-op thread for both. On a small machine
shared with other work, several intra-op threads stall each other whenever another process holds a core
(OpenMP waits at every layer), and then nothing else matters; per core, the ratio measures the engine. The
same comparison with the train command's default workers and threads (all cores each) is reported too.

Also measured, to choose the engine's CPU defaults: bf16 autocast with channels_last, the prepared cache,
0 loader workers, (``--compile``) torch.compile, and the model step alone (no loader) for fp32/bf16 x
NCHW/channels_last x 1/all threads. And the loss curve: a few epochs on a small set at 64 px from the same
initial weights, lab loop against engine defaults and against bf16 + channels_last, must keep its shape.
"""
from __future__ import annotations

import os
import tempfile
import time

import common


def run(rounds: int = 2, steps: int = 4, batch: int = 16, size: int = 224, compile_: bool = False,
        ablations: bool = True, curve_epochs: int = 6) -> dict:
    import harness
    import torch

    from retinopathy.data import load_catalog
    from retinopathy.data.prepare import prepare

    from retinopathy.data.synth import generate
    cores = os.cpu_count() or 1
    threads = torch.get_num_threads()
    device = "cpu"
    rows, extra = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        generate(f"{tmp}/synth", n=batch * (steps + 1), size=512, seed=0, balanced=True, progress=False)
        prepare(f"{tmp}/synth", f"{tmp}/cache", size=size, progress=False)
        catalog = load_catalog(f"{tmp}/synth", val_fraction=0.0, test_fraction=0.0)
        cache = load_catalog(f"{tmp}/cache", val_fraction=0.0, test_fraction=0.0)
        state = harness.new_model("resnet18", device).state_dict()
        amp0, cl0 = harness.defaults(device, harness.new_model("resnet18", device, state=state))

        def lab(workers=cores, th=threads):
            torch.set_num_threads(th)
            timed = harness.Timed(harness.lab_loader(catalog.samples, size, batch, workers), steps + 1)
            harness.lab_train(harness.new_model("resnet18", device, state=state), timed, device)
            return timed.rate()

        def engine(amp=amp0, cl=cl0, workers=cores, th=threads, data=catalog, compiled=False):
            torch.set_num_threads(th)
            ds = harness.engine_dataset(data, size)
            timed = harness.Timed(harness.engine_loader(ds, batch, workers, torch.device(device)), steps + 1)
            model = harness.new_model("resnet18", device, state=state)
            runner = torch.compile(model) if compiled else model
            if compiled:  # compiling happens in the first steps: run them before timing
                warm = harness.Timed(harness.engine_loader(ds, batch, 0, torch.device(device)), 2)
                harness.engine_train(runner, warm, device, amp, cl)
            harness.engine_train(runner, timed, device, amp, cl)
            return timed.rate()

        def row(name, rate, amp, cl, workers=cores, th=threads, data="originals"):
            rows.append({"config": name, "amp": amp, "channels_last": cl, "workers": workers, "threads": th,
                         "data": data, "images_per_s": rate})

        one = dict(workers=1, th=1)  # per core: one loader worker, one intra-op thread
        best = {"lab": 0.0, "engine": 0.0}  # the headline: interleaved rounds, best of each
        for _ in range(rounds):
            best["lab"] = max(best["lab"], lab(**one))
            best["engine"] = max(best["engine"], engine(**one))
        row("lab loop (fp32, NCHW, float normalised in workers)", best["lab"], "none", False, 1, 1)
        row("engine defaults", best["engine"], amp0, cl0, 1, 1)
        tries = [("engine fp32 NCHW (draft decode + uint8 only)", dict(amp="none", cl=False, **one), "originals"),
                 ("engine bf16 + channels_last", dict(amp="bf16", cl=True, **one), "originals"),
                 ("engine bf16 + channels_last, prepared cache", dict(amp="bf16", cl=True, data=cache, **one),
                  "cache")] if ablations else []
        if compile_:
            tries.append(("engine bf16 + channels_last + torch.compile", dict(amp="bf16", cl=True, compiled=True,
                                                                             **one), "originals"))
        for name, kw, data in tries:
            try:
                row(name, engine(**kw), kw["amp"], kw["cl"], kw["workers"], kw["th"], data)
            except Exception as e:  # noqa: BLE001 - e.g. torch.compile without a C++ compiler: report, go on
                extra.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"[:500]
        # the train command's defaults for workers and threads (all cores each)
        lab_all, engine_all = lab(), engine()
        row("lab loop, default workers and threads", lab_all, "none", False)
        row("engine defaults, default workers and threads", engine_all, amp0, cl0)
        extra["train_speedup_vs_lab_cpu_default_threads"] = engine_all / lab_all
        if ablations:
            if (amp0, cl0) != ("bf16", True):
                row("engine bf16 + channels_last, default workers and threads", engine(amp="bf16", cl=True),
                    "bf16", True)
            row("engine bf16 + channels_last, 0 workers, default threads", engine(amp="bf16", cl=True, workers=0),
                "bf16", True, 0)
            torch.set_num_threads(threads)
            extra["compute_only"] = compute_only(batch, size, steps=2)
        torch.set_num_threads(threads)
        for r in rows:  # against the lab's loop with the same workers and threads
            r["speedup_vs_lab"] = r["images_per_s"] / (best["lab"] if r["threads"] == 1 else lab_all)
        if curve_epochs:
            extra["loss_curve"] = loss_curve(catalog, curve_epochs)
    ratio = best["engine"] / best["lab"]
    return {"arch": "resnet18", "size": size, "batch": batch, "timed_steps": steps, "rounds": rounds,
            "cores": cores, "headline": "1 loader worker and 1 intra-op thread each (per core)",
            "engine_defaults": {"amp": amp0, "channels_last": cl0, "workers": cores, "threads": threads},
            "rows": rows, "train_speedup_vs_lab_cpu": ratio,
            "targets": {"train_speedup_vs_lab_cpu >= 1.5": ratio >= 1.5}, **extra}


def compute_only(batch: int, size: int, steps: int) -> list[dict]:
    """The model step alone (a fixed uint8 batch, no loader): fp32/bf16 x NCHW/channels_last x threads."""
    import harness
    import torch

    threads = torch.get_num_threads()
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    y = torch.randint(0, 5, (batch,))
    state = harness.new_model("resnet18", "cpu").state_dict()
    out = []
    for th in sorted({1, threads}):
        torch.set_num_threads(th)
        for amp in ("none", "bf16"):
            for cl in (False, True):
                timed = harness.Timed([(x, y)] * (steps + 1), steps + 1)
                harness.engine_train(harness.new_model("resnet18", "cpu", state=state), timed, "cpu", amp, cl)
                out.append({"threads": th, "amp": amp, "channels_last": cl, "images_per_s": round(timed.rate(), 2)})
    torch.set_num_threads(threads)
    base = next(r["images_per_s"] for r in out if r["threads"] == threads and r["amp"] == "none"
                and not r["channels_last"])
    for r in out:
        r["vs_fp32_nchw_default_threads"] = round(r["images_per_s"] / base, 2)
    return out


def loss_curve(catalog, epochs: int, size: int = 64, batch: int = 16, lr: float = 0.01) -> dict:
    """Mean training loss per epoch on the same 48 images from the same weights: the lab's loop, the engine's
    defaults, and the engine with bf16 + channels_last (one intra-op thread)."""
    import harness
    import torch

    from retinopathy.data import Catalog

    t = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core, as the headline
    samples = catalog.samples[:48]
    subset = Catalog(catalog.format, catalog.root, catalog.labels, catalog.image_root, samples, [])
    ds = harness.engine_dataset(subset, size)
    state = harness.new_model("resnet18", "cpu", seed=1).state_dict()
    lab_model = harness.new_model("resnet18", "cpu", state=state)
    eng_model = harness.new_model("resnet18", "cpu", state=state)
    bf_model = harness.new_model("resnet18", "cpu", state=state)
    amp, cl = harness.defaults("cpu", eng_model)
    opts = {k: harness.sgd(m, lr) for k, m in (("lab", lab_model), ("engine", eng_model), ("bf16", bf_model))}
    curves = {"lab": [], "engine": [], "bf16": []}
    for e in range(epochs):  # the same shuffling in all (seed e); flips differ
        curves["lab"].append(harness.lab_train(lab_model, harness.lab_loader(samples, size, batch, 0, seed=e), "cpu",
                                               opts["lab"]))
        for key, model, a, c in (("engine", eng_model, amp, cl), ("bf16", bf_model, "bf16", True)):
            loader = harness.engine_loader(ds, batch, 0, torch.device("cpu"), seed=e)
            curves[key].append(harness.engine_train(model, loader, "cpu", a, c, opts[key])["loss"])
    torch.set_num_threads(threads)
    lab = curves["lab"]
    diff = {k: round(max(abs(a - b) / a for a, b in zip(lab, v)), 4) for k, v in curves.items() if k != "lab"}
    return {"epochs": epochs, "images": len(samples), "size": size, "lr": lr,
            "engine_defaults": {"amp": amp, "channels_last": cl},
            "lab": [round(v, 4) for v in lab], "engine": [round(v, 4) for v in curves["engine"]],
            "engine_bf16_channels_last": [round(v, 4) for v in curves["bf16"]],
            "max_relative_difference": diff["engine"], "max_relative_difference_bf16": diff["bf16"],
            "all_fall": all(v[-1] < v[0] for v in curves.values()), "seconds": round(time.perf_counter() - t, 1)}


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on a CPU)")
    p.add_argument("--no-ablations", action="store_true", help="only lab vs engine defaults")
    args = p.parse_args()
    res = {"bench": "train", "machine": common.machine(),
           **run(rounds=1 if args.quick else 2, steps=3 if args.quick else 4, compile_=args.compile,
                 ablations=not args.no_ablations, curve_epochs=3 if args.quick else 6)}
    print(common.table(res["rows"], ["config", "amp", "channels_last", "workers", "threads", "data", "images_per_s",
                                     "speedup_vs_lab"], "training ResNet18 at 224 px on the CPU, batch 16"))
    if "compute_only" in res:
        print(common.table(res["compute_only"], ["threads", "amp", "channels_last", "images_per_s",
                                                 "vs_fp32_nchw_default_threads"], "model step alone (no loader)"))
    if "loss_curve" in res:
        c = res["loss_curve"]
        print(f"loss per epoch at {c['size']} px on {c['images']} images: lab {c['lab']}, engine defaults "
              f"{c['engine']}, engine bf16+channels_last {c['engine_bf16_channels_last']} (max relative "
              f"difference to lab {c['max_relative_difference']}, {c['max_relative_difference_bf16']})")
    print(f"targets: {res['targets']}")
    print("wrote", common.write_json(res, args.json, "train"))


if __name__ == "__main__":
    main()
