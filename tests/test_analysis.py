import numpy as np
import pandas as pd
import pytest

from saddlestudy import analysis


def synthetic(rows):
    """Rows shaped like the sweep's: (P, loss, num_negative, num_positive, converged, flat)."""
    df = pd.DataFrame(
        [
            {
                "num_params": P, "depth": 1, "widths": str(P), "activation": "tanh",
                "optimizer": opt, "start_kind": "end", "train_loss": loss, "loss": loss,
                "num_negative@1e-5": neg, "num_positive@1e-5": pos,
                "num_zero@1e-5": P - neg - pos, "converged": conv, "gradient_flat": flat,
                "grad_norm_sq": 1e-12 if conv else 1e-3,
            }
            for P, loss, neg, pos, conv, flat, opt in rows
        ]
    )  # fmt: skip
    return analysis.with_status(df)


def test_status_keeps_converged_and_gradient_flat_apart():
    df = synthetic([(10, 1.0, 0, 10, True, False, "a"), (10, 1.0, 0, 10, False, True, "a"),
                    (10, 1.0, 0, 10, False, False, "a")])  # fmt: skip
    assert df["status"].tolist() == ["converged", "gradient_flat", "not_converged"]


def test_fraction_minima_counts_only_converged_points():
    rows = [(10, 0.1, 0, 10, True, False, "a")] * 4 + [(10, 0.5, 2, 8, True, False, "a")] * 6
    rows += [(10, 0.3, 0, 10, False, True, "a")] * 2  # minima by counts, but gradient-flat
    rows += [(100, 0.1, 0, 100, True, False, "a")] * 5
    out = analysis.fraction_minima(synthetic(rows)).set_index("num_params")
    assert out.loc[10, "fraction_minima"] == pytest.approx(0.4)
    assert out.loc[10, "num_converged"] == 10 and out.loc[10, "num_gradient_flat"] == 2
    assert out.loc[10, "num_minima"] == 4
    assert out.loc[10, "ci_low"] <= 0.4 <= out.loc[10, "ci_high"]
    assert out.loc[100, "fraction_minima"] == 1.0


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    x = np.random.default_rng(0).normal(size=200)
    a, b = analysis.bootstrap_ci(x, seed=1), analysis.bootstrap_ci(x, seed=1)
    assert a == b and a[1] < a[0] < a[2]
    assert a[2] - a[1] == pytest.approx(2 * 1.96 / np.sqrt(200), rel=0.25)
    assert all(np.isnan(analysis.bootstrap_ci([])))


def test_index_vs_loss_rank_correlation():
    rows = [(100, loss, int(loss * 50), 100 - int(loss * 50), True, False, "a")
            for loss in np.linspace(0.0, 1.0, 20)]  # fmt: skip
    out = analysis.index_vs_loss(synthetic(rows))
    assert out["spearman_rho"].iloc[0] == pytest.approx(1.0)
    assert out["num_converged"].iloc[0] == 20


def test_index_summary_and_quantiles():
    rows = [(10, 0.1 * k, k, 10 - k, True, False, "a") for k in range(10)]
    summary = analysis.index_summary(synthetic(rows))
    assert summary["median_index"].iloc[0] == pytest.approx(0.45)
    q = analysis.index_at_loss_quantiles(synthetic(rows), quantiles=(0.0, 1.0))
    assert q["num_points"].sum() == 10
    assert q["mean_index"].iloc[0] < q["mean_index"].iloc[1]


def test_fit_recovers_the_three_halves_law_and_the_line():
    # Minima (index 0) below eps_c = 1, saddles of growing index above it.
    loss = np.linspace(0.5, 3.0, 30)
    pb = np.where(loss > 1.0, 0.4 * np.abs(loss - 1.0) ** 1.5, 0.0)
    fit = analysis.fit_index_vs_loss(loss, pb)
    assert fit["alpha0"] == pytest.approx(0.4, rel=1e-6)
    assert fit["eps_c"] == pytest.approx(1.0, rel=1e-6)
    assert fit["rss_pb"] < 1e-8 < fit["rss_linear"]
    line = 0.3 * loss + 0.02
    fit = analysis.fit_index_vs_loss(loss, line)
    assert fit["slope"] == pytest.approx(0.3) and fit["rss_linear"] < 1e-20


