import multiprocessing
import os
import signal

import numpy as np
import pyarrow as pa
import pytest

from saddlestudy import store


def table(cell, n):
    return pa.table(
        {"row_id": [f"{cell}:{i}" for i in range(n)], "loss": [float(i) for i in range(n)]}
    )


def test_write_and_load_round_trip(tmp_path):
    st = store.Store(tmp_path, "s")
    with st.lock():
        st.prepare({"a": 1}, "h1", {"config_hash": "h1"})
        st.write_cell("c1", table("c1", 3), {"c1:0/eigenvalues": np.arange(4.0)})
        st.write_cell("c2", table("c2", 2), {})
    assert st.is_complete("c1", 3) and not st.is_complete("c1", 4) and not st.is_complete("c3")
    loaded = store.load_results(tmp_path, "s")
    assert loaded.num_rows == 5 and sorted(loaded["row_id"].to_pylist())[0] == "c1:0"
    np.testing.assert_array_equal(
        store.load_spectrum(tmp_path, "s", "c1:0")["eigenvalues"], np.arange(4.0)
    )
    assert not list(st.parts.glob(".*tmp"))  # no temp files left behind


def test_corrupt_or_missing_part_is_not_complete(tmp_path):
    st = store.Store(tmp_path, "s")
    with st.lock():
        st.prepare({}, "h", {"config_hash": "h"})
        st.write_cell("c1", table("c1", 3), {})
    st.part_path("c1").write_bytes(st.part_path("c1").read_bytes()[:50])  # truncated
    assert not st.is_complete("c1")
    st.spectra_path("c1").unlink()
    assert not st.is_complete("c1")


def test_other_config_is_refused_unless_fresh(tmp_path):
    st = store.Store(tmp_path, "s")
    with st.lock():
        st.prepare({}, "h1", {"config_hash": "h1"})
        st.write_cell("c1", table("c1", 1), {})
    with st.lock(), pytest.raises(store.StoreMismatchError, match="--fresh"):
        st.prepare({}, "h2", {"config_hash": "h2"})
    assert st.is_complete("c1")  # nothing on disk was touched
    with st.lock():
        st.prepare({}, "h2", {"config_hash": "h2"}, fresh=True)
    assert not st.is_complete("c1")


def _hold_lock(root, ready, release):
    with store.Store(root, "s").lock():
        ready.set()
        release.wait(30)


def test_a_second_writer_gets_a_clear_error(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(store.StoreLockedError, match="another sweep"):
            with store.Store(tmp_path, "s").lock():
                pass
    finally:
        release.set()
        holder.join(30)
    with store.Store(tmp_path, "s").lock():  # free again once the holder is gone
        pass


def test_lock_of_a_killed_holder_is_released(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    assert ready.wait(30)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(30)
    with store.Store(tmp_path, "s").lock():
        pass


def test_load_results_of_an_empty_study_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results"):
        store.load_results(tmp_path, "nothing")


def _snapshot(directory):
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "name, content",
    [
        ("manifest.json", b'{"config_hash": "h1", "cel'),  # truncated
        ("manifest.json", b"\xff\xfe not utf-8"),
        ("manifest.json", b"[1, 2]"),  # JSON, but not a manifest
        ("manifest.json", b'{"cells": []}'),  # no config_hash
        ("config.json", b"{not json"),
    ],
)
def test_unreadable_study_state_is_refused_in_one_line_touching_nothing(tmp_path, name, content):
    st = store.Store(tmp_path, "s")
    with st.lock():
        st.prepare({"a": 1}, "h1", {"config_hash": "h1"})
        st.write_cell("c1", table("c1", 1), {})
    (st.dir / name).write_bytes(content)
    before = _snapshot(st.dir)
    with st.lock(), pytest.raises(store.StoreCorruptError, match="--fresh") as err:
        st.prepare({"a": 1}, "h1", {"config_hash": "h1"})
    assert name in str(err.value) and len(str(err.value).splitlines()) == 1
    assert _snapshot(st.dir) == before
    with st.lock():  # --fresh recovers
        st.prepare({"a": 1}, "h1", {"config_hash": "h1"}, fresh=True)
    assert not st.is_complete("c1")


def test_unreadable_lock_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "s" / ".lock").mkdir(parents=True)  # a directory where the lock file goes
    with pytest.raises(store.StoreCorruptError, match="lock file") as err:
        with store.Store(tmp_path, "s").lock():
            pass
    assert len(str(err.value).splitlines()) == 1


def test_corrupt_part_or_spectra_is_named_when_read(tmp_path):
    st = store.Store(tmp_path, "s")
    with st.lock():
        st.prepare({}, "h", {"config_hash": "h"})
        st.write_cell("c1", table("c1", 2), {"c1:0/eigenvalues": np.arange(3.0)})
    assert st.part_problem("c1", 2) is None and st.part_problem("c2") == "missing"
    assert "rows" in st.part_problem("c1", 3)
    st.spectra_path("c1").write_bytes(b"garbage")
    assert "spectra" in st.part_problem("c1", 2) and not st.is_complete("c1", 2)
    with pytest.raises(store.StoreCorruptError, match="rerun the sweep") as err:
        store.load_spectrum(tmp_path, "s", "c1:0")
    assert len(str(err.value).splitlines()) == 1
    st.part_path("c1").write_bytes(b"garbage")
    assert "unreadable part" in st.part_problem("c1", 2)
    with pytest.raises(store.StoreCorruptError, match="rerun the sweep") as err:
        store.load_results(tmp_path, "s")
    assert len(str(err.value).splitlines()) == 1
