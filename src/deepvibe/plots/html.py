"""One self-contained HTML report per user: the Vibe DNA image and the recommendations table.

Self-contained means one file that opens offline: the CSS is inline, the DNA PNG is a base64
``data:`` URI, there is no script at all, and a Content-Security-Policy forbids loading
anything else. Every value from the data is HTML-escaped; a track id becomes a link to
``https://open.spotify.com/track/<id>`` only when it is a valid 22-character base62 Spotify id,
and that is the only kind of URL the file contains (the table's ``spotify_url`` column is not
shown: the link is rebuilt from the checked id instead of trusting the cell).
"""

from __future__ import annotations

import base64
import html
import logging
import math
import numbers
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

import deepvibe
from deepvibe.fileio import write_text_atomic

log = logging.getLogger(__name__)

_SPOTIFY_ID = re.compile(r"[0-9A-Za-z]{22}")  # used with fullmatch: no trailing newline slips by
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_NUM = ' class="num"'
_HIDDEN = {"spotify_url"}  # rebuilt from the checked track id, never copied from the data
_LABELS = {
    "rank": "#",
    "track_id": "track id",
    "track_name": "track",
    "artists": "artists",
    "popularity": "popularity",
    "similarity": "similarity",
    "decoder_score": "decoder score",
    "score": "score",
    "why": "why",
}

# Nothing may load: no script, no remote style, image or font; only inline CSS and data: images.
_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'"
)

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1d1d1f; background: #fafafa; margin: 0; }
main { max-width: 1200px; margin: 0 auto; padding: 24px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.2em; margin: 28px 0 8px; }
.meta, .notes, footer { color: #555; }
.notes { margin: 4px 0; padding-left: 20px; }
img.dna { max-width: 100%; height: auto; border: 1px solid #ddd; background: #fff; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: 0.92em; }
th, td { padding: 5px 9px; border-bottom: 1px solid #e5e5e5; text-align: left;
         vertical-align: top; }
th { position: sticky; top: 0; background: #f0f0f0; }
tbody tr:nth-child(even) { background: #f8f8f8; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.why { color: #333; max-width: 420px; }
a { color: #1a6b3c; }
footer { margin-top: 24px; font-size: 0.85em; }
"""


def spotify_track_url(track_id: object) -> str | None:
    """``https://open.spotify.com/track/<id>`` for a valid Spotify id (bare or
    ``spotify:track:<id>``), else None."""
    if not isinstance(track_id, str):
        return None
    tid = track_id[len("spotify:track:") :] if track_id.startswith("spotify:track:") else track_id
    return f"https://open.spotify.com/track/{tid}" if _SPOTIFY_ID.fullmatch(tid) else None


def write_html_report(
    path: str | os.PathLike[str],
    *,
    user: str,
    mode: str,
    table: pd.DataFrame,
    dna_png: bytes | None = None,
    title: str | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write the report to ``path`` atomically and return the path.

    table: the recommendations, best first (``Discovery.table``; a ``why`` column is shown
    last when present). dna_png: PNG bytes of the DNA plot, inlined; None leaves it out.
    notes: extra one-line facts shown under the title (checkpoint, source, settings).
    """
    text = render_html_report(
        user=user, mode=mode, table=table, dna_png=dna_png, title=title, notes=notes
    )
    out = Path(path)
    write_text_atomic(out, text)
    log.info("wrote %s", out)
    return out


def render_html_report(
    *,
    user: str,
    mode: str,
    table: pd.DataFrame,
    dna_png: bytes | None = None,
    title: str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The report as an HTML string (see :func:`write_html_report`)."""
    esc = _escape
    heading = title if title is not None else f"deepvibe recommendations for {user}"
    n = len(table)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{esc(heading)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        "<header>",
        f"<h1>{esc(heading)}</h1>",
        f'<p class="meta">user <strong>{esc(user)}</strong> · mode <strong>{esc(mode)}</strong>'
        f" · {n} track{'s' if n != 1 else ''}</p>",
    ]
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{esc(x)}</li>" for x in notes) + "</ul>")
    parts.append("</header>")
    if dna_png is not None:
        parts += ['<section class="dna">', "<h2>Vibe DNA</h2>", _image(dna_png, user), "</section>"]
    parts += ['<section class="recommendations">', "<h2>Recommendations</h2>", _table(table)]
    parts += ["</section>", f"<footer>written by deepvibe {esc(deepvibe.__version__)}</footer>"]
    parts += ["</main>", "</body>", "</html>", ""]
    return "\n".join(parts)


def _image(png: bytes, user: str) -> str:
    ok = isinstance(png, (bytes, bytearray)) and png.startswith(_PNG_SIGNATURE)
    if not ok or len(png) < 24 or png[12:16] != b"IHDR":
        raise ValueError("dna_png must be the bytes of a PNG image (e.g. plot_dna's file)")
    width, height = struct.unpack(">II", bytes(png[16:24]))  # the IHDR chunk follows the signature
    data = base64.b64encode(bytes(png)).decode("ascii")
    return (
        f'<img class="dna" src="data:image/png;base64,{data}" width="{width}" height="{height}" '
        f'alt="{_escape(f"Vibe DNA of {user}: percentile of each audio feature")}">'
    )


def _table(table: pd.DataFrame) -> str:
    columns = [c for c in table.columns if str(c) not in _HIDDEN]
    columns = [c for c in columns if str(c) != "why"] + [c for c in columns if str(c) == "why"]
    if not len(table):
        return "<p>No tracks left to recommend.</p>"
    numeric = {c for c in columns if pd.api.types.is_numeric_dtype(table[c].dtype)}
    head = "".join(
        f'<th{_NUM if c in numeric else ""} scope="col">{_escape(_LABELS.get(str(c), str(c)))}</th>'
        for c in columns
    )
    rows = []
    for record in table[columns].itertuples(index=False, name=None):
        cells = [_cell(str(c), v, c in numeric) for c, v in zip(columns, record, strict=True)]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<div class="table-wrap"><table>\n'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody>\n</table></div>"
    )


def _cell(column: str, value: object, numeric: bool) -> str:
    if column == "track_id":
        url = spotify_track_url(value)
        text = _escape(_text(value))
        if url is not None:
            return f'<td><a href="{_escape(url)}" rel="noopener noreferrer">{text}</a></td>'
        return f"<td>{text}</td>"
    css = _NUM if numeric else (' class="why"' if column == "why" else "")
    return f"<td{css}>{_escape(_text(value, column))}</td>"


def _text(value: object, column: str = "") -> str:
    """A cell as display text: empty for missing, integers plain, other floats to 4 places."""
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        if math.isnan(v):
            return ""
        if column in ("rank", "popularity") and v.is_integer():
            return str(int(v))
        return f"{v:.4f}"
    return str(value)


def _escape(text: object) -> str:
    """HTML-escape for text and for attribute values (quotes included)."""
    return html.escape(str(text), quote=True)
