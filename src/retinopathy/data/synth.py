"""Synthetic colour fundus photographs with diabetic-retinopathy lesions, for tests and demos.

:func:`render_fundus` draws one photograph: black surround, a round field of view (FOV; ~30% clipped at
top and bottom as in EyePACS), orange-red retina with vignetting and choroidal texture, optic disc with
cup, macula, a branching vessel tree (veins and arteries, arcades around the macula) and the lesions of
the international clinical DR scale for the grade. All lengths are in units of the FOV radius ``R``.

Convention: a right eye has its optic disc on the viewer's right (nasal side) and its macula ~2.5 disc
diameters to the left of it; a left eye is the mirror image.

:func:`generate` writes a dataset in the ``kaggle`` or the course lab's ``lab`` layout. Every image has
its own random stream ``default_rng([seed, index])`` and the grades depend only on ``seed`` and ``n``,
so the files are byte-identical whatever the number of workers.
"""
from __future__ import annotations

import inspect
import math
import numbers
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..atomic import encoded, leftover, replacing, write_text
from ..errors import RetinopathyError
from ..progress import progress_bar
from ..workers import mapped, worker_count
from .formats import Sample
from .splits import split_patients

MARKER = "Synthetic"  # the first word of the README.txt that marks a folder this module wrote


def holds_data(folder: str | Path) -> bool:
    """Whether ``folder`` holds anything but what an interrupted generation leaves (its images and the temporary
    files of the images it was writing; it writes its labels and README.txt last): a dataset, labels, sub-folders or
    other files, which a new set must not write over."""
    folder = Path(folder)
    if not folder.exists():
        return False
    if not folder.is_dir():
        return True
    return any((p.suffix != ".jpeg" or p.is_dir()) and not leftover(p) for p in folder.iterdir()) \
        or (folder / "README.txt").exists()


def is_synthetic(folder: str | Path) -> bool:
    """Whether ``folder`` is a synthetic set written by :func:`generate` (its README.txt says so)."""
    readme = Path(folder) / "README.txt"
    return readme.exists() and readme.read_text(errors="replace").startswith(MARKER)

_RECORDED = {"format": (r"format: (\w+)", str), "n": (r"images: (\d+) of", int), "size": (r"size: (\d+) px", int),
             "seed": (r"seed: (-?\d+)", int), "balanced": (r"balanced: (True|False)", lambda v: v == "True"),
             "test_fraction": (r"test fraction: (\S+)", float)}  # what README.txt records, and how to read it


def made_otherwise(folder: str | Path, **options) -> dict:
    """{option: (made with, asked for)} for each of :func:`generate`'s ``options`` (defaults included) that the
    synthetic set in ``folder`` was made with otherwise, as its README.txt records; {} when none is, or when
    ``folder`` is no such set."""
    if not is_synthetic(folder):
        return {}
    text = (Path(folder) / "README.txt").read_text(errors="replace")
    asked = {k: p.default for k, p in inspect.signature(generate).parameters.items() if k in _RECORDED} | options
    if asked["format"] != "lab":
        asked.pop("test_fraction")  # a Kaggle-format set has no test split of its own
    made = {k: read(m[1]) for k, (pattern, read) in _RECORDED.items()
            if (m := re.search(rf"^{pattern}", text, re.M))}
    return {k: (made[k], v) for k, v in asked.items() if k in made and made[k] != v}


GRADE_MIX = (0.735, 0.070, 0.151, 0.025, 0.020)  # EyePACS class mix
SAME_GRADE = 0.85  # probability that a patient's second eye has the first eye's grade
FORMATS = ("kaggle", "lab")
_SCALE = {"vein": 2, "artery": 2, "red": 2, "bright": 2, "pale": 0.5}  # mask resolution / image resolution
# darkening factors (multiplied into the retina colour) and bright colours (blended over it)
_DARK = {"vein": (0.6, 0.34, 0.4), "artery": (0.78, 0.56, 0.6), "red": (0.55, 0.15, 0.15)}
_BRIGHT = {"bright": (1.0, 0.86, 0.5), "pale": (0.95, 0.82, 0.65)}


