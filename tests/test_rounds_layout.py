import json

import pandas as pd

from pipeline.rounds import final_predict_dir, round_report
from pipeline.runner import stages_for
from tests._predict_fixtures import tiny_params


def test_stages_for_maps_rounds_to_folders(tmp_path):
    assert [s.name for s in stages_for(tiny_params(tmp_path, "rounds=0"))] == ["preprocess", "dedup", "augment", "train", "predict"]
    stages = {s.name: s for s in stages_for(tiny_params(tmp_path, "rounds=2"))}
    assert list(stages)[5:] == ["pseudo", "round1/train", "round1/predict", "round1/pseudo", "round2/train", "round2/predict"]
    assert stages["round1/train"].deps == ("preprocess", "dedup", "augment", "pseudo") and stages["round1/train"].kind == "train"
    assert stages["round2/train"].deps[-1] == "round1/pseudo"
    assert stages["round1/pseudo"].deps[-1] == "round1/predict" and stages["round1/pseudo"].kind == "pseudo"
    assert stages["round2/predict"].deps[-1] == "round2/train" and stages["round2/train"].per_fold
    assert final_predict_dir(tmp_path, 2) == tmp_path / "round2" / "predict"


def _round(folder, cv, labels, pseudo_rows=None):
    (folder / "train").mkdir(parents=True)
    (folder / "predict").mkdir()
    (folder / "train" / "cv.json").write_text(json.dumps({"metric": "accuracy", "mean": cv, "std": 0.01}))
    probs = pd.DataFrame({"id": ["a", "b", "c", "d"], "p_x": [1.0 if v == "x" else 0.0 for v in labels]})
    probs["p_y"] = 1 - probs.p_x
    probs.to_csv(folder / "predict" / "probs.csv", index=False)


def test_round_report(tmp_path):
    _round(tmp_path, 0.8, "xxyy")
    (tmp_path / "pseudo").mkdir()
    (tmp_path / "pseudo" / "summary.json").write_text(json.dumps({"pseudo rows": 3}))
    _round(tmp_path / "round1", 0.85, "xyyy")
    rows = round_report(tmp_path, 1)
    assert rows == [
        {"round": 0, "cv": 0.8, "cv_std": 0.01, "metric": "accuracy"},
        {"round": 1, "cv": 0.85, "cv_std": 0.01, "metric": "accuracy", "pseudo_rows": 3, "agreement_with_previous": 0.75},
    ]
    assert json.loads((tmp_path / "rounds.json").read_text()) == rows
