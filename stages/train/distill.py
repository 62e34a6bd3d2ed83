"""Knowledge distillation: teach one (smaller, faster) student model with an ensemble's predictions.

The teacher is a finished workdir: its predict/oof.csv (the ensemble's out-of-fold probabilities, one
row per train image, never from a model that trained on that image) teaches the train images, and its
predict/probs.csv teaches the test images, which may join training as extra rows (distill.test_weight).
The student minimises, per image,

    alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, hard label)

where x_T is the distribution softened by the temperature T (softmax(logits / T); for teacher
probabilities, p^(1/T) renormalised, which is the same thing). The T^2 keeps the KL gradients on the
scale of the hard-label term (Hinton et al., 2015). Test rows have no hard label: their loss is the
KL term alone. This module is the loss and the target loading; the train stage calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pipeline.cache import read_probs
from pipeline.errors import StageError

def soften(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Teacher probabilities at temperature T: softmax(log p / T)."""
    return (probs.clamp_min(1e-8).log() / temperature).softmax(-1)


def kl_per_sample(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float, multi_label: bool = False) -> torch.Tensor:
    """T^2 KL(teacher_T || student_T) for each image: the soft term of the loss. Multi-label: the mean
    over tags of the KL between independent Bernoulli outputs, each softened as sigmoid(logit / T)."""
    t = temperature
    if multi_label:
        teacher = (torch.logit(teacher_probs.float().clamp(1e-6, 1 - 1e-6)) / t).sigmoid()
        z = student_logits.float() / t
        kl = teacher * (teacher.log() - F.logsigmoid(z)) + (1 - teacher) * ((1 - teacher).log() - F.logsigmoid(-z))
        return kl.mean(-1) * t * t
    log_student = F.log_softmax(student_logits.float() / t, dim=-1)
    teacher = soften(teacher_probs.float(), t)
    return (teacher * (teacher.clamp_min(1e-8).log() - log_student)).sum(-1) * t * t


def kl_weights(unlabelled, alpha: float):
    """Weight of the KL term per image: alpha, or 1 for an image without a label (a test image)."""
    return torch.where(torch.as_tensor(unlabelled), 1.0, alpha).float()


def combine(hard: torch.Tensor, student_logits: torch.Tensor, teacher_probs: torch.Tensor, kl_weight: torch.Tensor,
            temperature: float, alpha: float, multi_label: bool = False) -> torch.Tensor:
    """Per image: kl_weight * T^2 KL + (1 - alpha) * hard, `hard` being the image's hard-label loss (zero
    for an image without a label); train calls it on mixed soft targets, so mixup can mix them."""
    if multi_label and alpha < 1:
        # A tag target of zeros is a label (no tag) for BCE, not an absent one: weigh the hard term by
        # the labelled share of the (possibly mixed) row, (1 - kl_weight) / (1 - alpha), 0 for a test row.
        hard = hard * (1 - kl_weight) / (1 - alpha)
    return kl_weight * kl_per_sample(student_logits, teacher_probs, temperature, multi_label) + (1 - alpha) * hard


@dataclass
class Teacher:
    train: pd.DataFrame  # index: train id; columns p_<class>: the ensemble's out-of-fold probabilities
    test: pd.DataFrame  # index: test id; columns p_<class>: the ensemble's test probabilities

    def train_targets(self, ids) -> np.ndarray:
        """(N, K) teacher probabilities for train ids; every id must have an out-of-fold prediction."""
        return _lookup(self.train, ids, "out-of-fold prediction for {n} train images", "was it trained on this data with every fold?")

    def test_targets(self, ids) -> np.ndarray:
        """(N, K) teacher probabilities for test ids (from its predict/probs.csv)."""
        return _lookup(self.test, ids, "test prediction for {n} test images", "was its predict run on this data?")


def _lookup(frame: pd.DataFrame, ids, what: str, hint: str) -> np.ndarray:
    missing = [i for i in ids if i not in frame.index]
    if missing:
        raise StageError(f"distill.teacher has no {what.format(n=len(missing))} (first: {', '.join(map(str, missing[:5]))}); {hint}")
    return frame.loc[list(ids)].to_numpy(dtype=np.float32)


def load_teacher(workdir: Path, classes: list[str]) -> Teacher:
    """The teacher workdir's predict/oof.csv and predict/probs.csv, checked against classes.json order."""
    columns = [f"p_{c}" for c in classes]
    predict = Path(workdir).expanduser() / "predict"
    hint = "distill.teacher must be a finished workdir (run `pipeline predict` there)"
    frames = [read_probs(predict / name, classes, hint).set_index("id")[columns] for name in ("oof.csv", "probs.csv")]
    return Teacher(train=frames[0], test=frames[1])
