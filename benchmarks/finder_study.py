"""Which critical-point finder reaches |grad L|^2 < 1e-10 from census training end points?

    python benchmarks/finder_study.py --depth 1 --width 6 --replicas 8 \
        --methods newton_mr:100 newton_mr:500 lm_cg:500 nmr_npc:500 --l2 0 1e-8 \
        [--train-steps 2000] [--start adam|lbfgs] [--diagnose] [--out /tmp/finder_study/x.jsonl]

The problem is the census's (experiments/census.toml): MNIST-1D, 512 training samples (640
generated, the package's 80/20 split), 40 inputs, tanh MLP of the given depth and width with
biases, 10 outputs, squared error on one-hot targets (``losses.make_loss_fn(..., loss="mse")``),
float64. R replicas are initialised as the sweep does (``pipeline.replica_init_key``: the key
folded from the study seed, the data entry and the architecture) and trained full batch by
Adam (lr 0.01) for ``--train-steps`` steps (census: 2,000), optionally followed by L-BFGS
(optax.lbfgs) on the loss down to |grad L|^2 <= ``--lbfgs-tol`` (``--start lbfgs``). Trained
starts are cached under /tmp/finder_study/starts_*.npz.

From the same starts every finder in ``--methods`` (``name:max_iters``) runs, for every
``--l2`` (the loss then is ``L + l2 |theta|^2``, so the Hessian shifts by ``2 l2`` and critical
points lie at finite distance; ``2 l2`` should be far below the census's zero threshold 1e-5):

- ``newton_mr``: the package's finder (``critical.find_critical_points``, Newton-MR with
  MINRES-QLP, adaptive radius, Armijo on |g|^2), per start (``batching="map"``).
- ``lm_cg``: Levenberg-Marquardt on phi = 1/2 |g|^2 with g = grad L: the Gauss-Newton model of
  g, ``g(theta + p) ~ g + H p``, so the step solves ``(H^2 + mu I) p = -H g`` matrix-free by
  CG (two Hessian-vector products per CG step), stopped at relative residual
  ``min(0.1, |Hg|^0.5)``; ``mu`` follows Nielsen's rule from the ratio of actual to predicted
  decrease of phi; steps with ratio <= 1e-4 are rejected (counted as iterations).
- ``lm_dense``: the same with the exact step from a dense eigendecomposition of H each
  iteration (tells solver inexactness apart from the landscape; P <~ 2e3).
- ``nmr_npc``: Newton-MR whose inner solver is plain MINRES with nonpositive-curvature (NPC)
  detection (Liu & Roosta 2022, arXiv 2206.05732, Alg. 1; 2208.07095). Without NPC the step is
  the MINRES iterate (inexact, forcing ``min(0.5, |g|^0.5)``) with Armijo backtracking on
  |g|^2. When MINRES detects NPC (r_{k-1}^T H r_{k-1} <= 0) Liu & Roosta step along r_{k-1}
  to *decrease L*; that flees saddles and is wrong for finding critical points. Here the NPC
  direction r is used for what it is worth to |g|^2: the step is the Gauss-Newton minimiser
  of |g + H d|^2 over d in span{x_{k-1}, r_{k-1}} (x_{k-1} the last MINRES iterate before NPC;
  H x_{k-1} = -g - r_{k-1} comes free, H r costs one product), then Armijo on |g|^2. Along
  negative curvature this moves *uphill* in L, towards the saddle.
- ``nmr_continuation``: (f) continuation in l2: the package's Newton-MR on ``L + l2_j |theta|^2``
  for l2_j = 1e-4, 1e-5, ... down to ``--l2`` (or 1e-9 when --l2 is 0), each solve warm-started
  at the previous one (``max_iters`` per stage), then the unregularised loss from the last. The
  path |theta*(l2)| says whether a critical point of L is at finite distance from the start.
- ``deflation``: (e) further critical points from one start (Farrell, Birkisson & Funke 2015):
  the package's Newton-MR (100 iterations) finds a first one; then Levenberg-Marquardt with
  exact steps on the deflated residual M(theta) grad L, M = prod_i (|theta - r_i|^-2 + 1) over
  the points r_i found so far, runs from the same start, until an attempt fails or
  ``DEFLATED_POINTS`` are known (dense, P <= 2e3). ``max_iters`` is per deflated attempt.

Per start and method one JSON line: final |grad L_reg|^2 (the loss the finder sees) and
|grad L|^2 (l2 = 0), converged (< 1e-10, of the finder's loss), iterations, wall seconds
(compile excluded and reported apart), |theta_end|, |theta_end - theta_start|, the histories of
|theta| and |grad|^2 (own methods; the package's finder gives |grad|^2 only), an ``escaping``
flag (not converged, |g|^2 fell >= 10x, |theta| grew by > 1 and the second half of the run
still gave >= 25% of that growth), the gradient-flat flag (``critical.gradient_flat_test`` at
the final point, not converged) and, with ``--diagnose`` (dense, P <= 2e3), at the final
point: the negative / |lambda| <= 1e-5 eigenvalue counts, the share of |g|^2 in eigen-directions
with |lambda| <= 1e-5, the length of the shortest quadratic-model step to |g + Hp|^2 <= 1e-11
(``model_dist``: large means no critical point is near in the local model), and saturated hidden
units (mean over samples of tanh' below 1e-3).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from saddlestudy import critical, data, losses, models, optim, pipeline, train

GRAD_TOL = 1e-10
ZERO_TOL = 1e-5
OUT_DIR = "/tmp/finder_study"
DEFLATED_POINTS = 4  # deflation: stop after this many critical points from one start


# ----------------------------------------------------------------------------- the problem
def build_problem(depth: int, width: int, num_samples: int = 640):
    """Census data, architecture, pytree loss (no L2) and the sweep's init key."""
    ds = data.mnist1d(num_samples=num_samples, dtype="float64")
    arch = models.MLPConfig(
        in_features=ds.input_dim, out_features=ds.output_dim, depth=depth, width=width,
        activation="tanh", use_bias=True,
    )  # fmt: skip
    x = jnp.asarray(ds.x)
    y = jax.nn.one_hot(ds.y, ds.metadata["num_classes"], dtype=jnp.float64)
    loss_fn = losses.make_loss_fn(models.make_apply(arch), x, y, loss="mse")
    entry = {"name": "mnist1d", "num_samples": num_samples}
    init_key = pipeline.replica_init_key(0, entry, arch)
    return arch, x, loss_fn, init_key


