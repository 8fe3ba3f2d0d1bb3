"""``retinopathy data check DATA``."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from ..atomic import special, write_json
from ..data import DataError, load_catalog
from ..data.check import check_catalog, format_report
from ..outputs import check_output_file, refuse_replacing
from .common import add_data_arguments, at_least, catalog_options, show_defaults


def add_parser(sub, text: str) -> None:
    data = sub.add_parser("data", help=text, description=text)
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="check")
    text = "read a dataset, decode every image, report counts, sizes and problems"
    p = dsub.add_parser("check", help=text, description=text)
    p.add_argument("data", metavar="DATA", help="dataset folder")
    add_data_arguments(p)
    p.add_argument("--stats", action="store_true", help="also compute per-channel mean and std")
    p.add_argument("--no-images", action="store_true", help="check the labels only (no image files needed)")
    p.add_argument("--json", default="data_check.json",
                   help="where to write the report as JSON (default data_check.json)")
    p.add_argument("--workers", type=at_least(0), default=None,
                   help="decoding threads (default: all cores; 0 or 1: one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    show_defaults(p)


def run(args) -> int:
    check_output_file(args.json, "--json", "data_check.json")  # before the work, not after it
    try:
        catalog = load_catalog(args.data, resolve=not args.no_images, **catalog_options(args))
    except DataError as e:  # exit 2, and the report says so: an earlier check's report would say "0 problems"
        if _a_report_or_nothing(args.json):
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            write_json(args.json, {"data": str(args.data), "readable": False, "error": str(e),
                                   "problems": [p.to_dict() for p in e.problems]})
        raise
    refuse_replacing(args.json, "--json", [*catalog.labels, *(s.path for s in catalog.samples), args.split_file])
    if not _a_report_or_nothing(args.json):  # before the work, too
        raise FileExistsError(errno.EEXIST, "--json would replace a file that is not a data check report; choose "
                              "another file (or remove that one)", args.json)
    report = check_catalog(catalog, stats=args.stats, workers=args.workers, progress=not args.quiet,
                           images=not args.no_images)
    print(format_report(report))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, report)
    print(f"\nreport written to {args.json}")
    return 1 if report["problems"] else 0


def _a_report_or_nothing(path: str) -> bool:
    """Whether ``path`` is free (nothing there, an empty file, a device or pipe such as /dev/stdout, which reading
    would block on), or holds an earlier check's report (never a file of another kind)."""
    if special(Path(path)) or os.path.isfile(path) and os.path.getsize(path) == 0:
        return True
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        return isinstance(report, dict) and ("per_grade" in report or "readable" in report)  # not a manifest
    except FileNotFoundError:
        return True
    except (OSError, ValueError, TypeError):
        return False
