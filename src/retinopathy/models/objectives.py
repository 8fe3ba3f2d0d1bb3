"""Training objectives. Each maps model outputs to a loss, five grade probabilities and a grade.

``classification``  5 logits, cross-entropy (optional class weights and label smoothing).
``regression``      1 output trained on the grade with smooth L1; thresholds (tuned on validation for
                    kappa, stored in the checkpoint) cut it into grades. Its "probabilities" are a soft
                    assignment ``softmax(-(y - k)^2)`` over grades k: a documented stand-in for reports.
``ordinal``         4 cumulative logits P(grade > k) (CORAL-style, binary cross-entropy on each);
                    probabilities are differences of the cumulative ones.
``ordinal+ce``      the ordinal outputs and 5 class logits trained together (the two losses summed); grades,
                    probabilities and scores are the ordinal outputs', the class logits only shape the features.

Any objective grades by ``decision``: ``argmax`` (the most probable grade; classification's default) or
``thresholds`` (the score cut at thresholds tuned on validation; the others' default). Classification's score is
the expected grade, so ``thresholds`` turns its probabilities into grades the way regression does.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.formats import GRADES
from ..evaluation.metrics import majority_accuracy, quadratic_kappa_unchecked

NUM_GRADES = len(GRADES)
OBJECTIVES = ("classification", "regression", "ordinal", "ordinal+ce")
DEFAULT_THRESHOLDS = (0.5, 1.5, 2.5, 3.5)
THRESHOLD_RULES = ("kappa", "kappa-above-majority")
DECISIONS = ("argmax", "thresholds")


def default_decision(objective: str) -> str:
    """``argmax`` for classification, ``thresholds`` for regression and ordinal (and checkpoints without one)."""
    return "argmax" if objective == "classification" else "thresholds"


class Objective:
    name = "classification"
    outputs = NUM_GRADES
    loss_name = "cross-entropy"
    meaning = {"outputs": "5 class logits", "probabilities": "softmax(outputs)",
               "score": "expected grade: sum over k of k * probability k"}

    def __init__(self, class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0,
                 thresholds=DEFAULT_THRESHOLDS, decision: str | None = None):
        if decision not in (None, *DECISIONS):
            raise ValueError(f"unknown decision {decision!r}; choose one of {', '.join(DECISIONS)}")
        self.class_weights = class_weights
        self.label_smoothing = label_smoothing
        self.thresholds = thresholds
        self.decision = decision or default_decision(self.name)

    @property
    def thresholds(self) -> list[float]:
        """The four cuts of the score between grades 0|1, 1|2, 2|3 and 3|4 (equal cuts: a grade never given)."""
        return self._thresholds

    @thresholds.setter
    def thresholds(self, values) -> None:
        cuts = [float(t) for t in values]
        if len(cuts) != NUM_GRADES - 1 or any(a > b for a, b in zip(cuts, cuts[1:])):
            raise ValueError(f"thresholds: expected {NUM_GRADES - 1} cuts in non-decreasing order, got {cuts}")
        self._thresholds = cuts

    def _weights(self, out: torch.Tensor):
        return None if self.class_weights is None else self.class_weights.to(out.device, torch.float32)

    def _weighted_mean(self, per: torch.Tensor, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The mean of per-image losses, each weighted by its grade's class weight (as cross-entropy's weight)."""
        w = self._weights(out)
        if w is None:
            return per.mean()
        total = w[target].sum()  # 0 for a batch of grades the train split lacks (weight 0): then unweighted
        return torch.where(total > 0, (per * w[target]).sum() / total.clamp_min(1e-12), per.mean())

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (label-smoothed), each image weighted by its true grade's class weight. Not
        ``F.cross_entropy(weight=...)``: with label smoothing it also weighs the smoothed targets by grade, which
        pulls every image's prediction towards the rarest grades."""
        per = F.cross_entropy(out.float(), target, reduction="none", label_smoothing=self.label_smoothing)
        return self._weighted_mean(per, out, target)

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        return out.float().softmax(1)

    def score(self, out: torch.Tensor) -> torch.Tensor:
        """A continuous severity score (expected grade), used to tune thresholds."""
        return (self.probabilities(out) * torch.arange(NUM_GRADES, device=out.device)).sum(1)

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        return self.grades_of(self.probabilities(out), self.score(out))

    def plain(self) -> "Objective":
        """This objective without class weights or label smoothing: evaluation losses comparable across runs
        (and equal to ``evaluate``'s), as timm validates with a plain cross-entropy."""
        return type(self)(thresholds=self.thresholds, decision=self.decision)

    def describe(self) -> dict:
        """What the outputs mean and how they become a grade, in words (for an exported model's JSON)."""
        grade = ("the most probable grade" if self.decision == "argmax" else
                 "the number of thresholds at or below the score" + unreachable_note(self.thresholds))
        return {**self.meaning, "grade": grade}

    def grades_of(self, probs, scores):
        """Grades from probabilities and scores (one output's, or averaged or blended ones): the most probable
        grade (``decision="argmax"``) or the score cut at the thresholds (``"thresholds"``)."""
        if self.decision == "argmax":
            return probs.argmax(1)
        if isinstance(scores, torch.Tensor):
            return torch.bucketize(scores.double(), torch.tensor(self.thresholds, dtype=torch.float64,  # as numpy
                                                                 device=scores.device), right=True)
        return np.digitize(scores, self.thresholds)

    def blended(self, probs, scores, patients, weight: float):
        """(probabilities, scores, grades) after mixing each eye with its partner (:func:`blend_eyes`)."""
        probs, scores = blend_eyes(probs, patients, weight), blend_eyes(scores, patients, weight)
        return probs, scores, self.grades_of(probs, scores)


