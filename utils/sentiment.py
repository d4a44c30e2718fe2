"""Sentiment of transcripts: positive / negative / neutral, with a positivity score.

Score and labels
    Every backend reports a *positivity* ``score`` in [0, 1]: 0 = most negative, 0.5 = no
    leaning, 1 = most positive (for a model with several classes it is the expected value of
    negative = 0, neutral = 0.5, positive = 1, or of the star rating scaled to [0, 1]). The label
    follows from the score and ``neutral_margin`` m, the same rule for every backend::

        score > 0.5 + m  -> "positive"
        score < 0.5 - m  -> "negative"
        otherwise        -> "neutral"

    A text that is empty or white space is "neutral" with score 0.5 and is never sent to a model.

Backends (``load_sentiment_model(name)``)
    * ``None`` / ``"auto"``: the offline default. Each text goes to the Chinese backend when it
      contains a CJK ideograph, otherwise to the English one (``language`` forces one of them).
    * ``"lexicon"`` (Chinese, the default): a lexicon with negation, degree and contrast rules
      (:mod:`utils.sentiment_lexicon`); a text without an opinion word is neutral.
    * ``"snownlp"`` (Chinese): SnowNLP's naive-Bayes classifier, which the ``snownlp`` PyPI package
      ships (trained on product reviews); the score is its P(positive).
    * ``"vader"`` (English): VADER (Hutto & Gilbert 2014), a lexicon with rules for negation,
      intensifiers, "but", capitals and emoticons; its lexicon ships in the ``vaderSentiment`` PyPI
      package. score = (compound + 1) / 2.
    * anything else: a Hugging Face text-classification model (local folder or hub id), e.g.
      ``uer/roberta-base-finetuned-jd-binary-chinese``; its ``config.id2label`` names are mapped to
      polarities by :func:`label_polarities`. Texts run in batches; longer ones are truncated to the
      model's maximum length (512 tokens at most).

Why these defaults (the margin, the lexicon and VADER), with the measurements behind them: README, 情感识别.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from utils.device import resolve_device
from utils.languages import HAN_RANGES, join_texts

logger = logging.getLogger(__name__)

POSITIVE, NEUTRAL, NEGATIVE = "positive", "neutral", "negative"
LABELS = (POSITIVE, NEUTRAL, NEGATIVE)
DEFAULT_NEUTRAL_MARGIN = 0.05  # half-width of the neutral band around score 0.5
LANGUAGES = ("zh", "en")
INPUT_SUFFIXES = (".txt", ".json", ".jsonl", ".jsonlines", ".srt", ".vtt")
STDIN = "-"  # --input=-: the texts from standard input (a transcript JSON, else one text per line)

# CJK Unified Ideographs, Extension A and Compatibility Ideographs.
_CJK = re.compile(f"[{HAN_RANGES}]")


class SentimentError(Exception):
    """Base class of this module's errors."""


class SentimentInputError(SentimentError, ValueError):
    """An input file that cannot be read as texts to classify; the message names the file (and line)."""


class SentimentModelError(SentimentError):
    """A model that cannot be loaded or whose labels cannot be mapped to positive/negative/neutral."""


@dataclass(frozen=True)
class SentimentResult:
    """One text's sentiment: ``label`` in LABELS, ``score`` = positivity in [0, 1]."""

    label: str
    score: float


@dataclass(frozen=True)
class TextItem:
    """A text to classify, with its time span in seconds when it is a transcript segment."""

    text: str
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class SentimentInput:
    """What to classify: ``items`` one by one and, for a transcript with segments, its ``full_text``."""

    items: list[TextItem]
    full_text: str | None = None


def contains_cjk(text: str) -> bool:
    """True when ``text`` contains at least one CJK ideograph (the auto rule for "Chinese")."""
    return _CJK.search(text) is not None


