"""Data layer: label formats, image decoding, splits, transforms, the Dataset, checks, synthetic data."""
from .dataset import FundusDataset, load_catalog
from .formats import GRADE_NAMES, GRADES, Catalog, Sample, read_catalog
from .images import ImageError, open_image, to_rgb
from .problems import DataError, Problem
from .transforms import Normalize, Preprocessing, build_transform

__all__ = ["FundusDataset", "load_catalog", "GRADES", "GRADE_NAMES", "Catalog", "Sample", "read_catalog",
           "ImageError", "open_image", "to_rgb", "DataError", "Problem", "Normalize", "Preprocessing",
           "build_transform"]
