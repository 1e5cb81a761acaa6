"""Offline, seed-deterministic datasets: the first stage of the saddlestudy pipeline.

Every loader returns a :class:`Dataset` of NumPy arrays and records its own arguments
(seed and dtype name included) in ``metadata["args"]`` so that results can record where
their data came from. Randomness comes only from local ``np.random.default_rng`` generators,
one named stream per purpose, never from the global NumPy random state.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from saddlestudy._checks import check_int, is_int

__all__ = [
    "DATASETS",
    "Dataset",
    "digits",
    "four_point",
    "linear_autoencoder",
    "load_dataset",
    "mnist1d",
    "random_labels",
    "teacher_student",
    "w1w2",
]

TASKS = ("regression", "classification")
SUPPORTED_DTYPES = ("float32", "float64")
TEACHER_ACTIVATIONS = ("tanh", "relu", "identity")
TEACHER_BIAS_STD = 0.1
# A standardised feature whose std is below this fraction of the largest feature std carries
# only rounding noise (e.g. PCA components beyond the data's rank); it is set to zero.
ZERO_VARIANCE_RTOL = 1e-10
DIGITS_NUM_SAMPLES = 1797
DIGITS_NUM_FEATURES = 64
DIGITS_NUM_CLASSES = 10
MNIST1D_NUM_CLASSES = 10

# Independent random streams, derived as default_rng([seed, stream]), so that changing one
# option (noise level, rotation) leaves the draws of the others unchanged.
_STREAM_INPUTS = 0
_STREAM_TEACHER = 1
_STREAM_NOISE = 2
_STREAM_ROTATION = 3
_STREAM_SUBSET = 4


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset held as NumPy arrays.

    Equality is identity (``eq=False``): element-wise array comparison has no single truth value.

    Attributes:
        name: Name of the dataset, e.g. ``"digits"``.
        x: Inputs of shape (N, d), floating point and finite.
        y: Regression targets of shape (N, k) in the dtype of ``x``, or int32 class labels of
            shape (N,) in ``[0, metadata["num_classes"])``.
        task: ``"regression"`` or ``"classification"``.
        metadata: Provenance and extras; ``"args"`` holds the loader's arguments and, for
            classification, ``"num_classes"`` is required.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    task: str
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        where = f"dataset {self.name!r}"
        if self.task not in TASKS:
            raise ValueError(f"{where}: task must be one of {TASKS}, got {self.task!r}")
        if not isinstance(self.x, np.ndarray) or not isinstance(self.y, np.ndarray):
            raise TypeError(f"{where}: x and y must be NumPy arrays")
        if not isinstance(self.metadata, dict):
            raise TypeError(f"{where}: metadata must be a dict")
        if self.x.ndim != 2:
            raise ValueError(f"{where}: x must be 2-D (N, d), got shape {self.x.shape}")
        if not np.issubdtype(self.x.dtype, np.floating):
            raise ValueError(f"{where}: x must be floating point, got {self.x.dtype}")
        if not np.all(np.isfinite(self.x)):
            raise ValueError(f"{where}: x contains NaN or inf")
        if self.y.shape[:1] != self.x.shape[:1]:
            raise ValueError(
                f"{where}: y has {self.y.shape[:1]} samples but x has {self.x.shape[0]}"
            )
        if self.task == "regression":
            if self.y.ndim != 2:
                raise ValueError(f"{where}: regression y must be 2-D (N, k), got {self.y.shape}")
            if self.y.dtype != self.x.dtype:
                raise ValueError(
                    f"{where}: regression y has dtype {self.y.dtype}, x has {self.x.dtype}"
                )
            if not np.all(np.isfinite(self.y)):
                raise ValueError(f"{where}: y contains NaN or inf")
        else:
            num_classes = self.metadata.get("num_classes")
            if not is_int(num_classes) or num_classes < 1:
                raise ValueError(
                    f"{where}: classification needs a positive int metadata['num_classes'], "
                    f"got {num_classes!r}"
                )
            if self.y.ndim != 1 or not np.issubdtype(self.y.dtype, np.integer):
                raise ValueError(
                    f"{where}: classification y must be 1-D integer labels, "
                    f"got shape {self.y.shape} and dtype {self.y.dtype}"
                )
            if self.y.size and (self.y.min() < 0 or self.y.max() >= num_classes):
                raise ValueError(f"{where}: labels must lie in [0, {num_classes})")

    @property
    def num_samples(self) -> int:
        """Number of samples N."""
        return self.x.shape[0]

    @property
    def input_dim(self) -> int:
        """Input dimension d."""
        return self.x.shape[1]

    @property
    def output_dim(self) -> int:
        """Number of regression outputs k, or the number of classes."""
        if self.task == "regression":
            return self.y.shape[1]
        return int(self.metadata["num_classes"])

    @property
    def dtype(self) -> np.dtype:
        """Floating-point dtype of the inputs."""
        return self.x.dtype


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------


def _check_real(name: str, value: Any, *, positive: bool = False) -> float:
    """Returns ``value`` as a finite float, >= 0 (or > 0 if ``positive``)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {kind}, got {value!r}")
    return value


