"""Graham's local-colour normalisation (on a drawn disc with a lighting gradient and two lesions), the ``graham``
preset built from it, and JPEGs decoded at reduced scale (``open_image(path, min_size)`` with ``draft``)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retinopathy.data import Preprocessing, build_transform, open_image
from retinopathy.data.preprocess import GrahamNormalize
from retinopathy.data.synth import render_fundus

S = 256
DARK, BRIGHT = (90, 128), (170, 100)  # (x, y) of a small dark spot (haemorrhage) and a bright one (exudate)


def radius_grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    c = (size - 1) / 2
    return xx, yy, np.hypot(xx - c, yy - c)


@pytest.fixture(scope="module")
def fundus() -> Image.Image:
    """A disc filling the frame on black, lit unevenly (red 60 -> 200 from left to right), with two 7 px spots."""
    xx, yy, r = radius_grid(S)
    light = 60 + 140 * xx / (S - 1)
    img = np.stack([light * f for f in (1.0, 0.6, 0.35)], -1)
    img[r >= S / 2 - 1] = 0
    for (x, y), delta in ((DARK, -45), (BRIGHT, 45)):
        spot = np.hypot(xx - x, yy - y) <= 3
        img[spot] = np.clip(img[spot] + delta, 0, 255)
    return Image.fromarray(img.round().astype(np.uint8))


@pytest.fixture(scope="module")
def graham(fundus) -> np.ndarray:
    out = GrahamNormalize()(fundus)
    assert out.size == fundus.size and out.mode == "RGB"
    return np.asarray(out).astype(int)


def test_graham_removes_the_lighting_gradient(fundus, graham):
    xx, yy, r = radius_grid(S)
    background = (r < 0.35 * S) & (np.hypot(xx - DARK[0], yy - DARK[1]) > 15) \
        & (np.hypot(xx - BRIGHT[0], yy - BRIGHT[1]) > 15)
    before = np.asarray(fundus).astype(int)[background]
    assert (before.max(0) - before.min(0) >= [90, 55, 30]).all()  # the input: a strong left-to-right gradient
    after = graham[background]
    assert np.abs(after - 128).max() <= 4  # flat grey wherever the retina is locally even
    assert np.abs(after.mean(0) - 128).max() < 0.5 and after.std(0).max() < 1.5
    left, right = graham[(xx < 0.4 * S) & background], graham[(xx > 0.6 * S) & background]
    assert np.abs(left.mean(0) - right.mean(0)).max() < 1  # no trace of the darker left half


def test_graham_makes_small_lesions_stand_out(fundus, graham):
    (dx, dy), (bx, by) = DARK, BRIGHT
    assert (graham[dy, dx] < 40).all()  # 45 darker in the input: ~4x that below grey
    assert (graham[by, bx] > 215).all()
    assert (graham[dy - 1:dy + 2, dx - 1:dx + 2] < 60).all() and (graham[by - 1:by + 2, bx - 1:bx + 2] > 195).all()


def test_graham_masks_the_rim_with_grey(graham):
    _, _, r = radius_grid(S)
    rim = r > 0.9 * S / 2 + 1  # outside 90 % of the circle, the bright/dark halo of the disc edge included
    assert (graham[rim] == 128).all()
    inside = r < 0.9 * S / 2 - 2
    assert (graham[inside] != 128).any()  # inside, the image is kept (the spots, the noise of rounding)


def test_graham_preset_is_the_fov_crop_then_graham():
    """The ``graham`` preset's pipeline: a square around the field of view, then the normalisation."""
    img = render_fundus(np.random.default_rng(7), 160, 3, "right")
    size = 64
    graham = build_transform(Preprocessing("graham", size), uint8=True)(img).permute(1, 2, 0).numpy().astype(int)
    fov = build_transform(Preprocessing("fov", size), uint8=True)(img)
    assert graham.shape == (size, size, 3)
    expected = np.asarray(GrahamNormalize()(Image.fromarray(fov.permute(1, 2, 0).numpy()))).astype(int)
    assert np.array_equal(graham, expected)
    _, _, r = radius_grid(size)
    assert (graham[r > 0.9 * size / 2 + 0.5] == 128).all()
    centre = graham[r < 0.3 * size]
    assert np.abs(centre.mean(0) - 128).max() < 10  # the orange retina became grey around 128 ...
    assert np.abs(fov.permute(1, 2, 0).numpy()[r < 0.3 * size].mean(0) - 128).max() > 30  # ... which it is not
    prep = Preprocessing("graham", size)
    assert prep.mean == (0.5, 0.5, 0.5) and prep.std == (0.1, 0.1, 0.1)  # grey 128 -> ~0 after normalising


