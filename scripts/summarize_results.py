"""The numbers of RESULTS.md, from the results of scripts/reproduce_paper.sh, as Markdown.

    python scripts/summarize_results.py [RESULTS_DIR]     (default results/)

Every number is an aggregate of saddlestudy.analysis over the stored rows; converged points
(|grad L|^2 < the finder's grad_tol) and the others are always kept apart. Fractions come with
exact Clopper-Pearson 95% intervals (analysis.proportion_ci), medians with the number of points
they are over.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from saddlestudy import analysis, census
from saddlestudy.rows import tol_column

ZERO_TOL = analysis.DEFAULT_ZERO_TOL


def _table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _header(name: str, df: pd.DataFrame) -> str:
    seconds = df.groupby("cell_id")[["train_seconds", "finder_seconds", "spectrum_seconds"]]
    total = float(seconds.first().to_numpy().sum())
    return (
        f"### {name}\n\nconfig {df['config_hash'].iloc[0]}, {len(df)} points, "
        f"{df['cell_id'].nunique()} cells, {total:.0f} s of training + finding + spectra, "
        f"git {df['git_commit'].iloc[0][:10]}, JAX {df['jax_version'].iloc[0]}, "
        f"{df['device'].iloc[0]}\n"
    )


def _index(df):
    """num_negative / P where the count is exact, NaN (never 0) elsewhere."""
    return df[tol_column("num_negative", ZERO_TOL)] / df["num_params"]


def _fit(df):
    """The index-vs-loss fits over the rows with an exact count."""
    exact = df[np.isfinite(_index(df))]
    return analysis.fit_index_vs_loss(exact["loss"].to_numpy(), _index(exact).to_numpy())


def linear_autoencoder(df: pd.DataFrame) -> str:
    ref = analysis.exact_reference(df, zero_tol=ZERO_TOL)
    p = int(df["width"].iloc[0])
    df = df.assign(exact=analysis.exact_matches(df, ref, zero_tol=ZERO_TOL))
    rows = []
    for (method, status), g in df.groupby(["finder_method", "status"], observed=True):
        rows.append({"finder": method, "status": status, "points": len(g),
                     "exact critical points": int(g["exact"].sum()),
                     "median |grad L|^2": float(g["grad_norm_sq"].median()),
                     "loss range": f"{g['loss'].min():.3f}–{g['loss'].max():.3f}"})  # fmt: skip
    fits = []
    for label, cutoff in (("strict", 1e-10), ("loose", np.inf)):
        fit = _fit(df[df["grad_norm_sq"] < cutoff])
        fits.append({"points": label + (f" (<{cutoff:g})" if np.isfinite(cutoff) else " (all)"),
                     "n": fit["num_points"], "slope": fit["slope"],
                     "RSS line": fit["rss_linear"], "RSS 3/2 law": fit["rss_pb"],
                     "eps_c": fit["eps_c"]})  # fmt: skip
    exact_fit = analysis.fit_index_vs_loss(
        ref.loc[ref["rank"] == p, "loss"].to_numpy(), ref.loc[ref["rank"] == p, "index"].to_numpy()
    )
    return (
        _table(pd.DataFrame(rows))
        + "\n\nIndex vs loss fits (index = fraction of eigenvalues below -1e-5):\n\n"
        + _table(pd.DataFrame(fits))
        + f"\n\nExact rank-{p} critical points: slope {exact_fit['slope']:.4g}, "
        f"RSS of the line {exact_fit['rss_linear']:.2g} ({len(ref)} exact points in all).\n"
    )


def index_vs_loss(df: pd.DataFrame) -> str:
    conv = df[df["status"] == "converged"]
    corr = analysis.index_vs_loss(df, zero_tol=ZERO_TOL)
    fit = _fit(conv)
    counts = df.groupby(["num_params", "status"], observed=True).size().unstack(fill_value=0)
    return (
        _table(counts.reset_index())
        + "\n\nSpearman rank correlation of index with loss (converged points, 95% CI):\n\n"
        + _table(corr[["num_params", "num_converged", "spearman_rho", "ci_low", "ci_high"]])
        + f"\n\nFits over all converged points with exact counts (n = {fit['num_points']}): "
        f"line RSS "
        f"{fit['rss_linear']:.3g} (slope {fit['slope']:.3g}); 3/2 law RSS {fit['rss_pb']:.3g} "
        f"(eps_c {fit['eps_c']:.3g}, alpha0 {fit['alpha0']:.3g}).\n"
    )


def minimum_ratio(df: pd.DataFrame) -> str:
    df = df.assign(minimum_ratio=df[tol_column("num_positive", ZERO_TOL)] / df["num_params"])
    rows = []
    for (opt, kind), g in df.groupby(["optimizer", "start_kind"], observed=True):
        rows.append({"optimizer": opt, "where": kind, "points": len(g),
                     "median loss": float(g["loss"].median()),
                     "median |grad L|^2": float(g["grad_norm_sq"].median()),
                     "median min. ratio": float(g["minimum_ratio"].median()),
                     "points with an exact ratio": int(g["minimum_ratio"].notna().sum()),
                     "max min. ratio": float(g["minimum_ratio"].max()),
                     "with λ_min < -1e-5": int(
                         (g[tol_column("num_negative_lo", ZERO_TOL)] > 0).sum()
                     )})  # fmt: skip
    return _table(pd.DataFrame(rows)) + "\n"


def scaling(df: pd.DataFrame) -> str:
    frac = analysis.fraction_minima(df, by=["optimizer", "num_params", "depth", "widths"])
    idx = analysis.index_summary(df, by=["optimizer", "num_params", "depth", "widths"])
    out = frac[["optimizer", "num_params", "depth", "widths", "num_points", "num_converged",
                "num_gradient_flat", "num_minima", "fraction_minima", "ci_low", "ci_high",
                "num_undetermined", "fraction_undetermined", "fraction_undetermined_lo",
                "fraction_undetermined_hi"]].copy()  # fmt: skip
    # medians: of the index over num_exact points, of the loss over num_converged
    out["num_exact"] = idx["num_exact"].to_numpy()
    out["median_index"] = idx["median_index"].to_numpy()
    out["median_loss"] = idx["median_loss"].to_numpy()
    return _table(out) + "\n"


def optimizers(df: pd.DataFrame) -> str:
    summary = analysis.optimizer_summary(df, zero_tol=ZERO_TOL)
    return _table(summary) + "\n"


def census_tables(df: pd.DataFrame) -> str:
    """The census: per depth and P, end points below each cutoff (k over the exact counts
    with the number of them, the bracket of the median k over all kept points, index,
    non-flat index, fractions of saddles and undetermined points, loss, |grad L|^2);
    growth-law fits; the index at matched loss."""
    out = []
    cols = ["depth", "num_params", "num_ends", "num_kept", "num_inexact", "k_n", "k", "k_lo",
            "k_hi", "k_all_lo", "k_all_hi", "index", "index_nonflat", "num_saddle",
            "num_determined", "fraction_saddle", "fraction_saddle_lo", "fraction_saddle_hi",
            "fraction_undetermined", "fraction_undetermined_hi", "loss", "grad_norm_sq",
            "p_over_nc"]  # fmt: skip
    for cutoff in (1e-6, 1e-10):
        for tol, relative in ((ZERO_TOL, False), (1e-3, True)):
            tau = f"{tol:g} lambda_max" if relative else f"{tol:g}"
            table = census.census_summary(df, cutoff=cutoff, zero_tol=tol, relative=relative)
            out.append(f"End points with |grad L|^2 < {cutoff:g}, tau = {tau}:\n")
            out.append(_table(table[cols]) + "\n" if not table.empty else "(none)\n")
            fit = census.fit_growth(df, cutoff=cutoff, zero_tol=tol, relative=relative)
            out.append(f"Growth law k ~ P^b (|grad L|^2 < {cutoff:g}, tau = {tau}):\n")
            out.append(_table(fit) + "\n")
    below = df[df["num_params"] <= STALL_MAX_PARAMS]
    fit = census.fit_growth(below, cutoff=1e-6, zero_tol=ZERO_TOL)
    out.append(f"Growth law of the stall points, P <= {STALL_MAX_PARAMS:,} (|grad L|^2 < 1e-6):\n")
    out.append(_table(fit[fit["regime"] == "all"]) + "\n")
    out.append(census_classes(df))
    matched = census.matched_loss_summary(df, zero_tol=ZERO_TOL)
    out.append("Index at matched loss (Newton-MR from the first step below each level):\n")
    out.append(_table(matched) + "\n")
    for cutoff in (1e-10, 1e-6):
        slope = census.fit_index_slope(df, cutoff=cutoff, zero_tol=ZERO_TOL)
        out.append(f"Slope of the index in log10 P at matched loss (|grad L|^2 < {cutoff:g}):\n")
        out.append(_table(slope) + "\n")
    return "\n".join(out)


def census_classes(df: pd.DataFrame) -> str:
    """How the finder's runs from the end points ended, per depth and P (counts of each
    point class, the number below grad_tol, median iterations and last-step ratio of those),
    and what each part of the census cost (the cells' own wall times, minutes)."""
    ends = analysis.with_status(df[df["start_kind"] == "end"])
    kinds = [k for k in analysis.POINT_CLASSES if (ends["point_class"] == k).any()]
    table = analysis.class_fractions(ends, by=["depth", "num_params"])
    ends = ends.assign(reached_ratio=ends["last_step_ratio"].where(ends["converged"]))
    runs = ends.groupby(["depth", "num_params"]).agg(
        num_reached=("converged", "sum"), iterations=("iterations", "median"),
        reached_ratio=("reached_ratio", "median"),
    )  # fmt: skip
    table = table.merge(runs, on=["depth", "num_params"])
    cols = ["depth", "num_params", "num_points", *(f"num_{k}" for k in kinds), "num_reached",
            "iterations", "reached_ratio"]  # fmt: skip
    out = ["How the finder's runs from the end points ended (num_reached: below grad_tol):\n",
           _table(table[cols]) + "\n"]  # fmt: skip
    cells = df.groupby("cell_id").agg(
        num_params=("num_params", "first"), train=("train_seconds", "first"),
        finder=("finder_seconds", "first"), counts=("spectrum_seconds", "first"),
    )  # fmt: skip
    cost = cells.groupby("num_params")[["train", "finder", "counts"]].sum() / 60.0
    cost.loc["all"] = cost.sum()
    out += ["Cost per size (minutes of the cells' wall time):\n", _table(cost.reset_index()) + "\n"]
    return "\n".join(out)


# The census sizes whose end points stall far from interpolation (P ~ 1.2e2 ... 1e3, loss
# 0.03 ... 0.8): RESULTS.md section 6 fits the stall points' growth law over them.
STALL_MAX_PARAMS = 2_000

# Studies a full run of scripts/reproduce_paper.sh makes but --quick does not (left out, said).
OPTIONAL = {"census": census_tables}

STUDIES = {
    "linear_autoencoder": linear_autoencoder,
    "index_vs_loss": index_vs_loss,
    "minimum_ratio": minimum_ratio,
    "scaling": scaling,
    "optimizers": optimizers,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="results")
    args = parser.parse_args(argv)
    root = Path(args.results)
    for name, summarize in STUDIES.items():
        if not (root / name).is_dir():
            print(f"error: no study {name} in {root}/", file=sys.stderr)
            return 2
        df = analysis.load(root / name)
        print(_header(name, df))
        print(summarize(df))
    for name, summarize in OPTIONAL.items():
        if not (root / name).is_dir():
            print(f"### {name}\n\nnot in {root}/ (made by a full run of reproduce_paper.sh)\n")
            continue
        df = analysis.load(root / name)
        print(_header(name, df))
        print(summarize(df))
    return 0


if __name__ == "__main__":
    sys.exit(main())
