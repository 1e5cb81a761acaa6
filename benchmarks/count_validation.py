"""Validation of the matrix-free counts of negative Hessian eigenvalues (E3), run by hand.

    python benchmarks/count_validation.py [--quick] [--out PATH] [--max-n 192] [--no-mlp]
                                          [--time-budget SECONDS] [--resume]
    python benchmarks/count_validation.py --plot-only [--out PATH]

What is measured: at points whose number of eigenvalues below -tau is known exactly, the
count of ``saddlestudy.hessian_inertia`` with ``method="lanczos"`` (a ladder of
``max_matvecs``) and ``method="slq"`` (a ladder of probes x Krylov depth), against that truth,
as a function of the Hessian-vector products (HVPs) used; at absolute thresholds tau = 1e-5,
1e-3 and relative ones tau = 1e-3, 1e-2 times lambda_max (docs/science.md §6). Per run: the
certified lower bound, the probabilistic upper bound (failure probability 1e-3), whether the
method claimed an exact count, SLQ's estimate with its standard error and bias bound, the HVPs
(the 200 or fewer of the extreme-eigenvalue run included), the resolution, the wall time
(compilation included: each budget is a new program), and whether lo <= truth <= hi held.

Cases:

- ``autoencoder``: the deep linear autoencoder in covariance form (Sigma = diag(n, ..., 1),
  hidden p = n / 4, P = 2 n p) at analytic critical points with a few, dozens and P / 2
  negatives; the truth is the analytic negative spectrum (:func:`autoencoder_negative_spectrum`),
  checked against the dense count for n <= ``DENSE_CHECK_MAX_N``.
- ``autoencoder_newton_mr``: Newton-MR points of the same loss from random weights of scale
  1 / sqrt(n) (smaller starts all reach the origin); truth: the dense count
  (``method="dense"``, LDL^T).
- ``mlp``: MNIST-1D (N = 512), tanh MLPs of depth 1, squared error on one-hot targets, 2,000
  Adam steps then 100 Newton-MR iterations, as the census's cells; truth: the dense count.

A Lanczos ladder stops at the first budget that gives an exact count (a larger budget would
repeat the same adaptive run). Output: JSON lines (one per case, point, threshold, method and
budget) and ``figures/census/method_validation.{png,pdf}``, drawable from the lines alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import saddlestudy as ss
from saddlestudy import critical, data, figures, losses, models, optim, pipeline, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "count_validation.jsonl"
FIGURE_STEM = ROOT / "figures" / "census" / "method_validation"

ABSOLUTE_TOLS = (1e-5, 1e-3)
RELATIVE_TOLS = (1e-3, 1e-2)
FAILURE_PROB = 1e-3
SEED = 0
MNIST1D_INPUTS, MNIST1D_CLASSES = 40, 10
DENSE_CHECK_MAX_N = 64  # the analytic truth is checked against the dense count up to here


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run of the benchmark measures."""

    autoencoder_ns: tuple[int, ...] = (16, 32, 64, 128, 192)
    autoencoder_points: tuple[str, ...] = ("few", "dozens", "half")
    newton_mr_ns: tuple[int, ...] = (16, 32, 64, 128)
    newton_mr_starts: int = 1
    newton_mr_iters: int = 100
    mlp_widths: tuple[int, ...] = (20, 98)
    lanczos_budgets: tuple[int, ...] = (100, 300, 1000, 3000)
    slq_budgets: tuple[tuple[int, int], ...] = ((8, 32), (16, 64), (32, 64))


QUICK = Plan(
    autoencoder_ns=(16, 32),
    newton_mr_ns=(16, 32),
    newton_mr_starts=1,
    newton_mr_iters=50,
    mlp_widths=(),
    lanczos_budgets=(100, 300),
    slq_budgets=((8, 32),),
)


