"""Critical-point finders, Frye's gradient-flat test, and the escape step from a saddle.

``find_critical_point(loss_fn, params)`` runs one finder from one start and returns a
:class:`CriticalPoint`; ``find_critical_points(loss_fn, params_R)`` runs R starts of one
architecture (a leading axis R on every leaf) in one compiled program: a single
``lax.while_loop`` whose body is the vmapped finder step, masked per start, so finished starts
stay put while the others go on (inner linear solves and line searches are switched off for
them, so they cost no extra iterations). Methods:

- ``"newton_mr"``: Newton-MR (Roosta, Liu, Xu & Mahoney, "Newton-MR: Inexact Newton method with
  minimum residual sub-problem solver", 2018/2022): the step is the MINRES-QLP solution of
  ``H p = -g`` (the minimum-length least-squares solution where H is singular,
  :func:`saddlestudy.linalg.minres_qlp`), with Armijo backtracking on ``|g|^2``. The finder
  Frye et al. (2019, 2021) found best. Our addition (``FinderOptions.adaptive_radius``, on by
  default): once the line search has cut a step to ``alpha |p|``, the next MINRES-QLP solve is
  stopped at that norm (Steihaug's trust-region truncation with MINRES's iterates), so that far
  from a critical point the step is the best residual reduction in a short Krylov space
  rather than a scaled-down Newton step dominated by near-singular directions; on the linear
  autoencoder this takes the success rate from ~70% to 100% (BENCHMARKS.md). The linear
  solves are inexact far from a critical point (``FinderOptions.forcing``).
- ``"gradnorm"``: minimise ``1/2 |g|^2``, whose gradient is ``H g``, by gradient descent with
  Armijo backtracking (the accepted step, times ``step_growth``, starts the next search) or by
  Adam (Pennington & Bahri 2017; Frye et al. 2019).
- ``"damped_newton"``: ``p = -(H + lambda I)^{-1} g`` with a Levenberg-Marquardt damping
  schedule: a step is taken if it lowers ``|g|^2``, and then ``lambda`` shrinks by
  ``damping_decrease``; otherwise it is rejected and ``lambda`` grows by ``damping_increase``
  (Dauphin et al. 2014 found critical points with a damped Newton method; the constants 2/3
  and 3/2 are Martens' 2010).
- ``"saddle_free_newton"``: ``p = -V^T |T|^{-1}_lambda V g`` in the k-dimensional Lanczos
  subspace ``V`` of H started at g, with ``|T|`` the absolute eigenvalues of the projected
  Hessian plus the damping ``lambda`` (Dauphin et al. 2014, approximate saddle-free Newton); the
  same damping schedule, on the loss. It flees saddles: it is an optimizer, included for
  comparisons, and finds minima.

All methods stop once ``|g|^2 < grad_tol``, after ``max_iters`` iterations, or when they stall
(no acceptable step: the line search or the damping schedule gave up). Each method is an
``(init, propose)`` pair over its own typed state (``NewtonMRState``, ``GradNormState``,
``GradNormAdamState``, ``DampingState``), as optax writes transformations; the Armijo line
search, the acceptance of a step and the stopping rule are shared (``_backtrack``,
``_make_finder``'s ``step``, ``_status``).

**Gradient-flat test** (Frye et al. 2021, docs/science.md §2). At the final point, with g
the gradient, H the Hessian and p the Newton-MR step (MINRES-QLP on ``H p = -g``):
``r = |Hp + g| / (|H|_F |p| + |g|)`` and ``r_H = |H(Hp + g)| / (|H|_F |Hp + g|)``. The point
is gradient-flat when ``r > 0.9`` (g is not explained by curvature) while ``r_H < 5e-4`` (what
is left of g lies in the (near-)kernel of H), and it has not converged. Whether a tiny
eigenvalue counts as kernel depends on how far the step inverts it (Frye et al. capped
their MINRES-QLP step at norm 1e4, a scale-dependent choice). Here p is the Newton step
restricted to curvature above ``c |H|_F``, ``c = flat_kernel_tol = 1e-2``: with
(theta_i, y_i) the Ritz pairs of a ``flat_krylov_dim``-step Lanczos decomposition of H started
at g (the Krylov space MINRES searches), ``p = -sum_{|theta_i| > c |H|_F} (y_i . g / theta_i)
y_i``, and both residuals are recomputed with exact Hessian-vector products. Then ``r > 0.9``
says that all but ~1% of ``|g|^2`` lies in directions of curvature below ``c |H|_F``, and
``r_H < 5e-4`` that this part of g has (root-mean-square) curvature below ``5e-4 |H|_F``: g is
in the near-kernel. (With ``c`` at the r_H threshold itself, small leaks of g into curvature
just above it make p, and so ``|H|_F |p|``, large and r small even where ``|H g| / (|H|_F
|g|)`` is 1e-6; r_H keeps the test strict.) ``|H|_F`` is exact
(P Hessian-vector products on the unit vectors) for P up to ``frobenius_exact_max`` and a
Hutchinson estimate ``mean_j |H z_j|^2`` over Rademacher probes ``z_j`` above that (unbiased
for ``|H|_F^2``; relative standard deviation below ``sqrt(2 / probes)``, ample for tests
against 0.9 and 5e-4).

Numerics: finders run in float64 by default: float leaves are upcast explicitly (the returned
params are float64) and JAX's x64 mode must be on. In float32 (``dtype=None`` with a float32
start) a ``grad_tol`` below ``FLOAT32_MIN_GRAD_TOL`` is refused with a ValueError rather than
left to fail silently.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from saddlestudy import _devices, hessian, krylov, linalg, spectrum
from saddlestudy._checks import (
    check_int,
    check_number,
    check_params,
    check_scalar_loss,
    is_int,
    reject_renamed,
)
from saddlestudy._results import plain, ravel_batched

Params = Any
LossFn = Callable[[Params], jax.Array]

METHODS = ("newton_mr", "gradnorm", "damped_newton", "saddle_free_newton")
# Iteration budgets: Frye et al. gave Newton-MR 500; a gradnorm iteration costs one
# Hessian-vector product and a few gradients, so it gets ten times as many.
DEFAULT_MAX_ITERS = {
    "newton_mr": 500,
    "gradnorm": 5000,
    "damped_newton": 500,
    "saddle_free_newton": 500,
}
STATUS = ("converged", "max_iters", "stalled", "non_finite")
# "vmap": all starts step in lockstep (one lane per start, finished lanes masked): the layout
# for accelerators. "map": the starts run one after another inside the same compiled program:
# on a CPU no start waits for the slowest one and the working set stays in cache. An integer
# k: groups of k starts in lockstep, one group after another (hybrid; k = 1 is "map").
BATCHING = ("vmap", "map")
_RUNNING = -1
# Pennington & Bahri's float32 cutoff. Frye et al. found even 1e-8 too loose to recover the
# true loss and index, and the tighter cutoffs are not resolvable in float32 (eps ~ 1.2e-7 on
# every gradient entry), so they are refused there instead of failing silently.
FLOAT32_MIN_GRAD_TOL = 1e-6
# Frye et al. (2021)'s thresholds of the gradient-flat test.
FLAT_RESIDUAL = 0.9
FLAT_RESIDUAL_HESSIAN = 5e-4


# How a start ends (:func:`point_class`), in order of precedence.
POINT_CLASSES = ("critical", "diverged", "escaping", "gradient_flat", "stalled", "budget")
# "escaping" (a run toward a critical point at infinity): over the second half of the run
# |theta| grew by at least ESCAPE_GROWTH (relative) while |grad L|^2 fell by at least
# ESCAPE_DECAY, and the growth has not levelled off: the last quarter grew at least half as
# much as the quarter before it.
ESCAPE_GROWTH = 0.05
ESCAPE_DECAY = 10.0
_ESCAPE_MIN_ITERS = 8


def point_class(
    converged, status, gradient_flat, iterations, param_norm_history, grad_norm_sq_history
) -> np.ndarray:
    """The class of each finder run's end point, one of :data:`POINT_CLASSES` (NumPy, host).

    ``critical``: |grad L|^2 < grad_tol. ``diverged``: non-finite loss or gradient.
    ``escaping``: |theta| grows without levelling off while |grad L| decays
    (``ESCAPE_GROWTH``, ``ESCAPE_DECAY``): a descent toward a critical point at infinity
    (saturating units), not toward a nearby one. Such a run usually also passes Frye et al.'s
    gradient-flat test (the gradient lies in directions of vanishing curvature), and is
    reported as escaping, the more specific reason. ``gradient_flat``: Frye et al.'s test
    fired (r > 0.9, r_H < 5e-4). ``stalled``: no acceptable step. ``budget``: out of
    iterations.
    Inputs are the :class:`CriticalPoint` fields, batched (leading axis R) or not.
    """
    converged = np.atleast_1d(np.asarray(converged, bool))
    status = np.atleast_1d(np.asarray(status))
    flat = np.atleast_1d(np.asarray(gradient_flat, bool))
    its = np.atleast_1d(np.asarray(iterations))
    theta = np.atleast_2d(np.asarray(param_norm_history, float))
    gn2 = np.atleast_2d(np.asarray(grad_norm_sq_history, float))
    out = np.full(converged.shape, "budget", dtype=object)
    for r in range(converged.size):
        n = int(its[r])
        if converged[r]:
            out[r] = "critical"
        elif STATUS[int(status[r])] == "non_finite":
            out[r] = "diverged"
        elif n >= _ESCAPE_MIN_ITERS and _escaping(theta[r, : n + 1], gn2[r, : n + 1]):
            out[r] = "escaping"
        elif flat[r]:
            out[r] = "gradient_flat"
        elif STATUS[int(status[r])] == "stalled":
            out[r] = "stalled"
    return out


# Newton's method on g near an isolated zero of g of multiplicity m (g ~ x^m along the
# approach) multiplies x by (m - 1)/m a full step, so |g|^2 by ((m - 1)/m)^(2m): 0 for m = 1
# (quadratic convergence), 1/16 for m = 2, rising to e^-2 as m grows. A run whose last step
# lowered |grad L|^2 by less (last_step_ratio above this) crossed grad_tol without the local
# rate of Newton's method at a finite critical point: it was still travelling, e.g. toward
# a critical point at infinity (a threshold crossing, not convergence).
NEWTON_RATE_BOUND = math.exp(-2.0)


def last_step_ratio(iterations, grad_norm_sq_history) -> np.ndarray:
    """|grad L|^2 after each run's last iteration over |grad L|^2 before it (NumPy, host;
    batched as :func:`point_class`); NaN for a run of no iterations. Compare with
    :data:`NEWTON_RATE_BOUND`."""
    its = np.atleast_1d(np.asarray(iterations)).astype(int)
    gn2 = np.atleast_2d(np.asarray(grad_norm_sq_history, float))
    out = np.full(its.shape, np.nan)
    for r, n in enumerate(its):
        if n >= 1 and gn2[r, n - 1] > 0:
            out[r] = gn2[r, n] / gn2[r, n - 1]
    return out


def _escaping(theta: np.ndarray, gn2: np.ndarray) -> bool:
    n = theta.shape[0] - 1
    half, three = theta[n // 2], theta[(3 * n) // 4]
    growing = theta[n] - half >= ESCAPE_GROWTH * half
    not_levelled = theta[n] - three >= 0.5 * (three - half) > 0
    decaying = gn2[n] * ESCAPE_DECAY <= gn2[n // 2]
    return bool(growing and not_levelled and decaying)


@dataclasses.dataclass(frozen=True)
class FinderOptions:
    """Tuning knobs of the finders (defaults suit float64 problems of P up to ~1e4).

    Attributes:
      linear_rtol: MINRES-QLP tolerance on both relative residuals (newton_mr, damped_newton
        and the gradient-flat test).
      linear_artol: inexact Newton-MR: MINRES-QLP also stops once the least-squares residual
        ``|H r|`` fell by this factor (0: off).
      forcing: inexact Newton (newton_mr): MINRES-QLP also stops once ``|Hp + g| <=
        eta |g|`` with ``eta = min(0.5, forcing |g|^forcing_power)``, the forcing term of
        Eisenstat & Walker (1996): loose solves far from a critical point, tight ones near it
        (order ``1 + forcing_power`` local convergence); 0 switches it off.
      forcing_power: see ``forcing``.
      linear_maxiter: MINRES-QLP iterations per solve; None: ``min(2 P, 1000)``.
      max_step_norm: MINRES-QLP's bound on ``|p|`` (its maxxnorm): a larger step signals a
        (numerically) singular direction, whose last QLP component is then dropped.
      max_condition: MINRES-QLP's bound on its condition estimate (its acondlim).
      adaptive_radius: newton_mr: after a step shortened by the line search to ``alpha |p|``,
        the next MINRES-QLP solve is truncated at that length (a trust radius, Steihaug-style);
        a full step that reaches the radius multiplies it by ``radius_growth``.
      radius_growth: see ``adaptive_radius``.
      armijo: sufficient-decrease constant of the backtracking line searches.
      backtrack: step shrink factor of the line searches.
      max_backtracks: shrinks before a line search gives up (the finder then stalls).
      gradnorm_optimizer: ``"backtracking"`` or ``"adam"`` (gradnorm only).
      learning_rate: Adam's learning rate (gradnorm with Adam).
      initial_step: first trial step of gradnorm's line search.
      step_growth: gradnorm's next search starts at the last accepted step times this.
      damping: initial ``lambda`` (damped_newton, saddle_free_newton), in the units of the
        Hessian's eigenvalues: scale it with the problem.
      damping_decrease: ``lambda`` factor after an accepted step.
      damping_increase: ``lambda`` factor after a rejected step.
      max_damping: the finder stalls once ``lambda`` exceeds this.
      min_damping: ``lambda`` never goes below this.
      krylov_dim: Lanczos subspace dimension of saddle_free_newton (capped at P).
      frobenius_exact_max: largest P for which ``|H|_F`` is computed exactly.
      frobenius_probes: Hutchinson probes for ``|H|_F`` above that.
      flat_krylov_dim: Lanczos steps of the gradient-flat test's Newton step (capped at P).
      flat_kernel_tol: that step ignores curvature below ``flat_kernel_tol * |H|_F``.
      flat_residual: r threshold of the gradient-flat test (Frye et al.: 0.9).
      flat_residual_hessian: r_H threshold (Frye et al.: 5e-4).
    """

    linear_rtol: float = 1e-10
    linear_artol: float = 0.0
    forcing: float = 0.1
    forcing_power: float = 0.5
    linear_maxiter: int | None = None
    max_step_norm: float = 1e7
    max_condition: float = 1e15
    adaptive_radius: bool = True
    radius_growth: float = 1.5
    armijo: float = 1e-4
    backtrack: float = 0.5
    max_backtracks: int = 40
    gradnorm_optimizer: str = "backtracking"
    learning_rate: float = 1e-3
    initial_step: float = 1.0
    step_growth: float = 2.0
    damping: float = 1e-2
    damping_decrease: float = 2.0 / 3.0
    damping_increase: float = 1.5
    max_damping: float = 1e8
    min_damping: float = 1e-12
    krylov_dim: int = 20
    frobenius_exact_max: int = 1024
    frobenius_probes: int = 64
    flat_krylov_dim: int = 100
    flat_kernel_tol: float = 1e-2
    flat_residual: float = FLAT_RESIDUAL
    flat_residual_hessian: float = FLAT_RESIDUAL_HESSIAN

    def __post_init__(self):
        positive = (
            "linear_rtol", "max_step_norm", "max_condition", "armijo", "learning_rate",
            "forcing_power",
            "initial_step", "damping", "max_damping", "min_damping", "flat_residual",
            "flat_residual_hessian", "flat_kernel_tol",
        )  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"FinderOptions.{name} must be a finite number > 0, got {value!r}")
        if not 0 < self.backtrack < 1 or not 0 < self.damping_decrease < 1:
            raise ValueError("FinderOptions.backtrack and damping_decrease must lie in (0, 1)")
        if not (self.damping_increase > 1 and self.step_growth >= 1 and self.radius_growth >= 1):
            raise ValueError(
                "FinderOptions needs damping_increase > 1, step_growth >= 1 and radius_growth >= 1"
            )
        if not (math.isfinite(self.forcing) and self.forcing >= 0):
            raise ValueError(f"FinderOptions.forcing must be finite and >= 0, got {self.forcing}")
        if not (math.isfinite(self.linear_artol) and 0 <= self.linear_artol < 1):
            raise ValueError(
                f"FinderOptions.linear_artol must lie in [0, 1), got {self.linear_artol}"
            )
        if not self.armijo < 1:
            raise ValueError(f"FinderOptions.armijo must be < 1, got {self.armijo}")
        for name in (
            "max_backtracks", "krylov_dim", "frobenius_exact_max", "frobenius_probes",
            "flat_krylov_dim",
        ):  # fmt: skip
            check_int(f"FinderOptions.{name}", getattr(self, name), 1)
        if self.linear_maxiter is not None:
            check_int("FinderOptions.linear_maxiter", self.linear_maxiter, 1)
        if self.gradnorm_optimizer not in ("backtracking", "adam"):
            raise ValueError(
                f"unknown gradnorm_optimizer {self.gradnorm_optimizer!r}; "
                "choose 'backtracking' or 'adam'"
            )


@dataclasses.dataclass(frozen=True)
class _Config:
    # Everything static about one compiled finder (hashable: part of the jit cache key).
    method: str
    grad_tol: float
    max_iters: int
    options: FinderOptions
    batching: str | int = "vmap"

    @property
    def lanes(self) -> int | None:
        """Starts stepped in lockstep per group; None: all of them ("vmap")."""
        if self.batching == "vmap":
            return None
        return 1 if self.batching == "map" else self.batching


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "params",
        "loss",
        "grad_norm_sq",
        "converged",
        "gradient_flat",
        "iterations",
        "status",
        "flat_residual",
        "flat_residual_hessian",
        "hessian_fro_norm",
        "num_hvps",
        "num_grads",
        "loss_history",
        "grad_norm_sq_history",
        "param_norm_history",
        "distance_moved",
    ],
    meta_fields=["method", "grad_tol", "max_iters"],
)
@dataclasses.dataclass(frozen=True)
class CriticalPoint:
    """Where a finder stopped (or, batched, where R finders stopped: a leading axis R).

    Attributes:
      params: the final point, with the structure of the start (float64 by default).
      loss: the loss there.
      grad_norm_sq: ``|grad L|^2`` there, the quantity ``grad_tol`` bounds.
      converged: ``grad_norm_sq < grad_tol``.
      gradient_flat: Frye et al.'s test fired (``flat_residual > 0.9`` and
        ``flat_residual_hessian < 5e-4``) and the point has not converged.
      iterations: finder iterations taken (rejected damped steps included).
      status: index into :data:`STATUS`: 0 converged, 1 max_iters, 2 stalled, 3 non_finite.
      flat_residual: ``r = |Hp + g| / (|H|_F |p| + |g|)`` with p the Newton-MR step.
      flat_residual_hessian: ``r_H = |H(Hp + g)| / (|H|_F |Hp + g|)``.
      hessian_fro_norm: the ``|H|_F`` used (exact or Hutchinson, see the module docs).
      num_hvps: Hessian-vector products spent (the final test included).
      num_grads: loss-and-gradient evaluations spent.
      loss_history: loss after each iteration, entry 0 at the start; NaN past the end.
      grad_norm_sq_history: ``|grad L|^2`` likewise.
      param_norm_history: ``|theta|`` likewise (a run toward a critical point at infinity
        shows here: :func:`point_class`).
      distance_moved: ``|theta_end - theta_start|``.
      method: the finder (``"none"`` in a study: the starts, measured and not moved;
        zero iterations and NaN residuals).
      grad_tol: the convergence threshold.
      max_iters: the iteration budget (history length - 1).
    """

    params: Params
    loss: jax.Array
    grad_norm_sq: jax.Array
    converged: jax.Array
    gradient_flat: jax.Array
    iterations: jax.Array
    status: jax.Array
    flat_residual: jax.Array
    flat_residual_hessian: jax.Array
    hessian_fro_norm: jax.Array
    num_hvps: jax.Array
    num_grads: jax.Array
    loss_history: jax.Array
    grad_norm_sq_history: jax.Array
    param_norm_history: jax.Array
    distance_moved: jax.Array
    method: str
    grad_tol: float
    max_iters: int

    def status_name(self) -> str | list[str]:
        """The termination reason(s) as words (a list for a batch)."""
        codes = np.asarray(self.status)
        if codes.ndim == 0:
            return STATUS[int(codes)]
        return [STATUS[int(c)] for c in codes.ravel()]

    def to_dict(self) -> dict[str, Any]:
        """Plain Python / NumPy values for storage; params flattened to shape (P,) (or (R, P)).

        Histories are cut to the iterations taken when there is one point.
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "params":
                continue
            value = getattr(self, f.name)
            out[f.name] = (
                value if f.name in ("method", "grad_tol", "max_iters") else np.asarray(value)
            )
        leaves = jax.tree.leaves(self.params)
        batched = np.ndim(out["loss"]) == 1
        if batched:
            out["params"] = np.stack(
                [np.asarray(ravel_pytree(jax.tree.map(lambda l, i=i: l[i], self.params))[0])
                 for i in range(leaves[0].shape[0])]
            )  # fmt: skip
        else:
            out["params"] = np.asarray(ravel_pytree(self.params)[0])
            n = int(out["iterations"]) + 1
            out["loss_history"] = out["loss_history"][:n]
            out["grad_norm_sq_history"] = out["grad_norm_sq_history"][:n]
            out["param_norm_history"] = out["param_norm_history"][:n]
            for name in ("loss", "grad_norm_sq", "flat_residual", "flat_residual_hessian",
                         "hessian_fro_norm", "distance_moved"):  # fmt: skip
                out[name] = float(out[name])
            for name in ("converged", "gradient_flat"):
                out[name] = bool(out[name])
            for name in ("iterations", "status", "num_hvps", "num_grads"):
                out[name] = int(out[name])
        out["status_name"] = self.status_name()
        return out


