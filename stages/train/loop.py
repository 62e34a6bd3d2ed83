"""One fold, as a story of named steps:

    fold = build_fold(...)          model, optimiser, EMA, data path, per-row targets on the device
    progress = resume(fold, ...)    from last.pt when it was written with this recipe and data
    for each epoch:
        train_one_epoch(...)        the step, with no host sync but a loss read every train.log_every steps
        evaluate(...)               the EMA (or model) on the validation rows, at eval_batch_size
        save(...)                   best.pt when it improves, last.pt every checkpoint_every epochs and at the end
        report_epoch(...)           the one place an epoch is reported (pipeline.console)

Resume: last.pt holds model, optimiser, scaler, EMA, the epoch and the metrics history. The schedule is
a function of the step and the sample order and augmentation seeds are functions of (seed, fold,
epoch), so restarting at an epoch boundary continues exactly as if never stopped. Execution-only
settings (AMP, compile, data path, workers, ...) may differ between the two runs.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from timm.data import Mixup

from pipeline import distributed as ddp
from pipeline.artifacts import write_csv
from pipeline.console import EpochReporter, EpochResult, RunClock, console, report_epoch
from pipeline.device import autocast_dtype
from pipeline.errors import StageError
from pipeline.params import Params
from stages.train import checkpoint, curriculum, distill, losses, plots, recipe, schedule
from stages.train.batch_size import scaled_lr
from stages.train.data import CacheDataset, LoaderBatches, data_workers, epoch_order, erasing_probability, sampling_weights, without_erasing
from stages.train.ema import Ema
from stages.train.gpu_augment import DeviceBatches
from pipeline.weights import input_size_kwargs
from stages.train.metrics import Scoring
from stages.train.model import apply_freezing, create_model, create_optimizer
from stages.train.rows import Rows, TrainData

# Settings that change how fast a fold trains, not what it learns: a last.pt written under other
# values of these still resumes (an fp16 run resumed under bf16 simply starts with an empty scaler).
EXECUTION_KEYS = {"amp", "compile", "channels_last", "cudnn_benchmark", "gpu_augment", "gpu_cache_fraction", "workers", "device",
                  "log_every", "checkpoint_every", "eval_batch_size", "dist_timeout", "fold", "batch_size_max", "tensorboard"}


def seed_everything(seed: int) -> None:
    random.seed(seed), np.random.seed(seed % 2**32), torch.manual_seed(seed)


def write_metrics(path: Path, history: list[dict]) -> None:
    if ddp.is_main():
        write_csv(path, pd.DataFrame(history))


@dataclass
class RowTargets:
    """Per-row training targets on the device, indexed there by a batch's row positions (a device
    tensor), so no step copies from the host. N x classes floats: 400 MB for 100k rows x 1000 classes."""

    targets: torch.Tensor
    weights: torch.Tensor
    teacher: torch.Tensor | None
    kl_weight: torch.Tensor | None

    @classmethod
    def of(cls, part: Rows, alpha: float, device: torch.device) -> "RowTargets":
        on = lambda a: torch.as_tensor(a).to(device)  # noqa: E731
        taught = part.teacher is not None
        return cls(on(part.targets), on(part.weights), on(part.teacher) if taught else None,
                   on(distill.kl_weights(part.kind == "teacher", alpha)) if taught else None)


@dataclass
class Fold:
    """One fold's training state, built once by build_fold."""

    index: int
    dir: Path
    seed: int
    params: Params  # the run's params with the fold's recipe (stages.train.recipe): what this fold trains with
    part: Rows  # the training rows
    val_rows: np.ndarray  # RowStack rows of the validation images
    val_labels: np.ndarray  # what metrics score against: class indices, or (N, K) 0/1 tags for multi-label
    model: torch.nn.Module
    forward: ddp.Forward
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: Ema | None
    mixup: Mixup | None
    rows: RowTargets
    class_weight: torch.Tensor | None
    source: DeviceBatches | LoaderBatches
    lr: float  # peak lr after batch scaling
    steps_per_epoch: int
    warmup: int
    amp: torch.dtype | None
    batch_size: int  # this rank's batch
    drop_last: bool
    draw: np.ndarray | None  # class-balanced draw probabilities
    meta: dict  # what best.pt and last.pt carry besides weights
    channels_last: bool = False  # channels_last inputs (CUDA only)
    difficulty: np.ndarray | None = None
    scoring: Scoring | None = None  # the selection metric (train.metric resolved for the task)
    multi_label: bool = False  # sigmoid outputs and tag targets

    def lr_at(self, step: int, p) -> float:
        return schedule.lr_at(step, self.steps_per_epoch * p.epochs, self.warmup, self.lr, p, self.steps_per_epoch)


