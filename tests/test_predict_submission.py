import numpy as np
import pandas as pd
import pytest

from pipeline.errors import CheckError, StageError
from stages.predict.submission import Answers, build_submission, sample_format, validate_submission, write_submission

CLASSES = ["cat", "dog", "fox"]
IDS = ["a", "b", "c", "d"]
PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])


def label_sample():
    return pd.DataFrame({"image_id": ["c", "a", "d", "b"], "label": ["cat"] * 4})


def test_label_format_follows_sample_order_and_vocabulary(tmp_path):
    sample = label_sample()
    sub = build_submission(sample, IDS, PROBS, CLASSES)
    assert list(sub.columns) == ["image_id", "label"]
    assert sub.image_id.tolist() == ["c", "a", "d", "b"]
    assert sub.label.tolist() == ["fox", "cat", "cat", "dog"]
    write_submission(tmp_path / "s.csv", sub, sample, CLASSES)
    assert (tmp_path / "s.csv").read_text().splitlines()[:2] == ["image_id,label", "c,fox"]


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.iloc[:-1], "lacks 1 sample ids \\(first: b\\)"),
    (lambda s: pd.concat([s, pd.DataFrame({"image_id": ["zz"], "label": ["cat"]})]), "1 ids not in the sample \\(first: zz\\)"),
    (lambda s: s.iloc[[1, 0, 2, 3]], "not in the sample's order \\(row 0: 'a'"),
    (lambda s: pd.concat([s, s.iloc[[0]]]), "1 duplicated ids \\(first: c\\)"),
    (lambda s: s.assign(label=["cat", "wolf", "dog", "fox"]), "labels \\['wolf'\\] are not in the class vocabulary"),
    (lambda s: s.rename(columns={"label": "class"}), "columns \\['image_id', 'class'\\] differ"),
])
def test_label_submission_errors_are_loud(mutate, message):
    sample = label_sample()
    good = build_submission(sample, IDS, PROBS, CLASSES)
    validate_submission(good, sample, CLASSES)
    with pytest.raises(StageError, match=message):
        validate_submission(mutate(good).reset_index(drop=True), sample, CLASSES)


def test_missing_prediction_for_a_sample_id():
    with pytest.raises(StageError, match="1 sample ids have no prediction \\(first: d\\)"):
        build_submission(label_sample(), ["a", "b", "c"], PROBS[:3], CLASSES)


def test_probability_format_uses_sample_column_order(tmp_path):
    sample = pd.DataFrame({"id": IDS, "fox": 0.0, "cat": 0.0, "dog": 0.0})
    assert sample_format(sample, CLASSES) == "probability"
    sub = build_submission(sample, IDS, PROBS, CLASSES)
    assert list(sub.columns) == ["id", "fox", "cat", "dog"]
    assert sub.iloc[0].tolist() == ["a", "0.100000", "0.700000", "0.200000"]
    write_submission(tmp_path / "s.csv", sub, sample, CLASSES)
    back = pd.read_csv(tmp_path / "s.csv")
    assert np.allclose(back[["cat", "dog", "fox"]].to_numpy(), PROBS)


def test_probability_format_checks_range_and_sums():
    sample = pd.DataFrame({"id": IDS, "cat": 0.0, "dog": 0.0, "fox": 0.0})
    sub = build_submission(sample, IDS, PROBS, CLASSES)
    with pytest.raises(StageError, match="sum to"):
        validate_submission(sub.assign(cat="0.9"), sample, CLASSES)
    with pytest.raises(StageError, match="outside \\[0, 1\\]"):
        validate_submission(sub.assign(cat="-0.1"), sample, CLASSES)
    with pytest.raises(StageError, match="non-numeric"):
        validate_submission(sub.assign(cat=""), sample, CLASSES)


def test_binary_probability_format():
    sample = pd.DataFrame({"id": ["a", "b"], "target": ["0.5", "0.5"]})
    assert sample_format(sample, ["0", "1"]) == "binary"
    sub = build_submission(sample, ["a", "b"], np.array([[0.9, 0.1], [0.3, 0.7]]), ["0", "1"])
    assert sub.target.tolist() == ["0.100000", "0.700000"]
    # 0/1 placeholders with 0/1 classes could ask for either: the run stops and says which key to set
    with pytest.raises(CheckError, match="set predict.submission to labels or probabilities"):
        sample_format(pd.DataFrame({"id": ["a"], "target": ["0"]}), ["0", "1"])
    assert sample_format(pd.DataFrame({"id": ["a"], "target": ["0"]}), ["0", "1"], Answers(choice="labels")) == "label"
    assert sample_format(pd.DataFrame({"id": ["a"], "target": ["0"]}), ["0", "1"], Answers(choice="probabilities")) == "binary"


def test_unknown_sample_columns():
    sample = pd.DataFrame({"id": IDS, "x": 0, "y": 0})
    with pytest.raises(CheckError, match="expected one label column or one column per class"):
        sample_format(sample, CLASSES)


@pytest.mark.parametrize("classes, values, expected", [
    (["1", "2"], ["0"], "ask"),  # issue 11.4: 0 is not a label, and not clearly a probability either
    (["0.0", "1.0"], ["0"], "ask"),
    (["cat", "dog"], ["cat"], "label"),
    (["cat", "dog"], [""], "label"),
    (["1", "2"], ["1", "2"], "label"),
    (["a", "b", "c"], ["0"], "label"),  # one column cannot hold three classes' probabilities
    (["1", "2"], ["0.5"], "binary"),
])
def test_the_sample_decides_only_when_unambiguous(classes, values, expected):
    sample = pd.DataFrame({"id": [f"i{k}" for k in range(len(values))], "target": values})
    if expected == "ask":
        with pytest.raises(CheckError, match=r"could ask for labels or for the probability .*set predict.submission"):
            sample_format(sample, classes)
    else:
        assert sample_format(sample, classes) == expected


def test_probabilities_in_one_column_need_two_classes():
    with pytest.raises(CheckError, match="predict.submission = probabilities"):
        sample_format(pd.DataFrame({"id": ["a"], "target": ["0"]}), CLASSES, Answers(choice="probabilities"))


def test_a_sample_naming_a_class_train_lacks_is_named():
    sample = pd.DataFrame({"id": IDS, "cat": 0.0, "dog": 0.0, "wolf": 0.0})
    with pytest.raises(CheckError, match=r"not classes: \['wolf'\], classes without a column: \['fox'\]"):
        sample_format(sample, CLASSES)
