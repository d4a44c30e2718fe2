"""Text normalisation for scoring, and character / word error rates.

Scoring compares ``scoring_text(reference)`` with ``scoring_text(hypothesis)``: punctuation
(ASCII and full-width, e.g. “”《》（）…、；：！？) and spaces removed, traditional Chinese converted
to simplified, Latin letters lower-cased; for English also Whisper's English normaliser (the one OpenAI's
and the Open ASR Leaderboard's English WERs use): numbers as digits ("ten" and "10" are the same word),
fillers (um, uh) and bracketed noises dropped, contractions and titles spelled out. CER counts characters
(spaces ignored); WER counts whitespace-separated words; MER (code-switching) each Chinese/Japanese character and
each other word. All are corpus-level: total edits / total reference units.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import zhconv
from rapidfuzz.distance import Levenshtein

from utils.languages import HAN_KANA_RANGES, HAN_RANGES, joins_unspaced, language_code
from utils.zh_numbers import spell_numbers

HOTWORD_SEPARATORS = re.compile(r"[,，、;；]")  # how users separate hotwords ("词1,词2", "A, B", "词1、词2")

METRICS = ("cer", "wer", "mer")  # characters, words, mixed (a Chinese/Japanese character or another word)


def to_simplified(text: str) -> str:
    """Convert traditional Chinese characters to simplified (other text unchanged)."""
    return zhconv.convert(text, "zh-cn")


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # 1,000 and 10,000,000: the comma goes, the number stays one
_IN_NUMBER = re.compile(r"(?<=\d)[.:](?=\d)")  # 3.14, 5:30: a decimal point or a clock's colon is part of the number


# what output without punctuation keeps (infer.py --remove_pun): an apostrophe inside a word (don't), a minus before
# a number (-5), and the units and signs that belong to a number (%, ℃, °)
_IN_WORD = re.compile(r"(?<=\w)['’](?=\w)|(?<![0-9A-Za-z.])-(?=\d)|[%‰℃℉°]")


def remove_punctuation(text: str, keep_word_marks: bool = False) -> str:
    """Replace every punctuation character (Unicode category P*, ASCII and full-width) and other symbol (So: emoji,
    ©; a reference's "😀" counted as an error) by a space, except inside numbers: a thousands separator is dropped
    ("1,000" and "1000" are one word) and a decimal point or a clock's colon between digits kept ("3.14" vs "314" and
    "5:30" vs "530" were no error, "1,000" vs "1000" two word errors). ``keep_word_marks``: also keep an apostrophe
    inside a word, a minus before a number and %, ℃, ° (output text: "I don't", "-5℃", "12.5%"; they became
    "I don t", "5", "12 5")."""
    text = _THOUSANDS.sub("", text)
    keep = {m.start() for m in _IN_NUMBER.finditer(text)}
    if keep_word_marks:
        keep |= {m.start() for m in _IN_WORD.finditer(text)}
    return "".join(" " if i not in keep and ((cat := unicodedata.category(ch)).startswith("P") or cat == "So")
                   else ch for i, ch in enumerate(text))


# characters no one hears, dropped before scoring: format characters (Unicode Cf: a BOM, a zero-width space, counted as
# an error between two characters) and what only changes how an emoji or a digit is drawn: variation selectors
# ("❤️" kept U+FE0F, an error), skin tones ("👍🏻"), the keycap ("1️⃣" is "1", and "第1️⃣名" vs "第一名" was 2 errors)
_UNHEARD = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef\U0001f3fb-\U0001f3ff\u20e3]")
# what a text a model is taught goes without (:func:`clean_text`): the format characters (Unicode Cf, as of Unicode 15)
# but the zero-width non-joiner and joiner, which spell words (Persian, Hindi) ...
_HIDDEN_FORMAT = ("\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b\u200e-\u200f\u202a-\u202e"
                  "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f"
                  "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f")
# ... and the white space other than ASCII's, made a plain space (U+3000, a no-break space)
_WIDE_SPACE = "\u0085\u00a0\u1680\u2000-\u200a\u2028-\u2029\u202f\u205f\u3000"
_HIDDEN = re.compile(f"[{_HIDDEN_FORMAT}{_WIDE_SPACE}]")
_HIDDEN_FORMAT_RUN = re.compile(f"[{_HIDDEN_FORMAT}]+")


def unheard_dropped(text: str) -> str:
    """``text`` without the characters that are not said (``_UNHEARD``, Unicode Cf)."""
    return "".join(ch for ch in _UNHEARD.sub("", text) if unicodedata.category(ch) != "Cf")


def clean_text(text: str, lead: bool = False) -> str:
    """A data line's text as a model is taught it: NFC, without invisible format characters (Unicode Cf: a BOM, a
    zero-width space, a soft hyphen, direction marks; the zero-width (non-)joiners that spell Persian and Hindi words
    stay), every run of white space (U+3000, a no-break space, a tab) one ASCII space, none at the end nor, unless
    ``lead`` and the text begins with white space, at the start (a timed segment's " world." is Whisper's own token
    " world"). Whisper was taught "\ufeff请把门关上。" and "我们\u3000去" as they stood in a manifest."""
    if not _HIDDEN.search(text) and unicodedata.is_normalized("NFC", text) and " ".join(text.split()) == text:
        return text
    text = _HIDDEN_FORMAT_RUN.sub("", unicodedata.normalize("NFC", text))
    body = " ".join(text.split())
    return (" " if lead and body and text[:1].isspace() else "") + body


def has_hidden_characters(text: str) -> bool:
    """Whether ``text`` holds what :func:`clean_text` drops or makes a plain space: invisible format characters, white
    space other than ASCII's (U+3000, a no-break space)."""
    return _HIDDEN.search(text) is not None


