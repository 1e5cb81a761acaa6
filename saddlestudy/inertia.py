"""Hessian inertia: how many eigenvalues lie below -tau, inside [-tau, tau] and above tau.

``hessian_inertia(loss_fn, params, zero_tol=...)`` returns an :class:`Inertia`: the counts,
a **certified** lower bound ``num_negative_lo`` and an upper bound ``num_negative_hi`` on
the number of negative eigenvalues, and ``exact`` when the two meet. Definitions as in
docs/science.md §1 and §6: ``lambda < -tau`` is negative, ``lambda > tau`` positive, the
rest zero; ``tau`` is ``zero_tol`` or ``relative_tol * lambda_max``.

Methods (what each can and cannot count):

- ``"dense"``: exact wherever no eigenvalue lies within the resolution of a threshold, else
  certified bounds. The Hessian is built from P Hessian-vector products in chunks
  (:func:`saddlestudy.hessian.dense_hessian_chunked`), then Sylvester's law of inertia: for
  the Bunch-Kaufman factorisation ``H - sigma I = L D L^T`` (LAPACK ``sytrf``, about P^3 / 3
  flops, blocked) the eigenvalues below / above sigma are as many as the negative / positive
  eigenvalues of the block-diagonal D. The factorisation is exact for a matrix within ``d``
  of H: its backward error (:func:`ldl_backward_error`, with the growth of L and D measured)
  plus the built Hessian's rounding (:func:`hessian_error`), so factorisations at
  ``-tau - d`` and ``-tau + d`` bracket the count (``resolution`` = d), four per threshold;
  two more certify the Ritz values of the extremes. When that costs more than one
  ``eigvalsh`` (``EIGVALSH_PER_SYTRF``, measured), or the Ritz value of lambda_min is not
  converged, one ``eigvalsh`` gives every eigenvalue within its error and so the counts and
  the extremes (:func:`dense_counts`). Memory: two P x P matrices. On an accelerator, where
  no ``sytrf`` exists in JAX, ``eigvalsh`` on the device.
- ``"lanczos"``: Lanczos at the low end with deflation (locking) of converged Ritz pairs and
  an adaptive depth. Rounds of Lanczos with full reorthogonalisation
  (:func:`saddlestudy.krylov.lanczos_tridiag`) on the deflated operator
  ``(I - Y Y^T) H (I - Y Y^T)``, each from a fresh Gaussian start, lock the converged Ritz
  vectors below -tau into Y (so repeated eigenvalues get all their copies), until a round
  finds none and certifies, with probability >= 1 - ``failure_prob``, that the deflated
  operator has no eigenvalue below ``-tau + eta``: the random-start Lanczos bound of
  Kuczynski & Wozniakowski (1992, SIMAX 13, Thm 4.2) applied at both ends of the
  spectrum. A round may stop at any of a fixed set of checkpoints, and at most
  ``MAX_ROUNDS`` rounds run, so ``failure_prob`` is split over rounds x checkpoints (a union
  bound) and the stored ``failure_prob`` is what holds. ``max_matvecs`` caps the rounds and
  the locking (the short run for the Ritz values of the extremes, and SLQ's products, come
  on top; all are counted in ``num_matvecs``). With ``M = Y^T H Y`` and
  ``eta = ||H Y - Y M||_F`` (computed), Weyl's theorem and Cauchy interlacing give

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
  count from the top end. Never exact below P. An upper bound seen below the certified
  lower bound is a detected failure: ``bound_failure``, and the count stays inexact.
- ``"lanczos+slq"``: Lanczos, then SLQ at the thresholds where Lanczos is not exact; the
  result combines both (largest lower bound, smallest upper bound, SLQ's estimate), each
  run with half of ``failure_prob`` so that the upper bound holds with probability
  >= 1 - failure_prob (a union bound).
- ``"auto"``: dense when two P x P matrices fit half the device's memory (P ~ 2.8 * 10^4 in
  float64 on a 24 GiB machine) and P is within ``dense_max_params`` (if given), else
  ``"lanczos+slq"``.

``lambda_min`` / ``lambda_max`` are the extreme eigenvalues, stored only where certified
brackets (``lambda_min_lo`` ... ``lambda_min_hi``) pin them (dense); the Ritz values of a short
Lanczos run are ``ritz_min`` / ``ritz_max`` with residual bounds (an upper / lower bound of
the extremes, never stored as them); ``min_eigenvector`` is the Ritz vector of ``ritz_min``,
shaped like the parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
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
from saddlestudy._checks import check_int, check_loss_and_params, check_number, non_finite_error

Params = Any
LossFn = Callable[[Params], jax.Array]

INERTIA_METHODS = ("auto", "dense", "lanczos", "slq", "lanczos+slq")
DEFAULT_ZERO_TOL = spectrum_lib.DEFAULT_ZERO_TOL
DEFAULT_FAILURE_PROB = 1e-3
DEFAULT_MAX_MATVECS = 3000  # Lanczos: the most products of the rounds and locking (a cap)
DEFAULT_MAX_LOCKED = 256  # Lanczos: the most locked (deflated) Ritz pairs

CHECK_EVERY = 8  # Lanczos: steps between checks of the stopping rule
# Lanczos: the most rounds, the last of which may certify an upper bound; failure_prob is
# split over these rounds times the checkpoints of a round (a union bound: _deflated_lanczos).
MAX_ROUNDS = 64
EXTREME_MATVECS = 200  # cap of the Lanczos run giving the Ritz values of the extremes
# Dense: the relative width to which the extremes are pinned (Ritz values certified by two
# factorisations); wider brackets take the eigvalsh route, which gives them to rounding.
EXTREME_RTOL = 1e-3
# Time of one eigvalsh over one sytrf factorisation of the same matrix on a CPU (measured:
# BENCHMARKS.md, benchmarks/inertia_counts.py): more factorisations than this, one eigvalsh.
EIGVALSH_PER_SYTRF = 9.1
DENSE_MEMORY_FRACTION = 0.5  # "auto": dense when its P x P matrices fit this share of memory
DENSE_COPIES = 2  # dense: P x P matrices held at once (the Hessian, the LDL^T factor)
# Kuczynski & Wozniakowski 1992, Thm 4.2(a): P(relative error >= eps) <= KW * sqrt(n) *
# exp(-(2k - 1) sqrt(eps)) for k products after the start vector.
KW_CONSTANT = 1.648

_log = logging.getLogger(__name__)


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
    "lambda_min_lo",
    "lambda_min_hi",
    "lambda_max_lo",
    "lambda_max_hi",
    "ritz_min",
    "ritz_max",
    "ritz_min_residual",
    "ritz_max_residual",
    "min_eigenvector",
    "resolution",
    "num_matvecs",
    "bound_failure",
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
      lambda_min, lambda_max: the smallest and largest eigenvalues, within the certified
        brackets below (dense); NaN where no bracket is narrow enough to name a value
        (matrix-free methods: a Ritz value is never stored here).
      lambda_min_lo, lambda_min_hi, lambda_max_lo, lambda_max_hi: certified brackets of the
        extremes: ``lambda_min_lo <= lambda_min <= lambda_min_hi``, the same for lambda_max.
        Dense: both ends (see ``resolution``). Matrix-free: the sides a Ritz value certifies
        (``lambda_min_hi = ritz_min``, ``lambda_max_lo = ritz_max``), the others NaN.
      ritz_min, ritz_max: the extreme Ritz values of a short Lanczos run (a Rayleigh quotient:
        ``ritz_min >= lambda_min`` and ``ritz_max <= lambda_max``, but not the extremes).
      ritz_min_residual, ritz_max_residual: their residual bounds: an eigenvalue (not
        necessarily the extreme one) lies that close to each.
      min_eigenvector: unit Ritz vector of ``ritz_min``, shaped like the parameters.
      resolution: the smallest distance from -tau (and +tau) at which the method places an
        eigenvalue on the right side: dense, the backward error ``P eps ||H||_F``; Lanczos,
        ``eta + eps_KW * spread``; SLQ, the spread over the Krylov depth (Chen, Trogdon &
        Ubaru 2021).
      num_matvecs: Hessian-vector products used (dense: P for the build plus the extremes).
      bound_failure: a detected failure of a probabilistic bound (e.g. an SLQ upper bound
        below the certified lower bound): the count is then left inexact.
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
    lambda_min_lo: float
    lambda_min_hi: float
    lambda_max_lo: float
    lambda_max_hi: float
    ritz_min: float
    ritz_max: float
    ritz_min_residual: float
    ritz_max_residual: float
    min_eigenvector: Params
    resolution: float
    num_matvecs: int
    bound_failure: bool
    num_params: int
    zero_tol: float
    relative_tol: float | None
    method: str
    failure_prob: float

    @classmethod
    def from_eigenvalues(
        cls,
        eigenvalues: np.ndarray,
        error: float,
        zero_tols: Sequence[float],
        relative_tols: Sequence[float] = (),
        *,
        method: str = "eigh",
    ) -> tuple[Inertia, ...]:
        """Inertias at each threshold (absolute first) from all P computed eigenvalues, each
        within ``error`` of the true one (:func:`eigenvalue_records`)."""
        P = len(eigenvalues)
        records = eigenvalue_records(eigenvalues, error, zero_tols, relative_tols)
        lam_max = records[0]["lambda_max"]
        nan = math.nan
        return tuple(
            cls(
                **record,
                ritz_min=nan,
                ritz_max=nan,
                ritz_min_residual=nan,
                ritz_max_residual=nan,
                min_eigenvector=None,
                num_matvecs=P,
                num_params=P,
                zero_tol=float(tau),
                relative_tol=rel,
                method=method,
            )  # fmt: skip
            for record, (tau, rel) in zip(
                records,
                [(t, None) for t in zero_tols] + [(c * lam_max, c) for c in relative_tols],
            )
        )

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


def _require_finite(matrix) -> None:
    if not np.all(np.isfinite(matrix)):
        raise ValueError("the matrix has non-finite entries (NaN or inf); no inertia is counted")


def ldl_inertia(matrix: np.ndarray, shift: float, *, work: np.ndarray | None = None):
    """Eigenvalues of a symmetric matrix below, at and above ``shift``: ``(neg, zero, pos)``.

    Factorises ``matrix - shift I = L D L^T`` (LAPACK ``?sytrf``, Bunch-Kaufman pivoting,
    reading the lower triangle) and counts the signs of D's 1 x 1 and 2 x 2 blocks
    (Sylvester's law of inertia). These are the counts of a matrix within
    :func:`ldl_backward_error` of ``matrix - shift I``; near-ties are not resolved here (see
    the module docstring for certified counts). ``work``, a Fortran-ordered array like
    ``matrix``, is overwritten (saves a P x P allocation per call). Non-finite input is
    refused.
    """
    _require_finite(matrix)
    return _factor(matrix, shift, work)[:3]


def _factor(matrix: np.ndarray, shift: float, work: np.ndarray | None):
    """``(neg, zero, pos, backward_error)`` of ``matrix - shift I`` by one ``sytrf``."""
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
    starts = _block_starts(ipiv)
    counts = _block_inertia(ldu, starts)
    return (*counts, ldl_backward_error(matrix, shift, ldu, starts))


def _block_starts(ipiv: np.ndarray) -> np.ndarray:
    """First rows of D's 2 x 2 blocks (lower storage: ipiv[k] = ipiv[k + 1] < 0)."""
    starts = []
    skip = -1
    for k in np.flatnonzero(ipiv < 0):
        if k == skip:
            continue
        starts.append(k)
        skip = k + 1
    return np.asarray(starts, dtype=int)


def _block_inertia(ldu: np.ndarray, starts: np.ndarray) -> tuple[int, int, int]:
    n = ldu.shape[0]
    diag = np.diagonal(ldu)
    two = np.zeros(n, bool)
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


def ldl_backward_error(matrix, shift, ldu, starts) -> float:
    """A bound on ``||E||_2`` where ``L D L^T`` (``sytrf``'s output) is the exact factorisation
    of ``matrix - shift I + E``.

    Bunch-Kaufman is backward stable with a growth factor (Higham, *Accuracy and Stability of
    Numerical Algorithms*, 2nd ed. 2002, Thm 11.3): ``|E| <= p(n) u (|A| + |L| |D| |L|^T)``
    elementwise, with ``A = matrix - shift I``, u the unit roundoff and p a linear polynomial;
    we take ``p(n) u = n eps`` (eps = 2u, generous). Then ``||E||_2 <= ||E||_F <= n eps
    (||A||_F + sum_k ||D_k||_2 ||L_k||_F^2)``, the sum over D's 1 x 1 and 2 x 2 blocks and
    L's matching columns (the triangle inequality over ``|L||D||L|^T = sum_k |L_k||D_k||L_k|^T``).
    The growth of the factorisation enters through ``|D_k|`` and ``||L_k||``, measured here
    (O(n^2) work, no P x P temporary). Row interchanges do not change column norms.
    """
    n = ldu.shape[0]
    eps = float(np.finfo(ldu.dtype).eps)
    diag = np.diagonal(ldu).astype(np.float64)
    # Squared norms of L's columns: the unit diagonal plus the multipliers below it; the
    # (k + 1, k) entry of a 2 x 2 block start belongs to D, not L.
    col_sq = np.ones(n)
    block = 1024
    for j0 in range(0, n, block):
        j1 = min(n, j0 + block)
        part = np.asarray(ldu[j0:, j0:j1], dtype=np.float64) ** 2
        w = j1 - j0
        part[:w] = np.tril(part[:w], -1)  # strictly below the diagonal only
        col_sq[j0:j1] += part.sum(axis=0)
    d_norm = np.abs(diag)
    if starts.size:
        b = np.abs(ldu[starts + 1, starts]).astype(np.float64)
        col_sq[starts] -= b**2
        # ||D_k||_2 of a symmetric 2 x 2 block [[a, b], [b, c]]: its largest |eigenvalue|.
        a, c = diag[starts], diag[starts + 1]
        top = 0.5 * np.abs(a + c) + np.sqrt(0.25 * (a - c) ** 2 + b**2)
        d_norm[starts] = top
        d_norm[starts + 1] = top  # ||D_k|| ||L_k||_F^2: L_k's two columns, each with ||D_k||
    growth = float(np.sum(d_norm * col_sq))
    a_norm = _shifted_frobenius(matrix, shift)
    return n * eps * (a_norm + growth)


def _sum_sq(matrix, block: int = 1024) -> float:
    """``||matrix||_F^2`` in float64, a block of rows at a time (no P x P temporary: the dense
    path's memory plan holds two P x P matrices, not three)."""
    return sum(
        float(np.sum(np.square(matrix[i : i + block], dtype=np.float64)))
        for i in range(0, matrix.shape[0], block)
    )


def _shifted_frobenius(matrix, shift) -> float:
    """``||matrix - shift I||_F`` without a P x P temporary."""
    sq = _sum_sq(matrix)
    trace = float(np.trace(matrix, dtype=np.float64))
    return math.sqrt(max(0.0, sq - 2 * shift * trace + shift * shift * matrix.shape[0]))


def hessian_error(matrix) -> float:
    """An estimate of ``||H_computed - H||_2``, the rounding error of the built Hessian.

    The exact Hessian is symmetric, so the computed matrix's asymmetry is rounding error
    only: ``||H - H^T||_F = ||E - E^T||_F``. For rounding errors of the upper and lower
    triangles that are not correlated, ``||E - E^T||_F ~ sqrt(2) ||E||_F``, and the
    symmetric part that a factorisation or eigensolver sees has ``||sym E||_2 <= ||sym
    E||_F ~ ||E||_F / sqrt(2)``; so the asymmetry overestimates it by about 2. The floor
    ``eps ||H||_F`` (storing each entry rounds it) covers a matrix built exactly symmetric.
    This is an estimate, not a proven bound (a rigorous one would need a running error
    analysis through the network); tests check it against the float64 Hessian of float32 points.
    """
    n = matrix.shape[0]
    eps = float(np.finfo(matrix.dtype).eps)
    asym = 0.0
    block = 1024
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        diff = np.asarray(matrix[i0:i1, :], np.float64) - np.asarray(matrix[:, i0:i1], np.float64).T
        asym += float(np.sum(diff * diff))
    norm = math.sqrt(_sum_sq(matrix))
    return math.sqrt(asym) + eps * norm


def eigenvalue_records(
    eigenvalues: np.ndarray, error: float, taus: Sequence[float], relative: Sequence[float]
) -> list[dict]:
    """Counts, bounds and extremes from computed eigenvalues each within ``error`` of the
    true ones (Weyl: sorted computed and true eigenvalues pair up within ``||E||_2``).

    ``taus`` are absolute thresholds, ``relative`` factors c of tau = c lambda_max (tau is
    then known within ``c error``). At each threshold ``#{w < -tau_hi - error} <= #{lambda <
    -tau} <= #{w < -tau_lo + error}`` (and the same above +tau): exact when the two meet,
    i.e. when no computed eigenvalue lies within the resolution of a threshold.
    """
    w = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    error = float(error)
    lam_min, lam_max = float(w[0]), float(w[-1])
    extremes = dict(
        lambda_min=lam_min,
        lambda_max=lam_max,
        lambda_min_lo=lam_min - error,
        lambda_min_hi=lam_min + error,
        lambda_max_lo=lam_max - error,
        lambda_max_hi=lam_max + error,
    )
    ranges = [(t, t, t) for t in taus] + [
        (c * lam_max, c * (lam_max - error), c * (lam_max + error)) for c in relative
    ]

    def count(x):
        return int(np.searchsorted(w, x, side="left"))  # #{w < x}

    return [
        _count_record(
            w.shape[0],
            nominal=(count(-tau), None) if lo > 0 else None,
            negative=(count(-hi - error), count(-lo + error)) if lo > 0 else None,
            positive=(
                w.shape[0] - int(np.searchsorted(w, hi + error, side="right")),
                w.shape[0] - int(np.searchsorted(w, lo - error, side="right")),
            ),
            resolution=error,
            **extremes,
        )
        for tau, lo, hi in ranges
    ]


def _count_record(P, *, nominal, negative, positive, resolution, **extremes) -> dict:
    """One threshold's record of a dense count from certified brackets of the number of
    eigenvalues below -tau (``negative``) and above tau (``positive``); ``nominal`` the
    computed matrix's counts (an estimate inside the brackets; None: not known).
    ``negative`` None: tau not positive, nothing counted."""
    if negative is None:
        neg_lo, neg_hi, pos_lo, pos_hi = 0, P, 0, P
    else:
        (neg_lo, neg_hi), (pos_lo, pos_hi) = negative, positive
    exact = neg_lo == neg_hi
    exact_pos = exact and pos_lo == pos_hi
    neg = neg_lo if exact else (math.nan if nominal is None else float(nominal[0]))
    pos = pos_lo if exact_pos else math.nan
    return dict(
        num_negative=neg,
        num_zero=P - neg - pos if exact_pos else math.nan,
        num_positive=pos,
        index=neg / P,
        minimum_ratio=pos / P,
        num_negative_lo=int(neg_lo),
        num_negative_hi=int(neg_hi),
        exact=bool(exact),
        index_sem=0.0,
        index_bias_bound=0.0,
        resolution=float(resolution),
        failure_prob=0.0,
        bound_failure=False,
        **extremes,
    )


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


def _check_steps(depth: int) -> tuple[int, ...]:
    """The steps (below ``depth``) at which a round of ``depth`` checks its stopping rule:
    every CHECK_EVERY steps up to the first block size of ``_CHECK_SIZES``, then every eighth
    of the block that holds the step (about four checks per doubling of the depth). Fixed by
    the depth alone, before any random draw: the checkpoints of the union bound."""
    sizes = [s for s in _CHECK_SIZES if s < depth] + [depth]
    steps = []
    for n in range(CHECK_EVERY, depth, CHECK_EVERY):
        size = next(s for s in sizes if s >= n)
        if n % max(CHECK_EVERY, size // 8) == 0:
            steps.append(n)
    return tuple(steps)


def _check_prob(failure_prob: float, depth: int, max_rounds: int) -> float:
    """The failure probability granted to one Kuczynski-Wozniakowski check: ``failure_prob``
    split evenly over ``max_rounds`` rounds times the certificate checkpoints of a round (its
    ``_check_steps`` and its last step), so that a certificate issued at whichever checkpoint
    of whichever round the data pick fails with probability <= ``failure_prob`` in all (a
    union bound)."""
    return failure_prob / (max_rounds * (len(_check_steps(depth)) + 1))


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
    check_prob,
    limit,
    *,
    depth,
    keep,
):
    """One Lanczos round on ``(I - Y Y^T) H (I - Y Y^T)`` (Y: the nonzero rows of ``locked``).

    Runs at most ``limit`` (<= ``depth``; a multiple of CHECK_EVERY when below it) steps, so
    that a round never passes the product budget. Stops early, at one of the steps fixed in
    advance by ``_check_steps(depth)``, once the Kuczynski-Wozniakowski bound with failure
    probability ``check_prob`` (the share of one checkpoint, ``_check_prob``) puts every
    eigenvalue of the deflated operator above ``target + eta`` (nothing more to find), or
    once every Ritz value below ``lock_below`` has converged (residual <= ``lock_tol`` * the
    largest |Ritz value|: time to lock them). So a round ends at one of its certificate
    checkpoints: a step of ``_check_steps(depth)`` below ``limit``, or ``limit``. Each check
    solves the eigenproblem of the smallest block of ``_CHECK_SIZES`` that holds the steps
    taken. Returns the Ritz values, their residual bounds, the Ritz vectors of the lowest
    ``keep`` values and the steps taken.
    """
    matvec, theta0 = hessian.flat_hvp(loss_fn, params)
    num_params = theta0.shape[0]

    def project(v):
        return v - (locked @ v) @ locked

    def deflated(v):
        return project(matvec(project(v)))

    log_term = jnp.log(2 * KW_CONSTANT * jnp.sqrt(float(num_params)) / check_prob)
    sizes = [s for s in _CHECK_SIZES if s < depth] + [depth]
    # 0 is never a step at which ``stop`` is called: a placeholder when there is no check.
    grid = jnp.asarray(_check_steps(depth) or (0,))

    def check(size, tri):
        n = tri.num_steps
        leading = krylov.Tridiagonal(
            None, tri.diag[:size], tri.offdiag[: size - 1], tri.residual_norm, n
        )
        theta, _, bounds = krylov.ritz_pairs(leading)
        valid = jnp.arange(size) < n
        root = log_term / (2 * (n - 1) - 1)  # kw_epsilon(n - 1, P, check_prob)
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
        branches = [functools.partial(check, s) for s in sizes]
        checked = jax.lax.cond(
            jnp.any(n == grid),
            lambda: jax.lax.switch(branch, branches, tri),
            lambda: jnp.asarray(False),
        )
        return checked | (n >= limit)

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
    """What deflated Lanczos has found: the locked part and the last round.

    ``last_steps`` is a certificate checkpoint of the last round (a round ends at one, see
    ``_round_core``), and ``check_prob`` the failure probability granted to each checkpoint
    (``_check_prob``): the Kuczynski-Wozniakowski bound of the last round at ``last_steps``
    with ``check_prob`` is what ``_lanczos_bounds`` may certify.
    """

    mu: np.ndarray  # (j,) eigenvalues of M = Y^T H Y, Y the j locked vectors
    eta: float  # ||H Y - Y M||_F (see ``_coupling``)
    theta: np.ndarray | None  # Ritz values of a round on the current deflation (None: none ran)
    last_steps: int
    num_matvecs: int
    check_prob: float  # the failure probability of one checkpoint's KW bound
    rounds: int = 0  # rounds run

    @classmethod
    def of(cls, Y, HY, theta, last_steps, num_matvecs, check_prob, rounds=0) -> _LanczosState:
        M, eta = _coupling(Y, HY) if Y.shape[0] else (np.zeros((0, 0)), 0.0)
        return cls(np.linalg.eigvalsh(M), eta, theta, last_steps, num_matvecs, check_prob, rounds)


def _deflated_lanczos(
    loss_fn, params, key, *, taus, tol, failure_prob, max_matvecs, max_locked
) -> _LanczosState:
    """Rounds of Lanczos on the deflated operator, locking converged Ritz pairs below -tau.

    Budget: at most ``max_matvecs`` Hessian-vector products in all, counting every round's
    steps and the products of the locked vectors (``H Y``); the extremes that
    :func:`hessian_inertia` computes besides are not part of it. A round runs at most the
    products left (rounded down to a multiple of CHECK_EVERY below the depth), and vectors are
    locked only when their products fit: otherwise the round just run, which ran on the
    current deflation, is the last.

    Failure probability (a union bound): a round may issue its certificate (the
    Kuczynski-Wozniakowski floor) only at a checkpoint fixed before the round starts (the
    steps of ``_check_steps(depth)`` below its step limit, and the limit): at most
    ``len(_check_steps(depth)) + 1`` per round. At most ``min(MAX_ROUNDS, max_locked)``
    rounds run (each round but the last locks at least one vector); after that no
    certificate is issued (the state has no last round: the loose certified upper bound).
    Each round starts from a fresh Gaussian vector, independent of the rounds before, which
    fix the deflated operator and the round's checkpoints: so, given them, the KW bound at
    each checkpoint fails with probability <= ``check_prob``, and a certificate issued at
    whichever checkpoint of whichever round the data pick fails with probability at most
    ``rounds x checkpoints x check_prob = failure_prob``. The same ``check_prob`` serves
    the stopping rule and ``_lanczos_bounds``.
    """
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
    max_rounds = min(MAX_ROUNDS, max_locked)
    check_prob = _check_prob(failure_prob, depth, max_rounds)
    eta = 0.0
    for rounds in range(max_rounds + 1):
        left = max_matvecs - used
        limit = depth if left >= depth else left - left % CHECK_EVERY
        if rounds == max_rounds or limit < 2:
            # No round ran on the final deflation: nothing is known of the complement.
            return _LanczosState.of(Y, HY, None, 0, used, check_prob, rounds)
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
            check_prob,
            limit,
            depth=depth,
            keep=keep,
        )
        steps = int(steps)
        used += steps
        theta = np.asarray(theta)[:steps]
        bounds = np.asarray(bounds)[:steps]
        vectors = np.asarray(vectors)
        if not np.all(np.isfinite(theta)):
            raise non_finite_error("at these parameters")
        scale = max(abs(theta[0]), abs(theta[-1]))
        usable = min(steps, vectors.shape[0])
        candidates = np.flatnonzero(
            (theta[:usable] < lock_below) & (bounds[:usable] <= tol * scale)
        )[: max_locked - Y.shape[0]]
        new = _orthonormal_complement(vectors[candidates], Y)
        if new.shape[0] == 0 or used + new.shape[0] > max_matvecs:
            # The round found nothing more, or locking its finds would pass the budget: the
            # round ran on the current deflation, so its Ritz values bound the rest.
            return _LanczosState.of(Y, HY, theta, steps, used, check_prob, rounds + 1)
        H_new = np.asarray(_apply_hessian_jit(loss_fn, params, jnp.asarray(new)))
        used += new.shape[0]
        Y = np.concatenate([Y, new])
        HY = np.concatenate([HY, H_new])
        locked_buffer = locked_buffer.at[: Y.shape[0]].set(jnp.asarray(Y))
        eta = _coupling(Y, HY)[1]
        if Y.shape[0] >= max_locked:
            # No round ran on the final deflation: nothing is known of the complement.
            return _LanczosState.of(Y, HY, None, 0, used, check_prob, rounds + 1)
    raise AssertionError("unreachable: the loop returns by round max_rounds")


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


