"""The metrics of a split that lacks some grades: macro-F1 over the grades present, no made-up zeros."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from retinopathy.evaluation.metrics import full_metrics


def test_grades_without_images_or_predictions():
    y, pred = [0, 0, 0, 1, 2, 2], [0, 0, 1, 1, 0, 4]  # no grade 3 anywhere; grade 4 predicted once, never true
    m = full_metrics(y, pred, np.eye(5)[pred])
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))  # scikit-learn's own label set
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0 + 0) / 4)  # grades 0, 1, 2 and 4, not 3
    assert m["recall"] == pytest.approx([2 / 3, 1, 0, None, None])
    assert m["per_grade"]["3"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert m["per_grade"]["4"] == {"precision": 0.0, "recall": None, "f1": 0.0, "support": 0}
    assert m["per_grade"]["2"]["precision"] is None  # never predicted
    json.dumps(m, allow_nan=False)  # metrics.json stays strict JSON
