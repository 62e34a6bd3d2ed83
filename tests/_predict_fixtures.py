"""Shared by the predict/pseudo tests: a tiny trained example workdir (2 folds x 1 epoch, resnet10t)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.params import load_params
from pipeline.runner import BY_NAME, run_stage

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
TINY = ["train.folds=2", "train.fold=null", "train.epochs=1", "predict.tta=[identity,hflip]", "predict.tta_merge=mean_prob",
        "predict.tta_oof_images=200"]


def tiny_params(workdir: Path, *overrides: str):
    params, _ = load_params(PARAMS, [*TINY, *overrides], str(workdir))
    return params


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A workdir with preprocess, dedup, augment and train done on the digits example."""
    workdir = tmp_path_factory.mktemp("trained")
    params = tiny_params(workdir)
    for name in ("preprocess", "dedup", "augment", "train"):
        run_stage(BY_NAME[name], params, workdir)
    return workdir


def record_edit(stage_dir: Path) -> None:
    """A test's hand edits of a stage's outputs, recorded in that stage's lock as if the stage had written
    them (outputs are trusted only while their recorded size, mtime and hash match; outs_hash and the side
    hashes are kept, so the stages downstream stay fresh)."""
    from pipeline.artifacts import file_records, read_json, write_json

    lock = read_json(Path(stage_dir) / "lock.json")
    lock["outs"] = file_records(stage_dir, skip=("lock.json",))
    write_json(Path(stage_dir) / "lock.json", lock)
