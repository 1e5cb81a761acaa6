import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import count_compilations

from saddlestudy import losses, models, train
from saddlestudy.train import TrainConfig


def small_problem():
    config = models.MLPConfig(3, 1, depth=1, width=4, activation="tanh")
    x = jax.random.normal(jax.random.key(0), (16, 3))
    y = jnp.sin(x[:, :1])
    return config, losses.make_loss_fn(models.make_apply(config), x, y), (x, y)


def take(tree, r):
    return jax.tree.map(lambda a: a[r : r + 1], tree)


def test_loss_decreases_and_replicas_match_single_runs():
    config, loss, _ = small_problem()
    params_R = models.init_replicas(config, jax.random.key(1), 3)
    cfg = TrainConfig(num_steps=200, record_every=20)
    result = train.train_replicas(loss, params_R, optax.adam(0.05), cfg)
    assert result.loss_history.shape == (3, 10) and result.grad_norm_sq_history.shape == (3, 10)
    assert np.all(np.asarray(result.loss) < np.asarray(jax.vmap(loss)(params_R)))
    assert np.all(np.asarray(result.steps) == 200) and not np.any(result.diverged)
    np.testing.assert_allclose(result.loss_history[:, -1], result.loss, rtol=1e-6)
    single = train.train_replicas(loss, take(params_R, 1), optax.adam(0.05), cfg)
    np.testing.assert_allclose(single.loss[0], result.loss[1], rtol=1e-5)  # float32


def test_same_inputs_give_identical_numbers():
    config, loss, _ = small_problem()
    params_R = models.init_replicas(config, jax.random.key(1), 2)
    a = train.train_replicas(loss, params_R, optax.sgd(0.1), 50)
    b = train.train_replicas(loss, params_R, optax.sgd(0.1), 50)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


def test_second_call_does_not_recompile():
    config, loss, _ = small_problem()
    params_R = models.init_replicas(config, jax.random.key(1), 2)
    opt = optax.sgd(0.1)
    cfg = TrainConfig(num_steps=20)
    train.train_replicas(loss, params_R, opt, cfg)
    before = train._train._cache_size()
    train.train_replicas(loss, models.init_replicas(config, jax.random.key(2), 2), opt, cfg)
    assert train._train._cache_size() == before


def quadratic(p):
    return 0.5 * jnp.sum(p["w"] ** 2)


def test_replica_stops_below_grad_tol_and_freezes():
    # L = 1/2 w^2 with SGD(0.5): w halves every step, |g|^2 = w^2 = 4^-k.
    params_R = {"w": jnp.array([[1.0], [1e-4]])}
    cfg = TrainConfig(num_steps=40, grad_tol=1e-6)
    result = train.train_replicas(quadratic, params_R, optax.sgd(0.5), cfg)
    assert int(result.steps[1]) == 0  # already converged at the start
    assert int(result.steps[0]) == 10  # 4^-10 < 1e-6 <= 4^-9
    assert result.params["w"][1, 0] == params_R["w"][1, 0]  # frozen, bit for bit
    assert float(result.grad_norm_sq[0]) < 1e-6


def test_divergence_of_one_replica_is_recorded_not_fatal():
    # L = 1/2 a w^2 with SGD(1.0) on w: a = 3 diverges (|1 - a| > 1), a = 0.5 converges.
    def loss(p):
        return 0.5 * jnp.sum(p["a"] * p["w"] ** 2)

    params_R = {"a": jnp.array([[3.0], [0.5]]), "w": jnp.array([[1.0], [1.0]])}
    opt = optax.multi_transform(
        {"a": optax.set_to_zero(), "w": optax.sgd(1.0)}, {"a": "a", "w": "w"}
    )
    result = train.train_replicas(loss, params_R, opt, 300)
    assert bool(result.diverged[0]) and not bool(result.diverged[1])
    assert np.isfinite(result.loss[0]) and np.all(np.isfinite(result.params["w"]))
    assert float(result.loss[1]) < 1e-30


