"""Diabetic-retinopathy grading toolkit."""
__version__ = "0.1.0"