def _lanczos_bounds(state: _LanczosState, tau: float, P: int):
    """``(lo, hi, resolution, certified_hi)`` at threshold tau from a deflated Lanczos state.

    ``lo`` and ``certified_hi`` are certain (Weyl and interlacing); ``hi`` may rest on the
    Kuczynski-Wozniakowski bound of the last round at its last step (a certificate
    checkpoint) with the per-checkpoint ``state.check_prob``: by the union bound of
    ``_deflated_lanczos`` it holds with probability >= 1 - failure_prob, failure_prob the
    total that run was given.
    """
    mu, eta = state.mu, state.eta
    j = mu.shape[0]
    below = int(np.sum(mu < -tau + eta))
    if state.theta is None:  # no round on the final deflation: the complement is unknown
        loose = min(P, below + P - j)
        return int(np.sum(mu < -tau)), loose, math.inf, loose
    theta = state.theta
    lo = max(
        int(np.sum(mu < -tau)),
        int(np.sum(mu < -tau - eta)) + int(np.sum(theta < -tau - eta)),
    )
    # Interlacing from the top: at least #{theta >= x} - j eigenvalues of H on the
    # complement are >= x (the deflated operator adds j zeros).
    at_least_above = max(0, int(np.sum(theta >= -tau + eta)) - j)
    loose = min(P, below + (P - j) - at_least_above)
    floor = kw_lower_bound(theta[0], theta[-1], state.last_steps - 1, P, state.check_prob)
    hi = below if floor >= -tau + eta else loose
    # The whole space spanned: the Ritz values are eigenvalues and the floor is certain.
    certified_hi = hi if state.last_steps >= P else loose
    eps = 0.0 if state.last_steps >= P else kw_epsilon(state.last_steps - 1, P, state.check_prob)
    spread = theta[-1] - theta[0]
    resolution = eta + (eps * spread / (1 - 2 * eps) if 2 * eps < 1 else math.inf)
    return lo, min(hi, P), resolution, certified_hi


