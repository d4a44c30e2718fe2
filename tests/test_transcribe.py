"""The inference engine: chunking, timestamps, fallback against loops, language detection, both backends."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import EN_SENTENCE, make_speech
from utils.audio import SAMPLE_RATE, load_audio
from utils.text import count_errors, error_rate, normalize_text
from utils.languages import language_code
from utils.repeats import compression_ratio, is_decoder_loop, longest_repeat, repeat_period, tail_loop
from utils.transcribe import (
    DecodeOptions,
    ct2_generated_at_most,
    ct2_max_length,
    encoder_window,
    join_texts,
    load_transcriber,
    pad_log_mel,
    postprocess_text,
    snap_to_speech,
    split_timestamp_tokens,
    token_budget,
)
from utils.audio import WINDOW_S
from utils.vad import Chunk, cut_every, merge_regions, split_on_silence, whole_clip, with_lead

LOOP = "佳奼亚瑞, " * 40


@pytest.fixture(scope="module")
def tiny(tiny_whisper_dir):
    return load_transcriber(str(tiny_whisper_dir), "transformers", device="cpu")


@pytest.fixture(scope="module")
def base_hf(whisper_base_dir):
    return load_transcriber(str(whisper_base_dir), "transformers", device="cpu")


@pytest.fixture(scope="module")
def base_ct2():
    return load_transcriber("openai/whisper-base", "ct2", device="cpu", compute_type="float32")


def _long_clip(en_wav, zh_wav) -> np.ndarray:
    """> 60 s: English and Mandarin sentences separated by 2 s of silence, repeated."""
    en, zh = load_audio(en_wav), load_audio(zh_wav)
    gap = np.zeros(2 * SAMPLE_RATE, dtype=np.float32)
    parts = []
    while sum(len(p) for p in parts) < 62 * SAMPLE_RATE:
        parts += [en, gap, zh, gap]
    return np.concatenate(parts)


# -- pure helpers ---------------------------------------------------------------------------------
def test_compression_ratio_flags_repetition_loop():
    assert compression_ratio(LOOP) > 2.4
    assert compression_ratio("今天天气很好，我们一起去公园散步吧。") < 2.4


def test_split_timestamp_tokens_both_styles():
    tb, eot = 100, 50
    # <|0.00|> 1 2 <|1.00|><|1.00|> 3 <|2.00|>   and   <|0.00|> 1 2 <|1.00|> 3 <|2.00|>
    for tokens in ([100, 1, 2, 150, 150, 3, 200, eot], [100, 1, 2, 150, 3, 200]):
        assert split_timestamp_tokens(tokens, tb, eot, duration=5.0) == [(0.0, 1.0, [1, 2]), (1.0, 2.0, [3])]
    # text after the last timestamp runs to the end; times past the audio are clamped
    assert split_timestamp_tokens([100, 1, 900, 4], tb, eot, duration=3.0) == [(0.0, 3.0, [1]), (3.0, 3.0, [4])]


def test_text_postprocessing():
    assert join_texts(["今天", "天气", "good", "day"]) == "今天天气 good day"
    # no space after or before full-width punctuation (chunks end at a sentence's "。"); Korean keeps its spaces
    assert join_texts(["压碎钱。", "今几年，", "good", "day。", "我们"]) == "压碎钱。今几年，good day。我们"
    assert join_texts(["안녕하세요", "감사합니다"]) == "안녕하세요 감사합니다"
    assert postprocess_text("今天天氣很好，我們走。", "zh", None, False) == "今天天气很好，我们走。"
    assert postprocess_text("天氣", "ja", None, False) == "天氣"  # auto: only Chinese is converted
    # the decoder's spaces beside full-width punctuation in code-switching speech go; a Latin comma's stays
    assert postprocess_text("我们用， Kubernetes ，部署。 Next", "zh", None, False) == "我们用，Kubernetes，部署。Next"
    assert postprocess_text("Hello, world. 你好", "en", None, False) == "Hello, world. 你好"
    assert postprocess_text("今天，天气好！Hi, you.", "zh", None, True) == "今天天气好 Hi you"
    # without punctuation, numbers and words keep what belongs to them ("3 5亿", "don t", "温度 5" before)
    assert postprocess_text("营收3.5亿元，增长12.5%。10:30，温度-5℃。", "zh", None, True) == "营收3.5亿元增长12.5% 10:30 温度-5℃"
    assert postprocess_text("I don't know, 1,000 people.", "en", None, True) == "I don't know 1000 people"


def test_word_texts_read_as_their_segments_text():
    """Traditional → simplified converts phrases: the words (one per character in Chinese) are converted together,
    so the srt built from them reads as the txt (干隆 in the cues, 乾隆 in the text, before); a phrase that changes
    length goes to the word it starts in."""
    from utils.data import Word
    from utils.transcribe import _word_texts

    def texts(words, **options):
        return _word_texts([Word(0.0, 1.0, w, 0.9) for w in words], "zh", DecodeOptions(**options))

    assert "".join(texts(list("乾隆皇帝的頭髮很乾淨"))) == postprocess_text("乾隆皇帝的頭髮很乾淨", "zh", None, False)
    assert texts(["乾隆", "在", "記憶體", "裡", "，"], remove_pun=True) == ["乾隆", "在", "内存里", "", ""]
    assert texts(list("天氣"), to_simple=False) == ["天", "氣"]


def test_cut_at_pauses_ends_a_segment_where_its_words_cross_a_long_pause():
    """A model fine-tuned without timestamp tokens reads a chunk as one segment; its words say where it crosses the
    VAD's pauses. A pause shorter than SEGMENT_PAUSE_S (a comma's) does not cut; a word is in the region its middle
    is in (or the nearest); the words go when they were aligned for the cut alone."""
    from utils.data import Word
    from utils.transcribe import _ChunkResult, cut_at_pauses

    regions = [(0.0, 2.4), (2.5, 4.4), (5.8, 8.2)]  # padded by 0.2 s: speech 0.2-2.2, 2.7-4.2 (0.5 s on), 6.0-8.0
    words = [Word(0.2, 1.0, "今天", 0.9), Word(1.0, 2.3, "天气好，", 0.9), Word(2.3, 3.5, "我们", 0.9),
             Word(3.5, 4.9, "走吧。", 0.9), Word(4.9, 7.0, "好的", 0.9), Word(7.0, 8.0, "。", 0.9)]
    result = _ChunkResult([(0.0, 8.0, "今天天气好，我们走吧。好的。")], "今天天气好，我们走吧。好的。", [[1, 2, 3]],
                          [words])
    cut = cut_at_pauses(result, regions, keep_words=False)
    # timed by their words, kept inside their regions: 走吧。 ran 0.5 s into the pause, 好的 started 0.9 s before
    assert cut.segments == [(0.2, 4.4, "今天天气好，我们走吧。"), (5.8, 8.0, "好的。")] and cut.words is None
    assert cut.tokens == [[1, 2, 3], []]  # no tokenizer given: the first piece keeps them
    assert cut_at_pauses(result, regions, keep_words=True).words == [words[:4], [replace(words[4], start=5.8),
                                                                                 words[5]]]
    assert cut_at_pauses(result, regions, keep_words=True, pause_s=0.4).segments[0][2] == "今天天气好，"
    assert cut_at_pauses(result, regions[:1], keep_words=True) == result  # one region: nothing to cut
    # each piece gets its own tokens (here a token per character) and its own part of the text as decoded, which
    # the words may space differently ("Bonjour !" is the word "Bonjour!"), up to a trailing "-" no word has
    text = " Bonjour ! Comment ça va ? -"
    fr = [Word(0.2, 1.0, " Bonjour!", 0.9), Word(6.0, 6.5, " Comment", 0.9), Word(6.5, 7.0, " ça", 0.9),
          Word(7.0, 8.0, " va?", 0.9)]
    result = _ChunkResult([(0.0, 8.0, text)], text, [list(range(len(text)))], [fr])
    cut = cut_at_pauses(result, regions, keep_words=False, decode=lambda ts: "".join(text[t] for t in ts))
    assert [t for *_, t in cut.segments] == ["Bonjour !", "Comment ça va ? -"]
    assert ["".join(text[t] for t in ts).strip() for ts in cut.tokens] == ["Bonjour !", "Comment ça va ? -"]


def test_token_cuts_count_a_character_split_over_byte_tokens_once():
    """A piece ending in a full-width "？" (three byte tokens): its first byte decoded as U+FFFD was counted as the
    character, the cut gave up, and the first piece kept every token (a 4-minute lecture's JSON had tokens that
    decode to the next sentence too, and "tokens": [] there). A broken byte sequence the decoder emitted counts for
    nothing."""
    from tokenizers import Tokenizer

    from utils.models import packaged_ct2_dir
    from utils.transcribe import _token_cuts

    tk = Tokenizer.from_file(str(packaged_ct2_dir("openai/whisper-base") / "tokenizer.json"))
    tokens = [12560, 8259, 119, 49817, 6025, 8090, 171, 120, 234, 15433, 47209, 41796, 3581, 11100, 6135, 25874,
              8842, 228, 3509, 123, 38409, 12501, 250, 20078, 171, 120, 253, 29618, 2930, 254, 40503, 45277, 8661,
              2131, 29309, 12136, 122, 4563, 45213, 1543]
    pieces = ["新闻报道说，台风江在明天登陆广东颜海？", "学习边城最好送派很开始。"]
    assert [tk.decode(t) for t in _token_cuts(tokens, pieces, tk.decode)] == pieces
    broken = tk.encode("你好", add_special_tokens=False).ids + [171, 120] + tk.encode("再见。", add_special_tokens=False).ids
    cuts = _token_cuts(broken, ["你好", "再见。"], tk.decode)
    assert tk.decode(cuts[0]) == "你好" and tk.decode(cuts[1]).replace("\ufffd", "") == "再见。"


def test_a_model_without_timestamp_tokens_gets_a_segment_per_sentence(base_ct2, repo_root, monkeypatch):
    """The demo model (fine-tuned without timestamp tokens) read each 25-30 s chunk as one segment of five to nine
    sentences: one .txt line, subtitle cues timed by text length across the pauses. Its chunks are cut at the pauses
    their aligned words cross. Simulated on whisper-base: its chunks' segments joined into one, as that model's are."""
    from utils.transcribe import _ChunkResult

    names = ("en_goforward.flac", "en_jfk.flac", "en_arctic_a0007.flac")
    clips = [load_audio(str(repo_root / "dataset" / "real" / n)) for n in names]
    gap = np.zeros(int(1.5 * SAMPLE_RATE), np.float32)
    audio = np.concatenate([clips[0], gap, clips[1], gap, clips[2]])
    starts = np.cumsum([0] + [len(c) + len(gap) for c in clips[:-1]]) / SAMPLE_RATE
    decode = base_ct2._decode_chunks

    def one_segment_per_chunk(*args, **kwargs) -> list[_ChunkResult]:
        joined = []
        for r in decode(*args, **kwargs):
            if r.segments:
                r = replace(r, segments=[(r.segments[0][0], r.segments[-1][1], "".join(t for *_, t in r.segments))],
                            words=None if r.words is None else [[w for ws in r.words for w in ws]],
                            tokens=None if r.tokens is None else [[t for ts in r.tokens for t in ts]],
                            stats=None if r.stats is None else r.stats[:1])
            joined.append(r)
        return joined

    monkeypatch.setattr(base_ct2, "_decode_chunks", one_segment_per_chunk)
    monkeypatch.setattr(base_ct2, "trained_without_timestamps", True, raising=False)
    for words in (False, True):
        t = base_ct2.transcribe(audio, DecodeOptions(language="en", timestamps=True, word_timestamps=words,
                                                     decode_stats=True))
        assert all(s.tokens for s in t.segments)  # each piece its own tokens (verbose_json, --output_format=json)
        seen = [int(np.searchsorted(starts, (s.start + s.end) / 2) - 1) for s in t.segments]
        assert len(t.segments) >= 3 and sorted(set(seen)) == [0, 1, 2], t.segments
        for s, k in zip(t.segments, seen):  # each segment within one recording
            assert starts[k] - 0.3 <= s.start and s.end <= starts[k] + len(clips[k]) / SAMPLE_RATE + 0.3, s
        assert all(bool(s.words) == words for s in t.segments)
        assert "forward" in t.segments[0].text.lower() and "country" in " ".join(s.text for s in t.segments)


def test_a_segment_stamped_across_a_long_pause_is_cut_by_its_words(base_ct2, repo_root, monkeypatch):
    """whisper-base over noise cued "degree." 107.0 → 118.5 s: its end stamped 0.3 s into the next sentence, 10 s of
    pause later, where the cue could not be moved out of a pause. A segment of a model that writes its own timestamps
    that holds speech on both sides of a pause of LONG_PAUSE_S or more is cut by its words, as a model fine-tuned
    without timestamp tokens has its segments cut at shorter pauses. (The arctic clip: 0.5 s of silence, then
    speech: the end is put 1.5 s into it.)"""
    from utils.transcribe import LONG_PAUSE_S

    first, second = (load_audio(str(repo_root / "dataset" / "real" / n))
                     for n in ("en_goforward.flac", "en_arctic_a0007.flac"))
    gap_s = LONG_PAUSE_S + 7.0
    audio = np.concatenate([first, np.zeros(int(gap_s * SAMPLE_RATE), np.float32), second])
    first_end, second_start = len(first) / SAMPLE_RATE, len(first) / SAMPLE_RATE + gap_s
    decode = base_ct2._decode_chunks

    def stamped_late(*args, **kwargs):  # the last segment before the pause ends in the speech after it
        out = []
        for r in decode(*args, **kwargs):
            late = [k for k, (a, b, _) in enumerate(r.segments) if a < first_end]
            if late:
                k = late[-1]
                a, _, text = r.segments[k]
                r = replace(r, segments=[*r.segments[:k], (a, second_start + 1.5, text), *r.segments[k + 1:]])
            out.append(r)
        return out

    monkeypatch.setattr(base_ct2, "_decode_chunks", stamped_late)
    t = base_ct2.transcribe(audio, DecodeOptions(language="en", timestamps=True))
    assert "forward" in t.text.lower() and len(t.segments) >= 2
    assert all(s.end < first_end + 1.0 or s.start > second_start - 1.0 for s in t.segments), t.segments


def test_decode_options_validate_and_normalise_language():
    assert DecodeOptions(language="Chinese").language == "zh"
    assert language_code("<|en|>") == "en"
    with pytest.raises(ValueError, match="unknown language 'klingon'"):
        DecodeOptions(language="klingon")
    with pytest.raises(ValueError, match="task"):
        DecodeOptions(task="summarize")
    with pytest.raises(ValueError, match="beam_size"):
        DecodeOptions(beam_size=0)


def test_token_budget_grows_with_duration_and_is_capped():
    assert token_budget(2.0, False) < token_budget(10.0, False) < token_budget(10.0, True)
    assert token_budget(30.0, True) == 224


def test_ct2_max_length_lets_ctranslate2_generate_the_whole_budget():
    """CTranslate2's Whisper generate() stops after max_length // 2 tokens (and within the text context after the
    prompt): the max_length given must be twice the budget, not prompt + budget (which let it generate 114 of 224)."""
    for prompt in (4, 60, 200):
        for budget in (8, 60, 116, 224):
            length = ct2_max_length(prompt, budget)
            assert length <= 448
            assert ct2_generated_at_most(prompt, length) == min(budget, 449 - prompt), (prompt, budget)
    assert ct2_generated_at_most(4, 4 + 224) == 114  # the max_length given before


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ct2", "transformers"])
def test_dense_speech_is_read_to_the_end_of_its_window(backend, base_ct2, base_hf, repo_root, tmp_path):
    """Fast speech fills a 30 s window with text that needs over half the token budget: 16 sentences at 300 words a
    minute, 28 s, 142 words in one chunk. The ct2 backend used to stop after 102 words (WER 0.38): CTranslate2 was
    allowed to generate only half of the budget (test above)."""
    audio, said = _dense_english(repo_root, tmp_path)
    engine = base_ct2 if backend == "ct2" else base_hf
    text = engine.transcribe(audio, DecodeOptions(language="en", temperatures=(0.0,))).text
    assert normalize_text(said[-1]).split()[-2:] == normalize_text(text).split()[-2:], text  # read to the end
    assert count_errors(" ".join(said), text, "wer", language="en").rate < 0.2, text


def _dense_english(repo_root: Path, tmp_path: Path, pause_s: float = 0.25) -> tuple[np.ndarray, list[str]]:
    """16 espeak English sentences at 300 words a minute, ``pause_s`` apart, in one window (≥ 25 s with the default
    pause; 24 s without); and what was said."""
    from utils.data import load_manifest

    manifest = repo_root / "dataset" / "general" / "general_en.json"
    records = [r for r in load_manifest(str(manifest)) if r.sentence.strip()]
    parts, said = [], []
    pause = np.zeros(int(pause_s * SAMPLE_RATE), np.float32)
    for i, record in enumerate(records):
        speech = load_audio(make_speech(record.sentence, tmp_path / f"{i}.wav", speed=300))
        if sum(len(p) for p in parts) + len(speech) > 29 * SAMPLE_RATE:
            break
        parts += [speech, pause]
        said.append(record.sentence)
    audio = np.concatenate(parts)
    assert len(said) >= 12 and len(audio) > 20 * SAMPLE_RATE, (len(said), len(audio))  # dense: one window's worth
    return audio, said


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ct2", "transformers"])
def test_speech_denser_than_the_token_budget_is_read_in_halves(backend, base_ct2, base_hf, repo_root, tmp_path,
                                                               monkeypatch):
    """A window whose text needs more tokens than its budget (Mandarin at 8 characters/s: 240 characters and more
    in 30 s against 224 tokens, which is all CTranslate2 can generate in one call) was read up to the budget and the
    rest dropped, the last sentences lost without a sign. Now it is cut at the pause nearest its middle (without one,
    at its quietest point there) and both halves are read: in a long recording and a single clip (infer.py), and in a
    batch of clips (evaluation.py). Here the dense English window (~170 tokens) against a budget capped at 120 stands
    for that; a budget the user set (``max_new_tokens``) is kept, and so is a streaming buffer (``cut_clip=False``).
    Those two and the window without pauses are the shared chunking (``_BaseTranscriber``): checked on ct2 only."""
    import utils.transcribe as tr

    audio, said = _dense_english(repo_root, tmp_path)
    engine = base_ct2 if backend == "ct2" else base_hf
    options = DecodeOptions(language="en", temperatures=(0.0,))
    capped = tr.token_budget
    monkeypatch.setattr(tr, "token_budget", lambda seconds, timestamps, limit=120: capped(seconds, timestamps, limit))
    last = normalize_text(said[-1]).split()[-2:]
    for timestamps in (False, True):
        text = engine.transcribe(audio, replace(options, timestamps=timestamps)).text
        assert normalize_text(text).split()[-2:] == last, text  # read to the end
        assert count_errors(" ".join(said), text, "wer", language="en").rate < 0.2, text
    (batch,) = engine.transcribe_batch([audio], options)
    assert normalize_text(batch.text).split()[-2:] == last, batch.text
    assert count_errors(" ".join(said), batch.text, "wer", language="en").rate < 0.2, batch.text
    if backend == "transformers":
        return  # what follows is the shared chunking (_BaseTranscriber), not the backend's decode: ct2 runs it faster
    words = len(normalize_text(" ".join(said)).split())
    for kept in (engine.transcribe(audio, replace(options, max_new_tokens=120)).text,  # the caller's budget
                 engine.transcribe(audio, options, cut_clip=False).text):  # streaming's buffers are never cut
        assert normalize_text(kept).split()[-2:] != last and len(normalize_text(kept).split()) < words - 10, kept
    # the sentences said without a pause between them: no break to cut at, so at the quietest point of the middle
    joined, said = _dense_english(repo_root, tmp_path, pause_s=0.0)
    assert whole_clip(joined).breaks == ()
    text = engine.transcribe(joined, options).text
    assert normalize_text(text).split()[-2:] == normalize_text(said[-1]).split()[-2:], text
    whole = engine.transcribe(joined, replace(options, max_new_tokens=224)).text  # read whole (~170 tokens)
    rates = [count_errors(" ".join(said), t, "wer", language="en").rate for t in (text, whole)]
    assert rates[0] <= rates[1] + 0.06, (rates, text)  # here 0.19 vs 0.155: a word cut


def test_ct2_features_are_padded_like_training_features(whisper_base_dir, en_wav):
    """The ct2 backend's log-mel of a short clip equals what training and the transformers backend feed the model
    (audio zero-padded to 30 s, then log-mel): the frames after the speech hold the log-mel of silence (about
    -0.75 here), not the 0.0 that faster-whisper's batched pipeline pads with."""
    from faster_whisper.feature_extractor import FeatureExtractor
    from transformers import WhisperFeatureExtractor

    audio = load_audio(en_wav)
    expected = WhisperFeatureExtractor.from_pretrained(whisper_base_dir)(
        audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
    got = pad_log_mel(FeatureExtractor()(audio)[..., :-1])
    assert got.shape == expected.shape == (80, 3000)
    speech_frames = len(audio) // 160
    assert expected[:, speech_frames + 5:].max() < -0.3  # silence is far from 0.0
    np.testing.assert_allclose(got[:, speech_frames + 5:], expected[:, speech_frames + 5:], atol=1e-4)
    np.testing.assert_allclose(got[:, :speech_frames - 2], expected[:, :speech_frames - 2], atol=2e-3)
    assert pad_log_mel(np.zeros((80, 3100), np.float32)).shape == (80, 3000)


def test_merge_regions_respects_window_and_covers_speech():
    sr = SAMPLE_RATE
    regions = [Chunk(0, 10 * sr), Chunk(12 * sr, 25 * sr), Chunk(27 * sr, 40 * sr), Chunk(41 * sr, 111 * sr)]
    chunks = merge_regions(regions, max_chunk_s=30.0)
    assert all(c.end - c.start <= 30 * sr for c in chunks)
    assert chunks[0] == Chunk(0, 25 * sr)  # two regions merged, the third would exceed 30 s
    covered = np.zeros(111 * sr, dtype=bool)
    for c in chunks:
        covered[c.start:c.end] = True
    assert all(covered[r.start:r.end].all() for r in regions)
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)


