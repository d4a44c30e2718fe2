"""The one inference engine: infer.py, evaluation.py, the web UI and realtime transcription all use it.

Two backends decode the same way:

* ``transformers`` — ``WhisperForConditionalGeneration.generate`` (fp16 on GPU, bf16 autocast on CPU, SDPA
  or flash-attention-2, optional ``torch.compile``);
* ``ct2`` — a CTranslate2 model through faster-whisper (int8 on CPU, float16 on GPU).

Audio flows ``path → waveform (samples,) at 16 kHz → chunks of ≤ 30 s → log-mel (B, n_mels, 3000) →
token ids → Transcript``. Audio up to 30 s is one chunk (none when the VAD hears no speech in it; realtime
callers: the whole buffer, no VAD); longer audio is cut at silences by silero-vad (utils/vad.py) and the chunks
are decoded in batches, or, with ``condition_on_previous_text``, one after another, each prompted with the text
before it.
Both guard against hallucination loops like the reference decoder: a chunk whose text compresses too well
(repetition) or whose average log-probability is too low is decoded again at the next temperature, and a
chunk that is probably silence is dropped. A long recording's chunk whose text repeats itself (a sentence
said several times: Whisper loses count) is decoded again in pieces cut at its silences, about one repetition
each. A decode that ends in a loop of a few tokens (noise: "…at 9.10.10.10…")
is decoded on from where the loop starts (ct2: the text before it as prefix, the loop's n-gram barred) or cut after
its first unit (transformers): no output ends in a loop. What counts as a loop, a repetition, a take made up or
speech left unread, and which parts of a chunk are read again: :mod:`utils.repeats`.

    >>> engine = load_transcriber("openai/whisper-base", backend="transformers")
    >>> engine.transcribe("dataset/test.wav", DecodeOptions(language="zh", timestamps=True)).text
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from utils.audio import SAMPLE_RATE, TIME_PRECISION, WINDOW_S, load_audio, mono_waveform
from utils.data import DecodeStats, Segment, Word
from utils.device import cpu_flags, cpu_has_amx, cpu_has_vnni, cpu_model, isa_env, resolve_ct2_device, resolve_device
from utils.io import write_json_atomic
from utils.languages import (AUTO_LANGUAGE, HAN_KANA_RANGES, LANGUAGES, decode_language, join_texts,
                             language_code)
from utils.repeats import (
    BUDGET_LOOP_TOKENS,
    LOOP_REPEATS,
    MAX_UNREAD_SPEECH_S,
    REPEAT_SPAN_TOKENS,
    SEAM_SLACK,
    SHORT_LOOP_TOKENS,
    SLOWEST_TOKENS_PER_SPEECH_S,
    Reading,
    RereadPart,
    compression_ratio,
    cut_at_quiet_points,
    cut_in_two,
    is_decoder_loop,
    longest_repeat,
    loop_ngram,
    overread,
    repeat_period,
    repeat_unit,
    reread_parts,
    tail_loop,
    take_seams,
    take_seconds,
    take_sizes,
    unread_speech,
)
from utils.text import hotword_text, remove_punctuation, to_simplified
from utils.vad import (
    CHUNK_LEAD_S,
    SPEECH_PAD_S,
    Chunk,
    part,
    speech_regions,
    split_on_silence,
    whole_clip,
    widened_to_sound,
    with_lead,
)

logger = logging.getLogger(__name__)

BACKENDS = ("transformers", "ct2")
DTYPES = ("auto", "float32", "bfloat16", "float16")
CT2_ENCODERS = ("auto", "torch", "onnx", "ct2")
# With AMX, PyTorch bf16 encodes a 30 s window faster than onnxruntime int8 (0.17 vs 0.29 s, whisper-base, 2 threads),
# but importing PyTorch costs 1.5 s at start-up, which the ct2 backend otherwise never pays. Whole command,
# infer.py --backend=ct2 (tools/bench_infer.py --whole_process=True; 2-core Xeon with AMX): 104.6 s of English
# 6.41 s with PyTorch vs 5.58 s with onnxruntime, 422 s 15.37 vs 15.73 s: even at about 330 s of audio.
TORCH_ENCODER_MIN_AUDIO_S = 300.0
# 30 s windows per encoder call on the CPU. The encoder's attention holds (windows × heads × 1500 × 1500) scores:
# 1.15 GB per layer for 16 windows, so big batches spend their time on memory, not arithmetic. Measured
# (tools/bench_infer.py --encoder_batches=1,2,16; whisper-base, 2-core EPYC without AMX; s per window, PyTorch fp32
# / CT2 int8): 0.622 / 0.569 at 1, 0.637 / 0.531 at 2, 0.750 / 0.700 at 16; 0.686 / 0.644 at 16 on its AVX2 profile.
CPU_ENCODER_WINDOWS = 2
# CTranslate2 calls run at once on a CPU (its inter_threads), each on a part of a batch. A decoding step is small and
# waits on its threads more than it computes: one 25 s chunk decodes faster on one thread than on two (beam 3:
# 1.6-1.9 vs 2.1-2.8 s), and a batch decoded as two halves side by side on one thread each is 1.3-1.7x faster than the
# whole batch on one worker with both threads (same tokens; whisper-base, beam 1/3/5, 2-core AMD EPYC Zen 4 and its
# AVX2 profile; a 2-core Zen 5 EPYC VM decodes one window faster on two: tune_lone_decoder below); more workers than
# cores are slower. So each worker gets threads // 2 threads. An encoder window is the other way round: a 30 s window
# alone takes 1.3 s on one thread against 0.75 on two (AVX2-only EPYC). Where CTranslate2 encodes (CPUs without
# VNNI), windows go to the workers in pairs, side by side, and a window left alone (a short file, an odd last one, a
# stream's step) to a replica of its own on every thread (``SOLO_ENCODER_MAX_BYTES``).
# Before, each worker kept every thread: real Mandarin x8 (two windows) decoded in 1.5-1.7 s against 1.2-1.3 now.
CPU_WORKERS = 2
CT2_DEFAULT_THREADS = 4  # CTranslate2's intra_threads=0
# a window decoded alone (a stream's step, a short file) runs on the lone-window replica, on every thread, only where a
# timed test decode finds that at most this share of a one-thread worker's time (CT2Transcriber.tune_lone_decoder):
# which is faster depends on the machine, not its instruction set (README, Speed: 1.7x faster on every thread on a
# 2-core Zen 5 EPYC VM, 1.1-1.5x slower on the Zen 4 and AVX2-only EPYCs above), and on the process: on that Zen 5,
# after PyTorch ran its own threads in it, two threads took 5.6-6.3 ms per token against 4.2 on one
LONE_DECODE_MAX_SHARE = 0.85
# the weights are held twice with a lone-window replica: above this size (large models' int8 weights, 1.5 GB) each
# worker keeps every thread instead, as one replica set shares one copy of the weights
SOLO_ENCODER_MAX_BYTES = 1 << 30
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
SAMPLING_SEED = 0  # the temperature fallback's samples are drawn from generators seeded with it (DecodeOptions.seed)
MAX_SAMPLE_LEN = 224  # tokens per 30 s window at most, as the reference decoder (n_text_ctx // 2)
# HF measures repetition on the zlib ratio of 2-byte token ids, the reference Whisper on the UTF-8 text;
# 1.35 (HF's recommended value) on tokens corresponds to the reference's 2.4 on text.
_HF_RATIO_PER_TEXT_RATIO = 1.35 / 2.4
_SPACE_BETWEEN_CJK = re.compile(f"(?<=[{HAN_KANA_RANGES}]) (?=[{HAN_KANA_RANGES}])")
# a space the decoder put next to full-width punctuation ("我们用， Kubernetes ，部署"): Chinese text has none there
_SPACE_BY_FULL_WIDTH_MARK = re.compile(r"(?<=[，。！？；：、）》」』】])[ \t]+|[ \t]+(?=[，。！？；：、）》」』】])")


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode; the same options mean the same thing for both backends.

    Attributes:
        language: code or name ("zh", "chinese"); None = the language the model was fine-tuned on (its generation
            config's ``language``, which finetune.py writes), else detected from the first chunk; ``"auto"`` =
            always detected.
        task: "transcribe" or "translate" (to English).
        beam_size: 1 = greedy; beam search is used at temperature 0 only.
        timestamps: predict segment timestamps (otherwise one segment per chunk).
        temperatures: fallback schedule; the first is used unless a chunk fails the checks below.
        compression_ratio_threshold: zlib ratio of the UTF-8 text above which a chunk is a repetition loop.
        logprob_threshold: average token log-probability below which a chunk is decoded again.
        logprob_fallback: False = the temperature fallback only escapes a repetition loop, a low log-probability
            alone is not decoded again (the thresholds still decide what is silence).
        no_speech_threshold: a chunk with P(no speech) above this and a low log-probability is dropped.
        batch_size: chunks decoded at once.
        condition_on_previous_text: long audio's chunks one after another, each prompted with the text before it
            (slower than batches).
        to_simple: traditional → simplified Chinese; None = only when the language is Chinese.
        remove_pun: drop punctuation from the output text.
        initial_prompt: text given to the decoder as previous context (vocabulary, style).
        hotwords: words to steer towards (names, terms: "词1,词2", "A, B"; separators as :func:`hotword_text` reads
            them, written back as training writes them); they go into the previous-text prompt before
            any previous text, as faster-whisper does, on both backends.
        max_new_tokens: tokens generated per chunk at most (None = token_budget(chunk duration)).
        word_timestamps: also time every word (Chinese: every character) by cross-attention alignment; each
            segment then has ``words``.
        encoder_window_s: encode a batch of chunks in a window of at least this many seconds (the longest
            chunk + 5 s, rounded up to 5 s, at most 30: :func:`encoder_window`) instead of Whisper's 30 s. The
            encoder's cost falls faster than the window (whisper-base int8, 2 cores: 0.54 s at 30 s, 0.17 s at
            20 s, 0.07 s at 10 s), and so does the decoder's cross-attention; for short clips (evaluation) and
            streaming's buffers on a CPU. None = 30 s (the pieces a chunk is cut into still take a shorter one:
            :func:`_in_pieces`).
        read_on: with ``timestamps``, a chunk whose reading stopped at a timestamp with speech after it is read on
            from there (:func:`stopped_early`; the reference decoder's seek). Streaming's live decodes turn it off:
            the next step reads the buffer's end again.
        decode_stats: give every segment its text tokens and the statistics of the decode that read it
            (:class:`DecodeStats`: OpenAI's verbose_json fields). The ct2 backend has them from its decode; the
            transformers backend scores the kept text in one more decoder pass per batch (with the temperature
            fallback on, it scores every attempt anyway, to choose among them).
        seed: the transformers backend seeds PyTorch with it before every batch it may sample in, so the same audio
            gives the same text run after run (13 different transcripts in 15 runs of one file before); CTranslate2
            seeds each decoding thread once, with ``SAMPLING_SEED`` (the ct2 backend sets it when it loads).
    """

    language: str | None = None
    task: str = "transcribe"
    beam_size: int = 1
    timestamps: bool = False
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    logprob_fallback: bool = True
    no_speech_threshold: float | None = 0.6
    batch_size: int = 8
    condition_on_previous_text: bool = False
    to_simple: bool | None = None
    remove_pun: bool = False
    initial_prompt: str | None = None
    hotwords: str | None = None
    max_new_tokens: int | None = None
    word_timestamps: bool = False
    encoder_window_s: float | None = None
    read_on: bool = True
    decode_stats: bool = False
    seed: int = SAMPLING_SEED

    def __post_init__(self) -> None:
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', got {self.task!r}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.encoder_window_s is not None and not 1.0 <= self.encoder_window_s <= WINDOW_S:
            raise ValueError(f"encoder_window_s must be between 1 and {WINDOW_S:g} s, got {self.encoder_window_s}")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be a non-empty list of values >= 0, got {self.temperatures}")
        object.__setattr__(self, "language", decode_language(self.language))
        if self.hotwords is not None:  # one separator style whatever the user typed (:func:`hotword_text`)
            object.__setattr__(self, "hotwords", hotword_text(self.hotwords) or None)


@dataclass(frozen=True)
class Transcript:
    """The result of transcribing one recording. Times are seconds from the start of the audio."""

    text: str
    language: str | None
    language_probability: float
    duration: float
    segments: list[Segment] = field(default_factory=list)

    @classmethod
    def collect(cls, segments: Iterable[Segment], info: TranscriptionInfo) -> Transcript:
        """The whole transcript from ``transcribe_segments``' iterator (consumed here) and info."""
        segments = list(segments)
        return cls(join_texts([s.text for s in segments]), info.language, info.language_probability, info.duration,
                   segments)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        d = asdict(self)
        d["segments"] = [_segment_dict(s) for s in self.segments]
        return d


def _segment_dict(s: Segment) -> dict[str, Any]:
    d: dict[str, Any] = {"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
    if s.stats is not None:
        d |= stats_dict(s)
    if s.words:
        d["words"] = [{"start": w.start, "end": w.end, "word": w.word, "probability": w.probability}
                      for w in s.words]
    return d


def stats_dict(segment: Segment) -> dict[str, Any]:
    """A segment's decode statistics as OpenAI's verbose_json names them (``seek``, ``tokens``, ``temperature``,
    ``avg_logprob``, ``compression_ratio``, ``no_speech_prob``); empty without ``stats``."""
    st = segment.stats
    if st is None:
        return {}
    return {"seek": st.seek, "tokens": list(segment.tokens), "temperature": st.temperature,
            "avg_logprob": round(st.avg_logprob, 4), "compression_ratio": round(st.compression_ratio, 4),
            "no_speech_prob": round(st.no_speech_prob, 4)}


@dataclass(frozen=True)
class TranscriptionInfo:
    """What is known before the first segment is decoded (``Transcriber.transcribe_segments``)."""

    language: str | None
    language_probability: float
    duration: float  # seconds of audio
    chunks: int  # pieces of ≤ 30 s decoded (in batches, or one by one: condition_on_previous_text); 0: no speech


@dataclass(frozen=True)
class _ChunkResult:
    """Decoded text of one ≤ 30 s chunk; segment times relative to the chunk start; ``words`` (when asked for)
    holds each segment's words, also relative to the chunk start."""

    segments: list[tuple[float, float, str]]
    text: str
    tokens: list[list[int]] | None = None  # each segment's text tokens
    words: list[list[Word]] | None = None
    stats: list[DecodeStats] | None = None  # each segment's decode (DecodeOptions.decode_stats); seek from the chunk
    # the decode stopped at its token budget (the text is not a loop): the chunk's last words may be unread
    out_of_budget: bool = False
    avg_logprob: float | None = None  # the kept decode's average token log-probability (None: not scored)


class _Piece(NamedTuple):
    """A segment as decoded, before post-processing; times in seconds from the start of the audio."""

    start: float
    end: float
    text: str
    words: list[Word] | None = None
    tokens: list[int] | None = None
    stats: DecodeStats | None = None


FRAMES_PER_S = SAMPLE_RATE // 160  # Whisper's log-mel frames (DecodeStats.seek)


def _moved(stats: DecodeStats, shift_s: float) -> DecodeStats:
    """``stats`` of a decode that starts ``shift_s`` seconds later (not before the audio: a chunk's lead of silence
    added in front, ``with_lead``, is not in the audio)."""
    return replace(stats, seek=max(0, stats.seek + round(shift_s * FRAMES_PER_S)))


def encode_as_text(encode: Callable[[str], list[int]], text: str) -> list[int]:
    """Token ids of ``text`` read as text (a prompt, hotwords, a prefix): every ``<|`` is encoded apart as ``<`` and
    ``|...``, so a control or timestamp token typed in it (``<|translate|>``, ``<|1.00|>``) is its characters, not
    the token (``encode``: a tokenizer's plain encode, no special tokens added)."""
    first, *rest = text.split("<|")
    ids = encode(first) if first else []
    for piece in rest:
        ids += encode("<") + encode("|" + piece)
    return ids


def postprocess_text(text: str, language: str | None, to_simple: bool | None, remove_pun: bool) -> str:
    """Apply the output options to decoded text (simplified Chinese, punctuation removal); spaces next to full-width
    punctuation go ("这个， API ，" → "这个，API，").

    A character whose byte tokens were cut apart (the decoder stopped, or put a timestamp, between them)
    decodes as U+FFFD: such halves are dropped, so no output ever shows "�".
    """
    text = _SPACE_BY_FULL_WIDTH_MARK.sub("", text.replace("\ufffd", ""))
    if to_simple or (to_simple is None and language in ("zh", "yue")):
        text = to_simplified(text)
    if remove_pun:
        text = _SPACE_BETWEEN_CJK.sub("", " ".join(remove_punctuation(text, keep_word_marks=True).split()))
    return text.strip()


def _word_texts(words: Sequence[Word], language: str | None, options: DecodeOptions) -> list[str]:
    """The words' texts with the output options applied (:func:`postprocess_text`). Traditional → simplified reads
    phrases (乾隆 stays 乾隆, 記憶體 becomes 内存; a character alone: 干, 记忆体): the words are converted together and
    each character given back to its word (a phrase that changes length to the word it starts in), so they read as
    their segment's text does (the srt built from the words said 干隆 where the txt said 乾隆)."""
    texts = [w.word for w in words]
    if not (options.to_simple or (options.to_simple is None and language in ("zh", "yue"))):
        return [postprocess_text(t, language, options.to_simple, options.remove_pun) for t in texts]
    joined = "".join(texts)
    converted = to_simplified(joined)
    owner = [k for k, t in enumerate(texts) for _ in t]  # the word each character of ``joined`` belongs to
    out = [""] * len(texts)
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=joined, b=converted, autojunk=False).get_opcodes():
        if tag in ("equal", "replace") and i2 - i1 == j2 - j1:
            for i, j in zip(range(i1, i2), range(j1, j2)):
                out[owner[i]] += converted[j]
        elif owner:
            out[owner[min(i1, len(owner) - 1)]] += converted[j1:j2]
    return [postprocess_text(t, language, False, options.remove_pun) for t in out]


def token_budget(duration_s: float, timestamps: bool, limit: int = MAX_SAMPLE_LEN) -> int:
    """Tokens a chunk of ``duration_s`` seconds may need: generous for dense speech (Mandarin reaches 8
    characters/s and some characters take 2-3 tokens: 20 tokens/s, +2/s for timestamps, +16), capped at
    ``limit`` (default the reference decoder's 224). A looping chunk stops there instead of at 448, and a
    batch of short clips does not wait for one runaway item."""
    return min(limit, int(16 + (22 if timestamps else 20) * duration_s))