def normalize_text(text: str, *, to_simple: bool = True, remove_pun: bool = True, lowercase: bool = True) -> str:
    """Normalise a transcript for scoring.

    NFKC folds full-width Latin letters and digits to ASCII; characters that are not said go (:func:`unheard_dropped`:
    format characters, variation selectors, skin tones); punctuation becomes spaces; runs of white space collapse to
    one space (kept, so WER can still split words).
    """
    text = unheard_dropped(unicodedata.normalize("NFKC", text))
    if to_simple:
        text = to_simplified(text)
    if remove_pun:
        text = remove_punctuation(text)
    if lowercase:
        text = text.lower()
    return " ".join(text.split())


@functools.lru_cache(maxsize=1)
def _english_normalizer() -> Callable[[str], str]:
    # transformers' copy of openai/whisper's EnglishTextNormalizer, without the British → American spelling table
    # (that one ships with OpenAI's checkpoints, not with transformers): imported only when English is scored
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


def _code(language: str | None) -> str | None:
    """A manifest/flag language (``English``, ``en``, ``<|en|>``, ``en-US``, ``zh_CN``) as Whisper's code; None
    when unknown."""
    if language is None:
        return None
    try:  # a regional tag ("en-US", "en_GB") counts as its language
        return language_code(language.strip().split("-")[0].split("_")[0])
    except ValueError:
        return None


def is_english(language: str | None) -> bool:
    """Whether a manifest/flag language (``English``, ``en``, ``<|en|>``, ``en-US``; None = unknown) is English."""
    return _code(language) == "en"


def reads_chinese_numbers(language: str | None) -> bool:
    """Whether numbers are scored as Mandarin/Cantonese reads them (``Chinese``, ``zh``, ``yue``…)."""
    return _code(language) in ("zh", "yue")


_HAN = re.compile(f"[{HAN_RANGES}]")
_KANA_HANGUL = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uac00-\ud7af]")


def scoring_language(reference: str, language: str | None) -> str | None:
    """The language a pair is scored in: ``language``, or where it is unknown (None) Chinese for a reference
    written in Chinese characters without kana or Hangul (an AISHELL line without a language: its "二十五度"
    and a hypothesis' "25度" are one text) — taken from the reference, so both texts are read alike."""
    if language is None and _HAN.search(reference) and not _KANA_HANGUL.search(reference):
        return "zh"
    return language


