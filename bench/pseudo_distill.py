"""Pseudo-label rounds and distillation on the built-in digits example: CV and hidden-test accuracy.

    python bench/pseudo_distill.py [--workdir DIR] [--rounds 2] [--epochs 4]

Runs `pipeline run` with all folds and `rounds` pseudo-label rounds, then trains a student of the same
model distilled from round 0's ensemble (its predict/oof.csv and probs.csv) in a second workdir, with the
same folds and seed. Prints per round: pseudo rows, CV accuracy (mean ± std over folds), accuracy of the
submission on the example's hidden labels (SOLUTION.json), agreement with the previous round.
CV of later rounds is slightly optimistic (see README: pseudo labels come from other-fold models).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from pipeline.params import load_params
from pipeline.rounds import round_report
from pipeline.runner import round_prefix, run_all

ROOT = Path(__file__).resolve().parents[1]


def test_accuracy(workdir: Path, predict_dir: Path) -> float:
    solution = json.loads((workdir / "example" / "digits" / "SOLUTION.json").read_text())
    submission = pd.read_csv(predict_dir / "submission.csv", dtype=str)
    return float((submission.label.astype(int) == submission.id.map(solution)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="artifacts/bench_pseudo")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    common = ["train.fold=null", f"train.epochs={args.epochs}", "pseudo.threshold=0.7"]

    t0 = time.perf_counter()
    params, _ = load_params(ROOT / "params.yaml", common + [f"rounds={args.rounds}"], str(workdir))
    run_all(params, workdir)
    rows = round_report(workdir, args.rounds)
    for row in rows:
        row["test_accuracy"] = test_accuracy(workdir, workdir / f"{round_prefix(row['round'])}predict")
    minutes = (time.perf_counter() - t0) / 60

    student_dir = workdir.with_name(workdir.name + "_student")
    # the teacher's example folder is reused, so both see the same images
    # (a plain folder gets no example overrides, so they are passed first, then ours on top)
    example = [f"{k}={json.dumps(v)}" for k, v in params.example.items()]
    student, _ = load_params(ROOT / "params.yaml", example + common + ["rounds=0", f"distill.teacher={workdir}",
                                                                       f"data.root={workdir / 'example' / 'digits'}"], str(student_dir))
    run_all(student, student_dir)
    cv = json.loads((student_dir / "train" / "cv.json").read_text())

    print(f"\nrounds run in {minutes:.1f} min")
    print("| run | pseudo rows | CV accuracy | test accuracy | agreement with previous |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| round {row['round']} | {row.get('pseudo_rows', '-')} | {row['cv']:.4f} ± {row['cv_std']:.4f} | "
              f"{row['test_accuracy']:.4f} | {row.get('agreement_with_previous', '-')} |")
    print(f"| student distilled from round 0 (T={student.distill.temperature}, alpha={student.distill.alpha}) | - | "
          f"{cv['mean']:.4f} ± {cv['std']:.4f} | {test_accuracy(workdir, student_dir / 'predict'):.4f} | - |")


if __name__ == "__main__":
    main()
