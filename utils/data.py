"""Jsonlines manifests: read and validate once, keep compact columns, parse records on demand.

One JSON object per line::

    {"audio": {"path": "audio/0.wav", "start_time": 1.5, "end_time": 4.0},   # times optional, seconds
     "sentence": "近几年，不但我用书给女儿压岁。",                                # "" = no-speech clip
     "language": "Chinese",                                                    # optional
     "sentences": [{"start": 0, "end": 1.4, "text": "近几年，"}, ...],          # optional, for timestamps
     "duration": 7.37}                                                         # seconds

Relative ``audio.path`` values are resolved against the manifest file's folder; for manifests made
by the original toolkit (paths relative to the working directory) the current directory is tried
second. Scale: a 10M-line manifest (WenetSpeech) must not become 10M Python dicts, so loading keeps
only numpy columns (byte offset, duration, path base) and ``Manifest[i]`` re-reads line ``i``.
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import os
import re
import shlex
from array import array
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from tqdm import tqdm

from utils.languages import language_code, mostly_unspaced_script
from utils.text import clean_text, has_hidden_characters, normalize_text

logger = logging.getLogger(__name__)

MAX_LABEL_TOKENS = 448  # Whisper decoder's max_target_positions
# <|startoftranscript|> <|lang|> <|task|> [<|notimestamps|>] ... <|endoftext|>
LABEL_SPECIAL_TOKENS = 4
_BASE_ABSOLUTE, _BASE_MANIFEST, _BASE_CWD = 0, 1, 2


class ManifestError(ValueError):
    """A manifest line is invalid; the message names the file, line, field and fix."""


@dataclass(frozen=True)
class Word:
    """One word (or Chinese character) with its time in seconds and the model's probability for it."""

    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class DecodeStats:
    """How the decode that read a segment went (OpenAI's verbose_json segment fields). One decode reads a piece of
    at most 30 s, so the segments it gives share these."""

    seek: int  # where the decoded piece starts, in 10 ms log-mel frames from the start of the audio
    avg_logprob: float  # mean log-probability of the text tokens and the end of text
    no_speech_prob: float  # probability of Whisper's no-speech token at the start of the decode
    compression_ratio: float  # the piece's text: UTF-8 bytes / zlib-compressed bytes (> 2.4: a repetition loop)
    temperature: float | None  # of the attempt kept (0.0: greedy or beam); None where the backend does not say


