"""Word-level timestamps: the DTW and filters, word grouping on the real tokenizer, and accuracy on recordings
whose word boundaries are known (both backends, real whisper-base)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from utils.alignment import dtw, median_filter, token_times, word_groups, words_for_tokens


def _dtw_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference Whisper DTW, written as plain loops."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf)
    trace = -np.ones((n + 1, m + 1))
    cost[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = x[i - 1, j - 1] + c
            trace[i, j] = t
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


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 3), (12, 40), (30, 200)])
def test_vectorised_dtw_equals_the_reference(shape):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    for _ in range(3):
        x = rng.standard_normal(shape)
        got, want = dtw(x), _dtw_reference(x)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    x = np.round(rng.standard_normal(shape))  # many ties: the tie rule must match too
    for a, b in zip(dtw(x), _dtw_reference(x)):
        np.testing.assert_array_equal(a, b)


def test_dtw_follows_a_clear_diagonal():
    cost = np.ones((4, 8))
    for i, j in enumerate([0, 2, 4, 6]):
        cost[i, j: j + 2] = -5
    rows, frames = dtw(cost)
    times = token_times(rows, frames)
    assert list(np.round(times / 0.02).astype(int)) == [0, 2, 4, 6]


def test_median_filter_matches_a_plain_median():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 25))
    got = median_filter(x, 7)
    padded = np.pad(x, [(0, 0), (0, 0), (3, 3)], mode="reflect")
    want = np.stack([np.median(padded[..., k: k + 7], axis=-1) for k in range(25)], axis=-1)
    np.testing.assert_allclose(got, want)
    assert median_filter(x[..., :2], 7).shape == (2, 3, 2)  # shorter than the window: unchanged


@pytest.fixture(scope="module")
def tokenizers(whisper_base_dir):
    from faster_whisper.tokenizer import Tokenizer
    from transformers import WhisperTokenizerFast

    hf = WhisperTokenizerFast.from_pretrained(whisper_base_dir).backend_tokenizer
    return {lang: Tokenizer(hf, True, task="transcribe", language=lang) for lang in ("en", "zh")}


def test_words_group_tokens_and_keep_punctuation_with_them(tokenizers):
    tk = tokenizers["en"]
    tokens = tk.encode(" Hello, world. Fine")
    times = np.arange(len(tokens) + 1) * 0.5
    words = words_for_tokens(tk, tokens, [0.9] * len(tokens), times, language="en", duration=60.0, offset=10.0)
    assert [w.word.strip() for w in words] == ["Hello,", "world.", "Fine"]
    assert words[0].start == 10.0 and all(a.end <= b.start for a, b in zip(words, words[1:]))
    assert all(w.probability == pytest.approx(0.9) for w in words)


@pytest.mark.parametrize("language", ["en", "zh"])
def test_words_after_a_broken_utf8_sequence_are_kept(tokenizers, language):
    """The decoder emitted two bytes of a three-byte "？" (tokens 171, 120) and went on with " this is the test":
    faster-whisper's unicode split put every later token into a group it never returned, so the words after it were
    missing from words[] (a server's verbose_json listed "Hello world" for "Hello world this is the test")."""
    from utils.alignment import character_groups

    tk = tokenizers[language]
    tokens = tk.encode(" Hello world") + [171, 120] + tk.encode(" this is the test.")
    texts, groups = character_groups(tk, tokens)
    assert [t for g in groups for t in g] == tokens and texts[2:4] == ["\ufffd", "\ufffd"]
    times = np.arange(len(tokens) + 1) * 0.2
    words = words_for_tokens(tk, tokens, [0.9] * len(tokens), times, language=language, duration=60.0)
    found = [w.word.strip() for w in words]
    assert found[-4:] == ["this", "is", "the", "test."], found


def test_korean_words_whose_byte_tokens_overlap_characters_are_kept(tokenizers):
    """Korean byte tokens run across character boundaries for up to 8 tokens: looking 4 ahead read "천만명" as
    "��������" (375 of 3,000 random Hangul texts lost characters); faster-whisper's split kept it."""
    import random

    from faster_whisper.tokenizer import Tokenizer

    tk = Tokenizer(tokenizers["en"].tokenizer, True, task="transcribe", language="ko")
    ids = tk.encode(" 인구는 천만명 입니다")
    assert word_groups(tk, ids, "ko")[0] == [" 인구는", " 천만명", " 입니다"]
    rng = random.Random(0)
    for _ in range(300):
        text = " " + "".join(chr(rng.randrange(0xAC00, 0xD7A4)) if rng.random() < 0.85 else " "
                             for _ in range(rng.randrange(2, 12)))
        ids = tk.encode(text)
        assert "".join(word_groups(tk, ids, "ko")[0]) == tk.decode(ids), text


def _zh_words(tokenizers, text: str, seconds: float) -> list:
    """The words of Chinese ``text``, its tokens spread evenly over ``seconds``."""
    tk = tokenizers["zh"]
    tokens = tk.encode(text)
    times = np.linspace(0.0, seconds, len(tokens) + 1)
    return words_for_tokens(tk, tokens, [0.5] * len(tokens), times, language="zh", duration=seconds)


def test_chinese_is_split_by_character_even_inside_multibyte_tokens(tokenizers):
    text = "今天天气很好，我们去公园。"
    words = _zh_words(tokenizers, text, 3.0)
    assert "".join(w.word for w in words) == text
    assert all(len([c for c in w.word if c not in "，。"]) <= 2 for w in words)  # characters (or a 2-char token)
    assert words[-1].end <= 3.0 and "\ufffd" not in "".join(w.word for w in words)


def test_latin_words_and_numbers_inside_chinese_stay_whole(tokenizers):
    text = "我用Python写代码，还有 TensorFlow 2.0，他说don't worry。COVID-19第3.5版"
    words = _zh_words(tokenizers, text, 6.0)
    assert "".join(w.word for w in words) == text
    found = [w.word.strip() for w in words]
    for whole in ("Python", "TensorFlow", "2.0，", "don't", "worry。", "COVID-19", "3.5"):
        assert whole in found, found
    assert "写" in found and "第" in found  # the Chinese around them still one character (or token) each


def test_a_word_start_moves_past_the_pause_after_the_previous_words_tail():
    """Tones with 0.25 s pauses; a word aligned to start 0.12 s (6 frames) before the previous tone's end (int8
    alignment in noise did that) starts after the pause, and the previous word ends where its tone does; a word
    aligned right whose tone has a 60 ms gap 0.16 s in (a stop consonant's closure, shorter than a pause) keeps
    its start."""
    from utils.alignment import refine_word_times
    from utils.data import Word

    sr = 16000
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(0.3 * sr)) / sr)).astype(np.float32)
    pause = np.zeros(int(0.25 * sr), np.float32)
    closure = np.concatenate([tone[: int(0.16 * sr)], np.zeros(int(0.06 * sr), np.float32), tone])
    audio = np.concatenate([pause, tone, pause, tone, pause, closure, pause])  # sound at 0.25, 0.8 and 1.35 s
    words = [Word(0.25, 0.43, " one", 0.9), Word(0.43, 1.1, " two", 0.9), Word(1.35, 1.87, " three", 0.9)]
    one, two, three = refine_word_times(words, audio)
    assert two.start == pytest.approx(0.8, abs=0.02) and one.end == pytest.approx(0.55, abs=0.02)
    assert three.start == 1.35


