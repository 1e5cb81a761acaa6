"""Hessian spectra at a point: eigenvalues, and the counts that classify a critical point.

``hessian_spectrum(loss_fn, params)`` returns a :class:`Spectrum`. With ``method="dense"`` it
builds the full Hessian of the flattened parameters and diagonalises it with ``eigh``: exact
counts of negative, (near-)zero and positive eigenvalues, for P up to a few thousand.

Definitions (shared/SCIENCE.md §1): an eigenvalue is negative if ``lambda < -zero_tol``,
positive if ``lambda > zero_tol`` and zero otherwise; ``index = num_negative / P`` and
``minimum_ratio = num_positive / P``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from saddlestudy import hessian

Params = Any
METHODS = ("dense",)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "eigenvalues",
        "num_negative",
        "num_zero",
        "num_positive",
        "index",
        "minimum_ratio",
        "lambda_min",
        "lambda_max",
        "min_eigenvector",
    ],
    meta_fields=["num_params", "zero_tol", "method"],
)
@dataclasses.dataclass(frozen=True)
class Spectrum:
    """The Hessian spectrum at one point (or, under ``vmap``, at a batch of points).

    Attributes:
      eigenvalues: all P eigenvalues, ascending.
      num_negative: count of eigenvalues < -zero_tol.
      num_zero: count with |lambda| <= zero_tol.
      num_positive: count > zero_tol.
      index: num_negative / num_params (alpha of Dauphin et al., Pennington & Bahri).
      minimum_ratio: num_positive / num_params (the lecture's "minimum ratio").
      lambda_min: smallest (most negative) eigenvalue.
      lambda_max: largest eigenvalue.
      min_eigenvector: unit eigenvector of ``lambda_min`` with the structure of the
        parameters: the direction to escape a saddle along (sign fixed so that its
        largest-magnitude entry is positive).
      num_params: P.
      zero_tol: the absolute tolerance the counts use.
      method: how the spectrum was computed.
    """

    eigenvalues: jax.Array
    num_negative: jax.Array
    num_zero: jax.Array
    num_positive: jax.Array
    index: jax.Array
    minimum_ratio: jax.Array
    lambda_min: jax.Array
    lambda_max: jax.Array
    min_eigenvector: Params
    num_params: int
    zero_tol: float
    method: str

    def with_zero_tol(self, zero_tol: float) -> Spectrum:
        """The same spectrum counted with another zero tolerance (no recomputation)."""
        zero_tol = check_zero_tol(zero_tol)
        return dataclasses.replace(self, zero_tol=zero_tol, **_counts(self.eigenvalues, zero_tol))

    def to_dict(self) -> dict[str, Any]:
        """Plain Python / NumPy values for storage (eigenvector flattened to shape (P,))."""
        out = {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["min_eigenvector"] = np.asarray(ravel_pytree(self.min_eigenvector)[0])
        for name in ("num_negative", "num_zero", "num_positive"):
            if out[name].ndim == 0:
                out[name] = int(out[name])
        for name in ("index", "minimum_ratio", "lambda_min", "lambda_max"):
            if out[name].ndim == 0:
                out[name] = float(out[name])
        out.update(num_params=self.num_params, zero_tol=self.zero_tol, method=self.method)
        return out


def check_zero_tol(zero_tol: Any) -> float:
    try:
        value = float(zero_tol)
    except (TypeError, ValueError) as err:
        raise ValueError(f"zero_tol must be a number, got {zero_tol!r}") from err
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"zero_tol must be finite and >= 0, got {zero_tol!r}")
    return value


def _counts(eigenvalues: jax.Array, zero_tol: float) -> dict[str, jax.Array]:
    num_params = eigenvalues.shape[-1]
    num_negative = jnp.sum(eigenvalues < -zero_tol, axis=-1)
    num_positive = jnp.sum(eigenvalues > zero_tol, axis=-1)
    return dict(
        num_negative=num_negative,
        num_zero=num_params - num_negative - num_positive,
        num_positive=num_positive,
        index=num_negative / num_params,
        minimum_ratio=num_positive / num_params,
    )


@functools.partial(jax.jit, static_argnums=0)
def _dense_eigh(loss_fn, params):
    H = hessian.dense_hessian(loss_fn, params)
    H = 0.5 * (H + H.T)  # exact in theory; removes rounding asymmetry before eigh
    finite = jnp.all(jnp.isfinite(H))
    eigenvalues, eigenvectors = jnp.linalg.eigh(H)
    v = eigenvectors[:, 0]
    v = v * jnp.where(v[jnp.argmax(jnp.abs(v))] < 0, -1.0, 1.0).astype(v.dtype)
    return eigenvalues, v, finite


def _validate(loss_fn: Callable, params: Params) -> None:
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("params has no array leaves: nothing to differentiate")
    for leaf in leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(
                f"every parameter must be a float array, got dtype {jnp.result_type(leaf)}"
            )
    out = jax.eval_shape(loss_fn, params)
    if not hasattr(out, "shape") or out.shape != ():
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"loss_fn must return a scalar, got shape {shape}")


def hessian_spectrum(
    loss_fn: Callable[[Params], jax.Array],
    params: Params,
    *,
    method: str = "dense",
    zero_tol: float = 1e-5,
) -> Spectrum:
    """The Hessian spectrum of ``loss_fn`` at ``params``.

    Args:
      loss_fn: any pure JAX function of a parameter pytree (nested dicts included)
        returning a scalar.
      params: the point; float leaves. The result has the dtype of the leaves (float64
        in, float64 out).
      method: ``"dense"``: full Hessian and ``eigh``, exact counts.
      zero_tol: absolute tolerance: |lambda| <= zero_tol counts as zero.

    Returns:
      A :class:`Spectrum`. Compilation is cached per ``loss_fn`` object, so calling twice
      with the same ``loss_fn`` (and shapes) compiles once. Works under ``jax.vmap`` over
      a leading replica axis of ``params``.

    Raises:
      ValueError: unknown method, bad zero_tol, non-float parameters, a non-scalar loss,
        or (outside of tracing) a Hessian with NaN or inf entries.
    """
    if method not in METHODS:
        raise ValueError(f"unknown spectrum method {method!r}; choose from {METHODS}")
    zero_tol = check_zero_tol(zero_tol)
    _validate(loss_fn, params)

    eigenvalues, v_flat, finite = _dense_eigh(loss_fn, params)
    if not isinstance(finite, jax.core.Tracer) and not bool(finite):
        raise ValueError(
            "the Hessian has non-finite entries (NaN or inf) at these parameters; "
            "check the loss and the data for NaN"
        )
    unravel = ravel_pytree(params)[1]
    return Spectrum(
        eigenvalues=eigenvalues,
        lambda_min=eigenvalues[0],
        lambda_max=eigenvalues[-1],
        min_eigenvector=unravel(v_flat),
        num_params=int(eigenvalues.shape[-1]),
        zero_tol=zero_tol,
        method=method,
        **_counts(eigenvalues, zero_tol),
    )
