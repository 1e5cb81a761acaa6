"""Krylov kernels: Lanczos tridiagonalisation, Ritz pairs and the smoothed spectral density.

The one Lanczos of the package, shared by the spectrum methods
(:mod:`saddlestudy.spectrum`) and the critical-point finders (:mod:`saddlestudy.critical`):

- :func:`lanczos_tridiag`: Lanczos (1950) with full reorthogonalisation (Paige 1976; Parlett,
  *The Symmetric Eigenvalue Problem*, 1998), restarts at a breakdown (an invariant Krylov
  space) and an optional early stop; returns a :class:`Tridiagonal`.
- :func:`ritz_pairs`: the Ritz values, the eigenvectors of T and the residual bound of each
  Ritz pair (Parlett 1998), also of a run stopped early.
- :func:`gaussian_density`: the Gaussian-smoothed spectral measure of stochastic Lanczos
  quadrature (Lin, Saad & Yang 2016, SIAM Review 58).
- :func:`unit`, :func:`fix_sign`: unit vectors and the sign convention of eigenvectors.

All work on flat vectors through a ``matvec`` (a Hessian-vector product in practice), are pure
and jit/vmap-compatible and never jit (the callers jit their outermost call).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Rows of the Lanczos basis per reorthogonalisation block (see ``lanczos_tridiag``).
_REORTH_BLOCK = 16


class Tridiagonal(NamedTuple):
    """The output of :func:`lanczos_tridiag`: ``H Q^T = Q^T T + r e_m^T``.

    Attributes:
      basis: (m, P) orthonormal Lanczos vectors Q, one per row.
      diag: (m,) diagonal of T.
      offdiag: (m - 1,) off-diagonal of T (exactly 0 where an invariant subspace ended and
        the run restarted).
      residual_norm: ``||r||``, the coupling to the next, unbuilt, Lanczos vector.
      num_steps: n <= m, the steps taken (the products used): a run stopped early has
        built only the leading n rows of ``basis`` and the leading n x n block of T; the
        rest is zero, and ``residual_norm`` couples to the (n + 1)-th vector.
    """

    basis: jax.Array
    diag: jax.Array
    offdiag: jax.Array
    residual_norm: jax.Array
    num_steps: jax.Array


def lanczos_tridiag(
    matvec: Callable[[jax.Array], jax.Array],
    v0: jax.Array,
    num_matvecs: int,
    *,
    restart_vector: jax.Array,
    stop: Callable[[Tridiagonal], jax.Array] | None = None,
    check_every: int = 2,
) -> Tridiagonal:
    """Lanczos tridiagonalisation with full reorthogonalisation and breakdown restarts.

    Lanczos (1950) with every new vector orthogonalised against all previous ones by
    classical Gram-Schmidt after the three-term recurrence, with a second pass whenever the
    first cancels more than 1 - 1/sqrt(2) of the vector (Kahan-Parlett "twice is enough";
    Parlett 1998; Giraud, Langou, Rozloznik & van den Eshof 2005; the second pass acts on
    the normalised vector, as in Daniel, Gragg, Kaufman & Stewart 1976), so no ghost
    eigenvalues appear (Paige 1976). When the second pass too removes more than half of the
    vector, the Krylov space is (numerically) invariant: the coupling is set to exactly 0
    and the run continues from a random vector orthogonal to the basis, so repeated
    eigenvalues get their multiplicity and ``num_matvecs == P`` gives all P eigenvalues.
    (matfree 0.6.3's ``decomp.tridiag_sym`` has no such restart: at an exact breakdown it
    returns a non-orthogonal basis and a wrong T, e.g. for the lecture's Hessian started at
    its eigenvector (1, 1).)

    The second pass and the restart are ``lax.cond`` branches, so a step usually streams
    the basis from memory twice; under ``jax.vmap`` they become selects that always run
    (about four times the basis traffic), which is why the spectrum methods map over
    probes and replicas one at a time on a CPU.

    Args:
      matvec: ``v -> H v`` on flat vectors of shape (P,).
      v0: start vector (P,), nonzero; normalised here.
      num_matvecs: m, the number of products and Lanczos vectors, 1 <= m <= P.
      restart_vector: a random vector of shape (P,) (e.g. standard normal), used only at a
        breakdown: restarts continue from it rolled by the step number, orthogonalised.
      stop: optional early stop: called every ``check_every`` steps with the
        :class:`Tridiagonal` built so far, without its basis (``None``; ``num_steps`` = the
        steps taken); the run ends when it returns True, or after ``num_matvecs`` steps.
      check_every: steps between calls of ``stop`` (each costs a small ``eigh``).

    Returns:
      A :class:`Tridiagonal`.
    """
    (num_params,) = v0.shape
    dtype = v0.dtype
    # One random vector rolled by the step number serves every restart: a random draw per
    # step would make the compiled loop much larger (threefry) for a rarely taken branch.
    restart = restart_vector.astype(dtype)

    def orthogonalise(basis, w, rows):
        # Rows not yet written are zero, so projecting on them is exact. Short bases are
        # projected on whole (classical Gram-Schmidt); long ones block by block over the
        # written rows only, so that a run stopped early (or early in a deep run) does not
        # stream the unwritten rows from memory. The last block is clamped inside the basis
        # and may repeat a few rows: a second projection on them is harmless.
        if num_matvecs <= _REORTH_BLOCK:
            return w - (basis @ w) @ basis

        def block(b, w):
            start = jnp.minimum(b * _REORTH_BLOCK, num_matvecs - _REORTH_BLOCK)
            rows_b = jax.lax.dynamic_slice_in_dim(basis, start, _REORTH_BLOCK)
            return w - (rows_b @ w) @ rows_b

        return jax.lax.fori_loop(0, (rows + _REORTH_BLOCK - 1) // _REORTH_BLOCK, block, w)

    def normalise(w):
        norm = jnp.linalg.norm(w)
        return w / jnp.where(norm > 0, norm, 1), norm

    def step(j, carry):
        basis, diag, offdiag, _, q, q_prev, beta_prev = carry
        basis = basis.at[j].set(q)
        w = matvec(q)
        alpha = jnp.vdot(q, w)
        # The local three-term recurrence first (O(P)), so that the full reorthogonalisation,
        # which streams the whole basis from memory, usually needs one pass, not two.
        w = w - alpha * q - beta_prev * q_prev
        w1, beta1 = normalise(orthogonalise(basis, w, j + 1))

        def second_pass():
            # Kahan-Parlett: the first pass cancelled much of w, so its result may still lean
            # on the basis; a pass on the normalised vector fixes that. If this pass too
            # removes more than half, the Krylov space is (numerically) invariant.
            w2, gamma = normalise(orthogonalise(basis, w1, j + 1))
            broke = ~(gamma > 0.5)  # also True for NaN: a NaN run is caught by T's entries

            def restarted():
                r = jnp.roll(restart, j)
                return normalise(orthogonalise(basis, orthogonalise(basis, r, j + 1), j + 1))[0]

            q_next = jax.lax.cond(broke, restarted, lambda: w2)
            return q_next, beta1 * gamma, broke

        def one_pass():
            return w1, beta1, jnp.asarray(False)

        enough = beta1 > jnp.linalg.norm(w) / math.sqrt(2)
        q_next, beta, broke = jax.lax.cond(enough, one_pass, second_pass)
        coupling = jnp.where(broke, jnp.zeros_like(beta), beta)
        diag = diag.at[j].set(alpha)
        offdiag = offdiag.at[j].set(coupling)
        return basis, diag, offdiag, beta, q_next, q, coupling

    v0 = normalise(v0)[0]
    init = (
        jnp.zeros((num_matvecs, num_params), dtype),
        jnp.zeros((num_matvecs,), dtype),
        jnp.zeros((num_matvecs,), dtype),
        jnp.zeros((), dtype),
        v0,
        jnp.zeros_like(v0),
        jnp.zeros((), dtype),
    )

    def built(carry, num_steps, with_basis=True):
        basis, diag, offdiag, residual_norm, *_ = carry
        # offdiag[n - 1] couples to the unbuilt vector n: it is the residual, not part of T.
        offdiag = jnp.where(jnp.arange(num_matvecs) < num_steps - 1, offdiag, 0)
        basis = basis if with_basis else None  # ``stop`` gets T only: no (m, P) operand
        return Tridiagonal(basis, diag, offdiag[:-1], residual_norm, num_steps)

    if stop is None:
        carry = jax.lax.fori_loop(0, num_matvecs, step, init)
        return built(carry, jnp.asarray(num_matvecs))

    def body(state):
        j, _, carry = state
        carry = step(j, carry)
        j = j + 1
        due = (j % check_every == 0) & (j < num_matvecs)
        tri = built(carry, j, with_basis=False)
        done = jax.lax.cond(due, lambda: jnp.asarray(stop(tri)), lambda: False)
        return j, done | (j >= num_matvecs), carry

    num_steps, _, carry = jax.lax.while_loop(
        lambda state: ~state[1], body, (jnp.asarray(0), jnp.asarray(False), init)
    )
    return built(carry, num_steps)


def ritz_pairs(tridiagonal: Tridiagonal) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Ritz values, the eigenvectors S of T, and residual bounds ``|beta_n S[n-1, i]|``.

    Returns ``(theta, S, bounds)``: theta (m,) with the n = ``num_steps`` Ritz values of
    the built block first, ascending (the m - n entries after them belong to the unbuilt
    rows and mean nothing), S (m, m) with the eigenvector of ``theta[i]`` in column i (Ritz
    vector ``S[:, i] @ basis``), bounds (m,) the residual norms
    ``||H y_i - theta_i y_i||`` (Parlett, *The Symmetric Eigenvalue Problem*, 1998).
    """
    d, e = tridiagonal.diag, tridiagonal.offdiag
    (m,) = d.shape
    n = tridiagonal.num_steps
    # Unbuilt rows get a diagonal below every eigenvalue of the built block (Gershgorin), so
    # that, decoupled from it, they sort first; rolling them to the end leaves the block's
    # Ritz values first and in order. (With n = m this is the plain eigh of T.)
    built = jnp.arange(m) < n
    radius = jnp.abs(jnp.pad(e, (1, 0))) + jnp.abs(jnp.pad(e, (0, 1)))
    low = jnp.min(jnp.where(built, d - radius, jnp.inf))
    high = jnp.max(jnp.where(built, d + radius, -jnp.inf))
    d = jnp.where(built, d, low - jnp.maximum(high - low, jnp.abs(low)) - 1)
    T = jnp.diag(d) + jnp.diag(e, 1) + jnp.diag(e, -1)
    finite = jnp.all(jnp.isfinite(T))
    theta, S = jnp.linalg.eigh(jnp.where(finite, T, jnp.zeros_like(T)))
    theta, S = jnp.roll(theta, n - m), jnp.roll(S, n - m, axis=1)
    theta = jnp.where(finite, theta, jnp.nan)
    bounds = jnp.abs(tridiagonal.residual_norm * S[n - 1, :])
    return theta, S, bounds