def test_word_ends_follow_the_sound_and_a_word_started_in_a_pause_leaves_the_previous_end_alone():
    """Cross-attention ended a real "meters." 0.54 s before its sound did (and its cue with it): an end inside sound
    moves on to where the sound stops (through a stop's closure, at most 0.8 s, never past the next word). A word
    whose aligned start lay in a 4 s pause gave the word before it an end at that start (的。 4.32 → 8.44 s: one
    subtitle cue through the silence)."""
    from utils.alignment import refine_word_times
    from utils.data import Word

    sr = 16000

    def tone(seconds: float) -> np.ndarray:
        return (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * sr)) / sr)).astype(np.float32)

    def quiet(seconds: float) -> np.ndarray:
        return np.zeros(int(seconds * sr), np.float32)

    audio = np.concatenate([quiet(0.25), tone(0.3), quiet(4.0), tone(0.3), quiet(0.5)])  # 0.25-0.55, 4.55-4.85 s
    first, second = refine_word_times([Word(0.25, 0.55, "的。", 0.9), Word(4.3, 4.85, "这个", 0.9)], audio)
    assert first.end == 0.55 and second.start == pytest.approx(4.55, abs=0.02)
    # sound 0.25-1.0 s with a 60 ms closure at 0.7 s, then 1.5-1.8 s
    audio = np.concatenate([quiet(0.25), tone(0.45), quiet(0.06), tone(0.24), quiet(0.5), tone(0.3), quiet(0.5)])
    first, second = refine_word_times([Word(0.25, 0.6, " ten", 0.9), Word(1.5, 1.8, " meters.", 0.9)], audio)
    assert first.end == pytest.approx(1.0, abs=0.02) and second.end == pytest.approx(1.8, abs=0.02)
    audio = np.concatenate([quiet(0.25), tone(3.0), quiet(0.5)])  # at most 0.8 s on; never into the next word
    first, second = refine_word_times([Word(0.25, 0.6, " a", 0.9), Word(1.0, 3.25, " b", 0.9)], audio)
    assert first.end == pytest.approx(1.0, abs=0.02)
    (only,) = refine_word_times([Word(0.25, 0.6, " a", 0.9)], audio)
    assert only.end == pytest.approx(1.4, abs=0.02)


