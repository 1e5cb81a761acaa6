"""The lecture's example (seed 000): L = (1 - w1 w2)^2, built from the library's own pieces."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saddlestudy
from saddlestudy import data, losses, models

pytestmark = pytest.mark.e2e  # scripts/lecture_example.py in a subprocess

ROOT = Path(__file__).resolve().parents[1]


def lecture_loss():
    dataset = data.w1w2(dtype="float64")
    config = models.MLPConfig(1, 1, depth=1, width=1, activation="identity", use_bias=False)
    return losses.make_loss_fn(
        models.make_apply(config), jnp.asarray(dataset.x), jnp.asarray(dataset.y), loss="mse"
    )


def point(w1, w2):
    return {"layers": {0: {"kernel": jnp.full((1, 1), w1)}, 1: {"kernel": jnp.full((1, 1), w2)}}}


def test_loss_is_one_minus_w1_w2_squared(x64):
    loss = lecture_loss()
    for w1, w2 in [(0.0, 0.0), (0.3, -2.0), (1.5, 0.5)]:
        assert float(loss(point(w1, w2))) == pytest.approx((1 - w1 * w2) ** 2, rel=1e-14)


def test_origin_is_a_saddle_with_eigenvalues_minus_two_and_two(x64):
    loss = lecture_loss()
    origin = point(0.0, 0.0)
    assert float(saddlestudy.grad_norm_sq(loss, origin)) == 0.0
    H = saddlestudy.dense_hessian(loss, origin)
    np.testing.assert_allclose(H, [[0.0, -2.0], [-2.0, 0.0]], atol=1e-15)
    s = saddlestudy.hessian_spectrum(loss, origin)
    np.testing.assert_allclose(s.eigenvalues, [-2.0, 2.0], atol=1e-14)
    assert (int(s.num_negative), int(s.num_positive)) == (1, 1)
    assert float(s.index) == 0.5
    u = np.array(
        [
            s.min_eigenvector["layers"][0]["kernel"][0, 0],
            s.min_eigenvector["layers"][1]["kernel"][0, 0],
        ]
    )
    np.testing.assert_allclose(u, np.array([1.0, 1.0]) / np.sqrt(2), rtol=1e-14)


@pytest.mark.parametrize("t", [1e-3, 0.1, 0.5, 1.0])
def test_step_along_the_negative_eigenvector_lowers_the_loss(x64, t):
    loss = lecture_loss()
    origin = point(0.0, 0.0)
    u = saddlestudy.hessian_spectrum(loss, origin).min_eigenvector
    moved = jax.tree.map(lambda p, d: p + t * d, origin, u)
    # Exactly: L = (1 - t^2/2)^2; to second order L(0) + 1/2 * (-2) t^2 = 1 - t^2.
    assert float(loss(moved)) == pytest.approx((1 - t**2 / 2) ** 2, rel=1e-12)
    assert float(loss(moved)) < float(loss(origin))


@pytest.mark.parametrize("w1", [0.25, 0.5, 1.0, 3.0, -1.0, -2.0])
def test_points_on_w1_w2_equal_one_are_minima(x64, w1):
    loss = lecture_loss()
    p = point(w1, 1.0 / w1)
    assert float(loss(p)) == pytest.approx(0.0, abs=1e-28)
    assert float(saddlestudy.grad_norm_sq(loss, p)) == pytest.approx(0.0, abs=1e-28)
    s = saddlestudy.hessian_spectrum(loss, p, zero_tol=1e-10)
    assert int(s.num_negative) == 0
    # H = 2 (w2, w1)(w2, w1)^T on the curve: eigenvalues 0 (along the curve) and 2 (w1^2 + w2^2).
    np.testing.assert_allclose(s.eigenvalues, [0.0, 2 * (w1**2 + w1**-2)], atol=1e-12)


def test_lecture_script_writes_the_figure_and_summary(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lecture_example.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(out.stdout)
    np.testing.assert_allclose(summary["saddle"]["eigenvalues"], [-2.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(
        summary["saddle"]["escape_direction"], [2**-0.5, 2**-0.5], rtol=1e-12
    )
    assert summary["escape"]["loss_after"] < summary["saddle"]["loss"] == 1.0
    assert all(m["num_negative"] == 0 for m in summary["minima"].values())
    png = tmp_path / "lecture_error_surface.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000  # a real picture, not an empty canvas
    assert (tmp_path / "lecture_error_surface.pdf").read_bytes()[:5] == b"%PDF-"


def test_lecture_script_missing_config_is_a_clear_error(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "lecture_example.py"),
            "--config",
            str(tmp_path / "nope.toml"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "config file not found" in out.stderr
