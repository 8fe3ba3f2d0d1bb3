"""The optimizer and its per-step learning-rate schedule, built afresh for each phase of a run."""
from __future__ import annotations

import math

import torch
from torchvision.ops._utils import split_normalization_params


def build_optimizer(args, model: torch.nn.Module):
    """SGD or AdamW over ``model``'s trainable parameters, decayed by --weight-decay; with --norm-weight-decay,
    the normalisation layers' parameters (BatchNorm, LayerNorm...) form a group decayed by that instead, split as
    torchvision's reference scripts split them (``split_normalization_params``)."""
    if args.norm_weight_decay is None:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": args.weight_decay}]
    else:
        norm, other = split_normalization_params(model)
        groups = [g for g in ({"params": other, "weight_decay": args.weight_decay},
                              {"params": norm, "weight_decay": args.norm_weight_decay}) if g["params"]]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum)
    return torch.optim.AdamW(groups, lr=args.lr)


def build_scheduler(args, optimizer, steps_per_epoch: int, phase_epochs: int):
    """Per-step schedule over one phase: linear warm-up, then cosine to zero (or constant)."""
    if args.scheduler == "none":
        return None
    total = max(1, steps_per_epoch * phase_epochs)
    warm = min(int(args.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step):
        if step < warm:
            return (step + 1) / (warm + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
