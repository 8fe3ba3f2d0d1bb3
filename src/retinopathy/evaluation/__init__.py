"""Evaluation: DR metrics (accuracy, quadratic kappa, per-grade recall, referable-DR AUC, bootstrap intervals) and
the ``retinopathy evaluate`` command (:mod:`.evaluate`)."""
from .metrics import bootstrap_ci, full_metrics, majority_accuracy, quadratic_kappa, referable_auc, summary

__all__ = ["bootstrap_ci", "full_metrics", "majority_accuracy", "quadratic_kappa", "referable_auc", "summary"]
