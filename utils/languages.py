"""Languages and scripts: Whisper language codes, and the character ranges of scripts written without spaces."""

from __future__ import annotations

import re
from collections.abc import Sequence

# Han, kana and Hangul: scripts whose characters are compared one by one (live transcription's agreement)
CJK_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
HAN_KANA_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK without Hangul (Korean uses spaces)
HAN_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # Chinese characters only
# CJK symbols and punctuation, full-width forms ("。", "，", "！", "「"): they carry their own spacing
CJK_PUNCT_RANGES = "\u3000-\u303f\uff00-\uffef"
_HAN_KANA_CHAR = re.compile(f"[{HAN_KANA_RANGES}]")
_CJK_PUNCT_CHAR = re.compile(f"[{CJK_PUNCT_RANGES}]")


def has_unspaced_script(text: str) -> bool:
    """Whether ``text`` holds Chinese or Japanese characters (written without spaces between words; Korean
    is not: it spaces its words)."""
    return bool(_HAN_KANA_CHAR.search(text))


def mostly_unspaced_script(text: str) -> bool:
    """Whether ``text`` is Chinese/Japanese rather than text naming a Chinese/Japanese word: more such characters
    than other words, or Chinese grammar words among them ("这个 API 的 latency 太高了", "打开 GitHub 的 pull request"
    are; "We deploy on 阿里云 (Alibaba Cloud).", "Use 微信 Pay." are not)."""
    characters = _HAN_KANA_CHAR.findall(text)
    if not characters:
        return False
    return (len(characters) > len(_OTHER_WORD.findall(_HAN_KANA_CHAR.sub(" ", text)))
            or any(c in _CHINESE_GRAMMAR for c in characters))


# characters of Chinese grammar (particles, pronouns, common verbs and adverbs), seldom in a name an English text quotes
_CHINESE_GRAMMAR = frozenset("的了是在和用做这那我你他她们个有不很太吗呢吧把被给让就都也还要会能去来说看")


_OTHER_WORD = re.compile(r"[^\W\d_]+")  # a run of letters (Han and kana taken out first)


def unspaced_char(char: str) -> bool:
    """Whether ``char`` is Chinese/Japanese or full-width punctuation: written without spaces around it."""
    return bool(_HAN_KANA_CHAR.match(char) or _CJK_PUNCT_CHAR.match(char))


def joins_unspaced(left: str, right: str) -> bool:
    """Whether text ending in character ``left`` and text starting with ``right`` join without a space: between
    Chinese/Japanese characters, and next to full-width punctuation ("钱。" + "今年" → "钱。今年"). Hangul is
    not among them (Korean puts spaces between words)."""
    return bool(_CJK_PUNCT_CHAR.match(left) or _CJK_PUNCT_CHAR.match(right)
                or (_HAN_KANA_CHAR.match(left) and _HAN_KANA_CHAR.match(right)))


def join_texts(texts: Sequence[str]) -> str:
    """Join texts (chunks, clips): one space between two, none where :func:`joins_unspaced` (Chinese, Japanese,
    full-width punctuation): "天气。" + "Deploy it" + "请用" → "天气。Deploy it 请用"."""
    out = ""
    for t in (t.strip() for t in texts):
        if not t:
            continue
        if out and not joins_unspaced(out[-1], t[0]):
            out += " "
        out += t
    return out


# Whisper's languages (code:English name, "_" for a space, in token order) and other names of some of them; kept
# here so that reading a --language flag does not import transformers (1.3 s), which the ct2 backend never needs.
# tests/test_text.py checks this table against transformers' own.
_LANGUAGE_TABLE = (
    "en:english zh:chinese de:german es:spanish ru:russian ko:korean fr:french ja:japanese pt:portuguese "
    "tr:turkish pl:polish ca:catalan nl:dutch ar:arabic sv:swedish it:italian id:indonesian hi:hindi "
    "fi:finnish vi:vietnamese he:hebrew uk:ukrainian el:greek ms:malay cs:czech ro:romanian da:danish "
    "hu:hungarian ta:tamil no:norwegian th:thai ur:urdu hr:croatian bg:bulgarian lt:lithuanian la:latin "
    "mi:maori ml:malayalam cy:welsh sk:slovak te:telugu fa:persian lv:latvian bn:bengali sr:serbian "
    "az:azerbaijani sl:slovenian kn:kannada et:estonian mk:macedonian br:breton eu:basque is:icelandic "
    "hy:armenian ne:nepali mn:mongolian bs:bosnian kk:kazakh sq:albanian sw:swahili gl:galician "
    "mr:marathi pa:punjabi si:sinhala km:khmer sn:shona yo:yoruba so:somali af:afrikaans oc:occitan "
    "ka:georgian be:belarusian tg:tajik sd:sindhi gu:gujarati am:amharic yi:yiddish lo:lao uz:uzbek "
    "fo:faroese ht:haitian_creole ps:pashto tk:turkmen nn:nynorsk mt:maltese sa:sanskrit lb:luxembourgish "
    "my:myanmar bo:tibetan tl:tagalog mg:malagasy as:assamese tt:tatar haw:hawaiian ln:lingala ha:hausa "
    "ba:bashkir jw:javanese su:sundanese yue:cantonese "
)
LANGUAGES: dict[str, str] = dict(item.replace("_", " ").split(":", 1)
                                 for item in "".join(_LANGUAGE_TABLE).split())
