"""The field-of-view crop finds the round retina: on drawn circles of known centre and radius (clipped at the
top and bottom as EyePACS photographs are) and on the real photographs of ``fundus-real``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from retinopathy.data.images import open_image
from retinopathy.data.preprocess import FovCrop, find_fov

W, H = 640, 440


def drawn_fundus(cx: float, cy: float, r: float, band_top: int = 0, band_bottom: int = 0, notch: bool = False,
                 seed: int = 0, text: bool = False) -> Image.Image:
    """A textured orange disc on black, optionally with black bands over the top/bottom rows (the camera's
    flat mask), EyePACS's small notch on the right rim, and white labels burned into two corners."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W] + 0.5
    d = np.hypot(xx - cx, yy - cy) / r
    shade = np.clip(1.0 - 0.45 * d ** 2, 0, 1)[..., None] * np.array([200.0, 110.0, 50.0])
    img = np.clip(shade + rng.normal(0, 6, (H, W, 3)), 0, 255)
    img[d > 1] = rng.uniform(0, 4, (int((d > 1).sum()), 3))
    img[:band_top] = 0
    img[H - band_bottom:] = 0
    out = Image.fromarray(img.astype(np.uint8), "RGB")
    if notch:
        ImageDraw.Draw(out).rectangle([cx + r - 2, cy - 0.55 * r, cx + r + 10, cy - 0.5 * r], fill=(150, 90, 40))
    if text:
        for box in ([10, 10, 90, 40], [W - 80, H - 40, W - 10, H - 10]):
            ImageDraw.Draw(out).rectangle(box, fill=(255, 255, 255))
    return out


CASES = {
    "clipped at top and bottom by the frame": dict(cx=320, cy=220, r=260),
    "clipped at top and bottom by the frame, off-centre": dict(cx=300, cy=250, r=260),
    "clipped at the top only": dict(cx=320, cy=190, r=200),
    "clipped at the bottom only": dict(cx=330, cy=250, r=200),
    "whole circle with margin": dict(cx=320, cy=220, r=200),
    "clipped by the frame at the top, by a dark band at the bottom": dict(cx=320, cy=232, r=260, band_bottom=14),
    "dark bands at top and bottom, off-centre": dict(cx=330, cy=215, r=270, band_top=18, band_bottom=9),
    "notch on the right rim": dict(cx=320, cy=220, r=250, notch=True),
    "clipped at the left and right sides too (a tight crop)": dict(cx=300, cy=220, r=330),
    "white labels burned into two corners": dict(cx=320, cy=220, r=200, text=True),
}


@pytest.mark.parametrize("name", CASES)
def test_find_fov_on_drawn_circles(name):
    case = CASES[name]
    img = drawn_fundus(**case)
    cx, cy, r = find_fov(img)
    tol = 0.02 * case["r"]
    assert abs(r - case["r"]) <= tol, f"{name}: radius {r:.1f}, drawn {case['r']}"
    assert abs(cx - case["cx"]) <= tol and abs(cy - case["cy"]) <= tol, \
        f"{name}: centre ({cx:.1f}, {cy:.1f}), drawn ({case['cx']}, {case['cy']})"


