"""Matrix-free symmetric linear algebra for critical-point finding: MINRES-QLP.

It works on flat vectors through a ``matvec`` (a Hessian-vector product in practice), is pure
and jit/vmap-compatible (``lax.while_loop``) and never jits.

- :func:`minres_qlp` solves a symmetric, possibly indefinite or singular system
  ``(A - shift I) x = b``; on singular systems it returns the minimum-length least-squares
  solution (the pseudoinverse solution), which plain MINRES does not (Choi, Paige & Saunders,
  "MINRES-QLP: a Krylov subspace method for indefinite or singular symmetric systems", SIAM J.
  Sci. Comput. 33, 2011; Choi & Saunders, ACM TOMS 40, 2014, Algorithm 937).

The package's Lanczos (eigenvalues, Ritz pairs) is :func:`saddlestudy.krylov.lanczos_tridiag`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

MatVec = Callable[[jax.Array], jax.Array]

# Termination flags of minres_qlp, numbered as in Choi & Saunders' minresQLP.m.
FLAG_RUNNING = -2
FLAGS = {
    0: "b = 0: the solution is x = 0",
    1: "x solves the (possibly singular) compatible system: relres <= rtol",
    2: "x is the minimum-length least-squares solution: relAres <= rtol",
    3: "x solves the compatible system to machine precision",
    4: "x is the minimum-length least-squares solution to machine precision",
    6: "|x| would exceed maxxnorm: the last QLP component is dropped",
    7: "the condition estimate exceeded acondlim",
    8: "maxiter iterations were performed",
    9: "the Krylov subspace is exhausted and the projected system is singular",
    10: "|A r| fell below artol |A b|: an inexact least-squares solution (a forcing term)",
    11: "|x| reached the trust radius: x is the point on the last segment with that norm",
}


class MinresQLPInfo(NamedTuple):
    """Diagnostics of :func:`minres_qlp` (scalars; under ``vmap`` one per system).

    Attributes:
      flag: termination reason, a key of :data:`FLAGS`.
      iterations: Lanczos steps (matrix-vector products, not counting the two final ones).
      rnorm: ``|b - (A - shift I) x|``, recomputed explicitly at the end.
      arnorm: ``|(A - shift I) r|``, recomputed explicitly at the end.
      anorm: ``|T_k|_F``, the Frobenius norm of the Lanczos projection: a lower bound on
        ``|A - shift I|_F`` (the norm in the relative residuals below).
      acond: estimate of the 2-norm condition number from the LQ factor.
      xnorm: ``|x|``.
      relres: ``rnorm / (anorm |x| + |b|)``, the compatible-system residual.
      relares: ``arnorm / (anorm rnorm)``, the least-squares residual (0 when rnorm = 0).
    """

    flag: jax.Array
    iterations: jax.Array
    rnorm: jax.Array
    arnorm: jax.Array
    anorm: jax.Array
    acond: jax.Array
    xnorm: jax.Array
    relres: jax.Array
    relares: jax.Array


def sym_givens(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Stable reflection ``[c s; s -c] [a; b] = [r; 0]`` with ``r >= 0`` (SymGivens of Choi).

    For ``a = b = 0`` it returns ``(0, 1, 0)``: then ``c * zeta = 0`` and the right-hand side
    is carried on unchanged, so a zero column of the tridiagonal factor leaves the residual
    estimate where it was instead of claiming it vanished.
    """
    abs_a, abs_b = jnp.abs(a), jnp.abs(b)
    one = jnp.ones_like(a)
    sign_a = jnp.where(a < 0, -one, one)
    sign_b = jnp.where(b < 0, -one, one)
    safe_a = jnp.where(a == 0, one, a)
    safe_b = jnp.where(b == 0, one, b)
    # |b| > |a|: t = a / b
    t1 = a / safe_b
    s1 = sign_b / jnp.sqrt(1 + t1 * t1)
    c1, r1 = s1 * t1, b / s1
    # |a| >= |b|: t = b / a
    t2 = b / safe_a
    c2 = sign_a / jnp.sqrt(1 + t2 * t2)
    s2, r2 = c2 * t2, a / c2
    big_b = abs_b > abs_a
    c = jnp.where(big_b, c1, c2)
    s = jnp.where(big_b, s1, s2)
    r = jnp.where(big_b, r1, r2)
    both_zero = (a == 0) & (b == 0)
    c = jnp.where(both_zero, jnp.zeros_like(a), c)
    s = jnp.where(both_zero, one, s)
    r = jnp.where(both_zero, jnp.zeros_like(a), r)
    return c, s, r


def safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den`` where ``den != 0``, else 0 (no inf/NaN even in unselected branches)."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, jnp.ones_like(den)), jnp.zeros_like(num))


class _QLPState(NamedTuple):
    """The loop state of :func:`minres_qlp` at iteration k (names as in Choi, Paige & Saunders
    2011 and ``minresQLP.m``; ``_km1`` = k-1, ``_km2`` = k-2)."""

    k: jax.Array
    flag: jax.Array
    v_prev: jax.Array  # Lanczos vectors v_{k-1}, v_k and the coupling beta_k
    v: jax.Array
    beta: jax.Array
    c_km2: jax.Array  # left reflections Q_{k-2}, Q_{k-1}
    s_km2: jax.Array
    c_km1: jax.Array
    s_km1: jax.Array
    zetabar: jax.Array
    xi_km1: jax.Array
    tau_km1: jax.Array
    tau_k: jax.Array
    mubis_km2: jax.Array
    psibar_km2: jax.Array
    mubar_km1: jax.Array
    w_km1: jax.Array  # pending directions w_{k-1}, w_k
    w_k: jax.Array
    x: jax.Array  # committed part: sum of tau_j w_j for j <= k-2
    anorm2: jax.Array
    arnorm0: jax.Array
    mumin: jax.Array
    mumax: jax.Array
    exclude_last: jax.Array


