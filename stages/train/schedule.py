"""Learning-rate schedule: a pure function of the optimiser step (so resume needs only the step)."""

from __future__ import annotations

import math

from pipeline.params import TrainParams


def lr_at(step: int, total: int, warmup: int, lr: float, p: TrainParams, steps_per_epoch: int) -> float:
    """Warmup from lr*warmup_start to lr (linear: lr0 + t/T (lr - lr0); exponential: lr0 (lr/lr0)^(t/T)),
    then cosine to lr*min_lr, step decay, or constant."""
    if step < warmup:
        lr0, t = lr * p.warmup_start, step / warmup
        return lr0 + t * (lr - lr0) if p.warmup == "linear" else lr0 * (lr / lr0) ** t
    if p.schedule == "constant":
        return lr
    if p.schedule == "step":
        every = max(1, round(p.step_epochs * steps_per_epoch))
        return lr * p.step_gamma ** ((step - warmup) // every)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = lr * p.min_lr
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