def gaussian_density(
    grid: jax.Array, nodes: jax.Array, width: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """Gaussian-smoothed spectral density on ``grid`` (integrates to 1).

    ``phi(t) = sum_i w_i N(t; nodes_i, width^2)`` with the weights normalised to sum 1:
    SLQ nodes and weights of shape (num_probes, m) (each probe's weights sum to 1), or
    exact eigenvalues with ``weights=None`` (uniform), to compare with SLQ's density.
    Lin, Saad & Yang 2016 (the Gaussian regularisation of the spectral measure).
    """
    nodes = jnp.reshape(nodes, (-1,))
    if weights is None:
        weights = jnp.ones_like(nodes)
    weights = jnp.reshape(weights, (-1,))
    weights = weights / jnp.sum(weights)
    z = (grid[:, None] - nodes[None, :]) / width
    kernel = jnp.exp(-0.5 * z**2) / (width * jnp.sqrt(2 * jnp.pi).astype(nodes.dtype))
    return kernel @ weights


def unit(v: jax.Array) -> jax.Array:
    """``v / |v|``."""
    return v / jnp.linalg.norm(v)


def fix_sign(v: jax.Array) -> jax.Array:
    """``v`` or ``-v``, whichever has its largest-magnitude entry positive."""
    return v * jnp.where(v[jnp.argmax(jnp.abs(v))] < 0, -1.0, 1.0).astype(v.dtype)
