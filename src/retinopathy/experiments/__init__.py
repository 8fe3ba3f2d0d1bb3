"""Grids of training runs described by a YAML file (``retinopathy experiment``)."""
from .runner import ExperimentError, load_experiment, run_experiment

__all__ = ["ExperimentError", "load_experiment", "run_experiment"]
