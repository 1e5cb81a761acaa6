"""Tests for saddlestudy.optim: known answers for Rprop and QuickProp, the torch reference
trajectory, and every registry optimizer under jit, vmap and optax.chain."""

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from saddlestudy import optim

FIXTURE = Path(__file__).parent / "fixtures" / "rprop_torch_trajectory.npz"
TORCH_GRADS = (1.0, 1.0, 1.0, -1.0, 1.0)  # docs/science.md §4, lr 0.1
TORCH_STEPS = (-0.1, -0.12, -0.144, 0.0, -0.072)
# Relative tolerance for a few float operations in each dtype.
RTOL = {jnp.dtype("float32"): 1e-6, jnp.dtype("float64"): 1e-12}


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """float32 with JAX's default config, float64 with x64 switched on (and restored)."""
    if request.param == "float64":
        request.getfixturevalue("x64")
    return jnp.dtype(request.param)


def run_sequence(opt, grads, dtype, values=None, shape=(1,)):
    """Feeds a fixed gradient sequence to ``opt``; returns the updates and the last state."""
    params = jnp.zeros(shape, dtype)
    state = opt.init(params)
    steps = []
    for t, g in enumerate(grads):
        extra = {} if values is None else {"value": values[t]}
        updates, state = opt.update(jnp.full(shape, g, dtype), state, params, **extra)
        steps.append(np.asarray(updates))
    return np.stack(steps), state


# --------------------------------------------------------------------------------------------
# Rprop
# --------------------------------------------------------------------------------------------


def test_irprop_minus_matches_torch_sequence(dtype):
    steps, state = run_sequence(optim.rprop(0.1), TORCH_GRADS, dtype)
    np.testing.assert_allclose(steps[:, 0], TORCH_STEPS, rtol=RTOL[dtype], atol=0)
    assert steps.dtype == dtype
    for leaf in jax.tree.leaves(state):
        assert leaf.dtype == dtype
    # the registry's default irprop- is the same optimizer
    steps_registry, _ = run_sequence(
        optim.make_optimizer("irprop-", learning_rate=0.1), TORCH_GRADS, dtype
    )
    np.testing.assert_array_equal(steps_registry, steps)


def test_optax_rprop_is_one_step_late():
    # If this fails, optax fixed its rprop: check whether we still need our own (see optim.py).
    steps, _ = run_sequence(optax.rprop(0.1), TORCH_GRADS, jnp.float32)
    np.testing.assert_allclose(steps[:, 0], [0.0, -0.1, -0.12, 0.0, 0.0], rtol=1e-6, atol=0)


def test_rprop_minus_steps_through_sign_changes(dtype):
    steps, _ = run_sequence(optim.rprop(0.1, variant="rprop-"), TORCH_GRADS, dtype)
    # sign change: Δ 0.144 -> 0.072 and step against the new gradient; again -> 0.036
    np.testing.assert_allclose(
        steps[:, 0], [-0.1, -0.12, -0.144, 0.072, -0.036], rtol=RTOL[dtype], atol=0
    )


def test_rprop_plus_undoes_previous_step(dtype):
    steps, state = run_sequence(optim.rprop(0.1, variant="rprop+"), TORCH_GRADS, dtype)
    # sign change at t=3: undo the -0.144 step, forget g; t=4 steps with the halved Δ = 0.072
    np.testing.assert_allclose(
        steps[:, 0], [-0.1, -0.12, -0.144, 0.144, -0.072], rtol=RTOL[dtype], atol=0
    )
    np.testing.assert_allclose(steps[:4, 0].sum(), -0.22, rtol=RTOL[dtype])  # back at θ_2
    np.testing.assert_allclose(state.step_sizes[0], 0.072, rtol=RTOL[dtype])


