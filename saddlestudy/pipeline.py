"""One cell of a study, end to end: train the replicas, take the starts along training, run the
finder from every start (float32 studies then polished in float64), count the Hessian's
eigenvalues at every point reached, and build the cell's rows (:mod:`saddlestudy.rows`) and
spectra. :func:`run_cell` is the entry point; :mod:`saddlestudy.runner` runs the cells of a
study and stores them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import json
import math
import time
import warnings
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
from jax.flatten_util import ravel_pytree

from saddlestudy import config as study_config
from saddlestudy import (
    critical,
    data,
    hessian,
    inertia,
    losses,
    models,
    optim,
    rows,
    spectrum,
    train,
)
from saddlestudy.provenance import provenance
from saddlestudy.study import Cell, FinderSettings, Study


@functools.lru_cache(maxsize=16)
def _dataset(dtype: str, entry_json: str) -> data.Dataset:
    entry = json.loads(entry_json)
    return study_config.load_cell_dataset(entry, dtype)


@functools.lru_cache(maxsize=64)
def _loss_fn(dtype: str, entry_json: str, arch: models.MLPConfig, loss: str, l2: float):
    # Cached so that cells sharing data and architecture share one loss_fn object, and so
    # one compiled finder / spectrum program (jit caches are keyed on the function).
    ds = _dataset(dtype, entry_json)
    x = jnp.asarray(ds.x)
    y = loss_targets(ds, loss)
    return losses.make_loss_fn(models.make_apply(arch), x, y, loss=loss, l2=l2)


def loss_targets(ds: data.Dataset, loss: str) -> jax.Array:
    """The targets the loss takes: squared errors on a classification dataset compare the
    outputs with one-hot labels (Frye et al. 2021's MLP setting; the lecture's networks)."""
    if ds.task == "classification" and loss != "cross_entropy":
        return jax.nn.one_hot(ds.y, ds.metadata["num_classes"], dtype=ds.x.dtype)
    return jnp.asarray(ds.y)


def _stable_int(*parts) -> int:
    return int(hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:8], 16)


def replica_init_key(seed: int, data_entry: dict, arch: models.MLPConfig) -> jax.Array:
    """The key of a cell's initial replicas: from the study seed, the ``[[data]]`` entry and
    the architecture only, so every optimizer and finder of an architecture starts from the
    same replicas (a fair comparison)."""
    return jax.random.fold_in(jax.random.key(seed), _stable_int(data_entry, repr(arch)))


@contextlib.contextmanager
def study_precision(dtype: str) -> Iterator[None]:
    """float64 switched on for a float64 study's computation, and the caller's
    ``jax_enable_x64`` restored afterwards (a float32 study leaves it as it is)."""
    previous = jax.config.jax_enable_x64
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


class TrainingCache:
    """The last training run, for the next cell: cells that differ only in the finder method
    (the grid's innermost axis, so adjacent) reuse its snapshots instead of training again.
    Held by the caller (:func:`saddlestudy.runner.run_study` keeps one per study)."""

    def __init__(self):
        self.key: str | None = None
        self.result: train.TrainResult | None = None


def run_cell(
    cfg: Study, cell: Cell, *, cache: TrainingCache | None = None
) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Trains, finds and measures one cell; returns its rows and its spectra. ``cache``: a
    :class:`TrainingCache` shared with the previous cell (None: train afresh).

    A float64 study computes with ``jax_enable_x64`` on (here too, not only in
    :func:`saddlestudy.runner.run_study`: Ray workers start fresh); the caller's setting is
    restored on return.
    """
    with study_precision(cfg.dtype):
        return _run_cell(cfg, cell, cache if cache is not None else TrainingCache())


def _run_cell(
    cfg: Study, cell: Cell, cache: TrainingCache
) -> tuple[pa.Table, dict[str, np.ndarray]]:
    dtype = cfg.dtype
    entry_json = json.dumps(cell.data, sort_keys=True)
    ds = _dataset(dtype, entry_json)
    arch = cell.arch
    loss_fn = _loss_fn(dtype, entry_json, arch, cell.loss, float(cell.l2))
    t = cell.train
    R = t.replicas
    train_cfg = train.TrainConfig(
        num_steps=t.num_steps,
        record_every=t.record_every,
        batch_size=t.batch_size or None,
        snapshot_steps=t.snapshot_steps,
        snapshot_losses=t.snapshot_losses,
    )
    timings = {}
    t0 = time.perf_counter()
    result, reused = _trained(cfg, cell, ds, arch, loss_fn, train_cfg, cache)
    timings["train_seconds"] = time.perf_counter() - t0
    timings["train_reused"] = reused

    # Starts: per replica, the step snapshots, the loss snapshots, then the end point.
    S, L = len(train_cfg.snapshot_steps), len(train_cfg.snapshot_losses)
    kinds = ["step"] * S + ["loss"] * L + ["end"]
    starts = jax.tree.map(
        lambda s, l, e: jnp.concatenate([s, l, e[:, None]], axis=1).reshape(
            R * (S + L + 1), *e.shape[1:]
        ),
        result.step_snapshots,
        result.loss_snapshots,
        result.params,
    )
    reached = np.concatenate(
        [np.ones((R, S), bool), np.asarray(result.loss_snapshot_steps) >= 0, np.ones((R, 1), bool)],
        axis=1,
    ).reshape(-1)

    t0 = time.perf_counter()
    fcfg = cell.finder  # [finder], with the cell's [model.finder] keys on top
    method, grad_tol = cell.finder_method, fcfg.grad_tol
    stages = dtype
    if dtype == "float32" and method != "none":
        # Float32 first, to the gradient norm float32 resolves (FLOAT32_MIN_GRAD_TOL).
        grad_tol = max(grad_tol, critical.FLOAT32_MIN_GRAD_TOL)
    found = _find(loss_fn, starts, method, grad_tol, fcfg, dtype)
    # A float32 study is polished and counted in float64 where the device has it (the finder
    # to the study's grad_tol); without float64 its rows are classified in float32, where
    # converged means |grad L|^2 < the float32 tolerance.
    polish = dtype == "float32" and float64_available()
    precision = {"finder_stages": stages, "classified_in": dtype, "grad_tol": grad_tol}
    with study_precision("float64") if polish else contextlib.nullcontext():
        if polish:
            loss_fn = _loss_fn("float64", entry_json, arch, cell.loss, float(cell.l2))
            upcast = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), found.params)
            found = _find(loss_fn, upcast, method, fcfg.grad_tol, fcfg, "float64")
            precision = {"finder_stages": "float32+float64", "classified_in": "float64",
                         "grad_tol": fcfg.grad_tol}  # fmt: skip
        jax.block_until_ready(found)
        timings["finder_seconds"] = time.perf_counter() - t0
        return _measure(cfg, cell, arch, loss_fn, result, found, kinds, reached, timings,
                        precision)  # fmt: skip