# ---------------------------------------------------------------------------------------------
# SLQ bounds
# ---------------------------------------------------------------------------------------------


def _slq_bounds(nodes: np.ndarray, weights: np.ndarray, tau: float, P: int, failure_prob):
    """Certified lower and Hoeffding upper bounds on #{< -tau} from SLQ probes.

    Lower: the most Ritz values below -tau in any probe (Cauchy interlacing). Upper: each
    probe's Chebyshev-Markov-Stieltjes bound ``sum_{theta_i < -tau} w_i + w_next`` lies in
    [0, 1] and bounds that probe's spectral measure below -tau, whose mean over
    Rademacher probes is the true fraction; Hoeffding adds ``sqrt(ln(1/delta) / (2 n))``.

    Returns ``(lo, hi, certified_hi, bound_failure)``: ``certified_hi`` is the certain upper
    bound from the top end. When the Hoeffding bound falls below ``lo`` it has failed (it
    does with probability <= failure_prob) and it shows: ``bound_failure`` is True and
    ``hi`` is ``certified_hi``, never a false meeting of the bounds.
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
    if hi < lo:  # the Hoeffding bound failed, detectably
        return lo, certified_hi, certified_hi, True
    return lo, hi, certified_hi, False


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def dense_fits(num_params: int, itemsize: int) -> bool:
    """The "auto" rule: ``DENSE_COPIES`` P x P matrices within DENSE_MEMORY_FRACTION of the
    device's total memory, and within its free memory."""
    need = DENSE_COPIES * num_params * num_params * itemsize
    total = memory.device_memory_bytes("total")
    return need <= DENSE_MEMORY_FRACTION * total and need <= memory.device_memory_bytes("free")