def _resolve_dtype(dtype: Any) -> np.dtype:
    """Accepts "float32"/"float64" or the NumPy equivalents; anything else is an error."""
    try:
        resolved = None if dtype is None else np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}")
    return resolved


def _check_seed(seed: Any) -> int:
    return check_int("seed", seed, 0)


def _stream(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


# ---------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------


def w1w2(*, dtype: Any = "float32") -> Dataset:
    """The lecture's one-sample problem y = w1·w2·x with x = 1 and target 1.

    Its loss (1 − w1 w2)² has a saddle at w1 = w2 = 0 and minima on w1 w2 = 1.

    Args:
        dtype: "float32" or "float64".

    Returns:
        Regression dataset with x = [[1]], y = [[1]].
    """
    dt = _resolve_dtype(dtype)
    x = np.ones((1, 1), dtype=dt)
    return Dataset("w1w2", x, x.copy(), "regression", {"args": {"dtype": dt.name}})


def four_point(t: float = 1.0, *, dtype: Any = "float32") -> Dataset:
    """The 4-point problem of the CMU lecture "Neural Networks: Optimization Part 1".

    Inputs (1, 0), (0, 1), (−1, 0), (0, −t) with labels +1, +1, −1, +1. For a logistic unit
    trained with the L2 divergence the targets are (label + 1) / 2 ∈ {0, 1}; for large t
    backprop does not find the separator that the perceptron finds.

    Args:
        t: Distance of the fourth point from the origin; finite and > 0.
        dtype: "float32" or "float64".

    Returns:
        Regression dataset with x of shape (4, 2) and y of shape (4, 1); metadata holds the
        ±1 ``"labels"`` and ``"t"``.
    """
    t = _check_real("t", t, positive=True)
    dt = _resolve_dtype(dtype)
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -t]], dtype=dt)
    labels = np.array([1, 1, -1, 1], dtype=np.int32)
    y = ((labels + 1) / 2).astype(dt)[:, None]
    metadata = {"labels": labels, "t": t, "args": {"t": t, "dtype": dt.name}}
    return Dataset("four_point", x, y, "regression", metadata)


