"""Files written whole or not at all."""
from __future__ import annotations

import os

import pytest

from retinopathy.atomic import replacing, write_text
from retinopathy.cli.main import main
from retinopathy.errors import NotWritten


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_text(path, "old")
    with pytest.raises(ZeroDivisionError):
        with replacing(path) as f:
            f.write("half of the new")
            1 / 0
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C half-way: no temporary left in the user's folder either
        with replacing(path) as f:
            f.write("half of the new")
            raise KeyboardInterrupt
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    with replacing(path, "wb") as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, full_disk):
    """A write that fails for want of room names no file: the error names the file being written (the CLI prints
    its message), and is still an OSError."""
    import errno

    path = tmp_path / "metrics.json"
    write_text(path, "old")
    full_disk("metrics.json")
    with pytest.raises(NotWritten) as e:
        write_text(path, "new" * 100)
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full (Linux's always-full device)")
def test_a_full_device_is_named_too(synth_small, capsys):
    """`--json /dev/full` (or /dev/stdout on a full disk): devices are written in place, and named when full."""
    assert main(["data", "check", str(synth_small), "--json", "/dev/full", "--quiet"]) == 2
    assert "error: /dev/full: cannot be written (No space left on device)" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists("/proc/self/fd/1"), reason="no /proc (Linux)")
def test_a_link_to_a_stream_is_written_in_place(capfd):
    """`--json /dev/stdout > out.json`: /dev/stdout links (through /proc/self/fd/1) to a regular file, and a replace
    put a file in place of the link (as root, the machine's /dev/stdout); tested on /proc/self/fd/1, which cannot
    be replaced, so that a regression fails here without harm."""
    write_text("/proc/self/fd/1", "report\n")
    assert capfd.readouterr().out == "report\n"


def test_an_error_raised_while_handling_a_full_disk_stays_itself(tmp_path):
    """An EIO from another file, raised while a full disk was handled, is not reported as the full disk."""
    import errno

    from retinopathy.atomic import naming

    with pytest.raises(OSError) as e, naming(tmp_path / "out.csv"):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise OSError(errno.EIO, os.strerror(errno.EIO), "/elsewhere")
    assert e.value.errno == errno.EIO and e.value.filename == "/elsewhere" and not isinstance(e.value, NotWritten)


def test_a_figure_on_a_full_disk_leaves_the_one_before_whole(tmp_path, full_disk):
    """Pillow removes only a file it created: a figure written in place over an older one left it cut off."""
    from matplotlib.figure import Figure

    from retinopathy.reporting.figures import save_figure

    path = tmp_path / "confusion.png"
    save_figure(Figure(), path)
    before = path.read_bytes()
    full_disk("confusion.png")
    with pytest.raises(NotWritten, match="confusion.png: cannot be written"):
        save_figure(Figure(), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["confusion.png"]


def test_a_pipe_or_device_is_written_in_place_not_replaced(tmp_path):
    """`--json /dev/null` must not turn /dev/null into a file (a replace did, breaking the machine's /dev/null);
    tested on a named pipe, which a replace would likewise swap for a file."""
    import os
    import stat
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()), daemon=True)
    reader.start()
    try:
        write_text(fifo, "report")
    finally:
        reader.join(5)
        if reader.is_alive() and stat.S_ISFIFO(os.stat(fifo).st_mode):  # the write missed the pipe: release
            try:  # the reader (non-blocking: never wait for a reader that has already gone)
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and got == ["report"]
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]


def test_ctrl_c_during_a_checkpoint_save_arrives_after_it(tmp_path, monkeypatch):
    """torch.save turns an interrupt inside it into a RuntimeError from its zip writer; the save finishes, then
    the KeyboardInterrupt comes."""
    import os
    import signal

    import torch

    from retinopathy.training import checkpoint

    real_save = torch.save

    def interrupted_save(obj, f):
        os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode: inside the save
        real_save(obj, f)
    monkeypatch.setattr(checkpoint.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint({"epoch": 3, "model": {"w": torch.ones(4)}}, tmp_path / "last.pt")
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert checkpoint.load_checkpoint(tmp_path / "last.pt")["epoch"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    from retinopathy.launch import sigterm_as_ctrl_c

    def terminated_save(obj, f):
        os.kill(os.getpid(), signal.SIGTERM)
        real_save(obj, f)
    monkeypatch.setattr(checkpoint.torch, "save", terminated_save)
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_as_ctrl_c():  # as train and experiment set it: SIGTERM too waits for the save
        handler = signal.getsignal(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save_checkpoint({"epoch": 4, "model": {"w": torch.ones(4)}}, tmp_path / "last.pt")
        assert signal.getsignal(signal.SIGTERM) is handler is not before
    assert signal.getsignal(signal.SIGTERM) is before
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert checkpoint.load_checkpoint(tmp_path / "last.pt")["epoch"] == 4


def test_a_checkpoint_save_that_fails_keeps_the_last_one(tmp_path, full_disk):
    """A full disk in the middle of saving last.pt leaves the previous last.pt whole (the run resumes from it), and
    the error names the file and the cause, not the zip writer's "unexpected pos"."""
    import torch

    from retinopathy.training import checkpoint

    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint({"epoch": 3, "model": {"w": torch.ones(4)}}, path)
    full_disk("last.pt")
    with pytest.raises(NotWritten) as e:
        checkpoint.save_checkpoint({"epoch": 4, "model": {"w": torch.zeros(4)}}, path)
    assert str(e.value) == f"{path}: cannot be written (No space left on device)"
    assert checkpoint.load_checkpoint(path)["epoch"] == 3 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_checkpoint_reaches_the_disk_before_it_replaces_the_last_one(tmp_path, monkeypatch):
    """A checkpoint is flushed to the disk (fsync) before the rename that replaces the last one, and the folder's
    entry after it, so that a power cut leaves the old checkpoint or the new one, not an empty file; other files
    are not (each fsync costs a disk round trip)."""
    import stat

    import torch

    from retinopathy.training import checkpoint

    synced, real_replace = [], os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode)
                                                               else os.fstat(fd).st_size))
    monkeypatch.setattr(os, "replace", lambda *a: (synced.append("replace"), real_replace(*a)))
    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint({"epoch": 3, "model": {"w": torch.ones(4)}}, path)
    assert synced == [path.stat().st_size, "replace", "folder"]  # the whole file, then the rename, then the folder
    synced.clear()
    write_text(tmp_path / "metrics.json", "{}")
    assert synced == ["replace"]


def test_an_interrupted_command_says_so_once_under_torchrun(tmp_path, monkeypatch, capsys):
    """Ctrl-C reaches every rank of a torchrun job: rank 0 alone says 'interrupted'; every rank exits 130."""
    from retinopathy.training import train

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "cli", interrupted)  # train: the one command that runs as several processes
    for rank, said in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 130
        assert ("interrupted" in capsys.readouterr().err) == said
