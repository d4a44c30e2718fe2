"""Streaming transcription: stable text from a live audio stream (LocalAgreement-2 over a rolling buffer).

Audio flows ``source blocks (samples,) at 16 kHz → rolling buffer → hypothesis (segments) → words →
committed words + tentative tail``. The policy (:class:`StreamingPolicy`) follows whisper_streaming
(Macháček et al., 2023):

* every ``chunk_s`` seconds of new audio the whole buffer is decoded again (``hypothesis_fn``);
* a word is *committed* once two consecutive hypotheses agree on it (longest common prefix after the
  committed words, LocalAgreement-2, carried over one Chinese character read differently when the next few agree:
  :func:`agreed_tokens`), or the newest agrees with the one before the previous (a model that
  alternates between two readings, as it does in noise, commits the one it gave twice in three decodes instead
  of committing nothing until the buffer is full); the rest of the newest hypothesis is the *tentative* tail;
* the buffer is trimmed at the end of a Whisper segment whose words are all committed once it is longer
  than ``trim_s`` (inside the pause the VAD heard there, if one: segment ends are often a little late);
  committed text that left the buffer is the decoder prompt;
* with a voice-activity function, silence is not decoded; an utterance's chunks are counted from its
  speech onset (first decode one chunk after it, on ``pad_s`` of audio before it + the chunk), so what is
  decoded does not depend on how long earlier decodes took; an utterance closes after ``min_silence_s`` of
  silence: all of it is committed (the last hypothesis's tail when that decode already heard the end of the
  speech, else after decoding the buffer once more, by ``close_fn``: a wider beam, as the words it reads are
  committed without a second reading to agree with; a step that decodes after the speech ended reads like that
  too, as its tail is likely committed that way, and with ``wait_in_pause`` a step due just after the speech ended
  waits until it can be that step) and the buffer is emptied, or, with ``context_s``, keeps the latest closed
  utterances as context for the next one.

A second pass (:class:`Reviser`, optional) reads the closed utterances again in blocks of a few of them (at least
``block_s``, at most 28 s), one 30 s window each, as offline transcription reads its chunks, and replaces their words:
the stream's final text, a block later.

Words are compared token-wise: a token is one CJK character or one whitespace-free Latin "word", so
agreement works for Chinese (no spaces) and English alike; punctuation and case do not count.

Word times are an approximation: Whisper gives segment timestamps only, and a token's time is linearly
interpolated inside its segment by character count. Latency figures built on them (``word end → commit``)
carry that error (typically a few hundred ms either way inside long segments).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from utils.audio import SAMPLE_RATE
from utils.audio_sources import AudioDeviceError, AudioSource
from utils.languages import AUTO_LANGUAGE, CJK_RANGES, has_unspaced_script, joins_unspaced, unspaced_char
from utils.repeats import LOOP_REPEATS, tail_loop
from utils.text import normalize_text
from utils.vad import FRAME as VAD_FRAME  # samples per silero-vad frame at 16 kHz (32 ms)

logger = logging.getLogger(__name__)

# silence a hypothesis must have heard after the VAD's end of speech for its tail to be committed as it is: the
# VAD ends speech early on a soft final consonant, and Whisper misreads the last word of its input ("seven" → "11")
_HEARD_MARGIN = int(0.3 * SAMPLE_RATE)
# how far past the VAD's end of speech a word of the last step's tail may end and still be taken as heard speech when
# the closing decode read nothing after the committed words (samples; the VAD ends speech a little early)
_HEARD_SLACK = int(0.2 * SAMPLE_RATE)
# silence after a closed utterance past which it is no longer kept as context for the next one (samples)
_CONTEXT_GAP = int(2.0 * SAMPLE_RATE)
# a buffer cut at a Whisper segment end is moved into the pause the VAD heard there when that pause ended at most this
# long before it (samples): segment ends are often tens of ms late, inside the next word's onset, and the word then
# loses its first sound ("She" -> "He" in tools/bench_stream.py's English recording: 0.05 s late); only pauses of at
# least _QUIET_MIN samples count (not a stop consonant's closure inside a word)
_QUIET_SNAP = int(0.1 * SAMPLE_RATE)
_QUIET_MIN = int(0.15 * SAMPLE_RATE)
# after a cut inside speech (at the buffer limit, at a committed word's interpolated end) the decoder may read the
# fragment of that word left at the buffer's start as the word again: up to this many of the last committed words,
# read again at the start of the next hypotheses (starting within _REREAD_S of the cut), are not committed twice
_REREAD_WORDS = 3
_REREAD_S = 1.0
# live words in a row that a second-pass reading may leave out before they are put back into it: a block read in one
# window can drop a whole sentence the live text has (Mandarin, then English, read as Mandarin: the English was lost)
_LOST_RUN = 5
# ... and a whole utterance of at least this many words (between two of the VAD's pauses): a block of two real English
# recordings 3 s apart read "He was not an ill-disposed young man." and left out "Go forward ten meters." (4 words)
_LOST_UTTERANCE_WORDS = 2
# ... and a span of at least this many live characters (spaces aside) read as less than half as many: a Mandarin
# sentence in a stream held to English had the live "Kinsen-jian-jian-chi-hön-au, woman-i-chi-chi-kong-yong-san-pupa."
# (two "words", as offline read it too) and the second pass "Thank you very much."
_LOST_CHARS = 20
# audio the second pass keeps beyond its longest block (samples): a block is decoded right after the utterance end
# that makes it due, so this only has to cover the steps in between
_REVISE_KEEP = int(30.0 * SAMPLE_RATE)
# CJK and full-width punctuation ("，", "。", "？", "、", "「"): a token of its own, glued to the word before it, as
# spaced punctuation is; in a run of other characters, "开，github，the。" was one token, and agreement, times and the
# skip of committed words worked on that blob ("请打开，，github" committed with its comma twice)
# (not 々〆〇, parts of words and numbers, nor ＋ ． inside them: "３．５％", "C＋＋")
_WIDE_PUNCTUATION = ("\u3000-\u3004\u3008-\u303f\uff01-\uff0a\uff0c\uff0d\uff0f\uff1a-\uff20\uff3b-\uff40"
                     "\uff5b-\uff65")
_WIDE_MARK = re.compile(f"[{_WIDE_PUNCTUATION}]")
_TOKEN = re.compile(rf"\s*(?:[{CJK_RANGES}{_WIDE_PUNCTUATION}]|[^\s{CJK_RANGES}{_WIDE_PUNCTUATION}]+)")

# (audio (samples,) float32 at 16 kHz, prompt text or "") → [(start s, end s, text)] relative to the audio start
HypothesisFn = Callable[[np.ndarray, str], list[tuple]]  # (start, end, text[, aligned words])
# one frame of VAD_FRAME samples → speech probability in [0, 1]; called on consecutive frames (stateful)
VadFn = Callable[[np.ndarray], float]


# ---------------------------------------------------------------------------------------------------
# words
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamToken:
    """One token of a transcript (a CJK character or a spaced word) in stream time (seconds from the stream start).

    ``text`` keeps the leading space it had in the decoded text (Latin words), none for CJK characters.
    """

    start: float
    end: float
    text: str

    @property
    def key(self) -> str:
        """What agreement compares: normalised text (no punctuation, lower case, simplified Chinese)."""
        return token_key(self.text)


@functools.lru_cache(maxsize=65536)
def token_key(text: str) -> str:
    """Normalised form of a token for comparisons ("Hello," → "hello", "們" → "们")."""
    return normalize_text(text).replace(" ", "")


_FULL_STOPS = "。．.!?！？…"


# words whose "." is part of the word, not the sentence's end ("Mr.", "etc."), and dotted letters ("U.S.", "e.g.")
_ABBREVIATIONS = frozenset("mr mrs ms dr prof st jr sr vs etc inc ltd corp dept approx".split())
_DOTTED_LETTERS = re.compile(r"(?:[a-z]\.)+[a-z]")


def unfinished(token: StreamToken) -> StreamToken:
    """``token`` without the full stop the decoder put after it, for speech cut off there (Ctrl-C mid-sentence);
    the "." of an abbreviation ("Mr.", "U.S.") stays."""
    text = token.text.rstrip(_FULL_STOPS)
    if not text.strip():
        return token
    word = text.strip().lower()
    if token.text[len(text):] == "." and (word in _ABBREVIATIONS or _DOTTED_LETTERS.fullmatch(word)):
        return token
    return replace(token, text=text)


def split_tokens(text: str) -> list[str]:
    """Split text into tokens: each CJK character, each run of other non-space characters.

    A token keeps its leading white space; punctuation-only tokens are glued to the previous token
    ("开心，" is two tokens: "开", "心，"), or to the next one at the start of the text.
    """
    out: list[str] = []
    prefix = ""
    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        if not token_key(tok) or _WIDE_MARK.fullmatch(tok.strip()):  # "～" keeps a key ("~"): still punctuation
            if out:
                out[-1] += tok.strip()
            else:
                prefix += tok.strip()
            continue
        if prefix:
            tok = (" " if tok[:1].isspace() else "") + prefix + tok.lstrip()
            prefix = ""
        out.append(tok)
    return out


def join_words(words: Sequence[StreamToken]) -> str:
    """Text of consecutive words, spaced as decoded (a word's leading space), without a leading space."""
    return "".join(w.text for w in words).lstrip()


def words_from_segments(segments: Sequence[tuple], offset: float, audio_end: float) -> list[StreamToken]:
    """Hypothesis segments (times relative to the buffer) → words in stream time.

    A segment is (start, end, text), or (start, end, text, aligned words) when word timestamps were decoded:
    then each token takes its time from the aligned word it is in. Otherwise times are interpolated linearly
    inside the segment by the characters of each token. Times are clamped to ``[offset, audio_end]``.
    """
    words: list[StreamToken] = []
    for start, end, text, *aligned in segments:
        spans = [(w.start, w.end, w.word) for w in aligned[0]] if aligned and aligned[0] else [(start, end, text)]
        for span_start, span_end, span_text in spans:
            tokens = split_tokens(span_text)
            if not tokens:
                continue
            first = True  # a segment's text, or an aligned word (given without its leading space)
            span_start = min(max(offset + span_start, offset), audio_end)
            span_end = min(max(offset + span_end, span_start), audio_end)
            weights = np.array([max(len(token_key(t)), 1) for t in tokens], dtype=np.float64)
            bounds = span_start + (span_end - span_start) * np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
            for i, tok in enumerate(tokens):
                if tok[:1].isspace() and words and joins_unspaced(words[-1].text[-1:], tok.lstrip()[:1]):
                    tok = tok.lstrip()  # no space after "。" or between characters: "Friday。 The" as join_texts does
                elif first and not tok[:1].isspace() and not (joins_unspaced(words[-1].text[-1:], tok[:1]) if words
                                                              else unspaced_char(tok[:1])):
                    tok = " " + tok  # segments are joined by a space, except where joins_unspaced
                first = False
                words.append(StreamToken(float(bounds[i]), float(bounds[i + 1]), tok))
    return words


def _align_committed(committed: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Where the already-committed keys end inside a new hypothesis.

    Returns the ``j`` minimising the edit distance between ``committed`` and ``hypothesis[:j]`` (the
    largest such ``j`` on ties), so a re-decoded committed region that changed a little is still skipped.
    """
    if not committed:
        return 0
    n = len(hypothesis)
    prev = list(range(n + 1))  # distance between committed[:0] and hypothesis[:j] is j
    for i, c in enumerate(committed, 1):
        cur = [i] + [0] * n
        for j in range(1, n + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (c != hypothesis[j - 1]))
        prev = cur
    best = min(prev)
    return max(j for j, d in enumerate(prev) if d == best)


def _common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# characters that must agree after the one character two hypotheses read differently for the newest's reading to
# commit (see agreed_tokens)
AGREE_AFTER_EDIT = 3


def agreed_tokens(newest: Sequence[str], previous: Sequence[str], after_edit: int = AGREE_AFTER_EDIT) -> int:
    """How many of ``newest``'s tokens (``StreamToken.key``) two consecutive hypotheses agree on: their common prefix,
    carried over one Chinese/Japanese character read differently, added or left out when the ``after_edit``
    tokens after it agree (the newest's reading is taken: it heard more of what follows).

    Mandarin has many homophones: a character whose sound is clear can be read two ways on every decode
    ("今几年" / "近几年", "压岁" / "压碎"), and plain agreement then holds back every word after it until two
    decodes happen to read it alike. Not for spaced scripts: there a token is a whole word, and a word read two
    ways is usually one the model does not hear well (in noise); committing the newest reading there made the live
    text worse (espeak English in 10 dB white noise: live WER 0.23 → 0.28, mean of five runs each)."""
    n = _common_prefix(newest, previous)
    best = n
    for a, b in ((1, 1), (1, 0), (0, 1)):  # substituted, added in the newest, left out of the newest
        disputed = newest[n:n + a] + previous[n:n + b]
        if not disputed or not all(unspaced_char(t[:1]) for t in disputed):
            continue
        m = _common_prefix(newest[n + a:], previous[n + b:])
        if m >= after_edit:
            best = max(best, n + a + m)
    return best


def decode_after_silence(fn: HypothesisFn, audio: np.ndarray, lead: int, prompt: str) -> list[tuple]:
    """``fn`` on ``audio`` after ``lead`` samples of silence; segment (and aligned word) times are returned relative
    to ``audio``, none before its start. Whisper drops or clips a first word that starts right at the window's start
    ("the train" → "train", "she" → "he")."""
    if not lead:
        return fn(audio, prompt)
    segments = fn(np.concatenate([np.zeros(lead, dtype=np.float32), audio]), prompt)
    shift = lead / SAMPLE_RATE
    out = []
    for start, end, text, *aligned in segments:
        seg = (max(start - shift, 0.0), max(end - shift, 0.0), text)
        if aligned:
            seg += ([replace(w, start=max(w.start - shift, 0.0), end=max(w.end - shift, 0.0)) for w in aligned[0]],)
        out.append(seg)
    return out


# ---------------------------------------------------------------------------------------------------
# policy
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Update:
    """What one step of the policy changed.

    Attributes:
        committed: words committed by this step, in time order (never repeated later).
        tentative: the current uncommitted tail (replaces the previous tail).
        audio_end: stream time (s) of the end of the audio the step decoded.
        utterance_end: the step closed an utterance (silence) or flushed the stream.
        decoded: the step ran the hypothesis function (False: silence skipped or nothing new).
    """

    committed: list[StreamToken]
    tentative: list[StreamToken]
    audio_end: float
    utterance_end: bool = False
    decoded: bool = False


@dataclass
class _VadState:
    """Frame-level speech flags with hysteresis; sample counts are absolute stream positions.

    ``pauses`` collects the stream positions where a silence of ``min_silence`` samples after speech was
    reached: the ends of utterances, found even inside a long block of new audio.
    """

    fn: VadFn
    threshold: float
    min_silence: int  # samples
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    processed: int = 0  # samples already given to fn
    last_speech_end: int = -1  # end sample of the last speech frame
    in_speech: bool = False
    armed: bool = False  # speech seen since the last pause
    onset: int = -1  # start sample of the first speech frame of the latest utterance
    pauses: list[tuple[int, int]] = field(default_factory=list)  # (pause, end of the speech before it)
    # the latest runs of non-speech frames: (start sample, end sample), the last one still growing in silence
    quiet: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=1024))

    def feed(self, samples: np.ndarray) -> None:
        audio = np.concatenate([self.pending, samples]) if len(self.pending) else samples
        n_frames = len(audio) // VAD_FRAME
        for k in range(n_frames):
            frame = audio[k * VAD_FRAME: (k + 1) * VAD_FRAME]
            p = float(self.fn(frame))
            limit = self.threshold - 0.15 if self.in_speech else self.threshold
            self.in_speech = p >= limit
            self.processed += VAD_FRAME
            if not self.in_speech:
                if self.quiet and self.quiet[-1][1] == self.processed - VAD_FRAME:
                    self.quiet[-1] = (self.quiet[-1][0], self.processed)
                else:
                    self.quiet.append((self.processed - VAD_FRAME, self.processed))
            if self.in_speech:
                if not self.armed:
                    self.onset = self.processed - VAD_FRAME
                self.last_speech_end = self.processed
                self.armed = True
            elif self.armed and self.processed - self.last_speech_end >= self.min_silence:
                self.pauses.append((self.processed, self.last_speech_end))
                self.armed = False
        self.pending = audio[n_frames * VAD_FRAME:].copy()


class StreamingPolicy:
    """LocalAgreement-2 over a rolling buffer; pure logic, the decoder is ``hypothesis_fn``.

    Args:
        hypothesis_fn: decodes a buffer (≤ ``max_buffer_s`` s) given the prompt text; returns
            segments ``(start s, end s, text)`` relative to the buffer start.
        vad_fn: speech probability of one ``VAD_FRAME``-sample frame (stateful, consecutive frames);
            None = decode everything and never close utterances on silence.
        trim_s: once the buffer is longer, it is cut at the latest fully committed segment end.
        max_buffer_s: hard limit (Whisper sees 30 s): cut at the last committed word, or commit all.
        min_silence_s: silence that closes an utterance (with ``vad_fn``).
        vad_threshold: speech probability threshold (hysteresis: -0.15 to stay in speech).
        pad_s: audio kept before speech when silence is dropped from the buffer.
        prompt_chars: characters of committed text (out of the buffer) given as prompt; 0 = none.
        context_s: with ``vad_fn``, audio of closed utterances (whole ones, up to this many seconds) kept at the
            buffer's start while the next one is decoded, so the decoder hears the speech before it as an offline
            pass does (their words are re-read and skipped, never committed again); dropped after ``_CONTEXT_GAP``
            of silence, or by the trim at ``trim_s``. 0 = each utterance decoded alone (fastest).
        close_fn: decodes the buffer when an utterance closes and the last hypothesis did not hear its end (the
            words it reads are committed on that one reading, nothing agrees or disagrees with them), e.g. the
            same decoder with a wider beam; None = ``hypothesis_fn``.
        wait_in_pause: with ``vad_fn``, a step that falls due in the first 0.3 s of silence after speech waits until
            0.3 s of it were heard (or speech resumes): that decode then hears the end of the speech and reads it like
            the closing decode (``close_fn``), and the pause commits its tail as it is, instead of a decode just after
            the speech and another one at the pause.
    """

    def __init__(self, hypothesis_fn: HypothesisFn, *, vad_fn: VadFn | None = None, trim_s: float = 10.0,
                 max_buffer_s: float = 25.0, min_silence_s: float = 0.6, vad_threshold: float = 0.5,
                 pad_s: float = 0.4, prompt_chars: int = 0, context_s: float = 0.0,
                 close_fn: HypothesisFn | None = None, wait_in_pause: bool = True) -> None:
        if not 0 < trim_s <= max_buffer_s <= 30.0:
            raise ValueError(f"need 0 < trim_s ({trim_s}) <= max_buffer_s ({max_buffer_s}) <= 30 s")
        if not 0 <= context_s <= trim_s:
            raise ValueError(f"need 0 <= context_s ({context_s}) <= trim_s ({trim_s}): the buffer is trimmed past it")
        self.hypothesis_fn = hypothesis_fn
        self.close_fn = close_fn or hypothesis_fn
        self.trim_s, self.max_buffer_s = trim_s, max_buffer_s
        self.min_silence_s, self.pad_s, self.prompt_chars = min_silence_s, pad_s, prompt_chars
        self.context_s = context_s
        self.wait_in_pause = wait_in_pause
        self._vad = (_VadState(vad_fn, vad_threshold, int(min_silence_s * SAMPLE_RATE))
                     if vad_fn is not None else None)
        self.buffer = np.zeros(0, dtype=np.float32)
        self.offset = 0  # stream sample of buffer[0]
        self.total = 0  # samples received
        self.committed: list[StreamToken] = []  # everything committed, in order
        self.cut_short = False  # close() stopped the stream inside speech (no pause had ended the utterance)
        self._in_buffer: list[StreamToken] = []  # committed words still inside the buffer
        self._reread: list[StreamToken] = []  # last committed words before a cut inside speech (_REREAD_WORDS)
        self._prompt_words: list[StreamToken] = []  # committed words that left the buffer (for the prompt)
        self.tentative: list[StreamToken] = []
        self._older: list[str] = []  # keys of the tentative tail before ``tentative``'s, after the committed words
        self._decoded_until = 0  # stream sample up to which the buffer was decoded
        self._step_from = 0  # stream sample from which the next chunk is counted (last step, or speech onset)
        self._tentative_until: int | None = None  # stream sample up to which ``tentative``'s hypothesis heard
        self._closed: list[tuple[int, int]] = []  # closed utterances kept as context: (start sample, words in buffer)
        self._closed_end = -1  # stream sample where the last utterance closed
        # every utterance end, for a second pass (:class:`Reviser`): (stream sample of the pause, of the end of the
        # speech before it, len(committed) then); the stream's end (:meth:`finish`) too; the caller empties it
        self.closes: list[tuple[int, int, int]] = []

    # -- state --------------------------------------------------------------------------------------
    @property
    def buffer_s(self) -> float:
        return len(self.buffer) / SAMPLE_RATE

    @property
    def audio_end(self) -> float:
        """Stream time (s) of the last sample received."""
        return self.total / SAMPLE_RATE

    @property
    def text(self) -> str:
        """All committed text."""
        return join_words(self.committed)

    def insert_audio(self, samples: np.ndarray) -> None:
        """Append float32 16 kHz samples, shape (n,), to the stream."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.buffer = np.concatenate([self.buffer, samples])
        self.total += len(samples)
        if self._vad is not None:
            onset = self._vad.onset
            self._vad.feed(samples)
            if self._vad.onset != onset:  # an utterance started: its chunks are counted from its first frame
                self._step_from = self._vad.onset

    def due(self, chunk_s: float) -> bool:
        """Whether :meth:`process` has work: an utterance ended (VAD pause), or ``chunk_s`` s of new audio
        since the last step (with a VAD: since the start of the utterance's speech, if that is later)."""
        if self._vad is not None and self._vad.pauses:
            return True
        return self.samples_until_due(chunk_s) <= 0

    def samples_until_due(self, chunk_s: float) -> int:
        """New samples still needed before ``chunk_s`` s have arrived since the last step (≤ 0: due); with
        ``wait_in_pause``, in the first ``_HEARD_MARGIN`` of silence after speech, those until that much silence was
        heard (speech resuming makes the step due at once)."""
        due_in = self._step_from + int(round(chunk_s * SAMPLE_RATE)) - self.total
        vad = self._vad
        if due_in <= 0 and self.wait_in_pause and vad is not None and vad.armed and not vad.in_speech:
            heard_in = vad.last_speech_end + _HEARD_MARGIN - self.total
            if heard_in > 0:
                return max(heard_in, VAD_FRAME)
        return due_in

    @property
    def quiet_s(self) -> float:
        """Seconds of silence since the last speech, when the utterance before it has closed and no speech came
        since (VAD); 0 while an utterance is open, before any speech, or without a VAD."""
        vad = self._vad
        if vad is None or vad.armed or vad.last_speech_end < 0:
            return 0.0
        return (vad.processed - vad.last_speech_end) / SAMPLE_RATE

    @property
    def undecoded(self) -> bool:
        """Audio arrived since the last step."""
        return self.total > self._decoded_until

    @property
    def undecoded_s(self) -> float:
        """Seconds of audio that arrived after the last decode."""
        return max(0, self.total - self._decoded_until) / SAMPLE_RATE

    def _buffer_has_speech(self) -> bool:
        """Speech arrived that is not decoded and committed yet (closed utterances kept as context do not count)."""
        return self._vad is None or self._vad.last_speech_end > max(self.offset, self._closed_end)

    def _prompt(self) -> str:
        if self.prompt_chars <= 0 or not self._prompt_words:
            return ""
        return join_words(self._prompt_words)[-self.prompt_chars:]

    def _lead_samples(self) -> int:
        """Silence to put before the buffer so the decoder hears ``pad_s`` of it before the speech: none when the
        buffer holds the utterance's onset with ``pad_s`` before it; all of it when the buffer starts inside the
        speech (stream start, a trim at a segment end) or, without a VAD, always."""
        pad = int(self.pad_s * SAMPLE_RATE)
        if self._vad is not None and self._vad.onset >= self.offset:
            return max(0, pad - (self._vad.onset - self.offset))
        return pad

    def _hypothesis(self, audio: np.ndarray, fn: HypothesisFn | None = None) -> list[tuple]:
        """``fn`` (default ``hypothesis_fn``) on ``audio`` (the buffer's start) after :meth:`_lead_samples` of
        silence (:func:`decode_after_silence`), with the prompt."""
        return decode_after_silence(fn or self.hypothesis_fn, audio, self._lead_samples(), self._prompt())

    def _skip_committed(self, words: Sequence[StreamToken]) -> int:
        """How many leading words of a hypothesis are committed already: the committed words still in the buffer
        (:func:`_align_committed`), or, while none is, right after a cut inside speech, the last committed words read
        again from the fragment at the buffer's start (the longest such run, starting within ``_REREAD_S``)."""
        if self._in_buffer or not self._reread:
            return _align_committed([w.key for w in self._in_buffer], [w.key for w in words])
        keys, until = [w.key for w in self._reread], self.offset / SAMPLE_RATE + _REREAD_S
        for k in range(min(len(keys), len(words)), 0, -1):
            if [w.key for w in words[:k]] == keys[-k:] and words[0].start <= until:
                logger.debug("skipped %r: read again after the cut inside speech", join_words(words[:k]))
                return k
        return 0

    def _quiet_cut(self, sample: int) -> int:
        """Where to cut the buffer for a cut asked at stream sample ``sample`` (a segment end from Whisper's
        timestamps): inside the pause the VAD heard there, if one (of ``_QUIET_MIN`` at least) holds ``sample`` or
        ended at most ``_QUIET_SNAP`` before it — at ``sample`` when that lies in the pause's first half, else at its
        middle, so the next word keeps its onset. Without a VAD or a pause there: ``sample``. The snap is short: a
        word after the pause that ended before ``sample`` would be left in the buffer and committed again."""
        if self._vad is None:
            return sample
        for start, end in reversed(self._vad.quiet):
            if start > sample:
                continue
            if end >= sample - _QUIET_SNAP and end - start >= _QUIET_MIN:
                cut = min(sample, (start + end) // 2)
                return cut if cut > self.offset else sample
            break
        return sample

    def _cut(self, sample: int) -> None:
        """Drop buffer audio before stream sample ``sample``."""
        sample = min(max(sample, self.offset), self.total)
        self.buffer = self.buffer[sample - self.offset:]
        self.offset = sample

    def _retire(self, keep: list[StreamToken]) -> None:
        """Committed words in the buffer become ``keep``; the others move to the prompt context."""
        gone = self._in_buffer[: len(self._in_buffer) - len(keep)] if keep else self._in_buffer
        self._prompt_words = (self._prompt_words + list(gone))[-400:]
        self._in_buffer = list(keep)
        self._reread = []
        if not keep:  # nothing committed is left in the buffer: no context either (also one without words)
            self._closed = []
        left = len(gone)  # the oldest context utterances lose their words first
        while left and self._closed:
            start, n = self._closed.pop(0)
            if n > left:
                self._closed.insert(0, (start, n - left))
            left -= min(n, left)

    # -- steps --------------------------------------------------------------------------------------
    def process(self, decode: bool = True) -> Update:
        """Decode the buffer and commit what two consecutive hypotheses agree on.

        Utterances that ended (``min_silence_s`` of silence after speech, VAD) since the last step are
        committed whole first. Then, with ``decode``, the buffer is decoded (``decode=False``: only close
        utterances, e.g. when a pause, not a chunk, made the step :meth:`due`). Without speech in the buffer
        nothing is decoded and the silence is dropped (``pad_s`` kept). The first decode of an utterance
        starts the buffer ``pad_s`` before the speech onset.
        """
        committed: list[StreamToken] = []
        decoded = closed = False
        while self._vad is not None and self._vad.pauses:
            pause, speech_end = self._vad.pauses.pop(0)
            if pause > self.offset:
                new, ran = self._close_utterance(pause, speech_end)
                committed += new
                decoded |= ran
                closed = True
        end = self.audio_end
        if not self._buffer_has_speech():
            if not self._closed or self.total - self._closed_end > _CONTEXT_GAP:
                self._retire([])  # too long a silence: the context is dropped
                # keep pad_s, plus the frames the VAD has not seen yet: an onset in them is still pad_s inside
                self._cut(self.total - int(self.pad_s * SAMPLE_RATE) - 2 * VAD_FRAME)
            self._decoded_until = self._step_from = self.total  # nothing to decode up to here
            return Update(committed, list(self.tentative), end, utterance_end=closed, decoded=decoded)
        if not decode or self.total == self._decoded_until:
            return Update(committed, list(self.tentative), end, utterance_end=closed, decoded=decoded)
        if self._vad is not None and not self.tentative and not self._in_buffer:
            self._closed = []  # a context without words is no context
            self._cut(self._vad.onset - int(self.pad_s * SAMPLE_RATE))  # a new utterance: drop the silence before
        # the utterance's speech ended (what this decode reads is likely committed as it is when the pause closes it):
        # read it like the closing decode
        ended = self._vad is not None and not self._vad.in_speech and (
            self.total - self._vad.last_speech_end >= _HEARD_MARGIN)
        segments = self._hypothesis(self.buffer, self.close_fn if ended else None)  # no state changes before this
        self._decoded_until = self._tentative_until = self._step_from = self.total
        offset_s = self.offset / SAMPLE_RATE
        words = words_from_segments(segments, offset_s, end)
        j = self._skip_committed(words)
        tail = words[j:] or (self._heard_tail(self._vad.last_speech_end) if ended else [])
        keys, previous = [w.key for w in tail], [w.key for w in self.tentative]
        n = max(agreed_tokens(keys, previous), _common_prefix(keys, self._older))
        self._older = previous[n:] if previous[:n] == keys[:n] else []
        new = tail[:n]
        self.committed += new
        self._in_buffer += new
        self.tentative = tail[n:]
        new = new + self._trim(segments, offset_s, j + n)
        if new or self.tentative:
            logger.debug("committed %r | tentative %r", join_words(new), join_words(self.tentative))
        return Update(committed + new, list(self.tentative), end, decoded=True)

    def _heard_tail(self, speech_end: int) -> list[StreamToken]:
        """The tentative words that end by stream sample ``speech_end`` (the VAD's end of speech, + ``_HEARD_SLACK``),
        for a reading like the closing decode's that has nothing after the committed words: it ended early ("请打开，
        github，" of "…的 pull request": the rest was lost from the live text); a word the last step made up in the
        silence after the speech ("Thanks.", as Whisper writes over silence) is not among them."""
        heard = [w for w in self.tentative if w.end <= (speech_end + _HEARD_SLACK) / SAMPLE_RATE]
        if heard:
            logger.debug("a closing reading has nothing after the committed words: the last step's %r is kept",
                         join_words(heard))
        return heard

    def _close_utterance(self, pause: int, speech_end: int) -> tuple[list[StreamToken], bool]:
        """Commit the utterance that ended at stream sample ``pause`` (its speech ended at ``speech_end``).

        When the latest hypothesis already heard the whole utterance (decoded past ``speech_end`` +
        ``_HEARD_MARGIN``, not past ``pause``: only silence after the speech), its tentative tail is committed
        as it is; otherwise the buffer is decoded up to ``pause`` by ``close_fn`` and everything after the
        committed words is committed. Returns the new words and whether a decode ran.
        """
        heard = self._tentative_until
        if heard is not None and speech_end + _HEARD_MARGIN <= heard <= pause:
            new, decoded = list(self.tentative), False
        else:
            audio = self.buffer[: pause - self.offset]
            segments = self._hypothesis(audio, self.close_fn)
            words = words_from_segments(segments, self.offset / SAMPLE_RATE, pause / SAMPLE_RATE)
            j = self._skip_committed(words)
            new, decoded = words[j:], True
            new = new or self._heard_tail(speech_end)
        end = pause / SAMPLE_RATE
        self.committed += new
        self._in_buffer += new
        self.tentative, self._older = [], []
        self._tentative_until = None
        self._keep_context(pause)
        self._decoded_until = min(self._decoded_until, pause)
        self.closes.append((pause, speech_end, len(self.committed)))
        logger.debug("utterance closed at %.2f s (%s): committed %r", end,
                     "decoded" if decoded else "as last heard", join_words(new))
        return new, decoded

    def _keep_context(self, pause: int) -> None:
        """After an utterance closed at stream sample ``pause``: keep the latest closed utterances that fit in
        ``context_s`` (whole ones, from the buffer cut before each) as context; drop the rest of the buffer."""
        pad = int(self.pad_s * SAMPLE_RATE)
        start = self._closed_end - pad if self._closed else self.offset  # this utterance's part of the buffer
        self._closed.append((max(start, self.offset), len(self._in_buffer) - sum(n for _, n in self._closed)))
        self._closed_end = pause
        limit = int(self.context_s * SAMPLE_RATE)
        drop = 0
        while drop < len(self._closed) and pause - self._closed[drop][0] > limit:
            drop += 1
        if drop == len(self._closed):
            self._retire([])
            self._cut(pause - pad)
            return
        kept = self._closed[drop:]
        self._retire(self._in_buffer[sum(n for _, n in self._closed[:drop]):])
        self._closed = kept
        self._cut(kept[0][0])

    def _trim(self, segments: Sequence[tuple[float, float, str]], offset_s: float, done: int) -> list[StreamToken]:
        """Cut the buffer at the latest segment end whose tokens are all committed (``done`` tokens).

        Returns words committed by force (nothing agreed on within ``max_buffer_s``), usually none.
        """
        if self.buffer_s <= self.trim_s:
            return []
        count, cut_s, cut_count = 0, None, 0
        for start, end, text, *_ in segments:  # (start, end, text[, aligned words])
            count += len(split_tokens(text))
            if count > done:
                break
            cut_s, cut_count = offset_s + end, count
        if cut_s is not None and cut_s > offset_s:
            left = done - cut_count  # committed tokens after the cut
            self._retire(self._in_buffer[len(self._in_buffer) - left:] if left > 0 else [])
            cut = self._quiet_cut(int(round(cut_s * SAMPLE_RATE)))
            self._cut(cut)
            logger.debug("buffer trimmed at segment end %.2f s, cut at %.2f s (%d committed tokens kept)", cut_s,
                         cut / SAMPLE_RATE, left)
            return []
        if self.buffer_s <= self.max_buffer_s:
            return []
        if self._in_buffer:  # no committed segment end: cut at the last committed word
            # not moved into a pause: this end is interpolated, and a cut before the word's real end would leave
            # it in the buffer to be read and committed again
            cut = int(round(self._in_buffer[-1].end * SAMPLE_RATE))
            last = self._in_buffer[-_REREAD_WORDS:]
            self._retire([])
            self._cut(cut)
            self._reread = last
            logger.debug("buffer over %.0f s: cut at the last committed word (%.2f s)", self.max_buffer_s,
                         cut / SAMPLE_RATE)
            return []
        forced = self.tentative  # nothing agreed on for max_buffer_s: commit rather than overflow the window
        self.committed += forced
        self._in_buffer += forced
        self.tentative, self._older, self._tentative_until = [], [], None
        self._retire([])
        self._cut(self.total)
        self._reread = forced[-_REREAD_WORDS:]  # the last word may go on past the cut
        logger.warning("no agreement within %.0f s of audio: committed the latest hypothesis", self.max_buffer_s)
        return forced

    def close(self) -> Update:
        """Stop listening (Ctrl-C): commit everything heard so far, as if the speech had ended here.

        Utterances already ended are closed first; then, if audio with speech arrived after the last decode,
        the buffer is decoded once more up to the end (unless the last hypothesis already heard the end of the
        speech) and all of it is committed. On a machine that cannot keep up, that is most of the last chunk.
        """
        update = self.process(decode=False)
        committed, decoded = list(update.committed), update.decoded
        self.cut_short = self._vad is not None and self._vad.armed  # speech no pause has ended
        cut_from = self.closes[-1][2] if self.closes else 0  # the cut utterance's first word (in self.committed)
        if self.total > self._decoded_until and self._buffer_has_speech():
            speech_end = self._vad.last_speech_end if self._vad is not None else self.total
            new, ran = self._close_utterance(self.total, max(speech_end, self.offset))
            committed += new
            decoded |= ran
        tail = self.finish()
        committed += tail.committed
        if self.cut_short and len(self.committed) > cut_from:  # the decoder ends what it hears with a full stop:
            # "今天天气。"; also a word of it an earlier step committed, never one of an utterance a pause ended
            self.committed[-1] = unfinished(self.committed[-1])
            if committed:
                committed[-1] = self.committed[-1]
        return Update(committed, [], self.audio_end, utterance_end=True, decoded=decoded)

    def finish(self) -> Update:
        """End of stream: commit the tentative tail of the last hypothesis, without decoding.

        Audio received after the last decode is not decoded (:meth:`close` decodes it).
        """
        new = list(self.tentative)
        self.committed += new
        self.tentative, self._older, self._tentative_until = [], [], None
        self._in_buffer += new
        self._retire([])
        self._cut(self.total)
        speech_end = self._vad.last_speech_end if self._vad is not None else self.total
        self.closes.append((self.total, min(max(speech_end, 0), self.total), len(self.committed)))
        return Update(new, [], self.audio_end, utterance_end=True)


# ---------------------------------------------------------------------------------------------------
# second pass
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Revision:
    """Committed words ``first:last`` of a stream (indices into its committed words) read again as one block.

    ``words`` replace them (stream times); ``start``/``end``: the block's audio (stream seconds). ``decoded`` False:
    the block was too long for one window and ``words`` are the live ones.
    """

    first: int
    last: int
    words: list[StreamToken]
    start: float
    end: float
    decoded: bool = True


# where a second-pass block starts after a long silence: this long before its first committed word (word times are
# estimates inside a decode): a block from the middle of a 40 s silence did not fit the 28 s window, and the
# utterance after it kept its live words
_REVISE_SILENCE_LEAD_S = 2.0
# silence after which the second pass reads what was said before it, though the block is shorter than block_s: a
# speaker who said one sentence and stopped got its final text only when speaking again (25 s later in a walkthrough).
# As long as a default block: shorter pauses between sentences (2.5-4 s, thinking) keep them in one block, read with
# each other as context (2 s read each sentence alone)
REVISE_AFTER_QUIET_S = 6.0


class Reviser:
    """Second pass: closed utterances decoded again together, as offline transcription reads them.

    A stream decodes every utterance alone (what follows it has not been said yet), and Whisper misreads a word
    more often without the sentences around it ("closes at five" → "close at I'm") than inside a 30 s window of
    them. So once the utterances closed since the last block span ``block_s`` seconds, the reviser decodes them in
    one window (``decode_fn``: e.g. the closing decode's beam in a 30 s window, no prompt) and their committed words
    are replaced by what it reads: the final text, ``block_s`` to ``max_block_s`` seconds after the live one.

    A block runs from the middle of the silence after one utterance (≥ 0.3 s from either side with the VAD's
    0.6 s pauses) to the pause that closed another, with ``lead_s`` of silence put before it, and holds at most
    ``max_block_s`` of audio; an utterance longer than that keeps its live words, and the utterances before it are
    read as soon as the speech has run on past ``max_block_s`` from their block's start (no later utterance end can
    join them). Blocks without committed words (silence, noise) are not decoded.

    Feed it the stream's audio (:meth:`insert_audio`) and the policy's ``closes``; :meth:`revise` when
    :meth:`due`, and with ``final=True`` at the end of the stream. Its revisions cover every committed word, in
    order: the final text can be written block by block.
    """

    def __init__(self, decode_fn: HypothesisFn, *, block_s: float = 6.0, max_block_s: float = 28.0,
                 lead_s: float = 0.4) -> None:
        if not 0 < block_s <= max_block_s <= 29.0:
            raise ValueError(f"need 0 < block_s ({block_s}) <= max_block_s ({max_block_s}) <= 29 s")
        self.decode_fn = decode_fn
        self.block = int(block_s * SAMPLE_RATE)
        self.max_block = int(max_block_s * SAMPLE_RATE)
        self.lead = int(lead_s * SAMPLE_RATE)
        self._audio = np.zeros(0, dtype=np.float32)
        self._audio_from = 0  # stream sample of _audio[0]
        self._start = 0  # stream sample where the next block starts
        self._first = 0  # index of its first committed word
        self._closes: list[tuple[int, int, int]] = []  # (pause, speech end, committed words then), not revised yet
        self._received = 0  # samples inserted
        self._done: list[Revision] = []  # revisions made and not returned yet (a Ctrl-C inside revise keeps them)

    def insert_audio(self, samples: np.ndarray) -> None:
        """Append float32 16 kHz samples, shape (n,). Audio more than ``max_block_s`` + 30 s old is dropped (speech
        without a pause for that long is no block any more: its live words stay)."""
        self._audio = np.concatenate([self._audio, np.asarray(samples, dtype=np.float32).reshape(-1)])
        self._received += len(samples)
        keep = self.max_block + _REVISE_KEEP
        if len(self._audio) > keep + _REVISE_KEEP // 3:  # not on every block: each drop copies what is kept
            drop = len(self._audio) - keep
            self._audio = self._audio[drop:]
            self._audio_from += drop

    def add_closes(self, closes: list[tuple[int, int, int]]) -> None:
        """Take the policy's utterance ends (:attr:`StreamingPolicy.closes`) and empty that list."""
        self._closes += closes
        closes.clear()

    def due(self) -> bool:
        """The utterances closed since the last block span ``block_s``, or speech went on without a pause past
        ``max_block_s`` after the block's start (no later utterance end can join them)."""
        return bool(self._closes) and (self._closes[-1][0] - self._start >= self.block
                                       or self._received - self._start > self.max_block)

    def revise(self, committed: Sequence[StreamToken], final: bool = False) -> list[Revision]:
        """Decode the blocks that are due (``final``: all that is left) of the stream whose committed words are
        ``committed``; returns their revisions (and any not taken before), in order."""
        self.run(committed, final)
        return self.take()

    def run(self, committed: Sequence[StreamToken], final: bool = False, cut_short: bool = False) -> None:
        """As :meth:`revise`, keeping the revisions for :meth:`take` (a Ctrl-C inside loses none of them);
        ``cut_short``: the stream stopped inside speech (:attr:`StreamingPolicy.cut_short`), so the block that ends
        it ends in no full stop (:func:`unfinished`)."""
        while self._closes and (final or self.due()):
            if len(committed) > self._first:  # after a long silence the block starts shortly before its first word
                self._move_start(int((committed[self._first].start - _REVISE_SILENCE_LEAD_S) * SAMPLE_RATE))
            fits = [i for i, (pause, _, _) in enumerate(self._closes) if pause - self._start <= self.max_block]
            k = fits[-1] if fits else 0
            pause, speech_end, last = self._closes[k]
            revision = None
            if fits and last > self._first and self._start >= self._audio_from:
                ends = [n - self._first for _, _, n in self._closes[: k + 1] if n > self._first]
                # the block ends where the next one starts (the middle of the pause), not at the pause's end: a
                # breath or the next speaker's first sound in the rest of the pause was read as a made-up word at the
                # block's end (a helper's test: the next sentence's first 0.2 s there added a character in 9 of 10),
                # and both blocks read that stretch; the stream's last block runs to its end (no next block, and a VAD
                # that ended the speech early cuts no last word off)
                end = pause if final and k == len(self._closes) - 1 else (speech_end + pause) // 2
                revision = self._decode(end, committed[self._first: last], ends)
                if cut_short and last == len(committed) and revision.words:
                    revision.words[-1] = unfinished(revision.words[-1])
            elif last > self._first:
                logger.info("%.1f s of speech without a pause that fits the second pass's window: its live words stay",
                            (pause - self._start) / SAMPLE_RATE)
                revision = Revision(self._first, last, list(committed[self._first: last]), self._start / SAMPLE_RATE,
                                    pause / SAMPLE_RATE, decoded=False)
            with interrupts_deferred():  # the block is done: its revision and the state move on together
                if revision is not None:
                    self._done.append(revision)
                del self._closes[: k + 1]
                self._first = max(self._first, last)
                self._move_start((speech_end + pause) // 2)

    def _move_start(self, sample: int) -> None:
        """The next block starts at stream ``sample`` if that is later (no later than the audio received); the audio
        before it is dropped."""
        self._start = min(max(self._start, sample), self._received)
        self._audio = self._audio[max(0, self._start - self._audio_from):]
        self._audio_from = max(self._audio_from, self._start)

    def keep_live(self, committed: Sequence[StreamToken]) -> None:
        """After a :meth:`run` cut off by Ctrl-C: one block of every committed word not revised yet, with its live
        words, after the blocks it had read (:meth:`take` them all: the revisions still cover every committed
        word)."""
        with interrupts_deferred():
            if len(committed) > self._first:
                self._done.append(Revision(self._first, len(committed), list(committed[self._first:]),
                                           self._start / SAMPLE_RATE, self._received / SAMPLE_RATE, decoded=False))
                self._first = len(committed)
            self._closes.clear()

    def take(self) -> list[Revision]:
        """The revisions made since the last call, in order."""
        done, self._done = self._done, []
        return done

    def _decode(self, end: int, live: Sequence[StreamToken], utterance_ends: Sequence[int]) -> Revision:
        """Read the block from ``self._start`` to stream sample ``end``, whose live words are ``live`` (its utterances
        end before these indices of it)."""
        segments = decode_after_silence(self.decode_fn, self._audio[: end - self._audio_from], self.lead, "")
        start_s = self._start / SAMPLE_RATE
        words = words_from_segments(segments, start_s, end / SAMPLE_RATE)
        logger.debug("second pass %.2f-%.2f s: %d live words -> %r", start_s, end / SAMPLE_RATE, len(live),
                     join_words(words))
        words = restore_lost(live, words, utterance_ends=utterance_ends)
        return Revision(self._first, self._first + len(live), words, start_s, end / SAMPLE_RATE)


def restore_lost(live: Sequence[StreamToken], revised: Sequence[StreamToken], run: int = _LOST_RUN, *,
                 utterance_ends: Sequence[int] = ()) -> list[StreamToken]:
    """``revised`` (a second-pass reading) with the live words it left out put back where they were, aligned by
    :attr:`StreamToken.key`: every run of at least ``run`` live words it has nothing (or that many words fewer) for,
    every span of live words it has less than half the characters for (``_LOST_CHARS`` or more fewer), and every
    whole utterance of at least ``_LOST_UTTERANCE_WORDS`` words none of which it read, in whose place it has at most
    half as many words (and, in Chinese or Japanese, less than half the characters; ``utterance_ends``: the indices
    into ``live`` before which one utterance ends and the next begins). A reading that fixes words keeps its fixes;
    one that lost a sentence does not lose it from the final text."""
    bounds = sorted({0, *utterance_ends, len(live)})
    utterances = [(s, e) for s, e in zip(bounds, bounds[1:]) if e - s >= _LOST_UTTERANCE_WORDS]
    live_keys, revised_keys = [w.key for w in live], [w.key for w in revised]
    out: list[StreamToken] = []
    for op, a1, a2, b1, b2 in difflib.SequenceMatcher(None, live_keys, revised_keys, autojunk=False).get_opcodes():
        fewer = (a2 - a1) - (b2 - b1)
        live_chars = sum(len(w.text.strip()) for w in live[a1:a2])
        kept_chars = sum(len(w.text.strip()) for w in revised[b1:b2])
        lost_chars = live_chars - kept_chars >= _LOST_CHARS and 2 * kept_chars < live_chars
        # a lost utterance: it has at most half as many words in its place, and in Chinese or Japanese (a word per
        # character) less than half the characters too (the demo model's "预算是三点五万。" translated into 9 English
        # words was read as lost; "go to bed." read as "Subscribed!" still is)
        lost_utterance = any(a1 <= s and e <= a2 and 2 * fewer >= e - s for s, e in utterances) and (
            2 * kept_chars < live_chars or not has_unspaced_script(join_words(live[a1:a2])))
        if op in ("delete", "replace") and (fewer >= run or lost_chars or lost_utterance):
            logger.info("second pass: its reading has %d words (%d characters) for %d live words (%d), which are "
                        "kept: %r", b2 - b1, kept_chars, a2 - a1, live_chars, join_words(live[a1:a2]))
            out += live[a1:a2]
        else:
            out += revised[b1:b2]
    return out


def revised_words(committed: Sequence[StreamToken], revisions: Sequence[Revision]) -> list[StreamToken]:
    """The committed words with each revision's range replaced by its words (revisions in order)."""
    out: list[StreamToken] = []
    pos = 0
    for r in revisions:
        out += committed[pos: r.first]
        out += r.words
        pos = max(pos, r.last)
    return out + list(committed[pos:])


# ---------------------------------------------------------------------------------------------------
# the stream loop
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Commit:
    """Words committed at one moment: ``commit_time`` on the stream clock (s)."""

    words: list[StreamToken]
    commit_time: float
    audio_end: float

    def latencies(self) -> list[float]:
        """Per word: commit time − word end (the end clamped to the audio decoded), seconds."""
        return [self.commit_time - min(w.end, self.audio_end) for w in self.words]


@dataclass
class StreamResult:
    """The outcome of one stream."""

    commits: list[Commit]
    audio_s: float
    compute_s: float
    decodes: int
    cpu_s: float  # process CPU time of the steps (all threads), for comparing with an unloaded machine
    interrupted: bool
    audio: np.ndarray | None = None  # everything received, with ``keep_audio``
    max_lag_s: float = 0.0  # how far (s) the transcript fell behind the newest audio, at most
    revisions: list[tuple[Revision, float]] = field(default_factory=list)  # second pass, with its stream time
    revise_s: float = 0.0  # compute time of the second pass (s), part of ``compute_s``
    final_words: list[StreamToken] | None = None  # the committed words, the second pass's blocks replaced (with one)
    error: str | None = None  # why the source stopped delivering audio (a microphone unplugged), else None

    @property
    def words(self) -> list[StreamToken]:
        return [w for c in self.commits for w in c.words]

    @property
    def text(self) -> str:
        """The live (first-pass) text."""
        return join_words(self.words)

    @property
    def final_text(self) -> str:
        """The final text: the live text with the second pass's blocks replaced (the live text without one)."""
        return self.text if self.final_words is None else join_words(self.final_words)

    def latency_stats(self) -> dict[str, float | int | None]:
        """Mean / p90 / max word-end-to-commit latency in seconds, and counts."""
        lat = np.array([x for c in self.commits for x in c.latencies()], dtype=np.float64)
        stats: dict[str, float | int | None] = {"words": int(lat.size), "commits": len(self.commits),
                                                "decodes": self.decodes}
        if lat.size:
            stats.update(mean_latency_s=round(float(lat.mean()), 3),
                         p90_latency_s=round(float(np.percentile(lat, 90)), 3),
                         max_latency_s=round(float(lat.max()), 3))
        else:
            stats.update(mean_latency_s=None, p90_latency_s=None, max_latency_s=None)
        stats["audio_s"] = round(self.audio_s, 3)
        stats["compute_s"] = round(self.compute_s, 3)
        stats["cpu_s"] = round(self.cpu_s, 3)
        stats["real_time_factor"] = round(self.compute_s / self.audio_s, 3) if self.audio_s else None
        stats["max_lag_s"] = round(self.max_lag_s, 3)
        if self.revisions:
            lag = np.array([t - w.end for r, t in self.revisions for w in r.words], dtype=np.float64)
            stats["revisions"] = len(self.revisions)
            stats["revise_s"] = round(self.revise_s, 3)
            stats["mean_revision_lag_s"] = round(float(lag.mean()), 3) if lag.size else None
        return stats


def run_stream(source: AudioSource, policy: StreamingPolicy, *, chunk_s: float = 1.0,
               on_update: Callable[[Update, float], None] | None = None, keep_audio: bool = False,
               poll_s: float = 0.1, reviser: Reviser | None = None,
               on_revision: Callable[[Revision, float], None] | None = None,
               revise_after_quiet_s: float = REVISE_AFTER_QUIET_S) -> StreamResult:
    """Feed ``source`` to ``policy`` until the end of the stream or Ctrl-C, then flush.

    Audio is read in blocks of ``poll_s`` so the VAD sees it as it arrives: a step runs as soon as an
    utterance ends (its last words are committed without waiting for the next chunk), or once ``chunk_s``
    of new audio is there. When the transcript runs more than ``behind_warning_s(chunk_s)`` behind the
    audio (decoding is slower than the audio arrives), one warning says so; ``max_lag_s`` in the result
    says how far behind it got. No audio is skipped either way: the next step decodes all that arrived.

    Args:
        source: where the audio comes from, with its clock.
        policy: the streaming policy.
        chunk_s: seconds of new audio between decodes (more accumulates while a decode runs).
        poll_s: how often (s of audio) the stream is read and the VAD updated; at most ``chunk_s``.
        on_update: called after every step with the update and the stream time of its commit.
        keep_audio: keep all received audio in the result (e.g. to transcribe it offline afterwards).
        reviser: a second pass (:class:`Reviser`), run between steps once a block is due, after
            ``revise_after_quiet_s`` of silence (``policy.quiet_s``: a speaker who stopped gets the final text of
            what they said, not when they speak again), and at the end (its compute time delays the next step, as
            a decode's does); ``on_revision`` is called with each block's revision.

    Returns:
        The commits with their times. Ctrl-C (KeyboardInterrupt) ends the stream and ``interrupted`` is True:
        the audio that had arrived is decoded once more and all of it committed (:meth:`StreamingPolicy.close`;
        a second Ctrl-C skips that decode, commits the tentative tail as it is and skips the second pass's last
        blocks, which keep their live words; a Ctrl-C during those blocks does the same). A source that stops
        delivering audio (``AudioDeviceError``) ends the stream the same way, with its message in ``error``. A commit
        or revision is shown whole and once, wherever Ctrl-C lands (:func:`interrupts_deferred`). The falling-behind
        check leaves out the decode after the stream ended (its lag is the interrupt's, not the machine's).
    """
    commits: list[Commit] = []
    revisions: list[tuple[Revision, float]] = []
    compute = cpu = revise_s = 0.0
    decodes = 0
    interrupted = skip_second_pass = False
    error = None
    max_lag = 0.0
    warned = False
    poll = max(1, int(round(min(poll_s, chunk_s) * SAMPLE_RATE)))
    received: list[np.ndarray] = []

    recorded = shown = 0  # words of policy.committed recorded in ``commits`` / passed to on_update

    def emit(update: Update) -> None:
        """Record and show ``update``. Every update's committed words are the ones appended to policy.committed
        since the one before, so words an earlier update could not record or show (Ctrl-C between the decode and
        here, or inside on_update) are recorded / shown with this one, and none twice."""
        nonlocal recorded, shown
        with interrupts_deferred():
            t = source.now()
            words = policy.committed
            if len(words) > recorded:
                commits.append(Commit(list(words[recorded:]), t, update.audio_end))
                recorded = len(words)
            if on_update is not None:
                on_update(replace(update, committed=list(words[shown:])), t)
            shown = len(words)

    def insert(block: np.ndarray) -> None:
        policy.insert_audio(block)
        if reviser is not None:
            reviser.insert_audio(block)
        if keep_audio:
            received.append(block)

    def timed(run: Callable[[], Any]) -> tuple[Any, float]:
        """``run()`` and its wall time, spent on the stream's clock (a simulated clock advances by it)."""
        nonlocal compute, cpu
        t0, c0 = time.perf_counter(), time.process_time()
        out = run()
        spent = time.perf_counter() - t0
        cpu += time.process_time() - c0
        source.spend(spent)
        compute += spent
        return out, spent

    def second_pass(final: bool = False) -> None:
        nonlocal revise_s
        if reviser is None:
            policy.closes.clear()  # nobody reads them
            return
        reviser.add_closes(policy.closes)
        final = final or policy.quiet_s >= revise_after_quiet_s  # nobody speaking: no later utterance joins the block
        if not (final or reviser.due()):
            return
        _, spent = timed(lambda: reviser.run(policy.committed, final, cut_short=policy.cut_short))
        revise_s += spent
        publish()

    def publish() -> None:
        """Record and show the revisions the reviser has made (taken inside the deferred block: none is lost)."""
        with interrupts_deferred():
            t = source.now()
            for revision in reviser.take():
                revisions.append((revision, t))
                if on_revision is not None:
                    on_revision(revision, t)

    def step(run: Callable[[], Update], live: bool = True) -> Update:
        """Run a step; a live one (not the decode after the stream ended) is checked for falling behind."""
        nonlocal decodes, max_lag, warned
        update, _ = timed(run)
        decodes += update.decoded
        if not live:
            return update
        lag = source.now() - policy.audio_end  # audio that arrived while this step ran, not decoded yet
        max_lag = max(max_lag, lag)
        # not for the first decode alone: it warms the engine up (2.6 s on a 0.3 s file), a lag the next steps make up
        if lag > behind_warning_s(chunk_s) and not warned and decodes > update.decoded:
            warned = True
            logger.warning("transcription is %.1f s behind the audio: a decode takes longer than --chunk_seconds "
                           "(%.1f s), so latency grows (no audio is skipped). Try a larger --chunk_seconds, a "
                           "smaller model, or fewer other programs on this CPU", lag, chunk_s)
        return update

    try:
        while True:  # read up to the next chunk boundary at most, so steps fall on it when compute keeps up
            block = source.read(max(1, min(poll, policy.samples_until_due(chunk_s))))
            if block is not None:
                insert(block)
                if not policy.due(chunk_s):
                    continue
            elif not policy.undecoded:  # end of the stream, everything decoded
                break
            decode = block is None or policy.samples_until_due(chunk_s) <= 0
            emit(step(lambda: policy.process(decode=decode)))
            if block is None:
                break
            second_pass()
    except (KeyboardInterrupt, AudioDeviceError) as e:
        if isinstance(e, AudioDeviceError):
            error = str(e)
            logger.error("%s: decoding the audio heard so far (Ctrl-C to skip)", e)
        else:
            interrupted = True
            logger.info("interrupted: decoding the audio heard so far (Ctrl-C again to skip)")
        try:
            if shown < len(policy.committed):  # committed by a step whose update Ctrl-C kept from being shown
                emit(Update([], [], policy.audio_end))
            insert(source.drain())
            emit(step(policy.close, live=False))  # no falling-behind warning: the stream has ended
        except KeyboardInterrupt:
            skip_second_pass = True
            if policy.undecoded_s > 0:
                logger.warning("interrupted again: %.1f s of audio after the last decode were not transcribed",
                               policy.undecoded_s)
    try:
        emit(policy.finish())
        if skip_second_pass:
            raise KeyboardInterrupt
        second_pass(final=True)
    except KeyboardInterrupt:
        if reviser is not None:
            logger.warning("interrupted: the second pass's last blocks keep their live words")
            try:
                reviser.keep_live(policy.committed)
                publish()
            except KeyboardInterrupt:  # raised after the output was written whole
                pass
    audio = np.concatenate(received).astype(np.float32, copy=False) if received else None
    final = None if reviser is None else revised_words(policy.committed, [r for r, _ in revisions])
    return StreamResult(commits, policy.audio_end, compute, decodes, cpu, interrupted,
                        audio if keep_audio else None, max_lag_s=max_lag, revisions=revisions, revise_s=revise_s,
                        final_words=final, error=error)


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C (SIGINT) back while the block runs, then raise KeyboardInterrupt: a line is written whole and
    its state updated with it (never shown half, or twice after the interrupt handler shows it again). Only in the
    main thread with Python's default SIGINT handler; elsewhere the block runs as it is."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def stop_signals_as_ctrl_c():
    """Inside the block, SIGTERM (``kill``, a service manager stopping it) and SIGHUP (the terminal closed) do what
    Ctrl-C does: the current SIGINT handler runs, so the stream ends with its last words decoded, shown and written
    to ``--output`` and the report (before, they killed the process there and then: the last utterance, the second
    pass's last block and the report were lost), and :func:`interrupts_deferred` holds them back as it holds Ctrl-C.
    The previous handlers come back after it. Only in the main thread; SIGHUP only where the platform has it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = [name for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)  # an ignored one stays so (nohup)
             and signal.getsignal(getattr(signal, name)) is not signal.SIG_IGN]
    before = {name: signal.getsignal(getattr(signal, name)) for name in names}

    def as_ctrl_c(signum: int, frame: Any) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:  # SIGINT ignored (started in the background) or default: still end the stream as Ctrl-C would
            raise KeyboardInterrupt

    for name in names:
        signal.signal(getattr(signal, name), as_ctrl_c)
    try:
        yield
    finally:
        for name, handler in before.items():
            signal.signal(getattr(signal, name), handler)


def behind_warning_s(chunk_s: float) -> float:
    """Lag (s between the newest audio and the transcript) past which a stream is said to fall behind: a
    machine that keeps up stays within one chunk plus one decode."""
    return max(2.0, 2.5 * chunk_s)


# ---------------------------------------------------------------------------------------------------
# adapters to the inference engine and silero-vad
# ---------------------------------------------------------------------------------------------------
MIN_LOOP_CHARS = 10  # the shortest run collapse_repeats cuts
MAX_LOOP_UNIT = 20  # characters in a loop's unit at most
_NUMBER_UNIT = re.compile(r"[\d\s]*|[,.]?\d{3}[,.]?")  # a number's digits, or one thousands group ("1,000,000")


def collapse_repeats(text: str) -> str:
    """Cut a decoder repetition loop that ends a decode's text: a unit of up to 20 characters repeated 5+ times in a
    row up to the end (a last unit cut short, then spaces and punctuation, allowed; case ignored: "No no no …"), in a
    run of at least ``MIN_LOOP_CHARS``, is kept once. Streaming decodes at one temperature (no fallback, for speed),
    so a loop ("做做做做…" to the token budget) would otherwise be compared, agreed on and committed.

    Speech that repeats is left as it is (it was cut before: real speech's "words, words, words, words" became
    "words", a code "8888" "8", "10000 dollars" "10 dollars", "哈哈哈哈，太好了" "哈，太好了"): a run followed by
    more text (the decoder went on, so it did not loop), a short run at the end ("哈哈哈哈哈哈"), and a number (a unit
    of digits, or a thousands group). The period search is :func:`utils.repeats.tail_loop`, on characters (a regular
    expression for this backtracked for 13 s on 440 "!" and a word).
    """
    body = text.rstrip()
    while body and not (body[-1].isalnum() or body[-1] == "_") and not body[-1].isspace():
        body = body[:-1].rstrip()  # the run may end in punctuation and spaces
    best = tail_loop(body.lower(), MAX_LOOP_UNIT, LOOP_REPEATS)  # the decoder's own rule, on characters
    if best is None or len(body) - best[0] < MIN_LOOP_CHARS:  # the earliest start: the longest run
        return text
    start, unit = best
    kept = body[start: start + unit]
    if _NUMBER_UNIT.fullmatch(kept):
        return text
    out = (body[:start] + kept).rstrip()
    logger.debug("repetition loop collapsed: %r → %r", text, out)
    return out


# a language detected at this probability is kept for the rest of a stream (below it, each decode detects it
# again): a stream that began with 25 s of singing over music kept Polish (p=0.62) and wrote its English speech as
# Polish; the same speech alone is English at 0.99
SURE_LANGUAGE_P = 0.8


class EngineHypothesis:
    """A HypothesisFn from a ``utils.transcribe`` Transcriber and its DecodeOptions.

    Segment timestamps are requested (word times are interpolated inside them, or, with
    ``options.word_timestamps``, taken from the aligned words); repetition loops are collapsed
    (:func:`collapse_repeats`; a collapsed segment's times are interpolated). With ``options.language`` None (an
    original Whisper model: detected) the language of the first decode of at least ``detect_after_s`` seconds that is
    sure of it (``SURE_LANGUAGE_P``; before it, each decode detects it) is kept for the rest of the stream
    (``self.options.language``), so it cannot flip; ``"auto"`` detects it in every
    decode (a stream in two languages: the second one was read in the first, i.e. translated), and a change is
    logged.
    :meth:`closing` decodes in a beam of ``close_beam_size`` (the policy's ``close_fn``; None = the options' beam).
    """

    def __init__(self, engine: Any, options: Any, *, detect_after_s: float = 1.0,
                 close_beam_size: int | None = None) -> None:
        if close_beam_size is not None and close_beam_size < 1:
            raise ValueError(f"close_beam_size must be >= 1, got {close_beam_size}")
        self.engine = engine
        self.options = replace(options, timestamps=True, read_on=False)  # a live step: the next one reads on
        self.detect_after_s = detect_after_s
        self.close_beam_size = close_beam_size
        self.detected: str | None = None  # with --language=auto: the language the last decode found

    def __call__(self, audio: np.ndarray, prompt: str) -> list[tuple]:
        return self._decode(audio, prompt, self.options)

    def closing(self, audio: np.ndarray, prompt: str) -> list[tuple]:
        """The decode that closes an utterance: as :meth:`__call__`, in a beam of ``close_beam_size``."""
        beam = self.close_beam_size or self.options.beam_size
        return self._decode(audio, prompt, replace(self.options, beam_size=beam, read_on=True))

    def revising(self, audio: np.ndarray, prompt: str) -> list[tuple]:
        """The second pass's decode (:class:`Reviser`): as :meth:`closing`, in a 30 s encoder window, and checked as
        offline transcription checks a clip (``cut_clip``): a block holding one sentence said several times can
        lose count (a take read twice or left out), and is then read again take by take."""
        beam = self.close_beam_size or self.options.beam_size
        return self._decode(audio, prompt, replace(self.options, beam_size=beam, encoder_window_s=None,
                                                   read_on=True), cut_clip=True)

    def _decode(self, audio: np.ndarray, prompt: str, options: Any, cut_clip: bool = False) -> list[tuple]:
        result = self.engine.transcribe(audio, options, initial_prompt=prompt or None, cut_clip=cut_clip)
        if not result.language or len(audio) < self.detect_after_s * SAMPLE_RATE:
            pass
        elif self.options.language is None and getattr(self.engine, "model_language", None):  # the model's own
            self.options = replace(self.options, language=result.language)
            logger.info("language: %s, the one the model was fine-tuned on (--language=auto detects it in every "
                        "decode)", result.language)
        elif self.options.language is None and result.language_probability >= SURE_LANGUAGE_P:
            self.options = replace(self.options, language=result.language)
            logger.info("language: %s (p=%.2f), kept for the rest of the stream (--language=auto: detected in every "
                        "decode)", result.language, result.language_probability)
        elif self.options.language is None and result.language != self.detected:
            self.detected = result.language
            logger.info("language: %s (p=%.2f), not sure: detected again in the next decodes", result.language,
                        result.language_probability)
        elif self.options.language == AUTO_LANGUAGE and result.language != self.detected:
            self.detected = result.language
            logger.info("language: %s (p=%.2f)", result.language, result.language_probability)
        out: list[tuple] = []
        for seg in result.segments:
            text = collapse_repeats(seg.text)
            out.append((seg.start, seg.end, text, list(seg.words)) if seg.words and text == seg.text
                       else (seg.start, seg.end, text))
        return out


def silero_vad_fn() -> VadFn:
    """Speech probability of consecutive VAD_FRAME-sample frames, by a fresh stateful silero-vad model."""
    from utils.vad import SileroVad

    return SileroVad()
