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

from saddlestudy._checks import check_int

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


def flat_hvp(loss_fn: LossFn, params: Params) -> tuple[Callable[[jax.Array], jax.Array], jax.Array]:
    """The Hessian as a linear operator on flat vectors: ``(matvec, theta)``.

    ``matvec(v)`` returns ``H(theta) @ v`` for ``v`` of shape (P,) (flattened in the
    order of ``jax.flatten_util.ravel_pytree``). The gradient is linearised once with
    ``jax.linearize``, so every product runs only the tangent pass: many products at the
    same point (Lanczos, chunked dense Hessians) pay for the primal pass once. Residuals of
    the linearisation cost the memory of one gradient evaluation. ``matvec`` can be
    vmapped over a batch of vectors.
    """
    f, theta = flat_loss(loss_fn, params)
    _, matvec = jax.linearize(jax.grad(f), theta)
    return matvec, theta


def dense_hessian_chunked(loss_fn: LossFn, params: Params, chunk_size: int) -> jax.Array:
    """The full (P, P) Hessian built from Hessian-vector products with the basis vectors.

    The P products are computed in equal chunks of at most ``chunk_size`` (each chunk
    vmapped, the chunks in a ``lax.map``), so the working memory beyond the (P, P) result
    is that of ``chunk_size`` products instead of P of them (:func:`dense_hessian` vmaps
    all P at once). Ordering as in :func:`dense_hessian`; equal to it up to rounding.

    Args:
      loss_fn: pure scalar function of a parameter pytree.
      params: the point.
      chunk_size: basis vectors per vmapped batch, 1 <= chunk_size (values above P act
        as P).
    """
    chunk_size = check_int("chunk_size", chunk_size, 1)
    matvec, theta = flat_hvp(loss_fn, params)
    num_params = theta.shape[0]
    # Equal chunks of at most chunk_size: P = 535 with chunk_size 512 runs 2 x 268 products,
    # not 2 x 512 (padding is then less than one vector per chunk).
    num_chunks = -(-num_params // min(chunk_size, num_params))
    chunk = -(-num_params // num_chunks)

    def columns(indices: jax.Array) -> jax.Array:
        # one_hot of an index >= P is the zero vector: padding rows come out as zeros.
        return jax.vmap(matvec)(jax.nn.one_hot(indices, num_params, dtype=theta.dtype))

    # Pad to whole chunks (rather than lax.map's separate remainder batch) so that the
    # product is compiled once; H is symmetric, so its columns H e_i are also its rows.
    indices = jnp.arange(num_chunks * chunk).reshape(num_chunks, chunk)
    rows = jax.lax.map(columns, indices) if num_chunks > 1 else columns(indices[0])[None]
    return rows.reshape(num_chunks * chunk, num_params)[:num_params]
