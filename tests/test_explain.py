"""Grad-CAM: the layer rule, heatmaps that point at the lesion, and ``predict --cam`` PNGs.

The localisation test uses a ResNet18 whose weights are set by hand to see exactly one thing, a bright
yellow blob (training one from scratch takes minutes on a busy 2-core machine): channel 0 of ``conv1``
averages the green channel and its BatchNorm bias keeps only the blob; every residual block passes it on
(zero convolutions), each downsampling block takes 2x2 means; ``fc`` reads it into grade 4 (or the score).
So the grade-4 evidence lives in the layer4 cell of the blob's quadrant, and a correct Grad-CAM must put
its mass there; a constant, flipped or transposed heatmap fails.
"""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from retinopathy.cli.main import main
from retinopathy.data import Normalize, Preprocessing, build_transform
from retinopathy.errors import RetinopathyError
from retinopathy.inference.explain import GradCam, cam_layer
from retinopathy.inference.predict import predict_batch
from retinopathy.models.factory import Grader
from retinopathy.models.objectives import make_objective
from retinopathy.training.checkpoint import load_checkpoint, save_checkpoint

SIZE = 64
QUADRANTS = {"top_left": (16, 16), "top_right": (48, 16), "bottom_left": (16, 48), "bottom_right": (48, 48)}
OPPOSITE = {"top_left": "bottom_right", "top_right": "bottom_left", "bottom_left": "top_right",
            "bottom_right": "top_left"}


def fundus(blob_at: tuple[int, int] | None) -> Image.Image:
    """Black square, orange disc, and optionally a bright yellow blob centred at ``blob_at`` (x, y)."""
    img = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    d = ImageDraw.Draw(img)
    d.ellipse((1, 1, SIZE - 2, SIZE - 2), fill=(200, 90, 40))
    if blob_at:
        x, y = blob_at
        d.ellipse((x - 7, y - 7, x + 7, y + 7), fill=(255, 240, 120))
    return img


def blob_detector(objective: str = "classification") -> Grader:
    outputs = make_objective(objective).outputs
    model = Grader("resnet18", outputs, "linear")
    net = model.net
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
        net.conv1.weight[0, 1] = 1 / 49  # mean of the normalised green channel over 7x7
        net.bn1.bias[0] = -2.0  # only the blob is > 2 std above the mean green; disc and background are not
        for layer in (net.layer2, net.layer3, net.layer4):
            layer[0].conv1.weight[0, 0, 1:, 1:] = 0.25  # 2x2 mean with stride 2: no overlap between cells
            layer[0].conv2.weight[0, 0, 1, 1] = 1.0
        net.fc.weight.zero_()
        net.fc.bias.zero_()
        if objective == "classification":
            net.fc.weight[4, 0] = 1.0
        else:
            net.fc.weight[:, 0] = 1.0
    return model.eval()


def batch(images) -> tuple[torch.Tensor, torch.Tensor]:
    prep = Preprocessing("lab", SIZE)
    t = build_transform(prep, train=False, uint8=True)
    raw = torch.stack([t(im) for im in images])
    return raw, Normalize(prep.mean, prep.std)(raw)


def quadrant_mass(heat: np.ndarray) -> dict[str, float]:
    h = SIZE // 2
    return {"top_left": heat[:h, :h].sum(), "top_right": heat[:h, h:].sum(),
            "bottom_left": heat[h:, :h].sum(), "bottom_right": heat[h:, h:].sum()}


def test_a_heatmap_of_rounding_noise_is_empty():
    """A model whose grade hardly depends on the image (a dead head) explains nothing: scaled to its peak, its
    1e-20-sized Grad-CAM would look like a heatmap."""
    model = blob_detector()
    with torch.no_grad():
        model.net.fc.weight *= 1e-20
    _, x = batch([fundus(QUADRANTS["top_left"])])
    heat = GradCam(model, make_objective("classification"), image_size=SIZE)(x, torch.tensor([4]))
    assert not heat.any()
    assert GradCam(blob_detector(), make_objective("classification"), image_size=SIZE)(x, torch.tensor([4])).any()
    confident = blob_detector("ordinal")  # every cumulative logit near -20: a saturated, tiny (1e-9) but real CAM
    with torch.no_grad():
        confident.net.fc.bias.fill_(-20.0)
    heat = GradCam(confident, make_objective("ordinal"), image_size=SIZE)(x, torch.tensor([0]))
    mass = quadrant_mass(heat[0].numpy())
    assert heat.any() and max(mass, key=mass.get) == "top_left" and mass["top_left"] > 1.5 * mass["bottom_right"]


