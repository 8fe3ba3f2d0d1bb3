"""``retinopathy export``: ONNX Runtime, torch.export (pt2) and TorchScript reproduce PyTorch on real photographs
at any batch size, the preprocessing JSON round-trips, a failed parity check writes nothing, bad checkpoints exit 2.

The checkpoint is a ResNet18 with the lab head whose BatchNorm statistics were moved off their defaults
(no training: the export has to reproduce whatever the weights are, and a fixture that trains would not fit
the time budget of this file)."""
from __future__ import annotations

import csv
import inspect
import json
import math
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from retinopathy.cli.main import main
from retinopathy.data import Normalize, Preprocessing, build_transform, open_image
from retinopathy.models.factory import Grader
from retinopathy.models.restore import restore
from retinopathy.training.checkpoint import save_checkpoint

SIZE = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = Grader("resnet18", 5, "lab")
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        for _ in range(3):
            model(torch.randn(8, 3, SIZE, SIZE) * 2 + 0.5)
    prep = Preprocessing("lab", SIZE)
    path = tmp_path_factory.mktemp("export") / "best.pt"
    save_checkpoint({"model": model.state_dict(), "epoch": 3, "phase": "finetune", "best": None, "config": {},
                     "model_info": {"arch": "resnet18", "head": "lab", "objective": "classification",
                                    "num_outputs": 5, "num_classes": 5, "preprocessing": prep.to_dict(),
                                    "class_names": ["none", "mild", "moderate", "severe", "proliferative"],
                                    "thresholds": [0.5, 1.5, 2.5, 3.5], "weights_origin": "test"}}, path)
    return path


@pytest.fixture(scope="module")
def real_batch(checkpoint, shared_data):
    """Seven real photographs preprocessed with the checkpoint's preprocessing, normalised."""
    _, _, prep, _ = restore(checkpoint)
    t = build_transform(prep, train=False, uint8=True)
    files = sorted((shared_data / "fundus-real" / "images").glob("*.jpeg"))[:7]
    return Normalize(prep.mean, prep.std)(torch.stack([t(open_image(f, prep.size)) for f in files]))


def reference(checkpoint, x):
    model = restore(checkpoint)[0]
    with torch.no_grad():
        return model(x).numpy()


def check_metadata(out, checkpoint):
    meta = json.loads((out.parent / (out.name + ".json")).read_text())
    _, objective, prep, _ = restore(checkpoint)
    assert Preprocessing.from_dict(meta["preprocessing"]) == prep
    assert meta["objective"] == "classification" and "thresholds" not in meta  # argmax: no thresholds to misuse
    assert meta["preprocessing"]["definitions"] == {}  # torchvision's steps only
    assert meta["blend_eyes"]["weight"] == 0.0  # trained without eye blending
    assert meta["class_names"][4] == "proliferative" and meta["input"]["shape"] == ["batch", 3, SIZE, SIZE]
    assert meta["parity"]["max_abs_diff"] < 1e-3
    assert meta["model_card"] is None  # a checkpoint without its run's folder
    assert meta["intended_use"].startswith("Research and teaching: ") and "any person's care" in meta["intended_use"]
    assert (meta["output"]["probabilities"], meta["output"]["grade"]) == ("softmax(outputs)", "the most probable grade")
    assert [step.split("(")[0] for step in meta["preprocessing"]["steps"]] == ["Resize", "CenterCrop"]
    return meta


