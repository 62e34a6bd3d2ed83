import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from stages.train.distill import combine, kl_per_sample, kl_weights, load_teacher, soften
from pipeline.errors import StageError


def test_soften_matches_temperature_softmax():
    logits = torch.randn(4, 5)
    assert torch.allclose(soften(logits.softmax(-1), 3.0), (logits / 3.0).softmax(-1), atol=1e-5)


def batch_loss(student, teacher, targets, temperature, alpha, weights=None):
    """The train loop's per-image loss (stages.train.distill.combine) averaged over a batch; targets are
    class indices, -1 for an image without a label (its hard term is zero, its KL weight 1)."""
    unlabelled = targets < 0
    hard = F.cross_entropy(student, targets.clamp_min(0), reduction="none").masked_fill(unlabelled, 0.0)
    per_image = combine(hard, student, teacher, kl_weights(unlabelled, alpha), temperature, alpha)
    weights = torch.ones(len(per_image)) if weights is None else weights
    return (per_image * weights).sum() / weights.sum()


def test_alpha_zero_is_cross_entropy_and_alpha_one_is_scaled_kl():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 4), torch.randn(6, 4).softmax(-1)
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    ce = F.cross_entropy(student, targets)
    assert torch.isclose(batch_loss(student, teacher, targets, 2.0, alpha=0.0), ce)
    t = 2.0
    kl = F.kl_div(F.log_softmax(student / t, -1), soften(teacher, t), reduction="batchmean") * t * t
    assert torch.isclose(batch_loss(student, teacher, targets, t, alpha=1.0), kl, atol=1e-5)


def test_loss_is_minimal_when_student_matches_teacher():
    teacher_logits = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = teacher_logits.softmax(-1)
    at_teacher = batch_loss(teacher_logits, teacher, torch.tensor([-1]), 4.0, 0.7)
    assert at_teacher.abs() < 1e-5  # KL only (no hard label), zero at the teacher
    assert batch_loss(torch.tensor([[0.0, 2.0, -1.0]]), teacher, torch.tensor([-1]), 4.0, 0.7) > 0.01


def test_unlabelled_rows_use_the_kl_term_alone():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 3), torch.randn(2, 3).softmax(-1)
    targets = torch.tensor([1, -1])
    per = [batch_loss(student[i:i + 1], teacher[i:i + 1], targets[i:i + 1], 2.0, 0.5) for i in range(2)]
    kl_only = batch_loss(student[1:], teacher[1:], targets[1:], 2.0, alpha=1.0)
    assert torch.isclose(per[1], kl_only)
    assert torch.isclose(per[1], kl_per_sample(student[1:], teacher[1:], 2.0)[0])


def test_gradient_moves_student_towards_teacher():
    student = torch.zeros(1, 3, requires_grad=True)
    teacher = torch.tensor([[0.8, 0.1, 0.1]])
    batch_loss(student, teacher, torch.tensor([-1]), 2.0, 0.7).backward()
    assert student.grad[0, 0] < 0 < student.grad[0, 1]


def test_load_teacher(tmp_path):
    (tmp_path / "predict").mkdir()
    pd.DataFrame({"id": ["a", "b"], "label": ["x", "y"], "p_x": [0.9, 0.2], "p_y": [0.1, 0.8]}).to_csv(tmp_path / "predict" / "oof.csv", index=False)
    pd.DataFrame({"id": ["t"], "p_x": [0.3], "p_y": [0.7]}).to_csv(tmp_path / "predict" / "probs.csv", index=False)
    teacher = load_teacher(tmp_path, ["x", "y"])
    assert np.allclose(teacher.train_targets(["b", "a"]), [[0.2, 0.8], [0.9, 0.1]])
    assert teacher.test.loc["t"].tolist() == [0.3, 0.7]
    with pytest.raises(StageError, match="no out-of-fold prediction for 1 train images \\(first: c\\)"):
        teacher.train_targets(["a", "c"])
    with pytest.raises(StageError, match="columns do not match"):
        load_teacher(tmp_path, ["x", "z"])
    with pytest.raises(StageError, match="not found"):
        load_teacher(tmp_path / "nowhere", ["x", "y"])
