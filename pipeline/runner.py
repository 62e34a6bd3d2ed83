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

import errno
import importlib
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from pipeline import __version__, checks, distributed
from pipeline.artifacts import changed_files, file_records, fingerprint, folder_lock, hash_data, list_files, read_json, staged_dir, write_json, write_yaml
from pipeline.console import console, summary
from pipeline.checks import dataset_from_cache
from pipeline.data import discover
from pipeline.errors import CheckError, StageError
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
        # A workdir inside the data folder is not data: its own outputs would make preprocess stale forever.
        return fingerprint(root, content=params.data.full_hash, skip_dirs=(workdir,)) if root.is_dir() else None
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


FOLD_META = "fold.json"


def fold_damage(fold_dir: Path) -> str | None:
    """Why a finished fold<k>/ is no longer what was written (its fold.json records its files), or None."""
    try:
        meta = read_json(fold_dir / FOLD_META)
    except (OSError, ValueError):
        return f"{FOLD_META} unreadable"
    changed = changed_files(fold_dir, meta.get("files", {}))  # folds of older versions recorded no files
    if changed:
        name, how = next(iter(changed.items()))
        return f"{name} {'deleted' if how == 'missing' else 'modified'} since it finished"
    return None


def fold_key(fold_dir: Path) -> str | None:
    try:
        return read_json(fold_dir / FOLD_META)["key"]
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


def _missing_folds(stage: Stage, params: Params, lock: dict) -> list[int]:
    return [k for k in wanted_folds(stage, params) if k not in lock.get("folds", [])]


def _outs(folder: Path) -> dict[str, dict]:
    return file_records(folder, skip=(LOCK,))


def damaged_outputs(folder: Path, lock: dict) -> str | None:
    """Why a stage's recorded outputs are not what it wrote (a file added, deleted or changed), or None."""
    current = {p.relative_to(folder).as_posix() for p in list_files(folder)} - {LOCK}
    removed, added = sorted(set(lock["outs"]) - current), sorted(current - set(lock["outs"]))
    if removed:
        return f"output {removed[0]} deleted since the run" + (f" (and {len(removed) - 1} more)" if len(removed) > 1 else "")
    if added:
        return f"output {added[0]} added since the run"
    changed = changed_files(folder, lock["outs"])
    return f"output {next(iter(changed))} modified since the run" if changed else None


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
    damaged = damaged_outputs(workdir / stage.name, lock)
    if damaged:
        return "stale", damaged
    missing = _missing_folds(stage, params, lock)
    if missing:
        return "stale", f"folds {','.join(map(str, missing))} missing (run `pipeline train --fold K` for each, or `pipeline train`)"
    return "fresh", "params, inputs and outputs unchanged"


def statuses(params: Params, workdir: Path) -> list[tuple[str, str, str]]:
    if Path(workdir).exists() and not Path(workdir).is_dir():
        raise CheckError(f"workdir {workdir} is a file: expected a folder for the artifacts (-w / workdir)")
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


def run_stage(stage: Stage, params: Params, workdir: Path, force: bool = False, use_existing: bool = False,
              check: bool = True) -> dict:
    """Run one stage under the workdir's writer lock (see writer_locks and _run_locked), after every
    check that can fail (pipeline.checks; `run` checks all its stages once up front instead)."""
    with writer_locks(stage, params, workdir):
        if check and distributed.from_env().main:
            require_inputs(stage, workdir)
            verify_inputs(stage, params, workdir, use_existing)  # a damaged input is the cause to name first
            check_before_work((stage,), params, workdir)
        with disk_full_is_one_line(stage, workdir):
            return _run_locked(stage, params, workdir, force, use_existing)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def disk_full_is_one_line(stage: Stage, workdir: Path) -> Iterator[None]:
    """A full disk (or quota) ends the stage with one line naming it and the folder. What was written
    is in the stage's hidden partial folder; the last good outputs were never touched (staged_dir)."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        # torch.save reports a full disk as RuntimeError ("file write failed"), without an errno.
        full = getattr(exc, "errno", None) in DISK_FULL or (
            isinstance(exc, RuntimeError) and "write" in str(exc).lower() and _free_bytes(workdir) < (256 << 20))
        if not full:
            raise
        raise StageError(f"{stage.name}: disk full writing in {workdir / stage.name} ({_free_bytes(workdir) / 2**20:.0f} MiB free); "
                         "the last good outputs are intact: free space and run again") from None


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def check_before_work(stages: tuple[Stage, ...], params: Params, workdir: Path) -> None:
    """pipeline.checks on the data the stages will see: the competition folder when preprocess is among
    them (or has not run), else preprocess's cache."""
    kinds = {s.kind for s in stages}
    data = None
    if "preprocess" in kinds or not (workdir / "preprocess" / LOCK).is_file():
        root = data_root(params)
        if root.is_dir() or "preprocess" in kinds:
            data = discover(root, params.data.id_column, params.data.label_column)
    else:
        data = dataset_from_cache(workdir / "preprocess")
    modules = {s.kind: s.module() for s in stages}
    checks.check(params, data, [m.check for m in modules.values() if hasattr(m, "check")])


