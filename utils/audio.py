"""Audio loading: any common file → float32 mono waveform at 16 kHz.

Data flows one way: ``path → np.ndarray (float32, shape (samples,), range [-1, 1], 16 kHz)``.
WAV/FLAC/OGG are read with libsndfile (soundfile), which can seek, so a slice given by
``start_time``/``end_time`` is read without decoding the whole file. Formats libsndfile cannot
read (m4a/aac, some mp3) are decoded by the ``ffmpeg`` program, which also resamples.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Hz, the rate every Whisper model expects
WINDOW_S = 30.0  # seconds of audio Whisper's encoder sees at once
TIME_PRECISION = 0.02  # seconds per Whisper timestamp token (<|0.00|> … <|30.00|>)
# files a folder given as input is searched for (ffmpeg reads them; a file named directly may have any name)
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".webm", ".mp4",
                    ".aif", ".aiff", ".amr", ".3gp", ".avi", ".m4b", ".mka", ".mkv", ".mov")


class AudioLoadError(RuntimeError):
    """An audio file is missing, empty, corrupt or cannot be decoded."""


class AudioTooLongError(AudioLoadError):
    """Audio longer than a caller's limit (``decode_audio_bytes(max_seconds=)``), found before it was decoded whole."""


def _check_slice(path: str, start_time: float | None, end_time: float | None) -> None:
    if start_time is not None and start_time < 0:
        raise AudioLoadError(f"{path}: start_time {start_time} is negative")
    if start_time is not None and end_time is not None and end_time <= start_time:
        raise AudioLoadError(f"{path}: end_time {end_time} must be greater than start_time {start_time}")


# a mix of the channels whose level (RMS) is below this share of the loudest channel's: they cancel (one of them is
# phase-inverted, a miswired balanced microphone), and the loudest channel alone is read. Channels that do not cancel
# mix at 0.5 (one silent) to 1 (the same signal); two unrelated signals at about 0.7
MONO_CANCEL_SHARE = 0.25
_MONO_MIN_RMS = 1e-4  # quieter channels (-80 dBFS): silence, whatever their mix


def _cancelling_channel(levels: np.ndarray, mix_level: float, name: str) -> int | None:
    """The loudest channel (index) when the channels of RMS ``levels`` cancel in their mix of RMS ``mix_level``
    (``MONO_CANCEL_SHARE``; logged, naming ``name``), else None."""
    loudest = int(np.argmax(levels))
    if levels[loudest] > _MONO_MIN_RMS and mix_level < MONO_CANCEL_SHARE * levels[loudest]:
        logger.warning("%s: its %d channels cancel each other out when mixed to mono (one is phase-inverted?); "
                       "reading channel %d alone", name, len(levels), loudest + 1)
        return loudest
    return None