def label_from_score(score: float, neutral_margin: float = DEFAULT_NEUTRAL_MARGIN) -> str:
    """The label of a positivity ``score`` in [0, 1]: neutral within 0.5 ± ``neutral_margin``."""
    if score > 0.5 + neutral_margin:
        return POSITIVE
    if score < 0.5 - neutral_margin:
        return NEGATIVE
    return NEUTRAL


class SentimentModel(ABC):
    """A sentiment classifier. Subclasses implement :meth:`positivity` for non-empty texts."""

    name: str

    def __init__(self, neutral_margin: float = DEFAULT_NEUTRAL_MARGIN) -> None:
        if not 0.0 <= neutral_margin < 0.5:
            raise ValueError(f"neutral_margin must be in [0, 0.5), got {neutral_margin}")
        self.neutral_margin = neutral_margin

    @abstractmethod
    def positivity(self, texts: Sequence[str]) -> list[float]:
        """Positivity in [0, 1] of each (non-empty) text, in order."""

    def predict(self, texts: Sequence[str]) -> list[SentimentResult]:
        """Classify ``texts`` (one call; batched where the backend can). Empty texts are neutral 0.5."""
        if isinstance(texts, str):
            raise TypeError("predict() takes a list of texts, not a single string")
        scores = [0.5] * len(texts)
        todo = [i for i, t in enumerate(texts) if t.strip()]
        if todo:
            for i, s in zip(todo, self.positivity([texts[i].strip() for i in todo]), strict=True):
                scores[i] = min(1.0, max(0.0, float(s)))
        return [SentimentResult(label_from_score(s, self.neutral_margin), s) for s in scores]


class SnowNLPSentiment(SentimentModel):
    """Chinese: SnowNLP's packaged naive-Bayes sentiment model; score = P(positive)."""

    name = "snownlp"

    def __init__(self, neutral_margin: float = DEFAULT_NEUTRAL_MARGIN) -> None:
        super().__init__(neutral_margin)
        from snownlp import sentiment  # loads the packaged model (~3 s)

        self._classify = sentiment.classify

    def positivity(self, texts: Sequence[str]) -> list[float]:
        return [self._classify(t) for t in tqdm(texts, desc="snownlp", unit="text", disable=len(texts) < 1000)]


class LexiconSentiment(SentimentModel):
    """Chinese: a lexicon with negation, degree and contrast rules (:mod:`utils.sentiment_lexicon`); a text
    without any lexicon word is neutral (0.5)."""

    name = "lexicon"

    def positivity(self, texts: Sequence[str]) -> list[float]:
        from utils.sentiment_lexicon import lexicon_positivity

        return [lexicon_positivity(t) for t in tqdm(texts, desc="lexicon", unit="text", disable=len(texts) < 1000)]


class VaderSentiment(SentimentModel):
    """English: VADER's packaged lexicon and rules; score = (compound + 1) / 2."""

    name = "vader"

    def __init__(self, neutral_margin: float = DEFAULT_NEUTRAL_MARGIN) -> None:
        super().__init__(neutral_margin)
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def positivity(self, texts: Sequence[str]) -> list[float]:
        it = tqdm(texts, desc="vader", unit="text", disable=len(texts) < 1000)
        return [(self._compound(t) + 1.0) / 2.0 for t in it]

    def _compound(self, text: str) -> float:
        """VADER's compound score in [-1, 1]; a text over ``VADER_WHOLE_CHARS`` the mean of its sentences' (VADER's
        time grows with the square of a text's length: 100 KB took 16 s, 1.4 MB over 10 minutes), weighted by
        their length."""
        if len(text) <= VADER_WHOLE_CHARS:
            return self._analyzer.polarity_scores(text)["compound"]
        sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
        pieces = [p for s in sentences for p in (s[i: i + VADER_WHOLE_CHARS] for i in range(0, len(s),
                                                                                            VADER_WHOLE_CHARS))]
        weights = [len(p) for p in pieces]
        if not pieces:  # white space only
            return 0.0
        return sum(w * self._analyzer.polarity_scores(p)["compound"] for w, p in zip(weights, pieces)) / sum(weights)