def _trained(cfg, cell, ds, arch, loss_fn, train_cfg, cache) -> tuple[train.TrainResult, bool]:
    """The cell's training result, and whether it was reused from the previous cell.

    The optimizer's hyperparameters are traced arguments of the compiled training program,
    so every learning rate of a grid shares one compilation.
    """
    dtype = cfg.dtype
    hparams = {k: v for k, v in cell.optimizer.items() if k != "name"}
    name = cell.optimizer["name"]
    key = json.dumps(
        [dtype, cfg.seed, cell.data, repr(arch), cell.loss, cell.l2, cell.optimizer,
         repr(train_cfg), jax.config.jax_enable_x64],
        sort_keys=True, default=str,
    )  # fmt: skip
    if cache.key == key:
        return cache.result, True
    cache.key = cache.result = None
    optim.make_optimizer(name, **hparams)  # checks the concrete values (the traced ones can't be)
    init_key = replica_init_key(cfg.seed, cell.data, arch)
    params_R = models.init_replicas(arch, init_key, cell.train.replicas, dtype)
    factory = optim.OptimizerFactory(name)
    if train_cfg.batch_size is None:
        result = train.train_replicas(loss_fn, params_R, factory, train_cfg, hyperparams=hparams)
    else:
        batch_loss = losses.make_batch_loss_fn(
            models.make_apply(arch), loss=cell.loss, l2=float(cell.l2)
        )
        xy = (jnp.asarray(ds.x), loss_targets(ds, cell.loss))
        result = train.train_replicas(
            batch_loss, params_R, factory, train_cfg, data=xy,
            key=jax.random.fold_in(init_key, 1), hyperparams=hparams,
        )  # fmt: skip
    # Onto one device: what follows (finder, counts) splits its own work over the devices;
    # arrays left sharded by training would make each later program span every device.
    result = jax.device_put(result, jax.local_devices()[0])
    jax.block_until_ready(result)
    cache.key, cache.result = key, result
    return result, False


def float64_available() -> bool:
    """Whether the default device computes in float64 (TPUs do not)."""
    return jax.devices()[0].platform != "tpu"


