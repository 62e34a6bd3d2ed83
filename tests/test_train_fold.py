"""Train on a tiny generated cache (CPU, seconds): OOF coverage, determinism, resume, NaN, CLI."""

import json
import re

import albumentations as A
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cache import read_clusters, read_index
from pipeline.params import load_params
from pipeline.errors import CheckError, StageError
from pipeline.runner import StagePaths
import stages.train as train_stage
from stages.augment import gpu_recipe
from stages.train import loop
from tests.cache_files import save_cache, save_clusters

TINY = ["train.model=resnet10t", "train.epochs=2", "train.batch_size=16", "train.lr_base_batch=null", "train.checkpoint_every=1", "train.workers=0", "train.folds=3",
        "train.eval_batch_size=64", "train.warmup_epochs=1", "train.mixup=0.2", "train.cutmix=0.0", "train.patience=0",
        "train.ema=0.9", "train.drop_path=0.0", "train.lr=0.003"]


def make_inputs(root, n=48, classes=3, size=16):
    rng = np.random.default_rng(0)
    labels = np.arange(n) % classes
    images = rng.integers(0, 60, (n, size, size, 1)).astype(np.uint8)
    for i, c in enumerate(labels):  # a learnable signal: a bright band whose row depends on the class
        images[i, 4 * c : 4 * c + 4] += 150
    pre, dedup, aug = root / "preprocess", root / "dedup", root / "augment"
    for d in (pre, dedup, aug):
        d.mkdir(parents=True)
    ids = [f"img{i}" for i in range(n)]
    index = pd.DataFrame({"id": ids, "split": "train", "label": [str(c) for c in labels], "row": range(n), "path": ""})
    save_cache(pre, images, images[:0], index, [str(c) for c in range(classes)])
    cluster = [i // 2 for i in range(n)]  # pairs of "duplicates" (same label: i and i+1 differ, so use i//2*2 labels)
    save_clusters(dedup, pd.DataFrame({"id": ids, "split": "train", "cluster": cluster, "is_representative": True, "weight": 1.0}))
    A.save(A.Compose([A.HorizontalFlip(p=0.5)]), str(aug / "transform.json"), data_format="json")
    params, _ = load_params("params.yaml", ["data.root=/nonexistent"])
    (aug / "gpu_augment.json").write_text(json.dumps(gpu_recipe(params.augment)))
    return {"preprocess": pre, "dedup": dedup, "augment": aug}


def run(root, out, extra=()):
    params, _ = load_params("params.yaml", TINY + list(extra) + ["data.root=/nonexistent"])
    inputs = root if isinstance(root, dict) else make_inputs(root)
    out.mkdir(parents=True, exist_ok=True)
    return train_stage.run(params, StagePaths(out=out, inputs=inputs)), inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("data"))


def test_oof_covers_every_train_id_once_and_is_deterministic(inputs, tmp_path):
    run(inputs, tmp_path / "a")
    run(inputs, tmp_path / "b")
    oof = pd.read_csv(tmp_path / "a" / "oof.csv", dtype={"id": str, "label": str})
    ids = read_index(inputs["preprocess"]).id
    assert sorted(oof.id) == sorted(ids) and oof.id.is_unique
    clusters = read_clusters(inputs["dedup"]).set_index("id").cluster
    assert oof.groupby(oof.id.map(clusters)).fold.nunique().max() == 1
    again = pd.read_csv(tmp_path / "b" / "oof.csv", dtype={"id": str, "label": str})
    pd.testing.assert_frame_equal(oof, again)  # same params + seed on CPU -> identical OOF
    ckpt = torch.load(tmp_path / "a" / "fold0" / "best.pt", weights_only=False)
    for key in ("model", "classes", "in_chans", "norm", "params", "fold", "epoch", "metric", "state_dict", "ema_state_dict"):
        assert key in ckpt
    record = json.loads((tmp_path / "a" / "fold0" / "fold.json").read_text())
    assert record["data_path"] == "loader" and record["batch_size"] == 16  # decided once per run, recorded per fold
    cv = json.loads((tmp_path / "a" / "cv.json").read_text())
    assert set(cv["per_fold"]) == {"0", "1", "2"}
    for name in ("fold0/metrics.csv", "fold0/curves.png", "fold0/lr_schedule.png", "confusion.png"):
        assert (tmp_path / "a" / name).is_file()


def test_resume_after_kill_equals_uninterrupted(inputs, tmp_path, monkeypatch):
    extra = ["train.fold=0", "train.epochs=3"]
    run(inputs, tmp_path / "full", extra)
    real = loop.write_metrics

    def killed(path, history):  # the process dies right after epoch 1's checkpoints
        real(path, history)
        if len(history) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "write_metrics", killed)
    with pytest.raises(KeyboardInterrupt):
        run(inputs, tmp_path / "cut", extra)
    monkeypatch.setattr(loop, "write_metrics", real)
    run(inputs, tmp_path / "cut", extra)
    a = pd.read_csv(tmp_path / "full" / "oof.csv")
    b = pd.read_csv(tmp_path / "cut" / "oof.csv")
    pd.testing.assert_frame_equal(a, b)
    ma = pd.read_csv(tmp_path / "full" / "fold0" / "metrics.csv").drop(columns=["seconds", "images_per_s"])
    mb = pd.read_csv(tmp_path / "cut" / "fold0" / "metrics.csv").drop(columns=["seconds", "images_per_s"])
    pd.testing.assert_frame_equal(ma, mb)


