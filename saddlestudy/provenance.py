"""Where a row came from: the package's git commit, version, JAX and device (every row stores
them), and JAX's persistent compilation cache."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import jax

import saddlestudy


@functools.cache
def git_commit() -> str:
    """The package's git commit (with ``+dirty`` for uncommitted changes), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def provenance() -> dict:
    device = jax.devices()[0]
    return {
        "package_version": saddlestudy.__version__,
        "git_commit": git_commit(),
        "jax_version": jax.__version__,
        "device": f"{device.platform}:{device.device_kind}",
        "device_count": jax.device_count(),
    }


def enable_compilation_cache() -> str:
    """Turns JAX's persistent compilation cache on (``SADDLESTUDY_JAX_CACHE`` overrides)."""
    path = os.environ.get(
        "SADDLESTUDY_JAX_CACHE", str(Path.home() / ".cache" / "saddlestudy" / "jax")
    )
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path
