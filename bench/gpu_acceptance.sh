#!/bin/bash
# GPU acceptance: everything that needs a GPU, measured in a few calls, each part inside 10 minutes on
# one H100. From the repository root of a fresh GPU box that has torch, torchvision and timm:
#
#   bash bench/gpu_acceptance.sh --part speed --out OUT   # train/predict images/s against the ceilings
#   bash bench/gpu_acceptance.sh --part tests --out OUT   # pytest -m gpu
#   bash bench/gpu_acceptance.sh --part run   --out OUT   # pipeline run on 60k 28 px gray + 20k 224 px colour, capped
#   bash bench/gpu_acceptance.sh --smoke --out OUT        # every part at tiny sizes, on a CPU (CI runs this)
#
# Missing Python packages are installed from .whl/ (prepared by the project's wheels.sh, which downloads
# wheels for the GPU box's Python into .whl/ at the repository root) into /tmp/site, without network.
# Each part prints one table (images/s, % of ceiling, epoch time, wall time per stage, peak GPU memory)
# and writes it to OUT/table_<part>.md and OUT/rows_<part>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  missing=$($PY - <<'PY'
import importlib.util
need = {"albumentations": "albumentations", "cv2": "opencv", "sklearn": "scikit_learn", "typer": "typer", "yaml": "PyYAML",
        "pandas": "pandas", "pydantic": "pydantic", "rich": "rich", "matplotlib": "matplotlib", "safetensors": "safetensors",
        "pytest": "pytest"}
print(" ".join(w for m, w in need.items() if importlib.util.find_spec(m) is None))
PY
)
  if [ -n "$missing" ]; then
    echo "installing from .whl/: $missing"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec $PY bench/gpu_acceptance.py "$@"
