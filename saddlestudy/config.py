"""Study configs: a TOML schema, strict validation, expansion into cells, and hashing.

A study is a grid. Its TOML file has these tables (every key optional unless marked):

```toml
[study]
name = "default"            # required; results go to OUT/<name>/
description = ""
seed = 0                    # one seed; replicas, cells and streams derive from it
dtype = "float64"           # "float64" (critical points need it) or "float32"

[[data]]                    # one table per dataset; any keyword of data.load_dataset
name = "digits"             # required
pca_dim = 8
# random_labels = 0         # optional: the targets shuffled by data.random_labels(ds, seed)

[model]                     # each key a value or a list of values (grid axes)
depth = [1]
width = [8]                 # an int per hidden layer, or a list per layer: [[8, 4]]; a grid
                            # axis as a list of values, e.g. [2, 4, 8]
activation = ["tanh"]
use_bias = true
loss = "auto"               # "auto" (cross-entropy to classify, mse to regress) or a loss
                            # name; squared errors on class labels use one-hot targets
l2 = 0.0
# [[model]] (an array of grids) lets each grid set its own [model.train] keys (e.g. fewer
# replicas) and [model.finder] max_iters / grad_tol / batching (e.g. a larger budget)

[[optimizer]]               # one table per optimizer: name + make_optimizer hyperparameters
name = "irprop-"
learning_rate = 0.01

[train]
num_steps = 1000
record_every = 50
replicas = 8
batch_size = 0              # 0 = full batch
snapshot_steps = []         # starts for the finder besides the end point, e.g. [100]
snapshot_losses = []

[finder]
method = ["newton_mr"]      # a value or a list (grid axis); "none": spectra at the starts
grad_tol = 1e-10
max_iters = 100
batching = "auto"           # "map": starts one by one (each stops when done), "vmap": in
                            # lockstep, k (an int): groups of k in lockstep one after another;
                            # "auto": map on a CPU, vmap on an accelerator. Several devices:
                            # the starts are split over them, each running its own loops

[spectrum]                  # the Hessian at every point (docs/science.md §1, §6)
full_spectrum_max_params = 2000  # up to this P: all P eigenvalues (eigh), stored; exact counts
method = "auto"             # above it, the counts of saddlestudy.inertia.hessian_inertia:
                            # "auto" (exact "dense" LDL^T while two P x P matrices fit half the
                            # memory, else "lanczos", adding "slq" where Lanczos is not exact),
                            # "dense", "lanczos" or "slq"
dense_max_params = 0        # a cap: no dense Hessian above this P, "auto" counts matrix-free
                            # (0: no cap but memory); `--dry-run` shows each cell's method
zero_tols = [1e-8, 1e-6, 1e-5, 1e-4]  # counts below -tau, |.| <= tau, above tau at each tau
relative_tols = [1e-3]      # and at each tau = c * lambda_max (what matrix-free methods resolve)
num_matvecs = 64            # SLQ: Krylov depth per probe (capped at P)
max_matvecs = 3000          # Lanczos: the most Hessian-vector products per point
failure_prob = 1e-3         # matrix-free: the chance that an upper bound on a count fails

[figures]                   # how python -m saddlestudy.figures draws it (not hashed: editing
cutoffs = [1e-10, 1e-6]     # it keeps the results); |grad L|^2 cutoffs of the panels
draw = ["index_vs_loss", "index_vs_loss_cutoffs", "scaling", "minimum_ratio",
        "spectral_density"]  # which figures (config.FIGURES); a census adds "census",
                            # "census_strict", "point_classes" and "matched_loss"
reference = "none"          # "linear_autoencoder": the exact critical points drawn behind

[quick.train]               # optional: the reduced study of `sweep --quick`, e.g.
replicas = 2                # (replaces train.replicas; [[quick.data]] replaces [[data]])
```

``--set table.key=VALUE`` on the sweep's command line overrides any key (VALUE in TOML).
Errors name the key (``model.width: ...``) in one line, before anything is computed.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saddlestudy import data, inertia, losses, memory, models, optim, rows, spectrum
from saddlestudy._checks import is_int
from saddlestudy.study import Cell, CountSettings, ModelGrid, Study

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
DEFAULT_STUDY = "default"
# "none": no finder; the spectrum is taken at the starts themselves (where training stopped).
FINDER_METHODS = ("newton_mr", "gradnorm", "damped_newton", "saddle_free_newton", "none")
# [spectrum] method: how counts are taken above full_spectrum_max_params (hessian_inertia).
SPECTRUM_METHODS = inertia.INERTIA_METHODS
# What counts a cell's eigenvalues (its ``spectrum_method`` in --dry-run): "eigh" (all P
# eigenvalues, stored) or a hessian_inertia method; "lanczos+slq" is "auto" past memory or the
# cap: Lanczos, then SLQ at the thresholds where Lanczos is not exact.
CELL_SPECTRUM_METHODS = ("eigh", "dense", "lanczos", "slq", "lanczos+slq")
FINDER_BATCHING = ("auto", "map", "vmap")
# |grad L|^2 cutoffs of the strict / loose index-vs-loss panels ([figures] cutoffs).
DEFAULT_FIGURE_CUTOFFS = [1e-10, 1e-6]
# The figures a study can ask for ([figures] draw), and those it gets unless it says.
FIGURES = (
    "index_vs_loss",
    "index_vs_loss_cutoffs",
    "scaling",
    "minimum_ratio",
    "spectral_density",
    "census",
    "census_strict",
    "point_classes",
    "matched_loss",
)
DEFAULT_FIGURES = FIGURES[:5]
# [figures] reference: exact critical points drawn behind the index-vs-loss panels.
FIGURE_REFERENCES = ("none", "linear_autoencoder")

_DEFAULTS: dict[str, dict[str, Any]] = {
    "study": {"name": None, "description": "", "seed": 0, "dtype": "float64"},
    "model": {
        "depth": [1],
        "width": [8],
        "activation": ["tanh"],
        "use_bias": True,
        "loss": "auto",
        "l2": 0.0,
    },
    "train": {
        "num_steps": 1000,
        "record_every": 50,
        "replicas": 8,
        "batch_size": 0,
        "snapshot_steps": [],
        "snapshot_losses": [],
    },
    "finder": {"method": ["newton_mr"], "grad_tol": 1e-10, "max_iters": 100, "batching": "auto"},
    "spectrum": {
        "full_spectrum_max_params": spectrum.DENSE_EIGH_MAX_PARAMS,
        "method": "auto",
        "dense_max_params": 0,
        "zero_tols": [1e-8, 1e-6, 1e-5, 1e-4],
        "relative_tols": [1e-3],
        "num_matvecs": 64,
        "max_matvecs": 3000,
        "failure_prob": 1e-3,
    },
    # How the study is drawn (python -m saddlestudy.figures); not part of the config hash.
    "figures": {
        "cutoffs": DEFAULT_FIGURE_CUTOFFS,
        "draw": list(DEFAULT_FIGURES),
        "reference": "none",
    },
}
# Tables that change how results are shown, never the results: left out of config_hash, so
# that editing them does not orphan a finished study's results on disk.
_PRESENTATION_TABLES = ("figures",)
_MODEL_GRID_KEYS = ("depth", "width", "activation")
# What a [model.finder] table may set for its cells (the method is a grid axis of [finder]).
_MODEL_FINDER_KEYS = ("grad_tol", "max_iters", "batching")
_TABLES = {"study", "data", "model", "optimizer", "train", "finder", "spectrum", "figures"}


class ConfigError(ValueError):
    """A bad study config; the message names the key."""


def _fail(key: str, message: str):
    raise ConfigError(f"{key}: {message}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_list(key: str, value) -> list:
    out = value if isinstance(value, list) else [value]
    if not out:
        _fail(key, "needs at least one value")
    return out


def _check_widths(key: str, widths: list, depths: list) -> None:
    for w in widths:
        if is_int(w):
            if w < 1:
                _fail(key, f"widths must be >= 1, got {w}")
        elif isinstance(w, list) and all(is_int(v) and v >= 1 for v in w):
            if not any(len(w) == d for d in depths):
                _fail(key, f"per-layer widths {w} match no depth in model.depth {depths}")
        else:
            _fail(key, f"expected an int or a list of ints per layer, got {w!r}")


def _check_train(key: str, train_cfg: dict) -> None:
    for name in ("num_steps", "record_every", "replicas"):
        if not is_int(train_cfg[name]) or train_cfg[name] < 1:
            _fail(f"{key}.{name}", f"must be an int >= 1, got {train_cfg[name]!r}")
    if train_cfg["num_steps"] % train_cfg["record_every"]:
        _fail(f"{key}.record_every", f"must divide num_steps ({train_cfg['num_steps']})")
    if not is_int(train_cfg["batch_size"]) or train_cfg["batch_size"] < 0:
        _fail(
            f"{key}.batch_size",
            f"must be an int >= 0 (0 = full batch), got {train_cfg['batch_size']!r}",
        )
    steps = train_cfg["snapshot_steps"]
    if not isinstance(steps, list):
        _fail(f"{key}.snapshot_steps", f"must be a list of steps, got {steps!r}")
    for s in steps:
        if not is_int(s) or not 0 <= s <= train_cfg["num_steps"]:
            _fail(f"{key}.snapshot_steps", f"steps must be ints in [0, num_steps], got {s!r}")
    levels = train_cfg["snapshot_losses"]
    if not isinstance(levels, list) or not all(_is_number(v) for v in levels):
        _fail(f"{key}.snapshot_losses", f"must be a list of loss levels, got {levels!r}")


def _check_tol_columns(spec: dict) -> None:
    """Two tolerances of one list that would store their counts under one column name (the
    second overwriting the first) are refused."""
    for key, relative in (("zero_tols", False), ("relative_tols", True)):
        seen: dict[str, float] = {}
        for tol in spec[key]:
            name = rows.tol_column("num_negative", tol, relative=relative)
            if name in seen:
                _fail(f"spectrum.{key}", f"{seen[name]!r} and {tol!r} share the column {name}")
            seen[name] = tol


def _resolve_model(key: str, given: Any, train_cfg: dict) -> dict:
    if not isinstance(given, dict):
        _fail(key, "must be a table ([model] or [[model]])")
    defaults = _DEFAULTS["model"]
    extra = sorted(set(given) - set(defaults) - {"train", "finder"})
    if extra:
        _fail(f"{key}.{extra[0]}", f"unknown key; known keys: {sorted(defaults)}, train, finder")
    model = {**copy.deepcopy(defaults), **copy.deepcopy(given)}
    for name in _MODEL_GRID_KEYS:
        model[name] = _as_list(f"{key}.{name}", model[name])
    for d in model["depth"]:
        if not is_int(d) or d < 0:
            _fail(f"{key}.depth", f"depths must be ints >= 0, got {d!r}")
    _check_widths(f"{key}.width", model["width"], model["depth"])
    for a in model["activation"]:
        if a not in models.ACTIVATIONS:
            _fail(f"{key}.activation", f"unknown {a!r}; choose from {sorted(models.ACTIVATIONS)}")
    if not isinstance(model["use_bias"], bool):
        _fail(f"{key}.use_bias", f"must be true or false, got {model['use_bias']!r}")
    if model["loss"] != "auto" and model["loss"] not in losses.LOSSES:
        _fail(
            f"{key}.loss",
            f"unknown {model['loss']!r}; choose 'auto' or from {sorted(losses.LOSSES)}",
        )
    if not _is_number(model["l2"]) or model["l2"] < 0:
        _fail(f"{key}.l2", f"must be a number >= 0, got {model['l2']!r}")
    if "train" in model:
        own = model["train"]
        if not isinstance(own, dict):
            _fail(f"{key}.train", f"must be a table ([{key.split('[')[0]}.train])")
        extra = sorted(set(own) - set(_DEFAULTS["train"]))
        if extra:
            _fail(f"{key}.train.{extra[0]}", f"unknown key; known: {sorted(_DEFAULTS['train'])}")
        _check_train(f"{key}.train", {**train_cfg, **own})
    if "finder" in model:
        own = model["finder"]
        if not isinstance(own, dict):
            _fail(f"{key}.finder", f"must be a table ([{key.split('[')[0]}.finder])")
        extra = sorted(set(own) - set(_MODEL_FINDER_KEYS))
        if extra:
            _fail(f"{key}.finder.{extra[0]}", f"unknown key; known: {list(_MODEL_FINDER_KEYS)}")
        _check_finder(f"{key}.finder", own)
    return model


def _check_finder(key: str, finder: dict) -> None:
    if "grad_tol" in finder and not (_is_number(finder["grad_tol"]) and finder["grad_tol"] > 0):
        _fail(f"{key}.grad_tol", f"must be a number > 0, got {finder['grad_tol']!r}")
    if "max_iters" in finder and not (is_int(finder["max_iters"]) and finder["max_iters"] >= 1):
        _fail(f"{key}.max_iters", f"must be an int >= 1, got {finder['max_iters']!r}")
    batching = finder.get("batching", "auto")
    if batching not in FINDER_BATCHING and not (is_int(batching) and batching >= 1):
        _fail(
            f"{key}.batching",
            f"unknown {batching!r}; choose from {FINDER_BATCHING} or a lane count k >= 1",
        )


def _resolve_models(given: Any, train_cfg: dict) -> dict | list[dict]:
    """``[model]`` (one grid) or ``[[model]]`` (a union of grids, e.g. other widths per depth
    so that depths meet at equal P); an entry's ``[model.train]`` replaces [train] keys for
    its cells (e.g. fewer replicas or no snapshots at the largest sizes), its
    ``[model.finder]`` the finder's budget, tolerance or batching (not its method)."""
    if isinstance(given, list):
        if not given:
            _fail("model", "needs at least one [[model]] table")
        return [_resolve_model(f"model[{i}]", m, train_cfg) for i, m in enumerate(given)]
    return _resolve_model("model", given, train_cfg)


