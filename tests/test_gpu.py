"""What only a GPU can show (skipped without CUDA; bench/gpu_acceptance.sh --part tests runs them):
bf16 autocast, fp16 with the grad scaler, channels_last, torch.compile, auto batch size, resume across
AMP modes, the cache `fits` decision, and no host sync in the step under CUDA's own sync detector."""

from types import SimpleNamespace
import warnings

import pandas as pd
import pytest
import torch

import stages.train as train_stage
from pipeline.params import load_params
from pipeline.runner import StagePaths
from stages.train import loop
from tests.test_train_fold import TINY, make_inputs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = ["train.device=cuda", "train.fold=0", "train.gpu_augment=always"]


def train(inputs, out, *extra):
    params, _ = load_params("params.yaml", TINY + CUDA + list(extra) + ["data.root=/nonexistent"])
    out.mkdir(parents=True, exist_ok=True)
    return train_stage.run(params, StagePaths(out=out, inputs=inputs))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("data"), n=96)


@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_a_fold_trains_under_each_amp_mode(inputs, tmp_path, amp):
    train(inputs, tmp_path, f"train.amp={amp}")
    history = pd.read_csv(tmp_path / "fold0" / "metrics.csv")
    assert history.train_loss.notna().all() and (history.train_loss < 10).all()
    last = torch.load(tmp_path / "fold0" / "last.pt", weights_only=False)
    assert bool(last["scaler"]) == (amp == "fp16")  # the scaler (and its state) only under fp16


def test_channels_last_and_compile(inputs, tmp_path, monkeypatch):
    seen = {}
    real = loop.batch_loss

    def spy(fold, params, x, *args):
        conv = next(q for q in fold.model.parameters() if q.ndim == 4)
        seen["channels_last"] = fold.channels_last and conv.is_contiguous(memory_format=torch.channels_last)
        return real(fold, params, x, *args)

    monkeypatch.setattr(loop, "batch_loss", spy)
    train(inputs, tmp_path, "train.channels_last=true", "train.compile=true")
    assert seen["channels_last"] and (tmp_path / "fold0" / "best.pt").is_file()


def test_auto_batch_probes_the_device_and_the_run_uses_it(inputs, tmp_path):
    summary = train(inputs, tmp_path, "train.batch_size=auto", "train.lr_base_batch=16", "train.batch_size_max=64")
    assert 1 <= summary["batch size"] <= 64


@pytest.mark.parametrize("first,second", [("fp16", "bf16"), ("bf16", "fp16")])
def test_resume_across_amp_modes(inputs, tmp_path, monkeypatch, first, second):
    real = loop.write_metrics

    def killed(path, history):
        real(path, history)
        if len(history) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "write_metrics", killed)
    with pytest.raises(KeyboardInterrupt):
        train(inputs, tmp_path, f"train.amp={first}", "train.epochs=2")
    monkeypatch.setattr(loop, "write_metrics", real)
    train(inputs, tmp_path, f"train.amp={second}", "train.epochs=2")
    assert len(pd.read_csv(tmp_path / "fold0" / "metrics.csv")) == 2  # epoch 0 from the first run, epoch 1 resumed


def test_the_cache_fits_on_the_device():
    from stages.train import data_path

    import numpy as np

    from stages.augment import gpu_recipe

    params = load_params("params.yaml", ["data.root=/nonexistent"])[0]
    data = SimpleNamespace(rows=np.zeros(1000), pixels=np.zeros((1000, 64, 64, 3), np.uint8), gpu_recipe=gpu_recipe(params.augment))
    path, why = data_path(params.train, data, torch.device("cuda"))
    assert path == "device" and "fits" in why


def test_the_step_does_not_sync_under_cuda_sync_debug_mode(inputs, tmp_path, monkeypatch):
    """CUDA's own detector warns on every synchronising call; inside train_one_epoch only the loss reads may."""
    real, counts = loop.train_one_epoch, []

    def watched(fold, *args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                return real(fold, *args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                counts.append((len([w for w in caught if "synchroniz" in str(w.message)]), fold.steps_per_epoch))

    monkeypatch.setattr(loop, "train_one_epoch", watched)
    train(inputs, tmp_path, "train.log_every=4", "train.batch_size=8", "train.amp=bf16")
    for syncs, steps in counts:
        assert syncs <= steps / 4 + 3, counts
