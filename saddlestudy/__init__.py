"""saddlestudy: when training stalls at a small gradient, is it a local minimum or a saddle?

Public API, by stage of the pipeline (data -> model -> training -> critical points -> spectrum
-> study -> analysis); the modules hold the rest:

- data: :class:`Dataset`, :func:`load_dataset` (``data.DATASETS``).
- models: :class:`MLPConfig`, :class:`MLP`, :func:`make_apply`, :func:`init_params`,
  :func:`init_replicas`; losses: :func:`make_loss_fn`.
- optimizers: :func:`make_optimizer` (optax ``GradientTransformation``; Rprop, Quickprop and
  optax's own); :class:`OptimizerFactory` (the same with traced hyperparameters).
- training: :class:`TrainConfig`, :func:`train_replicas` -> :class:`TrainResult`.
- derivatives: :func:`gradient`, :func:`grad_norm_sq`, :func:`hvp`, :func:`dense_hessian`.
- critical points: :func:`find_critical_point`, :func:`find_critical_points` (with
  :class:`FinderOptions`) -> :class:`CriticalPoint`, :func:`compile_critical_points` (the
  same compiled ahead of time); :func:`gradient_flat_test` ->
  :class:`GradientFlatTest`; :func:`escape_saddle` -> :class:`SaddleEscape`.
- spectrum: :func:`hessian_spectrum`, :func:`hessian_spectra` -> :class:`Spectrum`;
  :func:`hessian_eigenpairs` -> :class:`Eigenpairs`; :func:`hessian_trace` ->
  :class:`TraceEstimate`; :func:`hessian_inertia` -> :class:`Inertia` (one threshold),
  :func:`hessian_inertias` -> a tuple of them (several thresholds, one Hessian build).
- study: :func:`run_study` (a resolved config from ``saddlestudy.config.load``; the command
  line is ``python -m saddlestudy.sweep``).
- analysis: :func:`load` (a study's rows as a pandas DataFrame).

Every result is a frozen dataclass registered as a JAX pytree, with ``to_dict()`` for plain
Python / NumPy values. ``run_study`` and ``load`` are imported on first use (they need
pyarrow and pandas), so ``import saddlestudy`` stays light.
"""

import importlib
from typing import Any

from saddlestudy.critical import (
    CriticalPoint,
    FinderOptions,
    GradientFlatTest,
    SaddleEscape,
    compile_critical_points,
    escape_saddle,
    find_critical_point,
    find_critical_points,
    gradient_flat_test,
)
from saddlestudy.data import Dataset, load_dataset
from saddlestudy.hessian import dense_hessian, grad_norm_sq, gradient, hvp
from saddlestudy.inertia import Inertia, hessian_inertia, hessian_inertias
from saddlestudy.losses import make_loss_fn
from saddlestudy.models import MLP, MLPConfig, init_params, init_replicas, make_apply
from saddlestudy.optim import OptimizerFactory, make_optimizer
from saddlestudy.spectrum import (
    Eigenpairs,
    Spectrum,
    TraceEstimate,
    hessian_eigenpairs,
    hessian_spectra,
    hessian_spectrum,
    hessian_trace,
)
from saddlestudy.train import TrainConfig, TrainResult, train_replicas

__version__ = "0.1.0"

# Entry points imported on first use: name -> module.
_LAZY = {"run_study": "saddlestudy.runner", "load": "saddlestudy.analysis"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'saddlestudy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CriticalPoint",
    "Dataset",
    "Eigenpairs",
    "FinderOptions",
    "GradientFlatTest",
    "Inertia",
    "MLP",
    "MLPConfig",
    "OptimizerFactory",
    "SaddleEscape",
    "Spectrum",
    "TraceEstimate",
    "TrainConfig",
    "TrainResult",
    "compile_critical_points",
    "dense_hessian",
    "escape_saddle",
    "find_critical_point",
    "find_critical_points",
    "grad_norm_sq",
    "gradient",
    "gradient_flat_test",
    "hessian_eigenpairs",
    "hessian_inertia",
    "hessian_inertias",
    "hessian_spectra",
    "hessian_spectrum",
    "hessian_trace",
    "hvp",
    "init_params",
    "init_replicas",
    "load",
    "load_dataset",
    "make_apply",
    "make_loss_fn",
    "make_optimizer",
    "run_study",
    "train_replicas",
]
