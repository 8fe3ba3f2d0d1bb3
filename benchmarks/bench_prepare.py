"""``retinopathy prepare`` throughput, images/s, on the real full-size photographs (fundus-real, each copied 4
times under other names: 140 images) at 512 px, with 1 and with all worker processes (2 on the reference
machine): the scaling from 1 to N workers.

The lab has no such step (it decodes the full photograph every epoch); its cost per image is given for
reference: one ``prepare`` pass costs about as much as decoding the originals the lab's way once or twice,
after which every epoch reads the small copy.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import common


def copied_set(src: Path, dst: Path, copies: int) -> int:
    """A Kaggle-format set of ``copies`` x the photographs of ``src``, copied (links to one file are one image to
    the catalog, which drops the repeats as duplicates); returns how many."""
    dst.mkdir()
    rows = (src / "labels.csv").read_text().split()[1:]
    lines = ["image,level"]
    for k in range(copies):
        for row in rows:
            name, level = row.split(",")
            shutil.copyfile(src / "images" / f"{name}.jpeg", dst / f"{name}_{k}.jpeg")
            lines.append(f"{name}_{k},{level}")
    (dst / "trainLabels.csv").write_text("\n".join(lines) + "\n")
    return len(lines) - 1


def run(rounds: int = 2, copies: int = 4) -> dict:
    from retinopathy.data.prepare import prepare

    cores = os.cpu_count() or 1
    counts = sorted({1, min(2, cores), cores})
    best = {w: 0.0 for w in counts}
    n = 0
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        src = Path(tmp) / "src"
        images = copied_set(common.real_photos(), src, copies)
        for r in range(rounds):
            for w in counts:
                m = prepare(src, f"{tmp}/{r}_{w}", size=512, workers=w, progress=False)
                n = m["counts"]["written"]
                if n != images or m["problems"]:
                    raise SystemExit(f"prepare wrote {n} of {images} images ({len(m['problems'])} problems, e.g. "
                                     f"{m['problems'][:1]}): the measurement would not be of {images} images")
                best[w] = max(best[w], n / m["seconds"])
    rows = [{"workers": w, "images_per_s": best[w], "speedup_vs_1_worker": best[w] / best[1],
             "efficiency": best[w] / best[1] / w} for w in counts]
    two = min(2, cores)
    return {"images": n, "size": 512, "rounds": rounds, "cores": cores, "rows": rows,
            "prepare_images_per_s": best[cores], "prepare_images_per_s_1_worker": best[1],
            "prepare_scaling_1_to_2": best[two] / best[1]}


def main() -> None:
    args = common.parser(__doc__.split("\n\n")[0]).parse_args()
    res = {"bench": "prepare", "machine": common.machine(), **run(rounds=1 if args.quick else 2,
                                                                  copies=2 if args.quick else 4)}
    print(common.table(res["rows"], ["workers", "images_per_s", "speedup_vs_1_worker", "efficiency"],
                       f"prepare {res['images']} real photographs at 512 px"))
    print("wrote", common.write_json(res, args.json, "prepare"))


if __name__ == "__main__":
    main()
