"""Figures, written deterministically (same inputs, same bytes) as PNG and optionally PDF."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed; figures go to files

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from saddlestudy import analysis, census, rows  # noqa: E402
from saddlestudy.config import (  # noqa: E402
    DEFAULT_FIGURE_CUTOFFS,
    DEFAULT_FIGURES,
    FIGURE_REFERENCES,
    FIGURES,
)
from saddlestudy.store import StoreCorruptError  # noqa: E402

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
        _bottom_note(fig, footer)
    return fig


# -- figures of a study ----------------------------------------------------------------------
_STATUS_STYLE = {
    "converged": dict(marker="o", alpha=0.85),
    "gradient_flat": dict(marker="o", facecolors="none", alpha=0.9),
    "not_converged": dict(marker="x", alpha=0.35),
}


def _bottom_note(fig, text: str) -> None:
    """Small grey text under every axis: as the figure's ``supxlabel``, the constrained layout
    keeps room for it (a plain ``fig.text`` there overlapped the bottom-left x-axis label)."""
    fig.supxlabel(text, x=0.01, ha="left", fontsize=6, color="0.4")


def _footer(fig, df, note: str = "") -> None:
    study = ", ".join(sorted(set(df["study"]))) if "study" in df else "?"
    hashes = ", ".join(sorted(set(df["config_hash"]))) if "config_hash" in df else "?"
    _bottom_note(fig, f"study {study} · config {hashes}" + (f" · {note}" if note else ""))


def _status_legend(ax, colors=None) -> None:
    ax.scatter([], [], marker="o", color="0.3", label="converged")
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="0.3", label="gradient-flat")
    ax.scatter([], [], marker="x", color="0.3", label="not converged")
    for P, color in (colors or {}).items():
        ax.scatter([], [], marker="o", color=color, label=f"P = {P}")
    ax.legend(fontsize=7, loc="lower right", ncols=2 if colors and len(colors) > 4 else 1)


def _param_colors(values):
    values = sorted(set(values))
    cmap = plt.get_cmap("viridis")
    return {v: cmap(i / max(len(values) - 1, 1)) for i, v in enumerate(values)}


def _scatter_by_status(ax, x, y, status, num_params, colors, statuses=tuple(_STATUS_STYLE)):
    for name in statuses:
        sel = (status == name).to_numpy()
        kw = dict(_STATUS_STYLE[name])
        c = [colors[P] for P in num_params[sel]]
        kw["edgecolors" if kw.get("facecolors") == "none" else "c"] = c
        ax.scatter(x[sel], y[sel], s=18, **kw)


def _intervals(ax, loss, lo, hi, index, num_params, colors, sel) -> None:
    """Points without an exact count: a vertical bar from the lower to the upper bound of
    their index (where both are known)."""
    bars = sel & ~np.isfinite(index) & np.isfinite(lo) & np.isfinite(hi)
    if bars.any():
        c = [colors[P] for P in num_params[bars]]
        ax.vlines(loss[bars], lo[bars], hi[bars], colors=c, lw=1.0, alpha=0.6)
        ax.scatter(loss[bars], lo[bars], marker="_", s=30, c=c)
        ax.scatter(loss[bars], hi[bars], marker="_", s=30, c=c)


def _fit_lines(ax, loss, index) -> None:

    if len(loss) < 3:
        return
    fit = analysis.fit_index_vs_loss(loss, index)
    xs = np.linspace(loss.min(), loss.max(), 200)
    ax.plot(xs, fit["slope"] * xs + fit["intercept"], "k--", lw=1,
            label=f"linear fit (RSS {fit['rss_linear']:.2g})")  # fmt: skip
    if np.isfinite(fit["alpha0"]):
        eps_c = fit["eps_c"]
        law = np.where(xs > eps_c, fit["alpha0"] * np.abs((xs - eps_c) / eps_c) ** 1.5, 0.0)
        ax.plot(xs, law, "r-", lw=1, label=f"α₀|(ε−ε_c)/ε_c|^1.5 (RSS {fit['rss_pb']:.2g})")


def index_vs_loss_figure(
    df,
    *,
    zero_tol: float = analysis.DEFAULT_ZERO_TOL,
    cutoffs: Sequence[float] | None = None,
    reference=None,
):
    """Index vs loss, coloured by P; converged, gradient-flat and other points marked apart.

    With ``cutoffs``, one panel per squared-gradient-norm cutoff: the points with
    ``grad_norm_sq < cutoff`` whatever the finder's own tolerance, as in Frye et al.'s
    strict (1e-10) vs loose comparison. Both panels show fits of the 3/2 law and a line.
    ``reference``: exact critical points (columns ``loss``, ``index``; e.g.
    :func:`analysis.linear_autoencoder_reference`), drawn behind as grey plus signs.
    A point whose count is not exact is drawn as its interval (lower to upper bound over P),
    and the fits use exact counts only.
    """

    panels = list(cutoffs) if cutoffs else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.2, 4.2),
                             squeeze=False, layout="constrained", sharey=True)  # fmt: skip
    colors = _param_colors(df["num_params"])
    P = df["num_params"].to_numpy(float)
    index = (df[analysis.tol_column("num_negative", zero_tol)] / df["num_params"]).to_numpy()
    lo, hi = (b / P for b in analysis.negative_bounds(df, zero_tol))
    loss = df["loss"].to_numpy(float)
    for ax, cutoff in zip(axes[0], panels):
        if reference is not None:
            exact = reference.drop_duplicates(["loss", "index"])
            ax.scatter(exact["loss"], exact["index"], marker="+", s=18, color="0.75", lw=0.8,
                       zorder=0, label="exact critical points")  # fmt: skip
        if cutoff is None:
            sel = (df["status"] == "converged").to_numpy()
            _scatter_by_status(ax, loss, index, df["status"], df["num_params"], colors)
            ax.set_title("all points; fits on converged ones", fontsize=10)
        else:
            sel = (df["grad_norm_sq"] < cutoff).to_numpy()
            status = df["status"].where(~sel, "converged")  # passed this cutoff: drawn filled
            _scatter_by_status(ax, loss[sel], index[sel], status[sel], df["num_params"][sel],
                               colors, ("converged",))  # fmt: skip
            ax.set_title(f"‖∇L‖² < {cutoff:g}: {int(sel.sum())} of {len(df)} points", fontsize=10)
        shown = np.ones(len(df), bool) if cutoff is None else sel
        _intervals(ax, loss, lo, hi, index, df["num_params"], colors, shown)
        exact = sel & np.isfinite(index)
        _fit_lines(ax, loss[exact], index[exact])
        ax.set_xlabel("training loss ε at the point")
        if ax.get_legend_handles_labels()[0]:  # an empty panel gets no legend
            ax.legend(fontsize=7, loc="upper left")
    axes[0, 0].set_ylabel(f"index α (fraction of eigenvalues < −{zero_tol:g})")
    line = plt.Line2D
    handles = [
        line([], [], ls="none", marker="o", color="0.3", label="converged"),
        line([], [], ls="none", marker="o", mfc="none", color="0.3", label="gradient-flat"),
        line([], [], ls="none", marker="x", color="0.3", label="not converged"),
    ]
    if not np.isfinite(index).all():
        handles.append(line([], [], marker="_", color="0.3", label="bounds (count not exact)"))
    handles += [
        line([], [], ls="none", marker="o", color=c, label=f"P = {P}") for P, c in colors.items()
    ]
    fig.legend(handles=handles, loc="outside right center", fontsize=7)
    _footer(fig, df)
    return fig


def scaling_figure(df, *, zero_tol: float = analysis.DEFAULT_ZERO_TOL):
    """Against P, per optimizer and depth: the fraction of starts that converged to a
    critical point and the fraction of minima among those (95% Clopper–Pearson intervals,
    :func:`analysis.proportion_ci`), and their median index (95% bootstrap interval; the
    number of points it is over is written beside medians over fewer than 10)."""

    fig, (conv_ax, left, right) = plt.subplots(1, 3, figsize=(13.0, 4.0), layout="constrained")
    colors = dict(zip(sorted(set(df["optimizer"])), plt.get_cmap("tab10").colors))
    styles = ["-", "--", ":", "-."]
    depths = sorted(set(df["depth"]))
    undetermined = False
    for (opt, depth), group in df.groupby(["optimizer", "depth"], sort=True):
        color, ls = colors[opt], styles[depths.index(depth) % len(styles)]
        label = f"{opt}, depth {depth}" if len(depths) > 1 else opt
        frac = analysis.fraction_minima(group, by=["num_params"], zero_tol=zero_tol)
        idx = analysis.index_summary(group, by=["num_params"], zero_tol=zero_tol)
        conv = pd.DataFrame({"num_params": frac["num_params"]})
        cis = [analysis.proportion_ci(int((g["status"] == "converged").sum()), len(g))
               for _, g in group.groupby("num_params", sort=True)]  # fmt: skip
        conv["fraction"], conv["ci_low"], conv["ci_high"] = np.array(cis).T
        panels = ((conv_ax, conv, "fraction"), (left, frac, "fraction_minima"),
                  (right, idx, "median_index"))  # fmt: skip
        for ax, table, col in panels:
            y = table[col].to_numpy(float)
            err = np.vstack([y - table["ci_low"], table["ci_high"] - y])
            ax.errorbar(table["num_params"], y, yerr=np.nan_to_num(err), marker="o", capsize=3,
                        color=color, ls=ls, label=label)  # fmt: skip
        for _, row in idx[idx["num_exact"].between(1, 9)].iterrows():  # a median over few
            right.annotate(
                f"n={int(row['num_exact'])}",
                (row["num_params"], row["median_index"]),
                fontsize=5,
                color=color,
                xytext=(2, 2),
                textcoords="offset points",
            )
        if (frac["num_undetermined"] > 0).any():  # the most minima the bounds allow
            undetermined = True
            left.plot(frac["num_params"], frac["fraction_minima"] + frac["fraction_undetermined"],
                      marker="^", color=color, ls=":", alpha=0.7)  # fmt: skip
    for ax in (conv_ax, left, right):
        ax.set_xscale("log")
        ax.set_xlabel("number of parameters P")
    conv_ax.set_ylabel("fraction of starts that converged\n(‖∇L‖² below the finder's tolerance)")
    conv_ax.set_ylim(-0.05, 1.05)
    left.set_ylabel(
        f"fraction of minima among converged points\n(certified: no eigenvalue < −{zero_tol:g})"
    )
    left.set_ylim(-0.05, 1.05)
    if undetermined:
        left.set_title("dotted: with the undetermined points counted as minima", fontsize=8)
    right.set_ylabel("median index α of converged points\n(exact counts only; n where < 10)")
    conv_ax.legend(fontsize=8, title="optimizer", title_fontsize=8)
    _footer(fig, df)
    return fig


def minimum_ratio_figure(df, *, zero_tol: float = analysis.DEFAULT_ZERO_TOL):
    """Minimum ratio vs loss per point (the lecture's plot), by status and P."""

    table = analysis.minimum_ratio_vs_loss(df, zero_tol=zero_tol)
    fig, ax = plt.subplots(figsize=(5.5, 4.2), layout="constrained")
    missing = int(table["minimum_ratio"].isna().sum())
    if missing:  # a ratio is drawn only where the positive count is exact
        ax.set_title(f"{missing} of {len(table)} points without an exact count: not drawn",
                     fontsize=9)  # fmt: skip
    colors = _param_colors(table["num_params"])
    _scatter_by_status(ax, table["loss"].to_numpy(), table["minimum_ratio"].to_numpy(),
                       table["status"], table["num_params"], colors)  # fmt: skip
    ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
    ax.set_xlabel("training loss at the point")
    ax.set_ylabel(f"minimum ratio (fraction of eigenvalues > {zero_tol:g})")
    ax.set_ylim(0, 1.05)
    _status_legend(ax, colors)
    _footer(fig, df)
    return fig


def spectral_density_figure(
    df,
    spectra: dict[str, np.ndarray],
    densities: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    *,
    rel_sigma: float = 0.005,
):
    """Smoothed Hessian spectral densities at the lowest-loss converged point of each P.

    Without converged points (e.g. finder ``"none"``), at the lowest-loss end of training.
    ``spectra``: row_id -> eigenvalues, drawn only where they are all P of them (never Ritz
    values as if they were the spectrum), Gaussian-smoothed with width ``rel_sigma`` times the
    range of the eigenvalues shown. ``densities``: row_id -> (grid, density), SLQ densities
    (quadrature weights applied; each integrates to 1), drawn as stored, dashed, for the P
    without all eigenvalues.
    """

    densities = densities or {}
    fig, ax = plt.subplots(figsize=(6.0, 4.0), layout="constrained")
    P_of = dict(zip(df["row_id"], df["num_params"]))
    full = {r: e for r, e in spectra.items() if np.ndim(e) == 1 and e.size == P_of.get(r, -1)}
    stored = df["row_id"].isin(list(full) + list(densities))
    conv = df[(df["status"] == "converged") & stored]
    if conv.empty:
        conv = df[(df["start_kind"] == "end") & stored]
        ax.set_title("no converged points: where training ended", fontsize=9)
    colors = _param_colors(conv["num_params"]) if len(conv) else {}
    # one curve per P (its lowest-loss point, all eigenvalues before an SLQ density); the x
    # range spans the curves drawn only
    conv = conv.assign(_slq=~conv["row_id"].isin(list(full)))
    drawn = conv.sort_values(["_slq", "loss", "row_id"]).groupby("num_params", sort=True).head(1)
    eig = [full[r] for r in drawn["row_id"] if r in full]
    grids = [densities[r][0] for r in drawn["row_id"] if r not in full]
    lo = min([float(e.min()) for e in eig] + [float(g.min()) for g in grids], default=-1.0)
    hi = max([float(e.max()) for e in eig] + [float(g.max()) for g in grids], default=1.0)
    sigma = rel_sigma * max(hi - lo, 1e-12)
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, 2000)
    top = 0.0
    for _, best in drawn.sort_values("num_params").iterrows():
        P, row_id = best["num_params"], best["row_id"]
        if row_id in full:
            x, density = grid, analysis.spectral_density(full[row_id], grid, sigma)
            ls, how = "-", ""
        else:
            (x, density), ls, how = densities[row_id], "--", ", SLQ"
        ax.plot(x, density, color=colors[P], lw=1.2, ls=ls,
                label=f"P = {P}{how} (loss {best['loss']:.3g})")  # fmt: skip
        top = max(top, float(np.max(density)))
    ax.set_yscale("log")
    ax.set_ylim(1e-4 * max(top, 1e-12), 2 * max(top, 1e-12))
    ax.set_xlabel("Hessian eigenvalue λ")
    ax.set_ylabel(f"density (Gaussian smoothing σ = {sigma:.2g})")
    left_out = sorted(set(df["num_params"]) - set(drawn["num_params"]))
    note = "no full spectrum or density stored: P = " + ", ".join(map(str, left_out))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    _footer(fig, df, note if left_out else "")
    return fig