def count_plan(
    num_params: int,
    itemsize: int,
    *,
    method: str = "auto",
    full_spectrum_max_params: int = 0,
    dense_max_params: int | None = None,
) -> str:
    """What counts the eigenvalues of a Hessian with ``num_params`` parameters: the one
    dense-or-not rule, used by the study's cells (``config.spectrum_plan``), a Ray worker's
    own plan and :func:`hessian_inertia`'s ``"auto"``.

    ``"eigh"`` (all P eigenvalues, stored) up to ``full_spectrum_max_params`` and the cap;
    past it ``method`` unless it is ``"auto"``, which is ``"dense"`` (LDL^T) while P is within
    ``dense_max_params`` (None or 0: no cap) and :func:`dense_fits`, else ``"lanczos+slq"``.
    """
    cap = dense_max_params or math.inf
    if num_params <= min(full_spectrum_max_params, cap):
        return "eigh"
    if method != "auto":
        return method
    if num_params <= cap and dense_fits(num_params, itemsize):
        return "dense"
    return "lanczos+slq"


def _thresholds(zero_tols, relative_tols) -> tuple[list[float], list[float]]:
    def as_list(name, values):
        if np.ndim(values) != 1:
            raise ValueError(f"{name} must be a sequence of numbers, got {values!r}")
        return [check_number(name, v) for v in values]

    absolute, relative = as_list("zero_tols", zero_tols), as_list("relative_tols", relative_tols)
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
    zero_tol: float | None = None,
    relative_tol: float | None = None,
    **options: Any,
) -> Inertia:
    """The inertia of the Hessian at one threshold: ``zero_tol`` (tau; the default 1e-5
    when neither is given) or ``relative_tol`` (tau = relative_tol * lambda_max). The options
    are those of :func:`hessian_inertias`, which counts at several thresholds at once.

    Raises:
      ValueError: both thresholds, or a sequence of them (use :func:`hessian_inertias`), and
        everything :func:`hessian_inertias` refuses.
    """
    if zero_tol is not None and relative_tol is not None:
        raise ValueError("hessian_inertia counts at one threshold; use hessian_inertias for "
                         "zero_tol and relative_tol together")  # fmt: skip
    for name, value in (("zero_tol", zero_tol), ("relative_tol", relative_tol)):
        if value is not None and np.ndim(value) != 0:
            raise ValueError(f"hessian_inertia counts at one threshold; {name} = {value!r}: "
                             "use hessian_inertias for several")  # fmt: skip
    zero_tols = () if zero_tol is None else (zero_tol,)
    relative_tols = () if relative_tol is None else (relative_tol,)
    (result,) = hessian_inertias(loss_fn, params, zero_tols=zero_tols,
                                 relative_tols=relative_tols, **options)  # fmt: skip
    return result


