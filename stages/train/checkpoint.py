"""Checkpoints: best.pt / last.pt written atomically; last.pt carries everything resume needs."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.artifacts import atomic_path


def save(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=False) if Path(path).is_file() else None
