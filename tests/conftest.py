"""Fixtures for every test: strict numerics, fresh compilation caches per module, float64
switches that always restore the setting, and small finished studies shared by the tests that
read one. Plain helpers are in ``helpers.py``."""

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# The suite is compile-bound (most of its programs run for milliseconds): LLVM's backend
# optimisation is switched off for it (XLA's own graph passes still run), which takes about a
# quarter off its time. Set before JAX starts; subprocesses of the tests inherit it; an
# ``--xla_backend_optimization_level`` already in XLA_FLAGS is left as it is.
# Results can differ from an optimised build in the last bits; no test compares across the two.
_FLAGS = ["--xla_backend_optimization_level=0"]
# With several pytest-xdist workers on as many cores, one thread each: multithreaded BLAS,
# LAPACK and XLA kernels in every worker oversubscribe the cores (the dense-Hessian tests ran
# 3-10x slower beside the other worker than alone).
if os.environ.get("PYTEST_XDIST_WORKER"):
    _FLAGS += ["--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1"]
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, "1")
_FLAGS = [f for f in _FLAGS if f.split("=")[0] not in os.environ.get("XLA_FLAGS", "")]
os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), *_FLAGS]))

import jax  # noqa: E402
import pytest  # noqa: E402
from helpers import tiny_study_toml, x64_mode  # noqa: E402

from saddlestudy.provenance import enable_compilation_cache  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# The persistent compilation cache, as in a sweep: a second run of the suite reads its
# programs instead of compiling them (the first run from a fresh clone compiles them all).
# Every program, however quick to compile: the tests compile hundreds of small ones.
enable_compilation_cache()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# Fixtures that run a whole study: a test that uses one is end to end.
_E2E_FIXTURES = ("tiny_study", "paper_quick")


def pytest_collection_modifyitems(config, items):
    """Tests that use a finished study are marked ``e2e``. Tests marked ``slow`` run only when
    the ``-m`` expression names them (``-m slow``), so that ``-m "not e2e"`` does not bring
    them back."""
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in _E2E_FIXTURES):
            item.add_marker(pytest.mark.e2e)
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
    shared = _shared_dir(tmp_path_factory)
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
    from saddlestudy import config, runner

    def make(root):
        path = root / "tiny.toml"
        path.write_text(tiny_study_toml())
        with x64_mode(None):
            runner.run_study(config.load(path), root / "results", quiet=True)

    return _once(tmp_path_factory, "study", make) / "results" / "default"


def _shared_dir(tmp_path_factory) -> Path:
    """The temporary directory every worker process of this session sees."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


_PAPER_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_paper.sh"


@pytest.fixture(scope="session", autouse=True)
def _paper_in_background(request, tmp_path_factory):
    """Starts ``scripts/reproduce_paper.sh --quick`` when the session begins, if a selected
    test needs it, so that its minutes overlap the other tests (pytest-xdist schedules the
    modules with the most tests first, which would leave it running alone at the end). One
    worker starts it; ``paper_quick`` waits for it."""
    if os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0" or not any(
        "paper_quick" in getattr(item, "fixturenames", ()) for item in request.session.items
    ):
        yield
        return
    root = _shared_dir(tmp_path_factory) / "paper"
    root.mkdir(exist_ok=True)
    command = (
        f'bash "{_PAPER_SCRIPT}" --quick --out "{root}/results_quick" '
        f'--figures "{root}/figures_quick" > "{root}/log.txt" 2> "{root}/err.txt"; '
        f'echo $? > "{root}/rc.tmp" && mv "{root}/rc.tmp" "{root}/rc"'
    )
    process = subprocess.Popen(
        ["bash", "-c", command],
        env={**os.environ, "PYTHON": sys.executable},
        start_new_session=True,  # its own process group: stopped with all its children
    )
    yield
    if process.poll() is None:  # the session ended first (-x, an interrupt): stop it
        os.killpg(process.pid, signal.SIGTERM)
    process.wait()


@pytest.fixture(scope="session")
def paper_quick(tmp_path_factory):
    """``scripts/reproduce_paper.sh --quick``, run once in the background from the start of
    the session: ``(results_dir, figures_dir, log)`` once it has finished."""
    root = _shared_dir(tmp_path_factory) / "paper"
    rc, deadline = root / "rc", time.monotonic() + 900
    while not rc.exists():
        assert time.monotonic() < deadline, "reproduce_paper.sh --quick took over 15 minutes"
        time.sleep(1.0)
    assert rc.read_text().strip() == "0", (root / "err.txt").read_text()[-3000:]
    return root / "results_quick", root / "figures_quick", (root / "log.txt").read_text()
