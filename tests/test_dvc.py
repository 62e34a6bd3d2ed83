"""`dvc repro` agrees with `pipeline run`: a second repro does nothing; one train param reruns train and predict."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.codehash import dvc_deps
from pipeline.runner import STAGES
from tests.conftest import ROOT

DVC = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")


def repro(cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run([DVC, "repro"], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


@pytest.mark.slow
@pytest.mark.skipif(DVC is None, reason="dvc is a test dependency: pip install -e '.[test]'")
def test_dvc_repro_matches_pipeline_semantics(tmp_path):
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    shutil.copy(ROOT / ".dvcignore", tmp_path)
    for package in ("pipeline", "stages"):  # the code deps
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["example"]["train.epochs"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)

    assert ran(repro(tmp_path)) == ["preprocess", "dedup", "augment", "train", "predict"]
    assert (tmp_path / "artifacts" / "predict" / "submission.csv").is_file()
    assert ran(repro(tmp_path)) == []
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    metrics = subprocess.run([DVC, "metrics", "show"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert metrics.returncode == 0 and "oof_accuracy" in metrics.stdout, metrics.stdout + metrics.stderr

    params["train"]["weight_decay"] = 0.01
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(repro(tmp_path)) == ["train", "predict"]


def test_dvc_yaml_lists_the_code_the_runner_hashes():
    """Each stage's code deps in dvc.yaml are the files pipeline.codehash finds from the import graph
    (and records in the lock), so `dvc repro` and `pipeline run` agree that a code change is stale."""
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(declared) == {s.name for s in STAGES}
    for stage in STAGES:
        code = sorted(d for d in declared[stage.name]["deps"] if d.startswith(("pipeline/", "stages/")))
        assert code == dvc_deps(stage.kind), f"dvc.yaml {stage.name} deps: list exactly {dvc_deps(stage.kind)}"


def test_dvc_yaml_train_reads_the_train_side_only():
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    data = {name: sorted(d for d in stage.get("deps", []) if d.startswith("artifacts/")) for name, stage in declared.items()}
    assert data["train"] == ["artifacts/augment", "artifacts/dedup/train", "artifacts/preprocess/train"]
    assert data["augment"] == ["artifacts/preprocess/train"]
    assert data["predict"] == ["artifacts/dedup", "artifacts/preprocess", "artifacts/train"]