def train_starts(
    arch,
    loss_fn,
    init_key,
    replicas: int,
    steps: int,
    start: str,
    lbfgs_tol: float,
    lbfgs_iters: int,
    optimizer: str = "adam",
):
    """``optimizer`` (the census's: Adam or iRprop-, lr 0.01, full batch) for ``steps`` steps,
    then optionally L-BFGS; starts (R, P)."""
    params_R = models.init_replicas(arch, init_key, replicas, "float64")
    cfg = train.TrainConfig(num_steps=steps, record_every=50)
    result = train.train_replicas(
        loss_fn,
        params_R,
        optim.OptimizerFactory(optimizer),
        cfg,
        hyperparams={"learning_rate": 0.01},
    )
    theta_R = jax.vmap(lambda p: ravel_pytree(p)[0])(result.params)
    if start == "lbfgs":
        unravel = ravel_pytree(jax.tree.map(lambda a: a[0], result.params))[1]
        fun = lambda t: loss_fn(unravel(t))  # noqa: E731
        polish = jax.jit(functools.partial(lbfgs_polish, fun, tol=lbfgs_tol, max_iters=lbfgs_iters))
        theta_R = jnp.stack([polish(t)[0] for t in theta_R])
    return np.asarray(theta_R)


def lbfgs_polish(fun, theta, *, tol: float, max_iters: int):
    """optax.lbfgs (zoom line search) on the loss until |grad|^2 <= tol or max_iters."""
    opt = optax.lbfgs()
    vg = optax.value_and_grad_from_state(fun)

    def cond(c):
        th, st, g2, k = c
        return (k < max_iters) & (g2 > tol)

    def body(c):
        th, st, _, k = c
        v, g = vg(th, state=st)
        upd, st = opt.update(g, st, th, value=v, grad=g, value_fn=fun)
        th = optax.apply_updates(th, upd)
        g2 = jnp.sum(jax.grad(fun)(th) ** 2)
        return th, st, g2, k + 1

    g2 = jnp.sum(jax.grad(fun)(theta) ** 2)
    th, _, g2, k = lax.while_loop(cond, body, (theta, opt.init(theta), g2, 0))
    return th, g2, k


def flat_loss(loss_fn, unravel, l2: float):
    """theta -> L(unravel(theta)) + l2 |theta|^2."""

    def fun(theta):
        value = loss_fn(unravel(theta))
        return value + l2 * jnp.dot(theta, theta) if l2 else value

    return fun


def hvp_fn(fun):
    grad = jax.grad(fun)
    return lambda th, v: jax.jvp(grad, (th,), (v,))[1]


# ----------------------------------------------------------------------------- histories
def _history(max_iters: int, theta, g2):
    hg = jnp.full(max_iters + 1, jnp.nan).at[0].set(g2)
    hn = jnp.full(max_iters + 1, jnp.nan).at[0].set(jnp.linalg.norm(theta))
    return hg, hn


def _record(hg, hn, k, theta, g2):
    return hg.at[k].set(g2), hn.at[k].set(jnp.linalg.norm(theta))


# ----------------------------------------------------------------------------- (b) LM on |g|^2
def cg(matvec, b, rtol, maxiter):
    """Conjugate gradients from 0 on an SPD operator; stops at |r| <= rtol |b|."""
    bb = jnp.dot(b, b)

    def cond(c):
        x, r, p, rr, k = c
        return (k < maxiter) & (rr > rtol**2 * bb)

    def body(c):
        x, r, p, rr, k = c
        ap = matvec(p)
        a = rr / jnp.dot(p, ap)
        x, r = x + a * p, r - a * ap
        rr_new = jnp.dot(r, r)
        return x, r, r + (rr_new / rr) * p, rr_new, k + 1

    x, _, _, _, k = lax.while_loop(cond, body, (jnp.zeros_like(b), b, b, bb, 0))
    return x, k