def test_a_model_fine_tuned_on_one_language_decodes_in_it_unless_told_to_detect(tiny_whisper_dir, tmp_path, caplog):
    """finetune.py writes the language into the generation config: a model fine-tuned on Chinese transcribes
    Chinese without --language (as the upstream scripts' default did), no detection on every clip (a short clip
    of a fine-tuned model is easily detected as another language); ``auto`` still detects."""
    import json
    import shutil

    from utils.transcribe import _ct2_model_language

    tuned = tmp_path / "tuned"
    shutil.copytree(tiny_whisper_dir, tuned)
    config = json.loads((tuned / "generation_config.json").read_text())
    (tuned / "generation_config.json").write_text(json.dumps({**config, "language": "Chinese"}))
    engine = load_transcriber(str(tuned), "transformers", device="cpu")
    assert engine.model_language == "zh"
    detected = []
    detect = engine._detect_language

    def spy(chunks):
        detected.append(len(chunks))
        return detect(chunks)

    engine._detect_language = spy
    clip = np.zeros(SAMPLE_RATE, np.float32)
    opts = DecodeOptions(temperatures=(0.0,), max_new_tokens=3)
    (out,) = engine.transcribe_batch([clip], opts, vad=False)  # decoded, though it is silence
    assert (out.language, out.language_probability, detected) == ("zh", 1.0, [])
    assert engine.fixed_language(replace(opts, language="en")) == "en"
    auto = replace(opts, language="AUTO")
    assert auto.language == "auto" and engine.fixed_language(auto) is None
    with pytest.raises(ValueError, match="unknown language 'Klingon'"):
        DecodeOptions(language="Klingon")
    engine.transcribe_batch([clip], auto, vad=False)
    assert detected == [1]
    assert load_transcriber(str(tiny_whisper_dir), "transformers", device="cpu").model_language is None
    # a CTranslate2 folder: its copy of the generation config (merge_lora.py --ct2 writes one), or none
    ct2 = tmp_path / "ct2"
    ct2.mkdir()
    assert _ct2_model_language(str(ct2)) is None
    (ct2 / "generation_config.json").write_text(json.dumps({"language": "<|yue|>"}))
    assert _ct2_model_language(str(ct2)) == "yue"
    (ct2 / "generation_config.json").write_text(json.dumps({"language": "Klingon"}))
    assert _ct2_model_language(str(ct2)) is None and "Klingon" in caplog.text
    (ct2 / "generation_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="generation_config.json: not a readable JSON"):
        _ct2_model_language(str(ct2))


def test_merge_regions_cuts_between_sentences_not_inside_them():
    """A sentence said 8 times (a short phrase, a pause of < 0.4 s, the rest: two regions whose padding touches;
    0.7 s between takes): packing would cut the fourth take after its first phrase (26.4 s); the same 3 chunks are
    cut between takes instead. Where every pause is short, the cut falls where packing puts it."""
    sr = SAMPLE_RATE
    takes = [t * 8.4 for t in range(8)]
    regions = [Chunk(round(x * sr), round(y * sr)) for t in takes for x, y in ((t, t + 1.2), (t + 1.2, t + 7.7))]
    chunks = merge_regions(regions, max_chunk_s=30.0)
    assert [(round(c.start / sr, 2), round(c.end / sr, 2)) for c in chunks] == [(0.0, 24.5), (25.2, 49.7), (50.4, 66.5)]
    assert [len(c.breaks) for c in chunks] == [5, 5, 3] and sum(c.speech for c in chunks) == sum(
        r.end - r.start for r in regions)
    touching = [Chunk(k * 5 * sr, (k + 1) * 5 * sr) for k in range(10)]  # 50 s, no pause the VAD kept apart
    assert [(c.start // sr, c.end // sr) for c in merge_regions(touching, max_chunk_s=30.0)] == [(0, 25), (25, 50)]


def test_merge_regions_makes_chunks_as_even_as_it_can():
    """A real sentence said 8 times (3.6 s each, 1.6 s apart: 40 s): packing made a 29.8 s chunk of 6 takes and a
    7.6 s one of 2, and the worker decoding the long one took 3 times as long as the other; the same two chunks hold
    4 takes each. A chunk still takes what fits, and a cut between touching regions stays the last resort."""
    sr = SAMPLE_RATE
    regions = [Chunk(round(t * 5.2 * sr), round((t * 5.2 + 3.6) * sr)) for t in range(8)]
    chunks = merge_regions(regions, max_chunk_s=30.0)
    assert [len(c.spans) for c in chunks] == [4, 4]
    assert [(round(c.start / sr, 1), round(c.end / sr, 1)) for c in chunks] == [(0.0, 19.2), (20.8, 40.0)]
    assert [len(c.spans) for c in merge_regions(regions[:6], max_chunk_s=30.0)] == [6]  # one window: one chunk
    # 13 takes: 3 chunks of 5, 4 and 4 (packed: 6, 6 and 1; 4, 5, 4 is as even: on ties the earlier are longer)
    takes = [Chunk(round(t * 5.2 * sr), round((t * 5.2 + 3.6) * sr)) for t in range(13)]
    assert [len(c.spans) for c in merge_regions(takes, max_chunk_s=30.0)] == [5, 4, 4]
    # two CPU workers decode every other chunk: 3 chunks are packed (6, 6, 1 takes: the short one beside a full one;
    # 5, 4, 4 had one worker decode 9 takes, the other 4), 2 made even; three workers share 3 even chunks
    assert [len(c.spans) for c in merge_regions(takes, max_chunk_s=30.0, workers=2)] == [6, 6, 1]
    assert [len(c.spans) for c in merge_regions(takes, max_chunk_s=30.0, workers=3)] == [5, 4, 4]
    assert [len(c.spans) for c in merge_regions(regions, max_chunk_s=30.0, workers=2)] == [4, 4]
    # 22 takes, 4 chunks: even on 2 workers (2 each) and in batches of 2 or 4; packed on 3 workers, or on 2 in
    # batches of 3 (3 chunks side by side, then one alone)
    many = [Chunk(round(t * 5.2 * sr), round((t * 5.2 + 3.6) * sr)) for t in range(22)]
    for workers, batch, grouping in ((2, 0, [6, 6, 5, 5]), (2, 2, [6, 6, 5, 5]), (2, 4, [6, 6, 5, 5]),
                                     (3, 0, [6, 6, 6, 4]), (2, 3, [6, 6, 6, 4]), (1, 0, [6, 6, 5, 5])):
        assert [len(c.spans) for c in merge_regions(many, 30.0, workers, batch)] == grouping, (workers, batch)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        merge_regions(many, 30.0, workers=0)
    # a cut inside a sentence (touching regions) only where no even grouping avoids it
    phrases = [Chunk(0, 12 * sr), Chunk(12 * sr, 24 * sr), Chunk(25 * sr, 35 * sr)]  # even: 12 + 23 s
    assert [(c.start // sr, c.end // sr) for c in merge_regions(phrases, max_chunk_s=30.0)] == [(0, 24), (25, 35)]


def test_ct2_cpu_workers_ask_for_chunks_they_can_share(tiny_whisper_dir, monkeypatch):
    """A long recording is cut for the CT2 backend's CPU workers (every other chunk on one of two), for one batch on
    the transformers backend, and for one chunk at a time with condition_on_previous_text."""
    import utils.transcribe as tr

    asked = []
    monkeypatch.setattr(tr, "split_on_silence", lambda audio, workers=1, batch_size=0: asked.append(
        (workers, batch_size)) or [])
    monkeypatch.setattr(tr, "available_cpus", lambda: 2)
    audio = np.zeros(40 * SAMPLE_RATE, np.float32)
    ct2 = load_transcriber("openai/whisper-base", "ct2", device="cpu", cpu_threads=2)
    assert ct2.workers == 2
    ct2.transcribe(audio, DecodeOptions(language="en"))
    ct2.transcribe(audio, DecodeOptions(language="en", batch_size=3))
    ct2.transcribe(audio, DecodeOptions(language="en", batch_size=1))  # a chunk alone: on every thread
    ct2.transcribe(audio, DecodeOptions(language="en", condition_on_previous_text=True))
    tiny = load_transcriber(str(tiny_whisper_dir), "transformers", device="cpu")
    tiny.transcribe(audio, DecodeOptions(language="en"))
    assert asked == [(2, 8), (2, 3), (1, 1), (1, 1), (1, 8)]


def test_a_chunk_knows_where_it_can_be_cut_without_cutting_a_word():
    sr = SAMPLE_RATE
    regions = [Chunk(0, 4 * sr), Chunk(6 * sr, 10 * sr), Chunk(10 * sr, 14 * sr), Chunk(15 * sr, 19 * sr),
               Chunk(20 * sr, 95 * sr)]
    chunks = merge_regions(regions, max_chunk_s=30.0)
    assert chunks[0] == Chunk(0, 19 * sr) and chunks[0].breaks == (5 * sr, 10 * sr, int(14.5 * sr))
    assert all(c.breaks == () for c in chunks[1:])  # one region cut hard into windows: no silence to cut at
    assert cut_every(chunks[0], 5.0) == [Chunk(0, 5 * sr), Chunk(5 * sr, 10 * sr), Chunk(10 * sr, int(14.5 * sr)),
                                         Chunk(int(14.5 * sr), 19 * sr)]
    halves = cut_every(chunks[0], 9.5)
    assert halves == [Chunk(0, 10 * sr), Chunk(10 * sr, 19 * sr)] and halves[1].breaks == (int(14.5 * sr),)
    assert cut_every(chunks[0], 30.0) == [chunks[0]]  # no break half a piece away from both ends
    assert cut_every(chunks[1], 5.0) == [chunks[1]]
    # the speech regions go with every chunk and piece (the repetition check needs no second VAD pass)
    assert chunks[0].spans == ((0, 4 * sr), (6 * sr, 10 * sr), (10 * sr, 14 * sr), (15 * sr, 19 * sr))
    assert chunks[1].spans == ((20 * sr, 50 * sr),)
    assert [p.spans for p in halves] == [((0, 4 * sr), (6 * sr, 10 * sr)), ((10 * sr, 14 * sr), (15 * sr, 19 * sr))]
    led_audio, led = with_lead(np.zeros(95 * sr, np.float32), [replace(chunks[0], lead=sr)])
    assert len(led_audio) == 96 * sr and led[0].spans[0] == (sr, 5 * sr) and (led[0].start, led[0].end) == (0, 20 * sr)


def test_repeat_period_is_the_length_of_the_unit_said_again():
    sentence = list(range(100, 114))
    assert repeat_period(sentence * 3) == 14 and repeat_period(sentence + [1, 2] + sentence) == 16
    assert repeat_period(list(range(200))) is None and repeat_period(sentence + sentence[:11]) is None
    assert repeat_period([7] * 23) is None and repeat_period([7] * 24) == 1  # a run may not overlap itself
    # a unit shorter than the run is its own length, not the two takes the run spans (10-token takes: 20)
    take = list(range(100, 110))
    assert repeat_period(take * 4) == 10 and repeat_period(take * 5) == 10 and repeat_period(take * 3) is None
    assert repeat_period((take + [1]) * 3 + take) == 11


class _Miscounting:
    """A decoder that loses count in a window holding the same sentence (14 tokens, 6 s) more than twice: it
    says it twice at most."""

    UNIT = list(range(100, 114))

    def __init__(self) -> None:
        self.calls: list[tuple[list[float], list[bool] | None]] = []
        self.beams: list[int] = []

    def __call__(self, chunks, languages, options, prompt, split_repeats=None):
        from utils.transcribe import _ChunkResult

        self.calls.append(([round(len(c) / SAMPLE_RATE, 2) for c in chunks], split_repeats and list(split_repeats)))
        self.beams.append(options.beam_size)
        out = []
        for c in chunks:
            seconds = len(c) / SAMPLE_RATE
            times = min(2, max(1, round(seconds / 6)))
            out.append(_ChunkResult([(0.0, seconds, "unit " * times)], "unit " * times, tokens=[self.UNIT * times]))
        return out


def _aligner(seconds_per_token: float = 6 / 14, spans_of=None):
    """A fake ``_align``: each chunk's tokens one after another from its start, ``seconds_per_token`` each (the
    decoder's sentence of 14 tokens takes 6 s); or, with ``spans_of(chunk)``, take k's 14 tokens spread over the
    k-th speech span (a perfect aligner for a recording of takes)."""
    from utils.audio import TIME_PRECISION

    def align(chunks, languages, tokens, task):
        out = []
        for chunk, text in zip(chunks, tokens):
            n = len(text)
            if spans_of is None:
                starts = np.arange(n + 1) * seconds_per_token
            else:
                spans = spans_of(chunk)
                starts = np.concatenate([np.linspace(*spans[k // 14], 14, endpoint=False) for k in range(0, n, 14)]
                                        + [[spans[(n - 1) // 14][1]]])
            frames = np.round(starts / TIME_PRECISION).astype(np.int64)
            out.append((np.arange(n + 1), frames, np.ones(n)))
        return out
    return align


def _all_speech(monkeypatch) -> None:
    """The VAD hears speech from a chunk's first sample to its last (the tests' audio is silence)."""
    import utils.transcribe

    monkeypatch.setattr(utils.transcribe, "speech_spans", lambda wave: [(0.0, len(wave) / SAMPLE_RATE)])


def test_unread_speech_is_the_longest_stretch_of_speech_without_a_token():
    from utils.repeats import unread_speech

    starts = np.array([0.3, 0.6, 1.0, 1.5, 2.0, 3.9])  # five tokens read from 0.3 s to 3.9 s
    assert unread_speech(starts, [(0.3, 4.0)]) == pytest.approx(1.9)  # 2.0-3.9: the longest token
    assert unread_speech(starts, [(0.3, 4.0), (5.6, 9.2)]) == pytest.approx(3.6)  # a second take not read
    assert unread_speech(starts, [(4.2, 5.0)]) == pytest.approx(0.8) and unread_speech(starts, []) == 0.0
    assert unread_speech(np.array([]), [(0.0, 2.0)]) == pytest.approx(2.0)


def test_a_chunk_whose_text_repeats_and_left_speech_unread_is_decoded_again_a_repetition_at_a_time(tiny,
                                                                                                    monkeypatch):
    """The same sentence (14 tokens, 6 s) said four times in a 24 s chunk, which the decoder reads as twice: the
    alignment leaves 12 s of speech unread. The unit is half the text (12 s), or 5 s at the slowest rate of right
    readings (2.8 tokens/s), whichever is shorter; the chunk is cut at the silences nearest every 5 s from a piece's
    start (0-6 s, 6-11 s, 11-18 s, 18-24 s) and the pieces are decoded instead (once: they are kept as they come).
    A chunk with no silence inside is left as it is, and its decode keeps the temperature fallback."""
    from utils.repeats import take_seconds

    assert take_seconds(14, 28, 24.0) == pytest.approx(5.0) and take_seconds(14, 42, 24.0) == pytest.approx(5.0)
    assert take_seconds(14, 56, 8.0) == pytest.approx(2.0)  # a dense reading: the unit's share
    sr = SAMPLE_RATE
    audio = np.zeros(40 * sr, np.float32)
    repeated = Chunk(0, 24 * sr, (6 * sr, 11 * sr, 18 * sr))
    solid = Chunk(25 * sr, 37 * sr)
    fake = _Miscounting()
    monkeypatch.setattr(tiny, "_decode", fake)
    monkeypatch.setattr(tiny, "_align", _aligner())
    _all_speech(monkeypatch)
    results = tiny._decode_chunks(audio, [repeated, solid], "en", DecodeOptions(language="en", batch_size=8), None)
    assert fake.calls == [([24.0, 12.0], [True, False]),  # the first may skip the fallback: it will be cut
                          ([6.0, 5.0, 7.0, 6.0], [False, False, False, False])]
    first, second = results
    assert [s[:2] for s in first.segments] == [(0.0, 6.0), (6.0, 11.0), (11.0, 18.0), (18.0, 24.0)]
    assert first.tokens == [_Miscounting.UNIT] * 4
    assert first.text.split() == ["unit"] * 4
    assert second.text.split() == ["unit"] * 2  # nowhere to cut it
    fake.calls.clear()
    tiny._decode_chunks(audio, [repeated], "en", DecodeOptions(language="en", batch_size=2), None)
    assert fake.calls == [([24.0], [True]), ([6.0, 5.0], [False, False]), ([7.0, 6.0], [False, False])]  # batches


def test_a_dropped_take_is_read_between_the_silences_around_it_and_goes_in_at_a_seam_between_takes():
    """The stretches of speech no token starts in are found (each ≥ MAX_UNREAD_SPEECH_S) and widened to the breaks
    around them, two between the same breaks read as one part (about one take long, or the whole chunk is cut).
    Its text goes in at the seam between takes nearest the tokens around the stretch (within a slack, or the whole
    chunk is cut), not where the alignment puts it (it spreads the takes around a dropped one into its speech); the
    seams are counted back from where the repetition stops ("。" ends a take, and the sentence before it too) to
    where it starts. The reading keeps all of its tokens (a
    segment with tokens on both sides of a seam is split, its text decoded from its tokens) and its words, in time
    order."""
    from utils.data import Word
    from utils.repeats import Reading, RereadPart, reread_parts, take_seams, unread_stretches
    from utils.transcribe import _ChunkResult, _spliced

    unit = list(range(100, 110)) + [50]  # a sentence ending in "。" (50)
    assert take_seams([7, 8, 50] + unit * 2 + [9], (2, 11)) == [0, 3, 14, 25, 26]  # not at the first "。"
    assert take_seams(unit * 3, (0, 11)) == [0, 11, 22, 33]
    assert take_seams(list(range(30)) + unit * 2, (30, 11)) == [0, 30, 41, 52]  # none inside the sentences before
    starts = np.array([0.2, 1.0, 2.0, 2.9, 9.1, 10.0, 11.4])  # six tokens, the last ending at 11.4 s
    spans = [(0.0, 3.0), (3.5, 6.5), (7.0, 8.6), (9.0, 11.4)]
    assert unread_stretches(starts, spans) == [(3.5, 6.5), (7.0, 8.6)]
    assert unread_stretches(starts, spans, min_s=1.6) == [(3.5, 6.5)]
    sr = SAMPLE_RATE
    chunk = Chunk(sr, 13 * sr, (int(4.25 * sr), int(7.75 * sr), int(9.8 * sr)),
                  spans=tuple((int(sr + a * sr), int(sr + b * sr)) for a, b in spans))
    reading = Reading(starts, spans)
    (only,) = reread_parts(chunk, 6.0, reading, [0, 4, 6])  # one take's piece
    assert (only.region.start, only.region.end, only.at) == (int(4.25 * sr), int(9.8 * sr), 4)  # 3.25-8.8 s
    assert only.pieces == [only.region]
    (early,) = reread_parts(chunk, 6.0, reading, [0, 3, 6], slack=1)
    assert early.at == 3  # four tokens before the stretch: the seam after three is nearer than the one after six
    # a seam further from the stretch than the slack: a sentence dropped between two others, not a take
    (far,) = reread_parts(chunk, 6.0, reading, [0, 3, 6], slack=0)
    assert far.region == chunk and far.at is None
    assert reread_parts(Chunk(0, 6 * sr), 3.0, Reading(np.array([0.1, 0.5]), [(0.0, 6.0)]), [0, 1]) == []
    assert [(p.region.start, p.region.end, p.at) for p in reread_parts(chunk, 3.0)] == [(sr, 13 * sr, None)]
    # more than one take's time unread (two pieces of 3 s): the alignment may have spread the takes read over more
    # than was dropped, so the whole chunk is cut into takes
    (whole_chunk,) = reread_parts(chunk, 3.0, reading, [0, 4, 6])
    assert whole_chunk.region == chunk and whole_chunk.at is None and len(whole_chunk.pieces) == 4

    class Tokens:
        def decode(self, tokens):
            return " ".join(f"t{t}" for t in tokens)

    whole = _ChunkResult([(0.0, 12.0, "whole")], "whole", tokens=[[1, 2, 3, 4, 5, 6]],
                         words=[[Word(float(t), float(t) + 0.5, f"w{k}", 1.0) for k, t in enumerate(starts[:6])]])
    part_result = _ChunkResult([(0.1, 2.5, "take"), (3.0, 5.0, "again")], "take again", tokens=[[7], [8]],
                               words=[[Word(0.1, 2.5, "take", 0.9)], [Word(3.0, 5.0, "again", 0.9)]])
    out = _spliced(whole, chunk, [(only, part_result)], Tokens())
    assert out.segments == [(0.0, 3.25, "t1 t2 t3 t4"), (3.35, 5.75, "take"), (6.25, 8.25, "again"),
                            (8.8, 12.0, "t5 t6")]
    assert out.tokens == [[1, 2, 3, 4], [7], [8], [5, 6]]
    assert [[w.word for w in ws] for ws in out.words] == [["w0", "w1", "w2", "w3"], ["take"], ["again"],
                                                          ["w4", "w5"]]
    assert out.text == "t1 t2 t3 t4 take again t5 t6"
    out = _spliced(whole, chunk, [(early, part_result)], Tokens())
    assert [seg[2] for seg in out.segments] == ["t1 t2 t3", "take", "again", "t4 t5 t6"]
    assert [[w.word for w in ws] for ws in out.words] == [["w0", "w1", "w2"], ["take"], ["again"],
                                                          ["w3", "w4", "w5"]]
    whole_part = RereadPart(chunk, [chunk])
    assert _spliced(whole, chunk, [(whole_part, part_result)], Tokens()) is part_result


def test_decode_stats_follow_their_segments_through_splices_and_joins():
    """Each segment keeps the statistics of the decode that read it (OpenAI's verbose_json fields); a piece read
    again later in the chunk has its ``seek`` moved to where it starts, the chunk's offset is added, and a chunk's
    lead of silence (before the audio) does not make it negative."""
    from utils.data import DecodeStats
    from utils.repeats import RereadPart
    from utils.transcribe import _ChunkResult, _joined, _shifted, _spliced

    class Tokens:
        def decode(self, tokens):
            return " ".join(f"t{t}" for t in tokens)

    sr = SAMPLE_RATE
    chunk = Chunk(0, 12 * sr)
    whole_stats = DecodeStats(0, -0.3, 0.01, 1.2, 0.0)
    again_stats = DecodeStats(0, -0.2, 0.02, 1.1, 0.0)
    whole = _ChunkResult([(0.0, 12.0, "whole")], "whole", tokens=[[1, 2, 3, 4]], stats=[whole_stats])
    again = _ChunkResult([(0.5, 2.0, "take")], "take", tokens=[[7]], stats=[again_stats])
    part_ = RereadPart(Chunk(4 * sr, 8 * sr), [Chunk(4 * sr, 8 * sr)], at=2, at_s=4.0)
    out = _spliced(whole, chunk, [(part_, again)], Tokens())
    assert [seg[2] for seg in out.segments] == ["t1 t2", "take", "t3 t4"]
    assert [(st.seek, st.avg_logprob) for st in out.stats] == [(0, -0.3), (400, -0.2), (0, -0.3)]
    joined = _joined(out, again, 10.0)
    assert [st.seek for st in joined.stats] == [0, 400, 0, 1000] and len(joined.tokens) == 4
    pieces = list(_shifted(joined, 30.0))
    assert [p.stats.seek for p in pieces] == [3000, 3400, 3000, 4000] and pieces[1].tokens == [7]
    assert [p.stats.seek for p in _shifted(whole, -0.4)] == [0]  # a lead of silence: not before the audio
    no_stats = _ChunkResult([(0.0, 1.0, "x")], "x", tokens=[[5]])
    assert _joined(whole, no_stats, 5.0).stats is None and _spliced(whole, chunk, [(part_, no_stats)],
                                                                     Tokens()).stats is None


def test_a_dropped_take_with_a_comma_pause_is_read_whole():
    """A take whose comma pause the VAD heard as two regions that touch ("Repeat after me, | the quick brown fox
    …"; espeak, 5.6 s a take): the takes read around a dropped one were aligned over its first words, so only the
    rest of it was left unread. The part read again is the whole take, between the pauses around it; where that is
    more than a take, between the nearest breaks as before."""
    from utils.repeats import Reading, reread_parts, unread_stretches

    sr = SAMPLE_RATE
    regions = [Chunk(round(x * sr), round(y * sr)) for k in range(4)
               for x, y in ((5.6 * k, 5.6 * k + 1.5), (5.6 * k + 1.5, 5.6 * k + 5.0))]
    (chunk,) = merge_regions(regions, max_chunk_s=30.0)
    spans = [((a - chunk.start) / sr, (b - chunk.start) / sr) for a, b in chunk.spans]
    before = [0.1 + 0.5 * i for i in range(21)] + [11.3, 11.8, 12.5]  # takes 1-2, and over take 3's first words
    starts = np.array(before + [16.9 + 0.5 * i for i in range(10)] + [21.8])
    assert [(round(a, 1), round(b, 1)) for a, b in unread_stretches(starts, spans)] == [(12.7, 16.2)]
    (take,) = reread_parts(chunk, 5.6, Reading(starts, spans), [0, len(before), len(starts) - 1])
    assert (round(take.region.start / sr, 1), round(take.region.end / sr, 1), take.at) == (10.9, 16.5, len(before))
    assert take.pieces == [take.region]
    (rest,) = reread_parts(chunk, 2.0, Reading(starts, spans), [0, len(before), len(starts) - 1])
    assert (round(rest.region.start / sr, 1), round(rest.region.end / sr, 1)) == (12.7, 16.5)
    # no pause the VAD kept apart around it (the regions touch) and the chunk no longer than a take: between the
    # nearest breaks, not the whole chunk (which would not be read again at all: one piece, as it was)
    (close,) = merge_regions([Chunk(0, 3 * sr), Chunk(3 * sr, 6 * sr)], max_chunk_s=30.0)
    read = [0.1 + 0.4 * i for i in range(7)]  # 0-3 s read, 3-6 s not
    (only,) = reread_parts(close, 7.0, Reading(np.array(read + [3.0]), [(0.0, 6.0)]), [0, len(read)], slack=7)
    assert (only.region.start // sr, only.region.end // sr, only.at) == (3, 6, len(read))


def test_a_take_dropped_is_read_again_alone_and_put_in_between_the_takes_read(tiny, monkeypatch):
    """A sentence (14 tokens) said three times in an 18 s chunk, read twice: the third take's speech (12-18 s) is
    left unread. Only it is decoded again (one piece, 6 s: on real Mandarin said 8 times the whole chunk in six
    pieces cost as much as its first decode), greedily, and its text goes in after the two takes read, which stay."""
    sr = SAMPLE_RATE
    spans = ((int(0.2 * sr), int(5.8 * sr)), (int(6.2 * sr), int(11.8 * sr)), (int(12.2 * sr), 18 * sr))
    chunk = Chunk(0, 18 * sr, (6 * sr, 12 * sr), spans=spans)
    fake = _Miscounting()
    monkeypatch.setattr(tiny, "_decode", fake)
    by_length = {18 * sr: [(a / sr, b / sr) for a, b in spans]}  # each take read on its own speech
    monkeypatch.setattr(tiny, "_align", _aligner(spans_of=lambda wave: by_length.get(len(wave),
                                                                                     [(0.0, len(wave) / sr)])))
    options = DecodeOptions(language="en", beam_size=3)
    (result,) = tiny._decode_chunks(np.zeros(18 * sr, np.float32), [chunk], "en", options, None)
    assert fake.calls == [([18.0], [True]), ([6.0], [False])]
    assert fake.beams == [3, 1]  # one take alone reads as well greedily
    assert result.tokens == [_Miscounting.UNIT * 2, _Miscounting.UNIT]
    assert [s[:2] for s in result.segments] == [(0.0, 12.0), (12.0, 18.0)] and result.text.split() == ["unit"] * 3


def test_a_chunk_whose_text_repeats_and_covers_its_speech_is_decoded_once(tiny, monkeypatch):
    """A sentence said twice (12 s, read twice) aligns over all of its speech: the chunk is not cut, nothing is
    decoded again (cutting it cost a decode of every take and, where a sentence has a pause inside, a word)."""
    sr = SAMPLE_RATE
    fake = _Miscounting()
    monkeypatch.setattr(tiny, "_decode", fake)
    monkeypatch.setattr(tiny, "_align", _aligner())
    _all_speech(monkeypatch)
    (result,) = tiny._decode_chunks(np.zeros(12 * sr, np.float32), [Chunk(0, 12 * sr, (6 * sr,))], "en",
                                    DecodeOptions(language="en"), None)
    assert fake.calls == [([12.0], [True])] and result.text.split() == ["unit"] * 2


def test_the_pieces_of_a_repeating_chunk_are_kept_only_when_they_read_more_or_the_chunk_ran_away(tiny, monkeypatch):
    """A chunk whose alignment left speech unread (its tokens end at 8 s of 24) is cut; its own text is kept when
    its pieces lose count themselves (the middle piece reads nothing); a chunk that ran to its token budget gives
    way to its pieces though they hold fewer tokens. Equal counts keep the chunk's own text (read with more
    context)."""
    from utils.transcribe import _ChunkResult

    sr = SAMPLE_RATE
    unit = _Miscounting.UNIT
    chunk = Chunk(0, 24 * sr, (8 * sr, 16 * sr))  # one repetition is 8 s: three pieces

    def fake(whole: list[int], pieces: list[list[int]]):
        def decode(chunks, languages, options, prompt, split_repeats=None):
            texts = [whole] if len(chunks) == 1 else pieces
            return [_ChunkResult([(0.0, len(c) / sr, "x")], "x", tokens=[t]) for c, t in zip(chunks, texts)]
        return decode

    cases = [(unit * 3, [unit, [], unit], unit * 3),  # the pieces dropped one: the chunk's own text stays
             (unit * 3, [unit, unit, unit], unit * 3),  # as many: the chunk's own
             (unit * 2, [unit, unit, unit], unit * 3),  # the chunk dropped one: the pieces
             (unit * 16, [unit, [], unit], unit * 2)]  # 224 tokens, the budget of 24 s: ran away, the pieces
    _all_speech(monkeypatch)
    for whole, pieces, kept in cases:
        monkeypatch.setattr(tiny, "_decode", fake(whole, pieces))
        monkeypatch.setattr(tiny, "_align", _aligner(8.0 / len(whole)))
        (result,) = tiny._decode_chunks(np.zeros(24 * sr, np.float32), [chunk], "en",
                                        DecodeOptions(language="en"), None)
        assert [t for piece in result.tokens for t in piece] == kept, (len(whole), [len(p) for p in pieces])


def test_overread_is_text_piled_on_almost_no_time():
    """A made-up take aligns to one frame; right readings start 8 tokens over >= 0.62 s (OVERREAD_TOKENS)."""
    from utils.repeats import overread

    read = np.arange(29) * 0.43  # a sentence of 14 tokens in 6 s, twice, and the end of the last token
    assert not overread(read) and not overread(np.arange(29) * 0.09)  # 11 tokens/s: fast, still speech
    assert overread(np.concatenate([read[:-1], np.full(15, read[-1])]))  # a third take piled on the end
    assert not overread(np.array([0.0, 0.0, 0.0, 0.5]))  # too few tokens to tell


def _piling(takes_heard: int, take_s: float = 6.0):
    """A fake ``_align``: the first ``takes_heard`` takes of 14 tokens spread over ``take_s`` seconds each, every
    further token piled on the last one's end (a take the decoder made up)."""
    from utils.audio import TIME_PRECISION

    def align(chunks, languages, tokens, task):
        out = []
        for text in tokens:
            n, heard = len(text), min(len(text), 14 * takes_heard)
            starts = np.concatenate([np.arange(heard + 1) * take_s / 14, np.full(n - heard, heard * take_s / 14)])
            out.append((np.arange(n + 1), np.round(starts / TIME_PRECISION).astype(np.int64), np.ones(n)))
        return out
    return align


def _whole_then_pieces(takes: int, calls: list[list[float]]):
    """A decoder that reads the 14-token unit ``takes`` times from a chunk decoded alone and once from each of
    several pieces decoded together; ``calls``: each call's chunk lengths (s)."""
    from utils.transcribe import _ChunkResult

    unit = _Miscounting.UNIT

    def decode(chunks, languages, options, prompt, split_repeats=None):
        calls.append([round(len(c) / SAMPLE_RATE, 1) for c in chunks])
        texts = [unit * takes] if len(chunks) == 1 else [unit] * len(chunks)
        return [_ChunkResult([(0.0, len(c) / SAMPLE_RATE, "x")], "x", tokens=[t]) for c, t in zip(chunks, texts)]
    return decode


def test_a_repeating_chunk_that_made_a_take_up_gives_way_to_its_pieces(tiny, monkeypatch):
    """A sentence said twice (12 s) read three times: the third take aligns to no time (overread), so the chunk is
    cut and its pieces' text is kept though it holds fewer tokens (a chunk that left nothing unread and made nothing
    up keeps its own text when its pieces read less: the previous test)."""
    sr = SAMPLE_RATE
    unit = _Miscounting.UNIT
    calls: list[list[float]] = []
    monkeypatch.setattr(tiny, "_decode", _whole_then_pieces(3, calls))
    monkeypatch.setattr(tiny, "_align", _piling(2))
    _all_speech(monkeypatch)
    (result,) = tiny._decode_chunks(np.zeros(12 * sr, np.float32), [Chunk(0, 12 * sr, (6 * sr,))], "en",
                                    DecodeOptions(language="en"), None)
    assert calls == [[12.0], [6.0, 6.0]]
    assert [t for piece in result.tokens for t in piece] == unit * 2


def test_a_reading_that_made_takes_up_is_cut_into_pieces_a_take_long_not_its_share_of_the_made_up_text(tiny,
                                                                                                     monkeypatch):
    """A sentence of words said with pauses between them (14 tokens, 6 s), said twice (12 s), read six times: four
    takes made up, their tokens on no time. The unit's share of that text (2 s) is no measure of a take: the chunk
    was cut at the pauses between words into 2 s pieces of a few words each, read out of context (ct2 on a PyTorch
    bf16 encoder, tests/test_alignment.py's espeak words). Its pieces are a take long at the slowest right rate (the
    pause nearest 14 / 2.8 = 5 s from a piece's start), as a loop's are: the two takes. So are a timestamped re-read's
    that made takes up; a chunk shorter than that is cut at the share."""
    from utils.repeats import take_sizes

    assert take_sizes(20, 159, 19.2) == [pytest.approx(19.2 * 20 / 159)]  # a right reading: the unit's share
    assert take_sizes(20, 159, 19.2, made_up=True) == [pytest.approx(20 / 2.8), pytest.approx(19.2 * 20 / 159)]
    assert take_sizes(4, 80, 19.2, loop=True) == [pytest.approx(12 / 2.8)]  # at least the 12-token run
    sr = SAMPLE_RATE
    unit = _Miscounting.UNIT
    calls: list[list[float]] = []
    monkeypatch.setattr(tiny, "_decode", _whole_then_pieces(6, calls))
    monkeypatch.setattr(tiny, "_align", _piling(2))
    _all_speech(monkeypatch)
    breaks = tuple(round(s * sr) for s in (2.0, 3.5, 6.0, 8.0, 10.5))  # between words, and between the takes
    (result,) = tiny._decode_chunks(np.zeros(12 * sr, np.float32), [Chunk(0, 12 * sr, breaks)], "en",
                                    DecodeOptions(language="en"), None)
    assert calls == [[12.0], [6.0, 6.0]]
    assert [t for piece in result.tokens for t in piece] == unit * 2
    # the same for a reading with timestamp tokens that made them up, after one without them that read one take
    timed: list[tuple[int, bool]] = []
    monkeypatch.setattr(tiny, "_decode", _reader(unit, unit * 6, timed))
    (result,) = tiny._decode_chunks(np.zeros(12 * sr, np.float32), [Chunk(0, 12 * sr, breaks)], "en",
                                    DecodeOptions(language="en"), None)
    assert timed == [(1, False), (1, True), (2, False)]
    assert [t for piece in result.tokens for t in piece] == unit * 2
    # fast takes (2 s each) and one made up: the chunk (4.5 s) is shorter than a take at the slowest rate, so it is
    # cut at the unit's share of the text (1.5 s) rather than kept as read
    calls.clear()
    monkeypatch.setattr(tiny, "_decode", _whole_then_pieces(3, calls))
    monkeypatch.setattr(tiny, "_align", _piling(2, take_s=2.0))
    (result,) = tiny._decode_chunks(np.zeros(int(4.5 * sr), np.float32), [Chunk(0, int(4.5 * sr), (int(2.2 * sr),))],
                                    "en", DecodeOptions(language="en"), None)
    assert calls == [[4.5], [2.2, 2.3]]
    assert [t for piece in result.tokens for t in piece] == unit * 2


@pytest.fixture(scope="module")
def two_takes(tmp_path_factory) -> np.ndarray:
    """One espeak sentence said twice, 1 s of silence before, between and after the takes (about 9 s)."""
    take = load_audio(make_speech(EN_SENTENCE, tmp_path_factory.mktemp("takes") / "take.wav"))
    gap = np.zeros(SAMPLE_RATE, np.float32)
    return np.concatenate([gap, take, gap, take, gap])


def test_a_clip_is_one_chunk_with_the_pauses_the_vad_finds_in_it(two_takes):
    """whole_clip: the whole clip, a break in the pause between the takes, the speech measured; silence: no
    chunk."""
    sr = SAMPLE_RATE
    take_end = (len(two_takes) - 3 * sr) // 2 + sr  # end of the first take
    chunk = whole_clip(two_takes)
    assert (chunk.start, chunk.end, chunk.lead) == (0, len(two_takes), 0) and 0.5 * sr < chunk.spans[0][0] < sr
    assert len(chunk.breaks) == 1 and take_end < chunk.breaks[0] < take_end + sr
    assert 0.8 * (len(two_takes) - 3 * sr) < chunk.speech < len(two_takes) - sr  # the takes (+ the VAD's padding)
    assert len(chunk.spans) == 2 and chunk.spans[0][1] < chunk.breaks[0] < chunk.spans[1][0]
    assert sum(e - s for s, e in chunk.spans) == chunk.speech
    assert whole_clip(np.zeros(5 * sr, np.float32)) is None
    noise = np.random.default_rng(0).normal(0, 3e-5, 10 * sr).astype(np.float32)  # a quiet room, -90 dBFS
    assert whole_clip(noise) is None and whole_clip(two_takes[:2 * sr] * 0.01).spans  # a quiet take: found


def test_a_burst_too_short_for_the_vad_after_a_long_silence_is_decoded_from_there(repo_root):
    """A clip in which the VAD hears only a burst shorter than its 0.25 s (a word said alone: decoded) is decoded
    from shortly before it when a long silence comes first, as speech is: the whole clip was decoded (a 0.1 s burst
    16 s into 18 s of pink noise, and whisper-base wrote "我心里的心里的…" over the noise)."""
    from utils.vad import CLIP_SILENCE_S, LEAD_S, speech_regions

    sr = SAMPLE_RATE
    word = load_audio(repo_root / "dataset" / "real" / "en_jfk.flac")[int(0.3 * sr): int(0.45 * sr)]
    silence = lambda seconds: np.zeros(int(seconds * sr), np.float32)  # noqa: E731
    late = np.concatenate([silence(CLIP_SILENCE_S + 1), word, silence(15)])
    assert not speech_regions(late) and (blips := speech_regions(late, min_speech_ms=0))
    chunk = whole_clip(late)
    assert (chunk.start, chunk.end) == (blips[0].start - int(LEAD_S * sr), len(late))
    early = np.concatenate([silence(2), word, silence(15)])
    assert (whole_clip(early).start, whole_clip(early).end) == (0, len(early))  # after a short silence: from 0


def test_a_quiet_rooms_noise_is_not_raised_into_speech(repo_root):
    """The VAD raises a quiet recording (up to 60 dB), but not dither or a quiet room's noise (loud samples below
    -80 dBFS): raised, a 10 s room at -90 dBFS (sox's white noise at vol 0.00003, two 16-bit steps) read at 0.07-0.43
    speech probability across 20 random draws and, on one CI run, as speech: whisper-base wrote "You" three times."""
    from faster_whisper.vad import get_vad_model

    from utils.vad import FRAME, VAD_SILENT_PEAK, raised, vad_input

    rng = np.random.default_rng(1)
    step = 1 / 32768  # one 16-bit step
    loudest = 0.0
    for _ in range(8):
        room = (rng.integers(-2, 3, 10 * SAMPLE_RATE) * step).astype(np.float32)
        assert np.array_equal(vad_input(room), room)
        loudest = max(loudest, float(get_vad_model()(room[: len(room) // FRAME * FRAME]).max()))
    assert loudest < 0.2, loudest
    quiet = np.full(4, 2 * VAD_SILENT_PEAK, np.float32)
    assert np.allclose(raised(quiet, float(quiet[0])), 1000 * quiet)  # by 60 dB at most
    # real speech whose peaks are at -65 dBFS in a 16-bit file (loud samples at -73 dBFS) is still raised and found
    from utils.vad import speech_regions

    speech = load_audio(repo_root / "dataset" / "real" / "en_librivox_0890.flac")
    speech = np.round(speech / np.abs(speech).max() * 10 ** (-65 / 20) * 32768) / 32768
    audio = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), speech.astype(np.float32)])
    found = sum(r.end - r.start for r in speech_regions(audio))
    assert found > 0.8 * len(speech), (found, len(speech))


def test_the_vad_finds_speech_under_a_dc_offset_hum_or_at_a_low_level(repo_root):
    """Five real English recordings 20 s apart: silero-vad read them raw and missed whole sentences under a DC offset
    of 0.4, a 50 Hz hum of 0.3 or at -45 dB (coverage 0.0 for some); it reads a copy without the low frequencies,
    raised when quiet (:func:`vad_input`), and finds each as it does at normal level. Whisper reads the original."""
    from utils.vad import high_pass, speech_regions

    sr = SAMPLE_RATE
    t = np.arange(4 * sr) / sr
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    filtered = high_pass(0.3 + 0.2 * np.sin(2 * np.pi * 50 * t).astype(np.float32) + 0.1 * tone)
    assert np.abs(filtered[sr:-sr] - 0.1 * tone[sr:-sr]).max() < 0.01  # DC and hum gone, 1 kHz kept
    names = ["en_librivox_0880", "en_goforward", "en_cards_005", "en_librivox_0890", "en_arctic_a0007"]
    gap = np.zeros(20 * sr, np.float32)
    parts, spans = [], []
    for name in names:
        clip = load_audio(repo_root / "dataset" / "real" / f"{name}.flac")
        start = sum(len(p) for p in parts) + len(gap)
        parts += [gap, clip]
        spans.append((start, start + len(clip)))
    audio = np.concatenate([*parts, gap])
    hum = 0.3 * np.sin(2 * np.pi * 50 * np.arange(len(audio)) / sr)

    def covered(x: np.ndarray) -> np.ndarray:
        regions = speech_regions(np.clip(x, -1, 1).astype(np.float32))
        return np.array([sum(max(0, min(e, r.end) - max(s, r.start)) for r in regions) / (e - s) for s, e in spans])

    normal = covered(audio)
    assert normal.min() > 0.6, normal
    for x in (audio * 10 ** (-45 / 20), audio * 0.5 + 0.4, audio * 0.7 + hum):
        assert (covered(x) >= normal - 0.05).all(), (covered(x), normal)


def _real_speech(repo_root: Path, seconds: float) -> np.ndarray:
    """Real English recordings of dataset/real/ one after the other with 1 s pauses, repeated to ``seconds``."""
    parts = []
    for path in sorted((repo_root / "dataset" / "real").glob("en_*.flac")):
        parts += [load_audio(path), np.zeros(SAMPLE_RATE, np.float32)]
    one = np.concatenate(parts)
    return np.tile(one, int(seconds * SAMPLE_RATE) // len(one) + 1)[: int(seconds * SAMPLE_RATE)]


def _faster_whisper_regions(x: np.ndarray, threshold: float = 0.5, min_speech_ms: int = 250,
                            min_silence_ms: int = 160, speech_pad_ms: int = 200,
                            max_speech_s: float = 29.0) -> list[tuple[int, int]]:
    """faster-whisper's speech timestamps of ``x`` (as it is), as speech_regions leaves them: padding that made
    neighbours overlap taken off."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    stamps = get_speech_timestamps(x, VadOptions(threshold=threshold, min_speech_duration_ms=min_speech_ms,
                                                 min_silence_duration_ms=min_silence_ms, speech_pad_ms=speech_pad_ms,
                                                 max_speech_duration_s=max_speech_s))
    regions: list[tuple[int, int]] = []
    for s in stamps:
        start = max(s["start"], regions[-1][1]) if regions else s["start"]
        if s["end"] > start:
            regions.append((start, s["end"]))
    return regions


def test_the_vad_reads_a_long_recording_a_piece_at_a_time_with_faster_whispers_results(repo_root, monkeypatch):
    """A long recording's VAD pass holds no copy of it: a 2 h wav of 0.58 GB (0.46 GB of float32) took 1.7 GB at the
    pass's peak (the VAD's copy, raised or filtered; faster-whisper's padded one; its frames with their context; the
    model's activations for 10,000 frames), 0.64 GB read a piece at a time. Here a quiet hummed recording (filtered
    and raised: the copy that costs most) read 200 frames at a time: numpy's peak stays under half the waveform, and
    the probabilities and regions are faster-whisper's over the whole copy."""
    import tracemalloc

    from faster_whisper.vad import get_vad_model

    from utils import vad

    speech = _real_speech(repo_root, 240)
    hum = 0.3 * np.sin(2 * np.pi * 50 * np.arange(len(speech)) / SAMPLE_RATE)
    audio = (0.02 * speech + 0.05 * hum).astype(np.float32)[: len(speech) // vad.FRAME * vad.FRAME - 100]
    monkeypatch.setattr(vad, "VAD_PIECE_FRAMES", 200)
    vad.speech_regions(audio[: SAMPLE_RATE])  # the model loaded outside the measurement
    tracemalloc.start()
    try:
        regions = vad.speech_regions(audio)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < audio.nbytes / 2, (peak, audio.nbytes)
    copy = vad.vad_input(audio)
    assert not np.array_equal(copy, audio)  # filtered and raised
    whole = get_vad_model()(np.pad(copy, (0, vad.FRAME - len(copy) % vad.FRAME))).reshape(-1)
    assert np.array_equal(vad.speech_probabilities(audio), whole)
    assert len(regions) > 40 and [(r.start, r.end) for r in regions] == _faster_whisper_regions(copy)


def test_the_vads_segmentation_is_silero_vads_for_any_options(repo_root):
    """speech_regions' own segmentation of the probabilities (hysteresis, dropped short bursts, long regions cut at
    their last pause, padding that shares a short silence) gives faster-whisper's regions for any options and length
    (lengths whose last frame is full of speech aside: faster-whisper zeroes that frame's last 64 samples)."""
    from utils import vad

    audio = _real_speech(repo_root, 60)
    rng = np.random.default_rng(0)
    for _ in range(12):
        x = audio[: int(rng.integers(SAMPLE_RATE, len(audio)))]
        x = x[: len(x) - max(0, len(x) % vad.FRAME - (vad.FRAME - 64))]
        options = dict(threshold=float(rng.choice([0.5, 0.3, 0.7])), min_speech_ms=int(rng.choice([0, 250, 1000])),
                       min_silence_ms=int(rng.choice([0, 160, 500, 2000])),
                       speech_pad_ms=int(rng.choice([0, 30, 200, 400])),
                       max_speech_s=float(rng.choice([1.5, 3.0, 10.0, 29.0])))
        assert [(r.start, r.end) for r in vad.speech_regions(x, **options)] == _faster_whisper_regions(x, **options)


def _babble_between_two_sentences(repo_root: Path) -> np.ndarray:
    """Two real English sentences (LibriVox) with 20 s of babble between them: the 10 real English recordings of
    dataset/real/ reversed, each looped from another offset and overlaid (no word of them can be read), at -6 dBFS
    under speech at -3 dBFS, 0.5 s of silence on either side."""
    real = repo_root / "dataset" / "real"

    def peak(x: np.ndarray, db: float) -> np.ndarray:
        return (x / np.abs(x).max() * 10 ** (db / 20)).astype(np.float32)

    n = 20 * SAMPLE_RATE
    babble = np.zeros(n, np.float32)
    for k, path in enumerate(sorted(real.glob("en_*.flac"))):
        clip = load_audio(path)[::-1]
        looped = np.tile(clip, n // len(clip) + 2)
        start = int(k * 1.7 * SAMPLE_RATE) % len(clip)
        babble += looped[start: start + n]
    gap = np.zeros(SAMPLE_RATE // 2, np.float32)
    return np.concatenate([peak(load_audio(real / "en_librivox_0870.flac"), -3), gap, peak(babble, -6), gap,
                           peak(load_audio(real / "en_librivox_0920.flac"), -3)])


def test_babble_the_vad_takes_for_speech_is_not_read_into_made_up_text(base_ct2, repo_root):
    """20 s of babble between two sentences: the VAD hears speech there, the first reading of the chunk reads the
    sentence and leaves the babble "unread", so it was read again: alone, whisper-base read it as "Thank you."
    (log-probability -1.05, below the check's -1.0, which a re-read does not fall back on) and that went into the
    text, with and without timestamps (25 s of sung music the same way: 25 made-up sentences). A re-read the check
    fails where the first reading passes it reads nothing."""
    audio = _babble_between_two_sentences(repo_root)
    said = ("And Mr. John Dashwood had then leisure to consider how much there might be prudently in his power to do "
            "for them. Had he married a more amiable woman, he might have been made still more respectable than he "
            "was.")
    for timestamps in (False, True):
        text = base_ct2.transcribe(audio, DecodeOptions(language="en", timestamps=timestamps)).text
        assert "thank" not in text.lower(), (timestamps, text)
        assert error_rate(said, text, "wer", language="en") < 0.1, (timestamps, text)


def test_a_reread_is_dropped_only_where_the_first_reading_is_sure():
    """Pieces of noisy speech (a real Mandarin sentence said 3 times under white noise at 0 dB) are as unsure as the
    first reading: they are kept; a reading no piece of which is kept stays as it was (the chunk's whole text was
    wiped out)."""
    from utils.transcribe import _ChunkResult, _unless_doubtful

    options = DecodeOptions(language="zh")
    sure, unsure = _ChunkResult([(0.0, 1.0, "好")], "好", avg_logprob=-0.3), _ChunkResult(
        [(0.0, 1.0, "水")], "水", avg_logprob=-1.2)
    assert _unless_doubtful(unsure, sure, options).text == ""
    assert _unless_doubtful(unsure, unsure, options) is unsure
    assert _unless_doubtful(sure, unsure, options) is sure
    unscored = _ChunkResult([(0.0, 1.0, "水")], "水")
    assert _unless_doubtful(unscored, sure, options) is unscored
    assert _unless_doubtful(unsure, sure, DecodeOptions(language="zh", logprob_threshold=None)) is unsure
    assert _unless_doubtful(unsure, None, options) is unsure  # a first reading that made a take up or ran away
    assert _unless_doubtful(unsure, _ChunkResult([(0.0, 1.0, "《》《》")], "《》《》", avg_logprob=-0.5),
                            options) is unsure  # ... or read no word
    # a dropped re-read is an empty reading, tokens and all (joined with another piece, spliced by its tokens)
    sure = _ChunkResult([(0.0, 1.0, "好")], "好", tokens=[[1]], avg_logprob=-0.3)
    unsure = _ChunkResult([(0.0, 1.0, "水水")], "水水", tokens=[[2, 2]], words=[[]], avg_logprob=-1.2)
    dropped = _unless_doubtful(unsure, sure, options)
    assert (dropped.segments, dropped.text, dropped.tokens, dropped.words) == ([], "", [], [])
    from utils.transcribe import _joined

    joined = _joined(sure, dropped, 1.0)
    assert joined.tokens == [[1]] and joined.text == "好" and joined.avg_logprob == pytest.approx(-0.3)
    # a piece read on keeps its score, so a tail of a tail is still found unsure
    assert _joined(sure, unsure, 1.0).avg_logprob == pytest.approx((-0.3 - 2 * 1.2) / 3)


def test_a_decode_at_one_temperature_is_scored_on_both_backends(tiny, base_ct2, zh_wav):
    """The transformers backend scores a decode only for the fallback or its statistics: at one temperature (a redo
    with timestamps, evaluation.py's default) its average log-probability was None, and no such reading could be
    found unsure. A reading read again is scored where it is not (:meth:`_with_scores`)."""
    wave = load_audio(zh_wav)
    options = DecodeOptions(language="zh", temperatures=(0.0,))
    for engine in (tiny, base_ct2):
        result = engine._with_scores([wave], engine._decode_batched([wave], ["zh"], options, None), "zh", options)[0]
        assert result.avg_logprob is not None and result.avg_logprob <= 0.0


def test_a_clip_read_with_a_take_made_up_is_decoded_again_take_by_take(tiny, monkeypatch, two_takes):
    """A clip of at most 30 s is one chunk, but it is cut at its pauses like a long recording's chunk: a sentence said
    twice and read three times (the third take aligns to no time) gives way to its two takes, decoded one by one
    (whisper-base fine-tuned on the demo data read a real AISHELL-1 sentence said 3 times as 4 takes in a 25 s
    encoder window). ``cut_clip=False`` (streaming) decodes the clip once, whole, without the VAD."""
    from utils.transcribe import _ChunkResult

    sr = SAMPLE_RATE
    unit = _Miscounting.UNIT
    calls = []

    def decode(chunks, languages, options, prompt, split_repeats=None):
        calls.append(len(chunks))
        texts = [unit * 3] if len(chunks) == 1 else [unit] * len(chunks)
        return [_ChunkResult([(0.0, len(c) / sr, "x")], "x", tokens=[t]) for c, t in zip(chunks, texts)]

    monkeypatch.setattr(tiny, "_decode", decode)
    monkeypatch.setattr(tiny, "_align", _piling(2, take_s=len(two_takes) / sr / 2))
    tiny.transcribe(two_takes, DecodeOptions(language="en"))
    assert calls == [1, 2]
    calls.clear()
    import utils.transcribe

    monkeypatch.setattr(utils.transcribe, "whole_clip", lambda audio: pytest.fail("no VAD pass"))
    tiny.transcribe(two_takes, DecodeOptions(language="en"), cut_clip=False)
    assert calls == [1]


def test_a_sentence_said_five_times_and_read_so_is_decoded_once(tiny, monkeypatch):
    """Five takes of a 14-token sentence, each aligned over its own 6 s: a lesson's repetition, not a decoder loop (a
    unit shorter than REPEAT_SPAN_TOKENS repeated LOOP_REPEATS times is one); the reading is checked, covers its
    speech and made nothing up, so the chunk is decoded once."""
    from utils.repeats import LOOP_REPEATS
    from utils.transcribe import _ChunkResult

    sr = SAMPLE_RATE
    unit = _Miscounting.UNIT
    assert LOOP_REPEATS <= 5
    calls = []

    def decode(chunks, languages, options, prompt, split_repeats=None):
        calls.append(len(chunks))
        return [_ChunkResult([(0.0, len(c) / sr, "x")], "x", tokens=[unit * 5]) for c in chunks]

    monkeypatch.setattr(tiny, "_decode", decode)
    monkeypatch.setattr(tiny, "_align", _piling(5))
    _all_speech(monkeypatch)
    chunk = Chunk(0, 30 * sr, tuple(k * 6 * sr for k in range(1, 5)))
    (result,) = tiny._decode_chunks(np.zeros(30 * sr, np.float32), [chunk], "en", DecodeOptions(language="en"), None)
    assert calls == [1] and [t for piece in result.tokens for t in piece] == unit * 5
    calls.clear()
    monkeypatch.setattr(tiny, "_align", _piling(4))  # the fifth take made up: cut, the pieces kept
    (result,) = tiny._decode_chunks(np.zeros(30 * sr, np.float32), [chunk], "en", DecodeOptions(language="en"), None)
    assert calls == [1, 5]


def test_a_loop_is_cut_into_pieces_a_sentence_long_and_decoded_again_without_the_log_prob_fallback(tiny, monkeypatch):
    """A 24 s chunk (a pause every 2 s) read as a 4-token unit looping to the token budget: its tokens tell nothing
    of how long a take is, so the pieces are the repeated span (12 tokens) at the slowest rate of right readings
    (~4.3 s, six pieces), not the loop's share of the chunk (1.3 s, twelve). The pieces are decoded with the
    temperature fallback for loops only: their audio was decoded at every temperature the first time, and in a short
    encoder window (at least PIECE_WINDOW_S, not 30 s: a piece holds about one take)."""
    from utils.repeats import SLOWEST_TOKENS_PER_SPEECH_S
    from utils.transcribe import PIECE_WINDOW_S, _ChunkResult

    sr = SAMPLE_RATE
    calls = []

    def decode(chunks, languages, options, prompt, split_repeats=None):
        calls.append((len(chunks), options.logprob_fallback, options.temperatures, options.encoder_window_s))
        texts = [[5, 6, 7, 8] * 56] if len(chunks) == 1 else [_Miscounting.UNIT] * len(chunks)
        return [_ChunkResult([(0.0, len(c) / sr, "x")], "x", tokens=[t]) for c, t in zip(chunks, texts)]

    monkeypatch.setattr(tiny, "_decode", decode)
    monkeypatch.setattr(tiny, "_align", _aligner())
    _all_speech(monkeypatch)
    chunk = Chunk(0, 24 * sr, tuple(k * 2 * sr for k in range(1, 12)))
    options = DecodeOptions(language="en")
    (result,) = tiny._decode_chunks(np.zeros(24 * sr, np.float32), [chunk], "en", options, None)
    assert 12 / SLOWEST_TOKENS_PER_SPEECH_S == pytest.approx(4.29, abs=0.01)
    assert calls == [(1, True, options.temperatures, None), (6, False, options.temperatures, PIECE_WINDOW_S)]
    assert [s[:2] for s in result.segments] == [(float(a), float(a + 4)) for a in range(0, 24, 4)]
    for window, pieces_window in ((20.0, PIECE_WINDOW_S), (5.0, 5.0)):  # a shorter window asked for is kept
        calls.clear()
        tiny._decode_chunks(np.zeros(24 * sr, np.float32), [chunk], "en", replace(options, encoder_window_s=window),
                            None)
        assert [c[3] for c in calls] == [window, pieces_window]


def _reader(plain: list[int], timed: list[int], calls: list[tuple[int, bool]]):
    """A decoder that reads ``plain`` tokens from every chunk without timestamp tokens and ``timed`` with them."""
    from utils.transcribe import _ChunkResult

    def decode(chunks, languages, options, prompt, split_repeats=None):
        calls.append((len(chunks), options.timestamps))
        tokens = timed if options.timestamps else plain
        return [_ChunkResult([(0.0, len(c) / SAMPLE_RATE, "x")] if tokens else [], "x" if tokens else "",
                             tokens=[tokens]) for c in chunks]
    return decode


def test_a_slow_reading_that_left_speech_unread_is_decoded_again_with_timestamp_tokens(tiny, monkeypatch):
    """Without timestamp tokens Whisper reads only the first take of a sentence said several times in a window
    (real recordings, dataset/real/). A chunk whose text is slower than right readings for its speech (fewer than
    SLOWEST_TOKENS_PER_SPEECH_S tokens per second) is aligned; when speech is left unread (here 12 s of 18) it is
    decoded again with timestamp tokens (in one batch), and that reading is kept when it holds more tokens. A slow
    reading that covers its speech (14 tokens over 6 s), an empty one, or a decode with timestamps already is left
    alone."""
    from utils.repeats import SLOWEST_TOKENS_PER_SPEECH_S

    sr = SAMPLE_RATE
    unit = _Miscounting.UNIT  # 14 tokens
    assert 14 / 6 < SLOWEST_TOKENS_PER_SPEECH_S <= 2.8  # JFK's oratory: 2.8 tokens per second of speech
    audio = np.zeros(20 * sr, np.float32)
    sparse, covered = Chunk(0, 18 * sr, speech=18 * sr), Chunk(0, 6 * sr, speech=6 * sr)
    plain = DecodeOptions(language="en")
    cases = [([sparse, covered, sparse], plain, unit, unit * 3, [(3, False), (2, True)], [unit * 3, unit, unit * 3]),
             ([sparse], plain, unit, unit[:5], [(1, False), (1, True)], [unit]),  # fewer with timestamps: own kept
             ([sparse], plain, [], unit, [(1, False)], [[]]),  # heard nothing: not redone
             ([sparse], replace(plain, timestamps=True), unit, unit, [(1, True)], [unit])]
    monkeypatch.setattr(tiny, "_align", _aligner())
    _all_speech(monkeypatch)
    for chunks, options, read_plain, read_timed, expected_calls, kept in cases:
        calls: list[tuple[int, bool]] = []
        monkeypatch.setattr(tiny, "_decode", _reader(read_plain, read_timed, calls))
        results = tiny._decode_chunks(audio, chunks, "en", options, None)
        assert calls == expected_calls
        assert [[t for piece in r.tokens for t in piece] for r in results] == kept


def test_a_timestamped_reading_that_still_leaves_takes_unread_is_cut_into_takes(tiny, monkeypatch):
    """One English sentence said 4 times, 1 s apart, in one even chunk: read once without timestamp tokens, then 3
    times with them; that reading reads more and was kept as it was, a take short. It is checked against its speech
    again (here 6 s of 24 left unread) and cut at its pauses into pieces a take long (its unit's share, 14 tokens of
    42 over 24 s, at most 14 tokens at the slowest right rate: 5 s), each read alone: 4 takes."""
    sr = SAMPLE_RATE
    unit = _Miscounting.UNIT  # 14 tokens, 6 s (_aligner)
    chunk = Chunk(0, 24 * sr, breaks=(6 * sr, 12 * sr, 18 * sr), speech=24 * sr)
    monkeypatch.setattr(tiny, "_align", _aligner())
    _all_speech(monkeypatch)
    calls: list[tuple[int, bool]] = []
    monkeypatch.setattr(tiny, "_decode", _reader(unit, unit * 3, calls))
    (result,) = tiny._decode_chunks(np.zeros(24 * sr, np.float32), [chunk], "en", DecodeOptions(language="en"), None)
    assert calls == [(1, False), (1, True), (4, False)]
    assert [t for piece in result.tokens for t in piece] == unit * 4
    assert [s[0] for s in result.segments] == [0.0, 6.0, 12.0, 18.0]
    # takes read a little differently ("jump"/"jumps"): no run repeats, and read as one take (42 tokens: 15 s) the
    # pieces would hold 2 takes each; they are no longer than the speech left unread (6 s)
    takes = [unit[:4] + [200 + 2 * k] + unit[5:10] + [201 + 2 * k] + unit[11:] for k in range(3)]
    timed = [t for take in takes for t in take]
    assert repeat_period(timed) is None
    calls.clear()
    monkeypatch.setattr(tiny, "_decode", _reader(unit, timed, calls))
    (result,) = tiny._decode_chunks(np.zeros(24 * sr, np.float32), [chunk], "en", DecodeOptions(language="en"), None)
    assert calls == [(1, False), (1, True), (4, False)] and len(result.segments) == 4
    # a timestamped reading that made a take up (5 takes for 4 heard) gives way to its pieces, as a first one does
    calls.clear()
    monkeypatch.setattr(tiny, "_decode", _reader(unit, unit * 5, calls))
    monkeypatch.setattr(tiny, "_align", _piling(4))
    (result,) = tiny._decode_chunks(np.zeros(24 * sr, np.float32), [chunk], "en", DecodeOptions(language="en"), None)
    assert calls == [(1, False), (1, True), (4, False)]
    assert [t for piece in result.tokens for t in piece] == unit * 4
    # a piece read again (one level of cutting below: it cannot be cut) is not checked a second time
    aligned: list[int] = []

    def align(chunks, languages, tokens, task):
        aligned.append(len(chunks))
        return _aligner()(chunks, languages, tokens, task)
    monkeypatch.setattr(tiny, "_align", align)
    monkeypatch.setattr(tiny, "_decode", _reader(unit, unit * 3, calls))
    tiny._decode_chunks(np.zeros(24 * sr, np.float32), [chunk], "en", DecodeOptions(language="en"), None, depth=1)
    assert aligned == [1]


def test_a_real_recording_of_one_window_is_checked_against_the_speech_the_vad_hears(tiny, monkeypatch, repo_root):
    """A real AISHELL-1 sentence said three times, 1 s apart (14.6 s, one chunk; the real VAD finds three takes of
    ~3.7 s): read once or twice, the alignment leaves a take unread and the chunk is decoded again with timestamp
    tokens; read three times, it is decoded once. With timestamp tokens asked for, nothing is decoded again (and a
    whole recording is never cut: only VAD chunks are)."""
    from utils.transcribe import speech_spans

    one = load_audio(repo_root / "dataset" / "real" / "zh_aishell_0121.flac")
    gap = np.zeros(SAMPLE_RATE, np.float32)
    audio = np.concatenate([one, gap, one, gap, one])
    spans = speech_spans(audio)
    assert len(spans) == 3 and all(3.0 < end - start < 4.5 for start, end in spans), spans
    assert speech_spans(np.zeros(10 * SAMPLE_RATE, np.float32)) == []
    monkeypatch.setattr(tiny, "_align", _aligner(spans_of=speech_spans))
    unit = _Miscounting.UNIT
    for read_plain, options, expected_calls in [
            (unit, DecodeOptions(language="zh"), [(1, False), (1, True)]),
            (unit * 2, DecodeOptions(language="zh"), [(1, False), (1, True)]),
            (unit * 3, DecodeOptions(language="zh"), [(1, False)]),
            (unit, DecodeOptions(language="zh", timestamps=True), [(1, True)])]:
        calls: list[tuple[int, bool]] = []
        monkeypatch.setattr(tiny, "_decode", _reader(read_plain, unit * 3, calls))
        tiny._decode_chunks(audio, [Chunk(0, len(audio))], "zh", options, None)
        assert calls == expected_calls, (len(read_plain), options.timestamps)


@pytest.fixture(scope="module")
def fast_alternating_zh(repo_root, tmp_path_factory) -> np.ndarray:
    """Two real AISHELL-1 sentences, A B A B A B, trimmed, 0.1 s apart, sped up 1.6 times (12.3 s, 6.4 characters/s:
    no pause the VAD keeps apart, so the chunk has no break to cut it at)."""
    import subprocess

    import soundfile as sf

    def trimmed(name: str) -> np.ndarray:
        x = load_audio(repo_root / "dataset" / "real" / name)
        loud = np.where(np.abs(x) > 0.03)[0]
        return x[max(0, loud[0] - 1600): loud[-1] + 1600]

    a, b = trimmed("zh_aishell_0121.flac"), trimmed("zh_aishell_0122.flac")
    gap = np.zeros(SAMPLE_RATE // 10, np.float32)
    folder = tmp_path_factory.mktemp("fast_zh")
    sf.write(folder / "slow.wav", np.concatenate([a, gap, b, gap] * 3), SAMPLE_RATE)
    subprocess.run(["sox", str(folder / "slow.wav"), str(folder / "fast.wav"), "tempo", "-s", "1.6"], check=True)
    return load_audio(folder / "fast.wav")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ct2", "transformers"])
def test_fast_sentences_without_pauses_are_all_read(backend, base_ct2, base_hf, fast_alternating_zh):
    """Without timestamp tokens whisper-base read 2 of the 6 sentences (8.3 s of speech unread; read again with
    timestamp tokens, no more): with no pause to cut the chunk at, it is now read in two halves, kept as they read
    more. The demo model read "A B A B B" (ct2) and "A B A B": a text that repeats itself in a chunk without pauses is
    read again with timestamp tokens as well."""
    engine = base_ct2 if backend == "ct2" else base_hf
    text = engine.transcribe(fast_alternating_zh, DecodeOptions(language="zh")).text
    assert text.count("甚至出现") == 3 and text.count("处于调整") == 3, text


def test_split_on_silence_cuts_long_audio_in_silences(en_wav, zh_wav):
    audio = _long_clip(en_wav, zh_wav)
    chunks = split_on_silence(audio)
    assert len(chunks) >= 3
    assert all(c.duration_s <= 30.0 for c in chunks)
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:]))
    silence = np.zeros(SAMPLE_RATE * 5, dtype=np.float32)
    assert split_on_silence(np.concatenate([silence] * 7)) == []


def test_a_chunk_after_music_starts_before_its_first_syllable(tmp_path):
    """After 25 s of music silero started the speech's region 0.28 s into it and the chunk, padded by 0.2 s, lost
    the first word on both backends ("各位同学" read as "美同学"); chunks are now decoded from 0.4 s before their
    region (faster-whisper's padding), never into the chunk before or past a 30 s window."""
    speech = load_audio(make_speech("各位同学，大家好，今天我们来讲人工智能的发展历史。", tmp_path / "zh.wav",
                                    voice="cmn-latn-pinyin", speed=175)) * 0.7
    t = np.arange(25 * SAMPLE_RATE) / SAMPLE_RATE
    music = sum(0.08 * np.sin(2 * np.pi * f * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t + j))
                for j, f in enumerate([261.6, 329.6, 392.0, 523.3]))
    gap = np.zeros(SAMPLE_RATE // 2, np.float32)
    audio = np.concatenate([music.astype(np.float32), gap, speech, gap])
    freqs = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)  # pink noise under it all, as a room's
    rng = np.random.default_rng(0)
    spectrum = (rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))) / np.sqrt(np.maximum(freqs, 1))
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, len(audio))
    audio = np.clip(audio + 0.02 * noise / np.abs(noise).max(), -1, 1).astype(np.float32)
    onset = 25.5 + np.flatnonzero(np.abs(speech) > 0.01)[0] / SAMPLE_RATE
    chunks = split_on_silence(audio)
    first = next(c for c in chunks if c.end / SAMPLE_RATE > onset)
    assert first.start / SAMPLE_RATE <= onset - 0.1, (first.start / SAMPLE_RATE, onset)  # was 0.02 s after it
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:])) and all(c.duration_s <= 30 for c in chunks)


def _recording_decoder(waves: list):
    """A fake ``_decode``: records the samples of the chunks of its first call, and reads every chunk as one segment
    from 0.5 s to its end."""
    from utils.transcribe import _ChunkResult

    def decode(chunks, languages, options, prompt, split_repeats=None):
        if not waves:
            waves.extend(np.array(c) for c in chunks)
        return [_ChunkResult([(0.5, len(c) / SAMPLE_RATE, "word")], "word", tokens=[[100]]) for c in chunks]
    return decode


def test_a_recording_that_starts_with_speech_is_decoded_after_silence_at_its_own_times(tiny, en_wav, zh_wav,
                                                                                       monkeypatch):
    """Whisper drops a first word that starts right at its window's start: a recording (a clip, or long audio)
    whose speech starts at its first sample is decoded with LEAD_S of silence before it, the segment times are
    those of the recording; one that starts with silence, and the later chunks, are decoded as they are, a first
    segment stamped before the speech moved to it."""
    from utils.vad import LEAD_S

    lead = int(LEAD_S * SAMPLE_RATE)
    speech = load_audio(en_wav)
    speech = speech[np.argmax(np.abs(speech) > 0.01):]  # the speech from the first sample
    # the fake reads one token per chunk, which leaves its speech unread: no check, or the chunk is cut and read again
    monkeypatch.setattr(tiny, "_check_readings", lambda waves, *args: ([0.0] * len(waves), {}))
    for audio in (speech, np.concatenate([speech, _long_clip(en_wav, zh_wav)])):
        waves: list[np.ndarray] = []
        monkeypatch.setattr(tiny, "_decode", _recording_decoder(waves))
        t = tiny.transcribe(audio, DecodeOptions(language="en"))
        assert not waves[0][:lead].any() and np.array_equal(waves[0][lead:lead + len(speech)], speech)
        assert t.segments[0].start == pytest.approx(0.5 - LEAD_S)
        first = whole_clip(audio) if len(audio) <= WINDOW_S * SAMPLE_RATE else split_on_silence(audio)[0]
        assert len(waves[0]) / SAMPLE_RATE - LEAD_S >= first.spans[-1][1] / SAMPLE_RATE - 1e-6  # read to its end:
        assert t.segments[0].end == pytest.approx(first.spans[-1][1] / SAMPLE_RATE)  # ends where its speech does
        for wave, segment in zip(waves[1:], t.segments[1:], strict=True):  # later chunks: as they are, where they are
            start = round((segment.start - 0.5) * SAMPLE_RATE)
            assert np.array_equal(wave, audio[start: start + len(wave)])
    waves = []
    monkeypatch.setattr(tiny, "_decode", _recording_decoder(waves))
    quiet_start = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), speech])
    t = tiny.transcribe(quiet_start, DecodeOptions(language="en"))
    assert np.array_equal(waves[0], quiet_start)  # decoded as it is, no lead
    speech_at = whole_clip(quiet_start).spans[0][0] / SAMPLE_RATE  # the VAD's padding before the speech
    assert 0.5 < speech_at < 1.0 and t.segments[0].start == pytest.approx(speech_at)  # not 0.5: no speech there


def test_segment_times_move_out_of_the_pauses_around_them():
    """Whisper chains a segment's start to the previous segment's end and ends segments inside the pause after them:
    a start in a pause (or in a region's trailing padding, after its speech) moves to the next speech region the
    segment overlaps, an end in a pause (or a region's leading padding) to the previous one; times inside speech,
    a segment with no speech region, one lying in one pause and a chunk with no known regions stay as they are."""
    spans = [(1.0, 4.0), (6.5, 9.0), (9.0, 12.0), (20.0, 25.0)]  # 0.2 s of padding on each side
    assert snap_to_speech(4.0, 10.0, spans) == (6.5, 10.0)  # started at the previous segment's end, 2.5 s early
    assert snap_to_speech(3.9, 10.0, spans) == (6.5, 10.0)  # in the padding after the speech before it
    assert snap_to_speech(2.0, 15.0, spans) == (2.0, 12.0)  # ended 3 s into the pause
    assert snap_to_speech(7.0, 20.1, spans) == (7.0, 12.0)  # in the padding before the next speech
    assert snap_to_speech(0.0, 17.0, spans) == (1.0, 12.0)  # the first segment after silence stamped 0.00
    assert snap_to_speech(9.0, 11.0, spans) == (9.0, 11.0)  # regions that touch: speech on both sides
    assert snap_to_speech(2.0, 3.0, spans) == (2.0, 3.0)
    assert snap_to_speech(13.0, 15.0, spans) == (13.0, 15.0)  # no speech heard: nothing to move it to
    assert snap_to_speech(3.9, 6.6, spans) == (3.9, 6.6)  # all in one pause, padding included
    assert snap_to_speech(0.0, 30.0, []) == (0.0, 30.0)
    # a soft first syllable the VAD left out: the sound starts before the region (onsets), the start moves there;
    # an end in the region's first padding still moves back (the onset does not make the pause speech)
    onsets = [1.0, 5.8, 9.0, 20.0]
    assert snap_to_speech(4.0, 10.0, spans, onsets=onsets) == (5.8, 10.0)
    assert snap_to_speech(6.0, 10.0, spans, onsets=onsets) == (6.0, 10.0)  # in the soft syllable: as it was
    assert snap_to_speech(2.0, 6.6, spans, onsets=onsets) == (2.0, 4.0)
    assert snap_to_speech(4.5, 6.6, spans) == (4.5, 6.6)  # a pause and the next region's padding: no 0.1 s cue
    # an end a timestamp's error into the next region's speech is in the pause (a cue ran on 2 s over a pause to
    # 0.01 s into the next sentence); a word's length into it is not
    assert snap_to_speech(2.0, 20.21, spans) == (2.0, 12.0)
    assert snap_to_speech(2.0, 20.39, spans) == (2.0, 12.0)
    assert snap_to_speech(2.0, 20.45, spans) == (2.0, 20.45)


def test_a_regions_start_moves_back_through_a_soft_first_syllable_only():
    """silero-vad starts a region after a first syllable 30 dB below the rest: the start moves back through that sound
    (at most 1 s, never into the region before); after silence or steady noise it stays where it is."""
    from utils.vad import widened_to_sound

    sr = SAMPLE_RATE
    t = np.arange(sr) / sr
    loud = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    soft = loud[: int(0.3 * sr)] * 10 ** (-30 / 20)
    rng = np.random.default_rng(0)
    for floor_db in (-90, -60):  # digital silence and a quiet room
        gap = (rng.normal(0, 10 ** (floor_db / 20), 2 * sr)).astype(np.float32)
        audio = np.concatenate([gap, soft, loud, gap, loud, gap])
        region = (int(2.3 * sr) - int(0.2 * sr) + int(0.2 * sr), int(3.5 * sr))  # the VAD's: after the soft part
        second = (int(5.3 * sr) - int(0.2 * sr), int(6.5 * sr))  # after silence: padding before the sound
        (a, b), (c, d) = widened_to_sound(audio, [region, second])
        assert abs(a - 2.0 * sr) <= 0.01 * sr and b == region[1]  # back to the soft syllable's start
        assert (c, d) == second
    # a lead of digital zeros is no noise floor: room noise at -60 dB before the region is not sound
    quiet = np.concatenate([np.zeros(int(0.4 * sr), np.float32), loud, rng.normal(0, 1e-3, int(1.5 * sr)).astype(
        np.float32), loud])
    region = (int(2.9 * sr) - int(0.2 * sr), int(3.9 * sr))
    assert widened_to_sound(quiet, [(int(0.2 * sr), int(1.6 * sr)), region])[1] == region
    noise = rng.normal(0, 0.01, 4 * sr).astype(np.float32)  # steady noise all through: no floor below the speech
    noisy = noise + np.concatenate([np.zeros(2 * sr, np.float32), loud, np.zeros(sr, np.float32)])
    assert widened_to_sound(noisy, [(int(1.8 * sr), int(3.2 * sr))]) == [(int(1.8 * sr), int(3.2 * sr))]


# -- tiny model: plumbing ---------------------------------------------------------------------------
def test_short_clip_transcript_shape(tiny, en_wav):
    t = tiny.transcribe(str(en_wav), DecodeOptions(language="en", timestamps=True, max_new_tokens=20))
    duration = len(load_audio(en_wav)) / SAMPLE_RATE
    assert t.duration == pytest.approx(duration, abs=1e-3)
    assert t.language == "en" and t.language_probability == 1.0
    for s in t.segments:
        assert 0.0 <= s.start <= s.end <= t.duration
    d = t.to_dict()
    assert set(d) == {"text", "language", "language_probability", "duration", "segments"}


def test_batch_detects_language_per_clip_and_rejects_long_audio(tiny, en_wav, zh_wav):
    clips = [load_audio(en_wav), load_audio(zh_wav), np.zeros(0, dtype=np.float32)]
    out = tiny.transcribe_batch(clips, DecodeOptions(max_new_tokens=8))
    assert len(out) == 3 and out[2].text == ""
    assert all(0.0 < t.language_probability <= 1.0 for t in out[:2])
    with pytest.raises(ValueError, match="at most 30 s"):
        tiny.transcribe_batch([np.zeros(31 * SAMPLE_RATE, dtype=np.float32)], DecodeOptions())


def test_repetition_loop_is_broken_by_temperature_fallback(tiny, en_wav, monkeypatch):
    """The random tiny model loops on one token when greedy (seen with the cut of a loop that ends the text off:
    tail_loop); the fallback must not keep such a loop."""
    import torch

    import utils.transcribe as tr

    audio = load_audio(en_wav)
    with monkeypatch.context() as m:
        m.setattr(tr, "tail_loop", lambda *a, **k: None)
        greedy = tiny.transcribe(audio, DecodeOptions(language="zh", temperatures=(0.0,), max_new_tokens=120,
                                                      compression_ratio_threshold=None, logprob_threshold=None,
                                                      no_speech_threshold=None))
    assert compression_ratio(greedy.text) > 2.4, greedy.text  # the input really produces a loop
    torch.manual_seed(0)
    guarded = tiny.transcribe(audio, DecodeOptions(language="zh", max_new_tokens=120, logprob_threshold=None,
                                                   no_speech_threshold=None))
    assert compression_ratio(guarded.text) < compression_ratio(greedy.text)
    assert guarded.text != greedy.text


def test_condition_on_previous_text_decodes_the_chunks_one_by_one_each_prompted_with_the_text_before(
        tiny, en_wav, zh_wav, monkeypatch):
    """condition_on_previous_text: the VAD's chunks (silences left out, as in batches) one per decode, each prompted
    with the initial prompt and the text decoded before it; times absolute and inside the audio. (Before: the
    backends' sequential decoders over the whole recording, silences and all.)"""
    from utils.transcribe import _ChunkResult

    audio = _long_clip(en_wav, zh_wav)
    prompts = []

    def decode_chunks(audio, chunks, language, options, prompt, depth=0, decoded=None):
        prompts.append(prompt)
        return [_ChunkResult([(0.5, 1.5, f"s{len(prompts)}.")], f"s{len(prompts)}.", tokens=[[100 + len(prompts)]])
                for _ in chunks]

    monkeypatch.setattr(tiny, "_decode_chunks", decode_chunks)
    t = tiny.transcribe(audio, DecodeOptions(language="en", condition_on_previous_text=True, batch_size=8,
                                             temperatures=(0.0,)), initial_prompt="Names.")
    n = len(split_on_silence(audio))
    assert n >= 3 and len(prompts) == n and t.text == " ".join(f"s{k}." for k in range(1, n + 1))
    assert prompts[:3] == ["Names.", "Names. s1.", "Names. s1. s2."]
    assert t.duration == pytest.approx(len(audio) / SAMPLE_RATE, abs=1e-3)
    assert all(0 <= a.start < a.end <= b.start for a, b in zip(t.segments, t.segments[1:]))


def test_segments_are_decoded_as_the_iterator_is_consumed(tiny, en_wav, zh_wav, monkeypatch):
    """transcribe_segments: the language and chunking are known at once, each batch of chunks is decoded only
    when the iterator reaches it, and collecting it gives what transcribe() gives."""
    audio = _long_clip(en_wav, zh_wav)
    options = DecodeOptions(language="en", batch_size=1, temperatures=(0.0,), timestamps=True)
    calls = []
    decode = tiny._decode

    def counting_decode(chunks, languages, opts, prompt, split_repeats=None):
        calls.append(len(chunks))
        return decode(chunks, languages, opts, prompt)

    monkeypatch.setattr(tiny, "_decode", counting_decode)
    segments, info = tiny.transcribe_segments(audio, options)
    assert calls == [] and info.language == "en" and info.chunks >= 2
    assert info.duration == pytest.approx(len(audio) / SAMPLE_RATE, abs=1e-3)
    collected = list(segments)
    assert len(calls) == info.chunks  # batch_size=1: one decode per chunk, all of them by the end
    whole = tiny.transcribe(audio, options)
    assert collected == whole.segments and whole.language == info.language


# -- real whisper-base: accuracy ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def zh_detect_wav(tmp_path_factory):
    """A Mandarin clip whisper-base recognises as Mandarin: espeak's default male Mandarin voice is mostly
    heard as Thai, the female variant (+f3) on this longer sentence as "zh" (p ≈ 0.95)."""
    from tests.conftest import make_speech

    return make_speech("他每天早上骑自行车去上班，路上大概需要二十分钟。",
                       tmp_path_factory.mktemp("lang") / "zh_f3.wav", voice="cmn-latn-pinyin+f3")


@pytest.mark.slow
def test_language_detection_english_and_mandarin(base_hf, base_ct2, en_wav, zh_wav, zh_detect_wav):
    """English is detected as English and Mandarin as Mandarin, by both backends, which also agree on the
    probabilities (on the male-voice Mandarin clip too, whatever language it is heard as)."""
    t = base_ct2.transcribe(str(en_wav), DecodeOptions())
    assert t.language == "en" and t.language_probability > 0.5
    assert count_errors(EN_SENTENCE, t.text, "wer").rate < 0.35
    t = base_ct2.transcribe(str(zh_detect_wav), DecodeOptions())
    assert t.language == "zh" and t.language_probability > 0.5, (t.language, t.language_probability)
    for wav, expected in ((en_wav, "en"), (zh_detect_wav, "zh"), (zh_wav, None)):
        audio = load_audio(wav)
        (hf_lang, hf_p), (ct2_lang, ct2_p) = base_hf.detect_language(audio), base_ct2.detect_language(audio)
        assert hf_lang == ct2_lang and hf_p == pytest.approx(ct2_p, abs=0.05)
        if expected is not None:
            assert hf_lang == expected and hf_p > 0.5, (wav, hf_lang, hf_p)


@pytest.mark.slow
def test_backends_give_the_same_text(base_hf, base_ct2, en_wav):
    opts = DecodeOptions(language="en", temperatures=(0.0,))
    assert base_hf.transcribe(str(en_wav), opts).text == base_ct2.transcribe(str(en_wav), opts).text
    assert all(s.stats is None and not s.tokens for s in base_ct2.transcribe(str(en_wav), opts).segments)
    # the decode's statistics, asked for: ct2 has them from its decode, transformers scores the text once more
    hf, ct2 = (engine.transcribe(str(en_wav), replace(opts, decode_stats=True)).segments[0]
               for engine in (base_hf, base_ct2))
    assert hf.tokens == ct2.tokens and hf.stats.compression_ratio == ct2.stats.compression_ratio
    assert -0.5 < ct2.stats.avg_logprob < 0 and hf.stats.avg_logprob == pytest.approx(ct2.stats.avg_logprob, abs=0.1)
    assert ct2.stats.no_speech_prob < 0.1 and hf.stats.no_speech_prob < 0.1
    assert hf.stats.temperature == ct2.stats.temperature == 0.0 and hf.stats.seek == ct2.stats.seek == 0
    # with the fallback on, the temperature of the attempt kept is known (it was None: transformers' own fallback)
    assert base_hf.transcribe(str(en_wav), replace(opts, decode_stats=True, temperatures=(0.0, 0.5))
                              ).segments[0].stats.temperature == 0.0


LONG_EN_SENTENCES = ("Please send the report before Friday.", "The train to Boston leaves at half past seven.",
                     "We sold twelve tickets for the concert on Sunday.")


@pytest.fixture(scope="module")
def long_en(tmp_path_factory) -> tuple[np.ndarray, str]:
    """(> 60 s of English, its text): three sentences in turn, 2 s of silence after each (the same sentences come
    back in every 30 s window, so the repeated-speech check runs too)."""
    folder = tmp_path_factory.mktemp("long_en")
    takes = [load_audio(make_speech(t, folder / f"s{i}.wav")) for i, t in enumerate(LONG_EN_SENTENCES)]
    gap = np.zeros(2 * SAMPLE_RATE, dtype=np.float32)
    parts, said = [], []
    while sum(len(p) for p in parts) < 62 * SAMPLE_RATE:
        k = len(said) % len(takes)
        parts += [takes[k], gap]
        said.append(LONG_EN_SENTENCES[k])
    return np.concatenate(parts), " ".join(said)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ct2", "transformers"])
def test_long_clip_has_monotonic_absolute_timestamps(backend, base_hf, base_ct2, long_en):
    """Segments of a > 60 s recording cut into chunks: times absolute, in order, inside the audio, the words of the
    last chunk after 30 s, each segment's decode statistics from a window holding it. (English only: Mandarin
    decoded as English made whisper-base loop to the token budget, 53 s of this test's time with transformers,
    without testing timestamps any further.)"""
    engine = base_ct2 if backend == "ct2" else base_hf
    audio, said = long_en
    duration = len(audio) / SAMPLE_RATE
    t = engine.transcribe(audio, DecodeOptions(timestamps=True, language="en", batch_size=4, temperatures=(0.0,),
                                               decode_stats=True))
    assert t.duration == pytest.approx(duration, abs=1e-3)
    starts = [s.start for s in t.segments]
    assert starts == sorted(starts)
    assert all(0 <= s.start <= s.end <= duration for s in t.segments)
    assert all(a.end <= b.start + 1e-6 for a, b in zip(t.segments, t.segments[1:]))
    late = [s for s in t.segments if s.start > 30 and s.text.strip()]
    assert late and late[-1].end > duration - 10, t.segments
    assert error_rate([said], [t.text], "wer") < 0.2, t.text  # the speech (0.104 both: "12" for "twelve" …)
    for word in ("friday", "boston", "concert"):  # every take read once: none dropped, none made up
        assert t.text.lower().count(word) == said.lower().count(word), t.text
    stats = t.segments
    for s in stats:  # each segment's decode (its statistics asked for): a window of at most 30 s holding it
        assert s.stats.seek / 100 <= s.start + 0.05 and s.end <= s.stats.seek / 100 + 30.05, s
        assert s.stats.temperature == 0.0 and s.stats.avg_logprob < 0 and s.tokens
    assert sorted(s.stats.seek for s in stats) == [s.stats.seek for s in stats] and stats[-1].stats.seek > 0


def test_cpu_encoder_in_small_calls_gives_the_whole_batch_output(tiny):
    """On the CPU the transformers backend encodes at most CPU_ENCODER_WINDOWS windows per call (big batches are
    slower there); the output equals one call on the whole batch, and the cache still serves a repeat."""
    import torch

    from utils.transcribe import CPU_ENCODER_WINDOWS, _cache_encoder_output

    inner = tiny.model.model.encoder.inner
    calls = []
    hook = inner.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        feats = torch.randn(CPU_ENCODER_WINDOWS * 2 + 1, inner.config.num_mel_bins, 3000)
        with torch.inference_mode():
            whole = inner(feats).last_hidden_state
            calls.clear()
            cached = _cache_encoder_output(inner, CPU_ENCODER_WINDOWS)
            split = cached(feats).last_hidden_state
            again = cached(feats.clone()).last_hidden_state
    finally:
        hook.remove()
    assert calls == [CPU_ENCODER_WINDOWS, CPU_ENCODER_WINDOWS, 1]
    torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-4)
    assert again is split


def test_cross_attention_projections_run_once_per_batch_with_the_same_result(tiny_whisper_dir, en_wav):
    """Language detection, transformers' no-speech processor and generate() each project the same encoder output
    into cross-attention keys/values; on the CPU that is done once per batch, with the same transcripts."""
    from utils.transcribe import _reuse_cross_attention_projections

    engine = load_transcriber(str(tiny_whisper_dir), "transformers", device="cpu")
    layers = engine.model.model.decoder.layers
    calls = []
    hook = layers[0].encoder_attn.k_proj.inner.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    audio = load_audio(en_wav)
    clips = [audio[: 2 * SAMPLE_RATE], audio[: 3 * SAMPLE_RATE], audio]
    # language detected, no-speech threshold on; greedy only (a random model fails the log-prob check and samples)
    options = DecodeOptions(batch_size=8, max_new_tokens=8, temperatures=(0.0,))
    try:
        once = engine.transcribe_batch(clips, options)
        assert calls == [3]  # one batch of 3 clips, projected once
        for layer in layers:  # the plain projections again
            layer.encoder_attn.k_proj = layer.encoder_attn.k_proj.inner
            layer.encoder_attn.v_proj = layer.encoder_attn.v_proj.inner
        calls.clear()
        plain = engine.transcribe_batch(clips, options)
        assert len(calls) >= 3  # detection, the no-speech processor's pass, generate's first step
    finally:
        hook.remove()
    assert [t.text for t in once] == [t.text for t in plain]
    # projections bigger than the memory budget are not kept (a large model's big batch): computed every time
    _reuse_cross_attention_projections(engine.model.model.decoder, max_bytes=0)
    hook = layers[0].encoder_attn.k_proj.inner.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    calls.clear()
    try:
        over_budget = engine.transcribe_batch(clips, options)
    finally:
        hook.remove()
    assert len(calls) >= 3 and [t.text for t in over_budget] == [t.text for t in plain]


def test_encoder_window_fits_the_longest_chunk_and_5_s_of_padding_in_5_s_steps():
    second = np.zeros(SAMPLE_RATE, np.float32)
    assert encoder_window([second * 3], None) == 30
    assert encoder_window([np.zeros(int(2.6 * SAMPLE_RATE), np.float32)], 1) == 10  # 2.6 s + 5 s
    assert encoder_window([np.zeros(int(5.5 * SAMPLE_RATE), np.float32), second], 10) == 15
    assert encoder_window([second * 3, second[:100]], 15) == 15
    assert encoder_window([np.zeros(int(14.5 * SAMPLE_RATE), np.float32)], 15) == 20
    assert encoder_window([np.zeros(26 * SAMPLE_RATE, np.float32)], 10) == 30
    with pytest.raises(ValueError, match="encoder_window_s"):
        DecodeOptions(encoder_window_s=40)


def test_transformers_encoder_takes_a_shorter_window_with_the_positions_cut_to_it(tiny):
    """The wrapped encoder's own path for fewer than 3000 frames computes what transformers' encoder computes (checked
    on 3000 frames, where both run), and gives frames / 2 states for a shorter window."""
    import torch

    encoder = tiny.model.model.encoder
    feats = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        own = encoder._encode_short(feats).last_hidden_state
        reference = encoder.inner(feats).last_hidden_state
        short = encoder(feats[..., :1000]).last_hidden_state
        first_rows = encoder(feats[:1, :, :1000]).last_hidden_state  # rows of the last call: the cache
    torch.testing.assert_close(own, reference, rtol=1e-4, atol=1e-4)
    assert short.shape == (2, 500, 64) and not torch.allclose(short, reference[:, :500], atol=1e-3)
    torch.testing.assert_close(first_rows, short[:1])
    with pytest.raises(ValueError, match="plain decoding only"):
        encoder(feats[..., :1000], output_attentions=True)


def test_transformers_decodes_in_the_shorter_window_and_a_loop_again_in_30_s(tiny):
    """generate() encodes the shortened features as they are (not padded back to 3000 frames with zeros), the
    config is Whisper's again after it; the tiny random model loops, so each clip is decoded again in 30 s and
    reads as it does there."""
    encoder, frames, asked = tiny.model.model.encoder, [], []
    hook = encoder.inner.register_forward_pre_hook(lambda module, args: frames.append(args[0].shape[-1]))
    outer = encoder.register_forward_pre_hook(
        lambda module, args, kwargs: asked.append((args[0] if args else kwargs["input_features"]).shape[-1]),
        with_kwargs=True)
    clips = [(np.random.default_rng(k).standard_normal(3 * SAMPLE_RATE) * 0.1).astype(np.float32) for k in (0, 1)]
    options = DecodeOptions(language="en", temperatures=(0.0,), batch_size=2)
    try:
        full = tiny.transcribe_batch(clips, options, vad=False)  # noise: decoded all the same
        short = tiny.transcribe_batch(clips, replace(options, encoder_window_s=10), vad=False)
    finally:
        hook.remove()
        outer.remove()
    assert tiny.model.config.max_source_positions == 1500
    assert frames == [3000, 3000], frames  # the short window runs the wrapper's own path, then 30 s again
    assert 1000 in asked and asked[-1] == 3000, asked
    assert [t.text for t in short] == [t.text for t in full]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ct2", "transformers"])
def test_a_shorter_encoder_window_gives_the_same_words_on_both_backends(backend, base_ct2, base_hf, en_wav):
    """encoder_window_s (evaluation's and streaming's cheaper encoder pass on a CPU): the clean sentence reads the
    same in a 15 s window (evaluation's default on a CPU) as in Whisper's 30 s one, with segment times inside the
    audio; the encoder really saw 15 s (1500 frames)."""
    opts = DecodeOptions(language="en", temperatures=(0.0,), timestamps=True)
    engine = base_ct2 if backend == "ct2" else base_hf
    full = engine.transcribe(str(en_wav), opts)
    assert full.duration <= 10.0  # else the window would be 20 s
    shapes = []
    if backend == "ct2":
        encode = engine._encode

        def spy(feats):
            shapes.append(feats.shape)
            return encode(feats)

        engine._encode = spy
    else:
        hook = engine.model.model.encoder.register_forward_pre_hook(
            lambda module, args, kwargs: shapes.append(tuple((args[0] if args else kwargs["input_features"]).shape)),
            with_kwargs=True)
    try:
        short = engine.transcribe(str(en_wav), replace(opts, encoder_window_s=15))
    finally:
        if backend == "ct2":
            engine._encode = encode
        else:
            hook.remove()
    assert shapes and all(shape == (1, 80, 1500) for shape in shapes), shapes
    assert error_rate([full.text], [short.text], "wer") <= 0.2, (full.text, short.text)
    assert all(0 <= s.start <= s.end <= short.duration + 0.01 for s in short.segments)


def test_ct2_language_detection_reuses_the_first_chunks_encoder_output(base_ct2, en_wav, zh_wav, monkeypatch):
    """language=None: the first chunk is encoded once, for detection and decoding alike; the text is the same
    as when the language is given."""
    encoded = []
    encode = base_ct2._encode

    def counting_encode(feats):
        encoded.append(len(feats))
        return encode(feats)

    monkeypatch.setattr(base_ct2, "_encode", counting_encode)
    detected = base_ct2.transcribe(str(en_wav), DecodeOptions(temperatures=(0.0,)))
    assert detected.language == "en" and encoded == [1]
    encoded.clear()
    batch = base_ct2.transcribe_batch([load_audio(en_wav), load_audio(zh_wav), load_audio(en_wav)],
                                      DecodeOptions(temperatures=(0.0,), batch_size=2))
    assert [t.language for t in batch][::2] == ["en", "en"] and encoded == [2, 1]
    encoded.clear()
    audio = _long_clip(en_wav, zh_wav)
    pipelined, decode_pipelined = [], base_ct2._decode_pipelined

    def counting_pipeline(chunks, *args):
        before = len(encoded)
        out = decode_pipelined(chunks, *args)
        pipelined.append((len(chunks), encoded[before:]))
        return out

    monkeypatch.setattr(base_ct2, "_decode_pipelined", counting_pipeline)
    segments, info = base_ct2.transcribe_segments(audio, DecodeOptions(temperatures=(0.0,), batch_size=4))
    list(segments)
    # detection encoded the first chunk, the batch only the others: side by side in one call, or one by one where
    # one 30 s chunk is decoded beside shorter ones (a take dropped in a chunk of this clip, a sentence said again
    # and again, is read again after: more encodes, of its pieces)
    assert 1 < info.chunks <= 4 and encoded[0] == 1
    if pipelined:
        assert pipelined[0] == (info.chunks, [1] * (info.chunks - 1))
    else:
        assert encoded[:2] == [1, info.chunks - 1]
    given = base_ct2.transcribe(str(en_wav), DecodeOptions(language="en", temperatures=(0.0,)))
    assert given.text == detected.text


def test_transformers_language_detection_reuses_the_encoder_output(base_hf, en_wav, zh_wav, monkeypatch):
    """language=None on the transformers backend: every clip goes through the encoder once (detection and
    decoding share it), per clip in a batch too, and the text is what it is with the language given."""
    encoder = base_hf.model.model.encoder.inner  # the encoder itself, under its output cache
    calls = []
    handle = encoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        # the third clip differs from the first (a clip equal to one of the last batch is not encoded again)
        clips = [load_audio(en_wav), load_audio(zh_wav), load_audio(en_wav) * 0.5]
        detected = base_hf.transcribe_batch(clips, DecodeOptions(temperatures=(0.0,), batch_size=2))
        assert [t.language for t in detected][::2] == ["en", "en"] and sum(calls) == 3
        calls.clear()  # a clip equal to one of the last batch: its rows of the last encoder output
        base_hf.transcribe_batch(clips[:2] + clips[:1], DecodeOptions(temperatures=(0.0,), batch_size=2))
        assert calls == [2]
    finally:
        handle.remove()
    given = base_hf.transcribe_batch(clips[:1], DecodeOptions(language="en", temperatures=(0.0,)))
    assert given[0].text == detected[0].text


def test_ct2_backend_with_each_encoder_transcribes_like_ct2s_own(base_ct2, en_wav, repo_root):
    """--ct2_encoder torch (PyTorch bf16), onnx (onnxruntime int8, and float32 for --compute_type=float32) and ct2
    (CTranslate2 int8), each with the CTranslate2 decoder, hear two clean clips alike, on any CPU. Not word for word:
    bf16 and int8 move a borderline word now and then ("jumps" heard as "jump" or "dumb")."""
    opts = DecodeOptions(language="en", temperatures=(0.0,))
    clips = [str(en_wav), str(repo_root / "dataset" / "test_en.wav")]
    refs = [EN_SENTENCE, (repo_root / "dataset" / "test_en.txt").read_text(encoding="utf-8").strip()]
    hyps = {}
    for encoder, compute_type in (("torch", "int8"), ("onnx", "int8"), ("onnx", "float32"), ("ct2", "int8")):
        engine = load_transcriber("openai/whisper-base", "ct2", device="cpu", compute_type=compute_type,
                                  ct2_encoder=encoder)
        assert engine.encoder == encoder
        assert (engine._torch_encoder is not None, engine._onnx_encoder is not None) == (encoder == "torch",
                                                                                          encoder == "onnx")
        hyps[encoder, compute_type] = [engine.transcribe(clip, opts).text for clip in clips]
        # espeak's "The weather is nice" is heard as "But when there is ice" by either encoder
        assert error_rate(refs, hyps[encoder, compute_type], "wer") <= 0.35, hyps
    for other in (("torch", "int8"), ("onnx", "int8"), ("onnx", "float32")):
        assert error_rate(hyps["ct2", "int8"], hyps[other], "wer") <= 0.2, hyps
    with pytest.raises(ValueError, match="encoder"):
        load_transcriber("openai/whisper-base", "ct2", device="cpu", ct2_encoder="tpu")


def test_fallback_keeps_the_best_attempt_when_every_temperature_fails(base_ct2, monkeypatch):
    """All temperatures fail: the result is the attempt without a loop and with the best log-prob, not the last."""
    from types import SimpleNamespace

    tk = base_ct2._tokenizer("en", "transcribe")
    attempts = {0.0: ("la la la la la la la la la la la la la la la la la la la la", -0.2),  # loop
                0.2: ("the cat sat on the mat", -1.5),  # no loop, best log-prob of those → kept
                0.4: ("qx zv", -2.5)}  # no loop, worse log-prob, and the last one

    def fake_generate(encoded, prompts, options, temperature, max_new_tokens, no_repeat_ngram_size=0):
        text, logprob = attempts[temperature]  # at 0.0 decoded on past the loop too: it loops again
        ids = tk.encode(" " + text)
        return [SimpleNamespace(sequences_ids=[ids], scores=[logprob * (len(ids) + 1) / len(ids)],
                                no_speech_prob=0.0) for _ in prompts]

    monkeypatch.setattr(base_ct2, "_generate", fake_generate)
    opts = DecodeOptions(language="en", temperatures=(0.0, 0.2, 0.4), no_speech_threshold=None)
    text = base_ct2.transcribe(np.zeros(2 * SAMPLE_RATE, np.float32), opts, cut_clip=False).text  # no VAD pass
    assert text == "the cat sat on the mat"


def test_a_sentence_looped_between_timestamps_is_a_loop(base_ct2, monkeypatch):
    """whisper-base (ct2) over babble: "There's nothing called the A tier." 13 times, each in its own 2 s segment,
    kept at temperature 0: the loop check counted the timestamp tokens, which differ from one segment to the next,
    so the text was no loop and passed. The text tokens repeat: the chunk is sampled again."""
    from types import SimpleNamespace

    tk = base_ct2._tokenizer("en", "transcribe")
    unit = tk.encode(" There's nothing called the A tier.")
    looped = [t for k in range(13) for t in (tk.timestamp_begin + 100 * k, *unit, tk.timestamp_begin + 100 * k + 100)]
    attempts = {0.0: (looped, -0.3), 0.2: (tk.encode(" the cat sat on the mat"), -0.5)}
    calls = []

    def fake_generate(encoded, prompts, options, temperature, max_new_tokens, no_repeat_ngram_size=0):
        calls.append(temperature)
        ids, logprob = attempts[temperature]
        return [SimpleNamespace(sequences_ids=[list(ids)], scores=[logprob * (len(ids) + 1) / len(ids)],
                                no_speech_prob=0.0) for _ in prompts]

    monkeypatch.setattr(base_ct2, "_generate", fake_generate)
    opts = DecodeOptions(language="en", timestamps=True, temperatures=(0.0, 0.2, 0.4))
    text = base_ct2.transcribe(np.zeros(28 * SAMPLE_RATE, np.float32), opts, cut_clip=False).text
    assert text.strip() == "the cat sat on the mat" and calls == [0.0, 0.2]


def test_without_the_log_prob_fallback_only_a_loop_is_sampled_again(base_ct2, tiny, monkeypatch):
    """``logprob_fallback=False`` (decodes of audio decoded before): a low log-probability alone keeps the greedy
    text, a loop still goes on to the next temperature, and a silent chunk is still silent. transformers: its own
    fallback gets the first temperature only."""
    from types import SimpleNamespace

    tk = base_ct2._tokenizer("en", "transcribe")
    loop = "la la la la la la la la la la la la la la la la la la la la"
    for attempts, no_speech, expected_calls, expected in [
            ({0.0: ("the cat sat on the mat", -1.5)}, 0.0, [0.0], "the cat sat on the mat"),
            # the loop decoded on past its start first (it loops again), then sampled
            ({0.0: (loop, -0.2), 0.2: ("the cat", -0.3)}, 0.0, [0.0, 0.0, 0.2], "the cat"),
            ({0.0: ("the cat sat on the mat", -1.5)}, 0.9, [0.0], "")]:
        calls = []

        def fake_generate(encoded, prompts, options, temperature, max_new_tokens, no_repeat_ngram_size=0,
                          attempts=attempts, no_speech=no_speech, calls=calls):
            calls.append(temperature)
            text, logprob = attempts[temperature]
            ids = tk.encode(" " + text)
            return [SimpleNamespace(sequences_ids=[ids], scores=[logprob * (len(ids) + 1) / len(ids)],
                                    no_speech_prob=no_speech) for _ in prompts]

        monkeypatch.setattr(base_ct2, "_generate", fake_generate)
        opts = DecodeOptions(language="en", temperatures=(0.0, 0.2, 0.4), logprob_fallback=False)
        assert base_ct2.transcribe(np.zeros(2 * SAMPLE_RATE, np.float32), opts, cut_clip=False).text == expected
        assert calls == expected_calls
    temperatures = []
    generate = tiny.model.generate

    def spy(*args, **kwargs):
        temperatures.append(kwargs["temperature"])
        return generate(*args, **kwargs)

    monkeypatch.setattr(tiny.model, "generate", spy)
    tiny.transcribe(np.zeros(2 * SAMPLE_RATE, np.float32),
                    DecodeOptions(language="en", logprob_fallback=False, max_new_tokens=8), cut_clip=False)
    assert temperatures[0] == 0.0  # one temperature per call: transformers' own fallback never runs
    assert set(temperatures) <= set(DecodeOptions().temperatures)


def test_transformers_fallback_keeps_the_best_attempt_not_the_last(tiny, monkeypatch):
    """transformers' own fallback kept its last sample when every temperature failed: noisy JFK (white noise at 0.7)
    came out as a 1.0 sample at log-probability -2.6 ("the watchtower has just introduced its food") over the
    greedy text at -1.2. Now each temperature is one generate() call, and the choice is the ct2 backend's."""
    tk = tiny.processor.tokenizer
    for attempts, expected_calls, expected in [
            # every attempt under the -1 threshold: the best one is kept (the greedy), not the 1.0 sample
            ({0.0: ("the cat sat on the mat", -1.2), 0.2: ("a cat sad", -1.9), 0.4: ("cats", -2.4),
              0.6: ("at a mat", -2.1), 0.8: ("mat", -3.0), 1.0: ("the watchtower", -2.6)},
             [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], "the cat sat on the mat"),
            # an attempt that passes ends the fallback, and is kept
            ({0.0: ("the cat sat on the mat", -1.2), 0.2: ("a cat sad", -1.9), 0.4: ("the cat sat on a mat", -0.5)},
             [0.0, 0.2, 0.4], "the cat sat on a mat"),
            ({0.0: ("the cat sat on the mat", -0.4)}, [0.0], "the cat sat on the mat")]:
        calls = []

        def generate(*args, calls=calls, **kwargs):
            calls.append(kwargs["temperature"])
            return None

        def segments(out, n, durations, calls=calls, attempts=attempts):
            text = attempts[calls[-1]][0]
            return [[(0.0, durations[i], " " + text, tk.encode(" " + text, add_special_tokens=False))]
                    for i in range(n)]

        def scored(feats, languages, texts, task, attempts=attempts):
            by_text = {tk.decode(tk.encode(" " + t, add_special_tokens=False)): lp for t, lp in attempts.values()}
            return [(by_text[tk.decode(t)], 0.0) for t in texts]

        monkeypatch.setattr(tiny.model, "generate", generate)
        monkeypatch.setattr(tiny, "_segments_from_output", segments)
        monkeypatch.setattr(tiny, "_scored", scored)
        out = tiny.transcribe(np.zeros(2 * SAMPLE_RATE, np.float32),
                              DecodeOptions(language="en", decode_stats=True), cut_clip=False)
        assert out.text == expected and calls == expected_calls
        assert out.segments[0].stats.temperature == expected_calls[[attempts[t][0] for t in expected_calls]
                                                                   .index(expected)]


def test_a_loop_of_a_short_unit_at_the_end_of_a_decode_is_found_where_it_starts():
    """tail_loop: a unit of at most SHORT_LOOP_TOKENS tokens said LOOP_REPEATS times or more up to the end (its last
    unit may be cut short), from its earliest start; a sentence said again, a word said again with more after it,
    or four times only, are no loop."""
    from utils.repeats import LOOP_REPEATS, SHORT_LOOP_TOKENS, loop_ngram

    said = [1, 2, 3]
    assert (SHORT_LOOP_TOKENS, LOOP_REPEATS) == (4, 5)
    assert tail_loop(said + [5, 6] * 30) == (3, 2)
    assert tail_loop(said + [5, 6] * 30 + [5]) == (3, 2)  # cut short at the token budget
    assert tail_loop([4, 6] + [6, 6] * 3) == (1, 1)  # the earliest start, then the shortest unit
    assert tail_loop(said + [7, 8, 9, 10] * 5) == (3, 4)
    assert tail_loop(said + [7, 8, 9, 10, 11] * 9) is None  # a unit of 5: a short sentence said again
    assert tail_loop(said + [5, 6] * 4) is None
    assert tail_loop(said + [5] * 8 + [9, 10]) is None  # "哈哈哈哈哈哈哈哈" and more speech
    assert tail_loop([]) is None and tail_loop([5] * 4) is None and tail_loop([5] * 5) == (0, 1)
    assert [loop_ngram(u) for u in (1, 2, 4)] == [3, 5, 9]


def test_a_decode_that_ends_in_a_loop_is_decoded_on_from_where_the_loop_starts(base_ct2, en_wav, monkeypatch):
    """ct2: a chunk read as four words and then one of its tokens pairs over and over (a loop to the token budget,
    as whisper-base does on English at 5 dB SNR) is decoded again with those tokens and the unit once as the
    decoder's prefix and no 5-gram twice: the real decoder reads the rest of the sentence from there. A
    continuation that loops again is cut after its first unit."""
    from types import SimpleNamespace

    audio = load_audio(en_wav)
    options = DecodeOptions(language="en", beam_size=3)
    reading = base_ct2.transcribe(audio, options).text
    tk = base_ct2._tokenizer("en", "transcribe")
    read = tk.encode(" " + reading.strip())
    own = count_errors(EN_SENTENCE, reading, "wer").rate
    assert own <= 0.25, reading  # "The quick brown fox jump is over the lazy dog."
    looped = read[:6] + read[4:6] * 80  # the first decode: read[4:6] over and over from token 4 on
    real_generate = base_ct2._generate
    calls = []

    def generate(encoded, prompts, opts, temperature, max_new_tokens, no_repeat_ngram_size=0, loop_again=False):
        calls.append((temperature, no_repeat_ngram_size, prompts[0]))
        if no_repeat_ngram_size == 0 or loop_again:
            ids = prompts[0][-6:] + looped[6:] if no_repeat_ngram_size else looped
            return [SimpleNamespace(sequences_ids=[ids], scores=[-0.2], no_speech_prob=0.0) for _ in prompts]
        return real_generate(encoded, prompts, opts, temperature, max_new_tokens,
                             no_repeat_ngram_size=no_repeat_ngram_size)

    monkeypatch.setattr(base_ct2, "_generate", generate)
    single = replace(options, temperatures=(0.0,))
    text = base_ct2.transcribe(audio, single, cut_clip=False).text
    assert [c[:2] for c in calls] == [(0.0, 0), (0.0, 5)]
    assert calls[1][2][-6:] == read[:6]  # the prompt ends in the words before the loop and its unit once
    assert count_errors(EN_SENTENCE, text, "wer").rate <= own + 0.12, text  # a word at most
    calls.clear()
    monkeypatch.setattr(base_ct2, "_generate", lambda *a, **k: generate(*a, **k, loop_again=True))
    again = base_ct2.transcribe(audio, single, cut_clip=False).text
    assert len(calls) == 2 and again == tk.decode(read[:6]).strip()
    # where the caller cuts the chunk into take-sized pieces (its text repeats), a failed continuation leaves the loop
    for split, kept in (([True], looped), ([False], read[:6]), (None, read[:6])):
        (result,) = base_ct2._decode([audio], ["en"], single, None, split)
        assert [t for piece in result.tokens for t in piece] == kept


def test_transformers_cuts_a_decode_that_ends_in_a_loop_after_its_first_unit(tiny, en_wav):
    """transformers (no decoder prefix in its Whisper generate): the random tiny model's greedy loop ends the text
    after one unit; what it read before stays. Where the caller cuts the chunk into pieces, the loop stays."""
    audio = load_audio(en_wav)
    plain = DecodeOptions(language="zh", temperatures=(0.0,), max_new_tokens=120, compression_ratio_threshold=None,
                          logprob_threshold=None, no_speech_threshold=None)
    text = tiny.transcribe(audio, plain, cut_clip=False).text
    tokens = tiny.processor.tokenizer.encode(text, add_special_tokens=False)
    assert tokens and tail_loop(tokens) is None and longest_repeat(tokens) < 5, text
    # where the caller cuts the chunk into take-sized pieces (its text repeats), the loop is left for it to see
    (kept,) = tiny._decode([audio], ["zh"], plain, None, [True])
    looped = [t for piece in kept.tokens for t in piece]
    assert tail_loop(looped) is not None and repeat_period(looped) is not None
    (cut,) = tiny._decode([audio], ["zh"], plain, None, [False])
    assert [t for piece in cut.tokens for t in piece] == looped[: sum(tail_loop(looped))]


def test_decoder_loops_are_told_apart_from_speech_that_repeats_itself():
    sentence = list(range(100, 118))  # 18 tokens, said three times: compressible, but it ends
    said = "不但我用书给女儿压岁，也劝说亲朋不要给女儿压岁钱。" * 3
    assert compression_ratio(said) > 2.4
    assert longest_repeat(sentence * 3) == 3 and longest_repeat([7] * 9) == 9 and longest_repeat([1, 2, 3]) == 1
    assert not is_decoder_loop(sentence * 3, said, hit_limit=False, compression_threshold=2.4)
    assert is_decoder_loop(sentence * 3, said, hit_limit=True, compression_threshold=2.4)
    assert is_decoder_loop([5, 6] * 20, "la la " * 20, hit_limit=False, compression_threshold=2.4)
    assert not is_decoder_loop([5, 6] * 20, "la la " * 20, hit_limit=False, compression_threshold=None)


def _record_temperatures(monkeypatch, engine) -> list[float]:
    """Make a ct2 engine's ``_generate`` note the temperature of every call, in the returned list."""
    temperatures: list[float] = []
    generate = engine._generate

    def spy(encoded, prompts, options, temperature, max_new_tokens, **kwargs):
        temperatures.append(temperature)
        return generate(encoded, prompts, options, temperature, max_new_tokens, **kwargs)

    monkeypatch.setattr(engine, "_generate", spy)
    return temperatures


@pytest.mark.slow
def test_a_sentence_said_three_times_keeps_the_greedy_text_without_sampling(base_ct2, tmp_path, monkeypatch):
    """Language lessons and read-back repeat a sentence: three times in one 30 s window compress like a decoder
    loop, but the greedy text ended by itself. It is kept, and no temperature is sampled (which cost 3x the time
    and kept a high-temperature sample, worse than the greedy text)."""
    from tests.conftest import make_speech

    sentence = "近几年，不但我用书给女儿压岁，也劝说亲朋不要给女儿压岁钱。"
    one = load_audio(make_speech(sentence, tmp_path / "one.wav", voice="cmn-latn-pinyin+f3"))
    gap = np.zeros(SAMPLE_RATE, np.float32)
    three = np.concatenate([one, gap, one, gap, one])
    assert len(three) < 30 * SAMPLE_RATE
    temperatures = _record_temperatures(monkeypatch, base_ct2)
    text = base_ct2.transcribe(three, DecodeOptions(language="zh")).text
    greedy = base_ct2.transcribe(three, DecodeOptions(language="zh", temperatures=(0.0,))).text
    assert compression_ratio(text) > 2.4  # the reference rule would have sampled every temperature
    assert temperatures == [0.0, 0.0]
    assert text == greedy
    third = len(text) // 3
    assert text.count(text[:6]) == 3 and error_rate([text[:third] * 3], [text]) < 0.1, text
    # the transformers backend too (transformers' own fallback used to swap the greedy text for a sample)
    hf = load_transcriber("openai/whisper-base", "transformers", device="cpu")
    hf_text = hf.transcribe(three, DecodeOptions(language="zh")).text
    assert hf_text == hf.transcribe(three, DecodeOptions(language="zh", temperatures=(0.0,))).text
    assert hf_text.count(hf_text[:6]) == 3, hf_text


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ct2", "transformers"])
@pytest.mark.parametrize("times", [2, 3])
def test_a_real_sentence_said_several_times_in_one_window_is_read_every_time(backend, times, repo_root):
    """A real AISHELL-1 recording said two or three times, 1 s apart (one window): without timestamp tokens
    whisper-base read it once on both backends (CER 0.5-0.69); the text is slow for its speech, its alignment leaves
    the other takes unread, so it is decoded again with them and read every time (ct2 int8 needs its beam for
    that: greedy, it reads one take with timestamp tokens too). Said twice and read once is 2.1 tokens per second
    of speech, within the rates of slow right readings: only the alignment tells the two apart."""
    one = load_audio(repo_root / "dataset" / "real" / "zh_aishell_0121.flac")
    gap = np.zeros(SAMPLE_RATE, np.float32)
    audio = np.concatenate([part for _ in range(times) for part in (one, gap)])
    engine = load_transcriber("openai/whisper-base", backend, device="cpu")  # ct2: int8, what users get on a CPU
    beam_size = 3 if backend == "ct2" else 1  # infer.py's defaults (ct2 int8 greedy reads it once either way)
    text = engine.transcribe(audio, DecodeOptions(language="zh", beam_size=beam_size)).text
    sentence = "甚至出现交易几乎停滞的情况"
    assert normalize_text(text).count("出现交易") == times, text
    assert error_rate([sentence * times], [text]) < 0.2, text


def test_speech_left_unread_after_the_timestamp_decode_is_read_in_pieces(repo_root, monkeypatch):
    """A real sentence said three times in one window and read once: when the decode again with timestamp tokens
    reads no more (as onnxruntime's int8 encoder made it on an AMD Zen 4: CI failed there), the chunk is cut at its
    pauses, its reading taken as one take, and each take is read."""
    one = load_audio(repo_root / "dataset" / "real" / "zh_aishell_0121.flac")
    gap = np.zeros(SAMPLE_RATE, np.float32)
    audio = np.concatenate([part for _ in range(3) for part in (one, gap)])
    engine = load_transcriber("openai/whisper-base", "ct2", device="cpu")
    redone: list[int] = []

    def reads_no_more(waves, results, which, *args):
        redone.extend(which)
        return set()

    monkeypatch.setattr(engine, "_redo_with_timestamps", reads_no_more)
    text = engine.transcribe(audio, DecodeOptions(language="zh", beam_size=3)).text
    assert redone == [0]  # read once without timestamp tokens: speech left unread
    assert normalize_text(text).count("出现交易") == 3, text
    assert error_rate(["甚至出现交易几乎停滞的情况" * 3], [text]) < 0.2, text


class _CountingEncoder:
    """A CTranslate2 replica whose encode calls are recorded (the shape of each input) in ``shapes``."""

    def __init__(self, inner, shapes: list) -> None:
        self.inner, self.shapes = inner, shapes

    def encode(self, features):
        self.shapes.append(tuple(features.shape))
        return self.inner.encode(features)


def test_an_odd_cpu_thread_count_says_which_threads_stay_unused(base_ct2, caplog):
    """CTranslate2's workers share one thread count: --cpu_threads=3 runs 2 workers of 1 thread, and says so."""
    with caplog.at_level("INFO", logger="utils.transcribe"):
        engine = load_transcriber("openai/whisper-base", "ct2", device="cpu", cpu_threads=3, ct2_encoder="onnx")
    assert (engine.workers, engine._worker_threads) == (2, 1)
    assert "CTranslate2 runs 2 workers of 1 thread(s) each (one thread count for all): 1 of the 3 threads asked for " \
           "stay unused" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="utils.transcribe"):
        load_transcriber("openai/whisper-base", "ct2", device="cpu", cpu_threads=2, ct2_encoder="onnx")
    assert "stay unused" not in caplog.text


def test_ct2_cpu_workers_split_batches_and_keep_their_order(base_ct2, en_wav, zh_wav, monkeypatch):
    """On a CPU, CTranslate2 runs a batch as two halves side by side on one thread each; where CTranslate2 encodes
    too, a window left alone is encoded on every thread by a replica of its own (and decoded on a worker until
    tune_lone_decoder says otherwise), or, with weights too big to hold twice, each worker keeps every thread. Rows
    come back in order, the same either way."""
    import threading

    import utils.transcribe as tr

    monkeypatch.setattr(tr, "available_cpus", lambda: 2)
    assert tr.ct2_cpu_workers(0, "onnx") == (2, 1, 0) and tr.ct2_cpu_workers(0, "ct2", 75 << 20) == (2, 1, 2)
    assert tr.ct2_cpu_workers(1, "ct2") == (1, 1, 0) and tr.ct2_cpu_workers(4, "torch") == (2, 2, 0)
    assert tr.ct2_cpu_workers(0, "ct2", 3 << 30) == (2, 2, 0)  # large-v3's int8 weights: held once
    monkeypatch.setattr(tr, "available_cpus", lambda: 16)  # 0 = CTranslate2's default of 4 threads, as before
    assert tr.ct2_cpu_workers(0, "onnx") == (2, 2, 0) and tr.ct2_cpu_workers(0, "ct2") == (2, 2, 4)
    monkeypatch.setattr(tr, "available_cpus", lambda: 2)
    en, zh = load_audio(en_wav), load_audio(zh_wav)
    texts = {}
    for solo in (True, False):
        monkeypatch.setattr(tr, "SOLO_ENCODER_MAX_BYTES", 1 << 40 if solo else 0)
        engine = load_transcriber("openai/whisper-base", "ct2", device="cpu", cpu_threads=2, ct2_encoder="ct2")
        assert engine.workers == 2 and engine._solo_threads == (2 if solo else 0)
        assert (engine._solo is not None) == solo
        alone: list[tuple[int, ...]] = []
        if solo:
            engine._solo = _CountingEncoder(engine._solo, alone)
        calls: list[tuple[int, str]] = []
        models: list = []
        generate = engine._generate_on

        def spy(encoded, prompts, *args):
            calls.append((len(prompts), threading.current_thread().name))
            models.append(args[3] if len(args) > 3 else None)
            return generate(encoded, prompts, *args)

        monkeypatch.setattr(engine, "_generate_on", spy)
        texts[solo] = [t.text for t in engine.transcribe_batch([en, zh, en], DecodeOptions(temperatures=(0.0,)))]
        assert sorted(n for n, _ in calls[:2]) == [1, 2] and len({name for _, name in calls[:2]}) == 2
        assert models[:2] == [engine.model.model] * 2  # the batch on the workers
        assert alone == ([(1, 80, 3000)] if solo else [])  # three windows: the third encoded alone
        del models[:]
        lone = engine.transcribe(en, DecodeOptions(temperatures=(0.0,))).text
        assert models == [engine.model.model]  # untuned: on a worker
        assert lone == texts[solo][0]
        assert texts[solo][0] == texts[solo][2]
        assert count_errors(EN_SENTENCE, texts[solo][0], "wer", language="en").rate < 0.3
        assert texts[solo][1] != texts[solo][0]
    assert texts[True] == texts[False]
    single = load_transcriber("openai/whisper-base", "ct2", device="cpu", cpu_threads=1, ct2_encoder="ct2")
    assert single.workers == 1 and single._solo_threads == 0
    assert single.tune_lone_decoder() is False and single._lone is single.model.model  # no replica: nothing to pick


class _Clock:
    """A stand-in for the ``time`` module whose perf_counter() only moves when told (``now``, seconds)."""

    now = 0.0

    def perf_counter(self) -> float:
        return self.now


class _Timed:
    """A CTranslate2 model whose calls are recorded by name in ``calls``; each generate() moves ``clock`` on by
    ``delay`` seconds, as if it took that long (the real time it takes is not seen)."""

    def __init__(self, inner, clock: _Clock, delay: float) -> None:
        self.inner, self.clock, self.delay, self.calls = inner, clock, delay, []

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        def call(*args, **kwargs):
            self.calls.append(name)
            if name == "generate":
                self.clock.now += self.delay
            return method(*args, **kwargs)

        return call


def test_a_window_alone_decodes_where_a_timed_test_decode_ran_faster(base_ct2, en_wav, monkeypatch):
    """tune_lone_decoder times a test decode on a one-thread worker and on the every-thread replica and from then on
    has a window decoded alone (generate, align, language detection) by the faster one: the replica only when it took
    at most LONE_DECODE_MAX_SHARE of the worker's time (which wins depends on the machine: README, Speed). Batches
    stay on the workers; the text is the same either way. The test decodes take the times a clock stand-in is
    given (20 and 50 ms), whatever this machine does."""
    import utils.transcribe as tr

    monkeypatch.setattr(tr, "available_cpus", lambda: 2)
    clock = _Clock()
    monkeypatch.setattr(tr, "time", clock)
    engine = load_transcriber("openai/whisper-base", "ct2", device="cpu", cpu_threads=2, ct2_encoder="ct2")
    worker, solo = engine.model.model, engine._solo
    assert engine._lone is worker  # untuned: as before
    en = load_audio(en_wav)
    options = DecodeOptions(language=None, word_timestamps=True, temperatures=(0.0,))
    texts = []
    for slow in ("worker", "replica", "no share"):  # no share: the replica faster, but never by enough
        monkeypatch.setattr(tr, "LONE_DECODE_MAX_SHARE", 0.0 if slow == "no share" else tr.LONE_DECODE_MAX_SHARE)
        engine.model.model = _Timed(worker, clock, 0.02 if slow == "replica" else 0.05)
        engine._solo = _Timed(solo, clock, 0.05 if slow == "replica" else 0.02)
        assert engine.tune_lone_decoder() == (slow == "worker")
        assert engine._lone is (engine._solo if slow == "worker" else engine.model.model)
        engine.model.model.calls.clear(), engine._solo.calls.clear()
        transcript = engine.transcribe(en, options)
        on, off = (engine._solo, engine.model.model) if slow == "worker" else (engine.model.model, engine._solo)
        assert {"detect_language", "generate", "align"} <= set(on.calls) and set(off.calls) <= {"encode"}
        assert transcript.language == "en" and transcript.segments[0].words
        texts.append(transcript.text)
        if slow == "worker":  # a batch of two: one row on each worker, not on the replica
            engine._solo.calls.clear()
            engine.transcribe_batch([en, en], replace(options, language="en"))
            assert "generate" not in engine._solo.calls and engine.model.model.calls.count("generate") >= 2
    assert texts[0] == texts[1] == texts[2]
    assert count_errors(EN_SENTENCE, texts[0], "wer", language="en").rate < 0.3


def test_the_lone_decoder_decision_is_recorded_per_layout_and_reused_only_when_asked(tmp_path, monkeypatch, caplog):
    """tune_lone_decoder(record=...) writes its decision under the machine's and model's layout; with reuse=True a
    decision recorded for this layout is taken without timing (no test decode), one for another layout is not;
    without reuse it times again and rewrites; an unreadable record is timed again and replaced; a record that cannot be
    written leaves the timed decision in use and says so."""
    import json
    import logging

    import utils.transcribe as tr

    monkeypatch.setattr(tr, "available_cpus", lambda: 2)
    clock = _Clock()
    monkeypatch.setattr(tr, "time", clock)
    engine = load_transcriber("openai/whisper-base", "ct2", device="cpu", cpu_threads=2, ct2_encoder="ct2")
    worker, solo = engine.model.model, engine._solo
    layout = engine.lone_decoder_layout()
    assert "2 workers x 1 threads, replica 2" in layout and "ctranslate2" in layout
    record = tmp_path / "cache" / "lone_decoder.json"

    def tune(replica_faster: bool, reuse: bool) -> tuple[bool, int]:
        """(picked the replica, test decodes run)"""
        engine.model.model = _Timed(worker, clock, 0.05 if replica_faster else 0.02)
        engine._solo = _Timed(solo, clock, 0.02 if replica_faster else 0.05)
        picked = engine.tune_lone_decoder(record=record, reuse=reuse)
        assert engine._lone is (engine._solo if picked else engine.model.model)
        return picked, engine.model.model.calls.count("generate") + engine._solo.calls.count("generate")

    assert tune(replica_faster=True, reuse=True) == (True, 6)  # nothing recorded yet: timed (3 runs each), written
    saved = json.loads(record.read_text(encoding="utf-8"))
    assert list(saved) == [layout] and saved[layout]["replica"] is True
    assert saved[layout]["replica_ms_per_token"] < saved[layout]["worker_ms_per_token"]
    with caplog.at_level(logging.INFO, logger="utils.transcribe"):
        assert tune(replica_faster=False, reuse=True) == (True, 0)  # taken from the record: no test decode
    assert "timed on this machine before" in caplog.text
    assert tune(replica_faster=False, reuse=False) == (False, 6)  # timed again: the record follows
    assert json.loads(record.read_text(encoding="utf-8"))[layout]["replica"] is False
    record.write_text(json.dumps({layout.replace("2 cores", "8 cores"): {"replica": True}}), encoding="utf-8")
    assert tune(replica_faster=False, reuse=True) == (False, 6)  # another machine's decision is not this one's
    assert len(json.loads(record.read_text(encoding="utf-8"))) == 2
    record.write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="utils.transcribe"):
        assert tune(replica_faster=True, reuse=True) == (True, 6)
    assert "cannot read it" in caplog.text
    assert json.loads(record.read_text(encoding="utf-8"))[layout]["replica"] is True
    assert [p.name for p in record.parent.iterdir()] == [record.name]  # no temporary file left
    (tmp_path / "a file").write_text("")  # a record that cannot be written: timed, used, the failure logged
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="utils.transcribe"):
        assert engine.tune_lone_decoder(record=tmp_path / "a file" / "lone_decoder.json", reuse=True) is True
    assert "cannot write" in caplog.text and "the next run times the decode again" in caplog.text


@pytest.mark.slow
def test_ct2_decodes_a_30_s_chunk_beside_a_short_one_each_in_its_own_window(tmp_path, monkeypatch):
    """A recording of one 30 s chunk and a short one (28 s said without a pause, then two sentences: no grouping
    evens them out). The 30 s chunk is encoded first, alone (on every thread), and decoded while the short one is
    encoded in a window of its own (its length + 5 s, at least 15 s) and decoded; every sentence is read. The
    alignment that checks the readings uses the windows the decode used (nothing encoded again); a chunk kept in
    another window than the one asked for is encoded again; a short chunk whose text loops is decoded again in 30 s,
    the 30 s one is not."""
    import threading

    import utils.transcribe as tr

    monkeypatch.setattr(tr, "available_cpus", lambda: 2)
    engine = load_transcriber("openai/whisper-base", "ct2", device="cpu", cpu_threads=2)
    if engine.encoder != "ct2":  # a CPU with VNNI encodes in onnxruntime by default: ask for CTranslate2's
        engine = load_transcriber("openai/whisper-base", "ct2", device="cpu", cpu_threads=2, ct2_encoder="ct2")
    run_on = " and ".join(LONG_EN_SENTENCES[k % 3].rstrip(".") for k in range(9))  # no punctuation: no pause
    said = [run_on + ".", *LONG_EN_SENTENCES[:2]]
    gap = np.zeros(2 * SAMPLE_RATE, dtype=np.float32)
    audio = np.concatenate([p for i, t in enumerate(said) for p in (load_audio(make_speech(t, tmp_path / f"s{i}.wav")),
                                                                     gap)])
    windows: list[tuple[int, str]] = []
    alone: list[tuple[int, ...]] = []
    engine._solo = _CountingEncoder(engine._solo, alone)
    generate = engine._generate_on

    def spy(encoded, prompts, *args):
        windows.append((encoded.shape[1], threading.current_thread().name))
        return generate(encoded, prompts, *args)

    pipelined = []
    decode_pipelined = engine._decode_pipelined
    monkeypatch.setattr(engine, "_generate_on", spy)
    monkeypatch.setattr(engine, "_decode_pipelined", lambda chunks, *a: (
        pipelined.append([len(c) / SAMPLE_RATE for c in chunks]), decode_pipelined(chunks, *a))[1])
    text = engine.transcribe(audio, DecodeOptions(language="en", beam_size=3)).text
    assert len(pipelined) == 1 and len(pipelined[0]) == 2
    long, short = pipelined[0]
    assert long >= 25 and short < 20
    expected_short_frames = 50 * tr.encoder_window([np.zeros(round(short * SAMPLE_RATE))], tr.SHORT_CHUNK_WINDOW_S)
    assert sorted(frames for frames, _ in windows[:2]) == sorted([1500, expected_short_frames])
    assert all(name.startswith("ct2") for _, name in windows[:2])  # both decodes on the workers
    assert alone[0] == (1, 80, 3000)  # the 30 s chunk was encoded first, on every thread
    assert count_errors(" ".join(said), text, "wer", language="en").rate <= 0.1

    # the alignment of those chunks uses the kept rows, each in its own window
    chunks = [audio[: round(long * SAMPLE_RATE)], audio[-round(short * SAMPLE_RATE):]]
    results = engine._decode(chunks, ["en", "en"], DecodeOptions(language="en", temperatures=(0.0,)), None)
    assert [row.shape[0] for row in engine._kept.values()] == [1500, expected_short_frames]
    encodes = []
    monkeypatch.setattr(engine, "_encode", lambda feats: encodes.append(feats.shape) or tr.CT2Transcriber._encode(
        engine, feats))
    paths = engine._align(chunks, ["en", "en"], [r.tokens[0] for r in results], "transcribe")
    assert encodes == []
    for chunk, result, (rows, frames, _) in zip(chunks, results, paths, strict=True):
        assert rows.max() == len(result.tokens[0])  # every token and the end of text
        assert 0 <= frames.min() and frames.max() <= len(chunk) // 320  # inside the chunk's own speech
    reused = engine._encode_reusing(chunks, engine._features(chunks))  # 30 s asked: the short chunk encoded again
    assert encodes == [(1, 80, 3000)] and reused.shape[:2] == (2, 1500)

    # a short chunk that loops in its own window is decoded again in 30 s, the 30 s one is not
    decodes: list[list[int]] = []
    decode = engine._decode
    with monkeypatch.context() as m:
        m.setattr(engine, "_decode", lambda chunks_, *a: decodes.append([len(c) for c in chunks_])
                  or decode(chunks_, *a))
        m.setattr(tr, "is_decoder_loop", lambda *a: True)
        engine._decode_words(chunks, ["en", "en"], DecodeOptions(language="en", temperatures=(0.0,)), None)
    assert decodes == [[len(c) for c in chunks], [len(chunks[1])]]

    # language detected: the 30 s chunk's detection encoding is decoded from, only the short one is encoded
    encodes.clear()
    pipelined.clear()
    detected = engine.transcribe(audio, DecodeOptions(beam_size=3))
    assert detected.language == "en" and detected.text == text
    assert len(pipelined) == 1 and encodes[:2] == [(1, 80, 3000), (1, 80, 2 * expected_short_frames)]


@pytest.mark.slow
def test_a_sentence_said_eight_times_is_transcribed_eight_times_without_sampling(tmp_path, monkeypatch):
    """A teacher's sentence said eight times, 1 s apart (45 s, VAD chunks of 27 s and 16 s when packed, two of
    about 22 s now): whisper-base int8 lost count in the 27 s window (4 times, or after the temperature fallback 7, at
    random: WER 0.15-0.55 from run to run). The chunks that repeat themselves are decoded again a repetition at a
    time: eight times, greedy, the same every run. Their readings are checked against the speech regions of the VAD's
    pass over the recording, without a second pass over each chunk."""
    import utils.transcribe

    monkeypatch.setattr(utils.transcribe, "speech_spans", lambda wave: pytest.fail("a second VAD pass over a chunk"))
    sentence = "Please open your books to page twenty and read the first line aloud."
    one = load_audio(make_speech(sentence, tmp_path / "one.wav"))
    gap = np.zeros(SAMPLE_RATE, np.float32)
    audio = np.concatenate([part for _ in range(8) for part in (one, gap)])
    engine = load_transcriber("openai/whisper-base", "ct2", device="cpu")  # int8, what users get on a CPU
    temperatures = _record_temperatures(monkeypatch, engine)
    options = DecodeOptions(language="en", beam_size=3)
    text = engine.transcribe(audio, options).text
    assert set(temperatures) == {0.0}, temperatures
    assert text.lower().count("please open your books") == 8, text
    assert error_rate([sentence * 8], [text], "wer") < 0.15, text
    assert engine.transcribe(audio, options).text == text


def test_no_output_holds_half_a_character_on_either_backend(base_hf, base_ct2, repo_root):
    """A token budget can end between the byte tokens of one character (dense Mandarin at the edge): the half
    decodes as U+FFFD, which must never reach a transcript. The budgets here cut inside a character."""
    import utils.transcribe

    raw = []
    postprocess = utils.transcribe.postprocess_text

    def spy(text, *args, **kwargs):
        raw.append(text)
        return postprocess(text, *args, **kwargs)

    audio = load_audio(repo_root / "dataset" / "test.wav")
    utils.transcribe.postprocess_text = spy
    try:
        for engine in (base_hf, base_ct2):
            raw.clear()
            for budget in (6, 7, 8):  # whisper-base reads 6 tokens, 7 with timestamps, to half a character here
                for timestamps in (False, True):
                    t = engine.transcribe(audio, DecodeOptions(language="zh", max_new_tokens=budget,
                                                               temperatures=(0.0,), timestamps=timestamps))
                    assert "\ufffd" not in t.text and all("\ufffd" not in s.text for s in t.segments), (budget, t)
            assert any("\ufffd" in text for text in raw), engine.backend  # the cut happened, and was cleaned up
    finally:
        utils.transcribe.postprocess_text = postprocess
    assert postprocess_text("劝说\ufffd", "zh", None, False) == "劝说"


# -- hotwords and initial prompt ------------------------------------------------------------------------------
def test_hotwords_come_before_the_previous_text_and_stay_when_it_is_long(tiny, base_ct2):
    """Both backends prompt with the hotwords, then the previous text's last tokens (faster-whisper's order). The
    transformers backend kept the last tokens of the two joined: with --condition_on_previous_text, from a long
    recording's second chunk on, the hotwords were cut off (ct2 kept them)."""
    previous = "ask not what your country can do for you " * 40
    tk = base_ct2._tokenizer("en", "transcribe")
    for prompt, hotwords in ((" the meeting ", "Szymanski, Zolgensma"), (previous, "Szymanski, Zolgensma"),
                             ("the meeting", None), (None, "Szymanski")):
        ids = tiny._generate_kwargs(DecodeOptions(language="en", hotwords=hotwords), ["en"], prompt)["prompt_ids"]
        assert ids[0] == tk.sot_prev and len(ids) <= 224
        ct2 = base_ct2.model.get_prompt(tk, tk.encode(" " + prompt.strip()) if prompt else [], hotwords=hotwords)
        assert ct2[0] == tk.sot_prev
        for text in (tiny.processor.tokenizer.decode(ids[1:]), tk.decode(ct2[1:])):
            assert text.strip().startswith(hotwords or prompt.strip()), text
            assert text.rstrip().endswith(prompt.strip()[-40:] if prompt else hotwords), text
    assert "prompt_ids" not in tiny._generate_kwargs(DecodeOptions(language="en"), ["en"], "  ")
    assert DecodeOptions(hotwords="   ").hotwords is None
    # one separator style, whatever was typed: ", " between Latin words (a bare comma was copied into the text),
    # "," between Chinese ones (as training writes them)
    assert DecodeOptions(hotwords="colleague,Szymanski").hotwords == "colleague, Szymanski"
    assert DecodeOptions(hotwords=" A ;B，  C、").hotwords == "A, B, C"
    assert DecodeOptions(hotwords="词典、学习，帮助").hotwords == "词典,学习,帮助"
    assert DecodeOptions(hotwords="地铁,Zolgensma").hotwords == "地铁, Zolgensma"
    assert DecodeOptions(hotwords=" , ").hotwords is None


@pytest.fixture(scope="module")
def rare_names(tmp_path_factory):
    """Two sentences with rare names that whisper-base mishears without help (espeak, repeatable)."""
    d = tmp_path_factory.mktemp("hotwords")
    return [(make_speech("My colleague Szymanski will call you back.", d / "name.wav"), "Szymanski"),
            (make_speech("The new drug is called Zolgensma.", d / "drug.wav"), "Zolgensma")]


@pytest.mark.slow
def test_hotwords_fix_a_misheard_rare_name_on_both_backends(base_hf, base_ct2, rare_names):
    for engine in (base_hf, base_ct2):
        for wav, name in rare_names:
            plain = engine.transcribe(str(wav), DecodeOptions(language="en", temperatures=(0.0,))).text
            helped = engine.transcribe(str(wav), DecodeOptions(language="en", temperatures=(0.0,),
                                                              hotwords="Szymanski, Zolgensma")).text
            assert name not in plain and name in helped, (engine.backend, plain, helped)
        # typed without a space: "will call you back." (the name and the words before it lost), and
        # "My colleague,Szymanski,will call you back." with two names; now read as with ", "
        for hotwords in ("colleague,Szymanski", "Szymanski,Kowalski"):
            text = engine.transcribe(str(rare_names[0][0]), DecodeOptions(language="en", temperatures=(0.0,),
                                                                          hotwords=hotwords)).text
            assert text == "My colleague, Szymanski, will call you back.", (engine.backend, hotwords, text)


@pytest.mark.slow
def test_infer_hotwords_flag(rare_names, capsys):
    import infer

    wav, name = rare_names[0]
    assert infer.main([f"--audio_path={wav}", "--backend=ct2", "--language=en", f"--hotwords={name}"]) == 0
    assert name in capsys.readouterr().out


def test_a_prompt_longer_than_the_decoder_takes_is_cut_to_its_last_tokens(tiny_whisper_dir, zh_wav, caplog):
    """A long --initial_prompt / --hotwords (320 characters, ~350 tokens) made transformers' generate() raise (the
    prompt, the start sequence and the budget past the 448-token text context); its last tokens are kept instead,
    as the ct2 backend (and the reference decoder) keep them."""
    import logging

    from utils.audio import load_audio
    from utils.transcribe import DecodeOptions, load_transcriber

    engine = load_transcriber(str(tiny_whisper_dir), "transformers", device="cpu")
    audio = load_audio(zh_wav)
    with caplog.at_level(logging.DEBUG, logger="utils.transcribe"):
        for options in (DecodeOptions(language="zh", initial_prompt="今天天气很好，我们去公园散步吧。" * 20,
                                      temperatures=(0.0,)),  # the random model's gibberish: no fallback
                        DecodeOptions(language="zh", hotwords="，".join(["张三", "李四", "王五"] * 60),
                                      timestamps=True, temperatures=(0.0,))):
            engine.transcribe(audio, options)
    assert "left out" in caplog.text


def test_prompt_and_hotwords_text_that_spells_control_tokens_is_read_as_text(base_hf, base_ct2, zh_wav):
    """"<|en|><|translate|><|notimestamps|>" typed as --initial_prompt (or a server request's prompt) switched the
    ct2 backend to translating, and "<|endoftext|>" made the transformers backend raise (HTTP 400 from the server):
    prompt and hotwords are text, as in OpenAI's API."""
    from utils.audio import load_audio
    from utils.languages import has_unspaced_script
    from utils.transcribe import DecodeOptions

    control = "<|en|><|translate|><|notimestamps|><|endoftext|> at <|1.00|>"  # timestamps are added, not special
    eot = 50257  # whisper-base's first special token
    assert max(base_hf._prompt_ids(control)[1:]) < eot
    assert not base_hf.processor.tokenizer.backend_tokenizer.encode_special_tokens  # the shared one: untouched
    assert max(base_ct2._tokenizer("zh", "transcribe").encode(" " + control)) < eot
    # hotwords too: the prompt before the start sequence holds text tokens only
    hotwords = "今天,<|en|>,<|translate|>"
    tk = base_ct2._tokenizer("zh", "transcribe")
    prompt = base_ct2.model.get_prompt(tk, [], hotwords=hotwords)
    assert prompt[0] == tk.sot_prev and max(prompt[1:prompt.index(tk.sot)]) < eot
    ids = base_hf._generate_kwargs(DecodeOptions(language="zh", hotwords=hotwords), ["zh"], None)["prompt_ids"]
    assert max(ids[1:]) < eot
    # a ct2 folder converted from transformers (merge_lora.py --ct2) has the timestamp tokens in its tokenizer.json
    with_timestamps = base_hf.processor.tokenizer.backend_tokenizer
    assert with_timestamps.encode(" at <|1.00|>", add_special_tokens=False).ids[-1] == 50414
    ct2_tokenizer = type(base_ct2._tokenizer("zh", "transcribe"))(with_timestamps, True, "transcribe", "zh")
    assert max(ct2_tokenizer.encode(" " + control)) < eot
    audio = load_audio(zh_wav)
    # greedy: with these prompts every decode fails the fallback checks, and six temperatures cost a minute; the
    # Chinese word before them keeps the greedy reading in Chinese characters (without it ct2 read "《》《》…")
    for engine in (base_hf, base_ct2):
        for options in (DecodeOptions(language="zh", initial_prompt="今天" + control, temperatures=(0.0,)),
                        DecodeOptions(language="zh", hotwords=hotwords, temperatures=(0.0,))):
            text = engine.transcribe(audio, options).text
            assert text and has_unspaced_script(text) and "<|" not in text, (engine.backend, options, text)


def test_a_language_the_model_has_no_token_for_is_refused_on_both_backends(tiny_whisper_dir, zh_wav, tmp_path,
                                                                              caplog):
    """--language=yue (Cantonese came with large-v3) on whisper-base: transformers raised from generate(), ct2
    decoded garbage ("The The The the…") and evaluation scored CER 1.0 without a word; now each backend refuses
    it, and infer.py says so before decoding."""
    import infer
    from utils.transcribe import load_transcriber

    for engine in (load_transcriber(str(tiny_whisper_dir), "transformers", device="cpu"),
                   load_transcriber("openai/whisper-base", "ct2", device="cpu", ct2_encoder="ct2")):
        assert {"zh", "en", "ja"} <= engine.languages() and "yue" not in engine.languages()
        assert len(engine.languages()) == 99
        engine.check_language("zh")
        engine.check_language(None)
        engine.check_language("auto")
        with pytest.raises(ValueError, match=r"no <\|yue\|> token"):
            engine.check_language("yue")
    assert infer.main([f"--audio_path={zh_wav}", "--backend=ct2", "--ct2_encoder=ct2", "--language=yue"]) == 2
    assert "--language=yue: this model has no <|yue|> token" in caplog.text
    import json

    import evaluation

    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"audio": {"path": str(zh_wav)}, "sentence": "你好", "duration": 1.0}) + "\n",
                        encoding="utf-8")
    caplog.clear()
    assert evaluation.main(["--compare", str(tiny_whisper_dir), "openai/whisper-base", f"--test_data={manifest}",
                            "--language=yue", f"--output={tmp_path / 'c.json'}"]) == 2
    assert f"cannot use {tiny_whisper_dir}: --language=yue" in caplog.text and not (tmp_path / "c.json").exists()


