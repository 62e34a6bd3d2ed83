"""Pretrained weights with no network: a fake Hugging Face cache (the real layout: models--timm--<name>/
blobs, snapshots/<rev>/ symlinks, refs/main) under a temp HF_HOME, HF_HUB_OFFLINE=1 (tests/conftest.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from pipeline.artifacts import hash_file
from pipeline.cli import app
from pipeline.errors import CheckError
from pipeline.finetune import load_finetuned
from pipeline.params import load_params
from pipeline.weights import check_pretrained, hub_id, resolve_weights
from stages.train.model import create_model, weight_loading

REV = "0123456789abcdef0123456789abcdef01234567"


def fake_hub(home: Path, model: str = "resnet10t", seed: int = 0, in_chans: int = 3, **kwargs) -> dict[str, torch.Tensor]:
    """Save a timm model's (seeded, random) weights where huggingface_hub caches the model's pretrained tag."""
    repo, _ = hub_id(model)
    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in timm.create_model(model, pretrained=False, in_chans=in_chans, **kwargs).state_dict().items()}
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(REV)
    snapshot = root / "snapshots" / REV
    snapshot.mkdir(parents=True, exist_ok=True)
    tmp = root / "blobs" / "incoming"
    save_file(state, str(tmp))
    blob = root / "blobs" / hash_file(tmp)
    tmp.rename(blob)
    for name, target in (("model.safetensors", blob), ("config.json", None)):
        if target is None:
            target = root / "blobs" / "config"
            target.write_text(json.dumps({"architecture": model, "num_classes": 1000}))
        link = snapshot / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(target, snapshot))
    return state


@pytest.fixture
def hub(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    return home


def train_params(*overrides):
    params, _ = load_params("params.yaml", ["data.root=/nonexistent", "train.model=resnet10t", *overrides])
    return params.train


def build(p, num_classes=1000, in_chans=3, size=(32, 32)):
    weights = resolve_weights(p)
    return create_model(p, num_classes, in_chans, weight_loading(p, weights, num_classes, in_chans, size), size), weights


def test_true_loads_exactly_the_cached_tensors(hub):
    saved = fake_hub(hub)
    model, weights = build(train_params("train.pretrained=true"))
    assert weights.kind == "hub" and weights.identity.startswith(f"timm/resnet10t.c3_in1k@{REV}:")
    loaded = model.state_dict()
    assert set(saved) == set(loaded)
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name


def test_one_channel_cache_adapts_the_first_conv_and_other_classes_reset_the_head(hub):
    saved = fake_hub(hub)
    model, _ = build(train_params("train.pretrained=true"), num_classes=5, in_chans=1)
    loaded = model.state_dict()
    assert torch.allclose(loaded["conv1.0.weight"], saved["conv1.0.weight"].sum(1, keepdim=True))  # timm's 3 -> 1 rule
    assert loaded["fc.weight"].shape == (5, saved["fc.weight"].shape[1])
    assert not torch.equal(loaded["fc.weight"], saved["fc.weight"][:5])  # a fresh head, not a slice of the old one
    assert torch.equal(loaded["layer4.0.conv2.weight"], saved["layer4.0.conv2.weight"])


def test_a_fixed_size_model_takes_the_cache_size(hub):
    """ViT-like models: img_size is passed and timm resamples the position embeddings of 224 px weights."""
    name = "vit_tiny_patch16_224"
    saved = fake_hub(hub, name)
    model, _ = build(train_params(f"train.model={name}", "train.pretrained=true"), num_classes=3, size=(64, 64))
    assert model.pos_embed.shape[1] == 1 + (64 // 16) ** 2 and saved["pos_embed"].shape[1] == 1 + 14**2
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], saved["blocks.0.attn.qkv.weight"])
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 3)


def test_offline_and_not_cached(hub, tmp_path, kaggle_dir, params_file):
    """true: exit 2 before any work, one line naming the model, the cache folder and the fetch command;
    auto: scratch, said."""
    result = CliRunner().invoke(app, ["run", "-p", str(params_file), "-w", str(tmp_path / "wd"), "-S", f"data.root={kaggle_dir}",
                                      "-S", "train.model=resnet10t", "-S", "train.pretrained=true"])
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert "timm/resnet10t.c3_in1k" in line and str(hub / "hub") in line and "pipeline weights resnet10t --to DIR" in line
    assert not (tmp_path / "wd" / "preprocess").exists()  # nothing ran
    weights = resolve_weights(train_params("train.pretrained=auto"))
    assert not weights.loaded and "not in the Hugging Face cache" in weights.describe() and "HF_HUB_OFFLINE" in weights.describe()


def test_pipeline_weights_folder_loads_with_the_network_off(hub, tmp_path, monkeypatch):
    saved = fake_hub(hub)
    result = CliRunner().invoke(app, ["weights", "resnet10t", "--to", str(tmp_path / "kaggle-dataset")])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "kaggle-dataset" / "resnet10t"
    assert (folder / "model.safetensors").is_file() and not (folder / "model.safetensors").is_symlink()
    assert f"train.pretrained={folder}" in " ".join(result.output.split())
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "resnet10t" and config["pretrained_cfg"]["mean"] == [0.485, 0.456, 0.406]
    listed = CliRunner().invoke(app, ["weights", "--list", "resnet10t*"])
    assert listed.exit_code == 0 and "resnet10t.c3_in1k  (in the Hugging Face cache)" in listed.output
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-cache-here"))  # the notebook: no cache, no network
    model, weights = build(train_params(f"train.pretrained={folder}", "train.norm=pretrained"))
    assert weights.kind == "file" and weights.path == folder / "model.safetensors"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_weights_that_fit_too_little_are_refused(hub, tmp_path):
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in other.items()}, str(tmp_path / "vit.safetensors"))
    p = train_params(f"train.pretrained={tmp_path / 'vit.safetensors'}")
    with pytest.raises(CheckError, match="fits only 0 of .* tensors of resnet10t"):
        check_pretrained(p)  # what `pipeline run` checks before preprocess
    with pytest.raises(CheckError, match="fits only 0 of .* tensors of resnet10t"):
        build(p)


def test_finetune_preset_applies_when_weights_load_and_the_user_wins(hub):
    fake_hub(hub)
    params, _, said = load_finetuned("params.yaml", ["data.root=/nonexistent", "train.model=resnet10t", "train.pretrained=true",
                                                     "train.epochs=7"])
    assert params.train.lr == params.finetune["train.lr"] and params.train.layer_decay == params.finetune["train.layer_decay"]
    assert params.train.norm == "pretrained" and params.train.epochs == 7  # -S keeps the user's value
    assert "finetune overrides" in said and "kept your train.epochs" in said
    assert params.train.min_steps == 0 and "train.min_steps=0 with your train.epochs" in said  # 7 epochs are 7 epochs
    preset, _, said = load_finetuned("params.yaml", ["data.root=/nonexistent", "train.model=resnet10t", "train.pretrained=true"])
    assert preset.train.epochs == preset.finetune["train.epochs"] and preset.train.min_steps == preset.finetune["train.min_steps"] > 0
    auto = resolve_weights(train_params("train.pretrained=auto"))
    assert auto.kind == "hub" and "found in the cache" in auto.describe()
    scratch, _, said = load_finetuned("params.yaml", ["data.root=/nonexistent", "train.model=resnet10t", "train.pretrained=null"])
    assert said == ""
    assert scratch.train.lr != scratch.finetune["train.lr"] and scratch.train.layer_decay is None


def test_layer_decay_scales_lr_from_the_head_down(hub):
    from stages.train.model import param_groups

    p = train_params("train.layer_decay=0.5")
    model = timm.create_model("resnet10t", num_classes=3)
    scales = sorted({g["lr_scale"] for g in param_groups(model, p)})
    head = [g for g in param_groups(model, p) if any(q is model.fc.weight for q in g["params"])]
    assert head[0]["lr_scale"] == 1.0 and scales[0] < 0.1 and len(scales) > 3


def tiny_workdir(root: Path) -> Path:
    """A workdir whose preprocess/dedup/augment are the tiny generated ones of test_train_fold (fake locks)."""
    from tests.test_train_fold import make_inputs

    for folder in make_inputs(root).values():
        (folder / "lock.json").write_text(json.dumps({"outs_hash": folder.name}))
    return root


def run_train(workdir: Path, *overrides):
    from pipeline.runner import BY_NAME, run_stage, stage_status
    from tests.test_train_fold import TINY

    params, _, _ = load_finetuned("params.yaml", [*TINY, "data.root=/nonexistent", "train.fold=0", "train.epochs=1", *overrides])
    run_stage(BY_NAME["train"], params, workdir)
    return lambda: stage_status(BY_NAME["train"], params, workdir)


def test_auto_offline_trains_from_scratch_and_says_so(tmp_path, capsys):
    workdir = tiny_workdir(tmp_path / "wd")
    run_train(workdir, "train.pretrained=auto")
    said = " ".join(capsys.readouterr().err.split())
    assert "train: resnet10t from scratch (auto: timm/resnet10t.c3_in1k is not in the Hugging Face cache" in said
    fold = json.loads((workdir / "train" / "fold0" / "fold.json").read_text())
    assert fold["weights"]["kind"] == "scratch" and "auto:" in fold["weights"]["note"]
    assert json.loads((workdir / "train" / "lock.json").read_text())["deps"]["weights"].startswith("scratch (auto")


def test_the_lock_changes_when_the_weights_file_changes(tmp_path):
    workdir = tiny_workdir(tmp_path / "wd")
    file = tmp_path / "weights" / "model.safetensors"
    file.parent.mkdir()
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet10t").state_dict().items()}, str(file))
    status = run_train(workdir, f"train.pretrained={file.parent}")
    lock = json.loads((workdir / "train" / "lock.json").read_text())
    assert lock["deps"]["weights"] == "sha256:" + hash_file(file) and status() == ("fresh", "params, inputs and outputs unchanged")
    torch.manual_seed(1)
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet10t").state_dict().items()}, str(file))
    assert status() == ("stale", "input weights changed")


def test_online_true_downloads_into_the_cache_and_auto_survives_a_failed_download(hub, monkeypatch):
    """The online path with the hub stood in for: hf_hub_download writes the cache entry timm would get."""
    import huggingface_hub

    import pipeline.weights as weights_module

    calls = []

    def download(repo_id, filename, revision=None, cache_dir=None):
        calls.append((repo_id, filename, Path(cache_dir)))
        fake_hub(hub)
        return str(hub / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / REV / filename)

    monkeypatch.setattr(weights_module, "hub_reachable", lambda: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    p = train_params("train.pretrained=true")
    assert resolve_weights(p, fetch=False).path is None and not calls  # status and checks never download
    weights = resolve_weights(p)
    assert calls == [("timm/resnet10t.c3_in1k", "model.safetensors", hub / "hub")] and weights.source.endswith("downloaded into " + str(hub / "hub"))
    assert weights.identity == resolve_weights(p, fetch=False).identity  # cached now: status agrees with the lock

    def fails(*args, **kwargs):
        raise ConnectionResetError("connection reset by peer")  # huggingface_hub's HTTP errors are OSErrors too

    monkeypatch.setenv("HF_HOME", str(hub.parent / "empty"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fails)
    said = resolve_weights(train_params("train.pretrained=auto")).describe()
    assert said.startswith("from scratch (auto: downloading timm/resnet10t.c3_in1k failed")
    with pytest.raises(CheckError, match="downloading timm/resnet10t.c3_in1k into .* failed"):
        resolve_weights(p)


def test_our_checkpoint_keeps_its_head_only_for_the_same_classes(tmp_path):
    torch.manual_seed(3)
    saved = timm.create_model("resnet10t", num_classes=3, in_chans=1).state_dict()
    file = tmp_path / "best.pt"
    torch.save({"model": "resnet10t", "classes": ["a", "b", "c"], "norm": {"mean": [0.2], "std": [0.3]}, "state_dict": saved}, file)
    p = train_params(f"train.pretrained={file}")
    weights = resolve_weights(p)
    for classes, kept in ((["a", "b", "c"], True), (["x", "y", "z"], False)):
        model = create_model(p, 3, 1, weight_loading(p, weights, 3, 1, (32, 32), classes), (32, 32))
        assert torch.equal(model.state_dict()["fc.weight"], saved["fc.weight"]) == kept, classes
        assert torch.equal(model.state_dict()["conv1.0.weight"], saved["conv1.0.weight"])