def resolve(raw: dict) -> Study:
    """Validates a parsed TOML study and fills in defaults; returns the resolved config.

    Raises:
      ConfigError: naming the first bad key.
    """
    return Study.from_dict(_resolve_dict(raw))


def _resolve_dict(raw: dict) -> dict:
    """:func:`resolve` as plain dicts (the form that is hashed)."""
    if not isinstance(raw, dict):
        _fail("config", "must be a TOML table")
    unknown = sorted(set(raw) - _TABLES)
    if unknown:
        _fail(unknown[0], f"unknown table; expected one of {sorted(_TABLES)}")
    if isinstance(raw.get("spectrum"), dict) and "large_method" in raw["spectrum"]:
        _fail(
            "spectrum.large_method",
            "removed; spectrum.method (auto|dense|lanczos|slq) picks how counts are taken above "
            "spectrum.full_spectrum_max_params, and spectrum.dense_max_params is now only a cap",
        )
    cfg: dict[str, Any] = {}
    for table, defaults in _DEFAULTS.items():
        if table == "model":
            continue  # one table or an array of tables: _resolve_models
        given = raw.get(table, {})
        if not isinstance(given, dict):
            _fail(table, "must be a table ([...])")
        extra = sorted(set(given) - set(defaults))
        if extra:
            _fail(f"{table}.{extra[0]}", f"unknown key; known keys: {sorted(defaults)}")
        cfg[table] = {**copy.deepcopy(defaults), **copy.deepcopy(given)}
    cfg["finder"]["method"] = _as_list("finder.method", cfg["finder"]["method"])

    study = cfg["study"]
    if not isinstance(study["name"], str) or not study["name"]:
        _fail("study.name", "a non-empty string is required")
    if any(c in study["name"] for c in "/\\") or study["name"].startswith("."):
        _fail("study.name", f"must be a plain directory name, got {study['name']!r}")
    if not is_int(study["seed"]):
        _fail("study.seed", f"must be an int, got {study['seed']!r}")
    if study["dtype"] not in ("float32", "float64"):
        _fail("study.dtype", f"must be 'float32' or 'float64', got {study['dtype']!r}")

    datasets = raw.get("data")
    if datasets is None:
        _fail("data", "at least one [[data]] table is required")
    datasets = _as_list("data", datasets)
    cfg["data"] = []
    for i, entry in enumerate(datasets):
        key = f"data[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            _fail(key, "each [[data]] table needs a name")
        if entry["name"] == "random_labels":
            _fail(f"{key}.name", "random_labels is a key, e.g. name = 'digits', random_labels = 0")
        if entry["name"] not in data.DATASETS:
            _fail(f"{key}.name", f"unknown dataset {entry['name']!r}; choose from {data.DATASETS}")
        if "dtype" in entry:
            _fail(f"{key}.dtype", "set the precision once, in study.dtype")
        cfg["data"].append(dict(entry))

    optimizers = raw.get("optimizer")
    if optimizers is None:
        _fail("optimizer", "at least one [[optimizer]] table is required")
    cfg["optimizer"] = []
    for i, entry in enumerate(_as_list("optimizer", optimizers)):
        key = f"optimizer[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            _fail(key, "each [[optimizer]] table needs a name")
        hparams = {k: v for k, v in entry.items() if k != "name"}
        try:
            optim.make_optimizer(entry["name"], **hparams)
        except (ValueError, TypeError) as err:
            _fail(key, str(err))
        cfg["optimizer"].append(dict(entry))

    _check_train("train", cfg["train"])
    cfg["model"] = _resolve_models(raw.get("model", {}), cfg["train"])
    finder = cfg["finder"]
    for m in finder["method"]:
        if m not in FINDER_METHODS:
            _fail("finder.method", f"unknown {m!r}; choose from {FINDER_METHODS}")
    _check_finder("finder", finder)

    spec = cfg["spectrum"]
    if spec["method"] not in SPECTRUM_METHODS:
        _fail("spectrum.method", f"unknown {spec['method']!r}; choose from {SPECTRUM_METHODS}")
    for key in ("full_spectrum_max_params", "dense_max_params"):
        if not is_int(spec[key]) or spec[key] < 0:
            _fail(f"spectrum.{key}", f"must be an int >= 0, got {spec[key]!r}")
    for key in ("num_matvecs", "max_matvecs"):
        if not is_int(spec[key]) or spec[key] < 2:
            _fail(f"spectrum.{key}", f"must be an int >= 2, got {spec[key]!r}")
    if not _is_number(spec["failure_prob"]) or not 0 < spec["failure_prob"] < 1:
        _fail("spectrum.failure_prob", f"must be a number in (0, 1), got {spec['failure_prob']!r}")
    spec["failure_prob"] = float(spec["failure_prob"])
    tols = _as_list("spectrum.zero_tols", spec["zero_tols"])
    if not all(_is_number(t) and 0 < t < math.inf for t in tols):
        _fail("spectrum.zero_tols", f"tolerances must be finite numbers > 0, got {tols!r}")
    spec["zero_tols"] = sorted(float(t) for t in tols)
    rel = spec["relative_tols"]
    rel = rel if isinstance(rel, list) else [rel]  # [] for none
    if not all(_is_number(c) and 0 < c < 1 for c in rel):
        _fail(
            "spectrum.relative_tols", f"factors c of tau = c lambda_max must be in (0, 1): {rel!r}"
        )
    spec["relative_tols"] = sorted(float(c) for c in rel)
    _check_tol_columns(spec)

    cutoffs = _as_list("figures.cutoffs", cfg["figures"]["cutoffs"])
    if not all(_is_number(c) and c > 0 for c in cutoffs):
        _fail(
            "figures.cutoffs", f"squared-gradient-norm cutoffs must be numbers > 0, got {cutoffs!r}"
        )
    cfg["figures"]["cutoffs"] = [float(c) for c in cutoffs]
    draw = _as_list("figures.draw", cfg["figures"]["draw"])
    for name in draw:
        if name not in FIGURES:
            _fail("figures.draw", f"unknown figure {name!r}; choose from {FIGURES}")
    cfg["figures"]["draw"] = [name for name in FIGURES if name in draw]  # one order
    if cfg["figures"]["reference"] not in FIGURE_REFERENCES:
        _fail(
            "figures.reference",
            f"unknown {cfg['figures']['reference']!r}; choose from {FIGURE_REFERENCES}",
        )
    return cfg