def test_a_timestamped_reading_that_stops_with_speech_after_it_is_read_on_from_its_last_timestamp():
    """CTranslate2 ended a chunk's text at a timestamp where the next window should go on (the reference decoder's
    seek), and the batched decoder took the chunk as read: 4 of 48 espeak Mandarin sentences were in no subtitle
    while the text-only run had them all. The rest of the chunk is now read from that timestamp and joined."""
    from utils.transcribe import _BaseTranscriber, _ChunkResult, stopped_early

    class Stub(_BaseTranscriber):
        backend = "stub"

        def __init__(self) -> None:
            self.calls: list[float] = []

        def _decode(self, chunks, languages, options, prompt, split_repeats=None):
            out = []
            for c in chunks:
                seconds = len(c) / SAMPLE_RATE
                self.calls.append(round(seconds, 2))
                if seconds > 16:  # the whole chunk: stops at 5 s
                    out.append(_ChunkResult([(0.0, 5.0, "first part")], "first part", tokens=[[11, 12, 13]]))
                else:
                    out.append(_ChunkResult([(0.2, seconds - 1.0, "the rest")], "the rest", tokens=[[14, 15]]))
            return out

    audio = np.zeros(20 * SAMPLE_RATE, np.float32)
    chunk = Chunk(0, len(audio), spans=((0, int(4.8 * SAMPLE_RATE)), (int(5.5 * SAMPLE_RATE), 19 * SAMPLE_RATE)))
    stub = Stub()
    [result] = stub._decode_chunks(audio, [chunk], "en", DecodeOptions(timestamps=True), None)
    assert stub.calls == [20.0, 14.7]  # from CHUNK_LEAD_S before the speech after the stop (5.5 s)
    assert [(a, round(b, 2), t) for a, b, t in result.segments] == [(0.0, 5.0, "first part"), (5.5, 19.0, "the rest")]
    assert result.text == "first part the rest" and result.tokens == [[11, 12, 13], [14, 15]]

    stub = Stub()  # streaming's live steps: the next step reads the buffer's end again
    [alone] = stub._decode_chunks(audio, [chunk], "en", DecodeOptions(timestamps=True, read_on=False), None)
    assert stub.calls == [20.0] and alone.text == "first part"

    first = _ChunkResult([(0.0, 5.0, "first part")], "first part")
    assert stopped_early(first, chunk, audio) == pytest.approx(5.3)
    short = Chunk(0, len(audio), spans=((0, int(4.8 * SAMPLE_RATE)), (int(5.5 * SAMPLE_RATE), int(6.4 * SAMPLE_RATE))))
    assert stopped_early(first, short, audio) is None  # 0.9 s of speech after it: below READ_ON_MIN_S
    tail = Chunk(0, len(audio), spans=((0, int(4.8 * SAMPLE_RATE)), (int(5.5 * SAMPLE_RATE), int(6.9 * SAMPLE_RATE))))
    assert stopped_early(first, tail, audio) == pytest.approx(5.3)  # 1.4 s: "do for your country." at a file's end
    assert stopped_early(replace(first, out_of_budget=True), chunk, audio) is None  # read in halves instead