TO_LANGUAGE_CODE: dict[str, str] = {
    **{name: code for code, name in LANGUAGES.items()},
    "burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht", "letzeburgesch": "lb", "pushto": "ps",
    "panjabi": "pa", "moldavian": "ro", "moldovan": "ro", "sinhalese": "si", "castilian": "es", "mandarin": "zh",
}


# ISO 639-2/3 codes as datasets write them (FLEURS's cmn_hans_cn, MLS, Common Voice's yue): the usual ones
ISO_639_CODES = {"cmn": "zh", "zho": "zh", "chi": "zh", "yue": "yue", "eng": "en", "jpn": "ja", "kor": "ko",
                 "fra": "fr", "fre": "fr", "deu": "de", "ger": "de", "spa": "es", "rus": "ru", "ita": "it",
                 "por": "pt", "ara": "ar", "hin": "hi", "vie": "vi", "tha": "th", "ind": "id", "msa": "ms",
                 "may": "ms", "tur": "tr", "nld": "nl", "dut": "nl", "pol": "pl", "ukr": "uk", "bod": "bo",
                 "tib": "bo", "mon": "mn", "kaz": "kk"}
# the languages' own names in Chinese, as a Chinese manifest or user writes them
CHINESE_NAMES = {"中文": "zh", "汉语": "zh", "漢語": "zh", "普通话": "zh", "普通話": "zh", "国语": "zh", "國語": "zh",
                 "华语": "zh", "華語": "zh", "粤语": "yue", "粵語": "yue", "广东话": "yue", "廣東話": "yue",
                 "英语": "en", "英語": "en", "英文": "en", "日语": "ja", "日語": "ja", "日文": "ja", "韩语": "ko",
                 "韓語": "ko", "法语": "fr", "德语": "de", "俄语": "ru", "西班牙语": "es"}


def language_code(language: str) -> str:
    """``Chinese`` / ``chinese`` / ``zh`` / ``<|zh|>`` / ``zh-CN`` / ``cmn`` / ``cmn_hans_cn`` / ``中文`` → Whisper's
    code ``zh``.

    Raises:
        ValueError: an unknown language, naming the accepted forms.
    """
    key = language.strip().lower().strip("<|>")
    if key in LANGUAGES:
        return key
    if key in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[key]
    if key in ISO_639_CODES or key in CHINESE_NAMES:
        return ISO_639_CODES.get(key) or CHINESE_NAMES[key]
    base = re.split(r"[-_]", key, maxsplit=1)[0]  # a locale (BCP 47 / POSIX) as Common Voice and others write it:
    if base != key and (base in LANGUAGES or base in ISO_639_CODES):  # en-US, zh_TW, pt-BR, cmn-Hans-CN → its code
        return base if base in LANGUAGES else ISO_639_CODES[base]
    raise ValueError(f"unknown language {language!r}; use a Whisper language code or name, "
                     f"e.g. zh/chinese, en/english, ja/japanese ({len(LANGUAGES)} supported)")


AUTO_LANGUAGE = "auto"  # --language: detect, even when the model was fine-tuned on one language


def decode_language(language: str | None) -> str | None:
    """A ``--language`` value as decoding takes it: None (the model's fine-tuned language, else detected),
    ``"auto"`` (always detected) or a Whisper code.

    Raises:
        ValueError: an unknown language.
    """
    if language is None or language.strip().lower() == AUTO_LANGUAGE:
        return None if language is None else AUTO_LANGUAGE
    return language_code(language)


def language_name(code: str) -> str:
    """Whisper's code ``zh`` → its English name ``chinese`` (what OpenAI's verbose_json reports)."""
    return LANGUAGES.get(language_code(code), code)


def optional_language_code(language: str | None) -> str | None:
    """:func:`language_code`, with None (auto-detect) kept as None."""
    return None if language is None else language_code(language)