def _nielsen(mu, nu, rho, accept):
    """Nielsen's damping update (Madsen, Nielsen & Tingleff 2004)."""
    mu_acc = mu * jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
    return jnp.where(accept, mu_acc, mu * nu), jnp.where(accept, 2.0, 2.0 * nu)


def lm_cg(
    fun,
    theta0,
    *,
    max_iters: int,
    cg_maxiter: int,
    mu_scale: float = 1e-3,
    grad_tol: float = GRAD_TOL,
):
    """Levenberg-Marquardt on 1/2 |g|^2 with the model H^2 + mu I, CG solves (module docs)."""
    grad, hvp = jax.grad(fun), hvp_fn(fun)
    g0 = grad(theta0)
    hg0 = hvp(theta0, g0)
    mu0 = mu_scale * jnp.dot(hg0, hg0) / jnp.dot(g0, g0)
    g2 = jnp.dot(g0, g0)
    hg, hn = _history(max_iters, theta0, g2)

    def cond(c):
        th, g, mu, nu, k, nh, hg, hn, stop = c
        return (k < max_iters) & (jnp.dot(g, g) >= grad_tol) & ~stop

    def body(c):
        th, g, mu, nu, k, nh, hg, hn, _ = c
        rhs = -hvp(th, g)
        op = lambda v: hvp(th, hvp(th, v)) + mu * v  # noqa: E731
        p, kcg = cg(op, rhs, jnp.minimum(0.1, jnp.sqrt(jnp.linalg.norm(rhs))), cg_maxiter)
        hp = hvp(th, p)
        pred = -(jnp.dot(g, hp) + 0.5 * jnp.dot(hp, hp))
        g_new = grad(th + p)
        actual = 0.5 * (jnp.dot(g, g) - jnp.dot(g_new, g_new))
        rho = actual / pred
        accept = (rho > 1e-4) & jnp.isfinite(rho) & jnp.all(jnp.isfinite(g_new))
        mu, nu = _nielsen(mu, nu, jnp.where(jnp.isfinite(rho), rho, 0.0), accept)
        th = jnp.where(accept, th + p, th)
        g = jnp.where(accept, g_new, g)
        hg, hn = _record(hg, hn, k + 1, th, jnp.dot(g, g))
        return th, g, mu, nu, k + 1, nh + 2 + 2 * kcg, hg, hn, mu > 1e30

    c = lax.while_loop(cond, body, (theta0, g0, mu0, 2.0, 0, 1, hg, hn, False))
    th, g, _, _, k, nh, hg, hn, _ = c
    return th, jnp.dot(g, g), k, nh, hg, hn


def lm_dense(fun, theta0, *, max_iters: int, mu_scale: float = 1e-3, grad_tol: float = GRAD_TOL):
    """lm_cg with the exact step -V diag(lam / (lam^2 + mu)) V^T g from eigh(H)."""
    grad, hess = jax.grad(fun), jax.hessian(fun)
    g0 = grad(theta0)
    lam0 = jnp.linalg.eigvalsh(hess(theta0))
    mu0 = mu_scale * jnp.max(lam0**2)
    hg, hn = _history(max_iters, theta0, jnp.dot(g0, g0))

    def cond(c):
        th, g, mu, nu, k, hg, hn, stop = c
        return (k < max_iters) & (jnp.dot(g, g) >= grad_tol) & ~stop

    def body(c):
        th, g, mu, nu, k, hg, hn, _ = c
        lam, v = jnp.linalg.eigh(hess(th))
        gv = v.T @ g
        p = -v @ (lam / (lam**2 + mu) * gv)
        hp_v = lam * (v.T @ p)
        pred = -(jnp.dot(gv, hp_v) + 0.5 * jnp.dot(hp_v, hp_v))
        g_new = grad(th + p)
        rho = 0.5 * (jnp.dot(g, g) - jnp.dot(g_new, g_new)) / pred
        accept = (rho > 1e-4) & jnp.isfinite(rho) & jnp.all(jnp.isfinite(g_new))
        mu, nu = _nielsen(mu, nu, jnp.where(jnp.isfinite(rho), rho, 0.0), accept)
        th = jnp.where(accept, th + p, th)
        g = jnp.where(accept, g_new, g)
        hg, hn = _record(hg, hn, k + 1, th, jnp.dot(g, g))
        return th, g, mu, nu, k + 1, hg, hn, mu > 1e30

    th, g, _, _, k, hg, hn, _ = lax.while_loop(cond, body, (theta0, g0, mu0, 2.0, 0, hg, hn, False))
    return th, jnp.dot(g, g), k, 0, hg, hn


# ----------------------------------------------------------------------------- (e) deflation
def deflation_factor(roots, power: float, shift: float):
    """Farrell, Birkisson & Funke (2015)'s M(theta) = prod_i (|theta - r_i|^-power + shift):
    it blows up at the known critical points r_i (rows of ``roots``, possibly none) and tends
    to 1 far from them (shift 1), so zeros of M g are the zeros of g other than the r_i."""

    def m(theta):
        d2 = jnp.sum((theta[None, :] - roots) ** 2, axis=1)
        return jnp.prod(d2 ** (-0.5 * power) + shift)

    return m


