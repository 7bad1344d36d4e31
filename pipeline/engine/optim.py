"""The optimiser and its schedule: build_optimizer (train.optimizer), lr_factor (train.schedule: linear warm-up then
cosine, cosine, constant) and update, what follows a step's backward (the optimiser step through the fp16 scaler,
the schedule, the BN statistics' average over the ranks, the mode's own update).

    opt = build_optimizer(cfg, mode.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps_per_epoch, cfg))
"""

from __future__ import annotations

import math

import torch

from pipeline import distributed


def build_optimizer(cfg, params):
    t = cfg.train
    if t.optimizer == "nadam":
        return torch.optim.NAdam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, nesterov=True, weight_decay=t.weight_decay)
    raise ValueError(f"train.optimizer: unknown {t.optimizer!r} (nadam | adam | sgd)")


def lr_factor(step: int, steps_per_epoch: int, cfg) -> float:
    """Schedule multiplier at optimiser step `step`: linear ramp from 0 over lr_warmup_epochs, then cosine to 0."""
    t = cfg.train
    total = max(1, t.epochs * steps_per_epoch)
    if t.schedule == "constant":
        return 1.0
    warm = t.lr_warmup_epochs * steps_per_epoch if t.schedule == "warmup_cosine" else 0
    if t.schedule not in ("warmup_cosine", "cosine"):
        raise ValueError(f"train.schedule: unknown {t.schedule!r} (warmup_cosine | cosine | constant)")
    if step < warm:
        return (step + 1) / warm
    span = max(1, total - warm)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / span)))


def update(opt, sched, scaler, mode, average_bn: bool):
    """What follows a step's backward in fit: the optimiser step (through the fp16 scaler), the schedule, the BN
    statistics' average over the ranks (average_bn: distributed.prepare's answer), then the mode's own update (EMA)."""
    scaler.step(opt)
    scaler.update()
    sched.step()
    if average_bn:
        distributed.average_buffers(mode.networks())
    mode.after_step()
