"""The submission file: filled in the sample's exact format, then checked against the sample on disk.

Formats, read from sample_submission.csv (id column first) and the task (Answers):
  label:        one column after the id; each row gets a class label from the competition vocabulary.
  top_k:        one label column, k answers per row (the sample shows k, or predict.top_k): the k most
                probable distinct classes, most probable first, separated like the sample.
  tags:         multi-label, one column: the tags above their decision thresholds, in class order.
  probability:  one column per class (names = class labels, in any order); each row gets probabilities
                (independent per-tag probabilities for multi-label, which need not sum to 1).
  indicator:    multi-label, one column per class whose sample cells are 0/1: each tag's decision.
  binary:       one column, two classes, and the sample holds numbers that are not labels (e.g. 0.5):
                the probability of the second class (the positive one in sorted order).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import write_csv
from pipeline.errors import CheckError, StageError
from pipeline.metrics import Options, decisions

PROB_FORMAT = "{:.6f}"


def _is_number(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class Answers:
    """What the task asks each row to answer (the defaults: one single-label answer)."""

    multi_label: bool = False
    thresholds: np.ndarray | float = 0.5  # multi-label: a tag is answered when its probability reaches this
    at_least_one: bool = True  # multi-label: every row answers at least its most probable tag
    top_k: int = 1  # single-label: answers per row
    separator: str = " "  # between tags or answers in one cell
    probabilities: bool = False  # per-class columns get probabilities even where the sample shows 0/1
    choice: str = "auto"  # predict.submission: one label column holds labels, probabilities, or auto (the sample decides)

    def tags(self, probs: np.ndarray) -> np.ndarray:
        """(N, K) 0/1 multi-label decisions."""
        return decisions(probs, Options(multi_label=True, thresholds=self.thresholds, at_least_one=self.at_least_one))

    def split(self, cell: str) -> list[str]:
        return [t for t in str(cell).split(self.separator if self.separator.strip() else None) if t]


def _is_indicator(sample: pd.DataFrame) -> bool:
    return bool(sample[sample.columns[1:]].astype(str).isin({"0", "1"}).all().all())


def sample_format(sample: pd.DataFrame, classes: list[str], answers: Answers = Answers()) -> str:
    """One of the formats of the module docstring; anything else is an error."""
    rest = list(sample.columns[1:])
    if len(rest) > 1:
        if sorted(rest) == sorted(classes):
            if answers.multi_label and not answers.probabilities and _is_indicator(sample):
                return "indicator"
            return "probability"
        unknown, absent = sorted(set(rest) - set(classes)), sorted(set(classes) - set(rest))
        raise CheckError(
            f"sample_submission.csv has columns {rest[:6]}: expected one label column or one column per class "
            f"({', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''}); columns that are not classes: {unknown[:5]}, "
            f"classes without a column: {absent[:5]}"
        )
    if not rest:
        raise CheckError("sample_submission.csv has only an id column: expected a label or probability column")
    if answers.multi_label:
        return "tags"
    if answers.top_k > 1:
        return "top_k"
    if answers.choice == "labels":
        return "label"
    if answers.choice == "probabilities":
        if len(classes) != 2:
            raise CheckError(f"predict.submission = probabilities: one column holds the probability of one class, "
                             f"but there are {len(classes)} classes; use labels, or a sample with one column per class")
        return "binary"
    return _auto_format(sample[rest[0]].astype(str).str.strip(), classes)


def _auto_format(values: pd.Series, classes: list[str]) -> str:
    """The sample decides between labels and a probability only when it is unambiguous (issue: a 0 that
    is no label, with classes 1/2 or 0/1, could mean either); otherwise one line asks."""
    if len(classes) != 2 or values.empty:
        return "label"  # one column cannot hold the probabilities of 3+ classes
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.isna().any():
        return "label"  # placeholders that are not numbers (or empty) are no probabilities
    if ((numbers > 0) & (numbers < 1)).any():
        return "binary"  # 0.5: a probability, never a label
    if values.isin(classes).all() and not set(values) <= {"0", "1", "0.0", "1.0"}:
        return "label"
    seen = ", ".join(sorted(set(values))[:3])
    raise CheckError(
        f"sample_submission.csv column {values.name!r} holds {seen} and the classes are {classes[0]}, {classes[1]}: "
        "it could ask for labels or for the probability of " + repr(classes[1])
        + "; set predict.submission to labels or probabilities"
    )


def build_submission(sample: pd.DataFrame, ids: list[str], probs: np.ndarray, classes: list[str], answers: Answers = Answers()) -> pd.DataFrame:
    """The sample with its prediction columns filled from probs (rows of `ids`), as strings."""
    id_col = sample.columns[0]
    order = {i: k for k, i in enumerate(ids)}
    missing = [i for i in sample[id_col] if i not in order]
    if missing:
        raise StageError(f"submission: {len(missing)} sample ids have no prediction (first: {', '.join(missing[:5])})")
    p = probs[[order[i] for i in sample[id_col]]]
    submission = pd.DataFrame({id_col: sample[id_col].values})
    fmt = sample_format(sample, classes, answers)
    if fmt == "probability":
        for column in sample.columns[1:]:
            submission[column] = [PROB_FORMAT.format(v) for v in p[:, classes.index(column)]]
    elif fmt == "indicator":
        tags = answers.tags(p)
        for column in sample.columns[1:]:
            submission[column] = tags[:, classes.index(column)].astype(str)
    elif fmt == "tags":
        submission[sample.columns[1]] = [answers.separator.join(c for c, on in zip(classes, row) if on) for row in answers.tags(p)]
    elif fmt == "top_k":
        top = np.argsort(-p, axis=1, kind="stable")[:, : answers.top_k]
        submission[sample.columns[1]] = [answers.separator.join(classes[k] for k in row) for row in top]
    elif fmt == "binary":
        submission[sample.columns[1]] = [PROB_FORMAT.format(v) for v in p[:, 1]]
    else:
        submission[sample.columns[1]] = [classes[k] for k in p.argmax(1)]
    return submission


def _ids_line(what: str, ids: list[str]) -> str:
    return f"{len(ids)} {what} (first: {', '.join(map(str, ids[:5]))})"


def _check_answers(cells: pd.Series, fmt: str, classes: list[str], answers: Answers) -> None:
    """tags: known, distinct tags; top_k: exactly min(k, classes) distinct known labels per row."""
    want = min(answers.top_k, len(classes))
    vocabulary = set(classes)
    for row, cell in enumerate(cells.astype(str)):
        given = answers.split(cell)
        unknown = [t for t in given if t not in vocabulary]
        if unknown:
            raise StageError(f"submission row {row}: {unknown[:5]} are not in the class vocabulary {classes[:10]}")
        if len(set(given)) != len(given):
            raise StageError(f"submission row {row}: {cell!r} repeats an answer")
        if fmt == "top_k" and len(given) != want:
            raise StageError(f"submission row {row}: {len(given)} answers, expected {want} (top-k)")


def validate_submission(submission: pd.DataFrame, sample: pd.DataFrame, classes: list[str], answers: Answers = Answers()) -> None:
    """Raise StageError naming the first problem: columns, missing/extra/duplicate/reordered ids,
    labels outside the vocabulary, probabilities that are not numbers in [0, 1] summing to 1."""
    if list(submission.columns) != list(sample.columns):
        raise StageError(f"submission columns {list(submission.columns)} differ from the sample's {list(sample.columns)}")
    id_col = sample.columns[0]
    got, want = submission[id_col].astype(str).tolist(), sample[id_col].astype(str).tolist()
    duplicated = submission[id_col][submission[id_col].duplicated()].astype(str).tolist()
    if duplicated:
        raise StageError("submission has " + _ids_line("duplicated ids", duplicated))
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing:
        raise StageError("submission lacks " + _ids_line("sample ids", missing))
    if extra:
        raise StageError("submission has " + _ids_line("ids not in the sample", extra))
    if got != want:
        first = next(k for k, (a, b) in enumerate(zip(got, want)) if a != b)
        raise StageError(f"submission ids are not in the sample's order (row {first}: {got[first]!r}, sample has {want[first]!r})")
    fmt = sample_format(sample, classes, answers)
    columns = list(sample.columns[1:])
    if fmt in ("tags", "top_k"):
        return _check_answers(submission[columns[0]], fmt, classes, answers)
    if fmt == "label":
        labels = submission[columns[0]].astype(str)
        bad = sorted(set(labels[~labels.isin(classes)]))
        if bad:
            raise StageError(f"submission labels {bad[:5]} are not in the class vocabulary {classes[:10]}")
        return
    values = submission[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    if np.isnan(values).any():
        raise StageError(f"submission has {int(np.isnan(values).sum())} empty or non-numeric probabilities")
    if (values < 0).any() or (values > 1).any():
        raise StageError("submission has probabilities outside [0, 1]")
    if fmt == "indicator" and not np.isin(values, (0, 1)).all():
        raise StageError("submission has per-class answers other than 0 and 1")
    if fmt == "probability" and not answers.multi_label and not np.allclose(values.sum(1), 1.0, atol=1e-3):
        worst = int(np.abs(values.sum(1) - 1).argmax())
        raise StageError(f"submission row {worst} ({got[worst]}): probabilities sum to {values[worst].sum():.4f}, not 1")


def write_submission(path: Path, submission: pd.DataFrame, sample: pd.DataFrame, classes: list[str], answers: Answers = Answers()) -> None:
    """Validate in memory, write atomically, then read the file back and validate what is on disk."""
    validate_submission(submission, sample, classes, answers)
    write_csv(path, submission)
    validate_submission(pd.read_csv(path, dtype=str, keep_default_na=False), sample, classes, answers)
