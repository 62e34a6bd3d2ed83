"""dedup: union-find, hash search, shift-tolerant verification, uniform guard, leaks, conflicts, weights."""

from __future__ import annotations

import itertools
import json

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.cache import read_clusters
from pipeline.runner import StagePaths
from stages import dedup, preprocess
from stages.dedup.report import assign_weights
from stages.dedup.search import hamming, hash_pairs
from stages.dedup.verify import shift_correlation
from stages.dedup.union_find import UnionFind
from tests.tiny_images import digit_like, make_params, write_competition  # noqa: F401 (fixture)


def test_union_find_chains_a_b_c():
    uf = UnionFind(5)
    uf.union(0, 1)  # a-b
    uf.union(1, 2)  # b-c: a and c were never compared, yet they are one cluster
    labels = uf.labels()
    assert labels[0] == labels[1] == labels[2]
    assert len({labels[0], labels[3], labels[4]}) == 3
    assert list(labels) == [0, 0, 0, 1, 2]  # numbered by first appearance


def test_weakest_link_is_the_spanning_one():
    a, b = np.array([0, 1, 0, 3]), np.array([1, 2, 2, 4])
    link = np.array([0.999, 0.998, 0.9975, 1.0], np.float32)
    cluster, weakest = dedup.cluster_links(6, a, b, link)
    assert cluster[0] == cluster[1] == cluster[2] != cluster[3] == cluster[4] != cluster[5]
    # 0-2 is redundant once 0-1 and 1-2 joined: the chain hangs on 1-2
    assert weakest == {int(cluster[0]): pytest.approx(0.998), int(cluster[3]): 1.0}


def test_many_exact_copies_cost_one_search_entry(make_params):
    d = make_params().dedup
    images = cache_images([digit_like(7)] * 200 + [digit_like(8)])
    found = dedup.find_duplicates(images, d)
    assert found["exact_pairs"] == 199 and found["candidate_pairs"] == 0
    assert len(set(found["cluster"])) == 2


def test_hash_search_matches_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**64 - 1, 40, dtype=np.uint64, endpoint=True)
    flips = [np.uint64(1) << np.uint64(b) for b in rng.integers(0, 64, 40)]
    hashes = np.concatenate([base, base ^ np.array(flips, np.uint64), base[:5]])  # 1-bit copies + exact copies
    i, j, d = hash_pairs(hashes, radius=3, window=8)
    truth = {(a, b) for a, b in itertools.combinations(range(len(hashes)), 2) if hamming(hashes[a], hashes[b]) <= 3}
    assert set(zip(i.tolist(), j.tolist())) == truth
    assert (d == hamming(hashes[i], hashes[j])).all()


def test_shift_correlation_tolerates_shift_and_brightness_not_other_images():
    rng = np.random.default_rng(0)
    a = cv2.GaussianBlur(rng.standard_normal((32, 32)).astype(np.float32), (0, 0), 1.5)
    shifted = np.roll(a, (2, -1), axis=(0, 1))
    thumbs = np.stack([a, shifted, 2 * a + 7, cv2.GaussianBlur(rng.standard_normal((32, 32)).astype(np.float32), (0, 0), 1.5)])
    scores = shift_correlation(thumbs, np.array([0, 0, 0]), np.array([1, 2, 3]), max_shift=2)
    assert scores[0] > 0.99 and scores[1] > 0.999 and scores[2] < 0.5


def cache_images(images: list[np.ndarray], side: int = 64) -> list[np.ndarray]:
    return [preprocess.resize(im.reshape(im.shape[0], im.shape[1], -1), (side, side), "pad") for im in images]


def test_near_duplicates_found_and_distinct_kept(make_params):
    d = make_params().dedup
    originals = [digit_like(s) for s in range(20)]
    shifted = cv2.warpAffine(originals[0], np.float32([[1, 0, 1], [0, 1, 2]]), (28, 28))
    jpeg = cv2.imdecode(cv2.imencode(".jpg", originals[1], [cv2.IMWRITE_JPEG_QUALITY, 80])[1], cv2.IMREAD_GRAYSCALE)
    brighter = cv2.add(originals[2], 25)
    found = dedup.find_duplicates(cache_images(originals + [shifted, jpeg, brighter]), d)
    cluster = found["cluster"]
    assert cluster[20] == cluster[0] and cluster[21] == cluster[1] and cluster[22] == cluster[2]
    assert len(set(cluster[:20])) == 20  # the distinct originals stay apart
    assert found["weakest"][cluster[0]] >= d.threshold


def test_uniform_images_not_merged(make_params):
    d = make_params().dedup
    flats = [np.full((28, 28), v, np.uint8) for v in (0, 40, 128, 255)]
    flats.append((np.arange(28 * 28).reshape(28, 28) % 2 + 100).astype(np.uint8))  # near-uniform dither
    found = dedup.find_duplicates(cache_images(flats), d)
    assert len(set(found["cluster"])) == len(flats)
    assert found["flat_images"] == len(flats)


def test_weights_equal_rights_and_representative():
    clusters = pd.DataFrame({"id": list("abcde"), "split": ["train"] * 3 + ["test", "train"], "label": ["1", "1", "1", "", "2"],
                             "cluster": [0, 0, 0, 0, 1]})
    weighted = assign_weights(clusters, "weight")
    assert weighted.groupby("cluster").weight.sum().tolist() == [1.0, 1.0]
    assert weighted.weight[weighted.split == "test"].eq(0).all()
    rep = assign_weights(clusters, "representative")
    assert rep.weight.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert rep.is_representative.tolist() == [True, False, False, False, True]


def test_stage_reports_leak_and_conflict(make_params, tmp_path):
    root = tmp_path / "data"
    train = {f"tr{i}": (digit_like(i), str(i % 3)) for i in range(9)}
    train["copy_of_tr1"] = (digit_like(1), "2")  # same image as tr1 (label 1), other label: a conflict
    write_competition(root, train, {"leak": cv2.add(digit_like(5), 10), "fresh": digit_like(50)})
    params = make_params("preprocess.size=32", root=root)
    pre, out = tmp_path / "pre", tmp_path / "dedup"
    pre.mkdir()
    out.mkdir()
    preprocess.run(params, StagePaths(out=pre, inputs={"data": root}))
    summary = dedup.run(params, StagePaths(out=out, inputs={"preprocess": pre}))
    report = json.loads((out / "report.json").read_text())
    assert report["train_test_leaks"] == [{"test_id": "leak", "train_ids": ["tr5"], "labels": ["2"]}]
    assert [c["labels"] for c in report["label_conflicts"]] == [["1", "2"]]
    assert set(report["label_conflicts"][0]["ids"]) == {"tr1", "copy_of_tr1"}
    clusters = read_clusters(out)
    assert len(clusters) == 12 and list(clusters.columns) == ["id", "split", "cluster", "is_representative", "weight"]
    assert summary["duplicate_clusters"] == 2
    assert (out / "contact_sheet.png").is_file()