VADER_WHOLE_CHARS = 2000  # an English text longer than this is scored sentence by sentence
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")


@functools.lru_cache(maxsize=1)
def _function_words_in_english() -> tuple[re.Pattern[str], re.Pattern[str], dict[str, str]]:
    """The lexicon's negators, degree words and contrasts as the English words VADER's rules know (不太 → "not",
    很 → "very", 有点 → "slightly", 但是 → "but", 那么 and the lexicon's other bridges dropped; 好 and 可 are left:
    good, can): a pattern for one of them, one for a run of them right before an English word, and the table."""
    from utils import sentiment_lexicon as lex

    english = {**{w: "very" for w in lex.DEGREE_UP if w != "好"}, **{w: "slightly" for w in lex.DEGREE_DOWN},
               **{w: "but" for w in lex.CONTRASTS if w != "可"}, **{w: "not" for w in lex.NEGATORS},
               **{w: "" for w in lex._NEGATION_BRIDGES}}  # 没那么 bad: "not bad"
    one = "|".join(sorted(map(re.escape, english), key=len, reverse=True))
    # atomic and possessive: 不太 is also 不 + 太, and a long run of them with no English word after it backtracked
    # through every split (20 of them: 1.2 s)
    return re.compile(one), re.compile(f"(?:(?>{one})\\s*)++(?=[A-Za-z])"), english


def _with_english_function_words(text: str) -> str:
    """``text`` for VADER where the Chinese right before an English opinion word carries the negation or degree:
    这个 app 不太 good read as "这个 app not good" (VADER saw good alone: positive). Only a run of them right before
    an English word: 别人都说这个 app good keeps 别人 (its 别 read as "not" made it negative)."""
    one, run, english = _function_words_in_english()
    return run.sub(lambda m: one.sub(lambda w: f" {english[w.group()]} ", m.group()), text)


class LanguageRouter(SentimentModel):
    """Sends each text to the backend of its language (CJK → ``zh``, else ``en``), or all to ``language``; a
    Chinese text in which the lexicon finds no opinion word but that holds English words is read by ``en``'s.

    Backends are built on first use, so English-only input never loads the Chinese model.
    """

    def __init__(self, neutral_margin: float = DEFAULT_NEUTRAL_MARGIN, language: str | None = None) -> None:
        super().__init__(neutral_margin)
        if language is not None and language not in LANGUAGES:
            raise ValueError(f"language must be one of {LANGUAGES} or None (auto), got {language!r}")
        self.language = language
        self.name = {"zh": "lexicon", "en": "vader", None: "auto (lexicon for Chinese, vader otherwise)"}[language]
        self._backends: dict[str, SentimentModel] = {}

    def _backend(self, language: str) -> SentimentModel:
        if language not in self._backends:
            cls = LexiconSentiment if language == "zh" else VaderSentiment
            self._backends[language] = cls(self.neutral_margin)
        return self._backends[language]

    def positivity(self, texts: Sequence[str]) -> list[float]:
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            groups.setdefault(self.language or ("zh" if contains_cjk(t) else "en"), []).append(i)
        if self.language is not None:
            other = [t for t in texts if contains_cjk(t) != (self.language == "zh")]
            if other:
                logger.warning("%d of %d texts are not in the language given (%s: %s), e.g. %r: they read as "
                               "neutral; leave the language out to route each text by its script", len(other),
                               len(texts), self.language, self.name, other[0][:40])
        scores = [0.5] * len(texts)
        for language, idx in groups.items():
            for i, s in zip(idx, self._backend(language).positivity([texts[i] for i in idx]), strict=True):
                scores[i] = s
        if self.language is None:  # Chinese with English words and no Chinese opinion word: "这个 app 很 good"
            latin = [i for i in groups.get("zh", []) if scores[i] == 0.5 and _LATIN_WORD.search(texts[i])]
            if latin:
                mixed = [_with_english_function_words(texts[i]) for i in latin]
                for i, s in zip(latin, self._backend("en").positivity(mixed), strict=True):
                    scores[i] = s
        return scores


