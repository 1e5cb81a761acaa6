"""Replica-batched full-batch training: R replicas of one architecture in one compiled program.

Each replica runs ``lax.scan`` over steps; ``jax.vmap`` maps that over the leading replica
axis. A replica stops (its parameters freeze) when its squared gradient norm falls below
``grad_tol``, and a replica whose loss turns NaN or inf is frozen at its last finite point
and flagged ``diverged`` without disturbing the others.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

Params = Any


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["params", "loss", "grad_norm_sq", "steps", "diverged", "loss_history"],
    meta_fields=["record_every"],
)
@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of training R replicas (every array has a leading replica axis R).

    Attributes:
      params: final parameters (the last finite point for diverged replicas).
      loss: final loss.
      grad_norm_sq: final squared gradient norm.
      steps: number of optimizer steps each replica took before it stopped.
      diverged: whether the replica's loss became NaN or inf.
      loss_history: loss every ``record_every`` steps, shape (R, num_steps // record_every).
      record_every: the recording interval.
    """

    params: Params
    loss: jax.Array
    grad_norm_sq: jax.Array
    steps: jax.Array
    diverged: jax.Array
    loss_history: jax.Array
    record_every: int


def _tree_norm_sq(tree: Params) -> jax.Array:
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree))


def train_replicas(
    loss_fn: Callable[[Params], jax.Array],
    params_R: Params,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    *,
    grad_tol: float = 0.0,
    record_every: int = 10,
) -> TrainResult:
    """Trains every replica of ``params_R`` (leading axis R) on the full batch of ``loss_fn``.

    Args:
      loss_fn: pure scalar loss of one replica's parameters.
      params_R: stacked initial parameters, leading axis R on every leaf.
      optimizer: any optax transformation; ``value=`` (the loss) is passed when it accepts
        extra arguments (as the Rprop variants that backtrack on a loss increase need).
      num_steps: step budget.
      grad_tol: a replica stops once its squared gradient norm is below this.
      record_every: the loss is recorded every this many steps.

    Returns:
      A :class:`TrainResult`.
    """
    if num_steps < 1 or record_every < 1:
        raise ValueError(
            f"num_steps and record_every must be >= 1, got {num_steps}, {record_every}"
        )
    if num_steps % record_every:
        raise ValueError(
            f"num_steps ({num_steps}) must be a multiple of record_every ({record_every})"
        )
    optimizer = optax.with_extra_args_support(optimizer)
    return _train(loss_fn, optimizer, num_steps, float(grad_tol), record_every, params_R)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _train(loss_fn, optimizer, num_steps, grad_tol, record_every, params_R):
    value_and_grad = jax.value_and_grad(loss_fn)

    def one_replica(params):
        loss, grads = value_and_grad(params)
        state = (params, optimizer.init(params), loss, grads, jnp.array(0), jnp.array(False))

        def step(carry, _):
            params, opt_state, loss, grads, steps, diverged = carry
            done = diverged | (_tree_norm_sq(grads) < grad_tol)
            updates, new_opt_state = optimizer.update(grads, opt_state, params, value=loss)
            new_params = optax.apply_updates(params, updates)
            new_loss, new_grads = value_and_grad(new_params)
            blew_up = ~jnp.isfinite(new_loss)
            keep = done | blew_up

            def pick(old, new):
                return jax.tree.map(lambda o, n: jnp.where(keep, o, n), old, new)

            carry = (
                pick(params, new_params),
                pick(opt_state, new_opt_state),
                jnp.where(keep, loss, new_loss),
                pick(grads, new_grads),
                steps + jnp.where(keep, 0, 1),
                diverged | (blew_up & ~done),
            )
            return carry, None

        def chunk(carry, _):
            carry, _ = jax.lax.scan(step, carry, None, length=record_every)
            return carry, carry[2]

        state, history = jax.lax.scan(chunk, state, None, length=num_steps // record_every)
        params, _, loss, grads, steps, diverged = state
        return TrainResult(
            params=params,
            loss=loss,
            grad_norm_sq=_tree_norm_sq(grads),
            steps=steps,
            diverged=diverged,
            loss_history=history,
            record_every=record_every,
        )

    return jax.vmap(one_replica)(params_R)
