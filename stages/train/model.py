"""The timm model (pretrained weights loaded by timm), layer freezing, and the optimiser's parameter groups."""

from __future__ import annotations

import difflib
from typing import Callable, TypeVar

import timm
import timm.optim
import torch
from timm.models import group_parameters

from pipeline.errors import CheckError, PipelineError, StageError
from pipeline.params import TrainParams
from pipeline.weights import Weights, input_size_kwargs, timm_kwargs


T = TypeVar("T")


def check_model_name(name: str) -> None:
    """Before any work: timm knows train.model (near names suggested)."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see timm.list_models())"
        raise CheckError(f"train.model = {name!r}: not a timm model{hint}")


def readable_weights(p: TrainParams, read: Callable[[], T]) -> T:
    """Run a weights reader (pipeline.weights) so that a file that is not weights (random bytes, text, a
    broken safetensors header) is one line naming train.pretrained, not an unpickler's traceback."""
    try:
        return read()
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.load and safetensors raise many types for a bad file
        reason = (str(exc).strip().splitlines() or [""])[0][:120]
        raise CheckError(f"train.pretrained = {p.pretrained}: not a readable weights file ({type(exc).__name__}: {reason})") from None


def architecture(p: TrainParams, size: tuple[int, int] | None) -> dict:
    """create_model arguments besides the weights: regularisation, and img_size for fixed-size (ViT-like) models."""
    return {"drop_rate": p.drop_rate, "drop_path_rate": p.drop_path or None, **(input_size_kwargs(p.model, size) if size else {})}


def weight_loading(p: TrainParams, weights: Weights, num_classes: int, in_chans: int, size: tuple[int, int] | None,
                   classes: list[str] | None = None) -> dict:
    """How timm loads the weights (checked once per run: weights that fit too little stop it before any fold)."""
    return timm_kwargs(weights, p.model, num_classes, in_chans, p.pretrained_min_fit, architecture(p, size), classes)


def create_model(p: TrainParams, num_classes: int, in_chans: int, loading: dict | None = None,
                 size: tuple[int, int] | None = None) -> torch.nn.Module:
    """The timm model; with `loading` (weight_loading), timm's own loader fills it: first conv adapted to
    in_chans, a classifier of another class count reset, position embeddings resampled to `size`."""
    extra = architecture(p, size)
    loading = dict(loading or {"pretrained": False})
    if "state_dict" in loading.get("pretrained_cfg_overlay", {}):  # timm edits it in place; each fold gets its own
        loading["pretrained_cfg_overlay"] = {**loading["pretrained_cfg_overlay"], "state_dict": dict(loading["pretrained_cfg_overlay"]["state_dict"])}
    weights_path = (loading.get("pretrained_cfg_overlay") or {}).get("file", "the weights")
    try:
        return timm.create_model(p.model, num_classes=num_classes, in_chans=in_chans, **extra, **loading)
    except (RuntimeError, TypeError, ValueError) as exc:
        what = f"cannot load {weights_path} into it" if loading.get("pretrained") else "timm cannot build it"
        raise StageError(f"train.model = {p.model!r}: {what} ({str(exc).splitlines()[0][:300]})") from None


def layer_groups(model: torch.nn.Module) -> list[list[torch.nn.Parameter]]:
    """Parameter groups from the stem (0) to the head (last), by timm's own group matcher."""
    named = dict(model.named_parameters())
    groups = group_parameters(model, model.group_matcher(coarse=True))
    return [[named[n] for n in groups[k]] for k in sorted(groups)]


def head_parameters(model: torch.nn.Module) -> set[int]:
    return {id(p) for p in model.get_classifier().parameters()}


def apply_freezing(model: torch.nn.Module, p: TrainParams, epoch: int) -> str:
    """Set requires_grad for this epoch: head only for freeze_epochs, then all (or one more group per
    epoch from the top when gradual), and the first late_freeze_groups frozen after late_freeze_at."""
    groups = layer_groups(model)
    head = head_parameters(model)
    if epoch < p.freeze_epochs:
        trainable = lambda g, param: id(param) in head  # noqa: E731
    elif p.unfreeze == "gradual":
        open_from = max(0, len(groups) - 1 - (epoch - p.freeze_epochs + 1))
        trainable = lambda g, param: g >= open_from or id(param) in head  # noqa: E731
    else:
        trainable = lambda g, param: True  # noqa: E731
    late = p.late_freeze_at is not None and epoch >= round(p.late_freeze_at * p.epochs)
    for g, params in enumerate(groups):
        for param in params:
            param.requires_grad_(trainable(g, param) and not (late and g < p.late_freeze_groups and id(param) not in head))
    frozen = sum(not q.requires_grad for q in model.parameters())
    return f"{frozen} frozen tensors" if frozen else "all trainable"


def param_groups(model: torch.nn.Module, p: TrainParams) -> list[dict]:
    """No weight decay on norms and biases (1-d tensors); the backbone's lr scaled by backbone_lr, and with
    layer_decay each layer group below the head by layer_decay once more (timm's param_groups_layer_decay)."""
    head = head_parameters(model)
    if p.layer_decay is not None:
        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
        groups = timm.optim.param_groups_layer_decay(model, p.weight_decay, no_weight_decay_list=skip, layer_decay=p.layer_decay)
        for group in groups:
            if not any(id(param) in head for param in group["params"]):
                group["lr_scale"] = group.get("lr_scale", 1.0) * p.backbone_lr
        return groups
    buckets: dict[tuple[bool, bool], list] = {}
    for _, param in model.named_parameters():
        buckets.setdefault((id(param) in head, param.ndim > 1), []).append(param)
    return [
        {"params": params, "weight_decay": p.weight_decay if decay else 0.0, "lr_scale": 1.0 if is_head else p.backbone_lr}
        for (is_head, decay), params in buckets.items()
    ]


def create_optimizer(model: torch.nn.Module, p: TrainParams, lr: float, **extra) -> torch.optim.Optimizer:
    """timm's optimiser factory over param_groups (per-group lr_scale is applied by the schedule); `extra`
    goes to the torch optimiser (fused=True on CUDA)."""
    return timm.optim.create_optimizer_v2(param_groups(model, p), p.optimizer, lr=lr, weight_decay=p.weight_decay, momentum=p.momentum, **extra)
