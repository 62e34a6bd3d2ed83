"""predict: fold ensemble x TTA on the test cache, duplicate-aware correction, a validated submission.

Steps, each in its own module:
  1. ensemble.py: find every fold checkpoint of this workdir's train/ and of predict.runs.
  2. tta.py: measure TTA on the validation folds (each fold model on its own out-of-fold images), and
     with predict.tta = auto keep, greedily, the view groups (and the merge) that improve the OOF
     predict.tta_metric beyond noise; report the gain either way.
  3. predict the test cache with every member x the chosen views, merge views, average members.
  4. correction.py: duplicate clusters share one prediction; test duplicates of train images take
     their label.
  5. submission.py: the sample's exact format, validated on disk; multi-label tags above per-class
     thresholds fitted on the ensemble's OOF (scoring.py), or the top k classes.
scoring.py: the train run's metric (train/cv.json) drives auto TTA, run weights and the thresholds.
Outputs: probs.csv (id, p_<class>...), submission.csv, summary.json, oof.csv (the ensemble's
out-of-fold probabilities, no TTA: the distillation teacher), tta_oof.csv, corrections.csv,
thresholds.json (multi-label), predictions.png.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import metrics, tasks
from pipeline.artifacts import read_json, write_csv, write_json
from pipeline.cache import read_arrays, read_classes, read_clusters, read_index, read_sample, read_task
from pipeline.console import console, track
from pipeline.device import autocast_dtype, resolve_device
from pipeline.params import TTA_VIEWS, Params
from pipeline.errors import StageError
from stages.predict.compatible import check_runs
from stages.predict.correction import correct, exact_leak_ids
from pipeline.blend import fit_weights
from stages.predict import scoring
from stages.predict.scoring import Result, better, rank  # noqa: F401  (Result is part of this stage's API)
from stages.predict.ensemble import Member, find_members, load_model, predict_views, read_oof
from stages.predict.plots import plot_predictions
from stages.predict.submission import Answers, build_submission, sample_format, write_submission
from stages.predict.tta import MERGES, expand, merge


class Context:
    """What every step needs: params, cache, device, members and their run weights."""

    def __init__(self, params: Params, paths):
        self.p = params.predict
        pre = paths["preprocess"]
        self.index, self.classes, self.task = read_index(pre), read_classes(pre), read_task(pre)
        self.multi_label = self.task.multi_label
        self.scoring = scoring.load(paths["train"], self.task, self.p.tta_metric)
        self.thresholds, self.thresholds_from = None, None  # multi-label: set by score_oof
        self.arrays = read_arrays(pre)
        self.row_of = {s: self.index[self.index.split == s].set_index("id")["row"] for s in ("train", "test")}
        self.run_dirs = [Path(paths["train"])] + [Path(r).expanduser() for r in self.p.runs]
        check_runs(pre, self.run_dirs[1:])
        self.members, self.missing = find_members(self.run_dirs)
        self.device = resolve_device(self.p.device)
        self.amp = autocast_dtype(self.p.amp, self.device)
        self.seed = params.seed  # the OOF sample TTA is measured on
        self.train_labels = self.index[self.index.split == "train"].set_index("id")["label"]
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # every batch has the same shape: cudnn's fastest kernels, found once
        self.run_weight = {str(r): 1.0 / len(self.run_dirs) for r in self.run_dirs}
        self.how = "mean_prob"  # the TTA merge; choose_tta's pick replaces it

    def model(self, member: Member):
        model, ckpt = load_model(member.path, self.device, channels_last=self.device.type == "cuda")
        if [str(c) for c in ckpt["classes"]] != self.classes:
            raise StageError(f"{member.path}: trained on classes {ckpt['classes'][:5]}..., the cache has {self.classes[:5]}...")
        return model, ckpt

    def member_weight(self, member: Member) -> float:
        folds = sum(m.run == member.run for m in self.members)
        return self.run_weight[member.run] / folds


def fit_run_weights(ctx: Context) -> dict:
    """predict.weights = oof: run weights fitted on the rows every run has out-of-fold predictions for."""
    if ctx.p.weights == "equal" or len(ctx.run_dirs) == 1:
        return {}
    oofs = [read_oof(r, ctx.classes).set_index("id") for r in ctx.run_dirs]
    common = sorted(set.intersection(*(set(o.index) for o in oofs)))
    if not common:
        raise StageError("predict.weights = oof: the runs share no out-of-fold ids (were they trained on the same data?)")
    y = ctx.scoring.truth(oofs[0].loc[common, "label"], ctx.classes)
    columns = [f"p_{c}" for c in ctx.classes]
    weights = fit_weights([o.loc[common, columns].to_numpy() for o in oofs], objective=ctx.scoring.run_objective(y))
    ctx.run_weight = {str(r): float(w) for r, w in zip(ctx.run_dirs, weights)}
    return {f"weight {r}": round(float(w), 4) for r, w in zip(ctx.run_dirs, weights)}


def ensemble_oof(ctx: Context) -> pd.DataFrame:
    """The ensemble's out-of-fold probabilities (run-weighted mean of the runs' oof.csv, no TTA) on the
    train ids every run predicted: the teacher targets for distillation, and the ensemble's CV."""
    oofs = [read_oof(r, ctx.classes).set_index("id") for r in ctx.run_dirs]
    common = sorted(set.intersection(*(set(o.index) for o in oofs)))
    columns = [f"p_{c}" for c in ctx.classes]
    probs = sum(ctx.run_weight[str(r)] * o.loc[common, columns].to_numpy() for r, o in zip(ctx.run_dirs, oofs))
    frame = pd.DataFrame(probs, columns=columns)
    frame.insert(0, "label", oofs[0].loc[common, "label"].to_numpy())
    frame.insert(0, "id", common)
    return frame