def test_a_reading_that_stops_before_a_long_pause_is_read_on_from_the_speech_after_it():
    """A 30 s chunk held two real AISHELL-1 sentences, 15 s of silence and a third one; the reading stopped after the
    second (at 11 s), and the rest read on from there, 15 s of silence first, came back empty: the third sentence was
    in no subtitle (both backends). The rest is read from shortly before its speech; an empty last segment (the
    transformers backend's "11.0 → 30.0: ''") is no place the reading stopped at."""
    from utils.transcribe import _BaseTranscriber, _ChunkResult, stopped_early
    from utils.vad import CHUNK_LEAD_S

    sr = SAMPLE_RATE
    audio = np.zeros(30 * sr, np.float32)
    spans = ((0, int(3.7 * sr)), (int(7.3 * sr), int(10.8 * sr)), (int(26.4 * sr), 30 * sr))
    chunk = Chunk(0, len(audio), spans=spans)
    read = _ChunkResult([(0.0, 4.0, "一"), (7.0, 11.0, "二")], "一二")
    assert stopped_early(read, chunk, audio) == pytest.approx(26.4 - CHUNK_LEAD_S)
    empty_end = replace(read, segments=read.segments + [(11.0, 30.0, "")])
    assert stopped_early(empty_end, chunk, audio) == pytest.approx(26.4 - CHUNK_LEAD_S)
    inside = replace(read, segments=[(0.0, 4.0, "一"), (7.0, 9.0, "二")])  # stopped inside the speech: from there
    assert stopped_early(inside, chunk, audio) == 9.0

    class Stub(_BaseTranscriber):
        backend = "stub"

        def _decode(self, chunks, languages, options, prompt, split_repeats=None):
            return [empty_end if len(c) == len(audio) else _ChunkResult([(0.2, 3.8, "三")], "三", tokens=[[3]])
                    for c in chunks]

    [result] = Stub()._decode_chunks(audio, [chunk], "zh", DecodeOptions(timestamps=True), None)
    assert [(round(a, 2), round(b, 2), t) for a, b, t in result.segments if t] == [
        (0.0, 4.0, "一"), (7.0, 11.0, "二"), (26.4, 30.0, "三")]


