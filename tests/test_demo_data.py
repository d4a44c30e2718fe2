"""The committed demo corpus in dataset/ and its generator tools/make_demo_data.py."""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from utils.audio import SAMPLE_RATE
from utils.data import load_manifest

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASET = REPO_ROOT / "dataset"
DEMO = DATASET / "demo"  # the corpus make_demo_data.py writes (dataset/ itself is where aishell.py writes)
SPLITS = ("train", "test")
MAX_DATASET_BYTES = 20_000_000  # the committed corpus stays under 20 MB
DURATION_TOLERANCE_S = 0.02
HANZI = re.compile(r"[\u4e00-\u9fff]")


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_demo_data", REPO_ROOT / "tools" / "make_demo_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            pytest.fail(f"{path}:{number}: not valid JSON ({e})")
    return records


def _spoken_texts(record: dict[str, Any]) -> list[str]:
    """The sentence-file sentences a record speaks: one, the segments of a two-sentence clip, or none."""
    if "sentences" in record:
        return [segment["text"] for segment in record["sentences"]]
    return [record["sentence"]] if record["sentence"] else []


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    return _load_tool()


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict[str, Any]]]:
    return {split: _read_manifest(DEMO / f"{split}.json") for split in SPLITS}


# --- the committed corpus -------------------------------------------------------------------------


def test_manifest_records_have_the_manifest_format(manifests):
    for split, records in manifests.items():
        assert records, f"{split}.json is empty"
        for number, record in enumerate(records, start=1):
            where = f"dataset/{split}.json:{number}"
            assert set(record) <= {"audio", "sentence", "language", "sentences", "duration"}, where
            assert set(record["audio"]) == {"path"}, where
            assert re.fullmatch(rf"audio/{split}_\d{{4}}\.flac", record["audio"]["path"]), where
            assert record["language"] == "Chinese", where
            assert isinstance(record["duration"], float) and record["duration"] == round(record["duration"], 2), where
            assert not re.search(r"[A-Za-z0-9]", record["sentence"]), f"{where}: numbers must be written in Hanzi"


def test_split_sizes(manifests):
    assert 240 <= len(manifests["train"]) <= 300
    assert 35 <= len(manifests["test"]) <= 60
    names = [r["audio"]["path"] for records in manifests.values() for r in records]
    assert len(names) == len(set(names))


def test_audio_files_are_16khz_mono_16bit_flac_and_durations_match(manifests):
    for split, records in manifests.items():
        for number, record in enumerate(records, start=1):
            where = f"dataset/{split}.json:{number}"
            path = DEMO / record["audio"]["path"]
            assert path.is_file(), f"{where}: {path} missing"
            info = sf.info(path)
            assert (info.format, info.subtype) == ("FLAC", "PCM_16"), where
            assert (info.samplerate, info.channels) == (SAMPLE_RATE, 1), where
            assert abs(info.frames / info.samplerate - record["duration"]) <= DURATION_TOLERANCE_S, where


def test_no_audio_file_is_left_out_of_the_manifests(manifests):
    listed = {Path(r["audio"]["path"]).name for records in manifests.values() for r in records}
    assert {p.name for p in (DEMO / "audio").iterdir()} == listed


def test_manifests_load_with_the_toolkit_loader(manifests, monkeypatch):
    monkeypatch.chdir("/")  # the paths are relative to the manifest folder: any cwd works
    for split, records in manifests.items():
        manifest = load_manifest(DEMO / f"{split}.json", show_progress=False)
        assert len(manifest) == len(records)
        assert manifest[0].audio_path == str((DEMO / records[0]["audio"]["path"]).resolve())


def test_no_test_sentence_is_in_train(manifests):
    train = {text for r in manifests["train"] for text in _spoken_texts(r)}
    test = {text for r in manifests["test"] for text in _spoken_texts(r)}
    assert test and not train & test
    demo_sentence = (DATASET / "test.txt").read_text(encoding="utf-8").strip()
    assert demo_sentence not in train


def test_train_and_test_share_vocabulary(manifests):
    train_chars = {c for r in manifests["train"] for c in HANZI.findall(r["sentence"])}
    test_chars = [c for r in manifests["test"] for c in HANZI.findall(r["sentence"])]
    covered = sum(c in train_chars for c in test_chars) / len(test_chars)
    assert covered >= 0.9, f"only {covered:.0%} of the test Hanzi occur in train"


def test_every_spoken_sentence_comes_from_the_sentence_file(manifests, tool):
    known = {s.text for s in tool.load_sentences(tool.DEFAULT_SENTENCES)}
    spoken = [text for records in manifests.values() for r in records for text in _spoken_texts(r)]
    assert set(spoken) <= known
    assert len(spoken) == len(set(spoken)), "a sentence is spoken twice"


