"""Top-10 Hessian eigenvalues: saddlestudy Lanczos vs PyHessian vs hessian-eigenthings.

    OPENBLAS_NUM_THREADS=1 python benchmarks/spectrum_peers.py [--repeats 5] [--seeds 5]
        [--train-steps 300] [--skip-large] [--single-thread]

Problem (issue 4): scikit-learn digits (all 1,797 samples, 64 standardised pixels, 10
classes), tanh MLPs 64-32-32-10 (P = 3,466) and 64-192-192-10 (P = 51,466), mean softmax
cross-entropy, full batch, float32 (the peers' precision). The weights are those after
``--train-steps`` full-batch Adam steps from saddlestudy's initialisation (seed 0), copied into
an identical ``torch.nn.Sequential``; the script checks that both frameworks give the same loss
and the same Hessian-vector product before timing anything.

Contenders, side by side in one run (each repeat times every contender once, in turn, so that
load from other users of the machine hits them alike; the median is reported):

- saddlestudy ``hessian_eigenpairs(loss, params, 10, which="largest", num_matvecs=m,
  stop_early=False)``: Lanczos with full reorthogonalisation at a fixed depth, compiled once
  (first call reported separately); and as a user calls it, ``hessian_eigenpairs(loss,
  params, 10)`` (stops once the top 10 have converged to the default tol = sqrt(eps), checked
  every 2 steps) and with ``tol=1e-3``;
- PyHessian 0.1 ``hessian(model, criterion, data=(x, y), cuda=False).eigenvalues(top_n=10)``:
  deflated power iteration (its defaults maxIter=100, tol=1e-3, and a tighter tol=1e-6);
- hessian-eigenthings 1.0.0a5 ``lanczos(HessianOperator(...), k=10, which="LA")``: its
  default ``max_iter = 2k`` and ``max_iter = m`` (full reorthogonalisation), the same Krylov
  depth as saddlestudy.

Accuracy: max over the top 10 of |lambda_i - lambda_i^ref| / |lambda_i^ref|, the worst over
``--seeds`` random start vectors (seeds 0, 1, ...: at a fixed Krylov depth the error changes by
orders of magnitude from one start to the next, so a single seed can favour either tool),
against a float64 reference: the dense spectrum (P = 3,466) or float64 Lanczos with 400
matvecs whose residual bounds certify every one of the 10 (P = 51,466; the dense Hessian would
need 21 GB). Timings use seed 0 (the cost does not depend on the start).

Also measured on the same problems: HVP time / gradient time (jitted; torch for comparison)
and saddlestudy Lanczos wall time / (m x one HVP time). Prints Markdown tables and a summary:
for each tool its cheapest setting within 1e-4 relative error, the speed-ups, and the two
Lanczos implementations' cost ratio at equal depth.

``--single-thread`` runs XLA and torch on one thread each (set before JAX starts): on a CPU
shared with other jobs, idle-spinning thread pools make two-thread timings erratic.
OPENBLAS_NUM_THREADS=1 matters for the same reason: JAX's CPU ``eigh`` calls OpenBLAS, whose
threads slow small eigenproblems by 10-100x when the cores are busy.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from functools import partial

if "--single-thread" in sys.argv:  # must precede the first JAX import
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _machine import machine  # benchmarks/_machine.py

from saddlestudy import data, hessian, losses, models
from saddlestudy.spectrum import hessian_eigenpairs, hessian_spectrum

jax.config.update("jax_enable_x64", True)  # float64 only for the references

TOP = 10


def timed(fn, sync=True):
    """Seconds one call takes (waiting for JAX's asynchronous dispatch), and its output."""
    t0 = time.perf_counter()
    out = fn()
    if sync:
        jax.block_until_ready(out)
    return time.perf_counter() - t0, out


def rel_err(values, reference):
    values = np.sort(np.asarray(values, np.float64))[::-1][:TOP]
    return float(np.max(np.abs(values - reference) / np.abs(reference)))


def train(loss_fn, params, steps):
    opt = optax.adam(1e-3)

    @jax.jit
    def run(params):
        def step(carry, _):
            p, s = carry
            g = jax.grad(loss_fn)(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (params, opt.init(params)), None, length=steps)[0][0]

    return run(params)


def torch_model(config, params):
    import torch

    layers = []
    sizes = config.layer_sizes
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = torch.nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.asarray(params["layers"][i]["kernel"]).T.copy()))
            lin.bias.copy_(torch.from_numpy(np.asarray(params["layers"][i]["bias"]).copy()))
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


