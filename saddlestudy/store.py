"""The results store: one directory per study, one immutable Parquet part file per cell.

Layout of ``OUT/<study>/``::

    config.json          the resolved config
    manifest.json        config hash, provenance, and the cells of the grid
    parts/<cell>.parquet one row per critical point of that cell (atomic: temp file + rename)
    spectra/<cell>.npz   all P eigenvalues of the rows that have them, keyed by row_id
    .lock                held (flock) by the sweep writing the directory

A cell is complete when its part file reads back with the expected row count and its
spectra file opens; anything else (missing, truncated, corrupt) is recomputed on the next run,
and the sweep says so in its log (:meth:`Store.part_problem`). Spectra are written before the
part file, so a complete part always has its spectra beside it. The study-level state is never
guessed: an unreadable ``manifest.json``, ``config.json`` or ``.lock`` is refused in one line
(:class:`StoreCorruptError`) before anything on disk is touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class StoreLockedError(RuntimeError):
    """Another sweep is writing the same study directory."""


class StoreMismatchError(RuntimeError):
    """The directory holds results of a different config."""


class StoreCorruptError(ValueError):
    """A file of the store cannot be read (the message says which and how to recover)."""


def _read_json_state(path: Path) -> dict:
    """A study-level JSON file as a dict; :class:`StoreCorruptError` in one line if unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # ValueError: bad JSON or bad UTF-8
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    else:
        if isinstance(value, dict):
            return value
        reason = f"a JSON {type(value).__name__}, not an object"
    raise StoreCorruptError(
        f"{path} is unreadable ({reason}); rerun with --fresh to start the study over, "
        "or repair the file (nothing was changed)"
    )


