"""The lecture's optimizers as optax transformations, and one registry that builds them all.

Rprop (four variants) and QuickProp are written here the way optax writes its own optimizers:
a ``<Name>State`` NamedTuple, ``scale_by_<name>`` with an inner ``init_fn``/``update_fn`` that
works leaf by leaf with ``jax.tree.map`` and branch-free ``jnp.where``, and a public alias.
Both emit the full step (the update that ``optax.apply_updates`` adds to the parameters), not a
direction to be scaled, so they should come last in an ``optax.chain``.

``make_optimizer(name, **hparams)`` builds any optimizer in ``OPTIMIZERS`` as an
``optax.GradientTransformationExtraArgs``: every one of them accepts ``value=`` (the loss at the
current parameters), which only iRprop+ reads. Hyperparameters are checked when it is built.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

RPROP_VARIANTS = ("rprop-", "rprop+", "irprop-", "irprop+")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", *RPROP_VARIANTS, "quickprop")

ScalarLike = float | jax.Array


# --------------------------------------------------------------------------------------------
# Rprop
# --------------------------------------------------------------------------------------------


class RpropState(NamedTuple):
    """State of :func:`scale_by_rprop`; every tree has the structure and dtype of the params.

    Attributes:
      step_sizes: per-weight step size Δ.
      prev_grads: the gradient g_{t-1} that the next sign comparison uses (set to zero where the
        last step saw a sign change, in every variant but rprop-).
      prev_updates: the update Δθ_{t-1} emitted by the last step (what rprop+ and irprop+ undo).
      prev_value: the loss at the last step, a scalar (irprop+ only; +inf before the first step).
    """

    step_sizes: optax.Updates
    prev_grads: optax.Updates
    prev_updates: optax.Updates
    prev_value: jax.Array


def scale_by_rprop(
    learning_rate: ScalarLike,
    *,
    variant: str = "irprop-",
    eta_minus: ScalarLike = 0.5,
    eta_plus: ScalarLike = 1.2,
    min_step_size: ScalarLike = 1e-6,
    max_step_size: ScalarLike = 50.0,
) -> optax.GradientTransformationExtraArgs:
    """Rprop: a per-weight step size that adapts to the sign of the gradient.

    Per weight, with s = sign(g_t)·sign(g_{t-1}): if s > 0, Δ ← min(η⁺Δ, Δ_max); if s < 0,
    Δ ← max(η⁻Δ, Δ_min); then

    - ``"rprop-"``: always step -sign(g_t)·Δ.
    - ``"rprop+"``: on a sign change undo the previous step (emit -Δθ_{t-1}) and set g_t := 0;
      otherwise step -sign(g_t)·Δ.
    - ``"irprop-"``: on a sign change set g_t := 0 and do not step (so Δ is left alone at the
      next step); otherwise step -sign(g_t)·Δ. This is ``torch.optim.Rprop``.
    - ``"irprop+"``: as rprop+, but undo only where the loss went up (L_t > L_{t-1}); the update
      needs the loss, ``update(grads, state, params, value=loss)``.

    As in ``torch.optim.Rprop`` the clip to [Δ_min, Δ_max] is applied at every step, also where
    s = 0 (so a learning rate outside the bounds is clipped at the first step). Signs are
    multiplied rather than gradients, so tiny gradients whose product underflows still count.

    Args:
      learning_rate: the initial step size Δ₀ of every weight.
      variant: one of ``"rprop-"``, ``"rprop+"``, ``"irprop-"``, ``"irprop+"``.
      eta_minus: factor η⁻ in (0, 1) that shrinks Δ after a sign change.
      eta_plus: factor η⁺ > 1 that grows Δ while the sign holds.
      min_step_size: lower bound Δ_min on the step size.
      max_step_size: upper bound Δ_max on the step size.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose updates are the steps themselves
      (``optax.apply_updates(params, updates)`` takes them); it reads ``value=`` for irprop+.

    References:
      Riedmiller & Braun, "A direct adaptive method for faster backpropagation learning: the
      RPROP algorithm", ICNN 1993. Igel & Hüsken, "Improving the Rprop learning algorithm", 2000,
      and "Empirical evaluation of the improved Rprop learning algorithms", Neurocomputing 2003.
    """
    # Why not optax.rprop: in optax 0.2.8 it emits each update one step late (its update at step
    # t is the step computed at t-1), e.g. 0, -0.1, -0.12, 0, 0 instead of torch's -0.1, -0.12,
    # -0.144, 0, -0.072 for lr 0.1 and gradients 1, 1, 1, -1, 1 (tests/test_optim.py pins this).
    if variant not in RPROP_VARIANTS:
        raise ValueError(f"unknown rprop variant {variant!r}; known: {', '.join(RPROP_VARIANTS)}")
    _check_hparams(
        learning_rate=learning_rate,
        eta_minus=eta_minus,
        eta_plus=eta_plus,
        min_step_size=min_step_size,
        max_step_size=max_step_size,
    )

    def init_fn(params):
        return RpropState(
            step_sizes=optax.tree.full_like(params, learning_rate),
            prev_grads=optax.tree.zeros_like(params),
            prev_updates=optax.tree.zeros_like(params),
            prev_value=jnp.asarray(jnp.inf, dtype=_value_dtype(params)),
        )

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if variant == "irprop+":
            if value is None:
                raise ValueError(
                    "irprop+ undoes a step only when the loss went up, so it needs the loss: "
                    "call update(grads, state, params, value=loss)"
                )
            value = jnp.asarray(value, dtype=state.prev_value.dtype)
            loss_went_up = value > state.prev_value
        else:
            value = state.prev_value
            loss_went_up = None

        agreement = jax.tree.map(
            lambda g, prev_g: jnp.sign(g) * jnp.sign(prev_g), updates, state.prev_grads
        )
        step_sizes = jax.tree.map(
            lambda s, step_size: jnp.clip(
                step_size * jnp.where(s > 0, eta_plus, jnp.where(s < 0, eta_minus, 1.0)),
                min_step_size,
                max_step_size,
            ),
            agreement,
            state.step_sizes,
        )

        def step(s, g, step_size, prev_update):
            plain = -jnp.sign(g) * step_size
            if variant == "rprop-":
                return plain
            if variant == "irprop-":
                undo = jnp.zeros_like(plain)
            elif variant == "rprop+":
                undo = -prev_update
            else:  # irprop+
                undo = jnp.where(loss_went_up, -prev_update, jnp.zeros_like(prev_update))
            return jnp.where(s < 0, undo, plain)

        updates_out = jax.tree.map(step, agreement, updates, step_sizes, state.prev_updates)
        if variant == "rprop-":
            prev_grads = updates
        else:
            prev_grads = jax.tree.map(
                lambda s, g: jnp.where(s < 0, jnp.zeros_like(g), g), agreement, updates
            )
        updates_out = optax.tree.cast_like(updates_out, state.prev_updates)
        new_state = RpropState(
            step_sizes=optax.tree.cast_like(step_sizes, state.step_sizes),
            prev_grads=optax.tree.cast_like(prev_grads, state.prev_grads),
            prev_updates=updates_out,
            prev_value=value,
        )
        return updates_out, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def rprop(
    learning_rate: ScalarLike,
    *,
    variant: str = "irprop-",
    eta_minus: ScalarLike = 0.5,
    eta_plus: ScalarLike = 1.2,
    min_step_size: ScalarLike = 1e-6,
    max_step_size: ScalarLike = 50.0,
) -> optax.GradientTransformationExtraArgs:
    """The Rprop optimizer (default iRprop-, the variant of ``torch.optim.Rprop``).

    :func:`scale_by_rprop` already emits the step itself (its learning rate is the initial step
    size, not a scale), so the optimizer is that transformation with nothing chained after it.

    Args:
      learning_rate: the initial step size Δ₀ of every weight.
      variant: one of ``"rprop-"``, ``"rprop+"``, ``"irprop-"``, ``"irprop+"``.
      eta_minus: factor η⁻ in (0, 1) that shrinks Δ after a sign change.
      eta_plus: factor η⁺ > 1 that grows Δ while the sign holds.
      min_step_size: lower bound Δ_min on the step size.
      max_step_size: upper bound Δ_max on the step size.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; irprop+ needs ``value=loss`` in ``update``.

    Examples:
      >>> import jax.numpy as jnp
      >>> opt = rprop(0.1)
      >>> params = jnp.array([0.0])
      >>> state = opt.init(params)
      >>> updates, state = opt.update(jnp.array([1.0]), state)
      >>> print(optax.apply_updates(params, updates))
      [-0.1]

    References:
      Riedmiller & Braun 1993; Igel & Hüsken 2000, 2003 (see :func:`scale_by_rprop`).
    """
    return scale_by_rprop(
        learning_rate,
        variant=variant,
        eta_minus=eta_minus,
        eta_plus=eta_plus,
        min_step_size=min_step_size,
        max_step_size=max_step_size,
    )


# --------------------------------------------------------------------------------------------
# QuickProp
# --------------------------------------------------------------------------------------------


class QuickpropState(NamedTuple):
    """State of :func:`scale_by_quickprop`; every tree has the structure and dtype of the params.

    Attributes:
      prev_grads: the gradient g_{t-1} of the last step.
      prev_steps: the step Δθ_{t-1} emitted by the last step (zero before the first).
    """

    prev_grads: optax.Updates
    prev_steps: optax.Updates


def scale_by_quickprop(
    learning_rate: ScalarLike,
    *,
    max_growth: ScalarLike = 1.75,
) -> optax.GradientTransformationExtraArgs:
    """QuickProp: per weight, jump to the minimum of the parabola through the last two slopes.

    Sign conventions: g_t = ∂L/∂θ at θ_t (the gradient optax passes in, Fahlman's slope S(t)),
    and Δθ_t is the step that is emitted, so that θ_{t+1} = θ_t + Δθ_t. Per weight:

    - previous step zero (the first step, or a weight that stopped): Δθ_t = -ε·g_t.
    - otherwise the parabola jump Δθ_t = Δθ_{t-1}·g_t / (g_{t-1} - g_t): on
      L = ½a(θ - c)² the slopes give g_{t-1} - g_t = -a·Δθ_{t-1}, so the jump is -(θ_t - c) and
      lands on the minimum c (the secant method).
    - growth cap μ: where g_t has the sign of g_{t-1} and |g_t| ≥ μ/(1+μ)·|g_{t-1}| (the
      parabola would grow the step by more than μ, or has no minimum ahead), Δθ_t = μ·Δθ_{t-1}.
    - the gradient term -ε·g_t is added to the jump only where the slope still points the way of
      the previous step, i.e. -g_t has the sign of Δθ_{t-1} (the minimum was not overshot);
      after an overshoot the jump is used alone, which keeps the secant property.

    The parabola's denominator is replaced by 1 where it is zero; there the cap is taken, or
    g_t = g_{t-1} = 0 and the jump is zero, so no branch divides by zero. The parabola ratio is
    bounded by max(μ, 1) wherever it is used. Fahlman's weight decay is
    ``optax.add_decayed_weights`` chained before this transformation.

    Args:
      learning_rate: ε, the factor of the plain gradient term.
      max_growth: μ > 0, the most a step may grow over the previous one (Fahlman: 1.75).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose updates are the steps Δθ_t themselves.

    References:
      Fahlman, "An empirical study of learning speed in back-propagation networks", Technical
      Report CMU-CS-88-162, Carnegie Mellon University, 1988.
    """
    _check_hparams(learning_rate=learning_rate, max_growth=max_growth)
    shrink = max_growth / (1.0 + max_growth)

    def init_fn(params):
        return QuickpropState(
            prev_grads=optax.tree.zeros_like(params),
            prev_steps=optax.tree.zeros_like(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def step(g, prev_g, prev_step):
            gradient_step = -learning_rate * g
            capped = (jnp.sign(g) * jnp.sign(prev_g) > 0) & (jnp.abs(g) >= shrink * jnp.abs(prev_g))
            denominator = prev_g - g
            ratio = g / jnp.where(denominator == 0, jnp.ones_like(denominator), denominator)
            jump = jnp.where(capped, max_growth, ratio) * prev_step
            not_overshot = jnp.sign(g) * jnp.sign(prev_step) < 0
            quick = jump + jnp.where(not_overshot, gradient_step, jnp.zeros_like(gradient_step))
            return jnp.where(prev_step == 0, gradient_step, quick)

        steps = jax.tree.map(step, updates, state.prev_grads, state.prev_steps)
        steps = optax.tree.cast_like(steps, state.prev_steps)
        prev_grads = optax.tree.cast_like(updates, state.prev_grads)
        return steps, QuickpropState(prev_grads=prev_grads, prev_steps=steps)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def quickprop(
    learning_rate: ScalarLike,
    *,
    max_growth: ScalarLike = 1.75,
) -> optax.GradientTransformationExtraArgs:
    """The QuickProp optimizer (Fahlman 1988); see :func:`scale_by_quickprop`.

    :func:`scale_by_quickprop` already emits the step itself, so the optimizer is that
    transformation with nothing chained after it.

    Args:
      learning_rate: ε, the factor of the plain gradient term.
      max_growth: μ > 0, the most a step may grow over the previous one.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    References:
      Fahlman, "An empirical study of learning speed in back-propagation networks", 1988.
    """
    return scale_by_quickprop(learning_rate, max_growth=max_growth)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def _sgd(learning_rate: float) -> optax.GradientTransformation:
    return optax.sgd(learning_rate)


def _momentum(learning_rate: float, momentum: float = 0.9) -> optax.GradientTransformation:
    return optax.sgd(learning_rate, momentum=momentum)


def _nesterov(learning_rate: float, momentum: float = 0.9) -> optax.GradientTransformation:
    return optax.sgd(learning_rate, momentum=momentum, nesterov=True)


def _adam(
    learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def _rprop_variant(variant: str) -> Callable[..., optax.GradientTransformation]:
    def build(
        learning_rate: float,
        eta_minus: float = 0.5,
        eta_plus: float = 1.2,
        min_step_size: float = 1e-6,
        max_step_size: float = 50.0,
    ) -> optax.GradientTransformation:
        return rprop(
            learning_rate,
            variant=variant,
            eta_minus=eta_minus,
            eta_plus=eta_plus,
            min_step_size=min_step_size,
            max_step_size=max_step_size,
        )

    return build


_BUILDERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": _sgd,
    "momentum": _momentum,
    "nesterov": _nesterov,
    "adam": _adam,
    **{variant: _rprop_variant(variant) for variant in RPROP_VARIANTS},
    "quickprop": quickprop,
}


def make_optimizer(name: str, **hparams: Any) -> optax.GradientTransformationExtraArgs:
    """Builds the optimizer ``name`` of ``OPTIMIZERS`` with the given hyperparameters.

    Hyperparameters (``learning_rate`` is required by all):

    - ``"sgd"``: ``learning_rate``.
    - ``"momentum"``, ``"nesterov"``: ``learning_rate``, ``momentum=0.9`` (``optax.sgd``).
    - ``"adam"``: ``learning_rate``, ``b1=0.9``, ``b2=0.999``, ``eps=1e-8``.
    - ``"rprop-"``, ``"rprop+"``, ``"irprop-"``, ``"irprop+"``: ``learning_rate`` (the initial
      step size), ``eta_minus=0.5``, ``eta_plus=1.2``, ``min_step_size=1e-6``,
      ``max_step_size=50.0`` (:func:`rprop`).
    - ``"quickprop"``: ``learning_rate`` (ε), ``max_growth=1.75`` (:func:`quickprop`).

    Args:
      name: the optimizer's name.
      **hparams: its hyperparameters, as Python or NumPy numbers.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; every optimizer accepts ``value=loss`` in
      ``update`` (only irprop+ needs it).

    Raises:
      ValueError: for an unknown name or hyperparameter, a missing learning rate, or a value
        out of range; the message names the problem.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    builder = _BUILDERS[name]
    parameters = inspect.signature(builder).parameters
    unknown = sorted(set(hparams) - set(parameters))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for optimizer {name!r}; "
            f"allowed: {', '.join(parameters)}"
        )
    missing = [
        key
        for key, parameter in parameters.items()
        if parameter.default is inspect.Parameter.empty and key not in hparams
    ]
    if missing:
        raise ValueError(f"optimizer {name!r} needs hyperparameter(s) {', '.join(missing)}")
    resolved = {
        key: hparams.get(key, parameter.default)
        for key, parameter in parameters.items()
        if key in hparams or parameter.default is not inspect.Parameter.empty
    }
    try:
        _check_hparams(**resolved)
    except ValueError as error:
        raise ValueError(f"optimizer {name!r}: {error}") from None
    return optax.with_extra_args_support(builder(**resolved))


