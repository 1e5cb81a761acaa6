"""Replica-batched training: R replicas of one architecture in one compiled program.

Each replica runs ``lax.scan`` over steps (in chunks of ``record_every``, after each of which
the loss and gradient norm are recorded); ``jax.vmap`` maps that over the leading replica
axis, and with several devices the replica axis is sharded over them (``jax.sharding``).

- Full batch (the default; Rprop and QuickProp are full-batch methods) or minibatches drawn
  per replica and step from ``fold_in(key_r, step)``.
- A replica stops (its parameters freeze) once its squared gradient norm is below
  ``grad_tol``; one whose loss turns NaN or inf is frozen at its last finite point and flagged
  ``diverged``, without disturbing the others.
- Snapshots of the parameters at requested steps, and when the loss first falls to requested
  levels: the starting points for critical-point finders (Pennington & Bahri 2017; Frye et
  al. 2021 sample starts along training trajectories).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from saddlestudy._devices import pad_leading

Params = Any
Data = Any  # a pytree of arrays with the sample axis first, e.g. (x, y)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How long and how to train, and what to record.

    Attributes:
      num_steps: step budget (a multiple of ``record_every``).
      record_every: the loss and gradient norm are recorded (and, for minibatches, the
        stopping test is made on the full data) every this many steps.
      grad_tol: a replica stops once its full-data squared gradient norm is below this.
      batch_size: ``None`` for full batch, else the minibatch size (sampled with
        replacement per replica and step).
      snapshot_steps: steps after which the parameters are saved (0 = the start).
      snapshot_losses: loss levels; the parameters are saved when a replica's recorded
        loss first falls to or below each level (checked every step in full-batch mode,
        every ``record_every`` steps with minibatches).
    """

    num_steps: int
    record_every: int = 10
    grad_tol: float = 0.0
    batch_size: int | None = None
    snapshot_steps: tuple[int, ...] = ()
    snapshot_losses: tuple[float, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "snapshot_steps", tuple(int(s) for s in self.snapshot_steps))
        object.__setattr__(self, "snapshot_losses", tuple(float(v) for v in self.snapshot_losses))
        if self.num_steps < 1 or self.record_every < 1:
            raise ValueError(
                "num_steps and record_every must be >= 1, "
                f"got {self.num_steps}, {self.record_every}"
            )
        if self.num_steps % self.record_every:
            raise ValueError(
                f"num_steps ({self.num_steps}) must be a multiple of record_every "
                f"({self.record_every})"
            )
        if not (self.grad_tol >= 0 and np.isfinite(self.grad_tol)):
            raise ValueError(f"grad_tol must be finite and >= 0, got {self.grad_tol}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")
        bad = [s for s in self.snapshot_steps if not 0 <= s <= self.num_steps]
        if bad:
            raise ValueError(f"snapshot_steps {bad} lie outside [0, num_steps={self.num_steps}]")
        if not all(np.isfinite(self.snapshot_losses)):
            raise ValueError(f"snapshot_losses must be finite, got {self.snapshot_losses}")


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "params",
        "loss",
        "grad_norm_sq",
        "steps",
        "diverged",
        "loss_history",
        "grad_norm_sq_history",
        "step_snapshots",
        "loss_snapshots",
        "loss_snapshot_steps",
    ],
    meta_fields=["record_every"],
)
@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of training R replicas (every array has a leading replica axis R).

    Attributes:
      params: final parameters (the last finite point for diverged replicas).
      loss: final full-data loss.
      grad_norm_sq: final full-data squared gradient norm.
      steps: optimizer steps each replica took before it stopped.
      diverged: whether the replica's loss became NaN or inf.
      loss_history: full-data loss every ``record_every`` steps, (R, T).
      grad_norm_sq_history: full-data squared gradient norm every ``record_every`` steps.
      step_snapshots: parameters after each of ``snapshot_steps``; leaves (R, S, ...).
      loss_snapshots: parameters when the loss first reached each of ``snapshot_losses``;
        leaves (R, L, ...), meaningful only where ``loss_snapshot_steps >= 0``.
      loss_snapshot_steps: the step of each loss snapshot, (R, L); -1 if never reached.
      record_every: the recording interval.
    """

    params: Params
    loss: jax.Array
    grad_norm_sq: jax.Array
    steps: jax.Array
    diverged: jax.Array
    loss_history: jax.Array
    grad_norm_sq_history: jax.Array
    step_snapshots: Params
    loss_snapshots: Params
    loss_snapshot_steps: jax.Array
    record_every: int


def _tree_norm_sq(tree: Params) -> jax.Array:
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree))


def _select(pred: jax.Array, on_true: Params, on_false: Params) -> Params:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _write_where(mask_S: jax.Array, buffer: Params, params: Params) -> Params:
    """Writes ``params`` into the rows of ``buffer`` (leaves (S, ...)) where ``mask_S`` holds."""

    def write(buf, p):
        mask = mask_S.reshape(mask_S.shape + (1,) * p.ndim)
        return jnp.where(mask, p[None], buf)

    return jax.tree.map(write, buffer, params)


@dataclasses.dataclass(frozen=True)
class _IgnoreBatch:
    # A hashable adapter (equal for equal loss_fn), so the jit cache hits on repeated calls.
    loss_fn: Callable[[Params], jax.Array]

    def __call__(self, params: Params, _batch: Data) -> jax.Array:
        return self.loss_fn(params)


def replica_sharding(num_replicas: int) -> NamedSharding | None:
    """Sharding of a leading replica axis over every local device, or None on one device.
    ``num_replicas`` must be a multiple of the device count (``train_replicas`` pads to one)."""
    devices = jax.local_devices()
    if len(devices) < 2:
        return None
    if num_replicas % len(devices):
        raise ValueError(
            f"{num_replicas} replicas cannot be split evenly over {len(devices)} devices; "
            "use a multiple of the device count"
        )
    return NamedSharding(Mesh(np.array(devices), ("replica",)), P("replica"))


def _pad_replicas(tree: Any, num_replicas: int, multiple: int) -> Any:
    """Leaves with a leading axis R padded to a multiple of ``multiple`` by copies of replica
    0 (trained alongside and dropped after: replicas never interact)."""
    return pad_leading(tree, num_replicas + (-num_replicas % multiple))


def train_replicas(
    loss_fn: Callable[..., jax.Array],
    params_R: Params,
    optimizer: optax.GradientTransformation | Callable[..., optax.GradientTransformation],
    config: TrainConfig | int,
    *,
    data: Data | None = None,
    data_per_replica: bool = False,
    key: jax.Array | None = None,
    hyperparams: dict[str, float] | None = None,
) -> TrainResult:
    """Trains every replica of ``params_R`` (leading axis R on every leaf).

    Args:
      loss_fn: ``loss_fn(params)`` if ``data`` is None, else ``loss_fn(params, batch)`` where
        ``batch`` has the structure of ``data`` (a minibatch of it, or all of it).
      params_R: stacked initial parameters.
      optimizer: any optax transformation; ``value=`` (the loss on the batch) is passed when
        it takes extra arguments (iRprop+ backtracks on a loss increase). With
        ``hyperparams``: a hashable factory ``optimizer(**hyperparams) -> transformation``
        (e.g. ``optim.OptimizerFactory("adam")``), called inside the compiled program.
      config: a :class:`TrainConfig`, or just the number of steps.
      data: the training set as a pytree of arrays, sample axis first; needed for minibatches.
      data_per_replica: whether ``data`` leaves have a leading replica axis (a data seed per
        replica) in front of the sample axis.
      key: randomness for minibatch sampling; replica r uses ``fold_in(key, r)``.
      hyperparams: numeric hyperparameters passed to the factory ``optimizer`` as traced
        scalars (in the parameters' dtype): one compiled training program then serves every
        value, e.g. a grid of learning rates compiles once. ``None``: ``optimizer`` is a
        transformation and part of the compiled program (a new one compiles anew).

    Returns:
      A :class:`TrainResult`. With several local devices the replica axis is sharded over
      them; the numbers equal the single-device run's.
    """
    if isinstance(config, int):
        config = TrainConfig(num_steps=config)
    if data is None:
        if config.batch_size is not None:
            raise ValueError("minibatch training (batch_size) needs the data passed as data=")
        data, data_per_replica = (), False
        loss_fn = _IgnoreBatch(loss_fn)

    leaves = jax.tree.leaves(params_R)
    if not leaves:
        raise ValueError("params_R has no array leaves")
    num_replicas = leaves[0].shape[0]
    if any(leaf.shape[:1] != (num_replicas,) for leaf in leaves):
        raise ValueError("every leaf of params_R needs the same leading replica axis")
    if data_per_replica and any(d.shape[:1] != (num_replicas,) for d in jax.tree.leaves(data)):
        raise ValueError("data_per_replica=True needs a leading replica axis on every data leaf")
    if config.batch_size is not None:
        num_samples = {d.shape[int(data_per_replica)] for d in jax.tree.leaves(data)}
        if len(num_samples) != 1:
            raise ValueError(f"data leaves disagree on the number of samples: {num_samples}")
        if config.batch_size > num_samples.pop():
            raise ValueError(f"batch_size {config.batch_size} exceeds the number of samples")
    if key is None:
        key = jax.random.key(0)
    keys_R = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(num_replicas))

    # Any R on any number of devices: padded to a multiple of the device count, the padding
    # dropped from the result.
    num_devices = len(jax.local_devices())
    padded = num_replicas + (-num_replicas % num_devices)
    params_R, keys_R = _pad_replicas((params_R, keys_R), num_replicas, num_devices)
    if data_per_replica:
        data = _pad_replicas(data, num_replicas, num_devices)
    sharding = replica_sharding(padded)
    if sharding is not None:
        params_R, keys_R = jax.device_put((params_R, keys_R), sharding)
        if data_per_replica:
            data = jax.device_put(data, sharding)
    if hyperparams is None:
        factory, hyperparams = _Fixed(optimizer), {}
    else:
        dtype = jnp.result_type(*leaves)
        factory = optimizer
        hyperparams = {k: jnp.asarray(v, dtype) for k, v in hyperparams.items()}
    result = _train(
        loss_fn, factory, config, bool(data_per_replica), params_R, keys_R, data, hyperparams
    )
    if padded == num_replicas:
        return result
    return jax.tree.map(lambda x: x[:num_replicas], result)


@dataclasses.dataclass(frozen=True)
class _Fixed:
    # A transformation as a factory without arguments: hashed by the transformation itself.
    optimizer: optax.GradientTransformation

    def __call__(self) -> optax.GradientTransformation:
        return self.optimizer


class _TrainState(NamedTuple):
    """One replica's training state inside the compiled loop. ``loss`` and ``grads`` belong
    to ``params`` (full batch: one gradient per step) or to the last minibatch."""

    params: Params
    opt_state: optax.OptState
    loss: jax.Array
    grads: Params
    done: jax.Array  # stopped: |grad L|^2 < grad_tol
    diverged: jax.Array  # stopped: a non-finite loss or parameters
    steps: jax.Array  # steps taken
    snap_steps: Params  # the parameters at config.snapshot_steps
    snap_loss: Params  # ... at the first step below each of config.snapshot_losses
    snap_loss_step: jax.Array  # that step, -1 while not reached


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _train(loss_fn, factory, config, data_per_replica, params_R, keys_R, data, hyperparams):
    # Built inside the trace from the traced hyperparameters; wrapped here too, since a wrapper
    # made outside would be a new static argument (and a recompilation) on every call.
    optimizer = optax.with_extra_args_support(factory(**hyperparams))
    value_and_grad = jax.value_and_grad(loss_fn)
    step_marks = jnp.asarray(config.snapshot_steps, jnp.int32)
    loss_levels = jnp.asarray(config.snapshot_losses)

    def loss_snapshot(c: _TrainState, params, loss, t):
        newly = (c.snap_loss_step < 0) & (loss <= loss_levels)
        return _write_where(newly, c.snap_loss, params), jnp.where(newly, t, c.snap_loss_step)

    def one_replica(params, key, data):
        # The full-batch and minibatch variants, chosen once: how a step proposes its update,
        # whether loss snapshots are taken per step, and what is checked at a chunk's end.
        if config.batch_size is None:

            def propose(c: _TrainState, t):
                # c.loss, c.grads belong to c.params: one gradient per step.
                updates, opt_state = optimizer.update(c.grads, c.opt_state, c.params, value=c.loss)
                new_params = optax.apply_updates(c.params, updates)
                new_loss, new_grads = value_and_grad(new_params, data)
                stop_now = _tree_norm_sq(new_grads) < config.grad_tol
                return new_params, opt_state, new_loss, new_grads, jnp.isfinite(new_loss), stop_now

            def step_loss_snapshot(c: _TrainState, n: _TrainState, t):
                return loss_snapshot(c, n.params, n.loss, t)

            def end_of_chunk(c: _TrainState, loss, gn, t):
                return c

        else:
            num = jax.tree.leaves(data)[0].shape[0]

            def propose(c: _TrainState, t):
                # Gradient on this step's batch; the full-data loss is only evaluated at the
                # end of each chunk, so divergence shows here as a non-finite batch loss or
                # non-finite parameters.
                idx = jax.random.randint(jax.random.fold_in(key, t), (config.batch_size,), 0, num)
                batch = jax.tree.map(lambda d: d[idx], data)
                loss, grads = value_and_grad(c.params, batch)
                updates, opt_state = optimizer.update(grads, c.opt_state, c.params, value=loss)
                new_params = optax.apply_updates(c.params, updates)
                finite = jnp.isfinite(loss) & jnp.all(
                    jnp.array([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(new_params)])
                )
                return new_params, opt_state, loss, grads, finite, jnp.array(False)

            def step_loss_snapshot(c: _TrainState, n: _TrainState, t):
                return c.snap_loss, c.snap_loss_step

            def end_of_chunk(c: _TrainState, loss, gn, t):
                # The stopping test, divergence and loss snapshots on the full data.
                live = ~(c.done | c.diverged)
                snap_loss, snap_loss_step = loss_snapshot(c, c.params, loss, t)
                return c._replace(
                    done=c.done | (live & (gn < config.grad_tol)),
                    diverged=c.diverged | (live & ~jnp.isfinite(loss)),
                    snap_loss=_select(live, snap_loss, c.snap_loss),
                    snap_loss_step=jnp.where(live, snap_loss_step, c.snap_loss_step),
                )

        loss, grads = value_and_grad(params, data)
        full_gn = _tree_norm_sq(grads)
        snap_steps = jax.tree.map(
            lambda p: jnp.zeros((len(config.snapshot_steps), *p.shape), p.dtype), params
        )
        snap_steps = _write_where(step_marks == 0, snap_steps, params)
        snap_loss = jax.tree.map(
            lambda p: jnp.zeros((len(config.snapshot_losses), *p.shape), p.dtype), params
        )
        reached = loss <= loss_levels
        carry = _TrainState(
            params=params, opt_state=optimizer.init(params), loss=loss, grads=grads,
            done=full_gn < config.grad_tol, diverged=jnp.array(False), steps=jnp.array(0),
            snap_steps=snap_steps, snap_loss=_write_where(reached, snap_loss, params),
            snap_loss_step=jnp.where(reached, 0, -1),
        )  # fmt: skip

        def step(c: _TrainState, t):
            frozen = c.done | c.diverged
            new_params, opt_state, new_loss, new_grads, finite, stop_now = propose(c, t)
            keep = frozen | ~finite
            n = c._replace(
                params=_select(keep, c.params, new_params),
                opt_state=_select(keep, c.opt_state, opt_state),
                loss=jnp.where(keep, c.loss, new_loss),
                grads=_select(keep, c.grads, new_grads),
                done=c.done | (~keep & stop_now),
                diverged=c.diverged | (~finite & ~frozen),
                steps=c.steps + jnp.where(keep, 0, 1),
            )
            n = n._replace(snap_steps=_write_where(step_marks == t + 1, c.snap_steps, n.params))
            snap_loss, snap_loss_step = step_loss_snapshot(c, n, t + 1)
            return n._replace(snap_loss=snap_loss, snap_loss_step=snap_loss_step), None

        def chunk(c: _TrainState, t0):
            c, _ = jax.lax.scan(step, c, t0 + jnp.arange(config.record_every))
            loss, grads = value_and_grad(c.params, data)
            gn = _tree_norm_sq(grads)
            return end_of_chunk(c, loss, gn, t0 + config.record_every), (loss, gn)

        starts = jnp.arange(0, config.num_steps, config.record_every)
        c, (loss_hist, gn_hist) = jax.lax.scan(chunk, carry, starts)
        final_loss, final_grads = value_and_grad(c.params, data)
        return TrainResult(
            params=c.params,
            loss=final_loss,
            grad_norm_sq=_tree_norm_sq(final_grads),
            steps=c.steps,
            diverged=c.diverged,
            loss_history=loss_hist,
            grad_norm_sq_history=gn_hist,
            step_snapshots=c.snap_steps,
            loss_snapshots=c.snap_loss,
            loss_snapshot_steps=c.snap_loss_step,
            record_every=config.record_every,
        )

    data_axis = 0 if data_per_replica else None
    return jax.vmap(one_replica, in_axes=(0, 0, data_axis))(params_R, keys_R, data)
