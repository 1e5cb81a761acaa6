"""Frye et al.'s critical-point-finder comparison on the deep linear autoencoder, then a tanh MLP.

    python benchmarks/critical_frye.py [--starts 32] [--methods newton_mr damped_newton ...]
        [--loss samples|covariance] [--batching map|vmap] [--max-iters N]
        [--mlp-starts 16] [--skip-mlp]

Part 1, Frye et al. (2019, 2021)'s setting: the deep linear autoencoder n = 16, p = 4 (P = 128),
covariance diag(1, ..., 16), N = 10,000 samples, loss mean_n 1/2 |x_n - W2 W1 x_n|^2. Starts:
gradient-descent trajectories from ``--trajectories`` random initialisations (SGD, lr 0.01,
full batch), the parameters saved when the loss first falls below levels drawn uniformly
between the global minimum (39) and the smallest initial loss ("chosen uniformly by loss");
every second start gets Gaussian noise of variance 1e-2 on every parameter. Every method runs
from the same starts (``find_critical_points``, one compiled program per method).

A run succeeds when |grad L|^2 < 1e-10 *and* the point is a true critical point: W = W1 W2
(in the code's row convention) is, in the eigenbasis of the covariance, diagonal with 0/1
entries (|W - P_I| < 1e-4, a projection onto eigenvectors I, |I| <= p) and the loss equals
1/2 sum_{i not in I} lambda_i to 1e-6. The dense Hessian index at the point is compared with
the index at the analytic point of the same I (``index ok``).

``--methods`` also takes the ablations in ``VARIANTS`` (Newton-MR without our step bound,
and with Frye et al.'s MINRES-QLP settings; gradnorm with Adam).

``--loss covariance`` computes the same loss through the sample covariance (1/2 tr((I - W)^T
Sigma (I - W)), equal to the sample mean to rounding): the same iterates, about 30x cheaper,
for quick sweeps. Timings in BENCHMARKS.md use ``--loss samples``.

Part 2: a tanh MLP (one hidden layer of width 8) on scikit-learn's digits, PCA to 8
dimensions, 256 samples, MSE on one-hot targets (P = 162); starts along Adam trajectories
chosen uniformly by loss; Newton-MR from each; counts of runs that end converged, gradient-flat
(Frye et al. 2021's residual test) or neither.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from saddlestudy import critical, data, losses, models, train
from saddlestudy.spectrum import hessian_spectrum

GLOBAL_MIN = 39.0  # 1/2 (1 + ... + 12): I = the top four eigenvalues


def linear_autoencoder_problem(kind: str):
    ds = data.linear_autoencoder(16, 10_000, rotate=False, seed=0, dtype="float64")
    config = models.linear_autoencoder_config(16, 4)
    if kind == "samples":
        loss_fn = losses.make_loss_fn(
            models.make_apply(config), jnp.asarray(ds.x), jnp.asarray(ds.y), loss="half_mse"
        )
    else:
        sigma = jnp.asarray(ds.x.T @ ds.x / ds.x.shape[0])

        def loss_fn(params):
            residual = jnp.eye(16) - params["layers"][0]["kernel"] @ params["layers"][1]["kernel"]
            return 0.5 * jnp.trace(residual.T @ sigma @ residual)

    return ds, config, loss_fn


def select(tree, idx):
    return jax.tree.map(lambda a: a[idx], tree)


# Ablations of our Newton-MR: without the adaptive step bound, and with the MINRES-QLP
# settings of Frye et al.'s own code as well (25 iterations, |p| <= 1e4, condition <= 1e7).
VARIANTS = {
    "newton_mr_no_bound": ("newton_mr", critical.FinderOptions(adaptive_radius=False)),
    "newton_mr_frye_settings": (
        "newton_mr",
        critical.FinderOptions(
            adaptive_radius=False, linear_maxiter=25, max_step_norm=1e4, max_condition=1e7
        ),
    ),
    "gradnorm_adam": ("gradnorm", critical.FinderOptions(gradnorm_optimizer="adam")),
}


def run_method(loss_fn, starts, method, max_iters, batching):
    """Compile (timed separately, ahead of time) and run one method on all starts."""
    method, options = VARIANTS.get(method, (method, None))
    t0 = time.perf_counter()
    run = critical.compile_critical_points(
        loss_fn, starts, method=method, max_iters=max_iters, options=options, batching=batching
    )
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(run())
    return out, compile_s, time.perf_counter() - t0


def classify_autoencoder_point(params, loss, eigenvalues, eigenvectors, p):
    """(is a true critical point, I) from W = W1 W2 in the eigenbasis."""
    W = np.asarray(params["layers"][0]["kernel"] @ params["layers"][1]["kernel"])
    D = eigenvectors.T @ W @ eigenvectors
    d = np.clip(np.round(np.diag(D)), 0, 1)
    projection_ok = np.max(np.abs(D - np.diag(d))) < 1e-4
    I = tuple(np.flatnonzero(d == 1))
    value = 0.5 * (eigenvalues.sum() - eigenvalues[list(I)].sum())
    return bool(projection_ok and len(I) <= p and abs(loss - value) < 1e-6), I


def analytic_index(loss_fn, I, eigenvectors, n, p):
    K0 = np.zeros((n, p))
    K1 = np.zeros((p, n))
    K0[:, : len(I)] = eigenvectors[:, list(I)]
    K1[: len(I), :] = eigenvectors[:, list(I)].T
    point = {"layers": {0: {"kernel": jnp.asarray(K0)}, 1: {"kernel": jnp.asarray(K1)}}}
    return int(hessian_spectrum(loss_fn, point, zero_tol=1e-5).num_negative)


def part1(args):
    ds, config, loss_fn = linear_autoencoder_problem(args.loss)
    lam, U = ds.metadata["eigenvalues"], ds.metadata["eigenvectors"]
    T = args.trajectories
    params0 = models.init_replicas(config, jax.random.key(args.seed), T, dtype="float64")
    init_losses = np.asarray(jax.vmap(loss_fn)(params0))
    rng = np.random.default_rng(args.seed)
    # One loss level per start, uniform between the global minimum and the highest level
    # every trajectory passes; start j is trajectory j mod T when it first reaches level j.
    levels = np.sort(rng.uniform(GLOBAL_MIN, init_losses.min(), size=args.starts))[::-1]
    result = train.train_replicas(
        loss_fn,
        params0,
        optax.sgd(0.01),
        train.TrainConfig(num_steps=3000, record_every=100, snapshot_losses=tuple(levels)),
    )
    assert np.all(np.asarray(result.loss_snapshot_steps) >= 0), "a loss level was not reached"
    traj = np.arange(args.starts) % T
    starts = jax.tree.map(lambda a: a[traj, np.arange(args.starts)], result.loss_snapshots)
    noisy = np.arange(args.starts) % 2 == 1
    starts = jax.tree.map(
        lambda a: a + noisy.reshape((-1,) + (1,) * (a.ndim - 1)) * 0.1 * rng.normal(size=a.shape),
        starts,
    )
    start_losses = np.asarray(jax.vmap(loss_fn)(starts))
    print(f"# part 1: deep linear autoencoder n=16 p=4 N=10000, loss via {args.loss}")
    lo, hi = start_losses.min(), start_losses.max()
    print(f"# {args.starts} starts from {T} GD trajectories, start losses {lo:.2f}..{hi:.2f}, "
          f"{noisy.sum()} with noise var 1e-2")  # fmt: skip
    index_cache = {}
    rows = []
    for method in args.methods:
        out, compile_s, run_s = run_method(loss_fn, starts, method, args.max_iters, args.batching)
        success, index_ok, loss_match = [], [], []
        values = {
            0.5 * (lam.sum() - lam[list(I)].sum())
            for k in range(5)
            for I in itertools.combinations(range(16), k)
        }
        for i in range(args.starts):
            loss = float(out.loss[i])
            conv = bool(out.converged[i])
            true_cp, I = classify_autoencoder_point(select(out.params, i), loss, lam, U, 4)
            ok = conv and true_cp
            success.append(ok)
            loss_match.append(conv and min(abs(loss - v) for v in values) < 1e-6)
            if ok:
                if I not in index_cache:
                    index_cache[I] = analytic_index(loss_fn, I, U, 16, 4)
                found = int(hessian_spectrum(loss_fn, select(out.params, i)).num_negative)
                index_ok.append(found == index_cache[I])
        success = np.array(success)
        status = np.array(out.status_name())
        n_ok = int(success.sum())
        rows.append(
            dict(
                method=method,
                success=n_ok,
                loss_match=int(np.sum(loss_match)),
                starts=args.starts,
                index_ok=int(np.sum(index_ok)),
                flat=int(np.sum(out.gradient_flat)),
                stalled=int(np.sum(status == "stalled")),
                max_iters=int(np.sum(status == "max_iters")),
                median_iters=float(np.median(np.asarray(out.iterations)[success]))
                if n_ok
                else float("nan"),
                hvps=int(np.sum(out.num_hvps)),
                grads=int(np.sum(out.num_grads)),
                run_s=run_s,
                compile_s=compile_s,
                minima=int(np.sum(np.abs(np.asarray(out.loss)[success] - GLOBAL_MIN) < 1e-6)),
            )
        )
        r = rows[-1]
        print(f"  {method}: {n_ok}/{args.starts} ok, run {run_s:.1f}s, compile {compile_s:.1f}s",
              flush=True)  # fmt: skip
    print()
    print("| method | success | loss matches | index ok | at global min | gradient-flat | stalled "
          "| hit max_iters | median iters (successes) | HVPs + grads (all runs) "
          "| wall s (run) | s per success | compile s |")  # fmt: skip
    print("| --- " * 13 + "|")
    for r in rows:
        per = r["run_s"] / r["success"] if r["success"] else float("inf")
        cells = [
            r["method"],
            f"{r['success']}/{r['starts']} ({100 * r['success'] / r['starts']:.0f}%)",
            r["loss_match"],
            f"{r['index_ok']}/{r['success']}",
            r["minima"],
            r["flat"],
            r["stalled"],
            r["max_iters"],
            f"{r['median_iters']:.0f}",
            f"{r['hvps']} + {r['grads']}",
            f"{r['run_s']:.1f}",
            f"{per:.2f}",
            f"{r['compile_s']:.1f}",
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    return rows


def part2(args):
    ds = data.digits(pca_dim=8, num_samples=256, seed=0, dtype="float64")
    config = models.MLPConfig(ds.input_dim, ds.output_dim, depth=1, width=8, activation="tanh")
    y = np.eye(ds.output_dim)[np.asarray(ds.y)]
    loss_fn = losses.make_loss_fn(
        models.make_apply(config), jnp.asarray(ds.x), jnp.asarray(y), loss="mse"
    )
    T = args.trajectories
    R = args.mlp_starts
    params0 = models.init_replicas(config, jax.random.key(args.seed), T, dtype="float64")
    warm = train.train_replicas(loss_fn, params0, optax.adam(0.02), train.TrainConfig(2000, 100))
    low = float(np.max(np.asarray(warm.loss)))
    high = float(np.min(np.asarray(jax.vmap(loss_fn)(params0))))
    rng = np.random.default_rng(args.seed + 1)
    levels = np.sort(rng.uniform(low, high, size=R))[::-1]
    result = train.train_replicas(
        loss_fn, params0, optax.adam(0.02),
        train.TrainConfig(2000, 100, snapshot_losses=tuple(levels)),
    )  # fmt: skip
    traj = np.arange(R) % T
    starts = jax.tree.map(lambda a: a[traj, np.arange(R)], result.loss_snapshots)
    reached = np.asarray(result.loss_snapshot_steps)[traj, np.arange(R)] >= 0
    for label, options in (
        ("Newton-MR", None),
        ("Newton-MR, no step bound", critical.FinderOptions(adaptive_radius=False)),
    ):
        if label != "Newton-MR" and args.mlp_plain_starts == 0:
            continue
        n = R if options is None else min(R, args.mlp_plain_starts)
        part2_run(args, loss_fn, config, select(starts, slice(0, n)), reached[:n], label,
                  options, low, high, T)  # fmt: skip


def part2_run(args, loss_fn, config, starts, reached, label, options, low, high, T):
    t0 = time.perf_counter()
    run = critical.compile_critical_points(
        loss_fn, starts, max_iters=args.max_iters, options=options, batching=args.batching
    )
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(run())
    run_s = time.perf_counter() - t0
    conv = np.asarray(out.converged) & reached
    flat = np.asarray(out.gradient_flat) & reached
    other = reached & ~conv & ~flat
    status = np.array(out.status_name())
    print(
        f"\n# part 2: tanh MLP 8-8-10 on digits (PCA 8, 256 samples, MSE), P = {config.num_params}"
    )
    print(f"# {int(reached.sum())} starts along {T} Adam trajectories, uniform by loss in "
          f"[{low:.3f}, {high:.3f}]; {label}, max_iters {out.max_iters}")  # fmt: skip
    print(f"  converged: {int(conv.sum())}, gradient-flat: {int(flat.sum())}, neither: "
          f"{int(other.sum())} (status of those: {sorted(status[other].tolist())})")  # fmt: skip
    print(f"  run {run_s:.1f}s, compile {compile_s:.1f}s")
    if conv.any():
        idx = []
        for i in np.flatnonzero(conv):
            idx.append(int(hessian_spectrum(loss_fn, select(out.params, i)).num_negative))
        print(f"  converged points: loss {np.round(np.asarray(out.loss)[conv], 4).tolist()}, "
              f"#negative eigenvalues (zero_tol 1e-5) {idx}")  # fmt: skip
    r = np.asarray(out.flat_residual)[reached & ~conv]
    rh = np.asarray(out.flat_residual_hessian)[reached & ~conv]
    print(f"  non-converged: r = {np.round(r, 3).tolist()}, r_H = {[f'{v:.1e}' for v in rh]}")
    print(f"  final |grad|^2 of non-converged: "
          f"{[f'{v:.1e}' for v in np.asarray(out.grad_norm_sq)[reached & ~conv]]}")  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=32)
    parser.add_argument("--trajectories", type=int, default=8)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(critical.METHODS),
        choices=list(critical.METHODS) + list(VARIANTS),
    )
    parser.add_argument("--max-iters", type=int, default=None, help="default: per method")
    parser.add_argument("--loss", choices=("samples", "covariance"), default="samples")
    parser.add_argument("--batching", choices=critical.BATCHING, default="map")
    parser.add_argument("--mlp-starts", type=int, default=32)
    parser.add_argument(
        "--mlp-plain-starts",
        type=int,
        default=16,
        help="starts for Newton-MR without the adaptive step bound (0: skip)",
    )
    parser.add_argument("--skip-mlp", action="store_true")
    parser.add_argument("--skip-autoencoder", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    machine = platform.processor() or platform.machine()
    print(f"# {datetime.date.today()} jax {jax.__version__} on {jax.devices()[0].platform} "
          f"({machine}, {os.cpu_count()} cores), git {commit}; args {vars(args)}")  # fmt: skip
    if not args.skip_autoencoder:
        part1(args)
    if not args.skip_mlp:
        part2(args)


if __name__ == "__main__":
    main()
