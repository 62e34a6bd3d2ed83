"""Find the images and labels of a competition folder: one manifest table (id, path, label, split).

Two layouts are recognised:
  Kaggle:           train/  train.csv (id, label)  test/  sample_submission.csv
  class-per-folder: train/<class>/*  and optionally test/*
Labels are kept as strings, exactly as written, so the submission can use the competition's vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline import tasks
from pipeline.errors import DataError
from pipeline.images import IMAGE_EXTENSIONS

# What each side of a competition folder is made of. Train depends on the train side alone, so a new
# test set (a code competition swaps it in at scoring time) never retrains (pipeline.runner).
SIDE_FILES = {"train": ("train", "train.csv"), "test": ("test", "sample_submission.csv")}

ID_NAMES = ("id", "image_id", "id_code", "imageid", "image", "img", "file", "filename", "file_name", "name", "image_name", "path")
TAGS_COLUMN = "_tags"  # the manifest column built from one 0/1 column per class
INDICATOR_LAYOUT = "kaggle, one 0/1 column per class"
LABEL_NAMES = ("label", "labels", "class", "class_id", "classid", "target", "category", "y", "species", "breed", "tags",
               "attribute_ids", "diagnosis", "level")


@dataclass
class Dataset:
    manifest: pd.DataFrame  # columns: id, path, label, split ("train" | "test")
    classes: list[str]  # sorted label vocabulary
    sample: pd.DataFrame  # the submission template: id column first, test ids in order
    layout: str
    id_column: str = "id"  # train.csv's id and label columns: a test folder without a sample gets them
    label_column: str = "label"
    notes: list[str] = field(default_factory=list)  # what discovery changed or dropped, for the preprocess summary
    task: tasks.Task | None = None  # set by settle_task (pipeline.tasks)


def natural_key(label: str):
    """Sort numbers numerically and text alphabetically, so classes 2 < 10."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


IGNORED_DIRS = ("__MACOSX",)  # macOS zip resource forks: never images, never a class


def ignored(rel: Path) -> bool:
    """Hidden names and __MACOSX anywhere in a path below the data folder are not data."""
    return any(part.startswith(".") or part in IGNORED_DIRS for part in rel.parts)


def _image_files(folder: Path) -> list[Path]:
    """Files below folder, broken links included (preprocess reports them as unreadable, like any
    file it cannot open), hidden and __MACOSX paths left out."""
    return sorted(p for p in folder.rglob("*") if (p.is_file() or p.is_symlink() and not p.exists())
                  and not ignored(p.relative_to(folder)))


def _pick_column(columns: list[str], wanted: str | None, names: tuple[str, ...], what: str, csv: Path) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"{csv}: no column {wanted!r} (data.{what}_column); found columns: {', '.join(columns)}")
        return wanted
    lower = {c.lower().strip(): c for c in columns}
    for name in names:
        if name in lower:
            return lower[name]
    raise DataError(
        f"{csv}: cannot tell which column is the {what} (expected one of {', '.join(names[:6])}, ...); "
        f"found columns: {', '.join(columns)}; set data.{what}_column in params.yaml"
    )


def _match_ids(ids: pd.Series, folder: Path, csv: Path) -> list[Path]:
    """Map CSV ids (with or without extension, or relative paths) to files under folder. An id that
    names no file, or whose stem names two files (0000.png and 0000.jpg), is an error listing them."""
    files = _image_files(folder)
    by_name = {p.relative_to(folder).as_posix(): p for p in files}
    by_name.update({p.name: p for p in files})
    by_stem: dict[str, list[Path]] = {}
    for p in files:
        for stem in {p.stem, p.relative_to(folder).with_suffix("").as_posix()}:
            by_stem.setdefault(stem, []).append(p)
    paths, missing, ambiguous = [], [], []
    for raw in ids:
        key = str(raw).strip()
        path = by_name.get(key)
        if path is None and len(by_stem.get(key, [])) > 1:
            ambiguous.append(f"{key}: " + ", ".join(p.name for p in by_stem[key][:3]))
        elif path is None and key in by_stem:
            path = by_stem[key][0]
        elif path is None:
            missing.append(key)
        paths.append(path)
    if ambiguous:
        raise DataError(f"{csv}: {len(ambiguous)} ids match more than one file in {folder}/ ({'; '.join(ambiguous[:3])}): "
                        "keep one file per id, or write the extension in the id")
    if missing:
        shown = ", ".join(missing[:5])
        raise DataError(f"{csv}: {len(missing)} of {len(ids)} ids have no image file in {folder}/ (first: {shown})")
    return paths


