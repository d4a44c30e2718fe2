import subprocess

import numpy as np
import pytest
import soundfile as sf
import soxr

from utils.audio import (SAMPLE_RATE, AudioLoadError, audio_duration, load_audio, quietest_point, resample, save_wav,
                         total_seconds)


def _tone(seconds: float, sr: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_wav_roundtrip_mono_16k(tmp_path):
    x = _tone(1.0, SAMPLE_RATE)
    p = tmp_path / "a.wav"
    save_wav(p, x)
    y = load_audio(p)
    assert y.dtype == np.float32 and y.ndim == 1 and len(y) == SAMPLE_RATE
    assert np.max(np.abs(y - x)) < 1e-3


def test_stereo_44k_is_mixed_and_resampled(tmp_path):
    left, right = _tone(2.0, 44100), np.zeros(88200, dtype=np.float32)
    p = tmp_path / "stereo.flac"
    sf.write(p, np.stack([left, right], axis=1), 44100)
    y = load_audio(p)
    assert abs(len(y) - 2 * SAMPLE_RATE) <= 2
    assert 0.2 < np.max(np.abs(y)) < 0.3  # mean of the two channels


def test_a_long_stereo_44k_file_is_read_in_blocks_as_it_is_read_whole(tmp_path, monkeypatch, caplog):
    """A 2 h 44.1 kHz stereo mp3 read whole (then mixed, then resampled) held 4.1 GB for its 0.46 GB waveform: long
    audio is mixed and resampled a block at a time (long mp3 by ffmpeg), to the same samples; a slice too; channels
    that cancel in the mix are read again from the loudest one alone. (Here "long" is 5 s, in blocks of 0.7 s.)"""
    from pathlib import Path

    import utils.audio

    speech = load_audio(Path(__file__).resolve().parent.parent / "dataset" / "real" / "en_jfk.flac")
    at_44k = soxr.resample(speech, SAMPLE_RATE, 44100).astype(np.float32)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(len(at_44k)) / 44100)).astype(np.float32)
    for name, left, right in (("mixed.flac", at_44k, 0.5 * at_44k), ("phase.flac", at_44k, -0.9 * at_44k),
                              ("tone.mp3", tone, tone)):
        path = tmp_path / name  # an mp3 goes to ffmpeg: libsndfile read a tone's first 0.1 s of a block up to 0.36 off
        sf.write(path, np.stack([left, right], axis=1), 44100, **({"subtype": "PCM_24"} if "flac" in name else {}))
        slices = [{}] + ([{"start_time": 1.25, "end_time": 9.5}] if "flac" in name else [])
        whole = [load_audio(path, **cut) for cut in slices]
        monkeypatch.setattr(utils.audio, "STREAM_READ_S", 5.0)
        monkeypatch.setattr(utils.audio, "BLOCK_READ_S", 0.7)
        with caplog.at_level("WARNING"):
            blocks = [load_audio(path, **cut) for cut in slices]
        monkeypatch.undo()
        for a, b in zip(whole, blocks):
            assert abs(len(a) - len(b)) <= 2
            n = min(len(a), len(b))
            assert np.abs(a[100:n - 100] - b[100:n - 100]).max() < 2e-3
        assert ("cancel each other out" in caplog.text) == name.startswith("phase")
        caplog.clear()
    # a long file in a format neither block-read nor handed to ffmpeg (which cannot decode MAT5) is read whole
    path = tmp_path / "tone.mat"
    sf.write(path, np.stack([tone, tone], axis=1), 44100, format="MAT5", subtype="FLOAT")
    monkeypatch.setattr(utils.audio, "STREAM_READ_S", 5.0)
    assert abs(len(load_audio(path)) - len(tone) * SAMPLE_RATE / 44100) <= 2


