"""Shared fixtures: the real data folder (skip, or fail under REQUIRE_SHARED_DATA=1), small synthetic sets,
and one tiny trained run reused across test files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test`'s workers, one per core: one torch thread each (and in
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the processes they start), not threads that fight for cores


def _shared_root() -> Path:
    return Path(os.environ.get("RETINOPATHY_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_report_header(config):
    """The free space where the tests write: they hold up to about 5 GB at once on two workers (checkpoints of
    ResNets), and a full disk fails them in odd places."""
    import shutil
    import tempfile

    where = Path(config.option.basetemp or tempfile.gettempdir()).resolve()
    while not where.exists():  # --basetemp is made later
        where = where.parent
    free = shutil.disk_usage(where).free / 1e9
    return f"free space in {where}: {free:.1f} GB" + (" - the tests need about 5 GB" if free < 5 else "")


@pytest.fixture(autouse=True, scope="session")
def ctrl_c_as_from_a_terminal():
    """SIGINT raises KeyboardInterrupt, as in a command run from a terminal: a suite started in the background
    (``make test &``, nohup) inherits SIGINT ignored, and the tests of Ctrl-C would fail there for that alone."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="session")
def no_disk_round_trips():
    """A checkpoint is flushed to the disk (fsync) before it replaces the last one: a disk round trip of about 0.1 s,
    hundreds of them in the suite, where no power is cut. Skipped here; test_atomic checks that they are made."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fsync", lambda fd: None)
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or $RETINOPATHY_SHARED_DATA); skips when absent unless REQUIRE_SHARED_DATA=1."""
    root = _shared_root()
    if not (root / "fundus-real").exists():
        msg = f"shared data not found at {root} (set RETINOPATHY_SHARED_DATA)"
        if os.environ.get("REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg + " and REQUIRE_SHARED_DATA=1")
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> Path:
    """240 synthetic images at 96 px, balanced grades, Kaggle format."""
    from retinopathy.data.synth import generate

    out = tmp_path_factory.mktemp("synth_small")
    generate(out, n=240, size=96, seed=1, balanced=True, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_run(synth_small, tmp_path_factory) -> Path:
    """A ResNet18 trained from scratch for 2 epochs (1 frozen) at 64 px on ``synth_small``: the run folder."""
    from retinopathy.cli.main import main

    run = tmp_path_factory.mktemp("runs") / "tiny"
    rc = main(["train", "--data", str(synth_small), "--model", "resnet18", "--no-pretrained", "--epochs", "2",
               "--freeze-epochs", "1", "--image-size", "64", "--batch-size", "16", "--workers", "0",
               "--out", str(run), "--quiet"])
    assert rc == 0
    return run


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(name, nth=1)``: the ``nth`` opening of a file called ``name`` for writing (or of its atomic
    write's temporary) finds the disk full after 100 bytes (inside ``torch.save``, the zip writer then reports a
    RuntimeError, as a real full disk makes it do). Writes made past Python (to the file's descriptor, as
    ``shutil.copyfile`` does) are not reached: a test of those sets RLIMIT_FSIZE in a subprocess."""
    import builtins
    import errno

    real_open = builtins.open

    class Full:
        def __init__(self, file):
            self.file, self.room = file, 100

        def write(self, data):
            if len(data) > self.room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.room -= len(data)
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def fill(name: str, nth: int = 1):
        writes = []

        def opened(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if isinstance(file, (str, os.PathLike)) and mode[0] in "wa" and (
                    Path(file).name == name or Path(file).name.startswith(f".{name}.tmp")):
                writes.append(file)
                return Full(f) if len(writes) == nth else f
            return f

        monkeypatch.setattr(builtins, "open", opened)
    return fill
