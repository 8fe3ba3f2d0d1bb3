"""The ``retinopathy`` command: ``main(argv)`` dispatches to one module per subcommand."""
from __future__ import annotations

import argparse
import sys

from .. import __version__
from . import data_check, synth

COMMANDS = [synth, data_check]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retinopathy", description="Diabetic-retinopathy grading toolkit")
    parser.add_argument("--version", action="version", version=f"retinopathy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