def test_a_flat_heatmap_is_empty():
    """A model that ignores the image (every layer4 cell alike) points nowhere: scaled to its peak, its even
    Grad-CAM would paint the whole photograph as maximal evidence."""
    model = blob_detector()
    with torch.no_grad():
        model.net.conv1.weight.zero_()
        model.net.bn1.bias[0] = 1.0  # the same activation at every pixel, whatever the image
    _, x = batch([fundus(QUADRANTS["top_left"]), fundus(None)])
    out = model(x)
    assert torch.allclose(out[0], out[1]) and out[0, 4] > 0  # a real, input-independent grade-4 logit
    assert not GradCam(model, make_objective("classification"), image_size=SIZE)(x, torch.tensor([4, 4])).any()


def test_gradcam_runs_in_eval_mode_and_takes_plain_grades():
    """A model left in training mode: BatchNorm statistics untouched, and the same heatmap as in eval mode; an
    int grade serves every image."""
    model = blob_detector()
    _, x = batch([fundus(QUADRANTS["top_left"]), fundus(QUADRANTS["bottom_right"])])
    expected = GradCam(model, make_objective("classification"), image_size=SIZE)(x, torch.tensor([4, 4]))
    model.train()
    stats = model.net.bn1.running_mean.clone()
    heat = GradCam(model, make_objective("classification"), image_size=SIZE)(x, 4)
    assert torch.equal(model.net.bn1.running_mean, stats) and model.training and torch.allclose(heat, expected)
    model.net.layer1.eval()  # a frozen part (as training's frozen backbone) stays in eval mode afterwards
    GradCam(model, make_objective("classification"), image_size=SIZE)(x, 4)
    assert model.training and not model.net.layer1.training and not model.net.layer1[0].bn1.training


def test_quadrant_mass_rejects_a_constant_heatmap():
    mass = quadrant_mass(np.full((SIZE, SIZE), 0.7))
    assert not mass["top_left"] > 1.5 * mass["bottom_right"]


@pytest.mark.parametrize("objective", ["classification", "regression", "ordinal", "ordinal+ce"])
def test_heatmap_mass_is_in_the_lesion_quadrant(objective):
    torch.manual_seed(0)
    model = blob_detector(objective)
    obj = make_objective(objective)
    names = list(QUADRANTS)
    _, x = batch([fundus(QUADRANTS[q]) for q in names] + [fundus(None)])
    _, _, grades = predict_batch(model, obj, x)
    if objective == "classification":
        assert grades.tolist() == [4, 4, 4, 4, 0]
    cam = GradCam(model, obj, image_size=SIZE)
    assert cam.layer is model.net.layer4
    heat = cam(x, grades)
    assert heat.shape == (5, SIZE, SIZE)
    assert float(heat.min()) >= 0 and float(heat.max()) <= 1
    for i, q in enumerate(names):
        mass = quadrant_mass(heat[i].numpy())
        assert max(mass, key=mass.get) == q, (q, mass)
        assert mass[q] > 1.5 * mass[OPPOSITE[q]], (q, mass)


@pytest.mark.parametrize("arch, layer", [("mobilenet_v3_small", "features"), ("efficientnet_b0", "features"),
                                         ("densenet121", "features"), ("convnext_tiny", "features"),
                                         ("regnet_y_400mf", "trunk_output"), ("resnet18", "layer4")])
def test_cam_layer_rule(arch, layer):
    model = Grader(arch, 5)
    assert cam_layer(model, image_size=SIZE) is model.net.get_submodule(layer)
    s2d = Grader(arch, 5, space_to_depth=2)  # probed through its stem (12 channels into the network)
    assert cam_layer(s2d, image_size=2 * SIZE) is s2d.net.get_submodule(layer)


def test_cam_layer_looks_inside_module_lists():
    """MaxViT's blocks sit in a ModuleList, which its forward never calls: the layer is the last block (512 x 7 x 7
    at 224 px), not the stem (112 x 112), the only direct child that hooks saw."""
    model = Grader("maxvit_t", 5)
    assert cam_layer(model, image_size=224) is model.net.blocks[-1]


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "resnet18"])
def test_cam_layer_says_when_the_input_is_too_small_for_a_feature_map(arch):
    """MobileNet and a ResNet's layer4 shrink 32 px to 1x1: the error says why there is nothing to explain (a ResNet
    gave blank heatmaps, blamed on a model that ignores its input)."""
    with pytest.raises(RetinopathyError, match="at 32 px its last feature map shrinks to 1x1, which locates nothing"):
        cam_layer(Grader(arch, 5), image_size=32)


