"""Models: torchvision backbones with DR heads, ImageNet weights, and training objectives."""
from .factory import Grader, build_model
from .objectives import make_objective
from .weights import WeightsError

__all__ = ["Grader", "build_model", "make_objective", "WeightsError"]
