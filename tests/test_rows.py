"""The results table's one schema (saddlestudy.rows): the columns a sweep stores are exactly
the declared ones, in their declared types; threshold names read back; a row that does not
match the schema is refused."""

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saddlestudy import rows, store


def test_threshold_names_read_back():
    zero, rel = [1e-8, 1.2e-5, 1e-5, 1e-10, 3e-4], [1e-3, 1.5e-2]
    names = rows.schema(zero, rel).names
    assert rows.thresholds(names) == sorted([(t, False) for t in zero]) + sorted(
        [(c, True) for c in rel]
    )
    assert len(set(names)) == len(names)  # no two thresholds share a column


def test_a_row_that_does_not_match_the_schema_is_refused():
    sch = rows.schema([1e-5])
    columns = {name: [None] for name in sch.names}
    table = rows.table(columns, sch)
    # all-null columns keep their declared types (an int64 count stays int64, not null)
    assert table.schema == sch
    assert table.schema.field("num_negative@1e-5").type == pa.int64()
    with pytest.raises(ValueError, match=r"extra \['surprise'\]"):
        rows.table({**columns, "surprise": [1]}, sch)
    del columns["loss"]
    with pytest.raises(ValueError, match=r"missing \['loss'\]"):
        rows.table(columns, sch)


def test_counts_are_stored_only_when_exact():
    fields = dict(num_negative=3.0, num_zero=1.0, num_positive=6.0, num_negative_lo=2,
                  num_negative_hi=5, index=0.35, index_sem=0.05, index_bias_bound=0.01,
                  zero_tol=2e-3)  # fmt: skip
    exact = rows.count_values(1e-3, True, _Fake(exact=True, **fields))
    assert exact["num_negative@rel1e-3"] == 3 and exact["index_sem@rel1e-3"] == 0.0
    assert exact["tau@rel1e-3"] == 2e-3
    bounds = rows.count_values(1e-5, False, _Fake(exact=False, **fields))
    assert bounds["num_negative@1e-5"] is None and bounds["num_zero@1e-5"] is None
    assert (bounds["num_negative_lo@1e-5"], bounds["num_negative_hi@1e-5"]) == (2, 5)
    assert bounds["index_sem@1e-5"] == 0.05 and "tau@1e-5" not in bounds
    assert rows.exact_count(math.nan, True) is None


class _Fake:  # the fields of an inertia.Inertia that count_values reads
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.mark.e2e
def test_a_sweep_stores_exactly_the_schema(tiny_study):
    import json

    spec = json.loads((tiny_study / "config.json").read_text())["spectrum"]
    expected = rows.schema(spec["zero_tols"], spec["relative_tols"])
    for part in sorted((tiny_study / "parts").glob("*.parquet")):
        assert pq.read_schema(part).remove_metadata() == expected, part.name
    assert store.load_results(tiny_study).schema.remove_metadata() == expected
