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
    ref = np.linalg.eigvalsh(A)
    for tau in (1e-3, 1e-1, 1.0):
        below = inertia.ldl_inertia(A, -tau)
        above = inertia.ldl_inertia(A, tau)
        assert below[0] == np.sum(ref < -tau) and above[2] == np.sum(ref > tau)
        # One factorisation's three counts: the signs of all of D's pivots.
        assert below[1] == above[1] == 0 and above[0] == np.sum(ref < tau)
        (record,) = inertia.dense_counts(A, [tau])
        assert record["exact"] and record["num_negative"] == np.sum(ref < -tau)
        assert record["num_zero"] == np.sum(np.abs(ref) <= tau)


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
    (record,) = inertia.dense_counts(A, [0.1])
    assert (record["num_negative"], record["num_zero"], record["num_positive"]) == (10, 0, 30)
    assert inertia.ldl_inertia(A, 0.0) == (10, 0, 30)


def test_dense_helpers_refuse_non_finite_input():
    A = _with_spectrum(np.linspace(-1, 1, 5))
    A[2, 3] = np.nan
    for call in (lambda: inertia.ldl_inertia(A, 0.0), lambda: inertia.dense_counts(A, [0.1])):
        with pytest.raises(ValueError, match="non-finite"):
            call()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ldl_backward_error_bounds_the_factorisations_true_backward_error(dtype):
    # The computed L D L^T, multiplied out in float64, against the matrix it factorised: the
    # bound must hold for matrices with 2 x 2 pivots and with shifts inside the spectrum.
    rng = np.random.default_rng(7)
    eig = np.concatenate([-rng.uniform(1e-6, 3, 60), rng.uniform(1e-6, 30, 140)])
    for shift in (0.0, -1e-3, 1.5):
        A = _with_spectrum(eig, 3, dtype)
        lu, d, perm = scipy.linalg.ldl(A - shift * np.eye(200, dtype=dtype), lower=True)
        lu64, d64 = lu.astype(np.float64), d.astype(np.float64)
        shifted = A.astype(np.float64) - shift * np.eye(200)
        true_error = np.linalg.norm(shifted - lu64 @ d64 @ lu64.T, 2)
        out = inertia._factor(A, shift, None)
        assert true_error <= out[3], (dtype, shift)
        # Rigorous, so loose (p(n) = n and the trace of |L||D||L^T| for its norm), not vacuous.
        assert out[3] < 1e5 * true_error
        # The counts: those of the matrix within that error.
        ref = np.linalg.eigvalsh(A.astype(np.float64))
        assert np.sum(ref < shift - out[3]) <= out[0] <= np.sum(ref < shift + out[3])


def test_dense_lambda_min_is_the_true_extreme_at_a_saddle(x64):
    # 60 negatives in [-1e-4, -2e-5] at the clustered low end of a spread of 10: a short
    # Lanczos run's Ritz value is far above the true lambda_min (here it was positive).
    rng = np.random.default_rng(11)
    eig = np.concatenate([-rng.uniform(2e-5, 1e-4, 60), rng.uniform(0, 10, 540)])
    loss, params = quadratic(eig)
    for taus in ([1e-5], [1e-5, 1e-6]):  # the factorisation and the eigvalsh routes
        r = ss.hessian_inertias(loss, params, zero_tols=taus, method="dense")[0]
        assert r.exact and r.num_negative == 60
        assert r.lambda_min_lo <= eig.min() <= r.lambda_min_hi
        assert r.lambda_min == pytest.approx(eig.min(), rel=1e-3)
        assert r.lambda_min < -r.zero_tol  # never above -tau while something is below it
        assert r.lambda_max_lo <= eig.max() <= r.lambda_max_hi
        assert r.ritz_min > r.lambda_min  # the Ritz value alone would have been wrong


# ---------------------------------------------------------------------------------------------
# The deep linear autoencoder: the analytic count at its critical points
# ---------------------------------------------------------------------------------------------


def autoencoder(n, p):
    """Covariance form of Frye's autoencoder (Sigma = diag(n, ..., 1)): equal to the sample
    mean of 1/2 |x - W2 W1 x|^2 (docs/science.md §3), cheap at thousands of parameters."""
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


