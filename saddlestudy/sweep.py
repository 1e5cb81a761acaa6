"""``python -m saddlestudy.sweep``: train MLP replicas, then classify where they stopped.

For each architecture: train R replicas (one compiled, vmapped program), compute the dense
Hessian spectrum at every end point (vmapped too), and print one row per replica with the
parameter count, loss, gradient norm and the numbers of negative / zero / positive
eigenvalues. The command line is thin; :func:`run` does the work and tests call it directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from saddlestudy import data, losses, models, optim, spectrum, train


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A small study: one dataset, one depth, several widths, R replicas each."""

    dataset: str = "digits"
    pca_dim: int | None = 8
    num_samples: int | None = 256
    depth: int = 1
    widths: tuple[int, ...] = (1, 2, 4, 8)
    activation: str = "tanh"
    optimizer: str = "adam"
    learning_rate: float = 0.02
    num_steps: int = 2000
    num_replicas: int = 4
    seed: int = 0
    zero_tol: float = 1e-5
    dtype: str = "float64"

    def validate(self) -> None:
        """Raises one clear ValueError naming the first bad field, before any computation."""
        if self.dataset not in data.DATASETS:
            raise ValueError(f"dataset: unknown {self.dataset!r}; choose from {data.DATASETS}")
        try:
            optim.make_optimizer(self.optimizer, learning_rate=self.learning_rate)
        except ValueError as err:
            raise ValueError(f"optimizer: {err}") from None
        if self.activation not in models.ACTIVATIONS:
            raise ValueError(
                f"activation: unknown {self.activation!r}; choose from {sorted(models.ACTIVATIONS)}"
            )
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"widths: need one or more widths >= 1, got {self.widths}")
        if self.depth < 0:
            raise ValueError(f"depth: must be >= 0, got {self.depth}")
        if self.num_replicas < 1:
            raise ValueError(f"replicas: must be >= 1, got {self.num_replicas}")
        if self.num_steps < 1:
            raise ValueError(f"steps: must be >= 1, got {self.num_steps}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype: must be float32 or float64, got {self.dtype!r}")
        spectrum.check_zero_tol(self.zero_tol)

    def dataset_kwargs(self) -> dict:
        kwargs: dict = {"dtype": self.dtype}
        if self.dataset == "digits":
            kwargs.update(pca_dim=self.pca_dim, num_samples=self.num_samples, seed=self.seed)
        elif self.dataset in ("mnist1d", "teacher_student", "linear_autoencoder"):
            kwargs["seed"] = self.seed
            if self.num_samples is not None:
                kwargs["num_samples"] = self.num_samples
        return kwargs


def _dense_spectra(loss_fn, params_R, zero_tol):
    return jax.vmap(lambda p: spectrum.hessian_spectrum(loss_fn, p, zero_tol=zero_tol))(params_R)


def run(config: SweepConfig) -> list[dict]:
    """Runs the study and returns one row (a dict) per trained replica."""
    config.validate()
    dataset = data.load_dataset(config.dataset, **config.dataset_kwargs())
    dtype = jnp.dtype(config.dtype)
    x = jnp.asarray(dataset.x, dtype)
    y = (
        jnp.asarray(dataset.y)
        if dataset.task == "classification"
        else jnp.asarray(dataset.y, dtype)
    )
    loss_name = losses.default_loss(dataset.task)
    key = jax.random.key(config.seed)

    rows = []
    for width in config.widths:
        arch = models.MLPConfig(
            in_features=dataset.input_dim,
            out_features=dataset.output_dim,
            depth=config.depth,
            width=width,
            activation=config.activation,
        )
        loss_fn = losses.make_loss_fn(models.make_apply(arch), x, y, loss=loss_name)
        params_R = models.init_replicas(
            arch, jax.random.fold_in(key, width), config.num_replicas, dtype
        )
        t0 = time.perf_counter()
        optimizer = optim.make_optimizer(config.optimizer, learning_rate=config.learning_rate)
        result = train.train_replicas(loss_fn, params_R, optimizer, config.num_steps)
        jax.block_until_ready(result)
        t1 = time.perf_counter()
        spectra = _dense_spectra(loss_fn, result.params, config.zero_tol)
        jax.block_until_ready(spectra)
        t2 = time.perf_counter()
        finite = np.asarray(jnp.all(jnp.isfinite(spectra.eigenvalues), axis=-1))
        for r in range(config.num_replicas):
            rows.append(
                dict(
                    dataset=dataset.name,
                    depth=config.depth,
                    width=width,
                    activation=config.activation,
                    num_params=arch.num_params,
                    replica=r,
                    optimizer=config.optimizer,
                    steps=int(result.steps[r]),
                    diverged=bool(result.diverged[r]),
                    loss=float(result.loss[r]),
                    grad_norm=float(np.sqrt(result.grad_norm_sq[r])),
                    spectrum_ok=bool(finite[r]),
                    num_negative=int(spectra.num_negative[r]),
                    num_zero=int(spectra.num_zero[r]),
                    num_positive=int(spectra.num_positive[r]),
                    index=float(spectra.index[r]),
                    minimum_ratio=float(spectra.minimum_ratio[r]),
                    lambda_min=float(spectra.lambda_min[r]),
                    lambda_max=float(spectra.lambda_max[r]),
                    train_seconds=t1 - t0,
                    spectrum_seconds=t2 - t1,
                )
            )
    return rows


