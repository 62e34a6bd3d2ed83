"""predict: fold ensemble x TTA on the test cache, duplicate-aware correction, a validated submission.

Steps, each in its own module:
  1. ensemble.py: find every fold checkpoint of this workdir's train/ and of predict.runs.
  2. tta.py: measure TTA on the validation folds (each fold model on its own out-of-fold images), and
     with predict.tta = auto keep, greedily, the view groups (and the merge) that improve the OOF
     predict.tta_metric beyond noise; report the gain either way.
  3. predict the test cache with every member x the chosen views, merge views, average members.
  4. correction.py: duplicate clusters share one prediction; test duplicates of train images take
     their label.
  5. submission.py: the sample's exact format, validated on disk.
Outputs: probs.csv (id, p_<class>...), submission.csv, summary.json, oof.csv (the ensemble's
out-of-fold probabilities, no TTA: the distillation teacher), tta_oof.csv, corrections.csv,
predictions.png.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import metrics, tasks
from pipeline.artifacts import read_json, write_csv, write_json
from pipeline.cache import read_arrays, read_classes, read_clusters, read_index, read_task
from pipeline.console import console, track
from pipeline.device import resolve_device
from pipeline.params import TTA_VIEWS, Params
from pipeline.errors import StageError
from stages.predict.correction import correct
from stages.predict import scoring
from stages.predict.ensemble import Member, find_members, fit_weights, load_model, predict_views, read_oof
from stages.predict.scoring import Result, better, rank  # noqa: F401  (Result is part of this stage's API)
from stages.predict.plots import plot_predictions
from stages.predict.submission import Answers, build_submission, write_submission
from stages.predict.tta import MERGES, expand, merge


class Context:
    """What every step needs: params, cache, device, members and their run weights."""

    def __init__(self, params: Params, paths):
        self.p = params.predict
        pre = paths["preprocess"]
        self.index, self.classes, self.task = read_index(pre), read_classes(pre), read_task(pre)
        self.multi_label = self.task.multi_label
        self.scoring = scoring.load(paths["train"], self.task, self.p.tta_metric)
        self.arrays = read_arrays(pre)
        self.row_of = {s: self.index[self.index.split == s].set_index("id")["row"] for s in ("train", "test")}
        self.run_dirs = [Path(paths["train"])] + [Path(r).expanduser() for r in self.p.runs]
        self.members, self.missing = find_members(self.run_dirs)
        self.device = resolve_device(self.p.device)
        self.amp = self.p.amp and self.device.type == "cuda"
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
    weights = fit_weights([o.loc[common, columns].to_numpy() for o in oofs], ctx.scoring.run_objective(y))
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
        ids = sorted(np.random.default_rng(0).choice(ids, ctx.p.tta_oof_images, replace=False))
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


def answers_for(ctx: Context, thresholds) -> Answers:
    """What each submission row answers: tags above the thresholds, or the top k classes."""
    probability_metric = not metrics.get(ctx.scoring.metric)[0].needs_decisions
    return Answers(multi_label=ctx.multi_label, thresholds=0.5 if thresholds is None else thresholds,
                   at_least_one=ctx.scoring.options.at_least_one, top_k=ctx.p.top_k or ctx.task.top_k,
                   separator=ctx.task.separator, probabilities=probability_metric)


def run(params: Params, paths) -> dict:
    ctx = Context(params, paths)
    pre, out = paths["preprocess"], paths.out
    if ctx.missing:
        console.print(f"[yellow]missing folds[/] (predicting with the {len(ctx.members)} that finished): {', '.join(ctx.missing)}")
    weights = fit_run_weights(ctx)
    oof = ensemble_oof(ctx)
    write_csv(out / "oof.csv", oof)
    y = ctx.scoring.truth(oof.label, ctx.classes)
    oof_probs = oof[[f"p_{c}" for c in ctx.classes]].to_numpy()
    thresholds, thresholds_from = (ctx.scoring.thresholds(y, oof_probs, ctx.p.thresholds) if ctx.multi_label else (None, None))
    if ctx.multi_label:
        ctx.scoring = ctx.scoring.with_thresholds(thresholds)
        write_json(out / "thresholds.json", dict(zip(ctx.classes, np.broadcast_to(thresholds, len(ctx.classes)).tolist())))
    measured = ctx.scoring.measure(y, oof_probs)
    oof_accuracy, oof_log_loss = measured.accuracy, measured.log_loss
    oof_metric = metrics.score(ctx.scoring.metric, y, oof_probs, ctx.scoring.options)

    groups, ctx.how, table = choose_tta(ctx)
    write_csv(out / "tta_oof.csv", table)
    identity = table[table.views == "identity"].sort_values("accuracy").iloc[-1]
    chosen = table[(table.views == "+".join(groups)) & (table["merge"] == ctx.how)].iloc[0]
    views = expand(groups, ctx.p.tta_shift, ctx.p.tta_scale, ctx.p.tta_crop)
    probs, ids = predict_test(ctx, views)

    # Test images preprocess could not read still need a row: they get the training prior.
    sample = pd.read_csv(pre / "sample_submission.csv", dtype=str, keep_default_na=False)
    id_col = sample.columns[0]
    train_labels = ctx.index[ctx.index.split == "train"].set_index("id")["label"]
    predicted_ids = set(ids)
    unread = [i for i in sample[id_col] if i not in predicted_ids]
    if unread:
        prior = (tasks.targets(train_labels, ctx.classes, ctx.task).mean(0) if ctx.multi_label
                 else train_labels.value_counts(normalize=True).reindex(ctx.classes, fill_value=0).to_numpy())
        ids = ids + unread
        probs = np.vstack([probs, np.tile(prior, (len(unread), 1))])

    clusters = read_clusters(paths["dedup"])
    probs, changes = correct(probs, ids, clusters, train_labels, ctx.classes, ctx.p.leak_label, ctx.p.consistent_clusters, ctx.task)
    write_csv(out / "corrections.csv", changes)

    # probs.csv follows the sample's id order, like the submission.
    order = {i: k for k, i in enumerate(ids)}
    ids = sample[id_col].tolist()
    probs = probs[[order[i] for i in ids]]
    frame = pd.DataFrame(probs, columns=[f"p_{c}" for c in ctx.classes])
    frame.insert(0, "id", ids)
    write_csv(out / "probs.csv", frame)
    answers = answers_for(ctx, thresholds)
    submission = build_submission(sample, ids, probs, ctx.classes, answers)
    write_submission(out / "submission.csv", submission, sample, ctx.classes, answers)

    predicted = (pd.Series([c for row in answers.tags(probs) for c, on in zip(ctx.classes, row) if on]) if ctx.multi_label
                 else pd.Series([ctx.classes[k] for k in probs.argmax(1)]))  # multi-label: every tag answered
    leaks_reported = len(read_json(paths["dedup"] / "report.json").get("train_test_leaks", []))
    summary = {
        "members": len(ctx.members),
        "runs": len(ctx.run_dirs),
        "missing folds": ctx.missing,
        **weights,
        "task": f"{ctx.task.kind} ({ctx.task.why})" + (f", {answers.top_k} answers per image" if answers.top_k > 1 else ""),
        f"ensemble oof {ctx.scoring.metric} (no TTA{', thresholds fitted on it' if thresholds_from and 'fitted' in thresholds_from else ''})": oof_metric,
        **({"decision thresholds": thresholds_from} if ctx.multi_label else {}),
        "ensemble oof accuracy (no TTA)": oof_accuracy,
        "ensemble oof log loss (no TTA)": oof_log_loss,
        "tta views": "+".join(groups) + f" ({len(views)} views, {ctx.how})",
        "tta chosen by": f"OOF {ctx.scoring.tta_metric} (auto)" if ctx.p.tta == "auto" else "params",
        "oof images measured": int(chosen.n_images),
        "oof accuracy without TTA": float(identity.accuracy),
        "oof accuracy with TTA": float(chosen.accuracy),
        "oof TTA gain": float(chosen.accuracy - identity.accuracy),
        "oof log loss without/with TTA": f"{identity.log_loss:.4f} / {chosen.log_loss:.4f}",
        "test images": len(submission),
        "filled with prior (unreadable)": len(unread),
        "train-test leaks (dedup report)": leaks_reported,
        "corrected by leak label": int((changes.rule == "leak").sum()),
        "corrected by cluster consistency": int((changes.rule == "cluster").sum()),
        "predictions changed by correction": int((changes.before != changes.after).sum()),
        "mean confidence": float(probs.max(1).mean()),
        "predicted tags" if ctx.multi_label else "predicted classes": predicted.value_counts().head(10).to_dict(),
    }
    write_json(out / "summary.json", {**summary, "class distribution": predicted.value_counts().to_dict()})
    shown = train_labels.map(lambda c: tasks.split_tags(c, ctx.task.separator)).explode() if ctx.multi_label else train_labels
    plot_predictions(out / "predictions.png", probs, ctx.classes, shown, table, ("+".join(groups), ctx.how))
    return summary
