import numpy as np
import pandas as pd

from stages.predict.correction import correct

CLASSES = ["cat", "dog"]


def clusters():
    # cluster 0: train t1 (dog) + test x1 (a leak); cluster 1: test x2 + x3 (duplicates); x4 alone.
    return pd.DataFrame({
        "id": ["t1", "t2", "x1", "x2", "x3", "x4"],
        "split": ["train", "train", "test", "test", "test", "test"],
        "cluster": [0, 2, 0, 1, 1, 3],
    })


LABELS = pd.Series({"t1": "dog", "t2": "cat"})
IDS = ["x1", "x2", "x3", "x4", "unread"]
PROBS = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.5, 0.5]])


def test_leak_takes_the_train_label_and_clusters_agree():
    probs, changes = correct(PROBS, IDS, clusters(), LABELS, CLASSES, leak_label=True, consistent=True)
    assert np.allclose(probs[0], [0, 1])  # x1 is a copy of the dog t1
    assert np.allclose(probs[1], probs[2]) and np.allclose(probs[1], [0.6, 0.4])
    assert np.allclose(probs[3:], PROBS[3:])  # alone, and unknown to dedup: untouched
    assert changes.set_index("id").rule.to_dict() == {"x1": "leak", "x2": "cluster", "x3": "cluster"}  # weight 1 by default
    changed = changes[changes.before != changes.after]
    assert changed.id.tolist() == ["x1", "x3"]
    assert changed.after.tolist() == ["dog", "cat"]


def test_corrections_can_be_turned_off():
    probs, changes = correct(PROBS, IDS, clusters(), LABELS, CLASSES, leak_label=False, consistent=False)
    assert np.array_equal(probs, PROBS) and changes.empty
    probs, changes = correct(PROBS, IDS, clusters(), LABELS, CLASSES, leak_label=True, consistent=False)
    assert changes.id.tolist() == ["x1"]


def test_conflicting_train_labels_give_their_distribution():
    c = clusters()
    c.loc[c.id == "t2", "cluster"] = 0  # t1 dog + t2 cat + test x1
    probs, _ = correct(PROBS, IDS, c, LABELS, CLASSES, leak_label=True, consistent=True)
    assert np.allclose(probs[0], [0.5, 0.5])


def test_near_duplicate_leak_is_blended_exact_leak_is_not():
    probs, changes = correct(PROBS, IDS, clusters(), LABELS, CLASSES, leak_label=True, consistent=False, leak_weight=0.8)
    assert np.allclose(probs[0], [0.2 * 0.9, 0.2 * 0.1 + 0.8])  # never a hard 0/1 for a near-duplicate
    assert changes.set_index("id").rule["x1"] == "leak"
    probs, changes = correct(PROBS, IDS, clusters(), LABELS, CLASSES, leak_label=True, consistent=False, leak_weight=0.8,
                             exact_ids=frozenset({"x1"}))
    assert np.allclose(probs[0], [0, 1]) and changes.set_index("id").rule["x1"] == "leak (exact)"
