"""Run stages in order and skip the fresh ones, with DVC's semantics.

Each stage records `lock.json` in its output folder: the params sections it read, the fingerprints of
its inputs (upstream outputs by content hash, the raw data folder by names/sizes/mtimes or content),
the content hashes of its own outputs, the package version and the times. A stage is fresh when all of
that still matches; `status` says which part does not.

train is written fold by fold (its fold<k>/ folders are its atomic units, so `--fold K` jobs can share a
workdir): its lock records the finished folds, its params leave out train.fold (which folds a job runs
does not change what they are), and a lock missing folds that params ask for is stale ("folds 1,3
missing"). Under torchrun, rank 0 alone writes locks and outputs; stages other than train run on rank 0.
"""

from __future__ import annotations

import importlib
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from pipeline import __version__, distributed
from pipeline.artifacts import fingerprint, folder_lock, hash_data, hash_file, list_files, read_json, staged_dir, write_json, write_yaml
from pipeline.console import console, summary
from pipeline.errors import StageError
from pipeline.locking import fold_locks, workdir_lock
from pipeline.params import Params, section

LOCK = "lock.json"
EXTERNAL = "run:"  # dep name prefix of a folder outside the workdir, fingerprinted but not a stage input
RESOLVED = "params.yaml"


@dataclass(frozen=True)
class Stage:
    name: str  # its folder under the workdir: "train", or "round1/train" for a pseudo-label round
    sections: tuple[str, ...]  # params sections (or top-level keys) the stage reads
    deps: tuple[str, ...]  # folders of the upstream stages whose outputs it reads
    per_fold: bool = False  # train: written in place fold by fold (fold jobs run concurrently; a killed fold resumes)

    @property
    def kind(self) -> str:
        """The stage's code, stages.<kind>: the folder's last part, so round1/train runs stages.train."""
        return self.name.rsplit("/", 1)[-1]

    def module(self):
        return importlib.import_module(f"stages.{self.kind}")


STAGES: tuple[Stage, ...] = (
    Stage("preprocess", ("data", "preprocess"), ()),
    Stage("dedup", ("dedup",), ("preprocess",)),
    Stage("augment", ("seed", "augment"), ("preprocess",)),
    Stage("train", ("seed", "train", "distill"), ("preprocess", "dedup", "augment"), per_fold=True),
    Stage("predict", ("predict",), ("preprocess", "dedup", "train")),
)
PSEUDO = Stage("pseudo", ("pseudo",), ("preprocess", "dedup", "predict"))
BY_NAME = {s.name: s for s in STAGES + (PSEUDO,)}


def round_prefix(k: int) -> str:
    return "" if k == 0 else f"round{k}/"


def stages_for(params: Params) -> tuple[Stage, ...]:
    """The stages `run` and `status` walk: the base DAG, then per pseudo-label round k (params.rounds)
    pseudo from round k-1's predict, then round<k>/train (which finds the pseudo rows as its `pseudo`
    input) and round<k>/predict. Round 0 is the plain train/ and predict/ folders."""
    stages = list(STAGES)
    for k in range(1, params.rounds + 1):
        prev, cur = round_prefix(k - 1), round_prefix(k)
        stages += [
            Stage(f"{prev}pseudo", ("pseudo",), ("preprocess", "dedup", f"{prev}predict")),
            Stage(f"{cur}train", ("seed", "train", "distill"), ("preprocess", "dedup", "augment", f"{prev}pseudo"), per_fold=True),
            Stage(f"{cur}predict", ("predict",), ("preprocess", "dedup", f"{cur}train")),
        ]
    return tuple(stages)


@dataclass(frozen=True)
class StagePaths:
    """Where a stage reads and writes: `out` is its (temporary) output folder, `inputs` the folders of
    its upstream stages, plus `data` (the competition folder) for preprocess."""

    out: Path
    inputs: dict[str, Path]
    key: str = ""  # hash of the stage's params and input fingerprints: tells a per-fold stage's folds apart

    def __getitem__(self, name: str) -> Path:
        return self.inputs[name]


def data_root(params: Params) -> Path:
    """The competition folder; the built-in example is written under the workdir on first use."""
    if params.is_example:
        from pipeline.example import materialise_digits

        return materialise_digits(Path(params.workdir) / "example" / "digits")
    return Path(params.data.root).expanduser()


