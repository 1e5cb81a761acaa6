"""Strict numerics for every test, and an x64 switch that always restores the setting."""

import contextlib

import jax
import pytest
from jax._src import monitoring

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="module", autouse=True)
def _fresh_jit_caches():
    """Each test module starts with JAX's in-memory compilation caches emptied: the programs
    of the modules before it (every loss closure compiles its own) are released, so the
    default suite's one process does not grow with the number of modules (it was aborted by
    the C++ runtime near the end of the suite before this)."""
    jax.clear_caches()
    yield


@pytest.fixture
def x64():
    """Run a test in float64; the previous setting is restored afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def tiny_study_toml(name: str = "default", widths: str = "[2, 3]", seed: int = 0) -> str:
    """A small study: digits (PCA 4, 64 samples), width grid ``widths``, 40 iRprop- steps.

    Shared by the session's finished study below and by the sweep tests (``from conftest
    import tiny_study_toml``).
    """
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


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """A small finished study at ``<root>/results/default``, shared by the tests that read one."""
    from saddlestudy import config, sweep

    previous = jax.config.jax_enable_x64
    root = tmp_path_factory.mktemp("study")
    path = root / "tiny.toml"
    path.write_text(tiny_study_toml())
    try:
        return sweep.run_study(config.load(path), root / "results", quiet=True)
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.fixture(scope="session")
def paper_quick(tmp_path_factory):
    """``scripts/reproduce_paper.sh --quick`` run once: ``(results_dir, figures_dir, log)``."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = tmp_path_factory.mktemp("paper")
    results, figures = root / "results_quick", root / "figures_quick"
    script = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_paper.sh"
    run = subprocess.run(
        ["bash", str(script), "--quick", "--out", str(results), "--figures", str(figures)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return results, figures, run.stdout


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
