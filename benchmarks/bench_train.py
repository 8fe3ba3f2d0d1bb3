"""Training throughput on the CPU, images/s: ResNet18 at 224 px, batch 16, on a synthetic set (512 px JPEGs),
the lab's loop (fp32, default memory format, float tensors normalised in the loader workers, torchvision
``ToTensor`` + ``Normalize``) against ``retinopathy train``'s engine with the defaults it picks on this device
(``engine_settings``; ``make_loader``; ``train_one_epoch``), same batch size, optimiser, augmentation (flips)
and loader workers (as many as cores, the train command's default).

Also measured, to choose the engine's CPU defaults: bf16 autocast, channels_last, loader workers against
intra-op threads, the prepared cache, and (``--compile``) torch.compile. And the loss curve: a few epochs on
a small set at 64 px from the same initial weights, lab loop against engine defaults, must keep its shape.
"""
from __future__ import annotations

import os
import tempfile
import time

import common


def run(rounds: int = 2, steps: int = 4, batch: int = 16, size: int = 224, compile_: bool = False,
        ablations: bool = True, curve_epochs: int = 6) -> dict:
    import torch

    import harness
    from retinopathy.data import load_catalog
    from retinopathy.data.prepare import prepare

    generate = common.synth_generate()
    cores = os.cpu_count() or 1
    default_threads = torch.get_num_threads()
    device = "cpu"
    n_images = batch * (steps + 1)
    rows, extra = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        generate(f"{tmp}/synth", n=max(n_images, 3 * batch), size=512, seed=0, balanced=True, progress=False)
        prepare(f"{tmp}/synth", f"{tmp}/cache", size=size, progress=False)
        catalog = load_catalog(f"{tmp}/synth", val_fraction=0.0, test_fraction=0.0)
        cache = load_catalog(f"{tmp}/cache", val_fraction=0.0, test_fraction=0.0)
        state = harness.new_model("resnet18", device).state_dict()
        amp0, cl0 = harness.defaults(device, harness.new_model("resnet18", device, state=state))

        def lab(workers=cores, threads=default_threads):
            torch.set_num_threads(threads)
            timed = harness.Timed(harness.lab_loader(catalog.samples, size, batch, workers), steps + 1)
            harness.lab_train(harness.new_model("resnet18", device, state=state), timed, device)
            return timed.rate()

        def engine(amp=amp0, cl=cl0, workers=cores, threads=default_threads, data=catalog, compiled=False):
            torch.set_num_threads(threads)
            ds = harness.engine_dataset(data, size)
            timed = harness.Timed(harness.engine_loader(ds, batch, workers, torch.device(device)), steps + 1)
            model = harness.new_model("resnet18", device, state=state)
            runner = torch.compile(model) if compiled else model
            if compiled:  # the first steps compile; run them before timing
                warm = harness.Timed(harness.engine_loader(ds, batch, 0, torch.device(device)), 2)
                harness.engine_train(runner, warm, device, amp, cl)
            harness.engine_train(runner, timed, device, amp, cl)
            return timed.rate()

        # the comparison: interleaved rounds, best of each
        best = {"lab": 0.0, "engine": 0.0}
        for _ in range(rounds):
            best["lab"] = max(best["lab"], lab())
            best["engine"] = max(best["engine"], engine())
        w, t = cores, default_threads
        rows.append({"config": "lab loop (fp32, NCHW, float normalised in workers)", "amp": "none",
                     "channels_last": False, "workers": w, "threads": t, "images_per_s": best["lab"]})
        rows.append({"config": "engine defaults", "amp": amp0, "channels_last": cl0, "workers": w, "threads": t,
                     "images_per_s": best["engine"]})
        if ablations:
            configs = [
                ("engine fp32 NCHW (uint8 + draft only)", dict(amp="none", cl=False)),
                ("engine + bf16 autocast", dict(amp="bf16", cl=False)),
                ("engine + channels_last", dict(amp="none", cl=True)),
                ("engine + bf16 + channels_last", dict(amp="bf16", cl=True)),
                ("engine + bf16, prepared cache", dict(amp="bf16", cl=False, data=cache)),
            ]
            grid = [(0, cores), (1, max(1, cores - 1)), (1, cores), (cores, 1), (cores, cores)]
            configs += [(f"engine + bf16, {wk} workers, {th} threads", dict(amp="bf16", cl=False, workers=wk,
                                                                             threads=th)) for wk, th in grid]
            if compile_:
                configs.append(("engine + bf16 + torch.compile", dict(amp="bf16", cl=False, compiled=True)))
            for name, kw in configs:
                try:
                    r = engine(**kw)
                except Exception as e:  # e.g. torch.compile without a working compiler: report, go on
                    extra.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"[:500]
                    continue
                rows.append({"config": name, "amp": kw["amp"], "channels_last": kw["cl"],
                             "workers": kw.get("workers", cores), "threads": kw.get("threads", default_threads),
                             "images_per_s": r})
        torch.set_num_threads(default_threads)
        for r in rows:
            r["speedup_vs_lab"] = r["images_per_s"] / best["lab"]
        if curve_epochs:
            extra["loss_curve"] = loss_curve(catalog, curve_epochs)
    ratio = best["engine"] / best["lab"]
    return {"arch": "resnet18", "size": size, "batch": batch, "timed_steps": steps, "rounds": rounds,
            "cores": cores, "engine_defaults": {"amp": amp0, "channels_last": cl0, "workers": cores,
                                                "threads": default_threads},
            "rows": rows, "train_speedup_vs_lab_cpu": ratio,
            "best": max(rows, key=lambda r: r["images_per_s"]),
            "targets": {"train_speedup_vs_lab_cpu >= 1.5": ratio >= 1.5}, **extra}