@dataclass(frozen=True)
class Segment:
    """A timestamped piece of a transcript (seconds relative to the clip start); ``words`` when word-level
    timestamps were asked for; ``tokens`` (its text tokens) and ``stats`` when the decode's statistics were
    (``DecodeOptions.decode_stats``)."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    tokens: tuple[int, ...] = ()
    stats: DecodeStats | None = None


@dataclass(frozen=True)
class Record:
    """One validated manifest line."""

    audio_path: str  # resolved path
    sentence: str
    duration: float  # seconds of the clip (the slice, when start/end are given)
    start_time: float | None = None
    end_time: float | None = None
    language: str | None = None
    sentences: tuple[Segment, ...] | None = None
    # the audio file's bytes, for items of a Hugging Face dataset that stores audio inside it (audio_path is
    # then a name for messages); None = read audio_path
    audio_bytes: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def is_nospeech(self) -> bool:
        return self.sentence.strip() == ""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_translation_references(sentences: Iterable[str], what: str) -> None:
    """Raise ManifestError when most non-empty ``sentences`` are mostly Chinese or Japanese text (an English one
    naming "阿里云" is English): ``--task=translate`` trains and scores English text, and a transcript there taught
    the model to write Chinese (eval CER 2.48 → 0.70, saved as the best) and scored English output against Chinese
    (CER 2.92)."""
    texts = [s for s in sentences if s.strip()]
    foreign = [s for s in texts if mostly_unspaced_script(s)]
    if texts and 2 * len(foreign) > len(texts):
        raise ManifestError(f"{what}: {len(foreign)} of {len(texts)} sentences are written in Chinese/Japanese (e.g. "
                            f"{foreign[0]!r}), but --task=translate trains and scores English text: give the English "
                            "translation as 'sentence', or use --task=transcribe")


def check_model_language(language: str, languages: Collection[str], what: str, fix: str) -> str:
    """The code of ``language`` (a name or code), which must be one of ``languages`` (the codes a model's tokenizer
    has a token for); else a ManifestError naming ``what`` and ``fix``."""
    code = language_code(language)
    if code not in languages:
        raise ManifestError(f"{what}: {language!r} ({code}): the model's tokenizer has no <|{code}|> token (Whisper "
                            f"models before large-v3 have no Cantonese, for one); {fix}")
    return code


SEGMENT_END_SLACK_S = 1.5  # how far past the clip's 'duration' a segment may end (it is read as ending there)


_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def _unquote(value: object, minimum: float = 0.0) -> str:
    """The hint for a number written as a string ("2.88") that would be a valid JSON number unquoted (at least
    ``minimum``): write it without quotes."""
    if not isinstance(value, str) or not _JSON_NUMBER.fullmatch(value.strip()):
        return ""
    number = float(value)
    return ": write it without quotes" if math.isfinite(number) and number >= minimum else ""


def validate_record(obj: Any, where: str) -> None:
    """Check one parsed manifest line; raise ManifestError naming ``where`` (``file:line``), field and fix."""
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    keys = ", ".join(sorted(obj)) or "none"
    audio = obj.get("audio")
    if isinstance(audio, str):  # a datasets to_json() export of a path column
        raise ManifestError(f"{where}: 'audio' is a string ({audio[:60]!r}), not an object; "
                            'write "audio": {"path": "..."}')
    if not isinstance(audio, dict):
        raise ManifestError(f"{where}: 'audio' missing or not an object (keys: {keys}); "
                            'write "audio": {"path": "..."}')
    path = audio.get("path")
    if path is None and audio and all(isinstance(k, str) and k.isdigit() for k in audio):
        raise ManifestError(f"{where}: one object of columns ('audio' holds rows {', '.join(list(audio)[:3])}…): "
                            "pandas' DataFrame.to_json() writes that by default; write one object per line with "
                            "df.to_json(path, orient=\"records\", lines=True, force_ascii=False)")
    if path is not None and not isinstance(path, str):
        raise ManifestError(f"{where}: 'audio.path' must be a string, got {type(path).__name__} {path!r}; give the "
                            "audio file's path in quotes")
    if not path:
        raise ManifestError(f"{where}: 'audio.path' missing or empty; give the audio file's path")
    start, end = audio.get("start_time"), audio.get("end_time")
    for name, v in (("start_time", start), ("end_time", end)):
        if v is not None and (not _is_number(v) or v < 0):
            raise ManifestError(f"{where}: 'audio.{name}' must be a non-negative number of seconds, got {v!r}"
                                f"{_unquote(v)}")
    if start is not None and end is not None and end <= start:
        raise ManifestError(f"{where}: 'audio.end_time' ({end}) must be greater than 'audio.start_time' ({start})")
    if "sentence" not in obj:
        raise ManifestError(f"{where}: 'sentence' missing (keys: {keys}); use \"\" for a no-speech clip")
    if not isinstance(obj["sentence"], str):
        raise ManifestError(f"{where}: 'sentence' must be a string, got {type(obj['sentence']).__name__}")
    if "duration" not in obj:
        raise ManifestError(f"{where}: 'duration' missing (keys: {keys}); add the clip length in seconds")
    duration = obj["duration"]
    if not _is_number(duration) or duration <= 0:
        raise ManifestError(f"{where}: 'duration' must be a positive number of seconds, got {duration!r}"
                            f"{_unquote(duration, minimum=1e-9)}")
    lang = obj.get("language")
    if lang is not None and not isinstance(lang, str):
        raise ManifestError(f"{where}: 'language' must be a string like \"Chinese\" or null, got {lang!r}")
    if lang:  # checked here, not when training first draws the line
        try:
            language_code(lang)
        except ValueError as e:
            raise ManifestError(f"{where}: 'language': {e}; or null to use --language") from None
    sentences = obj.get("sentences")
    if sentences is None:
        return
    if not isinstance(sentences, list):
        raise ManifestError(f"{where}: 'sentences' must be a list of {{start, end, text}} objects")
    prev_start, prev_end = 0.0, 0.0
    for j, seg in enumerate(sentences):
        if not isinstance(seg, dict):
            raise ManifestError(f"{where}: 'sentences[{j}]' must be an object {{\"start\": s, \"end\": s, \"text\": "
                                f"\"...\"}}, got {type(seg).__name__}")
        missing = [k for k in ("start", "end", "text") if k not in seg]
        if missing:
            raise ManifestError(f"{where}: 'sentences[{j}]' has no {' and no '.join(repr(k) for k in missing)} (each "
                                "segment needs start, end and text)")
        s, e, t = seg["start"], seg["end"], seg["text"]
        for key, value in (("start", s), ("end", e)):
            if not _is_number(value):
                raise ManifestError(f"{where}: 'sentences[{j}].{key}' must be a number of seconds, got {value!r}"
                                    f"{_unquote(value)}")
        if s < 0 or e < s:
            raise ManifestError(f"{where}: 'sentences[{j}]' needs 0 <= start <= end (seconds), got {s!r}..{e!r}")
        if s < prev_end - 1e-3:
            fix = ("the segments are not in time order: list them by start time" if e <= prev_start + 1e-3 else
                   "segments must not overlap: fix their times")
            raise ManifestError(f"{where}: 'sentences[{j}]' starts at {s} before the previous one ends ({prev_end}); "
                                + fix)
        sliced = obj["audio"].get("start_time") is not None
        # an end up to SEGMENT_END_SLACK_S past the clip's end is read as its end (the original toolkit's own example
        # has 8.4 s in a 7.37 s clip; load_manifest warns); a start past it, an end further out, or any time past a
        # slice's end is an error
        if e > duration + 0.05 and (sliced or s >= duration or e > duration + SEGMENT_END_SLACK_S):
            what = f"ends at {e} s" if s < duration else f"starts at {s} s"
            raise ManifestError(f"{where}: 'sentences[{j}]' {what}, after the clip's duration {duration} s"
                                + ("; its times count from 'audio.start_time' (the slice's start), not from the "
                                   "file's" if sliced else "; fix its times, or 'duration' if that is wrong"))
        if not isinstance(t, str):
            raise ManifestError(f"{where}: 'sentences[{j}].text' must be a string")
        prev_start, prev_end = s, e


def _resolve_base(path: str, manifest_dir: str, check_audio: bool, where: str) -> int:
    if os.path.isabs(path):
        if check_audio and not os.path.isfile(path):
            raise ManifestError(f"{where}: 'audio.path' {path} does not exist")
        return _BASE_ABSOLUTE
    if not check_audio:
        return _BASE_MANIFEST
    if os.path.isfile(os.path.join(manifest_dir, path)):
        return _BASE_MANIFEST
    if os.path.isfile(path):
        return _BASE_CWD
    folder = next((p for p in (os.path.join(manifest_dir, path), path) if os.path.isdir(p)), None)
    if folder is not None:
        raise ManifestError(f"{where}: 'audio.path' {path} is a folder ({folder}); give one audio file per line")
    shown = repr(path) if path != path.strip() else path  # a space at an end is seen
    if _WINDOWS_DRIVE.match(path) and os.sep != "\\":
        raise ManifestError(f"{where}: 'audio.path' {shown} is a Windows path (drive {path[:2]}); rewrite the paths "
                            "for this machine: their start as the folder the files are in here, \\ as /")
    backslash = "\\" in path and os.sep != "\\"
    raise ManifestError(
        f"{where}: 'audio.path' {shown} not found (looked in {manifest_dir} and in the current directory); "
        "relative paths are resolved against the manifest's folder"
        + ("; it has Windows backslashes: write the path with / (it works on Windows too)" if backslash else "")
    )


_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:[\\/]")


def _audio_file(path: str, base: int, manifest_dir: str, cwd: str) -> str:
    """A line's 'audio.path' resolved against what :func:`_resolve_base` found it relative to."""
    if base == _BASE_MANIFEST:
        return os.path.join(manifest_dir, path)
    if base == _BASE_CWD:
        return os.path.join(cwd, path)
    return path


