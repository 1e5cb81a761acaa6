import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse.linalg as spla

from saddlestudy import linalg

N = 30  # one system size for every solve below: one compilation


def symmetric_with_eigenvalues(eigenvalues, seed=0):
    lam = np.asarray(eigenvalues, np.float64)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(lam.size, lam.size)))
    return Q @ np.diag(lam) @ Q.T


@jax.jit
def solve(A, b, shift=0.0):
    return linalg.minres_qlp(lambda v: A @ v, b, shift=shift, rtol=1e-12, maxiter=10 * N)


SYSTEMS = {
    "definite": np.linspace(1.0, 10.0, N),
    "indefinite": np.r_[np.linspace(-5.0, -1.0, 10), np.linspace(0.5, 8.0, N - 10)],
    "ill_conditioned": np.geomspace(1e-4, 1.0, N) * np.where(np.arange(N) % 2, 1, -1),
}


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_nonsingular_systems_match_scipy_and_dense_solve(x64, name):
    A = symmetric_with_eigenvalues(SYSTEMS[name])
    b = np.random.default_rng(1).normal(size=N)
    x, info = solve(jnp.asarray(A), jnp.asarray(b))
    exact = np.linalg.solve(A, b)
    cond = np.linalg.cond(A)
    # Backward-stable solver: forward error ~ cond * (rtol + eps), with a margin of 100.
    tol = 100 * cond * 1e-12
    assert int(info.flag) in (1, 3)
    np.testing.assert_allclose(x, exact, rtol=tol, atol=tol * np.linalg.norm(exact))
    reference, _ = spla.minres(A, b, rtol=1e-12, maxiter=10 * N)
    np.testing.assert_allclose(x, reference, rtol=tol, atol=tol * np.linalg.norm(exact))
    assert float(info.rnorm) == pytest.approx(np.linalg.norm(b - A @ np.asarray(x)), abs=1e-12)


@pytest.mark.parametrize(
    "eigenvalues",
    [
        np.r_[np.zeros(5), np.linspace(-3.0, -1.0, 10), np.linspace(1.0, 4.0, N - 15)],
        np.r_[np.zeros(8), np.linspace(0.1, 100.0, N - 8)],  # semidefinite, kappa = 1e3
    ],
    ids=["indefinite", "semidefinite"],
)
def test_singular_incompatible_system_gives_the_pseudoinverse_solution(x64, eigenvalues):
    A = symmetric_with_eigenvalues(eigenvalues, seed=2)
    b = np.random.default_rng(3).normal(size=N)  # has a component in the kernel
    x, info = solve(jnp.asarray(A), jnp.asarray(b))
    pinv = np.linalg.pinv(A, rcond=1e-10) @ b
    # Min-length least-squares solution to ~1e-10 relative (rtol 1e-12, kappa <= 1e3).
    np.testing.assert_allclose(x, pinv, rtol=0, atol=1e-10 * np.linalg.norm(pinv))
    assert int(info.flag) in (2, 4, 6, 7, 9)
    # The residual is the kernel part of b: A r = 0 to rounding.
    assert float(info.arnorm) < 1e-10 * np.linalg.norm(A, 2) * np.linalg.norm(b)
    # Plain MINRES returns some least-squares solution, not this one: it is the test's point.
    plain, _ = spla.minres(A, b, rtol=1e-12, maxiter=10 * N)
    assert np.linalg.norm(plain - pinv) > 1e3 * np.linalg.norm(np.asarray(x) - pinv)


def test_singular_compatible_system_gives_the_minimum_norm_solution(x64):
    A = symmetric_with_eigenvalues(np.r_[np.zeros(5), np.linspace(-3.0, 3.0, N - 5) + 0.01])
    rng = np.random.default_rng(4)
    b = A @ rng.normal(size=N)  # in the range: a compatible singular system
    x, info = solve(jnp.asarray(A), jnp.asarray(b))
    assert int(info.flag) in (1, 3)
    pinv = np.linalg.pinv(A, rcond=1e-10) @ b
    np.testing.assert_allclose(x, pinv, rtol=0, atol=1e-9 * np.linalg.norm(pinv))


