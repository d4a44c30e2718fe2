"""Transcript output formats: plain text, SRT and WebVTT subtitles, JSON.

SRT: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, a blank line after each cue.
WebVTT: a ``WEBVTT`` header, ``HH:MM:SS.mmm`` times. Both are what video players (mpv, VLC, browsers) read.

A cue holds at most ``max_line_count`` lines of ``max_line_width`` columns (a Chinese character takes two), as
subtitle guidelines ask (42 columns, two lines): a longer segment is cut into several cues at its words' times where
it has them (and at pauses of ``CUE_PAUSE_S`` between words), else after its punctuation, its time shared by
length. Cues never overlap and last at least ``MIN_CUE_S``.
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from utils.io import write_text_atomic

T = TypeVar("T")

if TYPE_CHECKING:
    from utils.transcribe import Transcript

OUTPUT_FORMATS = ("txt", "srt", "vtt", "json")
CUE_FORMATS = ("srt", "vtt")  # subtitles: a cue per segment, so segment timestamps are needed


def format_timestamp(seconds: float, decimal_marker: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT) or, with ``decimal_marker="."``, ``HH:MM:SS.mmm`` (WebVTT)."""
    if seconds < 0:
        raise ValueError(f"timestamp must be non-negative, got {seconds}")
    ms = int(round(seconds * 1000.0))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


MIN_CUE_S = 0.1  # seconds a cue lasts at least (a word Whisper timed as 0 s long got a 1 ms cue)
CUE_PAUSE_S = 1.0  # a pause between timed words this long starts a new cue


@dataclass(frozen=True)
class CueLayout:
    """How much text a cue holds: ``max_line_width`` columns (a wide character, Chinese, takes two) on at most
    ``max_line_count`` lines; 0 = no limit (a cue per segment, on one line)."""

    max_line_width: int = 42
    max_line_count: int = 2

    def __post_init__(self) -> None:
        if self.max_line_width < 0 or self.max_line_count < 0:
            raise ValueError("max_line_width and max_line_count must be >= 0 (0: no limit)")


