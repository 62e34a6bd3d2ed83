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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; an artifact is as readable as any file the user writes
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


def list_files(root: Path, skip_dirs: tuple[Path, ...] = ()) -> list[Path]:
    """Every file below root (broken links included), sorted, hidden names (temp files, locks) and the
    folders skip_dirs (a workdir inside the data folder) left out. Linked folders are followed: a
    predict-only workdir links the train side of a finished one (pipeline.newtest)."""
    root = Path(root)
    if root.is_file():
        return [root]
    skip = {os.path.realpath(d) for d in skip_dirs}
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and os.path.realpath(os.path.join(dirpath, d)) not in skip)
        files += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return files


def file_records(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """Size, mtime and content hash of every file below folder (relative names): what a lock records so
    that a later reader can tell an intact output from a damaged one (changed_files)."""
    folder = Path(folder)
    records = {}
    for path in list_files(folder):
        rel = path.relative_to(folder).as_posix()
        if rel in skip:
            continue
        st = path.stat()
        records[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "hash": hash_file(path)}
    return records


def changed_files(folder: Path, records: dict[str, dict]) -> dict[str, str]:
    """The recorded files that are no longer what was written: {name: "missing" | "modified"}.
    Cheap first (size and mtime); a file whose mtime alone moved (a copy, a touch) is hashed, and kept
    when its content is unchanged."""
    folder = Path(folder)
    changed = {}
    for rel, rec in records.items():
        path = folder / rel
        try:
            st = path.stat()
        except OSError:
            changed[rel] = "missing"
            continue
        if st.st_size != rec["size"]:
            changed[rel] = "modified"
        elif st.st_mtime_ns != rec["mtime_ns"] and hash_file(path) != rec["hash"]:
            changed[rel] = "modified"
    return changed


def fingerprint(root: Path, content: bool = False, exclude: tuple[str, ...] = (), only: tuple[str, ...] | None = None,
                skip_dirs: tuple[Path, ...] = ()) -> str:
    """Fingerprint of a file tree: names relative to root (so a moved folder keeps its fingerprint) with
    sizes and mtimes, or with content hashes. `only`: the files and folders directly under root that
    count (the train side of a competition folder is train/ and train.csv); absent ones count as absent.
    skip_dirs: folders that are not data (a workdir inside the data folder). A broken link counts by its
    name (preprocess reports it as unreadable)."""
    root = Path(root)
    rows = []
    for top in sorted(only) if only is not None else [None]:
        for path in list_files(root if top is None else root / top, skip_dirs) if top is None or (root / top).exists() else []:
            rel = path.relative_to(root).as_posix()
            if rel in exclude:
                continue
            try:
                stat = path.stat()
                rows.append([rel, hash_file(path)] if content else [rel, stat.st_size, stat.st_mtime_ns])
            except OSError as exc:  # a broken link, or a file that cannot be read
                rows.append([rel, f"unreadable: {exc.strerror}"])
    return hash_data(rows)


FOLD_META = "fold.json"


def fold_damage(fold_dir: Path) -> str | None:
    """Why a finished fold<k>/ is no longer what was written (its fold.json records its files), or None."""
    try:
        meta = read_json(Path(fold_dir) / FOLD_META)
    except (OSError, ValueError):
        return f"{FOLD_META} unreadable"
    changed = changed_files(fold_dir, meta.get("files", {}))  # folds of older versions recorded no files
    if changed:
        name, how = next(iter(changed.items()))
        return f"{name} {'deleted' if how == 'missing' else 'modified'} since it finished"
    return None


def fold_key(fold_dir: Path) -> str | None:
    try:
        return read_json(Path(fold_dir) / FOLD_META)["key"]
    except (OSError, ValueError, KeyError):
        return None


def finished_folds(folder: Path, key: str | None = None) -> list[int]:
    """The intact fold<k>/ folders a per-fold stage finished (fold.json is written last, before the
    rename); with `key`, only those trained with that params-and-inputs key. A damaged fold (a file
    deleted or changed since it finished) is not finished: it is trained again, never kept."""
    found = [d for d in Path(folder).glob(f"fold*/{FOLD_META}") if d.parent.name[4:].isdigit()]
    return sorted(int(d.parent.name[4:]) for d in found
                  if fold_damage(d.parent) is None and (key is None or fold_key(d.parent) == key))


def damaged_folds(folder: Path) -> dict[int, str]:
    found = [d.parent for d in Path(folder).glob(f"fold*/{FOLD_META}") if d.parent.name[4:].isdigit()]
    return {int(d.name[4:]): why for d in found if (why := fold_damage(d))}
