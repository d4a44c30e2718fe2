"""Web UI: pure helpers (utils/webui.py) and the page itself through streamlit's AppTest."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from utils.audio import SAMPLE_RATE, AudioLoadError, save_wav
from utils.data import Segment
from utils.transcribe import DecodeOptions, Transcript, TranscriptionInfo
from utils.webui import (
    MAX_UPLOAD_MB,
    ModelPathError,
    UploadError,
    check_upload,
    custom_model_choice,
    decode_audio_bytes,
    discover_models,
    model_choices,
    pick_audio_input,
    segment_rows,
    sentiment_rows,
    transcribe_with_progress,
    transcript_downloads,
    waveform_envelope,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
PAGE = str(REPO_ROOT / "streamlit_whisper.py")


def _hf_folder(path: Path, model_type: str = "whisper", weights: str = "model.safetensors") -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": model_type}), encoding="utf-8")
    (path / weights).write_bytes(b"")
    return path


def _transcript() -> Transcript:
    return Transcript("你好 world", "zh", 0.9, 4.0,
                      [Segment(0.0, 1.5, "你好"), Segment(1.5, 3.25, "world")])


# ---------------------------------------------------------------------------------------------------
# Model discovery


def test_discover_models_finds_merged_and_ct2_folders(tmp_path):
    _hf_folder(tmp_path / "whisper-base-finetune")
    _hf_folder(tmp_path / "runs" / "whisper-small-merged")  # one level deeper
    ct2 = tmp_path / "whisper-base-ct2"
    ct2.mkdir()
    (ct2 / "model.bin").write_bytes(b"\0")
    (ct2 / "config.json").write_text("{}", encoding="utf-8")  # CT2 config has no model_type
    lora = tmp_path / "lora-adapter"
    lora.mkdir()
    (lora / "adapter_config.json").write_text("{}", encoding="utf-8")
    _hf_folder(tmp_path / "bert", model_type="bert")
    no_weights = tmp_path / "incomplete"
    no_weights.mkdir()
    (no_weights / "config.json").write_text('{"model_type": "whisper"}', encoding="utf-8")
    _hf_folder(tmp_path / "a" / "b" / "too-deep")

    found = {Path(c.path).name: c for c in discover_models(tmp_path)}

    assert set(found) == {"whisper-base-finetune", "whisper-small-merged", "whisper-base-ct2"}
    assert found["whisper-base-finetune"].backend == "transformers"
    assert found["whisper-base-ct2"].backend == "ct2"
    assert found["whisper-small-merged"].label == f"{tmp_path / 'runs' / 'whisper-small-merged'} (transformers)"
    assert all(c.source == "local" for c in found.values())
    assert discover_models(tmp_path / "missing") == []


def test_model_choices_lists_local_packaged_and_hub_and_puts_preselect_first(tmp_path):
    local = _hf_folder(tmp_path / "merged")
    paths = [c.path for c in model_choices(tmp_path)]
    assert paths[0] == str(local)
    assert "openai/whisper-base" in paths and "openai/whisper-tiny.en" in paths
    assert "openai/whisper-large-v3" in paths
    assert len(paths) == len(set(paths))

    choices = model_choices(tmp_path, preselect="openai/whisper-base")
    assert choices[0].path == "openai/whisper-base" and choices[0].source == "packaged"
    assert [c.path for c in choices].count("openai/whisper-base") == 1

    other = model_choices(tmp_path, preselect="/elsewhere/my-model")
    assert other[0].path == "/elsewhere/my-model" and other[0].backend is None


def test_on_a_cpu_a_merged_models_ct2_copy_is_offered_first(tmp_path):
    """On a CPU CTranslate2 int8 is the faster backend: the page preselects merge_lora.py --ct2's copy of a merged
    model (a user saw the transformers folder preselected, a few times slower); elsewhere the order is by path."""
    merged = _hf_folder(tmp_path / "whisper-base-finetune")
    other = _hf_folder(tmp_path / "a-model")
    ct2 = tmp_path / "whisper-base-finetune-ct2"
    ct2.mkdir()
    (ct2 / "model.bin").write_bytes(b"\0")
    (ct2 / "config.json").write_text("{}", encoding="utf-8")
    assert [c.path for c in model_choices(tmp_path)][:3] == [str(other), str(merged), str(ct2)]
    assert [c.path for c in model_choices(tmp_path, prefer_ct2=True)][:3] == [str(ct2), str(other), str(merged)]
    assert model_choices(tmp_path, preselect=str(merged), prefer_ct2=True)[0].path == str(merged)


# ---------------------------------------------------------------------------------------------------
# Upload validation and decoding


def test_check_upload_accepts_audio_and_rejects_type_size_empty():
    check_upload("clip.WAV", 1000)
    check_upload("talk.m4a", MAX_UPLOAD_MB * 1024 * 1024)
    with pytest.raises(UploadError, match=r"notes\.txt: 不支持的文件类型 .*'\.txt'.*wav"):
        check_upload("notes.txt", 10)
    with pytest.raises(UploadError, match=r"big\.wav: 文件过大 .*250\.0 MB > 200 MB"):
        check_upload("big.wav", 250 * 1024 * 1024)
    with pytest.raises(UploadError, match=r"clip\.mp3: 文件为空"):
        check_upload("clip.mp3", 0)
    with pytest.raises(UploadError, match="1.0 MB > 0.5 MB"):
        check_upload("clip.flac", 1024 * 1024, max_mb=0.5)


def test_decode_audio_bytes_reads_wav_and_names_the_upload_on_error(tmp_path):
    t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    save_wav(tmp_path / "tone.wav", tone, 8000)  # resampled to 16 kHz on decode
    audio = decode_audio_bytes((tmp_path / "tone.wav").read_bytes(), "tone.wav")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size - 2 * tone.size) <= 2
    with pytest.raises(AudioLoadError, match=r"^fake\.wav: 无法解码为音频") as info:
        decode_audio_bytes(b"this is not audio at all" * 10, "fake.wav")
    assert "whisper-upload-" not in str(info.value)  # no temporary file's name is shown


# ---------------------------------------------------------------------------------------------------
# Format conversion


def test_waveform_envelope_bounds_and_times():
    audio = np.zeros(SAMPLE_RATE * 10, dtype=np.float32)
    audio[SAMPLE_RATE * 5] = 0.8
    audio[SAMPLE_RATE * 7] = -0.6
    env = waveform_envelope(audio, points=100)
    assert len(env["time_s"]) == len(env["min"]) == len(env["max"]) == 100
    assert env["max"].max() == pytest.approx(0.8) and env["min"].min() == pytest.approx(-0.6)
    assert env["time_s"][int(np.argmax(env["max"]))] == pytest.approx(5.0)
    assert env["time_s"][1] == pytest.approx(0.1)
    short = waveform_envelope(np.ones(10, dtype=np.float32), points=100)
    assert len(short["time_s"]) == 10
    assert len(waveform_envelope(np.zeros(0, dtype=np.float32))["time_s"]) == 0


def test_words_html_escapes_and_shades_by_probability():
    from utils.data import Segment, Word
    from utils.webui import words_html

    t = Transcript("a <b>", "en", 1.0, 2.0, [Segment(0.0, 2.0, "a <b>", (Word(0.0, 0.5, " a", 0.99),
                                                                      Word(0.6, 1.2, " <b>", 0.1)))])
    html = words_html(t)
    assert "&lt;b&gt;" in html and "<b>" not in html.replace("<span", "")
    assert "hsl(118," in html and "hsl(12," in html and 'title="0.60–1.20 s, p=0.10"' in html
    assert words_html(Transcript("x", "en", 1.0, 1.0, [Segment(0.0, 1.0, "x")])) == ""
    zh = words_html(Transcript("你好。", "zh", 1.0, 1.0, [Segment(0.0, 1.0, "你好。", (
        Word(0.0, 0.4, "你", 0.9), Word(0.4, 1.0, "好。", 0.9)))]))
    assert zh.count("<span") == 2 and "</span><span" in zh  # no space between Chinese characters


def test_segment_rows_and_downloads():
    transcript = _transcript()
    rows = segment_rows(transcript)
    assert rows == [{"开始 start": "00:00:00.000", "结束 end": "00:00:01.500", "文本 text": "你好"},
                    {"开始 start": "00:00:01.500", "结束 end": "00:00:03.250", "文本 text": "world"}]
    downloads = {d.label: d for d in transcript_downloads(transcript, "meeting.mp3")}
    assert [d.file_name for d in downloads.values()] == ["meeting.txt", "meeting.srt", "meeting.vtt",
                                                         "meeting.json"]
    assert downloads["TXT"].data == "你好\nworld\n"  # a line per segment
    assert downloads["SRT"].data.startswith("1\n00:00:00,000 --> 00:00:01,500\n你好\n\n2\n00:00:01,500")
    assert downloads["VTT"].data.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\n你好")
    assert json.loads(downloads["JSON"].data)["segments"][1] == {"start": 1.5, "end": 3.25, "text": "world"}


def test_sentiment_rows_formats_spans():
    report = {"results": [{"text": "很好", "label": "positive", "score": 0.9, "start": 0.0, "end": 2.0},
                          {"text": "bad", "label": "negative", "score": 0.1}]}
    rows = sentiment_rows(report)
    assert rows[0] == {"开始 start": "00:00:00.000", "结束 end": "00:00:02.000", "情感 label": "positive",
                       "积极度 score": 0.9, "文本 text": "很好"}
    assert rows[1] == {"情感 label": "negative", "积极度 score": 0.1, "文本 text": "bad"}


# ---------------------------------------------------------------------------------------------------
# Progress over long audio


class _FakeEngine:
    """A Transcriber whose segment iterator is lazy, like the real one: one segment per 20 s of audio
    (15 s of speech each), decoded only as the iterator is consumed; ``decoded`` counts them."""

    backend = "fake"

    def __init__(self) -> None:
        self.decoded = 0

    def transcribe_segments(self, audio, options, *, initial_prompt=None):
        duration = len(audio) / SAMPLE_RATE
        starts = [float(t) for t in range(0, int(duration), 20)]

        def segments():
            for start in starts:
                self.decoded += 1
                yield Segment(start, min(start + 15.0, duration), f"s{int(start)}")

        return segments(), TranscriptionInfo(options.language or "en", 0.8, duration, len(starts))


def test_transcribe_with_progress_short_audio():
    engine, progress = _FakeEngine(), []
    audio = np.zeros(SAMPLE_RATE * 5, dtype=np.float32)
    out = transcribe_with_progress(engine, audio, DecodeOptions(), lambda f, m: progress.append(f))
    assert progress == [0.0, 1.0, 1.0] and out.text == "s0" and out.language == "en"


def test_transcribe_with_progress_reports_each_segment_as_it_is_decoded():
    engine, progress = _FakeEngine(), []
    audio = np.zeros(SAMPLE_RATE * 100, dtype=np.float32)

    def on_progress(fraction, message):
        progress.append((fraction, message, engine.decoded))

    out = transcribe_with_progress(engine, audio, DecodeOptions(batch_size=2), on_progress)
    # before decoding, after each of the five segments (as it arrives, not at the end), done
    assert [(round(f, 2), n) for f, _, n in progress] == [(0.0, 0), (0.15, 1), (0.35, 2), (0.55, 3), (0.75, 4),
                                                          (0.95, 5), (1.0, 5)]
    assert progress[1][1] == "已转写 (transcribed) 15/100 s" and progress[-1][1] == "完成 (done)"
    assert [(s.start, s.end) for s in out.segments] == [(i * 20.0, i * 20.0 + 15.0) for i in range(5)]
    assert out.language == "en" and out.language_probability == 0.8 and out.duration == 100.0
    assert out.text == "s0 s20 s40 s60 s80"


def test_transcribe_with_progress_no_speech():
    class Silent(_FakeEngine):
        def transcribe_segments(self, audio, options, *, initial_prompt=None):
            return iter(()), TranscriptionInfo(None, 0.0, len(audio) / SAMPLE_RATE, 0)

    progress = []
    out = transcribe_with_progress(Silent(), np.zeros(SAMPLE_RATE * 40, dtype=np.float32), DecodeOptions(),
                                   lambda f, m: progress.append(m))
    assert out.text == "" and out.segments == [] and progress[-1] == "未检测到语音 (no speech found)"


def test_a_preselected_folder_gives_way_to_its_copy_for_the_backend_asked_for(tmp_path):
    """`-- --model_path=models/X --backend=ct2` opened X on transformers (a few times slower on a CPU) without a
    word, its -ct2 copy beside it; now the copy is preselected (and the other way round)."""
    merged = _hf_folder(tmp_path / "whisper-base-finetune")
    ct2 = tmp_path / "whisper-base-finetune-ct2"
    ct2.mkdir()
    (ct2 / "model.bin").write_bytes(b"\0")
    assert model_choices(tmp_path, preselect=str(merged), backend="ct2")[0].path == str(ct2)
    assert model_choices(tmp_path, preselect=str(ct2), backend="transformers")[0].path == str(merged)
    assert model_choices(tmp_path, preselect=str(merged), backend="transformers")[0].path == str(merged)
    # no --backend given: the folder named is the one opened (a ct2 folder opened its transformers copy)
    assert model_choices(tmp_path, preselect=str(ct2), prefer_ct2=True)[0].path == str(ct2)
    lone = _hf_folder(tmp_path / "other")
    assert model_choices(tmp_path, preselect=str(lone), backend="ct2")[0].path == str(lone)  # the page warns


def test_a_typed_model_path_is_a_hub_id_or_a_folder_under_models_dir(tmp_path, monkeypatch):
    """A page visitor typed ../../etc and got the server's folder listed in the error ("files: .pwd.lock, X11,
    adduser.conf, …"), and could load any folder; a CTranslate2 folder typed in was offered transformers only."""
    models = tmp_path / "models"
    ct2 = models / "mine-ct2"
    ct2.mkdir(parents=True)
    (ct2 / "model.bin").write_bytes(b"\0")
    merged = _hf_folder(models / "mine")
    assert custom_model_choice(str(ct2), models).backend == "ct2"
    assert custom_model_choice(str(merged), models).backend == "transformers"
    hub = custom_model_choice("openai/whisper-small", models)
    assert (hub.path, hub.backend) == ("openai/whisper-small", None)
    (tmp_path / "secrets").mkdir()
    monkeypatch.chdir(models)
    # whether it exists or not, a path outside is refused alike (a visitor learnt which paths exist)
    for outside in ("../secrets", str(tmp_path / "secrets"), "..", f"{ct2}/../../secrets", "/etc", "/etc/nothing",
                    "../../../etc/nothing", "~/nothing", "secrets-like/../../x"):
        with pytest.raises(ModelPathError, match="the page loads model folders under .* only"):
            custom_model_choice(outside, models)
    assert custom_model_choice("mine-ct2", ".").backend == "ct2"
    assert custom_model_choice("missing-model", ".").path == "missing-model"  # inside: the loader says not found
    (models / "linked").symlink_to(ct2)  # listed in the page's menu: typed, it is inside too
    assert custom_model_choice(str(models / "linked"), models).backend == "ct2"