def lae_points(n: int, p: int) -> dict[str, tuple[int, ...]]:
    """Points of the n x p autoencoder with a few, dozens and half of P negatives."""
    return {
        "few": tuple(range(p - 1)) + (p,),  # one swap across the boundary: 1 negative
        "dozens": tuple(range(p - 3)) + (p + 3, p + 8, n - 1),
        "half": (),  # the origin: n p = P / 2 negatives
    }


# P = 2 n p: 576 in the unit tier, 3,072 (past the full-spectrum limit of the sweep) end to end.
LAE_SIZES = [
    pytest.param(24, 12, id="P576"),
    pytest.param(48, 32, id="P3072", marks=pytest.mark.e2e),
]


@pytest.mark.parametrize("n, p", LAE_SIZES)
@pytest.mark.parametrize("name", ["few", "dozens", "half"])
def test_dense_inertia_on_the_autoencoder(x64, name, n, p):
    loss, point = autoencoder(n, p)
    subset = lae_points(n, p)[name]
    truth = analytic_num_negative(n, p, subset)
    result = ss.hessian_inertia(loss, point(subset), zero_tol=1e-5, method="dense")
    assert result.num_params == 2 * n * p
    assert result.num_negative == result.num_negative_lo == result.num_negative_hi == truth
    assert result.exact and result.method == "dense" and result.failure_prob == 0.0
    few, dozens, half = (analytic_num_negative(n, p, s) for s in lae_points(n, p).values())
    assert few == 1 < dozens < half == n * p  # the three regimes the points stand for