def hessian_inertias(
    loss_fn: LossFn,
    params: Params,
    *,
    zero_tols: Sequence[float] = (),
    relative_tols: Sequence[float] = (),
    method: str = "auto",
    key: jax.Array | None = None,
    failure_prob: float = DEFAULT_FAILURE_PROB,
    max_matvecs: int = DEFAULT_MAX_MATVECS,
    max_locked: int = DEFAULT_MAX_LOCKED,
    num_probes: int | None = None,
    num_slq_matvecs: int | None = None,
    chunk_size: int | None = None,
    dense_max_params: int | None = None,
) -> tuple[Inertia, ...]:
    """The inertia of the Hessian of ``loss_fn`` at ``params`` at every threshold; see the
    module docstring.

    Args:
      loss_fn: pure JAX function of a parameter pytree returning a scalar.
      params: the point (float leaves; float64 for counts at small tolerances).
      zero_tols: absolute thresholds tau (``(1e-5,)`` when both lists are empty).
      relative_tols: thresholds as fractions of lambda_max: tau = c * lambda_max (the
        thresholds matrix-free methods can resolve).
      method: ``"auto"``, ``"dense"``, ``"lanczos"``, ``"slq"`` or ``"lanczos+slq"``
        (Lanczos, then SLQ where Lanczos is not exact; each with half of ``failure_prob``).
      key: PRNG key of the random vectors (default ``key(0)``).
      failure_prob: the probability that an upper bound fails (Lanczos and SLQ).
      max_matvecs: Lanczos: the most Hessian-vector products of its rounds and locking (the
        extremes' short run and SLQ come on top).
      max_locked: Lanczos: the most deflated Ritz pairs (the largest count it can make exact).
      num_probes, num_slq_matvecs: SLQ probes and Krylov depth (defaults of
        :func:`saddlestudy.spectrum.hessian_spectrum`).
      chunk_size: dense: basis vectors per vmapped chunk of the Hessian build (default: the
        memory plan).
      dense_max_params: "auto": a cap on P for the dense method (None: memory decides).

    Returns:
      One :class:`Inertia` per threshold, absolute ones first (as given), then relative ones;
      they share one Hessian build (dense) or one Lanczos run.

    Raises:
      ValueError: an unknown method, a bad threshold or option, a dense Hessian that does not
        fit in memory, or non-finite Hessian-vector products.
    """
    if method not in INERTIA_METHODS:
        raise ValueError(f"unknown inertia method {method!r}; choose from {INERTIA_METHODS}")
    absolute, relative = _thresholds(zero_tols, relative_tols)
    if not (0 < failure_prob < 1):
        raise ValueError(f"failure_prob must be in (0, 1), got {failure_prob!r}")
    max_matvecs = check_int("max_matvecs", max_matvecs, 2)
    max_locked = check_int("max_locked", max_locked, 1)
    num_params, dtype = check_loss_and_params(loss_fn, params)
    itemsize = jnp.dtype(dtype).itemsize
    if method == "auto":
        method = count_plan(num_params, itemsize, dense_max_params=dense_max_params)
    escalate = method == "lanczos+slq"
    if escalate:
        method = "lanczos"
    elif method == "dense" and not dense_fits(num_params, itemsize):
        need = DENSE_COPIES * num_params**2 * itemsize / 2**30
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
        raise non_finite_error("at these parameters")
    taus = absolute + [r * high[0] for r in relative]
    if any(not (t > 0) for t in taus):
        raise ValueError(
            f"relative_tol needs lambda_max > 0 to give a positive threshold; lambda_max is "
            f"{high[0]:.3g}"
        )
    common = dict(
        ritz_min=low[0],
        ritz_max=high[0],
        ritz_min_residual=low[1],
        ritz_max_residual=high[1],
        min_eigenvector=low[2],
        num_params=num_params,
    )
    if method == "dense":
        ritz = (low[0], low[1], high[0], high[1])
        records = _dense_records(loss_fn, params, absolute, relative, chunk_size, ritz)
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
            ritz_min=low[0],
            ritz_max=high[0],
        )
    relative_of = [None] * len(absolute) + list(relative)
    if method == "dense":  # relative thresholds at the certified lambda_max
        taus = absolute + [r * records[0]["lambda_max"] for r in relative]
        for record in records:
            record.update(num_matvecs=num_params, method="dense")
    results = tuple(
        Inertia(
            **{**record, "num_matvecs": record["num_matvecs"] + extreme_matvecs},
            zero_tol=tau,
            relative_tol=rel,
            **common,
        )  # fmt: skip
        for tau, rel, record in zip(taus, relative_of, records)
    )
    return results


