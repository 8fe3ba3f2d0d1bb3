"""Where a command may write, checked before its work: a folder that can be written, an output file that would not
replace an input, a model or a photograph, and one writer at a time per run or experiment folder."""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from .errors import RetinopathyError

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None


def check_folder(folder: str | os.PathLike, option: str | None = None) -> Path:
    """Raise now (an OSError naming the path, and the ``option`` that gave it) if ``folder``, or the nearest of its
    parents that exists, is a file; return that nearest one."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        takes = f" ({option} takes a folder)" if option else ""
        raise NotADirectoryError(errno.ENOTDIR, f"a file, not a folder{takes}", str(existing))
    return existing


def check_writable(folder: str | os.PathLike, option: str | None = None, instead: str = "choose another") -> None:
    """:func:`check_folder`, and raise now if files cannot be written in ``folder`` once it is made, so that a
    command stops before its work, not after it (``instead``: what to do then). Creates nothing: a command that
    fails later leaves no folder."""
    existing = check_folder(folder, option)
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:  # named: not the temporary file's path
        raise OSError(e.errno, f"cannot write files in this folder ({e.strerror}); {instead}", str(existing)) from None


MODEL_SUFFIXES = {".pt": ".pt", ".pth": ".pt", ".ckpt": ".ckpt", ".onnx": ".onnx", ".safetensors": ".safetensors"}
TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".xlsx", ".xls", ".parquet", ".yaml", ".yml", ".html", ".md")
RUN_RECORDS = ("config.yaml", "split.csv", "metrics.csv", "skipped.csv")  # what training writes beside checkpoints/
CHECKPOINT_FILES = ("best.pt", "last.pt", "MODEL_CARD.md", "model_card.json")  # ... and in it


def is_run_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a training run: its ``config.yaml`` beside its ``checkpoints/``."""
    return (Path(folder) / "config.yaml").is_file() and (Path(folder) / "checkpoints").is_dir()


def refuse_run_folder(folder: str | os.PathLike, option: str, example: str, own: bool = False) -> None:
    """Raise now if the output ``folder`` (given as ``option``) is a run's folder or its ``checkpoints/``, where
    training wrote what resume, evaluate and report read; ``own``: it is the folder of the run this command reads.
    The hint names ``example``, a folder of its own inside the run's."""
    folder, real = Path(folder), Path(folder).resolve()  # real: also "." inside checkpoints/
    if real.name == "checkpoints" and is_run_folder(real.parent):
        where, run = f"the checkpoints folder of the run in {real.parent}", real.parent
    elif own or is_run_folder(folder):
        whose = "the run's own" if own else "a run's"
        where, run = f"{whose} folder, where its training wrote config.yaml, split.csv, metrics.csv and more", folder
    else:
        return
    raise RetinopathyError(f"{option} {folder} is {where}: write into a folder of its own, e.g. {run / example}")


def others_work(folder: str | os.PathLike) -> str:
    """What a new run's folder holds that is not a run's own ('' for nothing): an experiment's record, other runs,
    a dataset's labels or photographs. A run written there would mix with them, and ``report`` would read the folder
    as that one run, hiding the others."""
    from .data.formats import KAGGLE_LABELS, LAB_FILES
    from .data.images import IMAGE_EXTENSIONS

    folder = Path(folder)
    if not folder.is_dir():
        return ""
    if (folder / "experiment.json").is_file():
        return "is an experiment's folder (experiment.json)"
    entries = sorted(folder.iterdir())
    if runs := [d.name for d in entries if d.is_dir() and is_run_folder(d)]:
        return f"holds runs ({', '.join(runs[:3])}{', ...' if len(runs) > 3 else ''})"
    labels = [*KAGGLE_LABELS, *(n for pair in LAB_FILES.values() for n in pair)]
    if data := [f.name for f in entries if f.name in labels or f.suffix.lower() in IMAGE_EXTENSIONS]:
        return f"holds a dataset ({data[0]}{', ...' if len(data) > 1 else ''})"
    return ""


