"""Grad-CAM heatmaps (captum's ``LayerGradCam``) on the model that predicted, overlaid on the image it saw.

Which layer (:func:`cam_layer`): ``net.layer4`` (the last convolutional block) for ResNet-style models;
otherwise the last direct child of ``net`` (the children of a ``ModuleList``, which is never called itself)
whose output, on a probe image, is a 4-D feature map larger than 1x1 and which is not a pooling layer:
``features`` for EfficientNet, ConvNeXt, MobileNet, DenseNet and VGG, ``trunk_output`` for RegNet, ``Mixed_7c``
for Inception-v3, the last block of ``blocks`` for MaxViT. A model whose map (``layer4`` too) shrinks to 1x1 at
the image size locates nothing and is refused, as are vision transformers, which have no such map.

What is explained: the logit of the predicted grade (classification); for the regression and ordinal
objectives (ordinal+ce too), the continuous severity ``score`` (regression output / sum of P(grade > k)),
whatever the grade, so a hot region is one that pushes the grade up. Heatmaps are ReLU'd, upsampled bilinearly
(``LayerAttribution.interpolate``) to the input size and scaled to [0, 1] per image; one that is rounding noise
or the same everywhere is left blank.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import matplotlib
import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from ..atomic import replacing
from ..errors import RetinopathyError

POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)


@contextlib.contextmanager
def in_eval_mode(model: nn.Module):
    """``model`` in eval mode for the block, then each module as it was: a frozen part of a model in training
    stays in eval mode (``model.train()`` would not keep it)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training


def _called_children(module: nn.Module):
    """``module``'s children, those of a ModuleList or ModuleDict in its place (its forward calls them, not it)."""
    for child in module.children():
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            yield from _called_children(child)
        else:
            yield child


def cam_layer(model: nn.Module, image_size: int = 224) -> nn.Module:
    """The layer whose activations Grad-CAM weighs (see the module docstring for the rule)."""
    net = getattr(model, "net", model)
    if hasattr(net, "conv_proj") and hasattr(net, "encoder"):
        raise RetinopathyError(f"{type(net).__name__} is a vision transformer: it has no convolutional feature map "
                         "for Grad-CAM; use a convolutional model (ResNet, EfficientNet, ConvNeXt, ...)")
    seen: list[tuple[nn.Module, torch.Size | None]] = []

    def hook(module, _inputs, output):
        seen.append((module, output.shape if isinstance(output, torch.Tensor) else None))

    handles = [child.register_forward_hook(hook) for child in _called_children(net)]
    param = next(net.parameters())
    try:
        with in_eval_mode(net), torch.no_grad():
            stem = getattr(model, "stem", nn.Identity())  # a space-to-depth stem feeds the network 3 * s * s channels
            net(stem(torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype)))
    finally:
        for h in handles:
            h.remove()
    maps = [m for m, shape in seen if shape is not None and len(shape) == 4 and shape[-1] * shape[-2] > 1
            and not isinstance(m, POOLING)]
    if isinstance(getattr(net, "layer4", None), nn.Module):  # a ResNet: its last block, not an earlier one
        maps = [m for m in maps if m is net.layer4]
    if not maps:
        flat = any(shape is not None and len(shape) == 4 for _, shape in seen)  # maps, the last one 1x1 here
        raise RetinopathyError(f"{type(net).__name__}: no layer with a spatial feature map found for Grad-CAM" + (
            f": at {image_size} px its last feature map shrinks to 1x1, which locates nothing; Grad-CAM needs a "
            "model trained on larger images (--image-size)" if flat else ""))
    return maps[-1]


NOISE = 1e-12  # a raw Grad-CAM peak below this is rounding noise (a dead head: ~1e-16), not a confident model's
# saturated score (an ordinal model with every logit near -20: ~1e-9)
FLAT = 1 / 255  # a map that varies by less than this share of its peak points nowhere (one colour step when drawn):
# scaled to its peak it would paint the whole photograph as maximal evidence (a model that ignores its input)


COARSE = 4  # a feature map with fewer cells a side than this locates a quarter or a ninth of the image, no lesion


def coarse_note(grid: tuple[int, int] | None, image_size: int) -> str:
    """A warning for heatmaps upsampled from a map of fewer than :data:`COARSE` cells a side, or ''."""
    if grid is None or min(grid) >= COARSE:
        return ""
    return (f"the heatmaps are the model's last feature map, {grid[0]}x{grid[1]} cells at {image_size} px, enlarged: "
            "they show which part of the image, not which lesion, and their peak can fall outside the eye; a "
            "model trained on larger images (--image-size; 7x7 at 224 px for a ResNet) gives finer ones")


