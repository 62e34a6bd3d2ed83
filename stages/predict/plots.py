"""predictions.png: what a person checks before submitting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.plots import plt, save_figure


def plot_predictions(path: Path, probs: np.ndarray, classes: list[str], train_labels: pd.Series, tta: pd.DataFrame,
                     chosen: tuple[str, str]) -> None:
    """Three panels: predicted class shares against the train shares (the 30 most frequent classes),
    confidence histogram, and the OOF accuracy of each TTA candidate measured (the chosen one in red)."""
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5))
    predicted = pd.Series(np.array(classes)[probs.argmax(1)]).value_counts(normalize=True)
    train = train_labels.value_counts(normalize=True)
    top = train.reindex(classes, fill_value=0).sort_values(ascending=False).index[:30]
    x = np.arange(len(top))
    axes[0].bar(x - 0.2, train.reindex(top, fill_value=0), 0.4, label="train")
    axes[0].bar(x + 0.2, predicted.reindex(top, fill_value=0), 0.4, label="test predicted")
    axes[0].set_xticks(x, top, rotation=90 if len(top) > 10 else 0)
    axes[0].set_title("class shares")
    axes[0].legend()
    axes[1].hist(probs.max(1), bins=20, range=(0, 1))
    axes[1].set_title(f"confidence (mean {probs.max(1).mean():.3f})")
    axes[1].set_xlabel("max probability")
    labels = tta.views + " / " + tta["merge"]
    picked = (tta.views == chosen[0]) & (tta["merge"] == chosen[1])
    axes[2].barh(np.arange(len(tta)), tta.accuracy, color=np.where(picked, "tab:red", "tab:blue"))
    axes[2].set_yticks(np.arange(len(tta)), labels, fontsize=7)
    lo = float(tta.accuracy.min())
    axes[2].set_xlim(max(0.0, lo - 0.02), min(1.0, float(tta.accuracy.max()) + 0.01))
    axes[2].set_title("TTA on out-of-fold images: accuracy")
    save_figure(fig, path, dpi=100)
