"""Labels and batches: start token exactly once, -100 padding, no-speech and timestamp targets, features."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from utils.collator import IGNORE_INDEX, WhisperCollator
from utils.data import Record, Segment, load_manifest
from utils.languages import optional_language_code as language_code
from utils.train_data import LabelTokens, SpeechDataset, build_labels, log_mel_features, nospeech_targets


@pytest.fixture(scope="module")
def processor(tiny_whisper_dir):
    from transformers import WhisperProcessor

    return WhisperProcessor.from_pretrained(tiny_whisper_dir)


@pytest.fixture(scope="module")
def tokens(processor) -> LabelTokens:
    return LabelTokens.from_tokenizer(processor.tokenizer)


def _encode(processor):
    return lambda text: processor.tokenizer.encode(text, add_special_tokens=False)


def _collator(tokens: LabelTokens) -> WhisperCollator:
    return WhisperCollator(decoder_start_token_id=tokens.start_of_transcript, pad_token_id=tokens.end_of_text)


def test_bos_is_not_the_start_token(processor, tokens, tiny_whisper_dir):
    """The classic bug checks bos_token_id; for Whisper that is <|endoftext|>, not <|startoftranscript|>."""
    from transformers import WhisperConfig

    config = WhisperConfig.from_pretrained(tiny_whisper_dir)
    assert config.decoder_start_token_id == tokens.start_of_transcript
    assert processor.tokenizer.bos_token_id != tokens.start_of_transcript


def test_speech_labels_and_decoder_inputs(processor, tokens):
    rec = Record(audio_path="a.wav", sentence="今天天气很好", duration=2.0, language="Chinese")
    labels = build_labels(rec, _encode(processor), tokens, language=None, task="transcribe", timestamps=False)
    assert labels[:3] == [tokens.languages["zh"], tokens.tasks["transcribe"], tokens.no_timestamps]
    assert labels[-1] == tokens.end_of_text
    assert tokens.start_of_transcript not in labels
    assert processor.tokenizer.decode(labels, skip_special_tokens=True) == "今天天气很好"

    short = build_labels(Record("b.wav", "好", 1.0), _encode(processor), tokens, language="zh", task="translate",
                         timestamps=False)
    batch = _collator(tokens)([{"input_features": np.zeros((80, 3000), np.float32), "labels": labels},
                               {"input_features": np.ones((80, 3000), np.float32), "labels": short}])
    dec, lab = batch["decoder_input_ids"], batch["labels"]
    assert batch["input_features"].shape == (2, 80, 3000)
    assert dec.shape == lab.shape == (2, len(labels))
    # <|startoftranscript|> exactly once per row, first
    assert (dec[:, 0] == tokens.start_of_transcript).all()
    assert ((dec == tokens.start_of_transcript).sum(dim=1) == 1).all()
    # decoder input = labels shifted right
    assert dec[0, 1:].tolist() == labels[:-1]
    assert lab[0].tolist() == labels
    # padding of the short row is -100 in labels
    assert lab[1, len(short):].eq(IGNORE_INDEX).all()
    assert lab[1, : len(short)].tolist() == short
    assert short[1] == tokens.tasks["translate"]


def test_tokenizer_output_with_start_token_is_not_doubled(processor, tokens):
    """Labels that come straight from the tokenizer (with prefix tokens) keep one start token."""
    tok = processor.tokenizer
    tok.set_prefix_tokens(language="chinese", task="transcribe", predict_timestamps=False)
    ids = tok("你好").input_ids
    assert ids[0] == tokens.start_of_transcript
    batch = _collator(tokens)([{"input_features": np.zeros((80, 3000), np.float32), "labels": ids}])
    assert batch["labels"][0].tolist() == ids[1:]
    assert (batch["decoder_input_ids"][0] == tokens.start_of_transcript).sum() == 1


def test_nospeech_item_is_a_no_caption_target(processor, tokens):
    rec = Record(audio_path="n.wav", sentence="  ", duration=2.0, language="Chinese")
    labels = build_labels(rec, _encode(processor), tokens, language="zh", task="transcribe", timestamps=True)
    # decoder input: the forced-language prompt (what inference feeds once the no-speech probability is low)
    assert labels == [tokens.languages["zh"], tokens.tasks["transcribe"], tokens.no_timestamps, tokens.end_of_text]
    targets = nospeech_targets(labels, tokens)
    assert targets == [tokens.no_speech, IGNORE_INDEX, IGNORE_INDEX, tokens.end_of_text]
    assert processor.tokenizer.convert_ids_to_tokens(targets[0]) in ("<|nospeech|>", "<|nocaptions|>")
    batch = _collator(tokens)([{"input_features": np.zeros((80, 3000), np.float32), "labels": labels,
                                "targets": targets}])
    # <|startoftranscript|> → <|nospeech|>; <|zh|>, <|transcribe|> → no loss; <|notimestamps|> → <|endoftext|>
    assert batch["decoder_input_ids"][0].tolist() == [tokens.start_of_transcript, *labels[:-1]]
    assert batch["labels"][0].tolist() == targets
    # run language (auto) and English-only tokenizers
    auto = build_labels(rec.__class__("n.wav", "", 2.0), _encode(processor), tokens, language=None,
                        task="transcribe", timestamps=False)
    assert auto == [tokens.tasks["transcribe"], tokens.no_timestamps, tokens.end_of_text]
    assert nospeech_targets(auto, tokens) == [tokens.no_speech, IGNORE_INDEX, tokens.end_of_text]
    english = dataclasses.replace(tokens, multilingual=False)
    only = build_labels(rec, _encode(processor), english, language="zh", task="transcribe", timestamps=False)
    assert only == [tokens.no_timestamps, tokens.end_of_text]
    assert nospeech_targets(only, english) == [tokens.no_speech, tokens.end_of_text]
    with pytest.raises(ValueError, match="differ in length"):
        _collator(tokens)([{"input_features": np.zeros((80, 3000), np.float32), "labels": labels,
                            "targets": targets[:2]}])


def test_timestamp_labels_and_items_without_sentences(processor, tokens):
    segs = (Segment(0.0, 1.4, "你好"), Segment(1.5, 3.0, "再见"))
    rec = Record("t.wav", "你好再见", 3.5, language="Chinese", sentences=segs)
    labels = build_labels(rec, _encode(processor), tokens, language=None, task="transcribe", timestamps=True)
    assert tokens.no_timestamps not in labels
    toks = processor.tokenizer.convert_ids_to_tokens(labels)
    assert toks[2] == "<|0.00|>" and "<|1.40|>" in toks and "<|1.50|>" in toks and toks[-2] == "<|3.00|>"
    plain = Record("p.wav", "你好", 1.0, language="Chinese")
    labels = build_labels(plain, _encode(processor), tokens, language=None, task="transcribe", timestamps=True)
    assert labels[2] == tokens.no_timestamps
    # speed perturbation scales the timestamps
    fast = build_labels(rec, _encode(processor), tokens, language=None, task="transcribe", timestamps=True,
                        time_scale=0.5)
    assert processor.tokenizer.convert_ids_to_tokens(fast)[-2] == "<|1.50|>"


def test_language_resolution(processor, tokens):
    assert language_code("Chinese") == language_code("zh") == "zh"
    assert language_code(None) is None
    with pytest.raises(ValueError, match="unknown language 'Klingon'"):
        language_code("Klingon")
    rec = Record("a.wav", "hello", 1.0, language="English")
    assert build_labels(rec, _encode(processor), tokens, language="zh", task="transcribe",
                        timestamps=False)[0] == tokens.languages["en"]  # item language wins
    auto = Record("a.wav", "hello", 1.0)
    assert build_labels(auto, _encode(processor), tokens, language=None, task="transcribe",
                        timestamps=False)[0] == tokens.tasks["transcribe"]  # multilingual: no language token


def test_log_mel_matches_feature_extractor(processor, zh_wav):
    from utils.audio import load_audio

    fe = processor.feature_extractor
    speech = load_audio(zh_wav)
    rng = np.random.default_rng(0)
    for samples in (speech, speech[:17], rng.standard_normal(16000 * 31).astype(np.float32) * 0.1):
        ref = fe(samples, sampling_rate=16000, return_tensors="np").input_features[0]
        ours = log_mel_features(samples, fe.mel_filters)
        assert ours.shape == ref.shape == (80, 3000)
        np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_dataset_items(processor, zh_wav, tmp_path):
    lines = [{"audio": {"path": str(zh_wav)}, "sentence": "今天天气很好", "language": "Chinese", "duration": 3.0},
             {"audio": {"path": str(zh_wav)}, "sentence": "", "duration": 3.0}]
    manifest = tmp_path / "m.json"
    manifest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    ds = SpeechDataset(load_manifest(manifest), processor.feature_extractor, processor.tokenizer, language="Chinese")
    a, b = ds[0], ds[1]
    assert a["input_features"].shape == (80, 3000) and a["input_features"].dtype == np.float32
    assert a["labels"][0] == ds.tokens.languages["zh"]
    assert b["targets"] == [ds.tokens.no_speech, IGNORE_INDEX, IGNORE_INDEX, ds.tokens.end_of_text]
    assert "targets" not in a
    batch = _collator(ds.tokens)([a, b])
    assert batch["labels"][1, :4].tolist() == b["targets"]
    assert batch["index"].tolist() == [0, 1]
    assert isinstance(batch["labels"], torch.Tensor) and batch["labels"].dtype == torch.long


def test_collator_rejects_empty_labels(tokens):
    with pytest.raises(ValueError, match="empty"):
        _collator(tokens)([{"input_features": np.zeros((80, 3000), np.float32),
                            "labels": [tokens.start_of_transcript]}])


def test_long_labels_rejected_at_load_with_line(processor, zh_wav, tmp_path):
    lines = [{"audio": {"path": str(zh_wav)}, "sentence": "好", "duration": 3.0},
             {"audio": {"path": str(zh_wav)}, "sentence": "今天天气很好" * 300, "duration": 3.0}]
    manifest = tmp_path / "long.json"
    manifest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    from utils.data import ManifestError

    with pytest.raises(ManifestError, match=r"long\.json:2: .*448"):
        load_manifest(manifest, encode=_encode(processor))


@pytest.mark.parametrize("model, multilingual", [("openai/whisper-tiny.en", False), ("openai/whisper-base", True)])
def test_labels_start_with_the_prompt_the_model_is_decoded_with(model, multilingual):
    """Training labels begin with the decoder prompt both inference backends use (faster-whisper's tokenizer,
    which the ct2 backend calls): English-only models get <|startoftranscript|> <|notimestamps|> only, even
    when the run's --language is Chinese."""
    from faster_whisper.tokenizer import Tokenizer
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import WhisperTokenizer

    from utils.models import resolve_model

    folder = resolve_model(model)
    tokenizer = WhisperTokenizer.from_pretrained(folder)
    tokens = LabelTokens.from_tokenizer(tokenizer)
    assert tokens.multilingual is multilingual
    record = Record(audio_path="a.wav", sentence="hello there", duration=1.0, language=None)
    labels = build_labels(record, lambda t: tokenizer.encode(t, add_special_tokens=False), tokens,
                          language="zh", task="transcribe", timestamps=False)
    inference = Tokenizer(HFTokenizer.from_file(str(Path(folder) / "tokenizer.json")), multilingual,
                          task="transcribe", language="zh" if multilingual else "en")
    prompt = list(inference.sot_sequence) + [inference.no_timestamps]
    assert [tokens.start_of_transcript] + labels[: len(prompt) - 1] == prompt
    assert tokens.prompt("zh", "transcribe") == prompt
    assert labels[len(prompt) - 1:] == tokenizer.encode("hello there", add_special_tokens=False) + [tokens.end_of_text]


