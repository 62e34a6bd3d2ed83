"""How predict scores out-of-fold predictions: the train run's metric (train/cv.json) for auto TTA,
run weights and multi-label decision thresholds, and the paired tests that say whether a TTA
candidate beats another by more than noise."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline import metrics, tasks
from pipeline.artifacts import read_json
from pipeline.errors import StageError
from pipeline.tasks import Task

TIE_BREAK = 1e-3  # weight of the log loss beside a stepwise metric in the run-weight search
BOOTSTRAP = 50  # resamples of the measured images for the paired test of a general metric


@dataclass
class Result:
    """One TTA candidate measured on the out-of-fold images."""

    accuracy: float
    log_loss: float
    correct: np.ndarray  # per image: is the answer right
    score: float | None = None  # the TTA metric, when it is neither accuracy nor log_loss
    resampled: np.ndarray | None = None  # that metric on fixed bootstrap resamples (paired across candidates)


@dataclass(frozen=True)
class Scoring:
    task: Task
    metric: str  # train's selection metric
    tta_metric: str  # what auto TTA must improve
    options: metrics.Options

    def truth(self, labels, classes: list[str]) -> np.ndarray:
        return tasks.truth(labels, classes, self.task)

    def measure(self, truth: np.ndarray, probs: np.ndarray) -> Result:
        o = self.options
        answers = metrics.decisions(probs, o)
        correct = (answers == truth).all(1) if o.multi_label else answers == truth
        result = Result(float(correct.mean()), metrics.score("log_loss", truth, probs, o), correct)
        if self.tta_metric not in ("accuracy", "log_loss"):
            result.score = metrics.score(self.tta_metric, truth, probs, o)
            draws = np.random.default_rng(0).integers(0, len(truth), (BOOTSTRAP, len(truth)))
            result.resampled = np.array([metrics.score(self.tta_metric, truth[d], probs[d], o) for d in draws])
        return result

    def higher_is_better(self, name: str) -> bool:
        return metrics.get(name)[0].higher_is_better

    def run_objective(self, truth: np.ndarray):
        """Loss to minimise over run weights: the train metric, signed so lower is better, plus a
        thousandth of the log loss, which breaks the ties of a stepwise metric (accuracy, F-beta, AUC are
        flat between answer changes) so the search still moves towards the better run."""
        sign = -1.0 if self.higher_is_better(self.metric) else 1.0
        if self.metric == "log_loss":
            return lambda probs: metrics.score("log_loss", truth, probs, self.options)
        return lambda probs: (sign * metrics.score(self.metric, truth, probs, self.options)
                              + TIE_BREAK * metrics.score("log_loss", truth, probs, self.options))

    def thresholds(self, truth: np.ndarray, probs: np.ndarray, wanted) -> tuple[np.ndarray | float, str]:
        """Multi-label decision thresholds: predict.thresholds, or per class fitted on the OOF rows for
        the metric (auto, when the metric scores decisions; else 0.5 has no effect on it)."""
        if wanted != "auto":
            return float(wanted), "params"
        if not metrics.get(self.metric)[0].needs_decisions:
            return 0.5, f"0.5 ({self.metric} scores probabilities)"
        fitted = metrics.fit_thresholds(self.metric, truth, probs, self.options)
        return fitted, f"per class, fitted on OOF for {self.metric}"

    def with_thresholds(self, thresholds) -> "Scoring":
        return replace(self, options=replace(self.options, thresholds=thresholds))


def load(train_dir: Path, task: Task, tta_metric: str) -> Scoring:
    """The scoring of this workdir's train run (its cv.json says which metric it selected on)."""
    path = Path(train_dir) / "cv.json"
    if not path.is_file():
        raise StageError(f"{path} not found: predict needs a finished train run")
    cv = read_json(path)
    given = cv.get("metric_options", {})
    options = metrics.Options(multi_label=task.multi_label, beta=given.get("beta", 2.0), average=given.get("average", "samples"),
                              at_least_one=given.get("at_least_one", True))
    metric = cv["metric"]
    return Scoring(task, metric, metric if tta_metric == "auto" else _checked(tta_metric, metric, task), options)


def _checked(name: str, metric: str, task: Task) -> str:
    try:
        return metrics.resolve(name, task.kind, task.top_k)[0]
    except ValueError as exc:
        raise StageError(f"predict.tta_metric = {name}: {exc}") from None


def rank(r: Result, metric: str, higher_is_better: bool = True) -> tuple:
    """Sort key, larger is better: the selection metric first, log loss (or accuracy) breaks ties."""
    if metric == "log_loss":
        return (-r.log_loss, r.accuracy)
    if metric == "accuracy":
        return (r.accuracy, -r.log_loss)
    return ((r.score if higher_is_better else -r.score), -r.log_loss)


def better(a: Result, b: Result, metric: str, higher_is_better: bool = True) -> bool:
    """Does candidate `a` beat `b` by more than noise?

    log_loss: a lower log loss (it moves smoothly, so any decrease counts).
    accuracy: compare the images each gets right (a paired, McNemar-style test): the net number of
    images `a` fixes must exceed one standard error, sqrt(fixed + broken), of that number under no
    real difference. On the digits example, plain "higher accuracy" took vflip for +8 of 1438 images.
    any other metric: a paired bootstrap: the mean gain over the same resamples of the images must
    exceed one standard deviation of the gain.
    """
    if metric == "log_loss":
        return a.log_loss < b.log_loss
    if metric == "accuracy":
        fixed, broken = int((a.correct & ~b.correct).sum()), int((~a.correct & b.correct).sum())
        return fixed - broken > max(0.0, np.sqrt(fixed + broken))
    gain = (a.resampled - b.resampled) * (1 if higher_is_better else -1)
    return bool(gain.mean() > max(gain.std(), 1e-12))
