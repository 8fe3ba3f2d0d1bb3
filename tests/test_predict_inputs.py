"""``predict`` on several inputs: each dataset graded on the run's own split, eyes paired within a folder only,
linked folders followed, heatmap names unique, and inputs that cannot honour the request refused or told
(synthetic data: no shared data needed)."""
from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from retinopathy.cli.main import main
from retinopathy.errors import DataWarning
from retinopathy.inference.predict import collect_items

from .test_formats import disc


def test_split_applies_the_runs_split_to_every_dataset(synth_small, tmp_path, capsys):
    run, copy = tmp_path / "run", tmp_path / "copy"
    assert main(["train", "--data", str(synth_small), "--no-pretrained", "--image-size", "32", "--epochs", "1",
                 "--freeze-epochs", "0", "--workers", "0", "--split-seed", "5", "--test-fraction", "0.3",
                 "--out", str(run), "--quiet"]) == 0
    shutil.copytree(synth_small, copy)
    with open(run / "split.csv", newline="") as f:
        test = sorted(r["image"] for r in csv.DictReader(f) if r["split"] == "test")
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(synth_small), str(copy), "--split", "test", "--out", str(out),
                 "--workers", "0", "--quiet"]) == 0
    with open(out, newline="") as f:
        graded = sorted(r["image"] for r in csv.DictReader(f))
    assert graded == sorted(test + test)
    err = capsys.readouterr().err
    assert "training split" not in err and "synthetic drawings" not in err  # drawings graded: nothing to say
    from retinopathy.data.prepare import prepare
    from retinopathy.inference.predict import drawings

    prepare(synth_small, tmp_path / "prepared", size=32, workers=1, progress=False)
    photo = tmp_path / "photos" / "x.jpeg"
    photo.parent.mkdir()
    shutil.copy(next(synth_small.glob("*.jpeg")), photo)
    assert [drawings(str(p)) for p in (tmp_path / "prepared", next(synth_small.glob("*.jpeg")), photo)] == [
        True, True, False]  # a prepared copy of drawings, one of them; a drawing copied elsewhere is not known
    assert main(["predict", str(run), str(synth_small), "--out", str(out), "--workers", "0", "--quiet"]) == 0
    with open(run / "split.csv", newline="") as f:
        splits = Counter(r["split"] for r in csv.DictReader(f))
    trained = splits["train"]
    assert splits["val"] and (f"warning: of the images with known grades, {trained} are in the run's training split "
                              f"and {splits['val']} in its val split, which chose its checkpoint"
                              in capsys.readouterr().err)
    with open(run / "split.csv", newline="") as f:  # training images that cannot be read are not graded: not counted
        broken = [r["image"] for r in csv.DictReader(f) if r["split"] == "train"][:3]
    for name in broken:
        (copy / f"{name}.jpeg").write_bytes(b"")
    assert main(["predict", str(run), str(copy), "--out", str(out), "--workers", "0", "--quiet"]) == 0
    assert (f"warning: of the images with known grades, {trained - 3} are in the run's training split"
            in capsys.readouterr().err)
    from retinopathy.data.synth import generate

    generate(tmp_path / "other", n=60, size=32, seed=7, balanced=True, progress=False)  # the same names
    assert main(["predict", str(run), str(tmp_path / "other"), "--out", str(out), "--workers", "0", "--quiet"]) == 0
    assert "training split" not in capsys.readouterr().err
    folder = tmp_path / "photos"
    disc(folder / "9_left.jpeg")
    assert main(["predict", str(run), str(synth_small), str(folder), "--split", "test", "--out", str(out)]) == 2
    assert f"{folder}: --split test needs a dataset" in capsys.readouterr().err


def test_lab_files_out_of_step_are_refused(tiny_run, tmp_path, capsys):
    for i in range(3):
        disc(tmp_path / f"{i}_left.jpeg")
    (tmp_path / "test_img.csv").write_text("0_left\n1_left\n2_left\n")
    (tmp_path / "test_label.csv").write_text("0\n1\n")
    assert main(["predict", str(tiny_run), str(tmp_path), "--out", str(tmp_path / "p.csv"), "--quiet"]) == 2
    assert "not files out of step" in capsys.readouterr().err and not (tmp_path / "p.csv").exists()


