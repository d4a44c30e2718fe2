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
from itertools import chain
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from utils.audio import SAMPLE_RATE, WINDOW_S, frame_levels_db

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
# a clip of at most one window whose speech starts after this much silence is decoded from LEAD_S before its speech
# (the VAD's padding is more): whisper-base read 21.6 s of silence before two real AISHELL-1 sentences (a 29.9 s file)
# as "将将将…" over 0-25.8 s and left the sentences out, and with 21.7 s of silence read one of them three times there
# (leads of 5-15 s read right)
CLIP_SILENCE_S = 10.0
_CONTEXT = 64  # samples of the previous frame the model sees with each frame
# what the VAD reads of a recording (:func:`vad_input`): silero-vad misses speech under a DC offset, mains hum or at a
# low level (10 real English clips 60 s apart: at -35 / -45 dBFS, with a DC offset of 0.4 or a 50 Hz hum of 0.05-0.3
# it found 31-43 of their 46 s of speech, and whole sentences were not decoded; Whisper itself reads them right)
VAD_HIGH_PASS_HZ = 100.0  # below it: DC, hum, rumble; no speech the VAD needs
# ... filtered out when it holds more of the energy than the rest: real recordings hold 0.0001-0.26 of theirs there
# (a fast spontaneous talk 0.51), the DC offsets and hums above 0.68-0.999. Below it the VAD reads the recording as
# it is: filtering moves some of its region boundaries by a 32 ms frame, and changes nothing else
VAD_LOW_BAND_SHARE = 0.5
VAD_QUIET_PEAK = 0.1  # a recording whose loud samples (99.9th percentile) stay below this is raised to ...
VAD_TARGET_PEAK = 0.3  # ... this
VAD_MAX_GAIN = 1000.0  # 60 dB at most
# ... and not at all when its loud samples stay below this (-80 dBFS, 3.3 steps of a 16-bit file): dither and a
# quiet room's noise. Raised by 60 dB, a room's -90 dBFS noise (two 16-bit steps) read at up to 0.43-0.56 speech
# probability across random draws, and whisper-base read "You"; five real English recordings whose peaks are at
# -65 / -70 dBFS (loud samples at -73 / -78 dBFS) are still found (at -70 dBFS the floor lost them all)
VAD_SILENT_PEAK = 10 ** (-80 / 20)


@functools.lru_cache(maxsize=1)
def _session() -> Any:
    """The silero-vad v6 ONNX model that faster-whisper ships, on onnxruntime with one thread (numpy in and
    out: neither the model nor its callers import PyTorch, which costs 1.7 s of a ct2 command's start)."""
    from faster_whisper.vad import get_vad_model

    return get_vad_model().session


STREAM_PEAK_RELEASE_S = 10.0  # a stream's level (SileroVad) forgets a loud frame by half in this time
STREAM_LEVEL_AFTER_S = 1.0  # ... and is known after this much sound (frames not all zero)
# a stream's DC offset (a cheap microphone, a sound card's bias) is taken out by a one-pole DC blocker (-3 dB at
# 12.8 Hz) while it holds more than half of the stream's recent energy (the last ~STREAM_DC_AVERAGE_S), and until it
# holds less than a tenth: under a DC offset of 0.4 silero-vad found the first sentence of a real English stream
# 1.4 s late and the live text lost its first four words; a clean stream is read as it is (as :func:`vad_input`
# reads a clean recording), so its frames are the whole-waveform pass's
STREAM_DC_POLE = 0.995
STREAM_DC_SHARE_ON, STREAM_DC_SHARE_OFF = 0.5, 0.1
STREAM_DC_AVERAGE_S = 2.0