@pytest.mark.parametrize("n, p", LAE_SIZES)
@pytest.mark.parametrize("name", ["few", pytest.param("dozens", marks=pytest.mark.slow)])
def test_lanczos_counts_isolated_negatives_of_the_autoencoder_exactly(x64, name, n, p):
    loss, point = autoencoder(n, p)
    subset = lae_points(n, p)[name]
    truth = analytic_num_negative(n, p, subset)
    # The negatives lie below -0.5, far from the zero cluster: tau = 0.1 is resolvable.
    result = ss.hessian_inertia(
        loss, point(subset), zero_tol=0.1, method="lanczos", key=jax.random.key(1)
    )
    assert result.exact, (result.num_negative_lo, result.num_negative_hi)
    assert result.num_negative == truth
    assert result.num_matvecs < 2 * n * p  # fewer products than a dense build
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
    assert result.ritz_min == pytest.approx(-2.0, abs=1e-8) and np.isnan(result.lambda_min)


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
    absolute, relative = ss.hessian_inertias(
        loss, params, zero_tols=[1e-5], relative_tols=[1e-3], method="dense"
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
    results = ss.hessian_inertias(loss, params, zero_tols=TAUS, method="dense")
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
    # The extremes: the true ones inside the certified brackets, the values within them.
    for r in list(results) + single:
        assert r.lambda_min_lo <= reference[0] <= r.lambda_min_hi
        assert r.lambda_max_lo <= reference[-1] <= r.lambda_max_hi
        assert abs(r.lambda_min - reference[0]) <= r.lambda_min_hi - r.lambda_min_lo
        # The Ritz values bound the extremes from inside (1e-12: the reference's rounding).
        assert r.ritz_min >= reference[0] - 1e-12 and r.ritz_max <= reference[-1] + 1e-12


def test_float32_counts_against_float64_on_the_same_point(x64, capsys):
    # The same point's Hessian built in float32 (highest matmul precision) and in float64.
    # The float32 dense count's resolution must bound how far each float32 eigenvalue is
    # from the float64 one (the Hessian's rounding and the factorisation's backward error),
    # its certified bracket must hold the float64 count, and a count with an eigenvalue
    # within the resolution of -tau must not be called exact.
    loss, params, reference = trained_mlp()
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    p64 = jax.tree.map(lambda x: x.astype(jnp.float64), p32)  # the float32 point, exactly
    ds = data.digits(pca_dim=8, num_samples=128, dtype="float32")
    config = models.MLPConfig(8, 10, depth=1, width=16, activation="tanh")
    y = jax.nn.one_hot(ds.y, 10, dtype=jnp.float32)
    loss32 = losses.make_loss_fn(models.make_apply(config), jnp.asarray(ds.x), y, loss="mse")
    with jax.default_matmul_precision("highest"):
        h32 = np.asarray(dense_hessian(loss32, p32))
    eig64 = np.linalg.eigvalsh(np.asarray(dense_hessian(loss, p64)))
    eig32 = np.linalg.eigvalsh(h32.astype(np.float64))
    lines = []
    with jax.default_matmul_precision("highest"):
        results = [ss.hessian_inertia(loss32, p32, zero_tol=t, method="dense") for t in TAUS]
    for tau, r in zip(TAUS, results):
        n64 = int(np.sum(eig64 < -tau))
        near = int(np.sum(np.abs(eig64 + tau) <= r.resolution))
        lines.append(
            f"tau {tau:g}: float64 {n64}, float32 bracket [{r.num_negative_lo}, "
            f"{r.num_negative_hi}], exact {r.exact}, resolution {r.resolution:.1e}"
        )
        assert np.max(np.abs(eig32 - eig64)) <= r.resolution, lines[-1]
        assert r.num_negative_lo <= n64 <= r.num_negative_hi, lines[-1]
        if near:
            assert not r.exact, lines[-1]
        if r.exact:
            assert r.num_negative == n64
        assert r.lambda_min_lo <= eig64[0] <= r.lambda_min_hi
    assert any(not r.exact for r in results)  # the float32 resolution is really exercised
    with capsys.disabled():
        print("\nfloat32 vs float64 counts on one point (P = 314):\n  " + "\n  ".join(lines))


@pytest.mark.parametrize("method", ["lanczos", "slq"])
def test_matrix_free_bounds_hold_on_a_trained_mlp(x64, method):
    loss, params, reference = trained_mlp()
    results = ss.hessian_inertias(
        loss, params, zero_tols=TAUS, relative_tols=[1e-2], method=method, max_matvecs=300
    )
    for r in results:
        truth = int(np.sum(reference < -r.zero_tol))
        assert r.num_negative_lo <= truth <= r.num_negative_hi, (r.zero_tol, r.method)
        if r.exact:
            assert r.num_negative == truth
        # A Ritz value is never stored as lambda_min; it bounds it from above.
        assert np.isnan(r.lambda_min) and r.lambda_min_hi >= reference[0] - 1e-12


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


# --- matrix-free bounds (issue 21) ---


def _diagonal(eigenvalues):
    """0.5 x^T diag(a) x: the Lanczos of a Gaussian start is rotation invariant, so a diagonal
    Hessian is as hard as any with its spectrum, and its products are cheap."""
    a = jnp.asarray(eigenvalues, jnp.float64)
    return (lambda prm: 0.5 * jnp.sum(a * prm["x"] ** 2)), {"x": jnp.zeros(a.shape[0])}


def test_check_steps_are_fixed_by_the_depth():
    # Every 8 steps up to 64, then four per doubling (an eighth of the block of _CHECK_SIZES
    # holding the step), the last block being the depth itself (300 // 8 = 37: 296).
    assert inertia._check_steps(300) == (
        (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 296)
    )
    assert inertia._check_steps(40) == (8, 16, 24, 32)
    assert inertia._check_steps(5) == ()
    # failure_prob split evenly over rounds x (checkpoints below the depth + the depth).
    assert inertia._check_prob(0.1, 300, 64) == pytest.approx(0.1 / (64 * 18), rel=1e-14)


def test_kw_failure_prob_is_split_over_rounds_and_checkpoints(x64, monkeypatch):
    # Every round gets failure_prob / (min(MAX_ROUNDS, max_locked) x checkpoints) for each
    # of its checks, and ends at one of its checkpoints; the bounds use the same share.
    eig = np.concatenate([[-2.0, -1.5, -1.0], np.linspace(0.5, 10, 297)])
    loss, params = _diagonal(eig)
    rounds, states = [], []
    real_round, real_lanczos = inertia._round_jit, inertia._deflated_lanczos

    def spy_round(*args, **kwargs):
        out = real_round(*args, **kwargs)
        rounds.append((float(args[9]), int(args[10]), kwargs["depth"], int(out[3])))
        return out

    def spy_lanczos(*args, **kwargs):
        states.append(real_lanczos(*args, **kwargs))
        return states[-1]

    monkeypatch.setattr(inertia, "_round_jit", spy_round)
    monkeypatch.setattr(inertia, "_deflated_lanczos", spy_lanczos)
    delta, max_locked = 0.05, 40
    r = ss.hessian_inertia(
        loss,
        params,
        zero_tol=0.1,
        method="lanczos",
        failure_prob=delta,
        max_locked=max_locked,
        key=jax.random.key(3),
    )
    assert r.exact and r.num_negative == 3 and r.failure_prob == delta
    share = delta / (min(inertia.MAX_ROUNDS, max_locked) * 18)  # depth 300: 17 + 1 checks
    assert rounds and states[-1].check_prob == pytest.approx(share, rel=1e-14)
    for check_prob, limit, depth, steps in rounds:
        assert depth == 300 and limit == 300
        assert check_prob == pytest.approx(share, rel=1e-14)
        assert steps in inertia._check_steps(depth) + (limit,)


def test_the_stopping_rule_certifies_with_the_per_check_share(x64):
    # Nothing below -tau: a round runs until the Kuczynski-Wozniakowski floor, taken with
    # the per-check share, clears -tau; it stops at the first checkpoint where it does.
    P, depth, tau, delta = 400, 400, 0.1, 1e-3
    loss, params = _diagonal(np.linspace(0.05, 10, P))
    share = inertia._check_prob(delta, depth, inertia.MAX_ROUNDS)
    start, restart = jax.random.normal(jax.random.key(0), (2, P), jnp.float64)

    def run(limit, prob):
        theta, _, _, n = inertia._round_jit(
            loss, params, jnp.zeros((2, P)), start, restart, -tau, 0.0, -tau, 1e-8, prob,
            limit, depth=depth, keep=2,
        )  # fmt: skip
        return int(n), np.asarray(theta)[: int(n)]

    def floor(n, theta, prob):
        return inertia.kw_lower_bound(theta[0], theta[-1], n - 1, P, prob)

    n, theta = run(depth, share)
    checkpoints = inertia._check_steps(depth)
    assert n in checkpoints and floor(n, theta, share) >= -tau
    earlier = max(c for c in checkpoints if c < n)
    m, theta_earlier = run(earlier, share)
    assert m == earlier and floor(m, theta_earlier, share) < -tau
    # The whole failure_prob at each check (the old rule) stops sooner.
    n_old, theta_old = run(depth, delta)
    assert n_old < n
    # _lanczos_bounds takes the share from the state: the old stop certifies nothing with it.
    state = inertia._LanczosState(np.zeros(0), 0.0, theta_old, n_old, n_old, share)
    assert inertia._lanczos_bounds(state, tau, P)[1] > 0
    state = inertia._LanczosState(np.zeros(0), 0.0, theta, n, n, share)
    assert inertia._lanczos_bounds(state, tau, P)[:2] == (0, 0)


def test_lanczos_upper_bound_fails_at_most_at_failure_prob(x64):
    # One eigenvalue just below -tau, isolated from a bulk in [0.1, 1]: a start nearly
    # orthogonal to its eigenvector misses it while the floor already clears -tau (the
    # hardest case found for the Kuczynski-Wozniakowski bound: with the whole failure_prob
    # at each check, 9 % of runs certified falsely at failure_prob = 0.9). Independent
    # runs; the failure rate must not exceed failure_prob (one-sided binomial test). The
    # deflated Lanczos and its bounds are called directly: hessian_inertia's extremes would
    # take most of the time.
    scipy_stats = pytest.importorskip("scipy.stats")
    tau, delta, runs, P = 0.01, 0.2, 200, 200
    eig = np.concatenate([[-1.0001 * tau], np.linspace(0.1, 1, P - 1)])
    loss, params = _diagonal(eig)
    failures = 0
    for seed in range(runs):
        state = inertia._deflated_lanczos(
            loss, params, jax.random.key(seed), taus=[tau], tol=1.5e-8, failure_prob=delta,
            max_matvecs=120, max_locked=8,
        )  # fmt: skip
        lo, hi, _, certified_hi = inertia._lanczos_bounds(state, tau, P)
        assert lo <= 1 <= certified_hi  # certified: never wrong
        failures += hi < 1
    assert scipy_stats.binomtest(failures, runs, delta, alternative="greater").pvalue > 1e-3


def test_slq_upper_bound_below_the_lower_is_a_detected_failure():
    # Probe 0 sees four Ritz values below -tau with almost no weight; probe 1 none. With 50
    # probes and failure_prob = 0.9, Hoeffding's upper bound is floor(100 * (~0 + 0.032)) =
    # 3, below the certified 4: a failed bound, reported as such, hi back to the certified.
    tau, P = 0.1, 100
    nodes = np.tile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (50, 1))
    nodes[0] = [-3.0, -2.5, -2.0, -1.5, 1.0, 2.0]
    weights = np.tile([1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1 - 5e-5], (50, 1))
    lo, hi, certified_hi, failure = inertia._slq_bounds(nodes, weights, tau, P, 0.9)
    assert (lo, hi, certified_hi, failure) == (4, 94, 94, True)
    # Consistent weights (the same nodes, uniform weights): no failure, hi >= lo.
    lo, hi, certified_hi, failure = inertia._slq_bounds(nodes, np.full((50, 6), 1 / 6), tau, P, 0.9)
    assert not failure and lo == 4 and lo <= hi <= certified_hi == 94


