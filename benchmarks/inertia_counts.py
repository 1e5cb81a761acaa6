"""Benchmarks of ``hessian_inertia`` (issue 12's performance goals), run by hand.

    python benchmarks/inertia_counts.py [--part dense|lanczos|mlp|all] [--dense-width 96]
                                 [--samples 512] [--train-steps 300]

- ``dense``: the Hessian of a digits tanh MLP 64-96-96-10 (P = 16,522, float64) built from
  Hessian-vector products, then on the same matrix: the two ``sytrf`` factorisations of one
  tolerance (two ``inertia.ldl_inertia`` calls), one ``numpy.linalg.eigvalsh`` and one
  ``scipy.linalg.eigvalsh`` (LAPACK ``syevr``), interleaved; the counts must agree.
- ``lanczos``: the deep linear autoencoder n = 128, p = 64 (P = 16,384) at a critical point
  with a known number of isolated negatives (the analytic count of tests/test_inertia.py),
  deflated Lanczos at tau = 0.1: the number of products, exactness, wall time.
- ``mlp``: the peer benchmark's point, a digits tanh MLP 64-192-192-10 (P = 51,466) after
  ``--train-steps`` Adam steps in float64: the count below -c * lambda_max (c =
  ``--relative-tol``, default 1e-3) by deflated Lanczos (``--max-matvecs``,
  ``--max-locked``) then SLQ, its bounds, the products and wall time.
"""

from __future__ import annotations

import argparse
import datetime
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg
from _machine import machine

jax.config.update("jax_enable_x64", True)

from saddlestudy import data, hessian, inertia, losses, memory, models  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return out, time.perf_counter() - t0


def digits_mlp(widths, samples, steps):
    ds = data.digits(num_samples=samples, dtype="float64")
    config = models.MLPConfig(64, 10, depth=len(widths), width=tuple(widths), activation="tanh")
    loss = losses.make_loss_fn(
        models.make_apply(config), jnp.asarray(ds.x), jnp.asarray(ds.y), loss="cross_entropy"
    )
    params = models.init_params(config, jax.random.key(0), dtype="float64")
    opt = optax.adam(1e-3)

    @jax.jit
    def run(params):
        def step(carry, _):
            params, state = carry
            updates, state = opt.update(jax.grad(loss)(params), state)
            return (optax.apply_updates(params, updates), state), None

        return jax.lax.scan(step, (params, opt.init(params)), None, steps)[0][0]

    return loss, run(params), config.num_params


def two_factorisations(H, tau):
    """(#{< -tau}, #{|.| <= tau}, #{> tau}) from two sytrf factorisations (H + tau I, H - tau I)."""
    below = inertia.ldl_inertia(H, -tau)[0]
    above = inertia.ldl_inertia(H, tau)[2]
    return below, H.shape[0] - below - above, above


def signs(eigenvalues, tau):
    """(#{< -tau}, #{|.| <= tau}, #{> tau})."""
    e = eigenvalues
    return int(np.sum(e < -tau)), int(np.sum(np.abs(e) <= tau)), int(np.sum(e > tau))


def part_dense(args):
    loss, params, P = digits_mlp((args.dense_width,) * 2, args.samples, args.train_steps)
    print(f"dense: digits tanh MLP 64-{args.dense_width}-{args.dense_width}-10, P = {P}, "
          f"{args.samples} samples, {args.train_steps} Adam steps, float64")  # fmt: skip
    chunk = memory.plan(loss, params, "dense")[1]
    build = jax.jit(lambda p: hessian.dense_hessian_chunked(loss, p, chunk))
    H, t_build = timed(lambda: build(params))
    H = np.asarray(H)
    print(f"  Hessian build ({P} HVPs, chunk {chunk}): {t_build:.1f} s")
    tau = 1e-5
    rows = {"sytrf x2": [], "numpy eigvalsh": [], "scipy eigvalsh (syevr)": []}
    counts = {}
    for _ in range(args.repeats):
        c, t = timed(lambda: two_factorisations(H, tau))
        rows["sytrf x2"].append(t)
        counts["sytrf x2"] = c
        e, t = timed(lambda: np.linalg.eigvalsh(H))
        rows["numpy eigvalsh"].append(t)
        counts["numpy eigvalsh"] = signs(e, tau)
        e, t = timed(lambda: scipy.linalg.eigvalsh(H, driver="evr", check_finite=False))
        rows["scipy eigvalsh (syevr)"].append(t)
        counts["scipy eigvalsh (syevr)"] = signs(e, tau)
    base = np.median(rows["sytrf x2"])
    for name, ts in rows.items():
        med = float(np.median(ts))
        print(f"  {name:24} median {med:7.1f} s over {len(ts)}  ratio to sytrf x2 "
              f"{med / base:5.2f}  counts (neg, zero, pos) at 1e-5: {counts[name]}")  # fmt: skip
    assert len({tuple(c) for c in counts.values()}) == 1, counts