class DcBlocker:
    """y[n] = x[n] - x[n-1] + r·y[n-1] over consecutive blocks (exact across block boundaries), and the share of
    the recent energy it takes out (exponential average over ``average_s``)."""

    def __init__(self, pole: float = STREAM_DC_POLE, average_s: float = STREAM_DC_AVERAGE_S) -> None:
        self.pole, self.average_s = pole, average_s
        self._x = self._y = 0.0  # last input and output sample
        self._energy = self._removed = 0.0  # averaged energy of the input and of what the filter takes out

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """The filtered block: float32 samples, shape (n,) (float64 inside)."""
        x = np.asarray(block, dtype=np.float64)
        if not len(x):
            return np.asarray(block, dtype=np.float32)
        d = np.diff(x, prepend=self._x)
        powers = self.pole ** np.arange(len(x), dtype=np.float64)
        y = powers * (np.cumsum(d / powers) + self.pole * self._y)
        self._x, self._y = float(x[-1]), float(y[-1])
        keep = math.exp(-len(x) / (self.average_s * SAMPLE_RATE))
        self._energy = keep * self._energy + (1 - keep) * float(np.mean(x * x))
        self._removed = keep * self._removed + (1 - keep) * float(np.mean((x - y) ** 2))
        return y.astype(np.float32)

    @property
    def share(self) -> float:
        """Share (0-1) of the recent energy below the blocker's cutoff (0 before any sound)."""
        return self._removed / self._energy if self._energy > 0 else 0.0


class SileroVad:
    """silero-vad, stateful: the speech probability of consecutive FRAME-sample frames (for streaming); the
    same model and state as faster-whisper's whole-waveform pass (``speech_regions``) frame by frame. A quiet
    stream is raised as :func:`vad_input` raises a quiet recording: by its level so far (the loudest sample, at
    once up, halving in ``STREAM_PEAK_RELEASE_S``; a quiet microphone or file at -45 dBFS lost whole sentences),
    known after ``STREAM_LEVEL_AFTER_S`` of sound: before it, the first syllables of a normal stream would be raised
    by their own low level (the probabilities differed from the whole-waveform pass's by up to 0.12 there). A stream
    with a DC offset is read through a DC blocker (:class:`DcBlocker`, ``STREAM_DC_SHARE_ON``)."""

    def __init__(self) -> None:
        self._session = _session()
        self.reset()

    def reset(self) -> None:
        """Forget the audio seen so far (a new stream)."""
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        self._peak = 0.0
        self._sound_s = 0.0  # seconds of frames that are not all zero
        self._dc = DcBlocker()
        self._blocking = False  # the frames read are the DC blocker's

    def __call__(self, frame: np.ndarray) -> float:
        """Speech probability of the next frame: float32 samples, shape (FRAME,)."""
        frame = np.ascontiguousarray(frame, dtype=np.float32)
        if frame.shape != (FRAME,):
            raise ValueError(f"silero-vad takes frames of {FRAME} samples, got shape {frame.shape}")
        blocked = self._dc(frame)
        share = self._dc.share
        self._blocking = share > (STREAM_DC_SHARE_OFF if self._blocking else STREAM_DC_SHARE_ON)
        if self._blocking:
            frame = blocked
        release = 0.5 ** (FRAME / SAMPLE_RATE / STREAM_PEAK_RELEASE_S)
        loudest = float(np.abs(frame).max())
        self._peak = max(loudest, self._peak * release)
        self._sound_s += FRAME / SAMPLE_RATE if loudest > 0 else 0.0
        if self._sound_s >= STREAM_LEVEL_AFTER_S:
            frame = raised(frame, self._peak)
        x = np.concatenate([self._context, frame])[None]
        prob, self._h, self._c = self._session.run(None, {"input": x, "h": self._h, "c": self._c})
        self._context = frame[-_CONTEXT:]
        return float(prob[0])


def high_pass(audio: np.ndarray, cutoff_hz: float = VAD_HIGH_PASS_HZ, block: int = 1 << 15) -> np.ndarray:
    """``audio`` without its content below ``cutoff_hz`` (DC offset, mains hum): FFT blocks of ``block`` samples,
    Hann-windowed at 50 % overlap (the windows sum to 1), the low bins zeroed. float32, same shape. ~0.6 ms per
    second of audio (numpy only)."""
    audio = np.asarray(audio, dtype=np.float32)
    hop = block // 2
    window = np.hanning(block + 1)[:-1].astype(np.float32)  # periodic
    padded = np.concatenate([np.zeros(hop, np.float32), audio, np.zeros(block, np.float32)])
    out = np.zeros_like(padded)
    low = int(cutoff_hz * block / SAMPLE_RATE) + 1
    for start in range(0, len(padded) - block + 1, hop):
        spectrum = np.fft.rfft(padded[start: start + block] * window)
        spectrum[:low] = 0
        out[start: start + block] += np.fft.irfft(spectrum, block).astype(np.float32)
    return out[hop: hop + len(audio)]


