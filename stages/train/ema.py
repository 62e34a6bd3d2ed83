"""EMA of the weights, updated every `every` optimiser steps.

timm's ModelEmaV3 keeps the averaged copy and the warmup rule; this wrapper adds two things for speed.
The tensor lists are gathered once (ModelEmaV3.update walks both state_dicts on every call), and an
update every k steps uses decay**k, so the averaging horizon in steps (1 / (1 - decay)) stays what
train.ema says while the update costs 1/k as much. The warmed-up decay is taken at the true step.
"""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3


def decay_per_update(decay: float, every: int) -> float:
    """The decay of one update every `every` steps that averages like `decay` applied every step."""
    return decay**every


class Ema:
    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool, every: int):
        self.timm = ModelEmaV3(model, decay=decay, use_warmup=warmup)
        self.every = every
        ema_state, model_state = self.timm.module.state_dict(), model.state_dict()  # tensors sharing the live storage
        floats = [k for k, v in ema_state.items() if v.is_floating_point()]
        others = [k for k, v in ema_state.items() if not v.is_floating_point()]
        self.ema_floats, self.model_floats = [ema_state[k] for k in floats], [model_state[k] for k in floats]
        self.ema_others, self.model_others = [ema_state[k] for k in others], [model_state[k] for k in others]

    @property
    def module(self) -> torch.nn.Module:
        return self.timm.module

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """After optimiser step `step` (1-based): average when step is a multiple of `every`."""
        if step % self.every:
            return
        decay = decay_per_update(self.timm.get_decay(step), self.every)
        torch._foreach_lerp_(self.ema_floats, self.model_floats, 1.0 - decay)
        for ema_v, model_v in zip(self.ema_others, self.model_others):  # BatchNorm's num_batches_tracked
            ema_v.copy_(model_v)
