"""The results store: one directory per study, one immutable Parquet part file per cell.

Layout of ``OUT/<study>/``::

    config.json          the resolved config (and config.toml, the file as given)
    manifest.json        config hash, provenance, and the cells of the grid
    parts/<cell>.parquet one row per critical point of that cell (atomic: temp file + rename)
    spectra/<cell>.npz   full spectra / densities of that cell's rows, keyed by row_id
    .lock                held (flock) by the sweep writing the directory

A cell is complete when its part file reads back with the expected row count; anything
else (missing, truncated, corrupt) is recomputed on the next run. Spectra are written before
the part file, so a complete part always has its spectra beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class StoreLockedError(RuntimeError):
    """Another sweep is writing the same study directory."""


class StoreMismatchError(RuntimeError):
    """The directory holds results of a different config."""


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
        f = open(self.dir / ".lock", "a+")  # noqa: SIM115 (held for the context's life)
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
        """
        manifest_path = self.dir / "manifest.json"
        if fresh:
            for sub in (self.parts, self.spectra):
                shutil.rmtree(sub, ignore_errors=True)
            for name in ("manifest.json", "config.json"):
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / name).unlink()
        elif manifest_path.exists():
            try:
                old = json.loads(manifest_path.read_text())
            except (json.JSONDecodeError, OSError):
                old = {}
            if old.get("config_hash") not in (None, cfg_hash):
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
        """Whether a cell's part file exists and reads back whole."""
        path = self.part_path(cell_id)
        if not path.is_file() or not self.spectra_path(cell_id).is_file():
            return False
        try:
            meta = pq.read_metadata(path)
        except (pa.ArrowException, OSError):
            return False
        return expected_rows is None or meta.num_rows == expected_rows

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
    return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default")


def load_spectrum(root: str | Path, study: str, row_id: str) -> dict[str, np.ndarray]:
    """The stored spectrum arrays of one row (keys: ``eigenvalues`` or the SLQ density)."""
    cell_id = row_id.split(":")[0]
    with np.load(Path(root) / study / "spectra" / f"{cell_id}.npz") as f:
        prefix = f"{row_id}/"
        return {k[len(prefix) :]: f[k] for k in f.files if k.startswith(prefix)}
