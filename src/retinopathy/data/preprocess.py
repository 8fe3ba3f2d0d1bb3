"""Fundus-specific preprocessing steps, each a small callable on a PIL image (MONAI style).

``FovCrop``        finds the round field of view against the black surround and crops a square around it
                   (padding with black where the circle is clipped at the top and bottom, as in EyePACS).
``GrahamNormalize`` Ben Graham's Kaggle-2015 preprocessing: subtract a Gaussian-blurred copy to even out
                   lighting (``4*img - 4*blur + 128``) and mask the rim of the circle with grey (at 0.9 of the
                   radius, as his); its blur is 1/30 of the side, the field of view's diameter, where his was
                   1/30 of the radius: twice as wide (the eyepacs-256 recipe was measured with this one).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter


def find_fov(img: Image.Image, threshold: float = 0.07) -> tuple[float, float, float]:
    """Return (centre x, centre y, radius) of the field of view, in pixels of ``img``.

    Works on a thumbnail: pixels brighter than ``threshold`` x the 99th-percentile brightness are retina.
    A circle is fitted to the left and right ends of the retina in every row: the sides of the circle are
    rarely clipped, while the top and bottom often are, by the image edge or by a straight dark band, and
    such flat edges do not move the fit. Where the sides are clipped too, so that the fit runs through one side
    and leaves more than 1 % of the retina near the circle (within 1.25 radii of its centre) outside its square,
    the radius grows to that retina's extent. Falls back to the image centre when there is no retina to see.
    """
    scale = 256 / max(img.size)
    small = img.convert("L").resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                    Image.BILINEAR)
    a = np.asarray(small, dtype=np.float32)
    fallback = img.width / 2, img.height / 2, min(img.size) / 2
    ref = np.percentile(a, 99)
    if ref <= 0:
        return fallback
    mask = a > threshold * ref
    rows = np.flatnonzero(mask.mean(axis=1) > 0.02)
    if len(rows) < 3:
        return fallback
    w = mask.shape[1]
    left = mask[rows].argmax(axis=1)
    right = w - mask[rows, ::-1].argmax(axis=1)  # one past the last retina pixel
    y = np.concatenate([rows, rows]) + 0.5
    x = np.concatenate([left, right]).astype(np.float64)
    keep = (x > 0) & (x < w)  # an end at the image side is a clipped side, not the circle
    x, y = x[keep], y[keep]
    for _ in range(3):  # least-squares circle (Kasa), then again without outliers (notches, dust, text)
        if len(x) < 6:
            return fallback
        (d, e, f), *_ = np.linalg.lstsq(np.stack([x, y, np.ones_like(x)], 1), -(x * x + y * y), rcond=None)
        cx, cy = -d / 2, -e / 2
        r = float(np.sqrt(max(cx * cx + cy * cy - f, 0.0)))
        resid = np.abs(np.hypot(x - cx, y - cy) - r)
        inliers = resid < max(1.5, 3 * np.median(resid))
        if inliers.all():
            break
        x, y = x[inliers], y[inliers]
    if not r > 0:
        return fallback
    yy, xx = np.nonzero(mask)  # a circle fitted through one clipped side can be too small: when more than 1 % of
    dx, dy = np.abs(xx + 0.5 - cx), np.abs(yy + 0.5 - cy)  # the retina near it (within 1.25 r: not labels in the
    for _ in range(3):  # corners) lies outside its square, it grows to that retina's extent (and looks again)
        reach = np.maximum(dx, dy)[np.hypot(dx, dy) < 1.25 * r]
        if not np.mean(reach > r) > 0.01:
            break
        r = float(np.percentile(reach, 99.9))
    return cx / scale, cy / scale, r / scale


class FovCrop:
    """Crop a square around the circular field of view, so that the retina fills the frame: side 2r(1 + margin),
    centred on the circle that :func:`find_fov` fits (on a 256 px grey thumbnail, pixels brighter than 0.07 x its
    99th percentile are retina; a least-squares circle through the left and right ends of the retina in each row,
    refitted without outliers), black outside the photograph. A photograph already so cropped (square, the circle
    filling it within 1.5 %) is left as it is."""

    def __init__(self, margin: float = 0.0):
        self.margin = margin

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        size, circle = getattr(img, "fov", (None, None))  # open_image(fov=True) may have found it
        cx, cy, r = circle if size == img.size else find_fov(img)
        if not self.margin and w == h and max(abs(cx - w / 2), abs(cy - h / 2), abs(2 * r - w)) < 0.015 * w:
            return img  # already cropped (e.g. a `prepare --crop fov` copy): cropping again would only resample
        r *= 1 + self.margin
        box = tuple(int(round(v)) for v in (cx - r, cy - r, cx + r, cy + r))
        return img.crop(box)  # Pillow pads outside the image with black

    def __repr__(self) -> str:
        return f"FovCrop(margin={self.margin})"


class GrahamNormalize:
    """``4*img - 4*GaussianBlur(img, sigma) + 128`` clipped to 0-255, with ``sigma = max(1, min(width, height) *
    sigma_fraction)`` (PIL's GaussianBlur on the 8-bit image), then grey (128) outside ``rim`` x the radius of the
    inscribed circle."""

    def __init__(self, sigma_fraction: float = 1 / 30, rim: float = 0.9):
        self.sigma_fraction = sigma_fraction
        self.rim = rim

    def __call__(self, img: Image.Image) -> Image.Image:
        sigma = max(1.0, min(img.size) * self.sigma_fraction)
        blur = np.asarray(img.filter(ImageFilter.GaussianBlur(sigma)), dtype=np.int16)
        out = np.clip(4 * np.asarray(img, dtype=np.int16) - 4 * blur + 128, 0, 255).astype(np.uint8)
        h, w = out.shape[:2]
        yy, xx = np.ogrid[:h, :w]
        r = self.rim * min(h, w) / 2
        outside = (xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2 > r * r
        out[outside] = 128
        return Image.fromarray(out)

    def __repr__(self) -> str:
        return f"GrahamNormalize(sigma_fraction={self.sigma_fraction!r}, rim={self.rim})"
