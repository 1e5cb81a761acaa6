import pandas as pd
import pytest

from scripts import summarize_results


def test_census_classes_counts_each_class_and_sums_the_cost():
    # One cell of 4 end points at P = 10 (3 critical at Newton's rate, 1 out of budget) and
    # one of 2 at P = 20 (a crossing and a gradient-flat point); a step start is left out.
    def row(cell, P, kind, converged, ratio, seconds, start="end"):
        return {"cell_id": cell, "row_id": f"{cell}:{len(rows)}", "depth": 1, "num_params": P,
                "start_kind": start, "point_class": kind, "converged": converged,
                "gradient_flat": kind == "gradient_flat", "last_step_ratio": ratio,
                "iterations": 5 if converged else 100, "train_seconds": seconds,
                "finder_seconds": 2 * seconds, "spectrum_seconds": 3 * seconds}  # fmt: skip

    rows = []
    for ratio in (0.01, 0.02, 0.03):
        rows.append(row("a", 10, "critical", True, ratio, 60.0))
    rows.append(row("a", 10, "budget", False, float("nan"), 60.0))
    rows.append(row("a", 10, "critical", True, 0.5, 60.0, start="step"))
    rows.append(row("b", 20, "critical", True, 0.9, 120.0))  # above e^-2: a crossing
    rows.append(row("b", 20, "gradient_flat", False, float("nan"), 120.0))
    text = summarize_results.census_classes(pd.DataFrame(rows))
    lines = [line for line in text.splitlines() if line.startswith("| 1 |")]
    # depth | P | points | critical | crossing | gradient_flat | budget | reached | iters | ratio
    assert lines[0].split("|")[3:9] == [" 4 ", " 3 ", " 0 ", " 0 ", " 1 ", " 3 "]
    assert lines[1].split("|")[3:9] == [" 2 ", " 0 ", " 1 ", " 1 ", " 0 ", " 1 "]
    total = [line for line in text.splitlines() if line.startswith("| all |")][0]
    # minutes: train 1 + 2, finder 2 + 4, counts 3 + 6 (each cell counted once)
    assert [float(x) for x in total.split("|")[2:5]] == pytest.approx([3.0, 6.0, 9.0])
