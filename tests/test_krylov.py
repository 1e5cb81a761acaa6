"""The Krylov kernels against known answers: prescribed spectra, breakdowns, matfree."""

import jax.numpy as jnp
import numpy as np
import pytest

from saddlestudy import krylov


def symmetric_with_eigenvalues(eigenvalues, seed=0):
    lam = np.asarray(eigenvalues, np.float64)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(lam.size, lam.size)))
    return Q @ np.diag(lam) @ Q.T


# ---------------------------------------------------------------------------------------------
# Lanczos tridiagonalisation and Ritz pairs
# ---------------------------------------------------------------------------------------------


def test_ritz_values_vectors_and_orthonormal_basis(x64):
    n = 30
    lam = np.r_[-3.0, np.linspace(1.0, 5.0, n - 1)]
    A = jnp.asarray(symmetric_with_eigenvalues(lam))
    v0 = jnp.asarray(np.random.default_rng(8).normal(size=n))
    tri = krylov.lanczos_tridiag(lambda v: A @ v, v0, n, restart_vector=v0[::-1])
    # float64, full reorthogonalisation: orthonormal to rounding.
    np.testing.assert_allclose(tri.basis @ tri.basis.T, np.eye(n), atol=1e-12)
    theta, S, bounds = krylov.ritz_pairs(tri)
    np.testing.assert_allclose(theta, np.sort(lam), atol=1e-10)  # full space: exact spectrum
    y = np.asarray(S[:, 0] @ tri.basis)
    np.testing.assert_allclose(np.asarray(A) @ y, -3.0 * y, atol=1e-9)
    np.testing.assert_allclose(bounds, 0.0, atol=1e-9)  # ||r|| = 0 at full depth
    # Fewer steps: the isolated extreme eigenvalue converges first, within its bound.
    short = krylov.lanczos_tridiag(lambda v: A @ v, v0, 10, restart_vector=v0[::-1])
    theta10, _, bounds10 = krylov.ritz_pairs(short)
    assert float(theta10[0]) == pytest.approx(-3.0, abs=1e-6)
    assert float(theta10[0]) >= -3.0 - 1e-12  # interlacing: an upper bound of lambda_min
    assert abs(float(theta10[0]) + 3.0) <= float(bounds10[0]) + 1e-12


def test_lanczos_restarts_when_started_on_an_eigenvector(x64):
    # The lecture's Hessian at the origin. The Krylov space of (1, 1) is invariant: the run
    # must restart with an orthogonal vector rather than normalise rounding noise (which
    # gives T's eigenvalues -1 and -3).
    H = jnp.array([[0.0, -2.0], [-2.0, 0.0]])
    tri = krylov.lanczos_tridiag(
        lambda v: H @ v, jnp.array([1.0, 1.0]), 2, restart_vector=jnp.array([0.3, 0.9])
    )
    np.testing.assert_allclose(tri.basis @ tri.basis.T, np.eye(2), atol=1e-15)
    assert float(tri.offdiag[0]) == 0.0  # exactly decoupled
    theta, _, bounds = krylov.ritz_pairs(tri)
    np.testing.assert_allclose(theta, [-2.0, 2.0], atol=1e-15)
    np.testing.assert_allclose(bounds, 0.0, atol=1e-15)


def test_breakdown_in_the_middle_of_a_run_restarts_and_finds_the_rest(x64):
    # The start spans an invariant subspace of dimension 2: the third vector is a restart,
    # decoupled exactly, and the full-depth run still gives all four eigenvalues (with no
    # spurious zeros and no zero rows in the basis).
    A = jnp.diag(jnp.asarray([1.0, 2.0, 3.0, 4.0]))
    v0 = jnp.asarray([1.0, 1.0, 0.0, 0.0])
    tri = krylov.lanczos_tridiag(
        lambda v: A @ v, v0, 4, restart_vector=jnp.asarray([0.4, -0.3, 0.8, 0.5])
    )
    assert float(tri.offdiag[1]) == 0.0 and float(tri.offdiag[2]) != 0.0
    np.testing.assert_allclose(tri.basis @ tri.basis.T, np.eye(4), atol=1e-14)
    theta, S, bounds = krylov.ritz_pairs(tri)
    np.testing.assert_allclose(theta, [1.0, 2.0, 3.0, 4.0], atol=1e-13)
    Y = np.asarray(S.T @ tri.basis)  # the Ritz vectors: the unit vectors, up to sign
    np.testing.assert_allclose(np.abs(Y), np.eye(4), atol=1e-13)
    np.testing.assert_allclose(bounds, 0.0, atol=1e-13)


