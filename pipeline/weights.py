"""Pretrained weights: what `train.pretrained` points at, found before any work.

`train.pretrained` is one of
- null / false: train from scratch;
- true: timm's default pretrained tag for `train.model` (or the tag in the name, convnext_tiny.fb_in22k),
  read from the local Hugging Face cache, downloaded into it when online;
- auto: true when the weights are in the cache or the hub is reachable, otherwise scratch (said, and recorded);
- a path: a weights file (.safetensors, pytorch_model.bin, .pth), a model folder holding one (timm/Hugging Face
  layout, or DIR/<model> written by `pipeline weights`), or one of our own checkpoints (train/fold0/best.pt).

`resolve_weights(train)` is the one answer that the check pass, the runner (the identity goes into train's lock,
so new weights make train stale) and train itself use. `timm_kwargs(weights, ...)` turns it into the arguments of
`timm.create_model`, so timm's own loader adapts the first conv to other channel counts and resets a classifier
of another size.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.artifacts import hash_file
from pipeline.errors import CheckError

SCRATCH = "scratch"
PREFERRED_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")  # timm's order in a folder
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm fetches for an hf_hub_id, safest first
PROBE_SECONDS = 3.0  # auto: how long the hub may take to answer a connect before it counts as unreachable


@dataclass(frozen=True)
class Weights:
    kind: str  # scratch, hub (Hugging Face cache), file (a local file or a file in a local folder)
    path: Path | None  # the file timm reads; None for scratch, or hub weights not downloaded yet
    identity: str  # recorded in train's lock: hub repo@revision:blob, or sha256 of the file, or scratch
    source: str  # one line for people: where the weights come from
    note: str = ""  # why this was chosen (auto)
    hub_id: str | None = None  # timm/<model>.<tag> for hub weights

    @property
    def loaded(self) -> bool:
        return self.kind != SCRATCH

    def describe(self) -> str:
        said = f"pretrained weights {self.source}" if self.loaded else "from scratch"
        return said + (f" ({self.note})" if self.note else "")


def hub_cache() -> Path:
    """The Hugging Face hub cache, read from the environment now (HF_HUB_CACHE, else HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on") or bool(constants.HF_HUB_OFFLINE)


_REACHABLE: dict[str, bool] = {}


def hub_reachable() -> bool:
    """One quick connect to the hub (memoised per process): without a network, huggingface_hub retries
    for ~25 s before giving up, which `auto` must not cost on every command."""
    if offline():
        return False
    from huggingface_hub import constants

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    if host not in _REACHABLE:
        try:
            socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
            _REACHABLE[host] = True
        except OSError:
            _REACHABLE[host] = False
    return _REACHABLE[host]


def pretrained_cfg(model: str) -> dict:
    """timm's pretrained config for a model name, with or without a tag (convnext_tiny.fb_in22k)."""
    from timm.models import split_model_name_tag
    from timm.models._builder import resolve_pretrained_cfg

    name, tag = split_model_name_tag(model)
    try:
        return resolve_pretrained_cfg(name, pretrained_cfg=tag or None).to_dict()
    except (RuntimeError, KeyError, AssertionError) as exc:
        raise CheckError(f"train.model = {model!r}: timm has no pretrained config for it ({exc}); `pipeline weights --list PATTERN` lists those that do") from None


def hub_id(model: str) -> tuple[str, list[str]]:
    """The Hugging Face repo of the model's pretrained tag and the files timm would read from it."""
    cfg = pretrained_cfg(model)
    repo = cfg.get("hf_hub_id")
    if not repo:
        raise CheckError(f"train.pretrained: timm has no Hugging Face weights for {model!r} (only {cfg.get('url') or 'none'}); "
                         "download the file and set train.pretrained to its path")
    return repo, [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else list(HUB_FILES)


def cached_hub_file(repo: str, filenames: list[str]) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = repo.partition("@")
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache(), revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    return None


def download_hub_file(repo: str, filenames: list[str]) -> Path:
    """hf_hub_download of the first file the repo has (model.safetensors, else pytorch_model.bin)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo_id, _, revision = repo.partition("@")
    for filename in filenames[:-1]:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision or None, cache_dir=hub_cache()))
        except EntryNotFoundError:
            continue
    return Path(hf_hub_download(repo_id, filenames[-1], revision=revision or None, cache_dir=hub_cache()))


def hub_identity(repo: str, path: Path) -> str:
    """repo@revision:blob — the snapshot folder is the commit, the blob name the file's content hash (etag)."""
    snapshot = next(p for p in path.parents if p.parent.name == "snapshots")
    return f"{repo.partition('@')[0]}@{snapshot.name}:{path.resolve().name[:16]}"


def fetch_command(model: str) -> str:
    return f"pipeline weights {model} --to DIR` on a machine online, then `train.pretrained: DIR/{model}"


def resolve_hub(model: str, auto: bool, fetch: bool) -> Weights:
    """true / auto: the cache first (no network), then a download when online (fetch) — or, for auto, scratch."""
    repo, filenames = hub_id(model) if not auto else _hub_id_or_none(model)
    if repo is None:
        return Weights(SCRATCH, None, f"{SCRATCH} (auto: no hub weights for {model})", "", f"auto: timm has no Hugging Face weights for {model}")
    cached = cached_hub_file(repo, filenames)
    how = "true" if not auto else "auto"
    if cached is not None:
        return Weights("hub", cached, hub_identity(repo, cached), f"{repo} from the Hugging Face cache {hub_cache()}",
                       f"{how}: found in the cache" if auto else "", repo)
    if not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline() else "the hub is unreachable"
        if auto:
            return Weights(SCRATCH, None, f"{SCRATCH} (auto: not cached, offline)", "",
                           f"auto: {repo} is not in the Hugging Face cache {hub_cache()} and {why}; `{fetch_command(model)}` uses it")
        raise CheckError(f"train.pretrained = true: {repo} is not in the Hugging Face cache {hub_cache()} and {why}; "
                         f"`{fetch_command(model)}` uses it (or set train.pretrained to a local file, or auto)")
    if not fetch:  # status and checks never download
        return Weights("hub", None, f"{repo} (not downloaded yet)", f"{repo} from the hub (train downloads it)", f"{how}: hub reachable", repo)
    try:
        path = download_hub_file(repo, filenames)
    except (OSError, ValueError) as exc:  # huggingface_hub's HTTP and network errors derive from these
        if auto:
            return Weights(SCRATCH, None, f"{SCRATCH} (auto: download failed)", "", f"auto: downloading {repo} failed ({str(exc).splitlines()[0][:200]})")
        raise CheckError(f"train.pretrained = true: downloading {repo} into {hub_cache()} failed ({str(exc).splitlines()[0][:200]})") from None
    return Weights("hub", path, hub_identity(repo, path), f"{repo} downloaded into {hub_cache()}", f"{how}: downloaded", repo)


def _hub_id_or_none(model: str) -> tuple[str | None, list[str]]:
    try:
        return hub_id(model)
    except CheckError:
        return None, []


def weights_file(path: Path) -> Path:
    """The file a folder's weights are in, in timm's order of preference."""
    for name in PREFERRED_FILES:
        if (path / name).is_file():
            return path / name
    for suffix in WEIGHT_SUFFIXES:
        found = sorted(path.glob(f"*{suffix}"))
        if found:
            return found[0]
    raise CheckError(f"train.pretrained: {path} holds no weights file (expected one of {', '.join(PREFERRED_FILES)} or a *.safetensors/*.pth/*.bin)")


_HASHES: dict[tuple, str] = {}


def file_identity(path: Path) -> str:
    """sha256 of the file (memoised by path, size and mtime within a process)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = "sha256:" + hash_file(path)
    return _HASHES[key]


def resolve_local(value: str) -> Weights:
    path = Path(value).expanduser()
    if not path.exists():
        raise CheckError(f"train.pretrained = {value!r}: no such file or folder (give weights, a model folder, true, auto or null)")
    file = weights_file(path) if path.is_dir() else path
    return Weights("file", file, file_identity(file), str(file))


def resolve_weights(train: Any, fetch: bool = True) -> Weights:
    """Where `train.pretrained` points. true/auto look in the Hugging Face cache, then online (downloading only
    with fetch); offline and not cached, true is a CheckError naming the cache and the fetch command and auto is
    scratch with a note. A path must exist. Never silent: Weights.describe() says what was chosen and why."""
    value = train.pretrained
    if value is None or value is False:
        return Weights(SCRATCH, None, SCRATCH, "")
    if value is True or value == "auto":
        return resolve_hub(train.model, auto=value == "auto", fetch=fetch)
    return resolve_local(str(value))


def will_load(train: Any) -> Weights:
    """resolve_weights without a download: enough to decide whether the finetune preset applies."""
    return resolve_weights(train, fetch=False)


def read_state_dict(path: Path, trusted: bool = False) -> dict:
    """Tensors of a weights file: safetensors, a timm/torch state dict, or a checkpoint that wraps one
    (ours keep the EMA weights, which were the validated ones, under ema_state_dict). Pickles are read with
    torch's weights_only guard; only a local file the user named (trusted) may need the full unpickler."""
    import pickle

    import torch
    from timm.models import load_state_dict

    if path.suffix == ".safetensors":
        return load_state_dict(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # our own checkpoints carry metadata (numpy scalars) that weights_only refuses
        if not trusted:
            raise
        state = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("ema_state_dict", "state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise CheckError(f"train.pretrained: {path} holds no state dict")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items() if torch.is_tensor(v)}


def tensor_shapes(path: Path, trusted: bool = False) -> dict[str, tuple]:
    """Names and shapes of the file's tensors; safetensors are read from the header alone."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    return {k: tuple(v.shape) for k, v in read_state_dict(path, trusted).items()}


def checkpoint_meta(path: Path) -> dict:
    """What one of our checkpoints (a local file the user named) records besides tensors: norm, classes, ...;
    empty for any other file. Memoised: train asks twice per run."""
    if path.suffix == ".safetensors":
        return {}
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _META:
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # not a torch file we can read: timm's loader says why
            state = None
        _META[key] = {k: v for k, v in state.items() if k in ("norm", "classes", "model")} if isinstance(state, dict) else {}
    return _META[key]


_META: dict[tuple, dict] = {}


def checkpoint_norm(path: Path) -> dict | None:
    """The input normalisation one of our checkpoints trained with, else None."""
    norm = checkpoint_meta(path).get("norm")
    return norm if isinstance(norm, dict) and {"mean", "std"} <= set(norm) else None


def _names(cfg_value) -> tuple[str, ...]:
    return (cfg_value,) if isinstance(cfg_value, str) else tuple(cfg_value or ())


def adaptable(model: Any) -> tuple[set[str], set[str]]:
    """Tensors timm adapts rather than copies: the first conv (other channel counts) and the classifier
    (reset when the class count differs), plus position tables its checkpoint filters resample."""
    cfg = model.pretrained_cfg
    first = {f"{name}.weight" for name in _names(cfg.get("first_conv"))}
    head = {f"{name}.{part}" for name in _names(cfg.get("classifier")) for part in ("weight", "bias")}
    return first, head


def fit(model: Any, shapes: dict[str, tuple]) -> tuple[list[str], list[str]]:
    """Which of the model's tensors the weights fill (same name and shape, or adaptable by timm) and which
    of the weights' tensors have the model's name but a shape no adaptation fixes."""
    first, head = adaptable(model)
    fitting, clash = [], []
    for name, tensor in model.state_dict().items():
        if name not in shapes:
            continue
        same = tuple(tensor.shape) == shapes[name]
        resampled = "pos_embed" in name or "relative_position" in name
        if same or name in first or name in head or (resampled and len(tensor.shape) == len(shapes[name])):
            fitting.append(name)
        else:
            clash.append(name)
    return fitting, clash


def source_layout(model: Any, shapes: dict[str, tuple]) -> tuple[int | None, int | None]:
    """The class count and input channels the weights were trained with (from the classifier and the first conv)."""
    first, head = adaptable(model)
    classes = next((shapes[n][0] for n in sorted(head) if n.endswith(".weight") and n in shapes), None)
    chans = next((shapes[n][1] for n in sorted(first) if n in shapes and len(shapes[n]) == 4), None)
    return classes, chans


def meta_model(model_name: str, num_classes: int, in_chans: int, extra: dict) -> Any:
    """The architecture without memory or init cost, to compare names and shapes against the weights."""
    import timm
    import torch

    with torch.device("meta"):
        return timm.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **extra)


def fit_or_refuse(weights: Weights, target: Any, model_name: str, min_fit: float) -> tuple[dict[str, tuple], list[str]]:
    """The weights' tensor shapes and the names that clash, or a CheckError when they fill under min_fit of the model."""
    shapes = tensor_shapes(weights.path, trusted=weights.kind == "file")
    fitting, clash = fit(target, shapes)
    total = len(target.state_dict())
    if len(fitting) < min_fit * total:
        raise CheckError(f"train.pretrained: {weights.path} fits only {len(fitting)} of {total} tensors of {model_name} "
                         f"(train.pretrained_min_fit = {min_fit}); are they for train.model?")
    return shapes, clash


def check_pretrained(train: Any, fetch: bool = False) -> Weights:
    """Before any work: the weights train.pretrained names can be had and fit train.model (built on the meta
    device, so this costs no memory; the class and channel counts do not matter, timm adapts those)."""
    weights = resolve_weights(train, fetch=fetch)
    if weights.loaded and weights.path is not None:
        fit_or_refuse(weights, meta_model(train.model, 1000, 3, {}), train.model, train.pretrained_min_fit)
    return weights


def timm_kwargs(weights: Weights, model_name: str, num_classes: int, in_chans: int, min_fit: float, extra: dict,
                classes: list[str] | None = None) -> dict:
    """create_model arguments that make timm load the weights: pretrained_cfg_overlay=dict(file=...) when
    every tensor fits (timm reads the file), else the fitting tensors as a state dict. Either way timm's loader
    adapts the first conv to in_chans and resets a classifier of another size — or of the same size for other
    classes, when the weights are one of our checkpoints and say which classes they learned. Weights that fill
    under min_fit of the model are refused before any training."""
    if not weights.loaded:
        return {"pretrained": False}
    if weights.path is None:
        raise CheckError(f"train.pretrained: {weights.source} is not downloaded; `{fetch_command(model_name)}` uses it")
    trusted = weights.kind == "file"  # a path the user gave; hub files never go through the full unpickler
    target = meta_model(model_name, num_classes, in_chans, extra)
    shapes, clash = fit_or_refuse(weights, target, model_name, min_fit)
    source_classes, chans = source_layout(target, shapes)
    learned = checkpoint_meta(weights.path).get("classes") if trusted else None
    if source_classes is None or (classes is not None and learned is not None and list(learned) != list(classes)):
        source_classes = -1  # timm resets a classifier whose class count differs from the weights'
    input_size = target.pretrained_cfg.get("input_size") or (3, 224, 224)
    overlay: dict = {"num_classes": source_classes, "input_size": (chans or input_size[0], *input_size[1:])}
    if weights.path.suffix == ".safetensors" and not clash:
        overlay["file"] = str(weights.path)
    else:
        overlay["state_dict"] = {k: v for k, v in read_state_dict(weights.path, trusted).items() if k not in clash}
    return {"pretrained": True, "pretrained_cfg_overlay": overlay, "pretrained_strict": False}


def input_size_kwargs(model_name: str, size: tuple[int, int]) -> dict:
    """img_size for models built for one input size (ViT-like: timm resamples their position embeddings
    when loading); CNNs take any size as they are."""
    from timm.models import split_model_name_tag
    from timm.models._builder import resolve_pretrained_cfg

    name, tag = split_model_name_tag(model_name)
    try:
        fixed = resolve_pretrained_cfg(name, pretrained_cfg=tag or None).to_dict().get("fixed_input_size", False)
    except (RuntimeError, KeyError, AssertionError):
        return {}
    return {"img_size": tuple(size)} if fixed else {}


def weights_norm(weights: Weights, model_name: str) -> dict:
    """The mean/std (0..1 scale) the weights were trained with: one of our checkpoints records its own; a model
    folder's config.json holds its pretrained_cfg; otherwise timm's pretrained_cfg for the model (and tag)."""
    if weights.path is not None and weights.kind == "file":
        own = checkpoint_norm(weights.path)
        if own is not None:
            return {"mean": list(own["mean"]), "std": list(own["std"])}
        config = weights.path.parent / "config.json"
        if weights.kind == "file" and config.is_file():
            import json

            cfg = json.loads(config.read_text())
            cfg = cfg.get("pretrained_cfg", cfg)
            if "mean" in cfg and "std" in cfg:
                return {"mean": list(cfg["mean"]), "std": list(cfg["std"])}
    try:
        cfg = pretrained_cfg(model_name)
    except CheckError:
        cfg = {}
    return {"mean": list(cfg.get("mean") or (0.485, 0.456, 0.406)), "std": list(cfg.get("std") or (0.229, 0.224, 0.225))}