def test_cam_layer_refuses_vision_transformers():
    with pytest.raises(RetinopathyError, match="transformer"):
        cam_layer(Grader("vit_b_32", 5), image_size=224)


def test_predict_cam_writes_one_png_per_image(tmp_path, capsys):
    ckpt = tmp_path / "best.pt"
    prep = Preprocessing("lab", SIZE)
    save_checkpoint({"model": blob_detector().state_dict(), "epoch": 0, "phase": "finetune", "best": None,
                     "config": {}, "model_info": {"arch": "resnet18", "head": "linear", "objective": "classification",
                                                  "num_outputs": 5, "num_classes": 5, "preprocessing": prep.to_dict(),
                                                  "thresholds": [0.5, 1.5, 2.5, 3.5]}}, ckpt)
    photos = tmp_path / "photos"
    photos.mkdir()
    for q, at in QUADRANTS.items():
        fundus(at).resize((96, 80)).save(photos / f"{q}.png")  # not square: the preprocessing makes it so
    fundus(None).save(photos / "healthy.jpeg")
    out, cams = tmp_path / "pred.csv", tmp_path / "cams"
    assert main(["predict", str(ckpt), str(photos), "--cam", str(cams), "--out", str(out), "--workers", "0",
                 "--quiet"]) == 0
    assert "the model's last feature map, 2x2 cells at 64 px, enlarged: they show which part" in \
        capsys.readouterr().err  # a ResNet's layer4 at 64 px
    with open(out, newline="") as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    assert sorted(p.name for p in cams.iterdir()) == sorted(f"{n}.png" for n in rows)
    for name, row in rows.items():
        assert row["predicted_grade"] == ("0" if name == "healthy" else "4")
        with Image.open(row["heatmap"]) as png:  # the image seen, enlarged to 256 px, beside the heatmap; a caption
            assert png.format == "PNG" and png.mode == "RGB" and png.width == 2 * 256 + 6 and png.height > 256 + 30
            pixels = np.asarray(png, dtype=float)
        assert (pixels[256:] < 100).any()  # caption text under the pictures
        if name in QUADRANTS:  # the file's heat lies on the blob: the overlay differs most from the photo there
            coloured = np.abs(pixels[:256, 256 + 6:] - pixels[:256, :256]).sum(2)
            quarter = {q: coloured[4 * y - 64:4 * y + 64, 4 * x - 64:4 * x + 64].mean()
                       for q, (x, y) in QUADRANTS.items()}
            assert max(quarter, key=quarter.get) == name


def test_heatmap_captions_say_predicted_true_grade_and_cuts(tmp_path, monkeypatch):
    """The caption names the grade as predicted, beside the labels file's grade, and for a score the thresholds
    that cut it; a long path keeps its file name."""
    from retinopathy.inference import explain
    from retinopathy.inference.explain import _fit

    ckpt = tmp_path / "best.pt"
    save_checkpoint({"model": blob_detector("regression").state_dict(), "epoch": 0, "phase": "finetune",
                     "best": None, "config": {},
                     "model_info": {"arch": "resnet18", "head": "linear", "objective": "regression", "num_outputs": 1,
                                    "num_classes": 5, "preprocessing": Preprocessing("lab", SIZE).to_dict(),
                                    "thresholds": [0.5, 1.5, 2.5, 3.25]}}, ckpt)
    photos = tmp_path / "photos"
    photos.mkdir()
    fundus(QUADRANTS["top_left"]).save(photos / "7_left.png")
    (tmp_path / "labels.csv").write_text("image,level\n7_left,2\n")
    captions = []
    monkeypatch.setattr(explain, "save_heatmap", lambda image, heat, caption, path: captions.append(caption) or path)
    assert main(["predict", str(ckpt), str(tmp_path / "labels.csv"), "--images", str(photos), "--cam",
                 str(tmp_path / "cams"), "--out", str(tmp_path / "p.csv"), "--workers", "0", "--quiet"]) == 0
    [[said, *_]] = captions
    assert said.startswith(f"{photos / '7_left.png'}: predicted grade ")
    assert said.endswith("(grades cut at 0.50, 1.50, 2.50, 3.25); true grade 2 (moderate)")
    Image.new("RGB", (SIZE, SIZE), (3, 2, 1)).save(photos / "7_left.png")  # nearly black; flips averaged
    assert main(["predict", str(ckpt), str(tmp_path / "labels.csv"), "--images", str(photos), "--cam",
                 str(tmp_path / "cams"), "--out", str(tmp_path / "p.csv"), "--workers", "0", "--quiet", "--tta"]) == 0
    assert captions[-1][2:4] == ["the grade averages flipped views (--tta); the heatmap is of the image as given",
                                 "warning: nearly black (its brightest pixels reach 2 of 255): no retina to "
                                 "grade, so its grade means nothing"]
    font = explain.ImageFont.load_default(size=13)
    path = "/clinic/" + "a_rather_long_folder_name/" * 8 + "patient_1177_right.jpeg:"
    lines = _fit(f"{path} predicted grade 4", font, 300)
    assert lines[0].startswith("...") and lines[0].endswith("patient_1177_right.jpeg:")
    assert font.getlength(lines[0]) <= 300 and lines[1:] == ["predicted grade 4"]
    assert _fit("abc", font, 5) == ["..."]  # narrower than "...": it ends (it used to loop)