# -- previous-text prompts (--prompt_prob) --------------------------------------------------------------------
def test_prompted_item_puts_the_prompt_before_the_start_token_and_gives_it_no_loss(processor, tokens):
    sot_prev = processor.tokenizer.convert_tokens_to_ids("<|startofprev|>")
    collate = WhisperCollator(decoder_start_token_id=tokens.start_of_transcript, pad_token_id=tokens.end_of_text,
                              prompt_start_token_id=sot_prev)
    labels = [tokens.languages["zh"], tokens.tasks["transcribe"], tokens.no_timestamps, 11, 12, tokens.end_of_text]
    batch = collate([{"input_features": np.zeros((80, 3000), np.float32), "labels": labels, "prompt": [7, 8]},
                     {"input_features": np.zeros((80, 3000), np.float32), "labels": labels}])
    inputs, targets = batch["decoder_input_ids"].tolist(), batch["labels"].tolist()
    assert inputs[0] == [sot_prev, 7, 8, tokens.start_of_transcript, *labels[:-1]]
    assert targets[0] == [IGNORE_INDEX] * 3 + labels  # the prompt and <|startofprev|> are never targets
    assert inputs[1][:len(labels)] == [tokens.start_of_transcript, *labels[:-1]]
    assert targets[1] == labels + [IGNORE_INDEX] * 3
    with pytest.raises(ValueError, match="prompt_start_token_id"):
        _collator(tokens)([{"input_features": np.zeros((80, 3000), np.float32), "labels": labels, "prompt": [7]}])


