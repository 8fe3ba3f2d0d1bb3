"""Fundus-specific preprocessing steps, each a small callable on a PIL image (MONAI style).

``FovCrop``        finds the round field of view against the black surround and crops a square around it
                   (padding with black where the circle is clipped at the top and bottom, as in EyePACS).
``GrahamNormalize`` Ben Graham's Kaggle-2015 preprocessing: subtract a Gaussian-blurred copy to even out
                   lighting (``4*img - 4*blur + 128``) and mask the rim of the circle with grey.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter


def find_fov(img: Image.Image, threshold: float = 0.07) -> tuple[float, float, float]:
    """Return (centre x, centre y, radius) of the field of view, in pixels of ``img``.

    Works on a thumbnail: pixels brighter than ``threshold`` x the 99th-percentile brightness are retina.
    The widest extent gives the diameter (the circle is often clipped at top and bottom, rarely at the sides).
    """
    scale = 256 / max(img.size)
    small = img.convert("L").resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                    Image.BILINEAR)
    a = np.asarray(small, dtype=np.float32)
    ref = np.percentile(a, 99)
    if ref <= 0:
        return img.width / 2, img.height / 2, min(img.size) / 2
    mask = a > threshold * ref
    cols = np.flatnonzero(mask.mean(axis=0) > 0.02)
    rows = np.flatnonzero(mask.mean(axis=1) > 0.02)
    if len(cols) == 0 or len(rows) == 0:
        return img.width / 2, img.height / 2, min(img.size) / 2
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    radius = max(x1 - x0, y1 - y0) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    # A circle clipped at an image edge: its centre lies half a diameter from the unclipped edge.
    if y1 - y0 < 2 * radius * 0.98:
        if y0 <= 1 < a.shape[0] - y1:
            cy = y1 - radius
        elif a.shape[0] - y1 <= 1 < y0:
            cy = y0 + radius
    return cx / scale, cy / scale, radius / scale


class FovCrop:
    """Crop a square around the circular field of view, so that the retina fills the frame."""

    def __init__(self, margin: float = 0.0):
        self.margin = margin

    def __call__(self, img: Image.Image) -> Image.Image:
        cx, cy, r = find_fov(img)
        r *= 1 + self.margin
        box = tuple(int(round(v)) for v in (cx - r, cy - r, cx + r, cy + r))
        return img.crop(box)  # Pillow pads outside the image with black

    def __repr__(self) -> str:
        return f"FovCrop(margin={self.margin})"


class GrahamNormalize:
    """``4*img - 4*GaussianBlur(img, size/30) + 128``, then grey outside 90 % of the circle."""

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
        return f"GrahamNormalize(sigma_fraction={self.sigma_fraction:.4f}, rim={self.rim})"
