"""``retinopathy synth OUT``: write a synthetic fundus dataset."""
from __future__ import annotations

from .common import at_least, show_defaults


def add_parser(sub, text: str) -> None:
    p = sub.add_parser("synth", help=text, description=text)
    p.add_argument("out", metavar="OUT", help="folder to write")
    p.add_argument("--n", type=at_least(1), default=1000, help="number of images (two eyes per patient)")
    p.add_argument("--size", type=at_least(16, 8192), default=256,
                   help="image size in pixels (at most 8192: the largest fundus cameras give about 5000)")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--balanced", action="store_true", help="equal classes instead of EyePACS's mix")
    p.add_argument("--format", choices=("kaggle", "lab"), default="kaggle",
                   help="kaggle: trainLabels.csv; lab: the course lab's header-less train/test CSVs, 20 %% of each "
                        "grade's patients (by the worse eye; rounded, so a grade of one or two patients may have "
                        "none) in test")
    p.add_argument("--workers", type=at_least(0), default=None,
                   help="processes (default: all cores; 0 or 1: none, all in this process)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    show_defaults(p)


def run(args) -> int:
    from ..data.synth import generate

    s = generate(args.out, n=args.n, size=args.size, seed=args.seed, balanced=args.balanced,
                 format=args.format, workers=args.workers, progress=not args.quiet)
    print(f"wrote {s['n']} images ({args.size} px, grades {s['counts']}) to {args.out} "
          f"in {s['seconds']:.1f} s ({s['images_per_s']:.0f} images/s)")
    return 0