def _dense_records(loss_fn, params, taus, relative, chunk_size, ritz) -> list[dict]:
    """Certified counts and extremes from the dense Hessian (two P x P matrices of memory)."""
    chunk = chunk_size or memory.plan(loss_fn, params, "dense")[1]
    H = _dense_jit(loss_fn, params, chunk_size=chunk)
    if not bool(jnp.all(jnp.isfinite(H))):
        raise non_finite_error("at these parameters")
    on_device = H.devices().pop().platform != "cpu"
    if on_device:  # no sytrf in JAX: one eigvalsh on the device for every threshold
        error = hessian_error(np.asarray(H))
        eigenvalues = np.asarray(jnp.linalg.eigvalsh(0.5 * (H + H.T)))
        del H
        return eigenvalue_records(eigenvalues, error + _eigh_error(eigenvalues), taus, relative)
    return dense_counts(np.asarray(H), taus, relative, ritz=ritz)


def _eigh_error(eigenvalues: np.ndarray) -> float:
    """The backward error of a symmetric eigensolver: ``n eps ||H||_F`` (``p(n) u`` taken
    generously as ``n eps``; Higham 2002, ch. 11 and Golub & Van Loan, 4th ed., 8.3)."""
    n = eigenvalues.shape[0]
    eps = float(np.finfo(eigenvalues.dtype).eps)
    return n * eps * float(np.linalg.norm(eigenvalues))


