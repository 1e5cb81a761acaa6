"""The census: how the negative-eigenvalue count k grows with the parameter count P.

From a study's rows (:func:`saddlestudy.analysis.load`) to the numbers of the census figure
and of RESULTS.md (experiments/census.toml, issue 13):

- :func:`census_summary`: per depth and P, the end points whose ``|grad L|^2`` lies below a
  cutoff: the count k, the index k / P, the index among non-flat directions
  k / #{|lambda| > tau}, the fraction of points with an eigenvalue below -tau, the loss and
  ``|grad L|^2``: medians (fractions) with 95% bootstrap intervals.
- :func:`fit_growth`: the growth law k ~ c P^b, before and after P crosses N x outputs
  (interpolation), with a bootstrap interval on b.
- :func:`matched_loss_summary` and :func:`fit_index_slope`: the index at fixed loss (the
  Newton-MR points from the first step below each loss level) against P, at the strict and
  loose cutoffs and for the gradient-flat points; the slope of the index in log10 P, whose
  interval contains 0 if the index does not depend on P (Dauphin et al. 2014's claim).

Counts are read only where they are exact (``num_negative@tau`` is null otherwise): inexact
points are left out and counted (``num_inexact``), never read as 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from saddlestudy.analysis import DEFAULT_ZERO_TOL, bootstrap_ci, classify, tol_column

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
    ``num_inexact``; medians with 95% intervals (``*_lo``, ``*_hi``) of ``k``, ``index``
    (k / P), ``index_nonflat`` (k / #{|lambda| > tau}), ``loss`` and ``grad_norm_sq``;
    ``fraction_saddle`` (certified eigenvalue below -tau, :func:`~saddlestudy.analysis.classify`)
    with its interval and ``fraction_undetermined``; ``p_over_nc`` (P / (N x outputs)).
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
        row = {**dict(zip(by, key)), "num_ends": len(group), "num_kept": len(kept),
               "num_exact": int(np.isfinite(k).sum()),
               "num_inexact": int(len(kept) - np.isfinite(k).sum())}  # fmt: skip
        for name, values in (
            ("k", k),
            ("index", k / P if len(P) else k),
            ("index_nonflat", nonflat_index),
            ("loss", kept["loss"].to_numpy(float)),
            ("grad_norm_sq", kept["grad_norm_sq"].to_numpy(float)),
        ):
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = _median_ci(values)
        determined = kind != "undetermined"
        saddle = (kind[determined] == "saddle").astype(float)
        row["fraction_saddle"], row["fraction_saddle_lo"], row["fraction_saddle_hi"] = bootstrap_ci(
            saddle, num_resamples=_RESAMPLES
        )
        row["fraction_undetermined"] = float(np.mean(~determined)) if len(kind) else math.nan
        row["num_params_mean"] = float(np.mean(P)) if len(P) else math.nan
        out.append(row)
    table = pd.DataFrame(out)
    if not table.empty:
        size = table["num_params"] if "num_params" in table else table["num_params_mean"]
        table["p_over_nc"] = size / nc
    return table


def _interval_within(groups: np.ndarray, statistic, rng) -> tuple[float, float]:
    """A 95% percentile interval of ``statistic(indices)`` over resamples of the points with
    replacement within each group (each size keeps its number of points)."""
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    boot = np.array([
        statistic(np.concatenate([rng.choice(m, size=m.size) for m in members]))
        for _ in range(_RESAMPLES)
    ], float)  # fmt: skip
    boot = boot[np.isfinite(boot)]
    if not boot.size:
        return math.nan, math.nan
    return float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def _fit_log_log(P: np.ndarray, k: np.ndarray) -> float:
    """Slope of log k on log P over sizes whose median k is > 0 (NaN with fewer than 2)."""
    sizes = np.unique(P)
    medians = np.array([np.median(k[P == s]) for s in sizes])
    keep = medians > 0
    if keep.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(sizes[keep]), np.log(medians[keep]), 1)[0])


def fit_growth(
    df: pd.DataFrame,
    *,
    cutoff: float = DEFAULT_LOOSE_CUTOFF,
    zero_tol: float = DEFAULT_ZERO_TOL,
    relative: bool = False,
    seed: int = 0,
) -> pd.DataFrame:
    """The growth law k ~ c P^b of the end points below ``cutoff`` (exact counts), fitted on
    the median k per size (sizes with median 0 cannot enter a log-log fit and are counted
    in ``num_sizes_zero``), per depth and pooled, before (P < N x outputs) and after
    interpolation; ``exponent`` with a 95% interval from resampling the points within each
    size. NaN where fewer than two sizes have median k > 0."""
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
            Ps, ks = P[sel], k[sel]
            sizes = np.unique(Ps)
            est = _fit_log_log(Ps, ks)
            lo, hi = (_interval_within(Ps, lambda i, P=Ps, k=ks: _fit_log_log(P[i], k[i]), rng)
                      if np.isfinite(est) else (math.nan, math.nan))  # fmt: skip
            medians = [np.median(ks[Ps == s]) for s in sizes]
            out.append({
                "regime": regime, "depth": name, "num_points": int(sel.sum()),
                "num_sizes": len(sizes), "num_sizes_zero": int(sum(m == 0 for m in medians)),
                "p_min": float(sizes.min()) if len(sizes) else math.nan,
                "p_max": float(sizes.max()) if len(sizes) else math.nan,
                "exponent": est, "exponent_lo": lo, "exponent_hi": hi,
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
    ``num_starts`` (levels reached), ``num_points`` selected, medians with 95% intervals of
    the index k / P and of the loss the finder ended at (it moves away from the level)."""
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
    the points within each size. An interval that contains 0 is what the claim "at fixed
    loss the index does not depend on P" predicts; one that excludes it contradicts it."""
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
        lo, hi = (_interval_within(log_p, lambda i, x=log_p, y=index: _slope(x[i], y[i]), rng)
                  if np.isfinite(est) else (math.nan, math.nan))  # fmt: skip
        out.append({
            "start_loss_level": level, "num_points": int(ok.sum()), "num_sizes": len(sizes),
            "p_min": float(P[ok].min()) if ok.any() else math.nan,
            "p_max": float(P[ok].max()) if ok.any() else math.nan,
            "mean_index": float(index.mean()) if index.size else math.nan,
            "slope_per_decade": est, "slope_lo": lo, "slope_hi": hi,
        })  # fmt: skip
    return pd.DataFrame(out)