def oof_view_logits(ctx: Context, groups: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray, list]:
    """Per run, the (V, S, K) logits of every view of `groups` on a sample of out-of-fold images, each
    predicted by the fold model that did not train on it; plus the sample's labels and the views."""
    views = expand(groups, ctx.p.tta_shift, ctx.p.tta_scale, ctx.p.tta_crop)
    oofs = {}
    for run_dir in ctx.run_dirs:
        trained = {m.fold for m in ctx.members if m.run == str(run_dir)}
        oof = read_oof(run_dir, ctx.classes)
        oofs[str(run_dir)] = oof[oof.fold.isin(trained)].set_index("id")
    ids = sorted(set.intersection(*(set(o.index) for o in oofs.values())))
    if not ids:
        raise StageError(f"no out-of-fold rows shared by the runs {', '.join(oofs)} to measure TTA on (empty oof.csv?)")
    if ctx.p.tta_oof_images and len(ids) > ctx.p.tta_oof_images:
        ids = sorted(np.random.default_rng(ctx.seed).choice(ids, ctx.p.tta_oof_images, replace=False))
    position = pd.Series(np.arange(len(ids)), index=ids)
    y = ctx.scoring.truth(next(iter(oofs.values())).loc[ids, "label"], ctx.classes)
    logits = {r: np.zeros((len(views), len(ids), len(ctx.classes)), dtype=np.float32) for r in oofs}
    for member in track(ctx.members, len(ctx.members), f"TTA on OOF ({len(views)} views)"):
        fold_ids = [i for i in oofs[member.run].index[oofs[member.run].fold == member.fold] if i in position.index]
        if not fold_ids:
            continue
        model, ckpt = ctx.model(member)
        rows = ctx.row_of["train"].loc[fold_ids].to_numpy()
        logits[member.run][:, position.loc[fold_ids].to_numpy()] = predict_views(
            model, ctx.arrays["train"], rows, ckpt["norm"], views, ctx.p.batch_size, ctx.device, ctx.amp)
    return logits, y, views