def minres_qlp(
    matvec: MatVec,
    b: jax.Array,
    *,
    shift: float | jax.Array = 0.0,
    rtol: float = 1e-10,
    artol: float | jax.Array = 0.0,
    btol: float | jax.Array = 0.0,
    maxiter: int | jax.Array | None = None,
    maxxnorm: float = 1e7,
    acondlim: float = 1e15,
    trust_radius: float | jax.Array = jnp.inf,
) -> tuple[jax.Array, MinresQLPInfo]:
    """Minimum-length solution of the symmetric system ``(A - shift I) x = b``, matrix-free.

    MINRES-QLP (Choi, Paige & Saunders 2011): MINRES's Lanczos recurrence and QR factorisation
    of the tridiagonal ``T_{k+1,k}``, followed by an LQ factorisation ``R_k = L_k P_k`` that
    reveals (near-)singularity, so that the iterates converge to the pseudoinverse solution
    ``pinv(A - shift I) b`` on singular, incompatible systems as well. Every iteration here is a
    QLP iteration (the authors' ``TranCond = 1``): the plain-MINRES phase only saves a few
    vector operations, and a Hessian-vector product dominates the cost.

    Stops at the first of (flags as in the authors' ``minresQLP.m``): ``relres =
    |r_k| / (|A| |x_k| + |b|) <= rtol`` (1, compatible system solved); ``relAres =
    |A r_{k-1}| / (|A| |r_{k-1}|) <= rtol`` (2, least-squares solution); the same at machine
    precision (3, 4); ``|x|`` would exceed ``maxxnorm`` (6); the condition estimate exceeds
    ``acondlim`` (7); ``maxiter`` (8); Lanczos breakdown on a singular projection (9); and the
    optional ``artol`` (10) and ``trust_radius`` (11) tests. On 6, 7 and 9 the last QLP
    component is dropped (``tau_k = 0``, as ``u = 0`` in ``minresQLP.m``): the truncation that
    keeps x bounded and makes it the minimum-length solution of a singular system. ``|A|`` is
    the Frobenius norm of the Lanczos tridiagonal, a lower bound on ``|A|_F`` (Frye et al. 2021
    measure their residual ratios in the Frobenius norm).

    Args:
      matvec: ``v -> A v`` on vectors shaped like ``b``; ``A`` must be symmetric.
      b: right-hand side, shape (n,), float.
      shift: solve with ``A - shift I`` (scipy's convention); may be a traced scalar.
      rtol: relative tolerance of both residual tests.
      artol: stop once ``|A r_{k-1}| <= artol |A b|`` (flag 10): the least-squares residual
        of the normal equations reduced by ``artol``, the inexactness test of an inexact
        Newton-MR step (Roosta et al. 2022); 0 switches it off.
      btol: also stop (flag 1) once ``|r_k| <= btol |b|``: the forcing term of an inexact
        Newton method (Eisenstat & Walker 1996); 0 switches it off; may be traced.
      maxiter: Lanczos steps at most (default ``2 n``: in floating point the Lanczos vectors
        lose orthogonality, so n steps need not suffice); may be a traced integer, e.g. 0 to
        switch a solve off inside a batched loop.
      maxxnorm: bound on ``|x|``: a larger iterate is treated as a sign of (numerical)
        singularity, and its last QLP component is dropped.
      acondlim: bound on the condition estimate.
      trust_radius: a bound on ``|x|`` for trust-region use (Steihaug's truncated CG with
        MINRES's iterates, whose norms grow monotonically until nonpositive curvature is met,
        Liu & Roosta 2022): once an iterate reaches it, x is the point of norm
        ``trust_radius`` on the segment from the previous iterate (flag 11); may be traced.

    Returns:
      ``(x, info)``: the solution, shape (n,), and a :class:`MinresQLPInfo` whose residual
      norms are recomputed with two extra ``matvec`` calls (the recurrences can drift).
    """
    b = jnp.asarray(b)
    if b.ndim != 1:
        raise ValueError(f"minres_qlp needs a 1-D right-hand side, got shape {b.shape}")
    dtype = b.dtype
    n = b.shape[0]
    if maxiter is None:
        maxiter = 2 * n
    eps = jnp.finfo(dtype).eps
    tiny = jnp.finfo(dtype).tiny
    shift = jnp.asarray(shift, dtype)
    rtol_eff = jnp.maximum(jnp.asarray(rtol, dtype), eps)
    artol = jnp.asarray(artol, dtype)
    btol = jnp.asarray(btol, dtype)
    radius = jnp.asarray(trust_radius, dtype)

    def op(v):
        return matvec(v) - shift * v

    zero = jnp.zeros((), dtype)
    beta1 = jnp.linalg.norm(b)
    zeros_n = jnp.zeros_like(b)
    state = _QLPState(
        k=jnp.zeros((), jnp.int32),
        flag=jnp.where(beta1 == 0, 0, FLAG_RUNNING).astype(jnp.int32),
        v_prev=zeros_n,
        v=safe_div(b, beta1),
        beta=beta1,  # beta_k: the coupling of v_k to v_{k-1} (beta_1 = |b|)
        # Previous left reflections Q_{k-2}, Q_{k-1}; (c, s) = (-1, 0) makes the first two
        # iterations special cases of the general recurrence.
        c_km2=-jnp.ones((), dtype),
        s_km2=zero,
        c_km1=-jnp.ones((), dtype),
        s_km1=zero,
        zetabar=beta1,
        xi_km1=zero,
        tau_km1=zero,
        tau_k=zero,
        mubis_km2=zero,
        psibar_km2=zero,
        mubar_km1=zero,
        w_km1=zeros_n,
        w_k=zeros_n,
        x=zeros_n,  # committed part: sum of tau_j w_j for j <= k-2
        anorm2=zero,
        arnorm0=zero,
        mumin=zero,
        mumax=zero,
        exclude_last=jnp.array(False),
    )

    def cond(s):
        return s.flag == FLAG_RUNNING

    def body(s):
        k = s.k + 1
        first, second = k == 1, k == 2
        # Lanczos: beta_{k+1} v_{k+1} = A v_k - alpha_k v_k - beta_k v_{k-1}.
        p = op(s.v) - s.beta * s.v_prev
        alpha = jnp.vdot(s.v, p)
        p = p - alpha * s.v
        beta_next = jnp.linalg.norm(p)
        # Breakdown threshold eps^(3/4) |A|, as Choi & Saunders' btol.
        breakdown = beta_next <= eps**0.75 * jnp.maximum(jnp.sqrt(s.anorm2 + alpha**2), tiny)
        v_next = jnp.where(breakdown, zeros_n, safe_div(p, beta_next))
        beta_next = jnp.where(breakdown, zero, beta_next)
        anorm2 = (
            s.anorm2 + alpha * alpha + beta_next * beta_next
            + jnp.where(first, zero, s.beta * s.beta)
        )  # fmt: skip

        # Previous left reflections on the new column of T: eps_{k-2}, gammabar_{k-1}, ...
        eps_km2 = s.s_km2 * s.beta
        gammabar_km1 = -s.c_km2 * s.beta
        gamma_km1 = s.c_km1 * gammabar_km1 + s.s_km1 * alpha
        lambdabar = s.s_km1 * gammabar_km1 - s.c_km1 * alpha
        # Current left reflection Q_k annihilates beta_{k+1}.
        c_k, s_k, lam = sym_givens(lambdabar, beta_next)
        zeta = c_k * s.zetabar
        zetabar_next = s_k * s.zetabar

        # Right reflections: the LQ factorisation R_k = L_k P_k (k = 2 and k >= 3 differ).
        cp2, sp2, mubis2 = sym_givens(s.mubar_km1, gamma_km1)
        cp3, sp3, mu_km2 = sym_givens(s.mubis_km2, eps_km2)
        psi_km2 = cp3 * s.psibar_km2 + sp3 * gamma_km1
        theta = sp3 * s.psibar_km2 - cp3 * gamma_km1
        rho_km2 = sp3 * lam
        eta = -cp3 * lam
        cd3, sd3, mubis3 = sym_givens(s.mubar_km1, theta)
        mubis_km1 = jnp.where(second, mubis2, mubis3)
        psibar_km1 = jnp.where(second, sp2 * lam, sd3 * eta)
        mubar = jnp.where(first, lam, jnp.where(second, -cp2 * lam, -cd3 * eta))

        # Forward substitution L_k t_k = z_k for the last three entries of t_k.
        tau_km2 = safe_div(s.tau_km1 * s.mubis_km2, mu_km2)  # k >= 3
        tau_km1_3 = safe_div(s.xi_km1 - psi_km2 * tau_km2, mubis_km1)
        xi_3 = zeta - rho_km2 * tau_km2
        tau_km1_2 = safe_div(s.tau_k * s.mubar_km1, mubis_km1)
        tau_km1 = jnp.where(second, tau_km1_2, tau_km1_3)
        xi = jnp.where(first | second, zeta, xi_3)
        singular = mubar == 0
        tau_k = safe_div(xi - jnp.where(first, zero, psibar_km1 * tau_km1), mubar)

        # Directions W_k = V_k P_k^T: w_{k-2} is final and enters x; w_{k-1}, w_k are pending.
        v = s.v
        x = jnp.where(k >= 3, s.x + tau_km2 * (cp3 * s.w_km1 + sp3 * v), s.x)
        w_aux = sp3 * s.w_km1 - cp3 * v
        w_km1_3 = cd3 * s.w_k + sd3 * w_aux
        w_k_3 = sd3 * s.w_k - cd3 * w_aux
        w_km1_2 = cp2 * s.w_k + sp2 * v
        w_k_2 = sp2 * s.w_k - cp2 * v
        w_km1 = jnp.where(first, s.w_km1, jnp.where(second, w_km1_2, w_km1_3))
        w_k = jnp.where(first, v, jnp.where(second, w_k_2, w_k_3))

        # Norm and condition estimates.
        anorm = jnp.sqrt(anorm2)
        rnorm = jnp.abs(zetabar_next)  # |r_k|
        rnorm_prev = jnp.abs(s.zetabar)  # |r_{k-1}|
        # |A r_{k-1}| / |r_{k-1}| = sqrt(lambdabar_k^2 + (c_{k-1} beta_{k+1})^2).
        root = jnp.sqrt(lambdabar * lambdabar + (s.c_km1 * beta_next) ** 2)
        abs_mubar = jnp.abs(mubar)
        mus = jnp.stack([
            abs_mubar,
            jnp.where(first, abs_mubar, mubis_km1),
            jnp.where(k >= 3, mu_km2, abs_mubar),
        ])  # fmt: skip
        mumax = jnp.where(first, abs_mubar, jnp.maximum(s.mumax, jnp.max(mus)))
        mumin = jnp.where(first, abs_mubar, jnp.minimum(s.mumin, jnp.min(mus)))
        acond = safe_div(mumax, mumin)
        acond = jnp.where(mumin == 0, jnp.inf, acond)

        x_k = x + tau_km1 * w_km1 + tau_k * w_k
        xnorm = jnp.linalg.norm(x_k)
        relres = rnorm / (anorm * xnorm + beta1)
        relares_prev = safe_div(root, anorm)
        arnorm_prev = rnorm_prev * root
        arnorm0 = jnp.where(first, arnorm_prev, s.arnorm0)  # |A r_0| = |A b|

        # Stopping tests; later assignments take precedence (as in minresQLP.m).
        flag = jnp.full((), FLAG_RUNNING, jnp.int32)
        flag = jnp.where(k >= maxiter, 8, flag)
        flag = jnp.where(breakdown, 9, flag)
        flag = jnp.where(acond >= acondlim, 7, flag)
        flag = jnp.where(arnorm_prev <= artol * arnorm0, 10, flag)
        flag = jnp.where(1 + relares_prev <= 1, 4, flag)
        flag = jnp.where(1 + relres <= 1, 3, flag)
        flag = jnp.where(relares_prev <= rtol_eff, 2, flag)
        flag = jnp.where(relres <= rtol_eff, 1, flag)
        flag = jnp.where(rnorm <= btol * beta1, 1, flag)
        flag = jnp.where(singular & (flag == 1), 9, flag)
        # A huge iterate makes relres small without solving anything (and is the sign of a
        # singular system): the norm bound overrides every other test (as in minresQLP.m).
        flag = jnp.where(xnorm >= maxxnorm, 6, flag)
        flag = jnp.where((xnorm >= radius) & (xnorm < maxxnorm), 11, flag)
        # Flags 6, 7, 9 (and an exactly singular L_k) drop the last component, tau_k = 0: the
        # QLP truncation that keeps x of bounded norm and gives the minimum-length solution
        # when the projected system is (numerically) singular (u = 0 in minresQLP.m).
        exclude_last = (flag == 6) | (flag == 7) | (flag == 9) | singular

        return _QLPState(
            k=k,
            flag=flag.astype(jnp.int32),
            v_prev=v,
            v=v_next,
            beta=beta_next,
            c_km2=s.c_km1,
            s_km2=s.s_km1,
            c_km1=c_k,
            s_km1=s_k,
            zetabar=zetabar_next,
            xi_km1=xi,
            tau_km1=tau_km1,
            tau_k=tau_k,
            mubis_km2=mubis_km1,
            psibar_km2=psibar_km1,
            mubar_km1=mubar,
            w_km1=w_km1,
            w_k=w_k,
            x=x,
            anorm2=anorm2,
            arnorm0=arnorm0,
            mumin=mumin,
            mumax=mumax,
            exclude_last=exclude_last,
        )

    # maxiter = 0 (a switched-off solve) returns x = 0 without a single matvec.
    state = state._replace(
        flag=jnp.where(
            (state.flag == FLAG_RUNNING) & (jnp.asarray(maxiter) <= 0), 8, state.flag
        ).astype(jnp.int32)
    )
    s = lax.while_loop(cond, body, state)

    x = s.x + s.tau_km1 * s.w_km1
    d = s.tau_k * s.w_k
    # On the trust boundary: the t in [0, 1] with |x + t d| = radius (a quadratic in t).
    dd, xd, xx = jnp.vdot(d, d), jnp.vdot(x, d), jnp.vdot(x, x)
    disc = jnp.maximum(xd * xd + dd * (radius * radius - xx), 0.0)
    t = jnp.clip(safe_div(-xd + jnp.sqrt(disc), dd), 0.0, 1.0)
    on_boundary = x + t * d
    on_boundary = on_boundary * jnp.minimum(1.0, safe_div(radius, jnp.linalg.norm(on_boundary)))
    x = jnp.where(s.exclude_last, x, x + d)
    x = jnp.where(s.flag == 11, on_boundary, x)
    r = b - op(x)
    ar = op(r)
    rnorm = jnp.linalg.norm(r)
    arnorm = jnp.linalg.norm(ar)
    anorm = jnp.sqrt(s.anorm2)
    xnorm = jnp.linalg.norm(x)
    acond = jnp.where(s.mumin == 0, jnp.inf, safe_div(s.mumax, s.mumin))
    info = MinresQLPInfo(
        flag=s.flag,
        iterations=s.k,
        rnorm=rnorm,
        arnorm=arnorm,
        anorm=anorm,
        acond=acond,
        xnorm=xnorm,
        relres=safe_div(rnorm, anorm * xnorm + beta1),
        relares=safe_div(arnorm, anorm * rnorm),
    )
    return x, info
