"""Voice activity detection: cut long audio at silences into chunks Whisper can decode in one window.

silero-vad ships its model inside the PyPI package, so this works offline. Long audio flows as::

    waveform (samples,) → speech regions [start, end) in samples → chunks of ≤ max_chunk_s seconds

A chunk spans consecutive speech regions (the short silences between them stay inside it, so Whisper's
timestamps inside a chunk are real time); chunks start and end in silence except where one speech region
is itself longer than the window, which is then cut hard.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from utils.audio import SAMPLE_RATE, WINDOW_S

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    """A piece of a waveform, in samples at SAMPLE_RATE: ``audio[start:end]``."""

    start: int
    end: int

    @property
    def offset_s(self) -> float:
        """Start of the chunk in seconds."""
        return self.start / SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


def import_silero_vad() -> ModuleType:
    """The silero_vad module, imported without its side effect: it calls ``torch.set_num_threads(1)`` at
    import, which would leave every later PyTorch computation in the process (the bf16 encoder, the
    transformers backend) on one thread. The thread count is put back."""
    import torch

    threads = torch.get_num_threads()
    import silero_vad

    torch.set_num_threads(threads)
    return silero_vad


@functools.lru_cache(maxsize=1)
def _silero_model():
    return import_silero_vad().load_silero_vad(onnx=True)  # onnxruntime: about 2x faster than TorchScript on CPU


def speech_regions(
    audio: np.ndarray,
    *,
    threshold: float = 0.5,
    min_speech_ms: int = 250,
    min_silence_ms: int = 160,
    speech_pad_ms: int = 200,
    max_speech_s: float = WINDOW_S - 1.0,
) -> list[Chunk]:
    """Speech regions of a 16 kHz mono waveform, found by silero-vad.

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
    import torch
    get_speech_timestamps = import_silero_vad().get_speech_timestamps

    stamps = get_speech_timestamps(
        torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
        _silero_model(),
        threshold=threshold,
        sampling_rate=SAMPLE_RATE,
        min_speech_duration_ms=min_speech_ms,
        min_silence_duration_ms=min_silence_ms,
        speech_pad_ms=speech_pad_ms,
        max_speech_duration_s=max_speech_s,
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
    """Group consecutive speech regions into chunks of at most ``max_chunk_s`` seconds.

    A region longer than the limit becomes several hard-cut chunks.
    """
    limit = int(max_chunk_s * SAMPLE_RATE)
    chunks: list[Chunk] = []
    cur: Chunk | None = None
    for region in regions:
        for start in range(region.start, region.end, limit):  # hard cut only when one region is too long
            piece = Chunk(start, min(region.end, start + limit))
            if cur is not None and piece.end - cur.start <= limit:
                cur = Chunk(cur.start, piece.end)
            else:
                if cur is not None:
                    chunks.append(cur)
                cur = piece
    if cur is not None:
        chunks.append(cur)
    return chunks


def split_on_silence(audio: np.ndarray, max_chunk_s: float = WINDOW_S) -> list[Chunk]:
    """Cut a waveform at silences into chunks of at most ``max_chunk_s`` seconds covering all speech.

    Returns an empty list when silero-vad finds no speech.
    """
    chunks = merge_regions(speech_regions(audio), max_chunk_s)
    logger.debug("VAD: %.1f s of audio → %d chunks, %.1f s of them", len(audio) / SAMPLE_RATE, len(chunks),
                 sum(c.duration_s for c in chunks))
    return chunks
