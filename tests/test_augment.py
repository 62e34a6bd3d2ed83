"""augment stage on a tiny cache: saved pipeline loads and runs, preview PNG, rare-class expansion
feeding train (copies join only folds where their source trains)."""

import json

import albumentations as A
import numpy as np
import pandas as pd
import pytest

from pipeline.params import ParamsError, load_params
from pipeline.runner import StagePaths
from stages import augment
import stages.train as train_stage
from pipeline.cache import read_clusters, read_index
from tests.cache_files import save_clusters, save_index
from tests.test_train_fold import TINY, make_inputs


def test_augment_outputs_and_expansion_feed_train(tmp_path):
    inputs = make_inputs(tmp_path / "data", n=30)
    (inputs["preprocess"] / "train" / "report.json").write_text(json.dumps({"size": [16, 16], "channels": 1}))
    index = read_index(inputs["preprocess"])
    index.loc[index.label == "2", "split"] = "test"  # class 2 rare in train: keep 3 of its 10 images
    index.loc[index[index.label == "2"].index[:3], "split"] = "train"
    save_index(inputs["preprocess"], index)
    clusters = read_clusters(inputs["dedup"])
    clusters["split"] = index.split
    save_clusters(inputs["dedup"], clusters)
    params, _ = load_params("params.yaml", TINY + ["data.root=/nonexistent", "augment.expand_to=8", "train.fold=0", "train.epochs=1"])
    out = tmp_path / "aug"
    out.mkdir()
    result = augment.run(params, StagePaths(out=out, inputs={"preprocess": inputs["preprocess"]}))
    assert result["expanded copies"] == 5 and (out / "preview.png").stat().st_size > 1000
    loaded = A.load(str(out / "transform.json"), data_format="json")
    assert loaded(image=np.zeros((16, 16, 1), np.uint8))["image"].shape[:2] == (16, 16)
    table = pd.read_csv(out / "expanded.csv")
    assert set(table.label) == {2} and np.load(out / "expanded.npy").shape == (5, 16, 16, 1)
    train_out = tmp_path / "train"
    train_out.mkdir()
    summary = train_stage.run(params, StagePaths(out=train_out, inputs={**inputs, "augment": out}))
    assert len(summary["trained in this run"]) == 1
    oof = pd.read_csv(train_out / "oof.csv", dtype={"id": str})
    assert not oof.id.str.contains("#aug").any()  # copies never validate


def test_unordered_range_is_a_params_error():
    params, _ = load_params("params.yaml", ["augment.crop_scale=[0.9, 0.5]"])
    with pytest.raises(ParamsError, match="augment.crop_scale"):
        augment.build(params.augment, 16, 16)
