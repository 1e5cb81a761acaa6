"""The sweep end to end: a tiny study, the store it writes, resume after SIGKILL, lock, Ray."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import tiny_study_toml

from saddlestudy import analysis, config, inertia, store, sweep
from saddlestudy.hessian import dense_hessian

TIMING = {"train_seconds", "finder_seconds", "spectrum_seconds"}


def write_config(tmp_path, widths="[2, 3]", name="tiny.toml"):
    path = tmp_path / name
    path.write_text(tiny_study_toml("tiny", widths, seed=3))
    return path


def comparable(table):
    rows = [{k: v for k, v in r.items() if k not in TIMING} for r in table.to_pylist()]
    return sorted(rows, key=lambda r: r["row_id"])


@pytest.fixture
def restore_x64():
    import jax

    previous = jax.config.jax_enable_x64
    yield
    jax.config.update("jax_enable_x64", previous)


def test_study_writes_one_row_per_point_with_provenance(tmp_path, restore_x64, capsys):
    cfg_path = write_config(tmp_path)
    assert sweep.main([str(cfg_path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    out = capsys.readouterr()
    assert "points of study tiny" in out.out and "conv" in out.out and "cell 2/2" in out.err
    table = store.load_results(tmp_path / "out", "tiny")
    cfg = config.load(cfg_path)
    assert table.num_rows == 2 * 2 * 2  # cells x replicas x (snapshot + end)
    rows = table.to_pylist()
    assert "undet." in out.out
    for r in rows:
        assert r["config_hash"] == config.config_hash(cfg)
        assert r["git_commit"] and r["jax_version"] and r["device"].startswith("cpu")
        assert (
            r["num_negative@1e-5"] + r["num_zero@1e-5"] + r["num_positive@1e-5"] == r["num_params"]
        )
        assert r["converged"] == (r["grad_norm_sq"] < r["grad_tol"])
        eig = store.load_spectrum(tmp_path / "out", "tiny", r["row_id"])["eigenvalues"]
        assert eig.shape == (r["num_params"],)
        assert int((eig < -1e-5).sum()) == r["num_negative@1e-5"]
        # All P eigenvalues: exact counts, bounds that meet, no empty column.
        assert r["spectrum_method"] == "eigh" and r["counts_exact"] and r["failure_prob"] == 0
        assert r["index"] == r["num_negative@1e-5"] / r["num_params"]
        assert r["tau@rel1e-3"] == 1e-3 * eig[-1] and r["lambda_max"] == eig[-1]
        neg = int((eig < -r["tau@rel1e-3"]).sum())
        assert r["num_negative_lo@rel1e-3"] == r["num_negative_hi@rel1e-3"] == neg
        assert not [k for k, v in r.items() if v is None and k != "start_loss_level"]
    assert {r["start_kind"] for r in rows} == {"step", "end"}
    saved = json.loads((tmp_path / "out" / "tiny" / "config.json").read_text())
    assert saved == cfg


def test_rerun_skips_completed_cells_and_is_deterministic(tmp_path, restore_x64):
    cfg = config.load(write_config(tmp_path))
    first = comparable(store.load_results(sweep.run_study(cfg, tmp_path / "a", quiet=True)))
    computed = []
    sweep.run_study(cfg, tmp_path / "a", quiet=True, cell_done=computed.append)
    assert computed == []  # everything was complete
    again = comparable(store.load_results(sweep.run_study(cfg, tmp_path / "b", quiet=True)))
    assert again == [{**r, "row_id": r["row_id"]} for r in first]


def test_missing_or_corrupt_part_is_recomputed(tmp_path, restore_x64):
    cfg = config.load(write_config(tmp_path))
    directory = sweep.run_study(cfg, tmp_path, quiet=True)
    before = comparable(store.load_results(directory))
    parts = sorted((directory / "parts").glob("*.parquet"))
    parts[0].write_bytes(b"garbage")
    parts[1].unlink()
    computed = []
    sweep.run_study(cfg, tmp_path, quiet=True, cell_done=computed.append)
    assert len(computed) == 2
    assert comparable(store.load_results(directory)) == before


def test_other_config_in_the_same_directory_needs_fresh(tmp_path, restore_x64, capsys):
    out = str(tmp_path / "out")
    assert sweep.main([str(write_config(tmp_path)), "--out", out, "--quiet"]) == 0
    other = write_config(tmp_path, widths="[2]", name="other.toml")
    assert sweep.main([str(other), "--out", out, "--quiet"]) == 2
    assert "--fresh" in capsys.readouterr().err
    assert sweep.main([str(other), "--out", out, "--quiet", "--fresh"]) == 0
    assert store.load_results(out, "tiny").num_rows == 4


def test_dry_run_and_config_errors_compute_nothing(tmp_path, capsys):
    cfg_path = write_config(tmp_path)
    assert sweep.main([str(cfg_path), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    assert "2 cells" in capsys.readouterr().out and not (tmp_path / "out").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text(tiny_study_toml("tiny", "[0]", seed=3))
    assert sweep.main([str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model.width") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert sweep.main([str(tmp_path / "nope.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_embedded_default_study_dry_run(capsys):
    assert sweep.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "study default" in out and "10 cells" in out


def test_sigkill_mid_sweep_then_resume_equals_uninterrupted(tmp_path):
    cfg_path = write_config(tmp_path, widths="[2, 3, 4]")
    env = dict(os.environ, SADDLESTUDY_JAX_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "saddlestudy.sweep", str(cfg_path), "--quiet"]
    killed_out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*cmd, "--out", str(killed_out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    parts = killed_out / "tiny" / "parts"
    deadline = time.time() + 120
    while time.time() < deadline and not list(parts.glob("*.parquet")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(parts.glob("*.parquet")))
    assert 1 <= done_at_kill < 3, "the kill should land in the middle of the sweep"
    subprocess.run([*cmd, "--out", str(killed_out)], env=env, check=True, capture_output=True)
    subprocess.run(
        [*cmd, "--out", str(tmp_path / "clean")], env=env, check=True, capture_output=True
    )
    resumed = comparable(store.load_results(killed_out, "tiny"))
    clean = comparable(store.load_results(tmp_path / "clean", "tiny"))
    assert len(resumed) == 3 * 2 * 2 and len({r["row_id"] for r in resumed}) == len(resumed)
    for a, b in zip(resumed, clean, strict=True):
        a = {k: v for k, v in a.items() if k != "git_commit"}
        b = {k: v for k, v in b.items() if k != "git_commit"}
        assert a == b


def test_two_sweeps_on_one_directory_get_a_lock_error(tmp_path, restore_x64, capsys):
    cfg = config.load(write_config(tmp_path))
    holder = store.Store(tmp_path, "tiny")
    with holder.lock():
        with pytest.raises(store.StoreLockedError):
            sweep.run_study(cfg, tmp_path, quiet=True)
    parts = tmp_path / "tiny" / "parts"
    assert not parts.exists() or not list(parts.glob("*"))


def test_ray_backend_writes_the_same_rows(tmp_path, restore_x64):
    import ray

    cfg = config.load(write_config(tmp_path, widths="[2]"))
    local = comparable(store.load_results(sweep.run_study(cfg, tmp_path / "local", quiet=True)))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        directory = sweep.run_study(cfg, tmp_path / "ray", quiet=True, backend="ray")
    finally:
        ray.shutdown()
    remote = comparable(store.load_results(directory))
    assert len(remote) == len(local)
    for a, b in zip(remote, local, strict=True):
        assert a["row_id"] == b["row_id"]
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-12)
        assert a["num_negative@1e-5"] == b["num_negative@1e-5"]


def test_finder_none_measures_the_starts_where_training_stopped(tmp_path, restore_x64, capsys):
    # --set switches the finder off: the spectrum is taken at the snapshots and end points
    # themselves, with their own loss and gradient norm (the minimum-ratio study).
    cfg_path = write_config(tmp_path, widths="[2]")
    out = tmp_path / "out"
    args = [str(cfg_path), "--out", str(out), "--quiet", "--set", 'finder.method="none"']
    args += ["--set", 'model.loss="mse"']  # squared error on digits' labels: one-hot targets
    assert sweep.main(args) == 0
    table = store.load_results(out / "tiny")
    rows = table.to_pylist()
    assert len(rows) == 4 and {r["finder_method"] for r in rows} == {"none"}
    assert {r["loss_name"] for r in rows} == {"mse"}
    assert all(r["iterations"] == 0 and not r["gradient_flat"] for r in rows)
    for r in rows:
        assert r["converged"] == (r["grad_norm_sq"] < r["grad_tol"])
    # The end point's loss is where training stopped: the row's training loss.
    ends = [r for r in rows if r["start_kind"] == "end"]
    np.testing.assert_allclose([r["loss"] for r in ends], [r["train_loss"] for r in ends])
    assert all(0 <= r["minimum_ratio"] <= 1 for r in rows)
    assert sweep.main([str(cfg_path), "--out", str(out), "--set", "finder.method=none"]) == 2
    assert "not a TOML value" in capsys.readouterr().err


def test_quick_runs_the_reduced_study(tmp_path, capsys):
    cfg_path = tmp_path / "q.toml"
    cfg_path.write_text(
        write_config(tmp_path).read_text()
        + "\n[quick.model]\nwidth = [2]\n[quick.train]\nreplicas = 1\n"
    )
    assert sweep.main([str(cfg_path), "--quick", "--dry-run"]) == 0
    assert "1 cells" in capsys.readouterr().out
    assert sweep.main([str(cfg_path), "--dry-run"]) == 0
    assert "2 cells" in capsys.readouterr().out


def test_finder_batching_auto_follows_the_platform():
    import jax

    cpu = jax.devices()[0].platform == "cpu"
    assert sweep.finder_batching("auto") == ("map" if cpu else "vmap")
    assert sweep.finder_batching("vmap") == "vmap" and sweep.finder_batching("map") == "map"


def reference_eigenvalues(loss_fn, params):
    """All eigenvalues of the float64 dense Hessian (numpy's eigvalsh): the independent truth."""
    H = np.asarray(dense_hessian(loss_fn, params), dtype=np.float64)
    return np.linalg.eigvalsh(0.5 * (H + H.T))


# spectrum.method, the overrides, the spectrum_method rows may record. P = 40 throughout.
INERTIA_CASES = {
    "dense": ({}, {"dense"}),
    # 10 Lanczos products are too few for exact counts: the bounds must say so.
    "lanczos": ({"spectrum.max_matvecs": 10}, {"lanczos"}),
    # SLQ depth num_matvecs = 64 > P = 40 (a cell like this used to crash).
    "slq": ({}, {"slq"}),
    # "auto" past the cap: Lanczos, then SLQ (8 deep: estimates) where Lanczos is not exact.
    "auto": (
        {"spectrum.dense_max_params": 1, "spectrum.max_matvecs": 10, "spectrum.num_matvecs": 8},
        {"lanczos", "lanczos+slq"},
    ),
}


@pytest.mark.parametrize("method", list(INERTIA_CASES))
def test_counts_past_the_full_spectrum_hold_against_a_dense_reference(
    tmp_path, restore_x64, monkeypatch, method
):
    # full_spectrum_max_params = 0: every point is counted by hessian_inertia, one by one.
    points = []
    real = inertia.hessian_inertia

    def spy(loss_fn, params, **kwargs):
        if kwargs["method"] in (method, "lanczos+slq"):  # "auto" past the cap: lanczos+slq
            points.append((loss_fn, params))
        return real(loss_fn, params, **kwargs)

    monkeypatch.setattr(inertia, "hessian_inertia", spy)
    extra, recorded_methods = INERTIA_CASES[method]
    overrides = {"spectrum.full_spectrum_max_params": 0, "spectrum.method": method,
                 "train.replicas": 1, **extra}  # fmt: skip
    cfg = config.load(write_config(tmp_path, widths="[2]"), overrides=overrides)
    rows = store.load_results(sweep.run_study(cfg, tmp_path, quiet=True)).to_pylist()
    assert len(rows) == len(points) == 2
    suffixes = [(analysis.tol_column("", t)[1:], t) for t in cfg["spectrum"]["zero_tols"]]
    suffixes += [("rel1e-3", None)]
    exact_seen = []
    for row, (loss_fn, params) in zip(rows, points, strict=True):
        # The counted point is the stored one.
        assert float(loss_fn(params)) == pytest.approx(row["loss"], rel=1e-12, abs=1e-15)
        eig = reference_eigenvalues(loss_fn, params)
        slack = 1e-10 * np.abs(eig).max()  # eigenvalues this close to a threshold: either side
        assert row["spectrum_method"] in recorded_methods and row["num_params"] == eig.size == 40
        assert row["lambda_min"] >= eig[0] - slack and row["lambda_max"] <= eig[-1] + slack
        for suffix, tau in suffixes:
            if tau is None:
                tau = row[f"tau@{suffix}"]
                assert tau == pytest.approx(1e-3 * eig[-1], rel=1e-8)
            fewest, most = int(np.sum(eig < -tau - slack)), int(np.sum(eig < -tau + slack))
            lo, hi = row[f"num_negative_lo@{suffix}"], row[f"num_negative_hi@{suffix}"]
            neg = row[f"num_negative@{suffix}"]
            assert lo <= most and hi >= fewest, (suffix, lo, hi, fewest, most)
            exact_seen.append(neg is not None)
            if neg is None:  # not exact: bounds apart, no count, no index from a Ritz count
                assert lo < hi and row[f"num_zero@{suffix}"] is None
                assert row[f"num_positive@{suffix}"] is None
            else:
                assert lo == hi == neg and fewest <= neg <= most
                assert row[f"index_estimate@{suffix}"] == neg / 40
                assert row[f"index_sem@{suffix}"] == 0
            if method == "dense":  # exact at every threshold, nothing left empty
                assert neg is not None
                above = int(np.sum(eig > tau + slack)), int(np.sum(eig > tau - slack))
                assert above[0] <= row[f"num_positive@{suffix}"] <= above[1]
                assert neg + row[f"num_zero@{suffix}"] + row[f"num_positive@{suffix}"] == 40
        assert row["counts_exact"] == (row["num_negative@1e-5"] is not None)
        assert (row["index"] is None) == (not row["counts_exact"])
        assert row["failure_prob"] == (0.0 if method == "dense" else 1e-3)
    if method in ("lanczos", "auto"):
        assert not all(exact_seen)  # the not-exact path was taken


def test_summary_classifies_from_the_bounds():
    import pyarrow as pa

    def row(lo, hi, exact, converged=True):
        neg = lo if exact else None
        return {"num_params": 10, "depth": 1, "widths": "10", "activation": "tanh",
                "converged": converged, "gradient_flat": False, "zero_tol": 1e-5,
                "num_negative@1e-5": neg, "num_negative_lo@1e-5": lo,
                "num_negative_hi@1e-5": hi}  # fmt: skip

    rows = [row(0, 0, True), row(0, 3, False), row(2, 5, False), row(4, 4, True)]
    rows += [row(0, 0, True, converged=False)]
    table = pa.Table.from_pylist(rows)
    line = sweep.summarize(table).splitlines()[2].split()
    # minima: 1 of 4 converged; undetermined: 1 of 4; median index of the exact 0 and 0.4.
    assert line[4:] == ["5", "0.80", "0.00", "0.25", "0.25", "0.2000"]