@pytest.mark.parametrize(
    ("losses", "step_at_sign_change"),
    [
        ((3.0, 2.0, 1.0, 0.5, 0.4), 0.0),  # loss went down: like irprop-, no step
        ((3.0, 2.0, 1.0, 1.5, 0.4), 0.144),  # loss went up: undo the -0.144 step
    ],
)
def test_irprop_plus_undoes_only_when_loss_went_up(dtype, losses, step_at_sign_change):
    opt = optim.rprop(0.1, variant="irprop+")
    steps, state = run_sequence(opt, TORCH_GRADS, dtype, values=losses)
    expected = [-0.1, -0.12, -0.144, step_at_sign_change, -0.072]
    np.testing.assert_allclose(steps[:, 0], expected, rtol=RTOL[dtype], atol=0)
    assert state.prev_value.dtype == dtype
    np.testing.assert_allclose(state.prev_value, losses[-1], rtol=RTOL[dtype])
    # a loss that goes up without a sign change changes nothing
    steps_up, _ = run_sequence(opt, (1.0, 1.0), dtype, values=(1.0, 2.0))
    np.testing.assert_allclose(steps_up[:, 0], [-0.1, -0.12], rtol=RTOL[dtype], atol=0)


def test_irprop_plus_without_value_raises():
    opt = optim.rprop(0.1, variant="irprop+")
    params = jnp.zeros(2)
    with pytest.raises(ValueError, match="value=loss"):
        opt.update(jnp.ones(2), opt.init(params), params)
    opt = optim.make_optimizer("irprop+", learning_rate=0.1)
    with pytest.raises(ValueError, match="value=loss"):
        opt.update(jnp.ones(2), opt.init(params), params)


def test_rprop_step_size_is_clipped_to_bounds(dtype):
    grow = optim.rprop(1.0, variant="rprop-", max_step_size=1.5)
    steps, state = run_sequence(grow, (1.0,) * 5, dtype)
    np.testing.assert_allclose(steps[:, 0], [-1.0, -1.2, -1.44, -1.5, -1.5], rtol=RTOL[dtype])
    np.testing.assert_allclose(state.step_sizes[0], 1.5, rtol=RTOL[dtype])
    shrink = optim.rprop(0.1, variant="rprop-", min_step_size=0.04)
    steps, _ = run_sequence(shrink, (1.0, -1.0, 1.0, -1.0), dtype)
    np.testing.assert_allclose(steps[:, 0], [-0.1, 0.05, -0.04, 0.04], rtol=RTOL[dtype])
    # as in torch, a learning rate outside the bounds is clipped at the first step
    steps, _ = run_sequence(optim.rprop(2.0, max_step_size=1.0), (1.0,), dtype)
    np.testing.assert_allclose(steps[:, 0], [-1.0], rtol=RTOL[dtype])


def test_rprop_zero_gradient_does_not_step_or_adapt(dtype):
    steps, state = run_sequence(optim.rprop(0.1, variant="rprop-"), (1.0, 0.0, 1.0), dtype)
    # g = 0: no step, Δ unchanged; next step the product with 0 leaves Δ alone again
    np.testing.assert_allclose(steps[:, 0], [-0.1, 0.0, -0.1], rtol=RTOL[dtype], atol=0)


def mlp_loss(params, x, y):
    hidden = jnp.tanh(x @ params["w1"].T + params["b1"][None, :])
    out = hidden @ params["w2"].T + params["b2"][None, :]
    return jnp.mean(jnp.square(out - y))


def test_irprop_minus_matches_torch_mlp_trajectory(x64):
    ref = np.load(FIXTURE)
    settings = json.loads(str(ref["settings"]))
    assert settings["optimizer"] == "torch.optim.Rprop"
    assert str(ref["torch_version"]).startswith("2.13.0")
    names = ("w1", "b1", "w2", "b2")
    x, y = jnp.asarray(ref["x"]), jnp.asarray(ref["y"])
    opt = optim.make_optimizer(
        "irprop-",
        learning_rate=settings["lr"],
        eta_minus=settings["etas"][0],
        eta_plus=settings["etas"][1],
        min_step_size=settings["step_sizes"][0],
        max_step_size=settings["step_sizes"][1],
    )

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(mlp_loss)(params, x, y)
        updates, state = opt.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state, value

    params = {k: jnp.asarray(ref[f"traj_{k}"][0]) for k in names}
    state = opt.init(params)
    for t in range(settings["n_steps"]):
        params, state, value = step(params, state)
        # sign-based steps: the trajectories agree up to float64 rounding of the sums
        np.testing.assert_allclose(value, ref["loss"][t], rtol=1e-10, atol=0)
        for k in names:
            np.testing.assert_allclose(params[k], ref[f"traj_{k}"][t + 1], rtol=1e-10, atol=1e-14)
        assert params["w1"].dtype == jnp.float64
    # the reference exercises iRprop-'s sign-change rule: some weight stands still some step
    still = [np.any(np.diff(ref[f"traj_{k}"], axis=0) == 0) for k in names]
    assert any(still)