def choose_tta(ctx: Context) -> tuple[list[str], str, pd.DataFrame]:
    """Measure TTA candidates on OOF images; return the chosen groups, merge, and the table of scores."""
    auto = ctx.p.tta == "auto"
    asked = list(TTA_VIEWS) if auto else list(ctx.p.tta)
    groups = ["identity"] + [g for g in asked if g != "identity"]
    merges = [m for m in MERGES if m != "geometric"] if ctx.p.tta_merge == "auto" else [ctx.p.tta_merge]
    logits, y, views = oof_view_logits(ctx, groups)
    slices, start = {}, 0
    for g in groups:
        n = len(expand([g], ctx.p.tta_shift, ctx.p.tta_scale, ctx.p.tta_crop))
        slices[g], start = list(range(start, start + n)), start + n
    rows = []

    metric = ctx.scoring.tta_metric
    higher = ctx.scoring.higher_is_better(metric)

    def evaluate(candidate: list[str], how: str) -> Result:
        take = [k for g in candidate for k in slices[g]]
        probs = sum(ctx.run_weight[r] * merge(v[take], how, ctx.multi_label) for r, v in logits.items())
        result = ctx.scoring.measure(y, probs)
        rows.append({"views": "+".join(candidate), "n_views": len(take), "merge": how,
                     "accuracy": result.accuracy, "log_loss": result.log_loss,
                     **({metric: result.score} if result.score is not None else {})})
        return result

    def best_merge(candidate: list[str]) -> tuple[str, Result]:
        results = {how: evaluate(candidate, how) for how in merges}
        how = max(results, key=lambda h: rank(results[h], metric, higher))
        return how, results[how]

    if not auto:
        best_merge(["identity"])
        chosen = [g for g in groups if g in asked]
        how, _ = best_merge(chosen)
    else:
        # Greedy forward selection: add the view group that helps most, while one helps beyond noise.
        chosen = ["identity"]
        how, best = best_merge(chosen)
        while True:
            trials = {g: best_merge(chosen + [g]) for g in groups if g not in chosen}
            good = {g: t for g, t in trials.items() if better(t[1], best, metric, higher)}
            if not good:
                break
            g = max(good, key=lambda g: rank(good[g][1], metric, higher))
            chosen, (how, best) = chosen + [g], good[g]
    table = pd.DataFrame(rows).drop_duplicates(["views", "merge"])
    table["n_images"] = len(y)
    return chosen, how, table


def predict_test(ctx: Context, views) -> tuple[np.ndarray, list[str], str]:
    test = ctx.index[ctx.index.split == "test"]
    probs = np.zeros((len(test), len(ctx.classes)))
    rows = test.row.to_numpy()
    for member in track(ctx.members, len(ctx.members), f"predict test ({len(views)} views)"):
        model, ckpt = ctx.model(member)
        logits = predict_views(model, ctx.arrays["test"], rows, ckpt["norm"], views, ctx.p.batch_size, ctx.device, ctx.amp)
        probs += ctx.member_weight(member) * merge(logits, ctx.how, ctx.multi_label)
    return probs, test.id.tolist()


def check(params: Params, data) -> None:
    """Before any work (pipeline.checks): the sample's format is decidable with these classes."""
    if data is not None:
        sample_format(data.sample, [str(c) for c in data.classes], Answers(choice=params.predict.submission))


def run(params: Params, paths) -> dict:
    """The story: ensemble's OOF, TTA chosen on it, the test predicted, corrected, written, summarised."""
    ctx = Context(params, paths)
    if ctx.missing:
        console.print(f"[yellow]missing folds[/] (predicting with the {len(ctx.members)} that finished): {', '.join(ctx.missing)}")
    weights = fit_run_weights(ctx)
    oof = score_oof(ctx, paths.out)
    tta = pick_tta(ctx, paths.out)
    probs, ids = predict_test(ctx, tta.views)
    probs, ids, unread = fill_unread(ctx, paths["preprocess"], probs, ids)
    exact = exact_leak_ids(read_json(paths["dedup"] / "report.json"))
    probs, changes = correct(probs, ids, read_clusters(paths["dedup"]), ctx.train_labels, ctx.classes, ctx.p.leak_label,
                             ctx.p.consistent_clusters, ctx.p.leak_weight, exact, ctx.task)
    write_csv(paths.out / "corrections.csv", changes)
    probs, submission = write_outputs(ctx, paths, probs, ids)
    summary = summarize(ctx, paths, weights, oof, tta, submission, probs, unread, changes)
    shown = ctx.train_labels.map(lambda c: tasks.split_tags(c, ctx.task.separator)).explode() if ctx.multi_label else ctx.train_labels
    plot_predictions(paths.out / "predictions.png", probs, ctx.classes, shown, tta.table, ("+".join(tta.groups), ctx.how))
    return summary


