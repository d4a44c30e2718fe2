"""Pure helpers of the web UI (streamlit_whisper.py), testable without streamlit.

Model discovery under ``models/``, upload validation, uploaded bytes → waveform, transcription with
chunk-level progress, and the tables/downloads the page shows. Nothing here imports streamlit.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.audio import AUDIO_EXTENSIONS, SAMPLE_RATE, AudioLoadError
from utils.audio import decode_audio_bytes as _decode_upload
from utils.languages import AUTO_LANGUAGE, joins_unspaced
from utils.models import model_folder_kind
from utils.subtitles import format_timestamp, to_json, to_srt, to_txt, to_vtt
from utils.transcribe import DecodeOptions, Transcriber, Transcript

logger = logging.getLogger(__name__)

MAX_UPLOAD_MB = 200  # MB; also server.maxUploadSize in .streamlit/config.toml
UPLOAD_TYPES: tuple[str, ...] = tuple(ext.lstrip(".") for ext in AUDIO_EXTENSIONS)  # wav, flac, mp3, ...
HUB_MODELS = (  # offered in the model list; they need the Hugging Face hub (or its cache)
    "openai/whisper-tiny",
    "openai/whisper-small",
    "openai/whisper-medium",
    "openai/whisper-large-v3",
    "openai/whisper-large-v3-turbo",
)


class UploadError(ValueError):
    """An uploaded file that is not accepted (type, size, empty); the message says why and what works."""


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # openai/whisper-small: not a path to check


class ModelPathError(ValueError):
    """A model path typed into the page that the page does not load (a folder outside ``--models_dir``)."""


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model list.

    Attributes:
        label: what the page shows.
        path: what ``load_transcriber`` gets (folder, hub id or packaged name).
        backend: the backend the model needs ("transformers" or "ct2"), None when both work.
        source: "local" (a folder under models/), "packaged" (works offline) or "hub".
    """

    label: str
    path: str
    backend: str | None
    source: str


@dataclass(frozen=True)
class Download:
    """A file offered for download: ``data`` is UTF-8 text."""

    label: str
    file_name: str
    data: str
    mime: str


def discover_models(models_dir: str | os.PathLike, max_depth: int = 2) -> list[ModelChoice]:
    """Whisper model folders under ``models_dir`` (merged fine-tunes, imported or CTranslate2 models).

    A folder counts when it holds a transformers Whisper model (config.json with model_type
    "whisper" and weights) or a CTranslate2 model (model.bin); folders below a model are not
    searched. LoRA adapters (no full weights) are not listed: merge them with merge_lora.py first.

    Args:
        models_dir: folder to search; a missing folder gives an empty list.
        max_depth: levels below ``models_dir`` searched (1 = its direct subfolders).

    Returns:
        Choices sorted by path, labelled ``models/NAME (transformers|ct2)``.
    """
    root = Path(models_dir)
    found: list[ModelChoice] = []

    def visit(folder: Path, depth: int) -> None:
        if depth > max_depth:
            return
        try:
            subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError as e:
            logger.warning("%s: cannot list (%s)", folder, e)
            return
        for sub in subfolders:
            backend = model_folder_kind(sub)
            if backend is None:
                visit(sub, depth + 1)
            else:
                found.append(ModelChoice(f"{sub} ({backend})", str(sub), backend, "local"))

    if root.is_dir():
        visit(root, 1)
    return found


def model_choices(models_dir: str | os.PathLike, preselect: str | None = None, *,
                  prefer_ct2: bool = False, backend: str | None = None) -> list[ModelChoice]:
    """Everything the model list offers: ``preselect`` first (if given), local folders, packaged, hub ids. With
    ``prefer_ct2`` (a CPU, where CTranslate2 int8 is the faster backend) a CTranslate2 folder comes before the
    transformers folder it was exported from (``merge_lora.py --ct2=True``: ``X`` and ``X-ct2``). A ``preselect``
    folder that does not run on ``backend`` (the --backend asked for) gives way to its copy that does (``X`` /
    ``X-ct2``), if listed."""
    from utils.models import OFFLINE_MODELS

    choices = discover_models(models_dir)
    if prefer_ct2:
        paths = {c.path for c in choices}
        exported = {c.path for c in choices if c.backend != "ct2" and f"{c.path}-ct2" in paths}
        first = [c for c in choices if c.backend == "ct2" and c.path.removesuffix("-ct2") in exported]
        choices = first + [c for c in choices if c not in first]
    choices += [ModelChoice(f"{name} (离线内置 packaged)", name, None, "packaged") for name in OFFLINE_MODELS]
    choices += [ModelChoice(f"{name} (hub)", name, "transformers", "hub") for name in HUB_MODELS
                if name not in OFFLINE_MODELS]
    if preselect:
        same = [c for c in choices if c.path == preselect or Path(c.path) == Path(preselect)]
        if same and backend and same[0].backend not in (None, backend):
            copies = {Path(f"{Path(preselect)}-ct2"), Path(str(Path(preselect)).removesuffix("-ct2"))}
            same = [c for c in choices if c.backend == backend and Path(c.path) in copies] or same
        if same:
            choices = same[:1] + [c for c in choices if c is not same[0]]
        else:
            choices.insert(0, ModelChoice(preselect, preselect, None, "argument"))
    return choices


