"""The census analysis (saddlestudy.census) on synthetic rows with known answers."""

import math

import numpy as np
import pandas as pd
import pytest

from saddlestudy import census, figures


def rows(P, k, *, depth=1, kind="end", grad=1e-12, zero=None, level=np.nan, exact=True,
         loss=0.1, flat=False, lo=0.0, hi=None):  # fmt: skip
    """Synthetic end-point rows: one per value of ``k`` at size ``P`` (inexact ones with
    bounds ``lo`` ... ``hi``, default 0 ... P)."""
    k = np.asarray(k, float)
    n = k.size
    zero = np.zeros(n) if zero is None else np.asarray(zero, float)
    hi = P if hi is None else hi
    return pd.DataFrame({
        "start_kind": kind, "train_diverged": False, "grad_norm_sq": grad, "num_params": P,
        "depth": depth, "loss": loss, "gradient_flat": flat, "start_loss_level": level,
        "num_samples": 100, "num_outputs": 10,
        "num_negative@1e-5": k if exact else np.nan, "num_zero@1e-5": zero,
        "num_negative_lo@1e-5": k if exact else lo,
        "num_negative_hi@1e-5": k if exact else hi,
    } | {"_n": np.arange(n)}).drop(columns="_n")  # fmt: skip


def test_summary_medians_fractions_and_cutoff():
    df = pd.concat([
        rows(100, [0, 2, 4, 6, 8], zero=[0, 20, 20, 20, 20]),
        rows(100, [50], grad=1e-3),  # above the cutoff: left out, but counted as an end point
        rows(100, [1], kind="step"),  # not an end point
        rows(2000, [0, 0, 10], exact=True),
        rows(2000, [0], exact=False),  # an inexact count: left out of k, counted
    ])  # fmt: skip
    t = census.census_summary(df, cutoff=1e-6).set_index("num_params")
    assert t.loc[100, "num_ends"] == 6 and t.loc[100, "num_kept"] == 5
    assert t.loc[100, "k"] == 4 and t.loc[100, "index"] == 0.04
    # k / #{|lambda| > tau}: 0/100, 2/80, 4/80, 6/80, 8/80 -> median 4/80
    assert t.loc[100, "index_nonflat"] == pytest.approx(4 / 80)
    assert t.loc[100, "fraction_saddle"] == pytest.approx(4 / 5)
    # 4 of 5: the exact (Clopper-Pearson) 95% interval from binomial tables
    assert t.loc[100, ["fraction_saddle_lo", "fraction_saddle_hi"]].tolist() == pytest.approx(
        [0.284, 0.995], abs=5e-4
    )
    assert t.loc[100, "num_saddle"] == 4 and t.loc[100, "num_determined"] == 5
    assert t.loc[100, "k_lo"] <= 4 <= t.loc[100, "k_hi"]
    assert t.loc[100, "k_n"] == 5 and t.loc[100, "loss_n"] == 5
    assert t.loc[2000, "num_exact"] == 3 and t.loc[2000, "num_inexact"] == 1
    assert t.loc[2000, "k"] == 0 and t.loc[2000, "k_n"] == 3 and t.loc[2000, "loss_n"] == 4
    # The inexact point is undetermined (bounds 0 ... P), not a minimum.
    assert t.loc[2000, "fraction_undetermined"] == pytest.approx(1 / 4)
    assert t.loc[2000, "fraction_saddle"] == pytest.approx(1 / 3)
    assert t.loc[100, "p_over_nc"] == pytest.approx(0.1)


def test_summary_fractions_of_all_or_none_have_exact_nonzero_width_intervals():
    df = pd.concat([rows(100, [3, 5, 2, 7]), rows(1000, [0] * 8), rows(5000, [9] * 12)])
    t = census.census_summary(df).set_index("num_params")
    # Known Clopper-Pearson 95% intervals: 4/4 -> [0.398, 1], 0/8 -> [0, 0.369],
    # 12/12 -> [0.735, 1]; a bootstrap of all-equal 0/1 values gives [1, 1] and [0, 0].
    bounds = t[["fraction_saddle_lo", "fraction_saddle_hi"]]
    assert bounds.loc[100].tolist() == pytest.approx([0.398, 1.0], abs=5e-4)
    assert bounds.loc[1000].tolist() == pytest.approx([0.0, 0.369], abs=5e-4)
    assert bounds.loc[5000].tolist() == pytest.approx([0.735, 1.0], abs=5e-4)
    # No point undetermined: 0 of 8 is at most 0.369.
    assert t.loc[1000, "fraction_undetermined_hi"] == pytest.approx(0.369, abs=5e-4)