def test_optimizer_summary_splits_by_optimizer():
    rows = [(10, 0.1, 0, 10, True, False, "adam")] * 3 + [
        (10, 0.9, 3, 7, True, False, "irprop-")
    ] * 2
    out = analysis.optimizer_summary(synthetic(rows)).set_index("optimizer")
    assert (
        out.loc["adam", "fraction_minima"] == 1.0 and out.loc["irprop-", "fraction_minima"] == 0.0
    )
    assert out.loc["irprop-", "median_index"] == pytest.approx(0.3)


def test_spectral_density_integrates_to_one():
    grid = np.linspace(-5, 5, 2001)
    density = analysis.spectral_density(np.array([-1.0, 0.0, 0.0, 2.0]), grid, sigma=0.1)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, rel=1e-6)
    assert density[np.argmin(np.abs(grid))] > density[np.argmin(np.abs(grid - 2.0))]


def test_linear_autoencoder_reference_matches_dense_hessians_of_the_sample_loss(x64):
    # An independent path: rotated samples, the per-sample loss through the MLP, the
    # package's dense Hessian, at points built from the data's own eigenvectors.
    import itertools

    import jax
    import jax.numpy as jnp

    from saddlestudy import data, losses, models
    from saddlestudy.hessian import dense_hessian

    n, p = 5, 2
    lam = [5.0, 4.0, 3.0, 2.0, 1.0]
    ds = data.linear_autoencoder(n, 400, eigenvalues=lam, seed=1, dtype="float64")
    loss = losses.make_loss_fn(
        models.make_apply(models.linear_autoencoder_config(n, p)),
        jnp.asarray(ds.x),
        jnp.asarray(ds.y),
        loss="half_mse",
    )
    U = ds.metadata["eigenvectors"]
    ref = analysis.linear_autoencoder_reference(lam, p).set_index("subset")
    subsets = [s for r in range(p + 1) for s in itertools.combinations(range(n), r)]
    assert sorted(ref.index) == sorted(subsets)
    for subset in subsets:
        W1 = np.zeros((p, n))
        W1[: len(subset)] = U[:, list(subset)].T
        params = {"layers": {0: {"kernel": jnp.asarray(W1.T)}, 1: {"kernel": jnp.asarray(W1)}}}
        assert float(jax.jit(loss)(params)) == pytest.approx(ref.loc[[subset], "loss"].item())
        eig = np.linalg.eigvalsh(np.asarray(dense_hessian(loss, params)))
        assert ref.loc[[subset], "num_negative"].item() == int(np.sum(eig < -1e-5)), subset
    # Only the global minimum (the top-p directions) has index 0.
    assert list(ref.index[ref["num_negative"] == 0]) == [(0, 1)]


def with_bounds(rows):
    """Rows with stored bounds: (num_negative or None, lo, hi); P = 10, all converged."""
    df = synthetic([(10, 0.1 * k, 0, 10, True, False, "a") for k in range(len(rows))])
    neg, lo, hi = zip(*rows)
    return df.assign(**{"num_negative@1e-5": pd.array(neg, dtype="Int64").astype(float),
                        "num_negative_lo@1e-5": lo, "num_negative_hi@1e-5": hi})  # fmt: skip


def test_classify_minimum_only_when_certified_and_undetermined_when_bounds_straddle():
    df = with_bounds([(None, 0, 3), (0, 0, 0), (None, 2, 5), (2, 2, 2), (None, 0, 10)])
    assert analysis.classify(df).tolist() == [
        "undetermined", "minimum", "saddle", "saddle", "undetermined"
    ]  # fmt: skip
    out = analysis.fraction_minima(df).iloc[0]
    assert out["num_minima"] == 1 and out["num_undetermined"] == 2
    assert out["fraction_minima"] == pytest.approx(0.2)
    assert out["fraction_undetermined"] == pytest.approx(0.4)
    assert analysis.optimizer_summary(df).iloc[0]["fraction_minima"] == pytest.approx(0.2)


