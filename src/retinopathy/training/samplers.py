"""Training samplers: class-balanced draws, sharded across processes like ``DistributedSampler``."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from ..data.formats import GRADES


class BalancedSampler(WeightedRandomSampler):
    """Class-weighted sampling with replacement, sharded across processes, reseeded by ``set_epoch``.

    ``decay=None``: every grade equally often, every epoch. ``decay=d``: the o_O team's schedule (Kaggle 2015,
    2nd place), compressed: epoch ``e`` mixes the balanced weights with the final weights ``final`` (grade 0
    once, the others twice) as ``d**e * balanced + (1 - d**e) * final``, so training starts balanced and
    ends close to the real mix.
    """

    def __init__(self, labels, seed: int, rank: int = 0, world: int = 1, decay: float | None = None,
                 final=(1.0, 2.0, 2.0, 2.0, 2.0)):
        self.labels = np.asarray(labels)
        counts = np.bincount(self.labels, minlength=len(GRADES)).astype(float)
        self.balanced = len(self.labels) / (len(GRADES) * np.maximum(counts, 1))
        self.final = np.asarray(final, dtype=float)
        self.seed, self.rank, self.world, self.decay = seed, rank, world, decay
        self.per_rank = math.ceil(len(self.labels) / world)
        super().__init__(self.class_weights(0)[self.labels].tolist(), self.per_rank * world,
                         generator=torch.Generator())

    def class_weights(self, epoch: int) -> np.ndarray:
        """Sampling weight of one image of each grade in ``epoch``."""
        if self.decay is None:
            return self.balanced
        r = self.decay ** epoch
        return r * self.balanced + (1 - r) * self.final

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)
        self.weights = torch.as_tensor(self.class_weights(epoch)[self.labels], dtype=torch.double)

    def __iter__(self):
        return iter(list(super().__iter__())[self.rank::self.world])

    def __len__(self):
        return self.per_rank
