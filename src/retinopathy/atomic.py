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
import tempfile
from pathlib import Path

from .errors import NotWritten, RetinopathyError

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None


@contextlib.contextmanager
def replacing(path: str | os.PathLike, mode: str = "w", newline: str | None = None):
    """Yield a file opened for writing beside ``path`` that replaces ``path`` when the block succeeds and is
    removed when it fails: readers see the old file or the new one, never a part (text is UTF-8)."""
    path = Path(path)
    kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": newline}
    if _special(path):  # /dev/null, /dev/stdout, a pipe: written in place (a replace would put a file there)
        with naming(path), open(path, mode, **kwargs) as f:
            yield f
        return
    tmp = sibling(path, f".tmp{os.getpid()}", ".")
    try:
        with naming(path), open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def sibling(path: Path, suffix: str, prefix: str = "") -> Path:
    """``path``'s temporary sibling ``<prefix>NAME<suffix>``; for a name with no room left for them (a file name
    holds 255 bytes), a short one of the same form made from a hash of the name."""
    name = f"{prefix}{path.name}{suffix}"
    if len(os.fsencode(name)) > 255:
        name = f"{prefix}{hashlib.sha1(os.fsencode(path.name)).hexdigest()[:16]}{suffix}"
    return path.with_name(name)


def _special(path: Path) -> bool:
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


def check_writable(folder: str | os.PathLike) -> None:
    """Raise now (an OSError naming the path) if files cannot be written in ``folder`` once it is made, so that a
    command stops before its work, not after it. Creates nothing: a command that fails later leaves no folder."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder", str(existing))
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:  # named: not the temporary file's path
        raise OSError(e.errno, f"cannot write files in this folder ({e.strerror}); choose another",
                      str(existing)) from None


MODEL_SUFFIXES = {".pt": ".pt", ".pth": ".pt", ".ckpt": ".ckpt", ".onnx": ".onnx", ".safetensors": ".safetensors"}


@contextlib.contextmanager
def exclusive(folder: str | os.PathLike, doing: str):
    """Hold ``folder``'s ``.lock`` for the block: a second command that would write the same folder at the same time
    (two trainings, or a resume of a run still training) stops at once instead of mixing their files. ``flock``: the
    lock goes with its process, however that ends. The empty ``.lock`` stays, and is never written, so a finished
    folder's files stay as they were; a folder this made and that holds nothing else afterwards is removed again."""
    folder = Path(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".lock"
    with open(lock, "a") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RetinopathyError(f"{folder} is being {doing} by another process right now; wait for it to "
                                       "finish, or use another folder") from None
        try:
            yield
        finally:
            if made and [p.name for p in folder.iterdir()] == [lock.name]:
                lock.unlink()
                folder.rmdir()


def check_output_file(path: str | os.PathLike, option: str, example: str) -> None:
    """Raise now if the file ``path`` (given as ``option``; ``example`` is such a file's name) is a folder, a model
    file that this command's output would replace (a table written over best.pt), a photograph, or cannot be
    written there."""
    from .data.images import IMAGE_EXTENSIONS

    folder = os.fspath(path).endswith(("/", os.sep))  # Path() drops the slash: "new/" would become a file "new"
    path = Path(path)
    if path.is_dir() or folder:
        raise IsADirectoryError(errno.EISDIR, f"{option} is a folder{'' if path.is_dir() else ' (it ends with /)'}; "
                                f"give the file to write, e.g. {path / example}", str(path))
    suffix = path.suffix.lower()  # .pt and .pth are one kind: export writes TorchScript to either
    if path.exists() and suffix in MODEL_SUFFIXES and MODEL_SUFFIXES[suffix] != Path(example).suffix:
        raise FileExistsError(errno.EEXIST, f"{option} would replace a model file with a {Path(example).suffix} "
                              f"file; choose another file, e.g. {path.parent / example}", str(path))
    if path.exists() and suffix in IMAGE_EXTENSIONS:
        raise FileExistsError(errno.EEXIST, f"{option} would replace a photograph with a {Path(example).suffix} "
                              f"file; choose another file, e.g. {path.parent / example}", str(path))
    check_writable(path.parent)


def refuse_replacing(path: str | os.PathLike, option: str, inputs) -> None:
    """Raise now (an OSError naming ``path``) if writing ``path`` would replace one of the command's ``inputs``
    (a labels file, a photograph, the checkpoint being read)."""
    if not os.path.lexists(path):  # nothing there to replace
        return
    target = os.path.realpath(path)  # not Path.resolve(): a symbolic-link loop among the inputs raises there
    for p in inputs:
        if p is not None and os.path.realpath(p) == target:
            raise FileExistsError(errno.EEXIST, f"{option} would replace {p}, an input of this command; choose "
                                  "another file", str(path))
