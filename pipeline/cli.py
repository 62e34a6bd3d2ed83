"""The `pipeline` command: each subcommand parses, loads params and runs one stage (or all of them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from pipeline.console import console, summary
from pipeline.errors import ParamsError, PipelineError
from pipeline.params import Params, load_params
from pipeline.rounds import final_predict_dir, round_report
from pipeline.runner import BY_NAME, run_all, run_stage, statuses

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Reproducible training pipeline for image-classification competitions. All knobs live in params.yaml.",
)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file")]
WorkdirOpt = Annotated[Optional[str], typer.Option("--workdir", "-w", help="artifact folder (default: workdir in params)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-S", help="override a param: -S train.epochs=3 (repeatable)")]


def _fail(message: str, code: int) -> None:
    console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)  # a message may hold [brackets]
    raise typer.Exit(code)


def _load(params_path: Path, workdir: str | None, overrides: list[str] | None) -> tuple[Params, Path]:
    try:
        params, applied = load_params(params_path, overrides or [], workdir)
    except ParamsError as exc:
        _fail(str(exc), 2)
    if applied:
        console.print(f"[cyan]example overrides (data.root is {params.data.root}):[/] " + ", ".join(applied), soft_wrap=True)
    return params, Path(params.workdir)


def _guard(action):
    """Turn the errors a user must act on into one line and an exit code; anything else is a bug."""
    try:
        return action()
    except PipelineError as exc:
        _fail(str(exc), exc.exit_code)


def _stage_command(name: str, doc: str):
    def command(params: ParamsOpt = Path("params.yaml"), workdir: WorkdirOpt = None, set_: SetOpt = None) -> None:
        p, wd = _load(params, workdir, set_)
        _guard(lambda: run_stage(BY_NAME[name], p, wd))

    command.__doc__ = doc
    command.__name__ = name
    return command


app.command("preprocess")(_stage_command("preprocess", "Decode, denoise, crop and resize every image once into a cache."))
app.command("dedup")(_stage_command("dedup", "Find exact and near-duplicate images, cluster them, weight them, report leaks."))
app.command("augment")(_stage_command("augment", "Build the augmentation pipeline from params and preview it."))
app.command("predict")(_stage_command("predict", "Fold ensemble x TTA on the test set; write submission.csv."))
app.command("pseudo")(_stage_command("pseudo", "Turn confident test predictions into extra training rows."))


@app.command()
def train(
    params: ParamsOpt = Path("params.yaml"),
    workdir: WorkdirOpt = None,
    set_: SetOpt = None,
    fold: Annotated[Optional[int], typer.Option("--fold", help="train only fold K (one job per GPU or node)")] = None,
) -> None:
    """K-fold training of a timm model; resumes a killed run from its last checkpoint."""
    overrides = list(set_ or []) + ([f"train.fold={fold}"] if fold is not None else [])
    p, wd = _load(params, workdir, overrides)
    _guard(lambda: run_stage(BY_NAME["train"], p, wd))


@app.command()
def run(
    params: ParamsOpt = Path("params.yaml"),
    workdir: WorkdirOpt = None,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="rerun every stage, fresh or not")] = False,
) -> None:
    """Run every stage in order (with params.rounds pseudo-label rounds), skipping the fresh ones."""
    p, wd = _load(params, workdir, set_)
    ran = _guard(lambda: run_all(p, wd, force=force))
    if p.rounds:
        for row in round_report(wd, p.rounds):
            extra = "".join(f", {k} {v:.4f}" if isinstance(v, float) else f", {k} {v}" for k, v in row.items() if k in ("pseudo_rows", "agreement_with_previous"))
            console.print(f"round {row['round']}: cv {row['metric']} {row['cv']:.4f}{extra}")
    submission = final_predict_dir(wd, p.rounds) / "submission.csv"
    console.print(f"[bold green]done[/]: ran {', '.join(ran) if ran else 'nothing (all fresh)'}; submission: {submission}")


@app.command()
def init(
    data_root: Annotated[Path, typer.Argument(help="the competition folder (train/ + train.csv, or train/<class>/)")],
    params: ParamsOpt = Path("params.yaml"),
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing params file")] = False,
) -> None:
    """Write a commented params.yaml for a competition folder and say what was detected in it."""
    from pipeline.init import init as write_params

    report = _guard(lambda: write_params(data_root, params, force))
    summary("init", report)
    console.print(f"next: [bold]pipeline run[/] (or `pipeline status`) in {params.parent.resolve()}", soft_wrap=True)


@app.command()
def status(params: ParamsOpt = Path("params.yaml"), workdir: WorkdirOpt = None, set_: SetOpt = None) -> None:
    """Say which stages are fresh, stale or missing, and why."""
    p, wd = _load(params, workdir, set_)
    rows = _guard(lambda: statuses(p, wd))
    for name, state, why in rows:
        typer.echo(f"{name:<15} {state:<8} {why}")
