"""MODEL_CARD.md: the required sections from a real run, then evaluations that accumulate (majority baseline shown)."""
from __future__ import annotations

import csv
import json
import re
import shutil

import pytest
import yaml

from retinopathy.cli.main import main
from retinopathy.evaluation import evaluate
from retinopathy.reporting.model_card import write_model_card
from retinopathy.training.checkpoint import load_checkpoint, save_checkpoint

SECTIONS = ["## Model", "## Training data", "## Preprocessing", "## Training", "## Metrics", "## Intended use",
            "## Limitations"]


@pytest.fixture
def run(tiny_run, tmp_path):
    """A copy of the tiny run (best.pt, config.yaml, metrics.csv, split.csv): the fixture stays untouched."""
    copy = tmp_path / "tiny"
    (copy / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "metrics.csv", "split.csv"):
        shutil.copy(tiny_run / name, copy / name)
    shutil.copy(tiny_run / "checkpoints" / "best.pt", copy / "checkpoints" / "best.pt")
    return copy


def table_row(card: str, first_cell: str) -> list[str]:
    line = next(line for line in card.splitlines() if line.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_card_from_a_training_run(run):
    card_path = write_model_card(run / "checkpoints" / "best.pt")
    assert card_path == run / "checkpoints" / "MODEL_CARD.md"
    card = card_path.read_text()
    positions = [card.splitlines().index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert "ResNet18" in card and "random initialisation" in card and "format `kaggle`" in card
    assert "by patient" in card and "10% validation" in card
    train = config["data"]["train_counts"]
    assert table_row(card, "train") == ["train", *map(str, train), str(sum(train))]
    assert "Preset `lab` at 64 x 64 px" in card
    val = config["data"]["eval_counts"]["val"]
    assert "- Selected on the val split by kappa = " in card and f" on {sum(val)} images" in card  # no interval
    during_training = card.split("## Metrics")[1]
    assert table_row(during_training, "val")[3] == f"{max(val) / sum(val):.3f}"  # the majority-class baseline
    with open(run / "metrics.csv", newline="") as f:
        selected = list(csv.DictReader(f))[load_checkpoint(run / "checkpoints" / "best.pt")["epoch"]]
    for split in ("val", "test"):  # each split's own numbers of the selected epoch
        row = table_row(during_training, split)
        assert (row[2], row[4]) == (f"{float(selected[f'{split}_accuracy']):.3f}",
                                    f"{float(selected[f'{split}_kappa']):.3f}")
    assert selected["val_accuracy"] != selected["test_accuracy"]  # so that a swap would show
    assert "not a medical device" in card and "single photograph" in card
    assert "**Synthetic training data.**" in card and "Label noise" not in card  # it learnt from synth drawings
    assert "Imbalance and small numbers" in card
    assert "None yet" in card
    config["data"]["leakage_warnings"] = ["2 of 4 test patients also have an eye in train"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert "\n- Warning: 2 of 4 test patients also have an eye in train\n" in \
        write_model_card(run / "checkpoints" / "best.pt").read_text()
    assert config["data"]["synthetic"] is True  # recorded when it trained: the card says so wherever the data went
    config["data"]["path"] = str(run / "moved-away")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert "**Synthetic training data.**" in write_model_card(run / "checkpoints" / "best.pt").read_text()


def test_limitations_describe_this_model(tmp_path):
    """What the model sees (one eye, blended with the other, or both) and what it learnt from (EyePACS labels or
    synthetic drawings) are this model's; thresholds the search left where it started are said to be so."""
    from retinopathy.reporting.model_card import _limitations, _model_section

    photos = {"data": {"path": str(tmp_path)}}  # no synthetic README.txt: real photographs
    one = "\n".join(_limitations({}, photos))
    assert "One photograph, one grade" in one and "Label noise" in one and "Synthetic" not in one
    blended = "\n".join(_limitations({"blend_eyes": 0.4}, photos))
    assert "mixed with the other eye's (weight 0.4)" in blended and "One photograph, one grade" not in blended
    assert "Both eyes, one grade each" in "\n".join(_limitations({"pair_eyes": True}, photos))
    info = {"arch": "resnet18", "objective": "ordinal", "thresholds": [0.5, 1.5, 2.5, 3.5], "threshold_data": "val"}
    assert "the search kept its starting values" in "\n".join(_model_section({"model_info": info}, "best.pt", {}, 1))
    info["thresholds"] = [0.7, 1.5, 2.5, 3.5]
    assert "starting values" not in "\n".join(_model_section({"model_info": info}, "best.pt", {}, 1))
    assert "never grade" not in "\n".join(_model_section({"model_info": info}, "best.pt", {}, 1))
    info["thresholds"] = [1.5, 1.5, 1.5, 3.5]  # merged by the search: no score falls between them
    assert "[1.5, 1.5, 1.5, 3.5] (never grade 1 or 2: their thresholds coincide)" in "\n".join(
        _model_section({"model_info": info}, "best.pt", {}, 1))


def test_evaluations_accumulate(run, synth_small, tmp_path):
    ckpt = run / "checkpoints" / "best.pt"
    results = {}
    for split in ("test", "val"):
        out = tmp_path / f"eval-{split}"
        assert main(["evaluate", str(ckpt), "--data", str(synth_small), "--split", split, "--out", str(out),
                     "--split-file", str(run / "split.csv"), "--workers", "0", "--bootstrap", "50",
                     "--quiet"]) == 0
        results[split] = json.loads((out / "metrics.json").read_text())
        write_model_card(ckpt, evaluation=results[split], eval_dir=out)
    write_model_card(ckpt, evaluation=results["test"], eval_dir=tmp_path / "eval-test")  # replaces, no duplicate
    write_model_card(ckpt)  # a later training update keeps the evaluations
    card = (run / "checkpoints" / "MODEL_CARD.md").read_text()
    store = json.loads((run / "checkpoints" / "model_card.json").read_text())
    assert sorted(e["split"] for e in store["evaluations"].values()) == ["test", "val"]
    assert "None yet" not in card
    rows = [line for line in card.split("### Evaluations")[1].splitlines() if line.startswith("| test |")
            or line.startswith("| val |")]
    assert len(rows) == 2
    for split, m in results.items():
        cells = next([c.strip() for c in r.strip("|").split("|")] for r in rows if r.startswith(f"| {split} |"))
        assert cells[3] == str(m["count"])
        assert cells[4].startswith(f"{m['accuracy']:.3f} [")  # with its bootstrap CI
        assert cells[5] == f"{m['majority_accuracy']:.3f}"
        assert cells[6].startswith(f"{m['kappa']:.3f}")
        assert cells[8] == (f"{m['referable_auc']:.3f} [{m['ci95']['referable_auc'][0]:.3f}, "  # referable DR
                            f"{m['ci95']['referable_auc'][1]:.3f}] / {m['referable_sensitivity']:.3f} / "
                            f"{m['referable_specificity']:.3f}")
    assert "majority-class baseline" in card


def test_other_blending_and_resaved_checkpoints_are_told_apart(run, synth_small, tmp_path):
    ckpt = run / "checkpoints" / "best.pt"
    common = ["--data", str(synth_small), "--split", "test", "--split-file", str(run / "split.csv"),
              "--workers", "0", "--bootstrap", "0", "--quiet"]
    assert main(["evaluate", str(ckpt), "--out", str(tmp_path / "e1"), *common]) == 0
    assert main(["evaluate", str(ckpt), "--out", str(tmp_path / "e2"), "--blend-eyes", "0.5", *common]) == 0
    card = (run / "checkpoints" / "MODEL_CARD.md").read_text()
    rows = [line for line in card.split("### Evaluations")[1].splitlines() if line.startswith("| test |")]
    assert len(rows) == 2 and sum("--blend-eyes 0.5" in r for r in rows) == 1  # its own row, marked
    assert not any(r.split("|")[3].strip().endswith("*") for r in rows)
    lines = (run / "split.csv").read_text().splitlines()  # another split of the run's photographs: one test
    first = next(i for i, line in enumerate(lines) if line.endswith(",test"))  # patient's eye moved to train
    lines[first] = lines[first][:-len("test")] + "train"
    (tmp_path / "other.csv").write_text("\n".join(lines) + "\n")
    common[common.index(str(run / "split.csv"))] = str(tmp_path / "other.csv")
    assert main(["evaluate", str(ckpt), "--out", str(tmp_path / "e3"), *common]) == 0
    assert json.loads((tmp_path / "e3" / "metrics.json").read_text())["split_file"] == str(tmp_path / "other.csv")
    card = (run / "checkpoints" / "MODEL_CARD.md").read_text()
    assert len([line for line in card.split("### Evaluations")[1].splitlines() if line.startswith("| test |")]) == 2
    assert table_row(card, "test of `other.csv`")[3] == str(json.loads((tmp_path / "e3" / "metrics.json").read_text())[
        "count"])  # its own row: the run's test rows stay
    shutil.copy(run / "split.csv", tmp_path / "copy.csv")  # the run's own split, elsewhere: no row of its own
    common[common.index(str(tmp_path / "other.csv"))] = str(tmp_path / "copy.csv")
    assert main(["evaluate", str(ckpt), "--out", str(tmp_path / "e4"), *common]) == 0
    assert json.loads((tmp_path / "e4" / "metrics.json").read_text())["split_file"] is None
    shutil.copy(tmp_path / "other.csv", tmp_path / "a|b.csv")  # a '|' in its name stays in its cell
    common[common.index(str(tmp_path / "copy.csv"))] = str(tmp_path / "a|b.csv")
    assert main(["evaluate", str(ckpt), "--out", str(tmp_path / "e5"), *common]) == 0
    card = (run / "checkpoints" / "MODEL_CARD.md").read_text()
    assert "| test of `a\\|b.csv` | `" in card
    assert len([line for line in card.split("### Evaluations")[1].splitlines() if line.startswith("| test |")]) == 2
    save_checkpoint(load_checkpoint(ckpt), ckpt)  # saved again in place (as a retune of its thresholds does)
    write_model_card(ckpt)
    card = (run / "checkpoints" / "MODEL_CARD.md").read_text()
    rows = [line for line in card.split("### Evaluations")[1].splitlines() if line.startswith("| test |")]
    assert len(rows) == 2 and all(r.split("|")[3].strip().endswith("*") for r in rows)
    assert "thresholds retuned since" in card


def test_recall_of_grades_without_images_is_not_zero(run):
    evaluation = {"split": "test", "data": "/data/small", "blend_eyes": 0.0, "count": 10, "accuracy": 0.6,
                  "majority_accuracy": 0.5, "kappa": 0.2, "macro_f1": 0.3, "referable_auc": None,
                  "recall": [0.8, 0.0, 0.5, 0.0, 0.0], "true_counts": [5, 3, 2, 0, 0]}  # 0.0: as recorded before
    card = write_model_card(run / "checkpoints" / "best.pt", evaluation=evaluation).read_text()
    recall = table_row(card.split("### Evaluations")[1], "test")[-1]
    assert recall == "0.80 / 0.00 / 0.50 / n/a (0 images) / n/a (0 images)"
    assert "mean F1 over the grades that are in the split or predicted" in card


def test_a_data_folder_named_with_a_pipe_stays_in_its_column(run):
    evaluation = {"split": "test", "data": "/data/eyes|<2015>", "blend_eyes": 0.0, "count": 10, "accuracy": 0.6,
                  "majority_accuracy": 0.5, "kappa": 0.2, "macro_f1": 0.3, "true_counts": [5, 3, 2, 0, 0]}
    card = write_model_card(run / "checkpoints" / "best.pt", evaluation=evaluation).read_text()
    row = next(line for line in card.split("### Evaluations")[1].splitlines() if line.startswith("| test |"))
    header = next(line for line in card.split("### Evaluations")[1].splitlines() if line.startswith("| split |"))
    assert "`eyes\\|<2015>`" in row  # in a code span: '<' as it is (an entity would show as written)
    assert len(re.split(r"(?<!\\)\|", row)) == len(re.split(r"(?<!\\)\|", header))


def test_grading_the_training_images_is_deterministic_warned_and_marked(run, synth_small, tmp_path, capsys,
                                                                        monkeypatch):
    """``evaluate --split train`` grades the unaugmented photographs (twice the same answers), says that they
    are the run's training images, and the model card marks the row."""
    common = ["evaluate", str(run), "--data", str(synth_small), "--split", "train", "--workers", "0",
              "--bootstrap", "0", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--out", str(tmp_path / "b")]) == 0
    first, second = ((tmp_path / d / "predictions.csv").read_text() for d in "ab")
    assert first == second
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["training_images"] == m["count"] > 0
    err = capsys.readouterr().err
    assert f"warning: of these images, {m['count']} are in the run's training split" in err
    assert "grade --split test for the model's own numbers" in err
    moved = tmp_path / "moved.csv"  # a split that puts the training images into test: --split test is no cure
    moved.write_text((run / "split.csv").read_text().replace(",train\n", ",test\n"))
    assert main([*common[:4], "--split", "test", "--split-file", str(moved), "--workers", "0", "--bootstrap", "0",
                 "--quiet", "--out", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    assert "training split" in err and "--split test" not in err and "this test split is not the run's" in err
    row = table_row((run / "checkpoints" / "MODEL_CARD.md").read_text().split("### Evaluations")[1], "train")
    assert f"† ({m['count']} trained on)" in row[2]

    titles = []
    monkeypatch.setattr(evaluate, "confusion_figure", lambda counts, title, path: titles.append(title))
    assert main(["evaluate", str(run), "--data", str(synth_small), "--split", "test", "--workers", "0",
                 "--bootstrap", "0", "--quiet", "--out", str(tmp_path / "t")]) == 0
    n = json.loads((tmp_path / "t" / "metrics.json").read_text())["count"]
    assert titles == [f"{run.name}: ResNet18, test split of {synth_small.name}, {n} images\nrow-normalised: the "
                      "diagonal is each grade's recall"]  # which run, which data; how it is normalised
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["training_images"] == 0
    assert "training split" not in capsys.readouterr().err
    card = (run / "checkpoints" / "MODEL_CARD.md").read_text().split("### Evaluations")[1]
    assert "†" not in table_row(card, "test")[2] and "† (" in table_row(card, "train")[2]

    # the val split chose the checkpoint: graded as test of a swapped split file, it is said to overstate too
    swapped = tmp_path / "swapped.csv"
    swapped.write_text((run / "split.csv").read_text().replace(",val\n", ",tmp\n").replace(",test\n", ",val\n")
                       .replace(",tmp\n", ",test\n"))
    assert main([*common[:4], "--split", "test", "--split-file", str(swapped), "--workers", "0", "--bootstrap", "0",
                 "--quiet", "--out", str(tmp_path / "v")]) == 0
    v = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert v["selection_images"] == v["count"] > 0 and v["training_images"] == 0
    assert (f"warning: of these images, {v['count']} are in the run's val split, which chose its checkpoint"
            in capsys.readouterr().err)
    card = (run / "checkpoints" / "MODEL_CARD.md").read_text().split("### Evaluations")[1]
    assert f"† ({v['count']} chose the checkpoint)" in table_row(card, "test of `swapped.csv`")[2]


def test_a_model_no_better_than_the_majority_class_is_flagged(run):
    good = {"split": "test", "data": "/data/small", "blend_eyes": 0.0, "count": 10, "accuracy": 0.6,
            "majority_accuracy": 0.5, "kappa": 0.2, "macro_f1": 0.3, "true_counts": [5, 3, 2, 0, 0]}
    card = write_model_card(run / "checkpoints" / "best.pt", evaluation=good).read_text()
    assert "⚠" not in card
    bad = {**good, "split": "val", "accuracy": 0.4}  # kappa > 0, but always answering grade 0 is right more often
    card = write_model_card(run / "checkpoints" / "best.pt", evaluation=bad).read_text()
    evaluations = card.split("### Evaluations")[1]
    assert "⚠" not in table_row(evaluations, "test")[2] and table_row(evaluations, "val")[2].endswith("⚠")
    assert "no better than always answering the most common grade" in evaluations
    stale = {**bad, "split": "train", "checkpoint": "best.pt", "checkpoint_id": "an earlier save"}  # both marks
    evaluations = write_model_card(run / "checkpoints" / "best.pt", evaluation=stale).read_text()
    assert table_row(evaluations.split("### Evaluations")[1], "train")[2].endswith("⚠ *")
    assert "≈" not in evaluations  # no interval: nothing to say of it
    wide = {**good, "data": "/data/few", "ci95": {"kappa": [-0.101, 0.380]}}  # above 0, its interval not
    evaluations = write_model_card(run / "checkpoints" / "best.pt", evaluation=wide).read_text()
    rows = evaluations.split("### Evaluations")[1]
    [few] = [line for line in rows.splitlines() if "| `few` |" in line]
    assert ") ≈ |" in few and "≈" not in table_row(rows, "test")[2]  # the first: /data/small's
    assert "kappa's 95% interval reaches 0: on those images the model is not shown to grade better than chance" in rows


def test_the_split_rule_says_which_splits_the_data_gave():
    from retinopathy.reporting.model_card import _split_rule

    lab = {"format": "lab", "labels": [f"/d/{sp}_{kind}.csv" for sp in ("train", "test") for kind in ("img", "label")]}
    assert _split_rule({"data": lab, "train": {}}) == ("the dataset's own train/test files; validation = 10% of the "
                                                       "train patients (seed 0), by patient")
    folders = {"format": "folders", "labels": ["/d/train", "/d/val", "/d/test"]}
    assert _split_rule({"data": folders, "train": {"split_seed": 3}}) == "the dataset's own train/val/test folders"
    folders["labels"] = ["/d/train", "/d/val"]
    assert _split_rule({"data": folders, "train": {"split_seed": 3}}) == (
        "the dataset's own train/val folders; test = 20% of the train patients (seed 3), by patient")
    one = {"format": "folders", "labels": ["/d"]}
    assert _split_rule({"data": one, "train": {}}).startswith("by patient (both eyes in the same split), stratified")


def test_a_config_yaml_that_is_not_yaml_leaves_the_evaluation_whole(run, synth_small, tmp_path, capsys):
    """The card cannot be updated from a broken config.yaml: evaluate warns, naming it, and writes all its files."""
    for broken in ("train: {model: resnet18\n", "- a list\n- not options\n"):  # not YAML; not a mapping
        (run / "config.yaml").write_text(broken)
        out = tmp_path / f"eval{len(broken)}"
        assert main(["evaluate", str(run / "checkpoints" / "best.pt"), "--data", str(synth_small), "--split", "test",
                     "--split-file", str(run / "split.csv"), "--out", str(out), "--workers", "0", "--bootstrap",
                     "0", "--quiet"]) == 0
        assert f"model card not updated: {run / 'config.yaml'} is not a run's config.yaml" in capsys.readouterr().err
        assert {"metrics.json", "predictions.csv", "confusion_matrix.csv", "confusion_matrix.png"} <= {
            p.name for p in out.iterdir()}


def test_a_card_that_cannot_be_written_is_named_by_its_folder(run, synth_small, tmp_path, monkeypatch, capsys):
    """A run on a read-only disk: the warning named the card's temporary file (.model_card.json.tmp18090)."""
    from retinopathy.evaluation import evaluate

    def read_only(checkpoint, **kwargs):
        raise OSError(30, "Read-only file system", str(run / "checkpoints" / ".model_card.json.tmp18090"))
    monkeypatch.setattr(evaluate, "write_model_card", read_only)
    assert main(["evaluate", str(run), "--data", str(synth_small), "--out", str(tmp_path / "e"), "--bootstrap", "0",
                 "--quiet"]) == 0
    assert (f"warning: model card in {run / 'checkpoints'} not updated (Read-only file system)"
            in capsys.readouterr().err)


def test_a_run_that_listed_its_skipped_images_in_config_yaml_is_counted():
    """Earlier versions listed --skip-bad's rows in config.yaml (no skipped.csv): the card counts them there."""
    from retinopathy.reporting.model_card import _data_section

    text = "\n".join(_data_section({"data": {"path": "d", "format": "kaggle", "skipped": ["a: x", "b: y"]}}))
    assert "- 2 unusable image(s) were skipped with --skip-bad (listed in the run's `config.yaml`)" in text


def test_the_card_follows_epochs_that_did_not_beat_the_best(tiny_run, tmp_path):
    """Training on past the best epoch (here a resume that cannot beat it) updates the card's account of the run:
    it said '2 of 2 (2 run so far)' for good, written only at each new best."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    last["best"]["value"] = float("inf")  # no later epoch is better
    save_checkpoint(last, run / "checkpoints" / "last.pt")
    assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet"]) == 0
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == 1
    assert "epoch 2 of 3 (3 run so far)" in (run / "checkpoints" / "MODEL_CARD.md").read_text()


def test_skipped_images_and_a_card_store_not_the_cards_are_said(run, capsys):
    """An evaluation that ``--skip-bad`` left images out of says how many; a model_card.json that is not UTF-8 JSON,
    or whose evaluations are no mapping, is warned about and started afresh (it stopped evaluate mid-write)."""
    row = {"split": "test", "data": "/data/small", "blend_eyes": 0.0, "count": 17, "skipped": 1, "accuracy": 0.6,
           "majority_accuracy": 0.5, "kappa": 0.2, "macro_f1": 0.3, "true_counts": [9, 3, 3, 1, 1]}
    card = write_model_card(run / "checkpoints" / "best.pt", evaluation=row).read_text()
    assert table_row(card.split("### Evaluations")[1], "test")[3] == "17 (1 skipped)"
    assert "skipped: images `--skip-bad` left out of that evaluation" in card
    store = run / "checkpoints" / "model_card.json"
    for broken in (b"\xff\xfe{", b'{"evaluations": []}', b'{"evaluations": {"x": 5}}'):
        store.write_bytes(broken)
        card = write_model_card(run / "checkpoints" / "best.pt", evaluation={**row, "skipped": 0}).read_text()
        assert f"warning: {store} is not readable" in capsys.readouterr().err
        assert table_row(card.split("### Evaluations")[1], "test")[3] == "17" and "skipped:" not in card