def test_eyes_pair_within_a_folder_not_across_folders(tmp_path):
    a, b = (disc(tmp_path / "siteA" / "1_left.jpeg"), disc(tmp_path / "siteA" / "1_right.jpeg"))
    c = disc(tmp_path / "siteB" / "1_right.jpeg")
    items = collect_items([a, b, tmp_path / "siteB"])
    assert items[0].patient == items[1].patient != items[2].patient
    assert [i.path for i in items] == [str(a), str(b), str(c)]
    left = disc(tmp_path / "photos" / "left" / "7_left.jpeg")
    right = disc(tmp_path / "photos" / "right" / "7_right.jpeg")
    items = collect_items([tmp_path / "photos"])  # one input folder: its sub-folders pair
    assert [i.path for i in items] == [str(left), str(right)] and items[0].patient == items[1].patient
    clash = [disc(tmp_path / "sites" / site / f"7_{eye}.jpeg") for site in ("A", "B") for eye in ("left", "right")]
    items = collect_items([tmp_path / "sites"])  # the same names in two sub-folders: pairs within each
    assert [i.path for i in items] == list(map(str, clash))
    assert items[0].patient == items[1].patient != items[2].patient == items[3].patient


def test_same_names_in_other_folders_or_datasets_are_other_patients(tiny_run, synth_small, tmp_path):
    """siteA/1_left.jpeg and siteB/1_right.jpeg given as files, or two datasets with the same names, are different
    patients; eye blending mixes only a patient's own eyes, so each of those eyes keeps its own score."""
    a, b = disc(tmp_path / "siteA" / "1_left.jpeg"), disc(tmp_path / "siteB" / "1_right.jpeg", color=(90, 40, 20))
    items = collect_items([a, b])
    assert items[0].patient != items[1].patient
    shutil.copytree(synth_small, tmp_path / "copy")
    items = collect_items([synth_small, tmp_path / "copy"])
    half = len(items) // 2
    assert [i.image for i in items[:half]] == [i.image for i in items[half:]]
    assert not {i.patient for i in items[:half]} & {i.patient for i in items[half:]}
    scores = {}
    for weight in ("0", "0.5"):
        out = tmp_path / f"blend-{weight}.csv"
        assert main(["predict", str(tiny_run), str(a), str(b), "--blend-eyes", weight, "--out", str(out),
                     "--workers", "0", "--quiet", "--amp", "none"]) == 0
        with open(out, newline="") as f:
            scores[weight] = [float(r["score"]) for r in csv.DictReader(f)]
    assert scores["0.5"] == scores["0"] and scores["0"][0] != scores["0"][1]


def test_a_patients_eyes_pair_however_their_folder_is_written(tmp_path, monkeypatch):
    """One folder written as a relative path, an absolute one, or through a link: the eyes in it pair up."""
    left, right = disc(tmp_path / "few" / "1_left.jpeg"), disc(tmp_path / "few" / "1_right.jpeg")
    (tmp_path / "link").symlink_to(tmp_path / "few")
    monkeypatch.chdir(tmp_path)
    for inputs in (["few/1_left.jpeg", right], ["link/1_left.jpeg", "few/1_right.jpeg"]):
        items = collect_items(inputs)
        assert len(items) == 2 and items[0].patient == items[1].patient, inputs
    for inputs in ([left, "few"], ["link", right]):  # a photograph given twice is graded once
        with pytest.warns(DataWarning, match="already listed; each is graded once"):
            items = collect_items(inputs)
        assert len(items) == 2 and items[0].patient == items[1].patient, inputs
    # a folder per patient (p7/left, p7/right) or per eye (left/7, right/7) pairs the same way as 7_left, 7_right
    for name in ("p7/left", "p7/right", "eyes/left/7", "eyes/right/7"):
        disc(tmp_path / "layouts" / f"{name}.jpeg")
    items = collect_items([tmp_path / "layouts"])
    assert len({i.patient for i in items}) == 2
    assert [i.patient for i in collect_items([tmp_path / "layouts" / "p7" / f"{e}.jpeg" for e in ("left", "right")])] \
        == [f"{tmp_path / 'layouts' / 'p7'}|p7"] * 2


