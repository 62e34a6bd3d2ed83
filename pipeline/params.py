"""Typed params: one model per params.yaml section, loaded strictly.

params.yaml is the only place defaults live: every model field below is required, so a key missing
from the file is an error, not a silent default. Loading order: params.yaml, then the `example`
overrides (only when `data.root` is the built-in example), then `-S key.path=value` from the command
line, so the user always has the last word.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ParamsError
from pipeline.metrics import check_name as check_metric

EXAMPLE_ROOT = "example:digits"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    root: str
    full_hash: bool  # fingerprint the raw data by content (slow) instead of names, sizes and mtimes
    id_column: str | None  # None: detect (id, image_id, image, file, ...)
    label_column: str | None  # None: detect (label, class, target, ...)
    task: Literal["auto", "single_label", "multi_label", "binary"]  # auto: detect from train.csv and the sample
    tag_separator: str = Field(min_length=1)  # between the tags of one multi-label cell (and top-k answers)
    class_order: list[str] | None  # ordinal order of the classes (qwk); None: the labels' natural order


class CropParams(Section):
    enabled: bool | str  # crop to the dominant object(s); auto: when a train sample shows small objects in wide margins
    canny_low: int = Field(ge=0, le=255)  # Canny hysteresis thresholds on the 8-bit gray image
    canny_high: int = Field(ge=1, le=255)
    min_area: float = Field(ge=0.0, le=1.0)  # contours whose box is under this fraction of the image are specks
    margin: float = Field(ge=0.0, le=1.0)  # added on every side, as a fraction of the box side
    min_fraction: float = Field(ge=0.0, le=1.0)  # boxes smaller than this fraction of a side: keep the whole image

    @field_validator("enabled", mode="before")
    @classmethod
    def _enabled(cls, value):
        if isinstance(value, bool) or value == "auto":
            return value
        raise ValueError("expected true, false or auto")

    @model_validator(mode="after")
    def _ordered(self):
        if self.canny_low > self.canny_high:
            raise ValueError(f"canny_low ({self.canny_low}) must not exceed canny_high ({self.canny_high})")
        return self


class PreprocessParams(Section):
    size: int | tuple[int, int] | Literal["auto"] = Field(description="side of the square cache, [height, width], or auto")
    size_range: tuple[int, int]  # auto: the train images' median side, rounded up to 32, clipped to [lo, hi]
    resize: Literal["pad", "stretch"]
    channels: Literal["auto", "gray", "rgb"]
    median_ksize: int | str  # kernel side (0 or 1: off); auto: 3 when a train sample shows impulse noise, else off
    crop: CropParams
    max_pixels: int = Field(ge=1)  # larger images are reported and skipped (memory guard per worker)
    workers: int = Field(ge=0)  # 0: all cores

    @field_validator("median_ksize", mode="before")
    @classmethod
    def _median(cls, value):
        # One plain check instead of a Literal union, whose error names each branch of the union.
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 31):
            return value
        raise ValueError("expected auto or a kernel side from 0 (off) to 31")

    @model_validator(mode="after")
    def _sizes(self):
        lo, hi = self.size_range
        if not 1 <= lo <= hi:
            raise ValueError(f"size_range must be [lo, hi] with 1 <= lo <= hi, got [{lo}, {hi}]")
        sides = (self.size,) * 2 if isinstance(self.size, int) else self.size if self.size != "auto" else (1, 1)
        if min(sides) < 1:
            raise ValueError(f"size must be positive, got {self.size}")
        return self


class DedupParams(Section):
    threshold: Literal["auto"] | Annotated[float, Field(ge=0.0, le=1.0)]  # copy score (verify.py) above which two images are duplicates
    policy: Literal["weight", "representative"]
    neighbours: int = Field(ge=0, le=256)  # candidate pairs per image: nearest neighbours by the embedding
    max_shift: int = Field(ge=0, le=8)  # shifts (thumbnail pixels) tried when verifying a candidate
    min_std: float = Field(ge=0.0)  # thumbnails flatter than this (0..255 gray) are never near-duplicates
    sheet_clusters: int = Field(ge=0, le=100)  # clusters drawn on each contact sheet


class AugmentParams(Section):
    # Geometry. Each transform has its probability; the ranges say how strong it may be.
    hflip: float = Field(ge=0.0, le=1.0)
    vflip: float = Field(ge=0.0, le=1.0)
    crop: float = Field(ge=0.0, le=1.0)  # probability of a random resized crop (then back to the cache size)
    crop_scale: tuple[float, float] = Field(description="area fraction range of the random resized crop")
    affine: float = Field(ge=0.0, le=1.0)  # probability of the affine below
    shift: float = Field(ge=0.0, le=0.5)  # translate, fraction of the side
    scale: float = Field(ge=0.0, le=0.9)  # zoom in/out by up to this fraction
    rotate: float = Field(ge=0.0, le=180.0)  # degrees, inside the affine
    shear: float = Field(ge=0.0, le=45.0)  # degrees, inside the affine
    rotation: float = Field(ge=0.0, le=1.0)  # probability of a free random rotation (rotation-invariant data)
    rotation_limit: float = Field(ge=0.0, le=180.0)
    # Photometric.
    gamma: float = Field(ge=0.0, le=1.0)  # probability of a gamma change (brighten/darken)
    gamma_limit: tuple[float, float] = Field(description="gamma range in percent, e.g. [80, 120]")
    blur: float = Field(ge=0.0, le=1.0)  # probability of a Gaussian blur
    blur_limit: tuple[int, int] = Field(description="odd Gaussian kernel sizes, e.g. [3, 5]")
    color_jitter: float = Field(ge=0.0, le=1.0)  # probability of brightness/contrast/saturation/hue jitter
    brightness: float = Field(ge=0.0, le=1.0)
    contrast: float = Field(ge=0.0, le=1.0)
    saturation: float = Field(ge=0.0, le=1.0)  # ignored for gray images
    hue: float = Field(ge=0.0, le=0.5)  # ignored for gray images
    # Occlusion.
    erasing: float = Field(ge=0.0, le=1.0)  # probability of coarse dropout (random erasing)
    erasing_size: tuple[float, float] = Field(description="hole side range as a fraction of the image side")
    erasing_holes: int = Field(ge=1, le=32)  # at most this many holes
    # Offline expansion: classes with fewer training images than this get augmented copies up to it (0: off).
    expand_to: int = Field(ge=0)
    preview: int = Field(ge=1, le=32)  # augmented samples per class in preview.png


class TrainParams(Section):
    # Model.
    model: str  # any timm model name
    pretrained: bool | str | None  # null/false: scratch; true: timm's weights (HF cache, download online); auto; a local file/folder
    pretrained_min_fit: float = Field(gt=0.0, le=1.0)  # weights must fill at least this share of the model's tensors
    drop_rate: float = Field(ge=0.0, lt=1.0)  # dropout before the classifier
    drop_path: float = Field(ge=0.0, lt=1.0)  # stochastic depth
    norm: Literal["dataset", "imagenet", "pretrained"]  # the cache's mean/std, ImageNet's, or the loaded weights' own
    norm_sample: int = Field(ge=1)  # norm: dataset: images sampled (seeded) for the mean/std
    # Folds.
    folds: int = Field(ge=2, le=50)
    fold: int | None = Field(ge=0)  # train only this fold (one job per GPU/node); None: all folds
    full_fit: bool  # after the folds, one more model on every image for their median best epoch count (no OOF)
    # Optimisation.
    epochs: int = Field(ge=1)
    min_steps: int = Field(ge=0)  # at least this many optimiser steps per fold: epochs are raised to reach them (0: off)
    batch_size: int | Literal["auto"] = Field(description="global batch per micro-step, or auto (probe the device)")
    batch_size_max: int = Field(ge=1)  # auto: the probe starts here and halves on out-of-memory
    accumulate: int = Field(ge=1)  # gradient accumulation steps
    lr: float = Field(gt=0.0)  # peak learning rate (for lr_base_batch images per step when that is set)
    lr_base_batch: int | None = Field(ge=1)  # lr is for this many images per step, scaled to the effective batch; None: lr as is
    lr_scaling: Literal["auto", "linear", "sqrt"]  # how lr follows the batch; auto: sqrt for adamw, linear for sgd (timm's rule)
    optimizer: Literal["adamw", "sgd"]
    momentum: float = Field(ge=0.0, lt=1.0)  # SGD momentum (AdamW ignores it)
    weight_decay: float = Field(ge=0.0)  # L2, never on norms and biases
    l1: float = Field(ge=0.0)  # L1 penalty on weights (0: off)
    grad_clip: float = Field(ge=0.0)  # max gradient norm (0: off)
    # Schedule, per optimiser step: warmup, then decay.
    warmup_epochs: float = Field(ge=0.0)
    warmup: Literal["linear", "exponential"]
    warmup_start: float = Field(gt=0.0, le=1.0)  # warmup starts at lr * this
    schedule: Literal["cosine", "step", "constant"]
    min_lr: float = Field(ge=0.0, le=1.0)  # cosine floor, as a fraction of lr
    step_epochs: float = Field(gt=0.0)  # step schedule: multiply lr by step_gamma every this many epochs
    step_gamma: float = Field(gt=0.0, le=1.0)
    # Regularisation.
    label_smoothing: float = Field(ge=0.0, lt=1.0)
    mixup: float = Field(ge=0.0)  # mixup alpha (0: off)
    cutmix: float = Field(ge=0.0)  # cutmix alpha (0: off)
    mix_prob: float = Field(ge=0.0, le=1.0)  # probability a batch is mixed when mixup or cutmix is on
    mix_switch: float = Field(ge=0.0, le=1.0)  # with both on: probability a mixed batch uses cutmix rather than mixup
    mix_off_epochs: int = Field(ge=0)  # no mixing in the last N epochs (clean fine-tune)
    regularise_min_epochs: int = Field(ge=0)  # mixup/cutmix and random erasing only in runs of at least this many epochs (0: always)
    ema: float | str  # EMA decay per optimiser step (0: off); auto: from the run's optimiser steps (stages/train/recipe.py)
    ema_warmup: bool  # timm's warmup: decay = min(ema, 1 - (1 + step)^(-2/3)), so early weights fade fast
    ema_every: int = Field(ge=1)  # update the EMA every N steps with decay ema^N (same averaging horizon)
    # Imbalance and duplicates.
    loss: Literal["ce", "focal", "asymmetric"]  # multi-label: ce is binary CE per class; asymmetric (ASL) is multi-label only
    focal_gamma: float = Field(ge=0.0)
    asl_gamma_neg: float = Field(ge=0.0)  # asymmetric loss: focusing on negative tags (positive tags: none)
    asl_clip: float = Field(ge=0.0, lt=1.0)  # asymmetric loss: negatives below this probability cost nothing
    class_weights: Literal["none", "balanced", "sqrt"]  # weights in the loss, from the training counts
    sampler: Literal["uniform", "balanced", "sqrt"]  # draw classes evenly (balanced) or by sqrt of counts
    dedup_weights: bool  # weigh each sample by its dedup weight (a duplicate cluster counts once)
    # Curriculum: easiest samples first, the pool widening at each threshold, then all data.
    curriculum: bool
    curriculum_score: Literal["probe", "oof", "contrast"]  # probe training loss, an earlier oof.csv, image contrast
    curriculum_oof: str | None  # oof.csv of an earlier run, for curriculum_score: oof
    curriculum_probe_epochs: int = Field(ge=1)
    curriculum_thresholds: list[float] = Field(min_length=1)  # pool fractions, easiest first
    curriculum_span: float = Field(gt=0.0, le=1.0)  # fraction of the epochs the pacing spans; then all data
    # Freezing.
    freeze_epochs: int = Field(ge=0)  # train only the head for the first N epochs
    unfreeze: Literal["all", "gradual"]  # after that: everything at once, or one layer group per epoch from the top
    backbone_lr: float = Field(gt=0.0, le=1.0)  # backbone lr as a fraction of the head's
    layer_decay: float | None = Field(gt=0.0, le=1.0)  # lr x this per layer group below the head (timm's layer_decay); None: off
    late_freeze_at: float | None = Field(gt=0.0, lt=1.0)  # fraction of training after which early layers freeze
    late_freeze_groups: int = Field(ge=0)  # how many layer groups (from the stem) late freezing freezes
    # Speed.
    device: Literal["auto", "cpu", "cuda"]
    amp: Literal["auto", "bf16", "fp16", "off"]  # auto: bf16 on CUDA when supported, off on CPU
    channels_last: bool
    compile: bool  # torch.compile the model (CUDA; slow first epoch, faster after)
    cudnn_benchmark: bool
    gpu_augment: Literal["auto", "always", "never"]  # always: keep the uint8 cache on the device and augment there
    gpu_cache_fraction: float = Field(gt=0.0, le=1.0)  # auto: use the device path when the cache fits this share
    workers: Annotated[int, Field(ge=0)] | Literal["auto"]  # data loader processes for the albumentations path; auto: cores - 1, at most 8
    log_every: int = Field(ge=1)  # steps between reads of the loss (finiteness check, progress bar): the only host syncs
    checkpoint_every: int | Literal["auto"] = Field(description="epochs between last.pt writes, or auto")
    # Stopping, metrics.
    patience: int = Field(ge=0)  # stop a fold after N epochs without improvement (0: never)
    metric: str  # auto or a pipeline.metrics name: picks best.pt, stops early, reports cv
    metric_beta: float = Field(gt=0.0)  # f_beta's beta (2: recall weighs more, like F2)
    metric_average: Literal["samples", "macro"]  # multi-label f_beta: per image then mean, or per class then mean
    eval_batch_size: int = Field(ge=1)

    @field_validator("metric")
    @classmethod
    def _metric(cls, value):
        return check_metric(value)

    # Distributed (torchrun): one process per GPU, DDP.
    sync_bn: bool  # SyncBatchNorm across processes (CUDA only; BatchNorm statistics of the global batch)
    dist_timeout: float = Field(gt=0.0)  # seconds a collective waits for the other ranks before the run fails
    # Logs.
    tensorboard: bool  # TensorBoard event files per fold (needs the optional tensorboard package)

    @field_validator("ema", mode="before")
    @classmethod
    def _ema(cls, value):
        if value == "auto" or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1):
            return value if value == "auto" else float(value)
        raise ValueError("expected auto, 0 (off) or a decay in (0, 1)")

    @field_validator("batch_size", "checkpoint_every")
    @classmethod
    def _positive(cls, value):
        if value != "auto" and value < 1:
            raise ValueError("expected auto or an integer >= 1")
        return value

    @model_validator(mode="after")
    def _auto_batch_needs_a_base(self):
        if self.batch_size == "auto" and self.lr_base_batch is None:
            raise ValueError("batch_size = auto needs lr_base_batch (the batch train.lr is written for)")
        return self


TTA_VIEWS = ("identity", "hflip", "vflip", "shift", "scale", "crops")


class PredictParams(Section):
    # TTA view groups (shift: 4 views, scale: zoom in + out, crops: 4 corners + centre), or "auto":
    # greedy choice of the groups that improve tta_metric on out-of-fold images beyond noise.
    tta: str | list[str]
    tta_merge: Literal["auto", "mean_prob", "mean_logit", "geometric"]  # how views are merged
    tta_metric: str  # what auto TTA must improve beyond noise on OOF images: auto (the train metric) or a metric name
    tta_shift: float = Field(gt=0.0, le=0.25)  # shift views move the image by this fraction of its side
    tta_scale: float = Field(gt=0.0, le=0.5)  # scale views zoom in by 1+s and out by 1/(1+s)
    tta_crop: float = Field(gt=0.3, lt=1.0)  # crops views keep this fraction of the side, resized back
    tta_oof_images: int = Field(ge=0)  # validation images used to measure TTA (0: all of them)
    runs: list[str]  # extra train output folders (other models) to ensemble with this workdir's train/
    weights: Literal["equal", "oof"]  # run weights: equal, or fitted on the runs' common OOF rows
    leak_label: bool  # a test image clustered with labelled train images is pulled toward their label
    leak_weight: float = Field(ge=0.0, le=1.0)  # blend weight toward the train labels (1 only for pixel-identical leaks)
    consistent_clusters: bool  # test images of one duplicate cluster get one (mean) prediction
    batch_size: int = Field(ge=1)  # images x views per forward pass
    device: Literal["auto", "cpu", "cuda"]
    amp: Literal["auto", "bf16", "fp16", "off"]  # autocast on CUDA, as train.amp; auto: bf16 where supported
    top_k: int | None = Field(ge=1)  # answers per image; None: as many as the sample's label cells hold
    submission: Literal["auto", "labels", "probabilities"]  # one label column: labels, or the positive class's probability
    thresholds: Literal["auto"] | float = Field(description="multi-label decision thresholds: auto (per class, fitted on OOF) or one value")

    @field_validator("tta_metric")
    @classmethod
    def _tta_metric(cls, value):
        return check_metric(value)

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value):
        if value != "auto" and not 0.0 < value < 1.0:
            raise ValueError("expected auto or a number between 0 and 1")
        return value

    @field_validator("tta")
    @classmethod
    def _tta_views(cls, value):
        # One plain check instead of a Literal union, whose error names each branch of the union.
        if value == "auto" or (isinstance(value, list) and value and all(v in TTA_VIEWS for v in value)):
            return value
        raise ValueError(f"expected auto or a non-empty list of {', '.join(TTA_VIEWS)}")


class PseudoParams(Section):
    threshold: float | None = Field(gt=0.0, le=1.0)  # keep predictions at least this confident; None: off
    top_fraction: float | None = Field(gt=0.0, le=1.0)  # keep the top fraction of each predicted class; None: off
    soft: bool  # soft targets (the ensemble's probabilities) instead of hard labels
    weight: float = Field(gt=0.0, le=1.0)  # sample weight of a pseudo row (a train row weighs up to 1)


class DistillParams(Section):
    teacher: str | None  # a workdir whose predict/oof.csv and predict/probs.csv teach the student; None: off
    temperature: float = Field(gt=0.0)  # softens teacher and student before the KL term
    alpha: float = Field(ge=0.0, le=1.0)  # weight of the KL term; 1 - alpha goes to the hard-label loss
    test_weight: float = Field(ge=0.0, le=1.0)  # sample weight of test images taught by the teacher; 0: none


class Params(Section):
    data: DataParams
    workdir: str
    seed: int = Field(ge=0)
    preprocess: PreprocessParams
    dedup: DedupParams
    augment: AugmentParams
    train: TrainParams
    predict: PredictParams
    pseudo: PseudoParams
    rounds: int = Field(ge=0, le=10)  # pseudo-label rounds after the first train -> predict
    distill: DistillParams
    finetune: dict[str, Any]  # dotted-key train overrides applied when pretrained weights load (unless set with -S)
    example: dict[str, Any]  # dotted-key overrides applied only to the built-in example

    @property
    def is_example(self) -> bool:
        return self.data.root == EXAMPLE_ROOT

    @field_validator("finetune")
    @classmethod
    def _train_keys(cls, value):
        wrong = [k for k in value if not k.startswith("train.")]
        if wrong:
            raise ValueError(f"finetune overrides train keys only (train.lr, ...), got {', '.join(wrong)}")
        return value


def parse_override(text: str) -> tuple[str, Any]:
    """`train.epochs=3` -> ("train.epochs", 3); the value is read as YAML, like `dvc exp run -S`."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"-S {text!r}: expected key.path=value, e.g. -S train.epochs=3")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ParamsError(f"-S {text!r}: the value is not valid YAML ({str(exc).splitlines()[0]}); quote it or close its brackets") from None