def test_snapshots_at_steps_and_loss_levels():
    # SGD(0.5) on 1/2 w^2 from w = 1: w_t = 2^-t and L_t = 4^-t / 2, known at every step.
    params_R = {"w": jnp.array([[1.0], [0.5]])}
    cfg = TrainConfig(
        num_steps=10, record_every=5, snapshot_steps=(0, 3, 10), snapshot_losses=(0.1, 1e-3, 1e-30)
    )
    result = train.train_replicas(quadratic, params_R, optax.sgd(0.5), cfg)
    np.testing.assert_allclose(result.step_snapshots["w"][0, :, 0], [1.0, 2.0**-3, 2.0**-10])
    np.testing.assert_allclose(result.step_snapshots["w"][1, :, 0], [0.5, 2.0**-4, 2.0**-11])
    # Replica 0: L_t <= 0.1 first at t = 2 (L = 1/32), <= 1e-3 at t = 5 (L = 1/2048); never 1e-30.
    np.testing.assert_array_equal(result.loss_snapshot_steps[0], [2, 5, -1])
    np.testing.assert_array_equal(result.loss_snapshot_steps[1], [1, 4, -1])
    np.testing.assert_allclose(result.loss_snapshots["w"][0, :2, 0], [2.0**-2, 2.0**-5])


def test_minibatch_training_reduces_the_full_loss_and_is_seeded():
    config, _, (x, y) = small_problem()
    batch_loss = losses.make_batch_loss_fn(models.make_apply(config), loss="mse")
    params_R = models.init_replicas(config, jax.random.key(1), 3)
    cfg = TrainConfig(num_steps=300, record_every=30, batch_size=4)
    run = lambda key: train.train_replicas(  # noqa: E731
        batch_loss, params_R, optax.sgd(0.05), cfg, data=(x, y), key=key
    )
    a, b, c = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
    start = jax.vmap(lambda p: batch_loss(p, (x, y)))(params_R)
    assert np.all(np.asarray(a.loss) < np.asarray(start))
    np.testing.assert_array_equal(a.loss, b.loss)
    assert not np.allclose(a.loss, c.loss)
    # Replicas draw different batches: two replicas from the same init end up apart.
    same_init = jax.tree.map(lambda p: jnp.stack([p[0], p[0]]), params_R)
    d = train.train_replicas(batch_loss, same_init, optax.sgd(0.05), cfg, data=(x, y))
    assert not np.allclose(d.loss[0], d.loss[1])


def test_data_per_replica():
    config, _, (x, y) = small_problem()
    batch_loss = losses.make_batch_loss_fn(models.make_apply(config), loss="mse")
    params_R = models.init_replicas(config, jax.random.key(1), 2)
    data_R = (jnp.stack([x, 2 * x]), jnp.stack([y, -y]))
    result = train.train_replicas(
        batch_loss, params_R, optax.adam(0.05), 50, data=data_R, data_per_replica=True
    )
    for r in range(2):
        alone = train.train_replicas(
            batch_loss, take(params_R, r), optax.adam(0.05), 50, data=(data_R[0][r], data_R[1][r])
        )
        np.testing.assert_allclose(alone.loss[0], result.loss[r], rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_steps=0),
        dict(num_steps=10, record_every=3),
        dict(num_steps=10, record_every=0),
        dict(num_steps=10, grad_tol=-1.0),
        dict(num_steps=10, batch_size=0),
        dict(num_steps=10, snapshot_steps=(11,)),
        dict(num_steps=10, snapshot_losses=(float("nan"),)),
    ],
)
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


def test_bad_call_arguments():
    config, loss, (x, y) = small_problem()
    params_R = models.init_replicas(config, jax.random.key(1), 2)
    with pytest.raises(ValueError, match="needs the data"):
        train.train_replicas(loss, params_R, optax.sgd(0.1), TrainConfig(10, batch_size=2))
    with pytest.raises(ValueError, match="exceeds"):
        train.train_replicas(
            loss, params_R, optax.sgd(0.1), TrainConfig(10, batch_size=99), data=(x, y)
        )
    with pytest.raises(ValueError, match="replica axis"):
        train.train_replicas(
            loss, {"a": jnp.ones((2, 1)), "b": jnp.ones((3, 1))}, optax.sgd(0.1), 10
        )


SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, sys, jax, jax.numpy as jnp, optax
    jax.config.update("jax_enable_x64", True)
    R = int(sys.argv[1])
    from saddlestudy import losses, models, train
    config = models.MLPConfig(3, 1, depth=1, width=4, activation="tanh")
    x = jax.random.normal(jax.random.key(0), (16, 3), jnp.float64)
    loss = losses.make_loss_fn(models.make_apply(config), x, jnp.sin(x[:, :1]))
    params_R = models.init_replicas(config, jax.random.key(1), R, jnp.float64)
    result = train.train_replicas(loss, params_R, optax.adam(0.05), 100)
    leaf = jax.tree.leaves(result.params)[0]
    print(json.dumps({"devices": jax.device_count(), "loss": [float(v) for v in result.loss],
                      "shards": len(leaf.sharding.device_set), "rows": leaf.shape[0]}))
    """
)


def run_script(devices, replicas=8):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    out = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT, str(replicas)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.e2e  # fake devices in a subprocess
def test_sharded_over_four_cpu_devices_equals_single_device():
    one, four = run_script(1), run_script(4)
    assert one["devices"] == 1 and four["devices"] == 4 and four["shards"] == 4
    np.testing.assert_allclose(
        four["loss"], one["loss"], rtol=1e-6
    )  # float32; XLA may fuse differently


@pytest.mark.e2e  # fake devices in a subprocess
def test_any_replica_count_on_eight_devices_equals_one_device():
    # 3 replicas on 8 devices: padded to 8, trained sharded, the padding dropped.
    one, eight = run_script(1, replicas=3), run_script(8, replicas=3)
    assert eight["devices"] == 8 and eight["rows"] == 3 and len(eight["loss"]) == 3
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-12)


@pytest.mark.parametrize(
    "name, hparams",
    [
        ("adam", {"learning_rate": 0.05, "b2": 0.99}),
        ("irprop-", {"learning_rate": 0.01}),
        ("irprop+", {"learning_rate": 0.01, "eta_plus": 1.3}),
        ("quickprop", {"learning_rate": 0.05}),
    ],
)
def test_traced_hyperparameters_give_the_numbers_of_the_fixed_optimizer(x64, name, hparams):
    # Bitwise in float64. (In float32, Adam differs in the last ulp: XLA folds a constant
    # hyperparameter into the arithmetic differently from a traced one.)
    from saddlestudy import optim

    config, loss, _ = small_problem()
    params_R = models.init_replicas(config, jax.random.key(1), 2, "float64")
    cfg = TrainConfig(num_steps=60, record_every=20, snapshot_steps=(20,))
    fixed = train.train_replicas(loss, params_R, optim.make_optimizer(name, **hparams), cfg)
    traced = train.train_replicas(
        loss, params_R, optim.OptimizerFactory(name), cfg, hyperparams=hparams
    )
    for a, b in zip(jax.tree.leaves(fixed), jax.tree.leaves(traced), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_grid_of_learning_rates_compiles_training_once(x64):
    from saddlestudy import optim

    config, loss, _ = small_problem()
    params_R = models.init_replicas(config, jax.random.key(1), 2)
    cfg = TrainConfig(num_steps=40, record_every=20)
    factory = optim.OptimizerFactory("irprop-")
    before = train._train._cache_size()
    losses_by_lr = []
    with count_compilations() as compiled:
        for i, lr in enumerate((0.001, 0.003, 0.01, 0.03)):
            hparams = {"learning_rate": lr}
            result = train.train_replicas(loss, params_R, factory, cfg, hyperparams=hparams)
            losses_by_lr.append(np.asarray(result.loss))
            if i == 0:
                first = len(compiled)
    assert first >= 1 and train._train._cache_size() == before + 1
    assert len(compiled) == first  # the later learning rates compile nothing
    # ... and they are really different runs.
    assert len({float(v[0]) for v in losses_by_lr}) == 4
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.OptimizerFactory("adamw")