@dataclasses.dataclass(frozen=True)
class Point:
    """A point with a known count: ``truth(tau)`` is the number of eigenvalues below -tau,
    ``margin(tau)`` the distance from -tau to the nearest known eigenvalue (NaN: unknown)."""

    case: str
    name: str
    loss_fn: Callable[[Any], jax.Array]
    params: Any
    truth: Callable[[float], int]
    margin: Callable[[float], float]
    truth_source: str
    info: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# The deep linear autoencoder and its analytic negative spectrum
# ---------------------------------------------------------------------------------------------


@functools.cache
def autoencoder_loss(n: int) -> Callable[[dict], jax.Array]:
    """Covariance form of the deep linear autoencoder, Sigma = diag(n, ..., 1): 1/2 sum_i
    lambda_i |e_i - (W2 W1)_i|^2, equal to the sample mean of 1/2 |x - W2 W1 x|^2 (as in
    tests/test_inertia.py and ``analysis.linear_autoencoder_reference``). One function object
    per n, so that every point at n shares the compiled programs."""
    lam = jnp.arange(n, 0, -1.0, dtype=jnp.float64)

    def loss(params: dict) -> jax.Array:
        r = jnp.eye(n, dtype=lam.dtype) - params["w2"] @ params["w1"]
        return 0.5 * jnp.sum(lam[:, None] * r * r)

    return loss


def autoencoder_point(n: int, p: int, subset: Sequence[int]) -> dict[str, jax.Array]:
    """The critical point W1 = U_I^T, W2 = U_I (unused hidden units zero)."""
    w1 = np.zeros((p, n))
    w1[np.arange(len(subset)), list(subset)] = 1.0
    return {"w1": jnp.asarray(w1), "w2": jnp.asarray(w1.T)}


def autoencoder_negative_spectrum(n: int, p: int, subset: Sequence[int]) -> np.ndarray:
    """The negative Hessian eigenvalues at :func:`autoencoder_point`, ascending.

    With lambda_k = n - k: for each pair (i in I, j not in I) with lambda_j > lambda_i, the
    perturbation (W1[k, j], W2[j, k]) of the unit k carrying i has the 2 x 2 Hessian
    [[lambda_i, -lambda_j], [-lambda_j, lambda_j]], one negative eigenvalue
    (lambda_i + lambda_j) / 2 - sqrt(((lambda_i - lambda_j) / 2)^2 + lambda_j^2); each of
    the p - |I| unused units gives [[0, -lambda_j], [-lambda_j, 0]] per j not in I, so
    -lambda_j. The count is that of tests/test_inertia.py's ``analytic_num_negative``; the
    values agree with ``eigvalsh`` to 2e-15 (checked at n = 16, 32) and with the dense count
    here for n <= ``DENSE_CHECK_MAX_N``.
    """
    lam = np.arange(n, 0, -1.0)
    chosen = list(subset)
    out = [j for j in range(n) if j not in chosen]
    li = np.array([lam[i] for i in chosen for j in out if j < i])
    lj = np.array([lam[j] for i in chosen for j in out if j < i])
    pairs = (li + lj) / 2 - np.sqrt(((li - lj) / 2) ** 2 + lj**2)
    unused = np.repeat(-lam[out], p - len(chosen))
    return np.sort(np.concatenate([pairs, unused]))


def autoencoder_subsets(n: int, p: int) -> dict[str, tuple[int, ...]]:
    """Critical points with a few (3), dozens (min(24, n - p)) and P / 2 negatives: the top
    p - 1 directions plus the one d places further down gives d negatives (one per skipped
    direction); the origin (I empty) gives n p = P / 2."""

    def skip(d: int) -> tuple[int, ...]:
        return tuple(range(p - 1)) + (p - 1 + d,)

    return {"few": skip(3), "dozens": skip(min(24, n - p)), "half": ()}


