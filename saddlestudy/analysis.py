"""From a results store to findings: aggregates with 95% intervals and their counts.

Fractions (proportions of points: minima, saddles, undetermined, converged) get the exact
Clopper–Pearson interval of :func:`proportion_ci` (never a bootstrap: the percentile bootstrap
of all-equal 0/1 samples is the zero-width ``[1, 1]`` for 3 of 3). Medians and means get a
percentile bootstrap interval (:func:`bootstrap_ci`), always beside the number of points they
are over (a bootstrap interval over fewer than about 10 points is unreliable: it is reported,
with its count).

Every function takes the study as a pandas DataFrame (:func:`load`) and returns a
DataFrame. Points are always split by their ``status``: ``"converged"`` (a true critical
point to the finder's tolerance), ``"gradient_flat"`` (the finder stalled where the gradient
lies in the Hessian's near-kernel; Frye et al. 2021) and ``"not_converged"``. Aggregates over
critical points use converged points only and report how many of each status were left out.

Every point is classified by :func:`classify` at a tolerance tau (docs/science.md §1, §6): a
**minimum** only when it is certified to have no eigenvalue below ``-tau`` (the stored upper
bound ``num_negative_hi@tau`` is 0: certain for dense counts, with probability at least
``1 - failure_prob`` for matrix-free ones), a **saddle** when at least one is certified
(``num_negative_lo@tau > 0``), and **undetermined** when the bounds straddle 0. Indices
(``num_negative / P``) are taken only where the count is exact; a missing count is never read
as 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import threadpoolctl
from scipy import optimize, stats

from saddlestudy import critical, rows, spectrum, store
from saddlestudy.rows import tol_column, tol_name  # noqa: F401  (analysis.tol_column: public)

ARCH = ["num_params", "depth", "widths", "activation"]
DEFAULT_ZERO_TOL = spectrum.DEFAULT_ZERO_TOL


def load(root: str | Path, study: str | None = None) -> pd.DataFrame:
    """The study's rows, with a ``status`` column (converged / gradient_flat / not_converged)."""
    df = store.load_results(root, study).to_pandas()
    return with_status(df)


# How each start ended (the finder's classes, saddlestudy.critical.POINT_CLASSES), and
# "unclassified" for rows stored before the classes were (only critical, gradient-flat and
# diverged can be told there).
# "crossing": a critical row (|grad L|^2 < grad_tol) whose last step lowered |grad L|^2 by
# less than Newton's method does near any finite critical point (last_step_ratio above
# critical.NEWTON_RATE_BOUND): the run crossed the cutoff while still travelling.
POINT_CLASSES = ("critical", "crossing", *critical.POINT_CLASSES[1:], "unclassified")


def with_status(df: pd.DataFrame) -> pd.DataFrame:
    """Adds ``status`` (converged / gradient_flat / not_converged) and ``point_class`` (one of
    :data:`POINT_CLASSES`; rows of older stores get what their columns can tell)."""
    status = np.where(
        df["converged"],
        "converged",
        np.where(df["gradient_flat"], "gradient_flat", "not_converged"),
    )
    if "point_class" in df:
        kind = df["point_class"].fillna("unclassified").to_numpy(object)
        if "last_step_ratio" in df:  # NaN (no step, or rows stored before it): not a crossing
            crossed = df["last_step_ratio"].to_numpy(float) > critical.NEWTON_RATE_BOUND
            kind = np.where((kind == "critical") & crossed, "crossing", kind)
    else:
        diverged = (
            df["train_diverged"].fillna(False).to_numpy(bool) if "train_diverged" in df else False
        )
        kind = np.where(
            df["converged"],
            "critical",
            np.where(
                diverged, "diverged", np.where(df["gradient_flat"], "gradient_flat", "unclassified")
            ),
        )
    return df.assign(
        status=pd.Categorical(status, ["converged", "gradient_flat", "not_converged"]),
        point_class=pd.Categorical(kind, POINT_CLASSES),
    )