def config_hash(cfg: Study) -> str:
    """A short hash of the resolved config (canonical JSON), presentation tables left out."""
    kept = {k: v for k, v in cfg.to_dict().items() if k not in _PRESENTATION_TABLES}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def parse_override(text: str) -> tuple[str, Any]:
    """``"table.key=VALUE"`` (VALUE in TOML syntax, e.g. ``3``, ``[2, 4]``, ``"adam"``)."""
    name, sep, value = text.partition("=")
    name = name.strip()
    table, dot, key = name.partition(".")
    if not sep or not dot or not table or not key:
        raise ConfigError(f"--set {text}: expected TABLE.KEY=VALUE, e.g. train.replicas=2")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        raise ConfigError(
            f'--set {name}: {value.strip()!r} is not a TOML value (quote strings: "adam")'
        ) from None
    return name, parsed


def apply_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """A copy of a parsed study with ``{"table.key": value}`` set; arrays of tables
    (``data``, ``optimizer``) are replaced whole by ``{"data": [...]}``."""
    raw = copy.deepcopy(raw)
    for name, value in overrides.items():
        table, _, key = name.partition(".")
        if not key:
            raw[table] = copy.deepcopy(value)
            continue
        if table not in _DEFAULTS and table not in raw:
            _fail(name, f"unknown table; expected one of {sorted(_TABLES)}")
        if not isinstance(raw.setdefault(table, {}), dict):
            _fail(name, f"{table} is an array of tables; replace it whole")
        raw[table][key] = copy.deepcopy(value)
    return raw


