import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from saddlestudy import losses, models, train


def small_problem():
    config = models.MLPConfig(3, 1, depth=1, width=4, activation="tanh")
    x = jax.random.normal(jax.random.key(0), (16, 3))
    y = jnp.sin(x[:, :1])
    return config, losses.make_loss_fn(models.make_apply(config), x, y)


def test_loss_decreases_and_replicas_match_single_runs():
    config, loss = small_problem()
    params_R = models.init_replicas(config, jax.random.key(1), 3)
    result = train.train_replicas(loss, params_R, optax.adam(0.05), 200, record_every=20)
    assert result.loss_history.shape == (3, 10)
    assert np.all(np.asarray(result.loss) < np.asarray(jax.vmap(loss)(params_R)))
    assert np.all(np.asarray(result.steps) == 200) and not np.any(result.diverged)
    single = train.train_replicas(
        loss, jax.tree.map(lambda a: a[1:2], params_R), optax.adam(0.05), 200, record_every=20
    )
    np.testing.assert_allclose(single.loss[0], result.loss[1], rtol=1e-5)  # float32


def test_same_inputs_give_identical_numbers():
    config, loss = small_problem()
    params_R = models.init_replicas(config, jax.random.key(1), 2)
    a = train.train_replicas(loss, params_R, optax.sgd(0.1), 50)
    b = train.train_replicas(loss, params_R, optax.sgd(0.1), 50)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


def test_replica_stops_below_grad_tol_and_freezes():
    # L = 1/2 w^2 with SGD(0.5): w halves every step, |g|^2 = w^2 = 4^-k.
    def loss(p):
        return 0.5 * jnp.sum(p["w"] ** 2)

    params_R = {"w": jnp.array([[1.0], [1e-4]])}
    result = train.train_replicas(loss, params_R, optax.sgd(0.5), 40, grad_tol=1e-6)
    assert int(result.steps[1]) == 0  # already converged at the start
    assert int(result.steps[0]) == 10  # 4^-10 < 1e-6 <= 4^-9
    assert result.params["w"][1, 0] == params_R["w"][1, 0]  # frozen, bit for bit
    assert float(result.grad_norm_sq[0]) < 1e-6


def test_divergence_of_one_replica_is_recorded_not_fatal():
    # L = 1/2 a w^2 with SGD(1.0): replica with a = 3 diverges (|1 - a| > 1), a = 0.5 converges.
    def loss(p):
        return 0.5 * jnp.sum(p["a"] * p["w"] ** 2)

    def one(a, w):
        return {"a": jnp.array([a]), "w": jnp.array([w])}

    params_R = jax.tree.map(lambda *xs: jnp.stack(xs), one(3.0, 1.0), one(0.5, 1.0))
    opt = optax.multi_transform(
        {"a": optax.set_to_zero(), "w": optax.sgd(1.0)}, {"a": "a", "w": "w"}
    )
    result = train.train_replicas(loss, params_R, opt, 300)
    assert bool(result.diverged[0]) and not bool(result.diverged[1])
    assert np.isfinite(result.loss[0]) and np.all(np.isfinite(result.params["w"]))
    assert float(result.loss[1]) < 1e-30


@pytest.mark.parametrize("steps,every", [(0, 1), (10, 3), (10, 0)])
def test_bad_step_arguments(steps, every):
    config, loss = small_problem()
    params_R = models.init_replicas(config, jax.random.key(1), 1)
    with pytest.raises(ValueError):
        train.train_replicas(loss, params_R, optax.sgd(0.1), steps, record_every=every)
