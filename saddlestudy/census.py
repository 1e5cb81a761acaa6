"""The census: how the negative-eigenvalue count k grows with the parameter count P.

From a study's rows (:func:`saddlestudy.analysis.load`) to the numbers of the census figure
and of RESULTS.md (experiments/census.toml, issue 13):

- :func:`census_summary`: per depth and P, the end points whose ``|grad L|^2`` lies below a
  cutoff: the count k, the index k / P, the index among non-flat directions
  k / #{|lambda| > tau}, the loss and ``|grad L|^2`` (medians with 95% bootstrap intervals,
  each beside the number of points it is over), and the fractions of saddles and of
  undetermined points (exact Clopper–Pearson intervals,
  :func:`~saddlestudy.analysis.proportion_ci`).
- :func:`fit_growth`: the growth law k ~ c P^b, before and after P crosses N x outputs
  (interpolation), with a bootstrap interval on b; every resample fits the same sizes as the
  estimate, by one rule for k = 0 (log(median k + 1)), and the pooled fit gives each depth its
  own intercept.
- :func:`matched_loss_summary` and :func:`fit_index_slope`: the index at fixed loss (the
  Newton-MR points from the first step below each loss level) against P, at the strict and
  loose cutoffs and for the gradient-flat points; the slope of the index in log10 P, whose
  interval contains 0 if the index does not depend on P (Dauphin et al. 2014's claim).

Counts are read only where they are exact (``num_negative@tau`` is null otherwise): inexact
points are left out of medians and fits and counted (``num_inexact``), never read as 0. Where
the inexact points are the high-k ones (matrix-free counts at large P) that selection biases
the medians down, so the summary also brackets the median k over all kept points, exact and
inexact, by the medians of their bounds (``k_all_lo``, ``k_all_hi``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from saddlestudy.analysis import (
    DEFAULT_ZERO_TOL,
    bootstrap_ci,
    classify,
    negative_bounds,
    proportion_ci,
)
from saddlestudy.rows import tol_column

DEFAULT_LOOSE_CUTOFF = 1e-6  # |grad L|^2 below which a point counts at the loose cutoff
_RESAMPLES = 1000


def interpolation_threshold(df: pd.DataFrame) -> float:
    """N x outputs: the number of fitted values, where P crosses into interpolation (NaN if
    the study mixes datasets or predates the ``num_outputs`` column)."""
    if "num_outputs" not in df or df["num_outputs"].isna().any():
        return math.nan
    values = set(zip(df["num_samples"], df["num_outputs"]))
    if len(values) != 1:
        return math.nan
    n, c = values.pop()
    return float(n * c)


def _counts(df: pd.DataFrame, zero_tol: float, relative: bool) -> tuple[np.ndarray, np.ndarray]:
    """k (NaN where not exact) and the number of eigenvalues with |lambda| > tau."""
    k = df[tol_column("num_negative", zero_tol, relative=relative)].to_numpy(float)
    zero = df[tol_column("num_zero", zero_tol, relative=relative)].to_numpy(float)
    return k, df["num_params"].to_numpy(float) - zero


def _median_ci(values: np.ndarray) -> tuple[float, float, float]:
    values = values[np.isfinite(values)]
    return bootstrap_ci(values, np.median, num_resamples=_RESAMPLES)


def _median_ci_n(values: np.ndarray) -> tuple[float, float, float, int]:
    """Median, its 95% bootstrap interval and the number of (finite) values it is over."""
    values = values[np.isfinite(values)]
    return (*bootstrap_ci(values, np.median, num_resamples=_RESAMPLES), int(values.size))


def _ends(df: pd.DataFrame) -> pd.DataFrame:
    """The end points of training, diverged replicas left out."""
    diverged = df["train_diverged"].astype(bool) if "train_diverged" in df else False
    return df[(df["start_kind"] == "end") & ~diverged]


def end_points(df: pd.DataFrame, cutoff: float) -> pd.DataFrame:
    """The polished end points of training with ``|grad L|^2 < cutoff`` (diverged replicas
    left out)."""
    ends = _ends(df)
    return ends[ends["grad_norm_sq"] < cutoff]


def census_summary(
    df: pd.DataFrame,
    *,
    cutoff: float = DEFAULT_LOOSE_CUTOFF,
    zero_tol: float = DEFAULT_ZERO_TOL,
    relative: bool = False,
    by: Sequence[str] = ("depth", "num_params"),
) -> pd.DataFrame:
    """One row per group (default: depth and P, optimizers pooled) of the end points below
    ``cutoff``: ``num_ends`` (all end points), ``num_kept`` (below the cutoff), ``num_exact``,
    ``num_inexact`` (kept points without an exact count, left out of the medians of k);

    - medians with 95% bootstrap intervals (``*_lo``, ``*_hi``) and the number of points each
      is over (``*_n``; an interval over fewer than about 10 is unreliable) of ``k``,
      ``index`` (k / P), ``index_nonflat`` (k / #{|lambda| > tau}), ``loss`` and
      ``grad_norm_sq``;
    - ``k_all_lo``, ``k_all_hi``: the median k over *all* kept points, exact and inexact,
      lies between these medians of the per-point lower and upper bounds
      (``num_negative_lo/hi``; an unknown bound as 0 or P). Equal to ``k`` when every count is
      exact; where the inexact points are the high-k ones, ``k`` (exact only) is biased down;
    - ``fraction_saddle`` (certified eigenvalue below -tau, :func:`~saddlestudy.analysis.classify`)
      among the ``num_determined`` points not undetermined (``num_saddle`` of them) and
      ``fraction_undetermined`` among the kept, each with its exact Clopper–Pearson interval
      (:func:`~saddlestudy.analysis.proportion_ci`);
    - ``p_over_nc`` (P / (N x outputs)).

    With ``relative``, tau = ``zero_tol`` x lambda_max (the ``@rel`` columns)."""
    nc = interpolation_threshold(df)
    ends = _ends(df)
    out = []
    for key, group in ends.groupby(list(by), observed=True, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        kept = group[group["grad_norm_sq"] < cutoff]
        k, nonflat = _counts(kept, zero_tol, relative)
        P = kept["num_params"].to_numpy(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            nonflat_index = np.where(nonflat > 0, k / nonflat, np.nan)
        kind = classify(kept, zero_tol, relative=relative).to_numpy()
        num_exact = int(np.isfinite(k).sum())
        row = {**dict(zip(by, key)), "num_ends": len(group), "num_kept": len(kept),
               "num_exact": num_exact, "num_inexact": len(kept) - num_exact}  # fmt: skip
        for name, values in (
            ("k", k),
            ("index", k / P if len(P) else k),
            ("index_nonflat", nonflat_index),
            ("loss", kept["loss"].to_numpy(float)),
            ("grad_norm_sq", kept["grad_norm_sq"].to_numpy(float)),
        ):
            row[name], row[f"{name}_lo"], row[f"{name}_hi"], row[f"{name}_n"] = _median_ci_n(values)
        lo, hi = negative_bounds(kept, zero_tol, relative=relative)
        lo, hi = np.where(np.isnan(lo), 0.0, lo), np.where(np.isnan(hi), P, hi)
        row["k_all_lo"] = float(np.median(lo)) if len(kept) else math.nan
        row["k_all_hi"] = float(np.median(hi)) if len(kept) else math.nan
        saddles, undetermined = int((kind == "saddle").sum()), int((kind == "undetermined").sum())
        row["num_saddle"], row["num_determined"] = saddles, len(kept) - undetermined
        row["fraction_saddle"], row["fraction_saddle_lo"], row["fraction_saddle_hi"] = (
            proportion_ci(saddles, len(kept) - undetermined)
        )
        (row["fraction_undetermined"], row["fraction_undetermined_lo"],
         row["fraction_undetermined_hi"]) = proportion_ci(undetermined, len(kept))  # fmt: skip
        row["num_params_mean"] = float(np.mean(P)) if len(P) else math.nan
        out.append(row)
    table = pd.DataFrame(out)
    if not table.empty:
        size = table["num_params"] if "num_params" in table else table["num_params_mean"]
        table["p_over_nc"] = size / nc
    return table


def _interval_within(groups: np.ndarray, statistic, rng) -> tuple[float, float, int, int]:
    """A 95% percentile interval of ``statistic(indices)`` over ``_RESAMPLES`` resamples of
    the points with replacement within each group (each group keeps its number of points, so
    every resample has every group). Returns ``(lo, hi, num_resamples, num_degenerate)``:
    a resample whose statistic is not finite is degenerate, and then the interval is NaN,
    never taken over the other resamples alone."""
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    boot = np.array([
        statistic(np.concatenate([rng.choice(m, size=m.size) for m in members]))
        for _ in range(_RESAMPLES)
    ], float)  # fmt: skip
    degenerate = int((~np.isfinite(boot)).sum())
    if degenerate:
        return math.nan, math.nan, _RESAMPLES, degenerate
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return float(lo), float(hi), _RESAMPLES, 0


GROWTH_RULE = "log(median k + 1) = b log P + c"
POOLED_GROWTH_RULE = "log(median k + 1) = b log P + c_depth"


def _growth_slope(cells: np.ndarray, cell_log_p: np.ndarray, cell_depth: np.ndarray):
    """The slope b of log(median k + 1) = b log P + c_depth by least squares over every cell
    (one per depth and P; one intercept per depth), as a function of the points' k and the
    indices of the points to use; None where b is not identified (no depth has two sizes).
    The design is the same for every resample: only the medians change."""
    depths = np.unique(cell_depth)
    X = np.column_stack([cell_log_p] + [(cell_depth == d).astype(float) for d in depths])
    if np.linalg.matrix_rank(X) < X.shape[1]:
        return None
    row = np.linalg.pinv(X)[0]  # b = row @ y

    def slope(k: np.ndarray, idx: np.ndarray) -> float:
        sub_k, sub_c = k[idx], cells[idx]
        y = np.array([np.log(np.median(sub_k[sub_c == c]) + 1.0) for c in range(len(X))])
        return float(row @ y)

    return slope


def fit_growth(
    df: pd.DataFrame,
    *,
    cutoff: float = DEFAULT_LOOSE_CUTOFF,
    zero_tol: float = DEFAULT_ZERO_TOL,
    relative: bool = False,
    seed: int = 0,
) -> pd.DataFrame:
    """The growth law k ~ c P^b of the end points below ``cutoff`` (exact counts; the kept
    points without one are counted in ``num_inexact``), per depth and pooled over depths,
    before (P < N x outputs) and after interpolation.

    The rule (named in the ``rule`` column): b is the least-squares slope of
    log(median k + 1) on log P over the sizes, the median k taken per size. The + 1 keeps every
    size in the fit, sizes whose median k is 0 included (counted in ``num_sizes_zero``), the
    same for the estimate and for every resample: a size with a median of 0 in some resamples
    never drops out of them. It bends the law at small k (b is the growth of k + 1; for
    k >> 1 it is the growth of k).

    Pooled over depths (``depth == "all"``) a size is a (depth, P) cell and each depth has its
    own intercept, log(median k + 1) = b log P + c_depth: b is the growth with P within depths
    (common to them), not confounded with depth where the depths cover different P.

    ``exponent`` with a 95% percentile interval from ``num_resamples`` resamples of the points
    within each size; a degenerate resample (``num_resamples_degenerate``) is never dropped
    silently: it makes the interval NaN. NaN where b is not identified (no depth has two
    sizes)."""
    nc = interpolation_threshold(df)
    pts = end_points(df, cutoff)
    k, _ = _counts(pts, zero_tol, relative)
    P = pts["num_params"].to_numpy(float)
    depth = pts["depth"].to_numpy()
    ok = np.isfinite(k)
    rng = np.random.default_rng(seed)
    out = []
    regimes = {"all": np.ones_like(ok)}
    if np.isfinite(nc):
        regimes.update(before=P < nc, after=P >= nc)
    groups = [("all", np.ones_like(ok))] + [(int(d), depth == d) for d in np.unique(depth)]
    for regime, in_regime in regimes.items():
        for name, in_group in groups:
            sel = ok & in_regime & in_group
            Ps, ks, ds = P[sel], k[sel], depth[sel]
            cell_keys, cells = np.unique(np.column_stack([ds, Ps]), axis=0, return_inverse=True)
            cells = cells.ravel()
            medians = np.array([np.median(ks[cells == c]) for c in range(len(cell_keys))])
            slope = (_growth_slope(cells, np.log(cell_keys[:, 1]), cell_keys[:, 0])
                     if len(cell_keys) else None)  # fmt: skip
            est = lo = hi = math.nan
            num_resamples = degenerate = 0
            if slope is not None:
                est = slope(ks, np.arange(ks.size))
                lo, hi, num_resamples, degenerate = _interval_within(
                    cells, lambda i, slope=slope, ks=ks: slope(ks, i), rng
                )
            sizes = np.unique(Ps)
            out.append({
                "regime": regime, "depth": name, "num_points": int(sel.sum()),
                "num_inexact": int((~ok & in_regime & in_group).sum()),
                "num_sizes": len(cell_keys), "num_sizes_zero": int((medians == 0).sum()),
                "p_min": float(sizes.min()) if len(sizes) else math.nan,
                "p_max": float(sizes.max()) if len(sizes) else math.nan,
                "exponent": est, "exponent_lo": lo, "exponent_hi": hi,
                "num_resamples": num_resamples, "num_resamples_degenerate": degenerate,
                "rule": POOLED_GROWTH_RULE if name == "all" else GROWTH_RULE,
            })  # fmt: skip
    return pd.DataFrame(out)


def matched_loss_summary(
    df: pd.DataFrame,
    *,
    cutoffs: Sequence[float] = (1e-10, DEFAULT_LOOSE_CUTOFF),
    zero_tol: float = DEFAULT_ZERO_TOL,
    relative: bool = False,
) -> pd.DataFrame:
    """The Newton-MR points started at the loss levels (``start_kind == "loss"``), per level,
    depth and P, for each selection: ``"strict"`` (``|grad L|^2`` below the smallest cutoff),
    ``"gradient_flat"`` (Frye et al.'s test) and ``"loose"`` (below the largest cutoff):
    ``num_starts`` (levels reached), ``num_points`` selected, medians with 95% bootstrap
    intervals of the index k / P (over the ``num_exact`` points with an exact count) and of
    the loss the finder ended at (over the ``num_points``; it moves away from the level)."""
    starts = df[df["start_kind"] == "loss"]
    strict, loose = min(cutoffs), max(cutoffs)
    selections = {
        "strict": lambda g: g["grad_norm_sq"] < strict,
        "gradient_flat": lambda g: g["gradient_flat"].astype(bool),
        "loose": lambda g: g["grad_norm_sq"] < loose,
    }
    out = []
    by = ["start_loss_level", "depth", "num_params"]
    for (level, depth, P), group in starts.groupby(by, observed=True, sort=True):
        for selection, pick in selections.items():
            kept = group[pick(group).to_numpy()]
            k, _ = _counts(kept, zero_tol, relative)
            row = {"start_loss_level": level, "depth": depth, "num_params": P,
                   "selection": selection, "num_starts": len(group), "num_points": len(kept),
                   "num_exact": int(np.isfinite(k).sum())}  # fmt: skip
            row["index"], row["index_lo"], row["index_hi"] = _median_ci(k / P)
            row["loss"], row["loss_lo"], row["loss_hi"] = _median_ci(kept["loss"].to_numpy(float))
            out.append(row)
    return pd.DataFrame(out)


def _slope(log_p: np.ndarray, index: np.ndarray) -> float:
    if np.ptp(log_p) == 0:
        return math.nan
    return float(np.polyfit(log_p, index, 1)[0])


def fit_index_slope(
    df: pd.DataFrame,
    *,
    cutoff: float = DEFAULT_LOOSE_CUTOFF,
    zero_tol: float = DEFAULT_ZERO_TOL,
    relative: bool = False,
    seed: int = 0,
) -> pd.DataFrame:
    """Per loss level: the least-squares slope of the index k / P in log10 P over the
    matched-loss points below ``cutoff`` (all depths), with a 95% interval from resampling
    the points within each size (``num_resamples``; a degenerate one, counted in
    ``num_resamples_degenerate``, makes the interval NaN). An interval that contains 0 is
    what the claim "at fixed loss the index does not depend on P" predicts; one that
    excludes it contradicts it."""
    pts = df[(df["start_kind"] == "loss") & (df["grad_norm_sq"] < cutoff)]
    rng = np.random.default_rng(seed)
    out = []
    for level, group in pts.groupby("start_loss_level", sort=True):
        k, _ = _counts(group, zero_tol, relative)
        P = group["num_params"].to_numpy(float)
        ok = np.isfinite(k)
        log_p, index = np.log10(P[ok]), k[ok] / P[ok]
        sizes = np.unique(log_p)
        est = _slope(log_p, index)
        lo, hi, num_resamples, degenerate = (
            _interval_within(log_p, lambda i, x=log_p, y=index: _slope(x[i], y[i]), rng)
            if np.isfinite(est) else (math.nan, math.nan, 0, 0)
        )  # fmt: skip
        out.append({
            "start_loss_level": level, "num_points": int(ok.sum()),
            "num_inexact": int((~ok).sum()), "num_sizes": len(sizes),
            "p_min": float(P[ok].min()) if ok.any() else math.nan,
            "p_max": float(P[ok].max()) if ok.any() else math.nan,
            "mean_index": float(index.mean()) if index.size else math.nan,
            "slope_per_decade": est, "slope_lo": lo, "slope_hi": hi,
            "num_resamples": num_resamples, "num_resamples_degenerate": degenerate,
        })  # fmt: skip
    return pd.DataFrame(out)
