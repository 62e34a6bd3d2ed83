"""The timm model, local pretrained weights, and layer freezing."""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from timm.models import group_parameters
from timm.models._manipulate import adapt_input_conv

from pipeline.errors import CheckError, StageError
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


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a torch checkpoint (ours or timm's), by parameter name.
    Anything else (random bytes, text, a bare tensor, a truncated file) is a one-line CheckError."""
    if not path.is_file():
        raise CheckError(f"train.pretrained: weights file {path} not found (give a local .safetensors or .pt path)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling and safetensors raise many types for a bad file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise CheckError(f"train.pretrained = {path}: not a readable weights file ({type(exc).__name__}: {reason})") from None
    for key in ("ema_state_dict", "state_dict_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise CheckError(f"train.pretrained = {path}: holds {type(state).__name__}, not a state dict of named tensors")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items() if torch.is_tensor(v)}


def fitting_weights(model: torch.nn.Module, state: dict, path: Path, in_chans: int) -> dict:
    """The tensors that fit the model (a classifier of another size is skipped, the first conv adapted to
    in_chans); weights that match too little of the model are refused."""
    own = model.state_dict()
    first_conv = (model.pretrained_cfg.get("first_conv") or "") + ".weight"
    if first_conv in state and state[first_conv].shape[1] != in_chans:
        state = {**state, first_conv: adapt_input_conv(in_chans, state[first_conv])}
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(fitting) < 0.5 * len(own):
        raise CheckError(f"train.pretrained: {path} fits only {len(fitting)} of {len(own)} tensors of {model.default_cfg.get('architecture', 'the model')}; is it for train.model?")
    return fitting


def load_pretrained(model: torch.nn.Module, path: Path, in_chans: int) -> None:
    model.load_state_dict(fitting_weights(model, read_weights(path), path, in_chans), strict=False)


def check_model(p: TrainParams) -> None:
    """Before any work: timm knows train.model, and train.pretrained is a weights file that fits it
    (the model is built on the meta device, so this costs no memory and little time)."""
    if not timm.is_model(p.model):
        close = difflib.get_close_matches(p.model, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see timm.list_models())"
        raise CheckError(f"train.model = {p.model!r}: not a timm model{hint}")
    if not p.pretrained:
        return
    path = Path(p.pretrained).expanduser()
    state = read_weights(path)
    with torch.device("meta"):
        model = timm.create_model(p.model, pretrained=False)
    own = model.state_dict()
    head = model.default_cfg.get("classifier") or ()  # a classifier of another size is expected not to fit
    first_conv = (model.pretrained_cfg.get("first_conv") or "") + ".weight"  # adapted to in_chans when loaded
    body = [k for k in own if not k.startswith(head)]
    fitting = [k for k in body if k in state and (own[k].shape == state[k].shape or k == first_conv)]
    if len(fitting) < 0.5 * len(body):
        raise CheckError(f"train.pretrained = {path}: fits only {len(fitting)} of {len(body)} tensors of {p.model}; is it for train.model?")


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