def _quick_overrides(quick: Any) -> dict[str, Any]:
    if not isinstance(quick, dict):
        _fail("quick", "must be a table of tables ([quick.train] ...)")
    out: dict[str, Any] = {}
    for table, entries in quick.items():
        if table not in _TABLES:
            _fail(f"quick.{table}", f"unknown table; expected one of {sorted(_TABLES)}")
        if isinstance(entries, list):  # [[quick.data]], [[quick.optimizer]]
            out[table] = entries
        elif isinstance(entries, dict):
            out.update({f"{table}.{key}": value for key, value in entries.items()})
        else:
            _fail(f"quick.{table}", "must be a table or an array of tables")
    return out


def load(
    path_or_name: str | Path | None = None,
    *,
    quick: bool = False,
    overrides: dict[str, Any] | None = None,
) -> Study:
    """Loads and resolves a study: a TOML path, a name in experiments/, or the default.

    Args:
      path_or_name: the study; None for the default study.
      quick: apply the study's ``[quick]`` table (the reduced version that
        ``scripts/reproduce_paper.sh --quick`` runs): ``[quick.train]`` keys replace
        ``[train]`` keys and so on; ``[[quick.data]]`` / ``[[quick.optimizer]]`` replace the
        whole arrays.
      overrides: ``{"table.key": value}`` applied last (the sweep's ``--set``).
    """
    if path_or_name is None:
        path_or_name = DEFAULT_STUDY
    path = Path(path_or_name)
    if not path.suffix and not path.exists():
        path = EXPERIMENTS / f"{path_or_name}.toml"
    if not path.is_file():
        raise ConfigError(f"config: file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config: {path} is not valid TOML: {err}") from None
    quick_table = raw.pop("quick", None)
    if quick:
        if quick_table is None:
            raise ConfigError(f"quick: {path} has no [quick] table")
        raw = apply_overrides(raw, _quick_overrides(quick_table))
    elif quick_table is not None:
        _quick_overrides(quick_table)  # a broken [quick] table fails now, not in CI later
    return resolve(apply_overrides(raw, overrides or {}))