def test_shift_solves_a_minus_shift_identity(x64):
    A = symmetric_with_eigenvalues(np.linspace(-2.0, 5.0, N))
    b = np.random.default_rng(5).normal(size=N)
    x, _ = solve(jnp.asarray(A), jnp.asarray(b), 0.7)
    exact = np.linalg.solve(A - 0.7 * np.eye(N), b)
    reference, _ = spla.minres(A, b, shift=0.7, rtol=1e-12, maxiter=10 * N)
    np.testing.assert_allclose(x, exact, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(x, reference, rtol=1e-8, atol=1e-8)


def test_degenerate_right_hand_sides(x64):
    A = jnp.diag(jnp.asarray([0.0, 2.0]))
    x, info = linalg.minres_qlp(lambda v: A @ v, jnp.zeros(2))
    assert int(info.flag) == 0 and not np.any(np.asarray(x))
    # b in the kernel: the least-squares solution of minimum length is 0, residual |b|.
    x, info = linalg.minres_qlp(lambda v: A @ v, jnp.asarray([1.0, 0.0]))
    np.testing.assert_array_equal(x, [0.0, 0.0])
    assert int(info.flag) in (2, 9) and float(info.rnorm) == 1.0
    # b an eigenvector: one step.
    x, info = linalg.minres_qlp(lambda v: A @ v, jnp.asarray([0.0, 3.0]))
    np.testing.assert_allclose(x, [0.0, 1.5], rtol=1e-15)
    assert int(info.iterations) == 1


def test_maxxnorm_cuts_a_nearly_singular_direction(x64):
    A = jnp.diag(jnp.asarray([1e-9, 2.0]))
    x, info = linalg.minres_qlp(lambda v: A @ v, jnp.asarray([1.0, 1.0]), maxxnorm=1e7)
    assert int(info.flag) == 6
    np.testing.assert_allclose(x, [0.0, 0.5], atol=1e-12)  # exact would be (1e9, 0.5)


def test_trust_radius_and_switched_off_solves(x64):
    A = jnp.diag(jnp.linspace(1.0, 10.0, 20))
    b = jnp.ones(20)
    for radius in (0.1, 1.0):
        x, info = linalg.minres_qlp(lambda v: A @ v, b, trust_radius=radius)
        assert int(info.flag) == 11
        assert float(jnp.linalg.norm(x)) == pytest.approx(radius, rel=1e-12)
        assert float(jnp.vdot(x, b)) > 0  # a descent direction for |Ax - b|^2 at 0
    x, info = linalg.minres_qlp(lambda v: A @ v, b, trust_radius=100.0)
    assert int(info.flag) == 1
    x, info = linalg.minres_qlp(lambda v: A @ v, b, maxiter=0)
    assert int(info.flag) == 8 and int(info.iterations) == 0 and not np.any(np.asarray(x))


def test_artol_stops_early_with_a_descent_direction(x64):
    A = jnp.asarray(symmetric_with_eigenvalues(np.geomspace(1e-4, 1.0, N)))
    b = jnp.asarray(np.random.default_rng(6).normal(size=N))
    x_full, info_full = solve(A, b)
    x, info = linalg.minres_qlp(lambda v: A @ v, b, artol=1e-2)
    assert int(info.flag) == 10 and int(info.iterations) < int(info_full.iterations) // 2
    # x_k (returned) has a smaller residual than x_{k-1}, whose |A r| the test bounded.
    assert float(info.rnorm) < float(jnp.linalg.norm(b))
    assert float(jnp.vdot(A @ x, b)) > 0  # a descent direction for |A x - b|^2 at 0


def test_btol_is_a_forcing_term_on_the_residual(x64):
    A = jnp.asarray(symmetric_with_eigenvalues(np.geomspace(1e-3, 1.0, N)))
    b = jnp.asarray(np.random.default_rng(9).normal(size=N))
    _, full = solve(A, b)
    x, info = linalg.minres_qlp(lambda v: A @ v, b, btol=0.1)
    assert int(info.flag) == 1 and int(info.iterations) < int(full.iterations)
    # The recurred |r_k| met the test; the recomputed one agrees to rounding.
    assert float(info.rnorm) <= 0.1 * float(jnp.linalg.norm(b)) * (1 + 1e-8)


def test_vmap_over_systems_and_float32(x64):
    rng = np.random.default_rng(7)
    As = jnp.stack(
        [jnp.asarray(symmetric_with_eigenvalues(np.linspace(1, 3, N), s)) for s in (0, 1, 2)]
    )
    bs = jnp.asarray(rng.normal(size=(3, N)))
    xs, infos = jax.vmap(lambda A, b: linalg.minres_qlp(lambda v: A @ v, b, rtol=1e-12))(As, bs)
    for i in range(3):
        np.testing.assert_allclose(xs[i], np.linalg.solve(As[i], bs[i]), rtol=0, atol=1e-10)
    x32, info32 = linalg.minres_qlp(
        lambda v: As[0].astype(jnp.float32) @ v, bs[0].astype(jnp.float32), rtol=1e-6
    )
    assert x32.dtype == jnp.float32
    # float32 with kappa = 3: ~1e-6 relative, as float32 rounding allows.
    np.testing.assert_allclose(x32, np.linalg.solve(As[0], bs[0]), rtol=1e-4, atol=1e-5)


def test_sym_givens_reflects_onto_a_nonnegative_axis(x64):
    for a, b in [(3.0, 4.0), (-3.0, 4.0), (1e-300, 1.0), (2.0, 0.0), (0.0, -5.0), (-1.0, -1e-8)]:
        c, s, r = (float(v) for v in linalg.sym_givens(jnp.float64(a), jnp.float64(b)))
        assert c * a + s * b == pytest.approx(r, rel=1e-14)
        assert s * a - c * b == pytest.approx(0.0, abs=1e-14 * max(abs(a), abs(b)))
        assert r >= 0 and c * c + s * s == pytest.approx(1.0, rel=1e-14)
    assert tuple(float(v) for v in linalg.sym_givens(jnp.float64(0), jnp.float64(0))) == (0, 1, 0)