# ------------------------------------------------------------------------------------------- draft decoding
@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    """A 2048 x 1536 JPEG (red ramp left to right, green ramp top to bottom) and its full decode."""
    w, h = 2048, 1536
    yy, xx = np.mgrid[:h, :w]
    a = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 100)], -1).astype(np.uint8)
    path = tmp_path_factory.mktemp("draft") / "big.jpeg"
    Image.fromarray(a).save(path, quality=92)
    return path


@pytest.mark.parametrize("min_size, expected", [(100, (256, 192)), (200, (512, 384)), (300, (512, 384)),
                                                (512, (1024, 768)), (800, (2048, 1536))])
def test_large_jpeg_is_decoded_at_the_smallest_scale_that_keeps_min_size(big_jpeg, min_size, expected):
    """JPEG scales 1/8, 1/4, 1/2, 1: the smallest whose both sides are at least ``min_size``."""
    img = open_image(big_jpeg, min_size)
    assert img.mode == "RGB" and img.size == expected
    assert min(img.size) >= min_size


def test_reduced_decode_is_the_same_picture(big_jpeg):
    full = open_image(big_jpeg)
    assert full.size == (2048, 1536)
    small = open_image(big_jpeg, 300)
    assert small.size == (512, 384)
    reference = np.asarray(full.resize(small.size, Image.BOX)).astype(float)
    assert np.abs(np.asarray(small).astype(float) - reference).mean() < 3


def test_eyepacs_sized_jpeg_is_decoded_at_a_quarter(tmp_path):
    """The README's example: a 4752 x 3168 photograph that will become 512 px is decoded at 1188 x 792."""
    path = tmp_path / "eye.jpeg"
    Image.new("RGB", (4752, 3168), (120, 60, 30)).save(path)
    assert open_image(path, 512).size == (1188, 792)


def test_a_camera_jpeg_with_a_second_image_is_decoded_at_reduced_scale_too(big_jpeg, tmp_path):
    """Cameras and phones write MPO files (a JPEG followed by a second image; Pillow names their format MPO)."""
    path = tmp_path / "camera.jpeg"
    with Image.open(big_jpeg) as img:
        img.save(path, "MPO", save_all=True, append_images=[img.resize((64, 48))])
    with Image.open(path) as img:
        assert img.format == "MPO"
    assert open_image(path, 300).size == (512, 384)


def test_png_is_never_reduced(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (1024, 768), (10, 20, 30)).save(path)
    assert open_image(path, 100).size == (1024, 768)


def test_mean_and_std_take_any_sequence_of_three():
    """A NumPy array or a tensor (as torchvision users pass) works; two values or a std of 0 are refused at once,
    not as a shape error at the first image."""
    import torch

    arrays = Preprocessing("lab", 64, np.array([0.4, 0.3, 0.2]), torch.tensor([0.2, 0.2, 0.2]))
    assert arrays.mean == pytest.approx((0.4, 0.3, 0.2)) and arrays.std == pytest.approx((0.2, 0.2, 0.2))
    for mean, std in (((0.4, 0.3), None), (None, (0.2, 0.0, 0.2))):
        with pytest.raises(ValueError, match="three values each"):
            Preprocessing("lab", 64, mean, std)


def test_grahams_blur_is_one_thirtieth_of_the_side():
    """4 x image - 4 x its Gaussian blur (sigma = side / 30) + 128, grey outside 0.9 of the inscribed circle."""
    from PIL import ImageFilter

    img = render_fundus(np.random.default_rng(0), 300, 2, "left")
    out = np.asarray(GrahamNormalize()(img)).astype(int)
    blur = np.asarray(img.filter(ImageFilter.GaussianBlur(10))).astype(int)
    expected = np.clip(4 * np.asarray(img).astype(int) - 4 * blur + 128, 0, 255)
    yy, xx = np.ogrid[:300, :300]
    inside = (xx - 149.5) ** 2 + (yy - 149.5) ** 2 <= (0.9 * 150) ** 2
    assert np.array_equal(out[inside], expected[inside]) and (out[~inside] == 128).all()


