"""pipeline.metrics against scikit-learn (and a hand count for MAP@k) on fixed arrays."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, fbeta_score, log_loss, roc_auc_score

from pipeline import metrics
from pipeline.metrics import Options

Y = np.array([0, 1, 2, 2, 1, 0, 2, 1])
P = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.5, 0.1, 0.4],
              [0.25, 0.35, 0.4], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]])
TAGS = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]])
TAG_P = np.array([[0.9, 0.2, 0.6], [0.3, 0.7, 0.1], [0.6, 0.4, 0.2], [0.1, 0.3, 0.8], [0.7, 0.6, 0.1], [0.2, 0.9, 0.4]])


def test_single_label_metrics_match_scikit_learn():
    assert metrics.score("accuracy", Y, P) == pytest.approx(accuracy_score(Y, P.argmax(1)))
    assert metrics.score("macro_f1", Y, P) == pytest.approx(f1_score(Y, P.argmax(1), average="macro"))
    assert metrics.score("log_loss", Y, P) == pytest.approx(log_loss(Y, P))
    assert metrics.score("roc_auc", Y, P) == pytest.approx(roc_auc_score(Y, P, multi_class="ovr", average="macro"))
    assert metrics.score("qwk", Y, P) == pytest.approx(cohen_kappa_score(Y, P.argmax(1), weights="quadratic"))


def test_binary_auc_scores_the_positive_column():
    y = np.array([0, 1, 1, 0, 1])
    positive = np.array([0.2, 0.8, 0.4, 0.5, 0.9])
    probs = np.stack([1 - positive, positive], 1)
    assert metrics.score("roc_auc", y, probs) == pytest.approx(roc_auc_score(y, positive))


def test_multi_label_metrics_match_scikit_learn_with_thresholds():
    o = Options(multi_label=True, thresholds=np.array([0.5, 0.5, 0.5]), at_least_one=False)
    tags = (TAG_P >= 0.5).astype(int)
    assert metrics.score("f_beta", TAGS, TAG_P, o) == pytest.approx(fbeta_score(TAGS, tags, beta=2, average="samples", zero_division=0))
    macro = Options(multi_label=True, average="macro", beta=1.0, at_least_one=False)
    assert metrics.score("f_beta", TAGS, TAG_P, macro) == pytest.approx(f1_score(TAGS, tags, average="macro"))
    assert metrics.score("accuracy", TAGS, TAG_P, o) == pytest.approx(accuracy_score(TAGS, tags))
    assert metrics.score("roc_auc", TAGS, TAG_P, o) == pytest.approx(roc_auc_score(TAGS, TAG_P, average="macro"))
    assert metrics.score("log_loss", TAGS, TAG_P, o) == pytest.approx(log_loss(TAGS.ravel(), TAG_P.ravel()))
    # per-class thresholds change the answers, so the score
    strict = Options(multi_label=True, thresholds=np.array([0.95, 0.95, 0.95]), at_least_one=False)
    assert metrics.score("f_beta", TAGS, TAG_P, strict) == 0.0


def test_map_at_k_is_one_over_rank_within_k():
    ranks = [1 + int((P[i] > P[i, Y[i]]).sum()) for i in range(len(Y))]
    for k in (1, 2, 3):
        expected = np.mean([1 / r if r <= k else 0 for r in ranks])
        assert metrics.score(f"map@{k}", Y, P) == pytest.approx(expected)
    assert metrics.score("map@1", Y, P) == pytest.approx(accuracy_score(Y, P.argmax(1)))


def test_direction_auto_choice_and_bad_names():
    assert metrics.better("log_loss", 0.2, 0.3) and not metrics.better("log_loss", 0.4, 0.3)
    assert metrics.better("qwk", 0.8, 0.7) and metrics.better("map@3", 0.5, None)
    assert metrics.resolve("auto", "multi_label", 1)[0] == "f_beta"
    assert metrics.resolve("auto", "binary", 1)[0] == "roc_auc"
    assert metrics.resolve("auto", "single_label", 1)[0] == "accuracy"
    assert metrics.resolve("auto", "single_label", 3)[0] == "map@3"
    assert metrics.resolve("map@k", "single_label", 5)[0] == "map@5"
    for bad in ("auc", "map@0", "map@x"):
        with pytest.raises(ValueError):
            metrics.get(bad)