def deflated_lm_dense(
    fun,
    theta0,
    roots,
    *,
    max_iters: int,
    power: float = 2.0,
    shift: float = 1.0,
    mu_scale: float = 1e-3,
    grad_tol: float = GRAD_TOL,
):
    """Levenberg-Marquardt on 1/2 |G|^2 with the deflated residual G = M g (g = grad L, M from
    :func:`deflation_factor`), dense: J_G = M H + g grad(M)^T (not symmetric), the step solves
    (J^T J + mu I) p = -J^T G, mu by Nielsen's rule. Stops when the *undeflated* |g|^2 <
    grad_tol. With no roots this is Levenberg-Marquardt on |g|^2 with exact steps."""
    grad, hess = jax.grad(fun), jax.hessian(fun)
    m = deflation_factor(roots, power, shift)
    dm = jax.grad(m)

    def residual(th):
        g = grad(th)
        return m(th) * g, g

    def jacobian(th, g):
        return m(th) * hess(th) + jnp.outer(g, dm(th))

    G0, g0 = residual(theta0)
    mu0 = mu_scale * jnp.linalg.norm(jacobian(theta0, g0), 2) ** 2
    hg, hn = _history(max_iters, theta0, jnp.dot(g0, g0))
    eye = jnp.eye(theta0.size, dtype=theta0.dtype)

    def cond(c):
        th, G, g, mu, nu, k, hg, hn, stop = c
        return (k < max_iters) & (jnp.dot(g, g) >= grad_tol) & ~stop

    def body(c):
        th, G, g, mu, nu, k, hg, hn, _ = c
        J = jacobian(th, g)
        p = -jnp.linalg.solve(J.T @ J + mu * eye, J.T @ G)
        jp = J @ p
        pred = -(jnp.dot(G, jp) + 0.5 * jnp.dot(jp, jp))
        G_new, g_new = residual(th + p)
        rho = 0.5 * (jnp.dot(G, G) - jnp.dot(G_new, G_new)) / pred
        accept = (rho > 1e-4) & jnp.isfinite(rho) & jnp.all(jnp.isfinite(G_new))
        mu, nu = _nielsen(mu, nu, jnp.where(jnp.isfinite(rho), rho, 0.0), accept)
        th, G, g = (
            jnp.where(accept, new, old) for new, old in ((th + p, th), (G_new, G), (g_new, g))
        )
        hg, hn = _record(hg, hn, k + 1, th, jnp.dot(g, g))
        return th, G, g, mu, nu, k + 1, hg, hn, mu > 1e30

    init = (theta0, G0, g0, mu0, 2.0, 0, hg, hn, False)
    th, _, g, _, _, k, hg, hn, _ = lax.while_loop(cond, body, init)
    return th, jnp.dot(g, g), k, 0, hg, hn


# ----------------------------------------------------------------------------- (c) NPC MINRES
def minres_npc(matvec, b, rtol, maxiter):
    """Plain MINRES on A x = b with NPC detection (Liu & Roosta 2022, Alg. 1).

    Returns ``(x, r, npc, k)``: the last iterate before NPC (or the final one), its residual
    ``r = b - A x`` (the NPC direction when ``npc``: ``r^T A r <= 0``), the NPC flag and the
    number of matrix-vector products.
    """
    beta1 = jnp.linalg.norm(b)
    z = jnp.zeros_like(b)
    # carry: x, r, v_prev, v, d1, d2, beta, phi, c, s, delta1, eps, k, npc, done
    init = (z, b, z, b / beta1, z, z, 0.0 * beta1, beta1, -1.0 + 0 * beta1, 0.0 * beta1,
            0.0 * beta1, 0.0 * beta1, 0, False, beta1 == 0)  # fmt: skip

    def cond(st):
        return (st[12] < maxiter) & ~st[14]

    def body(st):
        x, r, vp, v, d1, d2, beta, phi, c, s, delta1, eps, k, npc, done = st
        q = matvec(v)
        alpha = jnp.dot(v, q)
        q = q - beta * vp - alpha * v
        beta_n = jnp.linalg.norm(q)
        delta2 = c * delta1 + s * alpha
        gamma1 = s * delta1 - c * alpha
        eps_n = s * beta_n
        delta1_n = -c * beta_n
        is_npc = c * gamma1 >= 0
        gamma2 = jnp.sqrt(gamma1**2 + beta_n**2)
        c_n, s_n = gamma1 / gamma2, beta_n / gamma2
        tau, phi_n = c_n * phi, s_n * phi
        d = (v - delta2 * d1 - eps * d2) / gamma2
        v_n = jnp.where(beta_n > 0, q / jnp.where(beta_n > 0, beta_n, 1.0), 0.0)
        r_n = s_n**2 * r - phi_n * c_n * v_n
        x_n = x + tau * d
        new = (x_n, r_n, v, v_n, d, d1, beta_n, phi_n, c_n, s_n, delta1_n, eps_n)
        old = (x, r, vp, v, d1, d2, beta, phi, c, s, delta1, eps)
        out = jax.tree.map(lambda o, n: jnp.where(is_npc, o, n), old, new)
        stop = is_npc | (phi_n <= rtol * beta1) | (beta_n <= 1e-14 * beta1)
        return (*out, k + 1, is_npc, stop)

    st = lax.while_loop(cond, body, init)
    return st[0], st[1], st[13], st[12]


