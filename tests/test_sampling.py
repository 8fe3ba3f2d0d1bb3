"""Class-balanced sampling: balanced draws, reproducible per epoch, sharded across processes."""
from __future__ import annotations

import numpy as np

from retinopathy.training.samplers import BalancedSampler


def test_balanced_sampler():
    labels = np.array([0] * 700 + [1] * 70 + [2] * 150 + [3] * 50 + [4] * 30)
    s = BalancedSampler(labels, seed=0)
    s.set_epoch(0)
    first = list(s)
    counts = np.bincount(labels[first], minlength=5)
    assert len(first) == len(labels) and counts.min() > 0.7 * len(labels) / 5
    s.set_epoch(0)
    assert list(s) == first  # the same epoch draws the same indices (exact resume)
    s.set_epoch(1)
    assert list(s) != first
    ranks = [BalancedSampler(labels, seed=0, rank=r, world=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(0)
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) == len(labels) // 2
    assert sorted(a + b) == sorted(first)  # the two processes share one draw between them


def test_decaying_sampler_moves_from_balanced_to_final_mix():
    labels = np.array([0] * 700 + [1] * 70 + [2] * 150 + [3] * 50 + [4] * 30)
    s = BalancedSampler(labels, seed=0, decay=0.5)
    shares = []
    for epoch in (0, 8):
        s.set_epoch(epoch)
        shares.append(np.bincount(labels[list(s)], minlength=5) / len(labels))
    assert shares[0][0] < 0.3  # epoch 0: balanced, grade 0 about a fifth
    final = np.array([700, 140, 300, 100, 60]) / 1300  # grade 0 once, the others twice
    assert np.abs(shares[1] - final).max() < 0.05
    s.set_epoch(8)
    again = list(s)
    s.set_epoch(8)
    assert list(s) == again
