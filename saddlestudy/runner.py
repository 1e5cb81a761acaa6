"""Runs a study: expands it into cells, skips those the store already holds, runs the rest
here (one after another, sharing a :class:`~saddlestudy.pipeline.TrainingCache`) or on Ray,
shows progress, and stores each cell's rows (:mod:`saddlestudy.store`). Rerunning resumes;
``fresh`` starts over. :func:`summarize` is the table the sweep prints.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pyarrow as pa

from saddlestudy import analysis, pipeline, rows, store
from saddlestudy import config as study_config
from saddlestudy.provenance import enable_compilation_cache, provenance
from saddlestudy.study import Cell, Study

DEFAULT_OUT = Path("results")


class Progress:
    """A one-line progress bar on stderr (cells done / total, points found, ETA)."""

    def __init__(self, total: int, quiet: bool, stream=None):
        self.total, self.quiet = total, quiet
        self.stream = stream if stream is not None else sys.stderr
        self.done = self.points = 0
        self.t0 = time.perf_counter()
        self.computed = 0

    def update(self, cell: Cell, rows: int, skipped: bool) -> None:
        self.done += 1
        self.points += rows
        elapsed = time.perf_counter() - self.t0
        if not skipped:
            self.computed += 1
        left = self.total - self.done
        eta = elapsed / self.computed * left if self.computed else 0.0
        if self.quiet:
            status = "skipped (complete)" if skipped else "done"
            print(
                f"cell {self.done}/{self.total} {cell.cell_id} P={cell.num_params} "
                f"{cell.optimizer['name']} {status}: {rows} points",
                file=self.stream, flush=True,
            )  # fmt: skip
            return
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        print(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} cells, "
            f"{self.points} points, ETA {eta:5.0f} s",
            end="" if left else "\n", file=self.stream, flush=True,
        )  # fmt: skip


def _expected_rows(cell: Cell) -> int | None:
    # With loss-level snapshots the count depends on which levels were reached.
    if cell.train.snapshot_losses:
        return None
    return cell.train.replicas * cell.train.num_starts


def _compute_and_write(cfg: Study, cell: Cell, out: str, cache=None) -> int:
    table, arrays = pipeline.run_cell(cfg, cell, cache=cache)
    store.Store(out, cfg.name).write_cell(cell.cell_id, table, arrays)
    return table.num_rows


def run_study(
    cfg: Study,
    out: str | Path = DEFAULT_OUT,
    *,
    fresh: bool = False,
    quiet: bool = False,
    backend: str = "local",
    ray_address: str | None = None,
    ray_gpus_per_task: float = 0.0,
    cell_done: Callable[[Cell], None] | None = None,
) -> Path:
    """Runs (or resumes) a resolved study into ``out/<study>/``; returns that directory.

    Raises:
      study_config.ConfigError: a bad config (before any computation).
      store.StoreLockedError: another sweep holds the directory.
      store.StoreMismatchError: the directory holds another config's results (use fresh).
      store.StoreCorruptError: its manifest.json, config.json or lock cannot be read.

    A float64 study computes with ``jax_enable_x64`` on; the caller's setting is restored.
    """
    if backend not in ("local", "ray"):
        raise study_config.ConfigError(f"backend: unknown {backend!r}; choose 'local' or 'ray'")
    with pipeline.study_precision(cfg.dtype):
        return _run_study(
            cfg, out, fresh=fresh, quiet=quiet, backend=backend, ray_address=ray_address,
            ray_gpus_per_task=ray_gpus_per_task, cell_done=cell_done,
        )  # fmt: skip


def _run_study(
    cfg, out, *, fresh, quiet, backend, ray_address, ray_gpus_per_task, cell_done
) -> Path:
    if cfg.dtype == "float64" and not pipeline.float64_available():
        raise study_config.ConfigError(
            f"study.dtype: float64 is not available on {jax.devices()[0].platform}; set "
            'study.dtype = "float32" (the finder and the counts then run in float32)'
        )
    cells = study_config.expand(cfg)
    cfg_hash = study_config.config_hash(cfg)
    st = store.Store(out, cfg.name)
    with st.lock():
        manifest = {
            "study": cfg.name,
            "config_hash": cfg_hash,
            "cells": [c.cell_id for c in cells],
            **provenance(),
        }
        st.prepare(cfg.to_dict(), cfg_hash, manifest, fresh=fresh)
        progress = Progress(len(cells), quiet)
        todo = []
        for cell in cells:
            problem = st.part_problem(cell.cell_id, _expected_rows(cell))
            if problem is None:
                progress.update(cell, _rows_in(st, cell.cell_id), skipped=True)
                continue
            if problem != "missing":  # recomputed, as the store promises; said, not silent
                print(
                    f"cell {cell.cell_id}: {problem}; recomputing it",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
            todo.append(cell)
        if backend == "local":
            cache = pipeline.TrainingCache()
            for cell in todo:
                num_rows = _compute_and_write(cfg, cell, str(out), cache)
                progress.update(cell, num_rows, skipped=False)
                if cell_done is not None:
                    cell_done(cell)
        else:
            _run_on_ray(cfg, todo, str(out), progress, ray_address, ray_gpus_per_task)
    return st.dir


def _rows_in(st: store.Store, cell_id: str) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(st.part_path(cell_id)).num_rows


def ray_runtime_env(gpus_per_task: float) -> dict:
    """The environment of a Ray task: JAX on the CPU for a task without a GPU (else JAX in it
    would try CUDA on a GPU node); for a share of a GPU, no preallocation and at most that
    share of its memory (XLA's allocator limit, which the memory plan then reads)."""
    if gpus_per_task == 0:
        return {"env_vars": {"JAX_PLATFORMS": "cpu"}}
    if gpus_per_task < 1:
        return {"env_vars": {
            "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
            "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 * gpus_per_task:.2f}",
        }}  # fmt: skip
    return {}


def _ray_cell(cfg: Study, cell: Cell, out: str) -> int:
    """One cell in a Ray worker: the persistent compilation cache on, and the counting method
    planned from the worker's own device and memory share (the driver's may differ)."""
    enable_compilation_cache()
    cell = dataclasses.replace(
        cell, spectrum_method=study_config.spectrum_plan(cfg, cell.num_params)
    )
    return _compute_and_write(cfg, cell, out)


def _run_on_ray(cfg, cells, out, progress, address, gpus_per_task):
    try:
        import ray
    except ImportError:
        raise study_config.ConfigError(
            "backend: ray is not installed; pip install -e '.[ray]'"
        ) from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, log_to_driver=False)
    try:
        # A function of an importable module (never of __main__): a worker unpickles it by
        # importing its module.
        from saddlestudy.runner import _ray_cell as compute

        # Per task, so that it holds on a cluster this process did not start too.
        env = ray_runtime_env(gpus_per_task)
        task = ray.remote(num_gpus=gpus_per_task, runtime_env=env)(compute)
        pending = {task.remote(cfg, cell, out): cell for cell in cells}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                progress.update(pending.pop(ref), ray.get(ref), skipped=False)
    finally:
        if started_here:
            ray.shutdown()