@pytest.mark.parametrize("ext", ["wav", "m4a"])
def test_stereo_whose_channels_cancel_is_read_from_one_channel(tmp_path, ext, caplog):
    """A real recording with one channel phase-inverted (a miswired balanced microphone): averaged to mono it was
    silence ("no speech found", CER 1.0) in infer.py and evaluation.py, through libsndfile and ffmpeg alike. The
    loudest channel is read instead, with a warning; channels that do not cancel are still averaged."""
    from pathlib import Path

    from utils.audio import decode_audio_bytes

    speech = load_audio(Path(__file__).resolve().parent.parent / "dataset" / "real" / "en_jfk.flac")
    src = tmp_path / "phase.wav"
    sf.write(src, np.stack([speech, -0.9 * speech], axis=1), SAMPLE_RATE, subtype="PCM_16")
    path = src
    if ext != "wav":
        path = tmp_path / f"phase.{ext}"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), str(path)], check=True)
    with caplog.at_level("WARNING"):
        for y in (load_audio(path), decode_audio_bytes(path.read_bytes(), name=path.name)):
            n = min(len(y), len(speech))
            assert np.corrcoef(y[:n], speech[:n])[0, 1] > 0.95 and np.std(y) > 0.5 * np.std(speech)
    assert caplog.text.count("cancel each other out") == 2 and "phase." + ext in caplog.text
    caplog.clear()
    same = tmp_path / "same.wav"
    sf.write(same, np.stack([speech, 0.5 * speech], axis=1), SAMPLE_RATE, subtype="PCM_16")
    assert np.allclose(load_audio(same), 0.75 * speech, atol=2e-4) and "cancel" not in caplog.text


def test_slice_reads_only_requested_span(tmp_path):
    sr = SAMPLE_RATE
    x = np.concatenate([np.zeros(sr, np.float32), np.full(sr, 0.5, np.float32), np.zeros(sr, np.float32)])
    p = tmp_path / "s.wav"
    sf.write(p, x, sr, subtype="FLOAT")
    y = load_audio(p, start_time=1.0, end_time=2.0)
    assert len(y) == sr and np.allclose(y, 0.5)


@pytest.mark.parametrize("ext", ["mp3", "ogg", "m4a"])
def test_compressed_formats_via_ffmpeg(tmp_path, ext):
    src = tmp_path / "src.wav"
    save_wav(src, _tone(1.5, SAMPLE_RATE))
    dst = tmp_path / f"x.{ext}"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), str(dst)], check=True)
    y = load_audio(dst)
    assert abs(len(y) / SAMPLE_RATE - 1.5) < 0.1
    assert np.max(np.abs(y)) > 0.3
    assert abs(audio_duration(dst) - 1.5) < 0.1


def test_missing_file_names_path(tmp_path):
    with pytest.raises(AudioLoadError, match=r"nope\.wav: audio file not found"):
        load_audio(tmp_path / "nope.wav")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    with pytest.raises(AudioLoadError, match=r"empty\.wav: audio file is empty"):
        load_audio(p)


def test_corrupt_file(tmp_path):
    p = tmp_path / "bad.wav"
    p.write_bytes(b"RIFF....WAVEfmt garbage" * 10)
    with pytest.raises(AudioLoadError, match=r"bad\.wav: cannot decode"):
        load_audio(p)


def test_bad_slice(tmp_path):
    p = tmp_path / "a.wav"
    save_wav(p, _tone(1.0, SAMPLE_RATE))
    with pytest.raises(AudioLoadError, match="greater than start_time"):
        load_audio(p, start_time=0.8, end_time=0.2)
    with pytest.raises(AudioLoadError, match="past the end"):
        load_audio(p, start_time=5.0)


def test_duration_from_header(tmp_path):
    p = tmp_path / "a.wav"
    save_wav(p, _tone(2.25, SAMPLE_RATE))
    assert audio_duration(p) == pytest.approx(2.25, abs=1e-3)


def test_total_seconds_sums_durations_until_enough_and_a_file_that_is_not_audio_adds_nothing(tmp_path, monkeypatch):
    """The total length of several files, stopping once ``enough`` is reached: from the header (wav, mp3) or from
    ffprobe (m4a); a missing file or one that is not audio adds nothing (it fails when decoded); unknown (None) past
    ``probe_limit`` files ffprobe has to read, or without ffprobe."""
    a, b, mp3, m4a = tmp_path / "a.wav", tmp_path / "b.wav", tmp_path / "c.mp3", tmp_path / "d.m4a"
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio\n", encoding="utf-8")
    save_wav(a, _tone(2.0, SAMPLE_RATE))
    save_wav(b, _tone(1.5, 8000), sample_rate=8000)
    for out in (mp3, m4a):
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(a), str(out)], check=True)
    assert total_seconds([a, b]) == pytest.approx(3.5, abs=1e-3)
    assert total_seconds([a, mp3]) == pytest.approx(4.0, abs=0.1)
    assert total_seconds([a, b], enough=1.0) == pytest.approx(2.0, abs=1e-3)
    assert total_seconds([a, m4a]) == pytest.approx(4.0, abs=0.1)
    assert total_seconds([a, tmp_path / "missing.wav", notes]) == pytest.approx(2.0, abs=1e-3)
    assert total_seconds([]) == 0.0
    assert total_seconds([a, m4a], probe_limit=0) is None
    assert total_seconds([a, m4a], enough=1.0, probe_limit=0) == pytest.approx(2.0, abs=1e-3)  # enough before it
    monkeypatch.setattr("utils.audio.shutil.which", lambda name: None)
    assert total_seconds([m4a, a]) is None


