"""torchrun DDP and --fold jobs on the built-in example (CPU, gloo), plus the shard arithmetic.

The 2-process run must equal the 1-process run with the same global batch. What makes that exact up to
float summation order: both draw the same global order per epoch and each rank takes its interleaved
share, and the loss of a local batch is normalised by its global batch's weight. What the test removes
because it legitimately differs across world sizes: random augmentation (per-rank streams; all
probabilities set to 0 here), dropout (off), and BatchNorm statistics (per-rank unless train.sync_bn,
which torch only implements on GPU): the model is timm's test_vit, which has LayerNorm only.
Tolerance: OOF probabilities within 1e-5 (measured: 2.4e-7 after 2 epochs) and identical metrics.
"""

import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.distributed import World, rank_share, shard
from tests.conftest import ROOT

NO_AUG = ["augment.crop=0", "augment.affine=0", "augment.gamma=0", "augment.blur=0", "augment.color_jitter=0",
          "augment.erasing=0", "augment.hflip=0", "augment.vflip=0", "augment.rotation=0"]
TINY = ["train.model=test_vit", "train.folds=2", "train.drop_rate=0", "train.drop_path=0", "train.workers=0",
        "predict.tta=[identity]", "predict.tta_oof_images=200", *NO_AUG]  # NO_AUG too, so that status finds augment fresh


def sets(pairs):
    return [a for p in pairs for a in ("-S", p)]


def env():
    # One thread per process: two ranks on two CI cores, and the same maths in the 1-process reference.
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env=env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def torchrun(n, *args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "pipeline", *args]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """preprocess, dedup and augment (no random augmentation) of the example, once; tests copy it."""
    wd = tmp_path_factory.mktemp("example") / "art"
    runner = CliRunner()
    for stage, extra in (("preprocess", []), ("dedup", []), ("augment", sets(NO_AUG))):
        result = runner.invoke(app, [stage, "-w", str(wd), *extra])
        assert result.exit_code == 0, result.output
    return wd


def workdir(prepared, path):
    shutil.copytree(prepared, path)
    return str(path)


def oof(wd):
    return pd.read_csv(f"{wd}/train/oof.csv", dtype={"id": str, "label": str}, keep_default_na=False)


# --- the shard: pure arithmetic -------------------------------------------------------------------