# ---------------------------------------------------------------------------------------------- grades
def _neighbour_matrix(p_same: float) -> np.ndarray:
    t = np.eye(5) * p_same
    for g in range(5):
        t[g, max(g - 1, 0)] += (1 - p_same) / 2
        t[g, min(g + 1, 4)] += (1 - p_same) / 2
    return t


def _patient_mix() -> np.ndarray:
    """Patient-grade distribution whose two eyes (second eye via the neighbour matrix) average to GRADE_MIX."""
    m = (np.eye(5) + _neighbour_matrix(SAME_GRADE)) / 2
    p = np.clip(np.linalg.solve(m.T, np.asarray(GRADE_MIX)), 0, None)
    return p / p.sum()


def assign_grades(n: int, seed: int = 0, balanced: bool = False) -> list[int]:
    """Grades of images ``0..n-1`` (image ``2k`` = patient ``k+1`` left, ``2k+1`` right); depends on seed, n only.

    Default: patient grades in the proportions of :func:`_patient_mix`, the left eye gets the patient's
    grade, the right eye the same with probability SAME_GRADE, else a neighbouring grade, so the image
    mix matches GRADE_MIX. Balanced: exactly equal counts per grade, pairs only loosely correlated.
    """
    rng = np.random.default_rng([seed, 0x5EED, 0x6AADE])
    n_pat = (n + 1) // 2
    if balanced:  # equal counts; pair sorted grades, then swap the second eyes of ~15% of patients
        g = rng.permutation(np.arange(n) % 5)
        pairs = np.sort(g[: n - n % 2]).reshape(-1, 2)
        mixed = np.flatnonzero(rng.random(len(pairs)) < 1 - SAME_GRADE)
        pairs[mixed, 1] = pairs[rng.permutation(mixed), 1]
        grades = np.concatenate([pairs[rng.permutation(len(pairs))].ravel(), g[n - n % 2:]])
    else:
        quota = _patient_mix() * n_pat  # stratified: patient counts follow the mix exactly, in random order
        counts = np.floor(quota).astype(int)
        counts[np.argsort(counts - quota, kind="stable")[: n_pat - counts.sum()]] += 1
        g1 = rng.permutation(np.repeat(np.arange(5), counts))
        step = np.where(rng.random(n_pat) < SAME_GRADE, 0, rng.choice((-1, 1), size=n_pat))
        grades = np.stack([g1, np.clip(g1 + step, 0, 4)], 1).ravel()[:n]
    return [int(x) for x in grades]


def image_name(index: int) -> str:
    """``<patient>_<eye>`` of image ``index`` (patients numbered from 1, left eye first)."""
    return f"{index // 2 + 1}_{('left', 'right')[index % 2]}"


# -------------------------------------------------------------------------------------------- geometry
@dataclass
class _Eye:
    R: float
    c: np.ndarray  # FOV centre (x, y), pixels
    half: float  # half-height of the visible band (inf when not clipped)
    disc: np.ndarray
    disc_r: float
    mac: np.ndarray

    def inside(self, pts: np.ndarray, margin: float = 1.0) -> np.ndarray:
        x, y = pts[:, 0] - self.c[0], pts[:, 1] - self.c[1]
        return (x * x + y * y < (margin * self.R) ** 2) & (np.abs(y) < self.half)


def _eye_geometry(rng: np.random.Generator, s: int) -> _Eye:
    clipped = rng.random() < 0.3
    R = s * (rng.uniform(0.47, 0.5) if clipped else rng.uniform(0.43, 0.485))
    half = R * rng.uniform(0.8, 0.9) if clipped else math.inf
    c = s / 2 + rng.uniform(-0.02, 0.02, 2) * s
    disc_r = R / rng.uniform(6.0, 7.0)  # disc diameter ~ FOV diameter / 6.5
    mac = c + np.array([-0.35, 0.0]) * R + rng.uniform(-0.06, 0.06, 2) * R
    tilt = rng.uniform(-0.05, 0.2)  # the disc usually sits a little above the macula
    disc = mac + 5 * disc_r * rng.uniform(0.9, 1.1) * np.array([math.cos(tilt), -math.sin(tilt)])
    return _Eye(R, c, half, disc, disc_r, mac)