DEFAULT_CUTOFFS = tuple(DEFAULT_FIGURE_CUTOFFS)  # studies run before [figures] existed


class StudyConfigError(ValueError):
    """A study directory's config.json cannot be read."""


def _secondary_p_axis(ax, nc: float) -> None:
    """A top axis P / (N x outputs) and a dotted line where P crosses N x outputs."""
    if not np.isfinite(nc):
        return
    ax.axvline(nc, color="0.5", ls=":", lw=1)
    top = ax.secondary_xaxis("top", functions=(lambda p: p / nc, lambda r: r * nc))
    top.set_xlabel("P / (N × outputs)", fontsize=7)
    top.tick_params(labelsize=7)


def _band(ax, table, col, **style) -> None:
    y = table[col].to_numpy(float)
    lo, hi = table[f"{col}_lo"].to_numpy(float), table[f"{col}_hi"].to_numpy(float)
    err = np.vstack([y - lo, hi - y])
    ax.errorbar(table["num_params"], y, yerr=np.nan_to_num(np.clip(err, 0, None)), capsize=2,
                **style)  # fmt: skip


def _inexact_bounds(df, cutoff, tol, relative, depth, axes, **style) -> bool:
    """The kept end points of ``depth`` without an exact count, drawn as vertical bars from
    the lower to the upper bound of k (first axis) and of k / P (second); whether any."""
    kept = census.end_points(df, cutoff)
    kept = kept[kept["depth"] == depth]
    if kept.empty:
        return False
    exact = np.isfinite(kept[analysis.tol_column("num_negative", tol, relative=relative)]
                        .to_numpy(float))  # fmt: skip
    P = kept["num_params"].to_numpy(float)
    lo, hi = analysis.negative_bounds(kept, tol, relative=relative)
    lo, hi = np.where(np.isnan(lo), 0.0, lo), np.where(np.isnan(hi), P, hi)
    bars = ~exact
    if not bars.any():
        return False
    for ax, scale in zip(axes, (np.ones_like(P), P)):
        ax.vlines(
            P[bars],
            lo[bars] / scale[bars],
            hi[bars] / scale[bars],
            lw=0.8,
            alpha=0.5,
            color=style["color"],
            linestyles="dotted" if style["ls"] == "--" else "solid",
        )
        for bound in (lo, hi):
            ax.scatter(P[bars], bound[bars] / scale[bars], marker="_", s=25, alpha=0.6,
                       color=style["color"])  # fmt: skip
    return True