def _to_mono(samples: np.ndarray, name: str = "audio") -> np.ndarray:
    """(frames, channels) or (frames,) → (frames,) float32 by averaging channels; when the channels cancel in the
    average (``MONO_CANCEL_SHARE``: a recording with one channel phase-inverted became silence, "no speech"), the
    loudest channel alone, with a warning naming ``name``."""
    if samples.ndim == 2 and samples.shape[1] > 1:
        probe = samples[:: max(1, len(samples) // 1_000_000)].astype(np.float64)  # levels from ≤ 1 M frames
        loudest = _cancelling_channel(np.sqrt(np.mean(np.square(probe), axis=0)),
                                      float(np.sqrt(np.mean(np.square(probe.mean(axis=1))))), name)
        samples = samples.mean(axis=1) if loudest is None else samples[:, loudest]
    elif samples.ndim == 2:
        samples = samples[:, 0]
    return np.ascontiguousarray(samples, dtype=np.float32)


def mono_waveform(audio: Any, what: str = "audio") -> np.ndarray:
    """``audio`` (samples at 16 kHz, an array or a list) as the float32 waveform of shape (samples,) the decoders
    take; a (samples, 1) or (1, samples) array is flattened (soundfile's ``always_2d=True`` gives the first: its
    FFT ran along the length-1 axis, padded to 32768, and one second of audio took 6.5 GB).

    Raises:
        ValueError: several channels, or integer samples; the message names ``what`` and the fix.
    """
    a = np.asarray(audio)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        mix = f" (audio.mean(axis={int(a.shape[0] > a.shape[1])}))" if a.ndim == 2 else ""  # the shorter axis
        raise ValueError(f"{what}: samples of shape {a.shape}; the decoder takes one channel, shape (samples,) at "
                         f"16 kHz: mix the channels first{mix}, or pass the file's path")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{what}: {a.dtype} samples; the decoder takes floats in [-1, 1]: divide integers by their "
                         "full scale (int16: audio / 32768)")
    return a.astype(np.float32, copy=False)


def resample(samples: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono float32 waveform from ``orig_sr`` to ``target_sr`` Hz (soxr, high quality)."""
    if orig_sr == target_sr:
        return samples
    return soxr.resample(samples, orig_sr, target_sr).astype(np.float32, copy=False)


# audio longer than this (seconds) that must be mixed to mono or resampled is read BLOCK_READ_S at a time
STREAM_READ_S = 600.0
BLOCK_READ_S = 60.0


# formats whose samples libsndfile reads the same in blocks as whole (its mp3 reader does not: the first 0.1 s of every
# block after the first came out wrong, by up to 0.36)
_BLOCK_READ_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64", "FLAC", "AIFF", "CAF", "AU"})


def _read_soundfile(path: str, start_time: float | None, end_time: float | None,
                    sample_rate: int) -> np.ndarray | None:
    """libsndfile's reading of ``path`` (a slice of it) as mono float32 at ``sample_rate``, shape (samples,); None
    for a long mp3 or ogg to mix or resample (longer than ``STREAM_READ_S``): ffmpeg reads that in less memory."""
    # by its bytes: a file name that is not UTF-8 (GBK, from a Windows zip) stopped soundfile's encode with a traceback
    with sf.SoundFile(os.fsencode(path)) as f:
        sr = f.samplerate
        start = int(round((start_time or 0.0) * sr))
        stop = f.frames if end_time is None else min(f.frames, int(round(end_time * sr)))
        if f.frames == 0:
            raise AudioLoadError(f"{path}: the file holds no audio samples")
        if start >= f.frames:
            raise AudioLoadError(
                f"{path}: start_time {start_time} s is past the end of the audio ({f.frames / sr:.2f} s)"
            )
        f.seek(start)
        frames = max(0, stop - start)
        if frames > STREAM_READ_S * sr and (f.channels > 1 or sr != sample_rate):
            if f.format in _BLOCK_READ_FORMATS:
                return _mono_in_blocks(f, frames, sample_rate, path)
            if f.format in ("MPEG", "OGG") and shutil.which("ffmpeg") is not None:  # ffmpeg mixes and resamples as
                return None  # it decodes (other formats, which ffmpeg may not read, are read whole)
        data = f.read(frames=frames, dtype="float32", always_2d=False)
    return resample(_to_mono(data, path), sr, sample_rate)


def _mono_in_blocks(f: sf.SoundFile, frames: int, sample_rate: int, name: str) -> np.ndarray:
    """``frames`` frames of the open file ``f`` from where it stands, mixed to mono and resampled to ``sample_rate``
    ``BLOCK_READ_S`` at a time (read whole, a 2 h 44.1 kHz stereo file held 4.1 GB for its 0.46 GB waveform). The
    channels' levels are summed on the way; where they cancel in the mix (:func:`_to_mono`) the loudest channel is
    read again, alone."""
    sr, begin = f.samplerate, f.tell()
    levels, mix_level, seen = np.zeros(f.channels), 0.0, 0  # sums of squares, frames read

    def read(pick: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        f.seek(begin)
        stream = soxr.ResampleStream(sr, sample_rate, 1, dtype="float32") if sr != sample_rate else None
        out = np.empty(int(np.ceil(frames * sample_rate / sr)) + 64, dtype=np.float32)
        at, left = 0, frames
        while left > 0:
            block = f.read(frames=min(left, int(BLOCK_READ_S * sr)), dtype="float32", always_2d=True)
            left = left - len(block) if len(block) else 0  # a header that promised more frames: the end here
            mono = np.ascontiguousarray(pick(block), dtype=np.float32)
            if stream is not None:
                mono = stream.resample_chunk(mono, last=left == 0)  # the last block flushes the resampler
            if at + len(mono) > len(out):
                out = np.concatenate([out, np.empty(at + len(mono) - len(out), np.float32)])
            out[at: at + len(mono)] = mono
            at += len(mono)
        return out[:at]

    def mixed(block: np.ndarray) -> np.ndarray:
        nonlocal mix_level, seen
        mono = block.mean(axis=1)
        seen += len(block)
        levels[:] += np.einsum("ij,ij->j", block, block, dtype=np.float64)
        mix_level += float(np.dot(mono.astype(np.float64), mono))
        return mono

    samples = read(mixed)
    seen = max(seen, 1)
    loudest = None if f.channels == 1 else _cancelling_channel(np.sqrt(levels / seen), np.sqrt(mix_level / seen), name)
    return samples if loudest is None else read(lambda block: block[:, loudest])


_warned_truncated: set[str] = set()  # warn once per file, not once per epoch


def wav_truncation(path: str | os.PathLike) -> tuple[float, float] | None:
    """For a RIFF/WAVE file whose header promises more audio than the file holds (a copy cut short):
    (seconds the header says, seconds the file holds); None for a complete file or another format.

    Only the header is read. Streaming writers that leave the data size at 0 or 0xFFFFFFFF are not flagged.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    return _wav_truncation(head, size)


def wav_bytes_truncation(data: bytes) -> tuple[float, float] | None:
    """:func:`wav_truncation` of a file's bytes (an upload)."""
    return _wav_truncation(data[:1 << 16], len(data))


def _wav_truncation(head: bytes, size: int) -> tuple[float, float] | None:
    """:func:`wav_truncation` of a file of ``size`` bytes that starts with ``head``."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, rate, block_align = 12, 0, 0
    while pos + 8 <= len(head):
        chunk_id, chunk_size = head[pos:pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if chunk_id == b"fmt " and pos + 20 <= len(head):
            rate, block_align = struct.unpack_from("<I", head, pos + 12)[0], struct.unpack_from("<H", head, pos + 20)[0]
        elif chunk_id == b"data":
            held = size - (pos + 8)
            if not rate or not block_align or chunk_size in (0, 0xFFFFFFFF) or chunk_size <= held:
                return None
            bytes_per_s = rate * block_align
            return chunk_size / bytes_per_s, max(0, held) / bytes_per_s
        pos += 8 + chunk_size + (chunk_size & 1)
    return None


def _warn_if_truncated(name: str, cut: tuple[float, float] | None) -> None:
    """Log :func:`truncated_message` once per file ``name`` (not once per epoch) when ``cut`` is not None."""
    if cut is not None and name not in _warned_truncated:
        _warned_truncated.add(name)
        logger.warning(truncated_message(name, *cut))


def _read_ffmpeg(path: str, start_time: float | None, end_time: float | None, sample_rate: int,
                 name: str | None = None) -> np.ndarray:
    """The file decoded by ffmpeg, mono float32 at ``sample_rate``; ``name``: the file's name in warnings (default
    ``path``)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioLoadError(
            f"{path}: this format needs the ffmpeg program, which is not installed "
            "(Debian/Ubuntu: apt-get install ffmpeg; conda: conda install ffmpeg)"
        )
    cmd = [ffmpeg, "-nostdin", "-v", "error"]
    if start_time:
        cmd += ["-ss", f"{start_time:.3f}"]
    cmd += ["-i", path]
    if end_time is not None:
        cmd += ["-t", f"{end_time - (start_time or 0.0):.3f}"]
    return _ffmpeg_mono(cmd, sample_rate, path, name or path)


_FFMPEG_BLOCK = 1 << 20  # bytes read from ffmpeg at a time


def _ffmpeg_mono(cmd: list[str], sample_rate: int, path: str, name: str) -> np.ndarray:
    """ffmpeg ``cmd`` (its input part) decoded to two channels (a mono file's doubled, more mixed down by ffmpeg)
    and mixed to mono here as :func:`_to_mono` mixes, read block by block: the first channel and the mix are kept
    (the second is 2 × mix - first), so a long file takes the memory it took mixed by ffmpeg, and channels that
    cancel (one phase-inverted) are found."""
    out = [*cmd, "-f", "f32le", "-acodec", "pcm_f32le", "-ac", "2", "-ar", str(sample_rate), "-"]
    first, mix = bytearray(), bytearray()
    power = np.zeros(3)  # sums of squares: first channel, second, mix
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(out, stdout=subprocess.PIPE, stderr=err)
        rest = b""
        try:
            while block := proc.stdout.read(_FFMPEG_BLOCK):  # type: ignore[union-attr]
                block, rest = rest + block, b""
                usable = len(block) // 8 * 8
                block, rest = block[:usable], block[usable:]
                pairs = np.frombuffer(block, dtype=np.float32).reshape(-1, 2)
                mixed = pairs.mean(axis=1, dtype=np.float32)
                power += [np.dot(pairs[:, 0], pairs[:, 0]), np.dot(pairs[:, 1], pairs[:, 1]), np.dot(mixed, mixed)]
                first += pairs[:, 0].tobytes()
                mix += mixed.tobytes()
        finally:
            proc.stdout.close()  # type: ignore[union-attr]
            code = proc.wait()
        if code != 0:
            err.seek(0)
            detail = err.read().decode("utf-8", "replace").strip().splitlines()
            if detail and "does not contain any stream" in detail[-1]:  # ffmpeg's words for "no audio track"
                raise AudioLoadError(f"{path}: the file has no audio stream (a video without sound?)")
            raise AudioLoadError(f"{path}: cannot decode ({detail[-1] if detail else 'ffmpeg failed'})")
    samples = np.frombuffer(mix, dtype=np.float32)
    levels = np.sqrt(power / max(1, len(samples)))
    loudest = _cancelling_channel(levels[:2], float(levels[2]), name)
    if loudest is None:
        return samples  # a view of ``mix``, writable, no copy
    left = np.frombuffer(first, dtype=np.float32)
    return left if loudest == 0 else 2 * samples - left


def load_audio(
    path: str | os.PathLike,
    *,
    start_time: float | None = None,
    end_time: float | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Load an audio file (or a slice of it) as a mono float32 waveform.

    Args:
        path: wav/flac/mp3/ogg/m4a/... file.
        start_time: slice start in seconds (None = beginning).
        end_time: slice end in seconds (None = end of file).
        sample_rate: output rate in Hz.

    Returns:
        Array of shape (samples,), float32 in [-1, 1], at ``sample_rate``.

    Raises:
        AudioLoadError: missing, empty, corrupt or undecodable file, or an invalid slice.
    """
    path = os.fspath(path)
    _check_slice(path, start_time, end_time)
    if not os.path.isfile(path):
        raise AudioLoadError(f"{path}: audio file not found")
    if os.path.getsize(path) == 0:
        raise AudioLoadError(f"{path}: audio file is empty (0 bytes)")
    try:
        samples = _read_soundfile(path, start_time, end_time, sample_rate)
        if samples is None:
            samples = _read_ffmpeg(path, start_time, end_time, sample_rate)
        _warn_if_truncated(path, wav_truncation(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        if isinstance(e, AudioLoadError):
            raise
        logger.debug("%s: libsndfile cannot read it (%s); decoding with ffmpeg", path, e)
        samples = _read_ffmpeg(path, start_time, end_time, sample_rate)
    if samples.size == 0:
        raise AudioLoadError(f"{path}: no audio samples decoded (empty or corrupt file, or slice out of range)")
    if not np.isfinite(samples).all():
        raise AudioLoadError(f"{path}: decoded audio contains NaN/inf values (corrupt file)")
    return samples


def decode_audio_bytes(data: bytes, name: str = "upload", sample_rate: int = SAMPLE_RATE, *,
                       warn_once: bool = False, max_seconds: float | None = None) -> np.ndarray:
    """An audio file's bytes (an upload) → mono float32 waveform at ``sample_rate``, shape (samples,).

    libsndfile reads it from memory; other formats (mp3, m4a, webm...) go to ffmpeg through a temporary copy
    that is removed before this returns. ``name`` (the client's file name) is used in messages only. A wav cut short
    is warned about (``warn_once``: once per ``name``, for data read every epoch). ``max_seconds``: longer audio is
    refused before it is decoded whole (a 7.6 MB opus file held 3 hours: 2.3 GB of a server's memory).

    Raises:
        AudioTooLongError: more than ``max_seconds`` of audio.
        AudioLoadError: empty, corrupt or undecodable data.
    """
    if not data:
        raise AudioLoadError(f"{name}: empty file (0 bytes)")
    try:
        frames = -1  # all
        if max_seconds is not None:
            info = sf.info(io.BytesIO(data))
            if 0 < info.frames < 2**62 and info.samplerate:
                _check_length(name, info.frames / info.samplerate, max_seconds)
            elif info.samplerate:  # no length in the header (a FLAC stream written to a pipe): read past the limit
                frames = int((max_seconds + 1.0) * info.samplerate)
        samples, sr = sf.read(io.BytesIO(data), frames=frames, dtype="float32", always_2d=False)
        samples = resample(_to_mono(samples, name), sr, sample_rate)
        if frames > 0:
            _check_length(name, len(samples) / sample_rate, max_seconds, at_least=True)
    except AudioTooLongError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        logger.debug("%s: libsndfile cannot read it (%s); decoding with ffmpeg", name, e)
        suffix = Path(name).suffix.lower()
        with tempfile.TemporaryDirectory(prefix="whisper-upload-") as tmp:
            path = os.path.join(tmp, "audio" + (suffix if suffix in AUDIO_EXTENSIONS else ""))
            with open(path, "wb") as f:
                f.write(data)
            try:  # decoded up to just past the limit, whatever the file says of its length
                samples = _read_ffmpeg(path, None, None if max_seconds is None else max_seconds + 1.0, sample_rate,
                                       name)
            except AudioLoadError as err:
                raise AudioLoadError(str(err).replace(path, name)) from None
            if max_seconds is not None:
                _check_length(name, len(samples) / sample_rate, max_seconds, at_least=True)
    if samples.size == 0:
        raise AudioLoadError(f"{name}: no audio samples decoded (empty or corrupt file)")
    if not np.isfinite(samples).all():
        raise AudioLoadError(f"{name}: decoded audio contains NaN/inf values (corrupt file)")
    cut = wav_bytes_truncation(data)
    if warn_once:  # a dataset row, decoded again every epoch
        _warn_if_truncated(name, cut)
    elif cut is not None:  # an upload: each one (many are called audio.wav)
        logger.warning(truncated_message(name, *cut))
    return samples


def _check_length(name: str, seconds: float, max_seconds: float, at_least: bool = False) -> None:
    if seconds > max_seconds:
        raise AudioTooLongError(f"{name}: {'at least ' if at_least else ''}{seconds:.1f} s of audio, more than the "
                                f"limit of {max_seconds:g} s")


def truncated_message(name: str, said: float, held: float) -> str:
    """The warning about a truncated wav (:func:`wav_truncation`'s figures)."""
    return (f"{name}: truncated wav: its header says {said:.2f} s but the file holds only {held:.2f} s (a copy cut "
            f"short?); using the {held:.2f} s there are")


def load_record_audio(record) -> np.ndarray:
    """The waveform of a ``utils.data.Record`` (16 kHz mono float32, shape (samples,)): its file, or the bytes a
    Hugging Face dataset holds, sliced to ``start_time``/``end_time``.

    Raises:
        AudioLoadError: unreadable audio or a slice outside it (the message names ``record.audio_path``).
    """
    if record.audio_bytes is None:
        return load_audio(record.audio_path, start_time=record.start_time, end_time=record.end_time)
    _check_slice(record.audio_path, record.start_time, record.end_time)
    samples = decode_audio_bytes(record.audio_bytes, name=record.audio_path, warn_once=True)
    if record.start_time is None and record.end_time is None:
        return samples
    start = int(round((record.start_time or 0.0) * SAMPLE_RATE))
    end = len(samples) if record.end_time is None else int(round(record.end_time * SAMPLE_RATE))
    if start >= min(end, len(samples)):
        raise AudioLoadError(f"{record.audio_path}: slice {record.start_time}..{record.end_time} s is outside the "
                             f"audio ({len(samples) / SAMPLE_RATE:.2f} s)")
    return samples[start:end]


def _header_duration(source: str | io.BytesIO) -> float | None:
    """Seconds of audio from a file's header as libsndfile reads it (wav/flac/ogg/mp3; 0.0 for an empty one), or
    None where it cannot (m4a, a video, a missing file)."""
    try:
        info = sf.info(os.fsencode(source) if isinstance(source, str) else source)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None
    return info.frames / info.samplerate if info.samplerate > 0 else None


def frame_levels_db(audio: np.ndarray, frame_s: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """RMS level in dB of consecutive ``frame_s``-second frames of a waveform (a trailing part frame left out);
    shape (frames,)."""
    hop = int(frame_s * sample_rate)
    n = len(audio) // hop
    if n == 0:
        return np.zeros(0)
    frames = np.asarray(audio[: n * hop], np.float64).reshape(n, hop)
    return 10.0 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)


@dataclass
class ProbeBudget:
    """How many more files :func:`slice_check` may hand to ffprobe (~0.1 s each): a dataset of AAC audio named
    .wav would otherwise cost hours before training; the files past the budget are checked when decoded."""

    left: int
    skipped: int = 0

    def take(self) -> bool:
        if self.left > 0:
            self.left -= 1
            return True
        self.skipped += 1
        return False


def slice_check(path: str, start_time: float | None = None, end_time: float | None = None,
                tolerance_s: float = 0.1, probes: ProbeBudget | None = None,
                lengths: dict[str, tuple[str | None, float | None]] | None = None) -> tuple[str | None, float | None]:
    """What is wrong with reading ``start_time``..``end_time`` seconds of the file ``path``, as its header tells (no
    decoding): no audio samples, or the start or the end past the end of the audio (the end by more than
    ``tolerance_s``: a slice that ends later would be scored against words the audio does not hold); None when fine.
    A file whose header libsndfile cannot read (m4a, a video, another format named .wav) is read by ffprobe while
    ``probes`` allows (None = any number), else checked when it is decoded. Returned with the slice's length in
    seconds (None where the header cannot be read or the slice cannot be read as given). ``lengths``: what earlier
    calls found of each file, kept and reused (a manifest that cuts a few long recordings into 100 000 slices read
    each header once per line)."""
    if lengths is None:
        problem, seconds = _audio_length(path, probes)
    elif (known := lengths.get(path)) is not None:
        problem, seconds = known
    else:
        problem, seconds = lengths[path] = _audio_length(path, probes)
    if problem is not None or seconds is None:
        return problem, None
    if seconds == 0:
        return "the file holds no audio samples", None
    if start_time is not None and start_time >= seconds:
        return f"'audio.start_time' {start_time} s is past the end of the audio ({seconds:.2f} s)", None
    if end_time is not None and end_time > seconds + tolerance_s:
        return f"'audio.end_time' {end_time} s is past the end of the audio ({seconds:.2f} s)", None
    return None, min(seconds, end_time if end_time is not None else seconds) - (start_time or 0.0)


def _audio_length(path: str, probes: ProbeBudget | None) -> tuple[str | None, float | None]:
    """(what is wrong with the file ``path`` as a whole, its length in seconds) from its header (:func:`slice_check`);
    (None, None) where the header cannot be read."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:  # no header to read: it failed only once decoded
        return "the file is empty (0 bytes)", None
    seconds = _header_duration(path)
    if seconds is None and os.path.isfile(path):
        # a .wav libsndfile cannot read is broken or another format under that name: it failed only hours into
        # training (the DataLoader decoding it); ffprobe tells which (an mp3 saved as .wav is read by ffmpeg), and
        # how long an m4a is (a 36 s m4a whose 'duration' said 5 s stopped fine-tuning at the batch that drew it)
        ffprobe = shutil.which("ffprobe")
        if ffprobe is not None and (probes is None or probes.take()):
            seconds, error = _ffprobe_duration(ffprobe, path)
            if error:  # no length without an error: a stream that does not say it (a browser's webm), read whole
                return f"not readable as audio ({error.splitlines()[-1]})", None
    return None, seconds


def audio_bytes_duration(data: bytes, name: str = "audio") -> float:
    """Duration in seconds of an audio file held in memory: from the header for wav/flac/ogg, else by decoding."""
    seconds = _header_duration(io.BytesIO(data))
    return seconds if seconds else len(decode_audio_bytes(data, name=name)) / SAMPLE_RATE  # no length: decoded


def audio_duration(path: str | os.PathLike) -> float:
    """Duration of an audio file in seconds, read from its header (no full decode for wav/flac/ogg)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioLoadError(f"{path}: audio file not found")
    seconds = _header_duration(path)
    if seconds is not None:
        return seconds
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        raise AudioLoadError(f"{path}: cannot read its header and ffprobe is not installed")
    seconds, error = _ffprobe_duration(ffprobe, path)
    if error:
        raise AudioLoadError(f"{path}: cannot read the duration ({error})")
    return seconds if seconds is not None else len(load_audio(path)) / SAMPLE_RATE  # a stream that does not say


def _ffprobe_duration(ffprobe: str, path: str) -> tuple[float | None, str]:
    """(seconds, "") of a file as ffprobe reads its container (m4a, a video: tens of ms); (None, "") where the
    container does not say (a webm a browser recorded as a stream: "N/A"); (None, the error) where ffprobe cannot
    read it or it holds no audio stream (a PNG named .wav also says "N/A")."""
    proc = subprocess.run(
        [ffprobe, "-v", "error", "-select_streams", "a", "-show_entries", "stream=codec_type:format=duration",
         "-of", "json", path],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return None, proc.stderr.strip() or f"ffprobe exited with {proc.returncode}"
    try:
        found = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError:
        return None, "ffprobe's answer was not JSON"
    if not found.get("streams"):  # an image, a video without sound: no length of audio either
        return None, "no audio stream"
    try:
        return float(found.get("format", {}).get("duration")), ""
    except (TypeError, ValueError):
        return None, ""


def total_seconds(paths: Sequence[str | os.PathLike], enough: float = math.inf, probe_limit: int = 8) -> float | None:
    """Total duration in seconds of the audio files ``paths``, summed until it reaches ``enough``: from the headers
    libsndfile reads (wav/flac/ogg/mp3; no decoding), else from ffprobe (m4a, a video) for at most ``probe_limit``
    files (tens of ms each), past which the total is unknown: None (also without ffprobe). A file that is not audio,
    or is missing, adds nothing: it fails when it is decoded, and the others' audio is what is transcribed."""
    total, probed = 0.0, 0
    ffprobe = shutil.which("ffprobe")
    for path in paths:
        path = os.fspath(path)
        seconds = _header_duration(path) if os.path.isfile(path) else 0.0
        if seconds is None:
            if ffprobe is None or probed == probe_limit:
                return None
            probed += 1
            seconds = _ffprobe_duration(ffprobe, path)[0] or 0.0
        total += seconds
        if total >= enough:
            break
    return total


def save_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a mono float32 waveform as 16-bit PCM WAV."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(os.fspath(path), samples, sample_rate, subtype="PCM_16")


def quietest_point(samples: np.ndarray, start: int, end: int, window: int = SAMPLE_RATE // 20) -> int:
    """The sample in ``samples[start:end]`` (float32, shape (n,)) at the centre of the quietest ``window`` samples
    (least energy; default 50 ms, about a gap between two syllables); ``start`` when the range is shorter than that."""
    seg = np.asarray(samples[start:end], dtype=np.float64)
    if len(seg) <= window:
        return start
    energy = np.convolve(seg * seg, np.ones(window), mode="valid")  # energy of each window, by its first sample
    return start + int(np.argmin(energy)) + window // 2
