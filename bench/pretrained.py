"""Scratch vs a pretrained start, on a small generated task, through the pipeline's own stages.

No ImageNet weights can be downloaded here, so the "pretrained" weights are made here: a small timm model
(test_resnet by default) trained by `pipeline train` on a larger generated set, scikit-learn's handwritten
digits 0-4 (about 900 images). The target is a different task on other images: digits 5-9 with only a few
labelled images per class, as a stand-in for "ImageNet features, then a small competition".

Arms, each k-fold CV on the same target workdir (same folds, seed, augmentation):
  scratch                      train.pretrained: null, the shipped train recipe
  pretrained (finetune preset) train.pretrained: <pretrain>/train/fold0/best.pt, which brings the finetune preset
  pretrained, scratch recipe   (--recipe-arm) the same weights with the scratch recipe (finetune: {}), to measure the preset

    python bench/pretrained.py --workdir /tmp/bench-pretrained
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
from sklearn.datasets import load_digits

from pipeline.finetune import load_finetuned
from pipeline.runner import BY_NAME, run_stage

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["test_resnet"]  # --model: timm's tiny test ResNet (0.37M parameters) fits a shared 2-core CPU
CPU = ["preprocess.size=32", "preprocess.median_ksize=0", "train.workers=0", "train.ema=0.99",
       "train.patience=0", "train.eval_batch_size=256", "augment.hflip=0.0", "augment.erasing=0.0", "train.mixup=0.0", "train.cutmix=0.0"]


TEST_PER_CLASS = 5  # unlabelled test images per class (the pipeline needs a test set; no arm uses it)


def write_competition(folder: Path, digits: list[int], per_class: int | None, seed: int) -> Path:
    """Class-per-folder competition of the chosen digits: all their images (per_class None) or a sample."""
    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
    rng = np.random.default_rng(seed)
    (folder / "test").mkdir(parents=True, exist_ok=True)
    for digit in digits:
        rows = rng.permutation(np.where(data.target == digit)[0])
        held_out, rows = rows[:TEST_PER_CLASS], rows[TEST_PER_CLASS:]  # a test set, as every competition has
        rows = rows if per_class is None else rows[:per_class]
        (folder / "train" / str(digit)).mkdir(parents=True, exist_ok=True)
        for i in rows:
            cv2.imwrite(str(folder / "train" / str(digit) / f"{i:04d}.png"), images[i])
        for i in held_out:
            cv2.imwrite(str(folder / "test" / f"{i:04d}.png"), images[i])
    return folder


def stages(data: Path, workdir: Path, overrides: list[str], names=("preprocess", "dedup", "augment", "train")) -> dict:
    params, _, finetuned = load_finetuned(ROOT / "params.yaml", CPU + [f"data.root={data}", f"train.model={MODEL[0]}"] + overrides, str(workdir))
    if finetuned:
        print(finetuned)
    t0 = time.perf_counter()
    for name in names:
        run_stage(BY_NAME[name], params, workdir)
    cv = json.loads((workdir / "train" / "cv.json").read_text())
    planned = json.loads((workdir / "train" / "fold0" / "recipe.json").read_text())  # train.min_steps may raise the epochs
    return {"cv": cv, "seconds": time.perf_counter() - t0, "lr": params.train.lr, "epochs": planned["total_steps"] // planned["steps_per_epoch"],
            "layer_decay": params.train.layer_decay, "norm": params.train.norm}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-pretrained"))
    ap.add_argument("--model", default=MODEL[0])
    ap.add_argument("--pretrain-epochs", type=int, default=6)
    ap.add_argument("--per-class", type=int, default=10, help="labelled target images per class")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--scratch-epochs", type=int, default=40, help="the shipped scratch recipe's epochs")
    ap.add_argument("--recipe-arm", action="store_true", help="also train the pretrained start with the scratch recipe")
    ap.add_argument("--batch-size", type=int, default=8, help="target batch: a few optimiser steps per epoch on ~33 images")
    ap.add_argument("--reuse-pretrained", action="store_true", help="keep WORKDIR/pretrain's weights from an earlier run")
    ap.add_argument("--only", choices=["scratch", "pretrained"], help="train one arm (two workdirs can then run side by side)")
    args = ap.parse_args()
    MODEL[0] = args.model
    wd = args.workdir
    source = write_competition(wd / "data" / "pretrain", [0, 1, 2, 3, 4], None, seed=1)
    target = write_competition(wd / "data" / "target", [5, 6, 7, 8, 9], args.per_class, seed=2)

    weights = wd / "pretrain" / "train" / "fold0" / "best.pt"
    if args.reuse_pretrained and weights.is_file():  # the same seeded CPU run gives the same weights
        print(f"pretraining: reusing {weights} (cv {json.loads((weights.parents[1] / 'cv.json').read_text())['mean']:.3f})")
    else:
        pre = stages(source, wd / "pretrain", ["train.pretrained=null", "train.folds=5", "train.fold=0", "train.batch_size=32",
                                               f"train.epochs={args.pretrain_epochs}", "train.lr=0.003", "train.warmup_epochs=1"])
        print(f"pretraining: digits 0-4 ({sum(1 for _ in source.rglob('*.png'))} images), {args.pretrain_epochs} epochs, "
              f"fold-0 accuracy {pre['cv']['mean']:.3f}, {pre['seconds']:.0f}s")

    # lr_base_batch off: the recipes' peak lr as is (0.002 scratch, 0.0005 finetune) rather than scaled down 16x for batch 8
    common = [f"train.folds={args.folds}", f"train.batch_size={args.batch_size}", "train.lr_base_batch=null"]
    scratch = common + [f"train.epochs={args.scratch_epochs}"]
    arms = {"scratch": scratch + ["train.pretrained=null"],
            # the preset's own epochs: an explicit -S train.epochs would win over it
            "pretrained (finetune preset)": common + [f"train.pretrained={weights}"],
            **({"pretrained, scratch recipe": scratch + [f"train.pretrained={weights}", "finetune={}"]} if args.recipe_arm else {})}
    print(f"\ntarget: digits 5-9 x {args.per_class} labelled images, {args.folds}-fold CV (2-core CPU, shared)")
    print(f"{'arm':<30} {'lr':>8} {'epochs':>6} {'layer_decay':>11} {'norm':>10} {'cv accuracy':>16} {'oof log-loss':>12} {'seconds':>8}")
    arms = {k: v for k, v in arms.items() if args.only is None or k.startswith(args.only)}
    results = {}
    for i, (arm, overrides) in enumerate(arms.items()):
        r = stages(target, wd / "target", overrides, ("preprocess", "dedup", "augment", "train") if i == 0 else ("train",))
        cv = r["cv"]
        results[arm] = cv["oof_accuracy"]
        print(f"{arm:<30} {r['lr']:>8.4f} {r['epochs']:>6} {str(r['layer_decay']):>11} {r['norm']:>10} "
              f"{cv['mean']:>8.3f} ± {cv['std']:.3f} {cv['oof_log_loss']:>12.3f} {r['seconds']:>8.0f}")
    base = results.get("scratch")
    if base is None:
        return
    for arm, acc in results.items():
        if arm != "scratch":
            print(f"{arm}: OOF accuracy {acc:.3f} vs scratch {base:.3f} ({acc - base:+.3f})")


if __name__ == "__main__":
    main()