def test_prompts_come_from_the_preceding_sentence_of_the_recording_else_from_hotwords(processor, zh_wav, tmp_path):
    from utils.train_data import hotword_candidates, previous_sentences, sample_hotwords

    lines = [{"audio": {"path": str(zh_wav), "start_time": t, "end_time": t + 1.0}, "sentence": s, "duration": 1.0}
             for t, s in ((2.0, "第二句"), (0.0, "第一句话"), (4.0, "第三句"))]
    lines.append({"audio": {"path": str(zh_wav)}, "sentence": "今天天气很好，我们去公园散步", "duration": 3.0})
    manifest = tmp_path / "m.json"
    manifest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    m = load_manifest(manifest)
    assert previous_sentences(m) == {0: "第一句话", 2: "第二句"}
    repeated = tmp_path / "repeated.json"  # line 2 again: its prompt is still the sentence before it, not itself
    repeated.write_text(manifest.read_text(encoding="utf-8") + json.dumps(lines[0], ensure_ascii=False) + "\n",
                        encoding="utf-8")
    assert previous_sentences(load_manifest(repeated)) == {0: "第一句话", 2: "第二句", 4: "第一句话"}
    ds = SpeechDataset(m, processor.feature_extractor, processor.tokenizer, language="Chinese", prompt_prob=1.0)
    decode = processor.tokenizer.decode
    assert decode(ds[0]["prompt"]).strip() == "第一句话" and decode(ds[2]["prompt"]).strip() == "第二句"
    others = "".join(x["sentence"] for x in lines[:3])
    own_seen = absent_seen = 0
    for epoch in range(12):  # hotwords: whole words of the item's text, sometimes with absent words of another item
        ds.set_epoch(epoch)
        hotwords = decode(ds[3]["prompt"]).strip().split(",")
        own = [w for w in hotwords if w in lines[3]["sentence"]]
        absent = [w for w in hotwords if w not in lines[3]["sentence"]]
        assert own and all(w in others for w in absent), hotwords
        assert all(w in {"今天", "天气", "我们", "公园", "散步"} for w in own), hotwords  # words, not character spans
        own_seen, absent_seen = own_seen + 1, absent_seen + bool(absent)
    assert 0 < absent_seen < own_seen
    assert "prompt" not in SpeechDataset(m, processor.feature_extractor, processor.tokenizer, language="Chinese")[0]
    rng = np.random.default_rng(0)
    english = sample_hotwords("please call Szymanski back", rng)
    assert all(w in "please call Szymanski back".split() for w in english.split(", "))  # as decoding joins them
    assert "," not in english.replace(", ", "")
    assert hotword_candidates("这本词典对学习很有帮助。") == ["词典", "学习", "帮助"]
    assert hotword_candidates("지하철 이호선 어디서 갈아타요?") == ["지하철", "이호선", "어디서", "갈아타요"]  # spaced
    mixed = sample_hotwords("地铁二号线在哪里换乘？", rng, other="这本词典对学习很有帮助。地铁很快。").split(",")
    own = [w for w in mixed if w in ("地铁", "哪里")]
    absent = [w for w in mixed if w not in own]  # 地铁 of the other text is in this one: never a distractor
    assert own and absent and set(absent) <= {"词典", "学习", "帮助", "很快"}, mixed
    with pytest.raises(ValueError, match="prompt_prob"):
        SpeechDataset(m, processor.feature_extractor, processor.tokenizer, language="Chinese", prompt_prob=2.0)