_NEGATIVE_WORDS = ("neg", "消极", "负面", "负向", "差评", "bad")
_POSITIVE_WORDS = ("pos", "积极", "正面", "正向", "好评", "good")
_NEUTRAL_WORDS = ("neu", "中性", "中立", "一般")
_STRONG_WORDS = ("very", "strong", "非常")
_STARS = re.compile(r"^\s*(?:(\d+)\s*(?:stars?|星)|stars?\s*(\d+))\s*$", re.IGNORECASE)
_GENERIC = re.compile(r"^(?:label_?)?(\d+)$", re.IGNORECASE)


def label_polarities(id2label: Mapping[int, str], model_name: str = "model") -> list[float]:
    """Polarity in [0, 1] of each class id 0..n-1, from a model config's ``id2label``.

    Recognised names: anything containing neg/pos/neu (any case, so "NEGATIVE", "negative (stars 1, 2
    and 3)", "Very Positive") or 消极/积极/中性, 负面/正面, 差评/好评; star ratings ("1 star" ..
    "5 stars" or "star 1" .. "star 5", scaled to [0, 1]); and generic ``LABEL_0``/``LABEL_1`` (2
    classes: negative, positive; 3 classes: negative, neutral, positive, the usual order, assumed
    with a warning).
    With "very"/"strongly" classes (5-point scales) plain positive/negative become 0.75/0.25.

    Raises:
        SentimentModelError: the names cannot be mapped; the message shows them and the fix.
    """
    n = len(id2label)
    try:
        labels = [str(id2label[i]) for i in range(n)]
    except KeyError as e:
        raise SentimentModelError(f"{model_name}: id2label ids must be 0..{n - 1}, got {sorted(id2label)}") from e
    fix = (f"{model_name}: cannot map labels {labels} to positive/negative/neutral; set config.json "
           "id2label to names like {\"0\": \"negative\", \"1\": \"positive\"}")
    if n < 2:
        raise SentimentModelError(fix)

    generic = [_GENERIC.match(s.strip()) for s in labels]
    if all(generic):
        if n == 2:
            return [0.0, 1.0]
        if n == 3:
            logger.warning("%s: generic labels %s read as negative, neutral, positive", model_name, labels)
            return [0.0, 0.5, 1.0]
        raise SentimentModelError(fix)

    stars = [_STARS.match(s) for s in labels]
    if all(stars):
        values = [int(m.group(1) or m.group(2)) for m in stars]
        lo, hi = min(values), max(values)
        if lo == hi:
            raise SentimentModelError(fix)
        return [(v - lo) / (hi - lo) for v in values]

    strong_scale = any(w in s.lower() for s in labels for w in _STRONG_WORDS)
    polarities = []
    for s in labels:
        low = s.lower()
        kinds = [k for k, words in ((NEGATIVE, _NEGATIVE_WORDS), (POSITIVE, _POSITIVE_WORDS),
                                    (NEUTRAL, _NEUTRAL_WORDS)) if any(w in low for w in words)]
        if len(kinds) != 1:
            raise SentimentModelError(fix)
        strong = any(w in low for w in _STRONG_WORDS)
        if kinds[0] == NEUTRAL:
            polarities.append(0.5)
        elif kinds[0] == POSITIVE:
            polarities.append(1.0 if strong or not strong_scale else 0.75)
        else:
            polarities.append(0.0 if strong or not strong_scale else 0.25)
    return polarities