def test_the_sampled_fallback_gives_the_same_text_run_after_run(tiny, zh_wav):
    """The transformers backend sampled its temperature fallback from PyTorch's global generator, unseeded: one real
    file (music, then Mandarin and English) read 13 different ways in 15 runs of infer.py, some of them loops. Each
    batch that may sample is seeded with ``DecodeOptions.seed``: the same audio and options, the same text, whatever
    drew random numbers in between; another seed, another sample (here a random model sampled at temperature 1)."""
    import torch

    audio = load_audio(zh_wav)
    options = DecodeOptions(language="zh", temperatures=(1.0,), max_new_tokens=40)
    first = tiny.transcribe(audio, options).text
    torch.rand(1000)  # anything else drawing from the generator in between
    assert tiny.transcribe(audio, options).text == first
    other = {tiny.transcribe(audio, replace(options, seed=s)).text for s in (1, 2, 3)}
    assert other - {first}, "different seeds should sample differently"


def test_a_batch_reads_each_clip_as_transcribe_does(base_ct2, repo_root):
    """evaluation.py scores clips read by transcribe_batch(): each one as infer.py's transcribe() reads it. Before, a
    batch decoded a clip whole from its first sample: JFK's sentence ending 0.26 s before the end of a 29.9 s clip
    lost "do for your country" (timestamps on, its one segment put at 0.0-28.0 s), and a real AISHELL-1 sentence
    after 14 s of silence was read from the silence (a loop of nine segments, one every 2 s)."""
    real = repo_root / "dataset" / "real"
    jfk, zh = load_audio(real / "en_jfk.flac"), load_audio(real / "zh_aishell_0121.flac")
    silence = lambda seconds: np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32)  # noqa: E731
    clips = [np.concatenate([silence(18.64), jfk, silence(0.26)]), np.concatenate([silence(14), zh, silence(2)])]
    for options in (DecodeOptions(language="en", timestamps=True, temperatures=(0.0,)),
                    DecodeOptions(language="zh", timestamps=True, temperatures=(0.0,))):
        batch = base_ct2.transcribe_batch(clips, options)
        for clip, together in zip(clips, batch):
            alone = base_ct2.transcribe(clip, options)
            assert together.text == alone.text
            assert [(s.start, s.end) for s in together.segments] == [(s.start, s.end) for s in alone.segments]
            assert together.segments and together.segments[0].start > 13.5  # at the speech, not in the silence
        if options.language == "en":
            assert batch[0].text.rstrip(".").endswith("do for your country"), batch[0].text


