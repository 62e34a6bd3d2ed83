"""`pipeline compare WORKDIR...`: finished runs side by side (one workdir per run), and what a blend of
them would score on their out-of-fold predictions.

Each run is read from its artifacts only: train/cv.json (CV over folds, OOF metrics), the locks' params
(those that differ between the runs are shown) and times, predict/summary.json when predict ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import read_json
from pipeline.blend import fit_weights, log_loss
from pipeline.cache import read_classes, read_probs
from pipeline.console import duration
from pipeline.errors import CheckError

STAGES = ("preprocess", "dedup", "augment", "train", "predict")
NOT_A_RECIPE = {"workdir", "data.root", "train.model"}  # differ between any two runs or have their own column


@dataclass
class Run:
    workdir: Path
    cv: dict  # train/cv.json
    params: dict[str, Any]  # flattened "section.key" -> value, from every stage's lock
    seconds: float  # all stages' run time
    predict: dict  # predict/summary.json, or {}

    @property
    def name(self) -> str:
        return self.workdir.as_posix()


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in flatten(value, f"{prefix}.{key}" if prefix else str(key)).items()}
    return {prefix: tree}


def load_run(workdir: Path) -> Run:
    workdir = Path(workdir)
    cv_path = workdir / "train" / "cv.json"
    if not cv_path.is_file():
        raise CheckError(f"{workdir}: no train/cv.json, so not a trained workdir (run `pipeline train -w {workdir}` first)")
    params, seconds = {}, 0.0
    for stage in STAGES:
        lock = workdir / stage / "lock.json"
        if lock.is_file():
            record = read_json(lock)
            params.update(flatten(record["params"]))
            seconds += float(record.get("seconds", 0.0))
    summary = workdir / "predict" / "summary.json"
    return Run(workdir, read_json(cv_path), params, seconds, read_json(summary) if summary.is_file() else {})


def differing(runs: list[Run]) -> list[str]:
    keys = sorted(set().union(*(r.params for r in runs)) - NOT_A_RECIPE)
    return [k for k in keys if len({repr(r.params.get(k, "-")) for r in runs}) > 1]


def table(runs: list[Run]) -> list[dict]:
    """One row per run: CV ± std over folds, OOF metrics, time, model, then the params that differ."""
    rows = []
    for run in runs:
        cv = run.cv
        folds = len(cv.get("per_fold", {}))
        missing = cv.get("missing_folds") or []
        row = {"run": run.name, "model": run.params.get("train.model", "?"),
               f"cv {cv['metric']}": f"{cv['mean']:.4f} ± {cv['std']:.4f}",
               "folds": f"{folds}" + (f" ({len(missing)} missing)" if missing else ""),
               "oof acc": f"{cv.get('oof_accuracy', float('nan')):.4f}", "oof F1": f"{cv.get('oof_macro_f1', float('nan')):.4f}",
               "oof logloss": f"{cv.get('oof_log_loss', float('nan')):.4f}"}
        if "oof accuracy with TTA" in run.predict:
            row["oof acc +TTA"] = f"{run.predict['oof accuracy with TTA']:.4f}"
        row["time"] = duration(run.seconds)
        rows.append(row)
    for key in differing(runs):
        for row, run in zip(rows, runs):
            row[key] = str(run.params.get(key, "-"))
    columns = list(dict.fromkeys(k for row in rows for k in row))  # a column only some runs have shows "-" for the rest
    return [{k: row.get(k, "-") for k in columns} for row in rows]


def blend(runs: list[Run]) -> dict:
    """OOF weights (predict.weights: oof's fit) on the ids every run predicted, and what the blend scores
    against the best single run on the same ids."""
    classes = read_classes(runs[0].workdir / "preprocess")
    for run in runs[1:]:
        if read_classes(run.workdir / "preprocess") != classes:
            raise CheckError(f"compare --blend: {run.workdir} has other classes than {runs[0].workdir}")
    hint = "compare --blend needs each run's train/oof.csv"
    oofs = [read_probs(r.workdir / "train" / "oof.csv", classes, hint).set_index("id") for r in runs]
    common = sorted(set.intersection(*(set(o.index) for o in oofs)))
    if not common:
        raise CheckError("compare --blend: the runs share no out-of-fold ids (were they trained on the same data?)")
    columns = [f"p_{c}" for c in classes]
    y = oofs[0].loc[common, "label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    probs = [o.loc[common, columns].to_numpy(np.float64) for o in oofs]
    weights = fit_weights(probs, y)
    blended = np.tensordot(weights, np.stack(probs), axes=1)
    singles = [{"run": r.name, "weight": round(float(w), 4), "oof acc": round(float((p.argmax(1) == y).mean()), 4),
                "oof logloss": round(log_loss(p, y), 4)} for r, w, p in zip(runs, weights, probs)]
    singles.append({"run": "blend", "weight": 1.0, "oof acc": round(float((blended.argmax(1) == y).mean()), 4),
                    "oof logloss": round(log_loss(blended, y), 4)})
    others = ",".join((r.workdir / "train").as_posix() for r in runs[1:])
    return {"images": len(common), "rows": singles,
            "command": f"pipeline predict -w {runs[0].workdir} -S predict.runs=[{others}] -S predict.weights=oof"}