def test_the_input_made_last_is_transcribed():
    assert pick_audio_input(False, False, None) is None
    assert pick_audio_input(True, False, "record") == "upload"
    assert pick_audio_input(False, True, "upload") == "record"
    assert pick_audio_input(True, True, "record") == "record"  # recorded after uploading (the upload was used)
    assert pick_audio_input(True, True, "upload") == "upload"
    assert pick_audio_input(True, True, None) == "upload"


# ---------------------------------------------------------------------------------------------------
# The page (streamlit AppTest: runs the script in-process, no browser)


def _app(monkeypatch, *args: str):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(sys, "argv", ["streamlit_whisper.py", *args])
    return AppTest.from_file(PAGE, default_timeout=120)


def test_page_renders_and_lists_models(monkeypatch, tmp_path):
    _hf_folder(tmp_path / "models" / "whisper-base-finetune")
    at = _app(monkeypatch, "--models_dir", str(tmp_path / "models"), "--model_path", str(tmp_path / "nothing"))
    at.run()
    assert not at.exception
    assert at.title[0].value.startswith("Whisper 语音识别")
    options = at.sidebar.selectbox[0].options
    assert options[0] == str(tmp_path / "nothing")
    assert f"{tmp_path / 'models' / 'whisper-base-finetune'} (transformers)" in options
    assert "openai/whisper-base (离线内置 packaged)" in options
    assert "openai/whisper-large-v3 (hub)" in options
    assert at.file_uploader[0].key == "upload"
    # a transformers folder only offers its own backend; a packaged model offers both
    at.sidebar.selectbox[0].select(f"{tmp_path / 'models' / 'whisper-base-finetune'} (transformers)").run()
    assert at.sidebar.radio[0].options == ["transformers"]


