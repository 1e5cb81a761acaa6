"""Critical-point finders against known answers: the lecture's example, cubics, the linear AE."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import AE_LAMBDA, AE_P, AE_SUBSETS, AE_VALUES, ae_point, autoencoder
from jax.flatten_util import ravel_pytree

import saddlestudy
from saddlestudy import critical, data, losses, models
from saddlestudy.critical import CriticalPoint, FinderOptions, find_critical_point
from saddlestudy.spectrum import hessian_spectrum

GRAD_TOL = 1e-10  # Frye et al.: the cutoff that recovers true losses and indices


# ----------------------------------------------------------------------------- problems


@functools.cache  # built inside an x64 test (float64 data); one object: compilations are reused
def lecture_loss():
    """L = (1 - w1 w2)^2 built from the library's own pieces (seed 000)."""
    dataset = data.w1w2(dtype="float64")
    config = models.MLPConfig(1, 1, depth=1, width=1, activation="identity", use_bias=False)
    return losses.make_loss_fn(
        models.make_apply(config), jnp.asarray(dataset.x), jnp.asarray(dataset.y), loss="mse"
    )


def lecture_points(pairs, dtype=jnp.float64):
    w = jnp.asarray(pairs, dtype)
    return {"layers": {0: {"kernel": w[:, 0, None, None]}, 1: {"kernel": w[:, 1, None, None]}}}


def w1w2(cp: CriticalPoint):
    return np.c_[
        np.ravel(cp.params["layers"][0]["kernel"]), np.ravel(cp.params["layers"][1]["kernel"])
    ]


CUBIC_A = np.array([1.0, 0.5, 2.0])


def cubic_loss(params):
    """Separable cubic sum_i x_i^3 / 3 - a_i^2 x_i on a nested pytree.

    Critical points: x_i = +-a_i, all 8 sign patterns; Hessian diag(2 x_i): the index is the
    number of minus signs.
    """
    x = ravel_pytree(params)[0]
    return jnp.sum(x**3 / 3 - jnp.asarray(CUBIC_A) ** 2 * x)


