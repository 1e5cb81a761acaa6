import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from saddlestudy import hessian, losses, models


def w1w2_loss(params):
    return (1.0 - params["w1"] * params["w2"]) ** 2


def w1w2_hessian(w1, w2):
    # Hand-derived (seed 000): d2L/dw1^2 = 2 w2^2, d2L/dw2^2 = 2 w1^2, cross = -2 + 4 w1 w2.
    return np.array([[2 * w2**2, -2 + 4 * w1 * w2], [-2 + 4 * w1 * w2, 2 * w1**2]])


@pytest.mark.parametrize("w1,w2", [(0.0, 0.0), (0.3, -1.2), (2.0, 0.5), (-1.0, -1.0)])
def test_lecture_hessian_matches_hand_derivation(x64, w1, w2):
    params = {"w1": jnp.float64(w1), "w2": jnp.float64(w2)}
    H = hessian.dense_hessian(w1w2_loss, params)
    np.testing.assert_allclose(H, w1w2_hessian(w1, w2), rtol=1e-14, atol=1e-14)
    g = hessian.gradient(w1w2_loss, params)
    r = 1 - w1 * w2
    np.testing.assert_allclose([g["w1"], g["w2"]], [-2 * r * w2, -2 * r * w1], atol=1e-14)
    np.testing.assert_allclose(hessian.grad_norm_sq(w1w2_loss, params), 4 * r**2 * (w1**2 + w2**2))


def test_quadratic_on_nested_pytree(x64):
    rng = np.random.default_rng(0)
    M = rng.normal(size=(7, 7))
    A = M @ M.T - 3 * np.eye(7)  # symmetric, indefinite
    b = rng.normal(size=7)
    params = {"outer": {"a": jnp.zeros((2, 2)), "b": [jnp.zeros(2), jnp.zeros(())]}}
    flat0, unravel = ravel_pytree(params)

    def loss(p):
        v = ravel_pytree(p)[0]
        return 0.5 * v @ A @ v + b @ v

    np.testing.assert_allclose(hessian.dense_hessian(loss, params), A, rtol=1e-13, atol=1e-13)
    v = unravel(jnp.asarray(rng.normal(size=7)))
    got = ravel_pytree(hessian.hvp(loss, unravel(flat0 + 1.0), v))[0]
    np.testing.assert_allclose(got, A @ ravel_pytree(v)[0], rtol=1e-13, atol=1e-13)
    assert jax.tree.structure(hessian.hvp(loss, params, v)) == jax.tree.structure(params)


def test_hvp_equals_dense_hessian_times_vector_on_an_mlp(x64):
    config = models.MLPConfig(3, 2, depth=2, width=4, activation="tanh")
    params = models.init_params(config, jax.random.key(0), "float64")
    x = jax.random.normal(jax.random.key(1), (10, 3), jnp.float64)
    y = jax.random.normal(jax.random.key(2), (10, 2), jnp.float64)
    loss = losses.make_loss_fn(models.make_apply(config), x, y, loss="mse")
    H = hessian.dense_hessian(loss, params)
    assert H.shape == (config.num_params,) * 2
    np.testing.assert_allclose(H, H.T, atol=1e-12)
    v = jax.tree.map(lambda p: jnp.ones_like(p) * 0.1, params)
    np.testing.assert_allclose(
        ravel_pytree(hessian.hvp(loss, params, v))[0], H @ ravel_pytree(v)[0], rtol=1e-10
    )