def test_nan_loss_stops_with_a_clear_message_and_keeps_last_checkpoint(inputs, tmp_path, monkeypatch):
    extra = ["train.fold=0", "train.epochs=2"]
    real = loop.losses.per_sample_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] > 3 else out  # epoch 0 has 2 steps, so NaN in epoch 1

    monkeypatch.setattr(loop.losses, "per_sample_loss", poisoned)
    with pytest.raises(StageError, match="loss is nan at epoch 1"):
        run(inputs, tmp_path / "nan", extra)
    last = torch.load(tmp_path / "nan" / ".partial" / "fold0" / "last.pt", weights_only=False)  # an unfinished fold stays in .partial/
    assert last["epoch"] == 0 and all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_missing_pretrained_file_is_a_clear_error(inputs, tmp_path):
    with pytest.raises(CheckError, match="train.pretrained = '/no/such.safetensors': no such file"):
        run(inputs, tmp_path / "p", ["train.fold=0", "train.pretrained=/no/such.safetensors"])


def test_pretrained_from_our_checkpoint_loads(inputs, tmp_path):
    run(inputs, tmp_path / "first", ["train.fold=0", "train.epochs=1"])
    summary, _ = run(inputs, tmp_path / "second", ["train.fold=0", "train.epochs=1", f"train.pretrained={tmp_path / 'first' / 'fold0' / 'best.pt'}"])
    assert len(summary["trained in this run"]) == 1


@pytest.mark.parametrize("score", ["probe", "contrast"])
def test_curriculum_trains(inputs, tmp_path, score):
    run(inputs, tmp_path / score, ["train.fold=0", "train.epochs=2", "train.curriculum=true", f"train.curriculum_score={score}",
                                   "train.curriculum_probe_epochs=1", "train.curriculum_span=1.0", "train.curriculum_thresholds=[0.5]"])
    metrics = pd.read_csv(tmp_path / score / "fold0" / "metrics.csv")
    assert list(metrics["pool"]) == [0.5, 0.5]


def test_curriculum_from_oof(inputs, tmp_path):
    run(inputs, tmp_path / "first", [])
    run(inputs, tmp_path / "second", ["train.fold=0", "train.epochs=2", "train.curriculum=true", "train.curriculum_score=oof",
                                      f"train.curriculum_oof={tmp_path / 'first' / 'oof.csv'}"])
    assert (tmp_path / "second" / "oof.csv").is_file()


def test_device_side_augmentation_path_trains_deterministically(inputs, tmp_path):
    extra = ["train.fold=0", "train.epochs=2", "train.gpu_augment=always"]
    run(inputs, tmp_path / "a", extra)
    run(inputs, tmp_path / "b", extra)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "oof.csv"), pd.read_csv(tmp_path / "b" / "oof.csv"))


def test_a_finished_fold_is_kept_when_the_other_folds_train(inputs, tmp_path):
    run(inputs, tmp_path, ["train.fold=1"])
    first = (tmp_path / "fold1" / "best.pt").stat().st_mtime_ns
    summary, _ = run(inputs, tmp_path, [])
    assert (tmp_path / "fold1" / "best.pt").stat().st_mtime_ns == first  # not retrained
    assert summary["trained in this run"] == ["fold 0", "fold 2"] and summary["missing folds"] == "none"
    assert sorted(pd.read_csv(tmp_path / "oof.csv").fold.unique()) == [0, 1, 2]


def test_a_batch_job_log_has_one_line_per_epoch_with_the_run_eta(inputs, tmp_path, capfd):
    """Under pytest stderr is not a terminal, as under SLURM or nohup: no bar, one line per epoch."""
    summary, _ = run(inputs, tmp_path, ["train.epochs=2"])
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if " epoch " in line and "eta run" in line]
    assert [line.split()[:4] for line in lines] == [["fold", str(k), "epoch", f"{e}/2"] for k in range(3) for e in (1, 2)]
    assert all(re.search(r"eta fold \d+:\d\d  eta run \d+:\d\d$", line) for line in lines)
    assert not (tmp_path / ".partial").exists()  # every fold finished: no empty .partial/ left behind
    assert (tmp_path / "top_losses.png").is_file() and list(summary)[0] == "cv accuracy"


def test_min_steps_trains_the_raised_epochs_and_says_so(inputs, tmp_path, capfd):
    """32 training rows of batch 16 are 2 steps an epoch: 1 epoch under min_steps 5 becomes 3, every part of
    the loop (epoch count, lr schedule, the run's ETA, the record) on the raised length."""
    run(inputs, tmp_path, ["train.epochs=1", "train.min_steps=5", "train.fold=0", "train.schedule=cosine"])
    err = " ".join(capfd.readouterr().err.split())
    assert "recipe for 3 epochs x 2 steps: epochs 3 (train.min_steps 5: 1 epochs are 2 steps)" in err
    assert "fold 0 epoch 3/3" in err
    history = pd.read_csv(tmp_path / "fold0" / "metrics.csv")
    assert len(history) == 3 and history.lr.iloc[-1] < history.lr.max()  # the cosine spans the 6 steps, not 2
    assert json.loads((tmp_path / "fold0" / "recipe.json").read_text())["total_steps"] == 6