def linear_autoencoder(
    n: int = 16,
    num_samples: int = 10_000,
    eigenvalues: Sequence[float] | np.ndarray | None = None,
    *,
    rotate: bool = True,
    seed: int = 0,
    dtype: Any = "float32",
) -> Dataset:
    """Data for a deep linear autoencoder with an exactly prescribed covariance.

    The sample covariance (1/N) XᵀX equals Q diag(λ) Qᵀ to float rounding and the columns have
    mean zero, so the critical points of the linear autoencoder are known exactly (Baldi &
    Hornik 1989; Frye et al. 2019 use n = 16, λ = 1, …, 16, N = 10,000).

    Args:
        n: Input dimension.
        num_samples: Number of samples N; must exceed n.
        eigenvalues: n positive covariance eigenvalues (default 1, 2, …, n), in the order of
            the columns of Q.
        rotate: Rotate by a random orthogonal Q (Haar, from a sign-fixed QR); else Q = I and
            the covariance is diag(eigenvalues).
        seed: Seed of the sample and rotation streams.
        dtype: "float32" or "float64"; all computation is float64, cast at the end.

    Returns:
        Regression dataset with y = x; metadata holds ``"eigenvalues"`` (float64, sorted
        descending), ``"eigenvectors"`` (columns of Q in that order) and ``"rotate"``.
    """
    n = check_int("n", n, 1)
    num_samples = check_int("num_samples", num_samples, 1)
    if num_samples <= n:
        raise ValueError(f"num_samples must exceed n = {n}, got {num_samples}")
    seed = _check_seed(seed)
    dt = _resolve_dtype(dtype)
    if eigenvalues is None:
        lam = np.arange(1, n + 1, dtype=np.float64)
    else:
        lam = np.asarray(eigenvalues, dtype=np.float64)
        if lam.shape != (n,):
            raise ValueError(f"eigenvalues must have shape ({n},), got {lam.shape}")
        if not np.all(np.isfinite(lam)) or np.any(lam <= 0):
            raise ValueError(f"eigenvalues must be finite and > 0, got {lam}")

    z = _stream(seed, _STREAM_INPUTS).standard_normal((num_samples, n))
    z -= z.mean(axis=0)
    # Whiten with the exact inverse square root of the sample covariance, so that afterwards
    # (1/N) ZᵀZ = I up to rounding rather than only in expectation.
    s, v = np.linalg.eigh(z.T @ z / num_samples)
    z = z @ (v / np.sqrt(s)) @ v.T
    if rotate:
        q, r = np.linalg.qr(_stream(seed, _STREAM_ROTATION).standard_normal((n, n)))
        q = q * np.where(np.diag(r) < 0, -1.0, 1.0)  # sign fix makes Q Haar-distributed
    else:
        q = np.eye(n)
    x64 = (z * np.sqrt(lam)) @ q.T

    order = np.argsort(-lam, kind="stable")
    metadata = {
        "eigenvalues": lam[order],
        "eigenvectors": q[:, order],
        "rotate": bool(rotate),
        "args": {
            "n": n,
            "num_samples": num_samples,
            "eigenvalues": None if eigenvalues is None else lam.tolist(),
            "rotate": bool(rotate),
            "seed": seed,
            "dtype": dt.name,
        },
    }
    x = x64.astype(dt)
    return Dataset("linear_autoencoder", x, x.copy(), "regression", metadata)


def _activation(name: str) -> Callable[[np.ndarray], np.ndarray]:
    if name == "tanh":
        return np.tanh
    if name == "relu":
        return lambda h: np.maximum(h, 0.0)
    return lambda h: h


