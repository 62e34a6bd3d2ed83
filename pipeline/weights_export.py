"""`pipeline weights`: put timm models' pretrained weights into a folder that trains offline.

DIR/<model>/ holds the weights file exactly as the hub serves it (model.safetensors, else pytorch_model.bin)
and timm's config.json, the layout of a timm model folder on the Hugging Face hub, so `train.pretrained:
DIR/<model>` reads it with the network off (and `timm.create_model("local-dir:DIR/<model>")` would too). On
Kaggle: run this once online, upload DIR as a dataset, attach it to the internet-off notebook and point
train.pretrained at /kaggle/input/<dataset>/<model>.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.artifacts import atomic_path, write_text
from pipeline.errors import CheckError
from pipeline.weights import cached_hub_file, download_hub_file, hub_cache, hub_id, hub_reachable, offline, pretrained_cfg


def hub_file(model: str) -> tuple[Path, str]:
    """The model's weights from the local Hugging Face cache, downloaded into it first when online."""
    repo, filenames = hub_id(model)
    cached = cached_hub_file(repo, filenames)
    if cached is not None:
        return cached, "copied from the Hugging Face cache"
    if not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline() else "the hub is unreachable"
        raise CheckError(f"pipeline weights {model}: {repo} is not in the Hugging Face cache {hub_cache()} and {why}; run it on a machine online")
    return download_hub_file(repo, filenames), "downloaded"


def model_config(model: str) -> dict:
    """timm's config.json for the model folder: architecture, classes and the pretrained cfg (mean/std, input size)."""
    from timm.models import split_model_name_tag

    cfg = {k: v for k, v in pretrained_cfg(model).items() if k not in ("file", "state_dict", "url", "source")}
    return {"architecture": split_model_name_tag(model)[0], "num_classes": cfg.get("num_classes"), "pretrained_cfg": cfg}


def export(model: str, folder: Path) -> tuple[Path, str]:
    source, how = hub_file(model)
    target = folder / model
    target.mkdir(parents=True, exist_ok=True)
    name = source.name if source.suffix else "model.safetensors"
    with atomic_path(target / name) as tmp:
        shutil.copyfile(source.resolve(), tmp)  # the cache holds symlinks to blobs: copy the content
    write_text(target / "config.json", json.dumps(model_config(model), indent=2, default=str) + "\n")
    return target, how


def export_weights(models: list[str], folder: Path) -> list[str]:
    """Each model's weights into folder/<model>/; returns one line per model, with the params to use."""
    lines = []
    for model in models:
        target, how = export(model, Path(folder).expanduser())
        size = sum(f.stat().st_size for f in target.iterdir()) / 1e6
        lines.append(f"{model}: {how} to {target} ({size:.1f} MB); params: train.model={model} train.pretrained={target}")
    return lines


def list_weights(pattern: str) -> list[str]:
    """timm models with pretrained tags matching the pattern (fnmatch, e.g. 'convnext_tiny*'), marked when cached."""
    import timm

    names = timm.list_pretrained(pattern)
    if not names:
        raise CheckError(f"pipeline weights --list {pattern!r}: no timm model with pretrained weights matches (try '*{pattern}*')")
    marks = []
    for name in names:
        try:
            repo, files = hub_id(name)
            cached = cached_hub_file(repo, files) is not None
        except CheckError:
            cached = False
        marks.append(f"{name}{'  (in the Hugging Face cache)' if cached else ''}")
    return marks
