"""The effective recipe of one fold: the knobs that only pay off on long schedules, scaled to this run.

A pure function of the train params and the fold's optimiser steps per epoch, so every rank and every
resumed run resolves the same recipe. What it decided is printed and recorded in fold.json.

- Epochs (train.min_steps): a fold whose epochs give fewer optimiser steps than min_steps trains
  ceil(min_steps / steps per epoch) epochs; every knob below then sees that length. The finetune preset
  sets 500: its 15 epochs are a few dozen steps on a small dataset (bench/README.md#pretrained-start:
  fold accuracy 0.60 with 60 steps, 0.96 with 500).

- EMA (train.ema = auto): the average spans the last EMA_SPAN of the optimiser steps, decay
  1 - 1 / (EMA_SPAN * steps), at most EMA_MAX; off when that span holds fewer than EMA_MIN_UPDATES
  updates (one every train.ema_every steps): so short an average is a lagging copy of the weights
  (bench/defaults.py, 10 epochs of 12 steps: EMA -0.9 points on digits, -0.6 on textures; 0 at 40 epochs).
  A fixed 0.999 averages ~1000 steps: on a run of a few hundred steps the evaluated weights lag far
  behind the trained ones. A number is used as given.
- Mixup / cutmix and random erasing (augment.erasing), the regularisers that fight overfitting: on
  only in runs of at least train.regularise_min_epochs epochs. Mixed or erased images are a weaker
  signal per step; on short schedules, which underfit, they cost accuracy (bench/defaults.py: erasing
  -1.8 points on digits and -1.0 on textures at 10 epochs). 0 keeps them whatever the length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.artifacts import write_json
from pipeline.console import console
from pipeline.params import TrainParams

RECORD = "recipe.json"  # beside the fold's checkpoints; train copies it into fold.json

EMA_SPAN = 0.05  # the EMA averages about the last 5% of the optimiser steps
EMA_MAX = 0.9998  # ... but never longer than 5000 steps (timm's usual ImageNet decay)
EMA_MIN_UPDATES = 5  # an average over fewer EMA updates than this is no average: off


@dataclass(frozen=True)
class Recipe:
    params: TrainParams  # the train params with every auto or scaled knob replaced by its value
    decided: dict = field(default_factory=dict)  # knob -> "value (why)", for the log and fold.json
    erasing: bool = True  # keep the augmentation's random erasing (False: train without it)


def ema_decay(ema: float | str, total_steps: int, every: int = 1) -> tuple[float, str]:
    if ema != "auto":
        return float(ema), "params"
    span = EMA_SPAN * total_steps
    if span < EMA_MIN_UPDATES * every:
        return 0.0, (f"auto: off, {EMA_SPAN:.0%} of {total_steps} optimiser steps is under {EMA_MIN_UPDATES} EMA updates "
                     f"(one every {every} steps)")
    decay = min(EMA_MAX, 1.0 - 1.0 / span)
    return round(decay, 6), f"auto: averages ~{1 / (1 - decay):.0f} of {total_steps} optimiser steps"


def resolve(p: TrainParams, steps_per_epoch: int, erasing: float = 0.0) -> Recipe:
    """The fold's effective train params for `p.epochs` epochs of `steps_per_epoch` optimiser steps;
    `erasing`: the augmentation's random-erasing probability (augment.erasing)."""
    decided = {}
    if p.min_steps > p.epochs * steps_per_epoch:
        epochs = -(-p.min_steps // steps_per_epoch)
        decided["epochs"] = f"{epochs} (train.min_steps {p.min_steps}: {p.epochs} epochs are {p.epochs * steps_per_epoch} steps)"
        p = p.model_copy(update={"epochs": epochs})  # every knob below sees the raised length
    total = p.epochs * steps_per_epoch
    decay, why = ema_decay(p.ema, total, p.ema_every)
    decided["ema"] = f"{decay} ({why})"
    update = {"ema": decay}
    long_run = p.epochs >= p.regularise_min_epochs
    too_short = f"off ({p.epochs} epochs < train.regularise_min_epochs = {p.regularise_min_epochs})"
    if p.mixup or p.cutmix:
        if not long_run:
            update |= {"mixup": 0.0, "cutmix": 0.0}
        decided["mixup/cutmix"] = f"mixup {p.mixup}, cutmix {p.cutmix} (params)" if long_run else too_short
    if erasing > 0:
        decided["erasing"] = f"{erasing} (augment.erasing)" if long_run else too_short
    return Recipe(p.model_copy(update=update), decided, erasing=long_run or erasing == 0)


def apply(p: TrainParams, steps_per_epoch: int, fold: int, fold_dir: Path | None, erasing: float = 0.0) -> Recipe:
    """resolve(), then say what it decided and record it in fold_dir (None: a rank that does not write)."""
    found = resolve(p, steps_per_epoch, erasing)
    if fold_dir is not None:
        epochs = found.params.epochs
        console.print(f"fold {fold}: recipe for {epochs} epochs x {steps_per_epoch} steps: "
                      + "; ".join(f"{k} {v}" for k, v in found.decided.items()), soft_wrap=True)
        write_json(fold_dir / RECORD, {"steps_per_epoch": steps_per_epoch, "total_steps": epochs * steps_per_epoch, **found.decided})
    return found