def cubic_points(signs_list, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    x = np.array([np.asarray(s) * CUBIC_A for s in signs_list])
    x = x + noise * rng.normal(size=x.shape)
    return {"a": jnp.asarray(x[:, :1]), "rest": {"b": jnp.asarray(x[:, 1:])}}


def flat_loss(params):
    """x^3 / 3 + x + y^2: no critical point; at x = 0 the gradient (1, 0) spans ker H."""
    return params[0] ** 3 / 3 + params[0] + params[1] ** 2


AE_STARTS = [(0, 1), (0, 2), (1, 3), (2, 5), (4, 5), (0,), (3,)]


def ae_starts(noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    points = []
    for I in AE_STARTS:
        C = np.eye(AE_P) + 0.3 * rng.normal(size=(AE_P, AE_P))
        p = ae_point(I, C)
        points.append(jax.tree.map(lambda a: a + noise * rng.normal(size=a.shape), p))
    return jax.tree.map(lambda *a: jnp.stack(a), *points)


def select(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


# ----------------------------------------------------------------------------- lecture


def test_lecture_newton_mr_finds_the_saddle_near_the_origin_and_minima_elsewhere(x64):
    near = [(0.1, -0.05), (0.2, 0.15), (-0.15, 0.1)]
    far = [(2.0, 1.0), (1.5, 0.4), (-1.2, -0.5)]
    cp = critical.find_critical_points(lecture_loss(), lecture_points(near + far))
    assert np.all(np.asarray(cp.converged)) and not np.any(cp.gradient_flat)
    assert np.all(np.asarray(cp.grad_norm_sq) < GRAD_TOL)
    w = w1w2(cp)
    # Newton converges quadratically: |w| ~ sqrt(|grad|^2) / |lambda| ~ 1e-5 at the latest.
    np.testing.assert_allclose(w[:3], 0.0, atol=1e-5)
    np.testing.assert_allclose(w[3:, 0] * w[3:, 1], 1.0, atol=1e-5)  # the curve of minima
    for i in range(6):
        s = hessian_spectrum(lecture_loss(), select(cp.params, i))
        if i < 3:  # the saddle: index 1 of 2 (eigenvalues -2, +2)
            assert (int(s.num_negative), int(s.num_positive)) == (1, 1)
        else:  # on w1 w2 = 1 one eigenvalue is 0 (the curve), the other 2 (w1^2 + w2^2) > 0
            assert (int(s.num_negative), int(s.num_positive)) == (0, 1)
    assert cp.method == "newton_mr" and cp.max_iters == critical.DEFAULT_MAX_ITERS["newton_mr"]


def test_a_float32_start_is_upcast_explicitly_and_converges(x64):
    cp = find_critical_point(lecture_loss(), select(lecture_points([(0.1, -0.05)], jnp.float32), 0))
    assert cp.params["layers"][0]["kernel"].dtype == jnp.float64  # the documented upcast
    assert bool(cp.converged) and float(cp.grad_norm_sq) < GRAD_TOL


def test_float32_with_a_tolerance_float32_cannot_resolve_is_refused(x64):
    start = select(lecture_points([(0.1, -0.05)], jnp.float32), 0)
    with pytest.raises(ValueError, match="float32"):
        find_critical_point(lecture_loss(), start, dtype=None)  # grad_tol = 1e-10
    with pytest.raises(ValueError, match="float32"):
        find_critical_point(lecture_loss(), start, dtype="float32", grad_tol=1e-8)


def test_float64_without_x64_mode_is_refused(x32):
    start = select(lecture_points([(0.1, -0.05)], jnp.float32), 0)
    with pytest.raises(ValueError, match="x64"):
        find_critical_point(lecture_loss(), start)


def test_batched_call_compiles_once_and_map_equals_vmap(x64):
    starts = lecture_points([(0.1, -0.05), (2.0, 1.0), (0.3, 0.2)])
    first = critical.find_critical_points(lecture_loss(), starts)
    size = critical._find_batched._cache_size()
    moved = jax.tree.map(lambda a: a * 1.1, starts)
    second = critical.find_critical_points(lecture_loss(), moved)
    assert critical._find_batched._cache_size() == size  # same loss_fn: no recompilation
    assert np.all(np.asarray(second.converged))
    mapped = critical.find_critical_points(lecture_loss(), starts, batching="map")
    np.testing.assert_allclose(w1w2(mapped), w1w2(first), rtol=0, atol=1e-14)
    np.testing.assert_array_equal(mapped.iterations, first.iterations)


def test_compiled_ahead_of_time_finds_the_lecture_points_and_refuses_bad_input_first(x64):
    """compile_critical_points: the lecture's critical points (the saddle at the origin, minima
    on w1*w2 = 1), each call of the compiled program the same answer, and a bad method
    refused before anything compiles."""
    starts = lecture_points([(0.1, -0.05), (2.0, 1.0), (0.3, 0.2)])
    run = critical.compile_critical_points(lecture_loss(), starts, batching="map")
    first, again = run(), run()
    assert np.all(np.asarray(first.converged))
    product = np.prod(w1w2(first), axis=1)
    np.testing.assert_allclose(product, [0.0, 1.0, 0.0], atol=1e-6)  # saddle, minimum, saddle
    np.testing.assert_array_equal(w1w2(again), w1w2(first))
    with pytest.raises(ValueError, match="method"):
        critical.compile_critical_points(lecture_loss(), starts, method="newton")


def test_hybrid_batching_equals_map_and_vmap(x64):
    # 5 starts in lockstep groups of 2 (the last group padded): the points of "map".
    starts = lecture_points([(0.1, -0.05), (2.0, 1.0), (0.3, 0.2), (-1.0, 0.5), (0.05, 1.5)])
    mapped = critical.find_critical_points(lecture_loss(), starts, batching="map")
    hybrid = critical.find_critical_points(lecture_loss(), starts, batching=2)
    assert hybrid.iterations.shape == (5,) and np.all(np.asarray(hybrid.converged))
    np.testing.assert_allclose(w1w2(hybrid), w1w2(mapped), rtol=0, atol=1e-14)
    np.testing.assert_array_equal(hybrid.iterations, mapped.iterations)
    np.testing.assert_allclose(hybrid.flat_residual, mapped.flat_residual, atol=1e-12)
    with pytest.raises(ValueError, match="lane count|batching"):
        critical.find_critical_points(lecture_loss(), starts, batching=0)


def test_critical_point_is_a_pytree_that_works_under_vmap(x64):
    starts = lecture_points([(0.1, -0.05), (2.0, 1.0)])
    cp = jax.vmap(lambda p: find_critical_point(lecture_loss(), p))(starts)
    assert isinstance(cp, CriticalPoint) and cp.loss.shape == (2,)
    assert np.all(np.asarray(cp.converged))
    leaves, treedef = jax.tree.flatten(cp)
    assert isinstance(jax.tree.unflatten(treedef, leaves), CriticalPoint)


def test_history_and_to_dict(x64):
    start = select(lecture_points([(2.0, 1.0)]), 0)
    cp = find_critical_point(lecture_loss(), start)
    k = int(cp.iterations)
    assert 1 <= k < cp.max_iters
    assert float(cp.loss_history[0]) == pytest.approx(float(lecture_loss()(start)), rel=1e-15)
    assert float(cp.grad_norm_sq_history[k]) == float(cp.grad_norm_sq)
    assert np.all(np.isnan(np.asarray(cp.loss_history[k + 1 :])))
    # Armijo on |grad|^2: the history decreases monotonically.
    assert np.all(np.diff(np.asarray(cp.grad_norm_sq_history[: k + 1])) < 0)
    d = cp.to_dict()
    assert d["converged"] is True and d["status_name"] == "converged" and d["method"] == "newton_mr"
    assert isinstance(d["loss"], float) and isinstance(d["iterations"], int)
    assert d["params"].shape == (2,) and d["loss_history"].shape == (k + 1,)
    batched = critical.find_critical_points(lecture_loss(), lecture_points([(2.0, 1.0)] * 2))
    assert batched.to_dict()["params"].shape == (2, 2)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="newton"), "unknown method"),
        (dict(grad_tol=0.0), "grad_tol"),
        (dict(grad_tol=-1e-10), "grad_tol"),
        (dict(grad_tol=float("nan")), "grad_tol"),
        (dict(max_iters=0), "max_iters"),
        (dict(max_iters=2.5), "max_iters"),
        (dict(batching="pmap"), "batching"),
        (dict(batching=0), "batching"),
        (dict(batching=True), "batching"),
        (dict(options=dict(damping=1.0)), "FinderOptions"),
    ],
)
def test_bad_arguments_fail_before_any_computation(x64, kwargs, match):
    calls = []

    def loss(p):
        calls.append(1)  # traced by eval_shape at most, never run
        return lecture_loss()(p)

    with pytest.raises(ValueError, match=match):
        critical.find_critical_points(loss, lecture_points([(0.1, 0.2)]), **kwargs)
    assert not calls