def custom_model_choice(text: str, models_dir: str | os.PathLike) -> ModelChoice:
    """The model typed into the page: a hub id or packaged name, or a folder inside ``models_dir``, offered with
    the backend its files need. Other paths of the server are not the page's visitors to load, to have listed in an
    error message, or to learn exist: any text that is not a hub id, or that names something here, must lie under
    ``models_dir`` (symbolic links in it count as inside); the operator gives others with ``--model_path`` or
    ``--models_dir``.

    Raises:
        ModelPathError: ``text`` is a path outside ``models_dir``.
    """
    path = Path(text).expanduser()
    if _HUB_ID.fullmatch(text) and not path.exists():  # a hub id or packaged name
        return ModelChoice(text, text, None, "custom")
    root = os.path.abspath(models_dir)
    inside = os.path.abspath(path)  # "..", not links, resolved: the page lists linked folders under models_dir too
    if os.path.commonpath([root, inside]) != root:
        raise ModelPathError(f"{text}: 网页只加载 {models_dir}/ 下的模型文件夹 (the page loads model folders under "
                             f"{models_dir}/ only); 其他文件夹请在启动时指定 (give another folder when starting it: "
                             f"streamlit run streamlit_whisper.py -- --model_path=<folder> or --models_dir=<folder>)")
    return ModelChoice(str(path), str(path), model_folder_kind(path), "custom")


def pick_audio_input(uploaded: bool, recorded: bool, last: str | None) -> str | None:
    """Which input the page transcribes: "upload", "record" or None (neither). With both, the one the user made
    last (``last``: the input that changed last, "upload" or "record"; a recording made while an earlier upload
    was still there was ignored)."""
    if uploaded and recorded:
        return "record" if last == "record" else "upload"
    return "upload" if uploaded else "record" if recorded else None


def check_upload(name: str, size_bytes: int, max_mb: float = MAX_UPLOAD_MB) -> None:
    """Accept an upload by name and size before decoding it.

    Raises:
        UploadError: empty file, too large, or a file type that is not audio.
    """
    ext = Path(name).suffix.lower().lstrip(".")
    if ext not in UPLOAD_TYPES:
        raise UploadError(f"{name}: 不支持的文件类型 (unsupported file type '.{ext}'); "
                          f"请上传音频 (upload audio): {', '.join(UPLOAD_TYPES)}")
    if size_bytes == 0:
        raise UploadError(f"{name}: 文件为空 (empty file, 0 bytes)")
    if size_bytes > max_mb * 1024 * 1024:
        raise UploadError(f"{name}: 文件过大 (file too large): {size_bytes / 1024 / 1024:.1f} MB > "
                          f"{max_mb:g} MB 上限 (limit); 请先切分或压缩 (split or compress it, e.g. "
                          f"ffmpeg -i IN -ac 1 -ar 16000 -b:a 32k OUT.mp3)")