def test_folders_follow_links_and_heatmap_names_stay_unique(tiny_run, tmp_path):
    photos = tmp_path / "photos"
    for name in ("a/x.jpeg", "b/x.jpeg", "b/x-2.jpeg"):
        disc(photos / name, size=64)
    disc(tmp_path / "elsewhere" / "y_left.jpeg", size=64)
    (photos / "linked").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "loop").symlink_to(photos)  # a link back up the tree is walked once
    out = tmp_path / "p.csv"
    assert main(["predict", str(tiny_run), str(photos), "--cam", str(tmp_path / "cams"), "--out", str(out),
                 "--workers", "0", "--quiet"]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["image"] for r in rows) == ["x", "x", "x-2", "y_left"]
    heatmaps = [r["heatmap"] for r in rows]
    assert len(set(heatmaps)) == 4 and all(Path(h).exists() for h in heatmaps)


def test_unlisted_images_and_lab_files_as_inputs_are_told(tiny_run, synth_small, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth_small, data)
    disc(next(p for p in data.rglob("*.jpeg")).parent / "999_left.jpeg")
    (next(p for p in data.rglob("*.jpeg")).parent / "._999_left.jpeg").write_bytes(b"macOS' resource fork")
    assert main(["predict", str(tiny_run), str(data), "--out", str(tmp_path / "p.csv"), "--workers", "0",
                 "--quiet"]) == 0
    assert "1 image(s) in" in capsys.readouterr().err  # not the hidden ._999_left.jpeg
    labels = (data / "trainLabels.csv").read_text().splitlines()
    (data / "trainLabels.csv").write_text("\n".join(labels[:2] + [labels[2].rsplit(",", 1)[0] + ",7"] + labels[3:]))
    assert main(["predict", str(tiny_run), str(data), "--out", str(tmp_path / "p.csv"), "--workers", "0",
                 "--quiet"]) == 0
    err = capsys.readouterr().err  # the row with a bad label is warned about as such, not as unlisted
    assert "trainLabels.csv:3: label '7'" in err and "1 image(s) in" in err and "2 image(s) in" not in err
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "test_label.csv").write_text("0\n")
    (tmp_path / "lab" / "test_img.csv").write_text("0_left\n")
    assert main(["predict", str(tiny_run), str(tmp_path / "lab" / "test_label.csv"), "--out",
                 str(tmp_path / "q.csv")]) == 2
    assert f"pass their folder, {tmp_path / 'lab'}" in capsys.readouterr().err


