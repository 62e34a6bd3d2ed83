"""The `pipeline` command: each subcommand parses, loads params and runs one stage (or all of them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from pipeline import __version__
from pipeline.console import console, is_main_process, print_wide, results, summary
from pipeline.errors import ParamsError, PipelineError
from pipeline.locking import writer_of
from pipeline.finetune import load_finetuned
from pipeline.params import Params
from pipeline.newtest import predict_new_test
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
    if is_main_process():  # under torchrun every rank meets the same error: one line, rank 0's
        console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)  # a message may hold [brackets]
    raise typer.Exit(code)


def _load(params_path: Path, workdir: str | None, overrides: list[str] | None) -> tuple[Params, Path]:
    try:
        params, applied, finetuned = load_finetuned(params_path, overrides or [], workdir)
    except ParamsError as exc:
        _fail(str(exc), 2)
    if applied:
        console.print(f"[cyan]example overrides (data.root is {params.data.root}):[/] " + ", ".join(applied), soft_wrap=True)
    if finetuned:  # the finetune preset, when pretrained weights load
        console.print(f"[cyan]{escape(finetuned)}[/]", soft_wrap=True)
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


app.command("preprocess")(_stage_command("preprocess", "Decode, denoise, crop and resize every image once into a cache.\n\nExample: pipeline preprocess -S preprocess.size=128"))
app.command("dedup")(_stage_command("dedup", "Find exact and near-duplicate images, cluster them, weight them, report leaks.\n\nExample: pipeline dedup -S dedup.threshold=0.998"))
app.command("augment")(_stage_command("augment", "Build the augmentation pipeline from params and preview it.\n\nExample: pipeline augment -S augment.hflip=0"))
app.command("pseudo")(_stage_command("pseudo", "Turn confident test predictions into extra training rows.\n\nExample: pipeline pseudo -S pseudo.threshold=0.95"))


@app.command()
def train(
    params: ParamsOpt = Path("params.yaml"),
    workdir: WorkdirOpt = None,
    set_: SetOpt = None,
    fold: Annotated[Optional[int], typer.Option("--fold", help="train only fold K (one job per GPU or node)")] = None,
) -> None:
    """K-fold training of a timm model; resumes a killed run from its last checkpoint.

    Example: pipeline train --fold 0 -S train.epochs=30
    """
    overrides = list(set_ or []) + ([f"train.fold={fold}"] if fold is not None else [])
    p, wd = _load(params, workdir, overrides)
    _guard(lambda: run_stage(BY_NAME["train"], p, wd))


@app.command()
def predict(
    params: ParamsOpt = Path("params.yaml"),
    workdir: WorkdirOpt = None,
    set_: SetOpt = None,
    use_existing: Annotated[bool, typer.Option("--use-existing", help="ensemble the folds there even when train is stale or a fold is of another recipe")] = False,
    data: Annotated[Optional[Path], typer.Option("--data", help="a new competition folder (test/ + sample_submission.csv) to predict with the finished workdir -w")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="with --data: the new predict-only workdir (the finished one is only read)")] = None,
) -> None:
    """Fold ensemble x TTA on the test set; write submission.csv.

    Example (code competition): pipeline predict -w runs/exp1 --data /kaggle/input/comp --out /kaggle/working/run
    """
    if (data is None) != (out is None):
        _fail("--data and --out go together: pipeline predict -w TRAINED --data NEW_FOLDER --out DIR", 2)
    p, wd = _load(params, workdir, set_)
    if data is None:
        _guard(lambda: run_stage(BY_NAME["predict"], p, wd, use_existing=use_existing))
        return
    _guard(lambda: predict_new_test(p, wd, data, out))
    results.print(f"[bold green]done[/]: submission: {out / 'predict' / 'submission.csv'}")


@app.command()
def run(
    params: ParamsOpt = Path("params.yaml"),
    workdir: WorkdirOpt = None,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="rerun every stage, fresh or not")] = False,
) -> None:
    """Run every stage in order (with params.rounds pseudo-label rounds), skipping the fresh ones.

    Example: pipeline run -w runs/convnext -S train.model=convnext_tiny
    """
    p, wd = _load(params, workdir, set_)
    ran = _guard(lambda: run_all(p, wd, force=force))
    if p.rounds:
        for row in round_report(wd, p.rounds):
            extra = "".join(f", {k} {v:.4f}" if isinstance(v, float) else f", {k} {v}" for k, v in row.items() if k in ("pseudo_rows", "agreement_with_previous"))
            results.print(f"round {row['round']}: cv {row['metric']} {row['cv']:.4f}{extra}")
    submission = final_predict_dir(wd, p.rounds) / "submission.csv"
    results.print(f"[bold green]done[/]: ran {', '.join(ran) if ran else 'nothing (all fresh)'}; submission: {submission}")


@app.command()
def init(
    data_root: Annotated[Path, typer.Argument(help="the competition folder (train/ + train.csv, or train/<class>/)")],
    params: ParamsOpt = Path("params.yaml"),
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing params file")] = False,
) -> None:
    """Write a commented params.yaml for a competition folder and say what was detected in it.

    Example: pipeline init /data/my-competition -p params.yaml
    """
    from pipeline.init import init as write_params

    report = _guard(lambda: write_params(data_root, params, force))
    summary("init", report)
    flag = "" if params == Path("params.yaml") else f" -p {params}"
    results.print(f"next: pipeline run{flag} (or pipeline status{flag})", soft_wrap=True, markup=False)


@app.command()
def status(params: ParamsOpt = Path("params.yaml"), workdir: WorkdirOpt = None, set_: SetOpt = None) -> None:
    """Say which stages are fresh, stale or missing, and why.

    Example: pipeline status -S train.epochs=8
    """
    p, wd = _load(params, workdir, set_)
    rows = _guard(lambda: statuses(p, wd))
    for name, state, why in rows:
        typer.echo(f"{name:<15} {state:<8} {why}")
    writer = writer_of(wd)
    if writer:
        console.print(f"[yellow]running:[/] {escape(writer)} is writing this workdir; outputs may change until it ends")


@app.command()
def weights(
    models: Annotated[Optional[list[str]], typer.Argument(help="timm model names, with or without a pretrained tag")] = None,
    to: Annotated[Optional[Path], typer.Option("--to", help="folder to write DIR/<model>/ into (attach it as a Kaggle dataset)")] = None,
    list_: Annotated[Optional[str], typer.Option("--list", help="list timm models with pretrained weights matching PATTERN, e.g. 'convnext*'")] = None,
) -> None:
    """Copy (from the Hugging Face cache) or download models' weights into DIR/<model> for offline training.

    Example: pipeline weights convnext_tiny.fb_in22k resnet26d --to kaggle-weights
    """
    from pipeline.weights_export import export_weights, list_weights

    if list_ is not None:
        for line in _guard(lambda: list_weights(list_)):
            typer.echo(line)
        return
    if not models or to is None:
        _fail("pipeline weights: give MODEL [MODEL...] --to DIR, or --list PATTERN", 2)
    for line in _guard(lambda: export_weights(models, to)):
        results.print(line, soft_wrap=True, markup=False)


@app.command()
def compare(
    workdirs: Annotated[list[Path], typer.Argument(help="finished workdirs, one per run")],
    blend: Annotated[bool, typer.Option("--blend", help="fit OOF blend weights and say what the blend would score")] = False,
) -> None:
    """Compare finished runs: CV ± std over folds, OOF metrics, params that differ, time, model.

    Example: pipeline compare runs/resnet runs/convnext --blend
    """
    from pipeline import compare as comparing

    runs = _guard(lambda: [comparing.load_run(w) for w in workdirs])
    _print_table(comparing.table(runs))
    if blend:
        fitted = _guard(lambda: comparing.blend(runs))
        results.print(f"\nblend on the {fitted['images']} out-of-fold images every run predicted (weights fitted like predict.weights: oof):",
                      soft_wrap=True)
        _print_table(fitted["rows"])
        results.print(f"to predict with it: {fitted['command']}", soft_wrap=True, markup=False)


def _print_table(rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in rows[0]:
        table.add_column(str(column), justify="left" if column == "run" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(escape(str(v)) for v in row.values()))
    print_wide(table)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pipeline {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")] = False,
) -> None:
    """Reproducible training pipeline for image-classification competitions. All knobs live in params.yaml."""