def test_bad_losses_params_and_options(x64):
    start = select(lecture_points([(0.1, 0.2)]), 0)
    with pytest.raises(ValueError, match="scalar"):
        find_critical_point(lambda p: jnp.stack([lecture_loss()(p)] * 2), start)
    with pytest.raises(ValueError, match="float"):
        find_critical_point(lecture_loss(), {"layers": {0: {"kernel": jnp.ones((1, 1), int)}}})
    with pytest.raises(ValueError, match="no array leaves"):
        find_critical_point(lecture_loss(), {})
    with pytest.raises(ValueError, match="lower precision"):
        find_critical_point(lambda p: lecture_loss()(p).astype(jnp.float32), start)
    with pytest.raises(ValueError, match="leading axis"):
        critical.find_critical_points(lecture_loss(), {"a": jnp.ones(2), "b": jnp.ones(3)})
    with pytest.raises(ValueError, match="backtrack"):
        FinderOptions(backtrack=1.5)
    with pytest.raises(ValueError, match="gradnorm_optimizer"):
        FinderOptions(gradnorm_optimizer="sgd")
    with pytest.raises(ValueError, match="linear_maxiter"):
        FinderOptions(linear_maxiter=0)


# ----------------------------------------------------------------------------- cubics


CUBIC_SIGNS = list(itertools.product((1, -1), repeat=3))