def class_fractions(df: pd.DataFrame, by: Sequence[str] = ARCH) -> pd.DataFrame:
    """Per group: for each point class, its count and fraction with an exact Clopper–Pearson
    95 % interval (``fraction_<class>``, ``_lo``, ``_hi``), over all the group's starts."""
    df = df if "point_class" in df else with_status(df)
    rows = []
    for key, group in df.groupby(list(by), observed=True, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row = {**dict(zip(by, key)), "num_points": len(group)}
        for kind in POINT_CLASSES:
            k = int((group["point_class"] == kind).sum())
            frac, lo, hi = proportion_ci(k, len(group))
            row.update({f"num_{kind}": k, f"fraction_{kind}": frac,
                        f"fraction_{kind}_lo": lo, f"fraction_{kind}_hi": hi})  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


CLASSES = ("minimum", "saddle", "undetermined")


def negative_bounds(
    df: pd.DataFrame, zero_tol: float = DEFAULT_ZERO_TOL, *, relative: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the lower and upper bounds on the number of eigenvalues below ``-zero_tol``
    (floats; NaN where nothing is known). Results from before the bounds were stored give
    lo = hi = ``num_negative`` where it exists (those counts were dense, exact)."""
    count = tol_column("num_negative", zero_tol, relative=relative)
    lo_col = tol_column("num_negative_lo", zero_tol, relative=relative)
    hi_col = tol_column("num_negative_hi", zero_tol, relative=relative)
    if count not in df and lo_col not in df:
        stored = [tol_column("", t, relative=r)[1:] for t, r in rows.thresholds(df.columns)]
        raise KeyError(f"no counts at {count.split('@', 1)[1]}; this study has {stored}")
    neg = df[count].to_numpy(float) if count in df else np.full(len(df), np.nan)
    lo = df[lo_col].to_numpy(float) if lo_col in df else neg
    hi = df[hi_col].to_numpy(float) if hi_col in df else neg
    # Rows of an older part without bounds, beside newer parts in one study.
    return np.where(np.isnan(lo), neg, lo), np.where(np.isnan(hi), neg, hi)


def classify(
    df: pd.DataFrame, zero_tol: float = DEFAULT_ZERO_TOL, *, relative: bool = False
) -> pd.Series:
    """Per row: ``"minimum"`` (no eigenvalue below ``-zero_tol``: ``num_negative_hi == 0``),
    ``"saddle"`` (``num_negative_lo > 0``) or ``"undetermined"`` (the bounds straddle 0, or
    nothing is known). With ``relative``, at tau = ``zero_tol`` lambda_max (``@rel`` columns).
    """
    lo, hi = negative_bounds(df, zero_tol, relative=relative)
    kind = np.full(len(df), "undetermined", dtype=object)
    kind[hi == 0] = "minimum"
    kind[lo > 0] = "saddle"
    return pd.Series(pd.Categorical(kind, CLASSES), index=df.index, name="kind")


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    num_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Estimate and percentile bootstrap interval of ``statistic`` (NaNs if no values)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    resampled = x[rng.integers(0, x.size, size=(num_resamples, x.size))]
    boot = np.apply_along_axis(statistic, 1, resampled)
    alpha = (1 - level) / 2
    return float(statistic(x)), float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha))


def proportion_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """Fraction ``successes / n`` and its exact Clopper–Pearson interval at ``level`` (NaNs
    for ``n == 0``): never zero-width, e.g. 3 of 3 gives 1.0 [0.292, 1]. The one interval of
    every fraction this package reports."""
    k, n = int(successes), int(n)
    if n == 0:
        return math.nan, math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"successes must be in [0, n]: got {k} of {n}")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return k / n, float(ci.low), float(ci.high)


def _row(by: Sequence[str], key, group: pd.DataFrame, **fields) -> dict:
    """One output row: the group's key columns, its counts per status, then ``fields``."""
    key = key if isinstance(key, tuple) else (key,)
    return {**dict(zip(by, key)), **_counts(group), **fields}


def _counts(group: pd.DataFrame) -> dict[str, int]:
    return {
        "num_points": len(group),
        "num_converged": int((group["status"] == "converged").sum()),
        "num_gradient_flat": int((group["status"] == "gradient_flat").sum()),
        "num_not_converged": int((group["status"] == "not_converged").sum()),
    }


def _index(df: pd.DataFrame, zero_tol: float) -> np.ndarray:
    """num_negative / P where the count is exact, NaN elsewhere (never 0 for a missing count)."""
    return (df[tol_column("num_negative", zero_tol)] / df["num_params"]).to_numpy(float)


def _minimum_ratio(df: pd.DataFrame, zero_tol: float) -> np.ndarray:
    return (df[tol_column("num_positive", zero_tol)] / df["num_params"]).to_numpy(float)


def fraction_minima(
    df: pd.DataFrame, by: Sequence[str] = ARCH, *, zero_tol: float = DEFAULT_ZERO_TOL
) -> pd.DataFrame:
    """Fraction of (certified) minima among the ``num_converged`` converged critical points
    per group, with its 95% Clopper–Pearson interval (``ci_low``, ``ci_high``;
    :func:`proportion_ci`), and the fraction :func:`classify` leaves undetermined, with its
    own (``fraction_undetermined_lo``, ``_hi``): the true fraction of minima lies between
    ``fraction_minima`` and ``fraction_minima + fraction_undetermined``."""
    out = []
    for key, group in df.groupby(list(by), observed=True, sort=True):
        conv = group[group["status"] == "converged"]
        kind = classify(conv, zero_tol).to_numpy()
        minima, undetermined = int((kind == "minimum").sum()), int((kind == "undetermined").sum())
        est, lo, hi = proportion_ci(minima, len(conv))
        und, und_lo, und_hi = proportion_ci(undetermined, len(conv))
        out.append(
            _row(by, key, group, num_minima=minima, num_undetermined=undetermined,
                 fraction_minima=est, ci_low=lo, ci_high=hi, fraction_undetermined=und,
                 fraction_undetermined_lo=und_lo, fraction_undetermined_hi=und_hi)
        )  # fmt: skip
    return pd.DataFrame(out)


def index_summary(
    df: pd.DataFrame, by: Sequence[str] = ARCH, *, zero_tol: float = DEFAULT_ZERO_TOL
) -> pd.DataFrame:
    """Median index of the converged points with an exact count (over ``num_exact`` of them)
    per group with a 95% bootstrap CI (unreliable where ``num_exact`` < 10), the median loss
    of the ``num_converged`` converged points, and counts per status."""
    out = []
    for key, group in df.groupby(list(by), observed=True, sort=True):
        conv = group[group["status"] == "converged"]
        index = _index(conv, zero_tol)
        index = index[np.isfinite(index)]
        est, lo, hi = bootstrap_ci(index, np.median)
        median_loss = float(conv["loss"].median()) if len(conv) else math.nan
        out.append(
            _row(by, key, group, num_exact=index.size, median_index=est, ci_low=lo, ci_high=hi,
                 median_loss=median_loss)
        )  # fmt: skip
    return pd.DataFrame(out)


def index_vs_loss(
    df: pd.DataFrame, by: Sequence[str] = ARCH, *, zero_tol: float = DEFAULT_ZERO_TOL
) -> pd.DataFrame:
    """Spearman rank correlation of index with loss per group (converged points with an
    exact count), with CI."""
    out = []
    for key, group in df.groupby(list(by), observed=True, sort=True):
        conv = group[group["status"] == "converged"]
        pairs = np.column_stack([conv["loss"].to_numpy(float), _index(conv, zero_tol)])
        pairs = pairs[np.isfinite(pairs[:, 1])]

        def rho(rows, pairs=pairs):
            sample = pairs[rows.astype(int)]
            if np.ptp(sample[:, 0]) == 0 or np.ptp(sample[:, 1]) == 0:
                return math.nan
            return stats.spearmanr(sample[:, 0], sample[:, 1]).statistic

        if len(pairs) >= 3:
            est, lo, hi = bootstrap_ci(np.arange(len(pairs)), rho, num_resamples=500)
        else:
            est = lo = hi = math.nan
        out.append(
            _row(by, key, group, num_exact=len(pairs), spearman_rho=est, ci_low=lo, ci_high=hi)
        )
    return pd.DataFrame(out)


def index_at_loss_quantiles(
    df: pd.DataFrame,
    quantiles: Sequence[float] = (0.1, 0.5, 0.9),
    by: Sequence[str] = ARCH,
    *,
    zero_tol: float = DEFAULT_ZERO_TOL,
) -> pd.DataFrame:
    """Index of converged points (exact counts) near matched loss quantiles (pooled over the
    study).

    The loss quantiles are taken over all converged points of the study, so every group is
    compared at the same losses; within a group, the points whose loss lies in the band
    between neighbouring quantile midpoints are averaged.
    """
    conv_all = df[df["status"] == "converged"]
    if conv_all.empty:
        return pd.DataFrame()
    q = np.quantile(conv_all["loss"], quantiles)
    edges = np.concatenate([[-np.inf], (q[1:] + q[:-1]) / 2, [np.inf]])
    out = []
    for key, group in conv_all.groupby(list(by), observed=True, sort=True):
        idx = _index(group, zero_tol)
        loss = group["loss"].to_numpy(float)
        for j, level in enumerate(q):
            band = (loss >= edges[j]) & (loss < edges[j + 1]) & np.isfinite(idx)
            est, lo, hi = bootstrap_ci(idx[band])
            key = key if isinstance(key, tuple) else (key,)
            out.append({**dict(zip(by, key)), "quantile": quantiles[j],
                        "loss_level": float(level), "num_points": int(band.sum()),
                        "mean_index": est, "ci_low": lo, "ci_high": hi})  # fmt: skip
    return pd.DataFrame(out)


def minimum_ratio_vs_loss(df: pd.DataFrame, *, zero_tol: float = DEFAULT_ZERO_TOL) -> pd.DataFrame:
    """Per point: loss, minimum ratio (NaN where the count is not exact) and status (the
    lecture's scatter plot)."""
    return pd.DataFrame({
        "loss": df["loss"].to_numpy(float),
        "minimum_ratio": _minimum_ratio(df, zero_tol),
        "num_params": df["num_params"].to_numpy(),
        "status": df["status"].to_numpy(),
    })  # fmt: skip


def optimizer_summary(df: pd.DataFrame, *, zero_tol: float = DEFAULT_ZERO_TOL) -> pd.DataFrame:
    """Where each optimizer stalls, per optimizer and P over the end points: the median
    training loss (of ``num_points``), statuses, the fractions of (certified) minima and of
    undetermined points among the ``num_converged`` converged ones, with 95% Clopper–Pearson
    intervals (:func:`proportion_ci`), and the median exact index (over ``num_exact``)."""
    ends = df[df["start_kind"] == "end"]
    out = []
    for (name, P), group in ends.groupby(["optimizer", "num_params"], observed=True, sort=True):
        conv = group[group["status"] == "converged"]
        kind = classify(conv, zero_tol).to_numpy()
        minima, undetermined = int((kind == "minimum").sum()), int((kind == "undetermined").sum())
        frac, lo, hi = proportion_ci(minima, len(conv))
        und, und_lo, und_hi = proportion_ci(undetermined, len(conv))
        index = _index(conv, zero_tol)
        index = index[np.isfinite(index)]
        out.append(
            _row(
                ["optimizer", "num_params"],
                (name, P),
                group,
                median_train_loss=float(group["train_loss"].median()),
                num_minima=minima,
                num_undetermined=undetermined,
                fraction_minima=frac,
                ci_low=lo,
                ci_high=hi,
                fraction_undetermined=und,
                fraction_undetermined_lo=und_lo,
                fraction_undetermined_hi=und_hi,
                num_exact=int(index.size),
                median_index=float(np.median(index)) if index.size else math.nan,
            )  # fmt: skip
        )
    return pd.DataFrame(out)


def fit_index_vs_loss(loss: np.ndarray, index: np.ndarray) -> dict[str, float]:
    """Fits index(loss) by the Pennington–Bahri 3/2 law and by a line.

    The law: alpha = alpha0 |(eps - eps_c)/eps_c|^{3/2} above the critical loss eps_c and 0
    below it (Pennington & Bahri 2017, for points of small index).

    Returns the parameters and residual sums of squares of both, and the number of points,
    so the two can be compared side by side.
    """
    loss = np.asarray(loss, float)
    index = np.asarray(index, float)
    n = loss.size
    out: dict[str, float] = {"num_points": n}
    if n < 3:
        return {**out, "alpha0": math.nan, "eps_c": math.nan, "rss_pb": math.nan,
                "slope": math.nan, "intercept": math.nan, "rss_linear": math.nan}  # fmt: skip
    slope, intercept = np.polyfit(loss, index, 1)
    out.update(slope=float(slope), intercept=float(intercept),
               rss_linear=float(np.sum((index - (slope * loss + intercept)) ** 2)))  # fmt: skip

    def profile(eps_c):
        # For a fixed eps_c the law is linear in alpha0: solve for it in closed form.
        f = np.where(loss > eps_c, np.abs((loss - eps_c) / eps_c) ** 1.5, 0.0)
        ff = float(f @ f)
        alpha0 = float(f @ index) / ff if ff > 0 else 0.0
        return float(np.sum((index - alpha0 * f) ** 2)), alpha0

    hi = float(loss.max())
    if hi <= 0:
        alpha0 = eps_c = rss = math.nan
    else:
        # A scan over eps_c in (0, max loss), then a bounded refinement around the best.
        grid = np.geomspace(hi * 1e-4, hi, 400)
        best = int(np.argmin([profile(e)[0] for e in grid]))
        bracket = (grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)])
        res = optimize.minimize_scalar(lambda e: profile(e)[0], bounds=bracket, method="bounded",
                                       options={"xatol": 1e-12 * hi})  # fmt: skip
        eps_c = float(res.x)
        rss, alpha0 = profile(eps_c)
    out.update(alpha0=float(alpha0), eps_c=float(eps_c), rss_pb=rss)
    return out