def teacher_student(
    num_samples: int = 512,
    input_dim: int = 8,
    output_dim: int = 1,
    teacher_widths: Sequence[int] = (16,),
    activation: str = "tanh",
    noise_std: float = 0.0,
    *,
    seed: int = 0,
    dtype: Any = "float32",
) -> Dataset:
    """Regression on the outputs of a random teacher MLP, optionally with label noise.

    Inputs are standard Gaussian; teacher weights are N(0, 1/fan_in), biases N(0, 0.1²), the
    activation follows every hidden layer and the output layer is linear. Inputs, teacher and
    noise come from separate random streams, so changing ``noise_std`` changes only y.

    Args:
        num_samples: Number of samples N.
        input_dim: Input dimension.
        output_dim: Number of outputs k.
        teacher_widths: Hidden widths of the teacher (empty: a linear teacher).
        activation: "tanh", "relu" or "identity".
        noise_std: Standard deviation of the Gaussian noise added to y; >= 0.
        seed: Seed of the three streams.
        dtype: "float32" or "float64"; computation is float64, cast at the end.

    Returns:
        Regression dataset; metadata holds ``"teacher_widths"``, ``"activation"``,
        ``"noise_std"`` and the float64 ``"teacher_params"`` as a list of (W, b).
    """
    num_samples = check_int("num_samples", num_samples, 1)
    input_dim = check_int("input_dim", input_dim, 1)
    output_dim = check_int("output_dim", output_dim, 1)
    if isinstance(teacher_widths, str) or not isinstance(teacher_widths, Sequence):
        raise ValueError(f"teacher_widths must be a sequence of ints, got {teacher_widths!r}")
    widths = tuple(check_int("teacher_widths[i]", w, 1) for w in teacher_widths)
    if activation not in TEACHER_ACTIVATIONS:
        raise ValueError(f"activation must be one of {TEACHER_ACTIVATIONS}, got {activation!r}")
    noise_std = _check_real("noise_std", noise_std)
    seed = _check_seed(seed)
    dt = _resolve_dtype(dtype)

    x64 = _stream(seed, _STREAM_INPUTS).standard_normal((num_samples, input_dim))
    teacher_rng = _stream(seed, _STREAM_TEACHER)
    sizes = (input_dim, *widths, output_dim)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        w = teacher_rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)
        b = TEACHER_BIAS_STD * teacher_rng.standard_normal(fan_out)
        params.append((w, b))
    act = _activation(activation)
    h = x64
    for w, b in params[:-1]:
        h = act(h @ w + b)
    w, b = params[-1]
    y64 = h @ w + b
    y64 = y64 + noise_std * _stream(seed, _STREAM_NOISE).standard_normal(y64.shape)

    metadata = {
        "teacher_widths": widths,
        "activation": activation,
        "noise_std": noise_std,
        "teacher_params": params,
        "args": {
            "num_samples": num_samples,
            "input_dim": input_dim,
            "output_dim": output_dim,
            "teacher_widths": list(widths),
            "activation": activation,
            "noise_std": noise_std,
            "seed": seed,
            "dtype": dt.name,
        },
    }
    return Dataset("teacher_student", x64.astype(dt), y64.astype(dt), "regression", metadata)


def _standardise(x: np.ndarray) -> np.ndarray:
    """Per-feature mean 0, std 1; features with (numerically) zero variance become 0."""
    x = x - x.mean(axis=0)
    std = x.std(axis=0)
    constant = std <= ZERO_VARIANCE_RTOL * std.max() if std.size else std == 0
    x = x / np.where(constant, 1.0, std)
    x[:, constant] = 0.0
    return x


def digits(
    pca_dim: int | None = None,
    num_samples: int | None = None,
    *,
    seed: int = 0,
    dtype: Any = "float32",
) -> Dataset:
    """scikit-learn's 8×8 handwritten digits (ships with scikit-learn; no download).

    An optional seeded subset is taken first; then optional PCA (``svd_solver="full"``, so
    deterministic) and per-feature standardisation are fitted on the returned samples, so the
    returned features have mean 0 and std 1 (features of zero variance, such as the always-blank
    pixels, are set to 0).

    Args:
        pca_dim: Number of principal components to keep, in [1, 64]; None keeps all 64 pixels.
        num_samples: Size of a seeded random subset, in [1, 1797]; None keeps all samples in
            their original order.
        seed: Seed of the subset (unused when num_samples is None).
        dtype: "float32" or "float64"; computation is float64, cast at the end.

    Returns:
        Classification dataset with 10 classes.
    """
    if pca_dim is not None:
        pca_dim = check_int("pca_dim", pca_dim, 1, DIGITS_NUM_FEATURES)
    if num_samples is not None:
        num_samples = check_int("num_samples", num_samples, 1, DIGITS_NUM_SAMPLES)
    if pca_dim is not None and num_samples is not None and pca_dim > num_samples:
        raise ValueError(f"pca_dim ({pca_dim}) cannot exceed num_samples ({num_samples})")
    seed = _check_seed(seed)
    dt = _resolve_dtype(dtype)

    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import

    raw = load_digits()
    x64 = np.asarray(raw.data, dtype=np.float64)
    y = np.asarray(raw.target, dtype=np.int32)
    if num_samples is not None:
        rng = _stream(seed, _STREAM_SUBSET)
        keep = np.sort(rng.choice(x64.shape[0], size=num_samples, replace=False))
        x64, y = x64[keep], y[keep]
    if pca_dim is not None:
        from sklearn.decomposition import PCA

        x64 = PCA(n_components=pca_dim, svd_solver="full").fit_transform(x64)
    x64 = _standardise(x64)

    metadata = {
        "num_classes": DIGITS_NUM_CLASSES,
        "args": {"pca_dim": pca_dim, "num_samples": num_samples, "seed": seed, "dtype": dt.name},
    }
    return Dataset("digits", x64.astype(dt), y, "classification", metadata)