def _walk(rng, p0, heading, length, step, wiggle=0.08, curl=0.0) -> np.ndarray:
    """A random-walk polyline from ``p0``."""
    n = max(2, int(length / step))
    z = np.zeros(n + 1, complex)
    np.cumsum(np.exp(1j * (heading + np.cumsum(rng.normal(curl, wiggle, n)))), out=z[1:])
    z *= step
    z += complex(p0[0], p0[1])
    return z.view(np.float64).reshape(-1, 2)


def _clip(pts: np.ndarray, eye: _Eye) -> np.ndarray:
    """Cut a path where it leaves the FOV or enters the foveal avascular zone."""
    x, y = pts[:, 0] - eye.mac[0], pts[:, 1] - eye.mac[1]
    bad = ~eye.inside(pts, 1.02) | (x * x + y * y < (0.6 * eye.disc_r) ** 2)
    bad[0] = False
    return pts[: int(np.argmax(bad))] if bad.any() else pts


@dataclass
class _Vessel:
    pts: np.ndarray
    width: float  # pixels
    kind: str  # "vein" or "artery"
    order: int  # 0 main trunk, 1 first branch, ...


def _grow(rng, eye: _Eye, v: _Vessel, depth: int, out: list[_Vessel]) -> None:
    """Add ``v`` and, recursively, its thinner side branches (one per 0.18-0.3 R of length)."""
    out.append(v)
    if depth == 0 or len(v.pts) < 4 or v.width * 0.6 < 0.3:
        return
    seg = np.diff(v.pts, axis=0)
    k = int(np.hypot(seg[:, 0], seg[:, 1]).sum() / (eye.R * rng.uniform(0.18, 0.3)))
    at = rng.integers(1, len(v.pts) - 2, k)
    side = np.where(rng.random(k) < 0.5, -1.0, 1.0)
    heading = np.arctan2(seg[at, 1], seg[at, 0]) + side * rng.uniform(0.4, 1.0, k)
    length = eye.R * rng.uniform(0.15, 0.4, k) * (0.6 + 0.2 * depth)
    curl, width = -side * rng.uniform(0, 0.03, k), v.width * rng.uniform(0.55, 0.75, k)
    for i in range(k):
        pts = _clip(_walk(rng, v.pts[at[i]], heading[i], length[i], 0.025 * eye.R, 0.08, curl[i]), eye)
        if len(pts) > 2:
            _grow(rng, eye, _Vessel(pts, width[i], v.kind, v.order + 1), depth - 1, out)


def _vessel_tree(rng, eye: _Eye) -> list[_Vessel]:
    """Temporal arcades around the macula, nasal trunks and small macular branches, all from the disc."""
    R, out = eye.R, []
    for kind, w in (("vein", 0.022), ("artery", 0.016)):
        for sign in (-1, 1):  # superior, inferior
            a = (eye.disc[0] - eye.mac[0]) * rng.uniform(1.0, 1.4)
            b = R * rng.uniform(0.45, 0.65)
            phi = np.linspace(0, sign * math.pi * 0.9, 70)
            wob = 1 + 0.04 * np.sin(rng.uniform(2, 5) * phi + rng.uniform(0, 6.3))
            pts = eye.disc + np.stack([a * (np.cos(phi) - 1), b * np.sin(phi)], 1) * wob[:, None]
            _grow(rng, eye, _Vessel(_clip(pts, eye), w * R * rng.uniform(0.9, 1.1), kind, 0), 3, out)
            pts = _walk(rng, eye.disc, sign * rng.uniform(0.8, 1.3), R * 0.9, 0.025 * R, 0.07)
            _grow(rng, eye, _Vessel(_clip(pts, eye), 0.8 * w * R, kind, 0), 2, out)
        for heading, length in ((0.0, 0.7), (math.pi, 0.4)):  # nasal and macular branches
            pts = _walk(rng, eye.disc, heading + rng.normal(0, 0.3), R * length, 0.025 * R, 0.1)
            _grow(rng, eye, _Vessel(_clip(pts, eye), 0.45 * w * R, kind, 1), 1, out)
    return out


