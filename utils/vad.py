"""Voice activity detection: cut long audio at silences into chunks Whisper can decode in one window.

silero-vad's model ships inside the faster-whisper package (ONNX, run by onnxruntime), so this works offline
and without PyTorch. Long audio flows as::

    waveform (samples,) → speech regions [start, end) in samples → chunks of ≤ max_chunk_s seconds

A chunk spans consecutive speech regions (the short silences between them stay inside it, so Whisper's
timestamps inside a chunk are real time); chunks start and end in silence except where one speech region
is itself longer than the window, which is then cut hard.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from utils.audio import SAMPLE_RATE, WINDOW_S

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    """A piece of a waveform, in samples at SAMPLE_RATE: ``audio[start:end]``. ``breaks`` are the sample
    positions inside it where one speech region ends and the next begins (the middle of the silence between
    them): where the chunk can be cut in two without cutting a word. ``speech``: samples of speech inside it (the
    VAD's regions, padding included); None = not measured. ``lead``: samples of silence to decode before it, where
    its speech starts at the recording's first sample (:func:`with_lead`). ``spans``: those speech regions, (start,
    end) sample positions like ``start``/``end``; () = not known."""

    start: int
    end: int
    breaks: tuple[int, ...] = field(default=(), compare=False)
    speech: int | None = field(default=None, compare=False)
    lead: int = field(default=0, compare=False)
    spans: tuple[tuple[int, int], ...] = field(default=(), compare=False)

    @property
    def offset_s(self) -> float:
        """Start of the chunk in seconds."""
        return self.start / SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


FRAME = 512  # samples per silero-vad frame at 16 kHz (32 ms)
# silence decoded before a recording whose speech starts at its first sample: Whisper drops or misreads a first word
# that starts right at its window's start (a recording that starts with "近几年…" read without it), as streaming
# found for English ("the train" → "train"; utils.streaming pads its buffer the same way)
LEAD_S = 0.4
_CONTEXT = 64  # samples of the previous frame the model sees with each frame


@functools.lru_cache(maxsize=1)
def _session() -> Any:
    """The silero-vad v6 ONNX model that faster-whisper ships, on onnxruntime with one thread (numpy in and
    out: neither the model nor its callers import PyTorch, which costs 1.7 s of a ct2 command's start)."""
    from faster_whisper.vad import get_vad_model

    return get_vad_model().session


class SileroVad:
    """silero-vad, stateful: the speech probability of consecutive FRAME-sample frames (for streaming); the
    same model and state as faster-whisper's whole-waveform pass (``speech_regions``) frame by frame."""

    def __init__(self) -> None:
        self._session = _session()
        self.reset()

    def reset(self) -> None:
        """Forget the audio seen so far (a new stream)."""
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)

    def __call__(self, frame: np.ndarray) -> float:
        """Speech probability of the next frame: float32 samples, shape (FRAME,)."""
        frame = np.ascontiguousarray(frame, dtype=np.float32)
        if frame.shape != (FRAME,):
            raise ValueError(f"silero-vad takes frames of {FRAME} samples, got shape {frame.shape}")
        x = np.concatenate([self._context, frame])[None]
        prob, self._h, self._c = self._session.run(None, {"input": x, "h": self._h, "c": self._c})
        self._context = frame[-_CONTEXT:]
        return float(prob[0])