def test_committed_corpus_matches_the_generator_plan(manifests, tool):
    """The committed manifests are what the generator plans today (regenerate after editing either)."""
    args = tool.build_parser().parse_args([])
    rng = random.Random(args.seed)
    train, test = tool.split_sentences(tool.load_sentences(args.sentences), args.test_fraction, rng)
    plans = {
        "train": tool.plan_split("train", train, args.num_pairs_train, args.num_nospeech_train, rng),
        "test": tool.plan_split("test", test, args.num_pairs_test, args.num_nospeech_test, rng),
    }
    for split, records in manifests.items():
        assert [list(p.texts) for p in plans[split]] == [_spoken_texts(r) for r in records]


def test_nospeech_clips_exist_in_both_splits_and_are_quiet(manifests):
    for split, records in manifests.items():
        nospeech = [r for r in records if r["sentence"] == ""]
        assert nospeech, f"no no-speech clip in {split}"
        for record in nospeech:
            assert record["sentences"] == []
            samples, _ = sf.read(DEMO / record["audio"]["path"], dtype="float32")
            assert np.sqrt(np.mean(samples**2)) < 0.03


def test_speech_clips_are_audible(manifests):
    for split, records in manifests.items():
        for number, record in enumerate(records, start=1):
            if record["sentence"]:
                samples, _ = sf.read(DEMO / record["audio"]["path"], dtype="float32")
                assert np.sqrt(np.mean(samples**2)) > 0.02, f"dataset/{split}.json:{number}: too quiet"


def test_timestamped_clips_have_ordered_segments_inside_the_clip(manifests):
    timestamped = {split: [r for r in records if r.get("sentences")] for split, records in manifests.items()}
    assert len(timestamped["train"]) >= 20
    for records in timestamped.values():
        for record in records:
            segments = record["sentences"]
            assert len(segments) == 2
            assert "".join(s["text"] for s in segments) == record["sentence"]
            assert 0.0 <= segments[0]["start"] < segments[0]["end"] < segments[1]["start"] < segments[1]["end"]
            assert segments[1]["end"] <= record["duration"]


def test_speaking_rate_is_plausible(manifests, tool):
    """0.15-0.45 s per Hanzi: slower means espeak-ng spelled letters, faster means it dropped syllables."""
    for records in manifests.values():
        for record in records:
            if "sentences" in record:
                spans = [(s["end"] - s["start"], s["text"]) for s in record["sentences"]]
            elif record["sentence"]:
                spans = [(record["duration"] - 2 * tool.EDGE_PAD_S, record["sentence"])]
            else:
                continue
            for seconds, text in spans:
                assert 0.15 <= seconds / len(HANZI.findall(text)) <= 0.45, (record["audio"]["path"], text)


def test_corpus_stays_under_20_mb():
    aishell = [DATASET / name for name in ("audio", "train.json", "dev.json", "test.json")]  # aishell.py's output
    total = sum(p.stat().st_size for p in DATASET.rglob("*")
                if p.is_file() and not any(p == a or a in p.parents for a in aishell))
    assert total <= MAX_DATASET_BYTES, f"dataset/ holds {total / 1e6:.1f} MB"


@pytest.mark.parametrize("name", ["test", "test_en"])
def test_demo_wavs_are_16khz_mono_16bit_wav_with_their_text(name):
    info = sf.info(DATASET / f"{name}.wav")
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", SAMPLE_RATE, 1)
    text = (DATASET / f"{name}.txt").read_text(encoding="utf-8").strip()
    per_unit = info.duration / (len(HANZI.findall(text)) if name == "test" else len(text.split()))
    assert 0.15 <= per_unit <= 0.6
    if name == "test_en":
        assert text.isascii()


# --- the generator ------------------------------------------------------------------------------


def test_to_pinyin_writes_tone3_syllables_with_clause_breaks(tool):
    assert tool.to_pinyin("你好，我是学生。") == "ni3 hao3, wo3 shi4 xue2 sheng1."
    assert tool.to_pinyin("你好吗？") == "ni3 hao3 ma5."
    assert tool.to_pinyin("绿色的。") == "lv4 se4 de5."


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("我有3个苹果了。", "write numbers in Hanzi"),
        ("你好吗？", "3 Hanzi"),
        ("我每天早上七点起床。\n我每天早上七点起床。", "repeats line 2"),
    ],
)
def test_sentence_file_errors_name_the_file_and_line(tmp_path, tool, body, message):
    path = tmp_path / "sentences.txt"
    path.write_text(f"## topic\n{body}\n", encoding="utf-8")
    bad_line = 1 + len(body.splitlines())
    with pytest.raises(tool.DemoDataError, match=rf"{re.escape(str(path))}:{bad_line}: .*{re.escape(message)}"):
        tool.load_sentences(path)


