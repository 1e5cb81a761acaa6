"""Helpers shared by the test modules: ``from helpers import x64_mode, tiny_study_toml, ...``
(pytest puts this directory on the import path). Fixtures live in ``conftest.py``."""

import contextlib
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import monitoring

from saddlestudy import data, losses, models


@contextlib.contextmanager
def x64_mode(enabled: bool | None = True):
    """JAX's float64 switch set to ``enabled`` (None: left as it is) inside the block, and the
    previous setting restored afterwards, also when the block raises."""
    previous = jax.config.jax_enable_x64
    if enabled is not None:
        jax.config.update("jax_enable_x64", enabled)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def tiny_study_toml(name: str = "default", widths: str = "[2, 3]", seed: int = 0) -> str:
    """A small study: digits (PCA 4, 64 samples), width grid ``widths``, 40 iRprop- steps."""
    return f"""
[study]
name = "{name}"
seed = {seed}
[[data]]
name = "digits"
pca_dim = 4
num_samples = 64
[model]
depth = [1]
width = {widths}
activation = ["tanh"]
[[optimizer]]
name = "irprop-"
learning_rate = 0.01
[train]
num_steps = 40
record_every = 20
replicas = 2
snapshot_steps = [20]
[finder]
method = ["newton_mr"]
max_iters = 20
"""


@contextlib.contextmanager
def count_compilations():
    """A list that gets one entry per program JAX lowers to MLIR (each compilation, also one
    the persistent cache then serves) while the block runs."""
    lowered = []

    def listen(event, *_, **__):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield lowered
    finally:
        # jax.monitoring has no public unregister.
        monitoring.unregister_event_duration_listener(listen)


# The deep linear autoencoder, small: n = 6, p = 2, N = 200, distinct eigenvalues.
AE_N, AE_P = 6, 2
AE_LAMBDA = np.array([3.0, 2.55, 2.05, 1.8, 1.2, 0.65])


@functools.cache
def autoencoder():
    ds = data.linear_autoencoder(AE_N, 200, eigenvalues=AE_LAMBDA, rotate=True, seed=1,
                                 dtype="float64")  # fmt: skip
    config = models.linear_autoencoder_config(AE_N, AE_P)
    loss = losses.make_loss_fn(
        models.make_apply(config), jnp.asarray(ds.x), jnp.asarray(ds.y), loss="half_mse"
    )
    return loss, ds.metadata["eigenvalues"], ds.metadata["eigenvectors"]


AE_SUBSETS = [I for k in range(AE_P + 1) for I in itertools.combinations(range(AE_N), k)]
# The metadata's eigenvalues are AE_LAMBDA sorted descending (it already is).
AE_VALUES = np.array([0.5 * (AE_LAMBDA.sum() - AE_LAMBDA[list(I)].sum()) for I in AE_SUBSETS])


def ae_point(I, C):
    """An analytic critical point: W = W1 W2 projects onto eigenvectors I (|I| <= p).

    Any invertible C between the layers gives the same W (Baldi & Hornik 1989).
    """
    U = autoencoder()[2][:, list(I)]
    K0, K1 = np.zeros((AE_N, AE_P)), np.zeros((AE_P, AE_N))
    K0[:, : len(I)] = U @ C[: len(I), : len(I)]
    K1[: len(I)] = np.linalg.inv(C[: len(I), : len(I)]) @ U.T
    return {"layers": {0: {"kernel": jnp.asarray(K0)}, 1: {"kernel": jnp.asarray(K1)}}}
