"""Run stages in order and skip the fresh ones, with DVC's semantics.

Each stage records `lock.json` in its output folder: the params sections it read, the fingerprints of
its inputs (upstream outputs by content hash, the raw data by names/sizes/mtimes or content), a hash of
its own code (pipeline.codehash), the content hashes of its own outputs, the package version and the
times. A stage is fresh when all of that still matches; `status` says which part does not.

Train depends on the training data only. preprocess and dedup are *sided*: their train/ subfolder
depends on the train side of the competition folder alone (train/ and train.csv, never test/ or the
sample), and their lock records that side's key and output hash apart. augment and train read the
train side only (deps "preprocess:train"), so a new test set, an edited sample or a moved data folder
(data.root is not part of the params hash; data is fingerprinted relative to its root) reruns the test
side of preprocess and dedup and then predict, never train. When only the test side changed, the
finished train side is carried over (hard links) instead of being decoded again. Pseudo rounds and
distillation with test rows read test images in train, and depend on both sides.

train is written fold by fold (its fold<k>/ folders are its atomic units, so `--fold K` jobs can share a
workdir): its lock records the finished folds, its params leave out train.fold (which folds a job runs
does not change what they are), and a lock missing folds that params ask for is stale ("folds 1,3
missing"). Under torchrun, rank 0 alone writes locks and outputs; stages other than train run on rank 0.
"""

from __future__ import annotations

import errno
import importlib
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from pipeline import __version__, checks
from pipeline.artifacts import (FOLD_META, changed_files, damaged_folds, fold_damage, fold_key, finished_folds, fingerprint, folder_lock, hash_data, hash_file, list_files, read_json, staged_dir,
                                write_json, write_yaml)
from pipeline.codehash import code_groups, code_hashes
from pipeline.console import console, summary
from pipeline.checks import dataset_from_cache
from pipeline.data import SIDE_FILES, discover
from pipeline.errors import CheckError, StageError
from pipeline.locking import fold_locks, workdir_lock
from pipeline.params import Params, section
from pipeline.world import from_env

LOCK = "lock.json"
EXTERNAL = "run:"  # dep name prefix of a folder outside the workdir, fingerprinted but not a stage input
RESOLVED = "params.yaml"
TRAIN_SIDE = "train"  # the subfolder of a sided stage that depends on the training data alone

__all__ = ["finished_folds"]  # re-exported: per-fold stages and tests find it here too


@dataclass(frozen=True)
class Stage:
    name: str  # its folder under the workdir: "train", or "round1/train" for a pseudo-label round
    sections: tuple[str, ...]  # params sections (or top-level keys) the stage reads
    deps: tuple[str, ...]  # upstream stages whose outputs it reads; "preprocess:train" = that stage's train side only
    per_fold: bool = False  # train: written in place fold by fold (fold jobs run concurrently; a killed fold resumes)
    sided: bool = False  # outputs split into train/ (from the training data only) and the rest

    @property
    def kind(self) -> str:
        """The stage's code, stages.<kind>: the folder's last part, so round1/train runs stages.train."""
        return self.name.rsplit("/", 1)[-1]

    def module(self):
        return importlib.import_module(f"stages.{self.kind}")


STAGES: tuple[Stage, ...] = (
    Stage("preprocess", ("data", "preprocess"), (), sided=True),
    Stage("dedup", ("dedup",), ("preprocess",), sided=True),
    Stage("augment", ("seed", "augment"), ("preprocess:train",)),
    Stage("train", ("seed", "train", "distill"), ("preprocess:train", "dedup:train", "augment"), per_fold=True),
    Stage("predict", ("predict",), ("preprocess", "dedup", "train")),
)
PSEUDO = Stage("pseudo", ("pseudo",), ("preprocess", "dedup", "predict"))
BY_NAME = {s.name: s for s in STAGES + (PSEUDO,)}


def round_prefix(k: int) -> str:
    return "" if k == 0 else f"round{k}/"