def test_packed_windows_hold_every_clip_once_with_joined_labels_and_clip_times(processor, tokens):
    """--pack_audio: the demo clips packed into windows of at most 28 s, one language each, no-speech clips alone;
    a window's audio is its clips joined by 0.3 s of silence, its label their texts in order and, with timestamps,
    one segment per clip at the clip's place in the window."""
    from utils.audio import load_audio
    from utils.train_data import PackedSpeechDataset

    repo = Path(__file__).resolve().parent.parent
    m = load_manifest(repo / "dataset" / "demo" / "train.json")
    ds = SpeechDataset(m, processor.feature_extractor, processor.tokenizer, language="Chinese", timestamps=True)
    packed = PackedSpeechDataset(ds)
    members = sorted(i for p in packed.packs for i in p)
    assert members == list(range(len(m)))  # every clip once
    assert len(packed) < len(m) / 3  # short clips: several per window
    assert any(len(p) == 1 for p in packed.packs)  # some windows stay a single clip
    for p in packed.packs:
        assert sum(m.durations[i] for i in p) + 0.3 * (len(p) - 1) <= 28.0 + 1e-3
    index = next(k for k, p in enumerate(packed.packs) if len(p) >= 3)
    item = packed[index]
    clips = [load_audio(m[i].audio_path) for i in packed.packs[index]]
    gap = np.zeros(int(0.3 * 16000), np.float32)
    audio = np.concatenate([x for c in clips for x in (c, gap)][:-1])
    fe = processor.feature_extractor
    assert np.allclose(item["input_features"], log_mel_features(audio, fe.mel_filters, n_fft=fe.n_fft,
                                                                hop_length=fe.hop_length, n_samples=fe.n_samples))
    labels = item["labels"]
    assert labels[:2] == [tokens.languages["zh"], tokens.tasks["transcribe"]] and labels[-1] == tokens.end_of_text
    times = [t for t in labels if t >= tokens.timestamp_begin]
    assert len(times) == 2 * len(clips)  # one segment per clip
    starts = [0.0]
    for c in clips[:-1]:
        starts.append(starts[-1] + (len(c) + len(gap)) / 16000)
    assert [round((t - tokens.timestamp_begin) * 0.02, 2) for t in times[::2]] == \
        [round(round(s / 0.02) * 0.02, 2) for s in starts]
    text = processor.tokenizer.decode([t for t in labels if t < tokens.timestamp_begin], skip_special_tokens=True)
    assert text == "".join(m[i].sentence for i in packed.packs[index])
    assert item["index"] == index and "prompt" not in item
    assert PackedSpeechDataset(ds).packs == packed.packs  # the same seed packs the same way