def _find(loss_fn, starts, method: str, grad_tol: float, fcfg: FinderSettings, dtype: str):
    """The finder ``method`` from every start, in ``dtype`` (``"none"``: the starts as found)."""
    if method == "none":
        return _starts_as_found(loss_fn, starts, grad_tol)
    return critical.find_critical_points(
        loss_fn, starts, method=method, grad_tol=grad_tol, max_iters=fcfg.max_iters,
        batching=finder_batching(fcfg.batching), dtype=dtype,
    )  # fmt: skip


def _measure(cfg, cell, arch, loss_fn, result, found, kinds, reached, timings, precision):
    """The counts at every reached point, then the cell's rows. Float32 counts run at the
    ``highest`` matmul precision (not TF32 on a GPU, not bf16 passes on a TPU)."""
    t0 = time.perf_counter()
    keep = np.flatnonzero(reached)
    with jax.default_matmul_precision("highest"):
        counts = _point_inertias(cfg, cell, loss_fn, found.params, keep)
    timings["spectrum_seconds"] = time.perf_counter() - t0
    return _rows(cfg, cell, arch, result, found, counts, kinds, keep, timings, precision)


def primary_zero_tol(zero_tols: Sequence[float]) -> float:
    """The tolerance of a row's ``index``, ``minimum_ratio`` and ``counts_exact``: 1e-5 (Frye's
    choice, docs/science.md §1) when the study counts at it, else its largest (warned once)."""
    primary = study_config.primary_zero_tol(zero_tols)
    if primary == spectrum.DEFAULT_ZERO_TOL:
        return primary
    default = spectrum.DEFAULT_ZERO_TOL
    _warn_once(
        f"spectrum.zero_tols {list(zero_tols)} lacks the default {default:g}: each row's index, "
        f"minimum_ratio, counts_exact and the summary use zero_tol = {max(zero_tols):g} "
        "(recorded in the rows' zero_tol column)"
    )
    return primary


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def _point_inertias(cfg, cell, loss_fn, params_R, keep, devices=None) -> dict[int, tuple]:
    """Per kept point i: ``(inertias, eigenvalues)``; the inertias at ``zero_tols`` then at
    ``relative_tols`` (:class:`saddlestudy.inertia.Inertia` each), the eigenvalues all P of
    them (method "eigh") or None. Points are counted on every one of ``devices`` (None: the
    local devices) at once."""
    spec = cfg.spectrum
    method = cell.spectrum_method
    if method == "eigh":
        spectra = spectrum.hessian_spectra(loss_fn, params_R, method="dense")
        eig = np.asarray(spectra.eigenvalues)
        error = np.asarray(spectra.eigenvalue_error)
        return {
            int(i): (
                inertia.Inertia.from_eigenvalues(
                    eig[i], float(error[i]), spec.zero_tols, spec.relative_tols
                ),
                eig[i],
            )
            for i in keep
        }
    devices = jax.local_devices() if devices is None else list(devices)
    precision = jax.config.jax_default_matmul_precision
    # On the host first: slicing arrays sharded over several devices from several threads
    # launches multi-device programs in different orders on different devices (a deadlock).
    host = jax.device_get(params_R) if len(devices) > 1 else params_R

    def one(j: int) -> tuple:
        # Point keep[j] on device j mod D, each device with its own thread: the Hessian
        # products run on the devices at the same time and the host's LAPACK work (LDL^T)
        # in parallel threads. The matmul precision is a thread-local setting: passed on.
        i, device = int(keep[j]), devices[j % len(devices)]
        point = jax.tree.map(lambda x: x[i], host)
        key = jax.random.fold_in(jax.random.key(cfg.seed), _stable_int(cell.cell_id, i))
        with jax.default_device(device), jax.default_matmul_precision(precision):
            point = jax.device_put(point, device)
            return (_inertias(loss_fn, point, method, key, spec), None)

    if len(devices) < 2 or len(keep) < 2:
        results = [one(j) for j in range(len(keep))]
    else:
        with concurrent.futures.ThreadPoolExecutor(min(len(devices), len(keep))) as pool:
            results = list(pool.map(one, range(len(keep))))
    return {int(i): result for i, result in zip(keep, results, strict=True)}


def _inertias(loss_fn, params, method: str, key, spec: dict) -> tuple:
    """The counts of one point by :func:`saddlestudy.inertia.hessian_inertia` (``method``:
    the cell's, chosen by the config's memory rule), one per threshold."""
    P = int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))
    return inertia.hessian_inertias(
        loss_fn,
        params,
        zero_tols=spec.zero_tols,
        relative_tols=spec.relative_tols,
        method=method,
        key=key,
        failure_prob=spec.failure_prob,
        max_matvecs=spec.max_matvecs,
        num_slq_matvecs=min(P, spec.num_matvecs),
    )


