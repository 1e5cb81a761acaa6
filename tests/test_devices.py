"""Work split over 8 (fake CPU) devices gives the numbers of one device: the finder's starts
(replica counts that do not divide the device count; ``map``, ``vmap`` and hybrid batching)
and the counts at every point. (Training over devices: tests/test_train.py.)"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import tiny_study_toml

pytestmark = pytest.mark.e2e  # 8 fake devices in subprocesses

FINDER_AND_COUNTS = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from saddlestudy import critical, data, losses, models, optim, pipeline, runner, sweep, train
    from saddlestudy._results import ravel_batched as ravel

    ds = data.load_dataset("digits", pca_dim=4, num_samples=64)
    arch = models.MLPConfig(ds.input_dim, ds.output_dim, depth=1, width=3, activation="tanh")
    x = jnp.asarray(ds.x)
    y = jax.nn.one_hot(ds.y, 10, dtype=x.dtype)
    # With an L2 term most starts converge: there the two runs are compared point by point.
    loss_fn = losses.make_loss_fn(models.make_apply(arch), x, y, loss="mse", l2=0.1)
    starts = models.init_replicas(arch, jax.random.key(0), 8, "float64")
    adam = optim.make_optimizer("adam", learning_rate=0.05)
    # As in the sweep: the starts come from training, sharded over the devices.
    starts = train.train_replicas(loss_fn, starts, adam, 100).params
    # Hutchinson probes for |H|_F (P = 55 > 1): the per-start random streams must follow the
    # start, not its place on a device.
    options = critical.FinderOptions(frobenius_exact_max=1, frobenius_probes=8)
    out = {"devices": len(jax.devices()), "finder": []}
    # (8 starts on 8 devices in lanes of 3: the vmap path on each device, the hybrid path on
    # one device.)
    for R, batching in ((3, "map"), (8, 3)):
        group = jax.tree.map(lambda a: a[:R], starts)
        runs = [
            jax.device_get(critical.find_critical_points(
                loss_fn, group, max_iters=50, batching=batching, options=options,
                devices=devices,
            ))
            for devices in (None, jax.devices()[:1])
        ]
        out["finder"].append({
            "starts": R, "batching": batching,
            **{f"{k}_{name}": np.asarray(getattr(cp, k)).tolist()
               for name, cp in zip(("all", "one"), runs)
               for k in ("converged", "status", "loss", "grad_norm_sq", "hessian_fro_norm")},
            "params_diff": np.max(np.abs(
                ravel(runs[0].params, 1) - ravel(runs[1].params, 1)), axis=1).tolist(),
        })
    import dataclasses
    import types

    from saddlestudy import config

    study = config.load("default")
    spec = dataclasses.replace(study.spectrum, zero_tols=(1e-5,), relative_tols=(1e-3,),
                               failure_prob=1e-3, max_matvecs=200, num_matvecs=50)
    cfg = dataclasses.replace(study, seed=0, spectrum=spec)
    cell = types.SimpleNamespace(spectrum_method="dense", cell_id="x")  # what counting reads
    keep = np.array([0, 2, 3, 4, 5, 7])
    every = pipeline._point_inertias(cfg, cell, loss_fn, starts, keep)
    one = pipeline._point_inertias(cfg, cell, loss_fn, starts, keep, devices=jax.devices()[:1])
    out["counts_all"] = {f"{i}/{k}": repr(every[i][0][k].to_dict()) for i in every for k in (0, 1)}
    out["counts_one"] = {f"{i}/{k}": repr(one[i][0][k].to_dict()) for i in one for k in (0, 1)}
    print(json.dumps(out, default=str))
    """
)


def run(script, *args, devices=8):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def eight():
    return run(FINDER_AND_COUNTS)


def test_finder_split_over_eight_devices_finds_the_points_of_one(eight):
    assert eight["devices"] == 8
    assert [(r["starts"], r["batching"]) for r in eight["finder"]] == [(3, "map"), (8, 3)]
    for r in eight["finder"]:
        converged = np.asarray(r["converged_one"])
        assert converged.sum() >= 2, r
        assert r["converged_all"] == r["converged_one"] and r["status_all"] == r["status_one"]
        # Converged points agree (a group of 1 or 2 starts on each device vs all R in one
        # program round differently): a point with |g|^2 < 1e-10 is fixed only to about
        # |g| / |lambda| ~ 1e-5 / 0.1 along its flattest direction. (Unconverged ones may
        # drift further apart.)
        assert np.all(np.asarray(r["params_diff"])[converged] < 1e-4), r
        np.testing.assert_allclose(r["loss_all"], r["loss_one"], rtol=1e-9)
        # Same random probes per start: equal up to rounding, not the ~1/sqrt(8) of others.
        np.testing.assert_allclose(r["hessian_fro_norm_all"], r["hessian_fro_norm_one"], rtol=1e-6)


def test_counts_on_eight_devices_equal_one_device_bitwise(eight):
    assert eight["counts_all"] == eight["counts_one"]
    assert len(eight["counts_all"]) == 12


STUDY = textwrap.dedent(
    """
    import json, sys
    import jax
    from saddlestudy import config, runner, store

    path, out = sys.argv[1], sys.argv[2]
    rows = {}
    for batching in ("map", "vmap"):
        cfg = config.load(path, overrides={"finder.batching": batching})
        runner.run_study(cfg, f"{out}/{batching}", quiet=True)
        rows[batching] = store.load_results(f"{out}/{batching}", "devices").to_pylist()
    print(json.dumps({"devices": len(jax.devices()), "rows": rows}, default=str))
    """
)


@pytest.mark.slow  # ~8 minutes on 2 cores: every program compiles for 8 devices
def test_a_study_on_eight_devices_with_3_and_8_replicas(tmp_path):
    model = '[model]\ndepth = [1]\nwidth = [2]\nactivation = ["tanh"]\n'
    text = tiny_study_toml("devices", "[2]", seed=7).replace("replicas = 2", "replicas = 3")
    text = text.replace(
        model,
        "[[model]]" + model.removeprefix("[model]") + "[[model]]\ndepth = [1]\nwidth = [3]\n"
        'activation = ["tanh"]\n[model.train]\nreplicas = 8\n',
    )
    (tmp_path / "devices.toml").write_text(text)
    one = run(STUDY, tmp_path / "devices.toml", tmp_path / "one", devices=1)
    eight = run(STUDY, tmp_path / "devices.toml", tmp_path / "eight", devices=8)
    for batching in ("map", "vmap"):
        a = sorted(one["rows"][batching], key=lambda r: r["row_id"])
        b = sorted(eight["rows"][batching], key=lambda r: r["row_id"])
        assert [r["row_id"] for r in a] == [r["row_id"] for r in b] and len(a) == 2 * 3 + 2 * 8
        assert {r["replica"] for r in b} == set(range(8))
        assert all(r["device_count"] == 8 and r["counts_exact"] for r in b)
        # Training sharded over devices agrees to rounding; the finder, from points a rounding
        # apart, can then end elsewhere where it has not converged (these starts are 20
        # iterations from a critical point); where both converged the counts agree.
        np.testing.assert_allclose(
            [r["train_loss"] for r in b], [r["train_loss"] for r in a], rtol=1e-12
        )
        both = [(r, s) for r, s in zip(a, b, strict=True) if r["converged"] and s["converged"]]
        for r, s in both:
            assert r["num_negative@1e-5"] == s["num_negative@1e-5"]
