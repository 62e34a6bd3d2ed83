"""Ablation of the shipped defaults against a plain baseline, on realistic data built offline.

Datasets (Kaggle layout, written once under --data; true test labels kept beside them):
  digits        scikit-learn's 8x8 handwritten digits at native size: clean, 1-pixel strokes
  textures      32x32 gray patches of scikit-image's photos (brick, grass, gravel, coffee, astronaut,
                retina, camera, chelsea, rocket, coins): look-alike texture classes that fill the frame;
                train patches from the top 70% of each photo, test patches from the bottom 30%
  textures_sp   the same patches with 3% salt-and-pepper noise
  canvas        digits scaled to 32 px at a random place on a 64 px canvas with 5% salt-and-pepper noise

Recipes, each the real stages through the runner (preprocess -> dedup -> augment -> train -> predict)
with -S overrides on params.yaml, at equal model (resnet10t), cache (16 px), batch (32), fold (0 of 5)
and epochs:
  baseline      AdamW, cosine, label smoothing, flip + random-resized-crop; no median, no crop, no
                mixup/cutmix, no EMA, no drop-path, no erasing, no affine/colour jitter, no TTA
  shipped       params.yaml as shipped
  no_<knob>     shipped with one knob set to its baseline value, to see what each default is worth
  with_<knob>   median / crop forced on where auto left them off (no_median / no_crop where it chose them)
  all_folds     shipped, every fold trained (the ensemble predict makes by default)
  full_fit      all_folds plus train.full_fit (one more model on every image, added to the ensemble)
Score: accuracy of predict/submission.csv on the held-out test labels (plus the fold's validation).
Each (dataset, epochs, recipe) runs once per --seeds value (params.seed: the fold split, the weights'
init, the augmentation draws); the table reports the mean over seeds and the paired difference.

    .venv/bin/python bench/defaults.py --epochs 10 40 --seeds 0 1 2   # appends rows to --out
    .venv/bin/python bench/defaults.py --table bench/defaults_results.jsonl                # markdown table
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("digits", "textures", "canvas", "textures_sp")
PHOTOS = ("brick", "grass", "gravel", "coffee", "astronaut", "retina", "camera", "chelsea", "rocket", "coins")
N_TRAIN, N_TEST = 500, 400  # small: the bench machine is 2 shared CPU cores

COMMON = ["preprocess.size=16", "preprocess.workers=1", "train.model=resnet10t", "train.folds=5", "train.fold=0",
          "train.batch_size=32", "train.workers=0", "train.patience=0", "predict.batch_size=512"]
BASELINE = ["preprocess.median_ksize=0", "preprocess.crop.enabled=false", "train.mixup=0", "train.cutmix=0", "train.ema=0",
            "train.drop_path=0", "augment.erasing=0", "augment.affine=0", "augment.color_jitter=0", "augment.gamma=0",
            "augment.blur=0", "predict.tta=[identity]"]
KNOBS = {  # shipped minus one knob; median/crop are filled in from what auto decided on the dataset
    "no_mixup_cutmix": ["train.mixup=0", "train.cutmix=0"],
    "no_ema": ["train.ema=0"],
    "no_drop_path": ["train.drop_path=0"],
    "no_erasing": ["augment.erasing=0"],
    "no_affine_colour": ["augment.affine=0", "augment.color_jitter=0", "augment.gamma=0", "augment.blur=0"],
    "no_affine": ["augment.affine=0"],
    "no_colour": ["augment.color_jitter=0", "augment.gamma=0", "augment.blur=0"],
    "no_dedup_weights": ["train.dedup_weights=false"],
    # The schedule-scaled knobs forced to what they were before the scaling:
    "fixed_ema_0.999": ["train.ema=0.999"],
    "regularise_always": ["train.regularise_min_epochs=0"],
}
ALL_FOLDS = ["train.fold=null"]  # five folds: the all_folds / full_fit pair (five times the cost: opt in with --only)
EXPENSIVE = {"all_folds": ALL_FOLDS, "full_fit": [*ALL_FOLDS, "train.full_fit=true"]}


# ---- datasets ---------------------------------------------------------------------------------------

def write_kaggle(dest: Path, train: list[tuple[np.ndarray, str]], test: list[tuple[np.ndarray, str]]) -> None:
    for split, items in (("train", train), ("test", test)):
        (dest / split).mkdir(parents=True, exist_ok=True)
        for k, (image, _) in enumerate(items):
            cv2.imwrite(str(dest / split / f"{split}{k:05d}.png"), image)
    pd.DataFrame({"id": [f"train{k:05d}" for k in range(len(train))], "label": [y for _, y in train]}).to_csv(dest / "train.csv", index=False)
    ids = [f"test{k:05d}" for k in range(len(test))]
    pd.DataFrame({"id": ids, "label": test[0][1]}).to_csv(dest / "sample_submission.csv", index=False)
    (dest / "solution.json").write_text(json.dumps(dict(zip(ids, [y for _, y in test]))))


def salt_and_pepper(image: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    noisy = image.copy()
    mask = rng.random(image.shape[:2]) < density
    noisy[mask] = np.where(rng.random(int(mask.sum())) < 0.5, 0, 255).astype(np.uint8)
    return noisy


def digit_items(rng: np.random.Generator) -> list[tuple[np.ndarray, str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = rng.permutation(len(digits.images))[: N_TRAIN + N_TEST]
    return [(np.round(digits.images[k] * 255 / 16).astype(np.uint8), str(digits.target[k])) for k in order]


def texture_items(rng: np.random.Generator, region: str, per_class: int) -> list[tuple[np.ndarray, str]]:
    """Gray patches (32-48 px, resized to 32) from the top 70% (train) or bottom 30% (test) of each photo."""
    from skimage import data

    items = []
    for name in PHOTOS:
        photo = np.asarray(getattr(data, name)())
        gray = photo if photo.ndim == 2 else cv2.cvtColor(photo[:, :, :3], cv2.COLOR_RGB2GRAY)
        split = int(gray.shape[0] * 0.7)
        part = gray[:split] if region == "train" else gray[split:]
        for _ in range(per_class):
            side = int(rng.integers(32, 49))
            y, x = rng.integers(0, part.shape[0] - side + 1), rng.integers(0, part.shape[1] - side + 1)
            items.append((cv2.resize(part[y : y + side, x : x + side], (32, 32), interpolation=cv2.INTER_AREA), name))
    return [items[k] for k in rng.permutation(len(items))]


def on_canvas(image: np.ndarray, rng: np.random.Generator, side: int = 64, obj: int = 32) -> np.ndarray:
    canvas = np.zeros((side, side), np.uint8)
    y, x = rng.integers(0, side - obj + 1, 2)
    canvas[y : y + obj, x : x + obj] = cv2.resize(image, (obj, obj), interpolation=cv2.INTER_LINEAR)
    return salt_and_pepper(canvas, 0.05, rng)


def build(name: str, dest: Path) -> Path:
    """Write dataset `name` under dest/name once (a DONE marker makes later calls free)."""
    folder = dest / name
    if (folder / "DONE").is_file():
        return folder
    rng = np.random.default_rng(0)
    if name in ("digits", "canvas"):
        items = digit_items(rng)
        if name == "canvas":
            items = [(on_canvas(image, rng), y) for image, y in items]
        train, test = items[:N_TRAIN], items[N_TRAIN:]
    else:
        train = texture_items(rng, "train", N_TRAIN // len(PHOTOS))
        test = texture_items(rng, "test", N_TEST // len(PHOTOS))
        if name == "textures_sp":
            train = [(salt_and_pepper(image, 0.03, rng), y) for image, y in train]
            test = [(salt_and_pepper(image, 0.03, rng), y) for image, y in test]
    write_kaggle(folder, train, test)
    (folder / "DONE").write_text("ok\n")
    return folder


# ---- runs -------------------------------------------------------------------------------------------

def run_recipe(data: Path, workdir: Path, overrides: list[str]) -> dict:
    """The real pipeline through the runner (stale stages only), then the submission's test accuracy."""
    from pipeline.params import load_params
    from pipeline.runner import run_all

    params, _ = load_params(ROOT / "params.yaml", [f"data.root={data}", *COMMON, *overrides], str(workdir))
    t0 = time.perf_counter()
    ran = run_all(params, workdir)
    seconds = time.perf_counter() - t0
    truth = json.loads((data / "solution.json").read_text())
    submission = pd.read_csv(workdir / "predict" / "submission.csv", dtype=str)
    report = json.loads((workdir / "preprocess" / "report.json").read_text())
    history = pd.read_csv(workdir / "train" / "fold0" / "metrics.csv")
    summary = json.loads((workdir / "predict" / "summary.json").read_text())
    fold = json.loads((workdir / "train" / "fold0" / "fold.json").read_text())
    return {"test_accuracy": float((submission.label == submission.id.map(truth)).mean()),
            "val_accuracy": float(history.val_accuracy.max()), "best_epoch": int(history.val_accuracy.idxmax()) + 1,
            "median_ksize": report["median_ksize"], "crop": report["crop"], "tta": summary["tta views"],
            "recipe": fold.get("recipe"), "stages_run": ran, "seconds": round(seconds, 1)}


