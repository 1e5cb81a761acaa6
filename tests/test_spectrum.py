import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import saddlestudy
from saddlestudy import data, hessian, krylov, losses, memory, models, spectrum
from saddlestudy.spectrum import (
    Spectrum,
    hessian_eigenpairs,
    hessian_spectra,
    hessian_spectrum,
    hessian_trace,
)

METHODS = ["dense", "lanczos", "slq"]


def quadratic_with_eigenvalues(eigenvalues, seed=0, traces=None):
    """A loss 1/2 v^T A v on a nested pytree whose Hessian A has the given eigenvalues.

    ``traces``, a list, gets an entry each time JAX traces the loss.
    """
    lam = np.asarray(eigenvalues, np.float64)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(lam.size, lam.size)))
    A = jnp.asarray(Q @ np.diag(lam) @ Q.T)
    params = {"a": jnp.zeros((2,)), "rest": {"b": jnp.zeros((lam.size - 2,))}}

    def loss(p):
        if traces is not None:
            traces.append(1)  # runs only while JAX traces
        v = ravel_pytree(p)[0]
        return 0.5 * v @ A @ v

    return loss, params, Q


def full_depth(method, num_params):
    """Options that make Lanczos / SLQ use the whole Krylov space (m = P)."""
    return {} if method == "dense" else {"num_matvecs": num_params}


def within_reported_error(s, exact, name, num_sem=3.0):
    """|estimate - exact| <= num_sem standard errors + the systematic-error bound."""
    estimate = float(getattr(s, name))
    allowed = num_sem * float(getattr(s, f"{name}_sem")) + float(getattr(s, f"{name}_bias_bound"))
    return abs(estimate - exact) <= allowed + 1e-12, (name, estimate, exact, allowed)


# Problems are built once per session (after x64 is on) and shared by the tests, so that they
# share compiled spectra too: the jit cache is keyed on the loss object, and compiling, not
# computing, is what these small problems cost.
# Jitted once per loss (eager differentiation compiles every primitive separately: slow).
dense_hessian = jax.jit(hessian.dense_hessian, static_argnums=0)
grad_norm_sq = jax.jit(hessian.grad_norm_sq, static_argnums=0)
hvp = jax.jit(hessian.hvp, static_argnums=0)
init_replicas = jax.jit(models.init_replicas, static_argnums=(0, 2, 3))
QUADRATIC_EIGENVALUES = [-3.0, -1.0, -1e-7, 0.0, 0.0, 1e-7, 2.0, 2.0, 5.0]
QUADRATIC_TRACES = []


@functools.cache
def quadratic_problem():
    """Zeros, values inside the zero tolerance, a repeated value, a simple lambda_min."""
    return quadratic_with_eigenvalues(QUADRATIC_EIGENVALUES, traces=QUADRATIC_TRACES)


@functools.cache
def mlp_problem():
    """Digits (PCA 8, 128 samples), 8-12-10 tanh, cross-entropy: P = 238, float64."""
    ds = data.digits(pca_dim=8, num_samples=128, dtype="float64")
    config = models.MLPConfig(8, 10, depth=1, width=12, activation="tanh")
    loss = losses.make_loss_fn(
        models.make_apply(config), jnp.asarray(ds.x), jnp.asarray(ds.y), loss="cross_entropy"
    )
    params = jax.tree.map(lambda a: a[0], init_replicas(config, jax.random.key(0), 1, "float64"))
    reference = np.linalg.eigvalsh(np.asarray(dense_hessian(loss, params)))
    return loss, params, reference


@functools.cache
def small_mlp_problem():
    """3-3-2 tanh, cross-entropy on 8 points: P = 20, float64."""
    config = models.MLPConfig(3, 2, depth=1, width=3, activation="tanh")
    x = jax.random.normal(jax.random.key(1), (8, 3), jnp.float64)
    loss = losses.make_loss_fn(
        models.make_apply(config), x, jnp.array([0, 1] * 4), loss="cross_entropy"
    )
    return loss, config


@functools.cache
def autoencoder_problem(n=6, p=2, num_samples=200):
    ds = data.linear_autoencoder(n, num_samples, dtype="float64")
    config = models.linear_autoencoder_config(n, p)
    loss = losses.make_loss_fn(
        models.make_apply(config), jnp.asarray(ds.x), jnp.asarray(ds.y), loss="half_mse"
    )
    return loss, ds.metadata["eigenvalues"], ds.metadata["eigenvectors"]