def test_page_offers_hotwords_and_a_prompt_preset_from_the_flags(monkeypatch, tmp_path):
    at = _app(monkeypatch, "--models_dir", str(tmp_path / "models"), "--hotwords", "Szymanski,Zolgensma")
    at.run()
    assert not at.exception
    fields = {t.label: t.value for t in at.sidebar.text_input}
    assert fields["热词 (hotwords)"] == "Szymanski,Zolgensma" and fields["提示文本 (initial prompt)"] == ""


def test_page_shows_readable_error_for_bad_model_path(monkeypatch, tmp_path):
    broken = _hf_folder(tmp_path / "models" / "broken")  # config.json + an empty model.safetensors
    at = _app(monkeypatch, "--models_dir", str(tmp_path / "models"), "--model_path", str(tmp_path / "missing"))
    at.run()
    assert not at.exception
    assert at.error[0].value.startswith(f"模型加载失败 (model failed to load): {tmp_path / 'missing'}")
    assert "folder not found" in at.error[0].value

    at.sidebar.selectbox[0].select(f"{broken} (transformers)").run()
    assert not at.exception
    assert at.error[0].value.startswith(f"模型加载失败 (model failed to load): {broken}")


@pytest.mark.slow
def test_page_transcribes_upload_and_rejects_bad_files(monkeypatch, tmp_path, en_wav):
    from conftest import EN_SENTENCE

    from utils.text import wer

    # the packaged whisper-base on CTranslate2: real text in a few seconds on a CPU
    import utils.sentiment

    loaded = []  # the sentiment model is loaded with the page's --device and --local_files_only (it was not)
    real_load = utils.sentiment.load_sentiment_model
    monkeypatch.setattr(utils.sentiment, "load_sentiment_model",
                        lambda *a, **kw: loaded.append(kw) or real_load(*a, **kw))
    at = _app(monkeypatch, "--models_dir", str(tmp_path), "--model_path", "openai/whisper-base",
              "--backend", "ct2", "--max_upload_mb", "1", "--local_files_only=True", "--device=cpu")
    at.run()
    assert not at.exception and not at.error
    assert at.sidebar.radio[0].value == "ct2"

    at.file_uploader[0].set_value(("notes.txt", b"hello", "text/plain")).run()
    assert "notes.txt: 不支持的文件类型" in at.error[0].value
    assert not at.button  # nothing to transcribe

    at.file_uploader[0].set_value(("fake.wav", b"RIFF but not really a wav file", "audio/wav")).run()
    assert not at.error  # decoded only when transcribing
    at.button(key="transcribe").click().run()
    assert at.error[0].value.startswith("fake.wav: 无法解码为音频")

    at.file_uploader[0].set_value(("big.wav", b"\0" * (2 * 1024 * 1024), "audio/wav")).run()
    assert "big.wav: 文件过大" in at.error[0].value and "> 1 MB" in at.error[0].value

    at.file_uploader[0].set_value(("en.wav", en_wav.read_bytes(), "audio/wav")).run()
    at.button(key="transcribe").click().run()
    assert not at.exception and not at.error and not at.warning
    assert wer([EN_SENTENCE], [at.text_area(key="transcript_text").value]) <= 0.2
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["下载 TXT", "下载 SRT", "下载 VTT", "下载 JSON"]
    assert [s.value for s in at.subheader] == ["转写结果 Transcript", "分段 Segments", "波形 Waveform"]

    # sentiment is added to the same result (no second transcription): VADER on the English text
    at.sidebar.checkbox[1].check().run()
    assert not at.exception and not at.error
    assert at.subheader[-1].value == "情感分析 Sentiment"
    assert at.metric[0].value in ("positive", "neutral", "negative")
    assert "vader" in at.caption[-1].value
    assert loaded and all(kw.get("local_files_only") is True and kw.get("device") == "cpu" for kw in loaded), loaded
    at.sidebar.checkbox[1].uncheck().run()  # unticked: the section goes (it stayed until the next upload)
    assert "情感分析 Sentiment" not in [s.value for s in at.subheader] and not at.metric
    # whisper-base has no fine-tuned language: detected, with its probability
    assert "language: en (检测 detected, " in at.caption[0].value, at.caption[0].value
    next(box for box in at.sidebar.selectbox if box.label.startswith("语言")).set_value("en").run()
    at.button(key="transcribe").click().run()
    assert "language: en (指定，未检测 given, not detected" in at.caption[0].value, at.caption[0].value

    # word timestamps: the words shaded by confidence, each with its time as a tooltip
    at.sidebar.checkbox[2].check().run()
    at.button(key="transcribe").click().run()
    assert not at.exception and not at.error
    assert "逐词 Words" in [s.value for s in at.subheader]
    words = next(m.value for m in at.markdown if "<span title=" in m.value)
    assert words.count("<span") >= 7 and "quick" in words and "background:hsl(" in words


