"""Training throughput of the real loop against the model's synthetic ceiling, measured in one run.

The real loop is `pipeline train` itself (stages.train.run -> loop.train_fold) with the shipped
params.yaml: EMA, mixup/cutmix, gradient clipping, dedup weights, the loss read every log_every steps,
validation of the EMA each epoch and checkpoints, on a generated cache written as preprocess, dedup
and augment would. The ceiling is the same model, batch, AMP, channels_last and optimiser stepping on
one batch already on the device (and a forward-only ceiling for validation). Reported per epoch after
the first (cudnn autotuning, allocator warm-up):

  step   training images/s of the loop               vs the training ceiling
  epoch  the same work (train + validation images)   vs the ceiling's time for that work (checkpoint included)

    python bench/train_speed.py --smoke                      # CPU, seconds: resnet10t at 32 px
    python bench/train_speed.py --preset 64                  # resnet26d, 64 px (GPU)
    python bench/train_speed.py --preset 224                 # resnet50, 224 px (GPU)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's stages/, not an installed one

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

import stages.train as train_stage  # noqa: E402
from pipeline.cache import IMAGES  # noqa: E402
from pipeline.device import autocast_dtype  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.runner import StagePaths  # noqa: E402
from stages.augment import build, gpu_recipe  # noqa: E402
from stages.train.loop import fused_kwargs  # noqa: E402

PRESETS = {  # images, side, channels, model, batch, epochs (+ params overrides)
    # on the 2-core CPU a loader worker only competes with the step for the same cores
    "smoke": dict(images=400, size=32, channels=3, model="resnet10t", batch=32, epochs=3, overrides=["train.workers=0"]),
    "64": dict(images=40000, size=64, channels=3, model="resnet26d", batch=512, epochs=3),
    "224": dict(images=8000, size=224, channels=3, model="resnet50", batch=128, epochs=3),
}


def write_inputs(root: Path, images: int, size: int, channels: int, classes: int, params) -> dict:
    """A cache, clusters and augment recipe as the upstream stages write them: class-coloured blobs."""
    rng = np.random.default_rng(0)
    labels = np.arange(images) % classes
    yy, xx = np.mgrid[:size, :size]
    cache = np.empty((images, size, size, channels), np.uint8)
    for start in range(0, images, 1024):  # in chunks: 40k 64 px images are fine, a per-image loop is slow
        k = np.arange(start, min(images, start + 1024))
        cy, cx = rng.uniform(0.3, 0.7, (2, len(k), 1, 1)) * size
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 6) ** 2))
        colour = (50 + 150 * ((labels[k, None] + np.arange(channels)) % classes) / classes)[:, None, None, :]
        cache[k] = np.clip(20 + rng.normal(0, 8, (len(k), size, size, 1)) + blob[..., None] * colour, 0, 255).astype(np.uint8)
    pre, dedup, aug = root / "preprocess", root / "dedup", root / "augment"
    for d in (pre / "train", pre / "test", dedup / "train", dedup / "test", aug):
        d.mkdir(parents=True)
    # The stages' side-by-side layout (pipeline/cache.py): train/ and test/ under preprocess and dedup.
    np.save(pre / "train" / IMAGES, cache)
    np.save(pre / "test" / IMAGES, cache[:0])
    ids = [f"img{i}" for i in range(images)]
    index = pd.DataFrame({"id": ids, "split": "train", "label": labels.astype(str), "row": range(images), "path": ""})
    index.to_csv(pre / "train" / "index.csv", index=False)
    index[:0].to_csv(pre / "test" / "index.csv", index=False)
    (pre / "train" / "classes.json").write_text(json.dumps([str(c) for c in range(classes)]))
    clusters = pd.DataFrame({"id": ids, "split": "train", "cluster": range(images), "is_representative": True, "weight": 1.0})
    clusters.to_csv(dedup / "train" / "clusters.csv", index=False)
    clusters[:0].to_csv(dedup / "test" / "clusters.csv", index=False)
    A.save(build(params.augment, size, size), str(aug / "transform.json"), data_format="json")
    (aug / "gpu_augment.json").write_text(json.dumps(gpu_recipe(params.augment)))
    return {"preprocess": pre, "dedup": dedup, "augment": aug}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ceiling(model_name: str, batch: int, size: int, channels: int, classes: int, device: torch.device, p, steps: int) -> tuple[float, float]:
    """(train, eval) images/s of the bare step on one resident batch: the most the loop could reach."""
    amp = autocast_dtype(p.amp, device)
    model = timm.create_model(model_name, num_classes=classes, in_chans=channels, drop_rate=p.drop_rate, drop_path_rate=p.drop_path or None).to(device)
    channels_last = p.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = timm.optim.create_optimizer_v2(model, p.optimizer, lr=1e-4, weight_decay=p.weight_decay, **fused_kwargs(p.optimizer, device.type))
    x = torch.randn(batch, channels, size, size, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    y = torch.randint(0, classes, (batch,), device=device)

    def train_step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def eval_step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            model(x).float().softmax(1)

    rates = []
    for fn, mode in ((train_step, model.train), (eval_step, model.eval)):
        mode()
        for _ in range(3):
            fn()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        rates.append(steps * batch / (time.perf_counter() - t0))
    return rates[0], rates[1]


def measure(preset: dict, device: str, extra: list[str]) -> dict:
    overrides = ["data.root=/nonexistent", f"train.model={preset['model']}", f"train.batch_size={preset['batch']}",
                 f"train.epochs={preset['epochs']}", "train.fold=0", "train.warmup_epochs=1", "train.patience=0",
                 "train.mix_off_epochs=0", f"train.device={device}", *preset.get("overrides", []), *extra]
    params, _ = load_params(ROOT / "params.yaml", overrides)
    p = params.train
    with tempfile.TemporaryDirectory() as tmp:
        inputs = write_inputs(Path(tmp), preset["images"], preset["size"], preset["channels"], 10, params)
        out = Path(tmp) / "train"
        out.mkdir()
        summary = train_stage.run(params, StagePaths(out=out, inputs=inputs))
        history = pd.read_csv(out / "fold0" / "metrics.csv")
    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    train_ceiling, eval_ceiling = ceiling(p.model, p.batch_size, preset["size"], preset["channels"], 10, dev, p, steps=10)
    steady = history.iloc[1:] if len(history) > 1 else history
    n_train = int(preset["images"] * (p.folds - 1) / p.folds) // p.batch_size * p.batch_size
    n_val = preset["images"] - int(preset["images"] * (p.folds - 1) / p.folds)
    step_rate = float(steady.images_per_s.median())
    epoch_s = float(steady.seconds.median())
    ceiling_epoch_s = n_train / train_ceiling + n_val / eval_ceiling
    return {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "CPU", "model": p.model, "size": preset["size"],
            "batch": p.batch_size, "amp": str(autocast_dtype(p.amp, dev)), "data path": summary.get("data path", "?").split(" ")[0],
            "train images": n_train, "val images": n_val, "ceiling img/s": train_ceiling, "loop img/s": step_rate,
            "step % of ceiling": 100 * step_rate / train_ceiling, "epoch s": epoch_s, "ceiling epoch s": ceiling_epoch_s,
            "epoch % of ceiling": 100 * ceiling_epoch_s / epoch_s,
            "peak GPU MiB": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=list(PRESETS), action="append", help="repeatable; default: 64 and 224")
    ap.add_argument("--smoke", action="store_true", help="the tiny CPU preset")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--images", type=int, help="override the preset's image count")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="params override, e.g. -S train.ema_every=1")
    args = ap.parse_args()
    names = ["smoke"] if args.smoke else args.preset or ["64", "224"]
    rows = []
    for name in names:
        preset = {**PRESETS[name], **({"images": args.images} if args.images else {})}
        row = {"preset": name, **measure(preset, args.device, args.overrides)}
        rows.append(row)
        print(" | ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
