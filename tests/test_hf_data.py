"""Hugging Face datasets as data (utils/hf_data.py): save_to_disk, audiofolder, parquet, streaming, hub errors,
and finetune.py / evaluation.py reading them. Every dataset is built here from the demo clips (no hub)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import datasets
import numpy as np
import pytest

import evaluation
import finetune
from tests.conftest import REPO_ROOT
from utils.audio import load_audio, load_record_audio
from utils.data import ManifestError, load_manifest
from utils.hf_data import DatasetError, DatasetOptions, is_manifest, iter_dataset_records, load_data



N_TRAIN, N_TEST = 6, 4


def _rows(manifest: str, n: int) -> list[tuple[str, str, float]]:
    """(absolute audio path, sentence, duration) of the first ``n`` items of a demo manifest."""
    records = list(load_manifest(REPO_ROOT / "dataset" / "demo" / manifest))[:n]
    return [(r.audio_path, r.sentence, r.duration) for r in records]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """The first demo clips as: a save_to_disk DatasetDict (Audio feature, bytes inside), an audiofolder with
    train/ (metadata.csv, column 'transcription') and test/ (metadata.jsonl), and parquet files of the test split."""
    d = tmp_path_factory.mktemp("hf")
    train, test = _rows("train.json", N_TRAIN), _rows("test.json", N_TEST)

    def split(rows):
        ds = datasets.Dataset.from_dict({"audio": [p for p, _, _ in rows], "sentence": [s for _, s, _ in rows],
                                         "client_id": [f"speaker{i}" for i in range(len(rows))]})
        return ds.cast_column("audio", datasets.Audio(sampling_rate=16000))

    dd = datasets.DatasetDict({"train": split(train), "test": split(test)})
    dd.save_to_disk(str(d / "saved"))
    folder = d / "audiofolder"
    for name, rows in (("train", train), ("test", test)):
        (folder / name).mkdir(parents=True)
        for p, _, _ in rows:
            shutil.copy(p, folder / name / os.path.basename(p))
    with open(folder / "train" / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "transcription"])
        w.writerows([os.path.basename(p), s] for p, s, _ in train)
    with open(folder / "test" / "metadata.jsonl", "w", encoding="utf-8") as f:
        for p, s, _ in test:
            f.write(json.dumps({"file_name": os.path.basename(p), "transcription": s}, ensure_ascii=False) + "\n")
    (d / "parquet").mkdir()
    dd["test"].to_parquet(str(d / "parquet" / "test-00000-of-00002.parquet"))
    dd["test"].to_parquet(str(d / "parquet" / "test-00001-of-00002.parquet"))
    dd["train"].to_parquet(str(d / "parquet" / "train-00000-of-00001.parquet"))
    return {"dir": d, "train": train, "test": test}


def test_manifest_or_dataset():
    assert is_manifest("dataset/train.json") and is_manifest("missing/test.jsonl")
    assert not is_manifest("mozilla-foundation/common_voice_17_0") and not is_manifest("data/*.parquet")
    assert not is_manifest(str(REPO_ROOT / "dataset"))


def test_save_to_disk_splits_give_the_manifests_records_and_audio(demo):
    for split, rows in (("train", demo["train"]), ("test", demo["test"])):
        source = load_data(str(demo["dir"] / "saved"), split=split, split_flag=f"--{split}_split")
        assert len(source) == len(rows)
        assert [r.sentence for r in source] == [s for _, s, _ in rows]
        assert np.allclose(source.durations, [t for _, _, t in rows], atol=0.01)
        for record, (path, _, _) in zip(source, rows):
            assert record.audio_bytes is not None  # the audio lives inside the dataset
            assert record.audio_path.endswith(os.path.basename(path))
            assert np.array_equal(load_record_audio(record), load_audio(path))
    assert source.location(1) == f"{demo['dir'] / 'saved'}[test]#1"


def test_a_missing_split_names_the_splits_and_the_flag(demo):
    with pytest.raises(DatasetError, match=r"no split 'validation' \(it has: train, test\); choose one with "
                                           r"--test_split"):
        load_data(str(demo["dir"] / "saved"), split="validation", split_flag="--test_split")


def test_audiofolder_splits_csv_and_jsonl(demo, tmp_path):
    folder = demo["dir"] / "audiofolder"
    train = load_data(str(folder), split="train", split_flag="--train_split")
    test = load_data(str(folder), split="test", split_flag="--test_split")
    assert [r.sentence for r in train] == [s for _, s, _ in demo["train"]]  # 'transcription' found by name
    assert [r.sentence for r in test] == [s for _, s, _ in demo["test"]]
    assert test[0].audio_bytes is None and os.path.isfile(test[0].audio_path)
    assert np.array_equal(load_record_audio(test[2]), load_audio(demo["test"][2][0]))
    # one metadata file for the whole folder: one split, used whatever the flag says
    single = tmp_path / "single"
    shutil.copytree(folder / "test", single)
    assert len(load_data(str(single), split="test", split_flag="--test_split")) == N_TEST
    # a row naming a file that is not there
    with open(single / "metadata.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"file_name": "gone.flac", "transcription": "x"}) + "\n")
    with pytest.raises(DatasetError, match=r"metadata.jsonl:5: audio file gone.flac not found"):
        load_data(str(single), split="test", split_flag="--test_split")


def test_parquet_file_glob_folder_and_stream_agree(demo):
    pq = demo["dir"] / "parquet"
    expected = [s for _, s, _ in demo["test"]]
    one = load_data(str(pq / "test-00000-of-00002.parquet"), split="test", split_flag="--test_split")
    assert [r.sentence for r in one] == expected
    both = load_data(str(pq / "test-*.parquet"), split="test", split_flag="--test_split")
    assert [r.sentence for r in both] == expected * 2
    folder = load_data(str(pq), split="test", split_flag="--test_split")  # splits from the file names
    assert [r.sentence for r in folder] == expected * 2
    assert len(load_data(str(pq), split="train", split_flag="--train_split")) == N_TRAIN
    streamed = list(iter_dataset_records(str(pq / "test-00000-of-00002.parquet"), split="test",
                                         split_flag="--test_split", options=DatasetOptions(streaming=True)))
    assert [r.sentence for r in streamed] == expected
    assert np.array_equal(load_record_audio(streamed[3]), load_record_audio(one[3]))
    assert [round(r.duration, 3) for r in streamed] == [round(float(t), 3) for t in one.durations]


def test_columns_are_found_named_or_refused(demo, tmp_path, caplog):
    saved = str(demo["dir"] / "saved")
    datasets.load_from_disk(saved)["test"].remove_columns(["sentence"]).save_to_disk(str(tmp_path / "no_text"))
    named = load_data(saved, split="test", split_flag="--test_split",
                      dataset=DatasetOptions(text_column="client_id"))
    assert [r.sentence for r in named] == [f"speaker{i}" for i in range(N_TEST)]
    # --text_column names the train, test and replay data's column alike: a source without it uses its own text
    # column, with a warning (following "name it with --text_column" could not work for both)
    with caplog.at_level("WARNING"):
        other = load_data(saved, split="test", split_flag="--test_split",
                          dataset=DatasetOptions(text_column="transcript"))
    assert [r.sentence for r in other] == [s for _, s, _ in demo["test"]]
    assert "no column transcript (--text_column); using its text column sentence" in caplog.text
    with pytest.raises(DatasetError, match=r"no text column transcript \(columns: audio, client_id\); "
                                           r"name it with --text_column"):
        load_data(str(tmp_path / "no_text"), split="test", split_flag="--test_split",
                  dataset=DatasetOptions(text_column="transcript"))
    with pytest.raises(DatasetError, match=r"no text column \(columns: audio, client_id\); name it with"):
        load_data(str(tmp_path / "no_text"), split="test", split_flag="--test_split")
    # a pyarrow traceback ("Field "audio" exists 2 times in schema") before
    with pytest.raises(DatasetError, match=r"--audio_column and --text_column both name 'audio'"):
        load_data(saved, split="test", split_flag="--test_split", dataset=DatasetOptions(text_column="audio"))
    with pytest.raises(DatasetError, match=r"#0: 'client_id' holds str, not an audio file|audio file not found"):
        load_data(saved, split="test", split_flag="--test_split", dataset=DatasetOptions(audio_column="client_id"))


def test_bad_rows_are_named_skipped_on_request_and_durations_bound(tmp_path, demo):
    import soundfile as sf

    rows = demo["test"]
    long_wav = tmp_path / "long.wav"  # 40 s: left out as longer than 30 s, by its 'duration' column
    sf.write(long_wav, np.zeros(40 * 16000, np.float32), 16000)
    durations = [round(t, 2) for _, _, t in rows[:3]] + [40.0]
    ds = datasets.Dataset.from_dict({"audio": [p for p, _, _ in rows[:3]] + [str(long_wav)],
                                     "text": ["好", None, "", "长"], "duration": durations})
    ds.save_to_disk(str(tmp_path / "one"))
    with pytest.raises(DatasetError, match=r"one#1: 'text' is None, not text"):
        load_data(str(tmp_path / "one"), split="test", split_flag="--test_split")
    # every invalid row named at once (one run per bad row before)
    texts = ["好", None, None, "长", None, "好", "好", "好"]
    ds3 = datasets.Dataset.from_dict({"audio": [p for p, _, _ in rows] * 2, "text": texts})
    ds3.save_to_disk(str(tmp_path / "three"))
    with pytest.raises(DatasetError) as e:
        load_data(str(tmp_path / "three"), split="test", split_flag="--test_split")
    lines = str(e.value).splitlines()
    assert lines[0] == f"{tmp_path / 'three'}: 3 invalid rows; fix them (or remove them):"
    assert [line.split(":")[0] for line in lines[1:]] == [f"{tmp_path / 'three'}#{i}" for i in (1, 2, 4)]
    kept = load_data(str(tmp_path / "one"), split="test", split_flag="--test_split", skip_invalid=True)
    # row 1 invalid, row 3 longer than 30 s (the 'duration' column is used, not the files' headers)
    assert list(kept.rows) == [0, 2] and list(kept.durations) == [durations[0], durations[2]]
    assert kept[1].is_nospeech
    with pytest.raises(DatasetError, match="no usable items"):
        load_data(str(tmp_path / "one"), split="test", split_flag="--test_split", skip_invalid=True,
                  min_duration=5.0)


@pytest.mark.parametrize("scale", [1000.0, 0.25, "floor"])
def test_a_duration_column_that_does_not_fit_the_audio_is_refused_when_opened(tmp_path, demo, scale):
    """The 'duration' column is trusted for every row (the headers are not read): one in milliseconds (every row
    then left out as too long: "no usable items"), or written before the audio was cut, was found only when training
    reached a clip, after the model had loaded. Whole seconds (rounded down) are a right column."""
    rows = demo["test"][:12]
    durations = [float(int(t)) if scale == "floor" else t * scale for _, _, t in rows]
    ds = datasets.Dataset.from_dict({"audio": [p for p, _, _ in rows], "text": [s for _, s, _ in rows],
                                     "duration": durations})
    ds.save_to_disk(str(tmp_path / "d"))
    if scale == "floor":
        assert len(load_data(str(tmp_path / "d"), split="test", split_flag="--test_split")) == len(rows)
        return
    units = r" \(milliseconds\?\)" if scale == 1000.0 else ""
    with pytest.raises(DatasetError, match=rf"d#\d+: the 'duration' column says .* s{units}, its audio holds .* "
                                           r"correct the column \(seconds\) or remove it"):
        load_data(str(tmp_path / "d"), split="test", split_flag="--test_split")


def test_labels_longer_than_whisper_allows_are_refused(demo, tiny_whisper_dir):
    from transformers import WhisperTokenizer

    tok = WhisperTokenizer.from_pretrained(tiny_whisper_dir)
    ds = datasets.Dataset.from_dict({"audio": [demo["test"][0][0]], "sentence": ["语音" * 400]})
    path = demo["dir"] / "long_label"
    ds.save_to_disk(str(path))
    with pytest.raises(DatasetError, match=r"long_label#0: 'sentence' is \d+ tokens .* more than Whisper's 448"):
        load_data(str(path), split="train", split_flag="--train_split",
                  encode=lambda t: tok.encode(t, add_special_tokens=False))


def test_what_is_not_a_dataset_and_an_unreachable_hub(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="a folder but not a dataset"):
        load_data(str(tmp_path / "empty"), split="train", split_flag="--train_split")
    with pytest.raises(DatasetError, match="no parquet file found"):
        load_data(str(tmp_path / "none-*.parquet"), split="train", split_flag="--train_split")
    with pytest.raises(ManifestError, match="manifest file not found"):
        load_data(str(tmp_path / "missing.json"), split="train", split_flag="--train_split")
    code = ("from utils.hf_data import load_data\n"
            "load_data('mozilla-foundation/common_voice_17_0', split='train', split_flag='--train_split')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode != 0
    assert "DatasetError: mozilla-foundation/common_voice_17_0: not a local file or folder, and the Hugging Face " \
           "hub cannot be reached" in proc.stderr
    assert "save_to_disk" in proc.stderr
    # --local_files_only reads the datasets cache only, at once (it waited ~25 s on the hub), as a model's does; a
    # name whose first folder exists here may be a mistyped local path: said
    import huggingface_hub.constants

    before = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    for name, hint in (("mozilla-foundation/common_voice_17_0", ""),
                       ("data/my_dataset", "; or a local path? data/ is a folder here, data/my_dataset is not")):
        with pytest.raises(DatasetError) as e:
            load_data(name, split="train", split_flag="--train_split", dataset=DatasetOptions(local_files_only=True))
        assert str(e.value) == (f"{name}: not a local file or folder, nor in the datasets cache, and "
                                "--local_files_only=True keeps the Hugging Face hub out; give a local dataset "
                                f"(save_to_disk folder, audiofolder, parquet, manifest){hint}")
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == before  # restored


def test_finetune_trains_on_a_dataset_folder_and_an_audiofolder(tiny_whisper_dir, demo, tmp_path, caplog):
    out = tmp_path / "out"
    caplog.set_level("INFO")
    rc = finetune.main([f"--base_model={tiny_whisper_dir}", f"--output_dir={out}",
                        f"--train_data={demo['dir'] / 'saved'}", f"--test_data={demo['dir'] / 'audiofolder'}",
                        "--language=Chinese", "--per_device_train_batch_size=2", "--per_device_eval_batch_size=4",
                        "--max_steps=3", "--warmup_steps=1", "--logging_steps=1", "--eval_steps=3", "--save_steps=3",
                        "--generation_max_length=4", "--num_workers=1", "--learning_rate=1e-3"])
    assert rc == 0
    assert f"train: {N_TRAIN} clips" in caplog.text and f"eval: {N_TEST} clips" in caplog.text
    state = json.loads((out / tiny_whisper_dir.name / "checkpoint-final" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert any("eval_cer" in e for e in state["log_history"])


def test_finetune_names_a_bad_dataset_before_loading_the_model(tiny_whisper_dir, demo, tmp_path, caplog):
    rc = finetune.main([f"--base_model={tiny_whisper_dir}", f"--output_dir={tmp_path / 'out'}",
                        f"--train_data={demo['dir'] / 'saved'}", "--train_split=validation",
                        f"--test_data={demo['dir'] / 'saved'}", "--max_steps=1"])
    assert rc != 0
    assert "no split 'validation' (it has: train, test); choose one with --train_split" in caplog.text
    assert not (tmp_path / "out").exists()


def test_evaluation_scores_a_dataset_like_the_manifest_streamed_or_not(tiny_whisper_dir, demo, tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_text("".join(json.dumps({"audio": {"path": p}, "sentence": s, "duration": t}, ensure_ascii=False)
                                + "\n" for p, s, t in demo["test"]), encoding="utf-8")
    common = ["--model_path", str(tiny_whisper_dir), "--device=cpu", "--batch_size=3", "--language=zh",
              "--fallback=False"]
    reports = {}
    for name, data, extra in (("manifest", manifest, []), ("saved", demo["dir"] / "saved", []),
                              ("stream", demo["dir"] / "parquet" / "test-00000-of-00002.parquet",
                               ["--streaming=True"])):
        out = tmp_path / f"{name}.json"
        assert evaluation.main([*common, f"--test_data={data}", f"--output={out}", *extra]) == 0, name
        reports[name] = json.loads(out.read_text(encoding="utf-8"))
    hyps = {name: sorted((u["reference"], u["hypothesis"]) for u in r["utterances"]) for name, r in reports.items()}
    assert hyps["saved"] == hyps["manifest"] and hyps["stream"] == hyps["manifest"]
    assert reports["saved"]["cer"] == reports["manifest"]["cer"] == reports["stream"]["cer"]
    assert reports["stream"]["utterances_scored"] == N_TEST
    limited = tmp_path / "limited.json"
    assert evaluation.main([*common, f"--test_data={demo['dir'] / 'parquet'}", "--streaming=True", "--limit=2",
                            f"--output={limited}"]) == 0
    assert json.loads(limited.read_text(encoding="utf-8"))["utterances_scored"] == 2


def _stream_dataset(demo, tiny_whisper_dir, source="parquet", **kwargs):
    from transformers import WhisperProcessor

    from utils.hf_data import DatasetStream
    from utils.train_data import StreamingSpeechDataset

    processor = WhisperProcessor.from_pretrained(tiny_whisper_dir)
    stream = DatasetStream(str(demo["dir"] / source), split="train", split_flag="--train_split",
                           options=DatasetOptions(streaming=True))
    return StreamingSpeechDataset(stream, processor.feature_extractor, processor.tokenizer, language="Chinese",
                                  shuffle_buffer=100, **kwargs), processor.tokenizer


def _texts(dataset, tokenizer, n):
    from itertools import islice

    return [tokenizer.decode(item["labels"], skip_special_tokens=True) for item in islice(iter(dataset), n)]


def test_a_training_stream_reshuffles_each_pass_shards_ranks_and_resumes(demo, tiny_whisper_dir):
    """Passes and resumes on a streamed save_to_disk folder (datasets shards it); ranks on a streamed parquet file
    (one shard: datasets splits it item by item). Each end of a parquet stream costs datasets' 5 s sleep (its
    workaround for apache/arrow#45214), so the many short iterations here read the saved folder."""
    sentences = sorted(s for _, s, _ in demo["train"])
    one, tok = _stream_dataset(demo, tiny_whisper_dir, source="saved")
    texts = _texts(one, tok, 3 * N_TRAIN)  # the stream never ends: three passes
    passes = [texts[i * N_TRAIN:(i + 1) * N_TRAIN] for i in range(3)]
    assert all(sorted(p) == sentences for p in passes)  # every pass holds every item once
    assert len({tuple(p) for p in passes}) > 1  # in a new order
    assert _texts(one, tok, N_TRAIN) == passes[0]  # seeded: the same run sees the same order
    one.set_skip(4)  # a resumed run leaves out what it had trained on
    assert _texts(one, tok, 5) == texts[4:9]
    ranks = [_stream_dataset(demo, tiny_whisper_dir, rank=r, world_size=2)[0] for r in range(2)]
    shares = [_texts(r, tok, N_TRAIN // 2) for r in ranks]
    assert sorted(shares[0] + shares[1]) == sentences  # the ranks split a pass between them


def test_a_stream_read_by_several_workers_resumes_after_exactly_the_batches_trained_on(demo, tiny_whisper_dir):
    """Two DataLoader workers deliver whole batches in turn: the first k batches hold the stream's first k × batch
    items, so a run resumed after k batches (skip = k × batch) neither repeats nor leaves out an item (before, the
    workers took alternate items, and batch 1 held items 0 and 2)."""
    from torch.utils.data import DataLoader

    def indices(dataset, batches):
        loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=lambda items: [i["index"] for i in items])
        out = []
        for batch in loader:
            out.append(batch)
            if len(out) == batches:
                return out
        return out

    dataset, _ = _stream_dataset(demo, tiny_whisper_dir, source="saved")
    dataset.set_skip(0, batch_size=2)
    assert indices(dataset, 3) == [[0, 1], [2, 3], [4, 5]]
    dataset.set_skip(6, batch_size=2)  # resumed after 3 batches
    assert indices(dataset, 2) == [[6, 7], [8, 9]]


@pytest.mark.parametrize("source", ["saved", "parquet"])
def test_two_dataloader_workers_train_on_the_whole_stream(demo, tiny_whisper_dir, source):
    """Inside a DataLoader worker, datasets gave each worker only its share of the shards, and the workers then took
    their batches in turn from that share: with 2 workers a pass trained on half the stream (8 of 16 rows)."""
    from torch.utils.data import DataLoader

    def first_pass(workers):
        dataset, tokenizer = _stream_dataset(demo, tiny_whisper_dir, source=source)
        dataset.set_skip(0, batch_size=2)
        loader = DataLoader(dataset, batch_size=2, num_workers=workers,
                            collate_fn=lambda items: [tokenizer.decode(i["labels"], skip_special_tokens=True)
                                                      for i in items])
        texts = []
        for batch in loader:
            texts += batch
            if len(texts) >= N_TRAIN:
                return sorted(texts[:N_TRAIN])

    assert first_pass(2) == first_pass(0) == sorted(s for _, s, _ in demo["train"])


def test_finetune_streams_a_parquet_dataset(tiny_whisper_dir, demo, tmp_path, caplog, capsys):
    out = tmp_path / "out"
    common = [f"--base_model={tiny_whisper_dir}", f"--output_dir={out}", f"--train_data={demo['dir'] / 'parquet'}",
              f"--test_data={demo['dir'] / 'saved'}", "--language=Chinese", "--per_device_train_batch_size=2",
              "--per_device_eval_batch_size=4", "--warmup_steps=1", "--logging_steps=1", "--eval_steps=4",
              "--save_steps=2", "--generation_max_length=4", "--num_workers=1", "--learning_rate=1e-3"]
    caplog.set_level("INFO")
    assert finetune.main([*common, "--streaming=True", "--max_steps=4"]) == 0  # 8 items: more than one pass
    assert "streamed (shuffle buffer 1000, rank 0 of 1), eval: 4 clips" in caplog.text
    state = json.loads((out / tiny_whisper_dir.name / "checkpoint-final" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]
    assert not any("epoch" in e for e in state["log_history"])  # a stream has none (it logged epoch=1.08e-19)
    with pytest.raises(SystemExit):
        finetune.main([*common, "--streaming=True"])
    assert "--streaming: a stream has no length, so give the run's length with --max_steps" in capsys.readouterr().err


def test_a_bad_row_met_while_streaming_stops_the_run_with_one_message_naming_its_row(tiny_whisper_dir, demo,
                                                                                       tmp_path, caplog):
    """Broken audio in row 2 of a local dataset streamed for training: a DataLoader worker's multi-screen traceback,
    naming '#0' (its place in the shuffled stream); now one message naming row 2, and exit 1."""
    rows = demo["train"]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not a wav file at all" * 10)
    paths = [p for p, _, _ in rows[:2]] + [str(broken)] + [p for p, _, _ in rows[2:4]]
    ds = datasets.Dataset.from_dict({"audio": paths, "sentence": ["好"] * len(paths)})
    ds.cast_column("audio", datasets.Audio(sampling_rate=16000)).save_to_disk(str(tmp_path / "bad"))
    out = tmp_path / "out"
    args = [*_short_run(tiny_whisper_dir, demo, out), f"--train_data={tmp_path / 'bad'}", "--streaming=True",
            "--max_steps=4", "--num_workers=1"]
    with caplog.at_level("ERROR"):
        assert finetune.main(args) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "Traceback" not in errors[0], errors
    assert errors[0].startswith(f"{tmp_path / 'bad'}#2: 'audio' ") and "fix or remove that row" in errors[0]


def test_a_streamed_row_with_a_label_too_long_for_whisper_is_one_message(tiny_whisper_dir, demo, tmp_path, caplog):
    """It was a DataLoader worker's ValueError traceback (48 lines), naming no row."""
    rows = demo["train"][:4]
    texts = [s for _, s, _ in rows]
    texts[1] = "今天天气很好" * 120  # 720 characters: more than Whisper's 448 label tokens
    ds = datasets.Dataset.from_dict({"audio": [p for p, _, _ in rows], "sentence": texts})
    ds.cast_column("audio", datasets.Audio(sampling_rate=16000)).to_parquet(str(tmp_path / "long.parquet"))
    args = [*_short_run(tiny_whisper_dir, demo, tmp_path / "out"), f"--train_data={tmp_path / 'long.parquet'}",
            "--streaming=True", "--max_steps=4", "--num_workers=1"]
    with caplog.at_level("ERROR"):
        assert finetune.main(args) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "Traceback" not in errors[0], errors
    assert os.path.basename(rows[1][0]) in errors[0] and "more than Whisper's 448; split the clip" in errors[0]


def test_a_streamed_parquet_row_is_named_by_its_audio_too(demo, tmp_path):
    """'#0 of this epoch's stream on rank 1' (a place after shuffling) did not say which row to fix."""
    from utils.hf_data import DatasetStream

    rows = demo["train"][:3]
    ds = datasets.Dataset.from_dict({"audio": [p for p, _, _ in rows], "sentence": ["好", None, "好"]})
    ds.cast_column("audio", datasets.Audio(sampling_rate=16000)).to_parquet(str(tmp_path / "none.parquet"))
    stream = DatasetStream(str(tmp_path / "none.parquet"), split="train", split_flag="--train_split",
                           options=DatasetOptions(streaming=True))
    with pytest.raises(DatasetError, match=rf"of this epoch's stream \(audio {os.path.basename(rows[1][0])}\): "
                                           r"'sentence' is None"):
        list(stream.records(seed=0))


def test_a_process_whose_peer_stopped_says_so_instead_of_a_traceback():
    """Under torchrun the process that did not meet the bad row died in a collective with 30 lines of gloo's
    "Connection closed by peer": it is recognised, and finetune.py names the other process's error instead."""
    assert finetune.peer_stopped(RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection "
                                              "closed by peer [127.0.0.1]:12345"))
    assert not finetune.peer_stopped(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def _short_run(tiny_whisper_dir, demo, out) -> list[str]:
    """finetune.py flags of a few steps on the demo parquet split, saving every 2 steps, no evaluation."""
    return [f"--base_model={tiny_whisper_dir}", f"--output_dir={out}", f"--train_data={demo['dir'] / 'parquet'}",
            f"--test_data={demo['dir'] / 'saved'}", "--language=Chinese", "--per_device_train_batch_size=2",
            "--per_device_eval_batch_size=4", "--warmup_steps=1", "--logging_steps=1", "--eval_steps=0",
            "--save_steps=2", "--generation_max_length=4", "--num_workers=0", "--timestamps=False"]


def test_a_stream_layout_tells_apart_its_split_bounds_and_shuffle_buffer(demo, tiny_whisper_dir):
    """A checkpoint of a streamed run records which items the stream gives: another split, duration bounds or
    shuffle buffer is another stream."""
    from transformers import WhisperProcessor

    from utils.hf_data import DatasetStream
    from utils.train_data import StreamingSpeechDataset, data_layout

    processor = WhisperProcessor.from_pretrained(tiny_whisper_dir)

    def layout(split="train", min_duration=0.0, max_duration=30.0, shuffle_buffer=100):
        stream = DatasetStream(str(demo["dir"] / "parquet"), split=split, split_flag="--train_split",
                               options=DatasetOptions(streaming=True), min_duration=min_duration,
                               max_duration=max_duration)
        return data_layout(StreamingSpeechDataset(stream, processor.feature_extractor, processor.tokenizer,
                                                  language="Chinese", shuffle_buffer=shuffle_buffer))

    fingerprint, described = layout()
    assert described == f"the stream {demo['dir'] / 'parquet'} (split train)"
    assert layout() == (fingerprint, described)
    others = [layout(split="test")[0], layout(min_duration=1.0)[0], layout(max_duration=10.0)[0],
              layout(shuffle_buffer=50)[0]]
    assert len({fingerprint, *others}) == 5


@pytest.mark.parametrize("first,then", [(True, False), (False, True)], ids=["stream-then-whole", "whole-then-stream"])
def test_resume_between_a_stream_and_the_whole_dataset_starts_the_epoch_again(tiny_whisper_dir, demo, tmp_path,
                                                                              caplog, first, then):
    """A stream's position counts batches over the whole run, a dataset's within its epoch: resumed on the same
    data read the other way, the run warns and its data starts at the beginning of the epoch (it used to carry
    the item count over: 2 batches of 2 became batch 2 of the other reading)."""
    out = tmp_path / "out"
    common = [*_short_run(tiny_whisper_dir, demo, out), "--pack_audio=False"]
    assert finetune.main([*common, f"--streaming={first}", "--max_steps=2"]) == 0
    run = out / tiny_whisper_dir.name
    saved = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())
    assert (saved["epoch"], saved["batch_in_epoch"]) == (0, 2)
    caplog.set_level("INFO")
    assert finetune.main([*common, f"--streaming={then}", "--max_steps=4", "--resume_from_checkpoint=auto"]) == 0
    assert "the checkpoint's run had trained 2 batches of " in caplog.text
    starts = "from its first item" if then else "at the beginning of epoch 0"
    assert f"a stream's position and an epoch's do not correspond, so this run's data starts {starts}" in caplog.text
    state = json.loads((run / "checkpoint-final" / "trainer_state.json").read_text())
    # steps 3 and 4 trained the first two batches of epoch 0 (with the item count carried over they were batches 2
    # and 3 of the other reading: the run ended at epoch 1, batch 1 of the 3-batch dataset, or at batch 4 of the stream)
    assert (state["global_step"], state["epoch"], state["batch_in_epoch"]) == (4, 0, 2)
    assert (state["data"]["batches_per_epoch"] is None) == then


def test_a_streamed_checkpoint_of_the_version_before_resumes_without_a_warning(tiny_whisper_dir, demo, tmp_path,
                                                                              caplog):
    """Checkpoints written before a stream had its layout recorded its fingerprint as "stream <name>, shuffle buffer
    <n>": resumed with the same settings, the run goes on after the batches trained on and warns of nothing."""
    out = tmp_path / "out"
    common = [*_short_run(tiny_whisper_dir, demo, out), "--streaming=True"]
    assert finetune.main([*common, "--max_steps=2"]) == 0
    path = out / tiny_whisper_dir.name / "checkpoint-2" / "trainer_state.json"
    state = json.loads(path.read_text())
    name = str(demo["dir"] / "parquet")
    state["data"].update(fingerprint=f"stream {name}, shuffle buffer 1000", description=f"the stream {name}")
    path.write_text(json.dumps(state))
    caplog.set_level("INFO")
    assert finetune.main([*common, "--max_steps=3", "--resume_from_checkpoint=auto"]) == 0
    assert "cut the training data into" not in caplog.text  # the warning of a changed layout
    state = json.loads((out / tiny_whisper_dir.name / "checkpoint-final" / "trainer_state.json").read_text())
    assert (state["global_step"], state["epoch"], state["batch_in_epoch"]) == (3, 0, 3)


def test_relative_audio_paths_of_a_parquet_folder_resolve_like_a_manifests(tmp_path, monkeypatch):
    """Dataset.to_parquet() keeps paths as given, relative to the directory the set was made in: the glob found the
    files (against the working directory) but the same files named by their folder did not (against the folder
    only). As for manifests: the folder first, then the working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clips").mkdir()
    rows = _rows("test.json", 2)
    for p, _, _ in rows:
        shutil.copy(p, tmp_path / "clips" / os.path.basename(p))
    ds = datasets.Dataset.from_dict({"audio": [f"clips/{os.path.basename(p)}" for p, _, _ in rows],
                                     "sentence": [s for _, s, _ in rows]})
    (tmp_path / "data" / "cv").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "data" / "cv" / "test-00000-of-00001.parquet"))
    for spec in ("data/cv", "data/cv/test-*.parquet"):
        records = load_data(spec, split="test", split_flag="--test_split")
        assert [r.sentence for r in records] == [s for _, s, _ in rows], spec
        assert all(os.path.isfile(r.audio_path) for r in records), spec


def test_a_parquet_file_with_its_audio_beside_it_is_read_from_any_directory(tmp_path, monkeypatch):
    """data.parquet next to wav/*.flac: the folder was read as parquet whole ("Parquet magic bytes not found in
    footer", a pyarrow traceback), and the file named alone resolved "wav/…" against the working directory."""
    rows = _rows("test.json", 2)
    (tmp_path / "pq" / "wav").mkdir(parents=True)
    for p, _, _ in rows:
        shutil.copy(p, tmp_path / "pq" / "wav" / os.path.basename(p))
    ds = datasets.Dataset.from_dict({"audio": [f"wav/{os.path.basename(p)}" for p, _, _ in rows],
                                     "sentence": [s for _, s, _ in rows]})
    ds.to_parquet(str(tmp_path / "pq" / "data.parquet"))
    monkeypatch.chdir("/")
    for spec in (tmp_path / "pq", tmp_path / "pq" / "data.parquet", tmp_path / "pq" / "*.parquet"):
        records = load_data(str(spec), split="train", split_flag="--train_split")
        assert [r.sentence for r in records] == [s for _, s, _ in rows], spec
        assert all(os.path.isfile(r.audio_path) for r in records), spec
    (tmp_path / "pq" / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match=r"pq: cannot read it as parquet"):
        load_data(str(tmp_path / "pq"), split="train", split_flag="--train_split")


def test_a_bom_csv_audiofolder_a_csv_file_and_a_to_json_export(tmp_path):
    """Excel's "CSV UTF-8" (a BOM) read as "'file_name' missing"; a .csv file was read as jsonlines ("not valid
    JSON" on every line); a datasets to_json() export's "audio": "x.wav" said "'audio' missing or not an object"."""
    rows = _rows("test.json", 2)
    folder = tmp_path / "af"
    folder.mkdir()
    for p, _, _ in rows:
        shutil.copy(p, folder / os.path.basename(p))
    with open(folder / "metadata.csv", "w", newline="", encoding="utf-8-sig") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "sentence"])
        w.writerows([os.path.basename(p), s] for p, s, _ in rows)
    assert [r.sentence for r in load_data(str(folder), split="train", split_flag="--train_split")] == \
        [s for _, s, _ in rows]
    with pytest.raises(DatasetError, match=r"metadata.csv: a CSV file is not read as data.*audiofolder"):
        load_data(str(folder / "metadata.csv"), split="train", split_flag="--train_split")
    exported = tmp_path / "export.json"
    exported.write_text("".join(json.dumps({"audio": p, "sentence": s}) + "\n" for p, s, _ in rows))
    with pytest.raises(ManifestError, match=r"export.json:1: 'audio' is a string .*not an object; write \"audio\": "):
        load_data(str(exported), split="train", split_flag="--train_split")


@pytest.mark.parametrize("streaming", [True, False])
def test_translate_on_a_chinese_dataset_is_refused_before_training(tiny_whisper_dir, demo, tmp_path, caplog,
                                                                   streaming):
    """--task=translate checked the train text of a jsonlines manifest only: a Hugging Face dataset of transcripts
    (streamed or not) trained the model to write Chinese behind <|translate|> without a word."""
    english = tmp_path / "en.json"
    english.write_text("".join(json.dumps({"audio": {"path": p}, "sentence": "The weather is nice today.",
                                           "duration": d}) + "\n" for p, _, d in demo["test"]), encoding="utf-8")
    out = tmp_path / "out"
    rc = finetune.main([*_short_run(tiny_whisper_dir, demo, out), f"--test_data={english}", "--task=translate",
                        f"--streaming={streaming}", "--max_steps=2"])
    first = f" (its first {finetune.STREAM_TEXT_CHECKED} items)" if streaming else ""
    assert rc != 0 and f"--train_data {demo['dir'] / 'parquet'}{first}: {N_TRAIN} of {N_TRAIN} sentences are " \
        "written in Chinese/Japanese" in caplog.text
    assert not list(out.glob("*/checkpoint-*"))