def _dep_fingerprint(stage: Stage, params: Params, workdir: Path, dep: str) -> str | None:
    if dep == "data":
        root = data_root(params)
        return fingerprint(root, content=params.data.full_hash) if root.is_dir() else None
    if dep.startswith(EXTERNAL):  # a train folder outside the workdir (predict.runs): names, sizes, mtimes
        folder = Path(dep[len(EXTERNAL):]).expanduser()
        return fingerprint(folder) if folder.is_dir() else None
    lock = workdir / dep / LOCK
    return read_json(lock)["outs_hash"] if lock.is_file() else None


def _deps(stage: Stage, params: Params) -> tuple[str, ...]:
    if stage.name == "preprocess":
        return ("data",) + stage.deps
    if stage.kind == "predict":  # extra train runs to ensemble are inputs too, so retraining one is seen
        return stage.deps + tuple(EXTERNAL + run for run in params.predict.runs)
    if stage.kind == "train" and params.distill.teacher:  # so does a teacher's new prediction
        return stage.deps + (EXTERNAL + str(Path(params.distill.teacher) / "predict"),)
    return stage.deps


HOW_NOT_WHAT = {"train": ("fold", "dist_timeout")}  # keys that choose how a stage runs, not its result


def _params_of(stage: Stage, params: Params) -> dict[str, Any]:
    out = {name: section(params, name) for name in stage.sections}
    for name, keys in HOW_NOT_WHAT.items():
        if name in out:
            out[name] = {k: v for k, v in out[name].items() if k not in keys}
    return out


def finished_folds(folder: Path, key: str | None = None) -> list[int]:
    """The fold<k>/ folders a per-fold stage finished (fold.json is written last, before the rename);
    with `key`, only those trained with that params-and-inputs key."""
    found = [d for d in Path(folder).glob("fold*/fold.json") if d.parent.name[4:].isdigit()]
    return sorted(int(d.parent.name[4:]) for d in found if key is None or read_json(d)["key"] == key)


def _missing_folds(stage: Stage, params: Params, lock: dict) -> list[int]:
    return [k for k in wanted_folds(stage, params) if k not in lock.get("folds", [])]


def _outs(folder: Path) -> dict[str, dict]:
    outs = {}
    for path in list_files(folder):
        rel = path.relative_to(folder).as_posix()
        if rel == LOCK:
            continue
        st = path.stat()
        outs[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "hash": hash_file(path)}
    return outs


