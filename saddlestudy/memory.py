"""Memory planning: how many replicas and vectors a spectrum computes at once.

The rule (:func:`memory_plan`): of the memory A of the default device (its total, so that the
plan, hence the numbers, do not depend on what else is running; free memory is only checked
against the fixed part), a replica needs a fixed F (dense: ``HESSIAN_COPIES`` P^2 floats for
the Hessian, its symmetrised copy and eigh's eigenvectors; lanczos/slq: the Krylov basis and
the linearisation) and each vector in flight a V (an upper bound taken from the sizes of all
intermediates of one gradient evaluation, twice for primal and tangent). Replicas at once:
``floor(A / (4 F))``, at least 1, rounded down to a divisor of R; vectors per vmapped chunk: a
quarter of what is left, ``(A - b F) / (4 b V)``, rounded down to a power of two (SLQ: to a
divisor of num_probes). On this rule P = 5,000 in float64 (0.6 GB of Hessians) runs on a
2-core, 24 GB CPU. On a CPU the Krylov methods take replicas and probes one at a time:
batched products are no faster there, and under vmap the Lanczos kernel's rarely taken
branches (second pass, restart) become selects that always run (SLQ at P = 10^6 measured
twice as slow).

:func:`plan` applies the rule to a loss and a parameter pytree (cached per loss, shapes and
settings): the entry points of :mod:`saddlestudy.spectrum` use it, and so can any code that
vmaps Hessian-vector products in chunks (e.g. a dense Hessian build).
:func:`device_memory_bytes` reads the device's free or total memory.

Where a number is guessed rather than measured (the device's memory cannot be read:
``FALLBACK_MEMORY_BYTES``; the loss cannot be traced on its own: ``FALLBACK_VECTOR_BYTES_PER_PARAM``
bytes per parameter per vector), the plan still runs on the guess and says so once per process
with a :class:`UserWarning`.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MEMORY_FRACTION = 0.25  # share of the device memory one batch of vectors may take
HESSIAN_COPIES = 3  # H, its symmetrised copy, eigh's eigenvectors
FALLBACK_MEMORY_BYTES = 4 * 2**30  # when the free memory cannot be read
FALLBACK_VECTOR_BYTES_PER_PARAM = 64  # per-vector memory when the gradient cannot be traced


def plan(
    loss_fn: Callable[[Any], jax.Array],
    params: Any,
    method: str,
    num_matvecs: int | None = None,
    num_probes: int | None = None,
    num_replicas: int = 1,
    *,
    chunk_size: int | None = None,
) -> tuple[int, int]:
    """Replicas at once and vectors per vmapped chunk for ``loss_fn`` at points like ``params``.

    :func:`memory_plan` with the working memory of one Hessian-vector product measured from
    the traced gradient of ``loss_fn``, and the device's free and total memory. Cached per
    ``loss_fn`` object, parameter shapes and settings (the loss is traced once).

    Args:
      loss_fn: pure scalar function of a parameter pytree.
      params: one point (arrays or ``jax.ShapeDtypeStruct`` leaves: only shapes and dtypes
        are used).
      method: ``"dense"``, ``"lanczos"`` or ``"slq"``.
      num_matvecs: Krylov depth m (lanczos, slq).
      num_probes: SLQ probes.
      num_replicas: R, the points computed in one call.
      chunk_size: a fixed chunk instead of the planned one (SLQ: rounded down to a divisor of
        ``num_probes``); the replicas are still planned.

    Returns:
      ``(replicas, chunk)``.

    Raises:
      ValueError: when one replica's fixed memory exceeds the free memory.
    """
    leaves, treedef = jax.tree.flatten(params)
    avals = tuple((tuple(jnp.shape(x)), jnp.dtype(jnp.result_type(x))) for x in leaves)
    replicas, chunk = _cached_plan(
        loss_fn, treedef, avals, method, num_matvecs, num_probes, num_replicas
    )
    if chunk_size is not None:
        chunk = chunk_size
        if method == "slq":
            chunk = _largest_divisor(num_probes, chunk)
    return replicas, chunk


def memory_plan(
    *,
    method: str,
    num_params: int,
    itemsize: int,
    vector_bytes: int,
    available_bytes: int,
    budget_bytes: int | None = None,
    num_matvecs: int | None = None,
    num_probes: int | None = None,
    num_replicas: int = 1,
    platform: str = "cpu",
) -> tuple[int, int]:
    """Replicas at once and vectors per vmapped chunk that fit in memory.

    The rule of the module docstring: F fixed bytes per replica, V per vector in flight
    (``vector_bytes`` is the working memory of one Hessian-vector product), A
    ``budget_bytes`` (the device's total memory; default ``available_bytes``, which is
    only checked against F); b = clamp(floor(A / (4 F)), 1, R) replicas at once, rounded down
    to a divisor of R, and c = clamp(pow2floor((A - b F) / (4 b V')), 1, vectors) per
    chunk, where V' adds the vector's own storage; SLQ rounds c down to a divisor of
    num_probes (dense splits the P basis vectors into equal chunks of at most c). Lanczos runs one
    vector at a time (c = 1). On a CPU (``platform="cpu"``) Lanczos and SLQ take replicas and
    probes one at a time (b = c = 1): batching products gains nothing there, and under vmap
    the Lanczos kernel's rarely taken branches become selects that always run.

    Raises:
      ValueError: when one replica's fixed memory exceeds what is available.
    """
    P = num_params
    if method == "dense":
        fixed = HESSIAN_COPIES * P * P * itemsize
        per_vector = vector_bytes + 2 * P * itemsize
        max_vectors = P
    elif method == "slq":
        fixed = vector_bytes
        per_vector = vector_bytes + (num_matvecs + 2) * P * itemsize
        max_vectors = num_probes
    else:
        fixed = vector_bytes + (num_matvecs + 2) * P * itemsize
        per_vector = 0
        max_vectors = 1
    if fixed > available_bytes:
        raise ValueError(
            f"method {method!r} needs about {fixed / 2**30:.2f} GiB for P = {P} but only "
            f"{available_bytes / 2**30:.2f} GiB is free; use method 'lanczos' or 'slq' "
            "(O(m P) memory), or fewer matvecs"
        )
    if platform == "cpu" and method != "dense":
        return 1, 1
    budget = available_bytes if budget_bytes is None else budget_bytes
    # Whole chunks of replicas and probes: the map over them then compiles its body once.
    replicas = _largest_divisor(num_replicas, max(1, int(MEMORY_FRACTION * budget // fixed)))
    if per_vector == 0:
        return replicas, 1
    share = MEMORY_FRACTION * max(budget - replicas * fixed, 0) / (replicas * per_vector)
    chunk = min(2 ** int(math.floor(math.log2(share))) if share >= 1 else 1, max_vectors)
    if method == "slq":
        chunk = _largest_divisor(num_probes, chunk)
    return replicas, chunk


def device_memory_bytes(which: str) -> int:
    """The default device's ``"free"`` or ``"total"`` memory in bytes (a GPU's own memory on
    a GPU, the host's on a CPU)."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            used = stats.get("bytes_in_use", 0) if which == "free" else 0
            return int(stats["bytes_limit"] - used)
    key = "MemAvailable:" if which == "free" else "MemTotal:"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages = "SC_AVPHYS_PAGES" if which == "free" else "SC_PHYS_PAGES"
    try:
        return os.sysconf(pages) * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        _warn_once(
            f"the {which} memory of {device.platform} cannot be read (no /proc/meminfo, no "
            f"sysconf); memory plans assume {FALLBACK_MEMORY_BYTES / 2**30:g} GiB"
        )
        return FALLBACK_MEMORY_BYTES


@functools.cache
def _warn_once(message: str) -> None:
    """A guess the plan runs on, said once per process (and message)."""
    warnings.warn(message, stacklevel=3)


def _jaxpr_bytes(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            aval = var.aval
            if hasattr(aval, "shape") and hasattr(aval, "dtype"):
                total += math.prod(aval.shape) * np.dtype(aval.dtype).itemsize
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                total += _jaxpr_bytes(inner)
    return total


@functools.lru_cache(maxsize=64)
def _cached_plan(loss_fn, treedef, avals, method, num_matvecs, num_probes, num_replicas):
    num_params = sum(math.prod(shape) for shape, _ in avals)
    dtype = jnp.result_type(*(d for _, d in avals))
    shapes = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in avals])
    try:
        # All intermediates of one gradient evaluation, twice (primal and tangent): an upper
        # bound on what one more vector in a vmapped Hessian-vector product needs.
        jaxpr = jax.make_jaxpr(jax.grad(loss_fn))(shapes)
        vector_bytes = 2 * _jaxpr_bytes(jaxpr.jaxpr)
    except Exception as err:  # a loss that cannot be traced on its own (e.g. closes over tracers)
        vector_bytes = FALLBACK_VECTOR_BYTES_PER_PARAM * num_params * jnp.dtype(dtype).itemsize
        _warn_once(
            f"memory plan: the gradient of {getattr(loss_fn, '__name__', 'the loss')} cannot "
            f"be traced on its own ({type(err).__name__}); assuming "
            f"{FALLBACK_VECTOR_BYTES_PER_PARAM} bytes per parameter per vector"
        )
    return memory_plan(
        method=method,
        num_params=num_params,
        itemsize=jnp.dtype(dtype).itemsize,
        vector_bytes=vector_bytes,
        # Free memory only decides whether it fits at all; the chunk sizes come from the
        # device's total memory, so the same config gives the same compiled program and the
        # same bits on the same device whatever else is running.
        available_bytes=device_memory_bytes("free"),
        budget_bytes=device_memory_bytes("total"),
        num_matvecs=num_matvecs,
        num_probes=num_probes,
        num_replicas=num_replicas,
        platform=jax.devices()[0].platform,
    )


def _largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of n that is <= at_most (and >= 1)."""
    return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)