# --------------------------------------------------------------------------------------------
# QuickProp
# --------------------------------------------------------------------------------------------


def quickprop_step(g, prev_g, prev_step, dtype, learning_rate=0.1, max_growth=1.75):
    """One QuickProp update from a given state (vectors of cases side by side)."""
    opt = optim.quickprop(learning_rate, max_growth=max_growth)
    state = optim.QuickpropState(
        prev_grads=jnp.asarray(prev_g, dtype), prev_steps=jnp.asarray(prev_step, dtype)
    )
    updates, new_state = opt.update(jnp.asarray(g, dtype), state)
    assert updates.dtype == dtype and new_state.prev_steps.dtype == dtype
    return np.asarray(updates)


def test_quickprop_zero_previous_step_takes_gradient_step(dtype):
    opt = optim.quickprop(0.1)
    params = jnp.zeros(2, dtype)
    updates, state = opt.update(jnp.asarray([2.0, -3.0], dtype), opt.init(params), params)
    np.testing.assert_allclose(updates, [-0.2, 0.3], rtol=RTOL[dtype])
    np.testing.assert_array_equal(state.prev_grads, [2.0, -3.0])
    # a weight whose last step was zero restarts with a gradient step, whatever g_{t-1} was
    step = quickprop_step([1.0], [5.0], [0.0], dtype)
    np.testing.assert_allclose(step, [-0.1], rtol=RTOL[dtype])


def test_quickprop_parabola_jump_plus_gradient_term(dtype):
    # moved downhill by -0.5; slope shrank 2 -> 0.5, same sign (0.5 < 1.75/2.75 * 2):
    # jump = -0.5 * 0.5 / (2 - 0.5) = -1/6, plus the gradient term -0.1 * 0.5
    step = quickprop_step([0.5], [2.0], [-0.5], dtype)
    np.testing.assert_allclose(step, [-1 / 6 - 0.05], rtol=RTOL[dtype])


def test_quickprop_growth_is_capped(dtype):
    # slope 1.5 >= 1.75/2.75 * 2: take 1.75 * the previous step (+ the gradient term);
    # the same when the slope did not change at all (the parabola has no minimum)
    step = quickprop_step([1.5, 2.0, 3.0], [2.0, 2.0, 2.0], [-0.5, -0.5, -0.5], dtype)
    expected = [-0.875 - 0.15, -0.875 - 0.2, -0.875 - 0.3]
    np.testing.assert_allclose(step, expected, rtol=RTOL[dtype])
    # just below the threshold the parabola is used, and it grows the step by just under μ
    g = np.float64(2.0 * 1.75 / 2.75) * (1 - 1e-3)
    step = quickprop_step([g], [2.0], [-0.5], dtype)
    np.testing.assert_allclose(step, [-0.5 * g / (2.0 - g) - 0.1 * g], rtol=1e3 * RTOL[dtype])
    assert -0.5 * 1.75 - 0.1 * g < step[0] < -0.5 * 1.7 - 0.1 * g


def test_quickprop_gradient_term_only_while_slope_keeps_sign(dtype):
    # overshoot: the slope turned 2 -> -1 after a step of -0.5; jump alone,
    # -0.5 * -1 / (2 + 1) = +1/6, no gradient term (it would add +0.1)
    step = quickprop_step([-1.0], [2.0], [-0.5], dtype)
    np.testing.assert_allclose(step, [1 / 6], rtol=RTOL[dtype])
    # the same slopes with the previous step along the gradient (uphill): the slope still
    # points along the step only when -g has its sign, here it has not
    step = quickprop_step([0.5], [2.0], [0.5], dtype)
    np.testing.assert_allclose(step, [0.5 * 0.5 / 1.5], rtol=RTOL[dtype])