def test_linear_regression_hessian_is_two_x_transpose_x_over_n(x64):
    # L = mean_n (w.x_n - y_n)^2  =>  H = 2/N X^T X.
    config = models.MLPConfig(4, 1, depth=0, use_bias=False)
    params = models.init_params(config, jax.random.key(0), "float64")
    X = jax.random.normal(jax.random.key(1), (9, 4), jnp.float64)
    y = jax.random.normal(jax.random.key(2), (9, 1), jnp.float64)
    loss = losses.make_loss_fn(models.make_apply(config), X, y, loss="mse")
    np.testing.assert_allclose(hessian.dense_hessian(loss, params), 2 / 9 * X.T @ X, rtol=1e-12)
    # The L2 penalty adds l2 * I.
    loss_l2 = losses.make_loss_fn(models.make_apply(config), X, y, loss="mse", l2=0.3)
    np.testing.assert_allclose(
        hessian.dense_hessian(loss_l2, params), 2 / 9 * X.T @ X + 0.3 * np.eye(4), rtol=1e-12
    )


def test_softmax_regression_hessian_matches_closed_form(x64):
    # L = mean_n CE(W^T x_n): H = 1/N sum_n (diag(p_n) - p_n p_n^T) kron x_n x_n^T, with the
    # kernel W (d, C) flattened row-major, i.e. index (i, c) -> i * C + c.
    d, C, N = 3, 4, 6
    config = models.MLPConfig(d, C, depth=0, use_bias=False)
    params = models.init_params(config, jax.random.key(0), "float64")
    X = np.asarray(jax.random.normal(jax.random.key(1), (N, d), jnp.float64))
    labels = jnp.array([0, 1, 2, 3, 1, 2])
    loss = losses.make_loss_fn(
        models.make_apply(config), jnp.asarray(X), labels, loss="cross_entropy"
    )
    W = np.asarray(params["layers"][0]["kernel"])
    logits = X @ W
    P = np.exp(logits - logits.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    expected = sum(np.kron(np.outer(x, x), np.diag(p) - np.outer(p, p)) for x, p in zip(X, P)) / N
    np.testing.assert_allclose(
        hessian.dense_hessian(loss, params), expected, rtol=1e-11, atol=1e-14
    )


@functools.cache
def chunk_problem():
    """3-5-2 tanh MLP, cross-entropy: P = 32; its dense Hessian, once (jitted)."""
    config = models.MLPConfig(3, 2, depth=1, width=5, activation="tanh")
    params = jax.jit(models.init_params, static_argnums=(0, 2))(
        config, jax.random.key(0), "float64"
    )
    x = jax.random.normal(jax.random.key(1), (6, 3), jnp.float64)
    loss = losses.make_loss_fn(
        models.make_apply(config), x, jnp.array([0, 1, 1, 0, 1, 0]), loss="cross_entropy"
    )
    return loss, params, jax.jit(hessian.dense_hessian, static_argnums=0)(loss, params)


def test_flat_hvp_matches_hvp_on_an_mlp(x64):
    loss, params, H = chunk_problem()
    matvec, theta = hessian.flat_hvp(loss, params)
    flat, unravel = ravel_pytree(params)
    np.testing.assert_array_equal(theta, flat)
    V = jax.random.normal(jax.random.key(3), (3, theta.size), jnp.float64)
    products = jax.jit(jax.vmap(matvec))(V)
    np.testing.assert_allclose(products, V @ H, rtol=1e-12, atol=1e-14)
    single = jax.jit(lambda v: ravel_pytree(hessian.hvp(loss, params, unravel(v)))[0])(V[0])
    np.testing.assert_allclose(products[0], single, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 32, 1000])
def test_dense_hessian_chunked_equals_dense_hessian(x64, chunk_size):
    # P = 32: chunks that divide P, that do not (the last one is padded), and exceed it.
    loss, params, H = chunk_problem()
    chunked = jax.jit(hessian.dense_hessian_chunked, static_argnums=(0, 2))
    H_chunked = chunked(loss, params, chunk_size)
    assert H_chunked.shape == (32, 32)
    np.testing.assert_allclose(H_chunked, H, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5, True])
def test_dense_hessian_chunked_rejects_bad_chunk_size(chunk_size):
    with pytest.raises(ValueError, match="chunk_size"):
        hessian.dense_hessian_chunked(
            lambda p: jnp.sum(p["w"] ** 2), {"w": jnp.ones(3)}, chunk_size
        )
