"""Figures as PNG files (matplotlib, headless). Functions take arrays and a path, return the path."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxvae.training import files  # noqa: E402


def save_figure(fig, path, dpi: int = 100) -> str:
    """Writes ``fig`` to ``path`` atomically and closes it; returns the path.

    The figure is rendered in memory (in the format of the path's suffix, PNG by default) and
    written with ``files.write_atomic``: a reader, or a crash midway, never sees a half-written
    image, and a failed render leaves an existing file as it was.
    """
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=Path(path).suffix.lstrip(".").lower() or "png", dpi=dpi,
                    bbox_inches="tight")
    finally:
        plt.close(fig)
    files.write_atomic(path, buffer.getvalue())
    return str(path)


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
    return save_figure(fig, path)


def save_image_panels(path, panels: Sequence[tuple[np.ndarray, str]], ncols: int, title: str
                      ) -> str | None:
    """Saves grids of images side by side, one titled panel per ``(examples, title)``.

    Returns None if the examples are not images.
    """
    grids = []
    for x, _ in panels:
        images = as_images(x)
        if images is None:
            return None
        grids.append(np.clip(tile(images, ncols), 0.0, 1.0))
    nrows = math.ceil(len(as_images(panels[0][0])) / ncols)
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(len(panels) * max(ncols * 0.6 + 0.4, 3.0),
                                      nrows * 0.6 + 1.1))
    for ax, grid, (_, panel_title) in zip(axes[0], grids, panels):
        ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0.0, vmax=1.0)
        ax.set_title(panel_title, fontsize=9)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()  # room for the figure title above the panels' titles
    return save_figure(fig, path)


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
    return save_figure(fig, path)


# evaluation and latent-space figures




def save_image_rows(path, rows: Sequence[np.ndarray], title: str,
                    row_labels: Sequence[str] | None = None, xlabel: str | None = None
                    ) -> str | None:
    """Saves rows of examples (each (C, ...) with the same C) as one labelled grid of images.

    Used for interpolations (a row per pair, a column per step) and latent traversals (a row
    per latent dimension). Returns None if the examples are not images.
    """
    images = [as_images(r) for r in rows]
    if any(i is None for i in images):
        return None
    ncols = images[0].shape[0]
    h, w = images[0].shape[1:3]
    grid = np.clip(tile(np.concatenate(images), ncols), 0.0, 1.0)
    fig, ax = plt.subplots(figsize=(ncols * 0.6 + 1.2, len(rows) * 0.6 + 0.8))
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0.0, vmax=1.0)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([r * (h + 1) + h / 2 for r in range(len(rows))] if row_labels else [])
    if row_labels:
        ax.set_yticklabels(row_labels, fontsize=7)
    if xlabel:
        ax.set_xlabel(xlabel)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return save_figure(fig, path)


def save_manifold(path, images_RxC: np.ndarray, grid_N: np.ndarray, title: str
                  ) -> str | None:
    """A 2-D latent manifold: images_RxC is (N, N, ...), decoded on the grid (z0, z1) of grid_N.

    Row r holds z1 = grid_N[N - 1 - r] (increasing upwards); column c holds z0 = grid_N[c]. The
    ticks name the z values of their tiles (the grid need not be evenly spaced).
    """
    rows, cols = images_RxC.shape[:2]
    images = as_images(images_RxC.reshape((rows * cols,) + images_RxC.shape[2:]))
    if images is None:
        return None
    h, w = images.shape[1:3]
    grid = np.clip(tile(images, cols), 0.0, 1.0)
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0.0, vmax=1.0)
    every = max(1, cols // 5)
    ticks = list(range(0, cols, every))
    ax.set_xticks([c * (w + 1) + w / 2 for c in ticks])
    ax.set_xticklabels([f"{grid_N[c]:.2f}" for c in ticks])
    ax.set_yticks([r * (h + 1) + h / 2 for r in ticks])
    ax.set_yticklabels([f"{grid_N[rows - 1 - r]:.2f}" for r in ticks])
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title(title)
    return save_figure(fig, path)


def save_latent_scatter(path, points_Nx2: np.ndarray, labels: np.ndarray | None, title: str,
                        xlabel: str, ylabel: str) -> str:
    """A scatter plot of 2-D latent points, coloured by their integer label (a legend entry each)."""
    points_Nx2 = np.asarray(points_Nx2)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    if labels is None or np.all(np.asarray(labels) < 0):
        ax.scatter(points_Nx2[:, 0], points_Nx2[:, 1], s=6, alpha=0.7)
    else:
        labels = np.asarray(labels)
        cmap = plt.get_cmap("tab10" if len(np.unique(labels)) <= 10 else "tab20")
        for i, label in enumerate(np.unique(labels)):
            mask = labels == label
            ax.scatter(points_Nx2[mask, 0], points_Nx2[mask, 1], s=6, alpha=0.7,
                       color=cmap(i % cmap.N), label=str(label))
        ax.legend(title="label", markerscale=2, fontsize=7, loc="best")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return save_figure(fig, path)


def save_loss_panels(path, history: Sequence[dict], best_epoch: int | None = None,
                     title: str = "Training curves") -> str:
    """Three panels, loss, reconstruction and KL per epoch, each with its train/val/test lines."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    epochs = [r["epoch"] for r in history]
    for ax, metric, label in zip(axes, ("loss", "recon", "kl"),
                                 ("loss (negative ELBO)", "reconstruction -log p(x|z)",
                                  "KL(q(z|x) || p(z))")):
        for split in ("train", "val", "test"):
            key = f"{split}_{metric}"
            if history and all(key in r for r in history):
                ax.plot(epochs, [r[key] for r in history], marker="o", markersize=3,
                        label=split)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1,
                       label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per example")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, y=1.03)
    return save_figure(fig, path)


def save_score_histogram(path, normal: np.ndarray, anomalous: np.ndarray, title: str,
                         xlabel: str = "anomaly score (nats)", bins: int = 40) -> str:
    """Overlaid, density-normalized histograms of the scores of normal and anomalous examples."""
    normal, anomalous = np.asarray(normal), np.asarray(anomalous)
    edges = np.histogram_bin_edges(np.concatenate([normal, anomalous]), bins=bins)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.hist(normal, bins=edges, density=True, alpha=0.6, label=f"normal (n={len(normal)})")
    ax.hist(anomalous, bins=edges, density=True, alpha=0.6,
            label=f"anomalous (n={len(anomalous)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)