def stages_for(params: Params) -> tuple[Stage, ...]:
    """The stages `run` and `status` walk: the base DAG, then per pseudo-label round k (params.rounds)
    pseudo from round k-1's predict, then round<k>/train (which finds the pseudo rows as its `pseudo`
    input, and reads test images, so it depends on both sides) and round<k>/predict. Round 0 is the
    plain train/ and predict/ folders."""
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
    train_only: frozenset[str] = frozenset()  # inputs of which the stage may read the train side alone
    reused: bool = False  # a sided stage: out/train/ already holds its finished train side (build the rest)

    def __getitem__(self, name: str) -> Path:
        return self.inputs[name]

    def sides(self, name: str) -> tuple[str, ...]:
        """The sides of input `name` this stage may read: ("train",) or ("train", "test")."""
        return ("train",) if name in self.train_only else ("train", "test")


def data_root(params: Params) -> Path:
    """The competition folder; the built-in example is written under the workdir on first use."""
    if params.is_example:
        from pipeline.example import materialise_digits

        return materialise_digits(Path(params.workdir) / "example" / "digits")
    return Path(params.data.root).expanduser()


def split_dep(dep: str) -> tuple[str, str | None]:
    """"preprocess:train" -> ("preprocess", "train"); "dedup" -> ("dedup", None)."""
    if dep.startswith(EXTERNAL):
        return dep, None
    name, _, side = dep.partition(":")
    return name, side or None


WEIGHTS = "weights"  # train's pretrained weights, by identity: new weights make train stale


def weights_identity(params: Params, fetch: bool) -> str:
    """The identity of the weights train loads (pipeline.weights): hub repo@revision:blob, sha256 of a local
    file, or scratch. Running train may download them (fetch); status only looks, and says when they are gone."""
    from pipeline.errors import CheckError
    from pipeline.weights import resolve_weights

    try:
        return resolve_weights(params.train, fetch=fetch).identity
    except CheckError as exc:
        if fetch:
            raise
        return f"unavailable: {exc}"


def check_weights(params: Params) -> None:
    """Weights that cannot be had (true offline and not cached, a missing path) or that are for another model
    stop a run before preprocess."""
    from pipeline.weights import check_pretrained

    if params.train.pretrained not in (None, False):
        check_pretrained(params.train)


def _dep_fingerprint(stage: Stage, params: Params, workdir: Path, dep: str, fetch: bool = False) -> str | None:
    if dep == WEIGHTS:
        return weights_identity(params, fetch)
    name, side = split_dep(dep)
    if name == "data":  # one side of the competition folder, by names relative to its root
        root = data_root(params)
        # A workdir inside the data folder is not data: its own outputs would make preprocess stale forever.
        return fingerprint(root, content=params.data.full_hash, only=SIDE_FILES[side], skip_dirs=(workdir,)) if root.is_dir() else None
    if dep.startswith(EXTERNAL):  # a train folder outside the workdir (predict.runs): names, sizes, mtimes
        folder = Path(dep[len(EXTERNAL):]).expanduser()
        return fingerprint(folder) if folder.is_dir() else None
    lock = workdir / name / LOCK
    if not lock.is_file():
        return None
    recorded = read_json(lock)
    return recorded["outs_hash"] if side is None else recorded.get("sides", {}).get(side, {}).get("outs_hash")


def _reads_test_rows(stage: Stage, params: Params) -> bool:
    """train reads test images when it learns from pseudo rows or from the teacher on test images."""
    pseudo = any(split_dep(d)[0].endswith("pseudo") for d in stage.deps)
    return pseudo or bool(params.distill.teacher and params.distill.test_weight > 0)


def _deps(stage: Stage, params: Params) -> tuple[str, ...]:
    if stage.name == "preprocess":
        return ("data:train", "data:test") + stage.deps
    if stage.kind == "predict":  # extra train runs to ensemble are inputs too, so retraining one is seen
        return stage.deps + tuple(EXTERNAL + run for run in params.predict.runs)
    if stage.kind == "train":
        deps = stage.deps
        if _reads_test_rows(stage, params):  # both sides of the cache and the clusters
            deps = tuple(split_dep(d)[0] for d in deps)
        if params.train.pretrained not in (None, False):  # the pretrained weights, by identity
            deps += (WEIGHTS,)
        if params.distill.teacher:  # so does a teacher's new prediction
            deps += (EXTERNAL + str(Path(params.distill.teacher) / "predict"),)
        return deps
    return stage.deps