def test_a_square_photograph_is_left_uncropped_only_when_its_circle_fills_it():
    """FovCrop leaves a photograph already cropped to its field of view as it is (cropping again would only
    resample it); one whose circle is 5 % off centre or smaller is cropped."""
    from PIL import ImageDraw

    from retinopathy.data.preprocess import FovCrop

    def disc(box) -> Image.Image:
        img = Image.new("RGB", (200, 200))
        ImageDraw.Draw(img).ellipse(box, fill=(180, 90, 40))
        return img

    filled = disc((0, 0, 199, 199))
    assert FovCrop()(filled) is filled
    for box in ((20, 10, 199, 189), (10, 10, 189, 189)):  # 5 % off centre; 10 % smaller
        img = disc(box)
        cropped = FovCrop()(img)
        assert cropped is not img and cropped.size != img.size


def test_the_circle_found_while_decoding_is_not_fitted_again(tmp_path, monkeypatch):
    """The field-of-view presets fit the circle once per photograph: FovCrop takes the one open found."""
    from torchvision.transforms import v2

    import retinopathy.data.images as images
    import retinopathy.data.preprocess as preprocess
    from retinopathy.data.preprocess import FovCrop
    from retinopathy.data.transforms import geometry

    render_fundus(np.random.default_rng(0), 512, 2, "left").save(tmp_path / "eye.jpeg", quality=95)
    prep = Preprocessing("fov", 128)
    expected = np.asarray(v2.Compose(geometry(prep))(prep.open(tmp_path / "eye.jpeg").copy()))  # (a copy: no circle)
    fits = []
    counted = lambda img, *a, real=preprocess.find_fov: fits.append(img.size) or real(img, *a)  # noqa: E731
    monkeypatch.setattr(images, "find_fov", counted)
    monkeypatch.setattr(preprocess, "find_fov", counted)
    got = np.asarray(v2.Compose(geometry(prep))(prep.open(tmp_path / "eye.jpeg")))
    assert len(fits) == 1 and np.array_equal(got, expected)
    shrunk = prep.open(tmp_path / "eye.jpeg")
    shrunk.thumbnail((64, 64))  # changed in place: its circle is fitted again
    assert np.array_equal(np.asarray(FovCrop()(shrunk)), np.asarray(FovCrop()(shrunk.copy())))


def test_augment_presets_do_what_they_say():
    """none: the image as evaluated; flips: one of its four flips; fundus (the default): also any rotation, a small
    scale and shift, and brightness/contrast/colour jitter."""
    import torch

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))  # no symmetry to hide a change
    prep = Preprocessing("lab", 32)
    plain = build_transform(prep, uint8=True)(photo)
    flips = [plain, plain.flip(-1), plain.flip(-2), plain.flip(-1, -2)]
    torch.manual_seed(0)
    seen = {name: [build_transform(prep, train=True, augment=name, uint8=True)(photo) for _ in range(8)]
            for name in ("none", "flips", "fundus")}
    assert all(torch.equal(x, plain) for x in seen["none"])
    assert all(any(torch.equal(x, f) for f in flips) for x in seen["flips"])
    assert len({tuple(x.flatten().tolist()) for x in seen["flips"]}) > 1  # it does flip
    moved = [x for x in seen["fundus"] if not any(torch.equal(x, f) for f in flips)]
    assert len(moved) == 8  # every draw rotates or rescales (a flip alone would be one of the four)
    grey = Image.new("RGB", (32, 32), (128, 100, 80))  # moved, still the same colour at its centre: unless jittered
    centres = {tuple(build_transform(prep, train=True, augment="fundus", uint8=True)(grey)[:, 16, 16].tolist())
               for _ in range(8)}
    assert len(centres) > 4
    corners = [x[:, :3, :3].float().mean().item() for x in seen["fundus"]]
    assert min(corners) < 10  # rotated: black corners come in