# ------------------------------------------------------------------------------------------------ masks
class _Canvas:
    """8-bit masks drawn with Pillow, one per layer: supersampled (sharp layers) or coarse (fuzzy layers)."""

    def __init__(self, s: int):
        self.s = s
        self.img = {k: Image.new("L", (max(4, round(s * f)),) * 2) for k, f in _SCALE.items()}
        self.draw = {k: ImageDraw.Draw(v) for k, v in self.img.items()}

    def polygon(self, layer: str, pts: np.ndarray, value: int = 255) -> None:
        self.draw[layer].polygon([tuple(p) for p in (pts * _SCALE[layer]).tolist()], fill=value)

    def line(self, layer: str, pts: np.ndarray, width: float, value: int = 255) -> None:
        f = _SCALE[layer]
        self.draw[layer].line([tuple(p) for p in (pts * f).tolist()], fill=value,
                              width=max(1, round(width * f)), joint="curve")

    def dot(self, layer: str, x: float, y: float, r: float, value: int = 255) -> None:
        f = _SCALE[layer]
        x, y, r = x * f, y * f, r * f
        self.draw[layer].ellipse([x - r, y - r, x + r, y + r], fill=value)

    def blob(self, layer, rng, x, y, r, value=255, elong=1.0, angle=0.0, rough=0.2) -> None:
        """An irregular ellipse, long axis ``r * elong`` along ``angle``."""
        if r * _SCALE[layer] < 2:
            return self.dot(layer, x, y, r, value)
        t = np.linspace(0, 2 * math.pi, 16, endpoint=False)
        rad = r * (1 + rough * np.convolve(rng.uniform(-1.5, 1.5, 18), (0.25, 0.5, 0.25), "valid"))
        u, v = rad * elong * np.cos(t), rad * np.sin(t)
        ca, sa = math.cos(angle), math.sin(angle)
        self.polygon(layer, np.stack([x + ca * u - sa * v, y + sa * u + ca * v], 1), value)

    def array(self, layer: str) -> np.ndarray:
        """The mask at image size, in [0, 1]; coarse layers are smoothly upsampled."""
        im = self.img[layer]
        if _SCALE[layer] > 1:
            im = im.reduce(_SCALE[layer])
        else:
            im = im.filter(ImageFilter.GaussianBlur(1.5)).resize((self.s, self.s), Image.BILINEAR)
        return np.asarray(im, dtype=np.float32) * (1 / 255)


def _draw_vessels(cv: _Canvas, vessels: list[_Vessel]) -> None:
    for v in vessels:  # taper: the second half of a vessel is thinner; small vessels are paler
        k, value = len(v.pts) // 2 + 1, 255 - 30 * v.order
        cv.line(v.kind, v.pts[:k], v.width, value)
        cv.line(v.kind, v.pts[k - 1:], v.width * 0.8, value - 15)


# ---------------------------------------------------------------------------------------------- lesions
def _spots(rng, eye: _Eye, n: int, pole: float = 0.5) -> np.ndarray:
    """``n`` points in the FOV, cycling through the four quadrants; a share ``pole`` near the posterior pole."""
    ang = (np.arange(n) % 4) * (math.pi / 2) + rng.uniform(0, math.pi / 2, n)
    rad = eye.R * 0.9 * np.sqrt(rng.uniform(0.02, 1, n))
    pts = eye.c + np.stack([np.cos(ang), np.sin(ang)], 1) * rad[:, None]
    near = rng.random(n) < pole
    pts[near] = (eye.mac + eye.disc) / 2 + rng.normal(0, 0.3 * eye.R, (int(near.sum()), 2))
    return pts


def _near_vessel(rng, eye: _Eye, vessels: list[_Vessel], spread: float) -> np.ndarray:
    main = [v for v in vessels if v.order == 0 and len(v.pts) > 3]
    v = main[int(rng.integers(len(main)))]
    return v.pts[int(rng.integers(len(v.pts)))] + rng.normal(0, spread * eye.R, 2)


