"""The sweep end to end: a tiny study, the store it writes, resume after SIGKILL, lock, Ray."""

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import tiny_study_toml

from saddlestudy import analysis, config, inertia, pipeline, runner, store, sweep
from saddlestudy.hessian import dense_hessian

pytestmark = pytest.mark.e2e  # whole studies through run_study and the command line, Ray

# Timings, and whether a cell reused the previous cell's training (depends on what ran before).
TIMING = {"train_seconds", "finder_seconds", "spectrum_seconds", "train_reused"}


def write_config(tmp_path, widths="[2, 3]", name="tiny.toml"):
    path = tmp_path / name
    path.write_text(tiny_study_toml("tiny", widths, seed=3))
    return path


def comparable(table):
    return comparable_rows(table.to_pylist())


def comparable_rows(rows):
    # NaN (a value nothing certifies, e.g. ritz_min of a row with all eigenvalues) compares
    # unequal to itself: compared as a marker.
    def same(v):
        return "NaN" if isinstance(v, float) and math.isnan(v) else v

    rows = [{k: same(v) for k, v in r.items() if k not in TIMING} for r in rows]
    return sorted(rows, key=lambda r: r["row_id"])


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
    assert saved == cfg.to_dict() and config.resolve(saved) == cfg  # the stored config reads back


def test_rerun_skips_completed_cells_and_is_deterministic(tmp_path, restore_x64):
    cfg = config.load(write_config(tmp_path))
    first = comparable(store.load_results(runner.run_study(cfg, tmp_path / "a", quiet=True)))
    computed = []
    runner.run_study(cfg, tmp_path / "a", quiet=True, cell_done=computed.append)
    assert computed == []  # everything was complete
    again = comparable(store.load_results(runner.run_study(cfg, tmp_path / "b", quiet=True)))
    assert again == [{**r, "row_id": r["row_id"]} for r in first]


def test_missing_or_corrupt_part_is_recomputed(tmp_path, restore_x64, capsys):
    cfg = config.load(write_config(tmp_path))
    directory = runner.run_study(cfg, tmp_path, quiet=True)
    before = comparable(store.load_results(directory))
    parts = sorted((directory / "parts").glob("*.parquet"))
    parts[0].write_bytes(b"garbage")
    parts[1].unlink()
    capsys.readouterr()
    computed = []
    runner.run_study(cfg, tmp_path, quiet=True, cell_done=computed.append)
    assert len(computed) == 2
    # The corrupt part is said in the log (the missing one is ordinary work).
    said = [line for line in capsys.readouterr().err.splitlines() if "recomputing" in line]
    assert len(said) == 1 and f"unreadable part file {parts[0].name}" in said[0]
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


# The sweep, SIGKILLed by itself right after its k-th cell is written: a kill at a point the
# test controls (the lock held, the next cell not begun), not at a time it hopes is the middle.
KILL_AFTER_CELLS = """
import os, signal, sys
from saddlestudy import config, provenance, runner
done = []
def cell_done(cell):
    done.append(cell)
    if len(done) == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
provenance.enable_compilation_cache()  # as the CLI: the runs after it reuse its programs
runner.run_study(config.load(sys.argv[1]), sys.argv[2], quiet=True, cell_done=cell_done)
"""


def test_sigkill_mid_sweep_then_resume_equals_uninterrupted(tmp_path):
    cfg_path = write_config(tmp_path, widths="[2, 3]")
    env = dict(os.environ, SADDLESTUDY_JAX_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "saddlestudy.sweep", str(cfg_path), "--quiet"]
    killed_out = tmp_path / "killed"
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_CELLS, str(cfg_path), str(killed_out), "1"],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(list((killed_out / "tiny" / "parts").glob("*.parquet"))) == 1
    subprocess.run([*cmd, "--out", str(killed_out)], env=env, check=True, capture_output=True)
    subprocess.run(
        [*cmd, "--out", str(tmp_path / "clean")], env=env, check=True, capture_output=True
    )
    resumed = comparable(store.load_results(killed_out, "tiny"))
    clean = comparable(store.load_results(tmp_path / "clean", "tiny"))
    assert len(resumed) == 2 * 2 * 2 and len({r["row_id"] for r in resumed}) == len(resumed)
    for a, b in zip(resumed, clean, strict=True):
        a = {k: v for k, v in a.items() if k != "git_commit"}
        b = {k: v for k, v in b.items() if k != "git_commit"}
        assert a == b


