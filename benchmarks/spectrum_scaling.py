"""Scaling of the spectrum methods: dense time vs P, and SLQ time and memory at large P.

    python benchmarks/spectrum_scaling.py dense [--sizes 500 1000 2000 3466 5000]
    python benchmarks/spectrum_scaling.py slq [--width 1000] [--num-matvecs 50] [--num-probes 4]

Problem: scikit-learn digits (all 1,797 samples, 64 standardised pixels, 10 classes), tanh
MLPs, mean cross-entropy, at saddlestudy's initialisation (seed 0).

``dense``: float64 (exact counts are its purpose), P ~ 500 ... 5,000 with one hidden layer
of width w (P = 75 w + 10) and the issue's 64-32-32-10 (P = 3,466). For each P: the first call
of ``hessian_spectrum(method="dense")`` (compilation included), the second, and the second
split into its two stages (building H from P Hessian-vector products in vmapped chunks, and
``eigh``), with the chunk size the memory rule chose.

``slq``: float32, 64-w-w-10 (w = 1000: P = 1,076,010), ``hessian_spectrum(method="slq")``
run in a fresh subprocess so that its peak resident memory (``ru_maxrss``) can be read; the
memory the Krylov bases need, probes x m x P x 4 bytes, is printed beside it. Also one HVP and
one gradient at that P.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from _machine import machine  # benchmarks/_machine.py


def timed(fn):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def problem(widths, dtype):
    from saddlestudy import data, losses, models

    ds = data.digits(dtype=dtype)
    config = models.MLPConfig(64, 10, depth=len(widths), width=tuple(widths), activation="tanh")
    loss = losses.make_loss_fn(
        models.make_apply(config), jnp.asarray(ds.x), jnp.asarray(ds.y), loss="cross_entropy"
    )
    return config, loss, models.init_params(config, jax.random.key(0), dtype)


def dense_row(size: int) -> str:
    """One row of the dense table: a tanh MLP with P close to ``size``."""
    from saddlestudy import hessian, memory, spectrum

    widths = (32, 32) if size == 3466 else (max(1, round((size - 10) / 75)),)
    config, loss, params = problem(widths, "float64")

    def spectrum_call():
        return spectrum.hessian_spectrum(loss, params).eigenvalues

    first, _ = timed(spectrum_call)
    second, _ = timed(spectrum_call)
    chunk = memory.plan(loss, params, "dense")[1]
    build = jax.jit(hessian.dense_hessian_chunked, static_argnums=(0, 2))
    timed(lambda: build(loss, params, chunk))
    t_build, H = timed(lambda: build(loss, params, chunk))
    eigh = jax.jit(jnp.linalg.eigh)
    timed(lambda: eigh(H))
    t_eigh, _ = timed(lambda: eigh(H))
    arch = "-".join(str(n) for n in config.layer_sizes)
    return (
        f"| {config.num_params} | {arch} | {chunk} | {first:.2f} | {second:.2f} | "
        f"{t_build:.2f} | {t_eigh:.2f} |"
    )


def dense(args) -> None:
    jax.config.update("jax_enable_x64", True)
    print(f"# {datetime.date.today()}  {machine()}")
    print(
        "\n| P | architecture | chunk | first call (s) | second call (s) | build H (s) | eigh (s) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        print(dense_row(size), flush=True)


def slq_child(args) -> None:
    """Runs in a fresh process: peak RSS then belongs to this measurement alone."""
    from saddlestudy import hessian, memory, spectrum

    config, loss, params = problem((args.width, args.width), "float32")
    P = config.num_params
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    grad = jax.jit(jax.grad(loss))
    hvp = jax.jit(hessian.hvp, static_argnums=0)
    v = jax.tree.map(jnp.ones_like, params)
    timed(lambda: grad(params))
    timed(lambda: hvp(loss, params, v))
    t_grad = float(np.median([timed(lambda: grad(params))[0] for _ in range(3)]))
    t_hvp = float(np.median([timed(lambda: hvp(loss, params, v))[0] for _ in range(3)]))
    after_hvp = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def run():
        s = spectrum.hessian_spectrum(
            loss,
            params,
            method="slq",
            num_matvecs=args.num_matvecs,
            num_probes=args.num_probes,
        )
        return s.index

    first, _ = timed(run)
    second, _ = timed(run)
    s = spectrum.hessian_spectrum(
        loss, params, method="slq", num_matvecs=args.num_matvecs, num_probes=args.num_probes
    )
    chunk = memory.plan(loss, params, "slq", args.num_matvecs, args.num_probes)[1]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            dict(
                P=P,
                arch="-".join(str(n) for n in config.layer_sizes),
                m=args.num_matvecs,
                probes=args.num_probes,
                probes_in_flight=chunk,
                t_grad=t_grad,
                t_hvp=t_hvp,
                first=first,
                second=second,
                rss_start=base,
                rss_after_hvp=after_hvp,
                rss_peak=peak,
                krylov_bytes=chunk * args.num_matvecs * P * 4,
                index=float(s.index),
                index_sem=float(s.index_sem),
                index_bias_bound=float(s.index_bias_bound),
                lambda_min=float(s.lambda_min),
                lambda_max=float(s.lambda_max),
                converged=bool(s.converged),
            )
        )
    )


def slq(args) -> None:
    print(f"# {datetime.date.today()}  {machine()}")
    cmd = [
        sys.executable,
        __file__,
        "slq-child",
        "--width",
        str(args.width),
        "--num-matvecs",
        str(args.num_matvecs),
        "--num-probes",
        str(args.num_probes),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    gib = 2**30
    print(
        "\n| P | architecture | m | probes (in flight) | grad (s) | HVP (s) | first call (s) | "
        "second call (s) | second / (probes x m x HVP) | peak RSS (GiB) | RSS before SLQ "
        "(GiB) | Krylov bases (GiB) |"
    )
    print("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {r['P']} | {r['arch']} | {r['m']} | {r['probes']} ({r['probes_in_flight']}) | "
        f"{r['t_grad']:.2f} | {r['t_hvp']:.2f} | {r['first']:.1f} | {r['second']:.1f} | "
        f"{r['second'] / (r['probes'] * r['m'] * r['t_hvp']):.2f} | {r['rss_peak'] / gib:.2f} | "
        f"{r['rss_after_hvp'] / gib:.2f} | {r['krylov_bytes'] / gib:.2f} |"
    )
    print(
        f"\nindex {r['index']:.4f} +- {r['index_sem']:.4f} (sem) +- {r['index_bias_bound']:.4f} "
        f"(quadrature bound); lambda_min {r['lambda_min']:.4g}, lambda_max "
        f"{r['lambda_max']:.4g}, converged {r['converged']}"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dense")
    d.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 3466, 5000])
    for name in ("slq", "slq-child"):
        p = sub.add_parser(name)
        p.add_argument("--width", type=int, default=1000)
        p.add_argument("--num-matvecs", type=int, default=50)
        p.add_argument("--num-probes", type=int, default=4)
    args = parser.parse_args(argv)
    {"dense": dense, "slq": slq, "slq-child": slq_child}[args.command](args)


if __name__ == "__main__":
    main()