_COLUMNS = [
    ("width", "{:>5d}"),
    ("num_params", "{:>6d}"),
    ("replica", "{:>3d}"),
    ("loss", "{:>10.4e}"),
    ("grad_norm", "{:>10.3e}"),
    ("num_negative", "{:>5d}"),
    ("num_zero", "{:>5d}"),
    ("num_positive", "{:>5d}"),
    ("minimum_ratio", "{:>6.3f}"),
    ("lambda_min", "{:>10.3e}"),
]
_HEADERS = {
    "width": "width",
    "num_params": "P",
    "replica": "rep",
    "loss": "loss",
    "grad_norm": "|grad|",
    "num_negative": "#neg",
    "num_zero": "#zero",
    "num_positive": "#pos",
    "minimum_ratio": "minrat",
    "lambda_min": "lam_min",
}


def format_table(rows: Sequence[dict]) -> str:
    """A plain-text table, one line per row."""
    widths = [len(fmt.format(1 if "d}" in fmt else 1.0)) for _, fmt in _COLUMNS]
    header = "  ".join(_HEADERS[name].rjust(w) for (name, _), w in zip(_COLUMNS, widths))
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = [fmt.format(row[name]) for name, fmt in _COLUMNS]
        note = "  diverged" if row["diverged"] else ("" if row["spectrum_ok"] else "  nan-hessian")
        lines.append("  ".join(cells) + note)
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> SweepConfig:
    defaults = SweepConfig()
    parser = argparse.ArgumentParser(
        prog="python -m saddlestudy.sweep",
        description="Train MLP replicas and classify their end points by the Hessian spectrum.",
    )
    parser.add_argument(
        "--dataset",
        default=defaults.dataset,
        help="one of %(choices)s (default %(default)s)",
        choices=data.DATASETS,
    )
    parser.add_argument(
        "--pca-dim",
        type=int,
        default=defaults.pca_dim,
        help="digits: PCA dimension (default %(default)s)",
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=defaults.num_samples,
        help="samples to train on (default %(default)s)",
    )
    parser.add_argument(
        "--depth", type=int, default=defaults.depth, help="hidden layers (default %(default)s)"
    )
    parser.add_argument(
        "--widths",
        type=int,
        nargs="+",
        default=list(defaults.widths),
        help="hidden widths to sweep (default %(default)s)",
    )
    parser.add_argument(
        "--activation", default=defaults.activation, help="hidden activation (default %(default)s)"
    )
    parser.add_argument(
        "--optimizer",
        default=defaults.optimizer,
        help=f"one of {', '.join(optim.OPTIMIZERS)} (default %(default)s)",
    )
    parser.add_argument(
        "--learning-rate", type=float, default=defaults.learning_rate, help="(default %(default)s)"
    )
    parser.add_argument(
        "--steps", type=int, default=defaults.num_steps, help="training steps (default %(default)s)"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=defaults.num_replicas,
        help="replicas (seeds) per width (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="(default %(default)s)")
    parser.add_argument(
        "--zero-tol",
        type=float,
        default=defaults.zero_tol,
        help="|lambda| <= this counts as zero (default %(default)s)",
    )
    parser.add_argument(
        "--dtype",
        default=defaults.dtype,
        choices=("float32", "float64"),
        help="(default %(default)s)",
    )
    args = parser.parse_args(argv)
    return SweepConfig(
        dataset=args.dataset,
        pca_dim=args.pca_dim,
        num_samples=args.num_samples,
        depth=args.depth,
        widths=tuple(args.widths),
        activation=args.activation,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        num_steps=args.steps,
        num_replicas=args.replicas,
        seed=args.seed,
        zero_tol=args.zero_tol,
        dtype=args.dtype,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        config.validate()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if config.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    print(f"saddlestudy sweep: {config}", flush=True)
    t0 = time.perf_counter()
    rows = run(config)
    print(format_table(rows))
    print(
        f"{len(rows)} end points in {time.perf_counter() - t0:.1f} s on {jax.devices()[0].platform}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