def recipes(decided: dict, only: list[str] | None) -> dict[str, list[str]]:
    """Every recipe's overrides; median/crop flip what auto decided on this dataset."""
    flip_median = "preprocess.median_ksize=" + ("0" if decided["median_ksize"] else "3")
    flip_crop = "preprocess.crop.enabled=" + ("false" if decided["crop"] else "true")
    found = {"baseline": BASELINE, "shipped": [], "no_tta": ["predict.tta=[identity]"],
             ("no_median" if decided["median_ksize"] else "with_median"): [flip_median],
             ("no_crop" if decided["crop"] else "with_crop"): [flip_crop], **KNOBS}
    if only:
        found |= EXPENSIVE
    return {k: found[k] for k in only if k in found} if only else found  # in the order asked


def bench(args) -> None:
    out = Path(args.out)
    done = {row_key(r) for r in map(json.loads, out.read_text().splitlines())} if out.is_file() else set()
    for epochs in args.epochs:
        for name in args.datasets:
            data = build(name, Path(args.data))
            plan = recipes(probe_decisions(data), args.only)
            for seed in args.seeds:
                base = Path(args.work) / f"{name}-e{epochs}-s{seed}{'-' + args.tag if args.tag else ''}"
                for recipe, overrides in plan.items():
                    if (name, epochs, recipe, args.tag, seed) not in done:
                        run_one(data, base, recipe, [f"train.epochs={epochs}", f"seed={seed}"], overrides,
                                {"dataset": name, "epochs": epochs, "recipe_name": recipe, "tag": args.tag, "seed": seed}, out)


