"""saddlestudy: when training stalls at a small gradient, is it a local minimum or a saddle?

Public API (the stages of the pipeline, data -> model -> training -> spectrum):
"""

from saddlestudy.critical import (
    CriticalPoint,
    escape_saddle,
    find_critical_point,
    find_critical_points,
)
from saddlestudy.hessian import dense_hessian, grad_norm_sq, gradient, hvp
from saddlestudy.inertia import Inertia, hessian_inertia
from saddlestudy.losses import make_loss_fn
from saddlestudy.models import MLP, MLPConfig, init_params, init_replicas, make_apply
from saddlestudy.spectrum import (
    Eigenpairs,
    Spectrum,
    hessian_eigenpairs,
    hessian_spectra,
    hessian_spectrum,
    hessian_trace,
)

__version__ = "0.1.0"

__all__ = [
    "CriticalPoint",
    "Eigenpairs",
    "Inertia",
    "MLP",
    "MLPConfig",
    "Spectrum",
    "dense_hessian",
    "escape_saddle",
    "find_critical_point",
    "find_critical_points",
    "grad_norm_sq",
    "gradient",
    "hessian_eigenpairs",
    "hessian_inertia",
    "hessian_spectra",
    "hessian_spectrum",
    "hessian_trace",
    "hvp",
    "init_params",
    "init_replicas",
    "make_apply",
    "make_loss_fn",
]