# --------------------------------------------------------------------------- validation


def _resolve_config(
    method: str,
    grad_tol: Any,
    max_iters: Any,
    options: FinderOptions | None,
    batching: str | int = "vmap",
) -> _Config:
    if not (batching in BATCHING or _is_lane_count(batching)):
        raise ValueError(
            f"unknown batching {batching!r}; choose from {BATCHING} or a number of lanes >= 1"
        )
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    tol = check_number("grad_tol", grad_tol)
    if max_iters is None:
        max_iters = DEFAULT_MAX_ITERS[method]
    max_iters = check_int("max_iters", max_iters, 1)
    if options is None:
        options = FinderOptions()
    if not isinstance(options, FinderOptions):
        raise ValueError(f"options must be a FinderOptions, got {type(options).__name__}")
    return _Config(
        method=method, grad_tol=tol, max_iters=max_iters, options=options, batching=batching
    )


def _is_lane_count(batching: Any) -> bool:
    return is_int(batching) and batching >= 1


def _prepare(loss_fn: LossFn, params: Params, dtype: Any, grad_tol: float, *, batched: bool):
    """Validates and casts the start(s); returns the params to run from."""
    if not callable(loss_fn):
        raise ValueError("loss_fn must be a callable of the parameter pytree")
    leaves = check_params(params)
    if batched:
        num = {jnp.shape(leaf)[:1] for leaf in leaves}
        if len(num) != 1 or () in num:
            raise ValueError("every leaf of params_R needs the same leading axis R of starts")
    if dtype is None:
        target = jnp.result_type(*leaves)
    else:
        try:
            target = jnp.dtype(dtype)
        except TypeError as err:
            raise ValueError(f"unknown dtype {dtype!r}; use 'float64', 'float32' or None") from err
    if target not in (jnp.float32, jnp.float64):
        raise ValueError(f"finders run in float32 or float64, got {target}")
    if target == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "critical-point finders run in float64 but JAX's x64 mode is off; call "
            "jax.config.update('jax_enable_x64', True) first (or pass dtype=None to keep a "
            "float32 start, with grad_tol >= FLOAT32_MIN_GRAD_TOL)"
        )
    if target == jnp.float32 and grad_tol < FLOAT32_MIN_GRAD_TOL:
        raise ValueError(
            f"grad_tol={grad_tol:g} cannot be resolved in float32 (|grad|^2 carries rounding "
            f"noise of order P * eps32^2); use float64 (the default dtype) or grad_tol >= "
            f"{FLOAT32_MIN_GRAD_TOL:g}"
        )
    # The explicit, documented upcast: every float leaf to the finder's dtype.
    params = jax.tree.map(lambda leaf: jnp.asarray(leaf, target), params)
    one = jax.tree.map(lambda leaf: leaf[0], params) if batched else params
    out = check_scalar_loss(loss_fn, one)
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"loss_fn must return a float, got dtype {out.dtype}")
    if jnp.finfo(out.dtype).bits < jnp.finfo(target).bits:
        raise ValueError(
            f"loss_fn returns {out.dtype} on {target} parameters: it computes in lower "
            "precision (float32 data or casts inside); build it on float64 data"
        )
    return params


