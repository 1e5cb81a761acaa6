"""Argument checks shared by every module: the one definition of "an int", and the one check
of a loss function and its parameters (spectrum, inertia and the finders use it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_int(value: Any) -> bool:
    """A Python or NumPy integer, and not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """Returns ``value`` as an ``int`` if it is one in ``[low, high]``, else a ValueError."""
    if not is_int(value):
        raise ValueError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def check_number(name: str, value: Any, *, zero_ok: bool = False) -> float:
    """``value`` as a float if it is finite and > 0 (>= 0 with ``zero_ok``), else a ValueError."""
    try:
        result = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number, got {value!r}") from err
    if not (math.isfinite(result) and (result >= 0 if zero_ok else result > 0)):
        raise ValueError(f"{name} must be finite and {'>=' if zero_ok else '>'} 0, got {value!r}")
    return result


def reject_renamed(function: str, passed: dict[str, Any], renamed: dict[str, str]) -> None:
    """Refuses keywords that were renamed (naming the new one) and any other unknown keyword."""
    for old in passed:
        if old in renamed:
            raise TypeError(f"{function}: keyword {old!r} was renamed to {renamed[old]!r}")
        raise TypeError(f"{function}() got an unexpected keyword argument {old!r}")


def check_params(params: Any) -> list:
    """The leaves of a parameter pytree, refused in one line unless they are float arrays."""
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("params has no array leaves: nothing to differentiate")
    for leaf in leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(
                f"every parameter must be a float array, got dtype {jnp.result_type(leaf)}"
            )
    return leaves


def check_scalar_loss(loss_fn: Callable, params: Any) -> jax.ShapeDtypeStruct:
    """``loss_fn(params)``'s abstract value (nothing is computed), refused unless a scalar."""
    out = jax.eval_shape(loss_fn, params)
    if not hasattr(out, "shape") or out.shape != ():
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"loss_fn must return a scalar, got shape {shape}")
    return out


def check_loss_and_params(loss_fn: Callable, params: Any) -> tuple[int, jnp.dtype]:
    """Checks the loss and the parameters; returns (P, dtype of the flat parameter vector)."""
    leaves = check_params(params)
    check_scalar_loss(loss_fn, params)
    num_params = sum(math.prod(jnp.shape(leaf)) for leaf in leaves)
    return num_params, jnp.dtype(jnp.result_type(*leaves))


def non_finite_error(where: str) -> ValueError:
    """The one error of NaN or inf Hessian-vector products."""
    return ValueError(
        f"Hessian-vector products are non-finite (NaN or inf) {where}; "
        "check the loss and the data for NaN"
    )
