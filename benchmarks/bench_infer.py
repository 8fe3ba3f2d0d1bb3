"""Inference throughput on the CPU, images/s: ``retinopathy evaluate``'s ``predict_dataset`` (uint8 batches,
normalised in the model's process, the engine's settings for the device) against the lab's evaluation loop
(full decode, float tensors normalised in the workers, fp32), ResNet18 at 224 px, batch 32, on a synthetic
set of 512 px JPEGs; also with bf16 autocast and from the prepared cache, and the model's fp32 forward pass
alone in NCHW and channels_last (the format ``evaluate`` and ``predict`` use on the CPU). Whole calls are timed (loader
start-up included, for both), interleaved, best of the rounds. The headline is per core (1 loader worker,
1 intra-op thread, as in bench_train); the train command's defaults (all cores each) are reported too.
"""
from __future__ import annotations

import os
import tempfile
import time

import common


def run(rounds: int = 2, n: int = 128, size: int = 224, batch: int = 32) -> dict:
    import harness
    import torch

    from retinopathy.data import load_catalog
    from retinopathy.data.prepare import prepare
    from retinopathy.evaluation.evaluate import predict_dataset
    from retinopathy.models import make_objective

    from retinopathy.data.synth import generate
    cores = os.cpu_count() or 1
    objective = make_objective("classification")
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
        generate(f"{tmp}/synth", n=n, size=512, seed=0, progress=False)
        prepare(f"{tmp}/synth", f"{tmp}/cache", size=size, progress=False)
        catalog = load_catalog(f"{tmp}/synth", val_fraction=0.0, test_fraction=0.0)
        ds = harness.engine_dataset(catalog, size, split="all", augment="none")
        cache = harness.engine_dataset(load_catalog(f"{tmp}/cache", val_fraction=0.0, test_fraction=0.0), size,
                                       split="all", augment="none")
        model = harness.new_model("resnet18", "cpu").eval()
        state = model.state_dict()
        amp0, cl0 = harness.defaults("cpu", model)

        def engine(data, amp, workers):
            m = harness.new_model("resnet18", "cpu", state=state)
            predict_dataset(m, objective, data, batch_size=batch, workers=workers, device="cpu", amp=amp,
                            progress=False)

        x = torch.randn(batch, 3, size, size)  # the model alone, fp32: what channels_last buys without bf16
        layouts = {cl: (harness.new_model("resnet18", "cpu", state=state).eval().to(memory_format=fmt),
                        x.contiguous(memory_format=fmt))
                   for cl, fmt in ((False, torch.contiguous_format), (True, torch.channels_last))}

        @torch.inference_mode()
        def forward(channels_last):
            m, xb = layouts[channels_last]
            for _ in range(n // batch):
                m(xb)

        def lab(workers):
            loader = harness.lab_loader(catalog.samples, size, batch, workers, train=False)
            harness.lab_predict(harness.new_model("resnet18", "cpu", state=state), loader, "cpu")

        threads = torch.get_num_threads()
        t = time.perf_counter()
        torch.set_num_threads(1)  # per core, as bench_train: 1 loader worker, 1 intra-op thread
        per_core = common.best_rate({"lab loop (fp32, float normalised in workers)": lambda: lab(1),
                                     "predict_dataset, --amp auto (bf16 where native)": lambda: engine(ds, "auto", 1),
                                     "predict_dataset, bf16": lambda: engine(ds, "bf16", 1),
                                     "predict_dataset, prepared cache": lambda: engine(cache, "auto", 1),
                                     "model forward alone, fp32 NCHW": lambda: forward(False),
                                     "model forward alone, fp32 channels_last": lambda: forward(True)}, n, rounds)
        torch.set_num_threads(threads)
        all_cores = common.best_rate({
            "lab loop, default workers and threads": lambda: lab(cores),
            "predict_dataset, --amp auto, default workers and threads": lambda: engine(ds, "auto", cores)}, n, rounds)
        seconds = time.perf_counter() - t
    lab_rate = per_core["lab loop (fp32, float normalised in workers)"]
    rows = [{"config": k, "workers": 1, "threads": 1, "images_per_s": v, "speedup_vs_lab": v / lab_rate}
            for k, v in per_core.items()]
    lab_all = all_cores["lab loop, default workers and threads"]
    rows += [{"config": k, "workers": cores, "threads": threads, "images_per_s": v, "speedup_vs_lab": v / lab_all}
             for k, v in all_cores.items()]
    return {"arch": "resnet18", "size": size, "batch": batch, "images": n, "rounds": rounds, "workers": cores,
            "engine_defaults": {"amp": amp0, "channels_last": cl0}, "rows": rows, "seconds": round(seconds, 1),
            "headline": "1 loader worker and 1 intra-op thread each (per core)",
            "infer_speedup_vs_lab_cpu": per_core["predict_dataset, --amp auto (bf16 where native)"] / lab_rate,
            "infer_speedup_vs_lab_cpu_default_threads":
                all_cores["predict_dataset, --amp auto, default workers and threads"] / lab_all,
            "note": "evaluate and predict grade in fp32 unless --amp auto/bf16 is given (the fp32 rows: the lab "
                    "loop's rate)"}


def main() -> None:
    args = common.parser(__doc__.split("\n\n")[0]).parse_args()
    res = {"bench": "infer", "machine": common.machine(), **run(rounds=1 if args.quick else 2)}
    print(common.table(res["rows"], ["config", "workers", "threads", "images_per_s", "speedup_vs_lab"],
                       f"inference, ResNet18 at {res['size']} px, batch {res['batch']}, {res['images']} images"))
    print("wrote", common.write_json(res, args.json, "infer"))


if __name__ == "__main__":
    main()
