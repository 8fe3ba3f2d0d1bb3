"""DR metrics from true grades, predicted grades and grade probabilities (scikit-learn underneath)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, recall_score,
                             roc_auc_score)

from ..data.formats import GRADES

REFERABLE = 2  # moderate NPDR or worse


def majority_accuracy(y_true) -> float:
    """Accuracy of always answering the most common grade of this split."""
    y = grades(y_true, "y_true")
    return float(np.bincount(y, minlength=len(GRADES)).max() / len(y)) if len(y) else float("nan")


def no_better_than_majority(record: dict) -> bool:
    """An evaluation (``metrics.json``) of a model that has not learnt to grade: kappa <= 0, or accuracy not above
    always answering the most common grade."""
    return record["accuracy"] <= record["majority_accuracy"] or record["kappa"] <= 0


def one_grade(y_true, y_pred) -> bool:
    """Truth and answers are all one grade: kappa is 0 / 0, undefined."""
    return len(np.unique(np.concatenate([y_true, y_pred]))) < 2


def grades(values, name: str = "grades") -> np.ndarray:
    """``values`` as an array of grades 0-4, or a ValueError naming those that are not (scikit-learn's metrics
    would drop them silently, or count them as further classes)."""
    y = np.asarray(values)
    bad = y[(y < 0) | (y > len(GRADES) - 1) | (y != np.round(y))] if y.size else y
    if bad.size:
        raise ValueError(f"{name}: expected grades 0-{len(GRADES) - 1}, got {sorted(set(bad.tolist()))[:5]}")
    return y.astype(np.int64)


def graded_pair(y_true, y_pred, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Both as :func:`grades`, one per image: a ValueError names ``where`` and the two lengths when they differ."""
    y_true, y_pred = grades(y_true, "y_true"), grades(y_pred, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"{where}: y_true and y_pred need one grade per image each (got {len(y_true)} and "
                         f"{len(y_pred)})")
    return y_true, y_pred


def quadratic_kappa(y_true, y_pred) -> float:
    """Quadratic weighted kappa of true and predicted grades 0-4 (scikit-learn's, with the five grades as labels)."""
    return quadratic_kappa_unchecked(*graded_pair(y_true, y_pred, "quadratic_kappa"))


_QUADRATIC = np.subtract.outer(np.arange(len(GRADES)), np.arange(len(GRADES))) ** 2.0


def quadratic_kappa_unchecked(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """:func:`quadratic_kappa` of grades already checked: scikit-learn's ``cohen_kappa_score(labels=GRADES,
    weights="quadratic")`` (the tests check it is) without its input checks, which take most of its time (6.6 ms
    against 0.08 ms on 402 eyes): the bootstrap and the threshold search compute it thousands of times. 0 when
    truth and answers are one grade everywhere (no agreement beyond chance)."""
    n = len(GRADES)
    seen = np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)
    expected = np.outer(seen.sum(1), seen.sum(0)) / max(seen.sum(), 1)
    chance = (_QUADRATIC * expected).sum()
    return round(float(1 - (_QUADRATIC * seen).sum() / chance), 12) if chance else 0.0  # 1e-16 is 0: no skill


