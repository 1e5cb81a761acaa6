"""Hessian spectra at a point: eigenvalues, and the counts that classify a critical point.

``hessian_spectrum(loss_fn, params, method=...)`` returns a :class:`Spectrum`;
``hessian_spectra(loss_fn, params_R, ...)`` does the same for R replicas (a leading replica
axis on every leaf) in one compiled call. ``hessian_eigenpairs`` gives the k extreme
eigenpairs (stopping as soon as all k have converged) and ``hessian_trace`` the trace.
Every entry point compiles once per ``loss_fn`` object (and shapes): call it again with new
parameters and nothing is retraced.

Definitions (docs/science.md §1): an eigenvalue is negative if ``lambda < -zero_tol``,
positive if ``lambda > zero_tol`` and zero otherwise; ``index = num_negative / P``,
``minimum_ratio = num_positive / P`` and ``zero_fraction = num_zero / P``.

Methods:

- ``"dense"``: the full Hessian from P Hessian-vector products with the basis vectors,
  vmapped over chunks (:func:`saddlestudy.hessian.dense_hessian_chunked`), then ``eigh``.
  Exact counts. Memory O(P^2): P ~ 5,000 on a laptop CPU, ~20,000 on a large GPU.
- ``"lanczos"``: ``num_matvecs`` steps of Lanczos (1950) with full reorthogonalisation
  (:func:`saddlestudy.krylov.lanczos_tridiag`). Ritz values are upper bounds of the smallest
  eigenvalues and lower bounds of the largest (Cauchy interlacing), so ``lambda_min`` (the
  most negative, which power iteration cannot give) and ``lambda_max`` converge from inside,
  each Ritz value with the residual bound ``|beta_m s_mi|`` (Parlett, *The Symmetric
  Eigenvalue Problem*, 1998, on Lanczos). Memory O(num_matvecs * P).
- ``"slq"``: stochastic Lanczos quadrature (Lin, Saad & Yang 2016, SIAM Review 58;
  Ubaru, Chen & Saad 2017, SIMAX 38; used on network Hessians by Ghorbani, Krishnan & Xiao
  2019): ``num_probes`` Rademacher probes, a Lanczos run of ``num_matvecs`` steps from each;
  the Gauss quadrature nodes (Ritz values) and weights (squared first components of the
  Ritz vectors) of every probe estimate the spectral measure, hence a Gaussian-smoothed
  density and the fractions of negative, zero and positive eigenvalues, with standard
  errors over probes. Memory O(num_matvecs * P) per probe in flight.

What each method puts in a :class:`Spectrum`:

====================  ===================  ========================  ==========================
field                 dense                lanczos                   slq
====================  ===================  ========================  ==========================
eigenvalues           all P, ascending     the m Ritz values,        quadrature nodes, shape
                                           ascending                 (num_probes, m)
weights               None                 None                      (num_probes, m), rows
                                                                     sum to 1
counts, index, ...    exact (ints)         counts of Ritz values     estimates (floats):
                                           (ints): lower bounds of   P x mean over probes
                                           the true counts of        of the quadrature mass
                                           negative and positive     below -zero_tol / above
                                           eigenvalues, exact when   zero_tol
                                           m == P; num_zero = P -
                                           the two
*_sem                 0                    0 (the error is a bias)   standard error over
                                                                     probes
*_bias_bound          0                    (P - m) / P, from         quadrature error bound
                                           interlacing (zero         (Chebyshev-Markov-
                                           fraction: twice that)     Stieltjes), mean over
                                                                     probes
lambda_min / _max     exact                extreme Ritz values       extreme Ritz values over
                                                                     all probes
min_eigenvector       exact eigenvector    Ritz vector of lambda_min Ritz vector of lambda_min
residual_bounds       None                 (m,)                      (num_probes, m)
converged             True                 the num_extreme lowest    the Ritz pairs of
                                           and highest Ritz pairs    lambda_min and lambda_max
                                           have residual <= tol *    have residual <= tol *
                                           max|Ritz value|           max|Ritz value|
density_grid/density  None                 None                      (1024,) each
====================  ===================  ========================  ==========================

So for every method ``|true fraction - estimate| <= bias bound + (a few) sem``: the SLQ
check of the tests. Random vectors (Lanczos start, SLQ probes, restarts) come from ``key``
(default ``jax.random.key(0)``: reproducible).

Memory (``chunk_size=None``): how many replicas (``hessian_spectra``) and vectors (dense
basis vectors, SLQ probes) are vmapped at once follows the rule of :mod:`saddlestudy.memory`
(:func:`saddlestudy.memory.plan`), cached per loss; pass ``chunk_size`` to override. The
Krylov kernels (Lanczos, Ritz pairs, the smoothed density) live in
:mod:`saddlestudy.krylov`; this module holds the result types, the method cores, the
counting and the entry points.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from matfree import stochtrace

from saddlestudy import hessian, krylov, memory
from saddlestudy._checks import check_int, check_loss_and_params, check_number, non_finite_error
from saddlestudy._results import plain, ravel_batched
from saddlestudy.memory import device_memory_bytes  # noqa: F401  (config.py reads it here)

Params = Any
LossFn = Callable[[Params], jax.Array]

METHODS = ("dense", "lanczos", "slq")
TRACE_ESTIMATORS = ("hutchinson", "xtrace")
EIGENPAIR_WHICH = ("largest", "smallest")

# The zero tolerance of every count unless one is given: |lambda| <= 1e-5 is zero (Frye's
# thesis; docs/science.md §1). The one definition in the package.
DEFAULT_ZERO_TOL = 1e-5
# Up to this P a dense Hessian and its eigh are the default (all P eigenvalues: exact counts);
# above it, matrix-free methods. The study's spectrum.full_spectrum_max_params default and
# escape_saddle's "auto" use it.
DENSE_EIGH_MAX_PARAMS = 2000
DEFAULT_NUM_MATVECS = 100  # Lanczos/SLQ Krylov depth m (capped at P)
DEFAULT_NUM_EXTREME = 10  # Ritz pairs at each end that the convergence flag covers
DEFAULT_NUM_PROBES = 16  # SLQ probes
DEFAULT_TRACE_PROBES = 64
DENSITY_GRID_SIZE = 1024
DENSITY_RELATIVE_WIDTH = 0.01  # Gaussian sigma as a fraction of the Ritz-value range
DENSITY_GRID_MARGIN = 5.0  # the grid extends this many sigmas past the extreme nodes


# ---------------------------------------------------------------------------------------------
# Result types
# ---------------------------------------------------------------------------------------------

_DATA_FIELDS = [
    "eigenvalues",
    "num_negative",
    "num_zero",
    "num_positive",
    "index",
    "minimum_ratio",
    "lambda_min",
    "lambda_max",
    "min_eigenvector",
    "zero_fraction",
    "index_sem",
    "minimum_ratio_sem",
    "zero_fraction_sem",
    "index_bias_bound",
    "minimum_ratio_bias_bound",
    "zero_fraction_bias_bound",
    "residual_bounds",
    "converged",
    "weights",
    "density_grid",
    "density",
    "density_width",
    "eigenvalue_error",
]
_META_FIELDS = [
    "num_params",
    "zero_tol",
    "method",
    "num_matvecs",
    "num_probes",
    "num_extreme",
    "tol",
]


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=_DATA_FIELDS, meta_fields=_META_FIELDS
)
@dataclasses.dataclass(frozen=True)
class Spectrum:
    """The Hessian spectrum at one point (or, batched, at R points: a leading axis R).

    See the module docstring for what each method fills in.

    Attributes:
      eigenvalues: what the counts are taken from: all P eigenvalues ascending (dense),
        the m Ritz values ascending (lanczos), or the quadrature nodes of each probe,
        shape (num_probes, m) (slq).
      num_negative: eigenvalues < -zero_tol. An int array for dense (exact) and lanczos
        (a count of Ritz values: a lower bound); for slq a float estimate, P times
        ``index``, never rounded or truncated (compare it with P times
        ``index_sem`` and ``index_bias_bound``, not as a count).
      num_zero: |lambda| <= zero_tol (int or float as ``num_negative``).
      num_positive: eigenvalues > zero_tol (int or float as ``num_negative``).
      index: num_negative / num_params (alpha of Dauphin et al. 2014).
      minimum_ratio: num_positive / num_params (the lecture's "minimum ratio").
      lambda_min: smallest (most negative) eigenvalue, or its Ritz estimate (an upper bound).
      lambda_max: largest eigenvalue, or its Ritz estimate (a lower bound).
      min_eigenvector: unit (Ritz) eigenvector of ``lambda_min`` with the structure of the
        parameters: the direction to escape a saddle along (sign fixed so that its
        largest-magnitude entry is positive).
      zero_fraction: num_zero / num_params.
      index_sem, minimum_ratio_sem, zero_fraction_sem: standard errors over SLQ probes
        (0 for dense and lanczos).
      index_bias_bound, minimum_ratio_bias_bound, zero_fraction_bias_bound: bounds on the
        systematic error of the fractions, so that |true - estimate| <= bias bound (+ a
        few sem for slq). Dense: 0. Lanczos: (P - m) / P (twice that, at most 1, for the
        zero fraction), from interlacing. SLQ: the mean over probes of the weight of the
        heavier quadrature node next to the threshold (the Chebyshev-Markov-Stieltjes
        inequalities for Gauss quadrature; see Golub & Meurant, *Matrices, Moments and
        Quadrature with Applications*, 2010); sum of
        both thresholds for the zero fraction.
      residual_bounds: ``||H y - theta y||`` of each Ritz pair, aligned with
        ``eigenvalues`` (None for dense); |theta - nearest eigenvalue| is at most this.
      converged: whether the extreme Ritz pairs met ``tol`` (always True for dense).
      weights: SLQ quadrature weights, aligned with ``eigenvalues`` (None otherwise).
      density_grid, density: SLQ's Gaussian-smoothed spectral density on a grid; it
        integrates to 1 (multiply by P for eigenvalues per unit lambda). None otherwise.
      density_width: the Gaussian's standard deviation (eigenvalue units).
      eigenvalue_error: dense: a bound on how far each computed eigenvalue lies from the
        true one (Weyl): the built Hessian's rounding estimated by its asymmetry plus the
        eigensolver's backward error (:func:`saddlestudy.inertia.hessian_error`); counts
        within it of a threshold are not exact (:class:`saddlestudy.inertia.Inertia`).
        None otherwise.
      num_params: P.
      zero_tol: the absolute tolerance the counts use.
      method: how the spectrum was computed.
      num_matvecs: Krylov depth m (lanczos, slq).
      num_probes: SLQ probes.
      num_extreme: Ritz pairs at each end that ``converged`` covers (lanczos).
      tol: relative residual tolerance of ``converged`` (lanczos, slq).
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
    zero_fraction: jax.Array | None = None
    index_sem: jax.Array | None = None
    minimum_ratio_sem: jax.Array | None = None
    zero_fraction_sem: jax.Array | None = None
    index_bias_bound: jax.Array | None = None
    minimum_ratio_bias_bound: jax.Array | None = None
    zero_fraction_bias_bound: jax.Array | None = None
    residual_bounds: jax.Array | None = None
    converged: jax.Array | None = None
    weights: jax.Array | None = None
    density_grid: jax.Array | None = None
    density: jax.Array | None = None
    density_width: jax.Array | None = None
    eigenvalue_error: jax.Array | None = None
    num_matvecs: int | None = None
    num_probes: int | None = None
    num_extreme: int | None = None
    tol: float | None = None

    @property
    def counts_are_exact(self) -> bool:
        """True when the counts are exact: dense, or Lanczos run to its full depth P."""
        if self.method == "dense":
            return True
        return self.method == "lanczos" and self.num_matvecs == self.num_params

    def with_zero_tol(self, zero_tol: float) -> Spectrum:
        """The same spectrum counted with another zero tolerance (no recomputation)."""
        zero_tol = check_zero_tol(zero_tol)
        counts = _counts_jit(self.eigenvalues, self.weights, self.num_params, zero_tol)
        return dataclasses.replace(self, zero_tol=zero_tol, **counts)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python / NumPy values for storage.

        0-d arrays become Python ``int``/``float``/``bool``; ``min_eigenvector`` is
        flattened to shape (P,) (batched: (R, P)) in ``ravel_pytree`` order; fields a
        method does not fill stay None.
        """
        batch_ndim = np.ndim(self.lambda_min)
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "min_eigenvector":
                value = ravel_batched(value, batch_ndim)
            out[field.name] = value if field.name in _META_FIELDS else plain(value)
        return out


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["eigenvalues", "eigenvectors", "residual_bounds", "converged", "num_matvecs"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class Eigenpairs:
    """The k extreme eigenpairs (Ritz pairs) of a Hessian (batched: a leading axis R).

    Attributes:
      eigenvalues: (k,), descending for ``which="largest"``, ascending for ``"smallest"``.
      eigenvectors: unit vectors with the structure of the parameters and a leading axis k
        (sign fixed so that the largest-magnitude entry is positive).
      residual_bounds: (k,) ``||H y - theta y||``, a bound on each eigenvalue's error
        (and ``bound^2 / gap`` a sharper one, the gap to the rest of the spectrum).
      converged: (k,) whether ``residual_bounds <= tol * max|Ritz value|``.
      num_matvecs: the Hessian-vector products used (fewer than asked when the run
        stopped early because all k had converged).
    """

    eigenvalues: jax.Array
    eigenvectors: Params
    residual_bounds: jax.Array
    converged: jax.Array
    num_matvecs: jax.Array

    def to_dict(self) -> dict[str, Any]:
        """Plain Python / NumPy values; ``eigenvectors`` flattened to shape (k, P) (batched:
        (R, k, P)) in ``ravel_pytree`` order."""
        batch_ndim = np.ndim(self.eigenvalues)
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "eigenvectors":
                out[field.name] = ravel_batched(value, batch_ndim)
            else:
                out[field.name] = plain(value)
        return out


@functools.partial(jax.tree_util.register_dataclass, data_fields=["value", "sem"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class TraceEstimate:
    """A stochastic estimate of the Hessian trace and its standard error.

    Attributes:
      value: the estimate of tr(H).
      sem: its standard error.
    """

    value: jax.Array
    sem: jax.Array

    def to_dict(self) -> dict[str, Any]:
        """Plain Python floats (NumPy arrays when batched)."""
        return {"value": plain(self.value), "sem": plain(self.sem)}


# ---------------------------------------------------------------------------------------------
# Method cores (never jitted here; the entry points below jit the outermost call)
# ---------------------------------------------------------------------------------------------


class _DenseCore(NamedTuple):
    """What the dense method computes (flat, inside the compiled call)."""

    eigenvalues: jax.Array  # all P, ascending
    min_vector: jax.Array
    lambda_min: jax.Array
    lambda_max: jax.Array
    converged: jax.Array
    eigenvalue_error: jax.Array  # a bound on every eigenvalue's error
    finite: jax.Array


class _LanczosCore(NamedTuple):
    """What one Lanczos run computes: Ritz values with their residual bounds."""

    eigenvalues: jax.Array  # the Ritz values, ascending
    min_vector: jax.Array
    lambda_min: jax.Array
    lambda_max: jax.Array
    residual_bounds: jax.Array
    converged: jax.Array
    finite: jax.Array


class _SlqCore(NamedTuple):
    """What SLQ computes: per probe, quadrature nodes and weights; the density on a grid."""

    eigenvalues: jax.Array  # nodes, (probes, m)
    weights: jax.Array
    min_vector: jax.Array
    lambda_min: jax.Array
    lambda_max: jax.Array
    residual_bounds: jax.Array
    converged: jax.Array
    density_grid: jax.Array
    density: jax.Array
    density_width: jax.Array
    finite: jax.Array


def _dense_core(loss_fn, params, *, chunk_size) -> _DenseCore:
    H = hessian.dense_hessian_chunked(loss_fn, params, chunk_size)
    # The asymmetry is rounding error only: it estimates the built matrix's error
    # (inertia.hessian_error), to which eigh adds its backward error n eps ||H||_F.
    n = H.shape[0]
    eps = jnp.finfo(H.dtype).eps
    error = jnp.linalg.norm(H - H.T) + (n + 1) * eps * jnp.linalg.norm(H)
    H = 0.5 * (H + H.T)
    finite = jnp.all(jnp.isfinite(H))
    eigenvalues, eigenvectors = jnp.linalg.eigh(jnp.where(finite, H, jnp.zeros_like(H)))
    return _DenseCore(
        eigenvalues=eigenvalues,
        min_vector=krylov.fix_sign(eigenvectors[:, 0]),
        lambda_min=eigenvalues[0],
        lambda_max=eigenvalues[-1],
        converged=jnp.asarray(True),
        eigenvalue_error=error,
        finite=finite,
    )


def _lanczos_core(loss_fn, params, noise, tol, *, num_matvecs, num_extreme) -> _LanczosCore:
    matvec, _ = hessian.flat_hvp(loss_fn, params)
    v0, restart = noise
    tri = krylov.lanczos_tridiag(matvec, v0, num_matvecs, restart_vector=restart)
    theta, S, bounds = krylov.ritz_pairs(tri)
    scale = jnp.maximum(jnp.abs(theta[0]), jnp.abs(theta[-1]))
    extremes = jnp.concatenate([bounds[:num_extreme], bounds[-num_extreme:]])
    return _LanczosCore(
        eigenvalues=theta,
        min_vector=krylov.fix_sign(krylov.unit(S[:, 0] @ tri.basis)),
        lambda_min=theta[0],
        lambda_max=theta[-1],
        residual_bounds=bounds,
        converged=jnp.all(extremes <= tol * scale),
        finite=jnp.all(jnp.isfinite(theta)) & jnp.isfinite(tri.residual_norm),
    )


def _slq_core(loss_fn, params, noise, tol, density_width, *, num_matvecs, chunk_size) -> _SlqCore:
    matvec, theta0 = hessian.flat_hvp(loss_fn, params)
    restart = noise[-1]  # shared by the probes: any random vector serves a rare restart

    def probe(z):
        # Rademacher probes (signs of a normal draw): ||v||^2 = P exactly, so the weights of
        # a probe sum to 1 and P * sum_i w_i f(theta_i) = v^T f(H) v is Hutchinson's
        # unbiased estimator of tr f(H) (Hutchinson 1990), up to the quadrature error.
        v = jnp.where(z < 0, -1.0, 1.0).astype(theta0.dtype)
        tri = krylov.lanczos_tridiag(matvec, v, num_matvecs, restart_vector=restart)
        theta, S, bounds = krylov.ritz_pairs(tri)
        finite = jnp.all(jnp.isfinite(theta)) & jnp.isfinite(tri.residual_norm)
        return theta, S[0, :] ** 2, bounds, krylov.unit(S[:, 0] @ tri.basis), finite

    nodes, weights, bounds, min_vectors, finite = _map_in_chunks(probe, noise[:-1], chunk_size)
    best_min = jnp.argmin(nodes[:, 0])
    best_max = jnp.argmax(nodes[:, -1])
    lambda_min, lambda_max = nodes[best_min, 0], nodes[best_max, -1]
    scale = jnp.maximum(jnp.abs(lambda_min), jnp.abs(lambda_max))
    converged = (bounds[best_min, 0] <= tol * scale) & (bounds[best_max, -1] <= tol * scale)

    spread = lambda_max - lambda_min
    # NaN means "default": relative to the range (a one-point spectrum: to its value). A
    # dynamic value rather than None, so that both compile to one program.
    fallback = DENSITY_RELATIVE_WIDTH * jnp.maximum(scale, jnp.finfo(nodes.dtype).tiny)
    default_width = jnp.where(spread > 0, DENSITY_RELATIVE_WIDTH * spread, fallback)
    density_width = jnp.asarray(density_width, nodes.dtype)
    density_width = jnp.where(jnp.isnan(density_width), default_width, density_width)
    margin = DENSITY_GRID_MARGIN * density_width
    grid = jnp.linspace(lambda_min - margin, lambda_max + margin, DENSITY_GRID_SIZE)
    finite = jnp.all(finite)
    return _SlqCore(
        eigenvalues=nodes,
        weights=weights,
        min_vector=krylov.fix_sign(min_vectors[best_min]),
        lambda_min=lambda_min,
        lambda_max=lambda_max,
        residual_bounds=bounds,
        converged=converged,
        density_grid=grid,
        density=krylov.gaussian_density(grid, jnp.where(finite, nodes, 0), density_width, weights),
        density_width=density_width,
        finite=finite,
    )


def _spectrum_core(
    loss_fn,
    params,
    noise,
    tol,
    density_width,
    zero_tol,
    *,
    method,
    num_matvecs,
    num_extreme,
    num_probes,
    chunk_size,
):
    if method == "dense":
        core = _dense_core(loss_fn, params, chunk_size=chunk_size)
    elif method == "lanczos":
        core = _lanczos_core(
            loss_fn, params, noise, tol, num_matvecs=num_matvecs, num_extreme=num_extreme
        )
    else:
        core = _slq_core(
            loss_fn,
            params,
            noise,
            tol,
            density_width,
            num_matvecs=num_matvecs,
            chunk_size=chunk_size,
        )
    raw = core._asdict()  # the Spectrum fields this method fills
    # Counting and unravelling inside the compiled call: done eagerly, each of their small
    # operations would be compiled on its own.
    raw["min_eigenvector"] = ravel_pytree(params)[1](raw.pop("min_vector"))
    num_params = sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(params))
    raw.update(_counts(raw["eigenvalues"], raw.get("weights"), num_params, zero_tol))
    # Under jit/vmap no error can be raised: make a non-finite result loud instead (NaN
    # values, counts of -1, converged False) rather than counts of a zeroed matrix.
    finite = raw["finite"]
    for name, value in raw.items():
        if name != "finite":
            raw[name] = jax.tree.map(lambda x: _poison(x, finite), value)
    return raw


def _poison(x: jax.Array, finite: jax.Array) -> jax.Array:
    if jnp.issubdtype(x.dtype, jnp.bool_):
        return x & finite
    if jnp.issubdtype(x.dtype, jnp.integer):
        return jnp.where(finite, x, -1)
    return jnp.where(finite, x, jnp.nan)


def _noise(key, params, *, method, num_probes, num_replicas=None):
    """The random vectors a method uses, drawn in one call.

    Lanczos: a start and a restart vector; SLQ: num_probes probe vectors (signs are taken
    later) and one restart vector; dense: none. Drawn outside any vmap: a vmapped threefry
    draw costs about a second of compile time.
    """
    if method == "dense":
        return None
    leaves = jax.tree.leaves(params)
    shape = (2 if method == "lanczos" else num_probes + 1, sum(math.prod(x.shape) for x in leaves))
    if num_replicas is not None:
        shape = (num_replicas, *shape)
    return jax.random.normal(key, shape, jnp.result_type(*leaves))


def _spectrum_entry(loss_fn, params, key, tol, density_width, zero_tol, **static):
    noise = _noise(key, params, method=static["method"], num_probes=static["num_probes"])
    return _spectrum_core(loss_fn, params, noise, tol, density_width, zero_tol, **static)


def _spectra_entry(
    loss_fn, params_R, key, tol, density_width, zero_tol, *, replica_batch, **static
):
    leaves = jax.tree.leaves(params_R)
    num_replicas = leaves[0].shape[0]
    one_params = jax.tree.map(lambda x: x[0], params_R)
    noise_R = _noise(
        key,
        one_params,
        method=static["method"],
        num_probes=static["num_probes"],
        num_replicas=num_replicas,
    )

    def one(args):
        params, noise = args
        return _spectrum_core(loss_fn, params, noise, tol, density_width, zero_tol, **static)

    # All R in one vmap when they fit; smaller batches bound the memory.
    return _map_in_chunks(one, (params_R, noise_R), replica_batch)


def _map_in_chunks(f: Callable, xs: Any, chunk: int) -> Any:
    """``lax.map(f, xs)`` vmapping ``chunk`` items at a time (chunk divides the length)."""
    n = jax.tree.leaves(xs)[0].shape[0]
    if chunk >= n:
        return jax.vmap(f)(xs)
    return jax.lax.map(f, xs, batch_size=chunk if chunk > 1 else None)


def _wanted(tri: krylov.Tridiagonal, tol, smallest, k):
    """Ritz pairs of the k wanted extremes of a (possibly partial) run, and their test."""
    theta, S, bounds = krylov.ritz_pairs(tri)
    n = tri.num_steps
    # ``smallest`` is dynamic so that both ends share one compiled program.
    idx = jnp.where(smallest, jnp.arange(k), n - 1 - jnp.arange(k))
    scale = jnp.maximum(jnp.abs(theta[0]), jnp.abs(theta[n - 1]))
    return theta[idx], S[:, idx], bounds[idx], bounds[idx] <= tol * scale


def _eigenpairs_core(loss_fn, params, key, tol, smallest, *, k, num_matvecs, stop_early):
    matvec, theta0 = hessian.flat_hvp(loss_fn, params)
    v0, restart = jax.random.normal(key, (2, *theta0.shape), theta0.dtype)

    def stop(tri):
        # No eigh before k Ritz values exist: on a small problem the checks are much of
        # the cost (an eigh of the (m, m) T against a cheap product).
        converged = lambda: jnp.all(_wanted(tri, tol, smallest, k)[3])  # noqa: E731
        return jax.lax.cond(tri.num_steps >= k, converged, lambda: jnp.asarray(False))

    tri = krylov.lanczos_tridiag(
        matvec, v0, num_matvecs, restart_vector=restart, stop=stop if stop_early else None
    )
    values, S, bounds, converged = _wanted(tri, tol, smallest, k)
    vectors = jax.vmap(lambda s: krylov.fix_sign(krylov.unit(s @ tri.basis)))(S.T)
    vectors = jax.vmap(ravel_pytree(params)[1])(vectors)
    finite = jnp.all(jnp.isfinite(values)) & jnp.isfinite(tri.residual_norm)
    return values, vectors, bounds, converged, tri.num_steps, finite


def _trace_core(loss_fn, params, key, *, num_probes, estimator):
    matvec, theta0 = hessian.flat_hvp(loss_fn, params)
    if estimator == "hutchinson":
        estimate = stochtrace.estimator_monte_carlo_mean_and_sem(
            stochtrace.monte_carlo_trace(), stochtrace.sampler_signs(theta0, num=num_probes)
        )
    else:
        # XTrace needs rotation-invariant probes for its "resphering" step.
        estimate = stochtrace.estimator_leave_one_out_mean_and_sem(
            stochtrace.leave_one_out_xtrace(), stochtrace.sampler_sphere(theta0, num=num_probes)
        )
    # matfree's XTrace broadcasts a vector against a matrix implicitly; allow it here only,
    # so that callers running with jax_numpy_rank_promotion="raise" can still use it.
    with jax.numpy_rank_promotion("allow"):
        return estimate(matvec, key)


_SPECTRUM_STATIC = ("method", "num_matvecs", "num_extreme", "num_probes", "chunk_size")
# The entry points are the outermost calls, so they jit; the kernels above never do.
# ``loss_fn`` is static: compilation is cached per loss object and shapes.
_spectrum_jit = jax.jit(_spectrum_entry, static_argnums=0, static_argnames=_SPECTRUM_STATIC)
_spectra_jit = jax.jit(
    _spectra_entry, static_argnums=0, static_argnames=(*_SPECTRUM_STATIC, "replica_batch")
)
_eigenpairs_jit = jax.jit(
    _eigenpairs_core, static_argnums=0, static_argnames=("k", "num_matvecs", "stop_early")
)
_trace_jit = jax.jit(_trace_core, static_argnums=0, static_argnames=("num_probes", "estimator"))


# ---------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------


def check_zero_tol(zero_tol: Any) -> float:
    """``zero_tol`` as a float; ValueError unless it is a finite number >= 0."""
    return check_number("zero_tol", zero_tol, zero_ok=True)


def _counts(
    eigenvalues: jax.Array, weights: jax.Array | None, num_params: int, zero_tol: float
) -> dict[str, jax.Array]:
    negative = eigenvalues < -zero_tol
    positive = eigenvalues > zero_tol
    if weights is None:
        num_negative = jnp.sum(negative, axis=-1)
        num_positive = jnp.sum(positive, axis=-1)
        num_zero = num_params - num_negative - num_positive
        index = num_negative / num_params
        zeros = jnp.zeros_like(index)
        # Interlacing: each of the P - m unresolved eigenvalues may fall on either side.
        unresolved = (num_params - eigenvalues.shape[-1]) / num_params
        return dict(
            num_negative=num_negative,
            num_zero=num_zero,
            num_positive=num_positive,
            index=index,
            minimum_ratio=num_positive / num_params,
            zero_fraction=num_zero / num_params,
            index_sem=zeros,
            minimum_ratio_sem=zeros,
            zero_fraction_sem=zeros,
            index_bias_bound=zeros + unresolved,
            minimum_ratio_bias_bound=zeros + unresolved,
            zero_fraction_bias_bound=zeros + min(1.0, 2 * unresolved),
        )
    # SLQ: per-probe quadrature mass below / inside / above the tolerance band.
    per_probe = {
        "index": jnp.sum(weights * negative, axis=-1),
        "minimum_ratio": jnp.sum(weights * positive, axis=-1),
        "zero_fraction": jnp.sum(weights * ~(negative | positive), axis=-1),
    }
    bias_negative = _bracket_weight(weights, jnp.sum(negative, axis=-1))
    bias_positive = _bracket_weight(weights, eigenvalues.shape[-1] - jnp.sum(positive, axis=-1))
    bias = {
        "index": bias_negative,
        "minimum_ratio": bias_positive,
        "zero_fraction": bias_negative + bias_positive,
    }
    num_probes = weights.shape[-2]
    out = {}
    for name, values in per_probe.items():
        out[name] = jnp.mean(values, axis=-1)
        out[f"{name}_sem"] = jnp.std(values, axis=-1, ddof=1) / math.sqrt(num_probes)
        out[f"{name}_bias_bound"] = jnp.mean(bias[name], axis=-1)
    out.update(
        num_negative=num_params * out["index"],
        num_zero=num_params * out["zero_fraction"],
        num_positive=num_params * out["minimum_ratio"],
    )
    return out


_counts_jit = jax.jit(_counts, static_argnums=2)


def _bracket_weight(weights: jax.Array, num_below: jax.Array) -> jax.Array:
    """Weight of the heavier of the two nodes around a threshold with num_below nodes below.

    Chebyshev-Markov-Stieltjes: the true spectral measure below the threshold lies within
    the quadrature's mass minus the node just below and plus the node just above.
    """
    m = weights.shape[-1]
    below = jnp.take_along_axis(weights, jnp.clip(num_below - 1, 0, m - 1)[..., None], axis=-1)
    above = jnp.take_along_axis(weights, jnp.clip(num_below, 0, m - 1)[..., None], axis=-1)
    below = jnp.where(num_below > 0, below[..., 0], 0)
    above = jnp.where(num_below < m, above[..., 0], 0)
    return jnp.maximum(below, above)


# ---------------------------------------------------------------------------------------------
# Argument checks and planning
# ---------------------------------------------------------------------------------------------


def _plan(loss_fn, params, options: _Options, num_replicas: int) -> tuple[int, int]:
    return memory.plan(
        loss_fn,
        params,
        options.method,
        options.num_matvecs,
        options.num_probes,
        num_replicas,
        chunk_size=options.chunk_size,
    )


@dataclasses.dataclass(frozen=True)
class _Options:
    """The checked settings of one call; what a method does not use stays None."""

    method: str
    zero_tol: float
    num_params: int
    num_matvecs: int | None = None
    num_extreme: int | None = None
    num_probes: int | None = None
    chunk_size: int | None = None
    tol: float | None = None
    density_width: float | None = None


def _resolve_options(
    loss_fn,
    params,
    *,
    method,
    zero_tol,
    num_matvecs,
    num_extreme,
    tol,
    num_probes,
    density_width,
    chunk_size,
) -> _Options:
    if method not in METHODS:
        raise ValueError(f"unknown spectrum method {method!r}; choose from {METHODS}")
    zero_tol = check_zero_tol(zero_tol)
    num_params, dtype = check_loss_and_params(loss_fn, params)
    only = {
        "num_matvecs": (num_matvecs, ("lanczos", "slq")),
        "num_extreme": (num_extreme, ("lanczos",)),
        "tol": (tol, ("lanczos", "slq")),
        "num_probes": (num_probes, ("slq",)),
        "density_width": (density_width, ("slq",)),
        "chunk_size": (chunk_size, ("dense", "slq")),
    }
    for name, (value, methods) in only.items():
        if value is not None and method not in methods:
            raise ValueError(f"{name} applies to method {' and '.join(methods)}, not {method!r}")
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, 1)
    common = dict(method=method, zero_tol=zero_tol, num_params=num_params)
    if method == "dense":
        return _Options(**common, chunk_size=chunk_size)

    if num_params < 2:
        raise ValueError(f"method {method!r} needs at least 2 parameters, got P = {num_params}")
    if num_matvecs is None:
        num_matvecs = min(num_params, DEFAULT_NUM_MATVECS)
    num_matvecs = check_int("num_matvecs", num_matvecs, 2, num_params)
    if num_extreme is None:
        num_extreme = min(DEFAULT_NUM_EXTREME, num_matvecs)
    num_extreme = check_int("num_extreme", num_extreme, 1, num_matvecs)
    # sqrt(eps): a residual this small makes an isolated eigenvalue accurate to ~eps.
    tol = math.sqrt(float(jnp.finfo(dtype).eps)) if tol is None else check_number("tol", tol)
    if method == "lanczos":
        return _Options(**common, num_matvecs=num_matvecs, num_extreme=num_extreme, tol=tol)
    num_probes = check_int(
        "num_probes", DEFAULT_NUM_PROBES if num_probes is None else num_probes, 2
    )
    if density_width is not None:
        density_width = check_number("density_width", density_width)
    return _Options(**common, num_matvecs=num_matvecs, num_probes=num_probes,
                    chunk_size=chunk_size, tol=tol, density_width=density_width)  # fmt: skip


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _assemble(raw: dict, options: _Options) -> Spectrum:
    return Spectrum(
        num_params=options.num_params,
        zero_tol=options.zero_tol,
        method=options.method,
        num_matvecs=options.num_matvecs,
        num_probes=options.num_probes,
        num_extreme=options.num_extreme,
        tol=options.tol,
        **raw,
    )


def _width_or_nan(options: _Options) -> float | None:
    if options.method != "slq":
        return None
    return math.nan if options.density_width is None else options.density_width


def _default_key(key: jax.Array | None) -> jax.Array:
    return jax.random.key(0) if key is None else key


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def hessian_spectrum(
    loss_fn: LossFn,
    params: Params,
    *,
    method: str = "dense",
    zero_tol: float = DEFAULT_ZERO_TOL,
    num_matvecs: int | None = None,
    num_extreme: int | None = None,
    tol: float | None = None,
    num_probes: int | None = None,
    density_width: float | None = None,
    chunk_size: int | None = None,
    key: jax.Array | None = None,
) -> Spectrum:
    """The Hessian spectrum of ``loss_fn`` at ``params``.

    Args:
      loss_fn: any pure JAX function of a parameter pytree (nested dicts included)
        returning a scalar.
      params: the point; float leaves. The result has the dtype of the leaves.
      method: ``"dense"`` (exact), ``"lanczos"`` (extremes) or ``"slq"`` (density and
        estimated counts); see the module docstring.
      zero_tol: absolute tolerance: |lambda| <= zero_tol counts as zero.
      num_matvecs: lanczos/slq: Krylov depth m, 2 <= m <= P (default min(P, 100)).
      num_extreme: lanczos: Ritz pairs at each end that ``converged`` covers
        (default min(10, m)).
      tol: lanczos/slq: relative residual tolerance of ``converged`` (default sqrt(eps)
        of the dtype).
      num_probes: slq: Rademacher probes, >= 2 (default 16).
      density_width: slq: the Gaussian's standard deviation in eigenvalue units
        (default 1% of the range of the Ritz values).
      chunk_size: dense: basis vectors per vmapped chunk; slq: probes in flight at once,
        rounded down to a divisor of num_probes (default: the memory rule of the module
        docstring).
      key: lanczos/slq: PRNG key of the start vectors/probes (default ``key(0)``).

    Returns:
      A :class:`Spectrum`. Works under ``jax.jit`` and ``jax.vmap`` (for R replicas in one
      call with a memory-aware plan, use :func:`hessian_spectra`). Under a transformation
      no error can be raised: a spectrum whose Hessian-vector products were non-finite
      then has NaN values, counts of -1 and ``converged`` False.

    Raises:
      ValueError: unknown method, bad zero_tol, num_matvecs outside [2, P], an option the
        method does not use, non-float parameters, a non-scalar loss, or (outside of
        tracing) non-finite Hessian-vector products.
    """
    options = _resolve_options(
        loss_fn,
        params,
        method=method,
        zero_tol=zero_tol,
        num_matvecs=num_matvecs,
        num_extreme=num_extreme,
        tol=tol,
        num_probes=num_probes,
        density_width=density_width,
        chunk_size=chunk_size,
    )
    chunk = _plan(loss_fn, params, options, 1)[1]
    raw = _spectrum_jit(
        loss_fn,
        params,
        _default_key(key),
        options.tol,
        _width_or_nan(options),
        options.zero_tol,
        method=method,
        num_matvecs=options.num_matvecs,
        num_extreme=options.num_extreme,
        num_probes=options.num_probes,
        chunk_size=chunk if method != "lanczos" else None,
    )
    finite = raw.pop("finite")
    if not _is_tracer(finite) and not bool(finite):
        raise non_finite_error("at these parameters")
    return _assemble(raw, options)


def hessian_spectra(
    loss_fn: LossFn,
    params_R: Params,
    *,
    method: str = "dense",
    zero_tol: float = DEFAULT_ZERO_TOL,
    num_matvecs: int | None = None,
    num_extreme: int | None = None,
    tol: float | None = None,
    num_probes: int | None = None,
    density_width: float | None = None,
    chunk_size: int | None = None,
    key: jax.Array | None = None,
) -> Spectrum:
    """Spectra of R replicas (leading axis R on every leaf of ``params_R``) in one call.

    Same options as :func:`hessian_spectrum`. One compiled program maps over the replicas,
    vmapping as many at once as the memory rule allows (all R when they fit). The replicas'
    random vectors are drawn from ``key`` in one call (so replica r's differ from those of a
    single call with the same key; both are valid). Every field has a leading axis R.

    Raises:
      ValueError: as :func:`hessian_spectrum`; non-finite products name the replicas.
    """
    leaves = jax.tree.leaves(params_R)
    if not leaves or any(jnp.ndim(leaf) < 1 for leaf in leaves):
        raise ValueError("params_R needs a leading replica axis on every leaf")
    num_replicas = int(jnp.shape(leaves[0])[0])
    if any(jnp.shape(leaf)[0] != num_replicas for leaf in leaves):
        raise ValueError("every leaf of params_R must have the same leading replica axis")
    one = jax.tree.map(lambda x: x[0], params_R)
    options = _resolve_options(
        loss_fn,
        one,
        method=method,
        zero_tol=zero_tol,
        num_matvecs=num_matvecs,
        num_extreme=num_extreme,
        tol=tol,
        num_probes=num_probes,
        density_width=density_width,
        chunk_size=chunk_size,
    )
    replica_batch, chunk = _plan(loss_fn, one, options, num_replicas)
    raw = _spectra_jit(
        loss_fn,
        params_R,
        _default_key(key),
        options.tol,
        _width_or_nan(options),
        options.zero_tol,
        method=method,
        num_matvecs=options.num_matvecs,
        num_extreme=options.num_extreme,
        num_probes=options.num_probes,
        chunk_size=chunk if method != "lanczos" else None,
        replica_batch=replica_batch,
    )
    finite = raw.pop("finite")
    if not _is_tracer(finite) and not bool(jnp.all(finite)):
        bad = [int(r) for r in np.flatnonzero(~np.asarray(finite))]
        raise non_finite_error(f"for replicas {bad}")
    return _assemble(raw, options)


def hessian_eigenpairs(
    loss_fn: LossFn,
    params: Params,
    k: int,
    *,
    which: str = "largest",
    num_matvecs: int | None = None,
    tol: float | None = None,
    stop_early: bool = True,
    key: jax.Array | None = None,
) -> Eigenpairs:
    """The k largest (or smallest) eigenpairs by Lanczos with full reorthogonalisation.

    The run stops as soon as all k pairs have converged (checked every 2 steps), so the
    cost adapts to the problem: ask for the accuracy with ``tol``, not for a depth.

    Args:
      loss_fn: pure scalar function of a parameter pytree.
      params: the point.
      k: number of pairs, 1 <= k <= num_matvecs.
      which: ``"largest"`` (algebraically, descending) or ``"smallest"`` (ascending; the
        most negative first: escape directions of a saddle).
      num_matvecs: the most products, the Krylov depth m, k <= m <= P (default
        min(P, max(100, 4 k))).
      tol: relative residual tolerance: a pair has converged when its residual bound is
        <= tol * max|Ritz value| (default sqrt(eps): about 3e-4 in float32, 1.5e-8 in
        float64; the eigenvalue error is then about bound^2 / gap, far smaller).
      stop_early: stop when all k have converged; False: always ``num_matvecs`` products.
      key: PRNG key of the start vector (default ``key(0)``).

    Returns:
      :class:`Eigenpairs` (compiled once per ``loss_fn``).
    """
    if which not in EIGENPAIR_WHICH:
        raise ValueError(f"which must be one of {EIGENPAIR_WHICH}, got {which!r}")
    num_params, dtype = check_loss_and_params(loss_fn, params)
    if num_params < 2:
        raise ValueError(f"Lanczos needs at least 2 parameters, got P = {num_params}")
    k = check_int("k", k, 1, num_params)
    if num_matvecs is None:
        num_matvecs = min(num_params, max(DEFAULT_NUM_MATVECS, 4 * k))
    num_matvecs = check_int("num_matvecs", num_matvecs, max(2, k), num_params)
    tol = math.sqrt(float(jnp.finfo(dtype).eps)) if tol is None else check_number("tol", tol)
    values, vectors, bounds, converged, used, finite = _eigenpairs_jit(
        loss_fn,
        params,
        _default_key(key),
        tol,
        which == "smallest",
        k=k,
        num_matvecs=num_matvecs,
        stop_early=bool(stop_early),
    )
    if not _is_tracer(finite) and not bool(finite):
        raise non_finite_error("at these parameters")
    return Eigenpairs(
        eigenvalues=values,
        eigenvectors=vectors,
        residual_bounds=bounds,
        converged=converged,
        num_matvecs=used,
    )


def hessian_trace(
    loss_fn: LossFn,
    params: Params,
    *,
    num_probes: int = DEFAULT_TRACE_PROBES,
    estimator: str = "hutchinson",
    key: jax.Array | None = None,
) -> TraceEstimate:
    """A stochastic estimate of tr(H) with its standard error, by matfree's estimators.

    Args:
      loss_fn: pure scalar function of a parameter pytree.
      params: the point.
      num_probes: probes (Hessian-vector products), all vmapped at once; >= 2.
      estimator: ``"hutchinson"``: Rademacher probes, mean of ``v^T H v`` (Hutchinson 1990;
        error ~ ||H||_F sqrt(2 / num_probes)). ``"xtrace"``: XTrace (Epperly, Tropp & Webber
        2024, SIMAX 45), exact on the span of the probes plus a leave-one-out Hutchinson
        correction: far smaller error when the spectrum is dominated by a few outliers (as
        network Hessians are); needs num_probes <= P.
      key: PRNG key of the probes (default ``key(0)``).

    Returns:
      A :class:`TraceEstimate` (``value``, ``sem``); ``sem`` is matfree's standard error (the
      population standard deviation of the per-probe, or leave-one-out, estimates over
      sqrt(num_probes)).
    """
    if estimator not in TRACE_ESTIMATORS:
        raise ValueError(f"estimator must be one of {TRACE_ESTIMATORS}, got {estimator!r}")
    num_params, _ = check_loss_and_params(loss_fn, params)
    high = num_params if estimator == "xtrace" else None
    num_probes = check_int("num_probes", num_probes, 2, high)
    value, sem = _trace_jit(
        loss_fn, params, _default_key(key), num_probes=num_probes, estimator=estimator
    )
    if not _is_tracer(value) and not bool(jnp.isfinite(value)):
        raise non_finite_error("at these parameters")
    return TraceEstimate(value=value, sem=sem)
