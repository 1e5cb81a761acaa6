"""Fixtures for every test: strict numerics, fresh compilation caches per module, float64
switches that always restore the setting, and small finished studies shared by the tests that
read one. Plain helpers are in ``helpers.py``."""

import fcntl
import os
import subprocess
import sys
from pathlib import Path

# The suite is compile-bound (most of its programs run for milliseconds): LLVM's backend
# optimisation is switched off for it (XLA's own graph passes still run), which takes about a
# quarter off its time. Set before JAX starts; subprocesses of the tests inherit it.
# Results can differ from an optimised build in the last bits; no test compares across the two.
os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"])
)

import jax  # noqa: E402
import pytest  # noqa: E402
from helpers import tiny_study_toml, x64_mode  # noqa: E402

from saddlestudy.sweep import enable_compilation_cache  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# The persistent compilation cache, as in a sweep: a second run of the suite reads its
# programs instead of compiling them (the first run from a fresh clone compiles them all).
# Every program, however quick to compile: the tests compile hundreds of small ones.
enable_compilation_cache()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# Fixtures that run a whole study: a test that uses one is end to end.
_E2E_FIXTURES = ("tiny_study", "paper_quick")
# The longest modules start first, so that with several workers none is left running alone at
# the end (the quick paper reproduction behind test_reproduce takes minutes); the notebooks,
# which wait for that reproduction, come last.
_FIRST = ("test_reproduce", "test_sweep", "test_inertia", "test_devices", "test_critical")
_LAST = ("test_notebooks",)


def _module_rank(item) -> int:
    name = item.path.stem
    if name in _FIRST:
        return _FIRST.index(name) - len(_FIRST)
    return 1 if name in _LAST else 0


def pytest_collection_modifyitems(config, items):
    """Tests that use a finished study are marked ``e2e``. Tests marked ``slow`` run only when
    the ``-m`` expression names them (``-m slow``), so that ``-m "not e2e"`` does not bring
    them back."""
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in _E2E_FIXTURES):
            item.add_marker(pytest.mark.e2e)
    items.sort(key=_module_rank)  # stable: the order within a module is kept
    if "slow" in (config.getoption("markexpr") or ""):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


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
    with x64_mode(True):
        yield


@pytest.fixture
def x32():
    """Run a test with float64 off (what a caller who never enabled it has)."""
    with x64_mode(False):
        yield


@pytest.fixture
def restore_x64():
    """Leave the float64 setting as the test found it, whatever the test does with it."""
    with x64_mode(None):
        yield


def _once(tmp_path_factory, name: str, make):
    """``make(directory)`` run once per test session, also when pytest-xdist runs several
    worker processes: the first worker to get here builds it under a lock in the directory
    the workers share, the others wait and reuse it."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    directory, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            directory.mkdir(exist_ok=True)
            make(directory)
            done.touch()
    return directory


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """A small finished study at ``<root>/results/default``, shared by the tests that read one."""
    from saddlestudy import config, sweep

    def make(root):
        path = root / "tiny.toml"
        path.write_text(tiny_study_toml())
        with x64_mode(None):
            sweep.run_study(config.load(path), root / "results", quiet=True)

    return _once(tmp_path_factory, "study", make) / "results" / "default"


@pytest.fixture(scope="session")
def paper_quick(tmp_path_factory):
    """``scripts/reproduce_paper.sh --quick`` run once: ``(results_dir, figures_dir, log)``."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_paper.sh"

    def make(root):
        run = subprocess.run(
            ["bash", str(script), "--quick", "--out", str(root / "results_quick"),
             "--figures", str(root / "figures_quick")],
            env={**os.environ, "PYTHON": sys.executable},
            capture_output=True,
            text=True,
            timeout=900,
        )  # fmt: skip
        (root / "log.txt").write_text(run.stdout)
        assert run.returncode == 0, run.stderr[-3000:]

    root = _once(tmp_path_factory, "paper", make)
    return root / "results_quick", root / "figures_quick", (root / "log.txt").read_text()
