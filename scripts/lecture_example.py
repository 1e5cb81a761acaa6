"""The lecture's example y = w1 w2 x as code and as a picture (experiments/lecture.toml).

    python scripts/lecture_example.py [--config experiments/lecture.toml] [--out figures]

Builds the example from the library's own pieces (the ``w1w2`` dataset, a 1-1-1 linear MLP
without bias, the MSE loss), computes the Hessian spectrum at the saddle w1 = w2 = 0 and at
points on the curve of minima w1 w2 = 1, steps along the eigenvector of the negative
eigenvalue, prints a JSON summary and draws the error surface as ``lecture_error_surface.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from saddlestudy import data, figures, losses, models, spectrum

ROOT = Path(__file__).resolve().parents[1]


def lecture_params(w1: float, w2: float):
    """The MLP parameter pytree holding the two weights of the lecture's network."""
    return {"layers": {0: {"kernel": jnp.full((1, 1), w1)}, 1: {"kernel": jnp.full((1, 1), w2)}}}


def run(config_path: Path, out_dir: Path) -> dict:
    raw = config_path.read_bytes()
    config = tomllib.loads(raw.decode())
    config_hash = hashlib.sha256(raw).hexdigest()[:12]
    dataset = data.load_dataset(config["data"]["name"], dtype="float64")
    arch = models.MLPConfig(
        in_features=dataset.input_dim, out_features=dataset.output_dim, **config["model"]
    )
    loss_fn = losses.make_loss_fn(
        models.make_apply(arch),
        jnp.asarray(dataset.x),
        jnp.asarray(dataset.y),
        loss=config["loss"]["name"],
    )
    zero_tol = config["spectrum"]["zero_tol"]

    saddle = lecture_params(0.0, 0.0)
    at_saddle = spectrum.hessian_spectrum(loss_fn, saddle, zero_tol=zero_tol)
    u = at_saddle.min_eigenvector
    step = config["escape"]["step"]
    escaped = jax.tree.map(lambda p, d: p + step * d, saddle, u)
    minima = {}
    for w1 in (0.5, 1.0, 2.0, -1.0):
        s = spectrum.hessian_spectrum(loss_fn, lecture_params(w1, 1.0 / w1), zero_tol=zero_tol)
        minima[f"w1={w1:g}"] = {
            "loss": float(loss_fn(lecture_params(w1, 1.0 / w1))),
            "eigenvalues": np.asarray(s.eigenvalues).tolist(),
            "num_negative": int(s.num_negative),
        }
    summary = {
        "config": str(config_path),
        "config_hash": config_hash,
        "saddle": {
            "loss": float(loss_fn(saddle)),
            "eigenvalues": np.asarray(at_saddle.eigenvalues).tolist(),
            "escape_direction": [
                float(u["layers"][0]["kernel"][0, 0]),
                float(u["layers"][1]["kernel"][0, 0]),
            ],
            "num_negative": int(at_saddle.num_negative),
            "num_positive": int(at_saddle.num_positive),
        },
        "escape": {"step": step, "loss_after": float(loss_fn(escaped))},
        "minima": minima,
    }

    lo1, hi1 = config["surface"]["w1"]
    lo2, hi2 = config["surface"]["w2"]
    n = config["surface"]["grid"]
    w1, w2 = np.linspace(lo1, hi1, n), np.linspace(lo2, hi2, n)
    W1, W2 = np.meshgrid(w1, w2)
    grid_loss = jax.vmap(lambda a, b: loss_fn(lecture_params(a, b)))(
        jnp.asarray(W1.ravel()), jnp.asarray(W2.ravel())
    )
    curves = []
    for sign in (1.0, -1.0):  # the two branches of the hyperbola w2 = 1/w1 inside the box
        c1 = sign * np.geomspace(max(1.0 / hi2, 1e-3), hi1, 200)
        curves.append((c1, 1.0 / c1))
    fig = figures.loss_surface_figure(
        w1,
        w2,
        np.asarray(grid_loss).reshape(W1.shape),
        saddles=[(0.0, 0.0)],
        minima_curves=curves,
        escape=((0.0, 0.0), tuple(step * np.asarray(summary["saddle"]["escape_direction"]))),
        title=r"Error surface of $y = w_1 w_2 x$, $L = (1 - w_1 w_2)^2$",
        footer=f"study {config['study']['name']} · config {config_hash}",
    )
    paths = figures.save_figure(fig, out_dir / "lecture_error_surface", formats=("png", "pdf"))
    summary["figures"] = [str(p) for p in paths]
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "lecture.toml")
    parser.add_argument("--out", type=Path, default=ROOT / "figures")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        print(f"error: config file not found: {args.config}", file=sys.stderr)
        return 2
    jax.config.update("jax_enable_x64", True)
    print(json.dumps(run(args.config, args.out), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
