"""Fast unit tests of the train building blocks: schedule, folds, losses, sampling, freezing."""

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from pipeline.params import load_params
from stages.train import losses
from stages.train.data import epoch_order, sampling_weights
from stages.train.folds import assign_folds
from stages.train.model import apply_freezing, head_parameters
from stages.train.schedule import lr_at


def train_params(**over):
    params, _ = load_params("params.yaml", [f"train.{k}={v}" for k, v in over.items()])
    return params.train


def test_linear_warmup_then_cosine():
    p = train_params(warmup="linear", warmup_start=0.1, schedule="cosine", min_lr=0.0)
    assert lr_at(0, 100, 10, 1.0, p, 10) == pytest.approx(0.1)
    assert lr_at(5, 100, 10, 1.0, p, 10) == pytest.approx(0.1 + 0.5 * 0.9)
    assert lr_at(10, 100, 10, 1.0, p, 10) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, p, 10) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0, p, 10) == pytest.approx(0.0, abs=1e-12)


def test_exponential_warmup_then_step_and_constant():
    p = train_params(warmup="exponential", warmup_start=0.01, schedule="step", step_epochs=2, step_gamma=0.5)
    assert lr_at(0, 100, 10, 1.0, p, 10) == pytest.approx(0.01)
    assert lr_at(5, 100, 10, 1.0, p, 10) == pytest.approx(0.01 * 100 ** 0.5)  # geometric midpoint 0.1
    assert lr_at(29, 100, 10, 1.0, p, 10) == pytest.approx(1.0)  # step every 2 epochs = 20 steps
    assert lr_at(30, 100, 10, 1.0, p, 10) == pytest.approx(0.5)
    c = train_params(schedule="constant")
    assert lr_at(80, 100, 10, 0.3, c, 10) == pytest.approx(0.3)


def test_folds_never_split_a_cluster_and_are_stratified():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, 200)
    labels = groups % 3  # a cluster has one label, as duplicates do
    folds = assign_folds(labels, groups, 5, seed=1)
    assert (folds >= 0).all()
    for g in np.unique(groups):
        assert len(np.unique(folds[groups == g])) == 1
    assert set(folds) == set(range(5))
    assert (assign_folds(labels, groups, 5, seed=1) == folds).all()


def test_weighted_ce_matches_torch_and_focal_values():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    y = torch.tensor([0, 2])
    w = torch.tensor([1.0, 2.0, 0.5])
    target = F.one_hot(y, 3).float()
    ours = losses.per_sample_loss(logits, target, w)
    assert torch.allclose(ours, F.cross_entropy(logits, y, weight=w, reduction="none"))
    p_true = logits.softmax(1)[torch.arange(2), y]
    focal = losses.per_sample_loss(logits, target, None, gamma=2.0)
    assert torch.allclose(focal, -(1 - p_true) ** 2 * p_true.log())
    # label smoothing spreads eps over all classes, as torch does
    smooth = losses.per_sample_loss(logits, losses.smooth(target, 0.1))
    assert torch.allclose(smooth, F.cross_entropy(logits, y, label_smoothing=0.1, reduction="none"))
    # a teacher-only row (all-zero target) stays zero: it learns from the teacher alone
    assert losses.smooth(torch.zeros(1, 3), 0.1).abs().sum() == 0


def test_mixing_matrix_mixes_any_row_vectors_like_the_images():
    from timm.data import Mixup

    torch.manual_seed(0)
    x = torch.rand(4, 1, 2, 2)
    mixup = Mixup(mixup_alpha=0.4, cutmix_alpha=0.0, prob=1.0, label_smoothing=0.0)
    mixed, m = losses.mixing_matrix(mixup, x.clone())
    lam = m[0, 0]
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    soft = torch.tensor([[1.0, 0.0], [0.3, 0.7], [0.0, 1.0], [0.5, 0.5]])
    assert torch.allclose(m @ soft, lam * soft + (1 - lam) * soft.flip(0), atol=1e-6)