def mnist1d(num_samples: int = 4000, *, seed: int = 0, dtype: Any = "float32") -> Dataset:
    """MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package.

    ``num_samples`` is the number of samples generated (rounded down to a multiple of 10, one
    tenth per class); the package keeps the first 80% as its training split, which is what is
    returned, so N = 0.8 · 10 · (num_samples // 10) (3200 by default).

    Args:
        num_samples: Samples to generate before the package's 80/20 train/test split; >= 10.
        seed: Seed passed to the generator.
        dtype: "float32" or "float64".

    Returns:
        Classification dataset with x of shape (N, 40) and 10 classes.
    """
    num_samples = check_int("num_samples", num_samples, MNIST1D_NUM_CLASSES)
    seed = _check_seed(seed)
    dt = _resolve_dtype(dtype)

    from mnist1d.data import get_dataset_args, make_dataset  # slow import (matplotlib)

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    # make_dataset seeds and draws from the global NumPy and Python random states; restore them
    # so that loading data never changes randomness elsewhere in the process.
    numpy_state = np.random.get_state()  # noqa: NPY002 (saving the global state on purpose)
    python_state = random.getstate()
    try:
        generated = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)  # noqa: NPY002 (restoring it on purpose)
        random.setstate(python_state)

    metadata = {
        "num_classes": MNIST1D_NUM_CLASSES,
        "train_split": args.train_split,
        "args": {"num_samples": num_samples, "seed": seed, "dtype": dt.name},
    }
    x = np.asarray(generated["x"]).astype(dt)
    y = np.asarray(generated["y"]).astype(np.int32)
    return Dataset("mnist1d", x, y, "classification", metadata)


def random_labels(dataset: Dataset, seed: int) -> Dataset:
    """The same inputs with the targets (rows of y) shuffled by a seeded permutation.

    Args:
        dataset: Any dataset (regression or classification).
        seed: Seed of the permutation.

    Returns:
        A new dataset named ``dataset.name + "+random_labels"`` sharing ``dataset.x``, with
        ``metadata["random_labels_seed"]`` set.
    """
    seed = _check_seed(seed)
    permutation = np.random.default_rng(seed).permutation(dataset.num_samples)
    metadata = {**dataset.metadata, "random_labels_seed": seed}
    return Dataset(
        f"{dataset.name}+random_labels",
        dataset.x,
        dataset.y[permutation],
        dataset.task,
        metadata,
    )


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "w1w2": w1w2,
    "four_point": four_point,
    "linear_autoencoder": linear_autoencoder,
    "teacher_student": teacher_student,
    "digits": digits,
    "mnist1d": mnist1d,
}
DATASETS: tuple[str, ...] = tuple(_LOADERS)


def load_dataset(name: str, **kwargs: Any) -> Dataset:
    """Loads a dataset by name.

    Args:
        name: One of :data:`DATASETS`.
        **kwargs: Keyword arguments of that dataset's loader.

    Returns:
        The dataset.

    Raises:
        ValueError: For an unknown name or a keyword the loader does not take.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    loader = _LOADERS[name]
    accepted = inspect.signature(loader).parameters
    for key in kwargs:
        if key not in accepted:
            raise ValueError(
                f"dataset {name!r} takes no argument {key!r}; it takes {', '.join(accepted)}"
            )
    return loader(**kwargs)
