"""Tests for saddlestudy.data: known answers, exact covariances, determinism, every error path."""

import json
import random

import numpy as np
import pytest

from saddlestudy import data

DTYPES = ["float32", "float64"]

# Small, fast settings for each loader; every loader accepts dtype and these kwargs.
SMALL = {
    "w1w2": {},
    "four_point": {"t": 2.0},
    "linear_autoencoder": {"n": 4, "num_samples": 50},
    "teacher_student": {"num_samples": 32, "input_dim": 3},
    "digits": {"num_samples": 100, "pca_dim": 5},
    "mnist1d": {"num_samples": 50},
}
SEEDED = ["linear_autoencoder", "teacher_student", "digits", "mnist1d"]


def _eps(dtype):
    return np.finfo(np.dtype(dtype)).eps


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def test_dataset_properties():
    x = np.zeros((5, 3), np.float32)
    reg = data.Dataset("r", x, np.zeros((5, 2), np.float32), "regression")
    assert (reg.num_samples, reg.input_dim, reg.output_dim, reg.dtype) == (5, 3, 2, np.float32)
    assert reg.metadata == {}
    cls = data.Dataset(
        "c", x, np.array([0, 1, 2, 3, 0], np.int32), "classification", {"num_classes": 4}
    )
    assert (cls.num_samples, cls.input_dim, cls.output_dim) == (5, 3, 4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_dataset_rejects_non_finite_x(bad):
    x = np.ones((3, 2))
    x[1, 0] = bad
    with pytest.raises(ValueError, match="'broken'.*NaN or inf"):
        data.Dataset("broken", x, np.ones((3, 1)), "regression")


@pytest.mark.parametrize(
    ("x", "y", "task", "metadata", "match"),
    [
        (np.ones(3), np.ones((3, 1)), "regression", {}, "2-D"),
        (np.ones((3, 2)), np.ones((4, 1)), "regression", {}, "samples"),
        (np.ones((3, 2)), np.ones((3, 1)), "ranking", {}, "task"),
        (np.ones((3, 2)), np.ones(3), "regression", {}, "2-D"),
        (np.ones((3, 2)), np.ones((3, 1), np.float32), "regression", {}, "dtype"),
        (np.ones((3, 2), np.int32), np.ones((3, 1), np.int32), "regression", {}, "floating"),
        (np.ones((3, 2)), np.zeros(3, np.int32), "classification", {}, "num_classes"),
        (np.ones((3, 2)), np.array([0, 1, 2]), "classification", {"num_classes": 2}, "labels"),
        (np.ones((3, 2)), np.array([0, -1, 1]), "classification", {"num_classes": 2}, "labels"),
        (np.ones((3, 2)), np.zeros(3), "classification", {"num_classes": 2}, "integer"),
    ],
)
def test_dataset_validation(x, y, task, metadata, match):
    with pytest.raises(ValueError, match=match):
        data.Dataset("bad", x, y, task, metadata)


def test_dataset_is_frozen():
    ds = data.w1w2()
    with pytest.raises(AttributeError):
        ds.x = np.zeros((1, 1))


# --------------------------------------------------------------------------------------------
# dtype, seed and provenance, for every loader
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", data.DATASETS)
@pytest.mark.parametrize("dtype", DTYPES + [np.float32, np.dtype("float64")])
def test_dtype_accepted(name, dtype):
    ds = data.load_dataset(name, dtype=dtype, **SMALL[name])
    assert ds.dtype == np.dtype(dtype)
    assert ds.name == name
    if ds.task == "regression":
        assert ds.y.dtype == np.dtype(dtype)
        assert ds.y.ndim == 2
    else:
        assert ds.y.dtype == np.int32
        assert ds.metadata["num_classes"] == 10


@pytest.mark.parametrize("name", data.DATASETS)
@pytest.mark.parametrize("dtype", ["float16", "int32", np.int64, "bogus", None, "bfloat16"])
def test_bad_dtype_raises(name, dtype):
    with pytest.raises(ValueError, match="dtype"):
        data.load_dataset(name, dtype=dtype, **SMALL[name])


@pytest.mark.parametrize("name", data.DATASETS)
def test_args_recorded_and_json_serialisable(name):
    ds = data.load_dataset(name, dtype="float64", **SMALL[name])
    args = ds.metadata["args"]
    assert args["dtype"] == "float64"
    for key, value in SMALL[name].items():
        assert args[key] == value
    if name in SEEDED:
        assert args["seed"] == 0
    json.dumps(args)


@pytest.mark.parametrize("name", SEEDED)
def test_seed_determinism(name):
    a = data.load_dataset(name, seed=3, **SMALL[name])
    b = data.load_dataset(name, seed=3, **SMALL[name])
    c = data.load_dataset(name, seed=4, **SMALL[name])
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)