def test_a_failed_slq_bound_leaves_the_count_inexact(x64, monkeypatch):
    # Five isolated negatives that every probe finds; the weights of the nodes below -tau
    # (and of the next one) moved to the top node fake a failed Hoeffding bound.
    import dataclasses

    eig = np.concatenate([[-3.0, -2.5, -2.0, -1.5, -1.0], np.linspace(0.5, 10, 395)])
    loss, params = _diagonal(eig)
    tau = 0.1
    real = inertia.spectrum_lib.hessian_spectrum
    kwargs = dict(zero_tol=tau, method="slq", failure_prob=0.999, num_probes=10)
    honest = ss.hessian_inertia(loss, params, num_slq_matvecs=40, **kwargs)
    assert not honest.bound_failure and not honest.exact
    assert honest.num_negative_lo <= 5 <= honest.num_negative_hi

    def skewed(*args, **kw):
        slq = real(*args, **kw)
        nodes, w = np.asarray(slq.eigenvalues), np.array(slq.weights)
        moved = nodes < -tau
        moved[:, 1:] |= moved[:, :-1]  # the next node's weight too
        w[:, -1] += np.sum(np.where(moved, w, 0), axis=-1)
        w[moved] = 0
        return dataclasses.replace(slq, weights=jnp.asarray(w))

    monkeypatch.setattr(inertia.spectrum_lib, "hessian_spectrum", skewed)
    r = ss.hessian_inertia(loss, params, num_slq_matvecs=40, **kwargs)
    assert r.bound_failure and not r.exact
    assert r.num_negative_lo == 5 and r.num_negative_hi >= 5  # hi: the certified bound
    assert r.num_negative == pytest.approx(r.index * 400)  # an estimate, not a count
    # Lanczos + SLQ, P = 100: Lanczos (32 products) certifies the 5 negatives below, 4 SLQ
    # steps see at most 4, and 200 probes put the faked SLQ upper bound at floor(100 *
    # 0.042) = 4: the bounds cross only when combined.
    loss, params = _diagonal(np.concatenate([eig[:5], np.linspace(0.5, 10, 95)]))
    r = ss.hessian_inertia(
        loss, params, zero_tol=tau, method="lanczos+slq", failure_prob=0.999, num_probes=200,
        num_slq_matvecs=4, max_matvecs=32,
    )  # fmt: skip
    assert r.method == "lanczos+slq" and r.bound_failure and not r.exact
    assert r.num_negative_lo == 5 <= r.num_negative_hi


