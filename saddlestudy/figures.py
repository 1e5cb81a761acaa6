"""Figures, written deterministically (same inputs, same bytes) as PNG and optionally PDF."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed; figures go to files

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Fixed metadata so that the same data give byte-identical files (no dates, no versions).
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None}}


def save_figure(
    fig, stem: str | Path, formats: Sequence[str] = ("png",), dpi: int = 150
) -> list[Path]:
    """Saves ``fig`` as ``stem.<fmt>`` for each format; returns the paths written."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        if fmt not in _METADATA:
            raise ValueError(f"unknown figure format {fmt!r}; choose from {sorted(_METADATA)}")
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, format=fmt, dpi=dpi, metadata=_METADATA[fmt])
        paths.append(path)
    plt.close(fig)
    return paths


def loss_surface_figure(
    w1: np.ndarray,
    w2: np.ndarray,
    loss_grid: np.ndarray,
    *,
    saddles: Sequence[tuple[float, float]] = (),
    minima_curves: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    escape: tuple[tuple[float, float], tuple[float, float]] | None = None,
    title: str = "",
    footer: str = "",
):
    """Contours of a loss over two parameters, with saddles, curves of minima and an escape arrow.

    Args:
      w1, w2: 1-D grids of the two parameters.
      loss_grid: losses, shape (len(w2), len(w1)) (rows follow w2).
      saddles: (w1, w2) points to mark as saddle points.
      minima_curves: (w1 values, w2 values) polylines of minima.
      escape: ((w1, w2) start, (d1, d2) direction) for an arrow along negative curvature.
      title, footer: texts; the footer names where the figure came from.
    """
    fig, ax = plt.subplots(figsize=(5.6, 5.2), layout="constrained")
    # Levels evenly spaced in sqrt(L - min): detail near the minima, the whole range covered.
    lo, hi = float(np.min(loss_grid)), float(np.max(loss_grid))
    levels = lo + np.linspace(0.0, np.sqrt(hi - lo), 26) ** 2
    norm = matplotlib.colors.PowerNorm(gamma=0.5, vmin=lo, vmax=hi)
    filled = ax.contourf(w1, w2, loss_grid, levels=levels, cmap="viridis", norm=norm)
    ax.contour(w1, w2, loss_grid, levels=levels, colors="k", linewidths=0.3, alpha=0.4)
    fig.colorbar(filled, ax=ax, label="training loss L (dimensionless)")
    for i, (c1, c2) in enumerate(minima_curves):
        ax.plot(c1, c2, color="white", lw=2.0, ls="--", label="minima" if i == 0 else None)
    for i, (s1, s2) in enumerate(saddles):
        ax.plot(
            s1,
            s2,
            marker="X",
            ms=12,
            color="red",
            mec="white",
            ls="none",
            label="saddle point" if i == 0 else None,
        )
    if escape is not None:
        (s1, s2), (d1, d2) = escape
        ax.annotate(
            "",
            xy=(s1 + d1, s2 + d2),
            xytext=(s1, s2),
            arrowprops=dict(arrowstyle="-|>", color="orange", lw=2.0),
        )
        ax.plot([], [], color="orange", lw=2.0, label="escape along eigenvector of λ<0")
    ax.set_xlim(w1.min(), w1.max())
    ax.set_ylim(w2.min(), w2.max())
    ax.set_xlabel("$w_1$ (weight, dimensionless)")
    ax.set_ylabel("$w_2$ (weight, dimensionless)")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.85)
    if footer:
        fig.text(0.01, 0.005, footer, ha="left", va="bottom", fontsize=6, color="0.4")
    return fig