@pytest.mark.parametrize("method", ["newton_mr", "damped_newton", "gradnorm"])
def test_cubic_critical_points_and_their_indices(x64, method):
    starts = cubic_points(CUBIC_SIGNS, noise=0.05)
    cp = critical.find_critical_points(cubic_loss, starts, method=method)
    assert np.all(np.asarray(cp.converged)), cp.status_name()
    x = np.c_[np.asarray(cp.params["a"]), np.asarray(cp.params["rest"]["b"])]
    # |grad|^2 < 1e-10 and curvature >= 2 min a = 1: within 1e-5 of the critical point.
    np.testing.assert_allclose(x, np.array(CUBIC_SIGNS) * CUBIC_A, atol=1e-5)
    for i, signs in enumerate(CUBIC_SIGNS):
        s = hessian_spectrum(cubic_loss, select(cp.params, i))
        assert int(s.num_negative) == sum(v < 0 for v in signs)


def test_quadratic_newton_mr_takes_one_step(x64):
    rng = np.random.default_rng(0)
    lam = np.array([-3.0, -1.0, 0.5, 2.0, 4.0])
    Q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    A, c = jnp.asarray(Q @ np.diag(lam) @ Q.T), jnp.asarray(rng.normal(size=5))

    def loss(p):
        d = p - c
        return 0.5 * d @ A @ d + 7.0

    exact = FinderOptions(forcing=0.0)  # exact linear solves: Newton's one step
    cp = find_critical_point(loss, jnp.zeros(5), options=exact)
    assert int(cp.iterations) == 1 and bool(cp.converged)
    np.testing.assert_allclose(cp.params, c, atol=1e-12)
    assert float(cp.loss) == pytest.approx(7.0, abs=1e-12)
    assert int(hessian_spectrum(loss, cp.params).num_negative) == 2


def test_saddle_free_newton_flees_saddles_to_a_minimum(x64):
    def double_well(params):  # critical points x_i in {-a_i, 0, a_i}; minima at |x_i| = a_i
        x = ravel_pytree(params)[0]
        return jnp.sum((x**2 - jnp.asarray(CUBIC_A) ** 2) ** 2) / 4

    starts = cubic_points([(0, 1, 0), (1, 0, -1), (0, 0, 0)], noise=0.05)
    cp = critical.find_critical_points(double_well, starts, method="saddle_free_newton")
    assert np.all(np.asarray(cp.converged))
    x = np.c_[np.asarray(cp.params["a"]), np.asarray(cp.params["rest"]["b"])]
    # Minima; |grad|^2 < 1e-10 over curvature >= 2 min a^2 = 0.5: within 2e-5.
    np.testing.assert_allclose(np.abs(x), np.tile(CUBIC_A, (3, 1)), atol=2e-5)
    np.testing.assert_allclose(cp.loss, 0.0, atol=1e-10)
    # Newton-MR from the same starts stops at the nearby saddles and maximum instead.
    mr = critical.find_critical_points(double_well, starts)
    x = np.c_[np.asarray(mr.params["a"]), np.asarray(mr.params["rest"]["b"])]
    np.testing.assert_allclose(np.abs(x), [[0, 0.5, 0], [1, 0, 2], [0, 0, 0]], atol=2e-5)


# ----------------------------------------------------------------------------- gradient-flat


def test_gradient_flat_detector_fires_where_the_gradient_spans_the_kernel(x64):
    cp = find_critical_point(flat_loss, jnp.asarray([0.5, 0.0]), max_iters=200)
    assert not bool(cp.converged)
    # Newton-MR drives |grad|^2 = (1 + x^2)^2 to its minimum 1 at x = 0: stationary, not 0.
    assert float(cp.grad_norm_sq) == pytest.approx(1.0, abs=1e-6)
    assert abs(float(cp.params[0])) < 1e-3
    assert bool(cp.gradient_flat)
    assert float(cp.flat_residual) > 0.9 and float(cp.flat_residual_hessian) < 5e-4
    # At an exactly flat point the step is 0 and the residual is all of g: r = 1, r_H = 0.
    test = critical.gradient_flat_test(flat_loss, jnp.asarray([0.0, 0.0]))
    assert bool(test.gradient_flat)
    assert float(test.flat_residual) == pytest.approx(1.0, abs=1e-12)
    assert float(test.flat_residual_hessian) == pytest.approx(0.0, abs=1e-12)
    assert float(test.hessian_fro_norm) == pytest.approx(2.0, rel=1e-12)  # diag(0, 2)


