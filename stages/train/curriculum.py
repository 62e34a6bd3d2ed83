"""Curriculum learning: a difficulty score per training sample and a pacing of the pool.

Pacing: the training span (curriculum_span of the epochs) is cut into len(thresholds) equal parts;
in part i the pool is the easiest thresholds[i] fraction of the samples; after the span, all data.
Each epoch still draws as many samples as the full set (repeating the pool), so the schedule, the
step count and the compute per epoch do not change; only which samples are seen.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from pipeline.params import TrainParams
from pipeline.errors import StageError


def pool_fraction(epoch: int, p: TrainParams) -> float:
    span = p.curriculum_span * p.epochs
    if not p.curriculum or epoch >= span:
        return 1.0
    part = int(epoch / (span / len(p.curriculum_thresholds)))
    return float(p.curriculum_thresholds[min(part, len(p.curriculum_thresholds) - 1)])


def pool(difficulty: np.ndarray, fraction: float) -> np.ndarray | None:
    """Indices of the easiest `fraction` of samples (stable on ties); None means everything."""
    if fraction >= 1.0:
        return None
    keep = max(1, math.ceil(fraction * len(difficulty)))
    return np.sort(np.argsort(difficulty, kind="stable")[:keep])


def contrast(array, rows: np.ndarray) -> np.ndarray:
    """Low-contrast images count as hard: difficulty = -(pixel std)."""
    return -np.array([np.asarray(array[r], dtype=np.float32).std() for r in rows])


def from_oof(path: str | None, ids: np.ndarray, targets: np.ndarray, classes: list[str]) -> np.ndarray:
    """1 - p(true class) from an earlier run's oof.csv; ids it lacks get the median difficulty."""
    if not path:
        raise StageError("train.curriculum_score = oof needs train.curriculum_oof: the oof.csv of an earlier train run")
    try:
        oof = pd.read_csv(path, dtype={"id": str}).set_index("id")
    except FileNotFoundError:
        raise StageError(f"train.curriculum_oof: {path} not found") from None
    p_true = np.full(len(ids), np.nan)
    known = np.isin(ids, oof.index)
    cols = np.array([f"p_{c}" for c in classes])[targets[known]]
    p_true[known] = [oof.at[i, c] for i, c in zip(ids[known], cols)]
    difficulty = 1 - p_true
    return np.where(np.isnan(difficulty), np.nanmedian(difficulty) if known.any() else 0.5, difficulty)


def probe(array, rows: np.ndarray, targets: np.ndarray, norm: dict, p: TrainParams, num_classes: int, device, seed: int,
          loading: dict | None = None) -> np.ndarray:
    """Loss of a short probe training, out of sample: train on one half for curriculum_probe_epochs,
    score the other half, and swap. The probe trains as train does: train.optimizer, lr, weight_decay, amp, and
    from the run's pretrained weights (`loading`) when it has some."""
    import timm.optim

    from pipeline.device import autocast_dtype, to_input
    from stages.train.model import create_model

    rng = np.random.default_rng([seed, 7])
    half = rng.permutation(len(rows)) % 2
    difficulty = np.zeros(len(rows))
    amp = autocast_dtype(p.amp, device)
    batch_size = p.lr_base_batch if p.batch_size == "auto" else p.batch_size
    for side in (0, 1):
        torch.manual_seed(seed + side)
        fit, score = np.where(half == side)[0], np.where(half != side)[0]
        model = create_model(p, num_classes, array.shape[3], loading, tuple(array.shape[1:3])).to(device)
        optimizer = timm.optim.create_optimizer_v2(model, p.optimizer, lr=p.lr, weight_decay=p.weight_decay, momentum=p.momentum)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
        model.train()
        for _ in range(p.curriculum_probe_epochs):
            order = rng.permutation(fit)
            for start in range(0, len(order), batch_size):
                batch = np.sort(order[start : start + batch_size])
                x = to_input(torch.from_numpy(np.asarray(array[rows[batch]])).permute(0, 3, 1, 2), norm, device)
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    loss = torch.nn.functional.cross_entropy(model(x).float(), torch.as_tensor(targets[batch], device=device))
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
        model.eval()
        with torch.no_grad():
            for start in range(0, len(score), p.eval_batch_size):
                batch = score[start : start + p.eval_batch_size]
                x = to_input(torch.from_numpy(np.asarray(array[rows[batch]])).permute(0, 3, 1, 2), norm, device)
                y = torch.as_tensor(targets[batch], device=device)
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    logits = model(x).float()
                difficulty[batch] = torch.nn.functional.cross_entropy(logits, y, reduction="none").cpu().numpy()
    return difficulty


def difficulty(kind: str, **kw) -> np.ndarray:
    if kind == "contrast":
        return contrast(kw["array"], kw["rows"])
    if kind == "oof":
        return from_oof(kw["p"].curriculum_oof, kw["ids"], kw["targets"], kw["classes"])
    return probe(kw["array"], kw["rows"], kw["targets"], kw["norm"], kw["p"], len(kw["classes"]), kw["device"], kw["seed"], kw.get("loading"))