class Counter:
    """Counts calls of a function (Hessian-vector products of the torch peers)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def run_problem(name, widths, ds, args, rows, ratio_rows):
    import importlib

    import hessian_eigenthings as he
    import torch

    # pyhessian/__init__ re-exports the class `hessian`, which shadows the module name.
    ph = importlib.import_module("pyhessian.hessian")

    config = models.MLPConfig(64, 10, depth=len(widths), width=tuple(widths), activation="tanh")
    P = config.num_params
    x32, y = jnp.asarray(ds.x, jnp.float32), jnp.asarray(ds.y)
    apply = models.make_apply(config)
    loss32 = losses.make_loss_fn(apply, x32, y, loss="cross_entropy")
    loss64 = losses.make_loss_fn(apply, x32.astype(jnp.float64), y, loss="cross_entropy")
    params32 = train(
        loss32, models.init_params(config, jax.random.key(0), "float32"), args.train_steps
    )
    params64 = jax.tree.map(lambda a: a.astype(jnp.float64), params32)

    model = torch_model(config, params32)
    xt = torch.from_numpy(np.array(ds.x, np.float32))
    yt = torch.from_numpy(ds.y.astype(np.int64))
    criterion = torch.nn.CrossEntropyLoss()

    # The same function in both frameworks: loss and one Hessian-vector product.
    flat, unravel = jax.flatten_util.ravel_pytree(params32)
    v = jax.random.normal(jax.random.key(5), flat.shape, jnp.float32)
    hv_jax = jax.flatten_util.ravel_pytree(
        jax.jit(hessian.hvp, static_argnums=0)(loss32, params32, unravel(v))
    )[0]
    op = he.HessianOperator(model, [(xt, yt)], he.supervised_loss(criterion))

    # torch parameter order (W1, b1, W2, ...) vs ravel_pytree's (b1, W1 (in, out), ...): map.
    def to_torch_order(flat_jax):
        tree = unravel(jnp.asarray(flat_jax))
        parts = []
        for i in range(len(widths) + 1):
            parts += [
                np.asarray(tree["layers"][i]["kernel"]).T.ravel(),
                np.asarray(tree["layers"][i]["bias"]),
            ]
        return np.concatenate(parts)

    hv_torch = op.matvec(torch.from_numpy(to_torch_order(v))).numpy()
    loss_gap = abs(float(loss32(params32)) - float(criterion(model(xt), yt).detach()))
    hvp_gap = float(np.linalg.norm(hv_torch - to_torch_order(hv_jax)) / np.linalg.norm(hv_torch))
    print(
        f"[{name}] P = {P}: |loss_jax - loss_torch| = {loss_gap:.1e}, HVP rel. gap = {hvp_gap:.1e}"
    )
    assert loss_gap < 1e-5 and hvp_gap < 1e-4

    # float64 reference.
    if P <= 6000:
        t_ref, ref = timed(lambda: hessian_spectrum(loss64, params64))
        reference = np.asarray(ref.eigenvalues)[::-1][:TOP]
        ref_note = f"float64 dense ({t_ref:.0f} s)"
    else:
        t_ref, pairs = timed(
            lambda: hessian_eigenpairs(loss64, params64, TOP, num_matvecs=400, stop_early=False)
        )
        reference = np.asarray(pairs.eigenvalues)
        bound = float(np.max(np.asarray(pairs.residual_bounds) / np.abs(reference)))
        assert bound < 1e-8, bound
        ref_note = (
            f"float64 Lanczos, 400 matvecs, residual bounds <= {bound:.1e} rel. ({t_ref:.0f} s)"
        )
    print(f"[{name}] reference top-{TOP}: {np.array2string(reference, precision=5)}  [{ref_note}]")

    # Contenders.
    ms = args.matvecs

    # Every contender is a function of the seed of its random start vector(s).
    def ours(m, tol=None, seed=0):
        """Fixed depth m (no early stop), or m=None: stop once the top 10 meet ``tol``."""
        kwargs = dict(stop_early=False, num_matvecs=m) if m else dict(tol=tol)
        key = jax.random.key(seed)

        def run():
            pairs = hessian_eigenpairs(loss32, params32, TOP, which="largest", key=key, **kwargs)
            return pairs.eigenvalues, int(pairs.num_matvecs)

        return run

    def pyhessian(tol, seed=0):
        def run():
            torch.manual_seed(seed)  # PyHessian draws its start vectors from torch's generator
            counter = Counter(ph.hessian_vector_product)
            ph.hessian_vector_product = counter
            try:
                h = ph.hessian(model, criterion, data=(xt, yt), cuda=False)
                values, _ = h.eigenvalues(maxIter=100, tol=tol, top_n=TOP)
            finally:
                ph.hessian_vector_product = counter.fn
            return np.asarray(values), counter.calls

        return run

    def eigenthings(max_iter, seed=0):
        def run():
            operator = he.HessianOperator(model, [(xt, yt)], he.supervised_loss(criterion))
            operator.matvec = Counter(operator.matvec)
            result = he.lanczos(
                operator, k=TOP, which="LA", max_iter=max_iter, seed=seed, reorthogonalize=True
            )
            return result.eigenvalues.numpy(), operator.matvec.calls

        return run

    contenders = {f"saddlestudy Lanczos, m = {m}": partial(ours, m) for m in ms}
    contenders["saddlestudy Lanczos, early stop, tol = sqrt(eps) (default)"] = partial(ours, None)
    contenders["saddlestudy Lanczos, early stop, tol = 1e-3"] = partial(ours, None, 1e-3)
    first = {k: timed(make())[0] for k, make in contenders.items()}  # compile included
    contenders["PyHessian power iteration, tol = 1e-3 (default)"] = partial(pyhessian, 1e-3)
    contenders["PyHessian power iteration, tol = 1e-6"] = partial(pyhessian, 1e-6)
    contenders[f"hessian-eigenthings Lanczos, max_iter = {2 * TOP} (default)"] = partial(
        eigenthings, 2 * TOP
    )
    for m in ms:
        contenders[f"hessian-eigenthings Lanczos, max_iter = {m}"] = partial(eigenthings, m)

    # Timing: seed 0, every contender in turn in each repeat.
    times = {k: [] for k in contenders}
    for _ in range(args.repeats):
        for label, make in contenders.items():
            times[label].append(timed(make())[0])  # ours: int(num_matvecs) waits for it
    # Accuracy: the worst over `--seeds` start vectors, because at a given depth the error of
    # a Krylov method varies by orders of magnitude from one random start to the next.
    for label, make in contenders.items():
        errs, hvps = [], []
        for seed in range(args.seeds):
            values, calls = make(seed=seed)()
            errs.append(rel_err(values, reference))
            hvps.append(calls)
        rows.append(
            dict(
                problem=name,
                P=P,
                tool=label,
                hvps=max(hvps),
                first=first.get(label),
                second=float(np.median(times[label])),
                err=max(errs),
                median_err=float(np.median(errs)),
            )
        )

    # HVP vs gradient, Lanczos vs m x HVP (jitted, same problem).
    grad = jax.jit(jax.grad(loss32))
    hvp = jax.jit(hessian.hvp, static_argnums=0)
    vt_tree = unravel(v)

    def med(fn, n=args.inner):
        timed(fn)
        return float(np.median([timed(fn)[0] for _ in range(n)]))

    t_grad = med(lambda: grad(params32))
    t_hvp = med(lambda: hvp(loss32, params32, vt_tree))
    # Linearised once, 20 products at the same point (what Lanczos and SLQ do): per product.
    f_flat, theta = hessian.flat_loss(loss32, params32)
    V = jax.random.normal(jax.random.key(6), (20, P), jnp.float32)
    many = jax.jit(lambda t, V: jax.lax.map(jax.linearize(jax.grad(f_flat), t)[1], V))
    t_lin = med(lambda: many(theta, V), n=max(3, args.inner // 4)) / 20
    # Floating-point work (multiply-adds of the dense layers, per sample): the gradient does
    # a forward, a weight and a data backward product per layer (no data product into the
    # inputs); the forward-over-reverse HVP's tangent pass does two of each per layer (one
    # forward and one weight product in the first, whose input has no tangent).
    sizes = config.layer_sizes
    first_layer = sizes[0] * sizes[1]
    rest = sum(a * b for a, b in zip(sizes[1:-1], sizes[2:]))
    flops_grad = 2 * len(ds.x) * (2 * first_layer + 3 * rest)
    flops_hvp = 2 * len(ds.x) * (2 * first_layer + 6 * rest)
    widest = max(zip(sizes[:-1], sizes[1:]), key=lambda ab: ab[0] * ab[1])
    a_mat = jax.random.normal(jax.random.key(7), (len(ds.x), widest[0]), jnp.float32)
    b_mat = jax.random.normal(jax.random.key(8), widest, jnp.float32)
    matmul = jax.jit(jnp.matmul)
    t_mm = med(lambda: matmul(a_mat, b_mat))
    flops_mm = 2 * len(ds.x) * widest[0] * widest[1]
    print(
        f"[{name}] work: HVP tangent / gradient = {flops_hvp / flops_grad:.2f} "
        f"(floating-point operations of the layer products); rates: gradient "
        f"{flops_grad / t_grad / 1e9:.0f} GFLOP/s, linearised HVP {flops_hvp / t_lin / 1e9:.0f} "
        f"GFLOP/s, a bare {len(ds.x)}x{widest[0]}x{widest[1]} matmul "
        f"{flops_mm / t_mm / 1e9:.0f} GFLOP/s"
    )
    params_t = list(model.parameters())

    def torch_grad():
        model.zero_grad()
        return torch.autograd.grad(criterion(model(xt), yt), params_t)

    vt_split = op._split(torch.from_numpy(to_torch_order(v)))

    def torch_hvp():
        g = torch.autograd.grad(criterion(model(xt), yt), params_t, create_graph=True)
        return torch.autograd.grad(g, params_t, grad_outputs=vt_split)

    torch_grad(), torch_hvp()  # warm-up
    t_tgrad = float(np.median([timed(torch_grad, sync=False)[0] for _ in range(args.inner)]))
    t_thvp = float(np.median([timed(torch_hvp, sync=False)[0] for _ in range(args.inner)]))
    for m in ms:
        t_lanczos = float(np.median(times[f"saddlestudy Lanczos, m = {m}"]))
        ratio_rows.append(
            dict(
                t_lin=t_lin,
                problem=name,
                P=P,
                m=m,
                t_grad=t_grad,
                t_hvp=t_hvp,
                t_lanczos=t_lanczos,
                t_tgrad=t_tgrad,
                t_thvp=t_thvp,
            )
        )
    return ref_note


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inner", type=int, default=20, help="repeats of single HVP timings")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--matvecs", type=int, nargs="+", default=[28, 30, 32, 34, 36, 40, 50, 80])
    parser.add_argument(
        "--seeds", type=int, default=5, help="start vectors per contender for the accuracy"
    )
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--single-thread", action="store_true")
    args = parser.parse_args(argv)

    import torch

    if args.single_thread:
        torch.set_num_threads(1)

    ds = data.digits(dtype="float32")
    print(f"# {datetime.date.today()}  {machine()}")
    threads = "1 thread (XLA and torch)" if args.single_thread else "default threads"
    print(f"# jax {jax.__version__}, torch {torch.__version__}; {threads}")
    rows, ratio_rows, notes = [], [], {}
    problems = [("64-32-32-10", (32, 32)), ("64-192-192-10", (192, 192))]
    for name, widths in problems[: 1 if args.skip_large else 2]:
        notes[name] = run_problem(name, widths, ds, args, rows, ratio_rows)

    print(
        f"\nrel. err: max over the top 10 of |lambda_i - ref_i| / |ref_i|; worst and median "
        f"over {args.seeds} random start vectors (seeds 0 ... {args.seeds - 1}); HVPs: the most "
        "any seed used."
    )
    print(
        "\n| problem | P | tool | HVPs | first call (s) | second call (s) | worst rel. err | "
        "median rel. err |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        first = f"{r['first']:.2f}" if r["first"] is not None else "-"
        print(
            f"| {r['problem']} | {r['P']} | {r['tool']} | {r['hvps']} | {first} | "
            f"{r['second']:.3f} | {r['err']:.1e} | {r['median_err']:.1e} |"
        )
    print(
        "\nHVP: jitted forward-over-reverse hessian.hvp at a new point; linearised: "
        "hessian.flat_hvp, the primal pass shared by 20 products (as in Lanczos and SLQ); "
        "torch: double backward."
    )
    print(
        "\n| problem | P | grad (ms) | HVP (ms) | HVP / grad | linearised HVP (ms) | lin. / grad "
        "| torch grad (ms) | torch HVP (ms) | torch HVP / grad | m | Lanczos (s) | "
        "Lanczos / (m x HVP) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in ratio_rows:
        print(
            f"| {r['problem']} | {r['P']} | {1e3 * r['t_grad']:.2f} | {1e3 * r['t_hvp']:.2f} | "
            f"{r['t_hvp'] / r['t_grad']:.2f} | {1e3 * r['t_lin']:.2f} | "
            f"{r['t_lin'] / r['t_grad']:.2f} | {1e3 * r['t_tgrad']:.2f} | "
            f"{1e3 * r['t_thvp']:.2f} | {r['t_thvp'] / r['t_tgrad']:.2f} | {r['m']} | "
            f"{r['t_lanczos']:.3f} | {r['t_lanczos'] / (r['m'] * r['t_hvp']):.2f} |"
        )
    for name, note in notes.items():
        print(f"\nreference for {name}: {note}")
    summary(rows, list(notes))
    print(f"\n# finished: {machine()}")


def summary(rows, problems) -> None:
    """Each tool's cheapest setting within 1e-4 relative error, and the speed-ups."""
    tools = ("saddlestudy", "PyHessian", "hessian-eigenthings")
    print(
        "\nSummary: each tool's cheapest setting (second call) within 1e-4 relative error "
        "for every start vector.\n"
    )
    print(
        "| problem | P | saddlestudy | PyHessian | hessian-eigenthings | vs PyHessian | "
        "vs eigenthings |"
    )
    print("|---|---:|---|---|---|---:|---:|")
    for name in problems:
        mine = [r for r in rows if r["problem"] == name]
        cells, ratios, ours = [], [], None
        for tool in tools:
            candidates = [r for r in mine if r["tool"].startswith(tool)]
            ok = [r for r in candidates if r["err"] <= 1e-4]
            best = min(ok or candidates, key=lambda r: r["second"])
            setting = best["tool"].split(", ", 1)[-1]
            if ok:
                cells.append(f"{best['second']:.3f} s ({setting}; {best['err']:.0e})")
            else:
                cells.append(
                    f"never within 1e-4; fastest {best['second']:.3f} s ({setting}; "
                    f"{best['err']:.0e})"
                )
            if tool == "saddlestudy":
                ours = best
            else:
                ratios.append(f"{best['second'] / ours['second']:.1f}x")
        print(f"| {name} | {mine[0]['P']} | " + " | ".join(cells + ratios) + " |")
    # Both Lanczos implementations at the same depth: the ratio of their costs per product.
    print("\nhessian-eigenthings / saddlestudy at the same Krylov depth m (second call):\n")
    for name in problems:
        mine = {r["tool"]: r for r in rows if r["problem"] == name}
        pairs = [
            (int(label.rsplit(" ", 1)[-1]), r["second"])
            for label, r in mine.items()
            if label.startswith("saddlestudy Lanczos, m = ")
        ]
        cells = [
            f"m = {m}: {mine[f'hessian-eigenthings Lanczos, max_iter = {m}']['second'] / t:.1f}x"
            for m, t in pairs
        ]
        print(f"- {name}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