def dense_counts(
    matrix: np.ndarray,
    taus: Sequence[float],
    relative: Sequence[float] = (),
    *,
    matrix_error: float | None = None,
    ritz: tuple[float, float, float, float] | None = None,
) -> list[dict]:
    """Certified counts of a symmetric matrix at each threshold, with certified extremes.

    ``taus``: absolute thresholds; ``relative``: factors c of tau = c lambda_max.
    ``matrix_error``: a bound on the distance of ``matrix`` from the matrix meant (default
    :func:`hessian_error`, its asymmetry). ``ritz``: ``(theta_min, residual_min, theta_max,
    residual_max)``, Ritz values of the extremes and their residual bounds, if known.

    Two routes, whichever is cheaper (``EIGVALSH_PER_SYTRF``, measured):

    - **Factorisations** (needs ``ritz``): with ``d`` a bound on every factorisation's
      backward error plus ``matrix_error`` (:func:`ldl_backward_error`, checked after each
      factorisation), the count at shift s is that of a matrix within d, so
      ``c(-tau - d) <= #{lambda < -tau} <= c(-tau + d)`` (and the same above tau): four
      factorisations per threshold. The extremes: a Rayleigh quotient bounds them from
      inside (``lambda_min <= theta_min``); a factorisation at ``theta_min - residual - d``
      with nothing below certifies ``lambda_min >= theta_min - residual - 2d`` (the same at
      the top): two more. When the Ritz values do not pin the extremes to
      ``EXTREME_RTOL`` (Lanczos not converged at the clustered low end), or a
      certification fails, the route below is taken instead, and says so in the log.
    - **One eigvalsh**: every computed eigenvalue is within ``matrix_error + n eps
      ||H||_F`` of a true one (Weyl), which brackets the counts and gives the extremes.

    Returns one record per threshold (absolute first): ``num_negative_lo/hi`` certified,
    ``exact`` where they meet, the extremes' brackets and ``resolution`` (the d used).
    Non-finite input is refused.
    """
    _require_finite(matrix)
    taus, relative = list(taus), list(relative)
    error = hessian_error(matrix) if matrix_error is None else float(matrix_error)
    factorisations = 4 * (len(taus) + len(relative)) + 2
    if ritz is not None and factorisations < EIGVALSH_PER_SYTRF:
        records = _ldl_records(matrix, error, taus, relative, ritz)
        if records is not None:
            return records
    eigenvalues = scipy.linalg.eigvalsh(matrix, check_finite=False)
    return eigenvalue_records(eigenvalues, error + _eigh_error(eigenvalues), taus, relative)