def census_figure(
    df,
    *,
    cutoff: float = census.DEFAULT_LOOSE_CUTOFF,
    zero_tol: float = analysis.DEFAULT_ZERO_TOL,
    relative_tol: float | None = None,
):
    """The headline census figure: against P, one series per depth (optimizers pooled;
    medians with 95% bootstrap intervals, fractions with 95% Clopper–Pearson intervals) over
    the end points with ``|grad L|^2 < cutoff``: the count k below -tau, the index k / P, the
    index among non-flat directions k / #{|lambda| > tau} (medians over the exact counts), the
    fraction of points with an eigenvalue below -tau, the loss and ``|grad L|^2``. The points
    whose count is not exact are left out of the medians and drawn apart, in the k and k / P
    panels, as vertical bars from their lower to their upper bound (``num_negative_lo``,
    ``_hi``); the k labels say how many points each median is over and how many inexact ones
    were left out. With ``relative_tol``, the count panels also show tau = relative_tol x
    lambda_max (dashed). A top axis gives P / (N x outputs); the dotted line marks
    interpolation."""
    nc = census.interpolation_threshold(df)
    fig, axes = plt.subplots(2, 3, figsize=(13.0, 7.5), layout="constrained")
    (k_ax, idx_ax, nonflat_ax), (frac_ax, loss_ax, grad_ax) = axes
    depths = sorted(set(df["depth"]))
    colors = dict(zip(depths, plt.get_cmap("tab10").colors))
    markers = "osD^v<>"
    inexact = False
    variants = [(zero_tol, False, "-", f"τ = {zero_tol:g}")]
    if relative_tol is not None:
        variants.append((relative_tol, True, "--", f"τ = {relative_tol:g}·λmax"))
    for tol, relative, ls, tau_label in variants:
        table = census.census_summary(df, cutoff=cutoff, zero_tol=tol, relative=relative)
        if table.empty:
            continue
        for i, depth in enumerate(depths):
            t = table[table["depth"] == depth]
            style = dict(color=colors[depth], ls=ls, marker=markers[i % len(markers)], ms=4)
            label = f"depth {depth}" + (f", {tau_label}" if len(variants) > 1 else "")
            _band(k_ax, t, "k", label=label, **style)
            _band(idx_ax, t, "index", **style)
            _band(nonflat_ax, t, "index_nonflat", **style)
            _band(frac_ax, t.rename(columns=lambda c: c.replace("fraction_saddle", "fs")), "fs",
                  **style)  # fmt: skip
            if not relative:
                _band(loss_ax, t, "loss", **style)
                _band(grad_ax, t, "grad_norm_sq", **style)
                for _, row in t.iterrows():
                    kept = f"{int(row['num_exact'])}/{int(row['num_ends'])}"
                    if row["num_inexact"]:
                        kept += f" (+{int(row['num_inexact'])} inexact)"
                    y = row["k"] if np.isfinite(row["k"]) else row["k_all_lo"]
                    k_ax.annotate(kept, (row["num_params"], y), fontsize=5, color="0.4",
                                  xytext=(2, 2), textcoords="offset points")  # fmt: skip
            inexact |= _inexact_bounds(df, cutoff, tol, relative, depth, (k_ax, idx_ax),
                                       color=colors[depth], ls=ls)  # fmt: skip
    for ax in axes.ravel():
        ax.set_xlabel("number of parameters P")
        if not any(
            np.isfinite(np.asarray(line.get_ydata(), float)).any() for line in ax.get_lines()
        ):  # nothing below the cutoff: said, no log axis
            ax.text(0.5, 0.5, f"no end point with ‖∇L‖² < {cutoff:g}", ha="center",
                    transform=ax.transAxes, fontsize=8)  # fmt: skip
            continue
        ax.set_xscale("log")
        _secondary_p_axis(ax, nc)
    k_ax.set_yscale("symlog", linthresh=1)
    k_ax.set_ylim(bottom=0)
    k_ax.set_ylabel("count k of eigenvalues < −τ\n(median; labels: its points / end points)")
    idx_ax.set_ylabel("index k / P")
    nonflat_ax.set_ylabel("index among non-flat directions\nk / #{|λ| > τ}")
    frac_ax.set_ylabel("fraction of end points\nwith an eigenvalue < −τ (saddles)")
    frac_ax.set_ylim(-0.05, 1.05)
    for ax in (loss_ax, grad_ax):  # log scale only over positive data (a loss can be 0)
        if any((np.asarray(line.get_ydata(), float) > 0).any() for line in ax.get_lines()):
            ax.set_yscale("log")
    loss_ax.set_ylabel("loss at the end point")
    grad_ax.set_ylabel("‖∇L‖² at the end point")
    if inexact:
        k_ax.plot([], [], color="0.3", marker="_", lw=0.8, label="bounds of an inexact count")
    k_ax.legend(fontsize=7)
    fig.suptitle(
        f"End points of training polished by the finder, ‖∇L‖² < {cutoff:g} (τ = {zero_tol:g}): "
        "medians of the exact counts with 95% bootstrap intervals (unreliable over < 10 points;\n"
        "the labels give the counts), fractions with 95% Clopper–Pearson intervals; counts not "
        "exact are left out of the medians and drawn as bars from their lower to upper bound",
        fontsize=9,
    )
    _footer(fig, df)
    return fig


