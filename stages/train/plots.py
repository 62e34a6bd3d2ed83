"""PNG plots of the train stage: per-fold curves and lr schedule, the OOF confusion matrix, the worst
OOF predictions. Epochs are shown 1-based, as a person counts them (metrics.csv keeps 0-based)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from pipeline.plots import plt, save_figure
from stages.train.schedule import lr_at

LABEL_CHARS = 10  # class names are cut to this on the axes


def best_epoch(history: pd.DataFrame, metric: str) -> int:
    """Row index of the best validation epoch (lowest log loss, highest of any other metric)."""
    column = history[f"val_{metric}"]
    return int(column.idxmin() if metric == "log_loss" else column.idxmax())


def curves(history: pd.DataFrame, metric: str, path) -> None:
    epochs = history.epoch + 1
    best = best_epoch(history, metric)
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    loss_ax.plot(epochs, history.train_loss, label="train loss")
    loss_ax.plot(epochs, history.val_loss, label="val loss")
    metric_ax.plot(epochs, history[f"val_{metric}"], label=f"val {metric}", color="C2")
    value = history[f"val_{metric}"][best]
    metric_ax.scatter([epochs[best]], [value], color="C3", zorder=3, label=f"best: epoch {epochs[best]}, {value:.4f}")
    for ax in (loss_ax, metric_ax):
        ax.axvline(epochs[best], color="C3", linestyle=":", linewidth=1)  # the epoch best.pt holds
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    save_figure(fig, path)


def lr_schedule(path, total: int, warmup: int, lr: float, p, steps_per_epoch: int) -> None:
    steps = np.arange(total)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(steps / steps_per_epoch, [lr_at(int(s), total, warmup, lr, p, steps_per_epoch) for s in steps])
    ax.set_xlabel("epoch"), ax.set_ylabel("lr"), ax.set_title(f"{p.warmup} warmup, {p.schedule}")
    save_figure(fig, path)


def confusion(y: np.ndarray, pred: np.ndarray, classes: list[str], path) -> None:
    """Row-normalised colours with a colour bar; each cell with few enough classes shows its count."""
    counts = confusion_matrix(y, pred, labels=range(len(classes)))
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = min(12, 3 + 0.45 * len(classes))
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if len(classes) <= 30:
        names = [str(c)[:LABEL_CHARS] for c in classes]
        ax.set_xticks(range(len(classes)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), names, fontsize=7)
    if len(classes) <= 20:  # beyond that the numbers no longer fit their cells
        for (row, col), count in np.ndenumerate(counts):
            if count:
                ax.text(col, row, str(count), ha="center", va="center", fontsize=7,
                        color="white" if shares[row, col] > 0.5 else "black")
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    ax.set_title(f"OOF confusion: counts, colour = row share ({len(y)} images)")
    save_figure(fig, path)


def top_losses(worst: pd.DataFrame, images, path, columns: int = 6) -> None:
    """The worst OOF predictions, one tile each: `worst` has id, label, predicted, probability (of the
    prediction), true_probability, loss and copies (other train images in its dedup cluster; marked in
    red: a copy with another label is a label conflict)."""
    rows = max(1, -(-len(worst) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.0, rows * 2.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (_, row), image in zip(axes.ravel(), worst.iterrows(), images):
        gray = image.shape[2] == 1
        ax.imshow(image[:, :, 0] if gray else image, cmap="gray" if gray else None, vmin=0, vmax=255)
        copies = f"\n+{row.copies} in its cluster" if row.copies else ""
        ax.set_title(f"{str(row.id)[:16]}\ntrue {str(row.label)[:LABEL_CHARS]} ({row.true_probability:.2f})\n"
                     f"pred {str(row.predicted)[:LABEL_CHARS]} ({row.probability:.2f}){copies}",
                     fontsize=7, color="red" if row.copies else "black")
    if worst.empty:
        axes[0, 0].text(0, 0.5, "no OOF predictions", fontsize=12)
    fig.suptitle("worst out-of-fold predictions (highest loss first; red: has copies in its dedup cluster)", fontsize=9)
    save_figure(fig, path)