def finder_batching(setting: str) -> str:
    """``finder.batching``: "auto" is "map" on a CPU and "vmap" on an accelerator.

    On a CPU, lockstep (vmap) makes every start pay for the slowest one (masked iterations
    still compute) and per-sample losses cost about 2x per product (BENCHMARKS.md, finders);
    one start after another lets each stop when it converges.
    """
    if setting != "auto":
        return setting
    return "map" if jax.devices()[0].platform == "cpu" else "vmap"


def _starts_as_found(loss_fn, starts, grad_tol: float) -> critical.CriticalPoint:
    """Finder ``"none"``: the starts as they are (loss and gradient measured, not moved), as
    a :class:`~saddlestudy.critical.CriticalPoint` of method "none" and zero iterations."""
    loss = jax.vmap(loss_fn)(starts)
    gn = jax.vmap(functools.partial(hessian.grad_norm_sq, loss_fn))(starts)
    converged = gn < grad_tol
    status = jnp.where(
        converged,
        critical.STATUS.index("converged"),
        jnp.where(
            jnp.isfinite(loss) & jnp.isfinite(gn),
            critical.STATUS.index("max_iters"),  # a budget of 0 iterations, spent
            critical.STATUS.index("non_finite"),
        ),
    ).astype(jnp.int32)
    not_tested = jnp.full_like(gn, jnp.nan)  # no gradient-flat test without a finder
    return critical.CriticalPoint(
        params=starts,
        loss=loss,
        grad_norm_sq=gn,
        converged=converged,
        gradient_flat=jnp.zeros_like(gn, dtype=bool),
        iterations=jnp.zeros_like(gn, dtype=jnp.int32),
        status=status,
        flat_residual=not_tested,
        flat_residual_hessian=not_tested,
        hessian_fro_norm=not_tested,
        num_hvps=jnp.zeros_like(gn, dtype=jnp.int32),
        num_grads=jnp.ones_like(gn, dtype=jnp.int32),
        loss_history=loss[:, None],
        grad_norm_sq_history=gn[:, None],
        param_norm_history=jax.vmap(lambda p: jnp.linalg.norm(ravel_pytree(p)[0]))(starts)[:, None],
        distance_moved=jnp.zeros_like(gn),
        method="none",
        grad_tol=grad_tol,
        max_iters=0,
    )