def test_class_weights_and_balanced_sampling():
    targets = np.array([0] * 90 + [1] * 10)
    w = losses.class_weights(targets, 2, "balanced")
    assert w[1] / w[0] == pytest.approx(9.0)
    assert w[targets].mean() == pytest.approx(1.0)
    probs = sampling_weights(targets, "balanced")
    order = epoch_order(100, 0, 0, probs)
    assert 0.35 < (targets[order] == 1).mean() < 0.65
    assert sampling_weights(targets, "uniform") is None


def test_epoch_order_is_a_function_of_seed_and_epoch():
    a, b = epoch_order(50, 3, 7, None), epoch_order(50, 3, 7, None)
    assert (a == b).all() and sorted(a) == list(range(50))
    assert not (epoch_order(50, 4, 7, None) == a).all()
    pool = np.arange(10)
    assert set(epoch_order(50, 0, 7, None, pool)) == set(range(10))


def test_freezing_flips_requires_grad_at_the_right_epoch():
    model = timm.create_model("resnet10t", num_classes=3, in_chans=1)
    head = head_parameters(model)
    p = train_params(freeze_epochs=2, unfreeze="all", epochs=10)
    apply_freezing(model, p, 1)
    assert all(q.requires_grad == (id(q) in head) for q in model.parameters())
    apply_freezing(model, p, 2)
    assert all(q.requires_grad for q in model.parameters())
    g = train_params(freeze_epochs=1, unfreeze="gradual", epochs=10)
    apply_freezing(model, g, 1)
    n1 = sum(q.requires_grad for q in model.parameters())
    apply_freezing(model, g, 2)
    n2 = sum(q.requires_grad for q in model.parameters())
    assert len(head) < n1 < n2
    late = train_params(late_freeze_at=0.5, late_freeze_groups=1, epochs=10)
    apply_freezing(model, late, 4)
    assert all(q.requires_grad for q in model.parameters())
    apply_freezing(model, late, 5)
    assert not model.conv1[0].weight.requires_grad and model.get_classifier().weight.requires_grad


def test_curriculum_pool_fractions_follow_the_thresholds():
    from stages.train import curriculum

    p = train_params(curriculum=True, curriculum_thresholds=[0.2, 0.5, 0.8], curriculum_span=0.6, epochs=10)
    assert [curriculum.pool_fraction(e, p) for e in range(10)] == [0.2, 0.2, 0.5, 0.5, 0.8, 0.8, 1, 1, 1, 1]
    off = train_params(curriculum=False, epochs=10)
    assert curriculum.pool_fraction(0, off) == 1.0
    difficulty = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0])
    assert list(curriculum.pool(difficulty, 0.2)) == [1, 9]
    assert len(curriculum.pool(difficulty, 0.5)) == 5 and curriculum.pool(difficulty, 1.0) is None
    order = epoch_order(10, 0, 0, None, curriculum.pool(difficulty, 0.2))
    assert len(order) == 10 and set(order) == {1, 9}  # the epoch keeps its length, drawn from the pool


def test_device_augment_identity_and_strength():
    from stages.train.gpu_augment import augment

    x = torch.rand(4, 1, 16, 16) * 255
    off = {"hflip": 0, "vflip": 0, "crop": 0, "crop_scale": [0.5, 1], "affine": 0, "shift": 0.1, "scale": 0.1, "rotate": 10,
           "rotation": 0, "rotation_limit": 180, "color_jitter": 0, "brightness": 0.2, "contrast": 0.2, "erasing": 0, "erasing_size": [0.2, 0.4]}
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment(x, off, g), x)
    flipped = augment(x, {**off, "hflip": 1.0}, g)
    assert torch.allclose(flipped, x.flip(3), atol=1e-3)  # a mirror through grid_sample is exact
    erased = augment(x + 1, {**off, "erasing": 1.0}, g)
    assert ((erased == 0).flatten(1).sum(1) > 0).all()