def test_a_photograph_given_twice_is_graded_once(tmp_path):
    """A file passed twice, or also inside a folder passed, is one photograph (a copy would be a third eye in the
    eye blending); a name with dots keeps them in its heatmap's file name."""
    from retinopathy.inference.predict import _heatmap_names

    left, right = disc(tmp_path / "p" / "3_left.jpeg"), disc(tmp_path / "p" / "3_right.jpeg")
    (tmp_path / "link.jpeg").symlink_to(left)
    with pytest.warns(DataWarning, match=r"5 path\(s\) lead to a photograph already listed; each is graded once") \
            as said:  # a DataWarning, as the datasets' (the CLI prints them), from the line that called collect_items
        items = collect_items([left, right, left, tmp_path / "p", f"{tmp_path}/p/./3_right.jpeg",
                               tmp_path / "link.jpeg"])
    assert [w.filename for w in said] == [__file__]
    assert [i.path for i in items] == [str(left), str(right)]
    with pytest.warns(DataWarning, match=rf"1 path\(s\) .*: {tmp_path / 'link.jpeg'} \(graded as {left}\)"):
        items = collect_items([tmp_path / "link.jpeg", tmp_path / "p"])  # the link first: the file's own name kept
    assert [(i.path, i.image) for i in items] == [(str(left), "3_left"), (str(right), "3_right")]
    raw, listed = tmp_path / "raw", tmp_path / "listed"  # a dataset of links into a camera's folder, also given
    disc(raw / "IMG_0001.jpeg"), disc(raw / "IMG_0002.jpeg")
    listed.mkdir()
    (listed / "1_left.jpeg").symlink_to(raw / "IMG_0001.jpeg")
    (listed / "1_right.jpeg").symlink_to(raw / "IMG_0002.jpeg")
    (listed / "trainLabels.csv").write_text("image,level\n1_left,2\n1_right,0\n")
    with pytest.warns(DataWarning, match="already listed"):
        items = collect_items([raw, listed])
    assert [(i.image, i.label) for i in items] == [("1_left", 2), ("1_right", 0)]  # as the dataset lists them
    (listed / "regraded.csv").write_text("image,level\n1_left,4\n1_right,0\n")  # a second file, another grade
    with pytest.warns(DataWarning, match=r"1_left.jpeg \(listed again in .*regraded.csv\) \[its grade there, 4, "
                                         r"differs from the 2 kept\]"):
        items = collect_items([listed / "trainLabels.csv", listed / "regraded.csv"])
    assert [(i.image, i.label) for i in items] == [("1_left", 2), ("1_right", 0)]
    dotted = [disc(tmp_path / "d" / f"scan.2024.0{k}.jpg") for k in (1, 2)]
    assert _heatmap_names(collect_items(dotted)) == ["scan.2024.01.png", "scan.2024.02.png"]