def autoencoder_critical_point(subset, n=6, p=2):
    """W2 W1 = projection on the eigenvectors in ``subset`` (docs/science.md §3)."""
    _, _, U = autoencoder_problem(n, p)
    W1 = np.zeros((p, n))  # rows beyond |I| stay zero (|I| < p)
    W1[: len(subset)] = U[:, list(subset)].T
    W2 = np.zeros((n, p))
    W2[:, : len(subset)] = U[:, list(subset)]
    # NNX kernels act as x @ kernel, so they are the transposes of W1 and W2.
    return {"layers": {0: {"kernel": jnp.asarray(W1.T)}, 1: {"kernel": jnp.asarray(W2.T)}}}


@functools.cache
def lecture_problem():
    """The lecture's L = (1 - w1 w2)^2 at its saddle, the origin."""
    return (lambda p: (1.0 - p["w1"] * p["w2"]) ** 2), {"w1": jnp.float64(0), "w2": jnp.float64(0)}


@functools.cache
def float32_problem():
    return lambda p: jnp.sum(jnp.cos(p["w"]) * p["w"] ** 2) * p["b"] ** 2


@functools.cache
def nan_problem():
    """sqrt of a negative weight: every Hessian-vector product is NaN (float32)."""
    return lambda p: jnp.sum(jnp.sqrt(p["w"]) ** 3)


# ---------------------------------------------------------------------------------------------
# Prescribed eigenvalues
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_prescribed_eigenvalues(x64, method):
    loss, params, _ = quadratic_problem()
    P = len(QUADRATIC_EIGENVALUES)
    s = hessian_spectrum(loss, params, zero_tol=1e-5, method=method, **full_depth(method, P))
    lam = np.sort(QUADRATIC_EIGENVALUES)
    # float64: near machine precision; Lanczos at full depth (restarting at invariant
    # subspaces) recovers every multiplicity, the zeros' and the repeated 2's.
    np.testing.assert_allclose(s.eigenvalues, lam, atol=1e-12)
    assert s.eigenvalues.dtype == jnp.float64
    neg, pos = int((lam < -1e-5).sum()), int((lam > 1e-5).sum())
    assert (neg, pos) == (2, 3)
    assert (int(s.num_negative), int(s.num_zero), int(s.num_positive)) == (neg, P - neg - pos, pos)
    assert s.num_params == P and s.counts_are_exact
    assert float(s.index) == pytest.approx(neg / P)
    assert float(s.minimum_ratio) == pytest.approx(pos / P)
    assert float(s.zero_fraction) == pytest.approx((P - neg - pos) / P)
    assert float(s.index_bias_bound) == 0.0 and float(s.index_sem) == 0.0
    assert float(s.lambda_min) == pytest.approx(lam[0], abs=1e-12)
    assert float(s.lambda_max) == pytest.approx(lam[-1], abs=1e-12)
    assert s.zero_tol == 1e-5 and s.method == method and bool(s.converged)


def test_slq_on_two_clusters_recovers_their_weights_and_density(x64):
    # 30% of the spectrum at -1 and 70% at +2 (20 parameters): each probe's Krylov space is
    # two-dimensional, so the nodes are exactly -1 and 2 and only the weights are random.
    lam = [-1.0] * 6 + [2.0] * 14
    loss, params, _ = quadratic_with_eigenvalues(lam)
    s = hessian_spectrum(loss, params, method="slq", num_matvecs=4, num_probes=64)
    assert s.eigenvalues.shape == (64, 4) and s.weights.shape == (64, 4)
    np.testing.assert_allclose(jnp.sum(s.weights, axis=-1), 1.0, rtol=1e-12)
    assert float(s.lambda_min) == pytest.approx(-1.0, abs=1e-12)
    assert float(s.lambda_max) == pytest.approx(2.0, abs=1e-12)
    for name, exact in [("index", 0.3), ("minimum_ratio", 0.7), ("zero_fraction", 0.0)]:
        ok, info = within_reported_error(s, exact, name)
        assert ok, info
    assert 0 < float(s.index_sem) < 0.05  # a real, small standard error
    # The smoothed density integrates to 1 and puts the index's mass below zero.
    grid, density = np.asarray(s.density_grid), np.asarray(s.density)
    assert grid.shape == density.shape == (spectrum.DENSITY_GRID_SIZE,)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)
    below = grid < 0.5
    assert np.trapezoid(density[below], grid[below]) == pytest.approx(float(s.index), abs=1e-6)
    # Documented default width: 1% of the Ritz-value range.
    assert float(s.density_width) == pytest.approx(0.01 * 3.0, rel=1e-12)
    wide = hessian_spectrum(
        loss, params, method="slq", num_matvecs=4, num_probes=64, density_width=0.5
    )
    assert float(wide.density_width) == 0.5
    np.testing.assert_allclose(
        wide.density,
        krylov.gaussian_density(wide.density_grid, wide.eigenvalues, 0.5, wide.weights),
    )


