"""The built-in example: scikit-learn's handwritten digits written out as a small Kaggle competition.

1,797 8x8 grayscale digits (bundled with scikit-learn, no download) become PNGs in the Kaggle layout:
train/ + train.csv, test/ + sample_submission.csv, with an 80/20 split fixed by a seed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.artifacts import write_json

SEED = 0
TEST_FRACTION = 0.2


def materialise_digits(dest: Path) -> Path:
    """Write the example competition folder once; later calls return it as it is."""
    dest = Path(dest)
    if (dest / "DONE").is_file():
        return dest
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(SEED).permutation(len(images))
    n_test = int(round(len(images) * TEST_FRACTION))
    test_idx, train_idx = order[:n_test], order[n_test:]

    tmp = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for split in ("train", "test"):
        (tmp / split).mkdir(parents=True)
    rows = []
    for i in train_idx:
        cv2.imwrite(str(tmp / "train" / f"digit_{i:04d}.png"), images[i])
        rows.append({"id": f"digit_{i:04d}", "label": int(digits.target[i])})
    pd.DataFrame(rows).to_csv(tmp / "train.csv", index=False)
    for i in test_idx:
        cv2.imwrite(str(tmp / "test" / f"digit_{i:04d}.png"), images[i])
    pd.DataFrame({"id": [f"digit_{i:04d}" for i in test_idx], "label": 0}).to_csv(tmp / "sample_submission.csv", index=False)
    # Kept outside the fingerprinted data: the true test labels, for checking a submission's score.
    write_json(tmp / "SOLUTION.json", {f"digit_{i:04d}": int(digits.target[i]) for i in test_idx})
    (tmp / "DONE").write_text("complete\n")
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(dest)
    return dest