@dataclasses.dataclass(frozen=True)
class OptimizerFactory:
    """``make_optimizer(name, **hparams)`` with the values given at call time.

    Equal for equal names (so hashable as a static ``jax.jit`` argument), it lets a compiled
    trainer take the hyperparameters as traced arguments: ``train_replicas(loss_fn, params,
    OptimizerFactory("adam"), config, hyperparams={"learning_rate": 0.01})`` compiles once for
    every learning rate. Traced values skip the range checks, so check concrete values first
    (``make_optimizer`` with the same arguments).
    """

    name: str

    def __post_init__(self):
        if self.name not in _BUILDERS:
            raise ValueError(f"unknown optimizer {self.name!r}; known: {', '.join(OPTIMIZERS)}")

    def __call__(self, **hparams: Any) -> optax.GradientTransformationExtraArgs:
        return make_optimizer(self.name, **hparams)


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------

# name -> (lower bound, whether it is included, upper bound, whether it is included)
_RANGES: dict[str, tuple[float, bool, float, bool]] = {
    "learning_rate": (0.0, False, math.inf, False),
    "min_step_size": (0.0, False, math.inf, False),
    "max_step_size": (0.0, False, math.inf, False),
    "eta_minus": (0.0, False, 1.0, False),
    "eta_plus": (1.0, False, math.inf, False),
    "max_growth": (0.0, False, math.inf, False),
    "momentum": (0.0, True, 1.0, False),
    "b1": (0.0, True, 1.0, False),
    "b2": (0.0, True, 1.0, False),
    "eps": (0.0, True, math.inf, False),
}


def _check_hparams(**hparams: Any) -> None:
    """Raises a one-line ValueError for a concrete hyperparameter out of its range.

    Traced values (a hyperparameter under ``jax.jit`` or ``jax.vmap``) cannot be checked and are
    let through.
    """
    values = {}
    for key, value in hparams.items():
        if isinstance(value, jax.core.Tracer):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a real number, got {value!r}") from None
        low, low_closed, high, high_closed = _RANGES[key]
        above = number >= low if low_closed else number > low
        below = number <= high if high_closed else number < high
        if not (above and below and math.isfinite(number)):
            interval = f"{'[' if low_closed else '('}{low:g}, {high:g}{']' if high_closed else ')'}"
            raise ValueError(f"{key} must be finite and in {interval}, got {value!r}")
        values[key] = number
    if values.get("min_step_size", 0.0) > values.get("max_step_size", math.inf):
        raise ValueError(
            f"min_step_size ({values['min_step_size']:g}) must not exceed "
            f"max_step_size ({values['max_step_size']:g})"
        )


def _value_dtype(params: optax.Params) -> jnp.dtype:
    """The float dtype of the params (promoted over leaves), used for the stored loss."""
    return jnp.result_type(float, *jax.tree.leaves(params))