def _ldl_records(matrix, error, taus, relative, ritz) -> list[dict] | None:
    """The factorisation route of :func:`dense_counts`; None where it cannot certify."""
    theta_min, r_min, theta_max, r_max = (float(x) for x in ritz)
    n = matrix.shape[0]
    eps = float(np.finfo(matrix.dtype).eps)
    # A first guess of the factorisations' backward error (sum_k ||D_k|| ||L_k||^2 is about
    # sum |lambda| <= sqrt(n) ||H||_F without growth), doubled once if a factorisation needs more.
    norm = math.sqrt(_sum_sq(matrix))
    d = error + 2 * n * eps * (1 + math.sqrt(n)) * (norm + abs(theta_min) + abs(theta_max))
    work = np.empty_like(matrix, order="F")
    for _ in range(2):
        worst = 0.0

        def factor(shift):
            nonlocal worst
            out = _factor(matrix, shift, work)
            worst = max(worst, out[3] + error)
            return out

        below_min = factor(theta_min - r_min - d)[0]
        above_max = factor(theta_max + r_max + d)[2]
        if below_min or above_max:
            _log.info(f"dense inertia (P = {n}): a Ritz extreme missed an eigenvalue; one eigvalsh")
            return None
        lam_min_hi, lam_max_lo = theta_min + d, theta_max - d
        extremes = dict(
            lambda_min_lo=theta_min - r_min - 2 * d,
            lambda_max_lo=lam_max_lo,
            lambda_max_hi=theta_max + r_max + 2 * d,
        )
        ranges = [(t, t) for t in taus] + [
            (c * lam_max_lo, c * extremes["lambda_max_hi"]) for c in relative
        ]
        brackets = []
        for lo, hi in ranges:
            if not lo > 0:
                brackets.append((None, None))
                continue
            negative = (factor(-hi - d)[0], factor(-lo + d)[0])
            positive = (factor(hi + d)[2], factor(lo - d)[2])
            brackets.append((negative, positive))
            if negative[0] > 0:  # an eigenvalue certainly below -tau
                lam_min_hi = min(lam_min_hi, -hi)
        if worst <= d:
            break
        d = 2 * worst
    else:
        _log.info(f"dense inertia (P = {n}): factorisation growth beyond its bound; one eigvalsh")
        return None
    width = lam_min_hi - extremes["lambda_min_lo"]
    if not (theta_min <= lam_min_hi + d and width <= EXTREME_RTOL * abs(theta_min) + 4 * d):
        _log.info(
            f"dense inertia (P = {n}): the Ritz value of lambda_min is not converged "
            f"(bracket width {width:.2g}); one eigvalsh"
        )
        return None
    extremes.update(
        lambda_min=min(theta_min, lam_min_hi),
        lambda_min_hi=lam_min_hi,
        lambda_max=theta_max,
    )
    records = []
    for negative, positive in brackets:
        records.append(
            _count_record(
                n,
                nominal=None,
                negative=negative,
                positive=positive,
                resolution=d,
                **extremes,
            )  # fmt: skip
        )
    return records


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
    ritz_min,
    ritz_max,
) -> list[dict]:
    """Bounds (and, where they meet, counts) from deflated Lanczos and/or SLQ.

    Each threshold gets ``(lo, hi, resolution, certified_hi)``: lo certified, hi holding with
    probability >= 1 - failure_prob, certified_hi certain. Where the upper bounds fall below
    the lower one (a probabilistic bound failed, and it shows), the record says so
    (``bound_failure``), keeps hi certain (``certified_hi``) and the count inexact.
    """
    bounds = [(0, P, math.inf, P)] * len(taus)
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
        bounds = [_lanczos_bounds(state, t, P) for t in taus]
        used = state.num_matvecs
    slq = None
    if method == "slq" or (escalate and any(b[0] != b[1] for b in bounds)):
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
    for tau, (lo, hi, resolution, certified_hi) in zip(taus, bounds):
        estimate = sem = bias = math.nan
        failure = False
        if slq is not None:
            counted = slq.with_zero_tol(tau)
            s_lo, s_hi, s_certified_hi, failure = _slq_bounds(nodes, weights, tau, P, share)
            lo, hi = max(lo, s_lo), min(hi, s_hi)
            certified_hi = min(certified_hi, s_certified_hi)
            estimate = float(counted.num_negative)
            sem, bias = float(counted.index_sem), float(counted.index_bias_bound)
            resolution = min(resolution, float(np.ptp(nodes)) / slq.num_matvecs)
        if failure or hi < lo:  # a probabilistic upper bound failed, detectably
            failure, hi = True, certified_hi
        exact = lo == hi and not failure
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
                bound_failure=bool(failure),
                # A Ritz value certifies one side of each extreme only.
                lambda_min=math.nan,
                lambda_max=math.nan,
                lambda_min_lo=math.nan,
                lambda_min_hi=ritz_min,
                lambda_max_lo=ritz_max,
                lambda_max_hi=math.nan,
            )
        )
    return records


def _dense_hessian(loss_fn, params, *, chunk_size):
    return hessian.dense_hessian_chunked(loss_fn, params, chunk_size)


_dense_jit = jax.jit(_dense_hessian, static_argnums=0, static_argnames=("chunk_size",))
