"""Contact sheet: one row per duplicate cluster (largest first, then label conflicts), to look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.plots import plt, save_figure

PER_ROW = 8  # members shown per cluster


def contact_sheet(path: Path, clusters: pd.DataFrame, images, report: dict, top: int) -> None:
    rows = [("largest", c) for c in report["largest_clusters"][:top]]
    rows += [("conflict", c) for c in report["label_conflicts"][:top]]
    fig_rows = max(1, len(rows))
    fig, axes = plt.subplots(fig_rows, PER_ROW, figsize=(PER_ROW * 1.3, fig_rows * 1.5 + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if not rows:
        axes[0, 0].text(0, 0.5, "no duplicate clusters", fontsize=12)
    by_cluster = clusters.reset_index(drop=True).groupby("cluster").indices
    for r, (kind, info) in enumerate(rows):
        members = by_cluster[info["cluster"]][:PER_ROW]
        for k, i in enumerate(members):
            image = np.asarray(images[i])
            ax = axes[r, k]
            ax.imshow(image[:, :, 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=255)
            row = clusters.iloc[i]
            ax.set_title(f"{row.split[:2]} {row.label}".strip(), fontsize=7, color="red" if kind == "conflict" else "black")
        size = info.get("size", len(by_cluster[info["cluster"]]))
        axes[r, 0].text(-0.1, 0.5, f"{kind} #{info['cluster']}\nn={size} min={info['weakest_link']:.3f}",
                        transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=7)
    fig.suptitle("duplicate clusters (largest, then label conflicts in red); min = weakest link", fontsize=9)
    save_figure(fig, path, dpi=90)
