"""Every study keeps its config hash and cell ids.

A study's results on disk are found by its config hash and cell ids: a change to either orphans
finished results (a resumed sweep recomputes everything). ``tests/data/study_ids.json`` holds
them for every sweep study in experiments/ (the full and the ``--quick`` version), as the code
produced them when the file was written (2026-12-07), and the cells of the committed census
store (``results_snapshot/census.tar``). Rewrite the file only when a study's results really
change, and say so in the commit (the census's end-point cells changed on 2026-12-07: their
Newton-MR budget went from 100 to 1,000 iterations):

    python -c "from tests.test_study_ids import current_ids; import json; \
        print(json.dumps(current_ids(), indent=1))" > tests/data/study_ids.json
"""

import json
import tarfile
from pathlib import Path

import pytest

from saddlestudy import config

ROOT = Path(__file__).resolve().parents[1]
RECORDED = json.loads((ROOT / "tests" / "data" / "study_ids.json").read_text())
# The committed census store: the cells of the census config it was run with (recorded apart,
# since the census config may have moved on while a rerun is under way).
SNAPSHOT = "results_snapshot/census.tar"
# experiments/lecture.toml configures scripts/lecture_example.py, not a sweep.
NOT_SWEEPS = {"lecture"}


def sweep_studies() -> list[tuple[str, bool]]:
    out = []
    for path in sorted((ROOT / "experiments").glob("*.toml")):
        if path.stem in NOT_SWEEPS:
            continue
        out.append((path.stem, False))
        if "[quick" in path.read_text():
            out.append((path.stem, True))
    return out


def study_key(name: str, quick: bool) -> str:
    return name + (" --quick" if quick else "")


def ids(name: str, quick: bool) -> dict:
    cfg = config.load(ROOT / "experiments" / f"{name}.toml", quick=quick)
    return {
        "config_hash": config.config_hash(cfg),
        "cell_ids": [c.cell_id for c in config.expand(cfg)],
    }


def current_ids() -> dict:
    """What the code gives today, with the snapshot's entry carried over."""
    return {
        **{study_key(n, q): ids(n, q) for n, q in sweep_studies()},
        SNAPSHOT: RECORDED[SNAPSHOT],
    }


def test_every_sweep_study_is_recorded():
    assert sorted(study_key(n, q) for n, q in sweep_studies()) == sorted(set(RECORDED) - {SNAPSHOT})


@pytest.mark.parametrize("name, quick", sweep_studies(), ids=lambda v: str(v))
def test_config_hash_and_cell_ids_are_kept(name, quick):
    assert ids(name, quick) == RECORDED[study_key(name, quick)]


def test_the_census_snapshot_holds_the_recorded_cells():
    with tarfile.open(ROOT / SNAPSHOT) as tar:
        manifest = json.load(tar.extractfile("census/manifest.json"))
    recorded = RECORDED[SNAPSHOT]
    assert manifest["config_hash"] == recorded["config_hash"]
    assert manifest["cells"] == recorded["cell_ids"]


@pytest.mark.e2e  # unpacks the 7 MB snapshot and checks its 34 part files
def test_a_census_sweep_over_the_snapshot_finds_every_cell_done(tmp_path, monkeypatch):
    from saddlestudy import runner

    with tarfile.open(ROOT / SNAPSHOT) as tar:
        tar.extractall(tmp_path, filter="data")

    def recompute(cfg, cell, out, cache=None):
        raise AssertionError(f"cell {cell.cell_id} of the committed census would be recomputed")

    monkeypatch.setattr(runner, "_compute_and_write", recompute)
    done = runner.run_study(config.load("census"), out=tmp_path, quiet=True)
    assert done == tmp_path / "census"
