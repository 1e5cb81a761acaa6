"""``python -m saddlestudy.sweep [CONFIG]``: the census of critical points over a study grid.

For each cell of the grid (dataset x architecture x optimizer x finder) it trains the
replicas in one vmapped program, takes starting points along the trajectories (snapshots by
step and by loss level, plus the end point), runs the critical-point finder from every start
(batched), counts the Hessian's negative, zero and positive eigenvalues at every point found
(all P eigenvalues by ``eigh``, batched, up to ``spectrum.full_spectrum_max_params``; beyond,
:func:`saddlestudy.inertia.hessian_inertia` point by point: exact counts or honest bounds),
and writes one row per point to the results store (:mod:`saddlestudy.store`). Rerunning
resumes; ``--fresh`` starts over.

The command line is thin: :func:`saddlestudy.runner.run_study` runs the study,
:func:`saddlestudy.pipeline.run_cell` one cell; tests call them directly.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from saddlestudy import config as study_config
from saddlestudy import store
from saddlestudy.provenance import enable_compilation_cache
from saddlestudy.runner import DEFAULT_OUT, run_study, summarize


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m saddlestudy.sweep",
        description="Train MLP replicas, find critical points from starts along training, "
        "classify them by their Hessian spectra, and store one row per point.",
    )
    parser.add_argument(
        "config", nargs="?", default=None,
        help="a study TOML file, or the name of one in experiments/ (default: the embedded "
        "default study, experiments/default.toml)",
    )  # fmt: skip
    parser.add_argument(
        "--out", default=str(DEFAULT_OUT), help="results directory (default %(default)s/)"
    )
    parser.add_argument(
        "--backend",
        default="local",
        choices=("local", "ray"),
        help="where cells run (default %(default)s)",
    )
    parser.add_argument(
        "--ray-address", default=None, help="Ray cluster address (default: start a local Ray)"
    )
    parser.add_argument(
        "--ray-gpus-per-task",
        type=float,
        default=0.0,
        help="GPUs per Ray task, fractions share a GPU (default 0)",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="delete this study's previous results first"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the expanded cells and an estimate of work, then stop",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="run the study's reduced version (its [quick] table), as reproduce_paper.sh --quick",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="override a config key, VALUE in TOML syntax (repeatable), e.g. "
        "--set train.replicas=2 --set 'model.width=[4, 8]'",
    )
    parser.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        overrides = dict(study_config.parse_override(text) for text in args.set)
        cfg = study_config.load(args.config, quick=args.quick, overrides=overrides)
        if args.dry_run:
            print(study_config.describe(cfg, study_config.expand(cfg)))
            return 0
        enable_compilation_cache()
        t0 = time.perf_counter()
        directory = run_study(
            cfg, args.out, fresh=args.fresh, quiet=args.quiet, backend=args.backend,
            ray_address=args.ray_address, ray_gpus_per_task=args.ray_gpus_per_task,
        )  # fmt: skip
    except (
        study_config.ConfigError,
        store.StoreLockedError,
        store.StoreMismatchError,
        store.StoreCorruptError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = store.load_results(directory)
    print(summarize(table))
    print(
        f"{table.num_rows} points of study {cfg.name} "
        f"(config {study_config.config_hash(cfg)}) in {directory}/ "
        f"[{time.perf_counter() - t0:.1f} s]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