def test_max_matvecs_caps_the_lanczos_products(x64, monkeypatch):
    # Hessian-vector products counted as they run (a callback in every matvec), from the
    # start of the deflated Lanczos (after the extremes) to its end: never above the budget,
    # on a problem that needs more (20 negatives near a bulk starting at 0: 340 products).
    from saddlestudy import hessian

    eig = np.concatenate([-np.linspace(0.2, 0.5, 20), np.linspace(0.0, 10, 580)])
    loss, params = _diagonal(eig)
    count = [0]
    real_hvp, real_lanczos = hessian.flat_hvp, inertia._deflated_lanczos

    def counted_hvp(loss_fn, prm):
        matvec, theta = real_hvp(loss_fn, prm)

        def counted(v):
            jax.debug.callback(lambda _: count.__setitem__(0, count[0] + 1), v[0])
            return matvec(v)

        return counted, theta

    def lanczos(*args, **kwargs):
        jax.effects_barrier()
        count[0] = 0
        state = real_lanczos(*args, **kwargs)
        jax.effects_barrier()
        lanczos.products, lanczos.state = count[0], state
        return state

    monkeypatch.setattr(hessian, "flat_hvp", counted_hvp)
    monkeypatch.setattr(inertia, "_deflated_lanczos", lanczos)
    for budget in (40, 100, 300):
        r = ss.hessian_inertia(loss, params, zero_tol=0.1, method="lanczos", max_matvecs=budget)
        assert lanczos.products <= budget, budget
        assert lanczos.products == lanczos.state.num_matvecs, budget
        assert r.num_negative_lo <= 20 <= r.num_negative_hi, budget
    # Without a binding budget (the deflated Lanczos alone: no extremes to wait for).
    unlimited = lanczos(
        loss, params, jax.random.key(0), taus=[0.1], tol=1.5e-8, failure_prob=1e-3,
        max_matvecs=3000, max_locked=256,
    )  # fmt: skip
    assert lanczos.products == unlimited.num_matvecs > 300  # the budgets bind
    assert inertia._lanczos_bounds(unlimited, 0.1, 600)[:2] == (20, 20)


