"""The machine a benchmark ran on, for the record (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    """Load average, CPU model, cores, memory, JAX version and platform, BLAS threads."""
    import jax  # after the caller has set XLA_FLAGS

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
        with open("/proc/meminfo") as f:
            mem = int(next(line.split()[1] for line in f if line.startswith("MemTotal"))) / 2**20
    except (OSError, StopIteration):
        mem = float("nan")
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())  # other users of the cores
    return (
        f"load average {load}; {model}, {os.cpu_count()} cores, {mem:.0f} GiB, "
        f"JAX {jax.__version__} {jax.devices()[0].platform}, OPENBLAS_NUM_THREADS={blas}"
    )
