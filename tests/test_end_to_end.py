"""`pipeline run` end to end, through the real CLI: the built-in example and a generated competition."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()
FAST = ["-S", "train.epochs=4"]


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_run_on_the_example_writes_a_valid_submission_and_then_skips_everything(params_file, tmp_path):
    wd = tmp_path / "art"
    first = invoke("run", "-p", params_file, "-w", wd, *FAST)
    assert "example overrides" in first.output  # never shrunk silently
    assert "predicting with the" not in first.output  # the example trains every fold it declares: none missing
    sample = pd.read_csv(wd / "example" / "digits" / "sample_submission.csv", dtype=str)
    submission = pd.read_csv(wd / "predict" / "submission.csv", dtype=str)
    assert list(submission.columns) == list(sample.columns)
    assert submission.id.tolist() == sample.id.tolist()
    assert set(submission.label) <= {str(d) for d in range(10)}
    solution = json.loads((wd / "example" / "digits" / "SOLUTION.json").read_text())
    accuracy = (submission.label.astype(int) == submission.id.map(solution)).mean()
    assert accuracy > 0.5, accuracy  # a real model, not a constant answer

    second = invoke("run", "-p", params_file, "-w", wd, *FAST)
    assert "ran nothing" in second.output
    # Nothing stale, so nothing checked: the stages' code (torch, timm) is never imported (8.7 s -> 2.7 s).
    script = ("import sys\nfrom pipeline.cli import app\ntry:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
              "print('torch imported' if 'torch' in sys.modules else 'no torch')")
    argv = ["run", "-p", str(params_file), "-w", str(wd), *FAST]
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ran nothing" in done.stdout and done.stdout.strip().endswith("no torch"), done.stdout + done.stderr
    status = invoke("status", "-p", params_file, "-w", wd, *FAST)
    assert status.output.count("fresh") == 5

    third = invoke("run", "-p", params_file, "-w", wd, "-S", "train.epochs=1")
    assert "ran train, predict" in third.output


@pytest.mark.slow
def test_run_on_a_generated_competition_keeps_its_label_vocabulary(params_file, kaggle_dir, tmp_path):
    wd = tmp_path / "art"
    invoke("run", "-p", params_file, "-w", wd, "-S", f"data.root={kaggle_dir}", "-S", "preprocess.size=24",
           "-S", "train.model=resnet10t", "-S", "train.folds=2", "-S", "train.epochs=1", "-S", "train.batch_size=8",
           "-S", "train.workers=0", "-S", "predict.batch_size=8")
    submission = pd.read_csv(wd / "predict" / "submission.csv", dtype=str)
    assert list(submission.columns) == ["image_id", "class"]
    assert set(submission["class"]) <= {"cat", "dog"}
    assert submission.image_id.tolist() == [f"t{i:03d}" for i in range(6)]