def ct2_generated_at_most(prompt_tokens: int, max_length: int) -> int:
    """Tokens CTranslate2's Whisper ``generate(max_length=...)`` generates at most after a prompt (previous text and
    start sequence) of ``prompt_tokens`` tokens: half of ``max_length`` (the reference decoder's ``sample_len`` is
    half the text context), and no more than the context left after the prompt (CTranslate2's whisper.cc)."""
    return min(max_length // 2, max_length - (prompt_tokens - 1))


def ct2_max_length(prompt_tokens: int, max_new_tokens: int, model_max_length: int = 448) -> int:
    """The ``max_length`` to give CTranslate2's Whisper ``generate()`` so that it may generate ``max_new_tokens``
    after a prompt of ``prompt_tokens`` tokens (:func:`ct2_generated_at_most`), within the model's text context.
    ``prompt + max_new_tokens`` (what it was before 2026-12-04) let it generate only half of the budget: a 29.6 s
    chunk of Mandarin at 8 characters/s was cut after 114 of its 183 tokens, without a sign of the cut."""
    return min(model_max_length, max(2 * max_new_tokens, prompt_tokens - 1 + max_new_tokens))


# speech the VAD heard (seconds) that, decoded to no text, makes transcribe_segments warn (and half of it at least)
SPEECH_READ_AS_SILENCE_S = 5.0
PIECE_WINDOW_S = 10.0  # shortest encoder window of a cut chunk's pieces (:func:`_in_pieces`)
# shortest encoder window of a short chunk decoded beside a 30 s one (CT2Transcriber._decode_pipelined)
SHORT_CHUNK_WINDOW_S = 15.0
ENCODER_WINDOW_MARGIN_S = 5.0  # silence a shortened encoder window keeps after the longest chunk (see below)


def encoder_window(chunks: Sequence[np.ndarray], window_s: float | None) -> int:
    """Seconds of the encoder window for a batch of chunks: 30 (Whisper's) when ``window_s`` is None, else at
    least ``window_s`` and the longest chunk + ``ENCODER_WINDOW_MARGIN_S``, rounded up to a multiple of 5, at
    most 30.

    Whisper was trained on 30 s windows, speech followed by padding; it needs some of that padding to end its
    text. Measured with transformers, greedy, one clip per window (2.6–20 s clips: the demo test set with the
    demo model, espeak and real English with openai/whisper-base): a window of the clip + 1–2 s made it loop on
    an English sentence ("Turn left at the bank …" six times) and misread others (WER 0.155 → 1.37); + 3 s and
    more read about like 30 s (CER 0.109 → 0.106 at + 5 s; real English WER 0.036 → 0.041, one word; espeak English
    0.155 → 0.162), and at least 15 s exactly like it on both English sets (evaluation's default on a CPU). A decode
    that still loops in a short window is decoded again in 30 s (``_decode_words``).
    """
    if window_s is None:
        return int(WINDOW_S)
    longest = max((len(c) for c in chunks), default=0) / SAMPLE_RATE
    return int(min(WINDOW_S, 5 * math.ceil(max(window_s, longest + ENCODER_WINDOW_MARGIN_S) / 5)))


def _needs_30_s(chunk: np.ndarray) -> bool:
    """Whether a chunk (samples) takes Whisper's whole 30 s window: it leaves less than ``ENCODER_WINDOW_MARGIN_S``
    of it free (:func:`encoder_window` would give 30 s at any ``window_s``)."""
    return len(chunk) >= (WINDOW_S - ENCODER_WINDOW_MARGIN_S) * SAMPLE_RATE


def pad_log_mel(mel: np.ndarray, frames: int = int(WINDOW_S * SAMPLE_RATE) // 160) -> np.ndarray:
    """Trim or pad a normalised log-mel chunk (n_mels, n) to ``frames`` frames as Whisper pads its input.

    Training, the transformers backend and openai/whisper pad the *audio* with zeros to 30 s, so frames past
    the speech hold the log-mel of silence: the dynamic-range floor, ``max - 8`` (``max - 2`` after the
    ``(x + 4) / 4`` normalisation; never below log10(1e-10)). faster-whisper's batched pipeline pads the
    log-mel with 0.0 instead, a value a fine-tuned model never saw in training.
    """
    n = mel.shape[-1]
    if n >= frames:
        return mel[..., :frames]
    floor = max(float(mel.max()) - 2.0, (-10.0 + 4.0) / 4.0) if n else (-10.0 + 4.0) / 4.0
    out = np.full(mel.shape[:-1] + (frames,), floor, dtype=mel.dtype)
    out[..., :n] = mel
    return out


def split_timestamp_tokens(tokens: Sequence[int], timestamp_begin: int, eot: int,
                           duration: float) -> list[tuple[float, float, list[int]]]:
    """Split Whisper output tokens at timestamp tokens into (start, end, text tokens), times in seconds.

    Handles both ``<|0.00|> a <|2.40|><|2.40|> b <|5.00|>`` and ``<|0.00|> a <|2.40|> b <|5.00|>``;
    text after the last timestamp ends at ``duration``.
    """
    segments: list[tuple[float, float, list[int]]] = []
    last = 0.0
    text: list[int] = []
    for tok in tokens:
        if tok >= timestamp_begin:
            t = min((tok - timestamp_begin) * TIME_PRECISION, duration)
            if text:
                segments.append((last, max(t, last), text))
                text = []
            last = t
        elif tok < eot:
            text.append(tok)
    if text:
        segments.append((last, max(duration, last), text))
    return segments


class Transcriber(Protocol):
    """What every caller uses; both backends implement it."""

    backend: str
    multilingual: bool

    def transcribe(self, audio: np.ndarray | str | os.PathLike, options: DecodeOptions = ...,
                   *, initial_prompt: str | None = None, cut_clip: bool = True) -> Transcript: ...

    def transcribe_segments(self, audio: np.ndarray | str | os.PathLike, options: DecodeOptions = ...,
                            *, initial_prompt: str | None = None, cut_clip: bool = True
                            ) -> tuple[Iterator[Segment], TranscriptionInfo]: ...

    def transcribe_batch(self, audios: Sequence[np.ndarray], options: DecodeOptions = ...,
                         vad: bool = True) -> list[Transcript]: ...

    def fixed_language(self, options: DecodeOptions) -> str | None: ...

    def check_language(self, language: str | None, flag: str = "--language=") -> None: ...

    def check_task(self, task: str, language: str | None = None, flag: str = "--task=") -> None: ...

    def tune_lone_decoder(self, steps: int = 12, record: str | os.PathLike | None = None,
                          reuse: bool = False) -> bool: ...


class _BaseTranscriber:
    """Chunking, language detection, batching and post-processing shared by both backends.

    A backend implements ``_detect_language``, ``_decode``, ``_word_tokenizer`` and ``_align``.
    """

    backend = "base"
    multilingual = True
    model_language: str | None = None  # the language the model was fine-tuned on, from its generation config
    model_task: str | None = None  # the task it was fine-tuned for (finetune.py --task), from the same config
    _warned_timestamps = False
    # held around each use of the model by a call (a batch's decode, its checks and re-reads; a language detection):
    # the transformers backend changes the model while it runs (the encoder window in the config, hooks on the decoder
    # layers for the alignment, the encoder output kept for the next step), so two threads sharing one engine (the web
    # UI's sessions) read each other's audio; the ct2 backend keeps no such state
    _lock: contextlib.AbstractContextManager = contextlib.nullcontext()

    # -- backend hooks ------------------------------------------------------------------------------
    def _detect_language(self, chunks: Sequence[np.ndarray]) -> list[tuple[str, float]]:
        """(language code, probability) per chunk of ≤ 30 s."""
        raise NotImplementedError

    def _decode(self, chunks: Sequence[np.ndarray], languages: Sequence[str], options: DecodeOptions,
                prompt: str | None, split_repeats: Sequence[bool] | None = None) -> list[_ChunkResult]:
        """Decode chunks of ≤ 30 s in one batch, with temperature fallback, except for a chunk whose
        ``split_repeats`` is true and whose greedy text repeats itself (:func:`repeat_period`): the caller cuts
        that one into pieces instead (:meth:`_decode_chunks`)."""
        raise NotImplementedError

    def _word_tokenizer(self, language: str, task: str) -> Any:
        """faster-whisper's ``Tokenizer`` for ``language``/``task`` (sot sequence, word splitting)."""
        raise NotImplementedError

    def _align(self, chunks: Sequence[np.ndarray], languages: Sequence[str], tokens: Sequence[list[int]],
               task: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per chunk, the alignment of its text tokens: (DTW path token rows, path encoder frames, probability
        of each text token); rows 0..len(tokens), the last one for the end of text."""
        raise NotImplementedError

    def _with_scores(self, waves: Sequence[np.ndarray], results: list[_ChunkResult], language: str,
                     options: DecodeOptions) -> list[_ChunkResult]:
        """``results`` (the readings of ``waves``) with the average log-probability of each that has text and none,
        where :func:`_doubtful` is asked of them (readings read again, and their re-reads): the ct2 backend has it
        from every decode; the transformers backend scores a decode for its fallback or statistics only (scoring
        every one cost evaluation.py 11 %)."""
        return results

    # -- shared logic -------------------------------------------------------------------------------
    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        """Language of the first 30 s of a waveform, with its probability."""
        audio = mono_waveform(audio)
        with self._lock:
            return self._detect_language([audio[: int(WINDOW_S * SAMPLE_RATE)]])[0]

    def tune_lone_decoder(self, steps: int = 12, record: str | os.PathLike | None = None,
                          reuse: bool = False) -> bool:
        """Pick how a window decoded alone runs on this machine, by timing it (the ct2 backend on a CPU:
        :meth:`CT2Transcriber.tune_lone_decoder`); for programs that decode many windows alone (live transcription,
        the server, the web UI, folders of short files). Returns whether that changed anything (here: nothing)."""
        return False

    _language_codes: set[str] = set()

    def languages(self) -> set[str]:
        """The language codes this model has a token for (whisper-base: 99; Cantonese, yue, came with large-v3)."""
        return self._language_codes

    def check_language(self, language: str | None, flag: str = "--language=") -> None:
        """Raise ValueError when ``language`` (a code; None and auto: detected) is one this model has no token for:
        an English-only model asked for another language, or a code of a later Whisper (yue on whisper-base), which
        transformers refused with a traceback and CTranslate2 decoded as garbage. ``flag``: how the message names the
        setting (the server's form field: ``"language "``)."""
        if language in (None, AUTO_LANGUAGE) or language in self.languages():
            return
        if not self.multilingual:
            raise ValueError(f"{flag}{language}: this model is English-only; use --language=en or a multilingual "
                             "model")
        raise ValueError(f"{flag}{language}: this model has no <|{language}|> token (it knows "
                         f"{len(self.languages())} languages; yue came with large-v3); use another --language or a "
                         "model that has it")

    def check_task(self, task: str, language: str | None = None, flag: str = "--task=") -> None:
        """Raise ValueError for a task this model cannot do: an English-only model cannot translate (it read German
        speech as English sounds, "Good and modern, it must avoid the in-ski noggin"). Warn when translating with
        ``language`` English: the language names the speech, which is then read as English. ``flag``: how messages
        name the task setting."""
        if task != "translate":
            return
        if not self.multilingual:
            raise ValueError(f"{flag}translate: this model is English-only and cannot translate; use a multilingual "
                             "model (openai/whisper-base, ...)")
        if language == "en" or (language is None and self.model_language == "en"):  # given, or the model's own
            source = "" if language == "en" else " (the language the model was fine-tuned on)"
            logger.warning("%stranslate with language en%s: the speech is read as English (the language names the "
                           "speech, not the text, which is always English); give the spoken language or auto", flag,
                           source)

    def fixed_language(self, options: DecodeOptions) -> str | None:
        """The language ``options`` decode in without detecting it: ``options.language``, or when that is None the
        language the model was fine-tuned on; None = detect (``"auto"``, or no such language)."""
        if options.language == AUTO_LANGUAGE:
            return None
        return options.language or self.model_language

    def _languages(self, chunks: Sequence[np.ndarray], options: DecodeOptions) -> list[tuple[str, float]]:
        if not self.multilingual:
            return [("en", 1.0)] * len(chunks)
        if (fixed := self.fixed_language(options)) is not None:
            return [(fixed, 1.0)] * len(chunks)
        out: list[tuple[str, float]] = []
        for i in range(0, len(chunks), options.batch_size):
            out += self._detect_language(chunks[i: i + options.batch_size])
        return out

    def _decode_words(self, chunks: Sequence[np.ndarray], languages: Sequence[str], options: DecodeOptions,
                      prompt: str | None, split_repeats: Sequence[bool] | None = None) -> list[_ChunkResult]:
        """``_decode``, then, when ``options.word_timestamps``, the words of every segment."""
        results = self._decode(chunks, languages, options, prompt, split_repeats)
        if any(short := self._short_windows(chunks, options)):
            results = self._redecode_loops_in_30_s(chunks, languages, options, prompt, split_repeats, results, short)
        return self._add_words(chunks, languages, results, options) if options.word_timestamps else results

    def _short_windows(self, chunks: Sequence[np.ndarray], options: DecodeOptions) -> list[bool]:
        """Per chunk of a batch: whether ``_decode`` encodes it in a window shorter than 30 s (``encoder_window``)."""
        return [encoder_window(chunks, options.encoder_window_s) < WINDOW_S] * len(chunks)

    def _redecode_loops_in_30_s(self, chunks: Sequence[np.ndarray], languages: Sequence[str],
                                options: DecodeOptions, prompt: str | None, split_repeats: Sequence[bool] | None,
                                results: list[_ChunkResult], short: Sequence[bool]) -> list[_ChunkResult]:
        """Chunks decoded in a shortened encoder window (``short``: :meth:`_short_windows`) whose text is a decoder
        loop (:func:`is_decoder_loop`), decoded again in Whisper's 30 s window: a short window makes loops likelier."""
        budget = options.max_new_tokens or token_budget(max(len(c) for c in chunks) / SAMPLE_RATE,
                                                         options.timestamps)
        threshold = options.compression_ratio_threshold or DecodeOptions.compression_ratio_threshold
        loops = []
        for i, r in enumerate(results):
            tokens = [t for piece in (r.tokens or []) for t in piece]
            if short[i] and r.text and is_decoder_loop(tokens, r.text, len(tokens) >= budget - 4, threshold):
                loops.append(i)
        if not loops:
            return results
        logger.debug("%d of %d chunks loop in a shortened encoder window: decoded again in 30 s", len(loops),
                     len(chunks))
        again = self._decode([chunks[i] for i in loops], [languages[i] for i in loops],
                             replace(options, encoder_window_s=None), prompt,
                             [split_repeats[i] for i in loops] if split_repeats else None)
        out = list(results)
        for i, r in zip(loops, again, strict=True):
            out[i] = r
        return out

    def _add_words(self, chunks: Sequence[np.ndarray], languages: Sequence[str], results: list[_ChunkResult],
                   options: DecodeOptions) -> list[_ChunkResult]:
        from utils.alignment import refine_word_times, token_times, words_for_tokens

        todo = [i for i, r in enumerate(results) if r.segments]
        if not todo:
            return results
        # the decoded tokens themselves: re-encoding the text can split it differently (" the" → " ", "the")
        pieces = {i: results[i].tokens for i in todo}
        if any(p is None for p in pieces.values()):
            raise RuntimeError(f"{self.backend} backend: _decode kept no tokens, which word timestamps need")
        paths = self._align([chunks[i] for i in todo], [languages[i] for i in todo],
                            [[t for piece in pieces[i] for t in piece] for i in todo], options.task)
        out = list(results)
        for i, (rows, frames, probs) in zip(todo, paths, strict=True):
            tokenizer = self._word_tokenizer(languages[i], options.task)
            times = token_times(rows, frames)
            duration = len(chunks[i]) / SAMPLE_RATE
            words, at = [], 0
            for piece in pieces[i]:
                words.append(words_for_tokens(tokenizer, piece, probs[at: at + len(piece)],
                                              times[at: at + len(piece) + 1], language=languages[i],
                                              duration=duration))
                at += len(piece)
            # refined as one run of words: a segment's last word was moved on to where the sound stops, over the
            # next segment's words (JFK's "do" ran to 10.36 s, its segment's "for your country." squeezed after it)
            refined = iter(refine_word_times([w for piece_words in words for w in piece_words], chunks[i]))
            out[i] = replace(results[i], words=[[next(refined) for _ in piece_words] for piece_words in words])
        return out

    def _decode_batched(self, chunks: Sequence[np.ndarray], languages: Sequence[str], options: DecodeOptions,
                        prompt: str | None) -> list[_ChunkResult]:
        results: list[_ChunkResult] = []
        for i in range(0, len(chunks), options.batch_size):
            results += self._decode_words(chunks[i: i + options.batch_size], languages[i: i + options.batch_size],
                                          options, prompt)
        return results

    def _decode_chunks(self, audio: np.ndarray, chunks: Sequence[Chunk], language: str, options: DecodeOptions,
                       prompt: str | None, depth: int = 0, decoded: Sequence[_ChunkResult] | None = None
                       ) -> list[_ChunkResult]:
        """Decode VAD chunks of a long recording (times relative to each chunk's start), in batches.

        With the same sentence said several times in one 30 s window, a model can lose count: drop a take, or loop
        on it to the token limit; without timestamp tokens it often reads only the first take. Sampling at higher
        temperatures does not cure that (it samples the same confusion, five times over, at random). So each batch
        is checked where a reading can have lost count (:meth:`_check_readings`: the text repeats itself, or it is
        slow for the chunk's speech): the text is aligned to the audio, and a stretch of speech that no token was
        aligned to (:func:`unread_speech`, ≥ ``MAX_UNREAD_SPEECH_S``) means text is missing; tokens piled on almost
        no time (:func:`overread`) mean a take made up. A chunk whose text repeats and left speech unread where one
        take fits has those takes decoded again alone, their text put in between the takes read
        (:func:`reread_parts`, :func:`_spliced`); one that ran away, made a take up or left more unread is cut at its
        silences into pieces about as long as one take (:func:`take_seconds`; the unit of a loop or of a reading that
        made takes up at the slowest rate of right readings, :func:`take_sizes`). Those are decoded too
        (``MAX_REPEAT_SPLITS`` levels deep); the pieces' text is kept when the chunk's own ran away or made a take up,
        or when it reads more (:func:`_reads_more`: a piece can drop a take as well). Another chunk that left speech
        unread is decoded again with timestamp tokens (when it was decoded without); if that reads no more, it is cut
        too, its reading taken as one take (a real AISHELL-1 sentence said three times in one window, read once both
        ways with onnxruntime's int8 encoder on an AMD Zen 4); if it reads more, it is checked again and, where takes
        are still unread or made up, cut by its unit, or, where its takes differ a little and no run repeats, into
        pieces no longer than the speech left unread (espeak English said 4 times, read once, then 3 times with
        timestamp tokens).
        A chunk whose text stopped at its token budget without a loop (:func:`_out_of_budget`: dense speech, e.g.
        Mandarin at 8 characters/s fills a 30 s window's 224 tokens before its end, and CTranslate2 cannot generate
        more in one call) is cut in two (:func:`cut_in_two`: at the pause nearest its middle, or its quietest point
        there) and both halves are read, as the chunk was (its beam and encoder window: a half holds many sentences,
        not one take). Decodes of audio decoded before
        fall back to higher temperatures only out of a loop (:func:`_again`), and one whose log-probability fails the
        check where the first reading's passes reads nothing (:func:`_unless_doubtful`: babble or singing the VAD took
        for speech, read alone); pieces that read nothing do not replace a reading. A chunk read right is decoded
        once.
        ``depth``: how many levels of cutting lie above these chunks (``MAX_REPEAT_SPLITS``: they are not cut);
        ``decoded``: the chunks' first decode, when the caller has it.
        """
        splittable = [depth < MAX_REPEAT_SPLITS and bool(c.breaks) for c in chunks]
        results: list[_ChunkResult] = []
        cuts: dict[int, list[RereadPart]] = {}  # per chunk: the parts read again, in pieces
        made_up: set[int] = set()  # cut chunks whose reading holds text their audio does not (:func:`overread`)
        wrong: set[int] = set()  # ... or ran away (a loop): their reading is no measure of how sure a piece is
        dense: set[int] = set()  # cut chunks whose reading used up its token budget (:func:`_out_of_budget`)
        tails: dict[int, float] = {}  # chunks whose timestamped reading stopped early: where (:func:`stopped_early`)
        for i in range(0, len(chunks), options.batch_size):
            batch = chunks[i: i + options.batch_size]
            waves = [audio[c.start: c.end] for c in batch]
            got = (list(decoded[i: i + options.batch_size]) if decoded is not None else
                   self._decode_words(waves, [language] * len(batch), options, prompt,
                                      splittable[i: i + options.batch_size]))
            if depth:  # a re-read: is it sure (_unless_doubtful)?
                got = self._with_scores(waves, got, language, options)
            units = [repeat_unit(_text_tokens(r)) if s else None
                     for r, s in zip(got, splittable[i: i + options.batch_size])]
            periods = [None if unit is None else unit[1] for unit in units]
            unread, checked = self._check_readings(waves, batch, got, periods, language, options)
            # a VAD chunk (not a clip the caller keeps whole: no speech regions) without a pause to cut it at
            no_pause = [depth == 0 and bool(c.spans) and not c.breaks for c in batch]
            for k, period in enumerate(periods):
                ran_away = _ran_away(got[k], batch[k].duration_s, options.timestamps)
                if period is None or not (ran_away or unread[k] >= MAX_UNREAD_SPEECH_S):
                    continue
                # a loop or a reading that made takes up: its unit at the slowest rate of right readings (at least the
                # span the repeat is found by: a 4-token loop's pieces are not cut at every pause)
                sizes = take_sizes(period, len(_text_tokens(got[k])), batch[k].duration_s, loop=ran_away,
                                   made_up=unread[k] == math.inf)
                reading = None if ran_away or unread[k] == math.inf else checked[k]
                seams = None if reading is None else take_seams(_text_tokens(got[k]), units[k])  # type: ignore
                if parts := _first_cut(batch[k], sizes, reading, seams, round(SEAM_SLACK * period)):
                    cuts[i + k] = parts
                    if unread[k] == math.inf:
                        made_up.add(i + k)
                    if unread[k] == math.inf or ran_away:
                        wrong.add(i + k)
            left = [k for k, seconds in enumerate(unread) if MAX_UNREAD_SPEECH_S <= seconds < math.inf
                    and i + k not in cuts]
            rechecked: dict[int, float] = {}  # timestamped re-readings kept that still leave speech unread: how much
            if not options.timestamps:
                # and text that repeats itself in a chunk without pauses to cut it at: read again with timestamp
                # tokens too (six sentences A B A B A B at 6.4 characters/s, 0.1 s apart, read "A B A B B" by ct2
                # and "A B A B" by transformers: the alignment of such a text leaves no stretch of speech unread)
                redo = [k for k, seconds in enumerate(unread) if i + k not in cuts and (
                    seconds >= MAX_UNREAD_SPEECH_S or (no_pause[k] and repeat_unit(_text_tokens(got[k])) is not None))]
                read = sorted(self._redo_with_timestamps(waves, got, redo, language, _again(options), prompt))
                # a reading that reads more can still leave takes out (one English sentence said 4 times, 1 s apart:
                # read once, then 3 times with timestamp tokens): checked again where it can be cut
                recheck = [k for k in read if splittable[i + k] or no_pause[k]]
                still, _ = self._check_readings([waves[k] for k in recheck], [batch[k] for k in recheck],
                                                [got[k] for k in recheck],
                                                [repeat_period(_text_tokens(got[k])) for k in recheck], language,
                                                options)
                # (one that made a take up, where it has pauses to be cut at: its pieces' text is kept, as for a first
                # reading that did)
                rechecked = {k: seconds for k, seconds in zip(recheck, still)
                             if MAX_UNREAD_SPEECH_S <= seconds < math.inf
                             or (seconds == math.inf and splittable[i + k])}
                for k, seconds in rechecked.items():
                    if seconds == math.inf:
                        made_up.add(i + k)
                        wrong.add(i + k)
                left = [k for k in left if k not in read] + list(rechecked)
            for k in left:  # speech still unread: cut at its pauses like a repeat
                tokens = _text_tokens(got[k])
                n = len(tokens)
                if (period := repeat_period(tokens)) is not None:
                    sizes = take_sizes(period, n, batch[k].duration_s, made_up=rechecked.get(k) == math.inf)
                else:  # read as one take: its length at the slowest right rate
                    take_s = take_seconds(n, n, batch[k].duration_s)
                    if MAX_UNREAD_SPEECH_S <= rechecked.get(k, math.inf) < math.inf:
                        # takes read a little differently ("jump"/"jumps": no run repeats) and one left out: pieces
                        # no longer than the speech left unread (as one take, 3 of 4 were cut into 2-take pieces,
                        # each read once)
                        take_s = min(take_s, max(rechecked[k], MIN_QUIET_PIECE_S))
                    sizes = [take_s]
                if splittable[i + k] and (parts := _first_cut(batch[k], sizes)):
                    cuts[i + k] = parts
                elif no_pause[k] and n:
                    # no pause to cut it at (sentences 0.1 s apart, fast: whisper-base read 2 of 6 AISHELL-1
                    # sentences in 12.3 s, 8.3 s unread, and halves left a sentence each unread): pieces as long as
                    # the speech it did read, cut at quiet points, each read like the chunk
                    read_s = batch[k].duration_s - rechecked.get(k, unread[k])
                    cuts[i + k] = cut_at_quiet_points(batch[k], waves[k], max(MIN_QUIET_PIECE_S, read_s))
                    dense.add(i + k)
            for k, result in enumerate(got):  # dense speech: the budget ran out before the end: read it in halves
                if (depth < MAX_REPEAT_SPLITS and i + k not in cuts and periods[k] is None
                        and _out_of_budget(result, options)):
                    parts = cut_in_two(batch[k], waves[k])
                    logger.debug("a %.1f s chunk used up its token budget: read again in two halves",
                                 batch[k].duration_s)
                    cuts[i + k] = parts
                    dense.add(i + k)
            if options.timestamps and options.read_on:  # stopped at a timestamp with speech after it: read on
                for k, result in enumerate(got):
                    if i + k not in cuts and (stop := stopped_early(result, batch[k], waves[k])) is not None:
                        tails[i + k] = stop
            results += got
        if again := [*tails, *cuts]:  # the readings read again: are they sure (_unless_doubtful)?
            scored = self._with_scores([audio[chunks[i].start: chunks[i].end] for i in again],
                                       [results[i] for i in again], language, options)
            for i, result in zip(again, scored):
                results[i] = result
        if tails:
            rest = [part(chunks[i], chunks[i].start + round(stop * SAMPLE_RATE), chunks[i].end)
                    for i, stop in tails.items()]
            logger.debug("%d of %d chunks' timestamped readings stopped with speech after them: %.1f s read on",
                         len(rest), len(chunks), sum(c.duration_s for c in rest))
            for (i, stop), tail in zip(tails.items(), self._decode_chunks(audio, rest, language, _again(options),
                                                                           prompt, depth + 1)):
                if (tail := _unless_doubtful(tail, results[i], options)).segments:
                    results[i] = _joined(results[i], tail, stop)
        if cuts:
            pieces = [p for parts in cuts.values() for part_ in parts for p in part_.pieces]
            logger.debug("%d of %d chunks lost count, left speech unread or used up their token budget: %.1f of their "
                         "%.1f s decoded again in %d pieces", len(cuts), len(chunks), sum(p.duration_s for p in pieces),
                         sum(chunks[i].duration_s for i in cuts), len(pieces))

            def decoded_again(which: list[int], again: DecodeOptions) -> Iterator[_ChunkResult]:
                todo = [p for i in which for part_ in cuts[i] for p in part_.pieces]
                return iter(self._decode_chunks(audio, todo, language, again, prompt, depth + 1) if todo else ())

            # a take alone: greedy, in a short window (_in_pieces); half of a dense chunk holds many sentences: read
            # like the chunk, in the command's beam and window (the two dense Mandarin recordings of the README's
            # Speed section, cut in about halves: CER 0.258 / 0.373 greedy in 20 s windows, 0.222 / 0.303 so)
            takes = decoded_again([i for i in cuts if i not in dense], _in_pieces(options))
            halves = decoded_again([i for i in cuts if i in dense], _again(options))
            tokenizer = self._word_tokenizer(language, options.task)
            for i, parts in cuts.items():
                redone = halves if i in dense else takes
                rereads = []
                first = None if i in wrong else results[i]
                for part_ in parts:
                    result = _unless_doubtful(next(redone), first, options)
                    for piece in part_.pieces[1:]:
                        result = _joined(result, _unless_doubtful(next(redone), first, options),
                                         (piece.start - part_.region.start) / SAMPLE_RATE)
                    rereads.append((part_, result))
                result = _spliced(results[i], chunks[i], rereads, tokenizer)
                if i in made_up or _reads_more(result, results[i], chunks[i].duration_s, options.timestamps):
                    results[i] = result
        return results

    def _check_readings(self, waves: Sequence[np.ndarray], chunks: Sequence[Chunk], results: Sequence[_ChunkResult],
                        periods: Sequence[int | None], language: str, options: DecodeOptions
                        ) -> tuple[list[float], dict[int, Reading]]:
        """Per chunk of a decoded batch, the longest stretch of its speech that no text token was aligned to
        (:func:`unread_speech`, seconds), ``math.inf`` where the text holds more than the speech (:func:`overread`: a
        take made up); 0.0 for a chunk not checked. Checked (one alignment call for the batch,
        on the encoder output the decode kept): a text that repeats itself (``periods``) and did not run away, and,
        without timestamp tokens, a text slower than right readings are for the chunk's speech
        (``SLOWEST_TOKENS_PER_SPEECH_S``): the first take read and the others left out. Also, per chunk checked, where
        its tokens and its speech lie (:class:`Reading`)."""
        from utils.alignment import token_times

        check: dict[int, list[tuple[float, float]]] = {}
        for k, (wave, chunk, result) in enumerate(zip(waves, chunks, results)):
            n = len(_text_tokens(result))
            if not n or _ran_away(result, chunk.duration_s, options.timestamps):
                continue
            repeats = periods[k] is not None
            slow = not options.timestamps and n < SLOWEST_TOKENS_PER_SPEECH_S * (
                chunk.duration_s if chunk.speech is None else chunk.speech / SAMPLE_RATE)
            if repeats or slow:
                spans = chunk_speech(chunk, wave)
                if repeats or n < SLOWEST_TOKENS_PER_SPEECH_S * sum(e - s for s, e in spans):
                    check[k] = spans
        unread = [0.0] * len(waves)
        if not check:
            return unread, {}
        paths = self._align([waves[k] for k in check], [language] * len(check),
                            [_text_tokens(results[k]) for k in check], options.task)
        readings = {}
        for (k, spans), (rows, frames, _) in zip(check.items(), paths, strict=True):
            readings[k] = Reading(token_times(rows, frames), spans)
            unread[k] = math.inf if overread(readings[k].starts) else unread_speech(readings[k].starts, spans)
        logger.debug("checked %d of %d readings against their speech: unread %s s", len(check), len(waves),
                     [round(unread[k], 1) for k in check])
        return unread, readings

    def _redo_with_timestamps(self, waves: Sequence[np.ndarray], results: list[_ChunkResult], which: Sequence[int],
                              language: str, options: DecodeOptions, prompt: str | None) -> set[int]:
        """Decode the chunks ``which`` of ``waves`` again with timestamp tokens and keep each reading (in place in
        ``results``) where it holds more text tokens than the one without, is no loop, and is
        :func:`_sure_enough` (babble the VAD took for speech was read as "Thank you." between two real sentences);
        returns those chunks.

        Without timestamp tokens Whisper stops after the first of several takes of one sentence in a window: on real
        recordings (AISHELL-1 and JFK clips, dataset/real/) a sentence said 2, 3 or 5 times in 10-28 s was read once
        by whisper-base and by a fine-tuned model, on both backends; with timestamp tokens it reads every take (as
        the reference decoders do by default). Different sentences in a window read the same both ways.
        """
        if not which:
            return set()
        logger.debug("%d chunks left speech unread, made text up or repeat themselves: decoded again with timestamp "
                     "tokens", len(which))
        # at the first temperature only: a reading that loops is no better one, and sampling to escape it cost five
        # decodes to the token budget (25 s of sung music: 114 s of 131 on the transformers backend)
        redone = self._decode_batched([waves[k] for k in which], [language] * len(which),
                                      replace(options, timestamps=True, temperatures=options.temperatures[:1]), prompt)
        redone = self._with_scores([waves[k] for k in which], redone, language, options)
        firsts = dict(zip(which, self._with_scores([waves[k] for k in which], [results[k] for k in which], language,
                                                   options)))
        threshold = options.compression_ratio_threshold or DecodeOptions.compression_ratio_threshold
        read = set()
        for k, result in zip(which, redone):
            tokens = _text_tokens(result)
            more = len(tokens) > len(_text_tokens(results[k]))
            # not a loop, nor a reading the log-probability check fails for one it passes
            if more and not is_decoder_loop(tokens, result.text, False, threshold) and _sure_enough(
                    result, firsts[k], options, wordless_first=True):
                results[k] = result
                read.add(k)
        return read

    def _finish(self, pieces: list[_Piece], language: str | None, probability: float,
                duration: float, options: DecodeOptions) -> Transcript:
        segments = list(self._segments_of(pieces, language, duration, options))
        return Transcript(join_texts([s.text for s in segments]), language, round(float(probability), 4),
                          round(duration, 3), segments)

    @staticmethod
    def _segments_of(pieces: Iterable[_Piece], language: str | None, duration: float,
                     options: DecodeOptions) -> Iterator[Segment]:
        """Post-processed, non-empty segments with times clamped to [previous end, duration]; their tokens and
        decode statistics when ``options.decode_stats``."""
        prev_end = 0.0
        for piece in pieces:
            text = postprocess_text(piece.text, language, options.to_simple, options.remove_pun)
            if not text:
                continue
            start = min(max(piece.start, prev_end), duration)
            end = min(max(piece.end, start), duration)
            words = []
            for w, word in zip(piece.words or (), _word_texts(piece.words or (), language, options), strict=True):
                if word:
                    w_start = min(max(w.start, start), end)
                    words.append(Word(round(w_start, 3), round(min(max(w.end, w_start), end), 3), word,
                                      w.probability))
            if words and words[-1].end > words[0].start:  # the segment is where its words are (timestamp tokens
                start, end = words[0].start, words[-1].end  # are whole seconds apart on some models)
            stats = piece.stats if options.decode_stats else None
            yield Segment(round(start, 3), round(end, 3), text, tuple(words),
                          tuple(piece.tokens or ()) if stats else (), stats)
            prev_end = end

    def transcribe_segments(self, audio: np.ndarray | str | os.PathLike, options: DecodeOptions = DecodeOptions(),
                            *, initial_prompt: str | None = None, cut_clip: bool = True
                            ) -> tuple[Iterator[Segment], TranscriptionInfo]:
        """Transcribe one recording of any length, segment by segment.

        The audio is cut and its language detected now; the segments are decoded as the iterator is consumed,
        one batch of ``options.batch_size`` chunks at a time (a progress bar: ``segment.end / info.duration``).

        Args:
            audio: a path, or a float32 waveform of shape (samples,) at 16 kHz.
            options: decoding options.
            initial_prompt: previous text for the decoder (overrides ``options.initial_prompt``).
            cut_clip: audio of at most 30 s is one chunk, with its pauses found by the VAD (:func:`whole_clip`; none
                when the VAD finds no speech, as in long audio), so
                that a sentence said several times in it and misread (a take made up or left out) is decoded again
                take by take, as in a long recording. False: one chunk that is never cut (no VAD pass; streaming,
                which decodes its buffer every second and ends utterances at pauses itself).

        Raises:
            AudioLoadError: ``audio`` is a path that cannot be read.
        """
        began = time.perf_counter()
        audio = load_audio(audio) if isinstance(audio, (str, bytes, os.PathLike)) else mono_waveform(audio)
        if options.timestamps and getattr(self, "trained_without_timestamps", False) and not self._warned_timestamps:
            self._warned_timestamps = True
            logger.warning("this model was fine-tuned without timestamp tokens (finetune.py --timestamps=False): "
                           "its segment timestamps may be missing or wrong; fine-tune with --timestamps=True on data "
                           "with 'sentences' to keep them")
        prompt = initial_prompt if initial_prompt is not None else options.initial_prompt
        duration = len(audio) / SAMPLE_RATE
        if duration <= WINDOW_S:
            clip = (whole_clip(audio) if cut_clip else Chunk(0, len(audio))) if len(audio) else None
            chunks = [clip] if clip is not None else []
        else:
            if duration >= LONG_AUDIO_S:  # minutes pass before the first chunk is decoded: say what happens
                logger.info("%.0f min of audio read in %.0f s; finding its speech (VAD)", duration / 60,
                            time.perf_counter() - began)
            chunks = split_on_silence(audio, workers=self._side_by_side(options),
                                      batch_size=1 if options.condition_on_previous_text else options.batch_size)
            if duration >= LONG_AUDIO_S:
                logger.info("%d chunks of speech, %.0f min of it, found in %.0f s", len(chunks),
                            sum(c.end - c.start for c in chunks) / SAMPLE_RATE / 60, time.perf_counter() - began)
        if not chunks:
            fixed = self.fixed_language(options)
            info = TranscriptionInfo(fixed, 1.0 if fixed else 0.0, round(duration, 3), 0)
            return iter(()), info
        lead_s = chunks[0].lead / SAMPLE_RATE
        audio, chunks = with_lead(audio, chunks)
        arrays = [audio[c.start: c.end] for c in chunks]
        with self._lock:
            language, probability = self._languages(arrays[:1], options)[0]
        info = TranscriptionInfo(language, round(float(probability), 4), round(duration, 3), len(chunks))
        # condition_on_previous_text: the chunks one by one, each prompted with the text so far (the reference
        # decoder's context: its last 223 tokens are kept); silences are not decoded, as in batches. Before, the
        # backends' own sequential decoders ran over the whole recording: cues stretched over 60 s silences (ct2)
        # and transformers read one sentence 12 times over them and left 5 of 10 out
        step = 1 if options.condition_on_previous_text else options.batch_size
        pause_s = self._pause_to_cut_at(options, cut_clip)

        def pieces() -> Iterator[_Piece]:
            context = prompt
            never_cut = not cut_clip and duration <= WINDOW_S  # as deep as cutting goes: not cut at all
            speech_s = empty_s = 0.0  # seconds of the chunks the VAD heard speech in, and of those read as no text
            for i in range(0, len(chunks), step):
                batch = chunks[i: i + step]
                with self._lock:
                    results = self._decode_chunks(audio, batch, language, options, context,
                                                  MAX_REPEAT_SPLITS if never_cut else 0)
                    placed = self._placed(audio, batch, results, [c.offset_s - lead_s for c in batch], language,
                                          options, pause_s)
                for chunk, chunk_pieces in zip(batch, placed, strict=True):
                    heard = (chunk.speech or 0) / SAMPLE_RATE  # (None: not measured)
                    speech_s, empty_s = speech_s + heard, empty_s + (0.0 if chunk_pieces else heard)
                    yield from chunk_pieces
                if options.condition_on_previous_text:
                    context = join_texts([context or "", *(r.text for r in results)])[-PROMPT_CONTEXT_CHARS:]
            self._say_speech_read_as_silence(speech_s, empty_s, language, options)

        return self._segments_of(pieces(), language, duration, options), info

    def _say_speech_read_as_silence(self, speech_s: float, empty_s: float, language: str,
                                    options: DecodeOptions) -> None:
        """Warn when most of the speech the VAD heard (``speech_s`` seconds) decoded to no text (``empty_s``): the
        model's no-speech check dropped it (P(no speech) over ``no_speech_threshold`` at a low log-probability), as
        it does with speech in another language than the one it must write (44 s of English into a Chinese
        fine-tune gave an empty transcript without a word)."""
        if empty_s < SPEECH_READ_AS_SILENCE_S or empty_s < speech_s / 2:
            return
        given = self.fixed_language(options) is not None and self.multilingual  # (an English-only model: always en)
        fix = (f"if it is speech in another language than {language}, give --language=auto (or that language)"
               if given else "if it is speech, lower the no-speech check (--no_speech_threshold, --logprob_threshold)")
        logger.warning("%.1f of the %.1f s the VAD heard as speech decoded to no text (the model's no-speech check "
                       "dropped it): %s", empty_s, speech_s, fix)

    def _side_by_side(self, options: DecodeOptions) -> int:
        """Among how many CPU workers a batch's chunks are shared, every so many on one (``workers`` of
        :func:`utils.vad.merge_regions`); 1 where a batch decodes as one (it waits for its longest chunk) or chunks are
        decoded one by one."""
        return 1

    def _pause_to_cut_at(self, options: DecodeOptions, cut_clip: bool = True) -> float | None:
        """The pause (seconds) at which a decoded segment that holds speech on both sides of it is cut by its words
        (:meth:`_cut_at_pauses`); None = not cut. ``SEGMENT_PAUSE_S`` for a model fine-tuned without timestamp
        tokens: it reads a chunk (up to 30 s, nine sentences) as one segment (a subtitle cue per sentence, not per
        chunk). ``LONG_PAUSE_S`` for the others: Whisper's own segments span a short pause rightly, but not a long
        one (whisper-base cued "degree." 107.0 → 118.5 s, over 10 s of noise between two sentences). Not without
        timestamps, and not in streaming (``cut_clip`` False: its utterances end at the VAD's pauses already, and a
        step must stay cheap)."""
        if not (options.timestamps and cut_clip):
            return None
        return SEGMENT_PAUSE_S if getattr(self, "trained_without_timestamps", False) else LONG_PAUSE_S

    def _placed(self, audio: np.ndarray, chunks: Sequence[Chunk], results: list[_ChunkResult],
                offsets: Sequence[float], language: str, options: DecodeOptions,
                pause_s: float | None) -> list[list[_Piece]]:
        """Each decoded chunk's segments as pieces, moved onto its speech and by its offset (seconds); first cut
        where they cross a pause of ``pause_s`` (:meth:`_pause_to_cut_at`; None = not cut)."""
        spans = [_chunk_spans(chunk, audio) for chunk in chunks]
        if pause_s is not None:
            results = self._cut_at_pauses(audio, chunks, [r for r, _ in spans], language, results, options, pause_s)
        return [list(_shifted(r, offset, chunk_spans)) for r, offset, chunk_spans in zip(results, offsets, spans,
                                                                                         strict=True)]

    def _cut_at_pauses(self, audio: np.ndarray, chunks: Sequence[Chunk], regions: Sequence[list[tuple[float, float]]],
                       language: str, results: list[_ChunkResult], options: DecodeOptions,
                       pause_s: float) -> list[_ChunkResult]:
        """The chunks whose segments cross a pause of ``pause_s`` (:func:`crosses_pause`: a model fine-tuned without
        timestamp tokens read nine sentences over 29 s as one) cut there by their words (:func:`cut_at_pauses`),
        aligned for it where they were not (those chunks only: the others cost nothing more)."""
        todo = [k for k, r in enumerate(results) if r.segments and crosses_pause(r.segments, regions[k], pause_s)]
        if not todo:
            return results
        out = list(results)
        need = [k for k in todo if out[k].words is None]
        if need:
            aligned = self._add_words([audio[chunks[k].start: chunks[k].end] for k in need], [language] * len(need),
                                      [out[k] for k in need], replace(options, word_timestamps=True))
            for k, r in zip(need, aligned, strict=True):
                out[k] = r
        decode = self._word_tokenizer(language, options.task).decode
        for k in todo:
            out[k] = cut_at_pauses(out[k], regions[k], keep_words=options.word_timestamps, decode=decode,
                                   pause_s=pause_s)
        return out

    def transcribe(self, audio: np.ndarray | str | os.PathLike, options: DecodeOptions = DecodeOptions(),
                   *, initial_prompt: str | None = None, cut_clip: bool = True) -> Transcript:
        """Transcribe one recording of any length: :meth:`transcribe_segments`, collected.

        Raises:
            AudioLoadError: ``audio`` is a path that cannot be read.
        """
        segments, info = self.transcribe_segments(audio, options, initial_prompt=initial_prompt, cut_clip=cut_clip)
        return Transcript.collect(segments, info)

    def transcribe_batch(self, audios: Sequence[np.ndarray], options: DecodeOptions = DecodeOptions(),
                         vad: bool = True) -> list[Transcript]:
        """Transcribe many short waveforms (≤ 30 s each, e.g. a test manifest) in batches, each read as
        :meth:`transcribe` reads it (the same text and times: its speech after a long silence, a reading that stopped
        early read on, takes and dense speech read again, segments moved onto the speech; before, a 29.9 s clip whose
        speech ends 0.26 s before its end lost "do for your country", and 14 s of silence before a sentence were read
        as a loop); with ``vad``, one in which the VAD hears no speech at all gets no text, as in :meth:`transcribe`
        (whisper-base wrote "you" for 5 s of digital silence); without, every waveform is decoded whole (what the
        model alone does with it).

        Without a fixed language (:meth:`fixed_language`) the language is detected per waveform. Each waveform is
        encoded in its own window (:func:`encoder_window` of its speech), batched with the ones that share it.
        """
        audios = [mono_waveform(a, f"item {i}") for i, a in enumerate(audios)]
        long = [i for i, a in enumerate(audios) if len(a) > WINDOW_S * SAMPLE_RATE]
        if long:
            raise ValueError(f"transcribe_batch takes clips of at most {WINDOW_S:.0f} s; items {long[:5]} are "
                             "longer (use transcribe() for long audio)")
        out: list[Transcript | None] = [None] * len(audios)
        clips: list[tuple[int, np.ndarray, Chunk]] = []  # (item, its audio with a lead, its chunk in that)
        for i, a in enumerate(audios):
            clip = (whole_clip(a) if vad else Chunk(0, len(a))) if len(a) else None
            if clip is None:  # no speech (silence, noise, tones): as transcribe()
                fixed = self.fixed_language(options) if self.multilingual else "en"
                out[i] = Transcript("", fixed, 1.0 if fixed else 0.0, len(a) / SAMPLE_RATE, [])
            else:
                padded, (chunk,) = with_lead(a, [clip])
                clips.append((i, padded, chunk))
        pause_s = self._pause_to_cut_at(options)
        # batched with the clips that share their encoder window (each clip's own: encoder_window), so a clip reads
        # the same whatever clips come with it (beside a 15.3 s clip, short ones were encoded in 25 s, not 15 s, and
        # 2 of 15 read otherwise)
        windows = [encoder_window([a[c.start: c.end]], options.encoder_window_s) for _, a, c in clips]
        for window in sorted(set(windows)):
            same = [clip for clip, w in zip(clips, windows) if w == window]
            for start in range(0, len(same), options.batch_size):  # detect, then decode, batch by batch: the
                with self._lock:  # decode reuses the detection's encoder output
                    self._batch_of_clips(audios, same[start: start + options.batch_size], options, pause_s, out)
        return out  # type: ignore[return-value]

    def _batch_of_clips(self, audios: Sequence[np.ndarray], batch: Sequence[tuple[int, np.ndarray, Chunk]],
                        options: DecodeOptions, pause_s: float | None, out: list[Transcript | None]) -> None:
        """:meth:`transcribe_batch`'s work on one batch of its clips (item, its audio with a lead, its chunk in
        that): their transcripts put into ``out``."""
        waves = [a[c.start: c.end] for _, a, c in batch]
        langs = self._languages(waves, options)
        # the first decode of the whole batch at once, in each clip's language, as _decode_chunks decodes a
        # recording's chunks; what follows it (a reading checked, read on or read again) per language
        first = self._decode_words(waves, [lang for lang, _ in langs], options, options.initial_prompt,
                                   [bool(c.breaks) for _, _, c in batch])
        for language in dict.fromkeys(lang for lang, _ in langs):
            group = [k for k, (lang, _) in enumerate(langs) if lang == language]
            audio, chunks = _end_to_end([batch[k][1:] for k in group])
            results = self._decode_chunks(audio, chunks, language, options, options.initial_prompt,
                                          decoded=[first[k] for k in group])
            # times from each clip's own start: its chunk's, less the lead put before it
            offsets = [c.offset_s - (len(a) - len(audios[i])) / SAMPLE_RATE
                       for i, a, c in (batch[k] for k in group)]
            placed = self._placed(audio, chunks, results, offsets, language, options, pause_s)
            for k, pieces in zip(group, placed, strict=True):
                i = batch[k][0]
                out[i] = self._finish(pieces, language, langs[k][1], len(audios[i]) / SAMPLE_RATE, options)


def _again(options: DecodeOptions) -> DecodeOptions:
    """The options of a decode of audio decoded before (again with timestamp tokens, or in pieces): the temperature
    fallback only escapes a decoder loop. A low log-probability was tried at every temperature the first time, and
    sampling does not find a lost take (whisper-base on the espeak Mandarin sentence said 8 times, which it reads
    badly: every stage ran all six temperatures, 34 s for 67 s of audio)."""
    return replace(options, logprob_fallback=False)


def _unless_doubtful(reread: _ChunkResult, first: _ChunkResult | None, options: DecodeOptions) -> _ChunkResult:
    """A decode of audio read before, or nothing (a result without segments) where it is not :func:`_sure_enough`."""
    if _sure_enough(reread, first, options):
        return reread
    return replace(reread, segments=[], text="", tokens=[], words=None if reread.words is None else [],
                   stats=None if reread.stats is None else [], out_of_budget=False)


def _sure_enough(reread: _ChunkResult, first: _ChunkResult | None, options: DecodeOptions, *,
                 wordless_first: bool = False) -> bool:
    """Whether a decode of audio read before may be kept: not where it is :func:`_doubtful` while the first reading
    of that audio is not: a stretch the first reading left "unread" can be babble or singing the VAD
    took for speech, and read alone it is made up, unsure of itself (whisper-base read 20 s of babble between two real
    sentences as "Thank you.", -1.05; 25 s of sung music as 25 sentences). Where the first reading is unsure as well
    (noisy speech: a real Mandarin sentence said 3 times under white noise at 0 dB, -1.0 to -1.2), known wrong
    (``first`` None: it made a take up or ran away, however sure of itself a loop is) or no words at all ("《》《》《》"
    at -0.57), the re-read is kept. ``wordless_first``: a first reading without words is a measure all the same (a
    whole chunk read again with timestamp tokens: "♪" over music, then "Thank you." at -1.05)."""
    return (first is None or not _doubtful(reread, options) or _doubtful(first, options)
            or (not wordless_first and not any(ch.isalnum() for ch in first.text)))


def _doubtful(result: _ChunkResult, options: DecodeOptions) -> bool:
    """Whether a decode's text fails the log-probability check (average below ``options.logprob_threshold``), which
    the temperature fallback of a first decode would not have kept if a sample passed it; decodes of audio read
    before (:func:`_again`) do not fall back on it. False where the decode was not scored."""
    return (options.logprob_threshold is not None and result.avg_logprob is not None and bool(result.text.strip())
            and result.avg_logprob < options.logprob_threshold)


def _in_pieces(options: DecodeOptions) -> DecodeOptions:
    """The options of the pieces a chunk was cut into (:meth:`_BaseTranscriber._decode_chunks`): as :func:`_again`,
    encoded in a window of at least ``PIECE_WINDOW_S`` (the longest piece + 5 s: :func:`encoder_window`) instead of
    30 s. A piece holds about one take, so the short window's risk (a window holding several takes read as one more,
    which is why long audio keeps 30 s windows) is not there, and the encoder's cost falls faster than the window.
    Greedy: one take alone reads the same in a beam of 3 and greedily (ct2, ``tools/bench_repeats.py``: all nine
    recordings' CER/WER unchanged), and the takes a real Mandarin sentence said 8 times dropped are generated in 0.22
    s instead of 0.28-0.36 s (2-core AVX2 EPYC)."""
    window = options.encoder_window_s
    return replace(_again(options), beam_size=1,
                   encoder_window_s=PIECE_WINDOW_S if window is None else min(window, PIECE_WINDOW_S))


def _end_to_end(clips: Sequence[tuple[np.ndarray, Chunk]]) -> tuple[np.ndarray, list[Chunk]]:
    """Recordings laid end to end as one waveform, each one's chunk moved to where it now lies (many short clips
    decoded in batches as one recording's chunks are)."""
    moved, at = [], 0
    for audio, c in clips:
        moved.append(replace(c, start=c.start + at, end=c.end + at, breaks=tuple(b + at for b in c.breaks),
                             spans=tuple((a + at, b + at) for a, b in c.spans)))
        at += len(audio)
    return np.concatenate([np.asarray(audio, dtype=np.float32) for audio, _ in clips]), moved


def _chunk_spans(chunk: Chunk, audio: np.ndarray) -> tuple[list[tuple[float, float]], list[float]]:
    """The VAD's speech regions in a chunk (its padding included) and where each one's sound starts (its start moved
    back through a soft first syllable the VAD left out: :func:`widened_to_sound`), in seconds from the chunk's start;
    ([], []) = not known (a chunk that is never cut: streaming's buffer). ``audio``: the recording the chunk is in."""
    wave = audio[chunk.start: chunk.end]
    spans = [(max(0, a - chunk.start), min(len(wave), b - chunk.start)) for a, b in chunk.spans]
    onsets = [a / SAMPLE_RATE for a, _ in widened_to_sound(wave, spans)]
    return [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in spans], onsets


# an end less than this far into a region's speech is a timestamp's error, not a word there: on a 1.8 s pause Whisper
# ended "do for your country." at 13.82, 0.01 s into the next sentence's speech, and the cue stayed 2 s on after it
END_SLACK_S = 0.2


def snap_to_speech(start: float, end: float, spans: Sequence[tuple[float, float]], pad: float = SPEECH_PAD_S,
                   onsets: Sequence[float] | None = None) -> tuple[float, float]:
    """A segment's (start, end) in seconds moved out of the pauses around it. ``spans``: the VAD's speech regions
    (seconds, in order), each with ``pad`` seconds of silence on both sides; ``onsets``: where each region's sound
    starts (at or before the region: a soft first syllable the VAD left out; None = the regions' starts). A start in a
    pause (before a region's onset, or in a region's last ``pad``, after its speech) moves to the onset of the next
    region that overlaps the segment; an end in a pause (or in a region's first ``pad``) to the end of the previous
    one; with no such region it stays, as does a segment that overlaps no region or lies in one pause. Whisper chains
    a segment's start to the previous segment's end and often ends a segment well into the pause after it: real
    English with 2-5 s pauses got a cue 2.5 s before its speech and ends up to 0.9 s after it (one ran 3.7 s on into
    the next sentence), whisper-base stamped the first segment after 15 s of silence 0.00 (a cue 00:00 → 00:17), and
    espeak English cues started up to 6.6 s early on a 20-minute file. An end less than ``END_SLACK_S`` into a
    region's speech counts as in the pause before it."""
    given = start, end
    heard = [(o, b) for o, (_, b) in zip(onsets, spans, strict=True)] if onsets is not None else list(spans)
    if not any(o <= start < max(o, b - pad) for o, b in heard if o < end and b > start):
        moved = next((k for k, (o, _) in enumerate(heard) if start < o < end), None)
        if moved is not None and end <= spans[moved][0] + pad:  # it reaches only into that region's padding
            return given
        start = start if moved is None else heard[moved][0]
    over = [(a, b) for a, b in spans if a < end and b > given[0]]
    if not any(min(b, a + pad + END_SLACK_S) < end <= b for a, b in over):
        end = next((b for _, b in reversed(over) if b < end), end)
    return (start, end) if start < end else given  # all of it in one pause, padding included: left as it is



def _shifted(result: _ChunkResult, offset: float,
             spans: tuple[Sequence[tuple[float, float]], Sequence[float]] = ((), ())) -> Iterator[_Piece]:
    """A chunk's segments as pieces, moved by ``offset`` seconds (the chunk's start), each segment first moved out of
    the pauses of the chunk's speech regions (``spans``: :func:`_chunk_spans`, seconds from the chunk's start;
    :func:`snap_to_speech`)."""
    regions, onsets = spans
    for k, (start, end, text) in enumerate(result.segments):
        start, end = snap_to_speech(start, end, regions, onsets=onsets or None)
        yield _Piece(offset + start, offset + end, text,
                     None if result.words is None else [Word(offset + w.start, offset + w.end, w.word, w.probability)
                                                        for w in result.words[k]],
                     None if result.tokens is None else result.tokens[k],
                     None if result.stats is None else _moved(result.stats[k], offset))


SEGMENT_PAUSE_S = 0.6  # silence between two VAD regions that ends a segment cut by its words (:func:`cut_at_pauses`)
LONG_PAUSE_S = 3.0  # ... for a model that writes its own timestamps (its segments span shorter pauses rightly)


def long_pauses(regions: Sequence[tuple[float, float]], pause_s: float = SEGMENT_PAUSE_S,
                pad: float = SPEECH_PAD_S) -> list[int]:
    """Indices ``k`` of the VAD's speech ``regions`` (seconds, each padded by ``pad``) followed by a pause of at least
    ``pause_s`` seconds before region ``k + 1``."""
    return [k for k in range(len(regions) - 1) if (regions[k + 1][0] + pad) - (regions[k][1] - pad) >= pause_s]


def crosses_pause(segments: Sequence[tuple[float, float, str]], regions: Sequence[tuple[float, float]],
                  pause_s: float = SEGMENT_PAUSE_S, pad: float = SPEECH_PAD_S) -> bool:
    """Whether a segment holds speech on both sides of a long pause (:func:`long_pauses`)."""
    pauses = long_pauses(regions, pause_s, pad)
    return any(start < regions[k][1] - pad and end > regions[k + 1][0] + pad
               for start, end, _ in segments for k in pauses)


def _nonspace(text: str) -> int:
    return sum(not ch.isspace() for ch in text)


def _text_cuts(text: str, groups: Sequence[Sequence[Word]]) -> list[str] | None:
    """``text`` cut where each group of its words begins (matched by their characters, spaces aside: a word's text
    can differ in spacing, "Bonjour !" → "Bonjour!"), or None where the words are not the text's."""
    chars = [i for i, ch in enumerate(text) if not ch.isspace()]
    cuts, count = [], 0
    for g, group in enumerate(groups):
        if g:
            if count >= len(chars):
                return None
            cuts.append(chars[count])
        for w in group:
            word = "".join(w.word.split())
            if "".join(text[i] for i in chars[count: count + len(word)]) != word:
                return None
            count += len(word)
    return [text[a:b].strip() for a, b in zip([0, *cuts], [*cuts, len(text)])]


def _token_cuts(tokens: Sequence[int], pieces: Sequence[str], decode: Callable[[list[int]], str]
                ) -> list[list[int]] | None:
    """``tokens`` split as their text is into ``pieces`` (where the decoded prefix holds the pieces before, spaces
    aside), or None where no token boundary falls there. Characters are counted whole: a piece ending in "？" (three
    byte tokens) ends after its last byte (its first byte decoded as U+FFFD was counted as the character, and every
    cut after a full-width mark gave up: the first piece kept all tokens); a broken byte sequence the decoder emitted
    (dropped from the text) counts for nothing."""
    def seen(end: int) -> int:
        return _nonspace(decode(list(tokens[:end])).replace("\ufffd", ""))

    out, at, needed = [], 0, 0
    for piece in pieces[:-1]:
        needed += _nonspace(piece.replace("\ufffd", ""))
        end = at
        while end < len(tokens) and seen(end) < needed:
            end += 1
        inside = (decode(list(tokens[:end])).endswith("\ufffd")  # one character's bytes on both sides
                  and decode(list(tokens[end:])).startswith("\ufffd"))
        if seen(end) != needed or inside:  # not at a token boundary
            return None
        out.append(list(tokens[at:end]))
        at = end
    return [*out, list(tokens[at:])]


def cut_at_pauses(result: _ChunkResult, regions: Sequence[tuple[float, float]], *, keep_words: bool,
                  decode: Callable[[list[int]], str] | None = None, pause_s: float = SEGMENT_PAUSE_S,
                  pad: float = SPEECH_PAD_S) -> _ChunkResult:
    """A chunk's segments cut where their words cross a pause of at least ``pause_s`` seconds between the VAD's
    speech ``regions`` (seconds from the chunk's start, each padded by ``pad``): each word belongs to the region its
    middle is in (or nearest), and a segment ends where the next word's region lies past such a pause. Each piece
    has its part of the segment's text (cut where its first word begins) and of its tokens (``decode``: the
    tokenizer's; without it, or where no token boundary falls there, the first piece keeps them all); it is timed
    by its words, kept inside its regions (a first word after a pause is often aligned from inside it). Statistics
    are the segment's. ``keep_words``: False drops the words (they were aligned for the cut only)."""
    if result.words is None:
        return result
    breaks = set(long_pauses(regions, pause_s, pad))
    if not breaks:
        return result if keep_words else replace(result, words=None)
    bounds = [(a + pad, b - pad) for a, b in regions]  # the speech itself

    def region(w: Word) -> int:
        middle = (w.start + w.end) / 2
        return min(range(len(bounds)), key=lambda r: 0.0 if bounds[r][0] <= middle <= bounds[r][1]
                   else min(abs(middle - bounds[r][0]), abs(middle - bounds[r][1])))

    segments, words, tokens, stats = [], [], [], []
    for k, ((start, end, text), seg_words) in enumerate(zip(result.segments, result.words, strict=True)):
        groups: list[list[Word]] = []
        last = -1  # the region of the word before
        for w in seg_words:
            r = region(w)
            if groups and not any(b in breaks for b in range(last, r)):
                groups[-1].append(w)
            else:
                groups.append([w])
            last = r
        texts = _text_cuts(text, groups) if len(groups) > 1 else None
        seg_tokens = result.tokens[k] if result.tokens is not None else []
        parts = (_token_cuts(seg_tokens, texts, decode) if texts and decode and seg_tokens else None)
        if texts is None:  # one group, or words that are not the text's: the segment as it is
            groups, texts = [list(seg_words)], [text]
        # one group whose segment still spans a long pause (its end stamped in the speech after it): timed by its words
        crossing = crosses_pause([(start, end, text)], regions, pause_s, pad)
        for g, (group, piece) in enumerate(zip(groups, texts, strict=True)):
            if len(groups) == 1 and not (crossing and group):
                segments.append((start, end, text))
            else:
                first, last = bounds[region(group[0])], bounds[region(group[-1])]
                a = max(group[0].start, first[0] - pad)
                b = max(min(group[-1].end, last[1] + pad), a)
                segments.append((a, b, piece))
                if group[0].start < a:
                    group = [replace(group[0], start=min(a, group[0].end)), *group[1:]]
            words.append(group)
            tokens.append(parts[g] if parts else (seg_tokens if g == 0 else []))
            stats.append(result.stats[k] if result.stats is not None else None)
    return replace(result, segments=segments, words=words if keep_words else None,
                   tokens=None if result.tokens is None else tokens, stats=None if result.stats is None else stats)


LONG_AUDIO_S = 600.0  # audio this long (seconds) has its reading and VAD pass logged: they take a minute or more
PROMPT_CONTEXT_CHARS = 1000  # previous text kept for condition_on_previous_text (more than 223 tokens' worth)
MIN_QUIET_PIECE_S = 2.0  # shortest piece a chunk without pauses is cut into (:func:`cut_at_quiet_points`)
MAX_REPEAT_SPLITS = 1  # levels of cutting: one (tools/bench_repeats.py: a second level cost time, gained nothing)
def cut_tail_loop(tokens: list[int], caller_cuts: bool, at_budget: bool = False) -> list[int]:
    """``tokens`` with a loop that ends them (:func:`tail_loop`; a unit of up to ``BUDGET_LOOP_TOKENS`` when they
    ran to the token budget, ``at_budget``) cut after its first unit: no output ends in a loop. Left as they are where
    the caller cuts the chunk into take-sized pieces (``caller_cuts``, the chunk's ``split_repeats``, and the text
    repeats: :func:`repeat_period`), which it does on seeing the loop."""
    loop = tail_loop(tokens, BUDGET_LOOP_TOKENS if at_budget else SHORT_LOOP_TOKENS)
    if loop is None or (caller_cuts and repeat_period(tokens) is not None):
        return tokens
    return tokens[: sum(loop)]


def speech_spans(wave: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) seconds of the VAD's speech regions in a waveform of ≤ 30 s (a pass costs ~1/100 of a decode)."""
    return [(r.start / SAMPLE_RATE, r.end / SAMPLE_RATE) for r in speech_regions(wave)]


# speech (the VAD's, padded by 0.2 s) after a reading's last timestamp that is read on: JFK's speech ending 0.26 s
# before the end of a 29.9 s file (one window) lost "do for your country." (1.40 s of it) under 1.5 s
READ_ON_MIN_S = 1.0


def chunk_speech(chunk: Chunk, wave: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) seconds of speech in ``chunk`` (``wave`` = its samples), from its start: the VAD's regions of the
    recording where the chunk has them, else a pass over the chunk."""
    return ([((a - chunk.start) / SAMPLE_RATE, (b - chunk.start) / SAMPLE_RATE) for a, b in chunk.spans]
            or speech_spans(wave))


def stopped_early(result: _ChunkResult, chunk: Chunk, wave: np.ndarray) -> float | None:
    """Where to read on (seconds from the chunk's start) when a timestamped reading of ``chunk`` stopped (its last
    timestamp) with at least ``READ_ON_MIN_S`` of the chunk's speech after it: there, or ``CHUNK_LEAD_S`` before the
    speech after it when a pause follows; None otherwise (and for a reading that ended
    before 1 s, or out of its token budget: that chunk is read in halves). Whisper ends a window's text with a
    timestamp where the next window should go on (the reference decoder's seek); read alone, a chunk's last sentences
    after it were lost (CTranslate2, espeak Mandarin in pauses of 0.2-3 s: 4 of 48 sentences in no subtitle)."""
    said = [end for start, end, text in result.segments if text.strip()]  # not an empty last segment to the end
    if not said or result.out_of_budget:
        return None
    stop = said[-1]
    if stop < 1.0:
        return None
    spans = chunk_speech(chunk, wave)
    after = sum(max(0.0, end - max(start, stop)) for start, end in spans)
    if after < READ_ON_MIN_S:
        return None
    # read on from shortly before the next speech, not across the pause: a 19 s rest of a chunk that began with 15 s
    # of silence was read as nothing (a real AISHELL-1 sentence lost from the subtitles, both backends)
    onset = min(start for start, end in spans if end > stop)
    return max(stop, onset - CHUNK_LEAD_S)


def _text_tokens(result: _ChunkResult) -> list[int]:
    """A chunk result's text tokens, its segments' one after another."""
    return [t for piece in result.tokens or () for t in piece]


def _first_cut(chunk: Chunk, sizes: Sequence[float], reading: Reading | None = None,
               seams: Sequence[int] | None = None, slack: int = 0) -> list[RereadPart]:
    """:func:`reread_parts` of ``chunk`` at the first of ``sizes`` (take lengths, s, in order of preference) that
    cuts it; [] when none does."""
    for size in sizes:
        if parts := reread_parts(chunk, size, reading, seams, slack):
            return parts
    return []


def _ran_away(result: _ChunkResult, duration_s: float, timestamps: bool) -> bool:
    """Whether a chunk's decode ran away: its token budget used up, or one unit shorter than ``REPEAT_SPAN_TOKENS``
    repeated ``LOOP_REPEATS`` times in a row. A sentence said that often is real in a chant or a lesson (an English
    sentence said 8 times fills a 30 s window with 5 takes); :meth:`_BaseTranscriber._check_readings` aligns it to the
    speech instead, where a take made up shows (:func:`overread`)."""
    own = _text_tokens(result)
    return (len(own) >= token_budget(duration_s, timestamps) - 4
            or longest_repeat(own, REPEAT_SPAN_TOKENS - 1) >= LOOP_REPEATS)


def _out_of_budget(result: _ChunkResult, options: DecodeOptions) -> bool:
    """Whether a chunk's decode stopped at the token budget :func:`token_budget` gave it (not one the caller set:
    ``options.max_new_tokens``) with text that is no loop: speech denser than the budget, whose last words were not
    read."""
    return (result.out_of_budget and options.max_new_tokens is None
            and longest_repeat(_text_tokens(result), REPEAT_SPAN_TOKENS - 1) < LOOP_REPEATS)


def _reads_more(pieces: _ChunkResult, whole: _ChunkResult, duration_s: float, timestamps: bool) -> bool:
    """Whether the decode of a chunk's pieces is kept over the chunk's own: when the chunk's own ran away or used up
    its token budget, or when the pieces hold more text tokens. Both read the same audio; losing count drops a take,
    which shows as fewer tokens."""
    return (_ran_away(whole, duration_s, timestamps) or whole.out_of_budget
            or len(_text_tokens(pieces)) > len(_text_tokens(whole)))


def _joined(first: _ChunkResult, second: _ChunkResult, shift: float) -> _ChunkResult:
    """The results of two pieces of a chunk as one; ``second`` starts ``shift`` seconds after ``first``."""
    segments = first.segments + [(start + shift, end + shift, text) for start, end, text in second.segments]
    tokens = None if first.tokens is None or second.tokens is None else first.tokens + second.tokens
    words = None if first.words is None or second.words is None else first.words + [
        [Word(w.start + shift, w.end + shift, w.word, w.probability) for w in ws] for ws in second.words]
    stats = None if first.stats is None or second.stats is None else first.stats + [
        _moved(st, shift) for st in second.stats]
    return _ChunkResult(segments, join_texts([first.text, second.text]), tokens=tokens, words=words, stats=stats,
                        avg_logprob=_mean_logprob(first, second))


def _mean_logprob(first: _ChunkResult, second: _ChunkResult) -> float | None:
    """The average token log-probability of two results read as one (weighted by their text tokens; None where one
    with text was not scored)."""
    scored = [(r.avg_logprob, len(_text_tokens(r))) for r in (first, second) if _text_tokens(r)]
    if not scored or any(lp is None for lp, _ in scored):
        return None
    return sum(lp * n for lp, n in scored) / sum(n for _, n in scored)  # type: ignore[operator]


def _spliced(whole: _ChunkResult, chunk: Chunk, rereads: Sequence[tuple[RereadPart, _ChunkResult]],
             tokenizer: Any) -> _ChunkResult:
    """``whole`` (the reading of ``chunk``) with the reading of each part decoded again (its times from the part's
    start) put in before its token ``RereadPart.at``; a segment with tokens on both sides is split there, the text of
    its halves decoded from their tokens by ``tokenizer``, its words split at ``RereadPart.at_s``. A part that is the
    whole chunk (``at`` None): its reading."""
    if any(p.at is None for p, _ in rereads):
        ((_, only),) = rereads
        return only
    rereads = sorted(rereads, key=lambda r: (r[0].at, r[0].region.start))
    ats = [p.at for p, _ in rereads]
    bounds = [((p.region.start - chunk.start) / SAMPLE_RATE, (p.region.end - chunk.start) / SAMPLE_RATE)
              for p, _ in rereads]
    times = [p.at_s for p, _ in rereads]

    keyed: list[tuple[tuple[int, int], tuple[float, float, str], list[int], list[Word] | None,
                      DecodeStats | None]] = []
    first = 0  # flat index of a segment's first token
    for s, (start, end, text) in enumerate(whole.segments):
        tokens = (whole.tokens or [])[s]
        gaps = [int(np.searchsorted(ats, first + j, side="right")) for j in range(len(tokens))]
        first += len(tokens)
        for g in sorted(set(gaps)):
            kept = [t for t, x in zip(tokens, gaps, strict=True) if x == g]
            lo = bounds[g - 1][1] if g else 0.0
            hi = bounds[g][0] if g < len(bounds) else math.inf
            seg_start = min(max(start, lo), hi)
            words = None if whole.words is None else [
                w for w in whole.words[s] if int(np.searchsorted(times, w.start, side="right")) == g]
            keyed.append(((2 * g, s), (seg_start, max(min(end, hi), seg_start),
                                       text if len(kept) == len(tokens) else tokenizer.decode(kept)), kept, words,
                          None if whole.stats is None else whole.stats[s]))
    for g, ((_, result), (shift, _)) in enumerate(zip(rereads, bounds)):
        for j, (start, end, text) in enumerate(result.segments):
            words = None if result.words is None else [Word(w.start + shift, w.end + shift, w.word, w.probability)
                                                       for w in result.words[j]]
            keyed.append(((2 * g + 1, j), (start + shift, end + shift, text), (result.tokens or [])[j], words,
                          None if result.stats is None else _moved(result.stats[j], shift)))
    keyed.sort(key=lambda item: item[0])
    has_words = whole.words is not None and all(r.words is not None for _, r in rereads)
    has_stats = whole.stats is not None and all(r.stats is not None for _, r in rereads)
    return _ChunkResult([seg for _, seg, _, _, _ in keyed], join_texts([seg[2] for _, seg, _, _, _ in keyed]),
                        tokens=[tokens for _, _, tokens, _, _ in keyed],
                        words=[words or [] for _, _, _, words, _ in keyed] if has_words else None,
                        stats=[st for *_, st in keyed] if has_stats else None)  # type: ignore[misc]


def is_silence(avg_logprob: float, no_speech_prob: float, options: DecodeOptions) -> bool:
    """Whether a decode's text is dropped as silence, as the reference Whisper decoder drops it: P(no speech) above
    ``options.no_speech_threshold`` and the average log-probability below ``options.logprob_threshold``."""
    return (options.no_speech_threshold is not None and no_speech_prob > options.no_speech_threshold
            and (options.logprob_threshold is None or avg_logprob < options.logprob_threshold))


def _needs_fallback(avg_logprob: float, no_speech_prob: float, options: DecodeOptions,
                    loop: bool) -> tuple[bool, bool]:
    """(decode again at the next temperature, drop as silence: :func:`is_silence`), as in the reference Whisper
    decoder, except that ``loop`` (:func:`is_decoder_loop`), not any compressible text, counts as a repetition
    failure."""
    if is_silence(avg_logprob, no_speech_prob, options):
        return False, True
    again = loop or (options.logprob_fallback and options.logprob_threshold is not None
                     and avg_logprob < options.logprob_threshold)
    return again, False


def _piece_tokens(pieces: Sequence[tuple[float, float, str, list[int]]]) -> list[int]:
    """The text tokens of one chunk's decoded pieces, in order."""
    return [t for p in pieces for t in p[3]]


class _FallbackChoice:
    """Which attempt of each chunk the temperature fallback keeps (the transformers backend; the ct2 backend's
    ``_decode`` decides the same way): an attempt that passes the checks (:func:`_needs_fallback`) ends the
    fallback; when every temperature fails, the best attempt is kept, the greedy one included: no loop first, then
    one that passes the checks, then the highest average log-probability (a sample at a high temperature is
    rarely better than the greedy text; it is not kept for being the last)."""

    def __init__(self, options: DecodeOptions, split_repeats: Sequence[bool] | None) -> None:
        self.options = options
        self.split_repeats = split_repeats
        self.rank: dict[int, tuple[bool, bool, float]] = {}
        self.taken: dict[int, bool] = {}

    def offer(self, i: int, pieces: Sequence[tuple[float, float, str, list[int]]], score: tuple[float, float],
              loop: bool, first: bool) -> bool:
        """Offer chunk ``i``'s attempt ((start, end, text, tokens) pieces, its (avg log-probability, P(no speech)),
        whether it loops); ``taken[i]`` says whether it is kept. Returns whether to decode the chunk again."""
        avg_logprob, no_speech = score
        if not pieces:  # nothing read (generate() dropped the window as silence): nothing to decode again
            again, silent = False, True
        else:
            again, silent = _needs_fallback(avg_logprob, no_speech, self.options, loop)
            if again and first and self.split_repeats and self.split_repeats[i] \
                    and repeat_period(_piece_tokens(pieces)) is not None:
                again = False  # the caller cuts this chunk in two
        rank = (silent or not loop, not again, avg_logprob)
        self.taken[i] = first or not again or rank > self.rank[i]
        if self.taken[i]:
            self.rank[i] = rank
        return again


# ---------------------------------------------------------------------------------------------------
# transformers backend
# ---------------------------------------------------------------------------------------------------
class _GenerateNoiseFilter(logging.Filter):
    """Drops transformers' generate() warnings that do not apply to how this engine calls Whisper: the model's
    saved max_length (448) next to our per-chunk max_new_tokens, the suppress lists Whisper's own generate passes
    with the generation config, and the attention-mask hint (Whisper's 30 s inputs are never padded per item)."""

    NOISE = ("seem to have been set. `max_new_tokens` will take precedence",
             "together with generation-related arguments",
             "The attention mask is not set")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.NOISE)


def _quiet_generate_warnings() -> None:
    generation_logger = logging.getLogger("transformers.generation.utils")
    if not any(isinstance(f, _GenerateNoiseFilter) for f in generation_logger.filters):
        generation_logger.addFilter(_GenerateNoiseFilter())


@contextlib.contextmanager
def _generate_window(model: Any, frames: int) -> Iterator[None]:
    """transformers' Whisper generate() with an encoder window of ``frames`` log-mel frames, not 30 s.

    generate() takes its segment length from ``config.max_source_positions`` (its ``num_segment_frames`` argument
    is overwritten) and pads shorter features to it with zeros, a value that is not silence in Whisper's log-mel;
    so the config says ``frames`` for the call (the encoder, ``_cache_encoder_output``, knows its own length).
    An engine decodes one batch at a time (``_BaseTranscriber._lock``), so no other call sees it.
    """
    config = model.config
    full = config.max_source_positions
    if frames == 2 * full:
        yield
        return
    config.max_source_positions = frames // 2
    try:
        yield
    finally:
        config.max_source_positions = full


def _cache_encoder_output(encoder: Any, max_windows: int | None = None) -> Any:
    """Whisper's encoder wrapped with a one-entry cache: features equal to the last ones (or to some of their rows)
    give the last output (those rows).

    transformers' generate() encodes a copy of its ``input_features``, and its no-speech logits processor runs
    the whole model on the same features again (whenever a no-speech threshold is set: the default), so every
    decode encoded its audio twice, and language detection before it made it three times. With this wrapper
    the encoder runs once per batch of chunks (comparing the features costs ~1/1000 of encoding them).
    ``max_windows``: without gradients, encode at most this many 30 s windows per call (``CPU_ENCODER_WINDOWS``
    on the CPU: the same output, faster; shorter windows as many frames). Features shorter than 30 s (a shortened
    window, ``encoder_window``) are encoded with the positions cut to them. Attributes (``conv1``, ``config`` …)
    are the wrapped encoder's.
    """
    import torch
    import torch.nn.functional as F
    from transformers.modeling_outputs import BaseModelOutput

    class CachedEncoder(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner
            self.full_frames = inner.config.max_source_positions * 2  # Whisper's 30 s window
            self._input: Any = None  # a copy of the last features
            self._state: tuple | None = None
            self._output: Any = None

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.inner, name)

        def forward(self, input_features: Any, *args: Any, **kwargs: Any) -> Any:
            plain = not args and not any(kwargs.get(k) for k in ("output_attentions", "output_hidden_states",
                                                                  "head_mask"))
            state = (torch.is_grad_enabled(), torch.is_autocast_enabled(input_features.device.type),
                     bool(kwargs.get("return_dict", True)))
            if plain and self._state == state and (rows := self._cached_rows(input_features)) is not None:
                if rows == list(range(len(self._input))):
                    return self._output
                if state[2]:  # some of the last batch's chunks (their alignment, a decode again): those rows
                    return BaseModelOutput(last_hidden_state=self._output.last_hidden_state[rows])
            n, frames = input_features.shape[0], input_features.shape[-1]
            full = self.full_frames
            encode = self.inner if frames == full else self._encode_short
            if frames != full and not (plain and state[2]):
                raise ValueError(f"a {frames}-frame encoder window (Whisper's: {full}) is for plain decoding only")
            per_call = max_windows and max(max_windows, max_windows * full // frames)
            if plain and not torch.is_grad_enabled() and per_call and n > per_call and state[2]:
                parts = [encode(input_features[i:i + per_call], *args, **kwargs).last_hidden_state
                         for i in range(0, n, per_call)]
                output = BaseModelOutput(last_hidden_state=torch.cat(parts))
            else:
                output = encode(input_features, *args, **kwargs)
            if plain and not torch.is_grad_enabled():
                self._input, self._state, self._output = input_features.detach().clone(), state, output
            return output

        def _encode_short(self, input_features: Any, *args: Any, **kwargs: Any) -> Any:
            """transformers' encoder forward on fewer frames than its 30 s (which it refuses): the positions
            cut to the frames (as ``utils.audio_encoder`` and CTranslate2 do)."""
            enc = self.inner
            x = F.gelu(enc.conv2(F.gelu(enc.conv1(input_features)))).permute(0, 2, 1)
            x = x + enc.embed_positions.weight[: x.shape[1]]
            for layer in enc.layers:
                x = layer(x, None)
                x = x[0] if isinstance(x, tuple) else x
            return BaseModelOutput(last_hidden_state=enc.layer_norm(x))

        def _cached_rows(self, input_features: Any) -> list[int] | None:
            """The row of the last features equal to each row of ``input_features``; None if one has none."""
            last = self._input
            if last is None or last.shape[1:] != input_features.shape[1:] or last.dtype != input_features.dtype:
                return None
            if last.shape == input_features.shape and torch.equal(last, input_features):
                return list(range(len(last)))
            rows = [next((j for j in range(len(last)) if torch.equal(last[j], row)), None) for row in input_features]
            return None if None in rows else rows  # type: ignore[return-value]

    return CachedEncoder(encoder)


CROSS_ATTENTION_MEMO_BYTES = 1 << 30  # at most this much held by _reuse_cross_attention_projections


def _reuse_cross_attention_projections(decoder: Any, max_bytes: int = CROSS_ATTENTION_MEMO_BYTES) -> None:
    """Make each decoder layer's cross-attention key/value projections remember their last result.

    The projections of the encoder output (batch × 1500 frames × d_model, per layer) are the largest matrix products
    of a decode, and a batch computed them three times: language detection, transformers' no-speech logits processor
    (a whole forward pass of its own) and generate()'s first step. All three get the same encoder output tensor
    (``_cache_encoder_output``), so a projection whose input *is* its last input (the same tensor object, no
    gradients) returns its last output: the same numbers, computed once. Holds one batch of projections (whisper-base,
    16 clips: 12 × 49 MB), at most ``max_bytes`` in all: a bigger batch (large models) is projected every time.
    """
    import torch

    per_projection = max_bytes // (2 * len(decoder.layers))

    class LastResult(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner
            self._input: Any = None
            self._output: Any = None
            self._autocast = False

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.inner, name)

        def forward(self, x: Any) -> Any:
            if torch.is_grad_enabled():
                return self.inner(x)
            autocast = torch.is_autocast_enabled(x.device.type)
            if x is self._input and self._autocast == autocast:
                return self._output
            output = self.inner(x)
            keep = output.numel() * output.element_size() <= per_projection
            self._input, self._output, self._autocast = (x, output, autocast) if keep else (None, None, False)
            return output

    for layer in decoder.layers:
        attention = layer.encoder_attn
        for name in ("k_proj", "v_proj"):
            setattr(attention, name, LastResult(getattr(attention, name)))


def _seed_sampling(options: DecodeOptions) -> None:
    """Seed PyTorch with ``options.seed`` before a generate() that may sample (a temperature above 0)."""
    if max(options.temperatures) > 0:
        import torch

        torch.manual_seed(options.seed)


class TransformersTranscriber(_BaseTranscriber):
    """``WhisperForConditionalGeneration`` from a transformers model folder."""

    backend = "transformers"

    def __init__(self, model_dir: str, *, device: str = "auto", dtype: str = "auto", use_compile: bool = False,
                 attn_implementation: str = "auto") -> None:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        from utils.models import complete_model_generation_config

        _quiet_generate_warnings()
        self.device = resolve_device(device)
        self._lock = threading.RLock()  # see _BaseTranscriber._lock
        weight_dtype, self.autocast_dtype = _torch_dtypes(dtype, self.device)
        attn = _attention_implementation(attn_implementation, self.device, weight_dtype)
        self.processor = WhisperProcessor.from_pretrained(model_dir)
        self.model = WhisperForConditionalGeneration.from_pretrained(
            model_dir, dtype=weight_dtype, attn_implementation=attn).to(self.device).eval()
        self.dtype = weight_dtype
        gc = complete_model_generation_config(self.model, self.processor.tokenizer, model_dir)
        self.multilingual = bool(getattr(gc, "is_multilingual", False)) and bool(getattr(gc, "lang_to_id", None))
        self._lang_ids = dict(gc.lang_to_id) if self.multilingual else {}
        self._language_codes = {t.strip("<|>") for t in self._lang_ids} if self.multilingual else {"en"}
        self._sot = gc.decoder_start_token_id
        self._word_tokenizers: dict[tuple[str, str], Any] = {}
        self.trained_without_timestamps = getattr(gc, "finetune_timestamps", None) is False
        self.model_language = _model_language(getattr(gc, "language", None), model_dir) if self.multilingual else None
        self.model_task = _model_task(getattr(gc, "task", None)) if self.multilingual else None
        if use_compile:
            self.model.model.encoder = torch.compile(self.model.model.encoder)
        self.model.model.encoder = _cache_encoder_output(
            self.model.model.encoder, CPU_ENCODER_WINDOWS if self.device == "cpu" else None)
        if self.device == "cpu":  # on a GPU the repeated projections cost little and the memory is dearer
            _reuse_cross_attention_projections(self.model.model.decoder)
        logger.info("transformers backend: %s on %s, weights %s%s, attention %s", model_dir, self.device,
                    weight_dtype, f" + {self.autocast_dtype} autocast" if self.autocast_dtype else "", attn)

    def _autocast(self):
        import contextlib

        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=self.autocast_dtype)

    def _features(self, chunks: Sequence[np.ndarray], window_s: float | None = None):
        """Log-mel features (batch, n_mels, frames): Whisper's 30 s window, or ``encoder_window(chunks, window_s)``
        (the 30 s features cut short: past the speech, the log-mel of the zero padding either way)."""
        feats = self.processor.feature_extractor(list(chunks), sampling_rate=SAMPLE_RATE, return_tensors="pt")
        frames = encoder_window(chunks, window_s) * SAMPLE_RATE // 160
        return feats.input_features[..., :frames].to(self.device, self.dtype)

    def _detect_language(self, chunks: Sequence[np.ndarray]) -> list[tuple[str, float]]:
        import torch

        if not self.multilingual:
            return [("en", 1.0)] * len(chunks)
        feats = self._features(chunks)
        tokens = list(self._lang_ids.values())
        codes = [t.strip("<|>") for t in self._lang_ids]
        with torch.inference_mode(), self._autocast():  # the decode that follows reuses this encoder output
            decoder_ids = torch.full((len(chunks), 1), self._sot, dtype=torch.long, device=self.device)
            logits = self.model(input_features=feats, decoder_input_ids=decoder_ids).logits[:, -1]
            probs = logits[:, tokens].float().softmax(-1)
        best = probs.argmax(-1).tolist()
        return [(codes[b], float(probs[i, b])) for i, b in enumerate(best)]

    def _generate_kwargs(self, options: DecodeOptions, languages: Sequence[str] | None,
                         prompt: str | None) -> dict[str, Any]:
        import torch

        temps = tuple(options.temperatures)
        kw: dict[str, Any] = dict(
            return_timestamps=options.timestamps,
            num_beams=options.beam_size,
            temperature=temps if len(temps) > 1 else temps[0],
            logprob_threshold=options.logprob_threshold,
            no_speech_threshold=options.no_speech_threshold if options.logprob_threshold is not None else None,
            compression_ratio_threshold=(None if options.compression_ratio_threshold is None
                                         else options.compression_ratio_threshold * _HF_RATIO_PER_TEXT_RATIO),
            return_segments=True,
        )
        if temps[0] > 0:
            kw["do_sample"] = True
        if options.max_new_tokens is not None:
            kw["max_new_tokens"] = options.max_new_tokens
        if self.multilingual:
            kw["task"] = options.task
            if languages is not None:
                kw["language"] = list(languages) if len(set(languages)) > 1 else languages[0]
        if options.hotwords or (prompt and prompt.strip()):
            # the text context holds the prompt, the start sequence (up to 4) and what is generated (generate() raises
            # past it): at most 223 tokens, as the reference decoder keeps. The hotwords first, whole as far as they
            # fit, then the previous text's last tokens in the room left (the ct2 backend, as faster-whisper, keeps
            # up to 223 of each; the prompt's last tokens were kept here: from a long recording's second chunk on, the
            # hotwords were cut off)
            room = max(0, min(self.model.config.max_target_positions - (options.max_new_tokens or MAX_SAMPLE_LEN) - 5,
                              MAX_SAMPLE_LEN - 1))
            hot = self._prompt_ids(options.hotwords.strip())[1:room + 1] if options.hotwords else []
            previous = self._prompt_ids(prompt.strip())[1:] if prompt and prompt.strip() else []
            keep = min(len(previous), room - len(hot))
            if keep < len(previous):
                logger.debug("previous text of %d tokens: its first %d left out", len(previous),
                             len(previous) - keep)
            if hot or keep:
                start_of_prev = self.processor.tokenizer.convert_tokens_to_ids("<|startofprev|>")
                kw["prompt_ids"] = torch.as_tensor([start_of_prev, *hot, *previous[len(previous) - keep:]],
                                                   device=self.device)
        return kw

    def _prompt_ids(self, text: str) -> list[int]:
        """``<|startofprev|>`` and the tokens of `` text``, read as text (:func:`encode_as_text`):
        "<|en|><|translate|>" or "<|1.00|>" typed into a prompt is not the tokens (get_prompt_ids refused the first
        with a traceback). A copy of the tokenizer encodes: the shared one is reconfigured (truncation, padding) by
        another thread's call (the web page's sessions share an engine), which a concurrent encode must not meet."""
        tok = self.processor.tokenizer
        if getattr(self, "_plain_text", None) is None:
            from tokenizers import Tokenizer

            self._plain_text = Tokenizer.from_str(tok.backend_tokenizer.to_str())
        text_ids = encode_as_text(lambda t: self._plain_text.encode(t, add_special_tokens=False).ids,
                                  " " + text.strip())
        return [tok.convert_tokens_to_ids("<|startofprev|>"), *text_ids]

    def _segments_from_output(self, out: Any, n: int, durations: Sequence[float] | None
                              ) -> list[list[tuple[float, float, str, list[int]]]]:
        """Generate output → per item (start, end, text, text tokens); times relative to the input start."""
        tok = self.processor.tokenizer
        eot = tok.convert_tokens_to_ids("<|endoftext|>")
        if isinstance(out, dict) and "segments" in out:
            result = []
            for i, segs in enumerate(out["segments"][:n]):
                pieces = []
                for s in segs:
                    text = tok.decode(s["tokens"], skip_special_tokens=True)
                    start, end = float(s["start"]), float(s["end"])
                    if durations is not None:
                        start, end = min(start, durations[i]), min(end, durations[i])
                    pieces.append((start, end, text, [int(t) for t in s["tokens"] if t < eot]))
                result.append(pieces)
            return result
        sequences = out["sequences"] if isinstance(out, dict) else out
        texts = tok.batch_decode(sequences, skip_special_tokens=True)
        return [[(0.0, durations[i] if durations else 0.0, texts[i], [int(t) for t in sequences[i] if t < eot])]
                for i in range(n)]

    def _decode(self, chunks: Sequence[np.ndarray], languages: Sequence[str], options: DecodeOptions,
                prompt: str | None, split_repeats: Sequence[bool] | None = None) -> list[_ChunkResult]:
        import torch

        feats = self._features(chunks, options.encoder_window_s)
        longest_s = max(len(c) for c in chunks) / SAMPLE_RATE
        durations = [len(c) / SAMPLE_RATE for c in chunks]
        # transformers' own fallback treats any compressible text as a loop (a sentence said three times is replaced
        # by a high-temperature sample) and keeps its last sample when every temperature fails (a 1.0 sample at
        # log-probability -2.6 over the greedy text at -1.2): generate() decodes at one temperature per call here,
        # with the ct2 backend's checks and choice (_needs_fallback, _FallbackChoice)
        first = replace(options, compression_ratio_threshold=None, temperatures=options.temperatures[:1])
        kw = self._generate_kwargs(first, languages, prompt)
        kw.setdefault("max_new_tokens", token_budget(longest_s, options.timestamps))
        max_new = kw["max_new_tokens"]
        with torch.inference_mode(), self._autocast(), _generate_window(self.model, feats.shape[-1]):
            _seed_sampling(first)
            out = self.model.generate(input_features=feats, **kw)
        per_item = self._segments_from_output(out, len(chunks), durations)
        fallback = len(options.temperatures) > 1
        scores = (self._scored(feats, languages, [_piece_tokens(p) for p in per_item], options.task)
                  if fallback or options.decode_stats else None)
        temperature_of = [options.temperatures[0]] * len(chunks)
        if fallback:
            assert scores is not None
            choice = _FallbackChoice(options, split_repeats)
            pending = [i for i, pieces in enumerate(per_item)
                       if choice.offer(i, pieces, scores[i], self._is_loop(pieces, max_new, options), first=True)]
            for temperature in options.temperatures[1:]:
                if not pending:
                    break
                logger.debug("temperature %.1f: %d of %d chunks fail the repetition/log-prob checks",
                             temperature, len(pending), len(chunks))
                again = replace(first, temperatures=(temperature,))
                kw = self._generate_kwargs(again, [languages[i] for i in pending] if languages else None, prompt)
                kw["max_new_tokens"] = max_new
                with torch.inference_mode(), self._autocast(), _generate_window(self.model, feats.shape[-1]):
                    _seed_sampling(again)
                    out = self.model.generate(input_features=feats[pending], **kw)
                redone = self._segments_from_output(out, len(pending), [durations[i] for i in pending])
                redone_scores = self._scored(feats[pending], [languages[i] for i in pending],
                                             [_piece_tokens(p) for p in redone], options.task)
                retry = []
                for i, pieces, score in zip(pending, redone, redone_scores):
                    if choice.offer(i, pieces, score, self._is_loop(pieces, max_new, options), first=False):
                        retry.append(i)
                    if choice.taken[i]:
                        per_item[i], temperature_of[i] = pieces, temperature
                        scores[i] = (score[0], scores[i][1])  # P(no speech) stays the first decode's
                pending = retry
        tok = self.processor.tokenizer
        for i, pieces in enumerate(per_item):  # a loop that ends the text: cut after its first unit (no prefix here)
            if not pieces:
                continue
            start, end, _, tokens = pieces[-1]
            generated = len(_piece_tokens(pieces)) + (2 * len(pieces) if options.timestamps else 0)
            if (cut := cut_tail_loop(tokens, bool(split_repeats and split_repeats[i]),
                                     at_budget=generated >= max_new - 4)) != tokens:
                per_item[i] = [*pieces[:-1], (start, end, tok.decode(cut, skip_special_tokens=True), cut)]
        results = []
        for i, pieces in enumerate(per_item):
            # the budget used up (the tokens generated: the text's, and a timestamp token at each end of a segment)
            # by text that is no loop, as the ct2 backend decides it
            tokens = _piece_tokens(pieces)
            full = (len(tokens) + (2 * len(pieces) if options.timestamps else 0) >= max_new - 4
                    and not is_decoder_loop(tokens, join_texts([p[2] for p in pieces]), True,
                                            options.compression_ratio_threshold))
            if not options.timestamps:  # one segment spanning the chunk
                text = join_texts([p[2] for p in pieces])
                pieces = [(0.0, durations[i], text, tokens)] if text.strip() else []
            text = join_texts([p[2] for p in pieces])
            stats = None
            if options.decode_stats and scores is not None:
                stats = DecodeStats(0, *scores[i], compression_ratio(text), temperature_of[i])
            results.append(_ChunkResult([p[:3] for p in pieces], text, tokens=[p[3] for p in pieces],
                                        out_of_budget=full, stats=None if stats is None else [stats] * len(pieces),
                                        avg_logprob=None if scores is None else scores[i][0]))
        return results

    def _with_scores(self, waves: Sequence[np.ndarray], results: list[_ChunkResult], language: str,
                     options: DecodeOptions) -> list[_ChunkResult]:
        todo = [k for k, r in enumerate(results) if r.avg_logprob is None and _text_tokens(r)]
        if not todo or options.logprob_threshold is None:
            return results
        scores = self._scored(self._features([waves[k] for k in todo], options.encoder_window_s),
                              [language] * len(todo), [_text_tokens(results[k]) for k in todo], options.task)
        results = list(results)
        for k, (avg_logprob, _) in zip(todo, scores):
            results[k] = replace(results[k], avg_logprob=avg_logprob)
        return results

    def _scored(self, feats: Any, languages: Sequence[str], texts: Sequence[list[int]], task: str
                ) -> list[tuple[float, float]]:
        """Per chunk: (the mean log-probability of its text tokens and the end of text, the probability of no speech
        at the start), its text teacher-forced on its features (the encoder's output of the decode, cached) without
        timestamp tokens or prompt: transformers' generate() does not return them. One decoder pass for the batch
        (texts padded at the end: causal attention keeps the padding out of the rows read)."""
        import torch

        if not len(texts):
            return []
        rows = []
        for language, text in zip(languages, texts, strict=True):
            tk = self._word_tokenizer(language, task)
            rows.append(([*tk.sot_sequence, tk.no_timestamps], [*text, tk.eot], tk.no_speech))
        width = max(len(a) + len(b) for a, b, _ in rows)
        ids = torch.tensor([[*a, *b] + [b[-1]] * (width - len(a) - len(b)) for a, b, _ in rows], device=self.device)
        out = []
        with torch.inference_mode(), self._autocast():
            states = self.model.model.encoder(feats).last_hidden_state
            hidden = self.model.model.decoder(input_ids=ids, encoder_hidden_states=states,
                                              use_cache=False).last_hidden_state
            for i, (start, text, no_speech) in enumerate(rows):  # vocabulary logits one row at a time (memory)
                n = len(start) + len(text)
                logprobs = self.model.proj_out(hidden[i, :n]).float().log_softmax(-1)
                positions = torch.arange(len(start) - 1, n - 1, device=self.device)
                avg = float(logprobs[positions, ids[i, len(start): n]].sum()) / len(text)
                out.append((avg, float(logprobs[0, no_speech].exp())))
        return out

    def _forced(self, state: Any, language: str, task: str, text: Sequence[int]) -> tuple[Any, Any, int]:
        """The model teacher-forced on ``<|startoftranscript|> … <|notimestamps|>``, ``text`` and the end of text over
        one chunk's encoder output ``state`` (1, frames, d_model): (the ids (1, n), their float logits (n, vocab),
        the length of the start sequence)."""
        import torch

        tk = self._word_tokenizer(language, task)
        start = [*tk.sot_sequence, tk.no_timestamps]
        ids = torch.tensor([[*start, *text, tk.eot]], device=self.device)
        logits = self.model(encoder_outputs=(state,), decoder_input_ids=ids, use_cache=False).logits[0].float()
        return ids, logits, len(start)

    def _word_tokenizer(self, language: str, task: str) -> Any:
        from faster_whisper.tokenizer import Tokenizer

        key = (language, task)
        if key not in self._word_tokenizers:
            self._word_tokenizers[key] = Tokenizer(self.processor.tokenizer.backend_tokenizer, self.multilingual,
                                                   task=task, language=language if self.multilingual else "en")
        return self._word_tokenizers[key]

    def _align(self, chunks: Sequence[np.ndarray], languages: Sequence[str], tokens: Sequence[list[int]],
               task: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Teacher-force each chunk's text and read the alignment heads' cross-attention (captured by hooks on
        those layers, so any attention implementation works), then DTW (utils.alignment)."""
        import torch

        from utils.alignment import alignment_path

        heads = getattr(self.model.generation_config, "alignment_heads", None)
        if not heads:
            raise ValueError("this model's generation_config.json has no alignment_heads, which word timestamps "
                             "need; copy them from the base model's generation_config.json")
        decoder = self.model.model.decoder
        captured: dict[int, tuple[Any, Any]] = {}

        def capture(layer: int):
            def hook(module, args, kwargs):
                captured[layer] = (args[0] if args else kwargs["hidden_states"], kwargs["key_value_states"])
            return hook

        hooks = [decoder.layers[layer].encoder_attn.register_forward_pre_hook(capture(layer), with_kwargs=True)
                 for layer in sorted({int(layer) for layer, _ in heads})]
        out = []
        try:
            with torch.inference_mode(), self._autocast():
                states = self.model.model.encoder(self._features(chunks)).last_hidden_state
                for i, (chunk, language, text) in enumerate(zip(chunks, languages, tokens)):
                    _, logits, start = self._forced(states[i: i + 1], language, task, text)
                    rows = slice(start - 1, start + len(text))  # predicting each text token and eot
                    probs = logits[rows][:-1].softmax(-1)[torch.arange(len(text)), torch.tensor(text)]
                    frames = min(len(chunk) // 160, 3000) // 2
                    weights = []
                    for layer, head in heads:
                        hidden, memory = captured[int(layer)]
                        attn = decoder.layers[int(layer)].encoder_attn
                        q = (attn.q_proj(hidden[0, rows]) * attn.scaling).view(-1, attn.num_heads, attn.head_dim)
                        k = attn.k_proj(memory[0, :frames]).view(-1, attn.num_heads, attn.head_dim)
                        weights.append((q[:, int(head)].float() @ k[:, int(head)].float().T).softmax(-1))
                    text_rows, frame_idx = alignment_path(torch.stack(weights).cpu().numpy(), frames)
                    out.append((text_rows, frame_idx, probs.cpu().numpy()))
        finally:
            for h in hooks:
                h.remove()
        return out

    def _is_loop(self, pieces: list[tuple[float, float, str]], max_new_tokens: int, options: DecodeOptions) -> bool:
        text = join_texts([p[2] for p in pieces])
        tokens = self.processor.tokenizer.encode(text, add_special_tokens=False)
        return is_decoder_loop(tokens, text, len(tokens) >= max_new_tokens - 4, options.compression_ratio_threshold)



def _torch_threads(restore: int | None = None) -> int | None:
    """PyTorch's intra-op thread count (None when torch is not imported yet); with ``restore``, set it back."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if restore is not None:
        torch.set_num_threads(restore)
    return torch.get_num_threads()


def resolve_ct2_encoder(encoder: str, device: str, audio_seconds: float | None = None,
                        compute_type: str = "auto") -> str:
    """Who runs the ct2 backend's audio encoder for ``--ct2_encoder`` on ``device``: "torch" (PyTorch bf16),
    "onnx" (onnxruntime: int8 for an int8 compute type, else float32; :mod:`utils.onnx_encoder`) or "ct2" (CTranslate2,
    in the folder's compute type).

    auto = torch on a CPU with AMX, unless the engine is known to transcribe less than ``TORCH_ENCODER_MIN_AUDIO_S``
    of audio in all (``audio_seconds``; None = unknown or long-running: a server, live transcription), where
    importing PyTorch costs more than its encoder saves and onnx is taken, and unless ``compute_type`` is float32 (the
    PyTorch encoder computes in bf16; asked for float32, the user gets float32: onnx); onnx on a CPU with VNNI
    (AVX-512-VNNI or AVX-VNNI): its int8 is CTranslate2's scheme (per-channel weights, per-frame inputs; on 30 s of
    speech both differ from float32 by 0.043 on average), about twice as fast per 30 s window on our AMD EPYC with
    AVX-512-VNNI (tools/bench_infer.py --encoder_batches; README); else ct2. On an AVX2-only CPU onnxruntime's
    float32 encodes a 30 s window about as fast as CTranslate2 int8 (the int8 kernels there are not measured), and on
    real Mandarin said several times the float32 numbers read worse (README), so it stays on request.
    ``WHISPER_FT_CPU=avx2`` takes the AVX2-only choice on any CPU.

    Raises:
        ValueError: an unknown ``encoder``, or torch / onnx on a GPU.
    """
    if encoder not in CT2_ENCODERS:
        raise ValueError(f"encoder must be one of {CT2_ENCODERS}, got {encoder!r}")
    on_cpu = device == "cpu"
    if encoder in ("torch", "onnx") and not on_cpu:
        raise ValueError(f"--ct2_encoder={encoder} runs the encoder on the CPU; with a GPU use --ct2_encoder=ct2")
    if encoder != "auto":
        return encoder
    if not on_cpu:
        return "ct2"
    short = audio_seconds is not None and audio_seconds < TORCH_ENCODER_MIN_AUDIO_S
    torch_pays = not short and compute_type != "float32"  # its import is paid back, and bf16 was not refused
    if cpu_has_amx() and (torch_pays or not cpu_has_vnni()):
        return "torch"
    return "onnx" if cpu_has_vnni() else "ct2"


def uses_torch_encoder(encoder: str, device: str, audio_seconds: float | None = None,
                       compute_type: str = "auto") -> bool:
    """Whether the ct2 backend runs its audio encoder in PyTorch bf16 (:func:`resolve_ct2_encoder`)."""
    return resolve_ct2_encoder(encoder, device, audio_seconds, compute_type) == "torch"


def _read_lone_record(path: str | os.PathLike) -> dict[str, dict]:
    """:meth:`CT2Transcriber.tune_lone_decoder`'s decisions by layout; {} when the file is missing or unreadable
    (then timed again and written anew)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        logger.warning("%s: cannot read it (%s): timing again", path, e)
        return {}
    if not isinstance(data, dict):
        logger.warning("%s: not a JSON object: timing again", path)
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def _write_lone_record(path: str | os.PathLike, records: dict[str, dict]) -> None:
    """Write :meth:`CT2Transcriber.tune_lone_decoder`'s decisions by layout to ``path`` (atomically: a program reading
    it at the same time sees the old or the new one). A record that cannot be written is logged: the next run times
    again."""
    try:
        write_json_atomic(path, records, indent=1)
    except OSError as e:
        logger.warning("cannot write %s (%s): the next run times the decode again", path, e)


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask: a container's or ``taskset``'s limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def ct2_cpu_workers(cpu_threads: int, encoder: str, model_bytes: int = 0) -> tuple[int, int, int]:
    """(workers, threads per worker, threads of the lone-window encoder replica or 0 for none) of a CTranslate2 model
    on the CPU (``CPU_WORKERS``): ``cpu_threads`` threads in all, ≤ 0 = CTranslate2's default of 4 (what
    faster-whisper runs on) or the available cores if fewer; ``encoder`` = who encodes (:func:`resolve_ct2_encoder`);
    ``model_bytes`` = the size of its weights file. (1, 1, 0) on one core; on two, (2, 1, 2) when CTranslate2 encodes,
    else (2, 1, 0); with weights over ``SOLO_ENCODER_MAX_BYTES`` (2, 2, 0): no second copy, every worker on every
    thread (windows encoded alone as fast as before, batches decoded slower)."""
    threads = cpu_threads if cpu_threads > 0 else min(CT2_DEFAULT_THREADS, available_cpus())
    workers = min(CPU_WORKERS, threads)
    if workers == 1:
        return 1, threads, 0
    if encoder != "ct2":
        return workers, max(1, threads // workers), 0
    if model_bytes > SOLO_ENCODER_MAX_BYTES:
        return workers, threads, 0
    return workers, max(1, threads // workers), threads


def _torch_dtypes(dtype: str, device: str):
    """--dtype → (weight dtype, autocast dtype or None). bfloat16 on CPU = fp32 weights + bf16 autocast."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    on_gpu = device.startswith("cuda") or device.startswith("mps")
    if dtype == "auto":
        return (torch.float16, None) if on_gpu else (torch.float32, None)
    if dtype == "float32":
        return torch.float32, None
    if dtype == "float16":
        if not on_gpu:
            raise ValueError("dtype float16 needs a GPU; on CPU use --dtype=bfloat16 (autocast) or float32")
        return torch.float16, None
    return (torch.bfloat16, None) if on_gpu else (torch.float32, torch.bfloat16)


def _attention_implementation(requested: str, device: str, dtype: Any = None) -> str:
    """auto → flash_attention_2 on a CUDA GPU it runs on (compute capability 8.0 or later: Ampere) with fp16/bf16
    weights (``dtype``), when the flash-attn package is installed; else SDPA (flash-attn rejects fp32 weights and
    T4/V100 at run time)."""
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        import importlib.util

        import torch

        from utils.device import cuda_has_bf16

        index = int(device.split(":")[1]) if ":" in device else None
        if (importlib.util.find_spec("flash_attn") is not None and dtype in (torch.float16, torch.bfloat16)
                and cuda_has_bf16(index)):
            return "flash_attention_2"
    return "sdpa"


def ct2_cuda_compute_type(index: int = 0) -> str:
    """compute_type ``auto`` on a CUDA GPU: float16 where CTranslate2 supports it (compute capability 7.0 or
    later), else int8_float16 / int8 (a Pascal GTX 1050 Ti, a common 4 GB card, has no efficient float16)."""
    import ctranslate2

    supported = ctranslate2.get_supported_compute_types("cuda", index)
    return next((t for t in ("float16", "int8_float16", "int8") if t in supported), "float32")


# ---------------------------------------------------------------------------------------------------
# CTranslate2 backend
# ---------------------------------------------------------------------------------------------------
class CT2Transcriber(_BaseTranscriber):
    """A CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json) through faster-whisper."""

    backend = "ct2"

    def __init__(self, model_dir: str, *, device: str = "auto", compute_type: str = "auto",
                 cpu_threads: int = 0, encoder: str = "auto", audio_seconds: float | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from faster_whisper import WhisperModel

        dev = resolve_ct2_device(device)
        ct2_device = "cuda" if dev.startswith("cuda") else "cpu"
        if dev == "mps":
            logger.warning("CTranslate2 has no MPS support; the ct2 backend runs on the CPU")
        index = int(dev.split(":")[1]) if ":" in dev else 0
        if compute_type == "auto":
            compute_type = ct2_cuda_compute_type(index) if ct2_device == "cuda" else "int8"
        self.encoder = resolve_ct2_encoder(encoder, ct2_device, audio_seconds, compute_type)
        int8 = compute_type.startswith("int8")  # the onnxruntime encoder follows the compute type
        if self.encoder == "torch":
            from utils.audio_encoder import load_ct2_encoder  # imports PyTorch: on this thread, not the other one

            build = functools.partial(load_ct2_encoder, model_dir, dtype="bfloat16")
        elif self.encoder == "onnx":
            from utils.onnx_encoder import load_onnx_encoder

            build = functools.partial(load_onnx_encoder, model_dir, threads=cpu_threads, int8=int8)
        else:
            build = None
        weights = os.path.join(model_dir, "model.bin")
        workers, threads, solo = (ct2_cpu_workers(cpu_threads, self.encoder, os.path.getsize(weights))
                                  if ct2_device == "cpu" else (1, cpu_threads, 0))
        if cpu_threads > 0 and not solo and workers * threads < cpu_threads:
            logger.info("CTranslate2 runs %d workers of %d thread(s) each (one thread count for all): %d of the %d "
                        "threads asked for stay unused; an even --cpu_threads uses them all", workers, threads,
                        cpu_threads - workers * threads, cpu_threads)
        if solo:  # the lone-window replica (CTranslate2 encodes): loads side by side with the workers (0.15 s for
            import ctranslate2  # both against 0.25-0.36 one after the other: the load releases the GIL)

            build = functools.partial(ctranslate2.models.Whisper, model_dir, device="cpu", compute_type=compute_type,
                                      inter_threads=1, intra_threads=solo)
        import ctranslate2

        # each decoding thread's sampler is seeded when it first samples (with a random seed unless one was set)
        ctranslate2.set_random_seed(SAMPLING_SEED)
        torch_threads = _torch_threads()
        with ThreadPoolExecutor(1, thread_name_prefix="encoder") as pool:  # built while CTranslate2 loads the model
            building = pool.submit(build) if build is not None else None
            self.model = WhisperModel(model_dir, device=ct2_device, device_index=index, compute_type=compute_type,
                                      cpu_threads=threads, num_workers=workers)
        self.workers, self._worker_threads, self._weights_bytes = workers, threads, os.path.getsize(weights)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ct2") if workers > 1 else None
        self._solo_threads = solo  # the lone-window replica's threads, 0: none
        self._solo: Any = building.result() if solo else None  # type: ignore[union-attr]
        self._lone: Any = self.model.model  # who decodes a window alone: a worker until tune_lone_decoder() says
        _torch_threads(torch_threads)  # CTranslate2 sets the process-wide OpenMP thread count; PyTorch keeps its own
        self.device, self.compute_type = ct2_device, compute_type
        self.multilingual = bool(self.model.model.is_multilingual)
        if self.multilingual and not _ct2_config(model_dir).get("lang_ids", True):
            raise ValueError(f"{model_dir}: its config.json lists no language ids (converted from a model whose "
                             "generation config has no lang_to_id, by an older tool); convert it again with "
                             "merge_lora.py --ct2=True, or from the transformers folder with its "
                             "generation_config.json")
        vocab = self.model.hf_tokenizer
        self._language_codes = ({code for code in LANGUAGES if vocab.token_to_id(f"<|{code}|>") is not None}
                                if self.multilingual else {"en"})
        config = _ct2_generation_config(model_dir)  # merge_lora.py --ct2 writes one
        self.model_language = _ct2_model_language(model_dir, config) if self.multilingual else None
        self.model_task = _model_task(config.get("task")) if self.multilingual else None
        self.trained_without_timestamps = config.get("finetune_timestamps") is False
        self._tokenizers: dict[tuple[str, str], Any] = {}
        self._kept: dict[tuple[int, bytes], np.ndarray] = {}  # encoder output rows (frames, d) of the last chunks
        self._torch_encoder = self._onnx_encoder = None
        if self.encoder == "torch":
            self._torch_encoder = building.result()
        elif self.encoder == "onnx":
            from utils.onnx_encoder import OnnxEncoderError

            try:
                self._onnx_encoder = building.result()
            except OnnxEncoderError as e:
                if encoder != "auto":
                    raise
                logger.info("%s: auto runs the encoder in CTranslate2", e)  # a choice, not a failure
                self.encoder = "ct2"
        logger.info("ct2 backend: %s on %s, compute type %s, encoder %s%s", model_dir, ct2_device, compute_type,
                    {"torch": "PyTorch bfloat16", "ct2": "CTranslate2",
                     "onnx": f"onnxruntime {'int8' if int8 else 'float32'}"}[self.encoder],
                    (f", {workers} workers x {threads} threads" if workers > 1 else "")
                    + (f", a window alone encoded on {solo} threads" if solo else ""))

    def _side_by_side(self, options: DecodeOptions) -> int:
        return 1 if options.condition_on_previous_text or options.batch_size < 2 else self.workers  # :meth:`_rows`

    def _rows(self, n: int, call: Callable[[list[int], Any], Sequence[Any]]) -> list[Any]:
        """``call(rows, model)`` for the rows of a batch of ``n``, split among the CPU workers (interleaved, run at
        once; ``model``: the workers' CTranslate2 model); results in row order. One call with every row on a GPU or a
        single worker; a lone row on the CPU runs on a worker, or on every thread of the lone-window replica where
        :meth:`tune_lone_decoder` found that faster."""
        groups = [list(range(k, n, self.workers)) for k in range(min(self.workers, n))]
        if self._pool is None or len(groups) < 2:
            return list(call(list(range(n)), self._lone))
        out: list[Any] = [None] * n
        for rows, results in zip(groups, self._pool.map(lambda rows: call(rows, self.model.model), groups)):
            for i, r in zip(rows, results, strict=True):
                out[i] = r
        return out

    def tune_lone_decoder(self, steps: int = 12, record: str | os.PathLike | None = None,
                          reuse: bool = False) -> bool:
        """Time a 10 s window's greedy decode of ``steps`` tokens on a worker (one thread) and on the lone-window
        replica (every thread), best of two each after a warm-up, and from then on decode, align and detect the
        language of a window alone on the replica where it took at most ``LONE_DECODE_MAX_SHARE`` of the worker's
        time (which wins depends on the machine and on what else runs in the process: see that constant). About
        0.3 s. Without a replica (a GPU, one core, big weights, another encoder) there is nothing to pick. Returns
        whether the replica was picked.

        ``record``: a JSON file of these decisions by machine and layout (:meth:`lone_decoder_layout`: CPU, cores,
        instruction-set overrides, CTranslate2 version, weights, threads): each timing's decision is written there,
        and with ``reuse`` one found there is taken instead of timing (a program that decodes too little to pay
        for the test: ``infer.py`` with one file)."""
        if self._solo is None:
            return False
        layout = self.lone_decoder_layout() if record is not None else ""
        records = _read_lone_record(record) if record is not None else {}
        if reuse and (known := records.get(layout)) is not None:
            self._lone = self._solo if known.get("replica") else self.model.model
            logger.info("a window alone decodes on %s (timed on this machine before: %s)",
                        "every thread" if self._lone is self._solo else "one thread", record)
            return self._lone is self._solo
        feats = self._features([np.zeros(SAMPLE_RATE, dtype=np.float32)], 10.0)
        encoded = self._storage(np.asarray(self._solo.encode(self._storage(feats))))
        tokenizer = self._tokenizer("en", "transcribe")
        prompt = self.model.get_prompt(tokenizer, [], without_timestamps=True)

        def seconds(model: Any) -> float:  # the end of text suppressed: every run decodes ``steps`` tokens
            t0 = time.perf_counter()
            model.generate(encoded, [prompt], beam_size=1, max_length=len(prompt) + steps,
                           suppress_tokens=[*self._suppress_tokens, tokenizer.eot])
            return time.perf_counter() - t0

        worker, solo = self.model.model, self._solo
        seconds(worker), seconds(solo)  # warm-up
        worker_s, solo_s = math.inf, math.inf
        for _ in range(2):
            worker_s, solo_s = min(worker_s, seconds(worker)), min(solo_s, seconds(solo))
        self._lone = solo if solo_s <= LONE_DECODE_MAX_SHARE * worker_s else worker
        logger.info("a window alone decodes on %s: %.1f ms per token there, %.1f on %s", *(
            ("every thread", solo_s * 1000 / steps, worker_s * 1000 / steps, "one") if self._lone is solo else
            ("one thread", worker_s * 1000 / steps, solo_s * 1000 / steps, "every thread")))
        if record is not None:
            records[layout] = {"replica": self._lone is solo, "worker_ms_per_token": round(worker_s * 1000 / steps, 2),
                               "replica_ms_per_token": round(solo_s * 1000 / steps, 2),
                               "timed": datetime.now().isoformat(timespec="seconds")}
            _write_lone_record(record, records)
        return self._lone is solo

    def lone_decoder_layout(self) -> str:
        """What :meth:`tune_lone_decoder`'s decision holds for: this CPU (model, flags, cores this process may use),
        the instruction-set overrides, the CTranslate2 version, the weights (size, compute type) and the threads of
        the workers and of the replica."""
        import ctranslate2

        return " | ".join([cpu_model(), " ".join(cpu_flags()), f"{available_cpus()} cores",
                           " ".join(f"{k}={v}" for k, v in sorted(isa_env().items())) or "no overrides",
                           f"ctranslate2 {ctranslate2.__version__}", f"{self._weights_bytes} bytes {self.compute_type}",
                           f"{self.workers} workers x {self._worker_threads} threads, replica {self._solo_threads}"])

    def _encode(self, feats: np.ndarray) -> Any:
        """Log-mel features (batch, n_mels, 3000) → encoder output (batch, 1500, d_model).

        A float32 numpy array on the CPU (so failing chunks can be picked out for the next temperature
        without encoding them again), a CTranslate2 StorageView on a GPU.
        """
        if self._torch_encoder is not None:
            import torch

            with torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(feats)).to(torch.bfloat16)
                step = CPU_ENCODER_WINDOWS
                return torch.cat([self._torch_encoder(x[i:i + step]).float()
                                  for i in range(0, len(x), step)]).numpy()
        if self.device != "cpu":
            return self.model.encode(feats)
        if self._onnx_encoder is None and self.workers > 1:  # a window per call, the workers side by side
            together = len(feats) - len(feats) % self.workers if self._solo is not None else len(feats)
            out = self._rows(together, lambda rows, _: [np.asarray(self.model.encode(feats[i:i + 1]))[0]
                                                        for i in rows])
            out += [np.asarray(self._solo.encode(self._storage(feats[i:i + 1])))[0]
                    for i in range(together, len(feats))]  # left alone: on every thread
            return np.stack(out)
        step = CPU_ENCODER_WINDOWS
        encode = self._onnx_encoder or (lambda x: np.asarray(self.model.encode(x)))
        return np.concatenate([encode(feats[i:i + step]) for i in range(0, len(feats), step)])

    @staticmethod
    def _storage(encoded: Any) -> Any:
        import ctranslate2

        if isinstance(encoded, np.ndarray):
            return ctranslate2.StorageView.from_array(np.ascontiguousarray(encoded, dtype=np.float32))
        return encoded

    def _tokenizer(self, language: str, task: str):
        """faster-whisper's tokenizer whose ``encode`` (prompt, hotwords, prefix) reads its text as text
        (:func:`_text_tokenizer_type`)."""
        key = (language, task)
        if key not in self._tokenizers:
            self._tokenizers[key] = _text_tokenizer_type()(self.model.hf_tokenizer, self.multilingual, task=task,
                                                           language=language if self.multilingual else "en")
        return self._tokenizers[key]

    def _features(self, chunks: Sequence[np.ndarray], window_s: float | None = None) -> np.ndarray:
        """Log-mel features (batch, n_mels, frames): Whisper's 30 s window, or ``encoder_window(chunks, window_s)``."""
        fe = self.model.feature_extractor
        frames = encoder_window(chunks, window_s) * SAMPLE_RATE // 160
        return np.stack([pad_log_mel(fe(np.asarray(c, dtype=np.float32))[..., :-1], frames) for c in chunks])

    def _keep_encoded(self, chunks: Sequence[np.ndarray], encoded: np.ndarray | list[np.ndarray]) -> None:
        """Keep what language detection or a decode encoded (rows of one window, or each chunk's own): the next
        decode or alignment of the same chunks uses it (a chunk is known by its samples' digest, so audio changed in
        place is encoded again)."""
        self._kept = {_fingerprint(c): row for c, row in zip(chunks, encoded, strict=True)}

    def _kept_rows(self, chunks: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """Per chunk, its kept encoder output (frames, d) in whatever window it was encoded in, or None."""
        return [self._kept.get(_fingerprint(c)) for c in chunks]

    def _encode_reusing(self, chunks: Sequence[np.ndarray], feats: np.ndarray) -> Any:
        """``_encode(feats)``, taking the rows of chunks whose encoder output was kept (``_keep_encoded``) in the same
        window from it and encoding only the others (the kept output stays until the next decode replaces it: the
        alignment of a decode's readings and a decode again with timestamp tokens use it too)."""
        frames = feats.shape[-1] // 2
        picked = self._kept_rows(chunks)
        missing = [i for i, row in enumerate(picked) if row is None or row.shape[0] != frames]
        if len(missing) == len(chunks):
            return self._encode(feats)  # nothing kept, kept on a GPU, or encoded in another window
        fresh = iter(self._encode(feats[missing]) if missing else ())
        return np.stack([next(fresh) if i in missing else picked[i] for i in range(len(chunks))])

    def _grouped(self, encoded: Sequence[np.ndarray], rows: list[int],
                 call: Callable[[Any, list[int]], Sequence[Any]]) -> list[Any]:
        """``call(StorageView of the rows, rows)`` for each group of ``rows`` encoded in the same window (one call
        for a batch in one window); results in the order of ``rows``."""
        out: dict[int, Any] = {}
        for frames in dict.fromkeys(encoded[r].shape[0] for r in rows):
            group = [r for r in rows if encoded[r].shape[0] == frames]
            for r, result in zip(group, call(self._storage(np.stack([encoded[r] for r in group])), group),
                                 strict=True):
                out[r] = result
        return [out[r] for r in rows]

    def _detect_language(self, chunks: Sequence[np.ndarray]) -> list[tuple[str, float]]:
        if not self.multilingual:
            return [("en", 1.0)] * len(chunks)
        encoded = self._encode(self._features(chunks))
        if isinstance(encoded, np.ndarray):  # these chunks are decoded next
            self._keep_encoded(chunks, encoded)
        if isinstance(encoded, np.ndarray):
            results = self._rows(len(chunks), lambda rows, model: model.detect_language(self._storage(encoded[rows])))
        else:
            results = self.model.model.detect_language(encoded)
        return [(r[0][0].strip("<|>"), float(r[0][1])) for r in results]

    def _generate(self, encoded, prompts: list[list[int]], options: DecodeOptions, temperature: float,
                  max_new_tokens: int, no_repeat_ngram_size: int = 0):
        """CTranslate2's generate() on ``encoded`` (on the CPU float32 rows, of one window or each of its own: split
        among the workers; or a StorageView), one prompt per row."""
        if isinstance(encoded, (np.ndarray, list)):
            return self._rows(len(prompts), lambda rows, model: self._grouped(encoded, rows, lambda batch, group: (
                self._generate_on(batch, [prompts[i] for i in group], options, temperature, max_new_tokens, model,
                                  no_repeat_ngram_size))))
        return self._generate_on(encoded, prompts, options, temperature, max_new_tokens,
                                 no_repeat_ngram_size=no_repeat_ngram_size)

    def _short_windows(self, chunks: Sequence[np.ndarray], options: DecodeOptions) -> list[bool]:
        if self._pipelined(chunks, options):  # the chunks shorter than the 30 s one: in windows of their own
            return [not _needs_30_s(c) for c in chunks]
        return super()._short_windows(chunks, options)

    def _pipelined(self, chunks: Sequence[np.ndarray], options: DecodeOptions) -> bool:
        """Whether a batch is decoded as :meth:`_decode_pipelined` does: on the CPU with a lone-window replica, 30 s
        windows asked for, and exactly one chunk that needs one (≥ the window less ``ENCODER_WINDOW_MARGIN_S``), the
        others shorter."""
        return (self._solo is not None and self._pool is not None and options.encoder_window_s is None
                and len(chunks) > 1 and sum(_needs_30_s(c) for c in chunks) == 1)

    def _decode_pipelined(self, chunks: Sequence[np.ndarray], prompts: list[list[int]], options: DecodeOptions,
                          temperature: float, max_new_tokens: int) -> tuple[list[np.ndarray], list[Any]]:
        """Encode and generate a batch of one 30 s chunk and shorter ones (:meth:`_pipelined`): (encoder output per
        chunk, generate() result per chunk).

        Side by side, a batch takes as long as its slowest worker: the 30 s chunk's encoding and decoding on one
        thread (2.5 s for real Mandarin x8's 29.6 s chunk, 2-core AVX2 EPYC) while the other worker is done with the
        short one in under 1 s. So the 30 s chunk is encoded first on every thread (the lone-window replica), and its
        decode starts on one worker while the other has the short chunks encoded (on that replica too) and decodes
        them, each in a window of its own (``SHORT_CHUNK_WINDOW_S``, the chunk + 5 s: beside a 30 s chunk as accurate
        as 30 s: tools/bench_repeats.py, 12 long recordings). Real Mandarin x8, when chunks were packed (now
        :func:`utils.vad.merge_regions` cuts it into two even ones): 1.9-2.2 s instead of 2.4-2.6 s. Where
        more chunks need 30 s, the pairs side by side are faster (English 104.6 s: 4.5-5.1 s against 5.8)."""
        rows = self._kept_rows(chunks)  # a language detection's, in 30 s

        def encode(i: int) -> None:  # one window: on every thread (the lone-window replica)
            if rows[i] is None:
                window = None if _needs_30_s(chunks[i]) else SHORT_CHUNK_WINDOW_S
                rows[i] = self._encode(self._features([chunks[i]], window))[0]

        def generate(i: int) -> Any:
            return self._generate_on(self._storage(rows[i][None]), [prompts[i]], options, temperature,
                                     max_new_tokens)[0]

        def encode_and_generate(i: int) -> Any:
            encode(i)
            return generate(i)

        first = max(range(len(chunks)), key=lambda i: len(chunks[i]))
        encode(first)
        assert self._pool is not None
        futures = {first: self._pool.submit(generate, first)}
        futures |= {i: self._pool.submit(encode_and_generate, i) for i in range(len(chunks)) if i != first}
        outputs = [futures[i].result() for i in range(len(chunks))]
        return rows, outputs  # type: ignore[return-value]

    def _generate_on(self, encoded: Any, prompts: list[list[int]], options: DecodeOptions, temperature: float,
                     max_new_tokens: int, model: Any = None, no_repeat_ngram_size: int = 0):
        """CTranslate2's generate() on ``model`` (default: the workers')."""
        max_length = ct2_max_length(max(len(p) for p in prompts), max_new_tokens, self.model.max_length)
        return (model or self.model.model).generate(
            encoded, prompts,
            beam_size=options.beam_size if temperature == 0 else 1,
            max_length=max_length,
            no_repeat_ngram_size=no_repeat_ngram_size,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress_tokens,
            sampling_temperature=temperature if temperature > 0 else 1.0,
            sampling_topk=0 if temperature > 0 else 1,
        )

    @property
    def _suppress_tokens(self) -> list[int]:
        if not hasattr(self, "_suppress_cache"):
            from faster_whisper.transcribe import get_suppressed_tokens

            self._suppress_cache = get_suppressed_tokens(self._tokenizer("en", "transcribe"), [-1])
        return self._suppress_cache

    def _decode(self, chunks: Sequence[np.ndarray], languages: Sequence[str], options: DecodeOptions,
                prompt: str | None, split_repeats: Sequence[bool] | None = None) -> list[_ChunkResult]:
        pipelined = self._pipelined(chunks, options)
        feats = None if pipelined else self._features(chunks, options.encoder_window_s)
        tokenizers = [self._tokenizer(lang, options.task) for lang in languages]
        previous = tokenizers[0].encode(" " + prompt.strip()) if prompt else []
        prompts = [self.model.get_prompt(t, previous, without_timestamps=not options.timestamps,
                                         hotwords=options.hotwords) for t in tokenizers]
        # per chunk: (tokens, silent, out of budget, (avg log-probability, temperature)) of the attempt kept
        final: list[tuple[list[int], bool, bool, tuple[float, float]] | None] = [None] * len(chunks)
        best_rank: list[tuple[bool, bool, float]] = [(False, False, -math.inf)] * len(chunks)
        no_speech = [0.0] * len(chunks)  # the first decode's: what the window holds, not an attempt's
        pending = list(range(len(chunks)))
        max_new = options.max_new_tokens or token_budget(max(len(c) for c in chunks) / SAMPLE_RATE,
                                                         options.timestamps)
        longest_prompt = max(len(p) for p in prompts)
        max_length = ct2_max_length(longest_prompt, max_new, self.model.max_length)  # what _generate_on passes
        first = None
        if pipelined:
            encoded, first = self._decode_pipelined(chunks, prompts, options, options.temperatures[0], max_new)
        else:
            encoded = self._encode_reusing(chunks, feats)
        for temperature in options.temperatures:
            if first is not None:
                outputs, first = first, None
            elif pending == list(range(len(chunks))):
                outputs = self._generate(encoded, prompts, options, temperature, max_new)
            else:  # only the chunks that failed are decoded again
                batch = ([encoded[i] for i in pending] if isinstance(encoded, (np.ndarray, list))
                         else self.model.encode(feats[pending]))  # type: ignore[index]  (a GPU: not pipelined)
                outputs = self._generate(batch, [prompts[i] for i in pending], options, temperature, max_new)
            retry = []
            for i, r in zip(pending, outputs):
                tokens = list(r.sequences_ids[0])
                said = [t for t in tokens if t < tokenizers[i].eot]
                text = tokenizers[i].decode(said)
                avg_logprob = r.scores[0] * len(tokens) / (len(tokens) + 1)
                hit_limit = len(tokens) >= ct2_generated_at_most(len(prompts[i]), max_length) - 1
                # the text tokens repeat, not the timestamps between them (a segment said 13 times over babble, each
                # one at other times, was no loop, and won the fallback on its log-probability)
                loop = is_decoder_loop(said, text, hit_limit, options.compression_ratio_threshold)
                again, silent = _needs_fallback(avg_logprob, r.no_speech_prob, options, loop)
                if again and split_repeats and split_repeats[i] and temperature == options.temperatures[0] \
                        and repeat_period(said) is not None:
                    again = False  # the caller cuts this chunk in two
                # when every temperature fails, keep the best attempt, the greedy one included: no loop first,
                # then one that passes the checks, then the highest average log-probability (a sample at a high
                # temperature is rarely better than the greedy text; it is not kept for being the last)
                rank = (silent or not loop, not again, avg_logprob)
                if temperature == options.temperatures[0]:
                    no_speech[i] = r.no_speech_prob
                if final[i] is None or not again or rank > best_rank[i]:
                    final[i] = (tokens, silent, hit_limit and not loop, (avg_logprob, temperature))
                    best_rank[i] = rank
                if again:
                    retry.append(i)
            if temperature == options.temperatures[0]:  # a loop that ends the text: read on past it, not sampled
                tails = [i for i in pending if not final[i][1] and tail_loop(final[i][0])]  # type: ignore[index]
                kept = self._continue_past_loops(encoded, feats, prompts, tokenizers, final, tails, options, max_new,
                                                 no_speech)
                retry = [i for i in retry if i not in kept]
            if retry:
                logger.debug("temperature %.1f: %d of %d chunks fail the repetition/log-prob checks",
                             temperature, len(retry), len(pending))
            pending = retry
            if not pending:
                break
        for i, (tokens, silent, _, scored) in enumerate(final):  # type: ignore[misc]
            at_budget = len(tokens) >= ct2_generated_at_most(len(prompts[i]), max_length) - 1
            if not silent and (cut := cut_tail_loop(tokens, bool(split_repeats and split_repeats[i]),
                                                    at_budget)) != tokens:
                final[i] = (cut, False, False, scored)
        results = []
        for i, (tokens, silent, full, (avg_logprob, temperature)) in enumerate(final):  # type: ignore[misc]
            duration = len(chunks[i]) / SAMPLE_RATE
            tk = tokenizers[i]
            if silent:
                split: list[tuple[float, float, list[int]]] = []
            elif options.timestamps:
                split = split_timestamp_tokens(tokens, tk.timestamp_begin, tk.eot, duration)
            else:
                split = [(0.0, duration, [t for t in tokens if t < tk.eot])]
            pieces = [(s, e, tk.decode(t)) for s, e, t in split]
            kept = [k for k, (_, _, text) in enumerate(pieces) if text.strip()]
            text = join_texts([pieces[k][2] for k in kept])
            stats = DecodeStats(0, avg_logprob, no_speech[i], compression_ratio(text), temperature)
            results.append(_ChunkResult([pieces[k] for k in kept], text, tokens=[split[k][2] for k in kept],
                                        out_of_budget=full and not silent,
                                        stats=[stats] * len(kept) if options.decode_stats else None,
                                        avg_logprob=avg_logprob))
        if isinstance(encoded, (np.ndarray, list)):  # word alignment, a decode again with timestamp tokens reuse it
            self._keep_encoded(chunks, encoded)
        return results

    def _continue_past_loops(self, encoded: Any, feats: np.ndarray | None, prompts: list[list[int]],
                             tokenizers: Sequence[Any], final: list[tuple[list[int], bool, bool, tuple[float, float]]],
                             which: Sequence[int], options: DecodeOptions, max_new: int,
                             no_speech: Sequence[float]) -> set[int]:
        """The chunks ``which``, whose first decode ends in a loop of a short unit (:func:`tail_loop`), decoded on
        from where the loop starts: the tokens before it and the unit once are the decoder's prefix, and two units
        and a token may not occur twice (:func:`loop_ngram`), so the decoder reads the rest of the chunk instead of
        looping, in the first temperature's beam. A continuation that ends in a loop again, or evades the n-gram rule
        with compressible text to its budget (:func:`is_decoder_loop`), is not kept. Kept ones replace their entry
        of ``final`` ((tokens, silent, out of budget)) and are returned: they need no temperature fallback. The
        others go on as before (sampled at higher temperatures, or cut into pieces by the caller; a loop that still
        ends the text is then cut after its first unit: no output ends in a loop). A kept one's average
        log-probability is the continuation's (CTranslate2 scores the tokens it generates after the prefix), and with
        the window's P(no speech) (``no_speech``, the first decode's) it decides, as for any decode, whether the text
        is dropped as silence (:func:`is_silence`; whisper-base kept "我心里的心里的心里的" for 18 s of pink noise, P(no
        speech) 0.72, log-probability -1.33: its loop had scored -0.16).

        English at 5 dB SNR (``tools/bench_infer.py --recording=en_long --snr_db=5``, AVX2 profile): a 25.6 s chunk
        looped on ".10" after "The library opened at 9"; cut into take-sized pieces it read "But like, let me open
        that time …", decoded on: "…opened at 9.10.10.15.15.15 He lost 3 apples, 2 oranges and a melon. So you send
        the report to the island scene. The meeting was moved to the second floor." """
        if not which:
            return set()
        logger.debug("%d of %d chunks end in a loop of a short unit: decoded on from where it starts", len(which),
                     len(final))
        loops = {i: tail_loop(final[i][0]) for i in which}  # (start, unit) each
        groups: dict[int, list[int]] = {}
        for i, (_, unit) in loops.items():  # type: ignore[misc]
            groups.setdefault(loop_ngram(unit), []).append(i)
        kept = set()
        for ngram, rows in groups.items():
            prefixes = [final[i][0][: sum(loops[i])] for i in rows]  # type: ignore[arg-type]
            batch = ([encoded[i] for i in rows] if isinstance(encoded, (np.ndarray, list))
                     else self.model.encode(feats[rows]))  # type: ignore[index]  (a GPU: not pipelined)
            given = [prompts[i] + p for i, p in zip(rows, prefixes)]
            outputs = self._generate(batch, given, options, options.temperatures[0], max_new,
                                     no_repeat_ngram_size=ngram)
            # the prefix counts among the tokens generated (CTranslate2 4.x returns it, within max_length // 2)
            max_length = ct2_max_length(max(len(p) for p in given), max_new, self.model.max_length)
            for i, prefix, r in zip(rows, prefixes, outputs, strict=True):
                tokens = list(r.sequences_ids[0])  # the prefix and what follows it
                hit_limit = len(tokens) >= ct2_generated_at_most(len(prompts[i]), max_length) - 1
                new = [t for t in tokens[len(prefix):] if t < tokenizers[i].eot]
                if not (tail_loop(tokens) or is_decoder_loop(new, tokenizers[i].decode(new), hit_limit,
                                                             options.compression_ratio_threshold)):
                    generated = len(tokens) - len(prefix)  # scored as the first decode is: over its tokens + 1
                    avg_logprob = r.scores[0] * generated / (generated + 1)
                    silent = is_silence(avg_logprob, no_speech[i], options)
                    final[i] = (tokens, silent, hit_limit and not silent, (avg_logprob, options.temperatures[0]))
                    kept.add(i)
        return kept

    def _word_tokenizer(self, language: str, task: str) -> Any:
        return self._tokenizer(language, task)

    def _align(self, chunks: Sequence[np.ndarray], languages: Sequence[str], tokens: Sequence[list[int]],
               task: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """CTranslate2's ``align()`` on the encoder output the decode kept, in the window each chunk was decoded in
        (chunks not kept: encoded again in 30 s)."""
        from utils.alignment import MEDIAN_FILTER_WIDTH

        encoded: list[Any] = self._kept_rows(chunks)
        missing = [i for i, row in enumerate(encoded) if row is None]
        feats = self._features(chunks) if missing else None  # on a GPU (nothing kept there) each call encodes its rows
        if missing and self.device == "cpu":
            for i, row in zip(missing, self._encode(feats[missing]), strict=True):  # type: ignore[index]
                encoded[i] = row
        out: list[Any] = [None] * len(chunks)
        for language in dict.fromkeys(languages):  # one start sequence per call
            idx = [i for i, lang in enumerate(languages) if lang == language]
            tk = self._tokenizer(language, task)

            def call(batch: Any, group: list[int], model: Any, tk: Any = tk) -> Any:
                return model.align(batch, tk.sot_sequence, [tokens[i] for i in group],
                                   [min(len(chunks[i]) // 160, 3000) for i in group],
                                   median_filter_width=MEDIAN_FILTER_WIDTH)

            def align(rows: list[int], model: Any, idx: list[int] = idx, call: Any = call) -> Any:
                picked = [idx[r] for r in rows]
                if self.device != "cpu":
                    return call(self.model.encode(feats[picked]), picked, model)  # type: ignore[index]
                return self._grouped(encoded, picked, lambda batch, group: call(batch, group, model))

            results = self._rows(len(idx), align)
            for i, r in zip(idx, results):
                pairs = np.asarray(r.alignments, dtype=np.int64).reshape(-1, 2)
                out[i] = (pairs[:, 0], pairs[:, 1], np.asarray(r.text_token_probs, dtype=np.float64))
        return out



def _fingerprint(chunk: np.ndarray) -> tuple[int, bytes]:
    """A waveform's identity for reusing its encoder output: its length and a digest of its samples (~2 ms for
    30 s; encoding it takes ~500 ms)."""
    import hashlib

    data = np.ascontiguousarray(chunk, dtype=np.float32)
    return len(data), hashlib.blake2b(data.tobytes(), digest_size=16).digest()


def _model_language(language: Any, model_dir: str) -> str | None:
    """A generation config's ``language`` (what fine-tuning on one language writes) as a Whisper code; None when
    it has none or one this library does not know (then the language is detected, with a warning)."""
    if not language or not isinstance(language, str):
        return None
    try:
        return language_code(language)
    except ValueError:
        logger.warning("%s: generation config language %r is not a Whisper language; detecting it instead",
                       model_dir, language)
        return None


@functools.lru_cache(maxsize=1)
def _text_tokenizer_type() -> type:
    """faster-whisper's Tokenizer with an ``encode`` that reads text as text (:func:`encode_as_text`:
    "<|en|><|translate|>" typed into a prompt switched the task); made once, faster-whisper imported on first use."""
    from faster_whisper.tokenizer import Tokenizer

    class TextTokenizer(Tokenizer):
        def encode(self, text: str) -> list[int]:
            return encode_as_text(super().encode, text)

    return TextTokenizer


def _model_task(task: Any) -> str | None:
    """A generation config's ``task`` (finetune.py writes the one it trained), if it is one of Whisper's."""
    return task if task in ("transcribe", "translate") else None


def fine_tuned_task(model_path: str) -> str | None:
    """The task a local model folder (transformers or CTranslate2) was fine-tuned for, from its
    generation_config.json, read without loading the model; None for a hub id or a folder that names none (a
    malformed config is left for the load to report)."""
    if not os.path.isdir(model_path):
        return None
    try:
        return _model_task(_ct2_generation_config(model_path).get("task"))
    except ValueError:
        return None


def task_flag(task: str | None) -> str:
    """How messages name the task: ``--task=`` when the flag was given, else the model's own (:func:`resolve_task`)."""
    return "--task=" if task is not None else "the model's task "


def resolve_task(task: str | None, engine: Any) -> str:
    """``--task`` as given; without one, the task ``engine``'s model was fine-tuned for (a model fine-tuned to
    translate transcribed by default), else transcribe."""
    if task is not None:
        return task
    chosen = getattr(engine, "model_task", None) or "transcribe"
    if chosen == "translate":
        logger.info("task translate: the one this model was fine-tuned for (--task=transcribe transcribes)")
    return chosen


def _ct2_config(model_dir: str) -> dict:
    """A CTranslate2 folder's config.json ({} where it has none or it does not read)."""
    import json

    try:
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _ct2_generation_config(model_dir: str) -> dict:
    """A CTranslate2 folder's copy of the generation config (merge_lora.py --ct2 writes one: the fine-tuned language,
    whether it was fine-tuned with timestamp tokens), or {} where it has none."""
    import json

    path = os.path.join(model_dir, "generation_config.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON generation config ({e}); fix or delete it") from e
    return config if isinstance(config, dict) else {}


def _ct2_model_language(model_dir: str, config: dict | None = None) -> str | None:
    """The fine-tuned language of a CTranslate2 folder (from its generation config ``config``, read when not
    given), if any."""
    config = _ct2_generation_config(model_dir) if config is None else config
    return _model_language(config.get("language"), model_dir)


# ---------------------------------------------------------------------------------------------------
def load_transcriber(model_path: str, backend: str = "transformers", *, device: str = "auto",
                     dtype: str = "auto", compute_type: str = "auto", local_files_only: bool = False,
                     use_compile: bool = False, attn_implementation: str = "auto",
                     cpu_threads: int = 0, ct2_encoder: str = "auto",
                     audio_seconds: float | None = None) -> Transcriber:
    """Load a model for inference.

    Args:
        model_path: transformers folder, hub id, offline-packaged model (``openai/whisper-base``), or, for
            ``backend="ct2"``, a CTranslate2 folder.
        backend: "transformers" or "ct2".
        device: auto (cuda → mps → cpu), cpu, cuda, cuda:1, mps.
        dtype: transformers weights/autocast: auto (fp16 on GPU, fp32 on CPU), float32, bfloat16, float16.
        compute_type: CTranslate2 compute type; auto = int8 on CPU, float16 on GPU.
        use_compile: torch.compile the encoder (transformers backend).
        attn_implementation: auto (flash-attention-2 when installed on CUDA, else SDPA), sdpa, eager.
        cpu_threads: CTranslate2's CPU threads, all workers together (0 = its default, 4, or fewer cores;
            :func:`ct2_cpu_workers`).
        ct2_encoder: ct2 backend: who runs the audio encoder (the decoder stays in CTranslate2). ``torch`` =
            PyTorch in bfloat16 on the CPU (about 3x faster than CTranslate2 int8 where AMX makes bf16 matrix
            products fast), ``onnx`` = onnxruntime on the CPU, int8 for an int8 ``compute_type`` (CTranslate2's
            scheme, about twice as fast with VNNI), else float32, ``ct2`` = CTranslate2; ``auto``: see
            :func:`resolve_ct2_encoder`.
        audio_seconds: how much audio the engine will transcribe in all, when known (s): ct2_encoder auto's
            choice with AMX (:func:`resolve_ct2_encoder`); None = unknown or long-running.
    """
    from utils.models import ct2_model_dir, model_folder_kind, resolve_model

    if backend == "transformers":
        path = resolve_model(model_path, local_files_only=local_files_only)
        if model_folder_kind(path) == "ct2":
            raise ValueError(f"{path} is a CTranslate2 model; load it with --backend=ct2")
        return TransformersTranscriber(path, device=device, dtype=dtype, use_compile=use_compile,
                                       attn_implementation=attn_implementation)
    if backend == "ct2":
        return CT2Transcriber(ct2_model_dir(model_path), device=device, compute_type=compute_type,
                              cpu_threads=cpu_threads, encoder=ct2_encoder, audio_seconds=audio_seconds)
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
