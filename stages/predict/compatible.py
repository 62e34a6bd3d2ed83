"""predict.runs: an extra run is only ensembled on this workdir's cache when it was trained on pixels
made the same way. A model trained at 48 px and fed this workdir's 32 px cache still predicts, just
badly, so the difference is refused by name instead of silently averaged in.

What is compared is the train side's preprocess report beside each run's train folder
(run/../preprocess/train/report.json):
the cache size, its channels and the pixel recipe that preprocess decided (crop, median filter). Input
normalisation is not a hazard here: each member normalises with the mean/std saved in its own checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.cache import read_cache_report
from pipeline.errors import CheckError

COMPARED = ("size", "channels", "crop", "median_ksize")  # report.json keys that change the pixels a model sees


def cache_recipe(preprocess: Path) -> dict:
    report = read_cache_report(preprocess)
    return {key: report[key] for key in COMPARED if key in report}


def check_runs(this_preprocess: Path, runs: list[Path]) -> None:
    """Refuse the first extra run whose cache differs from this workdir's, naming each difference."""
    ours = cache_recipe(this_preprocess)
    for run in runs:
        report = run.parent / "preprocess" / "train" / "report.json"
        if not report.is_file():
            raise CheckError(f"predict.runs: {run} has no {report} beside it, so its cache size and channels cannot be "
                             "checked against this workdir's; give the train folder of a complete workdir")
        theirs = cache_recipe(run.parent / "preprocess")
        differences = [f"{key} {theirs[key]} (this workdir: {ours[key]})" for key in COMPARED
                       if key in ours and key in theirs and theirs[key] != ours[key]]
        if differences:
            raise CheckError(f"predict.runs: {run} was trained on a different cache: {'; '.join(differences)}; "
                             "rerun it with this workdir's preprocess params, or leave it out of predict.runs")
