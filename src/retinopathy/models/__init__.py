"""Models: torchvision backbones with DR heads, ImageNet weights, training objectives, and ``restore`` (a
trained grader from its checkpoint: model, objective, preprocessing)."""
from .factory import Grader, build_model
from .objectives import make_objective
from .restore import restore
from .weights import WeightsError

__all__ = ["Grader", "build_model", "make_objective", "restore", "WeightsError"]
