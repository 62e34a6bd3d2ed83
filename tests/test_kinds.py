"""Task kinds (multi-label, binary, single-label, top-k), their folds, thresholds, submissions and
pseudo-labels, and `pipeline init`; the slow tests run a generated competition of each kind end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from pipeline import metrics, tasks
from pipeline.cli import app
from pipeline.data import discover
from pipeline.params import PseudoParams
from stages.predict.submission import Answers, build_submission, validate_submission
from stages.pseudo import select
from stages.train.folds import assign_multilabel_folds
from stages.train.losses import multi_label_loss
from stages.train.metrics import setup
from tests.conftest import ROOT
from tests.kinds_data import FAST, TAGS, make_multilabel, make_single

runner = CliRunner()


def invoke(*args, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


# --- detection ---------------------------------------------------------------------------------

def test_space_separated_tags_are_multi_label_with_the_tag_vocabulary(tmp_path):
    data = discover(make_multilabel(tmp_path / "c"))
    assert data.task.kind == "multi_label" and data.classes == sorted(TAGS)
    assert (data.id_column, data.label_column) == ("image_name", "tags")


def test_one_indicator_column_per_class_is_multi_label(tmp_path):
    data = discover(make_multilabel(tmp_path / "c", indicator=True))
    assert data.task.kind == "multi_label" and sorted(data.classes) == sorted(TAGS)
    train = data.manifest[data.manifest.split == "train"]
    assert all(2 <= len(cell.split()) <= 4 for cell in train.label)


def test_class_names_with_spaces_stay_single_label():
    labels = pd.Series(["Sugar beet", "Common wheat", "Maize", "Loose Silky-bent", "Sugar beet", "Maize"])
    task = tasks.detect(labels, pd.DataFrame({"id": ["x"], "species": ["Maize"]}), "auto", " ")
    assert task.kind == "single_label"


def test_binary_and_top_k_from_the_sample(tmp_path):
    binary = discover(make_single(tmp_path / "b", ["0", "1"], 8, 3, "0.5"))
    assert binary.task.kind == "binary" and metrics.resolve("auto", "binary", 1)[0] == "roc_auc"
    top = discover(make_single(tmp_path / "t", list("abcdef"), 12, 3, "a b c"))
    assert top.task.kind == "single_label" and top.task.top_k == 3
    ordinal = discover(make_single(tmp_path / "o", ["none", "mild", "severe"], 9, 2, "none"), class_order=["none", "mild", "severe"])
    assert ordinal.classes == ["none", "mild", "severe"]


# --- folds, loss, thresholds -------------------------------------------------------------------

def test_multilabel_folds_keep_every_tag_in_every_training_part_and_never_split_a_cluster():
    rng = np.random.default_rng(1)
    n, k = 60, 5
    tags = np.zeros((n, len(TAGS)), int)
    for i in range(n):
        tags[i, rng.choice(len(TAGS), int(rng.integers(2, 5)), replace=False)] = 1
    tags[:, 4] = 0
    tags[[3, 17, 40], 4] = 1  # a rare tag on three images
    clusters = np.array([f"c{i // 2}" if i < 20 else f"s{i}" for i in range(n)])  # ten clusters of two
    folds = assign_multilabel_folds(tags, clusters, k, seed=0)
    assert set(folds) == set(range(k))
    for cluster in set(clusters):
        assert len(set(folds[clusters == cluster])) == 1
    for fold in range(k):
        assert (tags[folds != fold].sum(0) > 0).all(), f"fold {fold}: a tag is missing from its training part"
    assert (folds == assign_multilabel_folds(tags, clusters, k, seed=0)).all()


def test_multi_label_losses_are_bce_focal_and_asymmetric():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    target = torch.tensor([[1.0, 0.0, 1.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
    assert torch.allclose(multi_label_loss(logits, target), bce)
    assert (multi_label_loss(logits, target, kind="focal", gamma=2.0) < bce).all()
    assert (multi_label_loss(logits, target, kind="asymmetric", gamma_neg=4.0, clip=0.05) < bce).all()


def test_thresholds_fitted_on_oof_change_the_f_score():
    rng = np.random.default_rng(0)
    truth = (rng.random((200, 4)) < [0.5, 0.3, 0.2, 0.1]).astype(int)
    # a model that ranks well but is under-confident on the rare tags: 0.5 misses them
    probs = np.clip(truth * rng.uniform(0.25, 0.6, truth.shape) + (1 - truth) * rng.uniform(0.0, 0.3, truth.shape), 0, 1)
    options = metrics.Options(multi_label=True, beta=2.0)
    before = metrics.score("f_beta", truth, probs, options)
    fitted = metrics.fit_thresholds("f_beta", truth, probs, options)
    after = metrics.score("f_beta", truth, probs, metrics.Options(multi_label=True, beta=2.0, thresholds=fitted))
    assert after > before + 0.05 and (fitted < 0.5).any()


def test_qwk_picks_the_checkpoint_by_kappa_not_accuracy():
    class P:
        metric, metric_beta, metric_average = "qwk", 2.0, "samples"

    scoring = setup(P, tasks.Task("single_label", "", " ", 1))
    y = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    near = np.eye(4)[[1, 2, 3, 2, 1, 0, 1, 2]]  # never right, always one grade off
    far = np.eye(4)[[0, 1, 3, 0, 3, 1, 2, 0]]  # right more often, wildly wrong otherwise
    assert metrics.score("accuracy", y, far) > metrics.score("accuracy", y, near)
    kappa_near, kappa_far = (scoring.scores(y, p)["qwk"] for p in (near, far))
    assert scoring.metric == "qwk" and scoring.better(kappa_near, kappa_far) and kappa_near > kappa_far


# --- submissions and pseudo-labels -------------------------------------------------------------

def test_multi_label_submission_is_tags_from_the_vocabulary_in_the_sample_order():
    classes = sorted(TAGS)
    sample = pd.DataFrame({"image_name": ["c", "a", "b"], "tags": "clear road"})
    probs = np.array([[0.9, 0.1, 0.8, 0.2, 0.1], [0.1, 0.2, 0.3, 0.1, 0.2], [0.6, 0.7, 0.1, 0.9, 0.55]])
    answers = Answers(multi_label=True, thresholds=np.array([0.5, 0.5, 0.5, 0.5, 0.6]))
    sub = build_submission(sample, ["a", "b", "c"], probs, classes, answers)
    assert sub.image_name.tolist() == ["c", "a", "b"]
    assert sub.tags.tolist() == ["clear cloudy road", "clear field", "field"]  # b: its top tag at least
    validate_submission(sub, sample, classes, answers)
    columns = pd.DataFrame({"image_name": ["a", "b"], **{t: "0" for t in TAGS}})
    sub = build_submission(columns, ["a", "b"], probs[:2], classes, answers)
    assert sub.loc[0, ["clear", "field"]].tolist() == ["1", "1"] and sub.loc[0, "road"] == "0"


def test_top_k_rows_hold_k_distinct_labels_most_probable_first():
    classes = list("abcdef")
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(6), 20)
    sample = pd.DataFrame({"id": [str(i) for i in range(20)], "label": "a b c"})
    answers = Answers(top_k=3)
    sub = build_submission(sample, list(sample.id), probs, classes, answers)
    for row, cell in enumerate(sub.label):
        given = cell.split(" ")
        assert len(given) == 3 == len(set(given)) and given[0] == classes[probs[row].argmax()]
    validate_submission(sub, sample, classes, answers)


def test_pseudo_keeps_confident_tags_only():
    probs = np.array([[0.97, 0.02, 0.95], [0.97, 0.5, 0.95], [0.05, 0.01, 0.92]])
    keep = select(probs, PseudoParams(threshold=0.9, top_fraction=None, soft=False, weight=0.5), multi_label=True)
    assert keep.tolist() == [True, False, True]  # the middle image has an unsure tag


# --- init --------------------------------------------------------------------------------------

def test_packaged_defaults_are_the_repository_params():
    from pipeline.init import defaults_text

    assert defaults_text() == (ROOT / "params.yaml").read_text()


def test_init_in_an_empty_folder_writes_params_that_status_accepts(tmp_path, monkeypatch):
    data = make_multilabel(tmp_path / "planet")
    work = tmp_path / "empty"
    work.mkdir()
    monkeypatch.chdir(work)
    missing = invoke("run", code=2)
    assert "pipeline init" in missing.output
    out = invoke("init", data)
    assert "multi_label" in out.output and "f_beta" in out.output and "image_name" in out.output
    text = (work / "params.yaml").read_text()
    assert f"root: {data.resolve()}" in text and "# " in text  # comments kept
    status = invoke("status")
    assert status.output.count("missing") >= 5
    again = invoke("init", data, code=2)
    assert "--force" in again.output
    invoke("init", data, "--force")


# --- end to end: init + run on a generated competition of each kind ---------------------------

def run_competition(tmp_path: Path, data: Path, *extra: str) -> Path:
    params = tmp_path / "params.yaml"
    invoke("init", data, "-p", params)
    invoke("run", "-p", params, "-w", tmp_path / "art", *FAST, *extra)
    return tmp_path / "art"


@pytest.mark.slow
def test_multi_label_competition_end_to_end(tmp_path):
    data = make_multilabel(tmp_path / "planet", n_train=48)
    art = run_competition(tmp_path, data, "-S", "rounds=1", "-S", "pseudo.threshold=0.5")
    sample = pd.read_csv(data / "sample_submission.csv", dtype=str)
    for folder in ("predict", "round1/predict"):
        sub = pd.read_csv(art / folder / "submission.csv", dtype=str, keep_default_na=False)
        assert list(sub.columns) == list(sample.columns) and sub.image_name.tolist() == sample.image_name.tolist()
        assert all(cell and set(cell.split(" ")) <= set(TAGS) for cell in sub.tags)
    cv = json.loads((art / "train" / "cv.json").read_text())
    assert cv["metric"] == "f_beta" and "oof_f_beta_tuned_thresholds" in cv
    assert set(json.loads((art / "predict" / "thresholds.json").read_text())) == set(TAGS)


@pytest.mark.slow
def test_binary_auc_competition_end_to_end(tmp_path):
    data = make_single(tmp_path / "melanoma", ["0", "1"], 24, 6, "0.5", label_column="target")
    art = run_competition(tmp_path, data)
    sub = pd.read_csv(art / "predict" / "submission.csv")
    assert list(sub.columns) == ["id", "target"] and sub.target.between(0, 1).all()
    assert json.loads((art / "train" / "cv.json").read_text())["metric"] == "roc_auc"


@pytest.mark.slow
def test_ordinal_qwk_competition_end_to_end(tmp_path):
    grades = ["none", "mild", "moderate", "severe"]
    data = make_single(tmp_path / "aptos", grades, 32, 6, "none", label_column="diagnosis")
    art = run_competition(tmp_path, data, "-S", "train.metric=qwk", "-S", f"data.class_order={json.dumps(grades)}", "-S", "train.epochs=2")
    assert json.loads((art / "preprocess" / "train" / "classes.json").read_text()) == grades
    for fold in (0, 1):
        history = pd.read_csv(art / "train" / f"fold{fold}" / "metrics.csv")
        best = torch.load(art / "train" / f"fold{fold}" / "best.pt", map_location="cpu", weights_only=False)
        assert best["metric"] == pytest.approx(history.val_qwk.max())
    assert set(pd.read_csv(art / "predict" / "submission.csv", dtype=str).diagnosis) <= set(grades)


@pytest.mark.slow
def test_top_3_competition_end_to_end(tmp_path):
    data = make_single(tmp_path / "whales", list("abcdef"), 36, 6, "a b c")
    art = run_competition(tmp_path, data)
    sub = pd.read_csv(art / "predict" / "submission.csv", dtype=str)
    assert all(len(set(cell.split(" "))) == 3 and set(cell.split(" ")) <= set("abcdef") for cell in sub.label)
    assert json.loads((art / "train" / "cv.json").read_text())["metric"] == "map@3"


def test_multi_label_distillation_teaches_test_rows_by_the_teacher_alone():
    from stages.train.distill import combine, kl_per_sample

    logits = torch.tensor([[1.0, -2.0, 0.5], [1.0, -2.0, 0.5]])
    teacher = torch.tensor([[0.7, 0.1, 0.6], [0.7, 0.1, 0.6]])
    hard = multi_label_loss(logits, torch.zeros(2, 3))  # a test row's all-zero target is no label, not "no tags"
    kl_weight = torch.tensor([0.7, 1.0])  # a labelled row (alpha) and a test row
    loss = combine(hard, logits, teacher, kl_weight, temperature=2.0, alpha=0.7, multi_label=True)
    kl = kl_per_sample(logits, teacher, 2.0, multi_label=True)
    assert torch.allclose(loss[1], kl[1]) and torch.allclose(loss[0], 0.7 * kl[0] + 0.3 * hard[0])
    same = torch.logit(teacher[:1])  # a student that equals the teacher has zero KL
    assert kl_per_sample(same, teacher[:1], 2.0, multi_label=True).abs().item() < 1e-5
