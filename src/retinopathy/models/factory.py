"""Build a grader from any torchvision classification model, with the head replaced for DR grades.

``head="linear"`` is one ``Linear(in_features, outputs)``; ``head="lab"`` is the course lab's
``Linear(in_features, 50) -> ReLU -> Dropout(0.25) -> Linear(50, outputs)`` with both linear layers
initialised normal(0, 0.01), bias 0. The head is the model's last ``nn.Linear`` (``fc`` for ResNets,
``classifier[-1]`` for EfficientNet/ConvNeXt, ``heads.head`` for ViT), so every torchvision classifier works.

``space_to_depth=B`` puts ``PixelUnshuffle(B)`` before the backbone (TResNet's space-to-depth stem): a
``S x S`` photograph enters as ``B*B*3`` channels of ``S/B x S/B``, so the network costs about what it costs at
``S/B`` px while its first convolution (given ``B*B`` times the input channels) still sees every pixel.

``global_pool`` replaces the model's global average pooling (its last ``AdaptiveAvgPool2d``), with timm's names:
``"max"``, ``"avgmax"`` (the mean of both), or ``"gem"``, generalised-mean pooling with a learnt exponent
(Radenovic et al. 2018; init 3): between average and max pooling, for small lesions that an average dilutes.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import get_model, list_models

from ..errors import RetinopathyError
from .weights import WeightsError, load_pretrained_state

HEADS = ("linear", "lab")
POOLS = ("avg", "max", "avgmax", "gem")
CLASSIFIERS = tuple(list_models(module=torchvision.models))  # not detection, segmentation, video, optical flow
_OWN_ARGS = {arch: {"aux_logits": False, "init_weights": True, "transform_input": True}  # no auxiliary heads
             for arch in ("googlenet", "inception_v3")}


@functools.cache
def size_problem(arch: str, size: int) -> str:
    """Why ``arch`` cannot take ``size`` px inputs ('' when it can): torchvision builds ViT's position embeddings
    and MaxViT's attention grid for 224 px; other networks shrink a small input to nothing (Inception v3 at 64 px,
    AlexNet at 48), found by passing one through the network on the meta device (shapes only, no computation)."""
    if (arch.startswith("vit_") or arch.startswith("maxvit")) and size != 224:
        return f"{arch} takes 224 px images only (torchvision builds it for that size)"
    if arch not in CLASSIFIERS:
        return ""
    with torch.device("meta"), torch.no_grad():
        try:
            net = get_model(arch, weights=None, **_OWN_ARGS.get(arch, {})).eval()
        except Exception:  # noqa: BLE001 - a network whose construction reads values (RegNet's widths): untold
            return ""
        try:
            net(torch.empty(1, 3, size, size))
        except RuntimeError as e:
            if "size" in str(e):  # "Output size is too small", "Kernel size can't be greater than actual input size"
                return f"{arch} cannot take {size} px inputs (PyTorch: {str(e).splitlines()[0][:160]})"
    return ""


class ModelError(RetinopathyError, ValueError):
    """A model that cannot be built as asked (architecture, head, pooling, stem)."""


class GlobalPool(nn.Module):
    """``(N, C, H, W) -> (N, C, 1, 1)`` by one of :data:`POOLS` (a drop-in for ``AdaptiveAvgPool2d(1)``)."""

    def __init__(self, kind: str, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        if kind not in POOLS:
            raise ModelError(f"unknown global pooling {kind!r}; choose one of {', '.join(POOLS)}")
        self.kind, self.eps = kind, eps
        self.p = nn.Parameter(torch.tensor(p)) if kind == "gem" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "gem":  # in float32: x ** p of bf16 features loses the small ones
            return F.adaptive_avg_pool2d(x.float().clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p).to(x.dtype)
        if self.kind == "max":
            return F.adaptive_max_pool2d(x, 1)
        avg = F.adaptive_avg_pool2d(x, 1)
        return avg if self.kind == "avg" else 0.5 * (avg + F.adaptive_max_pool2d(x, 1))

    def extra_repr(self) -> str:
        return self.kind


def _last_linear(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ModelError(f"{type(model).__name__} has no Linear layer to replace with a DR head")
    return names[-1]


def _first_conv(model: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def make_head(kind: str, in_features: int, outputs: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_features, outputs)
    if kind == "lab":
        head = nn.Sequential(nn.Linear(in_features, 50), nn.ReLU(inplace=True), nn.Dropout(0.25),
                             nn.Linear(50, outputs))
        for m in head:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)
        return head
    raise ModelError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")


class Grader(nn.Module):
    """A torchvision backbone whose classifier is a DR head, :attr:`head`; ``head_name`` names the network's
    classifier, which the head replaces (with ``pair_eyes`` it becomes an identity, and the head is ``pair_head``).

    With ``pair_eyes`` the input is ``(N, 2, C, H, W)`` (an eye, then the other eye of the same patient):
    both go through the backbone, and the head sees the two feature vectors concatenated, as the
    2nd-place Kaggle 2015 team combined the eyes.
    """

    def __init__(self, arch: str, outputs: int, head: str = "linear", pair_eyes: bool = False,
                 space_to_depth: int = 1, global_pool: str = "avg"):
        super().__init__()
        if arch not in CLASSIFIERS:
            raise ModelError(f"{arch!r} is not a torchvision classification model (" + (
                "detection, segmentation, video or optical flow" if arch in list_models() else "unknown") +
                "); any classification model works, e.g. resnet18, resnet50, efficientnet_b0, convnext_tiny")
        if space_to_depth < 1:
            raise ModelError(f"space_to_depth must be 1 (off) or a block size of 2 or more, not {space_to_depth}")
        if space_to_depth > 1 and arch in ("googlenet", "inception_v3"):
            raise ModelError(f"{arch} rescales the three colour channels of its input itself and would drop the "
                             "others that space_to_depth makes; use it with another model (e.g. resnet18)")
        # GoogLeNet and Inception v3: no auxiliary outputs in training (their ImageNet weights load without them),
        # and the input rescaling their ImageNet weights expect (torchvision turns it on with weights)
        self.net = get_model(arch, weights=None, **_OWN_ARGS.get(arch, {}))
        self.stem = nn.Identity()
        if space_to_depth > 1:
            self.stem = nn.PixelUnshuffle(space_to_depth)
            name = _first_conv(self.net)
            conv = self.net.get_submodule(name)
            if conv.groups != 1:
                raise ModelError(f"{arch}: its first convolution is grouped; space_to_depth needs a plain one")
            _set_module(self.net, name, nn.Conv2d(conv.in_channels * space_to_depth ** 2, conv.out_channels,
                                                  conv.kernel_size, conv.stride, conv.padding,
                                                  bias=conv.bias is not None))
        if global_pool != "avg":
            pools = [n for n, m in self.net.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)
                     and m.output_size in (1, (1, 1))]  # not VGG's or AlexNet's 7x7 / 6x6
            if not pools:
                raise ModelError(f"{arch} has no global average pooling to replace with {global_pool!r}")
            _set_module(self.net, pools[-1], GlobalPool(global_pool))
        self.head_name = _last_linear(self.net)
        in_features = self.net.get_submodule(self.head_name).in_features
        new_head = make_head(head, in_features * (2 if pair_eyes else 1), outputs)
        if pair_eyes:
            _set_module(self.net, self.head_name, nn.Identity())
            self.pair_head = new_head
        else:
            _set_module(self.net, self.head_name, new_head)
        self.arch, self.outputs, self.pair_eyes = arch, outputs, pair_eyes
        self.space_to_depth, self.global_pool = space_to_depth, global_pool

    @property
    def head(self) -> nn.Module:
        return self.pair_head if self.pair_eyes else self.net.get_submodule(self.head_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pair_eyes:
            return self.pair_head(self.net(self.stem(x.flatten(0, 1))).view(x.shape[0], -1))
        return self.net(self.stem(x))

    def backbone_modules(self):
        """Every submodule outside the head (BatchNorm layers among them)."""
        head = set(self.head.modules())
        return [m for m in self.net.modules() if m not in head and m is not self.net]

    def load_backbone(self, state: dict) -> list[str]:
        """Load ImageNet weights into everything but the head; returns the keys left out.

        With ``space_to_depth`` the first convolution's weights are repeated over each channel's ``B*B``
        sub-pixels and divided by ``B*B`` (as timm adapts a first convolution to more input channels)."""
        prefix = self.head_name + "."
        own = self.net.state_dict()
        kept = {k: v for k, v in state.items() if not k.startswith(prefix) and k in own}
        first = _first_conv(self.net) + ".weight"
        blocks = self.space_to_depth ** 2
        if blocks > 1 and first in kept and kept[first].shape[1] * blocks == own[first].shape[1]:  # RGB weights
            kept[first] = kept[first].repeat_interleave(blocks, dim=1) / blocks
        pools = tuple(n + "." for n, m in self.net.named_modules() if isinstance(m, GlobalPool))  # GeM's own p
        missing = [k for k in own if not k.startswith((prefix, *pools)) and k not in kept
                   and not k.endswith("num_batches_tracked")]  # torchvision's ImageNet files predate that buffer
        if missing:
            raise ModelError(f"the weights do not fit {self.arch}: {len(missing)} backbone tensors missing, "
                             f"e.g. {missing[:3]}")
        tops = {k.split(".")[0] for k in own}  # modules the model has: not an auxiliary head it leaves out (googlenet)
        extra = [k for k in state if k not in own and k.split(".")[0] in tops and not k.startswith(prefix)]
        if extra:  # every tensor of resnet18 is in resnet34's weights too, with the same shape
            raise ModelError(f"the weights do not fit {self.arch}: {len(extra)} of their backbone tensors are not "
                             f"in it, e.g. {extra[:3]} (weights of a larger model of its family?)")
        wrong = [k for k, v in kept.items() if v.shape != own[k].shape]
        if wrong:
            raise ModelError(f"the weights do not fit {self.arch}: shape mismatch for {wrong[:3]}")
        self.net.load_state_dict(kept, strict=False)
        return [k for k in state if k not in kept]


def build_model(arch: str = "resnet18", outputs: int = 5, head: str = "linear", pretrained: bool = False,
                weights_tag: str = "IMAGENET1K_V1", weights_file: str | None = None,
                check_hash: bool = True, pair_eyes: bool = False,
                space_to_depth: int = 1, global_pool: str = "avg") -> tuple[Grader, str]:
    """Return (model, weights origin). ``pretrained`` loads ImageNet weights for the backbone."""
    model = Grader(arch, outputs, head, pair_eyes, space_to_depth, global_pool)
    origin = "random initialisation (no pretraining)"
    if pretrained or weights_file:
        state, origin = load_pretrained_state(arch, weights_tag, weights_file, check_hash)
        try:
            model.load_backbone(state)
        except ValueError as e:
            raise WeightsError(f"{origin}: {e}") from None
    return model, origin


def is_convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())
