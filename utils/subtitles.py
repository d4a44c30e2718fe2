"""Transcript output formats: plain text, SRT and WebVTT subtitles, JSON.

SRT: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, a blank line after each cue.
WebVTT: a ``WEBVTT`` header, ``HH:MM:SS.mmm`` times. Both are what video players (mpv, VLC, browsers) read.

A cue holds at most ``max_line_count`` lines of ``max_line_width`` columns (a Chinese character takes two), as
subtitle guidelines ask (42 columns, two lines): a longer segment is cut into several cues at its words' times where
it has them (and at pauses of ``CUE_PAUSE_S`` between words), else after its punctuation, its time shared by
length. Cues never overlap and last at least ``MIN_CUE_S``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from utils.io import write_together

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
# seconds a cue of text stays up at least where the next cue leaves room (subtitle guidelines: 5/6 s; a one-word
# sentence was up for 0.28 s, too short to read)
MIN_READ_S = 0.8
MAX_CUE_S = 7.0  # seconds of speech a cue holds at most where its words or clauses can be cut (guidelines: 7 s)
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


# what a line never breaks inside: a word ("200ms"), a Chinese character, or a sign, with the opening marks before it
# and the closing punctuation after it ("（中", "200ms，", "好。"), so no line starts with "，" or ends with "（"
_OPENING = "（「『【《〈〔"
_CLOSING = "，。！？；：、）》」』】〉〕…"
_ATOM = re.compile(rf"[{_OPENING}]*(?:[^\s\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f]+|"
                   rf"[\u2e80-\u9fff\uf900-\ufaff]|[^\s{_OPENING}])[{_CLOSING}]*\s*|\s+")
_CLAUSE_END = re.compile(r"[。！？!?；;，,、：:…]+\s*|[.]\s+")
_BREAK_AFTER = tuple("。！？!?；;，,、：:….")  # a line or cue ending in one of these is broken where it reads well


def wrap_lines(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` columns, broken between words (spaced text) or between characters
    (Chinese, punctuation kept with the character before it): as few lines as fit, broken after punctuation where
    that keeps them near even (我已经等了你半个小时了？/这个字怎么写？, not …小时了？这个/字怎么写？), else as even in
    length as possible; a word wider than a line gets a line of its own."""
    if width <= 0 or text_width(text) <= width:
        return [text]
    atoms = _ATOM.findall(text)
    lines = len(_fill(text, width))
    widths = [text_width(a) for a in atoms]

    def span(i: int, j: int) -> int:  # columns of atoms[i:j] on a line (its trailing space not shown)
        return sum(widths[i:j]) - (len(atoms[j - 1]) - len(atoms[j - 1].rstrip()))

    groups = _best_split(len(atoms), lambda i, j: j - i == 1 or span(i, j) <= width, span,
                         lambda k: _cut_cost("".join(atoms[max(0, k - 3):k])), text_width(text) / lines)
    return ["".join(atoms[i:j]).strip() for i, j in groups]


def _best_split(n: int, fits: Callable[[int, int], bool], width: Callable[[int, int], float],
                cut_cost: Callable[[int], float], target: float) -> list[tuple[int, int]]:
    """Items ``0..n`` in consecutive groups ``[i, j)``: each group ``fits``, as few groups as that allows, and among
    those the ones closest to ``target`` columns each (squared difference), a cut after item ``k - 1`` counting as
    ``cut_cost(k)`` groups a quarter of ``target`` off (:func:`_cut_cost`). ``fits`` must stay false once a group
    is too long (groups are grown from their end backwards until it fails)."""
    penalty = (target / 4) ** 2
    best: list[tuple[float, float, int]] = [(0, 0.0, -1)] + [(math.inf, math.inf, -1)] * n
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):
            if not fits(i, j):
                break
            if best[i][0] == math.inf:
                continue
            cost = best[i][1] + (width(i, j) - target) ** 2 + (0.0 if j == n else cut_cost(j) * penalty)
            if (best[i][0] + 1, cost) < best[j][:2]:
                best[j] = (best[i][0] + 1, cost, i)
    groups, j = [], n
    while j > 0:
        groups.append((best[j][2], j))
        j = best[j][2]
    return groups[::-1]


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
    """Whether ``text`` fits one cue: as few lines as it takes (:func:`_fill`; :func:`wrap_lines` lays out that
    many) are at most ``max_line_count``."""
    if layout.max_line_width <= 0 or text_width(text) <= layout.max_line_width:
        return True
    return len(_fill(text, layout.max_line_width)) <= (layout.max_line_count or 10 ** 9)


