"""Transform presets: preprocessing (``lab``, ``fov``, ``graham``) x augmentation (``none``, ``flips``, ``fundus``).

The ``lab`` preprocessing with ``flips`` is the course lab's reference pipeline:
``Resize(S)``, ``CenterCrop(S)``, random horizontal and vertical flips (p=0.5), ``ToTensor``,
``Normalize(mean=(0.3749, 0.2602, 0.1857), std=(0.2526, 0.1780, 0.1291))``. Evaluation transforms
never augment. With ``uint8=True`` the pipeline stops at a uint8 tensor and normalisation happens on the
device (:class:`Normalize` below), as timm's prefetch loader does; the numbers are the same.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from PIL import Image
from torchvision.transforms import v2

from .images import open_image
from .preprocess import FovCrop, GrahamNormalize

LAB_MEAN = (0.3749, 0.2602, 0.1857)
LAB_STD = (0.2526, 0.1780, 0.1291)
GRAHAM_MEAN = (0.5, 0.5, 0.5)
GRAHAM_STD = (0.1, 0.1, 0.1)
PREPROCESS = ("lab", "fov", "graham")
AUGMENT = ("none", "flips", "fundus")


@dataclass
class Preprocessing:
    """What a model expects: recorded in every checkpoint so that prediction applies the same."""

    preset: str = "lab"
    size: int = 512
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self):
        if self.preset not in PREPROCESS:
            raise ValueError(f"unknown preprocessing {self.preset!r}; choose one of {', '.join(PREPROCESS)}")
        default_mean, default_std = (GRAHAM_MEAN, GRAHAM_STD) if self.preset == "graham" else (LAB_MEAN, LAB_STD)
        self.mean = tuple(float(v) for v in (default_mean if self.mean is None else self.mean))  # any sequence
        self.std = tuple(float(v) for v in (default_std if self.std is None else self.std))  # (array, tensor)
        if len(self.mean) != 3 or len(self.std) != 3 or not all(v > 0 for v in self.std):
            raise ValueError(f"mean and std: three values each (R, G, B), std above 0; got mean {self.mean}, "
                             f"std {self.std}")
        self.size = int(self.size)
        if self.size < 1:
            raise ValueError(f"image size must be at least 1 px, got {self.size}")

    def open(self, path) -> Image.Image:
        """Decode the photograph ``path`` for this preprocessing: at reduced scale, detail enough for ``size``
        px across the frame (``lab``) or across the field of view the other presets crop to."""
        return open_image(path, self.size, fov=self.preset != "lab")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(d["preset"], d["size"], tuple(d["mean"]), tuple(d["std"]))


def short_side_resize(size: int) -> v2.Resize:
    """The lab's ``Resize(S)``: the short side to ``size``, the aspect kept."""
    return v2.Resize(size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)


def geometry(prep: Preprocessing) -> list:
    """The deterministic steps that bring a photograph to ``size x size``."""
    if prep.preset == "lab":
        return [short_side_resize(prep.size), v2.CenterCrop(prep.size)]
    steps = [FovCrop(), v2.Resize((prep.size, prep.size), antialias=True)]
    if prep.preset == "graham":
        steps.append(GrahamNormalize())
    return steps


def augmentation(name: str) -> list:
    if name == "none":
        return []
    flips = [v2.RandomHorizontalFlip(0.5), v2.RandomVerticalFlip(0.5)]
    if name == "flips":
        return flips
    if name == "fundus":  # black corners, also on graham's grey: a grey fill, measured, gained nothing (docs/)
        return [v2.RandomAffine(degrees=180, translate=(0.05, 0.05), scale=(0.9, 1.1)),
                v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1), *flips]
    raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENT)}")


def to_tensor(prep: Preprocessing, train: bool = False, augment: str = "flips", uint8: bool = False,
              crop: int | None = None) -> list:
    """The steps after :func:`geometry`: augmentation (when training), then the tensor conversion.

    ``crop`` (training only) ends the augmentation with a random ``crop x crop`` window of the ``size`` px
    image, unresized: the network trains on a part of each photograph at the scale it is evaluated at whole
    (FixRes's point: the apparent size of a lesion is the same in training and evaluation).
    """
    augment_steps = augmentation(augment)  # built (and its name checked) for evaluation transforms too
    if crop and not 1 <= crop <= prep.size:  # 0 or None: the whole image
        raise ValueError(f"crop {crop} must be between 1 and the image size, {prep.size} px")
    steps = (augment_steps if train else []) + ([v2.RandomCrop(crop)] if train and crop else [])
    steps += [v2.PILToTensor()]
    if not uint8:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(prep.mean, prep.std)]
    return steps


def build_transform(prep: Preprocessing, train: bool = False, augment: str = "flips",
                    uint8: bool = False, crop: int | None = None) -> v2.Compose:
    """PIL image -> tensor. ``uint8`` leaves normalisation to :class:`Normalize` on the device."""
    return v2.Compose(geometry(prep) + to_tensor(prep, train, augment, uint8, crop))


class Normalize(torch.nn.Module):
    """uint8 NCHW batch -> normalised float batch, on whatever device the batch is on."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1) * 255, persistent=False)  # C x 1 x 1: any
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1) * 255, persistent=False)  # ... x C x H x W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            return x.float().sub_(self.mean).div_(self.std)  # in place on the new float tensor: 40 % faster on a CPU
        return x