def spectral_density(eigenvalues: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smoothed eigenvalue density on ``grid`` (integrates to 1 over the line)."""
    eigenvalues = np.asarray(eigenvalues, float)[:, None]
    z = (np.asarray(grid, float)[None, :] - eigenvalues) / sigma
    return np.exp(-0.5 * z**2).sum(0) / (eigenvalues.size * sigma * math.sqrt(2 * math.pi))


def linear_autoencoder_reference(
    eigenvalues: Sequence[float], p: int, *, zero_tol: float = DEFAULT_ZERO_TOL
) -> pd.DataFrame:
    """Every critical point of the deep linear autoencoder, exactly (docs/science.md §3).

    For covariance eigenvalues ``eigenvalues`` (distinct) and hidden width ``p``, one row per
    subset I of eigen-directions with ``|I| <= p``: the point W1 = U_I^T, W2 = U_I (extra rows
    zero), its loss ``1/2 sum_{i not in I} lambda_i`` and its Hessian's ``num_negative`` and
    ``index`` (fraction of the P = 2 n p eigenvalues below ``-zero_tol``), from the float64
    dense Hessian of the covariance form of the loss, ``1/2 tr((I - W)^T Sigma (I - W))`` with
    ``W = W2 W1``, which equals the sample mean of ``1/2 |x - W2 W1 x|^2`` at every point.
    The index does not depend on the rotation of the data, so Sigma is taken diagonal.
    """
    import itertools

    import jax
    import jax.numpy as jnp

    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    n = lam.size
    subsets = [s for r in range(p + 1) for s in itertools.combinations(range(n), r)]
    starts = np.zeros((len(subsets), 2 * n * p))
    for k, subset in enumerate(subsets):
        w1 = np.zeros((p, n))
        w1[np.arange(len(subset)), list(subset)] = 1.0
        starts[k] = np.concatenate([w1.ravel(), w1.T.ravel()])  # W2 = W1^T

    with jax.enable_x64(True):
        sigma = jnp.asarray(lam)

        def loss(theta):
            w1 = theta[: n * p].reshape(p, n)
            w2 = theta[n * p :].reshape(n, p)
            r = jnp.eye(n) - w2 @ w1
            return 0.5 * jnp.sum(sigma[:, None] * r * r)

        hessians = np.asarray(jax.jit(jax.vmap(jax.hessian(loss)))(jnp.asarray(starts)))
    # Thousands of small eigenproblems: one BLAS thread each is ~20x faster than a pool
    # fighting over the cores.
    with threadpoolctl.threadpool_limits(1):
        num_negative = np.sum(np.linalg.eigvalsh(hessians) < -zero_tol, axis=1)
    return pd.DataFrame(
        {
            "subset": [tuple(int(i) for i in s) for s in subsets],
            "rank": [len(s) for s in subsets],
            "loss": [0.5 * (lam.sum() - lam[list(s)].sum()) for s in subsets],
            "num_negative": num_negative.astype(int),
            "index": num_negative / (2 * n * p),
        }
    )


def exact_reference(df: pd.DataFrame, *, zero_tol: float = DEFAULT_ZERO_TOL) -> pd.DataFrame | None:
    """:func:`linear_autoencoder_reference` for a study's rows when the study is the deep
    linear autoencoder of docs/science.md §3 (identity, depth 1, no biases, half MSE, one P),
    with the dataset's own n and eigenvalues; else None."""
    needed = {"dataset", "activation", "depth", "num_params", "loss_name", "data_args", "width"}
    if df.empty or not needed <= set(df.columns):
        return None
    first = df.iloc[0]
    if not (
        set(df["dataset"]) == {"linear_autoencoder"}
        and set(df["activation"]) == {"identity"}
        and set(df["depth"]) == {1}
        and df["num_params"].nunique() == 1
        and first["loss_name"] == "half_mse"
    ):
        return None
    args = json.loads(first["data_args"])
    n = int(args.get("n", 16))
    p = int(first["width"])
    if first["num_params"] != 2 * n * p:  # biases: not the autoencoder of docs/science.md §3
        return None
    eigenvalues = args.get("eigenvalues") or list(range(1, n + 1))
    return linear_autoencoder_reference(eigenvalues, p, zero_tol=zero_tol)


def exact_matches(
    df: pd.DataFrame, reference: pd.DataFrame, *, zero_tol: float = DEFAULT_ZERO_TOL
) -> np.ndarray:
    """Per row: whether its loss (to 1e-6) and number of negative eigenvalues are those of
    one of the exact critical points in ``reference`` (False where the count is not exact)."""
    exact = set(zip(np.round(reference["loss"], 6), reference["num_negative"]))
    return np.array(
        [
            not math.isnan(neg) and (round(float(loss), 6), int(neg)) in exact
            for loss, neg in zip(df["loss"], df[tol_column("num_negative", zero_tol)].astype(float))
        ],
        dtype=bool,
    )