def low_band_share(audio: np.ndarray, cutoff_hz: float = VAD_HIGH_PASS_HZ, block: int = 1 << 15) -> float:
    """The share of ``audio``'s energy below ``cutoff_hz`` (0-1), from the spectra of consecutive blocks of ``block``
    samples (~0.15 ms per second of audio; :func:`high_pass` costs four times that)."""
    low = int(cutoff_hz * block / SAMPLE_RATE) + 1
    below = total = 0.0
    for start in range(0, len(audio), block):
        power = np.abs(np.fft.rfft(audio[start: start + block], block)) ** 2
        below += float(power[:low].sum())
        total += float(power.sum())
    return below / total if total > 0 else 0.0


def vad_input(audio: np.ndarray) -> np.ndarray:
    """The copy of a waveform the VAD reads: :func:`high_pass` filtered when most of its energy lies below
    ``VAD_HIGH_PASS_HZ`` (``VAD_LOW_BAND_SHARE``), and raised to ``VAD_TARGET_PEAK`` when its loud samples (the 99.9th
    percentile) stay below ``VAD_QUIET_PEAK`` (by ``VAD_MAX_GAIN`` at most; not below ``VAD_SILENT_PEAK``). A clean
    recording of normal level is read as it is; Whisper always reads the original."""
    audio = np.asarray(audio, dtype=np.float32)
    return np.ascontiguousarray(next(_vad_input_pieces(audio, max(1, len(audio))), audio))