def test_inexact_points_are_reported_apart_and_bracket_the_median_of_all_points():
    # P = 5000: three exact counts of 10 and four inexact ones with 50 ... 80 negatives (the
    # high-k points a matrix-free count leaves inexact). The median over the exact ones is 10;
    # over all seven it lies in [median(10, 10, 10, 50, 50, 50, 50), median(10, .., 80)].
    df = pd.concat([rows(100, [1, 2, 3]), rows(5000, [10, 10, 10]),
                    rows(5000, [0] * 4, exact=False, lo=50.0, hi=80.0)])  # fmt: skip
    t = census.census_summary(df).set_index("num_params")
    assert t.loc[5000, "num_inexact"] == 4 and t.loc[5000, "k_n"] == 3
    assert t.loc[5000, "k"] == 10
    assert t.loc[5000, ["k_all_lo", "k_all_hi"]].tolist() == [50.0, 80.0]
    assert t.loc[100, ["k_all_lo", "k_all_hi"]].tolist() == [2.0, 2.0]  # all exact: = k
    assert t.loc[5000, "num_saddle"] == 7  # certified by their lower bounds of 50
    fit = census.fit_growth(df).set_index(["regime", "depth"])
    assert fit.loc[("all", 1), "num_inexact"] == 4 and fit.loc[("all", 1), "num_points"] == 6
    # The figure draws them apart: a bar from 50 to 80 at P = 5000 (k panel) and from
    # 0.01 to 0.016 (k / P panel), and says how many were left out of the median.
    from matplotlib.collections import LineCollection

    df["study"], df["config_hash"] = "s", "h"
    fig = figures.census_figure(df)
    for ax, (lo, hi) in zip(fig.axes[:2], [(50, 80), (0.01, 0.016)]):
        bars = [
            seg
            for c in ax.collections
            if isinstance(c, LineCollection)
            for seg in c.get_segments()
            if seg[0, 0] == 5000
        ]
        assert any(seg[:, 1].tolist() == pytest.approx([lo, hi]) for seg in bars), bars
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert "3/7 (+4 inexact)" in labels, labels


def test_growth_exponent_is_recovered_before_and_after_interpolation():
    # k = 5 P^0.8 below N x outputs = 1,000 and k = 3e-3 P^1.5 above, with scatter (k >> 1,
    # where the growth of k + 1 is that of k).
    rng = np.random.default_rng(0)
    parts = []
    for P in (20, 50, 120, 300, 700):
        parts.append(rows(P, np.round(5 * P**0.8 * rng.uniform(0.9, 1.1, 9))))
    for P in (2000, 5000, 12000, 30000):
        parts.append(rows(P, np.round(3e-3 * P**1.5 * rng.uniform(0.9, 1.1, 9))))
    parts.append(rows(100, [0, 0, 0], depth=2))  # one size of median 0: no fit for depth 2
    fit = census.fit_growth(pd.concat(parts)).set_index(["regime", "depth"])
    before, after = fit.loc[("before", 1)], fit.loc[("after", 1)]
    assert before["exponent"] == pytest.approx(0.8, abs=0.03)
    assert before["exponent_lo"] <= 0.8 <= before["exponent_hi"]
    assert after["exponent"] == pytest.approx(1.5, abs=0.03)
    assert after["p_min"] == 2000 and after["num_sizes"] == 4
    assert math.isnan(fit.loc[("before", 2), "exponent"])
    assert fit.loc[("before", 2), "num_sizes_zero"] == 1
    assert (fit.loc[fit["exponent"].notna(), "num_resamples"] == 1000).all()
    assert (fit["num_resamples_degenerate"] == 0).all()
    # Pooled: depth 2's one size only fits its own intercept; the slope is depth 1's.
    assert fit.loc[("before", "all"), "exponent"] == pytest.approx(before["exponent"])
    assert fit.loc[("before", "all"), "rule"] == "log(median k + 1) = b log P + c_depth"


def test_a_size_of_median_zero_stays_in_the_fit():
    # k + 1 = P^(1/2) exactly, P = 1, 4, 16, 64: k = 0, 1, 3, 7. The size with k = 0 is on
    # the law and in the fit (dropping it and fitting log k would give log 7 / log 16 = 0.70).
    df = pd.concat([rows(P, [k] * 5) for P, k in ((1, 0), (4, 1), (16, 3), (64, 7))])
    fit = census.fit_growth(df).set_index(["regime", "depth"]).loc[("before", 1)]
    assert fit["exponent"] == pytest.approx(0.5, abs=1e-12)
    assert fit[["exponent_lo", "exponent_hi"]].tolist() == pytest.approx([0.5, 0.5], abs=1e-12)
    assert fit["num_sizes"] == 4 and fit["num_sizes_zero"] == 1
    assert fit["rule"] == "log(median k + 1) = b log P + c"