def _listed(messages: list[str]) -> str:
    """The first ``MAX_INVALID_LISTED`` of ``messages``, a line each, and how many more."""
    more = len(messages) - MAX_INVALID_LISTED
    return "\n".join(messages[:MAX_INVALID_LISTED]) + (f"\n... and {more} more" if more > 0 else "")


def _which_lines(numbers: list[int], shown: int = 5) -> str:
    """"line 3" or "lines 3, 7, … " (the first ``shown``) for a log message."""
    listed = ", ".join(map(str, numbers[:shown])) + (" …" if len(numbers) > shown else "")
    return f"line{'s' if len(numbers) > 1 else ''} {listed}"


def _record_from_obj(obj: dict[str, Any], path: str) -> Record:
    audio = obj["audio"]
    sentences = obj.get("sentences")
    return Record(
        audio_path=path,
        sentence=clean_text(obj["sentence"]),
        duration=float(obj["duration"]),
        start_time=audio.get("start_time"),
        end_time=audio.get("end_time"),
        language=obj.get("language"),
        sentences=None if sentences is None else tuple(
            Segment(float(s["start"]), min(float(s["end"]), float(obj["duration"])), clean_text(s["text"], lead=True))
            for s in sentences
        ),
    )


def label_token_count(obj: dict[str, Any], encode: Callable[[str], Sequence[int]], timestamps: bool) -> int:
    """Upper bound on the decoder label length of a line: special tokens + text (+ 2 timestamps per segment)."""
    if timestamps and obj.get("sentences"):
        return LABEL_SPECIAL_TOKENS + sum(len(encode(s["text"])) + 2 for s in obj["sentences"])
    return LABEL_SPECIAL_TOKENS + len(encode(obj["sentence"]))


