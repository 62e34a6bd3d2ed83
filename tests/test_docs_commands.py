"""Every shell command that README.md and docs/*.md show, run in order on the built-in example, so the
docs cannot drift from what the tool does. A command is skipped only by the explicit list below (it
needs a GPU, several processes, a cluster, the network or another tool, each covered elsewhere);
placeholders and long runs are replaced by the explicit substitutions below. The example is shrunk
further (2 folds, 1 epoch) through the `example:` section of a copied params.yaml, the same mechanism
a user sees, so the commands run word for word otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SUBCOMMANDS = ("preprocess", "dedup", "augment", "train", "predict", "pseudo", "run", "status", "compare", "init", "weights", "--version")
COMMAND = re.compile(r"(?:\$ )?((?:pipeline|torchrun|dvc|kaggle|head|CUDA_VISIBLE_DEVICES=\S+) .*)")

SKIPPED = {  # prefix -> why it cannot run here
    "torchrun": "several processes (tests/test_distributed.py runs torchrun on CPU)",
    "dvc": "another tool (tests/test_dvc.py runs dvc repro)",
    "kaggle": "needs the network and a Kaggle account",
    "CUDA_VISIBLE_DEVICES": "needs GPUs",
    "pipeline weights": "needs the network or a Hugging Face cache",
    "pipeline init": "needs a competition folder (tests/test_kinds.py runs init + run on generated ones)",
}
if importlib.util.find_spec("tensorboard") is None:  # an optional extra; without it the command is one line, exit 2
    SKIPPED["pipeline train -S train.tensorboard=true"] = "needs the optional tensorboard package"
SUBSTITUTIONS = {  # placeholders in the docs, and runs too long for a test
    '"$SLURM_ARRAY_TASK_ID"': "1", "$SLURM_ARRAY_TASK_ID": "1", "--fold K": "--fold 1", "rounds=N": "rounds=1",
    "rounds=2": "rounds=1", "train.epochs=40": "train.epochs=2", "train.epochs=8": "train.epochs=2",
    "train.model=convnext_tiny": "train.model=resnet10t", "train.model=resnet18d": "train.model=resnet10t",
}
TINY = {"train.folds": 2, "train.epochs": 1, "predict.tta_oof_images": 100, "augment.preview": 2}
EXPECTED_FAILURES = {"pipeline train -S train.folds=1": 2}  # the README shows this one's error on purpose


def strip_comment(command: str) -> str:
    return re.sub(r"\s+#.*$", "", command).rstrip(" &").strip()


def block_commands(body: str) -> list[tuple[str, str | None]]:
    """(command, the output line the doc shows under it, if any) for each command line of a code block."""
    lines, found = body.splitlines(), []
    for i, line in enumerate(lines):
        match = COMMAND.fullmatch(line.strip())
        if not match:
            continue
        command = match.group(1)
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command[:-1] + " " + lines[i].strip()
        shown = lines[i + 1].strip() if line.startswith("$ ") and i + 1 < len(lines) else None
        found.append((strip_comment(command), shown))
    return found


def documented_commands() -> list[tuple[str, str, str | None]]:
    """(doc, command, shown output) in document order, each command once."""
    seen, out = set(), []
    for doc in DOCS:
        text = doc.read_text()
        items = []
        for block in re.finditer(r"```(\w*)\n(.*?)```", text, re.S):
            if block.group(1) in ("", "bash", "sh", "console"):
                items += [(block.start(), c, shown) for c, shown in block_commands(block.group(2))]
        prose = re.sub(r"```.*?```", lambda m: " " * len(m.group(0)), text, flags=re.S)
        for span in re.finditer(r"`([^`]+)`", prose):
            command = " ".join(span.group(1).split())
            if COMMAND.fullmatch(command):
                items.append((span.start(), strip_comment(command), None))
        for _, command, shown in sorted(items, key=lambda item: item[0]):
            words = command.split()
            if words[0] == "pipeline" and (len(words) < 2 or words[1] not in SUBCOMMANDS or "  " in command):
                continue  # "pipeline/" in a layout, or a command table with prose beside each name
            if substituted(command) not in seen:  # the same command twice (after substitution) runs once
                seen.add(substituted(command))
                out.append((doc.name, command, shown))
    return out


def substituted(command: str) -> str:
    for placeholder, value in SUBSTITUTIONS.items():
        command = command.replace(placeholder, value)
    return command


def test_the_docs_show_commands_and_the_lists_name_real_ones():
    commands = [c for _, c, _ in documented_commands()]
    assert "pipeline run" in commands and any(c.startswith("pipeline run -w runs/student") for c in commands)
    texts = " ".join(doc.read_text() for doc in DOCS)
    for placeholder in SUBSTITUTIONS:  # a substitution whose command left the docs is removed, not kept silently
        assert placeholder in texts, placeholder


@pytest.mark.slow
def test_every_documented_command_runs_on_the_example(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["example"].update(TINY)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}
    ran, skipped = [], []
    for doc, command, shown in documented_commands():
        reason = next((why for prefix, why in SKIPPED.items() if command.startswith(prefix)), None)
        if reason:
            skipped.append(command)
            continue
        actual = substituted(command)
        result = subprocess.run(actual, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        output = result.stdout + result.stderr
        expected = EXPECTED_FAILURES.get(command, 0)
        assert result.returncode == expected, f"{doc}: `{actual}` exited {result.returncode}:\n{output[-3000:]}"
        if shown is not None:
            assert " ".join(shown.split()) in " ".join(output.split()), f"{doc}: `{actual}` no longer prints {shown!r}:\n{output[-2000:]}"
        ran.append(shlex.split(actual)[:2])
        if re.match(r"pipeline run( -S train\.[\w.]+=\S+)+$", actual):
            # A one-off `-S train.*` run leaves train stale against params.yaml, and a plain `pipeline
            # predict` shown later rightly refuses stale folds: return to the documented state first.
            subprocess.run("pipeline run", shell=True, cwd=tmp_path, env=env, capture_output=True, check=True, timeout=900)
    assert len(ran) >= 15 and skipped, (ran, skipped)