def _strip_ids(column: pd.Series, what: str, notes: list[str]) -> pd.Series:
    stripped = column.str.strip()
    changed = int((stripped != column).sum())
    if changed:
        notes.append(f"{changed} {what} ids had spaces around them, stripped (e.g. {column[stripped != column].iloc[0]!r})")
    return stripped


def normalise_numeric_labels(labels: pd.Series, notes: list[str]) -> pd.Series:
    """"1.0" and "1" are one class when every label is a number: written the shortest way ("1", "0.5").
    Labels that are all numbers but spelled one way each are kept as written (the competition's spelling)."""
    numbers = pd.to_numeric(labels, errors="coerce")
    if numbers.isna().any():
        return labels
    canonical = numbers.map(lambda v: str(int(v)) if float(v).is_integer() else repr(float(v)))
    if canonical.nunique() == labels.nunique():
        return labels
    merged = sorted({f"{a} -> {b}" for a, b in zip(labels, canonical) if a != b})
    notes.append(f"numeric labels normalised, {labels.nunique()} spellings -> {canonical.nunique()} classes ({', '.join(merged[:4])})")
    return canonical


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    if frame.empty:
        raise DataError(f"{path}: has no rows")
    return frame


def _label_or_tags(table: pd.DataFrame, id_col: str, label_column: str | None, separator: str, csv: Path):
    """(table, label column, layout): the named or detected label column, or, failing that, one 0/1
    column per class (multi-label) folded into one column of tags."""
    others = [c for c in table.columns if c != id_col]
    try:
        return table, _pick_column(others, label_column, LABEL_NAMES, "label", csv), "kaggle"
    except DataError:
        indicators = tasks.indicator_columns(table, id_col) if label_column is None else []
        if not indicators:
            raise
    table = table.assign(**{TAGS_COLUMN: tasks.tags_from_indicators(table, indicators, separator)})
    return table, TAGS_COLUMN, INDICATOR_LAYOUT


def _kaggle(root: Path, id_column: str | None, label_column: str | None, separator: str = " ") -> Dataset:
    csv = root / "train.csv"
    table = _read_csv(csv)
    columns = list(table.columns)
    id_col = _pick_column(columns, id_column, ID_NAMES, "id", csv)
    table, label_col, layout = _label_or_tags(table, id_col, label_column, separator, csv)
    notes: list[str] = []
    empty = table[label_col].str.strip() == ""
    if empty.any():
        notes.append(f"{int(empty.sum())} rows of train.csv with an empty {label_col!r} dropped (e.g. id {table[id_col][empty].iloc[0]!r})")
    table = table[~empty].reset_index(drop=True)
    table[id_col] = _strip_ids(table[id_col], "train.csv", notes)
    if table[id_col].duplicated().any():
        dup = table[id_col][table[id_col].duplicated()].iloc[0]
        raise DataError(f"{csv}: id {dup!r} appears more than once in column {id_col!r}; ids must be unique")
    train = pd.DataFrame(
        {
            "id": table[id_col].str.strip().values,
            "path": [str(p) for p in _match_ids(table[id_col], root / "train", csv)],
            "label": normalise_numeric_labels(table[label_col].str.strip(), notes).values,
            "split": "train",
        }
    )
    test, sample = discover_test(root, id_col, label_col, notes)
    dataset = _finish(pd.concat([train, test], ignore_index=True), sample, layout, notes)
    dataset.id_column, dataset.label_column = id_col, label_col
    return dataset


