"""Terminal output: progress bars for long loops, per-epoch reports, one-screen stage summaries (rich).

Progress and logs go to stderr; results and summaries go to stdout, so `pipeline train > results.txt`
keeps the results and a script can parse them. When stderr is not a terminal (SLURM, nohup, `| tee`),
a progress bar would only show at its end, so each epoch prints one plain line instead, with the ETA of
the fold and of the run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

T = TypeVar("T")

console = Console(stderr=True, highlight=False)  # progress and logs
results = Console(highlight=False)  # summaries and results (stdout)


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"  # under torchrun one bar and one log, rank 0's


def progress_bar(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=transient,
        disable=not is_main_process(),
    )


def track(items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
    with progress_bar() as bar:
        task = bar.add_task(description, total=total, info="")
        for item in items:
            yield item
            bar.advance(task)


def duration(seconds: float) -> str:
    """1:02:03 / 4:05: what a person reads in a log, never '3723.4s'."""
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class RunClock:
    """Epochs this run still has to train, over all its folds, and how long the done ones took: the
    run-level ETA. A resumed fold or an early stop takes its epochs off the total (`skip`); a fold that
    trains more epochs than planned (train.min_steps) adds them (a negative skip)."""

    total_epochs: int
    done: int = 0
    seconds: float = 0.0
    announced: bool = False

    def skip(self, epochs: int) -> None:
        self.total_epochs -= epochs

    def add(self, seconds: float) -> None:
        self.done, self.seconds = self.done + 1, self.seconds + seconds

    def eta(self) -> float:
        return self.seconds / max(1, self.done) * max(0, self.total_epochs - self.done)


@dataclass(frozen=True)
class EpochResult:
    """One finished training epoch, as every epoch log reads it (progress bar, batch-job log, TensorBoard)."""

    fold: int
    epoch: int  # 0-based
    epochs: int  # planned epochs of the fold
    train_loss: float
    val_loss: float
    metric: str
    value: float  # validation `metric` this epoch
    best: float  # best validation `metric` so far
    images_per_s: float  # training images per second (the step alone, no validation)
    seconds: float  # the whole epoch: training, validation, checkpoint
    row: dict = field(default_factory=dict)  # the epoch's metrics.csv row (lr, every validation metric): TensorBoard's scalars


class EpochReporter:
    """One fold's epochs as they end: a progress bar when stderr is a terminal, else one line per epoch
    with the fold's and the run's ETA; optionally each epoch's row as TensorBoard scalars (`scalars`).

        with EpochReporter("fold 0", epochs=40, start=0, clock=clock) as report:
            ... report.batch("loss 0.41  812 img/s")   # inside the epoch (the bar only)
            report_epoch(EpochResult(...), report)     # the one call per epoch
    """

    def __init__(self, name: str, epochs: int, start: int, clock: RunClock | None = None,
                 scalars: Callable[[dict], None] | None = None, interactive: bool | None = None):
        self.name, self.epochs, self.start = name, epochs, start
        self.clock = clock if clock is not None else RunClock(epochs - start)
        self.scalars = scalars
        self.interactive = console.is_terminal if interactive is None else interactive
        self.enabled = is_main_process()
        self.fold_seconds, self.fold_done = 0.0, 0
        self._bar: Progress | None = None

    def __enter__(self) -> "EpochReporter":
        if self.interactive and self.enabled:
            self._bar = progress_bar().__enter__()
            self._task = self._bar.add_task(self.name, total=self.epochs, completed=self.start, info="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        close = getattr(self.scalars, "close", None)
        if close is not None:
            close()

    def batch(self, info: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, info=info)

    def stopped_early(self, epoch: int) -> None:
        """The fold ends before its last epoch: its remaining epochs leave the run's ETA."""
        self.clock.skip(self.epochs - epoch)

    def epoch(self, result: EpochResult) -> str:
        """Report the epoch that just ended; returns its log line."""
        self.fold_seconds, self.fold_done = self.fold_seconds + result.seconds, self.fold_done + 1
        self.clock.add(result.seconds)
        number = result.epoch + 1
        fold_eta = self.fold_seconds / self.fold_done * (self.epochs - number)
        score = f"{result.metric} {result.value:.4f} (best {result.best:.4f})"
        line = (f"{self.name} epoch {number}/{self.epochs}  loss {result.train_loss:.4f}  val loss {result.val_loss:.4f}  {score}"
                f"  {result.images_per_s:.0f} img/s  epoch {duration(result.seconds)}  elapsed {duration(self.clock.seconds)}"
                f"  eta fold {duration(fold_eta)}  eta run {duration(self.clock.eta())}")
        if not self.enabled:
            return line
        if self.scalars is not None:
            self.scalars({"epoch": result.epoch, "train_loss": result.train_loss, "val_loss": result.val_loss,
                          f"val_{result.metric}": result.value, "images_per_s": result.images_per_s, **result.row})
        if self._bar is None:
            console.print(line, soft_wrap=True, markup=False)
        else:
            self._bar.update(self._task, advance=1, info=f"{score}  {result.images_per_s:.0f} img/s  run eta {duration(self.clock.eta())}")
            if not self.clock.announced and self.clock.total_epochs > self.clock.done:
                console.print(f"run: {self.clock.total_epochs} epochs to train at about {duration(self.clock.seconds / self.clock.done)} "
                              f"each; eta {duration(self.clock.eta())}")
        self.clock.announced = True
        return line


def report_epoch(result: EpochResult, reporter: EpochReporter) -> str:
    """The one place a finished epoch is reported (the training loop calls it once per epoch)."""
    return reporter.epoch(result)


def summary(title: str, rows: dict[str, Any]) -> None:
    """A stage's result on stdout: aligned `key  value` lines; a list of dicts becomes a small table,
    a dict one `k v, k v` line, a list one comma-separated line (never a Python repr)."""
    results.print(f"[bold green]{title}")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(no_wrap=True)
    for key, value in rows.items():
        table.add_row(str(key), _render(value))
    print_wide(table)


def print_wide(renderable) -> None:
    """Print on stdout at the width the renderable needs, never folded: a log or a pipe keeps each row
    on one line (rich would otherwise wrap at 80 columns when stdout is not a terminal)."""
    needed = Measurement.get(results, results.options.update_width(10_000), renderable).maximum
    if needed <= results.width:
        results.print(renderable)
    else:  # Console.print can only narrow, so a wider console for this one renderable
        Console(highlight=False, width=needed, force_terminal=results.is_terminal).print(renderable)


def _render(value: Any):
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        table = Table(box=None, pad_edge=False, header_style="dim")
        for column in value[0]:
            table.add_column(str(column), justify="right")
        for row in value:
            table.add_row(*(_fmt(row.get(column, "")) for column in value[0]))
        return table
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value) or "none"
    return _fmt(value)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Path):
        return value.as_posix()
    return str(value)
