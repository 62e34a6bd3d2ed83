"""train.batch_size: auto, and the learning rate that goes with a batch.

The probe runs one training step (forward, backward; the real model, AMP and channels_last) at
batch_size_max, halving on out-of-memory until one fits; the chosen batch is halved once more when
that step used over HEADROOM of the device memory (cudnn's benchmark workspaces, the EMA copy and the
optimiser state come on top). It never crashes on an OOM. On CPU there is no device memory to size:
auto is lr_base_batch, the batch the recipe's lr is written for. The search itself is a pure function
of a `try_batch` callable, so tests inject an OOM on CPU.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from pipeline.device import autocast_dtype
from pipeline.errors import StageError
from pipeline.params import TrainParams

HEADROOM = 0.85  # largest share of device memory the probe step may use before the batch is halved again


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def search(try_batch: Callable[[int], float | None], start: int) -> tuple[int, str]:
    """Largest of start, start/2, ... for which try_batch (-> peak memory share, None on OOM) runs."""
    batch = start
    while batch >= 1:
        peak = try_batch(batch)
        if peak is None:
            batch //= 2
            continue
        if peak > HEADROOM and batch > 1:
            return batch // 2, f"{batch} fits using {peak:.0%} of the memory; halved for headroom"
        return batch, f"largest that fits from {start} (peak {peak:.0%} of the memory)" if batch < start else f"{start} fits (peak {peak:.0%})"
    raise StageError("train.batch_size = auto: not even a batch of 1 fits in device memory; choose a smaller train.model or size")


def device_probe(model: torch.nn.Module, shape: tuple[int, int, int], num_classes: int, p: TrainParams,
                 device: torch.device) -> Callable[[int], float | None]:
    """One real training step at a batch size -> its peak share of the device memory (None: OOM)."""
    amp = autocast_dtype(p.amp, device)
    total = torch.cuda.get_device_properties(device).total_memory

    def try_batch(batch: int) -> float | None:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            x = torch.randn(batch, *shape, device=device)
            if p.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = torch.nn.functional.cross_entropy(model(x).float(), torch.randint(num_classes, (batch,), device=device))
            loss.backward()
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) / total
        except Exception as exc:  # noqa: BLE001 (only an OOM is expected; anything else is re-raised)
            if not is_oom(exc):
                raise
            return None
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    return try_batch


def auto_batch(make_model: Callable[[], torch.nn.Module], shape: tuple[int, int, int], num_classes: int, p: TrainParams,
               device: torch.device, world_size: int = 1) -> tuple[int, str]:
    """The global batch for train.batch_size = auto, and why (printed once per run)."""
    if device.type != "cuda":
        return p.lr_base_batch, f"{p.lr_base_batch} (lr_base_batch: no device memory to size on {device.type})"
    model = make_model().to(device)
    if p.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    local, why = search(device_probe(model, shape, num_classes, p, device), max(1, p.batch_size_max // world_size))
    del model
    torch.cuda.empty_cache()
    return local * world_size, why


def scaled_lr(p: TrainParams, batch_size: int) -> float:
    """train.lr for lr_base_batch images per step, scaled to batch_size * accumulate: linearly (SGD),
    or by the square root (AdamW and its kin: the gradient noise scale argument timm's train.py uses)."""
    if not p.lr_base_batch:
        return p.lr
    ratio = batch_size * p.accumulate / p.lr_base_batch
    rule = p.lr_scaling if p.lr_scaling != "auto" else ("linear" if p.optimizer == "sgd" else "sqrt")
    return p.lr * (ratio if rule == "linear" else math.sqrt(ratio))
