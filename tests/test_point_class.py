"""How a finder run ends (critical.point_class): against functions whose behaviour is known in
closed form, and stored per row by the sweep."""

import jax.numpy as jnp
import numpy as np
import pytest

from saddlestudy import analysis, critical, store


def _run(loss, start, max_iters):
    params = {"w": jnp.asarray(start, jnp.float64)[None]}  # one start: a leading axis R = 1
    return critical.find_critical_points(
        loss, params, method="newton_mr", grad_tol=1e-10, max_iters=max_iters
    )


def _class(cp):
    return critical.point_class(
        cp.converged, cp.status, cp.gradient_flat, cp.iterations, cp.param_norm_history,
        cp.grad_norm_sq_history,
    )[0]  # fmt: skip


def test_a_run_to_a_critical_point_at_infinity_is_escaping(x64):
    # L = exp(-w1) + w2^2 / 2: no critical point at any finite w1; Newton steps w1 by +1
    # each iteration (g / H = -1) while |grad L|^2 = exp(-2 w1) decays.
    def loss(p):
        return jnp.exp(-p["w"][0]) + 0.5 * p["w"][1] ** 2

    cp = _run(loss, [0.0, 0.3], max_iters=10)
    norms = np.asarray(cp.param_norm_history[0])
    assert not bool(cp.converged[0]) and norms[-1] > norms[0] + 5
    assert _class(cp) == "escaping"
    assert bool(cp.gradient_flat[0])  # Frye's test fires too: escaping is the reason why
    assert float(cp.distance_moved[0]) == pytest.approx(
        float(np.linalg.norm(np.asarray(cp.params["w"][0]) - np.array([0.0, 0.3]))), rel=1e-12
    )


def test_a_slow_run_to_a_finite_critical_point_is_budget_and_a_fast_one_critical(x64):
    # L = w^4: Newton's step is -w/3, so w_k = (2/3)^k w_0: |theta| shrinks, never escaping.
    def quartic(p):
        return jnp.sum(p["w"] ** 4)

    assert _class(_run(quartic, [1.0, -2.0], max_iters=5)) == "budget"

    def quadratic(p):
        return 0.5 * jnp.sum(p["w"] ** 2) - jnp.sum(p["w"])

    assert _class(_run(quadratic, [3.0, -1.0], max_iters=5)) == "critical"


def test_the_last_step_ratio_tells_a_crossing_from_convergence(x64):
    # L = 1 / (1 + w1^2) + w2^2 / 2 from w1 = 3: no finite critical point ahead. Newton's step
    # is w1 / 3 (grad ~ -2 / w1^3, H ~ 6 / w1^4), so |grad L|^2 falls by (3/4)^6 = 0.178 a step
    # and crosses 1e-10 at w1 ~ 77: "critical" by the cutoff, a crossing by its rate.
    def inverse(p):
        return 1 / (1 + p["w"][0] ** 2) + 0.5 * p["w"][1] ** 2

    cp = _run(inverse, [3.0, 0.3], max_iters=200)
    assert bool(cp.converged[0]) and float(cp.params["w"][0, 0]) > 50
    ratio = critical.last_step_ratio(cp.iterations, cp.grad_norm_sq_history)[0]
    assert ratio == pytest.approx((3 / 4) ** 6, rel=1e-3) and ratio > critical.NEWTON_RATE_BOUND

    # L = w^4 (a zero of the gradient of multiplicity 3): Newton multiplies w by 2/3, so
    # |grad L|^2 by (2/3)^6 = 0.088 < e^-2: a finite critical point, reached at Newton's rate.
    def quartic(p):
        return jnp.sum(p["w"] ** 4)

    cp = _run(quartic, [1.0, -2.0], max_iters=200)
    ratio = critical.last_step_ratio(cp.iterations, cp.grad_norm_sq_history)[0]
    assert bool(cp.converged[0]) and float(jnp.max(jnp.abs(cp.params["w"]))) < 0.02
    assert ratio == pytest.approx((2 / 3) ** 6, rel=1e-3) and ratio < critical.NEWTON_RATE_BOUND
    # No iteration, no ratio.
    assert np.isnan(critical.last_step_ratio([0], [[1e-12, np.nan]])[0])


def test_escaping_needs_growth_that_does_not_level_off():
    n = 40
    decaying = np.geomspace(1.0, 1e-6, n + 1)
    linear = 10 + np.arange(n + 1.0)  # keeps growing
    levelled = 10 + 10 * (1 - np.exp(-np.arange(n + 1.0) / 3))  # grows, then stops
    common = dict(converged=[False], status=[critical.STATUS.index("max_iters")],
                  gradient_flat=[False], iterations=[n])  # fmt: skip
    assert critical.point_class(**common, param_norm_history=[linear],
                                grad_norm_sq_history=[decaying])[0] == "escaping"  # fmt: skip
    assert critical.point_class(**common, param_norm_history=[levelled],
                                grad_norm_sq_history=[decaying])[0] == "budget"  # fmt: skip
    flat_gradient = np.full(n + 1, 1e-6)  # |theta| grows but the gradient does not decay
    assert critical.point_class(**common, param_norm_history=[linear],
                                grad_norm_sq_history=[flat_gradient])[0] == "budget"  # fmt: skip


def test_rows_store_the_class_and_what_tells_it(tiny_study):
    df = analysis.load(tiny_study)
    assert set(df["point_class"]) <= set(analysis.POINT_CLASSES) - {"unclassified"}
    assert (df["point_class"].isin(["critical", "crossing"]) == df["converged"]).all()
    # analysis calls a critical row a crossing exactly when its last step was slower than
    # Newton's rate at a finite critical point
    crossing = df["converged"] & (df["last_step_ratio"] > critical.NEWTON_RATE_BOUND)
    assert ((df["point_class"] == "crossing") == crossing).all()
    ran = df["iterations"] > 0
    assert (
        df.loc[ran, "last_step_ratio"].notna().all()
        and df.loc[~ran, "last_step_ratio"].isna().all()
    )
    flagged = df["gradient_flat"] & ~df["converged"]
    assert flagged[df["point_class"] == "gradient_flat"].all()
    assert df.loc[flagged, "point_class"].isin(["gradient_flat", "escaping"]).all()
    assert (df["distance_moved"] >= 0).all() and (df["param_norm"] > 0).all()
    # the budget is stored, and "budget" means it was spent
    assert (df["iterations"] <= df["max_iters"]).all() and (df["max_iters"] > 0).all()
    spent = df["point_class"] == "budget"
    assert (df.loc[spent, "iterations"] == df.loc[spent, "max_iters"]).all()
    assert set(df["finder_status"]) <= set(critical.STATUS)
    fractions = analysis.class_fractions(df, by=["num_params"])
    total = fractions[[f"num_{c}" for c in analysis.POINT_CLASSES]].sum(axis=1)
    assert (total == fractions["num_points"]).all()
    assert store.load_results(tiny_study).num_rows == len(df)
