import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from tests._predict_fixtures import PARAMS, TINY


def invoke(command, workdir, *overrides):
    args = [command, "--params", str(PARAMS), "-w", str(workdir)]
    for o in [*TINY, "pseudo.threshold=null", "pseudo.top_fraction=0.3", *overrides]:
        args += ["-S", o]
    return CliRunner().invoke(app, args)


@pytest.mark.slow
def test_one_pseudo_round_end_to_end(tmp_path):
    result = invoke("run", tmp_path, "rounds=1")
    assert result.exit_code == 0, result.output
    for folder in ("train", "predict", "pseudo", "round1/train", "round1/predict"):
        assert (tmp_path / folder / "lock.json").is_file(), folder
    assert "round1/predict/submission.csv" in result.output.replace("\n", "")
    rounds = json.loads((tmp_path / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[1]["pseudo_rows"] > 0 and 0.0 <= rounds[1]["agreement_with_previous"] <= 1.0
    # round 1 really trained on them: same labelled images, seed and folds as round 0, other weights.
    # Compared on the out-of-fold probabilities, not the CV: 1 epoch on the tiny example is near chance,
    # and two near-chance models can score the very same accuracy.
    oof = [pd.read_csv(tmp_path / folder / "oof.csv").sort_values("id") for folder in ("train", "round1/train")]
    assert list(oof[0]["id"]) == list(oof[1]["id"])
    probabilities = [o.filter(like="p_").to_numpy() for o in oof]
    assert abs(probabilities[0] - probabilities[1]).max() > 1e-4
    # round 1 trained with round 0's pseudo rows as its `pseudo` input
    lock = json.loads((tmp_path / "round1" / "train" / "lock.json").read_text())
    assert set(lock["deps"]) == {"preprocess", "dedup", "augment", "pseudo"}

    status = invoke("status", tmp_path, "rounds=1").output
    assert status.count("fresh") == 8 and "stale" not in status and "missing" not in status
    # Asking for a second round adds stages and leaves the finished ones fresh.
    lines = dict(line.split(None, 1) for line in invoke("status", tmp_path, "rounds=2").output.splitlines() if line.strip())
    assert lines["round1/predict"].startswith("fresh")
    assert lines["round1/pseudo"].startswith("missing") and lines["round2/train"].startswith("missing")
    # A pseudo param change makes the pseudo stages and everything after them stale, not round 0.
    lines = dict(line.split(None, 1) for line in invoke("status", tmp_path, "rounds=1", "pseudo.weight=0.2").output.splitlines() if line.strip())
    assert lines["predict"].startswith("fresh") and lines["pseudo"].startswith("stale")
    assert lines["round1/train"].startswith("stale")
