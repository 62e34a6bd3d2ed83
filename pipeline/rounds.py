"""Pseudo-label rounds: what each round scored and how much its predictions moved.

Round 0 is train/ + predict/; round k (1..params.rounds) is round<k>/train + round<k>/predict, trained
with the pseudo rows that round k-1's predictions produced (pseudo/ for round 1, round<k-1>/pseudo/
after). The report is written to <workdir>/rounds.json after `pipeline run`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import read_json, write_json
from pipeline.runner import round_prefix


def final_predict_dir(workdir: Path, rounds: int) -> Path:
    return Path(workdir) / f"{round_prefix(rounds)}predict"


def _argmax_labels(probs_csv: Path) -> pd.Series:
    frame = pd.read_csv(probs_csv, dtype={"id": str}, keep_default_na=False).set_index("id")
    columns = [c for c in frame.columns if c.startswith("p_")]
    return pd.Series(np.array(columns)[frame[columns].to_numpy().argmax(1)], index=frame.index)


def round_report(workdir: Path, rounds: int) -> list[dict]:
    """One row per round: CV of its train, pseudo rows it trained with, and agreement of its test
    predictions with the previous round's (share of test ids with the same predicted class)."""
    workdir, rows, previous = Path(workdir), [], None
    for k in range(rounds + 1):
        prefix = round_prefix(k)
        cv_path, probs_path = workdir / f"{prefix}train" / "cv.json", workdir / f"{prefix}predict" / "probs.csv"
        if not (cv_path.is_file() and probs_path.is_file()):
            break
        cv = read_json(cv_path)
        row = {"round": k, "cv": cv.get("mean"), "cv_std": cv.get("std"), "metric": cv.get("metric", "accuracy")}
        if k > 0:
            pseudo_summary = workdir / f"{round_prefix(k - 1)}pseudo" / "summary.json"
            row["pseudo_rows"] = read_json(pseudo_summary).get("pseudo rows") if pseudo_summary.is_file() else None
        labels = _argmax_labels(probs_path)
        if previous is not None:
            common = labels.index.intersection(previous.index)
            row["agreement_with_previous"] = float((labels[common] == previous[common]).mean())
        rows.append(row)
        previous = labels
    if rows:
        write_json(workdir / "rounds.json", rows)
    return rows
