"""benchmarks/count_validation.py (the E3 validation of matrix-free counts) at a small plan:
the analytic autoencoder count against the dense one, and the matrix-free bounds and exact
claims against the truth."""

import dataclasses
import math

import numpy as np
import pytest
from helpers import x64_mode

from benchmarks import count_validation as cv
from saddlestudy.hessian import dense_hessian

pytestmark = pytest.mark.e2e  # benchmarks/count_validation.py at a small plan

# The quick plan cut to n = 16 (P = 128): two analytic points (3 and 64 negatives), one
# budget per method, no Newton-MR points (their compilation alone would double the time).
PLAN = dataclasses.replace(
    cv.QUICK,
    autoencoder_ns=(16,),
    autoencoder_points=("few", "half"),
    newton_mr_ns=(),
    lanczos_budgets=(300,),
    slq_budgets=((8, 32),),
)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("count_validation") / "records.jsonl"
    with x64_mode(True):
        recs = cv.run_validation(PLAN, out, log=lambda s: None)
    assert cv.load_records(out) == recs  # the JSON lines hold everything the figure needs
    return recs


def test_analytic_negative_spectrum_matches_eigvalsh(x64):
    n, p = 16, 4
    for subset in cv.autoencoder_subsets(n, p).values():
        H = dense_hessian(cv.autoencoder_loss(n), cv.autoencoder_point(n, p, subset))
        eig = np.linalg.eigvalsh(np.asarray(H))
        negatives = cv.autoencoder_negative_spectrum(n, p, subset)
        # The other eigenvalues are >= 0 up to rounding (1e-12: float64 eigvalsh of |H| ~ 32).
        assert np.allclose(eig[: negatives.size], negatives, atol=1e-12), subset
        assert eig[negatives.size] > -1e-12


def test_analytic_count_equals_dense_count(records):
    checked = [r for r in records if r["truth_source"] == "analytic"]
    assert checked and all(r["dense_truth"] is not None for r in checked)
    assert all(r["truth"] == r["dense_truth"] for r in checked)
    assert {r["truth"] for r in checked} == {3, 64}  # few, half of P


def test_lower_bound_never_exceeds_the_truth(records):
    assert all(r["lo"] <= r["truth"] for r in records)
    assert all(r["lo_held"] for r in records)


def test_an_exact_claim_is_the_truth(records):
    exact = [r for r in records if r["exact"]]
    assert exact  # the exact path is exercised ...
    assert any(not r["exact"] for r in records)  # ... and so is the bounded one
    assert all(r["estimate"] == r["truth"] and r["exact_correct"] for r in exact)


def test_upper_bound_held_everywhere(records):
    # failure_prob 1e-3 per bound (cv.FAILURE_PROB): a failure is far likelier a bug than luck.
    assert all(r["truth"] <= r["hi"] and r["hi_held"] for r in records)


def test_every_case_method_and_threshold_is_recorded(records):
    assert {r["case"] for r in records} == {"autoencoder"}
    assert {r["method"] for r in records} == {"lanczos", "slq"}
    assert {(r["threshold"], r["tol"]) for r in records} == set(cv.thresholds())
    slq = [r for r in records if r["method"] == "slq"]
    assert all(math.isfinite(r["estimate"]) and r["error"] >= 0 for r in slq)


def test_figure_and_table_from_the_records_alone(records, tmp_path):
    fig = cv.validation_figure(records)
    assert len(fig.axes) == 4
    paths = cv.save_validation_figure(records, tmp_path / "method_validation")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.exists() for p in paths)
    table = cv.markdown_table(records)
    assert table.count("\n") == 1 + len(
        {(r["point"], r["num_params"], r["tol"], r["threshold"]) for r in records}
    )
