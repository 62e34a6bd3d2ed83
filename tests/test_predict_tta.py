import numpy as np
import pytest
import timm
import torch

from stages.predict.ensemble import predict_views
from stages.predict.tta import View, apply_view, apply_views, expand, merge


def test_merge_mean_prob_by_hand():
    logits = np.array([[[0.0, np.log(3.0)]], [[np.log(3.0), 0.0]]])  # view probs [.25,.75] and [.75,.25]
    assert np.allclose(merge(logits, "mean_prob"), [[0.5, 0.5]])


def test_merge_mean_logit_and_geometric_agree_and_differ_from_mean_prob():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 4)) * 3
    mean_logit, geometric, mean_prob = (merge(logits, h) for h in ("mean_logit", "geometric", "mean_prob"))
    expected = np.exp(logits.mean(0)) / np.exp(logits.mean(0)).sum(-1, keepdims=True)
    assert np.allclose(mean_logit, expected)
    # geometric mean of probabilities, renormalised, is the same distribution (see tta.merge)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    g = np.prod(p, axis=0) ** (1 / 3)
    assert np.allclose(geometric, g / g.sum(-1, keepdims=True))
    assert np.allclose(geometric, mean_logit)
    assert not np.allclose(mean_prob, mean_logit)
    for probs in (mean_logit, mean_prob):
        assert np.allclose(probs.sum(-1), 1)


def test_single_view_merge_is_softmax():
    logits = np.random.default_rng(1).normal(size=(1, 6, 3))
    for how in ("mean_prob", "mean_logit", "geometric"):
        assert np.allclose(merge(logits, how), torch.tensor(logits[0]).softmax(-1).numpy())


def test_unknown_merge():
    with pytest.raises(ValueError, match="unknown TTA merge"):
        merge(np.zeros((1, 1, 2)), "median")


def test_expand_counts_and_names():
    views = expand(["identity", "hflip", "vflip", "shift", "scale", "crops"], 0.1, 0.1, 0.875)
    assert len(views) == 1 + 1 + 1 + 4 + 2 + 5
    assert len({v.name for v in views}) == len(views)


def test_views_move_pixels_as_named():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 2] = 1.0
    assert torch.equal(apply_view(x, View("identity")), x)
    assert apply_view(x, View("hflip", hflip=True))[0, 0, 3, 5] == 1
    assert apply_view(x, View("vflip", vflip=True))[0, 0, 4, 2] == 1
    shifted = apply_view(x, View("s", dx=0.25))  # 0.25 of 8 px = 2 px to the right
    assert torch.isclose(shifted[0, 0, 3, 4], torch.tensor(1.0), atol=1e-5)
    down = apply_view(x, View("s", dy=-0.25))  # 2 px up
    assert torch.isclose(down[0, 0, 1, 2], torch.tensor(1.0), atol=1e-5)


def test_centre_crop_zooms_in():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    crop = apply_view(x, View("c", zoom=2.0))  # the central half, resized to 8x8 (bilinear: one pixel of margin)
    assert crop.shape == x.shape
    inner = x[0, 0, 1:7, 1:7]
    assert crop.min() >= inner.min() and crop.max() <= inner.max()
    assert torch.isclose(crop.mean(), x.mean(), atol=1e-4)  # symmetric about the centre


def test_apply_views_is_view_major():
    x = torch.randn(3, 2, 8, 8)
    views = expand(["identity", "hflip"], 0.1, 0.1, 0.875)
    batch = apply_views(x, views)
    assert batch.shape == (6, 2, 8, 8)
    assert torch.equal(batch[:3], x) and torch.equal(batch[3:], x.flip(3))


def test_batched_views_match_one_view_at_a_time():
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3, in_chans=1).eval()
    array = np.random.default_rng(0).integers(0, 255, size=(7, 32, 32, 1), dtype=np.uint8)
    norm = {"mean": [0.5], "std": [0.25]}
    views = expand(["identity", "hflip", "scale"], 0.1, 0.1, 0.875)
    rows = np.arange(7)
    batched = predict_views(model, array, rows, norm, views, batch_size=8, device=torch.device("cpu"))
    assert batched.shape == (4, 7, 3)
    for v, view in enumerate(views):
        single = predict_views(model, array, rows, norm, [view], batch_size=3, device=torch.device("cpu"))[0]
        assert np.allclose(batched[v], single, atol=1e-4)


def test_auto_tta_acceptance_needs_more_than_noise():
    from stages.predict import Result, better, rank

    def result(correct, ll=0.5):
        correct = np.array(correct, dtype=bool)
        return Result(float(correct.mean()), ll, correct)

    base = result([1] * 80 + [0] * 20)
    # +4 net, fixing 5 and breaking 1: 4 > sqrt(6), accepted
    assert better(result([1] * 79 + [0] + [1] * 5 + [0] * 15), base, "accuracy")
    # +4 net, fixing 20 and breaking 16: 4 < sqrt(36), noise
    assert not better(result([1] * 64 + [0] * 16 + [1] * 20), base, "accuracy")
    # log_loss: any decrease, whatever accuracy does
    assert better(result([0] * 100, ll=0.4), base, "log_loss")
    assert not better(result([1] * 100, ll=0.6), base, "log_loss")
    assert rank(result([1] * 90 + [0] * 10, ll=0.6), "accuracy") > rank(base, "accuracy")
    assert rank(result([1] * 90 + [0] * 10, ll=0.6), "log_loss") < rank(base, "log_loss")
