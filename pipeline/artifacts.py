"""Atomic writes and fingerprints: the artifact store's two promises.

A reader never sees a half-written file or stage folder (temp, then os.replace), and every output can be
fingerprinted cheaply (names, sizes, mtimes) or fully (content hash).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_yaml(path: Path, data: Any) -> Path:
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


def write_csv(path: Path, frame) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


@contextmanager
def staged_dir(final: Path, keep_partial: bool = False) -> Iterator[Path]:
    """Build a stage's output folder beside its final place, then swap it in.

    A killed stage leaves only `.<name>.partial`, which no later stage reads. With keep_partial the
    partial folder survives a failure and is reused by the next attempt (train resumes from it).
    """
    final = Path(final)
    partial = final.parent / f".{final.name}.partial"
    if partial.exists() and not keep_partial:
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    yield partial
    replace_dir(partial, final)


def replace_dir(src: Path, final: Path) -> None:
    """Put the finished folder `src` at `final`, replacing what was there, with renames only."""
    src, final = Path(src), Path(final)
    old = final.parent / f".{final.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(src, final)
    if old.exists():
        shutil.rmtree(old)


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on `folder` between processes (fcntl.flock on its hidden `.lock` file), for
    read-modify-write steps that concurrent jobs share, like train's summary of the finished folds."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def hash_data(data: Any) -> str:
    """Order-stable hash of plain data (params sections, fingerprints)."""
    return hash_bytes(json.dumps(data, sort_keys=True, default=str).encode())


def hash_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:16]


def list_files(root: Path) -> list[Path]:
    """Every regular file below root, sorted, hidden names (temp files, locks) left out. Linked folders
    are followed: a predict-only workdir links the train side of a finished one (pipeline.newtest)."""
    root = Path(root)
    if root.is_file():
        return [root]
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return files


def fingerprint(root: Path, content: bool = False, exclude: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> str:
    """Fingerprint of a file tree: names relative to root (so a moved folder keeps its fingerprint) with
    sizes and mtimes, or with content hashes. `only`: the files and folders directly under root that
    count (the train side of a competition folder is train/ and train.csv); absent ones count as absent."""
    root = Path(root)
    rows = []
    for top in sorted(only) if only is not None else [None]:
        for path in list_files(root if top is None else root / top) if top is None or (root / top).exists() else []:
            rel = path.relative_to(root).as_posix()
            if rel in exclude:
                continue
            stat = path.stat()
            rows.append([rel, hash_file(path)] if content else [rel, stat.st_size, stat.st_mtime_ns])
    return hash_data(rows)


def finished_folds(folder: Path, key: str | None = None) -> list[int]:
    """The fold<k>/ folders a per-fold stage finished (fold.json is written last, before the rename);
    with `key`, only those trained with that params-and-inputs key."""
    found = [d for d in Path(folder).glob("fold*/fold.json") if d.parent.name[4:].isdigit()]
    return sorted(int(d.parent.name[4:]) for d in found if key is None or read_json(d)["key"] == key)
