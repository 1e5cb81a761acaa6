"""One-call smoke benchmark for a lent GPU: what each stage costs there, as JSON lines.

    python benchmarks/gpu_smoke.py --out $OUT/gpu_smoke.jsonl

runs every section in at most ``--budget-s`` (450) seconds plus the section running when the
budget runs out (sized for one call of at most 8 minutes on an NVIDIA H200); ``--quick`` runs
each section reduced (one size where a section has several, fewer steps), on a CPU in about a
minute (``tests/test_gpu_smoke.py`` runs it in the default suite).
Every measurement is printed and appended to ``--out`` as one JSON object with a "section"
key, flushed at once, so that a timeout keeps what was measured. A section that raises is
recorded as ``{"section": ..., "error": ...}`` and the next one runs; a section that starts
past the budget is recorded as ``{"section": ..., "skipped": ...}``. Sections, in the order run
(the cheap ones first, the two open-ended ones last; ``--sections`` picks a subset):

- versions: Python and package versions, the devices, the machine, whether x64 is on.
- while_loop: microseconds per iteration of a trivial jitted ``lax.while_loop`` (the launch
  latency that bounds the finders on a GPU).
- train: replica-steps/s of ``train_replicas`` (digits, MLP 64-16-16-10 tanh, iRprop-,
  float32) at R = 8, 256, 2048 (second call; compile time apart), and at R = 256 the speed-up
  of the vmapped engine over a Python loop of single-replica runs (goal on a GPU: >= 200x).
- finder: Newton-MR (float64) from R = 8 and 128 starts, ``batching="vmap"`` vs ``"map"``:
  seconds (second call) and iterations.
- sweep: the default study run twice in this process: cold (compilation included, in-memory
  caches cleared, no persistent compilation cache) and warm seconds, the compile share. Stops
  after the cell that crosses the budget.
- dense_inertia: ``hessian_inertia(method="dense")`` in float64 on tanh MLPs on MNIST-1D at
  P ~ 5k, 10k, 20k, 50k: seconds, counts, peak device memory / (8 P^2); at the smallest P
  the counts of ``numpy.linalg.eigvalsh`` of the dense Hessian too. A size is skipped when
  two P x P float64 matrices exceed half the device memory, or when the previous size's time
  scaled by P^3 would end past the budget.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import math
import platform
import tempfile
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from saddlestudy import (
    config,
    critical,
    data,
    hessian,
    hessian_inertia,
    losses,
    memory,
    models,
    optim,
    pipeline,
    runner,
    train,
)

DEFAULT_OUT = Path(__file__).parent / "results" / "gpu_smoke.jsonl"
LATENCY_NOTE = "equal vmap and map seconds mean the finder is latency-bound (launches), not FLOPs"


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def digits_problem(num_samples: int, depth: int, width: int, dtype: str, l2: float = 0.0):
    ds = data.digits(num_samples=num_samples, seed=0, dtype=dtype)
    arch = models.MLPConfig(ds.input_dim, ds.output_dim, depth=depth, width=width)
    loss_fn = losses.make_loss_fn(
        models.make_apply(arch), jnp.asarray(ds.x), jnp.asarray(ds.y), loss="cross_entropy", l2=l2
    )
    return arch, loss_fn


# -- sections: each yields one dict per measurement ------------------------------------------
def versions(quick: bool, deadline: float):
    from _machine import machine  # benchmarks/ is on sys.path when run as a script

    names = ("jax", "jaxlib", "flax", "optax", "matfree", "numpy")
    devices = jax.devices()
    yield {
        "python": platform.python_version(),
        **{name: importlib.metadata.version(name) for name in names},
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "machine": machine(),
        "x64": bool(jax.config.jax_enable_x64),
    }


def while_loop(quick: bool, deadline: float):
    n = 10_000

    @jax.jit
    def count(limit):
        def body(c):
            return c[0] + 1, c[1] + 1.0

        return jax.lax.while_loop(lambda c: c[0] < limit, body, (0, 0.0))

    first, _ = timed(lambda: count(n))
    second, (i, x) = timed(lambda: count(n))
    assert int(i) == n and float(x) == n
    yield {"iterations": n, "us_per_iteration": 1e6 * second / n, "compile_s": first - second}


def train_throughput(quick: bool, deadline: float):
    steps = 50 if quick else 200
    arch, loss_fn = digits_problem(256, depth=2, width=16, dtype="float32")
    run = functools.partial(
        train.train_replicas,
        loss_fn,
        optimizer=optim.make_optimizer("irprop-", learning_rate=0.01),
        config=train.TrainConfig(num_steps=steps, record_every=steps),
    )
    sizes, loop_R = ((8,), 8) if quick else ((8, 256, 2048), 256)
    inits = models.init_replicas(arch, jax.random.key(0), max(sizes))
    for R in sizes:
        params_R = jax.tree.map(lambda a, R=R: a[:R], inits)
        first, _ = timed(lambda p=params_R: run(p))
        second, result = timed(lambda p=params_R: run(p))
        line = {
            "replicas": R,
            "steps": steps,
            "num_params": arch.num_params,
            "seconds": second,
            "compile_s": first - second,
            "replica_steps_per_s": R * steps / second,
            "finite": bool(np.isfinite(np.asarray(result.loss)).all()),
        }
        if R == loop_R:
            singles = [jax.tree.map(lambda a, r=r: a[r : r + 1], params_R) for r in range(R)]
            timed(lambda s=singles: run(s[0]))  # compiles the R = 1 program
            loop_s, _ = timed(lambda s=singles: [run(p).loss for p in s])
            line.update(loop_seconds=loop_s, engine_over_loop=loop_s / second, goal_gpu=200)
        yield line


def finder(quick: bool, deadline: float):
    max_iters = 20 if quick else 100
    with pipeline.study_precision("float64"):  # x64 restored after
        arch, loss_fn = digits_problem(256, depth=1, width=8, dtype="float64", l2=1e-3)
        sizes = (4,) if quick else (8, 128)
        # Starts after 100 iRprop- steps (one training program for all sizes): the starts
        # then need different numbers of iterations, where vmap and map differ.
        trained = train.train_replicas(
            loss_fn,
            models.init_replicas(arch, jax.random.key(0), max(sizes), dtype=jnp.float64),
            optim.make_optimizer("irprop-", learning_rate=0.01),
            100,
        ).params
        last = {}  # batching -> (R, compile_s, seconds) of its previous size
        for R in sizes:
            starts = jax.tree.map(lambda a, R=R: a[:R], trained)
            for batching in ("vmap", "map"):
                if batching in last:  # map's time grows ~linearly in R (vmap's less)
                    R0, compile_s, seconds = last[batching]
                    projected = compile_s + 2 * seconds * R / R0
                    if time.perf_counter() + projected > deadline:
                        yield {
                            "starts": R,
                            "batching": batching,
                            "skipped": f"projected {projected:.0f} s > budget",
                        }
                        continue
                find = functools.partial(
                    critical.find_critical_points,
                    loss_fn,
                    starts,
                    max_iters=max_iters,
                    batching=batching,
                )
                first, _ = timed(find)
                second, cp = timed(find)
                last[batching] = (R, first - second, second)
                iters = np.asarray(cp.iterations)
                yield {
                    "starts": R,
                    "batching": batching,
                    "num_params": arch.num_params,
                    "max_iters": max_iters,
                    "seconds": second,
                    "compile_s": first - second,
                    "iterations_mean": float(iters.mean()),
                    "iterations_max": int(iters.max()),
                    "converged": int(np.asarray(cp.converged).sum()),
                    "note": LATENCY_NOTE,
                }


class _OverBudget(Exception):
    pass


def sweep_study(quick: bool, deadline: float):
    overrides = {}
    if quick:
        overrides = {
            "train.num_steps": 100,
            "train.record_every": 50,
            "train.replicas": 2,
            "train.snapshot_steps": [50],
            "finder.max_iters": 10,
            "model.width": [2],
            "optimizer": [{"name": "irprop-", "learning_rate": 0.01}],
        }
    cfg = config.load("default", overrides=overrides)
    cache_dir = jax.config.jax_compilation_cache_dir  # sweep.main sets it; run_study does not
    cells_done = []

    def cell_done(cell):
        cells_done.append(cell.cell_id)
        if time.perf_counter() > deadline:
            raise _OverBudget

    seconds = {}
    previous = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    jax.clear_caches()  # cold: nothing compiled earlier in this process is reused
    try:
        for run in ("cold", "warm"):
            cells_done.clear()
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                try:
                    runner.run_study(cfg, out=tmp, fresh=True, quiet=True, cell_done=cell_done)
                except _OverBudget:
                    yield {
                        "run": run,
                        "skipped": f"over budget after {len(cells_done)} cells",
                        "seconds": time.perf_counter() - t0,
                    }
                    return
                seconds[run] = time.perf_counter() - t0
            line = {"run": run, "seconds": seconds[run], "cells": len(cells_done)}
            if run == "cold":
                line.update(
                    overrides=overrides,
                    persistent_cache=f"off (jax_compilation_cache_dir was {cache_dir!r})",
                )
            else:
                line.update(
                    cold_s=seconds["cold"],
                    warm_s=seconds["warm"],
                    compile_share=(seconds["cold"] - seconds["warm"]) / seconds["cold"],
                )
            yield line
    finally:
        jax.config.update("jax_enable_compilation_cache", previous)


def dense_inertia(quick: bool, deadline: float):
    zero_tol = 1e-5
    half_memory = memory.device_memory_bytes("total") / 2
    device = jax.devices()[0]
    with pipeline.study_precision("float64"):  # x64 restored after
        ds = data.load_dataset("mnist1d", num_samples=640, dtype="float64")
        x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
        previous = None  # (P, seconds) of the last size run
        smallest = None  # (P, loss_fn, params, inertia) of the first size run
        for target in (300, 600) if quick else (5000, 10000, 20000, 50000):
            width = round((target - ds.output_dim) / (ds.input_dim + 1 + ds.output_dim))
            arch = models.MLPConfig(ds.input_dim, ds.output_dim, depth=1, width=width)
            P = arch.num_params
            if 2 * P**2 * 8 > half_memory:
                yield {"num_params": P, "skipped": f"2 P^2 float64 > {half_memory:.3g} B"}
                continue
            if previous is not None:
                projected = previous[1] * (P / previous[0]) ** 3
                if time.perf_counter() + projected > deadline:
                    yield {"num_params": P, "skipped": f"projected {projected:.0f} s > budget"}
                    continue
            loss_fn = losses.make_loss_fn(models.make_apply(arch), x, y, loss="cross_entropy")
            params = models.init_params(arch, jax.random.key(P), dtype=jnp.float64)
            seconds, inertia = timed(
                lambda lf=loss_fn, p=params: hessian_inertia(
                    lf, p, zero_tol=zero_tol, method="dense"
                )
            )
            previous = (P, seconds)
            smallest = smallest or (P, loss_fn, params, inertia)
            stats = device.memory_stats()
            peak = None if stats is None else stats.get("peak_bytes_in_use")
            yield {
                "num_params": P,
                "width": width,
                "num_samples": ds.num_samples,
                "zero_tol": zero_tol,
                "seconds": seconds,
                "num_negative": inertia.num_negative,
                "num_zero": inertia.num_zero,
                "num_positive": inertia.num_positive,
                "peak_bytes": peak,
                "peak_over_8P2": None if peak is None else peak / (8 * P**2),
                "peak_note": f"memory_stats() unavailable on {device.platform}"
                if peak is None
                else "process-wide peak since start (sizes run in ascending order)",
            }
        if smallest is not None:  # last, so that its (unchunked) build spoils no peak above
            P, loss_fn, params, inertia = smallest
            ev = np.linalg.eigvalsh(np.asarray(hessian.dense_hessian(loss_fn, params)))
            yield {
                "num_params": P,
                "check": "numpy.linalg.eigvalsh of hessian.dense_hessian",
                "num_negative": inertia.num_negative,
                "eigvalsh_negative": int(np.sum(ev < -zero_tol)),
                "eigvalsh_zero": int(np.sum(np.abs(ev) <= zero_tol)),
                "eigvalsh_positive": int(np.sum(ev > zero_tol)),
                "closest_to_tol": float(np.min(np.abs(np.abs(ev) - zero_tol))),
            }


SECTIONS = {
    "versions": versions,
    "while_loop": while_loop,
    "train": train_throughput,
    "finder": finder,
    "sweep": sweep_study,
    "dense_inertia": dense_inertia,
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every section reduced (CPU test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON lines appended here")
    parser.add_argument("--budget-s", type=float, default=450.0)
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = parser.parse_args(argv)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    deadline = t0 + args.budget_s
    with open(args.out, "a") as out:

        def record(section: str, **fields) -> None:
            elapsed = round(time.perf_counter() - t0, 3)
            line = json.dumps({"section": section, **fields, "elapsed_s": elapsed}, default=str)
            print(line, flush=True)
            out.write(line + "\n")
            out.flush()

        for name in (s for s in SECTIONS if s in args.sections):
            if time.perf_counter() > deadline:
                record(name, skipped=f"over budget ({args.budget_s:g} s)")
                continue
            try:
                for fields in SECTIONS[name](args.quick, deadline):
                    record(name, quick=args.quick, **_plain(fields))
            except Exception as err:  # recorded, and the next section runs
                record(name, error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())


def _plain(fields: dict) -> dict:
    """NumPy / JAX scalars as Python numbers, non-finite floats as None (valid JSON)."""
    out = {}
    for key, value in fields.items():
        if isinstance(value, np.generic | jax.Array):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


if __name__ == "__main__":
    main()