def test_every_resample_fits_every_size_even_where_its_median_is_zero():
    # k + 1 = 2 P^(1/2) at P = 4, 16, 64 (k = 3, 7, 15, no scatter); at P = 1, 17 zeros and
    # 15 threes (median 0). A resample's median at P = 1 is 0 (k + 1 = 1), 1.5 or 3 (k + 1 = 4):
    # by hand, in log2 units, x = 0, 2, 4, 6 and y = log2(k1 + 1), 2, 3, 4, the slope is
    # (13 - 3 log2(k1 + 1)) / 20: 0.65 for median 0, 0.35 for median 3. About 57% of the
    # resamples have median 0 and 30% median 3, so the 95% interval is [0.35, 0.65]. Had a
    # resample of median 0 dropped P = 1, it would give 0.5, and the upper end would be 0.5.
    df = pd.concat([rows(1, [0] * 17 + [3] * 15), rows(4, [3] * 5), rows(16, [7] * 5),
                    rows(64, [15] * 5)])  # fmt: skip
    fit = census.fit_growth(df).set_index(["regime", "depth"]).loc[("before", 1)]
    assert fit["exponent"] == pytest.approx(0.65, abs=1e-12)
    assert fit["exponent_lo"] == pytest.approx(0.35, abs=1e-12)
    assert fit["exponent_hi"] == pytest.approx(0.65, abs=1e-12)
    assert fit["num_resamples"] == 1000 and fit["num_resamples_degenerate"] == 0


def test_pooled_fit_gives_each_depth_its_intercept_and_recovers_the_common_slope():
    # k + 1 = 10 P^(1/2) at depth 1 (P = 4, 16, 64) and k + 1 = P^(1/2) at depth 2
    # (P = 256, 1024, 4096): the same growth, different intercepts, different ranges of P.
    df = pd.concat([rows(4, [19] * 3), rows(16, [39] * 3), rows(64, [79] * 3),
                    rows(256, [15] * 3, depth=2), rows(1024, [31] * 3, depth=2),
                    rows(4096, [63] * 3, depth=2)])  # fmt: skip
    df["num_samples"] = 10_000  # all below interpolation
    fit = census.fit_growth(df).set_index(["regime", "depth"])
    for depth in ("all", 1, 2):
        assert fit.loc[("before", depth), "exponent"] == pytest.approx(0.5, abs=1e-12)
    assert fit.loc[("before", "all"), "num_sizes"] == 6
    # One line through all six (P and depth confounded) would be biased: by hand, in log2
    # units, x = 2, 4, ..., 12 and y = log2(20), log2(40), log2(80), 4, 5, 6.
    x = np.array([2, 4, 6, 8, 10, 12.0])
    y = np.array([np.log2(20), np.log2(40), np.log2(80), 4, 5, 6])
    assert np.polyfit(x, y, 1)[0] < 0.25


def test_pooled_fit_with_scatter_recovers_the_common_slope():
    rng = np.random.default_rng(2)
    parts = [rows(P, np.round(a * P**0.9 * rng.uniform(0.9, 1.1, 9)), depth=d)
             for d, a, sizes in ((1, 2.0, (50, 150, 400)), (2, 8.0, (100, 300, 900)),
                                 (4, 20.0, (200, 600)))
             for P in sizes]  # fmt: skip
    fit = census.fit_growth(pd.concat(parts)).set_index(["regime", "depth"])
    pooled = fit.loc[("before", "all")]
    assert pooled["exponent"] == pytest.approx(0.9, abs=0.03)
    assert pooled["exponent_lo"] <= 0.9 <= pooled["exponent_hi"]


def test_degenerate_resamples_are_counted_never_dropped():
    rng = np.random.default_rng(0)
    groups = np.repeat([0, 1], 10)
    values = np.r_[np.zeros(9), 1.0, np.ones(10)]
    # NaN whenever a resample of group 0 misses its single 1 (about a third of them).
    lo, hi, n, degenerate = census._interval_within(
        groups, lambda i: 1.0 if values[i[:10]].any() else math.nan, rng
    )
    assert n == 1000 and 0 < degenerate < 1000
    assert math.isnan(lo) and math.isnan(hi)
    lo, hi, n, degenerate = census._interval_within(groups, lambda i: values[i].mean(), rng)
    assert degenerate == 0 and lo <= 0.55 <= hi