def score_oof(ctx: Context, out: Path) -> dict:
    """The ensemble's out-of-fold probabilities (oof.csv: the distillation teacher) and their scores;
    multi-label: the decision thresholds, fitted on them (thresholds.json), which TTA is then scored with."""
    oof = ensemble_oof(ctx)
    write_csv(out / "oof.csv", oof)
    y = ctx.scoring.truth(oof.label, ctx.classes)
    probs = oof[[f"p_{c}" for c in ctx.classes]].to_numpy()
    scores = {}
    if ctx.multi_label:
        ctx.thresholds, ctx.thresholds_from = ctx.scoring.thresholds(y, probs, ctx.p.thresholds)
        ctx.scoring = ctx.scoring.with_thresholds(ctx.thresholds)
        write_json(out / "thresholds.json", dict(zip(ctx.classes, np.broadcast_to(ctx.thresholds, len(ctx.classes)).tolist())))
        scores["decision thresholds"] = ctx.thresholds_from
    fitted = ", thresholds fitted on it" if ctx.thresholds_from and "fitted" in ctx.thresholds_from else ""
    measured = ctx.scoring.measure(y, probs)
    return {**scores, f"ensemble oof {ctx.scoring.metric} (no TTA{fitted})": metrics.score(ctx.scoring.metric, y, probs, ctx.scoring.options),
            "ensemble oof accuracy (no TTA)": measured.accuracy, "ensemble oof log loss (no TTA)": measured.log_loss}


@dataclass
class TtaChoice:
    groups: list[str]  # the chosen view groups
    views: list  # the views they expand to
    table: pd.DataFrame  # every candidate measured on OOF
    identity: pd.Series  # the no-TTA row of the table
    chosen: pd.Series  # the chosen row


def pick_tta(ctx: Context, out: Path) -> TtaChoice:
    """TTA views and merge measured on out-of-fold images (tta_oof.csv); sets ctx.how."""
    groups, ctx.how, table = choose_tta(ctx)
    write_csv(out / "tta_oof.csv", table)
    identity = table[table.views == "identity"].sort_values("accuracy").iloc[-1]
    chosen = table[(table.views == "+".join(groups)) & (table["merge"] == ctx.how)].iloc[0]
    return TtaChoice(groups, expand(groups, ctx.p.tta_shift, ctx.p.tta_scale, ctx.p.tta_crop), table, identity, chosen)


