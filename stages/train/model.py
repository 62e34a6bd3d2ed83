"""The timm model, local pretrained weights, and layer freezing."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.models import group_parameters
from timm.models._manipulate import adapt_input_conv

from pipeline.errors import StageError
from pipeline.params import TrainParams


def create_model(p: TrainParams, num_classes: int, in_chans: int) -> torch.nn.Module:
    try:
        model = timm.create_model(p.model, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                  drop_rate=p.drop_rate, drop_path_rate=p.drop_path or None)
    except (RuntimeError, TypeError) as exc:
        raise StageError(f"train.model = {p.model!r}: timm cannot build it ({exc})") from None
    if p.pretrained:
        load_pretrained(model, Path(p.pretrained).expanduser(), in_chans)
    return model


def load_pretrained(model: torch.nn.Module, path: Path, in_chans: int) -> None:
    """Load a safetensors file or a torch checkpoint (ours or timm's); skip a classifier of another size,
    adapt the first conv to in_chans; refuse weights that match too little of the model."""
    if not path.is_file():
        raise StageError(f"train.pretrained: weights file {path} not found (give a local .safetensors or .pt path)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=False)
        for key in ("ema_state_dict", "state_dict_ema", "state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items() if torch.is_tensor(v)}
    own = model.state_dict()
    first_conv = (model.pretrained_cfg.get("first_conv") or "") + ".weight"
    if first_conv in state and state[first_conv].shape[1] != in_chans:
        state[first_conv] = adapt_input_conv(in_chans, state[first_conv])
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(fitting) < 0.5 * len(own):
        raise StageError(f"train.pretrained: {path} fits only {len(fitting)} of {len(own)} tensors of {model.default_cfg.get('architecture', 'the model')}; is it for train.model?")
    model.load_state_dict(fitting, strict=False)


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
    """No weight decay on norms and biases (1-d tensors); the backbone's lr scaled by backbone_lr."""
    head = head_parameters(model)
    buckets: dict[tuple[bool, bool], list] = {}
    for _, param in model.named_parameters():
        buckets.setdefault((id(param) in head, param.ndim > 1), []).append(param)
    return [
        {"params": params, "weight_decay": p.weight_decay if decay else 0.0, "lr_scale": 1.0 if is_head else p.backbone_lr}
        for (is_head, decay), params in buckets.items()
    ]