def _spectrum_truth(negatives: np.ndarray) -> tuple[Callable, Callable]:
    def truth(tau: float) -> int:
        return int(np.sum(negatives < -tau))

    def margin(tau: float) -> float:
        return float(np.min(np.abs(negatives + tau))) if negatives.size else math.inf

    return truth, margin


def analytic_points(n: int, names: Sequence[str] = ("few", "dozens", "half")) -> Iterator[Point]:
    """The autoencoder's analytic critical points ``names`` at n (p = n / 4)."""
    p = n // 4
    loss = autoencoder_loss(n)
    for name, subset in autoencoder_subsets(n, p).items():
        if name not in names:
            continue
        negatives = autoencoder_negative_spectrum(n, p, subset)
        truth, margin = _spectrum_truth(negatives)
        info = dict(
            n=n,
            p=p,
            num_params=2 * n * p,
            loss=float(loss(autoencoder_point(n, p, subset))),
            grad_norm_sq=0.0,
            subset=list(subset),
        )
        yield Point(
            "autoencoder",
            name,
            loss,
            autoencoder_point(n, p, subset),
            truth,
            margin,
            "analytic",
            info,
        )


# ---------------------------------------------------------------------------------------------
# Dense truth, Newton-MR points and MLP points
# ---------------------------------------------------------------------------------------------


def dense_counts(loss_fn, params, key: jax.Array) -> dict[float, int]:
    """Exact counts (LDL^T, ``method="dense"``) at the thresholds of the benchmark, keyed by
    the absolute tau used (relative ones via the same key's lambda_max as the other runs)."""
    results = ss.hessian_inertias(
        loss_fn, params, zero_tols=ABSOLUTE_TOLS, relative_tols=RELATIVE_TOLS, method="dense",
        key=key,
    )  # fmt: skip
    return {float(r.zero_tol): int(r.num_negative) for r in results}


def _dense_truth(counts: dict[float, int]) -> tuple[Callable, Callable]:
    def truth(tau: float) -> int:
        match = [t for t in counts if math.isclose(t, tau, rel_tol=1e-9)]
        if not match:
            raise ValueError(f"no dense count at tau = {tau!r} (have {sorted(counts)})")
        return counts[match[0]]

    return truth, lambda tau: math.nan


def newton_mr_points(n: int, starts: int, iters: int, key: jax.Array) -> Iterator[Point]:
    """Newton-MR points of the autoencoder (p = n / 4) from random weights of scale
    1 / sqrt(n) (smaller starts all converge to the origin); truth: the dense count."""
    p = n // 4
    loss = autoencoder_loss(n)
    k1, k2 = jax.random.split(jax.random.fold_in(key, n))
    scale = 1.0 / math.sqrt(n)
    starts_R = {
        "w1": scale * jax.random.normal(k1, (starts, p, n), jnp.float64),
        "w2": scale * jax.random.normal(k2, (starts, n, p), jnp.float64),
    }
    found = critical.find_critical_points(loss, starts_R, method="newton_mr", max_iters=iters)
    for r in range(starts):
        params = jax.tree.map(lambda leaf, r=r: leaf[r], found.params)
        truth, margin = _dense_truth(dense_counts(loss, params, key))
        info = dict(
            n=n,
            p=p,
            num_params=2 * n * p,
            loss=float(found.loss[r]),
            grad_norm_sq=float(found.grad_norm_sq[r]),
            converged=bool(found.converged[r]),
            iterations=int(found.iterations[r]),
        )
        yield Point(
            "autoencoder_newton_mr", f"start{r}", loss, params, truth, margin, "dense", info
        )


