"""Files written whole or not at all: a temporary file beside the target, then ``os.replace``."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def replacing(path: str | os.PathLike, mode: str = "w", newline: str | None = None):
    """Yield a file opened for writing beside ``path`` that replaces ``path`` when the block succeeds and is
    removed when it fails: readers see the old file or the new one, never a part (text is UTF-8)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": newline})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with replacing(path) as f:
        f.write(text)