def test_a_link_that_leads_nowhere_gets_an_error_row(tiny_run, tmp_path, capsys):
    disc(tmp_path / "p" / "1_left.jpeg")
    for name in ("2_left", "3_left"):  # two links to one missing file: two rows, not one photograph
        (tmp_path / "p" / f"{name}.jpeg").symlink_to(tmp_path / "moved-away.jpeg")
    assert main(["predict", str(tiny_run), str(tmp_path / "p"), "--out", str(tmp_path / "p.csv"), "--quiet"]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    assert rows["1_left"]["error"] == "" and rows["1_left"]["predicted_grade"] != ""
    assert all(rows[n]["error"] != "" and rows[n]["predicted_grade"] == "" for n in ("2_left", "3_left"))
    said = capsys.readouterr().out  # the summary names each image not graded, with why
    assert "graded 1 of 3 images (2 not graded" in said
    assert all(f"not graded: {tmp_path / 'p' / n}.jpeg: {rows[n]['error']}" in said for n in ("2_left", "3_left"))


def test_the_summary_names_the_first_images_not_graded():
    from retinopathy.inference.predict import SHOWN_ERRORS, Item, _report

    items = [Item(f"p/{i}.jpeg", str(i)) for i in range(SHOWN_ERRORS + 3)]
    res = {"grades": np.array([2] + [-1] * (SHOWN_ERRORS + 2)), "errors": ["", *(f"bad {i}" for i in range(1, 9))]}
    lines = _report(items, res, Path("p.csv")).splitlines()
    assert lines[0].startswith(f"graded 1 of {len(items)} images ({SHOWN_ERRORS + 2} not graded")
    assert lines[1:-1] == [*(f"not graded: p/{i}.jpeg: bad {i}" for i in range(1, SHOWN_ERRORS + 1)), "... and 2 more"]


def test_outputs_never_replace_the_inputs(tiny_run, synth_small, tmp_path, capsys, monkeypatch):
    """--out, --cam and --json that would overwrite a labels file, a photograph or the checkpoint being read are
    refused before any work, naming the file; nothing is changed."""
    data, lab = tmp_path / "data", tmp_path / "lab"
    shutil.copytree(synth_small, data)
    assert main(["synth", str(lab), "--n", "8", "--size", "32", "--format", "lab", "--quiet"]) == 0
    labels, trained_from = (data / "trainLabels.csv").read_bytes(), (synth_small / "trainLabels.csv").read_bytes()
    photo = sorted(data.glob("*.jpeg"))[0]
    before = photo.read_bytes()
    best, last = tiny_run / "checkpoints" / "best.pt", tiny_run / "checkpoints" / "last.pt"
    models = best.read_bytes(), last.read_bytes()
    weights = tmp_path / "grader.bin"  # a checkpoint by any name
    shutil.copy(best, weights)
    (tmp_path / "check.img").write_bytes(b"not checked: an input by its path")
    records = {name: (tiny_run / name).read_bytes() for name in ("split.csv", "config.yaml")}
    split = tmp_path / "split.csv"
    shutil.copy(tiny_run / "split.csv", split)
    other = tmp_path / "other-run"  # another run's checkpoint: not this command's input, still a run's file
    (other / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_run / "config.yaml", other)
    shutil.copy(best, other / "checkpoints" / "best.pt")
    for argv, named in (
            (["predict", str(tiny_run), str(photo), "--out", str(best)],
             f"--out would replace a model file with a .csv file; choose another file, e.g. {best.parent}/"
             "predictions.csv"),
            (["data", "check", str(data), "--json", str(last), "--quiet"],
             "--json would replace a model file with a .json file"),
            (["predict", str(weights), str(photo), "--out", str(weights)],
             f"--out would replace {weights}, an input of this command"),
            (["predict", str(tiny_run), str(data), "--out", str(data / "trainLabels.csv")],
             f"--out would replace {data / 'trainLabels.csv'}, an input of this command"),
            (["predict", str(tiny_run), str(photo), "--out", str(tmp_path / "p.csv"), "--cam", str(data)],
             f"--cam would write heatmaps among the photographs being graded (in {data})"),
            (["predict", str(tiny_run), str(data), "--out", str(tmp_path / "p.csv"), "--cam", str(data / "cams")],
             f"--cam would write heatmaps among the photographs being graded (in {data})"),  # graded next time
            (["predict", str(tiny_run), str(lab), "--out", str(lab / "test_label.csv")],
             f"--out would replace {lab / 'test_label.csv'}, an input of this command"),
            (["data", "check", str(data), "--json", str(data / "trainLabels.csv"), "--quiet"],
             f"--json {data / 'trainLabels.csv'}: this command writes a .json file, not a .csv one; name it "
             f"{data / 'trainLabels.json'}"),
            (["predict", str(tiny_run), str(photo), "--out", str(tmp_path / "p.json")],
             f"--out {tmp_path / 'p.json'}: this command writes a .csv file, not a .json one"),
            (["export", str(tiny_run), "--format", "torchscript", "--out",
              str(tiny_run / "checkpoints" / "last.pt")],
             f"--out would replace {tiny_run / 'checkpoints' / 'last.pt'}"),
            (["export", str(tiny_run), "--format", "torchscript", "--out", str(photo), "--check-images", str(photo)],
             "--out would replace a photograph with a .pt file; choose another file"),
            (["export", str(tiny_run), "--out", str(tmp_path / "check.img"), "--check-images",
              str(tmp_path / "check.img")], f"--out would replace {tmp_path / 'check.img'}, an input of this command"),
            (["predict", str(tiny_run), str(data), "--out", str(photo)],
             "--out would replace a photograph with a .csv file"),
            (["predict", str(tiny_run), str(photo), "--out", str(tmp_path / "same.csv"), "--cam",
              str(tmp_path / "same.csv")], "--cam is the --out file; give the heatmaps a folder of their own"),
            (["predict", str(tiny_run), str(photo), "--out", str(tiny_run / "split.csv")],
             f"--out would replace split.csv, a record of the run in {tiny_run}"),  # which predict itself reads
            (["export", str(tiny_run), "--format", "torchscript", "--out", str(tiny_run / "config.yaml")],
             f"--out would replace config.yaml, a record of the run in {tiny_run}"),
            (["data", "check", str(data), "--no-images", "--split-file", str(split), "--json", str(split)],
             f"--json {split}: this command writes a .json file, not a .csv one"),
            (["export", str(tiny_run), "--format", "torchscript", "--out", str(other / "checkpoints" / "best.pt")],
             f"--out would replace {other / 'checkpoints' / 'best.pt'}, in the checkpoints of the run in {other}"),
            (["predict", str(tiny_run), str(photo), "--out", str(synth_small / "trainLabels.csv")],
             f"--out would replace {synth_small / 'trainLabels.csv'}, a labels file the model's run trained from")):
        assert main([*argv, "--workers", "0"] if argv[0] == "predict" else argv) == 2, argv
        assert named in capsys.readouterr().err
    assert (data / "trainLabels.csv").read_bytes() == labels and photo.read_bytes() == before
    assert (synth_small / "trainLabels.csv").read_bytes() == trained_from
    assert (best.read_bytes(), last.read_bytes()) == models and weights.read_bytes() == models[0]
    assert {name: (tiny_run / name).read_bytes() for name in records} == records
    assert split.read_bytes() == records["split.csv"] and (other / "checkpoints" / "best.pt").read_bytes() == models[0]
    from retinopathy.outputs import check_output_file

    (tmp_path / "grader.pth").write_bytes(b"an earlier TorchScript export")
    check_output_file(tmp_path / "grader.pth", "--out", "grader.pt")  # export may write over its own, by either name
    (other / "checkpoints" / "grader.pt").write_bytes(b"an earlier export beside the checkpoints")
    check_output_file(other / "checkpoints" / "grader.pt", "--out", "grader.pt")  # no checkpoint of the run
    (tmp_path / "train.csv").write_text("image,predicted_grade\n")  # an earlier predict's, by a labels file's name
    check_output_file(tmp_path / "train.csv", "--out", "predictions.csv")
    assert not (tmp_path / "p.csv").exists()
    (tmp_path / "cams").mkdir()  # a single photograph's heatmaps in a folder below it: nothing is replaced
    monkeypatch.chdir(data)
    assert main(["predict", str(tiny_run), photo.name, "--out", "p.csv", "--cam", "cams", "--workers", "0",
                 "--quiet"]) == 0
    assert (data / "cams" / f"{photo.stem}.png").exists()


def test_home_and_paths_with_spaces_on_the_command_line(synth_small, tmp_path, monkeypatch, capsys):
    """``~`` in any command's path (also ``--opt=~/x``, which the shell leaves alone) is the home folder, not a
    folder named ``~``; commands the tool suggests quote paths with spaces; an unwritable folder is named."""
    import tempfile

    from retinopathy.outputs import check_writable
    from retinopathy.launch import resume_command

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["synth", "~/s1", "--n", "4", "--size", "32", "--quiet"]) == 0
    assert main(["data", "check", "--json=~/c.json", str(tmp_path / "s1"), "--quiet"]) == 0
    assert (tmp_path / "s1" / "trainLabels.csv").exists() and (tmp_path / "c.json").exists()
    assert not (tmp_path / "~").exists()
    assert resume_command(Path("runs/sp ace")) == "retinopathy train --resume 'runs/sp ace'"

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "tmpabc123"))
    monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    with pytest.raises(PermissionError) as e:
        check_writable(tmp_path / "out")
    assert e.value.filename == str(tmp_path) and "cannot write files in this folder" in e.value.strerror