@pytest.mark.parametrize("name", SEEDED)
@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_bad_seed_raises(name, seed):
    with pytest.raises(ValueError, match="seed"):
        data.load_dataset(name, seed=seed, **SMALL[name])


@pytest.mark.parametrize("name", ["linear_autoencoder", "teacher_student", "digits"])
def test_float32_is_float64_cast(name):
    # Computation is float64 and cast at the end, so the two dtypes agree to the last bit.
    x64 = data.load_dataset(name, dtype="float64", **SMALL[name])
    x32 = data.load_dataset(name, dtype="float32", **SMALL[name])
    np.testing.assert_array_equal(x32.x, x64.x.astype(np.float32))


# --------------------------------------------------------------------------------------------
# The lecture problems
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_w1w2(dtype):
    ds = data.w1w2(dtype=dtype)
    np.testing.assert_array_equal(ds.x, np.array([[1.0]], dtype))
    np.testing.assert_array_equal(ds.y, np.array([[1.0]], dtype))
    assert ds.task == "regression"
    assert (ds.num_samples, ds.input_dim, ds.output_dim) == (1, 1, 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_four_point_t2(dtype):
    ds = data.four_point(2.0, dtype=dtype)
    np.testing.assert_array_equal(ds.x, np.array([[1, 0], [0, 1], [-1, 0], [0, -2]], dtype))
    np.testing.assert_array_equal(ds.y, np.array([[1], [1], [0], [1]], dtype))
    np.testing.assert_array_equal(ds.metadata["labels"], [1, 1, -1, 1])
    assert ds.metadata["t"] == 2.0
    assert ds.task == "regression"
    assert (ds.input_dim, ds.output_dim) == (2, 1)


def test_four_point_default_t():
    np.testing.assert_array_equal(data.four_point().x[3], [0.0, -1.0])


@pytest.mark.parametrize("t", [0.0, -1.0, np.nan, np.inf, "2", None])
def test_four_point_bad_t(t):
    with pytest.raises(ValueError, match="t must"):
        data.four_point(t)


# --------------------------------------------------------------------------------------------
# Linear autoencoder
# --------------------------------------------------------------------------------------------


def test_linear_autoencoder_default_is_frye_setting():
    ds = data.linear_autoencoder()
    assert ds.x.shape == (10_000, 16)
    assert ds.dtype == np.float32
    np.testing.assert_array_equal(ds.y, ds.x)
    np.testing.assert_array_equal(ds.metadata["eigenvalues"], np.arange(16, 0, -1))
    assert ds.metadata["eigenvalues"].dtype == np.float64
    assert ds.metadata["rotate"] is True


@pytest.mark.parametrize("rotate", [True, False])
def test_linear_autoencoder_exact_covariance(rotate):
    eigenvalues = [3.0, 0.5, 7.0, 1.0, 2.0]
    ds = data.linear_autoencoder(5, 200, eigenvalues, rotate=rotate, seed=1, dtype="float64")
    x = ds.x
    cov = x.T @ x / x.shape[0]
    lam, q = ds.metadata["eigenvalues"], ds.metadata["eigenvectors"]
    np.testing.assert_array_equal(lam, [7.0, 3.0, 2.0, 1.0, 0.5])
    # float64 whitening and rotation: a few hundred ulps of the largest eigenvalue at most.
    expected = (q * lam) @ q.T
    np.testing.assert_allclose(cov, expected, rtol=0, atol=1e-10 * lam.max())
    np.testing.assert_allclose(x.mean(axis=0), 0.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.eigvalsh(cov)[::-1], lam, rtol=1e-10)
    # Eigenvectors are orthonormal and match their eigenvalues: cov q_i = lambda_i q_i.
    np.testing.assert_allclose(q.T @ q, np.eye(5), rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov @ q, q * lam, rtol=0, atol=1e-10 * lam.max())
    if not rotate:
        # Q = I: covariance is diag(eigenvalues) in the given order.
        np.testing.assert_allclose(cov, np.diag(eigenvalues), rtol=0, atol=1e-10 * lam.max())
        np.testing.assert_array_equal(np.abs(q), np.eye(5)[:, [2, 0, 4, 3, 1]])
    else:
        assert np.abs(cov - np.diag(np.diag(cov))).max() > 0.1  # really rotated


def test_linear_autoencoder_default_spectrum_float64():
    ds = data.linear_autoencoder(dtype="float64")
    cov = ds.x.T @ ds.x / ds.num_samples
    np.testing.assert_allclose(np.linalg.eigvalsh(cov), np.arange(1, 17), rtol=1e-10)


def test_linear_autoencoder_float32_covariance():
    # After the float32 cast the covariance is exact to float32 rounding only.
    ds = data.linear_autoencoder(dtype="float32")
    x = ds.x.astype(np.float64)
    cov = x.T @ x / x.shape[0]
    lam, q = ds.metadata["eigenvalues"], ds.metadata["eigenvectors"]
    np.testing.assert_allclose(cov, (q * lam) @ q.T, rtol=0, atol=100 * _eps("float32") * 16)


def test_linear_autoencoder_rotation_does_not_change_samples_stream():
    # Same seed: the rotated data is the unrotated data times a fixed orthogonal matrix.
    a = data.linear_autoencoder(4, 50, rotate=False, seed=2, dtype="float64")
    b = data.linear_autoencoder(4, 50, rotate=True, seed=2, dtype="float64")
    q = b.metadata["eigenvectors"][:, ::-1]  # back to the order of eigenvalues 1, 2, 3, 4
    np.testing.assert_allclose(a.x @ q.T, b.x, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 4, "num_samples": 4}, "num_samples"),
        ({"n": 4, "num_samples": 3}, "num_samples"),
        ({"n": 0}, "n must"),
        ({"n": 3, "eigenvalues": [1.0, -2.0, 3.0]}, "eigenvalues"),
        ({"n": 3, "eigenvalues": [1.0, 0.0, 3.0]}, "eigenvalues"),
        ({"n": 3, "eigenvalues": [1.0, np.nan, 3.0]}, "eigenvalues"),
        ({"n": 3, "eigenvalues": [1.0, np.inf, 3.0]}, "eigenvalues"),
        ({"n": 3, "eigenvalues": [1.0, 2.0]}, "eigenvalues"),
    ],
)
def test_linear_autoencoder_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.linear_autoencoder(**kwargs)