def test_resample_length():
    assert len(resample(np.zeros(8000, np.float32), 8000)) == 16000


def test_a_wav_cut_short_is_read_with_a_warning_naming_both_durations(tmp_path, caplog):
    import logging

    from utils.audio import load_audio, save_wav, wav_truncation

    full = tmp_path / "full.wav"
    save_wav(full, np.zeros(32000, np.float32))  # 2.0 s, 16-bit: 64044 bytes
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full.read_bytes()[: 44 + 16000 * 2])  # the header still says 2.0 s; 1.0 s is there
    assert wav_truncation(full) is None
    assert wav_truncation(cut) == pytest.approx((2.0, 1.0))
    with caplog.at_level(logging.WARNING, logger="utils.audio"):
        assert load_audio(cut).shape == (16000,)
        load_audio(cut)
    warnings = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert warnings == [f"{cut}: truncated wav: its header says 2.00 s but the file holds only 1.00 s (a copy cut "
                        "short?); using the 1.00 s there are"]  # once per file, not once per read

    # an upload (the web UI, the server) or a dataset row's bytes: the same warning, naming the upload
    from utils.audio import decode_audio_bytes, wav_bytes_truncation

    assert wav_bytes_truncation(cut.read_bytes()) == pytest.approx((2.0, 1.0))
    assert wav_bytes_truncation(full.read_bytes()) is None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="utils.audio"):
        assert decode_audio_bytes(cut.read_bytes(), "会议.wav").shape == (16000,)
        decode_audio_bytes(full.read_bytes(), "full.wav")
        decode_audio_bytes(cut.read_bytes(), "会议.wav")  # another upload of that name: warned again
        decode_audio_bytes(cut.read_bytes(), "row#3", warn_once=True)  # a dataset row, every epoch: once
        decode_audio_bytes(cut.read_bytes(), "row#3", warn_once=True)
    said = ": truncated wav: its header says 2.00 s but the file holds only 1.00 s (a copy cut short?); using the " \
           "1.00 s there are"
    assert [r.getMessage() for r in caplog.records] == [f"会议.wav{said}", f"会议.wav{said}", f"row#3{said}"]


def test_quietest_point_is_the_middle_of_the_quietest_stretch():
    """Where a dense window without a pause is cut in two: the centre of its quietest 50 ms in the range given."""
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.3, 3 * SAMPLE_RATE).astype(np.float32)
    audio[22_000:23_600] *= 0.01  # a 0.1 s dip (between two syllables)
    audio[40_000:42_000] = 0.0  # quieter still, but outside the range asked
    cut = quietest_point(audio, 16_000, 32_000)
    assert 22_000 + 400 <= cut <= 23_600 - 400, cut
    assert quietest_point(audio, 100, 500) == 100  # shorter than the window: its start



def test_a_video_without_sound_and_an_empty_wav_say_what_is_missing(tmp_path):
    """Before: ffmpeg's "Output file #0 does not contain any stream", and "start_time None s is past the end"."""
    video, empty = tmp_path / "silent.mp4", tmp_path / "empty.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=black:s=64x64:d=1",
                    "-an", str(video)], check=True)
    sf.write(empty, np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioLoadError, match="has no audio stream"):
        load_audio(video)
    with pytest.raises(AudioLoadError, match="holds no audio samples"):
        load_audio(empty)


def test_a_file_name_that_is_not_utf8_is_read(tmp_path, zh_wav):
    """A GBK file name from a Windows zip ("测试.wav" in GBK bytes): soundfile encoded the name as UTF-8 and stopped
    with a traceback (infer.py before any file was read, evaluation.py's check before the model loaded)."""
    import os
    import shutil

    from utils.audio import audio_duration, load_audio

    name = os.path.join(os.fsdecode(bytes(tmp_path)), os.fsdecode(b"\xb2\xe2\xca\xd4.wav"))
    shutil.copy(zh_wav, name)
    assert audio_duration(name) == pytest.approx(audio_duration(str(zh_wav)))
    assert np.array_equal(load_audio(name), load_audio(zh_wav))