def matched_loss_figure(
    df,
    *,
    cutoffs: Sequence[float] = DEFAULT_FIGURE_CUTOFFS,
    zero_tol: float = analysis.DEFAULT_ZERO_TOL,
):
    """The index at matched loss: one panel per selection (strict cutoff, gradient-flat,
    loose cutoff) of the finder's points from the first step below each loss level, index
    k / P against P (median, 95% interval), one colour per level, one marker per depth."""
    table = census.matched_loss_summary(df, cutoffs=cutoffs, zero_tol=zero_tol)
    selections = ("strict", "gradient_flat", "loose")
    titles = {"strict": f"‖∇L‖² < {min(cutoffs):g}", "gradient_flat": "gradient-flat",
              "loose": f"‖∇L‖² < {max(cutoffs):g}"}  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(13.0, 4.2), layout="constrained", sharey=True)
    nc = census.interpolation_threshold(df)
    levels = sorted(set(table["start_loss_level"])) if not table.empty else []
    colors = dict(zip(levels, plt.get_cmap("plasma")(np.linspace(0.1, 0.8, max(len(levels), 1)))))
    depths = sorted(set(df["depth"]))
    markers = "osD^v<>"
    for ax, selection in zip(axes, selections):
        for level in levels:
            for i, depth in enumerate(depths):
                t = table[(table["selection"] == selection) & (table["start_loss_level"] == level)
                          & (table["depth"] == depth) & (table["num_exact"] > 0)]  # fmt: skip
                if t.empty:
                    continue
                label = f"loss level {level:g}" if i == 0 else None
                _band(ax, t, "index", color=colors[level], marker=markers[i % len(markers)],
                      ms=4, ls="-", label=label)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("number of parameters P")
        ax.set_title(titles[selection], fontsize=9)
        _secondary_p_axis(ax, nc)
    for i, depth in enumerate(depths):
        axes[0].plot([], [], color="0.3", ls="none", marker=markers[i % len(markers)],
                     label=f"depth {depth}")  # fmt: skip
    axes[0].set_ylabel(f"index k / P (τ = {zero_tol:g}; median, 95% CI)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Index at matched loss: Newton-MR from the first step below each loss level",
                 fontsize=9)  # fmt: skip
    _footer(fig, df)
    return fig


