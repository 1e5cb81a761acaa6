"""The results table: one Arrow schema, the single source of every stored column's name and type.

A study stores one row per point (``sweep`` builds them, ``store`` writes them, ``analysis``
and ``figures`` read them). The columns are the fixed :data:`ROW_FIELDS` and, per counting
threshold, the :data:`THRESHOLD_FIELDS` under the name :func:`tol_column` gives them
(``num_negative@1e-5``; a relative threshold tau = c lambda_max: ``num_negative@rel1e-3``,
with its tau too). :func:`schema` puts them together for a study's thresholds,
:func:`thresholds` reads the thresholds back from column names, and :func:`table` builds a
cell's table, refusing a row whose keys are not the schema's. docs/results-schema.md says
what each column holds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

_STR, _INT, _FLOAT, _BOOL = pa.string(), pa.int64(), pa.float64(), pa.bool_()

# One per row, in the order they are stored.
ROW_FIELDS: tuple[pa.Field, ...] = tuple(pa.field(name, kind) for name, kind in (
    # what was run
    ("row_id", _STR), ("study", _STR), ("config_hash", _STR), ("cell_id", _STR),
    ("dataset", _STR), ("data_args", _STR), ("num_samples", _INT), ("num_outputs", _INT),
    ("depth", _INT), ("width", _INT), ("widths", _STR), ("activation", _STR),
    ("loss_name", _STR), ("num_params", _INT), ("optimizer", _STR),
    ("optimizer_hparams", _STR), ("learning_rate", _FLOAT), ("seed", _INT),
    # the start
    ("replica", _INT), ("start_kind", _STR), ("start_step", _INT),
    ("start_loss_level", _FLOAT), ("train_diverged", _BOOL), ("train_loss", _FLOAT),
    # the finder's run and how it ended
    ("finder_method", _STR), ("grad_tol", _FLOAT), ("max_iters", _INT), ("finder_stages", _STR),
    ("classified_in", _STR), ("converged", _BOOL), ("gradient_flat", _BOOL),
    ("grad_norm_sq", _FLOAT), ("loss", _FLOAT), ("iterations", _INT), ("point_class", _STR),
    ("finder_status", _STR), ("flat_residual", _FLOAT), ("flat_residual_hessian", _FLOAT),
    ("start_param_norm", _FLOAT), ("param_norm", _FLOAT), ("distance_moved", _FLOAT),
    ("last_step_ratio", _FLOAT),
    # the counts at the study's main threshold, and the extremes
    ("spectrum_method", _STR), ("zero_tol", _FLOAT), ("counts_exact", _BOOL),
    ("failure_prob", _FLOAT), ("resolution", _FLOAT), ("index", _FLOAT),
    ("minimum_ratio", _FLOAT), ("lambda_min", _FLOAT), ("lambda_max", _FLOAT),
    ("lambda_min_lo", _FLOAT), ("lambda_min_hi", _FLOAT), ("lambda_max_lo", _FLOAT),
    ("lambda_max_hi", _FLOAT), ("ritz_min", _FLOAT), ("ritz_min_residual", _FLOAT),
    ("bound_failure", _BOOL), ("num_matvecs", _INT),
    # timings and provenance
    ("train_seconds", _FLOAT), ("train_reused", _BOOL), ("finder_seconds", _FLOAT),
    ("spectrum_seconds", _FLOAT), ("package_version", _STR), ("git_commit", _STR),
    ("jax_version", _STR), ("device", _STR), ("device_count", _INT), ("dtype", _STR),
))  # fmt: skip
# Per threshold (named by tol_column): exact counts (null where not exact), the certified
# bounds on the negative count, and the estimate with its standard error and bias bound.
THRESHOLD_FIELDS: tuple[pa.Field, ...] = tuple(pa.field(name, kind) for name, kind in (
    ("num_negative", _INT), ("num_zero", _INT), ("num_positive", _INT),
    ("num_negative_lo", _INT), ("num_negative_hi", _INT), ("index_estimate", _FLOAT),
    ("index_sem", _FLOAT), ("index_bias_bound", _FLOAT),
))  # fmt: skip
# A relative threshold (tau = c lambda_max) also stores the tau it used.
RELATIVE_FIELDS: tuple[pa.Field, ...] = (pa.field("tau", _FLOAT),)


def tol_name(zero_tol: float) -> str:
    """The tolerance as it appears in a column name: the fewest significant digits that read
    back as the same float, e.g. ``1e-5``, ``1.2e-5``, ``1e-10`` (distinct tolerances always
    get distinct names; one-digit tolerances keep the names results were stored under)."""
    tau = float(zero_tol)
    for digits in range(17):
        text = f"{tau:.{digits}e}"
        if float(text) == tau:
            break
    return text.replace("e-0", "e-").replace("e+0", "e+")


def tol_column(kind: str, zero_tol: float, *, relative: bool = False) -> str:
    """The stored column of a count at a zero tolerance, e.g. ``num_negative@1e-5`` or
    ``num_negative@1.2e-5`` (:func:`tol_name`), or at a relative one (tau = c lambda_max),
    e.g. ``num_negative@rel1e-3``."""
    return f"{kind}@{'rel' if relative else ''}{tol_name(zero_tol)}"


def thresholds(columns: Iterable[str]) -> list[tuple[float, bool]]:
    """The thresholds ``(tol, relative)`` whose counts are among ``columns`` (the inverse of
    :func:`tol_column`), sorted: absolute ones first."""
    out = set()
    for name in columns:
        kind, at, tol = name.partition("@")
        if at and kind == "num_negative":
            relative = tol.startswith("rel")
            out.add((float(tol.removeprefix("rel")), relative))
    return sorted(out, key=lambda t: (t[1], t[0]))


def threshold_fields(tol: float, relative: bool) -> list[pa.Field]:
    fields = THRESHOLD_FIELDS + (RELATIVE_FIELDS if relative else ())
    return [pa.field(tol_column(f.name, tol, relative=relative), f.type) for f in fields]


def schema(zero_tols: Sequence[float], relative_tols: Sequence[float] = ()) -> pa.Schema:
    """The columns of a study that counts at ``zero_tols`` and at tau = c lambda_max for each
    c in ``relative_tols``: :data:`ROW_FIELDS`, then each threshold's fields."""
    fields = list(ROW_FIELDS)
    for tol in zero_tols:
        fields += threshold_fields(tol, False)
    for c in relative_tols:
        fields += threshold_fields(c, True)
    return pa.schema(fields)


