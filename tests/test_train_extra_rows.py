"""Rows that only ever train: pseudo-labelled test images and teacher-taught images (distillation),
on the tiny generated cache of test_train_fold (CPU, seconds)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cache import IMAGES, read_clusters, read_index
from pipeline.params import load_params
from pipeline.errors import StageError
from pipeline.runner import StagePaths
import stages.train as train_stage
from stages.train.rows import RowStack
from tests.cache_files import save_clusters, save_index
from tests.test_train_fold import TINY, make_inputs

N_TEST = 12


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The train cache of test_train_fold plus 12 test images, each a copy of train image i (so in its
    dedup cluster: the near-copy case the cluster rule is for) for i < 2, and of its own cluster else."""
    root = tmp_path_factory.mktemp("extra")
    inputs = make_inputs(root)
    pre, dedup = inputs["preprocess"], inputs["dedup"]
    train = np.load(pre / "train" / IMAGES)
    np.save(pre / "test" / IMAGES, train[:N_TEST][::-1].copy())
    index = read_index(pre).astype(str)
    test_ids = [f"t{i}" for i in range(N_TEST)]
    test = pd.DataFrame({"id": test_ids, "split": "test", "label": "", "row": range(N_TEST), "path": ""})
    save_index(pre, pd.concat([index, test]))
    clusters = read_clusters(dedup)
    test_clusters = [clusters.cluster[0], clusters.cluster[0]] + [1000 + i for i in range(2, N_TEST)]
    extra = pd.DataFrame({"id": test_ids, "split": "test", "cluster": test_clusters, "is_representative": True, "weight": 1.0})
    save_clusters(dedup, pd.concat([clusters, extra]))
    # A pseudo-label table as `pipeline pseudo` writes it: soft targets, weight 0.5.
    probs = np.full((N_TEST, 3), 0.05, np.float32)
    labels = (np.arange(N_TEST)[::-1]) % 3  # test row r is train image N_TEST-1-r
    probs[np.arange(N_TEST), labels] = 0.9
    pseudo = root / "pseudo"
    pseudo.mkdir()
    table = pd.DataFrame({"id": test_ids, "row": range(N_TEST), "cluster": test_clusters, "label": labels.astype(str),
                          "confidence": 0.9, "weight": 0.5})
    for k in range(3):
        table[f"p_{k}"] = probs[:, k]
    table.to_csv(pseudo / "pseudo.csv", index=False)
    # A teacher workdir: out-of-fold probabilities for every train image, probabilities for the test.
    teacher = root / "teacher" / "predict"
    teacher.mkdir(parents=True)
    train_ids = index.id[index.split == "train"]
    onehot = np.eye(3)[index.label[index.split == "train"].astype(int)] * 0.7 + 0.1
    pd.DataFrame({"id": train_ids, "label": index.label[index.split == "train"], **{f"p_{k}": onehot[:, k] for k in range(3)}}).to_csv(teacher / "oof.csv", index=False)
    pd.DataFrame({"id": test_ids, **{f"p_{k}": probs[:, k] for k in range(3)}}).to_csv(teacher / "probs.csv", index=False)
    return {**inputs, "pseudo": pseudo, "teacher": teacher.parent}


def params_for(*extra):
    params, _ = load_params("params.yaml", TINY + list(extra) + ["data.root=/nonexistent"])
    return params


def test_pseudo_rows_train_every_fold_but_never_validate(inputs):
    data, train = train_stage.load_data(params_for(), StagePaths(out=None, inputs=inputs))
    rows = data.rows
    assert rows.describe() == f"48 labelled + {N_TEST} pseudo"
    pseudo = np.where(rows.fold == -1)[0]
    assert set(rows.ids[pseudo]) == {f"t{i}" for i in range(N_TEST)}
    assert (rows.weights[pseudo] == 0.5).all() and np.allclose(rows.targets[pseudo].max(1), 0.9)
    n_labelled = int(((rows.fold != -1) & (rows.fold != 2)).sum())
    n_pseudo = len(set(pseudo) & set(rows.fold_split(2)[0]))
    assert rows.subset(rows.fold_split(2)[0]).describe() == f"{n_labelled} labelled + {n_pseudo} pseudo"
    for fold in range(3):
        train_idx, val_idx = rows.fold_split(fold)
        assert set(rows.ids[val_idx]) == set(train.id[rows.fold[: len(train)] == fold])  # validation: labelled images only
        assert not set(val_idx) & set(pseudo)
        val_clusters = set(rows.clusters[val_idx])
        trained_pseudo = set(pseudo) & set(train_idx)
        # every pseudo row trains this fold unless it is a copy of one of its validation images
        assert trained_pseudo == {i for i in pseudo if rows.clusters[i] not in val_clusters}
    copy_fold = rows.fold[0]  # the fold whose validation holds train image 0, which t0 and t1 copy
    assert not {"t0", "t1"} & set(rows.ids[rows.fold_split(copy_fold)[0]])
    # pixels of a pseudo row are its test image
    stack = data.pixels
    assert (stack[rows.rows[pseudo[3]]] == np.load(inputs["preprocess"] / "test" / IMAGES)[3]).all()