def speech_regions(
    audio: np.ndarray,
    *,
    threshold: float = 0.5,
    min_speech_ms: int = 250,
    min_silence_ms: int = 160,
    speech_pad_ms: int = 200,
    max_speech_s: float = WINDOW_S - 1.0,
) -> list[Chunk]:
    """Speech regions of a 16 kHz mono waveform, found by silero-vad (faster-whisper's segmentation of its
    probabilities: hysteresis between ``threshold`` and ``threshold`` − 0.15).

    Args:
        audio: float32 waveform, shape (samples,), at SAMPLE_RATE.
        threshold: speech probability above which a 32 ms frame is speech.
        min_speech_ms: shorter speech bursts are dropped.
        min_silence_ms: silences shorter than this do not end a region.
        speech_pad_ms: padding added on both sides of every region.
        max_speech_s: longer regions are split (at the longest inner pause silero finds).

    Returns:
        Non-overlapping regions in time order, in samples.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    stamps = get_speech_timestamps(
        np.ascontiguousarray(audio, dtype=np.float32),
        VadOptions(threshold=threshold, min_speech_duration_ms=min_speech_ms, min_silence_duration_ms=min_silence_ms,
                   speech_pad_ms=speech_pad_ms, max_speech_duration_s=max_speech_s),
        sampling_rate=SAMPLE_RATE,
    )
    regions: list[Chunk] = []
    for s in stamps:
        start, end = max(0, int(s["start"])), min(len(audio), int(s["end"]))
        if regions and start < regions[-1].end:  # padding made neighbours overlap
            start = regions[-1].end
        if end > start:
            regions.append(Chunk(start, end))
    return regions


def merge_regions(regions: list[Chunk], max_chunk_s: float = WINDOW_S) -> list[Chunk]:
    """Group consecutive speech regions into as few chunks of at most ``max_chunk_s`` seconds as packing them in
    order makes, cut between regions the VAD kept apart where it can.

    Two regions whose padding touches (a pause shorter than twice ``speech_pad_ms``: mostly one inside a sentence)
    are cut apart only where no grouping into that many chunks avoids it; packing cuts wherever the window ends, so
    a sentence said again and again was cut after its first words, which the model dropped at the end of one window
    and misread at the start of the next. Among equal groupings the earlier chunks are the longer, as packed. A
    region longer than the limit becomes several hard-cut chunks.
    """
    limit = int(max_chunk_s * SAMPLE_RATE)
    units: list[Chunk] = []  # regions, those longer than the limit cut hard into pieces
    hard: list[bool] = []  # the unit starts at a hard cut (it continues the previous unit's speech)
    for region in regions:
        for start in range(region.start, region.end, limit):
            end = min(region.end, start + limit)
            units.append(Chunk(start, end))
            hard.append(start != region.start)
    # best[j]: (chunks, cuts between touching regions) of the best grouping of units[:j]; first[j]: where its last
    # chunk starts. A hard cut is made in every grouping (the piece before it fills a window).
    # Every unit fits a window, so every prefix has a grouping (math.inf: none found yet).
    best: list[tuple[float, float]] = [(0, 0)] + [(math.inf, math.inf)] * len(units)
    first = [0] * (len(units) + 1)
    for j in range(1, len(units) + 1):
        for i in range(j - 1, -1, -1):  # the latest start first: on ties the earlier chunks stay the longest
            if units[j - 1].end - units[i].start > limit:
                break
            count, touching = best[i]
            option = (count + 1, touching + (0 < i and not hard[i] and units[i].start <= units[i - 1].end))
            if option < best[j]:
                best[j], first[j] = option, i
    chunks: list[Chunk] = []
    j = len(units)
    while j > 0:
        group = range(first[j], j)
        breaks = tuple((units[k - 1].end + units[k].start) // 2 for k in group[1:] if not hard[k])
        speech = sum(units[k].end - units[k].start for k in group)
        chunks.append(Chunk(units[group[0]].start, units[j - 1].end, breaks, speech,
                            spans=tuple((units[k].start, units[k].end) for k in group)))
        j = first[j]
    return chunks[::-1]


def part(chunk: Chunk, start: int, end: int) -> Chunk:
    """The samples ``start``-``end`` of ``chunk`` (positions like ``chunk.start``) as a chunk, with the breaks and
    the speech regions (cut to it) that lie inside."""
    return Chunk(start, end, tuple(b for b in chunk.breaks if start < b < end),
                 spans=tuple((max(s, start), min(e, end)) for s, e in chunk.spans if s < end and e > start))


def cut_every(chunk: Chunk, seconds: float) -> list[Chunk]:
    """``chunk`` cut at its breaks into pieces of about ``seconds`` each: from each piece's start, the break
    nearest ``seconds`` later, if one lies at least half of that from both the start and the chunk's end."""
    pieces, start, length = [], chunk.start, seconds * SAMPLE_RATE
    while fits := [b for b in chunk.breaks if b - start >= length / 2 and chunk.end - b >= length / 2]:
        cut = min(fits, key=lambda b: abs(b - start - length))
        pieces.append(part(chunk, start, cut))
        start = cut
    pieces.append(part(chunk, start, chunk.end))
    return pieces


def whole_clip(audio: np.ndarray) -> Chunk:
    """All of ``audio`` (a clip of at most one window) as one chunk, with the breaks and the speech silero-vad finds
    in it: a sentence said several times in one clip can then be cut at its pauses like a long recording's chunk
    (``utils.transcribe``). No breaks and ``speech`` None when the VAD finds no speech; a ``lead`` when the speech
    starts at the first sample (:func:`with_lead`)."""
    window = max(WINDOW_S, len(audio) / SAMPLE_RATE)
    regions = speech_regions(audio)
    merged = merge_regions(regions, window)  # one chunk
    if not merged:
        return Chunk(0, len(audio))
    return replace(merged[0], start=0, end=len(audio), lead=_lead(regions, len(audio), window))


def _lead(regions: list[Chunk], length: int, window_s: float) -> int:
    """LEAD_S in samples (as much as the window has room for after ``length`` samples) when the first speech region
    starts at the recording's first sample (less than the VAD's padding of silence before the speech), else 0."""
    if not regions or regions[0].start > 0:
        return 0
    return max(0, min(int(LEAD_S * SAMPLE_RATE), int(window_s * SAMPLE_RATE) - length))


def with_lead(audio: np.ndarray, chunks: list[Chunk]) -> tuple[np.ndarray, list[Chunk]]:
    """``audio`` with ``chunks[0].lead`` samples of silence before it, and the chunks moved with it (the first one
    starting at the silence); unchanged without a lead. Times decoded from the result are ``lead`` too late."""
    lead = chunks[0].lead if chunks else 0
    if not lead:
        return audio, chunks
    moved = [replace(c, start=c.start + lead if k else 0, end=c.end + lead, breaks=tuple(b + lead for b in c.breaks),
                     spans=tuple((s + lead, e + lead) for s, e in c.spans), lead=0) for k, c in enumerate(chunks)]
    return np.concatenate([np.zeros(lead, dtype=np.float32), np.asarray(audio, dtype=np.float32)]), moved


def split_on_silence(audio: np.ndarray, max_chunk_s: float = WINDOW_S) -> list[Chunk]:
    """Cut a waveform at silences into chunks of at most ``max_chunk_s`` seconds covering all speech; the first has a
    ``lead`` when the speech starts at the first sample (:func:`with_lead`).

    Returns an empty list when silero-vad finds no speech.
    """
    regions = speech_regions(audio)
    chunks = merge_regions(regions, max_chunk_s)
    if chunks:
        chunks[0] = replace(chunks[0], lead=_lead(regions, chunks[0].end - chunks[0].start, max_chunk_s))
    logger.debug("VAD: %.1f s of audio → %d chunks, %.1f s of them", len(audio) / SAMPLE_RATE, len(chunks),
                 sum(c.duration_s for c in chunks))
    return chunks
