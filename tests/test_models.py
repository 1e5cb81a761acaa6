import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saddlestudy import models


def closed_form_num_params(n_in, widths, n_out, bias):
    sizes = [n_in, *widths, n_out]
    return sum(a * b + (b if bias else 0) for a, b in zip(sizes[:-1], sizes[1:]))


@pytest.mark.parametrize(
    "depth,width,bias",
    [(0, 5, True), (0, 5, False), (1, 7, True), (2, 3, False), (3, (4, 6, 2), True)],
)
def test_num_params_matches_closed_form_and_arrays(depth, width, bias):
    config = models.MLPConfig(5, 3, depth=depth, width=width, use_bias=bias)
    widths = list(width) if isinstance(width, tuple) else [width] * depth
    expected = closed_form_num_params(5, widths, 3, bias)
    assert config.num_params == expected
    model = models.MLP(config, rngs=__import__("flax").nnx.Rngs(0))
    assert model.num_params == expected
    params = models.init_params(config, jax.random.key(0))
    assert models.num_params(params) == expected
    assert len(params["layers"]) == depth + 1
    assert all(("bias" in layer) == bias for layer in params["layers"].values())


def test_depth_zero_is_a_linear_model():
    config = models.MLPConfig(4, 2, depth=0, activation="tanh")
    params = models.init_params(config, jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (6, 4))
    got = models.make_apply(config)(params, x)
    layer = params["layers"][0]
    np.testing.assert_allclose(got, x @ layer["kernel"] + layer["bias"][None, :], rtol=1e-6)


@pytest.mark.parametrize("activation", sorted(models.ACTIVATIONS))
def test_forward_pass_matches_hand_written_mlp(activation):
    config = models.MLPConfig(3, 2, depth=2, width=(4, 5), activation=activation)
    params = models.init_params(config, jax.random.key(3))
    x = jax.random.normal(jax.random.key(4), (7, 3))
    h = x
    act = {
        "identity": lambda v: v,
        "tanh": np.tanh,
        "relu": lambda v: np.maximum(v, 0),
        "gelu": jax.nn.gelu,
        "swish": lambda v: v / (1 + np.exp(-v)),
        "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
        "softplus": lambda v: np.log1p(np.exp(v)),
    }[activation]
    layers = params["layers"]
    for i in range(2):
        h = act(np.asarray(h) @ np.asarray(layers[i]["kernel"]) + np.asarray(layers[i]["bias"]))
    expected = np.asarray(h) @ np.asarray(layers[2]["kernel"]) + np.asarray(layers[2]["bias"])
    got = models.make_apply(config)(params, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)  # float32 tolerance


def test_output_activation_sigmoid():
    config = models.MLPConfig(2, 1, depth=0, output_activation="sigmoid")
    params = models.init_params(config, jax.random.key(0))
    x = jnp.array([[100.0, 100.0], [-100.0, -100.0]])
    out = models.make_apply(config)(params, x)
    assert jnp.all((out >= 0) & (out <= 1))


def test_vmapped_init_makes_independent_replicas():
    config = models.MLPConfig(3, 2, depth=1, width=4)
    params_R = models.init_replicas(config, jax.random.key(0), 6)
    kernels = params_R["layers"][0]["kernel"]
    assert kernels.shape == (6, 3, 4)
    for i, j in itertools.combinations(range(6), 2):
        assert not np.allclose(kernels[i], kernels[j])
    # Replica r equals a single init from the r-th split key.
    keys = jax.random.split(jax.random.key(0), 6)
    single = models.init_params(config, keys[2])
    np.testing.assert_array_equal(kernels[2], single["layers"][0]["kernel"])
    # The pure apply maps over the replica axis too.
    x = jnp.ones((5, 3))
    out = jax.vmap(models.make_apply(config), in_axes=(0, None))(params_R, x)
    assert out.shape == (6, 5, 2)


def test_init_is_deterministic_by_key():
    config = models.MLPConfig(3, 2, depth=2, width=4)
    a = models.init_params(config, jax.random.key(7))
    b = models.init_params(config, jax.random.key(7))
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_float64_params_compute_in_float64(x64):
    config = models.MLPConfig(3, 2, depth=1, width=4)
    params = models.init_params(config, jax.random.key(0), dtype="float64")
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(params))
    out = models.make_apply(config)(params, jnp.ones((2, 3), jnp.float64))
    assert out.dtype == jnp.float64


def test_float64_without_x64_is_a_clear_error():
    if jax.config.jax_enable_x64:
        pytest.skip("x64 is switched on globally in this run")
    with pytest.raises(ValueError, match="x64"):
        models.init_params(models.MLPConfig(2, 1), jax.random.key(0), dtype="float64")


def test_linear_autoencoder_config():
    config = models.linear_autoencoder_config(16, 4)
    assert config.num_params == 2 * 16 * 4
    params = models.init_params(config, jax.random.key(0))
    W1 = params["layers"][0]["kernel"]
    W2 = params["layers"][1]["kernel"]
    x = jax.random.normal(jax.random.key(1), (3, 16))
    np.testing.assert_allclose(models.make_apply(config)(params, x), x @ W1 @ W2, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(depth=-1), "depth"),
        (dict(width=0), "width"),
        (dict(depth=2, width=(3,)), "width"),
        (dict(activation="leaky"), "activation"),
        (dict(output_activation="cube"), "output_activation"),
        (dict(in_features=0), "in_features"),
        (dict(width="wide"), "width"),
        (dict(depth=1.5), "depth"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs, match):
    base = dict(in_features=3, out_features=2)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        models.MLPConfig(**base)


def test_bad_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="dtype"):
        models.init_params(models.MLPConfig(2, 1), jax.random.key(0), dtype="int32")