# --------------------------------------------------------------------------------------------
# Teacher-student
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["tanh", "relu", "identity"])
@pytest.mark.parametrize("widths", [(), (6,), (5, 4)])
def test_teacher_student_matches_teacher(activation, widths):
    ds = data.teacher_student(64, 3, 2, widths, activation, dtype="float64")
    assert ds.x.shape == (64, 3) and ds.y.shape == (64, 2)
    assert ds.metadata["teacher_widths"] == widths
    assert ds.metadata["activation"] == activation
    act = {"tanh": np.tanh, "relu": lambda h: np.maximum(h, 0), "identity": lambda h: h}
    params = ds.metadata["teacher_params"]
    assert [w.shape for w, _ in params] == list(zip((3, *widths), (*widths, 2), strict=True))
    h = ds.x
    for w, b in params[:-1]:
        h = act[activation](h @ w + b)
    np.testing.assert_allclose(ds.y, h @ params[-1][0] + params[-1][1], rtol=1e-12, atol=1e-12)
    assert np.std(ds.y) > 0.1  # a non-degenerate teacher


def test_teacher_student_init_scales():
    ds = data.teacher_student(input_dim=400, teacher_widths=(300,), dtype="float64")
    (w1, b1), (w2, _) = ds.metadata["teacher_params"]
    # Sample std of 120,000 / 300 / 300 draws: within 10% of 1/sqrt(fan_in) and 0.1 (> 5 sigma).
    np.testing.assert_allclose(w1.std(), 1 / np.sqrt(400), rtol=0.1)
    np.testing.assert_allclose(w2.std(), 1 / np.sqrt(300), rtol=0.1)
    np.testing.assert_allclose(b1.std(), 0.1, rtol=0.1)