def _lesions(rng, cv: _Canvas, eye: _Eye, vessels: list[_Vessel], grade: int) -> None:
    """Draw the lesions of ``grade``; more and larger with grade."""
    R = eye.R
    n_ma = (0, rng.integers(1, 6), rng.integers(4, 16), rng.integers(10, 31), rng.integers(8, 31))[grade]
    for x, y in _spots(rng, eye, int(n_ma), 0.6):  # microaneurysms
        cv.dot("red", x, y, R * rng.uniform(0.007, 0.012), int(rng.integers(190, 256)))
    if grade < 2:
        return
    severe = grade >= 3
    for x, y in _spots(rng, eye, int(rng.integers(16, 41) if severe else rng.integers(1, 9)), 0.3 if severe else 0.6):
        cv.blob("red", rng, x, y, R * rng.uniform(0.012, 0.04), int(rng.integers(170, 256)), rng.uniform(1, 1.6),
                rng.uniform(0, math.pi), 0.25)  # dot and blot haemorrhages
    for x, y in _spots(rng, eye, int(rng.integers(2, 9) if severe else rng.integers(0, 3)), 0.3):
        d = np.array([x, y]) - eye.disc  # flame haemorrhages follow the nerve fibres, radial from the disc
        cv.blob("red", rng, x, y, R * rng.uniform(0.012, 0.022), int(rng.integers(170, 240)), rng.uniform(2.5, 4),
                math.atan2(d[1], d[0]), 0.15)
    n_clusters = int(rng.integers(1, 5) if severe else rng.integers(0, 4))
    for _ in range(n_clusters):  # hard exudates: rings or clouds of yellow specks near the macula
        ang, dist = rng.uniform(0, 2 * math.pi), R * rng.uniform(0.1, 0.5)
        centre = eye.mac + dist * np.array([math.cos(ang), math.sin(ang)])
        k = int(rng.integers(4, 21))
        if rng.random() < 0.5:
            t = rng.uniform(0, 2 * math.pi, k)
            ring = R * rng.uniform(0.04, 0.1) * rng.normal(1, 0.12, (k, 1))
            pts = centre + ring * np.stack([np.cos(t), np.sin(t)], 1)
        else:
            pts = centre + rng.normal(0, R * 0.04, (k, 2))
        for x, y in pts:
            cv.blob("bright", rng, x, y, R * rng.uniform(0.004, 0.014), int(rng.integers(200, 256)), rough=0.35)
    for _ in range(int(rng.integers(2, 7) if severe else rng.random() < 0.3)):  # cotton-wool spots
        x, y = _near_vessel(rng, eye, vessels, 0.04)
        cv.blob("pale", rng, x, y, R * rng.uniform(0.025, 0.055), int(rng.integers(170, 230)), rng.uniform(1.1, 1.8),
                rng.uniform(0, math.pi), 0.3)
    if not severe:
        return
    veins = [v for v in vessels if v.kind == "vein" and v.order <= 1 and len(v.pts) > 12]
    for i in rng.permutation(len(veins))[: int(rng.integers(1, 4))]:  # venous beading
        v = veins[i]
        i0 = int(rng.integers(2, len(v.pts) - 10))
        for x, y in v.pts[i0: i0 + int(rng.integers(8, 25)): 2]:
            cv.dot("vein", x, y, v.width * rng.uniform(0.6, 0.9))
    for _ in range(int(rng.integers(1, 4))):  # intraretinal microvascular abnormalities
        p = _near_vessel(rng, eye, vessels, 0.05)
        cv.line("vein", _walk(rng, p, rng.uniform(0, 6.3), R * 0.12, R * 0.012, 0.6), R * 0.006, 200)
    if grade < 4:
        return
    nvd = rng.random() < 0.7
    sites = ([eye.disc] if nvd else []) + [_near_vessel(rng, eye, vessels, 0.02)
                                          for _ in range(int(rng.integers(0 if nvd else 1, 3)))]
    for p in sites:  # neovascularisation: fine tangled new vessels at the disc or along the arcades
        cv.blob("red", rng, p[0], p[1], R * rng.uniform(0.05, 0.1), 80, rough=0.4)
        for _ in range(int(rng.integers(10, 21))):
            start = p + rng.normal(0, 0.05 * R, 2)
            loop = _walk(rng, start, rng.uniform(0, 6.3), R * rng.uniform(0.08, 0.25), R * 0.01, 0.3,
                         rng.choice((-1, 1)) * rng.uniform(0.1, 0.4))
            cv.line("vein", loop, R * rng.uniform(0.005, 0.009), int(rng.integers(200, 256)))
    if rng.random() < 0.6:  # pre-retinal haemorrhage: boat-shaped, flat top (fluid level)
        x, y = _near_vessel(rng, eye, vessels, 0.05)
        a = R * rng.uniform(0.08, 0.18)
        t = np.linspace(0, math.pi, 16)
        cv.polygon("red", np.stack([x + a * np.cos(t), y + a * rng.uniform(0.6, 1.0) * np.sin(t)], 1),
                   int(rng.integers(230, 256)))
    if rng.random() < 0.3:  # fibrous proliferation along the vessels near the disc
        x, y = eye.disc + rng.normal(0, 0.1 * R, 2)
        cv.blob("pale", rng, x, y, R * rng.uniform(0.06, 0.12), int(rng.integers(90, 150)), rng.uniform(1.5, 3),
                rng.uniform(0, math.pi), 0.3)
    if rng.random() < 0.25:  # scars of pan-retinal laser photocoagulation
        ang = rng.uniform(0, 2 * math.pi, int(rng.integers(30, 120)))
        rad = R * rng.uniform(0.6, 0.93, len(ang))
        for x, y in eye.c + np.stack([np.cos(ang), np.sin(ang)], 1) * rad[:, None]:
            r = R * rng.uniform(0.012, 0.022)
            cv.dot("red", x, y, r, int(rng.integers(100, 170)))
            cv.dot("bright", x, y, r * 0.5, int(rng.integers(90, 150)))