def _vad_input_pieces(audio: np.ndarray, piece: int) -> Iterator[np.ndarray]:
    """:func:`vad_input` of float32 ``audio`` in consecutive pieces of ``piece`` samples (the last one shorter), each
    made from the samples around it: the same values as the whole copy, which is never held (a 2 h recording's copy
    is 0.46 GB, and a filtered one took two more while it was made). Nothing for empty audio."""
    filtered = low_band_share(audio) > VAD_LOW_BAND_SHARE
    step = max(1, len(audio) // 250_000)  # the loud level is read from every step-th sample
    if filtered:  # a first pass for the level of the filtered samples
        loud = np.concatenate([_high_passed(audio, start, start + piece)[(-start) % step:: step].copy()  # not a view
                               for start in range(0, len(audio), piece)] or [audio[:0]])
    else:
        loud = audio[:: step]
    peak = float(np.quantile(np.abs(loud), 0.999)) if len(loud) else 0.0
    for start in range(0, len(audio), piece):
        yield raised(_high_passed(audio, start, start + piece) if filtered else audio[start: start + piece], peak)


def _high_passed(audio: np.ndarray, start: int, end: int, block: int = 1 << 15) -> np.ndarray:
    """``high_pass(audio, block=block)[start:end]``, computed from ``audio[start - block: end + block]`` only (its
    overlap-add frames start at the same multiples of ``block // 2``, so the values are the same to the bit)."""
    hop = block // 2
    first = max(0, (start - block) // hop * hop)
    return high_pass(audio[first: min(len(audio), end + block)], block=block)[start - first: end - first]


def raised(audio: np.ndarray, peak: float) -> np.ndarray:
    """``audio`` (float32) raised so that ``peak`` (its loud level) becomes ``VAD_TARGET_PEAK`` when it is below
    ``VAD_QUIET_PEAK`` (by ``VAD_MAX_GAIN`` at most), clipped to ±1; as it is when ``peak`` is below
    ``VAD_SILENT_PEAK`` (dither, a quiet room) or not quiet."""
    if not VAD_SILENT_PEAK <= peak < VAD_QUIET_PEAK:
        return audio
    return np.clip(audio * min(VAD_TARGET_PEAK / peak, VAD_MAX_GAIN), -1.0, 1.0).astype(np.float32)


SPEECH_PAD_S = 0.2  # silence the VAD keeps on both sides of every speech region (:func:`speech_regions`)
# ... and this much more decoded before a long recording's chunk (:func:`split_on_silence`; faster-whisper pads by
# 0.4 s): after 25 s of music silero started the speech's region late and its first word was lost ("各位同学" read as
# "美同学"; with 0.4 s, as faster-whisper read it, right)
CHUNK_LEAD_S = 0.2


def speech_regions(
    audio: np.ndarray,
    *,
    threshold: float = 0.5,
    min_speech_ms: int = 250,
    min_silence_ms: int = 160,
    speech_pad_ms: int = round(SPEECH_PAD_S * 1000),
    max_speech_s: float = WINDOW_S - 1.0,
    probabilities: np.ndarray | None = None,
) -> list[Chunk]:
    """Speech regions of a 16 kHz mono waveform, found by silero-vad (faster-whisper's segmentation of its
    probabilities: hysteresis between ``threshold`` and ``threshold`` − 0.15) in :func:`vad_input`'s copy of it.

    Args:
        audio: float32 waveform, shape (samples,), at SAMPLE_RATE.
        threshold: speech probability above which a 32 ms frame is speech.
        min_speech_ms: shorter speech bursts are dropped.
        min_silence_ms: silences shorter than this do not end a region.
        speech_pad_ms: padding added on both sides of every region.
        max_speech_s: longer regions are split (at the longest inner pause silero finds).
        probabilities: :func:`speech_probabilities` of ``audio``, where the caller has them.

    Returns:
        Non-overlapping regions in time order, in samples.
    """
    probabilities = speech_probabilities(audio) if probabilities is None else probabilities
    pad = SAMPLE_RATE * speech_pad_ms / 1000
    spans = _spans_of_speech(probabilities, len(audio), threshold=threshold,
                             min_speech=SAMPLE_RATE * min_speech_ms / 1000,
                             min_silence=SAMPLE_RATE * min_silence_ms / 1000,
                             max_speech=SAMPLE_RATE * max_speech_s - FRAME - 2 * pad)
    regions: list[Chunk] = []
    for start, end in _padded(spans, pad, len(audio)):
        start, end = max(0, start), min(len(audio), end)
        if regions and start < regions[-1].end:  # padding made neighbours overlap
            start = regions[-1].end
        if end > start:
            regions.append(Chunk(start, end))
    return regions


VAD_PIECE_FRAMES = 2000  # frames (64 s) the VAD reads at a time (faster-whisper's 10,000 took 130 MB more to run)


def speech_probabilities(audio: np.ndarray) -> np.ndarray:
    """silero-vad's speech probability of each FRAME-sample frame of :func:`vad_input`'s copy of a 16 kHz waveform,
    the last frame padded with zeros (one of zeros when the length is a multiple of FRAME): float32, shape
    (len(audio) // FRAME + 1,). Read ``VAD_PIECE_FRAMES`` frames at a time, the model's state carried from piece to
    piece: the same probabilities as faster-whisper's pass over the whole copy, in the memory of one piece."""
    audio = np.asarray(audio, dtype=np.float32)
    session, piece = _session(), VAD_PIECE_FRAMES * FRAME
    h = c = np.zeros((1, 1, 128), dtype=np.float32)
    context = np.zeros(_CONTEXT, dtype=np.float32)
    probabilities = []
    for k, samples in enumerate(chain(_vad_input_pieces(audio, piece), [audio[:0]] if not len(audio) else [])):
        if (k + 1) * piece >= len(audio):  # the last piece
            samples = np.concatenate([samples, np.zeros(FRAME - len(samples) % FRAME, dtype=np.float32)])
        frames = samples.reshape(-1, FRAME)
        before = np.concatenate([context[None], frames[:-1, -_CONTEXT:]])  # each frame's context: the one before
        context = frames[-1, -_CONTEXT:].copy()
        out, h, c = session.run(None, {"input": np.concatenate([before, frames], axis=1), "h": h, "c": c})
        probabilities.append(np.asarray(out, dtype=np.float32).reshape(-1))
    return np.concatenate(probabilities)


def _spans_of_speech(probabilities: np.ndarray, length: int, *, threshold: float, min_speech: float,
                     min_silence: float, max_speech: float) -> list[list[int]]:
    """silero-vad's segmentation of frame probabilities into [start, end) sample spans of speech, before padding: a
    span starts at a frame at or above ``threshold`` and ends where the probability has stayed below ``threshold`` −
    0.15 for ``min_silence`` samples (spans of ``min_speech`` samples or less are dropped); one longer than
    ``max_speech`` is cut at the start of its last pause of more than 98 ms (and goes on where speech came back after
    it), or, with no such pause, where it is. Lengths in samples (floats, as faster-whisper computes them)."""
    above = (probabilities >= threshold).tolist()  # float32 comparisons, as faster-whisper's
    below = (probabilities < max(threshold - 0.15, 0.01)).tolist()
    pause_to_cut = SAMPLE_RATE * 98 / 1000
    spans: list[list[int]] = []
    start: int | None = None  # where the current span started (None: not in one)
    quiet = 0  # where the probability fell below the low threshold in the current span (0: it has not)
    cut = resume = 0  # the current span's last pause long enough to cut at, and where speech came back after it
    for i, (is_speech, is_quiet) in enumerate(zip(above, below)):
        at = FRAME * i
        if is_speech and quiet:
            quiet = 0
            if resume < cut:
                resume = at
        if start is None:
            if is_speech:
                start = at
            continue
        if at - start > max_speech:
            if cut:  # cut at the last pause; the rest is a span of its own if speech came back after it
                spans.append([start, cut])
                start = None if resume < cut else resume
                cut = resume = quiet = 0
                if start is None:
                    continue
            else:
                spans.append([start, at])
                start, cut, resume, quiet = None, 0, 0, 0
                continue
        if is_quiet:
            quiet = quiet or at
            if at - quiet > pause_to_cut:
                cut = quiet
            if at - quiet >= min_silence:
                if quiet - start > min_speech:
                    spans.append([start, quiet])
                start, cut, resume, quiet = None, 0, 0, 0
    if start is not None and length - start > min_speech:
        spans.append([start, length])
    return spans


def _padded(spans: list[list[int]], pad: float, length: int) -> list[list[int]]:
    """``spans`` widened by ``pad`` samples on both sides, or by half the silence between two that are closer than
    twice that (silero-vad's padding; the first start and the last end stay inside [0, length])."""
    for k, span in enumerate(spans):
        if k == 0:
            span[0] = int(max(0, span[0] - pad))
        if k == len(spans) - 1:
            span[1] = int(min(length, span[1] + pad))
            continue
        after = spans[k + 1]
        gap = after[0] - span[1]
        if gap < 2 * pad:  # the two share the silence between them
            span[1] += gap // 2
            after[0] = int(max(0, after[0] - gap // 2))
        else:
            span[1] = int(min(length, span[1] + pad))
            after[0] = int(max(0, after[0] - pad))
    return spans


SOUND_FRAME_S = 0.01  # frames in which :func:`widened_to_sound` measures the level
SOUND_ABOVE_FLOOR_DB = 10.0  # a frame this far above the noise floor is sound
MAX_WIDEN_S = 1.0  # how far a region's start is moved back at most


def widened_to_sound(audio: np.ndarray, spans: Sequence[tuple[int, int]],
                     max_s: float = MAX_WIDEN_S) -> list[tuple[int, int]]:
    """Speech regions (sample positions in ``audio``, float32 at SAMPLE_RATE) whose start is moved back through the
    sound right before it, up to ``max_s`` seconds and never into the region before: silero-vad starts a region after
    a soft first syllable (a first word 30 dB below the rest: a cue moved to the region started 0.3-0.8 s after its
    speech, "He was" left out). Sound is a 10 ms frame ``SOUND_ABOVE_FLOOR_DB`` above the noise floor (the 10th
    percentile of the frames' level); the widening stops at the first frame below it, so a region after silence or
    steady noise stays as it is, and one in a recording with no quieter stretch (no floor below its speech) too. The
    ends stay: a region's last ``SPEECH_PAD_S`` is padding after its speech (:func:`speech_regions`)."""
    hop = int(SOUND_FRAME_S * SAMPLE_RATE)
    level = frame_levels_db(audio, SOUND_FRAME_S)
    n = len(level)
    if not spans or n < 10:
        return list(spans)
    heard = level[level > -100.0]  # digital silence (a lead of zeros, a padded file) is no noise floor
    if len(heard) < 10:
        return list(spans)
    sound = level > np.percentile(heard, 10) + SOUND_ABOVE_FLOOR_DB
    most = int(max_s / SOUND_FRAME_S)
    out = []
    for k, (a, b) in enumerate(spans):
        start = first = min(a // hop, n)  # the frame that holds the region's start
        lowest = max(-(-spans[k - 1][1] // hop) if k else 0, first - most)
        while first > lowest and sound[first - 1]:
            first -= 1
        out.append((first * hop if first < start else a, b))
    return out


def merge_regions(regions: list[Chunk], max_chunk_s: float = WINDOW_S, workers: int = 1,
                  batch_size: int = 0) -> list[Chunk]:
    """Group consecutive speech regions into as few chunks of at most ``max_chunk_s`` seconds as packing them in
    order makes, cut between regions the VAD kept apart where it can.

    Two regions whose padding touches (a pause shorter than twice ``speech_pad_ms``: mostly one inside a sentence)
    are cut apart only where no grouping into that many chunks avoids it; packing cuts wherever the window ends, so
    a sentence said again and again was cut after its first words, which the model dropped at the end of one window
    and misread at the start of the next. Among those, the chunks are as even in length as they can be (the least
    sum of squared lengths): packing filled the first windows and left the rest to the last chunk (real Mandarin x8:
    29.8 s and 9.0 s, 90 and 30 tokens), and of the CPU workers that decode chunks side by side one waited for the
    other (two chunks of 19.4 s: the command 3.12 → 2.52 s on a 2-core AVX-512 EPYC); a batch on a GPU waits for its
    longest text too. More room after the speech reads no worse: 30 recordings of shuffled clips, about 100 s each,
    ct2 backend (tools/bench_longform.py): English WER 0.0542 → 0.0494 (whisper-base), the demo model's Mandarin CER
    0.0861 → 0.0854. On ties the earlier chunks are the longer. A region longer than the limit becomes several hard-cut
    chunks.

    ``workers``: CPU workers that decode each batch of ``batch_size`` chunks (0: all) side by side, every
    ``workers``-th chunk of it on one (:class:`utils.transcribe.CT2Transcriber`). Where a batch's chunks cannot be
    shared among them evenly (more than the workers, not a multiple of them) the chunks are packed instead: the short
    last chunk goes to a worker with a full one (three even chunks on two workers had one wait for the other's two: a
    sentence said 8 times, 67 s, 4.33 → 4.48 s).

    Raises:
        ValueError: ``workers`` below 1 or ``batch_size`` below 0.
    """
    if workers < 1 or batch_size < 0:
        raise ValueError(f"workers must be at least 1 and batch_size at least 0, got {workers} and {batch_size}")
    limit = int(max_chunk_s * SAMPLE_RATE)
    units: list[Chunk] = []  # regions, those longer than the limit cut hard into pieces
    hard: list[bool] = []  # the unit starts at a hard cut (it continues the previous unit's speech)
    for region in regions:
        for start in range(region.start, region.end, limit):
            end = min(region.end, start + limit)
            units.append(Chunk(start, end))
            hard.append(start != region.start)
    chunks = _grouped(units, hard, limit, even=True)
    n, size = len(chunks), batch_size or len(chunks) or 1
    batches = [size] * (n // size) + [n % size] * bool(n % size)  # chunks per batch
    if any(b > workers and b % workers for b in batches):
        chunks = _grouped(units, hard, limit, even=False)  # as many chunks: only the lengths differ
    return chunks


def _grouped(units: list[Chunk], hard: list[bool], limit: int, even: bool) -> list[Chunk]:
    """:func:`merge_regions`' grouping of ``units`` (``hard``: whether each starts at a hard cut) into chunks of at
    most ``limit`` samples: the fewest, then the fewest cuts between touching regions, then (``even``) the least sum
    of squared lengths; on ties the earlier chunks are the longer."""
    # best[j]: (chunks, cuts between touching regions, sum of squared chunk lengths or 0) of the best grouping of
    # units[:j]; first[j]: where its last chunk starts. A hard cut is made in every grouping (the piece before it
    # fills a window). Every unit fits a window, so every prefix has a grouping (math.inf: none found yet).
    best: list[tuple[float, float, float]] = [(0, 0, 0)] + [(math.inf, math.inf, math.inf)] * len(units)
    first = [0] * (len(units) + 1)
    for j in range(1, len(units) + 1):
        for i in range(j - 1, -1, -1):  # the latest start first: on ties the earlier chunks stay the longest
            if units[j - 1].end - units[i].start > limit:
                break
            count, touching, squares = best[i]
            option = (count + 1, touching + (0 < i and not hard[i] and units[i].start <= units[i - 1].end),
                      squares + (units[j - 1].end - units[i].start) ** 2 * even)
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


def whole_clip(audio: np.ndarray) -> Chunk | None:
    """All of ``audio`` (a clip of at most one window) as one chunk, with the breaks and the speech regions (``spans``)
    silero-vad finds in it: a sentence said several times in one clip can then be cut at its pauses like a long
    recording's chunk (``utils.transcribe``); a ``lead`` when the speech starts at the first sample
    (:func:`with_lead`). The clip is decoded from its start (from its first speech, a real AISHELL-1 sentence said
    three times after 0.34 s of silence was read twice), and its first segment's time is moved to the speech; after
    ``CLIP_SILENCE_S`` of silence or more, from ``LEAD_S`` before the speech.

    No speech region: None when no frame is speech either (near-silence, noise, tones: whisper-base read them as
    "you"; a long recording's silence gives no chunk either; a quiet room is not raised, and noise that is raised
    reads as loud noise does: white, pink, brown, 12 random draws each, at most 0.42, 0.52, 0.22 speech probability,
    at full level 0.38, 0.27, 0.09), else the whole clip, with no breaks and ``speech`` None (speech shorter than the
    VAD's 0.25 s, a word said alone, is still decoded; after ``CLIP_SILENCE_S`` of silence from shortly before it,
    too: a 0.1 s burst the VAD heard 16 s into 18 s of pink noise had the whole clip decoded, and whisper-base wrote
    "我心里的心里的…" over it)."""
    window = max(WINDOW_S, len(audio) / SAMPLE_RATE)
    probabilities = speech_probabilities(audio)
    regions = speech_regions(audio, probabilities=probabilities)
    merged = merge_regions(regions, window)  # one chunk
    if not merged:
        if not (blips := speech_regions(audio, min_speech_ms=0, probabilities=probabilities)):
            return None
        if blips[0].start >= CLIP_SILENCE_S * SAMPLE_RATE:  # after a long silence: from there, as speech is
            return Chunk(blips[0].start - int(LEAD_S * SAMPLE_RATE), len(audio))
        return Chunk(0, len(audio))
    if merged[0].start >= CLIP_SILENCE_S * SAMPLE_RATE:  # decoded from shortly before the speech, as a chunk is
        return replace(merged[0], start=merged[0].start - int(LEAD_S * SAMPLE_RATE), end=len(audio))
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


def split_on_silence(audio: np.ndarray, max_chunk_s: float = WINDOW_S, workers: int = 1,
                     batch_size: int = 0) -> list[Chunk]:
    """Cut a waveform at silences into chunks of at most ``max_chunk_s`` seconds covering all speech; the first has a
    ``lead`` when the speech starts at the first sample (:func:`with_lead`). ``workers``, ``batch_size``: see
    :func:`merge_regions`.

    Returns an empty list when silero-vad finds no speech.
    """
    regions = speech_regions(audio)
    chunks = merge_regions(regions, max_chunk_s, workers, batch_size)
    limit, before, ended = int(max_chunk_s * SAMPLE_RATE), int(CHUNK_LEAD_S * SAMPLE_RATE), 0
    for k, c in enumerate(chunks):  # decoded from a little earlier, where the window and the chunk before allow
        chunks[k] = replace(c, start=min(c.start, max(ended, c.start - before, c.end - limit)))
        ended = c.end
    if chunks:
        chunks[0] = replace(chunks[0], lead=_lead(regions, chunks[0].end - chunks[0].start, max_chunk_s))
    logger.debug("VAD: %.1f s of audio → %d chunks, %.1f s of them", len(audio) / SAMPLE_RATE, len(chunks),
                 sum(c.duration_s for c in chunks))
    return chunks
