"""The one place that sets matplotlib's backend and saves a figure, so every stage's PNG is written the
same way: headless (Agg, no display needed on a cluster node), tight layout, atomically (a reader never
sees a half-written PNG), and the figure closed so long runs do not accumulate them."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported anywhere: plots are files, never windows
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.artifacts import atomic_path  # noqa: E402

__all__ = ["plt", "save_figure"]


def save_figure(fig, path: Path, dpi: int = 80) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)