def _changed_keys(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [k for key in keys for k in _changed_keys(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)]
    return [] if old == new else [f"{prefix} ({old!r} -> {new!r})"]


def stage_status(stage: Stage, params: Params, workdir: Path, stale_upstream: set[str] = frozenset()) -> tuple[str, str]:
    """('fresh' | 'stale' | 'missing', why)."""
    lock_path = workdir / stage.name / LOCK
    if not lock_path.is_file():
        return "missing", "never run" if not (workdir / stage.name).exists() else "no lock file"
    lock = read_json(lock_path)
    changed = _changed_keys(lock["params"], _params_of(stage, params), "")
    if changed:
        return "stale", "params changed: " + ", ".join(changed)
    for dep in _deps(stage, params):
        if dep in stale_upstream:
            return "stale", f"upstream {dep} is stale"
        if lock["deps"].get(dep) != _dep_fingerprint(stage, params, workdir, dep):
            return "stale", f"input {dep} changed"
    current = {p.relative_to(workdir / stage.name).as_posix() for p in list_files(workdir / stage.name)} - {LOCK}
    if current != set(lock["outs"]):
        return "stale", "outputs added or removed since the run"
    for rel, rec in lock["outs"].items():
        st = (workdir / stage.name / rel).stat()
        if (st.st_size, st.st_mtime_ns) != (rec["size"], rec["mtime_ns"]):
            return "stale", f"output {rel} modified since the run"
    missing = _missing_folds(stage, params, lock)
    if missing:
        return "stale", f"folds {','.join(map(str, missing))} missing (run `pipeline train --fold K` for each, or `pipeline train`)"
    return "fresh", "params, inputs and outputs unchanged"


def statuses(params: Params, workdir: Path) -> list[tuple[str, str, str]]:
    rows, stale = [], set()
    for stage in stages_for(params):
        state, why = stage_status(stage, params, workdir, stale)
        if state != "fresh":
            stale.add(stage.name)
        rows.append((stage.name, state, why))
    return rows


def wanted_folds(stage: Stage, params: Params) -> list[int]:
    if not stage.per_fold:
        return []
    return list(range(params.train.folds)) if params.train.fold is None else [params.train.fold]


@contextmanager
def writer_locks(stage: Stage, params: Params, workdir: Path) -> Iterator[None]:
    """One writer per workdir (pipeline.locking): train holds the workdir shared and its folds
    exclusively, so fold jobs run side by side; every other stage holds the workdir alone. Under
    torchrun rank 0 holds the locks for its job."""
    if not distributed.from_env().main:
        yield
        return
    with workdir_lock(workdir, shared=stage.per_fold):
        with fold_locks(workdir / stage.name, wanted_folds(stage, params)) if stage.per_fold else nullcontext():
            yield


def run_stage(stage: Stage, params: Params, workdir: Path, force: bool = False) -> dict:
    """Run one stage under the workdir's writer lock (see writer_locks and _run_locked)."""
    with writer_locks(stage, params, workdir):
        return _run_locked(stage, params, workdir, force)


def _run_locked(stage: Stage, params: Params, workdir: Path, force: bool = False) -> dict:
    """Run one stage into a temporary folder (per-fold stages: in place, fold by fold), record its lock,
    then swap the folder into place. Under torchrun only rank 0 writes; only train runs on every rank."""
    for dep in stage.deps:
        if not (workdir / dep / LOCK).is_file():
            command = f"pipeline {dep}" if dep in BY_NAME else "pipeline run"  # round<k>/ stages run from `run`
            raise StageError(f"{stage.name} needs the output of {dep}, which is missing: run `{command}` first")
    world = distributed.from_env()
    if world.size > 1 and stage.kind != "train":
        if not world.main:
            return {}
        console.print(f"{stage.name} is single-process: rank 0 runs it, the other {world.size - 1} processes exit")
    deps = {dep: _dep_fingerprint(stage, params, workdir, dep) for dep in _deps(stage, params)}
    # A stage reads its upstream folders by role: round1/train finds round1/... as paths["predict"] etc.
    inputs = {dep.rsplit("/", 1)[-1]: (data_root(params) if dep == "data" else workdir / dep)
              for dep in _deps(stage, params) if not dep.startswith(EXTERNAL)}
    key = hash_data({"params": _params_of(stage, params), "deps": deps})
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    if world.main:
        console.rule(f"[bold]{stage.name}")
    if stage.per_fold:  # every rank computes in the same folder; its writers lock what they share
        folder = workdir / stage.name
        if world.main:
            folder.mkdir(parents=True, exist_ok=True)
            for fold in finished_folds(folder) if force else []:  # finished folds are otherwise kept
                shutil.rmtree(folder / f"fold{fold}")
        result = stage.module().run(params, StagePaths(out=folder, inputs=inputs, key=key)) or {}
        if not world.main:
            return result
    with (folder_lock(folder) if stage.per_fold else staged_dir(workdir / stage.name)) as staged:
        out = folder if stage.per_fold else staged
        if not stage.per_fold:
            result = stage.module().run(params, StagePaths(out=out, inputs=inputs, key=key)) or {}
        write_yaml(out / RESOLVED, _params_of(stage, params))
        outs = _outs(out)
        write_json(
            out / LOCK,
            {
                "stage": stage.name,
                "params": _params_of(stage, params),
                "params_hash": hash_data(_params_of(stage, params)),
                "deps": deps,
                "outs": outs,
                "outs_hash": hash_data({rel: rec["hash"] for rel, rec in outs.items()}),
                **({"folds": finished_folds(out)} if stage.per_fold else {}),
                "version": __version__,
                "started": started,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - t0, 2),
            },
        )
    # The rename moved the files but kept their mtimes, so the recorded sizes and mtimes still hold.
    summary(f"{stage.name} done in {time.perf_counter() - t0:.1f}s", result)
    return result


def run_all(params: Params, workdir: Path, force: bool = False) -> list[str]:
    """Run every stale stage in order; return the names of those that ran."""
    if distributed.from_env().size > 1:
        raise StageError("`pipeline run` is single-process: under torchrun launch `pipeline train`, then run "
                         "`pipeline run` or `pipeline predict` without torchrun (docs/distributed.md)")
    with workdir_lock(workdir):
        return _run_all_locked(params, workdir, force)


def _run_all_locked(params: Params, workdir: Path, force: bool) -> list[str]:
    ran = []
    for stage in stages_for(params):
        # Upstream stages already ran, so their new locks decide (an identical output reruns nothing).
        state, why = stage_status(stage, params, workdir)
        if state == "fresh" and not force:
            console.print(f"[green]skip[/] {stage.name}: {why}")
            continue
        console.print(f"[yellow]run[/] {stage.name}: {why if not force else 'forced'}")
        run_stage(stage, params, workdir, force=force)
        ran.append(stage.name)
    return ran