def _armijo(grad, th, g, d, slope, max_backtracks: int = 40, c1: float = 1e-4):
    """Backtracking on |g|^2 along d; slope = d/dt |g(th + t d)|^2 at 0 (negative)."""
    g2 = jnp.dot(g, g)

    def cond(c):
        t, gn, j = c
        gn2 = jnp.dot(gn, gn)
        ok = jnp.isfinite(gn2) & (gn2 <= g2 + c1 * t * slope)
        return ~ok & (j < max_backtracks)

    def body(c):
        t, _, j = c
        t = 0.5 * t
        return t, grad(th + t * d), j + 1

    t, gn, j = lax.while_loop(cond, body, (1.0, grad(th + d), 0))
    ok = jnp.isfinite(jnp.dot(gn, gn)) & (jnp.dot(gn, gn) <= g2 + c1 * t * slope)
    return t, gn, ok


def nmr_npc(fun, theta0, *, max_iters: int, inner_maxiter: int, grad_tol: float = GRAD_TOL):
    """Newton-MR with NPC-aware MINRES, for |g|^2 (module docs)."""
    grad, hvp = jax.grad(fun), hvp_fn(fun)
    g0 = grad(theta0)
    hg, hn = _history(max_iters, theta0, jnp.dot(g0, g0))

    def cond(c):
        th, g, k, nh, nnpc, hg, hn, stop = c
        return (k < max_iters) & (jnp.dot(g, g) >= grad_tol) & ~stop

    def body(c):
        th, g, k, nh, nnpc, hg, hn, _ = c
        gnorm = jnp.linalg.norm(g)
        x, r, npc, kin = minres_npc(
            lambda v: hvp(th, v), -g, jnp.minimum(0.5, jnp.sqrt(gnorm)), inner_maxiter
        )
        hx = -g - r  # H x = b - r with b = -g
        hr = jnp.where(npc, hvp(th, jnp.where(npc, r, 0.0)), 0.0)
        # Gauss-Newton on |g + H(a x + b r)|^2 over (a, b); without NPC b = 0 and a = 1.
        m = jnp.array([[hx @ hx, hx @ hr], [hr @ hx, hr @ hr]])
        rhs = -jnp.array([g @ hx, g @ hr])
        ridge = 1e-14 * (jnp.trace(m) + 1e-300)
        ab = jnp.linalg.solve(m + ridge * jnp.eye(2), rhs)
        ab = jnp.where(npc, ab, jnp.array([1.0, 0.0]))
        d = ab[0] * x + ab[1] * r
        hd = ab[0] * hx + ab[1] * hr
        t, gn, ok = _armijo(grad, th, g, d, 2.0 * jnp.dot(g, hd))
        th = jnp.where(ok, th + t * d, th)
        g = jnp.where(ok, gn, g)
        hg, hn = _record(hg, hn, k + 1, th, jnp.dot(g, g))
        return th, g, k + 1, nh + kin + npc.astype(int), nnpc + npc.astype(int), hg, hn, ~ok

    th, g, k, nh, nnpc, hg, hn, _ = lax.while_loop(cond, body, (theta0, g0, 0, 0, 0, hg, hn, False))
    return th, jnp.dot(g, g), k, nh, hg, hn, nnpc


