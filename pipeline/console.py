"""Terminal output: progress bars for long loops and one-screen stage summaries (rich)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

T = TypeVar("T")

# Progress and logs go to stderr so stdout stays clean for summaries a script may parse.
console = Console(stderr=True, highlight=False)


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
        disable=os.environ.get("RANK", "0") != "0",  # under torchrun one bar, rank 0's, not one per process
    )


def track(items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
    with progress_bar() as bar:
        task = bar.add_task(description, total=total, info="")
        for item in items:
            yield item
            bar.advance(task)


def summary(title: str, rows: dict[str, Any]) -> None:
    console.print(f"[bold green]{title}")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(str(key), _fmt(value))
    console.print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass(frozen=True)
class EpochResult:
    """One finished training epoch, as every epoch log reads it (progress bar, batch-job log)."""

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


def report_epoch(result: EpochResult, bar: Progress, task) -> None:
    """The one place a finished epoch is reported."""
    bar.update(task, advance=1, info=f"{result.metric} {result.value:.4f} (best {result.best:.4f})  {result.images_per_s:.0f} img/s")
