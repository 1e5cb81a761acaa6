"""The finder study's records as a table, a figure and a compact file that can be committed.

    python benchmarks/finder_study_report.py RECORDS.jsonl ... \
        [--compact results_snapshot/finder_study.jsonl] [--figure figures/finder_study/finder_study]
    python benchmarks/finder_study_report.py results_snapshot/finder_study.jsonl --figure ...

RECORDS are the JSON lines of ``benchmarks/finder_study.py`` (one per start and method, with
the |grad L|^2 history) or a compact file written by ``--compact`` (the same records without
the histories, with the first iteration below 1e-10 and |grad L|^2 at a few iterations kept).

The table: per size, depth, optimizer of the training end points, start kind and method, how
many starts reach |grad L|^2 < 1e-10 within 100, 500, 1,000 and 2,000 iterations (counts with
exact Clopper-Pearson 95 % intervals for the run's own budget), the classes the runs ended in,
how many end gradient-flat by Frye et al.'s test (r > 0.9), the median growth of |theta| and
the median wall time per start. The figure: per depth, the fraction of starts that reached
1e-10 by each Newton-MR iteration (the budget curve), and the median |grad L|^2 along the runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from saddlestudy.critical import NEWTON_RATE_BOUND, last_step_ratio  # noqa: E402

GRAD_TOL = 1e-10  # the study's success cutoff (finder_study.GRAD_TOL)
BUDGETS = (100, 500, 1000, 2000)
# Iterations at which the compact records keep |grad L|^2 (log-spaced, for the figure).
KEEP_AT = (0, 1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 1500,
           2000)  # fmt: skip
# Frye et al. (2021): Newton-MR (500 iterations) reached |grad L|^2 < 1e-10 or 1e-8 from
# 10-34 % of starts at P ~ 400-1,160.
FRYE_BAND = (0.10, 0.34)
CENSUS_BUDGETS = (100, 1000)  # experiments/census.toml: [finder] and the end points' [model.finder]


def compact(rec: dict) -> dict:
    """A record without its histories: the first iteration below ``GRAD_TOL`` (None if none)
    and |grad L|^2 at the iterations of ``KEEP_AT`` that the run reached."""
    if "g2_at" in rec:
        return rec
    hist = np.asarray(rec.get("hist_g2") or [], float)
    below = np.flatnonzero(hist < GRAD_TOL)
    out = {k: v for k, v in rec.items() if k not in ("hist_g2", "hist_theta_norm")}
    out["optimizer"] = rec.get("optimizer", "adam")  # records before the option: Adam
    out["iters_to_tol"] = int(below[0]) if below.size else None
    if rec["method"] == "nmr_continuation":  # its history is per L2 stage, not per iteration
        out["iters_to_tol"] = rec["iterations"] if rec["converged"] else None
    out["g2_at"] = {str(i): float(hist[i]) for i in KEEP_AT if i < hist.size}
    n = int(rec["iterations"])
    ratio = last_step_ratio([n], [hist])[0] if 1 <= n < hist.size else float("nan")
    out["last_step_ratio"] = (
        None if rec["method"] == "nmr_continuation" or not np.isfinite(ratio) else float(ratio)
    )
    return out


def load(paths: Iterable[str | Path]) -> list[dict]:
    recs = []
    for path in paths:
        with open(path) as fh:
            recs += [compact(json.loads(line)) for line in fh if line.strip()]
    return recs


def _key(r: dict) -> tuple:
    start = r.get("start_kind", "adam")
    start = "end" if start == "adam" else start  # "adam" meant the training end point
    return (r["P"], r["depth"], r["optimizer"], start, r.get("train_steps", 2000),
            r["method"], r["max_iters"], r["l2"])  # fmt: skip


def groups(recs: Sequence[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in recs:
        out.setdefault(_key(r), []).append(r)

    def order(key):  # numbers in numeric order
        return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in key)

    return dict(sorted(out.items(), key=lambda kv: order(kv[0])))


def _ci(k: int, n: int) -> str:
    from saddlestudy.analysis import proportion_ci

    _, lo, hi = proportion_ci(k, n)
    return f"{k}/{n} [{lo:.2f}, {hi:.2f}]"


def table(recs: Sequence[dict]) -> str:
    """The markdown table (module docs)."""
    head = (
        "| P | depth | trained by | start | method | "
        + " | ".join(f"≤ {b}" for b in BUDGETS)
        + " | classes | flat (r > 0.9) | median ‖θ‖ end / start | median wall / start |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (P, depth, opt, start, steps, method, iters, l2), rs in groups(recs).items():
        if l2 or method == "deflation":
            continue  # the L2 runs: BENCHMARKS.md's text; deflation: deflation_table
        n = len(rs)
        reach = [
            _ci(sum(r["iters_to_tol"] is not None and r["iters_to_tol"] <= b for r in rs), n)
            if b <= iters else ""
            for b in BUDGETS
        ]  # fmt: skip
        classes: dict[str, int] = {}
        for r in rs:
            cls = r.get("point_class") or ("critical" if r["converged"] else "—")
            ratio = r.get("last_step_ratio")
            if r["converged"] and ratio is not None and ratio > NEWTON_RATE_BOUND:
                cls = "crossing"  # critical by the cutoff, not at Newton's rate (analysis)
            classes[cls] = classes.get(cls, 0) + 1
        flat = sum(r["flat_r"] > 0.9 for r in rs if not r["converged"])
        growth = np.median([r["theta_norm_end"] / r["theta_norm_start"] for r in rs])
        start_name = start if steps == 2000 else f"{start}, {steps} steps"
        lines.append(
            f"| {P:,} | {depth} | {opt} | {start_name} | {method}:{iters} | " + " | ".join(reach)
            + " | " + ", ".join(f"{k} {v}" for k, v in sorted(classes.items()))
            + f" | {flat}/{n - sum(r['converged'] for r in rs)} | {growth:.1f} | "
            + f"{np.median([r['wall_s'] for r in rs]):.1f} s |"
        )  # fmt: skip
    return "\n".join(lines)


def deflation_table(recs: Sequence[dict]) -> str:
    """Per size, optimizer and start kind: how many starts gave a first critical point, and
    the further points deflation found from them (how far apart, how their losses and
    indices differ)."""
    lines = ["| P | depth | trained by | start | starts with a first point | points per start "
             "(median) | distance to the nearest earlier point | loss spread within a start "
             "| indices |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (P, depth, opt, start, *_), rs in groups(recs).items():
        rs = [r for r in rs if r["method"] == "deflation"]
        if not rs:
            continue
        found = [r["points"] for r in rs if r["points"]]
        dist = [p["distance_to_nearest_earlier"] for pts in found for p in pts[1:]]
        spread = [max(p["loss"] for p in pts) - min(p["loss"] for p in pts) for pts in found]
        index = sorted({p["num_negative"] for pts in found for p in pts})
        lines.append(
            f"| {P:,} | {depth} | {opt} | {start} | {len(found)}/{len(rs)} | "
            + (f"{np.median([len(p) for p in found]):.0f} | {min(dist):.2g} … {max(dist):.2g} | "
               f"≤ {max(spread):.1g} | {index} |" if found else "— | — | — | — |")
        )  # fmt: skip
    return "\n".join(lines)


def figure(recs: Sequence[dict]):
    """Per depth: the fraction of end points (Newton-MR, no L2) that reached 1e-10 by each
    iteration, and the median |grad L|^2 along the runs, one line per size and optimizer."""
    import matplotlib.pyplot as plt

    runs = [
        r
        for r in recs
        if r["method"] == "newton_mr" and not r["l2"] and r.get("start_kind", "adam") == "adam"
        and r.get("train_steps", 2000) == 2000
    ]  # fmt: skip
    longest: dict[tuple, int] = {}
    for r in runs:
        k = (r["P"], r["depth"], r["optimizer"])
        longest[k] = max(longest.get(k, 0), r["max_iters"])
    depths = sorted({r["depth"] for r in runs})
    fig, axes = plt.subplots(2, len(depths), figsize=(4.2 * len(depths), 6.4), sharex=True,
                             sharey="row", layout="constrained", squeeze=False)  # fmt: skip
    sizes = sorted({r["P"] for r in runs})
    colors = dict(zip(sizes, plt.cm.viridis(np.linspace(0, 0.9, len(sizes)))))
    for col, depth in enumerate(depths):
        top, bottom = axes[0][col], axes[1][col]
        top.axhspan(*FRYE_BAND, color="0.88", zorder=0)
        for (P, d, opt), iters in sorted(longest.items()):
            rs = [r for r in runs if (r["P"], r["depth"], r["optimizer"], r["max_iters"])
                  == (P, depth, opt, iters)] if d == depth else []  # fmt: skip
            if not rs:
                continue
            style = dict(color=colors[P], ls="-" if opt == "adam" else "--")
            its = np.unique(np.geomspace(1, iters, 200).astype(int))
            hit = [np.mean([r["iters_to_tol"] is not None and r["iters_to_tol"] <= i for r in rs])
                   for i in its]  # fmt: skip
            top.plot(its, hit, label=f"P = {P:,}, {opt} (n = {len(rs)})", **style)
            at = sorted({int(i) for r in rs for i in r["g2_at"]})
            med = [np.median([r["g2_at"].get(str(i), r["g2"]) for r in rs]) for i in at]
            bottom.plot(np.maximum(at, 0.8), med, **style)
        top.set_title(f"depth {depth}", fontsize=9)
        top.set_ylim(-0.03, 1.03)
        bottom.set_yscale("log")
        bottom.axhline(GRAD_TOL, color="k", lw=0.8, ls=":")
        bottom.set_xlabel("Newton-MR iterations")
        top.legend(fontsize=6)
    for ax in axes.flat:
        ax.set_xscale("log")
        for budget in CENSUS_BUDGETS:
            ax.axvline(budget, color="0.5", lw=0.8, ls=":")
    axes[0][0].set_ylabel("fraction with ‖∇L‖² < 1e-10 by then")
    axes[1][0].set_ylabel("median ‖∇L‖² (dotted: 1e-10)")
    fig.suptitle("Newton-MR from census training end points (MNIST-1D, tanh, no L2); grey band: "
                 "Frye et al. 2021's 10–34 % at P ≈ 400–1,160; dotted: the census's budgets "
                 "(100 up to P ≈ 1e3, 1,000 from 5e3)", fontsize=9)  # fmt: skip
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("records", nargs="+", help="JSON lines of finder_study.py, or a compact file")
    p.add_argument("--compact", type=Path, help="write the records here without histories")
    p.add_argument("--figure", type=Path, help="figure stem (writes .png and .pdf)")
    args = p.parse_args(argv)
    recs = load(args.records)
    if not recs:
        raise SystemExit("no records in " + ", ".join(args.records))
    if args.compact:
        args.compact.parent.mkdir(parents=True, exist_ok=True)
        args.compact.write_text("".join(json.dumps(r) + "\n" for r in recs))
    if args.figure:
        from saddlestudy.figures import save_figure

        print(*save_figure(figure(recs), args.figure, ("png", "pdf")))
    print(table(recs))
    print()
    print(deflation_table(recs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