def test_gradient_flat_detector_stays_quiet_away_from_flat_points(x64):
    # A generic point of the cubic: H is well conditioned, g is explained by curvature.
    test = critical.gradient_flat_test(cubic_loss, select(cubic_points([(1, -1, 1)], 0.3), 0))
    assert not bool(test.gradient_flat) and float(test.flat_residual) < 1e-6
    # Nor on the same function far from x = 0, where the curvature is large.
    test = critical.gradient_flat_test(flat_loss, jnp.asarray([2.0, 0.3]))
    assert not bool(test.gradient_flat) and float(test.flat_residual) < 1e-6
    # Converged points are never flagged (they are critical points, not gradient-flat ones).
    cp = critical.find_critical_points(cubic_loss, cubic_points(CUBIC_SIGNS, noise=0.05))
    assert not np.any(np.asarray(cp.gradient_flat))


def test_hutchinson_frobenius_estimate_above_the_exact_limit(x64):
    opts = FinderOptions(frobenius_exact_max=2, frobenius_probes=400)
    start = select(cubic_points([(1, -1, 1)], 0.3), 0)
    exact = critical.gradient_flat_test(cubic_loss, start).hessian_fro_norm
    estimate = critical.gradient_flat_test(cubic_loss, start, options=opts).hessian_fro_norm
    # Rademacher probes on a diagonal H: |H z|^2 = |H|_F^2 exactly, whatever z.
    assert float(estimate) == pytest.approx(float(exact), rel=1e-12)


# ----------------------------------------------------------------------------- linear AE


def test_autoencoder_analytic_points_have_the_analytic_losses(x64):
    rng = np.random.default_rng(1)
    for I in AE_STARTS:
        p = ae_point(I, np.eye(AE_P) + 0.3 * rng.normal(size=(AE_P, AE_P)))
        value = 0.5 * (AE_LAMBDA.sum() - AE_LAMBDA[list(I)].sum())
        assert float(autoencoder()[0](p)) == pytest.approx(value, abs=1e-12)
        assert float(saddlestudy.grad_norm_sq(autoencoder()[0], p)) < 1e-24


@pytest.mark.parametrize("method", ["newton_mr", "damped_newton"])
def test_autoencoder_finders_recover_true_critical_points(x64, method):
    cp = critical.find_critical_points(autoencoder()[0], ae_starts(), method=method)
    assert np.all(np.asarray(cp.converged)), cp.status_name()
    analytic_index = {}
    for i, I in enumerate(AE_STARTS):
        loss = float(cp.loss[i])
        # A true critical point: its loss is one of the analytic values 1/2 sum_{i not in J}
        # lambda_i (|grad|^2 < 1e-10 puts it within ~1e-10 of the value).
        j = int(np.argmin(np.abs(AE_VALUES - loss)))
        assert abs(AE_VALUES[j] - loss) < 1e-8
        J = AE_SUBSETS[j]
        if J not in analytic_index:
            analytic_index[J] = int(
                hessian_spectrum(autoencoder()[0], ae_point(J, np.eye(AE_P))).num_negative
            )
        found = hessian_spectrum(autoencoder()[0], select(cp.params, i))
        assert int(found.num_negative) == analytic_index[J]
        if method == "newton_mr":  # from 0.01-noise starts Newton-MR returns to the same point
            assert J == I


def test_autoencoder_gradnorm_and_saddle_free_newton(x64):
    starts = jax.tree.map(lambda a: a[jnp.asarray([0, 1, 4])], ae_starts())
    cp = critical.find_critical_points(
        autoencoder()[0], starts, method="gradnorm", max_iters=20_000
    )
    assert np.all(np.asarray(cp.converged)), cp.status_name()
    assert np.min(np.abs(AE_VALUES[:, None] - np.asarray(cp.loss)[None]), axis=0).max() < 1e-8
    sfn = critical.find_critical_points(autoencoder()[0], ae_starts(), method="saddle_free_newton")
    assert np.all(np.asarray(sfn.converged))
    # Saddle-free Newton flees every saddle: all runs end at the global minimum, I = top p.
    np.testing.assert_allclose(sfn.loss, AE_VALUES.min(), atol=1e-8)


# ----------------------------------------------------------------------------- escape