def test_two_sweeps_on_one_directory_get_a_lock_error(tmp_path, restore_x64, capsys):
    cfg = config.load(write_config(tmp_path))
    holder = store.Store(tmp_path, "tiny")
    with holder.lock():
        with pytest.raises(store.StoreLockedError):
            runner.run_study(cfg, tmp_path, quiet=True)
    parts = tmp_path / "tiny" / "parts"
    assert not parts.exists() or not list(parts.glob("*"))


def test_ray_backend_writes_the_same_rows(tmp_path, restore_x64):
    import ray

    cfg = config.load(write_config(tmp_path, widths="[2]"))
    local = comparable(store.load_results(runner.run_study(cfg, tmp_path / "local", quiet=True)))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        directory = runner.run_study(cfg, tmp_path / "ray", quiet=True, backend="ray")
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
    assert pipeline.finder_batching("auto") == ("map" if cpu else "vmap")
    assert pipeline.finder_batching("vmap") == "vmap" and pipeline.finder_batching("map") == "map"


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
    tmp_path, x64, monkeypatch, method
):
    # x64: the spied points are evaluated again below, after run_study has restored the
    # caller's setting; in float64, as the study computed them.
    # full_spectrum_max_params = 0: every point is counted by hessian_inertia, one by one.
    points = []
    real = inertia.hessian_inertias

    def spy(loss_fn, params, **kwargs):
        if kwargs["method"] in (method, "lanczos+slq"):  # "auto" past the cap: lanczos+slq
            points.append((loss_fn, params))
        return real(loss_fn, params, **kwargs)

    monkeypatch.setattr(inertia, "hessian_inertias", spy)
    extra, recorded_methods = INERTIA_CASES[method]
    overrides = {"spectrum.full_spectrum_max_params": 0, "spectrum.method": method,
                 "train.replicas": 1, **extra}  # fmt: skip
    cfg = config.load(write_config(tmp_path, widths="[2]"), overrides=overrides)
    rows = store.load_results(runner.run_study(cfg, tmp_path, quiet=True)).to_pylist()
    assert len(rows) == len(points) == 2
    suffixes = [(analysis.tol_column("", t)[1:], t) for t in cfg.spectrum.zero_tols]
    suffixes += [("rel1e-3", None)]
    exact_seen = []
    for row, (loss_fn, params) in zip(rows, points, strict=True):
        # The counted point is the stored one.
        assert float(loss_fn(params)) == pytest.approx(row["loss"], rel=1e-12, abs=1e-15)
        eig = reference_eigenvalues(loss_fn, params)
        slack = 1e-10 * np.abs(eig).max()  # eigenvalues this close to a threshold: either side
        assert row["spectrum_method"] in recorded_methods and row["num_params"] == eig.size == 40
        # Certified brackets of the extremes (a Ritz value only as the inner side).
        assert row["lambda_min_hi"] >= eig[0] - slack and row["lambda_max_lo"] <= eig[-1] + slack
        assert not row["lambda_min_lo"] > eig[0] + slack
        assert not row["lambda_max_hi"] < eig[-1] - slack
        if row["spectrum_method"] != "dense":
            assert math.isnan(row["lambda_min"]) and row["ritz_min"] >= eig[0] - slack
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
    line = runner.summarize(table).splitlines()[2].split()
    # minima: 1 of 4 converged; undetermined: 1 of 4; median index of the exact 0 and 0.4.
    assert line[4:] == ["5", "0.80", "0.00", "0.25", "0.25", "0.2000"]


