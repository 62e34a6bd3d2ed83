"""Training images/s of the real data path against the same model's synthetic-data ceiling.

The ceiling: the same training step (same model, batch, resolution, AMP, channels_last) on one batch
already on the device, repeated. Two data paths: stages.train's loader (uint8 cache -> albumentations
in `workers` processes -> device normalisation) and the device-side path (cache on the device,
augmented in torch). All three are measured in one run, on one machine; the ratios are the figures.

    python bench/train_speed.py                      # CPU toy scale
    python bench/train_speed.py --device cuda --size 64 --batch 256 --model resnet18 --workers 14
    python bench/train_speed.py --device cuda --size 224 --batch 128 --model resnet50 --workers 14
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's stages/, not an installed one

import albumentations as A
import numpy as np
import timm
import torch

from stages.augment import gpu_recipe
from stages.train.data import CacheDataset, EpochSampler, epoch_order, loader
from stages.train.gpu_augment import DeviceBatches
from pipeline.device import autocast_dtype, to_input


def step_fn(model, optimizer, amp, device, channels_last):
    def step(x, y):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--channels", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    amp = autocast_dtype("auto", device)
    channels_last = device.type == "cuda"
    model = timm.create_model(args.model, num_classes=100, in_chans=args.channels).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = step_fn(model, optimizer, amp, device, channels_last)
    norm = {"mean": [0.5] * args.channels, "std": [0.25] * args.channels}

    x = torch.randn(args.batch, args.channels, args.size, args.size, device=device)
    y = torch.randint(0, 100, (args.batch,), device=device)
    for _ in range(3):
        step(x, y)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(x, y)
    sync(device)
    ceiling = args.steps * args.batch / (time.perf_counter() - t0)

    rng = np.random.default_rng(0)
    cache = rng.integers(0, 255, (args.images, args.size, args.size, args.channels), dtype=np.uint8)
    targets = rng.integers(0, 100, args.images)
    transform = A.Compose([A.HorizontalFlip(p=0.5), A.Affine(translate_percent=(-0.1, 0.1), scale=(0.85, 1.15), rotate=(-15, 15), p=0.5),
                           A.ColorJitter(p=0.5), A.CoarseDropout(p=0.25)])
    dataset = CacheDataset(cache, np.arange(args.images), targets, transform)
    order = np.concatenate([epoch_order(args.images, e, 0, None) for e in range(1 + args.steps * args.batch // args.images)])
    sampler = EpochSampler(len(order))
    sampler.set_order(order)
    batches = iter(loader(dataset, sampler, args.batch, args.workers, device.type == "cuda", True, 0))
    for _ in range(3):
        images, labels, _ = next(batches)
        step(to_input(images, norm, device), labels.to(device))
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        images, labels, _ = next(batches)
        step(to_input(images, norm, device), labels.to(device))
    sync(device)
    real = args.steps * args.batch / (time.perf_counter() - t0)
    from pipeline.params import load_params

    recipe = gpu_recipe(load_params(Path(__file__).resolve().parents[1] / "params.yaml", ["data.root=/nonexistent"])[0].augment)
    device_path = DeviceBatches(cache, np.arange(args.images), targets, recipe, norm, device)
    batches = device_path.epoch(order, args.batch, True, 0)
    for _ in range(3):
        xb, yb, _ = next(batches)
        step(xb, yb)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        xb, yb, _ = next(batches)
        step(xb, yb)
    sync(device)
    on_device = args.steps * args.batch / (time.perf_counter() - t0)
    print(f"device {device} model {args.model} {args.size}px batch {args.batch} amp {amp} workers {args.workers}")
    print(f"synthetic ceiling   {ceiling:10.1f} img/s")
    print(f"albumentations path {real:10.1f} img/s  ({100 * real / ceiling:.0f}% of ceiling)")
    print(f"device-side path    {on_device:10.1f} img/s  ({100 * on_device / ceiling:.0f}% of ceiling)")


if __name__ == "__main__":
    main()