def test_escape_saddle_at_the_lecture_origin(x64):
    origin = select(lecture_points([(0.0, 0.0)]), 0)
    out = saddlestudy.escape_saddle(lecture_loss(), origin)
    assert bool(out.escaped)
    assert float(out.eigenvalue) == pytest.approx(-2.0, abs=1e-12)
    u = np.ravel(ravel_pytree(out.direction)[0])
    np.testing.assert_allclose(np.abs(u), [2**-0.5, 2**-0.5], rtol=1e-12)
    assert u[0] * u[1] > 0  # along (1, 1) (either sign)
    # L(t u) = (1 - t^2 / 2)^2: the longest grid step t = 1 is best, loss 1/4.
    assert float(out.step_size) == pytest.approx(1.0)
    assert float(out.loss_decrease) == pytest.approx(0.75, rel=1e-12)
    assert float(out.loss) == pytest.approx(float(lecture_loss()(out.params)), rel=1e-15)
    # At a minimum there is nothing to escape.
    minimum = select(lecture_points([(1.0, 1.0)]), 0)
    stay = saddlestudy.escape_saddle(lecture_loss(), minimum)
    assert not bool(stay.escaped) and float(stay.loss_decrease) == 0.0
    np.testing.assert_array_equal(ravel_pytree(stay.params)[0], ravel_pytree(minimum)[0])


def test_escape_saddle_with_lanczos_on_an_autoencoder_saddle(x64):
    saddle = ae_point((1, 3), np.eye(AE_P))
    dense = hessian_spectrum(autoencoder()[0], saddle)
    out = saddlestudy.escape_saddle(autoencoder()[0], saddle, method="lanczos", num_matvecs=24)
    assert float(out.eigenvalue) == pytest.approx(float(dense.lambda_min), abs=1e-8)
    assert bool(out.escaped) and float(out.loss_decrease) > 0
    with pytest.raises(ValueError, match="method"):
        saddlestudy.escape_saddle(autoencoder()[0], saddle, method="power")
    with pytest.raises(ValueError, match="shrink"):
        saddlestudy.escape_saddle(autoencoder()[0], saddle, shrink=1.0)


def test_escape_saddle_with_lanczos_survives_a_krylov_breakdown(x64):
    # H = diag(1, 1, 3, 3): any start's Krylov space is invariant after two steps, so a
    # four-step Lanczos breaks down. Without restarts T has two spurious zero Ritz values
    # whose Ritz vectors are zero rows: the "smallest eigenvalue" was 0 and the direction (and
    # the params, stepped by 0 * NaN) NaN. With restarts the spectrum is found whole.
    def loss(p):
        return 0.5 * jnp.sum(p["a"] ** 2) + 1.5 * jnp.sum(p["b"] ** 2)

    point = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    out = saddlestudy.escape_saddle(loss, point, method="lanczos")
    u = np.asarray(ravel_pytree(out.direction)[0])
    assert np.all(np.isfinite(u))
    assert float(out.eigenvalue) == pytest.approx(1.0, abs=1e-12)  # float64: to rounding
    np.testing.assert_allclose(np.linalg.norm(u), 1.0, rtol=1e-12)
    np.testing.assert_allclose(u[2:], 0.0, atol=1e-12)  # an eigenvector of 1, not of 3
    # A minimum: nothing to escape, and nothing moves.
    assert not bool(out.escaped) and float(out.loss_decrease) == 0.0
    np.testing.assert_array_equal(ravel_pytree(out.params)[0], np.zeros(4))


def diagonal_quadratic(eigenvalues):
    lam = jnp.asarray(eigenvalues)
    return lambda p: 0.5 * jnp.sum(lam * p["x"] ** 2), {"x": jnp.zeros(lam.shape)}


@pytest.mark.parametrize(
    "old, new",
    [("eigen_method", "method"), ("krylov_dim", "num_matvecs"), ("num_steps", "num_step_sizes")],
)
def test_escape_saddle_old_keywords_name_the_new_ones(x64, old, new):
    loss, point = diagonal_quadratic([-1.0, 1.0])
    with pytest.raises(TypeError, match=f"'{old}' was renamed to '{new}'"):
        saddlestudy.escape_saddle(loss, point, **{old: 1})
    with pytest.raises(TypeError, match="unexpected keyword argument 'steps'"):
        saddlestudy.escape_saddle(loss, point, steps=1)


