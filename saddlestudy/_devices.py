"""Independent work on every local device: a leading axis of starts split into contiguous
groups, one per device.

Used by the finder (``critical.find_critical_points``), whose loops run until the slowest
start in their batch is done: a batch sharded over devices inside one ``jit`` would make every
device wait for the slowest start anywhere (a cross-device reduction of the loop condition
per iteration). Instead the groups go through ``jax.pmap``: one program, compiled once, that
each device runs on its own group with its own loops and no communication.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def pad_leading(tree: Any, size: int) -> Any:
    """Leaves with a leading axis padded to ``size`` by copies of entry 0 (computed alongside
    and dropped after: the entries never interact)."""
    return jax.tree.map(
        lambda x: (
            x
            if x.shape[0] == size
            else jnp.concatenate([x, jnp.repeat(x[:1], size - x.shape[0], axis=0)])
        ),
        tree,
    )


def group(tree: Any, size: int) -> Any:
    """``tree``'s leading axis N as ``(ceil(N / size), size, ...)``, the last group padded with
    copies of entry 0."""
    num = jax.tree.leaves(tree)[0].shape[0]
    groups = -(-num // size)
    padded = pad_leading(tree, groups * size)
    return jax.tree.map(lambda x: x.reshape(groups, size, *x.shape[1:]), padded)


def split(tree: Any, num_devices: int) -> tuple[Any, jax.Array, int]:
    """``tree``'s leading axis N in groups of ``ceil(N / num_devices)`` (the last padded with
    copies of entry 0), the index of each group's first entry among all, and the number of
    groups (at most ``num_devices``: the devices used)."""
    num = jax.tree.leaves(tree)[0].shape[0]
    per = -(-num // num_devices)
    grouped = group(tree, per)
    used = jax.tree.leaves(grouped)[0].shape[0]
    return grouped, jnp.arange(used) * per, used


def merge(tree: Any, num: int) -> Any:
    """The inverse of :func:`group` and :func:`split`: the groups on one leading axis, the
    padding dropped."""
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[:num], tree)