@pytest.mark.parametrize("method", METHODS)
def test_min_eigenvector_is_a_unit_eigenvector(x64, method):
    loss, params, Q = quadratic_problem()
    s = hessian_spectrum(loss, params, method=method, **full_depth(method, 9))
    v = ravel_pytree(s.min_eigenvector)[0]
    assert jax.tree.structure(s.min_eigenvector) == jax.tree.structure(params)
    np.testing.assert_allclose(np.linalg.norm(v), 1.0, rtol=1e-12)
    # Q's columns are eigenvectors in the order of the eigenvalues given: -3 is the first.
    assert abs(float(v @ Q[:, 0])) == pytest.approx(1.0, abs=1e-10)
    assert v[np.argmax(np.abs(v))] > 0  # sign convention


@pytest.mark.parametrize("method", ["dense", "slq"])
def test_zero_tol_changes_counts_and_with_zero_tol_recounts(x64, method):
    loss, params, _ = quadratic_problem()
    strict = hessian_spectrum(loss, params, zero_tol=1e-8, method=method, **full_depth(method, 9))
    recount = strict.with_zero_tol(1.5)
    assert recount.zero_tol == 1.5
    # 1e-8: {-3, -1, -1e-7} negative, {0, 0} zero; 1.5: only -3 negative, 2, 2, 5 positive.
    if method == "dense":
        loose = hessian_spectrum(loss, params, zero_tol=1.5)
        for s, counts in [(strict, (3, 2, 4)), (loose, (1, 5, 3)), (recount, (1, 5, 3))]:
            assert (int(s.num_negative), int(s.num_zero), int(s.num_positive)) == counts
    else:
        # SLQ recounts from its stored nodes and weights, standard errors included.
        for s, counts in [(strict, (3, 2, 4)), (recount, (1, 5, 3))]:
            for name, count in zip(("index", "zero_fraction", "minimum_ratio"), counts):
                ok, info = within_reported_error(s, count / 9, name)
                assert ok, info


@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_respects_input_dtype(x64, method):
    params = {"w": jnp.array([0.5, -1.0, 2.0], jnp.float32), "b": jnp.float32(0.3)}
    s = hessian_spectrum(float32_problem(), params, method=method)
    assert s.eigenvalues.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(s.min_eigenvector))
    if method == "lanczos":
        assert s.tol == pytest.approx(float(np.sqrt(np.finfo(np.float32).eps)))


