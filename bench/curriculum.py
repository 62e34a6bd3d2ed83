"""Curriculum learning with vs without, same data, same params otherwise, same seed.

Runs the pipeline's own stages (preprocess, dedup, augment once; train twice) and prints the
selection metric per fold for both, plus the time. Default: the built-in digits example at toy scale.

    python bench/curriculum.py                                   # CPU, example
    python bench/curriculum.py --root /data/comp -S train.epochs=20 --workdir /tmp/cur  # real data, GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's stages/, not an installed one

from pipeline.artifacts import read_json  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.runner import BY_NAME, run_stage  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="example:digits")
    ap.add_argument("--workdir", default="/tmp/bench-curriculum")
    ap.add_argument("-S", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    base = [f"data.root={args.root}", *args.overrides]
    results = {}
    for label, extra in (("without", ["train.curriculum=false"]), ("with", ["train.curriculum=true"])):
        params, _ = load_params(ROOT / "params.yaml", base + extra, workdir=args.workdir)
        wd = Path(args.workdir)
        for name in ("preprocess", "dedup", "augment"):
            if not (wd / name / "lock.json").is_file():
                run_stage(BY_NAME[name], params, wd)
        t0 = time.perf_counter()
        run_stage(BY_NAME["train"], params, wd)
        cv = read_json(wd / "train" / "cv.json")
        results[label] = (cv, time.perf_counter() - t0)
    p = params.train
    print(f"\ncurriculum ({p.curriculum_score}, thresholds {p.curriculum_thresholds}, span {p.curriculum_span}), "
          f"{p.model}, {p.epochs} epochs, metric {p.metric}")
    for label, (cv, seconds) in results.items():
        folds = ", ".join(f"{k}: {v:.4f}" for k, v in cv["per_fold"].items())
        print(f"{label:>8} curriculum: {cv['mean']:.4f} ± {cv['std']:.4f}  ({folds})  oof log-loss {cv['oof_log_loss']:.4f}  {seconds:.1f}s")


if __name__ == "__main__":
    main()