@pytest.mark.parametrize(
    "P, method, full, cap, expected",
    [
        (100, "auto", 2000, None, "eigh"),  # all eigenvalues up to full_spectrum_max_params
        (100, "auto", 2000, 50, "lanczos+slq"),  # ... and the cap: past it no dense Hessian
        (3000, "auto", 2000, None, "dense"),  # fits (dense_fits below: P <= 5000)
        (3000, "auto", 2000, 2500, "lanczos+slq"),  # over the cap
        (6000, "auto", 2000, None, "lanczos+slq"),  # does not fit
        (6000, "slq", 2000, None, "slq"),  # a method named is a method used
        (100, "lanczos", 0, None, "lanczos"),  # hessian_inertia: never eigh
    ],
)
def test_one_dense_or_not_rule(monkeypatch, P, method, full, cap, expected):
    monkeypatch.setattr(inertia, "dense_fits", lambda P, itemsize: P <= 5000)
    got = inertia.count_plan(P, 8, method=method, full_spectrum_max_params=full,
                             dense_max_params=cap)  # fmt: skip
    assert got == expected
    # The study's cells plan with the same rule (0: no cap in the config).
    import dataclasses

    from saddlestudy import config

    cfg = config.load("default")  # float64
    spec = dataclasses.replace(cfg.spectrum, method=method, full_spectrum_max_params=full,
                               dense_max_params=cap or 0)  # fmt: skip
    assert config.spectrum_plan(dataclasses.replace(cfg, spectrum=spec), P) == expected


def test_auto_inertia_uses_the_rule(x64, monkeypatch):
    # P = 6: dense while it "fits", Lanczos (then SLQ) when it does not, or when capped.
    def loss(p):
        return 0.5 * jnp.sum(jnp.arange(-2.0, 4.0) * p**2)

    params = jnp.ones(6)
    assert inertia.hessian_inertia(loss, params).method == "dense"
    capped = inertia.hessian_inertia(loss, params, dense_max_params=5)
    monkeypatch.setattr(inertia, "dense_fits", lambda *a: False)
    unfit = inertia.hessian_inertia(loss, params)
    assert capped.method != "dense" and unfit.method != "dense"
    assert capped.num_negative_lo == unfit.num_negative_lo == 2  # -2, -1: certified either way


def test_one_threshold_one_inertia_several_a_tuple(x64):
    loss, params = quadratic(np.array([-1.0, 0.5, 2.0, 3.0]))
    one = ss.hessian_inertia(loss, params, zero_tol=1e-5, method="dense")
    assert isinstance(one, ss.Inertia) and one.num_negative == 1
    (alone,) = ss.hessian_inertias(loss, params, zero_tols=[1e-5], method="dense")
    assert alone.num_negative == 1  # a tuple even of one
    for kwargs in ({"zero_tol": [1e-5]}, {"zero_tol": 1e-5, "relative_tol": 1e-3}):
        with pytest.raises(ValueError, match="use hessian_inertias"):
            ss.hessian_inertia(loss, params, **kwargs)
    with pytest.raises(ValueError, match="zero_tols must be a sequence"):
        ss.hessian_inertias(loss, params, zero_tols=1e-5)