def test_a_clip_slowed_past_its_window_is_read_at_its_own_speed_not_left_out(processor):
    """Packs are planned by 'duration'; speed augmentation (the bundled config: 0.9-1.1) then slowed a window's clips
    past 30 s, and the clip that no longer fitted and every clip after it sat the epoch out, without a word (8 of the
    263 demo clips an epoch at 0.9). Such a clip is read at its own speed; every clip of every window is trained."""
    from utils.augment import Augmenter, _speed
    from utils.train_data import PackedSpeechDataset

    repo = Path(__file__).resolve().parent.parent
    m = load_manifest(repo / "dataset" / "demo" / "train.json")
    slow = Augmenter(steps=[("speed", 1.0, {"min_speed_rate": 0.8, "max_speed_rate": 0.8, "num_rates": 1}, _speed)])
    ds = SpeechDataset(m, processor.feature_extractor, processor.tokenizer, language="Chinese", augmenter=slow)
    packed = PackedSpeechDataset(ds)
    full = [k for k, p in enumerate(packed.packs) if sum(m.durations[i] for i in p) + 0.3 * (len(p) - 1) > 25.0]
    assert len(full) >= 3
    for k in full[:3]:
        item = packed[k]
        assert item["clips"] == len(packed.packs[k])
        text = processor.tokenizer.decode(item["labels"], skip_special_tokens=True)
        assert text == "".join(m[i].sentence for i in packed.packs[k])


