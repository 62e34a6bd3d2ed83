"""train: k-fold training of a timm model on the preprocess cache.

Modules: folds (grouped stratified folds), rows (what may train: labelled images, offline copies,
pseudo-labelled and teacher-taught test images; the fold split rule), schedule (lr per step), losses
(CE/focal on soft targets, weights, mixing), curriculum (difficulty and pacing), model (timm model,
local pretrained weights, freezing, param groups), data (dataset, per-epoch sample order, loaders),
distill (teacher targets), checkpoint, metrics, plots, loop (one fold).

Outputs: fold<k>/{best.pt,last.pt,metrics.csv,curves.png,lr_schedule.png,oof.csv,fold.json,recipe.json}, oof.csv,
cv.json, confusion.png; with train.full_fit, full/ (one more model on every image: stages.train.full_fit).

Each fold is its own atomic unit, so `--fold K` jobs can run concurrently in one workdir: a fold trains
in .partial/fold<k>/ (a killed fold resumes from its last.pt there) and is renamed to fold<k>/ when it
finishes. The stage-level oof.csv, cv.json and confusion.png are then recomputed, under a lock on the
folder, from every finished fold trained with the same params and inputs (fold.json holds that key);
finished folds with another key are from an older recipe and are removed, as a full rerun would.
Under torchrun every rank trains and rank 0 alone writes (pipeline.distributed).
"""

from __future__ import annotations

import shutil

import albumentations as A
import numpy as np
import pandas as pd
import torch

from pipeline import distributed as ddp
from pipeline.artifacts import file_records, finished_folds, folder_lock, read_json, replace_dir, write_csv, write_json
from pipeline import tasks
from pipeline.cache import read_arrays, read_classes, read_clusters, read_index, read_pseudo_rows, read_task
from pipeline.console import RunClock, console
from pipeline.device import normalisation, resolve_device
from pipeline.params import Params
from pipeline.errors import StageError
from pipeline.weights import Weights, resolve_weights, weights_norm
from stages.train import full_fit
from stages.train import tensorboard
from stages.train.data import data_workers, usable_cores
from stages.train.distill import load_teacher
from stages.train.folds import assign_folds, assign_multilabel_folds
from stages.train.metrics import setup as setup_scoring
from stages.train.rows import RowStack, Rows, TrainData, concat, extra_rows, row_classes

PARTIAL = ".partial"  # folds in progress; hidden, so no fingerprint or later stage ever reads them


def check(params: Params, data=None) -> None:
    """Before any work (pipeline.checks; folds and devices are checked there): timm knows the model, the
    pretrained weights can be had and fit it, the TensorBoard option works."""
    from pipeline.weights import check_pretrained
    from stages.train.model import check_model_name, readable_weights

    p = params.train
    check_model_name(p.model)
    tensorboard.check(p.tensorboard)
    if p.pretrained not in (None, False):
        readable_weights(p, lambda: check_pretrained(p))


def prepare_weights(params: Params) -> Weights:
    """Find the pretrained weights (downloading them when online), or stop before any fold trains."""
    from stages.train.model import readable_weights

    return readable_weights(params.train, lambda: resolve_weights(params.train))