def test_teacher_student_noise_changes_only_y():
    clean = data.teacher_student(4096, noise_std=0.0, dtype="float64")
    noisy = data.teacher_student(4096, noise_std=0.5, dtype="float64")
    np.testing.assert_array_equal(clean.x, noisy.x)
    for (w_c, b_c), (w_n, b_n) in zip(
        clean.metadata["teacher_params"], noisy.metadata["teacher_params"], strict=True
    ):
        np.testing.assert_array_equal(w_c, w_n)
        np.testing.assert_array_equal(b_c, b_n)
    noise = noisy.y - clean.y
    # std error of a sample std from 4096 draws is 0.5/sqrt(8192) = 1.1%; allow 5%.
    np.testing.assert_allclose(noise.std(), 0.5, rtol=0.05)
    assert noisy.metadata["noise_std"] == 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"activation": "gelu"}, "activation"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"noise_std": np.nan}, "noise_std"),
        ({"teacher_widths": (4, 0)}, "teacher_widths"),
        ({"teacher_widths": 4}, "teacher_widths"),
        ({"num_samples": 0}, "num_samples"),
        ({"input_dim": 0}, "input_dim"),
        ({"output_dim": 0}, "output_dim"),
    ],
)
def test_teacher_student_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.teacher_student(**kwargs)


# --------------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------------


def test_digits_full_standardised():
    ds = data.digits(dtype="float64")
    assert ds.x.shape == (1797, 64) and ds.y.shape == (1797,)
    assert ds.task == "classification" and ds.output_dim == 10
    np.testing.assert_array_equal(np.unique(ds.y), np.arange(10))
    std = ds.x.std(axis=0)
    constant = std == 0
    assert constant.sum() == 3  # three pixels are blank in every image
    np.testing.assert_array_equal(ds.x[:, constant], 0.0)
    # float64 standardisation of 1797 samples: mean and std exact to ~1e-15; allow 1e-10.
    np.testing.assert_allclose(ds.x.mean(axis=0), 0.0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(std[~constant], 1.0, rtol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_digits_pca(dtype):
    ds = data.digits(pca_dim=10, dtype=dtype)
    assert ds.x.shape == (1797, 10) and ds.dtype == np.dtype(dtype)
    x = ds.x.astype(np.float64)
    tol = 1e3 * _eps(dtype)  # rounding of the cast, accumulated over 1797 samples
    np.testing.assert_allclose(x.mean(axis=0), 0.0, rtol=0, atol=tol)
    np.testing.assert_allclose(x.std(axis=0), 1.0, rtol=tol)
    # Principal component scores are uncorrelated: the correlation matrix is the identity.
    np.testing.assert_allclose(x.T @ x / len(x), np.eye(10), rtol=0, atol=tol)


def test_digits_pca_beyond_rank_gives_zero_features():
    # The pixel data has rank 61 (3 blank pixels): components 62-64 are rounding noise.
    ds = data.digits(pca_dim=64, dtype="float64")
    std = ds.x.std(axis=0)
    np.testing.assert_array_equal(std[61:], 0.0)
    np.testing.assert_allclose(std[:61], 1.0, rtol=1e-10)


def test_digits_subset():
    full = data.digits(dtype="float64")
    sub = data.digits(num_samples=300, seed=5, dtype="float64")
    assert sub.x.shape == (300, 64) and sub.y.shape == (300,)
    np.testing.assert_allclose(sub.x.mean(axis=0), 0.0, rtol=0, atol=1e-10)
    assert np.isin(sub.y, full.y).all()
    assert len(np.unique(sub.y)) == 10  # 300 random draws cover all 10 classes
    other = data.digits(num_samples=300, seed=6, dtype="float64")
    assert not np.array_equal(sub.y, other.y)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pca_dim": 0}, "pca_dim"),
        ({"pca_dim": 65}, "pca_dim"),
        ({"pca_dim": 2.0}, "pca_dim"),
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 1798}, "num_samples"),
        ({"pca_dim": 20, "num_samples": 10}, "pca_dim"),
    ],
)
def test_digits_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.digits(**kwargs)


