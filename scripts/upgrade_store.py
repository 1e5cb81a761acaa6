"""Bring a results store written before the certified extremes (issue 21) to today's columns.

    python scripts/upgrade_store.py RESULTS_DIR STUDY [--dry-run]

What changes, from what the store already holds (nothing is recomputed from the model):

- Rows counted from all P eigenvalues (``spectrum_method`` "eigh"; the eigenvalues are in
  ``spectra/``): the counts, their brackets and ``counts_exact`` are recomputed by
  :func:`saddlestudy.inertia.eigenvalue_records` with the eigenvalue error taken as twice the
  stored ``resolution`` (``P eps ||H||_F``: the eigensolver's backward error, and as much
  again for the built Hessian's rounding, whose asymmetry was not stored; float64 Hessians
  of these sizes are symmetric to about ``eps ||H||_F``). A count with an eigenvalue within
  that error of a threshold becomes inexact (null count, its bracket kept).
- Rows counted by ``hessian_inertia`` (``spectrum_method`` "dense" etc.): their stored
  ``lambda_min`` / ``lambda_max`` were Ritz values of a 200-step Lanczos run. They move to
  ``ritz_min`` and ``lambda_max_lo`` (what a Ritz value certifies); ``lambda_min`` and
  ``lambda_max`` become NaN; ``lambda_min_hi`` is the Ritz value, lowered to ``-tau`` where
  a certified count says an eigenvalue lies below ``-tau``. Their counts (LDL^T, float64)
  stay as stored: re-certifying them against today's factorisation error bound needs the
  points, which the store does not keep (the census rerun recounts them).

Part files are rewritten atomically (same rows, same row ids, same cell ids and config
hash), so the study still resumes with nothing to recompute.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from saddlestudy import inertia, rows

NEW_FLOAT = ("lambda_min_lo", "lambda_min_hi", "lambda_max_lo", "lambda_max_hi", "ritz_min",
             "ritz_min_residual")  # fmt: skip


def _thresholds(columns) -> tuple[list[str], list[str]]:
    names = [c.split("@", 1)[1] for c in columns if c.startswith("num_negative@")]
    return [n for n in names if not n.startswith("rel")], [n for n in names if n.startswith("rel")]


def _eigh_row(row: dict, eig: np.ndarray, absolute, relative) -> dict:
    error = 2 * float(row["resolution"])
    taus = [float(n) for n in absolute]
    rels = [float(n[3:]) for n in relative]
    records = inertia.eigenvalue_records(eig, error, taus, rels)
    extremes = ("lambda_min", "lambda_max", "lambda_min_lo", "lambda_min_hi", "lambda_max_lo",
                "lambda_max_hi")  # fmt: skip
    out = {k: records[0][k] for k in extremes}
    out.update(ritz_min=math.nan, ritz_min_residual=math.nan, resolution=error)
    P = eig.shape[0]
    for name, rec in zip(list(absolute) + list(relative), records, strict=True):
        for kind in ("num_negative", "num_zero", "num_positive"):
            value = rec[kind]
            out[f"{kind}@{name}"] = int(value) if rec["exact"] and math.isfinite(value) else None
        out[f"num_negative_lo@{name}"] = rec["num_negative_lo"]
        out[f"num_negative_hi@{name}"] = rec["num_negative_hi"]
        out[f"index_estimate@{name}"] = float(rec["num_negative"]) / P
    primary = rows.tol_name(float(row["zero_tol"]))
    main = records[(list(absolute) + list(relative)).index(primary)]
    out["counts_exact"] = bool(main["exact"])
    out["index"] = out[f"num_negative@{primary}"] / P if main["exact"] else None
    pos = out[f"num_positive@{primary}"]
    out["minimum_ratio"] = pos / P if pos is not None else None
    return out


def _ritz_row(row: dict, absolute, relative) -> dict:
    ritz_min, ritz_max = float(row["lambda_min"]), float(row["lambda_max"])
    hi = ritz_min
    for name in absolute:
        lo = row.get(f"num_negative_lo@{name}")
        if lo is not None and lo > 0:
            hi = min(hi, -float(name))
    for name in relative:
        lo, tau = row.get(f"num_negative_lo@{name}"), row.get(f"tau@{name}")
        if lo is not None and lo > 0 and tau is not None:
            hi = min(hi, -float(tau))
    return dict(lambda_min=math.nan, lambda_max=math.nan, lambda_min_lo=math.nan,
                lambda_min_hi=hi, lambda_max_lo=ritz_max, lambda_max_hi=math.nan,
                ritz_min=ritz_min, ritz_min_residual=math.nan)  # fmt: skip


def upgrade_part(path: Path, spectra: dict[str, np.ndarray]) -> tuple[pa.Table, int]:
    table = pq.read_table(path)
    if "ritz_min" in table.column_names:
        return table, 0
    rows = table.to_pylist()
    absolute, relative = _thresholds(table.column_names)
    changed = 0
    for row in rows:
        if row["spectrum_method"] == "eigh":
            update = _eigh_row(row, spectra[f"{row['row_id']}/eigenvalues"], absolute, relative)
        else:
            update = _ritz_row(row, absolute, relative)
        before = row.get("counts_exact")
        row.update(update)
        row["bound_failure"] = False
        changed += before != row["counts_exact"]
    columns = {name: [r[name] for r in rows] for name in rows[0]}
    schema_types = {f.name: f.type for f in table.schema}
    arrays = {}
    for name, values in columns.items():
        kind = schema_types.get(name)
        if name in NEW_FLOAT or kind is None:
            arrays[name] = pa.array(values)
        else:
            arrays[name] = pa.array(values, type=kind)
    return pa.table(arrays), changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("study")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    study = args.root / args.study
    parts = sorted((study / "parts").glob("*.parquet"))
    if not parts:
        print(f"no part files under {study}/parts", file=sys.stderr)
        return 2
    total = 0
    for part in parts:
        cell = part.stem
        with np.load(study / "spectra" / f"{cell}.npz") as f:
            spectra = {k: f[k] for k in f.files}
        table, changed = upgrade_part(part, spectra)
        total += changed
        if args.dry_run:
            continue
        fd, tmp = tempfile.mkstemp(dir=part.parent, suffix=".tmp")
        os.close(fd)
        pq.write_table(table, tmp)
        os.replace(tmp, part)
    print(f"{len(parts)} parts upgraded; {total} rows changed counts_exact")
    return 0


if __name__ == "__main__":
    sys.exit(main())