def _arch(ds: data.Dataset, depth: int, width, activation: str, use_bias: bool) -> models.MLPConfig:
    if isinstance(width, list):
        width = tuple(width)
    return models.MLPConfig(
        in_features=ds.input_dim,
        out_features=ds.output_dim,
        depth=depth,
        width=width if depth else 1,
        activation=activation,
        use_bias=use_bias,
    )


def load_cell_dataset(entry: dict, dtype: str) -> data.Dataset:
    """The dataset of a [[data]] entry in ``dtype`` (``random_labels = SEED``: its targets
    shuffled by :func:`saddlestudy.data.random_labels`)."""
    kwargs = {k: v for k, v in entry.items() if k not in ("name", "random_labels")}
    ds = data.load_dataset(entry["name"], dtype=dtype, **kwargs)
    if "random_labels" in entry:
        ds = data.random_labels(ds, entry["random_labels"])
    return ds


def expand(cfg: Study, datasets: list[data.Dataset] | None = None) -> list[Cell]:
    """The cells of the grid, each a :class:`~saddlestudy.study.Cell` with a stable
    ``cell_id``.

    Raises:
      ConfigError: a dataset's arguments are wrong, or an architecture is impossible, or
        dense spectra would not fit in memory.
    """
    if datasets is None:
        datasets = []
        for i, entry in enumerate(cfg.data):
            try:
                datasets.append(load_cell_dataset(entry, cfg.dtype))
            except (ValueError, TypeError) as err:
                _fail(f"data[{i}]", str(err))
    cells = []
    seen: dict[str, str] = {}
    for m_index, grid in enumerate(cfg.models):
        where = f"model[{m_index}]" if cfg.several_models else "model"
        for cell in _model_cells(cfg, grid, datasets, where):
            if cell.cell_id in seen:
                what = f"depth={cell.depth} width={width_text(cell.width)}"
                what += f" ({cell.dataset}, {cell.optimizer['name']})"
                _fail(where, f"the cell {what} is in {seen[cell.cell_id]} too")
            seen[cell.cell_id] = where
            cells.append(cell)
    _check_spectrum_memory(cfg, cells)
    return cells


