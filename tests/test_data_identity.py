"""Train depends on the training data only, code is a dependency, and a finished workdir predicts a new
test folder: on a copy of the tiny trained example workdir (2 folds x 1 epoch)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline import codehash
from pipeline.cache import read_clusters
from pipeline.cli import app
from pipeline.runner import run_all, statuses
from stages import dedup
from tests._predict_fixtures import PARAMS, TINY, tiny_params, trained  # noqa: F401


def states(workdir: Path, *overrides: str) -> dict[str, tuple[str, str]]:
    return {name: (state, why) for name, state, why in statuses(tiny_params(workdir, *overrides), workdir)}


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below folder with its size and mtime: what 'read-only' must leave as it was."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(trained, tmp_path_factory) -> Path:  # noqa: F811
    """A copy of the trained example workdir with every stage done (predict included)."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    shutil.copytree(trained, workdir, symlinks=True)
    run_all(tiny_params(workdir), workdir)
    return workdir


def copy_of(finished: Path, dest: Path) -> Path:
    shutil.copytree(finished, dest, symlinks=True)  # copy2 keeps mtimes: the data is the same data
    return dest


def test_a_moved_workdir_and_data_folder_and_execution_settings_stay_fresh(finished, tmp_path):
    moved = copy_of(finished, tmp_path / "elsewhere" / "run")  # the example data lives inside it
    how = ["train.workers=3", "train.device=cpu", "train.eval_batch_size=7", "train.dist_timeout=5",
           "predict.batch_size=3", "predict.device=cpu", "preprocess.workers=1"]
    rows = states(moved, *how)
    assert {name: state for name, (state, _) in rows.items()} == dict.fromkeys(rows, "fresh"), rows


@pytest.mark.slow
def test_a_changed_test_set_reruns_the_test_side_and_predict_never_train(finished, tmp_path):
    workdir = copy_of(finished, tmp_path / "run")
    root = workdir / "example" / "digits"
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    for name in sample.id[:40]:  # 40 test images gone, and the sample edited to match
        (root / "test" / f"{name}.png").unlink()
    sample.iloc[40:].to_csv(root / "sample_submission.csv", index=False)
    rows = states(workdir)
    assert rows["preprocess"] == ("stale", "test data changed (train side fresh)")
    assert rows["dedup"][0] == "stale" and rows["predict"][0] == "stale"
    assert rows["augment"][0] == rows["train"][0] == "fresh"

    cache = workdir / "preprocess" / "train" / "images.npy"
    inode, train_lock = cache.stat().st_ino, (workdir / "train" / "lock.json").read_text()
    ran = run_all(tiny_params(workdir), workdir)
    assert ran == ["preprocess", "dedup", "predict"]
    assert cache.stat().st_ino == inode  # the train cache was carried over (a hard link), not decoded again
    assert (workdir / "train" / "lock.json").read_text() == train_lock
    submission = pd.read_csv(workdir / "predict" / "submission.csv", dtype=str)
    assert submission.id.tolist() == sample.id[40:].tolist()
    assert {state for state, _ in states(workdir).values()} == {"fresh"}


@pytest.mark.slow
def test_a_finished_workdir_predicts_a_new_folder_read_only(finished, tmp_path):
    source = finished / "example" / "digits"
    new = tmp_path / "hidden"  # a new test set only: no train/, no train.csv
    (new / "test").mkdir(parents=True)
    names = sorted(p.name for p in (source / "test").iterdir())[:25] + sorted(p.name for p in (source / "train").iterdir())[:5]
    for k, name in enumerate(names):
        folder = "test" if k < 25 else "train"
        shutil.copy(source / folder / name, new / "test" / f"new_{k:03d}.png")
    ids = [f"new_{k:03d}" for k in range(len(names))]
    pd.DataFrame({"id": ids, "label": 0}).to_csv(new / "sample_submission.csv", index=False)
    before = tree(finished)

    args = ["predict", "-p", str(PARAMS), "-w", str(finished), "--data", str(new), "--out", str(tmp_path / "out")]
    for override in TINY:
        args += ["-S", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    submission = pd.read_csv(tmp_path / "out" / "predict" / "submission.csv", dtype=str)
    assert submission.id.tolist() == ids
    assert tree(finished) == before  # the finished workdir was only read
    assert (tmp_path / "out" / "preprocess" / "train").is_symlink() and (tmp_path / "out" / "train").is_symlink()
    leaks = read_clusters(tmp_path / "out" / "dedup", ("test",))
    train_clusters = set(read_clusters(finished / "dedup", ("train",)).cluster)
    assert leaks.cluster.isin(train_clusters).sum() >= 5  # the five copies of train images are found as leaks
    again = CliRunner().invoke(app, args)  # rerunning into the same folder works too
    assert again.exit_code == 0, again.output


def test_predict_data_and_out_go_together(finished):
    result = CliRunner().invoke(app, ["predict", "-p", str(PARAMS), "-w", str(finished), "--data", "/nowhere"])
    assert result.exit_code == 2 and "--data and --out go together" in result.output


def test_code_change_makes_train_and_predict_stale_not_preprocess(finished, tmp_path, monkeypatch):
    """Edit a copy of the code: the stage that runs it and its downstream go stale, with the reason."""
    code = tmp_path / "code"
    for package in ("pipeline", "stages"):
        shutil.copytree(codehash.code_root() / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codehash, "code_root", lambda: code)
    assert {state for state, _ in states(finished).values()} == {"fresh"}  # the copy is the same code
    with open(code / "stages" / "train" / "loop.py", "a") as fh:
        fh.write("# a comment is source text too: the lock hashes the text\n")
    codehash._hashes.cache_clear()  # hashed once per process: a real edit comes with a new process
    rows = states(finished)
    assert rows["train"] == ("stale", "code changed: stages/train")
    assert rows["predict"] == ("stale", "upstream train is stale")
    assert rows["preprocess"][0] == rows["dedup"][0] == rows["augment"][0] == "fresh"
    with open(code / "pipeline" / "data.py", "a") as fh:
        fh.write("\n")
    codehash._hashes.cache_clear()
    assert states(finished)["preprocess"] == ("stale", "code changed: pipeline/data.py")


def test_train_code_is_found_from_the_import_graph():
    files = {p.relative_to(codehash.code_root()).as_posix() for p in codehash.stage_files("train")}
    assert "stages/train/loop.py" in files and "pipeline/cache.py" in files and "pipeline/distributed.py" in files
    assert not any(f.startswith(("stages/predict", "stages/dedup")) for f in files)
    assert "pipeline/__init__.py" not in files  # the version string alone reruns nothing


def test_a_test_image_never_merges_train_clusters_or_changes_a_weight():
    """Train images 0..3 in clusters [0, 0, 1, 2]; test image 4 links to clusters 1 and 2, test 5 to
    test 4 only, test 6 to nothing: 4 and 5 join cluster 2 (the stronger link), 6 is test-only."""
    train_cluster = np.array([0, 0, 1, 2])
    a, b = np.array([0, 2, 3, 4, 1]), np.array([1, 4, 4, 5, 0])
    link = np.array([1.0, 0.998, 0.999, 1.0, 1.0], np.float32)
    cluster, score, weakest, ambiguous = dedup.attach_test(train_cluster, 3, a, b, link)
    assert cluster.tolist() == [2, 2, 3] and ambiguous == 1
    assert np.isclose(score[0], 0.999) and np.isnan(score[2]) and weakest == {}
