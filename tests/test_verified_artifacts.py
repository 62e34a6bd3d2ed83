"""Verified artifacts: an output is trusted only while its recorded hashes match. A deleted or truncated
checkpoint makes train stale and is retrained (that fold only), never re-approved; predict refuses
folds of another recipe or a stale train unless told to use what is there."""

from __future__ import annotations

import os
import shutil

import pytest
from typer.testing import CliRunner

from pipeline.artifacts import read_json, write_json
from pipeline.cli import app
from pipeline.params import load_params
from pipeline.runner import BY_NAME, run_all, run_stage, stage_status, statuses
from tests.conftest import make_kaggle

runner = CliRunner()
TINY = ["preprocess.size=24", "preprocess.workers=1", "train.model=resnet10t", "train.folds=2", "train.epochs=1",
        "train.batch_size=8", "train.workers=0", "predict.batch_size=8", "predict.tta=[identity]"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (2 folds), built once; each test works on a copy."""
    root = tmp_path_factory.mktemp("verified")
    data = make_kaggle(root / "comp")
    from tests.conftest import ROOT

    overrides = [f"data.root={data}", *TINY]
    params, _ = load_params(ROOT / "params.yaml", overrides, workdir=str(root / "art"))
    run_all(params, root / "art")
    return root, overrides


@pytest.fixture
def workdir(finished, tmp_path):
    root, overrides = finished
    wd = tmp_path / "art"
    shutil.copytree(root / "art", wd)  # copy2 keeps mtimes, so the copy is as fresh as the original
    from tests.conftest import ROOT

    def params(*extra):
        return load_params(ROOT / "params.yaml", [*overrides, *extra], workdir=str(wd))[0]

    return wd, params, overrides


def cli(wd, overrides, *args):
    from tests.conftest import ROOT

    sets = [x for o in overrides for x in ("-S", o)]
    return runner.invoke(app, [*args, "-p", str(ROOT / "params.yaml"), "-w", str(wd), *sets])


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_damaged_checkpoint_is_stale_and_only_that_fold_is_retrained(workdir, damage, capsys):
    wd, params, _ = workdir
    assert [s for _, s, _ in statuses(params(), wd)] == ["fresh"] * 5
    best = wd / "train" / "fold0" / "best.pt"
    kept = (wd / "train" / "fold1" / "best.pt").read_bytes()
    if damage == "delete":
        best.unlink()
    else:
        best.write_bytes(best.read_bytes()[:100])
    state, why = stage_status(BY_NAME["train"], params(), wd)
    assert state == "stale" and "fold0/best.pt" in why, why
    ran = run_all(params(), wd)
    assert ran[0] == "train" and "predict" in ran
    out = capsys.readouterr().err
    assert "fold 0: best.pt" in out and "training it again" in out
    assert "fold 1: finished earlier" in out and "fold 0: finished earlier" not in out
    assert (wd / "train" / "fold1" / "best.pt").read_bytes() == kept  # the intact fold was kept as it was
    assert read_json(wd / "train" / "lock.json")["folds"] == [0, 1]
    assert [s for _, s, _ in statuses(params(), wd)] == ["fresh"] * 5


def test_a_touched_but_unchanged_output_stays_fresh(workdir):
    wd, params, _ = workdir
    clusters = wd / "dedup" / "train" / "clusters.csv"
    os.utime(clusters, ns=(0, 12345))  # a copy or a touch moves the mtime; the content decides
    assert stage_status(BY_NAME["dedup"], params(), wd)[0] == "fresh"


def test_a_stage_refuses_a_damaged_upstream_output(workdir):
    wd, _, overrides = workdir
    (wd / "preprocess" / "train" / "index.csv").write_text("id,split,label,row,path\n")
    result = cli(wd, overrides, "dedup")
    assert result.exit_code == 2
    assert "preprocess, whose output train/index.csv modified since the run" in result.output


def test_predict_refuses_a_fold_of_another_recipe_naming_it(workdir):
    wd, _, overrides = workdir
    meta = read_json(wd / "train" / "fold1" / "fold.json")
    write_json(wd / "train" / "fold1" / "fold.json", {**meta, "key": "an-older-recipe"})
    result = cli(wd, overrides, "predict")
    assert result.exit_code == 2
    assert "fold1 (trained with other params or inputs)" in result.output and "--use-existing" in result.output
    assert "fold0" not in result.output.split("--use-existing")[0].replace("fold1", "")
    used = cli(wd, overrides, "predict", "--use-existing")
    assert used.exit_code == 0, used.output


def test_predict_refuses_a_stale_train(workdir):
    wd, _, overrides = workdir
    result = cli(wd, [*overrides, "train.epochs=2"], "predict")
    assert result.exit_code == 2
    assert "train is stale (params changed: train.epochs (1 -> 2))" in result.output


def test_predict_refuses_a_deleted_checkpoint(workdir):
    wd, _, overrides = workdir
    (wd / "train" / "fold0" / "best.pt").unlink()
    result = cli(wd, overrides, "predict")
    assert result.exit_code == 2
    assert "best.pt deleted" in result.output