def _model_cells(
    cfg: Study, grid: ModelGrid, datasets: list[data.Dataset], where: str
) -> list[Cell]:
    train = cfg.train_of(grid)
    finder = cfg.finder_of(grid)
    settings = {"train": train.to_dict(), "finder": finder.to_dict(),
                "spectrum": cfg.spectrum.to_dict()}  # fmt: skip
    cells = []
    product = itertools.product(
        range(len(datasets)),
        grid.depth,
        grid.width,
        grid.activation,
        range(len(cfg.optimizers)),
        cfg.finder.method,
    )
    for d_index, depth, width, activation, o_index, finder_method in product:
        if isinstance(width, tuple) and len(width) != depth:
            continue  # per-layer widths only pair with their own depth
        if depth == 0 and width != grid.width[0]:
            continue  # a linear model has no hidden width: one cell, not one per width
        ds = datasets[d_index]
        try:
            arch = _arch(ds, depth, width, activation, grid.use_bias)
        except ValueError as err:
            _fail(where, str(err))
        loss = losses.default_loss(ds.task) if grid.loss == "auto" else grid.loss
        if loss == "cross_entropy" and ds.task != "classification":
            _fail(f"{where}.loss", f"cross_entropy needs a classification dataset, not {ds.name}")
        if train.batch_size > ds.num_samples:
            _fail(
                "train.batch_size",
                f"{train.batch_size} exceeds the {ds.num_samples} samples of {ds.name}",
            )
        cell = Cell(
            cell_id="", data=cfg.data[d_index], dataset=ds.name, arch=arch, depth=depth,
            width=width, activation=activation, use_bias=grid.use_bias, loss=loss, l2=grid.l2,
            num_params=arch.num_params, num_samples=ds.num_samples,
            optimizer=cfg.optimizers[o_index], finder_method=finder_method,
            spectrum_method=spectrum_plan(cfg, arch.num_params), train=train, finder=finder,
        )  # fmt: skip
        key = json.dumps(
            {"cell": cell.identity(), "settings": settings, "seed": cfg.seed, "dtype": cfg.dtype},
            sort_keys=True,
        )
        cells.append(
            dataclasses.replace(cell, cell_id=hashlib.sha256(key.encode()).hexdigest()[:16])
        )
    return cells