class Regression(Objective):
    name = "regression"
    outputs = 1
    loss_name = "smooth L1"
    meaning = {"outputs": "1 value: the score", "score": "the output",
               "probabilities": "softmax(-(score - k)^2) over k = 0..4: a soft stand-in; the grade comes from the "
                                "thresholds and need not be the most probable"}

    def loss(self, out, target):
        per = F.smooth_l1_loss(out.float().squeeze(1), target.float(), reduction="none")
        return self._weighted_mean(per, out, target)

    def score(self, out):
        return out.float().squeeze(1)

    def probabilities(self, out):
        k = torch.arange(NUM_GRADES, device=out.device, dtype=torch.float32)
        return (-(self.score(out)[:, None] - k) ** 2).softmax(1)


class Ordinal(Objective):
    name = "ordinal"
    outputs = NUM_GRADES - 1
    loss_name = "ordinal binary cross-entropy"
    meaning = {"outputs": "4 logits of P(grade > k), k = 0..3", "score": "sum of sigmoid(outputs)",
               "probabilities": "c[k] - c[k+1] with c = [1, cumulative minimum of sigmoid(outputs), 0]; the grade "
                                "comes from the thresholds and need not be the most probable"}

    def loss(self, out, target):
        levels = (target[:, None] > torch.arange(NUM_GRADES - 1, device=out.device)).float()
        per = F.binary_cross_entropy_with_logits(out.float(), levels, reduction="none").sum(1)
        return self._weighted_mean(per, out, target)

    def probabilities(self, out):
        above = out.float().sigmoid()  # P(grade > k), k = 0..3
        above = torch.cummin(above, dim=1).values  # keep it monotone
        ones, zeros = torch.ones_like(above[:, :1]), torch.zeros_like(above[:, :1])
        cum = torch.cat([ones, above, zeros], 1)
        return (cum[:, :-1] - cum[:, 1:]).clamp_min(0)

    def score(self, out):
        return out.float().sigmoid().sum(1)


class OrdinalCE(Ordinal):
    name = "ordinal+ce"
    outputs = Ordinal.outputs + NUM_GRADES  # 4 cumulative logits, then 5 class logits
    loss_name = "ordinal BCE + cross-entropy"
    meaning = {"outputs": "4 logits of P(grade > k), k = 0..3, then 5 class logits (not used for grading)",
               "score": "sum of sigmoid(outputs[:4])",
               "probabilities": Ordinal.meaning["probabilities"].replace("sigmoid(outputs)", "sigmoid(outputs[:4])")}

    def loss(self, out, target):
        return super().loss(out[:, :Ordinal.outputs], target) + Objective.loss(self, out[:, Ordinal.outputs:], target)

    def probabilities(self, out):
        return super().probabilities(out[:, :Ordinal.outputs])

    def score(self, out):
        return super().score(out[:, :Ordinal.outputs])


def loss_name(objective: str) -> str:
    """The training loss of the objective called ``objective`` (the name itself if this version has none)."""
    try:
        return make_objective(objective).loss_name
    except ValueError:
        return objective


def make_objective(name: str, **kwargs) -> Objective:
    classes = {"classification": Objective, "regression": Regression, "ordinal": Ordinal, "ordinal+ce": OrdinalCE}
    if name not in classes:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return classes[name](**kwargs)