def _units(seg) -> list[tuple[float, float, str]]:
    """What a segment's cues are made of: its timed words, else its clauses (cut after punctuation; a clause too
    long for any line cut into words or characters) with the segment's time shared by their length."""
    if seg.words:
        texts = spaced_words(seg.text, [w.word for w in seg.words])
        return [(w.start, w.end, text) for w, text in zip(seg.words, texts, strict=True)]
    pieces, last = [], 0
    for m in _CLAUSE_END.finditer(seg.text):
        if _ABBREVIATION.search(seg.text[:m.end()]):  # "Mr. " ends no clause ("And Mr." was a cue of its own)
            continue
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


def spaced_words(text: str, words: Sequence[str]) -> list[str]:
    """``words`` (stripped, as a segment keeps them) with the space that comes before each in the segment's ``text``
    (" asked", but 银行 not " 行"), so that they join back into the text; a word not found where the text goes on
    gets a space between two spaced-script words. English cues built from words read "asknotwhatyourcountry…"."""
    out, pos = [], 0
    for k, word in enumerate(words):
        word = word.strip()
        at = text.find(word, pos) if word else -1
        if at >= 0 and not any(ch.isalnum() for ch in text[pos:at]):  # only spaces or punctuation skipped
            spaced = at > 0 and text[at - 1].isspace()
            pos = at + len(word)
        else:  # a word the text does not have here: spaced where neither side is a wide character
            prev = words[k - 1].strip() if k else ""
            spaced = bool(prev and word) and text_width(prev[-1]) == 1 and text_width(word[0]) == 1
        out.append((" " if spaced and k else "") + word)
    return out


def _split_unit(unit: tuple[float, float, str], layout: CueLayout) -> list[tuple[float, float, str]]:
    """A unit too wide for a whole cue, cut into words or characters (``_ATOM``), its time shared by their width
    (a space takes none: " bank" started its cue late). A unit that fits is kept whole however long it lasts: a
    timed word or a clause is not cut for time alone (谢谢。 said over 8 s was 谢 / 谢。)."""
    start, end, text = unit
    if _fits(text.strip(), layout):
        return [unit]
    atoms = _ATOM.findall(text)
    total = sum(text_width(a.strip()) for a in atoms) or 1
    out, t = [], start
    for a in atoms:
        e = t + (end - start) * text_width(a.strip()) / total
        out.append((t, e, a))
        t = e
    return out


def _segment_cues(seg, layout: CueLayout) -> list[tuple[float, float, str]]:
    """One segment as cues that fit ``layout``: its units (:func:`_units`) in runs split at pauses of
    ``CUE_PAUSE_S`` between timed words, each run in as few cues as fit, as even in length as that many allow (a
    98-character English sentence was "… behind the curtain" and then "on the left." alone)."""
    text = " ".join(seg.text.split())
    whole = _fits(text, layout) and seg.end - seg.start <= _longest(layout)  # one cue can hold the segment
    if layout.max_line_width <= 0 or (whole and not seg.words):
        return [(seg.start, seg.end, text)]
    units = [u for unit in _units(seg) for u in _split_unit(unit, layout)]
    runs = split_at_pauses(units, CUE_PAUSE_S if seg.words else math.inf, lambda u: u[0], lambda u: u[1])
    if len(runs) == 1 and whole:  # timed words, no pause among them: the segment's own text
        return [(seg.start, seg.end, text)]
    cues = [cue for run in runs for cue in _even_cues(run, layout)]
    return [(a, b, " ".join(t.split())) for a, b, t in cues]


def _longest(layout: CueLayout) -> float:
    """Seconds a cue holds at most: ``MAX_CUE_S`` under a line count, none without (a cue per segment)."""
    return MAX_CUE_S if layout.max_line_count else math.inf


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
    """``units`` gathered into as few cues as ``layout`` and ``MAX_CUE_S`` allow, cut after punctuation where that
    keeps them near even in length (银行 was cut across two cues, 了？ began one), else as even as the units let."""
    texts = [u[2] for u in units]
    # the columns of units i..j-1 on one line, from sums: each unit's text without its spaces, plus one space
    # between two units where either side has one
    at = [0]
    for text in texts:
        at.append(at[-1] + text_width(" ".join(text.split())))
    spaced = [0, 0] + [int(a[-1:].isspace() or b[:1].isspace()) for a, b in zip(texts, texts[1:])]
    gaps = list(itertools.accumulate(spaced))
    wide = [0, *itertools.accumulate(int(at[k + 1] - at[k] > layout.max_line_width) for k in range(len(texts)))]
    width, count = layout.max_line_width, layout.max_line_count or 10 ** 9

    def columns(i: int, j: int) -> int:
        return at[j] - at[i] + gaps[j] - gaps[i + 1]

    longest = _longest(layout)

    def fits(i: int, j: int) -> bool:
        if j - i == 1:
            return True
        if units[j - 1][1] - units[i][0] > longest:
            return False
        if not layout.max_line_count:
            return True
        n = columns(i, j)
        if n <= width:
            return True
        if n - (count - 1) > count * width:  # more than the lines hold, with a space dropped at every break
            return False
        if wide[j] - wide[i]:  # a unit wider than a line: broken inside it
            return len(_fill(" ".join("".join(texts[i:j]).split()), width)) <= count
        lines, line = 1, at[i + 1] - at[i]  # greedy, unit by unit (a word is not broken across lines)
        for k in range(i + 1, j):
            w = at[k + 1] - at[k]
            if line + spaced[k + 1] + w <= width:
                line += spaced[k + 1] + w
            else:
                lines, line = lines + 1, w
                if lines > count:
                    return False
        return True

    fewest = _fewest(len(units), fits)
    if fewest == 1:
        return [(units[0][0], units[-1][1], "".join(texts))]
    groups = _best_split(len(units), fits, columns, lambda k: _cut_cost(texts[k - 1]),
                         columns(0, len(units)) / fewest)
    return [(units[i][0], units[j - 1][1], "".join(texts[i:j])) for i, j in groups]


