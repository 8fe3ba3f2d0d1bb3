"""The optimizer and learning-rate schedule of a training phase (linear warm-up, then cosine to zero; or
constant) and the classification objective's label smoothing."""
from __future__ import annotations

import math
from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F

from retinopathy.models.objectives import make_objective
from retinopathy.training.optim import build_scheduler

LR = 0.1


def lrs(scheduler_name: str, warmup_epochs: float, steps_per_epoch: int, phase_epochs: int) -> list[float]:
    """The learning rate of every optimizer step of a phase, and the one after its last step."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    args = Namespace(scheduler=scheduler_name, warmup_epochs=warmup_epochs)
    scheduler = build_scheduler(args, optimizer, steps_per_epoch, phase_epochs)
    seen = []
    for _ in range(steps_per_epoch * phase_epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return seen + [optimizer.param_groups[0]["lr"]]


def test_linear_warmup_then_cosine_to_zero():
    seen = lrs("cosine", 1.0, steps_per_epoch=10, phase_epochs=5)  # 50 steps, the first 10 warm up
    assert len(seen) == 51
    assert seen[0] == pytest.approx(LR / 11)  # the first step already moves, at 1/(warm-up steps + 1)
    for step in range(10):
        assert seen[step] == pytest.approx(LR * (step + 1) / 11)  # linear
    assert seen[10] == pytest.approx(LR)  # the end of the warm-up: the full rate
    assert seen[20] == pytest.approx(LR * 0.5 * (1 + math.cos(math.pi / 4)))  # a quarter into the cosine
    assert seen[30] == pytest.approx(LR / 2)  # halfway from the end of the warm-up to the end
    assert seen[40] == pytest.approx(LR * 0.5 * (1 + math.cos(3 * math.pi / 4)))
    assert seen[49] == pytest.approx(LR * 0.5 * (1 + math.cos(math.pi * 39 / 40)))
    assert seen[49] < 0.002 * LR and seen[50] == pytest.approx(0, abs=1e-12)  # down to zero at the end
    assert all(a < b for a, b in zip(seen[:10], seen[1:11]))
    assert all(a > b for a, b in zip(seen[10:50], seen[11:51]))


def test_fractional_and_no_warmup():
    seen = lrs("cosine", 0.5, steps_per_epoch=8, phase_epochs=2)  # 16 steps, 4 of warm-up
    assert seen[0] == pytest.approx(LR / 5) and seen[3] == pytest.approx(LR * 4 / 5)
    assert seen[4] == pytest.approx(LR) and seen[10] == pytest.approx(LR / 2)
    seen = lrs("cosine", 0.0, steps_per_epoch=8, phase_epochs=2)
    assert seen[0] == pytest.approx(LR) and seen[8] == pytest.approx(LR / 2) and seen[16] == pytest.approx(0)


def test_warmup_longer_than_the_phase_still_reaches_the_full_rate():
    seen = lrs("cosine", 3.0, steps_per_epoch=4, phase_epochs=1)  # warm-up capped at the phase's last step
    assert seen[:4] == pytest.approx([LR / 4, LR / 2, 3 * LR / 4, LR])


def test_no_scheduler_keeps_the_rate_constant():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    assert build_scheduler(Namespace(scheduler="none", warmup_epochs=1.0), optimizer, 10, 5) is None
    assert lrs("none", 1.0, steps_per_epoch=10, phase_epochs=5) == [LR] * 51


# ------------------------------------------------------------------------------------------- label smoothing
@pytest.fixture
def batch():
    """Logits of a fairly confident grader (mostly right), where smoothing changes the loss clearly."""
    g = torch.Generator().manual_seed(0)
    out, target = torch.randn(16, 5, generator=g) * 2, torch.randint(0, 5, (16,), generator=g)
    out[torch.arange(16), target] += 4
    return out, target


@pytest.mark.parametrize("s", [0.1, 0.3])
def test_label_smoothing_is_torch_cross_entropy_with_smoothing(batch, s):
    out, target = batch
    loss = make_objective("classification", label_smoothing=s).loss(out, target)
    assert loss.item() == pytest.approx(F.cross_entropy(out, target, label_smoothing=s).item(), rel=1e-6)
    # by hand: the target is (1 - s) on the true grade plus s spread over all five grades
    logp = out.log_softmax(1)
    by_hand = -((1 - s) * logp[torch.arange(16), target] + s * logp.mean(1)).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    plain = make_objective("classification").loss(out, target)
    assert plain.item() == pytest.approx(F.cross_entropy(out, target).item(), rel=1e-6)
    assert abs(loss.item() - plain.item()) > 0.05


def test_label_smoothing_with_class_weights(batch):
    """Each image's smoothed cross-entropy weighted by its own grade's weight (not cross_entropy's weight=, which
    also weighs the smoothed targets by grade); without smoothing, the two agree."""
    out, target = batch
    w = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0])
    loss = make_objective("classification", class_weights=w, label_smoothing=0.2).loss(out, target)
    per = F.cross_entropy(out, target, reduction="none", label_smoothing=0.2)
    assert loss.item() == pytest.approx(((per * w[target]).sum() / w[target].sum()).item(), rel=1e-6)
    assert loss.item() != pytest.approx(F.cross_entropy(out, target, weight=w).item(), rel=1e-3)
    unsmoothed = make_objective("classification", class_weights=w).loss(out, target)
    assert unsmoothed.item() == pytest.approx(F.cross_entropy(out, target, weight=w).item(), rel=1e-6)


def test_label_smoothing_in_the_ce_part_of_ordinal_plus_ce(batch):
    out, target = batch
    ordinal = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    both = torch.cat([ordinal, out], 1)
    smoothed = make_objective("ordinal+ce", label_smoothing=0.2).loss(both, target)
    plain = make_objective("ordinal+ce").loss(both, target)
    expected = plain - F.cross_entropy(out, target) + F.cross_entropy(out, target, label_smoothing=0.2)
    assert smoothed.item() == pytest.approx(expected.item(), rel=1e-6)
    assert abs(smoothed.item() - plain.item()) > 0.05


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_norm_weight_decay_gives_the_normalisation_layers_a_group_of_their_own(optimizer):
    """As torchvision's reference scripts (--norm-weight-decay) and timm (0 on norms and biases) offer: without it
    one group decayed by --weight-decay, as before; the frozen phase's group holds the head alone."""
    from retinopathy.models import Grader
    from retinopathy.training.engine import freeze_backbone
    from retinopathy.training.config import parse_args
    from retinopathy.training.optim import build_optimizer

    model = Grader("resnet18", 5)
    base = ["--data", "d", "--out", "x", "--optimizer", optimizer, "--weight-decay", "0.02"]
    [group] = build_optimizer(parse_args(base), model).param_groups
    assert group["weight_decay"] == 0.02 and len(group["params"]) == len(list(model.parameters()))
    other, norm = build_optimizer(parse_args([*base, "--norm-weight-decay", "0"]), model).param_groups
    bn = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert {id(p) for p in norm["params"]} == bn and (norm["weight_decay"], other["weight_decay"]) == (0, 0.02)
    assert len(other["params"]) + len(bn) == len(list(model.parameters()))
    freeze_backbone(model, True)
    [head] = build_optimizer(parse_args([*base, "--norm-weight-decay", "0"]), model).param_groups
    assert head["params"] == [p for p in model.parameters() if p.requires_grad] and head["weight_decay"] == 0.02
    with pytest.raises(SystemExit):
        parse_args([*base, "--norm-weight-decay", "-1"])