def exact_count(value: Any, exact: bool) -> int | None:
    """An exact count as an int, else None (an estimate or NaN is never stored as a count)."""
    if not exact or value is None or not math.isfinite(float(value)):
        return None
    return int(value)


def count_values(tol: float, relative: bool, x) -> dict[str, Any]:
    """One threshold's columns from an :class:`saddlestudy.inertia.Inertia` ``x``: exact
    counts (or null), bounds, SEM, estimate; relative thresholds also the tau used."""
    estimate = float(x.index) if x.index is not None else math.nan
    values = {
        "num_negative": exact_count(x.num_negative, x.exact),
        "num_zero": exact_count(x.num_zero, x.exact),
        "num_positive": exact_count(x.num_positive, x.exact),
        "num_negative_lo": int(x.num_negative_lo),
        "num_negative_hi": int(x.num_negative_hi),
        "index_estimate": estimate if math.isfinite(estimate) else None,
        "index_sem": 0.0 if x.exact else float(x.index_sem),
        "index_bias_bound": 0.0 if x.exact else float(x.index_bias_bound),
    }
    if relative:
        values["tau"] = float(x.zero_tol)
    return {tol_column(k, tol, relative=relative): v for k, v in values.items()}


def table(columns: dict[str, list], table_schema: pa.Schema) -> pa.Table:
    """A cell's rows as a table of ``table_schema`` (so a column of nulls keeps its type).

    Raises:
      ValueError: the rows' columns are not the schema's (a column built but not declared in
        this module, or declared but not built).
    """
    names = set(table_schema.names)
    if set(columns) != names:
        extra, missing = sorted(set(columns) - names), sorted(names - set(columns))
        raise ValueError(f"row columns differ from rows.schema: extra {extra}, missing {missing}")
    return pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in table_schema},
                    schema=table_schema)  # fmt: skip