# titles that end in a full stop but not a sentence (case-sensitive: "no." and "etc." end sentences)
_ABBREVIATION = re.compile(r"(?:^|\s)(?:Mr|Mrs|Ms|Dr|Prof|Jr|Sr|vs|e\.g|i\.e)\.\s*$")


def _reads_well(text: str) -> bool:
    """Whether a line or cue may end after ``text``: after punctuation that ends a clause, not after "Mr." / "Dr."."""
    return text.rstrip().endswith(_BREAK_AFTER) and not _ABBREVIATION.search(text)


def _cut_cost(text: str) -> float:
    """What a line or cue ending after ``text`` costs (:func:`_best_split`): nothing after a clause
    (:func:`_reads_well`), 1 inside one, 4 after a title ("Mrs." ended a line, "Brown" began the next)."""
    return 0.0 if _reads_well(text) else 4.0 if _ABBREVIATION.search(text) else 1.0


def _fewest(n: int, fits: Callable[[int, int], bool]) -> int:
    """How few consecutive groups of items ``0..n`` that each ``fits`` there can be (greedy: grown while they fit)."""
    groups, i = 0, 0
    while i < n:
        j = i + 1
        while j < n and fits(i, j + 1):
            j += 1
        groups, i = groups + 1, j
    return groups


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
    if not words:  # a cue too short to read stays up longer, into the pause after it
        for k, (start, end, text) in enumerate(cues):
            room = cues[k + 1][0] if k + 1 < len(cues) else (transcript.duration or math.inf)
            if end - start < MIN_READ_S and room > end:
                cues[k] = (start, min(round(start + MIN_READ_S, 3), room), text)
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
    """The text, a line per segment (as OpenAI Whisper writes it): a 6-minute recording was one line of 3,000
    characters."""
    lines = [" ".join(seg.text.split()) for seg in transcript.segments if seg.text.strip()]
    return "\n".join(lines or [transcript.text]) + "\n"


def to_json(transcript: Transcript, source: str | None = None) -> str:
    """The transcript as JSON; ``source``: the audio it was read from, first (``"audio"``), when given."""
    data = transcript.to_dict() if source is None else {"audio": source, **transcript.to_dict()}
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


_WRITERS = {"txt": to_txt, "srt": to_srt, "vtt": to_vtt, "json": to_json}


def write_transcript(transcript: Transcript, output_dir: str | os.PathLike, stem: str,
                     formats: Sequence[str], word_cues: bool = False, source: str | None = None,
                     layout: CueLayout = CueLayout()) -> list[Path]:
    """Write ``output_dir/stem.<fmt>`` for every format, all of them or none (:func:`utils.io.write_together`: Ctrl-C
    between two formats left a .txt and .srt without their .vtt and .json); returns the paths written.
    ``word_cues``: SRT/VTT with one cue per word; ``source``: the audio file, named in the JSON; ``layout``: how
    much text an SRT/VTT cue holds."""
    texts: dict[Path, str] = {}
    for fmt in formats:
        if fmt not in _WRITERS:
            raise ValueError(f"unknown output format {fmt!r}; choose from {OUTPUT_FORMATS}")
        path = Path(output_dir) / f"{stem}.{fmt}"
        if fmt == "json":
            texts[path] = to_json(transcript, source)
        elif fmt in CUE_FORMATS:
            texts[path] = _WRITERS[fmt](transcript, words=word_cues, layout=layout)
        else:
            texts[path] = _WRITERS[fmt](transcript)
    write_together({path: (lambda f, text=text: f.write(text)) for path, text in texts.items()})
    return list(texts)