def test_a_loop_that_ran_to_the_budget_is_cut_also_with_a_longer_unit():
    """whisper-base, greedy, on 18 s of pink noise: "在那里, 要不然, 要不然, …" 45 times to the token budget, a unit of 5
    tokens, longer than a loop's unit is taken to be in a text that ends (a short sentence said again): it was kept
    whole (evaluation.py charged 135 made-up characters per no-speech clip). At the budget it is cut after one unit;
    the same unit said five times in a text that ends is left as it is."""
    from utils.repeats import BUDGET_LOOP_TOKENS, SHORT_LOOP_TOKENS
    from utils.transcribe import cut_tail_loop

    said, unit = [1, 2, 3], [7, 8, 9, 10, 11]
    assert SHORT_LOOP_TOKENS < len(unit) < BUDGET_LOOP_TOKENS
    assert cut_tail_loop(said + unit * 45, caller_cuts=False, at_budget=True) == said + unit
    assert cut_tail_loop(said + unit * 45 + unit[:2], caller_cuts=False, at_budget=True) == said + unit
    assert cut_tail_loop(said + unit * 5, caller_cuts=False) == said + unit * 5
    take = list(range(20, 20 + BUDGET_LOOP_TOKENS + 1))  # a sentence's take is longer: never cut here
    assert cut_tail_loop(said + take * 8, caller_cuts=False, at_budget=True) == said + take * 8