def test_a_window_of_clips_with_many_timed_segments_stays_within_the_decoders_positions(processor, zh_wav,
                                                                                       tmp_path):
    """Packing counted a clip as one segment; in a timestamps run its label is each of its 'sentences' with two
    timestamps: 9 clips of 12 timed segments made a 561-token label, past the decoder's 448 positions, and training
    stopped with an IndexError."""
    from utils.train_data import PackedSpeechDataset

    seconds = min(sf.info(str(zh_wav)).duration, 3.0)  # a window holds 9 of them
    text = "今天天气很好我们去公园散步吧这本书非常有意思"  # 22 characters, each a timed segment of its own
    step = seconds / len(text)
    lines = [{"audio": {"path": str(zh_wav), "end_time": seconds}, "sentence": text, "language": "Chinese",
              "duration": seconds, "sentences": [{"start": round(k * step, 2), "end": round((k + 1) * step, 2),
                                                  "text": ch} for k, ch in enumerate(text)]} for _ in range(12)]
    manifest = tmp_path / "m.json"
    manifest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    packed = PackedSpeechDataset(SpeechDataset(load_manifest(manifest), processor.feature_extractor,
                                               processor.tokenizer, language="Chinese", timestamps=True))
    assert sorted(i for p in packed.packs for i in p) == list(range(12))
    assert max(len(packed[k]["labels"]) for k in range(len(packed))) <= 448


def test_packs_keep_one_language_and_no_speech_clips_alone(processor, zh_wav, en_wav, tmp_path):
    from utils.train_data import PackedSpeechDataset

    lines = [{"audio": {"path": str(zh_wav)}, "sentence": f"第{i}句", "language": "Chinese", "duration": 3.0}
             for i in range(4)]
    lines += [{"audio": {"path": str(en_wav)}, "sentence": f"line {i}", "language": "English", "duration": 3.0}
              for i in range(3)]
    lines += [{"audio": {"path": str(zh_wav)}, "sentence": "", "duration": 3.0}]
    lines += [{"audio": {"path": str(en_wav)}, "sentence": f"문장 {i}", "language": "Korean", "duration": 3.0}
              for i in range(4)]
    manifest = tmp_path / "m.json"
    manifest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    m = load_manifest(manifest)
    packed = PackedSpeechDataset(SpeechDataset(m, processor.feature_extractor, processor.tokenizer, language=None))
    assert sorted(i for p in packed.packs for i in p) == list(range(12))
    assert [7] in packed.packs  # the no-speech clip
    for p in packed.packs:
        assert len({lines[i].get("language") for i in p}) == 1, p
    english = next(p for p in packed.packs if len(p) > 1 and lines[p[0]]["language"] == "English")
    item = packed[packed.packs.index(english)]
    text = processor.tokenizer.decode(item["labels"], skip_special_tokens=True)
    assert text == " ".join(lines[i]["sentence"] for i in english)  # spaced languages joined with a space
    # Korean spaces its words too (Hangul was taken for a script without spaces)
    korean = next(p for p in packed.packs if len(p) > 1 and lines[p[0]].get("language") == "Korean")
    text = processor.tokenizer.decode(packed[packed.packs.index(korean)]["labels"], skip_special_tokens=True)
    assert text == " ".join(lines[i]["sentence"] for i in korean)


def test_a_pack_of_chinese_lines_keeps_the_spaces_around_an_english_one(processor, zh_wav, tmp_path):
    """Code-switching corpora label English-only lines Chinese: a window holding Chinese text joined every clip
    without a space ("…太高了。Deploy it nowCheck the logs请用…")."""
    from utils.train_data import PackedSpeechDataset

    sentences = ["这个 API 的 latency 太高了。", "Deploy it now", "Check the logs", "请用 Python 写一个脚本。",
                 "Restart the pod", "好的"]
    seconds = sf.info(str(zh_wav)).duration
    lines = [{"audio": {"path": str(zh_wav)}, "sentence": s, "language": "Chinese", "duration": seconds}
             for s in sentences * 2]
    manifest = tmp_path / "m.json"
    manifest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    m = load_manifest(manifest)
    packed = PackedSpeechDataset(SpeechDataset(m, processor.feature_extractor, processor.tokenizer,
                                               language="Chinese"))
    english = [t for t in sentences if t.isascii()]
    glued = 0
    for k, pack in enumerate(packed.packs):
        if len(pack) < 2:
            continue
        text = processor.tokenizer.decode(packed[k]["labels"], skip_special_tokens=True)
        said = [lines[i]["sentence"] for i in pack]
        for a, b in zip(said, said[1:]):  # an English line is spaced from the text on either side (not after "。")
            joint = a + (" " if (a in english or b in english) and not a.endswith("。") else "") + b
            assert joint in text, (joint, text)
            glued += a in english or b in english
    assert glued  # the seed put an English line beside another clip