def test_heatmaps_explain_the_grade_after_eye_blending(tmp_path, monkeypatch, capsys):
    """With --blend-eyes a classification model's row grade can be the blended one: its heatmap is of that grade
    (the photograph's own logit of it), and heatmaps with nothing positive are named in a warning; an eye graded
    without its partner is told."""
    from retinopathy.models.objectives import Objective

    ckpt = tmp_path / "best.pt"
    save_checkpoint({"model": blob_detector().state_dict(), "epoch": 0, "phase": "finetune", "best": None,
                     "config": {}, "model_info": {"arch": "resnet18", "head": "linear", "objective": "classification",
                                                  "num_outputs": 5, "num_classes": 5,
                                                  "preprocessing": Preprocessing("lab", SIZE).to_dict(),
                                                  "thresholds": [0.5, 1.5, 2.5, 3.5], "blend_eyes": 0.5}}, ckpt)
    photos = tmp_path / "photos"
    photos.mkdir()
    fundus(QUADRANTS["top_left"]).save(photos / "7_left.png")
    fundus(None).save(photos / "7_right.png")
    blended = Objective.blended

    def to_grade_1(self, probs, scores, patients, weight):
        probs, scores, _ = blended(self, probs, scores, patients, weight)
        return probs, scores, np.ones(len(probs), dtype=int)

    explained = []
    call = GradCam.__call__
    monkeypatch.setattr(Objective, "blended", to_grade_1)
    monkeypatch.setattr(GradCam, "__call__", lambda self, x, grades: explained.extend(grades.tolist())
                        or call(self, x, grades))
    assert main(["predict", str(ckpt), str(photos), "--cam", str(tmp_path / "cams"), "--out",
                 str(tmp_path / "p.csv"), "--workers", "0", "--quiet"]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        assert [r["predicted_grade"] for r in csv.DictReader(f)] == ["1", "1"]
    assert explained == [1, 1]
    assert "heatmap(s) show no region" in capsys.readouterr().err  # no blob: nothing raises grade 1's logit
    assert main(["predict", str(ckpt), str(photos / "7_left.png"), "--out", str(tmp_path / "one.csv"),
                 "--workers", "0", "--quiet"]) == 0
    assert "1 image(s) without the patient's other eye (e.g. 7_left) are graded alone" in capsys.readouterr().err
    checkpoint = load_checkpoint(ckpt)  # tuned without mixing: an eye alone is graded as the model was tuned
    checkpoint["model_info"]["blend_eyes"] = 0.0
    save_checkpoint(checkpoint, ckpt)
    assert main(["predict", str(ckpt), str(photos / "7_left.png"), "--out", str(tmp_path / "one.csv"),
                 "--blend-eyes", "0.4", "--workers", "0", "--quiet"]) == 0
    assert "other eye" not in capsys.readouterr().err



def test_a_model_blind_to_its_input_gets_blank_heatmaps_and_a_warning(tmp_path, capsys):
    """Every pixel alike after the stem, so the photograph never reaches the head: the outputs are the same for
    every image, yet Grad-CAM still paints where the last map meets the padding (a corner tap here). Predict says
    the model does not respond to its input and leaves those heatmaps blank."""
    model = blob_detector()
    net = model.net
    with torch.no_grad():
        net.conv1.weight.zero_()
        net.bn1.bias[0] = 1.0
        net.layer4[0].conv2.weight[0, 0] = 0.0
        net.layer4[0].conv2.weight[0, 0, 0, 0] = 1.0
    x = torch.randn(2, 3, SIZE, SIZE)
    assert GradCam(model, make_objective("classification"), image_size=SIZE)(x, 4).any()  # red, for no reason
    ckpt = tmp_path / "best.pt"
    save_checkpoint({"model": model.state_dict(), "epoch": 0, "phase": "finetune", "best": None,
                     "config": {}, "model_info": {"arch": "resnet18", "head": "linear", "objective": "classification",
                                                  "num_outputs": 5, "num_classes": 5,
                                                  "preprocessing": Preprocessing("lab", SIZE).to_dict(),
                                                  "thresholds": [0.5, 1.5, 2.5, 3.5]}}, ckpt)
    photos = tmp_path / "photos"
    photos.mkdir()
    fundus(QUADRANTS["top_left"]).save(photos / "1_left.png")
    fundus(None).save(photos / "2_left.png")
    assert main(["predict", str(ckpt), str(photos), "--cam", str(tmp_path / "cams"), "--out",
                 str(tmp_path / "p.csv"), "--workers", "0", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "the model gives the same outputs for all 2 images" in err and "heatmaps are left blank" in err
    assert "2 heatmap(s) show no region" in err
    confident = blob_detector()  # sees the blob, but sure of grade 0 everywhere: its probabilities saturate
    with torch.no_grad():
        confident.net.fc.bias[0] = 40.0
    save_checkpoint({**load_checkpoint(ckpt), "model": confident.state_dict()}, ckpt)
    assert main(["predict", str(ckpt), str(photos), "--cam", str(tmp_path / "cams2"), "--out",
                 str(tmp_path / "p2.csv"), "--workers", "0", "--quiet"]) == 0
    assert "same outputs" not in capsys.readouterr().err


def test_coarse_heatmaps_are_told_from_the_map_they_enlarge():
    """A ResNet's layer4 is the image / 32: 2x2 at 64 px (told), 4x4 at 128 px and 7x7 at 224 (not)."""
    from retinopathy.inference.explain import coarse_note

    model = blob_detector()
    for size, grid in ((64, (2, 2)), (128, (4, 4)), (224, (7, 7))):
        cam = GradCam(model, make_objective("classification"), image_size=size)
        cam(torch.zeros(1, 3, size, size), 4)
        assert cam.grid == grid
        assert bool(coarse_note(cam.grid, size)) == (size == 64)
    assert coarse_note((3, 3), 96) and coarse_note((2, 4), 64)  # below 4x4 in either direction


def test_heatmap_captions_fit_the_picture():
    """A long file name is cut, a long sentence wrapped: no caption text runs off the right edge."""
    from retinopathy.inference.explain import heatmap_figure

    image, heat = torch.full((3, 40, 100), 120, dtype=torch.uint8), torch.rand(40, 100)
    caption = ["x" * 200 + ": grade 4 (proliferative)", "left: the image the model saw; right: " + "where " * 40]
    figure = np.asarray(heatmap_figure(image, heat, caption).convert("L"))
    scale = -(-256 // 40)  # the short side enlarged to at least 256 px, by a whole factor
    assert figure.shape[1] == 2 * 100 * scale + 6
    text = figure[40 * scale:]
    assert text[:, -6:].min() > 200  # nothing written into the right margin
    assert (text < 100).any(1).sum() > 10 * 4  # several lines of text


def test_the_coarse_heatmap_warning_points_at_the_callers_line(tmp_path):
    """predict.run's warnings are DataWarnings attributed to the program that called it (as collect_items's are),
    not to a line inside the package."""
    from retinopathy.errors import DataWarning
    from retinopathy.inference.predict import collect_items, run

    fundus(None).resize((64, 64)).save(tmp_path / "1_left.png")
    items = collect_items([tmp_path / "1_left.png"])
    model = blob_detector().eval()
    with pytest.warns(DataWarning, match="2x2 cells at 64 px") as said:
        run(model, make_objective("classification"), Preprocessing("lab", 64), items, cam_dir=tmp_path / "cams",
            progress=False)
    assert {w.filename for w in said if "cells at" in str(w.message)} == {__file__}