def mlp_point(width: int, key: jax.Array, adam_steps: int = 2000, iters: int = 100) -> Point:
    """MNIST-1D (640 generated, N = 512 train), tanh MLP 40-width-10, squared error on one-hot
    targets (the census's ``pipeline.loss_targets``), no L2; Adam (lr 0.01), then Newton-MR."""
    ds = data.load_dataset("mnist1d", num_samples=640, dtype="float64")
    arch = models.MLPConfig(ds.input_dim, ds.output_dim, depth=1, width=width, activation="tanh")
    loss = losses.make_loss_fn(
        models.make_apply(arch), jnp.asarray(ds.x), pipeline.loss_targets(ds, "mse"), loss="mse"
    )
    params_R = models.init_replicas(arch, jax.random.fold_in(key, width), 1, "float64")
    trained = train.train_replicas(
        loss, params_R, optim.make_optimizer("adam", learning_rate=0.01), adam_steps
    )
    found = critical.find_critical_points(loss, trained.params, method="newton_mr", max_iters=iters)
    params = jax.tree.map(lambda leaf: leaf[0], found.params)
    truth, margin = _dense_truth(dense_counts(loss, params, key))
    info = dict(
        width=width,
        num_params=models.num_params(params),
        num_samples=ds.num_samples,
        adam_loss=float(trained.loss[0]),
        loss=float(found.loss[0]),
        grad_norm_sq=float(found.grad_norm_sq[0]),
        converged=bool(found.converged[0]),
        iterations=int(found.iterations[0]),
    )
    return Point("mlp", f"w{width}", loss, params, truth, margin, "dense", info)


# ---------------------------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------------------------


def thresholds() -> list[tuple[str, float]]:
    """(kind, tolerance) in the order ``hessian_inertias`` returns them."""
    return [("absolute", t) for t in ABSOLUTE_TOLS] + [("relative", t) for t in RELATIVE_TOLS]


def _call(point: Point, key: jax.Array, spec: dict, **kwargs) -> tuple[tuple[Any, ...], float]:
    """One ``hessian_inertias`` call at the thresholds of ``spec`` (``zero_tols`` and/or
    ``relative_tols``): the results, and the call's wall time (compilation included)."""
    t0 = time.perf_counter()
    results = ss.hessian_inertias(
        point.loss_fn, point.params, key=key, failure_prob=FAILURE_PROB, **spec, **kwargs
    )
    return results, time.perf_counter() - t0


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def record(
    point: Point,
    kind: str,
    tol: float,
    method: str,
    budget: str,
    result,
    seconds: float,
    dense_truth: int | None = None,
) -> dict[str, Any]:
    """One JSON line: the method's answer at one threshold beside the truth."""
    tau = float(result.zero_tol)
    truth = point.truth(tau)
    P = result.num_params
    exact = bool(result.exact)
    estimate = _finite(float(result.num_negative))
    lo, hi = int(result.num_negative_lo), int(result.num_negative_hi)
    return dict(
        case=point.case,
        point=point.name,
        **point.info,
        threshold=kind,
        tol=tol,
        tau=tau,
        truth=truth,
        truth_source=point.truth_source,
        dense_truth=dense_truth,
        truth_margin=_finite(point.margin(tau)),
        method=method,
        budget=budget,
        lo=lo,
        hi=hi,
        exact=exact,
        estimate=estimate,
        sem=float(result.index_sem) * P,
        bias_bound=float(result.index_bias_bound) * P,
        num_matvecs=int(result.num_matvecs),
        resolution=_finite(float(result.resolution)),
        # Ritz values of the extremes (a short Lanczos run), not eigenvalues.
        ritz_max=float(result.ritz_max),
        ritz_min=float(result.ritz_min),
        seconds=seconds,
        lo_held=lo <= truth,
        hi_held=truth <= hi,
        exact_correct=(estimate == truth) if exact else None,
        error=abs(estimate - truth) if estimate is not None else None,
        shortfall=truth - lo,
    )


def lanczos_ladder(budgets: Sequence[int], num_params: int) -> list[int]:
    """The budgets below 2 P, plus 2 P once if a budget reaches it (Lanczos is exact at depth
    P in exact arithmetic; more is waste)."""
    ladder = sorted({min(b, 2 * num_params) for b in budgets})
    return ladder