class RecordSource(Sequence[Record]):
    """What training and evaluation read: records by index (parsed on demand), each item's duration in seconds
    (``durations``, numpy) and its place in the source for error messages (``location``). Implemented by the
    jsonlines ``Manifest`` and by ``utils.hf_data.DatasetSource``."""

    durations: np.ndarray
    timestamped: int = 0  # items with a non-empty 'sentences' list (timestamped segments to train on)

    def record(self, index: int) -> Record:
        """The record of item ``index`` (0 <= index < len)."""
        raise NotImplementedError

    def location(self, index: int) -> str:
        raise NotImplementedError

    def sentences(self) -> list[str]:
        """Every item's 'sentence', in order (no audio read)."""
        return [self.record(i).sentence for i in range(len(self))]

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.record(index)

    def __iter__(self) -> Iterator[Record]:
        for i in range(len(self)):
            yield self.record(i)

    def total_hours(self) -> float:
        return float(self.durations.sum()) / 3600.0


class Manifest(RecordSource):
    """A validated manifest held as numpy columns; ``manifest[i]`` parses line ``i`` on demand.

    Memory is about 17 bytes per kept line (offset, duration, base flag), not a dict per line.
    """

    def __init__(self, path: str | os.PathLike, offsets: np.ndarray, durations: np.ndarray, bases: np.ndarray,
                 line_numbers: np.ndarray, timestamped: int = 0, corrected: dict[int, float] | None = None) -> None:
        self.path = os.fspath(path)
        self.corrected = corrected or {}  # kept items whose 'duration' was wrong: their audio's length (seconds)
        self.timestamped = timestamped
        self.manifest_dir = os.path.dirname(os.path.abspath(self.path))
        self.offsets = offsets
        self.durations = durations
        self.bases = bases
        self.line_numbers = line_numbers
        self._cwd = os.getcwd()
        self._file = None
        self._map: mmap.mmap | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def _mapped(self) -> mmap.mmap:
        if self._map is None:  # opened lazily, so a Manifest pickles to DataLoader workers
            self._file = open(self.path, "rb")
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def raw(self, index: int) -> dict[str, Any]:
        """The parsed JSON object of kept line ``index``."""
        m = self._mapped()
        start = int(self.offsets[index])
        end = m.find(b"\n", start)
        return json.loads(m[start: end if end != -1 else len(m)])

    def record(self, index: int) -> Record:
        obj = self.raw(index)
        if index in self.corrected:
            obj["duration"] = self.corrected[index]
        return _record_from_obj(obj, _audio_file(obj["audio"]["path"], int(self.bases[index]), self.manifest_dir,
                                                 self._cwd))

    def location(self, index: int) -> str:
        """``file:line`` of kept item ``index``, for error messages."""
        return f"{self.path}:{int(self.line_numbers[index])}"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = state["_map"] = None
        return state


# the bundled demo corpus (tools/make_demo_data.py); dataset/{train,dev,test}.json are aishell.py's
DEMO_MANIFESTS = ("dataset/demo/train.json", "dataset/demo/test.json")


def missing_manifest_message(path: str | os.PathLike) -> str:
    """The error for a manifest path that is not a file, with how to make one (and where the demo corpus lies when
    ``path`` is one of aishell.py's default manifests)."""
    p = Path(path)
    demo = (f"; the bundled demo corpus is {' and '.join(DEMO_MANIFESTS)}"
            if p.parent.name == "dataset" and p.name in ("train.json", "dev.json", "test.json") else "")
    return f"{path}: manifest file not found (make AISHELL-1's with aishell.py, or see the README's data format{demo})"


MAX_INVALID_LISTED = 10  # invalid manifest lines named in one error
MAX_PROBES = 20  # files check_clips hands to ffprobe (an m4a, a .wav libsndfile cannot read: ~0.1 s each)
MAX_BOTH_CHECKED = 1000  # lines whose relative path is looked for in the working directory too (a stat each)
MAX_LEFT_OUT_CHECKED = 50  # clips left out by their 'duration' whose header is read to check it