def test_names_as_long_as_a_file_name_may_be(tiny_run, tmp_path):
    """A 255-byte file name leaves no room for '.part' or '.tmpPID': temporary files get a short name instead
    (prepare, atomic writes), and a heatmap's name is shortened; nothing is left behind."""
    from retinopathy.atomic import write_text
    from retinopathy.data.prepare import prepare

    write_text(tmp_path / ("x" * 250 + ".json"), "{}")
    assert (tmp_path / ("x" * 250 + ".json")).read_text() == "{}"
    data = tmp_path / "data"
    assert main(["synth", str(data), "--n", "4", "--size", "32", "--quiet"]) == 0
    long = "日本" * 40 + "_left"  # 245 bytes, + ".jpeg": 250
    (data / "1_left.jpeg").rename(data / f"{long}.jpeg")
    labels = data / "trainLabels.csv"
    labels.write_text(labels.read_text().replace("1_left,", f"{long},"))
    m = prepare(data, tmp_path / "small", size=32, workers=1, progress=False)
    assert m["problems"] == [] and (tmp_path / "small" / f"{long}.jpeg").exists()
    assert main(["predict", str(tiny_run), str(data / f"{long}.jpeg"), "--out", str(tmp_path / "p.csv"),
                 "--cam", str(tmp_path / "cams"), "--workers", "0", "--quiet"]) == 0
    (heatmap,) = (tmp_path / "cams").iterdir()
    assert heatmap.name.startswith("日本") and len(heatmap.name.encode()) <= 255
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".part") or ".tmp" in p.name]


