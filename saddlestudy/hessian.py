"""Pure, pytree-generic derivatives of a scalar loss: gradient, HVP, dense Hessian.

Every function takes ``loss_fn``, any pure JAX function of a parameter pytree that returns
a scalar, and never jits: callers jit the outermost computation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

Params = Any
LossFn = Callable[[Params], jax.Array]


def gradient(loss_fn: LossFn, params: Params) -> Params:
    """The gradient of ``loss_fn`` at ``params``, with the structure of ``params``."""
    return jax.grad(loss_fn)(params)


def grad_norm_sq(loss_fn: LossFn, params: Params) -> jax.Array:
    """Squared Euclidean norm of the gradient, the quantity critical-point tolerances bound."""
    return sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(gradient(loss_fn, params)))


def hvp(loss_fn: LossFn, params: Params, vector: Params) -> Params:
    """Hessian-vector product ``H(params) @ vector`` by forward-over-reverse differentiation.

    ``vector`` has the structure of ``params``; so has the result. One call costs about
    two to three gradient evaluations and O(P) memory.
    """
    return jax.jvp(jax.grad(loss_fn), (params,), (vector,))[1]


def flat_loss(
    loss_fn: LossFn, params: Params
) -> tuple[Callable[[jax.Array], jax.Array], jax.Array]:
    """The loss as a function of one flat vector, and that vector at ``params``.

    Returns ``(f, theta)`` with ``f(theta) == loss_fn(params)``; ``theta`` has shape (P,)
    and the (promoted) dtype of the leaves. The unravel function is inside ``f``.
    """
    theta, unravel = ravel_pytree(params)
    return (lambda v: loss_fn(unravel(v))), theta


def dense_hessian(loss_fn: LossFn, params: Params) -> jax.Array:
    """The full (P, P) Hessian of ``loss_fn`` with respect to the flattened ``params``.

    Ordering of rows and columns is that of ``jax.flatten_util.ravel_pytree``. Builds the
    matrix by forward-over-reverse differentiation (P Hessian-vector products, vmapped);
    memory O(P^2), so only for P up to a few thousand.
    """
    f, theta = flat_loss(loss_fn, params)
    return jax.jacfwd(jax.grad(f))(theta)
