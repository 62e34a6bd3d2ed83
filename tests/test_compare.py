"""`pipeline compare`: runs side by side from their artifacts, and the OOF blend."""

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from pipeline.cli import app


def fake_run(workdir, model, lr, accuracy, seed=0):
    """A finished workdir as compare reads it: cv.json, locks, classes and an OOF table whose argmax is
    right on `accuracy` of 200 images."""
    rng = np.random.default_rng(seed)
    (workdir / "train").mkdir(parents=True)
    (workdir / "preprocess" / "train").mkdir(parents=True)
    (workdir / "preprocess" / "train" / "classes.json").write_text(json.dumps(["a", "b"]))
    labels = np.arange(200) % 2
    right = rng.random(200) < accuracy
    p_true = np.where(right, rng.uniform(0.55, 0.95, 200), rng.uniform(0.05, 0.45, 200))
    p_a = np.where(labels == 0, p_true, 1 - p_true)
    pd.DataFrame({"id": [f"i{k}" for k in range(200)], "label": np.array(["a", "b"])[labels], "fold": labels % 2,
                  "p_a": p_a, "p_b": 1 - p_a}).to_csv(workdir / "train" / "oof.csv", index=False)
    cv = {"metric": "accuracy", "mean": accuracy, "std": 0.01, "per_fold": {"0": accuracy, "1": accuracy}, "missing_folds": [],
          "oof_accuracy": accuracy, "oof_macro_f1": accuracy, "oof_log_loss": 0.3}
    (workdir / "train" / "cv.json").write_text(json.dumps(cv))
    lock = {"params": {"seed": 42, "train": {"model": model, "lr": lr, "epochs": 10}}, "seconds": 125.0}
    (workdir / "train" / "lock.json").write_text(json.dumps(lock))
    (workdir / "preprocess" / "lock.json").write_text(json.dumps({"params": {"data": {"root": str(workdir)}}, "seconds": 5.0}))


def test_compare_prints_one_table_with_the_params_that_differ(tmp_path):
    fake_run(tmp_path / "r1", "resnet10t", 0.003, 0.9)
    fake_run(tmp_path / "r2", "convnext_nano", 0.001, 0.8, seed=1)
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "r1"), str(tmp_path / "r2")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = lines[0].split()
    assert header[:4] == ["run", "model", "cv", "accuracy"] and "train.lr" in header and "train.model" not in header
    assert "train.epochs" not in header and "data.root" not in header and "seed" not in header  # equal, or not a recipe
    assert "0.9000 ± 0.0100" in lines[1] and "resnet10t" in lines[1] and "2:10" in lines[1]
    assert "0.8000 ± 0.0100" in lines[2] and "0.001" in lines[2]


def test_compare_blend_says_what_the_blend_scores(tmp_path):
    fake_run(tmp_path / "r1", "resnet10t", 0.003, 0.9)
    fake_run(tmp_path / "r2", "convnext_nano", 0.001, 0.8, seed=1)
    result = CliRunner().invoke(app, ["compare", "--blend", str(tmp_path / "r1"), str(tmp_path / "r2")])
    assert result.exit_code == 0, result.output
    assert "blend on the 200 out-of-fold images" in result.output
    blend_line = next(line for line in result.output.splitlines() if line.split()[:2] == ["blend", "1.0"])
    weight, accuracy, logloss = map(float, blend_line.split()[1:4])
    blend_table = result.output.split("blend on the")[1].splitlines()
    singles = [float(line.split()[3]) for line in blend_table if line.startswith(str(tmp_path))]
    assert len(singles) == 2
    assert weight == 1.0 and 0 < accuracy <= 1 and 0 < logloss <= min(singles)  # the fit minimises OOF log loss
    assert f"predict.runs=[{tmp_path / 'r2' / 'train'}] -S predict.weights=oof" in result.output


def test_compare_names_a_workdir_that_did_not_train(tmp_path):
    result = CliRunner().invoke(app, ["compare", str(tmp_path)])
    assert result.exit_code == 2 and "no train/cv.json" in result.output


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("pipeline ")
