"""HTML report: self-contained, escaped, links only to valid Spotify track ids."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from plots_support import tiny_png

from deepvibe.plots.html import render_html_report, spotify_track_url, write_html_report

GOOD = "3aJ2xuBiDLZnPFSOTz0q6i"
GOOD2 = "3iLYZnl6ssHEBZpA09rUmt"
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "wbr", "source"}


def table(why: bool = True) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "rank": [1, 2, 3, 4],
            "track_id": [GOOD, "javascript:alert(1)", f"spotify:track:{GOOD2}", GOOD + "\n"],
            "track_name": ["<script>alert(1)</script>", "Plain & simple", 'Say "hi"', "x"],
            "artists": ["A", "B", "<img src=x onerror=alert(1)>", "D"],
            "popularity": [12.0, np.nan, 0.0, 99.0],
            "similarity": [0.98765, 0.9, 0.8, 0.7],
            "score": [0.9, 0.8, 0.7, 0.6],
            "spotify_url": ["https://evil.example/x", "", "", "javascript:alert(2)"],
        }
    )
    if why:
        frame.insert(3, "why", ["close on energy", "<b>bold</b>", "", "tempo"])
    return frame


class Structure(HTMLParser):
    """Collects start tags, attributes and text; checks that tags close in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(text: str) -> Structure:
    parser = Structure()
    parser.feed(text)
    parser.close()
    return parser


def test_report_is_balanced_escaped_and_links_only_valid_ids(tmp_path: Path) -> None:
    out = write_html_report(
        tmp_path / "r" / "u1.html", user="u<1>", mode="gems", table=table(), dna_png=tiny_png(),
        notes=["checkpoint: best"],
    )  # fmt: skip
    text = out.read_text(encoding="utf-8")
    parsed = parse(text)
    assert parsed.errors == [] and parsed.stack == []
    names = [t for t, _ in parsed.tags]
    for tag in ("html", "head", "body", "main", "table", "thead", "tbody"):
        assert names.count(tag) == 1, tag
    assert names.count("tr") == 1 + 4
    # the data's markup is text, never tags or attributes
    assert "script" not in names and names.count("img") == 1
    assert not any(k.startswith("on") for _, attrs in parsed.tags for k in attrs)
    shown = "".join(parsed.text)
    assert "<script>alert(1)</script>" in shown and "<img src=x onerror=alert(1)>" in shown
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    # links: only the two valid ids (the spotify: URI linked by its bare id)
    hrefs = [attrs["href"] for tag, attrs in parsed.tags if tag == "a"]
    assert hrefs == [
        f"https://open.spotify.com/track/{GOOD}",
        f"https://open.spotify.com/track/{GOOD2}",
    ]
    assert "javascript:alert(1)" in shown and "javascript:alert(2)" not in text
    urls = re.findall(r"https?://[^\s\"'<>]+", text)
    assert urls and all(
        re.fullmatch(r"https://open\.spotify\.com/track/[0-9A-Za-z]{22}", u) for u in urls
    )
    assert "evil.example" not in text


def test_self_contained_png_inlined_and_why_last() -> None:
    text = render_html_report(user="u1", mode="standard", table=table(), dna_png=tiny_png())
    parsed = parse(text)
    (img,) = [attrs for tag, attrs in parsed.tags if tag == "img"]
    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix)
    assert base64.b64decode(img["src"][len(prefix) :]) == tiny_png()
    assert (img["width"], img["height"]) == ("2", "2")
    assert not any(tag in ("script", "link", "iframe", "object") for tag, _ in parsed.tags)
    assert not any(
        v and v.startswith(("http:", "https:", "//"))
        for tag, attrs in parsed.tags
        if tag != "a"
        for v in attrs.values()
    )
    headers = re.findall(r'<th[^>]*scope="col">([^<]*)</th>', text)
    assert headers == ["#", "track id", "track", "artists", "popularity", "similarity", "score",
                       "why"]  # fmt: skip
    assert "<td>12</td>" not in text and '<td class="num">12</td>' in text  # popularity, integer
    assert '<td class="num">0.9877</td>' in text  # 4 decimals
    no_why = render_html_report(user="u1", mode="standard", table=table(why=False))
    assert ">why</th>" not in no_why and "<img" not in no_why


def test_empty_table_and_bad_png() -> None:
    text = render_html_report(user="u1", mode="standard", table=table().head(0))
    assert "No tracks left to recommend" in text and parse(text).errors == []
    with pytest.raises(ValueError, match="PNG"):
        render_html_report(user="u1", mode="standard", table=table(), dna_png=b"GIF89a")


def test_written_atomically_without_temp_files(tmp_path: Path) -> None:
    out = write_html_report(tmp_path / "u.html", user="u", mode="standard", table=table())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.html"]
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("track_id", "url"),
    [
        (GOOD, f"https://open.spotify.com/track/{GOOD}"),
        (f"spotify:track:{GOOD}", f"https://open.spotify.com/track/{GOOD}"),
        (GOOD + "\n", None),
        (GOOD[:-1], None),
        (GOOD[:-1] + "-", None),
        ("javascript:alert(1)", None),
        ("ｓ" * 22, None),  # full-width letters are not base62
        (123, None),
    ],
)
def test_spotify_track_url(track_id: object, url: str | None) -> None:
    assert spotify_track_url(track_id) == url


def chromium() -> str | None:
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("headless check needs Chromium (/usr/bin/chromium or chromium on PATH)")
    from PIL import Image

    from deepvibe.plots.dna import plot_dna

    dna = plot_dna(["energy", "tempo"], [0.5, 120.0], [60.0, 30.0], tmp_path / "dna.png")
    page = write_html_report(
        tmp_path / "u.html", user="u1", mode="standard", table=table(), dna_png=dna.read_bytes()
    )
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1200,900", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.exists(), done.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1200, 900)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, bars and table, not a blank page