def test_matched_loss_slope_contains_zero_when_the_index_is_flat_and_not_when_it_grows():
    rng = np.random.default_rng(1)
    flat, grows = [], []
    for P in (100, 300, 1000, 3000):
        flat.append(rows(P, np.round(0.05 * P * rng.uniform(0.8, 1.2, 12)), kind="loss",
                         level=0.8))  # fmt: skip
        # index = 0.02 log10(P): 0.04 ... 0.07
        grows.append(rows(P, np.round(0.02 * np.log10(P) * P * rng.uniform(0.97, 1.03, 12)),
                          kind="loss", level=0.9))  # fmt: skip
    df = pd.concat(flat + grows)
    slope = census.fit_index_slope(df).set_index("start_loss_level")
    assert slope.loc[0.8, "slope_lo"] < 0 < slope.loc[0.8, "slope_hi"]
    assert slope.loc[0.9, "slope_per_decade"] == pytest.approx(0.02, abs=0.004)
    assert slope.loc[0.9, "slope_lo"] > 0
    summary = census.matched_loss_summary(df)
    assert set(summary["selection"]) == {"strict", "gradient_flat", "loose"}
    strict = summary[summary["selection"] == "strict"]
    assert (strict["num_points"] == 12).all()  # grad 1e-12 < 1e-10
    assert (summary[summary["selection"] == "gradient_flat"]["num_points"] == 0).all()


def test_census_figures_draw_from_synthetic_rows(tmp_path):
    df = pd.concat([rows(100, [0, 1, 2]), rows(1000, [3, 4], depth=2),
                    rows(1000, [5, 6], kind="loss", level=0.5)])  # fmt: skip
    df["study"], df["config_hash"] = "s", "h"
    paths = figures.save_figure(figures.census_figure(df), tmp_path / "c", ("png",))
    paths += figures.save_figure(figures.matched_loss_figure(df), tmp_path / "m", ("png",))
    assert all(p.stat().st_size > 10_000 for p in paths)
    # No end point below the cutoff (a study without a finder): drawn, said, not a crash.
    none = pd.concat([rows(100, [1], grad=1e-3), rows(1000, [2], grad=1e-3)])
    none["study"], none["config_hash"] = "s", "h"
    figures.save_figure(figures.census_figure(none, cutoff=1e-6), tmp_path / "n", ("png",))


@pytest.mark.slow  # about 3.5 minutes on 2 idle cores
def test_quick_census_end_to_end(tmp_path):
    # The quick census: exact counts at every row, two decades up to P >= 1e4, its figures.
    from saddlestudy import analysis, sweep

    out = tmp_path / "results"
    assert sweep.main(["census", "--quick", "--out", str(out), "--quiet"]) == 0
    df = analysis.load(out / "census")
    assert df["counts_exact"].all()
    assert df["num_negative@1e-5"].notna().all() and df["num_negative@rel1e-3"].notna().all()
    assert df["num_params"].max() >= 1e4 and df["num_params"].max() / df["num_params"].min() >= 100
    assert census.interpolation_threshold(df) == 512 * 10
    assert figures.main([str(out / "census"), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "census.png").exists()


def test_census_figure_reads_relative_tolerances_named_with_more_than_one_digit(tmp_path):
    # Counts at tau = 1.5e-3 lambda_max, stored as "@rel1.5e-3" (once "@rel2e-3"): the
    # figure finds the tolerance in the column names and reads its columns back.
    df = pd.concat([rows(100, [0, 1, 2]), rows(1000, [3, 4, 5])])
    for kind in ("num_negative", "num_zero", "num_negative_lo", "num_negative_hi"):
        df[f"{kind}@rel1.5e-3"] = df[f"{kind}@1e-5"]
    df["study"], df["config_hash"] = "s", "h"
    assert figures._study_relative_tol(df) == 1.5e-3
    fig = figures.census_figure(df, relative_tol=figures._study_relative_tol(df))
    assert any("0.0015·λmax" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    figures.save_figure(fig, tmp_path / "r", ("png",))


def test_the_footer_overlaps_no_label(tmp_path):
    """The provenance footer sits below every axis label once drawn (it used to be placed at
    a fixed spot that the bottom-left x-axis label of the census figures ran into)."""
    df = pd.concat([rows(100, [0, 1, 2]), rows(1000, [3, 4], depth=2),
                    rows(1000, [5, 6], kind="loss", level=0.5)])  # fmt: skip
    df["study"], df["config_hash"] = "census", "85c817bca4c0355a"
    for fig in (figures.census_figure(df), figures.matched_loss_figure(df)):
        fig.savefig(tmp_path / "f.png")  # runs the layout
        renderer = fig.canvas.get_renderer()
        (footer,) = [t for t in fig.texts if t.get_text().startswith("study census")]
        box = footer.get_window_extent(renderer)
        labels = [ax.xaxis.label for ax in fig.axes] + [
            t for ax in fig.axes for t in ax.get_xticklabels()]  # fmt: skip
        for label in labels:
            if label.get_text():
                assert not box.overlaps(label.get_window_extent(renderer)), label.get_text()