def analytic_num_negative(n, p, subset):
    out = [j for j in range(n) if j not in subset]
    return sum(1 for i in subset for j in out if j < i) + (p - len(subset)) * (n - len(subset))


def part_lanczos(args):
    n, p = 128, 64
    subset = tuple(range(56)) + (57, 60, 63, 66, 69, 72, 75, 78)  # 64 negatives
    truth = analytic_num_negative(n, p, subset)
    lam = jnp.arange(n, 0, -1.0, dtype=jnp.float64)

    def loss(prm):
        r = jnp.eye(n, dtype=lam.dtype) - prm["w2"] @ prm["w1"]
        return 0.5 * jnp.sum(lam[:, None] * r * r)

    w1 = np.zeros((p, n))
    w1[np.arange(len(subset)), list(subset)] = 1.0
    params = {"w1": jnp.asarray(w1), "w2": jnp.asarray(w1.T)}
    print(f"lanczos: linear autoencoder n = {n}, p = {p}, P = {2 * n * p}, a critical point "
          f"with {truth} negative eigenvalues (analytic), tau = 0.1")  # fmt: skip
    for seed in range(args.seeds):
        r, t = timed(
            lambda seed=seed: inertia.hessian_inertia(
                loss, params, zero_tol=0.1, method="lanczos", key=jax.random.key(seed)
            )
        )
        print(f"  seed {seed}: lo {r.num_negative_lo} hi {r.num_negative_hi} exact {r.exact} "
              f"(truth {truth}), {r.num_matvecs} HVPs, resolution {r.resolution:.2e}, "
              f"{t:.1f} s (first call compiles)")  # fmt: skip


def part_mlp(args):
    loss, params, P = digits_mlp((192, 192), 1797, args.train_steps)
    print(f"mlp: digits tanh MLP 64-192-192-10, P = {P}, 1797 samples, "
          f"{args.train_steps} Adam steps (lr 1e-3), float64")  # fmt: skip
    r, t = timed(
        lambda: inertia.hessian_inertia(
            loss,
            params,
            relative_tol=args.relative_tol,
            method="lanczos+slq",
            max_matvecs=args.max_matvecs,
            max_locked=args.max_locked,
        )
    )
    print(f"  tau = {args.relative_tol:g} * lambda_max = {r.zero_tol:.3e} "
          f"(Ritz lambda_max {r.ritz_max:.4g}, "
          f"Ritz lambda_min {r.ritz_min:.4g}): lo {r.num_negative_lo} hi {r.num_negative_hi} "
          f"exact {r.exact}, failure prob {r.failure_prob}, {r.num_matvecs} HVPs, "
          f"resolution {r.resolution:.2e}, {t:.1f} s; method {r.method}, SLQ estimate "
          f"{r.num_negative if not r.exact else '-'} +- {r.index_sem * P:.0f} (sem) "
          f"+- {r.index_bias_bound * P:.0f} (bias bound)")  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="all", choices=["dense", "lanczos", "mlp", "all"])
    parser.add_argument("--dense-width", type=int, default=96)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-matvecs", type=int, default=3000)
    parser.add_argument("--max-locked", type=int, default=256)
    parser.add_argument("--relative-tol", type=float, default=1e-3)
    args = parser.parse_args(argv)
    print(f"# benchmarks/inertia_counts.py {datetime.date.today()}; {machine()}")
    for name, fn in (("lanczos", part_lanczos), ("mlp", part_mlp), ("dense", part_dense)):
        if args.part in (name, "all"):
            fn(args)


if __name__ == "__main__":
    main()
