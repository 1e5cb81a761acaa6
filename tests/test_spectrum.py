import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import saddlestudy
from saddlestudy import losses, models
from saddlestudy.spectrum import Spectrum, hessian_spectrum


def quadratic_with_eigenvalues(eigenvalues, seed=0):
    """A loss 1/2 v^T A v on a nested pytree whose Hessian A has the given eigenvalues."""
    lam = np.asarray(eigenvalues, np.float64)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(lam.size, lam.size)))
    A = jnp.asarray(Q @ np.diag(lam) @ Q.T)
    params = {"a": jnp.zeros((2,)), "rest": {"b": jnp.zeros((lam.size - 2,))}}

    def loss(p):
        v = ravel_pytree(p)[0]
        return 0.5 * v @ A @ v

    return loss, params, Q


@pytest.mark.parametrize(
    "eigenvalues",
    [
        [-3.0, -1.0, 0.0, 0.0, 2.0, 5.0],  # zeros
        [-2.0, -2.0, -2.0, 1.0, 1.0, 4.0, 4.0],  # repeated values
        [0.5, 1.0, 1.5, 2.0],  # a minimum
        [-4.0, -1e-7, 1e-7, 3.0],  # inside the zero tolerance
    ],
)
def test_prescribed_eigenvalues(x64, eigenvalues):
    loss, params, _ = quadratic_with_eigenvalues(eigenvalues)
    s = hessian_spectrum(loss, params, zero_tol=1e-5)
    lam = np.sort(eigenvalues)
    np.testing.assert_allclose(s.eigenvalues, lam, atol=1e-12)  # float64: near machine precision
    P = len(lam)
    neg, pos = int((lam < -1e-5).sum()), int((lam > 1e-5).sum())
    assert (int(s.num_negative), int(s.num_zero), int(s.num_positive)) == (neg, P - neg - pos, pos)
    assert s.num_params == P
    assert float(s.index) == pytest.approx(neg / P)
    assert float(s.minimum_ratio) == pytest.approx(pos / P)
    assert float(s.lambda_min) == pytest.approx(lam[0], abs=1e-12)
    assert float(s.lambda_max) == pytest.approx(lam[-1], abs=1e-12)
    assert s.zero_tol == 1e-5 and s.method == "dense"


def test_min_eigenvector_is_a_unit_eigenvector(x64):
    loss, params, Q = quadratic_with_eigenvalues([-3.0, -1.0, 2.0, 5.0, 7.0])
    s = hessian_spectrum(loss, params)
    v = ravel_pytree(s.min_eigenvector)[0]
    assert jax.tree.structure(s.min_eigenvector) == jax.tree.structure(params)
    np.testing.assert_allclose(np.linalg.norm(v), 1.0, rtol=1e-12)
    # Q's columns are eigenvectors in the order of the eigenvalues given: -3 is the first.
    assert abs(float(v @ Q[:, 0])) == pytest.approx(1.0, abs=1e-10)
    assert v[np.argmax(np.abs(v))] > 0  # sign convention


def test_zero_tol_changes_counts_and_with_zero_tol_recounts(x64):
    loss, params, _ = quadratic_with_eigenvalues([-1e-3, -1e-6, 1e-4, 1.0])
    strict = hessian_spectrum(loss, params, zero_tol=1e-8)
    assert (int(strict.num_negative), int(strict.num_zero), int(strict.num_positive)) == (2, 0, 2)
    loose = hessian_spectrum(loss, params, zero_tol=1e-3 * 1.5)
    assert (int(loose.num_negative), int(loose.num_zero), int(loose.num_positive)) == (0, 3, 1)
    recount = strict.with_zero_tol(1.5e-3)
    assert (int(recount.num_negative), int(recount.num_zero)) == (0, 3)
    assert recount.zero_tol == 1.5e-3


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_respects_input_dtype(x64, dtype):
    config = models.MLPConfig(2, 1, depth=1, width=3)
    params = models.init_params(config, jax.random.key(0), dtype)
    x = jnp.ones((4, 2), dtype)
    loss = losses.make_loss_fn(models.make_apply(config), x, jnp.zeros((4, 1), dtype))
    s = hessian_spectrum(loss, params)
    assert s.eigenvalues.dtype == jnp.dtype(dtype)
    assert all(leaf.dtype == jnp.dtype(dtype) for leaf in jax.tree.leaves(s.min_eigenvector))