def test_a_pseudo_round_changes_training_but_not_what_is_validated(inputs, tmp_path):
    base = {k: v for k, v in inputs.items() if k not in ("pseudo", "teacher")}
    params = params_for("train.fold=0")
    for name, paths in (("plain", base), ("pseudo", {**base, "pseudo": inputs["pseudo"]})):
        (tmp_path / name).mkdir()
        train_stage.run(params, StagePaths(out=tmp_path / name, inputs=paths))
    plain, pseudo = (pd.read_csv(tmp_path / n / "oof.csv", dtype={"id": str}) for n in ("plain", "pseudo"))
    assert plain.id.tolist() == pseudo.id.tolist() and not plain.id.str.startswith("t").any()
    assert not np.allclose(plain.filter(like="p_").to_numpy(), pseudo.filter(like="p_").to_numpy())


def test_distillation_trains_on_teacher_targets(inputs, tmp_path):
    base = {k: v for k, v in inputs.items() if k not in ("pseudo", "teacher")}
    params = params_for("train.fold=0", f"distill.teacher={inputs['teacher']}", "distill.test_weight=0.5")
    data, _ = train_stage.load_data(params, StagePaths(out=None, inputs=base))
    rows = data.rows
    assert rows.describe() == f"48 labelled + {N_TEST} teacher"
    taught = rows.fold == -1
    assert (rows.targets[taught] == 0).all() and (rows.weights[taught] == 0.5).all()  # no label: the teacher alone
    assert np.allclose(rows.teacher[~taught].max(1), 0.8)
    (tmp_path / "student").mkdir()
    summary = train_stage.run(params, StagePaths(out=tmp_path / "student", inputs=base))
    assert len(summary["trained in this run"]) == 1
    ckpt = torch.load(tmp_path / "student" / "fold0" / "last.pt", weights_only=False)
    assert ckpt["distill"]["teacher"] == str(inputs["teacher"])


def test_a_teacher_without_predictions_for_this_data_is_a_clear_error(inputs, tmp_path):
    (tmp_path / "t" / "predict").mkdir(parents=True)
    oof = pd.read_csv(inputs["teacher"] / "predict" / "oof.csv").iloc[:10]
    oof.to_csv(tmp_path / "t" / "predict" / "oof.csv", index=False)
    pd.read_csv(inputs["teacher"] / "predict" / "probs.csv").to_csv(tmp_path / "t" / "predict" / "probs.csv", index=False)
    with pytest.raises(StageError, match="no out-of-fold prediction for 38 train images"):
        train_stage.load_data(params_for(f"distill.teacher={tmp_path / 't'}"), StagePaths(out=tmp_path, inputs=inputs))


def test_row_stack_reads_several_arrays_as_one():
    a, b, c = np.arange(3)[:, None] * np.ones((1, 2)), np.zeros((0, 2)), 10 + np.arange(2)[:, None] * np.ones((1, 2))
    stack = RowStack([a, b, c])
    assert len(stack) == 5 and stack.shape == (5, 2)
    assert stack[3][0] == 10 and stack[2][0] == 2
    assert stack[np.array([4, 0, 3, 1])][:, 0].tolist() == [11, 0, 10, 1]
    json.dumps(stack.shape)  # plain ints, so it can be logged


def test_pseudo_and_teacher_rows_on_the_device_side_augmentation_path(inputs, tmp_path):
    """The path train takes on a GPU when the cache fits there (forced here on the CPU)."""
    params = params_for("train.fold=0", "train.gpu_augment=always", f"distill.teacher={inputs['teacher']}")
    summary = train_stage.run(params, StagePaths(out=tmp_path, inputs=inputs))
    assert len(summary["trained in this run"]) == 1
    oof = pd.read_csv(tmp_path / "oof.csv", dtype={"id": str})
    assert not oof.id.str.startswith("t").any() and np.isfinite(oof.filter(like="p_").to_numpy()).all()
