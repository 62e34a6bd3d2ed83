"""PNG plots: per-fold curves and the OOF confusion matrix."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

from pipeline.artifacts import atomic_path  # noqa: E402


def _save(fig, path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def curves(history: pd.DataFrame, metric: str, path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(history.epoch, history.train_loss, label="train loss")
    a.plot(history.epoch, history.val_loss, label="val loss")
    a.set_xlabel("epoch"), a.legend()
    b.plot(history.epoch, history[f"val_{metric}"], label=f"val {metric}", color="C2")
    b.set_xlabel("epoch"), b.legend()
    _save(fig, path)


def confusion(y: np.ndarray, pred: np.ndarray, classes: list[str], path) -> None:
    matrix = confusion_matrix(y, pred, labels=range(len(classes)), normalize="true")
    side = min(12, 2 + 0.4 * len(classes))
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 30:
        ax.set_xticks(range(len(classes)), [str(c)[:10] for c in classes], rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), [str(c)[:10] for c in classes], fontsize=7)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title("OOF confusion (row-normalised)")
    _save(fig, path)
