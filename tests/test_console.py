"""Console output: per-epoch lines with ETAs when stderr is not a terminal, human summary tables on stdout."""

import re

import pytest

from pipeline.console import EpochReporter, EpochResult, RunClock, duration, report_epoch, summary


def row(epoch, loss=0.5, acc=0.9, seconds=10.0):
    return EpochResult(fold=0, epoch=epoch, epochs=4, train_loss=loss, val_loss=0.7, metric="accuracy", value=acc, best=acc,
                       images_per_s=123.4, seconds=seconds, row={"epoch": epoch, "lr": 0.01})


def test_duration_reads_like_a_clock():
    assert duration(5) == "0:05" and duration(125) == "2:05" and duration(3723) == "1:02:03" and duration(-1) == "0:00"


def test_non_terminal_prints_one_line_per_epoch_with_fold_and_run_eta(capsys):
    clock = RunClock(total_epochs=8)  # two folds of 4 epochs
    logged = []
    with EpochReporter("fold 0", epochs=4, start=0, clock=clock, scalars=logged.append, interactive=False) as report:
        first = report_epoch(row(0, seconds=10.0), report)
        second = report_epoch(row(1, 0.4, 0.95, seconds=20.0), report)
    err = capsys.readouterr().err
    assert err.count("fold 0 epoch ") == 2 and "fold 0 epoch 1/4" in err and "fold 0 epoch 2/4" in err  # 1-based
    assert first in err and "loss 0.5000" in first and "accuracy 0.9000" in first and "123 img/s" in first
    assert "eta fold 0:30" in first and "eta run 1:10" in first  # 10 s per epoch: 3 left in the fold, 7 in the run
    assert "eta fold 0:30" in second and "eta run 1:30" in second and "elapsed 0:30" in second  # 15 s per epoch now
    assert [(r["epoch"], r["lr"], r["val_accuracy"]) for r in logged] == [(0, 0.01, 0.9), (1, 0.01, 0.95)]


def test_resumed_and_early_stopped_epochs_leave_the_run_eta():
    clock = RunClock(total_epochs=10)
    clock.skip(3)  # a fold resumed after 3 epochs
    clock.add(2.0)
    assert clock.eta() == pytest.approx(2.0 * 6)
    with EpochReporter("fold 1", epochs=5, start=0, clock=clock, interactive=False) as report:
        report.stopped_early(2)
    assert clock.total_epochs == 4 and clock.eta() == pytest.approx(2.0 * 3)


def test_terminal_mode_announces_the_run_eta_once(capsys, monkeypatch):
    clock = RunClock(total_epochs=4)
    with EpochReporter("fold 0", epochs=2, start=0, clock=clock, interactive=True) as report:
        report_epoch(row(0), report)
        report_epoch(row(1), report)
    assert capsys.readouterr().err.count("run: 4 epochs to train") == 1


def test_summary_goes_to_stdout_as_aligned_tables(capsys):
    summary("train done", {"cv accuracy": "0.9500 ± 0.0100", "oof": {"accuracy": 0.95, "log loss": 0.2},
                           "folds": [{"fold": 0, "best epoch": "3 of 6"}, {"fold": 1, "best epoch": "6 of 6"}], "missing": []})
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "train done" and lines[1].startswith("cv accuracy")
    assert "accuracy 0.95, log loss 0.2" in out and "{" not in out and "[" not in out
    fold_lines = [line for line in lines if re.search(r"\b[01]\s+\d of 6", line)]
    assert len(fold_lines) == 2 and fold_lines[0].index("3 of 6") == fold_lines[1].index("6 of 6")  # aligned
    assert re.search(r"missing\s+none", out)
