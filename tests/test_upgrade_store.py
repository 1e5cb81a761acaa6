"""scripts/upgrade_store.py: an old store (before the certified extremes) brought to today's
columns from what it holds: counts re-checked against the stored eigenvalues, Ritz values moved
out of ``lambda_min``, and the study still complete (nothing to recompute)."""

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saddlestudy import store

pytestmark = pytest.mark.e2e  # scripts/upgrade_store.py on a finished study

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "upgrade_store.py"
NEW = ["lambda_min_lo", "lambda_min_hi", "lambda_max_lo", "lambda_max_hi", "ritz_min",
       "ritz_min_residual", "bound_failure"]  # fmt: skip


def _make_old(study: Path, ritz_row: str) -> None:
    """Drop today's columns, and make one row look like an old dense-method row: its
    lambda_min a (positive) Ritz value although it has negatives."""
    for part in (study / "parts").glob("*.parquet"):
        rows = pq.read_table(part).drop_columns(NEW).to_pylist()
        for row in rows:
            if row["row_id"] == ritz_row:
                row.update(spectrum_method="dense", lambda_min=3e-6, lambda_max=5.0)
        pq.write_table(pa.Table.from_pylist(rows), part)


def test_upgrade_keeps_the_study_and_certifies_what_the_store_holds(tiny_study, tmp_path):
    old = tmp_path / "results"
    shutil.copytree(tiny_study.parent, old)
    before = store.load_results(old, "default").to_pandas()
    saddle = before[before["num_negative@1e-5"] > 0].iloc[0]
    _make_old(old / "default", saddle["row_id"])
    run = subprocess.run([sys.executable, str(SCRIPT), str(old), "default"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    after = store.load_results(old, "default").to_pandas().set_index("row_id")
    ref = before.set_index("row_id")
    assert list(after.index.sort_values()) == list(ref.index.sort_values())
    # Same config hash and cells: nothing to recompute.
    s = store.Store(old, "default")
    for cell, group in after.groupby("cell_id"):
        assert s.part_problem(cell, len(group)) is None
    for row_id, row in after.iterrows():
        if row_id == saddle["row_id"]:
            # The Ritz value is no longer an eigenvalue; its bracket is certified.
            assert math.isnan(row["lambda_min"]) and row["ritz_min"] == 3e-6
            assert row["lambda_min_hi"] <= -1e-5 and row["lambda_max_lo"] == 5.0
            continue
        eig = store.load_spectrum(old, "default", row_id)["eigenvalues"]
        # Against the stored eigenvalues themselves: the extremes inside their brackets, the
        # counts those of the eigenvalues where exact.
        assert row["lambda_min_lo"] <= eig[0] <= row["lambda_min_hi"]
        assert row["lambda_max_lo"] <= eig[-1] <= row["lambda_max_hi"]
        if row["counts_exact"]:
            assert row["num_negative@1e-5"] == np.sum(eig < -1e-5)
            assert row["num_negative@1e-5"] == ref.loc[row_id, "num_negative@1e-5"]
        assert row["num_negative_lo@1e-5"] <= np.sum(eig < -1e-5) <= row["num_negative_hi@1e-5"]
