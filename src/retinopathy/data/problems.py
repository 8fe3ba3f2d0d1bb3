"""Problems found in a dataset, and the error that carries them."""
from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..atomic import replacing
from ..errors import RetinopathyError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where it is and what to do about it."""

    kind: str  # e.g. "missing-image", "bad-label", "bad-image", "length-mismatch"
    file: str
    line: int | None
    message: str
    image: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"

    def to_dict(self) -> dict:
        return asdict(self)

    def listed(self) -> str:
        """The problem as a line of a list: ``  [kind] file:line: message``."""
        return f"  [{self.kind}] {self}"

    @classmethod
    def bad_image(cls, sample, reason) -> Problem:
        """The image of ``sample`` (a labels row) cannot be used, for ``reason``."""
        return cls("bad-image", sample.source, sample.line, f"{sample.image}: {reason}", sample.image)


def write_skipped(path: str | os.PathLike, problems: list[Problem]) -> None:
    """List what ``--skip-bad`` dropped in ``path`` (CSV: kind, file, line, message, image), or remove ``path``
    when nothing was, so that it never lists another time's."""
    if not problems:
        Path(path).unlink(missing_ok=True)
        return
    with replacing(path, newline="") as f:
        w = csv.DictWriter(f, [field.name for field in fields(Problem)], lineterminator="\n")
        w.writeheader()
        w.writerows(p.to_dict() for p in problems)


def skipped_note(problems: list[Problem], where: str) -> str:
    """What ``--skip-bad`` dropped, in one line: how many, of which kinds, and where each one is listed."""
    kinds = Counter(p.kind for p in problems)
    return (f"--skip-bad dropped {len(problems):,} labelled row(s) or image(s) ("
            + ", ".join(f"{kind} {n:,}" for kind, n in kinds.most_common()) + f"); each is listed in {where}")


class DataError(RetinopathyError, ValueError):
    """The dataset cannot be used as it is. Holds every problem found."""

    SHOWN = 5  # problems named in the message; all are in ``problems``

    def __init__(self, problems: list[Problem], hint: str = ""):
        self.problems, self.hint = list(problems), hint
        lines = [str(p) for p in self.problems[:self.SHOWN]]
        more = len(self.problems) - self.SHOWN
        if more > 0:
            lines.append(f"... and {more:,} more")
        msg = f"{len(self.problems):,} problem(s) in the dataset:\n  " + "\n  ".join(lines)
        if hint:
            msg += f"\n{hint}"
        super().__init__(msg)

    def __reduce__(self):  # pickled (from a DataLoader worker, say) with its problems, not its message
        return type(self), (self.problems, self.hint)


def refuse_misaligned(problems: list[Problem]) -> None:
    """Lab CSVs of different lengths: every grade after the gap may belong to another image, so nothing can be
    skipped safely (not even with --skip-bad)."""
    misaligned = [p for p in problems if p.kind == "length-mismatch"]
    if misaligned:
        raise DataError(misaligned, hint="Fix the files: --skip-bad drops bad rows, not files out of step.")