def discover_test(root: Path, id_col: str = "id", label_col: str = "label", notes: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The test side alone: (manifest rows, submission template) from sample_submission.csv and test/,
    or from the files in test/ when there is no sample (the template is then id_col,label_col). Reads
    nothing of the train side, so a folder holding only a new test set can be predicted."""
    root = Path(root)
    sample_path = root / "sample_submission.csv"
    if sample_path.is_file():
        sample = _read_csv(sample_path)
        # Stripped in the sample too: an id with a trailing space must not miss its image and get the prior.
        sample[sample.columns[0]] = test_ids = _strip_ids(sample[sample.columns[0]], "sample_submission.csv",
                                                          notes if notes is not None else [])
        if not (root / "test").is_dir():
            raise DataError(f"{sample_path} lists {len(test_ids)} test ids but {root}/test/ is missing")
        test_paths = _match_ids(test_ids, root / "test", sample_path)
    else:
        sample, test_ids, test_paths = _test_from_folder(root / "test", id_col, label_col)
    test = pd.DataFrame({"id": test_ids.values, "path": [str(p) for p in test_paths], "label": "", "split": "test"},
                        columns=["id", "path", "label", "split"])
    return test, sample


def _test_from_folder(folder: Path, id_col: str = "id", label_col: str = "label"):
    files = [p for p in _image_files(folder) if p.suffix.lower() in IMAGE_EXTENSIONS] if folder.is_dir() else []
    ids = pd.Series([p.relative_to(folder).with_suffix("").as_posix() for p in files], dtype=str)
    twice = sorted(set(ids[ids.duplicated()]))
    if twice:
        names = "; ".join(", ".join(p.name for p, i in zip(files, ids) if i == stem) for stem in twice[:3])
        raise DataError(f"{folder}/: {len(twice)} test ids would name more than one file ({names}): keep one file per name")
    sample = pd.DataFrame({id_col: ids, label_col: ""})
    return sample, ids, files


def _class_folders(root: Path) -> Dataset:
    rows = []
    classes = sorted(p for p in (root / "train").iterdir() if p.is_dir() and not ignored(Path(p.name)))
    for folder in classes:
        files = [p for p in _image_files(folder)]
        if not files:
            raise DataError(f"{folder}: class folder is empty; every train/<class>/ needs at least one image")
        rows += [
            {"id": f"{folder.name}/{p.relative_to(folder).with_suffix('').as_posix()}", "path": str(p), "label": folder.name, "split": "train"}
            for p in files
        ]
    test, sample = discover_test(root)
    train = pd.DataFrame(rows, columns=["id", "path", "label", "split"])
    return _finish(pd.concat([train, test], ignore_index=True), sample, "class-per-folder")


def _finish(manifest: pd.DataFrame, sample: pd.DataFrame, layout: str, notes: list[str] | None = None) -> Dataset:
    labels = manifest.loc[manifest.split == "train", "label"]
    if labels.empty:
        raise DataError("no training images found")
    if not (manifest.split == "test").any():
        raise DataError("no test images: expected test/ with images, or sample_submission.csv listing the ids of test/")
    classes = sorted(labels.unique(), key=natural_key)
    if len(classes) < 2:
        raise DataError(f"only one class ({classes[0]!r}) in the training labels; classification needs at least two")
    return Dataset(manifest=manifest, classes=classes, sample=sample, layout=layout, notes=list(notes or []))


def settle_task(dataset: Dataset, wanted: str, separator: str, class_order: list[str] | None) -> Dataset:
    """The task kind (pipeline.tasks) and, for it, the class vocabulary: tags for multi-label, in
    natural order or data.class_order."""
    labels = dataset.manifest.loc[dataset.manifest.split == "train", "label"]
    dataset.task = tasks.detect(labels, dataset.sample, wanted, separator, dataset.layout == INDICATOR_LAYOUT)
    dataset.classes = tasks.ordered(tasks.classes_of(labels, dataset.task, natural_key), class_order)
    if len(dataset.classes) < 2:
        raise DataError(f"only one class ({dataset.classes[0]!r}) in the training labels; classification needs at least two")
    return dataset


def discover(root: Path, id_column: str | None = None, label_column: str | None = None, task: str = "auto",
             tag_separator: str = " ", class_order: list[str] | None = None) -> Dataset:
    """The dataset of a competition folder, with its task kind settled (settle_task)."""
    return settle_task(_discover(root, id_column, label_column, tag_separator), task, tag_separator, class_order)


def _discover(root: Path, id_column: str | None, label_column: str | None, separator: str) -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: competition folder not found (data.root)")
    if not (root / "train").is_dir():
        raise DataError(f"{root}: no train/ folder; expected train/ + train.csv (Kaggle) or train/<class>/ folders")
    if (root / "train.csv").is_file():
        return _kaggle(root, id_column, label_column, separator)
    if any(p.is_dir() and not ignored(Path(p.name)) for p in (root / "train").iterdir()):
        return _class_folders(root)
    raise DataError(f"{root}: train/ holds files but there is no train.csv; expected train.csv (id, label) or train/<class>/ folders")
