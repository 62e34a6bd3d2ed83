"""Contact sheet: one row per duplicate cluster (largest first, then label conflicts), to look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.plots import plt, save_figure

PER_ROW = 8  # members shown per cluster


def strongest_links(members: np.ndarray, accepted: tuple | None) -> dict[int, tuple[int, float]]:
    """For each member shown, its strongest accepted link inside the row: (position of the other, score)."""
    if accepted is None:
        return {}
    i, j, score = accepted
    position = {int(m): k for k, m in enumerate(members)}
    best: dict[int, tuple[int, float]] = {}
    inside = np.isin(i, members) & np.isin(j, members)
    for a, b, sc in zip(i[inside].tolist(), j[inside].tolist(), score[inside].tolist()):
        for x, y in ((a, b), (b, a)):
            if sc > best.get(position[x], (-1, -1.0))[1]:
                best[position[x]] = (position[y], sc)
    return best


def contact_sheet(path: Path, clusters: pd.DataFrame, images, report: dict, top: int, accepted: tuple | None = None) -> None:
    """One row per cluster; each image titled with its id, split and label, and under it its strongest
    accepted link in the row ("~#k 0.973": the copy score with member k), so a reader sees why the
    images were merged; the row label gives the cluster's weakest link."""
    rows = [("largest", c) for c in report["largest_clusters"][:top]]
    rows += [("conflict", c) for c in report["label_conflicts"][:top]]
    fig_rows = max(1, len(rows))
    fig, axes = plt.subplots(fig_rows, PER_ROW, figsize=(PER_ROW * 1.5, fig_rows * 1.8 + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if not rows:
        axes[0, 0].text(0, 0.5, "no duplicate clusters", fontsize=12)
    by_cluster = clusters.reset_index(drop=True).groupby("cluster").indices
    for r, (kind, info) in enumerate(rows):
        members = by_cluster[info["cluster"]][:PER_ROW]
        links = strongest_links(members, accepted)
        for k, i in enumerate(members):
            image = np.asarray(images[i])
            ax = axes[r, k]
            ax.imshow(image[:, :, 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=255)
            row = clusters.iloc[i]
            ax.set_title(f"#{k} {str(row.id)[:14]}\n{row.split[:2]} {row.label}".strip(), fontsize=6,
                         color="red" if kind == "conflict" else "black")
            if k in links:
                ax.text(0.5, -0.08, f"~#{links[k][0]} {links[k][1]:.3f}", transform=ax.transAxes, ha="center", va="top", fontsize=6)
        size = info.get("size", len(by_cluster[info["cluster"]]))
        axes[r, 0].text(-0.1, 0.5, f"{kind} #{info['cluster']}\nn={size} min={info['weakest_link']:.3f}",
                        transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=7)
    fig.suptitle("duplicate clusters (largest, then label conflicts in red); under each image: its strongest link "
                 "(~#member copy score); min = the cluster's weakest link", fontsize=8)
    save_figure(fig, path, dpi=90)