class GradCam:
    """``GradCam(model, objective)(x, grades)`` -> heatmaps (N, H, W) in [0, 1] for a normalised batch ``x``;
    each scaled to its peak, and all zero where the peak is noise (:data:`NOISE`) or the map is flat (:data:`FLAT`).
    ``grid`` is the size of the feature map the last call weighed (each heatmap is it, enlarged)."""

    def __init__(self, model: nn.Module, objective, layer: nn.Module | None = None, image_size: int = 224):
        self.model, self.grid = model, None
        self.layer = layer if layer is not None else cam_layer(model, image_size)
        self.by_grade = objective.name == "classification"
        forward = model if self.by_grade else (lambda x: objective.score(model(x))[:, None])
        self.cam = LayerGradCam(forward, self.layer)

    def __call__(self, x: torch.Tensor, grades) -> torch.Tensor:
        """Heatmaps of ``grades`` (one per image: a tensor, list or int) in eval mode, whatever mode the model was
        left in (BatchNorm statistics stay as trained, dropout off)."""
        target = torch.as_tensor(grades, device=x.device).long().expand(len(x)) if self.by_grade else 0
        with in_eval_mode(self.model), torch.enable_grad():
            attr = self.cam.attribute(x.float(), target=target, relu_attributions=True).detach().float()
        self.grid = tuple(attr.shape[-2:])
        heat = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
        peak, low = heat.flatten(1).amax(1)[:, None, None], heat.flatten(1).amin(1)[:, None, None]
        shown = (peak > NOISE) & (peak - low > FLAT * peak)
        return torch.where(shown, heat / peak.clamp_min(NOISE), 0.0).clamp(0, 1).cpu()


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.6) -> Image.Image:
    """The uint8 CHW image the model saw with the ``jet`` heatmap blended in, in proportion to the heat."""
    base = image.permute(1, 2, 0).cpu().numpy().astype(np.float32) / 255
    h = heat.numpy()[..., None]
    colour = matplotlib.colormaps["jet"](heat.numpy())[..., :3]
    blend = base * (1 - alpha * h) + colour * alpha * h
    return Image.fromarray((blend * 255 + 0.5).clip(0, 255).astype(np.uint8), "RGB")


PANEL = 256  # the smallest side of each picture in a heatmap file (a 64 px input is shown 4 times larger)


def heatmap_figure(image: torch.Tensor, heat: torch.Tensor, caption: list[str]) -> Image.Image:
    """The image the model saw beside the same with the heatmap (:func:`overlay`), each enlarged to at least
    :data:`PANEL` px, above the ``caption`` lines and a colour key: the heat is scaled to this image's peak."""
    seen = Image.fromarray(image.permute(1, 2, 0).cpu().numpy().astype(np.uint8), "RGB")
    scale = max(1, -(-PANEL // min(seen.size)))
    size = (seen.width * scale, seen.height * scale)
    panels = [p.resize(size, Image.Resampling.BILINEAR) for p in (seen, overlay(image, heat))]
    font = ImageFont.load_default(size=13)
    line, pad, gap = 18, 8, 6
    width = 2 * size[0] + gap
    caption = [part for text in caption for part in _fit(text, font, width - 2 * pad)]
    key = [] if not heat.any() else ["evidence: none", "strongest in this image"]
    figure = Image.new("RGB", (width, size[1] + pad + line * (len(caption) + bool(key)) + pad), "white")
    for i, panel in enumerate(panels):
        figure.paste(panel, (i * (size[0] + gap), 0))
    draw = ImageDraw.Draw(figure)
    y = size[1] + pad
    for text in caption:
        draw.text((pad, y), text, fill="black", font=font)
        y += line
    if key:  # the scale between its two ends, blended as the heatmap is (over grey): weak evidence barely tints
        left = pad + draw.textlength(key[0] + " ", font=font)
        right = width - pad - draw.textlength(" " + key[1], font=font)
        ramp = torch.linspace(0, 1, max(2, int(right - left))).expand(line - 6, -1)
        figure.paste(overlay(torch.full((3, *ramp.shape), 128, dtype=torch.uint8), ramp), (int(left), y + 3))
        draw.text((pad, y), key[0], fill="black", font=font)
        draw.text((right + draw.textlength(" ", font=font), y), key[1], fill="black", font=font)
    return figure


def _fit(text: str, font, width: float) -> list[str]:
    """``text`` in lines of at most ``width`` px, broken at spaces; a word too long for a line keeps its end after
    '...' (a path, its file name)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
            continue
        cut = 0
        while cut < len(word) and font.getlength(word if not cut else "..." + word[cut:]) > width:
            cut += 1
        lines.append(word if not cut else "..." + word[cut:])
    return lines


def save_heatmap(image: torch.Tensor, heat: torch.Tensor, caption: list[str], path: Path) -> Path:
    """Write :func:`heatmap_figure` as a PNG, atomically; returns ``path``."""
    with replacing(path, "wb") as f:
        heatmap_figure(image, heat, caption).save(f, format="PNG")
    return path
