"""Competition metrics, shared by train (best checkpoint, early stopping, CV) and predict (auto TTA,
run weights, decision thresholds).

Every metric takes the truth and the predicted probabilities:
  single-label / binary: y is (N,) class indices, probs (N, K) rows summing to 1;
  multi-label:           y is (N, K) 0/1 tags,    probs (N, K) independent per-class probabilities.
Metrics that need hard answers threshold multi-label probabilities (`thresholds`, per class, default
0.5) and take the argmax of single-label ones. Class indices follow classes.json, which is the ordinal
order for qwk (the labels' natural order, or data.class_order).

scikit-learn computes every metric it has (accuracy, log loss, F1/F-beta, ROC AUC, Cohen's kappa);
MAP@k (Kaggle's mean average precision at k) is written here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

def sk():
    """scikit-learn's metrics, imported on first use: every command imports this module (params name
    the metrics), and `pipeline status`, `--help` or `--version` should not pay a second for sklearn."""
    import sklearn.metrics

    return sklearn.metrics


MAP_PREFIX = "map@"
AUTO_BY_TASK = {"single_label": "accuracy", "multi_label": "f_beta", "binary": "roc_auc"}


@dataclass(frozen=True)
class Options:
    """What some metrics need beyond truth and probabilities."""

    multi_label: bool = False
    k: int = 1  # map@k: answers per image
    beta: float = 2.0  # f_beta
    average: str = "samples"  # f_beta: samples (mean over images) or macro (mean over classes)
    thresholds: np.ndarray | float = 0.5  # multi-label decision thresholds, per class or one for all
    at_least_one: bool = True  # multi-label: every image answers at least its most probable tag


def decisions(probs: np.ndarray, o: Options) -> np.ndarray:
    """Hard answers: (N, K) 0/1 tags for multi-label (every image keeps at least its top tag), else (N,) argmax."""
    if not o.multi_label:
        return probs.argmax(1)
    tags = (probs >= np.broadcast_to(o.thresholds, probs.shape[1:])).astype(int)
    if o.at_least_one:  # when every training image has a tag, an empty answer is always wrong
        tags[np.arange(len(probs)), probs.argmax(1)] = 1
    return tags


def accuracy(y, probs, o: Options) -> float:
    """Share of images answered exactly (multi-label: every tag right, scikit-learn's subset accuracy)."""
    return float(sk().accuracy_score(y, decisions(probs, o)))


def macro_f1(y, probs, o: Options) -> float:
    labels = None if o.multi_label else list(range(probs.shape[1]))
    return float(sk().f1_score(y, decisions(probs, o), average="macro", labels=labels, zero_division=0))


def f_beta(y, probs, o: Options) -> float:
    """F-beta of the thresholded tags, per image then averaged (samples) or per class (macro)."""
    if not o.multi_label:
        return float(sk().fbeta_score(y, probs.argmax(1), beta=o.beta, average="macro", labels=list(range(probs.shape[1])), zero_division=0))
    return float(sk().fbeta_score(y, decisions(probs, o), beta=o.beta, average=o.average, zero_division=0))


def metric_log_loss(y, probs, o: Options) -> float:
    """Cross-entropy; multi-label: the mean binary cross-entropy over every (image, class) cell."""
    q = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    if o.multi_label:
        return float(sk().log_loss(np.asarray(y).ravel(), q.ravel(), labels=[0, 1]))
    q /= q.sum(1, keepdims=True)  # float32 softmax rows sum to 1 only within rounding
    return float(sk().log_loss(y, q, labels=list(range(probs.shape[1]))))


def roc_auc(y, probs, o: Options) -> float:
    """Binary: AUC of the second class's probability. Otherwise the macro mean of one-vs-rest AUCs
    over the classes present with both outcomes (a class absent from a fold has no AUC)."""
    truth = np.asarray(y) if o.multi_label else np.eye(probs.shape[1], dtype=int)[y]
    if not o.multi_label and probs.shape[1] == 2:
        truth, probs = truth[:, 1:], probs[:, 1:]
    scored = [k for k in range(truth.shape[1]) if 0 < truth[:, k].sum() < len(truth)]
    if not scored:
        return 0.5
    return float(sk().roc_auc_score(truth[:, scored], probs[:, scored], average="macro"))


def qwk(y, probs, o: Options) -> float:
    """Quadratic weighted Cohen's kappa between the true and the argmax class, in class-index order."""
    if o.multi_label:
        raise ValueError("qwk needs one ordinal label per image, not tags")
    labels = list(range(probs.shape[1]))
    return float(sk().cohen_kappa_score(y, probs.argmax(1), weights="quadratic", labels=labels))


def map_at_k(y, probs, o: Options) -> float:
    """Mean over images of the average precision of the k most probable classes (Kaggle's MAP@k):
    single-label, 1/rank of the true class when it is among the k, else 0."""
    truth = np.asarray(y) if o.multi_label else np.eye(probs.shape[1], dtype=int)[y]
    top = np.argsort(-probs, axis=1, kind="stable")[:, : o.k]
    hits = np.take_along_axis(truth, top, axis=1).astype(float)  # (N, k): is the answer at rank r right
    precision = np.cumsum(hits, axis=1) / np.arange(1, top.shape[1] + 1)
    relevant = np.minimum(truth.sum(1), o.k)
    return float(np.mean((precision * hits).sum(1) / np.maximum(relevant, 1)))


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    fn: object
    needs_decisions: bool  # scores hard answers (multi-label thresholds matter)

    def __call__(self, y, probs, o: Options = Options()) -> float:
        return self.fn(y, np.asarray(probs, dtype=np.float64), o)


METRICS = {m.name: m for m in (
    Metric("accuracy", True, accuracy, True),
    Metric("log_loss", False, metric_log_loss, False),
    Metric("macro_f1", True, macro_f1, True),
    Metric("roc_auc", True, roc_auc, False),
    Metric("qwk", True, qwk, True),
    Metric("f_beta", True, f_beta, True),
)}
NAMES = (*METRICS, "map@k")  # map@k: k from the sample's answers per row; or map@5 etc.


def get(name: str) -> tuple[Metric, int | None]:
    """The metric called `name`, and k for map@<k> (None: k from the data). Raises ValueError."""
    if name.startswith(MAP_PREFIX):
        k = name[len(MAP_PREFIX):]
        if k != "k" and not (k.isdigit() and int(k) >= 1):
            raise ValueError(f"{name}: expected map@k or map@<positive int>, e.g. map@5")
        return Metric(name, True, map_at_k, False), None if k == "k" else int(k)
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; expected auto, {', '.join(NAMES)} or map@<k>")
    return METRICS[name], None


def check_name(name: str) -> str:
    """Validator for params: auto or a known metric name."""
    if name != "auto":
        get(name)
    return name


def resolve(name: str, task: str, top_k: int) -> tuple[str, str]:
    """(metric, why): `auto` picks from the task kind (map@<top_k> when the sample asks for several
    answers per image); map@k takes k from the sample; an explicit name is checked against the task."""
    if name == "auto":
        if top_k > 1:
            return f"{MAP_PREFIX}{top_k}", f"auto: the sample asks for {top_k} answers per image"
        return AUTO_BY_TASK[task], f"auto for a {task.replace('_', '-')} task"
    if task == "multi_label" and name == "qwk":
        raise ValueError("qwk needs one ordinal label per image; this task is multi-label (set train.metric)")
    if name == f"{MAP_PREFIX}k":
        return f"{MAP_PREFIX}{top_k}", f"map@k with k = {top_k} from the sample / predict.top_k"
    return name, "params"


def better(metric: str, new: float, best: float | None) -> bool:
    return best is None or (new > best if get(metric)[0].higher_is_better else new < best)


def score(name: str, y, probs, options: Options = Options()) -> float:
    """One metric by name; map@<k> uses its own k."""
    metric, k = get(name)
    return metric(y, probs, options if k is None else replace(options, k=k))


def compute(y, probs, options: Options, names) -> dict[str, float]:
    """Each named metric, by name."""
    return {name: score(name, y, probs, options) for name in dict.fromkeys(names)}


THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)


def fit_thresholds(name: str, y, probs, options: Options, passes: int = 2) -> np.ndarray:
    """Per-class decision thresholds for multi-label `name`, fitted on out-of-fold predictions:
    coordinate ascent, each class's threshold set to the grid value that scores best with the other
    classes' held, `passes` times round. Starts from the options' thresholds (0.5)."""
    metric = get(name)[0]
    sign = 1.0 if metric.higher_is_better else -1.0
    thresholds = np.array(np.broadcast_to(options.thresholds, probs.shape[1:]), dtype=float)
    for _ in range(passes):
        for k in range(probs.shape[1]):
            trial = thresholds.copy()
            scores = []
            for value in THRESHOLD_GRID:
                trial[k] = value
                scores.append(sign * score(name, y, probs, replace(options, thresholds=trial)))
            current = sign * score(name, y, probs, replace(options, thresholds=thresholds))
            if max(scores) > current:  # keep the old value unless the grid really does better
                thresholds[k] = THRESHOLD_GRID[int(np.argmax(scores))]
    return thresholds
