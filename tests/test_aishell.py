"""aishell.py: a miniature data_aishell.tgz with the real layout → manifests; safe, idempotent unpacking;
the resumable, checksummed downloader against a local HTTP server."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import signal
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import aishell
from utils.audio import SAMPLE_RATE
from utils.data import load_manifest

# speaker -> (split, [(utterance id, duration s, transcript words or None = no transcript line)])
SPEAKERS = {
    "S0002": ("train", [
        ("BAC009S0002W0122", 0.512, "而 对 楼市 成交 抑制 作用 最 大 的 限 购"),
        ("BAC009S0002W0123", 0.733, "也 成为 地方 政府 的 眼中 钉"),
        ("BAC009S0002W0124", 1.041, "自 六月 底 呼和浩特 市 率先 宣布 取消 限 购 后"),
    ]),
    "S0003": ("train", [
        ("BAC009S0003W0121", 0.3, "他 说"),
        ("BAC009S0003W0999", 0.25, None),  # a wav without a transcript line
    ]),
    "S0724": ("dev", [
        ("BAC009S0724W0121", 0.6, "广州 市 房地产 中介 协会 分析"),
        ("BAC009S0724W0122", 0.455, "综合 效应 的 担忧"),
    ]),
    "S0764": ("test", [
        ("BAC009S0764W0121", 0.8, "甚至 出现 交易 几乎 停滞 的 情况"),
    ]),
}
ORPHAN_LINE = "BAC009S0002W0500 这 句 没有 音频"  # a transcript line without a wav


def _wav_bytes(duration: float, seed: int) -> bytes:
    samples = np.random.default_rng(seed).uniform(-0.1, 0.1, round(duration * SAMPLE_RATE)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1_500_000_000, 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(info)


def _add_link(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    tar.addfile(info)


def _speaker_tgz(speaker: str, split: str, utts, extra=None, prefix: str = "") -> bytes:
    """A speaker archive as the release has it: ``<split>/<speaker>/<utt>.wav`` (the recipes unpack it inside
    data_aishell/wav); ``prefix="wav/"``: packed with the wav folder itself."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for d in ((["wav"] if prefix else []) + [f"{prefix}{split}", f"{prefix}{split}/{speaker}"]):
            _add_dir(tar, d)
        for i, (utt, duration, _) in enumerate(utts):
            _add_bytes(tar, f"{prefix}{split}/{speaker}/{utt}.wav", _wav_bytes(duration, seed=i))
        if extra:
            extra(tar)
    return buf.getvalue()


def build_archive(path: Path, *, transcript: bool | str = True, nested_extra=None, outer_extra=None,
                  nested_override: dict[str, bytes] | None = None, prefix: str = "") -> Path:
    """A miniature data_aishell.tgz with the real layout (nested speaker .tar.gz, transcript with spaces).

    nested_extra(tar) adds members to S0002's archive; outer_extra(tar) to the outer archive;
    nested_override replaces a speaker archive's bytes; transcript: a str is the transcript file's text.
    """
    lines = [f"{utt} {words}" for _, utts in SPEAKERS.values() for utt, _, words in utts if words is not None]
    lines.insert(2, ORPHAN_LINE)
    with tarfile.open(path, "w:gz") as tar:
        for d in ("data_aishell", "data_aishell/transcript", "data_aishell/wav"):
            _add_dir(tar, d)
        if transcript:
            text = transcript if isinstance(transcript, str) else "\n".join(lines) + "\n"
            _add_bytes(tar, aishell.TRANSCRIPT_MEMBER, text.encode("utf-8"))
        for speaker, (split, utts) in SPEAKERS.items():
            data = (nested_override or {}).get(speaker) or _speaker_tgz(
                speaker, split, utts, nested_extra if speaker == "S0002" else None, prefix)
            _add_bytes(tar, f"data_aishell/wav/{speaker}.tar.gz", data)
        if outer_extra:
            outer_extra(tar)
    return path