def row_key(row: dict) -> tuple:
    return row["dataset"], row["epochs"], row["recipe_name"], row.get("tag", ""), row.get("seed", 42)


def run_one(data: Path, base: Path, recipe: str, schedule: list[str], overrides: list[str], labels: dict, out: Path) -> None:
    """One recipe's row, appended to `out`. no_tta reuses the shipped training (the runner reruns predict
    only), full_fit the all_folds folds (the runner trains the full model alone)."""
    shipped_dir = base / "shipped"
    workdir = {"shipped": shipped_dir, "no_tta": shipped_dir, "full_fit": base / "all_folds"}.get(recipe, base / recipe)
    if recipe == "no_tta" and not (shipped_dir / "predict" / "submission.csv").is_file():
        run_recipe(data, shipped_dir, schedule)
    row = run_recipe(data, workdir, [*schedule, *overrides])
    if recipe == "no_tta":  # leave the shipped workdir as shipped for a later run
        run_recipe(data, shipped_dir, schedule)
    row = {**labels, "overrides": overrides, **row}
    print(json.dumps(row), flush=True)
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")


def probe_decisions(data: Path) -> dict:
    """What preprocess's auto settings decide on this dataset (the same probe the stage runs)."""
    from pipeline.data import discover
    from pipeline.params import load_params
    from stages import preprocess

    p = load_params(ROOT / "params.yaml", [f"data.root={data}", *COMMON])[0].preprocess
    manifest = discover(data, None, None).manifest
    sample = preprocess.probe(list(manifest.path[manifest.split == "train"]), p)
    return {"median_ksize": preprocess.decide_median(p, sample.impulse)[0], "crop": preprocess.decide_crop(p, sample.box_areas)[0]}


# ---- table ------------------------------------------------------------------------------------------

def load_rows(path: Path, tag: str | None) -> pd.DataFrame:
    """Result rows, the last of each (dataset, epochs, recipe, seed); with `tag`, the tagged rows (e.g.
    the defaults after a change) are kept too, named "<recipe> [<tag>]"."""
    rows = pd.DataFrame([json.loads(line) for line in path.read_text().splitlines()])
    rows["tag"] = rows.tag.fillna("")
    rows["seed"] = rows["seed"].fillna(42).astype(int) if "seed" in rows else 42
    if tag is not None:
        rows["recipe_name"] = np.where(rows.tag == tag, rows.recipe_name + f" [{tag}]", rows.recipe_name)
        rows = rows[rows.tag.isin(["", tag])]
    else:
        rows = rows[rows.tag == ""]
    return rows.drop_duplicates(["dataset", "epochs", "recipe_name", "seed"], keep="last")


