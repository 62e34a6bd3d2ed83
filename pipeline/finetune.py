"""The finetune preset: train values for pretrained weights, applied when the weights will load.

params.yaml's `finetune:` section names train keys (train.lr, train.epochs, train.layer_decay, train.norm,
...) with the values to use when `train.pretrained` loads weights (true, a path, or auto finding them).
The rule: a key set with -S (or by the example section) keeps that value; every other key in the
preset replaces the train value, and the CLI prints the line saying which. Epochs set that way also
keep train's own min_steps: the preset's step minimum would otherwise raise them. To change a fine-tuning
value in params.yaml, edit it in `finetune:` (the `train:` values are the from-scratch recipe).

It lives here rather than in pipeline/params.py so that params loading (which every stage's code hash
includes) does not depend on the weights lookup; only train's params change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import CheckError
from pipeline.params import Params, load_params, parse_override, set_dotted, validate


def finetune_overrides(params: Params, explicit: set[str]) -> tuple[dict[str, Any], str]:
    """The preset's values when pretrained weights will load, minus the explicit keys, and one line saying so.
    The weights are only looked up (cache, reachability), never downloaded."""
    if params.train.pretrained in (None, False) or not params.finetune:
        return {}, ""
    from pipeline.weights import will_load  # timm and huggingface_hub: only when weights are asked for

    try:
        weights = will_load(params.train)
    except CheckError:  # a bad path or an uncached model: train's check reports it, before any work
        return {}, ""
    if not weights.loaded:  # auto chose scratch: train says so in its first line
        return {}, ""
    # Epochs set by hand are the epochs trained: the preset's step minimum goes with the preset's epochs.
    kept = [k for k in params.finetune if k in explicit]
    if "train.epochs" in explicit and "train.min_steps" in params.finetune and "train.min_steps" not in explicit:
        explicit = explicit | {"train.min_steps"}
        kept.append(f"train.min_steps={params.train.min_steps} with your train.epochs")
    tuned = {k: v for k, v in params.finetune.items() if k not in explicit}
    listed = ", ".join(f"{k}={v}" for k, v in tuned.items()) or "none"
    return tuned, f"finetune overrides ({weights.describe()}): {listed}" + (f"; kept your {', '.join(kept)}" if kept else "")


def with_finetune(params: Params, tuned: dict[str, Any]) -> Params:
    raw = params.model_dump(mode="json")
    for key, value in tuned.items():
        set_dotted(raw, key, value)
    return validate(raw)


def load_finetuned(path: Path, overrides: list[str] = (), workdir: str | None = None) -> tuple[Params, list[str], str]:
    """load_params, then the finetune preset when weights will load. Returns the params, the example
    overrides applied, and the finetune line ("" when the preset does not apply)."""
    params, applied = load_params(path, overrides, workdir)
    explicit = {parse_override(o)[0] for o in overrides} | {a.partition("=")[0] for a in applied}
    tuned, said = finetune_overrides(params, explicit)
    return (with_finetune(params, tuned) if tuned else params), applied, said