def test_metadata_is_the_checkpoints_own(tmp_path):
    """A regression grader with its own thresholds, eye blending and normalisation: the JSON a deployment reads
    says what this checkpoint does, not what a default one would."""
    torch.manual_seed(0)
    model = Grader("resnet18", 1, "lab").eval()
    prep = Preprocessing("graham", SIZE, mean=(0.4, 0.5, 0.6), std=(0.2, 0.1, 0.3))
    cuts = [0.3, 1.2, 2.6, 3.1]
    save_checkpoint({"model": model.state_dict(), "epoch": 1, "phase": "finetune", "best": None, "config": {},
                     "model_info": {"arch": "resnet18", "head": "lab", "objective": "regression", "num_outputs": 1,
                                    "num_classes": 5, "preprocessing": prep.to_dict(), "thresholds": cuts,
                                    "decision": "thresholds", "blend_eyes": 0.4, "weights_origin": "test"}},
                    tmp_path / "reg.pt")
    out = tmp_path / "reg.ts.pt"
    assert main(["export", str(tmp_path / "reg.pt"), "--format", "torchscript", "--out", str(out)]) == 0
    meta = json.loads((tmp_path / "reg.ts.pt.json").read_text())
    assert (meta["objective"], meta["decision"], meta["thresholds"]) == ("regression", "thresholds", cuts)
    assert meta["blend_eyes"]["weight"] == 0.4 and meta["output"]["shape"] == ["batch", 1]
    assert (meta["preprocessing"]["mean"], meta["preprocessing"]["std"]) == ([0.4, 0.5, 0.6], [0.2, 0.1, 0.3])
    assert meta["preprocessing"]["preset"] == "graham" and meta["output"]["grade"].startswith("the number of thr")
    graham = meta["preprocessing"]["definitions"]["GrahamNormalize"]  # the project's own steps, written out
    assert "4*img - 4*GaussianBlur(img, sigma) + 128" in graham and "sigma_fraction=0.03333333333333333" in " ".join(
        meta["preprocessing"]["steps"]) and "FovCrop" in meta["preprocessing"]["definitions"]
    assert "centred on the circle that find_fov fits" in meta["preprocessing"]["definitions"]["FovCrop"]  # no markup
    assert meta["version"] == 2  # thresholds only for their decision
    assert meta["blend_eyes"]["meaning"].startswith("before the thresholds, ")


@pytest.mark.shared_data
def test_onnx_matches_pytorch_on_real_images(checkpoint, real_batch, shared_data, tmp_path, capsys):
    import onnxruntime as ort

    out = tmp_path / "grader.onnx"
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(out),
                 "--check-images", str(shared_data / "fundus-real" / "images")]) == 0
    assert "max |logit difference|" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grader.onnx", "grader.onnx.json"]
    assert check_metadata(out, checkpoint)["trained_on_synthetic_drawings"] is None  # no data named: unknown
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    expected = reference(checkpoint, real_batch)
    for b in (1, 3, 7):
        got = session.run(["logits"], {"input": real_batch[:b].numpy()})[0]
        assert got.shape == (b, 5)
        assert np.abs(got - expected[:b]).max() < 1e-3


def test_an_opset_asked_for_is_the_opset_written(checkpoint, tmp_path, capsys):
    """The dynamo exporter writes opset 18 or later and, asked for 13, printed a conversion traceback and kept
    18; the TorchScript-based exporter writes 13, and the JSON says which opset the file has."""
    import onnx

    out = tmp_path / "grader.onnx"
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(out), "--opset", "13"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    declared = [o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx")]
    assert declared == [13] and check_metadata(out, checkpoint)["opset"] == 13
    for argv, said in ((["--opset", "5"], "argument --opset: 5 is too small (at least 7)"),  # a traceback from ORT
                       (["--format", "torchscript", "--opset", "13"], "--opset is for --format onnx")):  # ignored
        with pytest.raises(SystemExit) as e:
            main(["export", str(checkpoint), "--out", str(tmp_path / "g.pt"), *argv])
        assert e.value.code == 2 and said in capsys.readouterr().err


def test_a_file_named_for_the_other_format_is_refused(checkpoint, tmp_path, capsys):
    """TorchScript written into m.onnx (or ONNX into m.pt) was written without a word, for a runtime to fail on."""
    for fmt, name, other in (("torchscript", "m.onnx", "onnx"), ("onnx", "m.pt", "torchscript"),
                             ("pt2", "m.pth", "torchscript"), ("torchscript", "m.PT2", "pt2")):
        assert main(["export", str(checkpoint), "--format", fmt, "--out", str(tmp_path / name)]) == 2
        assert f"its name says {other}, and this exports {fmt}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_failed_first_exporter_removes_only_what_it_wrote(checkpoint, tmp_path, monkeypatch, capsys):
    """When the dynamo exporter fails, its partial output goes, and nothing else in the folder (the function is
    public: the folder may be the user's)."""
    from retinopathy.inference.export import export_onnx

    real = torch.onnx.export

    def dynamo_fails(*args, dynamo=True, **kwargs):
        if dynamo:
            (tmp_path / "grader.onnx").write_text("partial")
            (tmp_path / "grader.onnx.data").write_text("partial")
            (tmp_path / "predictions.csv").write_text("written meanwhile by another command")
            raise RuntimeError("the dynamo exporter failed")
        return real(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "runs").mkdir()
    exporter, _ = export_onnx(restore(checkpoint)[0], torch.zeros(1, 3, SIZE, SIZE), tmp_path / "grader.onnx")
    assert exporter.startswith("TorchScript-based") and "dynamo ONNX exporter failed" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grader.onnx", "notes.txt", "predictions.csv", "runs"]


def test_a_model_named_like_a_table_is_refused_before_the_work(checkpoint, tmp_path, capsys):
    """``--out meta.json``: the metadata once went over the model, and only meta.json.json came out; a model named
    as a table (.json, .csv...) is now refused before anything is exported, with the name to use."""
    out = tmp_path / "meta.json"
    assert main(["export", str(checkpoint), "--format", "torchscript", "--out", str(out)]) == 2
    assert f"--out {out}: this command writes a .pt file, not a .json one; name it {tmp_path / 'meta.pt'}" \
        in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def load_pytorch_export(out):
    """The module a pt2 (torch.export program) or TorchScript file holds, as the docs load it."""
    if out.suffix == ".pt2":
        return torch.export.load(str(out)).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(out))


