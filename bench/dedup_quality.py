"""Dedup quality: pairwise precision and recall on data with known near-duplicates made at native size.

Datasets and copies: see bench/dedup_data.py (digits, small gray look-alikes, colour photo crops,
colour scenes; copies shifted, re-lit, JPEG'd, resized, blurred, re-shot, combined, copied again;
hard negatives that only differ in texture, one detail, colour or a small object on a shared
background). Every image goes through preprocess's own per-image path with the stage's default params
(auto size from the images as the stage decides it, median filter) and then through the dedup
stage's own `find_duplicates`. Printed per dataset: pairwise precision/recall of the clusters against
the true groups, the share of copies found per transform, the share of hard-negative pairs merged,
candidate recall (true pairs that reached verification), and the curve over `dedup.threshold`.

    python bench/dedup_quality.py [--half bottom|top] [--seeds 0 1 2] [--datasets lookalike photos ...]

`--half top` is the calibration split (crops from the top half of each photo, even digits); the
figures in bench/README.md are `--half bottom` (the other half), so they are not the images any
threshold was chosen on. Each seed draws other crops, copies and negatives: one seed is one draw,
and the verifier's constants were chosen for the worst case over seeds 0-2 of the top half.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dedup_data import TRANSFORMS, Items, dataset  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from stages import dedup  # noqa: E402
from stages.dedup import calibrate  # noqa: E402
from stages.dedup.verify import GATE  # noqa: E402
from stages.preprocess import auto_size, box_area, choose_channels, decide_crop, decide_median, impulse_share, process, target_hw  # noqa: E402

THRESHOLDS = (0.5, 0.7, 0.8, 0.85, 0.88, 0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995)
DATASETS = ("digits", "lookalike", "photos", "scenes")


def pair_count(labels: np.ndarray) -> int:
    _, counts = np.unique(labels, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def pairwise_pr(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    both = pred.astype(np.int64) * (truth.max() + 1) + truth
    tp, predicted, true = pair_count(both), pair_count(pred), pair_count(truth)
    return (tp / predicted if predicted else 1.0), (tp / true if true else 1.0)


def to_cache(items: Items, params) -> list[np.ndarray]:
    """What `pipeline preprocess` stores for these images with the default params (its auto median
    and crop decided on a sample of the originals, as the stage does on the train images)."""
    p = params.preprocess
    sample = [items.images[k] for k in range(0, len(items.images), max(1, len(items.images) // 200))]
    median, _ = decide_median(p, [impulse_share(im) for im in sample] if p.median_ksize == "auto" else [])
    crop, _ = decide_crop(p, [box_area(im, p.crop) for im in sample] if p.crop.enabled == "auto" else [])
    p = p.model_copy(update={"median_ksize": median, "crop": p.crop.model_copy(update={"enabled": crop})})
    hw = target_hw(auto_size([max(im.shape[:2]) for im in items.images], p.size_range))
    channels = choose_channels(p.channels, all(im.shape[2] == 1 for im in items.images))
    return [process(im, p, channels, hw) for im in items.images]


def clusters_at(n: int, pairs: tuple, threshold: float) -> np.ndarray:
    i, j, score = pairs
    keep = score >= threshold
    return dedup.cluster_links(n, i[keep], j[keep], score[keep])[0]


def per_transform(pred: np.ndarray, items: Items) -> dict[str, float]:
    truth, kinds = np.asarray(items.groups), np.asarray(items.kinds)
    return {k: float(np.mean(pred[kinds == k] == pred[truth[kinds == k]])) for k in TRANSFORMS if (kinds == k).any()}


def negatives_merged(pred: np.ndarray, items: Items) -> dict[str, str]:
    out: dict[str, list[bool]] = {}
    for a, b, kind in items.negatives:
        out.setdefault(kind, []).append(bool(pred[a] == pred[b]))
    return {k: f"{sum(v)}/{len(v)}" for k, v in out.items()}


def candidate_recall(items: Items, pairs: tuple) -> float:
    """Share of true pairs (same group) that were scored at all, directly or through a chain of
    scored pairs (what union-find can use)."""
    truth = np.asarray(items.groups)
    linked = dedup.cluster_links(len(truth), pairs[0], pairs[1], pairs[2])[0]
    return pairwise_pr(linked, truth)[1]


def gate_report(found: dict, truth: np.ndarray) -> None:
    """What the verifier's gate refuses unscored (GATE): its share of the candidates, and how many of the
    true pairs and of the accepted pairs (both scored here, as the calibration sample is) it would drop."""
    i, j, score = found["pairs"]
    under = found["gate"] < GATE
    true = truth[i] == truth[j]
    accepted = score >= found["threshold"]
    print(f"gate (< {GATE}): {under.mean():.1%} of the pairs; true pairs under it {(under & true).sum()}/{true.sum()}, "
          f"accepted pairs under it {(under & accepted).sum()}/{accepted.sum()}, fine-compared pairs under it "
          f"{(under & (score > 0)).sum()}; lowest gate value of an accepted pair {found['gate'][accepted].min() if accepted.any() else float('nan'):.3f}")


def evaluate(name: str, items: Items, params) -> dict:
    d = params.dedup
    t0 = time.perf_counter()
    cache = to_cache(items, params)
    t1 = time.perf_counter()
    found = dedup.find_duplicates(cache, d)
    t2 = time.perf_counter()
    truth, pred = np.asarray(items.groups), found["cluster"]
    precision, recall = pairwise_pr(pred, truth)
    shape = "x".join(map(str, cache[0].shape))
    copies = sum(k != "original" for k in items.kinds)
    print(f"\n== {name}: {len(items.images) - copies} items + {copies} copies, cache {shape}; "
          f"preprocess {t1 - t0:.1f}s, dedup {t2 - t1:.1f}s, {found['candidate_pairs']} candidates")
    print(f"default (threshold {found.get('threshold_reason', d.threshold)}): precision {precision:.3f}  recall {recall:.3f}")
    print("copies found, by transform: " + ", ".join(f"{k} {v:.2f}" for k, v in per_transform(pred, items).items()))
    print("hard negatives merged: " + (", ".join(f"{k} {v}" for k, v in negatives_merged(pred, items).items()) or "none"))
    result = {"precision": precision, "recall": recall}
    gate_report(found, truth)
    if "pairs" in found:  # every scored candidate: the curve over the threshold
        result["candidate_recall"] = candidate_recall(items, found["pairs"])
        print(f"candidate recall (true pairs scored, directly or by a chain): {result['candidate_recall']:.3f}")
        curve = {}
        print("threshold  precision  recall")
        for t in THRESHOLDS:
            curve[t] = pairwise_pr(clusters_at(len(cache), found["pairs"], t), truth)
            print(f"{t:9.3f}  {curve[t][0]:9.3f}  {curve[t][1]:6.3f}")
        result["curve"] = curve
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=float, default=0.3, help="fraction of items that get 1-3 copies")
    ap.add_argument("--half", choices=["top", "bottom"], default="bottom", help="top: calibration split; bottom: reported")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed (other crops, copies, negatives)")
    ap.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    ap.add_argument("--params", default=str(Path(__file__).resolve().parents[1] / "params.yaml"))
    ap.add_argument("--calibration-sample", type=int, default=calibrate.SAMPLE,
                    help="images whose candidates skip the gate (calibrate.SAMPLE); under the dataset size the gate is live")
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="params override, e.g. -S dedup.threshold=0.9")
    args = ap.parse_args()
    params, _ = load_params(Path(args.params), args.overrides)
    calibrate.SAMPLE = args.calibration_sample
    results = {}
    for seed in args.seeds:
        print(f"\n#### seed {seed}: dedup params {params.dedup.model_dump()}  (half {args.half})")
        results.update({(name, seed): evaluate(name, dataset(name, args.half, seed, args.copies), params) for name in args.datasets})
    print("\ndataset     seed  precision  recall  min")
    for (name, seed), r in results.items():
        print(f"{name:10}  {seed:4}  {r['precision']:9.3f}  {r['recall']:6.3f}  {min(r['precision'], r['recall']):.3f}")
    if len(args.seeds) > 1:
        print("\ndataset     worst min(P, R) over the seeds  mean")
        for name in args.datasets:
            mins = [min(results[name, s]["precision"], results[name, s]["recall"]) for s in args.seeds]
            print(f"{name:10}  {min(mins):.3f}  {np.mean(mins):.3f}")
    curves = [r["curve"] for r in results.values() if "curve" in r]
    if curves:  # the default must hold on every kind of data: the threshold whose worst P or R is highest
        worst = {t: min(min(c[t]) for c in curves) for t in curves[0]}
        best = max(worst, key=worst.get)
        print("\nthreshold  min(P, R) over the datasets and seeds")
        for t, w in worst.items():
            marks = "  <- best single fixed threshold" if t == best else ""
            print(f"{t:9.3f}  {w:.3f}{marks}")


if __name__ == "__main__":
    main()