def load_manifest(
    path: str | os.PathLike,
    *,
    min_duration: float = 0.0,
    max_duration: float = 30.0,
    check_audio: bool = True,
    skip_invalid: bool = False,
    encode: Callable[[str], Sequence[int]] | None = None,
    timestamps: bool = False,
    max_label_tokens: int = MAX_LABEL_TOKENS,
    show_progress: bool = True,
    languages: Collection[str] | None = None,
) -> Manifest:
    """Read and validate a jsonlines manifest once.

    Args:
        path: the manifest file.
        min_duration, max_duration: clips outside [min, max] seconds are left out (counted and logged);
            max_duration <= 0 disables the upper bound.
        check_audio: check every audio file exists (and fix the base of relative paths).
        skip_invalid: leave out invalid lines (each logged, all counted) instead of failing (naming the first
            ``MAX_INVALID_LISTED`` of them).
        encode: text → token ids; when given, lines whose label exceeds ``max_label_tokens`` are invalid.
        timestamps: count labels as timestamp labels (from ``sentences``) where present.
        languages: the language codes the model has a token for; a line in another language is invalid (checked
            here, not when training first draws the line: Cantonese on whisper-base failed there, in a DataLoader
            worker).

    Raises:
        ManifestError: the file is missing or empty, or a line is invalid (unless ``skip_invalid``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ManifestError(missing_manifest_message(path))
    manifest_dir = os.path.dirname(os.path.abspath(path))
    # array.array keeps 4-8 bytes per value while growing (a list would hold a Python object each)
    offsets, durations = array("q"), array("f")
    bases, line_numbers = array("B"), array("i")
    skipped_invalid = skipped_short = skipped_long = timestamped = 0
    left_out_lines: list[int] = []  # the first lines left out by the duration bounds, for the log
    past_end: list[int] = []  # lines with a segment ending after the clip's duration (read as ending there)
    other_text: list[int] = []  # lines whose 'sentences' texts say something else than their 'sentence'
    textless: list[int] = []  # lines with a segment of no text, their 'sentence' not empty
    hidden: list[int] = []  # lines whose texts hold invisible characters or odd spaces (read as clean_text makes them)
    wrong_duration: list[str] = []  # lines left out by their 'duration' that their audio does not have
    corrected: dict[int, float] = {}  # kept item → its audio's length, where 'duration' was wrong and left it out
    corrected_lines: list[str] = []
    in_both: list[int] = []  # relative paths of a file both in the manifest's folder and in the working directory
    by_base = {_BASE_MANIFEST: array("i"), _BASE_CWD: array("i")}  # lines whose relative path each base resolved
    elsewhere = os.path.realpath(os.getcwd()) != os.path.realpath(manifest_dir)
    checked_left_out = 0  # of the first MAX_LEFT_OUT_CHECKED left out, whose headers were read
    invalid: list[ManifestError] = []  # the first invalid lines (without skip_invalid: raised together at the end)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if f.read(2) in (b"\xff\xfe", b"\xfe\xff"):  # Notepad's "Unicode": every line was "not UTF-8 / not JSON"
            raise ManifestError(f"{path}: saved as UTF-16; save the manifest as UTF-8")
        f.seek(0)
        first = next((x for x in (line.removeprefix(b"\xef\xbb\xbf").strip() for line in f) if x), b"")
        if first.startswith(b"[") or first == b"{":  # json.dump(list): one error per line (112 for 12 clips)
            raise _not_jsonlines(path, array=first.startswith(b"["))
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"reading {os.path.basename(path)}",
                                     disable=not show_progress or size < 50_000_000) as bar:
        offset = 0
        for lineno, line in enumerate(f, start=1):
            line_offset, offset = offset, offset + len(line)
            bar.update(len(line))
            if lineno == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")  # a BOM (Notepad's UTF-8) before a blank first line
            if line[:1] != b"{" and not line.decode("utf-8", "replace").strip().strip("\x1a"):
                continue  # blank: white space (U+3000 too), the Ctrl-Z that DOS editors end a file with
            where = f"{path}:{lineno}"
            try:
                text = line.rstrip(b"\r\n\x1a")  # with its newline a line cut short was "column 1" (of the next line)
                try:
                    obj = json.loads(text)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    if isinstance(e, UnicodeDecodeError):  # GBK, or UTF-16 (json.loads guesses it from the bytes)
                        raise ManifestError(f"{where}: not UTF-8 text (byte {e.start} of the line); save the "
                                            "manifest as UTF-8") from e
                    # the parser's own "line 1 column 9" counts inside this line: said as the column only
                    cut = (": the line ends early" if e.pos >= len(text.decode("utf-8", "replace"))
                           or e.msg.startswith("Unterminated string") else "")
                    raise ManifestError(f"{where}: not valid JSON ({e.msg}, column {e.colno}{cut}); each line must "
                                        "be one JSON object") from e
                validate_record(obj, where)
                if languages is not None and obj.get("language"):
                    check_model_language(obj["language"], languages, f"{where}: 'language'",
                                         "set the line's 'language' to one it has, or null to use --language")
                base = _resolve_base(obj["audio"]["path"], manifest_dir, check_audio, where)
                if encode is not None:
                    n = label_token_count(obj, encode, timestamps)
                    if n > max_label_tokens:
                        raise ManifestError(
                            f"{where}: 'sentence' is {n} tokens with special tokens, more than Whisper's "
                            f"{max_label_tokens}; split the clip into shorter pieces"
                        )
            except ManifestError as e:
                skipped_invalid += 1
                if not skip_invalid:  # read on: every invalid line is named at once, not one per attempt
                    if len(invalid) < MAX_INVALID_LISTED:
                        invalid.append(e)
                    continue
                logger.warning("skipping invalid line: %s", e)
                continue
            duration = float(obj["duration"])
            if duration < min_duration or 0 < max_duration < duration:
                wrong, seconds = None, None
                if check_audio and checked_left_out < MAX_LEFT_OUT_CHECKED:  # a good clip lost to a wrong number
                    checked_left_out += 1
                    wrong, seconds = _wrong_duration(obj, base, manifest_dir, duration)
                if wrong and min_duration <= seconds and not 0 < max_duration < seconds:  # kept, at its real length
                    corrected[len(offsets)] = duration = seconds
                    corrected_lines.append(f"{where}: {wrong}")
                else:
                    if len(left_out_lines) < 5:
                        left_out_lines.append(lineno)
                    if wrong:
                        wrong_duration.append(f"{where}: {wrong}")
                    if duration < min_duration:
                        skipped_short += 1
                    else:
                        skipped_long += 1
                    continue
            offsets.append(line_offset)
            durations.append(duration)
            bases.append(base)
            line_numbers.append(lineno)
            if check_audio and base in by_base and elsewhere:
                by_base[base].append(lineno)
                if (base == _BASE_MANIFEST and len(offsets) <= MAX_BOTH_CHECKED
                        and os.path.isfile(obj["audio"]["path"])):
                    in_both.append(lineno)
            timestamped += bool(obj.get("sentences"))
            if has_hidden_characters(obj["sentence"]) or any(has_hidden_characters(seg["text"])
                                                            for seg in obj.get("sentences") or ()):
                hidden.append(lineno)
            if any(seg["end"] > duration + 0.05 for seg in obj.get("sentences") or ()):
                past_end.append(lineno)
            if timestamps and obj.get("sentences") and not _same_text(obj["sentences"], obj["sentence"]):
                other_text.append(lineno)
            elif timestamps and obj["sentence"].strip() and any(not clean_text(seg["text"])
                                                                for seg in obj.get("sentences") or ()):
                textless.append(lineno)  # the texts make 'sentence', yet one stretch is taught as silence
    if invalid:
        raise_invalid(path, invalid, skipped_invalid, "lines")
    if past_end:
        logger.warning("%s: %d line(s) with a segment of 'sentences' ending after the clip's 'duration' (%s): read "
                       "as ending at the clip's end; fix its 'end', or 'duration' if that is wrong", path,
                       len(past_end), _which_lines(past_end))
    if other_text:
        logger.warning("%s: %d line(s) whose 'sentences' texts do not make their 'sentence' (%s): with timestamps "
                       "the model learns the 'sentences' text, and the eval scores 'sentence'; make them say the same",
                       path, len(other_text), _which_lines(other_text))
    if textless:
        logger.warning("%s: %d line(s) with a timed segment of no text while 'sentence' has words (%s): the model "
                       "learns silence there and the words in the other segments' times; leave silent stretches out "
                       "of 'sentences'", path, len(textless), _which_lines(textless))
    if hidden:
        logger.info("%s: %d line(s) with invisible characters (a BOM, a zero-width space) or spaces other than ASCII's "
                    "(U+3000, a no-break space) in their text (%s): read without them, the spaces as plain ones",
                    path, len(hidden), _which_lines(hidden))
    _warn_two_bases(path, in_both, by_base[_BASE_MANIFEST], by_base[_BASE_CWD])
    if corrected_lines:
        logger.warning("%s: %d clip(s) whose 'duration' is not their audio's length and would have left them out: "
                       "read with the audio's length\n%s", path, len(corrected_lines), _listed(corrected_lines))
    if wrong_duration:
        logger.warning("%s: clips dropped by a 'duration' that is not their audio's length (of the first %d such "
                       "clips checked):\n%s", path, checked_left_out, _listed(wrong_duration))
    if not offsets and skipped_invalid + skipped_short + skipped_long == 0:
        raise ManifestError(f"{path}: manifest is empty; expected one JSON object per line")
    log_left_out(path, short=skipped_short, long=skipped_long, invalid=skipped_invalid, min_duration=min_duration,
                 max_duration=max_duration, what="lines", lines=left_out_lines)
    if not offsets:
        raise ManifestError(f"{path}: no usable lines left after filtering (duration bounds "
                            f"{min_duration}..{max_duration} s, {skipped_invalid} invalid)")
    return Manifest(
        path,
        np.frombuffer(offsets, dtype=np.int64),
        np.frombuffer(durations, dtype=np.float32),
        np.frombuffer(bases, dtype=np.uint8),
        np.frombuffer(line_numbers, dtype=np.int32),
        timestamped,
        corrected,
    )


def _not_jsonlines(path: str, array: bool) -> ManifestError:
    """The error for a manifest written as one JSON array or as pretty-printed objects (every line was invalid)."""
    if not array:
        return ManifestError(f"{path}: holds pretty-printed JSON objects (one spread over several lines); a manifest "
                             "is jsonlines: write each object on one line (json.dumps(obj, ensure_ascii=False))")
    return ManifestError(
        f"{path}: holds a JSON array; a manifest is jsonlines: one JSON object per line. "
        "Convert it: python -c \"import json,sys; [print(json.dumps(o, ensure_ascii=False)) for o in "
        f"json.load(open(sys.argv[1], encoding='utf-8'))]\" {shlex.quote(path)} > fixed.jsonl")


def _warn_two_bases(path: str, in_both: Sequence[int], in_manifest_dir: Sequence[int], in_cwd: Sequence[int]) -> None:
    """Warn where relative audio paths could name other files than meant: a path of a file both in the manifest's
    folder and in the working directory (the folder's is read; looked for in the first ``MAX_BOTH_CHECKED`` lines),
    or some lines' files found in one, some in the other (a user's cwd-relative manifest read one clip from the
    manifest's folder, CER 0.57 without a word)."""
    if in_both:
        logger.warning("%s: %d relative 'audio.path'(s) name a file both in the manifest's folder and in the current "
                       "directory (%s): the manifest folder's are read; write absolute paths if the others are meant",
                       path, len(in_both), _which_lines(list(in_both)))
    if in_manifest_dir and in_cwd:
        logger.warning("%s: of the relative 'audio.path's, %d were found in the manifest's folder (%s) and %d only in "
                       "the current directory (%s); check that they are the files meant", path, len(in_manifest_dir),
                       _which_lines(list(in_manifest_dir), 3), len(in_cwd), _which_lines(list(in_cwd), 3))


def _wrong_duration(obj: dict[str, Any], base: int, manifest_dir: str,
                    duration: float) -> tuple[str | None, float | None]:
    """What is wrong with a line's 'duration' by its audio's header, with the clip's length in seconds ((None, None)
    when they agree or the header cannot be read)."""
    from utils.audio import ProbeBudget, slice_check

    path = _audio_file(obj["audio"]["path"], base, manifest_dir, os.getcwd())
    _, seconds = slice_check(path, obj["audio"].get("start_time"), obj["audio"].get("end_time"),
                             probes=ProbeBudget(0))  # the header only: no ffprobe while reading the manifest
    if seconds is None or not duration_mismatch(seconds, duration):
        return None, None
    return f"{path}: 'duration' says {duration:.2f} s, the audio is {seconds:.2f} s; fix 'duration'", seconds


def raise_invalid(source: str | os.PathLike, invalid: Sequence[ManifestError], count: int, what: str) -> NoReturn:
    """Raise one error naming every invalid item at once (``invalid``: the first ``MAX_INVALID_LISTED`` of the
    ``count``, e.g. lines or rows): the first one's own error when it is the only one."""
    if count == 1:
        raise invalid[0]
    more = count - len(invalid)
    raise type(invalid[0])(f"{source}: {count} invalid {what}; fix them (or remove them):\n"
                           + "\n".join(str(e) for e in invalid)
                           + (f"\n... and {more} more" if more else "")) from invalid[0]


def _same_text(sentences: Sequence[dict[str, Any]], sentence: str) -> bool:
    """Whether the texts of a line's ``sentences`` make its ``sentence`` (punctuation, case and spaces aside)."""

    joined = "".join(seg["text"] for seg in sentences)
    return normalize_text(joined).replace(" ", "") == normalize_text(sentence).replace(" ", "")


def log_left_out(name: str, *, short: int, long: int, invalid: int, min_duration: float, max_duration: float,
                 what: str, lines: Sequence[int] = ()) -> None:
    """Log what loading a manifest or dataset left out: clips outside the duration bounds (``lines``: the first
    line numbers of those, where known), invalid ``what``."""
    if short or long:
        more = " …" if short + long > len(lines) else ""
        where = (f" (line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))}{more}: check their "
                 "'duration' against the audio)" if lines else "")
        # clips longer than the window are data lost without a word at INFO (a user's 39 s clip was): a warning
        level = logging.WARNING if long else logging.INFO
        fix = ""
        if long:
            fix = f"; cut the longer ones into clips of at most {max_duration:g} s (audio.start_time/end_time)"
            if max_duration < 30:
                fix += " or raise the bound (--max_audio_len, up to 30 s: Whisper's window)"
        logger.log(level, "%s: left out %d clips shorter than %.2f s and %d longer than %.2f s%s%s",
                   name, short, min_duration, long, max_duration, where, fix)
    if invalid:
        logger.warning("%s: skipped %d invalid %s (--skip_invalid)", name, invalid, what)


def relative_audio_path(audio_path: str | os.PathLike, manifest_path: str | os.PathLike) -> str:
    """Path to write into a manifest: relative to the manifest's folder when the audio lies below it."""
    audio = Path(audio_path).resolve()
    base = Path(manifest_path).resolve().parent
    try:
        return audio.relative_to(base).as_posix()
    except ValueError:
        return str(audio)




def duration_mismatch(seconds: float, duration: float) -> bool:
    """Whether a manifest's 'duration' is further from the audio's ``seconds`` than rounding and resampling explain
    (0.5 s, or a tenth of the clip for clips over 5 s)."""
    return abs(seconds - duration) > max(0.5, 0.1 * duration)


@dataclass
class ClipReport:
    """What :func:`check_clips` found: ``problems`` (clips that cannot be read as given: an error), ``mismatched``
    ('duration' disagrees with the audio), ``repeated`` (a line repeating an earlier line's clip) and ``wordless``
    (a sentence of punctuation only: scored like a no-speech clip, trained as punctuation): warnings."""

    problems: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)
    wordless: list[str] = field(default_factory=list)


