"""How a decode's text repeats: decoder loops, a sentence said several times, text its audio does not hold, speech
its text left unread, and the parts of a chunk to read again.

Pure functions of token ids, token times (seconds from a chunk's start) and VAD chunks; the inference engine
(:mod:`utils.transcribe`) decides with them what to decode again. Whisper loses count on a sentence said several
times in one 30 s window (drops a take, makes one up, or loops to the token budget), and in noise it loops on a unit
of a few tokens; real speech repeats too (a teacher, a chant, read-back), so a repetition alone is not a failure.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from utils.audio import SAMPLE_RATE, quietest_point
from utils.vad import Chunk, cut_every, part


def compression_ratio(text: str) -> float:
    """UTF-8 length / zlib-compressed length; high (> 2.4) for repetition loops."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


LOOP_REPEATS = 5  # a unit of tokens repeated this often in a row (and a high compression ratio) is a decoder loop
# A chunk's text that holds the same run of this many tokens twice (~8-12 Mandarin characters, ~10 English words)
# repeats itself: said twice, or a loop. Rare in 30 s of speech that does not repeat.
REPEAT_SPAN_TOKENS = 12


# A unit of at most this many tokens repeated LOOP_REPEATS times at the end of a decode is the decoder's loop, not a
# sentence said again: a take is longer (units of 13-15 tokens, see SEAM_SLACK), and a word said again and again
# ("哈哈哈哈哈") is followed by more speech. In noise whisper-base loops on such units ("…opened at 9.10.10.10…" to the
# token budget, English at 5 dB SNR; "相互相互…" in dense Mandarin at 10 dB): :func:`tail_loop`.
SHORT_LOOP_TOKENS = 4
# ... and a unit of up to this many tokens where the loop ran to the token budget: no take repeated in speech fills
# it (whisper-base on 18 s of pink noise, greedy: "在那里, 要不然, 要不然, …" 45 times, a unit of 5 tokens, to the budget)
BUDGET_LOOP_TOKENS = 12


def tail_loop(tokens: Sequence[int], max_unit: int = SHORT_LOOP_TOKENS,
              repeats: int = LOOP_REPEATS) -> tuple[int, int] | None:
    """(where it starts, how long its unit is) of the loop that ``tokens`` end in: a unit of at most ``max_unit``
    tokens repeated at least ``repeats`` times in a row up to the end (a last unit may be cut short); the earliest
    start, then the shortest unit. None when the tokens do not end so."""
    best = None
    n = len(tokens)
    for unit in range(1, max_unit + 1):
        start = n - unit
        while start > 0 and tokens[start - 1] == tokens[start - 1 + unit]:
            start -= 1
        if start >= 0 and (n - start) // unit >= repeats and (best is None or start < best[0]):
            best = (start, unit)
    return best


def loop_ngram(unit: int) -> int:
    """``no_repeat_ngram_size`` that lets a decode past a loop of ``unit`` tokens say the unit 2-3 times more, not
    ``LOOP_REPEATS``: two units and a token may not occur twice. Longer than most n-grams that real text repeats
    within 30 s (the whole continuation is held to it)."""
    return 2 * unit + 1


def repeat_unit(tokens: Sequence[int], span: int = REPEAT_SPAN_TOKENS) -> tuple[int, int] | None:
    """(where it first starts, how long it is) of the unit that the text repeats, in tokens: the first run of
    ``span`` tokens that occurs again (not overlapping itself), to its next occurrence; None when no run repeats.
    The length is the shortest period of the tokens from the unit's start to the end of the run's next occurrence:
    a unit shorter than ``span`` is found two or more takes long, as the run must not overlap itself (espeak's "The
    quick brown fox jumps over the lazy dog.", 10 tokens, was found 20 long: a chunk of 5 takes cut into pieces of 2,
    each read once)."""
    first: dict[tuple[int, ...], int] = {}
    for i in range(len(tokens) - span + 1):
        start = first.setdefault(tuple(tokens[i: i + span]), i)
        if i - start >= span:
            stretch = tokens[start: i + span]
            period = next(d for d in range(1, i - start + 1)
                          if all(stretch[j] == stretch[j + d] for j in range(len(stretch) - d)))
            return start, period
    return None


# A take dropped from a repeating text lies this close to a seam between takes, as a share of the unit: the alignment
# put it 0-5 tokens from one (units of 13-15 tokens: real Mandarin said 3 and 8 times, the teacher-style set, espeak
# English 8 times; both backends). A sentence dropped between two others lies a sentence away from the takes.
SEAM_SLACK = 0.4


