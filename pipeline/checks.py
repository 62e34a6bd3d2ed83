"""Every check that can fail, before any work: `check(params, data)` runs when `pipeline run` or a stage
command starts, so a wrong model name, an unreadable weights file, a fold out of range, a reversed
augment range, a missing GPU or a sample that does not fit the training labels is one line and exit 2
(CheckError) instead of a traceback after hours of preprocess and training.

What only a stage understands (can timm build this model? does this weights file fit it? which
submission format does this sample mean?) lives in that stage's `check(params, data)`, which the
runner hands in (`stage_checks`); what several stages share is here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from pipeline.data import Dataset
from pipeline.errors import CheckError
from pipeline.params import Params


def check(params: Params, data: Dataset | None, stage_checks: Iterable[Callable] = ()) -> None:
    """Raise CheckError (or ParamsError / DataError) naming the key, for the first check that fails."""
    check_devices(params)
    check_folds(params, data)
    check_paths(params)
    for stage_check in stage_checks:
        stage_check(params, data)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_devices(params: Params) -> None:
    for key, device in (("train.device", params.train.device), ("predict.device", params.predict.device)):
        if device == "cuda" and not cuda_available():
            raise CheckError(f"{key} = cuda but no CUDA device is available here: set {key} to auto or cpu")


def check_folds(params: Params, data: Dataset | None) -> None:
    p = params.train
    if p.fold is not None and p.fold >= p.folds:
        raise CheckError(f"train.fold = {p.fold}: expected 0..{p.folds - 1} (train.folds = {p.folds})")
    if data is None:
        return
    labels = data.manifest.label[data.manifest.split == "train"]
    if len(labels) < p.folds:
        raise CheckError(f"train.folds = {p.folds}: only {len(labels)} training images; every fold needs at least one")


def check_paths(params: Params) -> None:
    """Folders and files that params name, read by later stages, must exist now."""
    for run in params.predict.runs:
        folder = Path(run).expanduser()
        if not folder.is_dir():
            raise CheckError(f"predict.runs: {folder} not found (expected the train/ folder of another workdir)")
        if not any(folder.glob("fold*/best.pt")):
            raise CheckError(f"predict.runs: {folder} holds no fold<k>/best.pt (is it a finished train/ folder?)")
    teacher = params.distill.teacher
    if teacher:
        needed = [Path(teacher).expanduser() / "predict" / name for name in ("oof.csv", "probs.csv")]
        missing = [str(p) for p in needed if not p.is_file()]
        if missing:
            raise CheckError(f"distill.teacher = {teacher}: {', '.join(missing)} not found (the teacher workdir must have run predict)")
    p = params.train
    if p.curriculum and p.curriculum_score == "oof" and (not p.curriculum_oof or not Path(p.curriculum_oof).expanduser().is_file()):
        raise CheckError(f"train.curriculum_oof = {p.curriculum_oof!r}: curriculum_score oof needs an existing oof.csv")


def dataset_from_cache(preprocess_dir: Path) -> Dataset | None:
    """The dataset as preprocess cached it, for the checks of a stage run on its own (None: not cached)."""
    from pipeline.cache import read_classes, read_index, read_sample

    try:
        index, classes, sample = read_index(preprocess_dir), read_classes(preprocess_dir), read_sample(preprocess_dir)
    except (OSError, ValueError):  # an incomplete cache: the stage's own input check names what is missing
        return None
    return Dataset(manifest=index, classes=[str(c) for c in classes], sample=sample, layout="cache")