@pytest.mark.shared_data
@pytest.mark.parametrize("fmt, name", [("torchscript", "grader.ts.pt"), ("pt2", "grader.pt2")])
def test_a_pytorch_export_matches_pytorch_and_json_round_trips(checkpoint, real_batch, shared_data, tmp_path, fmt,
                                                               name):
    out = tmp_path / name
    assert main(["export", str(checkpoint), "--format", fmt, "--out", str(out)]) == 0
    meta = check_metadata(out, checkpoint)
    assert "synthetic" in meta["parity"]["images"] and meta["model_format"] == fmt
    module = load_pytorch_export(out)
    expected = reference(checkpoint, real_batch)
    with torch.no_grad():
        for b in (1, 3):
            assert np.abs(module(real_batch[:b]).numpy() - expected[:b]).max() < 1e-3
    # predict, with its defaults, gives the exported model's numbers (fp32: bf16 moved grades)
    files = sorted((shared_data / "fundus-real" / "images").glob("*.jpeg"))[:7]
    assert main(["predict", str(checkpoint), *map(str, files), "--out", str(tmp_path / "p.csv"), "--workers", "0",
                 "--quiet"]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == list(map(str, files))
    with torch.no_grad():
        exported = torch.softmax(module(real_batch), 1).numpy()
    assert np.abs(np.array([[float(r[f"prob_{g}"]) for g in range(5)] for r in rows]) - exported).max() < 2e-6


@pytest.mark.shared_data
def test_parity_defaults_to_the_training_photographs(checkpoint, shared_data, tmp_path):
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["config"] = {"data": str(shared_data / "fundus-real")}  # as train records it: the resolved folder
    save_checkpoint(ckpt, tmp_path / "trained.pt")
    out = tmp_path / "grader.ts.pt"
    assert main(["export", str(tmp_path / "trained.pt"), "--format", "torchscript", "--out", str(out)]) == 0
    meta = check_metadata(out, checkpoint)
    assert meta["parity"]["images"] == f"8 image(s) from {shared_data / 'fundus-real' / 'images'}"


def test_parity_falls_back_to_renders_when_no_training_photograph_reads(checkpoint, tmp_path, capsys):
    """The training folder holds only unreadable images: synthetic renders, with the skipped files named; images
    the user chose (--check-images) that cannot be read stay an error."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"{i}_left.jpeg").write_bytes(b"\xff\xd8 not a jpeg")
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["config"] = {"data": str(data)}
    save_checkpoint(ckpt, tmp_path / "trained.pt")
    out = tmp_path / "grader.ts.pt"
    assert main(["export", str(tmp_path / "trained.pt"), "--format", "torchscript", "--out", str(out)]) == 0
    meta = json.loads((tmp_path / "grader.ts.pt.json").read_text())
    assert meta["parity"]["images"].startswith("4 synthetic renders")
    assert capsys.readouterr().err.count("warning: parity check skips") == 3
    assert main(["export", str(tmp_path / "trained.pt"), "--format", "torchscript", "--out", str(tmp_path / "b.pt"),
                 "--check-images", str(data)]) == 2
    assert "no readable image for the parity check" in capsys.readouterr().err


def test_parity_renders_when_the_training_folder_cannot_be_listed(checkpoint, tmp_path, monkeypatch):
    """A folder there that cannot be listed (a drive's lost+found) is no reason to stop the export: the training
    photographs are a convenience, and the check renders its own."""
    import os

    data = tmp_path / "data"
    (data / "lost+found").mkdir(parents=True)
    listing = os.scandir

    def scandir(path="."):
        if str(path).endswith("lost+found"):
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["config"] = {"data": str(data)}
    save_checkpoint(ckpt, tmp_path / "trained.pt")
    assert main(["export", str(tmp_path / "trained.pt"), "--format", "torchscript", "--out",
                 str(tmp_path / "grader.ts.pt")]) == 0
    assert json.loads((tmp_path / "grader.ts.pt.json").read_text())["parity"]["images"].startswith("4 synthetic")


def test_failed_parity_writes_nothing(checkpoint, tmp_path, capsys, monkeypatch):
    import retinopathy.inference.export as export_module

    out = tmp_path / "grader.ts.pt"
    monkeypatch.setattr(export_module, "parity", lambda *a: (2e-3, 1.0))  # above the default tolerance, 1e-3
    assert main(["export", str(checkpoint), "--format", "torchscript", "--out", str(out)]) == 1
    assert "parity check failed: max |logit difference| 0.002 > 0.001" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(export_module, "parity", lambda *a: (0.0, 1.0))  # no difference meets a tolerance of 0
    assert main(["export", str(checkpoint), "--format", "torchscript", "--out", str(out), "--tolerance", "0"]) == 0
    assert out.exists()


@pytest.mark.parametrize("tolerance", ["nan", "-1", "inf", "tiny"])
def test_a_tolerance_that_is_no_limit_is_a_usage_error(checkpoint, tmp_path, tolerance, capsys):
    """``nan`` failed every parity check as "difference >= nan"; ``inf`` passed any."""
    with pytest.raises(SystemExit) as e:
        main(["export", str(checkpoint), "--out", str(tmp_path / "g.onnx"), "--tolerance", tolerance])
    says = "'tiny' is not a number" if tolerance == "tiny" else f"{tolerance}: a finite number, 0 or more"
    assert e.value.code == 2 and f"argument --tolerance: {says}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_model_that_ignores_its_input_is_told(checkpoint, tmp_path, capsys):
    """A dead head passes any parity check trivially: export says so."""
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["model"]["net.fc.3.weight"].zero_()  # the lab head's last Linear: its bias alone
    save_checkpoint(ckpt, tmp_path / "dead.pt")
    out = tmp_path / "dead.ts.pt"
    assert main(["export", str(tmp_path / "dead.pt"), "--format", "torchscript", "--out", str(out)]) == 0
    assert "gives the same outputs for all 4 check images" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--format", "torchscript", "--out", str(tmp_path / "live.ts.pt")]) == 0
    assert "same outputs" not in capsys.readouterr().err


def test_a_model_whose_outputs_are_not_numbers_is_not_exported(checkpoint, tmp_path, capsys):
    """NaN outputs passed the parity check: max() over NaN differences was 0."""
    from retinopathy.inference.export import parity

    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["model"]["net.fc.3.weight"][:] = float("nan")
    save_checkpoint(ckpt, tmp_path / "nan.pt")
    out = tmp_path / "nan.ts.pt"
    assert main(["export", str(tmp_path / "nan.pt"), "--format", "torchscript", "--out", str(out)]) == 1
    assert "outputs on the check images are not finite (NaN or inf)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pt"]
    model = torch.nn.Linear(2, 2)  # an export that alone gives NaN fails the check
    assert parity(model, lambda x: np.full((len(x), 2), np.nan, np.float32), torch.zeros(4, 2))[0] == math.inf


def test_bad_checkpoints_exit_2(checkpoint, tmp_path, capsys):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"fc.weight": torch.zeros(5, 2)}, foreign)
    newer = tmp_path / "newer.pt"
    torch.save({**torch.load(checkpoint, weights_only=True), "version": 99}, newer)
    odd = tmp_path / "odd.pt"
    torch.save({**torch.load(checkpoint, weights_only=True), "version": "x"}, odd)
    for path, reason in {truncated: "cannot be read", foreign: "not a retinopathy checkpoint",
                         newer: "newer retinopathy", odd: "its format version is 'x', not a number"}.items():
        assert main(["export", str(path), "--out", str(tmp_path / "m.onnx")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and str(path) in err and reason in err
    assert not (tmp_path / "m.onnx").exists()


def test_pair_eye_models_are_refused(tmp_path, capsys):
    if "pair_eyes" not in inspect.signature(Grader).parameters:
        pytest.skip("this version has no pair-eye models")
    path = tmp_path / "pairs.pt"
    save_checkpoint({"model": Grader("resnet18", 5, "linear", pair_eyes=True).state_dict(), "epoch": 0,
                     "model_info": {"arch": "resnet18", "head": "linear", "objective": "classification",
                                    "num_outputs": 5, "num_classes": 5, "pair_eyes": True,
                                    "preprocessing": Preprocessing("lab", SIZE).to_dict()}}, path)
    image = tmp_path / "eye.png"
    Image.new("RGB", (SIZE, SIZE), (200, 90, 40)).save(image)
    for argv in (["export", str(path), "--out", str(tmp_path / "m.onnx")],
                 ["predict", str(path), str(image), "--out", str(tmp_path / "p.csv")]):
        assert main(argv) == 2
        assert "both eyes" in capsys.readouterr().err


def readme_example(marker: str) -> str:
    """The Python block holding `marker` in the README or the docs page on using a model."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = "".join((root / name).read_text() for name in ("README.md", "docs/using-a-model.md"))
    return next(block for block in text.split("```python\n")[1:] if marker in block.split("```")[0]).split("```")[0]


@pytest.mark.parametrize("objective", ["classification", "regression"])
def test_the_docs_example_grades_with_an_exported_model_as_predict_does(checkpoint, objective, tmp_path, monkeypatch,
                                                                   capsys):
    """The docs' snippet for an exported model and its JSON (ONNX; pt2 and TorchScript in its comments) gives
    predict's probabilities, score and grade for the same photograph: argmax, and a score cut at thresholds."""
    if objective == "regression":
        torch.manual_seed(0)
        model = Grader("resnet18", 1, "lab").eval()
        save_checkpoint({"model": model.state_dict(), "epoch": 1, "phase": "finetune", "best": None, "config": {},
                         "model_info": {"arch": "resnet18", "head": "lab", "objective": "regression",
                                        "num_outputs": 1, "num_classes": 5,
                                        "preprocessing": Preprocessing("lab", SIZE).to_dict(),
                                        "thresholds": [-100.0, -99.0, -98.0, 100.0], "decision": "thresholds",
                                        "weights_origin": "test"}}, tmp_path / "reg.pt")
        checkpoint = tmp_path / "reg.pt"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(tmp_path / "photo.jpeg")
    for fmt, name in (("onnx", "grader.onnx"), ("pt2", "grader.pt2"), ("torchscript", "grader.ts.pt")):
        assert main(["export", str(checkpoint), "--format", fmt, "--out", str(tmp_path / name),
                     "--check-images", str(tmp_path)]) == 0
    assert main(["predict", str(checkpoint), str(tmp_path / "photo.jpeg"), "--out", str(tmp_path / "p.csv"),
                 "--quiet"]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        row = next(csv.DictReader(f))
    if objective == "regression":  # its thresholds give grade 3; the default ones would not
        assert row["predicted_grade"] == "3" and not 2.5 <= float(row["score"]) < 3.5
    monkeypatch.chdir(tmp_path)
    code = readme_example("ort.InferenceSession")
    others = ["\n".join(line.replace(f"# {runtime} instead: ", "") if f"{runtime} instead" in line else line
                         for line in code.splitlines() if "ort.InferenceSession" not in line)
              for runtime in ("torch.export", "TorchScript")]
    for snippet in (code, *others):
        scope = {}
        exec(snippet, scope)
        out = torch.from_numpy(scope["out"])
        assert scope["grade"] == int(row["predicted_grade"])
        assert float(scope["objective"].score(out)[0]) == pytest.approx(float(row["score"]), abs=1e-4)
        assert scope["objective"].probabilities(out)[0].tolist() == pytest.approx(
            [float(row[f"prob_{g}"]) for g in range(5)], abs=1e-4)


def test_the_readme_grades_with_a_checkpoint_in_python_as_predict_does(tiny_run, tmp_path, monkeypatch):
    """README's snippet for a run's checkpoint in Python (restore, build_transform, open_image) gives predict's
    probabilities, score and grade; an RGBA image in memory goes through to_rgb as the README says."""
    from retinopathy.data import build_transform, to_rgb
    from retinopathy.models import restore

    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(tmp_path / "photo.jpeg")
    assert main(["predict", str(tiny_run), str(tmp_path / "photo.jpeg"), "--out", str(tmp_path / "p.csv"),
                 "--quiet"]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        row = next(csv.DictReader(f))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "NAME").symlink_to(tiny_run)
    scope = {}
    exec(readme_example("restore("), scope)
    out = scope["out"]
    assert scope["grade"] == int(row["predicted_grade"])
    assert float(scope["objective"].score(out)[0]) == pytest.approx(float(row["score"]), abs=1e-4)
    assert scope["objective"].probabilities(out)[0].tolist() == pytest.approx(
        [float(row[f"prob_{g}"]) for g in range(5)], abs=1e-4)
    model, _, prep, _ = restore(tiny_run / "checkpoints" / "best.pt")
    rgba = Image.open(tmp_path / "photo.jpeg").convert("RGBA")
    assert build_transform(prep)(to_rgb(rgba)).shape == (3, prep.size, prep.size)


def test_parity_measures_the_exports_difference_on_batches_of_one_and_three():
    """The check compares what the export returns with PyTorch's outputs batch by batch, batches of 1 and of 3
    covering every image: an export wrong only in batches of 3, or by 0.01 anywhere, is caught."""
    from retinopathy.inference.export import parity, parity_batches

    for n in (2, 4, 6):
        x = torch.arange(n * 12, dtype=torch.float32).reshape(n, 3, 2, 2)
        batches = parity_batches(x)
        assert [len(b) for b in batches] == ([1, 3] if n == 2 else [1, 3, 3])
        seen = torch.cat(batches)
        assert all(any(torch.equal(image, s) for s in seen) for image in x)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).eval()
    exact = lambda batch: model(batch).detach().numpy()  # noqa: E731
    assert parity(model, exact, x)[0] == 0.0
    assert parity(model, lambda batch: exact(batch) + 0.01, x)[0] == pytest.approx(0.01, abs=1e-4)
    wrong_in_threes = lambda batch: exact(batch) + (0.5 if len(batch) == 3 else 0.0)  # noqa: E731
    assert parity(model, wrong_in_threes, x)[0] == pytest.approx(0.5, abs=1e-4)


def test_parity_uses_the_images_folder_the_run_trained_with(checkpoint, tmp_path):
    """A run trained with --images DIR: the check looked in its data folder (labels only), found no photograph and
    fell back to synthetic renders, saying none was found where the model was trained. Now it reads DIR."""
    from retinopathy.data.synth import generate

    data, photos = tmp_path / "data", tmp_path / "photos"
    generate(data, n=4, size=SIZE, seed=0, progress=False)
    photos.mkdir()
    for p in data.glob("*.jpeg"):
        p.rename(photos / p.name)
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["config"] = {"data": str(data), "images": str(photos)}  # as train records them: absolute
    save_checkpoint(ckpt, tmp_path / "trained.pt")
    out = tmp_path / "grader.ts.pt"
    assert main(["export", str(tmp_path / "trained.pt"), "--format", "torchscript", "--out", str(out)]) == 0
    assert check_metadata(out, checkpoint)["parity"]["images"] == f"4 image(s) from {photos}"


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_the_json_points_at_the_model_card_and_says_what_the_model_learnt_from(tiny_run, tmp_path):
    """An exported model leaves its run behind: its JSON keeps the card's caveats' pointers (drawings, not eyes)."""
    assert main(["export", str(tiny_run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    meta = json.loads((tmp_path / "m.pt.json").read_text())
    assert meta["model_card"] == str(tiny_run / "checkpoints" / "MODEL_CARD.md")
    assert meta["trained_on_synthetic_drawings"] is True
    shutil.copy(tiny_run / "checkpoints" / "best.pt", tmp_path / "best.pt")  # copied out of its run: its options
    assert main(["export", str(tmp_path / "best.pt"), "--format", "torchscript", "--out", str(tmp_path / "c.pt")]) == 0
    meta = json.loads((tmp_path / "c.pt.json").read_text())  # name the data it learnt from
    assert meta["trained_on_synthetic_drawings"] is True and meta["model_card"] is None