def _referable(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    """(whether each image is referable DR, its P(grade >= 2)): ``probs``, the (N, 5) grade probabilities, summed
    over grades 2-4."""
    y = grades(y_true, "y_true") >= REFERABLE
    p = np.asarray(probs, dtype=float)
    if not len(y):
        return y, np.zeros(0)
    if p.shape != (len(y), len(GRADES)):
        raise ValueError(f"referable_auc: probs need the {len(GRADES)} grade probabilities of each of the {len(y)} "
                         f"images, shape ({len(y)}, {len(GRADES)}); got shape {p.shape}")
    return y, p[:, REFERABLE:].sum(1)


def referable_auc(y_true, probs) -> float | None:
    """ROC AUC of P(grade >= 2) for referable DR (:func:`_referable`); None when only one side (or nothing) is
    present."""
    y, p = _referable(y_true, probs)
    if len(y) == 0 or y.min() == y.max():
        return None
    return float(roc_auc_score(y, p))


def referable_rates(y_true, y_pred) -> dict:
    """Sensitivity and specificity for referable DR of the grades given (a grade 2 or worse refers the eye), as a
    screening programme counts them; None for a side the images lack."""
    y, p = grades(y_true, "y_true") >= REFERABLE, grades(y_pred, "y_pred") >= REFERABLE
    sensitivity, specificity = (recall_score(y, p, pos_label=side, zero_division=np.nan) for side in (True, False))
    return {"referable_sensitivity": _defined([sensitivity])[0], "referable_specificity": _defined([specificity])[0]}


def _defined(values) -> list[float | None]:
    """Floats, with None where scikit-learn's ``zero_division=np.nan`` marks a value as undefined."""
    return [None if np.isnan(v) else float(v) for v in values]


def summary(y_true, y_pred) -> dict:
    """The per-epoch numbers: accuracy, kappa, macro-F1, per-grade recall.

    Macro-F1 averages F1 over the grades present in the true or the predicted grades (scikit-learn's default
    label set), not over all five: a grade with no images and no predictions has no F1. A grade with no images
    has no recall (None)."""
    y_true, y_pred = graded_pair(y_true, y_pred, "summary")
    _, recall, _, _ = precision_recall_fscore_support(y_true, y_pred, labels=GRADES, zero_division=np.nan)
    return {"accuracy": float(accuracy_score(y_true, y_pred)), "kappa": quadratic_kappa_unchecked(y_true, y_pred),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro")), "recall": _defined(recall)}


def full_metrics(y_true, y_pred, probs) -> dict:
    """Everything ``evaluate`` writes to metrics.json; per grade, None where a value is undefined: recall of a
    grade with no images, precision of one never predicted, F1 of one neither present nor predicted."""
    y_true, y_pred = graded_pair(y_true, y_pred, "full_metrics")
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=GRADES,
                                                                     zero_division=np.nan)
    out = summary(y_true, y_pred)
    out.update({
        "majority_accuracy": majority_accuracy(y_true),
        "referable_auc": referable_auc(y_true, probs),
        **referable_rates(y_true, y_pred),
        "per_grade": {str(g): {"precision": p, "recall": r, "f1": f, "support": int(n)}
                      for g, p, r, f, n in zip(GRADES, _defined(precision), _defined(recall), _defined(f1), support)},
        "count": int(len(y_true)),
        "true_counts": np.bincount(y_true, minlength=len(GRADES)).tolist(),
        "predicted_counts": np.bincount(y_pred, minlength=len(GRADES)).tolist(),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=GRADES).tolist(),
    })
    return out


def bootstrap_ci(y_true, y_pred, groups, n: int = 1000, seed: int = 0, probs=None) -> dict:
    """95 % percentile confidence intervals for accuracy and quadratic kappa (and, given ``probs``, the (N, 5)
    grade probabilities, for the referable-DR AUC), resampling ``groups`` (patients).

    A resample in which truth and answers are all one grade has no kappa (0 / 0); such resamples are left out
    of kappa's interval (counted in ``kappa_undefined``; the interval is None when no resample has one); one
    without both referable and other eyes has no AUC, and is left out of its interval alike. With one group every
    resample is the same, so there is no interval: all are None. ``groups=None`` resamples images."""
    y_true, y_pred = grades(y_true, "y_true"), grades(y_pred, "y_pred")
    unit, groups = ("image", np.arange(len(y_true))) if groups is None else ("patient", np.asarray(groups))
    if not len(y_true) == len(y_pred) == len(groups) or n < 1 or not len(y_true):
        raise ValueError(f"bootstrap_ci: y_true, y_pred and groups need one entry per image ({len(y_true)}, "
                         f"{len(y_pred)}, {len(groups)}), at least one, and n >= 1 resamples (got {n})")
    uniq, inverse = np.unique(groups, return_inverse=True)
    auc = {} if probs is None else {"referable_auc": None}
    if len(uniq) < 2:
        return {"level": 0.95, "resamples": n, "unit": unit, "accuracy": None, "kappa": None, "kappa_undefined": n,
                **auc}
    if probs is not None:
        refer, p_refer = _referable(y_true, probs)
    members = [np.flatnonzero(inverse == i) for i in range(len(uniq))]
    rng = np.random.default_rng(seed)
    acc, kap, aucs = [], [], []
    for _ in range(n):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(uniq), len(uniq))])
        acc.append((y_true[idx] == y_pred[idx]).mean())  # accuracy_score's input checks cost 20x the mean here
        if not one_grade(y_true[idx], y_pred[idx]):
            kap.append(quadratic_kappa_unchecked(y_true[idx], y_pred[idx]))
        if probs is not None and 0 < refer[idx].sum() < len(idx):
            aucs.append(roc_auc_score(refer[idx], p_refer[idx]))
    interval = lambda values: [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]  # noqa: E731
    if aucs:
        auc["referable_auc"] = interval(aucs)
    return {"level": 0.95, "resamples": n, "unit": unit, "accuracy": interval(acc),
            "kappa": interval(kap) if kap else None, "kappa_undefined": n - len(kap), **auc}


def seen_images(metrics: dict) -> str:
    """How many graded images the model saw before (trained on, or chose its checkpoint and thresholds on: the
    run's val split), as ``26 are in the run's training split and 8 in its val split, ...``; '' for none."""
    trained, chose = metrics.get("training_images"), metrics.get("selection_images")
    parts = [f"{trained} are in the run's training split"] if trained else []
    if chose:
        where = "in its" if parts else "are in the run's"
        parts.append(f"{chose} {where} val split, which chose its checkpoint (and any thresholds)")
    return " and ".join(parts)
