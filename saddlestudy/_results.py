"""What the result types' ``to_dict`` share: device values as plain Python / NumPy values."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def plain(value: Any) -> Any:
    """A 0-d array as a Python scalar, any other array as a NumPy array, None as None."""
    if value is None:
        return None
    array = np.asarray(value)
    return array.item() if array.ndim == 0 else array


def ravel_batched(tree: Any, batch_ndim: int) -> np.ndarray | None:
    """A pytree as one NumPy array: the first ``batch_ndim`` axes kept, the rest of every leaf
    flattened and concatenated in ``ravel_pytree`` order (None for an empty tree)."""
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]
    if not leaves:
        return None
    return np.concatenate(
        [leaf.reshape(leaf.shape[:batch_ndim] + (-1,)) for leaf in leaves], axis=-1
    )