def text_width(text: str) -> int:
    """Columns ``text`` takes on screen: 2 for a wide (East Asian) character, 1 for any other."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


_ATOM = re.compile(r"[^\s\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f]+\s*|"
                   r"[\u2e80-\u9fff\uf900-\ufaff][\u3000-\u303f\uff00-\uffef]*\s*|\S\s*|\s+")
_CLAUSE_END = re.compile(r"[。！？!?；;，,、：:…]+\s*|[.]\s+")


def wrap_lines(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` columns, broken between words (spaced text) or between characters
    (Chinese, punctuation kept with the character before it), as even in length as that many lines allow; a word
    wider than a line gets a line of its own."""
    if width <= 0 or text_width(text) <= width:
        return [text]
    lines = _fill(text, width)
    for even in range(-(-text_width(text) // len(lines)), width):  # the narrowest width giving as many lines
        if len(balanced := _fill(text, even)) <= len(lines):
            return balanced
    return lines


def _fill(text: str, width: int) -> list[str]:
    """Greedy: as much of ``text`` on each line as ``width`` columns hold."""
    lines: list[str] = []
    line = ""
    for atom in _ATOM.findall(text):
        if line and text_width((line + atom).rstrip()) > width:
            lines.append(line.rstrip())
            line = atom.lstrip()
        else:
            line += atom
    if line.strip():
        lines.append(line.rstrip())
    return lines


def _fits(text: str, layout: CueLayout) -> bool:
    if layout.max_line_width <= 0:
        return True
    return len(wrap_lines(text, layout.max_line_width)) <= (layout.max_line_count or 10 ** 9)


def _units(seg) -> list[tuple[float, float, str]]:
    """What a segment's cues are made of: its timed words, else its clauses (cut after punctuation; a clause too
    long for any line cut into words or characters) with the segment's time shared by their length."""
    if seg.words:
        return [(w.start, w.end, w.word) for w in seg.words]
    pieces, last = [], 0
    for m in _CLAUSE_END.finditer(seg.text):
        pieces.append(seg.text[last:m.end()])
        last = m.end()
    pieces.append(seg.text[last:])
    pieces = [p for p in pieces if p.strip()]
    total = sum(text_width(p) for p in pieces) or 1
    units, t = [], seg.start
    for p in pieces:
        end = t + (seg.end - seg.start) * text_width(p) / total
        units.append((t, end, p))
        t = end
    return units


def _split_unit(unit: tuple[float, float, str], layout: CueLayout) -> list[tuple[float, float, str]]:
    """A unit too wide for a whole cue, cut into words or characters (``_ATOM``), its time shared by width."""
    start, end, text = unit
    if _fits(text.strip(), layout):
        return [unit]
    atoms = _ATOM.findall(text)
    total = sum(text_width(a) for a in atoms) or 1
    out, t = [], start
    for a in atoms:
        e = t + (end - start) * text_width(a) / total
        out.append((t, e, a))
        t = e
    return out


def _segment_cues(seg, layout: CueLayout) -> list[tuple[float, float, str]]:
    """One segment as cues that fit ``layout``: its units (:func:`_units`) in runs split at pauses of
    ``CUE_PAUSE_S`` between timed words, each run in as few cues as fit, as even in length as that many allow (a
    98-character English sentence was "… behind the curtain" and then "on the left." alone)."""
    text = " ".join(seg.text.split())
    if layout.max_line_width <= 0 or (_fits(text, layout) and not seg.words):
        return [(seg.start, seg.end, text)]
    units = [u for unit in _units(seg) for u in _split_unit(unit, layout)]
    runs = split_at_pauses(units, CUE_PAUSE_S if seg.words else math.inf, lambda u: u[0], lambda u: u[1])
    if len(runs) == 1 and _fits(text, layout):  # timed words, no pause among them: the segment's own text
        return [(seg.start, seg.end, text)]
    cues = [cue for run in runs for cue in _even_cues(run, layout)]
    return [(a, b, " ".join(t.split())) for a, b, t in cues]


def split_at_pauses(items: Sequence[T], pause_s: float, start: Callable[[T], float],
                    end: Callable[[T], float]) -> list[list[T]]:
    """``items`` (timed: ``start``/``end`` in seconds) in runs, a new one after each pause of at least ``pause_s``
    seconds between two of them."""
    runs: list[list[T]] = []
    for item in items:
        if runs and start(item) - end(runs[-1][-1]) < pause_s:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def _even_cues(units: list[tuple[float, float, str]], layout: CueLayout) -> list[tuple[float, float, str]]:
    """``units`` gathered into as few cues as ``layout`` allows, each as close to an even share as the units let."""
    fewest = _gather(units, layout, math.inf)
    if len(fewest) > 1:
        total = text_width("".join(u[2] for u in units))
        for share in range(-(-total // len(fewest)), total + 1):
            if len(even := _gather(units, layout, share)) <= len(fewest):
                return even
    return fewest


def _gather(units: list[tuple[float, float, str]], layout: CueLayout, share: float) -> list[tuple[float, float, str]]:
    """Greedy: a unit joins the cue while the cue still fits ``layout`` and is at most ``share`` columns wide."""
    cues: list[tuple[float, float, str]] = []
    start, end, joined = units[0]
    for u_start, u_end, u_text in units[1:]:
        candidate = joined + u_text
        if text_width(candidate.strip()) > share or not _fits(" ".join(candidate.split()), layout):
            cues.append((start, end, joined))
            start, end, joined = u_start, u_end, u_text
        else:
            end, joined = u_end, candidate
    cues.append((start, end, joined))
    return cues


def _cues(transcript: Transcript, words: bool = False, layout: CueLayout = CueLayout()
          ) -> list[tuple[float, float, str]]:
    """Non-empty segments (or, with ``words``, the words of segments that have them) as (start, end, text): each
    segment in cues that fit ``layout`` (lines joined by newlines), in order, none overlapping the next, each at
    least ``MIN_CUE_S`` long (where the audio leaves room). A piece that would start at or after the audio's end
    (pieces pushed there by the ones before, or timed at its very end) joins the cue before it: cues of 1 ms past
    the end of a 52.204 s file came out of five zero-length segments at 51.912 s."""
    if words:
        pieces = [(w.start, w.end, " ".join(w.word.split())) for seg in transcript.segments for w in seg.words]
    else:
        pieces = [cue for seg in transcript.segments if seg.text.strip() for cue in _segment_cues(seg, layout)]
    cues: list[tuple[float, float, str]] = []
    prev_end = 0.0
    for start, end, text in pieces:
        if not text:
            continue
        start = max(start, prev_end)
        end = max(end, start + MIN_CUE_S)
        lines = [text] if words else wrap_lines(text, layout.max_line_width)
        text = "\n".join(lines).replace("-->", "->")
        if transcript.duration and start >= transcript.duration - 0.001:
            if cues:  # no room left after the cue before: it shows this text too
                last_start, last_end, last_text = cues[-1]
                cues[-1] = (last_start, last_end, last_text + (" " if words else "\n") + text)
                continue
            start = max(0.0, transcript.duration - MIN_CUE_S)
        if transcript.duration and end > transcript.duration:
            end = max(transcript.duration, start + 0.001)
        cues.append((start, end, text))
        prev_end = end
    return cues


def to_srt(transcript: Transcript, words: bool = False, layout: CueLayout = CueLayout()) -> str:
    """SubRip subtitles; ``words``: one cue per word (needs word timestamps); ``layout``: how much text a cue
    holds."""
    blocks = [
        f"{i}\n{format_timestamp(start)} --> {format_timestamp(end)}\n{text}\n"
        for i, (start, end, text) in enumerate(_cues(transcript, words, layout), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(transcript: Transcript, words: bool = False, layout: CueLayout = CueLayout()) -> str:
    """WebVTT subtitles; ``words``: one cue per word (needs word timestamps); ``layout``: how much text a cue
    holds."""
    blocks = ["WEBVTT\n"] + [
        f"{format_timestamp(start, '.')} --> {format_timestamp(end, '.')}\n{text}\n"
        for start, end, text in _cues(transcript, words, layout)
    ]
    return "\n".join(blocks)


def to_txt(transcript: Transcript) -> str:
    return transcript.text + "\n"


def to_json(transcript: Transcript, source: str | None = None) -> str:
    """The transcript as JSON; ``source``: the audio it was read from, first (``"audio"``), when given."""
    data = transcript.to_dict() if source is None else {"audio": source, **transcript.to_dict()}
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


_WRITERS = {"txt": to_txt, "srt": to_srt, "vtt": to_vtt, "json": to_json}


def write_transcript(transcript: Transcript, output_dir: str | os.PathLike, stem: str,
                     formats: Sequence[str], word_cues: bool = False, source: str | None = None,
                     layout: CueLayout = CueLayout()) -> list[Path]:
    """Write ``output_dir/stem.<fmt>`` for every format (atomically); returns the paths written.
    ``word_cues``: SRT/VTT with one cue per word; ``source``: the audio file, named in the JSON; ``layout``: how
    much text an SRT/VTT cue holds."""
    paths = []
    for fmt in formats:
        if fmt not in _WRITERS:
            raise ValueError(f"unknown output format {fmt!r}; choose from {OUTPUT_FORMATS}")
        path = Path(output_dir) / f"{stem}.{fmt}"
        if fmt == "json":
            text = to_json(transcript, source)
        elif fmt in CUE_FORMATS:
            text = _WRITERS[fmt](transcript, words=word_cues, layout=layout)
        else:
            text = _WRITERS[fmt](transcript)
        write_text_atomic(path, text)
        paths.append(path)
    return paths