def class_weights(counts: list[int], kind: str, beta: float = 0.999) -> torch.Tensor | None:
    """``inverse``: n / (K * count); ``effective``: (1 - beta) / (1 - beta^count) (Cui et al. 2019); mean 1 over
    the K grades present; 0 for a grade without images (it weighs no image)."""
    if kind == "none":
        return None
    if kind not in ("inverse", "effective"):
        raise ValueError(f"unknown class weighting {kind!r}; choose none, inverse or effective")
    c = np.asarray(counts, dtype=np.float64)
    present = c > 0
    if not present.any():
        return None
    w = np.zeros_like(c)
    w[present] = (c.sum() / (present.sum() * c[present]) if kind == "inverse" else
                  (1 - beta) / (1 - beta ** c[present]))
    return torch.tensor(w / w[present].mean(), dtype=torch.float32)


def check_blend_weight(weight: float) -> float:
    """``weight`` if it is a share between 0 (each eye alone) and 0.5 (both eyes alike); ValueError otherwise."""
    if not 0 <= weight <= 0.5:
        raise ValueError(f"blend weight {weight} must lie between 0 (each eye alone) and 0.5 (both eyes alike)")
    return weight


def blend_eyes(values, patients, weight: float) -> np.ndarray:
    """Each image's scores (or probability rows) mixed with its patient's other eye: ``(1 - weight) * own +
    weight * other`` (the mean of the others when a patient has more than two images). The two eyes of a
    patient usually share a grade, so a weak grader gains from the second look (Kaggle 2015 teams did this).
    Images without a partner keep their own values; ``weight=0`` changes nothing."""
    values = np.asarray(values, dtype=np.float64)
    check_blend_weight(weight)
    if weight == 0 or len(values) == 0:
        return values
    _, inverse, counts = np.unique(np.asarray(patients, dtype=str), return_inverse=True, return_counts=True)
    totals = np.zeros((len(counts),) + values.shape[1:])
    np.add.at(totals, inverse, values)
    n = counts[inverse].reshape((-1,) + (1,) * (values.ndim - 1))
    others = (totals[inverse] - values) / np.maximum(n - 1, 1)
    return np.where(n > 1, (1 - weight) * values + weight * others, values)


def unreachable_note(thresholds) -> str:
    """'' or words naming the grades no score can get: grade g lies between thresholds g-1 and g, which the
    search may have merged (e.g. [1.5, 1.5, 1.5, 3.5]: never grade 1 or 2)."""
    never = [str(g) for g in range(1, len(thresholds)) if thresholds[g - 1] >= thresholds[g]]
    return (f" (never grade {' or '.join(never)}: {'its' if len(never) == 1 else 'their'} thresholds coincide)"
            if never else "")


def tune_thresholds(scores: np.ndarray, labels: np.ndarray, rule: str = "kappa", margin: float = 0.0) -> list[float]:
    """Thresholds that maximise quadratic weighted kappa on (scores, labels): coordinate search from 0.5..3.5.

    ``rule="kappa-above-majority"``: the highest kappa among thresholds whose accuracy is above the share of the
    most common grade (what always answering that grade scores) plus ``margin``; where no thresholds reach it,
    the most accurate ones the search finds.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; choose one of {', '.join(THRESHOLD_RULES)}")
    labels = np.asarray(labels)
    floor = majority_accuracy(labels) + margin if rule == "kappa-above-majority" else -1.0

    def value(th):  # compared as tuples: thresholds above the floor first, then kappa; below it, accuracy
        pred = np.digitize(scores, th)
        accuracy = float((pred == labels).mean())
        if accuracy <= floor:
            return (0, accuracy)
        return (1, quadratic_kappa_unchecked(labels, pred))

    def search(t: list[float]) -> tuple[tuple, list[float]]:
        best = value(t)
        for _ in range(5):
            start = t
            for i in range(len(t)):
                lo = max(t[i - 1] if i else -np.inf, t[i] - 1)
                hi = min(t[i + 1] if i + 1 < len(t) else np.inf, t[i] + 1)
                for cand in np.linspace(lo, hi, 41):
                    trial = t[:i] + [float(cand)] + t[i + 1:]
                    v = value(trial)
                    if v[0] > best[0] or (v[0] == best[0] and v[1] > best[1] + 1e-9):
                        best, t = v, trial
            if t == start:
                break
        return best, t

    best, t = search(list(DEFAULT_THRESHOLDS))
    if best[0] == 0 and len(scores):  # the floor not reached from 0.5..3.5: again from the cuts that answer each
        # grade as often as it occurs (a start close to the floor when most eyes are grade 0)
        share = np.cumsum(np.bincount(labels, minlength=NUM_GRADES))[:-1] / len(labels)
        again, t2 = search([float(v) for v in np.quantile(scores, share)])
        if again > best:
            best, t = again, t2
    rounded = [round(v, 4) for v in t]  # shorter to read, where they grade these scores as the search's do
    return rounded if np.array_equal(np.digitize(scores, rounded), np.digitize(scores, t)) else t