# --------------------------------------------------------------------------- the finders


def _tree_where(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Per-start select: ``pred`` has shape (R,), every leaf a leading axis R."""

    def select(a, b):
        mask = pred.reshape(pred.shape + (1,) * (jnp.ndim(a) - 1))
        return jnp.where(mask, a, b)

    return jax.tree.map(select, on_true, on_false)


def _frobenius_norm(hvp: Callable, theta: jax.Array, key: jax.Array, opts: FinderOptions):
    """``|H|_F``: exact on the unit vectors for small P, else Hutchinson (module docs)."""
    P = theta.shape[0]
    if P <= opts.frobenius_exact_max:

        def column_norm_sq(i):
            e = jnp.zeros_like(theta).at[i].set(1)
            return jnp.sum(jnp.square(hvp(theta, e)))

        total = jnp.sum(lax.map(column_norm_sq, jnp.arange(P), batch_size=min(P, 32)))
        return jnp.sqrt(total), P
    probes = jax.random.rademacher(key, (opts.frobenius_probes, P), dtype=theta.dtype)
    norms = lax.map(lambda z: jnp.sum(jnp.square(hvp(theta, z))), probes, batch_size=8)
    return jnp.sqrt(jnp.mean(norms)), opts.frobenius_probes


def _lanczos_ritz(
    matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, num_steps: int, restart: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Ritz values (ascending) and Ritz vectors (rows, shape (k, P)) of k Lanczos steps."""
    tri = krylov.lanczos_tridiag(matvec, v0, num_steps, restart_vector=restart)
    theta, S, _ = krylov.ritz_pairs(tri)
    return theta, S.T @ tri.basis


def _linear_maxiter(opts: FinderOptions, P: int) -> int:
    return opts.linear_maxiter if opts.linear_maxiter is not None else min(2 * P, 1000)


class FinderState(NamedTuple):
    """One start's state in every finder: the point, its loss and gradient, the counters and
    histories, and ``inner``, the method's own typed state."""

    theta: jax.Array  # the point, raveled
    loss: jax.Array
    g: jax.Array  # the gradient at theta
    gn2: jax.Array  # |g|^2
    it: jax.Array
    status: jax.Array  # _RUNNING or an index into STATUS
    num_hvps: jax.Array
    num_grads: jax.Array
    loss_history: jax.Array
    grad_norm_sq_history: jax.Array
    param_norm_history: jax.Array
    inner: Any


class NewtonMRState(NamedTuple):
    radius: jax.Array  # the trust radius of the next MINRES-QLP solve (inf: none)


class GradNormState(NamedTuple):
    step: jax.Array  # the first step size the next line search tries


class GradNormAdamState(NamedTuple):
    adam: optax.OptState


class DampingState(NamedTuple):
    damping: jax.Array  # lambda of damped Newton and saddle-free Newton


class Proposal(NamedTuple):
    """A method's proposed step: the new point with its loss, gradient and ``|g|^2``, whether
    to accept it, whether the method has stalled, its cost and the method's next state."""

    theta: jax.Array
    loss: jax.Array
    g: jax.Array
    gn2: jax.Array
    ok: jax.Array
    stalled: jax.Array
    num_hvps: jax.Array
    num_grads: jax.Array
    inner: Any


class _Ops(NamedTuple):
    """The loss's derivatives on raveled parameters, and the shared Lanczos restart vector."""

    value_and_grad: Callable
    hvp: Callable  # (theta, v) -> H(theta) v
    restart: jax.Array


def _backtrack(ops, opts, theta, direction, merit0, slope, merit_fn, alpha0, active):
    """Armijo: the first alpha = alpha0 * backtrack^j with merit <= merit0 + c alpha slope.
    ``merit_fn(theta) -> (merit, (loss, g))``. Returns ``(ok, alpha, merit, (loss, g), tries)``."""

    def cond(c):
        return c[3]

    def body(c):
        alpha, tries, _, _, _, _ = c
        value, aux = merit_fn(theta + alpha * direction)
        ok = jnp.isfinite(value) & (value <= merit0 + opts.armijo * alpha * slope)
        tries = tries + 1
        alpha = jnp.where(ok, alpha, alpha * opts.backtrack)
        return alpha, tries, ok, ~ok & (tries < opts.max_backtracks), value, aux

    aux0 = (jnp.zeros((), theta.dtype), jnp.zeros_like(theta))  # shape donor: (loss, g)
    start = (jnp.asarray(alpha0, theta.dtype), jnp.zeros((), jnp.int32), jnp.array(False),
             active & (slope < 0), merit0, aux0)  # fmt: skip
    alpha, tries, ok, _, value, aux = lax.while_loop(cond, body, start)
    return ok, alpha, value, aux, tries


def _gn_merit(ops, scale=1.0):
    """``theta -> (scale |g|^2, (loss, g))``: the merit function of the line searches."""

    def merit(theta):
        loss, g = ops.value_and_grad(theta)
        return scale * jnp.sum(jnp.square(g)), (loss, g)

    return merit


def _evaluate(ops, theta):
    """``(loss, g, |g|^2)`` at theta."""
    loss, g = ops.value_and_grad(theta)
    return loss, g, jnp.sum(jnp.square(g))


# Newton-MR ---------------------------------------------------------------------------------


def _newton_mr_init(theta, opts):
    return NewtonMRState(radius=jnp.asarray(jnp.inf, theta.dtype))


def _newton_mr_propose(ops, opts, s: FinderState, active) -> Proposal:
    theta, g = s.theta, s.g
    maxiter = jnp.where(active, _linear_maxiter(opts, theta.shape[0]), 0)
    btol = jnp.minimum(opts.forcing * jnp.linalg.norm(g) ** opts.forcing_power, 0.5)
    p, info = linalg.minres_qlp(
        lambda v: ops.hvp(theta, v), -g, rtol=opts.linear_rtol, btol=btol,
        artol=opts.linear_artol, maxiter=maxiter, maxxnorm=opts.max_step_norm,
        acondlim=opts.max_condition, trust_radius=s.inner.radius,
    )  # fmt: skip
    truncated = info.flag == 11
    # d/dalpha |g(theta + alpha p)|^2 at 0 is 2 <Hp, g>; MINRES iterates make it < 0 (Roosta
    # et al.), zero only if p = 0 (g in the kernel of H: nothing to do).
    slope = 2 * jnp.vdot(ops.hvp(theta, p), g)
    ok, alpha, value, (loss, g_new), tries = _backtrack(
        ops, opts, theta, p, s.gn2, slope, _gn_merit(ops), 1.0, active
    )
    radius = s.inner.radius
    if opts.adaptive_radius:
        grown = jnp.where(alpha < 1, alpha * jnp.linalg.norm(p), radius)
        grown = jnp.where((alpha == 1) & truncated, grown * opts.radius_growth, grown)
        radius = jnp.where(ok, grown, radius)
    # Two matvecs for MINRES-QLP's explicit final residuals, one for the slope.
    return Proposal(theta + alpha * p, loss, g_new, value, ok, ~ok, info.iterations + 3, tries,
                    NewtonMRState(radius))  # fmt: skip


# Gradient-norm minimisation ----------------------------------------------------------------


def _gradnorm_init(theta, opts):
    return GradNormState(step=jnp.asarray(opts.initial_step, theta.dtype))


def _gradnorm_propose(ops, opts, s: FinderState, active) -> Proposal:
    d = ops.hvp(s.theta, s.g)  # the gradient of 1/2 |g|^2
    slope = -jnp.sum(jnp.square(d))
    ok, alpha, value, (loss, g_new), tries = _backtrack(
        ops, opts, s.theta, -d, 0.5 * s.gn2, slope, _gn_merit(ops, 0.5), s.inner.step, active
    )
    step = jnp.where(ok, alpha * opts.step_growth, s.inner.step)
    return Proposal(s.theta - alpha * d, loss, g_new, 2 * value, ok, ~ok, 1, tries,
                    GradNormState(step))  # fmt: skip


def _gradnorm_adam_init(theta, opts):
    return GradNormAdamState(adam=optax.adam(opts.learning_rate).init(theta))


def _gradnorm_adam_propose(ops, opts, s: FinderState, active) -> Proposal:
    d = ops.hvp(s.theta, s.g)
    updates, adam = optax.adam(opts.learning_rate).update(d, s.inner.adam, s.theta)
    new_theta = s.theta + updates
    loss, g_new, value = _evaluate(ops, new_theta)
    return Proposal(new_theta, loss, g_new, value, jnp.isfinite(value), jnp.array(False), 1, 1,
                    GradNormAdamState(adam))  # fmt: skip


# Damped Newton and saddle-free Newton ------------------------------------------------------


def _damping_init(theta, opts):
    return DampingState(damping=jnp.asarray(opts.damping, theta.dtype))


def _damped_newton_propose(ops, opts, s: FinderState, active) -> Proposal:
    theta = s.theta
    p, info = linalg.minres_qlp(
        lambda v: ops.hvp(theta, v), -s.g, shift=-s.inner.damping, rtol=opts.linear_rtol,
        maxiter=jnp.where(active, _linear_maxiter(opts, theta.shape[0]), 0),
        maxxnorm=opts.max_step_norm, acondlim=opts.max_condition,
    )  # fmt: skip
    new_theta = theta + p
    loss, g_new, value = _evaluate(ops, new_theta)
    ok = jnp.isfinite(value) & (value < s.gn2)  # a step must lower |g|^2
    damping = _next_damping(s.inner.damping, ok, opts)
    return Proposal(new_theta, loss, g_new, value, ok, damping > opts.max_damping,
                    info.iterations + 2, 1, DampingState(damping))  # fmt: skip


def _saddle_free_newton_propose(ops, opts, s: FinderState, active) -> Proposal:
    k = min(opts.krylov_dim, s.theta.shape[0])
    ritz, Y = _lanczos_ritz(lambda v: ops.hvp(s.theta, v), s.g, k, ops.restart)  # Y: (k, P)
    coef = (Y @ s.g) / (jnp.abs(ritz) + s.inner.damping)
    new_theta = s.theta - Y.T @ coef
    loss, g_new, value = _evaluate(ops, new_theta)
    ok = jnp.isfinite(loss) & (loss < s.loss)  # a step must lower the loss: it flees saddles
    damping = _next_damping(s.inner.damping, ok, opts)
    return Proposal(new_theta, loss, g_new, value, ok, damping > opts.max_damping, k, 1,
                    DampingState(damping))  # fmt: skip


def _method(cfg: _Config) -> tuple[Callable, Callable]:
    """The (init, propose) pair of the config's method."""
    if cfg.method == "gradnorm" and cfg.options.gradnorm_optimizer == "adam":
        return _gradnorm_adam_init, _gradnorm_adam_propose
    return {
        "newton_mr": (_newton_mr_init, _newton_mr_propose),
        "gradnorm": (_gradnorm_init, _gradnorm_propose),
        "damped_newton": (_damping_init, _damped_newton_propose),
        "saddle_free_newton": (_damping_init, _saddle_free_newton_propose),
    }[cfg.method]


def _status(cfg: _Config, it, loss, gn2, stalled) -> jax.Array:
    """The stopping rule shared by every method; later tests take precedence."""
    status = jnp.full((), _RUNNING, jnp.int32)
    status = jnp.where(it >= cfg.max_iters, 1, status)
    status = jnp.where(stalled, 2, status)
    status = jnp.where(~(jnp.isfinite(loss) & jnp.isfinite(gn2)), 3, status)
    return jnp.where(gn2 < cfg.grad_tol, 0, status).astype(jnp.int32)


def _make_finder(loss_fn: LossFn, cfg: _Config, unravel: Callable, restart: jax.Array):
    """The per-start pieces: ``init(theta)``, ``step(state, active)`` and the final
    gradient-flat test, built from the method's (init, propose) pair and the shared stopping
    rule.

    ``restart`` is the random vector Lanczos continues from after a breakdown (shared by the
    starts: it is rarely used).
    """
    opts = cfg.options
    grad = jax.grad(lambda theta: loss_fn(unravel(theta)))

    def hvp(theta, v):
        return jax.jvp(grad, (theta,), (v,))[1]

    ops = _Ops(jax.value_and_grad(lambda theta: loss_fn(unravel(theta))), hvp, restart)
    method_init, propose = _method(cfg)

    def init(theta) -> FinderState:
        loss, g, gn2 = _evaluate(ops, theta)
        finite = jnp.isfinite(loss) & jnp.isfinite(gn2)
        status = jnp.where(~finite, 3, jnp.where(gn2 < cfg.grad_tol, 0, _RUNNING))
        hist = jnp.full((cfg.max_iters + 1,), jnp.nan, theta.dtype)
        return FinderState(
            theta=theta, loss=loss, g=g, gn2=gn2, it=jnp.zeros((), jnp.int32),
            status=status.astype(jnp.int32), num_hvps=jnp.zeros((), jnp.int32),
            num_grads=jnp.ones((), jnp.int32), loss_history=hist.at[0].set(loss),
            grad_norm_sq_history=hist.at[0].set(gn2),
            param_norm_history=hist.at[0].set(jnp.linalg.norm(theta)),
            inner=method_init(theta, opts),
        )  # fmt: skip

    def step(s: FinderState, active) -> FinderState:
        prop = propose(ops, opts, s, active)
        accept = prop.ok & active
        it = s.it + 1
        loss = jnp.where(accept, prop.loss, s.loss)
        gn2 = jnp.where(accept, prop.gn2, s.gn2)
        theta = jnp.where(accept, prop.theta, s.theta)
        return FinderState(
            theta=theta, loss=loss,
            g=jnp.where(accept, prop.g, s.g), gn2=gn2, it=it,
            status=_status(cfg, it, loss, gn2, prop.stalled),
            num_hvps=s.num_hvps + prop.num_hvps, num_grads=s.num_grads + prop.num_grads,
            loss_history=s.loss_history.at[it].set(loss),
            grad_norm_sq_history=s.grad_norm_sq_history.at[it].set(gn2),
            param_norm_history=s.param_norm_history.at[it].set(jnp.linalg.norm(theta)),
            inner=prop.inner,
        )  # fmt: skip

    def flat_test(theta, g, key):
        fro, fro_cost = _frobenius_norm(hvp, theta, key, opts)
        # The Newton step restricted to curvature above flat_kernel_tol |H|_F (module docs):
        # Ritz pairs of H in the Krylov space of g; directions of smaller curvature count as
        # kernel and are not inverted.
        k = min(opts.flat_krylov_dim, theta.shape[0])
        ritz, Y = _lanczos_ritz(lambda v: hvp(theta, v), g, k, restart)
        keep = jnp.abs(ritz) > opts.flat_kernel_tol * fro
        p = -(Y.T @ jnp.where(keep, linalg.safe_div(Y @ g, ritz), 0.0))
        res = hvp(theta, p) + g
        h_res = hvp(theta, res)
        res_norm = jnp.linalg.norm(res)
        r = linalg.safe_div(res_norm, fro * jnp.linalg.norm(p) + jnp.linalg.norm(g))
        r_h = linalg.safe_div(jnp.linalg.norm(h_res), fro * res_norm)
        return r, r_h, fro, k + 2 + fro_cost

    return init, step, flat_test


def _next_damping(damping: jax.Array, ok: jax.Array, opts: FinderOptions) -> jax.Array:
    new = jnp.where(ok, damping * opts.damping_decrease, damping * opts.damping_increase)
    return jnp.maximum(new, opts.min_damping)


def _find(loss_fn: LossFn, cfg: _Config, params_R: Params, key: jax.Array, first):
    template = jax.tree.map(lambda leaf: leaf[0], params_R)
    unravel = ravel_pytree(template)[1]
    theta_R = jax.vmap(lambda p: ravel_pytree(p)[0])(params_R)
    num_starts = theta_R.shape[0]
    # Streams of ``key``: the Lanczos restart vector from ``key`` itself (one draw, outside
    # any vmap), start r's Hutchinson probes from ``fold_in(key, first + r)`` (``first``: the
    # index of this batch's first start among all, so that a start's numbers do not depend on
    # how the starts were split over devices).
    restart = jax.random.normal(key, theta_R.shape[1:], theta_R.dtype)
    init, step, flat_test = _make_finder(loss_fn, cfg, unravel, restart)

    state = jax.vmap(init)(theta_R)

    def cond(s):
        return jnp.any(s.status == _RUNNING)

    def body(s):
        active = s.status == _RUNNING
        # Finished starts are stepped too (vmap computes every lane) but their inner loops
        # are switched off and their state is kept: per-start convergence masks.
        return _tree_where(active, jax.vmap(step)(s, active), s)

    def run(state):
        return lax.while_loop(cond, body, state)

    lanes = cfg.lanes
    if lanes is None or lanes >= num_starts:
        s = run(state)
    else:
        # Groups of ``lanes`` starts, one after another inside the same program (lanes = 1:
        # no start waits for the slowest one). The last group is padded with copies of the
        # first start, dropped after.
        s = _devices.merge(lax.map(run, _devices.group(state, lanes)), num_starts)
    keys = jax.vmap(lambda r: jax.random.fold_in(key, first + r))(jnp.arange(num_starts))
    if lanes is None:
        r, r_h, fro, cost = jax.vmap(flat_test)(s.theta, s.g, keys)
    else:
        batch = None if lanes == 1 else min(lanes, num_starts)  # None: unbatched kernels
        r, r_h, fro, cost = lax.map(lambda a: flat_test(*a), (s.theta, s.g, keys), batch_size=batch)
    opts = cfg.options
    converged = s.gn2 < cfg.grad_tol
    flat = (r > opts.flat_residual) & (r_h < opts.flat_residual_hessian) & ~converged
    return CriticalPoint(
        params=jax.vmap(unravel)(s.theta),
        loss=s.loss,
        grad_norm_sq=s.gn2,
        converged=converged,
        gradient_flat=flat,
        iterations=s.it,
        status=s.status,
        flat_residual=r,
        flat_residual_hessian=r_h,
        hessian_fro_norm=fro,
        num_hvps=s.num_hvps + cost,
        num_grads=s.num_grads,
        loss_history=s.loss_history,
        grad_norm_sq_history=s.grad_norm_sq_history,
        param_norm_history=s.param_norm_history,
        distance_moved=jnp.linalg.norm(s.theta - theta_R, axis=-1),
        method=cfg.method,
        grad_tol=cfg.grad_tol,
        max_iters=cfg.max_iters,
    )


_find_batched = jax.jit(_find, static_argnums=(0, 1))


@functools.cache
def _find_on_devices(devices: tuple) -> Callable:
    # The finder as one SPMD program over ``devices`` (compiled once): each device runs the
    # loops on its own group of starts; nothing communicates, so no device waits for
    # another's slowest start. (The key is broadcast; each group gets its first index.)
    return jax.pmap(
        lambda loss_fn, cfg, key, group, first: _find(loss_fn, cfg, group, key, first),
        static_broadcasted_argnums=(0, 1),
        in_axes=(None, None, None, 0, 0),
        devices=devices,
    )


def _batched_inputs(loss_fn, params_R, method, grad_tol, max_iters, options, dtype, key, batching):
    """The checked settings, the starts in the finder's dtype and the key (default key(0)) of
    :func:`find_critical_points` and :func:`compile_critical_points`."""
    cfg = _resolve_config(method, grad_tol, max_iters, options, batching)
    params_R = _prepare(loss_fn, params_R, dtype, cfg.grad_tol, batched=True)
    return cfg, params_R, jax.random.key(0) if key is None else key


def find_critical_points(
    loss_fn: LossFn,
    params_R: Params,
    *,
    method: str = "newton_mr",
    grad_tol: float = 1e-10,
    max_iters: int | None = None,
    options: FinderOptions | None = None,
    dtype: Any = "float64",
    key: jax.Array | None = None,
    batching: str | int = "vmap",
    devices: Sequence[jax.Device] | None = None,
) -> CriticalPoint:
    """Runs a finder from each of R starts of one architecture, in one compiled program.

    Args:
      loss_fn: any pure JAX function of one start's parameter pytree returning a scalar.
      params_R: the starts, a leading axis R on every leaf.
      method: a key of :data:`METHODS` (see the module docs).
      grad_tol: a start has converged once ``|grad L|^2 < grad_tol`` (Frye et al.: 1e-10 is
        what recovers true critical points; 1e-8 is not enough).
      max_iters: iteration budget per start; None: :data:`DEFAULT_MAX_ITERS` of the method.
      options: a :class:`FinderOptions`; None: the defaults.
      dtype: ``"float64"`` (default: float leaves are upcast, x64 must be on), ``"float32"``,
        or None (the start's dtype; in float32 ``grad_tol`` must be at least
        ``FLOAT32_MIN_GRAD_TOL``).
      key: randomness of the Hutchinson probes for ``|H|_F`` (only used when P exceeds
        ``options.frobenius_exact_max``) and of the vector Lanczos restarts from after a
        breakdown (saddle_free_newton and the gradient-flat test); default
        ``jax.random.key(0)``.
      batching: ``"vmap"`` (default): one ``lax.while_loop`` steps every start in lockstep,
        with per-start convergence masks (finished starts keep their state and skip their
        inner solves); the layout for GPUs. ``"map"``: ``lax.map`` runs the starts one after
        another in the same program; faster on a CPU when starts need very different
        numbers of iterations (see BENCHMARKS.md). An int k: groups of k starts in lockstep,
        one group after another (hybrid; 1 is "map"). Results agree up to rounding (batched
        and unbatched kernels round differently, which can change an iteration count).
      devices: the starts are split into contiguous groups, one per device, each device
        running its own program (no cross-device step: a device waits only for its own
        slowest start); the result is gathered on the first. None: every local device.

    Returns:
      A :class:`CriticalPoint` whose fields have a leading axis R. Compiled once per
      ``loss_fn`` object, settings and shapes: a second call with the same ``loss_fn`` does
      not recompile.

    Raises:
      ValueError: unknown method, non-positive ``grad_tol`` or ``max_iters``, bad options,
        non-float parameters, a non-scalar loss, or a float32 run asked for a tolerance that
        float32 cannot resolve; all before any iteration.
    """
    cfg, params_R, key = _batched_inputs(
        loss_fn, params_R, method, grad_tol, max_iters, options, dtype, key, batching
    )
    devices = jax.local_devices() if devices is None else list(devices)
    num_starts = jax.tree.leaves(params_R)[0].shape[0]
    if len(devices) < 2 or num_starts < 2:
        # On that one device: starts sharded over several (by training) would otherwise make
        # the finder one program over all of them.
        return _find_batched(loss_fn, cfg, jax.device_put(params_R, devices[0]), key, 0)
    # On the host first: starts that come sharded (e.g. from training over the replica
    # mesh) would not match pmap's own layout.
    grouped, firsts, used = _devices.split(jax.device_get(params_R), len(devices))
    found = _find_on_devices(tuple(devices[:used]))(loss_fn, cfg, key, grouped, firsts)
    # Gathered on the first device (not left spread over the pmap's devices).
    return jax.device_put(_devices.merge(jax.device_get(found), num_starts), devices[0])


def compile_critical_points(
    loss_fn: LossFn,
    params_R: Params,
    *,
    method: str = "newton_mr",
    grad_tol: float = 1e-10,
    max_iters: int | None = None,
    options: FinderOptions | None = None,
    dtype: Any = "float64",
    key: jax.Array | None = None,
    batching: str | int = "vmap",
) -> Callable[[], CriticalPoint]:
    """:func:`find_critical_points` on one device, compiled ahead of time.

    Takes the arguments of :func:`find_critical_points` (without ``devices``) and returns a
    function of no arguments that runs the compiled program on these starts: what benchmarks
    need to time compilation and the run apart. Raises what :func:`find_critical_points`
    raises, before compiling.
    """
    cfg, params_R, key = _batched_inputs(
        loss_fn, params_R, method, grad_tol, max_iters, options, dtype, key, batching
    )
    compiled = _find_batched.lower(loss_fn, cfg, params_R, key, 0).compile()
    return functools.partial(compiled, params_R, key, 0)


def find_critical_point(
    loss_fn: LossFn,
    params: Params,
    *,
    method: str = "newton_mr",
    grad_tol: float = 1e-10,
    max_iters: int | None = None,
    options: FinderOptions | None = None,
    dtype: Any = "float64",
    key: jax.Array | None = None,
) -> CriticalPoint:
    """Runs a critical-point finder from one start.

    Args and raises as :func:`find_critical_points`, with ``params`` one start (any pytree
    of float arrays).

    Returns:
      A :class:`CriticalPoint`: ``params`` has the structure of the start; ``converged`` says
      whether ``|grad L|^2 < grad_tol``, ``gradient_flat`` whether it stopped at a
      gradient-flat point instead (Frye et al. 2021). Works under ``jax.vmap`` over a
      leading axis of ``params`` (but :func:`find_critical_points` is the batched entry
      point).
    """
    cfg = _resolve_config(method, grad_tol, max_iters, options)
    params = _prepare(loss_fn, params, dtype, cfg.grad_tol, batched=False)
    if key is None:
        key = jax.random.key(0)
    batch = _find_batched(loss_fn, cfg, jax.tree.map(lambda leaf: leaf[None], params), key, 0)
    return jax.tree.map(lambda leaf: leaf[0], batch)


# --------------------------------------------------------------------------- escaping


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "params",
        "loss",
        "loss_decrease",
        "step_size",
        "eigenvalue",
        "direction",
        "escaped",
    ],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class SaddleEscape:
    """The result of :func:`escape_saddle`.

    Attributes:
      params: the new point (the old one if no descent was found).
      loss: the loss there.
      loss_decrease: old loss minus new loss (>= 0; 0 if nothing was done).
      step_size: the distance stepped, t in ``params + t u``.
      eigenvalue: the most negative Hessian eigenvalue (Ritz value with Lanczos).
      direction: the unit eigenvector u stepped along, with the structure of ``params`` (its
        sign chosen by the line search).
      escaped: whether the eigenvalue was below ``-zero_tol`` and the loss went down.
    """

    params: Params
    loss: jax.Array
    loss_decrease: jax.Array
    step_size: jax.Array
    eigenvalue: jax.Array
    direction: Params
    escaped: jax.Array

    def to_dict(self) -> dict[str, Any]:
        """Plain Python / NumPy values; ``params`` and ``direction`` flattened to shape (P,)
        (batched: (R, P)) in ``ravel_pytree`` order."""
        batch_ndim = np.ndim(self.loss)
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("params", "direction"):
                out[f.name] = ravel_batched(value, batch_ndim)
            else:
                out[f.name] = plain(value)
        return out


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["flat_residual", "flat_residual_hessian", "hessian_fro_norm", "gradient_flat"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class GradientFlatTest:
    """The result of :func:`gradient_flat_test` (Frye et al. 2021's residual test at a point).

    Attributes:
      flat_residual: ``r = |Hp + g| / (|H|_F |p| + |g|)`` with p the Newton-MR step.
      flat_residual_hessian: ``r_H = |H(Hp + g)| / (|H|_F |Hp + g|)``.
      hessian_fro_norm: the ``|H|_F`` used (exact or Hutchinson, see the module docs).
      gradient_flat: ``r > flat_residual`` and ``r_H < flat_residual_hessian`` of the
        options (0.9 and 5e-4); unlike :class:`CriticalPoint`'s flag it does not exclude
        converged points.
    """

    flat_residual: jax.Array
    flat_residual_hessian: jax.Array
    hessian_fro_norm: jax.Array
    gradient_flat: jax.Array

    def to_dict(self) -> dict[str, Any]:
        """Plain Python floats and bool (NumPy arrays when batched)."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4, 5, 6, 7))
def _escape(loss_fn, params, method, num_matvecs, max_step, num_step_sizes, shrink, zero_tol, key):
    f, theta = hessian.flat_loss(loss_fn, params)
    unravel = ravel_pytree(params)[1]
    if method == "dense":
        H = hessian.dense_hessian(loss_fn, params)
        lam, vecs = jnp.linalg.eigh(0.5 * (H + H.T))
        eigenvalue, u = lam[0], vecs[:, 0]
    else:
        grad = jax.grad(f)
        v0 = jax.random.normal(key, theta.shape, theta.dtype)
        restart = jax.random.normal(jax.random.fold_in(key, 1), theta.shape, theta.dtype)

        def hvp(v):
            return jax.jvp(grad, (theta,), (v,))[1]

        ritz, Y = _lanczos_ritz(hvp, v0, num_matvecs, restart)
        eigenvalue, u = ritz[0], Y[0]
    u = krylov.unit(u)
    loss0 = f(theta)
    # Both signs of u on a geometric grid of step lengths: L(theta + t u) ~ L + t g.u +
    # lambda t^2 / 2 descends for either sign at a saddle (g = 0); away from one the sign
    # with g.u < 0 wins. The grid search needs no while loop and finds the best length.
    t = max_step * shrink ** jnp.arange(num_step_sizes, dtype=theta.dtype)
    t = jnp.concatenate([t, -t])
    losses = jax.vmap(lambda ti: f(theta + ti * u))(t)
    losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
    best = jnp.argmin(losses)
    escaped = (eigenvalue < -zero_tol) & (losses[best] < loss0)
    step = jnp.where(escaped, t[best], 0.0)
    new_theta = theta + step * u
    return SaddleEscape(
        params=unravel(new_theta),
        loss=jnp.where(escaped, losses[best], loss0),
        loss_decrease=jnp.where(escaped, loss0 - losses[best], 0.0),
        step_size=jnp.abs(step),
        eigenvalue=eigenvalue,
        direction=unravel(jnp.where(step < 0, -u, u)),
        escaped=escaped,
    )


# escape_saddle's keywords before they took the package's names (a TypeError names the new).
_ESCAPE_RENAMED = {
    "eigen_method": "method",
    "krylov_dim": "num_matvecs",
    "num_steps": "num_step_sizes",
}


def escape_saddle(
    loss_fn: LossFn,
    params: Params,
    *,
    method: str = "auto",
    num_matvecs: int = 50,
    max_step: float = 1.0,
    num_step_sizes: int = 60,
    shrink: float = 0.8,
    zero_tol: float = spectrum.DEFAULT_ZERO_TOL,
    key: jax.Array | None = None,
    **renamed: Any,
) -> SaddleEscape:
    """Steps from a saddle along the eigenvector of the most negative Hessian eigenvalue.

    The lecture's move (docs/science.md §1): with ``H u = lambda u``, ``lambda < 0``,
    ``L(theta + t u) ~ L(theta) + lambda t^2 / 2 < L(theta)``. The step length is the best of
    the grid ``t = ±max_step * shrink^j``, j < ``num_step_sizes`` (both signs); if the smallest
    eigenvalue is not below ``-zero_tol`` or no grid point lowers the loss, nothing moves.

    Args:
      loss_fn: any pure JAX function of a parameter pytree returning a scalar.
      params: the point (typically a saddle found by :func:`find_critical_point`).
      method: ``"dense"`` (dense Hessian and ``eigh``), ``"lanczos"`` (``num_matvecs``
        Lanczos steps from a random start: the extreme Ritz value converges first), or
        ``"auto"``: dense for P <= ``spectrum.DENSE_EIGH_MAX_PARAMS`` (2000), else Lanczos.
      num_matvecs: Lanczos depth, Hessian-vector products (capped at P).
      max_step: the longest step tried.
      num_step_sizes: grid points per sign.
      shrink: ratio of successive grid points, in (0, 1).
      zero_tol: eigenvalues above ``-zero_tol`` do not count as negative (default
        ``spectrum.DEFAULT_ZERO_TOL``, as every count in the package).
      key: the Lanczos start and restart vectors' randomness (default ``jax.random.key(0)``).

    Returns:
      A :class:`SaddleEscape` (new params, loss, loss decrease, step, eigenvalue, direction).

    Raises:
      TypeError: a keyword of the old names (``eigen_method``, ``krylov_dim``,
        ``num_steps``), naming the new one.
    """
    reject_renamed("escape_saddle", renamed, _ESCAPE_RENAMED)
    if method not in ("auto", "dense", "lanczos"):
        raise ValueError(f"unknown method {method!r}; choose 'auto', 'dense' or 'lanczos'")
    if not (isinstance(max_step, (int, float)) and math.isfinite(max_step) and max_step > 0):
        raise ValueError(f"max_step must be a finite number > 0, got {max_step!r}")
    if not 0 < shrink < 1:
        raise ValueError(f"shrink must lie in (0, 1), got {shrink!r}")
    if not (math.isfinite(zero_tol) and zero_tol >= 0):
        raise ValueError(f"zero_tol must be finite and >= 0, got {zero_tol!r}")
    num_step_sizes = check_int("num_step_sizes", num_step_sizes, 1)
    num_matvecs = check_int("num_matvecs", num_matvecs, 1)
    leaves = jax.tree.leaves(params)
    if not leaves or not all(jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in leaves):
        raise ValueError("params must be a pytree of float arrays")
    out = jax.eval_shape(loss_fn, params)
    if not hasattr(out, "shape") or out.shape != ():
        raise ValueError(f"loss_fn must return a scalar, got shape {getattr(out, 'shape', out)}")
    P = sum(int(np.prod(jnp.shape(x))) for x in leaves)
    if method == "auto":
        method = "dense" if P <= spectrum.DENSE_EIGH_MAX_PARAMS else "lanczos"
    if key is None:
        key = jax.random.key(0)
    return _escape(
        loss_fn, params, method, min(num_matvecs, P), float(max_step), num_step_sizes,
        float(shrink), float(zero_tol), key,
    )  # fmt: skip


def gradient_flat_test(
    loss_fn: LossFn,
    params: Params,
    *,
    options: FinderOptions | None = None,
    key: jax.Array | None = None,
) -> GradientFlatTest:
    """Frye et al.'s residual test at one point, without running a finder.

    Returns a :class:`GradientFlatTest`: ``flat_residual`` (r), ``flat_residual_hessian``
    (r_H), ``hessian_fro_norm`` and ``gradient_flat`` (``r > 0.9`` and ``r_H < 5e-4``; unlike
    :class:`CriticalPoint`'s flag this does not exclude converged points). ``key`` gives the
    random vectors that the final test of :func:`find_critical_point` draws from it.
    """
    cfg = _resolve_config("newton_mr", 1.0, 1, options)
    return _flat_only(loss_fn, cfg, params, jax.random.key(0) if key is None else key)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _flat_only(loss_fn, cfg, params, key):
    theta, unravel = ravel_pytree(params)
    # The key's streams as in ``_find_batched`` for its start 0.
    restart = jax.random.normal(key, theta.shape, theta.dtype)
    _, _, flat_test = _make_finder(loss_fn, cfg, unravel, restart)
    g = jax.grad(lambda t: loss_fn(unravel(t)))(theta)
    r, r_h, fro, _ = flat_test(theta, g, jax.random.fold_in(key, 0))
    opts = cfg.options
    return GradientFlatTest(
        flat_residual=r,
        flat_residual_hessian=r_h,
        hessian_fro_norm=fro,
        gradient_flat=(r > opts.flat_residual) & (r_h < opts.flat_residual_hessian),
    )
