"""Figures as PNG files (matplotlib, headless). Functions take arrays and a path, return the path."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def as_images(x: np.ndarray) -> np.ndarray | None:
    """(N, H*W) with a square H*W, (N, H, W) or (N, H, W, C) -> (N, H, W[, C]); else None."""
    x = np.asarray(x)
    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        return x.reshape(-1, side, side) if side * side == x.shape[1] else None
    if x.ndim == 3 or (x.ndim == 4 and x.shape[-1] in (1, 3)):
        return x[..., 0] if x.ndim == 4 and x.shape[-1] == 1 else x
    return None


def tile(images: np.ndarray, ncols: int) -> np.ndarray:
    """Tiles (N, H, W[, C]) images into one (rows*(H+1)-1, ncols*(W+1)-1[, C]) picture."""
    n, h, w = images.shape[:3]
    nrows = math.ceil(n / ncols)
    out = np.ones((nrows * (h + 1) - 1, ncols * (w + 1) - 1) + images.shape[3:], images.dtype)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = img
    return out


def save_image_grid(path, x: np.ndarray, ncols: int, title: str) -> str | None:
    """Saves examples as a grid of grey (or RGB) images in [0, 1]; None if they are not images."""
    images = as_images(x)
    if images is None:
        return None
    grid = np.clip(tile(images, ncols), 0.0, 1.0)
    fig, ax = plt.subplots(figsize=(ncols * 0.6 + 0.4, math.ceil(len(images) / ncols) * 0.6 + 0.6))
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0.0, vmax=1.0)
    ax.set_title(title)
    ax.axis("off")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def save_reconstructions(path, x: np.ndarray, x_recon: np.ndarray, title: str) -> str | None:
    """Inputs (top row) above their reconstructions (bottom row)."""
    return save_image_grid(path, np.concatenate([x, x_recon]), len(x), title)


def save_loss_curves(path, history: Sequence[dict],
                     series: Sequence[str] = ("train_loss", "test_loss"), title: str = "Loss"
                     ) -> str:
    """One line per named series of the per-epoch history, against the epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in history]
    for name in series:
        if all(name in r for r in history):
            ax.plot(epochs, [r[name] for r in history], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per example")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return str(path)