def _read_manifest(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return build_archive(tmp_path_factory.mktemp("aishell-archive") / "data_aishell.tgz")


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """main() sets the root logger's level; put pytest's handlers and level back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _run(tmp_path: Path, archive: Path, *extra: str) -> int:
    return aishell.main([f"--filepath={archive}", f"--target_dir={tmp_path / 'dataset' / 'audio'}",
                         f"--annotation_text={tmp_path / 'dataset'}", "--num_workers=1", *extra])


# --------------------------------------------------------------------------------------------------
# End to end


def test_main_writes_manifests(tmp_path, archive, capsys, caplog, monkeypatch):
    before = (_sha256(archive), archive.stat().st_mtime_ns, archive.stat().st_size)
    assert _run(tmp_path, archive) == 0
    assert (_sha256(archive), archive.stat().st_mtime_ns, archive.stat().st_size) == before  # archive untouched

    dataset = tmp_path / "dataset"
    expected = {split: [] for split in aishell.SPLITS}
    for speaker, (split, utts) in SPEAKERS.items():
        expected[split] += [(speaker, utt, dur, words) for utt, dur, words in utts if words is not None]
    for split in aishell.SPLITS:
        records = _read_manifest(dataset / f"{split}.json")
        want = sorted(expected[split], key=lambda e: e[1])
        assert [Path(r["audio"]["path"]).stem for r in records] == [e[1] for e in want]
        for rec, (speaker, utt, dur, words) in zip(records, want):
            assert set(rec) == {"audio", "sentence", "language", "sentences", "duration"}
            assert rec["audio"]["path"] == f"audio/data_aishell/wav/{split}/{speaker}/{utt}.wav"  # split by speaker
            assert rec["sentence"] == words.replace(" ", "")
            assert rec["language"] == "Chinese"
            assert rec["duration"] == pytest.approx(dur, abs=0.01)
            assert rec["duration"] == round(rec["duration"], 3)
            assert rec["sentences"] == [{"start": 0, "end": rec["duration"], "text": rec["sentence"]}]
    assert _read_manifest(dataset / "train.json")[0]["sentence"] == "而对楼市成交抑制作用最大的限购"

    err = (capsys.readouterr().err + caplog.text)
    assert re.search(r"train\s+4 utterances", err) and re.search(r"dev\s+2 utterances", err)
    assert re.search(r"test\s+1 utterances", err)
    assert "skipped 1 wavs without a transcript line (wav/train/S0003/BAC009S0003W0999.wav)" in err
    assert "1 transcript lines have no wav (BAC009S0002W0500)" in err

    # relative paths resolve against the manifest's folder from any working directory
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for split in aishell.SPLITS:
        for rec in _read_manifest(dataset / f"{split}.json"):
            assert not os.path.isabs(rec["audio"]["path"])
            assert (dataset / rec["audio"]["path"]).is_file()
        manifest = load_manifest(dataset / f"{split}.json", check_audio=True, show_progress=False)
        assert all(Path(r.audio_path).is_file() for r in manifest)


def test_paths_absolute_when_audio_outside_manifest_folder(tmp_path, archive):
    audio, manifests = tmp_path / "audio", tmp_path / "manifests"
    summary = aishell.prepare_aishell(audio, manifests, archive=archive, progress=False)
    assert summary.utterances == {"train": 4, "dev": 2, "test": 1}
    assert summary.wavs_without_transcript == 1 and summary.transcripts_without_wav == 1
    assert summary.hours["dev"] == pytest.approx((0.6 + 0.455) / 3600, abs=1e-5)
    for rec in _read_manifest(manifests / "dev.json"):
        assert os.path.isabs(rec["audio"]["path"]) and Path(rec["audio"]["path"]).is_file()
        assert Path(rec["audio"]["path"]).is_relative_to(audio.resolve())


def test_rerun_does_not_unpack_again(tmp_path, archive, monkeypatch):
    calls = []
    real = aishell._unpack_speaker
    monkeypatch.setattr(aishell, "_unpack_speaker", lambda *a: calls.append(a[1]) or real(*a))
    assert _run(tmp_path, archive) == 0
    assert len(calls) == len(SPEAKERS)
    wavs = sorted((tmp_path / "dataset/audio/data_aishell/wav").rglob("*.wav"))
    ctimes = [w.stat().st_ctime_ns for w in wavs]
    manifests = {s: (tmp_path / f"dataset/{s}.json").read_bytes() for s in aishell.SPLITS}

    calls.clear()
    assert _run(tmp_path, archive) == 0
    assert calls == []
    assert [w.stat().st_ctime_ns for w in wavs] == ctimes
    assert {s: (tmp_path / f"dataset/{s}.json").read_bytes() for s in aishell.SPLITS} == manifests

    # a crash while S0724 was unpacking: its marker and the archive marker are missing → only S0724 again
    markers = tmp_path / "dataset/audio/data_aishell" / aishell.MARKER_DIR
    (markers / "S0724.json").unlink()
    (markers / aishell.ARCHIVE_MARKER).unlink()
    assert _run(tmp_path, archive) == 0
    assert calls == [f"{archive}:data_aishell/wav/S0724.tar.gz"]
    assert {s: (tmp_path / f"dataset/{s}.json").read_bytes() for s in aishell.SPLITS} == manifests


def test_parallel_workers_give_the_same_manifests(tmp_path, archive):
    one = aishell.prepare_aishell(tmp_path / "a/audio", tmp_path / "a", archive=archive, num_workers=1,
                                  progress=False)
    two = aishell.prepare_aishell(tmp_path / "b/audio", tmp_path / "b", archive=archive, num_workers=2,
                                  progress=False)
    assert two.speakers_unpacked == len(SPEAKERS)
    for split in aishell.SPLITS:
        assert one.manifests[split].read_bytes() == two.manifests[split].read_bytes()


def test_manifest_write_is_atomic(tmp_path, archive, monkeypatch):
    """A crash while writing the manifests leaves the previous ones intact and no temp files."""
    assert _run(tmp_path, archive) == 0
    dataset = tmp_path / "dataset"
    before = (dataset / "train.json").read_bytes()

    real = aishell.build_records

    def unserialisable_second_record(*args):
        records, no_text, no_wav = real(*args)
        records["train"][1]["duration"] = object()  # json.dumps fails after the first line is written
        return records, no_text, no_wav

    monkeypatch.setattr(aishell, "build_records", unserialisable_second_record)
    with pytest.raises(TypeError):
        _run(tmp_path, archive)
    assert (dataset / "train.json").read_bytes() == before
    assert sorted(p.name for p in dataset.iterdir()) == ["audio", "dev.json", "test.json", "train.json"]


def test_the_three_manifests_are_replaced_together_or_not_at_all(tmp_path, archive, capsys, caplog):
    """A failure while writing one manifest (here a folder in the way of test.json; a full disk alike) left a new
    train.json and dev.json beside the old test.json, under a bare "Is a directory" error."""
    assert _run(tmp_path, archive) == 0
    dataset = tmp_path / "dataset"
    before = {name: (dataset / name).read_bytes() for name in ("train.json", "dev.json")}
    (dataset / "train.json").write_text("old\n")
    (dataset / "dev.json").write_text("old\n")
    (dataset / "test.json").unlink()
    (dataset / "test.json").mkdir()
    assert _run(tmp_path, archive) == 1
    err = capsys.readouterr().err + caplog.text
    assert "test.json" in err and "folder is in the way" in err and "run the same command again" in err
    assert (dataset / "train.json").read_text() == "old\n" and (dataset / "dev.json").read_text() == "old\n"
    assert sorted(p.name for p in dataset.iterdir()) == ["audio", "dev.json", "test.json", "train.json"]  # no temps
    (dataset / "test.json").rmdir()
    assert _run(tmp_path, archive) == 0
    assert {name: (dataset / name).read_bytes() for name in before} == before


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_works(tmp_path, archive, capsys, caplog):
    """Two runs into one --target_dir: the second removed the first one's staged files and both failed."""
    import fcntl

    target = tmp_path / "dataset" / "audio"
    target.mkdir(parents=True)
    fd = os.open(target, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a run working there holds it
        assert _run(tmp_path, archive) == 1
    finally:
        os.close(fd)
    assert "another aishell.py is unpacking into this folder" in capsys.readouterr().err + caplog.text
    assert list(target.iterdir()) == [] and not (tmp_path / "dataset" / "train.json").exists()
    assert _run(tmp_path, archive) == 0  # the lock is the folder's while a run holds it, never left behind


def test_a_folder_that_cannot_be_locked_is_used_with_a_warning(tmp_path, archive, monkeypatch, caplog):
    """Some network mounts have no flock: the run goes on (one at a time is then the user's to keep)."""
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert _run(tmp_path, archive) == 0
    assert "cannot lock this folder" in caplog.text and (tmp_path / "dataset" / "train.json").exists()


@pytest.mark.parametrize("flag", ["--target_dir", "--annotation_text"])
def test_an_empty_folder_flag_is_refused(tmp_path, flag, capsys, caplog, monkeypatch):
    """--target_dir=$UNSET unpacked the corpus into the working folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        aishell.main([f"{flag}="])
    assert e.value.code == 2
    assert f"{flag}: an empty path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_filepath_none_means_not_given():
    assert aishell.build_parser().parse_args(["--filepath=None"]).filepath is None


def test_workers_start_with_ctrl_c_held_back():
    """A spawned worker imports aishell.py for about a second before its initializer ignores Ctrl-C: a Ctrl-C then
    printed a traceback per worker. Workers are started with SIGINT blocked; the initializer drops it."""
    import multiprocessing

    with aishell._sigint_blocked():
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            blocked = signal.SIGINT in pool.apply(signal.pthread_sigmask, (signal.SIG_BLOCK, []))
        assert signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert blocked
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the main process: as before
    with multiprocessing.get_context("spawn").Pool(1, initializer=aishell._ignore_sigint) as pool:
        assert pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN
        assert signal.SIGINT not in pool.apply(signal.pthread_sigmask, (signal.SIG_BLOCK, []))


def test_help_documents_relative_paths(capsys, caplog):
    with pytest.raises(SystemExit) as e:
        aishell.main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "RELATIVE TO THE MANIFEST'S FOLDER" in out and "absolute otherwise" in out


def test_num_workers_must_be_positive(capsys, caplog):
    with pytest.raises(SystemExit) as e:
        aishell.main(["--num_workers=0"])
    assert e.value.code == 2
    assert "--num_workers must be at least 1" in (capsys.readouterr().err + caplog.text)


def test_speaker_archives_packed_with_the_wav_folder_are_read_too(tmp_path):
    """The release's speaker archives hold train/S0002/…, unpacked in data_aishell/wav (this toolkit read only
    wav/train/S0002/… and wrote three empty manifests for the real corpus); ones packed with wav/ still work."""
    old_layout = build_archive(tmp_path / "old.tgz", prefix="wav/")
    assert _run(tmp_path / "run", old_layout) == 0
    records = _read_manifest(tmp_path / "run" / "dataset" / "train.json")
    assert len(records) == 4 and records[0]["audio"]["path"].startswith("audio/data_aishell/wav/train/S0002/")
    assert (tmp_path / "run" / "dataset" / records[0]["audio"]["path"]).is_file()


def test_an_archive_in_which_nothing_matches_fails_and_leaves_the_manifests_there(tmp_path, capsys, caplog):
    """No wav under <split>/<speaker>/ matched a transcript line: before, three empty manifests replaced the ones
    there (the demo's train.json and test.json) and the exit code was 0, again on every rerun."""
    other = {speaker: _speaker_tgz(speaker, "misc", utts) for speaker, (_, utts) in SPEAKERS.items()}
    flat = build_archive(tmp_path / "flat.tgz", nested_override={s: _flat_tgz(other[s]) for s in other})
    dataset = tmp_path / "run" / "dataset"
    dataset.mkdir(parents=True)
    (dataset / "train.json").write_text("kept\n", encoding="utf-8")
    for _ in range(2):  # and the rerun, which finds the archive unpacked
        assert _run(tmp_path / "run", flat) == 1
        assert "none of the" in (capsys.readouterr().err + caplog.text) and "No manifest written" in caplog.text
        assert (dataset / "train.json").read_text(encoding="utf-8") == "kept\n"
        assert not (dataset / "dev.json").exists()


def _flat_tgz(data: bytes) -> bytes:
    """A speaker archive's wavs with no folders at all (<utt>.wav): a layout no recipe knows."""
    src = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for member in src:
            if member.isfile():
                _add_bytes(tar, Path(member.name).name, src.extractfile(member).read())
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# Bad archives


def _malicious(case: str, outside: Path) -> tuple[str, str, object]:
    """(archive the member goes in: "nested" = S0002's speaker archive or "outer", member name, add(tar))."""
    up = "../" * 7  # from <run>/dataset/audio/data_aishell/wav/train/S0002 up to tmp_path
    if case == "dotdot":
        member = f"train/S0002/{up}outside/evil.wav"
        return "nested", member, lambda tar: _add_bytes(tar, member, b"evil")
    if case == "absolute":
        member = str(outside / "evil.wav")
        return "nested", member, lambda tar: _add_bytes(tar, member, b"evil")
    if case == "symlink_out":
        member = "train/S0002/evil.wav"
        return "nested", member, lambda tar: _add_link(tar, member, f"{up}outside/evil.wav")
    if case == "symlink_chain":  # each link stays inside on its own; through "here" the second leaves
        member = "train/S0002/here/evil"

        def add(tar):
            _add_link(tar, "train/S0002/here", ".")
            _add_link(tar, member, "../../../..")
        return "nested", member, add
    member = "data_aishell/../../outside/evil.txt"
    return "outer", member, lambda tar: _add_bytes(tar, member, b"evil")


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink_out", "symlink_chain", "outer_dotdot"])
def test_malicious_member_is_refused(tmp_path, capsys, caplog, case):
    outside = tmp_path / "outside"
    where, member, add = _malicious(case, outside)
    bad = build_archive(tmp_path / "bad.tgz", nested_extra=add if where == "nested" else None,
                        outer_extra=add if where == "outer" else None)
    assert _run(tmp_path / "run", bad) == 1
    err = (capsys.readouterr().err + caplog.text)
    label = f"{bad}:data_aishell/wav/S0002.tar.gz" if where == "nested" else f"{bad}"
    assert f"{label}: member {member!r}" in err and "refusing to unpack this archive" in err
    assert not outside.exists()
    assert not (tmp_path / "run").exists(), sorted(str(p) for p in (tmp_path / "run").rglob("*"))


def test_unpack_speaker_reads_durations_of_non_pcm_wavs(tmp_path):
    """24-bit PCM and float wavs (float: the stdlib wave module rejects it, libsndfile reads it) get durations."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, subtype, frames in (("float", "FLOAT", 8000), ("pcm24", "PCM_24", 12345)):
            wav = io.BytesIO()
            sf.write(wav, np.zeros(frames, dtype=np.float32), SAMPLE_RATE, subtype=subtype, format="WAV")
            _add_bytes(tar, f"wav/dev/S0724/{name}.wav", wav.getvalue())
    durations, notes = aishell._unpack_speaker(buf.getvalue(), "S0724.tar.gz", os.fspath(tmp_path))
    assert not notes
    assert durations == pytest.approx({"wav/dev/S0724/float.wav": 0.5, "wav/dev/S0724/pcm24.wav": 12345 / SAMPLE_RATE})


def test_wav_durations_are_what_the_file_holds_and_empty_wavs_are_left_out(tmp_path, caplog):
    """A header whose data size is 0xFFFFFFFF (a recorder that never went back to write it) said 134217.7 s for a
    2.25 s clip, a truncated wav kept its header's length, and a wav of 0 s got a manifest line of 0 s, which stops
    finetune.py: the duration is what the file's bytes hold (logged), and an empty wav is left out (logged)."""
    def pcm(frames: int) -> bytes:
        wav = io.BytesIO()
        sf.write(wav, np.full(frames, 0.1, dtype=np.float32), SAMPLE_RATE, subtype="PCM_16", format="WAV")
        return wav.getvalue()

    unknown = bytearray(pcm(36000))
    unknown[40:44] = b"\xff\xff\xff\xff"  # the data chunk's size
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _add_bytes(tar, "dev/S0724/unknown.wav", bytes(unknown))
        _add_bytes(tar, "dev/S0724/truncated.wav", pcm(32000)[:44 + 2 * 16000])
        _add_bytes(tar, "dev/S0724/empty.wav", pcm(0))
    durations, notes = aishell._unpack_speaker(buf.getvalue(), "S0724.tar.gz", os.fspath(tmp_path))
    assert durations == pytest.approx({"wav/dev/S0724/unknown.wav": 2.25, "wav/dev/S0724/truncated.wav": 1.0,
                                       "wav/dev/S0724/empty.wav": 0.0})
    # the final path (the staging folder it was read in is gone), returned: a worker process's log goes nowhere
    assert notes[1:] == [f"{tmp_path}/wav/dev/S0724/truncated.wav: its header says 2.00 s, the file holds 1.00 s "
                         "(truncated, or a header written before the recording ended); the manifest gets 1.00 s"]
    assert notes[0].startswith(f"{tmp_path}/wav/dev/S0724/unknown.wav: its header says 134217.73 s")
    with caplog.at_level(logging.WARNING):
        records, _, _ = aishell.build_records(durations, {"unknown": "一", "truncated": "二", "empty": "三"}, "")
    assert [r["sentence"] for r in records["dev"]] == ["二", "一"]
    assert "left out 1 wavs without audio (0 s): wav/dev/S0724/empty.wav" in caplog.text


@pytest.mark.parametrize("num_workers", [1, 2])
def test_a_wav_that_is_not_audio_is_left_out_and_named_by_its_archive_entry(tmp_path, caplog, num_workers):
    """One empty or header-less wav in a speaker archive stopped the whole preparation (no manifest, the speakers
    unpacked removed), naming a staging path that no longer existed; with workers, the warning about a truncated
    wav was not shown at all (a worker's log records went nowhere). Now the bad wav is left out with a warning
    naming the archive entry, the truncated one is named by its final path, and the rest is prepared."""
    def extra(tar):
        _add_bytes(tar, "train/S0002/BAC009S0002W0125.wav", b"")
        _add_bytes(tar, "train/S0002/BAC009S0002W0126.wav", _wav_bytes(1.0, seed=9)[:20])
        _add_bytes(tar, "train/S0002/BAC009S0002W0127.wav", _wav_bytes(1.0, seed=9)[:44 + 16000])
        no_rate = bytearray(_wav_bytes(1.0, seed=9))
        no_rate[24:32] = bytes(8)  # sample rate and byte rate 0: a ZeroDivisionError stopped everything
        _add_bytes(tar, "train/S0002/BAC009S0002W0128.wav", bytes(no_rate))

    path = build_archive(tmp_path / "data_aishell.tgz", nested_extra=extra)
    with caplog.at_level(logging.WARNING):
        assert _run(tmp_path, path, f"--num_workers={num_workers}") == 0
    member = f"{path}:data_aishell/wav/S0002.tar.gz:train/S0002"
    assert f"{member}/BAC009S0002W0125.wav: left out, not readable as audio" in caplog.text
    assert f"{member}/BAC009S0002W0126.wav: left out, not readable as audio" in caplog.text
    assert f"{member}/BAC009S0002W0128.wav: left out, not readable as audio" in caplog.text
    data_dir = tmp_path / "dataset/audio/data_aishell"
    assert f"{data_dir}/wav/train/S0002/BAC009S0002W0127.wav: its header says 1.00 s, the file holds 0.50 s" in \
        caplog.text
    assert aishell.STAGING_DIR not in caplog.text
    assert not (data_dir / "wav/train/S0002/BAC009S0002W0125.wav").exists()
    train = _read_manifest(tmp_path / "dataset/train.json")
    assert len(train) == 4  # S0002's three and S0003's one with a transcript line (the new ids have none)
    assert aishell._read_json(data_dir / aishell.MARKER_DIR / "S0002.json")["wavs"].keys() == {
        f"wav/train/S0002/{utt}.wav" for utt in ("BAC009S0002W0122", "BAC009S0002W0123", "BAC009S0002W0124",
                                                 "BAC009S0002W0127")}


def test_ctrl_c_keeps_and_records_the_speakers_the_workers_finished(tmp_path, archive, monkeypatch):
    """With workers, the speakers they finished while Ctrl-C was handled were on disk without a marker (said to be
    kept, unpacked again by the next run). Now they are recorded: the next run unpacks nothing."""
    import concurrent.futures as cf

    real_wait = cf.wait

    def wait(fs, return_when):
        real_wait(fs, return_when=cf.ALL_COMPLETED)
        raise KeyboardInterrupt

    monkeypatch.setattr(cf, "wait", wait)
    assert _run(tmp_path, archive, "--num_workers=2") == 130
    monkeypatch.setattr(cf, "wait", real_wait)
    markers = tmp_path / "dataset/audio/data_aishell" / aishell.MARKER_DIR
    assert sorted(p.stem for p in markers.glob("S*.json")) == sorted(SPEAKERS)

    def unpack_again(*args):
        raise AssertionError(f"unpacked again: {args[1]}")

    monkeypatch.setattr(aishell, "_unpack_speaker", unpack_again)
    assert _run(tmp_path, archive) == 0
    assert len(_read_manifest(tmp_path / "dataset/train.json")) == 4


def test_a_wav_deleted_after_unpacking_is_unpacked_again(tmp_path, archive, caplog):
    assert _run(tmp_path, archive) == 0
    gone = tmp_path / "dataset/audio/data_aishell/wav/test/S0764/BAC009S0764W0121.wav"
    gone.unlink()
    with caplog.at_level(logging.WARNING):
        assert _run(tmp_path, archive) == 0
    assert gone.is_file() and "1 unpacked wavs are missing" in caplog.text and "speaker(s) S0764 again" in caplog.text
    assert len(_read_manifest(tmp_path / "dataset/test.json")) == 1


def test_ctrl_c_while_unpacking_is_one_line_and_exit_130(tmp_path, archive, monkeypatch, capsys, caplog):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(aishell, "_unpack_speaker", interrupted)
    assert _run(tmp_path, archive) == 130
    err = capsys.readouterr().err + caplog.text
    assert "interrupted" in err and "run the same command again" in err and "Traceback" not in err
    assert not (tmp_path / "dataset/audio/data_aishell" / aishell.STAGING_DIR).exists()


def test_a_folder_given_as_the_archive_is_named_as_such(tmp_path, capsys, caplog):
    assert _run(tmp_path, tmp_path) == 1
    assert "is a folder; --filepath takes the data_aishell.tgz file itself" in capsys.readouterr().err + caplog.text


def test_annotation_text_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    args = aishell.build_parser().parse_args(["--annotation_text=~/manifests"])
    assert args.annotation_text == str(tmp_path / "manifests")


def test_the_default_manifests_are_not_the_bundled_demo_corpus():
    """aishell.py's manifests are finetune.py's and evaluation.py's defaults; the demo corpus lies elsewhere, so
    preparing AISHELL-1 in a checkout no longer overwrites it (it broke the tests and changed make demo's data)."""
    from utils.data import DEMO_MANIFESTS

    folder = Path(aishell.build_parser().parse_args([]).annotation_text)
    assert all(Path(m).parent != folder for m in DEMO_MANIFESTS)
    repo = Path(__file__).resolve().parent.parent
    assert all((repo / m).is_file() for m in DEMO_MANIFESTS)


def test_missing_archive(tmp_path, capsys, caplog):
    assert _run(tmp_path, tmp_path / "nope.tgz") == 1
    err = (capsys.readouterr().err + caplog.text)
    assert f"{tmp_path / 'nope.tgz'}: archive not found" in err


@pytest.mark.parametrize("kind", ["garbage", "truncated", "bad_speaker"])
def test_corrupt_archive(tmp_path, archive, capsys, caplog, kind):
    path = tmp_path / "data_aishell.tgz"
    if kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        path.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    else:
        build_archive(path, nested_override={"S0724": os.urandom(2048)})
    assert _run(tmp_path, path) == 1
    err = (capsys.readouterr().err + caplog.text)
    assert str(path) in err and "corrupt" in err
    if kind == "bad_speaker":
        assert f"{path}:data_aishell/wav/S0724.tar.gz: corrupt speaker archive" in err
    assert not (tmp_path / "dataset/train.json").exists()
    # a refused archive leaves nothing: not the speakers before the bad one, not the folders made for them
    assert not (tmp_path / "dataset").exists(), sorted(str(p) for p in (tmp_path / "dataset").rglob("*"))


def test_refused_archive_keeps_what_an_earlier_run_unpacked(tmp_path, archive):
    assert _run(tmp_path, archive) == 0
    data_dir = tmp_path / "dataset/audio/data_aishell"
    before = sorted(p.relative_to(data_dir) for p in data_dir.rglob("*"))
    bad = build_archive(tmp_path / "bad.tgz", nested_override={"S0724": os.urandom(2048)},
                        outer_extra=lambda tar: _add_bytes(tar, "data_aishell/wav/S9999.tar.gz", b"x"))
    assert _run(tmp_path / "second", bad) == 1  # a fresh target: nothing of the bad archive stays
    assert not (tmp_path / "second").exists()
    assert sorted(p.relative_to(data_dir) for p in data_dir.rglob("*")) == before


def test_a_refused_archive_leaves_the_earlier_transcript(tmp_path, archive):
    """A refused archive's transcript replaced the one an earlier run unpacked (only a new one was removed), and
    the next run with the good archive ("already unpacked") wrote its sentences into the manifests."""
    assert _run(tmp_path, archive) == 0
    transcript = tmp_path / "dataset/audio/data_aishell" / aishell.TRANSCRIPT_PATH
    before = transcript.read_bytes()

    bad = build_archive(tmp_path / "bad.tgz", transcript="BAC009S0764W0121 被 篡改 的 文本\n",
                        nested_override={"S0764": os.urandom(2048)})  # the last speaker: after the transcript
    assert _run(tmp_path, bad) == 1
    assert transcript.read_bytes() == before
    assert _run(tmp_path, archive) == 0
    assert [r["sentence"] for r in _read_manifest(tmp_path / "dataset/test.json")] == ["甚至出现交易几乎停滞的情况"]


def test_missing_transcript(tmp_path, capsys, caplog):
    path = build_archive(tmp_path / "data_aishell.tgz", transcript=False)
    assert _run(tmp_path, path) == 1
    err = (capsys.readouterr().err + caplog.text)
    assert f"{path}: has no member data_aishell/transcript/aishell_transcript_v0.8.txt" in err
    assert not (tmp_path / "dataset/train.json").exists()


def test_read_transcript(tmp_path, caplog):
    path = tmp_path / "t.txt"
    path.write_text("\ufeffBAC1 而 对 楼市\n\nBAC2\nBAC3 成交  抑制\t作用\nBAC1 重复\nBAC4 他 住 在 new york 市 看 NBA\n",
                    encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert aishell.read_transcript(path) == {"BAC1": "而对楼市", "BAC3": "成交抑制作用", "BAC4": "他住在new york市看NBA"}
    assert f"{path}:3: utterance BAC2 has no text" in caplog.text
    assert f"{path}:5: utterance BAC1 repeated" in caplog.text
    with pytest.raises(aishell.MissingTranscriptError, match="transcript file not found"):
        aishell.read_transcript(tmp_path / "missing.txt")


# --------------------------------------------------------------------------------------------------
# Downloader (local HTTP server on 127.0.0.1)

PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.payload`` at /data_aishell.tgz with optional Range support and a dropped connection."""

    def do_GET(self):  # noqa: N802
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append(rng)
        if self.path != "/data_aishell.tgz":
            self.send_error(404)
            return
        if srv.fail_with:
            self.send_error(srv.fail_with)
            return
        data, start = srv.payload, 0
        if rng and srv.honor_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drop_after is not None:  # send part of the body, then hang up
            body, srv.drop_after = body[: srv.drop_after], None
        srv.bytes_sent += len(body)  # counted before writing: the client may finish before this thread resumes
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.payload, srv.honor_range, srv.drop_after, srv.fail_with = PAYLOAD, True, None, None
    srv.requests, srv.bytes_sent = [], 0
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/data_aishell.tgz"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _download(server, dest: Path, **kw) -> Path:
    kw.setdefault("urls", [server.url])
    kw.setdefault("md5", _md5(server.payload))
    return aishell.download_archive(dest, chunk_size=32_768, timeout=10, retry_wait=0, progress=False, **kw)


def test_download(tmp_path, server):
    dest = tmp_path / "data_aishell.tgz"
    assert _download(server, dest) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name(dest.name + ".part").exists()
    assert server.requests == [None]
    _download(server, dest)  # present with the right md5: not downloaded again
    assert server.requests == [None]


def test_download_resumes_partial_file(tmp_path, server):
    dest = tmp_path / "data_aishell.tgz"
    dest.with_name(dest.name + ".part").write_bytes(PAYLOAD[:100_000])
    _download(server, dest)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == ["bytes=100000-"]
    assert server.bytes_sent == len(PAYLOAD) - 100_000


def test_download_resumes_after_dropped_connection(tmp_path, server):
    server.drop_after = 50_000
    dest = tmp_path / "data_aishell.tgz"
    _download(server, dest)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [None, "bytes=50000-"]


def test_download_complete_part_file(tmp_path, server):
    dest = tmp_path / "data_aishell.tgz"
    dest.with_name(dest.name + ".part").write_bytes(PAYLOAD)
    _download(server, dest)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [f"bytes={len(PAYLOAD)}-"] and server.bytes_sent == 0


def test_download_restarts_when_server_ignores_range(tmp_path, server):
    server.honor_range = False
    dest = tmp_path / "data_aishell.tgz"
    dest.with_name(dest.name + ".part").write_bytes(b"x" * 1000)
    _download(server, dest)
    assert dest.read_bytes() == PAYLOAD


def test_download_md5_mismatch(tmp_path, server):
    dest = tmp_path / "data_aishell.tgz"
    with pytest.raises(aishell.DownloadError, match=f"md5 {_md5(PAYLOAD)} does not match the expected 0+1"):
        _download(server, dest, md5="0" * 31 + "1")
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_download_falls_back_to_mirror(tmp_path, server):
    dest = tmp_path / "data_aishell.tgz"
    _download(server, dest, urls=[server.url.replace("data_aishell", "missing"), server.url])
    assert dest.read_bytes() == PAYLOAD


def test_download_fails_with_clear_error(tmp_path, server):
    dest = tmp_path / "data_aishell.tgz"
    with pytest.raises(aishell.DownloadError, match=r"HTTP 404.*pass it with --filepath"):
        _download(server, dest, urls=[server.url.replace("data_aishell", "missing")])
    assert server.requests == [None]  # 404 is permanent: not retried


def test_download_without_name_resolution_gives_up_at_once_and_leaves_no_folder(tmp_path, monkeypatch):
    """No network: each URL's host name does not resolve. It was retried five times a URL with waits (2 minutes),
    the error said the same thing ten times, and the empty --target_dir stayed."""
    import socket
    import urllib.error

    from utils import download

    calls = []

    def no_dns(url, *a, **kw):
        calls.append(url)
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(download, "_fetch", no_dns)
    dest = tmp_path / "new" / "audio" / "data_aishell.tgz"
    with pytest.raises(aishell.DownloadError) as e:
        aishell.download_archive(dest, urls=["http://a.invalid/x.tgz", "http://b.invalid/x.tgz"], retry_wait=30)
    assert calls == ["http://a.invalid/x.tgz", "http://b.invalid/x.tgz"]
    assert str(e.value).count("Name or service not known") == 2 and "pass it with --filepath" in str(e.value)
    assert not (tmp_path / "new").exists()


def test_download_gives_up_after_failures_in_a_row(tmp_path, server):
    server.fail_with = 503
    with pytest.raises(aishell.DownloadError, match="HTTP 503"):
        _download(server, tmp_path / "data_aishell.tgz", retries=3)
    assert server.requests == [None, None, None]


def test_main_downloads_without_filepath(tmp_path, archive, server, monkeypatch):
    server.payload = archive.read_bytes()
    monkeypatch.setattr(aishell, "DOWNLOAD_URLS", (server.url,))
    monkeypatch.setattr(aishell, "ARCHIVE_MD5", _md5(server.payload))
    audio = tmp_path / "dataset/audio"
    assert aishell.main([f"--target_dir={audio}", f"--annotation_text={tmp_path / 'dataset'}",
                         "--num_workers=1"]) == 0
    assert (audio / "data_aishell.tgz").read_bytes() == server.payload
    assert len(_read_manifest(tmp_path / "dataset/train.json")) == 4
    # a second run finds everything unpacked: no download, no archive needed
    (audio / "data_aishell.tgz").unlink()
    assert aishell.main([f"--target_dir={audio}", f"--annotation_text={tmp_path / 'dataset'}"]) == 0
    assert server.requests == [None]
