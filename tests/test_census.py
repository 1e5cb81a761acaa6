"""The census analysis (saddlestudy.census) on synthetic rows with known answers."""

import math

import numpy as np
import pandas as pd
import pytest

from saddlestudy import census, figures


def rows(P, k, *, depth=1, kind="end", grad=1e-12, zero=None, level=np.nan, exact=True,
         loss=0.1, flat=False):  # fmt: skip
    """Synthetic end-point rows: one per value of ``k`` at size ``P``."""
    k = np.asarray(k, float)
    n = k.size
    zero = np.zeros(n) if zero is None else np.asarray(zero, float)
    return pd.DataFrame({
        "start_kind": kind, "train_diverged": False, "grad_norm_sq": grad, "num_params": P,
        "depth": depth, "loss": loss, "gradient_flat": flat, "start_loss_level": level,
        "num_samples": 100, "num_outputs": 10,
        "num_negative@1e-5": k if exact else np.nan, "num_zero@1e-5": zero,
        "num_negative_lo@1e-5": k if exact else 0.0,
        "num_negative_hi@1e-5": k if exact else P,
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
    assert t.loc[100, "k_lo"] <= 4 <= t.loc[100, "k_hi"]
    assert t.loc[2000, "num_exact"] == 3 and t.loc[2000, "num_inexact"] == 1
    assert t.loc[2000, "k"] == 0
    # The inexact point is undetermined (bounds 0 ... P), not a minimum.
    assert t.loc[2000, "fraction_undetermined"] == pytest.approx(1 / 4)
    assert t.loc[2000, "fraction_saddle"] == pytest.approx(1 / 3)
    assert t.loc[100, "p_over_nc"] == pytest.approx(0.1)


def test_growth_exponent_is_recovered_before_and_after_interpolation():
    # k = 0.5 P^0.8 below N x outputs = 1,000 and k = 3e-4 P^1.5 above, with scatter.
    rng = np.random.default_rng(0)
    parts = []
    for P in (20, 50, 120, 300, 700):
        parts.append(rows(P, np.round(0.5 * P**0.8 * rng.uniform(0.9, 1.1, 9))))
    for P in (2000, 5000, 12000, 30000):
        parts.append(rows(P, np.round(3e-4 * P**1.5 * rng.uniform(0.9, 1.1, 9))))
    parts.append(rows(100, [0, 0, 0], depth=2))  # one size of median 0: no fit for depth 2
    fit = census.fit_growth(pd.concat(parts)).set_index(["regime", "depth"])
    before, after = fit.loc[("before", 1)], fit.loc[("after", 1)]
    assert before["exponent"] == pytest.approx(0.8, abs=0.03)
    assert before["exponent_lo"] <= 0.8 <= before["exponent_hi"]
    assert after["exponent"] == pytest.approx(1.5, abs=0.03)
    assert after["p_min"] == 2000 and after["num_sizes"] == 4
    assert math.isnan(fit.loc[("before", 2), "exponent"])
    assert fit.loc[("before", 2), "num_sizes_zero"] == 1


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