@dataclass
class Progress:
    """What resume restores and each epoch updates."""

    history: list = field(default_factory=list)
    best: float | None = None
    best_probs: np.ndarray | None = None
    stale: int = 0  # epochs without improvement
    start_epoch: int = 0
    step: int = 0  # optimiser steps so far
    saved_after: int = -1  # last epoch written to last.pt
    write_seconds: float = 0.0  # how long the last last.pt write took
    since_write: float = 0.0  # training seconds since then


def tensorboard_scalars(enabled: bool, fold_dir: Path):
    """The fold's TensorBoard writer (rank 0 only), or None; train.tensorboard was checked before any work."""
    if not enabled or not ddp.is_main():
        return None
    from stages.train.tensorboard import Scalars

    return Scalars(fold_dir / "tensorboard")


def train_fold(fold_index: int, data: TrainData, params: Params, out: Path, device: torch.device, path: str,
               clock: RunClock | None = None) -> np.ndarray:
    """Train one fold on the `path` ("device" or "loader") chosen for the run; returns the best
    checkpoint's validation probabilities (OOF rows)."""
    fold = build_fold(fold_index, data, params, out, device, path)
    if clock is not None:
        clock.skip(params.train.epochs - fold.params.train.epochs)  # train.min_steps may have raised the epochs
    params = fold.params  # from here on the recipe's values (epochs, EMA, mixing) are the fold's own
    p = params.train
    progress = resume(fold, params)
    if p.curriculum and progress.start_epoch < p.epochs:
        fold.difficulty = rank_difficulty(fold, data, params, device)
    if clock is not None:
        clock.skip(progress.start_epoch)  # epochs a resumed fold already trained are not in the run's ETA
    with EpochReporter(f"fold {fold_index}", p.epochs, progress.start_epoch, clock, tensorboard_scalars(p.tensorboard, fold.dir)) as report:
        for epoch in range(progress.start_epoch, p.epochs):
            if p.patience and progress.stale >= p.patience:
                console.print(f"fold {fold_index}: early stop, no improvement in {p.patience} epochs")
                report.stopped_early(epoch)
                break
            t0 = time.perf_counter()
            train_loss, images_per_s, frozen, fraction = train_one_epoch(fold, params, epoch, progress, report)
            probs = evaluate(fold, p.eval_batch_size)
            scores = fold.scoring.scores(fold.val_labels, probs)
            metric = fold.scoring.metric
            progress.history.append({"epoch": epoch, "lr": fold.lr_at(max(0, progress.step - 1), p), "train_loss": train_loss,
                                     "val_loss": scores["log_loss"], **{f"val_{k}": v for k, v in scores.items()},
                                     "seconds": time.perf_counter() - t0, "images_per_s": images_per_s, "pool": fraction, "frozen": frozen})
            save(fold, params, progress, epoch, probs, scores[metric], time.perf_counter() - t0)
            report_epoch(EpochResult(fold_index, epoch, p.epochs, train_loss, scores["log_loss"], metric, scores[metric],
                                     progress.best, images_per_s, time.perf_counter() - t0, progress.history[-1]), report)
    if progress.history and progress.saved_after != progress.history[-1]["epoch"]:
        write_last(fold, params, progress, progress.history[-1]["epoch"])  # an early stop between checkpoints
    return progress.best_probs