def test_vmap_over_replicas_matches_single_calls(x64):
    config = models.MLPConfig(3, 2, depth=1, width=3, activation="tanh")
    x = jax.random.normal(jax.random.key(1), (8, 3), jnp.float64)
    loss = losses.make_loss_fn(
        models.make_apply(config), x, jnp.array([0, 1] * 4), loss="cross_entropy"
    )
    params_R = models.init_replicas(config, jax.random.key(0), 3, jnp.float64)
    batched = jax.vmap(lambda p: hessian_spectrum(loss, p))(params_R)
    assert isinstance(batched, Spectrum) and batched.eigenvalues.shape == (3, config.num_params)
    for r in range(3):
        single = hessian_spectrum(loss, jax.tree.map(lambda a, r=r: a[r], params_R))
        np.testing.assert_allclose(
            batched.eigenvalues[r], single.eigenvalues, rtol=1e-10, atol=1e-13
        )
        assert int(batched.num_negative[r]) == int(single.num_negative)


def test_second_call_with_the_same_loss_does_not_retrace(x64):
    traces = []
    loss_q, params, _ = quadratic_with_eigenvalues([-1.0, 1.0, 2.0])

    def loss(p):
        traces.append(1)  # runs only while JAX traces
        return loss_q(p)

    hessian_spectrum(loss, params)
    n = len(traces)
    moved = jax.tree.map(lambda a: a + 1.0, params)
    hessian_spectrum(loss, moved, zero_tol=1e-3)
    assert len(traces) == n


def test_to_dict_gives_plain_values(x64):
    loss, params, _ = quadratic_with_eigenvalues([-1.0, 0.0, 2.0])
    d = hessian_spectrum(loss, params).to_dict()
    assert d["num_negative"] == 1 and isinstance(d["num_negative"], int)
    assert d["num_params"] == 3 and d["method"] == "dense"
    assert isinstance(d["eigenvalues"], np.ndarray) and d["min_eigenvector"].shape == (3,)
    assert isinstance(d["lambda_min"], float)


def test_exported_at_top_level():
    assert saddlestudy.hessian_spectrum is hessian_spectrum
    assert saddlestudy.Spectrum is Spectrum


@pytest.mark.parametrize("zero_tol", [-1.0, float("nan"), float("inf"), "tiny", None])
def test_bad_zero_tol(zero_tol):
    loss, params, _ = quadratic_with_eigenvalues([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="zero_tol"):
        hessian_spectrum(loss, params, zero_tol=zero_tol)


def test_unknown_method():
    loss, params, _ = quadratic_with_eigenvalues([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="unknown spectrum method"):
        hessian_spectrum(loss, params, method="magic")


def test_non_scalar_loss():
    with pytest.raises(ValueError, match="scalar"):
        hessian_spectrum(lambda p: p["w"] ** 2, {"w": jnp.ones(3)})


def test_nan_hessian_is_an_error_not_a_nan_spectrum():
    with pytest.raises(ValueError, match="non-finite"):
        hessian_spectrum(lambda p: jnp.sum(jnp.sqrt(p["w"]) ** 3), {"w": jnp.array([-1.0, 1.0])})


def test_integer_or_empty_params():
    with pytest.raises(ValueError, match="float"):
        hessian_spectrum(lambda p: jnp.sum(p["w"]), {"w": jnp.ones(2, jnp.int32)})
    with pytest.raises(ValueError, match="no array leaves"):
        hessian_spectrum(lambda p: jnp.float32(0.0), {})
