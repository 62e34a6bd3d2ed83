"""Task kinds: single-label, multi-label, binary, detected from train.csv and the sample (data.task
overrides), and the per-image answers the sample asks for (top-k).

  multi_label   a label cell holds several tags separated by data.tag_separator (and the tags recur in
                more combinations than there are tags, so class names with spaces such as
                "Common wheat" stay single-label), or train.csv has one 0/1 column per class;
  binary        two classes and a sample whose one answer column holds numbers that are not class
                labels (a probability of the positive class, e.g. 0.5);
  single_label  everything else.
top_k: the sample's label cells hold k separated labels (MAP@k competitions) for a single-label task.

Multi-label labels travel through the manifest and index.csv as one string of tags joined by the
separator; classes.json holds the tag vocabulary. Preprocess writes task.json, which train, predict
and pseudo read (pipeline.cache.read_task).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from pipeline.errors import DataError

TASKS = ("single_label", "multi_label", "binary")
BINARY_VALUES = {"0", "1", "0.0", "1.0"}


@dataclass(frozen=True)
class Task:
    kind: str  # single_label, multi_label or binary
    why: str  # what the detection saw, said in the summaries
    separator: str  # between tags (multi-label) or answers (top-k) in one cell
    top_k: int  # answers per image the sample asks for (1: one)

    @property
    def multi_label(self) -> bool:
        return self.kind == "multi_label"

    def as_json(self) -> dict:
        return asdict(self)


def split_tags(cell: str, separator: str) -> list[str]:
    return [t for t in str(cell).split(separator if separator.strip() else None) if t]


def tag_vocabulary(labels: pd.Series, separator: str) -> set[str]:
    return {t for cell in labels for t in split_tags(cell, separator)}


def looks_multi_label(labels: pd.Series, separator: str) -> bool:
    """Several tags in some cell, and more distinct combinations than distinct tags: real tags recur
    across combinations, while words of multi-word class names ("Sugar beet") mostly do not."""
    multi = labels.map(lambda c: len(split_tags(c, separator)) > 1)
    if not multi.any():
        return False
    return labels.map(lambda c: " ".join(sorted(split_tags(c, separator)))).nunique() > len(tag_vocabulary(labels, separator))


def indicator_columns(table: pd.DataFrame, id_col: str) -> list[str]:
    """The columns of train.csv that are all 0/1 (one per class, multi-label), when there are two or more
    and nothing else besides the id; else []."""
    rest = [c for c in table.columns if c != id_col]
    if len(rest) >= 2 and all(table[c].astype(str).str.strip().isin(BINARY_VALUES).all() for c in rest):
        return rest
    return []


def tags_from_indicators(table: pd.DataFrame, columns: list[str], separator: str) -> pd.Series:
    """One 0/1 column per class -> one cell of tags per row (the manifest's multi-label form)."""
    on = table[columns].astype(str).apply(lambda col: col.str.strip().isin({"1", "1.0"}))
    return on.apply(lambda row: separator.join(c for c, v in zip(columns, row) if v), axis=1)


def sample_answers(sample: pd.DataFrame, separator: str) -> int:
    """How many answers each row of the sample's single answer column holds (1 when unsure)."""
    if sample.shape[1] != 2 or sample.empty:
        return 1
    counts = sample[sample.columns[1]].map(lambda c: len(split_tags(c, separator)))
    return int(counts.mode().iloc[0]) if counts.min() >= 1 and counts.nunique() == 1 else 1


def _binary_sample(sample: pd.DataFrame, classes: list[str]) -> bool:
    if sample.shape[1] != 2 or sample.empty:
        return False
    values = sample[sample.columns[1]].astype(str)
    numeric = pd.to_numeric(values, errors="coerce").notna().all()
    return bool(numeric and not values.isin(classes).all())


def detect(labels: pd.Series, sample: pd.DataFrame, wanted: str, separator: str, from_indicators: bool = False) -> Task:
    """The task of a competition (module docstring); `wanted` is data.task (auto: detect)."""
    tags = tag_vocabulary(labels, separator)
    multi = from_indicators or looks_multi_label(labels, separator)
    classes = sorted(tags) if multi else sorted(labels.unique())
    if wanted == "auto":
        if multi:
            kind, why = "multi_label", ("one 0/1 column per class in train.csv" if from_indicators
                                        else f"label cells hold several tags separated by {separator!r}")
        elif len(classes) == 2 and _binary_sample(sample, classes):
            kind, why = "binary", "two classes and a probability column in the sample"
        else:
            kind, why = "single_label", "one label per image"
    else:
        kind, why = wanted, "data.task"
        if kind == "binary" and len(classes) != 2:
            raise DataError(f"data.task = binary but the training labels hold {len(classes)} classes; expected 2")
    top_k = sample_answers(sample, separator) if kind != "multi_label" else 1
    return Task(kind=kind, why=why, separator=separator, top_k=top_k)


def classes_of(labels: pd.Series, task: Task, sort_key) -> list[str]:
    """The class vocabulary: the tags for multi-label, the labels otherwise, in natural order."""
    found = tag_vocabulary(labels, task.separator) if task.multi_label else set(labels)
    return sorted(found, key=sort_key)


def ordered(classes: list[str], class_order: list[str] | None) -> list[str]:
    """data.class_order (the ordinal order qwk scores in) when set; it must name every class once."""
    if not class_order:
        return classes
    given = [str(c) for c in class_order]
    if sorted(given) != sorted(classes):
        missing, extra = sorted(set(classes) - set(given)), sorted(set(given) - set(classes))
        raise DataError(f"data.class_order must list each training class once (missing: {missing[:5]}, not a class: {extra[:5]})")
    return given


def present(classes: list[str], labels: pd.Series, task: Task) -> list[str]:
    """The classes (in order) that some of these labels hold (a class whose images were all unreadable goes)."""
    found = tag_vocabulary(labels, task.separator) if task.multi_label else set(labels)
    return [c for c in classes if c in found]


def from_json(raw: dict) -> Task:
    return Task(**{k: raw[k] for k in ("kind", "why", "separator", "top_k")})


def targets(labels, classes: list[str], task: Task) -> np.ndarray:
    """(N, K) float32 training targets: multi-hot tags for multi-label, one-hot otherwise."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(labels), len(classes)), dtype=np.float32)
    for row, cell in enumerate(labels):
        cells = split_tags(cell, task.separator) if task.multi_label else [cell]
        for tag in cells:
            if tag in index:
                out[row, index[tag]] = 1.0
    return out


def truth(labels, classes: list[str], task: Task) -> np.ndarray:
    """What metrics score against: (N, K) 0/1 tags for multi-label, (N,) class indices otherwise."""
    if task.multi_label:
        return targets(labels, classes, task).astype(int)
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[c] for c in labels], dtype=int)


def primary(labels: pd.Series, classes: list[str], task: Task) -> pd.Series:
    """One class per image, for per-class views (augment's preview and rare-class copies): the label,
    or for multi-label the image's rarest tag."""
    if not task.multi_label:
        return labels
    tags = targets(labels, classes, task)
    rarity = np.where(tags > 0, tags.sum(0)[None, :], np.inf)
    return pd.Series(np.array(classes)[rarity.argmin(1)], index=labels.index)
