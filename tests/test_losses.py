import jax.numpy as jnp
import numpy as np
import pytest

from saddlestudy import losses


def test_mse_sums_outputs_and_averages_samples():
    pred = jnp.array([[1.0, 2.0], [0.0, 0.0]])
    y = jnp.array([[0.0, 0.0], [1.0, 1.0]])
    assert losses.mean_squared_error(pred, y) == pytest.approx((5 + 2) / 2)
    assert losses.half_mean_squared_error(pred, y) == pytest.approx((5 + 2) / 4)


def test_cross_entropy_matches_log_softmax():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    labels = jnp.array([0, 2])
    logp = logits - np.log(np.exp(np.asarray(logits)).sum(1, keepdims=True))
    expected = -(logp[0, 0] + logp[1, 2]) / 2
    assert losses.softmax_cross_entropy(logits, labels) == pytest.approx(float(expected), rel=1e-6)


def test_l2_penalty_over_nested_pytree():
    params = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array([[3.0]])}}
    assert losses.l2_penalty(params) == pytest.approx(0.5 * 14)


def test_make_loss_fn_closes_model_and_data():
    def apply(params, x):
        return x * params["w"]

    x = jnp.array([[1.0], [2.0]])
    y = jnp.array([[1.0], [1.0]])
    loss = losses.make_loss_fn(apply, x, y, loss="mse", l2=2.0)
    # residuals (w-1, 2w-1) at w=3: (2, 5) -> mean 14.5; penalty 2 * 0.5 * 9 = 9.
    assert loss({"w": jnp.array(3.0)}) == pytest.approx(14.5 + 9.0)


def test_default_loss_by_task():
    assert losses.default_loss("classification") == "cross_entropy"
    assert losses.default_loss("regression") == "mse"
    with pytest.raises(ValueError, match="task"):
        losses.default_loss("ranking")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(loss="hinge"), "unknown loss"),
        (dict(loss="mse", l2=-1.0), "l2"),
        (dict(loss="mse", l2=float("nan")), "l2"),
        (dict(loss="cross_entropy"), "integer"),
    ],
)
def test_bad_loss_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.make_loss_fn(lambda p, x: x, jnp.ones((2, 1)), jnp.ones((2, 1)), **kwargs)


def test_squared_error_needs_2d_targets():
    with pytest.raises(ValueError, match=r"\(N, k\)"):
        losses.make_loss_fn(lambda p, x: x, jnp.ones((2, 1)), jnp.ones(2), loss="mse")


def test_l2_shifts_every_hessian_eigenvalue_by_its_coefficient():
    # README: l2 adds l2/2 |theta|^2, so H = H_data + l2 I and every eigenvalue moves up by l2.
    from saddlestudy.hessian import dense_hessian

    x = jnp.array([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.0]])
    y = jnp.array([[1.0], [0.0], [2.0]])

    def apply(params, x):
        return jnp.tanh(x @ params["w"]) @ params["v"]

    params = {"w": jnp.array([[0.3, -0.2], [0.1, 0.4]]), "v": jnp.array([[0.5], [-1.5]])}
    plain = losses.make_loss_fn(apply, x, y, loss="mse")
    shifted = losses.make_loss_fn(apply, x, y, loss="mse", l2=0.25)
    lam = np.linalg.eigvalsh(np.asarray(dense_hessian(plain, params)))
    lam_l2 = np.linalg.eigvalsh(np.asarray(dense_hessian(shifted, params)))
    np.testing.assert_allclose(lam_l2 - lam, 0.25, atol=1e-5)  # float32 rounding of H
