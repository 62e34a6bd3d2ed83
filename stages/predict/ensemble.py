"""The ensemble: which fold checkpoints exist, running one over cache rows with TTA views, and weights.

Members are the `fold<k>/best.pt` checkpoints of one or more train runs (this workdir's train/ plus
predict.runs), and a run's `full/best.pt` when it was trained with train.full_fit. A run trained with `--fold` jobs may lack folds; they are reported by name and the
ensemble uses whatever finished. Folds of one run share its weight equally.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch

from pipeline.cache import read_probs
from pipeline.errors import StageError
from stages.predict.tta import View, apply_views
from pipeline.device import to_input


DEVICE_LOGITS = 2**26  # logits (256 MB of float32) kept on the device between host copies
FULL_FIT = -1  # Member.fold of a run's full/ model: no OOF row has it, so TTA and run weights never see it


@dataclass
class Member:
    run: str  # the run's folder, as given
    fold: int  # FULL_FIT for the model trained on every image (train.full_fit)
    path: Path


def find_members(run_dirs: list[Path]) -> tuple[list[Member], list[str]]:
    """Every fold<k>/best.pt of every run, plus the names of the folds each run should have but lacks."""
    members, missing = [], []
    for run_dir in run_dirs:
        found = sorted((p for p in run_dir.glob("fold*/best.pt") if re.fullmatch(r"fold\d+", p.parent.name)),
                       key=lambda p: int(p.parent.name[4:]))
        if not found:
            raise StageError(f"no fold checkpoints (fold<k>/best.pt) in {run_dir}: run `pipeline train` there first")
        folds = [int(p.parent.name[4:]) for p in found]
        members += [Member(str(run_dir), f, p) for f, p in zip(folds, found)]
        if (run_dir / "full" / "best.pt").is_file():  # train.full_fit: every image, no out-of-fold rows
            members.append(Member(str(run_dir), FULL_FIT, run_dir / "full" / "best.pt"))
        expected = read_meta(found[0]).get("params", {}).get("folds")
        if expected:
            missing += [f"{run_dir}/fold{k}" for k in range(expected) if k not in folds]
    return members, missing


def read_meta(path: Path) -> dict:
    """A checkpoint's metadata, without its weights."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return {k: v for k, v in ckpt.items() if not k.endswith("state_dict")}


def load_model(path: Path, device: torch.device, channels_last: bool = False) -> tuple[torch.nn.Module, dict]:
    """A fold's model in eval mode; the EMA weights when the run kept them (they predict better)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = timm.create_model(ckpt["model"], pretrained=False, num_classes=len(ckpt["classes"]), in_chans=ckpt["in_chans"],
                              **ckpt.get("model_kwargs", {}))  # img_size for fixed-size (ViT-like) models
    state = ckpt.get("ema_state_dict") or ckpt["state_dict"]
    # timm's ModelEma wrappers prefix the weights with "module."; the bare model does not.
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, ckpt


@torch.no_grad()
def predict_views(model, array: np.ndarray, rows: np.ndarray, norm: dict, views: list[View], batch_size: int,
                  device: torch.device, amp: torch.dtype | None = None) -> np.ndarray:
    """Logits of every view for the given cache rows: (V, N, K) float32.

    All views of a chunk of images go through the model as one batch of at most `batch_size`. The
    logits stay on the device until the end, so the GPU runs ahead while the host reads (and pins)
    the next chunk: the next batch is prefetched by construction, with one host copy at the end.
    """
    per_chunk = max(1, batch_size // len(views))
    cuda = device.type == "cuda"
    out, host, held = [], [], 0
    for start in range(0, len(rows), per_chunk):
        images = torch.from_numpy(np.ascontiguousarray(array[rows[start : start + per_chunk]])).permute(0, 3, 1, 2)
        if cuda:
            images = images.pin_memory()
        x = apply_views(to_input(images, norm, device), views)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x).float()
        out.append(logits.view(len(views), -1, logits.shape[-1]))
        held += logits.numel()
        if held > DEVICE_LOGITS:  # bounded device memory on a large test set: one host copy per this many logits
            host.append(torch.cat(out, dim=1).cpu().numpy())
            out, held = [], 0
    if out:
        host.append(torch.cat(out, dim=1).cpu().numpy())
    if not host:
        return np.zeros((len(views), 0, 0), dtype=np.float32)
    return np.concatenate(host, axis=1)


def read_oof(run_dir: Path, classes: list[str]) -> pd.DataFrame:
    return read_probs(run_dir / "oof.csv", classes, "predict needs the run's out-of-fold predictions (is the train run complete?)")
