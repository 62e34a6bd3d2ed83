"""Every check before any work: each mistake is one line, exit 2, the key named, and nothing ran
(no workdir output, not even preprocess)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


@pytest.fixture
def invoke(params_file, kaggle_dir, tmp_path):
    wd = tmp_path / "art"

    def call(command: str, *sets: str):
        args = [command, "-p", str(params_file), "-w", str(wd), "-S", f"data.root={kaggle_dir}"]
        for s in sets:
            args += ["-S", s]
        result = runner.invoke(app, args)
        assert not (wd / "preprocess").exists(), "a check came after work"
        return result

    return call


def weights(tmp_path, name: str, content) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return str(path)


@pytest.mark.parametrize("command, sets, key", [
    ("run", ["train.model=resnet_does_not_exist"], "train.model = 'resnet_does_not_exist': not a timm model"),
    ("run", ["train.model=resnet18x"], "did you mean"),
    ("run", ["train.pretrained=/nonexistent/w.safetensors"], "train.pretrained = '/nonexistent/w.safetensors': no such file or folder"),
    ("run", ["train.fold=5", "train.folds=5"], "train.fold = 5: expected 0..4"),
    ("run", ["train.folds=30"], "train.folds = 30: only 24 training images"),
    ("run", ["augment.blur_limit=[3, 4]"], "augment.blur_limit = [3, 4]: expected odd kernel sizes"),
    ("run", ["augment.gamma_limit=[120, 80]"], "augment.gamma_limit = [120.0, 80.0]: expected [low, high]"),
    ("run", ["predict.runs=[/nonexistent/train]"], "predict.runs: /nonexistent/train not found"),
    ("run", ["distill.teacher=/nonexistent"], "distill.teacher = /nonexistent"),
])
def test_mistakes_are_one_line_before_any_work(invoke, command, sets, key):
    result = invoke(command, *sets)
    if key is None:
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2, result.output
    assert key in result.output
    assert result.output.strip().count("\n") == 0, result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("key", ["train.device", "predict.device"])
def test_cuda_without_a_gpu_names_the_key(invoke, key):
    result = invoke("run", f"{key}=cuda")
    assert result.exit_code == 2 and f"{key} = cuda but no CUDA device" in result.output


@pytest.mark.parametrize("name, content, message", [
    ("random.pt", bytes(range(256)) * 4, "not a readable weights file"),
    ("text.pth", b"these are not weights\n", "not a readable weights file"),
    ("tensor.pt", torch.zeros(3), "holds no state dict"),
    ("broken.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": broken", "not a readable weights file"),
    ("other.pt", {"some.weight": torch.zeros(2, 2)}, "train.pretrained"),
])
def test_a_bad_pretrained_file_is_one_line(invoke, tmp_path, name, content, message):
    result = invoke("run", f"train.pretrained={weights(tmp_path, name, content)}", "train.model=resnet10t")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output, result.output


def test_a_good_pretrained_file_passes_the_check(tmp_path):
    import timm

    from pipeline.params import load_params
    from stages.train import check
    from tests.conftest import ROOT

    path = tmp_path / "w.pt"
    torch.save(timm.create_model("resnet10t", num_classes=1000).state_dict(), path)
    params = load_params(ROOT / "params.yaml", ["train.model=resnet10t", f"train.pretrained={path}"])[0]
    check(params, None)  # another head size, same body: fits