def set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ParamsError(f"{key}: unknown key ({where} is not a params section)")
        node = child
    node[parts[-1]] = value  # a misspelt key is caught by validation, which names the allowed ones


BRANCH_TYPES = {"int", "str", "float", "bool", "none"}
BRANCH_PREFIXES = ("function-", "tuple[", "constrained-", "literal[", "list[", "dict[")


def _key(err: dict) -> str:
    # Unions report one error per branch (loc ends in the branch's type); keep the path that names a key.
    return ".".join(str(p) for p in err["loc"] if str(p) not in BRANCH_TYPES and not str(p).startswith(BRANCH_PREFIXES))


RENAMED = {"train.mix_min_epochs": "train.regularise_min_epochs"}  # old key -> new key: a params.yaml from before says so


def _describe(err: dict) -> str:
    key = _key(err)
    old = {new: old for old, new in RENAMED.items()}
    if err["type"] == "missing":
        if key in old:
            return f"{key}: missing from params.yaml (it was called {old[key]}: rename it)"
        shipped = _shipped_value(key)
        return f"{key}: missing from params.yaml" + (f" (new in this version; the shipped default is {shipped!r})" if shipped is not None else "")
    if err["type"] == "extra_forbidden" and key in RENAMED:
        return f"{key}: renamed to {RENAMED[key]}"
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key (allowed here: {', '.join(_allowed(err['loc'][:-1]))})"
    if isinstance(err.get("input"), dict):  # a section-level check: the message names the keys itself
        return f"{key}: {err['msg'].removeprefix('Value error, ')}"
    return f"{key} = {err.get('input')!r}: {err['msg'].lower()}"