def test_a_prepared_copy_read_otherwise_than_prepared_warns_as_in_training(tiny_run, synth_small, tmp_path, capsys):
    """predict reads a copy's prepare_manifest.json as train and evaluate do: field-of-view crops graded by a
    lab-preset model, and a copy smaller than the model's input, are each a warning; the grades still come."""
    from retinopathy.data.prepare import prepare

    copy = tmp_path / "copy"
    prepare(synth_small, copy, size=32, crop="fov", workers=1, progress=False)
    out = tmp_path / "p.csv"
    assert main(["predict", str(tiny_run / "checkpoints" / "best.pt"), str(copy), "--out", str(out),
                 "--workers", "0", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {copy} was prepared at 32 px and is read at 64 px: the copy is upscaled" in err
    assert f"warning: {copy} holds field-of-view crops (prepare --crop fov) read with the lab preset" in err
    assert err.count(f"warning: {copy} ") == 2 and len(out.read_text().splitlines()) == 241  # once each, all graded
    assert main(["predict", str(tiny_run / "checkpoints" / "best.pt"), str(synth_small), "--out",
                 str(tmp_path / "q.csv"), "--workers", "0", "--quiet"]) == 0
    assert f"warning: {synth_small} " not in capsys.readouterr().err  # the originals: nothing to say of a copy


def test_outputs_that_are_not_numbers_are_no_grade(tiny_run, synth_small, tmp_path, capsys):
    """A checkpoint whose outputs are NaN (a diverged run; fp16 overflowing) grades nothing: NaN would compare as
    grade 0, 'no DR'. Each row says why, and with nothing graded the exit status is 1."""
    import torch

    ckpt = torch.load(tiny_run / "checkpoints" / "best.pt", weights_only=True)
    head = next(k for k in ckpt["model"] if k.endswith("fc.weight"))
    ckpt["model"][head][:] = float("nan")
    broken = tmp_path / "broken.pt"
    torch.save(ckpt, broken)
    photos = sorted(synth_small.glob("*.jpeg"))[:2]
    out = tmp_path / "p.csv"
    assert main(["predict", str(broken), *map(str, photos), "--out", str(out), "--workers", "0", "--quiet"]) == 1
    rows = list(csv.DictReader(out.open()))
    assert [r["predicted_grade"] for r in rows] == ["", ""] and [r["referable"] for r in rows] == ["", ""]
    assert all(r["error"].startswith("the model's outputs are not finite (NaN or inf)") for r in rows)
    assert "graded 0 of 2 images (2 not graded: see the error column)" in capsys.readouterr().out


def test_rows_left_out_of_a_dataset_are_counted(tiny_run, synth_small, tmp_path, capsys):
    """A labelled dataset's rows with bad grades, or listed twice with two grades, are named one by one, and the
    photographs they leave out are counted, so that 'graded 237 of 237' does not read as every photograph listed."""
    data = tmp_path / "data"
    shutil.copytree(synth_small, data)
    lines = (data / "trainLabels.csv").read_text().splitlines()
    lines[1], lines[2] = lines[1].split(",")[0] + ",2.5", lines[2].split(",")[0] + ",-1"
    name, grade = lines[3].split(",")
    lines.append(f"{name}.jpeg,{(int(grade) + 1) % 5}")  # again with another grade: one photograph, no row used
    (data / "trainLabels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "p.csv"
    assert main(["predict", str(tiny_run), str(data), "--out", str(out), "--workers", "0", "--quiet"]) == 0
    said = capsys.readouterr()
    assert said.err.count("is not an integer 0-4") == 2
    assert f"warning: 3 photograph(s) listed in {data / 'trainLabels.csv'} are left out (their rows" in said.err
    assert f"graded {len(lines) - 5} of {len(lines) - 5} images" in said.out
    name, grade = lines[4].split(",")
    lines.append(f"{name}.jpeg,{grade}")  # again with the same grade: graded once, not left out
    (data / "trainLabels.csv").write_text("\n".join(lines) + "\n")
    assert main(["predict", str(tiny_run), str(data), "--out", str(out), "--workers", "0", "--quiet"]) == 0
    assert "warning: 3 photograph(s) listed" in capsys.readouterr().err


def test_a_labels_csv_whose_images_are_elsewhere_or_whose_columns_are_misnamed(tiny_run, synth_small, tmp_path,
                                                                                capsys):
    """Labels kept apart from their photographs, without --images: each row's error and a warning say where the
    images were looked for and what to pass; a --label-col the header lacks is the error, as in training (it was a
    warning, followed by a false one and 'no images in split all')."""
    labels = tmp_path / "labels" / "trainLabels.csv"
    labels.parent.mkdir()
    shutil.copy(synth_small / "trainLabels.csv", labels)
    out = tmp_path / "p.csv"
    assert main(["predict", str(tiny_run), str(labels), "--out", str(out), "--workers", "0", "--quiet"]) == 1
    err = capsys.readouterr().err
    listed = len(labels.read_text().splitlines()) - 1
    assert f"None of the {listed} listed images is in {labels.parent}: pass the folder that holds them as --images" \
        in err
    with open(out, newline="") as f:
        assert {r["error"] for r in csv.DictReader(f)} == {f"image not found in {labels.parent}"}
    assert main(["predict", str(tiny_run), str(labels), "--images", str(synth_small), "--label-col", "grade",
                 "--out", str(out), "--workers", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "['grade'] not found" in err and "no images in split" not in err
    assert "Photographs without grades are graded as files" in err  # a list without grades: what to pass instead
    assert "are not in" not in err  # no claim that the folder's images are unlisted


def test_every_image_of_the_runs_data_whatever_its_split_options_and_a_dataset_without_rows_beside_it(
        tiny_run, synth_small, tmp_path, capsys):
    """--split all grades every image: a split option other than the run's changes nothing there (it was refused as
    another split of the run's photographs); a dataset with no usable row among several inputs is warned about and
    the others are graded (alone, it is the error)."""
    out, empty = tmp_path / "p.csv", tmp_path / "empty"
    empty.mkdir()
    (empty / "trainLabels.csv").write_text("image,level\n")
    assert main(["predict", str(tiny_run), str(synth_small), str(empty), "--split-seed", "5", "--val-fraction", "0.3",
                 "--out", str(out), "--workers", "0", "--quiet"]) == 0
    assert len(out.read_text().splitlines()) == len((synth_small / "trainLabels.csv").read_text().splitlines())
    err = capsys.readouterr().err
    assert f"warning: 1 problem(s) in the dataset:\n  {empty / 'trainLabels.csv'}: the dataset has no images" in err
    assert "no row of it lists a usable image. (Photographs without grades are graded as files: pass them, or their " \
        "folder, rather than a list of them.) (not graded)" in err
    assert main(["predict", str(tiny_run), str(empty), "--out", str(out), "--workers", "0", "--quiet"]) == 2
    assert main(["predict", str(tiny_run), str(synth_small), "--split", "test", "--split-seed", "5", "--out", str(out),
                 "--workers", "0", "--quiet"]) == 2  # a split of the run's photographs other than its own: refused
    assert "--split-seed 5: " in capsys.readouterr().err