def spectrum_plan(cfg: Study, num_params: int) -> str:
    """What counts the eigenvalues of a cell with ``num_params`` parameters (one of
    ``CELL_SPECTRUM_METHODS``): :func:`saddlestudy.inertia.count_plan` with the study's
    ``[spectrum]`` settings."""
    spec = cfg.spectrum
    return inertia.count_plan(
        num_params,
        cfg.itemsize,
        method=spec.method,
        full_spectrum_max_params=spec.full_spectrum_max_params,
        dense_max_params=spec.dense_max_params,
    )


def primary_zero_tol(zero_tols: Sequence[float]) -> float:
    """The tolerance of a row's ``index``, ``minimum_ratio`` and ``counts_exact``: the default
    (1e-5) when the study counts at it, else its largest."""
    default = spectrum.DEFAULT_ZERO_TOL
    return default if default in zero_tols else max(zero_tols)


def _available_memory() -> int:
    # The memory of the device the spectra will run on (a GPU's own on a GPU).
    return spectrum.device_memory_bytes("free")


def _check_spectrum_memory(cfg: Study, cells: list[Cell]) -> None:
    spec = cfg.spectrum
    for c in cells:
        P, method = c.num_params, c.spectrum_method
        if method == "dense" and spec.dense_max_params and P > spec.dense_max_params:
            _fail(
                "spectrum.dense_max_params",
                f'method "dense" at P={P} is above the cap {spec.dense_max_params}; '
                'raise the cap or use method "auto"',
            )
        if method == "dense" and not inertia.dense_fits(P, cfg.itemsize):
            need = inertia.DENSE_COPIES * P**2 * cfg.itemsize / 2**30
            _fail(
                "spectrum.method",
                f'"dense" at P={P} needs about {need:.1f} GiB ({inertia.DENSE_COPIES} P x P '
                'matrices), more than fits; use "auto" (matrix-free where dense does not fit), '
                '"lanczos" or "slq"',
            )
    eigh = [c.num_params for c in cells if c.spectrum_method == "eigh"]
    if not eigh:
        return
    # One Hessian at a time per point, plus eigh's workspace.
    need = memory.HESSIAN_COPIES * max(eigh) ** 2 * cfg.itemsize
    have = _available_memory()
    if need > inertia.DENSE_MEMORY_FRACTION * have:
        _fail(
            "spectrum.full_spectrum_max_params",
            f"all eigenvalues at P={max(eigh)} need about {need / 2**30:.1f} GiB, more than "
            f"{inertia.DENSE_MEMORY_FRACTION:g} of the {have / 2**30:.1f} GiB available; lower "
            "full_spectrum_max_params",
        )