def _shipped_value(key: str) -> Any:
    """The value of dotted `key` in the params.yaml this version ships (what `pipeline init` writes), or
    None: a params.yaml from an older version lacks the keys added since."""
    from importlib import resources

    try:
        value = yaml.safe_load(resources.files("pipeline").joinpath("defaults/params.yaml").read_text())
        for part in key.split("."):
            value = value[part]
        return value
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None


def _allowed(loc: tuple) -> list[str]:
    model = Params
    for part in loc:
        model = getattr(model, "model_fields", {}).get(part)
        model = model.annotation if model is not None else None
    return sorted(getattr(model, "model_fields", {})) or ["see params.yaml"]


def validate(raw: dict) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        first = _describe(errors[0])
        branches = [e for e in errors if _key(e) == _key(errors[0])]
        if len(branches) > 1:  # a union (e.g. an int or "auto"): say every form the key accepts
            wanted = " or ".join(dict.fromkeys(e["msg"].lower().removeprefix("input should be ").split(",")[0] for e in branches))
            first = f"{_key(errors[0])} = {errors[0].get('input')!r}: expected {wanted}"
        rest = len(errors) - len(branches)
        more = f" (and {rest} more)" if rest else ""
        raise ParamsError(first + more) from None


def load_raw(path: Path) -> dict:
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found; write one with `pipeline init DATA_ROOT` (or pass --params PATH)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}{_yaml_where(exc)}: not valid YAML ({getattr(exc, 'problem', None) or str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def _yaml_where(exc: yaml.YAMLError) -> str:
    """':line:column' (1-based, as editors count) of a YAML error, when the parser knows it."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""


def load_params(path: Path, overrides: list[str] = (), workdir: str | None = None) -> tuple[Params, list[str]]:
    """Load, apply example and command-line overrides, validate. Returns the params and the list of
    example overrides applied (to print), so that nothing is shrunk silently. The finetune preset is
    applied on top by pipeline.finetune.load_finetuned (what the CLI calls), once the weights are known."""
    raw = load_raw(Path(path))
    user = [parse_override(o) for o in overrides]
    if workdir is not None:
        user.append(("workdir", workdir))
    root = dict(user).get("data.root", (raw.get("data") or {}).get("root"))
    applied: list[str] = []
    if root == EXAMPLE_ROOT:
        user_keys = {k for k, _ in user}
        for key, value in (raw.get("example") or {}).items():
            if key not in user_keys:
                set_dotted(raw, key, value)
                applied.append(f"{key}={value}")
    for key, value in user:
        set_dotted(raw, key, value)
    return validate(raw), applied


def section(params: Params, name: str) -> Any:
    """A params section (or top-level scalar) as plain data, for hashing and writing beside outputs."""
    value = getattr(params, name)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value
