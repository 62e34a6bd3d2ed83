import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from pipeline.cache import read_clusters, read_index
from pipeline.cli import app
from pipeline.runner import BY_NAME, run_stage, stage_status
from stages.predict.ensemble import find_members, load_model
from tests.cache_files import save_clusters
from tests._predict_fixtures import PARAMS, TINY, record_edit, tiny_params, trained  # noqa: F401


def cli(workdir, *overrides):
    args = ["predict", "--params", str(PARAMS), "-w", str(workdir)]
    for o in [*TINY, *overrides]:
        args += ["-S", o]
    return CliRunner().invoke(app, args)


def test_predict_cli_writes_a_valid_submission(trained):  # noqa: F811
    result = cli(trained)
    assert result.exit_code == 0, result.output
    out = trained / "predict"
    sample = pd.read_csv(trained / "preprocess" / "test" / "sample_submission.csv", dtype=str)
    sub = pd.read_csv(out / "submission.csv", dtype=str)
    assert list(sub.columns) == list(sample.columns) and sub.id.tolist() == sample.id.tolist()
    classes = json.loads((trained / "preprocess" / "train" / "classes.json").read_text())
    assert set(sub.label) <= set(map(str, classes))
    probs = pd.read_csv(out / "probs.csv", dtype={"id": str})
    assert probs.id.tolist() == sample.id.tolist()
    assert np.allclose(probs.filter(like="p_").sum(axis=1), 1, atol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["members"] == 2 and summary["missing folds"] == []
    assert summary["test images"] == len(sample)
    assert sum(summary["class distribution"].values()) == len(sample)
    tta = pd.read_csv(out / "tta_oof.csv", dtype={"views": str})
    assert set(tta.views) == {"identity", "identity+hflip"} and (tta.n_images == summary["oof images measured"]).all()
    assert (out / "predictions.png").stat().st_size > 1000
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    assert summary["oof images measured"] == 200
    assert oof.id.tolist() == sorted(pd.read_csv(trained / "train" / "oof.csv", dtype={"id": str}).id)


def test_auto_tta_picks_from_measured_candidates(trained, tmp_path):  # noqa: F811
    workdir = tmp_path / "w"
    for name in ("preprocess", "dedup", "augment", "train"):
        shutil.copytree(trained / name, workdir / name)
    run_stage(BY_NAME["predict"], tiny_params(workdir, "predict.tta=auto", "predict.tta_merge=auto",
                                              "predict.tta_oof_images=200"), workdir)
    tta = pd.read_csv(workdir / "predict" / "tta_oof.csv")
    summary = json.loads((workdir / "predict" / "summary.json").read_text())
    chosen, how = summary["tta views"].split(" ")[0], summary["tta views"].split(", ")[-1].rstrip(")")
    assert chosen.startswith("identity") and (tta.n_images == 200).all()
    assert {"identity+hflip", "identity+shift", "identity+crops"} <= set(tta.views)
    row = tta[(tta.views == chosen) & (tta["merge"] == how)].iloc[0]
    identity = tta[tta.views == "identity"].iloc[0]
    assert summary["oof accuracy with TTA"] == pytest.approx(row.accuracy)
    # never worse than no TTA on the measured images (tta_metric: accuracy)
    assert row.accuracy > identity.accuracy or chosen == "identity"


def test_missing_fold_is_reported_and_the_rest_predicts(trained, tmp_path):  # noqa: F811
    workdir = tmp_path / "w"
    for name in ("preprocess", "dedup", "augment", "train"):
        shutil.copytree(trained / name, workdir / name)
    (workdir / "train" / "fold1" / "best.pt").unlink()
    members, missing = find_members([workdir / "train"])
    assert [m.fold for m in members] == [0] and missing == [f"{workdir / 'train'}/fold1"]
    # A deleted checkpoint is damage (predict refuses it by default); --use-existing predicts with the rest.
    result = run_stage(BY_NAME["predict"], tiny_params(workdir), workdir, use_existing=True)
    result = json.loads((workdir / "predict" / "summary.json").read_text())  # every number (the printed summary is shorter)
    assert result["members"] == 1 and result["missing folds"] == missing


def test_ema_weights_are_preferred(trained, tmp_path):  # noqa: F811
    ckpt = torch.load(trained / "train" / "fold0" / "best.pt", map_location="cpu", weights_only=False)
    ema = {f"module.{k}": torch.zeros_like(v) if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    torch.save({**ckpt, "ema_state_dict": ema}, tmp_path / "best.pt")
    model, _ = load_model(tmp_path / "best.pt", torch.device("cpu"))
    assert all(float(p.detach().abs().sum()) == 0 for p in model.parameters())


def test_extra_runs_with_oof_weights(trained, tmp_path):  # noqa: F811
    """A second train run (here: a copy whose OOF is made confidently wrong) is ensembled; oof weights
    favour the good run."""
    other = tmp_path / "other" / "train"
    shutil.copytree(trained / "train", other)
    shutil.copytree(trained / "preprocess", other.parent / "preprocess")  # a complete workdir, same cache
    oof = pd.read_csv(other / "oof.csv", dtype={"id": str, "label": str})
    cols = [c for c in oof.columns if c.startswith("p_")]
    wrong = (oof.label.map({c[2:]: k for k, c in enumerate(cols)}).to_numpy() + 1) % len(cols)  # confidently wrong
    oof[cols] = 0.02 / (len(cols) - 1)
    oof[cols] = np.where(np.eye(len(cols))[wrong] == 1, 0.98, oof[cols].to_numpy())
    oof.to_csv(other / "oof.csv", index=False)
    workdir = tmp_path / "w"
    for name in ("preprocess", "dedup", "augment", "train"):
        shutil.copytree(trained / name, workdir / name)
    result = run_stage(BY_NAME["predict"], tiny_params(workdir, f"predict.runs=[{other}]", "predict.weights=oof"), workdir)
    result = json.loads((workdir / "predict" / "summary.json").read_text())  # every number (the printed summary is shorter)
    assert result["members"] == 4 and result["runs"] == 2
    assert result[f"weight {workdir / 'train'}"] > 0.9 > result[f"weight {other}"]
    # the extra run is an input: retraining it makes predict stale
    params = tiny_params(workdir, f"predict.runs=[{other}]", "predict.weights=oof")
    assert stage_status(BY_NAME["predict"], params, workdir)[0] == "fresh"
    oof.to_csv(other / "oof.csv", index=False, float_format="%.5f")
    assert stage_status(BY_NAME["predict"], params, workdir) == ("stale", f"input run:{other} changed")


def test_extra_run_on_another_cache_is_refused_by_name(trained, tmp_path):  # noqa: F811
    other = tmp_path / "other"
    shutil.copytree(trained / "train", other / "train")
    report = json.loads((trained / "preprocess" / "train" / "report.json").read_text())
    (other / "preprocess" / "train").mkdir(parents=True)
    (other / "preprocess" / "train" / "report.json").write_text(json.dumps({**report, "size": [48, 48], "channels": "rgb"}))
    workdir = tmp_path / "w"
    for name in ("preprocess", "dedup", "augment", "train"):
        shutil.copytree(trained / name, workdir / name)
    result = cli(workdir, f"predict.runs=[{other / 'train'}]")
    assert result.exit_code == 2 and not (workdir / "predict").exists()
    assert f"predict.runs: {other / 'train'} was trained on a different cache: size [48, 48] (this workdir: {report['size']}); " \
           f"channels rgb (this workdir: {report['channels']})" in " ".join(result.output.split())
    shutil.rmtree(other / "preprocess")
    assert "has no" in cli(workdir, f"predict.runs=[{other / 'train'}]").output


def test_bad_sample_column_fails_with_one_line(trained, tmp_path):  # noqa: F811
    workdir = tmp_path / "w"
    for name in ("preprocess", "dedup", "augment", "train"):
        shutil.copytree(trained / name, workdir / name)
    sample = workdir / "preprocess" / "test" / "sample_submission.csv"
    frame = pd.read_csv(sample, dtype=str)
    frame["extra"] = "x"
    frame.to_csv(sample, index=False)
    result = cli(workdir)
    # An edited cache file is caught first, before any work: preprocess's lock recorded another file.
    assert result.exit_code == 2
    assert "preprocess, whose output test/sample_submission.csv modified since the run" in result.output
    record_edit(workdir / "preprocess")
    result = cli(workdir)  # a sample whose columns do not fit the classes: one line, exit 2, before any work
    assert result.exit_code == 2
    assert "expected one label column or one column per class" in result.output


def test_constructed_leak_is_corrected_in_the_submission(trained, tmp_path):  # noqa: F811
    """Put a test image in the dedup cluster of a train image: its submitted label becomes that image's."""
    workdir = tmp_path / "w"
    for name in ("preprocess", "dedup", "augment", "train"):
        shutil.copytree(trained / name, workdir / name)
    clusters = read_clusters(workdir / "dedup")
    index = read_index(workdir / "preprocess")
    run_stage(BY_NAME["predict"], tiny_params(workdir), workdir)
    first = json.loads((workdir / "predict" / "summary.json").read_text())  # leaks dedup itself found count too
    before = pd.read_csv(workdir / "predict" / "submission.csv", dtype=str).set_index("id").label
    test_id = before.index[0]
    # a train image of a different class than predicted
    donor = index[(index.split == "train") & (index.label != before[test_id])].iloc[0]
    clusters.loc[clusters.id == test_id, "cluster"] = int(clusters.loc[clusters.id == donor.id, "cluster"].iloc[0])
    save_clusters(workdir / "dedup", clusters)
    record_edit(workdir / "dedup")
    result = run_stage(BY_NAME["predict"], tiny_params(workdir), workdir)
    result = json.loads((workdir / "predict" / "summary.json").read_text())  # every number (the printed summary is shorter)
    after = pd.read_csv(workdir / "predict" / "submission.csv", dtype=str).set_index("id").label
    assert after[test_id] == donor.label
    assert (after.drop(test_id) == before.drop(test_id)).all()
    assert result["corrected by leak label"] == first["corrected by leak label"] + 1
    assert result["predictions changed by correction"] == first["predictions changed by correction"] + 1
    changes = pd.read_csv(workdir / "predict" / "corrections.csv", dtype=str)
    assert changes[changes.id == test_id].to_dict("records") == [{"id": test_id, "rule": "leak", "before": before[test_id], "after": donor.label}]


def test_probability_sample_gets_probabilities(trained, tmp_path):  # noqa: F811
    workdir = tmp_path / "w"
    for name in ("preprocess", "dedup", "augment", "train"):
        shutil.copytree(trained / name, workdir / name)
    classes = json.loads((workdir / "preprocess" / "train" / "classes.json").read_text())
    sample_path = workdir / "preprocess" / "test" / "sample_submission.csv"
    sample = pd.read_csv(sample_path, dtype=str)[["id"]]
    for c in reversed([str(c) for c in classes]):
        sample[c] = "0.1"
    sample.to_csv(sample_path, index=False)
    record_edit(workdir / "preprocess")
    run_stage(BY_NAME["predict"], tiny_params(workdir), workdir)
    sub = pd.read_csv(workdir / "predict" / "submission.csv", dtype={"id": str})
    probs = pd.read_csv(workdir / "predict" / "probs.csv", dtype={"id": str})
    assert list(sub.columns) == list(sample.columns)
    assert np.allclose(sub[[str(c) for c in classes]].to_numpy(), probs.filter(like="p_").to_numpy(), atol=1e-6)


def test_unreadable_test_image_gets_the_train_prior(trained, tmp_path):  # noqa: F811
    """A sample id preprocess could not read (absent from index.csv) still gets a row: the train prior."""
    workdir = tmp_path / "w"
    for name in ("preprocess", "dedup", "augment", "train"):
        shutil.copytree(trained / name, workdir / name)
    sample_path = workdir / "preprocess" / "test" / "sample_submission.csv"
    sample = pd.read_csv(sample_path, dtype=str)
    sample = pd.concat([sample.iloc[:3], pd.DataFrame({"id": ["broken_file"], "label": ["0"]}), sample.iloc[3:]])
    sample.to_csv(sample_path, index=False)
    record_edit(workdir / "preprocess")
    result = run_stage(BY_NAME["predict"], tiny_params(workdir), workdir)
    result = json.loads((workdir / "predict" / "summary.json").read_text())  # every number (the printed summary is shorter)
    assert result["filled with prior (unreadable)"] == 1
    probs = pd.read_csv(workdir / "predict" / "probs.csv", dtype={"id": str}).set_index("id")
    assert probs.index.tolist() == sample.id.tolist()
    index = read_index(workdir / "preprocess")
    prior = index[index.split == "train"].label.value_counts(normalize=True)
    assert np.allclose(probs.loc["broken_file"].to_numpy(), prior.reindex([c[2:] for c in probs.columns]).to_numpy())
