"""The hybrid's track space kept on disk beside the database cache.

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
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path

import numpy as np

from deepvibe.data.tables import FeatureScaler
from deepvibe.errors import DeepVibeError
from deepvibe.fileio import atomic_path

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