def _atomic_write(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class Store:
    """One study's directory of results."""

    def __init__(self, root: str | Path, study: str):
        self.dir = Path(root) / study
        self.parts = self.dir / "parts"
        self.spectra = self.dir / "spectra"
        self._lock_file = None

    # -- locking -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[Store]:
        """Holds an exclusive lock on the study directory; fails at once if another holds it.

        The lock is an ``flock`` on ``.lock``: the OS releases it when the holder dies, so a
        killed sweep never leaves a stale lock behind.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            f = open(self.dir / ".lock", "a+")  # noqa: SIM115 (held for the context's life)
        except OSError as err:
            raise StoreCorruptError(
                f"cannot open the lock file {self.dir / '.lock'} ({err.strerror or err}); "
                "remove or repair it (nothing was changed)"
            ) from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise StoreLockedError(
                f"another sweep is writing {self.dir} (lock held on {self.dir / '.lock'}); "
                "wait for it or use another --out"
            ) from None
        self._lock_file = f
        try:
            yield self
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()
            self._lock_file = None

    # -- study-level files -------------------------------------------------------------------
    def prepare(self, cfg: dict, cfg_hash: str, manifest: dict, *, fresh: bool = False) -> None:
        """Starts or resumes the study; refuses to mix results of another config.

        Args:
          cfg: the resolved config.
          cfg_hash: its hash.
          manifest: provenance and cells, written to manifest.json.
          fresh: delete previous results of this study first.

        Raises:
          StoreMismatchError: the directory holds another config's results.
          StoreCorruptError: its manifest.json or config.json cannot be read (unless fresh).
        """
        manifest_path = self.dir / "manifest.json"
        if fresh:
            for sub in (self.parts, self.spectra):
                shutil.rmtree(sub, ignore_errors=True)
            for name in ("manifest.json", "config.json"):
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / name).unlink()
        elif manifest_path.exists():
            # Read and checked before anything is written: a manifest that cannot be read must
            # not turn off the guard against mixing two configs' results.
            old = _read_json_state(manifest_path)
            if (self.dir / "config.json").exists():
                _read_json_state(self.dir / "config.json")
            if "config_hash" not in old:
                raise StoreCorruptError(
                    f"{manifest_path} has no config_hash; rerun with --fresh to start the "
                    "study over, or repair the file (nothing was changed)"
                )
            if old["config_hash"] != cfg_hash:
                raise StoreMismatchError(
                    f"{self.dir} holds results of another config (hash {old.get('config_hash')}, "
                    f"this one is {cfg_hash}); rerun with --fresh to replace them, "
                    "or use another --out"
                )
        self.parts.mkdir(parents=True, exist_ok=True)
        self.spectra.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.dir / "config.json", json.dumps(cfg, indent=2, sort_keys=True).encode())
        _atomic_write(manifest_path, json.dumps(manifest, indent=2, sort_keys=True).encode())

    # -- cells -------------------------------------------------------------------------------
    def part_path(self, cell_id: str) -> Path:
        return self.parts / f"{cell_id}.parquet"

    def spectra_path(self, cell_id: str) -> Path:
        return self.spectra / f"{cell_id}.npz"

    def is_complete(self, cell_id: str, expected_rows: int | None = None) -> bool:
        """Whether a cell's part file exists and reads back whole, its spectra beside it."""
        return self.part_problem(cell_id, expected_rows) is None

    def part_problem(self, cell_id: str, expected_rows: int | None = None) -> str | None:
        """Why a cell is not complete (``"missing"``, or what is wrong with its files), or
        None when it is complete."""
        path, spectra = self.part_path(cell_id), self.spectra_path(cell_id)
        if not path.exists():
            return "missing"
        try:
            meta = pq.read_metadata(path)
        except (pa.ArrowException, OSError) as err:
            return f"unreadable part file {path.name} ({_first_line(err)})"
        if expected_rows is not None and meta.num_rows != expected_rows:
            return f"part file {path.name} has {meta.num_rows} rows, expected {expected_rows}"
        try:
            with np.load(spectra) as f:
                f.files  # noqa: B018 (reads the zip directory)
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            return f"unreadable spectra file {spectra.name} ({_first_line(err)})"
        return None

    def write_cell(self, cell_id: str, table: pa.Table, spectra: dict[str, np.ndarray]) -> None:
        """Writes one cell: spectra first, then the part file, each atomically."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **spectra)
        _atomic_write(self.spectra_path(cell_id), buffer.getvalue())
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        _atomic_write(self.part_path(cell_id), sink.getvalue().to_pybytes())


def load_results(root: str | Path, study: str | None = None) -> pa.Table:
    """The whole study as one Arrow table (``.to_pandas()`` for a DataFrame).

    Args:
      root: the ``--out`` directory, or a study directory itself if ``study`` is None.
      study: the study name.
    """
    directory = Path(root) if study is None else Path(root) / study
    parts = sorted((directory / "parts").glob("*.parquet"))
    if not parts:
        raise FileNotFoundError(f"no results in {directory} (no parts/*.parquet)")
    tables = []
    for path in parts:
        try:
            tables.append(pq.read_table(path))
        except (pa.ArrowException, OSError) as err:
            raise StoreCorruptError(
                f"unreadable part file {path} ({_first_line(err)}); rerun the sweep on this "
                "study to recompute that cell"
            ) from None
    return pa.concat_tables(tables, promote_options="default")


def load_spectrum(root: str | Path, study: str, row_id: str) -> dict[str, np.ndarray]:
    """The stored spectrum arrays of one row (keys: ``eigenvalues`` or the SLQ density)."""
    cell_id = row_id.split(":")[0]
    path = Path(root) / study / "spectra" / f"{cell_id}.npz"
    try:
        with np.load(path) as f:
            prefix = f"{row_id}/"
            return {k[len(prefix) :]: f[k] for k in f.files if k.startswith(prefix)}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise StoreCorruptError(
            f"unreadable spectra file {path} ({_first_line(err)}); rerun the sweep on this "
            "study to recompute that cell"
        ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
