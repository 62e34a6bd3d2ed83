"""One writer per workdir: a second writer fails at once naming the holder; a killed holder's lock is
free again; fold jobs share the workdir but never a fold; two real `pipeline run` on one workdir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.locking import WORKDIR_LOCK, BusyError, file_lock, fold_locks, workdir_lock
from tests.conftest import ROOT

runner = CliRunner()
PIPELINE = [sys.executable, "-m", "pipeline"]

HOLD = """
import sys, time
from pipeline.locking import workdir_lock, fold_locks
from pathlib import Path
wd = Path(sys.argv[1])
shared = sys.argv[2] == "shared"
with workdir_lock(wd, shared=shared), (fold_locks(wd / "train", [int(sys.argv[3])]) if len(sys.argv) > 3 else open(__file__)):
    print("held", flush=True)
    time.sleep(120)
"""


def hold(tmp_path: Path, wd: Path, *args: str) -> subprocess.Popen:
    script = tmp_path / "hold.py"
    script.write_text(HOLD)
    proc = subprocess.Popen([sys.executable, str(script), str(wd), *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path, params_file):
    wd = tmp_path / "art"
    holder = hold(tmp_path, wd, "exclusive")
    try:
        started = time.perf_counter()
        result = runner.invoke(app, ["preprocess", "-p", str(params_file), "-w", str(wd)])
        assert result.exit_code == 2, result.output
        assert f"pid {holder.pid}" in result.output
        assert time.perf_counter() - started < 30  # it did not wait, and did no work
        assert not (wd / "preprocess").exists() and not (wd / "example").exists()
        status = runner.invoke(app, ["status", "-p", str(params_file), "-w", str(wd)])
        assert status.exit_code == 0  # status only reads: it never waits on a writer
        assert f"running: pid {holder.pid}" in status.output
    finally:
        stop(holder)


def test_a_killed_holders_lock_is_free_again(tmp_path):
    wd = tmp_path / "art"
    holder = hold(tmp_path, wd, "exclusive")
    with pytest.raises(BusyError, match=f"pid {holder.pid}"):
        with workdir_lock(wd):
            pass
    stop(holder)  # kill -9: the kernel drops its flock
    assert (wd / WORKDIR_LOCK).is_file()  # the file stays; it is the lock on it that died
    with workdir_lock(wd):
        assert f"pid {os.getpid()}" in (wd / WORKDIR_LOCK).read_text()


def test_fold_jobs_share_the_workdir_but_not_a_fold(tmp_path):
    wd = tmp_path / "art"
    holder = hold(tmp_path, wd, "shared", "1")  # a `pipeline train --fold 1` job
    try:
        with workdir_lock(wd, shared=True), fold_locks(wd / "train", [0, 2]):
            pass  # another fold job runs beside it
        with pytest.raises(BusyError, match=r"train/fold1 is in use by pid"):
            with workdir_lock(wd, shared=True), fold_locks(wd / "train", [0, 1]):
                pass
        with pytest.raises(BusyError, match=r"workdir .* in use"):
            with workdir_lock(wd):  # `pipeline run` would rewrite what the job reads
                pass
    finally:
        stop(holder)


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    with workdir_lock(tmp_path / "art"):
        with workdir_lock(tmp_path / "art"), workdir_lock(tmp_path / "art", shared=True):
            pass
    with file_lock(tmp_path / "x.lock", "x"):
        pass


def test_a_workdir_that_is_a_file_is_one_line(tmp_path, params_file):
    (tmp_path / "file").write_text("not a folder")
    for command in ("preprocess", "run", "status"):
        result = runner.invoke(app, [command, "-p", str(params_file), "-w", str(tmp_path / "file")])
        assert result.exit_code == 2, result.output
        assert "is a file: expected a folder" in result.output


@pytest.mark.slow
def test_two_real_runs_on_one_workdir(tmp_path, params_file, kaggle_dir):
    wd = tmp_path / "art"
    args = [*PIPELINE, "run", "-p", str(params_file), "-w", str(wd), "-S", f"data.root={kaggle_dir}", "-S", "preprocess.size=24",
            "-S", "train.model=resnet10t", "-S", "train.folds=2", "-S", "train.epochs=1", "-S", "train.batch_size=8",
            "-S", "train.workers=0", "-S", "predict.batch_size=8", "-S", "preprocess.workers=1"]
    env = {**os.environ, "COLUMNS": "200"}
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lock = wd / WORKDIR_LOCK
    while not (lock.is_file() and lock.read_text().strip()):
        assert first.poll() is None, first.stdout.read()
        time.sleep(0.05)
    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env)
    out_first = first.communicate()[0]
    assert first.returncode == 0, out_first
    assert second.returncode == 2, second.stdout + second.stderr
    message = (second.stdout + second.stderr).strip().splitlines()
    assert len(message) == 1 and f"pid {first.pid}" in message[0] and "pipeline run" in message[0]
    status = subprocess.run([*args[:3], "status", *args[4:]], cwd=ROOT, capture_output=True, text=True, env=env)
    assert status.stdout.count("fresh") == 5, status.stdout
    assert pd.read_csv(wd / "predict" / "submission.csv").shape[0] == 6
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "ran nothing" in again.stdout + again.stderr
