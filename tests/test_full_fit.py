"""train.full_fit: one more model on every image for the folds' median best epoch count; predict adds it
to the ensemble but never measures TTA (or run weights) with it, since it has no out-of-fold rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

import stages.predict as predict_stage
from pipeline.params import load_params
from pipeline.runner import StagePaths
from stages.predict import ensemble
from pipeline.cache import IMAGES, read_classes, read_clusters, read_index
from stages.train import full_fit
from tests.cache_files import save_cache, save_clusters
from tests.test_train_fold import TINY, make_inputs, run

FULL = ["train.folds=2", "train.fold=null", "train.epochs=2", "train.full_fit=true"]


def add_test_split(inputs: dict, n: int = 6) -> None:
    """Give the tiny cache a test side (copies of train images) and what predict reads besides."""
    pre, dedup = inputs["preprocess"], inputs["dedup"]
    train = np.load(pre / "train" / IMAGES)
    ids = [f"t{i}" for i in range(n)]
    index = pd.concat([read_index(pre, ("train",)), pd.DataFrame({"id": ids, "split": "test", "label": "", "row": range(n), "path": ""})])
    save_cache(pre, train, train[:n], index, read_classes(pre))
    pd.DataFrame({"id": ids, "label": "0"}).to_csv(pre / "test" / "sample_submission.csv", index=False)
    clusters = pd.concat([read_clusters(dedup, ("train",)),
                          pd.DataFrame({"id": ids, "split": "test", "cluster": [f"c{i}" for i in ids], "is_representative": True, "weight": 1.0})])
    save_clusters(dedup, clusters)
    for side in ("", "train", "test"):
        (dedup / side / "report.json").write_text(json.dumps({"train_test_leaks": []}))
    (pre / "train" / "report.json").write_text(json.dumps({"size": list(train.shape[1:3]), "channels": int(train.shape[3]), "crop": False,
                                                           "median_ksize": 0}))


def test_full_fit_trains_on_every_image_for_the_median_best_epoch(tmp_path, monkeypatch):
    out = tmp_path / "train"
    summary, inputs = run(tmp_path / "data", out, FULL)
    record = json.loads((out / "full" / "full.json").read_text())
    best = full_fit.best_epochs(out, [0, 1], "accuracy")
    assert record["epochs"] == int(np.ceil(np.median(list(best.values())))) and "every training image" in summary["full fit"]
    history = pd.read_csv(out / "full" / "metrics.csv")
    assert len(history) == record["epochs"]  # trained for exactly that many epochs
    ckpt = torch.load(out / "full" / "best.pt", weights_only=False)
    assert ckpt["epoch"] == record["epochs"] - 1 and "optimizer" not in ckpt  # the last epoch, weights only
    assert not (out / "full" / "oof.csv").exists() and sorted(pd.read_csv(out / "oof.csv").fold.unique()) == [0, 1]

    # predict: the full model joins the ensemble, but TTA is measured with the fold models alone.
    add_test_split(inputs)
    members, _ = ensemble.find_members([out])
    assert [m.fold for m in members] == [0, 1, ensemble.FULL_FIT]
    loaded, phase = [], {"now": "oof"}
    real_model, real_test = predict_stage.Context.model, predict_stage.predict_test
    monkeypatch.setattr(predict_stage.Context, "model", lambda self, m: loaded.append((phase["now"], m.fold)) or real_model(self, m))

    def test_phase(ctx, views):
        phase["now"] = "test"
        return real_test(ctx, views)

    monkeypatch.setattr(predict_stage, "predict_test", test_phase)
    params, _ = load_params("params.yaml", TINY + FULL + ["data.root=/nonexistent", "predict.tta=auto"])
    (tmp_path / "predict").mkdir()
    result = predict_stage.run(params, StagePaths(out=tmp_path / "predict", inputs={**inputs, "train": out}))
    assert str(result["members"]).startswith("3 ")  # 2 folds + the full model
    assert sorted(f for p, f in loaded if p == "oof") == [0, 1]
    assert sorted(f for p, f in loaded if p == "test") == [ensemble.FULL_FIT, 0, 1]

    # Turned off, the full model goes (the folds are kept: same recipe otherwise).
    summary, _ = run(inputs, out, [*FULL[:-1], "train.full_fit=false"])
    assert not (out / "full").exists() and summary["full fit"] == "off"


def test_monitor_rows_stay_out_of_training_and_originals_train():
    from stages.train.rows import Rows

    n = 10
    rows = Rows(ids=np.array([f"i{k}" for k in range(n)]), rows=np.arange(n), labels=np.zeros(n, int), targets=np.ones((n, 1), np.float32),
                weights=np.ones(n, np.float32), clusters=np.array([str(k // 2) for k in range(n)]), fold=np.arange(n) % 2,
                kind=np.array(["labelled"] * n))
    full = full_fit.full_rows(rows, 2, seed=0)
    train, val = full.fold_split(2)
    assert sorted(train) == list(range(n)) and len(val) == n and set(full.ids[val]) == set(rows.ids)