def test_lanczos_agrees_with_matfree_without_breakdown(x64):
    from matfree import decomp

    rng = np.random.default_rng(3)
    M = rng.normal(size=(30, 30))
    A = jnp.asarray(M + M.T)
    v0 = jnp.asarray(rng.normal(size=30))
    ours = krylov.lanczos_tridiag(lambda v: A @ v, v0, 12, restart_vector=v0)
    theirs = decomp.tridiag_sym(12, reortho="full", materialize=False)(lambda v: A @ v, v0)
    np.testing.assert_allclose(ours.diag, theirs.J_small[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.offdiag, theirs.J_small[1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jnp.abs(ours.basis), jnp.abs(theirs.Q_tall), atol=1e-10)


def test_blockwise_reorthogonalisation_keeps_a_full_depth_run_exact(x64):
    # 40 > the 16-row blocks: the last block is clamped (rows 24-39) and repeats 8 rows.
    assert krylov._REORTH_BLOCK == 16
    rng = np.random.default_rng(5)
    M = rng.normal(size=(40, 40))
    A = jnp.asarray(M + M.T)
    v0, r = (jnp.asarray(rng.normal(size=40)) for _ in range(2))
    tri = krylov.lanczos_tridiag(lambda v: A @ v, v0, 40, restart_vector=r)
    np.testing.assert_allclose(tri.basis @ tri.basis.T, np.eye(40), atol=1e-12)
    theta, _, _ = krylov.ritz_pairs(tri)
    np.testing.assert_allclose(theta, np.linalg.eigvalsh(np.asarray(A)), atol=1e-10)


def test_a_stopped_run_equals_a_shorter_run(x64):
    # Stopping at step n must give exactly the tridiagonal, Ritz values and bounds of a run
    # of n steps: the unbuilt rows may not leak into the Ritz values.
    rng = np.random.default_rng(4)
    M = rng.normal(size=(40, 40))
    A = jnp.asarray(M + M.T)
    v0, r = (jnp.asarray(rng.normal(size=40)) for _ in range(2))
    for n in (2, 6, 13):  # 13: stop is consulted at even steps only, so it stops at 14
        stopped = krylov.lanczos_tridiag(
            lambda v: A @ v, v0, 30, restart_vector=r, stop=lambda t, n=n: t.num_steps >= n
        )
        steps = n + n % 2
        assert int(stopped.num_steps) == steps
        short = krylov.lanczos_tridiag(lambda v: A @ v, v0, steps, restart_vector=r)
        theta, S, bounds = krylov.ritz_pairs(stopped)
        theta_s, S_s, bounds_s = krylov.ritz_pairs(short)
        np.testing.assert_allclose(theta[:steps], theta_s, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(bounds[:steps], bounds_s, rtol=1e-9, atol=1e-12)
        ritz = S[:, :steps].T @ stopped.basis  # the Ritz vectors, built rows only
        np.testing.assert_allclose(jnp.abs(ritz), jnp.abs(S_s.T @ short.basis), atol=1e-10)
        assert float(jnp.abs(stopped.basis[steps:]).max(initial=0.0)) == 0.0
    never = krylov.lanczos_tridiag(
        lambda v: A @ v, v0, 9, restart_vector=r, stop=lambda t: jnp.asarray(False)
    )
    assert int(never.num_steps) == 9  # the cap ends the run


def test_non_finite_products_give_nan_ritz_values(x64):
    tri = krylov.lanczos_tridiag(
        lambda v: jnp.full_like(v, jnp.nan), jnp.ones(3), 3, restart_vector=jnp.ones(3)
    )
    theta, _, _ = krylov.ritz_pairs(tri)
    assert np.isnan(np.asarray(theta)).all()


# ---------------------------------------------------------------------------------------------
# Density and small helpers
# ---------------------------------------------------------------------------------------------


def test_gaussian_density_is_the_weighted_mixture_and_integrates_to_one(x64):
    grid = jnp.linspace(-6.0, 8.0, 4001)
    nodes = jnp.asarray([[-1.0, 2.0], [0.0, 3.0]])
    weights = jnp.asarray([[0.25, 0.75], [0.5, 0.5]])
    density = np.asarray(krylov.gaussian_density(grid, nodes, 0.5, weights))
    # The probes' weights each sum to 1, so each probe counts 1/2.
    mixture = sum(
        w / 2 * np.exp(-0.5 * ((np.asarray(grid) - x) / 0.5) ** 2) / (0.5 * np.sqrt(2 * np.pi))
        for x, w in zip(np.ravel(nodes), np.ravel(weights))
    )
    np.testing.assert_allclose(density, mixture, rtol=1e-12, atol=1e-300)
    assert np.trapezoid(density, np.asarray(grid)) == pytest.approx(1.0, abs=1e-9)
    # No weights: uniform over the nodes.
    uniform = krylov.gaussian_density(grid, nodes, 0.5)
    equal = krylov.gaussian_density(grid, nodes, 0.5, jnp.ones_like(nodes))
    np.testing.assert_allclose(uniform, equal, rtol=1e-15)


def test_unit_and_fix_sign():
    v = jnp.asarray([0.5, -2.0, 1.0])
    u = krylov.fix_sign(krylov.unit(v))
    assert float(jnp.linalg.norm(u)) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(u, -v / np.linalg.norm(np.asarray(v)), rtol=1e-6)
    assert float(u[1]) > 0  # the largest-magnitude entry is positive
    np.testing.assert_array_equal(krylov.fix_sign(u), u)