def measure_point(
    point: Point, plan: Plan, key: jax.Array, *, dense_check: bool = False
) -> Iterator[dict[str, Any]]:
    """Lanczos, one threshold per call (its stopping rule aims at the call's largest tau),
    up the ladder of ``max_matvecs`` until exact (a larger budget would repeat the same
    adaptive run); then SLQ at each budget, one call for every threshold (its quadrature
    does not depend on tau; ``seconds`` is that call's)."""
    P = point.info["num_params"]
    dense = dense_counts(point.loss_fn, point.params, key) if dense_check else None

    def dense_at(result) -> int | None:
        return None if dense is None else _dense_truth(dense)[0](float(result.zero_tol))

    for kind, tol in thresholds():
        spec = {"zero_tols": [tol]} if kind == "absolute" else {"relative_tols": [tol]}
        for budget in lanczos_ladder(plan.lanczos_budgets, P):
            (result,), seconds = _call(point, key, spec, method="lanczos", max_matvecs=budget)
            yield record(
                point, kind, tol, "lanczos", str(budget), result, seconds, dense_at(result)
            )
            if result.exact:
                break
    every = {"zero_tols": ABSOLUTE_TOLS, "relative_tols": RELATIVE_TOLS}
    for probes, depth in plan.slq_budgets:
        depth = min(depth, P)
        results, seconds = _call(
            point, key, every, method="slq", num_probes=probes, num_slq_matvecs=depth
        )
        for (kind, tol), result in zip(thresholds(), results):
            yield record(
                point, kind, tol, "slq", f"{probes}x{depth}", result, seconds, dense_at(result)
            )


def point_id(case: str, name: str, num_params: int) -> str:
    """The key a point's records share (what a resumed run skips)."""
    return f"{case}/{name}/P{num_params}"