def width_text(width) -> str:
    """A cell's width as the TOML wrote it: ``8``, or ``[8, 4]`` per layer."""
    return str(list(width)) if isinstance(width, tuple) else str(width)


def describe(cfg: Study, cells: list[Cell]) -> str:
    """The expanded cells and an estimate of the work, for ``--dry-run``."""
    lines = [f"study {cfg.name} (config {config_hash(cfg)}): {len(cells)} cells"]
    lines.append(
        f"{'cell_id':16}  {'dataset':18} {'depth':>5} {'width':>8} {'act':8} {'P':>7} "
        f"{'optimizer':10} {'finder':18} {'points':>7} spectrum"
    )
    points = 0
    work = 0.0
    for c in cells:
        t = c.train
        n = t.replicas * t.num_starts
        points += n
        # Rough cost model in parameter-sample products: training steps plus finder iterations
        # (each about 2P HVPs), plus per point the Hessian-vector products of its counts
        # (dense: P; Lanczos: at most max_matvecs; SLQ: probes x depth).
        P, N = c.num_params, c.num_samples
        work += t.replicas * t.num_steps * P * N * 3
        work += n * c.finder.max_iters * min(P, 50) * P * N * 4
        work += n * _spectrum_matvecs(cfg.spectrum, c.spectrum_method, P) * P * N * 4
        lines.append(
            f"{c.cell_id:16}  {c.dataset:18} {c.depth:>5} {width_text(c.width):>8} "
            f"{c.activation:8} {c.num_params:>7} {c.optimizer['name']:10} "
            f"{c.finder_method:18} {t.replicas:>3}x{t.num_starts:<3} {c.spectrum_method}"
        )
    lines.append(
        f"total: {len(cells)} cells, {points} finder starts (points: replicas x starts per "
        f"replica), about {work:.2e} multiply-adds (upper bound)"
    )
    spec = cfg.spectrum
    rel = ", ".join(f"{c:g}" for c in spec.relative_tols) or "none"
    lines.append(
        f"counts at tau = {', '.join(f'{t:g}' for t in spec.zero_tols)} (each row's index, "
        f"minimum_ratio and counts_exact at {primary_zero_tol(spec.zero_tols):g}) and at "
        f"tau = c lambda_max for c = {rel}"
    )
    lines.append(
        "spectrum: eigh = all P eigenvalues, stored (exact counts); dense = exact counts by "
        "LDL^T; lanczos / slq = bounds (exact only where they meet); lanczos+slq = Lanczos, "
        "then SLQ where Lanczos is not exact"
    )
    return "\n".join(lines)


def _spectrum_matvecs(spec: CountSettings, method: str, P: int) -> int:
    lanczos = min(spec.max_matvecs, 2 * P)
    slq = spectrum.DEFAULT_NUM_PROBES * min(spec.num_matvecs, P)
    return {"eigh": P, "dense": P, "lanczos": lanczos, "slq": slq}.get(method, lanczos + slq)
