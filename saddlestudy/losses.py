"""Training losses and the pure ``loss(params)`` closures that Hessian work differentiates.

Conventions (chosen so the lecture's and Baldi & Hornik's formulas hold verbatim):

- ``"mse"``: mean over samples of the squared Euclidean norm of the residual,
  ``mean_n ||f(x_n) - y_n||^2``. With one sample and one output this is the lecture's
  ``L = (1 - w1 w2)^2``.
- ``"half_mse"``: half of that, ``mean_n 1/2 ||f(x_n) - y_n||^2``, the linear autoencoder's
  loss whose critical values are ``1/2 sum_{i not in I} lambda_i``.
- ``"cross_entropy"``: mean softmax cross-entropy with integer labels.
- ``l2``: adds ``l2/2 * ||theta||^2`` (weight decay with coefficient ``l2``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

Params = Any


def mean_squared_error(pred_NxK: jax.Array, y_NxK: jax.Array) -> jax.Array:
    """Mean over samples of the squared residual norm (summed over outputs)."""
    return jnp.mean(jnp.sum(jnp.square(pred_NxK - y_NxK), axis=-1))


def half_mean_squared_error(pred_NxK: jax.Array, y_NxK: jax.Array) -> jax.Array:
    """``mean_n 1/2 ||pred_n - y_n||^2`` (Baldi & Hornik's convention)."""
    return 0.5 * mean_squared_error(pred_NxK, y_NxK)


def softmax_cross_entropy(logits_NxC: jax.Array, labels_N: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy against integer labels."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits_NxC, labels_N))


def l2_penalty(params: Params) -> jax.Array:
    """``1/2 ||theta||^2`` over every leaf of a parameter pytree."""
    return 0.5 * sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))


LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "mse": mean_squared_error,
    "half_mse": half_mean_squared_error,
    "cross_entropy": softmax_cross_entropy,
}


def default_loss(task: str) -> str:
    """The loss a dataset's task calls for: cross-entropy to classify, MSE to regress."""
    if task == "classification":
        return "cross_entropy"
    if task == "regression":
        return "mse"
    raise ValueError(f"unknown task {task!r}; expected 'regression' or 'classification'")


def make_batch_loss_fn(
    apply: Callable[[Params, jax.Array], jax.Array],
    *,
    loss: str = "mse",
    l2: float = 0.0,
) -> Callable[[Params, tuple[jax.Array, jax.Array]], jax.Array]:
    """A pure ``loss(params, (x, y))`` of a model on any batch (minibatch training).

    Args:
      apply: pure forward pass ``apply(params, x)``.
      loss: a key of :data:`LOSSES`.
      l2: weight-decay coefficient; adds ``l2/2 ||theta||^2``.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose from {sorted(LOSSES)}")
    l2 = float(l2)
    if not (l2 >= 0.0 and l2 < float("inf")):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
    pointwise = LOSSES[loss]

    def batch_loss_fn(params: Params, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        x, y = batch
        value = pointwise(apply(params, x), y)
        if l2:
            value = value + l2 * l2_penalty(params)
        return value

    return batch_loss_fn


def check_targets(y: jax.Array, loss: str) -> None:
    """Raises a clear ValueError when targets do not suit the loss."""
    if loss == "cross_entropy" and not jnp.issubdtype(jnp.asarray(y).dtype, jnp.integer):
        raise ValueError("loss 'cross_entropy' needs integer class labels as y")
    if loss != "cross_entropy" and jnp.ndim(y) != 2:
        raise ValueError(f"loss {loss!r} needs targets of shape (N, k), got shape {jnp.shape(y)}")


def make_loss_fn(
    apply: Callable[[Params, jax.Array], jax.Array],
    x: jax.Array,
    y: jax.Array,
    *,
    loss: str = "mse",
    l2: float = 0.0,
) -> Callable[[Params], jax.Array]:
    """Closes a model and a (full) batch into a pure scalar ``loss(params)``.

    Args:
      apply: pure forward pass ``apply(params, x)``.
      x: inputs, shape (N, d).
      y: targets, (N, k) floats for the squared errors or (N,) integer labels.
      loss: a key of :data:`LOSSES`.
      l2: weight-decay coefficient; adds ``l2/2 ||theta||^2``.

    Returns:
      ``loss_fn(params) -> scalar``, jit/vmap/grad-able.
    """
    batch_loss_fn = make_batch_loss_fn(apply, loss=loss, l2=l2)
    check_targets(y, loss)

    def loss_fn(params: Params) -> jax.Array:
        return batch_loss_fn(params, (x, y))

    return loss_fn