def test_find_fov_at_any_resolution():
    """The answer is in pixels of the image given, whatever its size (it works on a thumbnail)."""
    img = drawn_fundus(320, 220, 260)
    small = img.resize((W // 4, H // 4), Image.BILINEAR)
    cx, cy, r = np.array(find_fov(small)) * 4
    assert abs(cx - 320) < 6 and abs(cy - 220) < 6 and abs(r - 260) < 6


def test_fov_and_graham_presets_crop_to_the_field_of_view():
    """The ``fov`` preset (and ``graham``, which adds its normalisation) is the crop, then the resize: the retina
    fills the frame, and a copy already cropped so is left as it is (no second resampling)."""
    from torchvision.transforms import v2

    from retinopathy.data.transforms import Preprocessing, build_transform

    img = drawn_fundus(320, 220, 200)
    got = build_transform(Preprocessing("fov", 64), uint8=True)(img)
    cropped = FovCrop()(img)
    assert cropped.width == cropped.height and abs(cropped.width - 400) <= 8  # the circle's diameter
    assert torch.equal(got, v2.PILToTensor()(v2.Resize((64, 64), antialias=True)(cropped)))
    grey = got.float().mean(0)
    assert grey[32, 1] > 60 and grey[32, -2] > 60 and grey[1, 32] > 60 and grey[0, 0] < 10  # touches every side
    assert FovCrop()(cropped) is cropped


def test_find_fov_on_a_black_image_falls_back_to_the_centre():
    assert find_fov(Image.new("RGB", (300, 200))) == (150, 100, 100)


def outside_share(img: Image.Image, fov) -> float:
    """The share of the retina's pixels (brighter than 0.07 x the 99th percentile) outside the crop square."""
    grey = np.asarray(img.convert("L"), dtype=np.float32)
    ys, xs = np.nonzero(grey > 0.07 * np.percentile(grey, 99))
    cx, cy, r = fov
    return float(np.mean(np.maximum(np.abs(xs + 0.5 - cx), np.abs(ys + 0.5 - cy)) > r))


def test_a_disc_cut_straight_at_one_side_keeps_all_its_retina():
    """A straight dark band across the left of the disc: the fit runs through one side and came out too small,
    cutting 6 % of the retina off the crop; the radius grows to the retina's extent."""
    img = Image.new("RGB", (256, 256))
    ImageDraw.Draw(img).ellipse((18, 18, 238, 238), fill=(180, 90, 40))
    a = np.asarray(img).copy()
    a[:, :70] = 0
    img = Image.fromarray(a)
    assert outside_share(img, find_fov(img)) < 0.001


def test_photographs_clipped_at_the_sides_keep_their_retina(shared_data):
    """eyepacs-256 photographs whose field of view the frame cuts at the sides lost up to 10 % of the retina."""
    for name in ("16025_left", "14915_left", "15630_right", "14046_right", "11204_right", "13534_right"):
        img = open_image(shared_data / "eyepacs-256" / "images" / f"{name}.jpeg", 256)
        assert outside_share(img, find_fov(img)) < 0.01, name


def crop_scores(path) -> dict:
    """Where the retina is, before and after FovCrop, on a 256 px grid."""
    img = open_image(path, 512)
    grey = np.asarray(img.convert("L"), dtype=np.float32)
    ref = np.percentile(grey, 99)
    cx, cy, r = find_fov(img)
    ys, xs = np.nonzero(grey > 0.07 * ref)
    lost = ((xs < cx - r - 2) | (xs > cx + r + 2) | (ys < cy - r - 2) | (ys > cy + r + 2)).mean()
    crop = np.asarray(FovCrop()(img).convert("L").resize((256, 256), Image.BILINEAR), dtype=np.float32)
    yy, xx = np.mgrid[:256, :256] + 0.5
    d = np.hypot(xx - 128, yy - 128) / 128
    border = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]])
    return {"lost": lost, "outside_circle_bright": (crop[d > 1.04] > 0.07 * ref).mean(),
            "border_dark": (border < 0.07 * ref).mean(), "centre_dark": (crop[d < 0.5] < 0.07 * ref).mean(),
            "width_filled": (crop[118:138].max(axis=0) > 0.07 * ref).mean()}


def test_fov_crop_on_the_real_photographs(shared_data):
    """Every real photograph: the square keeps the whole retina, the circle fills it (bright only inside the
    inscribed circle), its border is mostly dark and its centre is not."""
    paths = sorted((shared_data / "fundus-real" / "images").glob("*.jpeg"))
    assert len(paths) >= 30
    failures = []
    for path in paths:
        s = crop_scores(path)
        ok = (s["lost"] < 0.002 and s["outside_circle_bright"] < 0.01 and s["border_dark"] > 0.6
              and s["centre_dark"] < 0.02 and s["width_filled"] > 0.95)
        if not ok:
            failures.append(f"{path.name}: " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()))
    assert not failures, "FOV crop missed the retina:\n" + "\n".join(failures)