def test_page_refuses_a_typed_folder_outside_models_dir_and_offers_ct2_for_a_ct2_folder(monkeypatch, tmp_path):
    models = tmp_path / "models"
    ct2 = models / "x-ct2"
    ct2.mkdir(parents=True)
    (ct2 / "model.bin").write_bytes(b"\0")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "id_rsa").write_text("secret", encoding="utf-8")
    at = _app(monkeypatch, "--models_dir", str(models))
    at.run()
    at.sidebar.selectbox[0].select("自定义路径或 hub id (custom path / hub id)…").run()
    at.sidebar.text_input[0].input(str(tmp_path / "private")).run()
    assert not at.exception
    shown = " ".join(e.value for e in [*at.sidebar.error, *at.error])
    assert "the page loads model folders under" in shown and "id_rsa" not in shown
    at.sidebar.text_input[0].input(str(ct2)).run()
    assert not at.exception
    assert at.sidebar.radio[0].options == ["ct2"]


@pytest.mark.slow
def test_page_warns_that_an_uploaded_wav_is_cut_short(monkeypatch, tmp_path, en_wav):
    """A wav cut to its first half was transcribed as if whole, without a word."""
    data = en_wav.read_bytes()
    at = _app(monkeypatch, "--models_dir", str(tmp_path), "--model_path", "openai/whisper-base", "--backend", "ct2")
    at.run()
    at.file_uploader[0].set_value(("cut.wav", data[:len(data) // 2], "audio/wav")).run()
    at.button(key="transcribe").click().run()
    assert not at.exception and not at.error
    assert at.warning[0].value.startswith("文件不完整 (incomplete file): cut.wav: truncated wav: its header says ")
    at.sidebar.checkbox[1].check().run()  # a rerun showing the stored result keeps the warning
    assert at.warning and "truncated wav" in at.warning[0].value


def test_page_opens_the_folder_named_on_the_backend_it_needs_without_a_backend_flag(monkeypatch, tmp_path):
    models = tmp_path / "models"
    _hf_folder(models / "m")
    (models / "m-ct2").mkdir()
    (models / "m-ct2" / "model.bin").write_bytes(b"\0")
    at = _app(monkeypatch, "--models_dir", str(models), "--model_path", str(models / "m-ct2"))
    at.run()
    assert at.sidebar.selectbox[0].value == f"{models / 'm-ct2'} (ct2)"
    assert at.sidebar.radio[0].options == ["ct2"] and not at.sidebar.warning
    at = _app(monkeypatch, "--models_dir", str(models), "--model_path", "openai/whisper-base")
    at.run()
    assert at.sidebar.radio[0].value == "transformers"  # a model that works with both: transformers, as before


def test_page_reports_invalid_flags(monkeypatch):
    at = _app(monkeypatch, "--backend", "pytorch")
    at.run()
    assert not at.exception
    assert at.error[0].value.startswith("命令行参数无效 (invalid flags")
    assert not at.file_uploader


@pytest.mark.slow
def test_page_transcribes_microphone_recording(monkeypatch, tmp_path, en_wav):
    from conftest import EN_SENTENCE

    from utils.text import wer

    at = _app(monkeypatch, "--models_dir", str(tmp_path), "--model_path", "openai/whisper-base", "--backend", "ct2")
    at.run()
    at.audio_input(key="record").set_value(("recording.wav", en_wav.read_bytes(), "audio/wav")).run()
    at.button(key="transcribe").click().run()
    assert not at.exception and not at.error
    assert wer([EN_SENTENCE], [at.text_area(key="transcript_text").value]) <= 0.2
    assert len(at.get("download_button")) == 4

    # a recording made while an upload is still there: the one made last is transcribed (it was the upload)
    silence = tmp_path / "silence.wav"
    save_wav(silence, np.zeros(SAMPLE_RATE, dtype=np.float32))
    at.audio_input(key="record").set_value(None).run()
    at.file_uploader[0].set_value(("silence.wav", silence.read_bytes(), "audio/wav")).run()
    at.button(key="transcribe").click().run()
    assert at.text_area(key="transcript_text").value == ""
    at.audio_input(key="record").set_value(("recording.wav", en_wav.read_bytes(), "audio/wav")).run()
    assert any("录音 the recording" in c.value for c in at.caption)
    at.button(key="transcribe").click().run()
    assert wer([EN_SENTENCE], [at.text_area(key="transcript_text").value]) <= 0.2


@pytest.mark.slow
def test_page_says_an_english_only_model_writes_english_without_detecting(monkeypatch, tmp_path, en_wav):
    """whisper-tiny.en's caption said "en (检测 detected, 100%)": nothing is detected, it only writes English."""
    at = _app(monkeypatch, "--models_dir", str(tmp_path), "--model_path", "openai/whisper-tiny.en",
              "--backend", "ct2")
    at.run()
    at.file_uploader[0].set_value(("en.wav", en_wav.read_bytes(), "audio/wav")).run()
    at.button(key="transcribe").click().run()
    assert not at.exception and not at.error
    assert "language: en (英文模型，未检测 English-only model" in at.caption[0].value, at.caption[0].value
    # it cannot translate: it read German speech as English sounds, without a word
    next(r for r in at.sidebar.radio if r.label == "任务 (task)").set_value("translate").run()
    at.button(key="transcribe").click().run()
    assert at.error and "English-only and cannot translate" in at.error[0].value, [e.value for e in at.error]


def test_page_translates_with_a_model_fine_tuned_to_translate_by_default(monkeypatch, tmp_path, en_wav,
                                                                          tiny_translator_dir):
    """finetune.py --task=translate writes the task into the model; infer.py, evaluation.py and realtime take it,
    but the page's task control started at transcribe: the model fine-tuned to translate transcribed."""
    import utils.webui

    model = tiny_translator_dir
    tasks = []
    real = utils.webui.transcribe_with_progress
    monkeypatch.setattr(utils.webui, "transcribe_with_progress",
                        lambda engine, audio, options, *a, **k: tasks.append(options.task)
                        or real(engine, audio, options, *a, **k))
    at = _app(monkeypatch, "--models_dir", str(tmp_path), "--model_path", str(model), "--device", "cpu")
    at.run()
    at.file_uploader[0].set_value(("en.wav", en_wav.read_bytes(), "audio/wav")).run()
    at.button(key="transcribe").click().run()
    assert "任务 task: 译为英文 translated to English" in at.caption[0].value  # the text shown is a translation
    next(r for r in at.sidebar.radio if r.label == "任务 (task)").set_value("transcribe").run()
    at.button(key="transcribe").click().run()
    assert not at.exception and tasks == ["translate", "transcribe"], (tasks, [e.value for e in at.error])
    assert "task: 译为英文 translated to English" not in at.caption[0].value  # the page shows the last one


@pytest.mark.slow
def test_page_says_to_choose_auto_when_a_given_language_hears_no_speech(monkeypatch, tmp_path):
    """44 s of English into a Chinese fine-tune (the page's language: the model's) showed only "没有识别出语音 (no
    speech recognised)"; with a language given, the page says the speech may be in another one."""
    import io

    import numpy as np
    import soundfile as sf

    wav = io.BytesIO()
    sf.write(wav, np.zeros(32000, np.float32), 16000, format="WAV")
    at = _app(monkeypatch, "--models_dir", str(tmp_path), "--model_path", "openai/whisper-base", "--backend", "ct2")
    at.run()
    at.file_uploader[0].set_value(("quiet.wav", wav.getvalue(), "audio/wav")).run()
    at.button(key="transcribe").click().run()
    assert not at.exception and [i.value for i in at.info] == ["没有识别出语音 (no speech recognised)"]
    next(box for box in at.sidebar.selectbox if box.label.startswith("语言")).set_value("zh").run()
    at.button(key="transcribe").click().run()
    assert not at.exception
    assert [i.value for i in at.info] == ["没有识别出语音 (no speech recognised)；如果音频里有说话，它可能不是 zh：语言请选 "
                                          "auto (if there is speech, it may not be zh: choose auto)"]
