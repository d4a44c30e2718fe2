"""Transcript output formats: plain text, SRT and WebVTT subtitles, JSON.

SRT: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, a blank line after each cue.
WebVTT: a ``WEBVTT`` header, ``HH:MM:SS.mmm`` times. Both are what video players (mpv, VLC, browsers) read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from utils.io import write_text_atomic

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


def _cues(transcript: Transcript, words: bool = False) -> list[tuple[float, float, str]]:
    """Non-empty segments (or, with ``words``, the words of segments that have them) as (start, end, text),
    one line each, with end > start."""
    pieces = [(w.start, w.end, w.word) for seg in transcript.segments for w in seg.words] if words else \
        [(seg.start, seg.end, seg.text) for seg in transcript.segments]
    cues = []
    for start, end, text in pieces:
        text = " ".join(text.split())
        if text:
            cues.append((start, max(end, start + 0.001), text.replace("-->", "->")))
    return cues


def to_srt(transcript: Transcript, words: bool = False) -> str:
    """SubRip subtitles; ``words``: one cue per word (needs word timestamps)."""
    blocks = [
        f"{i}\n{format_timestamp(start)} --> {format_timestamp(end)}\n{text}\n"
        for i, (start, end, text) in enumerate(_cues(transcript, words), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(transcript: Transcript, words: bool = False) -> str:
    """WebVTT subtitles; ``words``: one cue per word (needs word timestamps)."""
    blocks = ["WEBVTT\n"] + [
        f"{format_timestamp(start, '.')} --> {format_timestamp(end, '.')}\n{text}\n"
        for start, end, text in _cues(transcript, words)
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
                     formats: Sequence[str], word_cues: bool = False, source: str | None = None) -> list[Path]:
    """Write ``output_dir/stem.<fmt>`` for every format (atomically); returns the paths written.
    ``word_cues``: SRT/VTT with one cue per word; ``source``: the audio file, named in the JSON."""
    paths = []
    for fmt in formats:
        if fmt not in _WRITERS:
            raise ValueError(f"unknown output format {fmt!r}; choose from {OUTPUT_FORMATS}")
        path = Path(output_dir) / f"{stem}.{fmt}"
        if fmt == "json":
            text = to_json(transcript, source)
        else:
            text = _WRITERS[fmt](transcript, words=True) if word_cues and fmt in ("srt", "vtt") else \
                _WRITERS[fmt](transcript)
        write_text_atomic(path, text)
        paths.append(path)
    return paths
