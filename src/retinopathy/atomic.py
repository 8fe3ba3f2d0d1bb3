"""Files written whole or not at all: a temporary file beside the target, then ``os.replace``."""
from __future__ import annotations

import contextlib
import os
import tempfile
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


def writable_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (with its parents) and check that a file can be written in it, so that a command stops
    before its work, not after it, when its output cannot be written (OSError naming the path)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass
    return folder