def test_tiny_model_words_on_both_paths_of_the_transformers_backend(tiny_whisper_dir, zh_wav):
    """The tiny random model (its own alignment heads): every segment gets words inside it, with or without
    segment timestamps; the words are the segment's text."""
    from utils.transcribe import DecodeOptions, load_transcriber

    engine = load_transcriber(str(tiny_whisper_dir), "transformers")
    for timestamps in (False, True):
        transcript = engine.transcribe(str(zh_wav), DecodeOptions(language="zh", word_timestamps=True,
                                                                  timestamps=timestamps, max_new_tokens=6,
                                                                  temperatures=(0.0,), remove_pun=True))
        assert transcript.segments, "the random model said nothing: nothing to time"
        for s in transcript.segments:
            assert s.words and all(s.start <= w.start <= w.end <= s.end for w in s.words)
            assert "".join(w.word for w in s.words).replace(" ", "") == s.text.replace(" ", "")


# ---------------------------------------------------------------- real model, known boundaries

@pytest.fixture(scope="module")
def en_fixture(tmp_path_factory):
    from tools.bench_word_timestamps import EN_WORDS, make_word_fixture

    wav = tmp_path_factory.mktemp("words") / "en_words.wav"
    return wav, make_word_fixture(EN_WORDS, wav, language="en")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["transformers", "ct2"])
def test_word_times_on_a_recording_with_known_boundaries(en_fixture, backend):
    """Each word spoken alone and joined with known pauses: recognised words land near their true times
    (the accuracy goals are measured by tools/bench_word_timestamps.py; this bound catches a broken aligner)."""
    from tools.bench_word_timestamps import timing_errors
    from utils.transcribe import DecodeOptions, load_transcriber

    wav, truth = en_fixture
    transcriber = load_transcriber("openai/whisper-base", backend)
    transcript = transcriber.transcribe(str(wav), DecodeOptions(language="en", word_timestamps=True))
    words = [(w.word, w.start, w.end) for s in transcript.segments for w in s.words]
    errors = timing_errors(truth, words)
    assert errors["matched"] >= 0.8 * len(truth), (errors, transcript.text)
    # plain cross-attention DTW starts every word where the previous one ended (0.31 s early here, as
    # faster-whisper does); the pause refinement must bring starts back to the sound
    assert errors["start_median_s"] <= 0.08 and errors["mean_s"] <= 0.2, errors
    assert all(0 <= w.probability <= 1 for s in transcript.segments for w in s.words)
    segment = transcript.segments[0]
    assert all(segment.start <= w.start <= w.end <= segment.end for w in segment.words)
    # with segment timestamps too, every word stays inside its segment
    timed = transcriber.transcribe(str(wav), DecodeOptions(language="en", word_timestamps=True, timestamps=True))
    for s in timed.segments:
        assert s.words and all(s.start <= w.start <= w.end <= s.end for w in s.words)


@pytest.mark.slow
def test_word_starts_follow_the_sound_in_noise(en_fixture, tmp_path):
    """The pause threshold is relative to the recording: with white noise at ~17 dB SNR starts still follow
    the sound, and a recording without pauses keeps its aligned times."""
    import soundfile as sf

    from tools.bench_word_timestamps import timing_errors
    from utils.alignment import refine_word_times
    from utils.data import Word
    from utils.transcribe import DecodeOptions, load_transcriber

    wav, truth = en_fixture
    audio, sr = sf.read(wav, dtype="float32")
    noisy = tmp_path / "noisy.wav"
    sf.write(noisy, audio + 0.01 * np.random.default_rng(0).standard_normal(len(audio)).astype(np.float32), sr)
    transcript = load_transcriber("openai/whisper-base", "ct2").transcribe(
        str(noisy), DecodeOptions(language="en", word_timestamps=True))
    errors = timing_errors(truth, [(w.word, w.start, w.end) for s in transcript.segments for w in s.words])
    assert errors["matched"] >= 0.8 * len(truth) and errors["start_median_s"] <= 0.08, errors
    steady = (0.1 * np.sin(2 * np.pi * 220 * np.arange(3 * sr) / sr)).astype(np.float32)  # sound, no pause
    words = [Word(0.0, 1.0, " a", 0.9), Word(1.0, 2.5, " b", 0.9)]
    assert refine_word_times(words, steady) == words


