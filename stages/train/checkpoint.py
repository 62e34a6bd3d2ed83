"""Checkpoints: best.pt / last.pt written atomically (by rank 0 only under torchrun); last.pt carries
everything resume needs. The state dicts are the bare model's (no DDP "module." prefix)."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline import distributed as ddp
from pipeline.artifacts import atomic_path


def save(path: Path, state: dict) -> None:
    if not ddp.is_main():
        return
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=False) if Path(path).is_file() else None