def build_fold(fold_index: int, data: TrainData, params: Params, out: Path, device: torch.device, path: str) -> Fold:
    """The fold's rows, model, optimiser, EMA, mixing, data path and schedule."""
    p, d = params.train, params.distill
    fold_dir = out / f"fold{fold_index}"
    if ddp.is_main():  # every rank computes in this folder; only rank 0 writes there
        fold_dir.mkdir(parents=True, exist_ok=True)
    seed = params.seed * 1000 + fold_index
    seed_everything(seed)
    train_idx, val_idx = data.rows.fold_split(fold_index)
    part = data.rows.subset(train_idx)
    if len(part) < 2:  # BatchNorm cannot train on one image; say why instead of crashing inside the model
        raise StageError(f"fold {fold_index}: {len(part)} training rows once the dedup clusters of its validation images "
                         f"are held out (see dedup/report.json: largest_cluster); lower train.folds or raise dedup.threshold")
    if ddp.is_main():
        console.print(f"fold {fold_index}: training on {part.describe()} rows, validating on {len(val_idx)} labelled images")
    batch_size = ddp.local_batch(p.batch_size)  # this rank's share of the global batch
    steps_per_epoch = max(1, len(part) // p.batch_size) // p.accumulate or 1
    scaled = recipe.apply(p, steps_per_epoch, fold_index, fold_dir if ddp.is_main() else None,  # knobs scaled to this run's length
                          erasing_probability(data.transform, data.gpu_recipe))
    p = scaled.params
    transform, gpu_recipe = (data.transform, data.gpu_recipe) if scaled.erasing else without_erasing(data.transform, data.gpu_recipe)
    drop_last = len(part) >= p.batch_size
    val_rows = data.rows.rows[val_idx]
    if path == "device":
        source = DeviceBatches(data.pixels, part.rows, val_rows, gpu_recipe, data.norm, device)
    else:
        dataset = CacheDataset(data.pixels, part.rows, part.labels, transform)
        source = LoaderBatches(dataset, batch_size, data_workers(p.workers), drop_last, seed, data.norm, device, data.pixels, val_rows)
    model = create_model(p, len(data.classes), data.pixels.shape[3], data.loading, tuple(data.pixels.shape[1:3])).to(device)
    if p.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    lr = scaled_lr(p, p.batch_size)
    optimizer = create_optimizer(model, p, lr, **fused_kwargs(p.optimizer, device.type))
    amp = autocast_dtype(p.amp, device)
    multi_label = data.task.multi_label
    class_weight = losses.class_weights(part.targets if multi_label else part.labels, len(data.classes), p.class_weights)
    warmup = int(p.warmup_epochs * steps_per_epoch)
    if ddp.is_main():
        plots.lr_schedule(fold_dir / "lr_schedule.png", p.epochs * steps_per_epoch, warmup, lr, p, steps_per_epoch)
    meta = {"model": p.model, "classes": data.classes, "in_chans": int(data.pixels.shape[3]), "norm": data.norm, "weights": data.weights,
            "model_kwargs": input_size_kwargs(p.model, tuple(data.pixels.shape[1:3])),  # predict builds the same architecture
            "params": p.model_dump(mode="json"), "distill": d.model_dump(mode="json") if d.teacher else None, "fold": fold_index}
    val_truth = data.rows.targets[val_idx].round().astype(int) if multi_label else data.rows.labels[val_idx]
    return Fold(fold_index, fold_dir, seed, params.model_copy(update={"train": p}), part, val_rows, val_truth, model,
                ddp.Forward(model, device, p.sync_bn, p.compile and device.type == "cuda"), optimizer,
                torch.amp.GradScaler(device.type, enabled=amp == torch.float16),
                Ema(model, p.ema, p.ema_warmup, p.ema_every) if p.ema > 0 else None,
                Mixup(mixup_alpha=p.mixup, cutmix_alpha=p.cutmix, prob=p.mix_prob, switch_prob=p.mix_switch, label_smoothing=0.0)
                if p.mixup or p.cutmix else None,
                RowTargets.of(part, d.alpha, device),
                torch.tensor(class_weight, dtype=torch.float32, device=device) if class_weight is not None else None,
                source, lr, steps_per_epoch, warmup, amp, batch_size, drop_last, sampling_weights(part.labels, p.sampler), meta,
                channels_last=p.channels_last and device.type == "cuda", scoring=data.scoring, multi_label=multi_label)


def fused_kwargs(optimizer: str, device_type: str) -> dict:
    """Fused AdamW on CUDA: one kernel for the whole update, and the grad scaler hands it its inf check
    instead of reading it on the host (no sync under fp16)."""
    return {"fused": True} if optimizer == "adamw" and device_type == "cuda" else {}


def resumable(last: dict, fold: Fold, params: Params) -> bool:
    """Was last.pt written by this recipe on this data? Execution-only settings may differ."""
    recipe = lambda q: {k: v for k, v in q.items() if k not in EXECUTION_KEYS}  # noqa: E731
    return (recipe(last["params"]) == recipe(fold.meta["params"]) and last.get("distill") == fold.meta["distill"]
            and last.get("seed") == params.seed and last.get("data") == fold.part.fingerprint())


def resume(fold: Fold, params: Params) -> Progress:
    """Progress restored from last.pt when it is resumable; a fresh start otherwise."""
    last = checkpoint.load(fold.dir / "last.pt")
    progress = Progress()
    if last is not None and resumable(last, fold, params):
        fold.model.load_state_dict(last["state_dict"])
        fold.optimizer.load_state_dict(last["optimizer"])
        if last["scaler"] and fold.scaler.is_enabled():  # empty when written without fp16: the scaler starts fresh
            fold.scaler.load_state_dict(last["scaler"])
        if fold.ema is not None and "ema_state_dict" in last:
            fold.ema.module.load_state_dict(last["ema_state_dict"])
        progress = Progress(last["history"], last["best"], last["best_probs"], last["stale"], last["epoch"] + 1,
                            (last["epoch"] + 1) * fold.steps_per_epoch, last["epoch"])
        console.print(f"fold {fold.index}: resuming after epoch {last['epoch']} from {fold.dir / 'last.pt'}")
    elif last is not None:
        console.print(f"fold {fold.index}: {fold.dir / 'last.pt'} is from other params or data; starting over")
    ddp.agree(progress.start_epoch, f"fold {fold.index}'s resume epoch")
    return progress


def rank_difficulty(fold: Fold, data: TrainData, params: Params, device: torch.device) -> np.ndarray:
    """Curriculum difficulty of the training rows (one global order for every rank)."""
    difficulty = curriculum.difficulty(params.train.curriculum_score, array=data.pixels, rows=fold.part.rows, targets=fold.part.labels,
                                       ids=fold.part.ids, norm=data.norm, p=params.train, classes=data.classes, device=device,
                                       seed=fold.seed, loading=data.loading)
    seed_everything(fold.seed)
    return ddp.from_main(difficulty)


def epoch_batches(fold: Fold, p, epoch: int):
    """The epoch's sample order (class balance, curriculum pool, this rank's share) and its batches."""
    seed = ddp.rank_seed(fold.seed * 100003 + epoch)
    seed_everything(seed)
    fraction = curriculum.pool_fraction(epoch, p)
    chosen = curriculum.pool(fold.difficulty, fraction) if fold.difficulty is not None else None
    share = ddp.rank_share(epoch_order(len(fold.part), epoch, fold.seed, fold.draw, chosen), p.batch_size, fold.drop_last, fold.part.weights)
    if isinstance(fold.source, DeviceBatches):
        return share, fold.source.epoch(share.order, fold.batch_size, fold.drop_last, seed), fraction
    return share, fold.source.epoch(share.order, seed), fraction


def train_one_epoch(fold: Fold, params: Params, epoch: int, progress: Progress, report: EpochReporter) -> tuple[float, float, str, float]:
    """One pass over the epoch's batches -> (mean train loss, images/s, freezing state, pool fraction).
    The loss stays on the device; it is read (and checked finite) every log_every steps and at the end."""
    p = params.train
    frozen = apply_freezing(fold.model, p, epoch)
    share, batches, fraction = epoch_batches(fold, p, epoch)
    mixing = fold.mixup is not None and epoch < p.epochs - p.mix_off_epochs
    fold.model.train()
    fold.optimizer.zero_grad(set_to_none=True)  # accumulation never carries a partial step across epochs
    meter = LossMeter(fold, epoch)
    for i, (x, idx) in enumerate(batches):
        loss = batch_loss(fold, params, x, idx, mixing, share, i)
        fold.scaler.scale(loss / p.accumulate).backward()
        if (i + 1) % p.accumulate == 0:
            optimiser_step(fold, p, progress)
        meter.add(loss, len(x))
        if (i + 1) % p.log_every == 0:
            meter.check(progress.step, report)
    meter.check(progress.step, report)
    train_loss, images_per_s = meter.finish()
    return train_loss, images_per_s, frozen, fraction


def batch_loss(fold: Fold, params: Params, x: torch.Tensor, idx: torch.Tensor, mixing: bool, share, i: int) -> torch.Tensor:
    """The weighted loss of one batch (its targets, weights and teacher rows indexed on the device)."""
    p, d = params.train, params.distill
    if fold.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rows = fold.rows
    target, weight = rows.targets[idx], rows.weights[idx]
    taught, kl_weight = (rows.teacher[idx], rows.kl_weight[idx]) if rows.teacher is not None else (None, None)
    if mixing and len(x) % 2 == 0:
        x, mix = losses.mixing_matrix(fold.mixup, x)
        target = mix @ target
        if taught is not None:
            taught, kl_weight = mix @ taught, mix @ kl_weight
    fold.forward.sync_grads((i + 1) % p.accumulate == 0)
    with torch.autocast(x.device.type, dtype=fold.amp, enabled=fold.amp is not None):
        logits = fold.forward(x)
    per_sample = losses.hard_loss(logits, target, fold.class_weight, p, fold.multi_label)
    if taught is not None:
        per_sample = distill.combine(per_sample, logits, taught, kl_weight, d.temperature, d.alpha, fold.multi_label)
    loss = (per_sample * weight).sum() / share.denominator(i, weight)
    if p.l1:
        loss = loss + p.l1 * sum(q.abs().sum() for q in fold.model.parameters() if q.ndim > 1 and q.requires_grad)
    return loss


def optimiser_step(fold: Fold, p, progress: Progress) -> None:
    """lr for this step, optional clipping, the (scaled) optimiser step, the EMA every ema_every steps."""
    for group in fold.optimizer.param_groups:
        group["lr"] = fold.lr_at(progress.step, p) * group["lr_scale"]
    if p.grad_clip:
        fold.scaler.unscale_(fold.optimizer)
        torch.nn.utils.clip_grad_norm_(fold.model.parameters(), p.grad_clip)
    fold.scaler.step(fold.optimizer)
    fold.scaler.update()
    fold.optimizer.zero_grad(set_to_none=True)
    progress.step += 1
    if fold.ema is not None:
        fold.ema.update(fold.model, progress.step)


class LossMeter:
    """The epoch's summed loss on the device; `check` is the step's one host read."""

    def __init__(self, fold: Fold, epoch: int):
        self.fold, self.epoch = fold, epoch
        self.total = torch.zeros((), dtype=torch.float64, device=fold.rows.weights.device)
        self.seen, self.value, self.t0 = 0, 0.0, time.perf_counter()

    def add(self, loss: torch.Tensor, n: int) -> None:
        self.total += loss.detach() * n
        self.seen += n

    def check(self, step: int, report: EpochReporter) -> None:
        """Read the running loss; stop every rank together when it is not finite."""
        self.value = self.total.item()
        if ddp.any_rank(not np.isfinite(self.value)):
            raise StageError(f"fold {self.fold.index}: loss is {self.value} at epoch {self.epoch}, by step {step}; stopped, "
                             f"last good checkpoint kept in {self.fold.dir / 'last.pt'} (lower train.lr or set train.grad_clip)")
        report.batch(f"loss {self.value / max(1, self.seen):.3f}  {self.seen / (time.perf_counter() - self.t0):.0f} img/s")

    def finish(self) -> tuple[float, float]:
        seconds = time.perf_counter() - self.t0
        total, seen = ddp.all_sum([self.value, self.seen])
        return total / max(1, seen), seen / max(seconds, 1e-9)


@torch.no_grad()
def evaluate(fold: Fold, batch_size: int) -> np.ndarray:
    """Softmax of the EMA (or the model) on the fold's validation rows, in row order, from the data
    path's own copy (on the device for the device path); one host copy at the end."""
    model = fold.ema.module if fold.ema is not None else fold.model
    ddp.sync_buffers(model)
    model.eval()

    def predict(positions: np.ndarray) -> np.ndarray:  # a contiguous run of validation positions (this rank's)
        out = []
        for x in fold.source.validation(batch_size, int(positions[0]), int(positions[-1]) + 1):
            if fold.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(x.device.type, dtype=fold.amp, enabled=fold.amp is not None):
                out.append(losses.probabilities(model(x).float(), fold.multi_label))
        return torch.cat(out).cpu().numpy()

    return ddp.gather_rows(predict, np.arange(len(fold.val_rows)))


def save(fold: Fold, params: Params, progress: Progress, epoch: int, probs: np.ndarray, value: float, epoch_seconds: float) -> None:
    """best.pt when the metric improves; last.pt when due (checkpoint_every) and after the last epoch."""
    p = params.train
    if fold.scoring.better(value, progress.best):
        progress.best, progress.best_probs, progress.stale = value, probs, 0
        checkpoint.save(fold.dir / "best.pt", weights(fold, epoch, value))
    else:
        progress.stale += 1
    progress.since_write += epoch_seconds
    if checkpoint_due(p.checkpoint_every, epoch, p.epochs, progress.write_seconds, progress.since_write):
        write_last(fold, params, progress, epoch)
    write_metrics(fold.dir / "metrics.csv", progress.history)


def checkpoint_due(every: int | str, epoch: int, epochs: int, write_seconds: float, since_write: float) -> bool:
    """last.pt after this epoch? Always after the last; every `every` epochs; auto: when the last write
    took at most 2% of the training time since it (so a checkpoint never costs more than 2%)."""
    if epoch == epochs - 1:
        return True
    if every == "auto":
        return write_seconds <= 0.02 * since_write
    return (epoch + 1) % every == 0


def weights(fold: Fold, epoch: int, value: float) -> dict:
    state = {**fold.meta, "epoch": epoch, "metric": value, "state_dict": fold.model.state_dict()}
    if fold.ema is not None:
        state["ema_state_dict"] = fold.ema.module.state_dict()
    return state


def write_last(fold: Fold, params: Params, progress: Progress, epoch: int) -> None:
    t0 = time.perf_counter()
    checkpoint.save(fold.dir / "last.pt", {**weights(fold, epoch, progress.history[-1][f"val_{fold.scoring.metric}"]),
                                           "optimizer": fold.optimizer.state_dict(), "scaler": fold.scaler.state_dict(),
                                           "history": progress.history, "best": progress.best, "best_probs": progress.best_probs,
                                           "stale": progress.stale, "seed": params.seed, "data": fold.part.fingerprint()})
    progress.saved_after, progress.write_seconds, progress.since_write = epoch, time.perf_counter() - t0, 0.0