class HFSentiment(SentimentModel):
    """A Hugging Face sequence-classification model; score = Σ softmax(logits) · label polarity."""

    def __init__(
        self,
        name: str,
        *,
        neutral_margin: float = DEFAULT_NEUTRAL_MARGIN,
        device: str = "auto",
        batch_size: int = 32,
        local_files_only: bool = False,
    ) -> None:
        super().__init__(neutral_margin)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = name
        self.batch_size = batch_size
        self.device = resolve_device(device)
        from utils.models import hub_unusable_reason

        folder = Path(name).expanduser()
        if folder.is_dir() and not (folder / "config.json").is_file():
            raise SentimentModelError(f"{name}: a folder without config.json: not a saved model (save one with "
                                      "save_pretrained, or give a hub id)")
        unusable = None if local_files_only or folder.is_dir() else hub_unusable_reason(name)
        if unusable is not None:
            local_files_only = True  # the hub cache only: transformers would retry an unreachable hub for a minute
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
            model = AutoModelForSequenceClassification.from_pretrained(name, local_files_only=local_files_only)
        except (OSError, ValueError) as e:
            reason = f"not a local folder and not in the Hugging Face cache; the hub: {unusable}" if unusable else e
            raise SentimentModelError(
                f"{name}: cannot load a text-classification model ({reason}). Give a local model folder or a "
                "reachable hub id, or leave the model unset for the offline default (lexicon / vader)"
            ) from e
        self.model = model.eval().to(self.device)
        self._polarity = torch.tensor(label_polarities(model.config.id2label, name), dtype=torch.float32)
        limits = [512, self.tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", 512)]
        self.max_length = int(min(limits))
        logger.info("loaded %s on %s (labels %s)", name, self.device, dict(model.config.id2label))

    def positivity(self, texts: Sequence[str]) -> list[float]:
        import torch

        scores: list[float] = []
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="sentiment", unit="batch", disable=len(starts) < 2):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                probs = self.model(**batch).logits.float().softmax(dim=-1).cpu()
            scores.extend((probs @ self._polarity).tolist())
        return scores


def load_sentiment_model(
    name: str | None = None,
    *,
    language: str | None = None,
    neutral_margin: float = DEFAULT_NEUTRAL_MARGIN,
    device: str = "auto",
    batch_size: int = 32,
    local_files_only: bool = False,
) -> SentimentModel:
    """Build a sentiment model.

    Args:
        name: None or "auto" (offline: the lexicon for Chinese, VADER for English, chosen per text),
            "lexicon", "snownlp", "vader", or a Hugging Face text-classification model folder / hub id.
        language: "zh" or "en" sends every text to that language's offline backend; None = per text
            (contains a CJK ideograph → Chinese). Ignored for a Hugging Face model.
        neutral_margin: half-width of the neutral band around score 0.5, in [0, 0.5).
        device, batch_size, local_files_only: Hugging Face models only.

    Raises:
        SentimentModelError: the Hugging Face model cannot be loaded or its labels mapped.
    """
    if name is None or name.lower() == "auto":
        return LanguageRouter(neutral_margin, language)
    if name.lower() == "snownlp":
        return SnowNLPSentiment(neutral_margin)
    if name.lower() == "lexicon":
        return LexiconSentiment(neutral_margin)
    if name.lower() == "vader":
        return VaderSentiment(neutral_margin)
    return HFSentiment(name, neutral_margin=neutral_margin, device=device, batch_size=batch_size,
                       local_files_only=local_files_only)


# ---------------------------------------------------------------------------------------------
# Input files


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise SentimentInputError(f"{path}: no such file") from e
    except OSError as e:
        raise SentimentInputError(f"{path}: cannot read ({e.strerror})") from e
    return _decoded(data, str(path))