# --------------------------------------------------------------------------------------------- render
def _window(s: int, centre: np.ndarray, r: float):
    """Slices of the square around ``centre`` with half-side ``r``, and its pixel-centre coordinates."""
    x0, y0 = (max(0, int(v - r)) for v in centre)
    x1, y1 = (min(s, int(v + r) + 2) for v in centre)
    dx, dy = np.arange(x0, x1) + 0.5 - centre[0], np.arange(y0, y1)[:, None] + 0.5 - centre[1]
    return (slice(y0, y1), slice(x0, x1)), dx, dy


def _col(*rgb: float) -> np.ndarray:
    """A colour as a (3, 1, 1) array, to broadcast over colour planes."""
    return np.array(rgb, np.float32)[:, None, None]


def _smooth_noise(rng, s: int, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1] at ``s`` x ``s``: random ``cells`` x ``cells`` grid, bicubic upsampled."""
    grid = Image.fromarray(rng.uniform(-1, 1, (cells, cells)).astype(np.float32), "F")
    return np.asarray(grid.resize((s, s), Image.BICUBIC))


def render_fundus(rng: np.random.Generator, size: int, grade: int, eye: str) -> Image.Image:
    """One synthetic fundus photograph (RGB, ``size`` x ``size``) of ``eye`` ("left"/"right") at DR ``grade`` 0-4.

    Everything but the lesions is drawn from ``rng`` first; the lesions use a stream split off ``rng``,
    so the same ``rng`` state gives the same eye at every grade, differing only by its lesions.
    """
    if grade not in range(5) or eye not in ("left", "right"):
        raise ValueError(f"grade must be 0-4 and eye left/right, got {grade!r}, {eye!r}")
    s = size
    g = _eye_geometry(rng, s)
    R = g.R

    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    # looks of this photograph: retina colour, light, camera colour balance, focus
    base = _col(0.8, 0.36, 0.16)[:, 0, 0] * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    gains = _col(u(0.9, 1.1), u(0.75, 1.15), u(0.6, 1.3))[:, 0, 0]
    sat, gamma, bright = u(0.75, 1.25), u(0.8, 1.25), u(0.65, 1.15)
    vign, vpow, slope_x, slope_y = u(0.45, 0.8), u(2.0, 3.5), u(-0.12, 0.12), u(-0.12, 0.12)
    blur = (u(1.5, 3.0) if rng.random() < 0.1 else u(0.2, 1.0)) * s / 256
    noise_sd = u(0.005, 0.02)
    halo = u(0.1, 0.35) if rng.random() < 0.3 else 0.0

    # retina: choroidal texture and the macula; colour planes first, (3, s, s)
    shade = 1 + u(0.04, 0.12) * _smooth_noise(rng, s, 6) + u(0.02, 0.07) * _smooth_noise(rng, s, 24)
    sl, dx, dy = _window(s, g.mac, 4 * g.disc_r)
    shade[sl] *= 1 - u(0.2, 0.4) * np.exp(-(dx * dx + dy * dy) / (1.3 * g.disc_r) ** 2)
    img = shade * base[:, None, None]
    # optic disc, slightly taller than wide, brighter towards its cup
    sl, dx, dy = _window(s, g.disc, 1.4 * g.disc_r)
    ex = u(0.85, 0.97)
    d = np.sqrt((dx / (g.disc_r * ex)) ** 2 + (dy * ex / g.disc_r) ** 2)
    sub = img[(slice(None), *sl)]
    sub += np.clip((1.1 - d) / 0.3, 0, 1) * (_col(0.95, 0.72, 0.42) * u(0.93, 1.05) - sub)
    dc = np.sqrt((dx / g.disc_r + 0.1) ** 2 + (dy / g.disc_r) ** 2) / u(0.3, 0.55)
    sub += np.clip((1.2 - dc) / 0.5, 0, 0.8) * (_col(1.0, 0.9, 0.66) - sub)

    cv = _Canvas(s)
    vessels = _vessel_tree(rng, g)
    _draw_vessels(cv, vessels)
    if rng.random() < 0.12:  # drusen, a look-alike of hard exudates at any grade
        for x, y in g.mac + rng.normal(0, 0.12 * R, (int(rng.integers(5, 20)), 2)):
            cv.dot("bright", x, y, R * u(0.006, 0.012), int(rng.integers(80, 140)))
    _lesions(np.random.default_rng(rng.integers(2**63)), cv, g, vessels, grade)
    tmp = np.empty_like(img)  # in-place arithmetic: fresh full-size arrays are slow to fault in
    for layer, factor in _DARK.items():
        np.multiply(cv.array(layer), 1 - _col(*factor), out=tmp)
        img *= np.subtract(1, tmp, out=tmp)
    for layer, colour in _BRIGHT.items():
        np.subtract(_col(*colour), img, out=tmp)
        img += np.multiply(tmp, cv.array(layer), out=tmp)

    # illumination: vignetting, uneven light, optional bright rim haze; then camera colour and noise
    yy, xx = ((np.arange(s, dtype=np.float32) + 0.5 - float(v)) / R for v in g.c[::-1])
    yy = yy[:, None]
    r = np.sqrt(xx * xx + yy * yy)
    light = 1 - vign * r**vpow + slope_x * xx + slope_y * yy + 0.1 * _smooth_noise(rng, s, 4)
    if halo:
        light += halo * np.clip((r - 0.85) / 0.15, 0, 1) ** 2
    edge = 1.5 / R  # soft FOV border, ~1.5 px
    fov = np.clip((1 - r) / edge, 0, 1) * np.clip((g.half / R - np.abs(yy)) / edge, 0, 1)
    light *= fov
    img *= light
    img *= (sat * bright) * gains[:, None, None]
    img += (1 - sat) / sat * img.mean(axis=0)
    fov *= noise_sd
    img += np.multiply(rng.standard_normal((s, s), dtype=np.float32), fov, out=fov)
    np.clip(img, 0, 1, out=img)
    img *= 255
    img += 0.5
    lut = [round(255 * (i / 255) ** gamma) for i in range(256)]
    out = Image.merge("RGB", [Image.fromarray(p).point(lut) for p in img.astype(np.uint8)])
    if blur > 0.1:  # slight softness (box) or defocus (Gaussian)
        out = out.filter(ImageFilter.GaussianBlur(blur) if blur > s / 256 else ImageFilter.BoxBlur(blur))
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if eye == "left" else out


# ------------------------------------------------------------------------------------------- datasets
def _render_file(job: tuple) -> None:
    out, index, grade, size, seed = job
    rng = np.random.default_rng([seed, index])
    name = image_name(index)
    img = render_fundus(rng, size, grade, name.rsplit("_", 1)[1])
    path = Path(out) / f"{name}.jpeg"
    with replacing(path, "wb") as f:
        f.write(encoded(img, "JPEG", quality=int(rng.integers(70, 96))))


def check_options(n: int = 1000, size: int = 256, seed: int = 0, balanced: bool = False, format: str = "kaggle",
                  test_fraction: float = 0.2, **_) -> None:
    """Raise ValueError for options :func:`generate` cannot use (an experiment's ``synth:`` is checked up front)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    whole = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (n, size, seed))
    fraction = isinstance(test_fraction, numbers.Real) and not isinstance(test_fraction, bool)
    if not (whole and fraction and isinstance(balanced, numbers.Integral)) or n < 1 or size < 16 or seed < 0 \
            or not 0 <= test_fraction < 1:
        raise ValueError(f"need whole numbers n >= 1, size >= 16, seed >= 0, balanced true or false and "
                         f"0 <= test_fraction < 1 (got n={n!r}, size={size!r}, seed={seed!r}, balanced={balanced!r}, "
                         f"test_fraction={test_fraction!r})")


def generate(out: str | Path, n: int = 1000, size: int = 256, seed: int = 0, balanced: bool = False,
             format: str = "kaggle", workers: int | None = None, progress: bool = True,
             test_fraction: float = 0.2) -> dict:
    """Write a synthetic DR dataset into ``out``; return a summary dict.

    ``kaggle``: ``trainLabels.csv`` (``image,level``); ``lab``: header-less ``train_img.csv``,
    ``train_label.csv``, ``test_img.csv``, ``test_label.csv`` split by patient (``test_fraction`` of the
    patients of each worse-eye grade in test). Images ``<patient>_<left|right>.jpeg`` and a ``README.txt`` go in
    ``out`` too.
    Summary keys: n, counts (images per grade 0-4), seconds, images_per_s, format, size, seed, balanced, out.
    ``out`` must be new, empty, or hold only the images of an interrupted generation (:func:`holds_data`).
    """
    check_options(n=n, size=size, seed=seed, balanced=balanced, format=format, test_fraction=test_fraction)
    start = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RetinopathyError(f"{out} is a file, not a folder; choose a new folder for the synthetic set")
    if holds_data(out):
        raise RetinopathyError(f"{out} already holds a dataset (or other files): a new set would rewrite its "
                               "images and labels under runs that used them; choose a new folder, or remove it")
    out.mkdir(parents=True, exist_ok=True)
    for p in filter(leftover, out.iterdir()):
        p.unlink()
    grades = assign_grades(n, seed, balanced)
    names = [image_name(i) for i in range(n)]
    jobs = [(str(out), i, grades[i], size, seed) for i in range(n)]
    workers = worker_count(workers, n)
    bar = progress_bar(total=n, enabled=progress, unit="img", desc="synth")
    try:
        with mapped(_render_file, jobs, workers, most_per_chunk=32) as rendered:
            for _ in rendered:
                bar.update()
    finally:
        bar.close()

    if format == "kaggle":
        write_text(out / "trainLabels.csv", "image,level\n" + "".join(f"{m},{g}\n" for m, g in zip(names, grades)))
    else:
        eyes = [Sample(m, g, str(i // 2), "", None) for i, (m, g) in enumerate(zip(names, grades))]
        patients = split_patients(eyes, {"test": test_fraction}, seed)  # stratified by the worse eye, as elsewhere
        for split in ("train", "test"):
            idx = [i for i in range(n) if patients[str(i // 2)] == split]
            write_text(out / f"{split}_img.csv", "".join(f"{names[i]}\n" for i in idx))
            write_text(out / f"{split}_label.csv", "".join(f"{grades[i]}\n" for i in idx))
    counts = [grades.count(k) for k in range(5)]
    write_text(out / "README.txt", (
        f"{MARKER} diabetic-retinopathy fundus photographs made by retinopathy.data.synth.\n"
        "Not real patients and not for clinical use: drawn shapes only.\n"
        f"format: {format}\nimages: {n} of {(n + 1) // 2} patients (left and right eye)\n"
        f"size: {size} px\nseed: {seed}\nbalanced: {bool(balanced)}\n"
        f"images per grade 0-4: {' '.join(map(str, counts))}\n"
        + (f"test fraction: {test_fraction}\n" if format == "lab" else "")))
    seconds = time.perf_counter() - start
    return {"n": n, "counts": counts, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 1),
            "format": format, "size": size, "seed": seed, "balanced": balanced, "out": str(out)}