@pytest.mark.parametrize("n,size", [(10, 2), (11, 3), (2, 4), (64, 8)])
def test_shard_is_disjoint_covers_the_padded_order_and_is_equal_per_rank(n, size):
    order = np.random.default_rng(0).permutation(n)
    parts = [shard(order, r, size) for r in range(size)]
    total = -(-n // size) * size
    assert {len(p) for p in parts} == {total // size}
    padded = np.resize(order, total)
    # Position by position the shards interleave back into the padded order: disjoint and complete.
    assert np.array_equal(np.stack(parts, 1).reshape(-1), padded)
    assert set(np.concatenate(parts)) == set(order)


def test_local_batches_together_are_the_global_batch_and_the_loss_normaliser_adds_up():
    rng = np.random.default_rng(1)
    order, weights = rng.permutation(50), rng.uniform(0.2, 1.0, 50)
    batch, size = 8, 2
    shares = [rank_share(order, batch, True, weights, World(r, size, r)) for r in range(size)]
    local = batch // size
    for j in range(50 // batch):
        together = np.concatenate([s.order[j * local : (j + 1) * local] for s in shares])
        assert sorted(together) == sorted(order[j * batch : (j + 1) * batch])
        # Each rank divides by global weight / world; DDP averages over ranks: the global weighted mean.
        assert np.isclose(sum(s.batch_weight[j] for s in shares), weights[order[j * batch : (j + 1) * batch]].sum())
    one = rank_share(order, batch, True, weights, World(0, 1, 0))
    assert one.batch_weight is None and np.array_equal(one.order, order)


# --- real processes -------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(prepared, tmp_path):
    args = sets(TINY + ["train.epochs=2", "train.batch_size=64"])
    one, two = workdir(prepared, tmp_path / "one"), workdir(prepared, tmp_path / "two")
    r1 = cli("train", "-w", one, *args)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = torchrun(2, "train", "-w", two, *args)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "rank 1 of 2 processes" in r2.stderr
    a, b = oof(one), oof(two)
    assert list(a.id) == list(b.id)
    pa, pb = a.filter(like="p_").to_numpy(), b.filter(like="p_").to_numpy()
    assert np.abs(pa - pb).max() < 1e-5 and (pa.argmax(1) == pb.argmax(1)).all()
    ma = pd.read_csv(f"{one}/train/fold0/metrics.csv")
    mb = pd.read_csv(f"{two}/train/fold0/metrics.csv")
    assert len(mb) == 2  # one row per epoch: rank 1 wrote nothing
    np.testing.assert_allclose(ma[["lr", "train_loss", "val_loss"]], mb[["lr", "train_loss", "val_loss"]], rtol=1e-5)
    assert list(ma.val_accuracy) == list(mb.val_accuracy)
    # One set of outputs, the same files as the single process, no leftovers, a fresh lock.
    files = lambda wd: sorted(p.relative_to(tmp_path / wd).as_posix() for p in (tmp_path / wd / "train").rglob("*") if p.is_file())  # noqa: E731
    assert files("one") == files("two")
    status = CliRunner().invoke(app, ["status", "-w", two, *args])
    assert "train           fresh" in status.output, status.output
    bad = torchrun(2, "train", "-w", two, *sets(TINY + ["train.epochs=1", "train.batch_size=63"]))
    assert bad.returncode != 0 and "train.batch_size = 63: must be divisible by the 2 processes" in bad.stderr


@pytest.mark.slow
def test_fold_jobs_then_predict_equal_an_all_folds_run(prepared, tmp_path):
    args = sets(TINY + ["train.epochs=1", "train.batch_size=64"])
    jobs, full = workdir(prepared, tmp_path / "jobs"), workdir(prepared, tmp_path / "full")
    runner = CliRunner()
    # All folds in one run (train.fold=null overrides the example's fold 0).
    r = cli("train", "-w", full, *args, "-S", "train.fold=null")
    assert r.returncode == 0, r.stderr[-3000:]
    assert runner.invoke(app, ["predict", "-w", full, *args]).exit_code == 0
    # Fold 1 as its own job: the stage is stale with fold 0 missing, and predict says so but still works.
    r = cli("train", "-w", jobs, *args, "--fold", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    status = runner.invoke(app, ["status", "-w", jobs, *args, "-S", "train.fold=null"])
    assert "folds 0 missing" in status.output, status.output
    partial = runner.invoke(app, ["predict", "-w", jobs, *args])
    assert partial.exit_code == 0 and "fold0" in partial.output and "missing" in partial.output, partial.output
    assert (tmp_path / "jobs" / "predict" / "submission.csv").is_file()
    # Fold 0 as another job; fold 1 is kept, the summary covers both; predict equals the all-folds run.
    r = cli("train", "-w", jobs, *args, "--fold", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    status = runner.invoke(app, ["status", "-w", jobs, *args, "-S", "train.fold=null"])
    assert "train           fresh" in status.output and "predict         stale" in status.output, status.output
    assert runner.invoke(app, ["predict", "-w", jobs, *args]).exit_code == 0
    a, b = oof(full).sort_values("id", ignore_index=True), oof(jobs).sort_values("id", ignore_index=True)
    pd.testing.assert_frame_equal(a, b)
    sub_full = (tmp_path / "full" / "predict" / "submission.csv").read_text()
    assert (tmp_path / "jobs" / "predict" / "submission.csv").read_text() == sub_full


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_dead_rank_fails_the_run_with_a_clear_message_instead_of_hanging(prepared, tmp_path):
    """Two ranks started by hand (what torchrun does, minus its agent, which would kill the survivor
    itself): rank 1 dies at its first epoch; rank 0 must stop on the process group's timeout or the
    broken connection, with one clear line, not hang."""
    wd = workdir(prepared, tmp_path / "wd")
    args = ["train", "-w", wd, *sets(TINY + ["train.epochs=1", "train.batch_size=64", "train.dist_timeout=20"])]
    base = {**env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    die = ("import os, sys, stages.train.loop as loop; from pipeline.cli import app\n"
           "loop.epoch_order = lambda *a, **k: os._exit(7)  # this rank dies in its first epoch\n"
           "app(sys.argv[1:])")
    dead = subprocess.Popen([sys.executable, "-c", die, *args], env={**base, "RANK": "1", "LOCAL_RANK": "1"}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    survivor = subprocess.run([sys.executable, "-m", "pipeline", *args], env={**base, "RANK": "0", "LOCAL_RANK": "0"}, cwd=ROOT,
                              capture_output=True, text=True, timeout=180)
    assert dead.wait(timeout=60) == 7
    assert survivor.returncode == 1, survivor.stderr[-3000:]
    assert "distributed training failed on rank 0 of 2" in survivor.stderr and "train.dist_timeout = 20s" in survivor.stderr
    assert time.perf_counter() - t0 < 170  # it failed by itself, not by the test's kill
    assert not (tmp_path / "wd" / "train" / "fold0").exists()  # nothing half-finished was published