_CLASS_COLORS = {"critical": "tab:green", "crossing": "tab:olive", "diverged": "tab:red",
                 "escaping": "tab:purple",
                 "gradient_flat": "tab:orange", "stalled": "tab:brown", "budget": "tab:gray",
                 "unclassified": "0.7"}  # fmt: skip


def point_class_figure(df, *, start_kind: str | None = "end"):
    """How the finder's runs ended against P (Frye et al.'s figure, over the census's sizes):
    one panel per depth, the fraction of starts in each class (``analysis.POINT_CLASSES``)
    with exact Clopper–Pearson 95 % intervals; ``start_kind`` selects the starts (None: all).
    Rows stored before the classes were can only be critical, diverged, gradient-flat or
    unclassified."""
    df = df if "point_class" in df else analysis.with_status(df)
    if start_kind is not None and "start_kind" in df:
        df = df[df["start_kind"] == start_kind]
    # Every class that occurs at any depth is drawn in every panel (0 where absent), so the
    # one legend names them all.
    kinds = [kind for kind in analysis.POINT_CLASSES if (df["point_class"] == kind).any()]
    depths = sorted(set(df["depth"]))
    fig, axes = plt.subplots(1, len(depths), figsize=(4.2 * len(depths), 3.8),
                             layout="constrained", sharey=True, squeeze=False)  # fmt: skip
    nc = census.interpolation_threshold(df)
    for ax, depth in zip(axes[0], depths):
        table = analysis.class_fractions(df[df["depth"] == depth], by=["num_params"])
        for kind in kinds:
            _band(ax, table, f"fraction_{kind}", color=_CLASS_COLORS[kind], marker="o", ms=3,
                  label=kind)  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(mticker.NullFormatter())  # labels collide under 2 decades
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("number of parameters P")
        ax.set_title(f"depth {depth}", fontsize=9)
        _secondary_p_axis(ax, nc)
    axes[0][0].set_ylabel("fraction of starts (95% Clopper–Pearson)")
    axes[0][0].legend(fontsize=7)
    which = "end points of training" if start_kind == "end" else "all starts"
    fig.suptitle(f"How the finder's runs from the {which} ended", fontsize=9)
    _footer(fig, df)
    return fig