def check_clips(records: Iterable[Record], locations: Iterable[str], *,
                max_seconds: float | None = None) -> ClipReport:
    """Check the clips of audio files against their files' headers before a model loads, instead of while decoding
    or hours into training: no samples, a start or an end past the end of the audio (:func:`utils.audio.slice_check`),
    longer than ``max_seconds`` (where given: what training can hold), a 'duration' more than
    :func:`duration_mismatch` from the audio's length (it selects clips by length and packs training windows), and
    lines that repeat an earlier line's clip (same file, start and end). One line each names the data's line
    (``locations``), the file and the fix. A dataset's clips that hold their own bytes are not checked here (they
    are read as they are used); files whose header libsndfile cannot read (m4a, video) are read by ffprobe, the
    first ``MAX_PROBES`` of them."""
    from utils.audio import ProbeBudget, slice_check

    report = ClipReport()
    probes = ProbeBudget(MAX_PROBES)
    first_seen: dict[tuple[str, float | None, float | None], str] = {}
    lengths: dict[str, tuple[str | None, float | None]] = {}  # each file's header, read once
    small = isinstance(records, Sequence) and len(records) < 5000  # a few seconds' check: no bar
    for record, where in zip(tqdm(records, desc="checking audio headers", unit="clip", disable=small), locations):
        if record.sentence.strip() and not normalize_text(record.sentence):
            report.wordless.append(f"{where}: 'sentence' {record.sentence!r} holds no words; write the words said, or "
                                   "\"\" for a clip without speech")
        if record.audio_bytes is not None:
            continue
        key = (os.path.normpath(record.audio_path), record.start_time, record.end_time)  # "./a.wav" is "a.wav"
        if key in first_seen:
            report.repeated.append(f"{where}: the same clip as {first_seen[key]} ({record.audio_path}"
                                   f"{_span(record)}); remove the line unless it is meant to count twice")
        else:
            first_seen[key] = where
        problem, seconds = slice_check(record.audio_path, record.start_time, record.end_time, probes=probes,
                                       lengths=lengths)
        if problem is None and seconds is not None and max_seconds is not None and seconds > max_seconds + 0.01:
            problem = (f"the clip is {seconds:.2f} s ('duration' says {record.duration:.2f} s), longer than the "
                       f"{max_seconds:.0f} s window training can hold; cut it (audio.start_time/end_time)")
        if problem:
            report.problems.append(f"{where}: {record.audio_path}: {problem}; fix the line or remove it")
        elif seconds is not None and duration_mismatch(seconds, record.duration):
            report.mismatched.append(f"{where}: {record.audio_path}{_span(record)}: 'duration' says "
                                     f"{record.duration:.2f} s, the audio is {seconds:.2f} s; fix 'duration'")
    if probes.skipped:
        logger.info("%d more files whose header libsndfile cannot read (m4a, video, another format named .wav) were "
                    "not probed with ffprobe: they are checked when decoded", probes.skipped)
    return report


def _span(record: Record) -> str:
    if record.start_time is None and record.end_time is None:
        return ""
    return f" {record.start_time or 0.0:g}-{'end' if record.end_time is None else f'{record.end_time:g}'} s"


def log_clip_warnings(report: ClipReport, name: str, *, shown: int = 3) -> None:
    """Log ``report``'s warnings for the data ``name``: a count, then the first ``shown`` of each kind."""
    for lines, what in ((report.mismatched, "have a 'duration' that disagrees with their audio"),
                        (report.repeated, "repeat an earlier line's clip"),
                        (report.wordless, "have a sentence without words (scored like a clip without speech)")):
        if lines:
            logger.warning("%s: %d line(s) %s:\n%s%s", name, len(lines), what, "\n".join(lines[:shown]),
                           f"\n... and {len(lines) - shown} more" if len(lines) > shown else "")
