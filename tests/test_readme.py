"""CI must do exactly what README.md tells a newcomer: the same two commands, word for word."""

import re

from tests.conftest import ROOT


def commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith(("python3 -m venv", ". .venv/bin/activate"))]


def test_ci_runs_the_readme_commands():
    readme = commands((ROOT / "README.md").read_text())
    ci = commands((ROOT / ".ci" / "run").read_text())
    assert len(readme) == 2 and readme == ci
    assert re.search(r"pytest", readme[1])
