"""Decode + preprocess, images/s on one core, on the real full-size photographs (fundus-real, 35 JPEGs up to
4928x3264), to a 512 px training tensor:

* lab:       ``Image.open(p).convert('RGB')``, ``Resize(512)``, ``CenterCrop(512)``, ``ToTensor``, ``Normalize``
* originals: ``FundusDataset(...)[i]`` with ``uint8=True`` (draft decode at reduced scale, same geometry)
* cache:     the same ``FundusDataset`` on ``retinopathy prepare --size 512`` of the same photographs
* fov rows:  the ``fov`` preset on the originals and on a ``prepare --crop fov`` copy (no lab counterpart)
* memory fov: the ``fov`` preset on the originals with ``cache=True`` (``--cache-images``): decoded and cropped
             once when the dataset is made (timed separately), so an item is only the tensor conversion

One process, one intra-op thread; the methods are interleaved and each keeps its best of several rounds.
"""
from __future__ import annotations

import tempfile
import time

import common


def run(rounds: int = 3) -> dict:
    import torch
    from PIL import Image
    from torchvision import transforms as T

    from retinopathy.data import FundusDataset
    from retinopathy.data.prepare import prepare
    from retinopathy.data.transforms import LAB_MEAN, LAB_STD

    torch.set_num_threads(1)
    src = common.real_photos()
    lab_tf = T.Compose([T.Resize(512), T.CenterCrop(512), T.ToTensor(), T.Normalize(LAB_MEAN, LAB_STD)])
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as tmp:
        t = time.perf_counter()
        prepare(src, f"{tmp}/cache", size=512, progress=False)
        prepare(src, f"{tmp}/fov", size=512, crop="fov", progress=False)
        prepare_s = time.perf_counter() - t
        sets = {
            "originals": FundusDataset(src, "all", image_size=512, train=False, uint8=True),
            "cache": FundusDataset(f"{tmp}/cache", "all", image_size=512, train=False, uint8=True),
            "originals fov": FundusDataset(src, "all", image_size=512, preprocess="fov", train=False, uint8=True),
            "cache fov": FundusDataset(f"{tmp}/fov", "all", image_size=512, preprocess="fov", train=False,
                                       uint8=True),
        }
        t = time.perf_counter()
        sets["memory fov"] = FundusDataset(src, "all", image_size=512, preprocess="fov", train=False, uint8=True,
                                           cache=True)
        memory_cache_s = time.perf_counter() - t
        paths = [s.path for s in sets["originals"].samples]
        n = len(paths)
        fns = {"lab": lambda: [lab_tf(Image.open(p).convert("RGB")) for p in paths]}
        fns.update({name: (lambda ds=ds: [ds[i] for i in range(len(ds))]) for name, ds in sets.items()})
        rates = common.best_rate(fns, n, rounds)
    lab = rates["lab"]
    rows = [{"method": name, "images_per_s": r, "ms_per_image": 1000 / r, "speedup_vs_lab": r / lab}
            for name, r in rates.items()]
    return {"images": n, "rounds": rounds, "size": 512, "threads": 1, "rows": rows,
            "decode_speedup_vs_lab": rates["originals"] / lab, "cache_speedup_vs_lab": rates["cache"] / lab,
            "fov_cache_speedup_vs_fov_originals": rates["cache fov"] / rates["originals fov"],
            "memory_cache_speedup_vs_fov_originals": rates["memory fov"] / rates["originals fov"],
            "prepare_seconds_both_copies": round(prepare_s, 2), "memory_cache_seconds": round(memory_cache_s, 2),
            "targets": {"decode_speedup_vs_lab >= 5": rates["originals"] / lab >= 5,
                        "cache_speedup_vs_lab >= 30": rates["cache"] / lab >= 30}}


def main() -> None:
    args = common.parser(__doc__.split("\n\n")[0]).parse_args()
    res = {"bench": "decode", "machine": common.machine(), **run(rounds=2 if args.quick else 3)}
    print(common.table(res["rows"], ["method", "images_per_s", "ms_per_image", "speedup_vs_lab"],
                       f"decode + preprocess to a 512 px tensor, 1 core, {res['images']} real photographs"))
    print(f"targets: {res['targets']}")
    print("wrote", common.write_json(res, args.json, "decode"))


if __name__ == "__main__":
    main()
