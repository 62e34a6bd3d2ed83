import numpy as np
import pandas as pd

from pipeline.params import PseudoParams
from pipeline.runner import BY_NAME, run_stage
from pipeline.cache import read_index, read_pseudo_rows
from stages.pseudo import select
from tests._predict_fixtures import tiny_params, trained  # noqa: F401

# class 0 is frequent and confident, class 1 rare and less so
PROBS = np.array([[0.99, 0.01]] * 6 + [[0.95, 0.05]] * 2 + [[0.2, 0.8], [0.3, 0.7]])


def params(**kw):
    base = {"threshold": None, "top_fraction": None, "soft": True, "weight": 0.5}
    return PseudoParams(**{**base, **kw})


def test_threshold_only():
    assert select(PROBS, params(threshold=0.9)).tolist() == [True] * 8 + [False] * 2


def test_top_fraction_keeps_rare_classes():
    keep = select(PROBS, params(top_fraction=0.5))
    assert keep[:4].all() and not keep[4:8].any()  # top 4 of 8 class-0 rows (ties: first ones)
    assert keep.tolist()[8:] == [True, False]  # ceil(0.5 * 2) = 1 row of the rare class


def test_both_criteria_must_pass():
    keep = select(PROBS, params(threshold=0.75, top_fraction=0.5))
    assert keep.sum() == 5 and keep[8]


def test_pseudo_stage_on_the_example(trained, tmp_path):  # noqa: F811
    p = tiny_params(trained, "pseudo.threshold=null", "pseudo.top_fraction=0.3", "pseudo.soft=false")
    run_stage(BY_NAME["predict"], p, trained)
    run_stage(BY_NAME["pseudo"], p, trained)
    table = pd.read_csv(trained / "pseudo" / "pseudo.csv", dtype={"id": str, "label": str})
    index = read_index(trained / "preprocess")
    test = index[index.split == "test"].set_index("id")
    assert len(table) > 0 and set(table.id) <= set(test.index)
    assert (trained / "pseudo" / "pseudo.png").stat().st_size > 1000
    assert (test.loc[table.id, "row"].to_numpy() == table.row.to_numpy()).all()  # rows of test/images.npy
    targets = table[[c for c in table.columns if c.startswith("p_")]].to_numpy()
    assert set(np.unique(targets)) <= {0.0, 1.0} and np.allclose(targets.sum(1), 1)  # hard: one-hot
    classes = pd.read_json(trained / "preprocess" / "train" / "classes.json").iloc[:, 0].astype(str).tolist()
    rows = read_pseudo_rows(trained / "pseudo", classes)
    assert rows.targets.shape == (len(table), len(classes)) and np.allclose(rows.weights, 0.5)
