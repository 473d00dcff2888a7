"""The hybrid's track space, and the scan's index of it, kept on disk beside the database cache.

Before its first user, every hybrid ``discover`` holds the whole database as a
:class:`~deepvibe.discovery.signals.TrackSpace`: each row read, its features standardised
with the checkpoint's scaler, its artist cells split and normalised (0.5-1.3 s at 1,000,000
tracks, a third of a one-user run). Those arrays depend on nothing but the database cache
file and the checkpoint's scaler and catalogue, so the first run saves them as
``<cache>.space-<key>.npz`` (uncompressed; plain arrays, loaded without unpickling) and later
runs with the same three read them back. Ids and names (Python strings) are still read from
the database. A rebuilt database cache is a new file (another inode and mtime), so its key
differs; a file that cannot be read is rebuilt, and one that cannot be written is skipped
with a warning.

The hybrid scan's index of a space (its order and what each stretch of it credits, see
:class:`deepvibe.discovery.hybrid_scan.ScanIndex`: 0.3-0.5 s to build at 1,000,000 tracks,
once per batch) is kept by :class:`IndexFiles` as a folder of ``.npy`` files,
``<cache>.index-<key>``, whose large arrays are mapped into memory when read rather than
copied (fresh pages cost as much as building them on some machines).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepvibe.data.tables import FeatureScaler
from deepvibe.errors import DeepVibeError
from deepvibe.fileio import atomic_folder, atomic_path

log = logging.getLogger(__name__)

SPACE_VERSION = 1  # bump when what TrackSpace.arrays holds, or how it is computed, changes
_KEY = "__key__"


def space_key(cache_file: Path, scaler: FeatureScaler, catalogue_ids: np.ndarray) -> str:
    """What the space of ``cache_file`` under this scaler and catalogue depends on, hashed."""
    st = Path(cache_file).stat()
    digest = hashlib.sha256()
    identity = {
        "version": SPACE_VERSION, "file": str(Path(cache_file).resolve()), "inode": st.st_ino,
        "size": st.st_size, "mtime_ns": st.st_mtime_ns, "columns": list(scaler.columns),
    }  # fmt: skip
    digest.update(json.dumps(identity, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(scaler.mean, np.float64).tobytes())
    digest.update(np.ascontiguousarray(scaler.std, np.float64).tobytes())
    digest.update("\x1f".join(str(t) for t in catalogue_ids).encode())
    return digest.hexdigest()[:32]


def space_path(cache_file: Path, key: str) -> Path:
    cache_file = Path(cache_file)
    return cache_file.with_name(f"{cache_file.name}.space-{key}.npz")


def load_space_arrays(cache_file: Path, key: str) -> dict[str, np.ndarray] | None:
    """The arrays saved under ``key``, or None when there are none or they cannot be read."""
    path = space_path(cache_file, key)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        log.warning("%s: unreadable (%s); building the track space again", path, exc)
        return None
    if str(arrays.pop(_KEY, "")) != key:
        return None
    return arrays


def save_space_arrays(cache_file: Path, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Save ``arrays`` under ``key`` (atomically), removing the spaces of older keys."""
    path = space_path(cache_file, key)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays, **{_KEY: np.array(key)})
    except (OSError, DeepVibeError) as exc:
        log.warning("%s: cannot save the track space (%s); it is built on every run", path, exc)
        return
    for old in path.parent.glob(f"{path.name.split('.space-')[0]}.space-*.npz"):
        if old != path:
            old.unlink(missing_ok=True)


_MAPPED = 1 << 20  # an index array file at least this big is mapped, not read


@dataclass(frozen=True)
class IndexFiles:
    """Where arrays derived from the space of ``cache_file`` (under ``space_key``, see
    :func:`space_key`) are kept: one folder per key of what else they depend on."""

    cache_file: Path
    space_key: str

    def key(self, *parts: object) -> str:
        """The space's key and ``parts`` (arrays by dtype, shape and bytes; the rest by repr),
        hashed."""
        digest = hashlib.sha256(self.space_key.encode())
        for part in parts:
            digest.update(b"\x1e")
            if isinstance(part, np.ndarray):
                digest.update(f"{part.dtype}{part.shape}".encode())
                digest.update(np.ascontiguousarray(part).tobytes())
            else:
                digest.update(repr(part).encode())
        return digest.hexdigest()[:32]

    def path(self, key: str) -> Path:
        return Path(self.cache_file).with_name(f"{Path(self.cache_file).name}.index-{key}")

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays saved under ``key`` (the large ones mapped read-only), or None when there
        are none or they cannot be read."""
        folder = self.path(key)
        if not folder.is_dir():
            return None
        try:
            return {
                f.stem: np.asarray(np.load(f, allow_pickle=False, mmap_mode="r"
                                           if f.stat().st_size >= _MAPPED else None))
                for f in sorted(folder.glob("*.npy"))
            }  # fmt: skip
        except (OSError, ValueError, EOFError) as exc:
            log.warning("%s: unreadable (%s); building the scan index again", folder, exc)
            self.discard(key)
            return None

    def discard(self, key: str) -> None:
        """Remove what is saved under ``key`` (a folder that cannot be used: the next save
        would otherwise keep it, see :func:`~deepvibe.fileio.atomic_folder`)."""
        shutil.rmtree(self.path(key), ignore_errors=True)

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Save ``arrays`` under ``key`` (a folder written whole, then renamed into place:
        see :func:`~deepvibe.fileio.atomic_folder`); the folders of older keys are removed."""
        folder = self.path(key)
        try:
            with atomic_folder(folder) as tmp:
                for name, values in arrays.items():
                    np.save(tmp / f"{name}.npy", values, allow_pickle=False)
        except (OSError, DeepVibeError) as exc:
            log.warning(
                "%s: cannot save the scan index (%s); it is built on every run", folder, exc
            )
            return
        for old in folder.parent.glob(f"{Path(self.cache_file).name}.index-*"):
            if old != folder and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
