"""hessian_inertia against independent truth: eigvalsh of the same matrix, the analytic index
of the deep linear autoencoder's critical points, and prescribed spectra."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg.lapack

import saddlestudy as ss
from saddlestudy import data, inertia, losses, models
from saddlestudy.hessian import dense_hessian

# ---------------------------------------------------------------------------------------------
# Sylvester's law of inertia on LAPACK's sytrf, against eigvalsh
# ---------------------------------------------------------------------------------------------


def _with_spectrum(eigenvalues, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return ((q * np.asarray(eigenvalues)) @ q.T).astype(dtype)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ldl_inertia_matches_eigvalsh(seed):
    rng = np.random.default_rng(seed)
    # Negatives, zeros and positives, none within 1e-6 of the thresholds +-1e-3.
    eig = np.concatenate(
        [-rng.uniform(2e-3, 5, 37), rng.uniform(-5e-4, 5e-4, 50), rng.uniform(2e-3, 5, 113)]
    )
    A = _with_spectrum(eig, seed)
    for tau in (1e-3, 1e-1, 1.0):
        below, zero, above = inertia.dense_counts(A, [tau])[0]
        ref = np.linalg.eigvalsh(A)
        assert below == np.sum(ref < -tau)
        assert above == np.sum(ref > tau)
        assert below + zero + above == 200


def test_ldl_inertia_counts_two_by_two_pivots():
    # A zero diagonal forces Bunch-Kaufman into 2 x 2 pivots: [[0, B], [B^T, 0]] has
    # eigenvalues +-(singular values of B).
    rng = np.random.default_rng(3)
    B = rng.standard_normal((40, 40)) + 3 * np.eye(40)
    A = np.block([[np.zeros((40, 40)), B], [B.T, np.zeros((40, 40))]])
    neg, zero, pos = inertia.ldl_inertia(A, 0.0)
    assert (neg, zero, pos) == (40, 0, 40)
    _, ipiv, _ = scipy.linalg.lapack.dsytrf(A, lower=1)
    assert np.any(ipiv < 0)  # the case is really exercised
    # Shifted below the spectrum: all positive.
    smin = np.linalg.svd(B, compute_uv=False).min()
    assert inertia.ldl_inertia(A, -1.01 * np.abs(np.linalg.eigvalsh(A)).max()) == (0, 0, 80)
    assert inertia.ldl_inertia(A, -0.99 * smin)[0] == 40


def test_ldl_inertia_in_float32():
    eig = np.concatenate([-np.linspace(0.5, 2, 10), np.linspace(0.5, 2, 30)])
    A = _with_spectrum(eig, 4, np.float32)
    assert inertia.dense_counts(A, [0.1])[0] == (10, 0, 30)


# ---------------------------------------------------------------------------------------------
# The deep linear autoencoder: the analytic count at its critical points
# ---------------------------------------------------------------------------------------------


def autoencoder(n, p):
    """Covariance form of Frye's autoencoder (Sigma = diag(n, ..., 1)): equal to the sample
    mean of 1/2 |x - W2 W1 x|^2 (shared/SCIENCE.md §3), cheap at thousands of parameters."""
    lam = jnp.arange(n, 0, -1.0, dtype=jnp.float64)

    def loss(params):
        r = jnp.eye(n, dtype=lam.dtype) - params["w2"] @ params["w1"]
        return 0.5 * jnp.sum(lam[:, None] * r * r)

    def point(subset):
        w1 = np.zeros((p, n))
        w1[np.arange(len(subset)), list(subset)] = 1.0
        return {"w1": jnp.asarray(w1), "w2": jnp.asarray(w1.T)}

    return loss, point


def analytic_num_negative(n, p, subset):
    """Negative Hessian eigenvalues at the critical point W2 W1 = U_I U_I^T (lambda_k = n - k):
    one per pair (i in I, j not in I) with lambda_j > lambda_i, and, for each of the p - |I|
    unused hidden units, one per direction j not in I (the +-lambda_j pairs). Checked here
    against eigvalsh for every critical point at n = 7, p = 3."""
    subset = list(subset)
    out = [j for j in range(n) if j not in subset]
    pairs = sum(1 for i in subset for j in out if j < i)  # j < i: lambda_j > lambda_i
    return pairs + (p - len(subset)) * (n - len(subset))


def test_analytic_autoencoder_count_matches_eigvalsh_on_every_critical_point(x64):
    import itertools

    n, p = 7, 3
    loss, point = autoencoder(n, p)
    hess = jax.jit(lambda prm: dense_hessian(loss, prm))
    for r in range(p + 1):
        for subset in itertools.combinations(range(n), r):
            eig = np.linalg.eigvalsh(np.asarray(hess(point(subset))))
            assert np.sum(eig < -1e-5) == analytic_num_negative(n, p, subset), subset


# n = 48, p = 32: P = 3,072. A few, dozens and half of P negatives.
LAE_N, LAE_P = 48, 32
LAE_POINTS = {
    "few": tuple(range(LAE_P - 1)) + (LAE_P,),  # one swap across the boundary: 1 negative
    "dozens": tuple(range(LAE_P - 3)) + (35, 40, 47),
    "half": (),  # the origin: n p = P / 2 negatives
}


@pytest.mark.parametrize("name", list(LAE_POINTS))
def test_dense_inertia_on_the_autoencoder_at_p_3072(x64, name):
    loss, point = autoencoder(LAE_N, LAE_P)
    subset = LAE_POINTS[name]
    truth = analytic_num_negative(LAE_N, LAE_P, subset)
    result = ss.hessian_inertia(loss, point(subset), zero_tol=1e-5, method="dense")
    assert result.num_params == 2 * LAE_N * LAE_P == 3072
    assert result.num_negative == result.num_negative_lo == result.num_negative_hi == truth
    assert result.exact and result.method == "dense" and result.failure_prob == 0.0
    assert truth == {"few": 1, "dozens": 32, "half": 1536}[name]


@pytest.mark.parametrize(
    "name",
    ["few", pytest.param("dozens", marks=pytest.mark.slow)],  # ~10 s each, idle
)
def test_lanczos_counts_isolated_negatives_of_the_autoencoder_exactly(x64, name):
    loss, point = autoencoder(LAE_N, LAE_P)
    subset = LAE_POINTS[name]
    truth = analytic_num_negative(LAE_N, LAE_P, subset)
    # The negatives lie below -0.5, far from the zero cluster: tau = 0.1 is resolvable.
    result = ss.hessian_inertia(
        loss, point(subset), zero_tol=0.1, method="lanczos", key=jax.random.key(1)
    )
    assert result.exact, (result.num_negative_lo, result.num_negative_hi)
    assert result.num_negative == truth
    assert result.num_matvecs < 3072  # fewer products than a dense build
    assert result.resolution < 0.1


def test_lanczos_never_claims_exact_when_it_is_not(x64):
    # Half of P negative, more than the locking capacity: bounds only, and they hold.
    loss, point = autoencoder(16, 8)
    truth = analytic_num_negative(16, 8, ())
    result = ss.hessian_inertia(
        loss, point(()), zero_tol=0.1, method="lanczos", max_locked=16, max_matvecs=200
    )
    assert not result.exact and math.isnan(result.num_negative)
    assert result.num_negative_lo <= truth <= result.num_negative_hi


# ---------------------------------------------------------------------------------------------
# Prescribed spectra (a quadratic loss): multiplicities, bulk negatives, relative thresholds
# ---------------------------------------------------------------------------------------------


def quadratic(eigenvalues, seed=0):
    H = jnp.asarray(_with_spectrum(np.asarray(eigenvalues, np.float64), seed))
    return (lambda prm: 0.5 * prm["x"] @ (H @ prm["x"])), {"x": jnp.zeros(H.shape[0])}


def test_lanczos_deflation_finds_every_copy_of_a_repeated_negative_eigenvalue(x64):
    # -2 five times, -1 three times: single-vector Lanczos sees one copy of each per run.
    eig = np.concatenate([[-2.0] * 5, [-1.0] * 3, np.linspace(0.5, 10, 392)])
    loss, params = quadratic(eig)
    result = ss.hessian_inertia(loss, params, zero_tol=0.1, method="lanczos")
    assert result.exact and result.num_negative == 8
    assert result.lambda_min == pytest.approx(-2.0, abs=1e-8)


def test_negatives_inside_the_bulk_are_bounded_not_counted(x64):
    # 30 negatives in [-1e-3, -2e-5] against a spread of 10: not resolvable at tau = 1e-5.
    rng = np.random.default_rng(5)
    eig = np.concatenate([-rng.uniform(2e-5, 1e-3, 30), rng.uniform(0, 10, 370)])
    loss, params = quadratic(eig)
    for method in ("lanczos", "slq"):
        result = ss.hessian_inertia(loss, params, zero_tol=1e-5, method=method, max_matvecs=150)
        assert not result.exact, method
        assert result.num_negative_lo <= 30 <= result.num_negative_hi, method
    auto = ss.hessian_inertia(loss, params, zero_tol=1e-5)
    assert auto.method == "dense" and auto.exact and auto.num_negative == 30


def test_relative_threshold_uses_lambda_max(x64):
    eig = np.concatenate([[-0.5, -0.05, -0.004], np.linspace(2e-2, 10, 197)])
    loss, params = quadratic(eig)
    absolute, relative = ss.hessian_inertia(
        loss, params, zero_tol=1e-5, relative_tol=1e-3, method="dense"
    )
    assert absolute.num_negative == 3 and absolute.relative_tol is None
    assert relative.relative_tol == 1e-3
    assert relative.zero_tol == pytest.approx(1e-3 * 10, rel=1e-8)
    assert relative.num_negative == 2  # -0.004 is inside [-0.01, 0.01]
    assert relative.num_positive == 197 and relative.num_zero == 1
    lz = ss.hessian_inertia(loss, params, relative_tol=1e-3, method="lanczos")
    assert lz.exact and lz.num_negative == 2


# ---------------------------------------------------------------------------------------------
# MLPs against the dense float64 reference
# ---------------------------------------------------------------------------------------------


@functools.cache
def trained_mlp():
    """Digits (PCA 8, 128 samples), 8-16-10 tanh, squared error on one-hot targets, 400
    Adam steps: P = 314, float64; a saddle with negatives inside the bulk."""
    ds = data.digits(pca_dim=8, num_samples=128, dtype="float64")
    config = models.MLPConfig(8, 10, depth=1, width=16, activation="tanh")
    y = jax.nn.one_hot(ds.y, 10, dtype=jnp.float64)
    loss = losses.make_loss_fn(models.make_apply(config), jnp.asarray(ds.x), y, loss="mse")
    params = models.init_params(config, jax.random.key(0), dtype="float64")
    opt = optax.adam(1e-2)

    @jax.jit
    def run(params):
        def step(carry, _):
            params, state = carry
            updates, state = opt.update(jax.grad(loss)(params), state)
            return (optax.apply_updates(params, updates), state), None

        return jax.lax.scan(step, (params, opt.init(params)), None, 400)[0][0]

    params = run(params)
    reference = np.linalg.eigvalsh(np.asarray(dense_hessian(loss, params)))
    return loss, params, reference


TAUS = (1e-8, 1e-6, 1e-5, 1e-4, 1e-3)


def test_dense_inertia_matches_eigvalsh_on_a_trained_mlp(x64):
    loss, params, reference = trained_mlp()
    # Five thresholds at once take one eigvalsh; one at a time, two sytrf factorisations each.
    results = ss.hessian_inertia(loss, params, zero_tol=TAUS, method="dense")
    assert len(results) == len(TAUS)
    single = [ss.hessian_inertia(loss, params, zero_tol=t, method="dense") for t in TAUS]
    assert [r.num_negative for r in single] == [r.num_negative for r in results]
    assert [r.num_positive for r in single] == [r.num_positive for r in results]
    assert np.sum(reference < -1e-5) > 0  # a saddle: the test counts something
    for tau, r in zip(TAUS, results):
        assert r.zero_tol == tau
        # Only where no eigenvalue sits within the resolution of a threshold.
        assert np.min(np.abs(np.abs(reference) - tau)) > r.resolution
        assert (r.num_negative, r.num_zero, r.num_positive) == (
            np.sum(reference < -tau),
            np.sum(np.abs(reference) <= tau),
            np.sum(reference > tau),
        )
    # The extremes: Ritz values bracketed by the true ones, within their residual bounds.
    r = results[0]
    # (1e-12: the rounding of the float64 reference.)
    assert reference[0] - 1e-12 <= r.lambda_min <= reference[0] + r.lambda_min_residual + 1e-12
    assert reference[-1] - r.lambda_max_residual - 1e-12 <= r.lambda_max <= reference[-1] + 1e-12


def test_float32_counts_against_float64_on_the_same_point(x64, capsys):
    # The same point's Hessian built in float32 (highest matmul precision) and in float64:
    # by Weyl's theorem each float32 eigenvalue lies within ||H32 - H64||_2 (plus the
    # eigensolvers' backward errors) of its float64 one, so at each tau the counts may differ
    # only by the float64 eigenvalues that close to +-tau. The disagreement is reported.
    loss, params, reference = trained_mlp()
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    p64 = jax.tree.map(lambda x: x.astype(jnp.float64), p32)  # the float32 point, exactly
    ds = data.digits(pca_dim=8, num_samples=128, dtype="float32")
    config = models.MLPConfig(8, 10, depth=1, width=16, activation="tanh")
    y = jax.nn.one_hot(ds.y, 10, dtype=jnp.float32)
    loss32 = losses.make_loss_fn(models.make_apply(config), jnp.asarray(ds.x), y, loss="mse")
    with jax.default_matmul_precision("highest"):
        h32 = np.asarray(dense_hessian(loss32, p32))
    h64 = np.asarray(dense_hessian(loss, p64))
    eig64 = np.linalg.eigvalsh(h64)
    gap = np.linalg.norm(h32.astype(np.float64) - h64, 2)
    slack = gap + 2 * h64.shape[0] * np.finfo(np.float32).eps * np.linalg.norm(h64)
    lines = []
    for tau in (1e-6, 1e-5, 1e-4, 1e-3):
        n32 = ss.hessian_inertia(loss32, p32, zero_tol=tau, method="dense").num_negative
        n64 = int(np.sum(eig64 < -tau))
        near = int(np.sum(np.abs(eig64 + tau) <= slack))
        lines.append(f"tau {tau:g}: float32 {n32}, float64 {n64}, within {slack:.1e}: {near}")
        assert abs(n32 - n64) <= near, lines[-1]
    with capsys.disabled():
        print("\nfloat32 vs float64 counts on one point (P = 314):\n  " + "\n  ".join(lines))


@pytest.mark.parametrize("method", ["lanczos", "slq"])
def test_matrix_free_bounds_hold_on_a_trained_mlp(x64, method):
    loss, params, reference = trained_mlp()
    results = ss.hessian_inertia(
        loss, params, zero_tol=TAUS, relative_tol=1e-2, method=method, max_matvecs=300
    )
    for r in results:
        truth = int(np.sum(reference < -r.zero_tol))
        assert r.num_negative_lo <= truth <= r.num_negative_hi, (r.zero_tol, r.method)
        if r.exact:
            assert r.num_negative == truth
        else:
            assert r.num_negative_lo < r.num_negative_hi


def test_auto_escalates_to_slq_when_lanczos_cannot_count(x64, monkeypatch):
    loss, params, reference = trained_mlp()
    monkeypatch.setattr(inertia, "dense_fits", lambda *a: False)
    r = ss.hessian_inertia(loss, params, zero_tol=1e-5, max_matvecs=100)
    truth = int(np.sum(reference < -1e-5))
    monkeypatch.undo()
    assert r.method == "lanczos+slq" and not r.exact and r.failure_prob == 1e-3
    capped = ss.hessian_inertia(loss, params, zero_tol=1e-5, dense_max_params=100)
    # P = 314 above the cap: matrix-free (here Lanczos reaches depth P, so it is exact).
    assert capped.method.startswith("lanczos") and capped.num_negative == truth
    assert r.num_negative_lo <= truth <= r.num_negative_hi
    assert r.index_sem > 0


# ---------------------------------------------------------------------------------------------
# The result type and bad input
# ---------------------------------------------------------------------------------------------


def test_inertia_is_a_pytree_with_to_dict(x64):
    loss, params = quadratic([-1.0, 2.0, 3.0])
    r = ss.hessian_inertia(loss, params, zero_tol=1e-5)
    assert isinstance(r, ss.Inertia)
    d = r.to_dict()
    assert d["num_negative"] == 1 and d["num_positive"] == 2 and d["exact"]
    assert d["min_eigenvector"].shape == (3,)
    assert jax.tree.structure(r) == jax.tree.structure(jax.tree.map(lambda x: x, r))


def test_one_parameter(x64):
    r = ss.hessian_inertia(lambda prm: -(prm["w"][0] ** 2), {"w": jnp.ones(1)}, method="dense")
    assert (r.num_negative, r.num_zero, r.num_positive) == (1, 0, 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "eigh"}, "unknown inertia method"),
        ({"zero_tol": -1.0}, "zero_tol"),
        ({"zero_tol": []}, "zero_tol"),
        ({"relative_tol": float("nan")}, "relative_tol"),
        ({"failure_prob": 1.5}, "failure_prob"),
        ({"max_matvecs": 1}, "max_matvecs"),
    ],
)
def test_bad_input_is_one_line_error(x64, kwargs, message):
    loss, params = quadratic([-1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=message):
        ss.hessian_inertia(loss, params, **kwargs)


def test_dense_that_does_not_fit_is_refused_before_building(x64, monkeypatch):
    loss, params = quadratic([-1.0, 2.0, 3.0])
    monkeypatch.setattr(inertia, "dense_fits", lambda *a: False)
    with pytest.raises(ValueError, match="needs about"):
        ss.hessian_inertia(loss, params, method="dense")


def test_non_finite_hessian_is_an_error(x64):
    def loss(prm):
        return jnp.sum(prm["x"] ** 2) * jnp.nan

    with pytest.raises(ValueError, match="non-finite"):
        ss.hessian_inertia(loss, {"x": jnp.ones(4)})