def test_sentence_before_a_topic_is_an_error(tmp_path, tool):
    path = tmp_path / "sentences.txt"
    path.write_text("# comment\n我每天早上七点起床。\n", encoding="utf-8")
    with pytest.raises(tool.DemoDataError, match=r":2: sentence before the first '## topic' line"):
        tool.load_sentences(path)


def test_missing_espeak_fails_with_an_install_hint(tmp_path, tool, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))
    with caplog.at_level(logging.ERROR):
        assert tool.main(["--output_dir", str(tmp_path / "out"), "--limit", "1"]) == 1
    assert "'espeak-ng' not found on PATH" in caplog.text and "apt-get install espeak-ng" in caplog.text
    assert not (tmp_path / "out").exists()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_generator_is_deterministic_and_writes_a_valid_small_corpus(tmp_path, tool, capsys, monkeypatch):
    argv = ["--limit", "4", "--num_pairs_train", "1", "--num_pairs_test", "0", "--num_nospeech_train", "1",
            "--num_nospeech_test", "1"]
    runs = [tmp_path / "a" / "demo", tmp_path / "b" / "demo"]
    for out in runs:
        assert tool.main([*argv, "--output_dir", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    # train: one two-sentence clip + two single sentences + one no-speech clip; test: four sentences + one.
    assert (summary["train"]["clips"], summary["train"]["two_sentence_clips"], summary["train"]["nospeech_clips"]) == (
        4, 1, 1)
    assert (summary["test"]["clips"], summary["test"]["two_sentence_clips"], summary["test"]["nospeech_clips"]) == (
        5, 0, 1)
    assert 0.0 < summary["train"]["minutes"] < 1.0

    first, second = _files(runs[0]), _files(runs[1])
    assert first == second
    assert {"demo/train.json", "demo/test.json", "test.wav", "test.txt", "test_en.wav", "test_en.txt"} <= set(first)
    assert not [name for name in first if name.startswith(".staging")]
    monkeypatch.chdir("/")  # the paths are relative to the manifest's folder
    for split in SPLITS:
        records = _read_manifest(runs[0] / "demo" / f"{split}.json")
        for record in records:
            path = runs[0] / "demo" / record["audio"]["path"]
            assert record["audio"]["path"].startswith("audio/") and path.is_file()
            assert abs(sf.info(path).duration - record["duration"]) <= DURATION_TOLERANCE_S
        assert len(load_manifest(runs[0] / "demo" / f"{split}.json", show_progress=False)) == len(records)


def test_rerun_replaces_the_audio_folder(tmp_path, tool):
    out = tmp_path / "demo"
    assert tool.main(["--output_dir", str(out), "--limit", "3"]) == 0
    assert tool.main(["--output_dir", str(out), "--limit", "1", "--num_nospeech_train", "0"]) == 0
    listed = {Path(r["audio"]["path"]).name for split in SPLITS for r in _read_manifest(out / "demo" / f"{split}.json")}
    assert {p.name for p in (out / "demo" / "audio").iterdir()} == listed
    assert len(listed) == 1 + 1 + 2  # one sentence per split, two no-speech clips in test


@pytest.mark.parametrize("manifest", ["real_zh.json", "real_en.json"])
def test_real_recordings_are_listed_with_their_text_and_sources(manifest):
    """dataset/real/: every clip in its manifest is 16 kHz mono with text and a matching duration, and its README
    names where it came from and its license."""
    records = list(load_manifest(str(DATASET / "real" / manifest)))
    readme = (DATASET / "real" / "README.md").read_text(encoding="utf-8")
    assert len(records) >= 2
    for r in records:
        info = sf.info(r.audio_path)
        assert (info.samplerate, info.channels) == (16000, 1) and r.sentence.strip()
        assert abs(info.duration - r.duration) < 0.01
        name = Path(r.audio_path).name
        assert name in readme or name.rsplit("_", 1)[0] in readme, name


def test_the_forgetting_report_scores_real_english_by_default():
    """evaluation.py --compare's general set is the real English recordings (what a forgetting figure should be
    measured on), every clip English."""
    import evaluation

    assert Path(evaluation.DEFAULT_GENERAL_DATA) == Path("dataset/real/real_en.json")
    records = list(load_manifest(str(DATASET.parent / evaluation.DEFAULT_GENERAL_DATA)))
    assert len(records) >= 10 and all(r.language == "English" for r in records)