def test_classify_reads_results_from_before_the_bounds_were_stored():
    # Old parts: dense counts (exact) and Lanczos cells with empty counts, no lo/hi columns.
    df = synthetic([(10, 0.1, 0, 10, True, False, "a"), (10, 0.2, 3, 7, True, False, "a")])
    df = pd.concat([df, df.iloc[:1].assign(**{"num_negative@1e-5": np.nan})], ignore_index=True)
    assert analysis.classify(df).tolist() == ["minimum", "saddle", "undetermined"]
    # One study with old and new parts: the bounds of the old rows come from their counts.
    new = with_bounds([(None, 1, 4)])
    both = pd.concat([df, new], ignore_index=True)
    assert analysis.classify(both).tolist() == ["minimum", "saddle", "undetermined", "saddle"]
    with pytest.raises(KeyError, match="no counts at 1e-3"):
        analysis.classify(df, zero_tol=1e-3)


def test_a_missing_count_is_never_an_index_of_zero():
    # Two exact saddles (index 0.4) and three points without an exact count.
    df = with_bounds([(4, 4, 4), (4, 4, 4), (None, 0, 6), (None, 0, 6), (None, 0, 6)])
    summary = analysis.index_summary(df).iloc[0]
    assert summary["median_index"] == pytest.approx(0.4) and summary["num_exact"] == 2
    assert analysis.optimizer_summary(df).iloc[0]["median_index"] == pytest.approx(0.4)
    q = analysis.index_at_loss_quantiles(df, quantiles=(0.5,))
    assert q["num_points"].sum() == 2 and q["mean_index"].iloc[0] == pytest.approx(0.4)
    reference = pd.DataFrame({"loss": [0.0, 0.2], "num_negative": [4, 0]})
    assert analysis.exact_matches(df, reference).tolist() == [True, False, False, False, False]


def fd_hessian(f, x, h=1e-3):
    """Central second differences of f at x (exact up to O(h^2) f'''' for a polynomial)."""
    n = x.size
    H = np.zeros((n, n))
    E = np.eye(n) * h
    for i in range(n):
        for j in range(n):
            H[i, j] = (
                f(x + E[i] + E[j]) - f(x + E[i] - E[j]) - f(x - E[i] + E[j]) + f(x - E[i] - E[j])
            ) / (4 * h * h)
    return 0.5 * (H + H.T)


def test_exact_reference_matches_an_independent_construction():
    # Baldi & Hornik (1989): the critical points of the linear autoencoder x -> W2 W1 x with
    # data covariance diag(sigma) are the projections onto subsets S of at most p
    # eigendirections, at loss (sum sigma - sum_S sigma) / 2. Here their Hessians come from
    # finite differences of the data loss tr((I - W2 W1) Sigma (I - W2 W1)^T) / 2, in NumPy.
    import itertools
    import json

    sigma, n, p = np.array([3.0, 1.0, 2.5]), 3, 1  # not 1..n, the loader default

    def loss(theta):
        w1, w2 = theta[: n * p].reshape(p, n), theta[n * p :].reshape(n, p)
        r = np.eye(n) - w2 @ w1
        return 0.5 * np.trace(r @ np.diag(sigma) @ r.T)

    expected = []
    for k in range(p + 1):
        for subset in itertools.combinations(range(n), k):
            w1 = np.zeros((p, n))
            w1[np.arange(k), list(subset)] = 1.0
            theta = np.concatenate([w1.ravel(), w1.T.ravel()])
            eig = np.linalg.eigvalsh(fd_hessian(loss, theta))
            # Eigenvalues are differences of the sigmas (>= 1 apart) or exact zeros; the
            # finite-difference error is ~1e-6, so 1e-3 separates them.
            expected.append((round(loss(theta), 6), int(np.sum(eig < -1e-3))))
    df = pd.DataFrame(
        {
            "dataset": ["linear_autoencoder"] * 3, "activation": "identity", "depth": 1,
            "num_params": 2 * n * p, "loss_name": "half_mse", "width": p,
            "data_args": json.dumps({"n": n, "eigenvalues": sigma.tolist()}),
            # A saddle and a minimum of the list, then the right loss with a wrong count.
            "loss": [expected[0][0], 0.5 * (sigma.sum() - 3.0), 0.5 * (sigma.sum() - 3.0)],
            "num_negative@1e-5": [expected[0][1], 0, 1],
        }
    )  # fmt: skip
    reference = analysis.exact_reference(df)
    got = sorted(zip(np.round(reference["loss"], 6), reference["num_negative"]))
    assert got == sorted(expected)
    assert analysis.exact_matches(df, reference).tolist() == [True, True, False]
    # Not the autoencoder (an activation, or biases: another P): no reference.
    assert analysis.exact_reference(df.assign(activation="tanh")) is None
    assert analysis.exact_reference(df.assign(num_params=2 * n * p + n + p)) is None