def refuse_photograph_folder(folder: str | os.PathLike, option: str, own, example: str) -> None:
    """Raise now if the output ``folder`` (given as ``option``) holds photographs: this command's PNGs there would
    be graded as photographs by a later ``predict`` (or trained on, in grade folders). ``own(name)``: whether a file
    is one this command writes. Not recursive: an earlier output's figures in sub-folders are not photographs."""
    from .data.images import IMAGE_EXTENSIONS

    folder = Path(folder)
    photos = sorted(f.name for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and not own(f.name)
                    ) if folder.is_dir() else []
    if photos:
        more = f" and {len(photos) - 1:,} more" if len(photos) > 1 else ""
        raise RetinopathyError(f"{option} {folder} is a folder of photographs ({photos[0]}{more}): write into a "
                               f"folder of its own, e.g. {example}")


def busy(folder: str | os.PathLike) -> bool:
    """Whether another process holds ``folder``'s lock (:func:`exclusive`) right now."""
    lock = Path(folder) / ".lock"
    if fcntl is None or not lock.is_file():
        return False
    try:
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # a folder this user cannot write: not a training of theirs
        pass
    return False


@contextlib.contextmanager
def exclusive(folder: str | os.PathLike, doing: str):
    """Hold ``folder``'s ``.lock`` for the block: a second command that would write the same folder at the same time
    (two trainings, or a resume of a run still training) stops at once instead of mixing their files. ``flock``: the
    lock goes with its process, however that ends. The empty ``.lock`` stays, and is never written, so a finished
    folder's files stay as they were; a folder this made and that holds nothing else afterwards is removed again,
    with the empty folders made above it."""
    folder = Path(folder)
    made = [d for d in (folder, *folder.parents) if not d.exists()]  # the folders made here, deepest first
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
                for d in made:  # each removed while empty
                    if any(d.iterdir()):
                        break
                    d.rmdir()


def check_output_file(path: str | os.PathLike, option: str, example: str) -> None:
    """Raise now if the file ``path`` (given as ``option``; ``example`` is such a file's name) is a folder, a model
    file that this command's output would replace (a table written over best.pt), a run's checkpoint or model card
    (another run's best.pt), a run's record (its split.csv), a photograph, a table of another kind (JSON into a
    .csv), or cannot be written there."""
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
    if path.exists() and path.name in CHECKPOINT_FILES and path.parent.name == "checkpoints" \
            and is_run_folder(path.parent.parent):
        raise FileExistsError(errno.EEXIST, f"{option} would replace {path}, in the checkpoints of the run in "
                              f"{path.parent.parent} (resume, evaluate and predict read them); choose another file, "
                              f"e.g. {path.parent.parent / example}", str(path))
    if path.exists() and path.name in RUN_RECORDS and is_run_folder(path.parent):
        raise FileExistsError(errno.EEXIST, f"{option} would replace {path.name}, a record of the run in "
                              f"{path.parent} (resume, evaluate and report read it); choose another file, e.g. "
                              f"{path.parent / example}", str(path))
    if path.exists() and suffix in IMAGE_EXTENSIONS:
        raise FileExistsError(errno.EEXIST, f"{option} would replace a photograph with a {Path(example).suffix} "
                              f"file; choose another file, e.g. {path.parent / example}", str(path))
    if suffix in TABLE_SUFFIXES and suffix != Path(example).suffix:
        raise RetinopathyError(f"{option} {path}: this command writes a {Path(example).suffix} file, not a {suffix} "
                               f"one; name it {path.with_suffix(Path(example).suffix)}")
    check_writable(path.parent)


def refuse_replacing(paths, option: str, inputs, what: str = "an input of this command") -> None:
    """Raise now (an OSError naming the path) if writing ``paths`` (one path, or several: one pass over the
    inputs) would replace one of the command's ``inputs`` (a labels file, a photograph, the checkpoint being read),
    or of other files to keep, ``what`` they are."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else paths
    # realpath, not Path.resolve(): a symbolic-link loop among the inputs raises there
    targets = {os.path.realpath(path): path for path in paths if os.path.lexists(path)}  # what is there to replace
    if not targets:
        return
    for p in inputs:
        if p is not None and (path := targets.get(os.path.realpath(p))) is not None:
            raise FileExistsError(errno.EEXIST, f"{option} would replace {p}, {what}; choose another file", str(path))
