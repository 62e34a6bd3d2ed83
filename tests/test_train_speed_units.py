"""The GPU-readiness decisions, exercised on CPU: auto batch size (an injected OOM), lr scaling, EMA
every k steps, when last.pt is written, fused AdamW, the data path, resume across AMP modes."""

from types import SimpleNamespace
import numpy as np
import pytest
import torch

from pipeline.device import autocast_dtype
from pipeline.errors import StageError
from pipeline.params import load_params
from stages.train import loop
from stages.train.batch_size import auto_batch, is_oom, scaled_lr, search
from stages.train.ema import Ema, decay_per_update


def train_params(*overrides):
    return load_params("params.yaml", ["data.root=/nonexistent", *overrides])[0].train


def test_auto_batch_halves_on_out_of_memory_and_keeps_headroom():
    fits_up_to = 300

    def try_batch(batch):  # what device_probe returns: the peak memory share, None on OOM
        return None if batch > fits_up_to else batch / 320

    assert search(try_batch, 1024)[0] == 256  # 1024 and 512 OOM; 256 fits using 80% of the memory
    assert search(lambda b: None if b > 300 else 0.95, 1024)[0] == 128  # 256 fits at 95%: halved for headroom
    with pytest.raises(StageError, match="not even a batch of 1"):
        search(lambda b: None, 8)
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")) and not is_oom(ValueError("shape"))


def test_auto_batch_on_cpu_is_the_recipes_base_batch():
    p = train_params()
    assert p.batch_size == "auto"
    batch, why = auto_batch(lambda: None, (3, 64, 64), 10, p, torch.device("cpu"))
    assert batch == p.lr_base_batch and "lr_base_batch" in why


def test_lr_scales_by_the_documented_rule():
    adamw = train_params("train.lr=0.002", "train.lr_base_batch=128")
    assert scaled_lr(adamw, 512) == pytest.approx(0.004)  # sqrt(512 / 128) = 2 for AdamW
    sgd = train_params("train.optimizer=sgd", "train.lr=0.1", "train.lr_base_batch=256")
    assert scaled_lr(sgd, 512) == pytest.approx(0.2)  # linear for SGD
    assert scaled_lr(train_params("train.lr_base_batch=null", "train.batch_size=64"), 64) == adamw.lr
    with pytest.raises(Exception, match="lr_base_batch"):
        train_params("train.lr_base_batch=null")  # auto batch needs the batch the lr is written for


def test_ema_every_k_steps_keeps_the_averaging_horizon():
    lags = {}
    for every in (1, 4):  # a weight rising by 1 per step: the EMA lags it by its horizon, decay / (1 - decay) = 49 steps
        model = torch.nn.Linear(1, 1, bias=False)
        ema = Ema(model, 0.98, warmup=False, every=every)
        for step in range(1, 801):
            model.weight.data.fill_(float(step))
            ema.update(model, step)
        lags[every] = 800 - ema.module.weight.item()
    assert decay_per_update(0.98, 4) == pytest.approx(0.98**4)
    assert lags[1] == pytest.approx(49, abs=1) and lags[4] == pytest.approx(lags[1], abs=2)


def test_last_checkpoint_is_written_when_due():
    assert loop.checkpoint_due(5, 4, 40, 0.0, 0.0) and not loop.checkpoint_due(5, 3, 40, 0.0, 0.0)
    assert loop.checkpoint_due(5, 39, 40, 9.0, 0.1)  # always after the last epoch
    assert loop.checkpoint_due("auto", 0, 40, 0.0, 2.0)  # nothing written yet
    assert not loop.checkpoint_due("auto", 3, 40, 0.5, 10.0)  # 0.5 s is 5% of 10 s of training
    assert loop.checkpoint_due("auto", 3, 40, 0.5, 30.0)


def test_cuda_decisions_are_pure_functions_of_the_device_type():
    cuda = torch.device("cuda")
    assert loop.fused_kwargs("adamw", "cuda") == {"fused": True} and loop.fused_kwargs("adamw", "cpu") == {}
    assert loop.fused_kwargs("sgd", "cuda") == {}
    assert autocast_dtype("auto", cuda, bf16_supported=True) is torch.bfloat16
    assert autocast_dtype("auto", cuda, bf16_supported=False) is torch.float16
    assert autocast_dtype("fp16", cuda, bf16_supported=True) is torch.float16
    assert autocast_dtype("off", cuda, bf16_supported=True) is None and autocast_dtype("bf16", torch.device("cpu")) is None


def test_resume_ignores_execution_only_settings():
    meta = {"params": train_params("train.amp=fp16", "train.compile=true").model_dump(mode="json"), "distill": None}
    other = train_params("train.amp=bf16", "train.workers=2", "train.log_every=7").model_dump(mode="json")
    changed = train_params("train.lr=0.5").model_dump(mode="json")

    class FoldStub:
        part = type("P", (), {"fingerprint": lambda self: "data"})()

    FoldStub.meta = meta
    params = load_params("params.yaml", ["data.root=/nonexistent"])[0]
    last = {"params": other, "distill": None, "seed": params.seed, "data": "data"}
    assert loop.resumable(last, FoldStub, params)
    assert not loop.resumable({**last, "params": changed}, FoldStub, params)


def test_the_data_path_is_decided_once_and_says_why():
    from stages.train import data_path
    from stages.augment import gpu_recipe

    params = load_params("params.yaml", ["data.root=/nonexistent"])[0]
    data = SimpleNamespace(rows=np.zeros(10), pixels=np.zeros((10, 8, 8, 1), np.uint8), gpu_recipe=gpu_recipe(params.augment))
    assert data_path(params.train, data, torch.device("cpu")) == ("loader", "no GPU (cpu)")
    always = params.train.model_copy(update={"gpu_augment": "always"})
    assert data_path(always, data, torch.device("cpu"))[0] == "device"
    old = SimpleNamespace(rows=np.zeros(10), pixels=data.pixels, gpu_recipe={"hflip": 0.5})
    path, why = data_path(params.train, old, torch.device("cuda"))
    assert path == "loader" and "lacks" in why
    with pytest.raises(StageError, match="rerun `pipeline augment`"):
        data_path(always, old, torch.device("cpu"))
