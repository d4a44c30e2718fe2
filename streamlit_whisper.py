"""Web UI: upload or record audio, transcribe it with a Whisper model, download TXT/SRT/VTT/JSON.

    streamlit run streamlit_whisper.py
    streamlit run streamlit_whisper.py -- --model_path models/whisper-base-finetune --backend transformers
    python streamlit_whisper.py --model_path openai/whisper-base --backend ct2   # same, starts streamlit

Page: pick a model (folders under --models_dir, offline-packaged models, hub ids, or any path) and a
backend; upload a file (wav/mp3/flac/m4a/ogg/…, at most --max_upload_mb, also server.maxUploadSize in
.streamlit/config.toml) or record from the microphone; the page shows progress, the text, the
segments with timestamps, the waveform, download buttons and, optionally, the sentiment. Models are
loaded once per server process (st.cache_resource). Errors are shown as messages, not tracebacks.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import astuple, dataclass, replace
from typing import Any

import streamlit as st

from utils.audio import SAMPLE_RATE, AudioLoadError, truncated_message, wav_bytes_truncation
from utils.cli import add_backend_arg, add_bool, finite_float, make_parser, optional_str, setup_logging
from utils.webui import (
    MAX_UPLOAD_MB,
    UPLOAD_TYPES,
    ModelChoice,
    ModelPathError,
    UploadError,
    check_upload,
    custom_model_choice,
    decode_audio_bytes,
    language_options,
    model_choices,
    pick_audio_input,
    segment_rows,
    sentiment_rows,
    transcribe_with_progress,
    transcript_downloads,
    waveform_envelope,
    words_html,
)

BACKENDS = ("transformers", "ct2")
# What loading a model can raise: ModelResolutionError (a RuntimeError), a wrong backend or dtype
# (ValueError), unreadable files (OSError), a missing optional package (ImportError).
MODEL_LOAD_ERRORS = (RuntimeError, ValueError, OSError, ImportError)
CUSTOM = "自定义路径或 hub id (custom path / hub id)…"


@dataclass(frozen=True)
class PageSettings:
    """What the sidebar chose."""

    model_path: str
    backend: str
    language: str | None
    task: str | None  # None: the model's fine-tuned task
    beam_size: int
    timestamps: bool
    sentiment: bool
    initial_prompt: str | None = None
    hotwords: str | None = None
    word_timestamps: bool = False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = make_parser("Whisper web UI (run with: streamlit run streamlit_whisper.py -- [flags])")
    parser.add_argument("--model_path", type=str, default=None,
                        help="model preselected in the list (folder, hub id or packaged name); "
                             "default: the first folder under --models_dir, else openai/whisper-base")
    add_backend_arg(parser, default=None, help="backend preselected (its copy of --model_path, where that one needs the "
                    "other backend); default: transformers where a model works with both")
    parser.add_argument("--device", type=str, default="auto", help="auto (cuda → mps → cpu), cpu, cuda, cuda:1")
    parser.add_argument("--models_dir", type=str, default="models", help="folder searched for merged models")
    parser.add_argument("--max_upload_mb", type=finite_float, default=MAX_UPLOAD_MB,
                        help="largest accepted upload in MB (keep ≤ server.maxUploadSize)")
    parser.add_argument("--sentiment_model", type=str, default="auto",
                        help="auto (lexicon for Chinese, VADER for English), lexicon, snownlp, vader or a HF model")
    add_bool(parser, "local_files_only", False, "never contact the model hub")
    parser.add_argument("--initial_prompt", type=optional_str, default=None, help="initial prompt preset in the page")
    parser.add_argument("--hotwords", type=optional_str, default=None, help="hotwords preset in the page")
    return parser.parse_args(argv)


# 1. Cached resources: one copy per server process, shared by all sessions.
@st.cache_resource(show_spinner=False)
def _configure_logging() -> bool:
    setup_logging()
    return True


@st.cache_resource(show_spinner=False, max_entries=2)
def load_engine(model_path: str, backend: str, device: str, local_files_only: bool):
    from utils.transcribe import load_transcriber

    engine = load_transcriber(model_path, backend=backend, device=device, local_files_only=local_files_only)
    engine.tune_lone_decoder()  # an upload or a recording is mostly one window, decoded alone
    return engine


@st.cache_resource(show_spinner=False)
def load_sentiment(name: str, device: str, local_files_only: bool):
    from utils.sentiment import load_sentiment_model

    return load_sentiment_model(name, device=device, local_files_only=local_files_only)


@st.cache_resource(show_spinner=False)
def _on_cpu(device: str) -> bool:
    from utils.device import resolve_ct2_device

    return resolve_ct2_device(device) == "cpu"


# 2. Page parts.
def choose_settings(args: argparse.Namespace) -> PageSettings:
    """The sidebar: model, backend and decoding options."""
    sb = st.sidebar
    sb.header("模型 Model")
    # local folders (on a CPU a merged model's -ct2 copy first), then whisper-base
    choices = model_choices(args.models_dir, preselect=args.model_path, prefer_ct2=_on_cpu(args.device),
                            backend=args.backend)
    labels = [c.label for c in choices] + [CUSTOM]
    label = sb.selectbox("选择模型 (choose a model)", labels, index=0,
                         help=f"models/ 下的合并模型 (merged folders under {args.models_dir}/)、离线内置模型、hub id")
    if label == CUSTOM:
        text = sb.text_input("模型路径或 hub id (model folder or hub id)", value="").strip()
        try:
            choice = custom_model_choice(text, args.models_dir) if text else ModelChoice("", "", None, "custom")
        except ModelPathError as e:
            sb.error(str(e))
            choice = ModelChoice("", "", None, "custom")
    else:
        choice = choices[labels.index(label)]
    model_path = choice.path
    allowed = [choice.backend] if choice.backend else list(BACKENDS)
    default_backend = (args.backend if args.backend in allowed else
                       "transformers" if len(allowed) > 1 else allowed[0])
    if args.model_path and args.backend and args.backend not in allowed and label == labels[0]:
        sb.warning(f"--backend={args.backend}: {model_path} 是 {allowed[0]} 模型 (a {allowed[0]} model folder); "
                   f"用 {allowed[0]} 后端 (runs on {allowed[0]})")
    backend = sb.radio("推理后端 (backend)", allowed, index=allowed.index(default_backend), horizontal=True,
                       help="transformers: PyTorch; ct2: CTranslate2/faster-whisper (int8 on CPU, faster)")
    sb.header("解码 Decoding")
    language = sb.selectbox("语言 (language)", language_options(),
                            format_func=lambda code: {None: "模型默认 (model's fine-tuned language, else auto)",
                                                      "auto": "自动检测 (auto)"}.get(code, code))
    task = sb.radio("任务 (task)", [None, "transcribe", "translate"], horizontal=True,
                    format_func=lambda t: {None: "模型默认 (model's fine-tuned task, else transcribe)",
                                           "transcribe": "转写 transcribe", "translate": "译为英文 translate"}[t])
    beam_size = int(sb.number_input("beam size", min_value=1, max_value=10, value=1, step=1))
    timestamps = sb.checkbox("分段时间戳 (segment timestamps)", value=True)
    sentiment = sb.checkbox("情感分析 (sentiment)", value=False,
                            help="中文用词典+否定/转折规则, 英文用 VADER (offline)")
    word_timestamps = sb.checkbox("词级时间戳 (word timestamps)", value=False,
                                  help="每个词/字的时间和置信度，按置信度着色 (per-word times, shaded by confidence)")
    hotwords = sb.text_input("热词 (hotwords)", value=args.hotwords or "",
                             help="人名、术语等，用逗号分隔 (names, terms; comma-separated)").strip() or None
    initial_prompt = sb.text_input("提示文本 (initial prompt)", value=args.initial_prompt or "",
                                   help="作为前文交给解码器 (previous context for the decoder)").strip() or None
    return PageSettings(model_path, backend, language, task, beam_size, timestamps, sentiment, initial_prompt,
                        hotwords, word_timestamps)


def get_engine(settings: PageSettings, args: argparse.Namespace):
    """The loaded model, or None after showing why it could not be loaded."""
    if not settings.model_path:
        st.info("请输入模型路径或 hub id (enter a model folder or hub id)")
        return None
    try:
        with st.spinner(f"正在加载模型 (loading) {settings.model_path} [{settings.backend}]…"):
            return load_engine(settings.model_path, settings.backend, args.device, args.local_files_only)
    except MODEL_LOAD_ERRORS as e:
        st.error(f"模型加载失败 (model failed to load): {settings.model_path} [{settings.backend}]\n\n{e}")
        return None


def _changed(which: str) -> None:
    st.session_state["audio_input"] = which  # the input the user changed last: the one transcribed


def get_audio(max_mb: float) -> tuple[str, bytes] | None:
    """The uploaded or recorded file as (name, bytes), or None; shows an error for rejected files."""
    upload_tab, record_tab = st.tabs(["上传文件 Upload", "麦克风录音 Record"])
    with upload_tab:
        uploaded = st.file_uploader(
            f"上传音频 (upload audio: {', '.join(UPLOAD_TYPES)}; ≤ {max_mb:g} MB)", key="upload",
            on_change=_changed, args=("upload",))
    with record_tab:
        recorded = st.audio_input("录音 (record from the microphone)", sample_rate=SAMPLE_RATE, key="record",
                                  on_change=_changed, args=("record",))
    source = pick_audio_input(uploaded is not None, recorded is not None, st.session_state.get("audio_input"))
    if source is None:
        return None
    audio_file = uploaded if source == "upload" else recorded
    name = audio_file.name if source == "upload" else "recording.wav"
    if uploaded is not None and recorded is not None:
        which = f"上传的文件 the upload {name}" if source == "upload" else "录音 the recording"
        st.caption(f"转写的是 (transcribing): {which} — 最后一次上传或录音 (the latest upload or recording)")
    try:
        check_upload(name, audio_file.size, max_mb)
    except UploadError as e:
        st.error(str(e))
        return None
    return name, audio_file.getvalue()


def show_results(name: str, audio_bytes: bytes, result: dict[str, Any], sentiment: bool) -> None:
    """Transcript, segment table, waveform, downloads and (``sentiment``: ticked) the sentiment."""
    import pandas as pd

    transcript = result["transcript"]
    st.subheader("转写结果 Transcript")
    if not transcript.language:
        lang = "?"
    elif result.get("english_only"):  # nothing detected: the model only writes English (it said "en (100%)")
        lang = f"{transcript.language} (英文模型，未检测 English-only model, not detected)"
    elif result.get("language_given"):  # not detected: no probability to show (it said "zh (100%)")
        lang = f"{transcript.language} (指定，未检测 given, not detected; 其他语言请选 auto)"
    else:
        lang = f"{transcript.language} (检测 detected, {transcript.language_probability:.0%})"
    task = " · 任务 task: 译为英文 translated to English" if result.get("task") == "translate" else ""
    st.caption(f"语言 language: {lang}{task} · 时长 duration: {transcript.duration:.1f} s · "
               f"耗时 took: {result['seconds']:.1f} s · 模型 model: {result['model']}")
    if result.get("truncated"):
        st.warning(f"文件不完整 (incomplete file): {truncated_message(name, *result['truncated'])}")
    st.text_area("文本 (text)", transcript.text, height=120, key="transcript_text")
    cols = st.columns(4)
    for col, dl in zip(cols, transcript_downloads(transcript, name), strict=True):
        col.download_button(f"下载 {dl.label}", dl.data, file_name=dl.file_name, mime=dl.mime,
                            key=f"download_{dl.label}", on_click="ignore")
    st.subheader("分段 Segments")
    if transcript.segments:
        st.dataframe(pd.DataFrame(segment_rows(transcript)), hide_index=True, width="stretch")
    else:
        hint = (f"；如果音频里有说话，它可能不是 {transcript.language}：语言请选 auto (if there is speech, it may not be "
                f"{transcript.language}: choose auto)" if result.get("language_given") else "")
        st.info(f"没有识别出语音 (no speech recognised){hint}")
    words = words_html(transcript)
    if words:
        st.subheader("逐词 Words")
        st.caption("颜色表示置信度：绿 = 有把握，红 = 没把握；鼠标悬停显示时间 (colour = confidence; hover for times)")
        st.markdown(words, unsafe_allow_html=True)
    st.subheader("波形 Waveform")
    env = waveform_envelope(result["audio"])
    st.line_chart(pd.DataFrame(env), x="time_s", y=["min", "max"], height=180,
                  x_label="时间 time (s)", y_label="振幅")
    st.audio(audio_bytes)
    if sentiment and "sentiment" in result:
        show_sentiment(result["sentiment"])


def show_sentiment(report: dict[str, Any]) -> None:
    import pandas as pd

    st.subheader("情感分析 Sentiment")
    overall = report["overall"]
    st.metric("整体情感 (overall)", overall["label"], f"score {overall['score']:.2f}", delta_color="off")
    st.dataframe(pd.DataFrame(sentiment_rows(report)), hide_index=True, width="stretch")
    st.caption(f"模型 model: {report['model']}; score = 积极度 positivity in [0, 1]")


def run_transcription(engine, settings: PageSettings, name: str, data: bytes) -> dict[str, Any] | None:
    """Decode the file and transcribe it with a progress bar; None after showing an error."""
    import time

    from utils.transcribe import DecodeOptions, resolve_task

    try:
        audio = decode_audio_bytes(data, name)
    except AudioLoadError as e:
        st.error(str(e))
        return None
    options = DecodeOptions(language=settings.language, task=resolve_task(settings.task, engine),
                            beam_size=settings.beam_size,
                            initial_prompt=settings.initial_prompt, hotwords=settings.hotwords,
                            timestamps=settings.timestamps, word_timestamps=settings.word_timestamps)
    try:  # an English-only model cannot translate (it read German speech as English sounds)
        engine.check_task(options.task, options.language, flag="任务 (task) ")
    except ValueError as e:
        st.error(f"{settings.model_path}: {e}")
        return None
    bar = st.progress(0.0, text="转写中 (transcribing)…")
    start = time.perf_counter()
    try:
        transcript = transcribe_with_progress(engine, audio, options,
                                              lambda fraction, message: bar.progress(fraction, text=message))
    except (RuntimeError, ValueError) as e:
        bar.empty()
        st.error(f"转写失败 (transcription failed): {name}: {e}")
        return None
    bar.empty()
    return {"transcript": transcript, "audio": audio, "seconds": time.perf_counter() - start,
            "model": f"{settings.model_path} [{settings.backend}]",
            "language_given": engine.multilingual and engine.fixed_language(options) is not None,
            "english_only": not engine.multilingual, "truncated": wav_bytes_truncation(data), "task": options.task}


def add_sentiment(result: dict[str, Any], args: argparse.Namespace, name: str) -> None:
    """Classify the transcript (whole text and segments) once; stores the report in ``result``."""
    from utils.sentiment import SentimentError, analyze_sentiment, transcript_to_input

    if "sentiment" in result or not result["transcript"].text.strip():
        return
    try:
        with st.spinner("情感分析中 (sentiment)…"):
            model = load_sentiment(args.sentiment_model, args.device, args.local_files_only)
            result["sentiment"] = analyze_sentiment(model, transcript_to_input(result["transcript"].to_dict(), name))
    except (SentimentError, *MODEL_LOAD_ERRORS) as e:
        st.error(f"情感分析失败 (sentiment failed): {e}")


def main(argv: list[str] | None = None) -> int:
    st.set_page_config(page_title="Whisper 语音识别", page_icon="🎙️", layout="wide")
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit:  # argparse printed the usage to the server's terminal
        st.error("命令行参数无效 (invalid flags after `streamlit run streamlit_whisper.py --`); "
                 "see the usage in the server's terminal, or run: python streamlit_whisper.py --help")
        return 2
    _configure_logging()
    st.title("Whisper 语音识别 (speech recognition)")

    # 1. Model and options
    settings = choose_settings(args)
    engine = get_engine(settings, args)

    # 2. Audio
    audio = get_audio(args.max_upload_mb)
    if engine is None or audio is None:
        return 0
    name, data = audio

    # 3. Transcribe on request; the result survives reruns (downloads, sentiment toggle) for the same input.
    # (a tuple: the script, and so PageSettings, is re-executed on every rerun, and dataclass equality
    # needs the same class object)
    key = (hashlib.sha1(data).hexdigest(), astuple(replace(settings, sentiment=False)))
    if st.button("开始转写 (transcribe)", type="primary", key="transcribe"):
        st.session_state["result"] = (key, run_transcription(engine, settings, name, data))
    stored = st.session_state.get("result")
    if stored is not None and stored[0] == key and stored[1] is not None:
        if settings.sentiment:
            add_sentiment(stored[1], args, name)
        show_results(name, data, stored[1], settings.sentiment)
    return 0


def _in_streamlit() -> bool:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    return get_script_run_ctx() is not None


if __name__ == "__main__":
    if _in_streamlit():  # `streamlit run streamlit_whisper.py`: render the page
        main()
    else:  # `python streamlit_whisper.py [flags]`: check the flags, then start the server on this file
        parse_args(sys.argv[1:])
        os.execv(sys.executable, [sys.executable, "-m", "streamlit", "run", os.path.abspath(__file__), "--",
                                  *sys.argv[1:]])