def cell(value: float, delta: float | None, n: int, most: int) -> str:
    return ("" if pd.isna(value) else f"{value:.3f}" + ("" if delta is None or pd.isna(delta) else f" ({delta:+.3f})")
            + (f" [{n}]" if n < most else ""))


def verdict(rows: pd.DataFrame, tag: str | None) -> list[str]:
    """The done-when table: the shipped defaults (the tagged ones where run) against the baseline, per
    schedule and dataset, mean over seeds and the paired difference."""
    lines = ["\n**Shipped against the baseline** (test accuracy, mean over seeds; in brackets: shipped - baseline, "
             "paired by seed; [n]: seeds)\n", "| epochs | dataset | baseline | shipped | shipped - baseline |", "|---:|---|---:|---:|---:|"]
    for (epochs, dataset), group in rows.groupby(["epochs", "dataset"]):
        by = group.set_index(["recipe_name", "seed"]).test_accuracy
        name = f"shipped [{tag}]" if tag and f"shipped [{tag}]" in by.index.get_level_values(0) else "shipped"
        if "baseline" not in by.index.get_level_values(0) or name not in by.index.get_level_values(0):
            continue
        base, ship = by.loc["baseline"], by.loc[name]
        paired = (ship - base).dropna()
        lines.append(f"| {epochs} | {dataset} | {base.mean():.3f} [{len(base)}] | {ship.mean():.3f} [{len(ship)}] | "
                     f"{paired.mean():+.3f} [{len(paired)}] |")
    return lines


def table(path: Path, tag: str | None) -> str:
    """Markdown: the verdict, then one table per schedule: mean test accuracy over seeds, and in brackets
    the mean of the per-seed differences (paired: same seed, same fold split) from shipped (a tagged row:
    from shipped with the same tag)."""
    rows = load_rows(path, tag)
    lines = verdict(rows, tag)
    for epochs, group in rows.groupby("epochs"):
        scores = group.pivot_table(index=["recipe_name", "seed"], columns="dataset", values="test_accuracy")
        scores = scores[[d for d in DATASETS if d in scores.columns]]
        mean, seeds = scores.groupby(level=0).mean(), scores.groupby(level=0).count()
        names = list(mean.index)
        first = ["baseline", "shipped"] + sorted(i for i in names if i.startswith("shipped ["))
        order = [i for i in first + sorted(i for i in names if i not in first) if i in names]
        lines += [f"\n**{epochs} epochs** (test accuracy, mean over seeds; in brackets: mean paired difference from "
                  "shipped; [n]: seeds when fewer than the most)\n",
                  "| recipe | " + " | ".join(mean.columns) + " | mean difference |", "|---|" + "---:|" * (len(mean.columns) + 1)]
        most = int(seeds.max().max())
        for recipe in order:
            reference = f"shipped [{recipe.split(' [')[1]}" if " [" in recipe and f"shipped [{recipe.split(' [')[1]}" in names else "shipped"
            diff = (scores.loc[recipe] - scores.loc[reference]).mean() if reference in names and recipe != reference else None
            deltas = [] if diff is None else [d for d in diff.dropna()]
            cells = [cell(mean.loc[recipe, d], None if diff is None else diff[d], int(seeds.loc[recipe, d]), most) for d in mean.columns]
            lines.append(f"| {recipe} | " + " | ".join(cells) + (f" | {np.mean(deltas):+.3f} |" if deltas else " | |"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="params.seed values; rows are averaged over them")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (2 threads on a shared 2-core CPU ran 16x slower than 1)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--only", nargs="+", help="run only these recipes (e.g. baseline shipped)")
    parser.add_argument("--tag", default="", help="label rows (e.g. the code version); reruns skip rows with the same tag")
    parser.add_argument("--data", default="/tmp/bench_defaults/data")
    parser.add_argument("--work", default="/tmp/bench_defaults/work")
    parser.add_argument("--out", default=str(ROOT / "bench" / "defaults_results.jsonl"))
    parser.add_argument("--table", help="print the markdown table of a results file and exit")
    args = parser.parse_args()
    if args.table:
        print(table(Path(args.table), args.tag if args.tag else None))
        return
    import torch

    torch.set_num_threads(args.threads)
    bench(args)


if __name__ == "__main__":
    main()
