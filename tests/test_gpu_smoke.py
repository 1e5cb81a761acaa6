"""benchmarks/gpu_smoke.py --quick: every section runs on a CPU and its numbers are sane."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # benchmarks/gpu_smoke.py --quick in a subprocess

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_smoke.py"
SECTIONS = ("versions", "while_loop", "train", "finder", "sweep", "dense_inertia")


@pytest.fixture(scope="module")
def lines(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("gpu_smoke") / "gpu_smoke.jsonl"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_every_section_runs_without_error(lines):
    assert {line["section"] for line in lines} == set(SECTIONS)
    errors = [(line["section"], line["error"]) for line in lines if "error" in line]
    assert not errors, errors
    assert not [line for line in lines if "skipped" in line]  # the default budget suffices


def test_numbers_are_sane(lines):
    by = {s: [line for line in lines if line["section"] == s] for s in SECTIONS}
    assert all(line["replica_steps_per_s"] > 0 for line in by["train"])
    assert any(line.get("engine_over_loop", 0) > 0 for line in by["train"])
    assert by["while_loop"][0]["us_per_iteration"] > 0
    assert {(line["starts"], line["batching"]) for line in by["finder"]} == {
        (4, b) for b in ("vmap", "map")
    }
    assert all(1 <= line["iterations_max"] <= line["max_iters"] for line in by["finder"])
    warm = next(line for line in by["sweep"] if line["run"] == "warm")
    assert warm["cold_s"] > 0 and warm["warm_s"] > 0 and warm["compile_share"] < 1
    counted = [line for line in by["dense_inertia"] if "num_zero" in line]
    assert len(counted) == 2
    for line in counted:
        assert line["peak_bytes"] is None and "unavailable" in line["peak_note"]  # a CPU
    # The LDL^T counts of the smallest size equal numpy's eigvalsh of the dense Hessian; the
    # eigenvalue nearest +-tau is far from it (float64 rounding of a P ~ 300 Hessian is
    # ~1e-13, so the two count the same eigenvalues).
    (check,) = [line for line in by["dense_inertia"] if "eigvalsh_negative" in line]
    assert check["num_params"] == counted[0]["num_params"]
    assert check["closest_to_tol"] > 1e-10
    assert check["eigvalsh_negative"] == check["num_negative"] == counted[0]["num_negative"]
    assert check["eigvalsh_zero"] == counted[0]["num_zero"]
    assert check["eigvalsh_positive"] == counted[0]["num_positive"]