# Exact (Clopper-Pearson) 95% intervals, to 3 digits, from tables of the binomial
# distribution: k of n -> (low, high).
CLOPPER_PEARSON = {(3, 3): (0.292, 1.0), (4, 4): (0.398, 1.0), (12, 12): (0.735, 1.0),
                   (0, 4): (0.0, 0.602), (0, 8): (0.0, 0.369), (4, 5): (0.284, 0.995)}  # fmt: skip


@pytest.mark.parametrize("k, n", sorted(CLOPPER_PEARSON))
def test_proportion_ci_is_the_exact_clopper_pearson_interval(k, n):
    from scipy import stats

    est, lo, hi = analysis.proportion_ci(k, n)
    assert est == k / n
    assert (lo, hi) == pytest.approx(CLOPPER_PEARSON[k, n], abs=5e-4)
    # The definition: beta quantiles (Clopper & Pearson 1934), not the package's path.
    beta_lo = stats.beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    beta_hi = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    assert (lo, hi) == pytest.approx((beta_lo, beta_hi), abs=1e-9)
    assert hi > lo  # never zero-width, unlike a bootstrap of all-equal 0/1 values


def test_proportion_ci_of_nothing_is_nan_and_bad_counts_are_refused():
    assert all(np.isnan(analysis.proportion_ci(0, 0)))
    with pytest.raises(ValueError, match="4 of 3"):
        analysis.proportion_ci(4, 3)


def test_fractions_of_all_or_none_get_exact_intervals_not_zero_width_ones():
    # P = 10: 3 of 3 converged points are minima; P = 20: 0 of 4 (saddles); P = 30: 12 of 12.
    rows = [(10, 0.1, 0, 10, True, False, "a")] * 3 + [(20, 0.4, 2, 18, True, False, "a")] * 4
    rows += [(30, 0.1, 0, 30, True, False, "a")] * 12
    out = analysis.fraction_minima(synthetic(rows)).set_index("num_params")
    assert out.loc[10, ["ci_low", "ci_high"]].tolist() == pytest.approx([0.292, 1.0], abs=5e-4)
    assert out.loc[20, ["ci_low", "ci_high"]].tolist() == pytest.approx([0.0, 0.602], abs=5e-4)
    assert out.loc[30, ["ci_low", "ci_high"]].tolist() == pytest.approx([0.735, 1.0], abs=5e-4)
    # No point is undetermined: 0 of 4 is at most 0.602, not [0, 0].
    undetermined = out.loc[20, ["fraction_undetermined_lo", "fraction_undetermined_hi"]]
    assert undetermined.tolist() == pytest.approx([0.0, 0.602], abs=5e-4)
    summary = analysis.optimizer_summary(synthetic(rows)).set_index("num_params")
    assert summary.loc[10, ["ci_low", "ci_high"]].tolist() == pytest.approx([0.292, 1.0], abs=5e-4)
    assert summary.loc[20, "fraction_undetermined_hi"] == pytest.approx(0.602, abs=5e-4)
    assert summary.loc[10, "num_exact"] == 3  # the median index is over 3 points, said


def test_tolerance_column_names_keep_every_digit_and_the_stored_names():
    # One-digit tolerances keep the names stored results use.
    assert analysis.tol_column("num_negative", 1e-5) == "num_negative@1e-5"
    assert analysis.tol_column("num_negative", 1e-3, relative=True) == "num_negative@rel1e-3"
    assert analysis.tol_column("num_zero", 1e-10) == "num_zero@1e-10"
    assert analysis.tol_column("num_negative", 1e-8) == "num_negative@1e-8"
    # Others: the shortest name that reads back as the same number.
    assert analysis.tol_column("num_negative", 1.2e-5) == "num_negative@1.2e-5"
    assert analysis.tol_column("num_negative", 1.5e-3, relative=True) == "num_negative@rel1.5e-3"
    taus = [1e-5, 1.2e-5, 1.25e-5, 2.5e-7, 0.1 + 0.2, 1 / 3, 3e-4, 1.0000001e-5]
    names = [analysis.tol_column("num_negative", t) for t in taus]
    assert len(set(names)) == len(taus)
    assert [float(n.split("@")[1]) for n in names] == taus