def _decoded(data: bytes, name: str) -> str:
    """The UTF-8 text of a file's or standard input's bytes (a BOM dropped); a message naming the encoding to
    convert from otherwise (UTF-16, GBK), or that it is no text at all (audio, a binary file)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SentimentInputError(f"{name}: UTF-16 text; convert it to UTF-8, e.g. iconv -f UTF-16 -t UTF-8 "
                                  f"{name} > utf8.txt")
    if b"\0" in data[:4096]:
        raise SentimentInputError(f"{name}: a binary file, not text (give a .txt, .srt, .vtt or .json file)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SentimentInputError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start}); convert it, e.g. "
                                  f"iconv -f GBK -t UTF-8 {name} > utf8.txt") from e
    if not text.strip():
        raise SentimentInputError(f"{name}: {'file' if name != '<stdin>' else 'standard input'} is empty, nothing "
                                  "to classify")
    return text


def _optional_seconds(value: Any, where: str, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SentimentInputError(f"{where}: '{key}' must be a number of seconds, got {value!r}")
    return float(value)


def transcript_to_input(obj: Mapping[str, Any], source: str = "transcript") -> SentimentInput:
    """A transcript object (infer.py's JSON: "text", optional "segments" [{start, end, text}]) → input.

    With segments, ``items`` are the segments and ``full_text`` the whole "text" (or the segments
    joined when "text" is missing); without, the one item is the whole text.

    Raises:
        SentimentInputError: a field has the wrong type, or there is no text at all.
    """
    key = "final_text" if isinstance(obj.get("final_text"), str) else "text"  # realtime_transcribe.py's report:
    text = obj.get(key)  # the text revised by its second pass, not the live one
    if text is not None and not isinstance(text, str):
        raise SentimentInputError(f"{source}: 'text' must be a string, got {type(text).__name__}")
    segments = obj.get("segments") or []
    if not isinstance(segments, list):
        raise SentimentInputError(f"{source}: 'segments' must be a list, got {type(segments).__name__}")
    items = []
    for k, seg in enumerate(segments):
        where = f"{source}: segments[{k}]"
        if not isinstance(seg, Mapping):
            raise SentimentInputError(f"{where}: must be an object with 'text', 'start', 'end'")
        seg_text = seg.get("text")
        if not isinstance(seg_text, str):
            raise SentimentInputError(f"{where}: 'text' missing or not a string (keys: {', '.join(seg)})")
        if seg_text.strip():
            items.append(TextItem(seg_text.strip(), _optional_seconds(seg.get("start"), where, "start"),
                                  _optional_seconds(seg.get("end"), where, "end")))
    if items:
        full = text.strip() if text and text.strip() else " ".join(it.text for it in items)
        return SentimentInput(items, full)
    if text and text.strip():
        return SentimentInput([TextItem(text.strip())])
    raise SentimentInputError(f"{source}: no text to classify ('text' and every segment are empty or missing)")


def _manifest_to_input(text: str, path: Path) -> SentimentInput:
    items = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise SentimentInputError(f"{path}:{lineno}: invalid JSON ({e.msg}, column {e.colno})") from e
        if not isinstance(rec, dict) or "sentence" not in rec:
            keys = ", ".join(rec) if isinstance(rec, dict) else type(rec).__name__
            raise SentimentInputError(f"{path}:{lineno}: 'sentence' missing (keys: {keys})")
        if not isinstance(rec["sentence"], str):
            raise SentimentInputError(f"{path}:{lineno}: 'sentence' must be a string, got {rec['sentence']!r}")
        if rec["sentence"].strip():
            items.append(TextItem(rec["sentence"].strip()))
    skipped = sum(1 for line in text.splitlines() if line.strip()) - len(items)
    if skipped:
        logger.info("%s: skipped %d lines with an empty sentence (no-speech clips)", path, skipped)
    if not items:
        raise SentimentInputError(f"{path}: every 'sentence' is empty, nothing to classify")
    return SentimentInput(items)


_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{2}(?:[.,]\d+)?)"  # 00:00:01.000, srt's 00:00:01,000, vtt's 00:01.000
_TIMED_LINE = re.compile(rf"^\s*\[{_TIME}\s*-->\s*{_TIME}\]\s*(.*)$")


_CUE_LINE = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}")
_CUE_TAG = re.compile(r"</?[a-zA-Z][^>]*>")  # vtt's <v Speaker>, <i>…</i>


# an srt file's start: a cue number, then its times (00:00:01,000 --> 00:00:02,500)
_SRT_START = re.compile(r"\d+\s*\r?\n\s*\d{1,2}:\d{2}:\d{2}[,.]\d{3}\s*-->")


def _subtitle_items(text: str) -> list[TextItem]:
    """The cues of an srt or vtt file: each cue's text lines joined (:func:`join_texts`), with its times."""
    items = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        lines = block.strip().splitlines()
        for k, line in enumerate(lines):
            m = _CUE_LINE.match(line)
            if m is not None:
                items.append(TextItem(join_texts([_CUE_TAG.sub("", t) for t in lines[k + 1:]]), *_span(m.groups())))
                break
    return items


def _clause(text: str) -> str:
    """``text`` ending in a clause break the lexicon reads: a comma after one that has none (a subtitle cue joined to
    the next; "……", "——", a closing quote or bracket break no clause)."""
    from utils.sentiment_lexicon import ends_clause

    text = text.strip()
    if not text or ends_clause(text):
        return text
    return text + ("，" if contains_cjk(text) else ",")


def _text_line(line: str) -> TextItem:
    """A line of a .txt input; realtime_transcribe.py's ``[00:00:01.000 --> 00:00:03.500] text`` lines give the
    text and its times (the time stamps were scored as part of the text)."""
    m = _TIMED_LINE.match(line)
    if m is None:
        return TextItem(line.strip())
    return TextItem(m.group(7).strip(), *_span(m.groups()))


def _span(groups: Sequence[str | None]) -> tuple[float, float]:
    """(start, end) in seconds from the six groups of two :data:`_TIME` matches (hours optional)."""
    return tuple(int(h or 0) * 3600 + int(mi) * 60 + float(sec.replace(",", "."))  # type: ignore[return-value]
                 for h, mi, sec in (groups[0:3], groups[3:6]))


def _is_jsonlines(text: str) -> bool:
    """Whether ``text`` is jsonlines: several non-empty lines, the first a whole JSON object (a transcript JSON
    is one object: on one line, or indented so that its first line is "{")."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return False
    try:
        return isinstance(json.loads(lines[0]), dict)
    except json.JSONDecodeError:
        return False


def load_sentiment_inputs(path: str | Path) -> SentimentInput:
    """Read the texts to classify from a file (``STDIN``: standard input, a JSON object if it starts with "{",
    subtitles if it starts as an srt or vtt file does, else lines of text).

    * ``.txt``: one text per line that holds a word (realtime_transcribe.py's timed lines too).
    * ``.srt`` / ``.vtt``: one text per subtitle cue, with its times (infer.py's subtitles).
    * ``.json``: a transcript object written by infer.py (see :func:`transcript_to_input`), or a
      jsonlines manifest (one object with "sentence" per line, told apart by its first line being a whole
      object; empty sentences are skipped).
    * ``.jsonl`` / ``.jsonlines``: a jsonlines manifest.

    Raises:
        SentimentInputError: missing, unreadable or empty file, unknown extension, invalid JSON
            (with the line), or missing fields; nothing else is done.
    """
    if str(path) == STDIN:  # read as a file is (bytes: its encoding checked), its kind told by its start
        stdin = sys.stdin  # its bytes, or the text an app put there (io.StringIO)
        text = _decoded(stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode("utf-8"), "<stdin>")
        head = text.lstrip()
        kind = (".json" if head.startswith("{") else ".vtt" if head.startswith("WEBVTT") else
                ".srt" if _SRT_START.match(head) else ".txt")
        return _parse_inputs(text, Path("<stdin>"), kind)
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise SentimentInputError(f"{path}: a folder; give one file ({', '.join(INPUT_SUFFIXES)})")
    if not path.exists():
        raise SentimentInputError(f"{path}: no such file")
    if suffix not in INPUT_SUFFIXES:
        raise SentimentInputError(f"{path}: unknown extension '{suffix}' (use {', '.join(INPUT_SUFFIXES)})")
    return _parse_inputs(_read_text(path), path, suffix)


def _parse_inputs(text: str, path: Path, suffix: str) -> SentimentInput:
    """:func:`load_sentiment_inputs` of a file's ``text``, read as its ``suffix`` says."""
    if suffix in (".txt", ".srt", ".vtt"):  # a text with no word (a timed line without text, "。") was scored neutral
        items = _subtitle_items(text) if suffix != ".txt" else list(map(_text_line, text.splitlines()))
        items = [item for item in items if any(ch.isalnum() for ch in item.text)]
        if not items:
            raise SentimentInputError(f"{path}: no text to classify (every line is empty or punctuation)")
        if all(item.start is not None for item in items):  # the timed segments of one recording (subtitles, a live
            # transcript): overall is their whole text's, as for a transcript JSON (it was the mean of the lines), a
            # cue without a punctuation mark at its end one clause (a model trained without punctuation)
            return SentimentInput(items, join_texts([_clause(item.text) for item in items]))
        return SentimentInput(items)
    if suffix in (".jsonl", ".jsonlines"):
        return _manifest_to_input(text, path)
    if _is_jsonlines(text):
        return _manifest_to_input(text, path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise SentimentInputError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from e
    if not isinstance(obj, dict):
        raise SentimentInputError(f"{path}: expected a transcript object with 'text' (and 'segments'), "
                                  f"got a JSON {type(obj).__name__}")
    if "sentence" in obj and "text" not in obj:  # a one-line manifest
        return _manifest_to_input(text, path)
    if "text" not in obj and "segments" not in obj:
        raise SentimentInputError(f"{path}: 'text' missing (keys: {', '.join(obj)}); expected infer.py's "
                                  "transcript JSON or a manifest with 'sentence'")
    return transcript_to_input(obj, str(path))


# ---------------------------------------------------------------------------------------------
# Report


def analyze_sentiment(model: SentimentModel, inputs: SentimentInput) -> dict[str, Any]:
    """Classify every item (and the full text) in one ``predict`` call; return the JSON report.

    Returns:
        ``{"model", "neutral_margin", "results": [{"text", "label", "score", "start"?, "end"?}],
        "overall": {"label", "score", "basis", "counts": {label: n}}}``. ``overall`` is the full
        text's result for a transcript with segments (basis "full_text"), else the label of the
        mean score of the results (basis "mean").
    """
    texts = [it.text for it in inputs.items]
    if inputs.full_text is not None:
        texts.append(inputs.full_text)
    predictions = model.predict(texts)
    results = []
    item_preds = predictions[:len(inputs.items)]
    for item, pred in zip(inputs.items, item_preds, strict=True):
        row: dict[str, Any] = {"text": item.text, "label": pred.label, "score": round(pred.score, 4)}
        if item.start is not None:
            row["start"] = item.start
        if item.end is not None:
            row["end"] = item.end
        results.append(row)
    if inputs.full_text is not None:
        overall_score, basis = predictions[-1].score, "full_text"
    else:
        overall_score, basis = sum(p.score for p in item_preds) / len(item_preds), "mean"
    overall = {
        "label": label_from_score(overall_score, model.neutral_margin),
        "score": round(overall_score, 4),
        "basis": basis,
        "counts": {label: sum(p.label == label for p in item_preds) for label in LABELS},
    }
    return {"model": model.name, "neutral_margin": model.neutral_margin, "results": results, "overall": overall}


def format_report(report: Mapping[str, Any]) -> str:
    """The human-readable form of :func:`analyze_sentiment`'s report: one line per text, then overall."""
    lines = []
    for r in report["results"]:
        span = f"[{r['start']:7.2f} → {r['end']:7.2f}]  " if "start" in r and "end" in r else ""
        lines.append(f"{r['label']:<8} {r['score']:.2f}  {span}{r['text']}")
    o = report["overall"]
    counts = ", ".join(f"{n} {label}" for label, n in o["counts"].items())
    basis = "full text" if o["basis"] == "full_text" else "mean score"
    lines.append(f"overall: {o['label']} {o['score']:.2f} ({basis}; {counts}; model {report['model']})")
    return "\n".join(lines)