def test_quickprop_never_divides_by_zero(dtype):
    cases = {  # (g, prev_g, prev_step) -> step
        "g == prev_g != 0": (1.0, 1.0, -0.5, -0.875 - 0.1),
        "g == prev_g == 0": (0.0, 0.0, -0.5, 0.0),
        "g == 0": (0.0, 3.0, -0.5, 0.0),
        "prev_g == 0": (1.0, 0.0, 0.5, -0.5),  # parabola's vertex is θ_{t-1}: go back
        "all zero": (0.0, 0.0, 0.0, 0.0),
    }
    g, prev_g, prev_step, expected = np.array(list(cases.values())).T
    step = quickprop_step(g, prev_g, prev_step, dtype)
    assert np.all(np.isfinite(step))
    np.testing.assert_allclose(step, expected, rtol=RTOL[dtype], atol=0)
    # and a whole run on zero gradients stays at zero
    steps, _ = run_sequence(optim.quickprop(0.1), (0.0, 0.0, 0.0), dtype, shape=(3,))
    np.testing.assert_array_equal(steps, 0.0)


def test_quickprop_jump_after_overshoot_lands_on_minimum(x64):
    # L = ½ Σ a_i (θ_i - c_i)²; ε = 0.15 overshoots the a = 10 weight at once, and the
    # a = 3 weight after a parabola jump plus gradient term
    a = jnp.array([1.0, 3.0, 10.0])
    c = jnp.array([0.5, -1.0, 2.0])

    def loss(theta):
        return 0.5 * jnp.sum(a * jnp.square(theta - c))

    opt = optim.quickprop(0.15)
    theta = jnp.zeros(3)
    state = opt.init(theta)
    landed = set()
    for _ in range(8):
        g = jax.grad(loss)(theta)
        overshot = (np.asarray(g) * np.asarray(state.prev_steps)) > 0
        updates, state = opt.update(g, state, theta)
        theta = optax.apply_updates(theta, updates)
        for i in np.flatnonzero(overshot):
            # the secant through the two slopes of a parabola is exact
            np.testing.assert_allclose(theta[i], c[i], rtol=0, atol=1e-12)
            landed.add(int(i))
        assert np.all(np.isfinite(theta))
    assert landed >= {1, 2}


# --------------------------------------------------------------------------------------------
# Every registry optimizer: jit, vmap, chain, no recompilation, dtypes
# --------------------------------------------------------------------------------------------

N_REPLICAS = 5
N_STEPS = 4
X_DATA = np.random.default_rng(1).normal(size=(6, 3))
Y_DATA = np.tanh(X_DATA @ np.array([[1.0, -1.0], [0.5, 0.2], [-0.3, 0.8]]))


def toy_loss(params, x, y):
    return jnp.mean(jnp.square(jnp.tanh(x @ params["w"] + params["b"][None, :]) - y))


def toy_params(dtype, seed=0, replicas=None):
    rng = np.random.default_rng(seed)
    lead = () if replicas is None else (replicas,)
    return {
        "w": jnp.asarray(rng.normal(size=(*lead, 3, 2)), dtype),
        "b": jnp.asarray(rng.normal(size=(*lead, 2)), dtype),
    }


def toy_optimizer(name):
    return optim.make_optimizer(name, learning_rate=0.05)


def make_step(opt, dtype, transform_grads=lambda g: g, trace_counter=None):
    x, y = jnp.asarray(X_DATA, dtype), jnp.asarray(Y_DATA, dtype)

    def step(params, state):
        if trace_counter is not None:
            trace_counter.append(1)  # runs once per trace, i.e. per compilation
        value, grads = jax.value_and_grad(toy_loss)(params, x, y)
        updates, state = opt.update(transform_grads(grads), state, params, value=value)
        return optax.apply_updates(params, updates), state

    return step


@functools.cache
def jitted_toy_step(name, dtype):
    """One jitted step per optimizer and dtype, shared by the tests below (saves compiles),
    with the list that records each trace of it."""
    traces = []
    return jax.jit(make_step(toy_optimizer(name), dtype, trace_counter=traces)), traces


