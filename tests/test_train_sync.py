"""The training step never waits for the GPU: counted on CPU.

A GPU runs ahead of Python until the host asks for a value (`.item()`, `.cpu()`, `.tolist()`,
`.numpy()`, `bool(tensor)`, `float(tensor)`) or copies pageable host memory to the device. Each such
call inside `train_one_epoch` is counted by wrapping those torch methods, while the real `train_fold`
trains a tiny generated dataset on the device-side data path (the path a GPU takes for small images)
with the fused optimiser CUDA uses. The budget: one read every train.log_every steps, plus a few per epoch.
"""

import traceback

import numpy as np
import pytest
import torch

import stages.train as train_stage
from pipeline.params import load_params
from pipeline.runner import StagePaths
from stages.train import loop
from tests.test_train_fold import TINY, make_inputs

READS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")


class SyncCounter:
    def __init__(self, monkeypatch):
        self.active, self.calls = False, []
        for name in READS:
            self._wrap(monkeypatch, name)
        real_to = torch.Tensor.to

        def to(tensor, *args, **kwargs):  # a host->device copy of pageable memory: .to(device) of a tensor made from host data
            wants_device = any(isinstance(a, (torch.device, str)) for a in args) or "device" in kwargs
            if self.active and wants_device and getattr(tensor, "_from_host", False) and not tensor.is_pinned():
                self._record("to(device)")
            return real_to(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "to", to)
        for name in ("tensor", "as_tensor", "from_numpy"):
            self._tag(monkeypatch, name)
        real_getitem = torch.Tensor.__getitem__

        def getitem(tensor, index):  # rows of a host tensor are host memory too
            out = real_getitem(tensor, index)
            if getattr(tensor, "_from_host", False):
                out._from_host = True
            return out

        monkeypatch.setattr(torch.Tensor, "__getitem__", getitem)

    def _tag(self, monkeypatch, name):
        """Tensors made from numpy arrays or lists are host memory (on a GPU run too); made with device=, a copy."""
        real = getattr(torch, name)

        def made(data, *args, **kwargs):
            out = real(data, *args, **kwargs)
            if self.active and kwargs.get("device") is not None and not torch.is_tensor(data):
                self._record(f"torch.{name}(..., device=)")
            if not torch.is_tensor(data):
                out._from_host = True
            return out

        monkeypatch.setattr(torch, name, made)

    def _wrap(self, monkeypatch, name):
        real = getattr(torch.Tensor, name)

        def counted(tensor, *args, **kwargs):
            if self.active:
                self._record(name)
            return real(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def _record(self, name):
        self.active = False  # the stack formatting below must not count itself
        site = next((f for f in reversed(traceback.extract_stack()[:-2]) if "/stages/" in f.filename or "/pipeline/" in f.filename), None)
        self.calls.append(f"{name} at {site.filename.rsplit('/', 2)[-1]}:{site.lineno}" if site else name)
        self.active = True


def test_the_counter_sees_the_syncs_the_old_step_made(monkeypatch):
    counter = SyncCounter(monkeypatch)
    counter.active = True
    targets = torch.as_tensor(np.eye(3, dtype=np.float32))
    targets[torch.arange(2)].to("cpu")  # a batch's host rows copied to the device
    torch.tensor([0.5, 0.5], device="cpu")  # a per-batch constant built from a list
    loss = torch.ones(())
    loss.item(), bool(torch.isfinite(loss)), torch.arange(3).cpu()
    counter.active = False
    assert len(counter.calls) == 5, counter.calls


@pytest.mark.parametrize("log_every", [1, 4])
def test_the_step_reads_the_device_once_per_log_every_steps(tmp_path, monkeypatch, log_every):
    n, batch, epochs = 96, 8, 2
    inputs = make_inputs(tmp_path / "data", n=n)
    overrides = TINY + [f"train.batch_size={batch}", f"train.epochs={epochs}", "train.fold=0", "train.gpu_augment=always",
                        f"train.log_every={log_every}", "train.ema_every=2", "train.grad_clip=1.0", "train.mixup=0.2",
                        "train.mix_prob=1.0", "train.regularise_min_epochs=0", "data.root=/nonexistent"]  # mixing on in 2 epochs
    params, _ = load_params("params.yaml", overrides)
    counter = SyncCounter(monkeypatch)
    monkeypatch.setattr(loop, "fused_kwargs", lambda optimizer, device_type: {"fused": True})  # the CUDA optimiser
    real_epoch, steps = loop.train_one_epoch, []

    def counted_epoch(fold, *args, **kwargs):
        counter.active = True
        try:
            return real_epoch(fold, *args, **kwargs)
        finally:
            counter.active = False
            steps.append(fold.steps_per_epoch)

    monkeypatch.setattr(loop, "train_one_epoch", counted_epoch)
    (tmp_path / "out").mkdir()
    train_stage.run(params, StagePaths(out=tmp_path / "out", inputs=inputs))
    total_steps = sum(steps)
    assert len(steps) == epochs and total_steps >= 8
    per_epoch_constant = 3  # the epoch's order to the device, the last read, the epoch's loss sum
    budget = total_steps / log_every + per_epoch_constant * epochs
    assert len(counter.calls) <= budget, f"{len(counter.calls)} syncs for {total_steps} steps (budget {budget:.0f}): {sorted(set(counter.calls))}"
    assert len([c for c in counter.calls if c.startswith("item")]) >= total_steps // log_every  # the loss is read, as promised