def require_inputs(stage: Stage, workdir: Path) -> None:
    for dep in stage.deps:
        if not (workdir / dep / LOCK).is_file():
            command = f"pipeline {dep}" if dep in BY_NAME else "pipeline run"  # round<k>/ stages run from `run`
            raise StageError(f"{stage.name} needs the output of {dep}, which is missing: run `{command}` first")


def current_deps(stage: Stage, params: Params, workdir: Path) -> dict[str, str | None]:
    return {dep: _dep_fingerprint(stage, params, workdir, dep) for dep in _deps(stage, params)}


def stage_key(stage_params: dict, deps: dict) -> str:
    """What a per-fold stage's folds are keyed by (fold.json): its params and input fingerprints."""
    return hash_data({"params": stage_params, "deps": deps})


def _fold_problems(folder: Path, key: str) -> list[str]:
    """The fold<k>/ checkpoints of a train folder predict must not use: damaged, or of another recipe."""
    problems = []
    for fold_dir in sorted(folder.glob("fold*/")):
        if not fold_dir.name[4:].isdigit() or not (fold_dir / "best.pt").exists() and not (fold_dir / FOLD_META).exists():
            continue
        why = fold_damage(fold_dir) or (None if fold_key(fold_dir) == key else "trained with other params or inputs")
        if why:
            problems.append(f"{fold_dir} ({why})")
    return problems


def _train_problems(train: Stage, params: Params, workdir: Path) -> list[str]:
    """Why predict must not trust this workdir's train folds and those of predict.runs (empty: it may)."""
    state, why = stage_status(train, params, workdir)
    problems = [f"{train.name} is stale ({why})"] if state == "stale" and not why.startswith("folds ") else []
    problems += _fold_problems(workdir / train.name, stage_key(_params_of(train, params), current_deps(train, params, workdir)))
    for run in params.predict.runs:
        folder = Path(run).expanduser()
        lock = read_json(folder / LOCK) if (folder / LOCK).is_file() else None
        if lock is None:
            problems.append(f"{folder} (no {LOCK}: not a train folder written by pipeline train)")
            continue
        problems += _fold_problems(folder, stage_key(lock["params"], lock["deps"]))
    return problems


def verify_inputs(stage: Stage, params: Params, workdir: Path, use_existing: bool = False) -> None:
    """Before a stage trusts its upstream outputs: each is still what its lock recorded, and predict's
    folds are intact, of the train lock's recipe and not stale (unless use_existing says to take them)."""
    for dep in stage.deps:
        if stage.kind == "predict" and dep.endswith("train"):
            continue  # below: predict names the folds it refuses
        damaged = damaged_outputs(workdir / dep, read_json(workdir / dep / LOCK))
        if damaged:
            raise CheckError(f"{stage.name} reads {dep}, whose {damaged}: rerun `pipeline {dep.rsplit('/', 1)[-1]}` (or `pipeline run`)")
    if stage.kind != "predict" or use_existing:
        return
    by_name = {s.name: s for s in stages_for(params)}
    train = next(by_name[dep] for dep in stage.deps if dep.endswith("train"))
    problems = _train_problems(train, params, workdir)
    if problems:
        raise CheckError(f"{stage.name} will not ensemble what train did not finish as recorded: {'; '.join(problems[:4])}"
                         f"{f' (and {len(problems) - 4} more)' if len(problems) > 4 else ''}: run `pipeline run` (or `pipeline train`), "
                         "or `pipeline predict --use-existing` to predict with what is there")


def _run_locked(stage: Stage, params: Params, workdir: Path, force: bool = False, use_existing: bool = False) -> dict:
    """Run one stage into a temporary folder (per-fold stages: in place, fold by fold), record its lock,
    then swap the folder into place. Under torchrun only rank 0 writes; only train runs on every rank."""
    require_inputs(stage, workdir)
    world = distributed.from_env()
    if world.size > 1 and stage.kind != "train":
        if not world.main:
            return {}
        console.print(f"{stage.name} is single-process: rank 0 runs it, the other {world.size - 1} processes exit")
    if world.main:
        verify_inputs(stage, params, workdir, use_existing)
    deps = current_deps(stage, params, workdir)
    # A stage reads its upstream folders by role: round1/train finds round1/... as paths["predict"] etc.
    inputs = {dep.rsplit("/", 1)[-1]: (data_root(params) if dep == "data" else workdir / dep)
              for dep in _deps(stage, params) if not dep.startswith(EXTERNAL)}
    key = stage_key(_params_of(stage, params), deps)
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
            for fold, why in damaged_folds(folder).items():
                console.print(f"[yellow]fold {fold}[/]: {why}; training it again")
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
        check_before_work(stages_for(params), params, workdir)
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
        run_stage(stage, params, workdir, force=force, check=False)
        ran.append(stage.name)
    return ran