@dataclasses.dataclass(frozen=True)
class FigureSettings:
    """A study's ``[figures]`` table (``config.FIGURES``, ``config.FIGURE_REFERENCES``), and
    ``note``: what was assumed where the study's config.json does not say."""

    cutoffs: tuple[float, ...] = DEFAULT_CUTOFFS
    draw: tuple[str, ...] = DEFAULT_FIGURES
    reference: str = "none"
    note: str = ""


def study_settings(root: str | Path) -> FigureSettings:
    """How to draw a study: the ``[figures]`` table of the ``config.json`` the sweep wrote
    beside the results. A study run before a key existed gets its default, and ``note`` says
    so (rerunning the sweep over the finished study rewrites config.json, recomputing
    nothing)."""
    path = Path(root) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        return FigureSettings(note=f"{path} not found: the default figures and cutoffs")
    except json.JSONDecodeError as err:
        raise StudyConfigError(f"{path} is not valid JSON: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise StudyConfigError(f"{path} is unreadable: {str(err).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise StudyConfigError(f"{path} is a JSON {type(cfg).__name__}, not a config object")
    table = cfg.get("figures", {})
    missing = [key for key in ("cutoffs", "draw", "reference") if key not in table]
    unknown = sorted(set(table.get("draw", ())) - set(FIGURES))
    if unknown or table.get("reference", "none") not in FIGURE_REFERENCES:
        raise StudyConfigError(f"{path}: [figures] names unknown figures or reference: {table}")
    return FigureSettings(
        cutoffs=tuple(float(c) for c in table.get("cutoffs", DEFAULT_CUTOFFS)),
        draw=tuple(table.get("draw", DEFAULT_FIGURES)),
        reference=table.get("reference", "none"),
        note=f"{path} predates [figures] {', '.join(missing)}: defaults used" if missing else "",
    )


def study_figures(
    root: str | Path,
    out: str | Path | None = None,
    formats=("png", "pdf"),
    *,
    cutoffs: Sequence[float] | None = None,
    draw: Sequence[str] | None = None,
) -> list[Path]:
    """Writes the figures a study asks for (its ``[figures] draw``, or ``draw``); returns the
    paths written.

    ``cutoffs``: the squared-gradient-norm cutoffs of the strict/loose index-vs-loss panels
    (default: the study's ``[figures] cutoffs``, see :func:`study_settings`). With
    ``[figures] reference = "linear_autoencoder"`` the exact critical points are drawn behind.

    Raises:
      StudyConfigError: a figure the rows cannot give (matched_loss without loss-level
        starts), or a reference the rows do not match.
    """
    from saddlestudy import analysis, store

    root = Path(root)
    df = analysis.load(root)
    settings = study_settings(root)
    cutoffs = tuple(cutoffs) if cutoffs is not None else settings.cutoffs
    draw = tuple(draw) if draw is not None else settings.draw
    unknown = sorted(set(draw) - set(FIGURES))
    if unknown:
        raise StudyConfigError(f"unknown figures {unknown}; choose from {FIGURES}")
    if "matched_loss" in draw and not (df["start_kind"] == "loss").any():
        raise StudyConfigError("matched_loss: the study has no loss-level starts")
    reference = None
    if settings.reference == "linear_autoencoder":
        reference = analysis.exact_reference(df)
        if reference is None:
            raise StudyConfigError(
                "[figures] reference = linear_autoencoder, but the rows are not one deep "
                "linear autoencoder (identity, depth 1, no biases, half MSE, one P)"
            )
    out = Path(out) if out is not None else Path("figures") / root.name
    spectra, densities = {}, {}
    if "spectral_density" in draw:
        for row_id in df["row_id"]:
            arrays = store.load_spectrum(root.parent, root.name, row_id)
            if "eigenvalues" in arrays:  # the figure keeps only complete spectra
                spectra[row_id] = arrays["eigenvalues"]
            if "density" in arrays and "density_grid" in arrays:
                densities[row_id] = (arrays["density_grid"], arrays["density"])
    relative = _study_relative_tol(df)
    makers = {
        "index_vs_loss": lambda: index_vs_loss_figure(df, reference=reference),
        "index_vs_loss_cutoffs": lambda: index_vs_loss_figure(
            df, cutoffs=cutoffs, reference=reference
        ),
        "scaling": lambda: scaling_figure(df),
        "minimum_ratio": lambda: minimum_ratio_figure(df),
        "spectral_density": lambda: spectral_density_figure(df, spectra, densities),
        "census": lambda: census_figure(df, cutoff=max(cutoffs), relative_tol=relative),
        "census_strict": lambda: census_figure(df, cutoff=min(cutoffs), relative_tol=relative),
        "point_classes": lambda: point_class_figure(df),
        "matched_loss": lambda: matched_loss_figure(df, cutoffs=cutoffs),
    }
    paths = []
    for name in draw:
        paths += save_figure(makers[name](), out / name, formats)
    return paths


def _study_relative_tol(df) -> float | None:
    """The smallest relative threshold c the study counted at (an ``@rel`` column), if any."""
    rel = [c for c, relative in rows.thresholds(df.columns) if relative]
    return min(rel) if rel else None


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m saddlestudy.figures",
        description="Write a study's figures (PNG and PDF) from its results directory.",
    )
    parser.add_argument("results", help="a study directory, e.g. results/default")
    parser.add_argument("--out", default=None, help="output directory (default figures/<study>)")
    parser.add_argument(
        "--cutoffs",
        type=float,
        nargs="+",
        default=None,
        help="|grad L|^2 cutoffs of the strict/loose index-vs-loss panels (default: the "
        "study's [figures] cutoffs, else 1e-10 1e-6)",
    )
    parser.add_argument(
        "--draw",
        nargs="+",
        default=None,
        choices=FIGURES,
        help="which figures (default: the study's [figures] draw)",
    )
    args = parser.parse_args(argv)
    if args.cutoffs and min(args.cutoffs) <= 0:
        print(f"error: --cutoffs must be > 0, got {args.cutoffs}", file=sys.stderr)
        return 2
    try:
        note = study_settings(args.results).note
        if note:
            print(f"note: {note}", file=sys.stderr)
        paths = study_figures(args.results, args.out, cutoffs=args.cutoffs, draw=args.draw)
    except (FileNotFoundError, StudyConfigError, StoreCorruptError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
