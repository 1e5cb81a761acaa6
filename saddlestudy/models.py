"""Flax NNX multilayer perceptrons and their functional boundary for Hessian work.

A model is described by an immutable :class:`MLPConfig`. The NNX module :class:`MLP`
is built from it; Hessian, training and critical-point code never touch the module
itself but a pure function of a parameter pytree:

    apply = make_apply(config)           # nnx.split once ...
    params = init_params(config, key)    # ... a plain nested dict of arrays
    y = apply(params, x)                 # nnx.merge inside, pure and jit/vmap-able

``init_params`` can be vmapped over keys to make R independent replicas in one call.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from saddlestudy._checks import is_int

Params = Any  # a nested dict of arrays: {"layers": {0: {"kernel": ..., "bias": ...}, ...}}

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda x: x,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "swish": jax.nn.swish,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
}


def _float_dtype(dtype: Any) -> jnp.dtype:
    """Resolves a float dtype and refuses float64 when JAX would silently give float32."""
    try:
        resolved = jnp.dtype(dtype)
    except TypeError as err:
        raise ValueError(f"unknown dtype {dtype!r}; use 'float32' or 'float64'") from err
    if resolved not in (jnp.float32, jnp.float64):
        raise ValueError(f"dtype must be float32 or float64, got {resolved}")
    if resolved == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "float64 was asked for but JAX's x64 mode is off; call "
            "jax.config.update('jax_enable_x64', True) first"
        )
    return resolved


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """Architecture of a fully connected network.

    Attributes:
      in_features: input size.
      out_features: output size.
      depth: number of hidden layers; 0 makes a linear (affine) model.
      width: hidden width, one int for every hidden layer or a sequence of ``depth`` ints.
      activation: hidden activation, a key of :data:`ACTIVATIONS`.
      use_bias: whether every layer has a bias.
      output_activation: activation applied to the output (``"identity"`` for logits and
        regression; ``"sigmoid"`` for the lecture's logistic unit).
    """

    in_features: int
    out_features: int
    depth: int = 1
    width: int | tuple[int, ...] = 16
    activation: str = "tanh"
    use_bias: bool = True
    output_activation: str = "identity"

    def __post_init__(self):
        if isinstance(self.width, Sequence) and not isinstance(self.width, str):
            object.__setattr__(self, "width", tuple(int(w) for w in self.width))
        for name in ("in_features", "out_features", "depth"):
            value = getattr(self, name)
            if not is_int(value):
                raise ValueError(f"MLPConfig.{name} must be an int, got {value!r}")
        if self.in_features < 1 or self.out_features < 1:
            raise ValueError(
                f"MLPConfig needs in_features >= 1 and out_features >= 1, "
                f"got {self.in_features} and {self.out_features}"
            )
        if self.depth < 0:
            raise ValueError(f"MLPConfig.depth must be >= 0, got {self.depth}")
        if isinstance(self.width, tuple):
            if len(self.width) != self.depth:
                raise ValueError(
                    f"MLPConfig.width lists {len(self.width)} widths for depth {self.depth}"
                )
            widths = self.width
        elif is_int(self.width):
            widths = (int(self.width),)
        else:
            raise ValueError(
                f"MLPConfig.width must be an int or a list of ints, got {self.width!r}"
            )
        if any(w < 1 for w in widths):
            raise ValueError(f"MLPConfig.width must be >= 1, got {self.width!r}")
        for name in ("activation", "output_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(
                    f"unknown {name} {getattr(self, name)!r}; choose from {sorted(ACTIVATIONS)}"
                )

    @property
    def widths(self) -> tuple[int, ...]:
        """Hidden widths, one per hidden layer."""
        if isinstance(self.width, tuple):
            return self.width
        return (self.width,) * self.depth

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """All layer sizes, input to output."""
        return (self.in_features, *self.widths, self.out_features)

    @property
    def num_params(self) -> int:
        """Closed form: sum over layers of fan_in * fan_out (+ fan_out biases)."""
        sizes = self.layer_sizes
        return sum(a * b + (b if self.use_bias else 0) for a, b in zip(sizes[:-1], sizes[1:]))


def linear_autoencoder_config(n: int, p: int) -> MLPConfig:
    """The deep linear autoencoder x -> W2 W1 x of Baldi & Hornik (n -> p -> n, no bias)."""
    return MLPConfig(
        in_features=n, out_features=n, depth=1, width=p, activation="identity", use_bias=False
    )


class MLP(nnx.Module):
    """A multilayer perceptron; ``config`` says its shape (see :class:`MLPConfig`)."""

    def __init__(self, config: MLPConfig, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        dtype = _float_dtype(dtype)
        self.config = config
        sizes = config.layer_sizes
        self.layers = nnx.List(
            [
                # dtype=None: compute in the promoted dtype of inputs and parameters, so a
                # float64 parameter pytree is evaluated in float64 by the same graphdef.
                nnx.Linear(a, b, use_bias=config.use_bias, dtype=None, param_dtype=dtype, rngs=rngs)
                for a, b in zip(sizes[:-1], sizes[1:])
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = ACTIVATIONS[self.config.activation]
        for layer in self.layers[:-1]:
            x = hidden(layer(x))
        return ACTIVATIONS[self.config.output_activation](self.layers[-1](x))

    @property
    def num_params(self) -> int:
        """Number of scalar parameters, counted from the arrays themselves."""
        return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(self, nnx.Param)))


@functools.lru_cache(maxsize=256)
def _graphdef(config: MLPConfig) -> nnx.GraphDef:
    # eval_shape: the static structure without allocating or initialising any weights.
    model = nnx.eval_shape(lambda: MLP(config, rngs=nnx.Rngs(0)))
    return nnx.split(model, nnx.Param)[0]


def init_params(config: MLPConfig, key: jax.Array, dtype: Any = jnp.float32) -> Params:
    """Initialises one replica's parameters as a nested dict of arrays.

    Pure in ``key``, so ``jax.vmap(lambda k: init_params(config, k))(keys)`` makes R
    independent replicas (a leading replica axis on every leaf) in one call.
    """
    model = MLP(config, rngs=nnx.Rngs(params=key), dtype=dtype)
    return nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])


def init_replicas(config: MLPConfig, key: jax.Array, num_replicas: int, dtype=jnp.float32):
    """R independent replicas from one key (split into R streams), stacked on axis 0."""
    keys = jax.random.split(key, num_replicas)
    return jax.vmap(lambda k: init_params(config, k, dtype))(keys)


def make_apply(config: MLPConfig) -> Callable[[Params, jax.Array], jax.Array]:
    """Returns the pure forward pass ``apply(params, x)`` of the MLP described by ``config``.

    The computation runs in the promoted dtype of ``params`` and ``x``.
    """
    graphdef = _graphdef(config)

    def apply(params: Params, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params)(x)

    return apply


def num_params(params: Params) -> int:
    """Number of scalar parameters in a pytree (of one replica)."""
    return sum(int(np.prod(jnp.shape(p))) for p in jax.tree.leaves(params))