# ----------------------------------------------------------------------------- diagnostics
def escaping(hg: np.ndarray, hn: np.ndarray, converged: bool) -> bool | None:
    """|grad|^2 decays >= 10x while |theta| grows by > 1 and still grows in the second half."""
    ok = np.isfinite(hg) & np.isfinite(hn)
    hg, hn = hg[ok], hn[ok]
    if converged or len(hn) < 4:
        return False if converged else None
    grow = hn[-1] - hn[0]
    late = hn[-1] - hn[len(hn) // 2]
    return bool(hg[-1] < hg[0] / 10 and grow > 1.0 and late >= 0.25 * grow)


def saturated_units(theta, unravel, x) -> list[int]:
    """Per hidden layer: units whose mean over samples of tanh'(z) is below 1e-3."""
    params = unravel(jnp.asarray(theta))
    layers = params["layers"]
    h, out = x, []
    for i in range(len(layers) - 1):
        z = h @ layers[i]["kernel"] + layers[i]["bias"]
        h = jnp.tanh(z)
        out.append(int(jnp.sum(jnp.mean(1 - h**2, axis=0) < 1e-3)))
    return out


def model_distance(lam, gv, target: float = 1e-11) -> float:
    """Shortest |p| with |g + H p|^2 <= target in the quadratic model (inf if none)."""
    w = gv**2
    floor = float(np.sum(w[np.abs(lam) == 0]))
    if np.sum(w) <= target:
        return 0.0
    if floor > target:
        return float("inf")
    res = lambda mu: np.sum(w * (mu / (lam**2 + mu)) ** 2)  # noqa: E731
    lo, hi = -80.0, 20.0  # log10 mu; res increases with mu
    if res(10.0**lo) > target:
        return float("inf")
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if res(10.0**mid) <= target else (lo, mid)
    mu = 10.0**lo
    return float(np.sqrt(np.sum(w * lam**2 / (lam**2 + mu) ** 2)))


def dense_diagnostics(fun, theta, x, unravel) -> dict:
    th = jnp.asarray(theta)
    lam, v = np.linalg.eigh(np.asarray(jax.hessian(fun)(th)))
    g = np.asarray(jax.grad(fun)(th))
    gv = v.T @ g
    small = np.abs(lam) <= ZERO_TOL
    return {
        "n_neg": int(np.sum(lam < -ZERO_TOL)),
        "n_zero": int(np.sum(small)),
        "lam_min": float(lam[0]),
        "lam_max": float(lam[-1]),
        "g_share_flat": float(np.sum(gv[small] ** 2) / max(np.sum(gv**2), 1e-300)),
        "model_dist": model_distance(lam, gv),
        "saturated_units": saturated_units(theta, unravel, x),
    }


# ----------------------------------------------------------------------------- running
def parse_method(spec: str) -> tuple[str, int]:
    name, _, iters = spec.partition(":")
    if name not in ("newton_mr", "lm_cg", "lm_dense", "nmr_npc", "nmr_continuation", "deflation"):
        raise argparse.ArgumentTypeError(f"unknown method {name!r}")
    return name, int(iters or 500)


@functools.lru_cache(maxsize=64)
def compiled(name: str, iters: int, l2: float, P: int, key):
    """The compiled single-start finder ``theta0 -> (theta, g2, iters, hvps, hist_g, hist_n)``."""
    fun = key.fun(l2)
    theta_spec = jax.ShapeDtypeStruct((P,), jnp.float64)
    if name == "lm_cg":
        f = functools.partial(lm_cg, fun, max_iters=iters, cg_maxiter=min(P, 250))
    elif name == "lm_dense":
        f = functools.partial(lm_dense, fun, max_iters=iters)
    elif name == "nmr_npc":
        f = functools.partial(nmr_npc, fun, max_iters=iters, inner_maxiter=min(2 * P, 1000))
    elif name == "deflation":
        f = functools.partial(deflated_lm_dense, fun, max_iters=iters)
        return jax.jit(f), 0.0  # compiled per number of known roots, at the first call
    else:
        raise ValueError(name)
    t0 = time.perf_counter()
    c = jax.jit(f).lower(theta_spec).compile()
    return c, time.perf_counter() - t0


class Problem:
    """Hashable holder of the unregularised loss, for the compile cache."""

    def __init__(self, loss_fn, unravel, x):
        self.loss_fn, self.unravel, self.x = loss_fn, unravel, x
        self._funs = {}
        self.warm = set()

    def fun(self, l2: float):
        if l2 not in self._funs:
            self._funs[l2] = flat_loss(self.loss_fn, self.unravel, l2)
        return self._funs[l2]

    def tree_loss(self, l2: float):
        key = ("tree", l2)
        if key not in self._funs:
            lf = self.loss_fn
            self._funs[key] = (
                (lambda p: lf(p) + l2 * sum(jnp.sum(a * a) for a in jax.tree.leaves(p)))
                if l2
                else lf
            )
        return self._funs[key]


def run_package(prob: Problem, theta0, l2: float, iters: int):
    """The package's Newton-MR from one start: (theta, g2, iters, hvps, hist_g, flat, status,
    hist_n, point class)."""
    params = jax.tree.map(lambda a: a[None], prob.unravel(jnp.asarray(theta0)))
    cp = critical.find_critical_points(
        prob.tree_loss(l2), params, method="newton_mr", grad_tol=GRAD_TOL, max_iters=iters,
        batching="map",
    )  # fmt: skip
    jax.block_until_ready(cp)
    theta = np.asarray(ravel_pytree(jax.tree.map(lambda a: a[0], cp.params))[0])
    (cls,) = critical.point_class(
        cp.converged,
        cp.status,
        cp.gradient_flat,
        cp.iterations,
        cp.param_norm_history,
        cp.grad_norm_sq_history,
    )
    return (theta, float(cp.grad_norm_sq[0]), int(cp.iterations[0]), int(cp.num_hvps[0]),
            np.asarray(cp.grad_norm_sq_history[0]), bool(cp.gradient_flat[0]),
            critical.STATUS[int(cp.status[0])], np.asarray(cp.param_norm_history[0]),
            str(cls))  # fmt: skip


def continuation_ladder(l2_final: float) -> list[float]:
    target = l2_final if l2_final > 0 else 1e-9
    ladder, v = [], 1e-4
    while v > target * 1.0001:
        ladder.append(v)
        v /= 10
    return [*ladder, target] + ([0.0] if l2_final == 0 else [])


def run_one(prob: Problem, name: str, iters: int, l2: float, theta0: np.ndarray) -> dict:
    """One finder from one start: the JSON record (histories included)."""
    P = theta0.size
    rec: dict = {}
    if name == "newton_mr":
        if (l2, iters) not in prob.warm:  # compile (cached per loss_fn and settings)
            run_package(prob, theta0, l2, iters)
            prob.warm.add((l2, iters))
        t0 = time.perf_counter()
        theta, g2, k, nh, hist_g, flat, status, hist_n, cls = run_package(prob, theta0, l2, iters)
        rec.update(wall_s=time.perf_counter() - t0, status=status, pkg_gradient_flat=flat,
                   point_class=cls)  # fmt: skip
    elif name == "nmr_continuation":
        t0 = time.perf_counter()
        theta, path, k, nh = theta0, [], 0, 0
        for lam in continuation_ladder(l2):
            theta, g2, ki, nhi, _, flat, status, _, _ = run_package(prob, theta, lam, iters)
            k, nh = k + ki, nh + nhi
            norm = float(np.linalg.norm(theta))
            path.append({"l2": lam, "g2": g2, "iters": ki, "theta_norm": norm, "status": status})
        rec.update(wall_s=time.perf_counter() - t0, path=path, status=status)
        hist_g = np.array([p["g2"] for p in path])
        hist_n = np.array([p["theta_norm"] for p in path])
        l2 = path[-1]["l2"]
    elif name == "deflation":
        t0 = time.perf_counter()
        theta, g2, k, nh, hist_g, hist_n, points = deflate(prob, theta0, l2, iters)
        rec.update(wall_s=time.perf_counter() - t0, points=points)
    else:
        fn, compile_s = compiled(name, iters, l2, P, prob)
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(jnp.asarray(theta0)))
        rec.update(wall_s=time.perf_counter() - t0, compile_s=compile_s)
        theta, g2, k, nh, hist_g, hist_n = (np.asarray(o) for o in out[:6])
        g2, k, nh = float(g2), int(k), int(nh)
        if name == "nmr_npc":
            rec["npc_iters"] = int(out[6])
    converged = g2 < GRAD_TOL
    theta = np.asarray(theta)
    g_plain = np.asarray(jax.grad(prob.fun(0.0))(jnp.asarray(theta)))
    flat = critical.gradient_flat_test(prob.tree_loss(l2), prob.unravel(jnp.asarray(theta)))
    rec.update(
        method=name, max_iters=iters, l2=l2, P=P, g2=g2, converged=bool(converged),
        g2_unreg=float(g_plain @ g_plain), loss=float(prob.fun(0.0)(jnp.asarray(theta))),
        iterations=k, hvps=nh,
        theta_norm_start=float(np.linalg.norm(theta0)), theta_norm_end=float(np.linalg.norm(theta)),
        displacement=float(np.linalg.norm(theta - theta0)),
        gradient_flat=bool(flat.gradient_flat) and not converged,
        flat_r=float(flat.flat_residual), flat_r_h=float(flat.flat_residual_hessian),
        hist_g2=[float(v) for v in np.asarray(hist_g)[np.isfinite(hist_g)]],
        hist_theta_norm=None if hist_n is None else [float(v) for v in hist_n[np.isfinite(hist_n)]],
    )  # fmt: skip
    rec["escaping"] = (
        None if hist_n is None else escaping(np.asarray(hist_g), np.asarray(hist_n), converged)
    )
    return rec, theta