def run(step, params, state, n_steps=N_STEPS):
    """The params after each of ``n_steps`` steps, stacked on a leading time axis."""
    trajectory = []
    for _ in range(n_steps):
        params, state = step(params, state)
        trajectory.append(params)
    return jax.tree.map(lambda *leaves: np.stack(leaves), *trajectory), state


def assert_trees_close(actual, desired, rtol):
    assert jax.tree.structure(actual) == jax.tree.structure(desired)
    for leaf_a, leaf_d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired), strict=True):
        np.testing.assert_allclose(leaf_a, leaf_d, rtol=rtol, atol=0)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_jit_matches_eager_and_compiles_once(name, dtype):
    opt = toy_optimizer(name)
    params = toy_params(dtype)
    jitted, traces = jitted_toy_step(name, dtype)
    jit_trajectory, state = run(jitted, params, opt.init(params))
    assert len(traces) == 1, f"{name} recompiled: its state changes type between steps"
    eager_trajectory, _ = run(make_step(opt, dtype), params, opt.init(params), n_steps=2)
    # XLA may fuse differently from op-by-op dispatch: allow some ulps
    first_two = jax.tree.map(lambda leaf: leaf[:2], jit_trajectory)
    assert_trees_close(first_two, eager_trajectory, rtol=100 * RTOL[dtype])
    for leaf in jax.tree.leaves(jit_trajectory):
        assert leaf.dtype == dtype
    for leaf in jax.tree.leaves(state):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == dtype, f"{name} keeps state in {leaf.dtype}"


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_vmap_over_replicas_matches_unbatched(name, dtype):
    opt = toy_optimizer(name)
    step = make_step(opt, dtype)
    batched_params = toy_params(dtype, seed=2, replicas=N_REPLICAS)
    batched_state = jax.vmap(opt.init)(batched_params)
    batched_trajectory, _ = run(jax.jit(jax.vmap(step)), batched_params, batched_state)
    single, _ = jitted_toy_step(name, dtype)
    for r in range(N_REPLICAS):
        params = jax.tree.map(lambda leaf, r=r: leaf[r], batched_params)
        trajectory, _ = run(single, params, opt.init(params))
        replica = jax.tree.map(lambda leaf, r=r: leaf[:, r], batched_trajectory)
        assert_trees_close(replica, trajectory, rtol=100 * RTOL[dtype])


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_inside_chain_after_clip(name, dtype):
    clip = 0.05
    params = toy_params(dtype, seed=3)
    grads = jax.grad(toy_loss)(params, jnp.asarray(X_DATA, dtype), jnp.asarray(Y_DATA, dtype))
    assert max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(grads)) > clip

    def clipped(grads):
        return jax.tree.map(lambda leaf: jnp.clip(leaf, -clip, clip), grads)

    chained = optax.chain(optax.clip(clip), toy_optimizer(name))
    plain = toy_optimizer(name)
    chained_trajectory, _ = run(jax.jit(make_step(chained, dtype)), params, chained.init(params))
    plain_trajectory, _ = run(jax.jit(make_step(plain, dtype, clipped)), params, plain.init(params))
    assert_trees_close(chained_trajectory, plain_trajectory, rtol=100 * RTOL[dtype])


@pytest.mark.parametrize("name", [*optim.RPROP_VARIANTS, "quickprop"])
def test_state_and_updates_keep_float32_params_dtype_under_x64(name, x64):
    # float64 gradients, loss and hyperparameters must not promote float32 state or updates
    f64 = jnp.float64
    if name == "quickprop":
        hparams = {"learning_rate": f64(0.05), "max_growth": f64(1.75)}
    else:
        hparams = {
            "learning_rate": f64(0.05),
            "eta_minus": f64(0.5),
            "eta_plus": f64(1.2),
            "min_step_size": f64(1e-6),
            "max_step_size": f64(50.0),
        }
    opt = optim.make_optimizer(name, **hparams)
    params = toy_params(jnp.float32)
    state = opt.init(params)
    for sign, value in [(1.0, 2.0), (1.0, 1.0), (-1.0, 1.5)]:  # grow, then a sign change
        grads = jax.tree.map(lambda leaf, sign=sign: sign * leaf.astype(f64), params)
        updates, state = opt.update(grads, state, params, value=f64(value))
        for leaf in jax.tree.leaves((updates, state)):
            assert leaf.dtype == jnp.float32


