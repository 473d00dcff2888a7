"""The one track-id normaliser: every table, download and history goes through it.

A bare Spotify id, a ``spotify:track:`` URI and an ``open.spotify.com/track/`` URL name the
same track and become the bare 22-character id; other ids are kept (NFC, stripped), with a
float's ``"51.0"`` read back as ``"51"``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

import numpy as np
import pandas as pd

_SPOTIFY_ID = re.compile(r"^[0-9A-Za-z]{22}$")
_SPOTIFY_URL = re.compile(r"open\.spotify\.com/(?:intl-[a-z-]+/)?track/([0-9A-Za-z]{22})")
_URI_PREFIX = "spotify:track:"


def is_spotify_id(track_id: str) -> bool:
    return bool(_SPOTIFY_ID.match(track_id))


def _normalise_one(raw: str) -> str:
    text = unicodedata.normalize("NFC", raw).strip()
    if text.startswith(_URI_PREFIX):
        return text[len(_URI_PREFIX) :]
    match = _SPOTIFY_URL.search(text)
    if match:
        return match.group(1)
    if text.endswith(".0") and text[:-2].isdigit():  # a numeric id read through a float column
        return text[:-2]
    return text


def normalize_track_ids(values: Iterable[object] | pd.Series | np.ndarray) -> np.ndarray:
    """(n,) object array of bare track ids, in the order of ``values``.

    Each distinct raw value is normalised once (pandas factorize, a hash table), and the two
    common forms, a bare id and a ``spotify:track:`` URI, without a Python call per value: 5
    million rows of 10,000 distinct ids take about a second.
    """
    series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    text = series.astype(str).fillna("")  # pandas keeps NaN through astype(str)
    codes, uniques = pd.factorize(text, sort=False)
    raw = pd.Series(np.asarray(uniques, dtype=object), dtype=object)
    norm = raw.copy()
    bare = raw.str.fullmatch(r"[0-9A-Za-z]{22}").to_numpy(dtype=bool)
    uri = raw.str.fullmatch(r"spotify:track:[0-9A-Za-z]{22}").to_numpy(dtype=bool)
    norm[uri] = raw[uri].str.slice(len(_URI_PREFIX))
    rest = ~(bare | uri)
    norm[rest] = [_normalise_one(u) for u in raw[rest]]
    return norm.to_numpy(dtype=object)[codes]


def id_index(ids: Iterable[object] | np.ndarray | pd.Index) -> pd.Index:
    """Ids (track or user) as a hash index of Python strings, for ``get_indexer`` lookups on
    both sides (``id_index(known).get_indexer(id_index(wanted))``). pandas 3 would copy them
    into Arrow strings first: 3x slower for 1,000,000 ids, and again on every lookup."""
    return pd.Index(np.asarray(ids, dtype=object), dtype=object)
