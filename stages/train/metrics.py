"""Validation scores of one epoch or of the OOF table, with pipeline.metrics: the selection metric
(train.metric, resolved for the task by `setup`) picks the best checkpoint, stops early and is the CV."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pipeline import metrics
from pipeline.errors import StageError
from pipeline.tasks import Task


@dataclass(frozen=True)
class Scoring:
    metric: str  # the resolved selection metric (auto replaced, map@k with its k)
    why: str  # how it was chosen, for the summary
    options: metrics.Options
    reported: tuple[str, ...]  # every metric written to metrics.csv and cv.json

    def scores(self, truth: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        return metrics.compute(truth, probs, self.options, self.reported)

    def better(self, new: float, best: float | None) -> bool:
        return metrics.better(self.metric, new, best)

    @property
    def higher_is_better(self) -> bool:
        return metrics.get(self.metric)[0].higher_is_better

    @property
    def uses_thresholds(self) -> bool:
        """Multi-label and scored on hard answers: per-class thresholds fitted on OOF change the score."""
        return self.options.multi_label and metrics.get(self.metric)[0].needs_decisions

    def tuned(self, truth: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, float]:
        """Per-class thresholds fitted on these predictions, and the metric with them."""
        thresholds = metrics.fit_thresholds(self.metric, truth, probs, self.options)
        return thresholds, metrics.score(self.metric, truth, probs, replace(self.options, thresholds=thresholds))


def setup(p, task: Task, train_tags: np.ndarray | None = None) -> Scoring:
    """Scoring for train params `p` on this task; train_tags (multi-label) says whether every image has a tag."""
    try:
        metric, why = metrics.resolve(p.metric, task.kind, task.top_k)
    except ValueError as exc:
        raise StageError(f"train.metric = {p.metric}: {exc}") from None
    at_least_one = train_tags is None or bool((train_tags.sum(1) > 0).all())
    options = metrics.Options(multi_label=task.multi_label, beta=p.metric_beta, average=p.metric_average, at_least_one=at_least_one)
    base = ("accuracy", "log_loss") if task.multi_label else ("accuracy", "macro_f1", "log_loss")
    return Scoring(metric, why, options, tuple(dict.fromkeys((*base, metric))))
