"""The artifact store and DVC semantics, on the fast stages and a tiny generated competition."""

import json

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.params import load_params
from pipeline.runner import BY_NAME, run_stage, stage_key, stage_status, statuses

runner = CliRunner()


@pytest.fixture
def tiny(params_file, kaggle_dir, tmp_path):
    def load(*extra):
        overrides = [f"data.root={kaggle_dir}", "preprocess.size=16", "preprocess.workers=1", *extra]
        params, _ = load_params(params_file, overrides, workdir=str(tmp_path / "art"))
        return params

    return load


def test_a_stage_is_missing_then_fresh_then_stale_with_the_reason(tiny, tmp_path):
    params = tiny()
    wd = tmp_path / "art"
    stage = BY_NAME["preprocess"]
    assert stage_status(stage, params, wd)[0] == "missing"
    run_stage(stage, params, wd)
    assert stage_status(stage, params, wd) == ("fresh", "params, inputs and outputs unchanged")
    lock = json.loads((wd / "preprocess" / "lock.json").read_text())
    assert set(lock) >= {"params", "deps", "outs", "outs_hash", "version", "started", "finished"}
    assert (wd / "preprocess" / "params.yaml").is_file()  # resolved params beside the outputs
    state, why = stage_status(stage, tiny("preprocess.median_ksize=5"), wd)
    assert state == "stale" and "preprocess.median_ksize ('auto' -> 5)" in why


def test_changed_inputs_and_touched_outputs_make_a_stage_stale(tiny, kaggle_dir, tmp_path):
    params = tiny()
    wd = tmp_path / "art"
    for name in ("preprocess", "dedup"):
        run_stage(BY_NAME[name], params, wd)
    clusters = wd / "dedup" / "train" / "clusters.csv"
    clusters.touch()  # same bytes, new mtime: the content decides, so everything stays fresh
    assert all(state == "fresh" for _, state, _ in statuses(params, wd)[:2])
    original = clusters.read_text()
    clusters.write_text(original[:-2] + ("0" if original[-2] != "0" else "1") + "\n")  # same size, other bytes
    assert stage_status(BY_NAME["dedup"], params, wd) == ("stale", "output train/clusters.csv modified since the run")
    clusters.write_text("tampered\n")
    assert stage_status(BY_NAME["dedup"], params, wd) == ("stale", "output train/clusters.csv modified since the run")
    (kaggle_dir / "train" / "img000.png").write_bytes((kaggle_dir / "train" / "img001.png").read_bytes())
    rows = {name: (state, why) for name, state, why in statuses(params, wd)}
    assert rows["preprocess"] == ("stale", "train data changed")
    assert rows["dedup"] == ("stale", "upstream preprocess is stale")


def test_a_stage_without_its_input_says_what_to_run(tiny, params_file, kaggle_dir, tmp_path):
    result = runner.invoke(app, ["dedup", "-p", str(params_file), "-w", str(tmp_path / "art"), "-S", f"data.root={kaggle_dir}"])
    assert result.exit_code == 1
    assert "run `pipeline preprocess` first" in result.output


def test_a_failed_stage_keeps_the_finished_output(tiny, kaggle_dir, tmp_path):
    params = tiny()
    wd = tmp_path / "art"
    run_stage(BY_NAME["preprocess"], params, wd)
    before = (wd / "preprocess" / "lock.json").read_text()
    (kaggle_dir / "train.csv").write_text("nothing,useful\n1,2\n")
    with pytest.raises(Exception):
        run_stage(BY_NAME["preprocess"], tiny("preprocess.median_ksize=0"), wd)
    assert (wd / "preprocess" / "lock.json").read_text() == before


def test_bad_data_is_one_line_and_exit_2(params_file, tmp_path):
    result = runner.invoke(app, ["preprocess", "-p", str(params_file), "-w", str(tmp_path), "-S", f"data.root={tmp_path / 'none'}"])
    assert result.exit_code == 2
    assert "competition folder not found" in result.output


def test_pseudo_is_not_pretending(params_file, tmp_path):
    result = runner.invoke(app, ["pseudo", "-p", str(params_file), "-w", str(tmp_path)])
    assert result.exit_code != 0


def test_turning_full_fit_on_or_off_keeps_the_finished_folds_key():
    """train.full_fit adds a model after the folds: the folds' key (fold.json) ignores it, so `pipeline run
    -S train.full_fit=true` after a finished run trains the full model alone; any other train knob retrains."""
    def key(*overrides):
        params = load_params("params.yaml", ["data.root=/nonexistent", *overrides])[0]
        return stage_key({"train": params.train.model_dump(mode="json")}, {"data": "x"}, {"stages/train": "y"})

    assert key("train.full_fit=true") == key("train.full_fit=false")
    assert key("train.lr=0.001") != key()
