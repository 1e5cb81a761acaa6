"""A study as typed, frozen objects: what :func:`saddlestudy.config.load` returns and what
:func:`saddlestudy.config.expand` makes of it.

``config`` checks a TOML file key by key (its errors name the key) and builds a :class:`Study`;
past that point nothing reads a config by string keys. ``Study.to_dict()`` is the resolved
config as plain JSON values: what ``config.config_hash`` hashes and the sweep stores as
``config.json``, unchanged from the dicts the package used before these types (so every
study's hash and cell ids stay the same; ``tests/test_study_ids.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from saddlestudy import models


def _plain(value: Any) -> Any:
    """Tuples back to lists, recursively: JSON's view of the settings."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _fields(obj) -> dict[str, Any]:
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """``[train]`` (with a grid's ``[model.train]`` on top, for its cells)."""

    num_steps: int
    record_every: int
    replicas: int
    batch_size: int  # 0: full batch
    snapshot_steps: tuple[int, ...]
    snapshot_losses: tuple[float, ...]

    @property
    def num_starts(self) -> int:
        """Finder starts per replica: the snapshots, then the end point."""
        return len(self.snapshot_steps) + len(self.snapshot_losses) + 1

    def to_dict(self) -> dict[str, Any]:
        return _fields(self)


@dataclasses.dataclass(frozen=True)
class FinderSettings:
    """``[finder]`` (with a grid's ``[model.finder]`` on top, for its cells); ``method`` is
    the study's grid axis, a cell's own method is ``Cell.finder_method``."""

    method: tuple[str, ...]
    grad_tol: float
    max_iters: int
    batching: str | int

    def to_dict(self) -> dict[str, Any]:
        return _fields(self)


@dataclasses.dataclass(frozen=True)
class CountSettings:
    """``[spectrum]``: how each point's eigenvalues are counted."""

    full_spectrum_max_params: int
    method: str
    dense_max_params: int  # 0: no cap
    zero_tols: tuple[float, ...]
    relative_tols: tuple[float, ...]
    num_matvecs: int
    max_matvecs: int
    failure_prob: float

    def to_dict(self) -> dict[str, Any]:
        return _fields(self)


@dataclasses.dataclass(frozen=True)
class DrawSettings:
    """``[figures]``: how the study is drawn (not hashed)."""

    cutoffs: tuple[float, ...]
    draw: tuple[str, ...]
    reference: str

    def to_dict(self) -> dict[str, Any]:
        return _fields(self)


@dataclasses.dataclass(frozen=True)
class ModelGrid:
    """One ``[model]`` table: its grid axes, and its own ``[model.train]`` /
    ``[model.finder]`` keys (None where it has no such table)."""

    depth: tuple[int, ...]
    width: tuple[Any, ...]  # ints, or per-layer tuples
    activation: tuple[str, ...]
    use_bias: bool
    loss: str
    l2: float
    train: dict | None = None
    finder: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        out = _fields(self)
        for own in ("train", "finder"):
            if out[own] is None:
                del out[own]
        return out


@dataclasses.dataclass(frozen=True)
class Study:
    """A resolved, checked study config. ``data`` and ``optimizers`` keep their TOML tables
    (the keywords of ``data.load_dataset`` and ``optim.make_optimizer``); treat them as
    read-only."""

    name: str
    description: str
    seed: int
    dtype: str
    data: tuple[dict, ...]
    optimizers: tuple[dict, ...]
    models: tuple[ModelGrid, ...]
    several_models: bool  # [[model]] (an array) rather than one [model] table
    train: TrainSettings
    finder: FinderSettings
    spectrum: CountSettings
    figures: DrawSettings

    @property
    def itemsize(self) -> int:
        return 8 if self.dtype == "float64" else 4

    def train_of(self, grid: ModelGrid) -> TrainSettings:
        """A grid's cells' [train] settings: the study's, with its own keys on top."""
        return dataclasses.replace(self.train, **_tuples(grid.train or {}))

    def finder_of(self, grid: ModelGrid) -> FinderSettings:
        """A grid's cells' [finder] settings: the study's, with its own keys on top."""
        return dataclasses.replace(self.finder, **(grid.finder or {}))

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as JSON values (what is hashed and stored)."""
        models_ = [m.to_dict() for m in self.models]
        return {
            "study": {
                "name": self.name,
                "description": self.description,
                "seed": self.seed,
                "dtype": self.dtype,
            },  # fmt: skip
            "data": [dict(d) for d in self.data],
            "optimizer": [dict(o) for o in self.optimizers],
            "model": models_ if self.several_models else models_[0],
            "train": self.train.to_dict(),
            "finder": self.finder.to_dict(),
            "spectrum": self.spectrum.to_dict(),
            "figures": self.figures.to_dict(),
        }

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> Study:
        """From a resolved config dict (``config.resolve``'s checks already passed)."""
        grids = cfg["model"] if isinstance(cfg["model"], list) else [cfg["model"]]
        return cls(
            name=cfg["study"]["name"],
            description=cfg["study"]["description"],
            seed=cfg["study"]["seed"],
            dtype=cfg["study"]["dtype"],
            data=tuple(dict(d) for d in cfg["data"]),
            optimizers=tuple(dict(o) for o in cfg["optimizer"]),
            models=tuple(
                ModelGrid(
                    **{
                        **_tuples({k: m[k] for k in ("depth", "width", "activation")}),
                        **{k: m[k] for k in ("use_bias", "loss", "l2")},
                        "train": m.get("train"),
                        "finder": m.get("finder"),
                    }
                )  # fmt: skip
                for m in grids
            ),
            several_models=isinstance(cfg["model"], list),
            train=TrainSettings(**_tuples(cfg["train"])),
            finder=FinderSettings(**_tuples(cfg["finder"])),
            spectrum=CountSettings(**_tuples(cfg["spectrum"])),
            figures=DrawSettings(**_tuples(cfg["figures"])),
        )


def _tuples(table: dict[str, Any]) -> dict[str, Any]:
    """Lists to tuples (recursively), so that the frozen settings hold no mutable lists."""

    def tup(v):
        return tuple(tup(x) for x in v) if isinstance(v, list) else v

    return {k: tup(v) for k, v in table.items()}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of a study's grid: a dataset, an architecture, an optimizer and a finder
    method, with the settings its grid gives it and its stable ``cell_id``."""

    cell_id: str
    data: dict  # the [[data]] table
    dataset: str
    arch: models.MLPConfig
    depth: int
    width: Any  # int, or a per-layer tuple
    activation: str
    use_bias: bool
    loss: str
    l2: float
    num_params: int
    num_samples: int
    optimizer: dict  # the [[optimizer]] table: name and hyperparameters
    finder_method: str
    spectrum_method: str  # config.CELL_SPECTRUM_METHODS: planned from P, dtype and memory
    train: TrainSettings
    finder: FinderSettings

    def identity(self) -> dict[str, Any]:
        """What the cell id is a hash of (besides the settings, seed and dtype): not the
        spectrum method, which under "auto" depends on the machine's memory."""
        return {
            "data": self.data, "dataset": self.dataset, "depth": self.depth,
            "width": _plain(self.width), "activation": self.activation,
            "use_bias": self.use_bias, "loss": self.loss, "l2": self.l2,
            "num_params": self.num_params, "optimizer": self.optimizer,
            "finder_method": self.finder_method, "num_samples": self.num_samples,
        }  # fmt: skip
