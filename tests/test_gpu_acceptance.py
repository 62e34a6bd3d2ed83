"""bench/gpu_acceptance.sh --smoke runs end to end on a CPU (tiny sizes, gpu tests skipped), so the
script a GPU box runs cannot rot unnoticed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_acceptance_smoke_runs_every_part(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "bench/gpu_acceptance.sh"), "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=3000, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = json.loads((tmp_path / "rows_all.json").read_text())
    parts = {r["part"] for r in rows}
    assert parts == {"speed", "tests", "run"}
    assert all(r["images/s"] > 0 for r in rows if r["part"] == "speed")
    assert all(r["exit"] == 0 and r["submission"] for r in rows if r["part"] == "run"), rows
    assert "| part |" in (tmp_path / "table_all.md").read_text()
