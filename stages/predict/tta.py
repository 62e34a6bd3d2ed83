"""Test-time augmentation: every view of a batch in one bigger batch, and the ways to merge them.

A view is a flip and/or an affine resampling (shift, zoom, crop) of the whole batch. `apply_views`
stacks all views of B images into one (V*B, C, H, W) tensor so the model runs once per batch, not once
per image per view. Views are named groups in params (`shift` is four views, `crops` five); `expand`
turns the group names into views.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

MERGES = ("mean_prob", "mean_logit", "geometric")


@dataclass(frozen=True)
class View:
    name: str
    hflip: bool = False
    vflip: bool = False
    zoom: float = 1.0  # > 1 shows the central 1/zoom of the image, < 1 shrinks it inside a border
    dx: float = 0.0  # shift of the content, as a fraction of the width (+: right)
    dy: float = 0.0  # shift of the content, as a fraction of the height (+: down)

    @property
    def geometric(self) -> bool:
        return self.zoom != 1.0 or self.dx != 0.0 or self.dy != 0.0


def expand(groups: list[str], shift: float, scale: float, crop: float) -> list[View]:
    """Group names (params.predict.tta) -> the views they stand for, in a fixed order."""
    views: list[View] = []
    for group in groups:
        if group == "identity":
            views.append(View("identity"))
        elif group == "hflip":
            views.append(View("hflip", hflip=True))
        elif group == "vflip":
            views.append(View("vflip", vflip=True))
        elif group == "shift":
            views += [View(f"shift{n}", dx=x * shift, dy=y * shift) for n, (x, y) in
                      zip(("+x", "-x", "+y", "-y"), ((1, 0), (-1, 0), (0, 1), (0, -1)))]
        elif group == "scale":
            views += [View("zoom_in", zoom=1 + scale), View("zoom_out", zoom=1 / (1 + scale))]
        elif group == "crops":
            # A crop keeping `crop` of the side, resized back: a zoom by 1/crop moved to a corner.
            off = (1 - crop) / 2
            views += [View(f"crop_{n}", zoom=1 / crop, dx=x * off, dy=y * off) for n, (x, y) in
                      zip(("tl", "tr", "bl", "br", "c"), ((1, 1), (-1, 1), (1, -1), (-1, -1), (0, 0)))]
        else:
            raise ValueError(f"unknown TTA view group {group!r}")
    return views


@lru_cache(maxsize=64)
def _theta(view: View, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A view's affine on the device, built once (per batch it would be a host->device copy each time)."""
    # affine_grid maps output coordinates (-1..1) to input ones: input = output / zoom - 2 * shift.
    return torch.tensor([[1 / view.zoom, 0, -2 * view.dx], [0, 1 / view.zoom, -2 * view.dy]], dtype=dtype, device=device)


def _resample(x: torch.Tensor, view: View) -> torch.Tensor:
    theta = _theta(view, x.dtype, x.device)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def apply_view(x: torch.Tensor, view: View) -> torch.Tensor:
    """One view of a (B, C, H, W) float batch."""
    if view.hflip:
        x = x.flip(3)
    if view.vflip:
        x = x.flip(2)
    return _resample(x, view) if view.geometric else x


def apply_views(x: torch.Tensor, views: list[View]) -> torch.Tensor:
    """All views of a batch as one batch, view-major: rows [v*B:(v+1)*B] are view v."""
    return torch.cat([apply_view(x, v) for v in views])


def merge(logits: np.ndarray | torch.Tensor, how: str, multi_label: bool = False) -> np.ndarray:
    """(V, N, K) logits of V views -> (N, K) probabilities.

    mean_prob averages the views' probabilities; mean_logit averages logits, then softmax; geometric
    takes the normalised geometric mean of the probabilities. The last two are the same number:
    mean_v log softmax(l_v) = mean_v l_v - mean_v logsumexp(l_v), and the second term is a per-image
    constant that the normalisation removes. Both names are kept because competitors ask for both.
    Multi-label: per tag, the mean sigmoid (mean_prob) or the sigmoid of the mean logit (mean_logit and
    geometric, equal again: the normalised geometric mean of p and 1 - p is sigmoid(mean logit)).
    """
    t = torch.as_tensor(logits, dtype=torch.float64)
    if multi_label:  # independent tags: the same merges per tag, of Bernoulli outputs (sigmoid)
        if how not in MERGES:
            raise ValueError(f"unknown TTA merge {how!r}; expected one of {', '.join(MERGES)}")
        return (t.sigmoid().mean(0) if how == "mean_prob" else t.mean(0).sigmoid()).numpy()
    if how == "mean_prob":
        out = t.softmax(-1).mean(0)
    elif how == "mean_logit":
        out = t.mean(0).softmax(-1)
    elif how == "geometric":
        out = t.log_softmax(-1).mean(0).softmax(-1)
    else:
        raise ValueError(f"unknown TTA merge {how!r}; expected one of {', '.join(MERGES)}")
    return out.numpy()