# ---------------------------------------------------------------------------------------------
# The lecture's example (its Lanczos breakdown: tests/test_krylov.py)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_lecture_saddle_and_its_escape_direction(x64, method):
    loss, origin = lecture_problem()
    s = hessian_spectrum(loss, origin, method=method, **full_depth(method, 2))
    assert float(s.lambda_min) == pytest.approx(-2.0, abs=1e-12)
    assert float(s.lambda_max) == pytest.approx(2.0, abs=1e-12)
    u = np.array([float(s.min_eigenvector["w1"]), float(s.min_eigenvector["w2"])])
    np.testing.assert_allclose(u, np.array([1.0, 1.0]) / np.sqrt(2), atol=1e-12)
    if method != "slq":
        assert (int(s.num_negative), int(s.num_positive)) == (1, 1)
    # Stepping along u lowers the loss: exactly (1 - t^2 / 2)^2 < 1.
    t = 0.3
    moved = jax.tree.map(lambda p, d: p + t * d, origin, s.min_eigenvector)
    assert float(loss(moved)) == pytest.approx((1 - t**2 / 2) ** 2, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Deep linear autoencoder (docs/science.md §3): exact critical points
# ---------------------------------------------------------------------------------------------

AUTOENCODER_SUBSETS = [s for r in range(3) for s in itertools.combinations(range(6), r)]


@pytest.mark.parametrize("subset", AUTOENCODER_SUBSETS, ids=str)
def test_linear_autoencoder_critical_points(x64, subset):
    loss, lam, _ = autoencoder_problem()
    params = autoencoder_critical_point(subset)
    P = 24
    # A critical point, with the loss of Baldi & Hornik: 1/2 sum of the left-out eigenvalues.
    assert float(grad_norm_sq(loss, params)) < 1e-26
    expected_loss = 0.5 * sum(lam[i] for i in range(6) if i not in subset)
    assert float(jax.jit(loss)(params)) == pytest.approx(expected_loss, rel=1e-13)
    reference = np.linalg.eigvalsh(np.asarray(dense_hessian(loss, params)))
    num_negative = int(np.sum(reference < -1e-5))
    # Only the global minimum (I = the top p) has no negative eigenvalue.
    assert (num_negative == 0) == (set(subset) == {0, 1})

    dense = hessian_spectrum(loss, params)
    assert int(dense.num_negative) == num_negative
    np.testing.assert_allclose(dense.eigenvalues, reference, atol=1e-12)
    lanczos = hessian_spectrum(loss, params, method="lanczos", num_matvecs=P)
    assert int(lanczos.num_negative) == num_negative
    assert float(lanczos.lambda_min) == pytest.approx(reference[0], abs=1e-10)
    slq = hessian_spectrum(loss, params, method="slq", num_matvecs=P, num_probes=32)
    ok, info = within_reported_error(slq, num_negative / P, "index")
    assert ok, info


# ---------------------------------------------------------------------------------------------
# MLPs: Lanczos and SLQ against the float64 dense reference
# ---------------------------------------------------------------------------------------------


def test_lanczos_extremes_match_dense_on_an_mlp(x64):
    loss, params, reference = mlp_problem()
    s = hessian_spectrum(loss, params, method="lanczos", num_matvecs=80, num_extreme=3)
    theta = np.asarray(s.eigenvalues)
    # float64, 80 matvecs on P = 238: the three extremes at each end to 1e-6 relative.
    np.testing.assert_allclose(theta[:3], reference[:3], rtol=1e-6)
    np.testing.assert_allclose(theta[-3:], reference[-3:], rtol=1e-6)
    assert bool(s.converged)
    # Rigorous facts: interlacing, and each Ritz value within its residual bound of an
    # eigenvalue.
    assert np.all(theta[:3] >= reference[:3] - 1e-12)
    assert np.all(theta[-3:] <= reference[-3:] + 1e-12)
    distance = np.min(np.abs(theta[:, None] - reference[None, :]), axis=1)
    assert np.all(distance <= np.asarray(s.residual_bounds) + 1e-12)
    assert int(s.num_negative) <= int(np.sum(reference < -1e-5))
    # The escape direction is the eigenvector of lambda_min.
    v = ravel_pytree(s.min_eigenvector)[0]
    Hv = ravel_pytree(hvp(loss, params, s.min_eigenvector))[0]
    assert float(jnp.linalg.norm(Hv - reference[0] * v)) < 1e-6 * abs(reference[0])
    # Counts from 80 of 238 dimensions: lower bounds, with the interlacing bias bound.
    assert float(s.index_bias_bound) == pytest.approx((238 - 80) / 238)
    # An unreachable tolerance (dynamic: no recompilation) clears the convergence flag.
    strict = hessian_spectrum(
        loss, params, method="lanczos", num_matvecs=80, num_extreme=3, tol=1e-30
    )
    assert not bool(strict.converged) and strict.tol == 1e-30


def test_slq_estimates_match_dense_counts_on_an_mlp(x64):
    loss, params, reference = mlp_problem()
    s = hessian_spectrum(loss, params, method="slq", num_matvecs=40, num_probes=16)
    P = 238
    exact = {
        "index": np.sum(reference < -1e-5) / P,
        "minimum_ratio": np.sum(reference > 1e-5) / P,
        "zero_fraction": np.sum(np.abs(reference) <= 1e-5) / P,
    }
    for name, value in exact.items():
        ok, info = within_reported_error(s, value, name)
        assert ok, info
    assert float(s.num_negative) == pytest.approx(P * float(s.index))
    assert float(s.lambda_min) >= reference[0] - 1e-12
    assert float(s.lambda_max) <= reference[-1] + 1e-12


# ---------------------------------------------------------------------------------------------
# Eigenpairs and trace
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_eigenpairs_match_dense(x64, which):
    loss, params, reference = mlp_problem()
    pairs = hessian_eigenpairs(loss, params, 3, which=which, num_matvecs=80)
    expected = reference[::-1][:3] if which == "largest" else reference[:3]
    np.testing.assert_allclose(pairs.eigenvalues, expected, rtol=1e-6)
    assert pairs.converged.shape == (3,) and bool(jnp.all(pairs.converged))
    vectors = jax.vmap(lambda t: ravel_pytree(t)[0])(pairs.eigenvectors)
    np.testing.assert_allclose(vectors @ vectors.T, np.eye(3), atol=1e-10)
    for value, v in zip(expected, vectors):
        Hv = ravel_pytree(hvp(loss, params, ravel_pytree(params)[1](v)))[0]
        assert float(jnp.linalg.norm(Hv - value * v)) < 1e-6 * abs(value)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_eigenpairs_stop_once_all_k_have_converged(x64, which):
    loss, params, reference = mlp_problem()
    expected = reference[::-1][:3] if which == "largest" else reference[:3]
    full = hessian_eigenpairs(loss, params, 3, which=which, num_matvecs=120, stop_early=False)
    assert int(full.num_matvecs) == 120
    for tol in (1e-4, 1e-8):
        early = hessian_eigenpairs(loss, params, 3, which=which, num_matvecs=120, tol=tol)
        used = int(early.num_matvecs)
        assert used < 120 and used % 2 == 0 and bool(jnp.all(early.converged))
        scale = np.max(np.abs(reference))
        assert np.all(np.asarray(early.residual_bounds) <= tol * scale)
        # the bound holds: each eigenvalue is within its residual bound of the truth (plus
        # the dense reference's own rounding)
        error = np.abs(np.asarray(early.eigenvalues) - expected)
        assert np.all(error <= np.asarray(early.residual_bounds) + 1e-12 * scale)
        # and two steps fewer would not have converged all three
        shorter = hessian_eigenpairs(
            loss, params, 3, which=which, num_matvecs=used - 2, tol=tol, stop_early=False
        )
        assert not bool(jnp.all(shorter.converged))
    np.testing.assert_allclose(early.eigenvalues, full.eigenvalues, rtol=1e-10)


@pytest.mark.parametrize("estimator", ["hutchinson", "xtrace"])
def test_trace_within_its_standard_error(x64, estimator):
    loss, params, reference = mlp_problem()
    estimate = hessian_trace(loss, params, num_probes=32, estimator=estimator)
    assert abs(float(estimate.value) - reference.sum()) <= 4 * float(estimate.sem) + 1e-10
    assert float(estimate.sem) > 0


def test_xtrace_is_exact_with_half_the_dimension_in_probes(x64):
    loss, params, Q = quadratic_with_eigenvalues([-3.0, -1.0, 0.0, 2.0, 5.0, 7.0])
    estimate = hessian_trace(loss, params, num_probes=3, estimator="xtrace")
    assert float(estimate.value) == pytest.approx(10.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Replicas, jit, compilation, memory
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method", ["dense", "lanczos", pytest.param("slq", marks=pytest.mark.slow)]
)
def test_batched_spectra_match_single_calls(x64, method):
    loss, config = small_mlp_problem()
    params_R = init_replicas(config, jax.random.key(0), 3, "float64")
    P = config.num_params
    options = full_depth(method, P)
    batched = hessian_spectra(loss, params_R, method=method, **options)
    assert isinstance(batched, Spectrum) and batched.lambda_min.shape == (3,)
    for r in range(3):
        one = jax.tree.map(lambda a, r=r: a[r], params_R)
        single = hessian_spectrum(loss, one, method=method, **options)
        # At full depth the Ritz values are the eigenvalues whatever the random start (SLQ:
        # every probe's nodes, of which the weights differ).
        assert batched.eigenvalues.shape[1:] == single.eigenvalues.shape
        np.testing.assert_allclose(batched.lambda_min[r], single.lambda_min, rtol=1e-8)
        np.testing.assert_allclose(batched.lambda_max[r], single.lambda_max, rtol=1e-8)
        if method != "slq":
            np.testing.assert_allclose(
                batched.eigenvalues[r], single.eigenvalues, rtol=1e-10, atol=1e-12
            )
            assert int(batched.num_negative[r]) == int(single.num_negative)
            u = ravel_pytree(jax.tree.map(lambda a, r=r: a[r], batched.min_eigenvector))[0]
            assert abs(float(u @ ravel_pytree(single.min_eigenvector)[0])) > 1 - 1e-8
    d = batched.to_dict()
    assert d["min_eigenvector"].shape == (3, P) and d["lambda_min"].shape == (3,)


def test_vmap_and_jit_over_hessian_spectrum(x64):
    loss, config = small_mlp_problem()
    params_R = init_replicas(config, jax.random.key(0), 3, "float64")
    batched = jax.vmap(lambda p: hessian_spectrum(loss, p))(params_R)
    assert batched.eigenvalues.shape == (3, config.num_params)
    jitted = jax.jit(lambda p: hessian_spectrum(loss, p))
    one = jax.tree.map(lambda a: a[0], params_R)
    np.testing.assert_allclose(jitted(one).eigenvalues, batched.eigenvalues[0], atol=1e-12)


def test_vmap_over_eigenpairs_stops_each_replica_on_its_own(x64):
    loss, config = small_mlp_problem()
    params_R = init_replicas(config, jax.random.key(0), 3, "float64")
    batched = jax.vmap(lambda p: hessian_eigenpairs(loss, p, 2, tol=1e-6))(params_R)
    for r in range(3):
        one = hessian_eigenpairs(loss, jax.tree.map(lambda a, r=r: a[r], params_R), 2, tol=1e-6)
        assert int(batched.num_matvecs[r]) == int(one.num_matvecs)
        np.testing.assert_allclose(batched.eigenvalues[r], one.eigenvalues, rtol=1e-10)
        assert bool(jnp.all(batched.converged[r]))


def test_little_free_memory_maps_replicas_and_vectors_in_chunks(x64, monkeypatch):
    # A 20 kB device: one replica's 9.6 kB Hessians at a time and one basis vector per chunk,
    # i.e. the lax.map paths instead of one vmap; the results must not change.
    loss, config = small_mlp_problem()
    params_R = init_replicas(config, jax.random.key(0), 3, "float64")
    everything_at_once = hessian_spectra(loss, params_R)
    monkeypatch.setattr(memory, "device_memory_bytes", lambda which: 20_000)
    memory._cached_plan.cache_clear()
    try:
        one = jax.tree.map(lambda a: a[0], params_R)
        assert memory.plan(loss, one, "dense", num_replicas=3) == (1, 1)
        piecewise = hessian_spectra(loss, params_R)
    finally:
        memory._cached_plan.cache_clear()
    np.testing.assert_allclose(piecewise.eigenvalues, everything_at_once.eigenvalues, atol=1e-13)


@pytest.mark.slow
def test_slq_probe_chunks_do_not_change_the_result(x64):
    loss, params, _ = quadratic_problem()
    whole = hessian_spectrum(loss, params, method="slq", num_matvecs=9)
    chunked = hessian_spectrum(loss, params, method="slq", num_matvecs=9, chunk_size=4)
    np.testing.assert_allclose(chunked.eigenvalues, whole.eigenvalues, atol=1e-12)
    # Weights split arbitrarily between equal nodes (eigh of a degenerate T), so compare
    # what they determine: the density and the fractions.
    np.testing.assert_allclose(chunked.density, whole.density, rtol=1e-8, atol=1e-10)
    for name in ("index", "minimum_ratio", "zero_fraction"):
        assert float(getattr(chunked, name)) == pytest.approx(
            float(getattr(whole, name)), abs=1e-10
        )


def test_dense_chunk_size_does_not_change_the_result(x64):
    loss, config = small_mlp_problem()
    params = jax.tree.map(lambda a: a[0], init_replicas(config, jax.random.key(0), 3, "float64"))
    reference = hessian_spectrum(loss, params).eigenvalues
    for chunk_size in (7,):  # does not divide P = 20: the last chunk is padded
        s = hessian_spectrum(loss, params, chunk_size=chunk_size)
        np.testing.assert_allclose(s.eigenvalues, reference, atol=1e-13)


def test_second_calls_with_the_same_loss_do_not_retrace(x64):
    loss, params, _ = quadratic_problem()
    params_R = jax.tree.map(lambda a: jnp.stack([a, a + 1]), params)
    calls = [
        *(
            lambda p, pr, m=method: hessian_spectrum(loss, p, method=m, **full_depth(m, 9))
            for method in METHODS
        ),
        lambda p, pr: hessian_spectrum(loss, p, method="lanczos", num_matvecs=9, tol=1e-3),
        lambda p, pr: hessian_spectra(loss, pr, method="lanczos", num_matvecs=9),
        lambda p, pr: hessian_eigenpairs(loss, p, 2, num_matvecs=9),
        lambda p, pr: hessian_eigenpairs(loss, p, 2, num_matvecs=9, which="smallest"),
        lambda p, pr: hessian_trace(loss, p, num_probes=4),
    ]
    for call in calls:
        call(params, params_R)
        n = len(QUADRATIC_TRACES)
        moved = jax.tree.map(lambda a: a - 1.0, params)
        call(moved, jax.tree.map(lambda a: 2 * a, params_R))
        assert len(QUADRATIC_TRACES) == n


# ---------------------------------------------------------------------------------------------
# Storage and the public surface
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_to_dict_gives_plain_values(x64, method):
    loss, params, _ = quadratic_problem()
    d = hessian_spectrum(loss, params, method=method, **full_depth(method, 9)).to_dict()
    assert d["num_params"] == 9 and d["method"] == method
    assert isinstance(d["eigenvalues"], np.ndarray) and d["min_eigenvector"].shape == (9,)
    assert isinstance(d["lambda_min"], float) and isinstance(d["converged"], bool)
    if method == "slq":
        assert isinstance(d["num_negative"], float) and d["weights"].shape == (16, 9)
        assert d["density"].shape == (spectrum.DENSITY_GRID_SIZE,)
    else:
        assert d["num_negative"] == 2 and isinstance(d["num_negative"], int)
        assert d["weights"] is None and d["density"] is None
    assert (d["residual_bounds"] is None) == (method == "dense")


@pytest.mark.parametrize("method", METHODS)
def test_counts_are_ints_except_the_slq_estimate_which_is_never_rounded(x64, method):
    loss, params, _ = quadratic_problem()
    depth = {} if method == "dense" else {"num_matvecs": 4}
    s = hessian_spectrum(loss, params, method=method, **depth)
    names = ("num_negative", "num_zero", "num_positive")
    kinds = {np.asarray(getattr(s, name)).dtype.kind for name in names}
    if method == "slq":
        assert kinds == {"f"}
        estimate = float(s.num_negative)
        assert estimate == pytest.approx(9 * float(s.index), rel=1e-12)
        assert estimate != round(estimate)  # an estimate, kept as it is
        assert s.to_dict()["num_negative"] == estimate
    else:
        assert kinds == {"i"}


def test_eigenpairs_and_trace_are_pytree_dataclasses_with_to_dict(x64):
    loss, params, Q = quadratic_with_eigenvalues([-3.0, -1.0, 0.0, 2.0, 5.0, 7.0])
    pairs = hessian_eigenpairs(loss, params, 2, which="smallest", num_matvecs=6)
    assert isinstance(jax.tree.map(lambda x: x, pairs), spectrum.Eigenpairs)
    d = pairs.to_dict()
    np.testing.assert_allclose(d["eigenvalues"], [-3.0, -1.0], atol=1e-10)
    assert d["eigenvectors"].shape == (2, 6) and isinstance(d["num_matvecs"], int)
    u = d["eigenvectors"][0]
    assert abs(abs(u @ Q[:, 0]) - 1.0) < 1e-10  # the eigenvector of -3, flattened in order
    trace = hessian_trace(loss, params, num_probes=3, estimator="xtrace")
    assert isinstance(jax.tree.map(lambda x: x, trace), spectrum.TraceEstimate)
    d = trace.to_dict()
    assert set(d) == {"value", "sem"} and isinstance(d["value"], float)
    assert d["value"] == pytest.approx(10.0, abs=1e-12)


def test_exported_at_top_level():
    assert saddlestudy.hessian_spectrum is hessian_spectrum
    assert saddlestudy.Spectrum is Spectrum
    assert saddlestudy.hessian_spectra is hessian_spectra
    assert saddlestudy.hessian_eigenpairs is hessian_eigenpairs
    assert saddlestudy.hessian_trace is hessian_trace
    assert saddlestudy.TraceEstimate is spectrum.TraceEstimate


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zero_tol", [-1.0, float("nan"), float("inf"), "tiny", None])
def test_bad_zero_tol(zero_tol):
    loss, params, _ = quadratic_with_eigenvalues([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="zero_tol"):
        hessian_spectrum(loss, params, zero_tol=zero_tol)


def test_unknown_method():
    loss, params, _ = quadratic_with_eigenvalues([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="unknown spectrum method"):
        hessian_spectrum(loss, params, method="magic")


@pytest.mark.parametrize(
    "options, match",
    [
        ({"method": "lanczos", "num_matvecs": 5}, "num_matvecs must be between 2 and 4"),
        ({"method": "lanczos", "num_matvecs": 1}, "num_matvecs must be between 2 and 4"),
        ({"method": "slq", "num_matvecs": 2.5}, "num_matvecs must be an int"),
        ({"method": "lanczos", "num_matvecs": True}, "num_matvecs must be an int"),
        ({"method": "lanczos", "num_extreme": 0}, "num_extreme"),
        ({"method": "lanczos", "tol": -1.0}, "tol"),
        ({"method": "slq", "num_probes": 1}, "num_probes"),
        ({"method": "slq", "density_width": 0.0}, "density_width"),
        ({"method": "slq", "chunk_size": 0}, "chunk_size"),
        ({"method": "dense", "num_matvecs": 3}, "num_matvecs applies to method lanczos"),
        ({"method": "lanczos", "num_probes": 3}, "num_probes applies to method slq"),
        ({"method": "lanczos", "chunk_size": 3}, "chunk_size applies"),
    ],
)
def test_bad_options(options, match):
    loss, params, _ = quadratic_with_eigenvalues([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match=match):
        hessian_spectrum(loss, params, **options)


def test_krylov_methods_need_two_parameters():
    with pytest.raises(ValueError, match="at least 2 parameters"):
        hessian_spectrum(lambda p: p["w"] ** 2, {"w": jnp.float32(1.0)}, method="lanczos")


def test_non_scalar_loss():
    with pytest.raises(ValueError, match="scalar"):
        hessian_spectrum(lambda p: p["w"] ** 2, {"w": jnp.ones(3)})


@pytest.mark.parametrize("method", METHODS)
def test_nan_hessian_is_an_error_not_a_nan_spectrum(method):
    with pytest.raises(ValueError, match="non-finite"):
        hessian_spectrum(nan_problem(), {"w": jnp.array([-1.0, 1.0])}, method=method)


def test_nan_in_one_replica_is_named():
    loss = nan_problem()
    params_R = {"w": jnp.array([[1.0, 2.0], [-1.0, 1.0], [3.0, 1.0]])}
    with pytest.raises(ValueError, match=r"replicas \[1\]"):
        hessian_spectra(loss, params_R)
    # Under the user's own vmap nothing can be raised: the bad replica is made loud.
    spectra = jax.vmap(lambda p: hessian_spectrum(loss, p))(params_R)
    assert np.isnan(spectra.eigenvalues[1]).all() and int(spectra.num_negative[1]) == -1
    assert not bool(spectra.converged[1]) and np.isnan(float(spectra.index[1]))
    assert np.isfinite(np.asarray(spectra.eigenvalues)[[0, 2]]).all() and bool(spectra.converged[0])


def test_bad_entry_point_arguments():
    loss, params, _ = quadratic_with_eigenvalues([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="which"):
        hessian_eigenpairs(loss, params, 2, which="middle")
    with pytest.raises(ValueError, match="k must be"):
        hessian_eigenpairs(loss, params, 4)
    with pytest.raises(ValueError, match="num_matvecs"):
        hessian_eigenpairs(loss, params, 2, num_matvecs=1)
    with pytest.raises(ValueError, match="estimator"):
        hessian_trace(loss, params, estimator="guess")
    with pytest.raises(ValueError, match="num_probes"):
        hessian_trace(loss, params, num_probes=4, estimator="xtrace")
    with pytest.raises(ValueError, match="leading replica axis"):
        hessian_spectra(loss, {"a": jnp.float32(0.0)})
    with pytest.raises(ValueError, match="non-finite"):
        hessian_trace(nan_problem(), {"w": jnp.array([-1.0, 1.0])})
    with pytest.raises(ValueError, match="non-finite"):
        hessian_eigenpairs(nan_problem(), {"w": jnp.array([-1.0, 1.0])}, 1)


def test_integer_or_empty_params():
    with pytest.raises(ValueError, match="float"):
        hessian_spectrum(lambda p: jnp.sum(p["w"]), {"w": jnp.ones(2, jnp.int32)})
    with pytest.raises(ValueError, match="no array leaves"):
        hessian_spectrum(lambda p: jnp.float32(0.0), {})


@pytest.mark.parametrize("method", ["dense", "lanczos", "slq"])
def test_second_call_on_the_same_loss_does_not_compile_again(x64, method):
    # Issue 4: a user calling hessian_spectrum twice on the same loss pays compilation once.
    traces = []

    def loss(p):
        traces.append(1)  # runs only while JAX traces the function
        return jnp.sum(jnp.cos(p["w"]) * p["w"] ** 2) + jnp.sum(p["w"][:3] * p["w"][3:]) ** 2

    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    kwargs = {} if method == "dense" else {"num_matvecs": 6}
    first = hessian_spectrum(loss, params, method=method, **kwargs)
    after_first = len(traces)
    second = hessian_spectrum(loss, {"w": params["w"] + 0.1}, method=method, **kwargs)
    assert after_first > 0 and len(traces) == after_first
    assert float(first.lambda_max) != float(second.lambda_max)  # it did compute again


def test_with_zero_tol_on_a_lanczos_spectrum_recounts_its_ritz_values(x64):
    loss, params, _ = quadratic_problem()
    s = hessian_spectrum(loss, params, method="lanczos", num_matvecs=6, zero_tol=1e-8)
    ritz = np.asarray(s.eigenvalues)
    assert ritz.shape == (6,)  # a partial run: counts of Ritz values, not of all P
    for tol in (1e-8, 0.5, 1.5, 4.0):
        recount = s.with_zero_tol(tol)
        neg, pos = int(np.sum(ritz < -tol)), int(np.sum(ritz > tol))
        assert recount.zero_tol == tol
        assert (int(recount.num_negative), int(recount.num_positive)) == (neg, pos)
        # Interlacing: the true counts on each side are at least the Ritz counts, so the
        # unresolved rest bounds the true zero count from above.
        true = np.asarray(QUADRATIC_EIGENVALUES)
        assert np.sum(np.abs(true) <= tol) <= int(recount.num_zero)
        assert np.sum(true < -tol) >= neg and np.sum(true > tol) >= pos
        np.testing.assert_array_equal(np.asarray(recount.eigenvalues), ritz)  # not recomputed
