"""One writer per workdir: process locks on the workdir and on train's folds (fcntl.flock).

`pipeline run` and the stage commands other than train hold the workdir lock exclusively; `pipeline
train` holds it shared (so `--fold K` jobs run side by side but never beside a `run` or a preprocess that
would rewrite their inputs) and holds each fold it trains exclusively (so two jobs never train one fold).
A second writer fails at once with one line naming the holder's pid and command: waiting silently would
hide the mistake of starting the same run twice, and the holder may take hours.

flock locks belong to the open file and die with the process, so a lock left by a killed run (kill -9,
OOM, a node that rebooted) is simply free again: there is no stale lock to clean up. On network
filesystems flock is only as good as the server's lock support (NFSv4 and Lustre with flock mount
option honour it).
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.errors import CheckError

WORKDIR_LOCK = ".pipeline.lock"  # hidden: never fingerprinted, never an output


class BusyError(CheckError):
    """Another process holds the lock; nothing ran."""


_held: dict[tuple[str, str], list] = {}  # (path, mode) -> [file, depth]: the lock is re-entrant in one process


def command_line() -> str:
    args = sys.argv[1:]
    return " ".join(["pipeline", *args]) if args else "pipeline"


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "pid unknown"


def workdir_folder(workdir: Path) -> Path:
    """The workdir, created when missing; a path that names a file is a one-line error."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise CheckError(f"workdir {workdir} is a file: expected a folder for the artifacts (-w / workdir)")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CheckError(f"workdir {workdir}: a parent of it is a file: expected a folder (-w / workdir)") from None
    except PermissionError:
        raise CheckError(f"workdir {workdir}: permission denied creating it (-w / workdir)") from None
    return workdir


@contextmanager
def file_lock(path: Path, what: str, shared: bool = False) -> Iterator[None]:
    """Hold `path` locked (exclusive, or shared) or raise BusyError naming the holder at once."""
    path = Path(path)
    key = (str(path.resolve()), "sh" if shared else "ex")
    other = (key[0], "ex" if shared else "sh")
    if key in _held or (shared and other in _held):  # this process holds it already (run -> run_stage)
        entry = _held.get(key) or _held[other]
        entry[1] += 1
        try:
            yield
        finally:
            entry[1] -= 1
        return
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise BusyError(f"{what} is in use by {_holder(path)}; wait for it to finish or stop it, then run again") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} ({command_line()}) since {time.strftime('%H:%M:%S')}\n")
        handle.flush()
        _held[key] = [handle, 1]
        yield
    finally:
        _held.pop(key, None)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextmanager
def workdir_lock(workdir: Path, shared: bool = False) -> Iterator[None]:
    """The workdir's writer lock (see the module docstring for who holds it how)."""
    folder = workdir_folder(workdir)
    with file_lock(folder / WORKDIR_LOCK, f"workdir {folder}", shared=shared):
        yield


@contextmanager
def fold_locks(folder: Path, folds: list[int]) -> Iterator[None]:
    """Exclusive locks on the folds a train job is about to train (train/.fold<k>.lock)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not folds:
        yield
        return
    with file_lock(folder / f".fold{folds[0]}.lock", f"{folder}/fold{folds[0]}"):
        with fold_locks(folder, folds[1:]):
            yield


def writer_of(workdir: Path) -> str | None:
    """Who is writing the workdir now ("pid ... (command) since ..."), or None; for `pipeline status`."""
    path = Path(workdir) / WORKDIR_LOCK
    if not path.is_file() or any(key[0] == str(path.resolve()) for key in _held):
        return None
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(path)
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None