def _train_side_deps(deps: tuple[str, ...]) -> tuple[str, ...]:
    """The inputs of a sided stage's train side: the train side of each input, never the test data."""
    kept = []
    for dep in deps:
        name, side = split_dep(dep)
        if side in (None, TRAIN_SIDE) and not dep.startswith(EXTERNAL):
            kept.append(f"{name}:{TRAIN_SIDE}")
    return tuple(kept)


# Keys that choose how a stage runs, not what it computes: they stay out of the lock, so moving the
# data folder, a smaller eval batch or another device never reruns anything.
HOW_NOT_WHAT = {
    "data": ("root",),
    "preprocess": ("workers",),
    "train": ("fold", "workers", "device", "eval_batch_size", "dist_timeout", "log_every", "checkpoint_every"),
    "predict": ("batch_size", "device"),
}


def _without(stage_params: dict[str, Any], keys_by_section: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """A copy of the sections with those keys left out."""
    out = dict(stage_params)
    for name, keys in keys_by_section.items():
        if isinstance(out.get(name), dict):
            out[name] = {k: v for k, v in out[name].items() if k not in keys}
    return out


def _params_of(stage: Stage, params: Params) -> dict[str, Any]:
    return _without({name: section(params, name) for name in stage.sections}, HOW_NOT_WHAT)


def wanted_folds(stage: Stage, params: Params) -> list[int]:
    if not stage.per_fold:
        return []
    return list(range(params.train.folds)) if params.train.fold is None else [params.train.fold]


def _missing_folds(stage: Stage, params: Params, lock: dict) -> list[int]:
    return [k for k in wanted_folds(stage, params) if k not in lock.get("folds", [])]


def _outs(folder: Path, known: dict[str, dict] | None = None) -> dict[str, dict]:
    """Size, mtime and content hash of every output; a file in `known` with the same size and mtime (a
    carried-over train side) keeps its recorded hash instead of being read again."""
    outs = {}
    for path in list_files(folder):
        rel = path.relative_to(folder).as_posix()
        if rel == LOCK:
            continue
        st = path.stat()
        old = (known or {}).get(rel)
        same = old is not None and (old["size"], old["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
        outs[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "hash": old["hash"] if same else hash_file(path)}
    return outs


def _side_hash(outs: dict[str, dict], side: str) -> str:
    prefix = f"{side}/"
    return hash_data({rel[len(prefix):]: rec["hash"] for rel, rec in outs.items() if rel.startswith(prefix)})


def _changed_keys(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [k for key in keys for k in _changed_keys(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)]
    return [] if old == new else [f"{prefix} ({old!r} -> {new!r})"]


def _code_change(stage: Stage, lock: dict) -> str | None:
    recorded, current = lock.get("code"), code_hashes(stage.kind)
    if recorded is None:
        return "code changed: the lock predates code hashes"
    changed = [p for p in set(recorded) | set(current) if recorded.get(p) != current.get(p)]
    return "code changed: " + ", ".join(code_groups(stage.kind, changed)) if changed else None


def _outputs_change(folder: Path, lock: dict, prefix: str = "") -> str | None:
    """Why the outputs (those under `prefix`) no longer match the lock (a file added, deleted or
    changed), or None."""
    recorded = {rel: rec for rel, rec in lock["outs"].items() if rel.startswith(prefix)}
    base = folder / prefix if prefix else folder
    current = {f"{prefix}{p.relative_to(base).as_posix()}" for p in list_files(base)} - {LOCK} if base.exists() else set()
    removed, added = sorted(set(recorded) - current), sorted(current - set(recorded))
    if removed:
        return f"output {removed[0]} deleted since the run" + (f" (and {len(removed) - 1} more)" if len(removed) > 1 else "")
    if added:
        return f"output {added[0]} added since the run"
    # Size and mtime first (cheap); when they differ the content decides, so a `touch` or a copy that
    # kept the bytes leaves the stage fresh, and only a real edit makes it stale.
    changed = changed_files(folder, recorded)
    return f"output {next(iter(changed))} modified since the run" if changed else None


def _inputs_change(stage: Stage, params: Params, workdir: Path, recorded: dict, deps, stale_upstream) -> str | None:
    """Why the inputs `deps` no longer match their `recorded` fingerprints, or None."""
    for dep in deps:
        if dep in stale_upstream:
            return f"upstream {split_dep(dep)[0]}{' (train side)' if split_dep(dep)[1] else ''} is stale"
        if recorded.get(dep) != _dep_fingerprint(stage, params, workdir, dep):
            return f"input {dep} changed" if not dep.startswith("data:") else f"{split_dep(dep)[1]} data changed"
    return None


def _train_side_status(stage: Stage, params: Params, workdir: Path, lock: dict, stale_upstream) -> str | None:
    """Why a sided stage's train side is stale, or None when it is fresh (params, code, the train side
    of its inputs and its train/ outputs unchanged)."""
    side = lock.get("sides", {}).get(TRAIN_SIDE)
    if not isinstance(side, dict) or not isinstance(side.get("deps"), dict):
        return "the lock predates train/test sides"
    if _changed_keys(lock["params"], _params_of(stage, params), ""):
        return "params changed"
    return (_code_change(stage, lock)
            or _inputs_change(stage, params, workdir, side["deps"], _train_side_deps(_deps(stage, params)), stale_upstream)
            or _outputs_change(workdir / stage.name, lock, f"{TRAIN_SIDE}/"))


def stage_status(stage: Stage, params: Params, workdir: Path, stale_upstream: set[str] = frozenset()) -> tuple[str, str]:
    """('fresh' | 'stale' | 'missing', why)."""
    state, why, _ = _status(stage, params, workdir, stale_upstream)
    return state, why


def _status(stage: Stage, params: Params, workdir: Path, stale_upstream) -> tuple[str, str, bool]:
    """(state, why, is the train side fresh) of a stage; a stage without sides is one piece."""
    lock_path = workdir / stage.name / LOCK
    if not lock_path.is_file():
        return "missing", "never run" if not (workdir / stage.name).exists() else "no lock file", False
    lock = read_json(lock_path)
    changed = _changed_keys(lock["params"], _params_of(stage, params), "")
    if changed:
        return "stale", "params changed: " + ", ".join(changed), False
    code = _code_change(stage, lock)
    if code:
        return "stale", code, False
    train_side = stage.sided and _train_side_status(stage, params, workdir, lock, stale_upstream) is None
    note = " (train side fresh)" if train_side else ""
    why = (_inputs_change(stage, params, workdir, lock["deps"], _deps(stage, params), stale_upstream)
           or _outputs_change(workdir / stage.name, lock))
    if why:
        return "stale", why + note, train_side
    missing = _missing_folds(stage, params, lock)
    if missing:
        return "stale", f"folds {','.join(map(str, missing))} missing (run `pipeline train --fold K` for each, or `pipeline train`)", False
    return "fresh", "params, inputs and outputs unchanged", True


def statuses(params: Params, workdir: Path) -> list[tuple[str, str, str]]:
    if Path(workdir).exists() and not Path(workdir).is_dir():
        raise CheckError(f"workdir {workdir} is a file: expected a folder for the artifacts (-w / workdir)")
    rows, stale = [], set()
    for stage in stages_for(params):
        state, why, train_side = _status(stage, params, workdir, stale)
        if state != "fresh":
            stale.add(stage.name)
            if stage.sided and not train_side:
                stale.add(f"{stage.name}:{TRAIN_SIDE}")
        rows.append((stage.name, state, why))
    return rows


@dataclass
class Carry:
    """A finished train side that a sided stage's new run starts from: its folder and lock record."""

    folder: Path
    side: dict  # the lock's sides["train"]: key, deps (input fingerprints), outs_hash
    outs: dict = field(default_factory=dict)  # its files' records, keyed as in the new folder ("train/...")
    link: bool = False  # place it as a link to its folder (another workdir's train side, read-only)


def _carry(stage: Stage, params: Params, workdir: Path, train_key: str, force: bool) -> Carry | None:
    """The previous train side of a sided stage, when it was built with the same key (params, code and
    train-side inputs) and its files are intact: the test side alone is then rebuilt."""
    lock_path = workdir / stage.name / LOCK
    if force or not stage.sided or not lock_path.is_file():
        return None
    lock = read_json(lock_path)
    side = lock.get("sides", {}).get(TRAIN_SIDE)
    if not side or side.get("key") != train_key or _outputs_change(workdir / stage.name, lock, f"{TRAIN_SIDE}/"):
        return None
    outs = {rel: rec for rel, rec in lock["outs"].items() if rel.startswith(f"{TRAIN_SIDE}/")}
    return Carry(workdir / stage.name / TRAIN_SIDE, side, outs)


def frozen_carry(stage: Stage, trained: Path) -> Carry:
    """The train side of a finished workdir, taken as it is (pipeline.newtest predicts a new test set
    with it): no fingerprint of training data that may not even be there."""
    lock_path = Path(trained) / stage.name / LOCK
    if not lock_path.is_file():
        raise StageError(f"{Path(trained) / stage.name} has no lock.json: {trained} is not a finished workdir (run `pipeline run` there)")
    lock = read_json(lock_path)
    side = lock.get("sides", {}).get(TRAIN_SIDE)
    if not isinstance(side, dict) or not isinstance(side.get("deps"), dict):
        raise StageError(f"{lock_path} records no train side (made by an older version): rerun `pipeline run` in {trained}")
    outs = {rel: rec for rel, rec in lock["outs"].items() if rel.startswith(f"{TRAIN_SIDE}/")}
    return Carry(Path(trained) / stage.name / TRAIN_SIDE, side, outs, link=True)


def _place_train_side(carry: Carry, dest: Path) -> None:
    """Put a carried train side at dest without copying its bytes: a linked folder stays a link (to the
    same target); otherwise hard links, or copies where the filesystem has none."""
    source = carry.folder.resolve() if carry.folder.is_symlink() else carry.folder
    if carry.link or carry.folder.is_symlink() or not _same_device(source, dest.parent):
        os.symlink(source.resolve(), dest, target_is_directory=True)
        return
    for path in list_files(source):
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def _same_device(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def _train_side_plan(stage: Stage, params: Params, workdir: Path, deps: dict, code: dict, force: bool,
                     frozen: Path | None) -> tuple[Carry | None, dict | None]:
    """A sided stage's train side: what to carry over (or None: build it) and its lock record (key and
    inputs; the output hash is added once written). `deps` gains the frozen side's recorded inputs."""
    if not stage.sided:
        return None, None
    if frozen is not None:
        carry = frozen_carry(stage, frozen)
        deps.update({dep: fp for dep, fp in carry.side["deps"].items() if dep in deps})  # data:train as recorded
        return carry, carry.side
    side_deps = {dep: _dep_fingerprint(stage, params, workdir, dep) for dep in _train_side_deps(_deps(stage, params))}
    train_key = hash_data({"params": _params_of(stage, params), "deps": side_deps, "code": code})
    return _carry(stage, params, workdir, train_key, force), {"key": train_key, "deps": side_deps}


def _inputs(params: Params, workdir: Path, all_deps: tuple[str, ...]) -> tuple[dict[str, Path], frozenset[str]]:
    """The folders a stage reads, by role (round1/train finds round1/... as paths["predict"] etc.; the
    competition folder is "data"), and the roles of which it may read the train side alone."""
    inputs, train_only = {}, set()
    for dep in all_deps:
        if dep.startswith(EXTERNAL) or dep == WEIGHTS:  # outside the workdir: fingerprinted, not read as a folder
            continue
        name, side = split_dep(dep)
        role = name.rsplit("/", 1)[-1]
        inputs[role] = data_root(params) if name == "data" else workdir / name
        if side == TRAIN_SIDE and name != "data":
            train_only.add(role)
    return inputs, frozenset(train_only)


@contextmanager
def writer_locks(stage: Stage, params: Params, workdir: Path) -> Iterator[None]:
    """One writer per workdir (pipeline.locking): train holds the workdir shared and its folds
    exclusively, so fold jobs run side by side; every other stage holds the workdir alone. Under
    torchrun rank 0 holds the locks for its job."""
    if not from_env().main:
        yield
        return
    with workdir_lock(workdir, shared=stage.per_fold):
        with fold_locks(workdir / stage.name, wanted_folds(stage, params)) if stage.per_fold else nullcontext():
            yield


def run_stage(stage: Stage, params: Params, workdir: Path, force: bool = False, frozen: Path | None = None,
              use_existing: bool = False, check: bool = True) -> dict:
    """Run one stage under the workdir's writer lock (writer_locks), after every check that can fail
    (pipeline.checks; `run` checks all its stages once up front instead): see _run_locked."""
    with writer_locks(stage, params, workdir):
        if check and from_env().main:
            require_inputs(stage, workdir)
            verify_inputs(stage, params, workdir, use_existing)  # a damaged input is the cause to name first
            check_before_work((stage,), params, workdir, frozen)
        with disk_full_is_one_line(stage, workdir):
            return _run_locked(stage, params, workdir, force, frozen, use_existing)


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


def check_before_work(stages: tuple[Stage, ...], params: Params, workdir: Path, frozen: Path | None = None) -> None:
    """pipeline.checks on the data the stages will see: the competition folder when preprocess is among
    them (or has not run), else preprocess's cache; with a frozen train side (a new test folder for a
    finished workdir) only the checks that need no training data."""
    kinds = {s.kind for s in stages}
    data = None
    if frozen is not None:
        pass
    elif "preprocess" in kinds or not (workdir / "preprocess" / LOCK).is_file():
        root = data_root(params)
        if root.is_dir() or "preprocess" in kinds:
            data = discover(root, params.data.id_column, params.data.label_column)
    else:
        data = dataset_from_cache(workdir / "preprocess")
    modules = {s.kind: s.module() for s in stages}
    checks.check(params, data, [m.check for m in modules.values() if hasattr(m, "check")])


def require_inputs(stage: Stage, workdir: Path) -> None:
    for dep in stage.deps:
        name = split_dep(dep)[0]
        if not (workdir / name / LOCK).is_file():
            command = f"pipeline {name}" if name in BY_NAME else "pipeline run"  # round<k>/ stages run from `run`
            raise StageError(f"{stage.name} needs the output of {name}, which is missing: run `{command}` first")


def _run_locked(stage: Stage, params: Params, workdir: Path, force: bool = False, frozen: Path | None = None,
               use_existing: bool = False) -> dict:
    """Run one stage into a temporary folder (per-fold stages: in place, fold by fold), record its lock,
    then swap the folder into place. Under torchrun only rank 0 writes; only train runs on every rank.
    A sided stage carries its finished train side over when only the test side changed; with `frozen`
    (a finished workdir) it takes that workdir's train side as it is."""
    require_inputs(stage, workdir)
    world = from_env()
    if world.size > 1 and stage.kind != "train":
        if not world.main:
            return {}
        console.print(f"{stage.name} is single-process: rank 0 runs it, the other {world.size - 1} processes exit")
    if world.main:
        verify_inputs(stage, params, workdir, use_existing)
    all_deps = _deps(stage, params)
    deps = {dep: _dep_fingerprint(stage, params, workdir, dep, fetch=True) for dep in all_deps}  # fetch: may download weights
    code = code_hashes(stage.kind)
    key = stage_key(_params_of(stage, params), deps, code)
    carry, side = _train_side_plan(stage, params, workdir, deps, code, force, frozen)
    inputs, train_only = _inputs(params, workdir, all_deps)
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
        result = stage.module().run(params, StagePaths(out=folder, inputs=inputs, key=key, train_only=train_only)) or {}
        if not world.main:
            return result
    with (folder_lock(folder) if stage.per_fold else staged_dir(workdir / stage.name)) as staged:
        out = folder if stage.per_fold else staged
        if carry is not None:
            _place_train_side(carry, out / TRAIN_SIDE)
            console.print(f"{stage.name}: train side unchanged, carried over from {carry.folder}; building the test side")
        if not stage.per_fold:
            paths = StagePaths(out=out, inputs=inputs, key=key, train_only=train_only, reused=carry is not None)
            result = stage.module().run(params, paths) or {}
        write_yaml(out / RESOLVED, _params_of(stage, params))
        outs = _outs(out, carry.outs if carry is not None else None)
        if side is not None:
            side = {**side, "outs_hash": _side_hash(outs, TRAIN_SIDE)}
        _write_lock(out, stage, params, deps, code, outs, side, started, t0)
    # The rename moved the files but kept their mtimes, so the recorded sizes and mtimes still hold.
    summary(f"{stage.name} done in {time.perf_counter() - t0:.1f}s", result)
    return result


def current_deps(stage: Stage, params: Params, workdir: Path) -> dict[str, str | None]:
    return {dep: _dep_fingerprint(stage, params, workdir, dep) for dep in _deps(stage, params)}


# Params that add work after the folds without changing them: turning one on keeps the finished folds.
AFTER_THE_FOLDS = {"train": ("full_fit",)}


def stage_key(stage_params: dict, deps: dict, code: dict) -> str:
    """What a per-fold stage's folds are keyed by (fold.json): its params, input fingerprints and code."""
    return hash_data({"params": _without(stage_params, AFTER_THE_FOLDS), "deps": deps, "code": code})


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
    key = stage_key(_params_of(train, params), current_deps(train, params, workdir), code_hashes(train.kind))
    problems += _fold_problems(workdir / train.name, key)
    for run in params.predict.runs:
        folder = Path(run).expanduser()
        lock = read_json(folder / LOCK) if (folder / LOCK).is_file() else None
        if lock is None:
            problems.append(f"{folder} (no {LOCK}: not a train folder written by pipeline train)")
            continue
        problems += _fold_problems(folder, stage_key(lock["params"], lock["deps"], lock.get("code", {})))
    return problems


def verify_inputs(stage: Stage, params: Params, workdir: Path, use_existing: bool = False) -> None:
    """Before a stage trusts its upstream outputs: each is still what its lock recorded, and predict's
    folds are intact, of the train lock's recipe and not stale (unless use_existing says to take them)."""
    for dep in stage.deps:
        name, side = split_dep(dep)
        if stage.kind == "predict" and name.endswith("train"):
            continue  # below: predict names the folds it refuses
        lock = read_json(workdir / name / LOCK)
        damaged = _outputs_change(workdir / name, lock, f"{side}/" if side else "") if "outs" in lock else None
        if damaged:
            raise CheckError(f"{stage.name} reads {name}, whose {damaged}: rerun `pipeline {name.rsplit('/', 1)[-1]}` (or `pipeline run`)")
    if stage.kind != "predict" or use_existing:
        return
    by_name = {s.name: s for s in stages_for(params)}
    train = next(by_name[split_dep(dep)[0]] for dep in stage.deps if split_dep(dep)[0].endswith("train"))
    problems = _train_problems(train, params, workdir)
    if problems:
        raise CheckError(f"{stage.name} will not ensemble what train did not finish as recorded: {'; '.join(problems[:4])}"
                         f"{f' (and {len(problems) - 4} more)' if len(problems) > 4 else ''}: run `pipeline run` (or `pipeline train`), "
                         "or `pipeline predict --use-existing` to predict with what is there")


def _fold_runs(out: Path) -> dict[str, dict]:
    """How each finished fold ran, from its fold.json (train: the data path and the batch size chosen
    once per run), so the lock says which engine produced the results."""
    runs = {}
    for fold in finished_folds(out):
        record = read_json(out / f"fold{fold}" / "fold.json") if (out / f"fold{fold}" / "fold.json").is_file() else {}
        runs[str(fold)] = {k: v for k, v in record.items() if k not in ("fold", "key", "files")}
    return runs


def _write_lock(out: Path, stage: Stage, params: Params, deps: dict, code: dict, outs: dict, side: dict | None, started: str, t0: float) -> None:
    write_json(
        out / LOCK,
        {
            "stage": stage.name,
            "params": _params_of(stage, params),
            "params_hash": hash_data(_params_of(stage, params)),
            "deps": deps,
            "code": code,
            "outs": outs,
            "outs_hash": hash_data({rel: rec["hash"] for rel, rec in outs.items()}),
            **({"sides": {TRAIN_SIDE: side}} if side is not None else {}),
            **({"folds": finished_folds(out), "fold_runs": _fold_runs(out)} if stage.per_fold else {}),
            "version": __version__,
            "started": started,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - t0, 2),
        },
    )


def run_all(params: Params, workdir: Path, force: bool = False) -> list[str]:
    """Run every stale stage in order; return the names of those that ran."""
    if from_env().size > 1:
        raise StageError("`pipeline run` is single-process: under torchrun launch `pipeline train`, then run "
                         "`pipeline run` or `pipeline predict` without torchrun (docs/distributed.md)")
    with workdir_lock(workdir):
        stages = stages_for(params)
        # Nothing to run, nothing to check: the checks import every stage's code (torch, timm: seconds).
        if force or any(stage_status(stage, params, workdir)[0] != "fresh" for stage in stages):
            check_before_work(stages, params, workdir)  # train's check covers the pretrained weights
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