def test_a_wrong_duration_is_said_once_a_line_and_not_again_after_the_load_check(processor, zh_wav, tmp_path,
                                                                                   caplog):
    """A wrong 'duration' was warned at every read of the clip (five times in a 2-step run), after the check at load
    had named it: now once a line, and only for files whose header that check cannot read (m4a, video)."""
    import subprocess

    import utils.train_data as td

    m4a = tmp_path / "clip.m4a"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(zh_wav), str(m4a)], check=True)
    lines = [{"audio": {"path": str(path)}, "sentence": "今天天气很好", "duration": 9.0} for path in (zh_wav, m4a)]
    manifest = tmp_path / "m.json"
    manifest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    td._MISMATCHED.clear()
    ds = SpeechDataset(load_manifest(manifest), processor.feature_extractor, processor.tokenizer, language="zh")
    with caplog.at_level("WARNING", logger="utils.train_data"):
        for _ in range(3):
            ds[0], ds[1]
    said = [r.getMessage() for r in caplog.records if "'duration' says 9.00 s" in r.getMessage()]
    assert len(said) == 1 and f"{manifest}:2: the audio is" in said[0], said


def test_one_language_spelt_two_ways_packs_together(processor, zh_wav, tmp_path):
    """"zh", "Chinese" and a line without a language under --language=zh were three groups: their clips never
    shared a window (6 clips of 3 languages-as-written took 5 windows)."""
    from utils.train_data import PackedSpeechDataset

    spellings = ["zh", "Chinese", None] * 4
    lines = [{"audio": {"path": str(zh_wav)}, "sentence": f"第{i}句", "duration": 2.0,
              **({"language": lang} if lang else {})} for i, lang in enumerate(spellings)]
    manifest = tmp_path / "m.json"
    manifest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    packed = PackedSpeechDataset(SpeechDataset(load_manifest(manifest), processor.feature_extractor,
                                               processor.tokenizer, language="zh"))
    assert sorted(i for p in packed.packs for i in p) == list(range(12))
    assert any(len({spellings[i] for i in p}) > 1 for p in packed.packs), packed.packs
    assert len(packed.packs) < 6


def test_windows_hold_at_most_a_batch_of_clips_so_small_batches_take_their_size(processor):
    """A window holds at most ``max_clips`` clips (finetune.py: ``window_clip_limit`` of the per-device batch), so
    several processes or accumulated micro-batches of 2 clips each take about 2 clips, not a whole window of ~6: the
    clips per step are what the batch size says whatever the split. Without the cap a batch of 2 took ~6 clips on
    the demo data."""
    from utils.train_data import ClipBatches, PackedSpeechDataset, window_clip_limit

    repo = Path(__file__).resolve().parent.parent
    m = load_manifest(repo / "dataset" / "demo" / "train.json")
    ds = SpeechDataset(m, processor.feature_extractor, processor.tokenizer, language="Chinese")
    assert max(PackedSpeechDataset(ds).clip_counts()) > 4  # the demo windows hold more than a small batch
    assert [window_clip_limit(b) for b in (1, 2, 3, 4, 8, 16)] == [1, 2, 3, 5, 10, 20]
    for batch in (1, 2, 4, 6):
        packed = PackedSpeechDataset(ds, max_clips=window_clip_limit(batch))
        assert sorted(i for p in packed.packs for i in p) == list(range(len(m)))  # every clip once
        assert max(packed.clip_counts()) <= window_clip_limit(batch)
        batches = ClipBatches(packed, packed.clip_counts(), batch_clips=batch, seed=3)
        mean = sum(batches.clips_per_group) / len(batches)
        assert batch * 0.75 <= mean <= batch * 1.25, (batch, mean)
    assert PackedSpeechDataset(ds, max_clips=1).clip_counts() == [1] * len(m)
    with pytest.raises(ValueError, match="max_clips"):
        PackedSpeechDataset(ds, max_clips=0)


