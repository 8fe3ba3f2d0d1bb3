"""The metrics of a split that lacks some grades: macro-F1 over the grades present, no made-up zeros."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from retinopathy.evaluation.metrics import full_metrics, referable_auc


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


def test_grades_outside_0_to_4_are_refused_not_dropped():
    """scikit-learn's kappa with labels=0..4 ignores a 7 (kappa 1.0 with a wrong answer); bincount grows."""
    from retinopathy.evaluation import quadratic_kappa

    with pytest.raises(ValueError, match=r"y_true: expected grades 0-4, got \[7\]"):
        quadratic_kappa([0, 1, 2, 3, 7], [0, 1, 2, 3, 0])
    with pytest.raises(ValueError, match=r"y_pred: expected grades 0-4, got \[2.5\]"):
        full_metrics([0, 1], [0, 2.5], np.full((2, 5), 0.2))
    assert quadratic_kappa(np.array([0.0, 4.0]), [0, 4]) == 1.0  # whole numbers as floats are grades
    with pytest.raises(ValueError, match=r"quadratic_kappa: y_true and y_pred need one grade per image each \(got "
                                         r"2 and 3\)"):  # was numpy's "operands could not be broadcast"
        quadratic_kappa([0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match=r"full_metrics: .* \(got 3 and 2\)"):
        full_metrics([0, 1, 2], [0, 1], np.full((3, 5), 0.2))
    from retinopathy.evaluation.metrics import majority_accuracy

    with pytest.raises(ValueError, match=r"y_true: expected grades 0-4, got \[7\]"):  # was 0.667
        majority_accuracy([0, 7, 7])
    assert majority_accuracy([0.0, 1.0, 1.0]) == pytest.approx(2 / 3)  # was numpy's casting TypeError


def test_bootstrap_needs_one_group_per_image():
    from retinopathy.evaluation import bootstrap_ci

    with pytest.raises(ValueError, match=r"one entry per image \(4, 4, 2\)"):
        bootstrap_ci([0, 1, 2, 3], [0, 1, 2, 3], [0, 0])  # used to resample the first two images only
    per_image = bootstrap_ci([0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 1, 1], None, n=200)  # None: each image its own
    assert per_image["unit"] == "image" and per_image["accuracy"][0] < per_image["accuracy"][1]


def test_confusion_matrix_rows_are_true_grades():
    """confusion_matrix.csv and the normalised figure read a row as the true grade, a column as the answer."""
    m = full_metrics([0, 0, 1, 3], [0, 1, 1, 4], np.eye(5)[[0, 1, 1, 4]])
    assert m["confusion_matrix"] == [[1, 1, 0, 0, 0], [0, 1, 0, 0, 0], [0] * 5, [0, 0, 0, 0, 1], [0] * 5]


def test_bootstrap_interval_is_95_percent():
    """Accuracy 0.5 over 400 independent images: its 95 % interval is about 2 x 1.96 x 0.025 = 0.098 wide
    (a 90 % one would be 0.082)."""
    from retinopathy.evaluation import bootstrap_ci

    y = np.zeros(400, dtype=int)
    ci = bootstrap_ci(y, np.tile([0, 1], 200), None, n=2000)
    assert ci["level"] == 0.95 and 0.09 < ci["accuracy"][1] - ci["accuracy"][0] < 0.106
    assert ci["accuracy"][0] < 0.5 < ci["accuracy"][1]


def test_referable_sensitivity_and_specificity_count_grades_2_and_up_as_referrals():
    from retinopathy.evaluation.metrics import referable_rates

    truth, answers = [0, 1, 1, 0, 2, 3, 4, 2], [0, 2, 1, 1, 1, 3, 2, 4]  # referable 4 of 4 found 3; 4 not: 3 kept
    assert referable_rates(truth, answers) == {"referable_sensitivity": 0.75, "referable_specificity": 0.75}
    assert full_metrics(truth, answers, np.full((8, 5), 0.2))["referable_sensitivity"] == 0.75
    assert referable_rates([0, 1], [2, 0]) == {"referable_sensitivity": None, "referable_specificity": 0.5}


def test_referable_auc_ranks_grade_2_and_up_by_their_summed_probabilities():
    """Referable DR is grade 2 (moderate) or worse, scored by P(2) + P(3) + P(4) (0.3, 0.7 and 0.4 here)."""
    probs = [[0.1, 0.6, 0.1, 0.0, 0.2], [0.2, 0.1, 0.6, 0.0, 0.1], [0.3, 0.3, 0.2, 0.2, 0.0]]
    assert referable_auc([1, 2, 3], probs) == 1.0  # 0.3 against 0.7 and 0.4 (grade 3 alone: 0.5; P(3+P4): 0.25)
    assert referable_auc([2, 1, 0], probs) == 0.0  # 0.3 against 0.7 and 0.4, the other way round
    assert referable_auc([0, 1, 1], probs) is None  # no referable eye: no AUC
    with pytest.raises(ValueError, match=r"probs need the 5 grade probabilities of each of the 3 images, shape "
                                         r"\(3, 5\); got shape \(3,\)"):  # P(referable) itself: an IndexError
        referable_auc([1, 2, 3], [0.3, 0.7, 0.4])
    with pytest.raises(ValueError, match=r"got shape \(3, 4\)"):  # four columns: one grade short
        referable_auc([0, 2, 4], np.full((3, 4), 0.25))
    with pytest.raises(ValueError, match="y_true: expected grades 0-4"):
        referable_auc([0, 2, 7], np.full((3, 5), 0.2))
    assert referable_auc([], []) is None  # nothing present: no AUC, whatever shape the empty probabilities have


def test_metrics_of_answers_and_truths_of_different_lengths_name_both():
    from retinopathy.evaluation.metrics import summary

    with pytest.raises(ValueError, match=r"summary: .* \(got 2 and 3\)"):
        summary([0, 1], [0, 1, 2])


def test_accuracy_equal_to_the_majority_rate_is_no_better_than_it():
    from retinopathy.evaluation.metrics import no_better_than_majority

    assert no_better_than_majority({"accuracy": 0.5, "majority_accuracy": 0.5, "kappa": 0.2})
    assert not no_better_than_majority({"accuracy": 0.51, "majority_accuracy": 0.5, "kappa": 0.2})
    assert no_better_than_majority({"accuracy": 0.9, "majority_accuracy": 0.5, "kappa": 0.0})