def deflate(prob: Problem, theta0, l2: float, iters: int, max_points: int = DEFLATED_POINTS):
    """From one start: the package's Newton-MR (100 iterations) for a first critical point,
    then :func:`deflated_lm_dense` from the same start with every point found so far deflated,
    until an attempt fails or ``max_points`` are known. Returns the first deflated attempt's
    end (theta, |g|^2, iterations, 0, histories) and one entry per point found."""
    if theta0.size > 2000:
        raise SystemExit(f"deflation forms P x P Jacobians: P = {theta0.size} is over 2,000")
    theta, g2, k, *_ = run_package(prob, theta0, l2, 100)
    if g2 >= GRAD_TOL:
        return theta, g2, k, 0, np.array([g2]), np.array([np.linalg.norm(theta)]), []
    roots, first = [theta], None
    fn, _ = compiled("deflation", iters, l2, theta0.size, prob)
    while len(roots) < max_points:
        out = jax.block_until_ready(fn(jnp.asarray(theta0), jnp.asarray(np.stack(roots))))
        first = first or tuple(np.asarray(o) for o in out)
        if not float(out[1]) < GRAD_TOL:
            break
        roots.append(np.asarray(out[0]))
    fun = prob.fun(l2)
    points = [{"loss": float(fun(jnp.asarray(r))),
               "g2": float(np.sum(np.asarray(jax.grad(fun)(jnp.asarray(r))) ** 2)),
               "distance_from_start": float(np.linalg.norm(r - theta0)),
               "distance_to_nearest_earlier": float(min((np.linalg.norm(r - q) for q in roots[:i]),
                                                        default=np.nan)),
               "num_negative": int(np.sum(np.linalg.eigvalsh(np.asarray(jax.hessian(fun)(
                   jnp.asarray(r)))) < -ZERO_TOL))}
              for i, r in enumerate(roots)]  # fmt: skip
    th, g2, k, nh, hg, hn = first
    return th, float(g2), int(k), int(nh), hg, hn, points


