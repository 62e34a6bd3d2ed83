"""Predict a new test set with a finished workdir: the Kaggle code-competition step.

`pipeline predict -w TRAINED --data NEW_FOLDER --out DIR` builds DIR as a predict-only workdir:
  DIR/train, DIR/augment        links to the finished workdir's folders (the last pseudo round's train)
  DIR/preprocess, DIR/dedup     their train side linked from the finished workdir, their test side
                                built from NEW_FOLDER's test/ and sample_submission.csv
  DIR/predict                   the fold ensemble x TTA on the new test set: submission.csv
Nothing in TRAINED is written (it may sit on a read-only dataset mount), NEW_FOLDER needs no train/
or train.csv, and nothing is downloaded. The recipe is the finished workdir's: every params section
recorded in its locks wins over the params file, except the keys that only say how to run (devices,
batch sizes, workers: pipeline.runner.HOW_NOT_WHAT) and the predict section, which come from the
params file and -S.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.artifacts import read_json
from pipeline.errors import CheckError
from pipeline.params import Params, validate
from pipeline.runner import BY_NAME, LOCK, round_prefix, run_stage

RECIPE_STAGES = ("preprocess", "dedup", "augment", "train")  # their recorded params are the trained recipe
MAX_ROUNDS = 10


def final_train(trained: Path) -> str:
    """The train folder whose models predict: the last pseudo-label round that finished, else train."""
    for k in range(MAX_ROUNDS, 0, -1):
        if (trained / f"{round_prefix(k)}train" / LOCK).is_file():
            return f"{round_prefix(k)}train"
    return "train"


def recipe_params(base: Params, trained: Path, data: Path, out: Path) -> Params:
    """The finished workdir's recorded params over `base`, with data.root = data and workdir = out."""
    raw = base.model_dump(mode="json")
    for name in RECIPE_STAGES:
        lock = trained / (final_train(trained) if name == "train" else name) / LOCK
        if not lock.is_file():
            raise CheckError(f"{trained} has no finished {name} ({lock} is missing): train there first (`pipeline run`)")
        for section, value in read_json(lock)["params"].items():
            if isinstance(value, dict):
                raw[section].update(value)  # keys left out of the lock (how to run) keep base's values
            else:
                raw[section] = value
    raw["data"]["root"], raw["workdir"], raw["rounds"] = str(data), str(out), 0
    return validate(raw)


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() and link.resolve() == target.resolve():
        return
    if link.exists() or link.is_symlink():
        raise CheckError(f"{link} already exists and is not a link to {target}: choose an empty --out folder")
    os.symlink(target.resolve(), link, target_is_directory=True)


def predict_new_test(base: Params, trained: Path, data: Path, out: Path) -> dict:
    """Preprocess and dedup the test side of `data`, then predict it with `trained`'s models, in `out`."""
    trained, data, out = Path(trained).expanduser(), Path(data).expanduser(), Path(out).expanduser()
    if not (data / "test").is_dir():
        raise CheckError(f"{data}: no test/ folder; --data is a folder holding test/ (and sample_submission.csv)")
    if out.resolve() == trained.resolve() or trained.resolve() in out.resolve().parents:
        raise CheckError(f"--out {out} must be outside the finished workdir {trained}, which is only read")
    params = recipe_params(base, trained, data, out)
    out.mkdir(parents=True, exist_ok=True)
    _link(trained / final_train(trained), out / "train")
    _link(trained / "augment", out / "augment")
    for name in ("preprocess", "dedup"):
        run_stage(BY_NAME[name], params, out, frozen=trained)
    return run_stage(BY_NAME["predict"], params, out)