def decode_audio_bytes(data: bytes, name: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode an uploaded or recorded file to a float32 mono waveform of shape (samples,)
    (:func:`utils.audio.decode_audio_bytes`, with the page's bilingual message).

    Raises:
        AudioLoadError: the bytes are not decodable audio; the message names ``name``, not a temp file.
    """
    try:
        return _decode_upload(data, name, sample_rate)
    except AudioLoadError as e:
        reason = str(e).split(": ", 1)[-1]
        raise AudioLoadError(f"{name}: 无法解码为音频 (cannot decode as audio: {reason})") from e


def waveform_envelope(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, points: int = 1000
                      ) -> dict[str, np.ndarray]:
    """Min/max envelope of a waveform for plotting, at most ``points`` columns.

    Args:
        audio: float32 waveform, shape (samples,).

    Returns:
        ``{"time_s": (n,), "min": (n,), "max": (n,)}`` with n ≤ points; time is each column's start in seconds.
    """
    if audio.size == 0:
        empty = np.zeros(0, dtype=np.float32)
        return {"time_s": empty, "min": empty, "max": empty}
    hop = max(1, int(np.ceil(audio.size / points)))
    n = int(np.ceil(audio.size / hop))
    padded = np.pad(audio, (0, n * hop - audio.size), mode="edge").reshape(n, hop)
    return {"time_s": np.arange(n, dtype=np.float32) * hop / sample_rate,
            "min": padded.min(axis=1), "max": padded.max(axis=1)}


def segment_rows(transcript: Transcript) -> list[dict[str, Any]]:
    """The segment table: one row per segment with ``HH:MM:SS.mmm`` start/end and the text."""
    return [{"开始 start": format_timestamp(s.start, "."), "结束 end": format_timestamp(s.end, "."),
             "文本 text": s.text} for s in transcript.segments]


def words_html(transcript: Transcript) -> str:
    """The transcript's words as HTML spans shaded by the model's confidence (green sure, red unsure), each with
    its time and probability as a tooltip; empty when the transcript has no word timestamps."""
    import html

    out, last = "", ""  # spans spaced like the text: none between Chinese characters (joins_unspaced)
    for segment in transcript.segments:
        for w in segment.words:
            word = w.word.strip()
            if not word:
                continue
            hue = int(120 * max(0.0, min(1.0, w.probability)))
            out += ("" if not last or joins_unspaced(last, word[0]) else " ") + (
                f'<span title="{w.start:.2f}–{w.end:.2f} s, p={w.probability:.2f}" '
                f'style="background:hsl({hue},75%,82%);border-radius:3px;padding:0 2px;margin:1px">'
                f"{html.escape(word)}</span>")
            last = word[-1]
    return out


def transcript_downloads(transcript: Transcript, stem: str) -> list[Download]:
    """TXT, SRT, VTT and JSON renderings of a transcript, named ``stem.<ext>``."""
    stem = Path(stem).stem or "transcript"
    return [
        Download("TXT", f"{stem}.txt", to_txt(transcript), "text/plain"),
        Download("SRT", f"{stem}.srt", to_srt(transcript), "application/x-subrip"),
        Download("VTT", f"{stem}.vtt", to_vtt(transcript), "text/vtt"),
        Download("JSON", f"{stem}.json", to_json(transcript), "application/json"),
    ]


def transcribe_with_progress(engine: Transcriber, audio: np.ndarray, options: DecodeOptions,
                             on_progress: Callable[[float, str], None] | None = None) -> Transcript:
    """Transcribe a waveform with the engine's segment iterator, reporting progress as segments arrive.

    Args:
        audio: float32 waveform of shape (samples,) at 16 kHz.
        on_progress: called with a fraction in [0, 1] and a short message (before decoding, after each
            segment, at the end).
    """
    report = on_progress or (lambda fraction, message: None)
    duration = audio.size / SAMPLE_RATE
    report(0.0, f"转写中 (transcribing {duration:.1f} s)…")
    segments, info = engine.transcribe_segments(audio, options)
    if info.chunks == 0:
        report(1.0, "未检测到语音 (no speech found)")
        return Transcript.collect(segments, info)
    collected = []
    for segment in segments:
        collected.append(segment)
        report(min(segment.end / max(info.duration, 1e-9), 1.0),
               f"已转写 (transcribed) {segment.end:.0f}/{info.duration:.0f} s")
    report(1.0, "完成 (done)")
    return Transcript.collect(collected, info)


def sentiment_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-text rows of :func:`utils.sentiment.analyze_sentiment`'s report for a table."""
    rows = []
    for r in report["results"]:
        row: dict[str, Any] = {}
        if "start" in r and "end" in r:
            row["开始 start"] = format_timestamp(r["start"], ".")
            row["结束 end"] = format_timestamp(r["end"], ".")
        row.update({"情感 label": r["label"], "积极度 score": r["score"], "文本 text": r["text"]})
        rows.append(row)
    return rows


def language_options(codes: Sequence[str] = ("zh", "en", "yue", "ja", "ko")) -> list[str | None]:
    """Language choices for the page: None (the model's fine-tuned language, else detected), "auto" (detected),
    then Whisper codes."""
    return [None, AUTO_LANGUAGE, *codes]