# --------------------------------------------------------------------------------------------
# Registry errors
# --------------------------------------------------------------------------------------------

LR = {"learning_rate": 0.1}


@pytest.mark.parametrize(
    ("name", "hparams", "match"),
    [
        ("adamw", LR, r"unknown optimizer 'adamw'; known: sgd, momentum, .*quickprop"),
        ("rprop", LR, r"unknown optimizer 'rprop'; known: .*irprop-"),
        ("sgd", {**LR, "momentum": 0.9}, r"unknown hyperparameter\(s\) momentum for .*'sgd'"),
        ("irprop-", {**LR, "variant": "rprop+"}, r"unknown hyperparameter\(s\) variant"),
        ("quickprop", {**LR, "eta_plus": 1.2}, r"unknown hyperparameter\(s\) eta_plus"),
        ("adam", {}, r"'adam' needs hyperparameter\(s\) learning_rate"),
        ("sgd", {"learning_rate": 0.0}, r"learning_rate must be finite and in \(0, inf\)"),
        ("adam", {"learning_rate": -1e-3}, r"learning_rate must be finite"),
        ("momentum", {"learning_rate": float("nan")}, r"learning_rate must be finite"),
        ("irprop-", {"learning_rate": float("inf")}, r"learning_rate must be finite"),
        ("quickprop", {"learning_rate": "fast"}, r"learning_rate must be a real number"),
        ("rprop-", {**LR, "min_step_size": 0.0}, r"min_step_size must be finite"),
        ("rprop+", {**LR, "max_step_size": float("inf")}, r"max_step_size must be finite"),
        ("irprop+", {**LR, "max_step_size": -1.0}, r"max_step_size must be finite"),
        (
            "irprop-",
            {**LR, "min_step_size": 1.0, "max_step_size": 0.5},
            r"min_step_size \(1\) must not exceed max_step_size \(0.5\)",
        ),
        ("irprop-", {**LR, "eta_minus": 0.0}, r"eta_minus must be finite and in \(0, 1\)"),
        ("irprop-", {**LR, "eta_minus": 1.0}, r"eta_minus must be finite and in \(0, 1\)"),
        ("rprop-", {**LR, "eta_plus": 1.0}, r"eta_plus must be finite and in \(1, inf\)"),
        ("rprop+", {**LR, "eta_plus": 0.5}, r"eta_plus must be finite and in \(1, inf\)"),
        ("quickprop", {**LR, "max_growth": 0.0}, r"max_growth must be finite and in \(0, inf\)"),
        ("quickprop", {**LR, "max_growth": -1.75}, r"max_growth must be finite"),
        ("momentum", {**LR, "momentum": 1.0}, r"momentum must be finite and in \[0, 1\)"),
        ("nesterov", {**LR, "momentum": -0.1}, r"momentum must be finite and in \[0, 1\)"),
        ("adam", {**LR, "b2": 1.0}, r"b2 must be finite and in \[0, 1\)"),
    ],
)
def test_registry_rejects_bad_input(name, hparams, match):
    with pytest.raises(ValueError, match=match) as error:
        optim.make_optimizer(name, **hparams)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("builder", [optim.rprop, optim.scale_by_rprop])
def test_unknown_rprop_variant(builder):
    with pytest.raises(ValueError, match=r"unknown rprop variant 'iRprop-'; known: rprop-, "):
        builder(0.1, variant="iRprop-")


def test_direct_builders_check_hyperparameters():
    with pytest.raises(ValueError, match="eta_plus"):
        optim.rprop(0.1, eta_plus=0.9)
    with pytest.raises(ValueError, match="max_growth"):
        optim.quickprop(0.1, max_growth=0.0)


def test_registry_lists_every_optimizer():
    assert optim.OPTIMIZERS == (
        "sgd", "momentum", "nesterov", "adam",
        "rprop-", "rprop+", "irprop-", "irprop+", "quickprop",
    )  # fmt: skip
    for name in optim.OPTIMIZERS:
        assert isinstance(toy_optimizer(name), optax.GradientTransformationExtraArgs)
