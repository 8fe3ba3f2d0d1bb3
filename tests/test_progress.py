"""Progress in a log file: stderr that is not a terminal gets whole lines, now and then, and short work none."""
from __future__ import annotations

import retinopathy.progress as progress
from retinopathy.cli.main import main


def test_a_log_gets_one_line_per_update_and_quiet_gets_none(synth_small, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)  # every update is due
    assert main(["data", "check", str(synth_small), "--json", str(tmp_path / "a.json")]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("checking images:")]
    assert "\r" not in err and len(lines) >= 2, err
    assert lines[-1].startswith("checking images: 100% 240/240"), lines[-1]

    assert main(["data", "check", str(synth_small), "--json", str(tmp_path / "b.json"), "--quiet"]) == 0
    assert "checking images" not in capsys.readouterr().err


def test_work_shorter_than_the_interval_prints_nothing_to_a_log(capsys):
    assert progress.LOG_EVERY >= 10
    assert sum(progress.progress_bar(range(1000), desc="short")) == 499500
    bar = progress.progress_bar(total=3, desc="manual")
    bar.update(3)
    bar.close()
    assert capsys.readouterr().err == ""


def test_a_short_training_run_prints_no_progress_lines_to_a_log(synth_small, tmp_path, capsys):
    """The epoch bar's running loss must not force a line per batch into a log (only the epoch lines show)."""
    assert main(["train", "--data", str(synth_small), "--model", "resnet18", "--no-pretrained", "--epochs", "1",
                 "--freeze-epochs", "0", "--image-size", "32", "--batch-size", "16", "--workers", "0",
                 "--out", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert "batch" not in captured.err and "epoch 1/1 [finetune] train loss" in captured.out


def test_the_closing_redraw_does_not_repeat_the_last_line():
    import io

    out = io.StringIO()
    lines = progress._Lines(out)
    lines.write("\rx:  50% 2/4 [00:01<00:01, 2.0it/s]")
    lines.write("\rx: 100% 4/4 [00:02<00:00, 2.0it/s]")
    lines.write("\rx: 100% 4/4 [00:02<00:00, 1.9it/s]\n")  # tqdm's close: the same count, a new rate
    assert out.getvalue().splitlines() == ["x:  50% 2/4 [00:01<00:01, 2.0it/s]", "x: 100% 4/4 [00:02<00:00, 2.0it/s]"]
