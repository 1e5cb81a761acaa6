"""Throughput of replica-batched training: the vmapped engine vs a Python loop of single runs.

    python benchmarks/train_throughput.py [--replicas 1 16 256 1024] [--steps 200]
        [--optimizer irprop-] [--num-samples 256]

Problem: scikit-learn digits (64 inputs, 10 classes; a seeded subset of --num-samples),
an MLP of depth 2 and width 16 (tanh), cross-entropy, full batch, float32. For each R, both
contenders train the same R replicas for the same number of steps, side by side in one run:

- engine: ``train_replicas`` on all R replicas at once (one compiled, vmapped program);
- loop:   the same engine compiled once for R = 1 and called R times from Python.

Reports seconds per run (second call: compilation excluded), compile time (first call minus
second), replica-steps per second, and the speed-up engine / loop. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import functools
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from saddlestudy import data, losses, models, optim, train


def timed(fn):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 16, 256, 1024])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--optimizer", default="irprop-")
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--loop-max", type=int, default=1024, help="largest R the loop is run for")
    args = parser.parse_args(argv)

    ds = data.digits(num_samples=args.num_samples, seed=0)
    config = models.MLPConfig(ds.input_dim, ds.output_dim, depth=2, width=16, activation="tanh")
    loss_fn = losses.make_loss_fn(
        models.make_apply(config), jnp.asarray(ds.x), jnp.asarray(ds.y), loss="cross_entropy"
    )
    opt = optim.make_optimizer(args.optimizer, learning_rate=args.learning_rate)
    cfg = train.TrainConfig(num_steps=args.steps, record_every=args.steps)

    print(
        f"# device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), "
        f"{platform.processor() or platform.machine()}, jax {jax.__version__}"
    )
    print(
        f"# digits N={ds.num_samples}, MLP 64-16-16-10 tanh (P={config.num_params}), "
        f"{args.optimizer}, {args.steps} full-batch steps, float32\n"
    )
    print("| R | engine s | engine compile s | loop s | engine replica-steps/s | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    run = functools.partial(train.train_replicas, loss_fn, optimizer=opt, config=cfg)
    for R in args.replicas:
        params_R = models.init_replicas(config, jax.random.key(R), R)
        first = timed(functools.partial(run, params_R))
        engine = timed(functools.partial(run, params_R))
        singles = [jax.tree.map(lambda a, r=r: a[r : r + 1], params_R) for r in range(R)]
        timed(functools.partial(run, singles[0]))  # compiles the R = 1 program if needed
        if R <= args.loop_max:
            loop_s = timed(functools.partial(lambda ps: [run(p).loss for p in ps], singles))
            loop_txt, ratio = f"{loop_s:.3f}", f"{loop_s / engine:.1f}x"
        else:
            loop_txt, ratio = "-", "-"
        print(
            f"| {R} | {engine:.3f} | {first - engine:.2f} | {loop_txt} | "
            f"{R * args.steps / engine:,.0f} | {ratio} |",
            flush=True,
        )
    # Sanity: both contenders compute the same numbers.
    params_R = models.init_replicas(config, jax.random.key(3), 4)
    batched = train.train_replicas(loss_fn, params_R, opt, cfg).loss
    single = [
        float(
            train.train_replicas(
                loss_fn, jax.tree.map(lambda a, r=r: a[r : r + 1], params_R), opt, cfg
            ).loss[0]
        )
        for r in range(4)
    ]
    np.testing.assert_allclose(np.asarray(batched), single, rtol=1e-4, atol=1e-6)


if __name__ == "__main__":
    main()
