"""Word-level timestamps: align decoded text tokens to the audio with the decoder's cross-attention.

The reference Whisper method: the cross-attention weights of the model's ``alignment_heads`` over the
teacher-forced sequence ``<|startoftranscript|> <|lang|> <|task|> <|notimestamps|> text… <|endoftext|>`` are
normalised per head, median-filtered along time, averaged, and a monotonic path through (tokens × audio frames)
is found by dynamic time warping; a token starts where the path first reaches its row. Tokens are grouped into
words (by spaces, or by character for languages written without them) and punctuation joins its neighbour.
The backends only differ in who computes the path: CTranslate2's ``align()``, or our DTW over the attention
weights captured from the transformers model (:func:`alignment_path`).
"""

from __future__ import annotations

import logging
import string
from collections.abc import Sequence
import numpy as np

from utils.audio import TIME_PRECISION, frame_levels_db
from utils.data import Word

logger = logging.getLogger(__name__)

MEDIAN_FILTER_WIDTH = 7  # encoder frames (20 ms each)
NO_SPACE_LANGUAGES = ("zh", "ja", "th", "lo", "my", "yue")  # words are characters
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a window of ``width`` (odd) along the last axis, edges reflected; same shape as ``x``."""
    if width <= 1 or x.shape[-1] <= width // 2:
        return x
    pad = width // 2
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1), axis=-1)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cheapest monotonic path from (0, 0) to (N-1, M-1) through an (N tokens, M frames) cost matrix.

    Steps go down, right or diagonally (ties prefer right, as the reference implementation does). Computed one
    anti-diagonal at a time, so it is vectorised over the diagonal. Returns (token indices, frame indices).
    """
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    trace = np.zeros((n + 1, m + 1), dtype=np.int8)
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
        step = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        acc[i, j] = cost[i - 1, j - 1] + np.choose(step, [c0, c1, c2])
        trace[i, j] = step
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        else:
            j -= 1
    path = np.array(path[::-1])
    return path[:, 0], path[:, 1]


