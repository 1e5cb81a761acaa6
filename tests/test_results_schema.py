"""docs/results-schema.md is checked against the columns a real sweep stores (the session's
tiny study): every stored column documented, nothing documented that is not stored, and each
column's Arrow type as the page says, so the reference cannot go stale silently."""

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from saddlestudy import rows, store

pytestmark = pytest.mark.e2e  # the schema page against a finished study

SCHEMA_DOC = Path(__file__).resolve().parents[1] / "docs" / "results-schema.md"
# A table row of the page: | `column` | type | meaning |
ROW = re.compile(r"^\| `([^`]+)` \| ([^|]+?) \| (.+) \|$")


def documented_columns() -> dict[str, set[str]]:
    """Column name or template -> the Arrow types the page allows (the type cell's first word
    and any other type it names in backticks)."""
    columns: dict[str, set[str]] = {}
    for line in SCHEMA_DOC.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        match = ROW.match(line)
        assert match, f"docs/results-schema.md: a table row that does not parse: {line!r}"
        name, type_cell = match.group(1), match.group(2)
        assert name not in columns, f"docs/results-schema.md documents {name!r} twice"
        columns[name] = {re.match(r"\w+", type_cell).group(0), *re.findall(r"`(\w+)`", type_cell)}
    return columns


def expand(columns: dict[str, set[str]], absolute: list[str], relative: list[str]):
    """The templates' ``{tol}`` over every threshold suffix, ``{rel}`` over the relative ones."""
    out = {}
    for name, types in columns.items():
        if "{tol}" in name:
            out.update({name.replace("{tol}", s): types for s in absolute + relative})
        elif "{rel}" in name:
            out.update({name.replace("{rel}", s): types for s in relative})
        else:
            assert "{" not in name, f"unknown placeholder in {name!r} (use {{tol}} or {{rel}})"
            out[name] = types
    return out


def test_results_schema_doc_matches_a_real_run(tiny_study):
    spec = json.loads((tiny_study / "config.json").read_text())["spectrum"]
    absolute = [rows.tol_name(t) for t in spec["zero_tols"]]
    relative = ["rel" + rows.tol_name(c) for c in spec["relative_tols"]]
    assert absolute and relative, "the tiny study should count at both kinds of threshold"
    documented = expand(documented_columns(), absolute, relative)

    table = store.load_results(tiny_study)
    schemas = [("load_results", table.schema)]
    schemas += [("rows.schema", rows.schema(spec["zero_tols"], spec["relative_tols"]))]
    parts = sorted((tiny_study / "parts").glob("*.parquet"))
    schemas += [(part.name, pq.read_schema(part)) for part in parts]
    for where, schema in schemas:
        stored = {field.name: str(field.type) for field in schema}
        missing = sorted(set(stored) - set(documented))
        extra = sorted(set(documented) - set(stored))
        assert not missing and not extra, (
            f"docs/results-schema.md is out of date ({where}): stored but not documented: "
            f"{missing}; documented but not stored: {extra}"
        )
        wrong = {
            name: (stored[name], sorted(types))
            for name, types in documented.items()
            if stored[name] not in types
        }
        assert not wrong, (
            f"docs/results-schema.md: Arrow types differ ({where}), column: (stored, "
            f"documented): {wrong}"
        )