def load_or_train(args, arch, loss_fn, init_key) -> np.ndarray:
    tag = f"starts_d{args.depth}_w{args.width}_R{args.replicas}_s{args.train_steps}_{args.start}"
    if args.optimizer != "adam":  # Adam's file names predate the option
        tag += f"_{args.optimizer}"
    if args.start == "lbfgs":
        tag += f"_tol{args.lbfgs_tol:g}"
    path = os.path.join(OUT_DIR, tag + ".npz")
    if os.path.exists(path) and not args.retrain:
        return np.load(path)["theta"], 0.0
    t0 = time.perf_counter()
    theta = train_starts(arch, loss_fn, init_key, args.replicas, args.train_steps, args.start,
                         args.lbfgs_tol, args.lbfgs_iters, args.optimizer)  # fmt: skip
    np.savez(path, theta=theta)
    return theta, time.perf_counter() - t0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--width", type=int, default=6)
    p.add_argument("--replicas", type=int, default=8)
    p.add_argument("--only", type=int, nargs="*", default=None, help="start indices to run")
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument(
        "--start",
        choices=("adam", "lbfgs"),
        default="adam",
        help="adam: the training end points; lbfgs: then L-BFGS on the loss",
    )
    p.add_argument(
        "--optimizer",
        choices=("adam", "irprop-"),
        default="adam",
        help="the census's two trainers (lr 0.01)",
    )
    p.add_argument("--lbfgs-tol", type=float, default=1e-8)
    p.add_argument("--lbfgs-iters", type=int, default=20000)
    p.add_argument("--retrain", action="store_true")
    p.add_argument(
        "--methods",
        type=parse_method,
        nargs="+",
        default=[parse_method(s) for s in ("newton_mr:100", "lm_cg:500", "nmr_npc:500")],
        help="name:max_iters; names: newton_mr lm_cg lm_dense nmr_npc nmr_continuation deflation",
    )
    p.add_argument("--l2", type=float, nargs="+", default=[0.0])
    p.add_argument("--diagnose", action="store_true", help="dense diagnostics at end points")
    p.add_argument("--out", default=None, help="JSON lines file (default under /tmp/finder_study)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # the census is float64
    os.makedirs(OUT_DIR, exist_ok=True)
    out = args.out or os.path.join(OUT_DIR, f"d{args.depth}_w{args.width}.jsonl")
    print(f"records: {out}", flush=True)
    arch, x, loss_fn, init_key = build_problem(args.depth, args.width)
    starts, train_s = load_or_train(args, arch, loss_fn, init_key)
    unravel = ravel_pytree(models.init_params(arch, jax.random.key(0), "float64"))[1]
    prob = Problem(loss_fn, unravel, x)
    P = arch.num_params
    print(
        f"depth {args.depth} width {args.width} P {P}: {len(starts)} starts "
        f"({args.optimizer} {args.train_steps} steps, start {args.start}; train {train_s:.1f}s)",
        flush=True,
    )
    idx = range(len(starts)) if args.only is None else args.only
    for l2 in args.l2:
        for name, iters in args.methods:
            for i in idx:
                rec, theta = run_one(prob, name, iters, l2, starts[i])
                g0 = np.asarray(jax.grad(prob.fun(0.0))(jnp.asarray(starts[i])))
                rec.update(depth=args.depth, width=args.width, start=i, start_kind=args.start,
                           optimizer=args.optimizer,
                           train_steps=args.train_steps, g2_start=float(g0 @ g0),
                           loss_start=float(prob.fun(0.0)(jnp.asarray(starts[i]))))  # fmt: skip
                if args.diagnose:
                    rec["diag"] = dense_diagnostics(prob.fun(rec["l2"]), theta, x, unravel)
                with open(out, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                d = rec.get("diag", {})
                print(f"{name}:{iters} l2={l2:g} start {i}: loss {rec['loss_start']:.3f}->"
                      f"{rec['loss']:.3f} g2 {rec['g2_start']:.1e}->{rec['g2']:.2e} (unreg "
                      f"{rec['g2_unreg']:.2e}) conv {rec['converged']} it {rec['iterations']} "
                      f"{rec['wall_s']:.1f}s |th| {rec['theta_norm_start']:.1f}->"
                      f"{rec['theta_norm_end']:.1f} disp {rec['displacement']:.1f} esc "
                      f"{rec['escaping']} flat {rec['gradient_flat']} "
                      + (f"neg {d['n_neg']} zero {d['n_zero']} gflat {d['g_share_flat']:.2f} "
                         f"mdist {d['model_dist']:.2g} sat {d['saturated_units']}" if d else ""),
                      flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