def scoring_text(text: str, language: str | None = None, metric: str = "cer") -> str:
    """The text that is scored: :func:`normalize_text`, after Whisper's English normaliser when ``language``
    is English ("Eight of spades, Mr. Smith" → "8 of spades mister smith"). Other languages, and text of
    unknown language, get :func:`normalize_text` only (the English rules would drop German "um"); with ``metric``
    mer (code-switching) their stretches of English words get the English rules too ("延迟是 two hundred ms" →
    "延迟是 200 ms"). In Chinese (see :func:`scoring_language` for a pair of unknown language) numbers are spelled
    as they are read: "25度" → "二十五度", "2019年" → "二零一九年" (:func:`utils.zh_numbers.spell_numbers`).
    """
    if is_english(language):
        text = _english(text)
    elif metric == "mer":
        text = _NOT_CJK_RUN.sub(lambda m: f" {_english(m.group())} " if _LATIN.search(m.group()) else m.group(), text)
    if reads_chinese_numbers(language):  # a zero-width space inside "2\u200b5" made it "二五"
        text = spell_numbers(to_simplified(unheard_dropped(unicodedata.normalize("NFKC", text))))
    return normalize_text(text)


def _english(text: str) -> str:
    """Whisper's English normaliser, with a number's sign kept as the word it is said as: the normaliser writes
    "minus 5" as "-5" and drops the sign of a written "-5", and the sign then went with the punctuation ("minus 5
    degrees", "-5 degrees" and "5 degrees" were all "5 degrees"); "point five" is "0.5", as it is written."""
    return _spell_signs(_LEADING_POINT.sub("0.", _english_normalizer()(_spell_signs(_Y_KNOW.sub("you know", text)))))


def _spell_signs(text: str) -> str:
    return _SIGN.sub(lambda m: " plus " if m.group(1) == "+" else " minus ", text)


# "y'know" as said (a reference of dataset/real/ writes it; the normaliser made it "y know", one error against "you
# know"), as the normaliser makes "y'all" "you all"
_Y_KNOW = re.compile(r"\by['\u2019]know\b", re.IGNORECASE)
_LEADING_POINT = re.compile(r"(?<![\w.])\.(?=\d)")  # the normaliser's "point five": ".5", as "0.5" is written
# a sign before a number, not a hyphen inside a word ("x-5"); the normaliser writes a lone 1 as "one" ("-one") and
# "minus point five" as "-.5"
_SIGN = re.compile(r"(?<![\w.])([-+\u2212])(?=\d|\.\d|one\b)")
_NOT_CJK_RUN = re.compile(f"[^{HAN_KANA_RANGES}\u3000-\u303f\uff00-\uffef]+")  # no Han, kana, full-width marks
_LATIN = re.compile(r"[A-Za-z]")


@dataclass(frozen=True)
class ErrorCounts:
    """Edit operations between references and hypotheses, in units (characters or words)."""

    substitutions: int
    deletions: int
    insertions: int
    reference_length: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """errors / reference units; 0 if both are empty, inf if only the reference is empty."""
        if self.reference_length == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.reference_length

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.reference_length + other.reference_length,
        )


_MIXED_UNIT = re.compile(f"[{HAN_KANA_RANGES}]|[^\\s{HAN_KANA_RANGES}]+")


def units(text: str, metric: str) -> list[str]:
    """Split normalised text into scoring units: characters (no spaces) for cer, words for wer; for mer (mixed
    error rate, code-switching as WeNet scores it) each Chinese/Japanese character and each other word, spaces
    between them or not ("我们用Kubernetes" → 我, 们, 用, kubernetes)."""
    if metric == "cer":
        return [ch for ch in text if not ch.isspace()]
    if metric == "wer":
        return text.split()
    if metric == "mer":
        return _MIXED_UNIT.findall(text)
    raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")