def alignment_path(weights: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Cross-attention weights (heads, tokens, encoder frames) → DTW path (token indices, frame indices).

    ``weights`` are softmax-normalised attention of the alignment heads for the rows that predict the text tokens
    and the end of text; only the first ``num_frames`` encoder frames (the audio, not the padding) are used.
    """
    w = weights[:, :, :num_frames].astype(np.float64)
    w = (w - w.mean(axis=-1, keepdims=True)) / (w.std(axis=-1, keepdims=True) + 1e-10)
    w = median_filter(w, MEDIAN_FILTER_WIDTH)
    return dtw(-w.mean(axis=0))


def word_groups(tokenizer, tokens: Sequence[int], language: str | None) -> tuple[list[str], list[list[int]]]:
    """Split text tokens into words: (word texts, token lists); by character for Chinese, Japanese, Thai…"""
    pieces, groups = character_groups(tokenizer, tokens)
    if language in NO_SPACE_LANGUAGES:
        return _join_latin_runs(pieces, groups)
    words: list[str] = []
    word_tokens: list[list[int]] = []
    for piece, group in zip(pieces, groups):  # a piece starting with a space, or punctuation, starts a word
        if not words or piece.startswith(" ") or piece.strip() in string.punctuation:
            words.append(piece)
            word_tokens.append(list(group))
        else:
            words[-1] += piece
            word_tokens[-1] += group
    return words, word_tokens


# the longest run of tokens looked at for whole characters: byte tokens can overlap characters' boundaries for
# several tokens (Korean: up to 8 in 3,000 random Hangul texts; 4 lost 375 of them), and a run that long still not
# decoding to text holds a broken sequence
_MAX_CHARACTER_TOKENS = 16


def character_groups(tokenizer, tokens: Sequence[int]) -> tuple[list[str], list[list[int]]]:
    """Text tokens in groups that each decode to whole characters: (texts, token lists). A character split over
    byte-level tokens is one group; a token whose bytes never complete a character (the decoder can emit a broken
    UTF-8 sequence) is a group of its own, decoding to U+FFFD, and the tokens after it go on in groups (faster-whisper's
    split_tokens_on_unicode put every token after such a pair into one group it never returned: the words after it
    were lost from the word timestamps)."""
    texts: list[str] = []
    groups: list[list[int]] = []
    tokens = list(tokens)
    at = 0
    while at < len(tokens):  # the shortest run from here that decodes to whole characters
        for size in range(1, min(_MAX_CHARACTER_TOKENS, len(tokens) - at) + 1):
            text = tokenizer.decode(tokens[at: at + size])
            if "\ufffd" not in text:
                break
        else:  # none: the first token's bytes start no character
            size, text = 1, tokenizer.decode(tokens[at: at + 1])
        texts.append(text)
        groups.append(tokens[at: at + size])
        at += size
    return texts, groups


def _is_latin_alnum(ch: str) -> bool:
    """A letter or digit of an alphabet written with spaces (Latin, Greek, Cyrillic…), not CJK or full-width."""
    return ch.isalnum() and ord(ch) < 0x2E80


_INNER_PUNCTUATION = ".'-"  # inside a word or number: "2.0", "don't", "COVID-19"


def _join_latin_runs(words: list[str], groups: list[list[int]]) -> tuple[list[str], list[list[int]]]:
    """Character splitting cuts a Latin word inside Chinese text into its tokens ("P", "y", "thon"): join pieces
    that continue a word (no space between them: "Python", "don't"), and ".'-" between two ("2.0", "COVID-19")."""
    out_words: list[str] = []
    out_groups: list[list[int]] = []
    i = 0
    while i < len(words):
        word, group = words[i], list(groups[i])
        while i + 1 < len(words) and word and _is_latin_alnum(word[-1]):
            nxt = words[i + 1]
            if nxt and (_is_latin_alnum(nxt[0]) or (len(nxt) > 1 and nxt[0] in _INNER_PUNCTUATION
                                                    and _is_latin_alnum(nxt[1]))):
                word, group, i = word + nxt, group + list(groups[i + 1]), i + 1
            elif (nxt and all(ch in _INNER_PUNCTUATION for ch in nxt) and i + 2 < len(words) and words[i + 2]
                  and _is_latin_alnum(words[i + 2][0])):
                word, group = word + nxt + words[i + 2], group + list(groups[i + 1]) + list(groups[i + 2])
                i += 2
            else:
                break
        out_words.append(word)
        out_groups.append(group)
        i += 1
    return out_words, out_groups


def token_times(text_indices: np.ndarray, frame_indices: np.ndarray) -> np.ndarray:
    """Seconds at which the DTW path first reaches each row: row k's start = the start of text token k (the
    last row, end of text, starts where the last token ends). Shape (rows,)."""
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    return frame_indices[jumps] * TIME_PRECISION


def words_for_tokens(tokenizer, tokens: Sequence[int], probs: Sequence[float], times: np.ndarray, *,
                     language: str | None, duration: float, offset: float = 0.0) -> list[Word]:
    """Words of some consecutive text tokens with their times.

    Args:
        tokenizer: faster-whisper ``Tokenizer`` (word splitting, decoding).
        tokens: text tokens (no special tokens).
        probs: the model's probability of each token (same length).
        times: seconds where each token starts, plus one more: where the last one ends (``len(tokens) + 1``).
        language: Whisper code (decides how words are split).
        duration: seconds of audio in the chunk (times are clamped to it).
        offset: seconds added to every time (the chunk's start in the recording).
    """
    if not len(tokens):
        return []
    words, groups = word_groups(tokenizer, list(tokens), language)
    bounds = np.pad(np.cumsum([len(g) for g in groups]), (1, 0))
    out = []
    for k, word in enumerate(words):
        first, last = int(bounds[k]), int(bounds[k + 1])
        probability = float(np.mean(probs[first:last])) if last > first else 0.0
        out.append(Word(float(times[first]), float(times[last]), word, probability))
    out = _merge_punctuation(_limit_long_words(out))
    return [Word(round(offset + min(w.start, duration), 3), round(offset + min(max(w.end, w.start), duration), 3),
                 w.word, round(w.probability, 4)) for w in out if w.word.strip()]


FRAME_S = 0.02  # energy frames for the onset refinement, seconds
TAIL_FRAMES = 5  # loud frames of the previous word a word's aligned start may still include
# ... or this many, when the pause after them is a real one (≥ LATE_PAUSE_FRAMES quiet frames, longer than a stop
# consonant's closure): int8 alignment in noise ended words up to 0.12 s early on an AVX2 CPU
LATE_TAIL_FRAMES = 10
# a word's end moves on through its sound (quiet gaps shorter than END_PAUSE_FRAMES: a stop consonant's closure) by
# at most MAX_END_FRAMES
END_PAUSE_FRAMES = 5
MAX_END_FRAMES = 40
LATE_PAUSE_FRAMES = 5


def refine_word_times(words: list[Word], audio: np.ndarray, sample_rate: int = 16000) -> list[Word]:
    """Move word starts that lie in a pause forward to where the sound starts (and the previous word's end to
    where its sound stops), and word ends that lie in sound on to where it stops (:func:`_extend_ends`).

    Cross-attention alignment puts a word's start where the previous word ended (a pause before a word is
    counted as part of it), and the end of a word before a pause often early. The threshold is relative to this
    audio (between its noise floor and its speech level, both from percentiles of the frame levels), so it follows
    the recording's noise. Only a pause at the word's beginning is cut off (not a quiet stretch inside it, such as
    a stop consonant's closure); the word keeps at least 2 frames. Times are relative to ``audio`` (one chunk).
    """
    levels = frame_levels_db(audio, FRAME_S, sample_rate)
    if len(levels) < 10 or not words:
        return words
    floor, speech = np.percentile(levels, 10), np.percentile(levels, 90)
    if speech - floor < 12.0:  # no clear pauses (constant noise or sound): leave the times alone
        return words
    loud = levels > floor + 0.3 * (speech - floor)
    out = []
    for w in words:
        first, last = int(round(w.start / FRAME_S)), min(int(round(w.end / FRAME_S)), len(loud))
        start = w.start
        # a pause right at the word's start (after at most TAIL_FRAMES loud frames: the previous word's last
        # sound), of 2+ quiet frames (LATE_PAUSE_FRAMES+ after up to LATE_TAIL_FRAMES loud ones) and ending in its
        # first three quarters: the word starts after it. A quiet stretch later in the word (a stop consonant's
        # closure) is left alone.
        k = first
        while k < min(first + LATE_TAIL_FRAMES, last) and loud[k]:
            k += 1
        pause_start = k
        while k < last and not loud[k]:
            k += 1
        needed = 2 if pause_start - first <= TAIL_FRAMES else LATE_PAUSE_FRAMES
        if k - pause_start >= needed and k < first + 0.75 * (last - first) and last - k >= 2:
            start = k * FRAME_S
            # the sound before the pause is the previous word's tail, where there is one and it follows that word
            # (not where the word started in the pause: the previous word then ran on through a 4 s silence)
            if out and pause_start > first and out[-1].end < pause_start * FRAME_S \
                    and w.start - out[-1].end < 2 * TIME_PRECISION:
                out[-1] = Word(out[-1].start, round(pause_start * FRAME_S, 3), out[-1].word, out[-1].probability)
        out.append(Word(round(start, 3), w.end, w.word, w.probability))
    return _extend_ends(out, loud)


def _extend_ends(words: list[Word], loud: np.ndarray) -> list[Word]:
    """Move word ends that lie inside sound to where the sound stops (a pause of ``END_PAUSE_FRAMES`` quiet frames),
    at most ``MAX_END_FRAMES`` later and never past the next word's start. Cross-attention puts the end of a word
    before a pause early: "meters." of a real recording ended 0.54 s before its "-ters" did, and its cue with it."""
    out = list(words)
    for i, w in enumerate(out):
        k = int(round(w.end / FRAME_S))
        if k >= len(loud) or not loud[k]:  # the word's sound stops where it is said to end
            continue
        limit = out[i + 1].start if i + 1 < len(out) else len(loud) * FRAME_S
        stop = min(int(limit / FRAME_S), len(loud), k + MAX_END_FRAMES)
        last, quiet = k, 0
        for j in range(k + 1, stop):
            if loud[j]:
                last, quiet = j, 0
            else:
                quiet += 1
                if quiet >= END_PAUSE_FRAMES:
                    break
        end = round(min((last + 1) * FRAME_S, limit), 3)
        if end > w.end:
            out[i] = Word(w.start, end, w.word, w.probability)
    return out


def _limit_long_words(words: list[Word]) -> list[Word]:
    """A word much longer than the others usually swallowed a pause: cut it to twice the median word length."""
    durations = np.array([w.end - w.start for w in words if w.end > w.start])
    if not len(durations):
        return words
    limit = max(0.7, 2 * float(np.median(durations)))
    out = []
    for i, w in enumerate(words):
        if w.end - w.start > limit:
            if i + 1 < len(words) and words[i + 1].start - w.end < TIME_PRECISION:  # a pause before the next
                w = Word(max(w.start, w.end - limit), w.end, w.word, w.probability)
            else:  # the pause is after it
                w = Word(w.start, w.start + limit, w.word, w.probability)
        out.append(w)
    return out


def _merge_punctuation(words: list[Word]) -> list[Word]:
    """Leading punctuation joins the next word, trailing punctuation the previous one (their times are kept)."""
    out: list[Word] = []
    carry = ""
    for w in words:
        text = w.word.strip()
        if text and all(ch in PREPEND_PUNCTUATIONS for ch in text) and not w.word.endswith(" "):
            carry += w.word
            continue
        if out and text and all(ch in APPEND_PUNCTUATIONS for ch in text):
            prev = out[-1]
            out[-1] = Word(prev.start, prev.end, prev.word + w.word.strip(), prev.probability)
            continue
        out.append(Word(w.start, w.end, carry + w.word if carry else w.word, w.probability))
        carry = ""
    return out