# --------------------------------------------------------------------------------------------
# MNIST-1D
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_mnist1d_shape_and_classes(dtype):
    ds = data.mnist1d(200, dtype=dtype)
    # 200 generated samples, the package's 80% training split is returned.
    assert ds.x.shape == (160, 40) and ds.y.shape == (160,)
    assert ds.dtype == np.dtype(dtype) and ds.y.dtype == np.int32
    assert ds.task == "classification" and ds.output_dim == 10
    np.testing.assert_array_equal(np.unique(ds.y), np.arange(10))


def test_mnist1d_restores_global_random_state():
    # The package seeds the global NumPy and Python states; the loader must leave both as found.
    numpy_before = np.random.get_state()  # noqa: NPY002 (inspecting the global state on purpose)
    python_before = random.getstate()
    data.mnist1d(20, seed=1)
    numpy_after = np.random.get_state()  # noqa: NPY002
    assert numpy_after[0] == numpy_before[0]
    np.testing.assert_array_equal(numpy_after[1], numpy_before[1])
    assert numpy_after[2:] == numpy_before[2:]
    assert random.getstate() == python_before


def test_mnist1d_too_few_samples():
    with pytest.raises(ValueError, match="num_samples"):
        data.mnist1d(9)


# --------------------------------------------------------------------------------------------
# Random labels
# --------------------------------------------------------------------------------------------


def test_random_labels_classification():
    ds = data.digits(num_samples=200)
    shuffled = data.random_labels(ds, seed=7)
    assert shuffled.x is ds.x
    assert shuffled.name == "digits+random_labels"
    assert shuffled.task == "classification" and shuffled.output_dim == 10
    assert shuffled.metadata["random_labels_seed"] == 7
    assert shuffled.metadata["args"] == ds.metadata["args"]
    assert "random_labels_seed" not in ds.metadata  # the original is untouched
    np.testing.assert_array_equal(np.sort(shuffled.y), np.sort(ds.y))
    assert np.mean(shuffled.y != ds.y) > 0.5  # most labels moved (about 90% expected)
    np.testing.assert_array_equal(data.random_labels(ds, 7).y, shuffled.y)
    assert not np.array_equal(data.random_labels(ds, 8).y, shuffled.y)


def test_random_labels_regression_permutes_rows():
    ds = data.teacher_student(50, output_dim=2, dtype="float64")
    shuffled = data.random_labels(ds, seed=0)
    assert shuffled.x is ds.x and shuffled.y.shape == (50, 2)
    # Same multiset of rows: each shuffled row is some original row, and the sums agree.
    order = np.lexsort(ds.y.T)
    order_shuffled = np.lexsort(shuffled.y.T)
    np.testing.assert_array_equal(shuffled.y[order_shuffled], ds.y[order])
    assert not np.array_equal(shuffled.y, ds.y)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def test_registry_names():
    assert data.DATASETS == (
        "w1w2",
        "four_point",
        "linear_autoencoder",
        "teacher_student",
        "digits",
        "mnist1d",
    )


@pytest.mark.parametrize("name", ["linear_autoencoder", "teacher_student", "four_point"])
def test_load_dataset_matches_loader(name):
    via_registry = data.load_dataset(name, **SMALL[name])
    direct = getattr(data, name)(**SMALL[name])
    np.testing.assert_array_equal(via_registry.x, direct.x)
    np.testing.assert_array_equal(via_registry.y, direct.y)


def test_load_dataset_unknown_name():
    with pytest.raises(ValueError, match="'cifar10'.*w1w2.*mnist1d"):
        data.load_dataset("cifar10")


def test_load_dataset_unknown_kwarg():
    with pytest.raises(ValueError, match="'digits'.*'pca_dims'"):
        data.load_dataset("digits", pca_dims=5)
