"""Helpers shared by the test modules: ``from helpers import x64_mode, tiny_study_toml, ...``
(pytest puts this directory on the import path). Fixtures live in ``conftest.py``."""

import contextlib

import jax
from jax._src import monitoring


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