@pytest.mark.slow
def test_long_recording_words_carry_their_chunk_offset(en_fixture, tmp_path):
    """A recording longer than 30 s is cut into chunks: words of later chunks are shifted by the chunk start."""
    import soundfile as sf

    from tools.bench_word_timestamps import timing_errors
    from utils.transcribe import DecodeOptions, load_transcriber

    wav, truth = en_fixture
    audio, sr = sf.read(wav, dtype="float32")
    long_wav = tmp_path / "long.wav"
    sf.write(long_wav, np.concatenate([audio, np.zeros(sr, np.float32), audio, np.zeros(sr, np.float32), audio]), sr)
    shift = len(audio) / sr + 1.0
    transcriber = load_transcriber("openai/whisper-base", "ct2")
    transcript = transcriber.transcribe(str(long_wav), DecodeOptions(language="en", word_timestamps=True))
    assert transcript.duration > 30 and len(transcript.segments) >= 2  # more than one chunk
    words = [(w.word, w.start, w.end) for s in transcript.segments for w in s.words]
    for k in range(3):  # each copy's words against that copy's true times
        copy_truth = [type(w)(w.word, w.start + k * shift, w.end + k * shift) for w in truth]
        copy_words = [w for w in words if k * shift - 0.5 <= w[1] < (k + 1) * shift - 0.5]
        errors = timing_errors(copy_truth, copy_words)
        assert errors["matched"] >= 0.8 * len(truth) and errors["start_median_s"] <= 0.1, (k, errors)


@pytest.mark.slow
def test_infer_writes_words_in_json(en_wav, tmp_path):
    import infer

    assert infer.main(["--audio_path", str(en_wav), "--backend=ct2", "--language=en", "--word_timestamps=True",
                       "--output_format=json", f"--output_dir={tmp_path}"]) == 0
    data = json.loads((tmp_path / "en.json").read_text())
    words = [w for s in data["segments"] for w in s["words"]]
    assert [w["word"].strip(".,").lower() for w in words][:3] == ["the", "quick", "brown"]
    assert all({"start", "end", "word", "probability"} <= set(w) for w in words)


@pytest.mark.slow
def test_infer_writes_one_subtitle_cue_per_word(en_wav, tmp_path):
    import infer

    assert infer.main(["--audio_path", str(en_wav), "--backend=ct2", "--language=en", "--word_timestamps=True",
                       "--subtitle_words=True", "--output_format=srt", f"--output_dir={tmp_path}"]) == 0
    cues = (tmp_path / "en.srt").read_text().strip().split("\n\n")
    assert len(cues) >= 8 and cues[1].split("\n")[2].strip(".,").lower() == "quick"
    with pytest.raises(SystemExit):
        infer.main(["--audio_path", str(en_wav), "--subtitle_words=True"])


@pytest.mark.slow
def test_evaluation_report_lists_words(tmp_path, en_wav):
    import evaluation

    manifest = tmp_path / "test.json"
    import soundfile as sf

    manifest.write_text(json.dumps({"audio": {"path": str(en_wav)}, "sentence": "The quick brown fox jumps over "
                                    "the lazy dog.", "language": "English",
                                    "duration": sf.info(en_wav).duration}) + "\n")
    report = tmp_path / "report.json"
    assert evaluation.main([f"--test_data={manifest}", "--backend=ct2", "--language=en", "--metric=wer",
                            "--word_timestamps=True", f"--output={report}"]) == 0
    words = json.loads(report.read_text())["utterances"][0]["words"]
    assert len(words) >= 8 and all(0 <= w["start"] <= w["end"] for w in words)


@pytest.mark.slow
def test_ct2_alignment_reuses_the_decodes_encoder_output(en_wav, zh_wav, monkeypatch):
    """Word timestamps cost an alignment pass, not another encoding of the audio."""
    from utils.audio import load_audio
    from utils.transcribe import DecodeOptions, load_transcriber

    engine = load_transcriber("openai/whisper-base", "ct2")
    calls = []
    encode = engine._encode
    monkeypatch.setattr(engine, "_encode", lambda feats: calls.append(len(feats)) or encode(feats))
    out = engine.transcribe_batch([load_audio(en_wav), load_audio(zh_wav)],
                                  DecodeOptions(language="en", word_timestamps=True))
    assert sum(calls) == 2 and all(t.segments[0].words for t in out)