def test_data_layout_tells_apart_every_way_of_cutting_the_data(processor, tmp_path):
    """A checkpoint's data layout (what a resumed run compares): the same for the same data and arguments, different
    for other packing, another batch of windows or other clips of the same count."""
    from utils.train_data import ClipBatches, PackedSpeechDataset, data_layout, window_clip_limit

    repo = Path(__file__).resolve().parent.parent
    lines = (repo / "dataset" / "demo" / "train.json").read_text(encoding="utf-8").splitlines()
    (tmp_path / "audio").symlink_to(repo / "dataset" / "demo" / "audio")  # the manifest's relative audio paths

    def dataset(text_lines: list[str]) -> SpeechDataset:
        path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.json"
        path.write_text("\n".join(text_lines) + "\n", encoding="utf-8")
        return SpeechDataset(load_manifest(path), processor.feature_extractor, processor.tokenizer,
                             language="Chinese")

    def batched(ds: SpeechDataset, batch: int) -> ClipBatches:
        packed = PackedSpeechDataset(ds, max_clips=window_clip_limit(batch))
        return ClipBatches(packed, packed.clip_counts(), batch_clips=batch)

    ds = dataset(lines)
    plain = data_layout(ds)
    assert plain == data_layout(dataset(lines)) and plain[1] == f"{len(lines)} clips"
    others = [data_layout(dataset(lines[1:] + lines[:1])), data_layout(batched(ds, 8)), data_layout(batched(ds, 4))]
    assert data_layout(batched(ds, 8)) == others[1]  # packing is seeded: the same arguments, the same layout
    assert len({plain[0], *(o[0] for o in others)}) == 4, others
    assert others[1][1].startswith(f"{len(lines)} clips in ") and others[1][1].endswith(" batches")


def test_clip_batches_count_clips_not_windows(processor, tokens):
    """--pack_audio batches count clips: each batch is the packed windows whose clip count is nearest the batch
    size, every window in exactly one batch, the same for the same seed; the collator flattens a batch item."""
    from utils.train_data import ClipBatches, PackedSpeechDataset

    repo = Path(__file__).resolve().parent.parent
    m = load_manifest(repo / "dataset" / "demo" / "train.json")
    packed = PackedSpeechDataset(SpeechDataset(m, processor.feature_extractor, processor.tokenizer,
                                               language="Chinese"))
    counts = packed.clip_counts()
    for batch_clips in (1, 8, 16):
        batches = ClipBatches(packed, counts, batch_clips=batch_clips, seed=3)
        assert sorted(i for g in batches.groups for i in g) == list(range(len(packed)))  # every window once
        for group, clips in zip(batches.groups, batches.clips_per_group):
            assert clips == sum(counts[i] for i in group)
            if len(group) > 1:  # a window is added only while it brings the count nearer the batch size
                assert abs(clips - batch_clips) < abs(clips - counts[group[-1]] - batch_clips)
        mean = sum(batches.clips_per_group) / len(batches)
        assert abs(mean - batch_clips) <= max(counts) / 2 + 1 or batch_clips == 1
    one = ClipBatches(packed, counts, batch_clips=1, seed=3)
    assert len(one) == len(packed)  # a window never shares a batch when one clip is asked for
    eight = ClipBatches(packed, counts, batch_clips=8, seed=3)
    assert eight.groups == ClipBatches(packed, counts, batch_clips=8, seed=3).groups
    assert len(eight) < len(packed)  # demo windows hold ~6.6 clips: some batches take 2 windows
    group = max(eight.groups, key=len)
    batch = _collator(tokens)([eight[eight.groups.index(group)]])  # the trainer's loader: one group per batch
    assert batch["input_features"].shape[0] == len(group)
    assert batch["index"].tolist() == group and int(batch["clips"]) == sum(counts[i] for i in group)
    with pytest.raises(ValueError, match="clip counts"):
        ClipBatches(packed, counts[:-1], batch_clips=8)
