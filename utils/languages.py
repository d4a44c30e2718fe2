"""Languages and scripts: Whisper language codes, and the character ranges of scripts written without spaces."""

from __future__ import annotations

import re

# Han, kana and Hangul: scripts whose characters are compared and joined one by one (no spaces between them)
CJK_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
HAN_KANA_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK without Hangul (Korean uses spaces)
HAN_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # Chinese characters only
CJK_CHAR = re.compile(f"[{CJK_RANGES}]")


def language_code(language: str) -> str:
    """``Chinese`` / ``chinese`` / ``zh`` / ``<|zh|>`` → Whisper's code ``zh``.

    Raises:
        ValueError: an unknown language, naming the accepted forms.
    """
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    key = language.strip().lower().strip("<|>")
    if key in LANGUAGES:
        return key
    if key in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[key]
    raise ValueError(f"unknown language {language!r}; use a Whisper language code or name, "
                     f"e.g. zh/chinese, en/english, ja/japanese ({len(LANGUAGES)} supported)")


def language_name(code: str) -> str:
    """Whisper's code ``zh`` → its English name ``chinese`` (what OpenAI's verbose_json reports)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return LANGUAGES.get(language_code(code), code)


def optional_language_code(language: str | None) -> str | None:
    """:func:`language_code`, with None (auto-detect) kept as None."""
    return None if language is None else language_code(language)