def test_a_loop_decoded_on_in_noise_is_still_dropped_as_silence(base_ct2, monkeypatch):
    """ct2: a decode that loops is decoded on past the loop; the continuation's text was kept without the silence
    check (whisper-base on 18 s of pink noise, greedy: "我心里的心里的心里的" at P(no speech) 0.72 and log-probability
    -1.33, which the rule drops). Decided as every decode is: dropped there, kept where the window holds speech."""
    from types import SimpleNamespace

    tk = base_ct2._tokenizer("zh", "transcribe")
    loop = tk.encode("我心里的" + "心里的" * 60)
    onward = tk.encode("我心里的心里的心里的")
    for no_speech, expected in ((0.72, ""), (0.1, "我心里的心里的心里的")):
        def generate(encoded, prompts, opts, temperature, max_new_tokens, no_repeat_ngram_size=0,
                     no_speech=no_speech):
            if no_repeat_ngram_size:  # decoded on past the loop: the continuation, scored -1.33
                return [SimpleNamespace(sequences_ids=[onward], scores=[-1.33], no_speech_prob=no_speech)
                        for _ in prompts]
            return [SimpleNamespace(sequences_ids=[loop], scores=[-0.16], no_speech_prob=no_speech) for _ in prompts]

        monkeypatch.setattr(base_ct2, "_generate", generate)
        options = DecodeOptions(language="zh", temperatures=(0.0,), beam_size=1)
        assert base_ct2.transcribe(np.zeros(18 * SAMPLE_RATE, np.float32), options, cut_clip=False).text == expected