def fill_unread(ctx: Context, pre: Path, probs: np.ndarray, ids: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """Test images preprocess could not read still need a row: they get the training prior."""
    sample = read_sample(pre)
    predicted = set(ids)
    unread = [i for i in sample[sample.columns[0]] if i not in predicted]
    if unread:
        prior = (tasks.targets(ctx.train_labels, ctx.classes, ctx.task).mean(0) if ctx.multi_label  # each tag's frequency
                 else ctx.train_labels.value_counts(normalize=True).reindex(ctx.classes, fill_value=0).to_numpy())
        ids, probs = ids + unread, np.vstack([probs, np.tile(prior, (len(unread), 1))])
    return probs, ids, unread


def write_outputs(ctx: Context, paths, probs: np.ndarray, ids: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """probs.csv and submission.csv, both in the sample's id order; the submission validated on disk."""
    sample = read_sample(paths["preprocess"])
    order = {i: k for k, i in enumerate(ids)}
    ids = sample[sample.columns[0]].tolist()
    probs = probs[[order[i] for i in ids]]
    frame = pd.DataFrame(probs, columns=[f"p_{c}" for c in ctx.classes])
    frame.insert(0, "id", ids)
    write_csv(paths.out / "probs.csv", frame)
    answers = answers_for(ctx, sample)
    submission = build_submission(sample, ids, probs, ctx.classes, answers)
    write_submission(paths.out / "submission.csv", submission, sample, ctx.classes, answers)
    return probs, submission


def answers_for(ctx: Context, sample: pd.DataFrame) -> Answers:
    """What each submission row answers: tags above the thresholds, or the top k classes (predict.top_k,
    else as many as the sample's label cells hold)."""
    return Answers(multi_label=ctx.multi_label, thresholds=0.5 if ctx.thresholds is None else ctx.thresholds,
                   at_least_one=ctx.scoring.options.at_least_one,
                   top_k=ctx.p.top_k or (1 if ctx.multi_label else tasks.sample_answers(sample, ctx.task.separator)),
                   separator=ctx.task.separator, probabilities=not metrics.get(ctx.scoring.metric)[0].needs_decisions,
                   choice=ctx.p.submission)


def summarize(ctx: Context, paths, weights: dict, oof: dict, tta: TtaChoice, submission: pd.DataFrame, probs: np.ndarray,
              unread: list[str], changes: pd.DataFrame) -> dict:
    """The stage summary (printed) and summary.json (with the whole class distribution)."""
    if ctx.multi_label:  # every tag answered
        tags = answers_for(ctx, read_sample(paths["preprocess"])).tags(probs)
        predicted = pd.Series([c for row in tags for c, on in zip(ctx.classes, row) if on])
    else:
        predicted = pd.Series([ctx.classes[k] for k in probs.argmax(1)])
    identity, chosen = tta.identity, tta.chosen
    summary = {
        "members": len(ctx.members),
        "runs": len(ctx.run_dirs),
        "missing folds": ctx.missing,
        "task": f"{ctx.task.kind} ({ctx.task.why})",
        **weights,
        **oof,
        "tta views": "+".join(tta.groups) + f" ({len(tta.views)} views, {ctx.how})",
        "tta chosen by": f"OOF {ctx.scoring.tta_metric} (auto)" if ctx.p.tta == "auto" else "params",
        "oof images measured": int(chosen.n_images),
        "oof accuracy without TTA": float(identity.accuracy),
        "oof accuracy with TTA": float(chosen.accuracy),
        "oof TTA gain": float(chosen.accuracy - identity.accuracy),
        "oof log loss without/with TTA": f"{identity.log_loss:.4f} / {chosen.log_loss:.4f}",
        "test images": len(submission),
        "filled with prior (unreadable)": len(unread),
        "train-test leaks (dedup report)": len(read_json(paths["dedup"] / "report.json").get("train_test_leaks", [])),
        "corrected by leak label": int(changes.rule.str.startswith("leak").sum()),
        "leak labels taken as they are (pixel-identical)": int((changes.rule == "leak (exact)").sum()),
        "leak label blend weight (near duplicates)": ctx.p.leak_weight,
        "corrected by cluster consistency": int((changes.rule == "cluster").sum()),
        "predictions changed by correction": int((changes.before != changes.after).sum()),
        "mean confidence": float(probs.max(1).mean()),
        "predicted tags" if ctx.multi_label else "predicted classes": predicted.value_counts().head(10).to_dict(),
    }
    write_json(paths.out / "summary.json", {**summary, "class distribution": predicted.value_counts().to_dict()})
    return human_summary(summary)


def human_summary(summary: dict) -> dict:
    """The one-screen version of summary.json: the ensemble's OOF score (the CV to quote) first, then how
    TTA and the ensemble were chosen, then what happened to the test set; related numbers on one line."""
    corrections = summary["corrected by leak label"] + summary["corrected by cluster consistency"]
    weights = {k.removeprefix("weight "): v for k, v in summary.items() if k.startswith("weight ")}
    return {
        "oof accuracy (ensemble + TTA)": f"{summary['oof accuracy with TTA']:.4f} ({summary['oof TTA gain']:+.4f} from TTA, "
                                         f"on {summary['oof images measured']} images)",
        "oof log loss without/with TTA": summary["oof log loss without/with TTA"],
        "tta": f"{summary['tta views']}, chosen by {summary['tta chosen by']}",
        "members": f"{summary['members']} fold models from {summary['runs']} run(s)"
                   + (f"; missing: {', '.join(summary['missing folds'])}" if summary["missing folds"] else ""),
        **({"run weights (oof)": weights} if weights else {}),
        "test images": f"{summary['test images']}" + (f" ({summary['filled with prior (unreadable)']} unreadable, given the train prior)"
                                                      if summary["filled with prior (unreadable)"] else ""),
        "corrections": f"{corrections} test images ({summary['corrected by leak label']} by leak label: "
                       f"{summary['leak labels taken as they are (pixel-identical)']} pixel-identical taken as they are, the rest "
                       f"blended with weight {summary['leak label blend weight (near duplicates)']}; "
                       f"{summary['corrected by cluster consistency']} by cluster); {summary['predictions changed by correction']} "
                       f"predictions changed (predict/corrections.csv)",
        "mean confidence": summary["mean confidence"],
        **{f"{key} (top 10)": summary[key] for key in ("predicted classes", "predicted tags") if key in summary},
        "written": "submission.csv, probs.csv, summary.json (every number), predictions.png",
    }