def load_data(params: Params, paths, weights: Weights | None = None) -> tuple[TrainData, pd.DataFrame]:
    """Everything that may train (stages.train.rows), its pixels, the labelled table for the OOF file, and
    how timm loads the weights (checked here, before any fold; resolved here when not given)."""
    p = params.train
    weights = weights if weights is not None else resolve_weights(p)
    pre = paths["preprocess"]
    # Without pseudo or teacher-taught test rows train reads the train side alone (the runner says which).
    sides = paths.sides("preprocess")
    index, classes, arrays = read_index(pre, sides), read_classes(pre), read_arrays(pre, sides)
    arrays.setdefault("test", np.zeros((0, *arrays["train"].shape[1:]), np.uint8))
    clusters = read_clusters(paths["dedup"], sides)
    train = index[index.split == "train"].merge(clusters[["id", "cluster", "weight"]], on="id")
    train = train[train.weight > 0].reset_index(drop=True)
    if len(train) < p.folds:
        raise StageError(f"train: {len(train)} training images for {p.folds} folds; need at least one per fold")
    task = read_task(pre)
    targets = tasks.targets(train.label, classes, task)  # one-hot, or multi-hot tags
    labels = row_classes(targets)
    folds = (assign_multilabel_folds(targets, train.cluster.to_numpy(), p.folds, params.seed) if task.multi_label
             else assign_folds(labels, train.cluster.to_numpy(), p.folds, params.seed))
    labelled = Rows(ids=train.id.to_numpy(), rows=train.row.to_numpy(np.int64), labels=labels, targets=targets,
                    weights=train.weight.to_numpy(np.float32) if p.dedup_weights else np.ones(len(train), np.float32),
                    clusters=train.cluster.astype(str).to_numpy(), fold=folds, kind=np.full(len(train), "labelled"))
    parts, sources = {"labelled": labelled}, {"labelled": labelled.ids}  # sources: whose teacher target a row takes

    # Offline copies of rare-class images train with their source image: same cluster, same weight.
    copies = np.zeros((0, *arrays["train"].shape[1:]), np.uint8)
    if (paths["augment"] / "expanded.csv").is_file():
        table = pd.read_csv(paths["augment"] / "expanded.csv", dtype=str, keep_default_na=False)
        copies = np.load(paths["augment"] / "expanded.npy", mmap_mode="r")
        source = pd.Index(train.id).get_indexer(table.source_id)
        keep = source >= 0  # a copy of an image dedup left out stays out
        src = source[keep]
        parts["expanded"] = extra_rows("expanded", table.id[keep], len(arrays["train"]) + np.where(keep)[0], targets[src],
                                       labelled.weights[src], labelled.clusters[src])
        sources["expanded"] = table.source_id[keep].to_numpy()
    test_offset = len(arrays["train"]) + len(copies)

    if "pseudo" in paths.inputs:  # a pseudo-label round: confident test predictions of the previous round
        pseudo = read_pseudo_rows(paths["pseudo"], classes)
        parts["pseudo"] = extra_rows("pseudo", pseudo.ids, test_offset + pseudo.rows, pseudo.targets, pseudo.weights, pseudo.clusters)
        sources["pseudo"] = pseudo.ids
    if params.distill.teacher:
        add_teacher(parts, sources, params, index, clusters, classes, test_offset)
    from stages.train.model import weight_loading

    recipe = paths["augment"] / "gpu_augment.json"
    shape = arrays["train"].shape
    data = TrainData(rows=concat(list(parts.values())), pixels=RowStack([arrays["train"], copies, arrays["test"]]), classes=classes,
                     transform=A.load(str(paths["augment"] / "transform.json"), data_format="json"),
                     gpu_recipe=read_json(recipe) if recipe.is_file() else None,
                     norm=normalisation(arrays["train"], p.norm, params.seed, p.norm_sample,
                                        pretrained=weights_norm(weights, p.model) if p.norm == "pretrained" else None),
                     weights={"kind": weights.kind, "identity": weights.identity, "source": weights.source, "note": weights.note},
                     loading=weight_loading(p, weights, len(classes), shape[3], tuple(shape[1:3]), classes),
                     task=task, scoring=setup_scoring(p, task, targets if task.multi_label else None))
    return data, train


def add_teacher(parts: dict, sources: dict, params: Params, index, clusters, classes, test_offset: int) -> None:
    """Distillation: every row learns the teacher's probabilities for its (source) image, and the test
    images join training taught by the teacher alone when distill.test_weight > 0."""
    d = params.distill
    teacher = load_teacher(d.teacher, classes)
    for name, part in parts.items():
        part.teacher = teacher.test_targets(sources[name]) if name == "pseudo" else teacher.train_targets(sources[name])
    if d.test_weight > 0:
        test = index[index.split == "test"].merge(clusters[["id", "cluster"]], on="id")
        probs = teacher.test_targets(test.id)
        taught = extra_rows("teacher", test.id, test_offset + test.row.to_numpy(), probs, np.full(len(test), d.test_weight), test.cluster)
        taught.teacher = probs
        parts["teacher"] = taught