def take_seams(tokens: Sequence[int], unit: tuple[int, int]) -> list[int]:
    """Where one take of the repeated ``unit`` (:func:`repeat_unit`) ends and the next begins in ``tokens``, as
    token indices, with the text's start and end: counted back a unit at a time from where the repetition stops (a
    take ends there; where it starts shows less well, as the end of the sentence before, "。", repeats too) to where
    it starts (half a unit of slack: takes read a little differently repeat from a later token on)."""
    first, period = unit
    end = first + period
    while end < len(tokens) and tokens[end] == tokens[end - period]:
        end += 1
    return sorted({0, len(tokens), *range(end, max(first - period // 2, 0) - 1, -period)})


def repeat_period(tokens: Sequence[int], span: int = REPEAT_SPAN_TOKENS) -> int | None:
    """How long the unit that the text repeats is, in tokens (:func:`repeat_unit`); None when no run repeats."""
    unit = repeat_unit(tokens, span)
    return None if unit is None else unit[1]


# Text tokens per second of speech (VAD regions) of a right reading: 2.8-4.9 (real speech in dataset/real/: JFK's slow
# oratory 2.8, AISHELL-1 4.4-4.9; the demo and general sets 2.8-4.6). A slower text is checked against its speech.
SLOWEST_TOKENS_PER_SPEECH_S = 2.8
# The alignment of a right reading leaves no stretch of speech this long without a token starting or ending in it:
# at most 0.6 s on the real clips of dataset/real/ (AISHELL-1, JFK, LibriVox) and on espeak, whisper-base and the demo
# model; a take left out leaves all of it (3.5 s for an AISHELL-1 sentence).
MAX_UNREAD_SPEECH_S = 1.5


def take_seconds(period: int, text_tokens: int, duration_s: float) -> float:
    """How long one take of a repeated unit of ``period`` tokens lasts in a chunk of ``duration_s`` seconds whose
    text has ``text_tokens`` tokens: the unit's share of the chunk, or, when shorter, the unit said at the slowest
    rate of right readings (the share overestimates a take when the text dropped some: a chunk with a sentence
    said 3 times and another 2 times, read as the first once and the second twice)."""
    return min(duration_s * period / text_tokens, period / SLOWEST_TOKENS_PER_SPEECH_S)


def loop_take_seconds(period: int) -> float:
    """How long one take of a repeated unit of ``period`` tokens can last where the text's tokens tell nothing of it
    (a loop, or a reading that made takes up: their tokens take no time): the unit, at least ``REPEAT_SPAN_TOKENS``
    long, said at the slowest rate of right readings."""
    return max(period, REPEAT_SPAN_TOKENS) / SLOWEST_TOKENS_PER_SPEECH_S


def take_sizes(period: int, text_tokens: int, duration_s: float, *, loop: bool = False,
               made_up: bool = False) -> list[float]:
    """Take lengths (s) to cut a chunk of ``duration_s`` seconds whose text (``text_tokens`` tokens) repeats a unit of
    ``period`` tokens at, in order of preference: the unit's share of the chunk (:func:`take_seconds`). A loop's or a
    made-up take's tokens tell nothing of how long a take is (piled on no time, the share is too short: espeak words
    0.25 s apart, a 14 s sentence said once and begun again, read 7.5 times: 2.4 s pieces of a few words each, read
    out of context): the unit at the slowest right rate (:func:`loop_take_seconds`); for a reading that made takes
    up, then the share (a chunk shorter than a take at that rate: fast takes, one made up)."""
    if loop:
        return [loop_take_seconds(period)]
    share = take_seconds(period, text_tokens, duration_s)
    return [loop_take_seconds(period), share] if made_up else [share]


# Text the audio does not hold: a take of a repeated sentence that the decoder made up aligns (DTW) to almost no
# time, its tokens piled on one frame. Right readings never start OVERREAD_TOKENS consecutive tokens inside OVERREAD_S:
# the fastest 8 took >= 0.62 s (fast spontaneous English, 13 tokens/s) on dataset/real/, the demo test set and the
# general set, whisper-base and the demo model, with and without timestamp tokens (Mandarin at 8 characters/s with
# some characters 2-3 tokens long still needs > 0.3 s); a made-up take of 14 tokens started all of them on one frame.
OVERREAD_TOKENS = 8
OVERREAD_S = 0.25


def overread(token_starts: np.ndarray) -> bool:
    """Whether a text holds more than its audio: ``OVERREAD_TOKENS`` consecutive tokens start within ``OVERREAD_S``
    (``token_starts`` as for :func:`unread_speech`: each token's start, then the last one's end)."""
    starts = token_starts[:-1]
    n = OVERREAD_TOKENS - 1
    return len(starts) > n and bool((starts[n:] - starts[:-n]).min() < OVERREAD_S)


@dataclass(frozen=True)
class Reading:
    """Where a chunk's text lies in its audio (:meth:`utils.transcribe._BaseTranscriber._check_readings`): ``starts`` =
    each text token's start, then the last one's end (seconds from the chunk's start,
    :func:`utils.alignment.token_times`); ``spans`` = (start, end) seconds of the chunk's speech."""

    starts: np.ndarray
    spans: list[tuple[float, float]]


def unread_stretches(token_starts: np.ndarray, spans: Sequence[tuple[float, float]],
                     min_s: float = MAX_UNREAD_SPEECH_S) -> list[tuple[float, float]]:
    """The stretches of speech, (start, end) seconds, at least ``min_s`` long, inside which no text token starts
    (arguments as for :func:`unread_speech`): where a take the text left out was said."""
    out = []
    for start, end in spans:
        inside = token_starts[(token_starts > start) & (token_starts < end)]
        edges = np.concatenate([[start], np.sort(inside), [end]])
        out += [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:]) if b - a >= min_s]
    return out


@dataclass(frozen=True)
class RereadPart:
    """A part of a chunk decoded again (:func:`reread_parts`): ``region`` (positions like the chunk's), the
    ``pieces`` of about one take it is decoded in, ``at``: before which of the chunk's text tokens the part's text
    goes in (None = the part is the whole chunk, read anew), and ``at_s``: where that token starts (seconds from the
    chunk's start; the chunk's words are split there)."""

    region: Chunk
    pieces: list[Chunk]
    at: int | None = None
    at_s: float = 0.0


def reread_parts(chunk: Chunk, take_s: float, reading: Reading | None = None,
                 seams: Sequence[int] | None = None, slack: int = 0) -> list[RereadPart]:
    """The parts of ``chunk`` to decode again, each cut into pieces of about one take (``take_s`` seconds,
    :func:`utils.vad.cut_every`).

    With the ``reading`` of a text that repeats and its ``seams`` (:func:`take_seams`), only the takes it dropped:
    each stretch of speech it left unread (:func:`unread_stretches`), widened to the pauses the VAD kept apart
    around it (:func:`_pause_breaks`; to the nearest breaks where that is more than a take or the whole chunk),
    stretches between the same breaks making one part. A take's comma pause can split it into two regions that touch
    (espeak's "Repeat after me, | the quick brown fox …"): the takes read around a dropped one were aligned over its
    first words, the stretch left unread was the rest, and that part read alone lost "Repeat after me". The part's
    text goes in at the seam nearest the tokens around the stretch (``RereadPart.at``), not where the alignment puts it:
    the alignment spreads the takes read around a dropped one into its speech (whisper-base on an English sentence
    said 8 times: the next take's first word aligned to the end of the take before; a real teacher's sentence said 3
    times, read twice: the end of the second take aligned to the end of the third). The takes read stay as they
    were. That holds only where each part is about one take (one piece; two takes dropped apart, as whisper-base
    with beam 3 on a real Mandarin sentence said 8 times, make two parts) and lies within ``slack`` tokens of a
    seam. Else the whole chunk is cut into takes, as without a reading (a loop, or a take made up, tells nothing of
    where the text went wrong): more than a take left unread between two breaks may be the takes read spread over
    more than the one dropped (a real Mandarin sentence said three times, read twice by the transformers backend:
    unread 2.1 s, in two takes' speech), and a stretch far from any seam is a sentence dropped between two others,
    not a take. [] where that would decode the chunk again as it was: all of it, with no break to cut it at."""
    if reading is not None and seams:
        regions: list[tuple[int, int, int]] = []
        pauses = _pause_breaks(chunk)
        for a, b in unread_stretches(reading.starts, reading.spans):
            lo, hi = chunk.start + a * SAMPLE_RATE, chunk.start + b * SAMPLE_RATE
            start, end = _widened(chunk, pauses, lo, hi)
            if (start, end) == (chunk.start, chunk.end) or len(cut_every(part(chunk, start, end), take_s)) > 1:
                start, end = _widened(chunk, chunk.breaks, lo, hi)  # no pause around it, or more than a take
            after = int(np.count_nonzero(reading.starts[:-1] < (a + b) / 2))  # tokens before the stretch
            at = min(seams, key=lambda seam: (abs(seam - after), seam))
            if abs(at - after) > slack:
                regions = []
                break
            if regions and start <= regions[-1][1]:  # the same part: its text goes where the first one's went
                start, _, at = regions.pop()
            regions.append((start, end, at))
        parts = []
        for start, end, at in regions:
            region = part(chunk, start, end)
            parts.append(RereadPart(region, [region], at, float(reading.starts[at])))
        if parts and all(len(cut_every(p.region, take_s)) == 1 and p.region != chunk for p in parts):
            return parts
    pieces = cut_every(chunk, take_s)
    return [RereadPart(chunk, pieces)] if len(pieces) > 1 else []


def cut_in_two(chunk: Chunk, wave: np.ndarray) -> list[RereadPart]:
    """``chunk`` (its samples: ``wave``) cut in two, as one part read anew (:class:`RereadPart`, ``at`` None): at the
    break nearest its middle, or, with no pause the VAD kept apart (speech without a 0.16 s silence, or under noise
    that hides the pauses), at the quietest 50 ms of its middle third (:func:`utils.audio.quietest_point`), mostly
    between two syllables."""
    if not chunk.breaks:
        return cut_at_quiet_points(chunk, wave, len(wave) / 2 / SAMPLE_RATE)
    middle = (chunk.start + chunk.end) / 2
    cut = min(chunk.breaks, key=lambda b: (abs(b - middle), b))
    return [RereadPart(chunk, [part(chunk, chunk.start, cut), part(chunk, cut, chunk.end)])]


def cut_at_quiet_points(chunk: Chunk, wave: np.ndarray, piece_s: float) -> list[RereadPart]:
    """``chunk`` (its samples: ``wave``), with no pause to cut it at, cut into pieces of about ``piece_s`` seconds
    (at least 2), each cut at the quietest 50 ms within a third of a piece of where it falls (mostly between two
    syllables or in the short gap between sentences; two pieces: the middle third), as one part read anew (``at``
    None)."""
    n = max(2, round(len(wave) / (piece_s * SAMPLE_RATE)))
    length, cuts, start = len(wave) / n, [], 0
    for k in range(1, n):
        target = round(k * length)
        lo, hi = max(start + 1, round(target - length / 3)), min(len(wave) - 1, round(target + length / 3))
        if hi <= lo:
            continue
        start = quietest_point(wave, lo, hi)
        cuts.append(chunk.start + start)
    bounds = [chunk.start, *cuts, chunk.end]
    return [RereadPart(chunk, [part(chunk, a, b) for a, b in zip(bounds, bounds[1:]) if b > a])]


def _pause_breaks(chunk: Chunk) -> tuple[int, ...]:
    """The breaks of ``chunk`` that lie in a pause the VAD kept apart, not between two speech regions whose padding
    touches (mostly a short pause inside a sentence: "Repeat after me, | the quick brown fox …")."""
    touching = {b for (_, end), (start, _) in zip(chunk.spans, chunk.spans[1:]) if start <= end
                for b in chunk.breaks if start <= b <= end}
    return tuple(b for b in chunk.breaks if b not in touching)


def _widened(chunk: Chunk, breaks: Sequence[int], start: float, end: float) -> tuple[int, int]:
    """Samples ``start``-``end`` of ``chunk`` widened to the nearest of ``breaks`` around them (or its ends)."""
    return (max((x for x in breaks if x <= start), default=chunk.start),
            min((x for x in breaks if x >= end), default=chunk.end))


def unread_speech(token_starts: np.ndarray, spans: Sequence[tuple[float, float]]) -> float:
    """The longest stretch of speech, in seconds, inside which no text token starts: ``token_starts`` = where each
    token starts and where the last one ends (:func:`utils.alignment.token_times`), ``spans`` = (start, end) seconds
    of speech. A take the text left out is speech with no token in it."""
    return max((b - a for a, b in unread_stretches(token_starts, spans, 0.0)), default=0.0)


def longest_repeat(tokens: Sequence[int], max_unit: int = 32) -> int:
    """How many times in a row the most repeated unit of up to ``max_unit`` tokens occurs in ``tokens``."""
    best = 1
    n = len(tokens)
    for unit in range(1, min(max_unit, n // 2) + 1):
        run = 0
        for i in range(unit, n):  # positions equal to the one a unit earlier extend a repetition
            run = run + 1 if tokens[i] == tokens[i - unit] else 0
            best = max(best, 1 + (run // unit))
    return best


def is_decoder_loop(tokens: Sequence[int], text: str, hit_limit: bool, compression_threshold: float | None) -> bool:
    """Whether a decode is a degenerate repetition loop, not speech that repeats itself.

    Real speech repeats (a teacher says a sentence three times, a chant, read-back): that text compresses well
    too, but it ends. A loop is compressible text that runs to the token limit, or one unit repeated
    ``LOOP_REPEATS`` or more times in a row.
    """
    if compression_threshold is None or compression_ratio(text) <= compression_threshold:
        return False
    return hit_limit or longest_repeat(tokens) >= LOOP_REPEATS
