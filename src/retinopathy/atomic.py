"""Files written whole or not at all: a temporary file beside the target, then ``os.replace`` (devices and pipes,
such as ``/dev/null``, are written in place)."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import stat
from pathlib import Path

from .errors import NotWritten


@contextlib.contextmanager
def replacing(path: str | os.PathLike, mode: str = "w", newline: str | None = None, durable: bool = False):
    """Yield a file opened for writing beside ``path`` that replaces ``path`` when the block succeeds and is
    removed when it fails: readers see the old file or the new one, never a part (text is UTF-8). ``durable``: the
    file, then its folder's entry, are flushed to the disk (fsync), so that a power cut leaves one or the other too."""
    path = Path(path)
    kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": newline}
    if special(path):  # /dev/null, /dev/stdout, a pipe: written in place (a replace would put a file there)
        with naming(path), open(path, mode, **kwargs) as f:
            yield f
        return
    tmp = sibling(path, f".tmp{os.getpid()}", ".")
    try:
        with naming(path), open(tmp, mode, **kwargs) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            sync_folder(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries to the disk (a rename in it); where a file system cannot, nothing."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


ROOM = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def out_of_room(e: BaseException) -> OSError | None:
    """The OSError of a full disk (or quota, or file-size limit) that ``e`` is, or was raised while handling
    (``torch.save``'s zip writer reports a failed write as a RuntimeError)."""
    cause = e if isinstance(e, OSError) else e.__context__
    return cause if isinstance(cause, OSError) and cause.errno in ROOM else None


@contextlib.contextmanager
def naming(path: str | os.PathLike):
    """A write in the block that fails for want of room raises :class:`NotWritten` naming ``path`` (the OSError
    of a failed write names no file, or a temporary one)."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        cause = out_of_room(e)
        if cause is None or isinstance(e, NotWritten) and e.filename == str(path):
            raise
        raise NotWritten(cause.errno, cause.strerror, str(path)) from e


def encoded(image, format: str, **params) -> bytes:
    """A PIL ``image`` encoded in memory, for a Python file to write: Pillow writes JPEG to a file's descriptor
    past Python, and loses a short write (the cut-off image of a full disk, with no error)."""
    buffer = io.BytesIO()
    image.save(buffer, format, **params)
    return buffer.getvalue()


def leftover(path: Path) -> bool:
    """Whether ``path`` is the temporary file of a :func:`replacing` whose process was killed (``.NAME.tmpPID``)."""
    return re.fullmatch(r"\..+\.tmp\d+", path.name) is not None and path.is_file()


def remove_leftovers(folder: Path, deep: bool = False) -> None:
    """Remove the temporary files (:func:`leftover`) that writes killed half-way left in ``folder`` (``deep``:
    and in the folders below it)."""
    for path in (folder.rglob if deep else folder.glob)(".*.tmp*"):
        if leftover(path):
            path.unlink(missing_ok=True)


def sibling(path: Path, suffix: str, prefix: str = "") -> Path:
    """``path``'s temporary sibling ``<prefix>NAME<suffix>``; for a name with no room left for them (a file name
    holds 255 bytes), a short one of the same form made from a hash of the name."""
    name = f"{prefix}{path.name}{suffix}"
    if len(os.fsencode(name)) > 255:
        name = f"{prefix}{hashlib.sha1(os.fsencode(path.name)).hexdigest()[:16]}{suffix}"
    return path.with_name(name)


def special(path: Path) -> bool:
    """Whether ``path`` exists as something other than a file or a folder (a device, a pipe, a socket), or names
    one of the process's streams (``/dev/stdout`` links to the file stdout is redirected to: a replace would put
    a file in place of the link)."""
    if os.path.abspath(path).startswith(("/dev/", "/proc/")):
        return True
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with replacing(path) as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (values JSON does not know, such as paths, as text)."""
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