def run(params: Params, paths) -> dict:
    from stages.train.loop import train_fold

    weights = prepare_weights(params)
    if ddp.is_main():
        console.print(f"train: {params.train.model} {weights.describe()}")
    data, train = load_data(params, paths, weights)
    device = ddp.local_device(resolve_device(params.train.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = params.train.cudnn_benchmark
    folds = range(params.train.folds) if params.train.fold is None else [params.train.fold]
    finished = finished_folds(paths.out, getattr(paths, "key", ""))  # e.g. by an earlier --fold job
    clock = RunClock(total_epochs=params.train.epochs * len([k for k in folds if k not in finished]))
    with ddp.session(params.train.dist_timeout, device) as world:
        params = resolve_batch_size(params, data, device, world.size)
        path, why = ddp.from_main(data_path(params.train, data, device))  # one path for every rank (free memory may differ)
        p = params.train
        console.print(f"train: {p.model} on {device}" + (f" (rank {world.rank} of {world.size} processes)" if world.size > 1 else "")
                      + f", rows {data.rows.describe()}, {len(data.classes)} classes, folds {', '.join(map(str, folds))}")  # every rank says it is up
        if world.main:
            workers = f"; loader workers {data_workers('auto')} (auto: {usable_cores()} cores)" if p.workers == "auto" and path == "loader" else ""
            console.print(f"train: data path {path}: {why}{workers}")
        trained = []
        for fold in folds:
            if fold in finished:
                console.print(f"fold {fold}: finished earlier with these params and inputs, kept (`pipeline run --force` retrains it)")
                continue
            probs = train_fold(fold, data, params, paths.out / PARTIAL, device, path, clock)
            trained.append(fold)
            if world.main:
                finish_fold(fold, probs, data, train, params, paths, {"data_path": path, "batch_size": p.batch_size})
        full = "off"
        if p.full_fit:  # one more model on every image, after the folds (stages.train.full_fit)
            full = (full_fit.run(data, params, paths.out, paths.out / PARTIAL, getattr(paths, "key", ""), device, path) if p.fold is None
                    else "trains when `pipeline train` runs without --fold, after every fold finished")
    if not world.main:
        return {}
    remove_if_empty(paths.out / PARTIAL)
    with folder_lock(paths.out):
        full_fit.prune(paths.out, getattr(paths, "key", ""), p.full_fit)
        result = summarize(params, paths, f"{p.model} on {device}" + (f" x {world.size} processes" if world.size > 1 else ""), trained)
    return {**result, "data path": f"{path} ({why})", "batch size": p.batch_size, "full fit": full}


def remove_if_empty(folder) -> None:
    """.partial/ holds unfinished folds only; once every fold is renamed into place it goes too."""
    try:
        folder.rmdir()
    except OSError:  # absent, or another job's fold is still training in it
        pass


def resolve_batch_size(params: Params, data: TrainData, device: torch.device, world_size: int) -> Params:
    """train.batch_size: auto -> a number, decided once per run (every fold and rank trains with it)."""
    p = params.train
    if p.batch_size != "auto":
        return params
    from stages.train.batch_size import auto_batch
    from stages.train.model import create_model

    shape = (data.pixels.shape[3], *data.pixels.shape[1:3])
    batch, why = auto_batch(lambda: create_model(p, len(data.classes), shape[0], None, shape[1:]), shape, len(data.classes), p, device, world_size)
    batch = ddp.from_main(batch)
    console.print(f"train.batch_size = auto: {batch} ({why})")
    return params.model_copy(update={"train": p.model_copy(update={"batch_size": batch})})


def data_path(p, data: TrainData, device: torch.device) -> tuple[str, str]:
    """Where batches are made, decided once per run so every fold trains the same way: "device" (the
    uint8 cache on the GPU, augmented there) or "loader" (albumentations in worker processes)."""
    from stages.train.gpu_augment import fits, missing_ops

    missing = missing_ops(data.gpu_recipe)
    if p.gpu_augment == "never":
        return "loader", "train.gpu_augment = never"
    if missing:
        if p.gpu_augment == "always":
            raise StageError(f"train.gpu_augment = always: augment/gpu_augment.json lacks {', '.join(missing)}; rerun `pipeline augment`")
        return "loader", f"the device path lacks {', '.join(missing)} of this recipe (rerun `pipeline augment`)"
    if p.gpu_augment == "always":
        return "device", "train.gpu_augment = always"
    if device.type != "cuda":
        return "loader", f"no GPU ({device.type})"
    nbytes = len(data.rows) * int(np.prod(data.pixels.shape[1:]))
    free = torch.cuda.mem_get_info(device)[0]
    if fits(nbytes, free, p.gpu_cache_fraction):
        return "device", f"the cache ({nbytes / 2**20:.0f} MiB) fits in {p.gpu_cache_fraction:.0%} of the free GPU memory"
    return "loader", f"the cache ({nbytes / 2**20:.0f} MiB) exceeds {p.gpu_cache_fraction:.0%} of the free GPU memory ({free / 2**20:.0f} MiB)"


def finish_fold(fold: int, probs: np.ndarray, data: TrainData, train: pd.DataFrame, params: Params, paths, how: dict) -> None:
    """The fold's OOF rows, curves and key beside its checkpoints, then the folder renamed into place."""
    from stages.train import plots

    partial = paths.out / PARTIAL / f"fold{fold}"
    val = np.where(data.rows.fold == fold)[0]  # labelled rows come first, in the order of `train`
    frame = pd.DataFrame(probs, columns=[f"p_{c}" for c in data.classes])
    frame.insert(0, "fold", fold)
    frame.insert(0, "label", train.label.to_numpy()[val])
    frame.insert(0, "id", train.id.to_numpy()[val])
    write_csv(partial / "oof.csv", frame)
    plots.curves(pd.read_csv(partial / "metrics.csv"), data.scoring.metric, partial / "curves.png")
    scaled = read_json(partial / "recipe.json") if (partial / "recipe.json").is_file() else None  # stages.train.recipe
    # files: the fold's files as written, so a later run keeps this fold only while they are intact.
    write_json(partial / "fold.json", {"fold": fold, "key": getattr(paths, "key", ""), **how,  # how: data path, batch size
                                       "weights": data.weights, "recipe": scaled, "files": file_records(partial)})
    replace_dir(partial, paths.out / f"fold{fold}")


def summarize(params: Params, paths, model: str, trained: list[int]) -> dict:
    """oof.csv, cv.json, confusion.png and top_losses.png from every finished fold of this recipe (call
    under the lock); returns the stage summary, CV first, epochs 1-based. Multi-label: no confusion
    matrix or top losses (one class per image), and the CV with per-class thresholds fitted on OOF."""
    from stages.train import plots, top_losses

    p, out = params.train, paths.out
    folds = current_folds(out, getattr(paths, "key", ""))
    classes, task = read_classes(paths["preprocess"]), read_task(paths["preprocess"])
    oof = pd.concat([pd.read_csv(out / f"fold{k}" / "oof.csv", dtype={"id": str, "label": str}, keep_default_na=False) for k in folds],
                    ignore_index=True)
    columns = [f"p_{c}" for c in classes]
    truth = tasks.truth(oof.label, classes, task)
    scoring = setup_scoring(p, task, truth if task.multi_label else None)
    metric = scoring.metric
    table = [fold_row(out, fold, truth[(oof.fold == fold).to_numpy()], oof[oof.fold == fold][columns].to_numpy(), scoring) for fold in folds]
    write_csv(out / "oof.csv", oof)
    probs = oof[columns].to_numpy()
    overall = scoring.scores(truth, probs)
    if not task.multi_label:
        plots.confusion(truth, probs.argmax(1), classes, out / "confusion.png")
        top_losses.write(out / "top_losses.png", oof, classes, paths["preprocess"], paths["dedup"])
    values = [row[metric] for row in table]
    missing = [k for k in range(p.folds) if k not in folds]
    o = scoring.options
    cv = {"metric": metric, "metric_from": scoring.why, "task": task.kind,
          "metric_options": {"beta": o.beta, "average": o.average, "at_least_one": o.at_least_one},
          "mean": float(np.mean(values)), "std": float(np.std(values)),
          "per_fold": {str(row["fold"]): row[metric] for row in table}, "missing_folds": missing, **{f"oof_{k}": v for k, v in overall.items()}}
    tuned = {}
    if scoring.uses_thresholds:
        _, cv[f"oof_{metric}_tuned_thresholds"] = scoring.tuned(truth, probs)
        tuned = {f"oof {metric}, thresholds fitted on OOF (optimistic)": round(cv[f"oof_{metric}_tuned_thresholds"], 4)}
    write_json(out / "cv.json", cv)
    return {f"cv {metric}": f"{cv['mean']:.4f} ± {cv['std']:.4f} over {len(folds)} of {p.folds} folds",
            "metric": f"{metric} ({scoring.why})", "task": f"{task.kind} ({task.why})",
            "oof": {k.replace("_", " "): round(v, 4) for k, v in overall.items()}, **tuned,
            "folds": table, "missing folds": missing or "none", "model": model,
            "trained in this run": [f"fold {k}" for k in trained] or "none (every fold was finished)",
            "plots": "train/fold<k>/curves.png" if task.multi_label else "train/confusion.png, train/top_losses.png, train/fold<k>/curves.png"}


def current_folds(out, key: str) -> list[int]:
    """The finished folds trained with this key; finished folds of another recipe are removed, as a full
    rerun would replace them."""
    folds = []
    for fold in finished_folds(out):
        if read_json(out / f"fold{fold}" / "fold.json")["key"] == key:
            folds.append(fold)
        else:
            console.print(f"[yellow]removed[/] {out / f'fold{fold}'}: trained with other params or inputs")
            shutil.rmtree(out / f"fold{fold}")
    return folds


def fold_row(out, fold: int, truth: np.ndarray, probs: np.ndarray, scoring) -> dict:
    """One line of the summary's fold table: its best checkpoint's score, which epoch (1-based), speed."""
    from stages.train.plots import best_epoch

    metric = scoring.metric
    history = pd.read_csv(out / f"fold{fold}" / "metrics.csv")
    score = scoring.scores(truth, probs)[metric]
    return {"fold": fold, metric: round(score, 4), "best epoch": f"{int(history.epoch[best_epoch(history, metric)]) + 1} of {len(history)}",
            "img/s": int(round(float(history.images_per_s.median()))), "minutes": round(float(history.seconds.sum()) / 60, 1)}
