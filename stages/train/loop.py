"""One fold: build model, optimiser, schedule; train epoch by epoch; validate; checkpoint; resume.

Resume: last.pt holds model, optimiser, scaler, EMA, the epoch and the metrics history. The schedule is
a function of the step and the sample order and augmentation seeds are functions of (seed, fold,
epoch), so restarting at an epoch boundary continues exactly as if never stopped.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import timm.optim
import torch
from timm.data import Mixup
from timm.utils import ModelEmaV3

from stages.train import distill
from pipeline import distributed as ddp
from pipeline.artifacts import write_csv
from pipeline.console import console, progress_bar
from pipeline.params import Params
from pipeline.errors import StageError
from stages.train import checkpoint, curriculum, losses, schedule
from stages.train import gpu_augment
from stages.train.data import CacheDataset, EpochSampler, epoch_order, loader, sampling_weights
from pipeline.device import autocast_dtype, to_input
from stages.train.model import apply_freezing, create_model, param_groups


def seed_everything(seed: int) -> None:
    random.seed(seed), np.random.seed(seed % 2**32), torch.manual_seed(seed)


def write_metrics(path: Path, history: list[dict]) -> None:
    if ddp.is_main():
        write_csv(path, pd.DataFrame(history))


@torch.no_grad()
def predict(model, pixels, rows, norm, device, batch_size, amp, multi_label: bool = False) -> np.ndarray:
    """Probabilities (softmax; sigmoid per tag for multi-label) of `rows` of a RowStack (which reads each
    batch in row order and returns it as asked)."""
    model.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        images = torch.from_numpy(pixels[rows[start : start + batch_size]])
        x = to_input(images.permute(0, 3, 1, 2), norm, device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out.append(losses.probabilities(model(x).float(), multi_label).cpu().numpy())
    return np.concatenate(out)


def train_fold(fold: int, data: dict, params: Params, out: Path, device: torch.device) -> np.ndarray:
    """Train fold `fold`; returns the best checkpoint's validation probabilities (OOF rows)."""
    p, d = params.train, params.distill
    fold_dir = out / f"fold{fold}"
    if ddp.is_main():  # every rank computes in this folder; only rank 0 writes there
        fold_dir.mkdir(parents=True, exist_ok=True)
    seed = params.seed * 1000 + fold
    seed_everything(seed)
    rows = data["rows"]
    train_idx, val_idx = rows.fold_split(fold)
    part = rows.subset(train_idx)
    if ddp.is_main():
        console.print(f"fold {fold}: training on {part.describe()} rows, validating on {len(val_idx)} labelled images")
    pixels = data["pixels"]
    num_classes = len(data["classes"])
    dataset = CacheDataset(pixels, part.rows, part.labels, data["transform"])
    probs_draw = sampling_weights(part.labels, p.sampler)
    # Targets, weights and teacher probabilities are looked up by the row position each batch returns
    # (kept in host memory: N x classes can be large; a batch's rows move to the device per step).
    soft, weights = torch.as_tensor(part.targets), torch.as_tensor(part.weights)
    teacher = torch.as_tensor(part.teacher) if part.teacher is not None else None
    kl_weight = torch.as_tensor(distill.kl_weights(part.kind == "teacher", d.alpha))
    steps_per_epoch = max(1, len(part) // p.batch_size) // p.accumulate or 1
    total = p.epochs * steps_per_epoch
    warmup = int(p.warmup_epochs * steps_per_epoch)
    lr = p.lr * (p.batch_size * p.accumulate / p.lr_base_batch if p.lr_base_batch else 1.0)
    amp = autocast_dtype(p.amp, device)
    on_device = p.gpu_augment == "always" or (p.gpu_augment == "auto" and gpu_augment.fits(len(part) * pixels[0].nbytes, device, p.gpu_cache_fraction))
    if on_device and data["gpu_recipe"] is None:
        raise StageError("train.gpu_augment: augment/gpu_augment.json is missing; rerun `pipeline augment`")
    device_batches = gpu_augment.DeviceBatches(pixels, part.rows, part.labels, data["gpu_recipe"], data["norm"], device) if on_device else None

    model = create_model(p, num_classes, pixels.shape[3]).to(device)
    if p.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = timm.optim.create_optimizer_v2(param_groups(model, p), p.optimizer, lr=lr, weight_decay=p.weight_decay, momentum=p.momentum)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    ema = ModelEmaV3(model, decay=p.ema, use_warmup=True) if p.ema > 0 else None
    mixup = Mixup(mixup_alpha=p.mixup, cutmix_alpha=p.cutmix, prob=p.mix_prob, label_smoothing=0.0) if p.mixup or p.cutmix else None
    multi_label, scoring = data["task"].multi_label, data["scoring"]
    cw = losses.class_weights(part.targets if multi_label else part.labels, num_classes, p.class_weights)
    cw = torch.tensor(cw, dtype=torch.float32, device=device) if cw is not None else None
    if ddp.is_main():
        schedule.plot(fold_dir / "lr_schedule.png", total, warmup, lr, p, steps_per_epoch)

    meta = {"model": p.model, "classes": data["classes"], "task": data["task"].kind, "in_chans": int(pixels.shape[3]), "norm": data["norm"],
            "params": p.model_dump(mode="json"), "distill": d.model_dump(mode="json") if d.teacher else None, "fold": fold}
    history, best, best_probs, start_epoch, stale = [], None, None, 0, 0
    last = checkpoint.load(fold_dir / "last.pt")
    same = lambda a, b: {k: v for k, v in a.items() if k != "fold"} == {k: v for k, v in b.items() if k != "fold"}  # noqa: E731
    data_key = part.fingerprint()
    if last is not None and same(last["params"], meta["params"]) and last.get("distill") == meta["distill"] \
            and last.get("seed") == params.seed and last.get("data") == data_key:
        model.load_state_dict(last["state_dict"])
        optimizer.load_state_dict(last["optimizer"])
        scaler.load_state_dict(last["scaler"])
        if ema is not None:
            ema.module.load_state_dict(last["ema_state_dict"])
        history, best, stale, start_epoch = last["history"], last["best"], last["stale"], last["epoch"] + 1
        best_probs = last["best_probs"]
        console.print(f"fold {fold}: resuming after epoch {last['epoch']} from {fold_dir / 'last.pt'}")
    elif last is not None:
        console.print(f"fold {fold}: {fold_dir / 'last.pt'} is from other params or data; starting over")
    ddp.agree(start_epoch, f"fold {fold}'s resume epoch")
    forward = ddp.Forward(model, device, p.sync_bn, p.compile and device.type == "cuda")
    batch_size = ddp.local_batch(p.batch_size)  # this rank's share of the global batch

    difficulty = None
    if p.curriculum and start_epoch < p.epochs:
        difficulty = curriculum.difficulty(p.curriculum_score, array=pixels, rows=part.rows, targets=part.labels, ids=part.ids, norm=data["norm"],
                                       p=p, classes=data["classes"], device=device, seed=seed)
        difficulty = ddp.from_main(difficulty)  # the ranks must draw one global order
        seed_everything(seed)
    sampler = EpochSampler(len(part))
    drop_last = len(part) >= p.batch_size
    cpu_loader = None if device_batches is not None else loader(dataset, sampler, batch_size, p.workers, device.type == "cuda", drop_last, seed)
    step = start_epoch * steps_per_epoch
    with progress_bar() as bar:
        task = bar.add_task(f"fold {fold}", total=p.epochs, completed=start_epoch, info="")
        for epoch in range(start_epoch, p.epochs):
            if p.patience and stale >= p.patience:
                console.print(f"fold {fold}: early stop, no improvement in {p.patience} epochs")
                break
            seed_everything(ddp.rank_seed(seed * 100003 + epoch))
            if dataset.transform is not None:
                dataset.transform.set_random_seed(ddp.rank_seed(seed * 100003 + epoch))
            frozen = apply_freezing(model, p, epoch)
            fraction = curriculum.pool_fraction(epoch, p)
            chosen = curriculum.pool(difficulty, fraction) if difficulty is not None else None
            share = ddp.rank_share(epoch_order(len(part), epoch, seed, probs_draw, chosen), p.batch_size, drop_last, part.weights)
            if device_batches is not None:
                batches = device_batches.epoch(share.order, batch_size, drop_last, ddp.rank_seed(seed * 100003 + epoch))
            else:
                sampler.set_order(share.order)
                batches = ((to_input(images, data["norm"], device), y, idx) for images, y, idx in cpu_loader)
            mixing = mixup is not None and epoch < p.epochs - p.mix_off_epochs
            model.train()
            optimizer.zero_grad(set_to_none=True)  # accumulation never carries a partial step across epochs
            t0, seen, loss_sum = time.perf_counter(), 0, 0.0
            for i, (x, _, idx) in enumerate(batches):
                if p.channels_last and device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                target, w = soft[idx].to(device), weights[idx].to(device)
                taught, klw = (teacher[idx].to(device), kl_weight[idx].to(device)) if teacher is not None else (None, None)
                if mixing and len(x) % 2 == 0:
                    x, mix = losses.mixing_matrix(mixup, x)
                    target = mix @ target
                    if taught is not None:
                        taught, klw = mix @ taught, mix @ klw
                forward.sync_grads((i + 1) % p.accumulate == 0)
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    logits = forward(x)
                per_sample = losses.hard_loss(logits, target, cw, p, multi_label)
                if taught is not None:
                    per_sample = distill.combine(per_sample, logits, taught, klw, d.temperature, d.alpha, multi_label)
                loss = (per_sample * w).sum() / share.denominator(i, w)
                if p.l1:
                    loss = loss + p.l1 * sum(q.abs().sum() for q in model.parameters() if q.ndim > 1 and q.requires_grad)
                if ddp.any_rank(not torch.isfinite(loss)):
                    raise StageError(f"fold {fold}: loss is {loss.item()} at epoch {epoch}, step {step}; stopped, "
                                     f"last good checkpoint kept in {fold_dir / 'last.pt'} (lower train.lr or set train.grad_clip)")
                scaler.scale(loss / p.accumulate).backward()
                if (i + 1) % p.accumulate == 0:
                    for group in optimizer.param_groups:
                        group["lr"] = schedule.lr_at(step, total, warmup, lr, p, steps_per_epoch) * group["lr_scale"]
                    if p.grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    if ema is not None:
                        ema.update(model, step=step)
                seen += len(x)
                loss_sum += loss.item() * len(x)
                bar.update(task, info=f"loss {loss_sum / seen:.3f}  {seen / (time.perf_counter() - t0):.0f} img/s")
            train_seconds = time.perf_counter() - t0
            loss_sum, seen = ddp.all_sum([loss_sum, seen])
            evaluated = ema.module if ema is not None else model
            ddp.sync_buffers(evaluated)
            probs = ddp.gather_rows(lambda r: predict(evaluated, pixels, r, data["norm"], device, p.eval_batch_size, amp, multi_label),
                                    rows.rows[val_idx])
            scores = scoring.scores(rows.targets[val_idx].round().astype(int) if multi_label else rows.labels[val_idx], probs)
            row = {"epoch": epoch, "lr": schedule.lr_at(max(0, step - 1), total, warmup, lr, p, steps_per_epoch),
                   "train_loss": loss_sum / max(1, seen), "val_loss": scores["log_loss"],
                   **{f"val_{k}": v for k, v in scores.items()}, "seconds": time.perf_counter() - t0,
                   "images_per_s": seen / max(train_seconds, 1e-9), "pool": fraction, "frozen": frozen}
            history.append(row)
            state = {**meta, "epoch": epoch, "metric": scores[scoring.metric], "state_dict": model.state_dict()}
            if ema is not None:
                state["ema_state_dict"] = ema.module.state_dict()
            if scoring.better(scores[scoring.metric], best):
                best, best_probs, stale = scores[scoring.metric], probs, 0
                checkpoint.save(fold_dir / "best.pt", state)
            else:
                stale += 1
            checkpoint.save(fold_dir / "last.pt", {**state, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                                                   "history": history, "best": best, "best_probs": best_probs, "stale": stale,
                                                   "seed": params.seed, "data": data_key})
            write_metrics(fold_dir / "metrics.csv", history)
            bar.update(task, advance=1, info=f"{scoring.metric} {scores[scoring.metric]:.4f} (best {best:.4f})")
    return best_probs