def count_errors(reference: str, hypothesis: str, metric: str = "cer", *, normalize: bool = True,
                 language: str | None = None) -> ErrorCounts:
    """Edit counts for one utterance (Levenshtein alignment over characters or words), after
    :func:`scoring_text` of both texts in ``language`` (unless ``normalize`` is False; an unknown language is
    taken from the reference: :func:`scoring_language`)."""
    if normalize:
        language = scoring_language(reference, language)
        reference, hypothesis = scoring_text(reference, language, metric), scoring_text(hypothesis, language, metric)
    ref, hyp = units(reference, metric), units(hypothesis, metric)
    subs = dels = ins = 0
    for op in Levenshtein.editops(ref, hyp):
        if op.tag == "replace":
            subs += 1
        elif op.tag == "delete":
            dels += 1
        else:
            ins += 1
    return ErrorCounts(subs, dels, ins, len(ref))


def error_rate(references: Sequence[str], hypotheses: Sequence[str], metric: str = "cer", *,
               language: str | None = None) -> float:
    """Corpus-level CER or WER after normalisation (:func:`scoring_text` in ``language``)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    total = ErrorCounts(0, 0, 0, 0)
    for ref, hyp in zip(references, hypotheses):
        total = total + count_errors(ref, hyp, metric, language=language)
    return total.rate


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Character error rate over a corpus."""
    return error_rate(references, hypotheses, "cer")


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Word error rate over a corpus."""
    return error_rate(references, hypotheses, "wer")


REPEATS_FOR_A_LOOP = 3  # a unit sequence said this many times in a row counts as repetition


def max_consecutive_repeats(items: Sequence[str], max_unit: int = 8) -> int:
    """The most times any sequence of 1..``max_unit`` items occurs back to back (1 when nothing repeats)."""
    best = 1
    n = len(items)
    for size in range(1, min(max_unit, n // 2) + 1):
        for start in range(n - 2 * size + 1):
            count = 1
            while (start + (count + 1) * size <= n
                   and items[start + count * size: start + (count + 1) * size] == items[start: start + size]):
                count += 1
            best = max(best, count)
    return best


def has_repetition(hypothesis: str, reference: str = "", metric: str = "cer") -> bool:
    """Whether the hypothesis repeats a unit sequence at least REPEATS_FOR_A_LOOP times in a row, more often than
    the reference does (哈哈哈 in both is not a loop). Units: words for wer; else characters (네네네네, hahaha) and
    mixed units too (each Chinese/Japanese character and each other word: a long English word in Chinese text is one
    unit, which characters cannot hold in a loop unit of 8)."""
    hyp_text, ref_text = normalize_text(hypothesis), normalize_text(reference)
    for unit in (("wer",) if metric == "wer" else ("cer", "mer")):
        repeats = max_consecutive_repeats(units(hyp_text, unit))
        if repeats >= REPEATS_FOR_A_LOOP and repeats > max_consecutive_repeats(units(ref_text, unit)):
            return True
    return False


def has_punctuation(text: str) -> bool:
    """Whether ``text`` holds any punctuation character (ASCII or full-width)."""
    return any(unicodedata.category(ch).startswith("P") for ch in text)


def join_hotwords(words: Sequence[str]) -> str:
    """Hotwords as one prompt text: ", " between words of spaced scripts, "," between Chinese or Japanese ones.
    A comma without a space after Latin words is copied into the text: whisper-base, both backends, read "My
    colleague Szymanski will call you back." with --hotwords=colleague,Szymanski as "will call you back." and with
    Szymanski,Kowalski as "My colleague,Szymanski,will call you back." (with ", ": right both times)."""
    out = ""
    for word in (w.strip() for w in words):
        if word:
            out += ("," if joins_unspaced(out[-1], word[0]) else ", ") + word if out else word
    return out


def hotword_text(text: str) -> str:
    """A user's hotword list (separated by , ， 、 ; or ；) as :func:`join_hotwords` joins it."""
    return join_hotwords(HOTWORD_SEPARATORS.split(text))
