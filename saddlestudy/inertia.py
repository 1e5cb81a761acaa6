"""Hessian inertia: how many eigenvalues lie below -tau, inside [-tau, tau] and above tau.

``hessian_inertia(loss_fn, params, zero_tol=...)`` returns an :class:`Inertia`: the counts,
a **certified** lower bound ``num_negative_lo`` and an upper bound ``num_negative_hi`` on
the number of negative eigenvalues, and ``exact`` when the two meet. Definitions as in
shared/SCIENCE.md §1 and §6: ``lambda < -tau`` is negative, ``lambda > tau`` positive, the
rest zero; ``tau`` is ``zero_tol`` or ``relative_tol * lambda_max``.

Methods (what each can and cannot count):

- ``"dense"``: exact. The Hessian is built from P Hessian-vector products in chunks
  (:func:`saddlestudy.hessian.dense_hessian_chunked`), then Sylvester's law of inertia: for
  the Bunch-Kaufman factorisation ``H - sigma I = L D L^T`` (LAPACK ``sytrf``, about P^3 / 3
  flops, blocked) the eigenvalues of H below / above sigma are as many as the negative /
  positive eigenvalues of the block-diagonal D. Two factorisations per tolerance
  (sigma = -tau, +tau); for many tolerances one ``eigvalsh`` is cheaper and is used instead
  (``EIGVALSH_PER_SYTRF``, measured). Memory: two P x P matrices. ``resolution`` is
  ``P eps ||H||_F``: eigenvalues closer than that to +-tau may be counted on either side
  (the factorisation's backward error; Higham, *Accuracy and Stability of Numerical
  Algorithms*, 2002, ch. 11).
  On an accelerator, where no ``sytrf`` exists in JAX, ``eigvalsh`` on the device (one call
  for every tolerance; not yet measured against alternatives).
- ``"lanczos"``: Lanczos at the low end with deflation (locking) of converged Ritz pairs and
  an adaptive depth. Rounds of Lanczos with full reorthogonalisation
  (:func:`saddlestudy.krylov.lanczos_tridiag`) on the deflated operator
  ``(I - Y Y^T) H (I - Y Y^T)``, each from a fresh Gaussian start, lock the converged Ritz
  vectors below -tau into Y (so repeated eigenvalues get all their copies), until a round
  finds none and certifies, with probability >= 1 - ``failure_prob``, that the deflated
  operator has no eigenvalue below ``-tau + eta``: the random-start Lanczos bound of
  Kuczynski & Wozniakowski (1992, SIMAX 13, Thm 4.2) applied at both ends of the
  spectrum. With ``M = Y^T H Y`` and ``eta = ||H Y - Y M||_F`` (computed), Weyl's theorem
  and Cauchy interlacing give

  - ``num_negative_lo`` = max(#{eig(M) < -tau}, #{eig(M) < -tau - eta} + #{Ritz values
    of the last round < -tau - eta}): certified;
  - ``num_negative_hi`` = #{eig(M) < -tau + eta} when the last round certified the rest
    (probability >= 1 - failure_prob), else the certified but loose
    #{eig(M) < -tau + eta} + P - #{Ritz values of the last round >= -tau + eta}.

  Exact when the negatives stand apart from the zero cluster by more than the resolution
  ``eta + eps_KW * spread`` (``eps_KW`` falls as 1/depth^2); otherwise honest bounds.
  ``num_zero`` and ``num_positive`` (a bulk) are not counted: NaN.
- ``"slq"``: stochastic Lanczos quadrature (:func:`saddlestudy.spectrum.hessian_spectrum`,
  ``method="slq"``) for the fraction below -tau: an estimate with a standard error over
  probes (``index_sem``) and a quadrature bias bound (``index_bias_bound``). Its bounds:
  ``num_negative_lo`` = the most Ritz values below -tau in any one probe (interlacing:
  certified); ``num_negative_hi`` = P (mean over probes of the Chebyshev-Markov-Stieltjes
  upper bound + ``sqrt(ln(1 / failure_prob) / (2 num_probes))``) (Hoeffding: each probe's
  bound lies in [0, 1] and has mean >= the true fraction), capped by the certified
  count from the top end. Never exact below P.
- ``"lanczos+slq"``: Lanczos, then SLQ at the thresholds where Lanczos is not exact; the
  result combines both (largest lower bound, smallest upper bound, SLQ's estimate), each
  run with half of ``failure_prob`` so that the upper bound holds with probability
  >= 1 - failure_prob (a union bound).
- ``"auto"``: dense when two P x P matrices fit half the device's memory (P ~ 2.8 * 10^4 in
  float64 on a 24 GiB machine) and P is within ``dense_max_params`` (if given), else
  ``"lanczos+slq"``.

``lambda_min`` / ``lambda_max`` are the extreme Ritz values of a Lanczos run (an upper and a
lower bound of the true extremes) with residual bounds ``lambda_min_residual`` /
``lambda_max_residual``: each lies that close to an eigenvalue. ``min_eigenvector`` is the Ritz
vector of ``lambda_min``, shaped like the parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.linalg.lapack as lapack
from jax.flatten_util import ravel_pytree

from saddlestudy import hessian, krylov, memory
from saddlestudy import spectrum as spectrum_lib
from saddlestudy._checks import check_int

Params = Any
LossFn = Callable[[Params], jax.Array]

INERTIA_METHODS = ("auto", "dense", "lanczos", "slq", "lanczos+slq")
DEFAULT_ZERO_TOL = spectrum_lib.DEFAULT_ZERO_TOL
DEFAULT_FAILURE_PROB = 1e-3
DEFAULT_MAX_MATVECS = 3000  # Lanczos: the most Hessian-vector products over all rounds
DEFAULT_MAX_LOCKED = 256  # Lanczos: the most locked (deflated) Ritz pairs

CHECK_EVERY = 8  # Lanczos: steps between checks of the stopping rule
EXTREME_MATVECS = 200  # cap of the Lanczos run giving lambda_min / lambda_max (dense method)
# Time of one eigvalsh over one sytrf factorisation of the same matrix on a CPU (measured:
# BENCHMARKS.md, benchmarks/inertia_counts.py): more factorisations than this, one eigvalsh.
EIGVALSH_PER_SYTRF = 9.1
DENSE_MEMORY_FRACTION = 0.5  # "auto": dense when two P x P matrices fit this share of memory
# Kuczynski & Wozniakowski 1992, Thm 4.2(a): P(relative error >= eps) <= KW * sqrt(n) *
# exp(-(2k - 1) sqrt(eps)) for k products after the start vector.
KW_CONSTANT = 1.648


_DATA_FIELDS = [
    "num_negative",
    "num_zero",
    "num_positive",
    "index",
    "minimum_ratio",
    "num_negative_lo",
    "num_negative_hi",
    "exact",
    "index_sem",
    "index_bias_bound",
    "lambda_min",
    "lambda_max",
    "lambda_min_residual",
    "lambda_max_residual",
    "min_eigenvector",
    "resolution",
    "num_matvecs",
]
_META_FIELDS = ["num_params", "zero_tol", "relative_tol", "method", "failure_prob"]


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=_DATA_FIELDS, meta_fields=_META_FIELDS
)
@dataclasses.dataclass(frozen=True)
class Inertia:
    """The inertia of the Hessian at one point, at one threshold tau.

    Attributes:
      num_negative, num_zero, num_positive: eigenvalues below -tau, in [-tau, tau], above
        tau. Ints when ``exact``; SLQ: floats, P times its estimated fractions; Lanczos
        without an exact count: NaN (the bounds say what is known).
      index, minimum_ratio: num_negative / P and num_positive / P (estimates or NaN as the
        counts).
      num_negative_lo: a certified lower bound on the number of eigenvalues below -tau.
      num_negative_hi: an upper bound holding with probability >= 1 - ``failure_prob``
        (certain for dense).
      exact: lo == hi == num_negative.
      index_sem: standard error of ``index`` over SLQ probes (0 otherwise).
      index_bias_bound: SLQ's quadrature bias bound on ``index`` (0 otherwise).
      lambda_min, lambda_max: extreme Ritz values (upper / lower bounds of the extremes).
      lambda_min_residual, lambda_max_residual: their residual bounds.
      min_eigenvector: unit Ritz vector of ``lambda_min``, shaped like the parameters.
      resolution: the smallest distance from -tau (and +tau) at which the method places an
        eigenvalue on the right side: dense, the backward error ``P eps ||H||_F``; Lanczos,
        ``eta + eps_KW * spread``; SLQ, the spread over the Krylov depth (Chen, Trogdon &
        Ubaru 2021).
      num_matvecs: Hessian-vector products used (dense: P for the build plus the extremes).
      num_params: P.
      zero_tol: tau, the absolute threshold the counts use.
      relative_tol: when tau = relative_tol * lambda_max, that factor (else None).
      method: ``"dense"``, ``"lanczos"``, ``"slq"`` or ``"lanczos+slq"``.
      failure_prob: the probability that ``num_negative_hi`` fails (0 for dense).
    """

    num_negative: Any
    num_zero: Any
    num_positive: Any
    index: Any
    minimum_ratio: Any
    num_negative_lo: int
    num_negative_hi: int
    exact: bool
    index_sem: float
    index_bias_bound: float
    lambda_min: float
    lambda_max: float
    lambda_min_residual: float
    lambda_max_residual: float
    min_eigenvector: Params
    resolution: float
    num_matvecs: int
    num_params: int
    zero_tol: float
    relative_tol: float | None
    method: str
    failure_prob: float

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values; ``min_eigenvector`` flattened to (P,) in ``ravel_pytree``
        order."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "min_eigenvector":
                value = None if value is None else np.asarray(ravel_pytree(value)[0])
            out[field.name] = value
        return out


# ---------------------------------------------------------------------------------------------
# Dense: Sylvester's law of inertia on a Bunch-Kaufman factorisation
# ---------------------------------------------------------------------------------------------


def ldl_inertia(matrix: np.ndarray, shift: float, *, work: np.ndarray | None = None):
    """Eigenvalues of a symmetric matrix below, at and above ``shift``: ``(neg, zero, pos)``.

    Factorises ``matrix - shift I = L D L^T`` (LAPACK ``?sytrf``, Bunch-Kaufman pivoting,
    reading the lower triangle) and counts the signs of D's 1 x 1 and 2 x 2 blocks
    (Sylvester's law of inertia). ``work``, a Fortran-ordered array like ``matrix``, is
    overwritten (saves a P x P allocation per call).
    """
    n = matrix.shape[0]
    if work is None:
        work = np.empty_like(matrix, order="F")
    np.copyto(work, matrix)
    work.flat[:: n + 1] -= shift
    sytrf, sytrf_lwork = lapack.get_lapack_funcs(("sytrf", "sytrf_lwork"), (work,))
    lwork = lapack._compute_lwork(sytrf_lwork, n, lower=1)
    ldu, ipiv, info = sytrf(work, lower=1, lwork=lwork, overwrite_a=1)
    if info < 0:
        raise ValueError(f"LAPACK sytrf: argument {-info} is invalid")
    # info > 0: D has an exact zero pivot; the factorisation is still complete and valid.
    return _block_inertia(ldu, ipiv)


def _block_inertia(ldu: np.ndarray, ipiv: np.ndarray) -> tuple[int, int, int]:
    n = ldu.shape[0]
    diag = np.diagonal(ldu)
    # Lower storage: ipiv[k] = ipiv[k + 1] < 0 marks a 2 x 2 block in rows k, k + 1.
    two = np.zeros(n, bool)
    negative_pivots = np.flatnonzero(ipiv < 0)
    starts = []
    skip = -1
    for k in negative_pivots:
        if k == skip:
            continue
        starts.append(k)
        skip = k + 1
    starts = np.asarray(starts, dtype=int)
    two[starts] = True
    two[starts + 1] = True
    ones = diag[~two]
    neg = int(np.sum(ones < 0))
    pos = int(np.sum(ones > 0))
    zero = int(np.sum(ones == 0))
    if starts.size:
        a, c = diag[starts], diag[starts + 1]
        b = ldu[starts + 1, starts]
        det = a * c - b * b
        trace = a + c
        neg += int(np.sum(det < 0) + 2 * np.sum((det > 0) & (trace < 0)))
        pos += int(np.sum(det < 0) + 2 * np.sum((det > 0) & (trace > 0)))
        zero_det = det == 0
        neg += int(np.sum(zero_det & (trace < 0)))
        pos += int(np.sum(zero_det & (trace > 0)))
        zero += int(np.sum(zero_det) + np.sum(zero_det & (trace == 0)))
    return neg, zero, pos


def dense_counts(
    matrix: np.ndarray | jax.Array, taus: Sequence[float]
) -> list[tuple[int, int, int]]:
    """Exact ``(#{< -tau}, #{|.| <= tau}, #{> tau})`` of a symmetric matrix for each tau.

    On a CPU by two ``sytrf`` factorisations per tau (:func:`ldl_inertia`) while they cost
    less than one ``eigvalsh`` (``2 len(taus) < EIGVALSH_PER_SYTRF``), else by one
    ``eigvalsh`` for all of them; on an accelerator by one ``eigvalsh`` on the device.
    """
    on_device = isinstance(matrix, jax.Array) and matrix.devices().pop().platform != "cpu"
    if on_device or 2 * len(taus) >= EIGVALSH_PER_SYTRF:
        if on_device:
            eigenvalues = np.asarray(jnp.linalg.eigvalsh(0.5 * (matrix + matrix.T)))
        else:
            eigenvalues = scipy.linalg.eigvalsh(np.asarray(matrix), check_finite=False)
        return [
            (
                int(np.sum(eigenvalues < -t)),
                int(np.sum(np.abs(eigenvalues) <= t)),
                int(np.sum(eigenvalues > t)),
            )
            for t in taus
        ]
    host = np.asarray(matrix)
    work = np.empty_like(host, order="F")
    out = []
    for t in taus:
        below = ldl_inertia(host, -t, work=work)[0]  # eigenvalues < -t
        above = ldl_inertia(host, t, work=work)[2]  # eigenvalues > t
        out.append((below, host.shape[0] - below - above, above))
    return out


# ---------------------------------------------------------------------------------------------
# Lanczos with deflation
# ---------------------------------------------------------------------------------------------


def kw_epsilon(num_products: int, dim: int, failure_prob: float) -> float:
    """Relative error eps with P(extreme Ritz value off by more than eps * spread) at either
    end <= failure_prob after ``num_products`` products beyond the start (Kuczynski &
    Wozniakowski 1992, Thm 4.2(a), union over both ends)."""
    if num_products < 1:
        return math.inf
    root = math.log(2 * KW_CONSTANT * math.sqrt(dim) / failure_prob) / (2 * num_products - 1)
    return root * root


def kw_lower_bound(theta_min, theta_max, num_products: int, dim: int, failure_prob: float):
    """A lower bound on lambda_min holding with probability >= 1 - failure_prob.

    From ``theta_min - lambda_min <= eps s`` and ``lambda_max - theta_max <= eps s`` with
    ``s = lambda_max - lambda_min``: ``s <= (theta_max - theta_min) / (1 - 2 eps)``.
    Returns -inf while ``2 eps >= 1``, and ``theta_min`` itself once the Krylov space is the
    whole space (``num_products + 1 >= dim``: the Ritz values are the eigenvalues).
    """
    if num_products + 1 >= dim:
        return theta_min
    eps = kw_epsilon(num_products, dim, failure_prob)
    if not 2 * eps < 1:
        return -math.inf
    spread = (theta_max - theta_min) / (1 - 2 * eps)
    return theta_min - eps * spread


# Sizes of the leading blocks of T whose eigenproblem the stopping rule solves: the smallest
# one holding the steps taken, so that a check early in a deep run stays cheap.
_CHECK_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def _round_core(
    loss_fn,
    params,
    locked,
    start,
    restart,
    target,
    eta,
    lock_below,
    lock_tol,
    failure_prob,
    *,
    depth,
    keep,
):
    """One Lanczos round on ``(I - Y Y^T) H (I - Y Y^T)`` (Y: the nonzero rows of ``locked``).

    Stops early once the Kuczynski-Wozniakowski bound puts every eigenvalue of the deflated
    operator above ``target + eta`` (nothing more to find), or once every Ritz value below
    ``lock_below`` has converged (residual <= ``lock_tol`` * the largest |Ritz value|: time to
    lock them). Checks run every CHECK_EVERY steps while few steps are taken, then every
    eighth of the block size (each solves the eigenproblem of the smallest block of
    ``_CHECK_SIZES`` that holds the steps taken). Returns the Ritz values, their residual
    bounds, the Ritz vectors of the lowest ``keep`` values and the steps taken.
    """
    matvec, theta0 = hessian.flat_hvp(loss_fn, params)
    num_params = theta0.shape[0]

    def project(v):
        return v - (locked @ v) @ locked

    def deflated(v):
        return project(matvec(project(v)))

    log_term = jnp.log(2 * KW_CONSTANT * jnp.sqrt(float(num_params)) / failure_prob)
    sizes = [s for s in _CHECK_SIZES if s < depth] + [depth]

    def check(size, tri):
        n = tri.num_steps
        leading = krylov.Tridiagonal(
            None, tri.diag[:size], tri.offdiag[: size - 1], tri.residual_norm, n
        )
        theta, _, bounds = krylov.ritz_pairs(leading)
        valid = jnp.arange(size) < n
        root = log_term / (2 * (n - 1) - 1)
        eps = root * root
        top = theta[n - 1]
        spread = (top - theta[0]) / jnp.maximum(1 - 2 * eps, 1e-30)
        floor = jnp.where(2 * eps < 1, theta[0] - eps * spread, -jnp.inf)
        scale = jnp.maximum(jnp.abs(theta[0]), jnp.abs(top))
        below = valid & (theta < lock_below)
        settled = jnp.any(below) & jnp.all(~below | (bounds <= lock_tol * scale))
        return (floor >= target + eta) | settled

    def stop(tri):
        n = tri.num_steps
        branch = jnp.searchsorted(jnp.asarray(sizes), n)
        interval = jnp.maximum(CHECK_EVERY, jnp.asarray(sizes)[branch] // 8)
        branches = [functools.partial(check, s) for s in sizes]
        return jax.lax.cond(
            n % interval == 0,
            lambda: jax.lax.switch(branch, branches, tri),
            lambda: jnp.asarray(False),
        )

    tri = krylov.lanczos_tridiag(
        deflated, project(start), depth, restart_vector=restart, stop=stop, check_every=CHECK_EVERY
    )
    theta, S, bounds = krylov.ritz_pairs(tri)
    vectors = S[:, :keep].T @ tri.basis
    return theta, bounds, vectors, tri.num_steps


_round_jit = jax.jit(_round_core, static_argnums=0, static_argnames=("depth", "keep"))


def _apply_hessian(loss_fn, params, vectors):
    matvec, _ = hessian.flat_hvp(loss_fn, params)
    return jax.lax.map(matvec, vectors)


_apply_hessian_jit = jax.jit(_apply_hessian, static_argnums=0)


@dataclasses.dataclass
class _LanczosState:
    """What deflated Lanczos has found: the locked part and the last round."""

    mu: np.ndarray  # (j,) eigenvalues of M = Y^T H Y, Y the j locked vectors
    eta: float  # ||H Y - Y M||_F (see ``_coupling``)
    theta: np.ndarray | None  # Ritz values of a round on the current deflation (None: none ran)
    last_steps: int
    num_matvecs: int

    @classmethod
    def of(cls, Y, HY, theta, last_steps, num_matvecs) -> _LanczosState:
        M, eta = _coupling(Y, HY) if Y.shape[0] else (np.zeros((0, 0)), 0.0)
        return cls(np.linalg.eigvalsh(M), eta, theta, last_steps, num_matvecs)


def _deflated_lanczos(
    loss_fn, params, key, *, taus, tol, failure_prob, max_matvecs, max_locked
) -> _LanczosState:
    flat, _ = ravel_pytree(params)
    P = flat.shape[0]
    dtype = flat.dtype
    target = -max(taus)  # the stopping rule aims at the largest (most resolvable) threshold
    lock_below = -min(taus)
    Y = np.zeros((0, P), dtype)
    HY = np.zeros((0, P), dtype)
    locked_buffer = jnp.zeros((max_locked, P), dtype)
    used = 0
    # One depth for every round (one compiled program): the budget, within P and within a
    # quarter of the device's memory for the basis.
    room = int(memory.MEMORY_FRACTION * memory.device_memory_bytes("total") // (P * dtype.itemsize))
    depth = max(2, min(P, max_matvecs, room))
    keep = min(depth, max_locked)
    eta = 0.0
    while True:
        key, k_start, k_restart = jax.random.split(key, 3)
        start = jax.random.normal(k_start, (P,), dtype)
        restart = jax.random.normal(k_restart, (P,), dtype)
        theta, bounds, vectors, steps = _round_jit(
            loss_fn,
            params,
            locked_buffer,
            start,
            restart,
            target,
            eta,
            lock_below,
            tol,
            failure_prob,
            depth=depth,
            keep=keep,
        )
        steps = int(steps)
        used += steps
        theta = np.asarray(theta)[:steps]
        bounds = np.asarray(bounds)[:steps]
        vectors = np.asarray(vectors)
        if not np.all(np.isfinite(theta)):
            raise spectrum_lib._non_finite_error("at these parameters")
        scale = max(abs(theta[0]), abs(theta[-1]))
        usable = min(steps, vectors.shape[0])
        candidates = np.flatnonzero(
            (theta[:usable] < lock_below) & (bounds[:usable] <= tol * scale)
        )[: max_locked - Y.shape[0]]
        new = _orthonormal_complement(vectors[candidates], Y)
        if new.shape[0] == 0:  # the round found nothing more: its Ritz values bound the rest
            return _LanczosState.of(Y, HY, theta, steps, used)
        H_new = np.asarray(_apply_hessian_jit(loss_fn, params, jnp.asarray(new)))
        used += new.shape[0]
        Y = np.concatenate([Y, new])
        HY = np.concatenate([HY, H_new])
        locked_buffer = locked_buffer.at[: Y.shape[0]].set(jnp.asarray(Y))
        eta = _coupling(Y, HY)[1]
        if used + 2 > max_matvecs or Y.shape[0] >= max_locked:
            # No round ran on the final deflation: nothing is known of the complement.
            return _LanczosState.of(Y, HY, None, 0, used)


def _orthonormal_complement(vectors: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Orthonormalise rows of ``vectors`` against Y and each other (twice: Kahan-Parlett);
    rows that lose more than half their norm to Y are dropped (already locked)."""
    out = []
    for v in vectors:
        v = v / np.linalg.norm(v)
        basis = np.concatenate([Y, np.asarray(out).reshape(-1, Y.shape[1])])
        w = v
        for _ in range(2):
            w = w - (basis @ w) @ basis
        norm = np.linalg.norm(w)
        if norm > 0.5:
            out.append(w / norm)
    return np.asarray(out, dtype=vectors.dtype).reshape(-1, Y.shape[1])


def _coupling(Y: np.ndarray, HY: np.ndarray) -> tuple[np.ndarray, float]:
    """``M = Y^T H Y`` (symmetrised) and ``eta = ||H Y - Y M||_F``: every eigenvalue of H lies
    within eta of one of ``eig(M)`` joined with those of H on the complement (Weyl)."""
    M = Y @ HY.T
    M = 0.5 * (M + M.T)
    residual = HY - M @ Y
    return M, float(np.linalg.norm(residual))


def _lanczos_bounds(state: _LanczosState, tau: float, P: int, failure_prob: float):
    """``(lo, hi, resolution)`` at threshold tau from a deflated Lanczos state."""
    mu, eta = state.mu, state.eta
    j = mu.shape[0]
    below = int(np.sum(mu < -tau + eta))
    if state.theta is None:  # no round on the final deflation: the complement is unknown
        return int(np.sum(mu < -tau)), min(P, below + P - j), math.inf
    theta = state.theta
    lo = max(
        int(np.sum(mu < -tau)),
        int(np.sum(mu < -tau - eta)) + int(np.sum(theta < -tau - eta)),
    )
    floor = kw_lower_bound(theta[0], theta[-1], state.last_steps - 1, P, failure_prob)
    if floor >= -tau + eta:
        hi = below
    else:
        # Interlacing from the top: at least #{theta >= x} - j eigenvalues of H on the
        # complement are >= x (the deflated operator adds j zeros).
        at_least_above = max(0, int(np.sum(theta >= -tau + eta)) - j)
        hi = below + (P - j) - at_least_above
    eps = 0.0 if state.last_steps >= P else kw_epsilon(state.last_steps - 1, P, failure_prob)
    spread = theta[-1] - theta[0]
    resolution = eta + (eps * spread / (1 - 2 * eps) if 2 * eps < 1 else math.inf)
    return lo, min(hi, P), resolution


# ---------------------------------------------------------------------------------------------
# SLQ bounds
# ---------------------------------------------------------------------------------------------


def _slq_bounds(nodes: np.ndarray, weights: np.ndarray, tau: float, P: int, failure_prob):
    """Certified lower and Hoeffding upper bounds on #{< -tau} from SLQ probes.

    Lower: the most Ritz values below -tau in any probe (Cauchy interlacing). Upper: each
    probe's Chebyshev-Markov-Stieltjes bound ``sum_{theta_i < -tau} w_i + w_next`` lies in
    [0, 1] and bounds that probe's spectral measure below -tau, whose mean over
    Rademacher probes is the true fraction; Hoeffding adds ``sqrt(ln(1/delta) / (2 n))``.
    """
    below = nodes < -tau
    lo = int(np.max(np.sum(below, axis=-1)))
    count_below = np.sum(below, axis=-1)
    m = nodes.shape[-1]
    nxt = np.where(
        count_below < m,
        np.take_along_axis(weights, np.minimum(count_below, m - 1)[:, None], axis=-1)[:, 0],
        0.0,
    )
    upper = np.minimum(np.sum(weights * below, axis=-1) + nxt, 1.0)
    n = nodes.shape[0]
    fraction = float(np.mean(upper)) + math.sqrt(math.log(1 / failure_prob) / (2 * n))
    # Certified from the top end: each probe's Ritz values >= -tau are at most as many as
    # the eigenvalues >= -tau.
    certified_hi = P - int(np.max(np.sum(~below, axis=-1)))
    hi = min(certified_hi, math.floor(P * min(fraction, 1.0)))
    return lo, max(hi, lo)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def dense_fits(num_params: int, itemsize: int) -> bool:
    """The "auto" rule: two P x P matrices within DENSE_MEMORY_FRACTION of the device's total
    memory, and within its free memory."""
    need = 2 * num_params * num_params * itemsize
    total = memory.device_memory_bytes("total")
    return need <= DENSE_MEMORY_FRACTION * total and need <= memory.device_memory_bytes("free")


def _thresholds(zero_tol, relative_tol) -> tuple[list[float], list[float]]:
    def as_list(name, value):
        values = [value] if np.ndim(value) == 0 else list(value)
        if not values:
            raise ValueError(f"{name} must not be empty")
        out = []
        for v in values:
            try:
                f = float(v)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{name} must be numbers, got {v!r}") from err
            if not (math.isfinite(f) and f > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v!r}")
            out.append(f)
        return out

    absolute = [] if zero_tol is None else as_list("zero_tol", zero_tol)
    relative = [] if relative_tol is None else as_list("relative_tol", relative_tol)
    if not absolute and not relative:
        absolute = [DEFAULT_ZERO_TOL]
    return absolute, relative


def _extremes(loss_fn, params, key, num_matvecs):
    """(lambda_min, residual, vector) and (lambda_max, residual) by Lanczos stopped early."""
    k_low, k_high = jax.random.split(key)
    low = spectrum_lib.hessian_eigenpairs(
        loss_fn, params, 1, which="smallest", num_matvecs=num_matvecs, key=k_low
    )
    high = spectrum_lib.hessian_eigenpairs(
        loss_fn, params, 1, which="largest", num_matvecs=num_matvecs, key=k_high
    )
    vector = jax.tree.map(lambda x: x[0], low.eigenvectors)
    return (
        (float(low.eigenvalues[0]), float(low.residual_bounds[0]), vector),
        (float(high.eigenvalues[0]), float(high.residual_bounds[0])),
        int(low.num_matvecs) + int(high.num_matvecs),
    )


def hessian_inertia(
    loss_fn: LossFn,
    params: Params,
    *,
    zero_tol: float | Sequence[float] | None = None,
    relative_tol: float | Sequence[float] | None = None,
    method: str = "auto",
    key: jax.Array | None = None,
    failure_prob: float = DEFAULT_FAILURE_PROB,
    max_matvecs: int = DEFAULT_MAX_MATVECS,
    max_locked: int = DEFAULT_MAX_LOCKED,
    num_probes: int | None = None,
    num_slq_matvecs: int | None = None,
    chunk_size: int | None = None,
    dense_max_params: int | None = None,
) -> Inertia | tuple[Inertia, ...]:
    """The inertia of the Hessian of ``loss_fn`` at ``params``; see the module docstring.

    Args:
      loss_fn: pure JAX function of a parameter pytree returning a scalar.
      params: the point (float leaves; float64 for counts at small tolerances).
      zero_tol: absolute threshold(s) tau (default 1e-5 when ``relative_tol`` is None).
      relative_tol: threshold(s) as a fraction of lambda_max: tau = relative_tol *
        lambda_max (the thresholds matrix-free methods can resolve).
      method: ``"auto"``, ``"dense"``, ``"lanczos"``, ``"slq"`` or ``"lanczos+slq"``
        (Lanczos, then SLQ where Lanczos is not exact; each with half of ``failure_prob``).
      key: PRNG key of the random vectors (default ``key(0)``).
      failure_prob: the probability that an upper bound fails (Lanczos and SLQ).
      max_matvecs: Lanczos: the most Hessian-vector products over all rounds.
      max_locked: Lanczos: the most deflated Ritz pairs (the largest count it can make exact).
      num_probes, num_slq_matvecs: SLQ probes and Krylov depth (defaults of
        :func:`saddlestudy.spectrum.hessian_spectrum`).
      chunk_size: dense: basis vectors per vmapped chunk of the Hessian build (default: the
        memory plan).
      dense_max_params: "auto": a cap on P for the dense method (None: memory decides).

    Returns:
      One :class:`Inertia` for one threshold; a tuple, absolute thresholds first (ascending
      as given), then relative ones, for several. They share one Hessian build (dense) or
      one Lanczos run.

    Raises:
      ValueError: an unknown method, a bad threshold or option, a dense Hessian that does not
        fit in memory, or non-finite Hessian-vector products.
    """
    if method not in INERTIA_METHODS:
        raise ValueError(f"unknown inertia method {method!r}; choose from {INERTIA_METHODS}")
    absolute, relative = _thresholds(zero_tol, relative_tol)
    if not (0 < failure_prob < 1):
        raise ValueError(f"failure_prob must be in (0, 1), got {failure_prob!r}")
    max_matvecs = check_int("max_matvecs", max_matvecs, 2)
    max_locked = check_int("max_locked", max_locked, 1)
    num_params, dtype = spectrum_lib._validate(loss_fn, params)
    itemsize = jnp.dtype(dtype).itemsize
    if method == "auto":
        capped = dense_max_params is not None and num_params > dense_max_params
        method = "lanczos+slq" if capped or not dense_fits(num_params, itemsize) else "dense"
    escalate = method == "lanczos+slq"
    if escalate:
        method = "lanczos"
    elif method == "dense" and not dense_fits(num_params, itemsize):
        need = 2 * num_params**2 * itemsize / 2**30
        raise ValueError(
            f"a dense inertia at P = {num_params} needs about {need:.1f} GiB, more than fits; "
            "use method 'lanczos' or 'slq'"
        )
    if method != "dense" and num_params < 2:
        raise ValueError(f"method {method!r} needs at least 2 parameters, got P = {num_params}")
    key = jax.random.key(0) if key is None else key
    k_extremes, k_method = jax.random.split(key)

    if num_params >= 2:
        cap = min(num_params, EXTREME_MATVECS)
        low, high, extreme_matvecs = _extremes(loss_fn, params, k_extremes, cap)
    else:  # P = 1: the Hessian is its own eigenvalue
        h = float(np.asarray(hessian.dense_hessian(loss_fn, params))[0, 0])
        low, high, extreme_matvecs = (h, 0.0, jax.tree.map(jnp.ones_like, params)), (h, 0.0), 1
    if not (math.isfinite(low[0]) and math.isfinite(high[0])):
        raise spectrum_lib._non_finite_error("at these parameters")
    taus = absolute + [r * high[0] for r in relative]
    if any(not (t > 0) for t in taus):
        raise ValueError(
            f"relative_tol needs lambda_max > 0 to give a positive threshold; lambda_max is "
            f"{high[0]:.3g}"
        )
    common = dict(
        lambda_min=low[0],
        lambda_max=high[0],
        lambda_min_residual=low[1],
        lambda_max_residual=high[1],
        min_eigenvector=low[2],
        num_params=num_params,
    )
    if method == "dense":
        eps = float(jnp.finfo(dtype).eps)
        records = _dense_records(loss_fn, params, num_params, taus, chunk_size, eps)
    else:
        records = _matrix_free_records(
            loss_fn,
            params,
            num_params,
            k_method,
            taus,
            method=method,
            escalate=escalate,
            tol=math.sqrt(float(jnp.finfo(dtype).eps)),
            failure_prob=failure_prob,
            max_matvecs=max_matvecs,
            max_locked=max_locked,
            num_probes=num_probes,
            num_slq_matvecs=num_slq_matvecs,
        )
    relative_of = [None] * len(absolute) + list(relative)
    results = tuple(
        Inertia(
            **{**record, "num_matvecs": record["num_matvecs"] + extreme_matvecs},
            zero_tol=tau,
            relative_tol=rel,
            **common,
        )  # fmt: skip
        for tau, rel, record in zip(taus, relative_of, records)
    )
    return results[0] if len(results) == 1 else results


def _dense_records(loss_fn, params, P, taus, chunk_size, eps) -> list[dict]:
    """Exact counts from the dense Hessian (two P x P matrices of memory)."""
    chunk = chunk_size or memory.plan(loss_fn, params, "dense")[1]
    H = _dense_jit(loss_fn, params, chunk_size=chunk)
    if not bool(jnp.all(jnp.isfinite(H))):
        raise spectrum_lib._non_finite_error("at these parameters")
    resolution = P * eps * float(jnp.linalg.norm(H))
    counts = dense_counts(H, taus)
    del H
    return [
        dict(
            num_negative=neg,
            num_zero=zero,
            num_positive=pos,
            index=neg / P,
            minimum_ratio=pos / P,
            num_negative_lo=neg,
            num_negative_hi=neg,
            exact=True,
            index_sem=0.0,
            index_bias_bound=0.0,
            resolution=resolution,
            num_matvecs=P,
            method="dense",
            failure_prob=0.0,
        )
        for neg, zero, pos in counts
    ]


def _matrix_free_records(
    loss_fn,
    params,
    P,
    key,
    taus,
    *,
    method,
    escalate,
    tol,
    failure_prob,
    max_matvecs,
    max_locked,
    num_probes,
    num_slq_matvecs,
) -> list[dict]:
    """Bounds (and, where they meet, counts) from deflated Lanczos and/or SLQ."""
    bounds = [(0, P, math.inf)] * len(taus)
    used = 0
    # Lanczos then SLQ: each upper bound fails with at most half of failure_prob, so the
    # smaller of the two holds with probability >= 1 - failure_prob (a union bound).
    share = failure_prob / 2 if escalate else failure_prob
    if method == "lanczos":
        state = _deflated_lanczos(
            loss_fn,
            params,
            key,
            taus=taus,
            tol=tol,
            failure_prob=share,
            max_matvecs=max_matvecs,
            max_locked=max_locked,
        )
        bounds = [_lanczos_bounds(state, t, P, share) for t in taus]
        used = state.num_matvecs
    slq = None
    if method == "slq" or (escalate and any(lo != hi for lo, hi, _ in bounds)):
        slq = spectrum_lib.hessian_spectrum(
            loss_fn,
            params,
            method="slq",
            num_probes=num_probes,
            num_matvecs=num_slq_matvecs,
            key=key,
        )
        used += slq.num_probes * slq.num_matvecs
        nodes, weights = np.asarray(slq.eigenvalues), np.asarray(slq.weights)
    name = {"lanczos": "lanczos", "slq": "slq"}[method] + ("+slq" if escalate and slq else "")
    records = []
    for tau, (lo, hi, resolution) in zip(taus, bounds):
        estimate = sem = bias = math.nan
        if slq is not None:
            counted = slq.with_zero_tol(tau)
            s_lo, s_hi = _slq_bounds(nodes, weights, tau, P, share)
            lo, hi = max(lo, s_lo), min(hi, s_hi)
            estimate = float(counted.num_negative)
            sem, bias = float(counted.index_sem), float(counted.index_bias_bound)
            resolution = min(resolution, float(np.ptp(nodes)) / slq.num_matvecs)
        exact = lo == hi
        records.append(
            dict(
                num_negative=int(lo) if exact else estimate,
                num_zero=math.nan,
                num_positive=math.nan,
                index=(lo if exact else estimate) / P,
                minimum_ratio=math.nan,
                num_negative_lo=int(lo),
                num_negative_hi=int(hi),
                exact=bool(exact),
                index_sem=0.0 if exact or slq is None else sem,
                index_bias_bound=0.0 if exact or slq is None else bias,
                resolution=float(resolution),
                num_matvecs=int(used),
                method=name,
                failure_prob=failure_prob,
            )
        )
    return records


def _dense_hessian(loss_fn, params, *, chunk_size):
    return hessian.dense_hessian_chunked(loss_fn, params, chunk_size)


_dense_jit = jax.jit(_dense_hessian, static_argnums=0, static_argnames=("chunk_size",))