def summarize(table: pa.Table) -> str:
    """Per architecture: P, points, fraction converged / gradient-flat, fractions of converged
    points classified minimum and undetermined (:func:`saddlestudy.analysis.classify`, at the
    rows' primary tolerance), median index of converged points with an exact count."""
    df = analysis.with_status(table.to_pandas())
    zero_tol = float(df["zero_tol"].iloc[0]) if "zero_tol" in df else analysis.DEFAULT_ZERO_TOL
    df["kind"] = analysis.classify(df, zero_tol)
    df["exact_index"] = df[rows.tol_column("num_negative", zero_tol)] / df["num_params"]
    header = (
        f"{'P':>6} {'depth':>5} {'widths':>8} {'act':>6} {'points':>6} {'conv':>6} "
        f"{'flat':>6} {'minima':>7} {'undet.':>7} {'med.index':>9}"
    )
    lines = [header, "-" * len(header)]
    for (P, depth, widths, act), group in df.groupby(analysis.ARCH, sort=True):
        conv = group[group["status"] == "converged"]
        index = conv["exact_index"].dropna()
        n = len(conv)
        minima = float((conv["kind"] == "minimum").sum()) / n if n else math.nan
        undetermined = float((conv["kind"] == "undetermined").sum()) / n if n else math.nan
        median = float(np.median(index)) if len(index) else math.nan
        lines.append(
            f"{P:>6} {depth:>5} {widths:>8} {act:>6} {len(group):>6} "
            f"{len(conv) / len(group):>6.2f} {group['gradient_flat'].mean():>6.2f} "
            f"{minima:>7.2f} {undetermined:>7.2f} {median:>9.4f}"
        )
    lines.append(
        "conv: fraction of starts that reached grad_norm_sq < grad_tol; flat: gradient-flat; "
        f"of converged points: minima: certified no eigenvalue < -{zero_tol:g}; undet.: "
        "bounds that straddle 0; med.index: median over exact counts"
    )
    return "\n".join(lines)