def point_groups(plan: Plan, key: jax.Array) -> list[tuple[list[str], int, Callable, bool]]:
    """The points of the plan as (ids, P, build, dense_check) groups, cheapest P first so
    that a run cut short by its time budget covers the small sizes of every case; ``build()``
    returns the group's points (Newton-MR and Adam run only then)."""
    groups = []
    for n in plan.autoencoder_ns:
        P = 2 * n * (n // 4)
        ids = [point_id("autoencoder", name, P) for name in plan.autoencoder_points]
        build = functools.partial(analytic_points, n, plan.autoencoder_points)
        groups.append((ids, P, build, n <= DENSE_CHECK_MAX_N))
    for n in plan.newton_mr_ns:
        P = 2 * n * (n // 4)
        ids = [
            point_id("autoencoder_newton_mr", f"start{r}", P) for r in range(plan.newton_mr_starts)
        ]
        build = functools.partial(
            newton_mr_points, n, plan.newton_mr_starts, plan.newton_mr_iters, key
        )
        groups.append((ids, P, build, False))
    for width in plan.mlp_widths:
        P = MNIST1D_INPUTS * width + width + width * MNIST1D_CLASSES + MNIST1D_CLASSES
        ids = [point_id("mlp", f"w{width}", P)]
        groups.append((ids, P, lambda width=width: [mlp_point(width, key)], False))
    return sorted(groups, key=lambda group: group[1])


def run_validation(
    plan: Plan,
    out: Path | None = None,
    *,
    log: Callable[[str], None] = print,
    time_budget: float = math.inf,
    done: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Measures every point of ``plan`` whose id is not in ``done``; returns the records, and
    appends a point's records as JSON lines to ``out`` once it is measured (a file holds only
    whole points, so a rerun can skip them). No new point is started after ``time_budget``
    seconds. Needs ``jax_enable_x64`` on."""
    if not jax.config.jax_enable_x64:
        raise ValueError("the count validation needs float64: switch jax_enable_x64 on")
    key = jax.random.key(SEED)
    records = []
    start = time.perf_counter()
    for ids, P, build, dense_check in point_groups(plan, key):
        if set(ids) <= done:
            continue
        if time.perf_counter() - start > time_budget:
            log(f"time budget of {time_budget:.0f} s spent: stopping before {ids[0]} and later")
            break
        for point in build():
            if point_id(point.case, point.name, P) in done:
                continue
            t0 = time.perf_counter()
            log(f"{point.case} {point.name} P = {P} ...")
            recs = list(measure_point(point, plan, key, dense_check=dense_check))
            records += recs
            if out is not None:
                with open(out, "a") as f:
                    f.writelines(json.dumps(rec, allow_nan=False) + "\n" for rec in recs)
            log(f"  done in {time.perf_counter() - t0:.1f} s")
    return records


# ---------------------------------------------------------------------------------------------
# Summary and figure, from the JSON lines alone
# ---------------------------------------------------------------------------------------------


def load_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines at ``path``; of lines for the same (point, threshold, method, budget),
    as a rerun may leave, the last."""
    fields = ("case", "point", "num_params", "threshold", "tol", "method", "budget")
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return list({tuple(r[k] for k in fields): r for r in records}.values())


def _label(rec: dict[str, Any]) -> str:
    unit = "" if rec["threshold"] == "absolute" else " lmax"
    return f"{rec['tol']:g}{unit}"


def summary_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (case, point, threshold): the truth, the HVPs at which Lanczos first gave an exact
    count (None: never within the ladder), and SLQ's estimate, error, standard error and bias
    bound at its largest budget; and whether every bound held."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(
            (rec["case"], rec["point"], rec["num_params"], rec["threshold"], rec["tol"]), []
        ).append(rec)
    rows = []
    for (case, point, P, _, _), recs in groups.items():
        lanczos = [r for r in recs if r["method"] == "lanczos"]
        slq = [r for r in recs if r["method"] == "slq"]
        exact = [r["num_matvecs"] for r in lanczos if r["exact"]]
        last = max(slq, key=lambda r: r["num_matvecs"]) if slq else None
        rows.append(
            dict(
                case=case,
                point=point,
                num_params=P,
                threshold=_label(recs[0]),
                tau=recs[0]["tau"],
                truth=recs[0]["truth"],
                lanczos_exact_hvps=min(exact) if exact else None,
                lanczos_max_hvps=max((r["num_matvecs"] for r in lanczos), default=None),
                lanczos_best_lo=max((r["lo"] for r in lanczos), default=None),
                slq_budget=last and last["budget"],
                slq_estimate=last and last["estimate"],
                slq_error=last and last["error"],
                slq_sem=last and last["sem"],
                slq_bias_bound=last and last["bias_bound"],
                bounds_held=all(r["lo_held"] and r["hi_held"] for r in recs),
                exact_correct=all(r["exact_correct"] is not False for r in recs),
            )
        )
    return rows


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """The summary as a Markdown table (for BENCHMARKS.md)."""
    head = (
        "| case | point | P | tau | truth | Lanczos exact at HVPs (lo at most HVPs) | "
        "SLQ estimate (budget) | SLQ error | SLQ sem / bias bound | bounds held |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in summary_rows(records):
        if r["lanczos_exact_hvps"] is not None:
            lz = f"{r['lanczos_exact_hvps']}"
        else:
            lz = f"never (lo {r['lanczos_best_lo']} at {r['lanczos_max_hvps']})"
        est = "-" if r["slq_estimate"] is None else f"{r['slq_estimate']:.1f} ({r['slq_budget']})"
        err = "-" if r["slq_error"] is None else f"{r['slq_error']:.1f}"
        sb = "-" if r["slq_sem"] is None else f"{r['slq_sem']:.1f} / {r['slq_bias_bound']:.0f}"
        held = "yes" if r["bounds_held"] and r["exact_correct"] else "**no**"
        lines.append(
            f"| {r['case']} | {r['point']} | {r['num_params']} | {r['threshold']} | "
            f"{r['truth']} | {lz} | {est} | {err} | {sb} | {held} |"
        )
    return "\n".join(lines)


def compact_table(records: Sequence[dict[str, Any]]) -> str:
    """One Markdown row per point, the four thresholds (tau = 1e-5, 1e-3, 1e-3 lambda_max,
    1e-2 lambda_max) side by side: the truth, the HVPs at which Lanczos first counted exactly
    ("-": never within its ladder) and SLQ's |error| / bias bound at its largest budget."""
    rows: dict[tuple, dict[tuple[str, float], dict[str, Any]]] = {}
    for r in summary_rows(records):
        rows.setdefault((r["case"], r["point"], r["num_params"]), {})[r["threshold"]] = r
    labels = [f"{t:g}" for t in ABSOLUTE_TOLS] + [f"{t:g} lmax" for t in RELATIVE_TOLS]
    lines = [
        "| case | point | P | truth | Lanczos exact at HVPs | SLQ abs. error / bias bound | "
        "bounds held |",
        "|---|---|---:|---|---|---|---|",
    ]
    for (case, point, P), by in sorted(rows.items(), key=lambda item: (item[0][2], item[0])):
        cells = [by.get(label) for label in labels]
        truth = " / ".join("?" if c is None else str(c["truth"]) for c in cells)
        lz = " / ".join(
            "?"
            if c is None
            else "-"
            if c["lanczos_exact_hvps"] is None
            else str(c["lanczos_exact_hvps"])
            for c in cells
        )
        slq = " / ".join(
            "?"
            if c is None or c["slq_error"] is None
            else f"{c['slq_error']:.0f}±{c['slq_bias_bound']:.0f}"
            for c in cells
        )
        held = all(c is not None and c["bounds_held"] and c["exact_correct"] for c in cells)
        lines.append(
            f"| {case} | {point} | {P} | {truth} | {lz} | {slq} | {'yes' if held else '**no**'} |"
        )
    return "\n".join(lines)


CASE_COLORS = {"autoencoder": "tab:blue", "autoencoder_newton_mr": "tab:green", "mlp": "tab:red"}


def validation_figure(records: Sequence[dict[str, Any]]):
    """Count error against HVPs: rows absolute / relative tolerance, columns Lanczos (truth
    minus the certified lower bound; a star where the count was certified exact) and SLQ
    (|estimate - truth|, with its bias bound as a bar marker). Symlog y (0 is shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True, constrained_layout=True)
    markers = {
        ABSOLUTE_TOLS[0]: "o",
        ABSOLUTE_TOLS[1]: "s",
        RELATIVE_TOLS[0]: "o",
        RELATIVE_TOLS[1]: "s",
    }
    for row, kind in enumerate(("absolute", "relative")):
        for col, method in enumerate(("lanczos", "slq")):
            ax = axes[row, col]
            series: dict[tuple, list[dict[str, Any]]] = {}
            for rec in records:
                if rec["threshold"] == kind and rec["method"] == method:
                    series.setdefault(
                        (rec["case"], rec["point"], rec["num_params"], rec["tol"]), []
                    ).append(rec)
            for (case, _, _, tol), recs in series.items():
                recs = sorted(recs, key=lambda r: r["num_matvecs"])
                x = [r["num_matvecs"] for r in recs]
                color = CASE_COLORS.get(case, "k")
                if method == "lanczos":
                    y = [r["shortfall"] for r in recs]
                    ax.plot(x, y, "-", color=color, lw=0.6, alpha=0.5)
                    for r, xi, yi in zip(recs, x, y):
                        ax.plot(
                            xi,
                            yi,
                            "*" if r["exact"] else markers[tol],
                            color=color,
                            ms=10 if r["exact"] else 4,
                            mfc=color if r["exact"] else "none",
                        )
                else:
                    y = [r["error"] for r in recs]
                    ax.plot(
                        x,
                        y,
                        "-",
                        color=color,
                        lw=0.6,
                        alpha=0.5,
                        marker=markers[tol],
                        ms=4,
                        mfc="none",
                    )
                    ax.plot(x, [r["bias_bound"] for r in recs], "_", color=color, ms=6)
                failed = [r for r in recs if not (r["lo_held"] and r["hi_held"])]
                ax.plot([r["num_matvecs"] for r in failed], [0] * len(failed), "x", color="k", ms=9)
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(StrMethodFormatter("{x:.0f}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_yscale("symlog", linthresh=1)
            ax.set_ylim(bottom=-0.3)  # errors are >= 0; show the zeros (exact counts)
            tols = ABSOLUTE_TOLS if kind == "absolute" else RELATIVE_TOLS
            what = "tau" if kind == "absolute" else "tau / lambda_max"
            ax.set_title(
                f"{'Lanczos' if method == 'lanczos' else 'SLQ'}, {kind} {what} = "
                f"{tols[0]:g} (o), {tols[1]:g} (s)",
                fontsize=10,
            )
            if col == 0:
                ax.set_ylabel("truth - certified lower bound")
            else:
                ax.set_ylabel("|estimate - truth| (bars: bias bound)")
            if row == 1:
                ax.set_xlabel("Hessian-vector products")
    handles = [Line2D([], [], color=c, label=k) for k, c in CASE_COLORS.items()]
    handles += [
        Line2D([], [], ls="", marker="*", color="k", ms=10, label="certified exact"),
        Line2D([], [], ls="", marker="x", color="k", label="a bound failed"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=5, fontsize=9)
    fig.suptitle("Matrix-free counts of eigenvalues below -tau against the exact count")
    return fig


def save_validation_figure(records: Sequence[dict[str, Any]], stem: Path = FIGURE_STEM) -> list:
    """Draws :func:`validation_figure` and saves it as png and pdf."""
    return figures.save_figure(validation_figure(records), stem, formats=("png", "pdf"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 16, 32; small budgets; no MLP")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--plot-only", action="store_true", help="draw the figure from --out")
    parser.add_argument("--max-n", type=int, default=None, help="largest autoencoder n")
    parser.add_argument("--no-mlp", action="store_true")
    parser.add_argument("--resume", action="store_true", help="keep --out and skip its points")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=math.inf,
        help="seconds after which no new point is started",
    )
    parser.add_argument("--figure", type=Path, default=FIGURE_STEM)
    args = parser.parse_args(argv)
    if not args.plot_only:
        jax.config.update("jax_enable_x64", True)
        from _machine import machine  # benchmarks/ is on sys.path when run as a script

        plan = QUICK if args.quick else Plan()
        if args.max_n is not None:
            plan = dataclasses.replace(
                plan,
                autoencoder_ns=tuple(n for n in plan.autoencoder_ns if n <= args.max_n),
                newton_mr_ns=tuple(n for n in plan.newton_mr_ns if n <= args.max_n),
            )
        if args.no_mlp:
            plan = dataclasses.replace(plan, mlp_widths=())
        now = datetime.datetime.now(datetime.UTC)
        print(f"# benchmarks/count_validation.py {now:%Y-%m-%d %H:%M} UTC; {machine()}")
        print(f"# {plan}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        done = frozenset()
        if args.resume and args.out.exists():
            done = frozenset(
                point_id(r["case"], r["point"], r["num_params"]) for r in load_records(args.out)
            )
        else:
            args.out.unlink(missing_ok=True)
        run_validation(
            plan,
            args.out,
            log=lambda s: print(s, flush=True),
            time_budget=args.time_budget,
            done=done,
        )
    records = load_records(args.out)
    print(markdown_table(records), compact_table(records), sep="\n\n")
    print("figure:", *save_validation_figure(records, args.figure))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