def loss_curve(catalog, epochs: int, size: int = 64, batch: int = 16, lr: float = 0.01) -> dict:
    """Mean training loss per epoch on the same 48 images from the same weights: lab loop vs engine defaults."""
    import torch

    import harness
    from retinopathy.data import Catalog

    t = time.perf_counter()
    samples = catalog.samples[:48]
    subset = Catalog(catalog.format, catalog.root, catalog.labels, catalog.image_root, samples, [])
    ds = harness.engine_dataset(subset, size)
    state = harness.new_model("resnet18", "cpu", seed=1).state_dict()
    lab_model = harness.new_model("resnet18", "cpu", state=state)
    eng_model = harness.new_model("resnet18", "cpu", state=state)
    amp, cl = harness.defaults("cpu", eng_model)
    lab_opt, eng_opt = harness.sgd(lab_model, lr), harness.sgd(eng_model, lr)
    lab, eng = [], []
    for e in range(epochs):  # the same shuffling in both (seed e); flips differ
        lab.append(harness.lab_train(lab_model, harness.lab_loader(samples, size, batch, 0, seed=e), "cpu", lab_opt))
        eng.append(harness.engine_train(eng_model, harness.engine_loader(ds, batch, 0, torch.device("cpu"), seed=e),
                                        "cpu", amp, cl, eng_opt)["loss"])
    rel = [abs(a - b) / a for a, b in zip(lab, eng)]
    return {"epochs": epochs, "images": len(samples), "size": size, "lr": lr, "engine_amp": amp,
            "engine_channels_last": cl, "lab": [round(v, 4) for v in lab], "engine": [round(v, 4) for v in eng],
            "max_relative_difference": round(max(rel), 4),
            "both_fall": bool(lab[-1] < lab[0] and eng[-1] < eng[0]), "seconds": round(time.perf_counter() - t, 1)}


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on a CPU)")
    p.add_argument("--no-ablations", action="store_true", help="only lab vs engine defaults")
    args = p.parse_args()
    res = {"bench": "train", "machine": common.machine(),
           **run(rounds=1 if args.quick else 2, steps=3 if args.quick else 4, compile_=args.compile,
                 ablations=not args.no_ablations, curve_epochs=3 if args.quick else 6)}
    print(common.table(res["rows"], ["config", "amp", "channels_last", "workers", "threads", "images_per_s",
                                     "speedup_vs_lab"], "training ResNet18 at 224 px on the CPU, batch 16"))
    if "loss_curve" in res:
        c = res["loss_curve"]
        print(f"loss per epoch at {c['size']} px on {c['images']} images: lab {c['lab']}, engine {c['engine']} "
              f"(max relative difference {c['max_relative_difference']})")
    print(f"targets: {res['targets']}")
    print("wrote", common.write_json(res, args.json, "train"))


if __name__ == "__main__":
    main()