def test_two_threads_sharing_a_transformers_engine_take_turns_with_the_model(tiny, monkeypatch, tmp_path):
    """One engine shared by threads (the web UI's sessions): the transformers backend changes the model while it
    decodes (the encoder window in its config, alignment hooks on the decoder layers, the encoder output kept), and
    two threads in it at once crashed in the alignment or read each other's audio (4 of 8 calls wrong). A decode
    that waits for the other thread to reach the model now waits in vain: the other one waits for it."""
    import threading

    audio = load_audio(make_speech(EN_SENTENCE, tmp_path / "en.wav"))
    options = DecodeOptions(language="en", max_new_tokens=8)
    other_in, both_in = threading.Event(), []
    real = type(tiny)._decode
    first = threading.get_ident()

    def decode(self, *args, **kwargs):
        if threading.get_ident() != first:
            other_in.set()
        elif not thread.is_alive() and not both_in:  # this thread is in the model: the other one starts
            thread.start()
            both_in.append(other_in.wait(timeout=2.0))  # the other thread reaching the model while this one is in it
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny), "_decode", decode)
    errors = []

    def other() -> None:
        try:
            tiny.transcribe(audio, options)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    thread = threading.Thread(target=other)
    tiny.transcribe(audio, options)
    thread.join()
    assert not errors and other_in.is_set()
    assert both_in and not any(both_in)


def test_a_waveform_of_one_channel_in_two_dimensions_reads_as_the_flat_one_and_others_are_refused(tiny, tmp_path):
    """A (samples, 1) array (soundfile's always_2d=True) ran its FFT along the length-1 axis: 6.5 GB and a numpy
    error for 1 s of audio; int16 samples were read as noise ("。"), a (2, samples) array failed deep inside."""
    audio = load_audio(make_speech(EN_SENTENCE, tmp_path / "en.wav"))
    options = DecodeOptions(language="en", max_new_tokens=8)
    flat = tiny.transcribe(audio, options)
    assert tiny.transcribe(audio[:, None], options).text == flat.text
    assert tiny.transcribe(list(audio.astype(np.float64)), options).text == flat.text
    assert tiny.transcribe_batch([audio[None, :]], options)[0].text == flat.text
    with pytest.raises(ValueError, match=r"shape \(2, \d+\).*mix the channels first \(audio\.mean\(axis=0\)\)"):
        tiny.transcribe(np.stack([audio, audio]), options)
    with pytest.raises(ValueError, match=r"item 0: int16 samples.*audio / 32768"):
        tiny.transcribe_batch([(audio * 32767).astype(np.int16)], options)


def test_a_chunk_read_again_with_timestamps_is_measured_against_a_first_reading_without_words():
    """A whole chunk read again with timestamp tokens keeps an unsure re-read only where the first reading is unsure
    as well: a first "♪" over music is a measure (the re-read "Thank you." at -1.05 is made up), unlike pieces of a
    cut chunk, whose first reading of no words ("《》《》《》") tells nothing of them."""
    from utils.transcribe import _ChunkResult, _sure_enough

    options = DecodeOptions(language="en")
    unsure = _ChunkResult([(0.0, 1.0, "Thank you.")], "Thank you.", avg_logprob=-1.05)
    music = _ChunkResult([(0.0, 1.0, "♪")], "♪", avg_logprob=-0.4)
    assert not _sure_enough(unsure, music, options, wordless_first=True)
    assert _sure_enough(unsure, music, options)


def test_a_clip_of_a_batch_reads_the_same_whatever_clips_come_with_it(tiny, tmp_path):
    """The encoder window of a batch was its longest clip's (+ 5 s): beside a 15.3 s clip the short clips of an
    evaluation batch were encoded in 25 s instead of 15 s, and 2 of 15 demo clips read otherwise than in a batch of
    their own (evaluation.py --batch_size=16 vs 1). Each clip is encoded in its own window now."""
    short = load_audio(make_speech(EN_SENTENCE, tmp_path / "en.wav"))
    long = np.concatenate([short] * 5)[: int(15.3 * SAMPLE_RATE)]
    options = DecodeOptions(language="en", max_new_tokens=12, encoder_window_s=15.0, batch_size=8)
    alone = [t.text for t in tiny.transcribe_batch([short, short[: 2 * SAMPLE_RATE]], options)]
    together = [t.text for t in tiny.transcribe_batch([short, long, short[: 2 * SAMPLE_RATE]], options)]
    assert [together[0], together[2]] == alone
    assert together[1] == tiny.transcribe_batch([long], options)[0].text


def test_speech_that_decodes_to_no_text_is_said(tiny, en_wav, caplog):
    """44 s of English into a Chinese fine-tune (language zh, beam 1) gave an empty transcript and not a word: the
    no-speech check dropped every chunk. Now a warning names the seconds and the fix; speech read as text says
    nothing. (Thresholds that drop any decode stand in for the wrong language.)"""
    speech = load_audio(str(en_wav))
    audio = np.concatenate([speech, np.zeros(SAMPLE_RATE // 2, np.float32)] * 3)
    dropped = DecodeOptions(language="en", beam_size=1, no_speech_threshold=0.0, logprob_threshold=0.0)
    with caplog.at_level("WARNING", logger="utils.transcribe"):
        assert tiny.transcribe(audio, dropped).segments == []
    assert "s the VAD heard as speech decoded to no text" in caplog.text
    assert "another language than en, give --language=auto" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="utils.transcribe"):
        tiny.transcribe(audio, DecodeOptions(language="en", beam_size=1, no_speech_threshold=None))
    assert "decoded to no text" not in caplog.text
    tiny.multilingual = False  # an English-only model: no language to give instead
    try:
        with caplog.at_level("WARNING", logger="utils.transcribe"):
            tiny.transcribe(audio, dropped)
    finally:
        tiny.multilingual = True
    assert "if it is speech, lower the no-speech check" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ct2", "transformers"])
def test_a_segments_last_word_is_not_stretched_over_the_next_segments_words(repo_root, backend):
    """JFK decoded in two segments inside one stretch of speech ("… as much you can do" | "for your country."), as a
    model fine-tuned without timestamp tokens did: each segment's words were refined alone, so "do" was moved on to
    where the sound stops (9.44 → 10.36 s) and "for your country." squeezed into 10.36-10.38 s after it, also in its
    subtitle cue."""
    from utils.transcribe import _ChunkResult

    engine = load_transcriber("openai/whisper-base", backend, device="cpu", **({"ct2_encoder": "ct2"}
                                                                              if backend == "ct2" else {}))
    audio = load_audio(str(repo_root / "dataset/real/en_jfk.flac"))
    tokenizer = engine._word_tokenizer("en", "transcribe")
    first = " And so my fellow Americans, ask not what your country can do for you, ask what you can do"
    second = " for your country."
    pieces = [tokenizer.encode(first), tokenizer.encode(second)]
    assert tokenizer.decode(pieces[0] + pieces[1]) == first + second
    result = _ChunkResult([(0.0, 9.5, first), (9.5, 11.0, second)], first + second, pieces)
    words = engine._add_words([audio], ["en"], [result], DecodeOptions(language="en", word_timestamps=True))[0].words
    do, after = words[0][-1], words[1][0]
    assert do.word.strip() == "do" and after.word.strip() == "for"
    assert do.end <= after.start + 0.02 and do.end - do.start < 0.5, (do, after)
    assert words[1][-1].end - after.start > 0.6  # "for your country." keeps its own time