def test_escape_saddle_counts_a_negative_eigenvalue_as_the_spectra_do(x64):
    # lambda = -1e-6 lies inside the package's default zero band |lambda| <= 1e-5: the
    # spectrum counts it as zero, so the escape must not step along it; with a tolerance
    # below it, it is negative and the step lowers the loss.
    loss, point = diagonal_quadratic([-1e-6, 1.0])
    assert int(hessian_spectrum(loss, point).num_negative) == 0
    assert not bool(saddlestudy.escape_saddle(loss, point).escaped)
    assert bool(saddlestudy.escape_saddle(loss, point, zero_tol=1e-8).escaped)


def test_escape_saddle_auto_is_dense_up_to_the_package_threshold(x64, monkeypatch):
    # Two Lanczos steps cannot find lambda_min = -3 of six spread eigenvalues exactly, dense
    # eigh finds it to rounding: "auto" is dense while P <= DENSE_EIGH_MAX_PARAMS.
    loss, point = diagonal_quadratic([-3.0, -1.0, 2.0, 5.0, 7.0, 9.0])
    monkeypatch.setattr(critical.spectrum, "DENSE_EIGH_MAX_PARAMS", 6)
    dense = saddlestudy.escape_saddle(loss, point, num_matvecs=2)
    assert float(dense.eigenvalue) == pytest.approx(-3.0, abs=1e-12)
    monkeypatch.setattr(critical.spectrum, "DENSE_EIGH_MAX_PARAMS", 5)
    lanczos = saddlestudy.escape_saddle(loss, point, num_matvecs=2)
    assert float(lanczos.eigenvalue) > -3.0 + 1e-3


def test_escape_and_flat_test_results_are_pytrees_with_to_dict(x64):
    loss, point = diagonal_quadratic([-1.0, 1.0])
    out = saddlestudy.escape_saddle(loss, point)
    assert isinstance(jax.tree.map(lambda x: x, out), critical.SaddleEscape)
    d = out.to_dict()
    assert isinstance(d["loss"], float) and isinstance(d["escaped"], bool) and d["escaped"]
    assert d["params"].shape == (2,) and d["direction"].shape == (2,)
    np.testing.assert_array_equal(d["params"], ravel_pytree(out.params)[0])
    test = critical.gradient_flat_test(flat_loss, jnp.asarray([0.0, 0.0]))
    assert isinstance(test, critical.GradientFlatTest)
    assert isinstance(jax.tree.map(lambda x: x, test), critical.GradientFlatTest)
    d = test.to_dict()
    assert d == {
        "flat_residual": float(test.flat_residual),
        "flat_residual_hessian": float(test.flat_residual_hessian),
        "hessian_fro_norm": float(test.hessian_fro_norm),
        "gradient_flat": True,
    }


# ----------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_frye_setting_newton_mr_success_rate(x64):
    """n = 16, p = 4, diag(1..16), N = 10,000; starts along GD trajectories (benchmark's)."""
    import optax

    from saddlestudy import train

    ds = data.linear_autoencoder(16, 10_000, rotate=False, dtype="float64")
    sigma = jnp.asarray(ds.x.T @ ds.x / ds.x.shape[0])

    def loss(params):  # equal to the sample mean of 1/2 |x - W x|^2 (covariance form)
        R = jnp.eye(16) - params["layers"][0]["kernel"] @ params["layers"][1]["kernel"]
        return 0.5 * jnp.trace(R.T @ sigma @ R)

    config = models.linear_autoencoder_config(16, 4)
    params0 = models.init_replicas(config, jax.random.key(0), 4, dtype="float64")
    levels = tuple(np.linspace(60.0, 40.0, 4))
    result = train.train_replicas(
        loss, params0, optax.sgd(0.01), train.TrainConfig(3000, 100, snapshot_losses=levels)
    )
    starts = jax.tree.map(lambda a: a.reshape((16,) + a.shape[2:]), result.loss_snapshots)
    cp = critical.find_critical_points(loss, starts, batching="map")
    assert int(np.sum(cp.converged)) >= 15
    values = {
        0.5 * (136 - sum(I)) for k in range(5) for I in itertools.combinations(range(1, 17), k)
    }
    for value in np.asarray(cp.loss)[np.asarray(cp.converged)]:
        assert min(abs(value - v) for v in values) < 1e-8