def _rows(cfg, cell, arch, result, found, counts, kinds, keep, timings, precision):
    n_starts = len(kinds)
    t = cell.train
    start_step = [*t.snapshot_steps] + [None] * len(t.snapshot_losses) + [None]
    start_level = [None] * len(t.snapshot_steps) + list(t.snapshot_losses) + [None]
    # One transfer of the cell's device scalars, not one per row and field.
    host = jax.device_get({
        "loss_steps": result.loss_snapshot_steps, "steps": result.steps,
        "diverged": result.diverged, "train_loss": result.loss,
        "converged": found.converged, "gradient_flat": found.gradient_flat,
        "grad_norm_sq": found.grad_norm_sq, "loss": found.loss, "iterations": found.iterations,
        "status": found.status, "flat_residual": found.flat_residual,
        "flat_residual_hessian": found.flat_residual_hessian,
        "param_norm_history": found.param_norm_history,
        "grad_norm_sq_history": found.grad_norm_sq_history,
        "distance_moved": found.distance_moved,
    })  # fmt: skip
    point_class = critical.point_class(
        host["converged"], host["status"], host["gradient_flat"], host["iterations"],
        host["param_norm_history"], host["grad_norm_sq_history"],
    )  # fmt: skip
    last_ratio = critical.last_step_ratio(host["iterations"], host["grad_norm_sq_history"])
    loss_steps, steps_taken = host["loss_steps"], host["steps"]
    prov = provenance()
    cfg_hash = study_config.config_hash(cfg)
    spec = cfg.spectrum
    primary_tol = primary_zero_tol(spec.zero_tols)
    thresholds = [(t, False) for t in spec.zero_tols]
    thresholds += [(c, True) for c in spec.relative_tols]
    primary = spec.zero_tols.index(primary_tol)
    columns: dict[str, list] = {}
    arrays: dict[str, np.ndarray] = {}
    for i in keep:
        r, s = divmod(int(i), n_starts)
        row_id = f"{cell.cell_id}:{i}"
        kind = kinds[s]
        if kind == "step":
            step = start_step[s]
        elif kind == "loss":
            step = int(loss_steps[r, s - len(t.snapshot_steps)])
        else:
            step = int(steps_taken[r])
        inertias, eigenvalues = counts[int(i)]
        main = inertias[primary]
        row = {
            "row_id": row_id,
            "study": cfg.name,
            "config_hash": cfg_hash,
            "cell_id": cell.cell_id,
            "dataset": cell.dataset,
            "data_args": json.dumps(cell.data, sort_keys=True),
            "num_samples": cell.num_samples,
            "num_outputs": arch.out_features,  # with num_samples: where P crosses N x outputs
            "depth": cell.depth,
            "width": max(arch.widths) if arch.widths else 0,
            "widths": "-".join(map(str, arch.widths)),
            "activation": cell.activation,
            "loss_name": cell.loss,
            "num_params": arch.num_params,
            "optimizer": cell.optimizer["name"],
            "optimizer_hparams": json.dumps(cell.optimizer, sort_keys=True),
            "learning_rate": float(cell.optimizer.get("learning_rate", math.nan)),
            "seed": cfg.seed,
            "replica": r,
            "start_kind": kind,
            "start_step": step,
            "start_loss_level": start_level[s],
            "train_diverged": bool(host["diverged"][r]),
            "train_loss": float(host["train_loss"][r]),
            "finder_method": cell.finder_method,
            "grad_tol": cell.finder.grad_tol,
            "max_iters": 0 if cell.finder_method == "none" else cell.finder.max_iters,
            # The finder's precisions ("float64"; "float32+float64": float32, then polished in
            # float64) and the precision of the point and counts that classify the row.
            **precision,
            "converged": bool(host["converged"][i]),
            "gradient_flat": bool(host["gradient_flat"][i]),
            "grad_norm_sq": float(host["grad_norm_sq"][i]),
            "loss": float(host["loss"][i]),
            "iterations": int(host["iterations"][i]),
            # How the finder's run ended (critical.POINT_CLASSES; "diverged" also when training
            # diverged), with what tells the classes apart.
            "point_class": "diverged" if host["diverged"][r] else str(point_class[i]),
            "finder_status": critical.STATUS[int(host["status"][i])],
            "flat_residual": float(host["flat_residual"][i]),
            "flat_residual_hessian": float(host["flat_residual_hessian"][i]),
            "start_param_norm": float(host["param_norm_history"][i][0]),
            "param_norm": float(host["param_norm_history"][i][int(host["iterations"][i])]),
            "distance_moved": float(host["distance_moved"][i]),
            # |grad L|^2 after the last iteration / before it: above critical.NEWTON_RATE_BOUND
            # a "critical" run crossed grad_tol without Newton's local rate (still travelling).
            "last_step_ratio": float(last_ratio[i]),
            # What produced the counts: "eigh" (all P eigenvalues) or hessian_inertia's method.
            "spectrum_method": main.method,
            "zero_tol": primary_tol,
            "counts_exact": bool(main.exact),
            "failure_prob": float(main.failure_prob),
            "resolution": float(main.resolution),
            # Exact values or null: never a count of Ritz values.
            "index": _nullable_fraction(main.num_negative, main),
            "minimum_ratio": _nullable_fraction(main.num_positive, main),
            # The extremes: a value only where certified brackets pin it (dense, eigh), the
            # brackets always (NaN where a side is unknown), and the Ritz values of the short
            # Lanczos run under their own name (never an eigenvalue of the whole spectrum).
            "lambda_min": float(main.lambda_min),
            "lambda_max": float(main.lambda_max),
            "lambda_min_lo": float(main.lambda_min_lo),
            "lambda_min_hi": float(main.lambda_min_hi),
            "lambda_max_lo": float(main.lambda_max_lo),
            "lambda_max_hi": float(main.lambda_max_hi),
            "ritz_min": float(main.ritz_min),
            "ritz_min_residual": float(main.ritz_min_residual),
            "bound_failure": bool(main.bound_failure),
            "num_matvecs": int(main.num_matvecs),
            **timings,
            **prov,
            "dtype": cfg.dtype,
        }
        for (tol, relative), x in zip(thresholds, inertias, strict=True):
            row.update(rows.count_values(tol, relative, x))
        for key, value in row.items():
            columns.setdefault(key, []).append(value)
        if eigenvalues is not None:  # all P of them: nothing partial is ever stored
            arrays[f"{row_id}/eigenvalues"] = eigenvalues
    return rows.table(columns, rows.schema(spec.zero_tols, spec.relative_tols)), arrays


def _nullable_fraction(value, x):
    count = rows.exact_count(value, x.exact)
    return None if count is None else count / x.num_params
