"""The CLI end to end on the built-in example (slow: about half a minute on 2 CPU cores)."""

import json

import pytest
from typer.testing import CliRunner

from pipeline.cli import app


@pytest.mark.slow
def test_train_cli_on_the_example(tmp_path):
    runner = CliRunner()
    wd = str(tmp_path / "art")
    for stage in ("preprocess", "dedup", "augment"):
        assert runner.invoke(app, [stage, "-w", wd]).exit_code == 0
    result = runner.invoke(app, ["train", "-w", wd, "--fold", "1", "-S", "train.epochs=4"])
    assert result.exit_code == 0, result.output
    cv = json.loads((tmp_path / "art" / "train" / "cv.json").read_text())
    assert list(cv["per_fold"]) == ["1"] and cv["mean"] > 0.3, cv  # chance is 0.1
    bad = runner.invoke(app, ["train", "-w", wd, "-S", "train.warmup=cubic"])
    assert bad.exit_code == 2 and "train.warmup" in bad.output