def _files(directory):
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["manifest.json", "config.json"])
def test_corrupt_state_of_a_finished_study_is_refused_touching_nothing(
    tiny_study, tmp_path, capsys, name
):
    import shutil

    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(tiny_study_toml())  # the config of the session's finished study
    out = tmp_path / "out"
    shutil.copytree(tiny_study, out / tiny_study.name)
    state = out / tiny_study.name / name
    state.write_bytes(state.read_bytes()[:40])  # cut mid-file: not JSON any more
    before = _files(out)
    assert sweep.main([str(cfg_path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    assert name in err and "--fresh" in err
    assert _files(out) == before


def _study(tmp_path, name, *, data="", finder="newton_mr", **overrides):
    """A one-cell tiny study (P = 40): extra [[data]] lines, ``{"table.key": value}``."""
    text = tiny_study_toml(name, "[2]", seed=3).replace('"newton_mr"', f'"{finder}"')
    text = text.replace("num_samples = 64\n", f"num_samples = 64\n{data}\n")
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return config.load(path, overrides=overrides)


def test_random_labels_study_leaves_x64_as_the_caller_set_it(tmp_path, x32):
    import jax

    from saddlestudy import data

    cfg = _study(tmp_path, "shuffled", data="random_labels = 1", finder="none")
    directory = runner.run_study(cfg, tmp_path, quiet=True)
    assert jax.config.jax_enable_x64 is False  # as the caller set it
    rows = store.load_results(directory).to_pylist()
    assert len(rows) == 2 * 2 and {r["dataset"] for r in rows} == {"digits+random_labels"}
    # Computed in float64 all the same: the stored eigenvalues are float64.
    eig = store.load_spectrum(tmp_path, "shuffled", rows[0]["row_id"])["eigenvalues"]
    assert eig.dtype == np.float64 and {r["dtype"] for r in rows} == {"float64"}
    # The cell's targets: the digits labels under the seed-1 permutation.
    labels = data.digits(pca_dim=4, num_samples=64, dtype="float64").y
    shuffled = config.load_cell_dataset(cfg.data[0], cfg.dtype).y
    np.testing.assert_array_equal(shuffled, labels[np.random.default_rng(1).permutation(64)])
    assert not np.array_equal(shuffled, labels)


def test_loss_level_starts_full_batch_and_minibatch(tmp_path, restore_x64):
    # A step snapshot after every step gives the loss trajectory row by row (finder "none":
    # a row's loss is its start's), against which each loss-level start is checked.
    steps = list(range(1, 21))
    runs = {}
    for batch_size in (0, 16):
        train = {"num_steps": 20, "record_every": 5, "batch_size": batch_size}
        train |= {"snapshot_steps": steps, "snapshot_losses": [2.0, 1e-12]}
        overrides = {f"train.{k}": v for k, v in train.items()}
        cfg = _study(tmp_path, f"levels{batch_size}", finder="none", **overrides)
        rows = store.load_results(runner.run_study(cfg, tmp_path, quiet=True)).to_pylist()
        runs[batch_size] = rows
        # Full batch checks the level after every step, minibatches every record_every
        # steps (on the full data).
        checked = steps if batch_size == 0 else steps[4::5]
        for r in range(2):
            mine = [row for row in rows if row["replica"] == r]
            loss_at = {
                row["start_step"]: row["loss"] for row in mine if row["start_kind"] == "step"
            }
            assert sorted(loss_at) == steps
            first = next(t for t in checked if loss_at[t] <= 2.0)  # reached in 20 steps
            (level,) = [row for row in mine if row["start_kind"] == "loss"]  # 1e-12: no row
            assert level["start_loss_level"] == 2.0 and level["start_step"] == first
            assert level["loss"] == pytest.approx(loss_at[first], rel=1e-12)  # same point
            assert len(mine) == len(steps) + 1 + 1  # steps, the level reached, the end
    full_end = [r["train_loss"] for r in runs[0] if r["start_kind"] == "end"]
    mini_end = [r["train_loss"] for r in runs[16] if r["start_kind"] == "end"]
    assert np.all(np.isfinite(mini_end)) and full_end != mini_end  # other steps were taken


def test_finder_none_gives_the_starts_as_critical_points(x64):
    import jax.numpy as jnp

    from saddlestudy import critical

    def loss(p):
        return jnp.sum((p["w"] - 1.0) ** 2)

    # |grad|^2 = 4 |w - 1|^2: 0 at w = 1, 4 at w = (0, 1), inf where the loss is inf.
    starts = {"w": jnp.asarray([[1.0, 1.0], [0.0, 1.0], [jnp.inf, 1.0]])}
    found = pipeline._starts_as_found(loss, starts, 1e-10)
    assert isinstance(found, critical.CriticalPoint)
    assert found.method == "none" and found.max_iters == 0
    assert found.status_name() == ["converged", "max_iters", "non_finite"]
    np.testing.assert_array_equal(found.converged, [True, False, False])
    np.testing.assert_array_equal(found.grad_norm_sq[:2], [0.0, 4.0])
    d = found.to_dict()
    assert d["params"].shape == (3, 2) and d["loss_history"].shape == (3, 1)


# A Ray head started by the test: prints its address, holds it until stdin closes.
RAY_HEAD = """
import sys, ray
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
ray.shutdown()
"""


def test_ray_address_runs_the_sweep_on_a_running_head(tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
    # A throwaway head on this machine: no token authentication (Ray >= 2.5x may default to it).
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    head = subprocess.Popen(
        [sys.executable, "-c", RAY_HEAD], env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        address = head.stdout.readline().strip()
        if not address:
            pytest.skip(f"a local Ray head could not start (exit code {head.poll()})")
        cfg_path = write_config(tmp_path, widths="[2]")
        out = tmp_path / "out"
        run = subprocess.run(
            [sys.executable, "-m", "saddlestudy.sweep", str(cfg_path), "--out", str(out)]
            + ["--quiet", "--backend", "ray", "--ray-address", address]
            + ["--set", 'finder.method="none"'],  # the least to compile in a fresh worker
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        rows = store.load_results(out, "tiny").to_pylist()
        assert len(rows) == 2 * 2 and "cell 1/1" in run.stderr
    finally:
        head.stdin.close()
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()


def test_primary_zero_tol_other_than_the_default_is_warned_once():
    import warnings

    from saddlestudy import spectrum

    pipeline._warn_once.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert pipeline.primary_zero_tol([1e-8, spectrum.DEFAULT_ZERO_TOL]) == 1e-5
        assert pipeline.primary_zero_tol([1e-8, 1e-4]) == 1e-4
        assert pipeline.primary_zero_tol([1e-8, 1e-4]) == 1e-4
    (said,) = [str(w.message) for w in caught]
    assert "zero_tol = 0.0001" in said and "lacks the default 1e-05" in said


def test_model_tables_give_each_cell_its_own_replicas_and_starts(tmp_path, restore_x64):
    # [[model]] with [model.train]: the second architecture runs 1 replica and only its end
    # point, the first 2 replicas x (snapshot + end); resuming finds every part complete.
    text = tiny_study_toml("mt", "[2]", seed=3).replace(
        '[model]\ndepth = [1]\nwidth = [2]\nactivation = ["tanh"]\n',
        "[[model]]\ndepth = [1]\nwidth = [2]\n"
        "[[model]]\ndepth = [1]\nwidth = [3]\n[model.train]\nreplicas = 1\nsnapshot_steps = []\n",
    )
    assert "[[model]]" in text
    path = tmp_path / "mt.toml"
    path.write_text(text)
    out = tmp_path / "out"
    assert sweep.main([str(path), "--out", str(out), "--quiet"]) == 0
    rows = store.load_results(out / "mt").to_pylist()
    by_width = {w: [r for r in rows if r["width"] == w] for w in (2, 3)}
    assert sorted(r["start_kind"] for r in by_width[2]) == ["end", "end", "step", "step"]
    assert [r["start_kind"] for r in by_width[3]] == ["end"] and by_width[3][0]["replica"] == 0
    before = {p: p.stat().st_mtime_ns for p in (out / "mt").rglob("*.parquet")}
    assert sweep.main([str(path), "--out", str(out), "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "mt").rglob("*.parquet")} == before


def test_float32_study_polishes_in_float64_and_records_it(tmp_path, x32, monkeypatch):
    # study.dtype = "float32" with Newton-MR: trained and found in float32, polished and
    # counted in float64 on a device that has it; without float64 (a TPU) the rows say the
    # classification is float32 at the float32 tolerance, and a float64 study is refused.
    import jax

    path = tmp_path / "f32.toml"
    path.write_text(
        tiny_study_toml("f32", "[3]", seed=3).replace("seed = 3", 'seed = 3\ndtype = "float32"')
    )
    out = tmp_path / "out"
    assert sweep.main([str(path), "--out", str(out), "--quiet"]) == 0
    assert jax.config.jax_enable_x64 is False  # the caller's setting, restored
    rows = store.load_results(out / "f32").to_pylist()
    assert {r["dtype"] for r in rows} == {"float32"}
    assert {r["finder_stages"] for r in rows} == {"float32+float64"}
    assert {r["classified_in"] for r in rows} == {"float64"} and {r["grad_tol"] for r in rows} == {
        1e-10
    }
    eig = store.load_spectrum(out, "f32", rows[0]["row_id"])["eigenvalues"]
    assert eig.dtype == np.float64
    assert all(r["iterations"] <= 20 for r in rows)  # the float64 stage's own budget

    monkeypatch.setattr(pipeline, "float64_available", lambda: False)
    assert sweep.main([str(path), "--out", str(tmp_path / "tpu"), "--quiet"]) == 0
    rows = store.load_results(tmp_path / "tpu" / "f32").to_pylist()
    assert {r["classified_in"] for r in rows} == {"float32"}
    assert {r["finder_stages"] for r in rows} == {"float32"}
    assert {r["grad_tol"] for r in rows} == {1e-6}  # float32's resolvable tolerance
    for r in rows:
        assert r["converged"] == (r["grad_norm_sq"] < 1e-6)
    f64 = tmp_path / "f64.toml"
    f64.write_text(tiny_study_toml("f64", "[3]", seed=3))
    assert sweep.main([str(f64), "--out", str(tmp_path / "tpu")]) == 2


def test_ray_tasks_without_a_gpu_run_jax_on_the_cpu_and_shares_cap_memory():
    assert runner.ray_runtime_env(0) == {"env_vars": {"JAX_PLATFORMS": "cpu"}}
    share = runner.ray_runtime_env(0.25)["env_vars"]
    assert share["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert float(share["XLA_PYTHON_CLIENT_MEM_FRACTION"]) <= 0.25
    assert runner.ray_runtime_env(1) == {}


def test_a_learning_rate_grid_compiles_once_and_finders_reuse_the_training(tmp_path, restore_x64):
    from helpers import count_compilations

    text = (
        tiny_study_toml("lrgrid", "[2]", seed=5)
        .replace(
            '[[optimizer]]\nname = "irprop-"\nlearning_rate = 0.01\n',
            "".join(
                f'[[optimizer]]\nname = "irprop-"\nlearning_rate = {lr}\n'
                for lr in (0.002, 0.005, 0.01, 0.02)
            ),
        )
        .replace('method = ["newton_mr"]', 'method = ["newton_mr", "gradnorm"]')
    )
    path = tmp_path / "lrgrid.toml"
    path.write_text(text)
    cfg = config.load(path)
    compiled_per_cell, done = [], []
    with count_compilations() as compiled:
        runner.run_study(
            cfg, tmp_path / "out", quiet=True,
            cell_done=lambda cell: (done.append(cell), compiled_per_cell.append(len(compiled))),
        )  # fmt: skip
    table = store.load_results(tmp_path / "out", "lrgrid").to_pylist()
    cells = [c.cell_id for c in done]
    assert len(cells) == 8
    # After one cell per finder method, every learning rate and finder compiles nothing.
    assert compiled_per_cell[1] == compiled_per_cell[-1], compiled_per_cell
    by_cell = {c: [r for r in table if r["cell_id"] == c] for c in cells}
    reused = [by_cell[c][0]["train_reused"] for c in cells]
    assert reused == [False, True] * 4
    # A reused training gives the rows a fresh one gives: recompute one gradnorm cell alone.
    alone, _ = pipeline.run_cell(cfg, done[3])  # its own training (no cache)
    assert comparable(alone) == comparable_rows(by_cell[cells[3]])
    assert not alone.to_pylist()[0]["train_reused"]
    # Four different learning rates really were trained.
    assert len({by_cell[c][-1]["loss"] for c in cells[::2]}) == 4
