"""Scratch vs a pretrained start, on a small generated texture task, through the pipeline's own stages.

No ImageNet weights can be downloaded here, so the "pretrained" weights are made here: a small timm model
(test_resnet by default) trained
by `pipeline train` on a larger generated set (32 px gray patches of ten skimage.data photos: astronaut,
camera, cat, clock, coffee, coins, colour wheel, page, rocket, text; the class is the photo). The target is a
different task on other pixels: 32 px gray patches of eight other skimage.data images (brick, grass,
gravel, cell, Hubble deep field, immunohistochemistry, retina, moon), few labelled per class, each patch with
its own brightness/contrast so the mean gray level does not give the class away.

Arms, each k-fold CV on the same target workdir (same folds, seed, augmentation):
  scratch            train.pretrained: null, the shipped train recipe
  pretrained         train.pretrained: <pretrain>/train/fold0/best.pt, which brings the finetune preset
  pretrained-no-ft   the same weights with the scratch recipe (finetune: {}), to measure the preset itself

    python bench/pretrained.py --workdir /tmp/bench-pretrained
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data as sk

from pipeline.params import load_params
from pipeline.runner import BY_NAME, run_stage

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ["astronaut", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "page", "rocket", "text"]
TARGET = ["brick", "grass", "gravel", "cell", "hubble_deep_field", "immunohistochemistry", "retina", "moon"]
PATCH = 32
MODEL = ["test_resnet"]  # --model: timm's tiny test ResNet (0.37M parameters) fits a shared 2-core CPU
CPU = ["preprocess.size=32", "preprocess.median_ksize=0", "train.batch_size=32", "train.workers=0",
       "train.ema=0.99", "train.patience=0", "train.eval_batch_size=256", "augment.erasing=0.0"]


def gray(name: str) -> np.ndarray:
    image = np.asarray(getattr(sk, name)())
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY)
    image = image.astype(np.float32)
    scale = max(1.0, 256 / min(image.shape))  # small photos are enlarged so they hold enough distinct patches
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale > 1 else image


def patches(image: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random patches at random scales (0.5x-1.5x), each with its own brightness and contrast."""
    out = []
    for _ in range(count):
        side = int(PATCH * rng.uniform(0.5, 1.5))
        y, x = rng.integers(0, image.shape[0] - side), rng.integers(0, image.shape[1] - side)
        patch = cv2.resize(image[y : y + side, x : x + side], (PATCH, PATCH), interpolation=cv2.INTER_AREA)
        patch = (patch - patch.mean()) * rng.uniform(0.5, 1.5) + rng.uniform(70, 180)
        out.append(np.clip(patch, 0, 255).astype(np.uint8))
    return out


def write_competition(folder: Path, names: list[str], per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name in names:
        (folder / "train" / name).mkdir(parents=True, exist_ok=True)
        for i, patch in enumerate(patches(gray(name), per_class, rng)):
            cv2.imwrite(str(folder / "train" / name / f"{i:04d}.png"), patch)
    return folder


def stages(data: Path, workdir: Path, overrides: list[str], names=("preprocess", "dedup", "augment", "train")) -> dict:
    params, _ = load_params(ROOT / "params.yaml", CPU + [f"data.root={data}", f"train.model={MODEL[0]}"] + overrides, str(workdir))
    t0 = time.perf_counter()
    for name in names:
        run_stage(BY_NAME[name], params, workdir)
    cv = json.loads((workdir / "train" / "cv.json").read_text())
    return {"cv": cv, "seconds": time.perf_counter() - t0, "lr": params.train.lr, "epochs": params.train.epochs,
            "layer_decay": params.train.layer_decay, "norm": params.train.norm}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-pretrained"))
    ap.add_argument("--model", default=MODEL[0])
    ap.add_argument("--pretrain-per-class", type=int, default=100)
    ap.add_argument("--pretrain-epochs", type=int, default=6)
    ap.add_argument("--per-class", type=int, default=12, help="labelled target images per class")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--scratch-epochs", type=int, default=40, help="the shipped scratch recipe's epochs")
    args = ap.parse_args()
    MODEL[0] = args.model
    wd = args.workdir
    source = write_competition(wd / "data" / "pretrain", PRETRAIN, args.pretrain_per_class, seed=1)
    target = write_competition(wd / "data" / "target", TARGET, args.per_class, seed=2)

    pre = stages(source, wd / "pretrain", ["train.pretrained=null", "train.folds=5", "train.fold=0", f"train.epochs={args.pretrain_epochs}",
                                           "train.lr=0.003", "train.warmup_epochs=1"])
    weights = wd / "pretrain" / "train" / "fold0" / "best.pt"
    print(f"pretraining: {len(PRETRAIN)} classes x {args.pretrain_per_class} patches, {args.pretrain_epochs} epochs, "
          f"fold-0 accuracy {pre['cv']['mean']:.3f}, {pre['seconds']:.0f}s")

    scratch = [f"train.folds={args.folds}", f"train.epochs={args.scratch_epochs}"]
    arms = {"scratch": scratch + ["train.pretrained=null"],
            # the preset's own epochs: an explicit -S train.epochs would win over it
            "pretrained (finetune preset)": [f"train.folds={args.folds}", f"train.pretrained={weights}"],
            "pretrained, scratch recipe": scratch + [f"train.pretrained={weights}", "finetune={}"]}
    print(f"\ntarget: {len(TARGET)} texture classes x {args.per_class} labelled patches, {args.folds}-fold CV (2-core CPU, shared)")
    print(f"{'arm':<30} {'lr':>8} {'epochs':>6} {'layer_decay':>11} {'norm':>10} {'cv accuracy':>16} {'oof log-loss':>12} {'seconds':>8}")
    results = {}
    for i, (arm, overrides) in enumerate(arms.items()):
        r = stages(target, wd / "target", overrides, ("preprocess", "dedup", "augment", "train") if i == 0 else ("train",))
        cv = r["cv"]
        results[arm] = cv["oof_accuracy"]
        print(f"{arm:<30} {r['lr']:>8.4f} {r['epochs']:>6} {str(r['layer_decay']):>11} {r['norm']:>10} "
              f"{cv['mean']:>8.3f} ± {cv['std']:.3f} {cv['oof_log_loss']:>12.3f} {r['seconds']:>8.0f}")
    base = results["scratch"]
    for arm, acc in results.items():
        if arm != "scratch":
            print(f"{arm}: OOF accuracy {acc:.3f} vs scratch {base:.3f} ({acc - base:+.3f})")


if __name__ == "__main__":
    main()
